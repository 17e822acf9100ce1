//! The staged copy of a snapshot, built so that nothing is ever written
//! outside it, whatever the snapshot's list says.
//!
//! A list is not trusted: anyone holding the public recipients can write
//! one (a signed-snapshot format is a later issue), so it may try
//! `L lnk /etc` followed by `F ... lnk/passwd`. Two rules make that
//! impossible, both checked before anything is created:
//! - every path is plain and relative (no `/` at the start, no empty, `.`
//!   or `..` component), and appears once: a second entry of the same name
//!   could replace what the first made;
//! - every entry's parent is a directory entry listed before it: never a
//!   symlink, never a file. The walk in `source::files` always lists a
//!   directory before its contents, so every list offsite wrote passes.
//!
//! And the filesystem is used so that even a mistake in those rules could
//! not write through a link: symlinks are created only after every file has
//! been written and checked, files and directories are created with
//! `O_CREAT|O_EXCL` / `mkdir` (which never follow a final link), and every
//! later open (writing chunks, the checksum, fsync, modes and times) uses
//! `O_NOFOLLOW`, with modes and times set through the open descriptor
//! (`fchmod`, `futimens`) rather than by path. A symlink's target is
//! content: it may point anywhere, absolute or `..`; nothing is written
//! through it.
//!
//! A database snapshot (SQLite, DuckDB) is files only: SQLite's is the
//! database, DuckDB's the database and its `.wal`. A side file such as
//! `app.db-wal` in a SQLite snapshot would be replayed into the restored
//! database, so any other entry is refused too.
//!
//! Never: create, open or change anything through a symlink, or outside
//! the staging path.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::source::{Entry, SourceKind};

/// How a snapshot maps onto the staging path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// A database: its file at the staging path, a DuckDB `.wal` beside it.
    Database,
    /// A files snapshot of one file: that file at the staging path.
    SingleFile,
    /// A directory tree under the staging directory.
    Tree,
}

impl Layout {
    pub(super) fn of(kind: SourceKind, entries: &[Entry]) -> Layout {
        match kind {
            SourceKind::Sqlite | SourceKind::Duckdb => Layout::Database,
            SourceKind::Files => match entries {
                [Entry::File { .. }] => Layout::SingleFile,
                _ => Layout::Tree,
            },
        }
    }
}

fn path_of(entry: &Entry) -> &str {
    match entry {
        Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => path,
    }
}

/// Checks the list's entries against the rules above, before anything is
/// created.
pub(super) fn check(entries: &[Entry], kind: SourceKind, key: &str) -> Result<()> {
    let refuse = |path: &str, reason: String| Error::UnsafeEntry {
        key: key.to_string(),
        path: path.to_string(),
        reason,
    };
    match Layout::of(kind, entries) {
        Layout::SingleFile => Ok(()),
        Layout::Database => check_database(entries, kind).map_err(|(p, r)| refuse(p, r)),
        Layout::Tree => check_tree(entries).map_err(|(p, r)| refuse(p, r)),
    }
}

