//! `offsite serve` beyond reads and jobs (serve.rs): restore in place and
//! its guards, a job followed as Server-Sent Events (and a client that
//! leaves mid-stream), the OpenAPI description against the served routes
//! and answers, and `[serve]` settings from `OFFSITE_*` variables.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::StreamExt;
use rusqlite::Connection;
use serde_json::{json as j, Value};

use crate::serve::{free_port, log, Launch, Reply, Server, DEADLINE};
use crate::support::*;

/// Source hooks that make a backup and a restore each take two seconds at
/// least, so that a job is seen running.
const SLOW_HOOKS: &str = "before = \"sleep 2\"\nbefore_restore = \"sleep 2\"\n";

fn start_job(server: &Server, token: &str, body: &str) -> Reply {
    server.post("/api/v1/jobs", Some(token), body)
}

fn started_id(r: &Reply) -> String {
    assert_eq!(r.status, 202, "{}", r.text);
    r.json()["id"].as_str().unwrap().to_string()
}

fn restore_body(snapshot: &str, confirm: Option<&str>) -> String {
    let mut body = j!({"kind": "restore", "source": "app", "snapshot": snapshot});
    if let Some(c) = confirm {
        body["confirm"] = j!(c);
    }
    body.to_string()
}

/// Deletes most rows and adds one: the live database differs from any snapshot.
fn change(db: &std::path::Path) {
    let c = Connection::open(db).unwrap();
    c.execute("DELETE FROM tasks WHERE id > 100", []).unwrap();
    c.execute(
        "INSERT INTO tasks(title, body) VALUES ('changed', 'after the backup')",
        [],
    )
    .unwrap();
}

