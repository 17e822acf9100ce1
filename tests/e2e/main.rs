//! End-to-end tests: the real `offsite` binary, real SQLite databases, a real
//! local target, and for the format procedure the real `age` and `zstd` tools
//! (stock_tools.rs), with `b3sum` and `openssl` for format 2 (stock_tools_v2.rs).

mod apps;
mod cli_conventions;
mod cloud;
mod daemon;
mod duckdb;
mod format2;
mod format2_prune;
mod format2_status;
mod format_default;
mod full_disk;
mod hooks;
mod hygiene;
mod keys;
mod migrate;
mod monitor;
mod one_run;
mod pre_restore;
mod progress;
mod prune;
mod repair;
mod replicate;
mod repostate;
mod requests;
mod restore_all;
mod restore_in_place;
mod restore_in_use;
mod restore_interrupted;
mod restore_paths;
mod serve;
mod serve_api;
mod stock_tools;
mod stock_tools_v2;
mod support;
mod targets;
mod temp_cleanup;
mod webdriver;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::Connection;
use support::*;

#[test]
fn live_database_backup_and_restore_matches_the_snapshot_state() {
    let env = Env::new();
    env.make_db(&env.db(), 40_000);
    let rows_before = dump(&env.db()).len();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = env.db();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                c.execute("INSERT INTO tasks(title, body) VALUES ('live', 'committed while the backup ran')", [])
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let out = env.ok(&["backup"]);
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    assert!(out.contains("app -> local: snapshot"), "{out}");

    let to = env.dir.path().join("restored.db");
    let out = env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.contains("integrity_check verified"), "{out}");
    let restored = dump(&to);
    let live = dump(&env.db());
    assert!(
        restored.len() >= rows_before,
        "every row committed before the backup is there"
    );
    assert_eq!(
        restored[..],
        live[..restored.len()],
        "the snapshot is one committed state"
    );
    let check: String = Connection::open(&to)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn snapshots_json_lists_newest_first_and_restore_at_picks_by_time() {
    let env = Env::new();
    env.make_db(&env.db(), 2_000);
    env.ok(&["backup", "--tag", "first"]);
    let first = snapshots(&env);
    assert_eq!(first.len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    Connection::open(env.db())
        .unwrap()
        .execute("DELETE FROM tasks WHERE id > 1000", [])
        .unwrap();
    let json = env.ok(&["backup", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["ok"], true);
    assert!(
        v[0]["snapshot"]["new_bytes"].as_u64().unwrap()
            < v[0]["snapshot"]["size"].as_u64().unwrap()
    );

    let list = snapshots(&env);
    assert_eq!(list.len(), 2);
    assert!(
        list[0]["time"].as_str() > list[1]["time"].as_str(),
        "newest first"
    );
    assert_eq!(list[1]["tags"][0], "first");
    for field in [
        "id", "source", "kind", "host", "target", "time", "size", "sha256",
    ] {
        assert!(!list[0][field].is_null(), "snapshots --json has {field}");
    }

    let at = list[1]["time"].as_str().unwrap();
    let to = env.dir.path().join("old.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--at",
        at,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to).len(), 2_000, "--at restored the older state");
    let to2 = env.dir.path().join("by-id.db");
    let id = list[0]["id"].as_str().unwrap();
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        &id[id.len() - 8..],
        "--to",
        to2.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to2).len(), 1_000);
}

#[test]
fn restore_refuses_to_overwrite_and_force_moves_the_old_files_aside() {
    let env = Env::new();
    env.make_db(&env.db(), 1_000);
    env.ok(&["backup"]);
    let to = env.dir.path().join("target.db");
    std::fs::write(&to, b"precious old data").unwrap();
    std::fs::write(env.dir.path().join("target.db-wal"), b"old wal").unwrap();

    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), b"precious old data");

    let out = env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.contains("kept the previous file"), "{out}");
    assert_eq!(dump(&to).len(), 1_000);
    let kept: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("target.db.offsite-old-"))
        .collect();
    assert_eq!(kept.len(), 2, "database and -wal moved aside: {kept:?}");
    let old = kept.iter().find(|n| !n.ends_with("-wal")).unwrap();
    assert_eq!(
        std::fs::read(env.dir.path().join(old)).unwrap(),
        b"precious old data"
    );
}

