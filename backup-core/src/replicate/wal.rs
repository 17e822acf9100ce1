//! Following a live SQLite database's WAL, for replication: which pages
//! changed between two committed states, read at O(pages changed).
//!
//! How frames are kept from being lost. SQLite moves WAL frames into the
//! database file (a checkpoint) and then starts the WAL over (a restart);
//! frames a follower has not read would be gone. A reader inside a read
//! transaction prevents both: a checkpoint never copies frames past the
//! oldest reader's mark, and a restart needs every reader off the WAL
//! (a reader whose snapshot is the database file alone, SQLite's read
//! slot 0, blocks all copying instead, so the file keeps its state).
//! The [`Follower`] therefore always holds one read transaction, and moves
//! forward by beginning the next one on a second connection *before* it
//! ends the first: no instant exists at which nothing is held. Each
//! transaction's exact position (WAL salt and last frame) comes from
//! `sqlite3_snapshot_get`, so the frames read are exactly those between
//! the two snapshots, and each frame is checked against the WAL's own
//! salt and cumulative checksum.
//!
//! A restart can still happen while the held reader is on slot 0 (it began
//! when every frame was already in the database file); then the file holds
//! exactly the held state and the new WAL's frames are changes to it. Any
//! other change of salt, a checkpoint sequence that jumped, a database or
//! WAL file replaced (a restore put another file at the path), a page size
//! that changed or a database leaving WAL mode is [`Step::Lost`]: the
//! caller takes a new full snapshot; nothing is guessed.
//!
//! Exact seconds. A snapshot taken while the writer lock is held (the
//! `Gate`: `BEGIN IMMEDIATE` on a third connection, which writes nothing)
//! is the state at every instant the lock was held, so taking the lock a
//! moment before a second's boundary and the snapshot after it gives the
//! state at that boundary exactly. Writers wait for the lock for that
//! moment (a few milliseconds). When the lock cannot be had in time (the
//! application holds a long write transaction, or its own FULL/RESTART/
//! TRUNCATE checkpoint holds the lock while waiting for readers), the
//! position is read just before the boundary and again after it: the same
//! position means no commit crossed the boundary, and the state is still
//! the boundary's exactly; else the snapshot is labelled with the instant
//! it began (exact for that instant, up to an interval late for the
//! boundary).
//!
//! Bounded WAL. Holding a reader forever would keep the WAL from ever
//! starting over; so when the WAL has grown past its limit, [`Follower`]
//! checkpoints (PASSIVE) up to its own reader, and, under the writer lock,
//! once more up to the end, after which it holds a slot 0 reader: the next
//! writer starts the WAL over. The application's own checkpoints of every
//! mode keep working: a PASSIVE one copies up to our reader (at most an
//! interval old); FULL, RESTART and TRUNCATE wait (their busy timeout)
//! until the next move, which never waits for them. An application that
//! checkpoints itself keeps the WAL under the limit, so the follower never
//! checkpoints beside it; one that relies on SQLite's automatic PASSIVE
//! checkpoints gets the follower's. SQLite refuses a checkpoint (BUSY, at
//! once) while another runs, so a checkpoint the application starts in the
//! very milliseconds the follower's runs is refused and must be retried,
//! as with any two checkpointers.
//!
//! Never: write to the database (the two read-write connections only take
//! and release the writer lock and run PASSIVE checkpoints, with
//! checkpoint-on-close off), hold the writer lock longer than a few
//! milliseconds, or report a change set that was not read between two
//! exact positions.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// The WAL header's length, and a frame header's.
const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// Pages changed in one step at most; more is taken as a new full snapshot
/// (it costs about what it changed anyway, and memory stays bounded).
pub const MAX_STEP_PAGES: usize = 16_384;

/// A read transaction's exact position, as `sqlite3_snapshot_get` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The WAL's salts, as stored (the WAL generation).
    pub salt: [u8; 8],
    /// The last frame the transaction sees (0: none, the database file).
    pub frame: u32,
    /// The database's size in pages in that state.
    pub pages: u32,
    pub page_size: u32,
    /// SQLite's count of commits (the WAL index's `iChange`), which a
    /// checkpoint or a restart of the WAL leaves as it is.
    pub commits: u32,
}

