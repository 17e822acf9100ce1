//! offsite storage backend for a directory on local disk (a second disk, a USB
//! drive, an NFS or SMB mount).
//!
//! Objects are files below the root directory, one per key. A put streams into a
//! temporary file under `<root>/.tmp/`, fsyncs it, then renames it into place and
//! fsyncs the directory, so a reader or a crash never sees half an object.
//! Create-if-absent links the temporary file to its final name with `link(2)`,
//! which fails atomically when the name exists; that needs a filesystem with hard
//! links (every local Unix filesystem and NFS do; FAT and some SMB shares do not,
//! and then create-if-absent fails with a message saying so).
//!
//! What if, during a put,
//! - the disk fills or a quota runs out: a write, the flush or the fsync fails
//!   with `ENOSPC`/`EDQUOT`; the put fails with [`ErrorKind::Full`], the
//!   temporary file is removed and nothing is linked or renamed. (tokio's
//!   `File` reports a failed write only at the next write or flush, not at
//!   `sync_all`: the flush before the fsync is what makes the error seen.)
//! - a write comes up short without an error: after the fsync the file's
//!   length is compared with the bytes the body delivered, and a mismatch fails
//!   the put before anything becomes visible. The put returns the file's length
//!   as the size stored.
//! - the process is killed: the final name holds the old object or the new
//!   one, never part of one; a temporary file may stay in `.tmp/`. Temporary
//!   files are named `<run tag>.<random>.<key>` ([`backup_core::process`]), and
//!   the first put of a later run removes those whose run is gone (same host
//!   and pid space, process gone) or that were not written to for
//!   [`STALE_TEMP_AFTER`] (a run elsewhere, or one whose pid cannot be judged).
//!   A put that is dropped (its run gave up on it) removes its own file.
//! - the object is the first in its directory (`packs/ab/`, on a new
//!   repository `packs/` itself): a new directory's name is durable only
//!   once its parent directory is, and every object in it would be lost
//!   with it. Every put creates its directory if it is missing; the first
//!   put of this process into each directory then fsyncs its parents up to
//!   the root, whoever created it, before the object is written; puts that
//!   start before that is done fsync them too. No put waits for another:
//!   a caller may leave a put unpolled while it awaits a second one, and a
//!   lock held across an await then deadlocks (a backup hung this way). The
//!   root itself, when `open` creates it, has its parent fsynced.
//! - another offsite job writes at the same time: temporary names are
//!   random, a live job's files are never removed (its process exists, or it
//!   writes to them), and create-if-absent stays atomic through `link(2)`.
//!
//! Fail-points (see [`backup_core::failpoint`]): `local.put.write` before each
//! piece of a body is written, `local.put.fsync` before the fsync,
//! `local.put.link` before the link or rename.

use std::collections::HashSet;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backup_core::failpoint;
use backup_core::process::{run_is_gone, run_tag};
use backup_core::storage::{
    validate_key, Backend, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
};
use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// `[[targets]]` settings of `kind = "local"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// The directory that holds the repository.
    pub path: PathBuf,
}

const TMP_DIR: &str = ".tmp";

/// A temporary file nobody has written to for this long belongs to a run that
/// is gone: a live put writes its file without pause until it links it.
pub const STALE_TEMP_AFTER: Duration = Duration::from_secs(60 * 60);

/// A repository directory on a local or mounted filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Whether this instance has looked for temporary files of dead runs.
    swept: Arc<AtomicBool>,
    /// Directories known to exist durably (their names fsynced in their
    /// parents). Never locked across an await: see the module doc.
    durable_dirs: Arc<std::sync::Mutex<HashSet<PathBuf>>>,
}

