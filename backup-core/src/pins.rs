//! Pins: snapshots that prune never removes, whatever the retention policy.
//!
//! Manifests are immutable, so a pin is a separate object,
//! `pins/<snapshot-id>`, whose existence is the pin. Its contents (who pinned
//! it and when, metadata-encrypted like a manifest) are for people reading
//! the repository; offsite itself only lists `pins/` ([`pinned`], the one
//! reader, for both formats). A repository without `pins/` simply has no
//! pinned snapshots.
//!
//! Format 2 (design, table 1): a pin is the same record with `"version": 2`,
//! encrypted to the current metadata key M and unsigned: a pin can only keep
//! a snapshot, never make one trusted. So anyone with write access to the
//! bucket can add pins (prune keeps more), and a pin's name may be a
//! rejected snapshot's: whoever reads [`pinned`] on format 2 (prune) must
//! still act on signed snapshots only. `offsite pin` itself ([`pin_v2`])
//! pins signed snapshots only.
//!
//! What can go wrong: a pin is written with create-if-absent under a shared
//! lock, after the snapshot was checked to exist (and, in format 2, to be
//! signed), so a prune cannot remove the snapshot in between; a pin that
//! fails to land (full disk, killed run) is simply not there, and pinning
//! again writes it. Unpinning deletes one object; interrupted, the pin is
//! either still there or gone. Never: pin a snapshot that is not there, or
//! on format 2 one that is not signed; report a pin that was not stored.

use std::collections::HashSet;

use chrono::Utc;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::keyset::{KeySet, Trust};
use crate::lock::{Lock, LockKind, LockWait};
use crate::repo::{Repository, METADATA_LEVEL, SNAPSHOTS};
use crate::storage::{ErrorKind, PutMode};

pub const PINS: &str = "pins/";

#[derive(Serialize)]
struct PinRecord<'a> {
    format: &'a str,
    version: u32,
    snapshot: &'a str,
    created: chrono::DateTime<Utc>,
    host: String,
}

/// Ids of every pinned snapshot (one listing, no reads), in either format:
/// the name is the pin. Unsigned and advisory: on format 2 it may name a
/// rejected snapshot, or none at all.
pub(crate) async fn pinned(repo: &Repository) -> Result<HashSet<String>> {
    Ok(repo
        .list(PINS)
        .await?
        .into_iter()
        .filter_map(|m| m.key.strip_prefix(PINS).map(str::to_string))
        .collect())
}

/// Writes the pin of an existing snapshot, assuming the caller holds a lock.
/// Returns false if it was pinned already.
pub(crate) async fn write_pin(repo: &Repository, keys: &Keys, id: &str) -> Result<bool> {
    let body = Repository::encode_metadata(keys, &pin_record(1, id))?;
    put_pin(repo, id, body).await
}

/// Format 2's pin (design, table 1): the same record, version 2, zstd and
/// age to the current metadata key M; unsigned (a pin only keeps).
pub(crate) async fn write_pin_v2(repo: &Repository, keys: &KeySet, id: &str) -> Result<bool> {
    let metadata = keys.metadata_recipient();
    let body = crate::codec::encode(&pin_record(2, id), &[&metadata], METADATA_LEVEL)
        .map_err(|e| Error::io("encoding a pin", e))?;
    put_pin(repo, id, bytes::Bytes::from(body)).await
}

fn pin_record(version: u32, id: &str) -> Vec<u8> {
    let record = PinRecord {
        format: "offsite-pin",
        version,
        snapshot: id,
        created: Utc::now(),
        host: crate::backup::hostname(),
    };
    serde_json::to_vec_pretty(&record).expect("pin serializes")
}

/// Stores a pin, create-if-absent. Returns false if it was pinned already.
async fn put_pin(repo: &Repository, id: &str, body: bytes::Bytes) -> Result<bool> {
    match repo
        .put_bytes(&format!("{PINS}{id}"), body, PutMode::Create)
        .await
    {
        Ok(()) => Ok(true),
        Err(Error::Storage { cause: source, .. }) if source.kind == ErrorKind::AlreadyExists => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Pins snapshot `id` (a full id) of a format 1 repository. Returns false
/// if it was pinned already.
pub(crate) async fn pin(repo: &Repository, keys: &Keys, id: &str, wait: LockWait) -> Result<bool> {
    repo.check_keys(keys)?;
    locked(repo, wait, async {
        exists(repo, id).await?;
        write_pin(repo, keys, id).await
    })
    .await
}

/// Pins snapshot `id` (a full id) of a format 2 repository, opened with
/// its key set: only a signed snapshot ([`Error::Untrusted`] naming why
/// not, nothing written). Returns false if it was pinned already.
pub(crate) async fn pin_v2(repo: &Repository, id: &str, wait: LockWait) -> Result<bool> {
    let keys = repo.keyset().ok_or_else(|| Error::NoMetadataKey {
        target: repo.describe(),
    })?;
    locked(repo, wait, async {
        signed(repo, keys, id).await?;
        write_pin_v2(repo, keys, id).await
    })
    .await
}

/// Runs `work` under a shared lock, so that a prune cannot remove the
/// snapshot between the check that it exists and the pin landing.
async fn locked<T>(
    repo: &Repository,
    wait: LockWait,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let lock = Lock::acquire(repo, LockKind::Shared, "pin", wait).await?;
    let result = work.await;
    lock.release().await;
    result
}

/// That format 2 snapshot `id` exists and its manifest is signed by the
/// owner or a writer the keyring trusts for it.
async fn signed(repo: &Repository, keys: &KeySet, id: &str) -> Result<()> {
    let snapshot = repo.snapshot_v2(keys, id).await?;
    match snapshot.trust {
        Trust::Signed { .. } => Ok(()),
        Trust::Rejected { reason } => Err(Error::Untrusted {
            key: snapshot.manifest.key(),
            reason,
        }),
        Trust::Unsigned => Err(Error::Untrusted {
            key: snapshot.manifest.key(),
            reason: "it is not signed".into(),
        }),
    }
}

/// Removes the pin of `id`. Returns false if it was not pinned.
pub(crate) async fn unpin(repo: &Repository, id: &str) -> Result<bool> {
    let key = format!("{PINS}{id}");
    match repo.head(&key).await {
        Ok(_) => {
            repo.delete(&key).await?;
            Ok(true)
        }
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(repo.storage_err(e)),
    }
}

async fn exists(repo: &Repository, id: &str) -> Result<()> {
    match repo.head(&format!("{SNAPSHOTS}{id}")).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Err(Error::SnapshotNotFound(format!("id {id}"))),
        Err(e) => Err(repo.storage_err(e)),
    }
}
