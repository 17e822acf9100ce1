//! One `offsite restore` run: one source or every source of the
//! configuration, each from the snapshot a [`Selector`] picks across the
//! targets, to its destination. The binary resolves the configuration into
//! a [`RestorePlan`] and gets a [`RestoreReport`]; what it prints comes from
//! the [`RestoreEvent`]s handed to its [`RestoreObserver`]. Hooks are the
//! caller's ([`Hooks`]): this module decides when `before_restore` and
//! `after_restore` run and what their failure means, never how a command
//! is started.
//!
//! Order and failure rules, per source, one source after the other:
//! - with `test`, the destination is a temporary directory of the source's
//!   own, removed when the source is done: nothing else is touched and no
//!   hook runs;
//! - an existing destination without `force` fails the source before any
//!   target is read;
//! - the targets are opened and listed in preference order; one that
//!   cannot be is told to the observer and passed over, and only when none
//!   can is the source failed. The snapshot is chosen over every listing
//!   ([`choose`]: the newest wins; at equal times, and for one id held by
//!   several targets, the first target). The other planned fallbacks are
//!   asked for chunks that are damaged or missing on the chosen one;
//! - the restore hooks apply only when the destination is the source's own
//!   path. Without a `before_restore` hook, a database in use is refused
//!   before the download. The snapshot is downloaded and verified beside
//!   the destination; then `before_restore` runs, and its failure fails
//!   the source with nothing changed and `after_restore` not run; then the
//!   in-use check, the pre-restore snapshot of what is replaced, the switch;
//! - the pre-restore snapshot is best effort: a file that cannot be read
//!   as its kind (a corrupt database is the usual reason to restore) or a
//!   repository that cannot take it is an event, never a failure, because
//!   the replaced file is moved aside in any case, never deleted;
//! - `after_restore` runs once the restore is over, whether the switch
//!   succeeded or failed (with the error), so that an application stopped
//!   for it is started again. Its failure fails the source even though the
//!   data was restored (the report says both).
//!
//! A failed source never stops the others; every source not restored is
//! named in the report's verdict.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::across::{self, Listing, NoTargetReadable, Pins};
use crate::backup::{BackupOptions, Progress};
use crate::each::{PlannedTarget, SharedError};
use crate::error::{chain_text, Error};
use crate::keys::{Identities, Keys};
use crate::replicate::restore::ReplayPlan;
use crate::replicate::BASE_TAG;
use crate::repo::{newest_first, select, Manifest, Repository, Selector, PRE_RESTORE_TAG};
use crate::restore::{check_not_in_use, stage, Fallback, RestoreOptions, RestoreSummary, Staged};
use crate::run::{run_hook, Hook, Hooks};
use crate::source::SourceSpec;

/// A source to restore and where to: its own path, or elsewhere.
#[derive(Debug, Clone)]
pub struct PlannedRestore {
    pub spec: SourceSpec,
    pub to: PathBuf,
}

/// The pre-restore snapshot's keys (or why there are none) and settings;
/// the run sets its tag.
pub struct PreRestore {
    pub keys: Result<Keys, SharedError>,
    pub options: BackupOptions,
}

pub struct RestoreRunOptions {
    /// Replace an existing destination (moved aside, never deleted).
    pub force: bool,
    /// The database's own check; the checksum is verified in any case.
    pub check_database: bool,
    /// Run it even when a signed record says it passed on the snapshot.
    pub force_database_check: bool,
    /// Restore into a temporary directory and remove it: a check only.
    pub test: bool,
    /// `None`: no snapshot of what a restore replaces.
    pub pre_restore: Option<PreRestore>,
}

/// Everything a restore run needs, resolved from the configuration.
pub struct RestorePlan {
    pub sources: Vec<PlannedRestore>,
    pub selector: Selector,
    /// Where the snapshot is looked for, in preference order.
    pub targets: Vec<PlannedTarget>,
    /// Every target that could be opened, for damaged or missing chunks;
    /// the one restored from is left out.
    pub fallbacks: Vec<Fallback>,
    pub options: RestoreRunOptions,
}

