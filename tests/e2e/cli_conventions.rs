//! What users of restic and cargo expect of a command line: help on every
//! flag and subcommand, shell completions, a man page, `--quiet`, the config
//! lookup order, and `offsite config` showing the resolved configuration
//! without its secrets.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// Runs the binary with no OFFSITE_* variable of the caller's environment.
fn offsite(args: &[&str], dir: &Path) -> std::process::Output {
    let mut cmd = offsite_command();
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("OFFSITE_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).current_dir(dir).output().unwrap()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The entries of clap's `-h` output that have no help text, and the
/// subcommands it lists. An entry is a line indented by exactly two spaces
/// under a section header ("Options:", "Commands:", "Arguments:"); its help
/// follows after two or more spaces, or on the next, deeper indented, line.
fn undocumented_and_subcommands(help: &str) -> (Vec<String>, Vec<String>) {
    let lines: Vec<&str> = help.lines().collect();
    let (mut missing, mut subcommands) = (Vec::new(), Vec::new());
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let entry = line.trim_start();
        let indent = line.len() - entry.len();
        // Long flags without a short one are indented past the `-x, ` column.
        let is_entry = indent == 2 || (indent == 6 && entry.starts_with("--"));
        if section.is_empty() || !is_entry {
            continue;
        }
        let entry = entry.trim_end();
        let (name, text) = entry.split_once("  ").unwrap_or((entry, ""));
        let next_line_help = lines.get(i + 1).is_some_and(|n| {
            let t = n.trim_start();
            !t.is_empty() && n.len() - t.len() > 6
        });
        if text.trim().is_empty() && !next_line_help {
            missing.push(format!("{section} {name}"));
        }
        if section == "Commands:" && name != "help" {
            subcommands.push(name.to_string());
        }
    }
    (missing, subcommands)
}

#[test]
fn every_flag_and_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = Vec::new();
    let mut queue = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        seen += 1;
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("-h");
        let out = offsite(&args, dir.path());
        assert!(out.status.success(), "offsite {args:?}: {}", stderr(&out));
        let (undocumented, subs) = undocumented_and_subcommands(&stdout(&out));
        let at = format!("offsite {}", path.join(" "));
        missing.extend(undocumented.into_iter().map(|m| format!("{at}: {m}")));
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            queue.push(p);
        }
    }
    assert!(seen > 15, "walked only {seen} commands");
    assert!(
        missing.is_empty(),
        "entries without help text:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_help_checker_notices_an_entry_without_help() {
    let help = "Usage: x\n\nCommands:\n  run   Does it\n  bare\n\nOptions:\n      --json  \n  \
                -s, --source <SOURCE>  A source\n      --long-one <X>\n          Help below\n\
                \nArguments:\n  <PATH>\n";
    let (missing, subs) = undocumented_and_subcommands(help);
    assert_eq!(
        missing,
        ["Commands: bare", "Options: --json", "Arguments: <PATH>"]
    );
    assert_eq!(subs, ["run", "bare"]);
}

/// The subcommands every generated document must mention.
const SUBCOMMANDS: &[&str] = &[
    "keygen",
    "init",
    "key",
    "writer",
    "backup",
    "snapshots",
    "restore",
    "prune",
    "pin",
    "unpin",
    "unlock",
    "verify",
    "targets",
    "drill",
    "status",
    "daemon",
    "repair",
    "demo",
    "config",
    "completions",
    "man",
];

/// Runs `tool args` and insists that it exists and succeeds.
fn check_with(tool: &str, args: &[&str], what: &str) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed to check {what} ({e}): run scripts/install-test-deps.sh or apt-get install {tool}")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} rejects {what}:\n{}",
        stderr(&out)
    );
    stderr(&out)
}

