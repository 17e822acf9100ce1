//! Prune: removes the snapshots no retention rule keeps, then the data only
//! they referenced.
//!
//! Prune needs only the recipients. Manifests, lists and index files are
//! metadata (readable with the derived metadata identity), but packs are
//! encrypted to the user's recipients alone, so a pack that still holds one
//! live chunk cannot be rewritten here: prune deletes only packs no kept
//! snapshot uses at all, and reports the bytes held in partly used ones.
//!
//! Order of deletions, each step safe to interrupt:
//! 1. manifests of removed snapshots (the snapshot is gone), then their lists,
//!    lists without a manifest (interrupted backups) and pins of missing
//!    snapshots;
//! 2. new index files naming only live packs, written before the old index
//!    files that named dead packs are deleted, so no live chunk is ever
//!    unindexed;
//! 3. dead packs: an index never names a pack that is gone, so a later
//!    backup cannot deduplicate against deleted data;
//! 4. damage records that name only deleted packs, last: a record deleted
//!    before its pack would let a backup deduplicate against the damage.
//!
//! Damage records: a copy of a chunk recorded as damaged does not keep its
//! pack alive when an intact copy exists elsewhere; it does when it is the
//! only copy (a record can be wrong, and nothing else holds that chunk), and
//! such chunks are counted in the report.
//!
//! Junk: objects that do not decode are skipped by every reader (see
//! [`crate::repo`]). Prune deletes those that are provably junk (empty, not
//! decodable, or encrypted to other keys, judged on the whole object as
//! listed, never on a failed download) under `snapshots/`, `index/` and
//! `damaged/`. A kept snapshot whose list is junk protects the chunks its
//! readable part names (none, when it is empty). Objects written by a newer format version, or that
//! decode but do not parse, are never deleted, and a manifest or kept list
//! of that kind stops the prune before it deletes anything: what it needs
//! cannot be known.
//!
//! The whole run holds the exclusive lock (see [`crate::lock`]), so no backup
//! is between loading the index and writing its manifest meanwhile.
//!
//! Format 2 repositories are pruned by [`v2`] with the same steps, order
//! and rules, over signed objects only, and with the shortcut list objects
//! that keep every kept snapshot's path short.

mod v2;

pub(crate) use v2::prune as prune_v2;

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::keys::{Keys, MetadataKey};
use crate::keyset::KeySet;
use crate::lock::{Lock, LockKind, LockWait};
use crate::pins::PINS;
use crate::repo::format::{write_index, ListItem, PackContents};
use crate::repo::{
    newest_first, Damage, Index, ListError, Manifest, Repository, Unreadable, DAMAGED, INDEX,
    LISTS, PACKS, SNAPSHOTS,
};
use crate::retention::{self, Candidate, Policy};
use crate::storage::PutMode;

/// Packs per index file that prune writes.
const PACKS_PER_INDEX: usize = 256;
/// Deletes in flight at once.
const DELETE_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Apply retention to this source only (the others' snapshots are kept).
    pub source: Option<String>,
    /// The policy of sources without their own.
    pub default_policy: Policy,
    /// Per-source policies; each replaces the default entirely.
    pub policies: HashMap<String, Policy>,
    /// Replication (format 2): base snapshots whose replica chain reaches
    /// into this window are kept, whatever the policy says, so that every
    /// second of it can be restored; the replica objects of removed bases
    /// are deleted with them.
    pub replica_window: Option<std::time::Duration>,
}

