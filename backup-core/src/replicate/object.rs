//! Replica objects (docs/format.md, "Replica objects"): the pages one or
//! more replication steps changed, on top of a base snapshot, stored as
//! `replica/<base id>/<level>/<first>-<last>-<at>`.
//!
//! An object is `DATA || META || FOOTER` as a format 2 pack is: `DATA` the
//! changed pages concatenated in page order, zstd then age to the data
//! recipient D; `META` a signed metadata object (to M, signed under the
//! object's key) saying which pages, on which base and steps, at what
//! instant, with a keyed BLAKE3 of `DATA`'s plaintext; `FOOTER` 24 bytes,
//! `offsite-repl 2 `, `META`'s length in 8 digits, `\n`.
//!
//! Never: accept an object whose key does not parse, whose signature does
//! not verify under its own key by a trusted signer, whose `META` does not
//! repeat its key's base, level, steps and instant, whose page runs are not
//! ascending within the database's size, or whose `DATA` does not decode to
//! exactly those pages with that hash. A reader decodes at most the pages
//! the signed `META` announces.

use std::fmt::Write as _;
use std::io::Read;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use crate::chunk::{ChunkId, ChunkKey};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::SignerPublic;
use crate::repo::format::sealed;
use crate::sign::{Signer, Verifier};

/// Where replica objects live.
pub const REPLICA: &str = "replica/";
const FOOTER_PREFIX: &str = "offsite-repl 2 ";
const FOOTER_LEN: usize = 24;
const HEADER: &str = "offsite-replica 2";
/// The most pages one object may hold (64 MiB of 4 KiB pages).
pub const MAX_PAGES: u32 = 16_384;

/// The name of a replica object, which is also what planning a restore
/// reads (listing only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKey {
    pub base: String,
    /// 0: one step; 1 and up: steps merged over a longer window.
    pub level: u8,
    pub first: u64,
    pub last: u64,
    pub at: DateTime<Utc>,
}

impl ReplicaKey {
    pub fn to_key(&self) -> String {
        format!(
            "{REPLICA}{}/{}/{:010}-{:010}-{}",
            self.base,
            self.level,
            self.first,
            self.last,
            self.at.format("%Y%m%dT%H%M%S%.3fZ")
        )
    }

    /// Parses a key written by [`ReplicaKey::to_key`]; anything else is `None`.
    pub fn parse(key: &str) -> Option<ReplicaKey> {
        let rest = key.strip_prefix(REPLICA)?;
        let mut parts = rest.split('/');
        let (base, level, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !crate::repo::format::manifest2::is_snapshot_id(base) {
            return None;
        }
        let level: u8 = level.parse().ok().filter(|l| *l <= 9)?;
        let mut fields = name.splitn(3, '-');
        let (first, last, at) = (fields.next()?, fields.next()?, fields.next()?);
        let number = |s: &str| (s.len() == 10).then(|| s.parse::<u64>().ok()).flatten();
        let (first, last) = (number(first)?, number(last)?);
        let at = NaiveDateTime::parse_from_str(at, "%Y%m%dT%H%M%S%.3fZ")
            .ok()?
            .and_utc();
        let parsed = ReplicaKey {
            base: base.to_string(),
            level,
            first,
            last,
            at,
        };
        (first >= 1 && first <= last && parsed.to_key() == key).then_some(parsed)
    }
}

/// What an object's signed `META` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub source: String,
    pub key: ReplicaKey,
    pub page_size: u32,
    /// The database's size in pages after these changes.
    pub size_pages: u32,
    /// Runs of changed pages: (first page number, count), ascending.
    pub runs: Vec<(u32, u32)>,
    pub data: ChunkId,
}

impl Meta {
    pub fn page_count(&self) -> u64 {
        self.runs.iter().map(|r| r.1 as u64).sum()
    }

