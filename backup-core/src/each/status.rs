//! The health of every planned target for every watched source, and what it
//! means: the breaches of the thresholds (a target that cannot be read is
//! one) and on how many targets each source's newest snapshot is.
//!
//! Reads manifests and object listings only (see [`crate::status`]): a
//! format 2 target with its key set's metadata keys, a format 1 one with
//! the metadata key given. What is not a breach but needs saying (a format
//! 1 target, rejected snapshots) is in [`StatusRun::warnings`].

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{each, Outcomes, PlannedTarget};
use crate::error::Result;
use crate::keys::MetadataKey;
use crate::repo::{Manifest, Repository};
use crate::status::{rejected, source_status, Newest, SourceStatus, Thresholds};

/// A source whose backups are checked, and its limits.
#[derive(Debug, Clone)]
pub struct Watched {
    pub source: String,
    pub thresholds: Thresholds,
}

/// One readable target.
#[derive(Debug, Clone)]
pub struct TargetHealth {
    /// Where the repository is, in words.
    pub location: String,
    pub repository_bytes: u64,
    /// The repository format (1 or 2).
    pub format: u32,
    /// Format 2: the snapshots whose manifests are rejected, by id.
    pub rejected: Vec<String>,
    /// One per watched source, in their order.
    pub sources: Vec<SourceStatus>,
}

/// Where a source's newest snapshot is. A backup run stores one snapshot on
/// every target, so "complete on N of M targets" means: the newest snapshot
/// of the source on any target (by time, pre-restore snapshots aside) is
/// held by N of the M planned targets; the others (`missing`, a target
/// that could not be read included) hold only older ones or none, usually
/// because a run failed there. The next successful run brings them level.
#[derive(Debug, Clone, Serialize)]
pub struct Copies {
    pub source: String,
    /// The newest snapshot's id; `None` when no target holds one.
    pub newest: Option<String>,
    pub complete_on: usize,
    pub targets: usize,
    pub missing: Vec<String>,
}

/// The status of every planned target.
#[derive(Debug)]
pub struct StatusRun {
    pub time: DateTime<Utc>,
    pub sources: Vec<String>,
    pub outcomes: Outcomes<TargetHealth>,
}

impl StatusRun {
    /// Every breach, target by target: "source @ target: what", or
    /// "target x: cannot read the repository: why".
    pub fn breaches(&self) -> Vec<String> {
        let mut out = Vec::new();
        for o in self.outcomes.iter() {
            match &o.result {
                Ok(h) => {
                    for s in &h.sources {
                        out.extend(
                            s.breaches
                                .iter()
                                .map(|b| format!("{} @ {}: {b}", s.source, o.target)),
                        );
                    }
                }
                Err(e) => out.push(format!(
                    "target {}: cannot read the repository: {}",
                    o.target,
                    e.chain()
                )),
            }
        }
        out
    }

    pub fn ok(&self) -> bool {
        self.breaches().is_empty()
    }

    /// What every readable target should tell its owner without being a
    /// breach: a format 1 repository (design 6.1) and rejected snapshots.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (target, h) in self.outcomes.reports() {
            if h.format == 1 {
                out.push(format!(
                    "target {target} is format 1 (unsigned snapshots, fixed recipients): \
                     `offsite migrate --to NEW`"
                ));
            }
            if !h.rejected.is_empty() {
                out.push(rejected_warning(target, &h.rejected));
            }
        }
        out
    }

    /// Per source, on how many targets its newest snapshot is.
    pub fn copies(&self) -> Vec<Copies> {
        self.sources.iter().map(|s| self.copies_of(s)).collect()
    }

    fn copies_of(&self, source: &str) -> Copies {
        let all: Vec<(&str, Option<&Newest>)> = self
            .outcomes
            .iter()
            .map(|o| {
                (
                    o.target.as_str(),
                    o.result.as_ref().ok().and_then(|h| newest_of(h, source)),
                )
            })
            .collect();
        let newest = all
            .iter()
            .filter_map(|(_, n)| *n)
            .min_by(|a, b| crate::repo::newest_first(*a, *b))
            .map(|n| n.id.clone());
        let missing: Vec<String> = all
            .iter()
            .filter(|(_, n)| newest.is_none() || n.map(|n| &n.id) != newest.as_ref())
            .map(|(t, _)| t.to_string())
            .collect();
        Copies {
            source: source.to_string(),
            complete_on: if newest.is_some() {
                all.len() - missing.len()
            } else {
                0
            },
            targets: all.len(),
            newest,
            missing,
        }
    }
}

/// What rejected snapshots on `target` mean, and that status left them out.
fn rejected_warning(target: &str, ids: &[String]) -> String {
    format!(
        "target {target}: {} rejected snapshot{} ({}): not signed by the repository's owner or \
         a writer it authorised, so someone with write access to the target added objects \
         offsite will never use; status counts signed snapshots only (`offsite verify` \
         reports each)",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        ids.join(", ")
    )
}

/// `source`'s newest snapshot on a target.
fn newest_of<'a>(health: &'a TargetHealth, source: &str) -> Option<&'a Newest> {
    health
        .sources
        .iter()
        .find(|s| s.source == source)
        .and_then(|s| s.newest.as_ref())
}

/// Reads each target's snapshots and size and checks every watched source
/// against its thresholds as of `now`. `ids` reads format 1 targets
/// (`None`: this host has no recipients nor identity, and they fail).
pub async fn status_all(
    targets: Vec<PlannedTarget>,
    ids: Option<&MetadataKey>,
    sources: &[Watched],
    now: DateTime<Utc>,
) -> StatusRun {
    let outcomes = each(
        targets,
        async |_, repo| {
            let snapshots = listed(repo, ids).await?;
            let repository_bytes = repo.stored_bytes().await?;
            Ok(TargetHealth {
                location: repo.describe(),
                repository_bytes,
                format: repo.config().version(),
                rejected: rejected(&snapshots),
                sources: sources
                    .iter()
                    .map(|w| source_status(&snapshots, &w.source, &w.thresholds, now))
                    .collect(),
            })
        },
        |_| {},
    )
    .await;
    StatusRun {
        time: now,
        sources: sources.iter().map(|w| w.source.clone()).collect(),
        outcomes,
    }
}

/// `repo`'s snapshots, newest first: a format 2 one's with its key set.
async fn listed(repo: &Repository, ids: Option<&MetadataKey>) -> Result<Vec<Manifest>> {
    match (repo.keyset(), ids) {
        (Some(keys), _) => repo.snapshots(&keys.metadata_key()).await,
        (None, Some(ids)) => repo.snapshots(ids).await,
        (None, None) => Err(crate::keys::no_recipients()),
    }
}
