//! Format 2 keyrings and key bundles (docs/design/format-v2.md, 2.2 to
//! 2.6) on in-memory targets with real age keys: what a host trusts, what
//! it refuses, and what concurrent or interrupted key changes leave.
//! Fail-points are armed here, so these run in a process of their own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use backup_core::error::Error;
use backup_core::failpoint::{self, Action};
use backup_core::keyadmin::{self, AdminOptions, Owner};
use backup_core::keyring::{keyring_key, Keyring, KeyringBody, KeyringError, KeysetMemory};
use backup_core::keys::bundle::{Bundle, GenerationKeys, Holder};
use backup_core::keys::{generate_identity, Identities, WriterKey};
use backup_core::lock::{Lock, LockKind, LockWait};
use backup_core::repo::init::{init, NamedRecipient};
use backup_core::repo::Repository;
use backup_core::sign::Signer;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{bytes_stream, ByteStream, ObjectMeta, PutMode, Storage, StorageError};

mod support;
use support::{keys_under, Wrapped, Wrapper};

/// A fresh age identity (real key), as the X25519 identity.
fn identity() -> age::x25519::Identity {
    let (text, _) = generate_identity();
    Identities::parse(&text, "test").unwrap().x25519()[0].clone()
}

struct Repo {
    mem: Arc<MemoryStorage>,
    repo: Repository,
    owner: Owner,
    opts: AdminOptions,
    _state: tempfile::TempDir,
}

/// A new format 2 repository on `storage` (whose inner store is `mem`),
/// owned by a fresh identity, with this host's key set memory.
async fn repo_on(mem: Arc<MemoryStorage>, storage: Arc<dyn Storage>) -> Repo {
    let owner = Owner::new(identity());
    let state = tempfile::tempdir().unwrap();
    let memory = KeysetMemory::at(state.path());
    init(std::slice::from_ref(&storage), &owner, &[], Some(&memory))
        .await
        .unwrap();
    let opts = AdminOptions {
        memory: Some(memory),
        lock_wait: LockWait {
            wait: std::time::Duration::from_secs(600),
            poll: std::time::Duration::from_millis(5),
        },
    };
    Repo {
        mem,
        repo: Repository::open_v2(storage).await.unwrap(),
        owner,
        opts,
        _state: state,
    }
}

async fn repo() -> Repo {
    let mem = Arc::new(MemoryStorage::default());
    repo_on(mem.clone(), mem).await
}

impl Repo {
    async fn keyring(&self) -> Result<Keyring, Error> {
        Keyring::open(&self.repo, &self.owner.public(), self.opts.memory.as_ref()).await
    }

    async fn add(&self, id: &age::x25519::Identity, name: &str) {
        keyadmin::add_recipient(&self.repo, &self.owner, &id.to_public(), name, &self.opts)
            .await
            .unwrap();
    }

    async fn put(&self, key: &str, data: Vec<u8>) {
        self.mem.delete(key).await.ok();
        self.mem
            .put(key, bytes_stream(data), PutMode::Create)
            .await
            .unwrap();
    }
}

/// Fail-points are process-wide: every test here but the one that arms
/// them holds this guard (arming nothing), so none runs while they are armed.
fn no_fail_points() -> failpoint::Armed {
    failpoint::arm(&[])
}

fn keyring_error(e: Error) -> KeyringError {
    match e {
        Error::Keyring(k) => k,
        other => panic!("expected a keyring error, got {other:?}"),
    }
}

