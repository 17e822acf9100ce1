//! DuckDB sources through the binary, with real DuckDB (libduckdb.so, see
//! scripts/install-test-deps.sh): backup and verified restore, the .wal
//! included; a writer holding the database makes the backup wait, then fail
//! naming the source and its settings, with nothing written to the target.

use std::path::Path;

use backup_core::source::duckdb_lib::{self, Database};

use crate::support::*;

pub(crate) fn duckdb_env(timeout: &str) -> Env {
    let timeout = timeout.to_string();
    Env::with_sources(move |_| {
        format!(
            "[[sources]]\nname = \"analytics\"\nkind = \"duckdb\"\npath = \"analytics.duckdb\"\n\
             lock_timeout = \"{timeout}\"\n"
        )
    })
}

pub(crate) fn make_duckdb(path: &Path) {
    let mut db = Database::open(path, false).unwrap();
    db.execute(
        "CREATE TABLE events(id INTEGER PRIMARY KEY, name VARCHAR, amount DOUBLE);
         INSERT INTO events SELECT i, 'event ' || i, i * 1.5 FROM range(20000) t(i);
         CREATE TABLE users(name VARCHAR, joined DATE);
         INSERT INTO users VALUES ('ada', DATE '2026-01-02'), ('bob', NULL);",
    )
    .unwrap();
}

fn rows(path: &Path) -> Vec<Vec<Option<String>>> {
    let mut db = Database::open(path, true).unwrap();
    let mut all = db
        .query("SELECT id::VARCHAR, name, amount::VARCHAR FROM events ORDER BY id")
        .unwrap();
    all.extend(
        db.query("SELECT name, joined::VARCHAR FROM users ORDER BY name")
            .unwrap(),
    );
    all
}

