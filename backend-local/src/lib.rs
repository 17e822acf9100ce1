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

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use backup_core::storage::{
    validate_key, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
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

/// A repository directory on a local or mounted filesystem.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
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
                std::fs::create_dir(&root).map_err(|e| io_error(&describe, e))?;
            }
            Err(e) => return Err(io_error(&describe, e)),
        }
        Ok(LocalStorage { root })
    }

    fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn write_temp(&self, key: &str, mut body: ByteStream) -> Result<PathBuf, StorageError> {
        // Created on first write, so reading a repository never changes it.
        tokio::fs::create_dir_all(self.root.join(TMP_DIR))
            .await
            .map_err(|e| io_error(key, e))?;
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{:016x}",
            key.replace('/', "_"),
            rand::random::<u64>()
        ));
        let result: Result<(), StorageError> = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io_error(key, e))?;
            while let Some(piece) = body.next().await {
                file.write_all(&piece?)
                    .await
                    .map_err(|e| io_error(key, e))?;
            }
            file.sync_all().await.map_err(|e| io_error(key, e))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

fn io_error(key: &str, e: std::io::Error) -> StorageError {
    let kind = match e.kind() {
        IoKind::NotFound => ErrorKind::NotFound,
        IoKind::AlreadyExists => ErrorKind::AlreadyExists,
        IoKind::PermissionDenied => ErrorKind::PermissionDenied,
        IoKind::Interrupted | IoKind::TimedOut | IoKind::WouldBlock => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    StorageError::new(kind, key, e.to_string()).with_source(e)
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
    async fn put(&self, key: &str, body: ByteStream, mode: PutMode) -> Result<(), StorageError> {
        validate_key(key)?;
        let dest = self.path_of(key);
        let dir = dest
            .parent()
            .expect("a key has a parent: the root")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_error(key, e))?;
        if mode == PutMode::Create && tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            // Cheap early answer; the link below is what makes it atomic.
            return Err(StorageError::already_exists(key));
        }
        let tmp = self.write_temp(key, body).await?;
        let placed = match mode {
            PutMode::Overwrite => tokio::fs::rename(&tmp, &dest).await,
            PutMode::Create => {
                let linked = tokio::fs::hard_link(&tmp, &dest).await;
                let _ = tokio::fs::remove_file(&tmp).await;
                linked
            }
        };
        if let Err(e) = placed {
            let _ = tokio::fs::remove_file(&tmp).await;
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
        sync_dir(&dir).await;
        Ok(())
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