#[test]
fn serve_restores_in_place_only_when_enabled_in_scope_and_confirmed() {
    let env = Env::with_sources(|_| SLOW_HOOKS.into());
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    let snapshot = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let backed_up = dump(&env.db());

    // Off unless the config says so: even the restore scope is refused.
    let server = Server::start(&env);
    let r = start_job(
        &server,
        &server.restorer,
        &restore_body(&snapshot, Some("app")),
    );
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.error().contains("restore_in_place = true"), "{}", r.text);
    assert_eq!(server.stop(&env), 0);

    let server = Server::launch(
        &env,
        &Launch {
            command: "serve",
            settings: "restore_in_place = true",
            vars: &[],
        },
    );
    change(&env.db());
    let changed = dump(&env.db());
    assert_ne!(changed, backed_up);
    for token in [&server.ops, &server.read] {
        let r = start_job(&server, token, &restore_body(&snapshot, Some("app")));
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.error().contains("\"restore\" scope"), "{}", r.text);
    }
    let r = start_job(&server, &server.restorer, &restore_body(&snapshot, None));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.error().contains(r#""confirm": "app""#), "{}", r.text);
    let r = start_job(
        &server,
        &server.restorer,
        &restore_body(&snapshot, Some("ap")),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.error().contains("\"ap\""), "{}", r.text);
    let r = start_job(&server, &server.restorer, r#"{"kind": "backup"}"#);
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.error().contains("\"operate\" scope"), "{}", r.text);
    let r = start_job(
        &server,
        &server.ops,
        r#"{"kind": "backup", "confirm": "app"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(dump(&env.db()), changed, "nothing refused touched the data");

    // A backup of the source and a restore of it never run at once.
    let backup = started_id(&start_job(&server, &server.ops, r#"{"kind": "backup"}"#));
    let r = start_job(
        &server,
        &server.restorer,
        &restore_body(&snapshot, Some("app")),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.error().contains(&backup), "{}", r.text);
    assert_eq!(server.finished_job(&backup, &env)["state"], "succeeded");

    let body = restore_body(&snapshot, Some("app"));
    let id = started_id(&start_job(&server, &server.restorer, &body));
    let again = start_job(&server, &server.restorer, &body);
    assert_eq!(again.status, 200, "one restore per source: {}", again.text);
    assert_eq!(again.json()["id"], id.as_str());
    let r = start_job(
        &server,
        &server.ops,
        r#"{"kind": "backup", "source": "app"}"#,
    );
    assert_eq!(r.status, 409, "{}", r.text);
    let job = server.finished_job(&id, &env);
    assert_eq!(job["state"], "succeeded", "{job}\n{}", log(&env));
    assert_eq!(job["kind"], "restore");
    assert!(job.get("confirm").is_none(), "{job}");
    let result = &job["result"];
    assert_eq!(result["snapshot"]["id"], snapshot.as_str(), "{job}");
    assert_eq!(result["test"], false);
    assert_eq!(result["verified"], true);

    // The snapshot's rows are back, whole; what it replaced is a snapshot.
    assert_eq!(dump(&env.db()), backed_up);
    assert_eq!(integrity(&env.db()), "ok");
    let pre = result["pre_restore_snapshot"]
        .as_str()
        .expect("a pre-restore snapshot");
    let listed = server.get("/api/v1/snapshots", Some(&server.read)).json();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == pre)
        .unwrap_or_else(|| panic!("{pre} in {listed}"));
    assert_eq!(entry["tags"], j!(["pre-restore"]));
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
    let undo = env.dir.path().join("undo.db");
    let to = undo.to_str().unwrap();
    env.ok(&["restore", "--source", "app", "--snapshot", pre, "--to", to]);
    assert_eq!(dump(&undo), changed);
}

/// One Server-Sent Event: its name and its data.
#[derive(Debug)]
struct SseEvent {
    name: String,
    data: Value,
}

/// The events of a job's stream (the status, and the events read): every
/// one until the stream ends, or the first `limit`, after which the
/// connection is dropped.
fn job_events(server: &Server, id: &str, limit: Option<usize>) -> (u16, Vec<SseEvent>) {
    let url = format!("{}/api/v1/jobs/{id}/events", server.base);
    server.rt.block_on(async {
        let r = server
            .client
            .get(url)
            .bearer_auth(&server.read)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let (mut body, mut buf, mut events) = (r.bytes_stream(), Vec::new(), Vec::new());
        let start = Instant::now();
        while limit.is_none_or(|n| events.len() < n) {
            assert!(start.elapsed() < DEADLINE, "the stream hangs: {events:?}");
            let Some(chunk) = body.next().await else {
                break;
            };
            buf.extend_from_slice(&chunk.unwrap());
            while let Some(at) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..at + 2).collect();
                events.extend(parse_event(std::str::from_utf8(&block).unwrap()));
            }
        }
        (status, events)
    })
}

/// An event block; `None` for a keep-alive comment.
fn parse_event(block: &str) -> Option<SseEvent> {
    let (mut name, mut data) = (None, String::new());
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    Some(SseEvent {
        name: name?,
        data: json(&data),
    })
}

