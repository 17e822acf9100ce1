//! The restore operation: a snapshot back onto disk, checked before it is
//! put in place.
//!
//! Everything is written to a staging path beside the destination (same
//! filesystem, so the final rename is atomic), laid out by [`tree`] so that
//! nothing is ever written outside it or through a symlink, whatever the
//! snapshot's list says. Packs are fetched a few at a time, decoded, and
//! each chunk is checked against its id before it is written at its
//! offset(s) ([`crate::fetch`]: a chunk damaged or missing here is
//! recorded as damaged and taken from a fallback target, by id). The staged copy must then match the manifest's SHA-256 and,
//! unless the caller asked to skip it, pass the database's own check
//! (SQLite's `PRAGMA integrity_check`; DuckDB must open it and read every
//! table, and folds a restored `.wal` into the file). Only then does
//! [`place`] switch it into the destination: the old database is kept under
//! a unique name with its -wal/-shm, its log folded into it first so that
//! the path never holds a mix of old and new. [`in_use`] refuses the switch
//! while another process has the database open.
//!
//! [`restore`] does all of it; [`stage`] stops before the switch, so that
//! a caller can stop the application (the restore hooks) for only the
//! switch, not the download.
//!
//! Format 2 ([`restore_v2`], [`stage_v2`]) differs in what it trusts and
//! how it checks, not in how it stages and switches: only a snapshot whose
//! manifest is [`Trust::Signed`] is restored (a rejected one is an error
//! naming it and the reason, before anything is read or written); it is
//! planned from its list state, rebuilt along signed list objects and
//! required to match the manifest's `list_blake3`; chunks are found in
//! signed index files only and each is checked against its id keyed with
//! the key set's K. There is no SHA-256 read-back (design 5.1): every
//! chunk written matched its keyed id and the list of ids and lengths
//! matched `list_blake3`, which the signed manifest commits to, so the
//! staged bytes are the snapshot's. The database's own check runs as in
//! format 1, except when a signed check record (`repo::checks`) says
//! integrity_check returned ok on exactly this snapshot (its
//! `list_blake3`): then the restored file is, chunk for chunk, the content
//! that was checked, and the check is not run again unless forced
//! (`force_database_check`). A restore whose own check passed records it
//! when the host can sign (the owner's identity); a record that cannot be
//! read or written costs a check, never the restore. Other targets are not asked for chunks yet (fallbacks are
//! format 1's), and damage found is not recorded (format 1's records need
//! format 1's metadata recipient): a format 2 restore with no intact copy
//! of a chunk fails with the pack named.
//!
//! Never: write to the destination path before verification passed, write
//! outside it, or delete an existing file; restore a format 2 snapshot
//! that is not signed by the owner or an authorised writer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::backup::Progress;
use crate::error::{Error, Result};
use crate::fetch::{self, Want};
pub use crate::fetch::{Fallback, FetchedElsewhere};
use crate::keys::Identities;
use crate::keyset::{KeySet, Trust};
use crate::replicate::restore::ReplayPlan;
use crate::repo::format::{DamagedPack, ListItem};
use crate::repo::{
    CheckedAt, ChunkList, Manifest, ManifestV2, RecordedCheck, Repository, SnapshotV2,
};
use crate::source::{duckdb_lib, sqlite, Entry, SourceKind};

mod in_use;
mod place;
mod tree;

pub use in_use::check_not_in_use;
pub(crate) use tree::open as open_staged;
pub(crate) use tree::restored_paths;
use tree::Layout;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Replace an existing destination (which is moved aside, not deleted).
    pub force: bool,
    /// Packs downloaded and decoded at once.
    pub concurrency: usize,
    pub progress: Arc<Progress>,
    /// Run the database's own check (SQLite's integrity_check, DuckDB
    /// opening it). Off only when the user asks (`--no-database-check`):
    /// the checksum is verified in any case.
    pub check_database: bool,
    /// Run the check even when a signed record says it returned ok on this
    /// snapshot (format 2, `--database-check`).
    pub force_database_check: bool,
    /// Other targets' repositories, asked by chunk id for chunks that are
    /// damaged or missing in the one restored from (see [`crate::fetch`]).
    pub fallbacks: Vec<Fallback>,
    /// Replica objects applied on top of the (base) snapshot before the
    /// check (format 2, [`crate::replicate::restore`]).
    pub replay: Option<ReplayPlan>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            force: false,
            concurrency: 4,
            progress: Arc::new(Progress::default()),
            check_database: true,
            force_database_check: false,
            fallbacks: Vec::new(),
            replay: None,
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
    /// The signed record that made the database check unnecessary (format
    /// 2: integrity_check returned ok on exactly these bytes).
    pub recorded_check: Option<RecordedCheck>,
    /// The check record this restore wrote after its own check passed.
    pub check_recorded: Option<String>,
    /// The replicated state restored on top of the snapshot, if any.
    pub replayed: Option<Replayed>,
}

