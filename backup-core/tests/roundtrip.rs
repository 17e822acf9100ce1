//! Engine round trips on the in-memory target: live SQLite snapshots, file
//! trees, deduplication, and the failure paths.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backup_core::backup::{BackupOptions, BackupSummary};
use backup_core::keys::{Identities, Keys};
use backup_core::repo::{select, Cause, Manifest, Repository, Selector};
use backup_core::restore::RestoreOptions;
use backup_core::source::SourceKind;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing;
use backup_core::Error;
use rusqlite::Connection;

mod support;
use support::{
    add_rows, dump_tasks, first_pack, flip_middle_byte, integrity, keypair, memory_repo, source,
    sqlite,
};

/// A WAL-mode database of `rows` tasks, with an index and a JSON column.
fn make_db(path: &Path, rows: usize) {
    add_rows(
        path,
        "PRAGMA journal_mode=WAL;
         CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta JSON);
         CREATE INDEX tasks_title ON tasks(title);",
        "INSERT INTO tasks(title, body, meta) VALUES (?1, ?2, json_object('n', ?3, 'tag', 'x'))",
        0..rows,
        |i| {
            (
                format!("task {i}"),
                format!("body of task {i} ").repeat(8),
                i as i64,
            )
        },
    );
}

/// Backs `path` up as the source "app" of `kind`, with the default options.
async fn back_up(
    repo: &Repository,
    keys: &Keys,
    path: &Path,
    kind: SourceKind,
) -> Result<BackupSummary, Error> {
    let src = source("app", kind, path);
    repo.backup(keys, &src, &BackupOptions::default()).await
}

/// Restores `m` to `out`, which must work.
async fn restore(repo: &Repository, ids: &Identities, m: &Manifest, out: &Path) {
    repo.restore(ids, m, out, &RestoreOptions::default())
        .await
        .unwrap();
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
    let (keys, ids, _, repo) = memory_repo().await;

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
        .backup(&keys, &sqlite("app", &db), &opts)
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
    let restored = dump_tasks(&out);
    // The snapshot is a committed prefix of the writer's history: all original
    // rows, then some contiguous run of the live ones.
    assert!(restored.len() >= 20_000);
    let live = dump_tasks(&db);
    assert_eq!(
        &live[..restored.len()],
        &restored[..],
        "restored rows are a prefix of the live table"
    );
    assert_eq!(integrity(&out), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backup_uploads_only_changed_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 30_000);
    let (keys, ids, _, repo) = memory_repo().await;
    let first = back_up(&repo, &keys, &db, SourceKind::Sqlite)
        .await
        .unwrap();
    {
        let c = Connection::open(&db).unwrap();
        // About one row in 500 changes, in a column that is not indexed.
        c.execute("UPDATE tasks SET body = 'changed' WHERE id % 500 = 0", [])
            .unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }
    let second = back_up(&repo, &keys, &db, SourceKind::Sqlite)
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
    let latest = select(&list, Some("app"), &Selector::Latest).unwrap();
    restore(&repo, &ids, latest, &out).await;
    assert_eq!(dump_tasks(&out), dump_tasks(&db));
    // The older snapshot still restores to the older state.
    let old = dir.path().join("old.db");
    restore(&repo, &ids, &list[1], &old).await;
    assert_eq!(
        dump_tasks(&old).iter().filter(|r| r.2 == "changed").count(),
        0
    );
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
    let (keys, ids, _, repo) = memory_repo().await;
    let s = back_up(&repo, &keys, &src, SourceKind::Files)
        .await
        .unwrap();
    assert_eq!(s.manifest.files, 3);
    let out = dir.path().join("out");
    restore(&repo, &ids, &s.manifest, &out).await;
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
    let (keys, ids, mem, repo) = memory_repo().await;
    let s = back_up(&repo, &keys, &db, SourceKind::Sqlite)
        .await
        .unwrap();
    let out = dir.path().join("out.db");

    // Wrong identity.
    let (_, other_ids) = keypair();
    let e = repo.snapshots(&other_ids).await.unwrap_err();
    assert!(matches!(e, Error::WrongIdentity { .. }), "{e}");

    // Wrong recipients for this repository.
    let (other_keys, _) = keypair();
    let e = back_up(&repo, &other_keys, &db, SourceKind::Sqlite)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::RecipientMismatch { .. }), "{e}");

    // A flipped byte in a pack.
    let pack = first_pack(&mem);
    flip_middle_byte(&mem, &pack);
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
    flip_middle_byte(&mem, &pack);

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
    let e = back_up(&repo, &keys, &junk, SourceKind::Sqlite)
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
    let (keys, ids, mem, _) = memory_repo().await;
    let mut faulty = testing::FaultyStorage::new(mem.clone());
    faulty.prefix = "packs/".into();
    faulty.abort_after = Some(3);
    let faulty_repo = Repository::open(Arc::new(faulty)).await.unwrap();
    let opts = BackupOptions {
        pack_size: 256 << 10,
        ..Default::default()
    };
    let src = sqlite("app", &db);
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
    restore(&repo, &ids, &s.manifest, &out).await;
    assert_eq!(dump_tasks(&out), dump_tasks(&db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 2_000);
    let (keys, ids, mem, _) = memory_repo().await;
    let faulty = testing::FaultyStorage::new(mem.clone());
    faulty.fail_puts.store(3, Ordering::SeqCst);
    let repo = Repository::open(Arc::new(faulty))
        .await
        .unwrap()
        .with_retry(backup_core::storage::RetryPolicy::fast());
    let s = back_up(&repo, &keys, &db, SourceKind::Sqlite)
        .await
        .unwrap();
    let out = dir.path().join("r.db");
    restore(&repo, &ids, &s.manifest, &out).await;
    assert_eq!(dump_tasks(&out), dump_tasks(&db));
}

