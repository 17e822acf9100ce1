//! The progress counters of verify and drill: what a progress display reads
//! while they run must end at the totals it was given, on real SQLite
//! snapshots in the in-memory target.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use backup_core::drill::{DrillOptions, DrillProgress, SmokeQuery};
use backup_core::keys::Identities;
use backup_core::repo::Repository;
use backup_core::storage::list_all;
use backup_core::storage::memory::MemoryStorage;
use backup_core::verify::{ReadData, Subset, VerifyOptions, VerifyProgress};

mod support;
use support::{add_rows, memory_repo, pack_size, sqlite};

/// A repository holding two snapshots of a SQLite database, and their sizes.
async fn two_snapshots(db: &Path) -> (Repository, Arc<MemoryStorage>, Identities, u64) {
    let (keys, ids, mem, repo) = memory_repo().await;
    let src = sqlite("app", db);
    let opts = pack_size(64 << 10);
    let mut sizes = 0;
    for round in 0..2 {
        add_rows(
            db,
            "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, body TEXT);",
            "INSERT INTO tasks(body) VALUES (?1)",
            round * 5_000..(round + 1) * 5_000,
            |i| [format!("body of task {i} ").repeat(8)],
        );
        sizes += repo.backup(&keys, &src, &opts).await.unwrap().manifest.size;
    }
    (repo, mem, ids, sizes)
}

/// Drills "app" with `opts` in a scratch directory; the drill must pass.
async fn drill_passes(repo: &Repository, ids: &Identities, opts: &DrillOptions) {
    let scratch = tempfile::tempdir().unwrap();
    let report = repo
        .drill(ids, "app", opts, scratch.path(), chrono::Utc::now())
        .await
        .unwrap();
    assert!(report.passed, "{report:?}");
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counters_reach_their_totals_with_read_data_and_a_subset() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (repo, mem, ids, sizes) = two_snapshots(&db).await;

    let p = Arc::new(VerifyProgress::default());
    let opts = VerifyOptions {
        data: Some(ReadData::Snapshots(ids.clone())),
        progress: Some(p.clone()),
        ..Default::default()
    };
    let report = repo.verify(&ids, &opts).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(load(&p.snapshots_total), 2);
    assert_eq!(load(&p.snapshots_done), 2);
    assert_eq!(load(&p.bytes_total), sizes, "the two snapshots' sizes");
    assert_eq!(p.bytes_done(), sizes, "every byte of both restored");
    assert_eq!(load(&p.packs_total), 0, "no pack read on its own");

    let packs = list_all(mem.as_ref(), "packs/").await.unwrap();
    assert!(packs.len() > 2, "several packs: {}", packs.len());
    let stored: u64 = packs.iter().map(|m| m.size).sum();
    let p = Arc::new(VerifyProgress::default());
    let opts = VerifyOptions {
        data: Some(ReadData::Packs(ids.clone(), Subset::Part { n: 1, of: 1 })),
        progress: Some(p.clone()),
        ..Default::default()
    };
    let report = repo.verify(&ids, &opts).await.unwrap();
    assert!(report.ok(), "{report:?}");
    let data = report.data.unwrap();
    assert_eq!(load(&p.packs_total), packs.len() as u64);
    assert_eq!(load(&p.packs_done), packs.len() as u64);
    assert_eq!(load(&p.bytes_total), stored, "every pack's stored size");
    assert_eq!(p.bytes_done(), stored);
    assert_eq!(p.bytes_done(), data.bytes_read, "as the report says");
    assert_eq!(load(&p.snapshots_done), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_progress_names_each_step_and_counts_the_restored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (repo, _, ids, _) = two_snapshots(&db).await;
    let newest = repo.snapshots(&ids).await.unwrap()[0].clone();

    let p = Arc::new(DrillProgress::default());
    assert_eq!(p.step(), "", "nothing runs yet");
    let opts = DrillOptions {
        query: Some(SmokeQuery {
            sql: "SELECT count(*) FROM tasks".into(),
            min: Some(10_000),
        }),
        progress: Some(p.clone()),
        ..Default::default()
    };
    drill_passes(&repo, &ids, &opts).await;
    assert_eq!(p.step(), "smoke_query", "the last step that did work");
    assert_eq!(load(&p.restored.total), newest.size);
    assert_eq!(load(&p.restored.read), newest.size, "the whole snapshot");

    // Without a query, the restore is the last step with work to show.
    let p = Arc::new(DrillProgress::default());
    let opts = DrillOptions {
        progress: Some(p.clone()),
        ..Default::default()
    };
    drill_passes(&repo, &ids, &opts).await;
    assert_eq!(p.step(), "restore");
    assert_eq!(load(&p.restored.read), newest.size);
}
