//! backend-b2 against the shared conformance suite and B2's failure modes, all
//! on the in-process emulator in `support/` (no other address is contacted).

mod support;

use std::sync::Arc;

use backend_b2::{B2Config, B2Storage};
use backup_core::storage::retry::RetryPolicy;
use backup_core::storage::{
    bytes_stream, collect_bytes, list_all, testing, ByteStream, ErrorKind, PutMode, Storage,
    StorageError,
};
use futures::stream::{self, StreamExt};
use support::B2Emulator;

fn storage(cfg: &B2Config) -> B2Storage {
    B2Storage::open(cfg).expect("valid config")
}

/// The core's retry policy, without the waiting: the backend sends each
/// request once, so anything expected to be retried away goes through it.
fn retry() -> RetryPolicy {
    RetryPolicy::fast()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let b2 = B2Emulator::start().await;
    let s: Arc<dyn Storage> = Arc::new(storage(&b2.config()));
    // 64 MiB in 5 MiB parts: a 13-part large file.
    testing::run_all(s, 64 << 20).await;
    assert!(
        b2.calls("b2_finish_large_file") >= 1,
        "large-file path not taken"
    );
    let (checked, unverified) = b2.sha1_counts();
    assert!(checked > 1_000, "uploads carried real SHA-1s: {checked}");
    assert_eq!(unverified, 0, "some upload sent do_not_verify");
    assert_eq!(b2.unfinished_large_files(), 0);
    assert_eq!(b2.calls("b2_authorize_account"), 1, "the token is reused");
}

