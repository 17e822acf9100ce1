//! Prune, pins and verify on the in-memory target, and prune racing backups.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backup_core::backup::BackupOptions;
use backup_core::keys::Identities;
use backup_core::lock::LockWait;
use backup_core::prune::PruneOptions;
use backup_core::repo::{Repository, CHECKS, KEYRING, KEYS};
use backup_core::restore::RestoreOptions;
use backup_core::retention::Policy;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{
    bytes_stream, collect_bytes, testing, ByteStream, ErrorKind, ObjectMeta, PutMode, RetryPolicy,
    Storage, StorageError,
};
use backup_core::verify::{ReadData, VerifyOptions};
use backup_core::Error;
use rusqlite::Connection;

mod support;
use support::{
    add_rows, copy_of, data_dir, files, first_pack, flip_middle_byte, keep_last, keypair,
    keys_under, memory_repo, pack_size, snapshot_ids, sqlite, DiesAfter, Wrapped, Wrapper,
};

fn small_packs() -> BackupOptions {
    pack_size(64 << 10)
}

/// Every snapshot in the repository restores and verifies.
async fn all_restore(repo: &Repository, ids: &Identities) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let snaps = repo.snapshots(ids).await.unwrap();
    for m in &snaps {
        let to = dir.path().join(&m.id);
        repo.restore(ids, m, &to, &RestoreOptions::default())
            .await
            .unwrap_or_else(|e| panic!("snapshot {} no longer restores: {e}", m.id));
    }
    snaps.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_what_no_rule_keeps_and_only_the_data_only_it_used() {
    let (_dir, data) = data_dir();
    let (keys, ids, mem, repo) = memory_repo().await;
    let opts = pack_size(8 << 20);

    // 1: a and b share one pack. 2: only a (b's chunks now unused, in a live
    // pack). 3: only c, new data (a's pack used by 2 only).
    std::fs::write(data.join("a"), testing::pattern("a", 300_000)).unwrap();
    std::fs::write(data.join("b"), testing::pattern("b", 200_000)).unwrap();
    let s1 = repo.backup(&keys, &files("d", &data), &opts).await.unwrap();
    std::fs::remove_file(data.join("b")).unwrap();
    let s2 = repo.backup(&keys, &files("d", &data), &opts).await.unwrap();
    std::fs::remove_file(data.join("a")).unwrap();
    std::fs::write(data.join("c"), testing::pattern("c", 100_000)).unwrap();
    let s3 = repo.backup(&keys, &files("d", &data), &opts).await.unwrap();
    let packs_before = keys_under(&mem, "packs/").len();
    assert_eq!(packs_before, 2);

    // Dry run: the verdicts, and nothing changes.
    let before = mem.keys();
    let dry = repo
        .prune(
            &keys,
            &PruneOptions {
                dry_run: true,
                ..keep_last(2)
            },
        )
        .await
        .unwrap();
    assert_eq!(mem.keys(), before, "a dry run deletes nothing");
    let verdicts: Vec<(&str, bool, Vec<String>)> = dry
        .snapshots
        .iter()
        .map(|v| (v.manifest.id.as_str(), v.keep, v.reasons.clone()))
        .collect();
    assert_eq!(
        verdicts,
        [
            (s3.manifest.id.as_str(), true, vec!["last 2".to_string()]),
            (s2.manifest.id.as_str(), true, vec!["last 2".to_string()]),
            (s1.manifest.id.as_str(), false, vec![]),
        ]
    );
    assert_eq!(dry.packs_deleted, 0, "the shared pack is still used by 2");
    assert_eq!(dry.partly_used_packs, 1);
    assert_eq!(
        dry.unused_chunk_bytes, 200_000,
        "b's bytes stay in the pack"
    );

    // Pin 2, keep only the last: 1 goes, 2 stays (pinned), 3 stays (last).
    assert!(repo
        .pin(&keys, &s2.manifest.id, LockWait::default())
        .await
        .unwrap());
    assert!(!repo
        .pin(&keys, &s2.manifest.id, LockWait::default())
        .await
        .unwrap());
    let report = repo.prune(&keys, &keep_last(1)).await.unwrap();
    assert_eq!(report.removed().count(), 1);
    assert_eq!(report.snapshots[1].reasons, ["pinned"]);
    let left = snapshot_ids(&repo, &ids).await;
    assert_eq!(left, [s3.manifest.id.clone(), s2.manifest.id.clone()]);
    assert!(!mem.keys().contains(&s1.manifest.list), "its list went too");
    assert_eq!(all_restore(&repo, &ids).await, 2);

    // Unpinned, 2 goes with the pack only it used; the index names live packs only.
    assert!(repo.unpin(&s2.manifest.id).await.unwrap());
    assert!(!repo.unpin(&s2.manifest.id).await.unwrap());
    let report = repo.prune(&keys, &keep_last(1)).await.unwrap();
    assert_eq!(report.packs_deleted, 1);
    assert!(report.index_files_deleted >= 1);
    assert_eq!(report.partly_used_packs, 0);
    let packs = keys_under(&mem, "packs/");
    assert_eq!(packs.len(), 1);
    let index = repo.load_index(&ids).await.unwrap();
    assert_eq!(index.packs, packs, "no index file names a deleted pack");
    assert_eq!(all_restore(&repo, &ids).await, 1);
    assert!(repo
        .verify(&ids, &VerifyOptions::default())
        .await
        .unwrap()
        .ok());
    assert!(
        !mem.keys().iter().any(|k| k.starts_with("locks/")),
        "every lock was released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_cleans_up_after_interrupted_backups_and_keeps_sources_apart() {
    let (_dir, data) = data_dir();
    let (keys, ids, mem, repo) = memory_repo().await;
    std::fs::write(data.join("x"), testing::pattern("x", 500_000)).unwrap();
    let kept = repo
        .backup(&keys, &files("other", &data), &small_packs())
        .await
        .unwrap();
    let packs_of_kept = repo.list("packs/").await.unwrap().len();

    // An interrupted backup: packs and an index file, no manifest.
    std::fs::write(data.join("y"), testing::pattern("y", 500_000)).unwrap();
    let mut faulty = testing::FaultyStorage::new(mem.clone());
    faulty.prefix = "packs/".into();
    faulty.abort_after = Some(3);
    let faulty_repo = Repository::open(Arc::new(faulty)).await.unwrap();
    assert!(faulty_repo
        .backup(&keys, &files("d", &data), &small_packs())
        .await
        .is_err());
    let packs_before = repo.list("packs/").await.unwrap().len();

    // "other" has no policy of its own and the default is empty: all kept.
    let opts = PruneOptions {
        policies: HashMap::from([(
            "d".to_string(),
            Policy {
                last: 1,
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let report = repo.prune(&keys, &opts).await.unwrap();
    assert_eq!(report.sources_without_policy, ["other"]);
    assert_eq!(report.snapshots[0].reasons, ["no retention policy"]);
    assert!(packs_before > packs_of_kept);
    assert_eq!(
        report.packs_deleted as usize,
        packs_before - packs_of_kept,
        "the interrupted run's packs"
    );
    assert_eq!(repo.list("packs/").await.unwrap().len(), packs_of_kept);
    let snaps = repo.snapshots(&ids).await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].id, kept.manifest.id);
    assert_eq!(all_restore(&repo, &ids).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_flipped_deleted_and_truncated_objects() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    add_rows(
        &db,
        "CREATE TABLE t(x TEXT);",
        "INSERT INTO t VALUES (?1)",
        0..3000,
        |i| [format!("row {i} ").repeat(20)],
    );
    let c = Connection::open(&db).unwrap();
    let (keys, ids, mem, repo) = memory_repo().await;
    let spec = sqlite("app", &db);
    let s1 = repo.backup(&keys, &spec, &small_packs()).await.unwrap();
    c.execute("INSERT INTO t VALUES ('new')", []).unwrap();
    let s2 = repo.backup(&keys, &spec, &small_packs()).await.unwrap();
    let read = VerifyOptions {
        data: Some(ReadData::Snapshots(ids.clone())),
        ..Default::default()
    };
    let report = repo.verify(&ids, &read).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.snapshots.len(), 2);
    // Read-only credentials cannot write a lock, and still verify.
    let mut read_only = testing::FaultyStorage::new(mem.clone());
    read_only.prefix = "locks/".into();
    read_only.kind = ErrorKind::PermissionDenied;
    read_only
        .fail_puts
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let read_only = Repository::open(Arc::new(read_only)).await.unwrap();
    assert!(read_only.verify(&ids, &read).await.unwrap().ok());

    // A flipped byte in a pack only shows when the data is read.
    let packs = keys_under(&mem, "packs/");
    flip_middle_byte(&mem, &packs[0]);
    let meta_ids = keys.metadata_key();
    assert!(repo
        .verify(&meta_ids, &VerifyOptions::default())
        .await
        .unwrap()
        .ok());
    let report = repo.verify(&ids, &read).await.unwrap();
    assert!(!report.ok());
    assert!(
        report
            .snapshots
            .iter()
            .any(|s| s.fault.as_deref().unwrap_or("").contains(&packs[0])),
        "{report:?}"
    );

    // A deleted pack shows without reading data.
    mem.delete(&packs[1]).await.unwrap();
    let report = repo
        .verify(&meta_ids, &VerifyOptions::default())
        .await
        .unwrap();
    assert!(!report.ok());
    assert!(report.snapshots.iter().any(|s| s
        .fault
        .as_deref()
        .unwrap_or("")
        .contains("is missing")));

    // A truncated list breaks only its snapshot.
    let mut list = Vec::new();
    mem.tamper(&s2.manifest.list, |d| {
        list = d.clone();
        d.truncate(d.len() - 40)
    });
    let report = repo
        .verify(&meta_ids, &VerifyOptions::default())
        .await
        .unwrap();
    let s2_check = report
        .snapshots
        .iter()
        .find(|s| s.id == s2.manifest.id)
        .unwrap();
    assert!(
        s2_check.fault.as_deref().unwrap().contains("truncated")
            || s2_check.fault.as_deref().unwrap().contains("corrupt"),
        "{s2_check:?}"
    );
    assert_eq!(report.snapshots.len(), 2);
    let _ = s1;
    // Prune refuses to work on a repository whose kept snapshots lost data
    // (a pack is missing; the list read again, so what it needs is known).
    mem.tamper(&s2.manifest.list, |d| *d = list.clone());
    let e = repo.prune(&keys, &keep_last(5)).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

/// Puts that take a moment, so a backup stays between loading the index and
/// writing its manifest long enough for a prune to run in the middle.
#[derive(Debug)]
struct Slow(Arc<dyn Storage>);

#[async_trait]
impl Wrapper for Slow {
    fn inner(&self) -> &dyn Storage {
        self.0.as_ref()
    }
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.put(key, body, mode).await
    }
    fn describe(&self) -> String {
        "slow memory".into()
    }
}

/// With prune's lock made shared (so it no longer excludes backups), this
/// fails within a few rounds: prune deletes the packs a running backup has
/// uploaded but not yet named in a manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_racing_backups_never_loses_a_chunk() {
    let (_dir, data) = data_dir();
    let (keys, ids) = keypair();
    let storage: Arc<dyn Storage> = Arc::new(Wrapped(Slow(Arc::new(MemoryStorage::default()))));
    let repo = Repository::open_or_init(storage, &keys).await.unwrap();
    let keys = Arc::new(keys);
    let opts = BackupOptions {
        lock_wait: LockWait {
            wait: Duration::from_secs(600),
            poll: Duration::from_millis(1),
        },
        ..pack_size(32 << 10)
    };
    let mut pruned = 0;
    let mut refused = 0;
    for round in 0..12u64 {
        // Each round changes half the data: the backup uploads new packs and
        // dedups the rest against packs the previous snapshot uses, which
        // the prune (keep only the newest) would delete if it could.
        std::fs::write(
            data.join("stable"),
            testing::pattern(&format!("s{}", round / 2), 200_000),
        )
        .unwrap();
        std::fs::write(
            data.join("changing"),
            testing::pattern(&format!("c{round}"), 200_000),
        )
        .unwrap();
        let b = {
            let (repo, keys, opts, spec) =
                (repo.clone(), keys.clone(), opts.clone(), files("d", &data));
            tokio::spawn(async move { repo.backup(&keys, &spec, &opts).await })
        };
        // Start the prune at a different point of the backup each round.
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        match repo.prune(&keys, &keep_last(1)).await {
            Ok(_) => pruned += 1,
            Err(Error::Locked { .. }) => refused += 1,
            Err(e) => panic!("prune failed: {e}"),
        }
        b.await.unwrap().unwrap();
        all_restore(&repo, &ids).await;
    }
    // And once more with nothing running: everything kept still restores.
    repo.prune(&keys, &keep_last(1)).await.unwrap();
    assert_eq!(all_restore(&repo, &ids).await, 1);
    assert_eq!(pruned + refused, 12);
    assert!(repo
        .verify(
            &ids,
            &VerifyOptions {
                data: Some(ReadData::Snapshots(ids.clone())),
                ..Default::default()
            }
        )
        .await
        .unwrap()
        .ok());
}

/// Reads under `prefix` fail: transiently, or by returning fewer bytes than
/// are stored (a broken download that reports no error).
#[derive(Debug)]
struct BadReads {
    inner: Arc<dyn Storage>,
    prefix: String,
    short: bool,
}

#[async_trait]
impl Wrapper for BadReads {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        if !key.starts_with(&self.prefix) {
            return self.inner.get(key).await;
        }
        if !self.short {
            return Err(StorageError::new(ErrorKind::Transient, key, "injected"));
        }
        let all = collect_bytes(self.inner.get(key).await?).await?;
        Ok(bytes_stream(all.slice(..all.len() / 2)))
    }
    fn describe(&self) -> String {
        "bad reads".into()
    }
}

async fn put(mem: &MemoryStorage, key: &str, data: impl Into<bytes::Bytes>) {
    mem.put(key, bytes_stream(data), PutMode::Create)
        .await
        .unwrap();
}

/// Junk is deleted only when the whole object, as listed, is provably not
/// offsite's; never on a download that failed or came back short, never an
/// object a newer offsite may have written, never one under format 2's prefixes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_provable_junk_only_and_never_on_a_failed_download() {
    let (_dir, data) = data_dir();
    std::fs::write(data.join("a"), testing::pattern("a", 200_000)).unwrap();
    let (keys, ids, mem, repo) = memory_repo().await;
    let s = repo
        .backup(&keys, &files("d", &data), &small_packs())
        .await
        .unwrap();
    let genuine = format!("snapshots/{}", s.manifest.id);
    let junk = [
        "damaged/11111111111111111111111111111111",
        "index/00000000000000000000000000000000",
        "snapshots/20991231T235959Z-0badc0de",
    ];
    let noise: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
    put(&mem, junk[0], noise.clone()).await;
    put(&mem, junk[1], Vec::new()).await;
    put(&mem, junk[2], noise.clone()).await;
    // Format 2's prefixes are not format 1's to judge: whatever is there
    // (a half-done migration, another tool) stays.
    for prefix in [KEYRING, KEYS, CHECKS] {
        put(&mem, &format!("{prefix}00000001"), noise.clone()).await;
        put(
            &mem,
            &format!("{prefix}0001/{}", "0".repeat(32)),
            Vec::new(),
        )
        .await;
    }
    let everything = mem.keys();

    for (prefix, short) in [
        (genuine.as_str(), false),
        (genuine.as_str(), true),
        (junk[2], true),
        ("index/", true),
    ] {
        let bad = BadReads {
            inner: mem.clone(),
            prefix: prefix.to_string(),
            short,
        };
        let flaky = Repository::open(Arc::new(Wrapped(bad)))
            .await
            .unwrap()
            .with_retry(RetryPolicy::fast());
        let e = flaky.prune(&keys, &keep_last(5)).await.unwrap_err();
        assert!(matches!(e, Error::Storage { .. }), "{prefix} {short}: {e}");
        assert_eq!(mem.keys(), everything, "{prefix} {short}: nothing deleted");
    }

    // A manifest of a newer format is not junk: prune stops, listing skips it.
    let newer = "snapshots/20990101T000000Z-00000002";
    let body = Repository::encode_metadata(&keys, br#"{"format":"offsite-snapshot","version":2}"#)
        .unwrap();
    put(&mem, newer, body).await;
    let e = repo.prune(&keys, &keep_last(5)).await.unwrap_err();
    assert!(e.to_string().contains(newer), "{e}");
    assert_eq!(repo.snapshots(&ids).await.unwrap().len(), 1);
    mem.delete(newer).await.unwrap();
    assert_eq!(mem.keys(), everything, "nothing deleted");

    let report = repo.prune(&keys, &keep_last(5)).await.unwrap();
    assert_eq!(report.junk_deleted, junk.to_vec());
    let left = mem.keys();
    for k in junk {
        assert!(!left.iter().any(|l| l == k), "{k} deleted");
    }
    assert_eq!(left.len(), everything.len() - junk.len());
    let format_2 = |k: &&String| [KEYRING, KEYS, CHECKS].iter().any(|p| k.starts_with(p));
    assert_eq!(left.iter().filter(format_2).count(), 6, "{left:?}");
    assert_eq!(all_restore(&repo, &ids).await, 1);
}

/// A copy recorded as damaged keeps its pack only while it is the last copy;
/// once a backup stored the chunks again, the pack and its record go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_damaged_copies_only_as_last_copies_and_drops_their_records() {
    let (dir, data) = data_dir();
    std::fs::write(data.join("a"), testing::pattern("a", 300_000)).unwrap();
    let (keys, ids, mem, repo) = memory_repo().await;
    let spec = files("d", &data);
    let s1 = repo.backup(&keys, &spec, &small_packs()).await.unwrap();
    let pack = first_pack(&mem);
    // Its age header: nothing in the pack decodes.
    mem.tamper(&pack, |d| d[3] ^= 0x01);
    let out = dir.path().join("r1");
    repo.restore(&ids, &s1.manifest, &out, &RestoreOptions::default())
        .await
        .unwrap_err();
    let records = || keys_under(&mem, "damaged/");
    assert_eq!(records().len(), 1, "the restore recorded the damage");

    // The only copy: kept, and counted.
    let report = repo.prune(&keys, &keep_last(1)).await.unwrap();
    assert!(report.damaged_chunks > 0);
    assert!(mem.keys().contains(&pack));

    let s2 = repo.backup(&keys, &spec, &small_packs()).await.unwrap();
    assert!(
        s2.manifest.new_bytes > 0,
        "the damaged chunks are stored again"
    );
    let report = repo.prune(&keys, &keep_last(1)).await.unwrap();
    assert_eq!(report.damaged_chunks, 0);
    assert_eq!(report.damage_records_deleted, 1);
    assert!(!mem.keys().contains(&pack), "the damaged pack is deleted");
    assert!(records().is_empty(), "and its record with it");
    assert_eq!(all_restore(&repo, &ids).await, 1);
    let read = VerifyOptions {
        data: Some(ReadData::Snapshots(ids.clone())),
        ..Default::default()
    };
    assert!(repo.verify(&ids, &read).await.unwrap().ok());
}

/// Prune cut off after each of its writes and deletes in turn: every
/// snapshot still listed restores, the ones the rules keep are all there,
/// and the next prune finishes the job to the same result as an
/// uninterrupted one, with a repository that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_killed_after_any_step_loses_nothing_and_the_next_one_finishes() {
    let (_dir, data) = data_dir();
    let (keys, ids, base, repo) = memory_repo().await;
    for i in 0..4 {
        std::fs::write(
            data.join(format!("f{i}")),
            testing::pattern(&i.to_string(), 150_000),
        )
        .unwrap();
        if i == 2 {
            std::fs::remove_file(data.join("f0")).unwrap();
        }
        repo.backup(&keys, &files("d", &data), &small_packs())
            .await
            .unwrap();
    }

    let whole = copy_of(&base).await;
    let whole_repo = Repository::open(whole.clone()).await.unwrap();
    let report = whole_repo.prune(&keys, &keep_last(2)).await.unwrap();
    assert!(report.packs_deleted > 0, "the test needs packs to delete");
    let expected = snapshot_ids(&whole_repo, &ids).await;
    assert_eq!(expected.len(), 2);
    let mutations = whole
        .keys()
        .iter()
        .filter(|k| !base.keys().contains(k))
        .count()
        + base
            .keys()
            .iter()
            .filter(|k| !whole.keys().contains(k) && !k.starts_with("locks/"))
            .count();
    assert!(mutations >= 6, "only {mutations} steps to cut prune at");

    for after in 0..mutations {
        let copy = copy_of(&base).await;
        let dying = Arc::new(Wrapped(DiesAfter::new(copy.clone(), after)));
        let dying_repo = Repository::open(dying).await.unwrap();
        assert!(
            dying_repo.prune(&keys, &keep_last(2)).await.is_err(),
            "killed after {after} of {mutations} steps, prune said it succeeded"
        );
        let copy_repo = Repository::open(copy.clone()).await.unwrap();
        let left = copy_repo.snapshots(&ids).await.unwrap();
        for id in &expected {
            assert!(
                left.iter().any(|m| &m.id == id),
                "killed after {after} steps: kept snapshot {id} is gone"
            );
        }
        all_restore(&copy_repo, &ids).await;
        copy_repo.prune(&keys, &keep_last(2)).await.unwrap();
        let now = snapshot_ids(&copy_repo, &ids).await;
        assert_eq!(now, expected, "killed after {after} steps");
        assert_eq!(
            copy_repo.list("packs/").await.unwrap().len(),
            whole_repo.list("packs/").await.unwrap().len(),
            "killed after {after} steps: the next prune left other packs"
        );
        let read = VerifyOptions {
            data: Some(ReadData::Snapshots(ids.clone())),
            ..Default::default()
        };
        let check = copy_repo.verify(&ids, &read).await.unwrap();
        assert!(check.ok(), "killed after {after} steps: {check:?}");
    }
}
