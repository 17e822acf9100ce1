//! Verify: is every snapshot still restorable?
//!
//! Without reading data (needs only the recipients): every manifest and list
//! decodes, every chunk of every list is in the index with the length the
//! list records and has a copy that no damage record names, and every pack
//! that holds one exists and is not empty. Pack contents are not read, so
//! this says nothing about whether the data itself is intact: a flipped or
//! truncated pack is found only by reading it.
//!
//! With `read_data_subset` (needs the identity): the selected packs (part N
//! of M, by a hash of their keys, so a nightly job can rotate through the
//! repository; or a random percentage) are each read once, and every chunk
//! the index places in them is checked against its id. Damaged chunks are
//! recorded (`damaged/`, see [`crate::repo::Damage`]) so that the next
//! backup stores them again, and every snapshot that uses one with no
//! intact copy is reported.
//!
//! With `read_data` (needs the identity): each snapshot that passed is also
//! restored into a temporary directory by [`crate::restore`], which checks
//! every chunk against its id (recording damage the same way), the whole
//! snapshot against the manifest's SHA-256 and, for SQLite, runs
//! `PRAGMA integrity_check`. Nothing is kept.
//!
//! Beside other jobs: the snapshot list is read before the index (see
//! [`crate::repo`]'s loader), so a backup committing meanwhile is either not
//! seen or seen whole; a shared lock keeps prunes out, and without one
//! (read-only credentials) a snapshot whose manifest vanished during the
//! run was pruned, not damaged, and is left out of the report. Never:
//! report damage that is not there.
//!
//! A caller may pass [`VerifyProgress`] counters to draw progress from; they
//! count work done and never decide anything.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::backup::Progress;
use crate::chunk::{ChunkHasher, ChunkId};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::{Identities, MetadataKey};
use crate::lock::{Lock, LockWait};
use crate::repo::format::{Damage, DamagedPack, Index, ListItem};
use crate::repo::{Manifest, Repository, PACKS, SNAPSHOTS};
use crate::restore::RestoreOptions;

mod v2;

/// Packs read at once by `read_data_subset`.
const READ_CONCURRENCY: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// What to read of the data, with the identity that can; `None`
    /// checks structure only, which a backup host's metadata key can do.
    pub data: Option<ReadData>,
    /// Check this source's snapshots only.
    pub source: Option<String>,
    /// How long to wait for a running prune.
    pub lock_wait: LockWait,
    /// Counters to draw progress from, updated as the run goes.
    pub progress: Option<Arc<VerifyProgress>>,
}

/// The data a verify reads, with the identity that can.
#[derive(Debug, Clone)]
pub enum ReadData {
    /// Download and restore every snapshot (`--read-data`).
    Snapshots(Identities),
    /// Read this part of the packs and check every chunk in them
    /// (`--read-data-subset`).
    Packs(Identities, Subset),
}

impl VerifyOptions {
    /// The identity to restore every snapshot with, under `--read-data`.
    fn restoring(&self) -> Option<&Identities> {
        match &self.data {
            Some(ReadData::Snapshots(ids)) => Some(ids),
            _ => None,
        }
    }

    /// The packs to read and the identity to read them with, under
    /// `--read-data-subset`.
    fn subset(&self) -> Option<(&Identities, Subset)> {
        match &self.data {
            Some(ReadData::Packs(ids, subset)) => Some((ids, *subset)),
            _ => None,
        }
    }
}

/// Live counters of a verify, for a progress display. Each total is set
/// before the work it counts starts.
#[derive(Debug, Default)]
pub struct VerifyProgress {
    /// Snapshots to check (after `source` is applied), and checked so far.
    pub snapshots_total: AtomicU64,
    pub snapshots_done: AtomicU64,
    /// Packs `read_data_subset` reads, and read so far.
    pub packs_total: AtomicU64,
    pub packs_done: AtomicU64,
    /// Bytes to read: the selected packs' stored sizes with
    /// `read_data_subset`, the snapshots' sizes with `read_data`.
    pub bytes_total: AtomicU64,
    /// Encoded bytes of the packs read by `read_data_subset`.
    pub packs_read: AtomicU64,
    /// The restores of `read_data` add the bytes they write to `read`
    /// (their `total` is the snapshot being restored).
    pub restored: Arc<Progress>,
}

