//! scripts/restore-without-offsite.sh against what offsite wrote, with the
//! real `age` and `zstd` (scripts/install-test-deps.sh installs them): every
//! kind of snapshot restores and checks out, and a list that would write
//! outside the output, or a kind the script does not know, is refused with
//! nothing written. These are the format 1 script's own tests, so every
//! repository here is made with `format = 1`; format 2 (the Python script
//! it hands over to) is tested in stock_tools_v2.rs.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backup_core::keys::{Identities, Keys};
use backup_core::repo::Repository;
use backup_core::source::duckdb_lib::Database;
use rusqlite::Connection;

use crate::support::*;

fn require_tools() {
    for tool in ["age", "zstd"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(
            found,
            "`{tool}` is not installed: run scripts/install-test-deps.sh (apt-get install age zstd)"
        );
    }
}

fn script(env: &Env, id: &str, out: &Path) -> Output {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/restore-without-offsite.sh");
    Command::new("sh")
        .arg(script)
        .arg(env.repo())
        .arg(id)
        .arg(env.key())
        .arg(out)
        .output()
        .unwrap()
}

fn script_ok(env: &Env, id: &str, out: &Path) -> String {
    let r = script(env, id, out);
    let stdout = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        r.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(stdout.contains("restored"), "{stdout}");
    stdout
}

fn newest(env: &Env, source: &str) -> String {
    snapshots(env)
        .iter()
        .find(|s| s["source"] == source)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn a_sqlite_snapshot_restores_with_stock_tools() {
    require_tools();
    let env = Env::new().format_1();
    env.make_db(&env.db(), 5_000);
    env.ok(&["backup"]);
    Connection::open(env.db())
        .unwrap()
        .execute("UPDATE tasks SET title = 'x' WHERE id % 50 = 0", [])
        .unwrap();
    env.ok(&["backup"]);
    let out = env.dir.path().join("by-hand.db");
    script_ok(&env, &newest(&env, "app"), &out);
    let check: String = Connection::open(&out)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(dump(&out), dump(&env.db()));
    // An existing output is never replaced.
    let again = script(&env, &newest(&env, "app"), &out);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(dump(&out), dump(&env.db()));
}

pub(crate) fn duckdb_rows(path: &Path) -> Vec<Vec<Option<String>>> {
    let mut db = Database::open(path, true).unwrap();
    db.query("SELECT id::VARCHAR, name FROM events ORDER BY id")
        .unwrap()
}

#[test]
fn a_duckdb_snapshot_restores_with_its_wal_with_stock_tools() {
    require_tools();
    let env = Env::with_sources(|_| {
        "[[sources]]\nname = \"analytics\"\nkind = \"duckdb\"\npath = \"analytics.duckdb\"\n".into()
    })
    .format_1();
    let db = env.dir.path().join("analytics.duckdb");
    {
        let mut d = Database::open(&db, false).unwrap();
        d.execute(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, name VARCHAR);
             INSERT INTO events SELECT i, 'event ' || i FROM range(5000) t(i);",
        )
        .unwrap();
    }
    {
        // Work that is only in the WAL, as a killed application leaves it.
        let mut w = Database::open(&db, false).unwrap();
        w.execute(
            "SET wal_autocheckpoint = '1TB'; PRAGMA disable_checkpoint_on_shutdown;
             INSERT INTO events VALUES (99999, 'only in the wal');",
        )
        .unwrap();
    }
    assert!(env.dir.path().join("analytics.duckdb.wal").exists());
    let before = duckdb_rows(&db);
    env.ok(&["backup", "--source", "analytics"]);

    let out = env.dir.path().join("by-hand.duckdb");
    script_ok(&env, &newest(&env, "analytics"), &out);
    assert!(
        env.dir.path().join("by-hand.duckdb.wal").exists(),
        "the .wal is its own file"
    );
    let rows = duckdb_rows(&out);
    assert!(
        rows.iter()
            .any(|r| r[1].as_deref() == Some("only in the wal")),
        "the uncheckpointed row is there"
    );
    assert_eq!(rows, before);
}

