//! Restoring under a running application: refused while another process
//! has the database open (nothing changed, the app's writes kept), and the
//! source's before_restore / after_restore hooks that stop and restart it
//! around the switch.

use std::path::Path;

use backup_core::source::duckdb_lib::Database;

use crate::apps::*;
use crate::support::*;

fn in_place(db: &Path) -> Vec<String> {
    [
        "restore",
        "--source",
        "app",
        "--latest",
        "--force",
        "--to",
        db.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn assert_untouched(env: &Env) {
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("offsite-"))
        .collect();
    assert!(names.is_empty(), "nothing moved aside or staged: {names:?}");
}

#[test]
fn a_restore_is_refused_while_another_process_writes_the_database() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 2_000);
    env.ok(&["backup"]);
    let _guard = WriterGuard(env.dir.path());
    start_writer(env.dir.path(), &db, "live");
    wait_for(|| count_marked(&db, "live") > 10, "the writer to write");

    let args = in_place(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("open in another process"), "{err}");
    assert!(err.contains("python3"), "names the process: {err}");
    assert!(
        err.contains("stop the app first, or set a before_restore hook"),
        "{err}"
    );
    assert_untouched(&env);
    let written = stop_writer(env.dir.path());
    assert_eq!(
        count_marked(&db, "live"),
        written,
        "every row the app wrote is in the database"
    );
    // With the app stopped, the same restore goes through.
    env.ok(&args);
}

#[test]
fn a_restore_is_refused_while_a_process_merely_holds_the_database_open() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 500);
    env.ok(&["backup"]);
    // Rollback-journal mode: an idle connection holds no lock at all, so
    // only the process's open descriptor shows it.
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "journal_mode", "DELETE")
        .unwrap();
    let holder = Holder::start(&db);
    let args = in_place(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("open in another process"), "{err}");
    assert_untouched(&env);
    drop(holder);
    env.ok(&args);
}

#[test]
fn a_restore_is_refused_while_duckdb_has_the_database_open() {
    let env = crate::duckdb::duckdb_env("30s");
    let db = env.dir.path().join("analytics.duckdb");
    crate::duckdb::make_duckdb(&db);
    env.ok(&["backup", "--source", "analytics"]);
    // This test process is the application, holding DuckDB's write lock.
    let app = Database::open(&db, false).unwrap();
    let args = [
        "restore",
        "--source",
        "analytics",
        "--latest",
        "--force",
        "--to",
        db.to_str().unwrap(),
    ];
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("open in another process"), "{err}");
    assert_untouched(&env);
    drop(app);
    env.ok(&args);
}

fn log(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.dir.path().join("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// before_restore stops the writer and waits for it; after_restore logs and
/// starts it again (marker "after"), with its output away from offsite's pipes.
fn hooked_env() -> Env {
    Env::with_sources(|_| {
        "before_restore = \"echo \\\"$OFFSITE_EVENT\\\" >> hooks.log; kill -TERM $(cat writer.pid); \
         while [ ! -f writer.stopped ]; do sleep 0.05; done; cp writer.stopped stopped.count; rm writer.stopped\"\n\
         after_restore = \"echo \\\"$OFFSITE_EVENT ${OFFSITE_ERROR:-ok}\\\" >> hooks.log; \
         nohup python3 writer.py app.db after writer.stopped >/dev/null 2>&1 & echo $! > writer.pid\"\n"
            .to_string()
    })
}

#[test]
fn restore_hooks_stop_the_app_for_the_switch_and_start_it_again() {
    let env = hooked_env();
    let db = env.db();
    env.make_db(&db, 2_000);
    env.ok(&["backup"]);
    let snap = dump(&db);
    let _guard = WriterGuard(env.dir.path());
    start_writer(env.dir.path(), &db, "live");
    wait_for(|| count_marked(&db, "live") > 10, "the writer to write");

    let args = in_place(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.ok(&args);
    assert!(out.contains("integrity_check verified"), "{out}");
    assert_eq!(log(&env), ["before_restore", "after_restore ok"]);

    // Every row the app wrote before it was stopped is in the replaced file.
    let written: i64 = std::fs::read_to_string(env.dir.path().join("stopped.count"))
        .unwrap()
        .parse()
        .unwrap();
    let kept: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("app.db.offsite-old-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(count_marked(&kept[0], "live"), written);

    // The restarted app writes to the restored database.
    wait_for(
        || count_marked(&db, "after") > 5,
        "the restarted app to write",
    );
    let after = stop_writer(env.dir.path());
    assert_eq!(count_marked(&db, "after"), after);
    let rows: Vec<_> = dump(&db).into_iter().filter(|r| r.1 != "after").collect();
    assert_eq!(
        rows, snap,
        "the snapshot, plus what the restarted app wrote"
    );
}

#[test]
fn after_restore_runs_when_the_restore_fails_and_a_failing_before_restore_stops_it() {
    let env = hooked_env();
    let db = env.db();
    env.make_db(&db, 500);
    env.ok(&["backup"]);
    let before = dump(&db);
    let _guard = WriterGuard(env.dir.path());
    start_writer(env.dir.path(), &db, "live");
    wait_for(|| count_marked(&db, "live") > 5, "the writer to write");

    let args = in_place(&db);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = env.run_with(
        &args,
        &[("OFFSITE_FAILPOINTS", "restore.rename_into_place=error")],
    );
    assert_eq!(code, 1, "{out}{err}");
    let lines = log(&env);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "before_restore");
    assert!(
        lines[1].starts_with("after_restore ") && lines[1].contains("fail-point"),
        "after_restore ran with the error: {lines:?}"
    );
    // The app is back, writing to the old database.
    wait_for(
        || count_marked(&db, "after") > 5,
        "the restarted app to write",
    );
    stop_writer(env.dir.path());
    assert!(dump(&db).starts_with(&before));

    // A before_restore that fails: no restore, and no after_restore.
    std::fs::remove_file(env.dir.path().join("hooks.log")).unwrap();
    std::fs::write(env.dir.path().join("writer.pid"), "not-a-pid").unwrap();
    let config = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "before_restore = \"",
            "before_restore = \"echo 'cannot stop the app' >&2; exit 4; ",
        ),
    )
    .unwrap();
    let rows = dump(&db);
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("before_restore hook") && err.contains("cannot stop the app"),
        "{err}"
    );
    assert!(log(&env).is_empty(), "after_restore did not run");
    assert_eq!(dump(&db), rows, "nothing restored");
}
