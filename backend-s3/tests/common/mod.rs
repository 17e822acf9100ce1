//! A moto S3 server on 127.0.0.1 for the tests, and targets pointing at it.

use std::sync::Arc;

use backend_objstore::testing::faults::FaultTarget;
use backend_objstore::testing::{s3_open_multipart_uploads, start_moto, ChildServer};
use backend_s3::S3Config;
use backend_s3::S3Storage;
use backup_core::storage::Storage;

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

/// The server as a target of the shared scenarios.
pub struct Moto(pub ChildServer);

#[async_trait::async_trait]
impl FaultTarget for Moto {
    fn port(&self) -> u16 {
        self.0.port
    }
    fn open(&self, endpoint: &str, bucket: &str, prefix: Option<&str>) -> Arc<dyn Storage> {
        let mut cfg = config(endpoint, prefix);
        cfg.bucket = bucket.into();
        Arc::new(S3Storage::open(&cfg).unwrap())
    }
    fn bucket(&self) -> &'static str {
        BUCKET
    }
    fn scheme(&self) -> &'static str {
        "s3"
    }
    fn permission_hint(&self) -> &'static str {
        "s3:PutObject"
    }
    async fn open_uploads(&self) -> usize {
        open_multipart_uploads(self.0.port).await
    }
}

/// A fresh server, as a target of the shared fault and conformance scenarios.
pub async fn moto_target() -> Moto {
    Moto(moto().await)
}
