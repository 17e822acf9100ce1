//! `offsite prune` (retention, then unused data) and `offsite unlock`: the
//! configuration resolved into options and planned targets, the engine's
//! [`backup_core::each::prune`] run on them, each target's report printed
//! as it is done.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use backup_core::each::prune::{prune_all, unlock_all, PruneRun, UnlockReport};
use backup_core::prune::{PruneOptions, PruneReport, Verdict};
use chrono::Local;
use clap::Args;
use serde_json::json;

use crate::config::Config;
use crate::output::{self, Done};
use crate::per_target::{open_targets, planned_lock_targets, TargetPrinter};
use crate::resolve::{access, chosen_targets, keys, Purpose};

#[derive(Args)]
pub struct PruneArgs {
    /// Show what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply retention to this source's snapshots only.
    #[arg(long)]
    pub source: Option<String>,
    /// Prune this target only [default: every target]
    #[arg(long)]
    pub target: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct UnlockArgs {
    /// This target only [default: every target]
    #[arg(long)]
    pub target: Option<String>,
    /// Remove every lock, not only stale ones. Only when no offsite runs anywhere.
    #[arg(long)]
    pub all: bool,
}

/// The policies from `[retention]` and each source's `retention`.
fn options(cfg: &Config, source: Option<&str>, dry_run: bool) -> Result<PruneOptions> {
    let default_policy = match &cfg.retention {
        Some(r) => r.policy("retention")?,
        None => Default::default(),
    };
    let mut policies = HashMap::new();
    for s in &cfg.sources {
        if let Some(r) = &s.retention {
            policies.insert(
                s.name.clone(),
                r.policy(&format!("sources.{}.retention", s.name))?,
            );
        }
    }
    Ok(PruneOptions {
        dry_run,
        source: source.map(str::to_string),
        default_policy,
        policies,
        replica_window: cfg.replicate.as_ref().map(|r| r.retention()),
    })
}

pub async fn prune(cfg: &Config, config_path: &Path, args: &PruneArgs) -> Result<()> {
    let done = prune_report(cfg, config_path, args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done.json)?);
    }
    done.result
}

/// Prunes; with `args.json` nothing is printed but warnings and the
/// reports are the outcome's, else each target's is printed when done.
pub(crate) async fn prune_report(
    cfg: &Config,
    config_path: &Path,
    args: &PruneArgs,
) -> Result<Done> {
    if let Some(s) = &args.source {
        cfg.source(s)?;
    }
    let opts = options(cfg, args.source.as_deref(), args.dry_run)?;
    let any_policy = match &args.source {
        Some(s) => !opts.policy(s).is_empty(),
        None => !opts.default_policy.is_empty() || opts.policies.values().any(|p| !p.is_empty()),
    };
    if !any_policy {
        // A configuration gap: exit 2.
        return Err(crate::usage::mistake(format!(
            "config file {} has no retention policy{}, so prune would not know what to keep and \
             deletes nothing; add one, e.g.\n  [retention]\n  keep_daily = 7\n  keep_weekly = 4\n  \
             keep_monthly = 6\n(or a `retention` table inside a [[sources]] entry)",
            config_path.display(),
            args.source
                .as_deref()
                .map(|s| format!(" for source {s:?}"))
                .unwrap_or_default()
        )));
    }
    // Prune writes index files: on format 1 encrypted to the recipients,
    // on format 2 signed with this host's writer key or the owner's
    // identity (the keys a backup uses).
    let keys = match cfg.encryption.recipients.is_empty() {
        true => None,
        false => Some(keys(cfg).context("prune needs encryption.recipients")?),
    };
    let access = access(cfg, Purpose::Write, None)?;
    let chosen = chosen_targets(cfg, args.target.as_deref())?;
    let targets = open_targets(chosen, access.as_ref()).await;
    let printer = TargetPrinter::new(args.json, show_report, None);
    let run = prune_all(targets, keys.as_ref(), &opts, &printer).await;
    Ok(Done {
        json: printer.results(),
        result: outcome(&run),
    })
}

/// The command's result: exit 2 when a target failed for what the
/// configuration lacks (format 2 keys, a key that can sign, the
/// recipients), else 1 when any target failed.
fn outcome(run: &PruneRun) -> Result<()> {
    let Some(failed) = run.failure_summary() else {
        return Ok(());
    };
    let errors = run.outcomes.iter().filter_map(|o| o.result.as_ref().err());
    let config = errors
        .into_iter()
        .any(|e| crate::usage::is_mistake(e.error()));
    Err(crate::per_target::failed(failed, config))
}

/// One target's report: its JSON entry with `--json`, else printed; with a
/// warning on stderr either way for each source without a policy.
fn show_report(target: &str, report: &PruneReport, as_json: bool) -> Option<serde_json::Value> {
    let entry = if as_json {
        Some(report_json(target, report))
    } else {
        print_report(target, report);
        None
    };
    for s in &report.sources_without_policy {
        eprintln!(
            "warning: source {s:?} has no retention policy: all its snapshots on {target} \
             are kept (set [retention] or a retention table in its [[sources]] entry)"
        );
    }
    entry
}

/// The rules that keep a snapshot, or why none does; a pre-restore
/// snapshot's line says when its rule ends (or ended).
fn why(v: &Verdict) -> String {
    let until = v
        .expires
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M"));
    match (v.keep, until) {
        (true, None) => v.reasons.join(", "),
        (true, Some(t)) if v.reasons.iter().any(|r| r.starts_with("pre-restore")) => {
            format!("{} (until {t})", v.reasons.join(", "))
        }
        (true, Some(t)) => format!("{} (pre-restore: expired {t})", v.reasons.join(", ")),
        (false, Some(t)) => format!("pre-restore: expired {t} (keep_pre_restore)"),
        (false, None) => "no rule keeps it".into(),
    }
}

