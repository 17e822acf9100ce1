//! Is another process using the database a restore is about to replace?
//!
//! An application that keeps writing during `restore --force` writes into
//! the file being moved aside, and its rows vanish from the restored
//! database. So before anything at the destination changes, two probes look
//! for another user of the database or its side files:
//! - open descriptors, from `/proc/<pid>/fd` (Linux): every process of this
//!   PID namespace that this user may inspect (root sees all). This catches
//!   an idle connection, which holds no lock in SQLite's rollback-journal
//!   mode;
//! - POSIX locks (`F_GETLK` for a write lock over each whole file), which the
//!   kernel keeps per file, so they are seen across containers sharing the
//!   file: a SQLite connection in WAL mode holds a shared lock on the
//!   `-shm` (its DMS byte) for as long as it is open; DuckDB holds a lock on
//!   the database file for as long as it has it open; SQLite transactions
//!   lock the database file.
//!
//! Not seen: an idle rollback-mode connection in another PID namespace
//! (another container), and processes of other users when offsite is not
//! root, unless they hold a lock. Between the check and the rename there is
//! a window of milliseconds; an application started in it is the operator's
//! doing (the restore hooks exist to stop it for the whole switch).
//!
//! Never: lock, write or keep open anything it probes. (Closing a probe's
//! descriptor drops this process's own POSIX locks on that file, so the
//! restore itself never has the destination open while it probes.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::source::SourceKind;

use super::with_suffix;

/// Fails with [`Error::InUse`] if another process has `to` or one of its
/// side files open (or locked). A missing `to`, and directories, pass.
pub fn check_not_in_use(to: &Path, kind: SourceKind) -> Result<()> {
    let holders = holders(to, kind);
    if holders.is_empty() {
        return Ok(());
    }
    Err(Error::InUse {
        path: to.to_path_buf(),
        holders: holders.join("; "),
    })
}

/// The database and its side files that exist as regular files.
fn family(to: &Path, kind: SourceKind) -> Vec<PathBuf> {
    std::iter::once("")
        .chain(super::place::side_suffixes(kind).iter().copied())
        .map(|s| with_suffix(to, s))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect()
}

/// One line per process (or lock without a known process) using the files.
fn holders(to: &Path, kind: SourceKind) -> Vec<String> {
    let files = family(to, kind);
    if files.is_empty() {
        return Vec::new();
    }
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // pid -> (files it has open, files it holds a lock on); pid 0 for locks
    // whose holder is not visible from here.
    let mut by_pid: BTreeMap<i64, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (pid, file) in open_by_others(&files) {
        let open = &mut by_pid.entry(pid).or_default().0;
        if !open.contains(&name(&file)) {
            open.push(name(&file));
        }
    }
    for file in &files {
        if let Some(pid) = lock_holder(file) {
            by_pid.entry(pid.max(0)).or_default().1.push(name(file));
        }
    }
    by_pid
        .into_iter()
        .map(|(pid, (open, locked))| {
            let mut what = Vec::new();
            if !open.is_empty() {
                what.push(format!("has {} open", open.join(", ")));
            }
            if !locked.is_empty() {
                what.push(format!("holds locks on {}", locked.join(", ")));
            }
            let who = if pid > 0 {
                format!("pid {pid} ({})", comm(pid))
            } else {
                "a process not visible from here (another container?)".to_string()
            };
            format!("{who} {}", what.join(" and "))
        })
        .collect()
}

fn comm(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// (pid, file) for every descriptor of another process open on one of `files`.
#[cfg(target_os = "linux")]
fn open_by_others(files: &[PathBuf]) -> Vec<(i64, PathBuf)> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let ids: HashSet<(u64, u64)> = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let me = std::process::id() as i64;
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Processes this user may not inspect, and ones that just exited.
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            // stat follows the magic link to the open file itself.
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if ids.contains(&(m.dev(), m.ino())) {
                if let Some(f) = files.iter().find(|f| {
                    std::fs::metadata(f).is_ok_and(|x| x.dev() == m.dev() && x.ino() == m.ino())
                }) {
                    out.push((pid, f.clone()));
                }
            }
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
fn open_by_others(_: &[PathBuf]) -> Vec<(i64, PathBuf)> {
    Vec::new()
}

/// The pid of a process holding a POSIX or OFD lock on any byte of `file`
/// (-1 or 0 when the kernel cannot say which), if any.
#[cfg(unix)]
fn lock_holder(file: &Path) -> Option<i64> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).ok()?;
    // SAFETY: a zeroed flock is valid for every field; F_GETLK fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0; // the whole file, including SQLite's lock bytes at 1 GiB
                  // SAFETY: a valid descriptor and a pointer to a live flock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc != 0 || i32::from(fl.l_type) == libc::F_UNLCK {
        return None;
    }
    Some(fl.l_pid as i64)
}

#[cfg(not(unix))]
fn lock_holder(_: &Path) -> Option<i64> {
    None
}
