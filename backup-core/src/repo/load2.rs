//! Reading a format 2 repository's metadata (docs/design/format-v2.md, 3.3,
//! 4.3 and 4.6): the snapshot list with each manifest's [`Trust`], the
//! index built from signed index files, and a snapshot's list state rebuilt
//! along the cheapest path of list objects. Every format 2 operation reads
//! them through here, so each judges forged objects the same way.
//!
//! Listing, downloading (a download shorter than the listed size is a
//! transient failure, never judged), ordering (newest first, [`newest_first`])
//! and the skipping of what does not decode are format 1's
//! (`super::load`). What format 2 adds is the signature:
//! - an object that does not decode or parse (empty, not age, encrypted to
//!   no identity held, not what its prefix holds) is [`Unreadable`], as in
//!   format 1;
//! - an object that decodes but whose signature line is missing or bad, or
//!   whose signer the keyring does not list, was removed before the
//!   manifest's `finished`, or whose `generation` is above the keyring's,
//!   is *rejected*: a manifest is listed with [`Trust::Rejected`] (and the
//!   reason), an index file goes to [`IndexV2::rejected`] and its chunks are
//!   not used, a list object is dropped from the path.
//!
//! Unlike format 1, nothing here turns "every object is encrypted to other
//! keys" into [`crate::error::Error::WrongIdentity`]: a format 2 reader's
//! keys were checked against the verified keyring, so such objects are junk
//! (or written under a keyring newer than the one found), not a sign of the
//! wrong identity.
//!
//! A rejected manifest's fields are what its object says, unverified, so it
//! can be named and shown; its `id` is always its key's. Nothing may use
//! them beyond that: every operation acts on [`Trust::Signed`] snapshots only.
//!
//! Never: build the index from an index file that did not verify, return a
//! list state whose `list_blake3` is not the manifest's, or apply a list
//! object whose signer is not trusted for that manifest. A damaged or
//! forged list object costs another path (or a clear error naming the
//! snapshot), never a wrong state.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::format::list2::object::{self as list_object, ListObject as Decoded, ListObjectError};
use super::format::list2::{ListState, Named};
use super::format::manifest2::{self, ManifestError, ManifestV2};
use super::format::pack2::{IndexFile, PackFormatError};
use super::format::sealed::{SealedError, WINDOW_LOG_MAX};
use super::format::{Index, PackContents};
use super::load::{newest_first, warn_skipped, Cause, Dated, Unreadable, EMPTY, INDEX_ROUNDS};
use super::path::{self, ListObject};
use super::{id_matches, Repository, Selector, INDEX, LISTS, PRE_RESTORE_TAG, SNAPSHOTS};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::{MetadataKey, SignerPublic};
use crate::keyset::{KeySet, Trust};
use crate::storage::ObjectMeta;

/// A format 2 snapshot as read: its manifest and whether it is trusted.
#[derive(Debug, Clone)]
pub struct SnapshotV2 {
    pub manifest: ManifestV2,
    pub trust: Trust,
}

impl Dated for SnapshotV2 {
    fn time(&self) -> DateTime<Utc> {
        self.manifest.finished
    }
    fn id(&self) -> &str {
        &self.manifest.id
    }
}

/// The snapshots of a format 2 repository.
#[derive(Debug, Clone, Default)]
pub struct SnapshotsV2 {
    /// Newest first (the same order v1's `snapshots` uses), trusted and rejected alike.
    pub snapshots: Vec<SnapshotV2>,
    /// Objects under snapshots/ that did not decode or parse (as v1's `Unreadable`).
    pub unreadable: Vec<Unreadable>,
}

impl SnapshotsV2 {
    /// The trusted ones, newest first.
    pub fn signed(&self) -> impl Iterator<Item = &ManifestV2> {
        self.snapshots
            .iter()
            .filter(|s| s.trust.is_signed())
            .map(|s| &s.manifest)
    }

