//! Key administration of a format 2 repository (docs/design/format-v2.md,
//! 2.6): add and remove recipients and writers, each a new owner-signed
//! keyring serial. Only the owner changes keys: every function takes the
//! [`Owner`] (its identity opens its own bundle, its derived key signs).
//!
//! Order and what an interruption leaves:
//! - adds take a **shared** lock (prune, which deletes unnamed bundles,
//!   stays away; backups go on), write the new holder's bundle, then
//!   publish the keyring naming it. Killed before the publish: an unnamed
//!   bundle, nothing else changed.
//! - removes take the **exclusive** lock, waiting for shared locks to go,
//!   so no backup runs with the old generation while the new one is made.
//!   They generate the next generation's keys, write a bundle for every
//!   remaining holder, check the lock is still held, publish the keyring,
//!   and only then delete the removed holder's bundles (made under the
//!   exclusive lock). Killed before the publish: unnamed bundles, the
//!   removal did not happen and running it again does it; killed after
//!   it: the removal happened, the old bundles are unnamed and prune
//!   deletes them.
//!
//! Never re-encrypts stored data (what `key remove` does not do: 2.7), and
//! never writes a keyring except through [`keyring::publish`].

use std::collections::HashMap;

use age::x25519;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::keyring::{
    self, Change, Generation, Keyring, KeyringBody, KeyringError, KeysetMemory, RecipientEntry,
    RemovedRecipient, WriterEntry,
};
use crate::keys::bundle::{bundle_key, Bundle, GenerationKeys, Holder};
use crate::keys::v2::{holder_id, OwnerKey, OwnerPublic, WriterPublic};
use crate::keys::Identities;
use crate::lock::{Lock, LockKind, LockWait};
use crate::repo::{Repository, KEYRING, KEYS};
use crate::storage::PutMode;

/// The owner: its age identity (which opens its bundle) and the signing
/// key derived from it.
#[derive(Clone)]
pub struct Owner {
    identity: x25519::Identity,
    key: OwnerKey,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Owner({})", self.key.public())
    }
}

impl Owner {
    pub fn new(identity: x25519::Identity) -> Owner {
        let key = OwnerKey::from_identity(&identity);
        Owner { identity, key }
    }

    /// The owner among `ids`: the identity whose owner key is `pin` when
    /// one is given, else the file's first identity.
    pub fn from_identities(ids: &Identities, pin: Option<&OwnerPublic>) -> Result<Owner> {
        let mut owners = ids.x25519().iter().map(|id| Owner::new(id.clone()));
        let found = match pin {
            None => owners.next(),
            Some(pin) => owners.find(|o| o.public() == *pin),
        };
        found.ok_or_else(|| {
            Error::Key(format!(
                "none of the identities gives the owner key {}: key changes need the owner's \
                 identity in encryption.identity_file",
                pin.map_or_else(String::new, ToString::to_string)
            ))
        })
    }

    pub fn public(&self) -> OwnerPublic {
        self.key.public()
    }

    pub fn key(&self) -> &OwnerKey {
        &self.key
    }

    pub fn identity(&self) -> &x25519::Identity {
        &self.identity
    }

    /// The owner's own recipient (`age1...`).
    pub fn recipient(&self) -> x25519::Recipient {
        self.identity.to_public()
    }
}

/// How an admin command runs: the host's key set memory and how long a
/// remove waits for shared locks.
#[derive(Debug, Clone, Default)]
pub struct AdminOptions {
    pub memory: Option<KeysetMemory>,
    pub lock_wait: LockWait,
}

/// What a key change did.
#[derive(Debug, Clone)]
pub struct KeyChange {
    /// The keyring now current.
    pub keyring: Keyring,
    /// Whether a new keyring was published (false: it already said so).
    pub changed: bool,
    /// Bundles deleted (a remove).
    pub deleted: Vec<String>,
}

/// The current keyring of `repo`, as `trust` signed it (`key list`).
pub async fn list(repo: &Repository, trust: &OwnerPublic, opts: &AdminOptions) -> Result<Keyring> {
    Keyring::open(repo, trust, opts.memory.as_ref()).await
}

