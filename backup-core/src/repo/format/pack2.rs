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
//! object in memory. `DATA` then decodes with a D identity, bounded by the
//! signed [`PackInfo::data_len`] (`codec::Decoder::decode`'s limit), and
//! [`PackInfo::check_decoded`] refuses any other decoded length. [`encode_pack`] writes the whole object,
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

/// The v2 pack object `key` made of an encoded `DATA` and `META`, with its
/// footer (what `offsite key rewrite` writes after encrypting both anew).
pub fn assemble(key: &str, data: &[u8], meta: &[u8]) -> Result<Vec<u8>> {
    let footer = footer(key, meta.len() as u64)?;
    let mut object = Vec::with_capacity(data.len() + meta.len() + footer.len());
    object.extend_from_slice(data);
    object.extend_from_slice(meta);
    object.extend_from_slice(footer.as_bytes());
    Ok(object)
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
            return Err(bad(
                "it is not 8 digits and a newline after `offsite-pack 2 `",
            ));
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
fn check_pack_line(key: &str, line: usize, pack: &str, seen: &mut HashSet<String>) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::super::sealed::test_keys::{keys, Keys};
    use super::*;
    use crate::sign::SignatureError;

    const KEY: &str = "packs/ab/ab00000000000000000000000000000000000000000000000000000000000001";

    fn id(n: u64) -> ChunkId {
        ChunkId::of(&n.to_le_bytes())
    }

    /// `n` chunks of 4096 bytes and their concatenation.
    fn pages(n: u64) -> (Vec<(ChunkId, u32)>, Vec<u8>) {
        let data: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 4096]).collect();
        let chunks = data.iter().map(|d| (ChunkId::of(d), 4096)).collect();
        (chunks, data.concat())
    }

    fn pack(k: &Keys, n: u64) -> (Vec<u8>, PackInfo, Vec<u8>) {
        let (chunks, plain) = pages(n);
        let info = PackInfo::from_chunks(KEY, &chunks).unwrap();
        let mut encoder = codec::Encoder::new(3).unwrap();
        let object = encode_pack(
            &mut encoder,
            &plain,
            &info,
            KEY,
            &k.writer,
            &k.data.to_public(),
            &k.meta.to_public(),
        )
        .unwrap();
        (object, info, plain)
    }

    /// `object` with its footer replaced by `footer`.
    fn with_footer(object: &[u8], footer: &[u8]) -> Vec<u8> {
        [&object[..object.len() - 24], footer].concat()
    }

    /// `object`'s `DATA` with `meta` and its footer after it.
    fn with_meta(object: &[u8], meta: &[u8]) -> Vec<u8> {
        let footer_at = object.len() - 24;
        let layout = PackLayout::parse(KEY, object.len() as u64, &object[footer_at..]).unwrap();
        let footer = footer(KEY, meta.len() as u64).unwrap();
        [
            &object[..layout.data_len() as usize],
            meta,
            footer.as_bytes(),
        ]
        .concat()
    }

    fn open_err(k: &Keys, object: &[u8]) -> PackFormatError {
        open_pack(KEY, object, k.m(), &k.verifier).unwrap_err()
    }

    /// Written whole, a pack opens with M alone to its signed entries, and
    /// `DATA` (the first size - 24 - len(META) bytes) decodes with D alone
    /// to exactly the chunks, at the offsets the entries give.
    #[test]
    fn a_pack_roundtrips_and_data_is_what_the_footer_leaves() {
        let k = keys();
        let (object, info, plain) = pack(&k, 5);
        let footer = &object[object.len() - 24..];
        let layout = PackLayout::parse(KEY, object.len() as u64, footer).unwrap();
        assert_eq!(
            footer,
            format!(
                "offsite-pack 2 {:08}\n",
                layout.meta().end - layout.meta().start
            )
            .as_bytes()
        );
        assert_eq!(
            layout.data_len() + (layout.meta().end - layout.meta().start) + 24,
            object.len() as u64
        );
        let opened = open_pack(KEY, &object, k.m(), &k.verifier).unwrap();
        assert_eq!(opened.info, info);
        assert_eq!(&opened.signer, k.writer.public());
        assert_eq!(opened.data.len() as u64, layout.data_len());
        let decoded = codec::decode(opened.data, k.d(), KEY).unwrap();
        assert_eq!(decoded, plain);
        let mut bulk = codec::Decoder::new().unwrap();
        let limit = opened.info.data_len() as usize;
        assert_eq!(
            bulk.decode(opened.data, k.d(), KEY, limit).unwrap(),
            &plain[..]
        );
        opened
            .info
            .check_decoded(KEY, decoded.len() as u64)
            .unwrap();
        for (i, (cid, offset, len)) in opened.info.entries().iter().enumerate() {
            let chunk = &decoded[*offset as usize..(offset + len) as usize];
            assert_eq!((ChunkId::of(chunk), *offset), (*cid, i as u32 * 4096));
        }
        // A trailer appended after the data stream makes a pack (age
        // headers carry random padding, so its length differs by a few bytes).
        let trailer = encode_trailer(KEY, &info, &k.writer, &k.meta.to_public()).unwrap();
        let appended = [opened.data, &trailer].concat();
        let reopened = open_pack(KEY, &appended, k.m(), &k.verifier).unwrap();
        assert_eq!((reopened.data, &reopened.info), (opened.data, &info));
        let meta = &object[layout.meta().start as usize..layout.meta().end as usize];
        let (alone, _) = open_meta(KEY, meta, k.m(), &k.verifier).unwrap();
        assert_eq!(alone, info);

        // D does not open META, M does not open DATA.
        let e = open_pack(KEY, &object, k.d(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Codec(Error::WrongIdentity { .. }))
            ),
            "{e:?}"
        );
        let e = codec::decode(opened.data, k.m(), KEY).unwrap_err();
        assert!(matches!(e, Error::WrongIdentity { .. }), "{e:?}");
    }

    /// docs/format.md's stock-tools split of a v2 pack, verbatim.
    const STOCK_SPLIT: &str = r#"SIZE=$(stat -c %s PACK)
