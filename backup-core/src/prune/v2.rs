//! Prune of a format 2 repository (docs/design/format-v2.md, 3.3 and 4.5),
//! with the keys the repository was opened with, into format 1's report.
//!
//! What differs from format 1 ([`super`]), and why:
//! - Retention sees signed snapshots only ([`Trust::Signed`]): a forged
//!   "newer" snapshot can neither push a real one out of `keep_last` nor be
//!   kept itself. Pins keep signed snapshots as in format 1.
//! - Paths: every kept snapshot needs a path of signed list objects whose
//!   ends are kept snapshots (or `full`), of at most 16 objects and at most
//!   twice the estimated full list ([`path::is_long`]). Where removing
//!   snapshots breaks the only path, or leaves it long, prune writes a
//!   *shortcut* first: `lists/S/d-A` (A the nearest older kept snapshot of
//!   the source whose path is its own full list, when the delta is at most
//!   half the estimated full list and A's full list plus it is not long),
//!   else `lists/S/full`; signed with this host's key (owner or writer),
//!   create-if-absent. S is then rebuilt along the new path and its
//!   `list_blake3` required before anything is deleted.
//! - Live chunks are the chunk ids of the kept snapshots' rebuilt states.
//! - The deletion order is format 1's, step by step: manifests of removed
//!   snapshots, forged manifests, junk manifests, list objects on no kept
//!   path and check records of snapshots not kept, pins of snapshots that
//!   are not signed, key bundles the keyring does not name; new signed index files
//!   naming only live packs, then the old index files that named dead packs
//!   and the rejected ones; dead packs; damage records of deleted packs.
//!
//! Rejected objects (3.3), and what is deleted of them:
//! - a manifest whose signature fails (none, malformed, bad, moved), whose
//!   signer the verified keyring does not list although the manifest claims
//!   that keyring or an older one (writers are never taken off a keyring,
//!   only given `valid_until`), or whose writer was removed before it was
//!   finished, is provably never trustworthy: it is deleted and reported;
//! - a manifest that claims a keyring serial or a generation above the
//!   verified keyring's, or one that does not decode with this host's
//!   metadata keys (it may be a newer generation's), may be genuine and
//!   written under a newer keyring than this host verified: its data cannot
//!   be known, so prune stops before it deletes anything and names it (run
//!   prune again: a key change may have happened since the keys were read;
//!   or, if `offsite verify` on a host holding the newest keyring calls it
//!   FORGED, delete it). A manifest that decodes but does not parse stops
//!   prune as in format 1;
//! - an index file that does not verify is never used, so it protects no
//!   pack; it is deleted with the dirty index files, after the new ones are
//!   written. That is safe even for one written under a newer keyring:
//!   every snapshot that could rely on it would be a manifest of the kind
//!   above, which stops the prune; and keeping it while deleting its packs
//!   would let it, once trusted, make a backup skip chunks that are gone;
//! - a list object that does not verify is on no kept path: deleted with
//!   the other list objects on no kept path.
//!
//! What if:
//! - the target fills up: a shortcut or new index file that does not fit
//!   fails the prune before the deletions it guards (a shortcut before any,
//!   an index file before the old index files); nothing is lost, and the
//!   next prune, with room, goes on;
//! - prune is killed at any step: each step leaves a repository every
//!   reader accepts. Killed after writing shortcuts, the shortcuts are extra
//!   list objects the next prune reuses (create-if-absent finds them; they
//!   are checked by the rebuild like any list object); killed after step 1,
//!   the kept snapshots' paths are whole (their objects are kept); killed
//!   after new index files, the old ones still name only existing packs;
//!   killed while deleting packs, no index file names them; the next prune
//!   finishes the job;
//! - a backup runs concurrently: it cannot; prune holds the exclusive lock
//!   from before it lists snapshots to its last delete (a dry run a shared
//!   one) and checks it is still held before each step that deletes, as in
//!   format 1; backups wait for it;
//! - the repository holds forged objects: they never count (above), and
//!   a forged list object or index file cannot protect anything, since
//!   paths and live chunks come only from signed objects rebuilt to the
//!   signed manifests' `list_blake3`.
//!
//! Never: delete before every kept snapshot rebuilds along its kept path;
//! keep or count a snapshot that is not signed; delete an object that may
//! be genuine under a newer keyring while something could need it.

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use super::{
    decide, finish, junk, orphan_pins, plan_over, IndexView, IndexWriter, PruneOptions,
    PruneReport, Step1,
};
use crate::backup::encoding;
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::keyset::{KeySet, Trust};
use crate::lock::Lock;
use crate::repo::format::list2::object::{encode_delta, encode_full, ListKey};
use crate::repo::format::list2::{Delta, ListState, Named};
use crate::repo::path::{self, ListObject, Plan, FULL_BYTES_PER_CHUNK};
use crate::repo::{
    Cause, IndexV2, Manifest, ManifestV2, Repository, SnapshotsV2, CHECKS, KEYS, LISTS, SNAPSHOTS,
};
use crate::sign::Signer;
use crate::storage::{ErrorKind, PutMode};

