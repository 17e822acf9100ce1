//! The codec every stored object goes through: zstd compression, then age
//! encryption, streaming in both directions so memory does not depend on the
//! object's size, or in one piece for buffers of bounded size (packs:
//! [`Encoder`], [`Decoder`]). Decoding is exactly `age -d | zstd -d`, which is
//! what lets a user restore with the stock tools (docs/format.md).

use std::io::{self, BufReader, Read, Write};

use crate::error::{Error, Result};

/// A writer that compresses then encrypts into `W`. Call [`EncodeWriter::finish`].
pub struct EncodeWriter<W: Write> {
    inner: zstd::stream::write::Encoder<'static, age::stream::StreamWriter<W>>,
}

impl<W: Write> EncodeWriter<W> {
    pub fn new(output: W, recipients: &[&dyn age::Recipient], level: i32) -> io::Result<Self> {
        let encryptor = age::Encryptor::with_recipients(recipients.iter().copied())
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let age_writer = encryptor.wrap_output(output)?;
        let inner = zstd::stream::write::Encoder::new(age_writer, level)?;
        Ok(EncodeWriter { inner })
    }

    /// Flushes both layers and returns the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        self.inner.finish()?.finish()
    }
}

impl<W: Write> Write for EncodeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses and encrypts a buffer.
///
/// One-shot compression of the whole buffer is markedly cheaper than feeding
/// the streaming encoder (no window copies), and the output is the same
/// kind of zstd frame, so `zstd -d` reads both.
pub fn encode(data: &[u8], recipients: &[&dyn age::Recipient], level: i32) -> io::Result<Vec<u8>> {
    Encoder::new(level)?.encode(data, recipients)
}

/// Encodes one object after another with one compression context and
/// buffer. A fresh zstd context per 4 MiB pack meant several MiB allocated,
/// faulted in and freed for every pack.
pub struct Encoder {
    zstd: zstd::bulk::Compressor<'static>,
    compressed: Vec<u8>,
}

impl Encoder {
    pub fn new(level: i32) -> io::Result<Encoder> {
        Ok(Encoder {
            zstd: zstd::bulk::Compressor::new(level)?,
            compressed: Vec::new(),
        })
    }

    pub fn encode(
        &mut self,
        data: &[u8],
        recipients: &[&dyn age::Recipient],
    ) -> io::Result<Vec<u8>> {
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(data.len()));
        self.zstd.compress_to_buffer(data, &mut self.compressed)?;
        let encryptor = age::Encryptor::with_recipients(recipients.iter().copied())
            .map_err(|e| io::Error::other(format!("age: {e}")))?;
        // age adds a header and 16 bytes per 64 KiB chunk.
        let len = self.compressed.len();
        let mut out = Vec::with_capacity(len + len / 4096 + 1024);
        let mut w = encryptor.wrap_output(&mut out)?;
        w.write_all(&self.compressed)?;
        w.finish()?;
        Ok(out)
    }
}

/// Decodes one object after another into buffers it keeps, for the packs of
/// a restore: the whole object is decrypted in one piece and decompressed
/// with one reused zstd context, straight into the plaintext buffer. The
/// streaming [`decode_reader`] copies every byte through a `BufReader`, the
/// age chunk buffer and zstd's window, and allocates a context per object.
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
    compressed: Vec<u8>,
    plain: Vec<u8>,
}

/// Why [`Decoder::decode`] gave up on an object.
#[derive(Debug)]
pub enum BulkError {
    /// The object is not encrypted to any identity given.
    WrongIdentity(Error),
    /// It did not decode in one piece: damaged or truncated, or its frame
    /// does not record a size of at most the limit. The streaming decoder
    /// tells which, and how far it gets.
    Streaming,
}

impl Decoder {
    pub fn new() -> io::Result<Decoder> {
        Ok(Decoder {
            zstd: zstd::bulk::Decompressor::new()?,
            compressed: Vec::new(),
            plain: Vec::new(),
        })
    }

