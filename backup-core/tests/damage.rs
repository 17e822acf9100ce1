//! Damage records under a failing write, in a process of their own: an
//! armed fail-point applies to every test of the process.

use backup_core::failpoint;
use backup_core::storage::testing;
use backup_core::verify::{ReadData, VerifyOptions};

mod support;
use support::{data_dir, files, first_pack, keys_under, memory_repo, pack_size};

/// A damage record that cannot be written (fail-point `damage.record`):
/// the damage is still reported, and recorded by the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_that_cannot_be_recorded_is_reported_and_recorded_next_time() {
    let (_dir, data) = data_dir();
    std::fs::write(data.join("a"), testing::pattern("a", 300_000)).unwrap();
    let (keys, ids, mem, repo) = memory_repo().await;
    repo.backup(&keys, &files("d", &data), &pack_size(64 << 10))
        .await
        .unwrap();
    let pack = first_pack(&mem);
    mem.tamper(&pack, |d| d[3] ^= 0x01);
    let opts = VerifyOptions {
        data: Some(ReadData::Packs(ids.clone(), "1/1".parse().unwrap())),
        ..Default::default()
    };
    let records = || keys_under(&mem, "damaged/").len();
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