#[test]
fn completions_for_bash_zsh_and_fish_are_valid_scripts_naming_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, checker, args) in [
        ("bash", "bash", &["-n"][..]),
        ("zsh", "zsh", &["-n"][..]),
        ("fish", "fish", &["--no-execute"][..]),
    ] {
        let out = offsite(&["completions", shell], dir.path());
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.len() > 1000, "{shell}: {script}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(
            script.contains("source") && script.contains("quiet"),
            "{shell}"
        );
        let file = dir.path().join(format!("offsite.{shell}"));
        std::fs::write(&file, &script).unwrap();
        let mut a = args.to_vec();
        a.push(file.to_str().unwrap());
        check_with(checker, &a, &format!("the {shell} completion script"));
    }
    // A shell clap_complete does not know is a usage error.
    let out = offsite(&["completions", "tcsh"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_prints_offsite_1_and_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = offsite(&["man"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains("\n.TH offsite 1"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("\noffsite\\-{sub}(1)\n")),
            "offsite(1) lacks {sub}"
        );
    }
    let file = dir.path().join("offsite.1");
    std::fs::write(&file, &page).unwrap();
    // -ww: every warning; -z: format, print nothing.
    let warnings = check_with(
        "groff",
        &["-man", "-Tutf8", "-ww", "-z", file.to_str().unwrap()],
        "offsite.1",
    );
    assert!(
        warnings.is_empty(),
        "groff warns about offsite.1: {warnings}"
    );

    let pages = dir.path().join("pages");
    let out = offsite(&["man", "--dir", pages.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    for sub in SUBCOMMANDS.iter().chain(&["targets-check"]) {
        let p = pages.join(format!("offsite-{sub}.1"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains(".TH offsite-"), "{text}");
    }
    let backup = std::fs::read_to_string(pages.join("offsite-backup.1")).unwrap();
    assert!(backup.contains("Back up this source only"), "{backup}");
}

#[test]
fn quiet_backup_prints_nothing_on_success_and_still_reports_failure() {
    let env = Env::new();
    env.make_db(&env.db(), 200);
    let (code, out, err) = env.run(&["backup", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "stdout of a quiet backup");
    assert_eq!(err, "", "stderr of a quiet backup");
    assert_eq!(
        snapshots(&env).len(),
        1,
        "the quiet backup stored its snapshot"
    );
    // --json is the output asked for: --quiet keeps it.
    let (code, out, _) = env.run(&["-q", "backup", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["ok"], true);
    // As does a listing.
    assert!(env.ok(&["-q", "snapshots"]).contains("app"));

    std::fs::remove_file(env.db()).unwrap();
    let (code, out, err) = env.run(&["-q", "backup"]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("FAILED") && err.contains("app.db"), "{err}");

    let (code, _, err) = env.run(&["-q", "-v", "backup"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// A config that holds one secret of every kind offsite knows.
const SECRETS: &[&str] = &[
    "AKIAEXAMPLEKEYID",
    "s3-secret-wJalrXUtnFEMI",
    "s3-session-token-FwoGZX",
    "b2-key-id-0012345",
    "b2-application-key-K001xyz",
    "minio-user",
    "minio-pass",
    "T000/B000/hooktoken123",
    "hc-uuid-5f2a9c",
    "sig=querytoken",
    "passphrase-from-env-42",
];

fn config_with_secrets(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("offsite.toml");
    std::fs::write(
        &path,
        "[encryption]\n\
         recipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
         identity_file = \"key.txt\"\n\
         [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\
         [[targets]]\nname = \"s3\"\nkind = \"s3\"\nbucket = \"b\"\n\
         endpoint = \"http://minio-user:minio-pass@127.0.0.1:9000/?sig=querytoken\"\nallow_http = true\n\
         access_key_id = \"AKIAEXAMPLEKEYID\"\nsecret_access_key = \"s3-secret-wJalrXUtnFEMI\"\n\
         session_token = \"s3-session-token-FwoGZX\"\n\
         [[targets]]\nname = \"b2\"\nkind = \"b2\"\nbucket = \"b\"\n\
         application_key_id = \"b2-key-id-0012345\"\napplication_key = \"b2-application-key-K001xyz\"\n\
         [[targets]]\nname = \"disk\"\nkind = \"local\"\npath = \"repo\"\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/services/T000/B000/hooktoken123\"\n\
         [[notify]]\nkind = \"healthchecks\"\nurl = \"https://hc-ping.com/hc-uuid-5f2a9c\"\n\
         [backup]\ncompression_level = 3\n",
    )
    .unwrap();
    path
}

#[test]
fn config_shows_the_resolved_settings_and_where_they_came_from_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with_secrets(dir.path());
    let run = |args: &[&str]| {
        let mut cmd = offsite_command();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("OFFSITE_")
            {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .args(["--config", path.to_str().unwrap()])
            .args(args)
            .env("OFFSITE_BACKUP__COMPRESSION_LEVEL", "7")
            .env("OFFSITE_IDENTITY_PASSPHRASE", "passphrase-from-env-42")
            .env("OFFSITE_BOGUS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        (stdout(&out), stderr(&out))
    };

    let (text, err) = run(&["config"]);
    for (out, what) in [(&text, "stdout"), (&err, "stderr")] {
        for secret in SECRETS {
            assert!(!out.contains(secret), "{what} shows {secret}:\n{out}");
        }
    }
    assert!(
        text.contains(&format!("# file: {} (given by --config)", path.display())),
        "{text}"
    );
    assert!(
        text.contains("OFFSITE_BACKUP__COMPRESSION_LEVEL sets backup.compression_level"),
        "{text}"
    );
    assert!(
        text.contains("OFFSITE_IDENTITY_PASSPHRASE is set"),
        "{text}"
    );
    assert!(text.contains("OFFSITE_BOGUS is ignored"), "{text}");
    assert!(
        text.contains("compression_level = 7"),
        "the environment wins: {text}"
    );
    assert!(text.contains("https://hc-ping.com/<redacted>"), "{text}");
    assert!(
        text.contains("https://hooks.example.com/<redacted>"),
        "{text}"
    );
    assert!(text.contains("bucket = \"b\""), "{text}");
    // Relative paths are shown as offsite resolves them: next to the file.
    let repo = dir.path().join("repo");
    assert!(
        text.contains(&format!("path = \"{}\"", repo.display())),
        "{text}"
    );
    // What is printed is TOML (the header is comments).
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body.contains("[[targets]]") && body.contains("[encryption]"),
        "{body}"
    );

    let (json, _) = run(&["config", "--json"]);
    for secret in SECRETS {
        assert!(!json.contains(secret), "--json shows {secret}:\n{json}");
    }
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["origin"], "flag");
    assert_eq!(v["config"]["backup"]["compression_level"], 7);
    assert_eq!(v["config"]["targets"][0]["secret_access_key"], "<redacted>");
    assert_eq!(v["config"]["targets"][1]["application_key"], "<redacted>");
    let vars = v["environment"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|e| e["variable"] == "OFFSITE_BACKUP__COMPRESSION_LEVEL"
                && e["setting"] == "backup.compression_level"),
        "{json}"
    );
    assert!(vars
        .iter()
        .any(|e| e["variable"] == "OFFSITE_BOGUS" && e["use"] == "ignored"));
}

#[test]
fn config_lookup_is_flag_then_variable_then_working_directory_and_the_error_lists_all() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let write = |p: &Path, level: u8| {
        std::fs::write(
            p,
            format!("[encryption]\nrecipients = []\n[backup]\ncompression_level = {level}\n"),
        )
        .unwrap();
    };
    let (flag, var, local) = (
        dir.path().join("flag.toml"),
        dir.path().join("var.toml"),
        cwd.join("offsite.toml"),
    );
    write(&flag, 1);
    write(&var, 2);
    write(&local, 3);
    let level = |args: &[&str], var_value: Option<&Path>| {
        let mut cmd = offsite_command();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy()
                .to_ascii_uppercase()
                .starts_with("OFFSITE_")
            {
                cmd.env_remove(k);
            }
        }
        if let Some(v) = var_value {
            cmd.env("OFFSITE_CONFIG", v);
        }
        let out = cmd
            .args(args)
            .args(["config", "--json"])
            .current_dir(&cwd)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err((out.status.code(), stderr(&out)));
        }
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        Ok((
            v["config"]["backup"]["compression_level"].as_i64().unwrap(),
            v["origin"].as_str().unwrap().to_string(),
        ))
    };
    let f = flag.to_str().unwrap();
    assert_eq!(
        level(&["--config", f], Some(&var)).unwrap(),
        (1, "flag".into())
    );
    assert_eq!(level(&[], Some(&var)).unwrap(), (2, "env".into()));
    assert_eq!(level(&[], None).unwrap(), (3, "working_dir".into()));

    // A file named by the flag or the variable must exist: no fallback.
    let (code, err) = level(&[], Some(&dir.path().join("missing.toml"))).unwrap_err();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("missing.toml") && err.contains("$OFFSITE_CONFIG"),
        "{err}"
    );

    std::fs::remove_file(&local).unwrap();
    let out = offsite(&["backup"], &cwd);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    if Path::new("/etc/offsite/offsite.toml").exists() {
        panic!("/etc/offsite/offsite.toml exists on this machine: the lookup found it, the test cannot check the error");
    }
    for place in [
        "--config",
        "$OFFSITE_CONFIG",
        "./offsite.toml",
        "/etc/offsite/offsite.toml",
    ] {
        assert!(err.contains(place), "the error names {place}: {err}");
    }
}
