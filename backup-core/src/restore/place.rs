//! Putting a verified staged copy in place of whatever is at the
//! destination, so that at every instant the path holds either the old
//! database with its own side files or the new, checked one: never a mix,
//! never nothing.
//!
//! Why it takes more than renames: a database is more than one name. SQLite
//! keeps committed work in `P-wal` (and a rollback in progress in
//! `P-journal`), DuckDB in `P.wal`, and each engine replays whatever valid
//! log lies beside whatever `P` it opens: a -wal file existing puts SQLite
//! in WAL mode whatever the header says, and DuckDB replays a foreign
//! `.wal` (tested: another database's WAL rows appear; its own WAL replayed
//! twice duplicates them). Two names cannot be switched by one rename, so
//! any order of renames has an instant where a new `P` sits beside the old
//! log or the old `P` without it. Instead the engine itself first folds
//! the old log into the old file (crash-safe by its own guarantees), after
//! which the old state is one file and one rename switches it.
//!
//! The steps (each a fail-point, `restore.<step>`), and what an
//! interruption at or during each leaves at `P`:
//!
//! 1. `keep_old`: the old files get unique names of their own,
//!    `P.offsite-old-<UTC ms>-<random>` (+ suffix), as hard links (a copy
//!    where the filesystem has none). For SQLite the non-empty `-wal` and
//!    `-journal` are linked too: SQLite deletes them after folding rather
//!    than truncating, so the kept log stays whole, and replaying it onto
//!    the folded kept file rewrites the same pages. For DuckDB the `.wal`
//!    is not linked before the fold: its log is logical, and replayed onto
//!    the folded file it would apply twice. Left: the old state, untouched,
//!    plus the new names (a rerun makes its own; both name the old file).
//! 2. `fold_old`: only when there is a non-empty log. SQLite opens `P`
//!    (rolling a hot journal back, or reading the WAL) and, closing as its
//!    last connection, checkpoints the WAL into `P` and deletes `-wal` and
//!    `-shm`; DuckDB opens `P` and runs `CHECKPOINT`, which removes `.wal`.
//!    Left: the old state, by SQLite's and DuckDB's crash safety.
//! 3. `move_side_files`: whatever is left beside `P` (`-shm`, an empty or
//!    stale `-wal`, `-journal`, `.wal`) moves to the kept names, never
//!    replacing anything. Left: the old state as one file.
//! 4. `rename_into_place`: one rename puts the new database at `P`. Left:
//!    the old file or the new one, nothing beside it.
//! 5. `rename_side_file`: only for a DuckDB snapshot with a `.wal` that
//!    could not be folded (`--no-database-check` with a libduckdb that
//!    cannot open it): its `.wal` follows. Left: the new database without
//!    its `.wal`'s work (DuckDB opens it as it was at its last
//!    checkpoint); a rerun completes it.
//!
//! The directory is fsynced after steps 1, 3 and 4, so a power cut never
//! persists the switch without the kept names.
//!
//! When the old database cannot be opened (the damaged file being replaced:
//! SQLite says "not a database" or "malformed", DuckDB cannot open it),
//! there is no old state to keep consistent: its files are kept exactly as
//! they were (step 1), its log is moved aside in step 3, and the new file
//! renamed in. An interruption between those leaves the old, unreadable
//! file without its log; a rerun finishes. When the fold is needed but
//! cannot be done for another reason (a lock, no write permission, a full
//! disk, a libduckdb too old for the old file), the restore stops with
//! [`Error::CannotReplace`] and removes the names it made: nothing changed.
//!
//! A destination that is a directory (a files snapshot) or a symlink is
//! renamed aside whole and the new tree renamed in: between the two renames
//! the path is absent. A stale `-wal`/`-shm` beside a missing `P` (left by
//! an older release's interrupted restore, say) is moved aside before the
//! new `P` appears, never replayed.
//!
//! Never: delete or overwrite a file (only names offsite made itself are
//! removed, and only while another name holds the same file), or leave a
//! side file of the old database beside the new one.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::failpoint;
use crate::source::{duckdb_lib, sqlite, SourceKind};

use super::with_suffix;

/// The side files an engine keeps beside a database, in the order they are
/// moved aside.
pub(super) fn side_suffixes(kind: SourceKind) -> &'static [&'static str] {
    match kind {
        SourceKind::Sqlite => &["-journal", "-wal", "-shm"],
        SourceKind::Duckdb => &[".wal"],
        SourceKind::Files => &[],
    }
}

