//! Verify of a format 2 repository (docs/design/format-v2.md, 3.3 and 4.5),
//! with the keys the repository was opened with, into format 1's report.
//!
//! Faults, each of its own (so verify fails on any of them):
//! - a manifest or an index file whose signature is refused (missing, bad,
//!   an unknown or removed signer, a generation above the keyring's): its
//!   text starts with `FORGED: ` and names the object and the reason. A
//!   forged index file's chunks are not used, so a snapshot that needs
//!   them is also at fault ("not in any index file");
//! - an object that does not decode, as format 1 reports it;
//! - a signed snapshot whose list state cannot be rebuilt from signed list
//!   objects, or one of whose chunks is not in the signed index, has the
//!   wrong length, or lies in a pack that is missing or empty.
//!
//! With read data (`ReadData::Snapshots`, or `ReadData::Packs` for a part
//! of the packs): every pack a checked snapshot needs is downloaded once,
//! its `DATA` (found from the footer, [`PackLayout`]) decoded with the key
//! set's data identities, and each needed chunk checked against its keyed
//! id. A writer's key set has no data identities: that is a clear error
//! before anything is read. Damage found is reported (for the pack, and
//! for each snapshot that uses a damaged chunk) and recorded as format 1
//! records it (`damaged/`, to the metadata recipient M), so that the next
//! backup stores those chunks again; that record is all this module writes.
//!
//! Never: count a rejected object as intact, use a chunk from an index
//! file that did not verify, or report damage that was not read.

use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{
    check_chunks, count, is_damage, summarize, ChunkChecks, DataCheck, ReadData, SnapshotCheck,
    Subset, VerifyOptions, VerifyReport, READ_CONCURRENCY,
};
use crate::chunk::{ChunkHasher, ChunkId};
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::keyset::{KeySet, Trust};
use crate::repo::format::pack2::PackLayout;
use crate::repo::format::{Damage, Index};
use crate::repo::{Manifest, ManifestV2, Repository, SnapshotV2, PACKS, SNAPSHOTS};

/// The prefix of every fault about a forged object.
pub const FORGED: &str = "FORGED: ";

/// Chunks a snapshot needs, by pack: (id, offset, length).
type Needs = BTreeMap<String, Vec<(ChunkId, u32, u32)>>;

/// Checks the format 2 repository `repo` with `keys` (see the module doc).
pub(super) async fn verify(
    repo: &Repository,
    keys: &KeySet,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let data_ids = match &opts.data {
        None => None,
        Some(_) => Some(keys.data().ok_or_else(|| {
            Error::Key(
                "verify --read-data needs an identity that can read data; \
                 a writer key cannot: run it with the owner's or a recipient's identity"
                    .into(),
            )
        })?),
    };
    let mut report = VerifyReport {
        read_data: matches!(opts.data, Some(ReadData::Snapshots(_))),
        chunks_only: true,
        ..Default::default()
    };
    // Snapshots before the index, as format 1: what a listed snapshot
    // needs was indexed before its manifest was stored.
    let all = repo.snapshots_v2(keys).await?;
    let index = repo.index_v2(keys).await?;
    let packs: HashMap<String, u64> = (repo.list(PACKS).await?.into_iter())
        .map(|m| (m.key, m.size))
        .collect();
    (report.repository_faults).extend(index.unreadable.iter().map(|u| u.to_string()));
    for (key, reason) in &index.rejected {
        (report.repository_faults).push(format!("{FORGED}{key}: {reason}"));
    }
    let mine = |source: &str| opts.source.as_deref().is_none_or(|s| s == source);
    let signed: Vec<&ManifestV2> = all.signed().filter(|m| mine(&m.source)).collect();
    count(&opts.progress, |p| &p.snapshots_total, signed.len() as u64);
    let mut checked = Vec::new();
    for m in signed {
        checked.push(check_snapshot(repo, keys, m, &index.index, &packs).await?);
        count(&opts.progress, |p| &p.snapshots_done, 1);
    }
    if let Some(ids) = &data_ids {
        let found = Found {
            listed: &packs,
            known: &index.index.damage,
        };
        read_data(repo, keys, ids, opts, &mut checked, found, &mut report).await?;
    }
    report
        .snapshots
        .extend(checked.into_iter().map(|c| c.check));
    for s in all.snapshots.iter().filter(|s| mine(&s.manifest.source)) {
        if let Some(fault) = forged(s.manifest.key(), &s.trust) {
            report.snapshots.push(SnapshotCheck {
                id: s.manifest.id.clone(),
                manifest: Some(Manifest::from_v2(s)),
                fault: Some(fault),
            });
        }
    }
    if opts.source.is_none() {
        report
            .snapshots
            .extend(all.unreadable.into_iter().map(|u| SnapshotCheck {
                id: u.key.strip_prefix(SNAPSHOTS).unwrap_or(&u.key).to_string(),
                manifest: None,
                fault: Some(u.message),
            }));
    }
    Ok(report)
}

