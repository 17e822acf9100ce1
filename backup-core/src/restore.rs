//! The restore operation: a snapshot back onto disk, checked before it is
//! put in place.
//!
//! Everything is written to a staging path beside the destination (same
//! filesystem, so the final rename is atomic). Packs are fetched a few at a
//! time, decoded, and each chunk is checked against its id before it is
//! written at its offset(s) ([`crate::fetch`]: a chunk damaged or missing
//! here is recorded as damaged and taken from a fallback target, by id). The staged copy must then match the manifest's
//! SHA-256 and, for SQLite, pass `PRAGMA integrity_check`. Only then is an
//! existing destination moved aside (never deleted), with its -wal and -shm,
//! and the staged copy renamed into place.
//!
//! Never: write to the destination path before verification passed, or
//! delete an existing file.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backup::Progress;
use crate::codec;
use crate::error::{Error, Result};
use crate::fetch::{self, Want};
pub use crate::fetch::{Fallback, FetchedElsewhere};
use crate::keys::Identities;
use crate::repo::format::{parse_list, DamagedPack, ListItem};
use crate::repo::{Manifest, Repository};
use crate::source::{sqlite, Entry, SourceKind};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace an existing destination (which is moved aside, not deleted).
    pub force: bool,
    /// Packs downloaded and decoded at once.
    pub concurrency: usize,
    pub progress: Arc<Progress>,
    /// Other targets' repositories, asked by chunk id for chunks that are
    /// damaged or missing in the one restored from (see [`crate::fetch`]).
    pub fallbacks: Vec<Fallback>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            concurrency: 4,
            progress: Arc::new(Progress::default()),
            fallbacks: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub snapshot: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Where earlier files at the destination were moved.
    pub moved_aside: Vec<PathBuf>,
    pub duration: Duration,
    /// Chunks found damaged in the repository restored from, per pack.
    pub damaged: Vec<DamagedPack>,
    /// The damage record written for them, if it could be.
    pub damage_recorded: Option<String>,
    /// Chunks taken from fallback targets instead.
    pub fetched_elsewhere: Vec<FetchedElsewhere>,
}

struct Plan {
    entries: Vec<Entry>,
    /// Every chunk placement, in list order.
    wants: Vec<Want>,
}

/// Removes a staging path unless disarmed: an interrupted or failed restore
/// leaves nothing behind.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ =
                std::fs::remove_dir_all(&self.path).or_else(|_| std::fs::remove_file(&self.path));
            for ext in ["-wal", "-shm", "-journal", ".wal"] {
                let _ = std::fs::remove_file(with_suffix(&self.path, ext));
            }
        }
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Restores `manifest`'s snapshot to `to`: a database file for SQLite
/// sources, a file or directory for file sources.
pub async fn restore(
    repo: &Repository,
    ids: &Identities,
    manifest: &Manifest,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    let clock = Instant::now();
    let exists = std::fs::symlink_metadata(to).is_ok();
    if exists && !opts.force {
        return Err(Error::TargetExists(to.to_path_buf()));
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A rebuilt server often lacks the application's directory (/srv/app):
    // create it, as restic and cp -r would, rather than make the operator
    // guess which directories the restore needs.
    std::fs::create_dir_all(&parent).map_err(|e| {
        Error::io(
            format!("creating the restore directory {}", parent.display()),
            e,
        )
    })?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "restore".into());
    remove_stale_staging(&parent, &name);
    let staging = Staging {
        path: parent.join(format!(
            ".{name}.offsite-partial-{:08x}",
            rand::random::<u32>()
        )),
        armed: true,
    };
    opts.progress.total.store(manifest.size, Ordering::Relaxed);

    let index = repo.load_index(ids).await?;
    let list = repo.get_bytes(&manifest.list).await?;
    let plan = {
        let list_key = manifest.list.clone();
        let ids_list = codec::decode_reader(&list[..], ids.iter(), &list_key)?;
        build_plan(BufReader::new(ids_list), &list_key)?
    };
    drop(list);
    if opts.fallbacks.is_empty() {
        // Nothing else could serve a chunk no index names: fail before
        // downloading anything.
        fetch::unindexed(&index, &plan.wants, &manifest.list)?;
    }

    // A database (SQLite, or DuckDB with its .wal beside it) is restored to
    // `to` itself; side files go to `to` + their suffix.
    let single_file = matches!(manifest.kind, SourceKind::Sqlite | SourceKind::Duckdb)
        || (plan.entries.len() == 1 && matches!(plan.entries[0], Entry::File { .. }));
    let files = prepare(&staging.path, &plan.entries, single_file)?;
    let files = Arc::new(files);

    let sink = fetch::Sink {
        files: files.clone(),
        progress: &opts.progress,
        concurrency: opts.concurrency,
    };
    let fetched = fetch::fetch_all(repo, ids, index, plan.wants, &opts.fallbacks, &sink).await?;

    let staged = staging.path.clone();
    let kind = manifest.kind;
    let entries = plan.entries;
    let expected = manifest.sha256.clone();
    let files_for_check = files.clone();
    tokio::task::spawn_blocking(move || {
        finish_staged(&staged, &entries, &files_for_check, &expected, kind)
    })
    .await
    .map_err(|e| Error::io("restore", std::io::Error::other(e.to_string())))??;

    // A DuckDB .wal left beside `to` would be replayed onto the restored
    // database: it is moved aside too, even when `to` itself is absent.
    let stray_wal =
        kind == SourceKind::Duckdb && std::fs::symlink_metadata(with_suffix(to, ".wal")).is_ok();
    let moved_aside = if exists || stray_wal {
        move_aside(to, kind)?
    } else {
        Vec::new()
    };
    // Side files first: the database appearing at `to` completes the restore.
    if single_file {
        let base = staging.path.to_string_lossy().len();
        for path in files.iter().skip(1) {
            let suffix = path.to_string_lossy()[base..].to_string();
            std::fs::rename(path, with_suffix(to, &suffix)).map_err(|e| {
                Error::io(format!("moving the restored copy to {}", to.display()), e)
            })?;
        }
    }
    std::fs::rename(&staging.path, to)
        .map_err(|e| Error::io(format!("moving the restored copy to {}", to.display()), e))?;
    let mut staging = staging;
    staging.armed = false;
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(RestoreSummary {
        snapshot: manifest.id.clone(),
        path: to.to_path_buf(),
        bytes: manifest.size,
        moved_aside,
        duration: clock.elapsed(),
        damaged: fetched.damaged,
        damage_recorded: fetched.recorded,
        fetched_elsewhere: fetched.elsewhere,
    })
}

