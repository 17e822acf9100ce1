//! backend-s3 behind a fault-injecting proxy in front of moto: transient
//! failures are retried away, permanent ones fail at once with a message that
//! says what to check, and an interrupted upload leaves nothing visible.

mod common;

use std::time::{Duration, Instant};

use backend_objstore::testing::{Fault, FaultProxy, Method, Rule};
use backend_s3::S3Storage;
use backup_core::storage::{
    bytes_stream, collect_bytes, list_all, testing, ErrorKind, PutMode, Storage,
};

const SLOW_DOWN: &str =
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
const INTERNAL: &str =
    "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
const DENIED: &str = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let server = common::moto().await;
    let proxy = FaultProxy::start(server.port).await;
    let s = S3Storage::open(&common::config(&proxy.url(), Some("retry"))).unwrap();

    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), 2).method(Method::PUT));
    s.put("small", bytes_stream(&b"hello"[..]), PutMode::Create)
        .await
        .unwrap();

    proxy.add(Rule::new(Fault::Status(500, INTERNAL), 3).uri_contains("partNumber="));
    proxy.add(Rule::new(Fault::Drop, 1).uri_contains("partNumber="));
    let size = 16 << 20;
    s.put(
        "big",
        testing::pattern_stream("big", size, 1 << 20),
        PutMode::Overwrite,
    )
    .await
    .unwrap();

    proxy.add(Rule::new(Fault::Drop, 2).method(Method::GET));
    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), 2).method(Method::GET));
    let body = collect_bytes(s.get("small").await.unwrap()).await.unwrap();
    assert_eq!(&body[..], b"hello");
    assert_eq!(s.head("big").await.unwrap().size, size);
    assert_eq!(list_all(&s, "").await.unwrap().len(), 2);
    assert_eq!(
        proxy.injected(),
        10,
        "every injected fault was hit and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_as_a_transient_error() {
    let server = common::moto().await;
    let proxy = FaultProxy::start(server.port).await;
    let mut cfg = common::config(&proxy.url(), None);
    cfg.max_retries = Some(2);
    let s = S3Storage::open(&cfg).unwrap();
    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), usize::MAX));
    let err = s.head("k").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    assert_eq!(proxy.injected(), 3, "one try and two retries");
    assert!(err.message.contains("s3://offsite-test"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_fails_fast_and_says_what_to_check() {
    let server = common::moto().await;
    let proxy = FaultProxy::start(server.port).await;
    let s = S3Storage::open(&common::config(&proxy.url(), Some("denied"))).unwrap();
    proxy.add(Rule::new(Fault::Status(403, DENIED), usize::MAX));

    let started = Instant::now();
    let err = s
        .put("k", bytes_stream(&b"x"[..]), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "403 was retried"
    );
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert_eq!(proxy.injected(), 1, "403 must not be retried");
    assert!(err.message.contains("s3://offsite-test/denied"), "{err}");
    assert!(err.message.contains("s3:PutObject"), "{err}");
    assert!(!err.to_string().contains("offsite-test-secret"), "{err}");

    let got = s.get("k").await.err().expect("get must fail");
    assert_eq!(got.kind, ErrorKind::PermissionDenied);
    let listed = list_all(&s, "").await.unwrap_err();
    assert_eq!(listed.kind, ErrorKind::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_multipart_upload_leaves_nothing() {
    let server = common::moto().await;
    let proxy = FaultProxy::start(server.port).await;
    let mut cfg = common::config(&proxy.url(), Some("cut"));
    cfg.max_retries = Some(1);
    let s = S3Storage::open(&cfg).unwrap();

    for mode in [PutMode::Overwrite, PutMode::Create] {
        proxy.clear();
        // The connection dies during every upload of the third part onwards.
        proxy.add(Rule::new(Fault::Drop, usize::MAX).uri_contains("partNumber=3"));
        let err = s
            .put(
                "obj",
                testing::pattern_stream("cut", 30 << 20, 1 << 20),
                mode,
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transient, "{mode:?}: {err}");
        proxy.clear();
        assert_eq!(s.head("obj").await.unwrap_err().kind, ErrorKind::NotFound);
        assert!(list_all(&s, "").await.unwrap().is_empty());
        assert_eq!(
            common::open_multipart_uploads(server.port).await,
            0,
            "{mode:?}: upload not aborted"
        );
    }
    let whole = S3Storage::open(&common::config(&server.url(), None)).unwrap();
    assert!(
        list_all(&whole, "").await.unwrap().is_empty(),
        "staging object left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_names_the_bucket() {
    let server = common::moto().await;
    let mut cfg = common::config(&server.url(), None);
    cfg.bucket = "no-such-bucket".into();
    let s = S3Storage::open(&cfg).unwrap();
    let err = list_all(&s, "").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("s3://no-such-bucket"), "{err}");
    assert!(err.message.contains("bucket name"), "{err}");
}