#[test]
fn duckdb_backup_and_restore_with_its_wal() {
    let env = duckdb_env("30s");
    let db = env.dir.path().join("analytics.duckdb");
    make_duckdb(&db);
    // Work left in the WAL, as an application that was killed leaves it:
    // the snapshot must carry it for the restore to have these rows.
    {
        let mut w = Database::open(&db, false).unwrap();
        w.execute(
            "SET wal_autocheckpoint = '1TB'; PRAGMA disable_checkpoint_on_shutdown;
             INSERT INTO events VALUES (99999, 'only in the wal', 0);",
        )
        .unwrap();
    }
    let wal = env.dir.path().join("analytics.duckdb.wal");
    assert!(wal.exists(), "the test needs a database with a WAL");
    let before = rows(&db);
    assert_eq!(before.len(), 20_003);

    let out = env.ok(&["backup", "--source", "analytics"]);
    assert!(out.contains("analytics -> local: snapshot"), "{out}");
    let snaps = snapshots(&env);
    assert_eq!(snaps[0]["kind"], "duckdb");
    assert_eq!(snaps[0]["files"], 2);

    let to = env.dir.path().join("restored.duckdb");
    let out = env.ok(&[
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.contains("checksum and DuckDB open verified"), "{out}");
    // The .wal's work is folded into the restored file by DuckDB itself, so
    // that one rename puts the whole database in place.
    assert!(!env.dir.path().join("restored.duckdb.wal").exists());
    assert_eq!(rows(&to), before);
    assert!(leftovers(env.dir.path()).is_empty());

    // --force keeps the current database, its WAL's work folded into it
    // first, under a name of its own: never deleted.
    {
        let mut w = Database::open(&to, false).unwrap();
        w.execute(
            "SET wal_autocheckpoint = '1TB'; PRAGMA disable_checkpoint_on_shutdown;
             INSERT INTO events VALUES (123456, 'written after the restore', 0);",
        )
        .unwrap();
    }
    assert!(env.dir.path().join("restored.duckdb.wal").exists());
    let out = env.ok(&[
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let moved = v["moved_aside"].as_array().unwrap();
    assert_eq!(moved.len(), 1, "{out}");
    let kept = rows(Path::new(moved[0].as_str().unwrap()));
    assert_eq!(
        kept.len(),
        before.len() + 1,
        "the kept file has the WAL's row"
    );
    assert_eq!(rows(&to), before);
    assert!(!env.dir.path().join("restored.duckdb.wal").exists());

    // Without the database check nothing opens the copy: the .wal is put
    // beside the database, after it, for DuckDB to replay.
    let unchecked = env.dir.path().join("unchecked.duckdb");
    let out = env.ok(&[
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--no-database-check",
        "--to",
        unchecked.to_str().unwrap(),
    ]);
    assert!(out.contains("database check skipped"), "{out}");
    assert!(env.dir.path().join("unchecked.duckdb.wal").exists());
    assert_eq!(rows(&unchecked), before);
    assert!(leftovers(env.dir.path()).is_empty());
}

#[test]
fn a_writer_holding_the_database_makes_the_backup_wait_then_fail_cleanly() {
    let env = duckdb_env("1s");
    let db = env.dir.path().join("analytics.duckdb");
    make_duckdb(&db);
    env.make_db(&env.db(), 100);
    env.ok(&["backup", "--source", "app"]);
    let repo_before = find_files(&env.repo());

    // This test process is the application: DuckDB holds its write lock.
    let writer = Database::open(&db, false).unwrap();
    let (code, out, err) = env.run(&["backup", "--source", "analytics"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("analytics -> local: FAILED"), "{err}");
    assert!(
        err.contains("still has the database open for writing after waiting 1s"),
        "{err}"
    );
    assert!(
        err.contains("lock_timeout") && err.contains("before/after hooks"),
        "{err}"
    );
    assert_eq!(find_files(&env.repo()), repo_before, "nothing was written");
    drop(writer);

    // Once the writer has closed, the same backup goes through.
    let out = env.ok(&["backup", "--source", "analytics"]);
    assert!(out.contains("analytics -> local: snapshot"), "{out}");
}

#[test]
fn a_file_that_is_not_duckdb_and_a_bad_lock_timeout_are_clear_errors() {
    let env = duckdb_env("soon");
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 2);
    assert!(err.contains("lock_timeout \"soon\""), "{err}");

    let env = duckdb_env("5s");
    std::fs::write(env.dir.path().join("analytics.duckdb"), vec![7u8; 5000]).unwrap();
    let (code, _, err) = env.run(&["backup", "--source", "analytics"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a DuckDB database"), "{err}");
}

#[test]
fn a_restore_without_libduckdb_stops_before_touching_the_destination() {
    let env = duckdb_env("30s");
    make_duckdb(&env.dir.path().join("analytics.duckdb"));
    env.ok(&["backup", "--source", "analytics"]);
    let to = env.dir.path().join("restored.duckdb");
    let out = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(["restore", "--source", "analytics", "--latest", "--to"])
        .arg(&to)
        .env(
            "OFFSITE_LIBDUCKDB",
            env.dir.path().join("no-such-libduckdb.so"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot load DuckDB"), "{err}");
    assert!(err.contains("OFFSITE_LIBDUCKDB"), "{err}");
    assert!(!to.exists());
    assert!(leftovers(env.dir.path()).is_empty());
}

/// DuckDB's block checksum (its `Checksum`: 5381 xor each little-endian
/// 8-byte word times 0xbf58476d1ce4e5b9), to craft a header DuckDB accepts.
fn duckdb_checksum(block: &[u8]) -> u64 {
    block.chunks_exact(8).fold(5381u64, |acc, w| {
        acc ^ u64::from_le_bytes(w.try_into().unwrap()).wrapping_mul(0xbf58476d1ce4e5b9)
    })
}

#[test]
fn a_database_from_a_newer_duckdb_is_a_version_error_and_restores_when_asked() {
    let env = duckdb_env("30s");
    let db = env.dir.path().join("analytics.duckdb");
    make_duckdb(&db);
    // The storage version a newer DuckDB writes (bytes 12..20 of the main
    // header, after the checksum and "DUCK"), which this libduckdb cannot read.
    let mut bytes = std::fs::read(&db).unwrap();
    assert_eq!(&bytes[8..12], b"DUCK");
    bytes[12..20].copy_from_slice(&200u64.to_le_bytes());
    let sum = duckdb_checksum(&bytes[8..4096]);
    bytes[..8].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&db, &bytes).unwrap();
    let e = duckdb_lib::check(&db).unwrap_err().to_string();
    assert!(
        e.contains("version"),
        "the crafted file is a version problem for DuckDB: {e}"
    );
    env.ok(&["backup", "--source", "analytics"]);

    let to = env.dir.path().join("restored.duckdb");
    let args = [
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ];
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("storage version 200"), "{err}");
    let library = duckdb_lib::version().unwrap();
    assert!(err.contains(&library), "names the libduckdb version: {err}");
    assert!(!err.contains("damaged"), "not reported as damage: {err}");
    assert!(err.contains("--no-database-check"), "{err}");
    assert!(!to.exists());
    assert!(leftovers(env.dir.path()).is_empty());

    // Asked explicitly, the restore goes through on the checksum alone.
    let mut skip = args.to_vec();
    skip.push("--no-database-check");
    let out = env.ok(&skip);
    assert!(out.contains("database check skipped"), "{out}");
    assert_eq!(std::fs::read(&to).unwrap(), bytes);

    // The checksum is still verified: a damaged pack fails the restore.
    for p in find_files(&env.repo().join("packs")) {
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let again = env.dir.path().join("again.duckdb");
    let mut skip = skip.clone();
    let n = skip.len();
    skip[n - 2] = again.to_str().unwrap();
    let (code, out, err) = env.run(&skip);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!again.exists());
}
