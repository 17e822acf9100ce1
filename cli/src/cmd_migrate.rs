//! `offsite migrate --to TARGET [--from TARGET] [--latest-only]`
//! (docs/design/format-v2.md, 6.2): the format 1 repository on `--from`
//! (by default the one configured target that holds format 1) copied into
//! the format 2 repository on `--to`, made there first with `offsite
//! init`'s code when the target is empty. Needs the owner identity. The
//! work, and what a failure at any step leaves, is
//! `backup_core::migrate`'s; here the targets are chosen and each
//! snapshot's outcome printed.
//!
//! Never: migrate onto a target that is neither empty nor a format 2
//! repository of this owner, or say a snapshot was migrated that was not.

use anyhow::{anyhow, Context, Result};
use backup_core::backup::BackupOptions;
use backup_core::keyset::Holding;
use backup_core::migrate::{migrate, MigrateOptions, Migrated, SnapshotOutcome};
use backup_core::repo::{Access, Repository};
use backup_core::Error;
use clap::Args;

use crate::config::{Config, TargetConfig};
use crate::output::bytes;
use crate::resolve;
use crate::targets;
use crate::usage;

#[derive(Args)]
pub struct MigrateArgs {
    /// The target to migrate to: empty (a format 2 repository is made
    /// there) or a format 2 repository of this owner made by `offsite init`.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    /// The format 1 target to migrate from [default: the one configured
    /// target that holds a format 1 repository].
    #[arg(long, value_name = "TARGET")]
    pub from: Option<String>,
    /// Migrate only the newest snapshot of each source (older ones stay on
    /// the old target).
    #[arg(long)]
    pub latest_only: bool,
}

pub async fn run(cfg: &Config, args: &MigrateArgs) -> Result<()> {
    if cfg.encryption.identity_file.is_none() {
        return Err(usage::mistake(
            "migrate needs the owner's age identity (it reads the format 1 data and signs \
             every snapshot as the owner): set encryption.identity_file to it",
        ));
    }
    let owner = resolve::owner(cfg)?;
    let ids = resolve::identities(cfg, None)?;
    let to = resolve::chosen_targets(cfg, Some(args.to.as_str()))?[0];
    let from = from_target(cfg, args.from.as_deref(), to).await?;
    let access = Access {
        trust: owner.public(),
        holding: Holding::Identities(ids.clone()),
        memory: resolve::admin_options(cfg).memory,
    };
    let new = open_new(cfg, &owner, to, &access).await?;
    let opts = MigrateOptions {
        latest_only: args.latest_only,
        backup: BackupOptions {
            pack_size: cfg.backup.pack_size_mib << 20,
            compression_level: cfg.backup.compression_level,
            upload_concurrency: cfg.backup.upload_concurrency,
            ..Default::default()
        },
        ..Default::default()
    };
    let old = targets::open(from).with_context(|| format!("target {:?}", from.name))?;
    let report = migrate(old, &ids, &new, &opts, &print)
        .await
        .with_context(|| format!("migrating target {:?} to {:?}", from.name, to.name))?;
    let count =
        |f: fn(&Migrated) -> bool| report.snapshots.iter().filter(|s| f(&s.migrated)).count();
    let skipped = count(|m| matches!(m, Migrated::Skipped { .. }));
    println!(
        "{} to {}: {} snapshots migrated, {} already there, {skipped} skipped; {} pins carried over",
        from.name,
        to.name,
        count(|m| matches!(m, Migrated::Copied(_))),
        count(|m| matches!(m, Migrated::Present)),
        report.pins
    );
    if skipped > 0 {
        return Err(anyhow!(
            "{skipped} snapshots failed their checks on {} and were not migrated (named above); \
             they are still on {}, unchanged",
            from.name,
            from.name
        ));
    }
    Ok(())
}

/// `--from`, or the one configured target other than `to` that holds a
/// format 1 repository.
async fn from_target<'a>(
    cfg: &'a Config,
    from: Option<&str>,
    to: &TargetConfig,
) -> Result<&'a TargetConfig> {
    if let Some(name) = from {
        let from = resolve::chosen_targets(cfg, Some(name))?[0];
        if from.name == to.name {
            return Err(usage::mistake("--from and --to name the same target"));
        }
        return Ok(from);
    }
    let mut format_1 = Vec::new();
    for t in cfg.targets.iter().filter(|t| t.name != to.name) {
        let Ok(storage) = targets::open(t) else {
            continue;
        };
        if Repository::open(storage).await.is_ok() {
            format_1.push(t);
        }
    }
    match format_1.as_slice() {
        [one] => Ok(*one),
        [] => Err(usage::mistake(format!(
            "no configured target other than {:?} holds a format 1 repository: name one with --from",
            to.name
        ))),
        _ => Err(usage::mistake(format!(
            "several targets hold format 1 repositories ({}): choose one with --from",
            format_1.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The format 2 repository on `to`, opened with the owner's keys; made
/// first (as `offsite init` makes one) when the target holds nothing.
async fn open_new(
    cfg: &Config,
    owner: &backup_core::keyadmin::Owner,
    to: &TargetConfig,
    access: &Access,
) -> Result<Repository> {
    let open = || async move {
        let storage = targets::open(to).with_context(|| format!("target {:?}", to.name))?;
        anyhow::Ok(Repository::open_with(storage, Some(access)).await)
    };
    let repo = match open().await? {
        Err(Error::NotARepository { .. }) => {
            let keyset = crate::cmd_init::create(cfg, owner, &[to]).await?;
            println!(
                "created a format 2 repository of key set {keyset} on {}; owner key: {}",
                to.name,
                owner.public()
            );
            open().await?
        }
        other => other,
    }
    .with_context(|| format!("target {:?}", to.name))?;
    if repo.keyset().is_none() {
        return Err(usage::mistake(format!(
            "target {:?} holds a format 1 repository: --to takes an empty target or a format 2 \
             repository made by `offsite init`",
            to.name
        )));
    }
    Ok(repo)
}

/// One line per snapshot, as it is done.
fn print(s: &SnapshotOutcome) {
    match &s.migrated {
        Migrated::Copied(m) => {
            let list = match &m.parent {
                Some(p) => format!("delta from {p}"),
                None => "full list".into(),
            };
            println!(
                "{} ({}): migrated, signed by the owner; {list}; {} new, {} uploaded",
                s.id,
                s.source,
                bytes(m.new_bytes),
                bytes(m.uploaded_bytes)
            );
        }
        Migrated::Present => println!("{} ({}): already migrated", s.id, s.source),
        Migrated::Skipped { reason } => {
            eprintln!("{} ({}): SKIPPED, not migrated: {reason}", s.id, s.source)
        }
    }
}
