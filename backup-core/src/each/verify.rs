//! Verify on every planned target, and the verdict: damage found on a
//! target outweighs a target that could not be checked, and either fails
//! the command.
//!
//! Never: call a target intact that could not be checked.

use std::sync::Arc;

use super::{each, Outcomes, PlannedTarget, TargetEvent, TargetObserver};
use crate::keys::MetadataKey;
use crate::verify::{VerifyOptions, VerifyProgress, VerifyReport};

/// A verify of every planned target.
#[derive(Debug)]
pub struct VerifyRun {
    pub outcomes: Outcomes<VerifyReport>,
}

/// Why a verify run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// These targets hold damaged snapshots or other faults.
    #[error(
        "damaged snapshots on {}; a restore takes damaged chunks from your other targets \
         by itself, or pick an intact snapshot; take a new backup (it stores again whatever \
         is missing from the index or recorded as damaged)",
        .0.join(", ")
    )]
    Damaged(Vec<String>),
    /// These targets could not be verified (not opened, or verify failed).
    #[error("could not verify {}", .0.join(", "))]
    Unverified(Vec<String>),
}

impl VerifyRun {
    /// Targets whose report found damage.
    pub fn damaged(&self) -> Vec<&str> {
        self.outcomes
            .reports()
            .filter(|(_, r)| !r.ok())
            .map(|(t, _)| t)
            .collect()
    }

    /// Targets that could not be verified.
    pub fn unverified(&self) -> Vec<&str> {
        self.outcomes.failed()
    }

    /// `Ok` only when every target was verified intact.
    pub fn verdict(&self) -> Result<(), VerifyFailure> {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_string).collect::<Vec<_>>();
        let damaged = self.damaged();
        if !damaged.is_empty() {
            return Err(VerifyFailure::Damaged(owned(damaged)));
        }
        let unverified = self.unverified();
        if !unverified.is_empty() {
            return Err(VerifyFailure::Unverified(owned(unverified)));
        }
        Ok(())
    }
}

/// Verifies each target in turn with its own progress counters, which
/// `observer` gets when the target starts.
pub async fn verify_all(
    targets: Vec<PlannedTarget>,
    ids: &MetadataKey,
    opts: &VerifyOptions,
    observer: &dyn TargetObserver<VerifyReport, VerifyProgress>,
) -> VerifyRun {
    let outcomes = each(
        targets,
        async |target, repo| {
            let progress = Arc::new(VerifyProgress::default());
            observer.event(TargetEvent::Started {
                target,
                source: None,
                progress: progress.clone(),
            });
            let opts = VerifyOptions {
                progress: Some(progress),
                ..opts.clone()
            };
            repo.verify(ids, &opts).await
        },
        |o| {
            observer.event(TargetEvent::Finished {
                target: &o.target,
                source: None,
                result: &o.result,
            })
        },
    )
    .await;
    VerifyRun { outcomes }
}
