//! The text formats inside encrypted metadata objects: chunk lists, index
//! files and damage records. Both are line-oriented so that `age -d | zstd -d | awk` can read them
//! when offsite is not around (docs/format.md spells them out).
//!
//! Chunk list (`lists/<snapshot>`):
//! ```text
//! offsite-list 1
//! D <mode-octal> <path>
//! F <mode-octal> <size> <mtime> <path>
//! <chunk-id-hex> <length>          (the chunks of the preceding F, in order)
//! L <path> <target>
//! ```
//! Index file (`index/<name>`):
//! ```text
//! offsite-index 1
//! P <pack-key>
//! <chunk-id-hex> <offset> <length> (offsets into the decoded pack)
//! ```
//! Damage record (`damaged/<name>`):
//! ```text
//! offsite-damaged 1
//! P <pack-key>
//! <chunk-id-hex>                   (copies in that pack found damaged)
//! ```
//! Paths are percent-encoded (bytes outside `[A-Za-z0-9._~/+,@=:-]`), so
//! fields never contain spaces or newlines.
//!
//! Format 2's objects are in the submodules (none used yet): `list2` (full
//! list and delta), `pack2` (packs with their signed trailer, index files),
//! `manifest2` (the manifest) and `sealed` (how their signed bodies are
//! encoded). Nothing here changes for them.

pub mod list2;
pub mod manifest2;
pub mod pack2;
pub mod sealed;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::repo::Unreadable;
use crate::source::Entry;

pub const LIST_HEADER: &str = "offsite-list 1";
pub const INDEX_HEADER: &str = "offsite-index 1";
pub const DAMAGE_HEADER: &str = "offsite-damaged 1";

pub fn encode_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"._~/+,@=:-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode_path(p: &str) -> Option<String> {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = p.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub fn write_entry(w: &mut dyn Write, entry: &Entry) -> std::io::Result<()> {
    match entry {
        Entry::File {
            path,
            mode,
            size,
            mtime,
        } => writeln!(w, "F {mode:o} {size} {mtime} {}", encode_path(path)),
        Entry::Dir { path, mode } => writeln!(w, "D {mode:o} {}", encode_path(path)),
        Entry::Symlink { path, target } => {
            writeln!(w, "L {} {}", encode_path(path), encode_path(target))
        }
    }
}

pub fn write_chunk(w: &mut dyn Write, id: &ChunkId, len: usize) -> std::io::Result<()> {
    writeln!(w, "{id} {len}")
}

/// One parsed line of a chunk list.
pub enum ListItem {
    Entry(Entry),
    Chunk(ChunkId, u32),
}

/// Parses a decoded chunk list line by line, calling `f` for each item.
pub fn parse_list(
    r: impl BufRead,
    key: &str,
    mut f: impl FnMut(ListItem) -> Result<()>,
) -> Result<()> {
    let bad = |line: usize, what: &str| Error::Corrupt {
        key: key.to_string(),
        message: format!("line {line}: {what}"),
    };
    let mut lines = r.lines();
    match lines.next() {
        Some(Ok(h)) if h == LIST_HEADER => {}
        Some(Ok(h)) => return Err(header_error(&h, "offsite-list", key, 1)),
        Some(Err(e)) => return Err(crate::codec::corrupt_read(e, key)),
        None => return Err(bad(1, "missing header")),
    }
    for (n, line) in lines.enumerate() {
        let n = n + 2;
        let line = line.map_err(|e| crate::codec::corrupt_read(e, key))?;
        let mut fields = line.split(' ');
        let first = fields.next().unwrap_or("");
        let item = match first {
            "F" => {
                let mode = fields.next().and_then(|m| u32::from_str_radix(m, 8).ok());
                let size = fields.next().and_then(|s| s.parse().ok());
                let mtime = fields.next().and_then(|s| s.parse().ok());
                let path = fields.next().and_then(decode_path);
                match (mode, size, mtime, path) {
                    (Some(mode), Some(size), Some(mtime), Some(path)) => {
                        ListItem::Entry(Entry::File {
                            path,
                            mode,
                            size,
                            mtime,
                        })
                    }
                    _ => return Err(bad(n, "malformed file line")),
                }
            }
            "D" => {
                let mode = fields.next().and_then(|m| u32::from_str_radix(m, 8).ok());
                let path = fields.next().and_then(decode_path);
                match (mode, path) {
                    (Some(mode), Some(path)) => ListItem::Entry(Entry::Dir { path, mode }),
                    _ => return Err(bad(n, "malformed directory line")),
                }
            }
            "L" => {
                let path = fields.next().and_then(decode_path);
                let target = fields.next().and_then(decode_path);
                match (path, target) {
                    (Some(path), Some(target)) => ListItem::Entry(Entry::Symlink { path, target }),
                    _ => return Err(bad(n, "malformed link line")),
                }
            }
            id => {
                let id = ChunkId::parse(id).ok_or_else(|| bad(n, "malformed chunk line"))?;
                let len = fields
                    .next()
                    .and_then(|l| l.parse().ok())
                    .ok_or_else(|| bad(n, "malformed chunk length"))?;
                ListItem::Chunk(id, len)
            }
        };
        f(item)?;
    }
    Ok(())
}

