//! The health of every planned target for every watched source, and what it
//! means: the breaches of the thresholds (a target that cannot be read is
//! one) and on how many targets each source's newest snapshot is.
//!
//! Reads manifests and object listings only (see [`crate::status`]).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{each, Outcomes, PlannedTarget};
use crate::keys::MetadataKey;
use crate::status::{source_status, Newest, SourceStatus, Thresholds};

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

/// `source`'s newest snapshot on a target.
fn newest_of<'a>(health: &'a TargetHealth, source: &str) -> Option<&'a Newest> {
    health
        .sources
        .iter()
        .find(|s| s.source == source)
        .and_then(|s| s.newest.as_ref())
}

/// Reads each target's snapshots and size and checks every watched source
/// against its thresholds as of `now`.
pub async fn status_all(
    targets: Vec<PlannedTarget>,
    ids: &MetadataKey,
    sources: &[Watched],
    now: DateTime<Utc>,
) -> StatusRun {
    let outcomes = each(
        targets,
        async |_, repo| {
            let snapshots = repo.snapshots(ids).await?;
            let repository_bytes = repo.stored_bytes().await?;
            Ok(TargetHealth {
                location: repo.describe(),
                repository_bytes,
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
