//! An in-memory emulation of the parts of B2's native API that offsite uses,
//! served by wiremock on 127.0.0.1, for tests that must never reach the real
//! service.
//!
//! It keeps B2's rules that a client can get wrong: account tokens that expire,
//! upload URLs with their own tokens, SHA-1 checks of every upload and part
//! (`do_not_verify` is accepted, as B2 does, but counted), large files of at
//! least two parts whose parts (all but the last) are at least 5 MB, versions
//! per name with hide markers, paginated listings, 404 JSON bodies. Faults are
//! injected per operation. It must never be used outside tests.

// Each test binary uses a different part of the emulator.
#![allow(dead_code)]
// Handlers return `Result<response, response>` only to use `?` for early error
// answers; both sides are the same large type, so boxing would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use backend_b2::B2Config;
use bytes::Bytes;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const BUCKET: &str = "offsite-test";
pub const KEY_ID: &str = "0012345test";
pub const KEY: &str = "K001-emulator-secret";
const MIN_PART: usize = 5_000_000;

/// One running emulator.
pub struct B2Emulator {
    pub server: MockServer,
    state: Arc<Mutex<State>>,
}

struct Version {
    file_id: String,
    name: String,
    action: &'static str,
    data: Bytes,
    sha1: String,
    timestamp: u64,
}

struct LargeFile {
    name: String,
    parts: BTreeMap<u32, (Bytes, String)>,
}

struct UploadUrl {
    token: String,
    /// The large file a part URL belongs to; `None` for file upload URLs.
    large_file: Option<String>,
}

struct Fault {
    op: String,
    status: u16,
    code: String,
    remaining: usize,
}

#[derive(Default)]
struct State {
    uri: String,
    next_id: u64,
    live_tokens: HashSet<String>,
    expired_tokens: HashSet<String>,
    upload_urls: HashMap<String, UploadUrl>,
    versions: Vec<Version>,
    large: HashMap<String, LargeFile>,
    calls: HashMap<String, usize>,
    faults: Vec<Fault>,
    sha1_checked: usize,
    sha1_unverified: usize,
}

const BUCKET_ID: &str = "bkt000emulated";
const ACCOUNT_ID: &str = "acc000emulated";

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn b2_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"status": status, "code": code, "message": message}))
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn file_json(v: &Version) -> Value {
    json!({
        "accountId": ACCOUNT_ID,
        "bucketId": BUCKET_ID,
        "fileId": v.file_id,
        "fileName": v.name,
        "action": v.action,
        "contentLength": v.data.len(),
        "contentSha1": v.sha1,
        "contentType": "application/octet-stream",
        "fileInfo": {},
        "uploadTimestamp": v.timestamp,
    })
}

