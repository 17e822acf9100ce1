//! backend-s3 through the shared fault scenarios
//! (`backend_objstore::testing::faults`), each against a moto server of its
//! own behind a fault-injecting proxy.

mod common;

use std::sync::Arc;

use backend_objstore::testing::faults::FaultTarget;
use backend_objstore::testing::ChildServer;
use backend_s3::S3Storage;
use backup_core::storage::Storage;

struct Moto(ChildServer);

#[async_trait::async_trait]
impl FaultTarget for Moto {
    fn port(&self) -> u16 {
        self.0.port
    }
    fn open(&self, endpoint: &str, bucket: &str, prefix: Option<&str>) -> Arc<dyn Storage> {
        let mut cfg = common::config(endpoint, prefix);
        cfg.bucket = bucket.into();
        Arc::new(S3Storage::open(&cfg).unwrap())
    }
    fn bucket(&self) -> &'static str {
        common::BUCKET
    }
    fn scheme(&self) -> &'static str {
        "s3"
    }
    fn permission_hint(&self) -> &'static str {
        "s3:PutObject"
    }
    async fn open_uploads(&self) -> usize {
        common::open_multipart_uploads(self.0.port).await
    }
}

backend_objstore::fault_suite!(async { Moto(common::moto().await) });
