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
//! 3. dead packs, last: an index never names a pack that is gone, so a later
//!    backup cannot deduplicate against deleted data.
//!
//! The whole run holds the exclusive lock (see [`crate::lock`]), so no backup
//! is between loading the index and writing its manifest meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufReader;

use chrono::Utc;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::chunk::ChunkId;
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::{Identities, Keys};
use crate::lock::{Lock, LockWait};
use crate::pins::{pinned, PINS};
use crate::repo::format::{parse_list, write_index, Index, ListItem, PackContents};
use crate::repo::{Manifest, Repository, INDEX, LISTS, PACKS, PRE_RESTORE_TAG, SNAPSHOTS};
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
}

impl PruneReport {
    pub fn removed(&self) -> impl Iterator<Item = &Verdict> {
        self.snapshots.iter().filter(|v| !v.keep)
    }
}

/// Applies the retention policies to one repository and removes what they
/// do not keep. With `dry_run`, only reports.
pub async fn prune(repo: &Repository, keys: &Keys, opts: &PruneOptions) -> Result<PruneReport> {
    repo.check_keys(keys)?;
    // A dry run changes nothing, so it only needs backups and other prunes
    // to stand still (a shared lock); neither waits for the other.
    let operation = if opts.dry_run {
        "prune --dry-run"
    } else {
        "prune"
    };
    let no_wait = LockWait {
        wait: std::time::Duration::ZERO,
        poll: std::time::Duration::ZERO,
    };
    let lock = Lock::acquire(repo, operation, no_wait).await?;
    let result = prune_locked(repo, keys, opts, &lock).await;
    let released = lock.release().await;
    let report = result?;
    released?;
    Ok(report)
}

async fn prune_locked(
    repo: &Repository,
    keys: &Keys,
    opts: &PruneOptions,
    lock: &Lock,
) -> Result<PruneReport> {
    let ids = keys.metadata_identities();
    let manifests = repo.snapshots(&ids).await?;
    let pins = pinned(repo).await?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };

    // Decide per source, newest first within each.
    let mut groups: BTreeMap<&str, Vec<&Manifest>> = BTreeMap::new();
    for m in &manifests {
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
                pre_restore: m.tags.iter().any(|t| t == PRE_RESTORE_TAG),
            })
            .collect();
        let by_id: HashMap<&str, &Manifest> = members.iter().map(|m| (m.id.as_str(), *m)).collect();
        for d in retention::apply(policy, &candidates, &chrono::Local, Utc::now()) {
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
    report.snapshots.sort_by(|a, b| {
        b.manifest
            .finished
            .cmp(&a.manifest.finished)
            .then_with(|| b.manifest.id.cmp(&a.manifest.id))
    });
    let kept: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| !removed.contains(m.id.as_str()))
        .collect();

    let live = live_chunks(repo, &ids, &kept).await?;
    let plan = plan_packs(repo, &ids, &live).await?;

    // Objects to delete in step 1.
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
    let orphan_pins: Vec<String> = pins
        .iter()
        .filter(|id| !existing.contains(id.as_str()))
        .map(|id| format!("{PINS}{id}"))
        .collect();

    report.lists_deleted = lists.len() as u64;
    report.pins_deleted = orphan_pins.len() as u64;
    report.index_files_deleted = plan.dirty_index.len() as u64;
    report.index_files_written = plan.new_index.chunks(PACKS_PER_INDEX).count() as u64;
    report.packs_deleted = plan.dead_packs.len() as u64;
    report.pack_bytes_deleted = plan.dead_packs.iter().map(|(_, s)| s).sum();
    report.packs_kept = plan.live_packs;
    report.pack_bytes_kept = plan.live_pack_bytes;
    report.partly_used_packs = plan.partly_used_packs;
    report.partly_used_pack_bytes = plan.partly_used_pack_bytes;
    report.unused_chunk_bytes = plan.unused_chunk_bytes;
    if opts.dry_run {
        return Ok(report);
    }

    lock.check()?;
    let manifest_keys: Vec<String> = removed
        .iter()
        .map(|id| format!("{SNAPSHOTS}{id}"))
        .collect();
    delete_all(repo, manifest_keys).await?;
    delete_all(repo, lists).await?;
    delete_all(repo, orphan_pins).await?;
    for batch in plan.new_index.chunks(PACKS_PER_INDEX) {
        let body = Repository::encode_metadata(keys, &write_index(batch))?;
        let key = format!("{INDEX}{}", hex::encode(rand::random::<[u8; 16]>()));
        repo.put_bytes(&key, body, PutMode::Create).await?;
    }
    lock.check()?;
    delete_all(repo, plan.dirty_index).await?;
    delete_all(repo, plan.dead_packs.into_iter().map(|(k, _)| k).collect()).await?;
    Ok(report)
}

