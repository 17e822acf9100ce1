//! Setup shared by the integration tests of `backup-core` (each test file
//! says `mod support;`): keys, sources, options, an in-memory repository,
//! SQLite databases made and read back, and a pass-through [`Storage`] that a
//! test target overrides only where it misbehaves. [`v2`] makes format 2
//! repositories and writes (or forges) their snapshots from the format
//! encoders.
//!
//! It builds fixtures and reads results; it must never assert anything a
//! test relies on, so that every check stays visible in the test itself.

// Each test file is its own crate and uses only some of these helpers; the
// rest would warn as dead code in that crate.
#![allow(dead_code)]

pub mod v2;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use backup_core::backup::BackupOptions;
use backup_core::keys::{generate_identity, Identities, Keys};
use backup_core::prune::PruneOptions;
use backup_core::repo::Repository;
use backup_core::retention::Policy;
use backup_core::source::{SourceKind, SourceSpec};
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{
    bytes_stream, collect_bytes, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
};
use futures::stream::BoxStream;
use rusqlite::Connection;

/// Fresh keys, their identities, and the recipient they were made from.
pub fn keypair_and_recipient() -> (Keys, Identities, String) {
    let (secret, recipient) = generate_identity();
    (
        Keys::from_recipients(std::slice::from_ref(&recipient)).unwrap(),
        Identities::parse(&secret, "test").unwrap(),
        recipient,
    )
}

/// Fresh keys and the identities that open what they encrypt.
pub fn keypair() -> (Keys, Identities) {
    let (keys, ids, _) = keypair_and_recipient();
    (keys, ids)
}

pub fn source(name: &str, kind: SourceKind, path: &Path) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        kind,
        path: path.to_path_buf(),
    }
}

pub fn files(name: &str, path: &Path) -> SourceSpec {
    source(name, SourceKind::Files, path)
}

pub fn sqlite(name: &str, path: &Path) -> SourceSpec {
    source(name, SourceKind::Sqlite, path)
}

/// Default backup options but for the pack size.
pub fn pack_size(bytes: usize) -> BackupOptions {
    BackupOptions {
        pack_size: bytes,
        ..Default::default()
    }
}

