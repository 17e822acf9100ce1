//! `offsite init` (docs/design/format-v2.md, 2.5): a format 2 repository
//! with one new key set on every given, empty target. Generation 1's data
//! and metadata keys are random, the chunk-id key derives from the data
//! key; every target gets the same bundles (owner and recipients) and the
//! same owner-signed `keyring/00000001`, and its own `config`.
//!
//! `config` is written last on each target: a repository exists once its
//! config does, so an init killed before that leaves no repository, only
//! objects that make the target non-empty (the next init says so, and the
//! user empties it). An init never writes to a target that holds anything,
//! and never overwrites: every put is create-if-absent.

use std::sync::Arc;

use age::x25519;
use bytes::Bytes;
use chrono::Utc;

use super::{store_checked, Format, RepoConfig, CONFIG_KEY};
use crate::error::{Error, Result};
use crate::keyadmin::Owner;
use crate::keyring::{self, Generation, KeyringBody, KeyringError, KeysetMemory, RecipientEntry};
use crate::keys::bundle::{bundle_key, Bundle, GenerationKeys, Holder};
use crate::keys::v2::{chunk_id_key, chunk_key_check, KeysetId};
use crate::sign::Signer;
use crate::storage::{bytes_stream, list_all, PutMode, RetryPolicy, Storage};

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
        let config = RepoConfig {
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: Utc::now(),
            format: Format::V2 {
                keyset: keyset.clone(),
            },
        };
        put(
            storage.as_ref(),
            &retry,
            CONFIG_KEY,
            config.to_json().into(),
        )
        .await?;
    }
    if let Some(memory) = memory {
        memory.remember(&keyset, 1, &keyring_hash)?;
    }
    Ok(keyset)
}

async fn ensure_empty(storage: &dyn Storage, retry: &RetryPolicy) -> Result<()> {
    let target = storage.describe();
    let existing = retry
        .run(|| list_all(storage, ""))
        .await
        .map_err(|e| Error::Storage {
            target: target.clone(),
            cause: e,
        })?;
    if let Some(first) = existing.first() {
        let reason = format!(
            "it is not empty ({} objects, e.g. {}): offsite init makes a repository only on an \
             empty target",
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
