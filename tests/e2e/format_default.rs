//! Format 2 is what a backup makes of an empty target (where the owner's
//! identity is), a host that cannot create one says what to do and writes
//! nothing, and format 1 (opted into with `format = 1`, or found on a
//! target) is used by restore, verify and drill only with the explicit
//! unsigned override: the rule that also stops a bucket writer from
//! downgrading a format 2 repository to forged format 1 objects.

use serde_json::Value;

use crate::support::*;

fn config_of(env: &Env) -> Value {
    json(&std::fs::read_to_string(env.repo().join("config")).unwrap())
}

fn restore_test(env: &Env, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["restore", "--source", "app", "--latest", "--test"];
    args.extend_from_slice(extra);
    let (code, out, err) = env.run(&args);
    (code, format!("{out}{err}"))
}

#[test]
fn new_repositories_are_format_2() {
    let env = Env::new();
    env.make_db(&env.db(), 2000);
    env.ok(&["backup"]);
    let config = config_of(&env);
    assert_eq!(config["version"], 2, "{config}");
    assert!(env.repo().join("keyring/00000001").exists());
    let listed = snapshots(&env);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["trust"]["state"], "signed", "{listed:?}");

    let to = env.dir.path().join("restored.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to), dump(&env.db()));
    assert_eq!(integrity(&to), "ok");
    // The owner's key set is the one `key` commands see.
    let keys = env.ok(&["key", "list"]);
    assert!(keys.contains("owner"), "{keys}");
}

#[test]
fn a_host_without_the_owner_identity_does_not_create_a_repository() {
    let env = Env::new();
    env.make_db(&env.db(), 100);
    env.edit_config(|t| t.replace("identity_file = \"key.txt\"\n", ""));
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("holds no repository yet, and this host cannot create one"),
        "{err}"
    );
    assert!(err.contains("offsite init --target NAME"), "{err}");
    assert!(err.contains("format = 1"), "{err}");
    assert!(
        !env.repo().exists() || find_files(&env.repo()).is_empty(),
        "nothing may be written: {:?}",
        find_files(&env.repo())
    );
}

