//! Format 2 key administration through the binary (in development):
//! `offsite init`, `key list | add | remove`, `writer keygen | add | list`,
//! with real age keys and a local target.

use crate::support::*;

/// A fresh identity file in `env`'s directory; returns its recipient.
pub(crate) fn another_identity(env: &Env, name: &str) -> String {
    let path = env.dir.path().join(name);
    let out = offsite_command()
        .args(["keygen", "-o", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn keyring(env: &Env) -> serde_json::Value {
    let listed = json(&env.ok(&["key", "list", "--json"]));
    assert_eq!(listed[0]["target"], "local");
    listed[0]["keyring"].clone()
}

#[test]
fn key_commands_list_add_remove() {
    let env = Env::new();
    let out = env.ok(&["init"]);
    assert!(out.contains("created a format 2 repository"), "{out}");
    assert!(
        out.contains("encryption.owner_key on other hosts: offsite-owner1"),
        "{out}"
    );
    let config = std::fs::read_to_string(env.repo().join("config")).unwrap();
    assert!(config.contains("\"version\": 2"), "{config}");
    let (code, _, err) = env.run(&["init"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not empty"), "{err}");

    let listed = env.ok(&["key", "list"]);
    assert!(
        listed.contains("local: keyring serial 1, generation 1"),
        "{listed}"
    );
    assert!(listed.contains("(owner)"), "{listed}");

    // add, then again (no change, exit 0)
    let colleague = another_identity(&env, "colleague.txt");
    let added = env.ok(&["key", "add", &colleague, "--name", "colleague"]);
    assert!(added.contains("local: added colleague"), "{added}");
    assert!(added.contains("keyring serial 2"), "{added}");
    let again = env.ok(&["key", "add", &colleague]);
    assert!(
        again.contains("already a recipient; nothing changed"),
        "{again}"
    );
    let k = keyring(&env);
    assert_eq!(k["serial"], 2);
    assert_eq!(k["recipients"].as_array().unwrap().len(), 2);

    // a writer key, authorised
    let wkey = env.dir.path().join("writer.key");
    let out = offsite_command()
        .args(["writer", "keygen", "-o", wkey.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let writer = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(writer.starts_with("offsite-writer1"), "{writer}");
    env.ok(&["writer", "add", "app-1", &writer]);
    let writers = env.ok(&["writer", "list"]);
    assert!(
        writers.contains("writer    app-1 offsite-writer1"),
        "{writers}"
    );
    let (code, _, err) = env.run(&[
        "writer",
        "remove",
        "app-1",
        "--compromised-since",
        "yesterday",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--compromised-since \"yesterday\""), "{err}");

    // remove: a new generation, and what it did not do
    let removed = env.ok(&["key", "remove", &colleague]);
    assert!(removed.contains("local: removed"), "{removed}");
    assert!(
        removed.contains("Nothing already stored was re-encrypted"),
        "{removed}"
    );
    let k = keyring(&env);
    assert_eq!(
        (k["serial"].as_u64(), k["generation"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(k["removed_recipients"][0]["recipient"], colleague.as_str());
    let listed = env.ok(&["key", "list"]);
    assert!(listed.contains("removed   colleague"), "{listed}");

    // refusals: the owner (exit 1), a malformed recipient and pin (exit 2)
    let owner = std::fs::read_to_string(env.dir.path().join("offsite.toml")).unwrap();
    let owner_recipient = owner.split('"').find(|s| s.starts_with("age1")).unwrap();
    let (code, _, err) = env.run(&["key", "remove", owner_recipient]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("owner's own recipient"), "{err}");
    let (code, _, err) = env.run(&["key", "add", "age1nope"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = env.run_with(
        &["key", "list"],
        &[("OFFSITE_ENCRYPTION__OWNER_KEY", "offsite-owner1nope")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("encryption.owner_key"), "{err}");
}
