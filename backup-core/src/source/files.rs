//! Plain files and directory trees (state JSON, parquet extracts, uploads).
//!
//! Walks the tree in sorted order so the same tree always gives the same
//! snapshot, and splits each file into content-defined chunks. Files are read
//! as they are: there is no cross-file consistency, so point this at data the
//! application writes atomically (write-then-rename), or use source hooks to
//! pause it. Never follows symlinks out of the tree; records them as links.

use std::fs::{self, File};
use std::path::Path;

use super::{Entry, Visitor};
use crate::chunk::{CDC_AVG, CDC_MAX, CDC_MIN};
use crate::error::{Error, Result};

fn source_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

pub fn read(root: &Path, visitor: &mut dyn Visitor) -> Result<()> {
    let meta = fs::symlink_metadata(root).map_err(|e| source_err(root, e))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        return read_file(root, &name, &meta, visitor);
    }
    if !meta.is_dir() {
        return Err(source_err(root, "not a file or directory"));
    }
    walk(root, "", visitor)
}

fn walk(dir: &Path, rel: &str, visitor: &mut dyn Visitor) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| source_err(dir, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| source_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let rel_path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| source_err(&path, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            visitor.entry(&Entry::Dir {
                path: rel_path.clone(),
                mode: mode(&meta),
            })?;
            walk(&path, &rel_path, visitor)?;
        } else if ft.is_file() {
            read_file(&path, &rel_path, &meta, visitor)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| source_err(&path, e))?;
            visitor.entry(&Entry::Symlink {
                path: rel_path,
                target: target.to_string_lossy().into_owned(),
            })?;
        } else {
            tracing::warn!(path = %path.display(), "skipping special file (socket, fifo or device)");
        }
    }
    Ok(())
}

fn read_file(path: &Path, rel: &str, meta: &fs::Metadata, visitor: &mut dyn Visitor) -> Result<()> {
    let file = File::open(path).map_err(|e| source_err(path, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    visitor.entry(&Entry::File {
        path: rel.to_string(),
        mode: mode(meta),
        size: meta.len(),
        mtime,
    })?;
    // Read exactly the size recorded above: a file that grows while being read
    // (a log) is snapshotted as it was when stat'ed.
    use std::io::Read;
    let chunker = fastcdc::v2020::StreamCDC::new(file.take(meta.len()), CDC_MIN, CDC_AVG, CDC_MAX);
    let mut total = 0u64;
    for chunk in chunker {
        let chunk = chunk.map_err(|e| source_err(path, e))?;
        total += chunk.data.len() as u64;
        visitor.chunk(&chunk.data)?;
    }
    if total != meta.len() {
        return Err(source_err(
            path,
            format!(
                "file shrank from {} to {total} bytes while being read; run the backup again",
                meta.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(unix)]
fn mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode(meta: &fs::Metadata) -> u32 {
    if meta.is_dir() {
        0o755
    } else {
        0o644
    }
}
