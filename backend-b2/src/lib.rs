//! offsite storage backend for a Backblaze B2 bucket, spoken to over B2's
//! native JSON API with a small client of its own (see docs/backends.md for
//! why not opendal's B2 service).
//!
//! Objects are B2 files named `<prefix>/<key>`. B2 keeps versions of a name, so
//! "the object" is the newest version, delete removes every version (hide
//! markers too), and create-if-absent, which B2 has no conditional write for,
//! is settled after the fact between the racing uploads (see [`B2Storage`]'s
//! `put`). Nothing here may print the application key or a token.

mod core;
mod error;
mod writer;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use backup_core::storage::{
    validate_key, Backend, ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::core::{Core, Credentials};

/// Where B2 accounts authorize unless `api_url` says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.backblazeb2.com";
/// B2's smallest allowed part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5_000_000;
/// B2's largest allowed part, and its largest single-call upload.
pub const MAX_PART_SIZE: u64 = 5_000_000_000;
/// B2 recommends 100 MB parts; bodies smaller than a part (every pack and
/// index file) go up in one call.
const DEFAULT_PART_SIZE_MIB: u64 = 100;
/// Parts of one large file uploaded at once, each on its own part URL.
const DEFAULT_UPLOAD_CONCURRENCY: usize = 2;
const PAGE: u32 = 1000;

/// `[[targets]]` settings of `kind = "b2"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct B2Config {
    /// Bucket name.
    pub bucket: String,
    /// Folder inside the bucket that holds the repository.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Else `B2_APPLICATION_KEY_ID` from the environment.
    #[serde(default)]
    pub application_key_id: Option<String>,
    /// Else `B2_APPLICATION_KEY` from the environment.
    #[serde(default)]
    pub application_key: Option<String>,
    /// Base URL of the authorize call, for emulators and tests.
    #[serde(default)]
    pub api_url: Option<String>,
    /// Part size of large files in MiB (5..=4768, B2's 5 MB to 5 GB; default
    /// 100). Bodies of this size or more go up as large files in parts of
    /// this size, smaller ones with one call.
    #[serde(default)]
    pub part_size_mib: Option<u64>,
    /// Parts of one large file uploaded in parallel (default 2); memory use
    /// is about `part_size_mib * (upload_concurrency + 1)` per object.
    #[serde(default)]
    pub upload_concurrency: Option<usize>,
    /// Deprecated: the part size in bytes, as offsite 0.1 documented it.
    /// Still honoured (with a warning) when `part_size_mib` is not set.
    #[serde(default)]
    pub part_size: Option<u64>,
}

impl B2Config {
    /// The part size in bytes, from `part_size_mib` or the deprecated
    /// `part_size`, within B2's limits.
    fn part_size_bytes(&self) -> Result<u64, String> {
        let bytes = match (self.part_size_mib, self.part_size) {
            (Some(_), Some(_)) => {
                return Err(
                    "set part_size_mib only (part_size is its deprecated form, in \
                            bytes)"
                        .into(),
                )
            }
            (Some(mib), None) => mib.saturating_mul(1 << 20),
            (None, Some(bytes)) => bytes,
            (None, None) => DEFAULT_PART_SIZE_MIB << 20,
        };
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&bytes) {
            return Err(match self.part_size_mib {
                Some(mib) => format!(
                    "part_size_mib = {mib} is outside B2's limits (5 to 4768 MiB: 5 MB to 5 GB)"
                ),
                None => format!(
                    "part_size {bytes} is outside B2's limits ({MIN_PART_SIZE}..={MAX_PART_SIZE} \
                     bytes)"
                ),
            });
        }
        Ok(bytes)
    }
}

impl fmt::Debug for B2Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("B2Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("application_key_id", &self.application_key_id)
            .field(
                "application_key",
                &self.application_key.as_ref().map(|_| "<redacted>"),
            )
            .field("api_url", &self.api_url)
            .field("part_size_mib", &self.part_size_mib)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("part_size", &self.part_size)
            .finish()
    }
}

/// A repository in a B2 bucket.
pub struct B2Storage {
    core: Arc<Core>,
    /// Empty, or the configured prefix with a trailing `/`.
    prefix: String,
    shape: writer::Shape,
}

impl fmt::Debug for B2Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("B2Storage")
            .field("core", &self.core)
            .field("prefix", &self.prefix)
            .field("shape", &self.shape)
            .finish()
    }
}

