//! Several targets: listing and restore look at every one of them, so an
//! empty or unreachable first target (a rebuilt server) hides nothing.

use rusqlite::Connection;

use crate::support::*;

/// Replaces the config's only target with `empty` (a new, empty local
/// directory), `down` (a path whose disk is not mounted) and `old` (the
/// original target), in that order.
fn three_targets(env: &Env) {
    let cfg = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("[[targets]]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let targets = format!(
        "[[targets]]\nname = \"empty\"\nkind = \"local\"\npath = \"{}\"\n\n\
         [[targets]]\nname = \"down\"\nkind = \"local\"\npath = \"/nonexistent-mount/offsite\"\n\n\
         [[targets]]\nname = \"old\"\nkind = \"local\"\npath = \"{}\"\n",
        env.dir.path().join("new-disk").display(),
        env.repo().display()
    );
    std::fs::write(&cfg, format!("{}{targets}{}", &text[..start], &text[end..])).unwrap();
}

fn restore(env: &Env, how: &[&str], name: &str) -> (std::path::PathBuf, String, String) {
    let to = env.dir.path().join(name);
    let mut args = vec!["restore", "--source", "app", "--to", to.to_str().unwrap()];
    args.extend_from_slice(how);
    let (code, out, err) = env.run(&args);
    assert_eq!(code, 0, "restore {how:?}:\n{out}\n{err}");
    (to, out, err)
}

#[test]
fn an_empty_first_target_hides_nothing_from_listing_and_restore() {
    let env = Env::new();
    env.make_db(&env.db(), 1_000);
    env.ok(&["backup"]);
    let snap = snapshots(&env)[0].clone();
    let id = snap["id"].as_str().unwrap().to_string();
    let rows = dump(&env.db());
    // The server is rebuilt: a new local disk is listed first, and the first
    // nightly backup, run before the database is back, fails but leaves an
    // empty repository there.
    three_targets(&env);
    let moved = env.dir.path().join("app.db.elsewhere");
    std::fs::rename(env.db(), &moved).unwrap();
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "{err}");
    assert!(env.dir.path().join("new-disk/config").exists(), "{err}");

    let (code, out, err) = env.run(&["snapshots"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("TARGET"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains(" old "), "{line}");
    // The unreachable target is named; the empty one simply has nothing.
    assert!(
        err.contains("warning: target \"down\"") && err.contains("mounted"),
        "{err}"
    );
    assert!(!err.contains("\"empty\""), "{err}");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["target"], "old");
    assert_eq!(list[0]["id"], id.as_str());

    // --target narrows the listing; one that cannot be read is an error.
    let out = env.ok(&["snapshots", "--target", "empty"]);
    assert!(out.contains("no snapshots in target \"empty\""), "{out}");
    let out = env.ok(&["snapshots", "--target", "old"]);
    assert!(out.contains(&id), "{out}");
    let (code, _, err) = env.run(&["snapshots", "--target", "down"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("target \"down\""), "{err}");

    let time = snap["time"].as_str().unwrap();
    for (how, name) in [
        (vec!["--latest"], "latest.db"),
        (vec!["--at", time], "at.db"),
        (vec!["--snapshot", &id[id.len() - 8..]], "by-id.db"),
    ] {
        let (to, out, _) = restore(&env, &how, name);
        assert!(out.contains("from old"), "{how:?}: {out}");
        assert_eq!(dump(&to), rows, "{how:?}");
    }

    // Pinning looks past the empty target too.
    let out = env.ok(&["pin", &id]);
    assert!(out.contains(&format!("pinned {id} on old")), "{out}");
}

#[test]
fn restore_takes_the_newest_snapshot_across_targets_and_says_which() {
    let env = Env::new();
    env.make_db(&env.db(), 1_000);
    three_targets(&env);
    env.ok(&["backup", "--target", "empty"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    Connection::open(env.db())
        .unwrap()
        .execute("DELETE FROM tasks WHERE id > 600", [])
        .unwrap();
    // The newest snapshot is on the last target.
    env.ok(&["backup", "--target", "old"]);

    let list: Vec<serde_json::Value> =
        serde_json::from_str(&env.ok(&["snapshots", "--json"])).unwrap();
    let targets: Vec<&str> = list.iter().map(|s| s["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["old", "empty"], "newest first, across targets");

    let (to, out, _) = restore(&env, &["--latest"], "latest.db");
    assert!(out.contains("from old"), "{out}");
    assert_eq!(dump_count(&to), 600);
    // --at before the second backup: the older snapshot, on the first target.
    let older = list[1]["time"].as_str().unwrap();
    let (to, out, _) = restore(&env, &["--at", older], "at.db");
    assert!(out.contains("from empty"), "{out}");
    assert_eq!(dump_count(&to), 1_000);
    // An id is found on whichever target holds it.
    let first_id = list[1]["id"].as_str().unwrap();
    let (to, out, _) = restore(&env, &["--snapshot", first_id], "id.db");
    assert!(out.contains("from empty"), "{out}");
    assert_eq!(dump_count(&to), 1_000);
    // --target narrows the choice.
    let (to, out, _) = restore(&env, &["--latest", "--target", "empty"], "narrow.db");
    assert!(out.contains("from empty"), "{out}");
    assert_eq!(dump_count(&to), 1_000);
}
