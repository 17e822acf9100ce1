//! The signature line of format 2 (docs/format.md, "Format 2", 1.1): a
//! signed object's plaintext is `BODY` then one last line
//! `offsite-signature 2 <signer public key> <128 hex>\n`, an Ed25519
//! signature over
//! `"offsite-signature 2\n" || keyset id || "\n" || object key || "\n" || BLAKE3(BODY)`.
//!
//! [`Signer::seal`] appends the line; [`Verifier::open`] checks it against
//! the signers it was given and returns the body. Binding the object key
//! and the key set stops a signed object being replayed under another name
//! or in another repository.
//!
//! This module never decides who may sign (the caller builds the
//! [`Verifier`] from what it trusts), never touches storage or encryption,
//! and never hands out a body whose signature it did not verify.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey};

use crate::keys::v2::{KeysetId, OwnerKey, SignerPublic, WriterKey};

/// The start of the signature line, and of the signed message.
const LINE_PREFIX: &str = "offsite-signature ";
const VERSION: &str = "2";

/// Why a signed object was refused. Each names the object; none holds a
/// secret (signer keys are public).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{key} is not signed: its last line is not an offsite-signature line")]
    NoSignatureLine { key: String },
    #[error("{key}: malformed signature line: {reason}")]
    Malformed { key: String, reason: String },
    #[error("{key} is signed by {signer}, which is not a signer of this key set")]
    UnknownSigner { key: String, signer: String },
    #[error(
        "{key}: the signature by {signer} does not match: the object was changed, or was \
         signed under another name or for another key set"
    )]
    BadSignature { key: String, signer: String },
}

/// Signs objects of one key set, as the owner or as a writer.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
    public: SignerPublic,
    keyset: KeysetId,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({} for key set {})", self.public, self.keyset)
    }
}

impl Signer {
    pub fn owner(key: &OwnerKey, keyset: KeysetId) -> Signer {
        Signer {
            key: key.signing_key().clone(),
            public: SignerPublic::Owner(key.public()),
            keyset,
        }
    }

    pub fn writer(key: &WriterKey, keyset: KeysetId) -> Signer {
        Signer {
            key: key.signing_key().clone(),
            public: SignerPublic::Writer(key.public()),
            keyset,
        }
    }

    pub fn public(&self) -> &SignerPublic {
        &self.public
    }

    /// `body` with the signature line for object `key` appended. The body
    /// must end with `\n` (every line of it complete), else nothing is signed.
    pub fn seal(&self, key: &str, mut body: Vec<u8>) -> Result<Vec<u8>, SignatureError> {
        if body.last() != Some(&b'\n') {
            return Err(malformed(
                key,
                "the body to sign does not end with a newline",
            ));
        }
        let signature = self.key.sign(&message(&self.keyset, key, &body));
        let line = format!(
            "{LINE_PREFIX}{VERSION} {} {}\n",
            self.public,
            hex::encode(signature.to_bytes())
        );
        body.extend_from_slice(line.as_bytes());
        Ok(body)
    }
}

/// Checks signature lines: of one key set, by the signers it was given.
#[derive(Debug, Clone)]
pub struct Verifier {
    keyset: KeysetId,
    signers: Vec<SignerPublic>,
}

impl Verifier {
    pub fn new(keyset: KeysetId, signers: impl IntoIterator<Item = SignerPublic>) -> Verifier {
        Verifier {
            keyset,
            signers: signers.into_iter().collect(),
        }
    }

    /// The body of the signed object `plain` stored under `key`, and who
    /// signed it; an error unless the last line is a well-formed signature
    /// line by one of this verifier's signers over exactly this body, key
    /// and key set.
    pub fn open<'a>(
        &'a self,
        key: &str,
        plain: &'a [u8],
    ) -> Result<(&'a [u8], &'a SignerPublic), SignatureError> {
        let (body, line) = split(key, plain)?;
        let (signer, signature) = parse_line(key, line)?;
        let Some(known) = self.signers.iter().find(|s| **s == signer) else {
            return Err(SignatureError::UnknownSigner {
                key: key.to_string(),
                signer: signer.to_string(),
            });
        };
        known
            .verifying_key()
            .verify_strict(&message(&self.keyset, key, body), &signature)
            .map_err(|_| SignatureError::BadSignature {
                key: key.to_string(),
                signer: signer.to_string(),
            })?;
        Ok((body, known))
    }
}

