//! Damage records under a failing write, in a process of their own: an
//! armed fail-point applies to every test of the process.

use std::sync::Arc;

use backup_core::backup::BackupOptions;
use backup_core::failpoint;
use backup_core::keys::{generate_identity, Identities, Keys};
use backup_core::repo::Repository;
use backup_core::source::{SourceKind, SourceSpec};
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing;
use backup_core::verify::{ReadData, VerifyOptions};

fn keypair() -> (Keys, Identities) {
    let (secret, recipient) = generate_identity();
    (
        Keys::from_recipients(&[recipient]).unwrap(),
        Identities::parse(&secret, "test").unwrap(),
    )
}

fn files(name: &str, path: &std::path::Path) -> SourceSpec {
    SourceSpec {
        name: name.into(),
        kind: SourceKind::Files,
        path: path.to_path_buf(),
    }
}

fn small_packs() -> BackupOptions {
    BackupOptions {
        pack_size: 64 << 10,
        ..Default::default()
    }
}

/// A damage record that cannot be written (fail-point `damage.record`):
/// the damage is still reported, and recorded by the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_that_cannot_be_recorded_is_reported_and_recorded_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("a"), testing::pattern("a", 300_000)).unwrap();
    let (keys, ids) = keypair();
    let mem = Arc::new(MemoryStorage::default());
    let repo = Repository::open_or_init(mem.clone(), &keys).await.unwrap();
    repo.backup(&keys, &files("d", &data), &small_packs())
        .await
        .unwrap();
    let pack = mem
        .keys()
        .into_iter()
        .find(|k| k.starts_with("packs/"))
        .unwrap();
    mem.tamper(&pack, |d| d[3] ^= 0x01);
    let opts = VerifyOptions {
        data: Some(ReadData::Packs(ids.clone(), "1/1".parse().unwrap())),
        ..Default::default()
    };
    let records = || {
        mem.keys()
            .into_iter()
            .filter(|k| k.starts_with("damaged/"))
            .count()
    };
    {
        let _armed = failpoint::arm(&[("damage.record", failpoint::Action::Error, None)]);
        let report = repo.verify(&ids, &opts).await.unwrap();
        assert!(!report.ok());
        let data = report.data.unwrap();
        assert_eq!(data.damaged.len(), 1);
        assert_eq!(data.damaged[0].0, pack);
        assert!(data.recorded.is_none());
        assert!(
            report.snapshots[0]
                .fault
                .as_deref()
                .unwrap()
                .contains("no intact copy"),
            "{:?}",
            report.snapshots
        );
    }
    assert_eq!(records(), 0);
    let report = repo.verify(&ids, &opts).await.unwrap();
    assert!(report.data.unwrap().recorded.is_some());
    assert_eq!(records(), 1);
}
