//! `offsite migrate` (docs/design/format-v2.md, 6.2): a format 1
//! repository copied, snapshot by snapshot, into a format 2 repository of
//! the same owner, which signs every snapshot it copies.
//!
//! Per source, oldest first (or only the newest regular snapshot of each
//! source with `latest_only`), each format 1 snapshot is read through the
//! format 1 restore ([`Repository::stage`]: every chunk checked against
//! its id, the SHA-256 of the data and, for SQLite, `PRAGMA
//! integrity_check`) into a scratch directory on local disk, then replayed
//! from there into the format 2 backup pipeline
//! ([`crate::backup::backup_v2_from`]), which computes keyed ids, stores
//! only the chunks the new target lacks, writes a delta against the
//! previously migrated snapshot of the source (or a full list) and then
//! the manifest, with the same snapshot id, host, times and tags plus
//! [`MIGRATED_TAG`], signed by the owner. The replay checks each chunk
//! against its format 1 id and the SHA-256 again as it reads the scratch
//! copy, so what is signed is exactly what the format 1 snapshot held. A
//! snapshot that fails any of these checks is reported and skipped: it is
//! never signed. Pins are carried over.
//!
//! Memory does not grow with the data: chunks stream through the backup
//! pipeline. The scratch copy is a deliberate trade: chunks of a later
//! snapshot are scattered over the packs of earlier ones, so reading them
//! in list order straight from packs would download a pack once per visit;
//! the format 1 restore fetches each pack once. The cost is local disk for
//! one snapshot at a time (its size), removed after each snapshot.
//!
//! The old target is never written: it is opened through [`LocksOnly`],
//! which refuses every put and delete outside `locks/`, so not even the
//! damage record a restore writes on finding a damaged pack lands there
//! (it is warned about instead). It holds a shared lock from start to end
//! (prune waits; backups to it go on), and so does the new target.
//!
//! Crash safety: each snapshot's manifest is its commit point, written
//! create-if-absent after its packs, index files and list object, as in
//! every backup. A re-run skips the snapshot ids the new target already
//! holds signed and deduplicates against the index files that landed, so
//! a migration killed at any step resumes where it stopped and re-uploads
//! at most the packs no index file named yet:
//! - killed while reading a snapshot into the scratch directory: nothing
//!   was written to the new target; the scratch directory (under the
//!   system's temporary directory, `offsite-migrate-*`) is left behind
//!   (an ordinary temporary directory, removed on the next boot or by hand);
//! - killed while uploading: packs are unreferenced or indexed, reused by
//!   the re-run; no manifest, so the snapshot is migrated again;
//! - killed after the list object, before the manifest: the list object
//!   is unreferenced (prune removes it; no later snapshot builds on it);
//! - killed after the manifest, before its pin: the re-run writes the pin
//!   of a snapshot it skips as present.
//!
//! The new target full: the backup pipeline's answer ([`Error::TargetFull`],
//! what landed is indexed or removed again); the migration stops there with
//! that error, every snapshot migrated so far is complete, and a re-run once
//! there is room goes on. The local disk full: the format 1 restore fails,
//! the migration stops with that error and a re-run goes on. A backup
//! running on the old target meanwhile: its snapshot appears or not in
//! this run's listing (taken once at the start); one that is not migrated
//! now is by the next run. A backup to the new target meanwhile is as
//! safe as two backups are; its snapshot may become the parent of the next
//! migrated one, which is still a valid delta.
//!
//! Never: write to the old target outside `locks/`, sign a snapshot that
//! did not pass every check, or overwrite anything on the new target.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};

use crate::backup::{backup_v2_from, BackupOptions, Origin};
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::keys::v2::SignerPublic;
use crate::keys::{Identities, MetadataKey};
use crate::keyset::KeySet;
use crate::lock::{Lock, LockKind, LockWait};
use crate::repo::format::ListItem;
use crate::repo::{ChunkList, Manifest, ManifestV2, Repository, LOCKS};
use crate::restore::{open_staged, restored_paths, RestoreOptions};
use crate::source::{Entry, SourceInfo, SourceKind, SourceSpec, Visitor};
use crate::storage::{ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError};