/// Prunes the format 2 repository `repo` with the key set it was opened
/// with (see the module doc). Refused before the lock when this host
/// cannot sign (prune writes signed shortcuts and index files).
pub(crate) async fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let ks = repo.keyset().ok_or_else(|| Error::NoFormat2Keys {
        target: repo.describe(),
    })?;
    let signer = ks.require_signer("prune")?;
    let lock = super::lock(repo, opts.dry_run).await?;
    let result = prune_locked(repo, ks, signer, opts, &lock).await;
    lock.release().await;
    result
}

async fn prune_locked(
    repo: &Repository,
    ks: &KeySet,
    signer: &Signer,
    opts: &PruneOptions,
    lock: &Lock,
) -> Result<PruneReport> {
    // The target was opened before the lock: a key change that landed
    // since would make "the bundles the keyring names" the wrong set.
    ks.ensure_current(repo, "prune").await?;
    let all = repo.snapshots_v2(ks).await?;
    let forged = forged_manifests(&all, ks)?;
    let signed: Vec<Manifest> = (all.snapshots.iter())
        .filter(|s| s.trust.is_signed())
        .map(Manifest::from_v2)
        .collect();
    let pins = repo.pinned().await?;
    let mut report = PruneReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let chains = crate::replicate::restore::chains(repo).await?;
    let bases = replica_bases(&signed, &chains, opts);
    let removed: HashSet<String> = (decide(&signed, &pins, &bases, opts, &mut report).into_iter())
        .map(str::to_string)
        .collect();
    let kept: Vec<&ManifestV2> = all.signed().filter(|m| !removed.contains(&m.id)).collect();
    let writing = Shortcuts {
        repo,
        ks,
        signer,
        lock,
        dry_run: opts.dry_run,
    };
    let paths = writing.keep_paths(&kept).await?;
    report.shortcuts_written = paths.shortcuts;
    let (view, index) = read_view(repo, ks).await?;
    let mut plan = plan_over(repo, &view, &index.index, &paths.live).await?;
    plan.rejected_index = index.rejected.clone();
    let step1 = Step1 {
        manifests: removed
            .iter()
            .map(|id| format!("{SNAPSHOTS}{id}"))
            .collect(),
        junk_manifests: junk(&all.unreadable),
        rejected: forged,
        lists: [
            dead_lists(repo, &paths.objects).await?,
            dead_checks(repo, &kept).await?,
            dead_replicas(&chains, &kept),
        ]
        .concat(),
        pins: orphan_pins(&pins, |id| signed.iter().any(|m| m.id == id)),
        bundles: unnamed_bundles(repo, ks).await?,
    };
    finish(repo, IndexWriter::V2(ks), lock, report, step1, plan).await
}

