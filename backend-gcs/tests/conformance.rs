//! backend-gcs against the shared storage conformance suite, on a local
//! fake-gcs-server (`scripts/install-test-deps.sh` installs it), behind the
//! harness's XML-write shim (`backend_objstore::testing::GcsXmlWriteShim`).

mod common;

use std::sync::Arc;
use std::time::Instant;

use backend_gcs::GcsStorage;
use backup_core::storage::{bytes_stream, list_all, testing, ErrorKind, PutMode, Storage};

/// 13 parts of 5 MiB: multipart upload, and the staged create-if-absent copy,
/// are both exercised. Smaller than S3's 200 MiB because fake-gcs-server and
/// the write shim both hold whole objects in memory.
const LARGE: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = common::fake_gcs().await;
    let storage = GcsStorage::open(&common::config(&server.url(), Some("repos/host1"))).unwrap();
    let started = Instant::now();
    testing::run_all(Arc::new(storage), LARGE).await;
    eprintln!(
        "gcs conformance suite with a {LARGE}-byte object: {:?}",
        started.elapsed()
    );
    assert_eq!(server.open_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_isolates_targets_and_is_stripped() {
    let server = common::fake_gcs().await;
    let a = GcsStorage::open(&common::config(&server.url(), Some("a"))).unwrap();
    let ab = GcsStorage::open(&common::config(&server.url(), Some("a/b"))).unwrap();
    let whole = GcsStorage::open(&common::config(&server.url(), None)).unwrap();
    a.put("k", bytes_stream(&b"1"[..]), PutMode::Create)
        .await
        .unwrap();
    ab.put("k", bytes_stream(&b"2"[..]), PutMode::Create)
        .await
        .unwrap();

    let keys = |v: Vec<backup_core::storage::ObjectMeta>| {
        let mut k: Vec<String> = v.into_iter().map(|m| m.key).collect();
        k.sort();
        k
    };
    assert_eq!(keys(list_all(&ab, "").await.unwrap()), ["k"]);
    assert_eq!(keys(list_all(&a, "").await.unwrap()), ["b/k", "k"]);
    assert_eq!(
        keys(list_all(&whole, "a/").await.unwrap()),
        ["a/b/k", "a/k"]
    );
    assert_eq!(ab.head("k").await.unwrap().size, 1);
    assert_eq!(ab.describe(), format!("gs://{}/a/b", common::BUCKET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_overwrite_and_aborted_body() {
    let server = common::fake_gcs().await;
    let s = GcsStorage::open(&common::config(&server.url(), Some("mp"))).unwrap();
    // 23 MiB in 5 MiB parts: five parts, the last one short.
    let size = 23 << 20;
    s.put(
        "obj",
        testing::pattern_stream("mp", size, 1 << 20),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(s.head("obj").await.unwrap().size, size);

    // A body that fails after several parts were uploaded: the put fails,
    // the old object stays, and the multipart upload is aborted.
    let broken = Box::pin(futures::StreamExt::chain(
        testing::pattern_stream("broken", 17 << 20, 1 << 20),
        futures::stream::once(async {
            Err(backup_core::storage::StorageError::new(
                ErrorKind::Other,
                "body",
                "source died",
            ))
        }),
    ));
    let err = s.put("obj", broken, PutMode::Overwrite).await.unwrap_err();
    assert_eq!(err.message, "source died");
    assert_eq!(
        s.head("obj").await.unwrap().size,
        size,
        "old object replaced"
    );
    assert_eq!(server.open_uploads(), 0, "multipart upload not aborted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_create_of_existing_key_fails_and_leaves_no_staging() {
    let server = common::fake_gcs().await;
    let s = GcsStorage::open(&common::config(&server.url(), Some("cr"))).unwrap();
    s.put("k", bytes_stream(&b"first"[..]), PutMode::Create)
        .await
        .unwrap();
    let err = s
        .put(
            "k",
            testing::pattern_stream("big", 12 << 20, 1 << 20),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    let whole = GcsStorage::open(&common::config(&server.url(), None)).unwrap();
    let all = list_all(&whole, "").await.unwrap();
    assert_eq!(all.len(), 1, "staging object left behind: {all:?}");
    assert_eq!(server.open_uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_creates_have_one_winner() {
    let server = common::fake_gcs().await;
    let s = Arc::new(GcsStorage::open(&common::config(&server.url(), Some("race"))).unwrap());
    let racers: Vec<_> = (0..3)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let body = testing::pattern_stream(&format!("racer{i}"), 11 << 20, 1 << 20);
                (i, s.put("k", body, PutMode::Create).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        let (i, result) = r.await.unwrap();
        match result {
            Ok(_) => winners.push(i),
            Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let got = backup_core::storage::collect_bytes(s.get("k").await.unwrap())
        .await
        .unwrap();
    assert!(
        got[..] == testing::pattern(&format!("racer{}", winners[0]), 11 << 20)[..],
        "the object is not the winner's"
    );
}
