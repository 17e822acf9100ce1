//! Errors as the binary prints them: the chain (each cause once), a hint for
//! the engine's errors that have one, and the exit code by the error's type
//! ([`crate::usage`]).

use std::process::ExitCode;

use backup_core::storage::ErrorKind;
use backup_core::Error;

use crate::usage;

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
        Error::FormatNotSupportedYet { .. } => "this operation reads format 1 repositories only; `offsite snapshots` and `offsite restore` read both formats".into(),
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
        Error::PruneBlocked { .. } => "nothing was deleted; `offsite verify` shows which snapshots are damaged".into(),
        Error::NotFormat1 { .. } => "name the format 1 target with --from (`offsite targets check` and `offsite snapshots` show what each target holds)".into(),
        Error::NotFormat2 { .. } => "key and writer commands need a format 2 repository: move this one to format 2 with `offsite migrate --from TARGET --to NEW`, or create one on an empty target with `offsite init --target NAME` (or a backup where the owner identity is)".into(),
        Error::Untrusted { .. } => "offsite uses only snapshots signed by the repository's owner or a writer it authorised, and wrote nothing: choose another snapshot (`offsite snapshots` shows who signed each), and check who can write to this target".into(),
        Error::NoFormat2Keys { .. } => "`offsite keygen` and `offsite init` print the owner key where the owner identity is; a backup host gets a writer key with `offsite writer keygen`, which the owner adds with `offsite writer add`".into(),
        Error::NoOwnerToCreate { .. } => "create it where the owner identity is (`offsite init --target NAME`), then give this host a writer key: `offsite writer keygen -o FILE` here and `offsite writer add NAME offsite-writer1...` there, and set encryption.writer_key_file and encryption.owner_key here; or set format = 1 on the target for an unsigned format 1 repository".into(),
        Error::CreationWaits { .. } => "run the backup again when that target can be read (`offsite targets check`); the other targets were backed up".into(),
        Error::UnsignedFormat1 { .. } => "pass --allow-unsigned (or set allow_unsigned = true on the target) to use it anyway, or move it to format 2 with `offsite migrate --from TARGET --to NEW`; nothing was changed".into(),
        // Design, open question 3: no holder kind gets M alone yet.
        Error::NoMetadataKey { .. } => "a monitoring host can hold a writer key of its own: `offsite writer keygen -o FILE` there, then `offsite writer add NAME offsite-writer1...` where the owner identity is (a writer key can also sign backups)".into(),
        Error::Replication(_) => "check the targets (`offsite targets check`); replication tries again on its own while it runs".into(),
        Error::Keyring(k) => return keyring_hint(k),
        Error::Io { .. } | Error::NotPinned(_) => return None,
    })
}

fn keyring_hint(e: &backup_core::keyring::KeyringError) -> Option<String> {
    use backup_core::keyring::KeyringError as K;
    Some(match e {
        K::NoneTrusted { .. } => "this host trusts the owner key in encryption.owner_key, or without it the one derived from the identity: restoring with an identity that is not the owner's needs encryption.owner_key set to the repository's owner key (`offsite init` printed it; `offsite keygen` prints it where the owner identity is). If that is right, someone with write access to the target may have changed it: nothing was changed here".into(),
        K::RolledBack { .. } => "if this target could not be reached during a key change (key or writer add or remove), run that command again: it brings the target level with the others of its key set. Otherwise someone with write access may have changed it: nothing was changed here; check the target's contents and who can write to it, or use another target".into(),
        K::ForgedBundle { .. } | K::Squatted { .. } => {
            "someone with write access to the target may have changed it: nothing was changed here; check the target's contents and who can write to it, or use another target".into()
        }
        K::Contended { .. } => "another admin changed the keys at the same time: run the command again".into(),
        _ => return None,
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
