//! `offsite pin ID` and `offsite unpin ID`: keep a snapshot whatever the
//! retention policy says, or stop doing so. Snapshot ids differ per target
//! (each target gets its own backup), so the id is looked up in every
//! configured target, or the one named.

use anyhow::{bail, Context, Result};
use backup_core::lock::LockWait;
use backup_core::pins;
use backup_core::repo::{select, Repository, Selector};
use backup_core::Error;
use clap::Args;

use crate::commands::{chosen_targets, keys};
use crate::config::Config;
use crate::targets;

#[derive(Args)]
pub struct PinArgs {
    /// A snapshot id, or a unique prefix or suffix of one.
    pub id: String,
    /// Look in this target only [default: every target]
    #[arg(long)]
    pub target: Option<String>,
}

pub async fn pin(cfg: &Config, args: &PinArgs) -> Result<()> {
    // The pin record is metadata, encrypted to the recipients.
    let keys = keys(cfg).context("pin needs encryption.recipients")?;
    let ids = keys.metadata_identities();
    let mut found = false;
    for t in chosen_targets(cfg, args.target.as_deref())? {
        let repo = Repository::open(targets::open(t)?)
            .await
            .with_context(|| format!("target {:?}", t.name))?;
        let all = repo.snapshots(&ids).await?;
        let id = match select(&all, None, &Selector::Id(args.id.clone())) {
            Ok(m) => m.id.clone(),
            Err(Error::SnapshotNotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        found = true;
        if pins::pin(&repo, &keys, &id, LockWait::default()).await? {
            println!("pinned {id} on {}", t.name);
        } else {
            println!("{id} on {} was already pinned", t.name);
        }
    }
    if !found {
        return Err(Error::SnapshotNotFound(format!("id {}", args.id)).into());
    }
    Ok(())
}

pub async fn unpin(cfg: &Config, args: &PinArgs) -> Result<()> {
    // Pins are found by name, so unpinning needs no key at all.
    let mut found = false;
    for t in chosen_targets(cfg, args.target.as_deref())? {
        let repo = Repository::open(targets::open(t)?)
            .await
            .with_context(|| format!("target {:?}", t.name))?;
        let pinned = pins::pinned(&repo).await?;
        let hits: Vec<&String> = pinned
            .iter()
            .filter(|p| {
                **p == args.id || p.starts_with(args.id.as_str()) || p.ends_with(args.id.as_str())
            })
            .collect();
        match hits.as_slice() {
            [] => continue,
            [id] => {
                found = true;
                pins::unpin(&repo, id).await?;
                println!("unpinned {id} on {}", t.name);
            }
            many => bail!(
                "{} matches more than one pinned snapshot on {}: {}",
                args.id,
                t.name,
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    if !found {
        bail!(
            "no pinned snapshot matches {:?}; `offsite snapshots` marks pinned ones",
            args.id
        );
    }
    Ok(())
}
