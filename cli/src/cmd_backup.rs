//! `offsite backup`: resolves the configuration into a run plan, hands it to
//! [`backup_core::run`], and prints what happens (a line per snapshot for
//! people, or one JSON array) and notifies. The run's order, hooks and
//! failure rules are the engine's; nothing here decides them.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use backup_core::backup::BackupOptions;
use backup_core::error::chain_text;
use backup_core::repo::{Access, Creator, NewFormat, Repository};
use backup_core::run::{self, Hook, Observer, Plan, PlannedSource, PlannedTarget, RunEvent};
use serde_json::json;

use crate::cmd_init::{creating_owner, named_recipients};
use crate::config::{Config, DatabaseCheckSetting, RepoFormat, TargetConfig};
use crate::errors::hint_in;
use crate::hooks::ConfigHooks;
use crate::notify::{self, Event, EventKind};
use crate::output::{self, Bar};
use crate::output::{snapshot_json, Done};
use crate::per_target::{config_failure, failed, shared};
use crate::resolve::{access, chosen_targets, keys, source_specs, Purpose};
use crate::targets;

pub async fn backup(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    tags: Vec<String>,
    pin: bool,
    as_json: bool,
) -> Result<()> {
    let done = backup_report(cfg, source, target, tags, pin, as_json).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&done.json)?);
    }
    done.result
}

/// Runs the backup and notifies; with `as_json` nothing is printed and the
/// results are the outcome's report, else each is printed as it comes.
pub(crate) async fn backup_report(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    tags: Vec<String>,
    pin: bool,
    as_json: bool,
) -> Result<Done> {
    // Format 1 targets need the recipients; a format 2 backup host may
    // have none (it holds a writer key).
    let keys = match cfg.encryption.recipients.is_empty() {
        true => None,
        false => Some(keys(cfg)?),
    };
    let access = access(cfg, Purpose::Write, None)?;
    let plan = plan(
        cfg,
        source,
        target,
        tags,
        pin,
        keys.as_ref(),
        access.as_ref(),
    )
    .await?;
    let config = config_failure(&plan.targets);
    notify::start(&cfg.notify, EventKind::Backup).await;
    let observer = Printer {
        as_json,
        pin,
        state: Mutex::default(),
    };
    let hooks = Arc::new(ConfigHooks(cfg.sources.clone()));
    let report = run::run(plan, keys.as_ref(), hooks, &observer).await;
    let state = observer.state.into_inner().expect("printer state");
    notify::events(&cfg.notify, &state.events).await;
    let summary = format!(
        "{} of {} backups succeeded",
        report.parts - report.failed,
        report.parts
    );
    notify::finish(&cfg.notify, EventKind::Backup, report.ok(), &summary).await;
    Ok(Done {
        json: serde_json::Value::Array(state.results),
        result: report
            .failure_summary()
            .map_or(Ok(()), |f| Err(failed(f, config))),
    })
}

/// The configuration, resolved once: sources, opened targets, options.
async fn plan(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    tags: Vec<String>,
    pin: bool,
    keys: Option<&backup_core::keys::Keys>,
    access: Option<&Access>,
) -> Result<Plan> {
    let mut sources = Vec::new();
    for spec in source_specs(cfg, source)? {
        let source = cfg.source(&spec.name)?;
        sources.push(PlannedSource {
            lock_timeout: source.lock_timeout(),
            check_at_backup: source.database_check == DatabaseCheckSetting::Backup,
            spec,
        });
    }
    let planned = planned_targets(cfg, target, keys, access).await?;
    Ok(Plan {
        sources,
        targets: planned,
        options: BackupOptions {
            tags,
            pack_size: cfg.backup.pack_size_mib << 20,
            compression_level: cfg.backup.compression_level,
            upload_concurrency: cfg.backup.upload_concurrency,
            pin,
            ..Default::default()
        },
    })
}

#[derive(Default)]
struct PrinterState {
    results: Vec<serde_json::Value>,
    events: Vec<Event>,
    bar: Option<Bar>,
}

/// Prints each event as it comes and keeps what `--json` and the
/// notifications need.
struct Printer {
    as_json: bool,
    pin: bool,
    state: Mutex<PrinterState>,
}

impl Observer for Printer {
    fn event(&self, event: RunEvent) {
        let mut state = self.state.lock().expect("printer state");
        match event {
            RunEvent::SourceStarted { source, progress } => {
                state.bar = Some(Bar::start(source, progress, !self.as_json));
            }
            RunEvent::SourceFinished { .. } => state.bar = None,
            RunEvent::Stored {
                source,
                target,
                summary,
            } => self.stored(&mut state, &source, &target, *summary),
            RunEvent::Failed {
                source,
                target,
                error,
            } => {
                // A target that could not be opened is named in its error;
                // a failure during the backup is not.
                let line = chain_text(&*error);
                let full = match source {
                    None => line.clone(),
                    Some(_) => format!("target {target:?}: {line}"),
                };
                let source = source.unwrap_or_else(|| "*".to_string());
                let failure = Failure {
                    line,
                    full,
                    hint: hint_in(&*error),
                };
                self.failed(&mut state, &source, &[target], &failure);
            }
            RunEvent::SourceFailed {
                source,
                targets,
                error,
            } => {
                let line = chain_text(&error);
                let failure = Failure {
                    full: line.clone(),
                    line,
                    hint: hint_in(&error),
                };
                self.failed(&mut state, &source, &targets, &failure)
            }
            RunEvent::HookFailed {
                source,
                hook,
                message,
            } => self.hook_failed(&mut state, &source, hook, &message),
        }
    }
}