/// What a restore replayed on top of its base snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The instant the restored state holds.
    pub at: chrono::DateTime<chrono::Utc>,
    pub steps: u64,
    pub objects: usize,
}

#[derive(Default)]
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
pub(crate) async fn restore(
    repo: &Repository,
    ids: &Identities,
    manifest: &Manifest,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    // Refused now rather than after the download; checked again at the switch.
    check_not_in_use(to, manifest.kind)?;
    repo.stage(ids, manifest, to, opts)
        .await?
        .put_in_place()
        .await
}

/// A verified copy of a snapshot staged beside its destination, not yet in
/// place. Dropping it removes the staged files.
pub struct Staged {
    staging: Staging,
    to: PathBuf,
    kind: SourceKind,
    /// A DuckDB `.wal` that was not folded (the database check was skipped).
    staged_wal: bool,
    snapshot: String,
    bytes: u64,
    clock: Instant,
    damaged: Vec<DamagedPack>,
    damage_recorded: Option<String>,
    fetched_elsewhere: Vec<FetchedElsewhere>,
    recorded_check: Option<RecordedCheck>,
    check_recorded: Option<String>,
    replayed: Option<Replayed>,
}

impl Staged {
    /// Where it goes.
    pub fn destination(&self) -> &Path {
        &self.to
    }

    /// Switches the staged copy into the destination (see [`place`]):
    /// refused while another process has the destination open.
    pub async fn put_in_place(self) -> Result<RestoreSummary> {
        tokio::task::spawn_blocking(move || {
            let mut this = self;
            let moved_aside = place::put(&this.staging.path, &this.to, this.kind, this.staged_wal)?;
            this.staging.armed = false;
            Ok(RestoreSummary {
                snapshot: this.snapshot.clone(),
                path: this.to.clone(),
                bytes: this.bytes,
                moved_aside,
                duration: this.clock.elapsed(),
                damaged: std::mem::take(&mut this.damaged),
                damage_recorded: this.damage_recorded.take(),
                fetched_elsewhere: std::mem::take(&mut this.fetched_elsewhere),
                recorded_check: this.recorded_check.take(),
                check_recorded: this.check_recorded.take(),
                replayed: this.replayed.take(),
            })
        })
        .await
        .map_err(|e| Error::io("restore", std::io::Error::other(e.to_string())))?
    }
}