impl State {
    fn new_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        // Fixed width, so ids sort in creation order as strings.
        format!("4_z{BUCKET_ID}_{kind}{:012}", self.next_id)
    }

    /// Newest version of every name, in name order, as B2 resolves "the file".
    fn latest(&self) -> BTreeMap<&str, &Version> {
        let mut out: BTreeMap<&str, &Version> = BTreeMap::new();
        for v in &self.versions {
            // Later in `versions` means uploaded later, also within one millisecond.
            out.insert(&v.name, v);
        }
        out
    }

    fn check_account(&self, req: &Request) -> Result<(), ResponseTemplate> {
        match header(req, "authorization") {
            Some(t) if self.live_tokens.contains(t) => Ok(()),
            Some(t) if self.expired_tokens.contains(t) => Err(b2_error(
                401,
                "expired_auth_token",
                "Authorization token has expired",
            )),
            _ => Err(b2_error(
                401,
                "bad_auth_token",
                "Invalid authorization token",
            )),
        }
    }

    fn check_upload_url(&self, req: &Request, id: &str) -> Result<&UploadUrl, ResponseTemplate> {
        let Some(url) = self.upload_urls.get(id) else {
            return Err(b2_error(400, "bad_request", "no such upload url"));
        };
        if header(req, "authorization") != Some(url.token.as_str()) {
            return Err(b2_error(401, "bad_auth_token", "Invalid upload token"));
        }
        Ok(url)
    }

    /// Checks `X-Bz-Content-Sha1` against `body`, as B2 does.
    fn check_sha1(&mut self, req: &Request) -> Result<String, ResponseTemplate> {
        let actual = hex::encode(Sha1::digest(&req.body));
        match header(req, "x-bz-content-sha1") {
            Some("do_not_verify") => {
                self.sha1_unverified += 1;
                Ok(actual)
            }
            Some(sent) if sent.eq_ignore_ascii_case(&actual) => {
                self.sha1_checked += 1;
                Ok(actual)
            }
            Some(_) => Err(b2_error(
                400,
                "bad_request",
                "Sha1 did not match data received",
            )),
            None => Err(b2_error(
                400,
                "bad_request",
                "Missing header: X-Bz-Content-Sha1",
            )),
        }
    }

    fn handle(&mut self, req: &Request) -> ResponseTemplate {
        let path = req.url.path().to_string();
        let op = if let Some(op) = path.strip_prefix("/b2api/v2/") {
            op.to_string()
        } else if path.starts_with("/upload/") {
            "b2_upload_file".to_string()
        } else if path.starts_with("/part/") {
            "b2_upload_part".to_string()
        } else if path.starts_with("/file/") {
            "b2_download_file_by_name".to_string()
        } else {
            return b2_error(404, "not_found", "no such endpoint");
        };
        *self.calls.entry(op.clone()).or_default() += 1;
        if let Some(fault) = self
            .faults
            .iter_mut()
            .find(|f| f.op == op && f.remaining > 0)
        {
            fault.remaining -= 1;
            return b2_error(fault.status, &fault.code, "injected by the test");
        }
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let result = match op.as_str() {
            "b2_authorize_account" => self.authorize(req),
            "b2_upload_file" => self.upload_file(req, &path["/upload/".len()..]),
            "b2_upload_part" => self.upload_part(req, &path["/part/".len()..]),
            "b2_download_file_by_name" => self.download(req, &path["/file/".len()..]),
            _ => self.check_account(req).and_then(|()| self.api(&op, &body)),
        };
        result.unwrap_or_else(|e| e)
    }

    fn authorize(&mut self, req: &Request) -> Result<ResponseTemplate, ResponseTemplate> {
        let expected = format!("Basic {}", base64(format!("{KEY_ID}:{KEY}").as_bytes()));
        if header(req, "authorization") != Some(expected.as_str()) {
            return Err(b2_error(401, "unauthorized", "invalid application key"));
        }
        let token = format!("acct-token-{}", self.new_id("t"));
        self.live_tokens.insert(token.clone());
        Ok(ResponseTemplate::new(200).set_body_json(json!({
            "accountId": ACCOUNT_ID,
            "authorizationToken": token,
            "apiUrl": self.uri,
            "downloadUrl": self.uri,
            "recommendedPartSize": 100_000_000,
            "absoluteMinimumPartSize": MIN_PART,
            "allowed": {
                "capabilities": ["listBuckets", "listFiles", "readFiles", "writeFiles", "deleteFiles"],
                "bucketId": null,
                "bucketName": null,
                "namePrefix": null,
            },
        })))
    }

    fn api(&mut self, op: &str, body: &Value) -> Result<ResponseTemplate, ResponseTemplate> {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let bad = |m: &str| b2_error(400, "bad_request", m);
        let ok = |v: Value| Ok(ResponseTemplate::new(200).set_body_json(v));
        let bucket_ok = || s("bucketId").as_deref() == Some(BUCKET_ID);
        match op {
            "b2_list_buckets" => {
                let buckets: Vec<Value> = if s("bucketName").as_deref().is_none_or(|n| n == BUCKET)
                {
                    vec![json!({"accountId": ACCOUNT_ID, "bucketId": BUCKET_ID,
                                "bucketName": BUCKET, "bucketType": "allPrivate"})]
                } else {
                    vec![]
                };
                ok(json!({ "buckets": buckets }))
            }
            "b2_get_upload_url" => {
                if !bucket_ok() {
                    return Err(bad("bucketId"));
                }
                let id = self.new_id("u");
                let token = format!("upload-token-{id}");
                self.upload_urls.insert(
                    id.clone(),
                    UploadUrl {
                        token: token.clone(),
                        large_file: None,
                    },
                );
                ok(json!({"bucketId": BUCKET_ID,
                          "uploadUrl": format!("{}/upload/{id}", self.uri),
                          "authorizationToken": token}))
            }
            "b2_start_large_file" => {
                let (Some(name), true) = (s("fileName"), bucket_ok()) else {
                    return Err(bad("fileName and bucketId required"));
                };
                let file_id = self.new_id("f");
                self.large.insert(
                    file_id.clone(),
                    LargeFile {
                        name: name.clone(),
                        parts: BTreeMap::new(),
                    },
                );
                ok(
                    json!({"fileId": file_id, "fileName": name, "bucketId": BUCKET_ID,
                          "action": "start", "uploadTimestamp": now_millis()}),
                )
            }
            "b2_get_upload_part_url" => {
                let file_id = s("fileId").unwrap_or_default();
                if !self.large.contains_key(&file_id) {
                    return Err(bad("no such unfinished large file"));
                }
                let id = self.new_id("p");
                let token = format!("part-token-{id}");
                self.upload_urls.insert(
                    id.clone(),
                    UploadUrl {
                        token: token.clone(),
                        large_file: Some(file_id.clone()),
                    },
                );
                ok(json!({"fileId": file_id,
                          "uploadUrl": format!("{}/part/{id}", self.uri),
                          "authorizationToken": token}))
            }
            "b2_finish_large_file" => self.finish_large_file(body),
            "b2_cancel_large_file" => {
                let file_id = s("fileId").unwrap_or_default();
                match self.large.remove(&file_id) {
                    Some(f) => ok(json!({"fileId": file_id, "fileName": f.name,
                                         "accountId": ACCOUNT_ID, "bucketId": BUCKET_ID})),
                    None => Err(bad("no such unfinished large file")),
                }
            }
            "b2_list_file_names" => {
                let prefix = s("prefix").unwrap_or_default();
                let start = s("startFileName").unwrap_or_default();
                let max = body
                    .get("maxFileCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(100) as usize;
                if max == 0 || max > 10_000 {
                    return Err(bad("maxFileCount out of range"));
                }
                let visible: Vec<&Version> = self
                    .latest()
                    .into_values()
                    .filter(|v| v.action == "upload")
                    .filter(|v| v.name.starts_with(&prefix) && v.name >= start)
                    .collect();
                let next = visible.get(max).map(|v| v.name.clone());
                let files: Vec<Value> = visible.iter().take(max).map(|v| file_json(v)).collect();
                ok(json!({"files": files, "nextFileName": next}))
            }
            "b2_list_file_versions" => {
                let prefix = s("prefix").unwrap_or_default();
                let start = s("startFileName").unwrap_or_default();
                let start_id = s("startFileId");
                let max = body
                    .get("maxFileCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(100) as usize;
                // B2 lists unfinished large files here too, as "start" entries.
                let starts: Vec<Version> = self
                    .large
                    .iter()
                    .map(|(id, f)| Version {
                        file_id: id.clone(),
                        name: f.name.clone(),
                        action: "start",
                        data: Bytes::new(),
                        sha1: "none".to_string(),
                        timestamp: now_millis(),
                    })
                    .collect();
                // Name order, newest version first within a name.
                let mut all: Vec<&Version> = starts
                    .iter()
                    .chain(self.versions.iter().rev())
                    .filter(|v| v.name.starts_with(&prefix) && v.name >= start)
                    .collect();
                all.sort_by(|a, b| a.name.cmp(&b.name));
                let from = match &start_id {
                    Some(id) => all.iter().position(|v| &v.file_id == id).unwrap_or(0),
                    None => 0,
                };
                let page: Vec<&Version> = all[from..].iter().take(max).copied().collect();
                let next = all.get(from + max);
                ok(json!({
                    "files": page.iter().map(|v| file_json(v)).collect::<Vec<_>>(),
                    "nextFileName": next.map(|v| v.name.clone()),
                    "nextFileId": next.map(|v| v.file_id.clone()),
                }))
            }
            "b2_delete_file_version" => {
                let (name, id) = (s("fileName").unwrap_or_default(), s("fileId"));
                let found = self
                    .versions
                    .iter()
                    .position(|v| Some(&v.file_id) == id.as_ref() && v.name == name);
                match found {
                    Some(i) => {
                        self.versions.remove(i);
                        ok(json!({"fileId": id, "fileName": name}))
                    }
                    None => Err(b2_error(
                        400,
                        "file_not_present",
                        &format!("File not present: {name}"),
                    )),
                }
            }
            _ => Err(bad("operation not emulated")),
        }
    }

    fn upload_file(
        &mut self,
        req: &Request,
        url_id: &str,
    ) -> Result<ResponseTemplate, ResponseTemplate> {
        if self.check_upload_url(req, url_id)?.large_file.is_some() {
            return Err(b2_error(
                400,
                "bad_request",
                "part URL used for a file upload",
            ));
        }
        let Some(name) = header(req, "x-bz-file-name").map(str::to_string) else {
            return Err(b2_error(
                400,
                "bad_request",
                "Missing header: X-Bz-File-Name",
            ));
        };
        let sha1 = self.check_sha1(req)?;
        let version = Version {
            file_id: self.new_id("f"),
            name,
            action: "upload",
            data: Bytes::from(req.body.clone()),
            sha1,
            timestamp: now_millis(),
        };
        let reply = file_json(&version);
        self.versions.push(version);
        Ok(ResponseTemplate::new(200).set_body_json(reply))
    }

    fn upload_part(
        &mut self,
        req: &Request,
        url_id: &str,
    ) -> Result<ResponseTemplate, ResponseTemplate> {
        let Some(file_id) = self.check_upload_url(req, url_id)?.large_file.clone() else {
            return Err(b2_error(
                400,
                "bad_request",
                "file URL used for a part upload",
            ));
        };
        let number: u32 = header(req, "x-bz-part-number")
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| b2_error(400, "bad_request", "bad X-Bz-Part-Number"))?;
        let sha1 = self.check_sha1(req)?;
        let len = req.body.len();
        let Some(file) = self.large.get_mut(&file_id) else {
            return Err(b2_error(
                400,
                "bad_request",
                "large file is no longer unfinished",
            ));
        };
        file.parts
            .insert(number, (Bytes::from(req.body.clone()), sha1.clone()));
        Ok(ResponseTemplate::new(200).set_body_json(json!({
            "fileId": file_id, "partNumber": number,
            "contentLength": len, "contentSha1": sha1,
        })))
    }

    fn finish_large_file(&mut self, body: &Value) -> Result<ResponseTemplate, ResponseTemplate> {
        let bad = |m: &str| b2_error(400, "bad_request", m);
        let file_id = body
            .get("fileId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let sha1s: Vec<String> = body
            .get("partSha1Array")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let Some(file) = self.large.get(&file_id) else {
            return Err(bad("no such unfinished large file"));
        };
        if file.parts.len() < 2 {
            return Err(bad("large files must have at least 2 parts"));
        }
        if sha1s.len() != file.parts.len() {
            return Err(bad("partSha1Array does not match the uploaded parts"));
        }
        let mut data = Vec::new();
        for (i, (number, (part, sha1))) in file.parts.iter().enumerate() {
            if *number as usize != i + 1 {
                return Err(bad(&format!("part number {} is missing", i + 1)));
            }
            if &sha1s[i] != sha1 {
                return Err(bad(&format!(
                    "partSha1Array[{i}] does not match part {number}"
                )));
            }
            if i + 1 < file.parts.len() && part.len() < MIN_PART {
                return Err(bad(&format!(
                    "part {number} is smaller than {MIN_PART} bytes"
                )));
            }
            data.extend_from_slice(part);
        }
        let file = self.large.remove(&file_id).expect("checked above");
        let version = Version {
            file_id,
            name: file.name,
            action: "upload",
            sha1: "none".to_string(),
            data: Bytes::from(data),
            timestamp: now_millis(),
        };
        let reply = file_json(&version);
        self.versions.push(version);
        Ok(ResponseTemplate::new(200).set_body_json(reply))
    }

    fn download(&self, req: &Request, rest: &str) -> Result<ResponseTemplate, ResponseTemplate> {
        self.check_account(req)?;
        let Some((bucket, name)) = rest.split_once('/') else {
            return Err(b2_error(400, "bad_request", "no file name"));
        };
        let found = self
            .latest()
            .get(name)
            .filter(|v| bucket == BUCKET && v.action == "upload")
            .map(|v| (v.data.clone(), v.file_id.clone(), v.sha1.clone()));
        let Some((data, file_id, sha1)) = found else {
            return Err(b2_error(
                404,
                "not_found",
                &format!("File not present: {name}"),
            ));
        };
        let found = ResponseTemplate::new(200)
            .insert_header("x-bz-file-id", file_id.as_str())
            .insert_header("x-bz-file-name", name)
            .insert_header("x-bz-content-sha1", sha1.as_str());
        if req.method == wiremock::http::Method::HEAD {
            // B2 answers HEAD with the size the GET body would have.
            return Ok(found.insert_header("content-length", data.len().to_string().as_str()));
        }
        Ok(found.set_body_raw(data.to_vec(), "application/octet-stream"))
    }
}

struct Responder(Arc<Mutex<State>>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.lock().expect("emulator state").handle(request)
    }
}

