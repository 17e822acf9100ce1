//! `offsite config`: the configuration offsite resolves (the file the lookup
//! found, merged with the `OFFSITE_*` settings of the environment, relative
//! paths made absolute), which file that is and what chose it, and which
//! environment variables took part. It must never print a secret: values of
//! secret settings ([`is_secret`]), the path, query and user info of
//! notification URLs (a webhook's or healthcheck's token is its path) and
//! the user info and query of any other URL are replaced by
//! [`REDACTED`], and environment variables are listed by name only.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::config::{self, Config, Located, Origin};
use crate::config_env::{self, Variable};

pub const REDACTED: &str = "<redacted>";

pub fn run(located: &Located, as_json: bool) -> Result<()> {
    // The same checks, and the same errors, as every other command.
    let cfg = config::load(&located.path)?;
    let mut merged: Value = config::figment(&located.path, |_| {})
        .extract()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context(crate::usage::Usage::Config(located.path.clone()))?;
    resolve_paths(&cfg, &mut merged);
    // `[[serve.tokens]]` (a name that reads as a secret) holds SHA-256
    // hashes of the tokens, not tokens: shown as they are.
    let tokens = merged.pointer_mut("/serve/tokens").map(Value::take);
    redact(&mut merged, false);
    if let Some(tokens) = tokens {
        merged["serve"]["tokens"] = tokens;
    }
    let file = std::path::absolute(&located.path).unwrap_or_else(|_| located.path.clone());
    let environment = environment(cfg.serve.is_some());
    if as_json {
        let vars: Vec<Value> = environment
            .iter()
            .map(|(name, var)| match var {
                Variable::Setting(s) => json!({"variable": name, "use": "setting", "setting": s}),
                Variable::Own => json!({"variable": name, "use": "own"}),
                _ => json!({"variable": name, "use": "ignored"}),
            })
            .collect();
        let out = json!({
            "file": file,
            "origin": origin_name(located.origin),
            "environment": vars,
            "config": merged,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("# file: {} ({})", file.display(), located.origin.describe());
    for (name, var) in &environment {
        match var {
            Variable::Setting(s) => println!("# environment: {name} sets {s}"),
            Variable::Own => println!("# environment: {name} is set (not a setting)"),
            _ => println!("# environment: {name} is ignored: not a setting"),
        }
    }
    println!("# secrets are shown as \"{REDACTED}\"; settings not shown take their defaults");
    let text = toml::to_string(&merged).context("formatting the configuration as TOML")?;
    print!("{text}");
    Ok(())
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Flag => "flag",
        Origin::Env => "env",
        Origin::WorkingDir => "working_dir",
        Origin::System => "system",
    }
}

/// The `OFFSITE_*` variables that are set, by name, with what each is
/// (`serve`: the file has a `[serve]` section).
fn environment(serve: bool) -> Vec<(String, Variable)> {
    let settings = config_env::settings(serve);
    let mut vars: Vec<(String, Variable)> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .map(|k| {
            let v = config_env::classify(&k, &settings);
            (k, v)
        })
        .filter(|(_, v)| *v != Variable::Other)
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Replaces the paths of the file with the absolute ones [`config::load`]
/// made of them, so the output says which files offsite would really use.
fn resolve_paths(cfg: &Config, v: &mut Value) {
    let set = |v: Option<&mut Value>, p: &std::path::Path| {
        if let Some(v) = v {
            let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            *v = Value::String(p.display().to_string());
        }
    };
    if let Some(p) = &cfg.encryption.writer_key_file {
        set(v.pointer_mut("/encryption/writer_key_file"), p);
    }
    if let Some(p) = &cfg.encryption.identity_file {
        set(v.pointer_mut("/encryption/identity_file"), p);
    }
    if let Some(p) = &cfg.status.prometheus_file {
        set(v.pointer_mut("/status/prometheus_file"), p);
    }
    if let Some(p) = &cfg.state_dir {
        set(v.pointer_mut("/state_dir"), p);
    }
    for (i, s) in cfg.sources.iter().enumerate() {
        set(v.pointer_mut(&format!("/sources/{i}/path")), &s.path);
    }
    for (i, t) in cfg.targets.iter().enumerate() {
        for key in ["path", "service_account_path"] {
            if let Some(Value::String(p)) = t.settings.get(key) {
                set(
                    v.pointer_mut(&format!("/targets/{i}/{key}")),
                    std::path::Path::new(p),
                );
            }
        }
    }
}

/// Whether a setting of this name holds a secret: keys, key ids, secrets,
/// tokens, passwords, passphrases and credentials, whatever the backend.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "secret",
        "token",
        "password",
        "passphrase",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Redacts `v` in place; `in_notify` is true under `[[notify]]`.
fn redact(v: &mut Value, in_notify: bool) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if is_secret(k) {
                    *child = Value::String(REDACTED.into());
                } else {
                    redact(child, in_notify || k == "notify");
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| redact(c, in_notify)),
        Value::String(s) => {
            if let Some(r) = redact_url(s, in_notify) {
                *s = r;
            }
        }
        _ => {}
    }
}

/// `s` with its secret parts replaced, if it is a URL that has any.
fn redact_url(s: &str, whole_path: bool) -> Option<String> {
    let mut url = reqwest::Url::parse(s).ok()?;
    if url.cannot_be_a_base() {
        return None;
    }
    let mut changed = false;
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username(REDACTED);
        let _ = url.set_password(None);
        changed = true;
    }
    if url.query().is_some() {
        url.set_query(Some(REDACTED));
        changed = true;
    }
    if whole_path && url.path() != "/" && !url.path().is_empty() {
        url.set_path(REDACTED);
        changed = true;
    }
    url.set_fragment(None);
    // Url percent-encodes '<' and '>': put the marker back as it is written.
    changed.then(|| {
        url.to_string()
            .replace("%3Credacted%3E", REDACTED)
            .replace("%3credacted%3e", REDACTED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_and_urls_are_redacted() {
        for name in [
            "secret_access_key",
            "access_key_id",
            "session_token",
            "application_key",
            "application_key_id",
            "password",
        ] {
            assert!(is_secret(name), "{name}");
        }
        for name in ["bucket", "endpoint", "recipients", "identity_file", "url"] {
            assert!(!is_secret(name), "{name}");
        }
        assert_eq!(
            redact_url("https://hc-ping.com/1234-abcd", true).unwrap(),
            "https://hc-ping.com/<redacted>"
        );
        assert_eq!(
            redact_url("https://user:pw@minio.local:9000/x?sig=1", false).unwrap(),
            "https://<redacted>@minio.local:9000/x?<redacted>"
        );
        assert_eq!(redact_url("https://s3.example.com", false), None);
        assert_eq!(redact_url("/var/backups", true), None);
    }
}
