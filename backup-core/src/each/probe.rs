//! `offsite targets check`: can each target be written, listed, read and
//! cleaned up? A probe object is put, listed, read back and deleted on the
//! bare storage (a target need not hold a repository yet), with the core's
//! retry policy as in a backup, so a passing 503 does not fail the check.
//!
//! Never: leave the probe object behind when delete is allowed, or call a
//! target usable for backups when put, list or get failed.

use std::sync::Arc;

use crate::each::SharedError;
use crate::error::chain_text;
use crate::storage::{bytes_stream, collect_bytes, list_all, PutMode, RetryPolicy, Storage};

/// A target to probe: its storage, or why it could not be opened.
pub struct ProbeTarget {
    pub name: String,
    pub storage: Result<Arc<dyn Storage>, SharedError>,
}

/// One target's probe: each step and its error, if any.
pub struct Probe {
    pub target: String,
    pub describe: String,
    pub steps: Vec<(&'static str, Result<(), String>)>,
}

impl Probe {
    /// Put, list and get must work for backups; delete only for prune.
    pub fn usable_for_backup(&self) -> bool {
        self.steps
            .iter()
            .all(|(step, r)| *step == "delete" || r.is_ok())
    }

    /// Every step passed, delete included.
    pub fn all_ok(&self) -> bool {
        self.steps.iter().all(|(_, r)| r.is_ok())
    }
}

/// Every target's probe, in order.
pub struct ProbeRun {
    pub probes: Vec<Probe>,
}

impl ProbeRun {
    /// What failed, in one line; `None` when every target can take backups.
    pub fn failure_summary(&self) -> Option<String> {
        let bad = self
            .probes
            .iter()
            .filter(|p| !p.usable_for_backup())
            .count();
        (bad > 0).then(|| {
            format!(
                "{bad} target(s) cannot be used for backups; check their credentials, \
                 bucket/path and permissions"
            )
        })
    }
}

/// Probes each target, one after the other.
pub async fn probe_all(targets: Vec<ProbeTarget>) -> ProbeRun {
    let mut probes = Vec::with_capacity(targets.len());
    for t in targets {
        probes.push(match t.storage {
            Ok(storage) => probe(t.name, storage.as_ref()).await,
            Err(e) => Probe {
                target: t.name,
                describe: String::new(),
                steps: vec![("open", Err(chain_text(&*e)))],
            },
        });
    }
    ProbeRun { probes }
}

/// Put, list, get and delete of a probe object on `storage`.
async fn probe(target: String, storage: &dyn Storage) -> Probe {
    let retry = RetryPolicy::default();
    let mut steps = Vec::new();
    let key = format!("probe/{:016x}", rand::random::<u64>());
    let body = format!("offsite probe {key}");
    let put = retry
        .run(|| {
            storage.put(
                &key,
                bytes_stream(body.clone().into_bytes()),
                PutMode::Create,
            )
        })
        .await
        .map(drop)
        .map_err(|e| e.to_string());
    let put_ok = put.is_ok();
    steps.push(("put", put));
    if put_ok {
        let listed = match retry.run(|| list_all(storage, "probe/")).await {
            Ok(items) if items.iter().any(|m| m.key == key) => Ok(()),
            Ok(_) => Err("the probe object is missing from the listing".into()),
            Err(e) => Err(e.to_string()),
        };
        steps.push(("list", listed));
        let read = retry.run(|| async { collect_bytes(storage.get(&key).await?).await });
        let got = match read.await {
            Ok(b) if b == body.as_bytes() => Ok(()),
            Ok(_) => Err("read back other bytes than were written".into()),
            Err(e) => Err(e.to_string()),
        };
        steps.push(("get", got));
        let deleted = retry.run(|| storage.delete(&key)).await;
        steps.push(("delete", deleted.map_err(|e| e.to_string())));
    }
    Probe {
        target,
        describe: storage.describe(),
        steps,
    }
}
