//! Reading the repository's metadata: the snapshot list, the index and the
//! damage records. Every operation reads them through here, so each gets the
//! same skipping, warnings and ordering.
//!
//! What does not decode is skipped, never fatal: a junk object dropped under
//! `snapshots/` (bucket write access is enough, no key), or an empty index
//! file or manifest left by an older release on a full disk, must not make
//! the genuine snapshots unlistable or unrestorable. Each skipped object is
//! logged as a warning naming its key and returned as an [`Unreadable`], so
//! verify can report it and prune can tell junk (which it may delete) from
//! an object written by a newer offsite (which it never deletes). A failure
//! to *download* an object is not a reason to skip it: storage errors stop
//! the caller, and a download shorter than the listed size is retried as a
//! transient failure, so nothing is ever judged on partial bytes.
//!
//! Ordering, for readers running beside other jobs: a backup stores its
//! index files before its manifest, so a reader that lists snapshots first
//! and loads the index afterwards finds every chunk of every snapshot it
//! listed. An object that vanishes between listing and reading was deleted
//! by a prune: a manifest is then simply gone, and an index file's contents
//! were rewritten into a new file before it was deleted, so the index
//! listing is read again.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::format::{parse_damage, parse_index, Damage, DamagedPack, Index, PackContents};
use super::{Manifest, Repository, DAMAGED, FORMAT_VERSION, INDEX, SNAPSHOTS};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::MetadataKey;
use crate::storage::{ErrorKind, ObjectMeta, StorageError};

/// How often the index listing is read again when index files vanish
/// while it is read (a prune rewriting them).
pub(super) const INDEX_ROUNDS: usize = 4;

/// Why a metadata object was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The object has no bytes.
    Empty,
    /// Not an age file, or its MAC or zstd frame fails: damaged, truncated
    /// or not written by offsite.
    Undecodable,
    /// A well-formed age file that none of the given identities opens.
    WrongIdentity,
    /// It decodes, but is not what objects under its prefix hold.
    Unparseable,
    /// Written by a newer format version than this offsite reads.
    Unsupported,
}

/// A metadata object that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub key: String,
    pub cause: Cause,
    pub message: String,
}

impl Unreadable {
    /// Whether this object is provably not one offsite wrote to this
    /// repository, for a reader holding the metadata identity (every
    /// metadata object offsite writes is encrypted to it): empty, not
    /// decodable, or encrypted to someone else. Such an object holds
    /// nothing any snapshot could need; prune deletes it.
    pub fn junk(&self) -> bool {
        self.cause.junk()
    }
}

