//! The restore drill: the monthly "can we actually get the data back, and how
//! fast" check, automated. For one source it checks that the newest snapshot
//! exists and is recent enough, restores it into a scratch directory (the
//! restore verifies every chunk, the SHA-256 and, for SQLite,
//! `PRAGMA integrity_check`), optionally runs a read-only smoke query on the
//! restored copy, and compares the restore time with the recovery time
//! objective.
//!
//! On format 2 (a repository opened with its key set) the newest *signed*
//! snapshot is restored, and every snapshot of the source whose signature
//! is refused fails a step of its own (`rejected_objects`), so a forgery
//! alerts like a failed restore while the genuine data is still drilled.
//! A replicated source is drilled as `restore --latest` would restore it:
//! when replica objects reach past the newest snapshot, the newest signed
//! base is restored with them replayed (every object verified, the
//! replayed copy checked), so a damaged or forged replica object fails the
//! drill before a restore at 3 a.m. meets it.
//!
//! Every check becomes a [`Step`] in a [`DrillReport`], passed or failed; a
//! failed check is a result, not an error, so the caller can print and send
//! the whole report. [`Error`] is returned only when the drill could not be
//! run at all (the repository cannot be read).
//!
//! Beside other jobs: the snapshot list is read before the restore loads the
//! index (a backup committing meanwhile is seen whole or not at all), and a
//! shared lock keeps prunes out while the drill runs. Objects that do not
//! decode are skipped with a warning (see [`crate::repo`]); damaged chunks
//! the restore meets are recorded, so the next backup stores them again.
//!
//! A caller may pass [`DrillProgress`] to show the step being run and the
//! bytes restored; it never decides anything.
//!
//! Never: restore anywhere but the scratch directory, or open the restored
//! copy for writing after the restore's own checks.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::Progress;
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::keyset::{KeySet, Trust};
use crate::lock::{Lock, LockWait};
use crate::replicate::restore::ReplayPlan;
use crate::replicate::BASE_TAG;
use crate::repo::{regular, Manifest, Repository, SnapshotV2, SnapshotsV2};
use crate::restore::RestoreOptions;
use crate::source::{sqlite, SourceKind};
use crate::status::human;

/// A smoke query: its first column of the first row must be at least `min`.
#[derive(Debug, Clone)]
pub struct SmokeQuery {
    pub sql: String,
    pub min: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// The newest snapshot must be younger than this.
    pub max_age: Option<Duration>,
    /// The restore must take at most this long.
    pub rto_target: Option<Duration>,
    /// Run on the restored copy (SQLite sources only).
    pub query: Option<SmokeQuery>,
    /// How long to wait for a running prune.
    pub lock_wait: LockWait,
    /// Where to show the step being run and the bytes restored.
    pub progress: Option<Arc<DrillProgress>>,
}

/// Live state of a drill, for a progress display.
#[derive(Debug, Default)]
pub struct DrillProgress {
    step: Mutex<&'static str>,
    /// The restore adds the bytes it writes to `read`; its `total` is the
    /// snapshot's size.
    pub restored: Arc<Progress>,
}

impl DrillProgress {
    /// The [`Step::step`] being run ("" before the first).
    pub fn step(&self) -> &'static str {
        *self.step.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Says that `step` runs now, if anyone is watching.
fn enter(opts: &DrillOptions, step: &'static str) {
    if let Some(p) = &opts.progress {
        *p.step.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }
}

/// The drill's restore: the defaults, counting into the progress if any.
fn restore_options(opts: &DrillOptions) -> RestoreOptions {
    enter(opts, "restore");
    // A drill proves the database opens: it runs integrity_check even
    // where a record says it passed (and, as the owner, records it).
    let mut ro = RestoreOptions {
        force_database_check: true,
        ..RestoreOptions::default()
    };
    if let Some(p) = &opts.progress {
        ro.progress = p.restored.clone();
    }
    ro
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `snapshot_exists`, `snapshot_age`, `restore`, `integrity_check`,
    /// `smoke_query`, `rto`, or (format 2) `rejected_objects`.
    pub step: &'static str,
    pub passed: bool,
    /// What was found, in words.
    pub detail: String,
    /// How long the step took, when it did work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub source: String,
    /// The snapshot restored, if there was one.
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    pub snapshot_size: Option<u64>,
    pub passed: bool,
    /// Measured restore time, when the restore ran.
    pub rto_seconds: Option<f64>,
    pub rto_target_seconds: Option<f64>,
    /// The smoke query's value, when it ran.
    pub query_value: Option<i64>,
    pub steps: Vec<Step>,
}

impl DrillReport {
    fn push(&mut self, step: &'static str, passed: bool, detail: String, seconds: Option<f64>) {
        self.passed &= passed;
        self.steps.push(Step {
            step,
            passed,
            detail,
            seconds,
        });
    }