/// The signed message: fixed-length fields around the key, so it reads one
/// way only, and the body by its BLAKE3 hash.
fn message(keyset: &KeysetId, key: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LINE_PREFIX.len() + 2 + 33 + key.len() + 1 + 32);
    m.extend_from_slice(LINE_PREFIX.as_bytes());
    m.extend_from_slice(VERSION.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(keyset.as_str().as_bytes());
    m.push(b'\n');
    m.extend_from_slice(key.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

fn malformed(key: &str, reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `plain` as (body, signature line without its `\n`).
fn split<'a>(key: &str, plain: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), SignatureError> {
    let complete = plain.strip_suffix(b"\n");
    let content = complete.unwrap_or(plain);
    let start = content
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let (body, line) = content.split_at(start);
    if !line.starts_with(LINE_PREFIX.as_bytes()) {
        let earlier = format!("\n{LINE_PREFIX}");
        let signed_before = plain
            .windows(earlier.len())
            .any(|w| w == earlier.as_bytes());
        return Err(if signed_before {
            malformed(key, "bytes follow the signature line")
        } else {
            SignatureError::NoSignatureLine {
                key: key.to_string(),
            }
        });
    }
    if complete.is_none() {
        return Err(malformed(
            key,
            "the signature line does not end with a newline",
        ));
    }
    if body.is_empty() {
        return Err(malformed(key, "nothing precedes the signature line"));
    }
    Ok((body, line))
}

/// The signer and signature of a line `offsite-signature 2 <signer> <hex>`.
fn parse_line(key: &str, line: &[u8]) -> Result<(SignerPublic, Signature), SignatureError> {
    let line = std::str::from_utf8(line).map_err(|_| malformed(key, "it is not UTF-8"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let [_, version, signer, signature] = fields.as_slice() else {
        return Err(malformed(
            key,
            format!("{} fields separated by single spaces, not 4", fields.len()),
        ));
    };
    if *version != VERSION {
        return Err(malformed(
            key,
            format!("signature version {version:?}; this offsite reads version {VERSION}"),
        ));
    }
    let parsed: SignerPublic = signer.parse().map_err(|e| malformed(key, format!("{e}")))?;
    // One signed object, one byte string: bech32 would accept upper case too.
    if parsed.to_string() != *signer {
        return Err(malformed(
            key,
            "the signer key is not exactly as offsite writes it",
        ));
    }
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if signature.len() != 128 || !lower_hex(signature) {
        return Err(malformed(
            key,
            "the signature is not 128 lowercase hex digits",
        ));
    }
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature, &mut bytes).expect("checked: 128 hex digits");
    Ok((parsed, Signature::from_bytes(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYSET: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_KEYSET: &str = "fedcba9876543210fedcba9876543210";
    const KEY: &str = "snapshots/20261201T100000Z-0badc0de";
    const BODY: &[u8] = b"{\"format\":\"offsite-snapshot\",\"version\":2}\n";

    fn keyset(s: &str) -> KeysetId {
        s.parse().unwrap()
    }

    struct Fixture {
        writer: Signer,
        owner: Signer,
        verifier: Verifier,
    }

    fn fixture() -> Fixture {
        let (id_text, _) = crate::keys::generate_identity();
        let line = id_text.lines().last().unwrap();
        let owner = OwnerKey::from_identity(&line.parse().unwrap());
        let writer = Signer::writer(&WriterKey::generate(), keyset(KEYSET));
        let owner = Signer::owner(&owner, keyset(KEYSET));
        let verifier = Verifier::new(
            keyset(KEYSET),
            [writer.public().clone(), owner.public().clone()],
        );
        Fixture {
            writer,
            owner,
            verifier,
        }
    }

    /// The sealed object's signature line, as text.
    fn line_of(sealed: &[u8]) -> String {
        String::from_utf8(sealed[BODY.len()..].to_vec()).unwrap()
    }

    fn with_line(line: &str) -> Vec<u8> {
        [BODY, line.as_bytes()].concat()
    }

    #[test]
    fn a_signed_object_opens_only_unchanged_under_its_key_and_keyset() {
        let f = fixture();
        let sealed = f.writer.seal(KEY, BODY.to_vec()).unwrap();
        let (body, signer) = f.verifier.open(KEY, &sealed).unwrap();
        assert_eq!((body, signer), (BODY, f.writer.public()));
        let by_owner = f.owner.seal(KEY, BODY.to_vec()).unwrap();
        assert_eq!(f.verifier.open(KEY, &by_owner).unwrap().1, f.owner.public());
        refused_when_changed(&f, &sealed);
        refused_when_not_one_well_formed_last_line(&f, &sealed);
        let e = f.writer.seal(KEY, b"no newline".to_vec()).unwrap_err();
        assert!(e.to_string().contains("does not end with a newline"), "{e}");
    }

    /// Body, object key, key set, signer or signature changed.
    fn refused_when_changed(f: &Fixture, sealed: &[u8]) {
        let bad = |v: &Verifier, key: &str, plain: &[u8]| {
            let e = refused(v, key, plain);
            assert!(matches!(e, SignatureError::BadSignature { .. }), "{e:?}");
        };
        // The body changed, the object moved, another key set.
        let mut changed = sealed.to_vec();
        changed[3] ^= 1;
        bad(&f.verifier, KEY, &changed);
        bad(&f.verifier, "snapshots/20261201T100000Z-00000000", sealed);
        let other = Verifier::new(keyset(OTHER_KEYSET), f.verifier.signers.clone());
        bad(&other, KEY, sealed);
        // Another known signer named in the line; the signature changed.
        let line = line_of(sealed);
        let swapped = line.replace(
            &f.writer.public().to_string(),
            &f.owner.public().to_string(),
        );
        bad(&f.verifier, KEY, &with_line(&swapped));
        let sig_at = line.rfind(' ').unwrap() + 1;
        let mut flipped = line.clone().into_bytes();
        flipped[sig_at] = if flipped[sig_at] == b'0' { b'1' } else { b'0' };
        bad(&f.verifier, KEY, &[BODY, &flipped].concat());
        // The same signature with S + L (malleated): verify_strict refuses it.
        bad(&f.verifier, KEY, &with_line(&malleated(&line)));

        // A signer this verifier was not given.
        let only_owner = Verifier::new(keyset(KEYSET), [f.owner.public().clone()]);
        let e = refused(&only_owner, KEY, sealed);
        assert!(matches!(e, SignatureError::UnknownSigner { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&f.writer.public().to_string()),
            "{e}"
        );
    }

    /// No signature line, or one not of the exact shape, or not last.
    fn refused_when_not_one_well_formed_last_line(f: &Fixture, sealed: &[u8]) {
        for unsigned in [BODY, b""] {
            let e = refused(&f.verifier, KEY, unsigned);
            assert!(matches!(e, SignatureError::NoSignatureLine { .. }), "{e:?}");
        }

        let malformed = |plain: &[u8], reason: &str| {
            let e = refused(&f.verifier, KEY, plain);
            assert!(matches!(e, SignatureError::Malformed { .. }), "{e:?}");
            assert!(e.to_string().contains(reason), "{reason}: {e}");
            assert!(e.to_string().starts_with(KEY), "{e}");
        };
        let line = line_of(sealed);
        let fields: Vec<&str> = line.trim_end().split(' ').collect();
        malformed(&sealed[..sealed.len() - 1], "does not end with a newline");
        malformed(&[sealed, b"x"].concat(), "bytes follow");
        malformed(&[sealed, b"x\n"].concat(), "bytes follow");
        malformed(&[sealed, b"\n"].concat(), "bytes follow");
        malformed(line.as_bytes(), "nothing precedes");
        malformed(&with_line(&line.replacen(' ', "  ", 1)), "not 4");
        malformed(
            &with_line(&format!("{} {} {}\n", fields[0], fields[1], fields[3])),
            "not 4",
        );
        malformed(&with_line(&line.replacen(" 2 ", " 3 ", 1)), "version \"3\"");
        let upper_signature = fields[3].to_uppercase();
        malformed(
            &with_line(&line.replacen(fields[3], &upper_signature, 1)),
            "not 128 lowercase hex",
        );
        malformed(
            &with_line(&line.replace('\n', "\r\n")),
            "not 128 lowercase hex",
        );
        malformed(
            &with_line(&line.replacen("offsite-writer1", "offsite-writer1q", 1)),
            "is not a writer key",
        );
        malformed(
            &with_line(&line.replacen(fields[3], &fields[3][2..], 1)),
            "not 128",
        );
        let upper_signer = fields[2].to_uppercase();
        malformed(
            &with_line(&line.replacen(fields[2], &upper_signer, 1)),
            "exactly as offsite writes it",
        );
    }

    fn refused(v: &Verifier, key: &str, plain: &[u8]) -> SignatureError {
        v.open(key, plain).map(|_| ()).unwrap_err()
    }

    /// `line` with its signature's S replaced by S + L (the group order):
    /// the same point equation holds, so only a strict check refuses it.
    fn malleated(line: &str) -> String {
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let (head, sig) = line.trim_end().rsplit_once(' ').unwrap();
        let mut bytes = hex::decode(sig).unwrap();
        let mut carry = 0u16;
        for (b, l) in bytes[32..].iter_mut().zip(L) {
            let sum = *b as u16 + l as u16 + carry;
            *b = sum as u8;
            carry = sum >> 8;
        }
        format!("{head} {}\n", hex::encode(bytes))
    }

    /// The stock-tools procedure verifies with `openssl pkeyutl -verify
    /// -rawin` over the message built from `b3sum --raw` of the body: the
    /// message is built here from the format's text, not with [`message`].
    #[test]
    fn a_signature_verifies_with_openssl() {
        let f = fixture();
        let sealed = f.writer.seal(KEY, BODY.to_vec()).unwrap();
        let line = line_of(&sealed);
        let sig = hex::decode(line.trim_end().rsplit_once(' ').unwrap().1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = f.writer.public().verifying_key().to_bytes();
        // SubjectPublicKeyInfo of an Ed25519 key: a fixed 12-byte header, the key.
        let der = [
            &hex::decode("302a300506032b6570032100").unwrap()[..],
            &public,
        ]
        .concat();
        std::fs::write(dir.path().join("public.der"), der).unwrap();
        std::fs::write(dir.path().join("sig"), sig).unwrap();
        let msg = |key: &str| {
            let mut m = format!("offsite-signature 2\n{KEYSET}\n{key}\n").into_bytes();
            m.extend_from_slice(blake3::hash(BODY).as_bytes());
            m
        };
        let verify = |message: Vec<u8>| {
            std::fs::write(dir.path().join("msg"), message).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER"])
                .args([
                    "-inkey",
                    "public.der",
                    "-rawin",
                    "-in",
                    "msg",
                    "-sigfile",
                    "sig",
                ])
                .current_dir(dir.path())
                .output()
                .expect(
                    "openssl is needed: apt-get install openssl (scripts/install-test-deps.sh)",
                );
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        };
        let (ok, out) = verify(msg(KEY));
        assert!(
            ok && out.contains("Signature Verified Successfully"),
            "{out}"
        );
        let (ok, out) = verify(msg("snapshots/other"));
        assert!(!ok, "{out}");
    }
}