/// The state of the database as one step found it.
#[derive(Debug)]
pub struct Change {
    /// Changed pages (number, content) in ascending order, each `page_size` bytes.
    pub pages: Vec<(u32, Vec<u8>)>,
    /// The database's size in pages after the change.
    pub size_pages: u32,
    pub page_size: u32,
    /// The instant the state holds: every transaction committed before it
    /// is in it, none after.
    pub at: DateTime<Utc>,
    /// Whether `at` is exact for the boundary asked for (the writer lock was
    /// held across it).
    pub exact: bool,
}

impl Change {
    /// These changes followed by `next`'s, as one step from this step's
    /// starting state to `next`'s state: `next`'s copy of a page wins, and
    /// pages past `next`'s size are dropped. Both back when the page size
    /// differs (they cannot be one object).
    pub fn then(self, next: Change) -> Result<Change, (Change, Change)> {
        if self.page_size != next.page_size {
            return Err((self, next));
        }
        let size = next.size_pages;
        let mut pages = Vec::with_capacity(self.pages.len() + next.pages.len());
        let mut older = self.pages.into_iter().peekable();
        for (n, page) in next.pages {
            while let Some(o) = older.next_if(|(m, _)| *m < n) {
                pages.push(o);
            }
            older.next_if(|(m, _)| *m == n);
            pages.push((n, page));
        }
        pages.extend(older);
        pages.retain(|(n, _)| *n <= size);
        Ok(Change { pages, ..next })
    }
}

/// What one step of the [`Follower`] found.
#[derive(Debug)]
pub enum Step {
    /// Nothing committed since the last step (the state holds at `at`).
    Same {
        at: DateTime<Utc>,
        exact: bool,
    },
    Changed(Change),
    /// The WAL can no longer be followed from the held state; a full
    /// snapshot must be taken (the held reader is at the current state).
    Lost(String),
}

impl Step {
    /// This boundary's step with the changes `held` from the upkeep after
    /// the last boundary put in front of it, so that it runs from the last
    /// published state; first, the held changes alone when they cannot be
    /// one object with it (the page size changed). A lost WAL drops them:
    /// a new base follows.
    pub fn after(self, held: Option<Change>) -> (Option<Change>, Step) {
        match (held, self) {
            (None, step) | (Some(_), step @ Step::Lost(_)) => (None, step),
            // Nothing since the upkeep: its state is the boundary's.
            (Some(held), Step::Same { at, exact }) => {
                (None, Step::Changed(Change { at, exact, ..held }))
            }
            (Some(held), Step::Changed(next)) => match held.then(next) {
                Ok(both) => (None, Step::Changed(both)),
                Err((held, next)) => (Some(held), Step::Changed(next)),
            },
        }
    }
}

fn source_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Whether `path` is a SQLite database in WAL mode (its header says so:
/// bytes 18 and 19 are 2 in WAL mode), without opening it.
pub fn is_wal_mode(path: &Path) -> Result<bool> {
    let file = File::open(path).map_err(|e| source_error(path, e))?;
    let mut header = [0u8; 20];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| source_error(path, format!("cannot read its header: {e}")))?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(Error::NotSqlite(path.to_path_buf()));
    }
    Ok(header[18] == 2 && header[19] == 2)
}

/// Follows one database's WAL (see the module doc).
pub struct Follower {
    path: PathBuf,
    // Field order is drop order: the read-write connections close first,
    // while a reader is still open, so neither is ever the last connection.
    gate: Connection,
    checkpointer: Connection,
    held: Connection,
    spare: Connection,
    wal: File,
    files: [(u64, u64); 2],
    position: Position,
    /// The instant the held state holds (labelled as its step was).
    at: DateTime<Utc>,
    /// The cumulative checksum after `position.frame` (or the WAL header's).
    checksum: Option<(u32, u32)>,
    wal_limit: u64,
    /// Since when the writer lock could not be had at a boundary.
    gate_missed: Option<Instant>,
    /// How much earlier than `lead` the gate asks, learned from late
    /// wake-ups (see `take_gate`).
    slack: Duration,
}

