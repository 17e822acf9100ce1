//! `offsite status`: what each target holds for each source, checked against
//! the `[status]` thresholds, for people (a table), scripts (`--json`), cron
//! (exit 1 when a threshold is breached) and Prometheus (a node_exporter
//! textfile). Reads manifests and object listings only, so a backup host
//! with just the recipients can run it on format 1; format 2 needs a
//! metadata key (the writer key or an identity), and counts signed
//! snapshots only (see `backup_core::status`). A target this host's
//! configuration cannot read is reported like any unreadable one, and the
//! command then exits 2 (a mistake to fix, not an outage).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use backup_core::each::status::{status_all, Copies, StatusRun, Watched};
use backup_core::each::{SharedError, TargetError};
use backup_core::status::SourceStatus;
use backup_core::Error;
use chrono::{DateTime, Local, Utc};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::notify::{self, Event, EventKind};
use crate::output;
use crate::per_target::planned_listing_targets;
use crate::resolve::metadata_key_if_any;
use crate::state::DrillRecord;

/// One target's repository, or why it could not be read.
#[derive(Debug, Serialize)]
pub struct TargetStatus {
    pub target: String,
    pub location: Option<String>,
    pub repository_bytes: Option<u64>,
    /// The repository format (1 or 2), when it could be read.
    pub format: Option<u32>,
    /// Format 2: the snapshots whose manifests are rejected (forged, or
    /// signed by no one the keyring trusts), by id; never counted.
    pub rejected_snapshots: Vec<String>,
    pub error: Option<String>,
}

/// One source in one target.
#[derive(Debug, Serialize)]
pub struct Row {
    pub target: String,
    pub ok: bool,
    #[serde(flatten)]
    pub status: SourceStatus,
    /// The source's `max_age` threshold: how old the newest snapshot may be.
    pub max_age_seconds: Option<u64>,
    /// The last drill of the source on the target, as recorded (state.rs).
    pub last_drill: Option<DrillRecord>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub time: DateTime<Utc>,
    pub targets: Vec<TargetStatus>,
    pub sources: Vec<Row>,
    /// Per source: on how many targets its newest snapshot is.
    pub copies: Vec<Copies>,
    /// Every breach, as "source @ target: what".
    pub breaches: Vec<String>,
    /// With `[replicate]`: each SQLite source's replication per target.
    pub replication: Vec<crate::status_replication::ReplicationRow>,
    /// What is not a breach but needs saying (a format 1 target, rejected
    /// snapshots), one sentence each.
    pub warnings: Vec<String>,
    /// A target this host's configuration cannot read, as the command's
    /// error (exit 2), returned once the report is out.
    #[serde(skip)]
    pub mistake: Option<anyhow::Error>,
}

/// Every target's status for every source, and the breaches: the engine's
/// verdict ([`status_all`]) in the shape `--json` and Prometheus show.
pub async fn check(cfg: &Config) -> Result<Report> {
    if cfg.sources.is_empty() {
        return Err(crate::usage::mistake(
            "no [[sources]] in the config: status reports on sources",
        ));
    }
    let ids = metadata_key_if_any(cfg)?;
    let targets = planned_listing_targets(cfg, None).await?;
    let watched: Vec<Watched> = cfg
        .sources
        .iter()
        .map(|s| Watched {
            source: s.name.clone(),
            thresholds: cfg.thresholds(&s.name),
        })
        .collect();
    let run = status_all(targets, ids.as_ref(), &watched, Utc::now()).await;
    let mut report = Report::from(&run);
    report.mistake = mistake(&run);
    let records = crate::state::dir(cfg);
    for row in &mut report.sources {
        let source = &row.status.source;
        row.max_age_seconds = cfg.thresholds(source).max_age.map(|d| d.as_secs());
        row.last_drill = records
            .as_deref()
            .and_then(|dir| crate::state::last_drill(dir, source, &row.target));
    }
    let (rows, breaches) = crate::status_replication::check(cfg, Utc::now());
    report.ok &= breaches.is_empty();
    report.breaches.extend(breaches);
    report.replication = rows;
    Ok(report)
}