/// Where a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Index into [`Index::packs`].
    pub pack: u32,
    pub offset: u32,
    pub len: u32,
    /// A damage record names this copy (see [`Damage`]): the index holds no
    /// other copy of the chunk that is not recorded as damaged.
    pub damaged: bool,
}

/// Every chunk the repository holds, merged from all index files that
/// decode, with the damage records read before them.
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub packs: Vec<String>,
    pack_numbers: HashMap<String, u32>,
    pub chunks: HashMap<ChunkId, Location>,
    /// The damage records the index was built with.
    pub damage: Damage,
    /// Index files and damage records that were skipped because they do not
    /// decode (each also logged as a warning when loaded).
    pub unreadable: Vec<Unreadable>,
}

impl Index {
    /// An empty index that knows which copies are recorded as damaged.
    pub(crate) fn new(damage: Damage) -> Index {
        Index {
            damage,
            ..Default::default()
        }
    }

    /// Whether the repository holds a copy of `id` that is not recorded as
    /// damaged: what a backup deduplicates against.
    pub fn usable(&self, id: &ChunkId) -> bool {
        self.get(id).is_some_and(|l| !l.damaged)
    }

    /// The copy of `id` to read: one not recorded as damaged if there is one.
    pub fn get(&self, id: &ChunkId) -> Option<Location> {
        self.chunks.get(id).copied()
    }

    pub fn add(&mut self, pack: &str, id: ChunkId, offset: u32, len: u32) {
        let n = match self.pack_numbers.get(pack) {
            Some(n) => *n,
            None => {
                let n = self.packs.len() as u32;
                self.packs.push(pack.to_string());
                self.pack_numbers.insert(pack.to_string(), n);
                n
            }
        };
        let here = Location {
            pack: n,
            offset,
            len,
            damaged: self.damage.contains(pack, &id),
        };
        // Two packs holding the same chunk (an interrupted run's leftovers,
        // or a chunk stored again after damage) are both copies: the first
        // one met wins, unless it is recorded as damaged and this one is not.
        match self.chunks.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(here);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().damaged && !here.damaged {
                    o.insert(here);
                }
            }
        }
    }

    /// Merges one whole index file (see [`parse_index`]).
    pub fn merge(&mut self, file: &[PackContents]) {
        for (pack, chunks) in file {
            for (id, off, len) in chunks {
                self.add(pack, *id, *off, *len);
            }
        }
    }

    /// Parses one decoded index file and merges it; a file that fails
    /// anywhere adds nothing. For tests: the engine loads an index only
    /// through [`crate::repo::Repository::load_index`].
    #[cfg(test)]
    pub(crate) fn parse_into(&mut self, r: impl BufRead, key: &str) -> Result<()> {
        let file = parse_index(r, key)?;
        self.merge(&file);
        Ok(())
    }
}

/// Parses one decoded index file whole. Nothing is returned for a file that
/// fails anywhere: a truncated object breaks off mid-line, and its last line
/// could otherwise read as a chunk with a wrong length.
pub fn parse_index(r: impl BufRead, key: &str) -> Result<Vec<PackContents>> {
    let bad = |line: usize| Error::Corrupt {
        key: key.to_string(),
        message: format!("line {line}: malformed index line"),
    };
    let mut lines = r.lines();
    match lines.next() {
        Some(Ok(h)) if h == INDEX_HEADER => {}
        Some(Ok(h)) => return Err(header_error(&h, "offsite-index", key, 1)),
        Some(Err(e)) => return Err(crate::codec::corrupt_read(e, key)),
        None => return Err(bad(1)),
    }
    let mut out: Vec<PackContents> = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| crate::codec::corrupt_read(e, key))?;
        if let Some(p) = line.strip_prefix("P ") {
            out.push((p.to_string(), Vec::new()));
            continue;
        }
        let mut f = line.split(' ');
        let parsed = (|| {
            let id = ChunkId::parse(f.next()?)?;
            let off = f.next()?.parse().ok()?;
            let len = f.next()?.parse().ok()?;
            Some((id, off, len))
        })();
        match (parsed, out.last_mut()) {
            (Some(entry), Some((_, chunks))) => chunks.push(entry),
            _ => return Err(bad(n + 2)),
        }
    }
    Ok(out)
}

