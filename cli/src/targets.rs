//! Turns `[[targets]]` entries into storage backends. The only place that
//! knows which backend crates exist; adding a backend means one arm here.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use backup_core::storage::Storage;
use serde::de::DeserializeOwned;

use crate::config::TargetConfig;

fn settings<T: DeserializeOwned>(t: &TargetConfig) -> Result<T> {
    let value = serde_json::Value::Object(t.settings.clone().into_iter().collect());
    serde_json::from_value(value).with_context(|| {
        format!(
            "invalid settings for target {:?} (kind = {:?})",
            t.name, t.kind
        )
    })
}

/// Checks a target's settings without contacting it, so a typo is reported
/// when the config is loaded rather than halfway through a backup.
pub fn check(t: &TargetConfig) -> Result<()> {
    match t.kind.as_str() {
        "local" => settings::<backend_local::LocalConfig>(t).map(drop),
        other => bail!(
            "target {:?}: unknown kind {other:?} (known kinds: {})",
            t.name,
            KINDS.join(", ")
        ),
    }
}

/// Opens one configured target.
pub fn open(t: &TargetConfig) -> Result<Arc<dyn Storage>> {
    let storage: Arc<dyn Storage> = match t.kind.as_str() {
        "local" => Arc::new(
            backend_local::LocalStorage::open(&settings(t)?)
                .with_context(|| format!("target {:?}", t.name))?,
        ),
        other => bail!(
            "target {:?}: unknown kind {other:?} (known kinds: {})",
            t.name,
            KINDS.join(", ")
        ),
    };
    Ok(storage)
}

pub const KINDS: &[&str] = &["local"];
