//! `offsite key rewrite` (docs/design/format-v2.md, 2.8): every object of a
//! format 2 repository that is encrypted to an older key generation is
//! encrypted again to the current one, so that an identity removed with
//! `key remove` (or a copy of its bundle) reads nothing in the repository
//! any more.
//!
//! What is rewritten: packs (`DATA` to the current data key D, `META` to
//! the current metadata key M, the footer recomputed), and manifests, list
//! objects, index files, check records, pins and damage records (to M).
//! Only the age layer changes: the zstd frame inside, so the plaintext and
//! every signature in it (which binds the object's key, not its
//! encryption), stays byte for byte what it was, and the object is written
//! back under the same key with [`PutMode::Overwrite`]. This is the one
//! place offsite overwrites data, allowed because every backend replaces
//! an object atomically (a reader gets the old object or the new one, both
//! readable by every current holder) and because the new object is checked
//! before it is written (it decrypts with the current key to the same
//! bytes) and after (it is read back and compared; an overwrite that did
//! not land whole is written again, and failing that the old bytes are put
//! back, so a full target or a short write never leaves the only copy bad).
//! The keys are checked to be the newest after the lock is taken: a key
//! change since the target was opened makes it stop and say to run again.
//! Objects larger than any offsite writes (1 GiB) are left, never held.
//!
//! It holds the exclusive lock (`--dry-run` a shared one), so no backup,
//! prune or verify runs meanwhile. Killed at any point, it leaves every object readable (old
//! or new): a second run skips what already opens with the current keys
//! and does the rest. An object no key held opens (junk, or damaged) is
//! reported and left for `offsite prune` and `offsite verify`.
//!
//! Never: write an object whose content changed, write anything on
//! `--dry-run`, or touch the keyring, key bundles, locks or `config`.
//! Copies kept outside the repository (bucket versioning, B2's hidden
//! versions, backups of the bucket) are not reached: docs/cli.md says so.

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::codec;
use crate::error::{Error, Result};
use crate::keyset::KeySet;
use crate::lock::{Lock, LockWait};
use crate::pins::PINS;
use crate::repo::format::pack2::{assemble, PackLayout};
use crate::repo::{Repository, CHECKS, DAMAGED, INDEX, LISTS, PACKS, SNAPSHOTS};
use crate::storage::{ObjectMeta, PutMode};

/// Objects handled at once (each is held whole: a pack is a few MiB).
const CONCURRENCY: usize = 4;

/// The largest object encrypted again (a pack is a few MiB; a full list of
/// a database of many GiB is the largest metadata): bigger ones are left.
const MAX_OBJECT: u64 = 1 << 30;

/// Tries of an overwrite, and of putting the old bytes back.
const ATTEMPTS: usize = 3;

/// The prefixes whose objects are encrypted to a generation's keys.
const ENCRYPTED: [&str; 7] = [PACKS, SNAPSHOTS, LISTS, INDEX, CHECKS, PINS, DAMAGED];

#[derive(Debug, Clone, Default)]
pub struct RewriteOptions {
    /// Read and count, write nothing.
    pub dry_run: bool,
    pub lock_wait: LockWait,
}

/// What a rewrite did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RewriteReport {
    /// The generation everything is now encrypted to.
    pub generation: u32,
    pub dry_run: bool,
    /// Objects that opened with the current keys already.
    pub current: u64,
    /// Objects encrypted again (or that would be, with `dry_run`).
    pub rewritten: u64,
    /// Bytes of those objects, as stored.
    pub rewritten_bytes: u64,
    /// Objects no held key opens, each with why: left as they are.
    pub unreadable: Vec<String>,
}

/// What became of one object.
enum Done {
    Current,
    Rewritten(u64),
    Unreadable(String),
}

/// Rewrites `repo` (opened with the owner's identity, so that its key set
/// holds every generation's keys) as the module doc says.
pub async fn rewrite(repo: &Repository, opts: &RewriteOptions) -> Result<RewriteReport> {
    let keys = repo.keyset().ok_or_else(|| Error::NotFormat2 {
        target: repo.describe(),
    })?;
    if keys.data().is_none() {
        return Err(Error::Key(
            "key rewrite needs the owner's identity (encryption.identity_file): a writer key \
             cannot decrypt packs"
                .into(),
        ));
    }
    // A dry run writes nothing: a shared lock, so backups go on meanwhile.
    let lock = match opts.dry_run {
        true => Lock::acquire_for_reading(repo, "key rewrite --dry-run", opts.lock_wait).await?,
        false => Some(Lock::acquire_waiting(repo, "key rewrite", opts.lock_wait).await?),
    };
    let result = rewrite_locked(repo, keys, opts, lock.as_ref()).await;
    Lock::release_optional(lock).await;
    result
}

