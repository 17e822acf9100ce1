//! `offsite restore`: one source (`--source`) or every source of the config
//! (`--all`), each to the path in its `[[sources]]` entry unless `--to` puts
//! it elsewhere. The snapshot is chosen across every target (see
//! [`crate::across`]), downloaded and checked beside its destination, and
//! switched into place by backup-core; this module prints what happened.
//! With `--all`, a source that fails is reported and the others still go:
//! the exit code says whether every source was restored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use backup_core::backup::{BackupOptions, Progress};
use backup_core::keys::Identities;
use backup_core::repo::{Manifest, Repository, Selector, PRE_RESTORE_TAG};
use backup_core::restore::{check_not_in_use, RestoreOptions, RestoreSummary, Staged};
use backup_core::source::{SourceKind, SourceSpec};
use backup_core::Error;
use chrono::Local;
use serde_json::json;

use crate::across;
use crate::commands::{hint, identities, keys, parse_time, snapshot_json};
use crate::config::{Config, SourceConfig};
use crate::hooks;
use crate::output::{self, Bar};
use crate::{targets, usage, RestoreArgs};

pub async fn restore(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    if args.all {
        return restore_all(cfg, args).await;
    }
    let name = args.source.as_deref().ok_or_else(|| {
        usage::mistake(
            "name the source to restore with --source NAME, or restore every source with --all",
        )
    })?;
    let done = restore_source(cfg, name, args, args.to.as_deref()).await?;
    done.print(args.json)?;
    done.after_hook.map_or(Ok(()), Err)
}

