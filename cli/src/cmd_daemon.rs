//! `offsite daemon`: runs the `[schedule]` jobs (backup, prune, verify,
//! drill, status) at their cron times, one at a time, until SIGTERM or
//! SIGINT; with a `[serve]` section it also serves the API (serve/), and
//! with `[replicate]` it replicates the SQLite sources all along
//! (`offsite replicate`). A failing job is logged (and notified by the job itself) and the
//! daemon carries on; a job whose time passed while another ran starts right
//! after it, once, however many of its times were missed.
//!
//! Shutdown: a signal while idle exits at once; a signal during a job lets
//! the job finish, and a second signal abandons it. Either way nothing half
//! done becomes visible: a snapshot exists only once its manifest is written
//! (docs/format.md), and a drill's scratch directory is removed.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use chrono::{DateTime, Local};
use croner::Cron;
use futures::FutureExt;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Config;
use crate::notify::{self, EventKind};
use crate::ops_config::parse_cron;
use crate::per_target::Unsigned;
use crate::{cmd_backup, cmd_drill, cmd_prune, cmd_status, cmd_verify};

struct Job {
    name: &'static str,
    cron: Cron,
    next: DateTime<Local>,
}

/// SIGTERM (systemd, docker stop, kill) and SIGINT (Ctrl-C).
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs one job by name. Every scheduled job goes through here, so adding a
/// command to the daemon is one arm.
pub async fn run_job(cfg: &Config, config_path: &Path, job: &str) -> Result<()> {
    match job {
        "backup" => cmd_backup::backup(cfg, None, None, Vec::new(), false, false).await,
        "drill" => cmd_drill::run(cfg, None, None, None, Unsigned::AS_CONFIGURED, false).await,
        "status" => cmd_status::run(cfg, false, None).await,
        "prune" => {
            let args = cmd_prune::PruneArgs {
                dry_run: false,
                source: None,
                target: None,
                json: false,
            };
            notify::around(
                &cfg.notify,
                EventKind::Prune,
                cmd_prune::prune(cfg, config_path, &args),
            )
            .await
        }
        "verify" => {
            let args = cmd_verify::VerifyArgs {
                source: None,
                target: None,
                read_data: false,
                read_data_subset: None,
                identity: None,
                allow_unsigned: false,
                json: false,
            };
            notify::around(
                &cfg.notify,
                EventKind::Verify,
                cmd_verify::verify(cfg, &args),
            )
            .await
        }
        other => bail!("unknown job {other:?}"),
    }
}

fn next_after(cron: &Cron, after: &DateTime<Local>, name: &str) -> Result<DateTime<Local>> {
    cron.find_next_occurrence(after, false)
        .map_err(|e| anyhow::anyhow!("schedule.{name}: no next run time ({e})"))
}

/// `offsite daemon`: the schedule, and with `[serve]` the API as well
/// (each stops on the signal as it would alone; the daemon exits once both
/// have). An API that cannot start stops the daemon before any job runs.
pub async fn run(cfg: &Config, config_path: &Path) -> Result<()> {
    if cfg.replicate.is_none() {
        return scheduled_and_served(cfg, config_path).await;
    }
    // `[replicate]`: replication runs beside the jobs, until the signal; a
    // replication that cannot run stops the daemon (its supervisor says so).
    tokio::try_join!(
        async {
            crate::cmd_replicate::run(cfg, None)
                .await
                .map_err(|e| e.context("offsite daemon: [replicate]"))
        },
        scheduled_and_served(cfg, config_path)
    )
    .map(|_| ())
}

/// The schedule, and with `[serve]` the API.
async fn scheduled_and_served(cfg: &Config, config_path: &Path) -> Result<()> {
    if cfg.serve.is_none() {
        return schedule(cfg, config_path).await;
    }
    let owned = crate::config::load(config_path)?;
    let mut server = tokio::spawn(crate::serve::run(owned, config_path.to_path_buf()));
    let joined = |r: Result<Result<()>, tokio::task::JoinError>| {
        r.map_err(|e| anyhow::anyhow!("the API server task failed: {e}"))
            .and_then(|r| r)
            .map_err(|e| e.context("offsite daemon: [serve]"))
    };
    let jobs = schedule(cfg, config_path);
    tokio::pin!(jobs);
    tokio::select! {
        r = &mut jobs => {
            if r.is_err() {
                server.abort();
                return r;
            }
            joined(server.await)
        }
        s = &mut server => {
            joined(s)?;
            jobs.await
        }
    }
}

/// Runs the `[schedule]` jobs until a signal.
async fn schedule(cfg: &Config, config_path: &Path) -> Result<()> {
    let now = Local::now();
    let mut jobs = Vec::new();
    for (name, expr) in cfg.schedule.entries() {
        let cron = parse_cron(&format!("schedule.{name}"), expr)?;
        let next = next_after(&cron, &now, name)?;
        jobs.push(Job { name, cron, next });
    }
    if jobs.is_empty() && cfg.replicate.is_some() {
        return Ok(()); // the daemon replicates only
    }
    if jobs.is_empty() {
        return Err(crate::usage::mistake(
            "invalid config: [schedule] has no jobs; add e.g. backup = \"0 2 * * *\" \
             (jobs: backup, prune, verify, drill, status)",
        ));
    }
    let mut signals = Signals::install()?;
    for j in &jobs {
        tracing::info!(job = j.name, next = %j.next.to_rfc3339(), "scheduled");
    }
    loop {
        let at = jobs.iter().map(|j| j.next).min().expect("at least one job");
        let wait = (at - Local::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            sig = signals.recv() => {
                tracing::info!("{sig} received, exiting");
                return Ok(());
            }
        }
        let now = Local::now();
        for job in jobs.iter_mut().filter(|j| j.next <= now) {
            let stop = run_one(cfg, config_path, job.name, &mut signals).await;
            job.next = next_after(&job.cron, &Local::now(), job.name)?;
            if stop {
                return Ok(());
            }
            tracing::info!(job = job.name, next = %job.next.to_rfc3339(), "scheduled");
        }
    }
}

/// Runs a job, watching for signals. Returns whether the daemon must stop.
async fn run_one(
    cfg: &Config,
    config_path: &Path,
    name: &'static str,
    signals: &mut Signals,
) -> bool {
    tracing::info!(job = name, "starting");
    let clock = Instant::now();
    // A bug that panics in one job must not take the schedule down with it.
    let job = AssertUnwindSafe(run_job(cfg, config_path, name))
        .catch_unwind()
        .map(|r| r.unwrap_or_else(|_| Err(anyhow::anyhow!("the job panicked"))));
    tokio::pin!(job);
    let mut stopping = false;
    let result = tokio::select! {
        r = &mut job => r,
        sig = signals.recv() => {
            tracing::warn!(job = name, "{sig} received: finishing the running job, then exiting (signal again to abandon it)");
            stopping = true;
            tokio::select! {
                r = &mut job => r,
                sig = signals.recv() => {
                    tracing::warn!(job = name, "{sig} received again: abandoning the job; nothing it wrote is visible");
                    return true;
                }
            }
        }
    };
    let seconds = clock.elapsed().as_secs_f64();
    match result {
        Ok(()) => tracing::info!(job = name, seconds, "finished"),
        Err(e) => tracing::error!(
            job = name,
            seconds,
            "failed: {e:#}; the daemon keeps running"
        ),
    }
    if stopping {
        tracing::info!("exiting");
    }
    stopping
}
