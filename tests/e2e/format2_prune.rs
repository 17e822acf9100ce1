//! `offsite prune` on a format 2 target through the binary, with real age
//! keys, real SQLite and a local target made by `offsite init`: retention
//! removes snapshots from the middle of a delta chain, prune writes the
//! shortcut a kept snapshot needs, and every kept snapshot restores to the
//! rows it was taken of; a host without format 2 keys is told what to set.

use crate::format2::{initialised, touch_rows};
use crate::support::*;

/// Adds a retention policy to the config.
fn keep_last(env: &Env, n: u32) {
    let config = env.dir.path().join("offsite.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[retention]\nkeep_last = {n}\n"));
    std::fs::write(&config, text).unwrap();
}

fn lists(env: &Env) -> Vec<String> {
    let dir = env.repo().join("lists");
    let mut found: Vec<String> = (find_files(&dir).into_iter())
        .map(|p| p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

#[test]
fn prune_on_a_format_2_target_keeps_every_kept_snapshot_restorable() {
    let (env, _) = initialised();
    keep_last(&env, 2);
    env.make_db(&env.db(), 20_000);
    let mut rows = Vec::new();
    for _ in 0..5 {
        touch_rows(&env.db());
        env.ok(&["backup"]);
        rows.push(dump(&env.db()));
    }
    let before = snapshots(&env);
    assert_eq!(before.len(), 5, "{before:?}");
    let id = |s: &serde_json::Value| s["id"].as_str().unwrap().to_string();
    let (newest, second) = (id(&before[0]), id(&before[1]));

    let out = env.ok(&["prune"]);
    assert!(out.contains("5 snapshots, keeping 2, removing 3"), "{out}");
    assert!(out.contains("wrote 1 shortcut list"), "{out}");
    let after: Vec<String> = snapshots(&env).iter().map(id).collect();
    assert_eq!(after, [newest.clone(), second.clone()]);
    let mut want = [format!("{newest}/d-{second}"), format!("{second}/full")];
    want.sort();
    assert_eq!(
        lists(&env),
        want,
        "the second's chain went with the removed snapshots: it got a full list"
    );
    for (snapshot, want) in [(&newest, &rows[4]), (&second, &rows[3])] {
        let to = env.dir.path().join(format!("{snapshot}.db"));
        let to_arg = to.to_str().unwrap();
        env.ok(&[
            "restore",
            "--source",
            "app",
            "--snapshot",
            snapshot,
            "--to",
            to_arg,
        ]);
        assert_eq!(&dump(&to), want, "{snapshot}");
        assert_eq!(integrity(&to), "ok");
    }
    env.ok(&["verify"]);
    let again = env.ok(&["prune"]);
    assert!(again.contains("keeping 2, removing 0"), "{again}");
    assert!(!again.contains("shortcut"), "{again}");
}

/// With only the recipients (no owner key, identity or writer key), a
/// format 2 target cannot be pruned: exit 2, saying what to set.
#[test]
fn prune_without_format_2_keys_says_what_to_configure() {
    let (env, _) = initialised();
    keep_last(&env, 1);
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let config = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let kept: String = (text.lines())
        .filter(|l| !l.starts_with("identity_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, kept).unwrap();
    let (code, out, err) = env.run(&["prune"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("encryption.owner_key"), "{err}");
    assert_eq!(lists(&env).len(), 2, "nothing deleted");
}

/// `offsite unlock` needs no keys on a format 2 target either: a lock left
/// by a run on another host is shown, kept without `--all`, removed with it.
#[test]
fn unlock_on_a_format_2_target_shows_and_removes_locks() {
    let (env, _) = initialised();
    let locks = env.repo().join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    std::fs::write(
        locks.join("20261203T000000Z-live"),
        format!(
            r#"{{"host": "db-2", "pid": 4242, "created": "{now}", "refreshed": "{now}", "operation": "backup"}}"#
        ),
    )
    .unwrap();
    let out = env.ok(&["unlock"]);
    assert!(out.contains("still locked by backup on host db-2"), "{out}");
    assert_eq!(find_files(&locks).len(), 1);
    let out = env.ok(&["unlock", "--all"]);
    assert!(
        out.contains("removed the lock of backup on host db-2"),
        "{out}"
    );
    assert!(find_files(&locks).is_empty());
}