/// Every source of the config to its own path, one after another; a
/// failure is reported and the next source still restored.
async fn restore_all(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    if cfg.sources.is_empty() {
        return Err(usage::mistake("the config has no [[sources]] to restore"));
    }
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for source in &cfg.sources {
        let outcome = match restore_source(cfg, &source.name, args, None).await {
            Ok(done) => {
                if args.json {
                    let mut v = done.json.clone();
                    v["source"] = json!(source.name);
                    v["ok"] = json!(done.after_hook.is_none());
                    results.push(v);
                } else {
                    done.print(false)?;
                }
                done.after_hook.map_or(Ok(()), Err)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            if args.json {
                results
                    .push(json!({"source": source.name, "ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("{}: FAILED: {e:#}", source.name);
                if let Some(h) = hint(&e) {
                    eprintln!("  hint: {h}");
                }
            }
            failed.push(source.name.as_str());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} sources were not restored: {}",
            failed.len(),
            cfg.sources.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// What one source's restore did: its `--json` object and its lines for
/// people, and whether its after_restore hook failed (the restore itself
/// succeeded).
struct Restored {
    json: serde_json::Value,
    lines: Vec<String>,
    after_hook: Option<anyhow::Error>,
}

impl Restored {
    fn print(&self, as_json: bool) -> Result<()> {
        if as_json {
            println!("{}", serde_json::to_string_pretty(&self.json)?);
        } else {
            for line in &self.lines {
                println!("{line}");
            }
        }
        Ok(())
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

async fn restore_source(
    cfg: &Config,
    name: &str,
    args: &RestoreArgs,
    to: Option<&Path>,
) -> Result<Restored> {
    let source = cfg.source(name)?;
    let selector = selector(args)?;
    // `--test` restores into a directory of its own that is removed on
    // return: the whole restore and its checks run, and nothing else is touched.
    let scratch = if args.test {
        Some(
            tempfile::Builder::new()
                .prefix("offsite-restore-test-")
                .tempdir()
                .context(
                    "creating a temporary directory for --test (set TMPDIR to choose where)",
                )?,
        )
    } else {
        None
    };
    let to = match &scratch {
        Some(dir) => dir.path().join(name),
        None => destination(source, to)?,
    };
    let replacing = std::fs::symlink_metadata(&to).is_ok();
    if replacing && !args.force {
        return Err(Error::TargetExists(to).into());
    }
    let ids = identities(cfg, args.identity.as_deref())?;
    let listings = across::read(cfg, args.target.as_deref(), &ids).await?;
    let (tname, repo, manifest) = across::choose_one(listings, name, &selector)?;
    let switched = stage_and_switch(
        cfg,
        (&tname, &repo),
        &ids,
        source,
        &manifest,
        &to,
        replacing,
        args,
    )
    .await?;
    let json = restored_json(&switched, &manifest, &tname, args);
    let lines = restored_lines(&switched, &manifest, &tname, args);
    Ok(Restored {
        json,
        lines,
        after_hook: switched.after_hook,
    })
}

fn restored_json(
    switched: &Switched,
    manifest: &Manifest,
    tname: &str,
    args: &RestoreArgs,
) -> serde_json::Value {
    let summary = &switched.summary;
    json!({
        "snapshot": snapshot_json(manifest, tname),
        "path": if args.test { serde_json::Value::Null } else { json!(summary.path) },
        "test": args.test,
        "bytes": summary.bytes,
        "moved_aside": summary.moved_aside,
        "pre_restore_snapshot": switched.pre_restore,
        "seconds": summary.duration.as_secs_f64(),
        "verified": true,
        "database_check": !args.no_database_check,
        "fetched_elsewhere": summary.fetched_elsewhere.iter().map(|f| json!({
            "target": f.from, "chunks": f.chunks, "bytes": f.bytes,
        })).collect::<Vec<_>>(),
        "damaged_chunks": summary.damaged.iter().map(|(_, c)| c.len()).sum::<usize>(),
        "damage_recorded": summary.damage_recorded,
    })
}

fn restored_lines(
    switched: &Switched,
    manifest: &Manifest,
    tname: &str,
    args: &RestoreArgs,
) -> Vec<String> {
    let summary = &switched.summary;
    let mut lines = repair_lines(summary, tname);
    let checks = match manifest.kind {
        SourceKind::Sqlite => "checksum and integrity_check",
        SourceKind::Duckdb => "checksum and DuckDB open",
        SourceKind::Files => "checksum",
    };
    let (checks, skipped) = if args.no_database_check {
        ("checksum", " (database check skipped: --no-database-check)")
    } else {
        (checks, "")
    };
    let taken = manifest
        .finished
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S %z");
    let what = format!(
        "{} ({} of {}, taken {}) from {tname}",
        manifest.id,
        output::bytes(manifest.size),
        manifest.source,
        taken
    );
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
    if let Some(id) = &switched.pre_restore {
        lines.push(format!(
            "the replaced file was first backed up as snapshot {id} (tag {PRE_RESTORE_TAG})"
        ));
    }
    for p in &summary.moved_aside {
        lines.push(format!("kept the previous file as {}", p.display()));
    }
    lines
}

/// A restore put in place, and how its hooks went.
struct Switched {
    summary: RestoreSummary,
    pre_restore: Option<String>,
    /// The after_restore hook failed (the restore itself succeeded).
    after_hook: Option<anyhow::Error>,
}

/// Downloads and verifies the snapshot beside `to`, then switches it into
/// place. When `to` is the source's own path, the source's before_restore
/// hook runs after the download (the application is stopped only for the
/// switch) and after_restore once the restore is over, failed or not.
#[allow(clippy::too_many_arguments)]
async fn stage_and_switch(
    cfg: &Config,
    (repo_target, repo): (&str, &Repository),
    ids: &Identities,
    source: &SourceConfig,
    manifest: &Manifest,
    to: &Path,
    replacing: bool,
    args: &RestoreArgs,
) -> Result<Switched> {
    let hooked = !args.test && is_source_path(source, to);
    // With no hook to stop the application, a database in use is refused
    // before the download rather than after it.
    if !hooked || source.before_restore.is_none() {
        check_not_in_use(to, manifest.kind)?;
    }
    let progress = Arc::new(Progress::default());
    let opts = RestoreOptions {
        force: args.force,
        progress: progress.clone(),
        check_database: !args.no_database_check,
        fallbacks: fallbacks(cfg, repo_target),
        ..Default::default()
    };
    let bar = Bar::start(format!("restore {}", manifest.id), progress, !args.json);
    let staged = backup_core::restore::stage(repo, ids, manifest, to, &opts).await;
    drop(bar);
    let staged = staged?;
    if hooked {
        hooks::run_async(source, hooks::Hook::BeforeRestore, None).await?;
    }
    let result = switch(cfg, repo, source, staged, replacing, args).await;
    if !hooked {
        return result;
    }
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    let after = hooks::run_async(source, hooks::Hook::AfterRestore, error).await;
    match (result, after) {
        (Ok(mut s), Err(e)) => {
            s.after_hook = Some(e);
            Ok(s)
        }
        (Err(e), Err(hook)) => {
            eprintln!("FAILED: {hook:#}");
            Err(e)
        }
        (result, Ok(())) => result,
    }
}

/// With nothing else using the database: the pre-restore snapshot of what
/// is there, then the switch.
async fn switch(
    cfg: &Config,
    repo: &Repository,
    source: &SourceConfig,
    staged: Staged,
    replacing: bool,
    args: &RestoreArgs,
) -> Result<Switched> {
    let to = staged.destination().to_path_buf();
    check_not_in_use(&to, source.kind)?;
    let pre_restore = if replacing && !args.no_pre_restore_snapshot {
        let spec = SourceSpec {
            name: source.name.clone(),
            kind: source.kind,
            path: to,
        };
        pre_restore_snapshot(cfg, repo, &spec, args.json).await
    } else {
        None
    };
    Ok(Switched {
        summary: staged.put_in_place().await?,
        pre_restore,
        after_hook: None,
    })
}

/// Whether a restore to `to` replaces the source's own data (the path the
/// application uses), so that its restore hooks apply.
fn is_source_path(source: &SourceConfig, to: &Path) -> bool {
    let abs = |p: &Path| std::path::absolute(p).ok();
    if abs(to).is_some() && abs(to) == abs(&source.path) {
        return true;
    }
    // The same file reached another way (a symlinked directory).
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(to), std::fs::metadata(&source.path)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// The other targets, for chunks that are damaged or missing on `chosen`:
/// restore asks them by chunk id, and only when it needs to.
fn fallbacks(cfg: &Config, chosen: &str) -> Vec<backup_core::restore::Fallback> {
    cfg.targets
        .iter()
        .filter(|t| t.name != chosen)
        .filter_map(|t| match targets::open(t) {
            Ok(storage) => Some(backup_core::restore::Fallback {
                name: t.name.clone(),
                storage,
            }),
            Err(e) => {
                tracing::warn!(target = %t.name, error = %format!("{e:#}"), "not usable as a fallback for damaged chunks");
                None
            }
        })
        .collect()
}

/// What a restore had to work around, in words.
fn repair_lines(summary: &backup_core::restore::RestoreSummary, target: &str) -> Vec<String> {
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

/// Backs up the file a restore is about to replace, so that an in-place
/// restore can itself be undone. Best effort: a file that cannot be read as
/// its source kind (a corrupt database is the usual reason to restore) or a
/// repository that cannot take the snapshot only warns, because the file is
/// moved aside in any case, never deleted.
async fn pre_restore_snapshot(
    cfg: &Config,
    repo: &Repository,
    spec: &SourceSpec,
    quiet: bool,
) -> Option<String> {
    let keys = match keys(cfg) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no pre-restore snapshot: no recipients");
            if !quiet {
                eprintln!(
                    "warning: no pre-restore snapshot of {} ({e:#}); it will be moved aside",
                    spec.path.display()
                );
            }
            return None;
        }
    };
    let opts = BackupOptions {
        tags: vec![PRE_RESTORE_TAG.to_string()],
        pack_size: cfg.backup.pack_size_mib << 20,
        compression_level: cfg.backup.compression_level,
        upload_concurrency: cfg.backup.upload_concurrency,
        ..Default::default()
    };
    match backup_core::backup::backup(repo, &keys, spec, &opts).await {
        Ok(s) => Some(s.manifest.id),
        Err(e) => {
            tracing::warn!(error = %e, "no pre-restore snapshot");
            if !quiet {
                eprintln!(
                    "warning: could not snapshot {} before replacing it ({e}); it will be moved aside instead",
                    spec.path.display()
                );
            }
            None
        }
    }
}