    fn write(&self) -> Vec<u8> {
        let mut s = String::new();
        let at = self.key.at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let _ = writeln!(s, "{HEADER}");
        let _ = writeln!(
            s,
            "source {}",
            serde_json::Value::from(self.source.as_str())
        );
        let _ = writeln!(s, "base {}", self.key.base);
        let _ = writeln!(s, "level {}", self.key.level);
        let _ = writeln!(s, "steps {} {}", self.key.first, self.key.last);
        let _ = writeln!(s, "at {at}");
        let _ = writeln!(s, "page_size {}", self.page_size);
        let _ = writeln!(s, "size {}", self.size_pages);
        let _ = writeln!(s, "data {}", self.data);
        for (first, count) in &self.runs {
            let _ = writeln!(s, "R {first} {count}");
        }
        s.into_bytes()
    }

    fn parse(key: &ReplicaKey, body: &[u8]) -> std::result::Result<Meta, String> {
        let text = std::str::from_utf8(body).map_err(|_| "META is not UTF-8")?;
        let text = text
            .strip_suffix('\n')
            .ok_or("META does not end with a newline")?;
        let mut lines = text.split('\n');
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::to_string)
                .ok_or(format!("META lacks its `{name}` line"))
        };
        if field("offsite-replica")? != "2" {
            return Err("META is not version 2".into());
        }
        let source: String = serde_json::from_str(&field("source")?)
            .map_err(|_| "META's source is not a JSON string")?;
        let said = (
            field("base")?,
            field("level")?,
            field("steps")?,
            field("at")?,
        );
        let at = key.at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let expected = (
            key.base.clone(),
            key.level.to_string(),
            format!("{} {}", key.first, key.last),
            at,
        );
        if said != expected {
            return Err("META is about another object than its key".into());
        }
        let number = |s: String| {
            s.parse::<u32>()
                .map_err(|_| format!("{s:?} is not a number"))
        };
        let page_size = number(field("page_size")?)?;
        let size_pages = number(field("size")?)?;
        let data = ChunkId::parse(&field("data")?).ok_or("META's data hash is not 64 hex")?;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("page size {page_size} is not one SQLite uses"));
        }
        let mut runs = Vec::new();
        let mut next = 1u64;
        for line in lines {
            let run = line
                .strip_prefix("R ")
                .and_then(|r| r.split_once(' '))
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or(format!("{line:?} is not a page run"))?;
            let end = run.0 as u64 + run.1 as u64;
            if (run.0 as u64) < next || run.1 == 0 || end - 1 > size_pages as u64 {
                return Err("page runs are not ascending within the database".into());
            }
            next = end + 1; // adjacent runs are written as one
            runs.push(run);
        }
        let meta = Meta {
            source,
            key: key.clone(),
            page_size,
            size_pages,
            runs,
            data,
        };
        if meta.page_count() > MAX_PAGES as u64 {
            return Err(format!("more than {MAX_PAGES} pages"));
        }
        Ok(meta)
    }
}

/// The runs of `pages` (ascending page numbers).
pub fn runs_of(pages: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for p in pages {
        match runs.last_mut() {
            Some((first, count)) if *first + *count == p => *count += 1,
            _ => runs.push((p, 1)),
        }
    }
    runs
}

/// Encodes a replica object: `plain` is the pages `meta.runs` names, in order.
pub fn encode(
    meta: &Meta,
    plain: &[u8],
    signer: &Signer,
    data: &dyn age::Recipient,
    metadata: &dyn age::Recipient,
    level: i32,
) -> Result<Vec<u8>> {
    let key = meta.key.to_key();
    if plain.len() as u64 != meta.page_count() * meta.page_size as u64 {
        return Err(Error::io(
            format!("encoding {key}"),
            std::io::Error::other("the pages do not match the runs"),
        ));
    }
    let mut object = codec::encode(plain, &[data], level)
        .map_err(|e| Error::io(format!("encoding {key}"), e))?;
    let sealed = sealed::encode(&key, meta.write(), signer, metadata)
        .map_err(|e| Error::Key(format!("cannot seal {key}: {e}")))?;
    let footer = format!("{FOOTER_PREFIX}{:08}\n", sealed.len());
    if footer.len() != FOOTER_LEN {
        return Err(Error::io(
            format!("encoding {key}"),
            std::io::Error::other("META is too large"),
        ));
    }
    object.extend_from_slice(&sealed);
    object.extend_from_slice(footer.as_bytes());
    Ok(object)
}

