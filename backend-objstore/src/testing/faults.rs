//! The fault scenarios every `object_store` backend must pass, written once:
//! `backend-s3` runs them against moto and `backend-gcs` against
//! fake-gcs-server, each through a [`FaultProxy`] that answers errors or drops
//! connections. A backend plugs in with a [`FaultTarget`] and the
//! [`fault_suite!`](crate::fault_suite) macro, which makes one `#[tokio::test]`
//! per scenario, each with a server of its own.
//!
//! Retries are the core's ([`RetryPolicy`]): the backends send each request
//! once, so every scenario that expects a failure to be retried away calls
//! the storage through the policy, as the repository does. The budget
//! scenario checks that it is the only layer: an object costs exactly the
//! policy's attempts, never a product of two retry loops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backup_core::storage::testing::pattern_stream;
use backup_core::storage::{
    bytes_stream, collect_bytes, list_all, ErrorKind, PutMode, RetryPolicy, Storage,
};

use super::{Fault, FaultProxy, Method, Rule, Step};
use crate::TMP_DIR;

/// An `object_store` backend under test, with its server running.
#[async_trait]
pub trait FaultTarget: Send + Sync {
    /// Where the server listens on 127.0.0.1 (the proxy forwards there).
    fn port(&self) -> u16;
    /// The backend opened on `endpoint` (a URL) for `bucket` below
    /// `prefix`, with 5 MiB parts, test credentials and its default
    /// upload concurrency.
    fn open(&self, endpoint: &str, bucket: &str, prefix: Option<&str>) -> Arc<dyn Storage>;
    /// The bucket the server was started with.
    fn bucket(&self) -> &'static str;
    /// How targets of this kind are named: `s3`, `gs`.
    fn scheme(&self) -> &'static str;
    /// A word a permission error must contain to say what to grant.
    fn permission_hint(&self) -> &'static str;
    /// Multipart uploads started and neither completed nor aborted.
    async fn open_uploads(&self) -> usize;
}

const SLOW_DOWN: &str =
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
const INTERNAL: &str =
    "<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
const DENIED: &str = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// 5xx answers and dropped connections on small puts, part uploads and
/// reads are retried away by the core's policy, and every fault is hit.
pub async fn transient_failures_are_retried(t: &dyn FaultTarget) {
    let proxy = FaultProxy::start(t.port()).await;
    let s = t.open(&proxy.url(), t.bucket(), Some("retry"));
    let retry = RetryPolicy::fast();

    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), 2).method(Method::PUT));
    retry
        .run(|| s.put("small", bytes_stream(&b"hello"[..]), PutMode::Create))
        .await
        .unwrap();

    // A failed part fails that attempt of the object; the next attempt
    // uploads it again from the start.
    proxy.add(Rule::new(Fault::Status(500, INTERNAL), 3).uri_contains("partNumber="));
    proxy.add(Rule::new(Fault::Drop, 1).uri_contains("partNumber="));
    let size = 16 << 20;
    retry
        .run(|| {
            s.put(
                "big",
                pattern_stream("big", size, 1 << 20),
                PutMode::Overwrite,
            )
        })
        .await
        .unwrap();

    proxy.add(Rule::new(Fault::Drop, 2).method(Method::GET));
    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), 2).method(Method::GET));
    let body = retry
        .run(|| async { collect_bytes(s.get("small").await?).await })
        .await
        .unwrap();
    assert_eq!(&body[..], b"hello");
    assert_eq!(s.head("big").await.unwrap().size, size);
    assert_eq!(list_all(s.as_ref(), "").await.unwrap().len(), 2);
    assert_eq!(
        proxy.injected(),
        10,
        "every injected fault was hit and retried"
    );
    assert_eq!(t.open_uploads().await, 0, "failed attempts were aborted");
}

/// A server that always answers 503 costs exactly the policy's attempts
/// per object and per call, whatever the call: the backend itself sends
/// each request once.
pub async fn one_retry_budget_per_object(t: &dyn FaultTarget) {
    let proxy = FaultProxy::start(t.port()).await;
    let s = t.open(&proxy.url(), t.bucket(), Some("budget"));
    proxy.add(Rule::new(Fault::Status(503, SLOW_DOWN), usize::MAX));
    let retry = RetryPolicy::fast();
    let budget = retry.max_attempts as usize;

    // The first staged create of an instance lists the staging area once
    // to clean up after killed runs: housekeeping, not an attempt.
    let attempts = || proxy.injected() - proxy.count(Method::GET, TMP_DIR);
    let mut seen = 0;
    let mut check = |what: &str, err: backup_core::storage::StorageError| {
        assert_eq!(err.kind, ErrorKind::Transient, "{what}: {err}");
        let target = format!("{}://{}/budget", t.scheme(), t.bucket());
        assert!(err.message.contains(&target), "{what}: {err}");
        let requests = attempts() - seen;
        seen = attempts();
        assert_eq!(
            requests, budget,
            "{what}: {requests} requests for one object, the core's budget is {budget}"
        );
    };
    for mode in [PutMode::Overwrite, PutMode::Create] {
        let small = retry
            .run(|| s.put("small", bytes_stream(&b"x"[..]), mode))
            .await
            .unwrap_err();
        check(&format!("small {mode:?} put"), small);
        let big = retry
            .run(|| s.put("big", pattern_stream("big", 12 << 20, 1 << 20), mode))
            .await
            .unwrap_err();
        check(&format!("multipart {mode:?} put"), big);
    }
    let got = retry
        .run(|| async { collect_bytes(s.get("small").await?).await })
        .await
        .unwrap_err();
    check("get", got);
    check("head", retry.run(|| s.head("small")).await.unwrap_err());
    check("delete", retry.run(|| s.delete("small")).await.unwrap_err());
    let listed = retry.run(|| list_all(s.as_ref(), "")).await.unwrap_err();
    check("list", listed);
}

