//! `offsite restore`: one source (`--source`) or every source of the config
//! (`--all`), each to the path in its `[[sources]]` entry unless `--to` puts
//! it elsewhere. This module resolves the configuration and the flags once
//! into a [`RestorePlan`] (a usage mistake, like a directory given for a
//! database, stops here with exit code 2), hands it to
//! [`backup_core::restore_run`], which chooses the snapshot across the
//! targets, runs the restore hooks and decides what a failure means, and
//! prints what happens. With `--all` a source that fails is reported and
//! the others still go: the exit code says whether every source was
//! restored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use backup_core::backup::BackupOptions;
use backup_core::error::chain_text;
use backup_core::repo::{Access, RecordedCheck, Selector, PRE_RESTORE_TAG};
use backup_core::restore::{Fallback, RestoreSummary};
use backup_core::restore_run::{
    self, NoPreRestore, Outcome, PlannedRestore, PreRestore, RestoreError, RestoreEvent,
    RestoreObserver, RestorePlan, RestoreReport, RestoreRunOptions, Restored, SourceReport,
};
use backup_core::source::{SourceKind, SourceSpec};
use chrono::Local;
use serde_json::json;

use crate::config::{Config, SourceConfig};
use crate::errors::hint_in;
use crate::hooks::ConfigHooks;
use crate::output::{self, Bar};
use crate::output::{snapshot_json, Done};
use crate::per_target::{planned_readable_targets, shared, Unsigned};
use crate::resolve::{access, identities, keys, parse_time, Purpose};
use crate::{targets, usage, RestoreArgs};

pub async fn restore(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    let done = restore_report(cfg, args).await?;
    // One source's result is an object, `--all`'s an array of them.
    let json = match done.json {
        serde_json::Value::Array(mut one) if !args.all => one.pop(),
        all => Some(all),
    };
    if let (true, Some(json)) = (args.json, json) {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    done.result
}

/// Restores; with `args.json` nothing is printed but warnings and the
/// outcome's report is the array of each source's result, else each is
/// printed when done.
pub(crate) async fn restore_report(cfg: &Config, args: &RestoreArgs) -> Result<Done> {
    let selector = selector(args)?;
    let sources = planned_sources(cfg, args)?;
    let ids = identities(cfg, args.identity.as_deref())?;
    let plan = plan(cfg, args, sources, selector).await?;
    let printer = Printer {
        args,
        results: Mutex::default(),
        bar: Mutex::default(),
    };
    let hooks = Arc::new(ConfigHooks(cfg.sources.clone()));
    let report = restore_run::run(plan, &ids, hooks, &printer).await;
    let results = printer.results.into_inner().expect("printer results");
    Ok(Done {
        json: serde_json::Value::Array(results),
        result: verdict(report, args.all),
    })
}

/// The engine's verdict as this command's result: with `--all`, the
/// sources not restored; for one source, its own error.
fn verdict(report: RestoreReport, all: bool) -> Result<()> {
    if all {
        return report.failure_summary().map_or(Ok(()), |s| Err(anyhow!(s)));
    }
    let one = report
        .sources
        .into_iter()
        .next()
        .context("no source to restore")?;
    match one.outcome {
        Outcome::Restored {
            after_restore: None,
            ..
        } => Ok(()),
        Outcome::Restored {
            after_restore: Some(hook),
            ..
        } => Err(anyhow!(hook)),
        Outcome::Failed { error, .. } => Err(match error {
            // The engine's error itself, so that its type picks the hint.
            RestoreError::Restore(e) => e.into(),
            e => e.into(),
        }),
    }
}

fn selector(args: &RestoreArgs) -> Result<Selector> {
    Ok(if args.latest {
        Selector::Latest
    } else if let Some(id) = &args.snapshot {
        Selector::Id(id.clone())
    } else {
        Selector::At(parse_time(args.at.as_deref().unwrap_or_default())?)
    })
}

/// The sources to restore, each with its destination.
fn planned_sources(cfg: &Config, args: &RestoreArgs) -> Result<Vec<PlannedRestore>> {
    let planned = |s: &SourceConfig, to: PathBuf| PlannedRestore {
        spec: SourceSpec {
            name: s.name.clone(),
            kind: s.kind,
            path: s.path.clone(),
        },
        to,
    };
    if args.all {
        if cfg.sources.is_empty() {
            return Err(usage::mistake("the config has no [[sources]] to restore"));
        }
        return Ok(cfg
            .sources
            .iter()
            .map(|s| planned(s, s.path.clone()))
            .collect());
    }
    let name = args.source.as_deref().ok_or_else(|| {
        usage::mistake(
            "name the source to restore with --source NAME, or restore every source with --all",
        )
    })?;
    let source = cfg.source(name)?;
    Ok(vec![planned(
        source,
        destination(source, args.to.as_deref())?,
    )])
}

/// Where a restore writes: `to`, or the source's own path. A database
/// restores to a file: a directory given for one is a usage mistake.
fn destination(source: &SourceConfig, to: Option<&Path>) -> Result<PathBuf> {
    let Some(to) = to else {
        return Ok(source.path.clone());
    };
    let names_dir = to.as_os_str().to_string_lossy().ends_with('/') || to.is_dir();
    if names_dir && source.kind != SourceKind::Files {
        let file = source
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{}.db", source.name));
        return Err(usage::mistake(format!(
            "--to {} is a directory, but a {} snapshot restores to a file path: pass the file to create, e.g. --to {}",
            to.display(),
            source.kind,
            to.join(file).display()
        )));
    }
    Ok(to.to_path_buf())
}

/// Every configured target that can be opened, as a fallback for damaged
/// or missing chunks (the engine leaves out the one restored from).
fn fallbacks(cfg: &Config, access: Option<&Access>) -> Vec<Fallback> {
    let mut fallbacks = Vec::new();
    for t in &cfg.targets {
        match targets::open(t) {
            Ok(storage) => fallbacks.push(Fallback {
                name: t.name.clone(),
                storage,
                access: access.cloned(),
            }),
            Err(e) => {
                tracing::warn!(target = %t.name, error = %format!("{e:#}"), "not usable as a fallback for damaged chunks");
            }
        }
    }
    fallbacks
}

/// The configuration and flags, resolved once: the chosen targets opened
/// (a target that cannot be is the engine's to report, per source) and
/// looked at for the snapshot, every target a fallback.
async fn plan(
    cfg: &Config,
    args: &RestoreArgs,
    sources: Vec<PlannedRestore>,
    selector: Selector,
) -> Result<RestorePlan> {
    let unsigned = Unsigned::Refused {
        allow_unsigned: args.allow_unsigned,
    };
    let identity = args.identity.as_deref();
    let targets = planned_readable_targets(cfg, args.target.as_deref(), identity, unsigned).await?;
    let fallbacks = fallbacks(cfg, access(cfg, Purpose::Read, identity)?.as_ref());
    let pre_restore = (!args.no_pre_restore_snapshot).then(|| PreRestore {
        keys: keys(cfg).map_err(shared),
        options: BackupOptions {
            pack_size: cfg.backup.pack_size_mib << 20,
            compression_level: cfg.backup.compression_level,
            upload_concurrency: cfg.backup.upload_concurrency,
            ..Default::default()
        },
    });
    Ok(RestorePlan {
        sources,
        selector,
        targets,
        fallbacks,
        options: RestoreRunOptions {
            force: args.force,
            check_database: !args.no_database_check,
            force_database_check: args.database_check,
            test: args.test,
            pre_restore,
        },
    })
}

/// Prints each event as it comes; keeps the `--json` results.
struct Printer<'a> {
    args: &'a RestoreArgs,
    results: Mutex<Vec<serde_json::Value>>,
    bar: Mutex<Option<Bar>>,
}