impl PruneOptions {
    /// The policy that applies to `source`.
    pub fn policy(&self, source: &str) -> &Policy {
        self.policies.get(source).unwrap_or(&self.default_policy)
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub manifest: Manifest,
    pub keep: bool,
    pub pinned: bool,
    /// Rules that keep it (`"daily 2026-11-22"`, `"last 3"`, `"pinned"`,
    /// `"pre-restore 30d"`), empty if removed.
    pub reasons: Vec<String>,
    /// For a pre-restore snapshot: when its own rule stops keeping it.
    pub expires: Option<chrono::DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub dry_run: bool,
    /// The selected sources' snapshots, newest first.
    pub snapshots: Vec<Verdict>,
    /// Selected sources that have no retention policy (all their snapshots kept).
    pub sources_without_policy: Vec<String>,
    /// Lists of removed snapshots and of interrupted backups.
    pub lists_deleted: u64,
    /// Pins whose snapshot no longer exists.
    pub pins_deleted: u64,
    /// Format 2: key bundles no keyring names.
    pub bundles_deleted: u64,
    pub index_files_deleted: u64,
    pub index_files_written: u64,
    pub packs_deleted: u64,
    pub pack_bytes_deleted: u64,
    pub packs_kept: u64,
    pub pack_bytes_kept: u64,
    /// Kept packs that also hold chunks no kept snapshot uses.
    pub partly_used_packs: u64,
    /// Stored size of those packs.
    pub partly_used_pack_bytes: u64,
    /// Bytes (before compression) of the unused chunks in them.
    pub unused_chunk_bytes: u64,
    /// Objects that do not decode (empty, damaged, not offsite's), removed.
    pub junk_deleted: Vec<String>,
    /// Damage records whose packs are all gone.
    pub damage_records_deleted: u64,
    /// Chunks kept snapshots use whose every copy is recorded as damaged.
    pub damaged_chunks: u64,
    /// Format 2: shortcut list objects written so that every kept
    /// snapshot's path is short and made of kept snapshots.
    pub shortcuts_written: u64,
    /// Format 2: objects whose signature does not count and never can
    /// (manifests, index files), removed: (key, why).
    pub rejected_deleted: Vec<(String, String)>,
}

impl PruneReport {
    pub fn removed(&self) -> impl Iterator<Item = &Verdict> {
        self.snapshots.iter().filter(|v| !v.keep)
    }
}

/// Applies the retention policies to one repository and removes what they
/// do not keep. With `dry_run`, only reports.
pub(crate) async fn prune(
    repo: &Repository,
    keys: &Keys,
    opts: &PruneOptions,
) -> Result<PruneReport> {
    repo.check_keys(keys)?;
    let lock = lock(repo, opts.dry_run).await?;
    let result = prune_locked(repo, keys, opts, &lock).await;
    lock.release().await;
    result
}

/// The lock a prune holds: exclusive, or shared for a dry run (it changes
/// nothing, so it only needs backups and other prunes to stand still);
/// taken without waiting.
async fn lock(repo: &Repository, dry_run: bool) -> Result<Lock> {
    let operation = if dry_run { "prune --dry-run" } else { "prune" };
    let no_wait = LockWait {
        wait: std::time::Duration::ZERO,
        poll: std::time::Duration::ZERO,
    };
    // A dry run deletes nothing: a shared lock keeps only deleters away.
    let kind = if dry_run {
        LockKind::Shared
    } else {
        LockKind::Exclusive
    };
    Lock::acquire(repo, kind, operation, no_wait).await
}

async fn prune_locked(
    repo: &Repository,
    keys: &Keys,
    opts: &PruneOptions,
    lock: &Lock,
) -> Result<PruneReport> {
    let ids = keys.metadata_key();
    let listed = repo.snapshot_list(&ids).await?;
    refuse_unknown(&listed.unreadable)?;
    let manifests = listed.manifests;
    let pins = repo.pinned().await?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let removed = decide(&manifests, &pins, &HashSet::new(), opts, &mut report);
    let kept: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| !removed.contains(m.id.as_str()))
        .collect();
    let live = live_chunks(repo, &ids, &kept).await?;
    let plan = plan_packs(repo, &ids, &live).await?;
    let step1 = Step1 {
        manifests: removed
            .iter()
            .map(|id| format!("{SNAPSHOTS}{id}"))
            .collect(),
        junk_manifests: junk(&listed.unreadable),
        rejected: Vec::new(),
        lists: dead_lists(repo, &manifests, &removed, &kept).await?,
        pins: orphan_pins(&pins, |id| manifests.iter().any(|m| m.id == id)),
        bundles: Vec::new(),
    };
    finish(repo, IndexWriter::V1(keys), lock, report, step1, plan).await
}

