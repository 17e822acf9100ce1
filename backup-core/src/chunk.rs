//! Chunking and chunk ids.
//!
//! SQLite databases are chunked one page per chunk: a day of random row
//! changes touches a few percent of pages but every MiB-sized region, so only
//! page granularity deduplicates. Pages are already aligned, so no
//! content-defined boundaries are needed. Plain files are chunked with FastCDC
//! (16/64/256 KiB), so an insertion shifts boundaries only locally.
//!
//! A chunk's id is the BLAKE3 hash of its plaintext. Ids appear only inside
//! encrypted metadata, never in object names.

use std::fmt;

/// Content-defined chunking bounds for plain files.
pub const CDC_MIN: usize = 16 * 1024;
pub const CDC_AVG: usize = 64 * 1024;
pub const CDC_MAX: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    pub fn parse(hex_str: &str) -> Option<ChunkId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(ChunkId(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(&self.0[..8]))
    }
}
