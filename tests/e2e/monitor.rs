//! Restore drills, status checks and notifications, through the binary.

use std::io::Write;

use rusqlite::Connection;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::*;

fn append_config(env: &Env, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.dir.path().join("offsite.toml"))
        .unwrap();
    writeln!(f, "\n{text}").unwrap();
}

#[test]
fn drill_restores_checks_queries_and_times_the_newest_snapshot() {
    let env = Env::with_sources(|_| {
        "[drill]\nquery = \"SELECT count(*) FROM tasks\"\nmin_rows = 100\nrto_target = \"10m\"\n"
            .into()
    });
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let id = snapshots(&env)[0]["id"].as_str().unwrap().to_string();

    let v: serde_json::Value = serde_json::from_str(&env.ok(&["drill", "--json"])).unwrap();
    assert_eq!(v["passed"], true, "{v:#}");
    let d = &v["drills"][0];
    assert_eq!(v["drills"].as_array().unwrap().len(), 1);
    assert_eq!(d["source"], "app");
    assert_eq!(d["target"], "local");
    assert_eq!(d["snapshot"], id.as_str());
    assert_eq!(d["query_value"], 500);
    assert_eq!(d["rto_target_seconds"], 600.0);
    assert!(d["rto_seconds"].as_f64().unwrap() >= 0.0);
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "snapshot_exists",
            "snapshot_age",
            "restore",
            "integrity_check",
            "smoke_query",
            "rto"
        ]
    );
    assert!(d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["passed"] == true));

    let out = env.ok(&["drill"]);
    assert!(out.contains("drill app @ local: PASSED"), "{out}");
    assert!(out.contains("[ok] smoke_query"), "{out}");
    // The scratch copy is gone and the live database untouched.
    assert_eq!(dump_count(&env.db()), 500);
}

