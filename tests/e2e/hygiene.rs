//! Configuration and process hygiene through the binary: exit code 2 for
//! usage mistakes.

use crate::support::*;

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
