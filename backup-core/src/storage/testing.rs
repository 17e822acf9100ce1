//! The storage conformance suite: plain async functions that any backend's tests
//! call on a fresh, empty instance of itself. A new backend gets the whole suite
//! for one line per test; passing it is what "a backend works" means.
//!
//! Each function panics with a message naming the broken rule. Every function
//! expects the storage to be empty at the keys it uses; they use distinct key
//! prefixes, so one instance can run them all in sequence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, StreamExt};

pub use super::faulty::FaultyStorage;
use super::{
    bytes_stream, collect_bytes, list_all, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage,
    StorageError,
};

/// Deterministic pseudo-random bytes (a BLAKE3 XOF keyed by `seed`), so large
/// objects can be generated and checked without being held in memory.
pub fn pattern(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Streams `total` bytes of [`pattern`] data in `piece`-sized parts.
pub fn pattern_stream(seed: &str, total: u64, piece: usize) -> ByteStream {
    let mut reader = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut left = total;
    Box::pin(stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(piece as u64) as usize;
        let mut buf = vec![0u8; n];
        reader.fill(&mut buf);
        left -= n as u64;
        Some(Ok(Bytes::from(buf)))
    })))
}

async fn stream_digest(stream: ByteStream) -> (u64, blake3::Hash) {
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    let mut s = stream;
    while let Some(part) = s.next().await {
        let part = part.expect("reading a streamed object failed");
        len += part.len() as u64;
        hasher.update(&part);
    }
    (len, hasher.finalize())
}

fn pattern_digest(seed: &str, total: u64) -> blake3::Hash {
    let mut reader = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        reader.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize()
}

async fn get_all(s: &dyn Storage, key: &str) -> Bytes {
    collect_bytes(
        s.get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}")),
    )
    .await
    .unwrap_or_else(|e| panic!("reading {key}: {e}"))
}

/// Runs every check below against `storage`, with a large object of
/// `large_size` bytes (use at least 200 MiB for a network backend, so that
/// multipart or large-file uploads are exercised).
pub async fn run_all(storage: Arc<dyn Storage>, large_size: u64) {
    put_get_roundtrip(storage.as_ref()).await;
    overwrite_replaces(storage.as_ref()).await;
    missing_objects(storage.as_ref()).await;
    create_if_absent(storage.as_ref()).await;
    concurrent_creates(storage.clone()).await;
    concurrent_writers(storage.clone()).await;
    list_semantics(storage.as_ref()).await;
    delete_semantics(storage.as_ref()).await;
    failed_put_leaves_nothing(storage.as_ref()).await;
    full_and_short_writes(storage.clone()).await;
    invalid_keys_rejected(storage.as_ref()).await;
    large_streamed_object(storage.as_ref(), large_size).await;
}

/// Empty, small and multi-part objects come back byte for byte, and head
/// reports their sizes.
pub async fn put_get_roundtrip(s: &dyn Storage) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("rt/empty", Vec::new()),
        ("rt/small", b"hello, offsite".to_vec()),
        ("rt/nested/deeper/obj.bin", pattern("nested", 70_001)),
    ];
    for (key, data) in &cases {
        let stored = s
            .put(key, bytes_stream(data.clone()), PutMode::Overwrite)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        assert_eq!(stored.size, data.len() as u64, "put {key} reports its size");
        assert_eq!(stored.key, *key, "put reports the key it stored");
        assert_eq!(
            &get_all(s, key).await[..],
            &data[..],
            "get {key} returned other bytes"
        );
        let meta = s
            .head(key)
            .await
            .unwrap_or_else(|e| panic!("head {key}: {e}"));
        assert_eq!(meta.size, data.len() as u64, "head {key} size");
        assert_eq!(meta.key, *key, "head returns the key it was asked for");
    }
    // A body that arrives in many small pieces is one object.
    let seed = "rt-pieces";
    let stored = s
        .put(
            "rt/pieces",
            pattern_stream(seed, 1_000_003, 4096),
            PutMode::Overwrite,
        )
        .await
        .expect("put of a many-piece stream");
    assert_eq!(stored.size, 1_000_003);
    assert_eq!(
        &get_all(s, "rt/pieces").await[..],
        &pattern(seed, 1_000_003)[..]
    );
}