impl RestoreObserver for Printer<'_> {
    fn event(&self, event: RestoreEvent<'_>) {
        match event {
            RestoreEvent::TargetPassedOver { error, .. } => {
                eprintln!(
                    "warning: {}; its snapshots are not included",
                    chain_text(error)
                );
            }
            RestoreEvent::Downloading {
                snapshot, progress, ..
            } => {
                let bar = Bar::start(format!("restore {snapshot}"), progress, !self.args.json);
                *self.bar.lock().expect("bar") = Some(bar);
            }
            RestoreEvent::Downloaded { .. } => *self.bar.lock().expect("bar") = None,
            RestoreEvent::NoPreRestoreSnapshot { path, reason, .. } => {
                self.no_pre_restore(path, reason)
            }
            RestoreEvent::Finished(report) => self.finished(report),
        }
    }
}

impl Printer<'_> {
    fn no_pre_restore(&self, path: &Path, reason: NoPreRestore<'_>) {
        if self.args.json {
            return;
        }
        match reason {
            NoPreRestore::NoKeys(e) => eprintln!(
                "warning: no pre-restore snapshot of {} ({}); it will be moved aside",
                path.display(),
                chain_text(e)
            ),
            NoPreRestore::Failed(e) => eprintln!(
                "warning: could not snapshot {} before replacing it ({e}); it will be moved aside instead",
                path.display()
            ),
        }
    }

    /// One source's result: printed now, or kept for the `--all --json`
    /// array. For one source its error is the command's (see [`verdict`]).
    fn finished(&self, report: &SourceReport) {
        let (args, name) = (self.args, report.source.as_str());
        match &report.outcome {
            Outcome::Restored {
                restored,
                after_restore,
            } => {
                let mut v = restored_json(restored, args);
                if args.all && args.json {
                    v["source"] = json!(name);
                    v["ok"] = json!(after_restore.is_none());
                    self.results.lock().expect("results").push(v);
                } else if args.json {
                    self.results.lock().expect("results").push(v);
                } else {
                    for line in restored_lines(restored, args) {
                        println!("{line}");
                    }
                }
                if let (true, Some(hook)) = (args.all, after_restore) {
                    self.failed(name, hook, None);
                }
            }
            Outcome::Failed {
                error,
                after_restore,
            } => {
                if let Some(hook) = after_restore {
                    eprintln!("FAILED: {hook}");
                }
                if args.all {
                    let e = error.as_error();
                    self.failed(name, &chain_text(e), hint_in(e));
                }
            }
        }
    }

    /// A source of `--all` that was not restored.
    fn failed(&self, name: &str, error: &str, hint: Option<String>) {
        if self.args.json {
            let v = json!({"source": name, "ok": false, "error": error});
            self.results.lock().expect("results").push(v);
            return;
        }
        eprintln!("{name}: FAILED: {error}");
        if let Some(h) = hint {
            eprintln!("  hint: {h}");
        }
    }
}

