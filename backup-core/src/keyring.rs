//! The format 2 keyring (docs/design/format-v2.md, 2.2 and 2.4):
//! `keyring/<serial, 8 digits>`, plaintext JSON plus a signature line by
//! the owner, saying which generations, recipients and writers a key set
//! has. Publishing serial N+1 is a create-if-absent, which makes it the
//! compare-and-swap of every key change.
//!
//! [`Keyring::open`] is the one way a host learns the current keys: the
//! newest serial whose signature verifies with the trusted owner key,
//! whose fields parse strictly and name this key set, and whose `previous`
//! hash matches the object before it when that one is present. Candidates
//! that fail are warnings, never used. A [`KeysetMemory`] remembers the
//! highest serial this host trusted; a lower one is refused (a rollback).
//! [`publish`] writes the next serial; when another admin won the same
//! serial it re-reads, re-applies the change on top and tries the next
//! (at most [`PUBLISH_ROUNDS`] times), so two concurrent changes both land.
//!
//! What if the process dies while publishing? The keyring object is put
//! whole or not at all (create-if-absent): before it, nothing changed
//! (bundles written before it are unnamed, and prune deletes them); after
//! it, the change is made. The local memory is written (temporary file,
//! rename) after the put, so a crash in between only leaves it one serial
//! behind, which is not a refusal. This module never trusts a keyring it
//! did not verify, never writes anything but `keyring/` objects, and
//! never decides who may change keys (that is `keyadmin`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::x25519;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::bundle::names_holder;
use crate::keys::v2::{KeysetId, OwnerKey, OwnerPublic, SignerPublic, WriterPublic};
use crate::repo::{Repository, KEYRING};
use crate::sign::{SignatureError, Signer, Verifier};
use crate::storage::{ErrorKind, PutMode};

/// How many times a publish re-reads and re-applies after losing a race.
pub const PUBLISH_ROUNDS: usize = 5;

/// Why a keyring or a bundle is refused. Each names the object or target.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("{key}: not a valid keyring: {reason}")]
    Malformed { key: String, reason: String },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("{target} has no keyring this host can trust: {problems}")]
    NoneTrusted { target: String, problems: String },
    #[error(
        "{target}: keyring/{remembered:08} is gone; this host last trusted serial {remembered} \
         (the newest valid one there is {newest}): someone deleted it, or the target was \
         restored from an old copy"
    )]
    RolledBack {
        target: String,
        newest: u64,
        remembered: u64,
    },
    #[error(
        "{key}: not the keys the keyring names; someone with write access replaced it ({reason})"
    )]
    ForgedBundle { key: String, reason: String },
    #[error("{target}: the keyring names no bundle for {holder}")]
    NoBundle { target: String, holder: String },
    #[error(
        "{target}: keyring/{serial:08} exists but is not a keyring this host trusts; \
         nothing was changed (see the warnings of `offsite key list`)"
    )]
    Squatted { target: String, serial: u64 },
    #[error("{target}: the keyring changed {PUBLISH_ROUNDS} times while this change was being made; nothing was changed, run it again")]
    Contended { target: String },
    #[error("{target}: {reason}")]
    Refused { target: String, reason: String },
}

/// One generation of keys, by their public halves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generation {
    pub n: u32,
    pub data_recipient: String,
    pub metadata_recipient: String,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientEntry {
    pub recipient: String,
    pub name: String,
    pub owner: bool,
    pub added: DateTime<Utc>,
    pub bundle: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedRecipient {
    pub recipient: String,
    pub name: String,
    pub removed: DateTime<Utc>,
    pub last_generation: u32,
}

/// A writer; one with `valid_until` set was removed and has no bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterEntry {
    pub name: String,
    pub key: String,
    pub added: DateTime<Utc>,
    pub bundle: Option<String>,
    pub valid_until: Option<DateTime<Utc>>,
}

/// The keyring's JSON body (2.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringBody {
    pub format: String,
    pub version: u32,
    pub keyset: String,
    pub serial: u64,
    pub previous: Option<String>,
    pub created: DateTime<Utc>,
    pub owner: String,
    pub chunk_key_check: String,
    pub generation: u32,
    pub generations: Vec<Generation>,
    pub recipients: Vec<RecipientEntry>,
    pub removed_recipients: Vec<RemovedRecipient>,
    pub writers: Vec<WriterEntry>,
}

