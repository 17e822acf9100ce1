//! Verify: is every snapshot still restorable?
//!
//! Without reading data (needs only the recipients): every manifest and list
//! decodes, every chunk of every list is in the index with the length the
//! list records, and every pack that holds one exists and is not empty.
//! Pack sizes are not recorded by the format, so a truncated pack is found
//! only by reading it.
//!
//! With `read_data` (needs the identity): each snapshot that passed is also
//! restored into a temporary directory by [`crate::restore`], which checks
//! every chunk against its id, the whole snapshot against the manifest's
//! SHA-256 and, for SQLite, runs `PRAGMA integrity_check`. Nothing is kept.

use std::collections::HashMap;
use std::io::BufReader;

use crate::codec;
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::lock::{Lock, LockWait};
use crate::repo::format::{parse_list, Index, ListItem};
use crate::repo::{Manifest, Repository, INDEX, PACKS, SNAPSHOTS};
use crate::restore::{restore, RestoreOptions};
use crate::storage::ErrorKind;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Download and restore every snapshot (needs the identity).
    pub read_data: bool,
    /// Check this source's snapshots only.
    pub source: Option<String>,
    /// How long to wait for a running prune.
    pub lock_wait: LockWait,
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

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Newest first; snapshots with unreadable manifests last.
    pub snapshots: Vec<SnapshotCheck>,
    /// Damage not tied to one snapshot (an unreadable index file).
    pub repository_faults: Vec<String>,
    pub read_data: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.repository_faults.is_empty() && self.snapshots.iter().all(|s| s.fault.is_none())
    }
}

/// Checks one repository. `ids` reads metadata (the recipients' derived
/// identity will do) and, with `read_data`, must be the real identity.
pub async fn verify(
    repo: &Repository,
    ids: &Identities,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    // A prune running meanwhile would make packs vanish under us.
    let lock = match Lock::acquire(repo, "verify", opts.lock_wait).await {
        Ok(lock) => Some(lock),
        // Read-only credentials (a restore host's) can still verify.
        Err(Error::Storage { source, .. }) if source.kind == ErrorKind::PermissionDenied => {
            tracing::warn!(
                "cannot write a lock to {} (read-only credentials?); verifying without one: \
                 a prune running now would show up as missing packs",
                repo.describe()
            );
            None
        }
        Err(e) => return Err(e),
    };
    let result = verify_locked(repo, ids, opts).await;
    if let Some(lock) = lock {
        if let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not remove verify's lock; it will go stale");
        }
    }
    result
}

async fn verify_locked(
    repo: &Repository,
    ids: &Identities,
    opts: &VerifyOptions,
) -> Result<VerifyReport> {
    let mut report = VerifyReport {
        read_data: opts.read_data,
        ..Default::default()
    };

    let mut index = Index::default();
    for meta in repo.list(INDEX).await? {
        let parsed = async {
            let plain = repo.get_metadata(&meta.key, ids).await?;
            let mut one = Index::default();
            one.parse_into(&plain[..], &meta.key)?;
            Ok::<_, Error>(one)
        }
        .await;
        match parsed {
            Ok(one) => {
                for (id, loc) in one.chunks {
                    index.add(&one.packs[loc.pack as usize], id, loc.offset, loc.len);
                }
            }
            Err(e) if is_damage(&e) => report.repository_faults.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    let packs: HashMap<String, u64> = repo
        .list(PACKS)
        .await?
        .into_iter()
        .map(|m| (m.key, m.size))
        .collect();

    let mut unreadable = Vec::new();
    let mut manifests = Vec::new();
    for meta in repo.list(SNAPSHOTS).await? {
        let id = meta
            .key
            .strip_prefix(SNAPSHOTS)
            .unwrap_or_default()
            .to_string();
        match repo.read_manifest(&meta.key, ids).await {
            Ok(m) => manifests.push(m),
            Err(e) if is_damage(&e) => unreadable.push(SnapshotCheck {
                id,
                manifest: None,
                fault: Some(e.to_string()),
            }),
            Err(e) => return Err(e),
        }
    }
    manifests.retain(|m| opts.source.as_deref().is_none_or(|s| m.source == s));
    manifests.sort_by(|a, b| b.finished.cmp(&a.finished).then(b.id.cmp(&a.id)));

    for m in manifests {
        let mut fault = match check_structure(repo, ids, &m, &index, &packs).await {
            Ok(problems) if problems.is_empty() => None,
            Ok(problems) => Some(summarize(&problems)),
            Err(e) if is_damage(&e) => Some(e.to_string()),
            Err(e) => return Err(e),
        };
        if fault.is_none() && opts.read_data {
            fault = restore_check(repo, ids, &m).await?;
        }
        report.snapshots.push(SnapshotCheck {
            id: m.id.clone(),
            manifest: Some(m),
            fault,
        });
    }
    if opts.source.is_none() {
        report.snapshots.extend(unreadable);
    }
    Ok(report)
}

/// Errors that describe damage to the repository (reported per snapshot),
/// as opposed to failures to reach it (which stop the run).
fn is_damage(e: &Error) -> bool {
    match e {
        Error::Corrupt { .. } | Error::Verification(_) | Error::UnsupportedVersion { .. } => true,
        Error::Storage { source, .. } => source.is_not_found(),
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
    ids: &Identities,
    m: &Manifest,
    index: &Index,
    packs: &HashMap<String, u64>,
) -> Result<Vec<String>> {
    let raw = repo.get_bytes(&m.list).await?;
    let plain = codec::decode_reader(&raw[..], ids.iter(), &m.list)?;
    let mut problems = Vec::new();
    let mut chunks = 0u64;
    let mut reported_packs = std::collections::HashSet::new();
    parse_list(BufReader::new(plain), &m.list, |item| {
        let ListItem::Chunk(id, len) = item else {
            return Ok(());
        };
        chunks += 1;
        match index.get(&id) {
            None => problems.push(format!("chunk {id} is not in any index file")),
            Some(loc) if loc.len != len => problems.push(format!(
                "chunk {id}: the list says {len} bytes, the index {}",
                loc.len
            )),
            Some(loc) => {
                let pack = &index.packs[loc.pack as usize];
                match packs.get(pack) {
                    None if reported_packs.insert(pack.clone()) => {
                        problems.push(format!("pack {pack} is missing"))
                    }
                    Some(0) if reported_packs.insert(pack.clone()) => {
                        problems.push(format!("pack {pack} is empty"))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    })?;
    if chunks != m.chunks {
        problems.push(format!(
            "the list has {chunks} chunks, the manifest says {}",
            m.chunks
        ));
    }
    Ok(problems)
}

/// Restores the snapshot into a temporary directory; the fault, if any.
async fn restore_check(
    repo: &Repository,
    ids: &Identities,
    m: &Manifest,
) -> Result<Option<String>> {
    let dir = tempfile::Builder::new()
        .prefix("offsite-verify-")
        .tempdir()
        .map_err(|e| Error::io("temporary directory for verify --read-data", e))?;
    let to = dir.path().join(&m.id);
    match restore(repo, ids, m, &to, &RestoreOptions::default()).await {
        Ok(_) => Ok(None),
        Err(e) if is_damage(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(e),
    }
}
