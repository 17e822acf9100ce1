//! Keys: who can write, who can read.
//!
//! A backup host holds only age recipients (public keys). Packs (the data) are
//! encrypted to those recipients alone, so only an identity holder can read them.
//! Metadata (manifests, chunk lists, index files) must also be readable by the
//! backup host, which needs to deduplicate against and list what is stored; it is
//! encrypted to the recipients *and* to a metadata identity that every holder of
//! the recipient set derives the same way (BLAKE3 key derivation over the sorted
//! recipients). Someone who can read the bucket but does not know the recipients
//! learns nothing but object sizes and counts. Changing the recipient set changes
//! the metadata identity, so a repository is tied to the set it was created with.
//!
//! That is format 1. Format 2's key strings and derivations (owner and
//! writer keys, key set ids, chunk-id key, holder ids) are in [`v2`], its
//! key bundles (one holder's secrets, checked against the keyring) in
//! [`bundle`].
//!
//! This module never writes an identity anywhere; `generate_identity` returns it
//! to the caller.

pub mod bundle;
pub mod v2;

use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age::x25519;

use crate::error::{Error, Result};

pub use v2::{KeysetId, OwnerKey, OwnerPublic, SignerPublic, WriterKey, WriterPublic};

/// What a backup host holds: the recipient set and what derives from it.
pub struct Keys {
    recipients: Vec<x25519::Recipient>,
    metadata: x25519::Identity,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.recipients.len())
            .field("metadata_recipient", &self.metadata_recipient())
            .finish()
    }
}

impl Keys {
    /// Parses `age1...` recipients. At least one is required.
    pub fn from_recipients(list: &[String]) -> Result<Keys> {
        if list.is_empty() {
            return Err(no_recipients());
        }
        let mut parsed = Vec::new();
        let mut canonical = Vec::new();
        for r in list {
            let r = r.trim();
            let rec = x25519::Recipient::from_str(r)
                .map_err(|e| Error::Key(format!("recipient {r:?}: {e}")))?;
            canonical.push(rec.to_string());
            parsed.push(rec);
        }
        canonical.sort();
        canonical.dedup();
        let secret = blake3::derive_key(
            "offsite 2026-11 repository metadata identity v1",
            canonical.join("\n").as_bytes(),
        );
        Ok(Keys {
            recipients: parsed,
            metadata: identity_from_bytes(&secret),
        })
    }

    /// The public half of the derived metadata identity, recorded in the
    /// repository config so a host with the wrong recipient set is told so.
    pub fn metadata_recipient(&self) -> String {
        self.metadata.to_public().to_string()
    }

    /// Recipients for packs: the configured ones only.
    pub fn data_recipients(&self) -> Vec<&dyn age::Recipient> {
        self.recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect()
    }

    /// Owned copies of [`Keys::data_recipients`], for worker threads.
    pub fn data_recipients_owned(&self) -> Vec<x25519::Recipient> {
        self.recipients.clone()
    }

    /// Recipients for metadata: the configured ones plus the metadata identity.
    pub(crate) fn metadata_recipients(&self) -> Vec<x25519::Recipient> {
        let mut out = self.recipients.clone();
        out.push(self.metadata.to_public());
        out
    }

    /// The key a backup host reads metadata with: the metadata identity
    /// derived from the recipients. It reads no pack.
    pub fn metadata_key(&self) -> MetadataKey {
        MetadataKey {
            ids: std::sync::Arc::new(vec![Box::new(self.metadata.clone())]),
            derived: true,
            source: "recipients (metadata only)".into(),
        }
    }
}

/// What a format 1 write (backup, pin) without recipients fails with.
pub(crate) fn no_recipients() -> Error {
    Error::Key(
        "no recipients configured: set encryption.recipients to at least one age public key \
         (age1...), e.g. the one `offsite keygen` prints"
            .into(),
    )
}

fn identity_from_bytes(secret: &[u8; 32]) -> x25519::Identity {
    let hrp = bech32::Hrp::parse("age-secret-key-").expect("valid hrp");
    let encoded = bech32::encode::<bech32::Bech32>(hrp, secret).expect("32 bytes fit");
    x25519::Identity::from_str(&encoded.to_uppercase()).expect("a valid x25519 secret")
}