/// The error for a header line that is not `expected`: a newer version of
/// the same object kind is not damage, anything else is.
fn header_error(line: &str, kind: &str, key: &str, line_no: usize) -> Error {
    let version = line
        .strip_prefix(kind)
        .and_then(|v| v.strip_prefix(' '))
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(found) => Error::UnsupportedVersion {
            target: key.to_string(),
            found,
            supported: crate::repo::FORMAT_VERSION,
        },
        None => Error::Corrupt {
            key: key.to_string(),
            message: format!("line {line_no}: unknown header {line:?}"),
        },
    }
}

/// A pack's key and its chunks as `(id, offset, length)`.
pub type PackContents = (String, Vec<(ChunkId, u32, u32)>);

/// Writes an index file for `packs`: each pack's key with its chunks.
pub fn write_index(packs: &[PackContents]) -> Vec<u8> {
    let mut out = Vec::new();
    writeln!(out, "{INDEX_HEADER}").expect("writing to a Vec");
    for (key, chunks) in packs {
        writeln!(out, "P {key}").expect("writing to a Vec");
        for (id, off, len) in chunks {
            writeln!(out, "{id} {off} {len}").expect("writing to a Vec");
        }
    }
    out
}

/// A pack's key and chunks of it found damaged.
pub type DamagedPack = (String, Vec<ChunkId>);

/// Damage records (`damaged/<name>`): copies of chunks that were read and
/// did not decode or did not match their id. The index prefers any other
/// copy, a backup stores such chunks again, and prune does not count a
/// damaged copy as one that keeps its pack alive.
#[derive(Debug, Default, Clone)]
pub struct Damage {
    /// Every record read: its key and the packs it names.
    pub records: Vec<(String, Vec<String>)>,
    chunks: HashMap<String, HashSet<ChunkId>>,
}

impl Damage {
    /// Adds what one record (or an unrecorded finding, `key` empty) names.
    pub fn add(&mut self, key: &str, found: &[DamagedPack]) {
        if !key.is_empty() {
            self.records.push((
                key.to_string(),
                found.iter().map(|(p, _)| p.clone()).collect(),
            ));
        }
        for (pack, ids) in found {
            self.chunks.entry(pack.clone()).or_default().extend(ids);
        }
    }

