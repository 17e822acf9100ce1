//! The engine's error type. Each variant names what went wrong in terms a user
//! can act on; the binary adds the hint of what to do next.

use std::path::PathBuf;

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message carries the cause; it is not also a `source()`, so that
    /// a printed error chain says it once.
    #[error("{target}: {cause}")]
    Storage { target: String, cause: StorageError },
    /// The target has no room left. `free` is what it has left where it can
    /// tell (a local filesystem), `needed` what the failed operation would
    /// have stored in all, where it can estimate it (a backup).
    #[error("target {target} is full: {}", full_detail(*free, *needed))]
    TargetFull {
        target: String,
        free: Option<u64>,
        needed: Option<u64>,
        #[source]
        source: Box<StorageError>,
    },
    /// The target stored another number of bytes than it was sent, without
    /// saying so itself.
    #[error(
        "{target} stored {stored} of the {expected} bytes sent for {key}{}",
        if *removed { "; the incomplete object was removed" } else { "" }
    )]
    ShortWrite {
        target: String,
        key: String,
        stored: u64,
        expected: u64,
        removed: bool,
    },
    #[error("{path}: {message}")]
    Source { path: PathBuf, message: String },
    #[error("{0} is not a SQLite database")]
    NotSqlite(PathBuf),
    #[error("{path}: a DuckDB process still has the database open for writing after waiting {}", humantime::format_duration(*waited))]
    Busy {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("cannot load DuckDB (libduckdb) to check the database: {0}")]
    DuckdbUnavailable(String),
    #[error("invalid key: {0}")]
    Key(String),
    #[error("cannot decrypt {key}: none of the given identities matches its recipients")]
    WrongIdentity { key: String },
    #[error("corrupt object {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("{target} is not an offsite repository ({message})")]
    NotARepository { target: String, message: String },
    #[error(
        "repository {target} uses format version {found}; this offsite reads version {supported}"
    )]
    UnsupportedVersion {
        target: String,
        found: u32,
        supported: u32,
    },
    /// A format this build parses but cannot operate on yet (format 2,
    /// while it is in development).
    #[error("repository {target} uses format version {version}: format {version} repositories are not supported by this build yet")]
    FormatNotSupportedYet { target: String, version: u32 },
    /// Key administration on a format 1 repository, which has no keyring.
    #[error("{target} holds a format 1 repository, which has no keyring: key and writer commands work on format 2 repositories, made by `offsite init`")]
    NotFormat2 { target: String },
    #[error("{target} does not hold a format 1 repository: migrate moves a format 1 repository to format 2")]
    NotFormat1 { target: String },
    #[error(
        "{target} holds a format 2 repository, which this host cannot open without its keys: \
         set encryption.owner_key (or encryption.identity_file to the owner's identity), and \
         encryption.writer_key_file to back up or encryption.identity_file to restore"
    )]
    NoFormat2Keys { target: String },
    /// A backup to an empty target on a host that cannot create a format 2
    /// repository: that takes the owner's identity, which signs the first
    /// keyring (design 2.5).
    #[error(
        "{target} holds no repository yet, and this host cannot create one: a format 2 \
         repository is created by its owner, whose identity this host does not hold"
    )]
    NoOwnerToCreate { target: String },
    /// A backup did not create a repository on the empty `target` because
    /// `other`, which may hold the key set it must join, could not be read
    /// (a new key set there would split the targets for good).
    #[error(
        "{target} holds no repository yet, and it is not created while {other} cannot be \
         read: a new repository joins the key set of the other targets"
    )]
    CreationWaits { target: String, other: String },
    /// A restore, verify or drill of a format 1 repository, whose snapshots
    /// nobody signed, without the override (design 3.5).
    #[error(
        "{target} holds a format 1 repository, whose snapshots are not signed: anyone with \
         write access to it could have written them"
    )]
    UnsignedFormat1 { target: String },
    /// A format 2 repository opened to list its snapshots (status, pin)
    /// by a host that holds no metadata key M: format 1's metadata
    /// identity derived from the recipients is gone (design 2.1, open
    /// question 3).
    #[error(
        "{target} holds a format 2 repository, whose snapshot list only its writers and \
         recipients can read (the recipients alone no longer do): set \
         encryption.writer_key_file to a writer key the owner added (with \
         encryption.owner_key), or encryption.identity_file to a recipient's identity"
    )]
    NoMetadataKey { target: String },
    /// A format 2 keyring or key bundle refused, or a key change refused.
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringError),
    #[error("repository {target} was created for other recipients (its metadata key is {expected}, these recipients give {found})")]
    RecipientMismatch {
        target: String,
        expected: String,
        found: String,
    },
    #[error("no snapshot matches {0}")]
    SnapshotNotFound(String),
    /// A format 2 object whose signature does not count (docs/design/format-v2.md, 3.3).
    #[error("{key} is not trusted, so it is not used: {reason}")]
    Untrusted { key: String, reason: String },
    /// Prune stopped before deleting anything: a kept snapshot's list could
    /// not be read, so what it needs is unknown.
    #[error("prune deletes nothing while it cannot tell what kept snapshot {snapshot} needs")]
    PruneBlocked {
        snapshot: String,
        #[source]
        cause: Box<Error>,
    },
    #[error("no pinned snapshot matches {0:?}; `offsite snapshots` marks pinned ones")]
    NotPinned(String),
    #[error("{0} matches more than one snapshot: {1}")]
    AmbiguousSnapshot(String, String),
    #[error("{0} already exists")]
    TargetExists(PathBuf),
    #[error("restored data failed verification: {0}")]
    Verification(String),
    #[error("repository {target} is locked by {holders}")]
    Locked { target: String, holders: String },
    /// Another process has the destination (or its -wal/-shm) open: replacing
    /// it now would lose what that process writes.
    #[error("{path} is open in another process ({holders}); replacing it now would lose what that process writes")]
    InUse { path: PathBuf, holders: String },
    /// A snapshot's list asks for something a restore never does: write
    /// outside the destination, or through a symlink.
    #[error("refusing entry {path:?} of {key}: {reason}")]
    UnsafeEntry {
        key: String,
        path: String,
        reason: String,
    },
    /// The DuckDB library at hand is older than the one that wrote the
    /// database: not damage, a version mismatch.
    #[error("{path}: written by DuckDB {written_by} (storage version {storage_version}), which the libduckdb loaded here ({library}) cannot read: {message}")]
    DuckdbVersion {
        path: PathBuf,
        storage_version: u64,
        written_by: String,
        library: String,
        message: String,
    },
    /// The destination cannot be replaced safely as it is; nothing was changed.
    #[error("cannot replace {path}: {reason}")]
    CannotReplace { path: PathBuf, reason: String },
    /// Replication could not go on (no target stored its base, say).
    #[error("replication: {0}")]
    Replication(String),
    /// Like [`Error::Storage`]: the cause is in the message only.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn full_detail(free: Option<u64>, needed: Option<u64>) -> String {
    match (free, needed) {
        (Some(f), Some(n)) => format!("{} free, about {} needed", human_bytes(f), human_bytes(n)),
        (Some(f), None) => format!("{} free", human_bytes(f)),
        (None, Some(n)) => format!(
            "it refuses more data (it does not say how much is free); about {} needed",
            human_bytes(n)
        ),
        (None, None) => "it refuses more data".into(),
    }
}

/// `1536` → `"1.5 KiB"`, for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            cause: source,
        }
    }
}

/// An error with its causes on one line, `": "` between them, each cause
/// once: one whose text the line holds already (an error that embeds its
/// source's message) is left out. The one way the engine puts an error into
/// words (hooks' `on_error`, reports, events).
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}
