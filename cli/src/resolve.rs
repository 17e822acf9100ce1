//! The configuration resolved into what the engine takes: keys and
//! identities, the chosen sources and targets, times given on the command
//! line. Every command resolves through here before it calls the engine;
//! nothing here runs an operation.

use std::path::Path;

use anyhow::{Context, Result};
use backup_core::keyadmin::{AdminOptions, Owner};
use backup_core::keyring::KeysetMemory;
use backup_core::keys::{Identities, Keys, MetadataKey, OwnerPublic, WriterKey};
use backup_core::keyset::Holding;
use backup_core::repo::Access;
use backup_core::source::SourceSpec;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::config::{Config, TargetConfig};
use crate::usage;

pub(crate) fn keys(cfg: &Config) -> Result<Keys> {
    Keys::from_recipients(&cfg.encryption.recipients).context("encryption.recipients")
}

pub(crate) fn identities(cfg: &Config, flag: Option<&Path>) -> Result<Identities> {
    let path = flag
        .map(Path::to_path_buf)
        .or_else(|| cfg.encryption.identity_file.clone())
        .ok_or_else(|| {
            usage::mistake(
                "restoring needs the age identity: pass --identity FILE or set encryption.identity_file",
            )
        })?;
    let pass = std::env::var("OFFSITE_IDENTITY_PASSPHRASE").ok();
    Ok(Identities::from_file(&path, pass.as_deref())?)
}

/// What reads manifests, lists and the index: the metadata key derived from
/// the recipients on a backup host, else (on a restore-only host) the
/// identity file's.
pub(crate) fn metadata_key(cfg: &Config) -> Result<MetadataKey> {
    if cfg.encryption.recipients.is_empty() {
        Ok(identities(cfg, None)?.metadata_key())
    } else {
        Ok(keys(cfg)?.metadata_key())
    }
}

/// [`metadata_key`] when this host configures recipients or an identity;
/// `None` on a format 2 host that holds only a writer key (whose key set
/// reads format 2 metadata; format 1 targets then fail).
pub(crate) fn metadata_key_if_any(cfg: &Config) -> Result<Option<MetadataKey>> {
    let configured =
        !cfg.encryption.recipients.is_empty() || cfg.encryption.identity_file.is_some();
    configured.then(|| metadata_key(cfg)).transpose()
}

/// One `age1...` recipient given on the command line or in the config.
pub(crate) fn recipient(text: &str) -> Result<age::x25519::Recipient> {
    text.trim().parse().map_err(|e: &str| {
        usage::mistake(format!(
            "{text:?} is not an age recipient ({e}); recipients look like age1..."
        ))
    })
}

/// `encryption.owner_key`, parsed (load validated it).
fn owner_pin(cfg: &Config) -> Result<Option<OwnerPublic>> {
    let pin = cfg
        .encryption
        .owner_key
        .as_deref()
        .map(str::parse)
        .transpose();
    pin.map_err(|e| usage::mistake(format!("encryption.owner_key: {e}")))
}

/// The owner, for key changes and `init`: the identity file's identity
/// whose owner key is the pin (when one is set), else its first.
pub(crate) fn owner(cfg: &Config) -> Result<Owner> {
    if cfg.encryption.identity_file.is_none() {
        return Err(usage::mistake(
            "key changes need the owner's age identity: set encryption.identity_file to it",
        ));
    }
    let ids = identities(cfg, None)?;
    Ok(Owner::from_identities(&ids, owner_pin(cfg)?.as_ref())?)
}

/// The owner key this host trusts: the pin, else derived from the owner
/// identity in the identity file.
pub(crate) fn trust(cfg: &Config) -> Result<OwnerPublic> {
    if let Some(pin) = owner_pin(cfg)? {
        return Ok(pin);
    }
    if cfg.encryption.identity_file.is_none() {
        return Err(usage::mistake(
            "format 2 repositories are checked against the owner key: set encryption.owner_key              (`offsite keygen` and `offsite init` print it where the owner identity is) or              encryption.identity_file",
        ));
    }
    Ok(owner(cfg)?.public())
}

