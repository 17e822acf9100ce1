//! `offsite pin ID` and `offsite unpin ID`: keep a snapshot whatever the
//! retention policy says, or stop doing so. Snapshot ids differ per target
//! (each target gets its own backup), so the id is looked up in every
//! configured target, or the one named; a target that cannot be read is
//! passed over with a warning (see across.rs).

use anyhow::{bail, Context, Result};
use backup_core::lock::LockWait;
use backup_core::repo::{select, Selector};
use backup_core::Error;
use clap::Args;

use crate::across;
use crate::config::Config;
use crate::resolve::keys;

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
    let ids = keys.metadata_key();
    let mut found = false;
    for l in across::read(cfg, args.target.as_deref(), &ids).await? {
        let id = match select(&l.snapshots, None, &Selector::Id(args.id.clone())) {
            Ok(m) => m.id.clone(),
            Err(Error::SnapshotNotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        found = true;
        if l.repo.pin(&keys, &id, LockWait::default()).await? {
            println!("pinned {id} on {}", l.target);
        } else {
            println!("{id} on {} was already pinned", l.target);
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
    for (target, repo) in across::open(cfg, args.target.as_deref()).await? {
        let pinned = repo
            .pinned()
            .await
            .with_context(|| format!("target {target:?}"))?;
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
                repo.unpin(id).await?;
                println!("unpinned {id} on {target}");
            }
            many => bail!(
                "{} matches more than one pinned snapshot on {}: {}",
                args.id,
                target,
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
