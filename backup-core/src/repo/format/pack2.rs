//! Format 2 packs and index files (docs/design/format-v2.md, 4.6 and 3.2):
//! a pack that carries its own signed index, and the signed index file
//! that names packs the same way.
//!
//! A v2 pack object is `DATA || META || FOOTER`:
//! - `DATA`: the pack's chunks, concatenated, zstd then age to the data key
//!   D, exactly as format 1 encodes a whole pack (`codec::Encoder`);
//! - `META`: the signed packinfo (below), zstd then age to the metadata key
//!   M ([`super::sealed`]), signed under the pack's own key;
//! - `FOOTER`: 24 ASCII bytes, `offsite-pack 2 ` (15), `META`'s length in
//!   exactly 8 decimal digits, `\n`.
//!
//! A reader takes the last 24 bytes ([`PackLayout::footer_range`]), gets
//! `META`'s length from them ([`PackLayout::parse`]), reads `META`
//! ([`open_meta`]) and takes `DATA` as the first `size - 24 - len(META)`
//! bytes ([`PackLayout::data_len`]); [`open_pack`] does all of it for an
//! object in memory. [`encode_pack`] writes the whole object,
//! [`encode_trailer`] the `META || FOOTER` a writer appends after the data
//! stream.
//!
//! Packinfo body, and index file body (`index/<32 hex>`):
//! ```text
//! offsite-packinfo 2                 offsite-index 2
//! <chunk id> <offset> <length>       P <pack key>
//!                                    <chunk id> <offset> <length>
//! ```
//! then the signature line. Offsets and lengths are bytes of the *decoded*
//! `DATA`. Both bodies read their entry lines with one parser
//! ([`PackInfo`]), so an index file's section for a pack is exactly that
//! pack's packinfo lines.
//!
//! Choices made here where the design leaves room (each is part of the
//! format from now on):
//! - A pack's entries are its chunks in the order they are stored: the
//!   first at offset 0, each next one where the one before ends (decoded
//!   `DATA` is the concatenation of its chunks and nothing else, as in
//!   format 1). So an entry out of order, overlapping another or leaving a
//!   gap is refused, and the decoded `DATA` must be exactly as long as the
//!   entries cover ([`PackInfo::check_decoded`]).
//! - No chunk id twice in one pack, no chunk of length 0, no pack without
//!   chunks; numbers are canonical decimal (no sign, no leading zeros),
//!   ids 64 lowercase hex; offsets fit in 32 bits, as in format 1's index.
//! - An index file names at least one pack, each once, each by a key
//!   `packs/<2 hex>/<64 hex>` (lowercase, the 2 hex the name's first two);
//!   the same chunk may appear under two packs (both are copies).
//! - `DATA` and `META` are never empty; `META` decodes to at most
//!   [`super::sealed::text_limit`] of its stored length.
//!
//! What a trailer's signature does not cover: `DATA`'s bytes. A writer
//! cannot decrypt `DATA`, so it signs what it put there (ids, offsets,
//! lengths); a reader checks every chunk against its keyed id as it reads
//! it, which is what catches a replaced `DATA`.
//!
//! Never: take `META`'s length from anywhere but the footer or accept one
//! the object cannot hold, allocate for a length or count an object claims
//! before checking it against what was read, or hand out entries whose
//! signature was not verified under the key they were read from.
//!
//! Nothing in this build reads or writes these objects yet: backup and
//! restore are format 1's (`super`), which this module leaves untouched.

use std::collections::HashSet;
use std::ops::Range;

use super::sealed::{self, SealedError};
use super::PackContents;
use crate::chunk::ChunkId;
use crate::codec;
use crate::error::Error;
use crate::keys::SignerPublic;
use crate::sign::{Signer, Verifier};

pub const PACKINFO_HEADER: &str = "offsite-packinfo 2";
pub const INDEX_HEADER: &str = "offsite-index 2";
/// The footer's first 15 bytes.
pub const FOOTER_PREFIX: &str = "offsite-pack 2 ";
/// The footer's length: the prefix, 8 digits, `\n`.
pub const FOOTER_LEN: u64 = 24;
/// The longest `META` 8 decimal digits can name.
pub const MAX_META_LEN: u64 = 99_999_999;

/// One chunk of a pack: id, offset into the decoded `DATA`, length (the
/// shape of format 1's index entries, so both merge into one index).
pub type PackEntry = (ChunkId, u32, u32);