impl VerifyProgress {
    /// Bytes read so far, by either kind of data check.
    pub fn bytes_done(&self) -> u64 {
        self.packs_read.load(Ordering::Relaxed) + self.restored.read.load(Ordering::Relaxed)
    }
}

/// Adds `n` to one of the counters, if there are counters.
fn count(
    progress: &Option<Arc<VerifyProgress>>,
    counter: impl Fn(&VerifyProgress) -> &AtomicU64,
    n: u64,
) {
    if let Some(p) = progress {
        counter(p).fetch_add(n, Ordering::Relaxed);
    }
}

/// Which packs `verify --read-data-subset` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// Part `n` (from 1) of `of`: the packs whose key's BLAKE3 hash, as a
    /// number, is `n - 1` modulo `of`. Parts 1 to `of` together are every
    /// pack, each once, and a pack stays in its part as packs come and go.
    Part { n: u32, of: u32 },
    /// This percentage of the packs, chosen at random on each run.
    Percent(f64),
}

/// A `--read-data-subset` value that is neither `N/M` nor `PCT%`.
#[derive(Debug, thiserror::Error)]
#[error("invalid subset {0:?}: expected N/M (part N of M, 1 <= N <= M) or a percentage like 10%")]
pub struct SubsetError(String);

impl FromStr for Subset {
    type Err = SubsetError;

    fn from_str(s: &str) -> std::result::Result<Subset, SubsetError> {
        let bad = || SubsetError(s.to_string());
        if let Some(pct) = s.trim().strip_suffix('%') {
            let p: f64 = pct.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(Subset::Percent(p));
        }
        let (n, of) = s.split_once('/').ok_or_else(bad)?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        let of: u32 = of.trim().parse().map_err(|_| bad())?;
        if n == 0 || of == 0 || n > of {
            return Err(bad());
        }
        Ok(Subset::Part { n, of })
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subset::Part { n, of } => write!(f, "{n}/{of}"),
            Subset::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Subset {
    /// The packs of `all` (sorted keys) this subset reads.
    pub fn select<'a>(&self, all: &[&'a str]) -> Vec<&'a str> {
        match *self {
            Subset::Part { n, of } => all
                .iter()
                .copied()
                .filter(|key| {
                    let h = blake3::hash(key.as_bytes());
                    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
                    x % u64::from(of) == u64::from(n - 1)
                })
                .collect(),
            Subset::Percent(p) => {
                let want = ((all.len() as f64) * p / 100.0).ceil() as usize;
                let mut picked: Vec<usize> =
                    rand::seq::index::sample(&mut rand::rng(), all.len(), want.min(all.len()))
                        .into_vec();
                picked.sort_unstable();
                picked.into_iter().map(|i| all[i]).collect()
            }
        }
    }
}

/// The result for one snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotCheck {
    /// The snapshot id (from the object name when the manifest is unreadable).
    pub id: String,
    /// `None` when the manifest itself could not be read.
    pub manifest: Option<Manifest>,
    /// What is wrong, or `None` if it is intact.
    pub fault: Option<String>,
}

/// What `read_data_subset` read and found.
#[derive(Debug, Clone)]
pub struct DataCheck {
    pub subset: Subset,
    /// Packs the index names that exist.
    pub packs_total: u64,
    /// The packs read, sorted.
    pub packs: Vec<String>,
    pub chunks_checked: u64,
    /// Encoded bytes downloaded.
    pub bytes_read: u64,
    /// Chunks that did not decode or did not match their ids, per pack.
    pub damaged: Vec<DamagedPack>,
    /// The damage record written for damage not recorded before.
    pub recorded: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Newest first; snapshots with unreadable manifests last.
    pub snapshots: Vec<SnapshotCheck>,
    /// Damage not tied to one snapshot: index files and damage records that
    /// do not decode, damage newly found in packs.
    pub repository_faults: Vec<String>,
    pub read_data: bool,
    /// Format 2: `read_data` checked every chunk against its keyed id but
    /// restored nothing (the database's own check runs on restore and drill).
    pub chunks_only: bool,
    /// Present when packs were read with `read_data_subset`.
    pub data: Option<DataCheck>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.repository_faults.is_empty() && self.snapshots.iter().all(|s| s.fault.is_none())
    }
}

