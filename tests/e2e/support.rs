//! Test scaffolding: a temporary directory with an identity, a config, a
//! SQLite source and a local target, and helpers to run the binary. The
//! config's state directory is in the temporary directory too, so no test
//! writes drill records in the home directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_offsite")
}

/// A command running the binary, which inherits no descriptor of the test
/// process but stdio (see `without_inherited_fds`: another test's open
/// DuckDB file must not stay open in a daemon this one started).
pub fn offsite_command() -> Command {
    let mut cmd = Command::new(bin());
    backend_objstore::testing::without_inherited_fds(&mut cmd);
    cmd
}

pub struct Env {
    pub dir: tempfile::TempDir,
    target: String,
    /// Environment variables for every run of the binary.
    vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        Self::build(None, |_| String::new())
    }

    pub fn with_target(path: &str) -> Env {
        Self::build(Some(path.to_string()), |_| String::new())
    }

    pub fn with_sources(extra: impl FnOnce(&Path) -> String) -> Env {
        Self::build(None, extra)
    }

    /// A config whose only target is `target_toml` (a `[[targets]]` table),
    /// with packs of `pack_size_mib`; `vars` are set for every run.
    pub fn with_remote_target(
        target_toml: &str,
        pack_size_mib: usize,
        vars: &[(&str, &str)],
    ) -> Env {
        let mut env = Self::build(None, |_| String::new());
        let config = std::fs::read_to_string(env.dir.path().join("offsite.toml")).unwrap();
        let head = &config[..config.find("[[targets]]").unwrap()];
        std::fs::write(
            env.dir.path().join("offsite.toml"),
            format!("{head}{target_toml}\n[backup]\npack_size_mib = {pack_size_mib}\n"),
        )
        .unwrap();
        env.vars = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env
    }

    fn build(target: Option<String>, extra: impl FnOnce(&Path) -> String) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        let out = offsite_command()
            .args(["keygen", "-o", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        let recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let target = target.unwrap_or_else(|| dir.path().join("repo").display().to_string());
        let extra = extra(dir.path());
        std::fs::write(
            dir.path().join("offsite.toml"),
            format!(
                "state_dir = \"state\"\n\n\
                 [encryption]\nrecipients = [\"{recipient}\"]\nidentity_file = \"key.txt\"\n\n\
                 [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n{extra}\n\
                 [[targets]]\nname = \"local\"\nkind = \"local\"\npath = \"{target}\"\n\n\
                 [backup]\npack_size_mib = 1\n"
            ),
        )
        .unwrap();
        Env {
            dir,
            target,
            vars: Vec::new(),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.txt")
    }
    pub fn repo(&self) -> PathBuf {
        PathBuf::from(&self.target)
    }
    /// The config's `state_dir`.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn make_db(&self, path: &Path, rows: usize) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta TEXT);
             CREATE INDEX tasks_title ON tasks(title);",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..rows {
            tx.execute(
                "INSERT INTO tasks(title, body, meta) VALUES (?1, ?2, ?3)",
                (
                    format!("task {i}"),
                    format!("body {i} ").repeat(10),
                    format!(r#"{{"n":{i},"tags":["a","b"]}}"#),
                ),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    /// Runs offsite with this environment's config: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[])
    }

    /// Like [`Env::run`], with extra environment variables for this run.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
        let mut cmd = offsite_command();
        cmd.arg("--config")
            .arg(self.dir.path().join("offsite.toml"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .envs(vars.iter().copied());
        let out = output_within(&mut cmd, COMMAND_LIMIT);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Rewrites the config file with `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let path = self.dir.path().join("offsite.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, edit(text)).unwrap();
    }

    /// Makes the target of this config (`name = "local"`) one that backups
    /// make format 1 (`format = 1`) and restores trust (`allow_unsigned`),
    /// for the tests of what only format 1 has.
    pub fn format_1(self) -> Env {
        self.edit_config(|t| {
            t.replace(
                "name = \"local\"\nkind = \"local\"\n",
                "name = \"local\"\nkind = \"local\"\nformat = 1\nallow_unsigned = true\n",
            )
        });
        self
    }

    /// Runs offsite and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "offsite {args:?} failed:\n{out}\n{err}");
        out
    }
}

/// Far longer than any command of these tests takes; a command still
/// running then is hung, and failing beats holding CI until its timeout.
pub const COMMAND_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `cmd.output()`, but a command still running after `limit` is killed and
/// the test fails saying so, with what it printed to stderr.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    use std::sync::atomic::{AtomicBool, Ordering};
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < limit {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if done.load(Ordering::SeqCst) {
                    return false;
                }
            }
            let _ = Command::new("kill").args(["-9", &pid]).status();
            true
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    let killed = watchdog.join().unwrap();
    assert!(
        !killed,
        "{cmd:?} was still running after {limit:?} and was killed: it hung\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn snapshots(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap()
}

pub fn dump(path: &Path) -> Vec<(i64, String, String)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, title, coalesce(body, '') FROM tasks ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn dump_count(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

/// Copies every file under `from` to the same place under `to` (a committed
/// fixture repository into a scratch directory).
pub fn copy_tree(from: &Path, to: &Path) {
    for f in find_files(from) {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
}

pub fn find_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(find_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Staging files a failed restore might have left in `dir`.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("offsite-partial"))
        .collect()
}

/// `PRAGMA integrity_check` of a database file: "ok" when it is whole.
pub fn integrity(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Parses a command's JSON output, showing it when it is not JSON.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}
