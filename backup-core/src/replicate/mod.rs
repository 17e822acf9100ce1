//! Continuous replication (`offsite replicate`): every `sync_interval`, the
//! pages a SQLite database's committed transactions changed go to every
//! target as one signed, encrypted replica object, on top of a base
//! snapshot; restore replays them to any second (docs/replication.md).
//!
//! How a run goes. [`wal::Follower`] holds a read transaction on the
//! database and, at each interval's boundary, moves it to the current state
//! and reads exactly the changed pages from the WAL (O(pages changed)).
//! The run starts with a base: an ordinary format 2 snapshot read inside
//! that held transaction, so its state is the follower's position exactly,
//! deduplicated and uploaded as any backup. Each step with changes becomes
//! one level 0 object `replica/<base>/0/<n>-<n>-<at>`; the steps of every
//! 30 s and every 5 min window are merged (the newest copy of each page)
//! into level 1 and level 2 objects from a local spool, so a restore reads
//! a few dozen objects whatever the number of steps ([`levels`]). A new base
//! is taken every `base_every` (an hour), when the WAL cannot be followed
//! (a restart, VACUUM of a large database, the file replaced), when a
//! target fell too far behind, and at every start.
//!
//! Uploads run per target, in order, beside the stepping: a slow or failing
//! target is retried (backoff up to 30 s) and lags alone; past
//! [`MAX_QUEUED_BYTES`] its queue is dropped and the next base brings it
//! back. Idle (no commit), a step uploads nothing.
//!
//! What if the process is killed, the disk or target fills, or a write is
//! short? Objects are put create-if-absent and each stands alone (signed,
//! its pages hashed), so a killed upload leaves nothing or a whole object;
//! a chain is only ever read up to its first missing step, so a lost tail
//! costs at most the steps not yet stored, never an earlier point. A failed
//! upload is retried, never reported as replicated; the status file
//! (`replicate-<source>.json` in the state directory) says what each target
//! holds. A restart takes a new base (its held transaction is gone, so
//! frames may have been checkpointed unseen): the old chain stays
//! restorable up to its last stored step. The database is never written
//! (see [`wal`]).
//!
//! Never: report a step as replicated before a target stored it, upload a
//! step that was not read between two exact positions, or block the
//! application's writers for more than the moment around a boundary.

pub mod levels;
pub mod object;
pub mod restore;
pub mod wal;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backup::{BackupOptions, Origin};
use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::keyset::KeySet;
use crate::repo::Repository;
use crate::source::{SourceKind, SourceSpec};
use crate::storage::PutMode;
use object::{Meta, ReplicaKey};
use wal::{Change, Follower, Step};

/// The most bytes waiting for one target before its queue is dropped and
/// a new base brings it back.
pub const MAX_QUEUED_BYTES: usize = 256 << 20;

/// How a replication runs.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    pub sync_interval: Duration,
    /// A new base snapshot at least this often.
    pub base_every: Duration,
    /// Merge windows of levels 1, 2, ...
    pub levels: Vec<Duration>,
    /// The WAL size past which the replicator checkpoints (PASSIVE).
    pub wal_limit: u64,
    /// How long before a boundary the writer lock is asked for.
    pub lead: Duration,
    /// Where the merge spools and the status file go.
    pub state_dir: PathBuf,
    /// Databases not in WAL mode: a snapshot at most this often.
    pub fallback_interval: Duration,
    pub backup: BackupOptions,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            sync_interval: Duration::from_secs(1),
            base_every: Duration::from_secs(3600),
            levels: vec![Duration::from_secs(30), Duration::from_secs(300)],
            wal_limit: 4 << 20,
            lead: Duration::from_millis(2),
            state_dir: std::env::temp_dir(),
            fallback_interval: Duration::from_secs(60),
            backup: BackupOptions::default(),
        }
    }
}

