//! Backups onto a target that fills up, cuts writes short or fails mid-object
//! (the in-memory target behind [`testing::FaultyStorage`]). Whatever happens,
//! a backup that could not store its snapshot fails with the reason, writes
//! no manifest, leaves no short or undecodable object behind, and every
//! earlier snapshot still restores and equals its source; once the target is
//! healthy again, the next backup succeeds.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backup_core::backup::BackupOptions;
use backup_core::keys::{Identities, Keys};
use backup_core::repo::{Manifest, Repository, INDEX, LISTS, PACKS, SNAPSHOTS};
use backup_core::restore::RestoreOptions;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing::FaultyStorage;
use backup_core::storage::{ErrorKind, Storage};
use backup_core::Error;

mod support;
use support::{dump_tasks, keypair, memory_repo_for, sqlite};

/// Adds `rows` rows of text that compresses about as well as real data
/// (random hex: to half).
fn add_rows(path: &Path, from: usize, rows: usize) {
    support::add_rows(
        path,
        "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT)",
        "INSERT INTO tasks(title, body) VALUES (?1, ?2)",
        from..from + rows,
        |i| (format!("task {i}"), hex::encode(rand::random::<[u8; 96]>())),
    );
}

fn opts() -> BackupOptions {
    // Many packs, so index files are written mid-run too.
    support::pack_size(32 << 10)
}

/// A repository on a fault-injecting in-memory target, holding one snapshot
/// of `db`, whose rows were then changed so the next backup has new data.
struct Fixture {
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    keys: Keys,
    ids: Identities,
    faulty: Arc<FaultyStorage>,
    repo: Repository,
    first: Manifest,
    first_rows: Vec<(i64, String, String)>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    add_rows(&db, 0, 4_000);
    let (keys, ids) = keypair();
    let faulty = Arc::new(FaultyStorage::new(Arc::new(MemoryStorage::default())));
    let repo = Repository::open_or_init(faulty.clone(), &keys)
        .await
        .unwrap()
        .with_retry(backup_core::storage::RetryPolicy::fast());
    let first = repo
        .backup(&keys, &sqlite("app", &db), &opts())
        .await
        .unwrap()
        .manifest;
    let first_rows = dump_tasks(&db);
    add_rows(&db, 4_000, 4_000);
    Fixture {
        dir,
        db,
        keys,
        ids,
        faulty,
        repo,
        first,
        first_rows,
    }
}

impl Fixture {
    /// Everything a reader depends on is whole: the only snapshot is the
    /// first one, every manifest, list and index file decodes, every pack an
    /// index names exists, and the first snapshot restores to its rows.
    async fn check_intact(&self, case: &str) {
        let snapshots = self.repo.snapshots(&self.ids).await.unwrap();
        let ids: Vec<&str> = snapshots.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, [self.first.id.as_str()], "{case}: snapshots");
        for prefix in [SNAPSHOTS, LISTS, INDEX] {
            for meta in self.repo.list(prefix).await.unwrap() {
                self.repo
                    .get_metadata(&meta.key, &self.ids)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: {} does not decode: {e}", meta.key));
            }
        }
        let index = self.repo.load_index(&self.ids).await.unwrap();
        for pack in &index.packs {
            let size = self.faulty.head(pack).await.map(|m| m.size);
            assert!(
                size.as_ref().is_ok_and(|s| *s > 0),
                "{case}: indexed pack {pack}: {size:?}"
            );
        }
        let out = self
            .dir
            .path()
            .join(format!("restored-{}.db", rand::random::<u32>()));
        self.repo
            .restore(&self.ids, &self.first, &out, &RestoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{case}: the earlier snapshot does not restore: {e}"));
        assert_eq!(dump_tasks(&out), self.first_rows, "{case}: restored rows");
        std::fs::remove_file(out).unwrap();
    }

