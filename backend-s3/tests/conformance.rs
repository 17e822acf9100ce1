//! backend-s3 against the shared storage conformance suite, on a local moto
//! server (`scripts/install-test-deps.sh` installs it).

mod common;

use std::sync::Arc;
use std::time::Instant;

use backend_s3::S3Storage;
use backup_core::storage::{bytes_stream, list_all, testing, ErrorKind, PutMode, Storage};

/// Large enough for 40 parts of 5 MiB: multipart upload, and the staged
/// create-if-absent copy, are both exercised.
const LARGE: u64 = 200 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let server = common::moto().await;
    let storage = S3Storage::open(&common::config(&server.url(), Some("repos/host1"))).unwrap();
    let started = Instant::now();
    testing::run_all(Arc::new(storage), LARGE).await;
    eprintln!(
        "s3 conformance suite with a {LARGE}-byte object: {:?}",
        started.elapsed()
    );
    assert_eq!(common::open_multipart_uploads(server.port).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_isolates_targets_and_is_stripped() {
    let server = common::moto().await;
    let a = S3Storage::open(&common::config(&server.url(), Some("a"))).unwrap();
    let ab = S3Storage::open(&common::config(&server.url(), Some("a/b"))).unwrap();
    let whole = S3Storage::open(&common::config(&server.url(), None)).unwrap();
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
    assert_eq!(ab.describe(), format!("s3://{}/a/b", common::BUCKET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_overwrite_and_aborted_body() {
    let server = common::moto().await;
    let s = S3Storage::open(&common::config(&server.url(), Some("mp"))).unwrap();
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
    assert_eq!(common::open_multipart_uploads(server.port).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_create_of_existing_key_fails_and_leaves_no_staging() {
    let server = common::moto().await;
    let s = S3Storage::open(&common::config(&server.url(), Some("cr"))).unwrap();
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
    let whole = S3Storage::open(&common::config(&server.url(), None)).unwrap();
    let all = list_all(&whole, "").await.unwrap();
    assert_eq!(all.len(), 1, "staging object left behind: {all:?}");
    assert_eq!(common::open_multipart_uploads(server.port).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_conditional_writes_create_checks_first() {
    let server = common::moto().await;
    let mut cfg = common::config(&server.url(), Some("nocond"));
    cfg.conditional_writes = false;
    let s = S3Storage::open(&cfg).unwrap();
    s.put("k", bytes_stream(&b"first"[..]), PutMode::Create)
        .await
        .unwrap();
    let err = s
        .put("k", bytes_stream(&b"second"[..]), PutMode::Create)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    // Large creates go straight to a multipart upload: no staging copy.
    s.put(
        "big",
        testing::pattern_stream("big", 12 << 20, 1 << 20),
        PutMode::Create,
    )
    .await
    .unwrap();
    assert_eq!(s.head("big").await.unwrap().size, 12 << 20);
    let err = s
        .put(
            "big",
            testing::pattern_stream("big", 12 << 20, 1 << 20),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    assert_eq!(common::open_multipart_uploads(server.port).await, 0);
}

// No race test of large creates here, unlike backend-gcs: moto checks
// `If-None-Match: *` on CompleteMultipartUpload and then assembles the parts
// without a lock, so concurrent completions all succeed on moto (AWS S3 makes
// them atomic and answers the losers 412 or 409). What moto can show, and
// `large_create_of_existing_key_fails_and_leaves_no_staging` checks, is that
// the staged copy is completed conditionally.
