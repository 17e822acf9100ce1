//! `offsite migrate` (docs/design/format-v2.md, 6.2) on in-memory targets:
//! a format 1 repository written by real backups of a real SQLite database
//! and a files source, moved into a format 2 repository made by `init` for
//! the same owner. Every migrated snapshot must restore from the new target
//! exactly as it does from the old one, signed, with its id, host and times,
//! tagged, as deltas where the source had an earlier snapshot; a migration
//! that fails mid-way must resume without storing anything twice; a
//! snapshot whose pack is damaged must be skipped, not signed; and the old
//! target must hold exactly the same objects, byte for byte, afterwards.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use backup_core::backup::BackupOptions;
use backup_core::keyadmin::Owner;
use backup_core::keys::{Identities, Keys};
use backup_core::keyset::{Holding, Trust};
use backup_core::lock::LockWait;
use backup_core::migrate::{migrate, MigrateOptions, MigrateReport, Migrated, MIGRATED_TAG};
use backup_core::repo::init::init;
use backup_core::repo::{Access, Manifest, Repository};
use backup_core::restore::RestoreOptions;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing::{pattern, FaultyStorage};
use backup_core::storage::{ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError};
use support::{Wrapped, Wrapper};

/// A format 1 repository on an in-memory target, with its keys, and the
/// sources its snapshots were taken of.
struct Old {
    keys: Keys,
    ids: Identities,
    mem: Arc<MemoryStorage>,
    repo: Repository,
    dir: tempfile::TempDir,
}

impl Old {
    async fn new() -> Old {
        let (keys, ids, mem, repo) = support::memory_repo().await;
        Old {
            keys,
            ids,
            mem,
            repo,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("app.db")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A format 1 backup of `spec` in small packs: its manifest.
    async fn backup(&self, spec: &backup_core::source::SourceSpec) -> Manifest {
        let opts = BackupOptions {
            host: "old-server".into(),
            ..support::pack_size(64 << 10)
        };
        self.repo
            .backup(&self.keys, spec, &opts)
            .await
            .unwrap()
            .manifest
    }

    async fn backup_db(&self) -> Manifest {
        self.backup(&support::sqlite("app", &self.db())).await
    }

    /// Every object of the old target and its bytes.
    fn contents(&self) -> BTreeMap<String, Vec<u8>> {
        contents(&self.mem)
    }

    /// The owner of the format 2 repository: the format 1 identity.
    fn owner(&self) -> Owner {
        Owner::new(self.ids.x25519()[0].clone())
    }

    /// A new format 2 repository of this owner on an empty in-memory target.
    async fn new_target(&self) -> Arc<MemoryStorage> {
        let mem = Arc::new(MemoryStorage::default());
        init(&[mem.clone() as Arc<dyn Storage>], &self.owner(), &[], None)
            .await
            .unwrap();
        mem
    }

    /// `storage` opened as the owner opens it.
    async fn open_new(&self, storage: Arc<dyn Storage>) -> Repository {
        let access = Access {
            trust: self.owner().public(),
            holding: Holding::Identities(self.ids.clone()),
            memory: None,
        };
        Repository::open_with(storage, Some(&access)).await.unwrap()
    }

    async fn migrate_to(
        &self,
        new: &Repository,
        latest_only: bool,
    ) -> backup_core::Result<MigrateReport> {
        let opts = MigrateOptions {
            latest_only,
            backup: support::pack_size(64 << 10),
            lock_wait: LockWait::default(),
        };
        migrate(self.mem.clone(), &self.ids, new, &opts, &|_| {}).await
    }

    /// What the format 1 snapshot `m` restores to, as a tree.
    async fn restored_v1(&self, m: &Manifest) -> Vec<(String, Vec<u8>)> {
        let to = self.dir.path().join(format!("v1-{}", m.id));
        self.repo
            .restore(&self.ids, m, &to, &RestoreOptions::default())
            .await
            .unwrap();
        tree(&to)
    }
}

/// Asserts that the old target holds exactly `before`: the same keys, each
/// with the same bytes.
fn assert_unchanged(old: &Old, before: &BTreeMap<String, Vec<u8>>) {
    let now = old.contents();
    let keys = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&now), keys(before), "the old target's objects");
    for (key, bytes) in before {
        assert!(now[key] == *bytes, "{key} changed on the old target");
    }
}

