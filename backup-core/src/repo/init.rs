//! `offsite init` (docs/design/format-v2.md, 2.5): a format 2 repository
//! with one new key set on every given, empty target. Generation 1's data
//! and metadata keys are random, the chunk-id key derives from the data
//! key; every target gets the same bundles (owner and recipients) and the
//! same owner-signed `keyring/00000001`, and its own `config`.
//!
//! `config` is written last on each target, after the bundles and then the
//! keyring: a repository exists once its config does, so an init killed
//! before that leaves no repository. The next init (or backup) of that
//! one target finishes it: when the keyring is there and this owner signed
//! it, only the config is missing, and it is written for that key set;
//! when only bundles are there, no keyring names them and a new init goes
//! on beside them. An init never writes to a target that holds anything
//! else, and never overwrites: every put is create-if-absent, so two hosts
//! creating one target at once cannot mix key sets (the first keyring
//! decides; the other's put of it fails).

use std::sync::Arc;

use age::x25519;
use bytes::Bytes;
use chrono::Utc;

use super::{store_checked, Format, RepoConfig, Repository, CONFIG_KEY, KEYRING, KEYS};
use crate::error::{Error, Result};
use crate::keyadmin::Owner;
use crate::keyring::{self, Generation, KeyringBody, KeyringError, KeysetMemory, RecipientEntry};
use crate::keys::bundle::{bundle_key, Bundle, GenerationKeys, Holder};
use crate::keys::v2::{chunk_id_key, chunk_key_check, KeysetId};
use crate::sign::Signer;
use crate::storage::{
    bytes_stream, collect_bytes, list_all, ObjectMeta, PutMode, RetryPolicy, Storage,
};

/// One recipient to give a bundle at init: its name and key.
#[derive(Debug, Clone)]
pub struct NamedRecipient {
    pub name: String,
    pub recipient: x25519::Recipient,
}

/// Creates a format 2 repository of one new key set on every target of
/// `targets` (each must be empty), owned by `owner`, with bundles for the
/// owner and `recipients`. Returns the key set id.
pub async fn init(
    targets: &[Arc<dyn Storage>],
    owner: &Owner,
    recipients: &[NamedRecipient],
    memory: Option<&KeysetMemory>,
) -> Result<KeysetId> {
    let retry = RetryPolicy::default();
    if let [one] = targets {
        if let Some(keyset) = resume(one.as_ref(), &retry, owner, memory).await? {
            return Ok(keyset);
        }
    }
    for storage in targets {
        ensure_empty(storage.as_ref(), &retry).await?;
    }
    let keyset: KeysetId = hex::encode(rand::random::<[u8; 16]>())
        .parse()
        .expect("32 hex digits");
    let (objects, keyring_hash) = first_objects(&keyset, owner, recipients)?;
    for storage in targets {
        for (key, body) in &objects {
            put(storage.as_ref(), &retry, key, body.clone()).await?;
        }
        let config = new_config(&keyset);
        put(
            storage.as_ref(),
            &retry,
            CONFIG_KEY,
            config.to_json().into(),
        )
        .await?;
    }
    if let Some(memory) = memory {
        memory.remember(&keyset, 1, &keyring_hash);
    }
    Ok(keyset)
}