    /// With the faults cleared, a backup succeeds and restores to `db`.
    async fn backup_succeeds(&self, case: &str) {
        self.faulty.set_free(None);
        let s = self
            .repo
            .backup(&self.keys, &sqlite("app", &self.db), &opts())
            .await
            .unwrap_or_else(|e| panic!("{case}: backup once the target is healthy: {e}"));
        let out = self.dir.path().join("after.db");
        self.repo
            .restore(&self.ids, &s.manifest, &out, &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(
            dump_tasks(&out),
            dump_tasks(&self.db),
            "{case}: the new snapshot"
        );
        std::fs::remove_file(out).unwrap();
    }

    async fn bytes_stored(&self) -> u64 {
        self.repo
            .list("")
            .await
            .unwrap()
            .iter()
            .map(|m| m.size)
            .sum()
    }

    /// Packs that no index file names.
    async fn unindexed_packs(&self) -> Vec<String> {
        let index = self.repo.load_index(&self.ids).await.unwrap();
        let mut out: Vec<String> = self
            .repo
            .list(PACKS)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !index.packs.contains(k))
            .collect();
        out.sort();
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_onto_a_target_that_fills_up_fails_cleanly_at_every_fill_level() {
    // What the second backup stores in all, measured on a healthy target.
    let needed = {
        let f = fixture().await;
        let before = f.bytes_stored().await;
        f.backup_succeeds("measuring").await;
        f.bytes_stored().await - before
    };
    assert!(
        needed > 300 << 10,
        "the second backup has data to store: {needed}"
    );

    let levels = (0..12).map(|i| match i {
        0 => 0,
        1 => 1,
        // The manifest, the last object, is a few hundred bytes.
        11 => needed - 600,
        i => needed * i / 12,
    });
    for free in levels {
        let case = format!("{free} of {needed} bytes free");
        let f = fixture().await;
        // Slow puts, so several uploads are in flight when one fails.
        f.faulty.set_delay(Some(Duration::from_millis(1)));
        f.faulty.set_free(Some(free));
        let e = f
            .repo
            .backup(&f.keys, &sqlite("app", &f.db), &opts())
            .await
            .expect_err(&case);
        let Error::TargetFull {
            free: told_free,
            needed: told_needed,
            ..
        } = &e
        else {
            panic!("{case}: not a full-target error: {e}");
        };
        let message = e.to_string();
        assert!(
            message.starts_with("target faulty(memory) is full: "),
            "{case}: {message}"
        );
        assert!(told_free.is_some_and(|n| n <= free), "{case}: {message}");
        // Once the lock fit, the backup read data and can estimate; the
        // estimate is an estimate, but in the right range.
        if free > 4096 {
            let n = told_needed.unwrap_or_else(|| panic!("{case}: no estimate: {message}"));
            assert!(message.contains(" free, about "), "{case}: {message}");
            assert!(n > needed / 4 && n < needed * 4, "{case}: {message}");
        }
        f.check_intact(&case).await;
        // What the failed run kept is what the next run reuses: packs that
        // no index could name were removed again.
        assert_eq!(f.unindexed_packs().await, Vec::<String>::new(), "{case}");
        eprintln!("{case}: {message}");
        f.backup_succeeds(&case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_writes_and_failing_bodies_never_become_part_of_a_snapshot() {
    for prefix in [PACKS, INDEX, LISTS, SNAPSHOTS, "locks/"] {
        for cut in [0u64, 10, 200] {
            let case = format!("{prefix} cut at {cut} bytes");
            let f = fixture().await;
            // The second pack: the run is then under way, with others stored
            // already. (The first index file is written after 16 packs.)
            let skip = usize::from(prefix == PACKS);
            f.faulty.cut_bodies(prefix, u64::MAX, skip);
            f.faulty.cut_bodies(prefix, cut, 1);
            let e = f
                .repo
                .backup(&f.keys, &sqlite("app", &f.db), &opts())
                .await
                .expect_err(&case);
            assert!(
                matches!(e, Error::ShortWrite { removed: true, .. }),
                "{case}: {e}"
            );
            assert!(
                e.to_string().contains("incomplete object was removed"),
                "{e}"
            );
            f.check_intact(&case).await;
            f.backup_succeeds(&case).await;
        }
        let case = format!("{prefix} failing after 100 bytes");
        let f = fixture().await;
        f.faulty.fail_bodies(prefix, 100, ErrorKind::Other, 1);
        let e = f
            .repo
            .backup(&f.keys, &sqlite("app", &f.db), &opts())
            .await
            .expect_err(&case);
        assert!(matches!(e, Error::Storage { .. }), "{case}: {e}");
        f.check_intact(&case).await;
        f.backup_succeeds(&case).await;
    }
}

/// One run to three targets, one of which fails mid-backup and one of which
/// is slow: the failing one reports its error and stores no manifest, the
/// other two store the same snapshot, which restores from each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_mid_run_fails_only_its_part_of_a_multi_target_backup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    add_rows(&db, 0, 3_000);
    let (keys, ids) = keypair();
    let (_, healthy) = memory_repo_for(&keys).await;
    let slow_store = FaultyStorage::new(Arc::new(MemoryStorage::default()));
    slow_store.set_delay(Some(Duration::from_millis(30)));
    let slow = Repository::open_or_init(Arc::new(slow_store), &keys)
        .await
        .unwrap();
    let mut failing_store = FaultyStorage::new(Arc::new(MemoryStorage::default()));
    failing_store.prefix = PACKS.into();
    failing_store.kind = ErrorKind::PermissionDenied;
    failing_store.abort_after = Some(3);
    let failing_store = Arc::new(failing_store);
    let failing = Repository::open_or_init(failing_store.clone(), &keys)
        .await
        .unwrap();

    let results = backup_core::backup::backup_many(
        &[&healthy, &failing, &slow],
        &keys,
        &sqlite("app", &db),
        &opts(),
    )
    .await
    .expect("the source was read");
    assert_eq!(results.len(), 3);
    assert!(results[1].is_err(), "the failing target's part failed");
    let a = &results[0].as_ref().unwrap().manifest;
    let b = &results[2].as_ref().unwrap().manifest;
    assert_eq!((&a.id, &a.sha256, a.size), (&b.id, &b.sha256, b.size));
    let stored = backup_core::storage::list_all(failing_store.inner.as_ref(), SNAPSHOTS)
        .await
        .unwrap();
    assert!(stored.is_empty(), "no manifest on the failing target");
    for repo in [&healthy, &slow] {
        let to = dir
            .path()
            .join(format!("restored-{}.db", rand::random::<u32>()));
        let m = repo.snapshots(&ids).await.unwrap().remove(0);
        assert_eq!(m.id, a.id);
        repo.restore(&ids, &m, &to, &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(dump_tasks(&to), dump_tasks(&db));
    }
}

/// `offsite unlock --all` under a running backup: the backup finds its lock
/// gone right before its commit point and fails without a manifest, since a
/// prune may meanwhile be deleting what it deduplicated against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_lock_was_removed_does_not_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    add_rows(&db, 0, 2_000);
    let keys = Arc::new(keypair().0);
    let store = FaultyStorage::new(Arc::new(MemoryStorage::default()));
    store.set_delay(Some(Duration::from_millis(40)));
    let store = Arc::new(store);
    let repo = Repository::open_or_init(store.clone(), &keys)
        .await
        .unwrap();
    let run = {
        let (repo, keys, spec) = (repo.clone(), keys.clone(), sqlite("app", &db));
        // Keys is not Clone; the Arc shares it with the task.
        tokio::spawn(async move { repo.backup(&keys, &spec, &opts()).await })
    };
    // Wait until the backup holds its lock, then remove every lock.
    let removed = loop {
        let locks = repo.locks().await.unwrap();
        if !locks.is_empty() {
            break repo.remove_locks(true).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(removed.len(), 1);
    let err = run
        .await
        .unwrap()
        .expect_err("the backup committed without its lock");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    let manifests = backup_core::storage::list_all(store.inner.as_ref(), SNAPSHOTS)
        .await
        .unwrap();
    assert!(manifests.is_empty());
}
