//! Format 2 through the binary, with real age keys, real SQLite and a
//! local target: backups (signed, a delta against the parent), restores,
//! what `key add` and `key remove` mean for who can read, and a snapshot
//! forged with nothing but the public keyring and write access to the
//! target, which restore, verify and drill must refuse.

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::Connection;

use crate::keys::another_identity;
use crate::support::*;

/// A format 2 repository made by `offsite init` (the config's identity is
/// the owner), and the owner key it printed.
fn initialised() -> (Env, String) {
    let env = Env::new();
    let (code, out, err) = env.run(&["init"]);
    assert_eq!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    let owner = text
        .split_whitespace()
        .find(|w| w.starts_with("offsite-owner1"))
        .unwrap_or_else(|| panic!("init printed no owner key: {text}"))
        .to_string();
    (env, owner)
}

/// Changes about 1% of the rows.
fn touch_rows(db: &Path) {
    let c = Connection::open(db).unwrap();
    c.execute(
        "UPDATE tasks SET body = body || ' changed' WHERE id % 97 = 0",
        [],
    )
    .unwrap();
}

fn restore_to(env: &Env, to: &Path, extra: &[&str], vars: &[(&str, &str)]) -> (i32, String) {
    let mut args = vec!["restore", "--source", "app", "--to", to.to_str().unwrap()];
    if !extra.contains(&"--snapshot") {
        args.push("--latest");
    }
    args.extend_from_slice(extra);
    let (code, out, err) = env.run_with(&args, vars);
    (code, format!("{out}{err}"))
}