    /// The report of a drill that could not start: `detail` says why the
    /// repository could not be read.
    pub fn unavailable(source: &str, detail: String) -> DrillReport {
        let mut r = DrillReport::empty(source, None);
        r.push("open_repository", false, detail, None);
        r
    }

    fn empty(source: &str, rto_target: Option<Duration>) -> DrillReport {
        DrillReport {
            source: source.to_string(),
            snapshot: None,
            snapshot_time: None,
            snapshot_size: None,
            passed: true,
            rto_seconds: None,
            rto_target_seconds: rto_target.map(|d| d.as_secs_f64()),
            query_value: None,
            steps: Vec::new(),
        }
    }

    /// The failed steps, for a one-line summary.
    pub fn failures(&self) -> Vec<&Step> {
        self.steps.iter().filter(|s| !s.passed).collect()
    }
}

/// Runs the drill for `source` on `repo`, restoring into `scratch` (an
/// existing, empty directory the caller removes afterwards).
pub(crate) async fn drill(
    repo: &Repository,
    ids: &Identities,
    source: &str,
    opts: &DrillOptions,
    scratch: &Path,
    now: DateTime<Utc>,
) -> Result<DrillReport> {
    // Like verify: a prune running meanwhile could remove the snapshot being
    // restored (a newer backup landed), which would read as damage.
    let lock = Lock::acquire_for_reading(repo, "drill", opts.lock_wait).await?;
    let result = drill_locked(repo, ids, source, opts, scratch, now).await;
    Lock::release_optional(lock).await;
    result
}

async fn drill_locked(
    repo: &Repository,
    ids: &Identities,
    source: &str,
    opts: &DrillOptions,
    scratch: &Path,
    now: DateTime<Utc>,
) -> Result<DrillReport> {
    if let Some(keys) = repo.keyset() {
        return drill_v2(repo, keys, source, opts, scratch, now).await;
    }
    let mut report = DrillReport::empty(source, opts.rto_target);
    enter(opts, "snapshot_exists");
    // What `restore --latest` would restore: pre-restore snapshots save a
    // replaced (maybe damaged) file, not the backups being drilled.
    let all = repo.snapshots(ids).await?;
    let snapshots: Vec<&Manifest> = regular(&all, Some(source)).collect();
    let Some(newest) = snapshots.first().copied() else {
        no_snapshot(&mut report, repo, source);
        return Ok(report);
    };
    let chosen = Chosen {
        id: &newest.id,
        finished: newest.finished,
        size: newest.size,
        kind: newest.kind,
        of: snapshots.len(),
        replica: None,
    };
    let to = chosen_steps(&mut report, &chosen, opts.max_age, now, scratch);
    let clock = Instant::now();
    let restored = repo.restore(ids, newest, &to, &restore_options(opts)).await;
    checks_after(
        &mut report,
        chosen.kind,
        restored,
        clock.elapsed(),
        &to,
        opts,
    )
    .await;
    Ok(report)
}

/// The drill of a format 2 repository, with the keys it was opened with:
/// the newest signed snapshot of `source` is restored (`stage_v2`, then
/// put in place in the scratch directory) and checked as in format 1, and
/// a failed step `rejected_objects` names every rejected snapshot of the
/// source, so a forgery fails the drill even when the genuine data restores.
async fn drill_v2(
    repo: &Repository,
    keys: &KeySet,
    source: &str,
    opts: &DrillOptions,
    scratch: &Path,
    now: DateTime<Utc>,
) -> Result<DrillReport> {
    let mut report = DrillReport::empty(source, opts.rto_target);
    enter(opts, "snapshot_exists");
    let all = repo.snapshots_v2(keys).await?;
    let signed = all.regular_signed(Some(source)).count();
    rejected_step(&mut report, &all, source);
    let Some(newest) = all.latest_signed(Some(source)) else {
        no_snapshot(&mut report, repo, source);
        return Ok(report);
    };
    let mut ro = restore_options(opts);
    let replicated = replicated_latest(repo, &all, source, newest).await?;
    let (drilled, replica) = match replicated {
        Some((base, plan, point)) => {
            let replica = Some((plan.objects.len(), point));
            ro.replay = Some(plan);
            (base, replica)
        }
        None => (newest, None),
    };
    let m = &drilled.manifest;
    let chosen = Chosen {
        id: &m.id,
        finished: replica.map_or(m.finished, |r| r.1),
        size: m.size,
        kind: m.kind,
        of: signed,
        replica,
    };
    let to = chosen_steps(&mut report, &chosen, opts.max_age, now, scratch);
    let clock = Instant::now();
    let restored = repo.restore_v2(keys, drilled, &to, &ro).await;
    checks_after(
        &mut report,
        chosen.kind,
        restored,
        clock.elapsed(),
        &to,
        opts,
    )
    .await;
    Ok(report)
}

/// What `restore --latest` takes over `newest` for a replicated source:
/// the newest signed base, the replay of its replica objects and the
/// instant they reach, when that is after `newest` began.
async fn replicated_latest<'a>(
    repo: &Repository,
    all: &'a SnapshotsV2,
    source: &str,
    newest: &'a SnapshotV2,
) -> Result<Option<(&'a SnapshotV2, ReplayPlan, DateTime<Utc>)>> {
    let base = (all.regular_signed(Some(source)))
        .filter(|s| s.manifest.tags.iter().any(|t| t == BASE_TAG))
        .max_by_key(|s| s.manifest.started);
    let Some(base) = base else {
        return Ok(None);
    };
    let plan = crate::replicate::restore::plan(repo, &base.manifest.id, None).await?;
    Ok(match plan.at() {
        Some(point) if point > newest.manifest.started => Some((base, plan, point)),
        _ => None,
    })
}

