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
        "b2" => settings::<backend_b2::B2Config>(t).map(drop),
        "s3" => settings::<backend_s3::S3Config>(t).map(drop),
        "gcs" => settings::<backend_gcs::GcsConfig>(t).map(drop),
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
        "b2" => Arc::new(
            backend_b2::B2Storage::new(&settings(t)?)
                .with_context(|| format!("target {:?}", t.name))?,
        ),
        "s3" => Arc::new(
            backend_s3::S3Storage::open(&settings(t)?)
                .with_context(|| format!("target {:?}", t.name))?,
        ),
        "gcs" => Arc::new(
            backend_gcs::GcsStorage::open(&settings(t)?)
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

pub const KINDS: &[&str] = &["local", "b2", "s3", "gcs"];

/// One line of `offsite targets check`.
pub struct Probe {
    pub target: String,
    pub describe: String,
    pub steps: Vec<(&'static str, Result<(), String>)>,
}

impl Probe {
    /// Put, list, get and head must work for backups; delete only for prune.
    pub fn usable_for_backup(&self) -> bool {
        self.steps
            .iter()
            .all(|(step, r)| *step == "delete" || r.is_ok())
    }
}

/// Checks a target's credentials and permissions with a probe object:
/// put, list, get, delete. Leaves nothing behind when delete is allowed.
pub async fn probe(t: &TargetConfig) -> Probe {
    use backup_core::storage::{bytes_stream, collect_bytes, list_all, PutMode};
    let mut steps = Vec::new();
    let storage = match open(t) {
        Ok(s) => s,
        Err(e) => {
            steps.push(("open", Err(format!("{e:#}"))));
            return Probe {
                target: t.name.clone(),
                describe: String::new(),
                steps,
            };
        }
    };
    let key = format!("probe/{:016x}", rand_u64());
    let body = format!("offsite probe {key}");
    let put = storage
        .put(
            &key,
            bytes_stream(body.clone().into_bytes()),
            PutMode::Create,
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let put_ok = put.is_ok();
    steps.push(("put", put));
    if put_ok {
        let listed = match list_all(storage.as_ref(), "probe/").await {
            Ok(items) if items.iter().any(|m| m.key == key) => Ok(()),
            Ok(_) => Err("the probe object is missing from the listing".into()),
            Err(e) => Err(e.to_string()),
        };
        steps.push(("list", listed));
        let got = match storage.get(&key).await {
            Ok(s) => match collect_bytes(s).await {
                Ok(b) if b == body.as_bytes() => Ok(()),
                Ok(_) => Err("read back other bytes than were written".into()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        steps.push(("get", got));
        steps.push((
            "delete",
            storage.delete(&key).await.map_err(|e| e.to_string()),
        ));
    }
    Probe {
        target: t.name.clone(),
        describe: storage.describe(),
        steps,
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Uniqueness, not secrecy: a per-process random hasher seed is enough.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}