fn contents(mem: &MemoryStorage) -> BTreeMap<String, Vec<u8>> {
    (mem.keys().into_iter())
        .map(|k| {
            let bytes = support::v2::object(mem, &k);
            (k, bytes)
        })
        .collect()
}

/// A restored path as (relative path, contents or link target) pairs,
/// modes included, in order.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let name = p.strip_prefix(root).unwrap().display().to_string();
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            out.push((
                format!("L {name}"),
                target.display().to_string().into_bytes(),
            ));
        } else if meta.is_dir() {
            out.push((format!("D {mode:o} {name}"), Vec::new()));
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else {
            out.push((format!("F {mode:o} {name}"), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT)";
const INSERT: &str = "INSERT INTO tasks(id, title, body) VALUES (?1, ?2, ?3)";

fn add_tasks(db: &Path, ids: std::ops::Range<usize>) {
    support::add_rows(db, SCHEMA, INSERT, ids, |i| {
        (
            i as i64,
            format!("task {i}"),
            format!("body {i} ").repeat(20),
        )
    });
}

fn change_tasks(db: &Path, every: usize) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute(
        &format!("UPDATE tasks SET body = body || ' changed' WHERE id % {every} = 0"),
        [],
    )
    .unwrap();
}

/// Three snapshots of a SQLite database (made, 1% changed, grown) and two
/// of a directory; the second database snapshot pinned. Oldest first.
async fn history(old: &Old) -> Vec<Manifest> {
    let mut taken = Vec::new();
    add_tasks(&old.db(), 0..3000);
    taken.push(old.backup_db().await);
    change_tasks(&old.db(), 97);
    taken.push(old.backup_db().await);
    add_tasks(&old.db(), 3000..3500);
    taken.push(old.backup_db().await);
    let data = old.data();
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("a.txt"), b"hello").unwrap();
    std::fs::write(data.join("sub/b.bin"), pattern("b", 300_000)).unwrap();
    std::os::unix::fs::symlink("sub/b.bin", data.join("link")).unwrap();
    let files = support::files("files", &data);
    taken.push(old.backup(&files).await);
    std::fs::write(data.join("sub/c.bin"), pattern("c", 100_000)).unwrap();
    taken.push(old.backup(&files).await);
    old.repo
        .pin(&old.keys, &taken[1].id, LockWait::default())
        .await
        .unwrap();
    taken
}

/// Every migrated snapshot restores from `new` exactly as its format 1
/// original, signed by the owner, with its id, host and times, tagged.
async fn assert_migrated(old: &Old, new: &Repository, taken: &[Manifest]) {
    let keys = new.keyset().unwrap();
    let listed = new.snapshots_v2(keys).await.unwrap();
    assert_eq!(listed.snapshots.len(), taken.len());
    for m in taken {
        let s = (listed.snapshots.iter())
            .find(|s| s.manifest.id == m.id)
            .unwrap_or_else(|| panic!("{} is not on the new target", m.id));
        assert_eq!(
            s.trust,
            Trust::Signed {
                writer: "owner".into()
            }
        );
        let v2 = &s.manifest;
        assert_eq!(
            (&v2.source, v2.kind, &v2.host),
            (&m.source, m.kind, &m.host)
        );
        assert_eq!(
            (v2.started, v2.finished, v2.size),
            (m.started, m.finished, m.size)
        );
        assert!(v2.tags.iter().any(|t| t == MIGRATED_TAG), "{:?}", v2.tags);
        let to = old.dir.path().join(format!("v2-{}", m.id));
        new.restore_v2(keys, s, &to, &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(tree(&to), old.restored_v1(m).await, "snapshot {}", m.id);
        if m.source == "app" {
            assert_eq!(support::integrity(&to), "ok");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_a_v1_repository_to_v2() {
    let old = Old::new().await;
    let taken = history(&old).await;
    let before = old.contents();
    let mem = old.new_target().await;
    let new = old.open_new(mem.clone()).await;

    let report = old.migrate_to(&new, false).await.unwrap();

    let ids: Vec<&str> = report.snapshots.iter().map(|s| s.id.as_str()).collect();
    let mut oldest_first: Vec<&Manifest> = taken.iter().collect();
    oldest_first.sort_by_key(|m| (m.finished, m.id.clone()));
    let expected: Vec<&str> = oldest_first.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, expected, "every snapshot, oldest first");
    assert!(
        (report.snapshots.iter()).all(|s| matches!(s.migrated, Migrated::Copied(_))),
        "{:?}",
        report.snapshots
    );
    assert_migrated(&old, &new, &taken).await;
    // Each later database snapshot is a delta against the one before. (The
    // files source's lists are a few hundred bytes, where a delta chain is
    // "long by bytes" and the backup rightly writes full lists.)
    let stored = contents(&mem);
    assert!(stored.contains_key(&format!("lists/{}/full", taken[0].id)));
    for (from, to) in [(0, 1), (1, 2)] {
        let key = format!("lists/{}/d-{}", taken[to].id, taken[from].id);
        assert!(
            stored.contains_key(&key),
            "{key} missing: {:?}",
            stored.keys()
        );
    }
    assert_eq!(
        new.pinned().await.unwrap(),
        [taken[1].id.clone()].into_iter().collect()
    );
    assert_unchanged(&old, &before);

    // Run again: everything is there, nothing is written.
    let again = old.migrate_to(&new, false).await.unwrap();
    assert!(again
        .snapshots
        .iter()
        .all(|s| matches!(s.migrated, Migrated::Present)));
    let keys_now: Vec<String> = contents(&mem).into_keys().collect();
    let keys_then: Vec<String> = stored.into_keys().collect();
    assert_eq!(keys_now, keys_then);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_only_migrates_the_newest_of_each_source() {
    let old = Old::new().await;
    let taken = history(&old).await;
    let new = old.open_new(old.new_target().await).await;
    let report = old.migrate_to(&new, true).await.unwrap();
    let ids: Vec<&str> = report.snapshots.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [taken[2].id.as_str(), taken[4].id.as_str()]);
    assert_migrated(&old, &new, &[taken[2].clone(), taken[4].clone()]).await;
}

/// A target whose pack puts fail after `limit` of them succeeded, counting
/// the ones that did.
#[derive(Debug)]
struct PackLimit {
    inner: Arc<dyn Storage>,
    limit: usize,
    packs: AtomicUsize,
}

#[async_trait]
impl Wrapper for PackLimit {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    fn describe(&self) -> String {
        "pack-limit".into()
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        if !key.starts_with("packs/") {
            return self.inner.put(key, body, mode).await;
        }
        if self.packs.fetch_add(1, Ordering::SeqCst) >= self.limit {
            self.packs.fetch_sub(1, Ordering::SeqCst);
            return Err(StorageError::new(ErrorKind::Other, key, "injected crash"));
        }
        self.inner.put(key, body, mode).await
    }
}

/// `mem` behind a [`PackLimit`] of `limit`.
fn limited(mem: &Arc<MemoryStorage>, limit: usize) -> Arc<Wrapped<PackLimit>> {
    Arc::new(Wrapped(PackLimit {
        inner: mem.clone(),
        limit,
        packs: AtomicUsize::new(0),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migration_resumes() {
    let old = Old::new().await;
    let taken = history(&old).await;
    let before = old.contents();
    // How many packs a whole migration stores.
    let reference = limited(&old.new_target().await, usize::MAX);
    old.migrate_to(&old.open_new(reference.clone()).await, false)
        .await
        .unwrap();
    let all = reference.0.packs.load(Ordering::SeqCst);
    assert!(all > 4, "{all} packs");

    // Dies at the last pack: the run fails, what landed stays.
    let mem = old.new_target().await;
    let first = limited(&mem, all - 1);
    let failed = old
        .migrate_to(&old.open_new(first.clone()).await, false)
        .await;
    assert!(failed.is_err(), "{failed:?}");
    let plain = old.open_new(mem.clone()).await;
    let committed = plain.snapshots_v2(plain.keyset().unwrap()).await.unwrap();
    assert!(
        committed.snapshots.len() < taken.len()
            && committed.snapshots.iter().all(|s| s.trust.is_signed()),
        "{:?}",
        committed.snapshots
    );
    let after_first = contents(&mem);

    let second = limited(&mem, usize::MAX);
    let report = old
        .migrate_to(&old.open_new(second.clone()).await, false)
        .await
        .unwrap();
    let present = (report.snapshots.iter())
        .filter(|s| matches!(s.migrated, Migrated::Present))
        .count();
    assert_eq!(present, committed.snapshots.len());
    assert_eq!(
        first.0.packs.load(Ordering::SeqCst) + second.0.packs.load(Ordering::SeqCst),
        all,
        "the re-run stores only the pack that did not land"
    );
    let now = contents(&mem);
    for (key, bytes) in &after_first {
        assert_eq!(now.get(key), Some(bytes), "{key} was kept as it was");
    }
    assert_migrated(&old, &plain, &taken).await;
    assert_unchanged(&old, &before);
}

/// Killed between a snapshot's list object and its manifest: the re-run
/// writes that snapshot again over the list object nothing uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stopped_before_a_manifest_resumes() {
    let old = Old::new().await;
    let taken = history(&old).await;
    let mem = old.new_target().await;
    let mut faulty = FaultyStorage::new(mem.clone());
    faulty.prefix = "snapshots/".into();
    faulty.kind = ErrorKind::PermissionDenied;
    faulty.fail_puts = AtomicUsize::new(1);
    let stopped = old
        .migrate_to(&old.open_new(Arc::new(faulty)).await, false)
        .await;
    assert!(stopped.is_err(), "{stopped:?}");
    let left = contents(&mem);
    assert!(
        left.keys()
            .any(|k| k.starts_with(&format!("lists/{}/", taken[0].id))),
        "the first snapshot's list object is there: {:?}",
        left.keys()
    );
    assert!(!left.keys().any(|k| k.starts_with("snapshots/")));

    let new = old.open_new(mem.clone()).await;
    old.migrate_to(&new, false).await.unwrap();
    assert_migrated(&old, &new, &taken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_a_damaged_pack_is_skipped_not_signed() {
    let old = Old::new().await;
    add_tasks(&old.db(), 0..2000);
    let good = old.backup_db().await;
    let packs_before: Vec<String> = support::keys_under(&old.mem, "packs/");
    let data = old.data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("blob"), pattern("damaged", 200_000)).unwrap();
    let bad = old.backup(&support::files("files", &data)).await;
    let damaged = (support::keys_under(&old.mem, "packs/").into_iter())
        .find(|p| !packs_before.contains(p))
        .unwrap();
    support::flip_middle_byte(&old.mem, &damaged);
    let before = old.contents();
    let new = old.open_new(old.new_target().await).await;

    let report = old.migrate_to(&new, false).await.unwrap();

    let outcome = |id: &str| {
        (report.snapshots.iter())
            .find(|s| s.id == id)
            .map(|s| s.migrated.clone())
            .unwrap()
    };
    assert!(matches!(outcome(&good.id), Migrated::Copied(_)));
    match outcome(&bad.id) {
        Migrated::Skipped { reason } => assert!(reason.contains(&damaged), "{reason}"),
        other => panic!("the damaged snapshot was {other:?}"),
    }
    let listed = new.snapshots_v2(new.keyset().unwrap()).await.unwrap();
    let ids: Vec<&str> = listed
        .snapshots
        .iter()
        .map(|s| s.manifest.id.as_str())
        .collect();
    assert_eq!(
        ids,
        [good.id.as_str()],
        "nothing of the damaged one is signed"
    );
    assert_migrated(&old, &new, &[good]).await;
    // Not even a damage record.
    assert_unchanged(&old, &before);
}
