//! Consistent copies of a DuckDB database.
//!
//! DuckDB lets one process open a database for writing, and that process holds
//! a POSIX `fcntl` write lock on the database file for as long as it has it
//! open; read-only opens take a read lock. This source takes the same read
//! lock a read-only DuckDB would: it cannot be had while a writer is open
//! (we wait for it, up to the source's `lock_timeout`), and while we hold it no
//! writer can open the database, so the database file and its `.wal` (work
//! not yet checkpointed into the file, which DuckDB replays on open) are read
//! as one consistent state. The application must close its database (or be
//! stopped by a `before` hook) for a backup to happen; DuckDB has no way to
//! read a consistent state while a writer is open.
//!
//! Files are chunked like plain files (FastCDC): DuckDB's 256 KiB blocks move
//! as it allocates, so content-defined boundaries deduplicate best.
//!
//! Never: open the database for writing, or take a write lock.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Entry, SourceInfo, Visitor};
use crate::chunk::{CDC_AVG, CDC_MAX, CDC_MIN};
use crate::error::{Error, Result};

/// Where DuckDB keeps a database's write-ahead log.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(".wal");
    PathBuf::from(s)
}

/// What a DuckDB file's main header says about who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The storage format version (bytes 12..20, little-endian, after the
    /// 8-byte checksum and "DUCK"): a DuckDB reads only versions up to the
    /// newest it knows.
    pub storage_version: u64,
    /// The writer's release ("v1.5.6"), from bytes 52..84: written since
    /// DuckDB 1.1, zeros before.
    pub written_by: Option<String>,
}

/// Reads the main header of the DuckDB file at `path` (None if it has none).
pub fn header(path: &Path) -> Option<Header> {
    let mut head = [0u8; 84];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[8..12] != b"DUCK" {
        return None;
    }
    let storage_version = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
    let desc = &head[52..84];
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    let written_by = std::str::from_utf8(&desc[..end])
        .ok()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string);
    Some(Header {
        storage_version,
        written_by,
    })
}

fn source_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Reads the database at `path` (and its WAL) into `visitor`, waiting up to
/// `lock_timeout` for a writer to close it. Blocking.
pub fn read(path: &Path, lock_timeout: Duration, visitor: &mut dyn Visitor) -> Result<SourceInfo> {
    let meta = std::fs::metadata(path).map_err(|e| source_err(path, e))?;
    if !meta.is_file() {
        return Err(source_err(path, "not a regular file"));
    }
    // Read through this very descriptor: closing any other descriptor of the
    // file in this process would drop our fcntl lock.
    let mut db = File::open(path).map_err(|e| source_err(path, e))?;
    lock_shared(&db, path, lock_timeout)?;
    check_magic(&mut db, path)?;
    // Sizes are taken under the lock: nothing can change them now.
    let db_len = db.metadata().map_err(|e| source_err(path, e))?.len();
    let wal = wal_path(path);
    let wal_file = match File::open(&wal) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(source_err(&wal, e)),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into());
    read_file(&db, path, &name, db_len, mode(&meta), visitor)?;
    if let Some(w) = wal_file {
        let len = w.metadata().map_err(|e| source_err(&wal, e))?.len();
        let wal_mode = w.metadata().map(|m| mode(&m)).unwrap_or(0o644);
        read_file(&w, &wal, &format!("{name}.wal"), len, wal_mode, visitor)?;
    }
    drop(db); // releases the lock
    Ok(SourceInfo::default())
}

fn check_magic(db: &mut File, path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut head = [0u8; 12];
    let ok = db.read_exact(&mut head).is_ok() && &head[8..12] == b"DUCK";
    db.seek(SeekFrom::Start(0))
        .map_err(|e| source_err(path, e))?;
    if ok {
        Ok(())
    } else {
        Err(source_err(
            path,
            "not a DuckDB database (no DUCK header); use kind = \"files\" for other data",
        ))
    }
}

fn read_file(
    file: &File,
    path: &Path,
    rel: &str,
    len: u64,
    mode: u32,
    visitor: &mut dyn Visitor,
) -> Result<()> {
    visitor.entry(&Entry::File {
        path: rel.to_string(),
        mode,
        size: len,
        mtime: 0,
    })?;
    let chunker = fastcdc::v2020::StreamCDC::new(file.take(len), CDC_MIN, CDC_AVG, CDC_MAX);
    let mut total = 0u64;
    for chunk in chunker {
        let chunk = chunk.map_err(|e| source_err(path, e))?;
        total += chunk.data.len() as u64;
        visitor.chunk(&chunk.data)?;
    }
    if total != len {
        return Err(source_err(
            path,
            format!("read {total} of {len} bytes although the database was locked"),
        ));
    }
    Ok(())
}

/// Takes a shared fcntl lock on the whole file, polling until `timeout`.
#[cfg(unix)]
fn lock_shared(file: &File, path: &Path, timeout: Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let clock = Instant::now();
    let mut waiting = false;
    loop {
        // SAFETY: a zeroed flock is a valid value for every field; F_SETLK
        // only reads it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_RDLCK as _;
        fl.l_whence = libc::SEEK_SET as _;
        fl.l_start = 0;
        fl.l_len = 0; // to the end of the file, however it grows
                      // SAFETY: a valid descriptor and a pointer to a live flock.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        let busy = matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES));
        if !busy {
            return Err(source_err(path, format!("cannot lock the database: {err}")));
        }
        if clock.elapsed() >= timeout {
            return Err(Error::Busy {
                path: path.to_path_buf(),
                waited: timeout,
            });
        }
        if !waiting {
            waiting = true;
            tracing::info!(path = %path.display(), timeout = ?timeout, "a DuckDB writer has the database open; waiting for it to close");
        }
        std::thread::sleep(Duration::from_millis(200).min(timeout.saturating_sub(clock.elapsed())));
    }
}

#[cfg(not(unix))]
fn lock_shared(_: &File, path: &Path, _: Duration) -> Result<()> {
    Err(source_err(
        path,
        "DuckDB sources need POSIX file locks (Linux, macOS, BSD)",
    ))
}

#[cfg(unix)]
fn mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode(_: &std::fs::Metadata) -> u32 {
    0o644
}
