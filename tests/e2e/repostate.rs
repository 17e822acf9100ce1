//! What the repository holds beside the genuine snapshots, through the
//! binary: junk and empty objects are skipped (with a warning naming them),
//! reported by verify and removed by prune; damaged packs are recorded, the
//! next backup stores their chunks again, `verify --read-data-subset` reads
//! a rotating part of the packs, and restore takes what one target lost
//! from another.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::support::*;

fn append_config(env: &Env, toml: &str) {
    let path = env.dir.path().join("offsite.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(toml);
    std::fs::write(&path, text).unwrap();
}

fn restore(env: &Env, extra: &[&str], name: &str) -> (i32, String, String, PathBuf) {
    let to = env.dir.path().join(name);
    let mut args = vec!["restore", "--source", "app", "--to", to.to_str().unwrap()];
    if !extra.contains(&"--snapshot") {
        args.push("--latest");
    }
    args.extend_from_slice(extra);
    let (code, out, err) = env.run(&args);
    (code, out, err, to)
}

/// Keys (relative to the repository) of the objects under `prefix`.
fn keys(env: &Env, prefix: &str) -> Vec<String> {
    find_files(&env.repo().join(prefix))
        .iter()
        .map(|p| {
            p.strip_prefix(env.repo())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn flip_middle_byte(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    std::fs::write(path, data).unwrap();
}

/// 300 bytes that are not an age file: what anyone with write access to the
/// bucket can drop, no key needed.
fn junk_bytes() -> Vec<u8> {
    (0..300u32).map(|i| (i * 7919 % 251) as u8).collect()
}

#[test]
fn a_junk_object_under_snapshots_is_skipped_reported_and_pruned() {
    let env = Env::new();
    append_config(&env, "\n[retention]\nkeep_last = 5\n");
    env.make_db(&env.db(), 2_000);
    env.ok(&["backup"]);
    let genuine = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    // Named to sort as the newest snapshot.
    let junk = "snapshots/20991231T235959Z-0badc0de";
    std::fs::write(env.repo().join(junk), junk_bytes()).unwrap();

    let (code, out, err) = env.run(&["snapshots"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&genuine), "{out}");
    assert!(err.contains(&format!("skipping {junk}")), "{err}");
    let (code, _, err, to) = restore(&env, &[], "r.db");
    assert_eq!(code, 0, "{err}");
    assert_eq!(dump_count(&to), 2_000);
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.run(&["drill"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("PASSED"), "{out}");

    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1, "verify reports it: {out}");
    assert!(out.contains("DAMAGED  20991231T235959Z-0badc0de"), "{out}");

    let out = env.ok(&["prune", "--dry-run"]);
    assert!(out.contains(&format!("would delete {junk}")), "{out}");
    assert!(env.repo().join(junk).exists());
    let out = env.ok(&["prune"]);
    assert!(out.contains(&format!("deleted {junk}")), "{out}");
    assert!(!env.repo().join(junk).exists());
    let (_, out, err) = env.run(&["snapshots"]);
    assert!(!err.contains("skipping"), "{err}");
    assert!(out.contains(&genuine));
    env.ok(&["verify"]);
}

#[test]
fn an_empty_manifest_left_by_an_older_release_hides_no_other_snapshot() {
    // The older release wrote format 1.
    let env = Env::new().format_1();
    append_config(&env, "\n[retention]\nkeep_last = 5\n");
    env.make_db(&env.db(), 2_000);
    env.ok(&["backup"]);
    let first = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    Connection::open(env.db())
        .unwrap()
        .execute("DELETE FROM tasks WHERE id > 500", [])
        .unwrap();
    env.ok(&["backup"]);
    // The second backup's manifest as a full disk left it with an older release.
    let second = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let manifest = format!("snapshots/{second}");
    std::fs::write(env.repo().join(&manifest), b"").unwrap();

    let (code, out, err) = env.run(&["snapshots", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], first.as_str());
    assert!(
        err.contains(&manifest) && err.contains("empty"),
        "the warning names it: {err}"
    );
    let (code, _, err, to) = restore(&env, &[], "r.db");
    assert_eq!(code, 0, "{err}");
    assert_eq!(dump_count(&to), 2_000, "the intact snapshot restores");

    let (code, out, _) = env.run(&["verify", "--json"]);
    assert_eq!(code, 1);
    let report = json(&out);
    let faults: Vec<&serde_json::Value> = report[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .collect();
    assert_eq!(faults.len(), 1, "{out}");
    assert_eq!(faults[0]["id"], second.as_str());

    env.ok(&["prune"]);
    assert!(!env.repo().join(&manifest).exists());
    assert!(
        !env.repo().join(format!("lists/{second}")).exists(),
        "its list went with it, as an interrupted backup's does"
    );
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn an_empty_index_file_does_not_make_snapshots_unrestorable() {
    let env = Env::new();
    append_config(&env, "\n[retention]\nkeep_last = 5\n");
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let empty = format!("index/{}", "0".repeat(32));
    std::fs::write(env.repo().join(&empty), b"").unwrap();

    let (code, _, err, to) = restore(&env, &[], "r.db");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("skipping {empty}")), "{err}");
    assert_eq!(dump(&to), dump(&env.db()));
    let out = env.ok(&["backup", "--json"]);
    assert_eq!(
        json(&out)[0]["snapshot"]["new_bytes"],
        0,
        "the index still deduplicates: {out}"
    );
    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains(&empty), "{out}");

    let out = env.ok(&["prune"]);
    assert!(out.contains(&format!("deleted {empty}")), "{out}");
    env.ok(&["verify", "--read-data"]);
}

/// A SQLite database unlike `Env::make_db`'s, so that no page of one is a
/// page of the other.
fn make_other_db(path: &Path, rows: usize) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE notes(id INTEGER PRIMARY KEY, text TEXT);")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO notes(text) VALUES (?1)",
            [format!("note {i} of the other database, {}", i * 31)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_truncated_index_file_contributes_nothing_and_breaks_only_what_needs_it() {
    let env = Env::with_sources(|dir| {
        format!(
            "[[sources]]\nname = \"other\"\nkind = \"sqlite\"\npath = \"{}\"\n",
            dir.join("other.db").display()
        )
    });
    append_config(&env, "\n[retention]\nkeep_last = 5\n");
    env.make_db(&env.db(), 2_000);
    let other = env.dir.path().join("other.db");
    // About 2500 pages: its index file is larger than one age chunk
    // (64 KiB), so a truncated copy still decodes part of the way.
    make_other_db(&other, 200_000);
    env.ok(&["backup", "--source", "app"]);
    let before = keys(&env, "index");
    env.ok(&["backup", "--source", "other"]);
    let mut added: Vec<PathBuf> = keys(&env, "index")
        .into_iter()
        .filter(|k| !before.contains(k))
        .map(|k| env.repo().join(k))
        .collect();
    added.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let index = added.pop().expect("the other source's index file");
    let bytes = std::fs::read(&index).unwrap();
    assert!(bytes.len() > 80 << 10, "{} bytes", bytes.len());
    std::fs::write(&index, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let key = index
        .strip_prefix(env.repo())
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // The snapshot that does not need it restores.
    let (code, _, err, to) = restore(&env, &[], "app-restored.db");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("skipping {key}")), "{err}");
    assert_eq!(dump(&to), dump(&env.db()));
    // The one that does fails clearly, before writing anything.
    let to = env.dir.path().join("other-restored.db");
    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "other",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not in any index file"), "{err}");
    assert!(!to.exists());

    // Nothing of the truncated file counts: every chunk of the snapshot
    // that needs it is reported missing, not just those past the cut.
    let list = snapshots(&env);
    let snap = list.iter().find(|s| s["source"] == "other").unwrap();
    let chunks = snap["chunks"].as_u64().unwrap();
    let (code, out, _) = env.run(&["verify", "--json"]);
    assert_eq!(code, 1);
    let report = json(&out);
    let faults = report[0]["repository_faults"].to_string();
    assert!(faults.contains(&key), "{faults}");
    let other_check = report[0]["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "other")
        .unwrap()
        .clone();
    let fault = other_check["fault"].as_str().unwrap();
    assert!(
        fault.contains(&format!("and {} more", chunks - 3)),
        "all {chunks} chunks unindexed: {fault}"
    );

    // The next backup of it stores what is no longer indexed, and the old
    // snapshot restores again.
    env.ok(&["backup", "--source", "other"]);
    env.ok(&[
        "restore",
        "--source",
        "other",
        "--snapshot",
        snap["id"].as_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(integrity(&to), "ok");
    let out = env.ok(&["prune"]);
    assert!(out.contains(&format!("deleted {key}")), "{out}");
    env.ok(&["verify", "--read-data"]);
}

#[test]
fn a_damaged_pack_is_recorded_by_verify_and_the_next_backup_stores_it_again() {
    damage_found_by_verify_is_stored_again(Env::new());
}

#[test]
fn on_format_1_a_damaged_pack_is_recorded_by_verify_and_stored_again() {
    damage_found_by_verify_is_stored_again(Env::new().format_1());
}

fn damage_found_by_verify_is_stored_again(env: Env) {
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let first = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let packs = find_files(&env.repo().join("packs"));
    assert_eq!(packs.len(), 1);
    flip_middle_byte(&packs[0]);

    // Without reading data, verify does not call the data intact.
    let out = env.ok(&["verify"]);
    assert!(out.contains("data not read"), "{out}");
    let (code, out, err) = env.run(&["verify", "--read-data"]);
    assert_eq!(code, 1, "{out}{err}");
    let records = keys(&env, "damaged");
    assert_eq!(records.len(), 1, "verify --read-data recorded the damage");
    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1, "and now plain verify knows it too: {out}");
    assert!(out.contains("no intact copy"), "{out}");

    let out = env.ok(&["backup", "--json"]);
    let new_bytes = json(&out)[0]["snapshot"]["new_bytes"].as_u64().unwrap();
    assert!(new_bytes > 0, "the damaged chunks are stored again: {out}");
    let (code, out, err, to) = restore(&env, &[], "latest.db");
    assert_eq!(code, 0, "the new snapshot restores: {out}{err}");
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
    // The older snapshot's chunks are stored again too: it restores.
    let (code, _, err, to) = restore(&env, &["--snapshot", &first], "first.db");
    assert_eq!(code, 0, "{err}");
    assert_eq!(integrity(&to), "ok");
    env.ok(&["verify", "--read-data"]);
    assert_eq!(keys(&env, "damaged"), records, "nothing new recorded");
}

#[test]
fn a_restore_or_drill_that_meets_damage_records_it_too() {
    damage_met_by_restore_is_recorded(Env::new());
}

#[test]
fn on_format_1_a_restore_or_drill_that_meets_damage_records_it_too() {
    damage_met_by_restore_is_recorded(Env::new().format_1());
}

fn damage_met_by_restore_is_recorded(env: Env) {
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let pack = find_files(&env.repo().join("packs"))[0].clone();
    flip_middle_byte(&pack);
    let (code, _, err, to) = restore(&env, &[], "r.db");
    assert_eq!(code, 1, "{err}");
    assert!(!to.exists());
    assert_eq!(keys(&env, "damaged").len(), 1, "{err}");
    let (code, out, _) = env.run(&["drill"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        keys(&env, "damaged").len(),
        1,
        "known damage is not recorded twice"
    );
    env.ok(&["backup"]);
    env.ok(&["drill"]);
}

#[test]
fn read_data_subset_parts_together_read_every_pack_once() {
    // Damage records are format 1's (docs/cli.md, Format 2 keys).
    let env = Env::new().format_1();
    env.make_db(&env.db(), 40_000);
    env.ok(&["backup"]);
    let all = keys(&env, "packs");
    assert!(all.len() >= 5, "{} packs", all.len());

    let mut read: Vec<String> = Vec::new();
    for part in ["1/3", "2/3", "3/3"] {
        let out = env.ok(&["verify", "--read-data-subset", part, "--json"]);
        let report = json(&out);
        let data = &report[0]["data"];
        assert_eq!(data["packs_total"], all.len());
        assert_eq!(data["damaged"].as_array().unwrap().len(), 0);
        assert!(
            data["chunks_checked"].as_u64().unwrap() > 0
                || data["packs_read"] == serde_json::json!([])
        );
        for p in data["packs_read"].as_array().unwrap() {
            read.push(p.as_str().unwrap().to_string());
        }
    }
    let mut sorted = read.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), read.len(), "no pack read twice: {read:?}");
    assert_eq!(sorted, all, "the parts cover every pack");
    let out = env.ok(&["verify", "--read-data-subset", "1/3"]);
    assert!(out.contains("chunks checked against their ids"), "{out}");
    let out = env.ok(&["verify", "--read-data-subset", "10%", "--json"]);
    let sample = json(&out)[0]["data"]["packs_read"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(sample, all.len().div_ceil(10), "10% of {} packs", all.len());

    // A damaged pack is found by exactly the part that holds it.
    flip_middle_byte(&env.repo().join(&all[2]));
    let mut found = Vec::new();
    for part in ["1/3", "2/3", "3/3"] {
        let (_, out, _) = env.run(&["verify", "--read-data-subset", part, "--json"]);
        let report = json(&out);
        for d in report[0]["data"]["damaged"].as_array().unwrap() {
            found.push((part, d["pack"].as_str().unwrap().to_string()));
        }
        if report[0]["data"]["recorded"].is_string() {
            assert!(!report[0]["ok"].as_bool().unwrap());
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].1, all[2]);
    assert_eq!(keys(&env, "damaged").len(), 1);

    for bad in ["0/3", "4/3", "1/0", "x", "0%", "150%"] {
        let (code, _, err) = env.run(&["verify", "--read-data-subset", bad]);
        assert_eq!(code, 2, "{bad}: {err}");
    }
}

#[test]
fn restore_takes_what_one_target_lost_from_another_and_says_so() {
    // Both targets are made in one run, so they share one key set.
    restore_takes_from_another(Env::new(), "");
}

#[test]
fn on_format_1_restore_takes_what_one_target_lost_from_another() {
    restore_takes_from_another(Env::new().format_1(), "format = 1\nallow_unsigned = true\n");
}

fn restore_takes_from_another(env: Env, second_settings: &str) {
    let second = env.dir.path().join("repo2");
    append_config(
        &env,
        &format!(
            "\n[[targets]]\nname = \"second\"\nkind = \"local\"\n{second_settings}path = \"{}\"\n",
            second.display()
        ),
    );
    env.make_db(&env.db(), 20_000);
    env.ok(&["backup"]);
    let packs = find_files(&env.repo().join("packs"));
    assert!(packs.len() >= 2);
    flip_middle_byte(&packs[0]);
    std::fs::remove_file(&packs[1]).unwrap();

    // Told nothing: the restore succeeds whichever target it starts from
    // (the first that answers, today), and says what it found.
    let (code, out, err, to) = restore(&env, &[], "r.db");
    assert_eq!(code, 0, "{out}{err}");
    if out.contains("from target second") {
        assert!(
            out.contains("found") && out.contains("damaged chunks"),
            "{out}"
        );
    }
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");

    // Restoring from the damaged target, it says where the rest came from
    // (the damage is known by now, so it goes to the other target at once).
    let (code, out, err, to) = restore(&env, &["--target", "local"], "r2.db");
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("from target second, each checked against its id"),
        "{out}"
    );
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
    assert!(!keys(&env, "damaged").is_empty(), "the damage is recorded");
    assert!(
        find_files(&second.join("damaged")).is_empty(),
        "nothing was wrong with the second target"
    );
}

#[test]
fn after_a_key_remove_restore_still_takes_what_one_target_lost_from_another() {
    // Each target starts its own new generation on `key remove`: a
    // fallback's packs are read with that target's own keys.
    let env = Env::new();
    let second = env.dir.path().join("repo2");
    append_config(
        &env,
        &format!(
            "\n[[targets]]\nname = \"second\"\nkind = \"local\"\npath = \"{}\"\n",
            second.display()
        ),
    );
    env.make_db(&env.db(), 5_000);
    env.ok(&["backup"]);
    let colleague = crate::keys::another_identity(&env, "colleague.txt");
    env.ok(&["key", "add", &colleague]);
    env.ok(&["key", "remove", &colleague]);
    let before = find_files(&env.repo().join("packs"));
    Connection::open(env.db())
        .unwrap()
        .execute(
            "UPDATE tasks SET body = body || ' after' WHERE id % 3 = 0",
            [],
        )
        .unwrap();
    env.ok(&["backup"]);
    let new: Vec<PathBuf> = (find_files(&env.repo().join("packs")).into_iter())
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!new.is_empty());
    for p in &new {
        flip_middle_byte(p);
    }
    let (code, out, err, to) = restore(&env, &["--target", "local"], "r.db");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("from target second"), "{out}");
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
}

/// Two jobs starting on a new, empty target at the same moment (a manual
/// backup beside the daemon's, or beside `offsite replicate`) both
/// succeed, into one repository: neither fails on the other's directory,
/// key set or config. Before the fix, one of two failed 5 times in 6.
#[test]
fn two_backups_creating_one_new_repository_at_once_both_succeed() {
    let env = Env::new();
    env.make_db(&env.db(), 50);
    for round in 0..4 {
        let _ = std::fs::remove_dir_all(env.repo());
        let runs: Vec<(i32, String, String)> = std::thread::scope(|s| {
            let jobs: Vec<_> = (0..2).map(|_| s.spawn(|| env.run(&["backup"]))).collect();
            jobs.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for (code, out, err) in &runs {
            assert_eq!(*code, 0, "round {round}: {out}{err}");
        }
        let listed = snapshots(&env);
        assert_eq!(listed.len(), 2, "round {round}: {listed:?}");
        assert!(
            listed.iter().all(|s| s["trust"]["state"] == "signed"),
            "{listed:?}"
        );
        env.ok(&["verify"]);
    }
    env.ok(&["restore", "--source", "app", "--latest", "--test"]);
}