/// What a format 2 repository is opened for: which of this host's secrets
/// it is opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Backups sign: the writer key when one is configured, else the
    /// identity (the owner's signs as the owner).
    Write,
    /// Restore, verify and drill read data: the identity (or `--identity`).
    Read,
    /// Status and pin list snapshots and write unsigned metadata (pins):
    /// they need a metadata key M, which the writer key (when one is
    /// configured) or the identity holds.
    List,
}

/// How this host opens format 2 repositories for `purpose`, or `None`
/// when the configuration gives no keys for it (a format 1 setup: a
/// format 2 target then fails with what to configure).
pub(crate) fn access(
    cfg: &Config,
    purpose: Purpose,
    identity: Option<&Path>,
) -> Result<Option<Access>> {
    let has_identity = identity.is_some() || cfg.encryption.identity_file.is_some();
    let holding = match (&cfg.encryption.writer_key_file, purpose) {
        (Some(path), Purpose::Write | Purpose::List) => {
            Holding::Writer(WriterKey::from_file(path)?)
        }
        _ if has_identity => Holding::Identities(identities(cfg, identity)?),
        _ => return Ok(None),
    };
    let trust =
        match (owner_pin(cfg)?, &holding) {
            (Some(pin), _) => pin,
            (None, Holding::Identities(ids)) => Owner::from_identities(ids, None)?.public(),
            (None, Holding::Writer(_)) => return Err(usage::mistake(
                "a backup host with encryption.writer_key_file also needs encryption.owner_key \
                 (the owner key `offsite init` printed; check it with the owner before pinning it)",
            )),
        };
    Ok(Some(Access {
        trust,
        holding,
        memory: crate::state::dir(cfg).map(|d| KeysetMemory::at(&d)),
    }))
}

/// How key commands run on this host: its key set memory (in the state
/// directory) and the default lock wait.
pub(crate) fn admin_options(cfg: &Config) -> AdminOptions {
    AdminOptions {
        memory: crate::state::dir(cfg).map(|d| KeysetMemory::at(&d)),
        ..AdminOptions::default()
    }
}

pub(crate) fn chosen_targets<'a>(
    cfg: &'a Config,
    name: Option<&str>,
) -> Result<Vec<&'a TargetConfig>> {
    if cfg.targets.is_empty() {
        return Err(usage::mistake(
            "no [[targets]] in the config: add at least one (kind = \"local\" with a path is the simplest)",
        ));
    }
    match name {
        None => Ok(cfg.targets.iter().collect()),
        Some(n) => {
            let t = cfg.targets.iter().find(|t| t.name == n).ok_or_else(|| {
                usage::mistake(format!(
                    "no target named {n:?} (targets: {})",
                    cfg.targets
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            Ok(vec![t])
        }
    }
}

pub(crate) fn source_specs(cfg: &Config, name: Option<&str>) -> Result<Vec<SourceSpec>> {
    if cfg.sources.is_empty() {
        return Err(usage::mistake(
            "no [[sources]] in the config: add one with name, kind (\"sqlite\", \"duckdb\" or \"files\") and path",
        ));
    }
    let chosen: Vec<_> = match name {
        Some(n) => vec![cfg.source(n)?],
        None => cfg.sources.iter().collect(),
    };
    Ok(chosen
        .into_iter()
        .map(|s| SourceSpec {
            name: s.name.clone(),
            kind: s.kind,
            path: s.path.clone(),
        })
        .collect())
}

pub fn parse_time(s: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(23, 59, 59))
    });
    match naive.and_then(|n| Local.from_local_datetime(&n).earliest()) {
        Some(t) => Ok(t.with_timezone(&Utc)),
        None => Err(usage::mistake(format!(
            "--at {s:?}: expected a time like 2026-11-20T03:00:00Z, \"2026-11-20 03:00\" or 2026-11-20"
        ))),
    }
}
