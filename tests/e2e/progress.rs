//! The progress lines of `verify` and `drill`: drawn on stderr when it is a
//! terminal, and nowhere else: not with `--quiet`, not with `--json`, not
//! when stderr is a pipe or a file (cron mail, logs).
//!
//! A terminal is a pseudo-terminal from util-linux's `script`.

use std::process::Command;

use crate::support::*;

/// Quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs offsite with `env`'s config on a pseudo-terminal (stdout and stderr
/// both go to it): (exit code, everything it wrote).
fn on_a_terminal(env: &Env, args: &[&str]) -> (i32, String) {
    let config = env.dir.path().join("offsite.toml");
    let mut line = format!(
        "stty cols 120 rows 40 2>/dev/null; exec {} --config {}",
        sh_quote(bin()),
        sh_quote(config.to_str().unwrap())
    );
    for a in args {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    let out = Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .current_dir(env.dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `script` ({e}): these tests need a pseudo-terminal from \
                 util-linux's script (apt-get install bsdutils, or util-linux)"
            )
        });
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An environment with one backup of a database big enough that a restore
/// of it takes a moment.
fn backed_up() -> Env {
    let env = Env::new();
    env.make_db(&env.db(), 20_000);
    env.ok(&["backup"]);
    env
}

#[test]
fn verify_and_drill_show_progress_on_a_terminal_only() {
    let env = backed_up();

    // The control: on a terminal, the progress line is drawn.
    let (code, all) = on_a_terminal(&env, &["verify", "--read-data"]);
    assert_eq!(code, 0, "{all}");
    assert!(
        all.contains("verify local: "),
        "no progress line in {all:?}"
    );
    // Format 2 reads every chunk against its keyed id ("read and checked").
    assert!(
        all.contains("local: all 1 snapshots read and checked"),
        "{all:?}"
    );
    let (code, all) = on_a_terminal(&env, &["drill"]);
    assert_eq!(code, 0, "{all}");
    // (The result line is "drill app @ local: PASSED ...": a step is progress.)
    assert!(
        ["starting", "snapshot_exists", "restore"]
            .iter()
            .any(|step| all.contains(&format!("drill app @ local: {step} ["))),
        "no progress line in {all:?}"
    );

    // --quiet: nothing at all, on a terminal too.
    for args in [
        &["--quiet", "verify", "--read-data"][..],
        &["-q", "verify"],
        &["-q", "verify", "--read-data-subset", "1/1"],
        &["-q", "drill"],
    ] {
        let (code, all) = on_a_terminal(&env, args);
        assert_eq!(code, 0, "{args:?}: {all}");
        assert_eq!(all, "", "{args:?} on a terminal");
    }

    // --json: the JSON and nothing else, on a terminal too.
    for args in [
        &["verify", "--read-data", "--json"][..],
        &["drill", "--json"],
    ] {
        let (code, all) = on_a_terminal(&env, args);
        assert_eq!(code, 0, "{args:?}: {all}");
        assert!(!all.contains('\x1b'), "{args:?}: escape codes in {all:?}");
        serde_json::from_str::<serde_json::Value>(&all)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {all:?}"));
    }

    // Not a terminal: stderr stays empty, stdout has the results only.
    for args in [
        &["verify", "--read-data"][..],
        &["verify", "--read-data-subset", "1/1"],
        &["drill"],
    ] {
        let (code, out, err) = env.run(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}: stderr of a pipe");
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    }
}
