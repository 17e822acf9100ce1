//! Format 2 through the binary, with real age keys, real SQLite and a
//! local target: backups (signed, a delta against the parent), restores,
//! what `key add` and `key remove` mean for who can read, and a snapshot
//! forged with nothing but the public keyring and write access to the
//! target, which restore, verify and drill must refuse.

use std::path::Path;
use std::process::Command;

use rusqlite::Connection;

use crate::keys::another_identity;
use crate::support::*;

/// A format 2 repository made by `offsite init` (the config's identity is
/// the owner), and the owner key it printed.
pub(crate) fn initialised() -> (Env, String) {
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
pub(crate) fn touch_rows(db: &Path) {
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
pub(crate) fn opens_with(identity: &Path, object: &[u8], scratch: &Path) -> bool {
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

/// A repository where "colleague" was added, a backup made, its bundle
/// saved (as `old-keys.txt`, the identities in it), then removed. Returns
/// the env, the owner key, the colleague's recipient and identity file,
/// and the objects stored before the removal.
fn with_a_removed_colleague() -> (Env, String, String, std::path::PathBuf, Vec<String>) {
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
    (env, owner, colleague, colleague_id, before)
}

/// Whether a stored object (both parts of a pack) opens with `identity`.
fn any_part_opens(repo: &Path, key: &str, identity: &Path, scratch: &Path) -> bool {
    let raw = std::fs::read(repo.join(key)).unwrap();
    let data = encrypted_part(repo, key);
    let meta = &raw[data.len()..raw.len() - if key.starts_with("packs/") { 24 } else { 0 }];
    opens_with(identity, &data, scratch)
        || (!meta.is_empty() && opens_with(identity, meta, scratch))
}

#[test]
fn key_remove_then_the_removed_identity_cannot_read_new_snapshots() {
    let (env, owner, _, colleague_id, before) = with_a_removed_colleague();
    let old_keys = env.dir.path().join("old-keys.txt");
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

/// The objects of `repo` that are encrypted to a generation's keys.
fn encrypted_objects(repo: &Path) -> Vec<String> {
    let prefixes = [
        "snapshots/",
        "lists/",
        "index/",
        "packs/",
        "checks/",
        "pins/",
        "damaged/",
    ];
    keys_under(repo)
        .into_iter()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)))
        .collect()
}

#[test]
fn key_rewrite_leaves_nothing_a_removed_identity_can_read() {
    let (env, _, _, _, before) = with_a_removed_colleague();
    let old_keys = env.dir.path().join("old-keys.txt");
    touch_rows(&env.db());
    env.ok(&["backup"]);
    let ids: Vec<String> = snapshots(&env)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    env.ok(&["pin", &ids[1]]);
    let scratch = env.dir.path().join("scratch");
    let readable = |env: &Env| -> Vec<String> {
        encrypted_objects(&env.repo())
            .into_iter()
            .filter(|k| any_part_opens(&env.repo(), k, &old_keys, &scratch))
            .collect()
    };
    let open_before = readable(&env);
    assert!(open_before.len() >= 4, "{open_before:?} of {before:?}");

    // --dry-run counts and writes nothing.
    let stored = |env: &Env| -> Vec<(String, Vec<u8>)> {
        (keys_under(&env.repo()).into_iter())
            .map(|k| (k.clone(), std::fs::read(env.repo().join(&k)).unwrap()))
            .collect()
    };
    let untouched = stored(&env);
    let out = env.ok(&["key", "rewrite", "--dry-run"]);
    assert!(
        out.contains(&format!(
            "would encrypt again {} objects",
            open_before.len()
        )),
        "{out}"
    );
    assert!(stored(&env) == untouched, "a dry run wrote something");

    let out = env.ok(&["key", "rewrite"]);
    assert!(
        out.contains(&format!("encrypted again {} objects", open_before.len())),
        "{out}"
    );
    assert_eq!(
        readable(&env),
        Vec::<String>::new(),
        "old keys still open these"
    );
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&stored(&env)),
        names(&untouched),
        "the same objects, re-keyed"
    );
    let out = env.ok(&["key", "rewrite"]);
    assert!(
        out.contains("encrypted again 0 objects"),
        "a second run finds nothing: {out}"
    );

    // Everything still reads and restores, old snapshot and new.
    env.ok(&["verify", "--read-data"]);
    for (id, name) in [(&ids[0], "new.db"), (&ids[1], "old.db")] {
        let to = env.dir.path().join(name);
        let (code, out) = restore_to(&env, &to, &["--snapshot", id], &[]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(integrity(&to), "ok");
    }
    assert_eq!(
        dump(&env.dir.path().join("new.db")),
        dump(&env.db()),
        "the newest snapshot is the database"
    );
}

