//! `offsite migrate` through the binary: a local format 1 target written by
//! real backups of a real SQLite database, moved to a second local target
//! (empty, so migrate makes it a format 2 repository), then restored from
//! there with `offsite restore`.

use rusqlite::Connection;

use crate::support::*;

/// A config with the usual format 1 target "local" and an empty "new".
fn two_targets() -> Env {
    Env::with_sources(|dir| {
        let new = dir.join("new");
        std::fs::create_dir(&new).unwrap();
        format!(
            "[[targets]]\nname = \"new\"\nkind = \"local\"\npath = \"{}\"\n",
            new.display()
        )
    })
    .format_1()
}

#[test]
fn migrate_moves_a_local_v1_target_to_v2_and_restore_reads_it() {
    let env = two_targets();
    env.make_db(&env.db(), 3000);
    env.ok(&["backup", "--target", "local"]);
    let older = dump(&env.db());
    Connection::open(env.db())
        .unwrap()
        .execute(
            "UPDATE tasks SET body = body || ' changed' WHERE id % 50 = 0",
            [],
        )
        .unwrap();
    env.ok(&["backup", "--target", "local"]);
    let repo_files = find_files(&env.repo());

    let out = env.ok(&["migrate", "--to", "new"]);
    assert!(out.contains("created a format 2 repository"), "{out}");
    assert!(
        out.contains("2 snapshots migrated, 0 already there, 0 skipped"),
        "{out}"
    );
    assert!(out.contains("delta from"), "the second is a delta: {out}");
    assert_eq!(
        find_files(&env.repo()),
        repo_files,
        "the old target is unchanged"
    );

    let listed = json(&env.ok(&["snapshots", "--target", "new", "--json"]));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let to = env.dir.path().join("restored.db");
    let t = to.to_str().unwrap();
    env.ok(&[
        "restore", "--source", "app", "--latest", "--target", "new", "--to", t,
    ]);
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
    let oldest = listed[1]["id"].as_str().unwrap();
    let back = env.dir.path().join("older.db");
    let b = back.to_str().unwrap();
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        oldest,
        "--target",
        "new",
        "--to",
        b,
    ]);
    assert_eq!(dump(&back), older);
    assert_eq!(integrity(&back), "ok");

    let again = env.ok(&["migrate", "--to", "new"]);
    assert!(
        again.contains("0 snapshots migrated, 2 already there"),
        "{again}"
    );
}

#[test]
fn migrate_without_the_identity_is_a_usage_error() {
    let env = two_targets();
    let config = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("identity_file = \"key.txt\"\n", "")).unwrap();
    let (code, out, err) = env.run(&["migrate", "--to", "new"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("encryption.identity_file"), "{err}");
}
