//! The [`Storage`] trait implemented once on top of an `object_store` client, for
//! the cloud backends (`backend-s3`, `backend-gcs`) that differ only in how their
//! client is configured and in what a user should check when a request fails.
//!
//! This crate owns key layout (keys live under the target's prefix), streaming
//! puts (one request for small bodies, a parallel multipart upload with bounded
//! memory for large ones, aborted on failure only after its last part has
//! been answered: see the `multipart` module), create-if-absent,
//! directory-free prefix listing and the mapping of `object_store` errors
//! into [`StorageError`] kinds. It sends every request once ([`no_retries`]):
//! retrying is the core's. It must never
//! read credentials or configuration itself, and never print anything that a
//! backend's configuration might hold (keys, tokens): messages name only the
//! target (`s3://bucket/prefix`) and which settings to check.
//!
//! Create-if-absent and multipart: `object_store` cannot make the completion of
//! a multipart upload conditional, so a [`PutMode::Create`] body too large for a
//! single request is uploaded to a temporary key below [`TMP_DIR`] and then copied
//! to its final key with a conditional server-side copy (S3: a one-part multipart
//! copy completed with `If-None-Match: *`; GCS: a copy with
//! `x-goog-if-generation-match: 0`). The copy either creates the key or fails with
//! [`ErrorKind::AlreadyExists`], so the race between two creators stays atomic.
//! The temporary object is deleted afterwards and is never listed.
//!
//! For services without conditional writes ([`Settings::conditional_create`]
//! off), a create is a `HEAD` (the key must be missing) followed by a plain
//! upload: not atomic, see docs/backends.md for why the repository tolerates it.
//!
//! What if the service runs out of room, or a write comes up short? A put
//! reports as stored only what the service confirmed: a single-request put is
//! sent with its `Content-Length`, so a 2xx answer means the service holds
//! exactly those bytes (a body cut short in transit is never answered 2xx);
//! a multipart upload is checked with one `HEAD` after completion, and a
//! staged create before it is copied into place. A full service (HTTP 507, a
//! MinIO "storage full" answer) fails the put with [`ErrorKind::Full`]. If
//! offsite is killed mid-upload, the service shows nothing (an unfinished
//! multipart upload is invisible; a bucket lifecycle rule removes its parts),
//! except a staged create killed between its upload and its copy: staged
//! objects are named `<run tag>.<random>` ([`backup_core::process`]), and the
//! first staged create of a later run deletes those whose run is gone or that
//! are older than [`STALE_STAGED_AFTER`] (a live staged object lives for
//! seconds).

mod multipart;
#[cfg(feature = "testing")]
pub mod testing;

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backup_core::failpoint;
use backup_core::process::{run_is_gone, run_tag};
use backup_core::storage::{
    validate_key, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use multipart::Parts;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload};

/// Where large create-if-absent uploads are staged, relative to the target's
/// prefix. Listings skip it; a lifecycle rule on it cleans up after a crash.
pub const TMP_DIR: &str = ".offsite-tmp";

/// A staged object this old belongs to a run that is gone: a live one is
/// copied into place and deleted within seconds of its upload.
pub const STALE_STAGED_AFTER: Duration = Duration::from_secs(60 * 60);

/// What a user should check when a request to this kind of service fails.
#[derive(Debug, Clone, Copy)]
pub struct Hints {
    /// Shown with permission errors, e.g. which credentials and permissions.
    pub credentials: &'static str,
    /// Shown when the bucket is missing or the service cannot be reached.
    pub location: &'static str,
}

/// How a backend wants its uploads shaped.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The target as users know it, e.g. `s3://bucket/prefix`.
    pub target: String,
    pub hints: Hints,
    /// The key prefix inside the bucket, without leading or trailing `/`
    /// (empty for the whole bucket).
    pub prefix: String,
    /// Bodies up to this size go in one request; larger ones in parts of this
    /// size.
    pub part_size: usize,
    /// Parts uploaded at once; memory use is about `part_size * (this + 1)`.
    pub upload_concurrency: usize,
    /// Whether the service enforces create-if-absent (S3 `If-None-Match: *`,
    /// GCS `ifGenerationMatch=0`). Off: check with `HEAD`, then upload.
    pub conditional_create: bool,
}