META_LEN=$(tail -c 24 PACK | cut -c16-23 | sed 's/^0*//')
tail -c $((META_LEN + 24)) PACK | head -c "$META_LEN" | age -d -i M_IDENTITY_FILE | zstd -d   # the signed packinfo
head -c $((SIZE - 24 - META_LEN)) PACK | age -d -i D_IDENTITY_FILE | zstd -d > data        # the chunks
"#;

    /// The split the format documents for stock tools gives the signed
    /// packinfo with M's identity file and the chunks with D's.
    #[test]
    fn a_pack_splits_with_stock_tools_as_documented() {
        let doc = include_str!("../../../../docs/format.md");
        assert!(doc.contains(STOCK_SPLIT), "docs/format.md changed");
        let dir = tempfile::tempdir().unwrap();
        let identity = |file: &str| {
            let (text, _) = crate::keys::generate_identity();
            std::fs::write(dir.path().join(file), &text).unwrap();
            text.lines()
                .last()
                .unwrap()
                .parse::<age::x25519::Identity>()
                .unwrap()
        };
        let k = Keys {
            data: identity("D_IDENTITY_FILE"),
            meta: identity("M_IDENTITY_FILE"),
            ..keys()
        };
        let (object, info, plain) = pack(&k, 3);
        std::fs::write(dir.path().join("PACK"), &object).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-ec", STOCK_SPLIT])
            .current_dir(dir.path())
            .output()
            .expect("sh, age and zstd are needed (scripts/install-test-deps.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let signed = k.writer.seal(KEY, info.write()).unwrap();
        assert_eq!(out.stdout, signed);
        assert_eq!(std::fs::read(dir.path().join("data")).unwrap(), plain);
    }

    #[test]
    fn a_trailer_longer_than_its_pack_is_refused() {
        let k = keys();
        let (object, _, _) = pack(&k, 2);
        let before = object.len() as u64 - 24;
        for claim in [before, before + 1, MAX_META_LEN] {
            let hostile = with_footer(&object, format!("offsite-pack 2 {claim:08}\n").as_bytes());
            let e = open_err(&k, &hostile);
            assert!(
                matches!(e, PackFormatError::MetaTooLong { meta_len, before: b, .. }
                    if meta_len == claim && b == before),
                "{e:?}"
            );
        }
        let e = open_err(&k, &object[object.len() - 23..]);
        assert!(
            matches!(e, PackFormatError::ShorterThanFooter { size: 23, .. }),
            "{e:?}"
        );
        assert!(matches!(
            PackLayout::footer_range(KEY, 0),
            Err(PackFormatError::ShorterThanFooter { size: 0, .. })
        ));
        // A shorter claim than the real META cuts it: it does not decode.
        let (_, real) = object.split_at(object.len() - 24);
        let real: u64 = std::str::from_utf8(&real[15..23]).unwrap().parse().unwrap();
        let short = with_footer(
            &object,
            format!("offsite-pack 2 {:08}\n", real - 1).as_bytes(),
        );
        let e = open_err(&k, &short);
        assert!(matches!(e, PackFormatError::Sealed(_)), "{e:?}");
    }

    #[test]
    fn a_footer_not_exactly_prefix_8_digits_newline_is_refused() {
        let k = keys();
        let (object, _, _) = pack(&k, 1);
        let footer = |f: &str| {
            assert_eq!(f.len(), 24, "{f:?}");
            open_err(&k, &with_footer(&object, f.as_bytes()))
        };
        for bad in [
            "offsite-pack 2 0000012a\n",
            "offsite-pack 2 +0000123\n",
            "offsite-pack 2  1234567\n",
            "offsite-pack 2 -0000001\n",
        ] {
            let e = footer(bad);
            assert!(
                e.to_string().contains("not 8 decimal digits"),
                "{bad:?}: {e}"
            );
        }
        for bad in [
            "offsite-pack 3 00000100\n",
            "offsite-pack2 000000100\n",
            "OFFSITE-PACK 2 00000100\n",
        ] {
            let e = footer(bad);
            assert!(
                e.to_string().contains("does not start with"),
                "{bad:?}: {e}"
            );
        }
        let e = footer("offsite-pack 2 00000100 ");
        assert!(e.to_string().contains("8 digits and a newline"), "{e}");
        let e = footer("offsite-pack 2 00000000\n");
        assert!(matches!(e, PackFormatError::EmptyMeta { .. }), "{e:?}");
        let e = PackLayout::parse(KEY, 1000, b"offsite-pack 2 0000010\n").unwrap_err();
        assert!(matches!(e, PackFormatError::Footer { .. }), "{e:?}");
    }

    #[test]
    fn a_trailer_signed_by_an_unknown_key_is_refused() {
        let k = keys();
        let (chunks, plain) = pages(2);
        let info = PackInfo::from_chunks(KEY, &chunks).unwrap();
        let mut encoder = codec::Encoder::new(3).unwrap();
        let forged = encode_pack(
            &mut encoder,
            &plain,
            &info,
            KEY,
            &k.stranger(),
            &k.data.to_public(),
            &k.meta.to_public(),
        )
        .unwrap();
        let e = open_err(&k, &forged);
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Signature(
                    SignatureError::UnknownSigner { .. }
                ))
            ),
            "{e:?}"
        );
        // A genuine pack copied under another name: its trailer is not for it.
        let (object, _, _) = pack(&k, 2);
        let other = "packs/cd/cd00000000000000000000000000000000000000000000000000000000000002";
        let e = open_pack(other, &object, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Signature(
                    SignatureError::BadSignature { .. }
                ))
            ),
            "{e:?}"
        );
        // An unsigned packinfo in META.
        let body = codec::encode(&info.write(), &[&k.meta.to_public()], 3).unwrap();
        let e = open_err(&k, &with_meta(&object, &body));
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Signature(
                    SignatureError::NoSignatureLine { .. }
                ))
            ),
            "{e:?}"
        );
    }

    /// A META that decompresses far beyond what its stored size could
    /// honestly hold is refused after the limit, before its signature is
    /// even looked at.
    #[test]
    fn a_meta_that_decompresses_without_end_is_refused() {
        let k = keys();
        let (object, _, _) = pack(&k, 1);
        let bomb = codec::encode(&vec![b'0'; 64 << 20], &[&k.meta.to_public()], 19).unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        let e = open_err(&k, &with_meta(&object, &bomb));
        assert!(
            matches!(&e, PackFormatError::Sealed(SealedError::TooLarge { limit, .. })
                if *limit == bomb.len() * 4 + 1024),
            "{e:?}"
        );
    }

    fn parse_err(body: String) -> PackFormatError {
        PackInfo::parse(KEY, body.as_bytes()).unwrap_err()
    }

    /// Entries out of order, overlapping or leaving gaps, repeated ids,
    /// empty chunks and every non-canonical spelling are refused by line.
    #[test]
    fn packinfo_entries_out_of_order_overlapping_or_with_gaps_are_refused() {
        let (a, b, c) = (id(1), id(2), id(3));
        let good = format!("offsite-packinfo 2\n{a} 0 10\n{b} 10 5\n{c} 15 1\n");
        let info = PackInfo::parse(KEY, good.as_bytes()).unwrap();
        assert_eq!(info.write(), good.as_bytes());
        assert_eq!(info.data_len(), 16);
        let from = PackInfo::from_chunks(KEY, &[(a, 10), (b, 5), (c, 1)]).unwrap();
        assert_eq!(from, info);

        let not_contiguous = |body: String, line, offset, expected| {
            let e = parse_err(body);
            assert!(
                matches!(e, PackFormatError::NotContiguous { line: l, offset: o, expected: x, .. }
                    if l == line && o == offset && x == expected),
                "{e:?}"
            );
        };
        not_contiguous(good.replace(" 10 5", " 11 5"), 3, 11, 10); // a gap
        not_contiguous(good.replace(" 10 5", " 9 5"), 3, 9, 10); // overlap
        not_contiguous(
            format!("offsite-packinfo 2\n{b} 10 5\n{a} 0 10\n"),
            2,
            10,
            0,
        ); // out of order
        not_contiguous(format!("offsite-packinfo 2\n{a} 1 10\n"), 2, 1, 0);

        let e = parse_err(good.replace(&format!("{c} 15"), &format!("{a} 15")));
        assert!(
            matches!(e, PackFormatError::RepeatedChunk { line: 4, id, .. } if id == a),
            "{e:?}"
        );
        let e = PackInfo::from_chunks(KEY, &[(a, 1), (a, 1)]).unwrap_err();
        assert!(
            matches!(e, PackFormatError::RepeatedChunk { line: 3, .. }),
            "{e:?}"
        );

        let malformed = |body: String, line: usize, what: &str| {
            let e = parse_err(body);
            assert!(
                matches!(&e, PackFormatError::Malformed { line: l, what: w, .. }
                    if *l == line && w.contains(what)),
                "{line} {what}: {e:?}"
            );
        };
        malformed(good.replace(" 15 1", " 15 0"), 4, "length 0");
        malformed(good.replace(" 10 5", " 010 5"), 3, "expected `<chunk id>");
        malformed(good.replace(" 10 5", " +10 5"), 3, "expected `<chunk id>");
        malformed(good.replace(" 10 5", "  10 5"), 3, "expected `<chunk id>");
        malformed(good.replace(" 10 5", " 10 5 x"), 3, "expected `<chunk id>");
        malformed(
            good.replace(&a.to_string(), &a.to_string().to_uppercase()),
            2,
            "expected `<chunk id>",
        );
        malformed(
            good.replace(" 15 1\n", " 15 1\n\n"),
            5,
            "expected `<chunk id>",
        );
        malformed(
            good.replace(" 15 1\n", " 15 1\r\n"),
            4,
            "expected `<chunk id>",
        );
        malformed(
            format!("offsite-packinfo 2\n{a} 4294967296 1\n"),
            2,
            "expected `<chunk id>",
        );
        malformed(good.trim_end().to_string(), 1, "no newline");
        let e = parse_err(good.replace("packinfo 2", "packinfo 1"));
        assert!(matches!(e, PackFormatError::Header { .. }), "{e:?}");
        let e = parse_err("offsite-packinfo 2\n".into());
        assert!(matches!(e, PackFormatError::NoChunks { .. }), "{e:?}");
        let e = PackInfo::from_chunks(KEY, &[]).unwrap_err();
        assert!(matches!(e, PackFormatError::NoChunks { .. }), "{e:?}");

        // Offsets are 32-bit, as in format 1's index.
        let big = PackInfo::from_chunks(KEY, &[(a, u32::MAX), (b, u32::MAX), (c, 1)]);
        assert!(
            matches!(&big, Err(PackFormatError::Malformed { line: 4, what, .. })
                if what.contains("32 bits")),
            "{big:?}"
        );
    }

    #[test]
    fn decoded_data_of_another_length_is_refused() {
        let k = keys();
        let (chunks, plain) = pages(3);
        let info = PackInfo::from_chunks(KEY, &chunks).unwrap();
        let e = info.check_decoded(KEY, plain.len() as u64 - 1).unwrap_err();
        assert!(
            matches!(
                e,
                PackFormatError::DataLength {
                    decoded: 12287,
                    covered: 12288,
                    ..
                }
            ),
            "{e:?}"
        );
        let mut encoder = codec::Encoder::new(3).unwrap();
        let e = encode_pack(
            &mut encoder,
            &plain[..100],
            &info,
            KEY,
            &k.writer,
            &k.data.to_public(),
            &k.meta.to_public(),
        )
        .unwrap_err();
        assert!(
            matches!(e, PackFormatError::DataLength { decoded: 100, .. }),
            "{e:?}"
        );
        assert!(matches!(
            footer(KEY, MAX_META_LEN + 1),
            Err(PackFormatError::MetaUnwritable { .. })
        ));
        assert_eq!(footer(KEY, MAX_META_LEN).unwrap().len(), 24);
    }

    /// The design's figure (4.6): the trailer of the 1% change on the 21 MB
    /// database, 210 pages, costs about 9 KiB. Keyed ids are random, as
    /// here. The body is 19 bytes of header and one line per entry; a
    /// writer's signature line is 274 bytes.
    #[test]
    fn a_trailer_of_210_pages_is_under_10_kib() {
        use rand::{Rng, SeedableRng};
        let k = keys();
        let mut rng = rand::rngs::StdRng::seed_from_u64(46);
        let chunks: Vec<(ChunkId, u32)> = (0..210).map(|_| (ChunkId(rng.random()), 4096)).collect();
        let info = PackInfo::from_chunks(KEY, &chunks).unwrap();
        let body = info.write();
        let lines: usize = (0..210u32)
            .map(|i| 64 + 1 + (i * 4096).to_string().len() + 1 + 4 + 1)
            .sum();
        assert_eq!(body.len(), 19 + lines);
        let signed = k.writer.seal(KEY, body.clone()).unwrap();
        assert_eq!(signed.len() - body.len(), 274);
        let trailer = encode_trailer(KEY, &info, &k.writer, &k.meta.to_public()).unwrap();
        assert!(trailer.len() < 10 * 1024, "{} bytes", trailer.len());
        eprintln!(
            "210 entries: packinfo {} B, signed {} B, trailer {} B (META + 24)",
            body.len(),
            signed.len(),
            trailer.len()
        );
    }

    const PACK_B: &str =
        "packs/cd/cd00000000000000000000000000000000000000000000000000000000000002";
    const INDEX_KEY: &str = "index/0123456789abcdef0123456789abcdef";

    fn two_packs() -> Vec<(String, PackInfo)> {
        let a = PackInfo::from_chunks(KEY, &[(id(1), 10), (id(2), 5)]).unwrap();
        let b = PackInfo::from_chunks(PACK_B, &[(id(2), 5), (id(3), 7)]).unwrap();
        vec![(KEY.to_string(), a), (PACK_B.to_string(), b)]
    }

    /// An index file is its packs' packinfo lines under `P` lines; it
    /// roundtrips signed and merges into the index as format 1's does.
    #[test]
    fn an_index_file_roundtrips_and_merges_like_format_1() {
        let k = keys();
        let index = IndexFile::new(INDEX_KEY, two_packs()).unwrap();
        let body = String::from_utf8(index.write()).unwrap();
        let want = format!(
            "offsite-index 2\nP {KEY}\n{} 0 10\n{} 10 5\nP {PACK_B}\n{} 0 5\n{} 5 7\n",
            id(1),
            id(2),
            id(2),
            id(3)
        );
        assert_eq!(body, want);
        assert_eq!(IndexFile::parse(INDEX_KEY, body.as_bytes()).unwrap(), index);
        let encoded = index
            .encode(INDEX_KEY, &k.writer, &k.meta.to_public())
            .unwrap();
        let (decoded, signer) = IndexFile::decode(INDEX_KEY, &encoded, k.m(), &k.verifier).unwrap();
        assert_eq!((&decoded, &signer), (&index, k.writer.public()));

        let v1 = crate::repo::format::write_index(&index.contents());
        assert_eq!(
            &v1[15..],
            &want.as_bytes()[15..],
            "the same lines as format 1"
        );
        let mut merged = super::super::Index::default();
        merged.merge(&decoded.contents());
        assert_eq!(merged.packs, vec![KEY.to_string(), PACK_B.to_string()]);
        let loc = merged.get(&id(3)).unwrap();
        assert_eq!((loc.pack, loc.offset, loc.len), (1, 5, 7));

        let moved = "index/fedcba9876543210fedcba9876543210";
        let e = IndexFile::decode(moved, &encoded, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Signature(
                    SignatureError::BadSignature { .. }
                ))
            ),
            "{e:?}"
        );
        let forged = index
            .encode(INDEX_KEY, &k.stranger(), &k.meta.to_public())
            .unwrap();
        let e = IndexFile::decode(INDEX_KEY, &forged, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                PackFormatError::Sealed(SealedError::Signature(
                    SignatureError::UnknownSigner { .. }
                ))
            ),
            "{e:?}"
        );
    }

    #[test]
    fn an_index_file_that_names_packs_loosely_is_refused() {
        let good =
            String::from_utf8(IndexFile::new(INDEX_KEY, two_packs()).unwrap().write()).unwrap();
        let err = |body: String| IndexFile::parse(INDEX_KEY, body.as_bytes()).unwrap_err();
        for bad in [
            KEY.replace("packs/ab/ab", "packs/ab/cd"),
            KEY.replace("packs/ab/ab", "packs/AB/AB"),
            KEY.replace("packs/", "lists/"),
            KEY[..KEY.len() - 1].to_string(),
            format!("{KEY}/x"),
            String::new(),
        ] {
            let e = err(good.replace(&format!("P {KEY}"), &format!("P {bad}")));
            assert!(
                matches!(&e, PackFormatError::PackKey { line: 2, pack, .. } if *pack == bad),
                "{bad}: {e:?}"
            );
        }
        let e = err(good.replace(PACK_B, KEY));
        assert!(
            matches!(e, PackFormatError::RepeatedPack { line: 5, .. }),
            "{e:?}"
        );
        let e = err(good.replace(&format!("P {KEY}\n"), ""));
        assert!(
            matches!(&e, PackFormatError::Malformed { line: 2, what, .. }
                if what.contains("before any P line")),
            "{e:?}"
        );
        let e = err(format!(
            "offsite-index 2\nP {KEY}\nP {PACK_B}\n{} 0 5\n",
            id(1)
        ));
        assert!(matches!(e, PackFormatError::NoChunks { .. }), "{e:?}");
        let e = err(format!("offsite-index 2\nP {KEY}\n"));
        assert!(matches!(e, PackFormatError::NoChunks { .. }), "{e:?}");
        let e = err("offsite-index 2\n".into());
        assert!(matches!(e, PackFormatError::NoPacks { .. }), "{e:?}");
        let e = IndexFile::new(INDEX_KEY, Vec::new()).unwrap_err();
        assert!(matches!(e, PackFormatError::NoPacks { .. }), "{e:?}");
        let e = err(good.replace(" 5 7", " 6 7"));
        assert!(
            matches!(e, PackFormatError::NotContiguous { line: 7, .. }),
            "{e:?}"
        );
        let e = err(good.replace("offsite-index 2", "offsite-index 1"));
        assert!(matches!(e, PackFormatError::Header { .. }), "{e:?}");
        let mut packs = two_packs();
        packs[1].0 = "packs/cd/x".into();
        let e = IndexFile::new(INDEX_KEY, packs).unwrap_err();
        assert!(
            matches!(e, PackFormatError::PackKey { line: 5, .. }),
            "{e:?}"
        );
        assert!(is_pack_key(KEY) && is_pack_key(PACK_B));
    }
}
