//! A fake-gcs-server on 127.0.0.1 for the tests, and targets pointing at it.

use std::sync::Arc;

use backend_gcs::GcsConfig;
use backend_gcs::GcsStorage;
use backend_objstore::testing::faults::FaultTarget;
use backend_objstore::testing::{start_fake_gcs, FakeGcs};
use backup_core::storage::Storage;

pub const BUCKET: &str = "offsite-test";

/// Starts fake-gcs-server with [`BUCKET`] behind the write shim; both stop
/// when dropped.
pub async fn fake_gcs() -> FakeGcs {
    start_fake_gcs(BUCKET).await
}

/// An anonymous target on `base_url`: no credential lookup (ADC files, the
/// metadata server) ever happens.
pub fn config(base_url: &str, prefix: Option<&str>) -> GcsConfig {
    GcsConfig {
        bucket: BUCKET.into(),
        prefix: prefix.map(str::to_string),
        base_url: Some(base_url.to_string()),
        anonymous: true,
        part_size_mib: Some(5),
        ..Default::default()
    }
}

/// The server as a target of the shared scenarios.
pub struct Gcs(pub FakeGcs);

#[async_trait::async_trait]
impl FaultTarget for Gcs {
    fn port(&self) -> u16 {
        self.0.port
    }
    fn open(&self, endpoint: &str, bucket: &str, prefix: Option<&str>) -> Arc<dyn Storage> {
        let mut cfg = config(endpoint, prefix);
        cfg.bucket = bucket.into();
        Arc::new(GcsStorage::open(&cfg).unwrap())
    }
    fn bucket(&self) -> &'static str {
        BUCKET
    }
    fn scheme(&self) -> &'static str {
        "gs"
    }
    fn permission_hint(&self) -> &'static str {
        "objectCreator"
    }
    async fn open_uploads(&self) -> usize {
        self.0.open_uploads()
    }
}

/// A fresh server, as a target of the shared fault and conformance scenarios.
pub async fn fake_gcs_target() -> Gcs {
    Gcs(fake_gcs().await)
}
