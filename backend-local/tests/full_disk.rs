//! backend-local on a real filesystem that fills up (a 1 MiB tmpfs): a put
//! that does not fit fails as a full target and leaves nothing, neither under
//! its key nor in `.tmp/`; every put that succeeded holds all of its bytes.
//! Needs root or `unshare -rm` (the test says so when it cannot mount).

use backend_local::{LocalConfig, LocalStorage};
use backup_core::storage::testing::{pattern, pattern_stream, SmallFs};
use backup_core::storage::{bytes_stream, collect_bytes, ErrorKind, PutMode, Storage};

fn open(fs: &SmallFs) -> LocalStorage {
    LocalStorage::open(&LocalConfig {
        path: fs.path().join("repo"),
    })
    .unwrap()
}

fn temp_files(fs: &SmallFs) -> usize {
    std::fs::read_dir(fs.path().join("repo/.tmp")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_does_not_fit_fails_as_full_and_leaves_nothing() {
    let fs = SmallFs::mount(1 << 20);
    let s = open(&fs);
    s.put("keep", bytes_stream(pattern("keep", 1000)), PutMode::Create)
        .await
        .unwrap();
    for mode in [PutMode::Create, PutMode::Overwrite] {
        let e = s
            .put("big", pattern_stream("big", 3 << 20, 64 << 10), mode)
            .await
            .expect_err("3 MiB do not fit on a 1 MiB filesystem");
        assert_eq!(e.kind, ErrorKind::Full, "{e}");
        assert_eq!(s.head("big").await.unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(temp_files(&fs), 0, "a failed put left its temporary file");
    }

    // Fill it up with objects of 100 KiB: each put either stores everything
    // or fails as full and stores nothing.
    let mut stored = Vec::new();
    let full = loop {
        let key = format!("fill/{:03}", stored.len());
        let body = pattern(&key, 100 << 10);
        match s.put(&key, bytes_stream(body), PutMode::Create).await {
            Ok(meta) => {
                assert_eq!(meta.size, 100 << 10, "{key}: reported size");
                stored.push(key);
            }
            Err(e) => break (key, e),
        }
        assert!(stored.len() < 20, "a 1 MiB filesystem took 2 MiB");
    };
    assert_eq!(full.1.kind, ErrorKind::Full, "{}", full.1);
    assert_eq!(s.head(&full.0).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(temp_files(&fs), 0);
    for key in &stored {
        let got = collect_bytes(s.get(key).await.unwrap()).await.unwrap();
        assert_eq!(&got[..], &pattern(key, 100 << 10)[..], "{key} is damaged");
    }
    let free = s
        .free_space()
        .await
        .expect("a local target knows its free space");
    assert!(free < 100 << 10, "{free} bytes free after filling up");
    assert_eq!(free, fs.free());

    // Space comes back: the key that did not fit can be created now.
    s.delete(&stored[0]).await.unwrap();
    s.put(
        &full.0,
        bytes_stream(pattern(&full.0, 100 << 10)),
        PutMode::Create,
    )
    .await
    .expect("a put after space came back");
}
