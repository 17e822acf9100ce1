//! One backup run: every configured source to every target, the way a
//! scheduled `offsite backup` does it. The binary resolves the
//! configuration into a [`Plan`] and gets a [`RunReport`]; what it prints or
//! sends as notifications comes from the [`RunEvent`]s handed to its
//! [`Observer`] as they happen. Hooks are the caller's (a [`Hooks`]
//! implementation): this module decides when they run and what a failure
//! means, never how a command is started.
//!
//! Order and failure rules:
//! - sources one after the other; each is read once and stored as one
//!   snapshot (one id, one checksum) on every target that could be opened
//!   (see [`crate::backup::backup_many`]);
//! - a source's `before` hook runs once before it is read, and its failure
//!   skips that source (the application is left as it was); `after` runs as
//!   soon as the source has been read, while uploads may still run, and also
//!   when the backup failed; `on_error` runs with every error of that
//!   source, target-wide ones included;
//! - a target that cannot be opened fails every source's part on it; a
//!   target that fails during a backup fails that source's part on it only.
//!   Nothing stops the other sources or targets. A source with no target to
//!   go to is not read at all, and its hooks do not run.
//!
//! Never swallows a failure: every part that did not store a snapshot is
//! counted in the report and told to the observer.

use std::sync::Arc;
use std::time::Duration;

use crate::backup::{backup_many, backup_many_v2, BackupOptions, BackupSummary, Progress};
pub use crate::each::{PlannedTarget, SharedError};
use crate::error::Error;
use crate::keys::Keys;
use crate::keys::KeysetId;
use crate::keyset::{KeySet, Trust};
use crate::repo::{Manifest, ManifestV2, Repository, SnapshotV2};
use crate::source::SourceSpec;

/// A source's hooks: `before`, `after` and `on_error` around its backup
/// (run here), `before_restore` and `after_restore` around an in-place
/// restore of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Before,
    After,
    OnError,
    BeforeRestore,
    AfterRestore,
}

impl Hook {
    /// The hook's setting name in `[[sources]]`.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Before => "before",
            Hook::After => "after",
            Hook::OnError => "on_error",
            Hook::BeforeRestore => "before_restore",
            Hook::AfterRestore => "after_restore",
        }
    }
}

/// Runs a source's hook commands. `errors` is given to `on_error`. An
/// implementation blocks until the command is done; a source without that
/// hook is a success.
pub trait Hooks: Send + Sync {
    fn has(&self, source: &str, hook: Hook) -> bool;
    fn run(&self, source: &str, hook: Hook, errors: Option<&str>) -> Result<(), String>;
}

/// What happened, in order, for printing and notifications.
#[derive(Debug)]
pub enum RunEvent {
    /// A source is about to be read; `progress` counts its reading.
    SourceStarted {
        source: String,
        progress: Arc<Progress>,
    },
    /// The source's part is over on every target (stored or failed).
    SourceFinished { source: String },
    Stored {
        source: String,
        target: String,
        /// Boxed: a manifest is large beside the other events.
        summary: Box<BackupSummary>,
    },
    /// `source` is `None` for a target that could not be opened: every
    /// source's part on it failed.
    Failed {
        source: Option<String>,
        target: String,
        error: SharedError,
    },
    /// A source could not be read: its part on every open target (named
    /// in `targets`) failed.
    SourceFailed {
        source: String,
        targets: Vec<String>,
        error: Error,
    },
    HookFailed {
        source: String,
        hook: Hook,
        message: String,
    },
}

/// Told of each [`RunEvent`] as it happens.
pub trait Observer: Send + Sync {
    fn event(&self, event: RunEvent);
}

/// A source of the run, how long a DuckDB one waits for its writer, and
/// whether its backup runs the database check (`database_check = "backup"`).
#[derive(Debug, Clone)]
pub struct PlannedSource {
    pub spec: SourceSpec,
    pub lock_timeout: Duration,
    pub check_at_backup: bool,
}

/// Everything a run needs, resolved from the configuration.
pub struct Plan {
    pub sources: Vec<PlannedSource>,
    pub targets: Vec<PlannedTarget>,
    /// Per-snapshot settings; `progress`, `source_read` and `lock_timeout`
    /// are set by the run for each source.
    pub options: BackupOptions,
}

