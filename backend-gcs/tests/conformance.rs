//! backend-gcs against the shared storage conformance suite, on a local
//! fake-gcs-server (`scripts/install-test-deps.sh` installs it), behind the
//! harness's XML-write shim (`backend_objstore::testing::GcsXmlWriteShim`).

mod common;

use std::sync::Arc;

use backend_gcs::GcsStorage;
use backup_core::storage::{testing, ErrorKind, PutMode, Storage};

/// 13 parts of 5 MiB: multipart upload, and the staged create-if-absent copy,
/// are both exercised. Smaller than S3's 200 MiB because fake-gcs-server and
/// the write shim both hold whole objects in memory.
const LARGE: u64 = 64 << 20;

backend_objstore::conformance_suite!(common::fake_gcs_target(), large = LARGE);

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