/// Why a v2 pack, trailer or index file was refused, or not written. Each
/// names the object; line numbers count from 1 (the header).
#[derive(Debug, thiserror::Error)]
pub enum PackFormatError {
    #[error("{key}: the object is {size} bytes, shorter than the 24-byte pack footer")]
    ShorterThanFooter { key: String, size: u64 },
    #[error("{key}: malformed pack footer: {what}")]
    Footer { key: String, what: &'static str },
    #[error(
        "{key}: the footer says META is {meta_len} bytes, but the object holds only \
         {before} bytes before its footer, and DATA needs at least one"
    )]
    MetaTooLong {
        key: String,
        meta_len: u64,
        before: u64,
    },
    #[error("{key}: the footer says META is 0 bytes")]
    EmptyMeta { key: String },
    #[error("{key}: line 1: expected the header {expected:?}, found {found:?}")]
    Header {
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{key}: line {line}: {what}")]
    Malformed {
        key: String,
        line: usize,
        what: &'static str,
    },
    #[error(
        "{key}: line {line}: the chunk at offset {offset} does not start where the one \
         before ends ({expected}): entries overlap, leave a gap or are out of order"
    )]
    NotContiguous {
        key: String,
        line: usize,
        offset: u64,
        expected: u64,
    },
    #[error("{key}: line {line}: chunk {id} appears twice in one pack")]
    RepeatedChunk {
        key: String,
        line: usize,
        id: ChunkId,
    },
    #[error("{key}: a pack with no chunks")]
    NoChunks { key: String },
    #[error("{key}: line {line}: {pack} is not a pack key (packs/<2 hex>/<64 hex>)")]
    PackKey {
        key: String,
        line: usize,
        pack: String,
    },
    #[error("{key}: line {line}: {pack} is named twice")]
    RepeatedPack {
        key: String,
        line: usize,
        pack: String,
    },
    #[error("{key}: an index file that names no pack")]
    NoPacks { key: String },
    #[error("{key}: DATA decodes to {decoded} bytes, but its entries cover {covered}")]
    DataLength {
        key: String,
        decoded: u64,
        covered: u64,
    },
    #[error("{key}: META would be {len} bytes, more than a footer's 8 digits can say")]
    MetaUnwritable { key: String, len: u64 },
    #[error(transparent)]
    Sealed(#[from] SealedError),
}

type Result<T, E = PackFormatError> = std::result::Result<T, E>;

fn malformed(key: &str, line: usize, what: &'static str) -> PackFormatError {
    PackFormatError::Malformed {
        key: key.to_string(),
        line,
        what,
    }
}

/// A pack's chunks as its packinfo lists them: contiguous from offset 0,
/// no id twice, at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackInfo {
    entries: Vec<PackEntry>,
}

/// Collects one pack's entry lines, checking each as it comes.
struct Entries<'k> {
    key: &'k str,
    entries: Vec<PackEntry>,
    ids: HashSet<ChunkId>,
    end: u64,
}

impl<'k> Entries<'k> {
    fn new(key: &'k str) -> Entries<'k> {
        Entries {
            key,
            entries: Vec::new(),
            ids: HashSet::new(),
            end: 0,
        }
    }

    /// Adds the entry of line `line`: it must start where the last ends.
    fn add(&mut self, line: usize, (id, offset, len): PackEntry) -> Result<()> {
        if len == 0 {
            return Err(malformed(self.key, line, "a chunk of length 0"));
        }
        if u64::from(offset) != self.end {
            return Err(PackFormatError::NotContiguous {
                key: self.key.to_string(),
                line,
                offset: offset.into(),
                expected: self.end,
            });
        }
        if !self.ids.insert(id) {
            return Err(PackFormatError::RepeatedChunk {
                key: self.key.to_string(),
                line,
                id,
            });
        }
        self.end += u64::from(len);
        self.entries.push((id, offset, len));
        Ok(())
    }

    fn finish(self) -> Result<PackInfo> {
        if self.entries.is_empty() {
            return Err(PackFormatError::NoChunks {
                key: self.key.to_string(),
            });
        }
        Ok(PackInfo {
            entries: self.entries,
        })
    }
}

/// A line `<chunk id> <offset> <length>`, only if canonical.
fn parse_entry_line(line: &str) -> Option<PackEntry> {
    let f: Vec<&str> = line.split(' ').collect();
    let [id_s, off_s, len_s] = f.as_slice() else {
        return None;
    };
    let id = ChunkId::parse(id_s).filter(|id| id.to_string() == *id_s)?;
    Some((id, canonical_u32(off_s)?, canonical_u32(len_s)?))
}

/// A canonical decimal u32 (no sign, no leading zeros).
fn canonical_u32(s: &str) -> Option<u32> {
    let v: u32 = s.parse().ok()?;
    (v.to_string() == s).then_some(v)
}

const ENTRY_LINE: &str = "expected `<chunk id> <offset> <length>`";

impl PackInfo {
    /// The packinfo of chunks stored in this order, for the pack `key`
    /// (named in errors): refused where a parser would refuse it.
    pub fn from_chunks(key: &str, chunks: &[(ChunkId, u32)]) -> Result<PackInfo> {
        let mut entries = Entries::new(key);
        for (i, &(id, len)) in chunks.iter().enumerate() {
            let offset = u32::try_from(entries.end)
                .map_err(|_| malformed(key, i + 2, "the offset does not fit in 32 bits"))?;
            entries.add(i + 2, (id, offset, len))?;
        }
        entries.finish()
    }

    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// The length of the decoded `DATA`: where the last chunk ends.
    pub fn data_len(&self) -> u64 {
        let (_, offset, len) = self.entries.last().expect("a pack has chunks");
        u64::from(*offset) + u64::from(*len)
    }