/// The manifests that are not signed and provably never will be, with
/// why; an error naming the first that may be genuine under a newer
/// keyring (or decodes but does not parse): prune deletes nothing then.
fn forged_manifests(all: &SnapshotsV2, ks: &KeySet) -> Result<Vec<(String, String)>> {
    let blocked = |key: &str, why: String| Error::Corrupt {
        key: key.to_string(),
        message: format!(
            "{why}; prune deletes nothing while a snapshot it cannot judge may need data (run \
             prune again: the keys may have changed since it read them; or, if `offsite verify` \
             on a host that holds the newest keyring reports it FORGED, delete it)"
        ),
    };
    if let Some(u) =
        (all.unreadable.iter()).find(|u| !matches!(u.cause, Cause::Empty | Cause::Undecodable))
    {
        return Err(blocked(&u.key, u.message.clone()));
    }
    let mut forged = Vec::new();
    for s in &all.snapshots {
        let reason = match &s.trust {
            Trust::Signed { .. } => continue,
            Trust::Rejected { reason } => reason.clone(),
            Trust::Unsigned => "it is not signed".to_string(),
        };
        let m = &s.manifest;
        if u64::from(m.keyring) > ks.keyring().serial() || m.generation > ks.generation() {
            let why = format!(
                "it claims keyring serial {} and generation {}, newer than the keyring this host \
                 verified (serial {}, generation {}): {reason}",
                m.keyring,
                m.generation,
                ks.keyring().serial(),
                ks.generation()
            );
            return Err(blocked(&m.key(), why));
        }
        forged.push((m.key(), reason));
    }
    Ok(forged)
}

/// The base snapshots whose replica chain reaches into the replication
/// window (its newest point, or the base itself, no older than it).
fn replica_bases(
    signed: &[Manifest],
    chains: &BTreeMap<String, crate::replicate::restore::Chain>,
    opts: &PruneOptions,
) -> HashSet<String> {
    let Some(window) = opts.replica_window else {
        return HashSet::new();
    };
    let since = chrono::Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    (signed.iter())
        .filter(|m| m.tags.iter().any(|t| t == crate::replicate::BASE_TAG))
        .filter(|m| {
            let newest = chains
                .get(&m.id)
                .map_or(m.started, |c| c.newest.max(m.started));
            newest >= since
        })
        .map(|m| m.id.clone())
        .collect()
}

/// The replica objects of bases prune does not keep (removed, forged, or
/// gone): no restore can use them. Deleted with the list objects, after
/// the manifests, so a killed prune leaves only objects without a base.
fn dead_replicas(
    chains: &BTreeMap<String, crate::replicate::restore::Chain>,
    kept: &[&ManifestV2],
) -> Vec<String> {
    let ids: HashSet<&str> = kept.iter().map(|m| m.id.as_str()).collect();
    let mut dead: Vec<String> = (chains.iter())
        .filter(|(base, _)| !ids.contains(base.as_str()))
        .flat_map(|(_, c)| c.keys.iter().cloned())
        .collect();
    dead.sort();
    dead
}

/// The list objects (keys of format 2's two forms) on no kept path.
async fn dead_lists(repo: &Repository, kept: &HashSet<String>) -> Result<Vec<String>> {
    let mut dead: Vec<String> = (repo.list(LISTS).await?.into_iter())
        .map(|m| m.key)
        .filter(|k| ListKey::parse(k).is_some() && !kept.contains(k))
        .collect();
    dead.sort();
    Ok(dead)
}

/// Check records (`checks/<id>/...`) of every snapshot prune does not keep
/// (removed, forged, or a name that is no record's): once its manifest is
/// gone a record vouches for nothing. Deleted with the list objects, after
/// the manifests.
async fn dead_checks(repo: &Repository, kept: &[&ManifestV2]) -> Result<Vec<String>> {
    let ids: HashSet<&str> = kept.iter().map(|m| m.id.as_str()).collect();
    let of_kept = |key: &str| {
        (key.strip_prefix(CHECKS)
            .and_then(|rest| rest.split_once('/')))
        .is_some_and(|(id, _)| ids.contains(id))
    };
    let mut dead: Vec<String> = (repo.list(CHECKS).await?.into_iter())
        .map(|m| m.key)
        .filter(|k| !of_kept(k))
        .collect();
    dead.sort();
    Ok(dead)
}

