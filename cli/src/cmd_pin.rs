//! `offsite pin ID` and `offsite unpin ID`: keep a snapshot whatever the
//! retention policy says, or stop doing so. A backup run stores one
//! snapshot (one id) on every target, so the id is pinned on every
//! configured target that holds it, or on the one named; a target that cannot be read is
//! passed over with a warning (see `backup_core::across`).

use anyhow::{Context, Result};
use backup_core::across::{self, Pins};
use backup_core::error::chain_text;
use clap::Args;

use crate::cmd_snapshots::warn_passed_over;
use crate::config::Config;
use crate::per_target::planned_targets;
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
    let targets = planned_targets(cfg, args.target.as_deref()).await?;
    let found = across::list(&targets, &keys.metadata_key(), Pins::Skip).await?;
    warn_passed_over(&found);
    for p in across::pin(&found.listings, &keys, &args.id).await? {
        if p.changed {
            println!("pinned {} on {}", p.id, p.target);
        } else {
            println!("{} on {} was already pinned", p.id, p.target);
        }
    }
    Ok(())
}

pub async fn unpin(cfg: &Config, args: &PinArgs) -> Result<()> {
    let targets = planned_targets(cfg, args.target.as_deref()).await?;
    let mut passed_over = Vec::new();
    let done = across::unpin(&targets, &args.id, &mut passed_over).await;
    for e in &passed_over {
        eprintln!("warning: {}; its pins are not included", chain_text(&**e));
    }
    for p in done? {
        println!("unpinned {} on {}", p.id, p.target);
    }
    Ok(())
}