/// The object_store client's own retries: none. Every request is sent once
/// and a failure is returned at once; the core's `RetryPolicy` retries the
/// whole object (docs/backends.md, "Retries"). With object_store's default
/// of 10 retries inside the core's 6 attempts, one object that kept failing
/// cost up to 66 requests (54 with the 8 offsite used to set) and minutes of
/// backoff, which is what this prevents.
pub fn no_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 0,
        ..Default::default()
    }
}

/// The warning for a target that still sets `max_retries`, which S3 and GCS
/// targets had when object_store retried each request itself.
pub fn deprecated_max_retries() -> String {
    format!(
        "max_retries is deprecated and ignored: every kind of target now tries a \
         failing object {} times in all (docs/backends.md, \"Retries\"); remove the setting",
        backup_core::storage::RetryPolicy::default().max_attempts
    )
}

/// HTTP client settings shared by the object_store targets.
pub fn client_options(allow_http: bool) -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(10))
        // Generous: one request can carry a whole part.
        .with_timeout(Duration::from_secs(300))
}

/// Checks and normalises a configured prefix (`"/backups/host1/"` →
/// `"backups/host1"`), so keys below it obey the same rules as keys.
pub fn normalize_prefix(prefix: Option<&str>, target: &str) -> Result<String, StorageError> {
    let trimmed = prefix.unwrap_or("").trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    validate_key(trimmed).map_err(|_| {
        StorageError::new(
            ErrorKind::Other,
            target,
            format!("invalid prefix {trimmed:?}: use /-separated segments of [A-Za-z0-9._-]"),
        )
    })?;
    Ok(trimmed.to_string())
}

/// A bucket target's display name (`s3://bucket/prefix`) and normalised
/// prefix. An empty bucket name is a configuration error.
pub fn bucket_target(
    scheme: &str,
    bucket: &str,
    prefix: Option<&str>,
) -> Result<(String, String), StorageError> {
    let base = format!("{scheme}://{bucket}");
    let prefix = normalize_prefix(prefix, &base)?;
    let target = if prefix.is_empty() {
        base
    } else {
        format!("{base}/{prefix}")
    };
    if bucket.is_empty() {
        return Err(StorageError::new(
            ErrorKind::Other,
            target,
            "bucket is empty: set bucket = \"...\" in the target",
        ));
    }
    Ok((target, prefix))
}

/// The multipart part size in bytes from a target's `part_size_mib`
/// (16 by default), within the 5 MiB to 5 GiB that S3 and GCS accept.
pub fn part_size(mib: Option<usize>, target: &str, service: &str) -> Result<usize, StorageError> {
    let mib = mib.unwrap_or(16);
    if !(5..=5120).contains(&mib) {
        return Err(StorageError::new(
            ErrorKind::Other,
            target,
            format!(
                "part_size_mib must be between 5 and 5120 ({service}'s limits for multipart parts)"
            ),
        ));
    }
    Ok(mib << 20)
}

/// A [`Storage`] on any `object_store` client.
pub struct ObjectStoreStorage {
    store: Arc<dyn ObjectStore>,
    settings: Settings,
    /// Whether this instance has looked for staged objects of dead runs.
    swept: AtomicBool,
}