/// Prune to the newest `n` snapshots of every source.
pub fn keep_last(n: u64) -> PruneOptions {
    PruneOptions {
        default_policy: Policy {
            last: n,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A temporary directory with an empty `data` directory in it (returned
/// second), for a files source.
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    (dir, data)
}

/// A new repository for `keys` on an in-memory target, and that target.
pub async fn memory_repo_for(keys: &Keys) -> (Arc<MemoryStorage>, Repository) {
    let mem = Arc::new(MemoryStorage::default());
    let repo = Repository::open_or_init(mem.clone(), keys).await.unwrap();
    (mem, repo)
}

/// Fresh keys and identities, and a new repository for them on an
/// in-memory target (with the target).
pub async fn memory_repo() -> (Keys, Identities, Arc<MemoryStorage>, Repository) {
    let (keys, ids) = keypair();
    let (mem, repo) = memory_repo_for(&keys).await;
    (keys, ids, mem, repo)
}

/// The ids of the snapshots of `repo`, newest first.
pub async fn snapshot_ids(repo: &Repository, ids: &Identities) -> Vec<String> {
    let snapshots = repo.snapshots(ids).await.unwrap();
    snapshots.into_iter().map(|m| m.id).collect()
}

/// The keys of `mem` under `prefix`, in the store's order.
pub fn keys_under(mem: &MemoryStorage, prefix: &str) -> Vec<String> {
    mem.keys()
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

/// The first pack of `mem` (panics if there is none).
pub fn first_pack(mem: &MemoryStorage) -> String {
    keys_under(mem, "packs/").remove(0)
}

/// Flips a bit in the middle byte of the object `key` of `mem`: damage that
/// only reading the object's data shows.
pub fn flip_middle_byte(mem: &MemoryStorage, key: &str) {
    mem.tamper(key, |d| {
        let n = d.len() / 2;
        d[n] ^= 0x40;
    });
}

/// Runs `schema` (SQL, typically `CREATE TABLE IF NOT EXISTS ...`) on the
/// database at `path`, creating it if needed, then inserts one row for each
/// `i` in `ids` with `insert` and the parameters `row(i)`, in one
/// transaction (so that large tables are quick to make).
pub fn add_rows<P: rusqlite::Params>(
    path: &Path,
    schema: &str,
    insert: &str,
    ids: Range<usize>,
    row: impl Fn(usize) -> P,
) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(schema).unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in ids {
        tx.execute(insert, row(i)).unwrap();
    }
    tx.commit().unwrap();
}

/// Adds `rows` rows from id `from` on to a `tasks` table (made if needed):
/// rows of random hex (compresses to about half, like real data).
pub fn add_tasks(path: &Path, from: usize, rows: usize) {
    add_rows(
        path,
        "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT)",
        "INSERT INTO tasks(id, title, body) VALUES (?1, ?2, ?3)",
        from..from + rows,
        |i| {
            (
                i as i64,
                format!("task {i}"),
                hex::encode(rand::random::<[u8; 48]>()),
            )
        },
    );
}

/// Every row of a `tasks(id, title, body, ...)` table, by id.
pub fn dump_tasks(path: &Path) -> Vec<(i64, String, String)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, title, body FROM tasks ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How many rows `table` of the database at `path` holds.
pub fn row_count(path: &Path, table: &str) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// What `PRAGMA integrity_check` says of the database at `path` ("ok").
pub fn integrity(path: &Path) -> String {
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// A test target that wraps another store: every call it does not override
/// goes straight to [`Wrapper::inner`]. Used as `Wrapped(target)`, which is
/// the [`Storage`] (the trait is `backup_core`'s, so it cannot be
/// implemented for every `Wrapper` directly). Like the targets it stands in
/// for, it knows no free space.
#[async_trait]
pub trait Wrapper: std::fmt::Debug + Send + Sync {
    fn inner(&self) -> &dyn Storage;

    fn describe(&self) -> String;

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        self.inner().put(key, body, mode).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.inner().get(key).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.inner().head(key).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        self.inner().list(prefix)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner().delete(key).await
    }
}

/// The [`Storage`] of a [`Wrapper`].
#[derive(Debug)]
pub struct Wrapped<W>(pub W);

#[async_trait]
impl<W: Wrapper> Storage for Wrapped<W> {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        self.0.put(key, body, mode).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.0.get(key).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.0.head(key).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        self.0.list(prefix)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.0.delete(key).await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A process killed mid-prune: after `after` writes and deletes (locks
/// aside, which a killed run's successor clears as stale), every later one
/// fails, as nothing more reaches the target.
#[derive(Debug)]
pub struct DiesAfter {
    inner: Arc<dyn Storage>,
    after: usize,
    done: std::sync::atomic::AtomicUsize,
}

impl DiesAfter {
    pub fn new(inner: Arc<dyn Storage>, after: usize) -> DiesAfter {
        DiesAfter {
            inner,
            after,
            done: Default::default(),
        }
    }

    fn step(&self, key: &str) -> Result<(), StorageError> {
        if key.starts_with("locks/") {
            return Ok(());
        }
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.after {
            return Err(StorageError::new(ErrorKind::Other, key, "killed"));
        }
        Ok(())
    }
}

#[async_trait]
impl Wrapper for DiesAfter {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        self.step(key)?;
        self.inner.put(key, body, mode).await
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.step(key)?;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        "dies after some steps".into()
    }
}

/// A copy of every object of `from`.
pub async fn copy_of(from: &MemoryStorage) -> Arc<MemoryStorage> {
    let to = Arc::new(MemoryStorage::default());
    for key in from.keys() {
        let body = collect_bytes(from.get(&key).await.unwrap()).await.unwrap();
        let body = bytes_stream(body);
        to.put(&key, body, PutMode::Create).await.unwrap();
    }
    to
}
