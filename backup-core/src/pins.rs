//! Pins: snapshots that prune never removes, whatever the retention policy.
//!
//! Manifests are immutable, so a pin is a separate object,
//! `pins/<snapshot-id>`, whose existence is the pin. Its contents (who pinned
//! it and when, metadata-encrypted like a manifest) are for people reading
//! the repository; offsite itself only lists `pins/`. A repository without
//! `pins/` simply has no pinned snapshots.
//!
//! Format 2 (design, table 1): a backup's pin is the same record with
//! `"version": 2`, encrypted to the current metadata key M and unsigned
//! (a pin can only keep a snapshot, never make one trusted). `offsite pin`
//! on a format 2 repository is still refused ([`Repository::check_keys`]
//! needs format 1's metadata recipient).

use std::collections::HashSet;

use chrono::Utc;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::keyset::KeySet;
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

/// Ids of every pinned snapshot (one listing, no reads).
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

/// Pins snapshot `id` (a full id). Returns false if it was pinned already.
pub(crate) async fn pin(repo: &Repository, keys: &Keys, id: &str, wait: LockWait) -> Result<bool> {
    repo.check_keys(keys)?;
    // Under a lock, so a prune cannot remove the snapshot between our check
    // that it exists and the pin landing.
    let lock = Lock::acquire(repo, LockKind::Shared, "pin", wait).await?;
    let result = async {
        exists(repo, id).await?;
        write_pin(repo, keys, id).await
    }
    .await;
    lock.release().await;
    result
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
