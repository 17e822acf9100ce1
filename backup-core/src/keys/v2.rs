//! Format 2's key strings and derivations (docs/format.md, "Format 2", 1.2):
//! the owner's signing key derived from an age identity, writer keys and
//! their file, key set ids, the chunk-id key with its check, and holder ids.
//!
//! Everything here is a pure function of its input (a writer key file is
//! the one thing read, and only when asked), so the stock-tools procedure
//! can redo each derivation with `b3sum --derive-key`. This module never
//! decides whom to trust (the keyring does), never signs or verifies
//! ([`crate::sign`] does), and never puts a secret into an error message or
//! a `Debug` output.

use std::fmt;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};
use ed25519_dalek::{SigningKey, VerifyingKey};

use super::identity_from_bytes;
use crate::error::{Error, Result};

/// The derivation contexts of the table in docs/format.md, 1.2. Fixed by
/// the format: changing one changes every key derived with it.
pub const OWNER_SIGNING_CONTEXT: &str = "offsite 2026-12 owner signing key v2";
pub const WRITER_BOX_CONTEXT: &str = "offsite 2026-12 writer box key v2";
pub const CHUNK_ID_KEY_CONTEXT: &str = "offsite 2026-12 chunk id key v2";
pub const CHUNK_KEY_CHECK_CONTEXT: &str = "offsite 2026-12 chunk key check v2";
pub const HOLDER_ID_CONTEXT: &str = "offsite 2026-12 key holder id v2";

/// Bech32 prefixes (human-readable parts) of the key strings.
const OWNER_HRP: &str = "offsite-owner";
const WRITER_HRP: &str = "offsite-writer";
const WRITER_SECRET_HRP: &str = "offsite-writer-secret-";
/// Prefixes of secrets, lower case: a string that starts with one is never
/// echoed in an error, whatever it was given as.
const SECRET_PREFIXES: [&str; 2] = ["offsite-writer-secret-", "age-secret-key-"];

/// What a key string was supposed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Owner,
    Writer,
    /// An owner or a writer key: who signed an object.
    Signer,
    WriterSecret,
    Keyset,
}

impl KeyKind {
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Owner => "an owner key (offsite-owner1...)",
            KeyKind::Writer => "a writer key (offsite-writer1...)",
            KeyKind::Signer => "a signer key (offsite-owner1... or offsite-writer1...)",
            KeyKind::WriterSecret => "a writer secret key (OFFSITE-WRITER-SECRET-1...)",
            KeyKind::Keyset => "a key set id",
        }
    }
}

/// What is wrong with a key string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("it starts with {found:?}")]
    WrongPrefix { found: String },
    #[error("its bech32 encoding is damaged (a character mistyped, missing or added)")]
    NotBech32,
    #[error("it holds {found} bytes, not {expected}")]
    Length { expected: usize, found: usize },
    #[error("it is not written the way offsite writes it (copy it as printed)")]
    NotCanonical,
    #[error("its bytes are not a usable Ed25519 public key")]
    NotAPublicKey,
    #[error("it is not 32 lowercase hex digits")]
    NotHex,
}

/// A key string that does not parse. `shown` is the string itself for
/// public keys and ids, and only where it came from for secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not {}: {problem}", .kind.describe())]
pub struct KeyStringError {
    pub kind: KeyKind,
    pub shown: String,
    pub problem: Problem,
}

impl From<KeyStringError> for Error {
    fn from(e: KeyStringError) -> Error {
        Error::Key(e.to_string())
    }
}

/// How a rejected public string is named: quoted, unless it is a secret
/// pasted in the wrong place.
fn shown(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if SECRET_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        "a secret key (not shown)".into()
    } else {
        format!("{text:?}")
    }
}

fn encode(hrp: &str, data: &[u8]) -> String {
    let hrp = Hrp::parse(hrp).expect("the format's prefixes are valid");
    bech32::encode::<Bech32>(hrp, data).expect("key strings are far below the bech32 limit")
}

/// The `len` bytes of a bech32 string with prefix `hrp`, in either case but
/// otherwise exactly as [`encode`] writes it.
fn decode(text: &str, hrp: &str, len: usize) -> Result<Vec<u8>, Problem> {
    let found = text.rsplit_once('1').map_or("", |(h, _)| h);
    if !found.eq_ignore_ascii_case(hrp) {
        return Err(Problem::WrongPrefix {
            found: found.to_string(),
        });
    }
    let checked = CheckedHrpstring::new::<Bech32>(text).map_err(|_| Problem::NotBech32)?;
    let bytes: Vec<u8> = checked.byte_iter().collect();
    if bytes.len() != len {
        return Err(Problem::Length {
            expected: len,
            found: bytes.len(),
        });
    }
    // Bech32 leaves a few padding bits free: two strings must not name one key.
    if !encode(hrp, &bytes).eq_ignore_ascii_case(text) {
        return Err(Problem::NotCanonical);
    }
    Ok(bytes)
}

fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, Problem> {
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| Problem::Length {
        expected: 32,
        found: bytes.len(),
    })?;
    match VerifyingKey::from_bytes(&bytes) {
        // A small-order key would verify signatures anyone can make.
        Ok(key) if !key.is_weak() => Ok(key),
        _ => Err(Problem::NotAPublicKey),
    }
}

/// The owner's public key, `offsite-owner1...`: what hosts without the
/// owner identity pin (`encryption.owner_key`) to check the keyring.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerPublic(VerifyingKey);

impl OwnerPublic {
    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl fmt::Display for OwnerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode(OWNER_HRP, self.0.as_bytes()))
    }
}

impl fmt::Debug for OwnerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerPublic({self})")
    }
}

impl FromStr for OwnerPublic {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<OwnerPublic, KeyStringError> {
        let s = s.trim();
        decode(s, OWNER_HRP, 32)
            .and_then(|b| verifying_key(&b))
            .map(OwnerPublic)
            .map_err(|problem| KeyStringError {
                kind: KeyKind::Owner,
                shown: shown(s),
                problem,
            })
    }
}

/// The owner's signing key, derived from the owner's age identity: whoever
/// holds the identity holds it, and nobody else can make it.
#[derive(Clone)]
pub struct OwnerKey {
    signing: SigningKey,
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerKey({})", self.public())
    }
}

impl OwnerKey {
    /// The seed is `derive_key(OWNER_SIGNING_CONTEXT, identity text)`, the
    /// text being `AGE-SECRET-KEY-1...` as age prints it.
    pub fn from_identity(identity: &x25519::Identity) -> OwnerKey {
        let text = identity.to_string();
        let seed = blake3::derive_key(OWNER_SIGNING_CONTEXT, text.expose_secret().as_bytes());
        OwnerKey {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    pub fn public(&self) -> OwnerPublic {
        OwnerPublic(self.signing.verifying_key())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// A writer's public key, `offsite-writer1...`: 64 bytes, the Ed25519
/// verifying key, then the X25519 key its bundles are wrapped to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WriterPublic {
    verifying: VerifyingKey,
    box_key: [u8; 32],
}

impl WriterPublic {
    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The age recipient this writer's key bundles are encrypted to.
    pub fn box_recipient(&self) -> x25519::Recipient {
        let text = encode("age", &self.box_key);
        x25519::Recipient::from_str(&text).expect("any 32 bytes are an X25519 public key")
    }
}

impl fmt::Display for WriterPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = self.verifying.to_bytes().to_vec();
        bytes.extend_from_slice(&self.box_key);
        f.write_str(&encode(WRITER_HRP, &bytes))
    }
}

impl fmt::Debug for WriterPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriterPublic({self})")
    }
}

impl FromStr for WriterPublic {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<WriterPublic, KeyStringError> {
        let s = s.trim();
        let parse = || {
            let bytes = decode(s, WRITER_HRP, 64)?;
            Ok(WriterPublic {
                verifying: verifying_key(&bytes[..32])?,
                box_key: bytes[32..].try_into().expect("64 bytes"),
            })
        };
        parse().map_err(|problem| KeyStringError {
            kind: KeyKind::Writer,
            shown: shown(s),
            problem,
        })
    }
}

/// Who signed an object: the owner or a writer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SignerPublic {
    Owner(OwnerPublic),
    Writer(WriterPublic),
}

impl SignerPublic {
    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        match self {
            SignerPublic::Owner(k) => k.verifying_key(),
            SignerPublic::Writer(k) => k.verifying_key(),
        }
    }
}

impl fmt::Display for SignerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerPublic::Owner(k) => k.fmt(f),
            SignerPublic::Writer(k) => k.fmt(f),
        }
    }
}

impl FromStr for SignerPublic {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<SignerPublic, KeyStringError> {
        let hrp = s.trim().rsplit_once('1').map_or("", |(h, _)| h);
        if hrp.eq_ignore_ascii_case(OWNER_HRP) {
            s.parse().map(SignerPublic::Owner)
        } else if hrp.eq_ignore_ascii_case(WRITER_HRP) {
            s.parse().map(SignerPublic::Writer)
        } else {
            Err(KeyStringError {
                kind: KeyKind::Signer,
                shown: shown(s.trim()),
                problem: Problem::WrongPrefix {
                    found: hrp.to_string(),
                },
            })
        }
    }
}

