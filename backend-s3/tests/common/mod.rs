//! A moto S3 server on 127.0.0.1 for the tests, and targets pointing at it.

use backend_objstore::testing::{s3_open_multipart_uploads, start_moto, ChildServer};
use backend_s3::S3Config;

pub const BUCKET: &str = "offsite-test";

/// Starts moto and creates [`BUCKET`]; the server stops when dropped.
pub async fn moto() -> ChildServer {
    start_moto(BUCKET).await
}

/// A target on `endpoint` with dummy static credentials, so no credential
/// lookup (environment, profiles, instance metadata) ever leaves the machine.
pub fn config(endpoint: &str, prefix: Option<&str>) -> S3Config {
    S3Config {
        bucket: BUCKET.into(),
        prefix: prefix.map(str::to_string),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.to_string()),
        allow_http: true,
        access_key_id: Some("offsite-test-key".into()),
        secret_access_key: Some("offsite-test-secret".into()),
        part_size_mib: Some(5),
        ..Default::default()
    }
}

/// Multipart uploads that were started and neither completed nor aborted.
pub async fn open_multipart_uploads(port: u16) -> usize {
    s3_open_multipart_uploads(port, BUCKET).await
}