/// A failed part in words: the line (which names the target already), the
/// whole error for JSON and notifications, and the hint.
struct Failure {
    line: String,
    full: String,
    hint: Option<String>,
}

impl Printer {
    fn stored(
        &self,
        state: &mut PrinterState,
        source: &str,
        target: &str,
        s: backup_core::backup::BackupSummary,
    ) {
        let m = &s.manifest;
        state.events.push(notify::backup_event(&s, target));
        if self.as_json {
            let mut snapshot = snapshot_json(m, target);
            snapshot["pinned"] = json!(self.pin);
            state.results.push(json!({
                "source": source, "target": target, "ok": true,
                "snapshot": snapshot,
                "requests": s.requests, "seconds": s.duration.as_secs_f64(),
            }));
            return;
        }
        println!(
            "{source} -> {target}: snapshot {}{}, read {}, new {}, uploaded {}, {} requests, {}",
            m.id,
            if self.pin { " (pinned)" } else { "" },
            output::bytes(m.size),
            output::bytes(m.new_bytes),
            output::bytes(m.uploaded_bytes),
            s.requests,
            output::duration(s.duration)
        );
    }

    /// Parts that stored nothing: one source on `targets` (all of them
    /// when the source itself failed).
    fn failed(&self, state: &mut PrinterState, source: &str, targets: &[String], f: &Failure) {
        let src = (source != "*").then_some(source);
        for target in targets {
            let mut ev = Event::new(EventKind::Backup, false).at(src, Some(target));
            ev.error = Some(f.full.clone());
            state.events.push(ev);
            if self.as_json {
                state.results.push(
                    json!({"source": source, "target": target, "ok": false, "error": f.full}),
                );
            }
        }
        if self.as_json {
            return;
        }
        eprintln!("{source} -> {}: FAILED: {}", targets.join(", "), f.line);
        if let Some(h) = &f.hint {
            eprintln!("  hint: {h}");
        }
    }

    fn hook_failed(&self, state: &mut PrinterState, source: &str, hook: Hook, message: &str) {
        if self.as_json {
            state.results.push(
                json!({"source": source, "hook": hook.name(), "ok": false, "error": message}),
            );
            return;
        }
        // The message names the source and the hook.
        eprintln!("FAILED: {message}");
        if hook == Hook::Before {
            eprintln!("  hint: the source was not backed up; fix the command or its exit status (run it by hand with sh -c)");
        }
    }
}

/// The chosen targets opened for this backup ([`Repository::open_for_backup`]),
/// in config order; a target that cannot be opened is its own failure.
pub(crate) async fn planned_targets(
    cfg: &Config,
    target: Option<&str>,
    keys: Option<&backup_core::keys::Keys>,
    access: Option<&Access>,
) -> Result<Vec<PlannedTarget>> {
    let owner = creating_owner(access);
    let recipients = named_recipients(cfg)?;
    let creator = owner.as_ref().map(|owner| Creator {
        owner,
        recipients: &recipients,
    });
    let chosen = chosen_targets(cfg, target)?;
    // A backend that does not open is its target's failure; the others'
    // repositories come back from the engine in the same order.
    let (mut storages, mut broken) = (Vec::new(), Vec::new());
    for t in &chosen {
        match targets::open(t) {
            Ok(storage) => {
                storages.push((storage, new_format(t)));
                broken.push(None);
            }
            Err(e) => broken.push(Some(shared(e))),
        }
    }
    // The configured targets not chosen (`--target`) may hold the key set
    // a new repository must join.
    let others: Vec<_> = (cfg.targets.iter())
        .filter(|t| !chosen.iter().any(|c| c.name == t.name))
        .filter_map(|t| targets::open(t).ok())
        .collect();
    let mut repos = Repository::open_for_backup(&storages, &others, keys, access, creator)
        .await
        .into_iter();
    let mut planned = Vec::new();
    for (t, broken) in chosen.into_iter().zip(broken) {
        let repo = match broken {
            Some(e) => Err(e),
            None => repos
                .next()
                .expect("one result per opened target")
                .map_err(|e| {
                    shared(anyhow::Error::from(e).context(format!("target {:?}", t.name)))
                }),
        };
        planned.push(PlannedTarget {
            name: t.name.clone(),
            repo,
        });
    }
    Ok(planned)
}

fn new_format(t: &TargetConfig) -> NewFormat {
    match t.format {
        RepoFormat::V1 => NewFormat::V1,
        RepoFormat::V2 => NewFormat::V2,
    }
}
