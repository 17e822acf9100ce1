//! Retention, prune, pins, locks and verify through the binary.

use rusqlite::Connection;

use crate::support::*;

fn config(env: &Env) -> std::path::PathBuf {
    env.dir.path().join("offsite.toml")
}

/// Appends TOML to the config (a table goes after the last [[targets]] or
/// [backup] section, which is fine for top-level tables).
fn append_config(env: &Env, toml: &str) {
    let mut text = std::fs::read_to_string(config(env)).unwrap();
    text.push_str(toml);
    std::fs::write(config(env), text).unwrap();
}

/// Leaves only the recipients, as on a backup host.
fn drop_identity(env: &Env) {
    let text = std::fs::read_to_string(config(env)).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(config(env), text).unwrap();
}

fn ids(env: &Env) -> Vec<String> {
    snapshots(env)
        .iter()
        .map(|s| s.as_str_field("id"))
        .collect()
}

trait Field {
    fn as_str_field(&self, f: &str) -> String;
}

impl Field for serde_json::Value {
    fn as_str_field(&self, f: &str) -> String {
        self[f].as_str().unwrap().to_string()
    }
}

fn restore_to(env: &Env, id: &str, name: &str) -> std::path::PathBuf {
    let to = env.dir.path().join(name);
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        id,
        "--to",
        to.to_str().unwrap(),
        "-i",
        env.key().to_str().unwrap(),
    ]);
    to
}

