//! The text formats inside encrypted metadata objects: chunk lists and index
//! files. Both are line-oriented so that `age -d | zstd -d | awk` can read them
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
//! Paths are percent-encoded (bytes outside `[A-Za-z0-9._~/+,@=:-]`), so
//! fields never contain spaces or newlines.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use crate::chunk::ChunkId;
use crate::error::{Error, Result};
use crate::source::Entry;

pub const LIST_HEADER: &str = "offsite-list 1";
pub const INDEX_HEADER: &str = "offsite-index 1";

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
        Some(Ok(h)) => return Err(bad(1, &format!("unknown header {h:?}"))),
        _ => return Err(bad(1, "missing header")),
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
}

/// Every chunk the repository holds, merged from all index files.
#[derive(Debug, Default)]
pub struct Index {
    pub packs: Vec<String>,
    pack_numbers: HashMap<String, u32>,
    pub chunks: HashMap<ChunkId, Location>,
}

impl Index {
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

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
        // First writer wins: two packs holding the same chunk (an interrupted
        // run's leftovers) are both valid copies.
        self.chunks.entry(id).or_insert(Location {
            pack: n,
            offset,
            len,
        });
    }

    /// Merges one decoded index file.
    pub fn parse_into(&mut self, r: impl BufRead, key: &str) -> Result<()> {
        let bad = |line: usize| Error::Corrupt {
            key: key.to_string(),
            message: format!("line {line}: malformed index line"),
        };
        let mut lines = r.lines();
        match lines.next() {
            Some(Ok(h)) if h == INDEX_HEADER => {}
            _ => return Err(bad(1)),
        }
        let mut pack: Option<String> = None;
        for (n, line) in lines.enumerate() {
            let line = line.map_err(|e| crate::codec::corrupt_read(e, key))?;
            if let Some(p) = line.strip_prefix("P ") {
                pack = Some(p.to_string());
                continue;
            }
            let mut f = line.split(' ');
            let parsed = (|| {
                let id = ChunkId::parse(f.next()?)?;
                let off = f.next()?.parse().ok()?;
                let len = f.next()?.parse().ok()?;
                Some((id, off, len))
            })();
            match (parsed, &pack) {
                (Some((id, off, len)), Some(p)) => self.add(p, id, off, len),
                _ => return Err(bad(n + 2)),
            }
        }
        Ok(())
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
                len: 1
            })
        );
        assert_eq!(idx.packs, vec!["packs/aa/x".to_string()]);
        assert!(Index::default()
            .parse_into(&b"offsite-index 1\nnope\n"[..], "i")
            .is_err());
    }
}