impl fmt::Debug for ObjectStoreStorage {
    // The client's own Debug output can include configuration values; the
    // target name is all a log needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreStorage")
            .field("target", &self.settings.target)
            .field("part_size", &self.settings.part_size)
            .field("upload_concurrency", &self.settings.upload_concurrency)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreStorage {
    pub fn new(store: Arc<dyn ObjectStore>, settings: Settings) -> Self {
        ObjectStoreStorage {
            store,
            settings,
            swept: AtomicBool::new(false),
        }
    }

    fn path(&self, key: &str) -> Path {
        if self.settings.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.settings.prefix))
        }
    }

    fn errors(&self) -> ErrorMap {
        ErrorMap {
            target: self.settings.target.clone().into(),
            hints: self.settings.hints,
        }
    }

    /// Streams a body as a multipart upload to `path`, then checks with a
    /// `HEAD` that the completed object holds every byte; returns its size.
    /// `completed` is set once the service may have assembled an object at
    /// `path`: before that, a failure leaves nothing there.
    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        head: Vec<Bytes>,
        mut rest: ByteStream,
        completed: &mut bool,
    ) -> Result<u64, StorageError> {
        let errors = self.errors();
        let upload = self
            .store
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await
            .map_err(|e| errors.map(key, e))?;
        let mut parts = Parts::new(
            upload,
            self.settings.part_size,
            self.settings.upload_concurrency,
        );
        let mut sent = 0u64;
        let mut pending = head.into_iter();
        loop {
            let chunk = match pending.next() {
                Some(chunk) => chunk,
                None => match rest.next().await {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        parts.abort(key).await;
                        return Err(e);
                    }
                    None => break,
                },
            };
            sent += chunk.len() as u64;
            if let Err(e) = parts.push(chunk).await {
                parts.abort(key).await;
                return Err(errors.map(key, e));
            }
        }
        // `finish` aborts the upload itself when a part or the completion fails.
        // From here an object may appear at `path`, even if the answer to
        // the completion is lost.
        *completed = true;
        parts.finish(key).await.map_err(|e| errors.map(key, e))?;
        // The service assembles whatever parts it was told of; one HEAD per
        // multipart object (none for the many small ones) checks the sum.
        let stored = self
            .store
            .head(path)
            .await
            .map_err(|e| errors.map(key, e))?
            .size;
        if stored != sent {
            return Err(StorageError::new(
                ErrorKind::Other,
                key,
                format!(
                    "{} assembled {stored} of the {sent} bytes uploaded",
                    self.settings.target
                ),
            ));
        }
        Ok(stored)
    }

    async fn create_via_staging(
        &self,
        key: &str,
        head: Vec<Bytes>,
        rest: ByteStream,
    ) -> Result<u64, StorageError> {
        self.sweep_once().await;
        let staging_key = format!(
            "{TMP_DIR}/{}.{:016x}{:016x}",
            run_tag(),
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let staging = self.path(&staging_key);
        let mut staged = false;
        let copied = match self
            .put_multipart(key, &staging, head, rest, &mut staged)
            .await
        {
            Ok(size) => match failpoint::hit("objstore.put.copy") {
                Ok(()) => self
                    .store
                    .copy_if_not_exists(&staging, &self.path(key))
                    .await
                    .map(|()| size)
                    .map_err(|e| self.errors().map(key, e)),
                Err(e) => Err(StorageError::new(ErrorKind::Other, key, e.to_string())),
            },
            Err(e) => Err(e),
        };
        if !staged {
            // The upload failed before the service assembled anything (and
            // it was aborted): there is nothing to delete, and a request
            // here would only add to a failing service's load.
            return copied;
        }
        // Also after a failure: a staged object that came out short exists.
        match self.store.delete(&staging).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(
                target_name = %self.settings.target,
                staging_key,
                error = %e,
                "could not delete a staged upload; a later run or a lifecycle rule on \
                 {TMP_DIR}/ will remove it"
            ),
        }
        copied
    }

    /// Once per instance, before its first staged create: deletes staged
    /// objects that runs which are gone left behind (see the module doc).
    /// Costs one listing of [`TMP_DIR`], and only in runs that stage: small
    /// objects, the common case, never pay for it.
    async fn sweep_once(&self) {
        if self.swept.swap(true, Ordering::SeqCst) {
            return;
        }
        let dir = self.path(TMP_DIR);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut listing = self.store.list(Some(&dir));
        let mut stale = Vec::new();
        while let Some(item) = listing.next().await {
            let Ok(meta) = item else {
                // Not worth failing a backup over: a later run tries again.
                return;
            };
            let name = meta.location.filename().unwrap_or_default();
            let tag = name.split('.').next().unwrap_or_default();
            let age = now - meta.last_modified.timestamp();
            if run_is_gone(tag) || age > STALE_STAGED_AFTER.as_secs() as i64 {
                stale.push(meta.location);
            }
        }
        for location in stale {
            match self.store.delete(&location).await {
                Ok(()) => tracing::info!(
                    target_name = %self.settings.target,
                    "removed {location}, a staged upload an interrupted run left"
                ),
                Err(e) => {
                    tracing::warn!(
                        target_name = %self.settings.target,
                        error = %e,
                        "could not remove staged uploads that interrupted runs left in \
                         {TMP_DIR}/; a lifecycle rule there removes them"
                    );
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Storage for ObjectStoreStorage {
    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let path = self.path(key);
        let mode = if mode == PutMode::Create && !self.settings.conditional_create {
            match self.store.head(&path).await {
                Ok(_) => return Err(StorageError::already_exists(key)),
                Err(object_store::Error::NotFound { .. }) => PutMode::Overwrite,
                Err(e) => return Err(self.errors().map(key, e)),
            }
        } else {
            mode
        };
        let stored = |size| ObjectMeta {
            key: key.to_string(),
            size,
        };
        // Read up to one part's worth first: most objects (metadata, small
        // packs) fit, and one request is cheaper than a multipart upload.
        let mut head = Vec::new();
        let mut len = 0usize;
        while len <= self.settings.part_size {
            match body.next().await {
                Some(Ok(chunk)) => {
                    len += chunk.len();
                    head.push(chunk);
                }
                Some(Err(e)) => return Err(e),
                None => {
                    let payload: PutPayload = head.into_iter().collect();
                    let opts = PutOptions {
                        mode: match mode {
                            PutMode::Overwrite => object_store::PutMode::Overwrite,
                            PutMode::Create => object_store::PutMode::Create,
                        },
                        ..Default::default()
                    };
                    // Sent with its Content-Length: a 2xx answer means the
                    // service holds all `len` bytes.
                    self.store
                        .put_opts(&path, payload, opts)
                        .await
                        .map_err(|e| self.errors().map(key, e))?;
                    return Ok(stored(len as u64));
                }
            }
        }
        match mode {
            PutMode::Overwrite => {
                let mut completed = false;
                self.put_multipart(key, &path, head, body, &mut completed)
                    .await
            }
            PutMode::Create => self.create_via_staging(key, head, body).await,
        }
        .map(stored)
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        validate_key(key)?;
        let errors = self.errors();
        let result = self
            .store
            .get(&self.path(key))
            .await
            .map_err(|e| errors.map(key, e))?;
        let key = key.to_string();
        Ok(Box::pin(
            result
                .into_stream()
                .map(move |chunk| chunk.map_err(|e| errors.map(&key, e))),
        ))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let meta = self
            .store
            .head(&self.path(key))
            .await
            .map_err(|e| self.errors().map(key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: meta.size,
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        // object_store lists whole directories, while the contract's prefix is
        // a plain string prefix ("ls/many" matches "ls/manyish"): list the
        // directory that holds every match and filter.
        let dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let root = &self.settings.prefix;
        let list_path = match (root.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(Path::from(dir)),
            (false, true) => Some(Path::from(root.as_str())),
            (false, false) => Some(Path::from(format!("{root}/{dir}"))),
        };
        let strip = if root.is_empty() {
            String::new()
        } else {
            format!("{root}/")
        };
        let prefix = prefix.to_string();
        let staging = format!("{TMP_DIR}/");
        let errors = self.errors();
        self.store
            .list(list_path.as_ref())
            .filter_map(move |item| {
                let out = match item {
                    Ok(meta) => meta
                        .location
                        .as_ref()
                        .strip_prefix(strip.as_str())
                        .filter(|key| key.starts_with(&prefix) && !key.starts_with(&staging))
                        .map(|key| {
                            Ok(ObjectMeta {
                                key: key.to_string(),
                                size: meta.size,
                            })
                        }),
                    Err(e) => Some(Err(errors.map(&prefix, e))),
                };
                futures::future::ready(out)
            })
            .boxed()
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self.store.delete(&self.path(key)).await {
            Ok(()) => Ok(()),
            // GCS answers 404 for a missing object; deletes are idempotent.
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.errors().map(key, e)),
        }
    }

    fn describe(&self) -> String {
        self.settings.target.clone()
    }
}

/// Turns `object_store` errors into [`StorageError`]s that say which target
/// failed and what to check.
#[derive(Debug, Clone)]
pub struct ErrorMap {
    pub target: Arc<str>,
    pub hints: Hints,
}

impl ErrorMap {
    pub fn map(&self, key: &str, err: object_store::Error) -> StorageError {
        use object_store::Error as E;
        let target = &self.target;
        let detail = error_chain(&err);
        // List and multipart calls report most HTTP failures as `Generic`
        // errors: their status is only in the message.
        let status = http_status(&detail);
        let (kind, message) = match &err {
            E::NotFound { .. } | E::Generic { .. } if is_not_found(&err, status) => {
                if bucket_missing(&detail) {
                    (
                        ErrorKind::NotFound,
                        format!(
                            "the bucket of {target} does not exist; check {}",
                            self.hints.location
                        ),
                    )
                } else {
                    (ErrorKind::NotFound, format!("no such object in {target}"))
                }
            }
            // A Create put or copy that lost to an existing object: S3 answers
            // 412 to If-None-Match, GCS 412 to if-generation-match=0.
            E::AlreadyExists { .. } | E::Precondition { .. } => (
                ErrorKind::AlreadyExists,
                format!("object already exists in {target}"),
            ),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => (
                ErrorKind::PermissionDenied,
                format!(
                    "{target} refused the request; check {}",
                    self.hints.credentials
                ),
            ),
            _ if matches!(status, Some(401 | 403)) => (
                ErrorKind::PermissionDenied,
                format!(
                    "{target} refused the request; check {}",
                    self.hints.credentials
                ),
            ),
            _ if is_full(status, &detail) => (
                ErrorKind::Full,
                format!("{target} has no room for more data"),
            ),
            _ if is_transient(&err, &detail) => (
                ErrorKind::Transient,
                format!(
                    "{target} failed for now (a server error, throttling or a connection \
                     problem); check the network and {}",
                    self.hints.location
                ),
            ),
            E::Generic { .. } if credential_failure(&detail) => (
                ErrorKind::PermissionDenied,
                format!(
                    "could not get credentials for {target}; check {}",
                    self.hints.credentials
                ),
            ),
            _ => (
                ErrorKind::Other,
                format!("request to {target} failed; check {}", self.hints.location),
            ),
        };
        StorageError::new(kind, key, format!("{message} ({})", shorten(&detail, 600)))
            .with_source(err)
    }
}

/// The error and its causes on one line; `object_store` keeps the HTTP status
/// and service error code in the innermost ones.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        cur = e.source();
    }
    // Response bodies (XML, JSON) come with newlines.
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// At most `max` bytes of `text`, for messages: response bodies can be long.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ...", &text[..cut])
}

fn is_not_found(err: &object_store::Error, status: Option<u16>) -> bool {
    matches!(err, object_store::Error::NotFound { .. }) || status == Some(404)
}

/// The HTTP status in an `object_store` error message ("... status code: 404 ...").
fn http_status(detail: &str) -> Option<u16> {
    let at = detail.find("status code: ")?;
    detail[at + 13..].get(..3)?.parse().ok()
}

/// HTTP 507 Insufficient Storage, or MinIO's answer when its drives are full
/// (`XMinioStorageFull`, sent with 507 or 503).
fn is_full(status: Option<u16>, detail: &str) -> bool {
    status == Some(507) || detail.contains("XMinioStorageFull")
}

fn bucket_missing(detail: &str) -> bool {
    detail.contains("NoSuchBucket") || detail.contains("bucket does not exist")
}

fn credential_failure(detail: &str) -> bool {
    detail.contains("credential") || detail.contains("InvalidAccessKeyId")
}

/// Whether a failure is worth retrying (by the core): a transport error, a
/// 5xx, or throttling. `object_store` does not expose the status of
/// its request errors as a type outside the crate, so the status is read from
/// the message it formats ("... status code: 503 ...").
fn is_transient(err: &(dyn StdError + 'static), detail: &str) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            if matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            ) {
                return true;
            }
        }
        cur = e.source();
    }
    if let Some(code) = http_status(detail) {
        return code >= 500 || code == 429;
    }
    detail.contains("SlowDown") || detail.contains("InternalError")
}