/// An overwrite replaces the whole object (a shorter body leaves no tail).
pub async fn overwrite_replaces(s: &dyn Storage) {
    s.put(
        "ow/k",
        bytes_stream(pattern("long", 10_000)),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    s.put("ow/k", bytes_stream(&b"short"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(&get_all(s, "ow/k").await[..], b"short");
    assert_eq!(s.head("ow/k").await.unwrap().size, 5);
}

/// get and head of a missing key are NotFound, not some other error.
pub async fn missing_objects(s: &dyn Storage) {
    match s.get("missing/nothing-here").await {
        Err(e) => assert_eq!(e.kind, ErrorKind::NotFound, "get of a missing key: {e}"),
        Ok(_) => panic!("get of a missing key succeeded"),
    }
    let e = s.head("missing/nothing-here").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "head of a missing key: {e}");
    assert!(
        list_all(s, "missing/").await.unwrap().is_empty(),
        "listing an empty prefix returns nothing"
    );
}

/// Create-if-absent refuses to replace and leaves the first object intact.
pub async fn create_if_absent(s: &dyn Storage) {
    s.put("cia/k", bytes_stream(&b"first"[..]), PutMode::Create)
        .await
        .expect("create of a new key");
    let e = s
        .put("cia/k", bytes_stream(&b"second"[..]), PutMode::Create)
        .await
        .expect_err("second create of the same key must fail");
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "second create: {e}");
    assert_eq!(&get_all(s, "cia/k").await[..], b"first");
}

/// Of many simultaneous creates of one key exactly one wins, and the object
/// holds the winner's bytes.
pub async fn concurrent_creates(s: Arc<dyn Storage>) {
    let n = 8;
    let results: Vec<(usize, Result<ObjectMeta, StorageError>)> = stream::iter(0..n)
        .map(|i| {
            let s = s.clone();
            async move {
                let body = pattern(&format!("racer-{i}"), 50_000);
                (
                    i,
                    s.put("race/k", bytes_stream(body), PutMode::Create).await,
                )
            }
        })
        .buffer_unordered(n)
        .collect()
        .await;
    let winners: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent create wins, got {winners:?}"
    );
    for (i, r) in &results {
        if let Err(e) = r {
            assert_eq!(e.kind, ErrorKind::AlreadyExists, "racer {i} lost with {e}");
        }
    }
    let expect = pattern(&format!("racer-{}", winners[0]), 50_000);
    assert_eq!(&get_all(s.as_ref(), "race/k").await[..], &expect[..]);
}