/// What reads metadata (manifests, chunk lists, index files, damage
/// records, pins) and nothing else: every metadata object is encrypted to the
/// recipients and to the metadata identity, so both a backup host
/// ([`Keys::metadata_key`]) and a restoring host ([`Identities`], which
/// dereferences to one) hold a key. Listing, pruning and checking structure
/// take this; restoring and reading packs take [`Identities`], so that a
/// host holding recipients only cannot even ask for them: the compiler
/// refuses it.
///
/// Lists with a backup host's key, restores only with identities:
///
/// ```no_run
/// # async fn f(repo: backup_core::repo::Repository, keys: backup_core::keys::Keys,
/// #            ids: backup_core::keys::Identities) -> backup_core::Result<()> {
/// use backup_core::restore::RestoreOptions;
/// let newest = repo.snapshots(&keys.metadata_key()).await?.remove(0);
/// repo.restore(&ids, &newest, "/srv/app.db".as_ref(), &RestoreOptions::default()).await?;
/// # Ok(()) }
/// ```
///
/// ```compile_fail
/// # async fn f(repo: backup_core::repo::Repository, keys: backup_core::keys::Keys)
/// #     -> backup_core::Result<()> {
/// use backup_core::restore::RestoreOptions;
/// let key = keys.metadata_key();
/// let newest = repo.snapshots(&key).await?.remove(0);
/// // A metadata key is not an identity: this does not compile.
/// repo.restore(&key, &newest, "/srv/app.db".as_ref(), &RestoreOptions::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MetadataKey {
    ids: std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>,
    /// Derived from recipients, not a user's identity.
    derived: bool,
    source: String,
}

impl std::fmt::Debug for MetadataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MetadataKey({} from {})", self.ids.len(), self.source)
    }
}

impl MetadataKey {
    /// A metadata key of X25519 identities (format 2's metadata keys M,
    /// from a key bundle); `source` says where they came from.
    pub fn from_x25519(ids: Vec<x25519::Identity>, source: &str) -> MetadataKey {
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = ids
            .into_iter()
            .map(|id| Box::new(id) as Box<dyn age::Identity + Send + Sync>)
            .collect();
        MetadataKey {
            ids: std::sync::Arc::new(ids),
            derived: false,
            source: source.to_string(),
        }
    }

    /// The identities metadata is decrypted with.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.ids.iter().map(|i| i.as_ref() as &dyn age::Identity)
    }

    /// Whether this is the metadata identity derived from recipients (which
    /// every metadata object is encrypted to), not a user's identity.
    pub(crate) fn is_derived(&self) -> bool {
        self.derived
    }
}

/// What a restoring host holds: one or more age identities. They read packs
/// (restore, `verify --read-data`, drill) and, as a [`MetadataKey`] (by
/// dereference), metadata.
#[derive(Clone)]
pub struct Identities {
    key: MetadataKey,
    /// The public halves of the identities.
    publics: std::sync::Arc<Vec<x25519::Recipient>>,
    /// The identities themselves, for what derives from an identity's text
    /// (format 2's owner key).
    x25519: std::sync::Arc<Vec<x25519::Identity>>,
}

impl std::ops::Deref for Identities {
    type Target = MetadataKey;
    fn deref(&self) -> &MetadataKey {
        &self.key
    }
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Identities({} from {})",
            self.key.ids.len(),
            self.key.source
        )
    }
}