/// Downloads, stages and verifies `manifest`'s snapshot beside `to`,
/// touching nothing at `to` itself.
pub(crate) async fn stage(
    repo: &Repository,
    ids: &Identities,
    manifest: &Manifest,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<Staged> {
    if let Some(keys) = repo.keyset() {
        // Format 2: the snapshot is read again with its trust, never taken
        // from what the caller says of it.
        let listed = repo.snapshots_v2(keys).await?;
        let Some(snapshot) = listed
            .snapshots
            .iter()
            .find(|s| s.manifest.id == manifest.id)
        else {
            return Err(Error::SnapshotNotFound(format!("id {}", manifest.id)));
        };
        return stage_v2(repo, keys, snapshot, to, opts).await;
    }
    let started = Started::at(to, opts, manifest.size)?;
    let index = repo.load_index(ids).await?;
    let plan = build_plan(&repo.chunk_list(manifest, None).await?, ids)?;
    let snapshot = Snapshot {
        id: &manifest.id,
        kind: manifest.kind,
        size: manifest.size,
        list_key: &manifest.list,
        sha256: Some(&manifest.sha256),
        packs: fetch::Packs::V1,
        fallbacks: &opts.fallbacks,
        recorded: None,
        replay: None,
    };
    stage_plan(repo, ids, &snapshot, index, plan, started).await
}

/// [`stage`] for a format 2 snapshot, which must be [`Trust::Signed`]
/// (else an error naming it and why, before anything is read or written):
/// planned from its list state ([`Repository::list_state`], which matched
/// the manifest's `list_blake3`), its chunks found in signed index files
/// ([`Repository::index_v2`]) and each checked against its keyed id. No
/// SHA-256 read-back (design 5.1): every chunk written matched its keyed
/// id and the list of ids matched `list_blake3`, which the signed manifest
/// commits to. Other targets are not asked for chunks (fallbacks are
/// format 1's): a chunk with no intact copy here fails the restore.
pub(crate) async fn stage_v2(
    repo: &Repository,
    keys: &KeySet,
    snapshot: &SnapshotV2,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<Staged> {
    let (ids, manifest) = restorable_v2(keys, snapshot)?;
    let started = Started::at(to, opts, manifest.size)?;
    let index = repo.index_v2(keys).await?.index;
    let mut plan = PlanBuilder::default();
    for node in repo.list_state(keys, manifest).await?.nodes() {
        plan.entry(node.entry.clone());
        for (id, len) in &node.chunks {
            plan.chunk(*id, *len, &manifest.key())?;
        }
    }
    let key = manifest.key();
    let replay = opts.replay.as_ref().map(|plan| Replay {
        keys,
        plan,
        source: &manifest.source,
        page_size: manifest.page_size,
    });
    let recorded = match replay {
        // The replayed state is not the snapshot's: its check must run.
        Some(_) => None,
        None => usable_record(repo, keys, manifest, opts).await,
    };
    let snapshot = Snapshot {
        id: &manifest.id,
        kind: manifest.kind,
        size: manifest.size,
        list_key: &key,
        sha256: None,
        packs: fetch::Packs::v2(keys.chunk_key()),
        fallbacks: &opts.fallbacks,
        recorded,
        replay,
    };
    let mut staged = stage_plan(repo, &ids, &snapshot, index, plan.done(), started).await?;
    if snapshot.replay.is_none() {
        staged.check_recorded = record_own_check(repo, keys, manifest, &staged, opts).await;
    }
    Ok(staged)
}

/// A signed record of an ok integrity_check of `manifest`'s SQLite
/// snapshot that lets this restore skip its own (design 5.2), unless the
/// check is off or forced. A record that cannot be read costs the check,
/// never the restore.
async fn usable_record(
    repo: &Repository,
    keys: &KeySet,
    manifest: &ManifestV2,
    opts: &RestoreOptions,
) -> Option<RecordedCheck> {
    if manifest.kind != SourceKind::Sqlite || !opts.check_database || opts.force_database_check {
        return None;
    }
    repo.recorded_check(keys, manifest)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(
                "cannot read the check records of {}: {e}; checking",
                manifest.id
            );
            None
        })
}

/// After this restore's own integrity_check passed, records it when the
/// host can sign (the owner's identity), so later restores of the snapshot
/// skip it. Failing to record is a warning: the restore is good.
async fn record_own_check(
    repo: &Repository,
    keys: &KeySet,
    manifest: &ManifestV2,
    staged: &Staged,
    opts: &RestoreOptions,
) -> Option<String> {
    let ran = manifest.kind == SourceKind::Sqlite && opts.check_database;
    if !ran || staged.recorded_check.is_some() || keys.signer().is_none() {
        return None;
    }
    if opts.force_database_check
        && usable_record(repo, keys, manifest, &RestoreOptions::default())
            .await
            .is_some()
    {
        return None; // one record is enough
    }
    match repo.record_check(keys, manifest, CheckedAt::Restore).await {
        Ok(key) => Some(key),
        Err(e) => {
            tracing::warn!("integrity_check ok, but it could not be recorded: {e}");
            None
        }
    }
}

