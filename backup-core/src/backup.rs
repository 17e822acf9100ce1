//! The backup operation: source -> chunks -> packs -> target.
//!
//! Three stages run at once so both cores stay busy and memory stays bounded:
//! a reader thread walks the source, hashes each chunk, writes the chunk list
//! and gathers chunks the repository lacks into pack buffers; encoder threads
//! compress and encrypt full packs; the async side uploads them a few at a time
//! and writes an index file every [`INDEX_EVERY`] packs. Bounded channels
//! between the stages make a slow target slow the reader down instead of
//! filling memory.
//!
//! Crash safety: objects go up in the order packs, index, list, manifest. A
//! snapshot is visible only once its manifest exists; anything an interrupted
//! run uploaded is either unreferenced (removed by prune) or indexed, and then
//! reused by the next run, which has less to upload.
//!
//! Damage: the index the backup deduplicates against prefers copies no
//! damage record names (see [`crate::repo::Damage`]), and a chunk whose
//! every copy is recorded as damaged is uploaded again, so a damaged pack
//! found by verify, a drill or a restore does not reach the next snapshot.
//!
//! What if the target fills up, or a write comes up short? Every object goes
//! through [`Repository::put_stream`], which fails unless the target stored
//! all of it (and removes what it stored short), so no index names a short
//! pack and no manifest a short list. The first failed upload stops the run:
//! uploads under way finish or fail, the packs that landed are indexed so the
//! next run reuses them, and no manifest is written. If even that index
//! cannot be stored (the target is full), those packs are deleted again: no
//! index would ever name them, and their room is what the next run needs. A
//! full target ends the backup with [`Error::TargetFull`], which says how
//! much room is left and about how much this backup needed; once there is
//! room, the next backup succeeds with nothing to repair. Killed at any
//! point, the run leaves at most unreferenced objects (and, on a local
//! target, temporary files that the next run removes).
//!
//! Format 2 (docs/design/format-v2.md, 4.4 to 4.6, 5.1) runs the same
//! pipeline; what differs is chosen once per target ([`Writing`]): chunk
//! ids are keyed with the key set's K and no SHA-256 pass is made; packs
//! carry a signed trailer (data to the current D, trailer to the current
//! M); index files are signed; the reader builds the snapshot's list state
//! instead of a list file, and the commit writes `lists/<id>/d-<parent>`
//! (the delta against the newest signed regular snapshot of the source
//! that every target holds) or `lists/<id>/full` (no parent, or its chain
//! would get long), then the signed manifest. Deduplication is only
//! against signed index files, so a forged index cannot make a snapshot
//! point at chunks that are not there. An unauthorised or removed writer
//! gets no key set at all (`KeySet::open` refuses it); a repository opened
//! without keys, or by a recipient that cannot sign, is refused before its
//! lock is taken, so it writes nothing. The parent's state is rebuilt on
//! each target (`Repository::list_state`); a target where that fails
//! writes a full list, with a warning. The order, and so the crash answer
//! above, is the same: packs, index files, list object, then manifest,
//! create-if-absent, after the lock check; a list object without its
//! manifest is unreferenced (prune removes it) and no later backup builds
//! on it, since a parent is always a snapshot whose signed manifest exists.
//!
//! A migration ([`crate::migrate`]) runs the format 2 pipeline on a
//! snapshot it replays from a format 1 repository instead of a source
//! ([`Origin`]): the snapshot keeps its id and times, and everything
//! above (order, commit point, crash and full-target answers) holds as for
//! a backup; a replay that fails stops the run before its commit.
//!
//! Never writes to the source.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use sha2::{Digest, Sha256};

use crate::chunk::{ChunkHasher, ChunkId};
use crate::codec::EncodeWriter;
use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::keyset::{KeySet, Trust};
use crate::lock::{Lock, LockKind, LockWait};
use crate::repo::format::list2::object::{encode_delta, encode_full, ListKey};
use crate::repo::format::list2::{Delta, ListState, Named};
use crate::repo::format::pack2::{self, IndexFile, PackInfo};
use crate::repo::format::{self, write_index, PackContents};
use crate::repo::{
    path, CheckedAt, Index, Manifest, ManifestV2, Repository, FORMAT_VERSION, INDEX, LISTS, PACKS,
    PRE_RESTORE_TAG, SNAPSHOTS,
};
use crate::source::{self, Entry, SourceInfo, SourceSpec, Visitor};
use crate::storage::PutMode;

/// Packs between two index files: bounds what an interrupted run must redo.
pub const INDEX_EVERY: usize = 16;

/// Live counters a caller may poll to draw progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Expected bytes to read, when known.
    pub total: AtomicU64,
    pub read: AtomicU64,
    /// Bytes of chunks read so far that the repository lacked (before
    /// compression), as in [`Manifest::new_bytes`].
    pub new_bytes: AtomicU64,
    /// Encoded bytes of the packs uploaded so far, and the chunk bytes in them.
    pub uploaded: AtomicU64,
    pub uploaded_raw: AtomicU64,
}

impl Progress {
    /// About how many bytes the whole backup stores, extrapolated from what it
    /// had read, found new and stored so far: the part not read yet is taken
    /// to be like the part read, and compressed as well as the packs stored.
    /// `None` before anything was read.
    pub fn estimated_upload(&self) -> Option<u64> {
        let read = self.read.load(Ordering::Relaxed);
        if read == 0 {
            return None;
        }
        let total = self.total.load(Ordering::Relaxed).max(read);
        let new_total = self.new_bytes.load(Ordering::Relaxed) as f64 * total as f64 / read as f64;
        let uploaded = self.uploaded.load(Ordering::Relaxed);
        let raw = self.uploaded_raw.load(Ordering::Relaxed);
        let ratio = if raw > 0 {
            uploaded as f64 / raw as f64
        } else {
            1.0
        };
        Some(((new_total * ratio) as u64).max(uploaded))
    }
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub host: String,
    pub tags: Vec<String>,
    /// Raw bytes of new chunks per pack.
    pub pack_size: usize,
    pub compression_level: i32,
    pub encoder_threads: usize,
    pub upload_concurrency: usize,
    pub progress: Arc<Progress>,
    /// Pin the snapshot (see [`crate::pins`]) before the backup's lock is released.
    pub pin: bool,
    /// How long to wait for a running prune (see [`crate::lock`]).
    pub lock_wait: LockWait,
    /// Notified once the source has been read (or its reading failed), while
    /// uploads may still run: source `after` hooks restart an application
    /// then, not after the upload.
    pub source_read: Option<Arc<tokio::sync::Notify>>,
    /// How long a DuckDB source waits for its writer to close the database.
    pub lock_timeout: Duration,
    /// SQLite sources on format 2 targets (`database_check = "backup"`):
    /// run `PRAGMA integrity_check` on the state read, in its read
    /// transaction, and record an ok result with the snapshot
    /// ([`crate::repo::CheckedAt::Backup`]) so restores need not run it.
    pub check_at_backup: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            host: hostname(),
            tags: Vec::new(),
            pack_size: 4 << 20,
            compression_level: 3,
            encoder_threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(4),
            upload_concurrency: 4,
            progress: Arc::new(Progress::default()),
            pin: false,
            lock_wait: LockWait::default(),
            source_read: None,
            lock_timeout: source::DEFAULT_LOCK_TIMEOUT,
            check_at_backup: false,
        }
    }
}