/// The tag every migrated snapshot carries.
pub const MIGRATED_TAG: &str = "migrated";

#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// Only the newest regular snapshot of each source.
    pub latest_only: bool,
    /// How the new target is written (pack size, compression, uploads);
    /// host, tags and pin are each snapshot's own.
    pub backup: BackupOptions,
    /// How long to wait for a prune on either target.
    pub lock_wait: LockWait,
}

/// What became of one format 1 snapshot.
#[derive(Debug, Clone)]
pub enum Migrated {
    /// Written to the new target, signed: its manifest.
    Copied(Box<ManifestV2>),
    /// The new target held it already, signed (a re-run).
    Present,
    /// It failed its checks on the old target: not signed, not written.
    Skipped { reason: String },
}

/// One snapshot's outcome.
#[derive(Debug, Clone)]
pub struct SnapshotOutcome {
    pub id: String,
    pub source: String,
    pub migrated: Migrated,
}

/// What a migration did.
#[derive(Debug, Clone, Default)]
pub struct MigrateReport {
    pub snapshots: Vec<SnapshotOutcome>,
    /// Pins written on the new target.
    pub pins: usize,
}

/// Copies the format 1 repository on `old` into `new` (a format 2
/// repository opened with the owner's key set), as the module doc says;
/// `ids` read the format 1 repository. `each` is told of every snapshot
/// as it is done. Stops at the first failure that is not a snapshot's own
/// (a target unreachable or full, the local disk full): a re-run resumes.
pub async fn migrate(
    old: Arc<dyn Storage>,
    ids: &Identities,
    new: &Repository,
    opts: &MigrateOptions,
    each: &(dyn Fn(&SnapshotOutcome) + Sync),
) -> Result<MigrateReport> {
    let keys = owner_keys(new)?;
    let old = open_old(old).await?;
    let old_lock = Lock::acquire(&old, LockKind::Shared, "migrate", opts.lock_wait).await?;
    let new_lock = match Lock::acquire(new, LockKind::Shared, "migrate", opts.lock_wait).await {
        Ok(l) => l,
        Err(e) => {
            old_lock.release().await;
            return Err(e);
        }
    };
    let run = Run {
        old: &old,
        ids,
        new,
        keys,
        opts,
    };
    let result = run.all(each).await;
    new_lock.release().await;
    old_lock.release().await;
    result
}

/// The key set of `new`, which must sign as the owner: migration vouches
/// for snapshots nobody could check for authenticity.
fn owner_keys(new: &Repository) -> Result<&KeySet> {
    let keys = new.keyset().ok_or_else(|| Error::NoFormat2Keys {
        target: new.describe(),
    })?;
    match keys.require_signer("migrate")?.public() {
        SignerPublic::Owner(_) => Ok(keys),
        SignerPublic::Writer(_) => Err(Error::Key(format!(
            "migrate on {} signs as the owner: it needs the owner's identity, not a writer key",
            new.describe()
        ))),
    }
}

/// The format 1 repository on `old`, opened so that it cannot be written.
async fn open_old(old: Arc<dyn Storage>) -> Result<Repository> {
    let target = old.describe();
    match Repository::open(Arc::new(LocksOnly(old))).await {
        Err(Error::FormatNotSupportedYet { .. }) => Err(Error::NotFormat1 { target }),
        other => other,
    }
}

/// One migration's repositories and keys.
struct Run<'a> {
    old: &'a Repository,
    ids: &'a Identities,
    new: &'a Repository,
    keys: &'a KeySet,
    opts: &'a MigrateOptions,
}