/// Why a source was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The restore itself: the destination exists, the download, a check,
    /// the database in use, the switch.
    #[error(transparent)]
    Restore(#[from] Error),
    #[error(transparent)]
    NoTarget(NoTargetReadable),
    #[error("no target to restore from")]
    NoTargets,
    /// No listed target has the snapshot asked for (or it is ambiguous).
    #[error("in target{} {}", if .targets.len() == 1 { "" } else { "s" }, quoted(.targets))]
    Choice {
        targets: Vec<String>,
        #[source]
        error: Error,
    },
    /// The `before_restore` hook failed: nothing was changed.
    #[error("{0}")]
    BeforeRestore(String),
    #[error("creating a temporary directory for --test (set TMPDIR to choose where)")]
    Scratch(#[source] std::io::Error),
}

impl RestoreError {
    /// The error to print and to look for a hint in: the engine's own
    /// error itself where this one only wraps it.
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match self {
            RestoreError::Restore(e) => e,
            e => e,
        }
    }
}

fn quoted(names: &[String]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    names.join(", ")
}

/// A snapshot put in place.
#[derive(Debug)]
pub struct Restored {
    pub target: String,
    pub manifest: Manifest,
    pub summary: RestoreSummary,
    /// The snapshot of the file that was replaced, if one was taken.
    pub pre_restore: Option<String>,
}

/// How one source went. `after_restore` is that hook's failure.
#[derive(Debug)]
pub enum Outcome {
    Restored {
        restored: Box<Restored>,
        after_restore: Option<String>,
    },
    Failed {
        error: RestoreError,
        after_restore: Option<String>,
    },
}

impl Outcome {
    fn failed(error: impl Into<RestoreError>) -> Outcome {
        Outcome::Failed {
            error: error.into(),
            after_restore: None,
        }
    }
}

#[derive(Debug)]
pub struct SourceReport {
    pub source: String,
    pub outcome: Outcome,
}

impl SourceReport {
    /// Restored, and its `after_restore` hook (if it ran) succeeded.
    pub fn ok(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Restored {
                after_restore: None,
                ..
            }
        )
    }
}

/// Every source's report, in plan order.
#[derive(Debug, Default)]
pub struct RestoreReport {
    pub sources: Vec<SourceReport>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        self.sources.iter().all(SourceReport::ok)
    }

    /// The sources that were not restored, or whose `after_restore` failed.
    pub fn not_restored(&self) -> Vec<&str> {
        let failed = self.sources.iter().filter(|s| !s.ok());
        failed.map(|s| s.source.as_str()).collect()
    }

    /// "1 of 2 sources were not restored: app", or `None`.
    pub fn failure_summary(&self) -> Option<String> {
        let failed = self.not_restored();
        (!failed.is_empty()).then(|| {
            format!(
                "{} of {} sources were not restored: {}",
                failed.len(),
                self.sources.len(),
                failed.join(", ")
            )
        })
    }
}

/// Why no pre-restore snapshot was taken of a file being replaced.
#[derive(Debug, Clone, Copy)]
pub enum NoPreRestore<'a> {
    /// The caller could not give keys to write it with.
    NoKeys(&'a (dyn StdError + Send + Sync + 'static)),
    /// The file could not be read as its kind, or the target took nothing.
    Failed(&'a Error),
}

/// What happened, in order, for printing.
pub enum RestoreEvent<'a> {
    /// A target that could not be opened or listed; passed over.
    TargetPassedOver {
        source: &'a str,
        error: &'a (dyn StdError + Send + Sync + 'static),
    },
    /// The snapshot is being downloaded and verified; `progress` counts it.
    Downloading {
        source: &'a str,
        snapshot: &'a str,
        progress: Arc<Progress>,
    },
    Downloaded {
        source: &'a str,
    },
    /// The file at `path` is replaced without a snapshot of it first.
    NoPreRestoreSnapshot {
        source: &'a str,
        path: &'a Path,
        reason: NoPreRestore<'a>,
    },
    /// The source is done, restored or not.
    Finished(&'a SourceReport),
}

