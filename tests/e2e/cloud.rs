//! `offsite backup`, `restore` and `targets check` through the binary against
//! real local object-store servers: moto's S3 server and fake-gcs-server (the
//! latter behind the harness's XML-write shim, see
//! `backend_objstore::testing::GcsXmlWriteShim`). Each test starts its own
//! server on 127.0.0.1 and stops it at the end; a missing server fails the
//! test with the command that installs it.
//!
//! A counting proxy sits in front of each server so the tests can see that
//! packs really went up as multipart uploads: packs are 8 MiB of
//! incompressible data here and the targets use 5 MiB parts.

use std::path::Path;

use backend_objstore::testing::{start_fake_gcs, start_moto, FaultProxy, Method};
use rusqlite::Connection;

use crate::support::*;

const ROWS: usize = 20_000;

/// A database of about 22 MiB whose rows carry random (incompressible) blobs,
/// so 8 MiB packs stay bigger than a 5 MiB part after compression.
fn make_big_db(path: &Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO tasks(title, body, data)
           SELECT 'task ' || i, printf('body %d', i), randomblob(1000 + i % 200) FROM n;"
    ))
    .unwrap();
}

fn rows(path: &Path) -> Vec<(i64, String, String, Vec<u8>)> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT id, title, body, data FROM tasks ORDER BY id")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Backs up, restores, compares row by row and runs `targets check`, with
/// the binary run off the runtime's workers (the proxy and shim live there).
fn backup_restore_check(env: &Env, secret: &str) {
    make_big_db(&env.db());
    let run = |args: &[&str]| tokio::task::block_in_place(|| env.run(args));

    let (code, out, err) = run(&["-vv", "backup"]);
    assert_eq!(code, 0, "backup failed:\n{out}\n{err}");
    assert!(out.contains("app -> remote: snapshot"), "{out}");
    assert!(
        !out.contains(secret) && !err.contains(secret),
        "secret printed:\n{out}\n{err}"
    );

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
    assert!(out.contains("integrity_check verified"), "{out}");
    let (want, got) = (rows(&env.db()), rows(&to));
    assert_eq!(got.len(), ROWS);
    assert!(want == got, "restored rows differ from the source");
    let check: String = Connection::open(&to)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");

    let (code, out, err) = run(&["targets", "check"]);
    assert_eq!(code, 0, "targets check failed:\n{out}\n{err}");
    assert!(
        out.contains("remote") && out.contains("put ok, list ok, get ok, delete ok"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backup_restore_and_check_through_the_binary() {
    let moto = start_moto("offsite-e2e").await;
    let proxy = FaultProxy::start(moto.port).await;
    let target = format!(
        "[[targets]]\nname = \"remote\"\nkind = \"s3\"\nbucket = \"offsite-e2e\"\n\
         prefix = \"hosts/web-1\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         allow_http = true\npart_size_mib = 5\n",
        proxy.url()
    );
    // Credentials from the environment, as on a real host.
    let secret = "e2e-secret-access-key-value";
    let env = Env::with_remote_target(
        &target,
        8,
        &[
            ("AWS_ACCESS_KEY_ID", "e2e-access-key"),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    );
    backup_restore_check(&env, secret);

    let initiated = proxy.count(Method::POST, "?uploads");
    let parts = proxy.count(Method::PUT, "partNumber=");
    assert!(
        initiated >= 1 && parts >= 2,
        "no multipart upload seen ({initiated} initiated, {parts} parts)"
    );
    assert!(
        proxy
            .authorizations()
            .iter()
            .all(|a| a.contains("Credential=e2e-access-key/")),
        "requests were not signed with the environment's key"
    );
    assert_eq!(
        backend_objstore::testing::s3_open_multipart_uploads(moto.port, "offsite-e2e").await,
        0
    );

    // A bucket that does not exist: check says so, naming the target.
    let bad = Env::with_remote_target(
        &target.replace("bucket = \"offsite-e2e\"", "bucket = \"no-such-bucket\""),
        8,
        &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")],
    );
    let (code, out, err) = tokio::task::block_in_place(|| bad.run(&["targets", "check"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NOT USABLE"), "{out}");
    assert!(
        out.contains("s3://no-such-bucket/hosts/web-1") && out.contains("does not exist"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_backup_restore_and_check_through_the_binary() {
    let gcs = start_fake_gcs("offsite-e2e").await;
    let proxy = FaultProxy::start(gcs.port).await;
    let target = format!(
        "[[targets]]\nname = \"remote\"\nkind = \"gcs\"\nbucket = \"offsite-e2e\"\n\
         prefix = \"hosts/web-1\"\nbase_url = \"{}\"\npart_size_mib = 5\n",
        proxy.url()
    );
    // Credentials from GOOGLE_APPLICATION_CREDENTIALS: a throwaway service
    // account key; object_store signs its own JWT with it (no token server).
    let key_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gcs-test-service-account.json");
    let env = Env::with_remote_target(
        &target,
        8,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap())],
    );
    backup_restore_check(&env, "BEGIN PRIVATE KEY");

    let initiated = proxy.count(Method::POST, "?uploads");
    let parts = proxy.count(Method::PUT, "partNumber=");
    assert!(
        initiated >= 1 && parts >= 2,
        "no multipart upload seen ({initiated} initiated, {parts} parts)"
    );
    let auth = proxy.authorizations();
    assert!(
        !auth.is_empty()
            && auth
                .iter()
                .all(|a| a.starts_with("Bearer ") && a.matches('.').count() == 2),
        "requests did not carry the service account's JWT"
    );
    assert_eq!(gcs.open_uploads(), 0);

    let bad = Env::with_remote_target(
        &target.replace("bucket = \"offsite-e2e\"", "bucket = \"no-such-bucket\""),
        8,
        &[("GOOGLE_APPLICATION_CREDENTIALS", key_file.to_str().unwrap())],
    );
    let (code, out, err) = tokio::task::block_in_place(|| bad.run(&["targets", "check"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NOT USABLE"), "{out}");
    assert!(out.contains("gs://no-such-bucket/hosts/web-1"), "{out}");
}

#[test]
fn unknown_s3_and_gcs_settings_are_config_errors() {
    for target in [
        "[[targets]]\nname = \"remote\"\nkind = \"s3\"\nbucket = \"b\"\nendpont = \"http://x\"\n",
        "[[targets]]\nname = \"remote\"\nkind = \"gcs\"\nbucket = \"b\"\nbase-url = \"http://x\"\n",
    ] {
        let env = Env::with_remote_target(target, 8, &[]);
        let (code, out, err) = env.run(&["backup"]);
        assert_eq!(code, 2, "{out}{err}");
        let key = if target.contains("endpont") {
            "endpont"
        } else {
            "base-url"
        };
        assert!(err.contains(key) && err.contains("remote"), "{err}");
    }
}

/// docs/disaster-recovery.md, part B, against S3: the old server backed up
/// to a bucket and is gone. The new machine has the binary, the config, the
/// identity and the credentials in its environment, and nothing else: a
/// cleared environment, fresh HOME, TMPDIR and working directory, and no
/// application directory yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_server_restores_from_s3_with_only_config_identity_and_credentials() {
    let moto = start_moto("offsite-dr").await;
    let target = format!(
        "[[targets]]\nname = \"offsite\"\nkind = \"s3\"\nbucket = \"offsite-dr\"\n\
         prefix = \"hosts/web-1\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
         allow_http = true\n",
        moto.port
    );
    let creds = [
        ("AWS_ACCESS_KEY_ID", "dr-access-key"),
        ("AWS_SECRET_ACCESS_KEY", "dr-secret-key"),
    ];
    let old = Env::with_remote_target(&target, 4, &creds);
    old.make_db(&old.db(), 5_000);
    tokio::task::block_in_place(|| old.ok(&["backup"]));
    Connection::open(old.db())
        .unwrap()
        .execute("UPDATE tasks SET title = 'late edit' WHERE id % 7 = 0", [])
        .unwrap();
    tokio::task::block_in_place(|| old.ok(&["backup"]));
    let expected = dump(&old.db());

    let new = tempfile::tempdir().unwrap();
    let etc = new.path().join("etc/offsite");
    let home = new.path().join("root");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(old.key(), etc.join("key.txt")).unwrap();
    let app = new.path().join("srv/app/app.db");
    std::fs::write(
        etc.join("offsite.toml"),
        format!(
            "[encryption]\nidentity_file = \"key.txt\"\n\n\
             [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"{}\"\n\n{target}",
            app.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = offsite_command()
            .args(args)
            .current_dir(&home)
            .env_clear()
            .env("HOME", &home)
            .env("TMPDIR", &home)
            .env("OFFSITE_CONFIG", etc.join("offsite.toml"))
            .envs(creds)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "offsite {args:?}:\n{text}");
        text
    };
    tokio::task::block_in_place(|| {
        let check = run(&["targets", "check"]);
        assert!(
            check.contains("put ok, list ok, get ok, delete ok"),
            "{check}"
        );
        run(&[
            "restore",
            "--source",
            "app",
            "--latest",
            "--to",
            app.to_str().unwrap(),
        ]);
    });
    assert_eq!(dump(&app), expected);
    let check: String = Connection::open(&app)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
