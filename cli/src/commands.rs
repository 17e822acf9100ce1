//! What the commands share (keys and identities from the config, the chosen
//! sources and targets, the JSON form of a snapshot, time parsing, errors
//! printed with a hint and their exit code), and the small commands that
//! need no file of their own: keygen, snapshots, targets check.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use backup_core::keys::{generate_identity, Identities, Keys, MetadataKey};
use backup_core::repo::Manifest;
use backup_core::source::SourceSpec;
use backup_core::storage::ErrorKind;
use backup_core::Error;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde_json::json;

use crate::across;
use crate::config::{Config, TargetConfig};
use crate::output;
use crate::{targets, usage};

pub fn keygen(output: Option<&Path>) -> Result<()> {
    let (secret, recipient) = generate_identity();
    match output {
        Some(path) => {
            if path.exists() {
                bail!(
                    "{} already exists; refusing to overwrite an identity (choose another -o)",
                    path.display()
                );
            }
            write_private(path, secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote the identity to {}", path.display());
        }
        None => {
            print!("{secret}");
            // Here the output is the product: a secret nobody read is no identity.
            if output::stdout_closed() {
                bail!("the identity could not be written to stdout, so none was kept; run again, or use -o FILE");
            }
        }
    }
    eprintln!(
        "Keep a copy of the identity somewhere other than the backed-up server (a password \
         manager, a printed copy): without it no backup can be restored.\n\
         Put the recipient in encryption.recipients on backup hosts:"
    );
    println!("{recipient}");
    Ok(())
}

/// Writes a file readable only by its owner, failing if it exists.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

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

pub(crate) fn snapshot_json(m: &Manifest, target: &str) -> serde_json::Value {
    json!({
        "id": m.id,
        "source": m.source,
        "kind": m.kind,
        "host": m.host,
        "target": target,
        "started": m.started,
        "time": m.finished,
        "size": m.size,
        "files": m.files,
        "chunks": m.chunks,
        "new_bytes": m.new_bytes,
        "uploaded_bytes": m.uploaded_bytes,
        "sha256": m.sha256,
        "tags": m.tags,
    })
}

pub async fn snapshots(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    as_json: bool,
) -> Result<()> {
    if let Some(s) = source {
        cfg.source(s)?;
    }
    let ids = metadata_key(cfg)?;
    let listings = across::read(cfg, target, &ids).await?;
    let list = across::grouped(&listings, source);
    if as_json {
        let v: Vec<_> = list
            .iter()
            .map(|(held, m)| {
                let mut v = snapshot_json(m, &held[0].target);
                v["targets"] = json!(held.iter().map(|l| &l.target).collect::<Vec<_>>());
                v["pinned"] = json!(held.iter().any(|l| l.pinned.contains(&m.id)));
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if list.is_empty() {
        let names: Vec<String> = listings.iter().map(|l| format!("{:?}", l.target)).collect();
        println!(
            "no snapshots in target{} {}{}",
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            source
                .map(|s| format!(" for source {s:?}"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let width = list
        .iter()
        .map(|(held, _)| held_by(held).len())
        .max()
        .unwrap_or(0)
        .max(12);
    println!(
        "{:<26} {:<12} {:<width$} {:<25} {:>10} {:>10}  tags",
        "ID", "SOURCE", "TARGETS", "TIME", "SIZE", "NEW"
    );
    for (held, m) in list {
        println!(
            "{:<26} {:<12} {:<width$} {:<25} {:>10} {:>10}  {}",
            m.id,
            m.source,
            held_by(&held),
            m.finished
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %z"),
            output::bytes(m.size),
            output::bytes(m.new_bytes),
            m.tags
                .iter()
                .map(String::as_str)
                .chain(
                    held.iter()
                        .any(|l| l.pinned.contains(&m.id))
                        .then_some("(pinned)")
                )
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}

/// "local,s3": the targets holding a snapshot.
fn held_by(held: &[&across::Listing]) -> String {
    held.iter()
        .map(|l| l.target.as_str())
        .collect::<Vec<_>>()
        .join(",")
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

pub async fn targets_check(cfg: &Config, target: Option<&str>, as_json: bool) -> Result<()> {
    let mut probes = Vec::new();
    for t in chosen_targets(cfg, target)? {
        probes.push(targets::probe(t).await);
    }
    if as_json {
        let v: Vec<_> = probes
            .iter()
            .map(|p| {
                let steps: serde_json::Map<String, serde_json::Value> = p
                    .steps
                    .iter()
                    .map(|(s, r)| (s.to_string(), json!(r.as_ref().err().map_or("ok".to_string(), |e| e.clone()))))
                    .collect();
                json!({"target": p.target, "location": p.describe, "backup_ok": p.usable_for_backup(), "steps": steps})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in &probes {
            let steps: Vec<String> = p
                .steps
                .iter()
                .map(|(s, r)| match r {
                    Ok(()) => format!("{s} ok"),
                    Err(e) => format!("{s} FAILED ({e})"),
                })
                .collect();
            let verdict = if p.usable_for_backup() {
                if p.steps.iter().all(|(_, r)| r.is_ok()) {
                    "ok"
                } else {
                    "ok for backup (prune needs delete)"
                }
            } else {
                "NOT USABLE"
            };
            println!(
                "{} {}: {verdict}: {}",
                p.target,
                p.describe,
                steps.join(", ")
            );
        }
    }
    let bad = probes.iter().filter(|p| !p.usable_for_backup()).count();
    if bad > 0 {
        bail!("{bad} target(s) cannot be used for backups; check their credentials, bucket/path and permissions");
    }
    Ok(())
}

/// Prints an error as one line plus a hint, and picks the exit code by the
/// error's type (see [`usage`]): 2 for configuration and usage mistakes, 1
/// for everything else.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    if let Some(h) = hint(e) {
        eprintln!("hint: {h}");
    }
    ExitCode::from(usage::exit_code(e))
}

const FULL_HINT: &str = "make room on the target (free disk space, raise its quota or storage cap, or prune old snapshots), then run again: nothing needs repairing, earlier snapshots are intact, and what this run stored is reused";

pub(crate) fn hint(e: &anyhow::Error) -> Option<String> {
    hint_in(e.as_ref())
}

/// The hint for the first engine [`Error`] among `e` and its causes.
pub(crate) fn hint_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let core =
        std::iter::successors(Some(e), |c| c.source()).find_map(|c| c.downcast_ref::<Error>())?;
    Some(match core {
        Error::WrongIdentity { .. } => {
            "this needs the identity whose public key was in encryption.recipients when the backup was made; pass --identity FILE".into()
        }
        Error::Corrupt { .. } | Error::Verification(_) => {
            "the stored copy is damaged; restore from another target (--target) or an older snapshot (--snapshot); nothing at the destination was changed".into()
        }
        Error::NotSqlite(_) => "check that the source path names the database file itself, or use kind = \"files\" for other data".into(),
        Error::Busy { .. } => "DuckDB allows a backup only while no process has the database open for writing: raise this source's lock_timeout, or stop the writer around the backup with the source's before/after hooks (e.g. before = \"docker stop app\", after = \"docker start app\")".into(),
        // A static (musl) offsite has no dynamic loader to load the library with.
        Error::DuckdbUnavailable(_) if cfg!(target_feature = "crt-static") => "this offsite is statically linked and cannot load libduckdb.so: restore with --no-database-check (the SHA-256 is still verified), or use a dynamically linked offsite (see README, Install); nothing at the destination was changed".into(),
        Error::DuckdbUnavailable(_) => "install libduckdb.so (DuckDB's libduckdb-linux-amd64.zip, or package/libduckdb.so from the npm package @duckdb/node-bindings-linux-x64) where the loader finds it, or set OFFSITE_LIBDUCKDB=/path/to/libduckdb.so; nothing at the destination was changed".into(),
        Error::RecipientMismatch { .. } => {
            "this repository was created with other recipients: restore the original encryption.recipients, or point the target at an empty directory or prefix".into()
        }
        Error::TargetExists(_) => {
            "pass --force to replace it (the existing file and its -wal/-shm are moved aside, not deleted), or choose another --to".into()
        }
        Error::SnapshotNotFound(_) | Error::AmbiguousSnapshot(..) => "list the snapshots with `offsite snapshots --source NAME`".into(),
        Error::NotARepository { .. } => "point the target at an empty directory or prefix, or at an existing offsite repository".into(),
        Error::UnsupportedVersion { .. } => "upgrade offsite to a version that reads this repository".into(),
        Error::Key(_) => "recipients look like age1...; identity files hold AGE-SECRET-KEY-1... lines (create one with `offsite keygen -o FILE`)".into(),
        Error::TargetFull { .. } => FULL_HINT.into(),
        Error::ShortWrite { .. } => "the target took less than it was sent without reporting an error: check its disk or service (`offsite targets check`) and run again; nothing refers to the incomplete object, and earlier snapshots are intact".into(),
        Error::Storage { cause: source, .. } => match source.kind {
            ErrorKind::Full => FULL_HINT.into(),
            ErrorKind::PermissionDenied => "check the target's credentials and permissions (`offsite targets check`)".into(),
            ErrorKind::NotFound => "check the target's path, bucket and prefix".into(),
            ErrorKind::Transient => "the target is unreachable or overloaded; run again later (uploaded data is reused)".into(),
            _ => return None,
        },
        Error::Source { .. } => "check the source path and that this user can read it".into(),
        Error::Locked { .. } => "another offsite run is using the repository: try again when it has finished. If that run was killed, its lock goes stale (process gone on this host, or 30 minutes without a refresh) and is removed automatically; `offsite unlock --all` removes every lock at once".into(),
        Error::InUse { .. } => "stop the app first, or set a before_restore hook on the source (and after_restore to start it again), e.g. before_restore = \"systemctl stop app\"; nothing was changed".into(),
        Error::UnsafeEntry { .. } => "offsite never writes outside the destination or through a symlink, so it refused this snapshot's file list and wrote nothing outside the destination. Anyone holding the recipients can write a list: restore from another target (--target) or an older snapshot, and check who can write to this target".into(),
        Error::DuckdbVersion { .. } => "install a libduckdb at least as new as the DuckDB that wrote the database (set OFFSITE_LIBDUCKDB=/path/to/libduckdb.so), or restore without this check with --no-database-check (the SHA-256 of the data is still verified); nothing at the destination was changed".into(),
        Error::CannotReplace { .. } => "nothing at the destination was changed: fix the cause and run the restore again, or restore to another path with --to".into(),
        Error::Io { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use backup_core::storage::{ErrorKind, StorageError};
    use backup_core::Error;

    /// An error chain as the binary prints it (`{:#}`) says each cause once.
    #[test]
    fn a_storage_or_io_failure_is_printed_with_its_cause_once() {
        let storage = anyhow::Error::from(Error::Storage {
            target: "s3 bucket/prefix".into(),
            cause: StorageError::new(ErrorKind::Transient, "packs/ab", "connection reset"),
        })
        .context("target \"s3\"");
        let text = format!("{storage:#}");
        assert_eq!(text.matches("connection reset").count(), 1, "{text}");
        assert!(text.contains("s3 bucket/prefix"), "{text}");
        let io = anyhow::Error::from(Error::Io {
            context: "chunk list".into(),
            cause: std::io::Error::other("disk quota exceeded"),
        });
        let text = format!("{io:#}");
        assert_eq!(text.matches("disk quota exceeded").count(), 1, "{text}");
    }
}
