//! Chunking and chunk ids.
//!
//! SQLite databases are chunked one page per chunk: a day of random row
//! changes touches a few percent of pages but every MiB-sized region, so only
//! page granularity deduplicates. Pages are already aligned, so no
//! content-defined boundaries are needed. Plain files are chunked with FastCDC
//! (16/64/256 KiB), so an insertion shifts boundaries only locally.
//!
//! A chunk's id is the BLAKE3 hash of its plaintext (format 1), or its
//! BLAKE3 keyed hash under the key set's chunk-id key K (format 2,
//! [`ChunkKey`]), so ids in metadata do not confirm a guessed page to
//! someone without K. Ids appear only inside encrypted metadata, never in
//! object names.

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

    /// The format 2 id: BLAKE3 keyed with the key set's chunk-id key.
    pub fn keyed(key: &ChunkKey, data: &[u8]) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&key.0, data).as_bytes())
    }

    pub fn parse(hex_str: &str) -> Option<ChunkId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).ok()?;
        Some(ChunkId(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex32(&self.0, &mut [0; 64]))
    }
}

/// 32 bytes as 64 lowercase hex digits in `buf`, without an allocation:
/// lists and index files write one per chunk (262,144 per GiB), and
/// `hex::encode`'s String per id was 4% of an incremental backup.
pub(crate) fn hex32<'a>(bytes: &[u8; 32], buf: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(bytes, buf).expect("64 bytes hold 32 as hex");
    std::str::from_utf8(buf).expect("hex is ASCII")
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(&self.0[..8]))
    }
}

/// How a chunk's id is computed: plain BLAKE3 (format 1) or keyed with a
/// key set's chunk-id key K (format 2). Backup and restore take this, so
/// the one hash a chunk gets is the one its format names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ChunkHasher {
    Plain,
    Keyed(ChunkKey),
}

impl ChunkHasher {
    pub fn id(&self, data: &[u8]) -> ChunkId {
        match self {
            ChunkHasher::Plain => ChunkId::of(data),
            ChunkHasher::Keyed(k) => ChunkId::keyed(k, data),
        }
    }
}

impl fmt::Debug for ChunkHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkHasher::Plain => f.write_str("ChunkHasher::Plain"),
            ChunkHasher::Keyed(_) => f.write_str("ChunkHasher::Keyed(..)"),
        }
    }
}

/// A key set's chunk-id key K (32 bytes, from a key bundle). A secret:
/// with it and the ids, a guessed page can be confirmed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkKey(pub [u8; 32]);

impl fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_ids_differ_from_plain_ones_and_by_key() {
        let page = vec![7u8; 4096];
        let k1 = ChunkKey([1; 32]);
        let k2 = ChunkKey([2; 32]);
        assert_ne!(ChunkId::keyed(&k1, &page), ChunkId::of(&page));
        assert_ne!(ChunkId::keyed(&k1, &page), ChunkId::keyed(&k2, &page));
        assert_eq!(ChunkHasher::Keyed(k1).id(&page), ChunkId::keyed(&k1, &page));
        assert_eq!(ChunkHasher::Plain.id(&page), ChunkId::of(&page));
        // The b3sum --keyed vector: BLAKE3 keyed_hash of the empty input.
        assert_eq!(
            ChunkId::keyed(&ChunkKey(*b"whats the Elvish word for friend"), b"").to_string(),
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
        );
    }
}