#[tokio::test]
async fn expired_token_is_renewed_and_the_call_repeated() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    s.put("a", bytes_stream(&b"1"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    b2.expire_tokens();
    let listed = list_all(&s, "").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(b2.calls("b2_authorize_account"), 2);
    // Downloads use the account token too.
    b2.expire_tokens();
    let got = collect_bytes(s.get("a").await.unwrap()).await.unwrap();
    assert_eq!(&got[..], b"1");
    assert_eq!(b2.calls("b2_authorize_account"), 3);
}

#[tokio::test]
async fn failed_upload_url_is_replaced() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    b2.fail("b2_upload_file", 503, "service_unavailable", 1);
    retry()
        .run(|| s.put("a", bytes_stream(&b"data"[..]), PutMode::Overwrite))
        .await
        .unwrap();
    assert_eq!(b2.calls("b2_upload_file"), 2);
    assert_eq!(
        b2.calls("b2_get_upload_url"),
        2,
        "a new upload URL was fetched"
    );
    // An upload URL that worked is reused.
    s.put("b", bytes_stream(&b"data"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(b2.calls("b2_get_upload_url"), 2);
    // The account token is not at fault and is kept.
    assert_eq!(b2.calls("b2_authorize_account"), 1);
}

#[tokio::test]
async fn failed_part_fails_the_attempt_and_the_next_starts_afresh() {
    let b2 = B2Emulator::start().await;
    let cfg = b2.config();
    let s = storage(&cfg);
    b2.fail("b2_upload_part", 503, "service_unavailable", 1);
    let size = 12 << 20;
    retry()
        .run(|| {
            s.put(
                "big",
                testing::pattern_stream("big", size, 1 << 20),
                PutMode::Overwrite,
            )
        })
        .await
        .unwrap();
    // The failed attempt's large file is cancelled, not finished; the next
    // attempt is a new large file with new part URLs.
    assert_eq!(b2.calls("b2_start_large_file"), 2);
    assert_eq!(b2.calls("b2_cancel_large_file"), 1);
    assert_eq!(b2.calls("b2_finish_large_file"), 1);
    assert_eq!(b2.unfinished_large_files(), 0);
    let parts = b2.calls("b2_upload_part");
    assert!(
        (4..=6).contains(&parts),
        "three parts, and 1 to 3 of the failed attempt: {parts}"
    );
    let got = collect_bytes(s.get("big").await.unwrap()).await.unwrap();
    assert_eq!(&got[..], &testing::pattern("big", size as usize)[..]);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    b2.fail("b2_list_file_names", 500, "internal_error", 1);
    b2.fail("b2_list_file_names", 503, "service_unavailable", 1);
    let listed = retry().run(|| list_all(&s, "")).await.unwrap();
    assert!(listed.is_empty());
    assert_eq!(b2.calls("b2_list_file_names"), 3);
    b2.fail("b2_download_file_by_name", 503, "service_unavailable", 2);
    let head = retry().run(|| s.head("x")).await.unwrap_err();
    assert_eq!(head.kind, ErrorKind::NotFound);
    assert_eq!(b2.calls("b2_download_file_by_name"), 3);
}

#[tokio::test]
async fn persistent_server_errors_end_as_transient() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    b2.fail("b2_list_file_names", 503, "service_unavailable", 100);
    let e = retry().run(|| list_all(&s, "")).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert_eq!(
        b2.calls("b2_list_file_names"),
        6,
        "RetryPolicy::fast gives six tries"
    );
    assert!(e.message.contains("gave up after 6 attempts"), "{e}");
}

/// A B2 that answers 503 to every call of one kind costs exactly the core's
/// budget of attempts per object (not the core's times a loop of the
/// client's own), whichever call it is; only a token renewal is repeated in
/// place, and it happens once.
#[tokio::test]
async fn one_retry_budget_per_object() {
    let budget = retry().max_attempts as usize;
    let forever = 1_000_000;
    let fresh = || async {
        let b2 = B2Emulator::start().await;
        let s = storage(&b2.config());
        (b2, s)
    };
    let expect = |b2: &B2Emulator, op: &str, e: StorageError| {
        assert_eq!(e.kind, ErrorKind::Transient, "{op}: {e}");
        assert_eq!(b2.calls(op), budget, "{op}: calls for one object");
    };

    let (b2, s) = fresh().await;
    b2.fail("b2_authorize_account", 503, "service_unavailable", forever);
    let e = retry().run(|| s.head("k")).await.unwrap_err();
    expect(&b2, "b2_authorize_account", e);

    let (b2, s) = fresh().await;
    b2.fail("b2_upload_file", 503, "service_unavailable", forever);
    let put = || s.put("k", bytes_stream(&b"x"[..]), PutMode::Overwrite);
    expect(&b2, "b2_upload_file", retry().run(put).await.unwrap_err());
    assert_eq!(
        b2.calls("b2_get_upload_url"),
        budget,
        "a new URL each attempt"
    );

    let (b2, s) = fresh().await;
    b2.fail("b2_start_large_file", 503, "service_unavailable", forever);
    let big = || {
        s.put(
            "k",
            testing::pattern_stream("k", 12 << 20, 1 << 20),
            PutMode::Create,
        )
    };
    expect(
        &b2,
        "b2_start_large_file",
        retry().run(big).await.unwrap_err(),
    );

    let (b2, s) = fresh().await;
    b2.fail(
        "b2_download_file_by_name",
        503,
        "service_unavailable",
        forever,
    );
    let get = || async { collect_bytes(s.get("k").await?).await };
    expect(
        &b2,
        "b2_download_file_by_name",
        retry().run(get).await.unwrap_err(),
    );

    let (b2, s) = fresh().await;
    b2.fail("b2_list_file_versions", 503, "service_unavailable", forever);
    let e = retry().run(|| s.delete("k")).await.unwrap_err();
    expect(&b2, "b2_list_file_versions", e);

    // An expired token is renewed once, in place, within one attempt.
    let (b2, s) = fresh().await;
    s.put("k", bytes_stream(&b"x"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    b2.expire_tokens();
    s.head("k").await.expect("renewed without the core's help");
    assert_eq!(b2.calls("b2_authorize_account"), 2);
}

#[tokio::test]
async fn wrong_key_fails_fast() {
    let b2 = B2Emulator::start().await;
    let mut cfg = b2.config();
    cfg.application_key = Some("not-the-key".into());
    let s = storage(&cfg);
    let e = s.head("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains(support::BUCKET), "{e}");
    assert!(!e.message.contains("not-the-key"), "the key leaked: {e}");
    assert_eq!(b2.calls("b2_authorize_account"), 1);
}

#[tokio::test]
async fn missing_capability_fails_fast() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    // A key without writeFiles.
    b2.fail("b2_get_upload_url", 401, "unauthorized", 100);
    let e = s
        .put("a", bytes_stream(&b"x"[..]), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("writeFiles"), "{e}");
    assert_eq!(b2.calls("b2_get_upload_url"), 1);
    assert_eq!(b2.calls("b2_authorize_account"), 1);
    b2.fail("b2_list_file_names", 403, "access_denied", 100);
    let e = list_all(&s, "").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert_eq!(b2.calls("b2_list_file_names"), 1);
}

#[tokio::test]
async fn missing_bucket_is_not_found() {
    let b2 = B2Emulator::start().await;
    let mut cfg = b2.config();
    cfg.bucket = "no-such-bucket".into();
    let e = storage(&cfg).head("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("no-such-bucket"), "{e}");
}

fn broken_large_body() -> ByteStream {
    // Enough for three whole parts, so some are uploaded before it fails.
    let good = testing::pattern_stream("broken", 18 << 20, 1 << 20);
    let bad = stream::once(async {
        Err(StorageError::new(
            ErrorKind::Other,
            "body",
            "source failed mid-stream",
        ))
    });
    Box::pin(good.chain(bad))
}

#[tokio::test]
async fn interrupted_large_upload_is_cancelled() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    let e = s
        .put("big", broken_large_body(), PutMode::Overwrite)
        .await
        .unwrap_err();
    assert_eq!(
        e.message, "source failed mid-stream",
        "the body's error is returned"
    );
    assert_eq!(b2.calls("b2_start_large_file"), 1);
    assert!(b2.calls("b2_upload_part") >= 1, "parts were under way");
    assert_eq!(b2.calls("b2_cancel_large_file"), 1);
    assert_eq!(b2.calls("b2_finish_large_file"), 0);
    assert_eq!(b2.unfinished_large_files(), 0);
    assert_eq!(s.head("big").await.unwrap_err().kind, ErrorKind::NotFound);
    assert!(list_all(&s, "").await.unwrap().is_empty());
}

#[tokio::test]
async fn delete_removes_every_version_and_hide_marker() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    for body in [&b"1"[..], b"2", b"3"] {
        s.put("k", bytes_stream(body), PutMode::Overwrite)
            .await
            .unwrap();
    }
    b2.hide("repo/k");
    assert_eq!(b2.versions_of("repo/k"), 4);
    s.delete("k").await.unwrap();
    assert_eq!(b2.versions_of("repo/k"), 0);
}

#[tokio::test]
async fn create_after_a_hide_marker_succeeds() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    s.put("k", bytes_stream(&b"old"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    b2.hide("repo/k");
    s.put("k", bytes_stream(&b"new"[..]), PutMode::Create)
        .await
        .expect("a hidden name is absent");
    let got = collect_bytes(s.get("k").await.unwrap()).await.unwrap();
    assert_eq!(&got[..], b"new");
}

#[tokio::test]
async fn keys_live_under_the_prefix() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    s.put("x/y", bytes_stream(&b"1"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(b2.versions_of("repo/x/y"), 1);
    let mut other_cfg = b2.config();
    other_cfg.prefix = Some("elsewhere".into());
    let other = storage(&other_cfg);
    assert!(list_all(&other, "").await.unwrap().is_empty());
    let keys: Vec<String> = list_all(&s, "")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["x/y".to_string()]);
    assert_eq!(s.describe(), format!("b2://{}/repo/", support::BUCKET));
}

#[tokio::test]
async fn dropped_large_upload_is_cancelled_in_the_background() {
    let b2 = B2Emulator::start().await;
    let s = storage(&b2.config());
    // A body that never ends after 12 MiB: the put can only be abandoned.
    let body: ByteStream =
        Box::pin(testing::pattern_stream("stall", 12 << 20, 1 << 20).chain(stream::pending()));
    let put = s.put("stalled", body, PutMode::Overwrite);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), put).await;
    for _ in 0..100 {
        if b2.unfinished_large_files() == 0 && b2.calls("b2_start_large_file") == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(b2.calls("b2_start_large_file"), 1);
    assert_eq!(
        b2.unfinished_large_files(),
        0,
        "abandoned large file was not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_race_past_the_existence_check_has_one_winner() {
    let b2 = B2Emulator::start().await;
    let s = Arc::new(storage(&b2.config()));
    let n = 6;
    // Bodies are read only after put's existence check; holding every body
    // until all racers got there forces the after-upload settlement to decide.
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let racers: Vec<_> = (0..n)
        .map(|i| {
            let (s, gate) = (s.clone(), gate.clone());
            tokio::spawn(async move {
                let body: ByteStream = Box::pin(stream::once(async move {
                    gate.wait().await;
                    Ok(bytes::Bytes::from(format!("racer {i}")))
                }));
                (i, s.put("race", body, PutMode::Create).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        let (i, result) = r.await.unwrap();
        match result {
            Ok(_) => winners.push(i),
            Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "racer {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(b2.calls("b2_upload_file"), n, "every racer uploaded");
    assert_eq!(
        b2.versions_of("repo/race"),
        1,
        "losers removed their versions"
    );
    let got = collect_bytes(s.get("race").await.unwrap()).await.unwrap();
    assert_eq!(got, format!("racer {}", winners[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_an_upload_in_progress_alone() {
    let b2 = B2Emulator::start().await;
    let s = Arc::new(storage(&b2.config()));
    s.put("k", bytes_stream(&b"old"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let body: ByteStream = Box::pin(
                testing::pattern_stream("slow", 12 << 20, 1 << 20).chain(stream::pending()),
            );
            s.put("k", body, PutMode::Overwrite).await
        })
    };
    while b2.unfinished_large_files() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), s.delete("k"))
        .await
        .expect("delete does not wait for or spin on an unfinished large file")
        .unwrap();
    assert_eq!(b2.versions_of("repo/k"), 0);
    assert_eq!(
        b2.unfinished_large_files(),
        1,
        "the upload in progress is untouched"
    );
    writer.abort();
}
