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
//!   the signature line of `crate::sign`, sealed and opened only by
//!   [`object`] (through `super::sealed`), which hands the opened body to
//!   the parsers here. `list_blake3` is over the unsigned canonical full
//!   list, so it does not depend on who signed.
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
//! a state built by applying deltas for checked: what [`Delta::apply`]
//! returns is the state [`Delta::to`] *claims* (the next delta on a path is
//! checked against that claim), and the reader must compare
//! [`ListState::list_blake3`] of the end state with the manifest's
//! (intermediate states are not hashed, per the design).
//!
//! Nothing in this build reads or writes these objects yet: backup and
//! restore are format 1's (`super`), which this module leaves untouched.

pub mod object;

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
        f.write_str(crate::chunk::hex32(&self.0, &mut [0; 64]))
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
            let (tag, rest) = line
                .split_once(' ')
                .ok_or_else(|| malformed(n, "malformed line"))?;
            match tag {
                "E" | "R" => {
                    let edit = parse_edit(n, tag, rest)?;
                    check_order(n, edits.last(), edit.path())?;
                    open = matches!(
                        &edit,
                        Edit::Set {
                            entry: Entry::File { .. },
                            ..
                        }
                    );
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
        // Every slot past the old ones needs a C line: a larger count could
        // only fail as Unfilled, after allocating what a hostile N asks for.
        if n as usize > slots.len() + chunks.len() {
            // The first slot no C line fills, as the check below names it.
            let given: std::collections::HashSet<u32> = chunks.iter().map(|c| c.0).collect();
            let index = (slots.len() as u32..)
                .find(|i| !given.contains(i))
                .unwrap_or(u32::MAX);
            return Err(ListFormatError::Unfilled { path, index });
        }
        slots.resize(n as usize, None);
    }
    let mut next = 0u32;
    for &(index, chunk) in chunks {
        if index < next {
            return Err(ListFormatError::Overlap { path, index });
        }
        let count = slots.len() as u32;
        let slot = slots
            .get_mut(index as usize)
            .ok_or(ListFormatError::OutOfBounds {
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
        [t, id, hash] if *t == tag && !id.is_empty() && !id.contains('/') => Ok(Named {
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

#[cfg(test)]
mod tests_support {
    use super::*;

    pub(super) fn id(n: u64) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    pub(super) fn file(path: &str, chunks: &[Chunk]) -> (Entry, Vec<Chunk>) {
        let size = chunks.iter().map(|(_, l)| u64::from(*l)).sum();
        let entry = Entry::File {
            path: path.into(),
            mode: 0o644,
            size,
            mtime: 1_700_000_000,
        };
        (entry, chunks.to_vec())
    }

    pub(super) fn dir(path: &str) -> (Entry, Vec<Chunk>) {
        let entry = Entry::Dir {
            path: path.into(),
            mode: 0o755,
        };
        (entry, Vec::new())
    }

    pub(super) fn link(path: &str, target: &str) -> (Entry, Vec<Chunk>) {
        let entry = Entry::Symlink {
            path: path.into(),
            target: target.into(),
        };
        (entry, Vec::new())
    }

    pub(super) fn state(items: Vec<(Entry, Vec<Chunk>)>) -> ListState {
        let mut s = ListState::default();
        for (e, c) in items {
            s.insert(e, c).unwrap();
        }
        s
    }

    pub(super) fn named(snapshot: &str, s: &ListState) -> Named {
        Named {
            snapshot: snapshot.into(),
            list_blake3: s.list_blake3(),
        }
    }

    pub(super) fn pages(n: u64) -> Vec<Chunk> {
        (0..n).map(|i| (id(i), 4096)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    /// The full list is format 1's lines under `offsite-list 2`, in
    /// canonical order; it parses back to the same state, and every way of
    /// writing it other than the canonical one is refused.
    #[test]
    fn a_full_list_is_canonical_and_strictly_parsed() {
        let s = state(vec![
            file("a.b", &[(id(1), 5)]),
            dir("a"),
            file("a/b c", &[(id(2), 3), (id(3), 4)]),
            link("z", "a/b c"),
            file("empty", &[]),
        ]);
        let full = s.write_full();
        let text = String::from_utf8(full.clone()).unwrap();
        let want = format!(
            "offsite-list 2\nD 755 a\nF 644 7 1700000000 a/b%20c\n{} 3\n{} 4\n\
             F 644 5 1700000000 a.b\n{} 5\nF 644 0 1700000000 empty\nL z a/b%20c\n",
            id(2),
            id(3),
            id(1)
        );
        assert_eq!(text, want);
        assert_eq!(ListState::parse_full(&full).unwrap(), s);
        assert_eq!(s.list_blake3(), ListHash(*blake3::hash(&full).as_bytes()));
        assert_eq!(
            ListHash::parse(&s.list_blake3().to_string()),
            Some(s.list_blake3())
        );
        assert_eq!(
            ListHash::parse(&s.list_blake3().to_string().to_uppercase()),
            None
        );

        let refused = |body: String| ListState::parse_full(body.as_bytes()).unwrap_err();
        let e = refused(text.replace("offsite-list 2", "offsite-list 1"));
        assert!(matches!(e, ListFormatError::Header { .. }), "{e}");
        let upper = text.replace(&id(2).to_string(), &id(2).to_string().to_uppercase());
        assert!(matches!(
            refused(upper),
            ListFormatError::Malformed { line: 4, .. }
        ));
        let zero = text.replace(" 3\n", " 03\n");
        assert!(matches!(
            refused(zero),
            ListFormatError::Malformed { line: 4, .. }
        ));
        let octal = text.replace("D 755 a", "D 0755 a");
        assert!(matches!(
            refused(octal),
            ListFormatError::Malformed { line: 2, .. }
        ));
        let e = refused(text.trim_end().to_string());
        assert!(
            matches!(e, ListFormatError::Malformed { line: 1, .. }),
            "{e}"
        );
        let swapped = text.replace("D 755 a\n", "").replace("L z", "D 755 a\nL z");
        assert!(matches!(
            refused(swapped),
            ListFormatError::Order { line: 8, .. }
        ));
        let twice = text.replace("L z a/b%20c\n", "L z a/b%20c\nL z a\n");
        assert!(matches!(
            refused(twice),
            ListFormatError::Order { line: 10, .. }
        ));
        let short = text.replace("F 644 7", "F 644 8");
        let e = refused(short);
        assert!(matches!(&e, ListFormatError::Size { path, size: 8, total: 7 } if path == "a/b c"));
        let orphan = text.replace("D 755 a\n", &format!("D 755 a\n{} 1\n", id(9)));
        assert!(matches!(
            refused(orphan),
            ListFormatError::Malformed { line: 3, .. }
        ));
        let empty_chunk = text.replace(" 5\n", " 0\n");
        assert!(matches!(
            refused(empty_chunk),
            ListFormatError::Malformed { line: 7, .. }
        ));
    }

    struct Walk(ListState, Vec<String>, Option<(Entry, Vec<Chunk>)>);

    impl Walk {
        fn close(&mut self) {
            if let Some((e, c)) = self.2.take() {
                self.0.insert(e, c).unwrap();
            }
        }
    }

    impl crate::source::Visitor for Walk {
        fn entry(&mut self, entry: &Entry) -> crate::error::Result<()> {
            self.close();
            self.1.push(entry_path(entry).to_string());
            self.2 = Some((entry.clone(), Vec::new()));
            Ok(())
        }
        fn chunk(&mut self, data: &[u8]) -> crate::error::Result<()> {
            let open = self.2.as_mut().expect("chunks follow a file");
            open.1.push((ChunkId::of(data), data.len() as u32));
            Ok(())
        }
    }

    /// The sorted walk of `source::files` meets paths in canonical order,
    /// including names that sort differently as whole strings ("a.b" after
    /// "a/..." because a directory comes right before its contents).
    #[test]
    fn canonical_order_matches_the_files_walk() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["a", "a/b", "B", "a-"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in ["a.b", "a/b/c", "a/b.c", "a/ab", "a-/x", "B/1", "_", "a b"] {
            std::fs::write(r.join(f), f.repeat(100)).unwrap();
        }
        std::os::unix::fs::symlink("a/ab", r.join("a0")).unwrap();
        let mut walk = Walk(ListState::default(), Vec::new(), None);
        crate::source::files::read(r, &mut walk).unwrap();
        walk.close();
        let canonical: Vec<String> = walk
            .0
            .nodes()
            .map(|n| entry_path(&n.entry).to_string())
            .collect();
        assert_eq!(walk.1, canonical);
        assert_eq!(walk.1.len(), 13);
        let mut by_string = canonical.clone();
        by_string.sort();
        assert_ne!(by_string, canonical, "the tree must tell the orders apart");
        let full = walk.0.write_full();
        assert_eq!(ListState::parse_full(&full).unwrap(), walk.0);
    }
}

#[cfg(test)]
mod delta_tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::tests_support::*;
    use super::*;

    /// Every kind of change survives diff -> write -> parse -> apply, and a
    /// SQLite-shaped change costs one `E F` line and one `C` per page.
    #[test]
    fn a_delta_roundtrips_and_applies() {
        let parent = state(vec![
            dir("d"),
            file("d/db", &pages(50)),
            file("d/log", &pages(3)),
            file("d/gone", &[(id(7), 1)]),
            file("d/short", &pages(4)),
            file("t", &[(id(8), 2)]),
            link("l", "d/db"),
        ]);
        let mut db = pages(50);
        db[3] = (id(1003), 4096);
        db[40] = (id(1040), 4096);
        let mut log = pages(3);
        log.push((id(500), 10));
        let child = state(vec![
            dir("d"),
            file("d/db", &db),
            file("d/log", &log),
            file("d/new", &[(id(9), 9)]),
            file("d/short", &pages(2)),
            dir("t"),
            link("l", "d/log"),
        ]);
        let from = named("s1", &parent);
        let delta = Delta::diff(from.clone(), &parent, "s2", &child);
        assert_eq!(delta.to(), &named("s2", &child));
        let body = delta.write();
        let parsed = Delta::parse(&body).unwrap();
        assert_eq!(parsed, delta);
        assert_eq!(parsed.write(), body);
        let applied = parsed.apply(&from, &parent).unwrap();
        assert_eq!(applied, child);
        assert_eq!(applied.list_blake3(), parsed.to().list_blake3);

        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let db_at = lines.iter().position(|l| l.ends_with(" d/db")).unwrap();
        assert!(lines[db_at].starts_with("E F 644 204800 "));
        assert_eq!(lines[db_at + 1], format!("C 3 {} 4096", id(1003)));
        assert_eq!(lines[db_at + 2], format!("C 40 {} 4096", id(1040)));
        let log_at = lines.iter().position(|l| l.ends_with(" d/log")).unwrap();
        assert_eq!(lines[log_at + 1], "N 4", "an append costs its new chunks");
        assert_eq!(lines[log_at + 2], format!("C 3 {} 10", id(500)));
        assert!(lines.contains(&"R d/gone"));
        assert!(lines.contains(&"E D 755 t"));
        // header 3, db 3, gone 1, log 3, new 3 (E, N 1, C 0), short 2 (E, N 2), t 1, l 1
        assert_eq!(lines.len(), 17, "{text}");

        let same = Delta::diff(from.clone(), &parent, "s3", &parent);
        assert_eq!(same.write().iter().filter(|b| **b == b'\n').count(), 3);
    }

    fn body(parent: &Named, edits: &str) -> Vec<u8> {
        format!(
            "offsite-delta 2\nfrom {} {}\nto s2 {}\n{edits}",
            parent.snapshot,
            parent.list_blake3,
            ListHash([7; 32])
        )
        .into_bytes()
    }

    /// Wrong parent, counts that do not add up, chunk ranges out of bounds,
    /// overlapping edits, removal of what is not there and out-of-order or
    /// misplaced lines are each refused, naming what is wrong.
    #[test]
    fn a_delta_that_does_not_add_up_is_refused() {
        let parent = state(vec![file("db", &pages(4)), dir("x")]);
        let held = named("s1", &parent);
        let good = Delta::parse(&body(
            &held,
            &format!("E F 644 16384 1700000000 db\nC 3 {} 4096\n", id(9)),
        ))
        .unwrap();
        good.apply(&held, &parent).unwrap();

        let other = Named {
            snapshot: "s0".into(),
            ..held.clone()
        };
        let e = good.apply(&other, &parent).unwrap_err();
        assert!(matches!(e, ListFormatError::WrongParent { .. }), "{e}");
        let changed = Named {
            list_blake3: ListHash([1; 32]),
            ..held.clone()
        };
        let e = good.apply(&changed, &parent).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the delta is from snapshot s1 (list {}), not from s1 (list {})",
                held.list_blake3,
                ListHash([1; 32])
            )
        );

        let c = |i: u32| format!("C {i} {} 4096\n", id(100 + u64::from(i)));
        let applied = |edits: String| Delta::parse(&body(&held, &edits))?.apply(&held, &parent);
        let f = |size: u64| format!("E F 644 {size} 1700000000 db\n");
        let e = applied(format!("{}{}", f(16384), c(4))).unwrap_err();
        assert!(
            matches!(
                e,
                ListFormatError::OutOfBounds {
                    index: 4,
                    count: 4,
                    ..
                }
            ),
            "{e}"
        );
        let e = applied(format!("{}N 5\n{}", f(20480), c(5))).unwrap_err();
        assert!(
            matches!(
                e,
                ListFormatError::OutOfBounds {
                    index: 5,
                    count: 5,
                    ..
                }
            ),
            "{e}"
        );
        let e = applied(format!("{}{}{}", f(16384), c(2), c(2))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Overlap { index: 2, .. }),
            "{e}"
        );
        let e = applied(format!("{}{}{}", f(16384), c(2), c(1))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Overlap { index: 1, .. }),
            "{e}"
        );
        let e = applied(format!("{}N 4000000000\n{}", f(24576), c(5))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Unfilled { .. }),
            "a hostile count is refused before anything is allocated: {e}"
        );
        let e = applied(format!("{}N 6\n{}", f(24576), c(5))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Unfilled { index: 4, .. }),
            "{e}"
        );
        let e = applied(format!("{}N 5\n{}", f(16384), c(4))).unwrap_err();
        assert!(
            matches!(
                e,
                ListFormatError::Size {
                    size: 16384,
                    total: 20480,
                    ..
                }
            ),
            "{e}"
        );
        let e = applied(f(16385)).unwrap_err();
        assert!(matches!(e, ListFormatError::Size { .. }), "{e}");
        let e = applied("E F 644 5 1700000000 new\n".into()).unwrap_err();
        assert!(
            matches!(
                e,
                ListFormatError::Size {
                    size: 5,
                    total: 0,
                    ..
                }
            ),
            "{e}"
        );
        let e = applied("R nothing\n".into()).unwrap_err();
        assert!(matches!(&e, ListFormatError::RemovesAbsent { path } if path == "nothing"));
        let e = applied(format!("R x\n{}", f(16384))).unwrap_err();
        assert!(matches!(e, ListFormatError::Order { line: 5, .. }), "{e}");
        let e = applied(format!("{}{}N 4\n", f(16384), c(0))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Malformed { line: 6, .. }),
            "{e}"
        );
        let e = applied(format!("E D 755 x\n{}", c(0))).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Malformed { line: 5, .. }),
            "{e}"
        );
        let e = applied(c(0)).unwrap_err();
        assert!(
            matches!(e, ListFormatError::Malformed { line: 4, .. }),
            "{e}"
        );
        let e = Delta::parse(b"offsite-delta 2\nfrom s1\n").unwrap_err();
        assert!(
            matches!(e, ListFormatError::Malformed { line: 2, .. }),
            "{e}"
        );
        let e = Delta::parse(b"offsite-list 2\n").unwrap_err();
        assert!(matches!(e, ListFormatError::Header { .. }), "{e}");
    }

    /// Issue 10's measured case: 210 changed pages of about 5,300 cost a
    /// delta well under 10 KiB after zstd at the metadata level.
    #[test]
    fn a_delta_of_210_random_pages_is_under_10_kib() {
        let mut rng = StdRng::seed_from_u64(10);
        let parent = state(vec![file("app.db", &pages(5300))]);
        let mut db = pages(5300);
        let mut changed = std::collections::BTreeSet::new();
        while changed.len() < 210 {
            changed.insert(rng.random_range(0..5300usize));
        }
        for &i in &changed {
            db[i] = (ChunkId(rng.random()), 4096);
        }
        let child = state(vec![file("app.db", &db)]);
        let delta = Delta::diff(named("s1", &parent), &parent, "s2", &child);
        let body = delta.write();
        let packed = zstd::encode_all(&body[..], crate::repo::METADATA_LEVEL).unwrap();
        assert_eq!(String::from_utf8_lossy(&body).lines().count(), 3 + 1 + 210);
        assert!(packed.len() < 10 * 1024, "{} bytes", packed.len());
        let full = zstd::encode_all(&child.write_full()[..], crate::repo::METADATA_LEVEL).unwrap();
        eprintln!(
            "delta {} B compressed ({} raw), full list {} B compressed",
            packed.len(),
            body.len(),
            full.len()
        );
    }

    fn random_state(rng: &mut StdRng, base: Option<&ListState>) -> ListState {
        let mut s = base.cloned().unwrap_or_default();
        let names = [
            "a", "b", "a/x", "a/y", "a.b", "c/d/e", "c", "c/d", "z z", "é",
        ];
        for name in names {
            if rng.random_bool(if base.is_some() { 0.3 } else { 0.8 }) {
                let kind = rng.random_range(0..4);
                let (e, c) = match kind {
                    0 => dir(name),
                    1 => link(name, names[rng.random_range(0..names.len())]),
                    _ => {
                        let old = s
                            .entries
                            .get(&CanonPath(name.into()))
                            .map(|n| n.chunks.clone());
                        let mut chunks = old.unwrap_or_default();
                        chunks.truncate(rng.random_range(0..=chunks.len()));
                        for c in chunks.iter_mut() {
                            if rng.random_bool(0.2) {
                                *c = (ChunkId(rng.random()), rng.random_range(1..5000));
                            }
                        }
                        for _ in 0..rng.random_range(0..6) {
                            chunks.push((ChunkId(rng.random()), rng.random_range(1..5000)));
                        }
                        file(name, &chunks)
                    }
                };
                s.insert(e, c).unwrap();
            } else if base.is_some() && rng.random_bool(0.2) {
                s.entries.remove(&CanonPath(name.into()));
            }
        }
        s
    }

    /// Seeded random parent/child pairs: diff -> write -> parse -> apply gives
    /// the child exactly, and its list_blake3 is the child's.
    #[test]
    fn random_lists_roundtrip_through_diff_and_apply() {
        let mut rng = StdRng::seed_from_u64(2026);
        for round in 0..300 {
            let parent = random_state(&mut rng, None);
            let child = random_state(&mut rng, Some(&parent));
            let from = named("p", &parent);
            let delta = Delta::diff(from.clone(), &parent, "c", &child);
            let parsed = Delta::parse(&delta.write()).unwrap();
            let applied = parsed.apply(&from, &parent).unwrap();
            assert_eq!(applied, child, "round {round}");
            assert_eq!(applied.list_blake3(), child.list_blake3());
            assert_eq!(parsed.to().list_blake3, child.list_blake3());
            assert_eq!(ListState::parse_full(&applied.write_full()).unwrap(), child);
        }
    }
}
