//! Fetching a snapshot's chunks out of packs into the staged files of a
//! restore, checked against their ids, with other targets' repositories as
//! fallbacks.
//!
//! Chunk ids are the unkeyed BLAKE3 hash of the chunk's bytes in format 1
//! and keyed with the key set's K in format 2 ([`Packs`] says which, and
//! whether a pack ends with a format 2 trailer, of which only `DATA` is
//! decoded: the signed index file says where each chunk is). The same
//! chunk has the same id in every target's repository (of one key set),
//! and a copy fetched from any of them is checked exactly like one from
//! the repository being restored. Rounds, each over what the ones before could not write:
//! 1. the repository's own intact copies (those no damage record names);
//! 2. each fallback repository in turn, by chunk id, its intact copies;
//! 3. the repository's copies that are recorded as damaged: a last resort,
//!    because a record could be wrong, and a copy that matches its id is
//!    good whatever a record says.
//!
//! A chunk that does not decode or does not match its id is recorded as
//! damaged in the repository it came from (see [`crate::repo::Damage`]), so
//! the next backup stores it again. A missing pack is not damage: its chunks
//! just go to the next round.
//!
//! A few packs download at once while at most one per core is decoded, in
//! one piece into buffers each decoder keeps, and written from there; a pack
//! that does not decode that way is decoded again as a stream, which finds
//! how much of it is good.
//!
//! Never: write a byte to a staged file that did not match its chunk id, or
//! report a chunk as fetched that was not written.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::backup::Progress;
use crate::chunk::{ChunkHasher, ChunkId, ChunkKey};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::repo::format::pack2::PackLayout;
use crate::repo::format::DamagedPack;
use crate::repo::{Access, Index, Location, Repository};
use crate::storage::Storage;

/// Another target's repository to fetch chunks from when the one being
/// restored lacks an intact copy. Opened only when needed, with `access`
/// when it holds format 2; used only when it is of the restored
/// repository's format and key set (chunk ids are keyed per key set).
#[derive(Debug, Clone)]
pub struct Fallback {
    /// The target's name, for messages.
    pub name: String,
    pub storage: Arc<dyn Storage>,
    pub access: Option<Access>,
}

/// Chunks a restore took from a fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedElsewhere {
    /// The fallback's name.
    pub from: String,
    /// Chunk placements written (a chunk used twice counts twice).
    pub chunks: u64,
    pub bytes: u64,
}

/// A chunk the restore needs at one place: `len` bytes of chunk `id` go to
/// staged file `file` at `file_offset`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    pub id: ChunkId,
    pub len: u32,
    pub file: u32,
    pub file_offset: u64,
}

/// A [`Want`] placed in a pack, at `offset` of the decoded pack.
struct Piece {
    offset: u32,
    want: Want,
}

/// How a repository's pack objects are read: how a chunk is checked
/// against its id (the one check, [`ChunkHasher`]), and whether the object
/// ends with a format 2 trailer after its `DATA`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packs {
    pub hasher: ChunkHasher,
    pub trailer: bool,
}

impl Packs {
    /// Format 1: plain BLAKE3 ids, the object is `DATA`.
    pub(crate) const V1: Packs = Packs {
        hasher: ChunkHasher::Plain,
        trailer: false,
    };

    /// Format 2: ids keyed with `key`, `DATA || META || FOOTER`.
    pub(crate) fn v2(key: ChunkKey) -> Packs {
        Packs {
            hasher: ChunkHasher::Keyed(key),
            trailer: true,
        }
    }

    /// The stored `DATA` of pack object `raw` (`key`); the problem when
    /// its footer is not one (the pack is then damaged).
    fn data<'a>(&self, key: &str, raw: &'a [u8]) -> std::result::Result<&'a [u8], String> {
        if !self.trailer {
            return Ok(raw);
        }
        let size = raw.len() as u64;
        let footer = PackLayout::footer_range(key, size).map_err(|e| e.to_string())?;
        let layout = PackLayout::parse(key, size, &raw[footer.start as usize..])
            .map_err(|e| e.to_string())?;
        Ok(&raw[..layout.data_len() as usize])
    }
}