    /// Refuses a decoded `DATA` of another length than the entries cover.
    pub fn check_decoded(&self, key: &str, decoded_len: u64) -> Result<()> {
        if decoded_len != self.data_len() {
            return Err(PackFormatError::DataLength {
                key: key.to_string(),
                decoded: decoded_len,
                covered: self.data_len(),
            });
        }
        Ok(())
    }

    /// The packinfo body, unsigned.
    pub fn write(&self) -> Vec<u8> {
        let mut out = String::with_capacity(20 + self.entries.len() * 88);
        out.push_str(PACKINFO_HEADER);
        out.push('\n');
        self.write_lines(&mut out);
        out.into_bytes()
    }

    fn write_lines(&self, out: &mut String) {
        for (id, offset, len) in &self.entries {
            out.push_str(&format!("{id} {offset} {len}\n"));
        }
    }

    /// Parses a packinfo body (what the signature check returned) of the
    /// pack `key`, refusing anything [`Self::write`] would not have written.
    pub fn parse(key: &str, body: &[u8]) -> Result<PackInfo> {
        let mut entries = Entries::new(key);
        for (n, line) in body_lines(key, body, PACKINFO_HEADER)? {
            let entry = parse_entry_line(line).ok_or_else(|| malformed(key, n, ENTRY_LINE))?;
            entries.add(n, entry)?;
        }
        entries.finish()
    }
}

/// The numbered lines of `body` after its header (numbered from 2); the
/// body must be UTF-8 and end with a newline.
fn body_lines<'a>(
    key: &str,
    body: &'a [u8],
    header: &'static str,
) -> Result<impl Iterator<Item = (usize, &'a str)>> {
    let text = std::str::from_utf8(body).map_err(|_| malformed(key, 1, "not UTF-8"))?;
    let text = text
        .strip_suffix('\n')
        .ok_or_else(|| malformed(key, 1, "the last line has no newline"))?;
    let mut lines = text.split('\n');
    let first = lines.next().unwrap_or("");
    if first != header {
        return Err(PackFormatError::Header {
            key: key.to_string(),
            expected: header,
            found: first.chars().take(40).collect(),
        });
    }
    Ok(lines.enumerate().map(|(i, l)| (i + 2, l)))
}

/// The footer for a `META` of `meta_len` bytes.
fn footer(key: &str, meta_len: u64) -> Result<String> {
    if meta_len > MAX_META_LEN {
        return Err(PackFormatError::MetaUnwritable {
            key: key.to_string(),
            len: meta_len,
        });
    }
    Ok(format!("{FOOTER_PREFIX}{meta_len:08}\n"))
}

/// Where the parts of a v2 pack object lie, from its size and its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLayout {
    size: u64,
    meta_len: u64,
}

impl PackLayout {
    /// The byte range of the footer of an object of `size` bytes: what a
    /// reader fetches first.
    pub fn footer_range(key: &str, size: u64) -> Result<Range<u64>> {
        if size < FOOTER_LEN {
            return Err(PackFormatError::ShorterThanFooter {
                key: key.to_string(),
                size,
            });
        }
        Ok(size - FOOTER_LEN..size)
    }

