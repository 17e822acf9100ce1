//! `offsite verify`: is every snapshot on every target complete, with
//! `--read-data-subset` are the chunks in a part of the packs intact, and
//! with `--read-data` is every snapshot restorable byte for byte? Says what
//! it checked: without reading data it never claims the data is intact.
//! On a terminal a progress line on stderr shows the snapshot being checked
//! and, when data is read, the bytes read.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{anyhow, Context, Result};
use backup_core::each::verify::{verify_all, VerifyFailure};
use backup_core::keys::MetadataKey;
use backup_core::verify::{
    DataCheck, ReadData, Subset, VerifyOptions, VerifyProgress, VerifyReport,
};
use chrono::Local;
use clap::Args;
use serde_json::json;

use crate::config::Config;
use crate::output::{Bar, Done, Sample, STEP, STEP_AND_BYTES};
use crate::per_target::{
    config_failure, failed, planned_readable_targets, StartBar, TargetPrinter, Unsigned,
};
use crate::resolve::{identities, keys};

#[derive(Args)]
pub struct VerifyArgs {
    /// Check this source's snapshots only.
    #[arg(long)]
    pub source: Option<String>,
    /// Check this target only [default: every target]
    #[arg(long)]
    pub target: Option<String>,
    /// Download, decrypt and restore every snapshot into a temporary directory
    /// ($TMPDIR), checking every chunk, the SHA-256 and SQLite's integrity_check.
    /// Needs the identity.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read part of the packs once each and check every chunk in them
    /// against its id: N/M reads part N of M (a nightly job can rotate
    /// through 1/7 .. 7/7), PCT% a random sample. Damage found is recorded
    /// so the next backup stores those chunks again. Needs the identity.
    #[arg(long, value_name = "N/M|PCT%")]
    pub read_data_subset: Option<Subset>,
    /// Identity file, for --read-data [default: encryption.identity_file]
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
    /// Use a format 1 target's snapshots, which nobody signed (anyone with write access
    /// to it could have written them) [default: the target's allow_unsigned]
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn verify(cfg: &Config, args: &VerifyArgs) -> Result<()> {
    let done = verify_report(cfg, args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done.json)?);
    }
    done.result
}

/// Verifies; with `args.json` nothing is printed and the reports are the
/// outcome's, else each target's is printed when done.
pub(crate) async fn verify_report(cfg: &Config, args: &VerifyArgs) -> Result<Done> {
    if let Some(s) = &args.source {
        cfg.source(s)?;
    }
    let (ids, data) = keys_for(cfg, args)?;
    let opts = VerifyOptions {
        data,
        source: args.source.clone(),
        ..Default::default()
    };
    let unsigned = Unsigned::Refused {
        allow_unsigned: args.allow_unsigned,
    };
    let targets = planned_readable_targets(cfg, args.target.as_deref(), None, unsigned).await?;
    let printer = TargetPrinter::new(args.json, show_report, Some(start_bar(opts.data.is_some())));
    let config = config_failure(&targets);
    let run = verify_all(targets, &ids, &opts, &printer).await;
    let result = match run.verdict() {
        Err(e @ VerifyFailure::Damaged(_)) => Err(anyhow!(e)).context("verify found damage"),
        Err(e) => Err(failed(e, config)),
        Ok(()) => Ok(()),
    };
    Ok(Done {
        json: printer.results(),
        result,
    })
}

/// The key that reads metadata, and what of the data to read with the
/// identity: reading data needs the identity file, checking structure the
/// recipients (or, on a restore-only host, the identity) only.
fn keys_for(cfg: &Config, args: &VerifyArgs) -> Result<(MetadataKey, Option<ReadData>)> {
    if !args.read_data && args.read_data_subset.is_none() {
        return if cfg.encryption.recipients.is_empty() {
            Ok((
                identities(cfg, args.identity.as_deref())?.metadata_key(),
                None,
            ))
        } else {
            Ok((keys(cfg)?.metadata_key(), None))
        };
    }
    if args.identity.is_none() && cfg.encryption.identity_file.is_none() {
        return Err(crate::usage::mistake("verify --read-data and --read-data-subset decrypt the data and need the age identity: pass --identity FILE or set encryption.identity_file"));
    }
    let ids = identities(cfg, args.identity.as_deref())?;
    let key = ids.metadata_key();
    Ok(match args.read_data_subset {
        Some(subset) => (key, Some(ReadData::Packs(ids, subset))),
        None => (key, Some(ReadData::Snapshots(ids))),
    })
}

