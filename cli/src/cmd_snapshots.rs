//! `offsite snapshots`: every snapshot once, newest first, with the targets
//! that hold it.

use anyhow::Result;
use chrono::Local;
use serde_json::json;

use crate::config::Config;
use crate::output::{self, snapshot_json};
use crate::per_target::{planned_readable_targets, Unsigned};
use crate::resolve::metadata_key;
use backup_core::across::{self, Listings, Pins};
use backup_core::error::chain_text;
use backup_core::repo::Manifest;

pub async fn snapshots(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
    as_json: bool,
) -> Result<()> {
    let listings = listings(cfg, source, target).await?;
    let list = across::grouped(&listings, source);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list_json(&list))?);
        return Ok(());
    }
    if list.is_empty() {
        let names: Vec<String> = listings.iter().map(|l| format!("{:?}", l.target)).collect();
        println!(
            "no snapshots in target{} {}{}",
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            source
                .map(|s| format!(" for source {s:?}"))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let width = list
        .iter()
        .map(|(held, _)| held_by(held).len())
        .max()
        .unwrap_or(0)
        .max(12);
    // Format 2 snapshots say who signed them (docs/design/format-v2.md, 3.3).
    let signed = list.iter().any(|(_, m)| m.trust.is_some());
    let by = |m: &Manifest| match signed {
        true => format!(" {:<12}", output::signed_by(m)),
        false => String::new(),
    };
    println!(
        "{:<26} {:<12} {:<width$} {:<25} {:>10} {:>10}{}  tags",
        "ID",
        "SOURCE",
        "TARGETS",
        "TIME",
        "SIZE",
        "NEW",
        if signed { " SIGNED BY   " } else { "" }
    );
    for (held, m) in list {
        println!(
            "{:<26} {:<12} {:<width$} {:<25} {:>10} {:>10}{}  {}",
            m.id,
            m.source,
            held_by(&held),
            m.finished
                .with_timezone(&Local)
                .format("%Y-%m-%d %H:%M:%S %z"),
            output::bytes(m.size),
            output::bytes(m.new_bytes),
            by(m),
            m.tags
                .iter()
                .map(String::as_str)
                .chain(
                    held.iter()
                        .any(|l| l.pinned.contains(&m.id))
                        .then_some("(pinned)")
                )
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    Ok(())
}

/// The snapshots of `source` (or every source) on `target` (or every
/// target) as `--json` lists them, newest first; a warning on stderr for
/// each target that could not be read.
pub(crate) async fn snapshots_json(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    let listings = listings(cfg, source, target).await?;
    Ok(list_json(&across::grouped(&listings, source)))
}

/// What the chosen targets list, with a warning for each that could not be
/// read.
async fn listings(
    cfg: &Config,
    source: Option<&str>,
    target: Option<&str>,
) -> Result<Vec<across::Listing>> {
    if let Some(s) = source {
        cfg.source(s)?;
    }
    let ids = metadata_key(cfg)?;
    let targets = planned_readable_targets(cfg, target, None, Unsigned::Listed).await?;
    let found = across::list(&targets, &ids, Pins::Read).await?;
    warn_passed_over(&found);
    Ok(found.listings)
}

/// Each snapshot once, with the targets that hold it and whether one pins it.
fn list_json(list: &[(Vec<&across::Listing>, &Manifest)]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|(held, m)| {
            let mut v = snapshot_json(m, &held[0].target);
            v["targets"] = json!(held.iter().map(|l| &l.target).collect::<Vec<_>>());
            v["pinned"] = json!(held.iter().any(|l| l.pinned.contains(&m.id)));
            v
        })
        .collect()
}

/// "local,s3": the targets holding a snapshot.
fn held_by(held: &[&across::Listing]) -> String {
    held.iter()
        .map(|l| l.target.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A warning for each target whose snapshots are not included.
pub(crate) fn warn_passed_over(found: &Listings) {
    for e in &found.passed_over {
        eprintln!(
            "warning: {}; its snapshots are not included",
            chain_text(&**e)
        );
    }
}