/// A temporary file being written; removed when dropped unless it was
/// renamed into place, so a put that fails or is dropped leaves nothing.
struct TempFile {
    path: PathBuf,
    placed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.placed {
            // Synchronous on purpose: Drop cannot wait, and unlinking one
            // file is a single quick syscall.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl LocalStorage {
    /// Opens (creating if needed) the directory `config.path`. Its parent must
    /// exist: a missing parent usually means an unmounted disk, and writing a
    /// backup onto the root filesystem instead would hide that.
    pub fn open(config: &LocalConfig) -> Result<Self, StorageError> {
        let root = config.path.clone();
        let describe = root.display().to_string();
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StorageError::new(
                    ErrorKind::Other,
                    describe,
                    "target path exists but is not a directory",
                ))
            }
            Err(e) if e.kind() == IoKind::NotFound => {
                let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
                if let Some(parent) = parent {
                    if !parent.is_dir() {
                        return Err(StorageError::new(
                            ErrorKind::NotFound,
                            describe,
                            format!(
                                "target directory's parent {} does not exist; create it \
                                 (mkdir -p) or check that the backup disk is mounted",
                                parent.display()
                            ),
                        ));
                    }
                }
                match std::fs::create_dir(&root) {
                    Ok(()) => {}
                    // Another job (a backup beside the replicator) made it
                    // a moment ago: it is the directory wanted.
                    Err(e) if e.kind() == IoKind::AlreadyExists && root.is_dir() => {}
                    Err(e) => return Err(io_error(&describe, e)),
                }
                let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
                sync_dir_blocking(parent.unwrap_or(Path::new(".")));
            }
            Err(e) => return Err(io_error(&describe, e)),
        }
        Ok(LocalStorage {
            root,
            swept: Arc::new(AtomicBool::new(false)),
            durable_dirs: Arc::default(),
        })
    }

    /// Makes sure `dir` (below the root) exists and that its name, and its
    /// parents', survive a crash: see the module doc.
    async fn durable_dir(&self, dir: &Path) -> std::io::Result<()> {
        // Cheap when it exists; a directory removed from outside comes back.
        tokio::fs::create_dir_all(dir).await?;
        if self.known_dirs().contains(dir) {
            return Ok(());
        }
        // Whoever created it (this put, another one, another job a moment
        // ago), its name is durable once the parents are synced; only then
        // is it known, so a put never relies on a sync still under way.
        let mut parent = dir.parent();
        while let Some(p) = parent.filter(|p| p.starts_with(&self.root)) {
            sync_dir(p).await;
            parent = p.parent();
        }
        self.known_dirs().insert(dir.to_path_buf());
        Ok(())
    }

    fn known_dirs(&self) -> std::sync::MutexGuard<'_, HashSet<PathBuf>> {
        self.durable_dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Streams `body` into a new temporary file, flushes and fsyncs it, and
    /// checks that it holds every byte the body delivered; returns the file
    /// and its length.
    async fn write_temp(
        &self,
        key: &str,
        mut body: ByteStream,
    ) -> Result<(TempFile, u64), StorageError> {
        // Created on first write, so reading a repository never changes it.
        tokio::fs::create_dir_all(self.root.join(TMP_DIR))
            .await
            .map_err(|e| io_error(key, e))?;
        let tmp = TempFile {
            path: self.root.join(TMP_DIR).join(format!(
                "{}.{:016x}.{}",
                run_tag(),
                rand::random::<u64>(),
                key.replace('/', "_")
            )),
            placed: false,
        };
        let mut file = tokio::fs::File::create(&tmp.path)
            .await
            .map_err(|e| io_error(key, e))?;
        let mut received = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece?;
            failpoint::hit("local.put.write").map_err(|e| io_error(key, e))?;
            file.write_all(&piece).await.map_err(|e| io_error(key, e))?;
            received += piece.len() as u64;
        }
        // tokio's File hands each write to a blocking thread and keeps a
        // failed write's error for the next write or flush; sync_all does not
        // report it. Without this flush an ENOSPC would go unseen and a
        // truncated file would be linked into place.
        file.flush().await.map_err(|e| io_error(key, e))?;
        failpoint::hit("local.put.fsync").map_err(|e| io_error(key, e))?;
        file.sync_all().await.map_err(|e| io_error(key, e))?;
        let len = file.metadata().await.map_err(|e| io_error(key, e))?.len();
        if len != received {
            return Err(StorageError::new(
                ErrorKind::Other,
                key,
                format!(
                    "short write: the temporary file holds {len} of the {received} bytes written"
                ),
            ));
        }
        Ok((tmp, len))
    }

    /// Once per instance, before its first put: removes temporary files left
    /// by runs that are gone (see the module doc).
    async fn sweep_once(&self) {
        if self.swept.swap(true, Ordering::SeqCst) {
            return;
        }
        let dir = self.root.join(TMP_DIR);
        let swept = tokio::task::spawn_blocking(move || sweep_temp(&dir, SystemTime::now())).await;
        if let Ok((files, bytes)) = swept {
            if files > 0 {
                tracing::info!(
                    "removed {files} temporary files ({bytes} bytes) that interrupted runs \
                     left in {}",
                    self.root.join(TMP_DIR).display()
                );
            }
        }
    }
}