/// One target's report: its JSON entry with `--json`, else printed.
fn show_report(target: &str, report: &VerifyReport, as_json: bool) -> Option<serde_json::Value> {
    if as_json {
        return Some(report_json(target, report));
    }
    print_report(target, report);
    None
}

/// The progress line while a target is verified: with the bytes read when
/// data is read.
fn start_bar(reads_data: bool) -> StartBar<VerifyProgress> {
    let template = if reads_data { STEP_AND_BYTES } else { STEP };
    Box::new(move |target, progress, enabled| {
        Bar::watch(format!("verify {target}"), template, enabled, move || {
            progress_sample(&progress)
        })
    })
}

/// "reading the index", "packs read 3/40" while `--read-data-subset` reads packs, then
/// "snapshot 2/12" for the snapshot being checked.
fn progress_sample(p: &VerifyProgress) -> Sample {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (packs, packs_total) = (load(&p.packs_done), load(&p.packs_total));
    let (snapshots, total) = (load(&p.snapshots_done), load(&p.snapshots_total));
    let message = if packs < packs_total {
        format!("packs read {packs}/{packs_total}")
    } else if total == 0 {
        "reading the index".to_string()
    } else {
        format!("snapshot {}/{total}", (snapshots + 1).min(total))
    };
    Sample {
        message,
        done: p.bytes_done(),
        total: load(&p.bytes_total),
        uploaded: None,
    }
}

fn print_report(target: &str, r: &VerifyReport) {
    for f in &r.repository_faults {
        println!("{target}: DAMAGED  {f}");
    }
    if let Some(d) = &r.data {
        print_data(target, d);
    }
    for s in &r.snapshots {
        let (source, time) = s.manifest.as_ref().map_or(("?".into(), "?".into()), |m| {
            (
                m.source.clone(),
                m.finished
                    .with_timezone(&Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string(),
            )
        });
        match &s.fault {
            None => println!("{target}: ok       {:<26} {source:<12} {time}", s.id),
            Some(f) => println!("{target}: DAMAGED  {:<26} {source:<12} {time}  {f}", s.id),
        }
    }
    let bad = r.snapshots.iter().filter(|s| s.fault.is_some()).count();
    let what = match (&r.data, r.read_data) {
        (_, true) if r.chunks_only => {
            "read and checked: every chunk against its keyed id (the database's own check runs \
             on restore and drill)"
        }
        (_, true) => "restored and checked: every chunk, the SHA-256 and the database's own check",
        (Some(_), false) => {
            "complete: lists, index and packs present; data read only in the packs above"
        }
        (None, false) => {
            "complete: lists, index and packs present; data not read (--read-data-subset or \
             --read-data check it)"
        }
    };
    if r.ok() {
        println!("{target}: all {} snapshots {what}", r.snapshots.len());
    } else {
        println!(
            "{target}: {bad} of {} snapshots damaged, {} other faults",
            r.snapshots.len(),
            r.repository_faults.len()
        );
    }
}

fn print_data(target: &str, d: &DataCheck) {
    let damaged: usize = d.damaged.iter().map(|(_, c)| c.len()).sum();
    println!(
        "{target}: read {} of {} packs (subset {}, {}): {} chunks checked against their ids, {damaged} damaged",
        d.packs.len(),
        d.packs_total,
        d.subset,
        crate::output::bytes(d.bytes_read),
        d.chunks_checked,
    );
    for (pack, chunks) in &d.damaged {
        println!("{target}: damaged  {pack}: {} chunks", chunks.len());
    }
    if let Some(key) = &d.recorded {
        println!(
            "{target}: recorded the damage as {key}; the next backup stores those chunks again"
        );
    }
}

fn data_json(d: &DataCheck) -> serde_json::Value {
    json!({
        "subset": d.subset.to_string(),
        "packs_total": d.packs_total,
        "packs_read": d.packs,
        "chunks_checked": d.chunks_checked,
        "bytes_read": d.bytes_read,
        "damaged": d.damaged.iter().map(|(pack, chunks)| json!({
            "pack": pack,
            "chunks": chunks.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "recorded": d.recorded,
    })
}

fn report_json(target: &str, r: &VerifyReport) -> serde_json::Value {
    let snapshots: Vec<_> = r
        .snapshots
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "source": s.manifest.as_ref().map(|m| m.source.clone()),
                "time": s.manifest.as_ref().map(|m| m.finished),
                "ok": s.fault.is_none(),
                "fault": s.fault,
            })
        })
        .collect();
    json!({
        "target": target,
        "ok": r.ok(),
        "read_data": r.read_data,
        "data": r.data.as_ref().map(data_json),
        "snapshots": snapshots,
        "repository_faults": r.repository_faults,
    })
}
