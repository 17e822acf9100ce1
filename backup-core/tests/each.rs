//! One operation on every planned target (`backup_core::each`): a target
//! that cannot be opened, or whose storage fails, fails only its own part;
//! the others' reports are there, in the planned order, and the verdict
//! names the target that failed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use backup_core::backup::BackupOptions;
use backup_core::drill::DrillOptions;
use backup_core::each::drill::{drill_all, PlannedDrill};
use backup_core::each::prune::prune_all;
use backup_core::each::status::{status_all, Watched};
use backup_core::each::verify::{verify_all, VerifyFailure};
use backup_core::each::{PlannedTarget, Quiet, TargetError, TargetEvent, TargetObserver};
use backup_core::keys::Keys;
use backup_core::prune::PruneReport;
use backup_core::repo::{Repository, LOCKS, PACKS};
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing::FaultyStorage;
use backup_core::storage::{ErrorKind, RetryPolicy, Storage};
use backup_core::verify::VerifyOptions;

mod support;
use support::{add_rows, keep_last, keypair, sqlite};

/// A repository on `storage` holding `snapshots` snapshots of `db`.
async fn repo_with(
    storage: Arc<dyn Storage>,
    keys: &Keys,
    db: &Path,
    snapshots: usize,
) -> Repository {
    let repo = Repository::open_or_init(storage, keys)
        .await
        .unwrap()
        .with_retry(RetryPolicy::fast());
    for i in 0..snapshots {
        // Adds rows each time: every snapshot differs from the one before.
        add_rows(
            db,
            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)",
            "INSERT INTO t(v) VALUES (?1)",
            0..10 + i,
            |i| [format!("row {i}")],
        );
        repo.backup(keys, &sqlite("app", db), &BackupOptions::default())
            .await
            .unwrap();
    }
    repo
}

fn planned(name: &str, repo: Repository) -> PlannedTarget {
    PlannedTarget {
        name: name.into(),
        repo: Ok(repo),
    }
}

fn unopened(name: &str) -> PlannedTarget {
    PlannedTarget {
        name: name.into(),
        repo: Err(std::sync::Arc::new(std::io::Error::other(
            "/mnt/backup is not mounted",
        ))),
    }
}

/// The targets whose parts ended, in the order the observer heard of them.
#[derive(Default)]
struct Heard(Mutex<Vec<(String, bool)>>);

impl TargetObserver<PruneReport> for Heard {
    fn event(&self, event: TargetEvent<'_, PruneReport>) {
        if let TargetEvent::Finished { target, result, .. } = event {
            self.0.lock().unwrap().push((target.into(), result.is_ok()));
        }
    }
}

#[tokio::test]
async fn a_target_that_cannot_be_opened_fails_only_its_part() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (keys, _) = keypair();
    let repo = repo_with(Arc::new(MemoryStorage::default()), &keys, &db, 2).await;
    let heard = Heard::default();
    let run = prune_all(
        vec![unopened("down"), planned("local", repo)],
        Some(&keys),
        &keep_last(1),
        &heard,
    )
    .await;

    assert_eq!(run.failed(), ["down"]);
    assert_eq!(
        run.failure_summary().as_deref(),
        Some("prune failed on 1 target(s)")
    );
    let outcomes: Vec<_> = run.outcomes.iter().collect();
    assert_eq!(outcomes[0].target, "down");
    match &outcomes[0].result {
        Err(e @ TargetError::Unavailable(_)) => assert_eq!(
            e.described("down"),
            "target \"down\": /mnt/backup is not mounted"
        ),
        other => panic!("the unopened target's part: {other:?}"),
    }
    let report = outcomes[1]
        .result
        .as_ref()
        .expect("the other target pruned");
    assert_eq!(report.removed().count(), 1, "one of two snapshots removed");
    assert_eq!(
        *heard.0.lock().unwrap(),
        [("down".to_string(), false), ("local".to_string(), true)],
        "told in the planned order, as each ended"
    );
}