/// Everything a tree holds, by relative path: kind, mode, mtime of files,
/// contents or link target.
pub(crate) fn tree(root: &Path) -> BTreeMap<String, (char, u32, i64, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, i64, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(
                    rel,
                    ('l', 0, 0, target.into_os_string().into_encoded_bytes()),
                );
            } else if m.is_dir() {
                out.insert(rel, ('d', mode, 0, Vec::new()));
                walk(root, &p, out);
            } else {
                out.insert(rel, ('f', mode, m.mtime(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub(crate) fn make_tree(dir: &Path) -> PathBuf {
    let t = dir.join("tree");
    let file = |rel: &str, data: &[u8], mode: u32| {
        let p = t.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    file("a.txt", b"hello\n", 0o644);
    file("bin/run.sh", b"#!/bin/sh\necho run\n", 0o755);
    file("private/secret", b"s3cr3t", 0o600);
    file("empty", b"", 0o640);
    file("name with spaces \u{fc}.txt", b"unicode", 0o644);
    file("deep/er/est/file", b"deep", 0o644);
    file("readonly/ro.txt", b"read only", 0o444);
    let big: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    file("big.bin", &big, 0o644);
    std::os::unix::fs::symlink("a.txt", t.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("../a.txt", t.join("bin/link-up")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", t.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("../outside/nowhere", t.join("dangling")).unwrap();
    for (d, mode) in [("private", 0o700), ("bin", 0o750), ("readonly", 0o555)] {
        std::fs::set_permissions(t.join(d), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    t
}

fn files_env() -> Env {
    Env::with_sources(|_| {
        "[[sources]]\nname = \"tree\"\nkind = \"files\"\npath = \"tree\"\n".into()
    })
    .format_1()
}

#[test]
fn a_directory_snapshot_restores_with_modes_and_links_with_stock_tools() {
    require_tools();
    let env = files_env();
    let src = make_tree(env.dir.path());
    env.ok(&["backup", "--source", "tree"]);
    let out = env.dir.path().join("by-hand");
    script_ok(&env, &newest(&env, "tree"), &out);
    let (want, got) = (tree(&src), tree(&out));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        assert_eq!(&got[path], w, "{path}");
    }
    std::fs::set_permissions(out.join("readonly"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(src.join("readonly"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Replaces the stored object `key` (a metadata object) with `plain`, encoded.
fn rewrite(env: &Env, key: &str, plain: &[u8]) {
    let cfg = std::fs::read_to_string(env.dir.path().join("offsite.toml")).unwrap();
    let recipient = cfg.split('"').find(|s| s.starts_with("age1")).unwrap();
    let keys = Keys::from_recipients(&[recipient.to_string()]).unwrap();
    let body = Repository::encode_metadata(&keys, plain).unwrap();
    std::fs::write(env.repo().join(key), body).unwrap();
}

fn read(env: &Env, key: &str) -> Vec<u8> {
    let ids = Identities::from_file(&env.key(), None).unwrap();
    let raw = std::fs::read(env.repo().join(key)).unwrap();
    backup_core::codec::decode(&raw, ids.iter(), key).unwrap()
}

#[test]
fn hostile_lists_and_unknown_kinds_are_refused_with_nothing_written() {
    require_tools();
    let env = Env::with_sources(|dir| {
        std::fs::create_dir(dir.join("small")).unwrap();
        std::fs::write(dir.join("small/a.txt"), b"hello").unwrap();
        "[[sources]]\nname = \"small\"\nkind = \"files\"\npath = \"small\"\n".into()
    })
    .format_1();
    env.ok(&["backup", "--source", "small"]);
    let id = newest(&env, "small");
    let list_key = format!("lists/{id}");
    let list = String::from_utf8(read(&env, &list_key)).unwrap();
    // "offsite-list 1", "F 644 5 <mtime> a.txt", "<chunk> 5"
    let chunk = list.lines().nth(2).unwrap().to_string();
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let o = outside.display();
    let crafted = [
        format!("F 644 5 0 ../evil\n{chunk}"),
        format!("F 644 5 0 {o}/evil\n{chunk}"),
        format!("F 644 5 0 a/./b\n{chunk}"),
        format!("L lnk {o}\nF 644 5 0 lnk/pwned\n{chunk}"),
        format!("D 755 d\nL d/l {o}\nF 644 5 0 d/l/pwned\n{chunk}"),
        format!("L x {o}\nD 755 x\nF 644 5 0 x/pwned\n{chunk}"),
        format!("F 644 5 0 new%0Aline\n{chunk}"),
    ];
    for (i, body) in crafted.iter().enumerate() {
        rewrite(
            &env,
            &list_key,
            format!("offsite-list 1\n{body}\n").as_bytes(),
        );
        let to = env.dir.path().join(format!("out{i}"));
        let r = script(&env, &id, &to);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{body}: {err}");
        assert!(
            err.contains("unsafe") || err.contains("twice") || err.contains("control character"),
            "{body}: {err}"
        );
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{body}"
        );
        assert!(
            !to.exists() && !to.with_extension("partial").exists(),
            "{body}"
        );
        assert!(!env.dir.path().join("evil").exists(), "{body}");
    }
    rewrite(&env, &list_key, list.as_bytes());

    // A manifest whose checksum does not match: nothing is left behind.
    let manifest_key = format!("snapshots/{id}");
    let manifest = read(&env, &manifest_key);
    let mut m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    m["sha256"] = "0".repeat(64).into();
    rewrite(&env, &manifest_key, &serde_json::to_vec_pretty(&m).unwrap());
    let to = env.dir.path().join("bad-sum");
    let r = script(&env, &id, &to);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(!to.exists(), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A kind the script does not know is refused, not guessed at.
    m["kind"] = "postgres".into();
    rewrite(&env, &manifest_key, &serde_json::to_vec_pretty(&m).unwrap());
    let r = script(&env, &id, &to);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("kind \"postgres\"") && err.contains("use offsite"),
        "{err}"
    );
    assert!(!to.exists());
}

/// The script, like offsite, passes over an index file that does not decode
/// and takes a chunk from a copy not recorded as damaged: after verify found
/// a damaged pack and the next backup stored its chunks again, the first
/// snapshot restores by hand.
#[test]
fn the_script_skips_junk_index_files_and_damaged_copies() {
    require_tools();
    let env = Env::new().format_1();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let first = newest(&env, "app");
    let before = dump(&env.db());
    let packs = find_files(&env.repo().join("packs"));
    assert_eq!(packs.len(), 1);
    let mut data = std::fs::read(&packs[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    std::fs::write(&packs[0], data).unwrap();
    let (code, out, err) = env.run(&["verify", "--read-data"]);
    assert_eq!(code, 1, "verify finds the damage: {out}{err}");
    assert!(!find_files(&env.repo().join("damaged")).is_empty());
    env.ok(&["backup"]);
    std::fs::write(
        env.repo().join("index").join("0".repeat(64)),
        b"not an age file",
    )
    .unwrap();

    let out = env.dir.path().join("by-hand.db");
    let r = script(&env, &first, &out);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        r.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert!(stderr.contains("skipping index/"), "{stderr}");
    let check: String = Connection::open(&out)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(dump(&out), before);
}
