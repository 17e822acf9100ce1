//! Temporary objects of killed runs: a backup killed with SIGKILL (through a
//! fail-point, so at a chosen step: writing, fsyncing or linking an object)
//! leaves its temporary files behind; the next run removes them, and the
//! repository verifies and restores. The same for S3's staged creates
//! (`.offsite-tmp/`), killed between the staged upload and its copy.

use std::path::Path;

use backend_objstore::testing::{http_request, start_moto, Method};
use rusqlite::Connection;

use crate::support::*;

/// Runs `offsite backup` with `OFFSITE_FAILPOINTS=point`, insists that the
/// fail-point killed it, and returns its pid.
fn killed_backup(env: &Env, point: &str, vars: &[(&str, &str)]) -> u32 {
    let mut child = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .arg("backup")
        .env("OFFSITE_FAILPOINTS", point)
        .envs(vars.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "{point} did not kill the backup: {status}"
    );
    pid
}

/// Every row, `meta` included (text in `Env::make_db`'s table, random
/// blobs in [`make_incompressible_db`]'s).
fn rows(path: &Path) -> Vec<(i64, String, String, String)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, title, body, hex(meta) FROM tasks ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn verify_and_restore(env: &Env, run: impl Fn(&[&str]) -> (i32, String, String)) {
    let (code, out, err) = run(&["verify", "--read-data"]);
    assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
    let to = env.dir.path().join("restored.db");
    let (code, out, err) = run(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "restore failed:\n{out}\n{err}");
    assert!(rows(&to) == rows(&env.db()), "restored rows differ");
}

#[test]
fn temporary_files_of_killed_backups_are_removed_by_the_next_run() {
    let env = Env::new();
    env.make_db(&env.db(), 60_000);
    let tmp = env.repo().join(".tmp");
    let points = [
        "local.put.write=kill@3",
        "local.put.fsync=kill@5",
        "local.put.link=kill@4",
        "local.put.write=kill@9",
        "local.put.fsync=kill@2",
        "local.put.link=kill@7",
    ];
    for (round, point) in points.iter().enumerate() {
        // New rows each time, so every run has packs to write.
        Connection::open(env.db())
            .unwrap()
            .execute(
                "UPDATE tasks SET body = body || ?1 WHERE id % 7 = ?2",
                (format!(" round {round}"), round as i64),
            )
            .unwrap();
        let pid = killed_backup(&env, point, &[]);
        // What is left is the last run's: each run removed the files of the
        // killed ones before it, and none of its own.
        let left = find_files(&tmp);
        let names: Vec<String> = left
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(!names.is_empty(), "{point}: no temporary file was left");
        assert!(
            names.iter().all(|n| n.starts_with(&format!("{pid}-"))),
            "{point} (pid {pid}): files of earlier killed runs are still there: {names:?}"
        );
    }
    assert!(
        snapshots_or_none(&env).is_empty(),
        "a killed run made a snapshot"
    );

    let out = env.ok(&["backup"]);
    assert!(out.contains("app -> local: snapshot"), "{out}");
    assert_eq!(
        find_files(&tmp),
        Vec::<std::path::PathBuf>::new(),
        "the next run left the killed runs' temporary files"
    );
    verify_and_restore(&env, |args| env.run(args));
}

fn snapshots_or_none(env: &Env) -> Vec<serde_json::Value> {
    let (code, out, _) = env.run(&["snapshots", "--json"]);
    if code != 0 {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_default()
}

/// Keys below `prefix` in `bucket`, straight from the S3 API (a target's
/// own listing hides `.offsite-tmp/`).
async fn s3_keys(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = http_request(
        port,
        Method::GET,
        &format!("/{bucket}?list-type=2&prefix={prefix}"),
        Vec::new(),
    )
    .await;
    assert!(status.is_success(), "listing {bucket}: {status}");
    let body = String::from_utf8_lossy(&body);
    body.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect()
}

/// About 22 MiB of random blobs: 8 MiB packs stay above a 5 MiB part.
fn make_incompressible_db(path: &Path) {
    Connection::open(path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, meta BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO tasks(title, body, meta)
               SELECT 'task ' || i, 'body ' || i, randomblob(1000) FROM n;",
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_s3_uploads_of_killed_backups_are_removed_by_the_next_run() {
    let moto = start_moto("offsite-e2e").await;
    // 8 MiB packs in 5 MiB parts: packs are staged creates.
    let target = format!(
        "[[targets]]\nname = \"remote\"\nkind = \"s3\"\nbucket = \"offsite-e2e\"\n\
         prefix = \"host\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         allow_http = true\npart_size_mib = 5\n",
        moto.url()
    );
    let vars = [
        ("AWS_ACCESS_KEY_ID", "e2e-access-key"),
        ("AWS_SECRET_ACCESS_KEY", "e2e-secret"),
    ];
    let env = Env::with_remote_target(&target, 8, &vars);
    make_incompressible_db(&env.db());
    let staged = || s3_keys(moto.port, "offsite-e2e", "host/.offsite-tmp/");

    tokio::task::block_in_place(|| killed_backup(&env, "objstore.put.copy=kill@1", &vars));
    let left = staged().await;
    assert!(!left.is_empty(), "the killed run left no staged upload");

    let run = |args: &[&str]| tokio::task::block_in_place(|| env.run(args));
    let (code, out, err) = run(&["backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert_eq!(
        staged().await,
        Vec::<String>::new(),
        "the next run left the killed run's staged upload"
    );
    verify_and_restore(&env, run);
}