/// Checks one repository. `ids` reads metadata (a backup host's
/// [`Keys::metadata_key`](crate::keys::Keys::metadata_key) will do); what
/// [`VerifyOptions::data`] asks for is read with its identity.
pub(crate) async fn verify(
    repo: &Repository,
    ids: &MetadataKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    // A prune running meanwhile would make packs vanish under us.
    let lock = Lock::acquire_for_reading(repo, "verify", opts.lock_wait).await?;
    let result = match repo.keyset() {
        Some(keys) => v2::verify(repo, keys, opts).await,
        None => verify_locked(repo, ids, opts).await,
    };
    Lock::release_optional(lock).await;
    result
}

async fn verify_locked(
    repo: &Repository,
    ids: &MetadataKey,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        read_data: opts.restoring().is_some(),
        ..Default::default()
    };
    // Snapshots first, then the index: every index file a listed snapshot
    // needs was stored before its manifest.
    let listed = repo.snapshot_list(ids).await?;
    let mut manifests = listed.manifests;
    manifests.retain(|m| opts.source.as_deref().is_none_or(|s| m.source == s));
    count(
        &opts.progress,
        |p| &p.snapshots_total,
        manifests.len() as u64,
    );
    if opts.restoring().is_some() {
        let size = manifests.iter().map(|m| m.size).sum();
        count(&opts.progress, |p| &p.bytes_total, size);
    }

    let mut contents: HashMap<String, Vec<(ChunkId, u32, u32)>> = HashMap::new();
    let mut index = repo
        .load_index_with(ids, &[], |_, file| {
            if opts.subset().is_some() {
                for (pack, chunks) in file {
                    contents.entry(pack.clone()).or_default().extend(chunks);
                }
            }
        })
        .await?;
    let packs: HashMap<String, u64> = repo
        .list(PACKS)
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();
    report
        .repository_faults
        .extend(index.unreadable.iter().map(|u| u.to_string()));

    index = check_data(repo, ids, opts, contents, &packs, index, &mut report).await?;
    for m in manifests {
        if let Some(check) = check_snapshot(repo, ids, m, &index, &packs, opts).await? {
            report.snapshots.push(check);
        }
        count(&opts.progress, |p| &p.snapshots_done, 1);
    }
    if opts.source.is_none() {
        report
            .snapshots
            .extend(listed.unreadable.into_iter().map(|u| SnapshotCheck {
                id: u.key.strip_prefix(SNAPSHOTS).unwrap_or(&u.key).to_string(),
                manifest: None,
                fault: Some(u.message),
            }));
    }
    Ok(report)
}

/// With `read_data_subset`, reads its packs, reports damage found for the
/// first time, and returns the index to check snapshots against: one that
/// knows the damage whether or not it could be recorded.
async fn check_data(
    repo: &Repository,
    ids: &MetadataKey,
    opts: &VerifyOptions,
    contents: HashMap<String, Vec<(ChunkId, u32, u32)>>,
    packs: &HashMap<String, u64>,
    index: Index,
    report: &mut VerifyReport,
) -> Result<Index> {
    let (Some((data_ids, subset)), progress) = (opts.subset(), &opts.progress) else {
        return Ok(index);
    };
    let data = read_subset(
        repo,
        data_ids,
        subset,
        contents,
        packs,
        &index.damage,
        progress,
    )
    .await?;
    let mut index = index;
    if !data.damaged.is_empty() {
        for (pack, chunks) in index.damage.unknown(&data.damaged) {
            report.repository_faults.push(format!(
                "pack {pack}: {} chunks do not decode or do not match their ids",
                chunks.len()
            ));
        }
        index = repo.load_index_with(ids, &data.damaged, |_, _| {}).await?;
    }
    report.data = Some(data);
    Ok(index)
}

