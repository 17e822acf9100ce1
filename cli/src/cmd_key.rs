//! `offsite key list | add RECIPIENT | remove RECIPIENT | rewrite` on format 2
//! repositories (docs/design/format-v2.md, 2.6): each acts on every
//! configured target (or `--target`) through `each::each` and reports per
//! target; a target it could not change fails the command (exit 1). The
//! work is `backup_core::keyadmin`'s; this resolves the config and prints.

use anyhow::{bail, Result};
use backup_core::each::{each, Outcome, Outcomes, PlannedTarget};
use backup_core::keyadmin::{self, AdminOptions, KeyChange, Owner};
use backup_core::keyring::{self, Keyring};
use backup_core::repo::Repository;
use backup_core::rewrite::{self, RewriteOptions, RewriteReport};
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;
use crate::per_target::{open_targets, planned_v2_targets, print_target_failure};
use crate::resolve::{self, Purpose};

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Per target: the keyring serial, the current generation, the recipients (removed ones too) and the writers.
    List {
        /// List this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Print a JSON array, one entry per target.
        #[arg(long)]
        json: bool,
    },
    /// Give another age recipient (age1...) every key: it restores every snapshot, old and new.
    Add {
        /// The recipient (age1...), e.g. the one `offsite keygen` printed.
        recipient: String,
        /// A name for people [default: the start of the recipient]
        #[arg(long)]
        name: Option<String>,
        /// Change this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
    /// Start a new key generation without RECIPIENT and delete its key bundles (see docs/cli.md for what it does not do).
    Remove {
        /// The recipient (age1...) to remove.
        recipient: String,
        /// Change this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
    /// Encrypt every object of an older key generation again to the current one, so removed identities read nothing stored.
    Rewrite {
        /// Read every object and say what would be encrypted again; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
}

impl KeyCommand {
    pub fn json(&self) -> bool {
        matches!(self, KeyCommand::List { json: true, .. })
    }
}

pub async fn run(cfg: &Config, command: &KeyCommand) -> Result<()> {
    match command {
        KeyCommand::List { target, json } => list(cfg, target.as_deref(), *json).await,
        KeyCommand::Add {
            recipient,
            name,
            target,
        } => {
            let parsed = resolve::recipient(recipient)?;
            let name = name
                .clone()
                .unwrap_or_else(|| recipient.chars().take(12).collect());
            let (owner, opts) = (resolve::owner(cfg)?, resolve::admin_options(cfg));
            let targets = planned_v2_targets(cfg, target.as_deref()).await?;
            let outcomes = change_each(
                targets,
                &owner,
                &opts,
                false,
                async |repo| keyadmin::add_recipient(repo, &owner, &parsed, &name, &opts).await,
                |o| {
                    print_change(
                        o,
                        &format!("added {name} ({recipient})"),
                        &format!("{recipient} is already a recipient"),
                    )
                },
            )
            .await;
            all_done(&outcomes, "key add")
        }
        KeyCommand::Remove { recipient, target } => {
            let (owner, opts) = (resolve::owner(cfg)?, resolve::admin_options(cfg));
            let targets = planned_v2_targets(cfg, target.as_deref()).await?;
            let outcomes = change_each(
                targets,
                &owner,
                &opts,
                true,
                async |repo| keyadmin::remove_recipient(repo, &owner, recipient, &opts).await,
                |o| {
                    print_change(
                        o,
                        &format!("removed {recipient}"),
                        &format!("{recipient} was removed before"),
                    )
                },
            )
            .await;
            print_remove_note(&outcomes);
            all_done(&outcomes, "key remove")
        }
        KeyCommand::Rewrite { dry_run, target } => rewrite(cfg, target.as_deref(), *dry_run).await,
    }
}

/// `key rewrite`: needs the owner's identity (exit 2 without it), which
/// holds every generation's keys; each target opened with it.
async fn rewrite(cfg: &Config, target: Option<&str>, dry_run: bool) -> Result<()> {
    resolve::owner(cfg)?;
    let access = resolve::access(cfg, Purpose::Read, None)?;
    let targets = open_targets(resolve::chosen_targets(cfg, target)?, access.as_ref()).await;
    let opts = RewriteOptions {
        dry_run,
        lock_wait: resolve::admin_options(cfg).lock_wait,
    };
    let outcomes = each(
        targets,
        async |_, repo| rewrite::rewrite(repo, &opts).await,
        print_rewrite,
    )
    .await;
    all_done(&outcomes, "key rewrite")
}

fn print_rewrite(o: &Outcome<RewriteReport>) {
    let r = match &o.result {
        Ok(r) => r,
        Err(e) => return print_target_failure(false, &mut Vec::new(), &o.target, e),
    };
    let verb = if r.dry_run {
        "would encrypt again"
    } else {
        "encrypted again"
    };
    println!(
        "{}: {verb} {} objects ({}) to generation {}; {} were current already",
        o.target,
        r.rewritten,
        crate::output::bytes(r.rewritten_bytes),
        r.generation,
        r.current
    );
    for u in &r.unreadable {
        eprintln!("warning: {}: left as it is, no key opens it: {u}", o.target);
    }
}

async fn list(cfg: &Config, target: Option<&str>, as_json: bool) -> Result<()> {
    let trust = resolve::trust(cfg)?;
    let opts = resolve::admin_options(cfg);
    let targets = planned_v2_targets(cfg, target).await?;
    let mut results = Vec::new();
    let outcomes = each(
        targets,
        async |_, repo| keyadmin::list(repo, &trust, &opts).await,
        |o| match &o.result {
            Ok(k) if as_json => results.push(
                json!({"target": o.target, "ok": true, "keyring": k.body, "warnings": k.warnings}),
            ),
            Ok(k) => print_keyring(&o.target, k),
            Err(e) => print_target_failure(as_json, &mut results, &o.target, e),
        },
    )
    .await;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    all_done(&outcomes, "key list")
}

fn print_keyring(target: &str, k: &Keyring) {
    let b = &k.body;
    println!(
        "{target}: keyring serial {}, generation {}, key set {}",
        b.serial, b.generation, b.keyset
    );
    for r in &b.recipients {
        let owner = if r.owner { " (owner)" } else { "" };
        println!(
            "  recipient {} {}{owner}, added {}",
            r.name,
            r.recipient,
            r.added.format("%Y-%m-%d %H:%M")
        );
    }
    for r in &b.removed_recipients {
        println!(
            "  removed   {} {}, removed {}, last generation {}",
            r.name,
            r.recipient,
            r.removed.format("%Y-%m-%d %H:%M"),
            r.last_generation
        );
    }
    print_writers(b);
    for w in &k.warnings {
        eprintln!("warning: {target}: passed over {w}");
    }
}

/// The writers of a keyring, one line each (`key list`, `writer list`).
pub(crate) fn print_writers(b: &backup_core::keyring::KeyringBody) {
    for w in &b.writers {
        let until = w.valid_until.map_or_else(String::new, |t| {
            format!(", removed: valid until {}", t.to_rfc3339())
        });
        println!(
            "  writer    {} {}, added {}{until}",
            w.name,
            w.key,
            w.added.format("%Y-%m-%d %H:%M")
        );
    }
}

/// One target's line for a key change.
pub(crate) fn print_change(o: &Outcome<KeyChange>, done: &str, already: &str) {
    match &o.result {
        Ok(c) if c.changed => println!(
            "{}: {done}: keyring serial {}, generation {}",
            o.target,
            c.keyring.serial(),
            c.keyring.body.generation
        ),
        Ok(_) => println!("{}: {already}; nothing changed", o.target),
        Err(e) => print_target_failure(false, &mut Vec::new(), &o.target, e),
    }
    if let Ok(c) = &o.result {
        if !c.deleted.is_empty() {
            println!("{}: deleted {} key bundles", o.target, c.deleted.len());
        }
    }
}

/// What a removal did not do (docs/cli.md, "What key remove does and does not do").
pub(crate) fn print_remove_note<R>(outcomes: &Outcomes<R>) {
    if outcomes.reports().next().is_some() {
        println!(
            "New backups are encrypted to keys the removed holder never had. Nothing already \
             stored was re-encrypted: whoever kept a copy of its key bundle, or of the bucket, \
             can still read everything written before (see `offsite key rewrite` in docs/cli.md)."
        );
    }
}

/// Runs a key change on every target, once per key set: on the target of
/// that key set with the newest keyring (another may have missed a
/// change), then brings the key set's other targets level with it
/// ([`keyadmin::bring_level`], under the lock the change takes:
/// `exclusive` for a removal), so one key set's targets keep the very
/// same keyrings and keys. Each target's outcome is handed to `done`.
pub(crate) async fn change_each(
    targets: Vec<PlannedTarget>,
    owner: &Owner,
    opts: &AdminOptions,
    exclusive: bool,
    mut change: impl AsyncFnMut(&Repository) -> backup_core::Result<KeyChange>,
    done: impl FnMut(&Outcome<KeyChange>),
) -> Outcomes<KeyChange> {
    let mut primaries: Vec<Repository> = Vec::new();
    each(
        newest_first(targets).await,
        async |_, repo| {
            let same = |p: &&Repository| p.config().keyset() == repo.config().keyset();
            if let Some(from) = primaries.iter().find(same) {
                return keyadmin::bring_level(from, repo, owner, exclusive, opts).await;
            }
            let made = change(repo).await;
            if made.is_ok() {
                primaries.push(repo.clone());
            }
            made
        },
        done,
    )
    .await
}

/// `targets` with those whose newest listed keyring serial is highest
/// first (stable: config order otherwise); unopened ones last.
async fn newest_first(targets: Vec<PlannedTarget>) -> Vec<PlannedTarget> {
    let mut ranked = Vec::with_capacity(targets.len());
    for t in targets {
        let serial = match &t.repo {
            Ok(repo) => keyring::highest_listed(repo)
                .await
                .ok()
                .flatten()
                .unwrap_or(0),
            Err(_) => 0,
        };
        ranked.push((std::cmp::Reverse(serial), t));
    }
    ranked.sort_by_key(|(serial, _)| *serial);
    ranked.into_iter().map(|(_, t)| t).collect()
}

/// An error naming the targets that failed, if any did.
pub(crate) fn all_done<R>(outcomes: &Outcomes<R>, what: &str) -> Result<()> {
    let failed = outcomes.failed();
    if !failed.is_empty() {
        bail!(
            "{what} failed on {} of {} targets: {}",
            failed.len(),
            outcomes.iter().count(),
            failed.join(", ")
        );
    }
    Ok(())
}
