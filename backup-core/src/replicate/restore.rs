//! Restoring a replicated point: a base snapshot, then the replica objects
//! of its chain up to the asked instant, applied page by page to the
//! staged copy before it is checked and put in place.
//!
//! Planning reads listings only (an object's key names its base, level,
//! steps and instant): from the base, the object that starts at the next
//! step and reaches furthest without passing the instant is taken, so a
//! chain of an hour of one-second steps is read as about a dozen level 2
//! objects, a few level 1 and at most a window of level 0 ones. The chain
//! ends at its first missing step: a lost tail costs only itself.
//!
//! Never: apply an object that does not verify ([`super::object`]), is
//! signed by a signer the key set does not trust at its instant, is of
//! another source or page size than the base, or follows a gap; or let the
//! restored copy skip the database's own check (the replayed state has no
//! signed check record).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use super::object::{self, ReplicaKey, REPLICA};
use crate::error::{Error, Result};
use crate::keyset::{KeySet, Trust};
use crate::repo::Repository;

/// The replica objects a restore applies on top of a base, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    pub base: String,
    pub objects: Vec<ReplicaKey>,
}

impl ReplayPlan {
    /// The instant of the restored state (`None`: the base's own).
    pub fn at(&self) -> Option<DateTime<Utc>> {
        self.objects.last().map(|k| k.at)
    }

    /// The number of steps the objects cover.
    pub fn steps(&self) -> u64 {
        self.objects.last().map_or(0, |k| k.last)
    }
}

/// The objects of `keys` (one base's) that bring the base to the newest
/// state at or before `until` (`None`: the newest there is).
pub fn choose(mut keys: Vec<ReplicaKey>, until: Option<DateTime<Utc>>) -> Vec<ReplicaKey> {
    keys.retain(|k| until.is_none_or(|u| k.at <= u));
    // By first step, then the furthest reach first.
    keys.sort_by(|a, b| a.first.cmp(&b.first).then(b.last.cmp(&a.last)));
    let mut chosen = Vec::new();
    let mut at = 0u64;
    let mut i = 0;
    while i < keys.len() {
        let start = at + 1;
        while i < keys.len() && keys[i].first < start {
            i += 1;
        }
        match keys.get(i) {
            Some(k) if k.first == start => {
                at = k.last;
                chosen.push(k.clone());
            }
            _ => break, // a gap: the chain ends here
        }
    }
    chosen
}

/// One base's replica objects on a target.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Their keys.
    pub keys: Vec<String>,
    /// The newest instant any of them holds.
    pub newest: DateTime<Utc>,
}

/// Every base's replica objects on `repo` (keys that do not parse are left
/// out: no reader uses them).
pub async fn chains(repo: &Repository) -> Result<std::collections::BTreeMap<String, Chain>> {
    let mut chains: std::collections::BTreeMap<String, Chain> = Default::default();
    for meta in repo.list(REPLICA).await? {
        let Some(key) = ReplicaKey::parse(&meta.key) else {
            continue;
        };
        let chain = chains.entry(key.base.clone()).or_default();
        chain.newest = chain.newest.max(key.at);
        chain.keys.push(meta.key);
    }
    Ok(chains)
}

/// The replay of base `base` on `repo` up to `until`.
pub async fn plan(
    repo: &Repository,
    base: &str,
    until: Option<DateTime<Utc>>,
) -> Result<ReplayPlan> {
    let prefix = format!("{REPLICA}{base}/");
    let keys: Vec<ReplicaKey> = (repo.list(&prefix).await?.iter())
        .filter_map(|m| ReplicaKey::parse(&m.key))
        .filter(|k| k.base == base)
        .collect();
    Ok(ReplayPlan {
        base: base.to_string(),
        objects: choose(keys, until),
    })
}

