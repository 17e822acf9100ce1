//! `offsite restore --all`: a rebuilt server gets every source back, each at
//! the path of its `[[sources]]` entry, in one command with nothing in the
//! environment; a source that cannot be restored is reported and the others
//! still are; `--to DIR/` for a database says it wants a file path.

use std::path::Path;

use crate::support::*;

fn two_sources_env() -> Env {
    Env::with_sources(|_| {
        "[[sources]]\nname = \"uploads\"\nkind = \"files\"\npath = \"uploads\"\n".to_string()
    })
}

fn make_uploads(dir: &Path) {
    std::fs::create_dir_all(dir.join("2026/11")).unwrap();
    std::fs::write(dir.join("2026/11/a.txt"), b"first upload").unwrap();
    std::fs::write(dir.join("b.bin"), vec![7u8; 300_000]).unwrap();
}

/// Runs the binary with a cleared environment, as on a rebuilt server.
fn run_bare(env: &Env, args: &[&str]) -> (i32, String, String) {
    let out = offsite_command()
        .env_clear()
        .current_dir(env.dir.path())
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn restore_all_puts_every_source_back_at_its_own_path() {
    let env = two_sources_env();
    env.make_db(&env.db(), 3_000);
    let uploads = env.dir.path().join("uploads");
    make_uploads(&uploads);
    env.ok(&["backup"]);
    let rows = dump(&env.db());

    // The server is rebuilt: the data is gone, the config and key are back.
    std::fs::remove_file(env.db()).unwrap();
    for side in ["app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(env.dir.path().join(side));
    }
    std::fs::remove_dir_all(&uploads).unwrap();

    let (code, out, err) = run_bare(&env, &["restore", "--all", "--latest"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("restored ").count(), 2, "{out}");
    assert_eq!(dump(&env.db()), rows);
    assert_eq!(
        std::fs::read(uploads.join("2026/11/a.txt")).unwrap(),
        b"first upload"
    );
    assert_eq!(std::fs::read(uploads.join("b.bin")).unwrap().len(), 300_000);
}

#[test]
fn restore_all_reports_each_source_and_fails_if_one_was_not_restored() {
    let env = two_sources_env();
    env.make_db(&env.db(), 500);
    make_uploads(&env.dir.path().join("uploads"));
    env.ok(&["backup", "--source", "app"]);
    // uploads has no snapshot; app.db still exists (needs --force).
    let (code, out, err) = env.run(&["restore", "--all", "--latest", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), 2, "{out}");
    assert!(results.iter().all(|r| r["ok"] == false), "{out}");
    assert!(err.contains("2 of 2 sources were not restored"), "{err}");

    std::fs::remove_file(env.db()).unwrap();
    let (code, out, err) = env.run(&["restore", "--all", "--latest"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("restored "), "app is restored: {out}");
    assert!(err.contains("uploads: FAILED"), "{err}");
    assert!(
        err.contains("1 of 2 sources were not restored: uploads"),
        "{err}"
    );
    assert_eq!(dump_count(&env.db()), 500);
}

#[test]
fn a_directory_given_for_a_database_restore_is_a_usage_error() {
    let env = Env::new();
    env.make_db(&env.db(), 100);
    env.ok(&["backup"]);
    let dir = env.dir.path().join("restored");
    std::fs::create_dir(&dir).unwrap();
    for to in [format!("{}/", dir.display()), dir.display().to_string()] {
        let (code, out, err) = env.run(&["restore", "--source", "app", "--latest", "--to", &to]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("restores to a file path"), "{err}");
        assert!(err.contains("app.db"), "suggests a file name: {err}");
    }
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    // Without --to, the source's own path (here it exists: --force needed).
    let (code, _, err) = env.run(&["restore", "--source", "app", "--latest"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
}