/// The pins of snapshots that are not there (`exists` says which are).
fn orphan_pins(pins: &HashSet<String>, exists: impl Fn(&str) -> bool) -> Vec<String> {
    (pins.iter())
        .filter(|id| !exists(id))
        .map(|id| format!("{PINS}{id}"))
        .collect()
}

/// Counts what the plan deletes into `report` and, unless it is a dry
/// run's, carries it out.
async fn finish(
    repo: &Repository,
    writer: IndexWriter<'_>,
    lock: &Lock,
    mut report: PruneReport,
    step1: Step1,
    plan: PackPlan,
) -> Result<PruneReport> {
    count(&mut report, &step1, &plan);
    if report.dry_run {
        return Ok(report);
    }
    execute(repo, writer, lock, step1, plan).await?;
    Ok(report)
}

/// Applies each source's retention policy (newest first within a source),
/// filling `report.snapshots`; returns the ids of the snapshots to remove.
fn decide<'m>(
    manifests: &'m [Manifest],
    pins: &HashSet<String>,
    replica_bases: &HashSet<String>,
    opts: &PruneOptions,
    report: &mut PruneReport,
) -> HashSet<&'m str> {
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in manifests {
        groups.entry(m.source.as_str()).or_default().push(m);
    }
    let mut removed: HashSet<&str> = HashSet::new();
    for (source, members) in &groups {
        if opts.source.as_deref().is_some_and(|s| s != *source) {
            continue;
        }
        let policy = opts.policy(source);
        if policy.is_empty() {
            report.sources_without_policy.push(source.to_string());
        }
        let candidates: Vec<Candidate> = members
            .iter()
            .map(|m| Candidate {
                id: m.id.clone(),
                time: m.finished,
                pinned: pins.contains(&m.id),
                pre_restore: m.is_pre_restore(),
            })
            .collect();
        let by_id: HashMap<&str, &Manifest> = members.iter().map(|m| (m.id.as_str(), *m)).collect();
        for mut d in retention::apply(policy, &candidates, &chrono::Local, Utc::now()) {
            if replica_bases.contains(&d.id) {
                d.keep = true;
                d.reasons.push("replica base".into());
            }
            if !d.keep {
                removed.insert(by_id[d.id.as_str()].id.as_str());
            }
            report.snapshots.push(Verdict {
                manifest: by_id[d.id.as_str()].clone(),
                keep: d.keep,
                pinned: pins.contains(&d.id),
                reasons: d.reasons,
                expires: d.expires,
            });
        }
    }
    report
        .snapshots
        .sort_by(|a, b| newest_first(&a.manifest, &b.manifest));
    removed
}

/// What step 1 of the module doc deletes.
struct Step1 {
    manifests: Vec<String>,
    junk_manifests: Vec<String>,
    /// Format 2: manifests whose signature never counts, and why.
    rejected: Vec<(String, String)>,
    lists: Vec<String>,
    pins: Vec<String>,
    /// Format 2: key bundles the keyring does not name.
    bundles: Vec<String>,
}