impl B2Emulator {
    pub async fn start() -> Self {
        let server = MockServer::builder()
            .disable_request_recording()
            .start()
            .await;
        let state = Arc::new(Mutex::new(State {
            uri: server.uri(),
            ..State::default()
        }));
        Mock::given(wiremock::matchers::any())
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        B2Emulator { server, state }
    }

    /// A target on this emulator with 5 MiB parts, about B2's smallest.
    pub fn config(&self) -> B2Config {
        serde_json::from_value(json!({
            "bucket": BUCKET,
            "prefix": "repo",
            "application_key_id": KEY_ID,
            "application_key": KEY,
            "api_url": self.server.uri(),
            "part_size_mib": 5,
        }))
        .expect("valid config")
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().expect("emulator state"))
    }

    /// How often `op` (a B2 operation name) was called.
    pub fn calls(&self, op: &str) -> usize {
        self.with(|s| s.calls.get(op).copied().unwrap_or(0))
    }

    /// The next `times` calls of `op` fail with `status` and B2 error `code`.
    pub fn fail(&self, op: &str, status: u16, code: &str, times: usize) {
        self.with(|s| {
            s.faults.push(Fault {
                op: op.to_string(),
                status,
                code: code.to_string(),
                remaining: times,
            })
        });
    }

    /// Every account token handed out so far expires now.
    pub fn expire_tokens(&self) {
        self.with(|s| {
            let live: Vec<String> = s.live_tokens.drain().collect();
            s.expired_tokens.extend(live);
        });
    }

    pub fn unfinished_large_files(&self) -> usize {
        self.with(|s| s.large.len())
    }

    /// Versions (uploads and hide markers) stored under the full file name.
    pub fn versions_of(&self, name: &str) -> usize {
        self.with(|s| s.versions.iter().filter(|v| v.name == name).count())
    }

    /// (uploads whose SHA-1 was checked, uploads sent with `do_not_verify`).
    pub fn sha1_counts(&self) -> (usize, usize) {
        self.with(|s| (s.sha1_checked, s.sha1_unverified))
    }

    /// Adds a hide marker for `name`, as `b2_hide_file` or a lifecycle rule would.
    pub fn hide(&self, name: &str) {
        self.with(|s| {
            let version = Version {
                file_id: s.new_id("h"),
                name: name.to_string(),
                action: "hide",
                data: Bytes::new(),
                sha1: "none".to_string(),
                timestamp: now_millis(),
            };
            s.versions.push(version);
        });
    }
}