/// How the run went: `parts` is sources x targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub parts: usize,
    pub failed: usize,
    pub hooks_failed: usize,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.hooks_failed == 0
    }

    /// "2 of 4 backups failed; 1 source hook(s) failed", or `None`.
    pub fn failure_summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.failed > 0 {
            parts.push(format!("{} of {} backups failed", self.failed, self.parts));
        }
        if self.hooks_failed > 0 {
            parts.push(format!("{} source hook(s) failed", self.hooks_failed));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Runs the plan: see the module doc for the order and the failure rules.
pub async fn run(
    plan: Plan,
    keys: Option<&Keys>,
    hooks: Arc<dyn Hooks>,
    observer: &dyn Observer,
) -> RunReport {
    let mut report = RunReport {
        parts: plan.sources.len() * plan.targets.len(),
        ..Default::default()
    };
    let mut target_errors = Vec::new();
    let mut repos = Vec::new();
    let mut names = Vec::new();
    for t in plan.targets {
        match t.repo {
            Ok(repo) => {
                repos.push(repo);
                names.push(t.name);
            }
            Err(error) => {
                report.failed += plan.sources.len();
                target_errors.push(format!(
                    "target {:?}: {}",
                    t.name,
                    crate::error::chain_text(error.as_ref())
                ));
                observer.event(RunEvent::Failed {
                    source: None,
                    target: t.name,
                    error,
                });
            }
        }
    }
    let repos: Vec<&Repository> = repos.iter().collect();
    for source in &plan.sources {
        let mut errors = target_errors.clone();
        if !repos.is_empty() {
            let part = SourcePart {
                source,
                repos: &repos,
                names: &names,
                keys,
                hooks: &hooks,
                observer,
                options: &plan.options,
            };
            part.run(&mut report, &mut errors).await;
        }
        if !errors.is_empty() {
            let name = source.spec.name.clone();
            if let Err(message) =
                run_hook(&hooks, &name, Hook::OnError, Some(errors.join("\n"))).await
            {
                report.hooks_failed += 1;
                observer.event(RunEvent::HookFailed {
                    source: name,
                    hook: Hook::OnError,
                    message,
                });
            }
        }
    }
    report
}

/// Runs one hook on a blocking thread; a source without it is a success.
pub(crate) async fn run_hook(
    hooks: &Arc<dyn Hooks>,
    source: &str,
    hook: Hook,
    errors: Option<String>,
) -> Result<(), String> {
    if !hooks.has(source, hook) {
        return Ok(());
    }
    let hooks = hooks.clone();
    let source = source.to_string();
    tokio::task::spawn_blocking(move || hooks.run(&source, hook, errors.as_deref()))
        .await
        .map_err(|e| format!("hook thread: {e}"))?
}

/// Backs up one source to every repository of the run, whatever their
/// formats: the format 1 targets in one [`backup_many`], the format 2
/// ones in one [`backup_many_v2`] per key set (each reads the source once:
/// the chunk ids differ between them). Results in the order of `repos`;
/// `Err` when the source itself could not be read. The `after` hook's
/// signal ([`BackupOptions::source_read`]) goes to the last read only.
async fn backup_by_format(
    repos: &[&Repository],
    keys: Option<&Keys>,
    spec: &SourceSpec,
    opts: &BackupOptions,
) -> crate::error::Result<Vec<crate::error::Result<BackupSummary>>> {
    let mut groups: Vec<(Option<&KeysetId>, Vec<usize>)> = Vec::new();
    for (n, repo) in repos.iter().enumerate() {
        let format = repo.keyset().map(KeySet::id);
        match groups.iter_mut().find(|(f, _)| *f == format) {
            Some((_, members)) => members.push(n),
            None => groups.push((format, vec![n])),
        }
    }
    let mut results: Vec<Option<crate::error::Result<BackupSummary>>> =
        repos.iter().map(|_| None).collect();
    let last = groups.len() - 1;
    for (g, (format, members)) in groups.iter().enumerate() {
        let opts = BackupOptions {
            source_read: if g == last {
                opts.source_read.clone()
            } else {
                None
            },
            ..opts.clone()
        };
        let group: Vec<&Repository> = members.iter().map(|&n| repos[n]).collect();
        let done = match (format, keys) {
            (Some(_), _) => backup_many_v2(&group, spec, &opts)
                .await?
                .into_iter()
                .map(|r| r.map(as_listed))
                .collect(),
            (None, Some(keys)) => backup_many(&group, keys, spec, &opts).await?,
            (None, None) => group.iter().map(|_| Err(no_recipients())).collect(),
        };
        for (&n, r) in members.iter().zip(done) {
            results[n] = Some(r);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every target is in one group"))
        .collect())
}

/// A format 2 backup's summary as the run reports every snapshot.
fn as_listed(s: BackupSummary<ManifestV2>) -> BackupSummary {
    let writer = s.manifest.writer.clone();
    let snapshot = SnapshotV2 {
        manifest: s.manifest,
        trust: Trust::Signed { writer },
    };
    BackupSummary {
        manifest: Manifest::from_v2(&snapshot),
        requests: s.requests,
        duration: s.duration,
    }
}

fn no_recipients() -> Error {
    Error::Key(
        "no recipients configured: format 1 targets need encryption.recipients (age1... public \
         keys, e.g. the one `offsite keygen` prints)"
            .into(),
    )
}

/// One source onto the open targets.
struct SourcePart<'a> {
    source: &'a PlannedSource,
    repos: &'a [&'a Repository],
    names: &'a [String],
    keys: Option<&'a Keys>,
    hooks: &'a Arc<dyn Hooks>,
    observer: &'a dyn Observer,
    options: &'a BackupOptions,
}