impl From<&StatusRun> for Report {
    fn from(run: &StatusRun) -> Report {
        let mut targets = Vec::new();
        let mut sources = Vec::new();
        for o in run.outcomes.iter() {
            let target = o.target.clone();
            match &o.result {
                Ok(h) => {
                    targets.push(TargetStatus {
                        target: target.clone(),
                        location: Some(h.location.clone()),
                        repository_bytes: Some(h.repository_bytes),
                        format: Some(h.format),
                        rejected_snapshots: h.rejected.clone(),
                        error: None,
                    });
                    sources.extend(h.sources.iter().map(|s| Row {
                        target: target.clone(),
                        ok: s.ok(),
                        status: s.clone(),
                        max_age_seconds: None,
                        last_drill: None,
                    }));
                }
                Err(e) => targets.push(TargetStatus {
                    target,
                    location: None,
                    repository_bytes: None,
                    format: None,
                    rejected_snapshots: Vec::new(),
                    error: Some(e.chain()),
                }),
            }
        }
        let breaches = run.breaches();
        Report {
            ok: breaches.is_empty(),
            time: run.time,
            targets,
            sources,
            copies: run.copies(),
            breaches,
            replication: Vec::new(),
            warnings: run.warnings(),
            mistake: None,
        }
    }
}

/// The first target this host's configuration cannot read (no key for
/// it), as the command's error: typed, so its exit code and hint are the
/// engine's.
fn mistake(run: &StatusRun) -> Option<anyhow::Error> {
    run.outcomes.iter().find_map(|o| match &o.result {
        Err(TargetError::Unavailable(e)) if crate::usage::is_mistake(e.as_ref()) => {
            Some(anyhow::Error::new(Unopened(e.clone())))
        }
        Err(TargetError::Failed(Error::Key(m))) => Some(
            anyhow::Error::new(Error::Key(m.clone())).context(format!("target {:?}", o.target)),
        ),
        _ => None,
    })
}

/// A target that could not be opened with this configuration; its error
/// is the cause, whole.
#[derive(Debug)]
struct Unopened(SharedError);

impl std::fmt::Display for Unopened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("status cannot read every target with this configuration")
    }
}

impl std::error::Error for Unopened {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

pub async fn run(cfg: &Config, as_json: bool, prometheus: Option<&Path>) -> Result<()> {
    notify::start(&cfg.notify, EventKind::Status).await;
    let report = check(cfg).await;
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            let mut ev = Event::new(EventKind::Status, false);
            ev.error = Some(format!("{e:#}"));
            notify::send(&cfg.notify, ev).await;
            return Err(e);
        }
    };
    let prom = prometheus.or(cfg.status.prometheus_file.as_deref());
    if let Some(path) = prom {
        crate::state::write_atomically(path, &prometheus_text(&report))
            .with_context(|| format!("writing the Prometheus metrics to {}", path.display()))?;
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    send_events(cfg, &report).await;
    if let Some(e) = report.mistake.take() {
        return Err(e);
    }
    if !report.ok {
        bail!(
            "{} status check(s) failed: {}",
            report.breaches.len(),
            report.breaches.join("; ")
        );
    }
    Ok(())
}

async fn send_events(cfg: &Config, report: &Report) {
    let mut events = Vec::new();
    for r in &report.sources {
        let mut ev =
            Event::new(EventKind::Status, r.ok).at(Some(&r.status.source), Some(&r.target));
        if let Some(n) = &r.status.newest {
            ev.snapshot = Some(n.id.clone());
            ev.size = Some(n.size);
        }
        ev.error = (!r.ok).then(|| r.status.breaches.join("; "));
        ev.details = Some(json!({
            "snapshots": r.status.snapshots,
            "logical_bytes": r.status.logical_bytes,
            "newest": r.status.newest,
            "breaches": r.status.breaches,
        }));
        events.push(ev);
    }
    for t in report.targets.iter().filter(|t| t.error.is_some()) {
        let mut ev = Event::new(EventKind::Status, false).at(None, Some(&t.target));
        ev.error = t.error.clone();
        events.push(ev);
    }
    notify::events(&cfg.notify, &events).await;
    let summary = if report.ok {
        "all status checks passed".to_string()
    } else {
        report.breaches.join("\n")
    };
    notify::finish(&cfg.notify, EventKind::Status, report.ok, &summary).await;
}

fn print_table(report: &Report) {
    print_rows(report);
    print_targets_and_copies(report);
    crate::status_replication::print(&report.replication);
    for r in &report.sources {
        if let Some(d) = &r.last_drill {
            print_last_drill(d);
        }
    }
    for b in &report.breaches {
        println!("ALERT {b}");
    }
}