/// Lists of removed snapshots, and lists no manifest names (interrupted
/// backups) that no kept snapshot refers to.
async fn dead_lists(
    repo: &Repository,
    manifests: &[Manifest],
    removed: &HashSet<&str>,
    kept: &[&Manifest],
) -> Result<Vec<String>> {
    let mut lists: Vec<String> = manifests
        .iter()
        .filter(|m| removed.contains(m.id.as_str()))
        .map(|m| m.list.clone())
        .collect();
    let referenced: HashSet<&str> = kept.iter().map(|m| m.list.as_str()).collect();
    let existing: HashSet<&str> = manifests.iter().map(|m| m.id.as_str()).collect();
    for meta in repo.list(LISTS).await? {
        let id = meta.key.strip_prefix(LISTS).unwrap_or_default();
        if !existing.contains(id) && !referenced.contains(meta.key.as_str()) {
            lists.push(meta.key);
        }
    }
    Ok(lists)
}

fn count(report: &mut PruneReport, step1: &Step1, plan: &PackPlan) {
    report.lists_deleted = step1.lists.len() as u64;
    report.pins_deleted = step1.pins.len() as u64;
    report.bundles_deleted = step1.bundles.len() as u64;
    report.index_files_deleted = plan.dirty_index.len() as u64;
    report.index_files_written = plan.new_index.chunks(PACKS_PER_INDEX).count() as u64;
    report.packs_deleted = plan.dead_packs.len() as u64;
    report.pack_bytes_deleted = plan.dead_packs.iter().map(|(_, s)| s).sum();
    report.packs_kept = plan.live_packs;
    report.pack_bytes_kept = plan.live_pack_bytes;
    report.partly_used_packs = plan.partly_used_packs;
    report.partly_used_pack_bytes = plan.partly_used_pack_bytes;
    report.unused_chunk_bytes = plan.unused_chunk_bytes;
    report.damaged_chunks = plan.damaged_chunks;
    report.damage_records_deleted = plan.dead_records.len() as u64;
    report.junk_deleted = step1
        .junk_manifests
        .iter()
        .chain(&plan.junk_index)
        .chain(&plan.junk_records)
        .cloned()
        .collect();
    report.junk_deleted.sort();
    report.rejected_deleted = (step1.rejected.iter())
        .chain(&plan.rejected_index)
        .cloned()
        .collect();
    report.rejected_deleted.sort();
}

/// How the new index files are written: format 1's encrypted to the
/// recipients, format 2's signed by the key set's signer.
#[derive(Clone, Copy)]
enum IndexWriter<'a> {
    V1(&'a Keys),
    V2(&'a KeySet),
}

impl IndexWriter<'_> {
    async fn write(self, repo: &Repository, batch: &[PackContents]) -> Result<()> {
        match self {
            IndexWriter::V1(keys) => {
                let body = Repository::encode_metadata(keys, &write_index(batch))?;
                let key = format!("{INDEX}{}", hex::encode(rand::random::<[u8; 16]>()));
                repo.put_bytes(&key, body, PutMode::Create).await
            }
            IndexWriter::V2(ks) => crate::backup::write_index_v2(repo, ks, batch)
                .await
                .map(drop),
        }
    }
}

/// The deletions, in the order of the module doc; the lock is asked for
/// before each step that removes what others may need.
async fn execute(
    repo: &Repository,
    writer: IndexWriter<'_>,
    lock: &Lock,
    step1: Step1,
    plan: PackPlan,
) -> Result<()> {
    lock.ensure_held().await?;
    delete_all(repo, step1.manifests).await?;
    delete_all(repo, step1.rejected.into_iter().map(|(k, _)| k).collect()).await?;
    delete_all(repo, step1.junk_manifests).await?;
    delete_all(repo, step1.lists).await?;
    delete_all(repo, step1.pins).await?;
    delete_all(repo, step1.bundles).await?;
    for batch in plan.new_index.chunks(PACKS_PER_INDEX) {
        writer.write(repo, batch).await?;
    }
    lock.ensure_held().await?;
    delete_all(repo, plan.dirty_index).await?;
    delete_all(repo, plan.junk_index).await?;
    delete_all(
        repo,
        plan.rejected_index.into_iter().map(|(k, _)| k).collect(),
    )
    .await?;
    delete_all(repo, plan.dead_packs.into_iter().map(|(k, _)| k).collect()).await?;
    delete_all(repo, plan.dead_records).await?;
    delete_all(repo, plan.junk_records).await?;
    Ok(())
}