/// Told of each [`RestoreEvent`] as it happens.
pub trait RestoreObserver: Send + Sync {
    fn event(&self, event: RestoreEvent<'_>);
}

/// Runs the plan: see the module doc for the order and the failure rules.
pub async fn run(
    plan: RestorePlan,
    ids: &Identities,
    hooks: Arc<dyn Hooks>,
    observer: &dyn RestoreObserver,
) -> RestoreReport {
    let run = Run {
        plan: &plan,
        ids,
        hooks: &hooks,
        observer,
    };
    let mut report = RestoreReport::default();
    for source in &plan.sources {
        let done = SourceReport {
            source: source.spec.name.clone(),
            outcome: run.source(source).await,
        };
        observer.event(RestoreEvent::Finished(&done));
        report.sources.push(done);
    }
    report
}

/// The snapshot a source is restored from.
struct Chosen {
    target: String,
    repo: Repository,
    manifest: Manifest,
    /// Replica objects to apply on top (the manifest is their base).
    replay: Option<ReplayPlan>,
}

struct Run<'a> {
    plan: &'a RestorePlan,
    ids: &'a Identities,
    hooks: &'a Arc<dyn Hooks>,
    observer: &'a dyn RestoreObserver,
}

impl Run<'_> {
    async fn source(&self, source: &PlannedRestore) -> Outcome {
        let opts = &self.plan.options;
        // Removed on return: the whole restore and its checks run in it.
        let scratch = if opts.test {
            match tempfile::Builder::new()
                .prefix("offsite-restore-test-")
                .tempdir()
            {
                Ok(dir) => Some(dir),
                Err(e) => return Outcome::failed(RestoreError::Scratch(e)),
            }
        } else {
            None
        };
        let to = match &scratch {
            Some(dir) => dir.path().join(&source.spec.name),
            None => source.to.clone(),
        };
        let replacing = std::fs::symlink_metadata(&to).is_ok();
        if replacing && !opts.force {
            return Outcome::failed(Error::TargetExists(to));
        }
        let chosen = match self.choose(&source.spec.name).await {
            Ok(c) => c,
            Err(e) => return Outcome::failed(e),
        };
        self.put_back(source, chosen, &to, replacing).await
    }

    /// The snapshot the selector picks across the readable targets.
    /// A replicated point (a base and its replica objects) is taken when it
    /// is newer than the snapshot chosen otherwise.
    async fn choose(&self, source: &str) -> Result<Chosen, RestoreError> {
        let listings = self.listings(source).await?;
        let lists: Vec<&[Manifest]> = listings.iter().map(|l| l.snapshots.as_slice()).collect();
        let regular = choose(&lists, source, &self.plan.selector);
        let replicated = replicated_point(&listings, source, &self.plan.selector).await;
        let (i, manifest, replay) = match (regular, replicated) {
            (Ok((_, m)), Some((j, base, plan, point))) if point > m.started => {
                (j, base, Some(plan))
            }
            (Ok((i, m)), _) => (i, m.clone(), None),
            (Err(_), Some((j, base, plan, _))) => (j, base, Some(plan)),
            (Err(error), None) => {
                return Err(RestoreError::Choice {
                    targets: listings.iter().map(|l| l.target.clone()).collect(),
                    error,
                })
            }
        };
        let chosen = listings.into_iter().nth(i).expect("index of a listing");
        Ok(Chosen {
            target: chosen.target,
            repo: chosen.repo,
            manifest,
            replay,
        })
    }

    /// Every planned target listed, in order; those that cannot be are
    /// passed over, told to the observer.
    async fn listings(&self, source: &str) -> Result<Vec<Listing>, RestoreError> {
        if self.plan.targets.is_empty() {
            return Err(RestoreError::NoTargets);
        }
        let found = across::list(&self.plan.targets, self.ids, Pins::Skip)
            .await
            .map_err(RestoreError::NoTarget)?;
        for error in &found.passed_over {
            self.observer.event(RestoreEvent::TargetPassedOver {
                source,
                error: &**error,
            });
        }
        Ok(found.listings)
    }

    /// Downloads and verifies the snapshot beside `to`, then switches it
    /// into place, with the restore hooks around the switch when `to` is
    /// the source's own path.
    async fn put_back(
        &self,
        source: &PlannedRestore,
        chosen: Chosen,
        to: &Path,
        replacing: bool,
    ) -> Outcome {
        let name = source.spec.name.as_str();
        let hooked = !self.plan.options.test && is_source_path(&source.spec.path, to);
        // With no hook to stop the application, a database in use is
        // refused before the download rather than after it.
        if !hooked || !self.hooks.has(name, Hook::BeforeRestore) {
            if let Err(e) = check_not_in_use(to, chosen.manifest.kind) {
                return Outcome::failed(e);
            }
        }
        let staged = match self.stage(name, &chosen, to).await {
            Ok(s) => s,
            Err(e) => return Outcome::failed(e),
        };
        if hooked {
            if let Err(m) = run_hook(self.hooks, name, Hook::BeforeRestore, None).await {
                return Outcome::failed(RestoreError::BeforeRestore(m));
            }
        }
        let result = self.switch(source, &chosen, staged, replacing).await;
        let after_restore = if hooked {
            let error = result.as_ref().err().map(|e| chain_text(e));
            run_hook(self.hooks, name, Hook::AfterRestore, error)
                .await
                .err()
        } else {
            None
        };
        match result {
            Ok((summary, pre_restore)) => Outcome::Restored {
                restored: Box::new(Restored {
                    target: chosen.target,
                    manifest: chosen.manifest,
                    summary,
                    pre_restore,
                }),
                after_restore,
            },
            Err(e) => Outcome::Failed {
                error: e.into(),
                after_restore,
            },
        }
    }

    async fn stage(&self, source: &str, chosen: &Chosen, to: &Path) -> Result<Staged, Error> {
        let opts = &self.plan.options;
        let progress = Arc::new(Progress::default());
        let restore = RestoreOptions {
            force: opts.force,
            progress: progress.clone(),
            check_database: opts.check_database,
            force_database_check: opts.force_database_check,
            fallbacks: self
                .plan
                .fallbacks
                .iter()
                .filter(|f| f.name != chosen.target)
                .cloned()
                .collect(),
            replay: chosen.replay.clone(),
            ..Default::default()
        };
        self.observer.event(RestoreEvent::Downloading {
            source,
            snapshot: &chosen.manifest.id,
            progress,
        });
        let staged = stage(&chosen.repo, self.ids, &chosen.manifest, to, &restore).await;
        self.observer.event(RestoreEvent::Downloaded { source });
        staged
    }

    /// With nothing else using the database: the pre-restore snapshot of
    /// what is there, then the switch.
    async fn switch(
        &self,
        source: &PlannedRestore,
        chosen: &Chosen,
        staged: Staged,
        replacing: bool,
    ) -> Result<(RestoreSummary, Option<String>), Error> {
        let to = staged.destination().to_path_buf();
        check_not_in_use(&to, source.spec.kind)?;
        let pre_restore = match &self.plan.options.pre_restore {
            Some(pre) if replacing => {
                let spec = SourceSpec {
                    path: to,
                    ..source.spec.clone()
                };
                self.pre_restore_snapshot(pre, &chosen.repo, &spec).await
            }
            _ => None,
        };
        Ok((staged.put_in_place().await?, pre_restore))
    }

    /// Backs up the file about to be replaced, so that an in-place restore
    /// can itself be undone; best effort (see the module doc).
    async fn pre_restore_snapshot(
        &self,
        pre: &PreRestore,
        repo: &Repository,
        spec: &SourceSpec,
    ) -> Option<String> {
        let skipped = |reason| RestoreEvent::NoPreRestoreSnapshot {
            source: &spec.name,
            path: &spec.path,
            reason,
        };
        let opts = BackupOptions {
            tags: vec![PRE_RESTORE_TAG.to_string()],
            ..pre.options.clone()
        };
        if repo.keyset().is_some() {
            // Format 2: signed with the key set the restore opened (the
            // owner's identity signs; a recipient who is not the owner
            // cannot, and the snapshot is skipped with that reason).
            let stored = crate::backup::backup_many_v2(&[repo], spec, &opts).await;
            return match stored.and_then(|mut r| r.remove(0)) {
                Ok(s) => Some(s.manifest.id),
                Err(e) => {
                    tracing::warn!(error = %e, "no pre-restore snapshot");
                    self.observer.event(skipped(NoPreRestore::Failed(&e)));
                    None
                }
            };
        }
        let keys = match &pre.keys {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %chain_text(&**e), "no pre-restore snapshot: no recipients");
                self.observer.event(skipped(NoPreRestore::NoKeys(&**e)));
                return None;
            }
        };
        match repo.backup(keys, spec, &opts).await {
            Ok(s) => Some(s.manifest.id),
            Err(e) => {
                tracing::warn!(error = %e, "no pre-restore snapshot");
                self.observer.event(skipped(NoPreRestore::Failed(&e)));
                None
            }
        }
    }
}

