//! The commands: each loads what it needs, calls one backup-core operation per
//! source and target, and prints the result (a line for people, or JSON).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use backup_core::backup::{BackupOptions, Progress};
use backup_core::keys::{generate_identity, Identities, Keys};
use backup_core::repo::{Manifest, Repository, Selector, PRE_RESTORE_TAG};
use backup_core::restore::{check_not_in_use, RestoreOptions, RestoreSummary, Staged};
use backup_core::source::SourceSpec;
use backup_core::storage::ErrorKind;
use backup_core::Error;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::json;

use crate::across;
use crate::config::{Config, SourceConfig, TargetConfig};
use crate::hooks;
use crate::notify::{self, Event, EventKind};
use crate::output::{self, Bar};
use crate::{targets, usage, RestoreArgs};

pub fn keygen(output: Option<&Path>) -> Result<()> {
    let (secret, recipient) = generate_identity();
    match output {
        Some(path) => {
            if path.exists() {
                bail!(
                    "{} already exists; refusing to overwrite an identity (choose another -o)",
                    path.display()
                );
            }
            write_private(path, secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote the identity to {}", path.display());
        }
        None => {
            print!("{secret}");
            // Here the output is the product: a secret nobody read is no identity.
            if output::stdout_closed() {
                bail!("the identity could not be written to stdout, so none was kept; run again, or use -o FILE");
            }
        }
    }
    eprintln!(
        "Keep a copy of the identity somewhere other than the backed-up server (a password \
         manager, a printed copy): without it no backup can be restored.\n\
         Put the recipient in encryption.recipients on backup hosts:"
    );
    println!("{recipient}");
    Ok(())
}

/// Writes a file readable only by its owner, failing if it exists.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

pub(crate) fn keys(cfg: &Config) -> Result<Keys> {
    Keys::from_recipients(&cfg.encryption.recipients).context("encryption.recipients")
}

pub(crate) fn identities(cfg: &Config, flag: Option<&Path>) -> Result<Identities> {
    let path = flag
        .map(Path::to_path_buf)
        .or_else(|| cfg.encryption.identity_file.clone())
        .ok_or_else(|| {
            usage::mistake(
                "restoring needs the age identity: pass --identity FILE or set encryption.identity_file",
            )
        })?;
    let pass = std::env::var("OFFSITE_IDENTITY_PASSPHRASE").ok();
    Ok(Identities::from_file(&path, pass.as_deref())?)
}

pub(crate) fn chosen_targets<'a>(
    cfg: &'a Config,
    name: Option<&str>,
) -> Result<Vec<&'a TargetConfig>> {
    if cfg.targets.is_empty() {
        return Err(usage::mistake(
            "no [[targets]] in the config: add at least one (kind = \"local\" with a path is the simplest)",
        ));
    }
    match name {
        None => Ok(cfg.targets.iter().collect()),
        Some(n) => {
            let t = cfg.targets.iter().find(|t| t.name == n).ok_or_else(|| {
                usage::mistake(format!(
                    "no target named {n:?} (targets: {})",
                    cfg.targets
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            Ok(vec![t])
        }
    }
}

pub(crate) fn source_specs(cfg: &Config, name: Option<&str>) -> Result<Vec<SourceSpec>> {
    if cfg.sources.is_empty() {
        return Err(usage::mistake(
            "no [[sources]] in the config: add one with name, kind (\"sqlite\", \"duckdb\" or \"files\") and path",
        ));
    }
    let chosen: Vec<_> = match name {
        Some(n) => vec![cfg.source(n)?],
        None => cfg.sources.iter().collect(),
    };
    Ok(chosen
        .into_iter()
        .map(|s| SourceSpec {
            name: s.name.clone(),
            kind: s.kind,
            path: s.path.clone(),
        })
        .collect())
}

pub async fn backup(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    tags: Vec<String>,
    pin: bool,
    as_json: bool,
) -> Result<()> {
    let keys = keys(cfg)?;
    let specs = source_specs(cfg, source)?;
    let targets = chosen_targets(cfg, target)?;
    notify::start(&cfg.notify, EventKind::Backup).await;
    let mut events = Vec::new();
    let mut results = Vec::new();
    let mut failures = 0;
    let mut hook_failures = 0;
    let mut target_errors = Vec::new();
    let mut repos = Vec::new();
    for t in &targets {
        match open_repo_for_backup(t, &keys).await {
            Ok(r) => repos.push((t, r)),
            Err(e) => {
                failures += specs.len();
                let mut ev = Event::new(EventKind::Backup, false).at(None, Some(&t.name));
                ev.error = Some(format!("{e:#}"));
                events.push(ev);
                target_errors.push(format!("target {:?}: {e:#}", t.name));
                print_failure(as_json, &mut results, "*", &t.name, &e);
            }
        }
    }
    // Sources outer, targets inner: a source's hooks run once per run, around
    // its snapshots to every target. One failure does not stop the others.
    for spec in &specs {
        let src = cfg.source(&spec.name)?;
        let mut errors = target_errors.clone();
        let mut hook_failed =
            |results: &mut Vec<serde_json::Value>, event: hooks::Event, e: anyhow::Error| {
                hook_failures += 1;
                print_hook_failure(as_json, results, &spec.name, event, &e);
                format!("{e:#}")
            };
        if repos.is_empty() {
            // Nothing to back up to: leave the application alone.
        } else if let Err(e) = hooks::run_async(src, hooks::Event::Before, None).await {
            failures += repos.len();
            errors.push(hook_failed(&mut results, hooks::Event::Before, e));
        } else {
            let mut after = None;
            for (i, (t, repo)) in repos.iter().enumerate() {
                // `after` starts once the last target's read is done, while
                // its upload may still be running.
                let read_done = (i + 1 == repos.len() && src.after.is_some())
                    .then(|| Arc::new(tokio::sync::Notify::new()));
                let progress = Arc::new(Progress::default());
                let opts = BackupOptions {
                    tags: tags.clone(),
                    pack_size: cfg.backup.pack_size_mib << 20,
                    compression_level: cfg.backup.compression_level,
                    upload_concurrency: cfg.backup.upload_concurrency,
                    progress: progress.clone(),
                    source_read: read_done.clone(),
                    lock_timeout: src.lock_timeout(),
                    pin,
                    ..Default::default()
                };
                let bar = Bar::start(format!("{} -> {}", spec.name, t.name), progress, !as_json);
                let before = repo.stats.total();
                let run = backup_core::backup::backup(repo, &keys, spec, &opts);
                tokio::pin!(run);
                let result = loop {
                    tokio::select! {
                        r = &mut run => break r,
                        _ = async { read_done.as_ref().expect("guarded").notified().await },
                            if read_done.is_some() && after.is_none() => {
                            let s = src.clone();
                            after = Some(tokio::task::spawn_blocking(move || hooks::run(&s, hooks::Event::After, None)));
                        }
                    }
                };
                drop(bar);
                match result {
                    Ok(s) => {
                        let m = &s.manifest;
                        let requests = s.requests - before;
                        events.push(notify::backup_event(&s, &t.name));
                        if as_json {
                            let mut snapshot = snapshot_json(m, &t.name);
                            snapshot["pinned"] = json!(pin);
                            results.push(json!({
                                "source": spec.name, "target": t.name, "ok": true,
                                "snapshot": snapshot,
                                "requests": requests, "seconds": s.duration.as_secs_f64(),
                            }));
                        } else {
                            println!(
                                "{} -> {}: snapshot {}{}, read {}, new {}, uploaded {}, {} requests, {}",
                                spec.name,
                                t.name,
                                m.id,
                                if pin { " (pinned)" } else { "" },
                                output::bytes(m.size),
                                output::bytes(m.new_bytes),
                                output::bytes(m.uploaded_bytes),
                                requests,
                                output::duration(s.duration)
                            );
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        let mut ev = Event::new(EventKind::Backup, false)
                            .at(Some(&spec.name), Some(&t.name));
                        ev.error = Some(e.to_string());
                        events.push(ev);
                        let e = anyhow!(e);
                        errors.push(format!("target {:?}: {e:#}", t.name));
                        print_failure(as_json, &mut results, &spec.name, &t.name, &e);
                    }
                }
            }
            let after_result = match after {
                Some(h) => h.await.context("hook thread").and_then(|r| r),
                None => hooks::run_async(src, hooks::Event::After, None).await,
            };
            if let Err(e) = after_result {
                errors.push(hook_failed(&mut results, hooks::Event::After, e));
            }
        }
        if !errors.is_empty() {
            if let Err(e) =
                hooks::run_async(src, hooks::Event::OnError, Some(errors.join("\n"))).await
            {
                hook_failed(&mut results, hooks::Event::OnError, e);
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    let total = specs.len() * targets.len();
    notify::events(&cfg.notify, &events).await;
    let summary = format!("{} of {total} backups succeeded", total - failures);
    notify::finish(
        &cfg.notify,
        EventKind::Backup,
        failures == 0 && hook_failures == 0,
        &summary,
    )
    .await;
    let mut summary = Vec::new();
    if failures > 0 {
        summary.push(format!("{failures} of {total} backups failed"));
    }
    if hook_failures > 0 {
        summary.push(format!("{hook_failures} source hook(s) failed"));
    }
    if !summary.is_empty() {
        bail!("{}", summary.join("; "));
    }
    Ok(())
}

/// A target that failed as a whole in a per-target command (prune, verify):
/// a JSON result entry, or a line on stderr with a hint.
pub(crate) fn print_target_failure(
    as_json: bool,
    results: &mut Vec<serde_json::Value>,
    target: &str,
    e: &anyhow::Error,
) {
    if as_json {
        results.push(json!({"target": target, "ok": false, "error": format!("{e:#}")}));
    } else {
        eprintln!("{target}: FAILED: {e:#}");
        if let Some(h) = hint(e) {
            eprintln!("  hint: {h}");
        }
    }
}

fn print_hook_failure(
    as_json: bool,
    results: &mut Vec<serde_json::Value>,
    source: &str,
    event: hooks::Event,
    e: &anyhow::Error,
) {
    if as_json {
        results.push(
            json!({"source": source, "hook": event.name(), "ok": false, "error": format!("{e:#}")}),
        );
    } else {
        // The error names the source and the hook.
        eprintln!("FAILED: {e:#}");
        if event == hooks::Event::Before {
            eprintln!("  hint: the source was not backed up; fix the command or its exit status (run it by hand with sh -c)");
        }
    }
}

fn print_failure(
    as_json: bool,
    results: &mut Vec<serde_json::Value>,
    source: &str,
    target: &str,
    e: &anyhow::Error,
) {
    if as_json {
        results.push(
            json!({"source": source, "target": target, "ok": false, "error": format!("{e:#}")}),
        );
    } else {
        eprintln!("{source} -> {target}: FAILED: {e:#}");
        if let Some(h) = hint(e) {
            eprintln!("  hint: {h}");
        }
    }
}

async fn open_repo_for_backup(t: &TargetConfig, keys: &Keys) -> Result<Repository> {
    let storage = targets::open(t)?;
    Repository::open_or_init(storage, keys)
        .await
        .with_context(|| format!("target {:?}", t.name))
}

fn snapshot_json(m: &Manifest, target: &str) -> serde_json::Value {
    json!({
        "id": m.id,
        "source": m.source,
        "kind": m.kind,
        "host": m.host,
        "target": target,
        "started": m.started,
        "time": m.finished,
        "size": m.size,
        "files": m.files,
        "chunks": m.chunks,
        "new_bytes": m.new_bytes,
        "uploaded_bytes": m.uploaded_bytes,
        "sha256": m.sha256,
        "tags": m.tags,
    })
}

pub async fn snapshots(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    as_json: bool,
) -> Result<()> {
    if let Some(s) = source {
        cfg.source(s)?;
    }
    // A backup host reads the list with its recipients; a restore host with its identity.
    let ids = if cfg.encryption.recipients.is_empty() {
        identities(cfg, None)?
    } else {
        keys(cfg)?.metadata_identities()
    };
    let listings = across::read(cfg, target, &ids).await?;
    let list = across::all(&listings, source);
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|(l, m)| {
                let mut v = snapshot_json(m, &l.target);
                v["pinned"] = json!(l.pinned.contains(&m.id));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if list.is_empty() {
        let names: Vec<String> = listings.iter().map(|l| format!("{:?}", l.target)).collect();
        println!(
            "no snapshots in target{} {}{}",
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            source
                .map(|s| format!(" for source {s:?}"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<26} {:<12} {:<12} {:<25} {:>10} {:>10}  tags",
        "ID", "SOURCE", "TARGET", "TIME", "SIZE", "NEW"
    );
    for (l, m) in list {
        println!(
            "{:<26} {:<12} {:<12} {:<25} {:>10} {:>10}  {}",
            m.id,
            m.source,
            l.target,
            m.finished
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %z"),
            output::bytes(m.size),
            output::bytes(m.new_bytes),
            m.tags
                .iter()
                .map(String::as_str)
                .chain(l.pinned.contains(&m.id).then_some("(pinned)"))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}

pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(23, 59, 59))
    });
    match naive.and_then(|n| Local.from_local_datetime(&n).earliest()) {
        Some(t) => Ok(t.with_timezone(&Utc)),
        None => Err(usage::mistake(format!(
            "--at {s:?}: expected a time like 2026-11-20T03:00:00Z, \"2026-11-20 03:00\" or 2026-11-20"
        ))),
    }
}

pub async fn restore(cfg: &Config, args: &RestoreArgs) -> Result<()> {
    let source = cfg.source(&args.source)?;
    let selector = if args.latest {
        Selector::Latest
    } else if let Some(id) = &args.snapshot {
        Selector::Id(id.clone())
    } else {
        Selector::At(parse_time(args.at.as_deref().unwrap_or_default())?)
    };
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
    let to = match (&scratch, &args.to) {
        (Some(dir), _) => dir.path().join(&args.source),
        (None, Some(to)) => to.clone(),
        (None, None) => bail!("--to PATH is required (or --test to verify without writing)"),
    };
    let replacing = std::fs::symlink_metadata(&to).is_ok();
    if replacing && !args.force {
        return Err(Error::TargetExists(to).into());
    }
    let ids = identities(cfg, args.identity.as_deref())?;
    let listings = across::read(cfg, args.target.as_deref(), &ids).await?;
    let (tname, repo, manifest) = across::choose_one(listings, &args.source, &selector)?;

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
    let (summary, pre_restore) = (&switched.summary, &switched.pre_restore);
    let repairs = repair_lines(summary, &tname);
    let checks = match manifest.kind {
        backup_core::source::SourceKind::Sqlite => "checksum and integrity_check",
        backup_core::source::SourceKind::Duckdb => "checksum and DuckDB open",
        backup_core::source::SourceKind::Files => "checksum",
    };
    let (checks, skipped) = if args.no_database_check {
        ("checksum", " (database check skipped: --no-database-check)")
    } else {
        (checks, "")
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "snapshot": snapshot_json(&manifest, &tname),
                "path": if args.test { serde_json::Value::Null } else { json!(summary.path) },
                "test": args.test,
                "bytes": summary.bytes,
                "moved_aside": summary.moved_aside,
                "pre_restore_snapshot": pre_restore,
                "seconds": summary.duration.as_secs_f64(),
                "verified": true,
                "database_check": !args.no_database_check,
                "fetched_elsewhere": summary.fetched_elsewhere.iter().map(|f| json!({
                    "target": f.from, "chunks": f.chunks, "bytes": f.bytes,
                })).collect::<Vec<_>>(),
                "damaged_chunks": summary.damaged.iter().map(|(_, c)| c.len()).sum::<usize>(),
                "damage_recorded": summary.damage_recorded,
            }))?
        );
        return switched.after_hook.map_or(Ok(()), Err);
    }
    for line in &repairs {
        println!("{line}");
    }
    let taken = manifest
        .finished
        .with_timezone(&Local)
        .format("%Y-%m-%d %H:%M:%S %z");
    if args.test {
        println!(
            "restore test of {} ({} of {}, taken {}) from {}: {checks} ok{skipped} in {}; nothing was written outside a temporary directory",
            manifest.id,
            output::bytes(manifest.size),
            manifest.source,
            taken,
            tname,
            output::duration(summary.duration),
        );
        return Ok(());
    }
    println!(
        "restored {} ({} of {}, taken {}) from {} to {} in {}; {checks} verified{skipped}",
        manifest.id,
        output::bytes(manifest.size),
        manifest.source,
        taken,
        tname,
        summary.path.display(),
        output::duration(summary.duration),
    );
    if let Some(id) = &pre_restore {
        println!("the replaced file was first backed up as snapshot {id} (tag {PRE_RESTORE_TAG})");
    }
    for p in &summary.moved_aside {
        println!("kept the previous file as {}", p.display());
    }
    switched.after_hook.map_or(Ok(()), Err)
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
        hooks::run_async(source, hooks::Event::BeforeRestore, None).await?;
    }
    let result = switch(cfg, repo, source, staged, replacing, args).await;
    if !hooked {
        return result;
    }
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    let after = hooks::run_async(source, hooks::Event::AfterRestore, error).await;
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

pub async fn targets_check(cfg: &Config, target: Option<&str>, as_json: bool) -> Result<()> {
    let mut probes = Vec::new();
    for t in chosen_targets(cfg, target)? {
        probes.push(targets::probe(t).await);
    }
    if as_json {
        let v: Vec<_> = probes
            .iter()
            .map(|p| {
                let steps: serde_json::Map<String, serde_json::Value> = p
                    .steps
                    .iter()
                    .map(|(s, r)| (s.to_string(), json!(r.as_ref().err().map_or("ok".to_string(), |e| e.clone()))))
                    .collect();
                json!({"target": p.target, "location": p.describe, "backup_ok": p.usable_for_backup(), "steps": steps})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in &probes {
            let steps: Vec<String> = p
                .steps
                .iter()
                .map(|(s, r)| match r {
                    Ok(()) => format!("{s} ok"),
                    Err(e) => format!("{s} FAILED ({e})"),
                })
                .collect();
            let verdict = if p.usable_for_backup() {
                if p.steps.iter().all(|(_, r)| r.is_ok()) {
                    "ok"
                } else {
                    "ok for backup (prune needs delete)"
                }
            } else {
                "NOT USABLE"
            };
            println!(
                "{} {}: {verdict}: {}",
                p.target,
                p.describe,
                steps.join(", ")
            );
        }
    }
    let bad = probes.iter().filter(|p| !p.usable_for_backup()).count();
    if bad > 0 {
        bail!("{bad} target(s) cannot be used for backups; check their credentials, bucket/path and permissions");
    }
    Ok(())
}

/// Prints an error as one line plus a hint, and picks the exit code by the
/// error's type (see [`usage`]): 2 for configuration and usage mistakes, 1
/// for everything else.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    if let Some(h) = hint(e) {
        eprintln!("hint: {h}");
    }
    ExitCode::from(usage::exit_code(e))
}

const FULL_HINT: &str = "make room on the target (free disk space, raise its quota or storage cap, or prune old snapshots), then run again: nothing needs repairing, earlier snapshots are intact, and what this run stored is reused";

pub(crate) fn hint(e: &anyhow::Error) -> Option<String> {
    let core = e.chain().find_map(|c| c.downcast_ref::<Error>())?;
    Some(match core {
        Error::WrongIdentity { .. } => {
            "this needs the identity whose public key was in encryption.recipients when the backup was made; pass --identity FILE".into()
        }
        Error::Corrupt { .. } | Error::Verification(_) => {
            "the stored copy is damaged; restore from another target (--target) or an older snapshot (--snapshot); nothing at the destination was changed".into()
        }
        Error::NotSqlite(_) => "check that the source path names the database file itself, or use kind = \"files\" for other data".into(),
        Error::Busy { .. } => "DuckDB allows a backup only while no process has the database open for writing: raise this source's lock_timeout, or stop the writer around the backup with the source's before/after hooks (e.g. before = \"docker stop app\", after = \"docker start app\")".into(),
        // A static (musl) offsite has no dynamic loader to load the library with.
        Error::DuckdbUnavailable(_) if cfg!(target_feature = "crt-static") => "this offsite is statically linked and cannot load libduckdb.so: restore with --no-database-check (the SHA-256 is still verified), or use a dynamically linked offsite (see README, Install); nothing at the destination was changed".into(),
        Error::DuckdbUnavailable(_) => "install libduckdb.so (DuckDB's libduckdb-linux-amd64.zip, or package/libduckdb.so from the npm package @duckdb/node-bindings-linux-x64) where the loader finds it, or set OFFSITE_LIBDUCKDB=/path/to/libduckdb.so; nothing at the destination was changed".into(),
        Error::RecipientMismatch { .. } => {
            "this repository was created with other recipients: restore the original encryption.recipients, or point the target at an empty directory or prefix".into()
        }
        Error::TargetExists(_) => {
            "pass --force to replace it (the existing file and its -wal/-shm are moved aside, not deleted), or choose another --to".into()
        }
        Error::SnapshotNotFound(_) | Error::AmbiguousSnapshot(..) => "list the snapshots with `offsite snapshots --source NAME`".into(),
        Error::NotARepository { .. } => "point the target at an empty directory or prefix, or at an existing offsite repository".into(),
        Error::UnsupportedVersion { .. } => "upgrade offsite to a version that reads this repository".into(),
        Error::Key(_) => "recipients look like age1...; identity files hold AGE-SECRET-KEY-1... lines (create one with `offsite keygen -o FILE`)".into(),
        Error::TargetFull { .. } => FULL_HINT.into(),
        Error::ShortWrite { .. } => "the target took less than it was sent without reporting an error: check its disk or service (`offsite targets check`) and run again; nothing refers to the incomplete object, and earlier snapshots are intact".into(),
        Error::Storage { source, .. } => match source.kind {
            ErrorKind::Full => FULL_HINT.into(),
            ErrorKind::PermissionDenied => "check the target's credentials and permissions (`offsite targets check`)".into(),
            ErrorKind::NotFound => "check the target's path, bucket and prefix".into(),
            ErrorKind::Transient => "the target is unreachable or overloaded; run again later (uploaded data is reused)".into(),
            _ => return None,
        },
        Error::Source { .. } => "check the source path and that this user can read it".into(),
        Error::Locked { .. } => "another offsite run is using the repository: try again when it has finished. If that run was killed, its lock goes stale (process gone on this host, or 30 minutes without a refresh) and is removed automatically; `offsite unlock --all` removes every lock at once".into(),
        Error::InUse { .. } => "stop the app first, or set a before_restore hook on the source (and after_restore to start it again), e.g. before_restore = \"systemctl stop app\"; nothing was changed".into(),
        Error::UnsafeEntry { .. } => "offsite never writes outside the destination or through a symlink, so it refused this snapshot's file list and wrote nothing outside the destination. Anyone holding the recipients can write a list: restore from another target (--target) or an older snapshot, and check who can write to this target".into(),
        Error::DuckdbVersion { .. } => "install a libduckdb at least as new as the DuckDB that wrote the database (set OFFSITE_LIBDUCKDB=/path/to/libduckdb.so), or restore without this check with --no-database-check (the SHA-256 of the data is still verified); nothing at the destination was changed".into(),
        Error::CannotReplace { .. } => "nothing at the destination was changed: fix the cause and run the restore again, or restore to another path with --to".into(),
        Error::Io { .. } => return None,
    })
}
