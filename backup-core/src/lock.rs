//! Repository locks: what keeps a prune from deleting data a running backup
//! relies on (docs/format.md, "Locks").
//!
//! A backup deduplicates against the index it loaded when it started and
//! writes its manifest last, so between those two moments its snapshot exists
//! nowhere a prune could see it. Every operation that needs the repository to
//! stand still therefore holds a lock object `locks/<time>-<random>`:
//! backups, verify and pin/unpin hold *shared* locks, prune an *exclusive*
//! one. Taking a lock is: create our own object (create-if-absent), then list
//! `locks/`. Whoever lists second sees the other's object (targets list
//! what was written before), so of a prune and a backup starting together at
//! least one notices the other, removes its own object and backs off: a
//! prune refuses, a backup waits for the prune to finish.
//!
//! Locks are refreshed every [`REFRESH_EVERY`]. A lock is stale when it was
//! not refreshed for [`STALE_AFTER`], or when it belongs to this host and its
//! process is gone (a killed run); stale locks are removed by whoever finds
//! them, with a warning naming the lost run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::process::{pid_scope, process_alive};
use crate::repo::{Repository, LOCKS};
use crate::storage::{ErrorKind, PutMode};

/// How often a held lock is rewritten with a new `refreshed` time.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A lock not refreshed for this long belongs to a run that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

/// The contents of a lock object (plaintext JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    /// Last refresh; absent in a lock that was never refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed: Option<DateTime<Utc>>,
    /// `"backup"`, `"verify"`, `"pin"`, `"prune --dry-run"` (shared) or
    /// `"prune"` (exclusive).
    pub operation: String,
    /// Whether the lock is exclusive. Absent in locks of earlier releases,
    /// where only `"prune"` is exclusive (which is still true).
    #[serde(default)]
    pub exclusive: bool,
    /// Which process-id space `pid` belongs to (Linux: boot id and pid
    /// namespace). Containers sharing a host name have separate pid spaces;
    /// without a match, only the age of a lock can make it stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_scope: Option<String>,
}