/// Whether a restore to `to` replaces the source's own data (the path the
/// application uses), so that its restore hooks apply.
fn is_source_path(source_path: &Path, to: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).ok();
    if abs(to).is_some() && abs(to) == abs(source_path) {
        return true;
    }
    // The same file reached another way (a symlinked directory).
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(to), std::fs::metadata(source_path)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// The newest replicated point of `source` that `sel` allows, across the
/// format 2 listings: (listing, base, replay, the point's instant). A time
/// given to the second means the end of that second (the state of every
/// transaction committed in it). A target whose objects cannot be listed
/// is passed over with a warning.
async fn replicated_point(
    listings: &[Listing],
    source: &str,
    sel: &Selector,
) -> Option<(usize, Manifest, ReplayPlan, chrono::DateTime<chrono::Utc>)> {
    use chrono::Timelike;
    let until = match sel {
        Selector::Id(_) => return None,
        Selector::Latest => None,
        Selector::At(t) if t.nanosecond() == 0 => Some(*t + chrono::Duration::seconds(1)),
        Selector::At(t) => Some(*t),
    };
    let mut best: Option<(usize, Manifest, ReplayPlan, chrono::DateTime<chrono::Utc>)> = None;
    for (i, listing) in listings.iter().enumerate() {
        if listing.repo.keyset().is_none() {
            continue;
        }
        let base = (listing.snapshots.iter())
            .filter(|m| m.source == source && m.tags.iter().any(|t| t == BASE_TAG))
            .filter(|m| until.is_none_or(|u| m.started <= u))
            .max_by_key(|m| m.started);
        let Some(base) = base else { continue };
        let plan = match crate::replicate::restore::plan(&listing.repo, &base.id, until).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target = %listing.target, "cannot list replica objects: {e}");
                continue;
            }
        };
        let point = plan.at().unwrap_or(base.started);
        if best.as_ref().is_none_or(|b| point > b.3) {
            best = Some((i, base.clone(), plan, point));
        }
    }
    best
}