#[test]
fn serve_streams_a_job_s_state_progress_and_result_as_server_sent_events() {
    let env = Env::with_sources(|_| SLOW_HOOKS.into());
    env.make_db(&env.db(), 3_000);
    let server = Server::start(&env);

    let id = started_id(&start_job(&server, &server.ops, r#"{"kind": "backup"}"#));
    let (status, events) = job_events(&server, &id, None);
    assert_eq!(status, 200);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"state"), "{names:?}");
    assert_eq!(events[0].data, j!({"id": id, "state": "running"}));
    assert_eq!(&names[names.len() - 2..], ["state", "done"], "{names:?}");
    assert_eq!(events[names.len() - 2].data["state"], "succeeded");
    let done = &events.last().unwrap().data;
    let job = server
        .get(&format!("/api/v1/jobs/{id}"), Some(&server.read))
        .json();
    assert_eq!(*done, job, "done holds the job as GET shows it");
    let size = job["result"][0]["snapshot"]["size"].as_u64().unwrap();
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e.name == "progress")
        .map(|e| &e.data)
        .collect();
    let last = progress.last().unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(last["what"], "app", "{progress:?}");
    assert_eq!(last["done"], size, "the final figures: all of it read");
    assert!(last["total"].as_u64().unwrap() >= size, "{progress:?}");
    assert!(last["uploaded"].as_u64().unwrap() > 0, "{progress:?}");

    // A finished job's stream: its state and result at once.
    let (_, events) = job_events(&server, &id, None);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["state", "done"]);
    assert_eq!(events[1].data, job);

    // A drill's events name its step and target.
    let id = started_id(&start_job(&server, &server.ops, r#"{"kind": "drill"}"#));
    let (_, events) = job_events(&server, &id, None);
    let drill = events
        .iter()
        .find(|e| e.name == "progress")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(drill.data["what"], "drill app @ local", "{events:?}");
    assert!(
        !drill.data["step"].as_str().unwrap().is_empty(),
        "{events:?}"
    );
    assert!(drill.data["uploaded"].is_null(), "{events:?}");
    assert_eq!(events.last().unwrap().data["state"], "succeeded");

    // A client that leaves mid-stream harms neither the job nor the server.
    let id = started_id(&start_job(&server, &server.ops, r#"{"kind": "backup"}"#));
    let (_, first) = job_events(&server, &id, Some(1));
    assert_eq!(first[0].name, "state");
    assert_eq!(server.get("/healthz", None).status, 200);
    let job = server.finished_job(&id, &env);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(server.get("/api/v1/status", Some(&server.read)).status, 200);

    let r = server.get(&format!("/api/v1/jobs/{id}/events"), None);
    assert_eq!(r.status, 401, "{}", r.text);
    let r = server.get("/api/v1/jobs/job-1-999/events", Some(&server.read));
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
    assert!(!log(&env).contains("panicked"), "{}", log(&env));
}

/// The schema `$ref` points at, or the schema itself.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{r}")),
        None => schema,
    }
}

/// The JSON schema of a 2xx answer of `method path`.
pub(crate) fn answer_schema<'a>(
    doc: &'a Value,
    path: &str,
    method: &str,
    status: &str,
) -> &'a Value {
    let op = &doc["paths"][path][method];
    let content = &op["responses"][status]["content"]["application/json"];
    resolve(doc, &content["schema"])
}

/// `value`'s keys are the schema's properties, with every required one.
pub(crate) fn assert_fits(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let schema = resolve(doc, schema);
    let (schema, value) = match schema["type"].as_str() {
        Some("array") => (resolve(doc, &schema["items"]), &value[0]),
        _ => (schema, value),
    };
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    let properties: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {schema}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.is_subset(&properties),
        "{what}: {keys:?} not all in {properties:?}"
    );
    for r in schema["required"].as_array().unwrap() {
        assert!(
            keys.contains(r.as_str().unwrap()),
            "{what}: {r} missing from {value}"
        );
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[test]
fn serve_s_openapi_json_names_every_route_s_methods_and_answers_fields() {
    let env = Env::new();
    env.make_db(&env.db(), 50);
    env.ok(&["backup"]);
    let server = Server::start(&env);
    let ops = Some(server.ops.as_str());
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let doc = json(&std::fs::read_to_string(file).unwrap());
    assert_eq!(server.get("/api/v1/openapi.json", None).status, 401);
    let served = server.get("/api/v1/openapi.json", Some(&server.read));
    assert_eq!(served.json(), doc, "the server serves docs/openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");

    // Each path answers the methods it lists and 405 to the others (the
    // paths themselves are the router's: a unit test in serve/mod.rs).
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = path.replace("{id}", "job-0-0");
        for method in METHODS {
            let upper = method.to_uppercase();
            let r = server
                .try_send(&upper, &url, ops, Some("{}".into()))
                .unwrap();
            if item.get(method).is_some() {
                assert_ne!(r.status, 405, "{method} {path}: {}", r.text);
                assert!(!r.text.contains("no such endpoint"), "{method} {path}");
            } else {
                assert_eq!(
                    r.status, 405,
                    "{method} {path} is not described: {}",
                    r.text
                );
            }
        }
    }

    // Real answers have the fields the schemas name.
    for path in [
        "/healthz",
        "/api/v1/sources",
        "/api/v1/targets",
        "/api/v1/snapshots",
        "/api/v1/status",
    ] {
        let answer = server.get(path, ops).json();
        assert_fits(&doc, answer_schema(&doc, path, "get", "200"), &answer, path);
    }
    let r = start_job(&server, &server.ops, r#"{"kind": "verify"}"#);
    let started = answer_schema(&doc, "/api/v1/jobs", "post", "202");
    assert_fits(&doc, started, &r.json(), "POST /api/v1/jobs");
    let job = server.finished_job(r.json()["id"].as_str().unwrap(), &env);
    let schema = answer_schema(&doc, "/api/v1/jobs/{id}", "get", "200");
    assert_fits(&doc, schema, &job, "a job");
    let jobs = server.get("/api/v1/jobs", ops).json();
    assert_fits(
        &doc,
        answer_schema(&doc, "/api/v1/jobs", "get", "200"),
        &jobs,
        "jobs",
    );
    let error = start_job(&server, &server.ops, r#"{"kind": "explode"}"#).json();
    let schema = &doc["components"]["schemas"]["Error"];
    assert_fits(&doc, schema, &error, "an error");
    let kinds = &doc["components"]["schemas"]["JobKind"]["enum"];
    assert!(
        kinds.as_array().unwrap().contains(&j!("restore")),
        "{kinds}"
    );
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));
}

