//! The `object_store`-specific conformance scenarios, written once: beside
//! the core suite every backend runs ([`backup_core::storage::testing`]),
//! `backend-s3` (on moto) and `backend-gcs` (on fake-gcs-server) both check
//! prefixes, multipart uploads and staged create-if-absent copies here. A
//! backend plugs in with the same [`FaultTarget`] as the fault scenarios and
//! the [`conformance_suite!`](crate::conformance_suite) macro, which makes one
//! `#[tokio::test]` per scenario, each with a server of its own.

use std::sync::Arc;
use std::time::Instant;

use backup_core::storage::testing::{pattern_stream, run_all};
use backup_core::storage::{
    bytes_stream, list_all, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
};

use super::faults::FaultTarget;

fn open(t: &dyn FaultTarget, prefix: Option<&str>) -> Arc<dyn Storage> {
    t.open(
        &format!("http://127.0.0.1:{}", t.port()),
        t.bucket(),
        prefix,
    )
}

/// The core suite, with a `large`-byte object (enough parts that multipart
/// upload and the staged create-if-absent copy are both exercised), and no
/// multipart upload left open.
pub async fn core_suite(t: &dyn FaultTarget, large: u64) {
    let started = Instant::now();
    run_all(open(t, Some("repos/host1")), large).await;
    eprintln!(
        "{} conformance suite with a {large}-byte object: {:?}",
        t.scheme(),
        started.elapsed()
    );
    assert_eq!(t.open_uploads().await, 0);
}

/// A prefix isolates targets in one bucket and never shows in keys.
pub async fn prefix_isolates_targets_and_is_stripped(t: &dyn FaultTarget) {
    let (a, ab, whole) = (open(t, Some("a")), open(t, Some("a/b")), open(t, None));
    a.put("k", bytes_stream(&b"1"[..]), PutMode::Create)
        .await
        .unwrap();
    ab.put("k", bytes_stream(&b"2"[..]), PutMode::Create)
        .await
        .unwrap();
    let keys = |v: Vec<ObjectMeta>| {
        let mut k: Vec<String> = v.into_iter().map(|m| m.key).collect();
        k.sort();
        k
    };
    assert_eq!(keys(list_all(ab.as_ref(), "").await.unwrap()), ["k"]);
    assert_eq!(keys(list_all(a.as_ref(), "").await.unwrap()), ["b/k", "k"]);
    assert_eq!(
        keys(list_all(whole.as_ref(), "a/").await.unwrap()),
        ["a/b/k", "a/k"]
    );
    assert_eq!(ab.head("k").await.unwrap().size, 1);
    assert_eq!(
        ab.describe(),
        format!("{}://{}/a/b", t.scheme(), t.bucket())
    );
}

/// A multipart overwrite lands whole; a body that fails after several parts
/// fails the put, keeps the old object and aborts the upload.
pub async fn multipart_overwrite_and_aborted_body(t: &dyn FaultTarget) {
    let s = open(t, Some("mp"));
    // 23 MiB in 5 MiB parts: five parts, the last one short.
    let size = 23 << 20;
    s.put(
        "obj",
        pattern_stream("mp", size, 1 << 20),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert_eq!(s.head("obj").await.unwrap().size, size);
    let broken = Box::pin(futures::StreamExt::chain(
        pattern_stream("broken", 17 << 20, 1 << 20),
        futures::stream::once(async {
            Err(StorageError::new(ErrorKind::Other, "body", "source died"))
        }),
    ));
    let err = s.put("obj", broken, PutMode::Overwrite).await.unwrap_err();
    assert_eq!(err.message, "source died");
    assert_eq!(
        s.head("obj").await.unwrap().size,
        size,
        "old object replaced"
    );
    assert_eq!(t.open_uploads().await, 0, "multipart upload not aborted");
}

/// A large create of a key that exists fails as `AlreadyExists` and leaves
/// no staging object or open upload behind.
pub async fn large_create_of_existing_key_fails_and_leaves_no_staging(t: &dyn FaultTarget) {
    let s = open(t, Some("cr"));
    s.put("k", bytes_stream(&b"first"[..]), PutMode::Create)
        .await
        .unwrap();
    let err = s
        .put(
            "k",
            pattern_stream("big", 12 << 20, 1 << 20),
            PutMode::Create,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::AlreadyExists, "{err}");
    let all = list_all(open(t, None).as_ref(), "").await.unwrap();
    assert_eq!(all.len(), 1, "staging object left behind: {all:?}");
    assert_eq!(t.open_uploads().await, 0);
}

/// One `#[tokio::test]` per conformance scenario, each on the target `$start`
/// (an async block) makes, the core suite with a `$large`-byte object.
#[macro_export]
macro_rules! conformance_suite {
    ($start:expr, large = $large:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn conformance_suite() {
            let target = $start.await;
            $crate::testing::conformance::core_suite(&target, $large).await;
        }
        $crate::conformance_suite!(@tests $start;
            prefix_isolates_targets_and_is_stripped,
            multipart_overwrite_and_aborted_body,
            large_create_of_existing_key_fails_and_leaves_no_staging,
        );
    };
    (@tests $start:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let target = $start.await;
                $crate::testing::conformance::$name(&target).await;
            }
        )*
    };
}