/// The fault of a snapshot `key` that is not signed, `None` for a signed one.
fn forged(key: String, trust: &Trust) -> Option<String> {
    match trust {
        Trust::Signed { .. } => None,
        Trust::Rejected { reason } => Some(format!("{FORGED}{key}: {reason}")),
        Trust::Unsigned => Some(format!("{FORGED}{key}: it is not signed")),
    }
}

/// A signed snapshot checked for structure, and the chunks it needs.
struct Checked {
    check: SnapshotCheck,
    needs: Needs,
}

/// The structure of one signed snapshot: its list state, and each of its
/// chunks against the signed index and the listed packs.
async fn check_snapshot(
    repo: &Repository,
    keys: &KeySet,
    m: &ManifestV2,
    index: &Index,
    packs: &HashMap<String, u64>,
) -> Result<Checked> {
    let mut needs = Needs::new();
    let fault = match repo.list_state(keys, m).await {
        Err(e) if is_damage(&e) => Some(format!("snapshot {}: {e}", m.id)),
        Err(e) => return Err(e),
        Ok(state) => {
            let mut checks = ChunkChecks::new(index, packs);
            for (id, len) in state.nodes().flat_map(|n| n.chunks.iter()) {
                checks.chunk(*id, *len);
                if let Some(loc) = index.get(id).filter(|l| l.len == *len) {
                    let pack = index.packs[loc.pack as usize].clone();
                    needs
                        .entry(pack)
                        .or_default()
                        .push((*id, loc.offset, loc.len));
                }
            }
            let chunks = checks.chunks;
            let mut problems = checks.problems();
            if chunks != m.chunks {
                problems.push(format!(
                    "the list has {chunks} chunks, the manifest says {}",
                    m.chunks
                ));
            }
            (!problems.is_empty()).then(|| summarize(&problems))
        }
    };
    Ok(Checked {
        check: SnapshotCheck {
            id: m.id.clone(),
            manifest: Some(Manifest::from_v2(&SnapshotV2 {
                manifest: m.clone(),
                trust: Trust::Signed {
                    writer: m.writer.clone(),
                },
            })),
            fault,
        },
        needs,
    })
}

/// What `read_data` reads against: the packs listed (and their sizes) and
/// the damage already recorded.
#[derive(Clone, Copy)]
struct Found<'a> {
    listed: &'a HashMap<String, u64>,
    known: &'a Damage,
}