/// The check of one snapshot: its structure, then with `read_data` a
/// restore of it. `None` when a prune removed it meanwhile.
async fn check_snapshot(
    repo: &Repository,
    ids: &MetadataKey,
    m: Manifest,
    index: &Index,
    packs: &HashMap<String, u64>,
    opts: &VerifyOptions,
) -> Result<Option<SnapshotCheck>> {
    let mut fault = match check_structure(repo, ids, &m, index, packs).await {
        Ok(problems) if problems.is_empty() => None,
        Ok(problems) => Some(summarize(&problems)),
        Err(e) if is_damage(&e) => Some(e.to_string()),
        Err(e) => return Err(e),
    };
    if let (None, Some(data_ids)) = (&fault, opts.restoring()) {
        fault = restore_check(repo, data_ids, &m, &opts.progress).await?;
    }
    if fault.is_some() && !exists(repo, &m).await? {
        tracing::info!(snapshot = %m.id, "removed by a prune while being verified");
        return Ok(None);
    }
    Ok(Some(SnapshotCheck {
        id: m.id.clone(),
        manifest: Some(m),
        fault,
    }))
}

/// Whether the snapshot's manifest is still there (a prune may have
/// removed it while we looked at it, when no lock could be taken).
async fn exists(repo: &Repository, m: &Manifest) -> Result<bool> {
    match repo.head(&format!("{SNAPSHOTS}{}", m.id)).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(repo.storage_err(e)),
    }
}

/// Errors that describe damage to the repository (reported per snapshot),
/// as opposed to failures to reach it (which stop the run).
fn is_damage(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } | Error::Verification(_) | Error::UnsupportedVersion { .. } => true,
        Error::Storage { cause: source, .. } => source.is_not_found(),
        _ => false,
    }
}

fn summarize(problems: &[String]) -> String {
    let mut s = problems
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > 3 {
        s.push_str(&format!("; and {} more", problems.len() - 3));
    }
    s
}

/// Every problem of one snapshot's list against the index and the packs.
async fn check_structure(
    repo: &Repository,
    ids: &MetadataKey,
    m: &Manifest,
    index: &Index,
    packs: &HashMap<String, u64>,
) -> Result<Vec<String>> {
    let list = repo.chunk_list(m, None).await?;
    let mut checks = ChunkChecks::new(index, packs);
    list.read(ids, |item| {
        if let ListItem::Chunk(id, len) = item {
            checks.chunk(id, len);
        }
        Ok(())
    })?;
    let chunks = checks.chunks;
    let mut problems = checks.problems();
    if chunks != m.chunks {
        problems.push(format!(
            "the list has {chunks} chunks, the manifest says {}",
            m.chunks
        ));
    }
    Ok(problems)
}

/// The structural checks of a snapshot's chunks, one at a time, against
/// the index and the listed packs: every problem, each pack named once.
struct ChunkChecks<'a> {
    index: &'a Index,
    packs: &'a HashMap<String, u64>,
    chunks: u64,
    problems: Vec<String>,
    reported_packs: HashSet<String>,
    damaged: HashMap<u32, u64>,
}