    pub fn contains(&self, pack: &str, id: &ChunkId) -> bool {
        self.chunks.get(pack).is_some_and(|ids| ids.contains(id))
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunks of `found` that no record names yet.
    pub fn unknown(&self, found: &[DamagedPack]) -> Vec<DamagedPack> {
        found
            .iter()
            .map(|(pack, ids)| {
                let new: Vec<ChunkId> = ids
                    .iter()
                    .filter(|id| !self.contains(pack, id))
                    .copied()
                    .collect();
                (pack.clone(), new)
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }
}

/// Writes a damage record: each pack's key with its damaged chunks' ids.
pub fn write_damage(found: &[DamagedPack]) -> Vec<u8> {
    let mut out = Vec::new();
    writeln!(out, "{DAMAGE_HEADER}").expect("writing to a Vec");
    for (pack, ids) in found {
        writeln!(out, "P {pack}").expect("writing to a Vec");
        for id in ids {
            writeln!(out, "{id}").expect("writing to a Vec");
        }
    }
    out
}

/// Parses one decoded damage record whole.
pub fn parse_damage(r: impl BufRead, key: &str) -> Result<Vec<DamagedPack>> {
    let bad = |line: usize| Error::Corrupt {
        key: key.to_string(),
        message: format!("line {line}: malformed damage record line"),
    };
    let mut lines = r.lines();
    match lines.next() {
        Some(Ok(h)) if h == DAMAGE_HEADER => {}
        Some(Ok(h)) => return Err(header_error(&h, "offsite-damaged", key, 1)),
        Some(Err(e)) => return Err(crate::codec::corrupt_read(e, key)),
        None => return Err(bad(1)),
    }
    let mut out: Vec<DamagedPack> = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| crate::codec::corrupt_read(e, key))?;
        if let Some(p) = line.strip_prefix("P ") {
            out.push((p.to_string(), Vec::new()));
            continue;
        }
        match (ChunkId::parse(&line), out.last_mut()) {
            (Some(id), Some((_, ids))) => ids.push(id),
            _ => return Err(bad(n + 2)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_roundtrip_without_spaces() {
        for p in ["a b/c%d", "ünï/cödé", "new\nline", "plain/path.json"] {
            let e = encode_path(p);
            assert!(!e.contains(' ') && !e.contains('\n'));
            assert_eq!(decode_path(&e).as_deref(), Some(p));
        }
    }

    #[test]
    fn list_roundtrip() {
        let mut buf = Vec::new();
        writeln!(buf, "{LIST_HEADER}").unwrap();
        let file = Entry::File {
            path: "dir/a file".into(),
            mode: 0o640,
            size: 5,
            mtime: 1_700_000_000,
        };
        write_entry(
            &mut buf,
            &Entry::Dir {
                path: "dir".into(),
                mode: 0o755,
            },
        )
        .unwrap();
        write_entry(&mut buf, &file).unwrap();
        write_chunk(&mut buf, &ChunkId::of(b"hello"), 5).unwrap();
        let mut items = Vec::new();
        parse_list(&buf[..], "k", |i| {
            items.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[1], ListItem::Entry(e) if *e == file));
        assert!(matches!(&items[2], ListItem::Chunk(id, 5) if *id == ChunkId::of(b"hello")));
        assert!(parse_list(&b"offsite-list 9\n"[..], "k", |_| Ok(())).is_err());
    }

    #[test]
    fn index_roundtrip() {
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let text = write_index(&[("packs/aa/x".into(), vec![(a, 0, 1), (b, 1, 1)])]);
        let mut idx = Index::default();
        idx.parse_into(&text[..], "index/1").unwrap();
        assert_eq!(
            idx.get(&b),
            Some(Location {
                pack: 0,
                offset: 1,
                len: 1,
                damaged: false,
            })
        );
        assert_eq!(idx.packs, vec!["packs/aa/x".to_string()]);
        assert!(Index::default()
            .parse_into(&b"offsite-index 1\nnope\n"[..], "i")
            .is_err());
    }

    #[test]
    fn an_index_file_that_breaks_off_adds_nothing() {
        let chunks: Vec<(ChunkId, u32, u32)> = (0..200u32)
            .map(|i| (ChunkId::of(&i.to_le_bytes()), i * 4096, 4096))
            .collect();
        let text = write_index(&[("packs/aa/x".into(), chunks)]);
        // A reader that yields most of the file, then fails the way a
        // truncated age stream does.
        struct BreaksOff<'a>(&'a [u8]);
        impl std::io::Read for BreaksOff<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other(
                        "stream ended without its final chunk",
                    ));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        // Cut mid-line: the last line would parse with a wrong length.
        let cut = &text[..text.len() * 2 / 3];
        assert!(!cut.ends_with(b"\n"));
        let mut idx = Index::default();
        let r = idx.parse_into(std::io::BufReader::new(BreaksOff(cut)), "index/1");
        assert!(r.is_err());
        assert!(idx.chunks.is_empty(), "a broken file contributes nothing");
        assert!(idx.packs.is_empty());
        assert!(matches!(
            parse_index(&b"offsite-index 2\n"[..], "i"),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
    }

    #[test]
    fn the_index_prefers_copies_no_damage_record_names() {
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let found: Vec<DamagedPack> = vec![("packs/aa/old".into(), vec![a])];
        let text = write_damage(&found);
        let parsed = parse_damage(&text[..], "damaged/1").unwrap();
        assert_eq!(parsed, found);
        let mut damage = Damage::default();
        damage.add("damaged/1", &parsed);
        assert_eq!(
            damage.records,
            vec![("damaged/1".into(), vec!["packs/aa/old".into()])]
        );
        assert!(damage.unknown(&found).is_empty());

        let old = write_index(&[("packs/aa/old".into(), vec![(a, 0, 1), (b, 1, 1)])]);
        let new = write_index(&[("packs/bb/new".into(), vec![(a, 0, 1)])]);
        for order in [[&old, &new], [&new, &old]] {
            let mut idx = Index::new(damage.clone());
            assert!(!idx.usable(&a));
            for text in order {
                idx.parse_into(&text[..], "index/x").unwrap();
            }
            let loc = idx.get(&a).unwrap();
            assert_eq!(idx.packs[loc.pack as usize], "packs/bb/new", "{order:?}");
            assert!(!loc.damaged && idx.usable(&a) && idx.usable(&b));
        }
        let mut only_damaged = Index::new(damage);
        only_damaged.parse_into(&old[..], "index/x").unwrap();
        assert!(only_damaged.get(&a).unwrap().damaged);
        assert!(!only_damaged.usable(&a), "a backup stores it again");
    }
}
