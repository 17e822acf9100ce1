//! scripts/restore-without-offsite-v2.py against format 2 repositories
//! offsite wrote, with the real `age`, `zstd`, `b3sum` and `openssl`
//! (scripts/install-test-deps.sh installs them): snapshots of every kind
//! restore and check out (a SQLite delta, a tree with modes and links, a
//! DuckDB database with its WAL), a second recipient restores with the
//! owner key, the format 1 script hands a format 2 repository over, and a
//! snapshot forged without the keys, or a list signed by the owner that
//! would write outside the output, is refused with nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backup_core::source::duckdb_lib::Database;
use rusqlite::Connection;

use crate::format2::{count_and_body_length, forge_newest_snapshot, initialised, touch_rows};
use crate::keys::another_identity;
use crate::stock_tools::{duckdb_rows, make_tree, tree};
use crate::support::*;

/// Every tool the script calls: a missing one fails the test saying how to
/// install it.
fn require_tools() {
    let tools = [
        ("python3", "--version", "apt-get install python3"),
        ("age", "--version", "apt-get install age"),
        ("age-keygen", "--version", "apt-get install age"),
        ("zstd", "--version", "apt-get install zstd"),
        ("b3sum", "--version", "apt-get install b3sum"),
        ("openssl", "version", "apt-get install openssl"),
    ];
    for (tool, arg, how) in tools {
        let found = Command::new(tool).arg(arg).output().is_ok();
        assert!(
            found,
            "`{tool}` is not installed: run scripts/install-test-deps.sh ({how})"
        );
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts")
}

/// The v2 script on `env`'s repository: snapshot `id`, identity `key`, to `out`.
fn script(env: &Env, id: &str, key: &Path, out: &Path, extra: &[&str]) -> Output {
    script_in(&env.repo(), id, key, out, extra)
}

fn script_in(repo: &Path, id: &str, key: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(scripts().join("restore-without-offsite-v2.py"))
        .arg(repo)
        .arg(id)
        .arg(key)
        .arg(out)
        .args(extra);
    output_within(&mut cmd, COMMAND_LIMIT)
}

fn text(r: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    )
}

fn script_ok(env: &Env, id: &str, key: &Path, out: &Path, extra: &[&str]) -> String {
    ok_output(script(env, id, key, out, extra), id)
}

fn ok_output(r: Output, id: &str) -> String {
    let all = text(&r);
    assert!(r.status.success(), "{all}");
    assert!(
        all.contains(&format!("restored {id}")) && all.contains("signatures verified"),
        "{all}"
    );
    all
}

fn ids_of(env: &Env, source: &str) -> Vec<String> {
    snapshots(env)
        .iter()
        .filter(|s| s["source"] == source)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_format_2(env: &Env) {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).unwrap()).unwrap();
    assert_eq!(config["version"], 2, "{config}");
}

/// Nothing at `out`, nor a `.partial` of it, nor anything else the script
/// leaves behind in the test directory.
fn assert_nothing_written(env: &Env, out: &Path) {
    assert!(!out.exists(), "{}", out.display());
    let partial: Vec<String> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}

fn make_duckdb(db: &Path) {
    {
        let mut d = Database::open(db, false).unwrap();
        d.execute(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, name VARCHAR);
             INSERT INTO events SELECT i, 'event ' || i FROM range(5000) t(i);",
        )
        .unwrap();
    }
    // Work that is only in the WAL, as a killed application leaves it.
    let mut w = Database::open(db, false).unwrap();
    w.execute(
        "SET wal_autocheckpoint = '1TB'; PRAGMA disable_checkpoint_on_shutdown;
         INSERT INTO events VALUES (99999, 'only in the wal');",
    )
    .unwrap();
}