/// Key bundles the verified keyring does not name: a holder's bundles of
/// older generations, those a killed `key add`, `key remove` or init left,
/// a removed holder's that `key remove` could not delete. No reader uses
/// them (a holder opens the bundle its keyring names), and a key change
/// that is writing a bundle holds a lock that keeps prune out, so none is
/// about to be named; `ks` is the newest keyring, checked after the lock
/// was taken ([`KeySet::ensure_current`]). Deleted after the pins.
async fn unnamed_bundles(repo: &Repository, ks: &KeySet) -> Result<Vec<String>> {
    let body = &ks.keyring().body;
    let mut unnamed: Vec<String> = (repo.list(KEYS).await?.into_iter())
        .map(|m| m.key)
        .filter(|k| !body.names_bundle(k))
        .collect();
    unnamed.sort();
    Ok(unnamed)
}

/// The index as prune needs it, from signed index files only.
async fn read_view(repo: &Repository, ks: &KeySet) -> Result<(IndexView, IndexV2)> {
    let mut view = IndexView::default();
    let index = repo
        .index_v2_with(ks, |key, file| view.add(key, file))
        .await?;
    Ok((view, index))
}

/// What the kept snapshots' paths are made of.
#[derive(Default)]
struct KeptPaths {
    /// Keys of the list objects on a kept path.
    objects: HashSet<String>,
    /// Every chunk a kept snapshot uses.
    live: HashSet<ChunkId>,
    /// Shortcut list objects written (a dry run: that would be written).
    shortcuts: u64,
}

/// A kept snapshot whose path is its own full list: the base of the
/// shortcut deltas of the newer kept snapshots of its source.
struct Base {
    manifest: ManifestV2,
    state: ListState,
    /// The full list's stored size.
    bytes: u64,
}

/// How this prune makes every kept snapshot's path short.
struct Shortcuts<'a> {
    repo: &'a Repository,
    ks: &'a KeySet,
    signer: &'a Signer,
    lock: &'a Lock,
    dry_run: bool,
}

