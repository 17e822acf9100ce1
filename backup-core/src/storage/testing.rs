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

use super::{
    bytes_stream, collect_bytes, list_all, ByteStream, ErrorKind, PutMode, Storage, StorageError,
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
        s.put(key, bytes_stream(data.clone()), PutMode::Overwrite)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
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
    s.put(
        "rt/pieces",
        pattern_stream(seed, 1_000_003, 4096),
        PutMode::Overwrite,
    )
    .await
    .expect("put of a many-piece stream");
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
    let results: Vec<(usize, Result<(), StorageError>)> = stream::iter(0..n)
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
    s.put(
        "large/obj",
        pattern_stream(seed, size, 1 << 20),
        PutMode::Create,
    )
    .await
    .unwrap_or_else(|e| panic!("put of a {size}-byte streamed object: {e}"));
    assert_eq!(s.head("large/obj").await.unwrap().size, size);
    let (len, digest) = stream_digest(s.get("large/obj").await.unwrap()).await;
    assert_eq!(len, size, "large object length");
    assert_eq!(digest, pattern_digest(seed, size), "large object content");
    s.delete("large/obj").await.unwrap();
}

/// A wrapper that makes a real store fail on purpose, for fault tests of the
/// layers above a backend: the first `fail_puts` puts whose key starts with
/// `prefix` fail with `kind`, and puts after `abort_after` successful ones fail
/// permanently (a crash mid-backup).
#[derive(Debug)]
pub struct FaultyStorage {
    pub inner: Arc<dyn Storage>,
    pub prefix: String,
    pub kind: ErrorKind,
    pub fail_puts: AtomicUsize,
    pub abort_after: Option<usize>,
    pub puts_done: AtomicUsize,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            prefix: String::new(),
            kind: ErrorKind::Transient,
            fail_puts: AtomicUsize::new(0),
            abort_after: None,
            puts_done: AtomicUsize::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Storage for FaultyStorage {
    async fn put(&self, key: &str, body: ByteStream, mode: PutMode) -> Result<(), StorageError> {
        if key.starts_with(&self.prefix) {
            if let Some(limit) = self.abort_after {
                if self.puts_done.load(Ordering::SeqCst) >= limit {
                    return Err(StorageError::new(ErrorKind::Other, key, "injected crash"));
                }
            }
            let left = self.fail_puts.load(Ordering::SeqCst);
            if left > 0 {
                self.fail_puts.store(left - 1, Ordering::SeqCst);
                return Err(StorageError::new(self.kind, key, "injected failure"));
            }
        }
        self.inner.put(key, body, mode).await?;
        self.puts_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<super::ObjectMeta, StorageError> {
        self.inner.head(key).await
    }
    fn list(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'_, Result<super::ObjectMeta, StorageError>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}
