//! Status and pins on format 2 repositories (docs/design/format-v2.md, 2.1,
//! 3.3 and table 1), with snapshots written by `support::v2`: only signed
//! snapshots count (a forged newer one hides no stale real one from
//! `max_age`), a host without a metadata key is told what to configure,
//! and pins are written to M, read back by name, and refused for rejected
//! snapshots.

mod support;

use std::time::Duration as StdDuration;

use backup_core::across::{self, Pins};
use backup_core::each::status::{status_all, StatusRun, Watched};
use backup_core::each::PlannedTarget;
use backup_core::error::Error;
use backup_core::keys::MetadataKey;
use backup_core::lock::LockWait;
use backup_core::repo::{ManifestV2, Repository};
use backup_core::status::Thresholds;
use chrono::{Duration, Utc};
use support::v2::{file, put_manifest, write, Seal, Snap, Written, V2};

/// One small file snapshot of source "app" finished `hours_ago`, sealed by `seal`.
async fn snapshot(v2: &V2, hours_ago: i64, text: &str, seal: Seal) -> Written {
    let finished = Utc::now() - Duration::hours(hours_ago);
    let files = vec![file("a.txt", text.as_bytes(), 5)];
    write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", finished, files, seal),
    )
    .await
}

/// `offsite status` of "app" (max_age one day) on `repo` alone.
async fn status(repo: Repository) -> StatusRun {
    let watched = Watched {
        source: "app".into(),
        thresholds: Thresholds {
            max_age: Some(StdDuration::from_secs(24 * 3600)),
            ..Thresholds::default()
        },
    };
    let target = PlannedTarget {
        name: "local".into(),
        repo: Ok(repo),
    };
    status_all(vec![target], None, &[watched], Utc::now()).await
}

#[tokio::test]
async fn a_forged_newer_snapshot_hides_no_stale_real_one_from_status() {
    let v2 = V2::new().await;
    let stale = snapshot(&v2, 50, "two days old", Seal::of(&v2.writer_keys)).await;
    let older = snapshot(&v2, 70, "older still", Seal::of(&v2.writer_keys)).await;
    let forged = snapshot(&v2, 0, "fresh but forged", Seal::By(v2.stranger())).await;

    // A monitoring host may hold the owner's identity or a writer key.
    for as_writer in [false, true] {
        let run = status(v2.opened(as_writer).await).await;
        let (target, health) = run.outcomes.reports().next().expect("the target reads");
        assert_eq!(target, "local");
        assert_eq!(health.format, 2);
        assert_eq!(health.rejected, vec![forged.manifest.id.clone()]);
        let app = &health.sources[0];
        assert_eq!(app.snapshots, 2, "the forged one is not a backup");
        assert_eq!(app.logical_bytes, stale.manifest.size + older.manifest.size);
        let newest = app.newest.as_ref().expect("a signed snapshot");
        assert_eq!(newest.id, stale.manifest.id, "the newest signed one counts");
        assert_eq!(newest.previous_size, Some(older.manifest.size));
        assert!(newest.age_seconds >= 50 * 3600, "{newest:?}");

        let breaches = run.breaches();
        assert_eq!(breaches.len(), 1, "{breaches:?}");
        assert!(
            breaches[0].contains("more than max_age 1day"),
            "{breaches:?}"
        );
        assert!(!run.ok());
        let copies = run.copies();
        assert_eq!(
            copies[0].newest.as_deref(),
            Some(stale.manifest.id.as_str())
        );

        let warnings = run.warnings();
        assert_eq!(warnings.len(), 1, "no format 1 warning: {warnings:?}");
        assert!(
            warnings[0].contains("1 rejected snapshot (")
                && warnings[0].contains(&forged.manifest.id)
                && warnings[0].contains("someone with write access"),
            "{warnings:?}"
        );
    }
}

#[tokio::test]
async fn a_fresh_signed_snapshot_passes_status_beside_a_forgery() {
    let v2 = V2::new().await;
    let fresh = snapshot(&v2, 1, "fresh and genuine", Seal::of(&v2.owner_keys)).await;
    // Forged in three ways: a stranger's signature, none, an old manifest
    // signed for another id put under a newer name.
    snapshot(&v2, 0, "a stranger's", Seal::By(v2.stranger())).await;
    snapshot(&v2, 0, "unsigned", Seal::Unsigned).await;
    let mut moved: ManifestV2 = fresh.manifest.clone();
    moved.id = support::v2::snapshot_id(Utc::now());
    let signer = Seal::Under(v2.writer_signer(), fresh.manifest.key());
    put_manifest(&v2.repo, &v2.writer_keys, &moved.key(), &moved, &signer).await;

    let run = status(v2.opened(false).await).await;
    let (_, health) = run.outcomes.reports().next().unwrap();
    assert_eq!(health.rejected.len(), 3, "{:?}", health.rejected);
    assert!(health.rejected.contains(&moved.id), "{:?}", health.rejected);
    let app = &health.sources[0];
    assert_eq!(app.snapshots, 1);
    assert_eq!(app.newest.as_ref().unwrap().id, fresh.manifest.id);
    assert!(run.ok(), "{:?}", run.breaches());
    assert!(
        run.warnings()[0].contains("3 rejected snapshots"),
        "{:?}",
        run.warnings()
    );
}