impl Identities {
    /// Parses an age identity file (`AGE-SECRET-KEY-1...` lines, `#` comments).
    pub fn parse(text: &str, source: &str) -> Result<Identities> {
        let mut ids: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        let mut publics = Vec::new();
        let mut x25519s = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = x25519::Identity::from_str(line).map_err(|e| {
                Error::Key(format!(
                    "{source}: not an age identity file ({e}); expected AGE-SECRET-KEY-1... lines"
                ))
            })?;
            publics.push(id.to_public());
            x25519s.push(id.clone());
            ids.push(Box::new(id));
        }
        if ids.is_empty() {
            return Err(Error::Key(format!("{source}: contains no age identity")));
        }
        Ok(Identities {
            key: MetadataKey {
                ids: std::sync::Arc::new(ids),
                derived: false,
                source: source.to_string(),
            },
            publics: std::sync::Arc::new(publics),
            x25519: std::sync::Arc::new(x25519s),
        })
    }

    /// Identities from X25519 secrets already parsed (format 2's data and
    /// metadata keys, from a recipient's key bundle).
    pub fn from_x25519(ids: Vec<x25519::Identity>, source: &str) -> Identities {
        Identities {
            key: MetadataKey::from_x25519(ids.clone(), source),
            publics: std::sync::Arc::new(ids.iter().map(x25519::Identity::to_public).collect()),
            x25519: std::sync::Arc::new(ids),
        }
    }

    /// Reads an identity file. A passphrase-protected file (`age -p`) is
    /// decrypted with `passphrase`.
    pub fn from_file(path: &std::path::Path, passphrase: Option<&str>) -> Result<Identities> {
        let source = path.display().to_string();
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("identity file {source}"), e))?;
        if data.starts_with(b"age-encryption.org/v1") {
            let Some(pass) = passphrase else {
                return Err(Error::Key(format!(
                    "{source} is passphrase-protected: set OFFSITE_IDENTITY_PASSPHRASE"
                )));
            };
            let id = age::scrypt::Identity::new(age::secrecy::SecretString::from(pass.to_string()));
            let plain = crate::codec::decrypt_all(
                &data,
                std::iter::once(&id as &dyn age::Identity),
                &source,
            )
            .map_err(|_| Error::Key(format!("{source}: wrong passphrase")))?;
            let text = String::from_utf8(plain)
                .map_err(|_| Error::Key(format!("{source}: not an age identity file")))?;
            return Self::parse(&text, &source);
        }
        let text = String::from_utf8(data)
            .map_err(|_| Error::Key(format!("{source}: not an age identity file")))?;
        Self::parse(&text, &source)
    }

    /// Their key for metadata alone, to hand to what reads nothing else.
    pub fn metadata_key(&self) -> MetadataKey {
        self.key.clone()
    }

    /// The identities packs (and metadata) are decrypted with.
    pub fn iter(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.key.iter()
    }

    /// The recipients these identities decrypt for: what an object written
    /// by a host that holds only identities (a damage record found by a
    /// restore) is encrypted to, besides the metadata recipient.
    pub fn recipients(&self) -> &[x25519::Recipient] {
        &self.publics
    }

    /// The X25519 identities, in file order: format 2 derives the owner key
    /// from the owner's ([`v2::OwnerKey::from_identity`]).
    pub fn x25519(&self) -> &[x25519::Identity] {
        &self.x25519
    }
}

/// A new identity as `(secret file contents, recipient)`.
pub fn generate_identity() -> (String, String) {
    let id = x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = format!(
        "# created: {created}\n# public key: {recipient}\n{}\n",
        id.to_string().expose_secret()
    );
    (text, recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_identity_depends_only_on_the_recipient_set() {
        let (_, a) = generate_identity();
        let (_, b) = generate_identity();
        let k1 = Keys::from_recipients(&[a.clone(), b.clone()]).unwrap();
        let k2 = Keys::from_recipients(&[b.clone(), a.clone(), a.clone()]).unwrap();
        let k3 = Keys::from_recipients(std::slice::from_ref(&a)).unwrap();
        assert_eq!(k1.metadata_recipient(), k2.metadata_recipient());
        assert_ne!(k1.metadata_recipient(), k3.metadata_recipient());
    }

    #[test]
    fn passphrase_protected_identity_files_need_the_passphrase() {
        use std::io::Write;
        let (secret, recipient) = generate_identity();
        let enc = age::Encryptor::with_user_passphrase(age::secrecy::SecretString::from(
            "hunter2".to_string(),
        ));
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(secret.as_bytes()).unwrap();
        w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.age");
        std::fs::write(&path, &out).unwrap();

        let e = Identities::from_file(&path, None).unwrap_err();
        assert!(e.to_string().contains("OFFSITE_IDENTITY_PASSPHRASE"), "{e}");
        let e = Identities::from_file(&path, Some("wrong")).unwrap_err();
        assert!(e.to_string().contains("wrong passphrase"), "{e}");
        let ids = Identities::from_file(&path, Some("hunter2")).unwrap();
        let keys = Keys::from_recipients(&[recipient]).unwrap();
        let data = crate::codec::encode(b"secret data", &keys.data_recipients(), 3).unwrap();
        assert_eq!(
            crate::codec::decode(&data, ids.iter(), "k").unwrap(),
            b"secret data"
        );
    }

    #[test]
    fn bad_recipients_and_identities_are_named() {
        let e = Keys::from_recipients(&["age1nope".into()]).unwrap_err();
        assert!(e.to_string().contains("age1nope"), "{e}");
        assert!(Keys::from_recipients(&[]).is_err());
        let e = Identities::parse("hello\n", "key.txt").unwrap_err();
        assert!(e.to_string().contains("key.txt"), "{e}");
    }
}