/// Keys of the provably junk objects among `unreadable` (read with the
/// metadata identity, which every metadata object offsite writes is
/// encrypted to).
fn junk(unreadable: &[Unreadable]) -> Vec<String> {
    unreadable
        .iter()
        .filter(|u| u.junk())
        .map(|u| u.key.clone())
        .collect()
}

/// Stops the prune when a manifest is unreadable for a reason other than
/// being junk: a newer offsite's snapshot, or one that does not parse,
/// needs data prune cannot know about.
fn refuse_unknown(unreadable: &[Unreadable]) -> Result<()> {
    match unreadable.iter().find(|u| !u.junk()) {
        None => Ok(()),
        Some(u) => Err(Error::Corrupt {
            key: u.key.clone(),
            message: format!(
                "{}; prune deletes nothing while a snapshot it cannot read may need data                  (a newer offsite reads it; or remove the object if `offsite verify` shows it is not yours)",
                u.message
            ),
        }),
    }
}

/// Every chunk the kept snapshots use. Of a kept snapshot whose list is
/// junk (empty or damaged), what decodes still counts; one whose list cannot
/// be read for another reason (missing, or not parsing) stops the prune.
async fn live_chunks(
    repo: &Repository,
    ids: &MetadataKey,
    kept: &[&Manifest],
) -> Result<HashSet<ChunkId>> {
    let sizes: HashMap<String, u64> = repo
        .list(LISTS)
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    // Collected first: a stream over a borrowing iterator makes the
    // prune future impossible to spawn (a higher-ranked lifetime bound).
    let kept: Vec<Manifest> = kept.iter().map(|m| (*m).clone()).collect();
    let lists: Vec<HashSet<ChunkId>> = stream::iter(kept)
        .map(|m| {
            let size = sizes.get(&m.list).copied();
            async move { list_chunks(repo, ids, &m, size).await }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    let mut live = HashSet::new();
    for l in lists {
        live.extend(l);
    }
    Ok(live)
}

/// The chunks one kept snapshot's list names.
async fn list_chunks(
    repo: &Repository,
    ids: &MetadataKey,
    m: &Manifest,
    size: Option<u64>,
) -> Result<HashSet<ChunkId>> {
    let refused = |e: ListError| {
        if matches!(e, ListError::Unreachable(_)) {
            return Error::from(e);
        }
        Error::PruneBlocked {
            snapshot: m.id.clone(),
            cause: Box::new(Error::from(e)),
        }
    };
    let list = repo.chunk_list(m, size).await.map_err(refused)?;
    let ids = ids.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut chunks = HashSet::new();
        let read = list.read(&ids, |item| {
            if let ListItem::Chunk(id, _) = item {
                chunks.insert(id);
            }
            Ok(())
        });
        (chunks, read)
    })
    .await
    .map_err(|e| Error::io("reading lists", std::io::Error::other(e.to_string())))?;
    match read {
        (chunks, Ok(())) => Ok(chunks),
        // What decoded before the damage still protects its chunks: a
        // person could restore those files by hand.
        (chunks, Err(e)) if e.junk() => {
            tracing::warn!(
                "{e}: the snapshot cannot be restored; prune keeps only the {} chunks its \
                 readable part names; `offsite verify` reports it",
                chunks.len()
            );
            Ok(chunks)
        }
        (_, Err(e)) => Err(refused(e)),
    }
}

