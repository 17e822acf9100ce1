//! The codec every stored object goes through: zstd compression, then age
//! encryption, streaming in both directions so memory does not depend on the
//! object's size. Decoding is exactly `age -d | zstd -d`, which is what lets a
//! user restore with the stock tools (docs/format.md).

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
}