/// Implements [`Storage`] for a backend type that wraps an
/// [`ObjectStoreStorage`] in a field named `inner`, by handing every call to
/// it: the S3 and GCS backends differ in how they are configured, not in
/// how they store. The crate using it depends on `async_trait` and
/// `futures`, as every backend does.
#[macro_export]
macro_rules! storage_via_inner {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl backup_core::storage::Storage for $ty {
            async fn put(
                &self,
                key: &str,
                body: backup_core::storage::ByteStream,
                mode: backup_core::storage::PutMode,
            ) -> Result<backup_core::storage::ObjectMeta, backup_core::storage::StorageError> {
                self.inner.put(key, body, mode).await
            }
            async fn get(
                &self,
                key: &str,
            ) -> Result<backup_core::storage::ByteStream, backup_core::storage::StorageError> {
                self.inner.get(key).await
            }
            async fn head(
                &self,
                key: &str,
            ) -> Result<backup_core::storage::ObjectMeta, backup_core::storage::StorageError> {
                self.inner.head(key).await
            }
            fn list(
                &self,
                prefix: &str,
            ) -> futures::stream::BoxStream<
                '_,
                Result<backup_core::storage::ObjectMeta, backup_core::storage::StorageError>,
            > {
                self.inner.list(prefix)
            }
            async fn delete(&self, key: &str) -> Result<(), backup_core::storage::StorageError> {
                self.inner.delete(key).await
            }
            fn describe(&self) -> String {
                self.inner.describe()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised_and_checked() {
        assert_eq!(normalize_prefix(None, "t").unwrap(), "");
        assert_eq!(normalize_prefix(Some("/"), "t").unwrap(), "");
        assert_eq!(
            normalize_prefix(Some("/backups/host1/"), "t").unwrap(),
            "backups/host1"
        );
        assert!(normalize_prefix(Some("a/../b"), "t").is_err());
        assert!(normalize_prefix(Some("sp ace"), "t").is_err());
    }

    #[test]
    fn bucket_targets_and_part_sizes() {
        let (target, prefix) = bucket_target("s3", "b", Some("/host1/")).unwrap();
        assert_eq!(
            (target.as_str(), prefix.as_str()),
            ("s3://b/host1", "host1")
        );
        assert_eq!(bucket_target("gs", "b", None).unwrap().0, "gs://b");
        let err = bucket_target("s3", "", None).unwrap_err();
        assert!(err.to_string().contains("bucket is empty"), "{err}");
        assert_eq!(part_size(None, "t", "S3").unwrap(), 16 << 20);
        assert_eq!(part_size(Some(5), "t", "S3").unwrap(), 5 << 20);
        let err = part_size(Some(4), "t", "GCS").unwrap_err();
        assert!(err.to_string().contains("GCS's limits"), "{err}");
    }

    #[test]
    fn statuses_in_messages_classify() {
        let e = object_store::Error::NotImplemented {
            operation: "x".into(),
            implementer: "y".into(),
        };
        assert!(is_transient(
            &e,
            "Server returned non-2xx status code: 503 Service Unavailable"
        ));
        assert!(is_transient(&e, "status code: 429 Too Many Requests"));
        assert!(!is_transient(&e, "status code: 400 Bad Request"));
        assert!(!is_transient(&e, "something else"));
        assert!(is_full(Some(507), "Insufficient Storage"));
        assert!(is_full(Some(503), "<Code>XMinioStorageFull</Code>"));
        assert!(!is_full(Some(503), "SlowDown"));
    }
}
