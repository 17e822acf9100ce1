//! `offsite status`, `pin`/`unpin` and `serve`'s status and snapshot views
//! on a format 2 repository made by `offsite init`, through the binary:
//! only signed snapshots count or are pinned, a forged newer snapshot
//! (made with nothing but the public keyring and write access) is reported
//! and never taken for the latest backup, a host without a metadata key is
//! told what to configure (exit 2), and a format 1 target is named once.

use std::path::Path;

use rusqlite::Connection;

use crate::format2::{forge_newest_snapshot, initialised, opens_with};
use crate::serve::Server;
use crate::serve_api::{answer_schema, assert_fits};
use crate::support::*;

/// A format 2 repository with one genuine backup and a forged snapshot
/// finished after it: (env, owner key, genuine id, forged id).
fn with_forgery() -> (Env, String, String, String) {
    let (env, owner) = initialised();
    env.make_db(&env.db(), 400);
    env.ok(&["backup"]);
    let genuine = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let forged_db = env.dir.path().join("forged.db");
    Connection::open(&forged_db)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES ('forged');")
        .unwrap();
    let forged = forge_newest_snapshot(&env.repo(), &forged_db);
    (env, owner, genuine, forged)
}

fn without_identity(text: String) -> String {
    text.replace("identity_file = \"key.txt\"\n", "")
}

#[test]
fn status_on_format_2_counts_signed_snapshots_only() {
    let (env, _, genuine, forged) = with_forgery();
    let prom = env.dir.path().join("offsite.prom");
    let (code, out, err) = env.run(&["status", "--json", "--prometheus", prom.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "a rejected snapshot is a warning, not a breach: {out}{err}"
    );
    let report = json(&out);
    let target = &report["targets"][0];
    assert_eq!(target["format"], 2, "{target}");
    assert_eq!(target["rejected_snapshots"], serde_json::json!([forged]));
    let app = &report["sources"][0];
    assert_eq!(app["snapshots"], 1, "the forged one is not a backup: {app}");
    assert_eq!(app["newest"]["id"], genuine.as_str(), "{app}");
    assert_eq!(report["copies"][0]["newest"], genuine.as_str());
    let warning = report["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains(&forged) && warning.contains("someone with write access"),
        "{warning}"
    );
    assert!(
        err.contains(&format!(
            "warning: target local: 1 rejected snapshot ({forged})"
        )),
        "{err}"
    );
    assert!(!err.contains("is format 1"), "{err}");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    for line in [
        "offsite_rejected_snapshots{target=\"local\"} 1",
        "offsite_snapshots{source=\"app\",target=\"local\"} 1",
        "offsite_status_ok{source=\"app\",target=\"local\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    let table = env.ok(&["status"]);
    assert!(
        table.contains(&format!(
            "newest snapshot {genuine} complete on 1 of 1 targets"
        )),
        "{table}"
    );
    assert!(!table.contains(&forged), "{table}");
}

#[test]
fn a_forged_newer_snapshot_does_not_hide_a_stale_backup_from_max_age() {
    let (env, _, genuine, _) = with_forgery();
    env.edit_config(|t| t + "\n[status]\nmax_age = \"1s\"\n");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("ALERT app @ local: newest snapshot is"),
        "{out}"
    );
    assert!(out.contains("more than max_age 1s"), "{out}");
    assert!(out.contains(&genuine), "{out}");
}

#[test]
fn status_without_a_metadata_key_says_what_to_configure() {
    let (env, _, _, _) = with_forgery();
    // Only the recipients, as a format 1 monitoring host has them.
    env.edit_config(without_identity);
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 2, "a configuration mistake: {out}{err}");
    assert!(
        out.contains("target local: UNREADABLE"),
        "the report is still out: {out}"
    );
    for needed in ["encryption.writer_key_file", "encryption.identity_file"] {
        assert!(err.contains(needed), "{err}");
    }
    assert!(
        err.contains("hint: a monitoring host can hold a writer key"),
        "{err}"
    );
    let (code, out, _) = env.run(&["status", "--json"]);
    assert_eq!(code, 2);
    assert_eq!(json(&out)["targets"][0]["format"], serde_json::Value::Null);

    // An identity file named but not here: the format 2 target says so.
    env.edit_config(|t| {
        t.replace(
            "[encryption]\n",
            "[encryption]\nidentity_file = \"gone.txt\"\n",
        )
    });
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("UNREADABLE") && out.contains("gone.txt"),
        "{out}"
    );
}