/// Puts `staged` (and `staged.wal`, when `staged_wal`) at `to`; returns the
/// kept names of what was there.
pub(super) fn put(
    staged: &Path,
    to: &Path,
    kind: SourceKind,
    staged_wal: bool,
) -> Result<Vec<PathBuf>> {
    super::in_use::check_not_in_use(to, kind)?;
    let dir = parent_of(to);
    let mut aside = Aside::new(to);
    // A file is replaced by a file in one rename; anything else (a directory
    // tree, a symlink, a file where a tree goes) is renamed aside first.
    let staged_file = std::fs::symlink_metadata(staged).is_ok_and(|m| m.is_file());
    match std::fs::symlink_metadata(to) {
        Ok(m) if m.is_file() && staged_file => {
            let kept = keep_old(to, &mut aside, kind)?;
            sync_dir(&dir);
            if let Err(e) = fold_old(to, kind) {
                kept.undo();
                return Err(e);
            }
        }
        Ok(_) => {
            step("restore.keep_old", to)?;
            rename_noreplace(to, &aside.path(""))
                .map_err(|e| Error::io(format!("moving {} aside", to.display()), e))?;
        }
        Err(_) => {}
    }
    move_side_files(to, &aside, kind)?;
    sync_dir(&dir);
    step("restore.rename_into_place", to)?;
    std::fs::rename(staged, to)
        .map_err(|e| Error::io(format!("moving the restored copy to {}", to.display()), e))?;
    sync_dir(&dir);
    if staged_wal {
        step("restore.rename_side_file", to)?;
        let wal = with_suffix(to, ".wal");
        rename_noreplace(&with_suffix(staged, ".wal"), &wal)
            .map_err(|e| Error::io(format!("moving the restored copy to {}", wal.display()), e))?;
        sync_dir(&dir);
    }
    Ok(aside.existing(kind))
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn step(name: &str, to: &Path) -> Result<()> {
    failpoint::hit(name).map_err(|e| Error::io(format!("replacing {}", to.display()), e))
}

/// The unique kept name of the old files: `<name>.offsite-old-<time>-<random>`.
struct Aside {
    to: PathBuf,
    base: PathBuf,
}

impl Aside {
    fn new(to: &Path) -> Aside {
        let mut a = Aside {
            to: to.to_path_buf(),
            base: PathBuf::new(),
        };
        a.rename();
        a
    }

    /// Picks another name (the random part makes a collision unlikely; the
    /// create-if-absent operations make one harmless).
    fn rename(&mut self) {
        let name = self
            .to
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        self.base = self.to.with_file_name(format!(
            "{name}.offsite-old-{stamp}-{:06x}",
            rand::random::<u32>() & 0xff_ffff
        ));
    }

    fn path(&self, suffix: &str) -> PathBuf {
        with_suffix(&self.base, suffix)
    }

    fn existing(&self, kind: SourceKind) -> Vec<PathBuf> {
        std::iter::once("")
            .chain(side_suffixes(kind).iter().copied())
            .map(|s| self.path(s))
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .collect()
    }
}

/// Names made by [`keep_old`], removed again if the restore stops before
/// the switch.
#[derive(Default)]
struct Kept(Vec<(PathBuf, PathBuf)>);

impl Kept {
    fn undo(self) {
        for (kept, original) in self.0 {
            if same_file(&kept, &original) {
                let _ = std::fs::remove_file(&kept);
            }
        }
    }
}

/// Step 1: links (or copies) the old database, and SQLite's non-empty logs,
/// to the kept names.
fn keep_old(to: &Path, aside: &mut Aside, kind: SourceKind) -> Result<Kept> {
    step("restore.keep_old", to)?;
    let mut kept = Kept::default();
    let mut tries = 0;
    loop {
        match keep(to, &aside.path("")) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 5 => {
                tries += 1;
                aside.rename();
            }
            Err(e) => return Err(Error::io(format!("keeping {}", to.display()), e)),
        }
    }
    kept.0.push((aside.path(""), to.to_path_buf()));
    if kind == SourceKind::Sqlite {
        for suffix in ["-wal", "-journal"] {
            let from = with_suffix(to, suffix);
            if non_empty_file(&from) {
                let dest = aside.path(suffix);
                if let Err(e) = keep(&from, &dest) {
                    kept.undo();
                    return Err(Error::io(format!("keeping {}", from.display()), e));
                }
                kept.0.push((dest, from));
            }
        }
    }
    Ok(kept)
}

/// A second name for `from` at `to` (which must not exist): a hard link, or
/// a synced copy on a filesystem without them.
fn keep(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(e) => {
            tracing::info!(error = %e, from = %from.display(), "no hard link; copying instead");
            let mut src = std::fs::File::open(from)?;
            let mut dst = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            std::io::copy(&mut src, &mut dst)?;
            dst.sync_all()
        }
    }
}

fn non_empty_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0)
}

