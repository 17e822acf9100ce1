//! `offsite init [--target NAME]`: a format 2 repository (in development:
//! backups still create and use format 1 until part E of
//! docs/design/format-v2.md) on every chosen, empty target, with one new
//! key set owned by the configured identity. The work is
//! `backup_core::repo::init`'s.

use anyhow::{Context, Result};
use backup_core::keyadmin::Owner;
use backup_core::keys::KeysetId;
use backup_core::repo::init::{init, NamedRecipient};

use crate::config::{Config, TargetConfig};
use crate::resolve;
use crate::targets;

pub async fn run(cfg: &Config, target: Option<&str>) -> Result<()> {
    let owner = resolve::owner(cfg)?;
    let chosen = resolve::chosen_targets(cfg, target)?;
    let keyset = create(cfg, &owner, &chosen).await?;
    let names: Vec<&str> = chosen.iter().map(|t| t.name.as_str()).collect();
    println!(
        "created a format 2 repository (in development) of key set {keyset} on {}",
        names.join(", ")
    );
    println!(
        "owner key, for encryption.owner_key on other hosts: {}",
        owner.public()
    );
    Ok(())
}

/// Makes each of `chosen` (empty targets) a format 2 repository of one new
/// key set owned by `owner`, with bundles for `encryption.recipients`.
pub(crate) async fn create(
    cfg: &Config,
    owner: &Owner,
    chosen: &[&TargetConfig],
) -> Result<KeysetId> {
    let mut recipients = Vec::new();
    for (i, r) in cfg.encryption.recipients.iter().enumerate() {
        recipients.push(NamedRecipient {
            name: format!("recipient-{}", i + 1),
            recipient: resolve::recipient(r).context("encryption.recipients")?,
        });
    }
    let mut storages = Vec::new();
    for t in chosen {
        storages.push(targets::open(t).with_context(|| format!("target {:?}", t.name))?);
    }
    let memory = resolve::admin_options(cfg).memory;
    Ok(init(&storages, owner, &recipients, memory.as_ref()).await?)
}
