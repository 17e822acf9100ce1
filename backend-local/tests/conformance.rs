//! backend-local against the shared storage conformance suite.

use std::sync::Arc;

use backend_local::{LocalConfig, LocalStorage};
use backup_core::storage::{testing, ErrorKind, Storage};

fn fresh() -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        path: dir.path().join("repo"),
    };
    (dir, Arc::new(LocalStorage::open(&cfg).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let (_dir, s) = fresh();
    testing::run_all(s, 256 << 20).await;
}

#[test]
fn missing_parent_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LocalConfig {
        path: dir.path().join("not-mounted").join("offsite"),
    };
    let err = LocalStorage::open(&cfg).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("mounted"), "{err}");
}

#[tokio::test]
async fn temporary_files_are_not_listed_and_failed_puts_leave_no_temp_files() {
    let (dir, s) = fresh();
    testing::failed_put_leaves_nothing(s.as_ref()).await;
    let tmp = dir.path().join("repo/.tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "temp files left behind"
    );
    let all = backup_core::storage::list_all(s.as_ref(), "")
        .await
        .unwrap();
    assert!(all.iter().all(|m| !m.key.starts_with(".tmp")));
}

/// The backup's uploader stops polling the puts it has in flight while it
/// writes an index file; a put must never wait for one of those (a lock held
/// across an await did, and the backup hung). Puts into new directories,
/// each polled until it waits inside, then left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_never_waits_for_a_put_nobody_polls() {
    use backup_core::storage::{bytes_stream, PutMode};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let (_dir, s) = fresh();
    let mut parked = Vec::new();
    for i in 0..16 {
        let key = format!("packs/{i:02x}/object");
        let s = Arc::clone(&s);
        let mut put = Box::pin(async move {
            s.put(&key, bytes_stream(vec![7u8; 64]), PutMode::Create)
                .await
        });
        let mut cx = Context::from_waker(Waker::noop());
        // Polled a few times with pauses, so that it gets past its first
        // awaits (creating the directory) into the later ones.
        for _ in 0..i % 4 + 1 {
            if let Poll::Ready(r) = put.as_mut().poll(&mut cx) {
                r.unwrap();
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        parked.push(put);
    }
    let put = s.put(
        "index/next",
        bytes_stream(b"index".to_vec()),
        PutMode::Create,
    );
    tokio::time::timeout(std::time::Duration::from_secs(20), put)
        .await
        .expect("a put waited for puts nobody polls")
        .unwrap();
    drop(parked);
}
