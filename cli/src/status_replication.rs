//! Replication in `offsite status`: per SQLite source and target, the lag
//! and the last replicated time, read from the replicator's status file in
//! the state directory (`backup_core::replicate::read_status`), checked
//! against `[replicate] max_lag`; a replicator that stopped writing its
//! file is a breach too. Only with `[replicate]` in the config.

use std::fmt::Write as _;

use backup_core::replicate::read_status;
use backup_core::source::SourceKind;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;

/// One source's replication to one target.
#[derive(Debug, Serialize)]
pub struct ReplicationRow {
    pub source: String,
    pub target: String,
    pub ok: bool,
    /// Whether the replicator updated its status file lately.
    pub running: bool,
    pub mode: Option<String>,
    /// Seconds of committed changes this target does not hold yet.
    pub lag_seconds: Option<f64>,
    /// The instant of the newest state the target holds.
    pub replicated_at: Option<DateTime<Utc>>,
    pub uploaded_bytes: u64,
    pub requests: u64,
    pub bytes_per_hour: f64,
    pub requests_per_hour: f64,
    pub max_lag_seconds: f64,
    pub last_error: Option<String>,
}

/// The rows, and a breach ("source @ target: what") for each that is not ok.
pub fn check(cfg: &Config, now: DateTime<Utc>) -> (Vec<ReplicationRow>, Vec<String>) {
    let Some(settings) = &cfg.replicate else {
        return (Vec::new(), Vec::new());
    };
    let max_lag = settings.max_lag().as_secs_f64();
    let dir = crate::state::dir(cfg);
    let (mut rows, mut breaches) = (Vec::new(), Vec::new());
    for source in cfg.sources.iter().filter(|s| s.kind == SourceKind::Sqlite) {
        let status = dir.as_deref().and_then(|d| read_status(d, &source.name));
        let Some(status) = status else {
            breaches.push(format!(
                "{}: not replicated (no replicator has run here; start `offsite replicate` or the daemon)",
                source.name
            ));
            continue;
        };
        let age = (now - status.updated).num_milliseconds() as f64 / 1000.0;
        // A running replicator rewrites its file every interval.
        let running = age <= (3.0 * status.sync_interval_seconds).max(10.0);
        let hours = ((now - status.started).num_seconds().max(1) as f64) / 3600.0;
        for t in &status.targets {
            let lag = match (running, t.replicated_at) {
                (true, _) => Some(t.lag_seconds),
                (false, Some(at)) => Some((now - at).num_milliseconds() as f64 / 1000.0),
                (false, None) => None,
            };
            let ok = running && lag.is_some_and(|l| l <= max_lag);
            if !ok {
                let why = match (running, lag) {
                    (false, _) => format!(
                        "replication stopped (its last update was {} ago)",
                        humantime::format_duration(std::time::Duration::from_secs(age as u64))
                    ),
                    (true, Some(l)) => format!("replication lags {l:.1}s (max_lag {max_lag}s)"),
                    (true, None) => "nothing replicated yet".into(),
                };
                let error = t
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                breaches.push(format!("{} @ {}: {why}{error}", source.name, t.target));
            }
            rows.push(ReplicationRow {
                source: source.name.clone(),
                target: t.target.clone(),
                ok,
                running,
                mode: Some(status.mode.clone()),
                lag_seconds: lag,
                replicated_at: t.replicated_at,
                uploaded_bytes: t.uploaded_bytes,
                requests: t.requests,
                bytes_per_hour: t.uploaded_bytes as f64 / hours,
                requests_per_hour: t.requests as f64 / hours,
                max_lag_seconds: max_lag,
                last_error: t.last_error.clone(),
            });
        }
    }
    (rows, breaches)
}

/// One line per source and target.
pub fn print(rows: &[ReplicationRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n{:<12} {:<10} {:>9} {:<25} {:>12} {:>12}  STATUS",
        "REPLICATED", "TARGET", "LAG", "LAST", "BYTES/H", "REQUESTS/H"
    );
    for r in rows {
        let last = r.replicated_at.map_or("-".into(), |t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S %z")
                .to_string()
        });
        let lag = r.lag_seconds.map_or("-".into(), |l| format!("{l:.1}s"));
        let status = match (r.ok, r.running) {
            (true, _) => "ok",
            (false, false) => "STOPPED",
            (false, true) => "LAGGING",
        };
        println!(
            "{:<12} {:<10} {:>9} {:<25} {:>12} {:>12.0}  {status}",
            r.source,
            r.target,
            lag,
            last,
            crate::output::bytes(r.bytes_per_hour as u64),
            r.requests_per_hour
        );
    }
}

/// The Prometheus families of the rows.
pub fn families(out: &mut String, rows: &[ReplicationRow]) {
    let samples = |f: &dyn Fn(&ReplicationRow) -> Option<String>| -> Vec<(String, String)> {
        (rows.iter())
            .filter_map(|r| {
                let labels = format!(
                    "{{source=\"{}\",target=\"{}\"}}",
                    crate::cmd_status::label(&r.source),
                    crate::cmd_status::label(&r.target)
                );
                f(r).map(|v| (labels, v))
            })
            .collect()
    };
    let mut family = |name: &str, kind: &str, help: &str, s: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in s {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    family(
        "offsite_replication_lag_seconds",
        "gauge",
        "Seconds of committed changes the target does not hold yet.",
        samples(&|r| r.lag_seconds.map(|l| l.to_string())),
    );
    family(
        "offsite_replication_last_replicated_timestamp_seconds",
        "gauge",
        "The instant of the newest state the target holds, in Unix seconds.",
        samples(&|r| {
            r.replicated_at
                .map(|t| (t.timestamp_millis() as f64 / 1000.0).to_string())
        }),
    );
    family(
        "offsite_replication_running",
        "gauge",
        "1 while the replicator updates its status, else 0.",
        samples(&|r| Some(u8::from(r.running).to_string())),
    );
    family(
        "offsite_replication_uploaded_bytes_total",
        "counter",
        "Bytes the replicator stored on the target since it started.",
        samples(&|r| Some(r.uploaded_bytes.to_string())),
    );
    family(
        "offsite_replication_requests_total",
        "counter",
        "Requests the replicator made to the target since it started.",
        samples(&|r| Some(r.requests.to_string())),
    );
}