fn restored_json(restored: &Restored, args: &RestoreArgs) -> serde_json::Value {
    let summary = &restored.summary;
    json!({
        "snapshot": snapshot_json(&restored.manifest, &restored.target),
        "path": if args.test { serde_json::Value::Null } else { json!(summary.path) },
        "test": args.test,
        "bytes": summary.bytes,
        "moved_aside": summary.moved_aside,
        "pre_restore_snapshot": restored.pre_restore,
        "seconds": summary.duration.as_secs_f64(),
        "verified": true,
        "database_check": !args.no_database_check && summary.recorded_check.is_none(),
        "recorded_check": summary.recorded_check.as_ref().map(|r| json!({
            "where": r.at.as_str(), "host": r.host, "signer": r.signer, "checked": r.checked,
        })),
        "check_recorded": summary.check_recorded,
        "fetched_elsewhere": summary.fetched_elsewhere.iter().map(|f| json!({
            "target": f.from, "chunks": f.chunks, "bytes": f.bytes,
        })).collect::<Vec<_>>(),
        "damaged_chunks": summary.damaged.iter().map(|(_, c)| c.len()).sum::<usize>(),
        "damage_recorded": summary.damage_recorded,
        "replicated": summary.replayed.as_ref().map(|r| json!({
            "at": r.at, "steps": r.steps, "objects": r.objects,
        })),
    })
}

fn restored_lines(restored: &Restored, args: &RestoreArgs) -> Vec<String> {
    let (summary, manifest, tname) = (&restored.summary, &restored.manifest, &restored.target);
    let mut lines = repair_lines(summary, tname);
    let checks = match manifest.kind {
        SourceKind::Sqlite => "checksum and integrity_check",
        SourceKind::Duckdb => "checksum and DuckDB open",
        SourceKind::Files => "checksum",
    };
    let recorded = summary.recorded_check.as_ref().map(recorded_words);
    let (checks, skipped) = if args.no_database_check {
        (
            "checksum",
            " (database check skipped: --no-database-check)".to_string(),
        )
    } else if let Some(words) = recorded {
        ("checksum", words)
    } else {
        (checks, String::new())
    };
    let taken = manifest
        .finished
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S %z");
    let what = match &summary.replayed {
        Some(r) => format!(
            "{} as of {} (replicated: base {} and {} step(s) in {} object(s)) from {tname}",
            manifest.source,
            r.at.with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S%.3f %z"),
            manifest.id,
            r.steps,
            r.objects
        ),
        None => format!(
            "{} ({} of {}, taken {}) from {tname}",
            manifest.id,
            output::bytes(manifest.size),
            manifest.source,
            taken
        ),
    };
    let took = output::duration(summary.duration);
    if args.test {
        lines.push(format!(
            "restore test of {what}: {checks} ok{skipped} in {took}; nothing was written outside a temporary directory"
        ));
        return lines;
    }
    lines.push(format!(
        "restored {what} to {} in {took}; {checks} verified{skipped}",
        summary.path.display()
    ));
    if let Some(key) = &summary.check_recorded {
        lines.push(format!(
            "recorded the integrity_check as {key}: later restores of this snapshot need not run it"
        ));
    }
    if let Some(id) = &restored.pre_restore {
        lines.push(format!(
            "the replaced file was first backed up as snapshot {id} (tag {PRE_RESTORE_TAG})"
        ));
    }
    for p in &summary.moved_aside {
        lines.push(format!("kept the previous file as {}", p.display()));
    }
    lines
}

/// Why integrity_check did not run again, in words.
fn recorded_words(r: &RecordedCheck) -> String {
    format!(
        "; integrity_check ok at {} on {} ({}, signed by {}), and the restored bytes are \
         those it checked (keyed BLAKE3 ids); --database-check runs it again",
        r.at.as_str(),
        r.host,
        r.checked
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S %z"),
        r.signer
    )
}

/// What a restore had to work around, in words.
fn repair_lines(summary: &RestoreSummary, target: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let damaged: usize = summary.damaged.iter().map(|(_, c)| c.len()).sum();
    if damaged > 0 {
        let recorded = match &summary.damage_recorded {
            Some(key) => format!("recorded as {key}; the next backup stores them again"),
            None => "not recorded".to_string(),
        };
        lines.push(format!(
            "found {damaged} damaged chunks in {} packs of target {target} ({recorded})",
            summary.damaged.len()
        ));
    }
    for f in &summary.fetched_elsewhere {
        lines.push(format!(
            "took {} chunks ({}) that are damaged or missing on target {target} from target {}, each checked against its id",
            f.chunks,
            output::bytes(f.bytes),
            f.from
        ));
    }
    lines
}