/// `key add`: gives `recipient` a bundle of every generation.
pub async fn add_recipient(
    repo: &Repository,
    owner: &Owner,
    recipient: &x25519::Recipient,
    name: &str,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    let holder = Holder::Recipient(recipient.clone());
    let public = holder.public_string();
    let name = name.to_string();
    add(repo, owner, holder, "key add", opts, move |body, bundle| {
        if body.recipient(&public).is_some() {
            return Ok(Change::AlreadyDone);
        }
        body.recipients.push(RecipientEntry {
            recipient: public.clone(),
            name: name.clone(),
            owner: false,
            added: Utc::now(),
            bundle: bundle.to_string(),
        });
        Ok(Change::Made)
    })
    .await
}

/// `writer add`: gives the writer `key` a bundle of every metadata key.
pub async fn add_writer(
    repo: &Repository,
    owner: &Owner,
    name: &str,
    key: &WriterPublic,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    let public = key.to_string();
    let name = name.to_string();
    let target = repo.describe();
    let holder = Holder::Writer(key.clone());
    add(repo, owner, holder, "writer add", opts, move |body, bundle| {
        if let Some(w) = body.writers.iter().find(|w| w.key == public) {
            if w.name == name && w.valid_until.is_none() {
                return Ok(Change::AlreadyDone);
            }
            return Err(refused(&target, format!("writer key {public} was already used as writer {}; run `offsite writer keygen` for a new one", w.name)));
        }
        if body.writer(&name).is_some() {
            return Err(refused(&target, format!("a writer named {name} exists; remove it first or choose another name")));
        }
        body.writers.push(WriterEntry {
            name: name.clone(),
            key: public.clone(),
            added: Utc::now(),
            bundle: Some(bundle.to_string()),
            valid_until: None,
        });
        Ok(Change::Made)
    })
    .await
}

fn refused(target: &str, reason: String) -> Error {
    KeyringError::Refused {
        target: target.to_string(),
        reason,
    }
    .into()
}

/// The shared part of the adds: under a shared lock, write `holder`'s
/// bundle, then publish with `entry(body, bundle key)` applied.
async fn add(
    repo: &Repository,
    owner: &Owner,
    holder: Holder,
    operation: &str,
    opts: &AdminOptions,
    mut entry: impl FnMut(&mut KeyringBody, &str) -> Result<Change>,
) -> Result<KeyChange> {
    let lock = Lock::acquire(repo, LockKind::Shared, operation, opts.lock_wait).await?;
    let result = async {
        let memory = opts.memory.as_ref();
        let keyring = Keyring::open(repo, &owner.public(), memory).await?;
        if entry(&mut keyring.body.clone(), "")? == Change::AlreadyDone {
            return Ok(unchanged(keyring));
        }
        let (generation, start) = (keyring.body.generation, keyring.serial());
        let mine = owner_bundle(repo, owner, &keyring).await?;
        let key = bundle_key(generation, &holder);
        write_bundle(repo, &mine.for_holder(holder), &key).await?;
        // Bundles no keyring names are prune's to delete (the design's
        // 4.5): if this lock expired meanwhile, a prune may have deleted the
        // bundle just written, and a keyring must never name a missing one.
        lock.ensure_held().await?;
        let target = repo.describe();
        let published = keyring::publish(repo, owner.key(), keyring, memory, |body| {
            // A remove (exclusive lock) cannot run meanwhile; checked anyway.
            if body.generation != generation {
                return Err(refused(
                    &target,
                    "a new generation started meanwhile; run it again".into(),
                ));
            }
            entry(body, &key)
        })
        .await?;
        let changed = published.serial() != start;
        Ok(KeyChange {
            keyring: published,
            changed,
            deleted: Vec::new(),
        })
    }
    .await;
    lock.release().await;
    result
}

fn unchanged(keyring: Keyring) -> KeyChange {
    KeyChange {
        keyring,
        changed: false,
        deleted: Vec::new(),
    }
}

