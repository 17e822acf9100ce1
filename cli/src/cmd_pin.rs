//! `offsite pin ID` and `offsite unpin ID`: keep a snapshot whatever the
//! retention policy says, or stop doing so. A backup run stores one
//! snapshot (one id) on every target, so the id is pinned on every
//! configured target that holds it, or on the one named; a target that cannot be read is
//! passed over with a warning (see `backup_core::across`). Format 1 pins
//! are written with the recipients; format 2 targets are opened with the
//! writer key or the identity (their snapshot list needs a metadata key)
//! and only signed snapshots are pinned.

use anyhow::Result;
use backup_core::across::{self, Pins};
use backup_core::error::chain_text;
use backup_core::keys::MetadataKey;
use clap::Args;

use crate::cmd_snapshots::warn_passed_over;
use crate::config::Config;
use crate::per_target::planned_listing_targets;
use crate::resolve::{keys, metadata_key_if_any};

#[derive(Args)]
pub struct PinArgs {
    /// A snapshot id, or a unique prefix or suffix of one.
    pub id: String,
    /// Look in this target only [default: every target]
    #[arg(long)]
    pub target: Option<String>,
}

pub async fn pin(cfg: &Config, args: &PinArgs) -> Result<()> {
    // A format 1 pin record is metadata, encrypted to the recipients; a
    // format 2 one goes to the key set's metadata key.
    let recipients = !cfg.encryption.recipients.is_empty();
    let keys = recipients.then(|| keys(cfg)).transpose()?;
    // A host with only a writer key reads format 2 listings with its key
    // set; no format 1 manifest opens with this empty key.
    let ids = metadata_key_if_any(cfg)?
        .unwrap_or_else(|| MetadataKey::from_x25519(Vec::new(), "no recipients or identity"));
    let targets = planned_listing_targets(cfg, args.target.as_deref()).await?;
    let found = across::list(&targets, &ids, Pins::Skip).await?;
    warn_passed_over(&found);
    for p in across::pin(&found.listings, keys.as_ref(), &args.id).await? {
        if p.changed {
            println!("pinned {} on {}", p.id, p.target);
        } else {
            println!("{} on {} was already pinned", p.id, p.target);
        }
    }
    Ok(())
}

pub async fn unpin(cfg: &Config, args: &PinArgs) -> Result<()> {
    let targets = planned_listing_targets(cfg, args.target.as_deref()).await?;
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
