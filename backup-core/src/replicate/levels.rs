//! Merged levels: the steps of each window (30 s for level 1, 5 min for
//! level 2, aligned to the epoch) merged into one object holding the
//! newest copy of every page they changed, so a restore reads one object
//! per window instead of one per step.
//!
//! The replicator cannot read back what it uploaded (a backup host holds no
//! data key), so each open window keeps a spool on local disk: the pages of
//! its steps appended to `replicate-<source>-l<level>.spool` in the state
//! directory, and in memory only where each page's newest copy lies (16
//! bytes a page changed, never the database's size). A window that would
//! hold more than [`object::MAX_PAGES`] pages is dropped (restores use the
//! level below). Killed, a spool is only stale: the next run starts new
//! ones (a new base), and a merged object is only ever published after all
//! of its steps were queued.
//!
//! Never: publish a merged object for steps it does not hold, or keep page
//! contents in memory beyond the window being closed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::object::{self, MAX_PAGES};
use super::wal::Change;

/// A closed window's merged content.
#[derive(Debug)]
pub struct Merged {
    pub level: u8,
    pub first: u64,
    pub last: u64,
    pub at: DateTime<Utc>,
    pub runs: Vec<(u32, u32)>,
    pub size_pages: u32,
    pub page_size: u32,
    /// The pages `runs` names, concatenated.
    pub pages: Vec<u8>,
}

struct Window {
    level: u8,
    span: Duration,
    /// Spools are `<stem><window end>.spool`: each window its own file, so
    /// a closed window is merged while the next one fills.
    stem: PathBuf,
    open: Option<Open>,
}

struct Open {
    path: PathBuf,
    spool: File,
    len: u64,
    ends: DateTime<Utc>,
    first: u64,
    last: u64,
    at: DateTime<Utc>,
    size_pages: u32,
    page_size: u32,
    newest: BTreeMap<u32, u64>,
}

/// Every level's window.
pub struct Windows {
    windows: Vec<Window>,
}

impl Windows {
    pub fn new(state_dir: &Path, source: &str, spans: &[Duration]) -> Windows {
        let windows = (spans.iter().enumerate())
            .map(|(n, span)| Window {
                level: n as u8 + 1,
                span: *span,
                stem: state_dir.join(format!("replicate-{source}-l{}-", n + 1)),
                open: None,
            })
            .collect();
        // Spools a killed run left are only stale.
        let prefix = format!("replicate-{source}-l");
        if let Ok(dir) = std::fs::read_dir(state_dir) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && name.ends_with(".spool") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Windows { windows }
    }

    /// Adds step `n` to every window (opening windows as needed). Call
    /// [`Windows::close`] first, so a step lands in the window of its time.
    pub fn add(&mut self, n: u64, change: &Change) -> std::io::Result<()> {
        for w in &mut self.windows {
            if w.open.is_none() {
                let ends = super::next_boundary(change.at, w.span);
                let mut name = w.stem.clone().into_os_string();
                name.push(format!("{}.spool", ends.timestamp()));
                let path = PathBuf::from(name);
                w.open = Some(Open {
                    spool: spool_file(&path)?,
                    path,
                    len: 0,
                    ends,
                    first: n,
                    last: n,
                    at: change.at,
                    size_pages: change.size_pages,
                    page_size: change.page_size,
                    newest: BTreeMap::new(),
                });
            }
            let open = w.open.as_mut().expect("opened");
            if open.page_size != change.page_size || n != open.last + 1 && n != open.first {
                drop_open(&mut w.open); // cannot be merged: the level below serves
                continue;
            }
            let mut pages = Vec::with_capacity(change.pages.len() * change.page_size as usize);
            for (pgno, data) in &change.pages {
                open.newest.insert(*pgno, open.len + pages.len() as u64);
                pages.extend_from_slice(data);
            }
            open.spool.write_all(&pages)?;
            open.len += pages.len() as u64;
            open.last = n;
            open.at = change.at;
            open.size_pages = change.size_pages;
            open.newest.retain(|p, _| *p <= change.size_pages);
            if open.newest.len() > MAX_PAGES as usize {
                drop_open(&mut w.open);
            }
        }
        Ok(())
    }

    /// The windows that ended by `now` (every open one with `all`), to be
    /// merged ([`Closed::merge`], which may run elsewhere). A window of a
    /// single step is not published (its step is the object).
    pub fn close(&mut self, now: DateTime<Utc>, all: bool) -> Vec<Closed> {
        let mut out = Vec::new();
        for w in &mut self.windows {
            let ended = w.open.as_ref().is_some_and(|o| all || now >= o.ends);
            if !ended {
                continue;
            }
            let open = w.open.take().expect("open");
            match open.last > open.first {
                true => out.push(Closed {
                    level: w.level,
                    open,
                }),
                false => {
                    let _ = std::fs::remove_file(&open.path);
                }
            }
        }
        out
    }

    /// Drops every open window (a new base starts new ones).
    pub fn reset(&mut self) {
        for w in &mut self.windows {
            drop_open(&mut w.open);
        }
    }
}

/// A window that ended, its pages still in its spool.
pub struct Closed {
    level: u8,
    open: Open,
}

impl Closed {
    /// The newest copy of every page the window's steps changed; the spool
    /// is removed.
    pub fn merge(self) -> std::io::Result<Merged> {
        let path = self.open.path.clone();
        let merged = merge(self.level, self.open);
        let _ = std::fs::remove_file(&path);
        merged
    }
}

fn drop_open(open: &mut Option<Open>) {
    if let Some(o) = open.take() {
        let _ = std::fs::remove_file(&o.path);
    }
}

fn spool_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

fn merge(level: u8, open: Open) -> std::io::Result<Merged> {
    let page = open.page_size as usize;
    let mut pages = vec![0u8; open.newest.len() * page];
    for ((_, offset), slot) in open.newest.iter().zip(pages.chunks_exact_mut(page)) {
        open.spool.read_exact_at(slot, *offset)?;
    }
    Ok(Merged {
        level,
        first: open.first,
        last: open.last,
        at: open.at,
        runs: object::runs_of(open.newest.keys().copied()),
        size_pages: open.size_pages,
        page_size: open.page_size,
        pages,
    })
}
