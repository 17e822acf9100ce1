//! `offsite targets check`: can each target be reached, listed and written?

use anyhow::{bail, Result};
use backup_core::each::probe::{probe_all, ProbeTarget};
use serde_json::json;

use crate::config::Config;
use crate::per_target::shared;
use crate::resolve::chosen_targets;
use crate::targets;

pub async fn targets_check(cfg: &Config, target: Option<&str>, as_json: bool) -> Result<()> {
    let planned = chosen_targets(cfg, target)?
        .into_iter()
        .map(|t| ProbeTarget {
            name: t.name.clone(),
            storage: targets::open(t).map_err(shared),
        })
        .collect();
    let run = probe_all(planned).await;
    let probes = &run.probes;
    if as_json {
        let v: Vec<_> = probes
            .iter()
            .map(|p| {
                let steps: serde_json::Map<String, serde_json::Value> = p
                    .steps
                    .iter()
                    .map(|(s, r)| (s.to_string(), json!(r.as_ref().err().map_or("ok".to_string(), |e| e.clone()))))
                    .collect();
                json!({"target": p.target, "location": p.describe, "backup_ok": p.usable_for_backup(), "steps": steps})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in probes {
            let steps: Vec<String> = p
                .steps
                .iter()
                .map(|(s, r)| match r {
                    Ok(()) => format!("{s} ok"),
                    Err(e) => format!("{s} FAILED ({e})"),
                })
                .collect();
            let verdict = if p.usable_for_backup() {
                if p.all_ok() {
                    "ok"
                } else {
                    "ok for backup (prune needs delete)"
                }
            } else {
                "NOT USABLE"
            };
            println!(
                "{} {}: {verdict}: {}",
                p.target,
                p.describe,
                steps.join(", ")
            );
        }
    }
    if let Some(failed) = run.failure_summary() {
        bail!("{failed}");
    }
    Ok(())
}