    /// The plaintext of `data`, if it decodes in one piece to at most `limit`
    /// bytes. Every layer's integrity is checked, as by [`decode`].
    pub fn decode<'a>(
        &mut self,
        data: &'a [u8],
        identities: impl Iterator<Item = &'a dyn age::Identity>,
        key: &str,
        limit: usize,
    ) -> std::result::Result<&[u8], BulkError> {
        let decrypt = |e| match decrypt_error(e, key) {
            e @ Error::WrongIdentity { .. } => BulkError::WrongIdentity(e),
            _ => BulkError::Streaming,
        };
        // A slice is already buffered: no BufReader copy in front of age.
        let mut plain = age::Decryptor::new_buffered(data)
            .map_err(decrypt)?
            .decrypt(identities)
            .map_err(decrypt)?;
        self.compressed.clear();
        plain
            .read_to_end(&mut self.compressed)
            .map_err(|_| BulkError::Streaming)?;
        let size = match zstd::zstd_safe::get_frame_content_size(&self.compressed) {
            Ok(Some(size)) if size <= limit as u64 => size as usize,
            _ => return Err(BulkError::Streaming),
        };
        self.plain.clear();
        self.plain.reserve(size);
        // Objects offsite writes are one frame. Further frames are decoded
        // too (as `zstd -d` does) where the buffer kept from earlier objects
        // has room for them; where not, this fails and the stream does it.
        self.zstd
            .decompress_to_buffer(&self.compressed[..], &mut self.plain)
            .map_err(|_| BulkError::Streaming)?;
        Ok(&self.plain)
    }
}

/// A reader over the plaintext of an encoded object. `key` names the object in errors.
pub fn decode_reader<'a, R: Read + 'a>(
    input: R,
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    key: &str,
) -> Result<impl Read + 'a> {
    let decryptor =
        age::Decryptor::new(BufReader::new(input)).map_err(|e| decrypt_error(e, key))?;
    let plain = decryptor
        .decrypt(identities)
        .map_err(|e| decrypt_error(e, key))?;
    zstd::stream::read::Decoder::new(plain).map_err(|e| Error::Corrupt {
        key: key.to_string(),
        message: format!("zstd: {e}"),
    })
}

/// As [`decode_reader`], refusing a zstd frame that asks for a window of
/// more than 2^`window_log_max` bytes before the window is allocated: for
/// objects of known writers' levels read from hostile input (format 2's
/// signed metadata), where a few bytes could otherwise make the decoder
/// reserve up to zstd's default limit of 128 MiB.
pub fn decode_reader_bounded<'a, R: Read + 'a>(
    input: R,
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    key: &str,
    window_log_max: u32,
) -> Result<impl Read + 'a> {
    let decryptor =
        age::Decryptor::new(BufReader::new(input)).map_err(|e| decrypt_error(e, key))?;
    let plain = decryptor
        .decrypt(identities)
        .map_err(|e| decrypt_error(e, key))?;
    let zstd_error = |e: io::Error| Error::Corrupt {
        key: key.to_string(),
        message: format!("zstd: {e}"),
    };
    let mut decoder = zstd::stream::read::Decoder::new(plain).map_err(zstd_error)?;
    decoder.window_log_max(window_log_max).map_err(zstd_error)?;
    Ok(decoder)
}

/// Decrypts and decompresses a whole buffer, checking every layer's integrity.
pub fn decode<'a>(
    data: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    key: &str,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() * 3);
    decode_reader(data, identities, key)?
        .read_to_end(&mut out)
        .map_err(|e| corrupt_read(e, key))?;
    Ok(out)
}

/// The object `data` (of `key`) encrypted again, to `recipient` alone:
/// its age layer decrypted with `identities` and the same bytes (the zstd
/// frame, so the plaintext and any signature in it are unchanged)
/// encrypted anew. Checked before it is returned: the new object decrypts
/// with `check` to exactly those bytes.
pub(crate) fn reencrypt<'a>(
    data: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    recipient: &dyn age::Recipient,
    check: &dyn age::Identity,
    key: &str,
) -> Result<Vec<u8>> {
    let inner = decrypt_all(data, identities, key)?;
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient))
        .map_err(|e| Error::io(format!("encrypting {key}"), io::Error::other(e.to_string())))?;
    let mut out = Vec::with_capacity(data.len());
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| Error::io(format!("encrypting {key}"), e))?;
    writer
        .write_all(&inner)
        .and_then(|()| writer.finish().map(drop))
        .map_err(|e| Error::io(format!("encrypting {key}"), e))?;
    if decrypt_all(&out, std::iter::once(check), key)? != inner {
        return Err(Error::Corrupt {
            key: key.to_string(),
            message: "encrypted again, it does not decrypt to the same bytes".into(),
        });
    }
    Ok(out)
}

/// Whether the age layer of `data` opens with `identity` (its header names
/// it); reads the whole object to check its integrity too.
pub(crate) fn opens_with(data: &[u8], identity: &dyn age::Identity, key: &str) -> bool {
    decrypt_all(data, std::iter::once(identity), key).is_ok()
}

