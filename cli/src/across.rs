//! Snapshots across targets: what `snapshots`, `restore` and `pin` read.
//!
//! Every configured target (or the one `--target` names) is opened and
//! listed, in config order, and a snapshot is chosen over (target, manifest)
//! pairs, so an empty or unreachable first target (a rebuilt server's new
//! disk) hides nothing. A target that cannot be read is a warning naming it;
//! only when no target can be read is it an error.
//!
//! A backup run stores one snapshot (one id) on every target, so the same id
//! on several targets is one snapshot: listed once with the targets that
//! hold it. (`restore` chooses across targets in the engine, with the same
//! rule: see `backup_core::restore_run::choose`.)

use std::collections::HashSet;

use anyhow::{Context, Result};
use backup_core::keys::MetadataKey;
use backup_core::repo::{newest_first, Manifest, Repository};
use backup_core::Error;

use crate::config::Config;
use crate::resolve::chosen_targets;
use crate::targets;

/// One target's repository and its snapshots, newest first.
pub struct Listing {
    pub target: String,
    pub repo: Repository,
    pub snapshots: Vec<Manifest>,
    pub pinned: HashSet<String>,
}

/// Opens the chosen targets' repositories, in config order, passing over
/// those that cannot be opened with a warning.
pub async fn open(cfg: &Config, name: Option<&str>) -> Result<Vec<(String, Repository)>> {
    let mut open = Vec::new();
    let mut failed = Vec::new();
    for t in chosen_targets(cfg, name)? {
        // targets::open names the target in its errors already.
        let attempt = async {
            let storage = targets::open(t)?;
            Repository::open(storage)
                .await
                .with_context(|| format!("target {:?}", t.name))
        };
        match attempt.await {
            Ok(repo) => open.push((t.name.clone(), repo)),
            Err(e) => failed.push(e),
        }
    }
    settle(open, failed)
}

/// Reads every chosen target's snapshots and pins, in config order,
/// passing over targets that cannot be read with a warning.
pub async fn read(cfg: &Config, name: Option<&str>, ids: &MetadataKey) -> Result<Vec<Listing>> {
    let mut listings = Vec::new();
    let mut failed = Vec::new();
    for (target, repo) in open(cfg, name).await? {
        let attempt = async {
            let snapshots = repo.snapshots(ids).await?;
            let pinned = repo.pinned().await?;
            Ok::<_, Error>((snapshots, pinned))
        };
        match attempt.await {
            Ok((snapshots, pinned)) => listings.push(Listing {
                target,
                repo,
                snapshots,
                pinned,
            }),
            Err(e) => failed.push(anyhow::Error::from(e).context(format!("target {target:?}"))),
        }
    }
    settle(listings, failed)
}

/// What could be read, with a warning for each target that could not; the
/// first failure when nothing could.
fn settle<T>(ok: Vec<T>, failed: Vec<anyhow::Error>) -> Result<Vec<T>> {
    if ok.is_empty() {
        let mut failed = failed.into_iter();
        let first = failed.next().expect("every target was tried");
        let others: Vec<String> = failed.map(|e| format!("{e:#}")).collect();
        return Err(if others.is_empty() {
            first
        } else {
            first.context(format!(
                "no target could be read (also: {})",
                others.join("; ")
            ))
        });
    }
    for e in &failed {
        eprintln!("warning: {e:#}; its snapshots are not included");
    }
    Ok(ok)
}

/// Every snapshot (of `source`, when given) across the listings, newest
/// first ([`newest_first`]); one snapshot on several targets in config order.
pub fn all<'a>(listings: &'a [Listing], source: Option<&str>) -> Vec<(&'a Listing, &'a Manifest)> {
    let mut out: Vec<(usize, &Manifest)> = listings
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.snapshots.iter().map(move |m| (i, m)))
        .filter(|(_, m)| source.is_none_or(|s| m.source == s))
        .collect();
    out.sort_by(|(ia, a), (ib, b)| newest_first(a, b).then(ia.cmp(ib)));
    out.into_iter().map(|(i, m)| (&listings[i], m)).collect()
}

/// Every snapshot once, newest first, with the listings that hold it (in
/// config order); the manifest shown is the first target's.
pub fn grouped<'a>(
    listings: &'a [Listing],
    source: Option<&str>,
) -> Vec<(Vec<&'a Listing>, &'a Manifest)> {
    let mut out: Vec<(Vec<&Listing>, &Manifest)> = Vec::new();
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    for (l, m) in all(listings, source) {
        match at.get(&m.id) {
            Some(&i) => out[i].0.push(l),
            None => {
                at.insert(m.id.clone(), out.len());
                out.push((vec![l], m));
            }
        }
    }
    for (held, _) in &mut out {
        held.sort_by_key(|l| listings.iter().position(|x| std::ptr::eq(x, *l)));
    }
    out
}