/// Every chunk the kept snapshots use.
async fn live_chunks(
    repo: &Repository,
    ids: &Identities,
    kept: &[&Manifest],
) -> Result<HashSet<ChunkId>> {
    let lists: Vec<HashSet<ChunkId>> = stream::iter(kept.iter().map(|m| m.list.clone()))
        .map(|key| async move {
            let raw = repo.get_bytes(&key).await?;
            let ids = ids.clone();
            tokio::task::spawn_blocking(move || {
                let mut chunks = HashSet::new();
                let plain = codec::decode_reader(&raw[..], ids.iter(), &key)?;
                parse_list(BufReader::new(plain), &key, |item| {
                    if let ListItem::Chunk(id, _) = item {
                        chunks.insert(id);
                    }
                    Ok(())
                })?;
                Ok::<_, Error>(chunks)
            })
            .await
            .map_err(|e| Error::io("reading lists", std::io::Error::other(e.to_string())))?
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

/// What happens to packs and index files.
struct PackPlan {
    /// `(key, stored size)` of packs no kept snapshot uses.
    dead_packs: Vec<(String, u64)>,
    /// Index files naming a pack that is dead or missing.
    dirty_index: Vec<String>,
    /// Live packs named only in dirty index files, for the new index files.
    new_index: Vec<PackContents>,
    live_packs: u64,
    live_pack_bytes: u64,
    partly_used_packs: u64,
    partly_used_pack_bytes: u64,
    unused_chunk_bytes: u64,
}

async fn plan_packs(
    repo: &Repository,
    ids: &Identities,
    live: &HashSet<ChunkId>,
) -> Result<PackPlan> {
    let sizes: HashMap<String, u64> = repo
        .list(PACKS)
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    let files: Vec<(String, Index)> = stream::iter(repo.list(INDEX).await?)
        .map(|meta| async move {
            let plain = repo.get_metadata(&meta.key, ids).await?;
            let mut index = Index::default();
            index.parse_into(&plain[..], &meta.key)?;
            Ok::<_, Error>((meta.key, index))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;

    // Per pack: its chunks (once each, whichever index files name them).
    let mut packs: HashMap<&str, HashMap<ChunkId, (u32, u32)>> = HashMap::new();
    for (_, index) in &files {
        for (id, loc) in &index.chunks {
            let pack = index.packs[loc.pack as usize].as_str();
            packs
                .entry(pack)
                .or_default()
                .insert(*id, (loc.offset, loc.len));
        }
    }
    let mut found: HashSet<ChunkId> = HashSet::new();
    let mut live_packs: HashSet<&str> = HashSet::new();
    let mut plan = PackPlan {
        dead_packs: Vec::new(),
        dirty_index: Vec::new(),
        new_index: Vec::new(),
        live_packs: 0,
        live_pack_bytes: 0,
        partly_used_packs: 0,
        partly_used_pack_bytes: 0,
        unused_chunk_bytes: 0,
    };
    for (pack, chunks) in &packs {
        let Some(size) = sizes.get(*pack) else {
            continue; // named by an index file, but gone: that file is rewritten
        };
        let used: Vec<&ChunkId> = chunks.keys().filter(|id| live.contains(*id)).collect();
        if used.is_empty() {
            continue;
        }
        found.extend(used.iter().copied());
        live_packs.insert(pack);
        plan.live_packs += 1;
        plan.live_pack_bytes += size;
        let unused: u64 = chunks
            .iter()
            .filter(|(id, _)| !live.contains(*id))
            .map(|(_, (_, len))| u64::from(*len))
            .sum();
        if unused > 0 {
            plan.partly_used_packs += 1;
            plan.partly_used_pack_bytes += size;
            plan.unused_chunk_bytes += unused;
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
    for (key, size) in &sizes {
        if !live_packs.contains(key.as_str()) {
            plan.dead_packs.push((key.clone(), *size));
        }
    }
    plan.dead_packs.sort();

    let mut covered: HashSet<&str> = HashSet::new();
    let mut dirty: Vec<&Index> = Vec::new();
    for (key, index) in &files {
        if index.packs.iter().all(|p| live_packs.contains(p.as_str())) {
            covered.extend(index.packs.iter().map(String::as_str));
        } else {
            plan.dirty_index.push(key.clone());
            dirty.push(index);
        }
    }
    let mut rewritten: HashSet<&str> = HashSet::new();
    for index in dirty {
        for pack in &index.packs {
            let pack = pack.as_str();
            if live_packs.contains(pack) && !covered.contains(pack) && rewritten.insert(pack) {
                let mut chunks: Vec<(ChunkId, u32, u32)> = packs[pack]
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
    Ok(plan)
}

async fn delete_all(repo: &Repository, keys: Vec<String>) -> Result<()> {
    stream::iter(keys)
        .map(|key| async move { repo.delete(&key).await })
        .buffer_unordered(DELETE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
