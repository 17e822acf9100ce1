//! Database check records (docs/design/format-v2.md, 5.2) on in-memory
//! format 2 repositories: the owner's restore records its integrity_check,
//! later restores of the snapshot skip it, `--database-check` runs it
//! again, and records that are forged, moved, about another list or not ok
//! are skipped (the check runs).

mod support;

use std::path::{Path, PathBuf};

use backup_core::backup::{backup_many_v2, BackupOptions};
use backup_core::keyset::Holding;
use backup_core::repo::{Access, CheckedAt, ManifestV2, Repository};
use backup_core::restore::{RestoreOptions, RestoreSummary};
use chrono::{DateTime, Duration, Utc};
use support::v2::{put, sqlite_snap, write, Seal, V2};

fn at(minutes: i64) -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

fn database(dir: &Path, name: &str, rows: usize) -> Vec<u8> {
    support::v2::database(dir, name, rows).1
}

async fn sqlite_snapshot(v2: &V2, bytes: &[u8], finished: DateTime<Utc>) -> ManifestV2 {
    let snap = sqlite_snap(bytes, finished, Seal::of(&v2.writer_keys));
    write(&v2.repo, &v2.writer_keys, snap).await.manifest
}

/// Restores `id` with the owner's key set to a fresh path under `dir`,
/// checks the bytes, and returns the summary.
async fn restore(
    v2: &V2,
    id: &str,
    dir: &Path,
    expected: &[u8],
    opts: &RestoreOptions,
) -> RestoreSummary {
    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    let chosen = (all.snapshots.iter())
        .find(|s| s.manifest.id == id)
        .unwrap();
    let to: PathBuf = dir.join(format!("r{}", rand_suffix())).join("app.db");
    let summary = v2.repo.restore_v2(keys, chosen, &to, opts).await.unwrap();
    assert!(
        std::fs::read(&to).unwrap() == expected,
        "restored bytes differ"
    );
    assert_eq!(support::integrity(&to), "ok");
    summary
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn records(repo: &Repository, id: &str) -> Vec<String> {
    let mut keys: Vec<String> = (repo.list(&format!("checks/{id}/")).await.unwrap())
        .into_iter()
        .map(|m| m.key)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_recorded_check_skips_integrity_check() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let bytes = database(dir.path(), "a.db", 1500);
    let snap = sqlite_snapshot(&v2, &bytes, at(0)).await;
    let opts = RestoreOptions::default();

    let first = restore(&v2, &snap.id, dir.path(), &bytes, &opts).await;
    assert_eq!(
        first.recorded_check, None,
        "nothing recorded yet: the check ran"
    );
    let written = first.check_recorded.expect("the owner records its check");
    assert_eq!(records(&v2.repo, &snap.id).await, vec![written]);

    let second = restore(&v2, &snap.id, dir.path(), &bytes, &opts).await;
    let found = second.recorded_check.expect("the record is used");
    assert_eq!(
        (found.at, found.signer.as_str()),
        (CheckedAt::Restore, "owner")
    );
    assert_eq!(second.check_recorded, None);

    let forced = RestoreOptions {
        force_database_check: true,
        ..RestoreOptions::default()
    };
    let third = restore(&v2, &snap.id, dir.path(), &bytes, &forced).await;
    assert_eq!(third.recorded_check, None, "--database-check runs it");
    assert_eq!(third.check_recorded, None, "one record is enough");
    assert_eq!(records(&v2.repo, &snap.id).await.len(), 1);
}

/// A body like offsite's own for `snapshot`, with `list_blake3` and `result`.
fn record_body(snapshot: &ManifestV2, list_blake3: &str, result: &str) -> Vec<u8> {
    format!(
        "{{\"format\":\"offsite-check\",\"version\":2,\"snapshot\":\"{}\",\"list_blake3\":\"{list_blake3}\",\
         \"check\":\"integrity_check\",\"result\":\"{result}\",\"where\":\"backup\",\"host\":\"h\",\
         \"checked\":\"2026-12-01T10:30:00.000Z\",\"sqlite\":\"3.46.1\",\"tool\":\"offsite 0.1.0\"}}\n",
        snapshot.id
    )
    .into_bytes()
}

#[tokio::test]
async fn forged_moved_and_failed_check_records_are_skipped() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (a_bytes, b_bytes) = (
        database(dir.path(), "a.db", 800),
        database(dir.path(), "b.db", 1200),
    );
    let a = sqlite_snapshot(&v2, &a_bytes, at(0)).await;
    let b = sqlite_snapshot(&v2, &b_bytes, at(10)).await;
    let (keys, writer) = (&v2.owner_keys, Seal::of(&v2.writer_keys));
    let list = b.list_blake3.to_string();
    let bad: Vec<(&str, Seal, Vec<u8>)> = vec![
        (
            "stranger",
            Seal::By(v2.stranger()),
            record_body(&b, &list, "ok"),
        ),
        ("unsigned", Seal::Unsigned, record_body(&b, &list, "ok")),
        (
            "moved",
            Seal::Under(
                v2.writer_signer(),
                format!("checks/{}/0000000000000001", a.id),
            ),
            record_body(&b, &list, "ok"),
        ),
        (
            "other-list",
            writer.clone(),
            record_body(&b, &a.list_blake3.to_string(), "ok"),
        ),
        (
            "other-snapshot",
            writer.clone(),
            record_body(&a, &list, "ok"),
        ),
        ("failed", writer.clone(), record_body(&b, &list, "failed")),
    ];
    for (i, (what, seal, body)) in bad.into_iter().enumerate() {
        let key = format!("checks/{}/{i:016x}", b.id);
        put(&v2.repo, &key, seal.encode(&key, body, keys)).await;
        let got = restore(&v2, &b.id, dir.path(), &b_bytes, &RestoreOptions::default()).await;
        assert_eq!(got.recorded_check, None, "{what}: the record was used");
        // The owner's own record of that check, removed again so the next
        // bad record is the only one.
        let own = got
            .check_recorded
            .unwrap_or_else(|| panic!("{what}: not recorded"));
        v2.repo.delete(&own).await.unwrap();
    }

    // A writer's genuine record is used.
    let key = format!("checks/{}/00000000000000ff", b.id);
    put(
        &v2.repo,
        &key,
        writer.encode(&key, record_body(&b, &list, "ok"), keys),
    )
    .await;
    let got = restore(&v2, &b.id, dir.path(), &b_bytes, &RestoreOptions::default()).await;
    let found = got.recorded_check.expect("a writer's record is trusted");
    assert_eq!(
        (found.at, found.signer.as_str(), found.host.as_str()),
        (CheckedAt::Backup, "app-1", "h")
    );
    // And never for the other snapshot: its restore runs the check.
    let got = restore(&v2, &a.id, dir.path(), &a_bytes, &RestoreOptions::default()).await;
    assert_eq!(got.recorded_check, None);
}

