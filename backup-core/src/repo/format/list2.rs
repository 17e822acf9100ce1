//! Format 2 chunk lists (docs/design/format-v2.md, 4.2 and 5.1): the full
//! list, its checksum `list_blake3`, and the delta that describes a
//! snapshot's list by its changes against another snapshot's.
//!
//! A [`ListState`] is the ordered map path -> (entry, chunk array) a list
//! describes. [`ListState::write_full`] gives its canonical full list (the
//! body of `lists/<id>/full`), [`ListState::parse_full`] reads one back and
//! refuses anything that is not exactly what `write_full` writes, and
//! [`ListState::list_blake3`] is plain BLAKE3 (`b3sum`) of those bytes.
//! [`Delta::diff`] writes the delta from a parent state to a child state,
//! [`Delta::parse`] reads one, [`Delta::apply`] rebuilds the child.
//!
//! Full list body (format 1's lines, header `offsite-list 2`):
//! ```text
//! offsite-list 2
//! D <mode-octal> <path>
//! F <mode-octal> <size> <mtime> <path>
//! <chunk-id-hex> <length>          (the chunks of the preceding F, in order)
//! L <path> <target>
//! ```
//! Delta body:
//! ```text
//! offsite-delta 2
//! from <from snapshot id> <its list_blake3>
//! to <snapshot id> <its list_blake3>
//! E <an entry line of the full list>
//! N <number of chunks of that F entry>
//! C <chunk index, from 0> <chunk id> <length>
//! R <path, percent-encoded>
//! ```
//!
//! Choices made here where the design leaves room (each is part of the
//! format from now on):
//! - The bodies here are unsigned. The stored object is the body followed by
//!   the signature line of `crate::sign`; the caller seals and opens it, and
//!   hands only the opened body to the parsers. `list_blake3` is over the
//!   unsigned canonical full list, so it does not depend on who signed.
//! - Canonical order compares paths component by component (split at `/`)
//!   as bytes, so a directory comes right before its contents, as the sorted
//!   walk of `source::files` gives them.
//! - A full list refuses: a missing or other header, a line that does not
//!   re-encode to itself (uppercase hex, leading zeros, a missing final
//!   newline), paths out of canonical order or repeated, chunk lines not
//!   after an `F`, a chunk of length 0, and `F` chunks that do not add up to
//!   the file's size.
//! - In a delta, `N` appears only when the chunk count changes and at most
//!   once, right after its `E`; an `E F` for a path that was not a file
//!   starts from no chunks. `C` indices are strictly increasing within an
//!   entry (a repeated or backwards index is an overlapping edit) and below
//!   the count after `N`. The writer emits `C` for every index whose chunk
//!   differs from the parent's, so an in-place page change costs one line
//!   and a shifted file costs its changed tail.
//! - `R` of a path the parent does not have, and `N`/`C` after an `E D` or
//!   `E L`, are refused; an `E` that changes nothing is accepted (it adds up)
//!   but never written.
//!
//! Never: apply a delta to a state other than the one it names (snapshot id
//! and `list_blake3` must both match what the caller holds for the parent),
//! return a state whose files' chunks do not add up to their sizes, or take
//! a state built by applying deltas for checked: [`Delta::apply`] labels its
//! result with the `list_blake3` the delta *claims*, and the reader must
//! compare [`ListState::list_blake3`] of the end state with the manifest's
//! (intermediate states are not hashed, per the design).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use super::{decode_path, encode_path, write_chunk, write_entry};
use crate::chunk::ChunkId;
use crate::source::Entry;

pub const FULL_HEADER: &str = "offsite-list 2";
pub const DELTA_HEADER: &str = "offsite-delta 2";

/// One chunk of a file: its id and length.
pub type Chunk = (ChunkId, u32);

