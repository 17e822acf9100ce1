//! One backup run, one snapshot: with two targets the source is read once
//! and both hold the same snapshot (one id, one checksum) while a writer
//! commits; it is listed once with both targets, restores from either, and
//! a target that missed a run gets the next run's snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::Connection;

use crate::support::*;

/// Adds a second local target named `second` at `path`.
fn add_second_target(env: &Env, path: &std::path::Path) {
    let cfg = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[[targets]]").unwrap();
    let second = format!(
        "[[targets]]\nname = \"second\"\nkind = \"local\"\npath = \"{}\"\n\n",
        path.display()
    );
    std::fs::write(
        &cfg,
        format!("{}{second}{}", &text[..start], &text[start..]),
    )
    .unwrap();
}

#[test]
fn two_targets_store_one_snapshot_while_a_writer_commits_and_either_restores_it() {
    let env = Env::new();
    env.make_db(&env.db(), 20_000);
    add_second_target(&env, &env.dir.path().join("second"));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (env.db(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.execute(
                    "INSERT INTO tasks(title, body, meta) VALUES ('w', ?1, '{}')",
                    [format!("written during the backup {n} ").repeat(20)],
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    let out = env.ok(&["backup", "--json"]);
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0, "the writer committed nothing");

    let results = json(&out);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2, "{out}");
    let snap = |i: usize| &results[i]["snapshot"];
    let targets: Vec<&str> = results
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["second", "local"]);
    for field in ["id", "sha256", "size", "chunks", "started", "time"] {
        assert_eq!(snap(0)[field], snap(1)[field], "{field} differs: {out}");
    }
    let id = snap(0)["id"].as_str().unwrap().to_string();

    // Listed once, with both targets.
    let listed = snapshots(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["targets"], serde_json::json!(["second", "local"]));
    let table = env.ok(&["snapshots"]);
    let line = table.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(line.contains("second,local"), "{table}");

    let mut restored = Vec::new();
    for target in ["local", "second"] {
        let to = env.dir.path().join(format!("from-{target}.db"));
        env.ok(&[
            "restore",
            "--source",
            "app",
            "--snapshot",
            &id,
            "--target",
            target,
            "--to",
            to.to_str().unwrap(),
        ]);
        assert_eq!(integrity(&to), "ok");
        restored.push(std::fs::read(&to).unwrap());
    }
    assert!(restored[0] == restored[1], "the two copies differ");
}

#[test]
fn a_target_that_missed_a_run_gets_the_next_runs_snapshot() {
    let env = Env::new();
    env.make_db(&env.db(), 2_000);
    // The second target's disk is not there: a file where its directory goes.
    let blocked = env.dir.path().join("second");
    std::fs::write(&blocked, b"not a directory").unwrap();
    add_second_target(&env, &blocked.join("repo"));

    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("app -> local: snapshot"), "{out}");
    assert!(err.contains("second: FAILED"), "{err}");
    assert!(err.contains("1 of 2 backups failed"), "{err}");
    assert_eq!(snapshots(&env).len(), 1);
    // The commands that work per target fail that target's part only and
    // name it once; listing passes it over with a warning.
    for args in [&["unlock"][..], &["verify"]] {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            err.contains("second: FAILED: target \"second\": "),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("target \"second\": target"),
            "{args:?}: {err}"
        );
        assert!(
            out.contains("local") || err.contains("local"),
            "{args:?}: {out}{err}"
        );
    }
    let (code, out, err) = env.run(&["snapshots"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(err.matches("target \"second\"").count(), 1, "{err}");
    assert!(err.contains("its snapshots are not included"), "{err}");
    let copies = |env: &Env| {
        let (_, out, err) = env.run(&["status", "--json"]);
        let report = json(&out);
        assert!(report["copies"].is_array(), "{out}{err}");
        report["copies"][0].clone()
    };
    let c = copies(&env);
    assert_eq!(
        (c["complete_on"].as_u64(), c["targets"].as_u64()),
        (Some(1), Some(2)),
        "{c}"
    );
    assert_eq!(c["missing"], serde_json::json!(["second"]));

    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    Connection::open(env.db())
        .unwrap()
        .execute("UPDATE tasks SET title = 'after' WHERE id % 7 = 0", [])
        .unwrap();
    let out = env.ok(&["backup", "--json"]);
    let results = json(&out);
    let ids: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["snapshot"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "{out}");
    let listed = snapshots(&env);
    let newest = listed.iter().find(|s| s["id"] == ids[0]).unwrap();
    assert_eq!(newest["targets"], serde_json::json!(["second", "local"]));
    let c = copies(&env);
    assert_eq!(c["complete_on"].as_u64(), Some(2), "{c}");
    assert_eq!(c["newest"].as_str(), Some(ids[0]));
    let table = env.ok(&["status"]);
    assert!(table.contains("complete on 2 of 2 targets"), "{table}");
    let to = env.dir.path().join("latest.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--target",
        "second",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to), dump(&env.db()));
}
