//! `offsite replicate`: continuous replication of the SQLite sources (or
//! one) to every format 2 target, in the foreground until SIGTERM or
//! SIGINT; the daemon runs it when the config has `[replicate]`. The run
//! itself is the engine's ([`backup_core::replicate`]); this resolves the
//! settings and targets and prints what happens.

use std::sync::Arc;

use anyhow::{bail, Result};
use backup_core::error::chain_text;
use backup_core::replicate::{self, ReplicaEvent, ReplicateOptions};
use backup_core::repo::Repository;
use backup_core::source::{SourceKind, SourceSpec};
use serde::Deserialize;

use crate::cmd_backup::planned_targets;
use crate::config::Config;
use crate::ops_config::HumanDuration;
use crate::resolve::{access, source_specs, Purpose};

/// `[replicate]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicateSettings {
    /// How often changes are sent [default: 1s].
    pub sync_interval: Option<HumanDuration>,
    /// A new base snapshot at least this often [default: 1h].
    pub base_every: Option<HumanDuration>,
    /// `offsite status` alerts when a target's replication lags more [default: 1m].
    pub max_lag: Option<HumanDuration>,
    /// Every second of this window stays restorable: prune keeps the base
    /// snapshots whose replica objects reach into it [default: 24h].
    pub retention: Option<HumanDuration>,
}

impl ReplicateSettings {
    pub fn validate(&self) -> Result<()> {
        let interval = self.sync_interval.map_or(1.0, |d| d.0.as_secs_f64());
        if !(0.1..=3600.0).contains(&interval) {
            bail!("replicate.sync_interval must be between 100ms and 1h");
        }
        if self
            .base_every
            .is_some_and(|b| b.0.as_secs_f64() < 60.0 * interval.max(1.0))
        {
            bail!("replicate.base_every must be at least a minute (and 60 sync intervals)");
        }
        Ok(())
    }

    pub fn retention(&self) -> std::time::Duration {
        self.retention
            .map_or(std::time::Duration::from_secs(24 * 3600), |d| d.0)
    }

    pub fn max_lag(&self) -> std::time::Duration {
        self.max_lag
            .map_or(std::time::Duration::from_secs(60), |d| d.0)
    }
}

pub async fn run(cfg: &Config, source: Option<&str>) -> Result<()> {
    let settings = cfg.replicate.clone().unwrap_or_default();
    let specs = sqlite_sources(cfg, source)?;
    let (repos, names) = targets(cfg).await?;
    let state_dir = crate::state::dir(cfg).ok_or_else(|| {
        crate::usage::mistake(
            "replication keeps its state on this host: set state_dir in the config \
             (or HOME / XDG_STATE_HOME)",
        )
    })?;
    let opts = ReplicateOptions {
        sync_interval: settings
            .sync_interval
            .map_or(std::time::Duration::from_secs(1), |d| d.0),
        base_every: (settings.base_every).map_or(std::time::Duration::from_secs(3600), |d| d.0),
        state_dir,
        backup: backup_core::backup::BackupOptions {
            pack_size: cfg.backup.pack_size_mib << 20,
            compression_level: cfg.backup.compression_level,
            upload_concurrency: cfg.backup.upload_concurrency,
            ..Default::default()
        },
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut signals = crate::cmd_daemon::Signals::install()?;
    let waiter = tokio::spawn(async move {
        let sig = signals.recv().await;
        tracing::info!("{sig} received: stopping replication");
        let _ = tx.send(true);
    });
    let runs = specs.iter().map(|spec| {
        let (repos, names, opts, rx) = (repos.clone(), names.clone(), &opts, rx.clone());
        async move {
            replicate::replicate(spec, repos, names, opts, rx, &print)
                .await
                .map_err(|e| anyhow::Error::from(e).context(format!("replicating {}", spec.name)))
        }
    });
    let results = futures::future::join_all(runs).await;
    waiter.abort();
    let failed: Vec<String> = (results.into_iter())
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// The SQLite sources to replicate (`name`: that one, which must be SQLite).
fn sqlite_sources(cfg: &Config, name: Option<&str>) -> Result<Vec<SourceSpec>> {
    let specs = source_specs(cfg, name)?;
    if let Some(s) = specs
        .iter()
        .find(|s| s.kind != SourceKind::Sqlite && name.is_some())
    {
        return Err(crate::usage::mistake(format!(
            "source {:?} is {}: offsite replicate follows SQLite databases; back it up with \
             offsite backup",
            s.name, s.kind
        )));
    }
    let specs: Vec<SourceSpec> = specs
        .into_iter()
        .filter(|s| s.kind == SourceKind::Sqlite)
        .collect();
    if specs.is_empty() {
        return Err(crate::usage::mistake(
            "no SQLite source to replicate: add a [[sources]] with kind = \"sqlite\"",
        ));
    }
    Ok(specs)
}

/// The format 2 targets that open (created as a backup would); the
/// others are told and passed over.
async fn targets(cfg: &Config) -> Result<(Vec<Arc<Repository>>, Vec<String>)> {
    let keys = match cfg.encryption.recipients.is_empty() {
        true => None,
        false => Some(crate::resolve::keys(cfg)?),
    };
    let access = access(cfg, Purpose::Write, None)?;
    let planned = planned_targets(cfg, None, keys.as_ref(), access.as_ref()).await?;
    let (mut repos, mut names) = (Vec::new(), Vec::new());
    for t in planned {
        match t.repo {
            Ok(repo) if repo.keyset().is_some() => {
                repos.push(Arc::new(repo));
                names.push(t.name);
            }
            Ok(_) => eprintln!(
                "target {:?} is not replicated: it is format 1 (offsite migrate moves it to format 2)",
                t.name
            ),
            Err(e) => eprintln!("target {:?} is not replicated: {}", t.name, chain_text(e.as_ref())),
        }
    }
    if repos.is_empty() {
        bail!("no target to replicate to: every target failed or is format 1 (see above)");
    }
    Ok((repos, names))
}

fn print(event: ReplicaEvent<'_>) {
    match event {
        ReplicaEvent::Started { source, wal: true } => {
            println!("replicating {source}: following its WAL")
        }
        ReplicaEvent::Started { source, wal: false } => eprintln!(
            "{source} is not in WAL mode: replicating it by a snapshot whenever it changed, \
             at most every minute; PRAGMA journal_mode=WAL gives about a second"
        ),
        ReplicaEvent::Base {
            source,
            snapshot,
            reason,
            failed,
        } => {
            println!("{source}: base snapshot {snapshot} ({reason})");
            for (target, error) in failed {
                eprintln!("{source}: target {target:?} did not store it: {error}");
            }
        }
        ReplicaEvent::Stopped { source } => println!("{source}: replication stopped"),
    }
}