/// The host remembers serial 2; the target lost it (deleted, or restored
/// from an old copy): refused, naming both. A keyring copied under another
/// serial is passed over (the signature binds its name).
#[tokio::test]
async fn a_rolled_back_keyring_is_refused() {
    let _serial = no_fail_points();
    let r = repo().await;
    r.add(&identity(), "colleague").await;
    assert_eq!(r.keyring().await.unwrap().serial(), 2);

    let second = support_get(&r.mem, &keyring_key(2)).await;
    r.mem.delete(&keyring_key(2)).await.unwrap();
    let e = keyring_error(r.keyring().await.unwrap_err());
    assert!(
        matches!(
            e,
            KeyringError::RolledBack {
                newest: 1,
                remembered: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("keyring/00000002 is gone; this host last trusted serial 2"),
        "{e}"
    );
    // A host that never saw serial 2 trusts serial 1 (open question 2).
    let fresh = Keyring::open(&r.repo, &r.owner.public(), None)
        .await
        .unwrap();
    assert_eq!(fresh.serial(), 1);

    // Serial 2's genuine bytes moved to serial 3: not a keyring of serial 3.
    r.put(&keyring_key(3), second.clone()).await;
    let fresh = Keyring::open(&r.repo, &r.owner.public(), None)
        .await
        .unwrap();
    assert_eq!(fresh.serial(), 1);
    assert!(
        fresh.warnings[0].contains("keyring/00000003")
            && fresh.warnings[0].contains("does not match"),
        "{:?}",
        fresh.warnings
    );
    // Put back where it belongs, it is trusted again.
    r.put(&keyring_key(2), second).await;
    r.mem.delete(&keyring_key(3)).await.unwrap();
    assert_eq!(r.keyring().await.unwrap().serial(), 2);
}

async fn support_get(mem: &MemoryStorage, key: &str) -> Vec<u8> {
    backup_core::storage::collect_bytes(mem.get(key).await.unwrap())
        .await
        .unwrap()
        .to_vec()
}

/// A keyring signed by someone else (adding their own recipient) is passed
/// over with a warning, and blocks the next publish with a clear error
/// instead of being built on; a changed genuine keyring is refused whole.
#[tokio::test]
async fn a_forged_keyring_is_refused() {
    let _serial = no_fail_points();
    let r = repo().await;
    let genuine = r.keyring().await.unwrap();
    let attacker = Owner::new(identity());
    let mut forged: KeyringBody = genuine.body.clone();
    forged.serial = 2;
    forged.previous = Some(genuine.hash.clone());
    forged.recipients[0].name = "mallory".into();
    let key = keyring_key(2);
    let keyset = r.repo.config().keyset().unwrap().clone();
    let mut json = serde_json::to_vec_pretty(&forged).unwrap();
    json.push(b'\n');
    let sealed = Signer::owner(attacker.key(), keyset)
        .seal(&key, json)
        .unwrap();
    r.put(&key, sealed).await;

    // Junk beside it: a serial 0 and a name that is no serial.
    r.put(&keyring_key(0), b"junk".to_vec()).await;
    r.put("keyring/latest", b"junk".to_vec()).await;
    let opened = r.keyring().await.unwrap();
    assert_eq!(opened.serial(), 1);
    assert_eq!(opened.body, genuine.body);
    // Serial 0 is older than the one that counts: never read.
    assert_eq!(opened.warnings.len(), 2, "{:?}", opened.warnings);
    assert!(opened
        .warnings
        .iter()
        .any(|w| w.contains("keyring/latest: not a keyring name")));
    assert!(
        opened.warnings.iter().any(
            |w| w.contains("keyring/00000002 is signed by offsite-owner1")
                && w.contains("not a signer of this key set")
        ),
        "{:?}",
        opened.warnings
    );
    let e = keyadmin::add_recipient(&r.repo, &r.owner, &identity().to_public(), "x", &r.opts)
        .await
        .unwrap_err();
    assert!(
        matches!(keyring_error(e), KeyringError::Squatted { serial: 2, .. }),
        "the publish must not build on a forged serial"
    );
    assert!(keys_under(&r.mem, "locks/").is_empty());

    // The genuine keyring, one byte changed: nothing is trusted (serial 0's
    // junk is read too, and refused like the rest).
    r.mem.delete(&key).await.unwrap();
    r.mem.tamper(&keyring_key(1), |d| d[40] ^= 0x01);
    let e = keyring_error(r.keyring().await.unwrap_err());
    assert!(matches!(e, KeyringError::NoneTrusted { .. }), "{e:?}");
    assert!(e.to_string().contains("keyring/00000001"), "{e}");
}

/// A bundle replaced by one encrypted to the same holder but holding other
/// keys (anyone can encrypt to a public recipient) is refused by name.
#[tokio::test]
async fn a_forged_bundle_is_refused() {
    let _serial = no_fail_points();
    let r = repo().await;
    let colleague = identity();
    r.add(&colleague, "colleague").await;
    let keyring = r.keyring().await.unwrap();
    let genuine = keyadmin::recipient_bundle(&r.repo, &colleague, &keyring)
        .await
        .unwrap();
    assert_eq!(genuine.generations.len(), 1);
    assert!(genuine.generations[0].data.is_some());

    let entry = keyring
        .body
        .recipient(&colleague.to_public().to_string())
        .unwrap()
        .clone();
    let keyset = r.repo.config().keyset().unwrap().clone();
    let other_keys = Bundle {
        holder: Holder::Recipient(colleague.to_public()),
        generations: vec![GenerationKeys::generate(1)],
        ..genuine.clone()
    };
    r.put(&entry.bundle, other_keys.seal(&keyset).unwrap())
        .await;
    let e = keyadmin::recipient_bundle(&r.repo, &colleague, &keyring)
        .await
        .unwrap_err();
    let e = keyring_error(e);
    assert!(matches!(e, KeyringError::ForgedBundle { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&entry.bundle)
            && e.to_string().contains("not the keys the keyring names")
            && e.to_string().contains("data key is not the keyring's"),
        "{e}"
    );

    // The owner's bundle swapped for the colleague's genuine one: it is
    // not wrapped to the owner, so it does not even decrypt.
    let owner_entry = keyring.body.recipients[0].clone();
    r.put(&owner_entry.bundle, genuine.seal(&keyset).unwrap())
        .await;
    let e = keyadmin::owner_bundle(&r.repo, &r.owner, &keyring)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongIdentity { .. }), "{e:?}");
    // Re-encrypted to the owner, it names the wrong holder.
    let relabelled = Bundle {
        holder: Holder::Recipient(r.owner.recipient()),
        chunk_key: [7; 32],
        ..genuine
    };
    r.put(&owner_entry.bundle, relabelled.seal(&keyset).unwrap())
        .await;
    let e = keyring_error(
        keyadmin::owner_bundle(&r.repo, &r.owner, &keyring)
            .await
            .unwrap_err(),
    );
    assert!(e.to_string().contains("chunk key does not match"), "{e}");
}

/// A target whose puts each yield once, so two commands joined together
/// interleave at every put; counts creates of `keyring/` that lost a race.
#[derive(Debug)]
struct Interleaving {
    inner: Arc<MemoryStorage>,
    lost_races: Arc<AtomicUsize>,
}

#[async_trait]
impl Wrapper for Interleaving {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    fn describe(&self) -> String {
        "interleaving".into()
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        tokio::task::yield_now().await;
        let result = self.inner.put(key, body, mode).await;
        if key.starts_with("keyring/") && result.is_err() {
            self.lost_races.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

/// Two admins add a recipient at once: one wins serial 2, the other finds
/// it taken, re-reads and publishes serial 3 with both; each new identity
/// opens its own bundle.
#[tokio::test]
async fn concurrent_key_adds_both_land() {
    let _serial = no_fail_points();
    let mem = Arc::new(MemoryStorage::default());
    let lost_races = Arc::new(AtomicUsize::new(0));
    let storage = Arc::new(Wrapped(Interleaving {
        inner: mem.clone(),
        lost_races: lost_races.clone(),
    }));
    let r = repo_on(mem, storage).await;
    let (a, b) = (identity(), identity());
    let (pa, pb) = (a.to_public(), b.to_public());
    let (ra, rb) = tokio::join!(
        keyadmin::add_recipient(&r.repo, &r.owner, &pa, "a", &r.opts),
        keyadmin::add_recipient(&r.repo, &r.owner, &pb, "b", &r.opts),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(ra.changed && rb.changed);
    assert_eq!(lost_races.load(Ordering::SeqCst), 1, "the adds raced");

    let keyring = r.keyring().await.unwrap();
    assert_eq!(keyring.serial(), 3);
    let names: Vec<&str> = keyring
        .body
        .recipients
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"a") && names.contains(&"b"), "{names:?}");
    for id in [&a, &b] {
        let bundle = keyadmin::recipient_bundle(&r.repo, id, &keyring)
            .await
            .unwrap();
        assert_eq!(bundle.generation, 1);
    }
    assert_eq!(keys_under(&r.mem, "keyring/").len(), 3);
}

/// The keyring objects and their bytes: what decides what a reader trusts.
async fn visible(r: &Repo) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for key in keys_under(&r.mem, "keyring/") {
        out.push((key.clone(), support_get(&r.mem, &key).await));
    }
    out
}

/// `key remove` failing while it writes the new bundles (`keys.bundle`)
/// or the keyring (`keyring.publish`): the keyring and every named bundle
/// stay as they were, the removed identity still opens its bundle, no lock
/// is left; run again, the removal happens and its bundles are deleted.
#[tokio::test]
async fn interrupted_key_remove_changes_nothing() {
    let r = repo().await;
    let bob = identity();
    r.add(&bob, "bob").await;
    let writer = WriterKey::generate();
    keyadmin::add_writer(&r.repo, &r.owner, "app-1", &writer.public(), &r.opts)
        .await
        .unwrap();
    let before = visible(&r).await;
    let bob_public = bob.to_public().to_string();

    for point in [("keys.bundle", Some(2)), ("keyring.publish", None)] {
        let armed = failpoint::arm(&[(point.0, Action::Error, point.1)]);
        let e = keyadmin::remove_recipient(&r.repo, &r.owner, &bob_public, &r.opts)
            .await
            .unwrap_err();
        drop(armed);
        assert!(e.to_string().contains("fail-point"), "{e}");
        assert_eq!(visible(&r).await, before, "{} changed the keyring", point.0);
        let keyring = r.keyring().await.unwrap();
        assert_eq!(keyring.serial(), 3);
        keyadmin::recipient_bundle(&r.repo, &bob, &keyring)
            .await
            .unwrap();
        assert!(keys_under(&r.mem, "locks/").is_empty(), "{}", point.0);
    }

    let done = keyadmin::remove_recipient(&r.repo, &r.owner, &bob_public, &r.opts)
        .await
        .unwrap();
    assert!(done.changed);
    let keyring = r.keyring().await.unwrap();
    assert_eq!((keyring.serial(), keyring.body.generation), (4, 2));
    assert!(keyring.body.recipient(&bob_public).is_none());
    assert_eq!(keyring.body.removed_recipients[0].last_generation, 1);
    // Bob's bundles are gone; the owner's and the writer's are of generation 2.
    let bob_id = backup_core::keys::v2::holder_id(&bob_public);
    assert!(!done.deleted.is_empty());
    assert!(keys_under(&r.mem, "keys/")
        .iter()
        .all(|k| !k.contains(&bob_id)));
    let e = keyadmin::recipient_bundle(&r.repo, &bob, &keyring)
        .await
        .unwrap_err();
    assert!(matches!(keyring_error(e), KeyringError::NoBundle { .. }));
    let mine = keyadmin::owner_bundle(&r.repo, &r.owner, &keyring)
        .await
        .unwrap();
    assert_eq!(mine.generations.len(), 2);
    let w = &keyring.body.writers[0];
    assert!(w.bundle.as_deref().unwrap().starts_with("keys/0002/"));

    // Again: already removed, nothing published.
    let again = keyadmin::remove_recipient(&r.repo, &r.owner, &bob_public, &r.opts)
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(r.keyring().await.unwrap().serial(), 4);
}

/// A target that counts the lock objects written.
#[derive(Debug)]
struct CountingLocks {
    inner: Arc<MemoryStorage>,
    lock_puts: Arc<AtomicUsize>,
}

#[async_trait]
impl Wrapper for CountingLocks {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    fn describe(&self) -> String {
        "counting".into()
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        if key.starts_with("locks/") {
            self.lock_puts.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.put(key, body, mode).await
    }
}

/// While a backup holds a shared lock, `key remove` waits (it tries again
/// and again without publishing); it goes ahead once the lock is released.
/// With no time left to wait it gives up naming the holder.
#[tokio::test]
async fn key_remove_waits_for_shared_locks() {
    let _serial = no_fail_points();
    let mem = Arc::new(MemoryStorage::default());
    let lock_puts = Arc::new(AtomicUsize::new(0));
    let storage = Arc::new(Wrapped(CountingLocks {
        inner: mem.clone(),
        lock_puts: lock_puts.clone(),
    }));
    let r = Arc::new(repo_on(mem, storage).await);
    let bob = identity();
    r.add(&bob, "bob").await;
    let backup = Lock::acquire(&r.repo, LockKind::Shared, "backup", LockWait::default())
        .await
        .unwrap();
    let bob_public = bob.to_public().to_string();

    let no_wait = AdminOptions {
        lock_wait: LockWait {
            wait: std::time::Duration::ZERO,
            poll: std::time::Duration::ZERO,
        },
        ..r.opts.clone()
    };
    let e = keyadmin::remove_recipient(&r.repo, &r.owner, &bob_public, &no_wait)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e:?}");
    assert!(e.to_string().contains("backup on host"), "{e}");

    let puts_before = lock_puts.load(Ordering::SeqCst);
    let remover = {
        let r = r.clone();
        let bob_public = bob_public.clone();
        tokio::spawn(async move {
            keyadmin::remove_recipient(&r.repo, &r.owner, &bob_public, &r.opts).await
        })
    };
    while lock_puts.load(Ordering::SeqCst) < puts_before + 3 && !remover.is_finished() {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(!remover.is_finished());
    assert_eq!(
        r.keyring().await.unwrap().serial(),
        2,
        "published while locked"
    );
    backup.release().await;
    let done = remover.await.unwrap().unwrap();
    assert!(done.changed);
    assert_eq!(r.keyring().await.unwrap().body.generation, 2);
    assert!(keys_under(&r.mem, "locks/").is_empty());
}

/// Writers get metadata keys only; a removed writer keeps its entry with
/// `valid_until` and loses its bundle; a recipient already there is no
/// change; the owner and unknown recipients cannot be removed.
#[tokio::test]
async fn writers_get_metadata_keys_only_and_removals_are_checked() {
    let _serial = no_fail_points();
    let r = repo().await;
    let writer = WriterKey::generate();
    let added = keyadmin::add_writer(&r.repo, &r.owner, "app-1", &writer.public(), &r.opts)
        .await
        .unwrap();
    let entry = added.keyring.body.writer("app-1").unwrap().clone();
    let raw = support_get(&r.mem, entry.bundle.as_deref().unwrap()).await;
    let bundle = Bundle::open(
        &raw,
        "b",
        writer.box_identity(),
        &Holder::Writer(writer.public()),
        &added.keyring.body,
    )
    .unwrap();
    assert!(bundle.generations.iter().all(|g| g.data.is_none()));

    let owner_public = r.owner.recipient().to_string();
    let e = keyadmin::remove_recipient(&r.repo, &r.owner, &owner_public, &r.opts)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("owner's own recipient"), "{e}");
    let stranger = identity().to_public().to_string();
    let e = keyadmin::remove_recipient(&r.repo, &r.owner, &stranger, &r.opts)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not a recipient"), "{e}");
    let same = keyadmin::add_recipient(&r.repo, &r.owner, &r.owner.recipient(), "o", &r.opts)
        .await
        .unwrap();
    assert!(!same.changed);

    let removed = keyadmin::remove_writer(&r.repo, &r.owner, "app-1", None, &r.opts)
        .await
        .unwrap();
    let w = &removed.keyring.body.writers[0];
    assert!(w.valid_until.is_some() && w.bundle.is_none());
    assert_eq!(removed.keyring.body.generation, 2);
    assert!(removed.deleted.contains(entry.bundle.as_ref().unwrap()));
    let again = keyadmin::remove_writer(&r.repo, &r.owner, "app-1", None, &r.opts)
        .await
        .unwrap();
    assert!(!again.changed, "removed before: nothing published");
    // The name is free for the host's new key.
    let replacement = WriterKey::generate();
    keyadmin::add_writer(&r.repo, &r.owner, "app-1", &replacement.public(), &r.opts)
        .await
        .unwrap();
    let e = keyadmin::add_writer(&r.repo, &r.owner, "app-2", &writer.public(), &r.opts)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already used"), "{e}");

    // And a recipient given at init has its bundle.
    let colleague = identity();
    let mem = Arc::new(MemoryStorage::default());
    let recipients = [NamedRecipient {
        name: "colleague".into(),
        recipient: colleague.to_public(),
    }];
    init(
        &[mem.clone() as Arc<dyn Storage>],
        &r.owner,
        &recipients,
        None,
    )
    .await
    .unwrap();
    let repo = Repository::open_v2(mem.clone()).await.unwrap();
    let keyring = Keyring::open(&repo, &r.owner.public(), None).await.unwrap();
    keyadmin::recipient_bundle(&repo, &colleague, &keyring)
        .await
        .unwrap();
    let e = init(&[mem as Arc<dyn Storage>], &r.owner, &[], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is not empty"), "{e}");
}

/// A target on which this add's lock disappears (it expired and another
/// run removed it) once the new bundle is written.
#[derive(Debug)]
struct LockLostAfterBundle {
    inner: Arc<MemoryStorage>,
}

#[async_trait]
impl Wrapper for LockLostAfterBundle {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    fn describe(&self) -> String {
        "lock-lost".into()
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        let stored = self.inner.put(key, body, mode).await?;
        if key.starts_with("keys/") {
            for lock in keys_under(&self.inner, "locks/") {
                self.inner.delete(&lock).await.unwrap();
            }
        }
        Ok(stored)
    }
}

/// An add whose lock was lost while it wrote the bundle publishes nothing:
/// a prune holding the lock meanwhile may have deleted that bundle, and a
/// keyring must never name a missing one.
#[tokio::test]
async fn an_add_that_lost_its_lock_publishes_nothing() {
    let _serial = no_fail_points();
    let mem = Arc::new(MemoryStorage::default());
    let storage = Arc::new(Wrapped(LockLostAfterBundle { inner: mem.clone() }));
    let r = repo_on(mem, storage).await;
    let e = keyadmin::add_recipient(&r.repo, &r.owner, &identity().to_public(), "late", &r.opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Locked { .. }), "{e:?}");
    assert_eq!(r.keyring().await.unwrap().serial(), 1, "published anyway");
}

/// An init killed after any of its puts (bundles, then the keyring, then
/// `config`) leaves no repository, and the next init of that target by the
/// same owner makes a whole one: it writes the missing `config` for the
/// keyring that was published (which stays as it was), or a new key set
/// beside bundles no keyring names. Another owner's half-made target is
/// refused, nothing written.
#[tokio::test]
async fn an_interrupted_init_is_finished_by_the_next() {
    let _guard = no_fail_points();
    let (owner, other) = (Owner::new(identity()), Owner::new(identity()));
    let recipient = NamedRecipient {
        name: "laptop".into(),
        recipient: identity().to_public(),
    };
    for after in 0..4 {
        let mem = Arc::new(MemoryStorage::default());
        let dying: Arc<dyn Storage> =
            Arc::new(Wrapped(support::DiesAfter::new(mem.clone(), after)));
        let recipients = std::slice::from_ref(&recipient);
        init(&[dying], &owner, recipients, None).await.unwrap_err();
        assert!(Repository::open_v2(mem.clone()).await.is_err(), "{after}");
        let published = support_get_opt(&mem, &keyring_key(1)).await;

        let stranger = init(&[mem.clone() as Arc<dyn Storage>], &other, &[], None).await;
        if after == 3 {
            let e = keyring_error(stranger.unwrap_err());
            assert!(matches!(e, KeyringError::Refused { .. }), "{e:?}");
        } else {
            // Only bundles: nobody's repository yet, so anyone may create one.
            assert!(published.is_none());
            stranger.unwrap();
            continue;
        }
        let keyset = init(&[mem.clone() as Arc<dyn Storage>], &owner, recipients, None)
            .await
            .unwrap();
        let repo = Repository::open_v2(mem.clone()).await.unwrap();
        assert_eq!(repo.config().keyset(), Some(&keyset));
        assert_eq!(support_get_opt(&mem, &keyring_key(1)).await, published);
        let keyring = Keyring::open(&repo, &owner.public(), None).await.unwrap();
        assert_eq!(keyring.body.recipients.len(), 2);
    }
}

async fn support_get_opt(mem: &MemoryStorage, key: &str) -> Option<Vec<u8>> {
    match mem.get(key).await {
        Ok(_) => Some(support_get(mem, key).await),
        Err(_) => None,
    }
}