/// Makes the empty target `storage` a repository of `from`'s key set (a
/// target added beside existing ones): every keyring and bundle of `from`
/// copied as it is, bundles first and keyrings newest first, then a
/// `config` naming the key set. Signed, and encrypted to their holders,
/// they mean the same on any target, so nothing is signed or decrypted
/// here and a backup host with only a writer key can add a target. A copy
/// killed half-way is finished by the next join: an object already there
/// is accepted only when it is byte for byte the one copied.
pub async fn join(from: &Repository, storage: &dyn Storage) -> Result<()> {
    let retry = RetryPolicy::default();
    let keyset = from
        .config()
        .keyset()
        .cloned()
        .ok_or_else(|| Error::NotFormat2 {
            target: from.describe(),
        })?;
    let target = storage.describe();
    let present = listed(storage, &retry).await?;
    if let Some(other) = present
        .iter()
        .find(|o| !o.key.starts_with(KEYS) && !o.key.starts_with(KEYRING))
    {
        let reason = format!(
            "it is not empty ({} objects, e.g. {}): a repository is made only on an empty target",
            present.len(),
            other.key
        );
        return Err(KeyringError::Refused { target, reason }.into());
    }
    copy_keys(from, storage, &present).await?;
    put(
        storage,
        &retry,
        CONFIG_KEY,
        new_config(&keyset).to_json().into(),
    )
    .await
}

/// Copies every keyring and bundle of `from` that `storage` lacks (of
/// `present`, what `storage` holds), as it is; an object there already
/// must be byte for byte `from`'s, else the two diverged and nothing more
/// is copied. Returns how many objects were copied.
pub async fn copy_keys(
    from: &Repository,
    storage: &dyn Storage,
    present: &[ObjectMeta],
) -> Result<u64> {
    let retry = RetryPolicy::default();
    let target = storage.describe();
    // Keyrings listed before bundles: a key change writes its bundles
    // before the keyring that names them, so every bundle a listed keyring
    // names is in the later listing. Keyrings are copied newest first: a
    // copy killed part-way never leaves `keyring/00000001` alone beside
    // bundles, which `resume` would take for a killed init of serial 1.
    let mut keyrings = from.list(KEYRING).await?;
    keyrings.sort_by(|a, b| b.key.cmp(&a.key));
    let mut copied = from.list(KEYS).await?;
    copied.extend(keyrings);
    let mut count = 0;
    for object in copied {
        let body = from.get_bytes(&object.key).await?;
        if present.iter().any(|o| o.key == object.key) {
            let there = retry
                .run(|| async { collect_bytes(storage.get(&object.key).await?).await })
                .await
                .map_err(|e| Error::Storage {
                    target: target.clone(),
                    cause: e,
                })?;
            if there != body {
                let reason = format!(
                    "{} there differs from {}'s: the two targets' keys diverged (or another \
                     key set was begun there); empty a target that holds no snapshots and run \
                     again, or keep the targets apart",
                    object.key,
                    from.describe()
                );
                return Err(KeyringError::Refused {
                    target: target.clone(),
                    reason,
                }
                .into());
            }
            continue;
        }
        put(storage, &retry, &object.key, body).await?;
        count += 1;
    }
    Ok(count)
}

/// Finishes the init a kill interrupted on `storage` (module doc): no
/// `config`, nothing but bundles and one first keyring, which `owner`
/// signed. Its bundles were all written before it, so what is missing is
/// the `config` of its key set, written here. `None` when the target is
/// not such a half-made repository.
async fn resume(
    storage: &dyn Storage,
    retry: &RetryPolicy,
    owner: &Owner,
    memory: Option<&KeysetMemory>,
) -> Result<Option<KeysetId>> {
    let existing = listed(storage, retry).await?;
    let first = keyring::keyring_key(1);
    let only_keys = existing
        .iter()
        .all(|o| o.key == first || o.key.starts_with(KEYS));
    if !only_keys || !existing.iter().any(|o| o.key == first) {
        return Ok(None);
    }
    let raw = retry
        .run(|| async { collect_bytes(storage.get(&first).await?).await })
        .await
        .map_err(|e| Error::Storage {
            target: storage.describe(),
            cause: e,
        })?;
    let Some((keyset, hash)) = keyring::first_signed_by(&owner.public(), &raw) else {
        return Ok(None);
    };
    // A host that trusted a later serial of this key set knows more keys
    // changed since: a lone first keyring is then a replay, not a kill.
    if memory.is_some_and(|m| m.serial(&keyset).ok().flatten() > Some(1)) {
        return Ok(None);
    }
    put(
        storage,
        retry,
        CONFIG_KEY,
        new_config(&keyset).to_json().into(),
    )
    .await?;
    if let Some(memory) = memory {
        memory.remember(&keyset, 1, &hash);
    }
    Ok(Some(keyset))
}