/// One line per source and target.
fn print_rows(report: &Report) {
    println!(
        "{:<12} {:<10} {:>9} {:<25} {:>12} {:>10} {:>10} {:>10}  STATUS",
        "SOURCE", "TARGET", "SNAPSHOTS", "NEWEST", "AGE", "SIZE", "PREVIOUS", "LOGICAL"
    );
    for r in &report.sources {
        let s = &r.status;
        let (time, age, size, prev) = match &s.newest {
            Some(n) => (
                n.time
                    .with_timezone(&Local)
                    .format("%Y-%m-%d %H:%M:%S %z")
                    .to_string(),
                humantime::format_duration(std::time::Duration::from_secs(n.age_seconds))
                    .to_string(),
                output::bytes(n.size),
                n.previous_size
                    .map(output::bytes)
                    .unwrap_or_else(|| "-".into()),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<12} {:<10} {:>9} {:<25} {:>12} {:>10} {:>10} {:>10}  {}",
            s.source,
            r.target,
            s.snapshots,
            time,
            age,
            size,
            prev,
            output::bytes(s.logical_bytes),
            if r.ok { "ok" } else { "ALERT" }
        );
    }
}

/// What each target holds, and on how many targets each newest snapshot is complete.
fn print_targets_and_copies(report: &Report) {
    for t in &report.targets {
        match (&t.repository_bytes, &t.error) {
            (Some(b), _) => println!(
                "target {}: {} stored in {}",
                t.target,
                output::bytes(*b),
                t.location.as_deref().unwrap_or("?")
            ),
            (None, Some(e)) => println!("target {}: UNREADABLE: {e}", t.target),
            (None, None) => {}
        }
    }
    for c in &report.copies {
        match &c.newest {
            Some(id) if c.missing.is_empty() => println!(
                "source {}: newest snapshot {id} complete on {} of {} targets",
                c.source, c.complete_on, c.targets
            ),
            Some(id) => println!(
                "source {}: newest snapshot {id} complete on {} of {} targets (not on {})",
                c.source,
                c.complete_on,
                c.targets,
                c.missing.join(", ")
            ),
            None => {}
        }
    }
}

/// "last drill of app @ local: PASSED 2026-11-23 10:00:00 +0000, RTO 1.20s (target 60s)".
fn print_last_drill(d: &DrillRecord) {
    let rto = crate::cmd_drill::rto_text(d.rto_seconds, d.rto_target_seconds);
    println!(
        "last drill of {} @ {}: {} {}{rto}{}",
        d.source,
        d.target,
        if d.passed { "PASSED" } else { "FAILED" },
        d.time.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %z"),
        d.failed
            .as_ref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default()
    );
}

/// A Prometheus label value, escaped as the text format requires.
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report in the Prometheus text format, for node_exporter's textfile
/// collector.
pub fn prometheus_text(report: &Report) -> String {
    let mut out = String::new();
    source_families(&mut out, &report.sources);
    target_families(&mut out, &report.targets);
    crate::status_replication::families(&mut out, &report.replication);
    family(
        &mut out,
        "offsite_status_timestamp_seconds",
        "When offsite status last ran, in Unix seconds.",
        vec![(String::new(), report.time.timestamp().to_string())],
    );
    out
}