    /// The layout of the object `key` of `size` bytes whose last 24 bytes
    /// are `footer`; refused unless the footer is exact and the `META` it
    /// names fits in the object with a `DATA` of at least one byte.
    pub fn parse(key: &str, size: u64, footer: &[u8]) -> Result<PackLayout> {
        let bad = |what| PackFormatError::Footer {
            key: key.to_string(),
            what,
        };
        let before = Self::footer_range(key, size)?.start;
        let Some((digits, newline)) = footer
            .strip_prefix(FOOTER_PREFIX.as_bytes())
            .and_then(|rest| rest.split_last_chunk::<1>())
        else {
            return Err(bad("it does not start with `offsite-pack 2 `"));
        };
        if digits.len() != 8 || newline != b"\n" {
            return Err(bad("it is not 8 digits and a newline after `offsite-pack 2 `"));
        }
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("the length of META is not 8 decimal digits"));
        }
        let meta_len: u64 = std::str::from_utf8(digits)
            .expect("ASCII digits")
            .parse()
            .expect("8 digits fit");
        if meta_len == 0 {
            return Err(PackFormatError::EmptyMeta {
                key: key.to_string(),
            });
        }
        if meta_len >= before {
            return Err(PackFormatError::MetaTooLong {
                key: key.to_string(),
                meta_len,
                before,
            });
        }
        Ok(PackLayout { size, meta_len })
    }

    /// The length of the stored (encoded) `DATA`: `size - 24 - len(META)`.
    pub fn data_len(&self) -> u64 {
        self.size - FOOTER_LEN - self.meta_len
    }

    /// The byte range of the stored `DATA`.
    pub fn data(&self) -> Range<u64> {
        0..self.data_len()
    }

    /// The byte range of `META`.
    pub fn meta(&self) -> Range<u64> {
        self.data_len()..self.size - FOOTER_LEN
    }
}

/// `META || FOOTER` for the pack `key` holding `info`: what a writer
/// appends after the `DATA` stream. `metadata` is the current M.
pub fn encode_trailer(
    key: &str,
    info: &PackInfo,
    signer: &Signer,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>> {
    let mut out = sealed::encode(key, info.write(), signer, metadata)?;
    let footer = footer(key, out.len() as u64)?;
    out.extend_from_slice(footer.as_bytes());
    Ok(out)
}

/// The whole v2 pack object `key`: `plain` (the chunks `info` lists,
/// concatenated) encoded as format 1 encodes a pack, to `data` (the
/// current D), then the trailer. Refused when `plain` is not as long as
/// `info` covers, so no trailer misdescribes its `DATA`.
pub fn encode_pack(
    encoder: &mut codec::Encoder,
    plain: &[u8],
    info: &PackInfo,
    key: &str,
    signer: &Signer,
    data: &dyn age::Recipient,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>> {
    info.check_decoded(key, plain.len() as u64)?;
    let mut object = encoder
        .encode(plain, &[data])
        .map_err(|e| SealedError::Codec(Error::io(format!("encoding {key}"), e)))?;
    object.extend(encode_trailer(key, info, signer, metadata)?);
    Ok(object)
}

/// The packinfo in `META` (the bytes [`PackLayout::meta`] names) of pack
/// `key`, decoded with the M identities given and verified, and its signer.
pub fn open_meta<'a>(
    key: &str,
    meta: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    verifier: &Verifier,
) -> Result<(PackInfo, SignerPublic)> {
    let limit = sealed::text_limit(meta.len());
    let (body, signer) = sealed::decode(key, meta, identities, verifier, limit)?;
    Ok((PackInfo::parse(key, &body)?, signer))
}

/// A v2 pack read whole: its stored `DATA` and its verified packinfo.
#[derive(Debug)]
pub struct OpenedPack<'a> {
    /// The stored (encoded) `DATA`, for `age -d | zstd -d` with a D identity.
    pub data: &'a [u8],
    pub info: PackInfo,
    pub signer: SignerPublic,
}

/// Opens the v2 pack object `object` stored under `key`.
pub fn open_pack<'a>(
    key: &str,
    object: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    verifier: &Verifier,
) -> Result<OpenedPack<'a>> {
    let size = object.len() as u64;
    let footer = &object[PackLayout::footer_range(key, size)?.start as usize..];
    let layout = PackLayout::parse(key, size, footer)?;
    let meta = &object[layout.meta().start as usize..layout.meta().end as usize];
    let (info, signer) = open_meta(key, meta, identities, verifier)?;
    Ok(OpenedPack {
        data: &object[..layout.data_len() as usize],
        info,
        signer,
    })
}