#[test]
fn files_source_roundtrip() {
    let env = Env::with_sources(|dir| {
        let state = dir.join("state");
        std::fs::create_dir_all(state.join("extracts")).unwrap();
        std::fs::write(state.join("state.json"), br#"{"cursor": 42}"#).unwrap();
        std::fs::write(state.join("extracts/day.parquet"), vec![7u8; 300_000]).unwrap();
        format!(
            "[[sources]]\nname = \"state\"\nkind = \"files\"\npath = \"{}\"\n",
            state.display()
        )
    });
    env.ok(&["backup", "--source", "state"]);
    let to = env.dir.path().join("state-restored");
    env.ok(&[
        "restore",
        "--source",
        "state",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(to.join("state.json")).unwrap(),
        br#"{"cursor": 42}"#
    );
    assert_eq!(
        std::fs::read(to.join("extracts/day.parquet")).unwrap(),
        vec![7u8; 300_000]
    );

    // --force over the restored tree, and over a plain file where the tree
    // goes: each is kept under a name of its own.
    std::fs::write(to.join("state.json"), b"edited").unwrap();
    let plain = env.dir.path().join("plain");
    std::fs::write(&plain, b"a file where the tree goes").unwrap();
    for (dest, kept_file, content) in [
        (&to, "state-restored.offsite-old-", &b"edited"[..]),
        (
            &plain,
            "plain.offsite-old-",
            &b"a file where the tree goes"[..],
        ),
    ] {
        env.ok(&[
            "restore",
            "--source",
            "state",
            "--latest",
            "--force",
            "--to",
            dest.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read(dest.join("state.json")).unwrap(),
            br#"{"cursor": 42}"#
        );
        let kept: Vec<_> = std::fs::read_dir(env.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(kept_file)
            })
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let old = if kept[0].is_dir() {
            std::fs::read(kept[0].join("state.json")).unwrap()
        } else {
            std::fs::read(&kept[0]).unwrap()
        };
        assert_eq!(old, content);
    }
}

#[test]
fn keygen_writes_a_private_identity_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.txt");
    let out = offsite_command()
        .args(["keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.trim().starts_with("age1"), "{stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("without it no backup can be restored"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(text.contains("AGE-SECRET-KEY-1"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = offsite_command()
        .args(["keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "existing identity untouched"
    );
}

#[test]
fn wrong_or_missing_identity_fails_with_a_hint() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let other = env.dir.path().join("other-key.txt");
    offsite_command()
        .args(["keygen", "-o", other.to_str().unwrap()])
        .output()
        .unwrap();
    let to = env.dir.path().join("r.db");
    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "-i",
        other.to_str().unwrap(),
    ]);
    // Format 2: with no owner_key pinned, the identity is taken for the
    // owner's, and the keyring says otherwise.
    assert_eq!(code, 1);
    assert!(
        err.contains("has no keyring this host can trust") && err.contains("hint:"),
        "{err}"
    );
    assert!(err.contains("encryption.owner_key"), "{err}");
    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "-i",
        "/nonexistent/key.txt",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/key.txt"), "{err}");
    assert!(!to.exists());
}

#[test]
fn damaged_repository_objects_fail_restore_without_touching_the_destination() {
    let env = Env::new();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let to = env.dir.path().join("r.db");
    std::fs::write(&to, b"keep").unwrap();
    let repo = env.repo();

    // A flipped byte in a pack.
    let pack = find_files(&repo.join("packs"))[0].clone();
    let original = std::fs::read(&pack).unwrap();
    let mut damaged = original.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    std::fs::write(&pack, &damaged).unwrap();
    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt") || err.contains("damaged"), "{err}");
    assert_eq!(
        std::fs::read(&to).unwrap(),
        b"keep",
        "destination untouched"
    );
    assert_eq!(leftovers(env.dir.path()), Vec::<String>::new());

    // A truncated pack.
    std::fs::write(&pack, &original[..original.len() - 100]).unwrap();
    let (code, _, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 1, "{err}");
    std::fs::write(&pack, &original).unwrap();

    // A flipped byte in a manifest.
    let manifest = find_files(&repo.join("snapshots"))[0].clone();
    let m = std::fs::read(&manifest).unwrap();
    let mut bad = m.clone();
    let n = bad.len() - 5;
    bad[n] ^= 0x10;
    std::fs::write(&manifest, &bad).unwrap();
    let (code, out, err) = env.run(&["snapshots"]);
    assert_eq!(code, 0, "a damaged manifest is skipped: {err}");
    assert!(out.contains("no snapshots"), "{out}");
    assert!(
        err.contains("skipping snapshots/"),
        "the warning names the object: {err}"
    );
    std::fs::write(&manifest, &m).unwrap();

    // Repaired, the snapshot restores again: nothing was damaged by the failures.
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(dump(&to).len(), 3_000);
}

#[test]
fn bad_sources_targets_and_configs_are_clear_errors() {
    // Not a SQLite database: error, file untouched.
    let env = Env::new();
    std::fs::write(
        env.db(),
        b"hello, I am a text file and not a database at all.............",
    )
    .unwrap();
    let before = std::fs::read(env.db()).unwrap();
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("is not a SQLite database") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(std::fs::read(env.db()).unwrap(), before);
    assert!(
        find_files(&env.repo().join("snapshots")).is_empty(),
        "no snapshot for a failed backup"
    );

    // Missing source file.
    std::fs::remove_file(env.db()).unwrap();
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 1);
    assert!(err.contains("app.db"), "{err}");

    // Missing target directory (an unmounted disk).
    let env = Env::with_target("/nonexistent-mount/offsite");
    env.make_db(&env.db(), 10);
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("does not exist") && err.contains("mounted"),
        "{err}"
    );

    // Malformed configs: exit 2, the setting named.
    for (cfg, needle) in [
        ("[encryption]\nrecipients = [\n", "invalid config"),
        ("[encryption]\nrecipients = []\n[[sources]]\nname = \"a\"\nkind = \"postgres\"\npath = \"x\"\n", "kind"),
        ("[encryption]\nrecipients = []\nbogus = 1\n", "bogus"),
        ("[encryption]\nrecipients = []\n[[targets]]\nname = \"t\"\nkind = \"local\"\npaht = \"x\"\n", "paht"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offsite.toml");
        std::fs::write(&path, cfg).unwrap();
        let out = offsite_command().args(["--config", path.to_str().unwrap(), "backup"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cfg}");
        assert!(err.contains(needle), "config {cfg:?} gave {err}");
        assert_eq!(out.status.code(), Some(2), "{err}");
    }
    let out = offsite_command()
        .args(["--config", "/nonexistent/offsite.toml", "backup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn demo_runs_the_main_job_on_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    for _ in 0..2 {
        let out = offsite_command()
            .args(["demo", "--dir", demo.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("restored copy has 50000 tasks"), "{stdout}");
    }
    let db = demo.join("restored.db");
    assert_eq!(dump_count(&db), 50_000);
}

#[test]
fn a_repository_written_by_format_v1_still_restores() {
    // tests/fixtures/repo-v1 was written by offsite 0.1.0 (format 1) and is
    // never regenerated: if this fails, the format changed incompatibly.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/repo-v1");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    copy_tree(&fixture.join("repo"), &repo);
    let cfg = dir.path().join("offsite.toml");
    std::fs::write(
        &cfg,
        format!(
            "[encryption]\nidentity_file = \"{}\"\n[[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"unused.db\"\n\
             [[targets]]\nname = \"fixture\"\nkind = \"local\"\npath = \"{}\"\n",
            fixture.join("key.txt").display(),
            repo.display()
        ),
    )
    .unwrap();
    let to = dir.path().join("r.db");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "restore",
            "--source",
            "app",
        ];
        args.extend_from_slice(&["--latest", "--to", to.to_str().unwrap()]);
        args.extend_from_slice(extra);
        offsite_command().args(args).output().unwrap()
    };
    // Nobody signed format 1 snapshots: restoring them is the user's choice.
    let refused = restore(&[]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert!(err.contains("--allow-unsigned"), "{err}");
    assert!(!to.exists());
    let out = restore(&["--allow-unsigned"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = Connection::open(&to).unwrap();
    let (n, sum): (i64, i64) = c
        .query_row("SELECT count(*), sum(length(title)) FROM tasks", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let expected = std::fs::read_to_string(fixture.join("expected.txt")).unwrap();
    assert_eq!(format!("{n} {sum}"), expected.trim());
}

#[test]
fn killed_backup_and_restore_leave_the_database_and_snapshots_intact() {
    let env = Env::new();
    env.make_db(&env.db(), 150_000);
    env.ok(&["backup"]);
    let before = snapshots(&env);
    Connection::open(env.db())
        .unwrap()
        .execute("UPDATE tasks SET body = 'v2'", [])
        .unwrap();
    let live = dump(&env.db());

    // Kill a backup part-way: no new snapshot, the database and the old snapshot intact.
    let mut child = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .arg("backup")
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let after = snapshots(&env);
    if !status.success() {
        assert_eq!(
            after.len(),
            before.len(),
            "a killed backup made no snapshot"
        );
    }
    assert_eq!(dump(&env.db()), live, "live database untouched");
    env.ok(&["backup"]);

    // Kill a restore part-way: the destination is untouched, and the next
    // restore clears the leftovers and succeeds.
    let to = env.dir.path().join("r.db");
    std::fs::write(&to, b"old").unwrap();
    let mut child = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args([
            "restore",
            "--source",
            "app",
            "--latest",
            "--force",
            "--to",
            to.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    child.kill().unwrap();
    if !child.wait().unwrap().success() {
        assert_eq!(
            std::fs::read(&to).unwrap(),
            b"old",
            "destination untouched by a killed restore"
        );
    }
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--force",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to), live);
    assert_eq!(leftovers(env.dir.path()), Vec::<String>::new());
    let first = before[0]["id"].as_str().unwrap();
    let old = env.dir.path().join("first.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        first,
        "--to",
        old.to_str().unwrap(),
    ]);
    assert!(
        dump(&old).iter().all(|r| r.2 != "v2"),
        "the first snapshot is intact"
    );
}

#[test]
fn targets_check_probes_each_target() {
    let env = Env::new();
    let out = env.ok(&["targets", "check"]);
    assert!(
        out.contains("local") && out.contains("put ok, list ok, get ok, delete ok"),
        "{out}"
    );
    assert!(
        find_files(&env.repo().join("probe")).is_empty(),
        "the probe object is removed"
    );
    let bad = Env::with_target("/nonexistent-mount/offsite");
    let (code, out, err) = bad.run(&["targets", "check"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NOT USABLE"), "{out}");
}
