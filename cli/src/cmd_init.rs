//! `offsite init [--target NAME]`: a format 2 repository on every chosen,
//! empty target, with one new key set owned by the configured identity.
//! A backup to an empty target does the same where the owner's identity
//! is ([`creating_owner`]). The work is `backup_core::repo::init`'s.

use anyhow::{Context, Result};
use backup_core::keyadmin::Owner;
use backup_core::keys::KeysetId;
use backup_core::keyset::Holding;
use backup_core::repo::init::{init, NamedRecipient};
use backup_core::repo::Access;

use crate::config::{Config, TargetConfig};
use crate::resolve;
use crate::targets;

pub async fn run(cfg: &Config, target: Option<&str>) -> Result<()> {
    let owner = resolve::owner(cfg)?;
    let chosen = resolve::chosen_targets(cfg, target)?;
    let keyset = create(cfg, &owner, &chosen).await?;
    let names: Vec<&str> = chosen.iter().map(|t| t.name.as_str()).collect();
    println!(
        "created a format 2 repository of key set {keyset} on {}",
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
    let recipients = named_recipients(cfg)?;
    let mut storages = Vec::new();
    for t in chosen {
        storages.push(targets::open(t).with_context(|| format!("target {:?}", t.name))?);
    }
    let memory = resolve::admin_options(cfg).memory;
    Ok(init(&storages, owner, &recipients, memory.as_ref()).await?)
}

/// `encryption.recipients` as init gives them bundles: `recipient-N`.
pub(crate) fn named_recipients(cfg: &Config) -> Result<Vec<NamedRecipient>> {
    let mut recipients = Vec::new();
    for (i, r) in cfg.encryption.recipients.iter().enumerate() {
        recipients.push(NamedRecipient {
            name: format!("recipient-{}", i + 1),
            recipient: resolve::recipient(r).context("encryption.recipients")?,
        });
    }
    Ok(recipients)
}

/// The owner a backup creates a format 2 repository as, on an empty
/// target: the one `access` trusts, when it holds that owner's identity
/// (a host with a writer key signs as that writer, which a new keyring
/// does not name, so it cannot create one).
pub(crate) fn creating_owner(access: Option<&Access>) -> Option<Owner> {
    let access = access?;
    match &access.holding {
        Holding::Identities(ids) => Owner::from_identities(ids, Some(&access.trust)).ok(),
        Holding::Writer(_) => None,
    }
}