/// Reads the packs the structurally intact snapshots need (all of them, or
/// the part `ReadData::Packs` names) and checks their chunks; a damaged
/// chunk is a fault of its pack and of each snapshot that needs it, and is
/// recorded (unless a record names it already) so that the next backup
/// stores it again.
async fn read_data(
    repo: &Repository,
    keys: &KeySet,
    ids: &Identities,
    opts: &VerifyOptions,
    checked: &mut [Checked],
    found: Found<'_>,
    report: &mut VerifyReport,
) -> Result<()> {
    let listed = found.listed;
    let (Some(data), progress) = (&opts.data, &opts.progress) else {
        return Ok(());
    };
    let mut wanted: BTreeMap<String, BTreeSet<(ChunkId, u32, u32)>> = BTreeMap::new();
    for c in checked.iter().filter(|c| c.check.fault.is_none()) {
        for (pack, chunks) in &c.needs {
            wanted.entry(pack.clone()).or_default().extend(chunks);
        }
    }
    let all: Vec<&str> = wanted.keys().map(String::as_str).collect();
    let selected: Vec<String> = match data {
        ReadData::Packs(_, subset) => subset.select(&all),
        ReadData::Snapshots(_) => all.clone(),
    }
    .into_iter()
    .map(String::from)
    .collect();
    count(progress, |p| &p.packs_total, selected.len() as u64);
    let size = selected.iter().filter_map(|k| listed.get(k)).sum();
    count(progress, |p| &p.bytes_total, size);
    let hasher = ChunkHasher::Keyed(keys.chunk_key());
    let results: Vec<(String, u64, u64, Vec<ChunkId>)> = stream::iter(selected.clone())
        .map(|key| {
            let chunks: Vec<_> = wanted[&key].iter().copied().collect();
            async move {
                let checked = check_pack(repo, ids, hasher, key, chunks).await?;
                count(progress, |p| &p.packs_read, checked.2);
                count(progress, |p| &p.packs_done, 1);
                Ok::<_, Error>(checked)
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut damaged_ids: HashSet<ChunkId> = HashSet::new();
    let mut check = DataCheck {
        subset: match data {
            ReadData::Packs(_, subset) => *subset,
            ReadData::Snapshots(_) => Subset::Percent(100.0),
        },
        packs_total: all.iter().filter(|p| listed.contains_key(**p)).count() as u64,
        packs: selected,
        chunks_checked: 0,
        bytes_read: 0,
        damaged: Vec::new(),
        recorded: None,
    };
    for (pack, chunks, bytes, damaged) in results {
        check.chunks_checked += chunks;
        check.bytes_read += bytes;
        if !damaged.is_empty() {
            report.repository_faults.push(format!(
                "pack {pack}: {} chunks do not decode or do not match their ids",
                damaged.len()
            ));
            damaged_ids.extend(&damaged);
            check.damaged.push((pack, damaged));
        }
    }
    check.damaged.sort();
    check.recorded = repo.note_damage(ids, found.known, &check.damaged).await;
    for c in checked.iter_mut().filter(|c| c.check.fault.is_none()) {
        let bad = (c.needs.values().flatten())
            .filter(|(id, _, _)| damaged_ids.contains(id))
            .count();
        if bad > 0 {
            c.check.fault = Some(format!(
                "{bad} of its chunks are damaged (read with --read-data)"
            ));
        }
    }
    if matches!(data, ReadData::Packs(..)) {
        report.data = Some(check);
    }
    Ok(())
}

/// Downloads the v2 pack `key` and checks `chunks` in its `DATA`: (key,
/// chunks checked, bytes read, damaged ids). A footer that is not one
/// makes every chunk damaged.
async fn check_pack(
    repo: &Repository,
    ids: &Identities,
    hasher: ChunkHasher,
    key: String,
    chunks: Vec<(ChunkId, u32, u32)>,
) -> Result<(String, u64, u64, Vec<ChunkId>)> {
    let raw = repo.get_bytes(&key).await?;
    let ids = ids.clone();
    tokio::task::spawn_blocking(move || {
        let size = raw.len() as u64;
        let layout = PackLayout::footer_range(&key, size)
            .and_then(|footer| PackLayout::parse(&key, size, &raw[footer.start as usize..]));
        let (checked, damaged) = match layout {
            Ok(layout) => {
                let data = &raw[..layout.data_len() as usize];
                check_chunks(data, &key, &ids, &hasher, chunks)?
            }
            Err(e) => {
                tracing::warn!("{key}: {e}");
                let all = chunks.iter().map(|c| c.0).collect();
                (chunks.len() as u64, all)
            }
        };
        Ok((key, checked, size, damaged))
    })
    .await
    .map_err(|e| Error::io("verify", std::io::Error::other(e.to_string())))?
}
