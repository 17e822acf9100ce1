//! `restore --force` interrupted at each step of putting the restored
//! database in place (an error, or SIGKILL, at every fail-point): the path
//! always holds the old database with its own -wal, or the new checked one,
//! and a rerun gives the snapshot. Also: stale side files beside the path
//! are moved aside, never replayed, and every replaced file is kept under a
//! name of its own.

use std::path::{Path, PathBuf};

use backup_core::source::duckdb_lib::Database;

use crate::apps::*;
use crate::support::*;

/// The steps of restore.rs's `place` module, in order.
const STEPS: [&str; 4] = [
    "restore.keep_old",
    "restore.fold_old",
    "restore.move_side_files",
    "restore.rename_into_place",
];

/// The files at `db` and beside it (`app.db`, `app.db-wal`, ...).
fn family(db: &Path) -> Vec<PathBuf> {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(name.as_str())
        })
        .collect();
    out.sort();
    out
}

/// Copies of the database and its side files, to put back before each run.
fn save(db: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for f in family(db) {
        std::fs::copy(&f, into.join(f.file_name().unwrap())).unwrap();
    }
}

fn reset(db: &Path, from: &Path) {
    for f in family(db) {
        std::fs::remove_file(f).unwrap();
    }
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, db.with_file_name(p.file_name().unwrap())).unwrap();
    }
}

/// The kept copies of replaced databases (not their side files).
fn kept(db: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.offsite-old-", db.file_name().unwrap().to_string_lossy());
    family(db)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(&prefix)
                && ![".wal", "-wal", "-shm", "-journal"]
                    .iter()
                    .any(|s| n.ends_with(s))
        })
        .collect()
}

fn restore_args(db: &Path) -> Vec<String> {
    [
        "restore",
        "--source",
        "app",
        "--latest",
        "--force",
        "--no-pre-restore-snapshot",
        "--to",
        db.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// Interrupts `restore --force` at each step, by an error and by SIGKILL,
/// starting each time from the files saved in `pristine`: the path must
/// hold the old state (`old`, as SQLite reads it with its side files), every
/// kept copy too, and a rerun must give the snapshot (`snap`).
fn interrupt_at_each_step(env: &Env, pristine: &Path, old: &Rows, snap: &Rows) {
    let db = env.db();
    let args = restore_args(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for step in STEPS {
        for action in ["error", "kill"] {
            let at = format!("{step}={action}");
            reset(&db, pristine);
            let (code, out, err) = env.run_with(&args, &[("OFFSITE_FAILPOINTS", &at)]);
            assert_ne!(
                code, 0,
                "{at}: the fail-point must stop the restore\n{out}{err}"
            );
            let (check, rows) = state_at(&db);
            assert_eq!(check, "ok", "{at}: {:?}", family(&db));
            assert!(
                &rows == old,
                "{at}: the path holds the old state, with its log's work"
            );
            for k in kept(&db) {
                let (check, rows) = state_at(&k);
                assert_eq!(check, "ok", "{at}: kept copy {}", k.display());
                assert!(
                    &rows == old,
                    "{at}: kept copy {} is the old state",
                    k.display()
                );
            }

            let out = env.ok(&args);
            // The first restore's check is recorded (format 2): later ones
            // prove byte identity with what it checked instead.
            assert!(
                out.contains("integrity_check verified") || out.contains("integrity_check ok at"),
                "{at}: {out}"
            );
            let (check, rows) = state_at(&db);
            assert_eq!(check, "ok", "{at}: after the rerun");
            assert!(&rows == snap, "{at}: the rerun restored the snapshot");
            assert_eq!(&dump(&db), snap, "{at}");
            let kept = kept(&db);
            assert!(!kept.is_empty(), "{at}: the old database was kept");
            for k in &kept {
                let (check, rows) = state_at(k);
                assert_eq!(check, "ok", "{at}: kept copy {}", k.display());
                assert!(
                    &rows == old,
                    "{at}: kept copy {} is the old state",
                    k.display()
                );
            }
            assert!(leftovers(env.dir.path()).is_empty(), "{at}");
        }
    }
}

type Rows = Vec<(i64, String, String)>;

#[test]
fn an_interrupted_in_place_restore_leaves_the_old_database_whole_and_a_rerun_restores() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 3_000);
    env.ok(&["backup"]);
    let snap = dump(&db);
    // The app then changed a third of the pages and was killed: those
    // transactions are only in app.db-wal.
    crash_after(
        &db,
        "DELETE FROM tasks WHERE id % 3 = 0;
         UPDATE tasks SET title = 'changed' WHERE id % 5 = 0;
         INSERT INTO tasks(title, body) SELECT 'new ' || id, body FROM tasks WHERE id < 800;",
    );
    let pristine = env.dir.path().join("pristine");
    save(&db, &pristine);
    let (check, old) = state_at(&db);
    assert_eq!(check, "ok");
    assert_ne!(old, snap);
    interrupt_at_each_step(&env, &pristine, &old, &snap);
}

#[test]
fn an_interrupted_restore_over_a_hot_journal_leaves_the_old_state() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 3_000);
    env.ok(&["backup"]);
    let snap = dump(&db);
    // What the app committed since the snapshot, in rollback-journal mode.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.pragma_update(None, "journal_mode", "DELETE").unwrap();
    c.execute(
        "UPDATE tasks SET body = 'after the backup' WHERE id % 2 = 0",
        [],
    )
    .unwrap();
    drop(c);
    let old = dump(&db);
    // The app died inside a transaction that had already written pages into
    // app.db: only app.db-journal can undo them.
    crash_mid_transaction(&db, "UPDATE tasks SET body = zeroblob(500)");
    let pristine = env.dir.path().join("pristine");
    save(&db, &pristine);
    let (check, rows) = state_at(&db);
    assert_eq!(check, "ok");
    assert!(rows == old, "SQLite rolls the journal back");
    interrupt_at_each_step(&env, &pristine, &old, &snap);
}