impl Shortcuts<'_> {
    /// Every kept snapshot's path, source by source, oldest first (so a
    /// shortcut's base is settled before the snapshots that need it).
    async fn keep_paths(&self, kept: &[&ManifestV2]) -> Result<KeptPaths> {
        let ids: HashSet<&str> = kept.iter().map(|m| m.id.as_str()).collect();
        let mut objects: Vec<ListObject> = (self.repo.list(LISTS).await?.iter())
            .filter_map(|m| ListObject::from_key(&m.key, m.size))
            .filter(|o| ids.contains(o.snapshot.as_str()))
            .filter(|o| o.from.as_deref().is_none_or(|f| ids.contains(f)))
            .collect();
        let mut sources: BTreeMap<&str, Vec<&ManifestV2>> = BTreeMap::new();
        for m in kept {
            sources.entry(m.source.as_str()).or_default().push(m);
        }
        let mut out = KeptPaths::default();
        for members in sources.values_mut() {
            members.sort_by(|a, b| (a.finished, &a.id).cmp(&(b.finished, &b.id)));
            let mut base: Option<Base> = None;
            for m in members.iter() {
                let (state, plan) = self
                    .keep_one(m, &mut objects, base.as_ref(), &mut out)
                    .await?;
                out.live.extend(chunk_ids(&state));
                out.objects.extend(plan.objects.iter().map(ListObject::key));
                if let [only] = plan.objects.as_slice() {
                    if only.from.is_none() {
                        let manifest = (*m).clone();
                        base = Some(Base {
                            manifest,
                            state,
                            bytes: only.size,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// The state of kept snapshot `m` and its kept path over `objects`,
    /// after writing a shortcut (added to `objects`) when it needs one.
    async fn keep_one(
        &self,
        m: &ManifestV2,
        objects: &mut Vec<ListObject>,
        base: Option<&Base>,
        out: &mut KeptPaths,
    ) -> Result<(ListState, Plan)> {
        let current = self.repo.list_state_among(self.ks, m, objects).await;
        if let Ok((state, plan)) = &current {
            if !too_long(plan, m) {
                return Ok((state.clone(), plan.clone()));
            }
        }
        let state = match current {
            Ok((state, _)) => state,
            // No kept path: rebuild it along any path (the objects of
            // removed snapshots are all still there).
            Err(_) => self
                .repo
                .list_state(self.ks, m)
                .await
                .map_err(|e| blocked(m, e))?,
        };
        let (key, body) = self.shortcut(m, &state, base)?;
        out.shortcuts += 1;
        let object = ListObject::from_key(&key, body.len() as u64).expect("a list object key");
        if self.dry_run {
            let plan = Plan {
                bytes: object.size,
                objects: vec![object],
            };
            return Ok((state, plan));
        }
        self.put(&key, body).await?;
        if !objects.iter().any(|o| o.key() == key) {
            objects.push(object);
        }
        let (state, plan) =
            (self.repo.list_state_among(self.ks, m, objects).await).map_err(|e| blocked(m, e))?;
        Ok((state, plan))
    }

    /// The shortcut for `m`: a delta from `base` when it is small (at most
    /// half the estimated full list) and keeps the path short, else the
    /// full list; as (key, encoded object).
    fn shortcut(
        &self,
        m: &ManifestV2,
        state: &ListState,
        base: Option<&Base>,
    ) -> Result<(String, Vec<u8>)> {
        let metadata = self.ks.metadata_recipient();
        let estimate = FULL_BYTES_PER_CHUNK * state.chunk_count();
        if let Some(b) = base {
            let from = Named {
                snapshot: b.manifest.id.clone(),
                list_blake3: b.manifest.list_blake3,
            };
            let delta = Delta::diff(from, &b.state, &m.id, state);
            let body = encode_delta(&delta, self.signer, &metadata).map_err(encoding)?;
            let len = body.len() as u64;
            if 2 * len <= estimate && !path::is_long(2, b.bytes + len, state.chunk_count()) {
                let key = ListKey::Delta {
                    to: m.id.clone(),
                    from: b.manifest.id.clone(),
                };
                return Ok((key.key(), body));
            }
        }
        let body = encode_full(&m.id, state, self.signer, &metadata).map_err(encoding)?;
        Ok((
            ListKey::Full {
                snapshot: m.id.clone(),
            }
            .key(),
            body,
        ))
    }

    /// Stores a shortcut, create-if-absent: one an interrupted prune left
    /// under that key is kept, and checked by the rebuild that follows.
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.lock.ensure_held().await?;
        match self
            .repo
            .put_bytes(key, Bytes::from(body), PutMode::Create)
            .await
        {
            Err(Error::Storage { cause, .. }) if cause.kind == ErrorKind::AlreadyExists => Ok(()),
            done => done,
        }
    }
}

/// Whether `plan` is too long to keep: long by the format's bounds, unless
/// it is the snapshot's own full list (nothing shorter exists).
fn too_long(plan: &Plan, m: &ManifestV2) -> bool {
    let own_full = matches!(plan.objects.as_slice(), [o] if o.from.is_none());
    !own_full && plan.is_long(m.chunks)
}

fn chunk_ids(state: &ListState) -> impl Iterator<Item = ChunkId> + '_ {
    state
        .nodes()
        .flat_map(|n| n.chunks.iter().map(|(id, _)| *id))
}

/// A kept snapshot whose list cannot be rebuilt: prune deletes nothing.
fn blocked(m: &ManifestV2, cause: Error) -> Error {
    Error::PruneBlocked {
        snapshot: m.id.clone(),
        cause: Box::new(cause),
    }
}