/// A backup host's key: signs what the host commits, and opens the key
/// bundles wrapped to it. Made from a random 32-byte seed, kept in a
/// writer key file.
#[derive(Clone)]
pub struct WriterKey {
    signing: SigningKey,
    box_identity: x25519::Identity,
}

impl fmt::Debug for WriterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriterKey({})", self.public())
    }
}

impl WriterKey {
    pub fn generate() -> WriterKey {
        Self::from_seed(&rand::random())
    }

    fn from_seed(seed: &[u8; 32]) -> WriterKey {
        let box_secret = blake3::derive_key(WRITER_BOX_CONTEXT, seed);
        WriterKey {
            signing: SigningKey::from_bytes(seed),
            box_identity: identity_from_bytes(&box_secret),
        }
    }

    pub fn public(&self) -> WriterPublic {
        let box_text = self.box_identity.to_public().to_string();
        let box_key = decode(&box_text, "age", 32).expect("age writes valid recipients");
        WriterPublic {
            verifying: self.signing.verifying_key(),
            box_key: box_key.try_into().expect("32 bytes"),
        }
    }

    /// The X25519 identity that opens this writer's own key bundles.
    pub fn box_identity(&self) -> &x25519::Identity {
        &self.box_identity
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The writer key file: two comment lines (when, and the public key),
    /// then the secret, `OFFSITE-WRITER-SECRET-1...`.
    pub fn file_text(&self) -> String {
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let secret = encode(WRITER_SECRET_HRP, self.signing.as_bytes()).to_uppercase();
        format!(
            "# offsite writer key, created {created}\n# public key: {}\n{secret}\n",
            self.public()
        )
    }

    /// Parses a writer key file's text: `#` comments, blank lines and one
    /// secret line. `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<WriterKey> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(n, l)| (n + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((n, line)) = lines.next() else {
            return Err(Error::Key(format!(
                "{source}: contains no writer key (an OFFSITE-WRITER-SECRET-1... line)"
            )));
        };
        if let Some((m, _)) = lines.next() {
            return Err(Error::Key(format!(
                "{source}: line {m}: a writer key file holds one key, and line {n} is one"
            )));
        }
        let seed = decode(line, WRITER_SECRET_HRP, 32).map_err(|problem| KeyStringError {
            kind: KeyKind::WriterSecret,
            shown: format!("{source}: line {n}"),
            problem,
        })?;
        Ok(Self::from_seed(&seed.try_into().expect("32 bytes")))
    }

    /// Reads a writer key file (see [`WriterKey::parse`]).
    pub fn from_file(path: &std::path::Path) -> Result<WriterKey> {
        let source = path.display().to_string();
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("writer key file {source}"), e))?;
        let text = String::from_utf8(data)
            .map_err(|_| Error::Key(format!("{source}: not a writer key file (not text)")))?;
        Self::parse(&text, &source)
    }
}

/// A key set's id: 32 lowercase hex digits, in `config` and in every
/// signature, shared by the targets initialised together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeysetId(String);

impl KeysetId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeysetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeysetId {
    type Err = KeyStringError;
    fn from_str(s: &str) -> Result<KeysetId, KeyStringError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(KeysetId(s.to_string()));
        }
        Err(KeyStringError {
            kind: KeyKind::Keyset,
            shown: shown(s),
            problem: Problem::NotHex,
        })
    }
}

/// The chunk-id key K of a key set: `derive_key(CHUNK_ID_KEY_CONTEXT, text
/// of generation 1's data identity)`. Chunk ids are `keyed_hash(K, chunk)`.
pub fn chunk_id_key(first_data_identity: &x25519::Identity) -> [u8; 32] {
    let text = first_data_identity.to_string();
    blake3::derive_key(CHUNK_ID_KEY_CONTEXT, text.expose_secret().as_bytes())
}

/// The check of K that the keyring records, so that a holder can tell it
/// derived the right K: the first 16 bytes of `derive_key(CHUNK_KEY_CHECK_CONTEXT, K)`, hex.
pub fn chunk_key_check(chunk_id_key: &[u8; 32]) -> String {
    first_16_hex(CHUNK_KEY_CHECK_CONTEXT, chunk_id_key)
}

