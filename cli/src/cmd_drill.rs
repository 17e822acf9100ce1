//! `offsite drill`: the monthly restore drill, for every source (or one) on
//! every target (or one): the newest snapshot restored into a scratch
//! directory, checked, queried and timed against the RTO target. Prints one
//! block per drill (or `--json`), notifies, and fails when any step failed.
//! On a terminal a progress line on stderr shows the step being run and the
//! bytes restored.
//!
//! Never: restore anywhere but a fresh temporary directory, which is removed
//! afterwards whatever happens.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use backup_core::drill::{drill, DrillOptions, DrillProgress, DrillReport};
use backup_core::keys::Identities;
use backup_core::repo::Repository;
use chrono::Utc;
use serde::Serialize;

use crate::commands::{chosen_targets, identities};
use crate::config::{Config, TargetConfig};
use crate::notify::{self, Event, EventKind};
use crate::output::{Bar, Sample, STEP_AND_BYTES};
use crate::targets;

/// One drill: a source on a target.
#[derive(Debug, Serialize)]
pub struct TargetDrill {
    pub target: String,
    #[serde(flatten)]
    pub report: DrillReport,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub passed: bool,
    pub drills: Vec<TargetDrill>,
}

pub async fn run(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    identity: Option<&Path>,
    as_json: bool,
) -> Result<()> {
    let sources: Vec<&str> = match source {
        Some(s) => vec![cfg.source(s)?.name.as_str()],
        None if cfg.sources.is_empty() => {
            return Err(crate::usage::mistake(
                "no [[sources]] in the config: a drill restores a source's newest snapshot",
            ))
        }
        None => cfg.sources.iter().map(|s| s.name.as_str()).collect(),
    };
    let targets = chosen_targets(cfg, target)?;
    let ids = identities(cfg, identity).context("a drill restores data")?;
    notify::start(&cfg.notify, EventKind::Drill).await;
    let mut report = Report {
        passed: true,
        drills: Vec::new(),
    };
    for t in targets {
        let repo = open(t).await;
        for s in &sources {
            let r = match &repo {
                Ok(repo) => drill_one(cfg, repo, &ids, s, &t.name, as_json).await,
                Err(e) => DrillReport::unavailable(s, e.clone()),
            };
            if !as_json {
                print_drill(&t.name, &r);
            }
            report.passed &= r.passed;
            report.drills.push(TargetDrill {
                target: t.name.clone(),
                report: r,
            });
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    send_events(cfg, &report).await;
    let failed: Vec<String> = report
        .drills
        .iter()
        .filter(|d| !d.report.passed)
        .map(|d| {
            let steps: Vec<String> = d
                .report
                .failures()
                .iter()
                .map(|s| format!("{}: {}", s.step, s.detail))
                .collect();
            format!("{} @ {} ({})", d.report.source, d.target, steps.join("; "))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} drills failed: {}",
            failed.len(),
            report.drills.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

async fn open(t: &TargetConfig) -> Result<Repository, String> {
    let storage = targets::open(t).map_err(|e| format!("{e:#}"))?;
    Repository::open(storage)
        .await
        .map_err(|e| format!("target {:?}: {e}", t.name))
}

/// Drills `source` from `repo` (the target named `target`), with a progress
/// line unless the output is JSON.
async fn drill_one(
    cfg: &Config,
    repo: &Repository,
    ids: &Identities,
    source: &str,
    target: &str,
    as_json: bool,
) -> DrillReport {
    let progress = Arc::new(DrillProgress::default());
    let opts = DrillOptions {
        progress: Some(progress.clone()),
        ..cfg.drill_options(source)
    };
    let label = format!("drill {source} @ {target}");
    let _bar = Bar::watch(label, STEP_AND_BYTES, !as_json, move || Sample {
        message: match progress.step() {
            "" => "starting".to_string(),
            step => step.to_string(),
        },
        done: progress.restored.read.load(Ordering::Relaxed),
        total: progress.restored.total.load(Ordering::Relaxed),
    });
    let scratch = match tempfile::Builder::new().prefix("offsite-drill-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            return DrillReport::unavailable(
                source,
                format!(
                    "cannot create a scratch directory in {}: {e} (set TMPDIR)",
                    std::env::temp_dir().display()
                ),
            )
        }
    };
    match drill(repo, ids, source, &opts, scratch.path(), Utc::now()).await {
        Ok(r) => r,
        Err(e) => DrillReport::unavailable(source, e.to_string()),
    }
}

fn print_drill(target: &str, r: &DrillReport) {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let rto = match (r.rto_seconds, r.rto_target_seconds) {
        (Some(m), Some(t)) => format!(", RTO {m:.2}s (target {t:.0}s)"),
        (Some(m), None) => format!(", RTO {m:.2}s"),
        _ => String::new(),
    };
    println!(
        "drill {} @ {target}: {verdict}{}{rto}",
        r.source,
        r.snapshot
            .as_ref()
            .map(|s| format!(", snapshot {s}"))
            .unwrap_or_default()
    );
    for s in &r.steps {
        println!(
            "  [{}] {:<16} {}",
            if s.passed { "ok" } else { "FAIL" },
            s.step,
            s.detail
        );
    }
}

async fn send_events(cfg: &Config, report: &Report) {
    let events: Vec<Event> = report
        .drills
        .iter()
        .map(|d| {
            let r = &d.report;
            let mut ev =
                Event::new(EventKind::Drill, r.passed).at(Some(&r.source), Some(&d.target));
            ev.snapshot = r.snapshot.clone();
            ev.size = r.snapshot_size;
            ev.duration_seconds = r.rto_seconds;
            ev.error = (!r.passed).then(|| {
                r.failures()
                    .iter()
                    .map(|s| format!("{}: {}", s.step, s.detail))
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            ev.details = serde_json::to_value(r).ok();
            ev
        })
        .collect();
    notify::events(&cfg.notify, &events).await;
    let passed = report.drills.iter().filter(|d| d.report.passed).count();
    let summary = format!("{passed} of {} drills passed", report.drills.len());
    notify::finish(&cfg.notify, EventKind::Drill, report.passed, &summary).await;
}