/// `key remove`: starts a new generation without `recipient`, then deletes
/// its bundles. The last recipient and the owner's own are refused.
pub async fn remove_recipient(
    repo: &Repository,
    owner: &Owner,
    recipient: &str,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    let target = repo.describe();
    let public = recipient.trim().to_string();
    remove(
        repo,
        owner,
        &public.clone(),
        "key remove",
        opts,
        move |body| {
            let Some(entry) = body.recipient(&public).cloned() else {
                if body
                    .removed_recipients
                    .iter()
                    .any(|r| r.recipient == public)
                {
                    return Ok(Change::AlreadyDone);
                }
                return Err(refused(
                    &target,
                    format!("{public} is not a recipient (see `offsite key list`)"),
                ));
            };
            if entry.owner {
                return Err(refused(
                    &target,
                    format!("{public} is the owner's own recipient; the owner cannot be removed"),
                ));
            }
            if body.recipients.len() == 1 {
                return Err(refused(
                    &target,
                    "the last recipient cannot be removed".into(),
                ));
            }
            body.recipients.retain(|r| r.recipient != public);
            body.removed_recipients.push(RemovedRecipient {
                recipient: public.clone(),
                name: entry.name,
                removed: Utc::now(),
                last_generation: body.generation,
            });
            Ok(Change::Made)
        },
    )
    .await
}

/// `writer remove`: sets the writer's `valid_until` (now, or `since` when
/// its key may have been taken earlier), starts a new generation and
/// deletes its bundles, exactly as [`remove_recipient`].
pub async fn remove_writer(
    repo: &Repository,
    owner: &Owner,
    name: &str,
    since: Option<DateTime<Utc>>,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    let target = repo.describe();
    let keyring = Keyring::open(repo, &owner.public(), opts.memory.as_ref()).await?;
    // The valid writer of that name; else the last removed one, so that a
    // remove interrupted after its publish finishes when run again.
    let named = keyring.body.writer(name).or_else(|| {
        let mut removed = keyring.body.writers.iter().filter(|w| w.name == name);
        removed.next_back()
    });
    let Some(public) = named.map(|w| w.key.clone()) else {
        return Err(refused(
            &target,
            format!("no writer named {name} (see `offsite writer list`)"),
        ));
    };
    let name = name.to_string();
    let key = public.clone();
    remove(repo, owner, &public, "writer remove", opts, move |body| {
        let Some(w) = body.writers.iter_mut().find(|w| w.key == key) else {
            return Err(refused(&target, format!("no writer named {name}")));
        };
        if w.valid_until.is_some() {
            return Ok(Change::AlreadyDone);
        }
        w.valid_until = Some(since.unwrap_or_else(Utc::now));
        w.bundle = None;
        Ok(Change::Made)
    })
    .await
}

/// The shared part of the removes: under the exclusive lock (waiting for
/// shared ones), `leave` takes the holder `public` out; a new generation
/// starts with a bundle for every remaining holder; then the holder's
/// bundles are deleted.
async fn remove(
    repo: &Repository,
    owner: &Owner,
    public: &str,
    operation: &str,
    opts: &AdminOptions,
    leave: impl FnMut(&mut KeyringBody) -> Result<Change>,
) -> Result<KeyChange> {
    let lock = Lock::acquire_waiting(repo, operation, opts.lock_wait).await?;
    let result = remove_locked(repo, owner, public, opts, &lock, leave).await;
    lock.release().await;
    result
}

async fn remove_locked(
    repo: &Repository,
    owner: &Owner,
    public: &str,
    opts: &AdminOptions,
    lock: &Lock,
    mut leave: impl FnMut(&mut KeyringBody) -> Result<Change>,
) -> Result<KeyChange> {
    let memory = opts.memory.as_ref();
    let keyring = Keyring::open(repo, &owner.public(), memory).await?;
    let mut after = keyring.body.clone();
    if leave(&mut after)? == Change::AlreadyDone {
        // Published before an interruption: finish the deletion.
        let deleted = delete_bundles(repo, public).await?;
        return Ok(KeyChange {
            deleted,
            ..unchanged(keyring)
        });
    }
    let mut secrets = owner_bundle(repo, owner, &keyring).await?;
    let next = GenerationKeys::generate(keyring.body.generation + 1);
    let generation = public_generation(&next);
    secrets.generation = next.n;
    secrets.generations.push(next);
    let names = write_generation_bundles(repo, &after, &secrets).await?;
    lock.ensure_held().await?;
    let (old, start) = (keyring.body.generation, keyring.serial());
    let target = repo.describe();
    let published = keyring::publish(repo, owner.key(), keyring, memory, |body| {
        if body.generation != old {
            return Err(refused(
                &target,
                "a new generation started meanwhile; run it again".into(),
            ));
        }
        let change = leave(body)?;
        if change == Change::Made {
            start_generation(body, generation.clone(), &names, &target)?;
        }
        Ok(change)
    })
    .await?;
    let deleted = delete_bundles(repo, public).await?;
    Ok(KeyChange {
        changed: published.serial() != start,
        keyring: published,
        deleted,
    })
}