/// What a lock allows others: a shared lock (backup, verify, drill, pin,
/// a dry-run prune) lets other shared ones in, an exclusive one (prune)
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl LockInfo {
    fn new(kind: LockKind, operation: &str) -> LockInfo {
        let now = Utc::now();
        LockInfo {
            host: crate::backup::hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: Some(now),
            operation: operation.to_string(),
            exclusive: kind == LockKind::Exclusive,
            pid_scope: pid_scope(),
        }
    }

    pub fn exclusive(&self) -> bool {
        self.exclusive || self.operation == "prune"
    }

    /// Why this lock is stale, or `None` while its holder may be alive.
    pub fn stale_reason(&self, now: DateTime<Utc>) -> Option<String> {
        let last = self.refreshed.unwrap_or(self.created);
        let age = now.signed_duration_since(last);
        if age.to_std().is_ok_and(|a| a > STALE_AFTER) {
            return Some(format!("not refreshed for {} minutes", age.num_minutes()));
        }
        let same_pid_space = self.host == crate::backup::hostname()
            && self.pid_scope.is_some()
            && self.pid_scope == pid_scope();
        if same_pid_space && !process_alive(self.pid) {
            return Some(format!("process {} on this host is gone", self.pid));
        }
        None
    }

    /// `"backup on host web-1 (pid 123) since 2026-11-23T09:55:46Z"`.
    pub fn describe(&self) -> String {
        format!(
            "{} on host {} (pid {}) since {}",
            self.operation,
            self.host,
            self.pid,
            self.created
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// How long a shared lock waits for an exclusive one, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct LockWait {
    pub wait: Duration,
    pub poll: Duration,
}

impl Default for LockWait {
    /// Long enough for a prune to finish, or for a dead one's lock to go stale.
    fn default() -> Self {
        LockWait {
            wait: STALE_AFTER + Duration::from_secs(5 * 60),
            poll: Duration::from_secs(5),
        }
    }
}

/// A lock object on the repository, refreshed while held. Every operation
/// ends it the same way, with [`Lock::release`]; a run that dies leaves its
/// lock behind to go stale. Before a commit point (a manifest written, data
/// deleted) the holder calls [`Lock::ensure_held`].
#[derive(Debug)]
pub struct Lock {
    repo: Repository,
    key: String,
    lost: Arc<AtomicBool>,
    refresher: tokio::task::JoinHandle<()>,
}

/// Every lock object on the repository: key and contents (`None` when it is
/// not readable as a lock).
pub(crate) async fn list(repo: &Repository) -> Result<Vec<(String, Option<LockInfo>)>> {
    let mut out = Vec::new();
    for meta in repo.list(LOCKS).await? {
        match repo.get_bytes(&meta.key).await {
            Ok(raw) => out.push((meta.key, serde_json::from_slice(&raw).ok())),
            // Released between the listing and the read.
            Err(Error::Storage { cause: source, .. }) if source.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes stale locks (all locks with `all`); returns what was removed.
pub(crate) async fn remove(
    repo: &Repository,
    all: bool,
) -> Result<Vec<(String, Option<LockInfo>)>> {
    let now = Utc::now();
    let mut removed = Vec::new();
    for (key, info) in list(repo).await? {
        let stale = info.as_ref().and_then(|i| i.stale_reason(now)).is_some();
        if all || stale {
            repo.delete(&key).await?;
            removed.push((key, info));
        }
    }
    Ok(removed)
}

impl Lock {
    /// Takes a lock of `kind` for `operation` (a name shown to others).
    /// An exclusive lock is refused at once if any other lock is held; a
    /// shared one waits up to `wait.wait` for exclusive holders to finish.
    pub async fn acquire(
        repo: &Repository,
        kind: LockKind,
        operation: &str,
        wait: LockWait,
    ) -> Result<Lock> {
        Self::take(repo, kind, operation, wait, kind == LockKind::Shared).await
    }

    /// Takes an exclusive lock, waiting up to `wait.wait` for every other
    /// lock to go (what `key remove` does: a running backup finishes with
    /// the old keys first). Backups that start meanwhile can delay it.
    pub async fn acquire_waiting(
        repo: &Repository,
        operation: &str,
        wait: LockWait,
    ) -> Result<Lock> {
        Self::take(repo, LockKind::Exclusive, operation, wait, true).await
    }

    /// [`Lock::acquire`]; `waits` says whether a lock held by others is
    /// waited for (up to `wait.wait`) or refused at once.
    async fn take(
        repo: &Repository,
        kind: LockKind,
        operation: &str,
        wait: LockWait,
        waits: bool,
    ) -> Result<Lock> {
        let started = std::time::Instant::now();
        let exclusive = kind == LockKind::Exclusive;
        let mut announced = false;
        loop {
            let info = LockInfo::new(kind, operation);
            let key = format!(
                "{LOCKS}{}-{}",
                info.created.format("%Y%m%dT%H%M%SZ"),
                hex::encode(rand::random::<[u8; 8]>())
            );
            repo.put_bytes(&key, encode(&info), PutMode::Create).await?;
            let mut holders = Vec::new();
            let now = Utc::now();
            for (other, other_info) in list(repo).await? {
                if other == key {
                    continue;
                }
                match other_info {
                    Some(i) => {
                        if let Some(reason) = i.stale_reason(now) {
                            tracing::warn!(lock = %other, "removing the stale lock of {} ({reason}); that run did not finish", i.describe());
                            // Append-only credentials cannot delete; a stale
                            // lock is ignored either way.
                            if let Err(e) = repo.delete(&other).await {
                                tracing::warn!(lock = %other, error = %e, "could not remove the stale lock");
                            }
                        } else if exclusive || i.exclusive() {
                            holders.push(i.describe());
                        }
                    }
                    None => holders.push(format!("an unreadable lock {other}")),
                }
            }
            if holders.is_empty() {
                let lost = Arc::new(AtomicBool::new(false));
                let refresher =
                    tokio::spawn(refresh(repo.clone(), key.clone(), info, lost.clone()));
                return Ok(Lock {
                    repo: repo.clone(),
                    key,
                    lost,
                    refresher,
                });
            }
            if let Err(e) = repo.delete(&key).await {
                tracing::warn!(lock = %key, error = %e, "could not remove our lock; it will go stale");
            }
            if !waits || started.elapsed() >= wait.wait {
                return Err(Error::Locked {
                    target: repo.describe(),
                    holders: holders.join("; "),
                });
            }
            if !announced {
                // Said once, at warn level: a backup that seems to hang
                // should say what it is waiting for.
                tracing::warn!(
                    "{} is locked by {}; waiting up to {} minutes for it to finish",
                    repo.describe(),
                    holders.join("; "),
                    wait.wait.as_secs() / 60
                );
                announced = true;
            }
            tokio::time::sleep(wait.poll).await;
        }
    }

    /// Takes a shared lock for a run that only reads (verify, a drill): with
    /// read-only credentials, which cannot write a lock, it warns and goes
    /// on without one (`None`).
    pub async fn acquire_for_reading(
        repo: &Repository,
        operation: &str,
        wait: LockWait,
    ) -> Result<Option<Lock>> {
        match Lock::acquire(repo, LockKind::Shared, operation, wait).await {
            Ok(lock) => Ok(Some(lock)),
            Err(Error::Storage { cause: source, .. })
                if source.kind == ErrorKind::PermissionDenied =>
            {
                tracing::warn!(
                    "cannot write a lock to {} (read-only credentials?); running {operation} \
                     without one: a prune running now would show up as missing packs",
                    repo.describe()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Releases a lock taken by [`Lock::acquire_for_reading`] (see
    /// [`Lock::release`]).
    pub async fn release_optional(lock: Option<Lock>) {
        if let Some(lock) = lock {
            lock.release().await;
        }
    }

    /// Fails if the lock object disappeared while held (someone ran
    /// `offsite unlock --all`): whatever this run does next is no longer safe.
    pub fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(Error::Locked {
                target: self.repo.describe(),
                holders: format!("nobody: our lock {} was removed while we held it", self.key),
            });
        }
        Ok(())
    }

    /// Like [`Self::check`], but asks the target now instead of trusting the
    /// last refresh: what a run calls right before a commit point.
    pub async fn ensure_held(&self) -> Result<()> {
        self.check()?;
        match self.repo.storage().head(&self.key).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.lost.store(true, Ordering::SeqCst);
                self.check()
            }
            // Unreachable for a moment is not lost: the put that follows
            // meets the same target and fails or succeeds on its own.
            _ => Ok(()),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the lock object. One that cannot be removed only goes stale
    /// (others then wait for [`STALE_AFTER`] at most), so that is a warning,
    /// not a failure of the operation that held it.
    pub async fn release(self) {
        self.refresher.abort();
        if let Err(e) = self.repo.delete(&self.key).await {
            tracing::warn!(lock = %self.key, error = %e, "could not remove our lock; it will go stale");
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

fn encode(info: &LockInfo) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(info).expect("lock serializes"))
}

async fn refresh(repo: Repository, key: String, mut info: LockInfo, lost: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        match repo.head(&key).await {
            Err(e) if e.kind == ErrorKind::NotFound => {
                tracing::error!(lock = %key, "our repository lock was removed by someone else");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            _ => {}
        }
        info.refreshed = Some(Utc::now());
        if let Err(e) = repo
            .put_bytes(&key, encode(&info), PutMode::Overwrite)
            .await
        {
            tracing::warn!(lock = %key, error = %e, "could not refresh the repository lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_identity, Keys};
    use crate::storage::memory::MemoryStorage;

    async fn repo() -> Repository {
        let (_, recipient) = generate_identity();
        let keys = Keys::from_recipients(&[recipient]).unwrap();
        Repository::open_or_init(Arc::new(MemoryStorage::default()), &keys)
            .await
            .unwrap()
    }

    fn no_wait() -> LockWait {
        LockWait {
            wait: Duration::ZERO,
            poll: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn shared_locks_coexist_and_exclude_prune() {
        let repo = repo().await;
        let a = Lock::acquire(&repo, LockKind::Shared, "backup", no_wait())
            .await
            .unwrap();
        let b = Lock::acquire(&repo, LockKind::Shared, "verify", no_wait())
            .await
            .unwrap();
        let e = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Locked { .. }), "{e}");
        assert!(e.to_string().contains("backup on host"), "{e}");
        assert_eq!(
            list(&repo).await.unwrap().len(),
            2,
            "the refused prune cleaned up"
        );
        a.release().await;
        b.release().await;
        let p = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap();
        let e = Lock::acquire(&repo, LockKind::Shared, "backup", no_wait())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("prune on host"), "{e}");
        let e = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Locked { .. }));
        p.check().unwrap();
        p.release().await;
        assert!(list(&repo).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_shared_lock_waits_for_a_prune_to_finish() {
        let repo = repo().await;
        let p = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap();
        let waiter = {
            let repo = repo.clone();
            tokio::spawn(async move {
                let wait = LockWait {
                    wait: Duration::from_secs(3600),
                    poll: Duration::from_millis(5),
                };
                Lock::acquire(&repo, LockKind::Shared, "backup", wait).await
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        p.release().await;
        let lock = waiter.await.unwrap().unwrap();
        lock.release().await;
    }

    #[tokio::test]
    async fn stale_locks_are_removed_by_the_next_run() {
        let repo = repo().await;
        let old = LockInfo {
            host: "elsewhere".into(),
            pid: 1,
            created: Utc::now() - chrono::Duration::hours(3),
            refreshed: Some(Utc::now() - chrono::Duration::minutes(31)),
            operation: "backup".into(),
            exclusive: false,
            pid_scope: None,
        };
        let dead = LockInfo {
            host: crate::backup::hostname(),
            // Above Linux's pid_max: no such process.
            pid: u32::MAX - 1,
            created: Utc::now(),
            refreshed: None,
            operation: "backup".into(),
            exclusive: false,
            pid_scope: pid_scope(),
        };
        // The same pid in another container's pid space may be alive.
        let other_space = LockInfo {
            pid_scope: Some("another-boot/pid:[1]".into()),
            ..dead.clone()
        };
        let alive = LockInfo {
            host: "elsewhere".into(),
            pid: 1,
            created: Utc::now(),
            refreshed: Some(Utc::now() - chrono::Duration::minutes(29)),
            operation: "backup".into(),
            exclusive: false,
            pid_scope: None,
        };
        assert!(old
            .stale_reason(Utc::now())
            .unwrap()
            .contains("not refreshed"));
        assert!(alive.stale_reason(Utc::now()).is_none());
        if pid_scope().is_some() {
            assert!(dead.stale_reason(Utc::now()).unwrap().contains("is gone"));
        }
        assert!(other_space.stale_reason(Utc::now()).is_none());
        repo.put_bytes("locks/old", encode(&old), PutMode::Create)
            .await
            .unwrap();
        let p = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap();
        assert_eq!(
            list(&repo).await.unwrap().len(),
            1,
            "the stale lock is gone"
        );
        p.release().await;

        repo.put_bytes("locks/alive", encode(&alive), PutMode::Create)
            .await
            .unwrap();
        repo.put_bytes(
            "locks/junk",
            Bytes::from_static(b"not json"),
            PutMode::Create,
        )
        .await
        .unwrap();
        let e = Lock::acquire(&repo, LockKind::Exclusive, "prune", no_wait())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unreadable lock locks/junk"), "{e}");
        assert!(remove(&repo, false).await.unwrap().is_empty());
        assert_eq!(remove(&repo, true).await.unwrap().len(), 2);
        assert!(list(&repo).await.unwrap().is_empty());
    }

    /// Locks name their kind; those of earlier releases (no `exclusive`
    /// field) still read as before: only `"prune"` is exclusive.
    #[test]
    fn lock_kinds_are_written_and_old_locks_still_read() {
        let new = LockInfo::new(LockKind::Exclusive, "prune");
        let json: serde_json::Value = serde_json::from_slice(&encode(&new)).unwrap();
        assert_eq!(json["exclusive"], true);
        for (op, exclusive) in [
            ("prune", true),
            ("backup", false),
            ("prune --dry-run", false),
        ] {
            let old = format!(
                r#"{{"host":"h","pid":1,"created":"2026-11-23T09:55:46Z","operation":"{op}"}}"#
            );
            let info: LockInfo = serde_json::from_str(&old).unwrap();
            assert_eq!(info.exclusive(), exclusive, "{op}");
        }
    }
}