/// What a run reports as it goes.
#[derive(Debug)]
pub enum ReplicaEvent<'a> {
    /// Following the WAL (`wal`), or snapshots only (not in WAL mode).
    Started {
        source: &'a str,
        wal: bool,
    },
    /// A base snapshot was taken (`failed`: targets that did not store it).
    Base {
        source: &'a str,
        snapshot: &'a str,
        reason: &'a str,
        failed: Vec<(String, String)>,
    },
    Stopped {
        source: &'a str,
    },
}

/// One target's replication state, as the status file shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetStatus {
    pub target: String,
    /// The instant of the newest state this target holds (base or step).
    pub replicated_at: Option<DateTime<Utc>>,
    /// Seconds between the newest state read and the newest stored (0 when
    /// all is stored).
    pub lag_seconds: f64,
    pub queued: usize,
    pub queued_bytes: usize,
    pub uploaded_bytes: u64,
    pub requests: u64,
    pub last_error: Option<String>,
    #[serde(skip)]
    needs_base: bool,
}

/// The status file's content (rewritten after every step and base).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub source: String,
    pub pid: u32,
    /// `wal` (following the WAL) or `snapshots` (not in WAL mode).
    pub mode: String,
    /// The interval, in seconds, the run steps at.
    pub sync_interval_seconds: f64,
    pub base: Option<String>,
    pub started: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// The instant of the newest state read from the database.
    pub read_at: Option<DateTime<Utc>>,
    pub steps: u64,
    pub targets: Vec<TargetStatus>,
}

/// Where the status file of `source` is kept.
pub fn status_path(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join(format!("replicate-{source}.json"))
}