/// A holder's id, in the names of its key bundles: the first 16 bytes of
/// `derive_key(HOLDER_ID_CONTEXT, public)`, hex, where `public` is the
/// holder's public string as offsite prints it (`age1...`, `offsite-writer1...`).
pub fn holder_id(public: &str) -> String {
    first_16_hex(HOLDER_ID_CONTEXT, public.as_bytes())
}

fn first_16_hex(context: &str, material: &[u8]) -> String {
    hex::encode(&blake3::derive_key(context, material)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixed vectors, computed with stock tools only (b3sum 1.2.0, OpenSSL
    // 3.0, and a 20-line bech32 encoder after BIP-173), never with this
    // code:
    //   ID: bech32("age-secret-key-", bytes 0x01..=0x20), upper case
    //   RECIPIENT, BOX_RECIPIENT: bech32("age", X25519 public key of the
    //     secret, from `openssl pkey -pubout` of its PKCS#8 DER)
    //   OWNER: bech32("offsite-owner", Ed25519 public key (openssl) of
    //     `printf %s "$ID" | b3sum --derive-key "offsite 2026-12 owner signing key v2"`)
    //   WRITER_SECRET: bech32("offsite-writer-secret-", seed 0x21..=0x40), upper case
    //   WRITER: bech32("offsite-writer", Ed25519 public key of the seed ||
    //     X25519 public key of the box secret), the box secret being
    //     `<seed bytes> | b3sum --derive-key "offsite 2026-12 writer box key v2"`
    //   K: `printf %s "$ID" | b3sum --derive-key "offsite 2026-12 chunk id key v2"`
    //   CHECK: `<K bytes> | b3sum --derive-key "offsite 2026-12 chunk key check v2" -l 16`
    //   HOLDER_*: `printf %s "$PUBLIC" | b3sum --derive-key "offsite 2026-12 key holder id v2" -l 16`
    const ID: &str = "AGE-SECRET-KEY-1QYPQXPQ9QCRSSZG2PVXQ6RS0ZQG3YYC5Z5TPWXQERGD3C8G7RUSQGPQYEE";
    const RECIPIENT: &str = "age1q73he0q5yzfu3d64msd3p6rvksnrwjk3d2598mgtmlqt9wrdr37q2vrn72";
    const OWNER: &str = "offsite-owner1syqkhe6k2tk6lytl87cfydu6p7xtrphk3873x8ufypgqv8e5a70sepddcn";
    const WRITER_SECRET: &str =
        "OFFSITE-WRITER-SECRET-1YY3ZXFP9YCNJS2F29VKZ6T30XQCNYVE5X5MRWWPE8GANC0F78AQQRHLAF7";
    const WRITER: &str = "offsite-writer1ulck9ggta32e4l4pjhjde6ztd9tg6hfvkztradzxcp59u2ch7tc823m8h5gcrue0txha2e5480cgmu2vy2yl70evyuzrzglh6w8a7gss987l9";
    const BOX_RECIPIENT: &str = "age1w4rk00g3s8ej7kd064nf2wls3hc5cg5fluljcfcyxy3l05u0mu3qdkrn8u";
    const K: &str = "14a18818b332c495d645209bb4325e611872acb53ed9a014a0ded04750e07700";
    const CHECK: &str = "145e87731ab37f43836d035c7872ccdb";
    const HOLDER_RECIPIENT: &str = "a2fe84c21a6b24482c52548c414e2c19";
    const HOLDER_WRITER: &str = "81d175e3850501645caf8d39fe7287e2";

    #[test]
    fn derivations_match_fixed_vectors() {
        let id = x25519::Identity::from_str(ID).unwrap();
        assert_eq!(id.to_public().to_string(), RECIPIENT);
        assert_eq!(OwnerKey::from_identity(&id).public().to_string(), OWNER);

        let writer = WriterKey::parse(&format!("# comment\n\n{WRITER_SECRET}\n"), "w").unwrap();
        assert_eq!(writer.public().to_string(), WRITER);
        assert_eq!(writer.box_identity().to_public().to_string(), BOX_RECIPIENT);
        assert_eq!(writer.public().box_recipient().to_string(), BOX_RECIPIENT);
        assert!(writer.file_text().contains(WRITER_SECRET));

        let k = chunk_id_key(&id);
        assert_eq!(hex::encode(k), K);
        assert_eq!(chunk_key_check(&k), CHECK);
        assert_eq!(holder_id(RECIPIENT), HOLDER_RECIPIENT);
        assert_eq!(holder_id(WRITER), HOLDER_WRITER);
    }

    fn problem<T: std::fmt::Debug>(r: Result<T, KeyStringError>) -> (Problem, String) {
        let e = r.unwrap_err();
        (e.problem.clone(), e.to_string())
    }

    #[test]
    fn key_strings_roundtrip_and_bad_ones_are_named() {
        for s in [OWNER, &OWNER.to_uppercase(), &format!("  {OWNER}\n")] {
            assert_eq!(s.parse::<OwnerPublic>().unwrap().to_string(), OWNER);
        }
        assert_eq!(WRITER.parse::<WriterPublic>().unwrap().to_string(), WRITER);
        assert!(matches!(OWNER.parse(), Ok(SignerPublic::Owner(_))));
        assert!(matches!(WRITER.parse(), Ok(SignerPublic::Writer(_))));
        let keyset = "0123456789abcdef0123456789abcdef";
        assert_eq!(keyset.parse::<KeysetId>().unwrap().as_str(), keyset);

        let fresh = WriterKey::generate();
        let text = fresh.file_text();
        assert!(text.starts_with("# offsite writer key, created "), "{text}");
        assert!(text.contains(&format!("# public key: {}\n", fresh.public())));
        let again = WriterKey::parse(&text, "w").unwrap();
        assert_eq!(again.public(), fresh.public());
        assert_ne!(WriterKey::generate().public(), fresh.public());

        // Wrong kind: the message names the string and what was expected.
        let (p, msg) = problem(WRITER.parse::<OwnerPublic>());
        assert_eq!(
            p,
            Problem::WrongPrefix {
                found: "offsite-writer".into()
            }
        );
        assert!(
            msg.contains(WRITER) && msg.contains("an owner key (offsite-owner1...)"),
            "{msg}"
        );
        let (p, _) = problem(RECIPIENT.parse::<SignerPublic>());
        assert_eq!(
            p,
            Problem::WrongPrefix {
                found: "age".into()
            }
        );
        // One character mistyped.
        let typo = OWNER.replacen("syqk", "syqj", 1);
        assert_eq!(problem(typo.parse::<OwnerPublic>()).0, Problem::NotBech32);
        // Valid bech32 of 31 bytes; of the identity point (small order);
        // the right bytes with padding bits set.
        let short = "offsite-owner1qqqsyqcyq5rqwzqfpg9scrgwpugpzysnzs23v9ccrydpk8qarccu9h43";
        assert_eq!(
            problem(short.parse::<OwnerPublic>()).0,
            Problem::Length {
                expected: 32,
                found: 31
            }
        );
        let weak = "offsite-owner1qyqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqe02y8f";
        assert_eq!(
            problem(weak.parse::<OwnerPublic>()).0,
            Problem::NotAPublicKey
        );
        let padded = "offsite-owner1syqkhe6k2tk6lytl87cfydu6p7xtrphk3873x8ufypgqv8e5a703yhec9p";
        assert_eq!(
            problem(padded.parse::<OwnerPublic>()).0,
            Problem::NotCanonical
        );
        let (p, msg) = problem("0123456789ABCDEF0123456789ABCDEF".parse::<KeysetId>());
        assert_eq!(p, Problem::NotHex);
        assert!(msg.contains("0123456789ABCDEF"), "{msg}");

        // A secret pasted where a public key belongs is never echoed.
        for secret in [WRITER_SECRET, ID] {
            let msg = secret.parse::<SignerPublic>().unwrap_err().to_string();
            assert!(
                msg.contains("not shown") && !msg.contains(&secret[24..]),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_writer_key_files_are_named_without_the_secret() {
        let e = WriterKey::parse("# only a comment\n", "w.key").unwrap_err();
        assert!(
            e.to_string().contains("w.key: contains no writer key"),
            "{e}"
        );
        let two = format!("{WRITER_SECRET}\n# x\n{WRITER_SECRET}\n");
        let e = WriterKey::parse(&two, "w.key").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = WriterKey::parse(&format!("{ID}\n"), "w.key")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.key: line 1 is not a writer secret key"),
            "{e}"
        );
        assert!(
            e.contains("AGE-SECRET-KEY-") && !e.contains(&ID[20..]),
            "{e}"
        );
        let typo = WRITER_SECRET.replacen("YY3Z", "YY3X", 1);
        let e = WriterKey::parse(&typo, "w.key").unwrap_err().to_string();
        assert!(e.contains("damaged") && !e.contains(&typo[24..]), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("writer.key");
        let e = WriterKey::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("writer.key"), "{e}");
        std::fs::write(&path, WriterKey::generate().file_text()).unwrap();
        assert!(WriterKey::from_file(&path).is_ok());
    }
}
