//! Snapshots across targets: what `snapshots`, `pin` and a restore read.
//!
//! Every planned target is listed, in the order given (config order), and a
//! snapshot is chosen over (target, manifest) pairs, so an empty or
//! unreachable first target (a rebuilt server's new disk) hides nothing. A
//! target that cannot be opened or listed is passed over and named in
//! [`Listings::passed_over`]; only when none can be read is it an error
//! ([`NoTargetReadable`]).
//!
//! A backup run stores one snapshot (one id) on every target, so the same id
//! on several targets is one snapshot: [`grouped`] lists it once with the
//! targets that hold it, and a restore ([`crate::restore_run::choose`]) takes
//! it from the first of them.
//!
//! Never: hide a target that could not be read, or list a snapshot twice.

use std::collections::{HashMap, HashSet};
use std::error::Error as StdError;
use std::sync::Arc;

use crate::each::{on_target, OnTarget, PlannedTarget, SharedError};
use crate::error::{chain_text, Error};
use crate::keys::{Keys, MetadataKey};
use crate::lock::LockWait;
use crate::repo::{id_matches, newest_first, select, Manifest, Repository, Selector};

/// One target's repository and its snapshots, newest first.
pub struct Listing {
    pub target: String,
    pub repo: Repository,
    pub snapshots: Vec<Manifest>,
    /// The pinned snapshots' ids, when asked for ([`Pins::Read`]).
    pub pinned: HashSet<String>,
}

/// Whether [`list`] reads each target's pins too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pins {
    Read,
    Skip,
}

/// What could be read, and the targets passed over (each error names its
/// target).
pub struct Listings {
    pub listings: Vec<Listing>,
    pub passed_over: Vec<SharedError>,
}

/// No target could be read: the first failure, and the others in words.
#[derive(Debug)]
pub struct NoTargetReadable {
    pub first: SharedError,
    pub also: Vec<String>,
}

impl std::fmt::Display for NoTargetReadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.also.is_empty() {
            // One target: its own error says it all.
            return self.first.fmt(f);
        }
        write!(
            f,
            "no target could be read (also: {})",
            self.also.join("; ")
        )
    }
}

impl StdError for NoTargetReadable {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        if self.also.is_empty() {
            self.first.source()
        } else {
            Some(&*self.first)
        }
    }
}

/// Lists every planned target's snapshots (and pins, with [`Pins::Read`]),
/// in order, passing over those that cannot be opened or read. An error
/// when none can be (or none is planned).
pub async fn list(
    targets: &[PlannedTarget],
    key: &MetadataKey,
    pins: Pins,
) -> Result<Listings, NoTargetReadable> {
    let mut listings = Vec::new();
    let mut passed_over = Vec::new();
    for t in targets {
        match read(t, key, pins).await {
            Ok(l) => listings.push(l),
            Err(e) => passed_over.push(e),
        }
    }
    if listings.is_empty() {
        let mut failed = passed_over.into_iter();
        let Some(first) = failed.next() else {
            return Err(NoTargetReadable {
                first: Arc::new(std::io::Error::other("no target to look in")),
                also: Vec::new(),
            });
        };
        let also = failed.map(|e| chain_text(&*e)).collect();
        return Err(NoTargetReadable { first, also });
    }
    Ok(Listings {
        listings,
        passed_over,
    })
}

async fn read(t: &PlannedTarget, key: &MetadataKey, pins: Pins) -> Result<Listing, SharedError> {
    let repo = t.repo.as_ref().map_err(Arc::clone)?;
    let not_listed = |error| on_target(&t.name, error);
    let snapshots = repo.snapshots(key).await.map_err(not_listed)?;
    let pinned = match pins {
        Pins::Read => repo.pinned().await.map_err(not_listed)?,
        Pins::Skip => HashSet::new(),
    };
    Ok(Listing {
        target: t.name.clone(),
        repo: repo.clone(),
        snapshots,
        pinned,
    })
}

/// Every snapshot (of `source`, when given) across the listings, newest
/// first ([`newest_first`]); one snapshot on several targets in their order.
pub fn all<'a>(listings: &'a [Listing], source: Option<&str>) -> Vec<(&'a Listing, &'a Manifest)> {
    let mut out: Vec<(usize, &Manifest)> = listings
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.snapshots.iter().map(move |m| (i, m)))
        .filter(|(_, m)| source.is_none_or(|s| m.source == s))
        .collect();
    out.sort_by(|(ia, a), (ib, b)| newest_first(a, b).then(ia.cmp(ib)));
    out.into_iter().map(|(i, m)| (&listings[i], m)).collect()
}