#[test]
fn prune_refuses_without_retention_and_bad_retention_settings_exit_2() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let (code, _, err) = env.run(&["prune"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no retention policy") && err.contains("keep_daily = 7"),
        "{err}"
    );
    assert_eq!(ids(&env).len(), 2, "nothing was deleted");

    let original = std::fs::read_to_string(config(&env)).unwrap();
    for (toml, named) in [
        ("\n[retention]\nkeep_dayly = 3\n", "keep_dayly"),
        (
            "\n[retention]\nkeep_within = \"2x\"\n",
            "retention.keep_within",
        ),
        ("\n[retention]\nkeep_daily = -3\n", "retention.keep_daily"),
        (
            "\n[retention]\nkeep_daily = \"7\"\n",
            "retention.keep_daily",
        ),
    ] {
        std::fs::write(config(&env), format!("{original}{toml}")).unwrap();
        let (code, _, err) = env.run(&["prune", "--dry-run"]);
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(err.contains(named), "{toml}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    // A source's own table is checked the same way, and named by source.
    let per_source = original.replace(
        "path = \"app.db\"\n",
        "path = \"app.db\"\nretention = { keep_within = \"soon\" }\n",
    );
    std::fs::write(config(&env), per_source).unwrap();
    let (code, _, err) = env.run(&["snapshots"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("sources.app.retention.keep_within") && err.contains("\"soon\""),
        "{err}"
    );
    std::fs::write(config(&env), original).unwrap();
    assert_eq!(ids(&env).len(), 2);
}

#[test]
fn prune_with_recipients_only_keeps_by_rule_and_pin_and_deletes_the_rest() {
    // Format 1: prune with the recipients alone (format2_prune.rs has format 2's).
    let env = Env::new().format_1();
    // Several packs, most holding only rows the second backup no longer has.
    env.make_db(&env.db(), 20_000);
    let out = env.ok(&["backup", "--tag", "pre-migration", "--pin"]);
    assert!(out.contains("(pinned)"), "{out}");
    Connection::open(env.db())
        .unwrap()
        .execute_batch("DELETE FROM tasks WHERE id > 1000; VACUUM;")
        .unwrap();
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let all = snapshots(&env);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2]["pinned"], true);
    assert_eq!(all[2]["tags"][0], "pre-migration");
    let (newest, middle, pinned) = (
        all[0].as_str_field("id"),
        all[1].as_str_field("id"),
        all[2].as_str_field("id"),
    );

    // A backup host: recipients, no identity.
    drop_identity(&env);
    append_config(&env, "\n[retention]\nkeep_last = 1\n");

    let out = env.ok(&["prune", "--dry-run"]);
    assert!(out.contains("keeping 2, would remove 1"), "{out}");
    let line = |id: &str| out.lines().find(|l| l.contains(id)).unwrap().to_string();
    assert!(
        line(&newest).contains("keep") && line(&newest).contains("last 1"),
        "{out}"
    );
    assert!(
        line(&pinned).contains("keep") && line(&pinned).contains("pinned"),
        "{out}"
    );
    assert!(
        line(&middle).contains("remove") && line(&middle).contains("no rule keeps it"),
        "{out}"
    );
    assert_eq!(ids(&env).len(), 3, "a dry run deletes nothing");

    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--dry-run", "--json"])).unwrap();
    let t = &json[0];
    assert_eq!(t["target"], "local");
    assert_eq!(t["ok"], true);
    assert_eq!(t["dry_run"], true);
    assert_eq!(t["removed"], 1);
    assert_eq!(t["snapshots"][1]["id"], middle.as_str());
    assert_eq!(t["snapshots"][1]["action"], "remove");
    assert_eq!(t["snapshots"][2]["reasons"][0], "pinned");
    assert_eq!(t["snapshots"][2]["pinned"], true);
    for field in [
        "deleted",
        "partly_used",
        "index_files_written",
        "packs_kept",
    ] {
        assert!(!t[field].is_null(), "{field}");
    }

    let packs_before = find_files(&env.repo().join("packs")).len();
    let out = env.ok(&["prune"]);
    assert!(out.contains("removing 1"), "{out}");
    assert_eq!(ids(&env), [newest.clone(), pinned.clone()]);
    assert!(!env.repo().join("lists").join(&middle).exists());
    assert!(find_files(&env.repo().join("locks")).is_empty());

    // Unpinned, the old snapshot goes, and so do the pages only it had.
    env.ok(&["unpin", &pinned[pinned.len() - 8..]]);
    let (code, _, err) = env.run(&["unpin", &pinned]);
    assert_eq!(code, 1);
    assert!(err.contains("no pinned snapshot"), "{err}");
    let out = env.ok(&["prune"]);
    assert!(out.contains(&format!("remove {pinned}")), "{out}");
    assert_eq!(ids(&env), vec![newest.as_str()]);
    assert!(
        find_files(&env.repo().join("packs")).len() < packs_before,
        "the deleted rows' packs are gone"
    );

    // What is left restores, and verify (recipients only) agrees.
    let to = restore_to(&env, &newest, "newest.db");
    assert_eq!(dump(&to).len(), 1_000);
    let out = env.ok(&["verify"]);
    assert!(out.contains("all 1 snapshots complete"), "{out}");
    // --read-data needs the identity, and says so.
    let (code, _, err) = env.run(&["verify", "--read-data"]);
    assert_eq!(code, 2, "a usage mistake");
    assert!(err.contains("--identity"), "{err}");
    let out = env.ok(&["verify", "--read-data", "-i", env.key().to_str().unwrap()]);
    assert!(out.contains("restored and checked"), "{out}");
}

#[test]
fn pin_by_part_of_the_id_and_per_source_retention() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["backup", "--pin", "--json"])).unwrap();
    assert_eq!(json[0]["snapshot"]["pinned"], true);
    let all = ids(&env);
    let oldest = all[2].clone();
    let out = env.ok(&["pin", &oldest[..oldest.len() - 2]]);
    assert!(out.contains(&format!("pinned {oldest} on local")), "{out}");
    let out = env.ok(&["pin", &oldest]);
    assert!(out.contains("already pinned"), "{out}");
    let (code, _, err) = env.run(&["pin", "20991231T000000Z-00000000"]);
    assert_eq!(code, 1);
    assert!(err.contains("no snapshot matches"), "{err}");

    // The source's own policy replaces the global one.
    let text = std::fs::read_to_string(config(&env)).unwrap().replace(
        "path = \"app.db\"\n",
        "path = \"app.db\"\nretention = { keep_last = 1 }\n",
    );
    std::fs::write(
        config(&env),
        format!("{text}\n[retention]\nkeep_last = 10\n"),
    )
    .unwrap();
    let out = env.ok(&["prune", "--source", "app"]);
    assert!(out.contains("removing 1"), "{out}");
    assert_eq!(ids(&env), [all[0].clone(), oldest.clone()]);
    let (code, _, err) = env.run(&["prune", "--source", "nope"]);
    assert_eq!(code, 2, "a usage mistake");
    assert!(err.contains("no source named"), "{err}");
}