#[test]
fn stock_tools_restore_v2_snapshots_of_every_kind() {
    require_tools();
    let env = Env::with_sources(|_| {
        "[[sources]]\nname = \"tree\"\nkind = \"files\"\npath = \"tree\"\n\n\
         [[sources]]\nname = \"analytics\"\nkind = \"duckdb\"\npath = \"analytics.duckdb\"\n"
            .into()
    });
    let src = make_tree(env.dir.path());
    let duck = env.dir.path().join("analytics.duckdb");
    make_duckdb(&duck);
    assert!(env.dir.path().join("analytics.duckdb.wal").exists());
    let duck_before = duckdb_rows(&duck);
    env.make_db(&env.db(), 5_000);
    env.ok(&["backup"]);
    let older_db = dump(&env.db());
    touch_rows(&env.db());
    env.ok(&["backup", "--source", "app"]);
    assert_format_2(&env);

    // SQLite: the newest snapshot is a delta from the first.
    let app = ids_of(&env, "app");
    let (newest, oldest) = (&app[0], &app[1]);
    assert!(
        env.repo()
            .join(format!("lists/{newest}/d-{oldest}"))
            .exists(),
        "the second backup is a delta"
    );
    let out = env.dir.path().join("by-hand.db");
    let said = script_ok(&env, newest, &env.key(), &out, &[]);
    assert!(
        said.contains(&format!("lists/{oldest}/full -> lists/{newest}/d-{oldest}")),
        "rebuilt along the chain: {said}"
    );
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&env.db()));
    let first = env.dir.path().join("first.db");
    script_ok(&env, oldest, &env.key(), &first, &[]);
    assert_eq!(dump(&first), older_db, "the older state, not the newest");
    // A junk shortcut is the cheapest path: it is passed over by name and
    // the chain rebuilds the list.
    let junk = env.repo().join(format!("lists/{newest}/full"));
    std::fs::write(&junk, b"not age").unwrap();
    let again = env.dir.path().join("past-junk.db");
    let said = script_ok(&env, newest, &env.key(), &again, &[]);
    assert!(
        said.contains(&format!("skipping lists/{newest}/full"))
            && said.contains(&format!("lists/{oldest}/full -> lists/{newest}/d-{oldest}")),
        "{said}"
    );
    assert_eq!(dump(&again), dump(&env.db()));
    std::fs::remove_file(junk).unwrap();
    // An existing output is never replaced.
    let again = script(&env, newest, &env.key(), &out, &[]);
    assert!(!again.status.success() && text(&again).contains("exists"));
    assert_eq!(dump(&out), dump(&env.db()));

    // Files: modes, mtimes, links, a read-only directory.
    let out = env.dir.path().join("by-hand-tree");
    script_ok(&env, &ids_of(&env, "tree")[0], &env.key(), &out, &[]);
    let (want, got) = (tree(&src), tree(&out));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        assert_eq!(&got[path], w, "{path}");
    }
    for root in [&out, &src] {
        std::fs::set_permissions(
            root.join("readonly"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    // DuckDB: the database and its WAL, its own file.
    let out = env.dir.path().join("by-hand.duckdb");
    script_ok(&env, &ids_of(&env, "analytics")[0], &env.key(), &out, &[]);
    assert!(env.dir.path().join("by-hand.duckdb.wal").exists());
    let rows = duckdb_rows(&out);
    assert!(rows
        .iter()
        .any(|r| r[1].as_deref() == Some("only in the wal")));
    assert_eq!(rows, duck_before);
}

#[test]
fn stock_tools_restore_v2_with_a_second_recipients_identity() {
    require_tools();
    let (env, owner) = initialised();
    let colleague = another_identity(&env, "colleague.txt");
    env.ok(&["key", "add", &colleague, "--name", "colleague"]);
    env.make_db(&env.db(), 800);
    env.ok(&["backup"]);
    let id = ids_of(&env, "app").remove(0);
    let identity = env.dir.path().join("colleague.txt");

    // Without the owner key, the colleague's identity cannot check the keyring.
    let out = env.dir.path().join("by-colleague.db");
    let r = script(&env, &id, &identity, &out, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("not the owner's") && text(&r).contains("--owner-key"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);

    script_ok(&env, &id, &identity, &out, &["--owner-key", &owner]);
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&env.db()));

    // Without the owner key and without checking signatures: restored, and
    // said to be unauthenticated.
    let unchecked = env.dir.path().join("unchecked.db");
    let r = script(&env, &id, &identity, &unchecked, &["--no-signatures"]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("UNAUTHENTICATED") && !text(&r).contains("signatures verified"),
        "{}",
        text(&r)
    );
    assert_eq!(dump(&unchecked), dump(&env.db()));

    // A wrong owner key is refused: the keyring is not signed by it.
    let (other, other_owner) = initialised();
    drop(other);
    let wrong = env.dir.path().join("wrong-owner.db");
    let r = script(&env, &id, &identity, &wrong, &["--owner-key", &other_owner]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("not a signer of this key set"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &wrong);
}

#[test]
fn stock_tools_refuse_a_forged_v2_snapshot() {
    require_tools();
    let (env, _) = initialised();
    env.make_db(&env.db(), 800);
    env.ok(&["backup"]);
    let genuine = ids_of(&env, "app").remove(0);
    let forged_db = env.dir.path().join("forged.db");
    Connection::open(&forged_db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta TEXT);
             INSERT INTO tasks(title, body) VALUES ('forged', 'pay the attacker');",
        )
        .unwrap();
    let forged = forge_newest_snapshot(&env.repo(), &forged_db);

    let out = env.dir.path().join("forged-out.db");
    let r = script(&env, &forged, &env.key(), &out, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains(&format!("snapshots/{forged} is signed by"))
            && text(&r).contains("not a signer of this key set"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);

    // Unauthenticated, the forgery still fails, at its chunk ids (the
    // attacker has no chunk-id key), and the script says it checked nothing.
    let r = script(&env, &forged, &env.key(), &out, &["--no-signatures"]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("UNAUTHENTICATED") && text(&r).contains("keyed BLAKE3 id"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);

    // The genuine snapshot beside it restores; the forged index file is
    // passed over by name.
    let good = env.dir.path().join("genuine.db");
    let said = script_ok(&env, &genuine, &env.key(), &good, &[]);
    assert!(
        said.contains("skipping index/") && said.contains("not a signer"),
        "{said}"
    );
    assert_eq!(dump(&good), dump(&env.db()));

    // The owner's keyring with one byte of whitespace added: the same JSON
    // and the owner's signer, so only the Ed25519 check (openssl) refuses it.
    let ring = env.repo().join("keyring/00000001");
    let signed = std::fs::read_to_string(&ring).unwrap();
    let changed = signed.replacen("\"format\": ", "\"format\":  ", 1);
    assert_ne!(changed, signed);
    std::fs::write(&ring, changed).unwrap();
    let again = env.dir.path().join("changed-keyring.db");
    let r = script(&env, &genuine, &env.key(), &again, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("keyring/00000001: the signature by")
            && text(&r).contains("does not match"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &again);
    std::fs::write(&ring, signed).unwrap();
}

#[test]
fn stock_tools_v1_script_hands_a_v2_repository_over() {
    require_tools();
    let env = Env::new();
    env.make_db(&env.db(), 1_000);
    env.ok(&["backup"]);
    assert_format_2(&env);
    let id = ids_of(&env, "app").remove(0);
    let out = env.dir.path().join("by-v1-script.db");
    let r = output_within(
        Command::new("sh")
            .arg(scripts().join("restore-without-offsite.sh"))
            .arg(env.repo())
            .arg(&id)
            .arg(env.key())
            .arg(&out),
        COMMAND_LIMIT,
    );
    let all = text(&r);
    assert!(r.status.success(), "{all}");
    assert!(
        all.contains("list_blake3") && all.contains("signatures verified"),
        "the format 2 script restored it: {all}"
    );
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&env.db()));
}

/// Without index files (a backup killed before its first one, or lost),
/// chunks are found in the signed trailers of the packs; an index file that
/// does not decode is passed over by name.
#[test]
fn stock_tools_v2_restore_from_pack_trailers_without_index_files() {
    require_tools();
    let env = Env::new();
    env.make_db(&env.db(), 1_500);
    env.ok(&["backup"]);
    let id = ids_of(&env, "app").remove(0);
    for f in find_files(&env.repo().join("index")) {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::write(env.repo().join("index").join("0".repeat(32)), b"not age").unwrap();
    let out = env.dir.path().join("from-trailers.db");
    let said = script_ok(&env, &id, &env.key(), &out, &[]);
    assert!(
        said.contains("skipping index/00000000000000000000000000000000"),
        "{said}"
    );
    assert!(said.contains("found in the signed trailers"), "{said}");
    assert_eq!(integrity(&out), "ok");
    assert_eq!(dump(&out), dump(&env.db()));
}

/// A pack whose data no longer decodes (one flipped byte) is refused,
/// naming it, with nothing written.
#[test]
fn stock_tools_v2_refuse_a_damaged_pack() {
    require_tools();
    let env = Env::new();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let id = ids_of(&env, "app").remove(0);
    let packs = find_files(&env.repo().join("packs"));
    assert_eq!(packs.len(), 1);
    let mut data = std::fs::read(&packs[0]).unwrap();
    let mid = data.len() / 2; // inside DATA: the trailer is a few KiB at the end
    data[mid] ^= 0x20;
    std::fs::write(&packs[0], data).unwrap();
    let out = env.dir.path().join("by-hand.db");
    let r = script(&env, &id, &env.key(), &out, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    let name = packs[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        text(&r).contains(&name) && text(&r).contains("is damaged"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);
}

/// tests/fixtures/repo-v2, written once by the first offsite that wrote
/// format 2, restores by hand with the owner's identity and with the second
/// recipient's (given the owner key); the removed recipient is told so.
#[test]
fn stock_tools_v2_restore_the_v2_fixture() {
    require_tools();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/repo-v2");
    let owner = std::fs::read_to_string(fixture.join("owner-key.txt")).unwrap();
    let expected = std::fs::read_to_string(fixture.join("expected.txt")).unwrap();
    let newest_app = "20261203T054800Z-76522884";
    let scratch = tempfile::tempdir().unwrap();
    for (identity, extra) in [
        ("key.txt", vec![]),
        ("key2.txt", vec!["--owner-key", owner.trim()]),
    ] {
        let out = scratch.path().join(format!("{identity}.db"));
        let r = script_in(
            &fixture.join("repo"),
            newest_app,
            &fixture.join(identity),
            &out,
            &extra,
        );
        ok_output(r, newest_app);
        assert_eq!(integrity(&out), "ok");
        assert_eq!(count_and_body_length(&out), expected.trim(), "{identity}");
    }
    let out = scratch.path().join("removed.db");
    let r = script_in(
        &fixture.join("repo"),
        newest_app,
        &fixture.join("removed.txt"),
        &out,
        &["--owner-key", owner.trim()],
    );
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("was removed from the repository"),
        "{}",
        text(&r)
    );
    assert!(!out.exists());
}

/// The key set, the current metadata recipient and the newest keyring of
/// `env`'s repository: public, what it takes (with a signing key) to write
/// a list and a manifest.
fn keyring_now(
    env: &Env,
) -> (
    backup_core::keys::KeysetId,
    age::x25519::Recipient,
    serde_json::Value,
) {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("config")).unwrap()).unwrap();
    let keyset = config["keyset"].as_str().unwrap().parse().unwrap();
    let newest = find_files(&env.repo().join("keyring")).pop().unwrap();
    let text = std::fs::read_to_string(newest).unwrap();
    let keyring: serde_json::Value =
        serde_json::from_str(text.rsplit_once("offsite-signature").unwrap().0).unwrap();
    let meta = keyring["generations"].as_array().unwrap().last().unwrap()["metadata_recipient"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (keyset, meta, keyring)
}

/// The owner's signer, from `env`'s identity.
fn owner_signer(env: &Env) -> backup_core::sign::Signer {
    let line = std::fs::read_to_string(env.key()).unwrap();
    let line = line
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap();
    let identity: age::x25519::Identity = line.parse().unwrap();
    let owner = backup_core::keys::OwnerKey::from_identity(&identity);
    backup_core::sign::Signer::owner(&owner, keyring_now(env).0)
}

/// Stores snapshot `id` whose full list body is `list` (a manifest
/// finished `when` and the list), both signed by `signer`, encrypted to
/// the current M.
fn put_signed_snapshot(
    env: &Env,
    id: &str,
    when: chrono::DateTime<chrono::Utc>,
    list: Vec<u8>,
    kind: backup_core::source::SourceKind,
    signer: &backup_core::sign::Signer,
) {
    use backup_core::repo::format::list2::ListHash;
    use backup_core::repo::format::sealed;
    let (_, meta, keyring) = keyring_now(env);
    let list_blake3 = ListHash::of(&list);
    let key = format!("lists/{id}/full");
    put(
        &env.repo(),
        &key,
        &sealed::encode(&key, list, signer, &meta).unwrap(),
    );
    let sqlite = kind == backup_core::source::SourceKind::Sqlite;
    let manifest = backup_core::repo::ManifestV2 {
        id: id.to_string(),
        source: "app".into(),
        kind,
        host: "h".into(),
        writer: "w".into(),
        started: when,
        finished: when,
        size: 5,
        files: 1,
        chunks: 1,
        new_bytes: 0,
        uploaded_bytes: 0,
        list_blake3,
        parent: None,
        generation: keyring["generation"].as_u64().unwrap() as u32,
        keyring: keyring["serial"].as_u64().unwrap() as u32,
        page_size: sqlite.then_some(4096),
        tags: vec![],
        tool: "offsite test".into(),
    };
    put(
        &env.repo(),
        &manifest.key(),
        &manifest.encode(signer, &meta).unwrap(),
    );
}

fn snapshot_id(when: chrono::DateTime<chrono::Utc>, suffix: &str) -> String {
    format!("{}-{suffix}", when.format("%Y%m%dT%H%M%SZ"))
}

/// A writer removed by the owner: what it signs claiming to be finished
/// after its removal is refused; what it signed before still counts.
#[test]
fn stock_tools_v2_refuse_what_a_removed_writer_signed_after_its_removal() {
    use backup_core::chunk::{ChunkId, ChunkKey};
    use backup_core::repo::format::list2::ListState;
    use backup_core::source::{Entry, SourceKind};

    require_tools();
    let (env, _) = initialised();
    env.make_db(&env.db(), 100);
    env.ok(&["backup"]);
    let wkey = env.dir.path().join("app-1.key");
    let out = offsite_command()
        .args(["writer", "keygen", "-o", wkey.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    env.ok(&["writer", "add", "app-1", &public]);
    env.ok(&["writer", "remove", "app-1"]);
    let writer = backup_core::keys::WriterKey::from_file(&wkey).unwrap();
    let signer = backup_core::sign::Signer::writer(&writer, keyring_now(&env).0);

    let mut state = ListState::default();
    let entry = Entry::File {
        path: "app.db".into(),
        mode: 0o644,
        size: 5,
        mtime: 0,
    };
    let chunk = (ChunkId::keyed(&ChunkKey([7; 32]), b"hello"), 5u32);
    state.insert(entry, vec![chunk]).unwrap();
    let now = chrono::Utc::now();
    let after = now + chrono::Duration::seconds(60);
    let late = snapshot_id(after, "0000000a");
    put_signed_snapshot(
        &env,
        &late,
        after,
        state.write_full(),
        SourceKind::Sqlite,
        &signer,
    );
    let out = env.dir.path().join("late.db");
    let r = script(&env, &late, &env.key(), &out, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("signed by writer app-1 after it was removed"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);

    // Finished before the removal: trusted, so the script goes on to the
    // data (which this made-up snapshot does not have).
    let before = now - chrono::Duration::seconds(3600);
    let early = snapshot_id(before, "0000000b");
    put_signed_snapshot(
        &env,
        &early,
        before,
        state.write_full(),
        SourceKind::Sqlite,
        &signer,
    );
    let out = env.dir.path().join("early.db");
    let r = script(&env, &early, &env.key(), &out, &[]);
    assert!(!r.status.success(), "{}", text(&r));
    assert!(
        text(&r).contains("signed by offsite-writer1") && text(&r).contains("is in no index file"),
        "{}",
        text(&r)
    );
    assert_nothing_written(&env, &out);
}

/// Lists signed by the owner (so every signature holds) that would write
/// outside the output, through a link or a file, a name with a newline, or
/// one path twice: refused before anything is written.
#[test]
fn stock_tools_v2_refuse_hostile_paths_even_when_signed() {
    use backup_core::chunk::{ChunkId, ChunkKey};
    use backup_core::repo::format::list2::ListState;
    use backup_core::source::{Entry, SourceKind};

    require_tools();
    let env = Env::new();
    env.make_db(&env.db(), 100);
    env.ok(&["backup"]);
    let signer = owner_signer(&env);
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let o = outside.display().to_string();
    let chunk = (ChunkId::keyed(&ChunkKey([7; 32]), b"hello"), 5u32);
    let file = |p: &str| {
        let e = Entry::File {
            path: p.into(),
            mode: 0o644,
            size: 5,
            mtime: 0,
        };
        (e, vec![chunk])
    };
    let link = |p: &str, t: &str| {
        let e = Entry::Symlink {
            path: p.into(),
            target: t.into(),
        };
        (e, vec![])
    };
    let dir = |p: &str| {
        let e = Entry::Dir {
            path: p.into(),
            mode: 0o755,
        };
        (e, vec![])
    };
    let crafted = vec![
        vec![file("../evil")],
        vec![file(&format!("{o}/evil"))],
        vec![file("a/./b")],
        vec![link("lnk", &o), file("lnk/pwned")],
        vec![dir("d"), link("d/l", &o), file("d/l/pwned")],
        vec![file("x"), file("x/pwned")],
        vec![file("new\nline")],
    ];
    let mut bodies: Vec<(String, Vec<u8>)> = crafted
        .into_iter()
        .map(|entries| {
            let mut state = ListState::default();
            let what = format!("{entries:?}");
            for (entry, chunks) in entries {
                state.insert(entry, chunks).unwrap();
            }
            (what, state.write_full())
        })
        .collect();
    // A path twice, which no state can hold: only a body written by hand.
    let twice = format!(
        "offsite-list 2\nF 644 5 0 a\n{} 5\nF 644 5 0 a\n{} 5\n",
        chunk.0, chunk.0
    );
    bodies.push(("a twice".into(), twice.into_bytes()));
    let start = chrono::Utc::now() + chrono::Duration::seconds(60);
    for (i, (what, body)) in bodies.into_iter().enumerate() {
        let when = start + chrono::Duration::seconds(i as i64);
        let id = snapshot_id(when, &format!("0000000{i}"));
        put_signed_snapshot(&env, &id, when, body, SourceKind::Files, &signer);
        let to = env.dir.path().join(format!("out{i}"));
        let r = script(&env, &id, &env.key(), &to, &[]);
        let all = text(&r);
        assert!(!r.status.success(), "{what}: {all}");
        assert!(
            all.contains("unsafe") || all.contains("control character") || all.contains("repeated"),
            "{what}: {all}"
        );
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "{what}"
        );
        assert!(!env.dir.path().join("evil").exists(), "{what}");
        assert_nothing_written(&env, &to);
    }
}

fn put(repo: &Path, key: &str, bytes: &[u8]) {
    let path = repo.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}
