//! Engine round trips on the in-memory target: live SQLite snapshots, file
//! trees, deduplication, and the failure paths.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backup_core::backup::BackupOptions;
use backup_core::keys::{generate_identity, Identities, Keys};
use backup_core::repo::{select, Cause, Repository, Selector};
use backup_core::restore::RestoreOptions;
use backup_core::source::{SourceKind, SourceSpec};
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{testing, Storage};
use backup_core::Error;
use rusqlite::Connection;

fn keypair() -> (Keys, Identities) {
    let (secret, recipient) = generate_identity();
    (
        Keys::from_recipients(&[recipient]).unwrap(),
        Identities::parse(&secret, "test").unwrap(),
    )
}

fn make_db(path: &Path, rows: usize) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta JSON);
         CREATE INDEX tasks_title ON tasks(title);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO tasks(title, body, meta) VALUES (?1, ?2, json_object('n', ?3, 'tag', 'x'))",
            (format!("task {i}"), format!("body of task {i} ").repeat(8), i as i64),
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn dump(path: &Path) -> Vec<(i64, String, String)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, title, body FROM tasks ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn spec(path: &Path, kind: SourceKind) -> SourceSpec {
    SourceSpec {
        name: "app".into(),
        kind,
        path: path.to_path_buf(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_passes_the_conformance_suite() {
    testing::run_all(Arc::new(MemoryStorage::default()), 8 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sqlite_backup_restores_the_committed_state_while_a_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 20_000);
    let (keys, ids) = keypair();
    let mem = Arc::new(MemoryStorage::default());
    let repo = Repository::open_or_init(mem.clone(), &keys).await.unwrap();

    // A writer commits continuously during the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let c = Connection::open(&db).unwrap();
            c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                c.execute(
                    "INSERT INTO tasks(title, body) VALUES ('live', 'written during backup')",
                    [],
                )
                .unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    let opts = BackupOptions {
        pack_size: 256 << 10,
        ..Default::default()
    };
    let summary = repo
        .backup(&keys, &spec(&db, SourceKind::Sqlite), &opts)
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let commits = writer.join().unwrap();
    assert!(commits > 0, "the writer kept committing");

    let out = dir.path().join("restored.db");
    let r = repo
        .restore(&ids, &summary.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(r.bytes, summary.manifest.size);
    let restored = dump(&out);
    // The snapshot is a committed prefix of the writer's history: all original
    // rows, then some contiguous run of the live ones.
    assert!(restored.len() >= 20_000);
    let live = dump(&db);
    assert_eq!(
        &live[..restored.len()],
        &restored[..],
        "restored rows are a prefix of the live table"
    );
    let c = Connection::open(&out).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_uploads_only_changed_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 30_000);
    let (keys, ids) = keypair();
    let repo = Repository::open_or_init(Arc::new(MemoryStorage::default()), &keys)
        .await
        .unwrap();
    let src = spec(&db, SourceKind::Sqlite);
    let first = repo
        .backup(&keys, &src, &BackupOptions::default())
        .await
        .unwrap();
    {
        let c = Connection::open(&db).unwrap();
        // About one row in 500 changes, in a column that is not indexed.
        c.execute("UPDATE tasks SET body = 'changed' WHERE id % 500 = 0", [])
            .unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let second = repo
        .backup(&keys, &src, &BackupOptions::default())
        .await
        .unwrap();
    let m2 = &second.manifest;
    assert!(
        m2.new_bytes * 10 < m2.size,
        "0.2% of rows changed but {} of {} bytes were new",
        m2.new_bytes,
        m2.size
    );
    assert!(m2.uploaded_bytes < first.manifest.uploaded_bytes / 2);
    let list = repo.snapshots(&ids).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, m2.id, "newest first");
    let out = dir.path().join("r.db");
    repo.restore(
        &ids,
        select(&list, Some("app"), &Selector::Latest).unwrap(),
        &out,
        &RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(dump(&out), dump(&db));
    // The older snapshot still restores to the older state.
    let old = dir.path().join("old.db");
    repo.restore(&ids, &list[1], &old, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(dump(&old).iter().filter(|r| r.2 == "changed").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_tree_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("state");
    std::fs::create_dir_all(src.join("sub dir")).unwrap();
    std::fs::write(src.join("state.json"), br#"{"a":1}"#).unwrap();
    std::fs::write(
        src.join("sub dir/big.bin"),
        testing::pattern("big", 3 << 20),
    )
    .unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("state.json", src.join("link")).unwrap();
    let (keys, ids) = keypair();
    let repo = Repository::open_or_init(Arc::new(MemoryStorage::default()), &keys)
        .await
        .unwrap();
    let s = repo
        .backup(
            &keys,
            &spec(&src, SourceKind::Files),
            &BackupOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(s.manifest.files, 3);
    let out = dir.path().join("out");
    repo.restore(&ids, &s.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(out.join("state.json")).unwrap(),
        br#"{"a":1}"#
    );
    assert_eq!(
        std::fs::read(out.join("sub dir/big.bin")).unwrap(),
        testing::pattern("big", 3 << 20)
    );
    assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("state.json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_objects_and_wrong_keys_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 5_000);
    let (keys, ids) = keypair();
    let mem = Arc::new(MemoryStorage::default());
    let repo = Repository::open_or_init(mem.clone(), &keys).await.unwrap();
    let s = repo
        .backup(
            &keys,
            &spec(&db, SourceKind::Sqlite),
            &BackupOptions::default(),
        )
        .await
        .unwrap();
    let out = dir.path().join("out.db");

    // Wrong identity.
    let (_, other_ids) = keypair();
    let e = repo.snapshots(&other_ids).await.unwrap_err();
    assert!(matches!(e, Error::WrongIdentity { .. }), "{e}");

    // Wrong recipients for this repository.
    let (other_keys, _) = keypair();
    let e = repo
        .backup(
            &other_keys,
            &spec(&db, SourceKind::Sqlite),
            &BackupOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RecipientMismatch { .. }), "{e}");

    // A flipped byte in a pack.
    let pack = mem
        .keys()
        .into_iter()
        .find(|k| k.starts_with("packs/"))
        .unwrap();
    mem.tamper(&pack, |d| {
        let n = d.len() / 2;
        d[n] ^= 0x40
    });
    let e = repo
        .restore(&ids, &s.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(!out.exists(), "nothing written at the destination");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        3,
        "no staging files left behind"
    );
    mem.tamper(&pack, |d| {
        let n = d.len() / 2;
        d[n] ^= 0x40
    });

    // A truncated manifest is skipped, and named.
    let snap = format!("snapshots/{}", s.manifest.id);
    mem.tamper(&snap, |d| d.truncate(d.len() - 10));
    let listed = repo.snapshot_list(&ids).await.unwrap();
    assert!(listed.manifests.is_empty());
    assert_eq!(listed.unreadable.len(), 1);
    assert_eq!(listed.unreadable[0].key, snap);
    assert_eq!(listed.unreadable[0].cause, Cause::Undecodable);

    // Not a database: an error, and the file is untouched.
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not sqlite at all, just some text that is long enough",
    )
    .unwrap();
    let before = std::fs::read(&junk).unwrap();
    let e = repo
        .backup(
            &keys,
            &spec(&junk, SourceKind::Sqlite),
            &BackupOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotSqlite(_)), "{e}");
    assert_eq!(std::fs::read(&junk).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backup_leaves_no_snapshot_and_the_next_run_reuses_its_packs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 30_000);
    let (keys, ids) = keypair();
    let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
    Repository::open_or_init(mem.clone(), &keys).await.unwrap();
    let mut faulty = testing::FaultyStorage::new(mem.clone());
    faulty.prefix = "packs/".into();
    faulty.abort_after = Some(3);
    let faulty_repo = Repository::open(Arc::new(faulty)).await.unwrap();
    let opts = BackupOptions {
        pack_size: 256 << 10,
        ..Default::default()
    };
    let src = spec(&db, SourceKind::Sqlite);
    assert!(faulty_repo.backup(&keys, &src, &opts).await.is_err());
    let repo = Repository::open(mem.clone()).await.unwrap();
    assert!(
        repo.snapshots(&ids).await.unwrap().is_empty(),
        "no half snapshot is visible"
    );
    let reused = repo.load_index(&ids).await.unwrap().chunks.len();
    assert!(reused > 0, "the interrupted run indexed what it uploaded");

    let s = repo.backup(&keys, &src, &opts).await.unwrap();
    assert!(
        s.manifest.new_bytes < s.manifest.size,
        "the second run reused the first run's packs"
    );
    let out = dir.path().join("r.db");
    repo.restore(&ids, &s.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(dump(&out), dump(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 2_000);
    let (keys, ids) = keypair();
    let mem: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
    Repository::open_or_init(mem.clone(), &keys).await.unwrap();
    let faulty = testing::FaultyStorage::new(mem.clone());
    faulty.fail_puts.store(3, Ordering::SeqCst);
    let repo = Repository::open(Arc::new(faulty))
        .await
        .unwrap()
        .with_retry(backup_core::storage::RetryPolicy::fast());
    let s = repo
        .backup(
            &keys,
            &spec(&db, SourceKind::Sqlite),
            &BackupOptions::default(),
        )
        .await
        .unwrap();
    let out = dir.path().join("r.db");
    repo.restore(&ids, &s.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(dump(&out), dump(&db));
}
