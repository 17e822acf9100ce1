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