/// The status file of `source`, if one was written (`None` also for one
/// that does not parse: it says nothing reliable).
pub fn read_status(state_dir: &Path, source: &str) -> Option<Status> {
    let text = std::fs::read(status_path(state_dir, source)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// An object on its way to the targets.
#[derive(Debug)]
struct Upload {
    key: String,
    bytes: Bytes,
    at: DateTime<Utc>,
}

/// Replicates `spec` (a SQLite source) to `repos` (format 2 targets of one
/// key set, each able to sign) until `stop` turns true.
pub async fn replicate(
    spec: &SourceSpec,
    repos: Vec<Arc<Repository>>,
    names: Vec<String>,
    opts: &ReplicateOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
    events: &(dyn Fn(ReplicaEvent<'_>) + Sync),
) -> Result<()> {
    if spec.kind != SourceKind::Sqlite {
        return Err(Error::Source {
            path: spec.path.clone(),
            message: format!(
                "source {:?} is {}: replication follows SQLite databases only",
                spec.name, spec.kind
            ),
        });
    }
    let keys = shared_keys(&repos)?;
    std::fs::create_dir_all(&opts.state_dir)
        .map_err(|e| Error::io(format!("creating {}", opts.state_dir.display()), e))?;
    let wal = wal::is_wal_mode(&spec.path)?;
    events(ReplicaEvent::Started {
        source: &spec.name,
        wal,
    });
    let mut run = Run::new(spec, repos, names, keys, opts, wal);
    let result = match wal {
        true => run.follow(&mut stop, events).await,
        false => run.snapshots(&mut stop, events).await,
    };
    run.finish().await;
    events(ReplicaEvent::Stopped { source: &spec.name });
    result
}

/// The key set the targets share; each must be able to sign.
fn shared_keys(repos: &[Arc<Repository>]) -> Result<Arc<KeySet>> {
    let mut first: Option<Arc<KeySet>> = None;
    for repo in repos {
        let ks = repo.keyset_arc().ok_or_else(|| Error::NoFormat2Keys {
            target: repo.describe(),
        })?;
        ks.require_signer("replicate")?;
        match &first {
            Some(f) if f.chunk_key() != ks.chunk_key() => {
                return Err(Error::Key(format!(
                    "{} belongs to another key set than the other targets: replicate it in a \
                     run of its own",
                    repo.describe()
                )))
            }
            Some(_) => {}
            None => first = Some(ks),
        }
    }
    first.ok_or_else(|| Error::Key("no target to replicate to".into()))
}

/// Encodes replica objects and queues them for every target that holds
/// the current base; cloned into the threads that merge closed windows.
#[derive(Clone)]
struct Publisher {
    source: String,
    keys: Arc<KeySet>,
    level: i32,
    status: Arc<Mutex<Status>>,
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Upload>>,
}

impl Publisher {
    fn publish(
        &self,
        key: &ReplicaKey,
        runs: Vec<(u32, u32)>,
        size_pages: u32,
        page_size: u32,
        plain: &[u8],
    ) -> Result<()> {
        let meta = Meta {
            source: self.source.clone(),
            key: key.clone(),
            page_size,
            size_pages,
            runs,
            data: ChunkId::keyed(&self.keys.chunk_key(), plain),
        };
        let signer = self.keys.require_signer("replicate")?;
        let bytes = object::encode(
            &meta,
            plain,
            signer,
            &self.keys.data_recipient()?,
            &self.keys.metadata_recipient(),
            self.level,
        )?;
        let bytes = Bytes::from(bytes);
        let mut status = self.status.lock().expect("status");
        for (n, tx) in self.senders.iter().enumerate() {
            let t = &mut status.targets[n];
            if t.needs_base {
                continue;
            }
            t.queued += 1;
            t.queued_bytes += bytes.len();
            let _ = tx.send(Upload {
                key: key.to_key(),
                bytes: bytes.clone(),
                at: key.at,
            });
        }
        Ok(())
    }

    /// Merges a closed window and publishes it on a blocking thread, so
    /// the steps go on meanwhile (a 5 min window can take longer to
    /// encode than an interval).
    fn publish_closed(&self, base: String, closed: levels::Closed) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let published = closed.merge().map_err(|e| e.to_string()).and_then(|m| {
                let key = ReplicaKey {
                    base,
                    level: m.level,
                    first: m.first,
                    last: m.last,
                    at: m.at,
                };
                (this.publish(&key, m.runs, m.size_pages, m.page_size, &m.pages))
                    .map_err(|e| crate::error::chain_text(&e))
            });
            if let Err(e) = published {
                tracing::warn!("replication: a merged window is not stored ({e}); its steps are");
            }
        });
    }
}

/// One source's replication.
struct Run<'a> {
    spec: &'a SourceSpec,
    repos: Vec<Arc<Repository>>,
    opts: &'a ReplicateOptions,
    status: Arc<Mutex<Status>>,
    publisher: Publisher,
    uploaders: Vec<tokio::task::JoinHandle<()>>,
    follower: Option<Arc<Mutex<Follower>>>,
    base: Option<(String, DateTime<Utc>)>,
    /// When the last base was stored.
    last_base: Option<std::time::Instant>,
    step: u64,
    /// The changes of the follower's last upkeep (taken just after a
    /// boundary, so the WAL can start over): they go out with the next
    /// boundary's step, so that a target gets one level 0 object per
    /// interval.
    held: Option<Change>,
    windows: levels::Windows,
}