/// 403 is not retried by the backend nor by the core, and says which
/// credentials and permissions to check without showing the secret.
pub async fn permission_denied_fails_fast_and_says_what_to_check(t: &dyn FaultTarget) {
    let proxy = FaultProxy::start(t.port()).await;
    let s = t.open(&proxy.url(), t.bucket(), Some("denied"));
    proxy.add(Rule::new(Fault::Status(403, DENIED), usize::MAX));

    let started = Instant::now();
    let err = RetryPolicy::default()
        .run(|| s.put("k", bytes_stream(&b"x"[..]), PutMode::Overwrite))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "403 was retried"
    );
    assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
    assert_eq!(proxy.injected(), 1, "403 must not be retried");
    let target = format!("{}://{}/denied", t.scheme(), t.bucket());
    assert!(err.message.contains(&target), "{err}");
    assert!(err.message.contains(t.permission_hint()), "{err}");
    assert!(!err.to_string().contains("offsite-test-secret"), "{err}");

    let got = s.get("k").await.err().expect("get must fail");
    assert_eq!(got.kind, ErrorKind::PermissionDenied);
    let listed = list_all(s.as_ref(), "").await.unwrap_err();
    assert_eq!(listed.kind, ErrorKind::PermissionDenied);
}

/// A connection that dies during a part upload fails the put (plain and
/// create-if-absent) with nothing left: no object, no staged copy, no open
/// multipart upload.
pub async fn interrupted_multipart_upload_leaves_nothing(t: &dyn FaultTarget) {
    let proxy = FaultProxy::start(t.port()).await;
    let s = t.open(&proxy.url(), t.bucket(), Some("cut"));

    for mode in [PutMode::Overwrite, PutMode::Create] {
        proxy.clear();
        // The connection dies during every upload of the third part onwards.
        proxy.add(Rule::new(Fault::Drop, usize::MAX).uri_contains("partNumber=3"));
        let err = s
            .put("obj", pattern_stream("cut", 30 << 20, 1 << 20), mode)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Transient, "{mode:?}: {err}");
        proxy.clear();
        assert_eq!(s.head("obj").await.unwrap_err().kind, ErrorKind::NotFound);
        assert!(list_all(s.as_ref(), "").await.unwrap().is_empty());
        assert_eq!(t.open_uploads().await, 0, "{mode:?}: upload not aborted");
    }
    let whole = t.open(&url(t.port()), t.bucket(), None);
    assert!(
        list_all(whole.as_ref(), "").await.unwrap().is_empty(),
        "staging object left"
    );
}

/// A part that fails while another is still uploading fails the put, and the
/// abort is sent only after that other part has been answered: a part that
/// lands after the abort (S3 allows it) would keep the upload open, or fail
/// the abort itself (moto answers 500).
pub async fn a_failed_multipart_upload_is_aborted_after_its_last_part(t: &dyn FaultTarget) {
    let proxy = FaultProxy::start(t.port()).await;
    let s = t.open(&proxy.url(), t.bucket(), Some("slow"));
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(500)), 1).uri_contains("partNumber=1&"));
    proxy.add(Rule::new(Fault::Status(500, INTERNAL), usize::MAX).uri_contains("partNumber=2&"));
    let err = s
        .put(
            "obj",
            pattern_stream("slow", 12 << 20, 1 << 20),
            PutMode::Overwrite,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transient, "{err}");
    let steps = proxy.steps();
    let is_abort = |step: &Step| matches!(step, Step::Arrived(m, uri) if *m == Method::DELETE && uri.contains("uploadId="));
    let abort = steps.iter().position(is_abort).expect("no abort was sent");
    for step in &steps[..abort] {
        if let Step::Arrived(m, uri) = step {
            let answered = steps[..abort]
                .iter()
                .any(|s| matches!(s, Step::Answered(am, au, _) if am == m && au == uri));
            assert!(
                answered,
                "{m} {uri} was still open when the abort was sent: {steps:#?}"
            );
        }
    }
    proxy.clear();
    assert_eq!(s.head("obj").await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(t.open_uploads().await, 0, "upload not aborted");
}

/// A bucket that does not exist is reported as such, by name.
pub async fn missing_bucket_names_the_bucket(t: &dyn FaultTarget) {
    let s = t.open(&url(t.port()), "no-such-bucket", None);
    let err = list_all(s.as_ref(), "").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    let target = format!("{}://no-such-bucket", t.scheme());
    assert!(err.message.contains(&target), "{err}");
    assert!(err.message.contains("bucket name"), "{err}");
}

/// One `#[tokio::test]` per scenario of this module; `$start` is an async
/// expression giving a fresh [`FaultTarget`] (with its own server) each time.
#[macro_export]
macro_rules! fault_suite {
    ($start:expr) => {
        $crate::fault_suite!(@tests $start;
            transient_failures_are_retried,
            one_retry_budget_per_object,
            permission_denied_fails_fast_and_says_what_to_check,
            interrupted_multipart_upload_leaves_nothing,
            a_failed_multipart_upload_is_aborted_after_its_last_part,
            missing_bucket_names_the_bucket,
        );
    };
    (@tests $start:expr; $($name:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let target = $start.await;
                $crate::testing::faults::$name(&target).await;
            }
        )*
    };
}