impl Cause {
    /// Whether an object skipped for this cause is provably not one offsite
    /// wrote (see [`Unreadable::junk`]).
    pub fn junk(self) -> bool {
        matches!(
            self,
            Cause::Empty | Cause::Undecodable | Cause::WrongIdentity
        )
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The snapshots of a repository: every manifest that reads, newest first,
/// and the manifests that were skipped.
#[derive(Debug, Clone, Default)]
pub struct SnapshotList {
    pub manifests: Vec<Manifest>,
    pub unreadable: Vec<Unreadable>,
}

/// A snapshot, or something said about one, placed in time: what
/// [`newest_first`] orders.
pub trait Dated {
    /// When the snapshot was taken (a manifest's `finished`).
    fn time(&self) -> DateTime<Utc>;
    fn id(&self) -> &str;
}

impl Dated for Manifest {
    fn time(&self) -> DateTime<Utc> {
        self.finished
    }
    fn id(&self) -> &str {
        &self.id
    }
}

impl<T: Dated + ?Sized> Dated for &T {
    fn time(&self) -> DateTime<Utc> {
        (**self).time()
    }
    fn id(&self) -> &str {
        (**self).id()
    }
}

/// The one order of snapshots, newest first: the later time first, at
/// equal times the greater id (ids begin with the time the backup started).
/// Snapshot listings, retention, prune's report and the views across
/// targets all sort by it, so they never disagree on which is newest.
pub fn newest_first<T: Dated>(a: &T, b: &T) -> Ordering {
    b.time().cmp(&a.time()).then_with(|| b.id().cmp(a.id()))
}

/// The outcome of reading one listed object.
enum Fetched<T> {
    Read(T),
    /// Deleted between the listing and the read.
    Gone,
    Skipped(Unreadable),
}

impl Repository {
    /// Every snapshot whose manifest reads, newest first; manifests that do
    /// not are skipped with a warning naming them.
    pub async fn snapshots(&self, ids: &MetadataKey) -> Result<Vec<Manifest>> {
        Ok(self.snapshot_list(ids).await?.manifests)
    }

    /// Every snapshot, and the manifests that were skipped.
    ///
    /// Fails with [`Error::WrongIdentity`] when no manifest reads and some
    /// are encrypted to other keys: that is the wrong identity, not junk.
    ///
    /// A format 2 repository opened with its key set lists through
    /// [`Repository::snapshots_v2`]: every manifest, each with its trust
    /// ([`Manifest::from_v2`]); rejected ones are kept (asked for by id,
    /// they are refused naming why) and warned about, and passed over by
    /// every choice of the newest ([`super::regular`]).
    pub async fn snapshot_list(&self, ids: &MetadataKey) -> Result<SnapshotList> {
        if let Some(keys) = self.keyset() {
            // snapshots_v2 warns of each rejected one.
            let listed = self.snapshots_v2(keys).await?;
            return Ok(SnapshotList {
                manifests: listed.snapshots.iter().map(Manifest::from_v2).collect(),
                unreadable: listed.unreadable,
            });
        }
        let listed = self.list(SNAPSHOTS).await?;
        let fetched: Vec<Fetched<Manifest>> = stream::iter(listed)
            .map(|meta| async move {
                self.fetch_metadata(&meta, ids, |r| parse_manifest(r, &meta.key))
                    .await
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut out = SnapshotList::default();
        for f in fetched {
            match f {
                Fetched::Read(m) => out.manifests.push(m),
                Fetched::Gone => {}
                Fetched::Skipped(u) => out.unreadable.push(u),
            }
        }
        wrong_identity(out.manifests.is_empty(), &out.unreadable)?;
        for u in &out.unreadable {
            warn_skipped(u);
        }
        out.manifests.sort_by(newest_first);
        out.unreadable.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Reads and decodes one manifest.
    pub async fn read_manifest(&self, key: &str, ids: &MetadataKey) -> Result<Manifest> {
        let raw = self.get_bytes(key).await?;
        let plain = codec::decode(&raw, ids.iter(), key)?;
        parse_manifest(&mut &plain[..], key)
    }

    /// Merges every index file that decodes, preferring copies that no
    /// damage record names. Skipped files are in [`Index::unreadable`].
    pub async fn load_index(&self, ids: &MetadataKey) -> Result<Index> {
        self.load_index_with(ids, &[], |_, _| {}).await
    }

    /// [`Repository::load_index`], also treating `extra` as recorded damage
    /// (found by the caller, maybe not recordable), and handing each index
    /// file that decodes, whole, to `each` with its key.
    pub async fn load_index_with(
        &self,
        ids: &MetadataKey,
        extra: &[DamagedPack],
        mut each: impl FnMut(&str, &[PackContents]),
    ) -> Result<Index> {
        let (mut damage, mut unreadable) = self.read_damage(ids).await?;
        damage.add("", extra);
        let mut index = Index::new(damage);
        let mut done: HashSet<String> = HashSet::new();
        let mut decoded = 0usize;
        for round in 1..=INDEX_ROUNDS {
            let todo: Vec<ObjectMeta> = self
                .list(INDEX)
                .await?
                .into_iter()
                .filter(|m| !done.contains(&m.key))
                .collect();
            let mut vanished = false;
            // Each index file is decoded as a stream straight into its
            // parsed form and merged whole: holding every decoded file at
            // once would double the peak memory of a backup or restore.
            let mut fetched = stream::iter(todo)
                .map(|meta| async move {
                    let f = self
                        .fetch_metadata(&meta, ids, |r| parse_index(r, &meta.key))
                        .await;
                    (meta.key, f)
                })
                .buffer_unordered(4);
            while let Some((key, f)) = fetched.next().await {
                match f? {
                    Fetched::Read(file) => {
                        each(&key, &file);
                        index.merge(&file);
                        decoded += 1;
                    }
                    Fetched::Gone => {
                        vanished = true;
                        continue;
                    }
                    Fetched::Skipped(u) => unreadable.push(u),
                }
                done.insert(key);
            }
            if !vanished {
                break;
            }
            tracing::debug!(round, "index files vanished while reading them (a prune rewrote the index); listing again");
        }
        let files: Vec<Unreadable> = unreadable
            .iter()
            .filter(|u| u.key.starts_with(INDEX))
            .cloned()
            .collect();
        wrong_identity(decoded == 0, &files)?;
        for u in &unreadable {
            warn_skipped(u);
        }
        unreadable.sort_by(|a, b| a.key.cmp(&b.key));
        index.unreadable = unreadable;
        Ok(index)
    }

    /// Every damage record that decodes, and those that were skipped
    /// (warned about by the caller).
    pub(super) async fn read_damage(&self, ids: &MetadataKey) -> Result<(Damage, Vec<Unreadable>)> {
        let listed = self.list(DAMAGED).await?;
        let fetched: Vec<(String, Fetched<Vec<DamagedPack>>)> = stream::iter(listed)
            .map(|meta| async move {
                let f = self
                    .fetch_metadata(&meta, ids, |r| parse_damage(r, &meta.key))
                    .await?;
                Ok::<_, Error>((meta.key, f))
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let mut damage = Damage::default();
        let mut unreadable = Vec::new();
        for (key, f) in fetched {
            match f {
                Fetched::Read(found) => damage.add(&key, &found),
                Fetched::Gone => {}
                // A record written by a host holding another identity (and
                // no recipients) is for the metadata identity: backups and
                // prune read it; this reader does without.
                Fetched::Skipped(u) if u.cause == Cause::WrongIdentity && !ids.is_derived() => {
                    tracing::debug!("{u}");
                }
                Fetched::Skipped(u) => unreadable.push(u),
            }
        }
        Ok((damage, unreadable))
    }

    /// Downloads a listed object, insisting on its listed size: objects are
    /// immutable, so fewer bytes mean a broken download (retried as a
    /// transient failure), never a reason to judge the object.
    pub(crate) async fn get_listed(&self, meta: &ObjectMeta) -> Result<bytes::Bytes> {
        self.stats
            .gets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.retry
            .run(|| async {
                let raw =
                    crate::storage::collect_bytes(self.storage().get(&meta.key).await?).await?;
                if raw.len() as u64 != meta.size {
                    return Err(StorageError::new(
                        ErrorKind::Transient,
                        &meta.key,
                        format!("read {} bytes, the listing says {}", raw.len(), meta.size),
                    ));
                }
                Ok(raw)
            })
            .await
            .map_err(|e| self.storage_err(e))
    }

    /// Downloads, decodes and parses one listed metadata object. Storage
    /// errors are returned; what the bytes themselves make of it is in
    /// the [`Fetched`].
    async fn fetch_metadata<T>(
        &self,
        meta: &ObjectMeta,
        ids: &MetadataKey,
        parse: impl FnOnce(&mut dyn BufRead) -> Result<T>,
    ) -> Result<Fetched<T>> {
        let Some(raw) = self.get_listed_or_gone(meta).await? else {
            return Ok(Fetched::Gone);
        };
        Ok(match decode_with(&meta.key, &raw, ids, parse) {
            Ok(v) => Fetched::Read(v),
            Err(u) => Fetched::Skipped(u),
        })
    }
}

/// What an empty object is said to be.
pub(super) const EMPTY: &str = "the object is empty (0 bytes)";

/// Decodes `raw` and parses it with `parse`, telling apart why it failed:
/// the codec (the object is damaged or junk) or the contents.
fn decode_with<T>(
    key: &str,
    raw: &[u8],
    ids: &MetadataKey,
    parse: impl FnOnce(&mut dyn BufRead) -> Result<T>,
) -> std::result::Result<T, Unreadable> {
    decode_classified(key, raw, ids, parse).map_err(|(cause, e)| Unreadable {
        key: key.to_string(),
        cause,
        message: match cause {
            Cause::Empty => EMPTY.into(),
            _ => e.to_string(),
        },
    })
}

/// [`decode_with`], keeping the error itself (which names `key`) beside
/// the cause, for readers that report it as it is.
pub(super) fn decode_classified<T>(
    key: &str,
    raw: &[u8],
    ids: &MetadataKey,
    parse: impl FnOnce(&mut dyn BufRead) -> Result<T>,
) -> std::result::Result<T, (Cause, Error)> {
    if raw.is_empty() {
        let e = Error::Corrupt {
            key: key.to_string(),
            message: EMPTY.into(),
        };
        return Err((Cause::Empty, e));
    }
    let plain = match codec::decode_reader(raw, ids.iter(), key) {
        Ok(p) => p,
        Err(e @ Error::WrongIdentity { .. }) => return Err((Cause::WrongIdentity, e)),
        Err(e) => return Err((Cause::Undecodable, e)),
    };
    let codec_failed = Cell::new(false);
    let mut reader = BufReader::new(Watch {
        inner: plain,
        failed: &codec_failed,
    });
    match parse(&mut reader) {
        Ok(v) => Ok(v),
        Err(e) if codec_failed.get() => Err((Cause::Undecodable, e)),
        Err(e @ Error::UnsupportedVersion { .. }) => Err((Cause::Unsupported, e)),
        Err(e) => Err((Cause::Unparseable, e)),
    }
}

/// A reader that notes whether the reader below it failed.
struct Watch<'a, R> {
    inner: R,
    failed: &'a Cell<bool>,
}

impl<R: Read> Read for Watch<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.inner.read(buf);
        if r.is_err() {
            self.failed.set(true);
        }
        r
    }
}

fn parse_manifest(r: &mut dyn BufRead, key: &str) -> Result<Manifest> {
    let mut plain = Vec::new();
    r.read_to_end(&mut plain)
        .map_err(|e| codec::corrupt_read(e, key))?;
    #[derive(serde::Deserialize)]
    struct Probe {
        format: Option<String>,
        version: Option<u32>,
    }
    let corrupt = |e: serde_json::Error| Error::Corrupt {
        key: key.to_string(),
        message: format!("manifest: {e}"),
    };
    let probe: Probe = serde_json::from_slice(&plain).map_err(corrupt)?;
    if probe.format.as_deref() != Some("offsite-snapshot") {
        return Err(Error::Corrupt {
            key: key.to_string(),
            message: "not an offsite manifest".into(),
        });
    }
    let version = probe.version.unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            target: key.to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    serde_json::from_slice(&plain).map_err(corrupt)
}

/// When nothing decoded and something is encrypted to other keys, the
/// identities are wrong: an error, not a reason to skip everything.
fn wrong_identity(nothing_read: bool, unreadable: &[Unreadable]) -> Result<()> {
    match unreadable.iter().find(|u| u.cause == Cause::WrongIdentity) {
        Some(u) if nothing_read => Err(Error::WrongIdentity { key: u.key.clone() }),
        _ => Ok(()),
    }
}

pub(super) fn warn_skipped(u: &Unreadable) {
    let what = match u.cause {
        _ if u.junk() => "; `offsite verify` reports it and `offsite prune` removes it",
        Cause::Unsupported => "; a newer offsite wrote it: upgrade to read it",
        _ => "; `offsite verify` reports it",
    };
    tracing::warn!("skipping {u}{what}");
}
