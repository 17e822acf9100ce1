//! Restores that replace a live database, `restore --test`, and the
//! rebuilt-server path of docs/disaster-recovery.md.

use rusqlite::Connection;

use crate::support::*;

#[test]
fn in_place_restore_snapshots_the_current_database_then_moves_it_aside() {
    let env = Env::new();
    env.make_db(&env.db(), 2_000);
    env.ok(&["backup"]);
    let good = dump(&env.db());
    // The app then damages its data (a bad migration): the state to roll back.
    Connection::open(env.db())
        .unwrap()
        .execute("DELETE FROM tasks WHERE id % 2 = 0", [])
        .unwrap();
    let damaged = dump(&env.db());
    let db = env.db();
    let db = db.to_str().unwrap();

    let out = env.ok(&[
        "restore", "--source", "app", "--latest", "--force", "--to", db,
    ]);
    assert!(out.contains("backed up as snapshot"), "{out}");
    assert_eq!(dump(&env.db()), good, "the snapshot's state is back");
    assert_eq!(integrity(&env.db()), "ok");

    // The replaced database is kept twice: as a snapshot and moved aside.
    let snaps = snapshots(&env);
    let pre: Vec<_> = snaps
        .iter()
        .filter(|s| {
            s["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "pre-restore")
        })
        .collect();
    assert_eq!(pre.len(), 1, "{snaps:?}");
    let aside: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("app.db.offsite-old-") && !n.ends_with("-wal") && !n.ends_with("-shm")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        dump(&aside[0]),
        damaged,
        "the moved-aside file is the replaced one"
    );

    // --latest still means the newest real backup, not the pre-restore one...
    let again = env.dir.path().join("again.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        again.to_str().unwrap(),
    ]);
    assert_eq!(dump(&again), good);
    // ...and the pre-restore snapshot undoes the restore when asked by id.
    let undo = env.dir.path().join("undo.db");
    let id = pre[0]["id"].as_str().unwrap();
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        id,
        "--to",
        undo.to_str().unwrap(),
    ]);
    assert_eq!(dump(&undo), damaged);
}

#[test]
fn in_place_restore_over_an_unreadable_file_warns_and_keeps_it() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let good = dump(&env.db());
    std::fs::write(env.db(), b"\0\0 not a database any more").unwrap();
    let (code, out, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--force",
        "--to",
        env.db().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("could not snapshot"), "{err}");
    assert_eq!(dump(&env.db()), good);
    let kept: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("app.db.offsite-old-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        b"\0\0 not a database any more"
    );
    assert_eq!(
        snapshots(&env).len(),
        1,
        "no pre-restore snapshot of garbage"
    );
}

#[test]
fn restore_test_verifies_and_touches_nothing() {
    let env = Env::new();
    env.make_db(&env.db(), 1_000);
    env.ok(&["backup"]);
    let tmp = tempfile::tempdir().unwrap();
    let before = find_files(env.dir.path());
    let out = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(["restore", "--source", "app", "--latest", "--test", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["test"], true);
    assert!(report["path"].is_null());
    // The one write: the owner's signed record of the check it ran
    // (format 2), so that later restores need not run it again.
    let after = find_files(env.dir.path());
    let (records, rest): (Vec<_>, Vec<_>) = after
        .into_iter()
        .partition(|p| p.starts_with(env.repo().join("checks")));
    assert_eq!(rest, before, "nothing else written beside the config");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the scratch copy is removed"
    );

    // A damaged pack makes the test fail, still touching nothing.
    for p in find_files(&env.repo().join("packs")) {
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    }
    let (code, _, err) = env.run(&["restore", "--source", "app", "--latest", "--test"]);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = env.run(&[
        "restore", "--source", "app", "--latest", "--test", "--to", "x.db",
    ]);
    assert_eq!(code, 2, "--test and --to conflict: {err}");
}

/// docs/disaster-recovery.md, end to end: the old server is gone; a fresh
/// machine has only the binary, the config, the identity file and access to
/// the repository (here a directory standing in for a bucket). Nothing else
/// is shared: fresh working directory, HOME and TMPDIR, and the
/// application's directory does not exist yet.
#[test]
fn rebuilt_server_restores_with_only_config_identity_and_repository() {
    // The old server: a live app database backed up nightly.
    let old = Env::new();
    old.make_db(&old.db(), 3_000);
    old.ok(&["backup"]);
    Connection::open(old.db())
        .unwrap()
        .execute("UPDATE tasks SET title = 'edited' WHERE id < 100", [])
        .unwrap();
    old.ok(&["backup"]);
    let expected = dump(&old.db());

    // The new server.
    let new = tempfile::tempdir().unwrap();
    let etc = new.path().join("etc/offsite");
    std::fs::create_dir_all(&etc).unwrap();
    let home = new.path().join("root");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(old.key(), etc.join("key.txt")).unwrap();
    let app = new.path().join("srv/app/app.db");
    std::fs::write(
        etc.join("offsite.toml"),
        format!(
            "[encryption]\nidentity_file = \"key.txt\"\n\n\
             [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"{}\"\n\n\
             [[targets]]\nname = \"offsite\"\nkind = \"local\"\npath = \"{}\"\n",
            app.display(),
            old.repo().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = offsite_command()
            .args(args)
            .current_dir(&home)
            .env_clear()
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env("OFFSITE_CONFIG", etc.join("offsite.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "offsite {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listing = run(&["snapshots"]);
    assert_eq!(
        listing.lines().filter(|l| l.contains("app")).count(),
        2,
        "{listing}"
    );
    run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        app.to_str().unwrap(),
    ]);
    assert_eq!(dump(&app), expected);
    assert_eq!(integrity(&app), "ok");
    // The restored database is a live one again: the app can write to it.
    Connection::open(&app)
        .unwrap()
        .execute(
            "INSERT INTO tasks(title) VALUES ('first write after the rebuild')",
            [],
        )
        .unwrap();
}