/// The most the gate asks for the writer lock ahead of its lead.
const MAX_SLACK: Duration = Duration::from_millis(20);

/// How long the writer lock may stay out of reach at every boundary before
/// the follower lets go of its readers: an application checkpoint of mode
/// FULL, RESTART or TRUNCATE holds that lock while it waits for readers,
/// and must not wait on us.
pub const YIELD_AFTER: Duration = Duration::from_secs(2);

/// What [`Step::Lost`] says when the follower let go for the application.
pub const YIELDED: &str = "the application held the writer lock for long (its own checkpoint?): \
                           the replicator let go of the database for it";

impl Follower {
    /// Opens `path` (which must be in WAL mode) and holds a read transaction
    /// at its current state; `wal_limit` is the WAL size past which the
    /// follower checkpoints.
    pub fn open(path: &Path, wal_limit: u64) -> Result<Follower> {
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // The gate never waits inside SQLite: it tries, and its caller
        // decides how long (see take_gate).
        let gate = open_conn(path, rw, Duration::ZERO)?;
        let checkpointer = open_conn(path, rw, Duration::from_millis(5))?;
        let held = crate::source::sqlite::open_read_only(path)?;
        let spare = crate::source::sqlite::open_read_only(path)?;
        let mode: String = gate
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| source_error(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(source_error(
                path,
                format!("not in WAL mode (journal_mode={mode})"),
            ));
        }
        let position = begin(path, &held)?;
        let at = Utc::now();
        let wal_path = wal_path(path);
        let wal = File::open(&wal_path).map_err(|e| source_error(&wal_path, e))?;
        let files = [file_id(path)?, file_id(&wal_path)?];
        let mut follower = Follower {
            path: path.to_path_buf(),
            gate,
            checkpointer,
            held,
            spare,
            wal,
            files,
            position,
            at,
            checksum: None,
            wal_limit,
            gate_missed: None,
            slack: Duration::ZERO,
        };
        follower.checksum = follower.checksum_at(position)?;
        Ok(follower)
    }

    /// Ends both read transactions, so nothing of this follower holds the
    /// WAL any more (before it is dropped for an application's checkpoint).
    pub fn let_go(&mut self) {
        let _ = self.spare.execute_batch("COMMIT");
        let _ = self.held.execute_batch("COMMIT");
    }

