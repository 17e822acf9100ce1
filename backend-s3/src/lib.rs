//! offsite storage backend for Amazon S3 and S3-compatible services (MinIO,
//! Cloudflare R2, Wasabi, Backblaze B2's S3 endpoint, ...).
//!
//! This crate only turns a `[[targets]]` table into a configured `object_store`
//! S3 client; the [`Storage`] behaviour itself lives in `backend-objstore`.
//! Credentials come from the configuration when given there, otherwise from the
//! environment the way AWS tools look for them (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity, ECS task role,
//! EC2 instance role). Secrets must never reach a log or an error message: the
//! config's `Debug` output redacts them.

pub mod profile;

use std::fmt;
use std::sync::Arc;

use backend_objstore::{
    bucket_target, client_options, deprecated_max_retries, no_retries, part_size, ErrorMap, Hints,
    ObjectStoreStorage, Settings,
};
use backup_core::storage::{Backend, ErrorKind, Storage, StorageError};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut, S3CopyIfNotExists};
use serde::Deserialize;

/// `[[targets]]` settings of `kind = "s3"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, so several repositories can share one.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Defaults to `AWS_REGION` / `AWS_DEFAULT_REGION`, then `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// Service URL for S3-compatible services, e.g. `https://s3.eu-central-003.backblazeb2.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Permit a plain `http://` endpoint (a local MinIO, a test server).
    #[serde(default)]
    pub allow_http: bool,
    /// `https://bucket.endpoint/key` instead of `https://endpoint/bucket/key`.
    /// Path style is the default because every S3-compatible service has it.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub session_token: Option<String>,
    /// A profile of the AWS shared credentials file (default: `AWS_PROFILE`,
    /// then `default` if the file has it). Only used when no keys are set
    /// here or in the environment.
    #[serde(default)]
    pub profile: Option<String>,
    /// Whether the service enforces `If-None-Match: *` (default true). Set
    /// false for a service that rejects it: creates then check with HEAD
    /// before uploading, which is not atomic (see docs/backends.md).
    #[serde(default = "yes")]
    pub conditional_writes: bool,
    /// Multipart part size in MiB (5..=5120; default 16). Bodies up to one part
    /// are stored with a single request.
    #[serde(default)]
    pub part_size_mib: Option<usize>,
    /// Parts uploaded in parallel (default 4).
    #[serde(default)]
    pub upload_concurrency: Option<usize>,
    /// Deprecated and ignored: retries are the core's, one budget per object
    /// for every kind of target (docs/backends.md, "Retries"). Still accepted
    /// so that configs that set it keep loading, with a warning.
    #[serde(default)]
    pub max_retries: Option<usize>,
}

fn yes() -> bool {
    true
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            prefix: None,
            region: None,
            endpoint: None,
            allow_http: false,
            virtual_hosted_style: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            profile: None,
            conditional_writes: true,
            part_size_mib: None,
            upload_concurrency: None,
            max_retries: None,
        }
    }
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("access_key_id", &redact(&self.access_key_id))
            .field("secret_access_key", &redact(&self.secret_access_key))
            .field("session_token", &redact(&self.session_token))
            .field("profile", &self.profile)
            .field("conditional_writes", &self.conditional_writes)
            .field("part_size_mib", &self.part_size_mib)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

const HINTS: Hints = Hints {
    credentials: "the access key (access_key_id/secret_access_key or AWS_ACCESS_KEY_ID/\
                  AWS_SECRET_ACCESS_KEY, or the instance role) and that its policy allows \
                  s3:PutObject, s3:GetObject and s3:ListBucket on this bucket \
                  (s3:DeleteObject for prune)",
    location: "the bucket name, region and endpoint",
};

/// An S3 bucket (or a prefix inside one).
pub struct S3Storage {
    inner: ObjectStoreStorage,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("S3Storage")
            .field(&self.inner.describe())
            .finish()
    }
}