/// A restore killed outright (SIGKILL, power loss) cannot clean up after
/// itself; the next restore to the same place removes what it left. Only
/// names offsite itself makes are touched.
fn remove_stale_staging(dir: &Path, name: &str) {
    let prefix = format!(".{name}.offsite-partial-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        if file_name.starts_with(&prefix) {
            tracing::info!(path = %e.path().display(), "removing what an interrupted restore left");
            let path = e.path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
    }
}

fn build_plan(list: impl std::io::BufRead, key: &str) -> Result<Plan> {
    let mut entries = Vec::new();
    let mut wants = Vec::new();
    let mut file_offset = 0u64;
    let mut current: Option<u32> = None;
    parse_list(list, key, |item| {
        match item {
            ListItem::Entry(e) => {
                current = matches!(e, Entry::File { .. }).then_some(entries.len() as u32);
                file_offset = 0;
                entries.push(e);
            }
            ListItem::Chunk(id, len) => {
                let file = current.ok_or_else(|| Error::Corrupt {
                    key: key.to_string(),
                    message: "chunk line before any file".into(),
                })?;
                wants.push(Want {
                    id,
                    len,
                    file,
                    file_offset,
                });
                file_offset += len as u64;
            }
        }
        Ok(())
    })?;
    Ok(Plan { entries, wants })
}

/// Creates the staging tree; returns the staging path of each entry.
fn prepare(staging: &Path, entries: &[Entry], single_file: bool) -> Result<Vec<PathBuf>> {
    let io = |p: &Path, e| Error::io(format!("staging {}", p.display()), e);
    if !single_file {
        std::fs::create_dir(staging).map_err(|e| io(staging, e))?;
    }
    let mut paths = Vec::with_capacity(entries.len());
    let first = match entries.first() {
        Some(Entry::File { path, .. }) => path.clone(),
        _ => String::new(),
    };
    for (i, entry) in entries.iter().enumerate() {
        let (rel, path) = match entry {
            Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => {
                (path, path)
            }
        };
        if !single_file
            && (rel.starts_with('/') || rel.split('/').any(|s| s == ".." || s.is_empty()))
        {
            return Err(Error::Corrupt {
                key: "chunk list".into(),
                message: format!("unsafe path {rel:?}"),
            });
        }
        let dest = if single_file && i > 0 {
            // A side file of a database: its name is the database's plus a
            // suffix (".wal"), kept beside the staged database.
            match rel.strip_prefix(&first) {
                Some(suffix) if !suffix.is_empty() && !suffix.contains('/') => {
                    with_suffix(staging, suffix)
                }
                _ => {
                    return Err(Error::Corrupt {
                        key: "chunk list".into(),
                        message: format!("unexpected entry {rel:?} in a database snapshot"),
                    })
                }
            }
        } else if single_file {
            staging.to_path_buf()
        } else {
            staging.join(path)
        };
        match entry {
            Entry::Dir { .. } => std::fs::create_dir_all(&dest).map_err(|e| io(&dest, e))?,
            Entry::File { size, .. } => {
                let f = std::fs::File::create(&dest).map_err(|e| io(&dest, e))?;
                f.set_len(*size).map_err(|e| io(&dest, e))?;
            }
            Entry::Symlink { target, .. } => {
                #[cfg(unix)]
                std::os::unix::fs::symlink(target, &dest).map_err(|e| io(&dest, e))?;
                #[cfg(not(unix))]
                let _ = target;
            }
        }
        paths.push(dest);
    }
    Ok(paths)
}