#[tokio::test]
async fn a_host_without_a_metadata_key_is_told_what_to_configure() {
    let v2 = V2::new().await;
    let err = Repository::open_to_list(v2.mem.clone(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoMetadataKey { .. }), "{err:?}");
    let text = err.to_string();
    for needed in ["encryption.writer_key_file", "encryption.identity_file"] {
        assert!(text.contains(needed), "{text}");
    }

    // What status makes of it: an unreadable target, and a breach.
    let target = PlannedTarget {
        name: "local".into(),
        repo: Err(backup_core::each::on_target("local", err)),
    };
    let run = status_all(vec![target], None, &[], Utc::now()).await;
    assert!(
        run.breaches()[0].contains("writer_key_file"),
        "{:?}",
        run.breaches()
    );
}

/// The pin record stored for `id`, decoded with `ids`.
async fn pin_record(repo: &Repository, ids: &MetadataKey, id: &str) -> serde_json::Value {
    let plain = repo.get_metadata(&format!("pins/{id}"), ids).await.unwrap();
    serde_json::from_slice(&plain).unwrap()
}

#[tokio::test]
async fn format_2_pins_roundtrip_and_are_read_by_name() {
    let v2 = V2::new().await;
    let first = snapshot(&v2, 3, "first", Seal::of(&v2.writer_keys)).await;
    let second = snapshot(&v2, 2, "second", Seal::of(&v2.writer_keys)).await;
    let id = first.manifest.id.clone();

    // Pinned by a backup host (writer key), read by the owner: one M.
    let writer = v2.opened(true).await;
    assert!(writer.pin_v2(&id, LockWait::default()).await.unwrap());
    assert!(
        !writer.pin_v2(&id, LockWait::default()).await.unwrap(),
        "already pinned"
    );
    let owner = v2.opened(false).await;
    let record = pin_record(&owner, &v2.owner_keys.metadata_key(), &id).await;
    assert_eq!(record["format"], "offsite-pin");
    assert_eq!(record["version"], 2);
    assert_eq!(record["snapshot"], id.as_str());
    // What prune reads: the names, the same in both formats.
    let pinned = owner.pinned().await.unwrap();
    assert_eq!(pinned.into_iter().collect::<Vec<_>>(), vec![id.clone()]);

    // Through the commands' path: a suffix, no format 1 keys needed.
    let targets = vec![PlannedTarget {
        name: "local".into(),
        repo: Ok(owner.clone()),
    }];
    let key = v2.owner_keys.metadata_key();
    let found = across::list(&targets, &key, Pins::Read).await.unwrap();
    let asked = &second.manifest.id[second.manifest.id.len() - 8..];
    let done = across::pin(&found.listings, None, asked).await.unwrap();
    assert_eq!(
        (done[0].id.as_str(), done[0].changed),
        (second.manifest.id.as_str(), true)
    );
    assert_eq!(owner.pinned().await.unwrap().len(), 2);

    assert!(owner.unpin(&id).await.unwrap());
    let left = owner.pinned().await.unwrap();
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        vec![second.manifest.id.clone()]
    );
    assert!(
        owner.locks().await.unwrap().is_empty(),
        "pin released its lock"
    );
}

#[tokio::test]
async fn a_rejected_snapshot_is_not_pinned() {
    let v2 = V2::new().await;
    snapshot(&v2, 1, "genuine", Seal::of(&v2.writer_keys)).await;
    let forged = snapshot(&v2, 0, "forged", Seal::By(v2.stranger())).await;
    let unsigned = snapshot(&v2, 0, "unsigned", Seal::Unsigned).await;
    let repo = v2.opened(false).await;

    for (written, why) in [(&forged, "not a signer"), (&unsigned, "")] {
        let id = &written.manifest.id;
        let err = repo.pin_v2(id, LockWait::default()).await.unwrap_err();
        let Error::Untrusted { key, reason } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(key, &format!("snapshots/{id}"));
        assert!(reason.contains(why), "{reason}");
        assert!(err.to_string().contains("is not trusted"), "{err}");
    }
    let err = repo
        .pin_v2("20991231T000000Z-00000000", LockWait::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SnapshotNotFound(_)), "{err:?}");

    // Asked for through the commands' path, it is refused the same way.
    let targets = vec![PlannedTarget {
        name: "local".into(),
        repo: Ok(repo.clone()),
    }];
    let found = across::list(&targets, &v2.owner_keys.metadata_key(), Pins::Read)
        .await
        .unwrap();
    let err = across::pin(&found.listings, None, &forged.manifest.id)
        .await
        .unwrap_err();
    assert!(
        backup_core::error::chain_text(&err).contains("is not trusted"),
        "{err}"
    );

    assert!(repo.pinned().await.unwrap().is_empty(), "nothing pinned");
    assert!(repo.list("pins/").await.unwrap().is_empty());
    assert!(
        repo.locks().await.unwrap().is_empty(),
        "pin released its lock"
    );
}