/// The data identities and manifest of `snapshot`, when it may be restored.
fn restorable_v2<'a>(
    keys: &KeySet,
    snapshot: &'a SnapshotV2,
) -> Result<(Identities, &'a ManifestV2)> {
    let manifest = &snapshot.manifest;
    if let Trust::Rejected { reason } = &snapshot.trust {
        return Err(Error::Untrusted {
            key: manifest.key(),
            reason: reason.clone(),
        });
    }
    if !snapshot.trust.is_signed() {
        return Err(Error::Untrusted {
            key: manifest.key(),
            reason: "it is not signed".into(),
        });
    }
    let ids = keys
        .data()
        .ok_or_else(|| Error::Key("a writer key cannot restore: use an identity".into()))?;
    Ok((ids, manifest))
}

/// Restores a format 2 snapshot to `to` ([`stage_v2`], then the switch).
pub(crate) async fn restore_v2(
    repo: &Repository,
    keys: &KeySet,
    snapshot: &SnapshotV2,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreSummary> {
    restorable_v2(keys, snapshot)?;
    check_not_in_use(to, snapshot.manifest.kind)?;
    stage_v2(repo, keys, snapshot, to, opts)
        .await?
        .put_in_place()
        .await
}

/// A restore begun: the destination checked, the staging path chosen.
struct Started<'a> {
    clock: Instant,
    staging: Staging,
    to: &'a Path,
    opts: &'a RestoreOptions,
}

impl<'a> Started<'a> {
    /// Refuses an existing `to` without `force`, before anything is read.
    fn at(to: &'a Path, opts: &'a RestoreOptions, size: u64) -> Result<Started<'a>> {
        let clock = Instant::now();
        let exists = std::fs::symlink_metadata(to).is_ok();
        if exists && !opts.force {
            return Err(Error::TargetExists(to.to_path_buf()));
        }
        let staging = staging_beside(to)?;
        opts.progress.total.store(size, Ordering::Relaxed);
        Ok(Started {
            clock,
            staging,
            to,
            opts,
        })
    }
}

/// What [`stage_plan`] needs of a snapshot, whichever its format.
struct Snapshot<'a> {
    id: &'a str,
    kind: SourceKind,
    size: u64,
    /// The object named when the list is at fault.
    list_key: &'a str,
    /// Format 1's checksum of the data, read back; `None`: no read-back.
    sha256: Option<&'a str>,
    packs: fetch::Packs,
    fallbacks: &'a [Fallback],
    /// A signed record that integrity_check passed on these bytes: the
    /// check is not run again.
    recorded: Option<RecordedCheck>,
    /// Replica objects to apply before the check.
    replay: Option<Replay<'a>>,
}

/// A replay to apply to a staged base (format 2).
#[derive(Clone, Copy)]
struct Replay<'a> {
    keys: &'a KeySet,
    plan: &'a ReplayPlan,
    source: &'a str,
    page_size: Option<u32>,
}

/// Lays out, fetches and verifies a planned snapshot in the staging path.
async fn stage_plan(
    repo: &Repository,
    ids: &Identities,
    snapshot: &Snapshot<'_>,
    index: crate::repo::Index,
    plan: Plan,
    started: Started<'_>,
) -> Result<Staged> {
    let Started {
        clock,
        staging,
        to,
        opts,
    } = started;
    if snapshot.fallbacks.is_empty() {
        // Nothing else could serve a chunk no index names: fail before
        // downloading anything.
        fetch::unindexed(&index, &plan.wants, snapshot.list_key)?;
    }

    // A database (SQLite, or DuckDB with its .wal beside it) is restored to
    // `to` itself; side files go to `to` + their suffix.
    tree::check(&plan.entries, snapshot.kind, snapshot.list_key)?;
    let layout = Layout::of(snapshot.kind, &plan.entries);
    let files = tree::prepare(&staging.path, &plan.entries, layout)?;
    let files = Arc::new(files);

    let sink = fetch::Sink {
        files: files.clone(),
        packs: snapshot.packs,
        progress: &opts.progress,
        concurrency: opts.concurrency,
    };
    let fetched = fetch::fetch_all(repo, ids, index, plan.wants, snapshot.fallbacks, &sink).await?;
    let replayed = match snapshot.replay {
        Some(r) => {
            let file = files.first().ok_or_else(|| {
                Error::Verification("a replicated snapshot holds no database file".into())
            })?;
            crate::replicate::restore::apply(repo, r.keys, r.plan, r.source, r.page_size, file)
                .await?;
            r.plan.at().map(|at| Replayed {
                at,
                steps: r.plan.steps(),
                objects: r.plan.objects.len(),
            })
        }
        None => None,
    };

    let staged = staging.path.clone();
    let check = Check {
        kind: snapshot.kind,
        database: opts.check_database && snapshot.recorded.is_none(),
        label: to.to_path_buf(),
    };
    let entries = plan.entries;
    let expected = snapshot.sha256.map(str::to_string);
    let files_for_check = files.clone();
    let staged_wal = tokio::task::spawn_blocking(move || {
        finish_staged(
            &staged,
            &entries,
            &files_for_check,
            expected.as_deref(),
            &check,
        )
    })
    .await
    .map_err(|e| Error::io("restore", std::io::Error::other(e.to_string())))??;
    Ok(Staged {
        staging,
        to: to.to_path_buf(),
        kind: snapshot.kind,
        staged_wal,
        snapshot: snapshot.id.to_string(),
        bytes: snapshot.size,
        clock,
        damaged: fetched.damaged,
        damage_recorded: fetched.recorded,
        fetched_elsewhere: fetched.elsewhere,
        recorded_check: snapshot.recorded.clone(),
        check_recorded: None,
        replayed,
    })
}