impl B2Storage {
    /// Checks the configuration; B2 is first contacted by the first call.
    pub fn open(config: &B2Config) -> Result<Self, StorageError> {
        let describe = format!("b2://{}", config.bucket);
        let bad = |msg: String| StorageError::new(ErrorKind::Other, &describe, msg);
        if config.bucket.is_empty()
            || !config
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(format!(
                "invalid B2 bucket name {:?} (letters, digits and '-')",
                config.bucket
            )));
        }
        let part_size = config.part_size_bytes().map_err(bad)?;
        let prefix = match config.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => {
                validate_key(p).map_err(|_| {
                    bad(format!(
                        "invalid prefix {p:?} (expected /-separated segments of [A-Za-z0-9._-])"
                    ))
                })?;
                format!("{p}/")
            }
        };
        let from_env = |value: &Option<String>, var: &str| -> Result<String, StorageError> {
            match value {
                Some(v) => Ok(v.clone()),
                None => std::env::var(var).map_err(|_| {
                    bad(format!(
                        "no B2 credentials: set {var} or the target's {} setting",
                        var.trim_start_matches("B2_").to_ascii_lowercase()
                    ))
                }),
            }
        };
        let creds = Credentials {
            key_id: from_env(&config.application_key_id, "B2_APPLICATION_KEY_ID")?,
            key: from_env(&config.application_key, "B2_APPLICATION_KEY")?,
        };
        let api_url = config.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
        let core = Core::new(creds, api_url, config.bucket.clone())?;
        Ok(B2Storage {
            core: Arc::new(core),
            prefix,
            shape: writer::Shape {
                part_size: part_size as usize,
                concurrency: config
                    .upload_concurrency
                    .unwrap_or(DEFAULT_UPLOAD_CONCURRENCY)
                    .max(1),
            },
        })
    }

    fn name_of(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Settles a create race after our upload of `mine`: of all uploads of
    /// the name since its last hide marker, the earliest (by B2's upload
    /// timestamp, then file id) wins. Every racer computes the same answer from
    /// the same listing, so exactly one keeps its version.
    async fn settle_create(
        &self,
        key: &str,
        name: &str,
        mine: &core::FileVersion,
    ) -> Result<(), StorageError> {
        let versions = self.core.versions_of(name).await?;
        // B2 lists a name's versions newest first, so the uploads before the
        // first hide marker are the ones made since the name was last hidden.
        // Listing order, not timestamps, because a hide and an upload can
        // share a millisecond.
        let winner = versions
            .iter()
            .take_while(|v| v.action != "hide")
            .filter(|v| v.action == "upload")
            .min_by(|a, b| (a.upload_timestamp, &a.file_id).cmp(&(b.upload_timestamp, &b.file_id)));
        match winner {
            Some(w) if w.file_id != mine.file_id => {
                self.core.delete_file_version(name, &mine.file_id).await?;
                Err(StorageError::already_exists(key))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Storage for B2Storage {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let name = self.name_of(key);
        if mode == PutMode::Create && self.core.exists(&name).await? {
            return Err(StorageError::already_exists(key));
        }
        // Checked against the bytes sent before it is returned (writer.rs).
        let mine = writer::upload(&self.core, key, &name, body, self.shape).await?;
        if mode == PutMode::Create {
            self.settle_create(key, &name, &mine).await?;
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: mine.content_length,
        })
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        validate_key(key)?;
        let resp = self.core.download(key, &self.name_of(key)).await?;
        let key = key.to_string();
        Ok(Box::pin(resp.bytes_stream().map(move |piece| {
            piece.map_err(|e| {
                StorageError::new(ErrorKind::Transient, &key, "B2 download interrupted")
                    .with_source(e)
            })
        })))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let size = self.core.head(key, &self.name_of(key)).await?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size,
        })
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        let full = self.name_of(prefix);
        // State: Some(start) while pages remain (start None = from the top).
        let pages = stream::try_unfold(Some(None::<String>), move |state| {
            let full = full.clone();
            async move {
                let Some(start) = state else {
                    return Ok(None);
                };
                let (files, next) = self
                    .core
                    .list_file_names(&full, start.as_deref(), PAGE)
                    .await?;
                Ok(Some((files, next.map(Some))))
            }
        });
        Box::pin(
            pages
                .map_ok(move |files| {
                    stream::iter(files.into_iter().filter_map(move |f| {
                        let key = f.file_name.strip_prefix(&self.prefix)?;
                        (f.action == "upload").then(|| {
                            Ok(ObjectMeta {
                                key: key.to_string(),
                                size: f.content_length,
                            })
                        })
                    }))
                })
                .try_flatten(),
        )
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let name = self.name_of(key);
        // A concurrent upload can add a version while we delete; go round
        // until the name has none left.
        loop {
            let mut versions = self.core.versions_of(&name).await?;
            // An unfinished large file ("start") is someone's upload in
            // progress, not a version; its uploader finishes or cancels it.
            versions.retain(|v| v.action != "start");
            if versions.is_empty() {
                return Ok(());
            }
            for v in versions {
                self.core.delete_file_version(&name, &v.file_id).await?;
            }
        }
    }

    fn describe(&self) -> String {
        format!("b2://{}/{}", self.core.bucket, self.prefix)
    }
}

