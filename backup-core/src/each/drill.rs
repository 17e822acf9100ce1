//! The restore drill of each planned source on every planned target, and
//! the verdict: the run passed when every drill did. A target that could
//! not be opened fails each of its drills at the `open_repository` step.
//!
//! Never: restore anywhere but a fresh temporary directory, removed when
//! the drill is over whatever happened.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use super::{each, Outcome, PlannedTarget, TargetError, TargetEvent, TargetObserver};
use crate::drill::{DrillOptions, DrillProgress, DrillReport};
use crate::keys::Identities;
use crate::repo::Repository;

/// A source to drill and its drill settings.
#[derive(Debug, Clone)]
pub struct PlannedDrill {
    pub source: String,
    pub options: DrillOptions,
}

/// One drill: a source on a target.
#[derive(Debug, Serialize)]
pub struct TargetDrill {
    pub target: String,
    #[serde(flatten)]
    pub report: DrillReport,
}

/// Every drill, target by target in the planned order, and the verdict.
#[derive(Debug, Serialize)]
pub struct DrillRun {
    pub passed: bool,
    pub drills: Vec<TargetDrill>,
}

impl DrillRun {
    /// "1 of 2 drills passed".
    pub fn summary(&self) -> String {
        let passed = self.drills.iter().filter(|d| d.report.passed).count();
        format!("{passed} of {} drills passed", self.drills.len())
    }

    /// "1 of 2 drills failed: app @ local (restore: ...)", or `None`.
    pub fn failure_summary(&self) -> Option<String> {
        let failed: Vec<String> = self
            .drills
            .iter()
            .filter(|d| !d.report.passed)
            .map(|d| {
                format!(
                    "{} @ {} ({})",
                    d.report.source,
                    d.target,
                    failed_steps(&d.report)
                )
            })
            .collect();
        (!failed.is_empty()).then(|| {
            format!(
                "{} of {} drills failed: {}",
                failed.len(),
                self.drills.len(),
                failed.join(", ")
            )
        })
    }
}

/// "restore: ...; rto: ...": a drill's failed steps on one line.
pub fn failed_steps(r: &DrillReport) -> String {
    r.failures()
        .iter()
        .map(|s| format!("{}: {}", s.step, s.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Drills every source on each target in turn. `observer` hears of each
/// drill as it starts (with its progress counters) and ends.
pub async fn drill_all(
    targets: Vec<PlannedTarget>,
    ids: &Identities,
    sources: &[PlannedDrill],
    observer: &dyn TargetObserver<DrillReport, DrillProgress>,
) -> DrillRun {
    let outcomes = each(
        targets,
        async |target, repo| {
            let mut reports = Vec::new();
            for s in sources {
                let r = drill_one(repo, ids, s, target, observer).await;
                reports.push(r);
            }
            Ok(reports)
        },
        |o| {
            if let Err(e) = &o.result {
                for r in unavailable(sources, &o.target, e) {
                    finished(observer, &o.target, r);
                }
            }
        },
    )
    .await;
    let mut drills = Vec::new();
    for Outcome { target, result } in outcomes {
        let reports = result.unwrap_or_else(|e| unavailable(sources, &target, &e));
        drills.extend(reports.into_iter().map(|report| TargetDrill {
            target: target.clone(),
            report,
        }));
    }
    DrillRun {
        passed: drills.iter().all(|d| d.report.passed),
        drills,
    }
}

/// The drills of a target that could not be opened.
fn unavailable(sources: &[PlannedDrill], target: &str, e: &TargetError) -> Vec<DrillReport> {
    let detail = e.described(target);
    sources
        .iter()
        .map(|s| DrillReport::unavailable(&s.source, detail.clone()))
        .collect()
}

/// Tells `observer` that a drill is over, and gives its report back.
fn finished(
    observer: &dyn TargetObserver<DrillReport, DrillProgress>,
    target: &str,
    report: DrillReport,
) -> DrillReport {
    let result = Ok(report);
    let source = result.as_ref().ok().map(|r| r.source.as_str());
    observer.event(TargetEvent::Finished {
        target,
        source,
        result: &result,
    });
    match result {
        Ok(r) => r,
        Err(_) => unreachable!("built as Ok"),
    }
}

/// Drills one source from one target, in a scratch directory of its own.
async fn drill_one(
    repo: &Repository,
    ids: &Identities,
    s: &PlannedDrill,
    target: &str,
    observer: &dyn TargetObserver<DrillReport, DrillProgress>,
) -> DrillReport {
    let progress = Arc::new(DrillProgress::default());
    observer.event(TargetEvent::Started {
        target,
        source: Some(&s.source),
        progress: progress.clone(),
    });
    let opts = DrillOptions {
        progress: Some(progress),
        ..s.options.clone()
    };
    let report = match tempfile::Builder::new().prefix("offsite-drill-").tempdir() {
        Ok(scratch) => repo
            .drill(ids, &s.source, &opts, scratch.path(), Utc::now())
            .await
            .unwrap_or_else(|e| DrillReport::unavailable(&s.source, e.to_string())),
        Err(e) => DrillReport::unavailable(
            &s.source,
            format!(
                "cannot create a scratch directory in {}: {e} (set TMPDIR)",
                std::env::temp_dir().display()
            ),
        ),
    };
    finished(observer, target, report)
}