#[test]
fn locks_of_live_runs_block_prune_and_stale_ones_are_cleared() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    append_config(&env, "\n[retention]\nkeep_last = 1\n");
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let now = chrono::Utc::now();
    let lock = |host: &str, refreshed: chrono::DateTime<chrono::Utc>| {
        format!(
            r#"{{"host": "{host}", "pid": 4242, "created": "{}", "refreshed": "{}", "operation": "backup"}}"#,
            refreshed.to_rfc3339(),
            refreshed.to_rfc3339()
        )
    };
    // A backup running on another host.
    std::fs::write(locks.join("20261123T000000Z-live"), lock("db-2", now)).unwrap();
    let (code, _, err) = env.run(&["prune"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("locked by backup on host db-2 (pid 4242)") && err.contains("offsite unlock"),
        "{err}"
    );
    let out = env.ok(&["unlock"]);
    assert!(out.contains("still locked by backup on host db-2"), "{out}");
    let out = env.ok(&["unlock", "--all"]);
    assert!(
        out.contains("removed the lock of backup on host db-2"),
        "{out}"
    );

    // A lock nobody refreshed for an hour is stale: prune removes it and runs.
    std::fs::write(
        locks.join("20261123T000000Z-old"),
        lock("db-2", now - chrono::Duration::hours(1)),
    )
    .unwrap();
    let (code, out, err) = env.run(&["prune"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(find_files(&locks).is_empty());
    let out = env.ok(&["unlock"]);
    assert!(out.contains("no stale locks"), "{out}");

    // A prune that died an hour ago does not hold up the next backup.
    let dead_prune =
        lock("db-2", now - chrono::Duration::hours(1)).replace("\"backup\"", "\"prune\"");
    std::fs::write(locks.join("20261123T000000Z-dead"), dead_prune).unwrap();
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("removing the stale lock of prune on host db-2"),
        "{err}"
    );
    assert!(find_files(&locks).is_empty());
}

#[test]
fn verify_reports_corrupt_missing_and_truncated_objects() {
    // Format 1's objects (v2_verify.rs covers format 2's).
    let env = Env::new().format_1();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let out = env.ok(&["verify", "--read-data"]);
    assert!(
        out.contains("all 1 snapshots restored and checked"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["verify", "--json"])).unwrap();
    assert_eq!(json[0]["ok"], true);
    assert_eq!(json[0]["snapshots"][0]["ok"], true);
    assert!(json[0]["snapshots"][0]["fault"].is_null());

    let packs = find_files(&env.repo().join("packs"));
    let pack = packs[0].clone();
    let original = std::fs::read(&pack).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    std::fs::write(&pack, &flipped).unwrap();
    // The structure is intact; only reading the data shows the damage.
    env.ok(&["verify"]);
    let (code, out, err) = env.run(&["verify", "--read-data", "--json"]);
    assert_eq!(code, 1, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["ok"], false);
    let fault = json[0]["snapshots"][0]["fault"].as_str().unwrap();
    assert!(fault.contains("corrupt object packs/"), "{fault}");
    assert!(err.contains("verify found damage"), "{err}");

    // Truncated: found by reading.
    std::fs::write(&pack, &original[..original.len() - 64]).unwrap();
    let (code, out, _) = env.run(&["verify", "--read-data"]);
    assert_eq!(code, 1);
    assert!(out.contains("DAMAGED"), "{out}");

    // Deleted: found without the identity.
    std::fs::remove_file(&pack).unwrap();
    drop_identity(&env);
    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("DAMAGED") && out.contains("is missing"),
        "{out}"
    );

    // Put back by hand, the pack is still recorded as damaged (verify
    // --read-data found it so): verify says so until a backup has stored
    // those chunks again.
    std::fs::write(&pack, &original).unwrap();
    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("damaged in pack") && out.contains("no intact copy"),
        "{out}"
    );
    env.ok(&["backup"]);
    env.ok(&["verify"]);

    // A truncated list is a damaged snapshot too.
    let list = find_files(&env.repo().join("lists"))[0].clone();
    let bytes = std::fs::read(&list).unwrap();
    std::fs::write(&list, &bytes[..bytes.len() / 2]).unwrap();
    let (code, out, _) = env.run(&["verify"]);
    assert_eq!(code, 1);
    assert!(out.contains("DAMAGED"), "{out}");
}
