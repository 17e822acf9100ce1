//! Backup health: what a repository holds per source (how many snapshots, how
//! big, how old the newest is, how its size compares with the one before) and
//! whether that breaches the thresholds a monitoring system alerts on.
//!
//! Works from the manifests and an object listing only, so it needs the
//! recipients (the metadata identity), never the identity that decrypts data.
//! On format 2 that is a metadata key M (a writer key or a recipient's
//! identity), and only signed snapshots count ([`Manifest::is_trusted`]):
//! a rejected manifest is one someone with write access to the target
//! added, so it is neither a backup (counted, summed) nor the newest one (a
//! forged newer snapshot must not hide a stale real one from `max_age`);
//! [`rejected`] lists them, for the warning.
//!
//! Never: read pack contents or change the repository.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Result;
use crate::repo::{Manifest, Repository, INDEX, LISTS, PACKS, SNAPSHOTS};

/// Limits beyond which a source's backups need attention.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds {
    /// The newest snapshot must be younger than this.
    pub max_age: Option<Duration>,
    /// The newest snapshot must hold at least this many bytes.
    pub min_size: Option<u64>,
    /// The newest snapshot may be at most this many percent smaller than the
    /// one before (a sudden drop usually means lost data, not a cleanup).
    pub max_size_drop_percent: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Newest {
    pub id: String,
    pub time: DateTime<Utc>,
    pub age_seconds: u64,
    pub size: u64,
    /// The size of the snapshot before it, if any.
    pub previous_size: Option<u64>,
}

impl crate::repo::Dated for Newest {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub snapshots: u64,
    /// Sum of the snapshots' sizes: what the repository would hold without
    /// deduplication and compression.
    pub logical_bytes: u64,
    pub newest: Option<Newest>,
    /// Thresholds this source breaches, in words; empty when all is well.
    pub breaches: Vec<String>,
}

impl SourceStatus {
    pub fn ok(&self) -> bool {
        self.breaches.is_empty()
    }
}

/// Bytes the repository holds: its packs (the data, deduplicated, compressed
/// and encrypted) and its metadata, i.e. what the target bills for.
pub(crate) async fn stored_bytes(repo: &Repository) -> Result<u64> {
    let mut total = 0;
    for prefix in [PACKS, INDEX, LISTS, SNAPSHOTS] {
        total += repo.list(prefix).await?.iter().map(|o| o.size).sum::<u64>();
    }
    Ok(total)
}

/// The status of `source` from a repository's newest-first snapshot list.
pub fn source_status(
    snapshots: &[Manifest],
    source: &str,
    limits: &Thresholds,
    now: DateTime<Utc>,
) -> SourceStatus {
    let mine: Vec<&Manifest> = (snapshots.iter())
        .filter(|m| m.source == source && m.is_trusted())
        .collect();
    // A pre-restore snapshot saves a file being replaced, maybe a damaged
    // one: it says nothing about whether backups run, nor how big they are.
    let regular: Vec<&Manifest> = crate::repo::regular(snapshots, Some(source)).collect();
    let newest = regular.first().map(|m| Newest {
        id: m.id.clone(),
        time: m.finished,
        age_seconds: (now - m.finished).num_seconds().max(0) as u64,
        size: m.size,
        previous_size: regular.get(1).map(|p| p.size),
    });
    let mut breaches = Vec::new();
    match &newest {
        None => breaches.push(format!("no snapshot of source {source:?}")),
        Some(n) => {
            if let Some(max) = limits.max_age {
                if n.age_seconds > max.as_secs() {
                    breaches.push(format!(
                        "newest snapshot is {} old, more than max_age {}",
                        human(Duration::from_secs(n.age_seconds)),
                        human(max)
                    ));
                }
            }
            if let Some(min) = limits.min_size {
                if n.size < min {
                    breaches.push(format!(
                        "newest snapshot is {} bytes, less than min_size {min}",
                        n.size
                    ));
                }
            }
            if let (Some(pct), Some(prev)) = (limits.max_size_drop_percent, n.previous_size) {
                if prev > 0 && n.size < prev {
                    let drop = (prev - n.size) as f64 * 100.0 / prev as f64;
                    if drop > pct {
                        breaches.push(format!(
                            "newest snapshot is {drop:.0}% smaller than the previous one \
                             ({} -> {} bytes), more than max_size_drop_percent {pct}",
                            prev, n.size
                        ));
                    }
                }
            }
        }
    }
    SourceStatus {
        source: source.to_string(),
        snapshots: mine.len() as u64,
        logical_bytes: mine.iter().map(|m| m.size).sum(),
        newest,
        breaches,
    }
}

/// The ids of the format 2 snapshots whose manifests are rejected (not
/// signed by anyone the keyring trusts for them), in the order given.
pub fn rejected(snapshots: &[Manifest]) -> Vec<String> {
    (snapshots.iter())
        .filter(|m| !m.is_trusted())
        .map(|m| m.id.clone())
        .collect()
}

/// Whole seconds in humantime's style ("1day 2h 3m 4s").
pub(crate) fn human(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [
        (s / 86_400, "day"),
        (s / 3600 % 24, "h"),
        (s / 60 % 60, "m"),
        (s % 60, "s"),
    ];
    let out: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if out.is_empty() {
        "0s".into()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceKind;

    fn manifest(source: &str, size: u64, finished: DateTime<Utc>) -> Manifest {
        Manifest {
            format: "offsite-snapshot".into(),
            version: 1,
            id: format!("{source}-{size}"),
            source: source.into(),
            kind: SourceKind::Sqlite,
            host: "h".into(),
            started: finished,
            finished,
            size,
            files: 1,
            chunks: 1,
            new_bytes: 0,
            uploaded_bytes: 0,
            sha256: String::new(),
            list: String::new(),
            page_size: None,
            tags: vec![],
            tool: String::new(),
            trust: None,
        }
    }

    #[test]
    fn thresholds_are_checked_on_the_newest_snapshot() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let list = vec![
            manifest("app", 400, now - hour * 30),
            manifest("app", 1000, now - hour * 54),
            manifest("other", 5, now),
        ];
        let ok = source_status(&list, "app", &Thresholds::default(), now);
        assert!(ok.ok());
        assert_eq!(ok.snapshots, 2);
        assert_eq!(ok.logical_bytes, 1400);
        assert_eq!(ok.newest.as_ref().unwrap().previous_size, Some(1000));

        let limits = Thresholds {
            max_age: Some(Duration::from_secs(26 * 3600)),
            min_size: Some(500),
            max_size_drop_percent: Some(50.0),
        };
        let s = source_status(&list, "app", &limits, now);
        assert_eq!(s.breaches.len(), 3, "{:?}", s.breaches);
        assert!(s.breaches[0].contains("1day 6h"), "{}", s.breaches[0]);
        assert!(s.breaches[2].contains("60%"), "{}", s.breaches[2]);

        let mut with_pre_restore = list.clone();
        let mut saved = manifest("app", 10, now);
        saved.tags = vec![crate::repo::PRE_RESTORE_TAG.into()];
        with_pre_restore.insert(0, saved);
        let s = source_status(&with_pre_restore, "app", &limits, now);
        assert_eq!(s.snapshots, 3, "every stored snapshot counts");
        assert_eq!(
            s.newest.as_ref().unwrap().size,
            400,
            "pre-restore is not newest"
        );
        assert_eq!(s.breaches.len(), 3, "nor does it hide stale backups");

        let none = source_status(&list, "missing", &limits, now);
        assert_eq!(none.breaches, vec!["no snapshot of source \"missing\""]);
    }
}