impl<'a> ChunkChecks<'a> {
    fn new(index: &'a Index, packs: &'a HashMap<String, u64>) -> ChunkChecks<'a> {
        ChunkChecks {
            index,
            packs,
            chunks: 0,
            problems: Vec::new(),
            reported_packs: HashSet::new(),
            damaged: HashMap::new(),
        }
    }

    /// Checks chunk `id`, which the list says is `len` bytes.
    fn chunk(&mut self, id: ChunkId, len: u32) {
        self.chunks += 1;
        match self.index.get(&id) {
            None => (self.problems).push(format!("chunk {id} is not in any index file")),
            Some(loc) if loc.len != len => self.problems.push(format!(
                "chunk {id}: the list says {len} bytes, the index {}",
                loc.len
            )),
            Some(loc) => {
                let pack = &self.index.packs[loc.pack as usize];
                match self.packs.get(pack) {
                    None if self.reported_packs.insert(pack.clone()) => {
                        self.problems.push(format!("pack {pack} is missing"))
                    }
                    Some(0) if self.reported_packs.insert(pack.clone()) => {
                        self.problems.push(format!("pack {pack} is empty"))
                    }
                    _ if loc.damaged => *self.damaged.entry(loc.pack).or_default() += 1,
                    _ => {}
                }
            }
        }
    }

    /// Every problem found, damaged chunks without an intact copy last.
    fn problems(self) -> Vec<String> {
        let mut problems = self.problems;
        let mut damaged: Vec<(u32, u64)> = self.damaged.into_iter().collect();
        damaged.sort_unstable();
        for (pack, n) in damaged {
            problems.push(format!(
                "{n} of its chunks are damaged in pack {} and no intact copy is stored",
                self.index.packs[pack as usize]
            ));
        }
        problems
    }
}