/// The object key of serial `serial`.
pub fn keyring_key(serial: u64) -> String {
    format!("{KEYRING}{serial:08}")
}

/// The serial a `keyring/` object's name gives, if it is a keyring name.
/// The highest serial named under `keyring/` on `repo` (verified or not).
pub async fn highest_listed(repo: &Repository) -> Result<Option<u64>> {
    let listed = repo.list(KEYRING).await?;
    Ok(listed.iter().filter_map(|m| serial_of(&m.key)).max())
}

fn serial_of(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(KEYRING)?;
    let all_digits = digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit());
    all_digits.then(|| digits.parse().ok()).flatten()
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl KeyringBody {
    /// The first generation's keyring of a new key set.
    pub fn first(
        keyset: &KeysetId,
        owner: &OwnerPublic,
        chunk_key_check: String,
        generation: Generation,
    ) -> KeyringBody {
        KeyringBody {
            format: "offsite-keyring".into(),
            version: 2,
            keyset: keyset.to_string(),
            serial: 1,
            previous: None,
            created: Utc::now(),
            owner: owner.to_string(),
            chunk_key_check,
            generation: generation.n,
            generations: vec![generation],
            recipients: Vec::new(),
            removed_recipients: Vec::new(),
            writers: Vec::new(),
        }
    }

    /// The current generation's public keys.
    pub fn current(&self) -> &Generation {
        self.generations
            .iter()
            .find(|g| g.n == self.generation)
            .expect("validated: the current generation is listed")
    }

    pub fn recipient(&self, recipient: &str) -> Option<&RecipientEntry> {
        self.recipients.iter().find(|r| r.recipient == recipient)
    }

    /// The valid (not removed) writer named `name`.
    pub fn writer(&self, name: &str) -> Option<&WriterEntry> {
        self.writers
            .iter()
            .find(|w| w.name == name && w.valid_until.is_none())
    }

    /// Checks every rule of 2.2 that one object can break; `key` names it.
    /// Whether `key` is the bundle this keyring names for a recipient or a
    /// writer (the one a holder opens; any other bundle is used by nobody).
    pub fn names_bundle(&self, key: &str) -> bool {
        self.recipients.iter().any(|r| r.bundle == key)
            || self
                .writers
                .iter()
                .any(|w| w.bundle.as_deref() == Some(key))
    }

    pub fn validate(&self, key: &str) -> Result<(), KeyringError> {
        self.check().map_err(|reason| KeyringError::Malformed {
            key: key.to_string(),
            reason,
        })
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.format != "offsite-keyring" || self.version != 2 {
            return Err(format!("format {:?} version {}", self.format, self.version));
        }
        KeysetId::from_str(&self.keyset).map_err(|e| e.to_string())?;
        OwnerPublic::from_str(&self.owner).map_err(|e| e.to_string())?;
        match (self.serial, &self.previous) {
            (0, _) => return Err("serial 0".into()),
            (1, None) => {}
            (1, Some(_)) => return Err("serial 1 names a previous keyring".into()),
            (_, None) => return Err("no previous keyring hash".into()),
            (_, Some(p)) if !is_hex(p, 64) => return Err("previous is not 64 hex digits".into()),
            _ => {}
        }
        if !is_hex(&self.chunk_key_check, 32) {
            return Err("chunk_key_check is not 32 hex digits".into());
        }
        self.check_generations()?;
        self.check_recipients()?;
        self.check_writers()
    }

    fn check_generations(&self) -> std::result::Result<(), String> {
        for (i, g) in self.generations.iter().enumerate() {
            if g.n as usize != i + 1 {
                return Err(format!("generation {} listed at position {}", g.n, i + 1));
            }
            for r in [&g.data_recipient, &g.metadata_recipient] {
                x25519::Recipient::from_str(r)
                    .map_err(|_| format!("generation {}: {r:?} is not an age recipient", g.n))?;
            }
        }
        if self.generation == 0 || self.generation as usize != self.generations.len() {
            return Err(format!(
                "current generation {} of {} listed",
                self.generation,
                self.generations.len()
            ));
        }
        Ok(())
    }

    fn check_recipients(&self) -> std::result::Result<(), String> {
        if self.recipients.iter().filter(|r| r.owner).count() != 1 {
            return Err("not exactly one recipient is the owner's".into());
        }
        for (i, r) in self.recipients.iter().enumerate() {
            x25519::Recipient::from_str(&r.recipient)
                .map_err(|_| format!("{:?} is not an age recipient", r.recipient))?;
            if self.recipients[..i]
                .iter()
                .any(|o| o.recipient == r.recipient)
            {
                return Err(format!("{} is listed twice", r.recipient));
            }
            if !names_holder(&r.bundle, self.generation, &r.recipient) {
                return Err(format!(
                    "{:?} is not a bundle name for {}",
                    r.bundle, r.name
                ));
            }
        }
        Ok(())
    }

    fn check_writers(&self) -> std::result::Result<(), String> {
        for (i, w) in self.writers.iter().enumerate() {
            WriterPublic::from_str(&w.key).map_err(|e| e.to_string())?;
            // A removed writer's name may be reused by its replacement key.
            let valid = |o: &WriterEntry| o.valid_until.is_none();
            if self.writers[..i]
                .iter()
                .any(|o| o.key == w.key || (o.name == w.name && valid(o) && valid(w)))
            {
                return Err(format!("writer {} is listed twice", w.name));
            }
            match (&w.bundle, w.valid_until) {
                (Some(b), None) if names_holder(b, self.generation, &w.key) => {}
                (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "writer {}: bundle and valid_until disagree",
                        w.name
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A verified keyring of one target.
#[derive(Debug, Clone)]
pub struct Keyring {
    pub body: KeyringBody,
    /// BLAKE3 (hex) of the whole object: the next serial's `previous`.
    pub hash: String,
    /// Candidates passed over (forged, malformed, unreadable), in words.
    pub warnings: Vec<String>,
}

impl Keyring {
    pub fn serial(&self) -> u64 {
        self.body.serial
    }

    /// The newest keyring of `repo` that `trust` signed (2.4); refused when
    /// `memory` remembers a higher serial of this key set.
    pub async fn open(
        repo: &Repository,
        trust: &OwnerPublic,
        memory: Option<&KeysetMemory>,
    ) -> Result<Keyring> {
        let target = repo.describe();
        let keyset = keyset_of(repo)?;
        let mut serials = Vec::new();
        let mut warnings = Vec::new();
        for meta in repo.list(KEYRING).await? {
            match serial_of(&meta.key) {
                Some(s) => serials.push(s),
                None => warnings.push(format!("{}: not a keyring name", meta.key)),
            }
        }
        serials.sort_unstable_by(|a, b| b.cmp(a));
        let verifier = Verifier::new(keyset.clone(), [SignerPublic::Owner(*trust)]);
        let mut found = None;
        for &serial in &serials {
            match candidate(repo, &verifier, trust, serial, &serials).await {
                Ok(k) => {
                    found = Some(k);
                    break;
                }
                // Only what the objects say is passed over: a target that
                // cannot be read now must not make an older keyring current.
                Err(Error::Keyring(e)) => warnings.push(crate::error::chain_text(&e)),
                Err(e) => return Err(e),
            }
        }
        let Some((body, hash)) = found else {
            let problems = if warnings.is_empty() {
                "keyring/ is empty".to_string()
            } else {
                warnings.join("; ")
            };
            return Err(KeyringError::NoneTrusted { target, problems }.into());
        };
        if let Some(memory) = memory {
            memory.check(&keyset, body.serial, &target)?;
            memory.remember(&keyset, body.serial, &hash);
        }
        for w in &warnings {
            tracing::warn!("{target}: passing over {w}");
        }
        Ok(Keyring {
            body,
            hash,
            warnings,
        })
    }
}

/// `config`'s key set (the repository was opened as format 2).
fn keyset_of(repo: &Repository) -> Result<KeysetId> {
    repo.config()
        .keyset()
        .cloned()
        .ok_or_else(|| Error::NotFormat2 {
            target: repo.describe(),
        })
}

/// Serial `serial` as a verified body and its hash, or why it does not count.
async fn candidate(
    repo: &Repository,
    verifier: &Verifier,
    trust: &OwnerPublic,
    serial: u64,
    present: &[u64],
) -> Result<(KeyringBody, String)> {
    let key = keyring_key(serial);
    let raw = repo.get_bytes(&key).await?;
    let body = verified_body(verifier, &key, &raw)?;
    let malformed = |reason: String| KeyringError::Malformed {
        key: key.clone(),
        reason,
    };
    if body.serial != serial {
        return Err(malformed(format!("it says serial {}", body.serial)).into());
    }
    if body.owner != trust.to_string() {
        return Err(malformed(format!("it names owner {}", body.owner)).into());
    }
    if body.keyset != keyset_of(repo)?.as_str() {
        return Err(malformed(format!("it is of key set {}", body.keyset)).into());
    }
    if serial > 1 && present.contains(&(serial - 1)) {
        let before = repo.get_bytes(&keyring_key(serial - 1)).await?;
        if body.previous.as_deref() != Some(blake3::hash(&before).to_hex().as_str()) {
            return Err(malformed(format!(
                "its previous hash is not that of keyring/{:08}",
                serial - 1
            ))
            .into());
        }
    }
    Ok((body, blake3::hash(&raw).to_hex().to_string()))
}

/// The key set and hash of `raw`, the object `keyring/00000001` of a
/// target without `config` (an init killed before its last put), when it
/// is a valid first keyring that `owner` signed; `None` otherwise. The key
/// set is read from the body before the signature is checked, because the
/// signature binds it (sign.rs): a body naming another key set does not
/// verify under the one it names unless the owner signed exactly that.
pub(crate) fn first_signed_by(owner: &OwnerPublic, raw: &[u8]) -> Option<(KeysetId, String)> {
    let key = keyring_key(1);
    let text = std::str::from_utf8(raw).ok()?;
    let json = text.trim_end_matches('\n').rsplit_once('\n')?.0;
    let claimed: KeyringBody = serde_json::from_str(json).ok()?;
    let keyset: KeysetId = claimed.keyset.parse().ok()?;
    let verifier = Verifier::new(keyset.clone(), [SignerPublic::Owner(*owner)]);
    let body = verified_body(&verifier, &key, raw).ok()?;
    let first = body.serial == 1 && body.owner == owner.to_string();
    (first && body.keyset == keyset.as_str())
        .then(|| (keyset, blake3::hash(raw).to_hex().to_string()))
}

/// The body of a signed keyring object, parsed and validated.
fn verified_body(verifier: &Verifier, key: &str, raw: &[u8]) -> Result<KeyringBody, KeyringError> {
    let (body, _) = verifier.open(key, raw)?;
    let body: KeyringBody = serde_json::from_slice(body).map_err(|e| KeyringError::Malformed {
        key: key.to_string(),
        reason: e.to_string(),
    })?;
    body.validate(key)?;
    Ok(body)
}

/// What a change to a keyring did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The body was changed: publish it.
    Made,
    /// The keyring already says so: publish nothing.
    AlreadyDone,
}

/// Publishes the keyring after `base` with `change` applied, signed by
/// `owner`: serial N+1, create-if-absent. When another admin published
/// N+1 first, the newest keyring is read again and `change` re-applied on
/// top of it. Returns the keyring now current (`base` when nothing changed).
pub async fn publish(
    repo: &Repository,
    owner: &OwnerKey,
    mut base: Keyring,
    memory: Option<&KeysetMemory>,
    mut change: impl FnMut(&mut KeyringBody) -> Result<Change>,
) -> Result<Keyring> {
    let target = repo.describe();
    let keyset = keyset_of(repo)?;
    let signer = Signer::owner(owner, keyset.clone());
    for _ in 0..PUBLISH_ROUNDS {
        let mut next = base.body.clone();
        if change(&mut next)? == Change::AlreadyDone {
            return Ok(base);
        }
        next.serial = base.serial() + 1;
        next.previous = Some(base.hash.clone());
        next.created = Utc::now();
        let key = keyring_key(next.serial);
        next.validate(&key)?;
        let sealed = seal(&signer, &key, &next)?;
        crate::failpoint::hit("keyring.publish")
            .map_err(|e| Error::io(format!("publishing {key}"), e))?;
        match repo
            .put_bytes(&key, Bytes::from(sealed.clone()), PutMode::Create)
            .await
        {
            Ok(()) if repo.get_bytes(&key).await? == sealed => {
                let hash = blake3::hash(&sealed).to_hex().to_string();
                if let Some(memory) = memory {
                    memory.remember(&keyset, next.serial, &hash);
                }
                return Ok(Keyring {
                    body: next,
                    hash,
                    warnings: Vec::new(),
                });
            }
            // A retried create met an object of another admin's of the same size.
            Ok(()) => {}
            Err(Error::Storage { cause, .. }) if cause.kind == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let newer = Keyring::open(repo, &owner.public(), memory).await?;
        if newer.serial() <= base.serial() {
            return Err(KeyringError::Squatted {
                target,
                serial: base.serial() + 1,
            }
            .into());
        }
        base = newer;
    }
    Err(KeyringError::Contended { target }.into())
}

/// The signed object of `body` under `key`.
pub(crate) fn seal(signer: &Signer, key: &str, body: &KeyringBody) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(body).expect("a keyring serializes");
    json.push(b'\n');
    Ok(signer.seal(key, json).map_err(KeyringError::from)?)
}

/// What this host remembers of key sets it used (2.4, rollback): per key
/// set, the highest keyring serial it trusted and that object's BLAKE3,
/// in `<dir>/keysets/<keyset>.json`. A newest valid serial below the
/// remembered one is refused; the hash is kept for the record (two
/// targets of a key set may hold different objects under one serial until
/// cross-target healing lands, so it is not compared yet).
#[derive(Debug, Clone)]
pub struct KeysetMemory {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Remembered {
    serial: u64,
    blake3: String,
}

impl KeysetMemory {
    /// The memory under the state directory `state_dir`.
    pub fn at(state_dir: &Path) -> KeysetMemory {
        KeysetMemory {
            dir: state_dir.join("keysets"),
        }
    }

    fn path(&self, keyset: &KeysetId) -> PathBuf {
        self.dir.join(format!("{keyset}.json"))
    }

    /// The highest serial trusted for `keyset`, if any. A file that does
    /// not parse is an error: forgetting it would disarm the rollback check.
    pub fn serial(&self, keyset: &KeysetId) -> Result<Option<u64>> {
        let path = self.path(keyset);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            // A state "directory" that is not one remembers nothing.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(Error::io(path.display().to_string(), e)),
        };
        let r: Remembered = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            key: path.display().to_string(),
            message: format!("{e}; delete it only if you trust the targets' current keyrings"),
        })?;
        Ok(Some(r.serial))
    }

    fn check(&self, keyset: &KeysetId, newest: u64, target: &str) -> Result<()> {
        match self.serial(keyset)? {
            Some(remembered) if remembered > newest => Err(KeyringError::RolledBack {
                target: target.to_string(),
                newest,
                remembered,
            }
            .into()),
            _ => Ok(()),
        }
    }

    /// Records `serial` when it is higher than what is remembered. A
    /// memory that cannot be written is a warning, not the operation's
    /// failure: what was just checked stays checked, and only a later
    /// rollback to below `serial` would go unnoticed on this host.
    pub fn remember(&self, keyset: &KeysetId, serial: u64, hash: &str) {
        if let Err(e) = self.try_remember(keyset, serial, hash) {
            tracing::warn!(
                "{}; this host will not notice a rollback of key set {keyset} to below \
                 serial {serial}",
                crate::error::chain_text(&e)
            );
        }
    }

    fn try_remember(&self, keyset: &KeysetId, serial: u64, hash: &str) -> Result<()> {
        if self.serial(keyset)?.is_some_and(|s| s >= serial) {
            return Ok(());
        }
        let io = |e| Error::io(format!("remembering key set {keyset}"), e);
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let json = serde_json::to_vec(&Remembered {
            serial,
            blake3: hash.to_string(),
        })
        .expect("serializes");
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        std::fs::write(tmp.path(), json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(self.path(keyset)).map_err(|e| io(e.error))?;
        Ok(())
    }
}