fn check_database(entries: &[Entry], kind: SourceKind) -> std::result::Result<(), (&str, String)> {
    let allowed = if kind == SourceKind::Duckdb {
        "a DuckDB snapshot holds the database file and its .wal, nothing else"
    } else {
        "a SQLite snapshot holds the database file, nothing else"
    };
    let db = match entries.first() {
        Some(Entry::File { path, .. }) => path.as_str(),
        Some(other) => return Err((path_of(other), allowed.into())),
        None => return Err(("", "the list has no database file".into())),
    };
    for entry in &entries[1..] {
        let path = path_of(entry);
        let wal = kind == SourceKind::Duckdb
            && entries.len() == 2
            && matches!(entry, Entry::File { .. })
            && path.strip_prefix(db) == Some(".wal");
        if !wal {
            return Err((path, allowed.into()));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    Dir,
    File,
    Link,
}

fn check_tree(entries: &[Entry]) -> std::result::Result<(), (&str, String)> {
    let mut seen: HashMap<&str, Seen> = HashMap::with_capacity(entries.len());
    for entry in entries {
        let path = path_of(entry);
        let plain = !path.is_empty()
            && !path.starts_with('/')
            && !path.contains('\0')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            return Err((
                path,
                "not a plain relative path inside the destination".into(),
            ));
        }
        if let Some(earlier) = seen.get(path) {
            let what = match earlier {
                Seen::Dir => "a directory",
                Seen::File => "a file",
                Seen::Link => "a symlink",
            };
            return Err((
                path,
                format!("listed twice (it is already {what} in this snapshot)"),
            ));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            let problem = match seen.get(parent) {
                Some(Seen::Dir) => None,
                Some(Seen::Link) => Some(format!(
                    "its parent {parent:?} is a symlink in this snapshot, and nothing is ever \
                     written through a link"
                )),
                Some(Seen::File) => Some(format!("its parent {parent:?} is a file")),
                None => Some(format!(
                    "its parent {parent:?} is not a directory listed before it"
                )),
            };
            if let Some(reason) = problem {
                return Err((path, reason));
            }
        }
        let kind = match entry {
            Entry::Dir { .. } => Seen::Dir,
            Entry::File { .. } => Seen::File,
            Entry::Symlink { .. } => Seen::Link,
        };
        seen.insert(path, kind);
    }
    Ok(())
}

/// Creates the staging files and directories (not the symlinks: see
/// [`create_links`]) and returns each entry's staging path.
pub(super) fn prepare(staging: &Path, entries: &[Entry], layout: Layout) -> Result<Vec<PathBuf>> {
    let io = |p: &Path, e| Error::io(format!("staging {}", p.display()), e);
    if layout == Layout::Tree {
        std::fs::create_dir(staging).map_err(|e| io(staging, e))?;
    }
    let paths = placed(staging, entries, layout);
    for (entry, dest) in entries.iter().zip(&paths) {
        match entry {
            // create_dir, not create_dir_all: it fails on anything already there.
            Entry::Dir { .. } => std::fs::create_dir(dest).map_err(|e| io(dest, e))?,
            Entry::File { size, .. } => {
                let f = create_new(dest).map_err(|e| io(dest, e))?;
                f.set_len(*size).map_err(|e| io(dest, e))?;
            }
            Entry::Symlink { .. } => {}
        }
    }
    Ok(paths)
}

/// Where each entry lies under `root` when a snapshot is laid out there
/// as `layout` says (the staging path, or the destination once in place).
fn placed(root: &Path, entries: &[Entry], layout: Layout) -> Vec<PathBuf> {
    let at = |(i, entry)| match layout {
        Layout::Tree => root.join(path_of(entry)),
        _ if i == 0 => root.to_path_buf(),
        // A DuckDB .wal (checked above): beside the staged database.
        _ => super::with_suffix(root, ".wal"),
    };
    entries.iter().enumerate().map(at).collect()
}

/// Where each entry of a snapshot of `kind` lies once restored to `to`.
pub(crate) fn restored_paths(to: &Path, kind: SourceKind, entries: &[Entry]) -> Vec<PathBuf> {
    placed(to, entries, Layout::of(kind, entries))
}

fn create_new(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
    opts.open(path)
}

/// Opens a staged file without following a link at its name.
pub(crate) fn open(path: &Path, write: bool) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(!write).write(write);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NOFOLLOW);
    opts.open(path)
}

#[cfg(unix)]
fn open_dir(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut opts,
        libc::O_NOFOLLOW | libc::O_DIRECTORY,
    );
    opts.open(path)
}

/// Creates the snapshot's symlinks, once every file is written and checked.
pub(super) fn create_links(entries: &[Entry], paths: &[PathBuf]) -> Result<()> {
    for (entry, path) in entries.iter().zip(paths) {
        if let Entry::Symlink { target, .. } = entry {
            #[cfg(unix)]
            std::os::unix::fs::symlink(target, path)
                .map_err(|e| Error::io(format!("staging {}", path.display()), e))?;
            #[cfg(not(unix))]
            let _ = (target, path);
        }
    }
    Ok(())
}

