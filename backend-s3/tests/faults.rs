//! backend-s3 through the shared fault scenarios
//! (`backend_objstore::testing::faults`), each against a moto server of its
//! own behind a fault-injecting proxy.

mod common;

backend_objstore::fault_suite!(common::moto_target());
