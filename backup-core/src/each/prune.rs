//! Prune and unlock on every planned target, and what their outcomes mean:
//! the command failed when any target has no report.
//!
//! Never: stop at a failed target; the others are pruned (or unlocked) all
//! the same, since each repository is independent.

use super::{each_observed, Outcomes, PlannedTarget, TargetObserver};
use crate::error::Error;
use crate::keys::Keys;
use crate::lock::LockInfo;
use crate::prune::{PruneOptions, PruneReport};

/// A prune of every planned target.
#[derive(Debug)]
pub struct PruneRun {
    pub outcomes: Outcomes<PruneReport>,
}

impl PruneRun {
    pub fn failed(&self) -> Vec<&str> {
        self.outcomes.failed()
    }

    /// "prune failed on 1 target(s)", or `None` when every target was pruned.
    pub fn failure_summary(&self) -> Option<String> {
        failed_on("prune", self.failed().len())
    }
}

fn failed_on(what: &str, failed: usize) -> Option<String> {
    (failed > 0).then(|| format!("{what} failed on {failed} target(s)"))
}

/// Prunes each target in turn; `observer` hears of each as it is done.
/// Format 2 targets (opened with their key set) are pruned with it;
/// format 1 ones need `keys` (the recipients), and without them fail.
pub async fn prune_all(
    targets: Vec<PlannedTarget>,
    keys: Option<&Keys>,
    opts: &PruneOptions,
    observer: &dyn TargetObserver<PruneReport>,
) -> PruneRun {
    let outcomes = each_observed(
        targets,
        async |name, repo| match (repo.keyset(), keys) {
            (Some(_), _) => repo.prune_v2(opts).await,
            (None, Some(keys)) => repo.prune(keys, opts).await,
            (None, None) => Err(Error::Key(format!(
                "prune on target {name:?} (format 1) writes index files encrypted to the \
                 recipients: set encryption.recipients"
            ))),
        },
        observer,
    )
    .await;
    PruneRun { outcomes }
}

/// A lock and what it says about its holder (`None`: it does not decode).
pub type LockEntry = (String, Option<LockInfo>);

/// What unlock did on one target.
#[derive(Debug, Clone)]
pub struct UnlockReport {
    /// Whether every lock was to go, not only the stale ones.
    pub all: bool,
    /// Every lock with `all`, else the stale ones.
    pub removed: Vec<LockEntry>,
    /// Without `all`: the locks left, held by live runs.
    pub held: Vec<LockEntry>,
}

/// An unlock of every planned target.
#[derive(Debug)]
pub struct UnlockRun {
    pub outcomes: Outcomes<UnlockReport>,
}

impl UnlockRun {
    pub fn failed(&self) -> Vec<&str> {
        self.outcomes.failed()
    }

    /// "unlock failed on 1 target(s)", or `None`.
    pub fn failure_summary(&self) -> Option<String> {
        failed_on("unlock", self.failed().len())
    }
}

/// Removes the stale locks (every lock with `all`) of each target in turn.
pub async fn unlock_all(
    targets: Vec<PlannedTarget>,
    all: bool,
    observer: &dyn TargetObserver<UnlockReport>,
) -> UnlockRun {
    let outcomes = each_observed(
        targets,
        async |_, repo| {
            let removed = repo.remove_locks(all).await?;
            let held = if all { Vec::new() } else { repo.locks().await? };
            Ok(UnlockReport { all, removed, held })
        },
        observer,
    )
    .await;
    UnlockRun { outcomes }
}
