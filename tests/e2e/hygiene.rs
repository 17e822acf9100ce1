//! Configuration and process hygiene through the binary: stray `OFFSITE_*`
//! variables, a closed stdout, and exit code 2 for usage mistakes.

use std::process::Stdio;

use crate::support::*;

fn run_with_env(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(args)
        .envs(vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stray_offsite_variables_are_ignored_and_real_settings_still_apply() {
    let env = Env::new();
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);

    // What a hook sees (it runs offsite, e.g. `offsite snapshots`): offsite's
    // own variables are passed over silently.
    let hook_vars = [
        ("OFFSITE_EVENT", "after"),
        ("OFFSITE_SOURCE", "app"),
        ("OFFSITE_SOURCE_KIND", "sqlite"),
        ("OFFSITE_SOURCE_PATH", "/srv/app.db"),
        ("OFFSITE_ERROR", "x"),
        ("OFFSITE_LOG", "warn"),
    ];
    let (code, out, err) = run_with_env(&env, &["snapshots"], &hook_vars);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("app"), "{out}");
    assert!(
        !err.contains("OFFSITE_"),
        "own variables are not warned about: {err}"
    );

    // Anything else is not a setting: a warning naming it, never fatal.
    let (code, out, err) = run_with_env(
        &env,
        &["snapshots"],
        &[
            ("OFFSITE_BOGUS", "1"),
            ("OFFSITE_BACKUP__COMPRESION_LEVEL", "5"),
            ("OFFSITE_SOURCES__NAME", "x"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    for var in [
        "OFFSITE_BOGUS",
        "OFFSITE_BACKUP__COMPRESION_LEVEL",
        "OFFSITE_SOURCES__NAME",
    ] {
        assert!(
            err.contains(&format!("warning: ignoring {var}")),
            "{var}: {err}"
        );
    }

    // A documented setting is read, and a bad value in it is a config error.
    let (code, _, err) = run_with_env(
        &env,
        &["snapshots"],
        &[("OFFSITE_BACKUP__COMPRESSION_LEVEL", "25")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("backup.compression_level must be 1 to 19"),
        "{err}"
    );
    let (code, _, err) = run_with_env(
        &env,
        &["snapshots"],
        &[("OFFSITE_BACKUP__COMPRESSION_LEVEL", "high")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("backup.compression_level")
            && err.contains("OFFSITE_BACKUP__COMPRESSION_LEVEL"),
        "{err}"
    );
    let (code, _, err) = run_with_env(
        &env,
        &["snapshots"],
        &[("OFFSITE_RETENTION__KEEP_WITHIN", "2 weeks")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("retention.keep_within"), "{err}");
}

#[test]
fn a_hook_that_runs_offsite_works() {
    let env = Env::with_sources(|dir| {
        format!(
            "after = \"'{}' --config '{}' snapshots > listed.txt 2> hook-err.txt\"\n",
            bin(),
            dir.join("offsite.toml").display()
        )
    });
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    env.ok(&["backup"]);
    let listed = std::fs::read_to_string(env.dir.path().join("listed.txt")).unwrap();
    let err = std::fs::read_to_string(env.dir.path().join("hook-err.txt")).unwrap();
    assert!(listed.contains("TARGET"), "{listed}{err}");
    assert_eq!(err, "", "nothing to warn about");
}

/// Runs offsite with its stdout a pipe whose reader is already gone, as
/// `offsite snapshots | head -1` is once head has exited.
fn run_with_closed_stdout(env: &Env, args: &[&str]) -> (i32, String) {
    let mut child = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let env = Env::new();
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    for args in [
        &["snapshots"][..],
        &["snapshots", "--json"],
        &["status"],
        &["verify"],
    ] {
        let (code, err) = run_with_closed_stdout(&env, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
    // A backup whose output nobody reads still does all its work.
    let (code, err) = run_with_closed_stdout(&env, &["backup"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshots(&env).len(), 2, "the backup was stored");

    // Where the output is the product (an identity), losing it is a failure.
    let mut child = offsite_command()
        .arg("keygen")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("none was kept"), "{err}");

    // Any other write error is reported, once the work is done.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = offsite_command()
        .arg("--config")
        .arg(env.dir.path().join("offsite.toml"))
        .arg("snapshots")
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: writing the output to stdout") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn usage_mistakes_exit_2_and_failures_exit_1() {
    let env = Env::new();
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    let to = env.dir.path().join("r.db");
    let to = to.to_str().unwrap();
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "--to", to];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let cases: Vec<(&str, (i32, String, String), &str)> = vec![
        (
            "unknown source",
            env.run(&["backup", "--source", "nope"]),
            "no source named \"nope\"",
        ),
        (
            "unknown source (snapshots)",
            env.run(&["snapshots", "--source", "nope"]),
            "no source named \"nope\"",
        ),
        (
            "unknown source (restore)",
            restore(&["--source", "nope", "--latest"]),
            "no source named \"nope\"",
        ),
        (
            "unparseable --at",
            restore(&["--source", "app", "--at", "last tuesday"]),
            "--at \"last tuesday\"",
        ),
        (
            "unknown target",
            env.run(&["backup", "--target", "nope"]),
            "no target named \"nope\"",
        ),
        (
            "unknown target (snapshots)",
            env.run(&["snapshots", "--target", "nope"]),
            "no target named \"nope\"",
        ),
        (
            "unknown target (restore)",
            restore(&["--source", "app", "--latest", "--target", "nope"]),
            "no target named \"nope\"",
        ),
    ];
    for (what, (code, out, err), needle) in cases {
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(err.contains(needle), "{what}: {err}");
    }

    // An operation that fails is exit 1 whatever its message looks like.
    let dir = tempfile::tempdir().unwrap();
    for name in ["config file.db", "invalid config.db"] {
        let out = offsite_command()
            .args(["repair", name])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot read the database"), "{err}");
    }

    // A snapshot that does not exist is not a usage mistake.
    let (code, _, err) = restore(&["--source", "app", "--snapshot", "19990101T000000Z-00000000"]);
    assert_eq!(code, 1, "{err}");

    // An invalid recipient in the config.
    let cfg = env.dir.path().join("offsite.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let start = text.find("recipients = [\"").unwrap() + "recipients = [\"".len();
    let end = start + text[start..].find('"').unwrap();
    std::fs::write(
        &cfg,
        format!("{}age1notakey{}", &text[..start], &text[end..]),
    )
    .unwrap();
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("age1notakey"), "{err}");
}

/// A descriptor the test process opened without `O_CLOEXEC` (as libduckdb
/// opens its files) reaches a plain child but not one the tests start the
/// binary or a server with: otherwise a daemon another test started keeps
/// this test's database open and its restore is refused as "in use".
#[test]
fn children_of_the_tests_inherit_no_stray_descriptor() {
    use std::os::fd::FromRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held-open.db");
    std::fs::write(&path, b"x").unwrap();
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a plain open(2) of a valid C string; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    assert!(fd > 2, "open failed");
    // SAFETY: fd was just opened and is owned by nothing else.
    let _owned = unsafe { std::fs::File::from_raw_fd(fd) };
    let fds_of = |cmd: &mut std::process::Command| {
        let out = cmd.args(["-l", "/proc/self/fd"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plain = fds_of(&mut std::process::Command::new("ls"));
    assert!(
        plain.contains("held-open.db"),
        "the leak this guards against: {plain}"
    );
    let mut guarded = std::process::Command::new("ls");
    backend_objstore::testing::without_inherited_fds(&mut guarded);
    let guarded = fds_of(&mut guarded);
    assert!(!guarded.contains("held-open.db"), "{guarded}");
}