/// Many writers to distinct keys at once all land intact.
pub async fn concurrent_writers(s: Arc<dyn Storage>) {
    let n = 32;
    let done = Arc::new(AtomicUsize::new(0));
    stream::iter(0..n)
        .map(|i| {
            let s = s.clone();
            let done = done.clone();
            async move {
                let key = format!("cw/{i:03}");
                s.put(
                    &key,
                    bytes_stream(pattern(&key, 20_000 + i)),
                    PutMode::Create,
                )
                .await
                .unwrap_or_else(|e| panic!("concurrent put {key}: {e}"));
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(done.load(Ordering::SeqCst), n);
    for i in 0..n {
        let key = format!("cw/{i:03}");
        assert_eq!(
            &get_all(s.as_ref(), &key).await[..],
            &pattern(&key, 20_000 + i)[..]
        );
    }
}

/// Listing returns exactly the keys under a prefix, each once, with sizes,
/// across more keys than one page of a typical service listing (1000).
pub async fn list_semantics(s: &dyn Storage) {
    let n = 1_100usize;
    stream::iter(0..n)
        .map(|i| async move {
            let key = format!("ls/many/{i:05}");
            s.put(&key, bytes_stream(vec![7u8; i % 13]), PutMode::Overwrite)
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    s.put("ls/other/x", bytes_stream(&b"x"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    s.put("ls/manyish", bytes_stream(&b"y"[..]), PutMode::Overwrite)
        .await
        .unwrap();

    let mut keys = list_all(s, "ls/many/").await.expect("list ls/many/");
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(keys.len(), n, "list returns every key once");
    for (i, meta) in keys.iter().enumerate() {
        assert_eq!(meta.key, format!("ls/many/{i:05}"));
        assert_eq!(meta.size, (i % 13) as u64, "list reports sizes");
    }
    // A prefix is a string prefix, not a directory: "ls/many" also matches "ls/manyish".
    let all = list_all(s, "ls/").await.unwrap();
    assert_eq!(all.len(), n + 2);
    let partial = list_all(s, "ls/many").await.unwrap();
    assert_eq!(partial.len(), n + 1);
    let keys: Vec<String> = list_all(s, "ls/other/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["ls/other/x".to_string()]);
}

/// Deleted objects are gone from get, head and list; deleting twice is fine.
pub async fn delete_semantics(s: &dyn Storage) {
    s.put("del/a", bytes_stream(&b"a"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    s.put("del/b", bytes_stream(&b"b"[..]), PutMode::Overwrite)
        .await
        .unwrap();
    s.delete("del/a").await.expect("delete of an existing key");
    assert_eq!(s.head("del/a").await.unwrap_err().kind, ErrorKind::NotFound);
    assert!(s.get("del/a").await.is_err());
    s.delete("del/a")
        .await
        .expect("deleting a missing key succeeds");
    s.delete("del/never-existed")
        .await
        .expect("deleting a missing key succeeds");
    let keys: Vec<String> = list_all(s, "del/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["del/b".to_string()]);
    // A deleted key can be created again.
    s.put("del/a", bytes_stream(&b"again"[..]), PutMode::Create)
        .await
        .expect("create after delete");
    assert_eq!(&get_all(s, "del/a").await[..], b"again");
}

/// A put whose body fails part-way stores nothing: no partial object is ever
/// visible, and an existing object under that key survives.
pub async fn failed_put_leaves_nothing(s: &dyn Storage) {
    fn broken_body() -> ByteStream {
        let good = pattern_stream("broken", 3 << 20, 1 << 20);
        let bad = stream::once(async {
            Err(StorageError::new(
                ErrorKind::Other,
                "body",
                "source failed mid-stream",
            ))
        });
        Box::pin(good.chain(bad))
    }
    assert!(
        s.put("fail/new", broken_body(), PutMode::Overwrite)
            .await
            .is_err(),
        "a put whose body fails must fail"
    );
    assert_eq!(
        s.head("fail/new").await.map(|m| m.size).unwrap_err().kind,
        ErrorKind::NotFound,
        "a failed put left an object behind"
    );
    s.put(
        "fail/old",
        bytes_stream(&b"keep me"[..]),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    assert!(s
        .put("fail/old", broken_body(), PutMode::Overwrite)
        .await
        .is_err());
    assert_eq!(&get_all(s, "fail/old").await[..], b"keep me");
    assert!(s
        .put("fail/c", broken_body(), PutMode::Create)
        .await
        .is_err());
    s.put("fail/c", bytes_stream(&b"ok"[..]), PutMode::Create)
        .await
        .expect("a failed create does not reserve the key");
}

/// Keys outside the contract are refused before anything is written.
pub async fn invalid_keys_rejected(s: &dyn Storage) {
    for key in [
        "",
        "/abs",
        "a//b",
        "../escape",
        "a/../b",
        "trailing/",
        "sp ace",
    ] {
        assert!(
            s.put(key, bytes_stream(&b"x"[..]), PutMode::Overwrite)
                .await
                .is_err(),
            "key {key:?} must be rejected"
        );
    }
}

/// A large object streams in and out without being collected in memory by the
/// suite, and comes back bit for bit.
pub async fn large_streamed_object(s: &dyn Storage, size: u64) {
    let seed = "large-object";
    let stored = s
        .put(
            "large/obj",
            pattern_stream(seed, size, 1 << 20),
            PutMode::Create,
        )
        .await
        .unwrap_or_else(|e| panic!("put of a {size}-byte streamed object: {e}"));
    assert_eq!(stored.size, size, "put of a large object reports its size");
    assert_eq!(s.head("large/obj").await.unwrap().size, size);
    let (len, digest) = stream_digest(s.get("large/obj").await.unwrap()).await;
    assert_eq!(len, size, "large object length");
    assert_eq!(digest, pattern_digest(seed, size), "large object content");
    s.delete("large/obj").await.unwrap();
}

/// The target runs out of space, or a body is cut short, in the middle of an
/// object (injected by wrapping `inner` in [`FaultyStorage`]). Bodies of 12
/// MiB span several parts of a multipart or large-file upload at 5 MiB parts.
///
/// - A put that cannot store its whole body fails with [`ErrorKind::Full`]
///   (the body's own error, passed through) and stores nothing, at any fill
///   level: no new object, an old object under the key intact, and the key
///   still free for a later create once space comes back.
/// - A put whose body was silently cut short reports the size it really
///   stored (what head says), so the layer above can tell it from the size
///   it sent.
/// - A body that fails after N bytes with another kind fails the put with
///   that kind and stores nothing.
pub async fn full_and_short_writes(inner: Arc<dyn Storage>) {
    const BIG: u64 = 12 << 20;
    let s = FaultyStorage::new(inner);
    s.put(
        "full/old",
        bytes_stream(&b"keep me"[..]),
        PutMode::Overwrite,
    )
    .await
    .unwrap();
    for free in [0, 1, 64 << 10, 6 << 20, BIG - 1] {
        s.set_free(Some(free));
        let e = s
            .put(
                "full/new",
                pattern_stream("full", BIG, 1 << 20),
                PutMode::Create,
            )
            .await
            .expect_err("a create larger than the free space must fail");
        assert_eq!(
            e.kind,
            ErrorKind::Full,
            "create with {free} bytes free: {e}"
        );
        assert_eq!(
            s.head("full/new").await.unwrap_err().kind,
            ErrorKind::NotFound,
            "a put that ran out of space at {free} bytes left an object"
        );
        let e = s
            .put(
                "full/old",
                pattern_stream("full", BIG, 1 << 20),
                PutMode::Overwrite,
            )
            .await
            .expect_err("an overwrite larger than the free space must fail");
        assert_eq!(
            e.kind,
            ErrorKind::Full,
            "overwrite with {free} bytes free: {e}"
        );
        assert_eq!(
            &get_all(&s, "full/old").await[..],
            b"keep me",
            "an overwrite that ran out of space at {free} bytes replaced the object"
        );
    }
    s.set_free(Some(3));
    let e = s
        .put("full/small", bytes_stream(&b"hello"[..]), PutMode::Create)
        .await
        .expect_err("a small put into a full store");
    assert_eq!(e.kind, ErrorKind::Full, "{e}");
    let keys: Vec<String> = list_all(&s, "full/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, ["full/old"], "failed puts left objects behind");

    // Space comes back: the key is still free, and the object lands whole.
    s.set_free(None);
    let stored = s
        .put(
            "full/new",
            pattern_stream("full", BIG, 1 << 20),
            PutMode::Create,
        )
        .await
        .expect("a create once space came back");
    assert_eq!(stored.size, BIG);
    let (len, digest) = stream_digest(s.get("full/new").await.unwrap()).await;
    assert_eq!((len, digest), (BIG, pattern_digest("full", BIG)));

    for cut in [0, 1000, 6 << 20] {
        s.cut_bodies("short/", cut, 1);
        let key = format!("short/{cut}");
        let stored = s
            .put(&key, pattern_stream("short", BIG, 1 << 20), PutMode::Create)
            .await
            .unwrap_or_else(|e| panic!("put of a body cut at {cut} bytes: {e}"));
        assert_eq!(
            stored.size, cut,
            "a put whose body was cut at {cut} bytes must report the size it stored"
        );
        assert_eq!(s.head(&key).await.unwrap().size, cut);
        assert_eq!(
            &get_all(&s, &key).await[..],
            &pattern("short", cut as usize)[..]
        );
    }

    for (after, kind) in [
        (0, ErrorKind::Other),
        (5 << 20, ErrorKind::Transient),
        (BIG - 1, ErrorKind::Other),
    ] {
        s.fail_bodies("err/", after, kind, 1);
        let e = s
            .put(
                "err/x",
                pattern_stream("err", BIG, 1 << 20),
                PutMode::Create,
            )
            .await
            .expect_err("a put whose body fails must fail");
        assert_eq!(e.kind, kind, "body failing after {after} bytes: {e}");
        assert_eq!(
            s.head("err/x").await.unwrap_err().kind,
            ErrorKind::NotFound,
            "a body failing after {after} bytes left an object"
        );
    }
    for key in [
        "full/old",
        "full/new",
        "short/0",
        "short/1000",
        "short/6291456",
    ] {
        s.delete(key).await.unwrap();
    }
}

/// A size-limited tmpfs mounted for a test, unmounted when dropped: a real
/// filesystem that fills up, for full-disk tests of the local target and the
/// binary. Mounting needs root (as in CI) or a user namespace; without
/// either the test fails and says how to run it, it does not skip.
#[derive(Debug)]
pub struct SmallFs {
    path: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel) on a
    /// new temporary directory.
    pub fn mount(bytes: u64) -> SmallFs {
        let dir = tempfile::tempdir().expect("a directory to mount on");
        let mut fs = Self::mount_on(dir.path(), bytes);
        fs._dir = Some(dir);
        fs
    }

    /// Mounts a tmpfs of `bytes` on the existing directory `path`.
    pub fn mount_on(path: &std::path::Path, bytes: u64) -> SmallFs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output();
        match out {
            Ok(o) if o.status.success() => SmallFs {
                path: path.to_path_buf(),
                _dir: None,
            },
            Ok(o) => panic!(
                "cannot mount a {bytes}-byte tmpfs at {} ({}): this test needs a small real \
                 filesystem that fills up. Run it as root (as CI does), or in a user and mount \
                 namespace of its own: unshare -rm cargo test ...",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!(
                "cannot run mount(8) ({e}): this test needs a small tmpfs; run it as root \
                 with util-linux installed, or under unshare -rm"
            ),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Bytes still free on it.
    pub fn free(&self) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(self.path.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs writes only into the zeroed struct it is given.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a valid out-pointer.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        #[allow(clippy::unnecessary_cast)]
        let free = st.f_bavail as u64 * st.f_frsize as u64;
        free
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy, so an open file of a failed test cannot keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
