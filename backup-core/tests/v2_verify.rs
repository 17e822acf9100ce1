//! Verify and drill on format 2 repositories (docs/design/format-v2.md,
//! 3.3 and 4.5), opened with their key set, with snapshots written by
//! `support::v2` (genuine and forged).

mod support;

use backup_core::drill::DrillOptions;
use backup_core::error::Error;
use backup_core::keyset::Trust;
use backup_core::repo::Repository;
use backup_core::verify::{ReadData, VerifyOptions, VerifyReport};
use chrono::{DateTime, Duration, Utc};
use support::v2::{file, write, Seal, Snap, V2};

fn at(minutes: i64) -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

fn files(text: &str) -> Vec<support::v2::FileData> {
    vec![file("a.txt", text.as_bytes(), 7)]
}

/// `v2`'s repository opened with the owner's identity (or the writer's key).
async fn opened(v2: &V2, as_writer: bool) -> Repository {
    v2.opened(as_writer).await
}

async fn verify(repo: &Repository, read_data: bool) -> VerifyReport {
    let keys = repo.keyset().unwrap();
    let opts = VerifyOptions {
        data: read_data.then(|| ReadData::Snapshots(keys.data().unwrap())),
        ..Default::default()
    };
    repo.verify(&keys.metadata_key(), &opts).await.unwrap()
}

/// Two genuine snapshots (a full list and a delta) by the writer.
async fn genuine(v2: &V2) -> support::v2::Written {
    let seal = Seal::of(&v2.writer_keys);
    let first = write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", at(0), files("first version of a"), seal.clone()),
    )
    .await;
    let second = Snap::new("app", at(1), files("second version of a"), seal).delta_from(&first);
    write(&v2.repo, &v2.writer_keys, second).await
}

#[tokio::test]
async fn a_genuine_repository_verifies_clean_with_and_without_read_data() {
    let v2 = V2::new().await;
    genuine(&v2).await;
    let repo = opened(&v2, false).await;
    for read_data in [false, true] {
        let report = verify(&repo, read_data).await;
        assert!(report.ok(), "read_data {read_data}: {report:?}");
        assert_eq!(report.snapshots.len(), 2);
        assert_eq!(report.read_data, read_data);
    }
    // A writer's key set cannot read data: a clear error, not a report.
    let writer = opened(&v2, true).await;
    let keys = writer.keyset().unwrap();
    let opts = VerifyOptions {
        data: Some(ReadData::Snapshots(v2.owner_keys.data().unwrap())),
        ..Default::default()
    };
    match writer.verify(&keys.metadata_key(), &opts).await {
        Err(Error::Key(m)) => assert!(m.contains("needs an identity"), "{m}"),
        other => panic!("expected a key error, got {other:?}"),
    }
}

#[tokio::test]
async fn forged_snapshots_and_index_files_are_faults() {
    let v2 = V2::new().await;
    genuine(&v2).await;
    let stranger = Seal::By(v2.stranger());
    let forged = write(
        &v2.repo,
        &v2.owner_keys,
        Snap::new("app", at(5), files("forged"), stranger.clone()),
    )
    .await;
    let repo = opened(&v2, false).await;
    let keys = repo.keyset().unwrap();
    let all = repo.snapshots_v2(keys).await.unwrap();
    let listed = all
        .snapshots
        .iter()
        .find(|s| s.manifest.id == forged.manifest.id);
    let Some(Trust::Rejected { reason }) = listed.map(|s| &s.trust) else {
        panic!("the forged snapshot is not rejected");
    };
    let rejected_index = repo.index_v2(keys).await.unwrap().rejected;
    assert_eq!(rejected_index.len(), 1, "the forged snapshot's index file");
    for read_data in [false, true] {
        let report = verify(&repo, read_data).await;
        assert!(!report.ok());
        let fault = (report.snapshots.iter())
            .find(|s| s.id == forged.manifest.id)
            .and_then(|s| s.fault.clone())
            .expect("the forged snapshot is a fault");
        assert!(fault.starts_with("FORGED: "), "{fault}");
        assert!(fault.contains(&forged.manifest.key()) && fault.contains(reason.as_str()));
        let (key, why) = &rejected_index[0];
        assert!(
            (report.repository_faults.iter()).any(|f| f == &format!("FORGED: {key}: {why}")),
            "{:?}",
            report.repository_faults
        );
        let genuine_faults = (report.snapshots.iter())
            .filter(|s| s.id != forged.manifest.id && s.fault.is_some())
            .count();
        assert_eq!(genuine_faults, 0, "{report:?}");
    }
}

#[tokio::test]
async fn a_damaged_pack_is_a_fault_under_read_data_only() {
    let v2 = V2::new().await;
    genuine(&v2).await;
    let repo = opened(&v2, false).await;
    let packs = repo.list("packs/").await.unwrap();
    assert!(!packs.is_empty());
    v2.mem.tamper(&packs[0].key, |d| d[40] ^= 0xff);
    assert!(
        verify(&repo, false).await.ok(),
        "structure alone reads no data"
    );
    let report = verify(&repo, true).await;
    assert!(!report.ok());
    assert!(
        (report.repository_faults.iter()).any(|f| f.starts_with(&format!("pack {}", packs[0].key))),
        "{:?}",
        report.repository_faults
    );
    assert!(report.snapshots.iter().any(|s| s.fault.is_some()));
}

#[tokio::test]
async fn drill_restores_the_newest_signed_snapshot_and_fails_on_a_forgery() {
    let v2 = V2::new().await;
    let newest = genuine(&v2).await;
    let repo = opened(&v2, false).await;
    let ids = v2.owner_keys.data().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = DrillOptions::default();
    let report = (repo.drill(&ids, "app", &opts, dir.path(), at(2)))
        .await
        .unwrap();
    assert!(report.passed, "{report:?}");
    assert_eq!(
        report.snapshot.as_deref(),
        Some(newest.manifest.id.as_str())
    );

    let forged = write(
        &v2.repo,
        &v2.owner_keys,
        Snap::new("app", at(5), files("forged"), Seal::By(v2.stranger())),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let report = (repo.drill(&ids, "app", &opts, dir.path(), at(6)))
        .await
        .unwrap();
    assert!(!report.passed);
    assert_eq!(
        report.snapshot.as_deref(),
        Some(newest.manifest.id.as_str())
    );
    let failed: Vec<&str> = report.failures().iter().map(|s| s.step).collect();
    assert_eq!(failed, vec!["rejected_objects"], "{report:?}");
    assert!(report.failures()[0].detail.contains(&forged.manifest.key()));
    let restored = std::fs::read(dir.path().join("restored")).unwrap();
    assert_eq!(restored, b"second version of a");
}