/// This machine's name, for manifests.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// What a backup stored on one target: its manifest ([`Manifest`] for
/// format 1, [`ManifestV2`] from [`backup_many_v2`]).
#[derive(Debug, Clone)]
pub struct BackupSummary<M = Manifest> {
    pub manifest: M,
    /// Requests made to the target (reads of the index included).
    pub requests: u64,
    pub duration: Duration,
}

/// The format-specific steps of one target's run, chosen once.
#[derive(Clone, Copy)]
enum Writing<'a> {
    V1(&'a Keys),
    V2(&'a KeySet),
}

impl Writing<'_> {
    /// How chunk ids are computed (the same for every target of a run).
    fn hasher(&self) -> ChunkHasher {
        match self {
            Writing::V1(_) => ChunkHasher::Plain,
            Writing::V2(ks) => ChunkHasher::Keyed(ks.chunk_key()),
        }
    }

    /// How the encoders seal packs.
    fn pack_seal(&self) -> Result<PackSeal> {
        Ok(match self {
            Writing::V1(keys) => PackSeal::V1(keys.data_recipients_owned()),
            Writing::V2(ks) => PackSeal::V2 {
                signer: Box::new(ks.require_signer("backup")?.clone()),
                data: ks.data_recipient()?,
                metadata: ks.metadata_recipient(),
            },
        })
    }
}

/// What one run commits per target.
enum Written {
    V1(Manifest),
    V2(ManifestV2),
}

/// How packs are sealed: format 1 to the data recipients; format 2 to the
/// current D with a trailer signed by `signer` and sealed to M.
enum PackSeal {
    V1(Vec<age::x25519::Recipient>),
    V2 {
        // Boxed: a signer is large beside format 1's list of recipients.
        signer: Box<crate::sign::Signer>,
        data: age::x25519::Recipient,
        metadata: age::x25519::Recipient,
    },
}

/// A format 2 error while encoding an object this run writes: the
/// format's error names the object.
pub(crate) fn encoding(e: impl std::fmt::Display) -> Error {
    Error::io("format 2", std::io::Error::other(e.to_string()))
}

struct PackJob {
    data: Vec<u8>,
    chunks: Vec<(ChunkId, u32, u32)>,
}

struct EncodedPack {
    key: String,
    data: Bytes,
    chunks: Vec<(ChunkId, u32, u32)>,
}

/// What the reader thread returns: the one snapshot every target stores.
struct ReadResult {
    list: ReadList,
    size: u64,
    files: u64,
    chunks: u64,
    /// What each target lacked, in the order of the targets.
    new_bytes: Vec<u64>,
    page_size: Option<u32>,
    /// What the backup's own integrity_check said (empty: ok), if it ran.
    integrity: Option<Vec<String>>,
}

/// The snapshot's list as the reader made it.
enum ReadList {
    /// Format 1: the encoded list file and the SHA-256 of all data.
    V1 {
        file: Arc<std::fs::File>,
        sha256: String,
    },
    V2(ListState),
}

/// A target ready to take the snapshot: locked, with its index loaded.
struct Prepared<'a> {
    writing: Writing<'a>,
    /// Format 2: the parent candidates and the list objects.
    v2: Option<Lineage>,
    seal: Arc<PackSeal>,
    lock: Lock,
    index: Arc<Index>,
    /// This target's part: what it lacked and what was uploaded to it.
    progress: Arc<Progress>,
}

/// Where a run's snapshot comes from and what it is called: a backup
/// reads its source now ([`Origin::now`]); a migration
/// ([`crate::migrate`]) replays a snapshot read from elsewhere, keeping
/// its id and times.
pub(crate) struct Origin {
    pub id: String,
    pub started: chrono::DateTime<Utc>,
    /// `None`: when the reading ends.
    pub finished: Option<chrono::DateTime<Utc>>,
    /// `None`: the source itself ([`source::read_with`]).
    pub replay: Option<Replay>,
}

/// Feeds a snapshot's entries and chunks to the writer, as a source does;
/// runs on a blocking thread. An error stops the run before any commit.
pub(crate) type Replay = Box<dyn FnOnce(&mut dyn Visitor) -> Result<SourceInfo> + Send>;

impl Origin {
    /// A new snapshot of the source, taken now.
    fn now() -> Origin {
        let started = Utc::now();
        Origin {
            id: format!(
                "{}-{:08x}",
                started.format("%Y%m%dT%H%M%SZ"),
                rand::random::<u32>()
            ),
            started,
            finished: None,
            replay: None,
        }
    }

    /// A snapshot of the state `replay` feeds, which held at `at` (the
    /// replicator's base, read in its held transaction).
    pub(crate) fn replaying(at: chrono::DateTime<Utc>, replay: Replay) -> Origin {
        Origin {
            id: format!(
                "{}-{:08x}",
                at.format("%Y%m%dT%H%M%SZ"),
                rand::random::<u32>()
            ),
            started: at,
            finished: None,
            replay: Some(replay),
        }
    }
}

/// What the targets of one run share.
struct Snapshot<'a> {
    id: &'a str,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
    spec: &'a SourceSpec,
    opts: &'a BackupOptions,
    /// How the list object is put: create-if-absent for a new id; a
    /// replayed snapshot's id is not new, and a list object an interrupted
    /// run left under it (no manifest names it, so nothing uses it) is
    /// replaced. Its key names the parent, so the same key means the same
    /// list.
    list_mode: PutMode,
}