impl Run<'_> {
    async fn all(&self, each: &(dyn Fn(&SnapshotOutcome) + Sync)) -> Result<MigrateReport> {
        let chosen = chosen(self.old.snapshots(self.ids).await?, self.opts.latest_only);
        let present: std::collections::HashSet<String> =
            (self.new.snapshots_v2(self.keys).await?.signed())
                .map(|m| m.id.clone())
                .collect();
        let old_pins = self.old.pinned().await?;
        let mut report = MigrateReport::default();
        for manifest in &chosen {
            let pinned = old_pins.contains(&manifest.id);
            let migrated = if present.contains(&manifest.id) {
                if pinned && crate::pins::write_pin_v2(self.new, self.keys, &manifest.id).await? {
                    report.pins += 1;
                }
                Migrated::Present
            } else {
                let m = self.one(manifest, pinned).await?;
                report.pins += usize::from(pinned && matches!(m, Migrated::Copied(_)));
                m
            };
            let outcome = SnapshotOutcome {
                id: manifest.id.clone(),
                source: manifest.source.clone(),
                migrated,
            };
            each(&outcome);
            report.snapshots.push(outcome);
        }
        Ok(report)
    }

    /// Migrates one snapshot through a scratch copy (removed on return).
    async fn one(&self, manifest: &Manifest, pinned: bool) -> Result<Migrated> {
        let scratch = tempfile::Builder::new()
            .prefix("offsite-migrate-")
            .tempdir()
            .map_err(|e| Error::io("creating a scratch directory for the migration", e))?;
        let to = scratch.path().join("snapshot");
        let staged = match self.stage(manifest, &to).await {
            Err(e) if failed_check(&e) => return Ok(skipped(e)),
            other => other?,
        };
        let spec = SourceSpec {
            name: manifest.source.clone(),
            kind: manifest.kind,
            path: to.clone(),
        };
        let mut tags = manifest.tags.clone();
        if !tags.iter().any(|t| t == MIGRATED_TAG) {
            tags.push(MIGRATED_TAG.into());
        }
        let opts = BackupOptions {
            host: manifest.host.clone(),
            tags,
            pin: pinned,
            lock_wait: self.opts.lock_wait,
            ..self.opts.backup.clone()
        };
        let origin = Origin {
            id: manifest.id.clone(),
            started: manifest.started,
            finished: Some(manifest.finished),
            replay: Some(Box::new(move |visitor: &mut dyn Visitor| {
                staged.replay(visitor)
            })),
        };
        match backup_v2_from(&[self.new], &spec, &opts, origin).await {
            Err(e) if failed_check(&e) => Ok(skipped(e)),
            Err(e) => Err(e),
            Ok(mut results) => {
                let written = results.pop().expect("one result per target")?;
                Ok(Migrated::Copied(Box::new(written.manifest)))
            }
        }
    }

    /// The format 1 restore of `manifest` to `to`, checked, and its list.
    async fn stage(&self, manifest: &Manifest, to: &Path) -> Result<RestoredCopy> {
        let opts = RestoreOptions {
            // DuckDB's check folds its .wal into the file, which would no
            // longer be the snapshot's bytes; the replay checks those.
            check_database: manifest.kind == SourceKind::Sqlite,
            ..RestoreOptions::default()
        };
        (self.old.stage(self.ids, manifest, to, &opts).await?)
            .put_in_place()
            .await?;
        Ok(RestoredCopy {
            list: self.old.chunk_list(manifest, None).await?,
            ids: self.ids.metadata_key(),
            to: to.to_path_buf(),
            kind: manifest.kind,
            sha256: manifest.sha256.clone(),
            page_size: manifest.page_size,
        })
    }
}

/// The snapshots to migrate, oldest first: all, or the newest regular
/// one of each source.
fn chosen(mut newest_first: Vec<Manifest>, latest_only: bool) -> Vec<Manifest> {
    if latest_only {
        let mut seen = std::collections::HashSet::new();
        newest_first.retain(|m| !m.is_pre_restore() && seen.insert(m.source.clone()));
    }
    newest_first.reverse();
    newest_first
}

/// Whether `e` is the snapshot's own fault (it failed a check on the old
/// target), not the targets' or this host's: then it is skipped.
fn failed_check(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. }
            | Error::Verification(_)
            | Error::UnsafeEntry { .. }
            | Error::WrongIdentity { .. }
    )
}

fn skipped(e: Error) -> Migrated {
    Migrated::Skipped {
        reason: e.to_string(),
    }
}