impl SourcePart<'_> {
    fn name(&self) -> &str {
        &self.source.spec.name
    }

    fn hook_failed(&self, report: &mut RunReport, errors: &mut Vec<String>, hook: Hook, m: String) {
        report.hooks_failed += 1;
        errors.push(m.clone());
        self.observer.event(RunEvent::HookFailed {
            source: self.name().to_string(),
            hook,
            message: m,
        });
    }

    async fn run(&self, report: &mut RunReport, errors: &mut Vec<String>) {
        if let Err(m) = run_hook(self.hooks, self.name(), Hook::Before, None).await {
            report.failed += self.repos.len();
            self.hook_failed(report, errors, Hook::Before, m);
            return;
        }
        let progress = Arc::new(Progress::default());
        self.observer.event(RunEvent::SourceStarted {
            source: self.name().to_string(),
            progress: progress.clone(),
        });
        let (result, after) = self.backup(progress).await;
        self.observer.event(RunEvent::SourceFinished {
            source: self.name().to_string(),
        });
        self.record(result, report, errors);
        if let Err(m) = after {
            self.hook_failed(report, errors, Hook::After, m);
        }
    }

    /// The backup itself, with the `after` hook started once the source
    /// has been read.
    async fn backup(
        &self,
        progress: Arc<Progress>,
    ) -> (
        crate::error::Result<Vec<crate::error::Result<BackupSummary>>>,
        Result<(), String>,
    ) {
        let read_done = Arc::new(tokio::sync::Notify::new());
        let opts = BackupOptions {
            progress,
            source_read: Some(read_done.clone()),
            lock_timeout: self.source.lock_timeout,
            check_at_backup: self.source.check_at_backup,
            ..self.options.clone()
        };
        let run = backup_by_format(self.repos, self.keys, &self.source.spec, &opts);
        tokio::pin!(run);
        let mut after = None;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = read_done.notified(), if after.is_none() => {
                    let hooks = self.hooks.clone();
                    let name = self.name().to_string();
                    after = Some(tokio::spawn(async move {
                        run_hook(&hooks, &name, Hook::After, None).await
                    }));
                }
            }
        };
        let after = match after {
            Some(h) => h.await.unwrap_or_else(|e| Err(format!("hook task: {e}"))),
            None => run_hook(self.hooks, self.name(), Hook::After, None).await,
        };
        (result, after)
    }

    fn record(
        &self,
        result: crate::error::Result<Vec<crate::error::Result<BackupSummary>>>,
        report: &mut RunReport,
        errors: &mut Vec<String>,
    ) {
        let results = match result {
            Ok(results) => results,
            Err(error) => {
                report.failed += self.repos.len();
                errors.push(crate::error::chain_text(&error));
                self.observer.event(RunEvent::SourceFailed {
                    source: self.name().to_string(),
                    targets: self.names.to_vec(),
                    error,
                });
                return;
            }
        };
        for (target, r) in self.names.iter().zip(results) {
            match r {
                Ok(summary) => self.observer.event(RunEvent::Stored {
                    source: self.name().to_string(),
                    target: target.clone(),
                    summary: Box::new(summary),
                }),
                Err(error) => {
                    report.failed += 1;
                    errors.push(format!(
                        "target {target:?}: {}",
                        crate::error::chain_text(&error)
                    ));
                    self.observer.event(RunEvent::Failed {
                        source: Some(self.name().to_string()),
                        target: target.clone(),
                        error: Arc::new(error),
                    });
                }
            }
        }
    }
}