#[test]
fn serve_settings_come_from_offsite_variables_but_tokens_only_from_the_file() {
    let env = Env::new();
    env.make_db(&env.db(), 50);
    env.ok(&["backup"]);
    let config = env.dir.path().join("offsite.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    let vars = [
        ("OFFSITE_SERVE__LISTEN", listen.as_str()),
        ("OFFSITE_SERVE__RESTORE_IN_PLACE", "true"),
    ];
    // Without the identity a restore fails as the command does.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("identity_file = \"key.txt\"\n", "")).unwrap();
    let how = Launch {
        command: "serve",
        settings: "",
        vars: &vars,
    };
    let server = Server::launch(&env, &how);
    assert!(server.base.ends_with(&listen), "{}", server.base);
    let body = r#"{"kind": "restore", "confirm": "app"}"#;
    let id = started_id(&start_job(&server, &server.restorer, body));
    let job = server.finished_job(&id, &env);
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("restoring needs the age identity"), "{job}");
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));

    std::fs::write(&config, &text).unwrap();
    let server = Server::launch(&env, &how);
    let id = started_id(&start_job(&server, &server.restorer, body));
    assert_eq!(server.finished_job(&id, &env)["state"], "succeeded");
    assert_eq!(server.stop(&env), 0, "log:\n{}", log(&env));

    let shown = |extra: &[(&str, &str)]| {
        let all: Vec<(&str, &str)> = vars.iter().chain(extra).copied().collect();
        let (code, out, err) = env.run_with(&["config", "--json"], &all);
        assert_eq!(code, 0, "{err}");
        (json(&out), err)
    };
    let (v, err) = shown(&[("OFFSITE_SERVE__TOKENS", "[]")]);
    assert_eq!(v["config"]["serve"]["listen"], listen.as_str());
    assert_eq!(v["config"]["serve"]["restore_in_place"], true);
    assert_eq!(v["config"]["serve"]["tokens"].as_array().unwrap().len(), 3);
    assert!(err.contains("ignoring OFFSITE_SERVE__TOKENS"), "{err}");
    let uses: Vec<&Value> = v["environment"].as_array().unwrap().iter().collect();
    assert!(
        uses.contains(
            &&j!({"variable": "OFFSITE_SERVE__LISTEN", "use": "setting", "setting": "serve.listen"})
        ),
        "{uses:?}"
    );

    // A file without [serve]: the variables serve nothing, and say so.
    let served = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, &served[..served.find("\n[serve]\n").unwrap()]).unwrap();
    let (v, err) = shown(&[]);
    assert!(v["config"].get("serve").is_none(), "{v}");
    assert!(err.contains("ignoring OFFSITE_SERVE__LISTEN"), "{err}");
    assert!(
        err.contains("only when the file has a [serve] section"),
        "{err}"
    );
}