fn keys_under(dir: &Path) -> Vec<String> {
    find_files(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn format_2_backups_are_deltas_and_restore_exactly() {
    let (env, _) = initialised();
    env.make_db(&env.db(), 3000);
    env.ok(&["backup"]);
    touch_rows(&env.db());
    env.ok(&["backup"]);
    let listed = snapshots(&env);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (newest, oldest) = (
        listed[0]["id"].as_str().unwrap(),
        listed[1]["id"].as_str().unwrap(),
    );
    let stored = keys_under(&env.repo());
    assert!(
        stored.contains(&format!("lists/{oldest}/full")),
        "{stored:?}"
    );
    assert!(
        stored.contains(&format!("lists/{newest}/d-{oldest}")),
        "the second backup is a delta against the first: {stored:?}"
    );

    let to = env.dir.path().join("restored.db");
    let (code, out) = restore_to(&env, &to, &[], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
    let older = env.dir.path().join("older.db");
    let (code, out) = restore_to(&env, &older, &["--snapshot", oldest], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(integrity(&older), "ok");
    assert_ne!(
        dump(&older),
        dump(&env.db()),
        "the older state, not the newest"
    );
}

#[test]
fn key_add_then_the_new_identity_restores() {
    let (env, owner) = initialised();
    let colleague = another_identity(&env, "colleague.txt");
    env.ok(&["key", "add", &colleague, "--name", "colleague"]);
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);

    let identity = env.dir.path().join("colleague.txt");
    let to = env.dir.path().join("by-colleague.db");
    let pin = [("OFFSITE_ENCRYPTION__OWNER_KEY", owner.as_str())];
    let (code, out) = restore_to(&env, &to, &["--identity", identity.to_str().unwrap()], &pin);
    assert_eq!(code, 0, "{out}");
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
}

/// Decrypts a stored object (or the DATA part of a pack) with `identity`
/// using the real age and zstd: whether it opens.
fn opens_with(identity: &Path, object: &[u8], scratch: &Path) -> bool {
    std::fs::write(scratch, object).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity)
        .arg(scratch)
        .output()
        .expect("age is installed (scripts/install-test-deps.sh)");
    out.status.success()
}

/// A stored object's bytes, a pack cut to its DATA part (docs/format.md:
/// the footer's last 8 digits before the newline are the META length).
fn encrypted_part(repo: &Path, key: &str) -> Vec<u8> {
    let raw = std::fs::read(repo.join(key)).unwrap();
    if !key.starts_with("packs/") {
        return raw;
    }
    let footer = std::str::from_utf8(&raw[raw.len() - 24..]).unwrap();
    let meta: usize = footer.trim_end()[15..].parse().unwrap();
    raw[..raw.len() - 24 - meta].to_vec()
}

/// The secrets of a saved key bundle as an age identity file.
fn bundle_identities(bundle: &Path, holder: &Path, out: &Path) {
    let decrypted = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(holder)
        .arg(bundle)
        .output()
        .unwrap();
    assert!(decrypted.status.success());
    let json = Command::new("zstd")
        .args(["-d", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&decrypted.stdout)?;
            c.wait_with_output()
        })
        .expect("zstd is installed");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mut lines = Vec::new();
    for g in v["generations"].as_array().unwrap() {
        for k in ["data", "metadata"] {
            lines.push(g[k].as_str().unwrap().to_string());
        }
    }
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
}

#[test]
fn key_remove_then_the_removed_identity_cannot_read_new_snapshots() {
    let (env, owner) = initialised();
    let colleague = another_identity(&env, "colleague.txt");
    let colleague_id = env.dir.path().join("colleague.txt");
    env.ok(&["key", "add", &colleague, "--name", "colleague"]);
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let before: Vec<String> = keys_under(&env.repo());

    // What the removed holder kept: its bundle (anyone may keep a copy).
    let keyring = json(&env.ok(&["key", "list", "--json"]));
    let bundle = keyring[0]["keyring"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient"] == colleague.as_str())
        .unwrap()["bundle"]
        .as_str()
        .unwrap()
        .to_string();
    let saved = env.dir.path().join("saved-bundle");
    std::fs::copy(env.repo().join(&bundle), &saved).unwrap();
    let old_keys = env.dir.path().join("old-keys.txt");
    bundle_identities(&saved, &colleague_id, &old_keys);

    env.ok(&["key", "remove", &colleague]);
    touch_rows(&env.db());
    env.ok(&["backup"]);

    let pin = [("OFFSITE_ENCRYPTION__OWNER_KEY", owner.as_str())];
    let to = env.dir.path().join("by-removed.db");
    let (code, out) = restore_to(
        &env,
        &to,
        &["--identity", colleague_id.to_str().unwrap()],
        &pin,
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is a recipient of this repository"), "{out}");
    assert!(!to.exists());

    // Every object written since, whatever the old bundle holds, is closed
    // to it; what was stored before still opens (remove re-encrypts nothing).
    let scratch = env.dir.path().join("scratch");
    let encrypted = |k: &str| {
        ["snapshots/", "lists/", "index/", "packs/"]
            .iter()
            .any(|p| k.starts_with(p))
    };
    let after: Vec<String> = keys_under(&env.repo())
        .into_iter()
        .filter(|k| encrypted(k) && !before.contains(k))
        .collect();
    assert!(after.iter().any(|k| k.starts_with("packs/")), "{after:?}");
    assert!(
        after.iter().any(|k| k.starts_with("snapshots/")),
        "{after:?}"
    );
    for key in &after {
        let part = encrypted_part(&env.repo(), key);
        assert!(
            !opens_with(&old_keys, &part, &scratch),
            "{key} opens with the removed keys"
        );
    }
    let mut old_opened = 0;
    for key in before.iter().filter(|k| encrypted(k)) {
        let part = encrypted_part(&env.repo(), key);
        assert!(
            opens_with(&old_keys, &part, &scratch),
            "{key} no longer opens"
        );
        old_opened += 1;
    }
    assert!(old_opened >= 4, "{before:?}");
    // The owner still restores the newest.
    let by_owner = env.dir.path().join("by-owner.db");
    let (code, out) = restore_to(&env, &by_owner, &[], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(dump(&by_owner), dump(&env.db()));
}

/// The path of `key` in a local repository.
#[allow(dead_code)]
fn object(env: &Env, key: &str) -> PathBuf {
    env.repo().join(key)
}