#[test]
fn a_damaged_database_and_its_wal_are_kept_exactly_and_replaced() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 2_000);
    env.ok(&["backup"]);
    let snap = dump(&db);
    crash_after(&db, "DELETE FROM tasks WHERE id % 2 = 0;");
    // The damage being repaired: the database file is no longer SQLite.
    std::fs::write(&db, vec![0x5a; 64 << 10]).unwrap();
    let wal = std::fs::read(side(&db, "-wal")).unwrap();
    let out = env.ok(&restore_args(&db)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(out.contains("integrity_check verified"), "{out}");
    assert!(
        !side(&db, "-wal").exists(),
        "the old -wal is not beside the new file"
    );
    assert_eq!(dump(&db), snap);
    let kept = kept(&db);
    assert_eq!(kept.len(), 1, "{:?}", family(&db));
    assert_eq!(std::fs::read(&kept[0]).unwrap(), vec![0x5a; 64 << 10]);
    assert_eq!(std::fs::read(side(&kept[0], "-wal")).unwrap(), wal);
}

#[test]
fn a_stale_wal_beside_a_missing_database_is_moved_aside_not_replayed() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 3_000);
    env.ok(&["backup"]);
    let snap = dump(&db);
    crash_after(
        &db,
        "DELETE FROM tasks WHERE id % 2 = 0; UPDATE tasks SET body = 'x' WHERE id % 7 = 0;",
    );
    let wal = std::fs::read(side(&db, "-wal")).unwrap();
    // What an interrupted restore of an earlier release left: the database
    // moved aside, its -wal and -shm still at the path.
    std::fs::rename(&db, env.dir.path().join("app.db.moved-by-hand")).unwrap();

    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        db.to_str().unwrap(),
    ]);
    let (check, rows) = state_at(&db);
    assert_eq!(check, "ok");
    assert!(rows == snap, "the stale -wal was not replayed");
    assert_eq!(dump(&db), snap);
    let kept_wal: Vec<_> = family(&db)
        .into_iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("app.db.offsite-old-") && n.ends_with("-wal")
        })
        .collect();
    assert_eq!(kept_wal.len(), 1, "{:?}", family(&db));
    assert_eq!(std::fs::read(&kept_wal[0]).unwrap(), wal, "kept as it was");
}