#[test]
fn a_format_1_repository_needs_the_unsigned_override() {
    let env = Env::new();
    env.make_db(&env.db(), 500);
    env.edit_config(|t| {
        t.replace(
            "name = \"local\"\nkind = \"local\"\n",
            "name = \"local\"\nkind = \"local\"\nformat = 1\n",
        )
    });
    env.ok(&["backup"]);
    assert_eq!(config_of(&env)["version"], 1);

    for args in [
        vec!["restore", "--source", "app", "--latest", "--test"],
        vec!["verify"],
        vec!["drill"],
    ] {
        let (code, out, err) = env.run(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("holds a format 1 repository, whose snapshots are not signed"),
            "{args:?}: {err}"
        );
        assert!(err.contains("--allow-unsigned"), "{args:?}: {err}");
    }
    // Listing restores nothing and needs no override.
    assert_eq!(snapshots(&env).len(), 1);

    let (code, text) = restore_test(&env, &["--allow-unsigned"]);
    assert_eq!(code, 0, "{text}");
    env.ok(&["verify", "--allow-unsigned"]);
    env.ok(&["drill", "--allow-unsigned"]);
    // The target's own setting does the same, for scheduled jobs.
    env.edit_config(|t| t.replace("format = 1\n", "format = 1\nallow_unsigned = true\n"));
    let (code, text) = restore_test(&env, &[]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn a_downgraded_config_is_refused() {
    // A bucket writer replaces a format 2 repository's config with a
    // format 1 one (and would then add format 1 objects it made with the
    // public recipients): nothing is restored from it without the override.
    let env = Env::new();
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    let recipient = std::fs::read_to_string(env.key())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    let other = Env::new().format_1();
    other.edit_config(|t| {
        let start = t.find("recipients = [\"").unwrap() + "recipients = [\"".len();
        let end = start + t[start..].find('"').unwrap();
        format!("{}{recipient}{}", &t[..start], &t[end..])
    });
    other.make_db(&other.db(), 10);
    other.ok(&["backup"]);
    std::fs::copy(other.repo().join("config"), env.repo().join("config")).unwrap();

    let (code, text) = restore_test(&env, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("holds a format 1 repository, whose snapshots are not signed"),
        "{text}"
    );
}

fn add_target(env: &Env, name: &str, path: &std::path::Path) {
    env.edit_config(|t| {
        format!(
            "{t}\n[[targets]]\nname = \"{name}\"\nkind = \"local\"\npath = \"{}\"\n",
            path.display()
        )
    });
}

fn keyset_of(dir: &std::path::Path) -> Value {
    json(&std::fs::read_to_string(dir.join("config")).unwrap())["keyset"].clone()
}

#[test]
fn the_targets_of_a_run_share_one_key_set_whatever_fails() {
    // "local" holds stray objects: it is refused, and the other two still
    // get one key set between them, not one each.
    let env = Env::new();
    std::fs::create_dir_all(env.repo()).unwrap();
    std::fs::write(env.repo().join("stray.txt"), b"not offsite's").unwrap();
    let (b, c) = (env.dir.path().join("b"), env.dir.path().join("c"));
    add_target(&env, "b", &b);
    add_target(&env, "c", &c);
    env.make_db(&env.db(), 200);
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("it is not empty"), "{err}");
    assert_eq!(keyset_of(&b), keyset_of(&c));
    assert!(!env.repo().join("config").exists());

    // A target added later joins that key set; one snapshot id everywhere.
    let d = env.dir.path().join("d");
    add_target(&env, "d", &d);
    std::fs::remove_file(env.repo().join("stray.txt")).unwrap();
    let out = env.ok(&["backup", "--target", "d", "--json"]);
    assert_eq!(
        keyset_of(&d),
        keyset_of(&b),
        "joined, though not in the run: {out}"
    );
    let results = json(&env.ok(&["backup", "--json"]));
    let ids: Vec<&Value> = (results.as_array().unwrap().iter())
        .map(|r| &r["snapshot"]["id"])
        .collect();
    assert_eq!(ids.len(), 4, "{results}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one read for all: {results}"
    );
    assert_eq!(keyset_of(&env.repo()), keyset_of(&b));
}

#[test]
fn no_repository_is_created_while_a_target_that_may_hold_the_key_set_is_unreadable() {
    let env = Env::new();
    env.make_db(&env.db(), 200);
    env.ok(&["backup"]);
    // "local" holds the key set; now its config cannot be read.
    let config = env.repo().join("config");
    let saved = std::fs::read(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    std::fs::create_dir(&config).unwrap();
    let new = env.dir.path().join("new");
    add_target(&env, "new", &new);
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("it is not created while") && err.contains("cannot be read"),
        "{err}"
    );
    assert!(!new.join("config").exists());
    std::fs::remove_dir(&config).unwrap();
    std::fs::write(&config, saved).unwrap();
    env.ok(&["backup"]);
    assert_eq!(keyset_of(&new), keyset_of(&env.repo()));
}

fn objects(dir: &std::path::Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let base = dir.join(prefix);
    (find_files(&base).into_iter())
        .map(|p| {
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn key_changes_keep_the_targets_of_a_key_set_identical_and_catch_up_a_missed_one() {
    let env = Env::new();
    let b = env.dir.path().join("b");
    add_target(&env, "b", &b);
    env.make_db(&env.db(), 300);
    env.ok(&["backup"]);
    let colleague = crate::keys::another_identity(&env, "colleague.txt");
    env.ok(&["key", "add", &colleague]);
    for prefix in ["keyring", "keys"] {
        assert!(
            objects(&env.repo(), prefix) == objects(&b, prefix),
            "{prefix}/ differs between the targets"
        );
    }

    // "b" is away during the removal: it misses it, and says so.
    let away = env.dir.path().join("b-away");
    std::fs::rename(&b, &away).unwrap();
    std::fs::write(&b, b"unmounted").unwrap();
    let (code, out, err) = env.run(&["key", "remove", &colleague]);
    assert_eq!(code, 1, "{out}{err}");
    std::fs::remove_file(&b).unwrap();
    std::fs::rename(&away, &b).unwrap();
    let (code, out, err) = env.run(&["backup"]);
    assert_eq!(code, 1, "b is behind this host's memory: {out}{err}");

    // The same command again finds the removal made and brings "b" level.
    let out = env.ok(&["key", "remove", &colleague]);
    assert!(out.contains("b: removed"), "{out}");
    for prefix in ["keyring", "keys"] {
        assert!(
            objects(&env.repo(), prefix) == objects(&b, prefix),
            "{prefix}/ differs between the targets"
        );
    }
    env.ok(&["backup"]);
    let to = env.dir.path().join("from-b.db");
    env.ok(&[
        "restore",
        "--source",
        "app",
        "--latest",
        "--target",
        "b",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(dump(&to), dump(&env.db()));
}
