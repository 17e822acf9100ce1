//! `offsite repair` through the binary: a database with smashed pages in the
//! middle of a table is salvaged into a new file; the original stays
//! byte-identical; files that are not SQLite are refused.

use std::io::{Seek, SeekFrom, Write};

use rusqlite::Connection;

use crate::support::*;

#[test]
fn repair_salvages_most_rows_into_a_new_file_and_leaves_the_original_alone() {
    let env = Env::new();
    let db = env.db();
    env.make_db(&db, 4_000);
    // Fold the WAL into the file, so the smashed pages are the ones SQLite reads.
    Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
        .unwrap();
    let pages = std::fs::metadata(&db).unwrap().len() / 4096;
    let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    for p in [pages / 3, pages / 3 + 1] {
        f.seek(SeekFrom::Start(p * 4096 + 8)).unwrap();
        f.write_all(&[0x5a; 2000]).unwrap();
    }
    drop(f);
    let before = std::fs::read(&db).unwrap();

    let out = env.dir.path().join("salvage.db");
    let json = env.ok(&[
        "repair",
        db.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["integrity_check"], "ok");
    let tasks = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "tasks")
        .unwrap();
    let recovered = tasks["recovered"].as_u64().unwrap();
    assert!(
        (3_000..4_000).contains(&recovered),
        "recovered {recovered} of 4000: {json}"
    );
    assert_eq!(tasks["damaged"], true);
    assert_eq!(dump_count(&out), recovered as i64);
    let check: String = Connection::open(&out)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the original is unchanged"
    );

    // Again to the same place: refused, the first salvage is kept.
    let (code, _, err) = env.run(&[
        "repair",
        db.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(dump_count(&out), recovered as i64);

    // The default output lands beside the database.
    let text = env.ok(&["repair", db.to_str().unwrap()]);
    assert!(text.contains("tasks"), "{text}");
    assert!(text.contains("damaged pages skipped"), "{text}");
    let beside: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("app.db.recovered-") && n.ends_with(".db"))
        .collect();
    assert_eq!(beside.len(), 1, "{beside:?}");
}

#[test]
fn repair_refuses_files_that_are_not_sqlite_and_missing_files() {
    let env = Env::new();
    let notes = env.dir.path().join("notes.txt");
    std::fs::write(&notes, "not a database").unwrap();
    let before = find_files(env.dir.path());
    let (code, _, err) = env.run(&["repair", notes.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("notes.txt is not a SQLite database"), "{err}");
    let (code, _, err) = env.run(&["repair", "/nonexistent/app.db"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/app.db"), "{err}");
    assert_eq!(find_files(env.dir.path()), before, "nothing was written");
}
