//! `offsite writer keygen | list | add NAME KEY | remove NAME` (format 2,
//! docs/design/format-v2.md 2.6): a backup host's writer key, and the
//! owner's authorising or revoking it on every configured target (or
//! `--target`). The work is `backup_core::keyadmin`'s.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use backup_core::each::each;
use backup_core::keyadmin;
use backup_core::keys::{WriterKey, WriterPublic};
use clap::Subcommand;
use serde_json::json;

use crate::cmd_key::{all_done, change_each, print_change, print_remove_note, print_writers};
use crate::cmd_keygen::write_private;
use crate::config::Config;
use crate::per_target::{planned_v2_targets, print_target_failure};
use crate::resolve;

#[derive(Subcommand)]
pub enum WriterCommand {
    /// Write a new writer key file (mode 0600, never overwritten) and print its public key; needs no repository.
    Keygen {
        /// The file to write (set it as encryption.writer_key_file on the backup host).
        #[arg(long, short = 'o')]
        output: PathBuf,
    },
    /// The writers of each target's keyring.
    List {
        /// List this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Print a JSON array, one entry per target.
        #[arg(long)]
        json: bool,
    },
    /// Authorise a backup host's writer key (offsite-writer1...) under NAME.
    Add {
        /// A name for the host, e.g. app-server-1.
        name: String,
        /// The key `offsite writer keygen` printed on that host.
        key: String,
        /// Change this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
    /// Revoke writer NAME: its later snapshots are not trusted, and a new key generation starts.
    Remove {
        /// The writer's name, as `offsite writer list` shows it.
        name: String,
        /// When the key may have been taken (RFC 3339): snapshots it signed after that are not trusted either [default: now]
        #[arg(long, value_name = "TIME")]
        compromised_since: Option<String>,
        /// Change this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
}

impl WriterCommand {
    pub fn needs_config(&self) -> bool {
        !matches!(self, WriterCommand::Keygen { .. })
    }

    pub fn stdout_is_product(&self) -> bool {
        matches!(
            self,
            WriterCommand::Keygen { .. } | WriterCommand::List { json: true, .. }
        )
    }
}

/// `writer keygen -o FILE`.
pub fn keygen(output: &Path) -> Result<()> {
    if output.exists() {
        bail!(
            "{} already exists; refusing to overwrite a writer key (choose another -o)",
            output.display()
        );
    }
    let key = WriterKey::generate();
    write_private(output, key.file_text().as_bytes())
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!(
        "wrote the writer key to {}; set encryption.writer_key_file to it, and have the owner run \
         `offsite writer add NAME KEY` with this key:",
        output.display()
    );
    println!("{}", key.public());
    Ok(())
}

pub async fn run(cfg: &Config, command: &WriterCommand) -> Result<()> {
    match command {
        WriterCommand::Keygen { output } => keygen(output),
        WriterCommand::List { target, json } => list(cfg, target.as_deref(), *json).await,
        WriterCommand::Add { name, key, target } => {
            let key: WriterPublic = key
                .parse()
                .map_err(|e| crate::usage::mistake(format!("{e}")))?;
            let (owner, opts) = (resolve::owner(cfg)?, resolve::admin_options(cfg));
            let targets = planned_v2_targets(cfg, target.as_deref()).await?;
            let outcomes = change_each(
                targets,
                &owner,
                &opts,
                false,
                async |repo| keyadmin::add_writer(repo, &owner, name, &key, &opts).await,
                |o| {
                    print_change(
                        o,
                        &format!("added writer {name}"),
                        &format!("{name} is already a writer with this key"),
                    )
                },
            )
            .await;
            all_done(&outcomes, "writer add")
        }
        WriterCommand::Remove {
            name,
            compromised_since,
            target,
        } => {
            let since = compromised_since
                .as_deref()
                .map(compromised_time)
                .transpose()?;
            let (owner, opts) = (resolve::owner(cfg)?, resolve::admin_options(cfg));
            let targets = planned_v2_targets(cfg, target.as_deref()).await?;
            let outcomes = change_each(
                targets,
                &owner,
                &opts,
                true,
                async |repo| keyadmin::remove_writer(repo, &owner, name, since, &opts).await,
                |o| {
                    print_change(
                        o,
                        &format!("removed writer {name}"),
                        &format!("writer {name} was removed before"),
                    )
                },
            )
            .await;
            print_remove_note(&outcomes);
            all_done(&outcomes, "writer remove")
        }
    }
}

/// `--compromised-since TIME`: RFC 3339, as the keyring records it.
fn compromised_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| {
            crate::usage::mistake(format!(
                "--compromised-since {text:?}: {e}; expected a time like 2026-12-01T10:00:00Z"
            ))
        })
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
            Ok(k) if as_json => {
                results.push(json!({"target": o.target, "ok": true, "writers": k.body.writers}))
            }
            Ok(k) => {
                println!("{}: keyring serial {}", o.target, k.serial());
                print_writers(&k.body);
            }
            Err(e) => print_target_failure(as_json, &mut results, &o.target, e),
        },
    )
    .await;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    all_done(&outcomes, "writer list")
}