/// Why a list body or a delta was refused. Line numbers count from 1 (the
/// header); the caller adds the object's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListFormatError {
    #[error("line 1: expected the header {expected:?}, found {found:?}")]
    Header {
        expected: &'static str,
        found: String,
    },
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: &'static str },
    #[error("line {line}: {path} is out of canonical order (or repeated)")]
    Order { line: usize, path: String },
    #[error("{path}: its chunks add up to {total} bytes, but its size is {size}")]
    Size { path: String, size: u64, total: u64 },
    #[error(
        "the delta is from snapshot {named} (list {named_blake3}), \
         not from {held} (list {held_blake3})"
    )]
    WrongParent {
        named: String,
        named_blake3: ListHash,
        held: String,
        held_blake3: ListHash,
    },
    #[error("removes {path}, which the parent does not have")]
    RemovesAbsent { path: String },
    #[error("chunk {index} of {path} is out of bounds (it has {count})")]
    OutOfBounds {
        path: String,
        index: u32,
        count: u32,
    },
    #[error("chunk {index} of {path} is edited twice or out of order")]
    Overlap { path: String, index: u32 },
    #[error("{path}: chunk {index} was added by N but given no C line")]
    Unfilled { path: String, index: u32 },
}

type Result<T, E = ListFormatError> = std::result::Result<T, E>;

/// A `list_blake3`: BLAKE3 of a canonical full list, written as 64
/// lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListHash(pub [u8; 32]);

impl ListHash {
    /// The hash of `full`, the bytes of a canonical full list.
    pub fn of(full: &[u8]) -> ListHash {
        ListHash(*blake3::hash(full).as_bytes())
    }

    /// Parses 64 lowercase hex digits, nothing else.
    pub fn parse(s: &str) -> Option<ListHash> {
        let lower = s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut out = [0u8; 32];
        (lower && hex::decode_to_slice(s, &mut out).is_ok()).then_some(ListHash(out))
    }
}

impl fmt::Display for ListHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ListHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListHash({self})")
    }
}

/// Which snapshot's list a state is, and its `list_blake3` (computed for a
/// parsed full list, claimed by the delta for an applied one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub snapshot: String,
    pub list_blake3: ListHash,
}

/// A path in canonical order: component by component, as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CanonPath(String);

impl Ord for CanonPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.split('/').cmp(other.0.split('/'))
    }
}

impl PartialOrd for CanonPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two paths in canonical order.
pub fn canonical_cmp(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

/// One entry of a state and, for a file, its chunks in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub entry: Entry,
    pub chunks: Vec<Chunk>,
}

/// The ordered map path -> (entry, chunk array) a list describes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListState {
    entries: BTreeMap<CanonPath, Node>,
}

fn entry_path(e: &Entry) -> &str {
    match e {
        Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => path,
    }
}

/// The size a file entry's chunks must add up to; `None` for others.
fn file_size(e: &Entry) -> Option<u64> {
    match e {
        Entry::File { size, .. } => Some(*size),
        _ => None,
    }
}

/// Refuses a node whose chunks do not fit its entry.
fn check_node(node: &Node) -> Result<()> {
    let total: u64 = node.chunks.iter().map(|(_, l)| u64::from(*l)).sum();
    let size = file_size(&node.entry).unwrap_or(0);
    if total != size {
        return Err(ListFormatError::Size {
            path: entry_path(&node.entry).to_string(),
            size,
            total,
        });
    }
    Ok(())
}

impl ListState {
    /// Adds or replaces the entry at its path, with its chunks; refused when
    /// the chunks do not add up to a file's size (or a non-file has chunks).
    pub fn insert(&mut self, entry: Entry, chunks: Vec<Chunk>) -> Result<()> {
        let node = Node { entry, chunks };
        check_node(&node)?;
        let path = CanonPath(entry_path(&node.entry).to_string());
        self.entries.insert(path, node);
        Ok(())
    }

    /// The entries in canonical order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of chunks over all files.
    pub fn chunk_count(&self) -> u64 {
        self.nodes().map(|n| n.chunks.len() as u64).sum()
    }