async fn listed(storage: &dyn Storage, retry: &RetryPolicy) -> Result<Vec<ObjectMeta>> {
    retry
        .run(|| list_all(storage, ""))
        .await
        .map_err(|e| Error::Storage {
            target: storage.describe(),
            cause: e,
        })
}

fn new_config(keyset: &KeysetId) -> RepoConfig {
    RepoConfig {
        id: hex::encode(rand::random::<[u8; 16]>()),
        created: Utc::now(),
        format: Format::V2 {
            keyset: keyset.clone(),
        },
    }
}

/// Refuses a target that holds anything but bundles: those are what an
/// init killed before its keyring leaves, named by no keyring, so a new
/// init beside them is sound (their keys were never used).
async fn ensure_empty(storage: &dyn Storage, retry: &RetryPolicy) -> Result<()> {
    let target = storage.describe();
    let existing = listed(storage, retry).await?;
    if let Some(first) = existing.iter().find(|o| !o.key.starts_with(KEYS)) {
        let reason = format!(
            "it is not empty ({} objects, e.g. {}): a repository is made only on an empty \
             target",
            existing.len(),
            first.key
        );
        return Err(KeyringError::Refused { target, reason }.into());
    }
    Ok(())
}

/// The bundles and the first keyring, as `(key, bytes)`, keyring last;
/// and the keyring object's hash.
fn first_objects(
    keyset: &KeysetId,
    owner: &Owner,
    recipients: &[NamedRecipient],
) -> Result<(Vec<(String, Bytes)>, String)> {
    let first = GenerationKeys::generate(1);
    let data = first.data.as_ref().expect("generated with a data key");
    let chunk_key = chunk_id_key(data);
    let generation = Generation {
        n: 1,
        data_recipient: data.to_public().to_string(),
        metadata_recipient: first.metadata.to_public().to_string(),
        created: Utc::now(),
    };
    let mut body = KeyringBody::first(
        keyset,
        &owner.public(),
        chunk_key_check(&chunk_key),
        generation,
    );
    let secrets = Bundle {
        holder: Holder::Recipient(owner.recipient()),
        generation: 1,
        chunk_key,
        generations: vec![first],
    };
    let owner_entry = NamedRecipient {
        name: "owner".into(),
        recipient: owner.recipient(),
    };
    let mut objects = Vec::new();
    for r in std::iter::once(&owner_entry).chain(recipients) {
        let public = r.recipient.to_string();
        if body.recipient(&public).is_some() {
            continue;
        }
        let holder = Holder::Recipient(r.recipient.clone());
        let key = bundle_key(1, &holder);
        objects.push((
            key.clone(),
            Bytes::from(secrets.for_holder(holder).seal(keyset)?),
        ));
        body.recipients.push(RecipientEntry {
            recipient: public,
            name: r.name.clone(),
            owner: body.recipients.is_empty(),
            added: Utc::now(),
            bundle: key,
        });
    }
    let key = keyring::keyring_key(1);
    body.validate(&key)?;
    let sealed = keyring::seal(&Signer::owner(owner.key(), keyset.clone()), &key, &body)?;
    let hash = blake3::hash(&sealed).to_hex().to_string();
    objects.push((key, Bytes::from(sealed)));
    Ok((objects, hash))
}

async fn put(storage: &dyn Storage, retry: &RetryPolicy, key: &str, body: Bytes) -> Result<()> {
    let len = body.len() as u64;
    store_checked(storage, retry, key, len, PutMode::Create, || {
        Ok(bytes_stream(body.clone()))
    })
    .await
}
