//! Pre-restore snapshots in retention, through the binary: they do not take
//! the slot of the snapshot that was restored, and `prune --dry-run` says
//! which rule keeps them and until when. (Times cannot be set through the
//! binary: backup-core/tests/pre_restore_retention.rs runs the two-day
//! scenario with set times.)

use crate::support::*;

/// Writes `base` (the original config) with these retention settings.
fn set_retention(env: &Env, base: &str, global: &str, own: Option<&str>) {
    let cfg = env.dir.path().join("offsite.toml");
    let mut text = base.to_string();
    if let Some(own) = own {
        text = text.replace(
            "path = \"app.db\"\n",
            &format!("path = \"app.db\"\nretention = {{ {own} }}\n"),
        );
    }
    std::fs::write(&cfg, format!("{text}\n[retention]\n{global}\n")).unwrap();
}

fn dry_run(env: &Env) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["prune", "--dry-run", "--json"])).unwrap();
    v[0]["snapshots"].as_array().unwrap().clone()
}

#[test]
fn prune_keeps_the_restored_snapshot_and_says_until_when_it_keeps_the_pre_restore_one() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let good = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    // The good snapshot is restored over the (damaged) database.
    let out = env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--force",
        "--to",
        env.db().to_str().unwrap(),
    ]);
    assert!(out.contains("tag pre-restore"), "{out}");
    let list = snapshots(&env);
    assert_eq!(list.len(), 2);
    let undo = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(list[0]["tags"][0], "pre-restore");

    // One a day: the restored snapshot keeps its day.
    let base = std::fs::read_to_string(env.dir.path().join("offsite.toml")).unwrap();
    set_retention(&env, &base, "keep_daily = 1", None);
    let out = env.ok(&["prune", "--dry-run"]);
    let line = |id: &str| {
        out.lines()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };
    assert!(line(&good).trim_start().starts_with("keep"), "{out}");
    assert!(line(&good).contains("daily "), "{out}");
    let undo_line = line(&undo);
    assert!(
        undo_line.trim_start().starts_with("keep") && undo_line.contains("pre-restore 30d (until "),
        "{out}"
    );
    let v = dry_run(&env);
    assert_eq!(v[0]["id"], undo.as_str());
    assert_eq!(v[0]["reasons"][0], "pre-restore 30d");
    assert!(v[0]["expires"].is_string(), "{v:?}");
    assert!(v[1]["expires"].is_null(), "{v:?}");
    assert!(v.iter().all(|s| s["action"] == "keep"), "{v:?}");

    // Their own time, globally or per source; then prune removes them.
    set_retention(
        &env,
        &base,
        "keep_daily = 1\nkeep_pre_restore = \"0h\"",
        None,
    );
    let out = env.ok(&["prune", "--dry-run"]);
    let undo_line = out.lines().find(|l| l.contains(&undo)).unwrap();
    assert!(
        undo_line.trim_start().starts_with("remove") && undo_line.contains("pre-restore: expired"),
        "{out}"
    );
    set_retention(
        &env,
        &base,
        "keep_daily = 1",
        Some("keep_daily = 1, keep_pre_restore = \"0h\""),
    );
    let v = dry_run(&env);
    assert_eq!(v[0]["action"], "remove", "{v:?}");
    assert_eq!(v[1]["action"], "keep", "{v:?}");
    env.ok(&["prune"]);
    let left: Vec<String> = snapshots(&env)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [good]);

    set_retention(
        &env,
        &base,
        "keep_daily = 1\nkeep_pre_restore = \"a month\"",
        None,
    );
    let (code, _, err) = env.run(&["prune", "--dry-run"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("retention.keep_pre_restore"), "{err}");
}