/// The snapshot of `source` that `sel` picks across the targets' lists
/// (in preference order), and the index of the list it is taken from.
pub fn choose<'a>(
    lists: &[&'a [Manifest]],
    source: &str,
    sel: &Selector,
) -> Result<(usize, &'a Manifest), Error> {
    let mut best: Option<(usize, &Manifest)> = None;
    let mut first_miss = None;
    for (i, list) in lists.iter().enumerate() {
        let m = match select(list, Some(source), sel) {
            Ok(m) => m,
            Err(e @ Error::SnapshotNotFound(_)) => {
                first_miss.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        best = match (best, sel) {
            (Some((_, b)), Selector::Id(id)) if b.id != m.id => {
                return Err(Error::AmbiguousSnapshot(
                    id.clone(),
                    format!("{}, {}", b.id, m.id),
                ))
            }
            // The newest (by `newest_first`) wins; one id on several
            // targets comes from the first of them.
            (Some(b), _) if b.1.id == m.id || newest_first(b.1, m).is_le() => Some(b),
            _ => Some((i, m)),
        };
    }
    match (best, first_miss) {
        (Some(b), _) => Ok(b),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::SnapshotNotFound(format!("source {source}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;
    use chrono::{DateTime, Utc};

    fn snap(id: &str, time: &str, tags: &[&str]) -> Manifest {
        let t: DateTime<Utc> = time.parse().unwrap();
        Manifest {
            format: "offsite-snapshot".into(),
            version: 1,
            id: id.into(),
            source: "app".into(),
            kind: SourceKind::Sqlite,
            host: "h".into(),
            started: t,
            finished: t,
            size: 1,
            files: 1,
            chunks: 1,
            new_bytes: 1,
            uploaded_bytes: 1,
            sha256: String::new(),
            list: format!("lists/{id}"),
            page_size: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tool: "test".into(),
            trust: None,
        }
    }

    fn chosen(lists: &[&[Manifest]], sel: &Selector) -> Result<(usize, String), Error> {
        choose(lists, "app", sel).map(|(i, m)| (i, m.id.clone()))
    }

    #[test]
    fn choice_is_over_every_target() {
        let empty: Vec<Manifest> = Vec::new();
        let a = vec![
            snap("a2", "2026-11-22T10:00:00Z", &[PRE_RESTORE_TAG]),
            snap("a1", "2026-11-21T02:00:00Z", &[]),
        ];
        let b = vec![
            snap("b2", "2026-11-22T02:00:00Z", &[]),
            snap("b1", "2026-11-20T02:00:00Z", &[]),
        ];
        let lists: [&[Manifest]; 3] = [&empty, &a, &b];
        // The newest regular snapshot, whichever target holds it.
        assert_eq!(chosen(&lists, &Selector::Latest).unwrap(), (2, "b2".into()));
        let at = |t: &str| Selector::At(t.parse().unwrap());
        assert_eq!(
            chosen(&lists, &at("2026-11-21T12:00:00Z")).unwrap(),
            (1, "a1".into())
        );
        assert_eq!(
            chosen(&lists, &Selector::Id("b1".into())).unwrap(),
            (2, "b1".into())
        );
        // A pre-restore snapshot is still chosen by its id.
        assert_eq!(
            chosen(&lists, &Selector::Id("a2".into())).unwrap(),
            (1, "a2".into())
        );
        assert!(matches!(
            chosen(&lists, &at("2026-01-01T00:00:00Z")),
            Err(Error::SnapshotNotFound(_))
        ));
        assert!(matches!(
            chosen(&[&empty], &Selector::Latest),
            Err(Error::SnapshotNotFound(_))
        ));
        // A part of an id that matches snapshots on two targets is ambiguous...
        assert!(matches!(
            chosen(&lists, &Selector::Id("2".into())),
            Err(Error::AmbiguousSnapshot(..))
        ));
        // ...but one id held by several targets is one snapshot, from the first.
        let copy = vec![snap("b2", "2026-11-22T02:00:00Z", &[])];
        let lists: [&[Manifest]; 2] = [&copy, &b];
        assert_eq!(
            chosen(&lists, &Selector::Id("b2".into())).unwrap(),
            (0, "b2".into())
        );
        assert_eq!(chosen(&lists, &Selector::Latest).unwrap(), (0, "b2".into()));
    }
}
