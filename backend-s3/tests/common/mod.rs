//! A moto S3 server on 127.0.0.1 for the tests, and targets pointing at it.

use backend_objstore::testing::{
    free_port, http_request, ChildServer, Method, StatusCode, INSTALL_HINT,
};
use backend_s3::S3Config;

pub const BUCKET: &str = "offsite-test";

/// Starts moto and creates [`BUCKET`]; the server stops when dropped.
pub async fn moto() -> ChildServer {
    let port = free_port();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let args: Vec<String> = [
        "-m",
        "moto.server",
        "-H",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = ChildServer::spawn("moto", &python, &args, port);
    let (status, body) = http_request(port, Method::PUT, &format!("/{BUCKET}"), "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "creating the test bucket in moto failed: {}; {INSTALL_HINT}",
        String::from_utf8_lossy(&body)
    );
    server
}

/// A target on `endpoint` with dummy static credentials, so no credential
/// lookup (environment, instance metadata) ever leaves the machine.
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
    let (status, body) = http_request(port, Method::GET, &format!("/{BUCKET}?uploads"), "").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body).matches("<Upload>").count()
}