#[test]
fn an_interrupted_key_rewrite_resumes() {
    let (env, _, _, _, _) = with_a_removed_colleague();
    let old_keys = env.dir.path().join("old-keys.txt");
    let scratch = env.dir.path().join("scratch");
    let (code, out, err) = env.run_with(
        &["key", "rewrite"],
        &[("OFFSITE_FAILPOINTS", "rewrite.put=kill@3")],
    );
    assert_ne!(code, 0, "the fail-point stops it: {out}{err}");
    let to = env.dir.path().join("midway.db");
    let (code, out) = restore_to(&env, &to, &[], &[]);
    assert_eq!(code, 0, "half re-keyed, everything reads: {out}");
    assert_eq!(dump(&to), dump(&env.db()));
    let out = env.ok(&["key", "rewrite"]);
    assert!(
        !out.contains("encrypted again 0 objects"),
        "the rest is done: {out}"
    );
    let left: Vec<String> = encrypted_objects(&env.repo())
        .into_iter()
        .filter(|k| any_part_opens(&env.repo(), k, &old_keys, &scratch))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    env.ok(&["verify", "--read-data"]);
}

/// What an attacker holds: the public keyring (plaintext) and write
/// access to the target. It signs with a writer key of its own, which the
/// owner never authorised, and encrypts to the current generation's public
/// data and metadata recipients, which anyone can read from the keyring.
/// Returns the forged snapshot's id.
pub(crate) fn forge_newest_snapshot(repo: &Path, forged_db: &Path) -> String {
    use backup_core::chunk::{ChunkId, ChunkKey};
    use backup_core::codec::Encoder;
    use backup_core::keys::{KeysetId, WriterKey};
    use backup_core::repo::format::list2::{object, ListState};
    use backup_core::repo::format::pack2::{encode_pack, IndexFile, PackInfo};
    use backup_core::repo::ManifestV2;
    use backup_core::sign::Signer;
    use backup_core::source::{Entry, SourceKind};

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.join("config")).unwrap()).unwrap();
    let keyset: KeysetId = config["keyset"].as_str().unwrap().parse().unwrap();
    let newest = find_files(&repo.join("keyring")).pop().unwrap();
    let text = std::fs::read_to_string(newest).unwrap();
    let body = text.rsplit_once("offsite-signature").unwrap().0;
    let keyring: serde_json::Value = serde_json::from_str(body).unwrap();
    let generation = keyring["generations"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let data: age::x25519::Recipient = generation["data_recipient"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let meta: age::x25519::Recipient = generation["metadata_recipient"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let attacker = WriterKey::generate();
    let signer = Signer::writer(&attacker, keyset);
    let bytes = std::fs::read(forged_db).unwrap();
    let guess = ChunkKey(rand_bytes()); // the attacker has no chunk-id key
    let chunks: Vec<(ChunkId, u32)> = bytes
        .chunks(4096)
        .map(|p| (ChunkId::keyed(&guess, p), p.len() as u32))
        .collect();
    let name = hex::encode(rand_bytes());
    let pack = format!("packs/{}/{name}", &name[..2]);
    let info = PackInfo::from_chunks(&pack, &chunks).unwrap();
    let object_bytes = encode_pack(
        &mut Encoder::new(3).unwrap(),
        &bytes,
        &info,
        &pack,
        &signer,
        &data,
        &meta,
    )
    .unwrap();
    put(repo, &pack, &object_bytes);
    let index_key = format!("index/{}", &hex::encode(rand_bytes())[..32]);
    let index = IndexFile::new(&index_key, vec![(pack.clone(), info)]).unwrap();
    put(
        repo,
        &index_key,
        &index.encode(&index_key, &signer, &meta).unwrap(),
    );

    let mut state = ListState::default();
    let entry = Entry::File {
        path: "app.db".into(),
        mode: 0o644,
        size: bytes.len() as u64,
        mtime: 0,
    };
    state.insert(entry, chunks.clone()).unwrap();
    let now = chrono::Utc::now() + chrono::Duration::seconds(60);
    let id = format!("{}-0badf00d", now.format("%Y%m%dT%H%M%SZ"));
    put(
        repo,
        &format!("lists/{id}/full"),
        &object::encode_full(&id, &state, &signer, &meta).unwrap(),
    );
    let manifest = ManifestV2 {
        id: id.clone(),
        source: "app".into(),
        kind: SourceKind::Sqlite,
        host: "app-server".into(),
        writer: "app-server".into(),
        started: now,
        finished: now,
        size: bytes.len() as u64,
        files: 1,
        chunks: chunks.len() as u64,
        new_bytes: bytes.len() as u64,
        uploaded_bytes: object_bytes.len() as u64,
        list_blake3: state.list_blake3(),
        parent: None,
        generation: generation["n"].as_u64().unwrap() as u32,
        keyring: keyring["serial"].as_u64().unwrap() as u32,
        page_size: Some(4096),
        tags: vec![],
        tool: "offsite 0.1.0".into(),
    };
    put(
        repo,
        &manifest.key(),
        &manifest.encode(&signer, &meta).unwrap(),
    );
    id
}

fn rand_bytes() -> [u8; 32] {
    rand::random()
}

fn put(repo: &Path, key: &str, bytes: &[u8]) {
    let path = repo.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_forged_snapshot_is_rejected_by_restore_verify_and_drill() {
    let (env, _) = initialised();
    env.make_db(&env.db(), 800);
    env.ok(&["backup"]);
    let forged_db = env.dir.path().join("forged.db");
    {
        let c = Connection::open(&forged_db).unwrap();
        c.execute_batch(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta TEXT);
             INSERT INTO tasks(title, body) VALUES ('forged', 'pay the attacker');",
        )
        .unwrap();
    }
    let forged = forge_newest_snapshot(&env.repo(), &forged_db);

    // restore --latest: the genuine snapshot, with a warning naming the forgery.
    let to = env.dir.path().join("latest.db");
    let (code, out) = restore_to(&env, &to, &[], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        dump(&to),
        dump(&env.db()),
        "the genuine rows, not the forged ones"
    );
    assert!(
        out.contains(&format!("skipping snapshots/{forged}")),
        "{out}"
    );
    assert!(out.contains("not a signer of this key set"), "{out}");

    // Asked for by id: refused, nothing written.
    let by_id = env.dir.path().join("forged-out.db");
    let (code, out) = restore_to(&env, &by_id, &["--snapshot", &forged], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not trusted"), "{out}");
    assert!(!by_id.exists());
    assert!(leftovers(env.dir.path()).is_empty());

    let listed = snapshots(&env);
    let trust = |id: &str| listed.iter().find(|s| s["id"] == id).unwrap()["trust"].clone();
    assert_eq!(trust(&forged)["state"], "rejected", "{listed:?}");
    let genuine = listed.iter().find(|s| s["id"] != forged.as_str()).unwrap();
    assert_eq!(genuine["trust"]["state"], "signed", "{listed:?}");
    assert_eq!(genuine["trust"]["writer"], "owner", "{listed:?}");
    let table = env.ok(&["snapshots"]);
    assert!(
        table.contains("SIGNED BY") && table.contains("REJECTED"),
        "{table}"
    );

    let (code, out, err) = env.run(&["verify"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("FORGED"), "{out}{err}");

    let (code, out, err) = env.run(&["drill"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("rejected_objects"),
        "{out}{err}"
    );
}

/// tests/fixtures/repo-v2 was written once by the first offsite that wrote
/// format 2 (scripts/make-fixture-v2.sh says how) and is never regenerated:
/// if this fails, the format changed incompatibly. Its newest snapshots
/// restore with the owner's identity and with a recipient added by `key
/// add`; the older (pinned, full-list) ones too; the identity removed
/// between them cannot read the newer ones.
#[test]
fn a_repository_written_by_format_v2_still_restores() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/repo-v2");
    let scratch = tempfile::tempdir().unwrap();
    let repo = scratch.path().join("repo");
    copy_tree(&fixture.join("repo"), &repo);
    let owner = std::fs::read_to_string(fixture.join("owner-key.txt")).unwrap();
    let expected = std::fs::read_to_string(fixture.join("expected.txt")).unwrap();
    for identity in ["key.txt", "key2.txt"] {
        let env = fixture_env(&repo, &fixture.join(identity), owner.trim());
        let listed = snapshots(&env);
        assert_eq!(listed.len(), 4, "two snapshots of each source: {listed:?}");
        assert!(
            listed.iter().all(|s| s["trust"]["writer"] == "app-1"),
            "{listed:?}"
        );
        let to = env.dir.path().join("app.db");
        let (code, out) = restore_to(&env, &to, &[], &[]);
        assert_eq!(code, 0, "{identity}: {out}");
        assert_eq!(integrity(&to), "ok");
        assert_eq!(count_and_body_length(&to), expected.trim(), "{identity}");

        let oldest = oldest_of(&listed, "app");
        let older = env.dir.path().join("older.db");
        let (code, out) = restore_to(&env, &older, &["--snapshot", &oldest], &[]);
        assert_eq!(code, 0, "{identity}: {out}");
        assert_eq!(integrity(&older), "ok");
        assert_eq!(dump_count(&older), 2000);

        let files = env.dir.path().join("files");
        let (code, out, err) = env.run(&[
            "restore",
            "--source",
            "files",
            "--latest",
            "--to",
            files.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{identity}: {out}{err}");
        let read = |p: &str| std::fs::read_to_string(files.join(p)).unwrap();
        assert_eq!(read("docs/note.txt"), "second version\n");
        assert_eq!(read("keep.txt"), "unchanged\n");
        assert_eq!(
            std::fs::read_link(files.join("link")).unwrap(),
            Path::new("docs/note.txt")
        );
    }
    let env = fixture_env(&repo, &fixture.join("removed.txt"), owner.trim());
    let to = env.dir.path().join("by-removed.db");
    let (code, out) = restore_to(&env, &to, &[], &[]);
    assert_ne!(
        code, 0,
        "the removed identity read the newest snapshot: {out}"
    );
    assert!(out.contains("is a recipient of this repository"), "{out}");
    assert!(!to.exists());
}

/// An environment whose config reads the fixture copy at `repo` with
/// `identity`, trusting `owner`.
fn fixture_env(repo: &Path, identity: &Path, owner: &str) -> Env {
    let env = Env::with_target(repo.to_str().unwrap());
    std::fs::write(
        env.dir.path().join("offsite.toml"),
        format!(
            "state_dir = \"state\"\n[encryption]\nidentity_file = \"{}\"\nowner_key = \"{owner}\"\n\
             [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"unused.db\"\n\
             [[sources]]\nname = \"files\"\nkind = \"files\"\npath = \"unused\"\n\
             [[targets]]\nname = \"fixture\"\nkind = \"local\"\npath = \"{}\"\n",
            identity.display(),
            repo.display()
        ),
    )
    .unwrap();
    env
}

pub(crate) fn count_and_body_length(db: &Path) -> String {
    let c = Connection::open(db).unwrap();
    let (n, sum): (i64, i64) = c
        .query_row("SELECT count(*), sum(length(body)) FROM tasks", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    format!("{n} {sum}")
}

fn oldest_of(listed: &[serde_json::Value], source: &str) -> String {
    listed
        .iter()
        .rfind(|s| s["source"] == source)
        .unwrap_or_else(|| panic!("no snapshot of {source}: {listed:?}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}