/// A fresh staging path beside `to` (in its directory, created if missing,
/// so the final rename stays on one filesystem), after removing what an
/// interrupted restore to the same place left.
fn staging_beside(to: &Path) -> Result<Staging> {
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
    Ok(Staging {
        path: parent.join(format!(
            ".{name}.offsite-partial-{:08x}",
            rand::random::<u32>()
        )),
        armed: true,
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

fn build_plan(list: &ChunkList, ids: &Identities) -> Result<Plan> {
    let key = list.key();
    let mut plan = PlanBuilder::default();
    list.read(ids, |item| match item {
        ListItem::Entry(e) => {
            plan.entry(e);
            Ok(())
        }
        ListItem::Chunk(id, len) => plan.chunk(id, len, key),
    })?;
    Ok(plan.done())
}

/// A [`Plan`] built from a list's entries and chunks, in list order.
#[derive(Default)]
struct PlanBuilder {
    plan: Plan,
    file_offset: u64,
    /// The entry the chunks that follow belong to, if it is a file.
    current: Option<u32>,
}

impl PlanBuilder {
    fn entry(&mut self, e: Entry) {
        let entries = &mut self.plan.entries;
        self.current = matches!(e, Entry::File { .. }).then_some(entries.len() as u32);
        self.file_offset = 0;
        entries.push(e);
    }

    /// The next chunk of the current file; refused (naming `key`) when
    /// no file comes before it.
    fn chunk(&mut self, id: crate::chunk::ChunkId, len: u32, key: &str) -> Result<()> {
        let file = self.current.ok_or_else(|| Error::Corrupt {
            key: key.to_string(),
            message: "chunk line before any file".into(),
        })?;
        self.plan.wants.push(Want {
            id,
            len,
            file,
            file_offset: self.file_offset,
        });
        self.file_offset += len as u64;
        Ok(())
    }

    fn done(self) -> Plan {
        self.plan
    }
}

/// What [`finish_staged`] checks beyond the checksum.
struct Check {
    kind: SourceKind,
    /// The database's own check (off with `--no-database-check`).
    database: bool,
    /// The destination, to name in errors instead of the staging path.
    label: PathBuf,
}

/// Syncs, checksums (format 1: `expected` is the manifest's SHA-256) and
/// checks the staged copy, folds a DuckDB `.wal` into it, then creates its
/// symlinks and applies modes and times. Returns whether a DuckDB `.wal` is
/// still staged beside it (not folded because the check was skipped).
fn finish_staged(
    staging: &Path,
    entries: &[Entry],
    files: &[PathBuf],
    expected: Option<&str>,
    check: &Check,
) -> Result<bool> {
    // Reading back for the checksum, syncing and the database's own check
    // each take about a second per GiB; they run side by side, and the
    // restore waits for all three before anything is renamed.
    let (sha, synced, checked) = std::thread::scope(|scope| {
        let sha = expected.map(|_| scope.spawn(|| sha256_of(entries, files)));
        let synced = scope.spawn(|| sync_files(entries, files));
        let checked = check_database(staging, check);
        (
            sha.map(|t| t.join().expect("checksum thread")),
            synced.join().expect("sync thread"),
            checked,
        )
    });
    if let (Some(sha), Some(expected)) = (sha, expected) {
        let got = sha?;
        if got != expected {
            return Err(Error::Verification(format!(
                "SHA-256 of the restored data is {got}, the manifest says {expected}"
            )));
        }
    }
    let checked = checked?;
    synced?;
    let staged_wal = fold_staged(staging, check, checked)?;
    tree::create_links(entries, files)?;
    // A folded .wal is gone: only the database's own metadata applies.
    let kept = if check.kind == SourceKind::Duckdb && !staged_wal {
        1.min(entries.len())
    } else {
        entries.len()
    };
    tree::apply_metadata(&entries[..kept], &files[..kept])?;
    Ok(staged_wal)
}

/// DuckDB: a restored `.wal` is folded into the staged database (DuckDB's
/// own CHECKPOINT), so that one rename puts the whole database in place
/// (see [`place`]); the folded file is checked again and must hold the same
/// rows. Returns whether a `.wal` remains (only when the check is skipped).
fn fold_staged(staging: &Path, check: &Check, before: Option<duckdb_lib::Checked>) -> Result<bool> {
    let wal = with_suffix(staging, ".wal");
    if check.kind != SourceKind::Duckdb || std::fs::symlink_metadata(&wal).is_err() {
        return Ok(false);
    }
    if !check.database {
        return Ok(true);
    }
    let failed =
        |what: String| Error::Verification(format!("the restored DuckDB database: {what}"));
    duckdb_lib::checkpoint(staging).map_err(|e| failed(format!("cannot fold its .wal: {e}")))?;
    if std::fs::symlink_metadata(&wal).is_ok() {
        return Err(failed("DuckDB left its .wal after CHECKPOINT".into()));
    }
    let after = duckdb_lib::check(staging).map_err(|e| failed(e.to_string()))?;
    if before.as_ref() != Some(&after) {
        return Err(failed(format!(
            "it held {before:?} before folding its .wal and {after:?} after"
        )));
    }
    tree::open(staging, false)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("syncing the restored copy", e))?;
    Ok(false)
}

fn sha256_of(entries: &[Entry], files: &[PathBuf]) -> Result<String> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (entry, path) in entries.iter().zip(files) {
        if let Entry::File { .. } = entry {
            let mut f = tree::open(path, false).map_err(|e| Error::io("reading back", e))?;
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
            tree::open(path, false)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("syncing the restored copy", e))?;
        }
    }
    Ok(())
}

