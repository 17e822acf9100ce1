//! Snapshot sources: what is read, and how, to produce a consistent stream of
//! entries and chunks. A source only ever opens its input read-only; nothing in
//! here writes to, locks for writing, or copies the live data.

pub mod duckdb;
pub mod duckdb_lib;
pub mod files;
pub mod sqlite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A SQLite database, snapshotted page by page inside one read transaction.
    Sqlite,
    /// A file or a directory tree.
    Files,
    /// A DuckDB database file and its `.wal`, read under DuckDB's own lock.
    Duckdb,
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Files => "files",
            SourceKind::Duckdb => "duckdb",
        })
    }
}

/// A configured source.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub name: String,
    pub kind: SourceKind,
    pub path: PathBuf,
}

/// One item of a snapshot, in the order it is read. Paths are relative,
/// `/`-separated; a SQLite snapshot is one `File` named after the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File {
        path: String,
        mode: u32,
        size: u64,
        mtime: i64,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// Receives a source's entries and, after each `File`, exactly its chunks.
pub trait Visitor {
    fn entry(&mut self, entry: &Entry) -> Result<()>;
    fn chunk(&mut self, data: &[u8]) -> Result<()>;
}

/// Facts a source reports about what it read.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    /// SQLite page size, for SQLite sources.
    pub page_size: Option<u32>,
    /// What `PRAGMA integrity_check` said of the state read (empty: ok),
    /// when it was asked for and the source is SQLite.
    pub integrity: Option<Vec<String>>,
}

/// How long a DuckDB source waits for a writer to close the database, unless configured.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads `spec` into `visitor`. Blocking: run it on a blocking thread.
pub fn read(spec: &SourceSpec, visitor: &mut dyn Visitor) -> Result<SourceInfo> {
    read_with(spec, DEFAULT_LOCK_TIMEOUT, false, visitor)
}

/// Like [`read`], waiting up to `lock_timeout` for a DuckDB writer, and
/// with `integrity_check` running SQLite's check on the very state read.
pub fn read_with(
    spec: &SourceSpec,
    lock_timeout: std::time::Duration,
    integrity_check: bool,
    visitor: &mut dyn Visitor,
) -> Result<SourceInfo> {
    match spec.kind {
        SourceKind::Sqlite => sqlite::read(&spec.path, integrity_check, visitor),
        SourceKind::Files => files::read(&spec.path, visitor).map(|()| SourceInfo::default()),
        SourceKind::Duckdb => duckdb::read(&spec.path, lock_timeout, visitor),
    }
}
