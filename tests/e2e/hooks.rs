//! Source hooks through the binary: order, environment, working directory,
//! a failing `before`, and `on_error` receiving the error.

use crate::support::*;

fn log(env: &Env) -> Vec<String> {
    std::fs::read_to_string(env.dir.path().join("hooks.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn hooks_run_once_around_all_targets_in_order() {
    // The database only appears when `before` runs, so a snapshot proves it
    // ran first; a second target shows the hooks run once per source.
    let env = Env::with_sources(|dir| {
        format!(
            "before = \"echo \\\"$OFFSITE_EVENT $OFFSITE_SOURCE $OFFSITE_SOURCE_KIND\\\" >> hooks.log; cp seed.db app.db\"\n\
             after = \"echo \\\"$OFFSITE_EVENT $(test -f app.db && echo read)\\\" >> hooks.log\"\n\
             on_error = \"echo on_error >> hooks.log\"\n\n\
             [[targets]]\nname = \"second\"\nkind = \"local\"\npath = \"{}\"\n",
            dir.join("repo2").display()
        )
    });
    env.make_db(&env.dir.path().join("seed.db"), 500);
    let out = env.ok(&["backup"]);
    assert!(out.contains("app -> local: snapshot"), "{out}");
    assert!(out.contains("app -> second: snapshot"), "{out}");
    assert_eq!(log(&env), ["before app sqlite", "after read"]);
    // One snapshot, held by both targets (in config order: `second` is
    // written before the default target here).
    let listed = snapshots(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["targets"], serde_json::json!(["second", "local"]));
}

#[test]
fn a_failing_before_hook_aborts_the_source_and_on_error_gets_the_error() {
    let env = Env::with_sources(|_| {
        "before = \"echo stopping >> hooks.log; echo 'cannot stop the app' >&2; exit 3\"\n\
         after = \"echo after >> hooks.log\"\n\
         on_error = \"printf '%s|%s\\\\n' \\\"$OFFSITE_EVENT\\\" \\\"$OFFSITE_ERROR\\\" >> hooks.log\"\n"
            .to_string()
    });
    env.make_db(&env.db(), 200);
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("before hook"), "{err}");
    assert!(err.contains("cannot stop the app"), "{err}");
    assert!(!out.contains("snapshot"), "{out}");
    let lines = log(&env);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "stopping");
    assert!(
        lines[1].starts_with("on_error|") && lines[1].contains("cannot stop the app"),
        "{lines:?}"
    );
    assert!(snapshots(&env).is_empty(), "no snapshot was written");
    assert!(find_files(&env.repo().join("packs")).is_empty());
}

#[test]
fn after_runs_even_when_the_backup_fails_and_on_error_names_the_cause() {
    // No app.db: reading the source fails after `before` stopped the "app".
    let env = Env::with_sources(|_| {
        "before = \"echo before >> hooks.log\"\n\
         after = \"echo after >> hooks.log\"\n\
         on_error = \"echo \\\"on_error $OFFSITE_ERROR\\\" >> hooks.log\"\n"
            .to_string()
    });
    let (code, out, err) = env.run(&["backup", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    let lines = log(&env);
    assert_eq!(lines[..2], ["before", "after"], "{lines:?}");
    assert!(
        lines[2].starts_with("on_error") && lines[2].contains("app.db"),
        "{lines:?}"
    );
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(results[0]["ok"], false);
}

#[test]
fn an_empty_hook_is_a_config_error() {
    let env = Env::with_sources(|_| "after = \" \"\n".to_string());
    let (code, _, err) = env.run(&["backup"]);
    assert_eq!(code, 2);
    assert!(err.contains("after is empty"), "{err}");
}