/// The public half of a generation's keys, for the keyring.
fn public_generation(keys: &GenerationKeys) -> Generation {
    Generation {
        n: keys.n,
        data_recipient: keys
            .data
            .as_ref()
            .expect("generated with a data key")
            .to_public()
            .to_string(),
        metadata_recipient: keys.metadata.to_public().to_string(),
        created: Utc::now(),
    }
}

/// Writes `secrets` for every recipient and valid writer of `body`;
/// returns each holder's new bundle key by its public string.
async fn write_generation_bundles(
    repo: &Repository,
    body: &KeyringBody,
    secrets: &Bundle,
) -> Result<HashMap<String, String>> {
    let mut holders = Vec::new();
    for r in &body.recipients {
        let parsed = r
            .recipient
            .parse()
            .map_err(|e: &str| Error::Key(e.to_string()))?;
        holders.push(Holder::Recipient(parsed));
    }
    for w in body.writers.iter().filter(|w| w.valid_until.is_none()) {
        holders.push(Holder::Writer(
            w.key.parse().map_err(|e| Error::Key(format!("{e}")))?,
        ));
    }
    let mut names = HashMap::new();
    for holder in holders {
        let key = bundle_key(secrets.generation, &holder);
        write_bundle(repo, &secrets.for_holder(holder.clone()), &key).await?;
        names.insert(holder.public_string(), key);
    }
    Ok(names)
}

/// Makes `generation` current in `body` and points every holder at its
/// new bundle in `names`.
fn start_generation(
    body: &mut KeyringBody,
    generation: Generation,
    names: &HashMap<String, String>,
    target: &str,
) -> Result<()> {
    let bundle = |public: &str| {
        names.get(public).cloned().ok_or_else(|| {
            refused(
                target,
                format!("{public} was added meanwhile; run it again"),
            )
        })
    };
    body.generation = generation.n;
    body.generations.push(generation);
    for r in &mut body.recipients {
        r.bundle = bundle(&r.recipient)?;
    }
    for w in body.writers.iter_mut().filter(|w| w.valid_until.is_none()) {
        w.bundle = Some(bundle(&w.key)?);
    }
    Ok(())
}

/// Deletes every bundle of the holder `public` (`keys/*/<its id>-*`).
async fn delete_bundles(repo: &Repository, public: &str) -> Result<Vec<String>> {
    let id = holder_id(public);
    let mut deleted = Vec::new();
    for meta in repo.list(KEYS).await? {
        let name = meta.key.rsplit('/').next().unwrap_or_default();
        if name
            .strip_prefix(id.as_str())
            .is_some_and(|r| r.starts_with('-'))
        {
            repo.delete(&meta.key).await?;
            deleted.push(meta.key);
        }
    }
    Ok(deleted)
}

/// The owner's own bundle, checked against `keyring`.
pub async fn owner_bundle(repo: &Repository, owner: &Owner, keyring: &Keyring) -> Result<Bundle> {
    let recipient = owner.recipient().to_string();
    let entry = keyring
        .body
        .recipient(&recipient)
        .ok_or_else(|| KeyringError::NoBundle {
            target: repo.describe(),
            holder: recipient.clone(),
        })?;
    let raw = repo.get_bytes(&entry.bundle).await?;
    Bundle::open(
        &raw,
        &entry.bundle,
        owner.identity(),
        &Holder::Recipient(owner.recipient()),
        &keyring.body,
    )
}