/// Syncs, checksums and checks the staged copy, then applies modes and times.
fn finish_staged(
    staging: &Path,
    entries: &[Entry],
    files: &[PathBuf],
    expected: &str,
    kind: SourceKind,
) -> Result<()> {
    // Reading back for the checksum, syncing and the database's own check
    // each take about a second per GiB; they run side by side, and the
    // restore waits for all three before anything is renamed.
    let (sha, synced, checked) = std::thread::scope(|scope| {
        let sha = scope.spawn(|| sha256_of(entries, files));
        let synced = scope.spawn(|| sync_files(entries, files));
        let checked = check_database(staging, kind);
        (
            sha.join().expect("checksum thread"),
            synced.join().expect("sync thread"),
            checked,
        )
    });
    let got = sha?;
    if got != expected {
        return Err(Error::Verification(format!(
            "SHA-256 of the restored data is {got}, the manifest says {expected}"
        )));
    }
    checked?;
    synced?;
    for (entry, path) in entries.iter().zip(files).rev() {
        match entry {
            Entry::File { mode, mtime, .. } => {
                set_mode(path, *mode);
                if *mtime > 0 {
                    let t = std::time::UNIX_EPOCH + Duration::from_secs(*mtime as u64);
                    if let Ok(f) = std::fs::File::options().write(true).open(path) {
                        let _ = f.set_modified(t);
                    }
                }
            }
            Entry::Dir { mode, .. } => set_mode(path, *mode),
            Entry::Symlink { .. } => {}
        }
    }
    Ok(())
}

fn sha256_of(entries: &[Entry], files: &[PathBuf]) -> Result<String> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (entry, path) in entries.iter().zip(files) {
        if let Entry::File { .. } = entry {
            let mut f = std::fs::File::open(path).map_err(|e| Error::io("reading back", e))?;
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io("reading back", e))?;
                if n == 0 {
                    break;
                }
                sha.update(&buf[..n]);
            }
        }
    }
    Ok(hex::encode(sha.finalize()))
}

fn sync_files(entries: &[Entry], files: &[PathBuf]) -> Result<()> {
    for (entry, path) in entries.iter().zip(files) {
        if let Entry::File { .. } = entry {
            std::fs::File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("syncing the restored copy", e))?;
        }
    }
    Ok(())
}

/// Opens a restored database with its own engine: DuckDB must read it,
/// SQLite's `PRAGMA integrity_check` must say ok.
fn check_database(staging: &Path, kind: SourceKind) -> Result<()> {
    if kind == SourceKind::Duckdb {
        match crate::source::duckdb_lib::check(staging) {
            Ok(c) => tracing::info!(
                tables = c.tables,
                rows = c.rows,
                "DuckDB opened the restored database"
            ),
            Err(e @ Error::DuckdbUnavailable(_)) => return Err(e),
            Err(e) => {
                return Err(Error::Verification(format!(
                    "DuckDB cannot read the restored database: {e}"
                )))
            }
        }
    }
    if kind == SourceKind::Sqlite {
        let problems = sqlite::integrity_check(staging)?;
        if !problems.is_empty() {
            return Err(Error::Verification(format!(
                "PRAGMA integrity_check: {}",
                problems.into_iter().take(5).collect::<Vec<_>>().join("; ")
            )));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if mode != 0 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) {}

/// Moves `to` and its side files (SQLite's -wal/-shm/-journal, DuckDB's
/// .wal) to `<name>.offsite-old-<time>`.
fn move_aside(to: &Path, kind: SourceKind) -> Result<Vec<PathBuf>> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut moved = Vec::new();
    let suffixes: &[&str] = if kind == SourceKind::Duckdb {
        &["", ".wal"]
    } else {
        &["", "-wal", "-shm", "-journal"]
    };
    for suffix in suffixes.iter().copied() {
        let from = with_suffix(to, suffix);
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let name = to
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = to.with_file_name(format!("{name}.offsite-old-{stamp}{suffix}"));
        std::fs::rename(&from, &dest)
            .map_err(|e| Error::io(format!("moving {} aside", from.display()), e))?;
        moved.push(dest);
    }
    Ok(moved)
}