/// The failed step `rejected_objects` when `source` has snapshots whose
/// signature is refused, each named with its reason.
fn rejected_step(report: &mut DrillReport, all: &SnapshotsV2, source: &str) {
    let rejected: Vec<String> = (all.snapshots.iter())
        .filter(|s| s.manifest.source == source && !s.trust.is_signed())
        .map(|s| match &s.trust {
            Trust::Rejected { reason } => format!("{}: {reason}", s.manifest.key()),
            _ => format!("{}: it is not signed", s.manifest.key()),
        })
        .collect();
    if !rejected.is_empty() {
        report.push(
            "rejected_objects",
            false,
            format!(
                "{} forged or unsigned snapshots of {source}, not restored: {}",
                rejected.len(),
                rejected.join("; ")
            ),
            None,
        );
    }
}

/// The snapshot a drill restores, whichever its format.
struct Chosen<'a> {
    id: &'a str,
    finished: DateTime<Utc>,
    size: u64,
    kind: SourceKind,
    /// How many snapshots of the source it was chosen among.
    of: usize,
    /// The replica objects replayed on it and the instant they reach.
    replica: Option<(usize, DateTime<Utc>)>,
}

/// The failed `snapshot_exists` step: nothing to restore.
fn no_snapshot(report: &mut DrillReport, repo: &Repository, source: &str) {
    report.push(
        "snapshot_exists",
        false,
        format!(
            "no snapshot of source {source:?} in {}: nothing to restore",
            repo.describe()
        ),
        None,
    );
}

