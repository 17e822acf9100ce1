//! The dashboard of `offsite serve`: its page shell and security headers
//! over HTTP, and the page itself in a real headless chromium (webdriver.rs)
//! that logs in, reads the sources, starts a test restore and sees it pass;
//! a read-only token cannot start one. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/test-output/`, for people to look at.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::webdriver::Browser;

/// A header of an answer, or "" when it has none.
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// (status, content type, CSP, nosniff, referrer policy, body) of a GET.
fn fetch(server: &Server, path: &str, token: Option<&str>) -> (u16, [String; 4], String) {
    server.rt.block_on(async {
        let mut req = server.client.get(format!("{}{path}", server.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let headers = [
            "content-type",
            "content-security-policy",
            "x-content-type-options",
            "referrer-policy",
        ]
        .map(|h| header(&r, h));
        (r.status().as_u16(), headers, r.text().await.unwrap())
    })
}

#[test]
fn dashboard_shell_needs_no_token_and_every_answer_has_the_security_headers() {
    let env = Env::new();
    env.make_db(&env.db(), 10);
    let server = Server::start(&env);
    for (path, token, status, kind) in [
        ("/", None, 200, "text/html"),
        ("/ui/app.js", None, 200, "text/javascript"),
        ("/ui/app.css", None, 200, "text/css"),
        ("/ui/icon.svg", None, 200, "image/svg+xml"),
        ("/api/v1/status", None, 401, "application/json"),
        (
            "/api/v1/token",
            Some(server.read.as_str()),
            200,
            "application/json",
        ),
    ] {
        let (code, [content_type, csp, nosniff, referrer], _) = fetch(&server, path, token);
        assert_eq!(code, status, "{path}");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(nosniff, "nosniff", "{path}");
        assert_eq!(referrer, "no-referrer", "{path}");
    }
    // The shell holds no data, and its script is not inline.
    let (_, _, page) = fetch(&server, "/", None);
    assert!(page.contains("<script src=\"/ui/app.js\""), "{page}");
    assert!(
        !page.contains("<script>") && !page.contains("app.db"),
        "{page}"
    );
    // What a token may do, for the page to know before it tries.
    let (_, _, who) = fetch(&server, "/api/v1/token", Some(&server.ops));
    assert_eq!(
        json(&who),
        json!({"name": "ops", "scopes": ["read", "operate"]})
    );
    let (_, _, who) = fetch(&server, "/api/v1/token", Some(&server.read));
    assert_eq!(json(&who), json!({"name": "ro", "scopes": ["read"]}));
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

/// `offsite`'s way of writing a size ("24.0 KiB").
fn bytes(n: u64) -> String {
    let (mut v, mut unit) = (n as f64, 0);
    let units = ["B", "KiB", "MiB", "GiB"];
    while v >= 1024.0 && unit < units.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", units[unit]),
    }
}

/// Where a screenshot for people goes.
fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("test-output")
        .join(name)
}

fn log_in(browser: &Browser, token: &str) {
    let field = browser.find("#token").expect("the login form");
    browser.type_into(&field, token);
    browser.click(&browser.find("#login-button").unwrap());
}

/// Two backups of a growing database, and a drill, so the page has a
/// history and an RTO to show.
fn backed_up_env() -> Env {
    let env = Env::with_sources(|_| "[drill]\nrto_target = \"10m\"\n".into());
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    Connection::open(env.db())
        .unwrap()
        .execute_batch("INSERT INTO tasks(title, body, meta) SELECT title, body, meta FROM tasks")
        .unwrap();
    env.ok(&["backup"]);
    env.ok(&["drill"]);
    env
}

#[test]
fn dashboard_in_a_browser_logs_in_shows_the_source_and_runs_a_test_restore() {
    let env = backed_up_env();
    let server = Server::start(&env);
    let status = server.get("/api/v1/status", Some(&server.read)).json();
    let row = &status["sources"][0];
    let newest = server.get("/api/v1/snapshots", Some(&server.read)).json()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let browser = Browser::start(1280, 900);
    browser.goto(&format!("{}/", server.base));

    // A wrong token: the API's own message.
    log_in(&browser, "not-a-token");
    browser.wait_text("#login-error", "the API's 401 message", |t| {
        t.contains("matches no [[serve.tokens]] entry")
    });

    log_in(&browser, &server.ops);
    browser.wait_text("#token-name", "the token's name", |t| {
        t == "token ops (read, operate)"
    });
    let source = "article.source[data-source=\"app\"]";
    let local = format!("{source} tr[data-target=\"local\"]");
    let size = bytes(row["newest"]["size"].as_u64().unwrap());
    browser.wait_text(&format!("{local} td.size"), "the newest size", |t| {
        t == size
    });
    let age = browser.text(&browser.find(&format!("{local} td.age")).unwrap());
    assert!(
        age.ends_with(" / 1d 2h"),
        "age against the 26h max_age: {age}"
    );
    let drill = browser.text(&browser.find(&format!("{local} td:nth-child(7)")).unwrap());
    assert!(drill.starts_with("passed "), "the last drill: {drill}");
    let rto = browser.text(&browser.find(&format!("{local} td:nth-child(8)")).unwrap());
    assert!(rto.ends_with("s (target 10m 0s)"), "the RTO: {rto}");
    let dots = browser.find_all(&format!("{source} svg.chart circle.size-dot"));
    assert_eq!(dots.len(), 2, "one point per snapshot in the chart");
    let problems = browser.find("#problems").unwrap();
    assert_eq!(
        browser.attribute(&problems, "class").unwrap(),
        "problems ok"
    );

    // The newest snapshot's test restore: started by the page, polled until it passed.
    let snapshot = format!("tr[data-snapshot=\"{newest}\"]");
    let button = browser
        .find(&format!("{snapshot} button.test-restore"))
        .unwrap();
    assert!(browser.enabled(&button));
    browser.click(&button);
    let result = browser.wait_text(
        &format!("{snapshot} .job-result"),
        "the test restore's end",
        |t| !t.is_empty() && !t.starts_with("starting") && !t.starts_with("running"),
    );
    assert!(
        result.starts_with("passed: "),
        "{result}\nlog:\n{}",
        log(&env)
    );
    let jobs = server.get("/api/v1/jobs", Some(&server.read)).json();
    assert_eq!(jobs[0]["kind"], "restore-test", "{jobs}");
    assert_eq!(jobs[0]["snapshot"], newest.as_str(), "{jobs}");
    assert_eq!(jobs[0]["state"], "succeeded", "{jobs}");
    let job = jobs[0]["id"].as_str().unwrap();
    browser.wait_text(
        &format!("tr[data-job=\"{job}\"] td.state"),
        "the jobs table",
        |t| t == "succeeded",
    );
    let shot = screenshot_path("dashboard.png");
    browser.screenshot(&shot);
    println!("screenshot of the dashboard: {}", shot.display());

    // The tab keeps the token across a reload; logging out forgets it.
    browser.goto(&format!("{}/", server.base));
    browser.wait_text("#token-name", "the dashboard again", |t| t.contains("ops"));
    browser.click(&browser.find("#logout").unwrap());
    let after =
        browser.execute("return [document.getElementById('login').hidden, sessionStorage.length]");
    assert_eq!(after, json!([false, 0]));

    // A read-only token sees everything but cannot start a test restore.
    log_in(&browser, &server.read);
    browser.wait_text("#operate-note", "the operate scope note", |t| {
        t.contains("Token ro has no operate scope")
    });
    let button = browser
        .find(&format!("{snapshot} button.test-restore"))
        .unwrap();
    assert!(!browser.enabled(&button), "the button is disabled");
    let shot = screenshot_path("dashboard-read-only.png");
    browser.screenshot(&shot);
    println!("screenshot with a read-only token: {}", shot.display());
    drop(browser);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn a_drill_job_s_outcome_is_the_status_s_last_drill() {
    let env = Env::new();
    env.make_db(&env.db(), 50);
    env.ok(&["backup"]);
    let server = Server::start(&env);
    let read = Some(server.read.as_str());
    let before = server.get("/api/v1/status", read).json();
    assert_eq!(before["sources"][0]["last_drill"], serde_json::Value::Null);
    let r = server.post("/api/v1/jobs", Some(&server.ops), r#"{"kind": "drill"}"#);
    assert_eq!(r.status, 202, "{}", r.text);
    let job = server.finished_job(r.json()["id"].as_str().unwrap(), &env);
    assert_eq!(job["state"], "succeeded", "{job}");
    let after = server.get("/api/v1/status", read).json();
    let drill = &after["sources"][0]["last_drill"];
    assert_eq!(drill["passed"], true, "{after}");
    assert_eq!(drill["target"], "local", "{after}");
    assert_eq!(
        drill["snapshot"], job["result"]["drills"][0]["snapshot"],
        "{after}"
    );
    assert_eq!(
        drill["rto_seconds"],
        job["result"]["drills"][0]["rto_seconds"]
    );
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn dashboard_in_a_browser_highlights_breaches_unreadable_targets_and_failures() {
    let env = Env::with_sources(|_| "[status]\nmin_size = \"1GB\"\n".into());
    let config = env.dir.path().join("offsite.toml");
    let offline = env.dir.path().join("unmounted/disk");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[targets]]\nname = \"offline\"\nkind = \"local\"\npath = \"{}\"\n",
        offline.display()
    ));
    std::fs::write(&config, text).unwrap();
    env.make_db(&env.db(), 100);
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "the offline target fails: {out}{err}");
    let strict = [
        ("OFFSITE_DRILL__QUERY", "SELECT count(*) FROM tasks"),
        ("OFFSITE_DRILL__MIN_ROWS", "1000000"),
    ];
    let (code, out, err) = env.run_with(&["drill", "--target", "local"], &strict);
    assert_eq!(code, 1, "the smoke query fails: {out}{err}");
    let server = Server::start(&env);
    let body = r#"{"kind": "restore-test", "snapshot": "20200101T000000Z-00000000"}"#;
    let r = server.post("/api/v1/jobs", Some(&server.ops), body);
    let job = server.finished_job(r.json()["id"].as_str().unwrap(), &env);
    assert_eq!(job["state"], "failed", "{job}");

    let browser = Browser::start(1280, 900);
    browser.goto(&format!("{}/", server.base));
    log_in(&browser, &server.ops);
    let problems = browser.wait_text("#problems", "the problems", |t| t.contains("problems"));
    for expected in [
        "4 problems",
        "app @ local: newest snapshot is",
        "less than min_size",
        "target offline: cannot read the repository",
        "last drill of app @ local failed",
        "smoke_query",
        "restore-test job",
        "20200101T000000Z-00000000",
    ] {
        assert!(problems.contains(expected), "{expected:?} in:\n{problems}");
    }
    let box_ = browser.find("#problems").unwrap();
    assert_eq!(browser.attribute(&box_, "class").unwrap(), "problems bad");
    let source = "article.source[data-source=\"app\"]";
    let badge = browser.text(&browser.find(&format!("{source} .badge")).unwrap());
    assert_eq!(badge, "ALERT");
    for target in ["local", "offline"] {
        let row = browser
            .find(&format!("{source} tr[data-target=\"{target}\"]"))
            .unwrap();
        assert_eq!(browser.attribute(&row, "class").unwrap(), "bad", "{target}");
    }
    let drill = format!("{source} tr[data-target=\"local\"] td:nth-child(7)");
    let drill = browser.text(&browser.find(&drill).unwrap());
    assert!(drill.starts_with("FAILED "), "{drill}");
    let shot = screenshot_path("dashboard-failures.png");
    browser.screenshot(&shot);
    println!(
        "screenshot of a dashboard with failures: {}",
        shot.display()
    );
    drop(browser);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}
