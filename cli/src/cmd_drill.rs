//! `offsite drill`: the monthly restore drill, for every source (or one) on
//! every target (or one): the newest snapshot restored into a scratch
//! directory, checked, queried and timed against the RTO target. The drills
//! and their verdict are the engine's ([`backup_core::each::drill`]); this
//! prints one block per drill (or `--json`), notifies, and fails when the
//! engine says a drill failed.
//! On a terminal a progress line on stderr shows the step being run and the
//! bytes restored. Each drill's outcome is recorded as it ends (state.rs),
//! for `offsite status` and the dashboard; a record that cannot be written
//! is a warning, never a failed drill.
//!
//! Never: restore anywhere but a fresh temporary directory, which is removed
//! afterwards whatever happens.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use backup_core::drill::{DrillProgress, DrillReport};
use backup_core::each::drill::{drill_all, failed_steps, DrillRun, PlannedDrill};
use backup_core::each::{TargetEvent, TargetObserver};
use chrono::Utc;

use crate::config::Config;
use crate::notify::{self, EventKind};
use crate::output::{Bar, Done, Sample, STEP_AND_BYTES};
use crate::per_target::{config_failure, failed, open_targets, Unsigned};
use crate::resolve::{access, chosen_targets, identities, Purpose};

pub async fn run(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    identity: Option<&Path>,
    unsigned: Unsigned,
    as_json: bool,
) -> Result<()> {
    let done = drill_report(cfg, source, target, identity, unsigned, as_json).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&done.json)?);
    }
    done.result
}

/// Runs the drills and notifies; with `as_json` nothing is printed and the
/// report is the outcome's, else each drill is printed as it ends.
pub(crate) async fn drill_report(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    identity: Option<&Path>,
    unsigned: Unsigned,
    as_json: bool,
) -> Result<Done> {
    let sources = planned_drills(cfg, source)?;
    let chosen = chosen_targets(cfg, target)?;
    let ids = identities(cfg, identity).context("a drill restores data")?;
    notify::start(&cfg.notify, EventKind::Drill).await;
    let access = access(cfg, Purpose::Read, identity)?;
    let mut targets = open_targets(chosen, access.as_ref()).await;
    unsigned.apply(cfg, &mut targets);
    let config = config_failure(&targets);
    // A target that did not open fails its drills with the cause as text;
    // what to do about it is said here, once per target.
    for t in &targets {
        if let Err(e) = &t.repo {
            if let Some(hint) = crate::errors::hint_in(e.as_ref()) {
                eprintln!("target {:?}: hint: {hint}", t.name);
            }
        }
    }
    let printer = Printer {
        as_json,
        bar: Mutex::default(),
        records: crate::state::dir(cfg),
    };
    let report = drill_all(targets, &ids, &sources, &printer).await;
    let json = serde_json::to_value(&report)?;
    send_events(cfg, &report).await;
    Ok(Done {
        json,
        result: report
            .failure_summary()
            .map_or(Ok(()), |f| Err(failed(f, config))),
    })
}

/// The sources to drill (`source`, or every one) with their settings.
fn planned_drills(cfg: &Config, source: Option<&str>) -> Result<Vec<PlannedDrill>> {
    let names: Vec<&str> = match source {
        Some(s) => vec![cfg.source(s)?.name.as_str()],
        None if cfg.sources.is_empty() => {
            return Err(crate::usage::mistake(
                "no [[sources]] in the config: a drill restores a source's newest snapshot",
            ))
        }
        None => cfg.sources.iter().map(|s| s.name.as_str()).collect(),
    };
    Ok(names
        .into_iter()
        .map(|s| PlannedDrill {
            source: s.to_string(),
            options: cfg.drill_options(s),
        })
        .collect())
}

/// Prints each drill as it ends (unless the output is JSON), with a
/// progress line while it runs, and records it in the state directory.
struct Printer {
    as_json: bool,
    bar: Mutex<Option<Bar>>,
    records: Option<std::path::PathBuf>,
}

impl TargetObserver<DrillReport, DrillProgress> for Printer {
    fn event(&self, event: TargetEvent<'_, DrillReport, DrillProgress>) {
        match event {
            TargetEvent::Started {
                target,
                source,
                progress,
            } => {
                let label = format!("drill {} @ {target}", source.unwrap_or("?"));
                *self.bar.lock().expect("printer state") =
                    Some(bar(label, progress, !self.as_json));
            }
            TargetEvent::Finished { target, result, .. } => {
                self.bar.lock().expect("printer state").take();
                if let Ok(r) = result {
                    crate::state::record_drill(self.records.as_deref(), target, r, Utc::now());
                    if !self.as_json {
                        print_drill(target, r);
                    }
                }
            }
        }
    }
}

/// The drill's step and the bytes restored.
fn bar(label: String, progress: Arc<DrillProgress>, enabled: bool) -> Bar {
    Bar::watch(label, STEP_AND_BYTES, enabled, move || Sample {
        message: match progress.step() {
            "" => "starting".to_string(),
            step => step.to_string(),
        },
        done: progress.restored.read.load(Ordering::Relaxed),
        total: progress.restored.total.load(Ordering::Relaxed),
        uploaded: None,
    })
}

fn print_drill(target: &str, r: &DrillReport) {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    let rto = rto_text(r.rto_seconds, r.rto_target_seconds);
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

/// ", RTO 1.20s (target 60s)": the measured restore time and its target.
pub(crate) fn rto_text(measured: Option<f64>, target: Option<f64>) -> String {
    match (measured, target) {
        (Some(m), Some(t)) => format!(", RTO {m:.2}s (target {t:.0}s)"),
        (Some(m), None) => format!(", RTO {m:.2}s"),
        _ => String::new(),
    }
}

async fn send_events(cfg: &Config, report: &DrillRun) {
    let events: Vec<notify::Event> = report
        .drills
        .iter()
        .map(|d| {
            let r = &d.report;
            let mut ev =
                notify::Event::new(EventKind::Drill, r.passed).at(Some(&r.source), Some(&d.target));
            ev.snapshot = r.snapshot.clone();
            ev.size = r.snapshot_size;
            ev.duration_seconds = r.rto_seconds;
            ev.error = (!r.passed).then(|| failed_steps(r));
            ev.details = serde_json::to_value(r).ok();
            ev
        })
        .collect();
    notify::events(&cfg.notify, &events).await;
    notify::finish(
        &cfg.notify,
        EventKind::Drill,
        report.passed,
        &report.summary(),
    )
    .await;
}