/// Removes the temporary files in `dir` whose run is gone or that were not
/// written to for [`STALE_TEMP_AFTER`]; returns how many and their bytes.
fn sweep_temp(dir: &Path, now: SystemTime) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let tag = name.split('.').next().unwrap_or_default();
        let idle = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > STALE_TEMP_AFTER);
        if (run_is_gone(tag) || idle) && std::fs::remove_file(entry.path()).is_ok() {
            files += 1;
            bytes += meta.len();
        }
    }
    (files, bytes)
}

fn io_error(key: &str, e: std::io::Error) -> StorageError {
    let kind = match e.kind() {
        IoKind::NotFound => ErrorKind::NotFound,
        IoKind::AlreadyExists => ErrorKind::AlreadyExists,
        IoKind::PermissionDenied => ErrorKind::PermissionDenied,
        IoKind::StorageFull | IoKind::QuotaExceeded => ErrorKind::Full,
        IoKind::Interrupted | IoKind::TimedOut | IoKind::WouldBlock => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    // The message is the cause; attached as a source too it would be
    // printed twice.
    StorageError::new(kind, key, e.to_string())
}

/// [`sync_dir`] for the synchronous `open`.
fn sync_dir_blocking(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

async fn sync_dir(dir: &Path) {
    // A rename is durable only once its directory is; failure here (some network
    // filesystems refuse to open directories) is not worth failing the put.
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let dest = self.path_of(key);
        let dir = dest
            .parent()
            .expect("a key has a parent: the root")
            .to_path_buf();
        self.durable_dir(&dir).await.map_err(|e| io_error(key, e))?;
        if mode == PutMode::Create && tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            // Cheap early answer; the link below is what makes it atomic.
            return Err(StorageError::already_exists(key));
        }
        self.sweep_once().await;
        let (mut tmp, size) = self.write_temp(key, body).await?;
        failpoint::hit("local.put.link").map_err(|e| io_error(key, e))?;
        let placed = match mode {
            PutMode::Overwrite => tokio::fs::rename(&tmp.path, &dest).await,
            // The temporary name goes with `tmp`, whatever happens.
            PutMode::Create => tokio::fs::hard_link(&tmp.path, &dest).await,
        };
        if let Err(e) = placed {
            return Err(match e.kind() {
                IoKind::AlreadyExists => StorageError::already_exists(key),
                IoKind::Unsupported => StorageError::new(
                    ErrorKind::Other,
                    key,
                    "this filesystem has no hard links, which offsite needs for \
                     create-if-absent; use a Unix filesystem or NFS for the target",
                ),
                _ => io_error(key, e),
            });
        }
        tmp.placed = mode == PutMode::Overwrite;
        drop(tmp);
        sync_dir(&dir).await;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        validate_key(key)?;
        let file = tokio::fs::File::open(self.path_of(key))
            .await
            .map_err(|e| io_error(key, e))?;
        let key = key.to_string();
        let reader = tokio::io::BufReader::with_capacity(1 << 20, file);
        let stream = futures::stream::unfold((reader, key), |(mut r, key)| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = bytes::BytesMut::with_capacity(1 << 20);
            match r.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), (r, key))),
                Err(e) => Some((Err(io_error(&key, e)), (r, key))),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let meta = tokio::fs::metadata(self.path_of(key))
            .await
            .map_err(|e| io_error(key, e))?;
        if !meta.is_file() {
            return Err(StorageError::not_found(key));
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: meta.len(),
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        // Walking is blocking and listings are small next to the data; collect on
        // a blocking thread, then stream the result.
        let walk = tokio::task::spawn_blocking(move || walk(&root, &prefix));
        stream::once(async move {
            match walk.await {
                Ok(Ok(items)) => stream::iter(items.into_iter().map(Ok)).boxed(),
                Ok(Err(e)) => stream::once(async move { Err(e) }).boxed(),
                Err(e) => stream::once(async move {
                    Err(StorageError::new(ErrorKind::Other, "list", e.to_string()))
                })
                .boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match tokio::fs::remove_file(self.path_of(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            Err(e) => Err(io_error(key, e)),
        }
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    async fn free_space(&self) -> Option<u64> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || free_bytes(&root))
            .await
            .ok()
            .flatten()
    }
}

/// Bytes an unprivileged user may still write on the filesystem of `path`.
#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the struct it is given; all-zero
    // bytes are a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_path: &Path) -> Option<u64> {
    None
}

/// Every file below `root` whose key starts with `prefix`, skipping the
/// temporary directory.
fn walk(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    // Start at the deepest directory the prefix names, not at the root.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    let mut dirs = vec![(root.join(start_rel), start_rel.to_string())];
    while let Some((dir, rel)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == IoKind::NotFound => continue,
            Err(e) => return Err(io_error(&rel, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&rel, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && name == TMP_DIR {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().map_err(|e| io_error(&key, e))?;
            if ft.is_dir() {
                if prefix.starts_with(&key) || key.starts_with(prefix) {
                    dirs.push((entry.path(), key));
                }
            } else if ft.is_file() && key.starts_with(prefix) {
                let size = entry.metadata().map_err(|e| io_error(&key, e))?.len();
                out.push(ObjectMeta { key, size });
            }
        }
    }
    Ok(out)
}

impl Backend for LocalStorage {
    const KIND: &'static str = "local";
    const PATH_SETTINGS: &'static [&'static str] = &["path"];
    type Config = LocalConfig;

    fn open(config: &LocalConfig) -> Result<Self, StorageError> {
        LocalStorage::open(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeping_removes_dead_runs_files_and_idle_ones_only() {
        let dir = tempfile::tempdir().unwrap();
        let mine = run_tag();
        let scope = mine.split_once('-').unwrap().1.to_string();
        let now = SystemTime::now();
        let hours_ago = now - Duration::from_secs(2 * 3600);
        let files = [
            // (name, idle for hours, removed)
            (format!("{mine}.0000000000000001.packs_ab_x"), false, false),
            (format!("1-{scope}.0000000000000002.index_x"), false, false),
            (
                "7-0123456789ab.0000000000000003.lists_x".to_string(),
                false,
                false,
            ),
            (
                "7-0123456789ab.0000000000000004.lists_y".to_string(),
                true,
                true,
            ),
            ("packs_ab_y.0000000000000005".to_string(), false, false),
            ("packs_ab_z.0000000000000006".to_string(), true, true),
        ];
        for (name, idle, _) in &files {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(10).unwrap();
            if *idle {
                f.set_modified(hours_ago).unwrap();
            }
        }
        // A run of this pid space that is gone (no pid that large exists).
        let dead = format!("{}-{scope}.0000000000000007.snapshots_x", u32::MAX - 1);
        std::fs::write(dir.path().join(&dead), b"0123456789").unwrap();
        let dead_removed = backup_core::process::pid_scope().is_some();

        let expected = files.iter().filter(|f| f.2).count() + usize::from(dead_removed);
        assert_eq!(
            sweep_temp(dir.path(), now),
            (expected, 10 * expected as u64)
        );
        for (name, _, removed) in &files {
            assert_eq!(!dir.path().join(name).exists(), *removed, "{name}");
        }
        assert_eq!(!dir.path().join(&dead).exists(), dead_removed);
        assert_eq!(sweep_temp(&dir.path().join("missing"), now), (0, 0));
    }
}

/// docs/library.md, compiled and run as a doctest: the engine used as a
/// library, without the binary.
#[cfg(doctest)]
#[doc = include_str!("../../docs/library.md")]
pub struct LibraryExample;