impl S3Storage {
    /// Builds the client. Nothing is sent to the service yet: a wrong bucket or
    /// credentials show up, with a message saying what to check, on first use.
    pub fn open(config: &S3Config) -> Result<Self, StorageError> {
        let (target, prefix) = bucket_target("s3", &config.bucket, config.prefix.as_deref())?;
        let part_size = part_size(config.part_size_mib, &target, "S3")?;

        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(config.virtual_hosted_style)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            // Create-if-absent of a multipart-sized body is a staged upload
            // plus this conditional copy (see backend-objstore).
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart)
            .with_retry(no_retries())
            .with_client_options(client_options(config.allow_http));
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let bad = |message: String| StorageError::new(ErrorKind::Other, target.clone(), message);
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(v) = &config.session_token {
                    builder = builder.with_token(v);
                }
            }
            (None, None) if env_set("AWS_ACCESS_KEY_ID") => {} // from_env took them
            (None, None) => {
                // The shared credentials file comes before roles in the AWS
                // chain; object_store follows the rest (web identity, ECS
                // task role, EC2 instance role) itself.
                let found = profile::load(config.profile.as_deref(), &profile::Sources::from_env())
                    .map_err(|why| {
                        bad(format!("{why}; check the profile setting or AWS_PROFILE"))
                    })?;
                if let Some(p) = found {
                    builder = builder
                        .with_access_key_id(&p.access_key_id)
                        .with_secret_access_key(&p.secret_access_key);
                    if let Some(t) = &p.session_token {
                        builder = builder.with_token(t);
                    }
                    let region_from_env = env_set("AWS_REGION") || env_set("AWS_DEFAULT_REGION");
                    if let (None, false, Some(r)) = (&config.region, region_from_env, &p.region) {
                        builder = builder.with_region(r);
                    }
                }
            }
            _ => {
                return Err(bad(
                    "set both access_key_id and secret_access_key, or neither (then the \
                     environment, a profile or the instance role is used)"
                        .into(),
                ))
            }
        }
        let store = builder.build().map_err(|e| {
            let mapped = ErrorMap {
                target: target.clone().into(),
                hints: HINTS,
            }
            .map(&target, e);
            StorageError::new(
                ErrorKind::Other,
                target.clone(),
                format!("invalid S3 settings: {}", mapped.message),
            )
        })?;

        Ok(S3Storage {
            inner: ObjectStoreStorage::new(
                Arc::new(store),
                Settings {
                    target,
                    hints: HINTS,
                    prefix,
                    part_size,
                    upload_concurrency: config.upload_concurrency.unwrap_or(4).max(1),
                    conditional_create: config.conditional_writes,
                },
            ),
        })
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

backend_objstore::storage_via_inner!(S3Storage);

impl Backend for S3Storage {
    const KIND: &'static str = "s3";
    type Config = S3Config;

    fn open(config: &S3Config) -> Result<Self, StorageError> {
        S3Storage::open(config)
    }

    fn deprecations(config: &S3Config) -> Vec<String> {
        config
            .max_retries
            .map(|_| deprecated_max_retries())
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let cfg = S3Config {
            bucket: "b".into(),
            access_key_id: Some("AKIAEXAMPLEKEY".into()),
            secret_access_key: Some("very-secret".into()),
            session_token: Some("token-secret".into()),
            ..Default::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("very-secret") && !shown.contains("token-secret"));
        assert!(!shown.contains("AKIAEXAMPLEKEY"));
        let storage = S3Storage::open(&cfg).unwrap();
        assert!(!format!("{storage:?}").contains("very-secret"));
    }

    #[test]
    fn max_retries_is_accepted_ignored_and_warned_about() {
        let cfg: S3Config = serde_json::from_str(r#"{"bucket":"b","max_retries":3}"#).unwrap();
        let warned = S3Storage::deprecations(&cfg);
        assert_eq!(warned.len(), 1);
        assert!(
            warned[0].contains("max_retries is deprecated"),
            "{warned:?}"
        );
        assert!(S3Storage::deprecations(&S3Config::default()).is_empty());
    }

    #[test]
    fn unknown_settings_are_rejected() {
        let err = serde_json::from_str::<S3Config>(r#"{"bucket":"b","bukcet":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("bukcet"), "{err}");
    }

    #[test]
    fn describe_names_bucket_and_prefix() {
        let cfg = S3Config {
            bucket: "b".into(),
            prefix: Some("/hosts/a/".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(S3Storage::open(&cfg).unwrap().describe(), "s3://b/hosts/a");
        let bad = S3Config {
            part_size_mib: Some(1),
            ..cfg
        };
        assert_eq!(S3Storage::open(&bad).unwrap_err().kind, ErrorKind::Other);
    }
}