/// Backs up one source to one repository (see [`backup_many`]).
pub(crate) async fn backup(
    repo: &Repository,
    keys: &Keys,
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> Result<BackupSummary> {
    backup_many(&[repo], keys, spec, opts)
        .await?
        .pop()
        .expect("one result per target")
}

/// Backs up one source to every repository in `repos` in one run: the
/// source is read once and every target stores the same snapshot (same id,
/// chunk list, size and checksum; only what each had to upload differs).
/// Each target holds a shared lock from before its index is loaded until
/// its manifest (and pin) are written, so that no prune can delete what this
/// backup deduplicates against, and checks that it still holds it right
/// before the manifest is written.
///
/// Targets are independent: one that cannot be locked, read or written
/// fails its own result only, and the others go on. Each target has its own
/// bounded pipeline (a pack queue, encoders, a few uploads in flight), so a
/// slow target holds the reader back only once its queue is full; memory is
/// bounded by targets x (queue + uploads in flight) x pack size.
///
/// Returns one result per repository, in order; `Err` when the source
/// itself could not be read (then no target has a new snapshot).
pub async fn backup_many(
    repos: &[&Repository],
    keys: &Keys,
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> Result<Vec<Result<BackupSummary>>> {
    let writings = repos.iter().map(|_| Ok(Writing::V1(keys))).collect();
    let results = run(repos, writings, spec, opts, Origin::now()).await?;
    Ok(summaries(results, |w| match w {
        Written::V1(m) => m,
        Written::V2(_) => unreachable!("a format 1 run writes format 1 manifests"),
    }))
}

/// The public summaries of a run whose manifests are all of one format.
fn summaries<M>(
    results: Vec<Result<BackupSummary<Written>>>,
    pick: fn(Written) -> M,
) -> Vec<Result<BackupSummary<M>>> {
    (results.into_iter())
        .map(|r| {
            r.map(|s| BackupSummary {
                manifest: pick(s.manifest),
                requests: s.requests,
                duration: s.duration,
            })
        })
        .collect()
}

/// [`backup_many`] for format 2 repositories, each opened with its key
/// set ([`Repository::open_with`]): the snapshot is signed by this host's
/// writer key (or the owner's), its list is a delta against the parent
/// where one is usable. The targets must share one key set (one chunk-id
/// key); a target of another key set, or opened without keys, fails its
/// own result.
pub async fn backup_many_v2(
    repos: &[&Repository],
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> Result<Vec<Result<BackupSummary<ManifestV2>>>> {
    backup_v2_from(repos, spec, opts, Origin::now()).await
}

/// [`backup_many_v2`] of the snapshot `origin` names and feeds (`spec`
/// gives its source's name and kind).
pub(crate) async fn backup_v2_from(
    repos: &[&Repository],
    spec: &SourceSpec,
    opts: &BackupOptions,
    origin: Origin,
) -> Result<Vec<Result<BackupSummary<ManifestV2>>>> {
    let first = repos.iter().find_map(|r| r.keyset());
    let writings = repos
        .iter()
        .map(|repo| {
            let ks = repo.keyset().ok_or_else(|| Error::NoFormat2Keys {
                target: repo.describe(),
            })?;
            match first {
                Some(f) if f.chunk_key() != ks.chunk_key() => Err(Error::Key(format!(
                    "{} belongs to key set {}, another than the run's first target ({}): back \
                     it up in a run of its own",
                    repo.describe(),
                    ks.id(),
                    f.id()
                ))),
                _ => Ok(Writing::V2(ks)),
            }
        })
        .collect();
    let results = run(repos, writings, spec, opts, origin).await?;
    Ok(summaries(results, |w| match w {
        Written::V2(m) => m,
        Written::V1(_) => unreachable!("a format 2 run writes format 2 manifests"),
    }))
}

/// The run itself, for either format (`writings`: one per repository).
async fn run(
    repos: &[&Repository],
    writings: Vec<Result<Writing<'_>>>,
    spec: &SourceSpec,
    opts: &BackupOptions,
    origin: Origin,
) -> Result<Vec<Result<BackupSummary<Written>>>> {
    let clock = Instant::now();
    if let Ok(meta) = std::fs::metadata(&spec.path) {
        if meta.is_file() {
            opts.progress.total.store(meta.len(), Ordering::Relaxed);
        }
    }
    let requests_before: Vec<u64> = repos.iter().map(|r| r.requests()).collect();
    let mut prepared = futures::future::join_all(
        repos
            .iter()
            .zip(writings)
            .map(|(repo, w)| async move { prepare(repo, w?, spec, opts).await }),
    )
    .await;
    choose_parent(repos, &mut prepared).await;
    let live: Vec<(&Repository, &Prepared)> = repos
        .iter()
        .zip(&prepared)
        .filter_map(|(repo, p)| Some((*repo, p.as_ref().ok()?)))
        .collect();
    let (committed, read_failure) = read_and_commit(&live, origin, spec, opts).await;
    let mut committed = committed.into_iter();
    let mut results = Vec::with_capacity(repos.len());
    for ((repo, p), before) in repos.iter().zip(prepared).zip(requests_before) {
        results.push(match p {
            Err(e) => Err(with_estimate(e, &opts.progress)),
            Ok(p) => {
                p.lock.release().await;
                match committed.next() {
                    Some(r) => r
                        .map(|manifest| BackupSummary {
                            manifest,
                            requests: repo.requests() - before,
                            duration: clock.elapsed(),
                        })
                        .map_err(|e| with_estimate(e, &p.progress)),
                    None => Err(Error::io("backup", std::io::Error::other("not committed"))),
                }
            }
        });
    }
    match read_failure {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// Reads the source into every live target's pipeline and commits on each
/// whose uploads all landed: one result per live target, or none and the
/// reader's error when the source could not be read.
async fn read_and_commit(
    live: &[(&Repository, &Prepared<'_>)],
    origin: Origin,
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> (Vec<Result<Written>>, Option<Error>) {
    if live.is_empty() {
        return (Vec::new(), None);
    }
    let list_mode = match origin.replay {
        Some(_) => PutMode::Overwrite,
        None => PutMode::Create,
    };
    let (read, uploads) = run_pipelines(live, spec, opts, origin.replay).await;
    let snapshot = Snapshot {
        id: &origin.id,
        started: origin.started,
        finished: origin.finished.unwrap_or_else(Utc::now),
        spec,
        opts,
        list_mode,
    };
    match read {
        // The reader stopped because every upload had failed: those
        // failures are what happened.
        Err(e) if uploads.iter().any(|u| u.is_ok()) => (Vec::new(), Some(e)),
        read => {
            let read = read.as_ref().ok();
            let snapshot = &snapshot;
            let committed = futures::future::join_all(live.iter().zip(uploads).enumerate().map(
                |(n, ((repo, p), uploaded))| async move {
                    let uploaded = uploaded?;
                    let read = read.expect("checked: the source was read");
                    commit(repo, p, read, n, uploaded, snapshot).await
                },
            ))
            .await;
            (committed, None)
        }
    }
}

/// Adds to a full-target error about how much the backup would have stored.
fn with_estimate(e: Error, progress: &Progress) -> Error {
    match e {
        Error::TargetFull {
            target,
            free,
            needed: None,
            source,
        } => Error::TargetFull {
            target,
            free,
            needed: progress.estimated_upload(),
            source,
        },
        e => e,
    }
}

/// A format 2 target's history as the backup needs it: the signed
/// regular snapshots of the source (newest first), the list objects
/// (one listing of `lists/`), and the parent chosen among them.
struct Lineage {
    candidates: Vec<ManifestV2>,
    lists: Vec<path::ListObject>,
    parent: Option<(ManifestV2, Arc<ListState>)>,
}

/// Locks a target and loads its index (and, for format 2, its lineage).
async fn prepare<'a>(
    repo: &Repository,
    writing: Writing<'a>,
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> Result<Prepared<'a>> {
    match writing {
        Writing::V1(keys) => repo.check_keys(keys)?,
        // Refused before the lock: a host that cannot sign stores nothing.
        Writing::V2(ks) => drop(ks.require_signer("backup")?),
    }
    let seal = Arc::new(writing.pack_seal()?);
    let lock = Lock::acquire(repo, LockKind::Shared, "backup", opts.lock_wait).await?;
    let loaded = match writing {
        Writing::V1(keys) => repo
            .load_index(&keys.metadata_key())
            .await
            .map(|i| (i, None)),
        Writing::V2(ks) => load_v2(repo, ks, spec).await,
    };
    match loaded {
        Ok((index, v2)) => {
            tracing::debug!(
                target = %repo.describe(),
                chunks = index.chunks.len(),
                packs = index.packs.len(),
                "index loaded"
            );
            let progress = Arc::new(Progress::default());
            let total = opts.progress.total.load(Ordering::Relaxed);
            progress.total.store(total, Ordering::Relaxed);
            Ok(Prepared {
                writing,
                seal,
                v2,
                lock,
                index: Arc::new(index),
                progress,
            })
        }
        Err(e) => {
            lock.release().await;
            Err(e)
        }
    }
}

/// A format 2 target's index (signed index files only) and lineage.
async fn load_v2(
    repo: &Repository,
    ks: &KeySet,
    spec: &SourceSpec,
) -> Result<(Index, Option<Lineage>)> {
    let index = repo.index_v2(ks).await?;
    for (key, reason) in &index.rejected {
        tracing::warn!(
            "{}: index file {key} is not used for deduplication: {reason}",
            repo.describe()
        );
    }
    let snapshots = repo.snapshots_v2(ks).await?;
    let candidates = snapshots
        .signed()
        .filter(|m| m.source == spec.name && !m.tags.iter().any(|t| t == PRE_RESTORE_TAG))
        .cloned()
        .collect();
    let lists = (repo.list(LISTS).await?.iter())
        .filter_map(|o| path::ListObject::from_key(&o.key, o.size))
        .collect();
    let lineage = Lineage {
        candidates,
        lists,
        parent: None,
    };
    Ok((index.index, Some(lineage)))
}

/// Format 2: picks the parent, the newest signed regular snapshot of the
/// source that every live target holds (same id and `list_blake3`), and
/// rebuilds its state on each target. A target that cannot rebuild it
/// writes a full list.
async fn choose_parent(repos: &[&Repository], prepared: &mut [Result<Prepared<'_>>]) {
    let lineages: Vec<&Lineage> = (prepared.iter())
        .filter_map(|p| p.as_ref().ok()?.v2.as_ref())
        .collect();
    let Some(first) = lineages.first() else {
        return;
    };
    let held = |m: &ManifestV2| {
        (lineages.iter())
            .all(|l| (l.candidates.iter()).any(|c| c.id == m.id && c.list_blake3 == m.list_blake3))
    };
    let Some(parent) = first.candidates.iter().find(|m| held(m)).cloned() else {
        return;
    };
    for (repo, p) in repos.iter().zip(prepared.iter_mut()) {
        let Ok(Prepared {
            writing: Writing::V2(ks),
            v2: Some(lineage),
            ..
        }) = p
        else {
            continue;
        };
        match repo.list_state(ks, &parent).await {
            Ok(state) => lineage.parent = Some((parent.clone(), Arc::new(state))),
            Err(e) => tracing::warn!(
                "{}: the list of snapshot {} cannot be rebuilt ({e}): this backup writes a full list",
                repo.describe(),
                parent.id
            ),
        }
    }
}

/// Reads the source once, feeding one pipeline per target, and uploads to
/// all of them at once. Returns what was read and, per target, the bytes
/// uploaded (packs and index files).
async fn run_pipelines(
    live: &[(&Repository, &Prepared<'_>)],
    spec: &SourceSpec,
    opts: &BackupOptions,
    replay: Option<Replay>,
) -> (Result<ReadResult>, Vec<Result<u64>>) {
    let mut sinks = Vec::new();
    let mut queues = Vec::new();
    let mut encoders = Vec::new();
    for (_, p) in live {
        let (pack_tx, enc_rx, threads) = start_encoders(p.seal.clone(), opts);
        sinks.push(Sink::new(
            p.index.clone(),
            p.progress.clone(),
            pack_tx,
            opts.pack_size,
        ));
        queues.push(enc_rx);
        encoders.extend(threads);
    }
    let reader = {
        let spec = spec.clone();
        let progress = opts.progress.clone();
        let pack_size = opts.pack_size;
        let list = match live[0].1.writing {
            Writing::V1(keys) => ListKind::V1(keys.metadata_recipients()),
            Writing::V2(_) => ListKind::V2,
        };
        let hasher = live[0].1.writing.hasher();
        let source_read = opts.source_read.clone();
        // Only format 2 can record the check; format 1 groups never run it.
        let check = opts.check_at_backup && matches!(live[0].1.writing, Writing::V2(_));
        let lock_timeout = opts.lock_timeout;
        tokio::task::spawn_blocking(move || {
            let result = read_source(
                (&spec, replay),
                (lock_timeout, check),
                sinks,
                pack_size,
                (hasher, list),
                &progress,
            );
            if let Some(n) = source_read {
                n.notify_one();
            }
            result
        })
    };
    // Each uploader drops its queue when it stops, so its encoders hang up
    // and the reader stops feeding that target.
    let uploads = futures::future::join_all(live.iter().zip(queues).map(
        |((repo, p), mut rx)| async move {
            upload_packs(repo, p.writing, &mut rx, opts, &p.progress).await
        },
    ))
    .await;
    let read = reader
        .await
        .map_err(|e| Error::io("reader thread", std::io::Error::other(e.to_string())))
        .and_then(|r| r);
    for e in encoders {
        let _ = e.join();
    }
    (read, uploads)
}

/// Encoder threads of one target: compress + encrypt whole packs in
/// parallel, from a queue of one pack to a queue of two encoded ones.
fn start_encoders(
    seal: Arc<PackSeal>,
    opts: &BackupOptions,
) -> (
    mpsc::SyncSender<PackJob>,
    tokio::sync::mpsc::Receiver<Result<EncodedPack>>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let (pack_tx, pack_rx) = mpsc::sync_channel::<PackJob>(1);
    let (enc_tx, enc_rx) = tokio::sync::mpsc::channel::<Result<EncodedPack>>(2);
    let pack_rx = Arc::new(Mutex::new(pack_rx));
    let threads = (0..opts.encoder_threads.max(1))
        .map(|_| {
            let rx = pack_rx.clone();
            let tx = enc_tx.clone();
            let seal = seal.clone();
            let level = opts.compression_level;
            std::thread::spawn(move || encode_packs(&rx, &tx, &seal, level))
        })
        .collect();
    // Only the encoders hold the queue's receiver: when they stop (the
    // uploader gave up), the reader's next send to this target fails.
    (pack_tx, enc_rx, threads)
}

fn encode_packs(
    rx: &Mutex<mpsc::Receiver<PackJob>>,
    tx: &tokio::sync::mpsc::Sender<Result<EncodedPack>>,
    seal: &PackSeal,
    level: i32,
) {
    let mut encoder = crate::codec::Encoder::new(level);
    loop {
        let job = match rx.lock().expect("encoder queue").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let encoded = match &mut encoder {
            Ok(encoder) => encode_pack(encoder, seal, job),
            Err(e) => Err(Error::io(
                "encoding a pack",
                std::io::Error::new(e.kind(), e.to_string()),
            )),
        };
        if tx.blocking_send(encoded).is_err() {
            return; // the uploader gave up; stop quietly
        }
    }
}

/// One pack, under a fresh random key, sealed as its format says.
fn encode_pack(
    encoder: &mut crate::codec::Encoder,
    seal: &PackSeal,
    job: PackJob,
) -> Result<EncodedPack> {
    let name = hex::encode(rand::random::<[u8; 32]>());
    let key = format!("{PACKS}{}/{name}", &name[..2]);
    let data = match seal {
        PackSeal::V1(recipients) => {
            let refs: Vec<&dyn age::Recipient> = recipients
                .iter()
                .map(|r| r as &dyn age::Recipient)
                .collect();
            encoder
                .encode(&job.data, &refs)
                .map_err(|e| Error::io("encoding a pack", e))?
        }
        PackSeal::V2 {
            signer,
            data,
            metadata,
        } => {
            let info = pack_info(&key, &job.chunks)?;
            pack2::encode_pack(encoder, &job.data, &info, &key, signer, data, metadata)
                .map_err(encoding)?
        }
    };
    Ok(EncodedPack {
        key,
        data: Bytes::from(data),
        chunks: job.chunks,
    })
}

/// The packinfo of a pack the sink filled (its chunks are contiguous).
fn pack_info(key: &str, chunks: &[(ChunkId, u32, u32)]) -> Result<PackInfo> {
    let chunks: Vec<(ChunkId, u32)> = chunks.iter().map(|&(id, _, len)| (id, len)).collect();
    PackInfo::from_chunks(key, &chunks).map_err(encoding)
}

/// Stores the chunk list and the manifest on one target whose packs are
/// all up: the commit point, once the target's lock is known to be held.
async fn commit(
    repo: &Repository,
    prepared: &Prepared<'_>,
    read: &ReadResult,
    n: usize,
    uploaded: u64,
    snap: &Snapshot<'_>,
) -> Result<Written> {
    match (prepared.writing, &read.list) {
        (Writing::V1(keys), ReadList::V1 { file, sha256 }) => {
            let list = (file.clone(), sha256.as_str());
            commit_v1(repo, keys, prepared, read, list, n, uploaded, snap)
                .await
                .map(Written::V1)
        }
        (Writing::V2(ks), ReadList::V2(state)) => {
            commit_v2(repo, ks, prepared, read, state, n, uploaded, snap)
                .await
                .map(Written::V2)
        }
        _ => unreachable!("a run reads the list of the format it writes"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn commit_v1(
    repo: &Repository,
    keys: &Keys,
    prepared: &Prepared<'_>,
    read: &ReadResult,
    (file, sha256): (Arc<std::fs::File>, &str),
    n: usize,
    uploaded: u64,
    snap: &Snapshot<'_>,
) -> Result<Manifest> {
    let list_key = format!("{LISTS}{}", snap.id);
    let list_len = put_file(repo, &list_key, file).await?;
    let manifest = Manifest {
        format: "offsite-snapshot".into(),
        version: FORMAT_VERSION,
        id: snap.id.to_string(),
        source: snap.spec.name.clone(),
        kind: snap.spec.kind,
        host: snap.opts.host.clone(),
        started: snap.started,
        finished: snap.finished,
        size: read.size,
        files: read.files,
        chunks: read.chunks,
        new_bytes: read.new_bytes[n],
        uploaded_bytes: uploaded + list_len,
        sha256: sha256.to_string(),
        list: list_key.clone(),
        page_size: read.page_size,
        tags: snap.opts.tags.clone(),
        tool: format!("offsite {}", env!("CARGO_PKG_VERSION")),
        trust: None,
    };
    let body = Repository::encode_metadata(
        keys,
        &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
    )?;
    let key = format!("{SNAPSHOTS}{}", snap.id);
    put_manifest(repo, &prepared.lock, &key, body, &list_key).await?;
    if snap.opts.pin {
        crate::pins::write_pin(repo, keys, snap.id).await?;
    }
    Ok(manifest)
}

/// The commit point on one target, either format: the manifest `key`,
/// create-if-absent, once `lock` is known to be still held (`offsite unlock
/// --all` under this run, or a lock gone stale: a prune may be deleting
/// what this snapshot needs, so it must not appear). On a full target the
/// list object `list_key` is removed again: nothing will ever refer to it,
/// and its room is what the next run needs.
async fn put_manifest(
    repo: &Repository,
    lock: &Lock,
    key: &str,
    body: Bytes,
    list_key: &str,
) -> Result<()> {
    lock.ensure_held().await?;
    let stored = repo.put_bytes(key, body, PutMode::Create).await;
    if let Err(Error::TargetFull { .. }) = &stored {
        let _ = repo.delete(list_key).await;
    }
    stored
}

/// Format 2's commit: the list object (a delta against the parent, or the
/// full list), then the signed manifest, create-if-absent, once the lock
/// is known to be held.
#[allow(clippy::too_many_arguments)]
async fn commit_v2(
    repo: &Repository,
    ks: &KeySet,
    prepared: &Prepared<'_>,
    read: &ReadResult,
    state: &ListState,
    n: usize,
    uploaded: u64,
    snap: &Snapshot<'_>,
) -> Result<ManifestV2> {
    let signer = ks.require_signer("backup")?;
    let metadata = ks.metadata_recipient();
    let lineage = prepared
        .v2
        .as_ref()
        .expect("a format 2 target has a lineage");
    let (list_key, body, parent) = list_object(repo, lineage, snap.id, state, signer, &metadata)?;
    let list_len = body.len() as u64;
    repo.put_bytes(&list_key, Bytes::from(body), snap.list_mode)
        .await?;
    let Trust::Signed { writer } = ks.trust(signer.public(), snap.finished) else {
        return Err(Error::Key(format!(
            "{}: this host's signer is not trusted by the keyring",
            repo.describe()
        )));
    };
    let manifest = ManifestV2 {
        id: snap.id.to_string(),
        source: snap.spec.name.clone(),
        kind: snap.spec.kind,
        host: snap.opts.host.clone(),
        writer,
        started: snap.started,
        finished: snap.finished,
        size: read.size,
        files: read.files,
        chunks: read.chunks,
        new_bytes: read.new_bytes[n],
        uploaded_bytes: uploaded + list_len,
        list_blake3: state.list_blake3(),
        parent,
        generation: ks.generation(),
        keyring: u32::try_from(ks.keyring().serial()).map_err(encoding)?,
        page_size: read.page_size,
        tags: snap.opts.tags.clone(),
        tool: format!("offsite {}", env!("CARGO_PKG_VERSION")),
    };
    let body = manifest.encode(signer, &metadata).map_err(encoding)?;
    put_manifest(
        repo,
        &prepared.lock,
        &manifest.key(),
        Bytes::from(body),
        &list_key,
    )
    .await?;
    if snap.opts.pin {
        crate::pins::write_pin_v2(repo, ks, snap.id).await?;
    }
    record_backup_check(repo, ks, &manifest, read.integrity.as_deref()).await;
    Ok(manifest)
}

/// After the commit, the record of the backup's own integrity_check (design
/// 5.2). The snapshot is stored whatever the check said (it is what the
/// database holds); a failed check is a warning and leaves no record, so
/// every restore of it runs the check and fails it. A record that cannot
/// be stored costs restores their check, not the backup.
async fn record_backup_check(
    repo: &Repository,
    ks: &KeySet,
    manifest: &ManifestV2,
    integrity: Option<&[String]>,
) {
    match integrity {
        None => {}
        Some([]) => {
            if let Err(e) = repo.record_check(ks, manifest, CheckedAt::Backup).await {
                tracing::warn!(
                    "{}: integrity_check ok, but it could not be recorded: {e}",
                    manifest.id
                );
            }
        }
        Some(problems) => tracing::warn!(
            "source {}: PRAGMA integrity_check of the state backed up as {} failed: {}; \
             the snapshot is stored as read, with no check record",
            manifest.source,
            manifest.id,
            problems
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The list object of snapshot `id` on one target: `(key, encoded, parent)`.
/// A delta against the parent when there is one and its path plus this
/// delta is not long (`repo::path`); else the full list, with a warning
/// when it is the chain's length that made it full.
fn list_object(
    repo: &Repository,
    lineage: &Lineage,
    id: &str,
    state: &ListState,
    signer: &crate::sign::Signer,
    metadata: &age::x25519::Recipient,
) -> Result<(String, Vec<u8>, Option<String>)> {
    if let Some((parent, parent_state)) = &lineage.parent {
        let from = Named {
            snapshot: parent.id.clone(),
            list_blake3: parent.list_blake3,
        };
        let delta = Delta::diff(from, parent_state, id, state);
        let body = encode_delta(&delta, signer, metadata).map_err(encoding)?;
        let plan = path::plan(&lineage.lists, &parent.id, &Default::default());
        match plan {
            Some(p)
                if !path::is_long(
                    p.objects.len() + 1,
                    p.bytes + body.len() as u64,
                    state.chunk_count(),
                ) =>
            {
                let key = ListKey::Delta {
                    to: id.to_string(),
                    from: parent.id.clone(),
                };
                return Ok((key.key(), body, Some(parent.id.clone())));
            }
            Some(p) if p.objects.len() + 1 > path::MAX_OBJECTS => tracing::warn!(
                "{}: wrote a full list (the chain since the last one is {} deep): schedule \
                 `offsite prune` to keep backups incremental",
                repo.describe(),
                p.objects.len()
            ),
            // Long by bytes: the full list is about as small as the chain.
            Some(_) => {}
            None => tracing::warn!(
                "{}: no short path of list objects leads to snapshot {}: wrote a full list",
                repo.describe(),
                parent.id
            ),
        }
    }
    let key = ListKey::Full {
        snapshot: id.to_string(),
    };
    let body = encode_full(id, state, signer, metadata).map_err(encoding)?;
    Ok((key.key(), body, None))
}

/// Uploads encoded packs as they come, writing an index file every
/// [`INDEX_EVERY`] packs and one for the rest at the end (also on failure, so
/// the next run can reuse what did land). Returns bytes uploaded.
///
/// Every put under way is polled all the time: an index file is written
/// beside the pack uploads, never while they wait. A put left unpolled can
/// hold what the next put needs (a storage's lock, a connection, a B2
/// authorization being renewed), and waiting for it then is a deadlock.
async fn upload_packs(
    repo: &Repository,
    writing: Writing<'_>,
    rx: &mut tokio::sync::mpsc::Receiver<Result<EncodedPack>>,
    opts: &BackupOptions,
    target_progress: &Arc<Progress>,
) -> Result<u64> {
    let mut in_flight = FuturesUnordered::new();
    // At most one index file at a time, so they name the packs in order.
    let mut indexing = FuturesUnordered::new();
    let mut state = Uploads::default();
    let mut receiving = true;
    loop {
        if indexing.is_empty() {
            if let Some(batch) = state.batch_due() {
                indexing.push(index_batch(repo, writing, batch));
            }
        }
        tokio::select! {
            next = rx.recv(), if receiving && in_flight.len() < opts.upload_concurrency && state.failure.is_none() => {
                match next {
                    Some(Ok(pack)) => {
                        let progress = [opts.progress.clone(), target_progress.clone()];
                        in_flight.push(upload_pack(repo, pack, progress));
                    }
                    Some(Err(e)) => state.failure = Some(e),
                    None => receiving = false,
                }
            }
            Some(done) = in_flight.next(), if !in_flight.is_empty() => state.landed(done),
            Some((batch, done)) = indexing.next(), if !indexing.is_empty() => state.indexed(batch, done),
            else => break,
        }
        if state.failure.is_some() && in_flight.is_empty() && indexing.is_empty() {
            break;
        }
    }
    state.finish(repo, writing).await
}

/// Writes the index file naming `batch`; hands the batch back with the outcome.
async fn index_batch(
    repo: &Repository,
    writing: Writing<'_>,
    batch: Vec<PackContents>,
) -> (Vec<PackContents>, Result<u64>) {
    let done = write_index_file(repo, writing, &batch).await;
    (batch, done)
}

/// A pack that is up: its key, its chunks (id, offset, length) and size.
type Landed = (String, Vec<(ChunkId, u32, u32)>, u64);

/// Puts one pack and counts it.
async fn upload_pack(
    repo: &Repository,
    pack: EncodedPack,
    progress: [Arc<Progress>; 2],
) -> Result<Landed> {
    let len = pack.data.len() as u64;
    repo.put_bytes(&pack.key, pack.data, PutMode::Create)
        .await?;
    let raw: u64 = pack.chunks.iter().map(|c| u64::from(c.2)).sum();
    for p in &progress {
        p.uploaded.fetch_add(len, Ordering::Relaxed);
        p.uploaded_raw.fetch_add(raw, Ordering::Relaxed);
    }
    Ok((pack.key, pack.chunks, len))
}

/// One target's uploads so far: packs up but not yet in an index file, and
/// the first failure (after which no new pack is taken).
#[derive(Default)]
struct Uploads {
    pending: Vec<PackContents>,
    uploaded: u64,
    failure: Option<Error>,
    /// Whether an index naming `pending` failed in a way that leaves open
    /// whether it was stored after all (an answer lost after retries).
    index_unsure: bool,
}

impl Uploads {
    /// A pack upload ended: on success it waits for an index file.
    fn landed(&mut self, done: Result<Landed>) {
        match done {
            Ok((key, chunks, len)) => {
                self.uploaded += len;
                self.pending.push((key, chunks));
            }
            Err(e) => self.failure = Some(e),
        }
    }

    /// The packs an index file is due for: every [`INDEX_EVERY`] packs,
    /// until something failed (then the end indexes the rest).
    fn batch_due(&mut self) -> Option<Vec<PackContents>> {
        (self.failure.is_none() && self.pending.len() >= INDEX_EVERY)
            .then(|| std::mem::take(&mut self.pending))
    }

    /// An index file was written, or not: then no new pack is taken, the
    /// uploads under way finish, and the end tries once more with `batch`.
    fn indexed(&mut self, batch: Vec<PackContents>, done: Result<u64>) {
        match done {
            Ok(n) => self.uploaded += n,
            Err(e) => {
                self.index_unsure |= !matches!(e, Error::TargetFull { .. });
                self.failure = Some(e);
                self.pending.splice(0..0, batch);
            }
        }
    }

    /// Indexes what landed (also after a failure, so the next run can reuse
    /// it); returns the bytes uploaded or the first failure.
    async fn finish(mut self, repo: &Repository, writing: Writing<'_>) -> Result<u64> {
        if !self.pending.is_empty() {
            match write_index_file(repo, writing, &self.pending).await {
                Ok(n) => self.uploaded += n,
                Err(e) => {
                    if matches!(e, Error::TargetFull { .. }) && !self.index_unsure {
                        remove_unindexed(repo, &self.pending).await;
                    }
                    self.failure.get_or_insert(e);
                }
            }
        }
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.uploaded),
        }
    }
}

/// Deletes packs of this run that no index file will name because the
/// target is full: nothing could ever use them, and their room is what the
/// next run needs. A failed put stores nothing (the storage contract), so
/// the index that would have named them surely does not exist.
async fn remove_unindexed(repo: &Repository, packs: &[PackContents]) {
    for (key, _) in packs {
        if let Err(e) = repo.delete(key).await {
            tracing::warn!(key, error = %e, "could not remove a pack no index names; prune will");
        }
    }
}

/// A format 2 index file naming `packs`, signed with `ks`'s signer: what
/// prune writes for the live packs of the index files it deletes.
pub(crate) async fn write_index_v2(
    repo: &Repository,
    ks: &KeySet,
    packs: &[PackContents],
) -> Result<u64> {
    write_index_file(repo, Writing::V2(ks), packs).await
}

/// Writes one index file naming `packs` (format 2: signed, sealed to M).
async fn write_index_file(
    repo: &Repository,
    writing: Writing<'_>,
    packs: &[PackContents],
) -> Result<u64> {
    let key = format!("{INDEX}{}", hex::encode(rand::random::<[u8; 16]>()));
    let body = match writing {
        Writing::V1(keys) => Repository::encode_metadata(keys, &write_index(packs))?,
        Writing::V2(ks) => {
            let infos = (packs.iter())
                .map(|(pack, chunks)| Ok((pack.clone(), pack_info(pack, chunks)?)))
                .collect::<Result<Vec<_>>>()?;
            let file = IndexFile::new(&key, infos).map_err(encoding)?;
            let signer = ks.require_signer("backup")?;
            Bytes::from(
                file.encode(&key, signer, &ks.metadata_recipient())
                    .map_err(encoding)?,
            )
        }
    };
    let len = body.len() as u64;
    repo.put_bytes(&key, body, PutMode::Create).await?;
    Ok(len)
}

/// Uploads the chunk list from its temporary file (shared by the targets:
/// it is read by offset, never through a shared file position); returns its
/// length.
async fn put_file(repo: &Repository, key: &str, file: Arc<std::fs::File>) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file
        .metadata()
        .map_err(|e| Error::io("chunk list", e))?
        .len();
    // A list of a few MiB is read into memory once; larger ones stream and are
    // retried by re-reading the file.
    if len <= 32 << 20 {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| Error::io("chunk list", e))?;
        repo.put_bytes(key, Bytes::from(buf), PutMode::Create)
            .await?;
        return Ok(len);
    }
    repo.put_stream(key, len, PutMode::Create, || {
        Ok(file_stream(file.clone(), len))
    })
    .await?;
    Ok(len)
}

fn file_stream(file: Arc<std::fs::File>, len: u64) -> crate::storage::ByteStream {
    use crate::storage::{ErrorKind, StorageError};
    use std::os::unix::fs::FileExt;
    Box::pin(futures::stream::unfold(0u64, move |at| {
        let file = file.clone();
        async move {
            if at >= len {
                return None;
            }
            let mut buf = vec![0u8; (len - at).min(1 << 20) as usize];
            match file.read_exact_at(&mut buf, at) {
                Ok(()) => Some((Ok(Bytes::from(buf)), at + (len - at).min(1 << 20))),
                Err(e) => Some((
                    Err(StorageError::new(ErrorKind::Other, "list", e.to_string())),
                    len,
                )),
            }
        }
    }))
}

/// One target's share of the reader: the chunks its repository lacks,
/// gathered into packs for its encoders. Once its pipeline has stopped (the
/// target failed), it takes nothing more.
struct Sink {
    index: Arc<Index>,
    progress: Arc<Progress>,
    tx: Option<mpsc::SyncSender<PackJob>>,
    seen: std::collections::HashSet<ChunkId>,
    pack: Vec<u8>,
    pack_chunks: Vec<(ChunkId, u32, u32)>,
    new_bytes: u64,
}

impl Sink {
    fn new(
        index: Arc<Index>,
        progress: Arc<Progress>,
        tx: mpsc::SyncSender<PackJob>,
        pack_size: usize,
    ) -> Sink {
        Sink {
            index,
            progress,
            tx: Some(tx),
            seen: Default::default(),
            pack: Vec::with_capacity(pack_size + (256 << 10)),
            pack_chunks: Vec::new(),
            new_bytes: 0,
        }
    }

    /// Takes a chunk if this target lacks it. Returns whether it did.
    fn take(&mut self, id: ChunkId, data: &[u8], pack_size: usize) -> bool {
        self.progress
            .read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        // A chunk whose only indexed copy is recorded as damaged is stored
        // again: deduplicating against it would make this snapshot as
        // unrestorable as the ones that found the damage.
        if self.tx.is_none() || self.index.usable(&id) || !self.seen.insert(id) {
            return false;
        }
        self.pack_chunks
            .push((id, self.pack.len() as u32, data.len() as u32));
        self.pack.extend_from_slice(data);
        self.new_bytes += data.len() as u64;
        self.progress
            .new_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.pack.len() >= pack_size {
            self.flush(pack_size);
        }
        true
    }

    fn flush(&mut self, pack_size: usize) {
        let Some(tx) = &self.tx else { return };
        if self.pack_chunks.is_empty() {
            return;
        }
        let job = PackJob {
            data: std::mem::replace(&mut self.pack, Vec::with_capacity(pack_size + (256 << 10))),
            chunks: std::mem::take(&mut self.pack_chunks),
        };
        if tx.send(job).is_err() {
            // The target's uploader gave up: its error is reported there.
            self.tx = None;
            self.pack = Vec::new();
        }
    }
}

/// Which list the reader makes: format 1's list file, encrypted to these
/// metadata recipients, or format 2's list state.
enum ListKind {
    V1(Vec<age::x25519::Recipient>),
    V2,
}

/// The list being made as the source is read.
enum ListOut {
    V1 {
        list: EncodeWriter<std::io::BufWriter<std::fs::File>>,
        file: std::fs::File,
        sha: Box<Sha256>,
    },
    /// The state so far and the entry whose chunks are being read.
    V2 {
        state: ListState,
        open: Option<(Entry, Vec<(ChunkId, u32)>)>,
    },
}

fn list_err(e: impl std::fmt::Display) -> Error {
    Error::io("chunk list", std::io::Error::other(e.to_string()))
}

impl ListOut {
    fn new(kind: ListKind) -> Result<ListOut> {
        let ListKind::V1(recipients) = kind else {
            return Ok(ListOut::V2 {
                state: ListState::default(),
                open: None,
            });
        };
        let tmp =
            tempfile::tempfile().map_err(|e| Error::io("temporary file for the chunk list", e))?;
        let file = tmp.try_clone().map_err(|e| Error::io("chunk list", e))?;
        let refs: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect();
        // The list is mostly hex chunk ids, which no zstd level squeezes below
        // half; a higher level would only cost time on every page.
        let mut list = EncodeWriter::new(std::io::BufWriter::new(tmp), &refs, 3)
            .map_err(|e| Error::io("chunk list", e))?;
        writeln!(list, "{}", format::LIST_HEADER).map_err(|e| Error::io("chunk list", e))?;
        Ok(ListOut::V1 {
            list,
            file,
            sha: Box::new(Sha256::new()),
        })
    }

    fn entry(&mut self, entry: &Entry) -> Result<()> {
        match self {
            ListOut::V1 { list, .. } => {
                format::write_entry(list, entry).map_err(|e| Error::io("chunk list", e))
            }
            ListOut::V2 { state, open } => {
                if let Some((e, chunks)) = open.replace((entry.clone(), Vec::new())) {
                    state.insert(e, chunks).map_err(list_err)?;
                }
                Ok(())
            }
        }
    }

    fn chunk(&mut self, id: &ChunkId, data: &[u8]) -> Result<()> {
        match self {
            ListOut::V1 { list, sha, .. } => {
                sha.update(data);
                format::write_chunk(list, id, data.len()).map_err(|e| Error::io("chunk list", e))
            }
            ListOut::V2 { open, .. } => {
                let (_, chunks) = open
                    .as_mut()
                    .ok_or_else(|| list_err("a chunk before any file"))?;
                chunks.push((*id, data.len() as u32));
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<ReadList> {
        match self {
            ListOut::V1 { list, file, sha } => {
                let mut buffered = list.finish().map_err(|e| Error::io("chunk list", e))?;
                buffered.flush().map_err(|e| Error::io("chunk list", e))?;
                drop(buffered);
                Ok(ReadList::V1 {
                    file: Arc::new(file),
                    sha256: hex::encode(sha.finalize()),
                })
            }
            ListOut::V2 { mut state, open } => {
                if let Some((e, chunks)) = open {
                    state.insert(e, chunks).map_err(list_err)?;
                }
                Ok(ReadList::V2(state))
            }
        }
    }
}

/// The reader stage: a [`Visitor`] that makes the chunk list, hashes the
/// data, and hands each target's sink the chunks.
struct Collector<'a> {
    sinks: Vec<Sink>,
    list: ListOut,
    hasher: ChunkHasher,
    pack_size: usize,
    progress: &'a Progress,
    size: u64,
    files: u64,
    chunks: u64,
}

impl Visitor for Collector<'_> {
    fn entry(&mut self, entry: &Entry) -> Result<()> {
        if let Entry::File { size, .. } = entry {
            self.files += 1;
            self.size += size;
        }
        self.list.entry(entry)
    }

    fn chunk(&mut self, data: &[u8]) -> Result<()> {
        let id = self.hasher.id(data);
        self.chunks += 1;
        self.progress
            .read
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.list.chunk(&id, data)?;
        let mut new = false;
        for sink in &mut self.sinks {
            new |= sink.take(id, data, self.pack_size);
        }
        if new {
            self.progress
                .new_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if self.sinks.iter().all(|s| s.tx.is_none()) {
            return Err(Error::io(
                "backup",
                std::io::Error::other("every target's upload stopped"),
            ));
        }
        Ok(())
    }
}

fn read_source(
    (spec, replay): (&SourceSpec, Option<Replay>),
    (lock_timeout, check): (Duration, bool),
    sinks: Vec<Sink>,
    pack_size: usize,
    (hasher, list): (ChunkHasher, ListKind),
    progress: &Progress,
) -> Result<ReadResult> {
    let mut c = Collector {
        sinks,
        list: ListOut::new(list)?,
        hasher,
        pack_size,
        progress,
        size: 0,
        files: 0,
        chunks: 0,
    };
    let info = match replay {
        Some(replay) => replay(&mut c)?,
        None => source::read_with(spec, lock_timeout, check, &mut c)?,
    };
    for sink in &mut c.sinks {
        sink.flush(pack_size);
    }
    Ok(ReadResult {
        list: c.list.finish()?,
        size: c.size,
        files: c.files,
        chunks: c.chunks,
        new_bytes: c.sinks.iter().map(|s| s.new_bytes).collect(),
        page_size: info.page_size,
        integrity: info.integrity,
    })
}