/// The `snapshot_exists` and `snapshot_age` steps for `chosen`; returns
/// where in `scratch` it is restored.
fn chosen_steps(
    report: &mut DrillReport,
    chosen: &Chosen<'_>,
    max_age: Option<Duration>,
    now: DateTime<Utc>,
    scratch: &Path,
) -> PathBuf {
    report.snapshot = Some(chosen.id.to_string());
    report.snapshot_time = Some(chosen.finished);
    report.snapshot_size = Some(chosen.size);
    let replayed = match chosen.replica {
        Some((objects, point)) => format!(
            ", with {objects} replica objects replayed to {}",
            point.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        None => String::new(),
    };
    report.push(
        "snapshot_exists",
        true,
        format!(
            "{} ({} bytes, {} snapshots of {}){replayed}",
            chosen.id, chosen.size, chosen.of, report.source
        ),
        None,
    );
    age_step(report, chosen.finished, max_age, now);
    scratch.join(match chosen.kind {
        SourceKind::Sqlite => "restored.db",
        SourceKind::Duckdb => "restored.duckdb",
        SourceKind::Files => "restored",
    })
}

/// The steps after the restore of `to`: restore, integrity, smoke query, rto.
async fn checks_after(
    report: &mut DrillReport,
    kind: SourceKind,
    restored: Result<crate::restore::RestoreSummary>,
    elapsed: Duration,
    to: &Path,
    opts: &DrillOptions,
) {
    if !restore_step(report, kind, restored, elapsed) {
        return;
    }
    if let Some(q) = &opts.query {
        enter(opts, "smoke_query");
        query_step(report, kind, to, q).await;
    }
    rto_step(report, opts.rto_target, elapsed);
}

/// The restore and integrity steps; returns whether the drill goes on.
fn restore_step(
    report: &mut DrillReport,
    kind: SourceKind,
    restored: Result<crate::restore::RestoreSummary>,
    elapsed: Duration,
) -> bool {
    match restored {
        Ok(summary) => {
            report.push(
                "restore",
                true,
                format!("{} bytes to a scratch directory", summary.bytes),
                Some(elapsed.as_secs_f64()),
            );
            // The restore refuses to put a copy in place unless the checksum
            // (and integrity_check for SQLite) passed: reaching here is the check.
            // The checksum is the SHA-256 of the data in format 1, and in
            // format 2 every chunk's keyed id and the list's BLAKE3.
            let what = match kind {
                SourceKind::Sqlite => "checksum and PRAGMA integrity_check ok",
                SourceKind::Duckdb => "checksum ok, and DuckDB opened it and read every table",
                SourceKind::Files => "checksum ok",
            };
            report.push("integrity_check", true, what.into(), None);
            true
        }
        // Damaged stored data: the restore could not produce a verified copy,
        // and the integrity check is the step that caught it.
        Err(e @ (Error::Verification(_) | Error::Corrupt { .. })) => {
            report.push(
                "restore",
                false,
                "the stored data failed verification; nothing was restored".into(),
                Some(elapsed.as_secs_f64()),
            );
            report.push("integrity_check", false, e.to_string(), None);
            false
        }
        Err(e) => {
            report.push("restore", false, e.to_string(), Some(elapsed.as_secs_f64()));
            false
        }
    }
}

/// How long the restore took against `rto_target`.
fn rto_step(report: &mut DrillReport, target: Option<Duration>, elapsed: Duration) {
    report.rto_seconds = Some(elapsed.as_secs_f64());
    match target {
        Some(target) => report.push(
            "rto",
            elapsed <= target,
            format!(
                "restore took {:.2}s, target {:.0}s",
                elapsed.as_secs_f64(),
                target.as_secs_f64()
            ),
            Some(elapsed.as_secs_f64()),
        ),
        None => report.push(
            "rto",
            true,
            format!(
                "restore took {:.2}s (no rto_target set)",
                elapsed.as_secs_f64()
            ),
            Some(elapsed.as_secs_f64()),
        ),
    }
}

fn age_step(
    report: &mut DrillReport,
    finished: DateTime<Utc>,
    max_age: Option<Duration>,
    now: DateTime<Utc>,
) {
    let age = (now - finished).to_std().unwrap_or_default();
    let age_text = format!("{} old", human(age));
    match max_age {
        Some(max) => report.push(
            "snapshot_age",
            age <= max,
            format!("{age_text}, max_age {}", human(max)),
            None,
        ),
        None => report.push(
            "snapshot_age",
            true,
            format!("{age_text} (no max_age set)"),
            None,
        ),
    }
}

async fn query_step(report: &mut DrillReport, kind: SourceKind, db: &Path, q: &SmokeQuery) {
    if kind != SourceKind::Sqlite {
        report.push(
            "smoke_query",
            false,
            "a smoke query needs a sqlite source".into(),
            None,
        );
        return;
    }
    let clock = Instant::now();
    let (db, sql) = (db.to_path_buf(), q.sql.clone());
    let result = tokio::task::spawn_blocking(move || sqlite::smoke_query(&db, &sql))
        .await
        .map_err(|e| Error::io("smoke query", std::io::Error::other(e.to_string())))
        .and_then(|r| r);
    let seconds = Some(clock.elapsed().as_secs_f64());
    match (result, q.min) {
        (Err(e), _) => report.push("smoke_query", false, e.to_string(), seconds),
        (Ok(None), _) => report.push(
            "smoke_query",
            q.min.is_none(),
            format!("{:?} returned no rows", q.sql),
            seconds,
        ),
        (Ok(Some(v)), min) => {
            report.query_value = Some(v);
            let passed = min.is_none_or(|m| v >= m);
            let detail = match min {
                Some(m) => format!("{:?} = {v}, expected at least {m}", q.sql),
                None => format!("{:?} = {v}", q.sql),
            };
            report.push("smoke_query", passed, detail, seconds);
        }
    }
}
