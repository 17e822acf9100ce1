//! The keys a format 2 operation works with (docs/design/format-v2.md, 2.1
//! and 3.3): one verified keyring, the caller's checked key bundle, and
//! what follows from them: the metadata identities of every generation,
//! the current generation's recipients, the chunk-id key K, a signer when
//! the caller may sign, and the one rule that decides whether a signed
//! object's signer is trusted ([`KeySet::trust`]).
//!
//! [`KeySet::open`] is the one way an operation gets format 2 keys. A
//! writer's key set carries metadata keys only: [`KeySet::data`] (the
//! identities that decrypt packs) is `Some` only when a recipient's bundle
//! was opened, so a backup host cannot even ask for pack contents.
//!
//! Never: use a keyring [`Keyring::open`] did not verify, a bundle
//! [`Bundle::open`] did not check against it, or a writer the keyring does
//! not list (an unauthorised or removed writer gets no key set, so it
//! neither backs up nor prunes); never write anything.

use age::x25519;
use chrono::{DateTime, Utc};

use crate::chunk::ChunkKey;
use crate::error::{Error, Result};
use crate::keyring::{Keyring, KeyringError, KeysetMemory};
use crate::keys::bundle::{Bundle, Holder};
use crate::keys::v2::{KeysetId, OwnerKey, OwnerPublic, SignerPublic, WriterKey};
use crate::keys::{Identities, MetadataKey};
use crate::repo::Repository;
use crate::sign::{Signer, Verifier};

/// What this host holds of a format 2 key set's secrets.
#[derive(Clone)]
pub enum Holding {
    /// Age identities (`encryption.identity_file`): a recipient, perhaps
    /// the owner. One of them must be a recipient of the keyring.
    Identities(Identities),
    /// A backup host's writer key (`encryption.writer_key_file`).
    Writer(WriterKey),
}

impl std::fmt::Debug for Holding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holding::Identities(ids) => write!(f, "Holding({ids:?})"),
            Holding::Writer(w) => write!(f, "Holding({w:?})"),
        }
    }
}

/// Whether a signed object is to be believed (3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Signed by the owner or by a writer the keyring authorised then;
    /// `writer` is the keyring's name for the signer ("owner" for it).
    Signed { writer: String },
    /// Format 1: nothing is signed.
    Unsigned,
    /// Signed by no one this key set trusts, or not validly: never used.
    Rejected { reason: String },
}

impl Trust {
    pub fn is_signed(&self) -> bool {
        matches!(self, Trust::Signed { .. })
    }
}

/// One target's format 2 keys, as this host holds them.
#[derive(Clone)]
pub struct KeySet {
    keyset: KeysetId,
    keyring: Keyring,
    bundle: Bundle,
    signer: Option<Signer>,
    target: String,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KeySet({} serial {} generation {}, {:?})",
            self.keyset,
            self.keyring.serial(),
            self.bundle.generation,
            self.bundle
        )
    }
}

impl KeySet {
    /// The key set of `repo` (a format 2 repository) as `holding` opens
    /// it: the newest keyring `trust` signed (refused below what `memory`
    /// remembers), and the caller's bundle checked against it.
    pub async fn open(
        repo: &Repository,
        trust: &OwnerPublic,
        holding: &Holding,
        memory: Option<&KeysetMemory>,
    ) -> Result<KeySet> {
        let keyring = Keyring::open(repo, trust, memory).await?;
        let keyset = repo
            .config()
            .keyset()
            .cloned()
            .ok_or_else(|| Error::NotFormat2 {
                target: repo.describe(),
            })?;
        let (bundle, signer) = match holding {
            Holding::Identities(ids) => recipient_keys(repo, &keyring, ids, trust, &keyset).await?,
            Holding::Writer(key) => writer_keys(repo, &keyring, key, &keyset).await?,
        };
        Ok(KeySet {
            keyset,
            keyring,
            bundle,
            signer,
            target: repo.describe(),
        })
    }

    pub fn id(&self) -> &KeysetId {
        &self.keyset
    }

