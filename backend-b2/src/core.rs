//! The B2 native API client: account authorization and its renewal, upload URL
//! reuse, and one method per B2 call that offsite makes.
//!
//! Every call goes through [`Core::with_auth`], which owns the two recovery
//! rules B2 asks of clients that are not retries: authorize again after
//! `expired_auth_token` and repeat the call once, and drop an upload URL after
//! a failed upload so that the next attempt fetches a new one. Backing off and
//! trying again after a 5xx/408/429 or a broken connection is not done here:
//! such a failure is returned as [`ErrorKind::Transient`] after one request,
//! and the core's `RetryPolicy` retries the whole object, the one retry layer
//! of every backend (docs/backends.md, "Retries"). This module must never log
//! or format the application key or any authorization token.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::storage::{ErrorKind, StorageError};
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::B2Error;

/// B2's page size for listings; it bills list calls per 1000 names.
const LIST_PAGE: u32 = 1000;

/// What `b2_authorize_account` hands out, plus the bucket id it leads to.
pub(crate) struct Auth {
    api_url: String,
    download_url: String,
    token: String,
    bucket_id: String,
}

/// An upload URL with its own token. B2 lets one URL carry one upload at a
/// time, so URLs are checked out of a pool and returned after success.
struct UploadTarget {
    url: String,
    token: String,
}

/// Upload URLs not in use; one pool per bucket, and one per large file (part
/// URLs belong to their file).
#[derive(Default)]
pub(crate) struct UploadPool(Mutex<Vec<UploadTarget>>);

impl UploadPool {
    fn take(&self) -> Option<UploadTarget> {
        self.0.lock().expect("upload pool lock").pop()
    }
    fn give_back(&self, target: UploadTarget) {
        self.0.lock().expect("upload pool lock").push(target);
    }
}