/// Why an object was refused.
fn corrupt(key: &str, why: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        key: key.to_string(),
        message: why.to_string(),
    }
}

/// The verified `META` of `object` (stored under `key`) and where its
/// `DATA` ends.
pub fn open_meta<'a>(
    key: &ReplicaKey,
    object: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    verifier: &Verifier,
) -> Result<(Meta, SignerPublic, &'a [u8])> {
    let name = key.to_key();
    if object.len() < FOOTER_LEN {
        return Err(corrupt(&name, "shorter than its footer"));
    }
    let (rest, footer) = object.split_at(object.len() - FOOTER_LEN);
    let digits = footer
        .strip_prefix(FOOTER_PREFIX.as_bytes())
        .and_then(|f| f.strip_suffix(b"\n"))
        .filter(|d| d.len() == 8 && d.iter().all(u8::is_ascii_digit))
        .ok_or_else(|| corrupt(&name, "its footer is not `offsite-repl 2 ` and 8 digits"))?;
    let meta_len: usize = std::str::from_utf8(digits)
        .expect("digits")
        .parse()
        .expect("8 digits");
    if meta_len == 0 || meta_len >= rest.len() {
        return Err(corrupt(&name, "its footer names no room for DATA"));
    }
    let (data, meta) = rest.split_at(rest.len() - meta_len);
    let limit = meta_len.saturating_mul(256).saturating_add(1024);
    let (body, signer) =
        sealed::decode(&name, meta, identities, verifier, limit).map_err(|e| corrupt(&name, e))?;
    let meta = Meta::parse(key, &body).map_err(|e| corrupt(&name, e))?;
    Ok((meta, signer, data))
}

/// `DATA` decoded with a D identity and checked against `meta`: exactly
/// its pages, hashing (keyed) to its `data`.
pub fn open_data<'a>(
    meta: &Meta,
    data: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    chunk_key: &ChunkKey,
) -> Result<Vec<u8>> {
    let name = meta.key.to_key();
    let expected = meta.page_count() * meta.page_size as u64;
    let reader = codec::decode_reader_bounded(data, identities, &name, 27)?;
    let mut plain = Vec::with_capacity(expected as usize);
    reader
        .take(expected + 1)
        .read_to_end(&mut plain)
        .map_err(|e| codec::corrupt_read(e, &name))?;
    if plain.len() as u64 != expected {
        return Err(corrupt(&name, "DATA does not hold the pages META names"));
    }
    if ChunkId::keyed(chunk_key, &plain) != meta.data {
        return Err(corrupt(&name, "DATA does not match META's hash"));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_junk_is_refused() {
        let key = ReplicaKey {
            base: "20261203T120000Z-0a1b2c3d".into(),
            level: 1,
            first: 31,
            last: 60,
            at: DateTime::parse_from_rfc3339("2026-12-03T12:01:00.000Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let text = key.to_key();
        assert_eq!(
            text,
            "replica/20261203T120000Z-0a1b2c3d/1/0000000031-0000000060-20261203T120100.000Z"
        );
        assert_eq!(ReplicaKey::parse(&text), Some(key));
        for junk in [
            "replica/x/1/0000000031-0000000060-20261203T120100.000Z",
            "replica/20261203T120000Z-0a1b2c3d/1/0000000061-0000000060-20261203T120100.000Z",
            "replica/20261203T120000Z-0a1b2c3d/1/0000000000-0000000060-20261203T120100.000Z",
            "replica/20261203T120000Z-0a1b2c3d/1/31-60-20261203T120100.000Z",
            "replica/20261203T120000Z-0a1b2c3d/1/0000000031-0000000060-20261203T120100Z",
            "replica/20261203T120000Z-0a1b2c3d/1/0000000031-0000000060-20261203T120100.000Z/x",
        ] {
            assert_eq!(ReplicaKey::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn runs_join_adjacent_pages() {
        assert_eq!(runs_of([1, 2, 3, 7, 9, 10]), vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(runs_of([]), Vec::<(u32, u32)>::new());
    }
}