#[test]
fn restores_in_the_same_second_keep_every_replaced_file() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 200);
    env.ok(&["backup"]);
    let args = restore_args(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for generation in 0..4 {
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute(
                "UPDATE tasks SET title = ?1 WHERE id = 1",
                [format!("generation {generation}")],
            )
            .unwrap();
        env.ok(&args);
    }
    let mut generations: Vec<String> = kept(&db)
        .iter()
        .map(|k| {
            rusqlite::Connection::open(k)
                .unwrap()
                .query_row("SELECT title FROM tasks WHERE id = 1", [], |r| r.get(0))
                .unwrap()
        })
        .collect();
    generations.sort();
    assert_eq!(
        generations,
        (0..4)
            .map(|g| format!("generation {g}"))
            .collect::<Vec<_>>(),
        "{:?}",
        family(&db)
    );
}

fn duck_rows(db: &Path) -> Vec<Vec<Option<String>>> {
    // Read from a copy: opening the path itself would replay its .wal into it.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.duckdb");
    std::fs::copy(db, &copy).unwrap();
    if side(db, ".wal").exists() {
        std::fs::copy(side(db, ".wal"), side(&copy, ".wal")).unwrap();
    }
    let mut d = Database::open(&copy, true).unwrap();
    d.query("SELECT id::VARCHAR, name FROM events ORDER BY id")
        .unwrap()
}

/// Leaves `sql`'s work in the database's .wal, as a killed application does.
fn duck_uncheckpointed(db: &Path, sql: &str) {
    let mut w = Database::open(db, false).unwrap();
    w.execute(&format!(
        "SET wal_autocheckpoint = '1TB'; PRAGMA disable_checkpoint_on_shutdown; {sql}"
    ))
    .unwrap();
}

#[test]
fn an_interrupted_duckdb_restore_leaves_the_old_database_whole_and_a_rerun_restores() {
    let env = crate::duckdb::duckdb_env("30s");
    let db = env.dir.path().join("analytics.duckdb");
    crate::duckdb::make_duckdb(&db);
    // The snapshot carries a .wal too: the restored database must have its work.
    duck_uncheckpointed(&db, "INSERT INTO events VALUES (99999, 'in the wal', 0);");
    env.ok(&["backup", "--source", "analytics"]);
    let snap = duck_rows(&db);
    duck_uncheckpointed(
        &db,
        "DELETE FROM events WHERE id % 3 = 0; INSERT INTO events VALUES (77777, 'later', 1);",
    );
    assert!(side(&db, ".wal").exists());
    let pristine = env.dir.path().join("pristine");
    save(&db, &pristine);
    let old = duck_rows(&db);
    assert_ne!(old, snap);
    let args = [
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--force",
        "--no-pre-restore-snapshot",
        "--to",
        db.to_str().unwrap(),
    ];
    for step in STEPS {
        for action in ["error", "kill"] {
            let at = format!("{step}={action}");
            reset(&db, &pristine);
            let (code, out, err) = env.run_with(&args, &[("OFFSITE_FAILPOINTS", &at)]);
            assert_ne!(code, 0, "{at}: {out}{err}");
            assert!(duck_rows(&db) == old, "{at}: the old state is at the path");
            let out = env.ok(&args);
            assert!(out.contains("DuckDB open verified"), "{at}: {out}");
            assert!(!side(&db, ".wal").exists(), "{at}: one file, no .wal");
            assert!(
                duck_rows(&db) == snap,
                "{at}: the rerun restored the snapshot"
            );
            for k in kept(&db) {
                assert!(duck_rows(&k) == old, "{at}: kept copy {}", k.display());
            }
        }
    }
}