impl<'a> Run<'a> {
    fn new(
        spec: &'a SourceSpec,
        repos: Vec<Arc<Repository>>,
        names: Vec<String>,
        keys: Arc<KeySet>,
        opts: &'a ReplicateOptions,
        wal: bool,
    ) -> Run<'a> {
        let now = Utc::now();
        let status = Arc::new(Mutex::new(Status {
            source: spec.name.clone(),
            pid: std::process::id(),
            mode: if wal { "wal" } else { "snapshots" }.into(),
            sync_interval_seconds: opts.sync_interval.as_secs_f64(),
            base: None,
            started: now,
            updated: now,
            read_at: None,
            steps: 0,
            targets: (names.iter())
                .map(|n| TargetStatus {
                    target: n.clone(),
                    ..Default::default()
                })
                .collect(),
        }));
        let mut senders = Vec::new();
        let mut uploaders = Vec::new();
        for (n, repo) in repos.iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            uploaders.push(tokio::spawn(upload_loop(
                repo.clone(),
                n,
                rx,
                status.clone(),
            )));
        }
        let windows = levels::Windows::new(&opts.state_dir, &spec.name, &opts.levels);
        let publisher = Publisher {
            source: spec.name.clone(),
            keys: keys.clone(),
            level: opts.backup.compression_level,
            status: status.clone(),
            senders,
        };
        Run {
            spec,
            repos,
            opts,
            status,
            publisher,
            uploaders,
            follower: None,
            base: None,
            last_base: None,
            step: 0,
            held: None,
            windows,
        }
    }

    /// The WAL way: a base, then a step at every boundary.
    async fn follow(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        events: &(dyn Fn(ReplicaEvent<'_>) + Sync),
    ) -> Result<()> {
        let mut reason = "start".to_string();
        loop {
            if self.follower.is_none() || self.base.is_none() {
                match self.rebase(&reason, events).await {
                    Ok(()) => {}
                    // No target took it (each is told in the event): again.
                    Err(Error::Replication(_)) if !*stop.borrow() => continue,
                    Err(Error::Replication(_)) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            let boundary = next_boundary(Utc::now(), self.opts.sync_interval);
            let wait = (boundary - Utc::now()).to_std().unwrap_or_default();
            let wait = wait.saturating_sub(self.opts.lead + WAKE_EARLY);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Ok(());
            }
            let step = match self.step_at(boundary).await {
                Ok(step) => step,
                // The database could not be read this time (locked, gone,
                // replaced): start over from a new base, which says why
                // if it cannot be taken either.
                Err(e) => (Step::Lost(crate::error::chain_text(&e)), None),
            };
            if let Some(why) = self.take(step)? {
                // Let go of the database (a new base reopens it), and wait
                // a little when the last base was just taken: a WAL lost at
                // every step must not turn into a full read every second.
                if let Some(f) = self.follower.take() {
                    f.lock().expect("follower").let_go();
                }
                let gap = self.last_base.map_or(Duration::ZERO, |t| {
                    MIN_REBASE_GAP.saturating_sub(t.elapsed())
                });
                tokio::select! {
                    _ = tokio::time::sleep(gap.max(Duration::from_millis(250))) => {}
                    _ = stop.changed() => {}
                }
                if *stop.borrow() {
                    return Ok(());
                }
                reason = why;
                self.base = None;
                continue;
            }
            self.publish_windows(false)?;
            if let Some(why) = self.base_due() {
                self.queue_held()?;
                reason = why;
                self.base = None;
            }
            self.write_status();
        }
    }

    /// Moves the follower to `boundary`, then keeps the WAL bounded: the
    /// boundary's step and the upkeep's, if one was taken.
    async fn step_at(&mut self, boundary: DateTime<Utc>) -> Result<(Step, Option<Step>)> {
        let follower = self.follower.clone().expect("following");
        let lead = self.opts.lead;
        blocking(move || {
            let mut f = follower.lock().expect("follower");
            let step = f.step(Some(boundary), lead)?;
            Ok((step, f.maintain()?))
        })
        .await
    }

    /// Queues the boundary's changes (with the held upkeep's) and holds the
    /// upkeep's; the reason for a new base when the WAL was lost.
    fn take(&mut self, (step, upkeep): (Step, Option<Step>)) -> Result<Option<String>> {
        let (alone, step) = step.after(self.held.take());
        if let Some(held) = alone {
            self.queue_step(held)?;
        }
        match step {
            Step::Same { at, .. } => self.status().read_at = Some(at),
            Step::Changed(change) => self.queue_step(change)?,
            Step::Lost(why) => return Ok(Some(why)),
        }
        match upkeep {
            Some(Step::Changed(change)) => self.held = Some(change),
            Some(Step::Lost(why)) => return Ok(Some(why)),
            Some(Step::Same { .. }) | None => {}
        }
        Ok(None)
    }

    /// Queues the held upkeep's changes as a step of their own (before a
    /// new base or the stop, which do not wait for the next boundary).
    fn queue_held(&mut self) -> Result<()> {
        match self.held.take() {
            Some(held) if self.base.is_some() => self.queue_step(held),
            _ => Ok(()),
        }
    }

    fn queue_step(&mut self, change: Change) -> Result<()> {
        // A step lands in the merge window of its own instant; the windows
        // it closes are queued after it, so that the step (the RPO) does
        // not wait behind their bigger objects.
        let closed = self.windows.close(change.at, false);
        let (base, _) = self.base.clone().expect("a base");
        self.step += 1;
        let key = ReplicaKey {
            base,
            level: 0,
            first: self.step,
            last: self.step,
            at: change.at,
        };
        let plain: Vec<u8> = change
            .pages
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let runs = object::runs_of(change.pages.iter().map(|(n, _)| *n));
        (self.publisher).publish(&key, runs, change.size_pages, change.page_size, &plain)?;
        self.publish_merged(closed);
        if let Err(e) = self.windows.add(self.step, &change) {
            tracing::warn!("replication spool: {e}; merged levels skipped for now");
            self.windows.reset();
        }
        let mut status = self.status();
        status.read_at = Some(change.at);
        status.steps += 1;
        Ok(())
    }

    /// Publishes the merged windows that ended by now (all with `all`).
    fn publish_windows(&mut self, all: bool) -> Result<()> {
        let closed = self.windows.close(Utc::now(), all);
        self.publish_merged(closed);
        Ok(())
    }

    /// Queues the merged objects of closed windows (merged elsewhere).
    fn publish_merged(&self, closed: Vec<levels::Closed>) {
        let Some((base, _)) = &self.base else {
            return;
        };
        for c in closed {
            self.publisher.publish_closed(base.clone(), c);
        }
    }

    /// Why a new base is due now, if it is.
    fn base_due(&self) -> Option<String> {
        let (_, taken) = self.base.as_ref()?;
        let age = (Utc::now() - *taken).to_std().unwrap_or_default();
        if age >= self.opts.base_every {
            return Some("the base is old".into());
        }
        let status = self.status();
        let lagging = status.targets.iter().find(|t| t.needs_base);
        // A dropped target is brought back, at most every few minutes.
        (lagging.is_some() && age >= Duration::from_secs(120))
            .then(|| format!("target {} fell behind", lagging.expect("some").target))
    }

    /// Takes a new base: (re)opens the follower when needed and backs up
    /// its held state to every target.
    async fn rebase(
        &mut self,
        reason: &str,
        events: &(dyn Fn(ReplicaEvent<'_>) + Sync),
    ) -> Result<()> {
        self.publish_windows(true)?;
        self.windows.reset();
        let path = self.spec.path.clone();
        let limit = self.opts.wal_limit;
        let reopen = self.follower.is_none() || reason != "the base is old";
        if reopen {
            self.follower = None;
            let f = blocking(move || Follower::open(&path, limit)).await?;
            self.follower = Some(Arc::new(Mutex::new(f)));
        }
        let follower = self.follower.clone().expect("opened");
        let at = follower.lock().expect("follower").at();
        let origin = Origin::replaying(at, {
            let follower = follower.clone();
            let path = self.spec.path.clone();
            Box::new(move |visitor| {
                let f = follower.lock().expect("follower");
                crate::source::sqlite::read_in(f.held(), &path, false, visitor)
            })
        });
        let id = origin.id.clone();
        let repos: Vec<&Repository> = self.repos.iter().map(|r| r.as_ref()).collect();
        let mut opts = self.opts.backup.clone();
        opts.tags.push(BASE_TAG.into());
        let results = crate::backup::backup_v2_from(&repos, self.spec, &opts, origin).await?;
        let mut failed = Vec::new();
        let mut any = false;
        {
            let mut status = self.status();
            for (n, r) in results.into_iter().enumerate() {
                let t = &mut status.targets[n];
                match r {
                    Ok(s) => {
                        any = true;
                        t.needs_base = false;
                        t.replicated_at = Some(at);
                        t.requests += s.requests;
                        t.uploaded_bytes += s.manifest.uploaded_bytes;
                    }
                    Err(e) => {
                        t.needs_base = true;
                        t.last_error = Some(crate::error::chain_text(&e));
                        failed.push((t.target.clone(), crate::error::chain_text(&e)));
                    }
                }
            }
            status.base = Some(id.clone());
            status.read_at = Some(at);
        }
        events(ReplicaEvent::Base {
            source: &self.spec.name,
            snapshot: &id,
            reason,
            failed: failed.clone(),
        });
        if !any {
            // No target could take it: wait and try again rather than spin.
            tokio::time::sleep(Duration::from_secs(5)).await;
            return Err(Error::Replication(format!(
                "no target stored the base snapshot: {}",
                failed
                    .iter()
                    .map(|(t, e)| format!("{t}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        self.base = Some((id, at));
        self.last_base = Some(std::time::Instant::now());
        self.step = 0;
        self.write_status();
        Ok(())
    }

    /// Databases not in WAL mode: a snapshot whenever the file changed, at
    /// most every `fallback_interval`.
    async fn snapshots(
        &mut self,
        stop: &mut tokio::sync::watch::Receiver<bool>,
        events: &(dyn Fn(ReplicaEvent<'_>) + Sync),
    ) -> Result<()> {
        let mut last: Option<Vec<u8>> = None;
        loop {
            let now = file_state(&self.spec.path);
            if now.is_some() && now != last {
                let repos: Vec<&Repository> = self.repos.iter().map(|r| r.as_ref()).collect();
                let results =
                    crate::backup::backup_many_v2(&repos, self.spec, &self.opts.backup).await?;
                let failed = (results.iter().zip(self.status().targets.iter()))
                    .filter_map(|(r, t)| {
                        r.as_ref()
                            .err()
                            .map(|e| (t.target.clone(), crate::error::chain_text(e)))
                    })
                    .collect();
                let id = (results.iter().find_map(|r| r.as_ref().ok()))
                    .map(|s| s.manifest.id.clone())
                    .unwrap_or_default();
                {
                    let mut status = self.status();
                    for (r, t) in results.iter().zip(status.targets.iter_mut()) {
                        match r {
                            Ok(s) => t.replicated_at = Some(s.manifest.started),
                            Err(e) => t.last_error = Some(crate::error::chain_text(e)),
                        }
                        t.requests += r.as_ref().map_or(0, |s| s.requests);
                    }
                    status.read_at = results
                        .iter()
                        .find_map(|r| r.as_ref().ok().map(|s| s.manifest.started));
                }
                events(ReplicaEvent::Base {
                    source: &self.spec.name,
                    snapshot: &id,
                    reason: "the database changed (not in WAL mode)",
                    failed,
                });
                last = now;
            }
            self.write_status();
            tokio::select! {
                _ = tokio::time::sleep(self.opts.fallback_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return Ok(());
            }
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().expect("status")
    }

    fn write_status(&self) {
        let path = status_path(&self.opts.state_dir, &self.spec.name);
        let mut status = self.status();
        status.updated = Utc::now();
        let read_at = status.read_at;
        for t in &mut status.targets {
            t.lag_seconds = match (read_at, t.replicated_at, t.queued) {
                (_, _, 0) => 0.0,
                (Some(r), Some(s), _) => (r - s).num_milliseconds().max(0) as f64 / 1000.0,
                _ => 0.0,
            };
        }
        let text = serde_json::to_vec_pretty(&*status).expect("status serializes");
        drop(status);
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }

    /// Stops: merged windows are published and what is queued gets a few
    /// seconds to land.
    async fn finish(&mut self) {
        if let Err(e) = self.queue_held() {
            tracing::warn!("{e}");
        }
        if let Err(e) = self.publish_windows(true) {
            tracing::warn!("{e}");
        }
        // The uploaders end once every sender is gone: this one's, and
        // those of merges still running.
        self.publisher.senders.clear();
        let drain = futures::future::join_all(self.uploaders.drain(..));
        if tokio::time::timeout(Duration::from_secs(10), drain)
            .await
            .is_err()
        {
            tracing::warn!("some replica objects were not stored before stopping");
        }
        self.write_status();
    }
}

/// The least time between two bases that a lost WAL causes.
const MIN_REBASE_GAP: Duration = Duration::from_secs(5);

/// The tag every base snapshot carries.
pub const BASE_TAG: &str = "replica-base";

/// The next multiple of `interval` since the epoch after `now`.
pub fn next_boundary(now: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    let step = interval.as_millis().max(1) as i64;
    let ms = now.timestamp_millis();
    DateTime::from_timestamp_millis((ms / step + 1) * step).expect("in range")
}

/// The database file's change counter and size (rollback mode changes
/// both on every commit).
fn file_state(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 100];
    f.read_exact_at(&mut header, 0).ok()?;
    let mut state = header[24..28].to_vec();
    state.extend_from_slice(&f.metadata().ok()?.len().to_le_bytes());
    Some(state)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("replication thread", std::io::Error::other(e.to_string())))?
}

/// How long before a boundary's lead the loop wakes: the step's own
/// thread then sleeps precisely to the lead (see `Follower::take_gate`).
/// Waking only a few ms early let a busy machine (a timer fired late, the
/// blocking thread scheduled late) miss the writer lock at the boundary,
/// and that second's state was then labelled a moment after it; 30 ms
/// absorbs such delays and costs nothing (the lock is still taken `lead`
/// before the boundary).
const WAKE_EARLY: Duration = Duration::from_millis(30);

/// What storing one replica object came to.
enum Stored {
    Yes,
    /// Not stored this time (the reason); tried again.
    Retry(String),
    /// Its key holds another object (junk, or one planted there): this
    /// chain cannot go on past it on this target.
    Taken(String),
}

/// Stores `up` once. A key that already exists counts as stored only when
/// it holds exactly these bytes (a retry of a put that landed); anything
/// else there is never taken for our step.
async fn store_one(repo: &Repository, up: &Upload) -> Stored {
    let error = match repo
        .put_bytes(&up.key, up.bytes.clone(), PutMode::Create)
        .await
    {
        Ok(()) => return Stored::Yes,
        Err(e) => e,
    };
    let taken = matches!(&error, Error::Storage { cause, .. }
        if cause.kind == crate::storage::ErrorKind::AlreadyExists);
    if !taken {
        return Stored::Retry(crate::error::chain_text(&error));
    }
    match repo.get_bytes(&up.key).await {
        Ok(there) if there == up.bytes => Stored::Yes,
        Ok(_) => Stored::Taken(format!(
            "{} already holds another object (junk, or one planted there): \
             that step is not stored there; a new base starts a new chain",
            up.key
        )),
        Err(e) => Stored::Retry(crate::error::chain_text(&e)),
    }
}

/// Stores `rx`'s objects on `repo` in order, retrying each until it lands.
async fn upload_loop(
    repo: Arc<Repository>,
    n: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Upload>,
    status: Arc<Mutex<Status>>,
) {
    let mut queue: VecDeque<Upload> = VecDeque::new();
    let mut backoff = Duration::from_millis(500);
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(u) => queue.push_back(u),
                None => return,
            }
        }
        while let Ok(u) = rx.try_recv() {
            queue.push_back(u);
        }
        let stored = store_one(&repo, queue.front().expect("one")).await;
        let failed = {
            let mut s = status.lock().expect("status");
            let t = &mut s.targets[n];
            t.requests += 1;
            match stored {
                Stored::Yes => {
                    let up = queue.pop_front().expect("one");
                    t.queued = t.queued.saturating_sub(1);
                    t.queued_bytes = t.queued_bytes.saturating_sub(up.bytes.len());
                    t.uploaded_bytes += up.bytes.len() as u64;
                    t.replicated_at = Some(t.replicated_at.map_or(up.at, |r| r.max(up.at)));
                    t.last_error = None;
                    false
                }
                Stored::Taken(e) => {
                    tracing::warn!("replicating to {}: {e}", repo.describe());
                    // The steps after it could never be read past the gap.
                    drop_chain(t, &mut queue, e);
                    false
                }
                Stored::Retry(e) => {
                    tracing::warn!("replicating to {}: {e}; retrying", repo.describe());
                    if t.queued_bytes > MAX_QUEUED_BYTES {
                        // Too far behind: drop the chain here; a new base brings it back.
                        drop_chain(t, &mut queue, e);
                    } else {
                        t.last_error = Some(e);
                    }
                    true
                }
            }
        };
        match failed {
            false => backoff = Duration::from_millis(500),
            true => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Gives up this target's chain: what is queued is dropped and the next
/// base brings the target back (`why` stays as its last error).
fn drop_chain(t: &mut TargetStatus, queue: &mut VecDeque<Upload>, why: String) {
    queue.clear();
    t.queued = 0;
    t.queued_bytes = 0;
    t.needs_base = true;
    t.last_error = Some(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_identity, Keys};
    use crate::storage::memory::MemoryStorage;

    async fn repo() -> Arc<Repository> {
        let (_, recipient) = generate_identity();
        let keys = Keys::from_recipients(&[recipient]).unwrap();
        let storage = Arc::new(MemoryStorage::default());
        Arc::new(Repository::open_or_init(storage, &keys).await.unwrap())
    }

    fn status() -> Arc<Mutex<Status>> {
        Arc::new(Mutex::new(Status {
            source: "app".into(),
            pid: 1,
            mode: "wal".into(),
            sync_interval_seconds: 1.0,
            base: None,
            started: Utc::now(),
            updated: Utc::now(),
            read_at: None,
            steps: 0,
            targets: vec![TargetStatus {
                target: "t".into(),
                queued: 2,
                ..TargetStatus::default()
            }],
        }))
    }

    fn upload(key: &str, body: &'static [u8]) -> Upload {
        Upload {
            key: key.into(),
            bytes: Bytes::from_static(body),
            at: Utc::now(),
        }
    }

    /// Runs the upload loop over `uploads` until it has handled them all.
    async fn run(repo: &Arc<Repository>, uploads: Vec<Upload>) -> TargetStatus {
        let status = status();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for u in uploads {
            tx.send(u).unwrap();
        }
        drop(tx);
        upload_loop(repo.clone(), 0, rx, status.clone()).await;
        let t = status.lock().unwrap().targets[0].clone();
        t
    }

    #[tokio::test]
    async fn a_key_holding_another_object_is_never_counted_as_stored() {
        let repo = repo().await;
        let key = "replica/b/0/1-1-x";
        (repo.put_bytes(key, Bytes::from_static(b"planted"), PutMode::Create))
            .await
            .unwrap();
        let t = run(
            &repo,
            vec![upload(key, b"ours"), upload("replica/b/0/2-2-y", b"next")],
        )
        .await;
        assert!(t.needs_base, "the chain is dropped for a new base");
        assert_eq!(t.uploaded_bytes, 0);
        assert_eq!(t.replicated_at, None);
        let why = t.last_error.unwrap();
        assert!(why.contains("already holds another object"), "{why}");
        assert_eq!(&repo.get_bytes(key).await.unwrap()[..], b"planted");
    }

    #[tokio::test]
    async fn a_retry_of_a_put_that_landed_is_stored() {
        let repo = repo().await;
        let key = "replica/b/0/1-1-x";
        (repo.put_bytes(key, Bytes::from_static(b"ours"), PutMode::Create))
            .await
            .unwrap();
        let t = run(&repo, vec![upload(key, b"ours")]).await;
        assert!(!t.needs_base);
        assert_eq!(t.uploaded_bytes, 4);
        assert!(t.replicated_at.is_some() && t.last_error.is_none());
    }
}