/// A writer key made with `offsite writer keygen` and added by the owner:
/// its public key.
fn add_writer(env: &Env, name: &str) -> String {
    let key = env.dir.path().join(format!("{name}.key"));
    let out = offsite_command()
        .args(["writer", "keygen", "-o", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    env.ok(&["writer", "add", name, &public]);
    public
}

#[test]
fn a_host_with_a_writer_key_runs_status_and_pins() {
    let (env, owner, genuine, forged) = with_forgery();
    add_writer(&env, "monitor");
    env.edit_config(|t| {
        without_identity(t).replace(
            "[encryption]\n",
            &format!("[encryption]\nwriter_key_file = \"monitor.key\"\nowner_key = \"{owner}\"\n"),
        )
    });
    let report = json(&env.ok(&["status", "--json"]));
    assert_eq!(report["sources"][0]["newest"]["id"], genuine.as_str());
    assert_eq!(
        report["targets"][0]["rejected_snapshots"][0],
        forged.as_str()
    );

    let out = env.ok(&["pin", &genuine]);
    assert_eq!(out.trim(), format!("pinned {genuine} on local"));
    assert!(env.repo().join("pins").join(&genuine).exists());
    let (code, _, err) = env.run(&["pin", &forged]);
    assert_eq!(code, 1, "{err}");
    assert!(!env.repo().join("pins").join(&forged).exists());
}

#[test]
fn pin_and_unpin_on_format_2_take_signed_snapshots_only() {
    let (env, _, genuine, forged) = with_forgery();
    let suffix = &genuine[genuine.len() - 6..];
    assert_eq!(
        env.ok(&["pin", suffix]).trim(),
        format!("pinned {genuine} on local")
    );
    let again = env.ok(&["pin", &genuine]);
    assert_eq!(
        again.trim(),
        format!("{genuine} on local was already pinned")
    );
    let listed = snapshots(&env);
    let pinned = |id: &str| listed.iter().find(|s| s["id"] == id).unwrap()["pinned"].clone();
    assert_eq!(pinned(&genuine), true, "{listed:?}");
    assert_eq!(pinned(&forged), false, "{listed:?}");
    assert!(env.ok(&["snapshots"]).contains("(pinned)"));

    // The pin record is metadata: encrypted, never to the owner's identity
    // (only to the key set's metadata key).
    let record = std::fs::read(env.repo().join("pins").join(&genuine)).unwrap();
    assert!(
        record.starts_with(b"age-encryption.org/v1"),
        "{:?}",
        &record[..20]
    );
    assert!(!opens_with(
        &env.key(),
        &record,
        &env.dir.path().join("scratch")
    ));

    let (code, out, err) = env.run(&["pin", &forged]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("snapshots/{forged} is not trusted")),
        "{err}"
    );
    assert!(
        err.contains("hint: offsite uses only snapshots signed by"),
        "{err}"
    );
    assert!(!env.repo().join("pins").join(&forged).exists());

    assert_eq!(
        env.ok(&["unpin", suffix]).trim(),
        format!("unpinned {genuine} on local")
    );
    assert!(!env.repo().join("pins").join(&genuine).exists());
    let (code, _, err) = env.run(&["unpin", &genuine]);
    assert_eq!(code, 1, "{err}");
}

#[test]
fn status_names_a_format_1_target_once() {
    let env = Env::new().format_1();
    env.make_db(&env.db(), 100);
    env.ok(&["backup"]);
    let (code, out, err) = env.run(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let line = "warning: target local is format 1 (unsigned snapshots, fixed recipients): \
                `offsite migrate --to NEW`";
    assert_eq!(err.matches(line).count(), 1, "{err}");
    let report = json(&env.ok(&["status", "--json"]));
    assert_eq!(report["targets"][0]["format"], 1);
    assert_eq!(
        report["targets"][0]["rejected_snapshots"],
        serde_json::json!([])
    );
}

#[test]
fn serve_shows_format_2_status_and_snapshots_with_their_trust() {
    let (env, _, genuine, forged) = with_forgery();
    let server = Server::start(&env);
    let token = Some(server.read.as_str());
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let doc = json(&std::fs::read_to_string(file).unwrap());

    let status = server.get("/api/v1/status", token).json();
    assert_fits(
        &doc,
        answer_schema(&doc, "/api/v1/status", "get", "200"),
        &status,
        "status",
    );
    assert_eq!(
        status["sources"][0]["newest"]["id"],
        genuine.as_str(),
        "{status}"
    );
    assert_eq!(status["totalBackups"], 1, "{status}");
    assert_eq!(
        status["targets"][0]["rejected_snapshots"][0],
        forged.as_str()
    );
    assert!(
        status["warnings"][0].as_str().unwrap().contains(&forged),
        "{status}"
    );
    let target_schema = &doc["components"]["schemas"]["TargetStatus"];
    assert_fits(&doc, target_schema, &status["targets"][0], "a target");

    let listed = server.get("/api/v1/snapshots", token).json();
    let schema = answer_schema(&doc, "/api/v1/snapshots", "get", "200");
    assert_fits(&doc, schema, &listed, "snapshots");
    let trust = |id: &str| {
        let all = listed.as_array().unwrap();
        all.iter().find(|s| s["id"] == id).unwrap()["trust"]["state"].clone()
    };
    assert_eq!(trust(&genuine), "signed", "{listed}");
    assert_eq!(trust(&forged), "rejected", "{listed}");

    let metrics = server.get("/metrics", token).text;
    assert!(
        metrics.contains("offsite_rejected_snapshots{target=\"local\"} 1"),
        "{metrics}"
    );
    assert_eq!(server.stop(&env), 0);
}