async fn rewrite_locked(
    repo: &Repository,
    keys: &KeySet,
    opts: &RewriteOptions,
    lock: Option<&Lock>,
) -> Result<RewriteReport> {
    // Opened before the lock: a `key remove` since would make "current"
    // an older generation than the newest.
    keys.ensure_current(repo, "key rewrite").await?;
    let mut report = RewriteReport {
        generation: keys.generation(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for prefix in ENCRYPTED {
        let listed = repo.list(prefix).await?;
        let done: Vec<(String, Done)> = stream::iter(listed)
            .map(|meta| async move {
                let done = one(repo, keys, &meta, opts.dry_run).await?;
                Ok::<_, Error>((meta.key, done))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (key, d) in done {
            match d {
                Done::Current => report.current += 1,
                Done::Rewritten(bytes) => {
                    report.rewritten += 1;
                    report.rewritten_bytes += bytes;
                }
                Done::Unreadable(why) => report.unreadable.push(format!("{key}: {why}")),
            }
        }
        if let Some(lock) = lock {
            lock.ensure_held().await?;
        }
    }
    report.unreadable.sort();
    Ok(report)
}

/// Encrypts object `key` again when it is of an older generation.
async fn one(repo: &Repository, keys: &KeySet, meta: &ObjectMeta, dry_run: bool) -> Result<Done> {
    let key = meta.key.as_str();
    // Each object is held whole (twice, while it is encrypted again): one
    // larger than offsite writes is junk, never downloaded.
    if meta.size > MAX_OBJECT {
        return Ok(Done::Unreadable(format!(
            "{} bytes, more than offsite writes in one object",
            meta.size
        )));
    }
    // Gone since it was listed (a pin removed meanwhile): nothing to do.
    let Some(raw) = repo.get_listed_or_gone(meta).await? else {
        return Ok(Done::Current);
    };
    let again = if key.starts_with(PACKS) {
        pack_again(keys, key, &raw)
    } else {
        metadata_again(keys, key, &raw)
    };
    let new = match again {
        Ok(None) => return Ok(Done::Current),
        Ok(Some(new)) => new,
        Err(e) => return Ok(Done::Unreadable(crate::error::chain_text(&e))),
    };
    if !dry_run {
        crate::failpoint::hit("rewrite.put").map_err(|e| Error::io("rewriting", e))?;
        replace(repo, key, Bytes::from(new), raw).await?;
    }
    Ok(Done::Rewritten(meta.size))
}

/// Overwrites `key` with `new` and reads it back. An overwrite that did
/// not land whole (a short write, a read-back that differs) leaves a bad
/// object where the only copy was: it is written again, and when that
/// keeps failing the old bytes `old` are put back before the error is
/// returned, so the object is never left unreadable.
async fn replace(repo: &Repository, key: &str, new: Bytes, old: Bytes) -> Result<()> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match put_and_check(repo, key, &new).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    let error = last.expect("at least one attempt");
    for _ in 0..ATTEMPTS {
        if put_and_check(repo, key, &old).await.is_ok() {
            return Err(error);
        }
    }
    Err(Error::Corrupt {
        key: key.to_string(),
        message: format!(
            "encrypting it again failed ({}), and so did putting the old bytes back: the \
             object may be unreadable; restore it from a copy of the bucket or another target",
            crate::error::chain_text(&error)
        ),
    })
}

async fn put_and_check(repo: &Repository, key: &str, body: &Bytes) -> Result<()> {
    repo.put_bytes(key, body.clone(), PutMode::Overwrite)
        .await?;
    if repo.get_bytes(key).await? != *body {
        return Err(Error::Corrupt {
            key: key.to_string(),
            message: "read back after it was written, it differs from what was written".into(),
        });
    }
    Ok(())
}

/// A metadata object encrypted to the current M, or `None` when it is so
/// already.
fn metadata_again(keys: &KeySet, key: &str, raw: &[u8]) -> Result<Option<Vec<u8>>> {
    let (_, m) = keys.current_identities();
    if codec::opens_with(raw, m, key) {
        return Ok(None);
    }
    let held = keys.metadata_key();
    let to = keys.metadata_recipient();
    codec::reencrypt(raw, held.iter(), &to, m, key).map(Some)
}

/// A v2 pack with its `DATA` encrypted to the current D and its `META` to
/// the current M, or `None` when both are so already.
fn pack_again(keys: &KeySet, key: &str, raw: &[u8]) -> Result<Option<Vec<u8>>> {
    let size = raw.len() as u64;
    let layout = PackLayout::footer_range(key, size)
        .and_then(|footer| PackLayout::parse(key, size, &raw[footer.start as usize..]))
        .map_err(|e| Error::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })?;
    let data = &raw[..layout.data_len() as usize];
    let meta = &raw[layout.meta().start as usize..layout.meta().end as usize];
    let (d, m) = keys.current_identities();
    let d = d.expect("checked: the key set holds data keys");
    if codec::opens_with(data, d, key) && codec::opens_with(meta, m, key) {
        return Ok(None);
    }
    let all = keys.data().expect("checked: the key set holds data keys");
    let to_d = keys.data_recipient()?;
    let data = codec::reencrypt(data, all.iter(), &to_d, d, key)?;
    let held = keys.metadata_key();
    let meta = codec::reencrypt(meta, held.iter(), &keys.metadata_recipient(), m, key)?;
    assemble(key, &data, &meta)
        .map(Some)
        .map_err(|e| Error::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })
}
