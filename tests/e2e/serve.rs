//! `offsite serve`: the JSON API over real HTTP on a free 127.0.0.1 port,
//! its tokens and scopes, its jobs, its answers to bad input, and its
//! shutdown on SIGTERM; `serve hash-token` and the `[serve]` config checks.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::*;

mod dashboard;

/// Generous: the deadline guards against a hang, it does not time anything.
pub(crate) const DEADLINE: Duration = Duration::from_secs(180);

/// A token made by `offsite serve hash-token`: (token, its `sha256 = ...` line).
pub(crate) fn new_token() -> (String, String) {
    let out = offsite_command()
        .args(["serve", "hash-token"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    (lines[0].to_string(), lines[1].to_string())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `offsite serve` with a read-only token, a read+operate one
/// and a read+restore one.
pub(crate) struct Server {
    child: Child,
    pub base: String,
    pub read: String,
    pub ops: String,
    pub restorer: String,
    pub rt: tokio::runtime::Runtime,
    pub client: reqwest::Client,
}

/// What a request got: status and body (JSON when it is JSON).
pub(crate) struct Reply {
    pub status: u16,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        json(&self.text)
    }

    /// The message of an error answer.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// How a test server is started besides its tokens.
pub(crate) struct Launch<'a> {
    /// `serve` or `daemon`.
    pub command: &'a str,
    /// More `[serve]` settings, e.g. `restore_in_place = true`.
    pub settings: &'a str,
    /// Environment variables of the server; with `OFFSITE_SERVE__LISTEN`
    /// the server is reached there (the config names another port).
    pub vars: &'a [(&'a str, &'a str)],
}

impl Server {
    /// Appends `[serve]` to `env`'s config and starts `offsite serve`.
    pub fn start(env: &Env) -> Server {
        Server::start_with(env, "serve")
    }

    /// Appends `[serve]` to `env`'s config and starts `offsite COMMAND`.
    pub fn start_with(env: &Env, command: &str) -> Server {
        Server::launch(
            env,
            &Launch {
                command,
                settings: "",
                vars: &[],
            },
        )
    }

    /// Writes `[serve]` at the end of `env`'s config (replacing one an
    /// earlier launch wrote) and starts the server as `how` says.
    pub fn launch(env: &Env, how: &Launch) -> Server {
        let (read, read_hash) = new_token();
        let (ops, ops_hash) = new_token();
        let (restorer, restorer_hash) = new_token();
        let port = free_port();
        let config = env.dir.path().join("offsite.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        if let Some(at) = text.find("\n[serve]\n") {
            text.truncate(at);
        }
        text.push_str(&format!(
            "\n[serve]\nlisten = \"127.0.0.1:{port}\"\n{}\n\
             [[serve.tokens]]\nname = \"ro\"\nscopes = [\"read\"]\n{read_hash}\n\
             [[serve.tokens]]\nname = \"ops\"\nscopes = [\"read\", \"operate\"]\n{ops_hash}\n\
             [[serve.tokens]]\nname = \"restorer\"\nscopes = [\"read\", \"restore\"]\n{restorer_hash}\n",
            how.settings
        ));
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(env.dir.path().join("serve.log")).unwrap();
        let child = offsite_command()
            .arg("--config")
            .arg(&config)
            .arg(how.command)
            .envs(how.vars.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let listen = how
            .vars
            .iter()
            .find(|(k, _)| *k == "OFFSITE_SERVE__LISTEN")
            .map_or(format!("127.0.0.1:{port}"), |(_, v)| v.to_string());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut server = Server {
            child,
            base: format!("http://{listen}"),
            read,
            ops,
            restorer,
            rt,
            client: reqwest::Client::new(),
        };
        server.wait_healthy(env);
        server
    }

    fn wait_healthy(&mut self, env: &Env) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("offsite serve exited ({status}); log:\n{}", log(env));
            }
            if let Ok(r) = self.try_send("GET", "/healthz", None, None) {
                assert_eq!(r.status, 200, "{}", r.text);
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no /healthz; log:\n{}",
                log(env)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> reqwest::Result<Reply> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method.parse().unwrap(), url)
            .timeout(Duration::from_secs(60));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.rt.block_on(async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            Ok(Reply {
                status,
                text: r.text().await?,
            })
        })
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.try_send("GET", path, token, None).unwrap()
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        self.try_send("POST", path, token, Some(body.to_string()))
            .unwrap()
    }

    /// Polls a job until it is no longer running; returns it.
    pub fn finished_job(&self, id: &str, env: &Env) -> Value {
        let start = Instant::now();
        loop {
            let r = self.get(&format!("/api/v1/jobs/{id}"), Some(&self.read));
            assert_eq!(r.status, 200, "{}", r.text);
            let job = r.json();
            if job["state"] != "running" {
                return job;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "job {id} hangs; log:\n{}",
                log(env)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit code.
    pub fn stop(mut self, env: &Env) -> i32 {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("offsite serve did not exit; log:\n{}", log(env));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn log(env: &Env) -> String {
    std::fs::read_to_string(env.dir.path().join("serve.log")).unwrap_or_default()
}

/// An environment whose backups take two seconds at least (a `before`
/// hook sleeps), so that a job is seen running.
pub(crate) fn slow_env() -> Env {
    let env = Env::with_sources(|_| "before = \"sleep 2\"\n".into());
    env.make_db(&env.db(), 300);
    env
}

#[test]
fn serve_answers_reads_with_the_cli_s_data_and_checks_tokens_and_scopes() {
    let env = Env::new();
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    let cli = snapshots(&env);
    let server = Server::start(&env);
    let (read, ops) = (Some(server.read.as_str()), Some(server.ops.as_str()));

    for path in [
        "/api/v1/status",
        "/api/v1/snapshots",
        "/metrics",
        "/api/v1/jobs",
    ] {
        let r = server.get(path, None);
        assert_eq!(r.status, 401, "{path}: {}", r.text);
        assert!(r.json()["error"].as_str().unwrap().contains("bearer"));
    }
    assert_eq!(
        server.get("/api/v1/status", Some("not-a-token")).status,
        401
    );
    let r = server.post("/api/v1/jobs", read, r#"{"kind": "backup"}"#);
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.json()["error"].as_str().unwrap().contains("operate"));

    let sources = server.get("/api/v1/sources", read).json();
    assert_eq!(sources[0]["name"], "app");
    assert_eq!(sources[0]["kind"], "sqlite");
    let targets = server.get("/api/v1/targets", read).json();
    assert_eq!(
        targets,
        serde_json::json!([{"name": "local", "kind": "local"}])
    );

    let listed = server.get("/api/v1/snapshots", read).json();
    assert_eq!(listed, Value::Array(cli.clone()));
    let status = server.get("/api/v1/status", read).json();
    assert_eq!(status["totalBackups"], 1, "{status}");
    assert_eq!(status["lastBackupTime"], cli[0]["time"]);
    assert!(
        status["formattedTotalSize"]
            .as_str()
            .unwrap()
            .ends_with("KiB"),
        "{status}"
    );
    assert!(status["totalSize"].as_u64().unwrap() > 0);
    assert_eq!(status["logicalSize"], cli[0]["size"]);
    assert_eq!(status["isHealthy"], true);
    assert_eq!(status["breaches"], serde_json::json!([]));
    assert!(status["newestAgeSeconds"].as_u64().unwrap() < 600);

    let r = server.get("/metrics", read);
    assert_eq!(r.status, 200);
    assert!(
        r.text
            .lines()
            .any(|l| l == "offsite_snapshots{source=\"app\",target=\"local\"} 1"),
        "{}",
        r.text
    );
    // 200 status requests at once all get their answer.
    let all = server.rt.block_on(async {
        let requests = (0..200).map(|_| {
            server
                .client
                .get(format!("{}/api/v1/status", server.base))
                .bearer_auth(&server.read)
                .timeout(Duration::from_secs(120))
                .send()
        });
        futures::future::join_all(requests).await
    });
    for r in all {
        assert_eq!(r.unwrap().status(), 200);
    }
    // The operate token reads too (it has both scopes).
    assert_eq!(server.get("/api/v1/status", ops).status, 200);
    assert_eq!(server.get("/healthz", None).json()["ok"], true);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn serve_runs_backup_and_restore_test_jobs_one_per_kind_and_source() {
    let env = slow_env();
    env.ok(&["backup"]);
    let first = snapshots(&env)[0].clone();
    let server = Server::start(&env);
    let (read, ops) = (Some(server.read.as_str()), Some(server.ops.as_str()));

    let r = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "backup", "source": "app"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // The backup sleeps two seconds in its hook: it still runs.
    let again = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "backup", "source": "app"}"#,
    );
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.json()["already_running"], true);
    let listed = server.get("/api/v1/jobs", read).json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "running");

    let job = server.finished_job(&id, &env);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "backup");
    let made = &job["result"][0];
    assert_eq!(made["ok"], true, "{job}");
    let new_id = made["snapshot"]["id"].as_str().unwrap();
    let all = server.get("/api/v1/snapshots", read).json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    assert_eq!(all[0]["id"], new_id);
    let since = all[0]["time"].as_str().unwrap();
    let recent = server
        .get(&format!("/api/v1/snapshots?source=app&since={since}"), read)
        .json();
    assert_eq!(recent.as_array().unwrap().len(), 1, "{recent}");
    assert_eq!(recent[0]["id"], new_id);
    let until = first["time"].as_str().unwrap();
    let older = server
        .get(
            &format!("/api/v1/snapshots?target=local&until={until}"),
            read,
        )
        .json();
    assert_eq!(older.as_array().unwrap().len(), 1, "{older}");
    assert_eq!(older[0]["id"], first["id"]);

    let body = format!(
        r#"{{"kind": "restore-test", "snapshot": "{}"}}"#,
        first["id"].as_str().unwrap()
    );
    let r = server.post("/api/v1/jobs", ops, &body);
    assert_eq!(r.status, 202, "{}", r.text);
    let job = server.finished_job(r.json()["id"].as_str().unwrap(), &env);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["test"], true);
    assert_eq!(job["result"]["verified"], true);
    assert_eq!(job["result"]["snapshot"]["id"], first["id"]);

    // A snapshot that is not there: the job fails and says why.
    let r = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "restore-test", "snapshot": "20200101T000000Z-00000000"}"#,
    );
    let job = server.finished_job(r.json()["id"].as_str().unwrap(), &env);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("20200101T000000Z-00000000"),
        "{job}"
    );

    // SIGTERM during a backup lets it finish: its snapshot is there.
    let r = server.post("/api/v1/jobs", ops, r#"{"kind": "backup"}"#);
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
    let text = log(&env);
    assert!(text.contains("SIGTERM received"), "{text}");
    assert_eq!(snapshots(&env).len(), 3, "log:\n{text}");
}

