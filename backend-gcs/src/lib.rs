//! offsite storage backend for Google Cloud Storage.
//!
//! This crate only turns a `[[targets]]` table into a configured `object_store`
//! GCS client; the [`Storage`] behaviour itself lives in `backend-objstore`.
//! Credentials come from `service_account_path` when given, otherwise from
//! Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud
//! ADC file, then the metadata server of a GCE/GKE host). `anonymous` exists for
//! emulators only. Credential material must never reach a log or an error
//! message: only the file's path is ever shown.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use backend_objstore::{
    bucket_target, client_options, deprecated_max_retries, no_retries, part_size, ErrorMap, Hints,
    ObjectStoreStorage, Settings,
};
use backup_core::storage::{Backend, ErrorKind, Storage, StorageError};
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use object_store::StaticCredentialProvider;
use serde::Deserialize;

/// `[[targets]]` settings of `kind = "gcs"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    pub bucket: String,
    /// Key prefix inside the bucket, so several repositories can share one.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Service URL; only for emulators such as fake-gcs-server
    /// (`http://127.0.0.1:4443`). A plain `http://` URL is allowed here because
    /// nobody serves real GCS over it.
    #[serde(default)]
    pub base_url: Option<String>,
    /// A service account key file (JSON). Without it, Application Default
    /// Credentials are used.
    #[serde(default)]
    pub service_account_path: Option<PathBuf>,
    /// Send unauthenticated requests: for emulators only.
    #[serde(default)]
    pub anonymous: bool,
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

const HINTS: Hints = Hints {
    credentials: "the service account (service_account_path, GOOGLE_APPLICATION_CREDENTIALS \
                  or the host's default account) and that it has roles/storage.objectCreator \
                  and roles/storage.objectViewer on this bucket (objectAdmin for prune)",
    location: "the bucket name and, for an emulator, base_url",
};

/// A GCS bucket (or a prefix inside one).
pub struct GcsStorage {
    inner: ObjectStoreStorage,
}

impl fmt::Debug for GcsStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GcsStorage")
            .field(&self.inner.describe())
            .finish()
    }
}

impl GcsStorage {
    /// Builds the client and reads the credentials file, if any. Nothing is
    /// sent to the service yet: a wrong bucket or missing role shows up, with a
    /// message saying what to check, on first use.
    pub fn open(config: &GcsConfig) -> Result<Self, StorageError> {
        let (target, prefix) = bucket_target("gs", &config.bucket, config.prefix.as_deref())?;
        let part_size = part_size(config.part_size_mib, &target, "GCS")?;
        let allow_http = config
            .base_url
            .as_deref()
            .is_some_and(|u| u.starts_with("http://"));

        let mut builder = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&config.bucket)
            .with_retry(no_retries())
            .with_client_options(client_options(allow_http));
        if let Some(url) = &config.base_url {
            builder = builder.with_base_url(url.trim_end_matches('/'));
        }
        if let Some(path) = &config.service_account_path {
            builder = builder.with_service_account_path(path.to_string_lossy());
        }
        if config.anonymous {
            // A static empty token keeps the builder from looking for ADC or a
            // metadata server that an emulator setup does not have.
            builder = builder.with_skip_signature(true).with_credentials(Arc::new(
                StaticCredentialProvider::new(GcpCredential {
                    bearer: String::new(),
                }),
            ));
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
                format!("invalid GCS settings: {}", mapped.message),
            )
        })?;

        Ok(GcsStorage {
            inner: ObjectStoreStorage::new(
                Arc::new(store),
                Settings {
                    target,
                    hints: HINTS,
                    prefix,
                    part_size,
                    upload_concurrency: config.upload_concurrency.unwrap_or(4).max(1),
                    conditional_create: true,
                },
            ),
        })
    }
}

backend_objstore::storage_via_inner!(GcsStorage);

impl Backend for GcsStorage {
    const KIND: &'static str = "gcs";
    const PATH_SETTINGS: &'static [&'static str] = &["service_account_path"];
    type Config = GcsConfig;

    fn open(config: &GcsConfig) -> Result<Self, StorageError> {
        GcsStorage::open(config)
    }

    fn deprecations(config: &GcsConfig) -> Vec<String> {
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
    fn unknown_settings_are_rejected() {
        let err =
            serde_json::from_str::<GcsConfig>(r#"{"bucket":"b","base-url":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("base-url"), "{err}");
    }

    #[test]
    fn describe_names_bucket_and_prefix() {
        let cfg = GcsConfig {
            bucket: "b".into(),
            prefix: Some("hosts/a/".into()),
            anonymous: true,
            ..Default::default()
        };
        assert_eq!(GcsStorage::open(&cfg).unwrap().describe(), "gs://b/hosts/a");
    }

    #[test]
    fn missing_service_account_file_is_reported() {
        let cfg = GcsConfig {
            bucket: "b".into(),
            service_account_path: Some("/nonexistent/offsite-sa.json".into()),
            ..Default::default()
        };
        let err = GcsStorage::open(&cfg).unwrap_err();
        assert!(err.message.contains("invalid GCS settings"), "{err}");
    }
}