/// One version of a file name, as B2's listings and uploads report it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FileVersion {
    pub file_id: String,
    pub file_name: String,
    #[serde(default)]
    pub content_length: u64,
    /// The SHA-1 B2 computed of a small file's bytes; `none` for a large file
    /// (its parts' SHA-1s were checked one by one instead).
    #[serde(default)]
    pub content_sha1: Option<String>,
    /// `upload`, `hide`, `start` (unfinished large file) or `folder`.
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub upload_timestamp: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileNamesPage {
    files: Vec<FileVersion>,
    next_file_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileVersionsPage {
    files: Vec<FileVersion>,
    next_file_name: Option<String>,
    next_file_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizeResponse {
    account_id: String,
    authorization_token: String,
    api_url: String,
    download_url: String,
    #[serde(default)]
    allowed: Allowed,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Allowed {
    bucket_id: Option<String>,
    bucket_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadUrlResponse {
    upload_url: String,
    authorization_token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BucketList {
    buckets: Vec<BucketEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BucketEntry {
    bucket_id: String,
    bucket_name: String,
}

/// The credentials, kept out of every `Debug` and `Display`.
pub(crate) struct Credentials {
    pub key_id: String,
    pub key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Shared state of one B2 target; cheap to share behind an `Arc`.
pub(crate) struct Core {
    http: reqwest::Client,
    creds: Credentials,
    authorize_url: String,
    pub bucket: String,
    auth: tokio::sync::Mutex<Option<Arc<Auth>>>,
    uploads: UploadPool,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("bucket", &self.bucket)
            .field("authorize_url", &self.authorize_url)
            .field("creds", &self.creds)
            .finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(
        creds: Credentials,
        api_url: &str,
        bucket: String,
    ) -> Result<Self, StorageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // Per read, not per request: a 100 MiB part may take minutes.
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| {
                StorageError::new(ErrorKind::Other, &bucket, "cannot set up HTTP client")
                    .with_source(e)
            })?;
        Ok(Core {
            http,
            creds,
            authorize_url: format!(
                "{}/b2api/v2/b2_authorize_account",
                api_url.trim_end_matches('/')
            ),
            bucket,
            auth: tokio::sync::Mutex::new(None),
            uploads: UploadPool::default(),
        })
    }

    /// The current authorization, authorizing first if there is none. The
    /// lock is held across the authorize call so that many tasks finding the
    /// token expired at once authorize once, not once each.
    async fn auth(&self) -> Result<Arc<Auth>, B2Error> {
        let mut slot = self.auth.lock().await;
        if let Some(auth) = slot.as_ref() {
            return Ok(auth.clone());
        }
        let auth = Arc::new(self.authorize().await?);
        *slot = Some(auth.clone());
        Ok(auth)
    }

    /// Drops `stale` unless another task has already replaced it.
    async fn forget(&self, stale: &Arc<Auth>) {
        let mut slot = self.auth.lock().await;
        if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, stale)) {
            *slot = None;
        }
    }

    async fn authorize(&self) -> Result<Auth, B2Error> {
        const OP: &str = "b2_authorize_account";
        tracing::debug!(bucket = %self.bucket, "authorizing with B2");
        let resp = self
            .http
            .get(&self.authorize_url)
            .basic_auth(&self.creds.key_id, Some(&self.creds.key))
            .send()
            .await
            .map_err(|e| B2Error::http(OP, e))?;
        let account: AuthorizeResponse = match read_json(OP, resp).await {
            // At authorize time every 401 (bad_auth_token included) means the
            // key id or key is wrong; retrying cannot help.
            Err(B2Error::Api {
                status: 401,
                message,
                ..
            }) => {
                return Err(B2Error::Target {
                    kind: ErrorKind::PermissionDenied,
                    message: format!(
                        "B2 rejected application key id {:?}: {message}",
                        self.creds.key_id
                    ),
                })
            }
            other => other?,
        };
        let bucket_id = match (account.allowed.bucket_name, account.allowed.bucket_id) {
            (Some(name), Some(id)) if name == self.bucket => id,
            (Some(name), _) => {
                return Err(B2Error::Target {
                    kind: ErrorKind::PermissionDenied,
                    message: format!(
                        "application key {:?} is restricted to bucket {name:?}, not {:?}",
                        self.creds.key_id, self.bucket
                    ),
                })
            }
            _ => {
                self.bucket_id_by_name(
                    &account.api_url,
                    &account.authorization_token,
                    &account.account_id,
                )
                .await?
            }
        };
        Ok(Auth {
            api_url: account.api_url,
            download_url: account.download_url,
            token: account.authorization_token,
            bucket_id,
        })
    }

    async fn bucket_id_by_name(
        &self,
        api_url: &str,
        token: &str,
        account_id: &str,
    ) -> Result<String, B2Error> {
        const OP: &str = "b2_list_buckets";
        let resp = self
            .http
            .post(format!("{api_url}/b2api/v2/{OP}"))
            .header(AUTHORIZATION, token)
            .json(&json!({"accountId": account_id, "bucketName": self.bucket}))
            .send()
            .await
            .map_err(|e| B2Error::http(OP, e))?;
        let list: BucketList = read_json(OP, resp).await?;
        list.buckets
            .into_iter()
            .find(|b| b.bucket_name == self.bucket)
            .map(|b| b.bucket_id)
            .ok_or_else(|| B2Error::Target {
                kind: ErrorKind::NotFound,
                message: format!(
                    "B2 bucket {:?} does not exist in this account (or the key cannot list it)",
                    self.bucket
                ),
            })
    }

    /// Runs `op` once with the current authorization. If B2 says the account
    /// token expired (B2 tokens live at most a day, and B2 may end them
    /// sooner), authorizes again, once for all concurrent callers, and
    /// repeats `op` once with the new token: renewing a credential B2 asks
    /// clients to renew, not a retry of a failed transfer, so it does not
    /// count against the core's budget. Any other failure, transient or
    /// not, is returned at once for the core to decide on.
    pub(crate) async fn with_auth<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StorageError>
    where
        F: Fn(Arc<Auth>) -> Fut,
        Fut: Future<Output = Result<T, B2Error>>,
    {
        let into_storage = |e: B2Error| e.into_storage(&self.bucket, key);
        let auth = self.auth().await.map_err(into_storage)?;
        match op(auth.clone()).await {
            Err(e) if e.is_expired_token() => {
                tracing::debug!(bucket = %self.bucket, "B2 token expired, re-authorizing");
                self.forget(&auth).await;
                let renewed = self.auth().await.map_err(into_storage)?;
                let again = op(renewed.clone()).await;
                if again.as_ref().is_err_and(B2Error::is_expired_token) {
                    // A token that expires at once is B2's trouble; the
                    // next attempt, if the core makes one, starts afresh.
                    self.forget(&renewed).await;
                }
                again.map_err(into_storage)
            }
            other => other.map_err(into_storage),
        }
    }

    /// One POST to a JSON API endpoint.
    async fn call<T: DeserializeOwned>(
        &self,
        auth: &Auth,
        op: &'static str,
        body: &Value,
    ) -> Result<T, B2Error> {
        let resp = self
            .http
            .post(format!("{}/b2api/v2/{op}", auth.api_url))
            .header(AUTHORIZATION, &auth.token)
            .json(body)
            .send()
            .await
            .map_err(|e| B2Error::http(op, e))?;
        read_json(op, resp).await
    }

    /// A JSON API call with authorization (see [`Core::with_auth`]).
    async fn api<T: DeserializeOwned>(
        &self,
        key: &str,
        op: &'static str,
        body: impl Fn(&Auth) -> Value,
    ) -> Result<T, StorageError> {
        let body = &body;
        self.with_auth(key, |auth| async move {
            self.call(&auth, op, &body(&auth)).await
        })
        .await
    }

    /// Uploads a whole small file with `b2_upload_file`.
    pub(crate) async fn upload_file(
        &self,
        key: &str,
        name: &str,
        data: Bytes,
        sha1: &str,
    ) -> Result<FileVersion, StorageError> {
        const OP: &str = "b2_upload_file";
        self.with_auth(key, |auth| {
            let data = data.clone();
            async move {
                let target = match self.uploads.take() {
                    Some(t) => t,
                    None => {
                        let r: UploadUrlResponse = self
                            .call(
                                &auth,
                                "b2_get_upload_url",
                                &json!({"bucketId": auth.bucket_id}),
                            )
                            .await?;
                        UploadTarget {
                            url: r.upload_url,
                            token: r.authorization_token,
                        }
                    }
                };
                let sent = self
                    .http
                    .post(&target.url)
                    .header(AUTHORIZATION, &target.token)
                    .header("X-Bz-File-Name", name)
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header("X-Bz-Content-Sha1", sha1)
                    .body(data)
                    .send()
                    .await;
                let result = match sent {
                    Ok(resp) => read_json::<FileVersion>(OP, resp).await,
                    Err(e) => Err(B2Error::http(OP, e)),
                };
                match result {
                    Ok(v) => {
                        self.uploads.give_back(target);
                        Ok(v)
                    }
                    Err(e) => Err(e.into_upload_failure()),
                }
            }
        })
        .await
    }

    pub(crate) async fn start_large_file(
        &self,
        key: &str,
        name: &str,
    ) -> Result<String, StorageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Started {
            file_id: String,
        }
        let started: Started = self
            .api(key, "b2_start_large_file", |auth| {
                json!({
                    "bucketId": auth.bucket_id,
                    "fileName": name,
                    "contentType": "application/octet-stream",
                })
            })
            .await?;
        Ok(started.file_id)
    }

    /// Uploads part `number` of large file `file_id` with `b2_upload_part`,
    /// drawing part URLs from `pool`.
    pub(crate) async fn upload_part(
        &self,
        key: &str,
        pool: &UploadPool,
        file_id: &str,
        number: u32,
        data: Bytes,
        sha1: &str,
    ) -> Result<(), StorageError> {
        const OP: &str = "b2_upload_part";
        self.with_auth(key, |auth| {
            let data = data.clone();
            async move {
                let target = match pool.take() {
                    Some(t) => t,
                    None => {
                        let r: UploadUrlResponse = self
                            .call(&auth, "b2_get_upload_part_url", &json!({"fileId": file_id}))
                            .await?;
                        UploadTarget {
                            url: r.upload_url,
                            token: r.authorization_token,
                        }
                    }
                };
                let sent = self
                    .http
                    .post(&target.url)
                    .header(AUTHORIZATION, &target.token)
                    .header("X-Bz-Part-Number", number)
                    .header("X-Bz-Content-Sha1", sha1)
                    .body(data)
                    .send()
                    .await;
                let result = match sent {
                    Ok(resp) => read_json::<Value>(OP, resp).await,
                    Err(e) => Err(B2Error::http(OP, e)),
                };
                match result {
                    Ok(_) => {
                        pool.give_back(target);
                        Ok(())
                    }
                    Err(e) => Err(e.into_upload_failure()),
                }
            }
        })
        .await
    }

    pub(crate) async fn finish_large_file(
        &self,
        key: &str,
        file_id: &str,
        part_sha1s: &[String],
    ) -> Result<FileVersion, StorageError> {
        self.api(
            key,
            "b2_finish_large_file",
            |_| json!({"fileId": file_id, "partSha1Array": part_sha1s}),
        )
        .await
    }

    pub(crate) async fn cancel_large_file(
        &self,
        key: &str,
        file_id: &str,
    ) -> Result<(), StorageError> {
        self.api::<Value>(key, "b2_cancel_large_file", |_| json!({"fileId": file_id}))
            .await
            .map(drop)
    }

    /// One page of the latest visible versions of names under `prefix`,
    /// starting at `start` (inclusive); returns the page and where the next
    /// one starts.
    pub(crate) async fn list_file_names(
        &self,
        prefix: &str,
        start: Option<&str>,
        max: u32,
    ) -> Result<(Vec<FileVersion>, Option<String>), StorageError> {
        let page: FileNamesPage = self
            .api(prefix, "b2_list_file_names", |auth| {
                let mut body = json!({
                    "bucketId": auth.bucket_id,
                    "prefix": prefix,
                    "maxFileCount": max,
                });
                if let Some(start) = start {
                    body["startFileName"] = json!(start);
                }
                body
            })
            .await?;
        Ok((page.files, page.next_file_name))
    }

    /// Whether `name` exists now (its newest version is an upload).
    pub(crate) async fn exists(&self, name: &str) -> Result<bool, StorageError> {
        let (files, _) = self.list_file_names(name, Some(name), 1).await?;
        Ok(files
            .first()
            .is_some_and(|f| f.file_name == name && f.action == "upload"))
    }

    /// Every version (uploads and hide markers) of exactly `name`.
    pub(crate) async fn versions_of(&self, name: &str) -> Result<Vec<FileVersion>, StorageError> {
        let mut out = Vec::new();
        let mut start: Option<(String, Option<String>)> = None;
        loop {
            let page: FileVersionsPage = self
                .api(name, "b2_list_file_versions", |auth| {
                    let mut body = json!({
                        "bucketId": auth.bucket_id,
                        "prefix": name,
                        "startFileName": name,
                        "maxFileCount": LIST_PAGE,
                    });
                    if let Some((start_name, start_id)) = &start {
                        body["startFileName"] = json!(start_name);
                        if let Some(id) = start_id {
                            body["startFileId"] = json!(id);
                        }
                    }
                    body
                })
                .await?;
            let before = out.len();
            out.extend(page.files.into_iter().filter(|f| f.file_name == name));
            match page.next_file_name {
                // Names after ours sort later; once a page leaves our name the
                // rest belongs to other keys that merely share the prefix.
                Some(next) if next == name && out.len() > before => {
                    start = Some((next, page.next_file_id));
                }
                _ => return Ok(out),
            }
        }
    }

    /// Deletes one version; a version already gone counts as deleted.
    pub(crate) async fn delete_file_version(
        &self,
        name: &str,
        file_id: &str,
    ) -> Result<(), StorageError> {
        let deleted = self
            .api::<Value>(
                name,
                "b2_delete_file_version",
                |_| json!({"fileName": name, "fileId": file_id}),
            )
            .await;
        match deleted {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    fn download_url(&self, auth: &Auth, name: &str) -> String {
        format!("{}/file/{}/{}", auth.download_url, self.bucket, name)
    }

    /// Starts `b2_download_file_by_name`; the body is the caller's to stream.
    pub(crate) async fn download(
        &self,
        key: &str,
        name: &str,
    ) -> Result<reqwest::Response, StorageError> {
        const OP: &str = "b2_download_file_by_name";
        self.with_auth(key, |auth| async move {
            let resp = self
                .http
                .get(self.download_url(&auth, name))
                .header(AUTHORIZATION, &auth.token)
                .send()
                .await
                .map_err(|e| B2Error::http(OP, e))?;
            if resp.status().is_success() {
                Ok(resp)
            } else {
                Err(error_of(OP, resp).await)
            }
        })
        .await
    }

    /// The size of the newest version of `name`, by a HEAD on its download URL
    /// (cheaper in B2's billing than a listing).
    pub(crate) async fn head(&self, key: &str, name: &str) -> Result<u64, StorageError> {
        const OP: &str = "b2_download_file_by_name (HEAD)";
        self.with_auth(key, |auth| async move {
            let resp = self
                .http
                .head(self.download_url(&auth, name))
                .header(AUTHORIZATION, &auth.token)
                .send()
                .await
                .map_err(|e| B2Error::http(OP, e))?;
            if !resp.status().is_success() {
                return Err(error_of(OP, resp).await);
            }
            resp.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| B2Error::Malformed {
                    op: OP,
                    message: "no Content-Length".into(),
                })
        })
        .await
    }
}

async fn error_of(op: &'static str, resp: reqwest::Response) -> B2Error {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    B2Error::from_response(op, status, &body)
}

async fn read_json<T: DeserializeOwned>(
    op: &'static str,
    resp: reqwest::Response,
) -> Result<T, B2Error> {
    if !resp.status().is_success() {
        return Err(error_of(op, resp).await);
    }
    let body = resp.bytes().await.map_err(|e| B2Error::http(op, e))?;
    serde_json::from_slice(&body).map_err(|e| B2Error::Malformed {
        op,
        message: e.to_string(),
    })
}
