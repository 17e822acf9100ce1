//! The one way a signed format 2 metadata object is encoded and decoded
//! (docs/design/format-v2.md, 1 and 1.1): its body is sealed with the
//! signature line of [`crate::sign`], zstd-compressed at the metadata
//! level, then age-encrypted to one metadata recipient (M); reading is
//! `age -d | zstd -d` with the M identities held, bounded, then the
//! signature check. Pack trailers, index files and manifests of format 2
//! go through here.
//!
//! Never: hand out a body whose signature was not verified under the key it
//! was read from, decode more plaintext than the caller's limit (a hostile
//! object that decompresses without end is refused after `limit` bytes,
//! never read into memory whole), or let a frame reserve a zstd window
//! larger than [`WINDOW_LOG_MAX`] allows.

use std::io::Read;

use crate::codec;
use crate::error::Error;
use crate::keys::SignerPublic;
use crate::sign::{SignatureError, Signer, Verifier};

/// The largest zstd window (2^23 = 8 MiB) a signed metadata object may ask
/// for: offsite writes them at the metadata level, whose window is at most
/// 2^21, and `zstd -d` reads them all the same.
pub const WINDOW_LOG_MAX: u32 = 23;

/// Why a signed metadata object was not read or not written.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// Not encrypted to an identity held (`Error::WrongIdentity`), or
    /// damaged or truncated (`Error::Corrupt`), or could not be encoded.
    #[error(transparent)]
    Codec(#[from] Error),
    #[error(
        "{key} decodes to more than {limit} bytes, more than such an object can honestly \
         hold: refused unread"
    )]
    TooLarge { key: String, limit: usize },
    #[error(transparent)]
    Signature(#[from] SignatureError),
}

/// `body` (ending with `\n`) sealed for object `key` by `signer`, then
/// compressed and encrypted to `metadata` (the current M).
pub fn encode(
    key: &str,
    body: Vec<u8>,
    signer: &Signer,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>, SealedError> {
    let signed = signer.seal(key, body)?;
    codec::encode(&signed, &[metadata], crate::repo::SIGNED_METADATA_LEVEL)
        .map_err(|e| Error::io(format!("encoding {key}"), e).into())
}

/// The verified body of the encoded object `encoded` stored under `key`,
/// and its signer; at most `limit` bytes of plaintext are read.
pub fn decode<'a>(
    key: &str,
    encoded: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    verifier: &Verifier,
    limit: usize,
) -> Result<(Vec<u8>, SignerPublic), SealedError> {
    let reader = codec::decode_reader_bounded(encoded, identities, key, WINDOW_LOG_MAX)?;
    let mut plain = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| codec::corrupt_read(e, key))?;
    if plain.len() > limit {
        return Err(SealedError::TooLarge {
            key: key.to_string(),
            limit,
        });
    }
    let (body, signer) = verifier.open(key, &plain)?;
    let (body_len, signer) = (body.len(), signer.clone());
    plain.truncate(body_len);
    Ok((plain, signer))
}

/// The plaintext limit for a text object whose every line holds a 32-byte
/// random id as hex (pack trailers, index files): such text compresses to
/// at least about 32 of every 87 bytes, so 4 times the stored size, plus
/// room for the header and signature line, is more than any honest one
/// decodes to.
pub fn text_limit(encoded_len: usize) -> usize {
    encoded_len.saturating_mul(4).saturating_add(1024)
}

/// Keys for the tests of the format 2 objects: a writer of one key set, a
/// verifier that knows only it, and the D and M identities.
#[cfg(test)]
pub(super) mod test_keys {
    use age::x25519;

    use crate::keys::{KeysetId, WriterKey};
    use crate::sign::{Signer, Verifier};

    pub(crate) struct Keys {
        pub writer: Signer,
        pub verifier: Verifier,
        pub data: x25519::Identity,
        pub meta: x25519::Identity,
    }

    pub(crate) fn keyset() -> KeysetId {
        "0123456789abcdef0123456789abcdef".parse().unwrap()
    }

    pub(crate) fn keys() -> Keys {
        let writer = Signer::writer(&WriterKey::generate(), keyset());
        let verifier = Verifier::new(keyset(), [writer.public().clone()]);
        Keys {
            writer,
            verifier,
            data: x25519::Identity::generate(),
            meta: x25519::Identity::generate(),
        }
    }

    impl Keys {
        pub(crate) fn m(&self) -> impl Iterator<Item = &dyn age::Identity> {
            std::iter::once(&self.meta as &dyn age::Identity)
        }
        pub(crate) fn d(&self) -> impl Iterator<Item = &dyn age::Identity> {
            std::iter::once(&self.data as &dyn age::Identity)
        }
        /// A signer of the same key set this verifier does not know.
        pub(crate) fn stranger(&self) -> Signer {
            Signer::writer(&WriterKey::generate(), keyset())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::test_keys::keys;
    use super::*;

    const KEY: &str = "index/0123456789abcdef0123456789abcdef";

    /// `plain` compressed as a stream whose frame asks for a window of
    /// 2^`log` bytes, encrypted to `to`.
    fn with_window(plain: &[u8], log: u32, to: &dyn age::Recipient) -> Vec<u8> {
        let mut z = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        z.window_log(log).unwrap();
        z.write_all(plain).unwrap();
        let compressed = z.finish().unwrap();
        let mut out = Vec::new();
        let encryptor = age::Encryptor::with_recipients(std::iter::once(to)).unwrap();
        let mut w = encryptor.wrap_output(&mut out).unwrap();
        w.write_all(&compressed).unwrap();
        w.finish().unwrap();
        out
    }

    /// A few hundred bytes whose zstd frame asks for a 128 MiB window are
    /// refused as damaged before the window is reserved; the same signed
    /// body with an honest window opens.
    #[test]
    fn a_frame_asking_for_a_large_window_is_refused_before_allocating() {
        let k = keys();
        let signed = k.writer.seal(KEY, b"offsite-index 2\n".to_vec()).unwrap();
        let honest = with_window(&signed, 21, &k.meta.to_public());
        let (body, signer) = decode(KEY, &honest, k.m(), &k.verifier, 4096).unwrap();
        assert_eq!(
            (&body[..], &signer),
            (&b"offsite-index 2\n"[..], k.writer.public())
        );

        let hostile = with_window(&signed, 27, &k.meta.to_public());
        assert!(hostile.len() < 1024, "{}", hostile.len());
        // A valid frame: only the bound refuses it.
        assert_eq!(codec::decode(&hostile, k.m(), KEY).unwrap(), signed);
        let e = decode(KEY, &hostile, k.m(), &k.verifier, 4096).unwrap_err();
        assert!(
            matches!(&e, SealedError::Codec(Error::Corrupt { key, .. }) if key == KEY),
            "{e:?}"
        );
        let e = decode(KEY, &honest, k.m(), &k.verifier, signed.len() - 1).unwrap_err();
        assert!(matches!(e, SealedError::TooLarge { .. }), "{e:?}");
        assert_eq!(text_limit(1000), 5024);
    }
}