/// The bundle of the recipient `identity` according to `keyring`, checked.
pub async fn recipient_bundle(
    repo: &Repository,
    identity: &x25519::Identity,
    keyring: &Keyring,
) -> Result<Bundle> {
    let recipient = identity.to_public();
    let public = recipient.to_string();
    let entry = keyring
        .body
        .recipient(&public)
        .ok_or_else(|| KeyringError::NoBundle {
            target: repo.describe(),
            holder: public.clone(),
        })?;
    let raw = repo.get_bytes(&entry.bundle).await?;
    Bundle::open(
        &raw,
        &entry.bundle,
        identity,
        &Holder::Recipient(recipient),
        &keyring.body,
    )
}

/// Writes one bundle under its fresh name (create-if-absent).
async fn write_bundle(repo: &Repository, bundle: &Bundle, key: &str) -> Result<()> {
    let keyset = repo.config().keyset().ok_or_else(|| Error::NotFormat2 {
        target: repo.describe(),
    })?;
    let sealed = bundle.seal(keyset)?;
    crate::failpoint::hit("keys.bundle").map_err(|e| Error::io(format!("writing {key}"), e))?;
    repo.put_bytes(key, Bytes::from(sealed), PutMode::Create)
        .await
}

/// Makes `to`, a target of `from`'s key set, hold `from`'s keyring chain
/// and bundles: after a key change made on `from`, or for a target that
/// missed one (it was down). One key set's targets then hold the very same
/// keyrings and generation keys, so a host's memory of the newest serial
/// holds for each of them and a restore can take chunks from any of them.
/// What `to` lacks is copied as it is ([`init::copy_keys`]: signed, and
/// encrypted to their holders, the objects mean the same anywhere), under
/// the lock the change took (`exclusive` for a removal: no backup on `to`
/// runs with the old generation meanwhile); then, as `key remove` does,
/// bundles `from` no longer holds (and `to`'s newest keyring does not
/// name) are deleted under the exclusive lock. Refused, nothing written, when the two hold different
/// objects under one name (their keys diverged: earlier releases changed
/// each target on its own). The new keyring is checked as every open
/// checks it, against `owner`, and remembered.
pub async fn bring_level(
    from: &Repository,
    to: &Repository,
    owner: &Owner,
    exclusive: bool,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    if from.config().keyset() != to.config().keyset() {
        let reason = format!("it is of another key set than {}", from.describe());
        return Err(refused(&to.describe(), reason));
    }
    // The locks the change took on `from`: a removal's exclusive one waits
    // for running backups, as `key remove` does.
    let lock = match exclusive {
        true => Lock::acquire_waiting(to, "key change", opts.lock_wait).await?,
        false => Lock::acquire(to, LockKind::Shared, "key change", opts.lock_wait).await?,
    };
    let result = level_locked(from, to, owner, exclusive, opts).await;
    lock.release().await;
    result
}

async fn level_locked(
    from: &Repository,
    to: &Repository,
    owner: &Owner,
    exclusive: bool,
    opts: &AdminOptions,
) -> Result<KeyChange> {
    let mut present = to.list(KEYRING).await?;
    present.extend(to.list(KEYS).await?);
    let copied = crate::repo::init::copy_keys(from, to.storage().as_ref(), &present).await?;
    let keyring = Keyring::open(to, &owner.public(), opts.memory.as_ref()).await?;
    let mut deleted = Vec::new();
    if exclusive {
        // What `from` no longer holds: the removed holder's bundles, which
        // its removal deleted there (never one the keyring names: that
        // one `from` holds, and it was just checked by the open above).
        let kept: Vec<String> = (from.list(KEYS).await?.into_iter())
            .map(|m| m.key)
            .collect();
        for meta in to.list(KEYS).await? {
            if !kept.contains(&meta.key) && !keyring.body.names_bundle(&meta.key) {
                to.delete(&meta.key).await?;
                deleted.push(meta.key);
            }
        }
    }
    Ok(KeyChange {
        keyring,
        changed: copied > 0,
        deleted,
    })
}
