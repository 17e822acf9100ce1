//! A small W3C WebDriver client for the browser tests: Debian's chromium,
//! headless, driven by chromedriver on a free 127.0.0.1 port; both are
//! ended when the [`Browser`] is dropped, a failing test included. It
//! speaks the protocol's JSON over HTTP with reqwest and knows only the
//! commands the tests use. A missing browser or driver fails the test
//! with how to install them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Generous: the deadline guards against a hang, it does not time anything.
const DEADLINE: Duration = Duration::from_secs(120);

const INSTALL: &str =
    "install them: apt-get install chromium chromium-driver (scripts/install-test-deps.sh does)";

/// The key of an element reference in the protocol's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; dropping it closes the browser and ends the driver.
pub struct Browser {
    session: String,
    http: Http,
    // Dropped after the session is deleted (fields drop after `drop`).
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// An element of the page, by its WebDriver id.
pub struct Element(String);

/// chromedriver, in a process group of its own so that whatever it started
/// goes with it.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// The protocol's HTTP calls.
struct Http {
    base: String,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// A WebDriver error: its code (`no such element`, ...) and message.
struct Error {
    code: String,
    message: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Http {
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .timeout(DEADLINE);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (ok, reply) = self
            .rt
            .block_on(async {
                let r = req.send().await?;
                let ok = r.status().is_success();
                Ok::<_, reqwest::Error>((ok, r.json::<Value>().await?))
            })
            .map_err(|e| Error {
                code: "http".into(),
                message: e.to_string(),
            })?;
        let value = reply["value"].clone();
        if ok {
            return Ok(value);
        }
        Err(Error {
            code: value["error"].as_str().unwrap_or("?").to_string(),
            message: value["message"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// `name` on `$PATH`, or a failure saying how to install it.
fn installed(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: {INSTALL}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver and a headless chromium of `width` x `height`.
    pub fn start(width: u32, height: u32) -> Browser {
        let (chromium, chromedriver) = (installed("chromium"), installed("chromedriver"));
        let port = free_port();
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let driver = Driver(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display())),
        );
        let http = Http {
            base: format!("http://127.0.0.1:{port}"),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        };
        wait_ready(&http);
        let profile = tempfile::tempdir().unwrap();
        let session = new_session(&http, &chromium, profile.path(), width, height);
        Browser {
            session,
            http,
            _driver: driver,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Error> {
        let path = format!("/session/{}{path}", self.session);
        self.http.send(method, &path, body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    pub fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(json!({"url": url})));
    }

    /// The first element `css` selects, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        let body = json!({"using": "css selector", "value": css});
        match self.call("POST", "/element", Some(body)) {
            Ok(v) => Some(Element(v[ELEMENT].as_str().unwrap().to_string())),
            Err(e) if e.code == "no such element" => None,
            Err(e) => panic!("finding {css:?}: {e}"),
        }
    }

    /// Every element `css` selects.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({"using": "css selector", "value": css});
        let v = self.ok("POST", "/elements", Some(body));
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| Element(e[ELEMENT].as_str().unwrap().to_string()))
            .collect()
    }

    /// Waits until `css` selects an element whose text satisfies `done`;
    /// returns that text. `what` says what is awaited, for the failure.
    pub fn wait_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            if let Some(e) = self.find(css) {
                // The page may redraw it between the find and the read.
                if let Ok(v) = self.call("GET", &format!("/element/{}/text", e.0), None) {
                    last = v.as_str().unwrap_or_default().to_string();
                    if done(&last) {
                        return last;
                    }
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited in vain for {what} ({css}); its text: {last:?}; page:\n{}",
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn text(&self, e: &Element) -> String {
        let v = self.ok("GET", &format!("/element/{}/text", e.0), None);
        v.as_str().unwrap_or_default().to_string()
    }

    pub fn enabled(&self, e: &Element) -> bool {
        let v = self.ok("GET", &format!("/element/{}/enabled", e.0), None);
        v.as_bool().unwrap()
    }

    pub fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        let v = self.ok("GET", &format!("/element/{}/attribute/{name}", e.0), None);
        v.as_str().map(str::to_string)
    }

    pub fn click(&self, e: &Element) {
        self.ok("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    /// Clears the field and types `text` into it.
    pub fn type_into(&self, e: &Element, text: &str) {
        self.ok("POST", &format!("/element/{}/clear", e.0), Some(json!({})));
        let body = json!({"text": text});
        self.ok("POST", &format!("/element/{}/value", e.0), Some(body));
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn execute(&self, script: &str) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The visible text of the whole page, for failure messages.
    pub fn page_text(&self) -> String {
        match self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": "return document.body.innerText", "args": []})),
        ) {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) => format!("(cannot read the page: {e})"),
        }
    }

    /// A PNG of the whole page at `path`, beyond the window's height
    /// (chromium's DevTools command: W3C screenshots stop at the viewport).
    pub fn screenshot(&self, path: &Path) {
        let size = self
            .execute("const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]");
        let params = json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        });
        let body = json!({"cmd": "Page.captureScreenshot", "params": params});
        let shot = self.ok("POST", "/goog/cdp/execute", Some(body));
        let png = base64(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes chromium; the driver's process group is killed next.
        let _ = self
            .http
            .send("DELETE", &format!("/session/{}", self.session), None);
    }
}

/// Waits until chromedriver answers `/status` with `ready`.
fn wait_ready(http: &Http) {
    let start = Instant::now();
    loop {
        if let Ok(v) = http.send("GET", "/status", None) {
            if v["ready"] == true {
                return;
            }
        }
        assert!(start.elapsed() < DEADLINE, "chromedriver did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A session of headless chromium with a profile of its own.
fn new_session(http: &Http, chromium: &Path, profile: &Path, width: u32, height: u32) -> String {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
        "--lang=en-GB".into(),
    ];
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": chromium, "args": args},
    }}});
    let v = http
        .send("POST", "/session", Some(caps))
        .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));
    v["sessionId"].as_str().unwrap().to_string()
}

/// Standard base64 (the screenshot's encoding) decoded.
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c:?}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | u32::from(*d) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