    /// Refuses to go on when `repo` lists a keyring serial above the one
    /// these keys were opened with: a key change landed since (the target
    /// was opened before the caller's lock was taken), so what these keys
    /// say is current may not be. For operations that act on "current"
    /// (prune deleting bundles no keyring names, key rewrite): run again.
    pub async fn ensure_current(&self, repo: &Repository, operation: &str) -> Result<()> {
        let ours = self.keyring.serial();
        match crate::keyring::highest_listed(repo).await? {
            Some(newer) if newer > ours => Err(Error::Keyring(KeyringError::Refused {
                target: repo.describe(),
                reason: format!(
                    "keyring/{newer:08} appeared after this host read serial {ours}: the keys \
                     changed while {operation} waited; run it again"
                ),
            })),
            _ => Ok(()),
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The current generation: what new objects are encrypted under.
    pub fn generation(&self) -> u32 {
        self.keyring.body.generation
    }

    pub fn chunk_key(&self) -> ChunkKey {
        ChunkKey(self.bundle.chunk_key)
    }

    /// The metadata identities of every generation held: reads manifests,
    /// lists, index files and pack trailers, nothing else.
    pub fn metadata_key(&self) -> MetadataKey {
        let ids = self.bundle.generations.iter().map(|g| g.metadata.clone());
        MetadataKey::from_x25519(ids.collect(), &self.describe_holder())
    }

    /// The identities that decrypt packs (every generation's data key,
    /// and the metadata keys): `None` for a writer, which holds no data key.
    pub fn data(&self) -> Option<Identities> {
        let mut ids = Vec::new();
        for g in &self.bundle.generations {
            ids.push(g.data.clone()?);
        }
        ids.extend(self.bundle.generations.iter().map(|g| g.metadata.clone()));
        Some(Identities::from_x25519(ids, &self.describe_holder()))
    }

    /// The current generation's identities: its data identity D (`None`
    /// for a writer) and its metadata identity M (`offsite key rewrite`
    /// tells current objects from older ones by them).
    pub fn current_identities(&self) -> (Option<&x25519::Identity>, &x25519::Identity) {
        let g = self.current_keys();
        (g.data.as_ref(), &g.metadata)
    }

    /// The current generation's metadata recipient (M), for new metadata.
    pub fn metadata_recipient(&self) -> x25519::Recipient {
        self.current_keys().metadata.to_public()
    }

    /// The current generation's data recipient (D), for new packs.
    pub fn data_recipient(&self) -> Result<x25519::Recipient> {
        let g = self.keyring.body.current();
        g.data_recipient.parse().map_err(|e: &str| {
            Error::from(KeyringError::Malformed {
                key: crate::keyring::keyring_key(self.keyring.serial()),
                reason: format!("generation {} data recipient: {e}", g.n),
            })
        })
    }

    /// The signer for what this host commits: its writer key, or the owner
    /// key when the identities held include the owner's. `None`: this
    /// host can read but not sign (a recipient who is not the owner).
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The signer, or an error saying what signing `what` needs.
    pub fn require_signer(&self, what: &str) -> Result<&Signer> {
        self.signer.as_ref().ok_or_else(|| {
            Error::Key(format!(
                "{what} on {} writes signed objects: set encryption.writer_key_file to a writer \
                 key of this repository, or use the owner's identity",
                self.target
            ))
        })
    }

    /// A verifier of this key set that knows every signer the keyring
    /// names (the owner and every writer, removed ones too: whether a
    /// removed writer's signature counts is [`Self::trust`]'s to say).
    pub fn verifier(&self) -> Verifier {
        let owner = self.owner_public().map(SignerPublic::Owner);
        let writers = self
            .keyring
            .body
            .writers
            .iter()
            .filter_map(|w| w.key.parse().ok().map(SignerPublic::Writer));
        Verifier::new(self.keyset.clone(), owner.into_iter().chain(writers))
    }

    /// Whether an object signed (verifiably) by `signer`, claiming to be
    /// finished at `finished`, is trusted: by the owner always; by a writer
    /// the keyring lists, when it was not removed before `finished`.
    pub fn trust(&self, signer: &SignerPublic, finished: DateTime<Utc>) -> Trust {
        let shown = signer.to_string();
        if let SignerPublic::Owner(o) = signer {
            return if self.owner_public().as_ref() == Some(o) {
                Trust::Signed {
                    writer: "owner".into(),
                }
            } else {
                Trust::Rejected {
                    reason: format!("signed by {shown}, which is not this repository's owner"),
                }
            };
        }
        let Some(w) = self.keyring.body.writers.iter().find(|w| w.key == shown) else {
            return Trust::Rejected {
                reason: format!(
                    "signed by {shown}, which this repository's owner never authorised"
                ),
            };
        };
        match w.valid_until {
            Some(until) if finished > until => Trust::Rejected {
                reason: format!(
                    "signed by writer {} at {}, after it was removed (valid until {})",
                    w.name,
                    finished.to_rfc3339(),
                    until.to_rfc3339()
                ),
            },
            _ => Trust::Signed {
                writer: w.name.clone(),
            },
        }
    }

    /// The owner key the keyring names (it verified under it).
    fn owner_public(&self) -> Option<OwnerPublic> {
        self.keyring.body.owner.parse().ok()
    }

    fn current_keys(&self) -> &crate::keys::bundle::GenerationKeys {
        self.bundle
            .generations
            .last()
            .expect("a checked bundle carries the current generation")
    }

    fn describe_holder(&self) -> String {
        format!(
            "the key bundle of {} on {}",
            self.bundle.holder.public_string(),
            self.target
        )
    }
}

/// The bundle of the first of `ids` the keyring lists as a recipient, and
/// the owner's signer when that identity (or another held) is the owner.
async fn recipient_keys(
    repo: &Repository,
    keyring: &Keyring,
    ids: &Identities,
    trust: &OwnerPublic,
    keyset: &KeysetId,
) -> Result<(Bundle, Option<Signer>)> {
    let listed = ids.x25519().iter().find(|id| {
        keyring
            .body
            .recipient(&id.to_public().to_string())
            .is_some()
    });
    let Some(identity) = listed else {
        let held: Vec<String> = ids.recipients().iter().map(ToString::to_string).collect();
        return Err(KeyringError::Refused {
            target: repo.describe(),
            reason: format!(
                "none of the identities held ({}) is a recipient of this repository: have its \
                 owner run `offsite key add RECIPIENT`",
                held.join(", ")
            ),
        }
        .into());
    };
    let bundle = crate::keyadmin::recipient_bundle(repo, identity, keyring).await?;
    let signer = ids
        .x25519()
        .iter()
        .map(OwnerKey::from_identity)
        .find(|k| k.public() == *trust)
        .map(|k| Signer::owner(&k, keyset.clone()));
    Ok((bundle, signer))
}

/// A writer's bundle and signer; refused when the keyring does not list
/// the writer or it was removed.
async fn writer_keys(
    repo: &Repository,
    keyring: &Keyring,
    key: &WriterKey,
    keyset: &KeysetId,
) -> Result<(Bundle, Option<Signer>)> {
    let public = key.public();
    let shown = public.to_string();
    let refused = |reason: String| {
        Error::from(KeyringError::Refused {
            target: repo.describe(),
            reason,
        })
    };
    let Some(entry) = keyring.body.writers.iter().find(|w| w.key == shown) else {
        return Err(refused(format!(
            "this host's writer key {shown} is not a writer of this repository: have its owner \
             run `offsite writer add NAME {shown}`"
        )));
    };
    let (Some(bundle_key), None) = (&entry.bundle, entry.valid_until) else {
        return Err(refused(format!(
            "writer {} ({shown}) was removed from this repository: make a new writer key \
             (`offsite writer keygen`) and have the owner add it",
            entry.name
        )));
    };
    let raw = repo.get_bytes(bundle_key).await?;
    let bundle = Bundle::open(
        &raw,
        bundle_key,
        key.box_identity(),
        &Holder::Writer(public),
        &keyring.body,
    )?;
    Ok((bundle, Some(Signer::writer(key, keyset.clone()))))
}
