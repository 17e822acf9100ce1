//! Turns `[[targets]]` entries into storage backends. The only place that
//! knows which backend crates exist: [`BACKENDS`] has one line per backend,
//! and everything else about a kind (its settings, which of them are paths,
//! which are deprecated, how to open it) comes from the crate's
//! [`Backend`] implementation.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use backup_core::storage::{Backend, Storage};
use serde::de::DeserializeOwned;

use crate::config::TargetConfig;

/// The kinds of target this binary offers. Adding a backend is a line here
/// (and the crate in Cargo.toml); see docs/adding-a-backend.md.
const BACKENDS: &[Registered] = &[
    Registered::of::<backend_local::LocalStorage>(),
    Registered::of::<backend_b2::B2Storage>(),
    Registered::of::<backend_s3::S3Storage>(),
    Registered::of::<backend_gcs::GcsStorage>(),
];

/// One backend, with its types erased so that all fit in one list.
struct Registered {
    kind: &'static str,
    path_settings: &'static [&'static str],
    /// Parses the settings; returns the deprecation warnings.
    check: fn(&TargetConfig) -> Result<Vec<String>>,
    open: fn(&TargetConfig) -> Result<Arc<dyn Storage>>,
}

impl Registered {
    const fn of<B: Backend>() -> Self {
        Registered {
            kind: B::KIND,
            path_settings: B::PATH_SETTINGS,
            check: |t| settings::<B::Config>(t).map(|c| B::deprecations(&c)),
            open: |t| {
                let storage =
                    B::open(&settings(t)?).with_context(|| format!("target {:?}", t.name))?;
                Ok(Arc::new(storage))
            },
        }
    }
}

fn settings<T: DeserializeOwned>(t: &TargetConfig) -> Result<T> {
    let value = serde_json::Value::Object(t.settings.clone().into_iter().collect());
    serde_json::from_value(value).with_context(|| {
        format!(
            "invalid settings for target {:?} (kind = {:?})",
            t.name, t.kind
        )
    })
}

fn registered(t: &TargetConfig) -> Result<&'static Registered> {
    match BACKENDS.iter().find(|b| b.kind == t.kind) {
        Some(b) => Ok(b),
        None => bail!(
            "target {:?}: unknown kind {:?} (known kinds: {})",
            t.name,
            t.kind,
            kinds().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The known kinds, in the order of [`BACKENDS`].
pub fn kinds() -> impl Iterator<Item = &'static str> {
    BACKENDS.iter().map(|b| b.kind)
}

/// The settings of targets of `kind` that are file paths (to be made
/// relative to the config file); none for an unknown kind.
pub fn path_settings(kind: &str) -> &'static [&'static str] {
    BACKENDS
        .iter()
        .find(|b| b.kind == kind)
        .map_or(&[], |b| b.path_settings)
}

/// Checks a target's settings without contacting it, so a typo is reported
/// when the config is loaded rather than halfway through a backup. Settings
/// that still work but are deprecated are returned as warnings.
pub fn check(t: &TargetConfig) -> Result<Vec<String>> {
    (registered(t)?.check)(t)
}

/// Opens one configured target.
pub fn open(t: &TargetConfig) -> Result<Arc<dyn Storage>> {
    (registered(t)?.open)(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, settings: serde_json::Value) -> TargetConfig {
        TargetConfig {
            name: "t".into(),
            kind: kind.into(),
            format: Default::default(),
            allow_unsigned: false,
            settings: serde_json::from_value(settings).unwrap(),
        }
    }

    #[test]
    fn the_registry_knows_each_kind_once() {
        let kinds: Vec<_> = kinds().collect();
        assert_eq!(kinds, ["local", "b2", "s3", "gcs"]);
        assert_eq!(path_settings("local"), ["path"]);
        assert_eq!(path_settings("gcs"), ["service_account_path"]);
        assert!(path_settings("s3").is_empty() && path_settings("nope").is_empty());
        let err = check(&target("nope", serde_json::json!({}))).unwrap_err();
        assert!(
            format!("{err:#}").contains("known kinds: local, b2, s3, gcs"),
            "{err:#}"
        );
    }

    #[test]
    fn deprecated_settings_load_with_a_warning() {
        let b2 = target(
            "b2",
            serde_json::json!({"bucket": "b", "part_size": 5_000_000}),
        );
        let warned = check(&b2).unwrap();
        assert!(warned[0].contains("part_size_mib = 5"), "{warned:?}");
        let s3 = target("s3", serde_json::json!({"bucket": "b", "max_retries": 8}));
        assert!(check(&s3).unwrap()[0].contains("max_retries"));
        let gcs = target(
            "gcs",
            serde_json::json!({"bucket": "b", "part_size_mib": 8}),
        );
        assert!(check(&gcs).unwrap().is_empty());
        let typo = target("b2", serde_json::json!({"bucket": "b", "part_size_mb": 8}));
        assert!(check(&typo).is_err());
    }
}