#[test]
fn serve_runs_prune_verify_and_drill_jobs_with_the_cli_s_reports() {
    let env = Env::with_sources(|_| String::new());
    env.make_db(&env.db(), 100);
    let config = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[retention]\nkeep_last = 1\n")).unwrap();
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let server = Server::start(&env);
    let ops = Some(server.ops.as_str());
    let run = |body: &str| {
        let r = server.post("/api/v1/jobs", ops, body);
        assert_eq!(r.status, 202, "{body}: {}", r.text);
        server.finished_job(r.json()["id"].as_str().unwrap(), &env)
    };

    let job = run(r#"{"kind": "prune", "dry_run": true}"#);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["dry_run"], true);
    assert_eq!(job["result"][0]["dry_run"], true, "{job}");
    assert_eq!(job["result"][0]["removed"], 1, "{job}");
    assert_eq!(snapshots(&env).len(), 2);
    let job = run(r#"{"kind": "prune", "source": "app"}"#);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"][0]["removed"], 1, "{job}");
    assert_eq!(snapshots(&env).len(), 1);

    let job = run(r#"{"kind": "verify"}"#);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"][0]["ok"], true, "{job}");
    assert_eq!(job["result"][0]["snapshots"].as_array().unwrap().len(), 1);

    let job = run(r#"{"kind": "drill", "source": "app"}"#);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["passed"], true, "{job}");
    assert_eq!(job["result"]["drills"][0]["target"], "local", "{job}");
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn daemon_with_a_serve_section_serves_the_api_and_stops_on_sigterm() {
    let env = Env::with_sources(|_| "[schedule]\nstatus = \"0 3 * * *\"\n".into());
    env.make_db(&env.db(), 10);
    env.ok(&["backup"]);
    let server = Server::start_with(&env, "daemon");
    let status = server.get("/api/v1/status", Some(&server.read)).json();
    assert_eq!(status["totalBackups"], 1, "{status}");
    assert_eq!(server.get("/api/v1/status", None).status, 401);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
    let text = log(&env);
    assert!(
        text.contains("scheduled") && text.contains("serving the API"),
        "{text}"
    );
}

#[test]
fn serve_refuses_bad_input_with_4xx_and_a_json_message() {
    let env = Env::new();
    env.make_db(&env.db(), 10);
    let server = Server::start(&env);
    let (read, ops) = (Some(server.read.as_str()), Some(server.ops.as_str()));
    let error = |r: &Reply| r.json()["error"].as_str().unwrap().to_string();

    let r = server.post("/api/v1/jobs", ops, "{\"kind\": ");
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(error(&r).contains("not a job request"), "{}", r.text);
    let r = server.post("/api/v1/jobs", ops, r#"{"kind": "explode"}"#);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(error(&r).contains("explode"), "{}", r.text);
    let r = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "backup", "source": "nope"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(error(&r).contains("no source named \"nope\""), "{}", r.text);
    let r = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "backup", "dry_run": true}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let r = server.post(
        "/api/v1/jobs",
        ops,
        r#"{"kind": "restore-test", "snapshot": "../../etc/passwd"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let huge = format!(
        r#"{{"kind": "backup", "source": "{}"}}"#,
        "a".repeat(1 << 20)
    );
    // The server answers 413 from the Content-Length and closes the
    // connection without reading the body, so a client still writing it
    // may see the reset before the answer (more often on a busy machine):
    // a connection error is retried, a wrong answer is not.
    let r = (0..5)
        .find_map(|_| {
            server
                .try_send("POST", "/api/v1/jobs", ops, Some(huge.clone()))
                .ok()
        })
        .expect("five connection errors in a row for the oversized body");
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(!error(&r).is_empty());

    let r = server.get("/api/v1/jobs/job-1-999", read);
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(error(&r).contains("no job"), "{}", r.text);
    let r = server.get("/api/v1/jobs/..%2F..%2Fetc%2Fpasswd", read);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(error(&r).contains("not a job id"), "{}", r.text);
    let r = server.get("/api/v1/snapshots?since=yesterday-ish", read);
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(error(&r).contains("since"), "{}", r.text);
    let r = server.get("/api/v1/snapshots?source=nope", read);
    assert_eq!(r.status, 400, "{}", r.text);
    let r = server.get("/api/v1/nothing-here", read);
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn serve_rate_limits_wrong_tokens_and_never_logs_them() {
    let env = Env::new();
    let server = Server::start(&env);
    let wrong = "wrong-token-0123456789";
    let codes: Vec<u16> = (0..12)
        .map(|_| server.get("/api/v1/status", Some(wrong)).status)
        .collect();
    assert_eq!(codes[0], 401, "{codes:?}");
    assert_eq!(*codes.last().unwrap(), 429, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    assert_eq!(server.stop(&env), 0);
    let text = log(&env);
    assert!(text.contains("matches no [[serve.tokens]] entry"), "{text}");
    assert!(!text.contains(wrong), "{text}");
}

#[test]
fn serve_hash_token_and_config_mistakes() {
    let (token, line) = new_token();
    assert_eq!(token.len(), 64);
    let hash = hex_sha256(&token);
    assert_eq!(line, format!("sha256 = \"{hash}\""));
    assert_ne!(new_token().0, token);

    let env = Env::new();
    let config = env.dir.path().join("offsite.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    let token_entry = |extra: &str| {
        format!("[[serve.tokens]]\nname = \"ops\"\nscopes = [\"read\"]\n{line}\n{extra}")
    };
    for (serve, expected) in [
        (
            "[serve]\nlisten = \"localhost\"\n".to_string(),
            "serve.listen",
        ),
        (
            "[[serve.tokens]]\nname = \"ops\"\nscopes = [\"read\"]\nsha256 = \"abc\"\n".into(),
            "64 hex digits",
        ),
        (
            "[[serve.tokens]]\nname = \"ops\"\nscopes = [\"admin\"]\nsha256 = \"abc\"\n".into(),
            "admin",
        ),
        (token_entry("colour = \"blue\"\n"), "colour"),
        (
            "[serve]\nlisten = \"127.0.0.1:0\"\n".into(),
            "no [[serve.tokens]]",
        ),
    ] {
        std::fs::write(&config, format!("{base}\n{serve}")).unwrap();
        let (code, out, err) = env.run(&["serve"]);
        assert_eq!(code, 2, "{serve}: {out}{err}");
        assert!(err.contains(expected), "{serve}: {err}");
    }
    // The hashes are shown as they are, not redacted.
    std::fs::write(&config, format!("{base}\n{}", token_entry(""))).unwrap();
    let shown = json(&env.ok(&["config", "--json"]));
    assert_eq!(
        shown["config"]["serve"]["tokens"][0]["sha256"],
        hash.as_str()
    );
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
