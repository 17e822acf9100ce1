//! backend-gcs through the shared fault scenarios
//! (`backend_objstore::testing::faults`), each against a fake-gcs-server of
//! its own (behind the XML write shim) and a fault-injecting proxy.

mod common;

use std::sync::Arc;

use backend_gcs::GcsStorage;
use backend_objstore::testing::faults::FaultTarget;
use backend_objstore::testing::FakeGcs;
use backup_core::storage::Storage;

struct Gcs(FakeGcs);

#[async_trait::async_trait]
impl FaultTarget for Gcs {
    fn port(&self) -> u16 {
        self.0.port
    }
    fn open(&self, endpoint: &str, bucket: &str, prefix: Option<&str>) -> Arc<dyn Storage> {
        let mut cfg = common::config(endpoint, prefix);
        cfg.bucket = bucket.into();
        Arc::new(GcsStorage::open(&cfg).unwrap())
    }
    fn bucket(&self) -> &'static str {
        common::BUCKET
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

backend_objstore::fault_suite!(async { Gcs(common::fake_gcs().await) });