#[tokio::test]
async fn a_failing_storage_on_one_of_two_targets_is_named_by_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (keys, ids) = keypair();
    let healthy = repo_with(Arc::new(MemoryStorage::default()), &keys, &db, 2).await;
    let mut failing = FaultyStorage::new(Arc::new(MemoryStorage::default()));
    failing.prefix = LOCKS.into();
    failing.kind = ErrorKind::PermissionDenied;
    let failing = Arc::new(failing);
    let broken = repo_with(failing.clone(), &keys, &db, 2).await;
    // From now on, prune cannot take its lock there.
    failing
        .fail_puts
        .store(usize::MAX, std::sync::atomic::Ordering::Relaxed);

    let run = prune_all(
        vec![planned("a", healthy.clone()), planned("b", broken.clone())],
        Some(&keys),
        &keep_last(1),
        &Quiet,
    )
    .await;
    assert_eq!(run.failed(), ["b"]);
    let (target, report) = run.outcomes.reports().next().expect("a's report");
    assert_eq!((target, report.removed().count()), ("a", 1));
    let err = run
        .outcomes
        .iter()
        .nth(1)
        .unwrap()
        .result
        .as_ref()
        .unwrap_err();
    assert!(matches!(err, TargetError::Failed(_)), "{err:?}");

    // Verify: a target that could not be checked is named as such, and
    // damage on another outweighs it.
    let opts = VerifyOptions::default();
    let verify = |targets| verify_all(targets, &ids, &opts, &Quiet);
    let run = verify(vec![planned("a", healthy.clone()), unopened("down")]).await;
    assert_eq!(
        run.verdict(),
        Err(VerifyFailure::Unverified(vec!["down".into()]))
    );
    assert_eq!(run.outcomes.reports().count(), 1);
    for pack in broken.list(PACKS).await.unwrap() {
        broken.delete(&pack.key).await.unwrap();
    }
    let run = verify(vec![
        planned("a", healthy.clone()),
        planned("b", broken),
        unopened("down"),
    ])
    .await;
    assert_eq!(run.damaged(), ["b"]);
    assert_eq!(run.unverified(), ["down"]);
    assert_eq!(run.verdict(), Err(VerifyFailure::Damaged(vec!["b".into()])));
    let run = verify(vec![planned("a", healthy)]).await;
    assert_eq!(run.verdict(), Ok(()));
}

#[tokio::test]
async fn drills_and_status_of_an_unopened_target_fail_there_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (keys, ids) = keypair();
    let repo = repo_with(Arc::new(MemoryStorage::default()), &keys, &db, 1).await;
    let newest = repo.snapshots(&ids).await.unwrap().remove(0).id;

    let sources = [PlannedDrill {
        source: "app".into(),
        options: DrillOptions::default(),
    }];
    let targets = vec![planned("local", repo.clone()), unopened("down")];
    let run = drill_all(targets, &ids, &sources, &Quiet).await;
    assert!(!run.passed);
    let verdicts: Vec<_> = run
        .drills
        .iter()
        .map(|d| (d.target.as_str(), d.report.passed))
        .collect();
    assert_eq!(verdicts, [("local", true), ("down", false)]);
    assert_eq!(run.summary(), "1 of 2 drills passed");
    assert_eq!(
        run.failure_summary().as_deref(),
        Some(
            "1 of 2 drills failed: app @ down (open_repository: target \"down\": \
             /mnt/backup is not mounted)"
        )
    );

    let watched = [Watched {
        source: "app".into(),
        thresholds: Default::default(),
    }];
    let targets = vec![planned("local", repo), unopened("down")];
    let run = status_all(targets, Some(&*ids), &watched, chrono::Utc::now()).await;
    assert!(!run.ok());
    assert_eq!(
        run.breaches(),
        ["target down: cannot read the repository: /mnt/backup is not mounted"]
    );
    let copies = &run.copies()[0];
    assert_eq!(copies.newest.as_deref(), Some(newest.as_str()));
    assert_eq!((copies.complete_on, copies.targets), (1, 2));
    assert_eq!(copies.missing, ["down"]);
}