/// Whether `pack` is a v2 pack key `packs/<2 hex>/<64 hex>`, lowercase,
/// the directory the name's first two digits.
pub fn is_pack_key(pack: &str) -> bool {
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let Some((dir, name)) = pack
        .strip_prefix(crate::repo::PACKS)
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    dir.len() == 2 && name.len() == 64 && lower_hex(name) && name.starts_with(dir)
}

/// A format 2 index file (`index/<32 hex>`): packs, each with its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    packs: Vec<(String, PackInfo)>,
}

impl IndexFile {
    /// An index file naming `packs`, for the object `key` (named in
    /// errors): at least one, each once, each by a pack key.
    pub fn new(key: &str, packs: Vec<(String, PackInfo)>) -> Result<IndexFile> {
        let mut seen = HashSet::new();
        let mut line = 2;
        for (pack, info) in &packs {
            check_pack_line(key, line, pack, &mut seen)?;
            line += 1 + info.entries.len();
        }
        if packs.is_empty() {
            return Err(PackFormatError::NoPacks {
                key: key.to_string(),
            });
        }
        Ok(IndexFile { packs })
    }

    pub fn packs(&self) -> &[(String, PackInfo)] {
        &self.packs
    }

    /// The packs and entries in format 1's shape, for `super::Index::merge`.
    pub fn contents(&self) -> Vec<PackContents> {
        (self.packs.iter())
            .map(|(pack, info)| (pack.clone(), info.entries.clone()))
            .collect()
    }

    /// The index file body, unsigned.
    pub fn write(&self) -> Vec<u8> {
        let mut out = String::new();
        out.push_str(INDEX_HEADER);
        out.push('\n');
        for (pack, info) in &self.packs {
            out.push_str(&format!("P {pack}\n"));
            info.write_lines(&mut out);
        }
        out.into_bytes()
    }

    /// Parses an index file body (what the signature check returned) of
    /// object `key`, refusing anything [`Self::write`] would not have written.
    pub fn parse(key: &str, body: &[u8]) -> Result<IndexFile> {
        let mut packs = Vec::new();
        let mut seen = HashSet::new();
        let mut open: Option<(String, Entries)> = None;
        for (n, line) in body_lines(key, body, INDEX_HEADER)? {
            if let Some(pack) = line.strip_prefix("P ") {
                check_pack_line(key, n, pack, &mut seen)?;
                if let Some((pack, entries)) = open.take() {
                    packs.push((pack, entries.finish()?));
                }
                open = Some((pack.to_string(), Entries::new(key)));
                continue;
            }
            let entry = parse_entry_line(line).ok_or_else(|| malformed(key, n, ENTRY_LINE))?;
            let Some((_, entries)) = open.as_mut() else {
                return Err(malformed(key, n, "an entry line before any P line"));
            };
            entries.add(n, entry)?;
        }
        if let Some((pack, entries)) = open {
            packs.push((pack, entries.finish()?));
        }
        IndexFile::new(key, packs)
    }

    /// The encoded object `key`: this body sealed by `signer`, to `metadata`.
    pub fn encode(
        &self,
        key: &str,
        signer: &Signer,
        metadata: &dyn age::Recipient,
    ) -> Result<Vec<u8>> {
        Ok(sealed::encode(key, self.write(), signer, metadata)?)
    }

    /// The index file stored as `encoded` under `key`, decoded with the M
    /// identities given and verified, and its signer.
    pub fn decode<'a>(
        key: &str,
        encoded: &'a [u8],
        identities: impl Iterator<Item = &'a dyn age::Identity>,
        verifier: &Verifier,
    ) -> Result<(IndexFile, SignerPublic)> {
        let limit = sealed::text_limit(encoded.len());
        let (body, signer) = sealed::decode(key, encoded, identities, verifier, limit)?;
        Ok((IndexFile::parse(key, &body)?, signer))
    }
}

/// Refuses a `P` line's pack that is not a pack key or was named before.
fn check_pack_line(
    key: &str,
    line: usize,
    pack: &str,
    seen: &mut HashSet<String>,
) -> Result<()> {
    if !is_pack_key(pack) {
        return Err(PackFormatError::PackKey {
            key: key.to_string(),
            line,
            pack: pack.chars().take(100).collect(),
        });
    }
    if !seen.insert(pack.to_string()) {
        return Err(PackFormatError::RepeatedPack {
            key: key.to_string(),
            line,
            pack: pack.to_string(),
        });
    }
    Ok(())
}