/// Every snapshot once, newest first, with the listings that hold it (in
/// their order); the manifest shown is the first target's.
pub fn grouped<'a>(
    listings: &'a [Listing],
    source: Option<&str>,
) -> Vec<(Vec<&'a Listing>, &'a Manifest)> {
    let mut out: Vec<(Vec<&Listing>, &Manifest)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (l, m) in all(listings, source) {
        match at.get(&m.id) {
            Some(&i) => out[i].0.push(l),
            None => {
                at.insert(m.id.clone(), out.len());
                out.push((vec![l], m));
            }
        }
    }
    for (held, _) in &mut out {
        held.sort_by_key(|l| listings.iter().position(|x| std::ptr::eq(x, *l)));
    }
    out
}

/// Why a pin or unpin failed: nothing matched anywhere, or a target failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(transparent)]
    Engine(#[from] Error),
    #[error(transparent)]
    OnTarget(#[from] OnTarget),
}

/// A snapshot pinned or unpinned on one target.
#[derive(Debug)]
pub struct PinChange {
    pub target: String,
    /// The snapshot's full id.
    pub id: String,
    /// `false`: it was pinned already (for a pin).
    pub changed: bool,
}

/// Pins the snapshot `asked` names (an id, or a prefix or suffix of one) on
/// every listed target that holds it: format 1 ones with `keys` (the
/// recipients; `None` when none are configured, which fails there),
/// format 2 ones with their key set, signed snapshots only. Fails when it
/// names no snapshot, or more than one on a target; a failed pin names its
/// target.
pub async fn pin(
    listings: &[Listing],
    keys: Option<&Keys>,
    asked: &str,
) -> Result<Vec<PinChange>, PinError> {
    let mut done = Vec::new();
    for l in listings {
        let id = match select(&l.snapshots, None, &Selector::Id(asked.to_string())) {
            Ok(m) => m.id.clone(),
            Err(Error::SnapshotNotFound(_)) => continue,
            Err(e) => return Err(at(&l.target, e)),
        };
        let changed = pin_one(&l.repo, keys, &id)
            .await
            .map_err(|e| at(&l.target, e))?;
        done.push(PinChange {
            target: l.target.clone(),
            id,
            changed,
        });
    }
    if done.is_empty() {
        return Err(Error::SnapshotNotFound(format!("id {asked}")).into());
    }
    Ok(done)
}

/// Pins `id` on one repository, as its format says.
async fn pin_one(repo: &Repository, keys: Option<&Keys>, id: &str) -> Result<bool, Error> {
    match (repo.keyset(), keys) {
        (Some(_), _) => repo.pin_v2(id, LockWait::default()).await,
        (None, Some(keys)) => repo.pin(keys, id, LockWait::default()).await,
        (None, None) => Err(crate::keys::no_recipients()),
    }
}

/// Removes the pin `asked` names from every opened target that has it
/// (pins are found by name: no key is needed). A target that cannot be
/// opened or read is passed over (in `passed_over`); fails when no pin
/// matches, or more than one on a target.
pub async fn unpin(
    targets: &[PlannedTarget],
    asked: &str,
    passed_over: &mut Vec<SharedError>,
) -> Result<Vec<PinChange>, PinError> {
    let mut done = Vec::new();
    for t in targets {
        let repo = match &t.repo {
            Ok(repo) => repo,
            Err(e) => {
                passed_over.push(e.clone());
                continue;
            }
        };
        let pinned = repo.pinned().await.map_err(|e| at(&t.name, e))?;
        let mut hits: Vec<&String> = pinned.iter().filter(|p| id_matches(p, asked)).collect();
        hits.sort();
        let id = match hits.as_slice() {
            [] => continue,
            [id] => (*id).clone(),
            many => {
                let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                let e = Error::AmbiguousSnapshot(asked.to_string(), many.join(", "));
                return Err(at(&t.name, e));
            }
        };
        repo.unpin(&id).await.map_err(|e| at(&t.name, e))?;
        done.push(PinChange {
            target: t.name.clone(),
            id,
            changed: true,
        });
    }
    if done.is_empty() {
        return Err(Error::NotPinned(asked.to_string()).into());
    }
    Ok(done)
}

fn at(target: &str, error: Error) -> PinError {
    PinError::OnTarget(OnTarget {
        target: target.to_string(),
        error,
    })
}