/// Opens a restored database with its own engine: DuckDB must read it,
/// SQLite's `PRAGMA integrity_check` must say ok. Returns what DuckDB counted.
fn check_database(staging: &Path, check: &Check) -> Result<Option<duckdb_lib::Checked>> {
    if !check.database {
        return Ok(None);
    }
    if check.kind == SourceKind::Duckdb {
        return match duckdb_lib::check(staging) {
            Ok(c) => {
                tracing::info!(
                    tables = c.tables,
                    rows = c.rows,
                    "DuckDB opened the restored database"
                );
                Ok(Some(c))
            }
            Err(e @ Error::DuckdbUnavailable(_)) => Err(e),
            Err(e) => match duckdb_lib::explain_open_failure(staging, e) {
                Error::DuckdbVersion {
                    storage_version,
                    written_by,
                    library,
                    message,
                    ..
                } => Err(Error::DuckdbVersion {
                    path: check.label.clone(),
                    storage_version,
                    written_by,
                    library,
                    message,
                }),
                e => Err(Error::Verification(format!(
                    "DuckDB cannot read the restored database: {e}"
                ))),
            },
        };
    }
    if check.kind == SourceKind::Sqlite {
        let problems = sqlite::integrity_check(staging)?;
        if !problems.is_empty() {
            return Err(Error::Verification(format!(
                "PRAGMA integrity_check: {}",
                problems.into_iter().take(5).collect::<Vec<_>>().join("; ")
            )));
        }
    }
    Ok(None)
}