/// One gauge family: its HELP and TYPE lines, then a line per (labels, value).
fn family(out: &mut String, name: &str, help: &str, samples: Vec<(String, String)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `f`'s value for each (source, target) row that has one, labelled with both.
fn per_row(rows: &[Row], f: impl Fn(&Row) -> Option<String>) -> Vec<(String, String)> {
    rows.iter()
        .filter_map(|r| {
            let labels = format!(
                "{{source=\"{}\",target=\"{}\"}}",
                label(&r.status.source),
                label(&r.target)
            );
            f(r).map(|v| (labels, v))
        })
        .collect()
}

/// `f`'s value for each target that has one, labelled with its name.
fn per_target(
    targets: &[TargetStatus],
    f: impl Fn(&TargetStatus) -> Option<String>,
) -> Vec<(String, String)> {
    targets
        .iter()
        .filter_map(|t| f(t).map(|v| (format!("{{target=\"{}\"}}", label(&t.target)), v)))
        .collect()
}

/// The families with a sample per source and target.
fn source_families(out: &mut String, rows: &[Row]) {
    family(
        out,
        "offsite_snapshots",
        "Snapshots of the source in the target's repository.",
        per_row(rows, |r| Some(r.status.snapshots.to_string())),
    );
    newest_families(out, rows);
    family(
        out,
        "offsite_logical_bytes",
        "Sum of the sizes of the source's snapshots, before deduplication and compression.",
        per_row(rows, |r| Some(r.status.logical_bytes.to_string())),
    );
    family(
        out,
        "offsite_status_ok",
        "1 when the source's backups in the target meet every [status] threshold, else 0.",
        per_row(rows, |r| Some(u8::from(r.ok).to_string())),
    );
}

/// The families about the newest snapshot of each source on each target.
fn newest_families(out: &mut String, rows: &[Row]) {
    family(
        out,
        "offsite_last_snapshot_timestamp_seconds",
        "When the newest snapshot finished, in Unix seconds.",
        per_row(rows, |r| {
            let newest = r.status.newest.as_ref()?;
            Some(format!(
                "{:.3}",
                newest.time.timestamp_millis() as f64 / 1000.0
            ))
        }),
    );
    family(
        out,
        "offsite_last_snapshot_age_seconds",
        "Age of the newest snapshot when the status was checked.",
        per_row(rows, |r| {
            r.status.newest.as_ref().map(|n| n.age_seconds.to_string())
        }),
    );
    family(
        out,
        "offsite_last_snapshot_bytes",
        "Bytes of data in the newest snapshot.",
        per_row(rows, |r| {
            r.status.newest.as_ref().map(|n| n.size.to_string())
        }),
    );
}

/// The families with a sample per target.
fn target_families(out: &mut String, targets: &[TargetStatus]) {
    family(
        out,
        "offsite_repository_bytes",
        "Bytes the target's repository holds (deduplicated, compressed, encrypted, metadata included).",
        per_target(targets, |t| t.repository_bytes.map(|b| b.to_string())),
    );
    family(
        out,
        "offsite_target_up",
        "1 when the target's repository could be read, else 0.",
        per_target(targets, |t| Some(u8::from(t.error.is_none()).to_string())),
    );
    family(
        out,
        "offsite_rejected_snapshots",
        "Format 2: manifests in the target's repository not signed by its owner or an authorised writer (never counted as backups).",
        per_target(targets, |t| {
            (t.format == Some(2)).then(|| t.rejected_snapshots.len().to_string())
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::status::Newest;

    #[test]
    fn prometheus_text_has_help_type_and_escaped_labels() {
        let time = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let report = Report {
            ok: false,
            time,
            targets: vec![
                TargetStatus {
                    target: "local".into(),
                    location: Some("/r".into()),
                    repository_bytes: Some(4096),
                    format: Some(2),
                    rejected_snapshots: vec!["forged".into()],
                    error: None,
                },
                TargetStatus {
                    target: "b\"2".into(),
                    location: None,
                    repository_bytes: None,
                    format: None,
                    rejected_snapshots: Vec::new(),
                    error: Some("down".into()),
                },
            ],
            copies: Vec::new(),
            sources: vec![Row {
                target: "local".into(),
                ok: true,
                status: SourceStatus {
                    source: "app".into(),
                    snapshots: 2,
                    logical_bytes: 3000,
                    newest: Some(Newest {
                        id: "x".into(),
                        time,
                        age_seconds: 60,
                        size: 1500,
                        previous_size: Some(1500),
                    }),
                    breaches: vec![],
                },
                max_age_seconds: Some(26 * 3600),
                last_drill: None,
            }],
            breaches: vec!["target b\"2: down".into()],
            replication: vec![crate::status_replication::ReplicationRow {
                source: "app".into(),
                target: "local".into(),
                ok: true,
                running: true,
                mode: Some("wal".into()),
                lag_seconds: Some(0.5),
                replicated_at: Some(time),
                uploaded_bytes: 1234,
                requests: 7,
                bytes_per_hour: 1234.0,
                requests_per_hour: 7.0,
                max_lag_seconds: 60.0,
                last_error: None,
            }],
            warnings: Vec::new(),
            mistake: None,
        };
        let text = prometheus_text(&report);
        for line in [
            "# TYPE offsite_snapshots gauge",
            "offsite_snapshots{source=\"app\",target=\"local\"} 2",
            "offsite_last_snapshot_timestamp_seconds{source=\"app\",target=\"local\"} 1795428000.000",
            "offsite_last_snapshot_bytes{source=\"app\",target=\"local\"} 1500",
            "offsite_repository_bytes{target=\"local\"} 4096",
            "offsite_target_up{target=\"b\\\"2\"} 0",
            "offsite_status_ok{source=\"app\",target=\"local\"} 1",
            "offsite_status_timestamp_seconds 1795428000",
            "offsite_rejected_snapshots{target=\"local\"} 1",
            "# TYPE offsite_replication_lag_seconds gauge",
            "offsite_replication_lag_seconds{source=\"app\",target=\"local\"} 0.5",
            "offsite_replication_last_replicated_timestamp_seconds{source=\"app\",target=\"local\"} 1795428000",
            "offsite_replication_running{source=\"app\",target=\"local\"} 1",
            "offsite_replication_requests_total{source=\"app\",target=\"local\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("offsite_repository_bytes{target=\"b"));
        assert!(!text.contains("offsite_rejected_snapshots{target=\"b"));
    }
}
