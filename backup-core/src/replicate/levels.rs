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
    path: PathBuf,
    open: Option<Open>,
}

struct Open {
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
                path: state_dir.join(format!("replicate-{source}-l{}.spool", n + 1)),
                open: None,
            })
            .collect();
        Windows { windows }
    }

    /// Adds step `n` to every window (opening windows as needed). Call
    /// [`Windows::close`] first, so a step lands in the window of its time.
    pub fn add(&mut self, n: u64, change: &Change) -> std::io::Result<()> {
        for w in &mut self.windows {
            if w.open.is_none() {
                w.open = Some(Open {
                    spool: spool_file(&w.path)?,
                    len: 0,
                    ends: super::next_boundary(change.at, w.span),
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
                w.open = None; // cannot be merged: the level below serves
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
                w.open = None;
            }
        }
        Ok(())
    }

    /// The windows that ended by `now` (every open one with `all`), merged.
    /// A window of a single step is not published (its step is the object).
    pub fn close(&mut self, now: DateTime<Utc>, all: bool) -> Vec<std::io::Result<Merged>> {
        let mut out = Vec::new();
        for w in &mut self.windows {
            let ended = w.open.as_ref().is_some_and(|o| all || now >= o.ends);
            if !ended {
                continue;
            }
            let open = w.open.take().expect("open");
            if open.last > open.first {
                out.push(merge(w.level, open));
            }
        }
        out
    }

    /// Drops every open window (a new base starts new ones).
    pub fn reset(&mut self) {
        for w in &mut self.windows {
            w.open = None;
            let _ = std::fs::remove_file(&w.path);
        }
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