fn print_report(target: &str, r: &PruneReport) {
    let removed = r.removed().count();
    let would = if r.dry_run {
        "would remove"
    } else {
        "removing"
    };
    println!(
        "{target}: {} snapshots, keeping {}, {would} {removed}",
        r.snapshots.len(),
        r.snapshots.len() - removed
    );
    for v in &r.snapshots {
        let m = &v.manifest;
        println!(
            "  {:<6} {:<26} {:<12} {}  {}",
            if v.keep { "keep" } else { "remove" },
            m.id,
            m.source,
            m.finished.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
            why(v)
        );
    }
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "  {verb} {removed} snapshots, {} lists, {} packs ({}), {} index files (replaced by {}); \
         kept {} packs ({})",
        r.lists_deleted,
        r.packs_deleted,
        output::bytes(r.pack_bytes_deleted),
        r.index_files_deleted,
        r.index_files_written,
        r.packs_kept,
        output::bytes(r.pack_bytes_kept),
    );
    if r.bundles_deleted > 0 {
        println!(
            "  {verb} {} key bundles no keyring names",
            r.bundles_deleted
        );
    }
    if r.shortcuts_written > 0 {
        let verb = if r.dry_run { "would write" } else { "wrote" };
        let s = if r.shortcuts_written == 1 { "" } else { "s" };
        println!(
            "  {verb} {} shortcut list{s}, so that every kept snapshot's path of lists is short \
             and made of kept snapshots",
            r.shortcuts_written
        );
    }
    if r.partly_used_packs > 0 {
        println!(
            "  {} partly used packs ({}) still hold {} of unused data (before compression); \
             prune keeps them because rewriting a pack needs the identity",
            r.partly_used_packs,
            output::bytes(r.partly_used_pack_bytes),
            output::bytes(r.unused_chunk_bytes)
        );
    }
    print_repository_state(r, verb);
}

/// Junk objects and damage records: what prune did about them.
fn print_repository_state(r: &PruneReport, verb: &str) {
    for key in &r.junk_deleted {
        println!("  {verb} {key}: it does not decode (empty, damaged or not offsite's)");
    }
    for (key, why) in &r.rejected_deleted {
        println!("  {verb} {key}: FORGED, its signature never counts ({why})");
    }
    if r.damage_records_deleted > 0 {
        println!(
            "  {verb} {} damage records of deleted packs",
            r.damage_records_deleted
        );
    }
    if r.damaged_chunks > 0 {
        println!(
            "  {} chunks kept snapshots use have only damaged copies; their packs are kept \
             (`offsite verify` names the snapshots)",
            r.damaged_chunks
        );
    }
}

fn report_json(target: &str, r: &PruneReport) -> serde_json::Value {
    let snapshots: Vec<_> = r
        .snapshots
        .iter()
        .map(|v| {
            json!({
                "id": v.manifest.id,
                "source": v.manifest.source,
                "time": v.manifest.finished,
                "action": if v.keep { "keep" } else { "remove" },
                "pinned": v.pinned,
                "reasons": v.reasons,
                "expires": v.expires,
            })
        })
        .collect();
    let removed = r.removed().count();
    json!({
        "target": target,
        "ok": true,
        "dry_run": r.dry_run,
        "snapshots": snapshots,
        "kept": r.snapshots.len() - removed,
        "removed": removed,
        "sources_without_policy": r.sources_without_policy,
        "deleted": {
            "snapshots": removed,
            "lists": r.lists_deleted,
            "pins": r.pins_deleted,
            "key_bundles": r.bundles_deleted,
            "index_files": r.index_files_deleted,
            "packs": r.packs_deleted,
            "pack_bytes": r.pack_bytes_deleted,
            "junk": r.junk_deleted,
            "rejected": r.rejected_deleted.iter()
                .map(|(key, reason)| json!({"key": key, "reason": reason}))
                .collect::<Vec<_>>(),
            "damage_records": r.damage_records_deleted,
        },
        "damaged_chunks": r.damaged_chunks,
        "index_files_written": r.index_files_written,
        "shortcut_lists_written": r.shortcuts_written,
        "packs_kept": r.packs_kept,
        "pack_bytes_kept": r.pack_bytes_kept,
        "partly_used": {
            "packs": r.partly_used_packs,
            "pack_bytes": r.partly_used_pack_bytes,
            "unused_bytes": r.unused_chunk_bytes,
        },
    })
}

pub async fn unlock(cfg: &Config, args: &UnlockArgs) -> Result<()> {
    let targets = planned_lock_targets(cfg, args.target.as_deref()).await?;
    let printer = TargetPrinter::new(false, show_unlock, None);
    let run = unlock_all(targets, args.all, &printer).await;
    if let Some(failed) = run.failure_summary() {
        bail!("{failed}");
    }
    Ok(())
}

fn show_unlock(target: &str, r: &UnlockReport, _: bool) -> Option<serde_json::Value> {
    if r.removed.is_empty() {
        println!("{target}: no {}locks", if r.all { "" } else { "stale " });
    }
    for (key, info) in &r.removed {
        match info {
            Some(i) => println!("{target}: removed the lock of {} ({key})", i.describe()),
            None => println!("{target}: removed the unreadable lock {key}"),
        }
    }
    for (key, info) in &r.held {
        let who = info
            .as_ref()
            .map_or_else(|| "an unreadable lock".to_string(), |i| i.describe());
        println!(
            "{target}: still locked by {who} ({key}); if that run is gone, `offsite unlock --all` removes it"
        );
    }
    None
}