    /// The held read transaction's connection: a full snapshot read through
    /// it is exactly the state [`Follower::position`] names.
    pub fn held(&self) -> &Connection {
        &self.held
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// The instant the held state holds: every transaction committed
    /// before it is in it.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Moves the held transaction to the current state and returns what
    /// changed. With `boundary`, the writer lock is taken `lead` before it
    /// and the snapshot after it, so the state is the boundary's exactly.
    pub fn step(&mut self, boundary: Option<DateTime<Utc>>, lead: Duration) -> Result<Step> {
        if let Some(why) = self.replaced() {
            return Ok(Step::Lost(why));
        }
        let gate = match boundary {
            Some(b) => self.take_gate(b, lead),
            None => Gate::Missed,
        };
        if boundary.is_some() {
            match gate {
                Gate::Held => self.gate_missed = None,
                Gate::Before(_) | Gate::Missed => {
                    let since = *self.gate_missed.get_or_insert_with(Instant::now);
                    if since.elapsed() >= YIELD_AFTER {
                        // The caller drops this follower (all its readers)
                        // and takes a new base.
                        return Ok(Step::Lost(YIELDED.into()));
                    }
                }
            }
        }
        let begun = begin(&self.path, &self.spare);
        let at = Utc::now();
        if gate == Gate::Held {
            let _ = self.gate.execute_batch("ROLLBACK");
        }
        let next = begun?;
        // No commit between the two reads (a checkpoint, even one that
        // started the WAL over, changes no state).
        let same = |p: &Position| (p.commits, p.pages) == (next.commits, next.pages);
        let exact = boundary.is_some_and(|b| at >= b)
            && match &gate {
                Gate::Held => true,
                Gate::Before(p) => same(p),
                Gate::Missed => false,
            };
        let at = if exact {
            boundary.expect("a boundary")
        } else {
            at
        };
        // A failure to read the frames must never leave the position moved
        // past pages not reported: it is a lost WAL (a new base follows).
        let found = self
            .changes(next)
            .or_else(|e| Ok::<_, Error>(Found::Lost(format!("reading the WAL failed: {e}"))));
        // The older transaction ends only now: until the pages were read,
        // it kept their frames in the WAL.
        let _ = self.held.execute_batch("COMMIT");
        std::mem::swap(&mut self.held, &mut self.spare);
        let previous = std::mem::replace(&mut self.position, next);
        self.at = at;
        self.checksum = match &found {
            Ok(Found::Frames { checksum, .. }) => *checksum,
            _ => self.checksum_at(next).unwrap_or(None),
        };
        let step = match found? {
            Found::Lost(why) => Step::Lost(why),
            Found::Frames { pages, .. } if pages.is_empty() && previous.pages == next.pages => {
                Step::Same { at, exact }
            }
            Found::Frames { pages, .. } => Step::Changed(Change {
                pages,
                size_pages: next.pages,
                page_size: next.page_size,
                at,
                exact,
            }),
        };
        Ok(step)
    }

    /// Whether the database or its WAL at the path is no longer the file
    /// the connections have open.
    fn replaced(&self) -> Option<String> {
        let wal_path = wal_path(&self.path);
        match (file_id(&self.path), file_id(&wal_path)) {
            (Ok(db), Ok(wal)) if [db, wal] == self.files => None,
            (Ok(db), _) if db != self.files[0] => {
                Some("the database file was replaced (a restore?)".into())
            }
            _ => Some("the WAL file was replaced or removed".into()),
        }
    }

    /// Takes the writer lock, waiting until `lead` before `boundary` to
    /// ask and at most until just before it to get it; holds it past the
    /// boundary. When it cannot be had (the application holds it: a write,
    /// or its own checkpoint), the newest position read wholly before the
    /// boundary is kept instead: a snapshot after the boundary at the same
    /// position saw no commit across it. Every instant is taken *after*
    /// the call it dates (a lock got, a read done), so a late thread (a
    /// busy machine) can only make the result `Missed`, never a state of
    /// after the boundary labelled as the boundary's.
    ///
    /// A busy machine wakes the thread late, sometimes past the boundary;
    /// so a late wake-up makes the next ask earlier (twice as late, up to
    /// [`MAX_SLACK`]), and each timely one halves that again: on a quiet
    /// machine the lock is held about `lead`.
    fn take_gate(&mut self, boundary: DateTime<Utc>, lead: Duration) -> Gate {
        let until = |t: DateTime<Utc>| (t - Utc::now()).to_std().unwrap_or_default();
        let lead = chrono::Duration::from_std(lead + self.slack).unwrap_or_default();
        let wake = boundary - lead;
        std::thread::sleep(until(wake));
        let late = (Utc::now() - wake).to_std().unwrap_or_default();
        self.slack = match late > Duration::from_micros(300) {
            true => (late * 2).max(self.slack / 2).min(MAX_SLACK),
            false => self.slack / 2,
        };
        let last_try = boundary - chrono::Duration::microseconds(300);
        let mut before = None;
        loop {
            if self.gate.execute_batch("BEGIN IMMEDIATE").is_ok() {
                if Utc::now() < boundary {
                    std::thread::sleep(until(boundary));
                    return Gate::Held;
                }
                // Got only after the boundary: commits may have come between.
                let _ = self.gate.execute_batch("ROLLBACK");
                break;
            }
            let read = begin(&self.path, &self.gate);
            let _ = self.gate.execute_batch("COMMIT");
            if let (Ok(p), true) = (read, Utc::now() < boundary) {
                before = Some(p);
            }
            if Utc::now() >= last_try {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(until(boundary));
        match before {
            Some(p) => Gate::Before(p),
            None => Gate::Missed,
        }
    }

    /// The frames between the held position and `next`, read and checked.
    fn changes(&self, next: Position) -> Result<Found> {
        let held = self.position;
        if next.page_size != held.page_size {
            return Ok(Found::Lost("the page size changed".into()));
        }
        let (from, checksum) = if next.salt == held.salt {
            if next.frame < held.frame {
                return Ok(Found::Lost("the WAL went backwards".into()));
            }
            (held.frame, self.checksum)
        } else {
            // Started over while the held reader saw the database file
            // alone: the file is the held state, the new frames change it.
            (0, None)
        };
        if next.frame == from {
            return Ok(Found::Frames {
                pages: Vec::new(),
                checksum,
            });
        }
        let header = match self.header(next.salt)? {
            Ok(h) => h,
            Err(why) => return Ok(Found::Lost(why)),
        };
        let checksum = checksum.unwrap_or(header.checksum);
        self.read_frames(&header, from, next, checksum)
    }

    /// The WAL header, which must carry `salt` and the held page size.
    fn header(&self, salt: [u8; 8]) -> Result<std::result::Result<Header, String>> {
        let mut buf = [0u8; WAL_HEADER as usize];
        if self.wal.read_exact_at(&mut buf, 0).is_err() {
            return Ok(Err("the WAL has no header".into()));
        }
        let Some(header) = Header::parse(&buf) else {
            return Ok(Err("the WAL header does not check".into()));
        };
        if header.salt != salt {
            return Ok(Err("the WAL started over again".into()));
        }
        if header.page_size != self.position.page_size {
            return Ok(Err("the WAL's page size is not the database's".into()));
        }
        Ok(Ok(header))
    }

    /// Frames `from + 1 ..= next.frame`: each must carry the header's salt
    /// and continue the checksum chain, and the last must commit `next`'s
    /// size. The newest copy of each page is returned.
    fn read_frames(
        &self,
        header: &Header,
        from: u32,
        next: Position,
        mut checksum: (u32, u32),
    ) -> Result<Found> {
        let page = header.page_size as u64;
        let mut newest: BTreeMap<u32, u64> = BTreeMap::new();
        let mut frame = vec![0u8; (FRAME_HEADER + page) as usize];
        let mut last_commit = 0;
        for n in from + 1..=next.frame {
            let offset = WAL_HEADER + (n as u64 - 1) * (FRAME_HEADER + page);
            self.wal
                .read_exact_at(&mut frame, offset)
                .map_err(|e| source_error(&self.path, format!("reading the WAL: {e}")))?;
            if frame[8..16] != header.salt {
                return Ok(Found::Lost(format!(
                    "WAL frame {n} is of another generation"
                )));
            }
            checksum = wal_checksum(header.big_endian, &frame[..8], checksum);
            checksum = wal_checksum(header.big_endian, &frame[FRAME_HEADER as usize..], checksum);
            if (be32(&frame[16..]), be32(&frame[20..])) != checksum {
                return Ok(Found::Lost(format!("WAL frame {n} does not check")));
            }
            newest.insert(be32(&frame[0..]), offset + FRAME_HEADER);
            last_commit = be32(&frame[4..]);
            if newest.len() > MAX_STEP_PAGES {
                return Ok(Found::Lost(format!(
                    "more than {MAX_STEP_PAGES} pages changed in one step"
                )));
            }
        }
        if last_commit != next.pages {
            return Ok(Found::Lost(
                "the last frame read is not the commit seen".into(),
            ));
        }
        let mut pages = Vec::with_capacity(newest.len());
        for (pgno, offset) in newest {
            if pgno > next.pages {
                continue; // beyond the committed size: truncated away
            }
            let mut data = vec![0u8; page as usize];
            self.wal
                .read_exact_at(&mut data, offset)
                .map_err(|e| source_error(&self.path, format!("reading the WAL: {e}")))?;
            pages.push((pgno, data));
        }
        Ok(Found::Frames {
            pages,
            checksum: Some(checksum),
        })
    }

    /// The cumulative checksum after `position`'s frame, read from that
    /// frame's header (or the WAL header's for none).
    fn checksum_at(&self, position: Position) -> Result<Option<(u32, u32)>> {
        if position.frame == 0 {
            return Ok(None);
        }
        let page = position.page_size as u64;
        let offset = WAL_HEADER + (position.frame as u64 - 1) * (FRAME_HEADER + page);
        let mut head = [0u8; FRAME_HEADER as usize];
        self.wal
            .read_exact_at(&mut head, offset)
            .map_err(|e| source_error(&self.path, format!("reading the WAL: {e}")))?;
        Ok(Some((be32(&head[16..]), be32(&head[20..]))))
    }

    /// The bytes of WAL in use: the frames up to the held position (the
    /// file itself keeps its size when SQLite starts it over).
    pub fn wal_size(&self) -> u64 {
        let frame = FRAME_HEADER + self.position.page_size as u64;
        WAL_HEADER + self.position.frame as u64 * frame
    }

    /// When the WAL is past its limit: checkpoints up to the held reader,
    /// then, under the writer lock, moves the reader to the end, checkpoints
    /// the rest and holds a slot 0 reader, so the next writer starts the WAL
    /// over. Returns the step taken under the lock (its changes must be
    /// replicated like any other), or `None` when nothing was done.
    pub fn maintain(&mut self) -> Result<Option<Step>> {
        if self.wal_size() <= self.wal_limit {
            return Ok(None);
        }
        self.checkpoint();
        let deadline = Instant::now() + Duration::from_millis(5);
        while self.gate.execute_batch("BEGIN IMMEDIATE").is_err() {
            if Instant::now() >= deadline {
                return Ok(None); // the application writes; next time
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let step = self.step(None, Duration::ZERO);
        // Still under the lock (step rolled back only a gate it took
        // itself): copy the rest, then hold a reader of the file alone.
        let finished = match &step {
            Ok(Step::Lost(_)) | Err(_) => None,
            Ok(_) => {
                self.checkpoint();
                Some(self.step(None, Duration::ZERO))
            }
        };
        let _ = self.gate.execute_batch("ROLLBACK");
        let step = step?;
        match finished {
            Some(Ok(Step::Same { .. })) | None => Ok(Some(step)),
            Some(Ok(other)) => Err(source_error(
                &self.path,
                format!("the database changed under the writer lock: {other:?}"),
            )),
            Some(Err(e)) => Err(e),
        }
    }

    fn checkpoint(&self) {
        if let Err(e) =
            self.checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::debug!("PASSIVE checkpoint: {e}");
        }
    }
}

/// How a step's boundary was kept (see [`Follower::take_gate`]).
#[derive(Debug, PartialEq, Eq)]
enum Gate {
    /// The writer lock was held across it.
    Held,
    /// The position read just before it.
    Before(Position),
    Missed,
}

enum Found {
    Frames {
        pages: Vec<(u32, Vec<u8>)>,
        /// After the last frame read (`None`: none read, the WAL header's).
        checksum: Option<(u32, u32)>,
    },
    Lost(String),
}

fn open_conn(path: &Path, flags: OpenFlags, busy: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| source_error(path, e))?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map_err(|e| source_error(path, e))?;
    conn.busy_timeout(busy).map_err(|e| source_error(path, e))?;
    Ok(conn)
}

fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn file_id(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| source_error(path, e))?;
    Ok((meta.dev(), meta.ino()))
}

/// Begins a read transaction on `conn` and returns its exact position.
fn begin(path: &Path, conn: &Connection) -> Result<Position> {
    let err = |e: rusqlite::Error| source_error(path, e);
    conn.execute_batch("BEGIN").map_err(err)?;
    let (page_size, page_count): (u32, u32) = conn
        .query_row(
            "SELECT page_size, page_count FROM pragma_page_size, pragma_page_count, \
             (SELECT count(*) FROM sqlite_master)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    // The first read began the transaction; this is its snapshot.
    let raw = match snapshot(conn) {
        Ok(raw) => raw,
        // SQLite has no snapshot to give while its WAL never held a frame:
        // the state is the database file alone, and the first frames will
        // come with a salt this position does not have (read from frame 1,
        // as after a restart).
        Err(SnapshotError::NoFrames) => {
            return Ok(Position {
                salt: [0; 8],
                frame: 0,
                pages: page_count,
                page_size,
                commits: 0,
            })
        }
        Err(SnapshotError::Failed(e)) => return Err(source_error(path, e)),
    };
    let position = Position {
        frame: u32::from_ne_bytes(raw[16..20].try_into().expect("4 bytes")),
        pages: u32::from_ne_bytes(raw[20..24].try_into().expect("4 bytes")),
        salt: raw[32..40].try_into().expect("8 bytes"),
        page_size,
        commits: u32::from_ne_bytes(raw[8..12].try_into().expect("4 bytes")),
    };
    let stored = u16::from_ne_bytes(raw[14..16].try_into().expect("2 bytes"));
    let stored = if stored == 1 { 65536 } else { stored as u32 };
    if stored != page_size {
        return Err(source_error(
            path,
            "the WAL snapshot disagrees on the page size",
        ));
    }
    Ok(position)
}

enum SnapshotError {
    /// SQLITE_ERROR in a read transaction of a WAL database: its WAL has
    /// never held a frame (SQLite's `sqlite3WalSnapshotGet` refuses then).
    NoFrames,
    Failed(String),
}

/// `sqlite3_snapshot_get` of `conn`'s read transaction: the WAL index
/// header it began with (docs: sqlite.org/walformat.html, "the WAL-index
/// header": iChange at 8, mxFrame at 16, nPage at 20, the salts at 32).
fn snapshot(conn: &Connection) -> std::result::Result<[u8; 48], SnapshotError> {
    use rusqlite::ffi;
    let mut snap: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
    // Safety: the handle is live for the call, "main" is NUL-terminated,
    // and a returned snapshot is copied out and freed here.
    let rc = unsafe { ffi::sqlite3_snapshot_get(conn.handle(), c"main".as_ptr(), &mut snap) };
    if rc == ffi::SQLITE_ERROR {
        return Err(SnapshotError::NoFrames);
    }
    if rc != ffi::SQLITE_OK || snap.is_null() {
        return Err(SnapshotError::Failed(format!(
            "sqlite3_snapshot_get failed ({rc}): is the database in WAL mode?"
        )));
    }
    let raw = unsafe { (*snap).hidden };
    unsafe { ffi::sqlite3_snapshot_free(snap) };
    Ok(raw)
}

/// A WAL header (sqlite.org/fileformat2.html, "WAL File Format").
#[derive(Debug, Clone, Copy)]
struct Header {
    big_endian: bool,
    page_size: u32,
    salt: [u8; 8],
    checksum: (u32, u32),
}

impl Header {
    fn parse(buf: &[u8; 32]) -> Option<Header> {
        let big_endian = match be32(&buf[0..]) {
            0x377f0682 => false,
            0x377f0683 => true,
            _ => return None,
        };
        let page_size = match be32(&buf[8..]) {
            1 => 65536,
            n => n,
        };
        let checksum = (be32(&buf[24..]), be32(&buf[28..]));
        if wal_checksum(big_endian, &buf[..24], (0, 0)) != checksum {
            return None;
        }
        Some(Header {
            big_endian,
            page_size,
            salt: buf[16..24].try_into().expect("8 bytes"),
            checksum,
        })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing `s`.
fn wal_checksum(big_endian: bool, data: &[u8], (mut s0, mut s1): (u32, u32)) -> (u32, u32) {
    let word = |b: &[u8]| {
        let w: [u8; 4] = b.try_into().expect("4 bytes");
        if big_endian {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    };
    for pair in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
    }
    (s0, s1)
}

#[cfg(test)]
mod tests;