/// A backup whose source says `database_check = "backup"`.
async fn backup_checked(v2: &V2, db: &Path) -> ManifestV2 {
    let access = Access {
        trust: v2.owner.public(),
        holding: Holding::Writer(v2.writer.clone()),
        memory: None,
    };
    let repo = Repository::open_with(v2.mem.clone(), Some(&access))
        .await
        .unwrap();
    let opts = BackupOptions {
        check_at_backup: true,
        ..BackupOptions::default()
    };
    let mut done = backup_many_v2(&[&repo], &support::sqlite("app", db), &opts)
        .await
        .unwrap();
    done.pop().unwrap().unwrap().manifest
}

/// Overwrites the first index b-tree page of `db` (closed) with a page of
/// another index's shape but no entries: SQLite still reads every page,
/// and integrity_check says rows are missing from the index.
fn break_the_index(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    let root: i64 = c
        .query_row(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'tasks_title'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(c);
    let mut bytes = std::fs::read(db).unwrap();
    let at = (root as usize - 1) * 4096;
    // An empty leaf index page: type 0x0a, no cells, content at the end.
    bytes[at..at + 4096].fill(0);
    bytes[at] = 0x0a;
    bytes[at + 5..at + 7].copy_from_slice(&0u16.to_be_bytes());
    std::fs::write(db, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_database_check_records_it_and_a_failed_one_does_not() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let bytes = database(dir.path(), "app.db", 1200);
    let good = backup_checked(&v2, &db).await;
    assert_eq!(records(&v2.repo, &good.id).await.len(), 1);
    let got = restore(
        &v2,
        &good.id,
        dir.path(),
        &bytes,
        &RestoreOptions::default(),
    )
    .await;
    let found = got.recorded_check.expect("the backup's record is used");
    assert_eq!(
        (found.at, found.signer.as_str()),
        (CheckedAt::Backup, "app-1")
    );

    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("CREATE INDEX tasks_title ON tasks(title); PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(c);
    break_the_index(&db);
    assert_ne!(support::integrity(&db), "ok", "the index is broken");
    let bad = backup_checked(&v2, &db).await;
    assert!(
        records(&v2.repo, &bad.id).await.is_empty(),
        "no record of a failed check"
    );
    // Its restore runs the check, which fails: nothing is put in place.
    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    let chosen = (all.snapshots.iter())
        .find(|s| s.manifest.id == bad.id)
        .unwrap();
    let to = dir.path().join("bad/app.db");
    let e = v2
        .repo
        .restore_v2(keys, chosen, &to, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("integrity_check"), "{e}");
    assert!(!to.exists());
}