/// Where the staged files are, where progress goes, and how packs are read.
pub(crate) struct Sink<'a> {
    pub files: Arc<Vec<PathBuf>>,
    pub packs: Packs,
    pub progress: &'a Arc<Progress>,
    pub concurrency: usize,
}

/// What fetching found, for the restore's summary.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// Damage found in the restored repository's packs.
    pub damaged: Vec<DamagedPack>,
    /// The record written for it, if one could be.
    pub recorded: Option<String>,
    pub elsewhere: Vec<FetchedElsewhere>,
}

/// One round's plan: pack number -> pieces, and the wants it cannot place.
struct Placed {
    packs: HashMap<u32, Vec<Piece>>,
    left: Vec<Want>,
}

/// Places each want whose chunk `lookup` finds with the same length.
fn place(wants: Vec<Want>, lookup: impl Fn(&ChunkId) -> Option<Location>) -> Placed {
    let mut placed = Placed {
        packs: HashMap::new(),
        left: Vec::new(),
    };
    for want in wants {
        match lookup(&want.id) {
            Some(loc) if loc.len == want.len => {
                placed.packs.entry(loc.pack).or_default().push(Piece {
                    offset: loc.offset,
                    want,
                })
            }
            _ => placed.left.push(want),
        }
    }
    placed
}