    /// The signed snapshots of `source` (all when `None`) that `--latest`
    /// and `--at` choose among, newest first: pre-restore snapshots pass
    /// over them (format 1's [`super::regular`]), and so do rejected ones.
    pub fn regular_signed<'a, 's: 'i, 'i>(
        &'a self,
        source: Option<&'s str>,
    ) -> impl Iterator<Item = &'a SnapshotV2> + 'i
    where
        'a: 'i,
    {
        self.snapshots.iter().filter(move |s| {
            let m = &s.manifest;
            s.trust.is_signed()
                && source.is_none_or(|src| m.source == src)
                && !m.tags.iter().any(|t| t == PRE_RESTORE_TAG)
        })
    }

    /// The newest signed regular snapshot of `source`: what `--latest`
    /// restores. A newer rejected one is passed over (and was warned
    /// about when listed).
    pub fn latest_signed(&self, source: Option<&str>) -> Option<&SnapshotV2> {
        self.regular_signed(source).next()
    }

    /// The snapshot `sel` picks, as format 1's [`super::select`]: `Latest`
    /// and `At` among the signed regular ones only; an `Id` among all, so
    /// that asking for a rejected one by id finds it and restoring it is
    /// refused with its reason.
    pub fn select(&self, source: Option<&str>, sel: &Selector) -> Result<&SnapshotV2> {
        let any = source.unwrap_or("any source");
        match sel {
            Selector::Latest => self
                .latest_signed(source)
                .ok_or_else(|| Error::SnapshotNotFound(format!("signed, of {any}"))),
            Selector::At(t) => (self.regular_signed(source))
                .find(|s| s.manifest.finished <= *t)
                .ok_or_else(|| {
                    Error::SnapshotNotFound(format!("signed, of {any} at or before {t}"))
                }),
            Selector::Id(id) => {
                let hits: Vec<&SnapshotV2> = (self.snapshots.iter())
                    .filter(|s| source.is_none_or(|src| s.manifest.source == src))
                    .filter(|s| id_matches(&s.manifest.id, id))
                    .collect();
                match hits.as_slice() {
                    [one] => Ok(one),
                    [] => Err(Error::SnapshotNotFound(format!("id {id}"))),
                    many => Err(Error::AmbiguousSnapshot(
                        id.clone(),
                        (many.iter().map(|s| s.manifest.id.as_str()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    )),
                }
            }
        }
    }
}

/// The index of a format 2 repository.
#[derive(Debug, Clone, Default)]
pub struct IndexV2 {
    /// Built from signed index files only (the v1 `Index` type, damage preference as v1).
    pub index: Index,
    /// Index files whose signature was refused: (key, reason).
    pub rejected: Vec<(String, String)>,
    pub unreadable: Vec<Unreadable>,
}

/// Why a signed object was not used.
#[derive(Debug)]
enum Refusal {
    /// It decodes, but its signature does not count: the reason.
    Rejected(String),
    Unreadable(Unreadable),
}

/// Judges a failed read of the signed object `key` (stored as `raw`):
/// `sealed` is the sealing layer's error when the failure was there,
/// `message` the error's text.
fn refusal(key: &str, raw: &[u8], sealed: Option<&SealedError>, message: String) -> Refusal {
    let cause = match sealed {
        _ if raw.is_empty() => Cause::Empty,
        Some(SealedError::Signature(_)) => return Refusal::Rejected(message),
        Some(SealedError::Codec(Error::WrongIdentity { .. })) => Cause::WrongIdentity,
        Some(SealedError::Codec(_)) => Cause::Undecodable,
        Some(SealedError::TooLarge { .. }) | None => Cause::Unparseable,
    };
    Refusal::Unreadable(Unreadable {
        key: key.to_string(),
        cause,
        message: match cause {
            Cause::Empty => EMPTY.into(),
            _ => message,
        },
    })
}

fn manifest_sealed(e: &ManifestError) -> Option<&SealedError> {
    match e {
        ManifestError::Sealed(s) => Some(s),
        _ => None,
    }
}

fn index_sealed(e: &PackFormatError) -> Option<&SealedError> {
    match e {
        PackFormatError::Sealed(s) => Some(s),
        _ => None,
    }
}

fn list_sealed(e: &ListObjectError) -> Option<&SealedError> {
    match e {
        ListObjectError::Sealed(s) => Some(s),
        _ => None,
    }
}

impl Repository {
    /// Every snapshot of this format 2 repository with its trust, newest
    /// first, and the manifests that do not decode or parse.
    pub async fn snapshots_v2(&self, keys: &KeySet) -> Result<SnapshotsV2> {
        let listed = self.list(SNAPSHOTS).await?;
        let (ids, verifier) = (keys.metadata_key(), keys.verifier());
        let read: Vec<Option<std::result::Result<SnapshotV2, Unreadable>>> = stream::iter(listed)
            .map(|meta| {
                let (ids, verifier) = (&ids, &verifier);
                async move {
                    let Some(raw) = self.get_listed_or_gone(&meta).await? else {
                        return Ok(None);
                    };
                    Ok::<_, Error>(Some(judge_manifest(&meta.key, &raw, ids, verifier, keys)))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut out = SnapshotsV2::default();
        for r in read.into_iter().flatten() {
            match r {
                Ok(s) => out.snapshots.push(s),
                Err(u) => out.unreadable.push(u),
            }
        }
        for u in &out.unreadable {
            warn_skipped(u);
        }
        for s in &out.snapshots {
            if let Trust::Rejected { reason } = &s.trust {
                tracing::warn!("skipping {}: {reason}", s.manifest.key());
            }
        }
        out.snapshots.sort_by(newest_first);
        out.unreadable.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Snapshot `id` (a full id) of this format 2 repository with its
    /// trust, its one manifest read and judged as [`Repository::snapshots_v2`]
    /// judges each: [`Error::SnapshotNotFound`] when there is none,
    /// [`Error::Corrupt`] when it does not decode or parse.
    pub async fn snapshot_v2(&self, keys: &KeySet, id: &str) -> Result<SnapshotV2> {
        let key = format!("{SNAPSHOTS}{id}");
        let raw = match self.get_bytes(&key).await {
            Ok(raw) => raw,
            Err(Error::Storage { cause, .. }) if cause.is_not_found() => {
                return Err(Error::SnapshotNotFound(format!("id {id}")))
            }
            Err(e) => return Err(e),
        };
        judge_manifest(&key, &raw, &keys.metadata_key(), &keys.verifier(), keys).map_err(|u| {
            Error::Corrupt {
                key: u.key,
                message: u.message,
            }
        })
    }

    /// The index of this format 2 repository: every index file that
    /// decodes and verifies, merged with format 1's damage preference.
    /// Index files that vanish while read (a prune rewrote them) make the
    /// listing be read again, as in format 1.
    pub async fn index_v2(&self, keys: &KeySet) -> Result<IndexV2> {
        self.index_v2_with(keys, |_, _| {}).await
    }

    /// [`Repository::index_v2`], handing each index file that verifies,
    /// whole, to `each` with its key (prune needs to know which packs each
    /// file names).
    pub async fn index_v2_with(
        &self,
        keys: &KeySet,
        mut each: impl FnMut(&str, &[PackContents]),
    ) -> Result<IndexV2> {
        let ids = keys.metadata_key();
        let verifier = keys.verifier();
        let (damage, mut unreadable) = self.read_damage(&ids).await?;
        let mut out = IndexV2 {
            index: Index::new(damage),
            ..Default::default()
        };
        let mut done: HashSet<String> = HashSet::new();
        for round in 1..=INDEX_ROUNDS {
            let todo: Vec<ObjectMeta> = (self.list(INDEX).await?.into_iter())
                .filter(|m| !done.contains(&m.key))
                .collect();
            let mut fetched = stream::iter(todo)
                .map(|meta| async move {
                    let raw = self.get_listed_or_gone(&meta).await;
                    (meta.key, raw)
                })
                .buffer_unordered(4);
            let mut vanished = false;
            while let Some((key, raw)) = fetched.next().await {
                let Some(raw) = raw? else {
                    vanished = true;
                    continue;
                };
                match IndexFile::decode(&key, &raw, ids.iter(), &verifier) {
                    Ok((file, _)) => {
                        let contents = file.contents();
                        each(&key, &contents);
                        out.index.merge(&contents);
                    }
                    Err(e) => match refusal(&key, &raw, index_sealed(&e), e.to_string()) {
                        Refusal::Rejected(reason) => out.rejected.push((key.clone(), reason)),
                        Refusal::Unreadable(u) => unreadable.push(u),
                    },
                }
                done.insert(key);
            }
            if !vanished {
                break;
            }
            tracing::debug!(round, "index files vanished while reading them (a prune rewrote the index); listing again");
        }
        for u in &unreadable {
            warn_skipped(u);
        }
        for (key, reason) in &out.rejected {
            tracing::warn!("skipping {key}: {reason}; its chunks are not used");
        }
        unreadable.sort_by(|a, b| a.key.cmp(&b.key));
        out.rejected.sort();
        out.unreadable = unreadable.clone();
        out.index.unreadable = unreadable;
        Ok(out)
    }

    /// The full list state of `manifest`'s snapshot: one listing of `lists/`, then the cheapest
    /// path (`repo::path::plan`) of list objects, each decoded and verified (signer trusted by
    /// `keys.trust(signer, manifest.finished)`), applied, and the end state's list_blake3
    /// required to equal the manifest's; a path whose objects fail is retried without them.
    /// Error (Error::Corrupt naming the snapshot) when no path works.
    pub async fn list_state(&self, keys: &KeySet, manifest: &ManifestV2) -> Result<ListState> {
        let objects: Vec<ListObject> = (self.list(LISTS).await?.iter())
            .filter_map(|m| ListObject::from_key(&m.key, m.size))
            .collect();
        let (state, _) = self.list_state_among(keys, manifest, &objects).await?;
        Ok(state)
    }

    /// [`Repository::list_state`] over `objects` only (a listing of
    /// `lists/`, perhaps narrowed: prune plans over the objects that join
    /// kept snapshots), and the path that rebuilt the state.
    pub async fn list_state_among(
        &self,
        keys: &KeySet,
        manifest: &ManifestV2,
        objects: &[ListObject],
    ) -> Result<(ListState, path::Plan)> {
        let sizes: HashMap<String, ObjectMeta> = (objects.iter())
            .map(|o| {
                (
                    o.key(),
                    ObjectMeta {
                        key: o.key(),
                        size: o.size,
                    },
                )
            })
            .collect();
        let mut walk = Walk {
            repo: self,
            keys,
            manifest,
            ids: keys.metadata_key(),
            verifier: keys.verifier(),
            sizes,
            decoded: HashMap::new(),
            skip: HashSet::new(),
            failures: Vec::new(),
        };
        while let Some(plan) = path::plan(objects, &manifest.id, &walk.skip) {
            let keys: Vec<String> = plan.objects.iter().map(ListObject::key).collect();
            if let Some(state) = walk.try_path(&keys).await? {
                return Ok((state, plan));
            }
        }
        let tried = match walk.failures.as_slice() {
            [] => "no list object leads to it".to_string(),
            f => f.join("; "),
        };
        Err(Error::Corrupt {
            key: manifest.key(),
            message: format!("no path of list objects rebuilds its list: {tried}"),
        })
    }

    /// Downloads a listed object ([`Repository::get_listed`]); `None` when
    /// it was deleted since the listing.
    pub(crate) async fn get_listed_or_gone(
        &self,
        meta: &ObjectMeta,
    ) -> Result<Option<bytes::Bytes>> {
        match self.get_listed(meta).await {
            Ok(raw) => Ok(Some(raw)),
            Err(Error::Storage { cause, .. }) if cause.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// One manifest as read: its snapshot and trust, or why it is unreadable.
fn judge_manifest(
    key: &str,
    raw: &[u8],
    ids: &MetadataKey,
    verifier: &crate::sign::Verifier,
    keys: &KeySet,
) -> std::result::Result<SnapshotV2, Unreadable> {
    let (manifest, signer) = match ManifestV2::decode(key, raw, ids.iter(), verifier) {
        Ok(read) => read,
        Err(e) => match refusal(key, raw, manifest_sealed(&e), e.to_string()) {
            Refusal::Rejected(reason) => {
                let manifest = unverified_manifest(key, raw, ids).ok_or_else(|| Unreadable {
                    key: key.to_string(),
                    cause: Cause::Unparseable,
                    message: format!("{reason}; and its body is not a manifest"),
                })?;
                let trust = Trust::Rejected { reason };
                return Ok(SnapshotV2 { manifest, trust });
            }
            Refusal::Unreadable(u) => return Err(u),
        },
    };
    let trust = match keys.trust(&signer, manifest.finished) {
        Trust::Signed { .. } if manifest.generation > keys.generation() => Trust::Rejected {
            reason: format!(
                "its generation {} is above the keyring's current one ({}): it claims a \
                 keyring newer than the one found",
                manifest.generation,
                keys.generation()
            ),
        },
        trust => trust,
    };
    Ok(SnapshotV2 { manifest, trust })
}

/// The manifest a rejected object `key` claims to hold, read without its
/// signature, only to name and show it: its `id` is set to the key's (a
/// manifest moved from another name is listed under the name it is at).
fn unverified_manifest(key: &str, raw: &[u8], ids: &MetadataKey) -> Option<ManifestV2> {
    let reader = codec::decode_reader_bounded(raw, ids.iter(), key, WINDOW_LOG_MAX).ok()?;
    let mut plain = Vec::new();
    (reader.take(manifest2::MAX_BYTES as u64 + 1))
        .read_to_end(&mut plain)
        .ok()?;
    let text = std::str::from_utf8(&plain).ok()?;
    // The body is everything before a last line that looks like a
    // signature line (or everything, when there is none).
    let trimmed = text.strip_suffix('\n')?;
    let body = match trimmed.rsplit_once('\n') {
        Some((body, last)) if last.starts_with("offsite-signature ") => &text[..body.len() + 1],
        _ if trimmed.starts_with("offsite-signature ") => return None,
        _ => text,
    };
    let id = key.strip_prefix(SNAPSHOTS)?;
    match ManifestV2::parse(key, body.as_bytes()) {
        Ok(m) => Some(m),
        Err(ManifestError::WrongKey { id: claimed, .. }) => {
            let mut m =
                ManifestV2::parse(&format!("{SNAPSHOTS}{claimed}"), body.as_bytes()).ok()?;
            m.id = id.to_string();
            Some(m)
        }
        Err(_) => None,
    }
}

/// The state of one [`Repository::list_state`]: what was decoded (shared
/// by the paths tried) and what failed.
struct Walk<'a> {
    repo: &'a Repository,
    keys: &'a KeySet,
    manifest: &'a ManifestV2,
    ids: MetadataKey,
    verifier: crate::sign::Verifier,
    sizes: HashMap<String, ObjectMeta>,
    decoded: HashMap<String, Arc<Decoded>>,
    /// Objects no path may use again.
    skip: HashSet<String>,
    failures: Vec<String>,
}

impl Walk<'_> {
    /// The state along the path `keys`, or `None` when an object of it
    /// failed (then in `skip`, so the next plan avoids it).
    async fn try_path(&mut self, keys: &[String]) -> Result<Option<ListState>> {
        let Some(objects) = self.fetch_all(keys).await? else {
            return Ok(None);
        };
        match rebuild(&objects) {
            Ok(state) if state.list_blake3() == self.manifest.list_blake3 => Ok(Some(state)),
            Ok(_) => {
                let culprit = culprit(&objects, keys);
                self.fail(
                    &culprit,
                    "the list it leads to is not the manifest's list_blake3",
                );
                Ok(None)
            }
            Err((i, e)) => {
                self.fail(&keys[i], &e);
                Ok(None)
            }
        }
    }

    /// The decoded objects of `keys`, downloading those not held yet;
    /// `None` when one fails (it is then in `skip`).
    async fn fetch_all(&mut self, keys: &[String]) -> Result<Option<Vec<Arc<Decoded>>>> {
        let missing: Vec<ObjectMeta> = (keys.iter())
            .filter(|k| !self.decoded.contains_key(*k))
            .filter_map(|k| self.sizes.get(k).cloned())
            .collect();
        let repo = self.repo;
        let fetched: Vec<(String, Option<bytes::Bytes>)> = stream::iter(missing)
            .map(|meta| async move {
                Ok::<_, Error>((meta.key.clone(), repo.get_listed_or_gone(&meta).await?))
            })
            .buffered(4)
            .try_collect()
            .await?;
        let mut ok = true;
        for (key, raw) in fetched {
            match raw.map(|raw| self.decode(&key, &raw)) {
                Some(Ok(object)) => {
                    self.decoded.insert(key, Arc::new(object));
                }
                Some(Err(reason)) => {
                    self.fail(&key, &reason);
                    ok = false;
                }
                None => {
                    self.fail(&key, "deleted since it was listed");
                    ok = false;
                }
            }
        }
        Ok(ok.then(|| keys.iter().map(|k| self.decoded[k].clone()).collect()))
    }

    /// One list object, decoded, verified and its signer trusted for the
    /// manifest; the reason when not.
    fn decode(&self, key: &str, raw: &[u8]) -> std::result::Result<Decoded, String> {
        let (object, signer): (Decoded, SignerPublic) =
            list_object::decode(key, raw, self.ids.iter(), &self.verifier).map_err(|e| {
                match refusal(key, raw, list_sealed(&e), e.to_string()) {
                    Refusal::Rejected(reason) => format!("rejected: {reason}"),
                    Refusal::Unreadable(u) => u.message,
                }
            })?;
        match self.keys.trust(&signer, self.manifest.finished) {
            Trust::Signed { .. } => Ok(object),
            Trust::Rejected { reason } => Err(format!("rejected: {reason}")),
            Trust::Unsigned => Err("rejected: not signed".into()),
        }
    }

    fn fail(&mut self, key: &str, reason: &str) {
        tracing::warn!(
            "skipping {key} for snapshot {}: {reason}; trying another path",
            self.manifest.id
        );
        self.failures.push(format!("{key}: {reason}"));
        self.skip.insert(key.to_string());
    }
}

/// The state the decoded path `objects` (a full list, then deltas) leads
/// to, each delta applied to the state before it; the index of the object
/// that failed, and why, when one does not apply.
fn rebuild(objects: &[Arc<Decoded>]) -> std::result::Result<ListState, (usize, String)> {
    let mut at = None;
    for (i, object) in objects.iter().enumerate() {
        at = Some(step(at, object).map_err(|e| (i, e))?);
    }
    at.map(|(_, state)| state)
        .ok_or_else(|| (0, "an empty path".to_string()))
}

/// One object applied: a full list starts the path, a delta goes on from
/// the state held (named as its object claims).
fn step(
    held: Option<(Named, ListState)>,
    object: &Decoded,
) -> std::result::Result<(Named, ListState), String> {
    match (held, object) {
        (None, Decoded::Full { named, state }) => Ok((named.clone(), state.clone())),
        (Some((named, state)), Decoded::Delta(d)) => {
            let next = d.apply(&named, &state).map_err(|e| e.to_string())?;
            Ok((d.to().clone(), next))
        }
        (None, Decoded::Delta(_)) => Err("a path must start at a full list".into()),
        (Some(_), Decoded::Full { .. }) => Err("a full list in the middle of a path".into()),
    }
}

/// Which object of a path whose end state does not match the manifest is
/// at fault: the first whose result is not the state it claims, else the
/// last (it claims to end at a list the manifest does not name).
fn culprit(objects: &[Arc<Decoded>], keys: &[String]) -> String {
    let mut held: Option<(Named, ListState)> = None;
    for (i, object) in objects.iter().enumerate() {
        let Ok((named, state)) = step(held.take(), object) else {
            return keys[i].clone();
        };
        if state.list_blake3() != named.list_blake3 {
            return keys[i].clone();
        }
        held = Some((named, state));
    }
    keys[keys.len() - 1].clone()
}
