//! Prune and pre-restore snapshots on the in-memory target, with the
//! snapshots' times set (manifests rewritten) to the scenario's clock.

use backup_core::backup::BackupOptions;
use backup_core::keys::Keys;
use backup_core::prune::PruneOptions;
use backup_core::repo::{Manifest, Repository, PRE_RESTORE_TAG, SNAPSHOTS};
use backup_core::restore::RestoreOptions;
use backup_core::retention::Policy;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{PutMode, Storage};
use chrono::{DateTime, Days, Local, NaiveTime, TimeZone, Utc};

mod support;
use support::{files, memory_repo, snapshot_ids};

/// `days_ago` days before today, at `hour`:00 local time.
fn local(days_ago: u64, hour: u32) -> DateTime<Utc> {
    let day = Local::now().date_naive() - Days::new(days_ago);
    let t = day.and_time(NaiveTime::from_hms_opt(hour, 0, 0).unwrap());
    Local
        .from_local_datetime(&t)
        .earliest()
        .unwrap()
        .with_timezone(&Utc)
}

/// Makes the stored manifest of `m` say it was taken at `at`.
async fn set_time(
    repo: &Repository,
    mem: &MemoryStorage,
    keys: &Keys,
    m: &Manifest,
    at: DateTime<Utc>,
) {
    let mut m = m.clone();
    m.started = at;
    m.finished = at;
    let key = format!("{SNAPSHOTS}{}", m.id);
    let body = Repository::encode_metadata(keys, &serde_json::to_vec(&m).unwrap()).unwrap();
    mem.delete(&key).await.unwrap();
    repo.put_bytes(&key, body, PutMode::Create).await.unwrap();
}

async fn snapshot(repo: &Repository, keys: &Keys, db: &std::path::Path, tags: &[&str]) -> Manifest {
    let opts = BackupOptions {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    repo.backup(keys, &files("app", db), &opts)
        .await
        .unwrap()
        .manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_the_snapshot_that_was_just_restored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (keys, ids, mem, repo) = memory_repo().await;

    // 02:00 the day before yesterday, 02:00 yesterday (the good state), and
    // at 10:00 yesterday the pre-restore snapshot of the damaged file that
    // `restore --force` of the 02:00 snapshot replaced.
    std::fs::write(&db, b"day one").unwrap();
    let day1 = snapshot(&repo, &keys, &db, &[]).await;
    std::fs::write(&db, b"day two, good").unwrap();
    let good = snapshot(&repo, &keys, &db, &[]).await;
    std::fs::write(&db, b"day two, damaged").unwrap();
    let undo = snapshot(&repo, &keys, &db, &[PRE_RESTORE_TAG]).await;
    set_time(&repo, &mem, &keys, &day1, local(2, 2)).await;
    set_time(&repo, &mem, &keys, &good, local(1, 2)).await;
    set_time(&repo, &mem, &keys, &undo, local(1, 10)).await;

    let opts = |dry_run, pre_restore: &str| PruneOptions {
        dry_run,
        default_policy: Policy {
            daily: 7,
            pre_restore: pre_restore.parse().unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    let dry = repo.prune(&keys, &opts(true, "30d")).await.unwrap();
    let verdicts: Vec<(&str, bool, Vec<String>)> = dry
        .snapshots
        .iter()
        .map(|v| (v.manifest.id.as_str(), v.keep, v.reasons.clone()))
        .collect();
    let day = |t: DateTime<Utc>| format!("daily {}", t.with_timezone(&Local).format("%Y-%m-%d"));
    assert_eq!(
        verdicts,
        [
            (undo.id.as_str(), true, vec!["pre-restore 30d".to_string()]),
            (good.id.as_str(), true, vec![day(local(1, 2))]),
            (day1.id.as_str(), true, vec![day(local(2, 2))]),
        ]
    );
    assert_eq!(
        dry.snapshots[0].expires,
        Some(local(1, 10) + chrono::Duration::days(30))
    );

    let report = repo.prune(&keys, &opts(false, "30d")).await.unwrap();
    assert_eq!(report.removed().count(), 0);
    let snaps = repo.snapshots(&ids).await.unwrap();
    assert_eq!(snaps.len(), 3);
    let restored = snaps.iter().find(|m| m.id == good.id).unwrap();
    let to = dir.path().join("again.db");
    repo.restore(&ids, restored, &to, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&to).unwrap(), b"day two, good");

    // Once its time is up, the pre-restore snapshot goes, and only it.
    let report = repo.prune(&keys, &opts(false, "1h")).await.unwrap();
    let removed: Vec<&str> = report.removed().map(|v| v.manifest.id.as_str()).collect();
    assert_eq!(removed, [undo.id.as_str()]);
    assert_eq!(
        report.snapshots[0].expires,
        Some(local(1, 11)),
        "the verdict says when it expired"
    );
    let left = snapshot_ids(&repo, &ids).await;
    assert_eq!(left, [good.id.clone(), day1.id.clone()]);
}
