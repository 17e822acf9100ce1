//! The storage trait: the one small interface every backup target implements.
//!
//! A target is a flat namespace of keys (`/`-separated, relative to the target's
//! own prefix) holding immutable objects. The repository layer above never asks for
//! more than this: put (optionally create-if-absent), get as a stream, head, list by
//! prefix as a stream, delete. Everything a backend knows about its service (HTTP
//! calls, auth, multipart uploads) stays inside its crate; what crosses this
//! boundary is bytes, keys and a [`StorageError`] whose kind tells the caller whether
//! to stop, retry or treat the object as absent.
//!
//! What if the target fills up or a write comes up short? A put either stores
//! the whole body or fails and leaves the previous state: a backend must
//! never place (link, rename, complete) an object it has not checked to be
//! complete, and it reports the size it stored as the target itself knows it,
//! so that the repository layer can compare it with what it sent before any
//! manifest refers to the object. A full target (`ENOSPC`, a quota, a storage
//! cap) fails with [`ErrorKind::Full`], which nobody retries: waiting does not
//! make room. What each backend checks is listed in docs/backends.md.
//!
//! Modelled on apache `object_store`'s `ObjectStore`, cut down to what a backup
//! repository needs.

pub mod backend;
pub mod retry;
pub use backend::Backend;
pub use retry::RetryPolicy;
#[cfg(feature = "testing")]
pub mod faulty;
#[cfg(feature = "testing")]
pub mod memory;
#[cfg(feature = "testing")]
pub mod testing;

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, Stream, StreamExt};

/// A stream of bytes, as read from or written to a target.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Wraps one in-memory buffer as a [`ByteStream`].
pub fn bytes_stream(data: impl Into<Bytes>) -> ByteStream {
    let data = data.into();
    Box::pin(stream::once(async move { Ok(data) }))
}

/// Reads a whole [`ByteStream`] into memory. Only for objects known to be small
/// (configs, manifests, index files); packs and restores stream instead.
pub async fn collect_bytes(mut stream: ByteStream) -> Result<Bytes, StorageError> {
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.freeze())
}

/// How a put treats an existing object under the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Fail with [`ErrorKind::AlreadyExists`] if the key exists. Must be atomic:
    /// of two concurrent creates of one key, exactly one succeeds.
    Create,
}

/// What a target knows about one stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the target's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a storage call failed, in the terms the core acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object (or the container it lives in) does not exist.
    NotFound,
    /// A [`PutMode::Create`] put found the key taken.
    AlreadyExists,
    /// Credentials were refused or lack a permission.
    PermissionDenied,
    /// Worth retrying: throttling, 5xx, connection resets, expired tokens that
    /// could not be refreshed in place. Backends return these after one
    /// request; the core's [`RetryPolicy`] is the only layer that retries.
    Transient,
    /// The target has no room for the object: a full filesystem or quota
    /// (`ENOSPC`, `EDQUOT`), a storage cap or HTTP 507. Never retried.
    Full,
    /// Anything else: a configuration mistake, a malformed response, local I/O.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::AlreadyExists => "already exists",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Transient => "temporary failure",
            ErrorKind::Full => "target full",
            ErrorKind::Other => "error",
        })
    }
}

/// The error every backend maps its failures into.
#[derive(Debug, thiserror::Error)]
#[error("{kind} ({key}): {message}")]
pub struct StorageError {
    pub kind: ErrorKind,
    /// The key (or, for target-wide failures, a description of the target).
    pub key: String,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    pub fn new(kind: ErrorKind, key: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError {
            kind,
            key: key.into(),
            message: message.into(),
            source: None,
        }
    }

    pub fn not_found(key: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, key, "no such object")
    }

    pub fn already_exists(key: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, key, "object already exists")
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    pub fn is_full(&self) -> bool {
        self.kind == ErrorKind::Full
    }
}

/// A backup target. Implementations must be cheap to share (`Arc<dyn Storage>`).
///
/// Contract (checked by [`testing`]'s conformance suite):
/// - keys are `/`-separated relative paths of `[A-Za-z0-9._-]` segments;
/// - a put is all-or-nothing: a reader never sees a partial object, and a failed
///   or dropped put leaves the previous state (absent or the old object);
/// - a put returns the object as the target stored it: its size is what the
///   target reports (a file's length after fsync, the length in the
///   service's answer, a HEAD after a multipart upload, or the bytes of a
///   single request whose `Content-Length` the service enforces), never just
///   the number of bytes the body yielded;
/// - a target with no room fails the put with [`ErrorKind::Full`];
/// - `get` and `head` of a missing key fail with [`ErrorKind::NotFound`];
/// - `list` returns every object whose key starts with the prefix, in no
///   particular order, each once;
/// - `delete` of a missing key succeeds (deletes are idempotent).
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Stores the bytes of `body` under `key` and returns what was stored.
    /// Large bodies must be streamed to the service (multipart or large-file
    /// uploads), never collected in memory.
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError>;

    /// Streams an object's bytes.
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError>;

    /// Size of an object without reading it.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError>;

    /// Every object whose key starts with `prefix` (`""` for all).
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>>;

    /// Removes an object; succeeds if it was already gone.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// A short human description for messages, e.g. `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Bytes still free for objects, where the target can know it (a local
    /// filesystem); `None` for services that do not say. Only used to word
    /// the error when the target is full.
    async fn free_space(&self) -> Option<u64> {
        None
    }
}

/// Collects a listing. Listings are small (thousands of keys at most) next to
/// the data they describe.
pub async fn list_all(
    storage: &dyn Storage,
    prefix: &str,
) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut out = Vec::new();
    let mut listing = storage.list(prefix);
    while let Some(item) = listing.next().await {
        out.push(item?);
    }
    Ok(out)
}

/// Checks a key against the contract above; backends call it before touching a
/// service so a bad key fails the same way everywhere.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.ends_with('/')
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(StorageError::new(
            ErrorKind::Other,
            key,
            "invalid object key (expected /-separated segments of [A-Za-z0-9._-])",
        ))
    }
}
