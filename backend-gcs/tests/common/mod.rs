//! A fake-gcs-server on 127.0.0.1 for the tests, and targets pointing at it.

use backend_gcs::GcsConfig;
use backend_objstore::testing::{start_fake_gcs, FakeGcs};

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
