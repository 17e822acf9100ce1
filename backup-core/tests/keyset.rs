//! Format 2 key sets (docs/design/format-v2.md, 2.1 and 3.3): what each
//! kind of holder gets from `KeySet::open` on an in-memory target with
//! real age keys, and whose signatures `KeySet::trust` believes.

use std::sync::Arc;

use backup_core::keyadmin::{self, AdminOptions, Owner};
use backup_core::keys::{generate_identity, Identities, SignerPublic, WriterKey};
use backup_core::keyset::{Holding, KeySet, Trust};
use backup_core::repo::init::init;
use backup_core::repo::Repository;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::Storage;
use chrono::{Duration, Utc};

fn identity() -> age::x25519::Identity {
    let (text, _) = generate_identity();
    Identities::parse(&text, "test").unwrap().x25519()[0].clone()
}

fn holding(ids: &[&age::x25519::Identity]) -> Holding {
    let text: Vec<String> = ids
        .iter()
        .map(|i| {
            use age::secrecy::ExposeSecret;
            i.to_string().expose_secret().to_string()
        })
        .collect();
    Holding::Identities(Identities::parse(&text.join("\n"), "test").unwrap())
}

async fn owned() -> (Repository, Owner) {
    let owner = Owner::new(identity());
    let mem = Arc::new(MemoryStorage::default());
    init(&[mem.clone() as Arc<dyn Storage>], &owner, &[], None)
        .await
        .unwrap();
    (Repository::open_v2(mem).await.unwrap(), owner)
}

/// The owner reads data and signs; a writer signs and reads metadata but
/// gets no data key; a colleague reads data but cannot sign; a stranger,
/// an unknown writer and a removed writer get no key set at all.
#[tokio::test]
async fn each_holder_gets_what_its_bundle_allows() {
    let (repo, owner) = owned().await;
    let opts = AdminOptions::default();
    let trust = owner.public();
    let writer = WriterKey::generate();
    keyadmin::add_writer(&repo, &owner, "app-1", &writer.public(), &opts)
        .await
        .unwrap();
    let colleague = identity();
    keyadmin::add_recipient(&repo, &owner, &colleague.to_public(), "colleague", &opts)
        .await
        .unwrap();

    // A stranger's identity listed first: the owner's is still found.
    let stranger = identity();
    let own = KeySet::open(
        &repo,
        &trust,
        &holding(&[&stranger, owner.identity()]),
        None,
    )
    .await
    .unwrap();
    assert!(own.data().is_some());
    assert_eq!(
        own.signer().unwrap().public(),
        &SignerPublic::Owner(trust),
        "the owner signs as the owner"
    );
    assert_eq!(own.generation(), 1);

    let w = KeySet::open(&repo, &trust, &Holding::Writer(writer.clone()), None)
        .await
        .unwrap();
    assert!(w.data().is_none(), "a writer never gets a data key");
    assert_eq!(
        w.signer().unwrap().public(),
        &SignerPublic::Writer(writer.public())
    );
    assert_eq!(w.chunk_key(), own.chunk_key(), "one K per key set");
    assert_eq!(
        w.metadata_recipient().to_string(),
        own.metadata_recipient().to_string()
    );

    let c = KeySet::open(&repo, &trust, &holding(&[&colleague]), None)
        .await
        .unwrap();
    assert!(c.data().is_some() && c.signer().is_none());
    let e = c.require_signer("prune").unwrap_err().to_string();
    assert!(e.contains("writer_key_file"), "{e}");

    let e = KeySet::open(&repo, &trust, &holding(&[&stranger]), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("offsite key add"), "{e}");
    let unknown = WriterKey::generate();
    let e = KeySet::open(&repo, &trust, &Holding::Writer(unknown), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("offsite writer add"), "{e}");

    keyadmin::remove_writer(&repo, &owner, "app-1", None, &opts)
        .await
        .unwrap();
    let e = KeySet::open(&repo, &trust, &Holding::Writer(writer), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("was removed"), "{e}");
    // A recipient's key set after the remove: two generations, new ones
    // written under the second.
    let own = KeySet::open(&repo, &trust, &holding(&[owner.identity()]), None)
        .await
        .unwrap();
    assert_eq!(own.generation(), 2);
    assert_ne!(
        own.metadata_recipient().to_string(),
        c.metadata_recipient().to_string(),
        "the remove started a new generation"
    );
}

/// Trust: the owner always; a listed writer up to its `valid_until`; an
/// unlisted writer or another owner key never.
#[tokio::test]
async fn trust_follows_the_keyring() {
    let (repo, owner) = owned().await;
    let opts = AdminOptions::default();
    let trust = owner.public();
    let writer = WriterKey::generate();
    keyadmin::add_writer(&repo, &owner, "app-1", &writer.public(), &opts)
        .await
        .unwrap();
    let own = KeySet::open(&repo, &trust, &holding(&[owner.identity()]), None)
        .await
        .unwrap();
    let now = Utc::now();
    let as_writer = SignerPublic::Writer(writer.public());
    assert_eq!(
        own.trust(&as_writer, now),
        Trust::Signed {
            writer: "app-1".into()
        }
    );
    assert!(own.trust(&SignerPublic::Owner(trust), now).is_signed());
    let other_owner = Owner::new(identity()).public();
    assert!(!own
        .trust(&SignerPublic::Owner(other_owner), now)
        .is_signed());
    let stranger = SignerPublic::Writer(WriterKey::generate().public());
    let Trust::Rejected { reason } = own.trust(&stranger, now) else {
        panic!("an unlisted writer is trusted");
    };
    assert!(reason.contains("never authorised"), "{reason}");

    let removed_at = Utc::now();
    keyadmin::remove_writer(&repo, &owner, "app-1", Some(removed_at), &opts)
        .await
        .unwrap();
    let own = KeySet::open(&repo, &trust, &holding(&[owner.identity()]), None)
        .await
        .unwrap();
    assert!(own
        .trust(&as_writer, removed_at - Duration::seconds(60))
        .is_signed());
    let Trust::Rejected { reason } = own.trust(&as_writer, removed_at + Duration::seconds(1))
    else {
        panic!("a removed writer's later object is trusted");
    };
    assert!(reason.contains("after it was removed"), "{reason}");
    // The verifier knows the removed writer (its older objects verify).
    assert!(format!("{:?}", own.verifier()).contains(&writer.public().to_string()));
}
