//! One operation on every planned target: the shared shape of the commands
//! that work per target (prune, unlock, verify, drill, status; a backup run
//! has its own in [`crate::run`], since it also goes source by source).
//!
//! The caller opens the targets it was told to use (a [`PlannedTarget`]
//! each, opened or not); [`each`] runs the operation on them one after the
//! other, in the order given, and returns an [`Outcomes`]: per target, the
//! operation's report or its error. A target that could not be opened is
//! that target's failure only; nothing stops the others. The operations'
//! own multi-target reports ([`prune`], [`verify`], [`drill`], [`status`])
//! say what the outcomes mean, so the caller never counts failures.
//!
//! What happens is told to an [`TargetObserver`] as it happens, for printing.
//!
//! Never: swallow a target's failure, or reorder the targets.

pub mod drill;
pub mod probe;
pub mod prune;
pub mod status;
pub mod verify;

use std::sync::Arc;

use crate::error::Error;
use crate::repo::Repository;

/// Any error of a part of a run: the engine's own, or the caller's (a
/// target the configuration could not open). Shared, because one target's
/// failure is every part's on it (each source of a backup or restore run).
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// A target of a run, opened or not.
pub struct PlannedTarget {
    pub name: String,
    pub repo: Result<Repository, SharedError>,
}

/// An engine error on one target, naming it: a target that could not be
/// listed, or a pin that could not be written there.
#[derive(Debug, thiserror::Error)]
#[error("target {target:?}")]
pub struct OnTarget {
    pub target: String,
    #[source]
    pub error: Error,
}

/// `error` as a [`SharedError`] that names `target`.
pub fn on_target(target: &str, error: Error) -> SharedError {
    Arc::new(OnTarget {
        target: target.to_string(),
        error,
    })
}

/// Why a target has no report.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target could not be opened; the error is the caller's.
    #[error(transparent)]
    Unavailable(SharedError),
    /// The operation failed on it.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl TargetError {
    /// The error itself, whose causes a caller walks (a transparent
    /// wrapper's `source()` would skip it, and with it an engine [`Error`]
    /// the caller looks for).
    pub fn error(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            TargetError::Unavailable(e) => e.as_ref(),
            TargetError::Failed(e) => e,
        }
    }

    /// The error and its causes on one line, `": "` between them.
    pub fn chain(&self) -> String {
        crate::error::chain_text(self.error())
    }

    /// `target "x": ...`, naming the target once: an error from opening it
    /// may name it already.
    pub fn described(&self, target: &str) -> String {
        let named = format!("target {target:?}");
        let chain = self.chain();
        if chain.starts_with(&named) {
            chain
        } else {
            format!("{named}: {chain}")
        }
    }
}

/// One target's part: the operation's report, or why there is none.
#[derive(Debug)]
pub struct Outcome<R> {
    pub target: String,
    pub result: Result<R, TargetError>,
}

/// Every target's [`Outcome`], in the order the targets were given.
#[derive(Debug)]
pub struct Outcomes<R>(pub Vec<Outcome<R>>);

impl<R> Outcomes<R> {
    pub fn iter(&self) -> std::slice::Iter<'_, Outcome<R>> {
        self.0.iter()
    }

    /// The targets that have a report, with it.
    pub fn reports(&self) -> impl Iterator<Item = (&str, &R)> {
        self.iter()
            .filter_map(|o| o.result.as_ref().ok().map(|r| (o.target.as_str(), r)))
    }

    /// The targets without a report (not opened, or the operation failed).
    pub fn failed(&self) -> Vec<&str> {
        self.iter()
            .filter(|o| o.result.is_err())
            .map(|o| o.target.as_str())
            .collect()
    }
}

impl<R> IntoIterator for Outcomes<R> {
    type Item = Outcome<R>;
    type IntoIter = std::vec::IntoIter<Outcome<R>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// What happened, as it happens. `T` is the operation's report for one
/// part, `P` the live counters it updates.
#[derive(Debug)]
pub enum TargetEvent<'a, T, P = ()> {
    /// A part starts; `progress` counts its work. `source` is set for
    /// operations that run per source on each target (a drill).
    Started {
        target: &'a str,
        source: Option<&'a str>,
        progress: Arc<P>,
    },
    /// A part is over.
    Finished {
        target: &'a str,
        source: Option<&'a str>,
        result: &'a Result<T, TargetError>,
    },
}

/// Told of each [`TargetEvent`] as it happens.
pub trait TargetObserver<T, P = ()>: Sync {
    fn event(&self, event: TargetEvent<'_, T, P>);
}

/// An observer that prints nothing, for callers that only want the report.
pub struct Quiet;

impl<T, P> TargetObserver<T, P> for Quiet {
    fn event(&self, _: TargetEvent<'_, T, P>) {}
}

/// Runs `op` on each opened target, in order; a target that could not be
/// opened is that target's failure. `done` is told of each outcome as soon
/// as it is known.
pub async fn each<R>(
    targets: Vec<PlannedTarget>,
    mut op: impl AsyncFnMut(&str, &Repository) -> Result<R, Error>,
    mut done: impl FnMut(&Outcome<R>),
) -> Outcomes<R> {
    let mut outcomes = Vec::with_capacity(targets.len());
    for t in targets {
        let result = match t.repo {
            Ok(repo) => op(&t.name, &repo).await.map_err(TargetError::from),
            Err(e) => Err(TargetError::Unavailable(e)),
        };
        let outcome = Outcome {
            target: t.name,
            result,
        };
        done(&outcome);
        outcomes.push(outcome);
    }
    Outcomes(outcomes)
}

/// `each`, telling `observer` when each target's part is over.
pub(crate) async fn each_observed<R>(
    targets: Vec<PlannedTarget>,
    op: impl AsyncFnMut(&str, &Repository) -> Result<R, Error>,
    observer: &dyn TargetObserver<R>,
) -> Outcomes<R> {
    each(targets, op, |o| {
        observer.event(TargetEvent::Finished {
            target: &o.target,
            source: None,
            result: &o.result,
        })
    })
    .await
}