#[test]
fn a_failed_drill_step_fails_the_command_and_names_the_step() {
    // The per-source override raises the bar above what the data holds.
    let env = Env::with_sources(|_| {
        "[sources.drill]\nmin_rows = 1000\n\n\
         [drill]\nquery = \"SELECT count(*) FROM tasks\"\nmin_rows = 1\n"
            .into()
    });
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    let (code, out, err) = env.run(&["drill"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("drill app @ local: FAILED"), "{out}");
    assert!(out.contains("[FAIL] smoke_query"), "{out}");
    assert!(out.contains("[ok] integrity_check"), "{out}");
    assert!(
        err.contains("1 of 1 drills failed") && err.contains("expected at least 1000"),
        "{err}"
    );

    // A snapshot older than max_age fails the age step, whatever else passes.
    append_config(&env, "[status]\nmax_age = \"1s\"");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (code, out, _) = env.run(&["drill", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let age = v["drills"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "snapshot_age")
        .unwrap()
        .clone();
    assert_eq!(age["passed"], false, "{age}");
}

#[test]
fn a_drill_on_damaged_data_fails_integrity_and_leaves_no_scratch_copy() {
    let env = Env::new();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let pack = find_files(&env.repo().join("packs"))[0].clone();
    let mut data = std::fs::read(&pack).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 1;
    std::fs::write(&pack, &data).unwrap();

    let tmp = env.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(["drill", "--json"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["drills"][0]["steps"].as_array().unwrap();
    let integrity = steps
        .iter()
        .find(|s| s["step"] == "integrity_check")
        .unwrap();
    assert_eq!(integrity["passed"], false);
    assert!(
        integrity["detail"].as_str().unwrap().contains("corrupt"),
        "{integrity}"
    );
    assert!(
        steps.iter().all(|s| s["step"] != "rto"),
        "no RTO without a restore"
    );
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "the scratch directory is removed"
    );
}

#[test]
fn a_drill_without_snapshots_is_a_clear_failure() {
    let env = Env::with_sources(|dir| {
        std::fs::create_dir(dir.join("docs")).unwrap();
        std::fs::write(dir.join("docs/a.txt"), "a").unwrap();
        "[[sources]]\nname = \"docs\"\nkind = \"files\"\npath = \"docs\"\n".into()
    });
    env.make_db(&env.db(), 10);

    // Nothing backed up yet: the target holds no repository.
    let (code, out, err) = env.run(&["drill", "--source", "app"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("[FAIL] open_repository"), "{out}");
    assert!(err.contains("run a backup to create one"), "{err}");

    // A repository with snapshots of another source only.
    env.ok(&["backup", "--source", "docs"]);
    let (code, out, err) = env.run(&["drill", "--source", "app"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("[FAIL] snapshot_exists"), "{out}");
    assert!(err.contains("no snapshot of source \"app\""), "{err}");
    env.ok(&["drill", "--source", "docs"]);

    let (code, _, err) = env.run(&["drill", "--source", "nope"]);
    assert_eq!(code, 2, "a usage mistake");
    assert!(err.contains("no source named \"nope\""), "{err}");
}

#[test]
fn status_reports_counts_sizes_and_ages_with_only_the_recipients() {
    // Recipients alone read a format 1 repository's metadata (format 2's
    // need a writer key or the identity: format2_status.rs).
    let env = Env::new().format_1();
    env.make_db(&env.db(), 2_000);
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    // A backup host has no identity: status must not need it.
    std::fs::rename(env.key(), env.dir.path().join("elsewhere.txt")).unwrap();

    let prom = env.dir.path().join("offsite.prom");
    let out = env.ok(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["breaches"].as_array().unwrap().len(), 0);
    let row = &v["sources"][0];
    assert_eq!(row["source"], "app");
    assert_eq!(row["target"], "local");
    assert_eq!(row["ok"], true);
    assert_eq!(row["snapshots"], 2);
    let size = row["newest"]["size"].as_u64().unwrap();
    assert_eq!(row["newest"]["previous_size"].as_u64(), Some(size));
    assert_eq!(row["logical_bytes"].as_u64(), Some(2 * size));
    assert!(row["newest"]["age_seconds"].as_u64().unwrap() < 3600);
    let stored = v["targets"][0]["repository_bytes"].as_u64().unwrap();
    assert!(
        stored > 0 && stored < 2 * size,
        "two identical snapshots are stored once, compressed: {stored} vs {size}"
    );

    let text = std::fs::read_to_string(&prom).unwrap();
    let labels = "{source=\"app\",target=\"local\"}";
    for line in [
        "# HELP offsite_snapshots Snapshots of the source in the target's repository.".to_string(),
        "# TYPE offsite_last_snapshot_timestamp_seconds gauge".to_string(),
        format!("offsite_snapshots{labels} 2"),
        format!("offsite_last_snapshot_bytes{labels} {size}"),
        format!("offsite_status_ok{labels} 1"),
        format!("offsite_repository_bytes{{target=\"local\"}} {stored}"),
        "offsite_target_up{target=\"local\"} 1".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("offsite-status"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    let out = env.ok(&["status"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("app") && l.ends_with("ok")),
        "{out}"
    );
}

#[test]
fn status_exits_1_and_lists_each_breached_threshold() {
    let env = Env::new();
    env.make_db(&env.db(), 3_000);
    env.ok(&["backup"]);
    let c = Connection::open(env.db()).unwrap();
    c.execute_batch("DELETE FROM tasks WHERE id > 100; VACUUM;")
        .unwrap();
    drop(c);
    env.ok(&["backup"]);
    append_config(
        &env,
        "[status]\nmax_size_drop_percent = 50\n\n\
         [[sources]]\nname = \"never\"\nkind = \"files\"\npath = \"nothing-here\"",
    );
    let prom = env.dir.path().join("m.prom");
    let (code, out, err) = env.run(&["status", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("ALERT app @ local: newest snapshot is")
            && out.contains("smaller than the previous one"),
        "{out}"
    );
    assert!(
        out.contains("ALERT never @ local: no snapshot of source \"never\""),
        "{out}"
    );
    assert!(err.contains("2 status check(s) failed"), "{err}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("offsite_status_ok{source=\"app\",target=\"local\"} 0"));
    assert!(text.contains("offsite_snapshots{source=\"never\",target=\"local\"} 0"));
}

#[test]
fn bad_monitoring_settings_are_config_errors_naming_the_setting() {
    for (extra, expected) in [
        ("[status]\nmax_age = \"26 hourz\"", "status.max_age"),
        ("[status]\nmax_age = \"a day\"", "status.max_age"),
        ("[drill]\nrto_target = \"fast\"", "drill.rto_target"),
        ("[status]\nmin_size = \"lots\"", "status.min_size"),
        (
            "[status]\nmax_size_drop_percent = 150",
            "status.max_size_drop_percent",
        ),
        ("[schedule]\nbackup = \"0 25 * * *\"", "schedule.backup"),
        ("[schedule]\ndrill = \"monthly please\"", "schedule.drill"),
        ("[schedule]\nstatus = \"0 0 30 2 *\"", "schedule.status"),
        ("[schedule]\nbackups = \"0 2 * * *\"", "backups"),
        (
            "[[notify]]\nkind = \"webhook\"\nurl = \"ftp://x\"",
            "notify[0].url",
        ),
        ("[[notify]]\nkind = \"email\"\nurl = \"http://x\"", "kind"),
        (
            "[[notify]]\nkind = \"webhook\"\nurl = \"http://x\"\nevents = [\"backups\"]",
            "notify[0].events",
        ),
        ("[drill]\nmin_rows = 5", "drill.min_rows"),
    ] {
        let env = Env::new();
        append_config(&env, extra);
        let (code, _, err) = env.run(&["status"]);
        assert_eq!(code, 2, "{extra}: {err}");
        assert!(err.contains(expected), "{extra}: {err}");
        assert!(
            err.lines().count() <= 2,
            "{extra}: one line and a hint at most: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_posts_exact_events_and_pings_healthchecks() {
    let server = MockServer::start().await;
    for p in ["/hook", "/hc/start", "/hc"] {
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(path("/hc/fail"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let uri = server.uri();
    let env = Env::with_sources(|_| {
        format!(
            "[[notify]]\nkind = \"webhook\"\nurl = \"{uri}/hook\"\n\n\
             [[notify]]\nkind = \"healthchecks\"\nurl = \"{uri}/hc\"\n"
        )
    });
    env.make_db(&env.db(), 200);
    let env = tokio::task::spawn_blocking(move || {
        env.ok(&["backup"]);
        env
    })
    .await
    .unwrap();
    let snap = snapshots(&env).remove(0);
    server.verify().await;

    let requests = server.received_requests().await.unwrap();
    let hook = requests.iter().find(|r| r.url.path() == "/hook").unwrap();
    assert_eq!(
        hook.headers.get("content-type").unwrap(),
        "application/json"
    );
    let mut body: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    let time = body["time"].take();
    chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap();
    let duration = body["duration_seconds"].take();
    assert!(duration.as_f64().unwrap() >= 0.0);
    assert_eq!(
        body,
        serde_json::json!({
            "event": "backup", "ok": true, "source": "app", "target": "local",
            "snapshot": snap["id"], "size": snap["size"], "new_bytes": snap["new_bytes"],
            "uploaded_bytes": snap["uploaded_bytes"], "duration_seconds": null,
            "error": null, "host": snap["host"], "time": null, "details": null,
        })
    );
    let hc = requests.iter().find(|r| r.url.path() == "/hc").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&hc.body),
        "1 of 1 backups succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_backup_is_reported_with_its_error() {
    let server = MockServer::start().await;
    for p in ["/hook", "/hc/start", "/hc/fail"] {
        Mock::given(method("POST"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
    }
    let uri = server.uri();
    let env = Env::with_sources(|_| {
        format!(
            "[[notify]]\nkind = \"webhook\"\nurl = \"{uri}/hook\"\n\n\
             [[notify]]\nkind = \"healthchecks\"\nurl = \"{uri}/hc\"\n"
        )
    });
    // No database at the source path: the backup fails.
    let (code, _, err) = tokio::task::spawn_blocking(move || env.run(&["backup"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{err}");
    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    let hook = requests.iter().find(|r| r.url.path() == "/hook").unwrap();
    let body: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["event"], "backup");
    assert_eq!(body["ok"], false);
    assert_eq!(body["source"], "app");
    assert_eq!(body["snapshot"], serde_json::Value::Null);
    assert!(body["error"].as_str().unwrap().contains("app.db"), "{body}");
    let fail = requests
        .iter()
        .find(|r| r.url.path() == "/hc/fail")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&fail.body),
        "0 of 1 backups succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn drill_and_status_notify_webhooks_filtered_by_event_and_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/drills"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/failures"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let uri = server.uri();
    let env = Env::with_sources(|_| {
        format!(
            "[[notify]]\nkind = \"webhook\"\nurl = \"{uri}/drills\"\nevents = [\"drill\"]\n\n\
             [[notify]]\nkind = \"webhook\"\nurl = \"{uri}/failures\"\non = [\"failure\"]\n"
        )
    });
    env.make_db(&env.db(), 50);
    tokio::task::spawn_blocking(move || {
        env.ok(&["backup"]); // success: neither endpoint wants it
        env.ok(&["drill"]); // /drills only
        append_config(&env, "[status]\nmin_size = \"1GB\"");
        assert_eq!(env.run(&["status"]).0, 1); // a failure: /failures only
    })
    .await
    .unwrap();
    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    let drill: serde_json::Value = serde_json::from_slice(
        &requests
            .iter()
            .find(|r| r.url.path() == "/drills")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(drill["event"], "drill");
    assert_eq!(drill["ok"], true);
    assert_eq!(drill["details"]["passed"], true);
    let status: serde_json::Value = serde_json::from_slice(
        &requests
            .iter()
            .find(|r| r.url.path() == "/failures")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(status["event"], "status");
    assert_eq!(status["ok"], false);
    assert!(
        status["error"].as_str().unwrap().contains("min_size"),
        "{status}"
    );
}

#[test]
fn unreachable_or_failing_notify_endpoints_never_fail_the_backup() {
    // A port that was free a moment ago refuses connections.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env::with_sources(|_| {
        format!(
            "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\n\
             [[notify]]\nkind = \"healthchecks\"\nurl = \"http://127.0.0.1:{port}/hc\"\n"
        )
    });
    env.make_db(&env.db(), 100);
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("app -> local: snapshot"), "{out}");
    assert!(err.contains("notification failed"), "{err}");
    assert_eq!(snapshots(&env).len(), 1);
}

#[test]
fn drill_and_status_pass_over_pre_restore_snapshots() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.ok(&["backup"]);
    let regular = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    // An in-place restore first saves the file it replaces (tag pre-restore).
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        env.db().to_str().unwrap(),
        "--force",
    ]);
    let list = snapshots(&env);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["tags"][0], "pre-restore");

    let drill: serde_json::Value = serde_json::from_str(&env.ok(&["drill", "--json"])).unwrap();
    assert_eq!(drill["drills"][0]["snapshot"], regular.as_str());
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["sources"][0]["newest"]["id"], regular.as_str());
    assert_eq!(status["sources"][0]["snapshots"], 2);
}

#[test]
fn each_drill_is_recorded_for_status_and_a_record_that_cannot_be_written_only_warns() {
    let env = Env::with_sources(|_| "[drill]\nrto_target = \"10m\"\n".into());
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    let row = |env: &Env| json(&env.ok(&["status", "--json"]))["sources"][0].clone();
    assert_eq!(row(&env)["last_drill"], serde_json::Value::Null);
    assert_eq!(row(&env)["max_age_seconds"], 26 * 3600);

    env.ok(&["drill"]);
    assert!(env.state().join("drills/app@local.json").is_file());
    let passed = row(&env)["last_drill"].clone();
    assert_eq!(passed["source"], "app", "{passed}");
    assert_eq!(passed["target"], "local", "{passed}");
    assert_eq!(passed["passed"], true, "{passed}");
    assert_eq!(passed["rto_target_seconds"], 600.0, "{passed}");
    assert!(passed["rto_seconds"].as_f64().unwrap() >= 0.0, "{passed}");
    assert_eq!(passed["snapshot"], snapshots(&env)[0]["id"], "{passed}");
    assert_eq!(passed["failed"], serde_json::Value::Null, "{passed}");
    let out = env.ok(&["status"]);
    assert!(out.contains("last drill of app @ local: PASSED"), "{out}");

    // A failed drill replaces the record and says which step failed.
    let strict = [
        ("OFFSITE_DRILL__QUERY", "SELECT count(*) FROM tasks"),
        ("OFFSITE_DRILL__MIN_ROWS", "1000000"),
    ];
    let (code, out, err) = env.run_with(&["drill"], &strict);
    assert_eq!(code, 1, "{out}{err}");
    let failed = row(&env)["last_drill"].clone();
    assert_eq!(failed["passed"], false, "{failed}");
    assert!(
        failed["failed"].as_str().unwrap().contains("smoke_query"),
        "{failed}"
    );
    let time = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).unwrap()
    };
    assert!(time(&failed) > time(&passed), "{failed}");
    let (_, out, _) = env.run(&["status"]);
    assert!(out.contains("last drill of app @ local: FAILED"), "{out}");

    // A state directory that cannot be written: the drill still passes.
    std::fs::remove_dir_all(env.state()).unwrap();
    std::fs::write(env.state(), "a file, not a directory").unwrap();
    let (code, out, err) = env.run(&["drill"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("warning: the drill of app @ local is not recorded"),
        "{err}"
    );
    assert_eq!(row(&env)["last_drill"], serde_json::Value::Null);
}