/// Restores the snapshot into a temporary directory; the fault, if any.
async fn restore_check(
    repo: &Repository,
    ids: &Identities,
    m: &Manifest,
    progress: &Option<Arc<VerifyProgress>>,
) -> Result<Option<String>> {
    let dir = tempfile::Builder::new()
        .prefix("offsite-verify-")
        .tempdir()
        .map_err(|e| Error::io("temporary directory for verify --read-data", e))?;
    let to = dir.path().join(&m.id);
    let mut opts = RestoreOptions::default();
    if let Some(p) = progress {
        opts.progress = p.restored.clone();
    }
    match repo.restore(ids, m, &to, &opts).await {
        Ok(_) => Ok(None),
        Err(e) if is_damage(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Reads the packs `subset` selects among those the index names and that
/// exist, checks every chunk in them and records what is damaged.
async fn read_subset(
    repo: &Repository,
    ids: &Identities,
    subset: Subset,
    contents: HashMap<String, Vec<(ChunkId, u32, u32)>>,
    listed: &HashMap<String, u64>,
    known: &Damage,
    progress: &Option<Arc<VerifyProgress>>,
) -> Result<DataCheck> {
    let mut all: Vec<&str> = contents
        .keys()
        .map(String::as_str)
        .filter(|p| listed.contains_key(*p))
        .collect();
    all.sort_unstable();
    let selected: Vec<String> = subset.select(&all).into_iter().map(String::from).collect();
    count(progress, |p| &p.packs_total, selected.len() as u64);
    let size = selected.iter().map(|k| listed[k]).sum();
    count(progress, |p| &p.bytes_total, size);
    let checks: Vec<PackCheck> = stream::iter(selected.iter().cloned())
        .map(|key| {
            let chunks = contents[&key].clone();
            async move {
                let check = check_pack(repo, ids, key, chunks).await?;
                count(progress, |p| &p.packs_read, check.bytes);
                count(progress, |p| &p.packs_done, 1);
                Ok::<_, Error>(check)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut data = DataCheck {
        subset,
        packs_total: all.len() as u64,
        packs: selected,
        chunks_checked: 0,
        bytes_read: 0,
        damaged: Vec::new(),
        recorded: None,
    };
    for c in checks {
        data.chunks_checked += c.chunks;
        data.bytes_read += c.bytes;
        if !c.damaged.is_empty() {
            data.damaged.push((c.key, c.damaged));
        }
    }
    data.damaged.sort();
    data.recorded = repo.note_damage(ids, known, &data.damaged).await;
    Ok(data)
}

/// What reading one pack found.
struct PackCheck {
    key: String,
    chunks: u64,
    bytes: u64,
    damaged: Vec<ChunkId>,
}

/// Reads one pack and checks each of `chunks` against its id.
async fn check_pack(
    repo: &Repository,
    ids: &Identities,
    key: String,
    chunks: Vec<(ChunkId, u32, u32)>,
) -> Result<PackCheck> {
    let raw = repo.get_bytes(&key).await?;
    let ids = ids.clone();
    tokio::task::spawn_blocking(move || {
        let bytes = raw.len() as u64;
        let (checked, damaged) = check_chunks(&raw, &key, &ids, &ChunkHasher::Plain, chunks)?;
        Ok(PackCheck {
            key,
            chunks: checked,
            bytes,
            damaged,
        })
    })
    .await
    .map_err(|e| Error::io("verify", std::io::Error::other(e.to_string())))?
}

/// Decodes a pack's data (`raw`, a format 1 pack whole or a format 2
/// pack's `DATA`) as a stream and checks each chunk at its offset against
/// its id as `hasher` computes it; returns
/// how many were checked and the ids of those that are damaged. Past a
/// point where the pack stops decoding, every chunk is damaged.
fn check_chunks(
    raw: &[u8],
    key: &str,
    ids: &Identities,
    hasher: &ChunkHasher,
    mut chunks: Vec<(ChunkId, u32, u32)>,
) -> Result<(u64, Vec<ChunkId>)> {
    chunks.sort_unstable_by_key(|(id, off, _)| (*off, *id));
    chunks.dedup();
    let all_damaged = |chunks: &[(ChunkId, u32, u32)]| chunks.iter().map(|c| c.0).collect();
    let mut plain = match codec::decode_reader(raw, ids.iter(), key) {
        Ok(p) => p,
        Err(e @ Error::WrongIdentity { .. }) => return Err(e),
        Err(_) => return Ok((chunks.len() as u64, all_damaged(&chunks))),
    };
    let mut damaged = Vec::new();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    for (i, (id, off, len)) in chunks.iter().enumerate() {
        let off = u64::from(*off);
        if off < pos {
            // Overlaps the chunk before: the index entry is wrong.
            damaged.push(*id);
            continue;
        }
        let skipped = std::io::copy(&mut (&mut plain).take(off - pos), &mut std::io::sink());
        buf.resize(*len as usize, 0);
        let read = skipped.and_then(|n| {
            if n == off - pos {
                plain.read_exact(&mut buf)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            }
        });
        if read.is_err() {
            damaged.extend(chunks[i..].iter().map(|c| c.0));
            break;
        }
        pos = off + u64::from(*len);
        if hasher.id(&buf) != *id {
            damaged.push(*id);
        }
    }
    damaged.sort_unstable();
    damaged.dedup();
    Ok((chunks.len() as u64, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse_and_parts_partition_the_packs() {
        assert_eq!(
            "2/7".parse::<Subset>().unwrap(),
            Subset::Part { n: 2, of: 7 }
        );
        assert_eq!("10%".parse::<Subset>().unwrap(), Subset::Percent(10.0));
        assert_eq!("2.5 %".parse::<Subset>().unwrap(), Subset::Percent(2.5));
        for bad in [
            "0/3", "4/3", "1/0", "3", "x/y", "0%", "101%", "-5%", "", "1/3/5",
        ] {
            assert!(bad.parse::<Subset>().is_err(), "{bad}");
        }
        let keys: Vec<String> = (0..500)
            .map(|i| format!("packs/{i:02x}/{i:064x}"))
            .collect();
        let all: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut seen: Vec<&str> = Vec::new();
        for n in 1..=7 {
            let part = Subset::Part { n, of: 7 }.select(&all);
            assert!(
                part.len() > 40 && part.len() < 110,
                "part {n}: {}",
                part.len()
            );
            assert_eq!(
                part,
                Subset::Part { n, of: 7 }.select(&all),
                "deterministic"
            );
            seen.extend(part);
        }
        seen.sort_unstable();
        let mut expected = all.clone();
        expected.sort_unstable();
        assert!(seen == expected, "every pack in exactly one part");
        assert_eq!(Subset::Percent(10.0).select(&all).len(), 50);
        assert_eq!(
            Subset::Percent(0.1).select(&all[..3]).len(),
            1,
            "at least one"
        );
        assert_eq!(Subset::Percent(100.0).select(&all).len(), all.len());
    }
}
