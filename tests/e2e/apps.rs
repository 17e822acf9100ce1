//! Applications as separate processes, for the restore tests: a python3
//! child using SQLite the way an application does (a killed app leaving its
//! -wal or hot journal behind), and a way to read what SQLite would see at
//! a path without changing it.

use std::path::{Path, PathBuf};
use std::process::Command;

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