/// What happens to packs, index files and damage records.
struct PackPlan {
    /// `(key, stored size)` of packs no kept snapshot uses.
    dead_packs: Vec<(String, u64)>,
    /// Index files naming a pack that is dead or missing.
    dirty_index: Vec<String>,
    /// Live packs named only in dirty index files, for the new index files.
    new_index: Vec<PackContents>,
    /// Index files and damage records that are junk.
    junk_index: Vec<String>,
    /// Format 2: index files whose signature does not count, and why.
    rejected_index: Vec<(String, String)>,
    junk_records: Vec<String>,
    /// Damage records naming no live pack.
    dead_records: Vec<String>,
    live_packs: u64,
    live_pack_bytes: u64,
    partly_used_packs: u64,
    partly_used_pack_bytes: u64,
    unused_chunk_bytes: u64,
    damaged_chunks: u64,
}

/// Every pack's chunks (once each, whichever index files name them), and
/// which packs each index file names.
#[derive(Default)]
struct IndexView {
    packs: HashMap<String, HashMap<ChunkId, (u32, u32)>>,
    files: Vec<(String, Vec<String>)>,
}

impl IndexView {
    /// One index file, `key`, that names `file`'s packs.
    fn add(&mut self, key: &str, file: &[PackContents]) {
        let packs = file.iter().map(|(p, _)| p.clone()).collect();
        self.files.push((key.to_string(), packs));
        for (pack, chunks) in file {
            let entry = self.packs.entry(pack.clone()).or_default();
            for (id, off, len) in chunks {
                entry.insert(*id, (*off, *len));
            }
        }
    }
}

async fn plan_packs(
    repo: &Repository,
    ids: &MetadataKey,
    live: &HashSet<ChunkId>,
) -> Result<PackPlan> {
    let (view, index) = read_view(repo, ids).await?;
    plan_over(repo, &view, &index, live).await
}

/// What happens to packs, index files and damage records, given the index
/// (`view`, and `index` for its damage records and junk) and the live chunks.
async fn plan_over(
    repo: &Repository,
    view: &IndexView,
    index: &Index,
    live: &HashSet<ChunkId>,
) -> Result<PackPlan> {
    let sizes: HashMap<String, u64> = repo
        .list(PACKS)
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let damage = &index.damage;
    let mut plan = PackPlan {
        dead_packs: Vec::new(),
        dirty_index: Vec::new(),
        new_index: Vec::new(),
        junk_index: junk(&index.unreadable)
            .into_iter()
            .filter(|k| k.starts_with(INDEX))
            .collect(),
        junk_records: junk(&index.unreadable)
            .into_iter()
            .filter(|k| k.starts_with(DAMAGED))
            .collect(),
        rejected_index: Vec::new(),
        dead_records: Vec::new(),
        live_packs: 0,
        live_pack_bytes: 0,
        partly_used_packs: 0,
        partly_used_pack_bytes: 0,
        unused_chunk_bytes: 0,
        damaged_chunks: 0,
    };
    let intact = intact_copies(repo, view, &sizes, live, damage)?;
    plan.damaged_chunks = (live.len() - intact.len()) as u64;
    let live_packs = mark_live(&mut plan, view, &sizes, live, damage, &intact);
    for (key, size) in &sizes {
        if !live_packs.contains(key.as_str()) {
            plan.dead_packs.push((key.clone(), *size));
        }
    }
    plan.dead_packs.sort();
    for (key, packs) in &damage.records {
        if !packs.iter().any(|p| live_packs.contains(p.as_str())) {
            plan.dead_records.push(key.clone());
        }
    }
    plan.dead_records.sort();
    rewrite_index(&mut plan, view, &live_packs);
    Ok(plan)
}

/// The index as prune needs it: every pack's chunks and which packs each
/// index file names, read the one way every reader reads the index.
async fn read_view(repo: &Repository, ids: &MetadataKey) -> Result<(IndexView, Index)> {
    let mut view = IndexView::default();
    let index = repo
        .load_index_with(ids, &[], |key, file| view.add(key, file))
        .await?;
    Ok((view, index))
}