/// Applies modes and times through descriptors opened without following
/// links, deepest entries first (so a read-only directory gets its mode
/// after its contents). As before, a mode or time the filesystem refuses
/// only warns: the data is restored and checked.
pub(super) fn apply_metadata(entries: &[Entry], paths: &[PathBuf]) -> Result<()> {
    let io = |p: &Path, e| Error::io(format!("opening {}", p.display()), e);
    let warn = |p: &Path, e: std::io::Error| {
        tracing::warn!(path = %p.display(), error = %e, "cannot set the restored mode or time");
    };
    for (entry, path) in entries.iter().zip(paths).rev() {
        match entry {
            Entry::File { mode, mtime, .. } => {
                let f = open(path, false).map_err(|e| io(path, e))?;
                if *mtime > 0 {
                    let t = std::time::UNIX_EPOCH + Duration::from_secs(*mtime as u64);
                    f.set_modified(t).unwrap_or_else(|e| warn(path, e));
                }
                set_mode(&f, *mode).unwrap_or_else(|e| warn(path, e));
            }
            #[cfg(unix)]
            Entry::Dir { mode, .. } => {
                let d = open_dir(path).map_err(|e| io(path, e))?;
                set_mode(&d, *mode).unwrap_or_else(|e| warn(path, e));
            }
            #[cfg(not(unix))]
            Entry::Dir { .. } => {}
            Entry::Symlink { .. } => {}
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(f: &File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if mode == 0 {
        return Ok(());
    }
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &File, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str) -> Entry {
        Entry::File {
            path: path.into(),
            mode: 0o644,
            size: 0,
            mtime: 0,
        }
    }
    fn d(path: &str) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    fn l(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    fn refused(entries: &[Entry], kind: SourceKind) -> String {
        match check(entries, kind, "lists/x") {
            Err(Error::UnsafeEntry { path, .. }) => path,
            other => panic!("{entries:?} not refused: {other:?}"),
        }
    }

    #[test]
    fn trees_need_plain_unique_paths_under_listed_directories() {
        let files = SourceKind::Files;
        check(
            &[
                d("a"),
                f("a/b"),
                l("a/c", "/etc"),
                l("up", "../../x"),
                f("z"),
            ],
            files,
            "k",
        )
        .unwrap();
        assert_eq!(
            refused(&[l("lnk", "/x"), f("lnk/pwned")], files),
            "lnk/pwned"
        );
        assert_eq!(refused(&[f("a"), f("a/b")], files), "a/b");
        assert_eq!(refused(&[f("a/b"), f("c")], files), "a/b");
        assert_eq!(refused(&[l("a", "/x"), d("a")], files), "a");
        assert_eq!(refused(&[d("a"), d("a")], files), "a");
        for bad in ["/abs", "a/../b", "..", "a//b", "./a", "a/", ""] {
            assert_eq!(refused(&[d("a"), f(bad), f("q")], files), bad);
        }
    }

    #[test]
    fn database_snapshots_hold_only_their_files() {
        check(&[f("app.db")], SourceKind::Sqlite, "k").unwrap();
        check(&[f("a.duckdb"), f("a.duckdb.wal")], SourceKind::Duckdb, "k").unwrap();
        assert_eq!(
            refused(&[f("app.db"), f("app.db-wal")], SourceKind::Sqlite),
            "app.db-wal"
        );
        assert_eq!(
            refused(&[l("app.db", "/etc/passwd")], SourceKind::Sqlite),
            "app.db"
        );
        assert_eq!(
            refused(&[f("a.duckdb"), f("a.duckdb.wal/../x")], SourceKind::Duckdb),
            "a.duckdb.wal/../x"
        );
        assert_eq!(
            refused(
                &[f("a.duckdb"), f("a.duckdb.wal"), f("a.duckdb.wal")],
                SourceKind::Duckdb
            ),
            "a.duckdb.wal"
        );
    }
}