/// A target whose puts hold one lock across their own awaits, as a target
/// renewing its authorization for everyone does.
#[derive(Debug)]
struct SharedLock {
    inner: Arc<MemoryStorage>,
    lock: tokio::sync::Mutex<()>,
}

#[async_trait::async_trait]
impl support::Wrapper for SharedLock {
    fn inner(&self) -> &dyn backup_core::storage::Storage {
        self.inner.as_ref()
    }

    fn describe(&self) -> String {
        "shared-lock".into()
    }

    async fn put(
        &self,
        key: &str,
        body: backup_core::storage::ByteStream,
        mode: backup_core::storage::PutMode,
    ) -> Result<backup_core::storage::ObjectMeta, backup_core::storage::StorageError> {
        let _held = self.lock.lock().await;
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        self.inner().put(key, body, mode).await
    }
}

/// The uploader writes index files while packs upload: it must keep polling
/// the pack uploads meanwhile, or one holding what the index put needs
/// waits forever (a backup hung this way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_files_are_written_while_pack_uploads_are_polled() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    make_db(&db, 30_000);
    let (keys, ids, mem, _) = memory_repo().await;
    let storage = Arc::new(support::Wrapped(SharedLock {
        inner: mem.clone(),
        lock: tokio::sync::Mutex::new(()),
    }));
    let repo = Repository::open(storage).await.unwrap();
    let opts = BackupOptions {
        pack_size: 64 << 10,
        ..Default::default()
    };
    let src = sqlite("app", &db);
    for _ in 0..3 {
        let _ = std::fs::remove_file(dir.path().join("r.db"));
        let run = repo.backup(&keys, &src, &opts);
        let s = tokio::time::timeout(std::time::Duration::from_secs(120), run)
            .await
            .expect("the backup hung")
            .unwrap();
        assert!(
            support::keys_under(&mem, "index/").len() > 1,
            "index files every few packs"
        );
        restore(&repo, &ids, &s.manifest, &dir.path().join("r.db")).await;
        assert_eq!(dump_tasks(&dir.path().join("r.db")), dump_tasks(&db));
        Connection::open(&db)
            .unwrap()
            .execute("UPDATE tasks SET body = body || 'x' WHERE id % 3 = 0", [])
            .unwrap();
    }
}