/// The live chunks that have a copy no damage record names, in a pack that
/// exists. Fails when a live chunk has no copy at all.
fn intact_copies(
    repo: &Repository,
    view: &IndexView,
    sizes: &HashMap<String, u64>,
    live: &HashSet<ChunkId>,
    damage: &Damage,
) -> Result<HashSet<ChunkId>> {
    let mut intact: HashSet<ChunkId> = HashSet::new();
    let mut found: HashSet<ChunkId> = HashSet::new();
    for (pack, chunks) in view.packs.iter().filter(|(p, _)| sizes.contains_key(*p)) {
        for id in chunks.keys().filter(|id| live.contains(*id)) {
            found.insert(*id);
            if !damage.contains(pack, id) {
                intact.insert(*id);
            }
        }
    }
    if found.len() < live.len() {
        let missing = live.len() - found.len();
        return Err(Error::Corrupt {
            key: repo.describe(),
            message: format!(
                "kept snapshots use {missing} chunks that no index file names or whose packs are \
                 missing; prune deletes nothing until `offsite verify` shows which snapshots are damaged"
            ),
        });
    }
    Ok(intact)
}

/// The packs a kept snapshot needs, counted into `plan`. A copy recorded as
/// damaged keeps its pack only as the last copy of a chunk.
fn mark_live<'a>(
    plan: &mut PackPlan,
    view: &'a IndexView,
    sizes: &HashMap<String, u64>,
    live: &HashSet<ChunkId>,
    damage: &Damage,
    intact: &HashSet<ChunkId>,
) -> HashSet<&'a str> {
    let mut live_packs: HashSet<&str> = HashSet::new();
    for (pack, chunks) in &view.packs {
        let Some(size) = sizes.get(pack) else {
            continue; // named by an index file, but gone: that file is rewritten
        };
        let used = |id: &ChunkId| {
            live.contains(id) && (!damage.contains(pack, id) || !intact.contains(id))
        };
        if !chunks.keys().any(used) {
            continue;
        }
        live_packs.insert(pack);
        plan.live_packs += 1;
        plan.live_pack_bytes += size;
        let unused: u64 = chunks
            .iter()
            .filter(|(id, _)| !used(id))
            .map(|(_, (_, len))| u64::from(*len))
            .sum();
        if unused > 0 {
            plan.partly_used_packs += 1;
            plan.partly_used_pack_bytes += size;
            plan.unused_chunk_bytes += unused;
        }
    }
    live_packs
}

/// Which index files name a dead or missing pack, and the new index files
/// that carry the live packs only they named.
fn rewrite_index(plan: &mut PackPlan, view: &IndexView, live_packs: &HashSet<&str>) {
    let mut covered: HashSet<&str> = HashSet::new();
    let mut dirty: Vec<&Vec<String>> = Vec::new();
    for (key, packs) in &view.files {
        if packs.iter().all(|p| live_packs.contains(p.as_str())) {
            covered.extend(packs.iter().map(String::as_str));
        } else {
            plan.dirty_index.push(key.clone());
            dirty.push(packs);
        }
    }
    let mut rewritten: HashSet<&str> = HashSet::new();
    for packs in dirty {
        for pack in packs {
            let pack = pack.as_str();
            if live_packs.contains(pack) && !covered.contains(pack) && rewritten.insert(pack) {
                let mut chunks: Vec<(ChunkId, u32, u32)> = view.packs[pack]
                    .iter()
                    .map(|(id, (off, len))| (*id, *off, *len))
                    .collect();
                chunks.sort_by_key(|(_, off, _)| *off);
                plan.new_index.push((pack.to_string(), chunks));
            }
        }
    }
    plan.new_index.sort_by(|a, b| a.0.cmp(&b.0));
    plan.dirty_index.sort();
}

async fn delete_all(repo: &Repository, keys: Vec<String>) -> Result<()> {
    stream::iter(keys)
        .map(|key| async move { repo.delete(&key).await })
        .buffer_unordered(DELETE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