/// A verified format 1 restore in a scratch directory, with the list it
/// was restored from: what the replay reads.
struct RestoredCopy {
    list: ChunkList,
    ids: MetadataKey,
    to: PathBuf,
    kind: SourceKind,
    sha256: String,
    page_size: Option<u32>,
}

impl RestoredCopy {
    /// Feeds the snapshot to `visitor` in list order: each entry, and each
    /// file's chunks read from the restored copy, every chunk checked
    /// against its format 1 id and the whole against the SHA-256.
    fn replay(self, visitor: &mut dyn Visitor) -> Result<SourceInfo> {
        let mut entries = Vec::new();
        self.list.read(&self.ids, |item| {
            if let ListItem::Entry(e) = item {
                entries.push(e);
            }
            Ok(())
        })?;
        let mut feed = Feed {
            paths: restored_paths(&self.to, self.kind, &entries).into_iter(),
            file: None,
            sha: Sha256::new(),
            buf: Vec::new(),
            visitor,
        };
        self.list.read(&self.ids, |item| feed.item(item))?;
        let got = hex::encode(feed.sha.finalize());
        if got != self.sha256 {
            return Err(Error::Verification(format!(
                "SHA-256 of the data read back is {got}, the manifest says {}",
                self.sha256
            )));
        }
        Ok(SourceInfo {
            page_size: self.page_size,
            integrity: None,
        })
    }
}

/// The replay's position: the entries' paths still to come, the file
/// whose chunks are being read, the checksum so far.
struct Feed<'v> {
    paths: std::vec::IntoIter<PathBuf>,
    file: Option<(PathBuf, std::io::BufReader<std::fs::File>)>,
    sha: Sha256,
    buf: Vec<u8>,
    visitor: &'v mut dyn Visitor,
}

impl Feed<'_> {
    fn item(&mut self, item: ListItem) -> Result<()> {
        match item {
            ListItem::Entry(entry) => {
                let path = self.paths.next().ok_or_else(|| {
                    Error::Verification("the chunk list changed while it was read".into())
                })?;
                self.file = match entry {
                    Entry::File { .. } => {
                        let f = open_staged(&path, false)
                            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                        Some((path, std::io::BufReader::new(f)))
                    }
                    _ => None,
                };
                self.visitor.entry(&entry)
            }
            ListItem::Chunk(id, len) => self.chunk(id, len),
        }
    }

    fn chunk(&mut self, id: ChunkId, len: u32) -> Result<()> {
        let Some((path, file)) = self.file.as_mut() else {
            return Err(Error::Verification("a chunk before any file".into()));
        };
        self.buf.resize(len as usize, 0);
        file.read_exact(&mut self.buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if ChunkId::of(&self.buf) != id {
            return Err(Error::Verification(format!(
                "a chunk of {} read back does not match its id {id}",
                path.display()
            )));
        }
        self.sha.update(&self.buf);
        self.visitor.chunk(&self.buf)
    }
}

/// A target that can be read, and locked, but not otherwise written: the
/// old target of a migration. Every put and delete outside `locks/` fails
/// with [`ErrorKind::PermissionDenied`].
#[derive(Debug)]
pub struct LocksOnly(pub Arc<dyn Storage>);

impl LocksOnly {
    fn check(&self, key: &str) -> std::result::Result<(), StorageError> {
        if key.starts_with(LOCKS) {
            return Ok(());
        }
        Err(StorageError::new(
            ErrorKind::PermissionDenied,
            key,
            "a migration never writes to the repository it migrates from",
        ))
    }
}

#[async_trait]
impl Storage for LocksOnly {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> std::result::Result<ObjectMeta, StorageError> {
        self.check(key)?;
        self.0.put(key, body, mode).await
    }

    async fn get(&self, key: &str) -> std::result::Result<ByteStream, StorageError> {
        self.0.get(key).await
    }

    async fn head(&self, key: &str) -> std::result::Result<ObjectMeta, StorageError> {
        self.0.head(key).await
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, std::result::Result<ObjectMeta, StorageError>> {
        self.0.list(prefix)
    }

    async fn delete(&self, key: &str) -> std::result::Result<(), StorageError> {
        self.check(key)?;
        self.0.delete(key).await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}