/// The wants that no copy in `index` can serve at all: restoring without
/// fallbacks fails on them before anything is downloaded.
pub(crate) fn unindexed(index: &Index, wants: &[Want], list_key: &str) -> Result<()> {
    for w in wants {
        match index.get(&w.id) {
            None => {
                return Err(Error::Corrupt {
                    key: list_key.to_string(),
                    message: format!(
                        "chunk {} is not in any index file (a pack or index object is missing)",
                        w.id
                    ),
                })
            }
            Some(loc) if loc.len != w.len => {
                return Err(Error::Corrupt {
                    key: list_key.to_string(),
                    message: format!(
                        "chunk {}: list says {} bytes, index says {}",
                        w.id, w.len, loc.len
                    ),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Writes every want into the staged files, in the rounds the module doc
/// describes. Fails when some chunk has no good copy anywhere.
pub(crate) async fn fetch_all(
    repo: &Repository,
    ids: &Identities,
    index: Index,
    wants: Vec<Want>,
    fallbacks: &[Fallback],
    sink: &Sink<'_>,
) -> Result<Fetched> {
    let mut out = Fetched::default();
    let mut problem = Problem::default();
    let first = place(wants, |id| index.get(id).filter(|l| !l.damaged));
    // The map of every chunk is large; keep only what later rounds need.
    let damaged_copies: HashMap<ChunkId, Location> = first
        .left
        .iter()
        .filter_map(|w| index.get(&w.id).map(|l| (w.id, l)))
        .filter(|(_, l)| l.damaged)
        .collect();
    let Index { packs, damage, .. } = index;
    let round = fetch_packs(repo, ids, &packs, first.packs, sink).await?;
    problem.add(&round);
    out.recorded = repo.note_damage(ids, &damage, &round.damaged).await;
    out.damaged = round.damaged;
    let mut left = first.left;
    left.extend(round.failed);

    for fallback in fallbacks {
        if left.is_empty() {
            break;
        }
        match from_fallback(repo, fallback, ids, left.clone(), sink).await {
            Ok((rest, got)) => {
                tracing::info!(
                    "{} chunks damaged or missing on {} were fetched from target {}",
                    got.chunks,
                    repo.describe(),
                    got.from
                );
                out.elsewhere.push(got);
                left = rest;
            }
            Err(e) => tracing::warn!(
                "could not fetch chunks from target {}: {e}; trying the next",
                fallback.name
            ),
        }
    }

    if !left.is_empty() && !damaged_copies.is_empty() {
        let last = place(left, |id| damaged_copies.get(id).copied());
        let round = fetch_packs(repo, ids, &packs, last.packs, sink).await?;
        problem.add(&round);
        left = last.left;
        left.extend(round.failed);
    }
    match left.first() {
        None => Ok(out),
        Some(w) => Err(problem.into_error(left.len(), w, repo)),
    }
}

/// Fetches `wants` from one fallback; returns what is still missing and
/// what was taken from it.
async fn from_fallback(
    restored: &Repository,
    fallback: &Fallback,
    ids: &Identities,
    wants: Vec<Want>,
    sink: &Sink<'_>,
) -> Result<(Vec<Want>, FetchedElsewhere)> {
    let storage = fallback.storage.clone();
    let repo = Repository::open_with(storage, fallback.access.as_ref()).await?;
    let mut got = FetchedElsewhere {
        from: fallback.name.clone(),
        chunks: 0,
        bytes: 0,
    };
    if repo.config().keyset() != restored.config().keyset() {
        tracing::debug!(
            "target {} is of another format or key set: its chunk ids are not these",
            fallback.name
        );
        return Ok((wants, got));
    }
    // Format 2: the fallback's own keys. One key set's targets share the
    // chunk-id key, but each target's later generations are its own.
    let own;
    let (index, ids) = match repo.keyset() {
        Some(keys) => {
            own = keys.data().ok_or_else(|| {
                Error::Key("a writer key cannot read another target's packs".into())
            })?;
            (repo.index_v2(keys).await?.index, &own)
        }
        None => (repo.load_index(ids).await?, ids),
    };
    let placed = place(wants, |id| index.get(id).filter(|l| !l.damaged));
    let Index { packs, damage, .. } = index;
    let round = fetch_packs(&repo, ids, &packs, placed.packs, sink).await?;
    repo.note_damage(ids, &damage, &round.damaged).await;
    let mut left = placed.left;
    left.extend(round.failed);
    (got.chunks, got.bytes) = (round.chunks, round.bytes);
    Ok((left, got))
}

/// What one round of packs did.
#[derive(Default)]
struct Round {
    failed: Vec<Want>,
    damaged: Vec<DamagedPack>,
    chunks: u64,
    bytes: u64,
    /// The first thing that went wrong: (object, what).
    problem: Option<(String, String)>,
}

/// The first problem met over all rounds, for the final error.
#[derive(Default)]
struct Problem(Option<(String, String)>);

impl Problem {
    fn add(&mut self, round: &Round) {
        if self.0.is_none() {
            self.0.clone_from(&round.problem);
        }
    }

    fn into_error(self, count: usize, first: &Want, repo: &Repository) -> Error {
        let (key, what) = self.0.unwrap_or_else(|| {
            (
                repo.describe(),
                format!("chunk {} is not in any index file", first.id),
            )
        });
        Error::Corrupt {
            key,
            message: format!(
                "{what}; {count} chunk placements have no intact copy on this or any other \
                 target (damaged or missing)"
            ),
        }
    }
}

/// Downloads the packs of `placed` a few at a time and writes their pieces.
async fn fetch_packs(
    repo: &Repository,
    ids: &Identities,
    keys: &[String],
    placed: HashMap<u32, Vec<Piece>>,
    sink: &Sink<'_>,
) -> Result<Round> {
    let decoders = Decoders::new(sink.concurrency);
    let decoders = &decoders;
    let outcomes: Vec<PackOutcome> = stream::iter(placed)
        .map(|(pack, pieces)| {
            let key = keys[pack as usize].clone();
            async move { fetch_pack(repo, ids, key, pieces, sink, decoders).await }
        })
        .buffer_unordered(sink.concurrency.max(1))
        .try_collect()
        .await?;
    let mut round = Round::default();
    for o in outcomes {
        round.chunks += o.chunks;
        round.bytes += o.written;
        round.failed.extend(o.failed);
        if round.problem.is_none() {
            round.problem = o.problem.map(|p| (o.key.clone(), p));
        }
        if !o.damaged.is_empty() {
            round.damaged.push((o.key, o.damaged));
        }
    }
    round.damaged.sort();
    Ok(round)
}

/// The pack decoders of a round: one per core at most decode at once (more
/// would only add buffers, not speed), while the other packs in flight
/// download; each keeps its buffers from pack to pack.
struct Decoders {
    permits: tokio::sync::Semaphore,
    idle: std::sync::Mutex<Vec<codec::Decoder>>,
}

impl Decoders {
    fn new(concurrency: usize) -> Decoders {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Decoders {
            permits: tokio::sync::Semaphore::new(cores.min(concurrency).max(1)),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// An idle decoder, or a new one (at most as many as permits).
    fn take(&self) -> Result<codec::Decoder> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(d) => Ok(d),
            None => codec::Decoder::new().map_err(|e| Error::io("starting a pack decoder", e)),
        }
    }

    fn put(&self, decoder: codec::Decoder) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(decoder);
    }
}

/// What one pack gave.
struct PackOutcome {
    key: String,
    /// Pieces written and their bytes.
    chunks: u64,
    written: u64,
    failed: Vec<Want>,
    /// Ids of chunks that did not decode or did not match.
    damaged: Vec<ChunkId>,
    problem: Option<String>,
}

impl PackOutcome {
    fn new(key: String) -> PackOutcome {
        PackOutcome {
            key,
            chunks: 0,
            written: 0,
            failed: Vec::new(),
            damaged: Vec::new(),
            problem: None,
        }
    }

    /// `want` is not written: its chunk is damaged, for `problem`.
    fn damaged(&mut self, want: Want, problem: impl FnOnce() -> String) {
        self.failed.push(want);
        self.damaged.push(want.id);
        self.problem.get_or_insert_with(problem);
    }

    fn failed(key: String, pieces: &[Piece], damaged: bool, problem: String) -> PackOutcome {
        let mut ids: Vec<ChunkId> = if damaged {
            pieces.iter().map(|p| p.want.id).collect()
        } else {
            Vec::new()
        };
        ids.sort_unstable();
        ids.dedup();
        PackOutcome {
            key,
            chunks: 0,
            written: 0,
            failed: pieces.iter().map(|p| p.want).collect(),
            damaged: ids,
            problem: Some(problem),
        }
    }
}

async fn fetch_pack(
    repo: &Repository,
    ids: &Identities,
    key: String,
    mut pieces: Vec<Piece>,
    sink: &Sink<'_>,
    decoders: &Decoders,
) -> Result<PackOutcome> {
    let raw = match repo.get_bytes(&key).await {
        Ok(raw) => raw,
        Err(Error::Storage { cause: source, .. }) if source.is_not_found() => {
            let problem = format!("pack {key} is missing");
            return Ok(PackOutcome::failed(key, &pieces, false, problem));
        }
        Err(e) => return Err(e),
    };
    let ids = ids.clone();
    let files = sink.files.clone();
    let packs = sink.packs;
    // Never closed, so acquiring cannot fail.
    let _permit = decoders.permits.acquire().await.ok();
    let mut decoder = decoders.take()?;
    // Decoding is CPU work: keep it off the async threads.
    let (outcome, decoder) = tokio::task::spawn_blocking(move || {
        let outcome = write_pack(&raw, key, &ids, packs, &mut pieces, &files, &mut decoder);
        (outcome, decoder)
    })
    .await
    .map_err(|e| Error::io("restore", std::io::Error::other(e.to_string())))?;
    decoders.put(decoder);
    let outcome = outcome?;
    sink.progress
        .read
        .fetch_add(outcome.written, Ordering::Relaxed);
    Ok(outcome)
}

/// Packs whose plaintext is larger than this (`pack_size_mib` above 32) are
/// decoded as a stream, so that a decoder's buffers stay a few MiB.
const BULK_MAX: usize = 32 << 20;

/// Decodes one pack and writes its pieces where they belong: in one piece
/// into `decoder`'s buffers when it decodes that way, as a stream otherwise
/// (a damaged pack: the stream tells how far it is good).
fn write_pack(
    raw: &[u8],
    key: String,
    ids: &Identities,
    packs: Packs,
    pieces: &mut [Piece],
    files: &[PathBuf],
    decoder: &mut codec::Decoder,
) -> Result<PackOutcome> {
    pieces.sort_unstable_by_key(|p| p.offset);
    let raw = match packs.data(&key, raw) {
        Ok(data) => data,
        Err(problem) => return Ok(PackOutcome::failed(key, pieces, true, problem)),
    };
    let hasher = packs.hasher;
    match decoder.decode(raw, ids.iter(), &key, BULK_MAX) {
        Ok(plain) => write_pieces(plain, key, hasher, pieces, files),
        Err(codec::BulkError::WrongIdentity(e)) => Err(e),
        Err(codec::BulkError::Streaming) => {
            write_pack_streaming(raw, key, ids, hasher, pieces, files)
        }
    }
}

/// Writes the pieces (sorted by offset) of a decoded pack: each chunk is
/// checked against its id once, and runs of chunks that follow each other
/// in the pack and in a file are written straight from the pack with one
/// call. A chunk that does not match fails its pieces only.
fn write_pieces(
    plain: &[u8],
    key: String,
    hasher: ChunkHasher,
    pieces: &[Piece],
    files: &[PathBuf],
) -> Result<PackOutcome> {
    let mut out = PackOutcome::new(key);
    // The chunk last hashed: its offset, length and id.
    let mut held: Option<(u32, u32, ChunkId)> = None;
    let mut open: HashMap<u32, std::fs::File> = HashMap::new();
    let mut run: Option<Run> = None;
    for p in pieces {
        let start = p.offset as usize;
        let Some(chunk) = plain.get(start..start + p.want.len as usize) else {
            out.damaged(p.want, || {
                format!("chunk {} lies outside the pack", p.want.id)
            });
            continue;
        };
        match held {
            Some((offset, len, _)) if (offset, len) == (p.offset, p.want.len) => {}
            _ => held = Some((p.offset, p.want.len, hasher.id(chunk))),
        }
        if held.map(|(_, _, id)| id) != Some(p.want.id) {
            out.damaged(p.want, || {
                format!("chunk {} does not match its id", p.want.id)
            });
            continue;
        }
        match &mut run {
            Some(r) if r.extends(p) => r.end += p.want.len as usize,
            _ => {
                if let Some(r) = run.replace(Run::of(p)) {
                    r.write(plain, &mut open, files)?;
                }
            }
        }
        out.chunks += 1;
        out.written += u64::from(p.want.len);
    }
    if let Some(r) = run {
        r.write(plain, &mut open, files)?;
    }
    for file in open.values() {
        start_writeback(file);
    }
    out.damaged.sort_unstable();
    out.damaged.dedup();
    Ok(out)
}

/// Checked chunks that follow each other in a decoded pack
/// (`start..end`) and in staged file `file` from `file_offset`.
struct Run {
    file: u32,
    file_offset: u64,
    start: usize,
    end: usize,
}

impl Run {
    fn of(p: &Piece) -> Run {
        let start = p.offset as usize;
        Run {
            file: p.want.file,
            file_offset: p.want.file_offset,
            start,
            end: start + p.want.len as usize,
        }
    }

    fn extends(&self, p: &Piece) -> bool {
        p.want.file == self.file
            && p.offset as usize == self.end
            && p.want.file_offset == self.file_offset + (self.end - self.start) as u64
    }

    fn write(
        &self,
        plain: &[u8],
        open: &mut HashMap<u32, std::fs::File>,
        files: &[PathBuf],
    ) -> Result<()> {
        write_at(
            staged_file(open, files, self.file)?,
            &plain[self.start..self.end],
            self.file_offset,
        )
        .map_err(|e| Error::io("writing restored data", e))
    }
}

/// Decodes one pack as a stream and writes its pieces (sorted by offset)
/// where they belong. Only one chunk is ever held in memory, not the
/// decoded pack. A chunk that does not match its id fails its pieces only;
/// where the pack stops decoding, every piece after fails.
fn write_pack_streaming(
    raw: &[u8],
    key: String,
    ids: &Identities,
    hasher: ChunkHasher,
    pieces: &[Piece],
    files: &[PathBuf],
) -> Result<PackOutcome> {
    let mut plain = match codec::decode_reader(raw, ids.iter(), &key) {
        Ok(p) => p,
        Err(e @ Error::WrongIdentity { .. }) => return Err(e),
        Err(e) => return Ok(PackOutcome::failed(key, pieces, true, e.to_string())),
    };
    let mut out = PackOutcome::new(key);
    let mut pos = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    // The chunk in `buf`: its offset and the hash of what was read.
    let mut held: Option<(u32, ChunkId)> = None;
    let mut open: HashMap<u32, std::fs::File> = HashMap::new();
    let mut coalesce = Coalesce::default();
    for (i, p) in pieces.iter().enumerate() {
        // The same chunk can be wanted at several places (zeroed pages):
        // it is read and checked once.
        if held.map(|(off, _)| off) != Some(p.offset) {
            if let Err(problem) = read_chunk(&mut plain, &mut pos, p, &mut buf) {
                let rest = PackOutcome::failed(String::new(), &pieces[i..], true, problem);
                out.failed.extend(rest.failed);
                out.damaged.extend(rest.damaged);
                out.problem.get_or_insert(rest.problem.unwrap_or_default());
                break;
            }
            held = Some((p.offset, hasher.id(&buf)));
        }
        if held.map(|(_, id)| id) != Some(p.want.id) {
            out.damaged(p.want, || {
                format!("chunk {} does not match its id", p.want.id)
            });
            continue;
        }
        if !coalesce.extends(p.want.file, p.want.file_offset) {
            coalesce.flush(&mut open, files)?;
            coalesce.file = p.want.file;
            coalesce.offset = p.want.file_offset;
        }
        coalesce.data.extend_from_slice(&buf);
        out.chunks += 1;
        out.written += buf.len() as u64;
    }
    coalesce.flush(&mut open, files)?;
    for file in open.values() {
        start_writeback(file);
    }
    out.damaged.sort_unstable();
    out.damaged.dedup();
    Ok(out)
}

/// Reads piece `p`'s chunk into `buf`, skipping from `pos`; the problem if
/// the pack ends or stops decoding first.
fn read_chunk(
    plain: &mut impl Read,
    pos: &mut u64,
    p: &Piece,
    buf: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    let offset = u64::from(p.offset);
    let outside = || format!("chunk {} lies outside the pack", p.want.id);
    // Sorted by offset, a piece before `pos` overlaps the chunk before it:
    // the index entry is wrong.
    let skip = offset.checked_sub(*pos).ok_or_else(outside)?;
    let failed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            outside()
        } else {
            format!("decryption or decompression failed ({e}); the pack is damaged or truncated")
        }
    };
    let skipped = std::io::copy(&mut plain.take(skip), &mut std::io::sink()).map_err(failed)?;
    if skipped != skip {
        return Err(outside());
    }
    buf.resize(p.want.len as usize, 0);
    plain.read_exact(buf).map_err(failed)?;
    *pos = offset + u64::from(p.want.len);
    Ok(())
}

/// Consecutive chunks of a pack are usually consecutive in the file (a full
/// backup packs pages in order): they are written with one call, not one per
/// 4 KiB page.
#[derive(Default)]
struct Coalesce {
    file: u32,
    offset: u64,
    data: Vec<u8>,
}

impl Coalesce {
    const MAX: usize = 1 << 20;

    fn extends(&self, file: u32, offset: u64) -> bool {
        !self.data.is_empty()
            && self.file == file
            && self.offset + self.data.len() as u64 == offset
            && self.data.len() < Self::MAX
    }

    fn flush(&mut self, open: &mut HashMap<u32, std::fs::File>, files: &[PathBuf]) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        write_at(
            staged_file(open, files, self.file)?,
            &self.data,
            self.offset,
        )
        .map_err(|e| Error::io("writing restored data", e))?;
        self.data.clear();
        Ok(())
    }
}

/// Staged file `file`, opened once per pack.
fn staged_file<'a>(
    open: &'a mut HashMap<u32, std::fs::File>,
    files: &[PathBuf],
    file: u32,
) -> Result<&'a std::fs::File> {
    Ok(match open.entry(file) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let path = &files[file as usize];
            v.insert(
                crate::restore::open_staged(path, true)
                    .map_err(|e| Error::io(format!("staging {}", path.display()), e))?,
            )
        }
    })
}

/// Asks the kernel to start writing a staged file's dirty pages now, so the
/// fsync before the final rename waits for little instead of the whole
/// restore's data. Advisory: write errors surface at that fsync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor stays open for the call, and
    // SYNC_FILE_RANGE_WRITE only queues writeback; it touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File) {}

#[cfg(unix)]
fn write_at(f: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, data, offset)
}

#[cfg(not(unix))]
fn write_at(mut f: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(data)
}
