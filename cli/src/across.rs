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
//! hold it, and restored from the first of them unless `--target` says
//! otherwise.

use std::collections::HashSet;

use anyhow::{Context, Result};
use backup_core::keys::Identities;
use backup_core::repo::{newest_first, select, Manifest, Repository, Selector};
use backup_core::Error;

use crate::commands::chosen_targets;
use crate::config::Config;
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
pub async fn read(cfg: &Config, name: Option<&str>, ids: &Identities) -> Result<Vec<Listing>> {
    let mut listings = Vec::new();
    let mut failed = Vec::new();
    for (target, repo) in open(cfg, name).await? {
        let attempt = async {
            let snapshots = repo.snapshots(ids).await?;
            let pinned = backup_core::pins::pinned(&repo).await?;
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

/// The snapshot of `source` that `sel` picks across the targets, and the
/// index of the target it is taken from.
pub fn choose<'a>(
    lists: &[&'a [Manifest]],
    source: &str,
    sel: &Selector,
) -> Result<(usize, &'a Manifest), Error> {
    let mut best: Option<(usize, &Manifest)> = None;
    let mut first_miss = None;
    for (i, list) in lists.iter().enumerate() {
        let m = match select(list, Some(source), sel) {
            Ok(m) => m,
            Err(e @ Error::SnapshotNotFound(_)) => {
                first_miss.get_or_insert(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        best = match (best, sel) {
            (Some((_, b)), Selector::Id(id)) if b.id != m.id => {
                return Err(Error::AmbiguousSnapshot(
                    id.clone(),
                    format!("{}, {}", b.id, m.id),
                ))
            }
            // The newest wins; at equal times (and for one id) the first target.
            (Some(b), _) if b.1.finished >= m.finished || b.1.id == m.id => Some(b),
            _ => Some((i, m)),
        };
    }
    match (best, first_miss) {
        (Some(b), _) => Ok(b),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::SnapshotNotFound(format!("source {source}"))),
    }
}

/// The target, repository and manifest a restore uses.
pub fn choose_one(
    listings: Vec<Listing>,
    source: &str,
    sel: &Selector,
) -> Result<(String, Repository, Manifest)> {
    let lists: Vec<&[Manifest]> = listings.iter().map(|l| l.snapshots.as_slice()).collect();
    let names: Vec<&str> = listings.iter().map(|l| l.target.as_str()).collect();
    let (i, m) = choose(&lists, source, sel).with_context(|| {
        format!(
            "in target{} {}",
            if names.len() == 1 { "" } else { "s" },
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let manifest = m.clone();
    let chosen = listings.into_iter().nth(i).expect("index of a listing");
    Ok((chosen.target, chosen.repo, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::repo::PRE_RESTORE_TAG;
    use backup_core::source::SourceKind;
    use chrono::{DateTime, Utc};

    fn snap(id: &str, time: &str, tags: &[&str]) -> Manifest {
        let t: DateTime<Utc> = time.parse().unwrap();
        Manifest {
            format: "offsite-snapshot".into(),
            version: 1,
            id: id.into(),
            source: "app".into(),
            kind: SourceKind::Sqlite,
            host: "h".into(),
            started: t,
            finished: t,
            size: 1,
            files: 1,
            chunks: 1,
            new_bytes: 1,
            uploaded_bytes: 1,
            sha256: String::new(),
            list: format!("lists/{id}"),
            page_size: None,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            tool: "test".into(),
        }
    }

    fn chosen(lists: &[&[Manifest]], sel: &Selector) -> Result<(usize, String), Error> {
        choose(lists, "app", sel).map(|(i, m)| (i, m.id.clone()))
    }

    #[test]
    fn choice_is_over_every_target() {
        let empty: Vec<Manifest> = Vec::new();
        let a = vec![
            snap("a2", "2026-11-22T10:00:00Z", &[PRE_RESTORE_TAG]),
            snap("a1", "2026-11-21T02:00:00Z", &[]),
        ];
        let b = vec![
            snap("b2", "2026-11-22T02:00:00Z", &[]),
            snap("b1", "2026-11-20T02:00:00Z", &[]),
        ];
        let lists: [&[Manifest]; 3] = [&empty, &a, &b];
        // The newest regular snapshot, whichever target holds it.
        assert_eq!(chosen(&lists, &Selector::Latest).unwrap(), (2, "b2".into()));
        let at = |t: &str| Selector::At(t.parse().unwrap());
        assert_eq!(
            chosen(&lists, &at("2026-11-21T12:00:00Z")).unwrap(),
            (1, "a1".into())
        );
        assert_eq!(
            chosen(&lists, &Selector::Id("b1".into())).unwrap(),
            (2, "b1".into())
        );
        // A pre-restore snapshot is still chosen by its id.
        assert_eq!(
            chosen(&lists, &Selector::Id("a2".into())).unwrap(),
            (1, "a2".into())
        );
        assert!(matches!(
            chosen(&lists, &at("2026-01-01T00:00:00Z")),
            Err(Error::SnapshotNotFound(_))
        ));
        assert!(matches!(
            chosen(&[&empty], &Selector::Latest),
            Err(Error::SnapshotNotFound(_))
        ));
        // A part of an id that matches snapshots on two targets is ambiguous...
        assert!(matches!(
            chosen(&lists, &Selector::Id("2".into())),
            Err(Error::AmbiguousSnapshot(..))
        ));
        // ...but one id held by several targets is one snapshot, from the first.
        let copy = vec![snap("b2", "2026-11-22T02:00:00Z", &[])];
        let lists: [&[Manifest]; 2] = [&copy, &b];
        assert_eq!(
            chosen(&lists, &Selector::Id("b2".into())).unwrap(),
            (0, "b2".into())
        );
        assert_eq!(chosen(&lists, &Selector::Latest).unwrap(), (0, "b2".into()));
    }
}