impl Backend for B2Storage {
    const KIND: &'static str = "b2";
    type Config = B2Config;

    fn open(config: &B2Config) -> Result<Self, StorageError> {
        B2Storage::open(config)
    }

    fn deprecations(config: &B2Config) -> Vec<String> {
        match (config.part_size, config.part_size_mib) {
            (Some(bytes), None) => vec![format!(
                "part_size is deprecated: write part_size_mib = {} (MiB, as for s3 and gcs \
                 targets); the {bytes} bytes set are used until then",
                bytes.div_ceil(1 << 20)
            )],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_like: serde_json::Value) -> Result<B2Config, serde_json::Error> {
        serde_json::from_value(toml_like)
    }

    #[test]
    fn unknown_settings_are_refused() {
        assert!(config(serde_json::json!({"bucket": "b", "bukket": "x"})).is_err());
        let c = config(serde_json::json!({"bucket": "b"})).unwrap();
        assert_eq!(c.part_size_bytes().unwrap(), DEFAULT_PART_SIZE_MIB << 20);
    }

    #[test]
    fn debug_hides_the_key() {
        let c = config(serde_json::json!({
            "bucket": "b",
            "application_key_id": "id123",
            "application_key": "s3cr3t",
        }))
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let s = B2Storage::open(&c).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("id123"), "{shown}");
    }

    #[test]
    fn part_size_in_bytes_still_works_with_a_warning() {
        let old = config(serde_json::json!({"bucket": "b", "part_size": 5_000_000})).unwrap();
        assert_eq!(old.part_size_bytes().unwrap(), 5_000_000);
        let warned = B2Storage::deprecations(&old);
        assert_eq!(warned.len(), 1);
        assert!(warned[0].contains("part_size_mib = 5"), "{warned:?}");
        let new = config(serde_json::json!({"bucket": "b", "part_size_mib": 8})).unwrap();
        assert_eq!(new.part_size_bytes().unwrap(), 8 << 20);
        assert!(B2Storage::deprecations(&new).is_empty());
        let both = serde_json::json!({"bucket": "b", "part_size_mib": 8, "part_size": 5_000_000});
        assert!(config(both).unwrap().part_size_bytes().is_err());
        for mib in [4, 4769] {
            let c = config(serde_json::json!({"bucket": "b", "part_size_mib": mib})).unwrap();
            let e = c.part_size_bytes().unwrap_err();
            assert!(e.contains("5 to 4768 MiB"), "{e}");
        }
        assert!(
            config(serde_json::json!({"bucket": "b", "part_size_mib": 4768}))
                .unwrap()
                .part_size_bytes()
                .is_ok()
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = serde_json::json!({
            "bucket": "b",
            "application_key_id": "i",
            "application_key": "k",
        });
        let mut small = base.clone();
        small["part_size"] = 1_000_000.into();
        assert!(B2Storage::open(&config(small).unwrap()).is_err());
        let mut prefix = base.clone();
        prefix["prefix"] = "a/../b".into();
        assert!(B2Storage::open(&config(prefix).unwrap()).is_err());
        let mut ok = base.clone();
        ok["prefix"] = "/hosts/h1/".into();
        let s = B2Storage::open(&config(ok).unwrap()).unwrap();
        assert_eq!(s.describe(), "b2://b/hosts/h1/");
    }
}