    /// The canonical full list: exactly the bytes offsite writes.
    pub fn write_full(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.chunk_count() as usize * 72);
        out.extend_from_slice(FULL_HEADER.as_bytes());
        out.push(b'\n');
        for node in self.nodes() {
            write_entry(&mut out, &node.entry).expect("writing to a Vec");
            for (id, len) in &node.chunks {
                write_chunk(&mut out, id, *len as usize).expect("writing to a Vec");
            }
        }
        out
    }

    /// BLAKE3 of the canonical full list (section 5.1).
    pub fn list_blake3(&self) -> ListHash {
        ListHash::of(&self.write_full())
    }

    /// Parses a full list body, refusing anything [`Self::write_full`]
    /// would not have written.
    pub fn parse_full(body: &[u8]) -> Result<ListState> {
        let mut lines = body_lines(body, FULL_HEADER)?;
        let mut state = ListState::default();
        let mut open: Option<Node> = None;
        for (n, line) in &mut lines {
            if let Some(chunk) = parse_chunk(line) {
                match open.as_mut() {
                    Some(node) if file_size(&node.entry).is_some() => node.chunks.push(chunk),
                    _ => return Err(malformed(n, "a chunk line not after a file line")),
                }
                continue;
            }
            let entry = parse_entry(line).ok_or_else(|| malformed(n, "malformed line"))?;
            if let Some(node) = open.take() {
                state.push(node)?;
            }
            state.check_after(n, entry_path(&entry))?;
            open = Some(Node {
                entry,
                chunks: Vec::new(),
            });
        }
        if let Some(node) = open {
            state.push(node)?;
        }
        Ok(state)
    }

    /// Appends a node known to come after every entry held.
    fn push(&mut self, node: Node) -> Result<()> {
        check_node(&node)?;
        let path = CanonPath(entry_path(&node.entry).to_string());
        self.entries.insert(path, node);
        Ok(())
    }

    /// Refuses `path` unless it comes after every path held.
    fn check_after(&self, line: usize, path: &str) -> Result<()> {
        match self.entries.keys().next_back() {
            Some(last) if canonical_cmp(&last.0, path) != Ordering::Less => {
                Err(ListFormatError::Order {
                    line,
                    path: path.to_string(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn malformed(line: usize, what: &'static str) -> ListFormatError {
    ListFormatError::Malformed { line, what }
}

/// The numbered lines of `body` after its header (numbered from 2); the
/// body must end with a newline and hold only UTF-8.
fn body_lines<'a>(
    body: &'a [u8],
    header: &'static str,
) -> Result<impl Iterator<Item = (usize, &'a str)>> {
    let text = std::str::from_utf8(body).map_err(|_| malformed(1, "not UTF-8"))?;
    let Some(text) = text.strip_suffix('\n') else {
        return Err(malformed(1, "the last line has no newline"));
    };
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    if first != header {
        return Err(ListFormatError::Header {
            expected: header,
            found: first.chars().take(40).collect(),
        });
    }
    Ok(lines.enumerate().map(|(i, l)| (i + 2, l)))
}

/// An entry line, only if it is exactly the canonical encoding.
fn parse_entry(line: &str) -> Option<Entry> {
    let f: Vec<&str> = line.split(' ').collect();
    let mode = |m: &str| u32::from_str_radix(m, 8).ok();
    let entry = match f.as_slice() {
        ["F", m, size, mtime, path] => Entry::File {
            path: decode_path(path)?,
            mode: mode(m)?,
            size: size.parse().ok()?,
            mtime: mtime.parse().ok()?,
        },
        ["D", m, path] => Entry::Dir {
            path: decode_path(path)?,
            mode: mode(m)?,
        },
        ["L", path, target] => Entry::Symlink {
            path: decode_path(path)?,
            target: decode_path(target)?,
        },
        _ => return None,
    };
    (!entry_path(&entry).is_empty() && entry_line(&entry) == line).then_some(entry)
}

/// An entry's line, without its newline.
fn entry_line(entry: &Entry) -> String {
    let mut out = Vec::new();
    write_entry(&mut out, entry).expect("writing to a Vec");
    out.pop();
    String::from_utf8(out).expect("entry lines are ASCII")
}

/// A chunk line `<id> <length>`, only if canonical and of nonzero length.
fn parse_chunk(line: &str) -> Option<Chunk> {
    let (id, len) = line.split_once(' ')?;
    parse_id_len(id, len)
}

fn parse_id_len(id_s: &str, len_s: &str) -> Option<Chunk> {
    let id = ChunkId::parse(id_s)?;
    let len: u32 = len_s.parse().ok()?;
    let canonical = len > 0 && id.to_string() == id_s && len.to_string() == len_s;
    canonical.then_some((id, len))
}

/// One change a delta makes. Private to this module so that every
/// [`Delta`] comes from [`Delta::parse`] or [`Delta::diff`], both of which
/// keep edits in canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edit {
    /// Sets the entry at its path. For a file, `count` (when given) resizes
    /// its chunk array and `chunks` sets chunks by index, increasing.
    Set {
        entry: Entry,
        count: Option<u32>,
        chunks: Vec<(u32, Chunk)>,
    },
    /// Removes the path and its chunks.
    Remove(String),
}

impl Edit {
    fn path(&self) -> &str {
        match self {
            Edit::Set { entry, .. } => entry_path(entry),
            Edit::Remove(path) => path,
        }
    }
}

/// A snapshot's list as its changes against another snapshot's (the body of
/// `lists/<to>/d-<from>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    from: Named,
    to: Named,
    edits: Vec<Edit>,
}

impl Delta {
    /// The snapshot and list this delta applies to.
    pub fn from(&self) -> &Named {
        &self.from
    }

    /// The snapshot and list it claims to rebuild.
    pub fn to(&self) -> &Named {
        &self.to
    }

    /// The delta that turns `parent` (the list of `from`) into `child`, the
    /// list of snapshot `to`.
    pub fn diff(from: Named, parent: &ListState, to: &str, child: &ListState) -> Delta {
        let mut edits = Vec::new();
        let mut p = parent.entries.iter().peekable();
        let mut c = child.entries.iter().peekable();
        loop {
            let order = match (p.peek(), c.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((pk, _)), Some((ck, _))) => pk.cmp(ck),
            };
            let (old, new) = match order {
                Ordering::Less => (p.next(), None),
                Ordering::Greater => (None, c.next()),
                Ordering::Equal => (p.next(), c.next()),
            };
            match (old, new) {
                (Some((path, _)), None) => edits.push(Edit::Remove(path.0.clone())),
                (old, Some((_, node))) => edits.extend(set_edit(old.map(|o| o.1), node)),
                (None, None) => unreachable!("one side always advances"),
            }
        }
        let to = Named {
            snapshot: to.to_string(),
            list_blake3: child.list_blake3(),
        };
        Delta { from, to, edits }
    }

    /// The delta's body, canonical.
    pub fn write(&self) -> Vec<u8> {
        let mut out = String::new();
        let named = |out: &mut String, tag: &str, n: &Named| {
            out.push_str(&format!("{tag} {} {}\n", n.snapshot, n.list_blake3));
        };
        out.push_str(DELTA_HEADER);
        out.push('\n');
        named(&mut out, "from", &self.from);
        named(&mut out, "to", &self.to);
        for edit in &self.edits {
            match edit {
                Edit::Set {
                    entry,
                    count,
                    chunks,
                } => {
                    out.push_str(&format!("E {}\n", entry_line(entry)));
                    if let Some(n) = count {
                        out.push_str(&format!("N {n}\n"));
                    }
                    for (i, (id, len)) in chunks {
                        out.push_str(&format!("C {i} {id} {len}\n"));
                    }
                }
                Edit::Remove(path) => out.push_str(&format!("R {}\n", encode_path(path))),
            }
        }
        out.into_bytes()
    }

    /// Parses a delta body (what `crate::sign::Verifier::open` returned),
    /// refusing anything [`Self::write`] would not have written.
    pub fn parse(body: &[u8]) -> Result<Delta> {
        let mut lines = body_lines(body, DELTA_HEADER)?;
        let from = parse_named(lines.next(), "from")?;
        let to = parse_named(lines.next(), "to")?;
        let mut edits: Vec<Edit> = Vec::new();
        let mut open = false;
        for (n, line) in lines {
            let (tag, rest) = line.split_once(' ').ok_or_else(|| malformed(n, "malformed line"))?;
            match tag {
                "E" | "R" => {
                    let edit = parse_edit(n, tag, rest)?;
                    check_order(n, edits.last(), edit.path())?;
                    open = matches!(&edit, Edit::Set { entry: Entry::File { .. }, .. });
                    edits.push(edit);
                }
                "N" | "C" if open => parse_chunk_edit(n, tag, rest, edits.last_mut())?,
                "N" | "C" => return Err(malformed(n, "an N or C line not after an E F line")),
                _ => return Err(malformed(n, "malformed line")),
            }
        }
        Ok(Delta { from, to, edits })
    }

    /// Rebuilds the child's state from `parent`, the state the caller holds
    /// as `held`. Refused unless `held` is exactly the parent this delta
    /// names, and unless every edit fits: no removal of an absent path, no
    /// chunk index out of bounds or edited twice, every index `N` adds given
    /// a chunk, and every file's chunks adding up to its size.
    pub fn apply(&self, held: &Named, parent: &ListState) -> Result<ListState> {
        if *held != self.from {
            return Err(ListFormatError::WrongParent {
                named: self.from.snapshot.clone(),
                named_blake3: self.from.list_blake3,
                held: held.snapshot.clone(),
                held_blake3: held.list_blake3,
            });
        }
        let mut state = parent.clone();
        for edit in &self.edits {
            match edit {
                Edit::Remove(path) => {
                    if state.entries.remove(&CanonPath(path.clone())).is_none() {
                        return Err(ListFormatError::RemovesAbsent { path: path.clone() });
                    }
                }
                Edit::Set {
                    entry,
                    count,
                    chunks,
                } => apply_set(&mut state, entry, *count, chunks)?,
            }
        }
        Ok(state)
    }
}

/// The edit that turns `old` (if the path existed) into `new`; none when
/// nothing changed.
fn set_edit(old: Option<&Node>, new: &Node) -> Option<Edit> {
    let base: &[Chunk] = match old {
        Some(o) if file_size(&o.entry).is_some() && file_size(&new.entry).is_some() => &o.chunks,
        _ => &[],
    };
    let chunks: Vec<(u32, Chunk)> = (new.chunks.iter().enumerate())
        .filter(|(i, c)| base.get(*i) != Some(*c))
        .map(|(i, c)| (i as u32, *c))
        .collect();
    let count = (base.len() != new.chunks.len()).then_some(new.chunks.len() as u32);
    let same = old.is_some_and(|o| o.entry == new.entry);
    if same && count.is_none() && chunks.is_empty() {
        return None;
    }
    Some(Edit::Set {
        entry: new.entry.clone(),
        count,
        chunks,
    })
}

fn apply_set(
    state: &mut ListState,
    entry: &Entry,
    count: Option<u32>,
    chunks: &[(u32, Chunk)],
) -> Result<()> {
    let path = entry_path(entry).to_string();
    let old = state.entries.remove(&CanonPath(path.clone()));
    let mut slots: Vec<Option<Chunk>> = match old {
        Some(o) if file_size(&o.entry).is_some() && file_size(entry).is_some() => {
            o.chunks.into_iter().map(Some).collect()
        }
        _ => Vec::new(),
    };
    if let Some(n) = count {
        slots.resize(n as usize, None);
    }
    let mut next = 0u32;
    for &(index, chunk) in chunks {
        if index < next {
            return Err(ListFormatError::Overlap { path, index });
        }
        let count = slots.len() as u32;
        let slot = slots.get_mut(index as usize).ok_or(ListFormatError::OutOfBounds {
            path: path.clone(),
            index,
            count,
        })?;
        *slot = Some(chunk);
        next = index + 1;
    }
    let chunks = (slots.into_iter().enumerate())
        .map(|(i, s)| {
            s.ok_or(ListFormatError::Unfilled {
                path: path.clone(),
                index: i as u32,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    state.insert(entry.clone(), chunks)
}

fn parse_named(line: Option<(usize, &str)>, tag: &str) -> Result<Named> {
    let Some((n, line)) = line else {
        return Err(malformed(2, "the delta ends before its from and to lines"));
    };
    let f: Vec<&str> = line.split(' ').collect();
    match f.as_slice() {
        [t, id, hash] if *t == tag && !id.is_empty() => Ok(Named {
            snapshot: id.to_string(),
            list_blake3: ListHash::parse(hash)
                .ok_or_else(|| malformed(n, "malformed list_blake3"))?,
        }),
        _ if tag == "from" => Err(malformed(n, "expected `from <snapshot id> <list_blake3>`")),
        _ => Err(malformed(n, "expected `to <snapshot id> <list_blake3>`")),
    }
}

fn parse_edit(n: usize, tag: &str, rest: &str) -> Result<Edit> {
    if tag == "R" {
        let path = decode_path(rest)
            .filter(|p| !p.is_empty() && encode_path(p) == rest)
            .ok_or_else(|| malformed(n, "malformed R line"))?;
        return Ok(Edit::Remove(path));
    }
    let entry = parse_entry(rest).ok_or_else(|| malformed(n, "malformed E line"))?;
    Ok(Edit::Set {
        entry,
        count: None,
        chunks: Vec::new(),
    })
}

fn check_order(n: usize, last: Option<&Edit>, path: &str) -> Result<()> {
    match last {
        Some(e) if canonical_cmp(e.path(), path) != Ordering::Less => Err(ListFormatError::Order {
            line: n,
            path: path.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Reads an `N` or `C` line into the open `E F` edit.
fn parse_chunk_edit(n: usize, tag: &str, rest: &str, open: Option<&mut Edit>) -> Result<()> {
    let Some(Edit::Set {
        entry,
        count,
        chunks,
    }) = open
    else {
        return Err(malformed(n, "an N or C line not after an E F line"));
    };
    let path = || entry_path(entry).to_string();
    if tag == "N" {
        if count.is_some() || !chunks.is_empty() {
            return Err(malformed(n, "N must come once, right after its E line"));
        }
        *count = Some(parse_index(rest).ok_or_else(|| malformed(n, "malformed N line"))?);
        return Ok(());
    }
    let f: Vec<&str> = rest.split(' ').collect();
    let (index, chunk) = match f.as_slice() {
        [i, id, len] => parse_index(i).zip(parse_id_len(id, len)),
        _ => None,
    }
    .ok_or_else(|| malformed(n, "malformed C line"))?;
    if chunks.last().is_some_and(|(last, _)| *last >= index) {
        return Err(ListFormatError::Overlap {
            path: path(),
            index,
        });
    }
    if let Some(c) = count.filter(|c| index >= *c) {
        return Err(ListFormatError::OutOfBounds {
            path: path(),
            index,
            count: c,
        });
    }
    chunks.push((index, chunk));
    Ok(())
}

/// A canonical decimal u32 (no sign, no leading zeros).
fn parse_index(s: &str) -> Option<u32> {
    let v: u32 = s.parse().ok()?;
    (v.to_string() == s).then_some(v)
}