/// Step 2: the engine folds the old database's log into it.
fn fold_old(to: &Path, kind: SourceKind) -> Result<()> {
    step("restore.fold_old", to)?;
    match kind {
        SourceKind::Sqlite
            if non_empty_file(&with_suffix(to, "-wal"))
                || non_empty_file(&with_suffix(to, "-journal")) =>
        {
            fold_sqlite(to)
        }
        SourceKind::Duckdb if non_empty_file(&with_suffix(to, ".wal")) => fold_duckdb(to),
        _ => Ok(()),
    }
}

fn cannot(to: &Path, reason: String) -> Error {
    Error::CannotReplace {
        path: to.to_path_buf(),
        reason,
    }
}

fn fold_sqlite(to: &Path) -> Result<()> {
    use rusqlite::{Connection, ErrorCode, OpenFlags};
    if !sqlite::has_sqlite_header(to) {
        return damaged(to, "it is not a SQLite database");
    }
    let run = || -> rusqlite::Result<()> {
        let conn = Connection::open_with_flags(
            to,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The first read rolls back a hot journal or opens the WAL; closing
        // as the last connection checkpoints the WAL and deletes it.
        conn.query_row("PRAGMA schema_version", [], |_| Ok(()))?;
        conn.close().map_err(|(_, e)| e)
    };
    match run() {
        Ok(()) => {}
        Err(rusqlite::Error::SqliteFailure(f, m))
            if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
        {
            return damaged(to, &m.unwrap_or_else(|| f.to_string()));
        }
        Err(e) => {
            return Err(cannot(
                to,
                format!("SQLite cannot fold its -wal/-journal into it first: {e}"),
            ))
        }
    }
    for suffix in ["-wal", "-journal"] {
        if non_empty_file(&with_suffix(to, suffix)) {
            return Err(cannot(
                to,
                format!(
                    "SQLite left its {suffix} in place after folding it (read-only file, or \
                     another process opened it meanwhile)"
                ),
            ));
        }
    }
    Ok(())
}

fn fold_duckdb(to: &Path) -> Result<()> {
    let mut db = match duckdb_lib::Database::open(to, false) {
        Ok(db) => db,
        Err(e @ Error::DuckdbUnavailable(_)) => return Err(e),
        Err(e) => match duckdb_lib::explain_open_failure(to, e) {
            Error::DuckdbVersion {
                written_by,
                storage_version,
                library,
                ..
            } => {
                return Err(cannot(
                    to,
                    format!(
                        "its .wal holds work not yet in the database, and this libduckdb \
                         ({library}) cannot open a database written by DuckDB {written_by} \
                         (storage version {storage_version}) to fold it in; run CHECKPOINT on \
                         it with the application's DuckDB, or restore to another path"
                    ),
                ))
            }
            e => return damaged(to, &e.to_string()),
        },
    };
    db.execute("CHECKPOINT").map_err(|e| {
        cannot(
            to,
            format!("DuckDB cannot fold its .wal into it first: {e}"),
        )
    })?;
    drop(db);
    if non_empty_file(&with_suffix(to, ".wal")) {
        return Err(cannot(
            to,
            "DuckDB left its .wal in place after CHECKPOINT".into(),
        ));
    }
    Ok(())
}

/// The old database cannot be opened: its log is moved aside as it is.
fn damaged(to: &Path, why: &str) -> Result<()> {
    tracing::warn!(
        path = %to.display(),
        reason = why,
        "the database being replaced cannot be opened; its files are kept as they were"
    );
    Ok(())
}

/// Step 3: moves every side file left beside `to` to the kept names.
fn move_side_files(to: &Path, aside: &Aside, kind: SourceKind) -> Result<()> {
    step("restore.move_side_files", to)?;
    for suffix in side_suffixes(kind) {
        let from = with_suffix(to, suffix);
        if std::fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let dest = aside.path(suffix);
        let moved = if same_file(&from, &dest) {
            // Step 1 kept it under `dest` already.
            std::fs::remove_file(&from)
        } else {
            rename_noreplace(&from, &dest)
        };
        moved.map_err(|e| Error::io(format!("moving {} aside", from.display()), e))?;
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}

/// Renames `from` to `to`, failing if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
        };
        let (f, t) = (c(from)?, c(to)?);
        // The system call, not libc's renameat2(): the musl that Rust's
        // x86_64-unknown-linux-musl target links (1.2.3) has no such
        // function, so a static build would not link.
        // SAFETY: two NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                f.as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // Filesystems without RENAME_NOREPLACE: check, then rename (the
        // kept names are random, so nobody else creates them meanwhile).
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
            return Err(e);
        }
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

fn sync_dir(dir: &Path) {
    let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
    if let Err(e) = synced {
        tracing::debug!(dir = %dir.display(), error = %e, "cannot fsync the directory");
    }
}