/// Applies `plan`'s objects, downloaded a few at a time and verified, to
/// the staged database `file` restored from the base (source `source`,
/// pages of `page_size`).
pub async fn apply(
    repo: &Repository,
    keys: &KeySet,
    plan: &ReplayPlan,
    source: &str,
    page_size: Option<u32>,
    file: &Path,
) -> Result<()> {
    let staged = crate::restore::open_staged(file, true)
        .map_err(|e| Error::io("opening the restored copy", e))?;
    let mut objects = futures::stream::iter(plan.objects.iter())
        .map(|k| async move { Ok::<_, Error>((k, repo.get_bytes(&k.to_key()).await?)) })
        .buffered(4);
    while let Some((key, raw)) = objects.try_next().await? {
        apply_one(keys, key, &raw, source, page_size, &staged)?;
    }
    staged
        .sync_all()
        .map_err(|e| Error::io("syncing the restored copy", e))
}

fn apply_one(
    keys: &KeySet,
    key: &ReplicaKey,
    raw: &[u8],
    source: &str,
    page_size: Option<u32>,
    staged: &File,
) -> Result<()> {
    let name = key.to_key();
    let refuse = |message: String| Error::Corrupt {
        key: name.clone(),
        message,
    };
    let ids = keys.metadata_key();
    let (meta, signer, data) = object::open_meta(key, raw, ids.iter(), &keys.verifier())?;
    match keys.trust(&signer, key.at) {
        Trust::Signed { .. } => {}
        Trust::Rejected { reason } => return Err(Error::Untrusted { key: name, reason }),
        Trust::Unsigned => {
            return Err(Error::Untrusted {
                key: name,
                reason: "it is not signed".into(),
            })
        }
    }
    if meta.source != source || page_size.is_some_and(|p| p != meta.page_size) {
        return Err(refuse(
            "it is of another source or page size than its base".into(),
        ));
    }
    let data_ids = keys
        .data()
        .ok_or_else(|| Error::Key("a writer key cannot restore: use an identity".into()))?;
    let pages = object::open_data(&meta, data, data_ids.iter(), &keys.chunk_key())?;
    let size = meta.page_size as u64;
    let mut offset = 0usize;
    for (first, count) in &meta.runs {
        let len = *count as usize * size as usize;
        staged
            .write_all_at(&pages[offset..offset + len], (*first as u64 - 1) * size)
            .map_err(|e| Error::io("writing the restored copy", e))?;
        offset += len;
    }
    staged
        .set_len(meta.size_pages as u64 * size)
        .map_err(|e| Error::io("writing the restored copy", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(level: u8, first: u64, last: u64, at: i64) -> ReplicaKey {
        ReplicaKey {
            base: "20261203T120000Z-0a1b2c3d".into(),
            level,
            first,
            last,
            at: DateTime::from_timestamp(at, 0).unwrap(),
        }
    }

    #[test]
    fn the_furthest_object_is_taken_and_a_gap_ends_the_chain() {
        let mut keys: Vec<ReplicaKey> = (1..=70).map(|n| k(0, n, n, n as i64)).collect();
        keys.push(k(1, 1, 30, 30));
        keys.push(k(1, 31, 60, 60));
        keys.push(k(2, 1, 60, 60));
        let all = choose(keys.clone(), None);
        assert_eq!(all.len(), 11, "{all:?}");
        assert_eq!(all[0], k(2, 1, 60, 60));
        assert_eq!(all.last().unwrap(), &k(0, 70, 70, 70));
        // An instant inside a merged window takes the level below.
        let mid = choose(keys.clone(), DateTime::from_timestamp(45, 0));
        assert_eq!(mid[0], k(1, 1, 30, 30));
        assert_eq!(mid.len(), 1 + 15);
        assert_eq!(mid.last().unwrap().last, 45);
        // Step 65 lost: the chain ends at 64 (the merged objects cover 1-60).
        keys.retain(|x| x.first != 65);
        let gap = choose(keys, None);
        assert_eq!(gap.last().unwrap().last, 64);
        assert!(choose(Vec::new(), None).is_empty());
    }
}