/// age decryption alone (for passphrase-protected identity files).
pub(crate) fn decrypt_all<'a>(
    data: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    key: &str,
) -> Result<Vec<u8>> {
    let decryptor = age::Decryptor::new(data).map_err(|e| decrypt_error(e, key))?;
    let mut out = Vec::new();
    decryptor
        .decrypt(identities)
        .map_err(|e| decrypt_error(e, key))?
        .read_to_end(&mut out)
        .map_err(|e| corrupt_read(e, key))?;
    Ok(out)
}

pub(crate) fn corrupt_read(e: io::Error, key: &str) -> Error {
    Error::Corrupt {
        key: key.to_string(),
        message: format!(
            "decryption or decompression failed ({e}); the object is damaged or truncated"
        ),
    }
}

fn decrypt_error(e: age::DecryptError, key: &str) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::WrongIdentity {
            key: key.to_string(),
        },
        other => Error::Corrupt {
            key: key.to_string(),
            message: format!("age: {other}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::x25519;

    #[test]
    fn roundtrip_and_failures() {
        let id = x25519::Identity::generate();
        let other = x25519::Identity::generate();
        let rec = id.to_public();
        let data = b"some page data ".repeat(10_000);
        let enc = encode(&data, &[&rec], 3).unwrap();
        assert!(enc.len() < data.len() / 10, "compressed before encryption");
        let dec = decode(&enc, std::iter::once(&id as &dyn age::Identity), "k").unwrap();
        assert_eq!(dec, data);

        let wrong = decode(&enc, std::iter::once(&other as &dyn age::Identity), "k");
        assert!(matches!(wrong, Err(Error::WrongIdentity { .. })));

        let mut flipped = enc.clone();
        let n = flipped.len() - 20;
        flipped[n] ^= 1;
        let bad = decode(&flipped, std::iter::once(&id as &dyn age::Identity), "k");
        assert!(matches!(bad, Err(Error::Corrupt { .. })), "{bad:?}");

        let truncated = &enc[..enc.len() - 30];
        let bad = decode(truncated, std::iter::once(&id as &dyn age::Identity), "k");
        assert!(matches!(bad, Err(Error::Corrupt { .. })), "{bad:?}");
    }

    #[test]
    fn bulk_decoder_decodes_in_one_piece_or_says_to_stream() {
        let id = x25519::Identity::generate();
        let other = x25519::Identity::generate();
        let rec = id.to_public();
        let ids = || std::iter::once(&id as &dyn age::Identity);
        let mut decoder = Decoder::new().unwrap();
        let mut encoder = Encoder::new(3).unwrap();
        for data in [b"a pack ".repeat(50_000), b"the next, shorter".to_vec()] {
            let enc = encoder.encode(&data, &[&rec]).unwrap();
            let plain = decoder.decode(&enc, ids(), "k", 1 << 20).unwrap();
            assert_eq!(plain, &data[..], "buffers reused from object to object");
        }

        let enc = encode(&b"page ".repeat(1000), &[&rec], 3).unwrap();
        let wrong = decoder.decode(
            &enc,
            std::iter::once(&other as &dyn age::Identity),
            "k",
            1 << 20,
        );
        assert!(matches!(
            wrong,
            Err(BulkError::WrongIdentity(Error::WrongIdentity { .. }))
        ));
        let over = decoder.decode(&enc, ids(), "k", 4999);
        assert!(
            matches!(over, Err(BulkError::Streaming)),
            "larger than the limit"
        );
        let mut flipped = enc.clone();
        let n = flipped.len() - 20;
        flipped[n] ^= 1;
        let bad = decoder.decode(&flipped, ids(), "k", 1 << 20);
        assert!(matches!(bad, Err(BulkError::Streaming)), "damaged");
        let bad = decoder.decode(&enc[..enc.len() - 30], ids(), "k", 1 << 20);
        assert!(matches!(bad, Err(BulkError::Streaming)), "truncated");

        // Two frames: more than the first frame's size, which is all a
        // fresh decoder makes room for; one with room decodes both.
        let mut two = Vec::new();
        for part in [&b"one "[..], &b"two "[..]] {
            two.extend(zstd::bulk::compress(&part.repeat(100), 3).unwrap());
        }
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&rec as &dyn age::Recipient)).unwrap();
        let mut enc = Vec::new();
        let mut w = encryptor.wrap_output(&mut enc).unwrap();
        w.write_all(&two).unwrap();
        w.finish().unwrap();
        let mut fresh = Decoder::new().unwrap();
        let two_frames = fresh.decode(&enc, ids(), "k", 1 << 20);
        assert!(matches!(two_frames, Err(BulkError::Streaming)));
        let whole = decode(&enc, ids(), "k").unwrap();
        assert_eq!(whole.len(), 800);
        assert_eq!(decoder.decode(&enc, ids(), "k", 1 << 20).unwrap(), whole);
    }
}
