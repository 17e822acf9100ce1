//! Applications as separate processes, for the restore tests: a python3
//! child using SQLite the way an application does (a killed app leaving its
//! -wal behind, a writer inserting continuously, a process keeping the
//! database open), and a way to read what SQLite would see at a path
//! without changing it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

fn python() -> Command {
    let probe = Command::new("python3")
        .args(["-c", "import sqlite3"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "these tests need python3 with its sqlite3 module as a second process \
             that uses the database (apt-get install python3)"
        ),
    }
    Command::new("python3")
}

/// Runs `sql` in another process that then dies without closing the database,
/// as a killed application does: its committed transactions stay in the
/// -wal (with its -shm), not yet in the database file.
pub fn crash_after(db: &Path, sql: &str) {
    let out = python()
        .args([
            "-c",
            "import os, sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA wal_autocheckpoint=0')\n\
             c.executescript(sys.argv[2])\n\
             os._exit(0)\n",
        ])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wal = side(db, "-wal");
    assert!(
        std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0),
        "the test needs committed work left in {}",
        wal.display()
    );
}

/// Runs `sql` inside a transaction in rollback-journal mode, in another
/// process that dies before committing, after SQLite has already written
/// changed pages into the database file (a tiny cache makes it spill): the
/// hot -journal beside it is what undoes them.
pub fn crash_mid_transaction(db: &Path, sql: &str) {
    let out = python()
        .args([
            "-c",
            "import os, sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('PRAGMA journal_mode=DELETE')\n\
             c.execute('PRAGMA cache_size=1')\n\
             c.execute('BEGIN')\n\
             c.execute(sys.argv[2])\n\
             os._exit(0)\n",
        ])
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let journal = side(db, "-journal");
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "the test needs a hot journal at {}",
        journal.display()
    );
}

pub fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The script of an application that inserts a row with its `marker` every
/// few milliseconds until SIGTERM, then closes the database and writes how
/// many rows it inserted to `stopped`. It gives up after a minute, so that a
/// failed test leaves no process behind for long.
pub const WRITER: &str = r#"import os, signal, sqlite3, sys, time
db, marker, stopped = sys.argv[1], sys.argv[2], sys.argv[3]
running = [True]
signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
c = sqlite3.connect(db, timeout=30, isolation_level=None)
c.execute('PRAGMA journal_mode=WAL')
n, start = 0, time.time()
while running[0] and time.time() - start < 60:
    c.execute("INSERT INTO tasks(title, body) VALUES (?, 'written by the app')", (marker,))
    n += 1
    time.sleep(0.005)
c.close()
open(stopped + '.tmp', 'w').write(str(n))
os.rename(stopped + '.tmp', stopped)
"#;

/// Writes [`WRITER`] to `dir/writer.py`, for hooks to start.
pub fn install_writer(dir: &Path) -> PathBuf {
    let p = dir.join("writer.py");
    std::fs::write(&p, WRITER).unwrap();
    p
}

/// Starts the writer in the background through `sh`, as a hook would (so it
/// is not this process's child), recording its pid in `dir/writer.pid`.
pub fn start_writer(dir: &Path, db: &Path, marker: &str) {
    python(); // fails clearly when python3 is missing
    install_writer(dir);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "python3 writer.py '{}' {marker} writer.stopped >/dev/null 2>&1 & echo $! > writer.pid",
            db.display()
        ))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Stops the writer whose pid is in `dir/writer.pid`; returns the rows it wrote.
pub fn stop_writer(dir: &Path) -> i64 {
    let pid: i32 = std::fs::read_to_string(dir.join("writer.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) with a pid this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped = dir.join("writer.stopped");
    wait_for(|| stopped.exists(), "the writer to stop");
    let n = std::fs::read_to_string(&stopped).unwrap().parse().unwrap();
    std::fs::remove_file(&stopped).unwrap();
    n
}

/// Kills a writer a failed test left running.
pub struct WriterGuard<'a>(pub &'a Path);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.0.join("writer.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) with a pid this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Rows with `title = marker` in `db` (opened briefly).
pub fn count_marked(db: &Path, marker: &str) -> i64 {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.query_row(
        "SELECT count(*) FROM tasks WHERE title = ?1",
        [marker],
        |r| r.get(0),
    )
    .unwrap()
}

/// A process that opens `db`, reads from it and then keeps it open, idle,
/// until dropped (its stdin is closed).
pub struct Holder(std::process::Child);

impl Holder {
    pub fn start(db: &Path) -> Holder {
        let mut child = python()
            .args([
                "-c",
                "import sqlite3, sys\n\
                 c = sqlite3.connect(sys.argv[1])\n\
                 c.execute('SELECT count(*) FROM tasks').fetchone()\n\
                 print('ready', flush=True)\n\
                 sys.stdin.read()\n",
            ])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// What SQLite sees at `db` together with whatever side files lie beside it:
/// `PRAGMA integrity_check` and the rows. Read from a copy, so that looking
/// changes nothing (opening the real path would fold its -wal into it).
pub fn state_at(db: &Path) -> (String, Vec<(i64, String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    std::fs::copy(db, &copy).unwrap_or_else(|e| panic!("nothing usable at {}: {e}", db.display()));
    for suffix in ["-wal", "-shm", "-journal"] {
        if side(db, suffix).exists() {
            std::fs::copy(side(db, suffix), side(&copy, suffix)).unwrap();
        }
    }
    let check: String = Connection::open(&copy)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap_or_else(|e| format!("cannot check: {e}"));
    let rows = if check == "ok" {
        crate::support::dump(&copy)
    } else {
        Vec::new()
    };
    (check, rows)
}
