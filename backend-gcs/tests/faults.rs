//! backend-gcs through the shared fault scenarios
//! (`backend_objstore::testing::faults`), each against a fake-gcs-server of
//! its own (behind the XML write shim) and a fault-injecting proxy.

mod common;

backend_objstore::fault_suite!(common::fake_gcs_target());
