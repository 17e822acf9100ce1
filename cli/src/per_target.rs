//! The binary's side of a per-target command (prune, unlock, verify, drill,
//! status, pin): the chosen targets opened into the engine's
//! [`PlannedTarget`]s, and each target's report or failure printed as the
//! engine tells of it. What the outcomes mean is the engine's
//! ([`backup_core::each`]); nothing here counts failures.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use backup_core::each::{
    on_target, PlannedTarget, SharedError, TargetError, TargetEvent, TargetObserver,
};
use std::path::Path;

use backup_core::repo::{Access, Repository};
use backup_core::storage::Storage;
use serde_json::json;

use crate::config::{Config, TargetConfig};
use crate::errors::hint_in;
use crate::output::Bar;
use crate::resolve::{access, chosen_targets, Purpose};
use crate::targets;

/// The chosen targets, each opened (or why not), in config order, for
/// `offsite unlock`: either format, no keys ([`Repository::open_for_locks`]).
pub(crate) async fn planned_lock_targets(
    cfg: &Config,
    name: Option<&str>,
) -> Result<Vec<PlannedTarget>> {
    Ok(open_each(chosen_targets(cfg, name)?, Repository::open_for_locks).await)
}

/// The chosen targets for the commands that read snapshots (restore,
/// snapshots, verify, drill): format 2 targets are opened with this host's
/// keys for reading ([`Purpose::Read`]); format 1 ones as `unsigned` says.
pub(crate) async fn planned_readable_targets(
    cfg: &Config,
    name: Option<&str>,
    identity: Option<&Path>,
    unsigned: Unsigned,
) -> Result<Vec<PlannedTarget>> {
    let access = access(cfg, Purpose::Read, identity)?;
    let mut planned = open_targets(chosen_targets(cfg, name)?, access.as_ref()).await;
    unsigned.apply(cfg, &mut planned);
    Ok(planned)
}

/// What a reading command does with a format 1 target, whose snapshots
/// nobody signed (docs/design/format-v2.md, 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsigned {
    /// Lists them (`offsite snapshots`): a listing restores nothing.
    Listed,
    /// Restore, verify and drill use them only with `--allow-unsigned`
    /// (`true` here) or `allow_unsigned = true` on the target; every other
    /// format 1 target is its failure ([`backup_core::Error::UnsignedFormat1`]),
    /// nothing read. The same rule stops a downgrade: a bucket writer who
    /// puts a format 1 `config` and forged objects there is refused.
    Refused { allow_unsigned: bool },
}

impl Unsigned {
    /// As each target's `allow_unsigned` says (scheduled and served jobs).
    pub(crate) const AS_CONFIGURED: Unsigned = Unsigned::Refused {
        allow_unsigned: false,
    };

    pub(crate) fn apply(self, cfg: &Config, planned: &mut [PlannedTarget]) {
        let Unsigned::Refused { allow_unsigned } = self else {
            return;
        };
        for t in planned {
            let allowed = allow_unsigned
                || cfg
                    .targets
                    .iter()
                    .any(|c| c.name == t.name && c.allow_unsigned);
            let unsigned = match &t.repo {
                Ok(repo) if repo.config().version() == 1 && !allowed => repo.describe(),
                _ => continue,
            };
            t.repo = Err(on_target(
                &t.name,
                backup_core::Error::UnsignedFormat1 { target: unsigned },
            ));
        }
    }
}

/// The chosen targets for the commands that list snapshots and write only
/// unsigned metadata (status, pin): format 2 targets are opened with the
/// writer key or the identity ([`Purpose::List`]); with neither, each is
/// its target's failure saying what to configure
/// ([`Repository::open_to_list`]).
pub(crate) async fn planned_listing_targets(
    cfg: &Config,
    name: Option<&str>,
) -> Result<Vec<PlannedTarget>> {
    let chosen = chosen_targets(cfg, name)?;
    // A format 1 backup host may name an identity file it does not hold
    // here (status needs only the recipients there): keys that cannot be
    // read fail the format 2 targets only, with why.
    let (access, unreadable) = match access(cfg, Purpose::List, None) {
        Ok(access) => (access, None),
        Err(e) if crate::usage::is_usage(&e) => return Err(e),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let mut planned = open_each(chosen, |s| Repository::open_to_list(s, access.as_ref())).await;
    for t in planned.iter_mut().filter(|t| needs_keys(&t.repo)) {
        if let Some(why) = &unreadable {
            t.repo = Err(shared(anyhow::anyhow!("target {:?}: {why}", t.name)));
        }
    }
    Ok(planned)
}

/// Whether a target could not be opened for what the configuration lacks
/// or says ([`crate::usage::is_mistake`]): the command then fails with
/// exit 2, as prune does, whatever the other targets did.
pub(crate) fn config_failure(targets: &[PlannedTarget]) -> bool {
    let mistake = |t: &PlannedTarget| match &t.repo {
        Err(e) => crate::usage::is_mistake(e.as_ref()),
        Ok(_) => false,
    };
    targets.iter().any(mistake)
}

/// A failed command's error: a usage mistake (exit 2) when `config`.
pub(crate) fn failed(summary: impl std::fmt::Display, config: bool) -> anyhow::Error {
    match config {
        true => crate::usage::mistake(summary.to_string()),
        false => anyhow::anyhow!("{summary}"),
    }
}

/// Whether a target failed only for want of a metadata key.
fn needs_keys(repo: &Result<Repository, SharedError>) -> bool {
    let Err(e) = repo else { return false };
    let first: &(dyn std::error::Error + 'static) = e.as_ref();
    std::iter::successors(Some(first), |c| c.source()).any(|c| {
        matches!(
            c.downcast_ref(),
            Some(backup_core::Error::NoMetadataKey { .. })
        )
    })
}

/// Opens each target's repository: format 2 ones with `access` (without
/// it, each says what to configure: [`Repository::open_with`]). The errors
/// are as they come: opening the backend names the target already, the
/// engine's own error is kept as it is so that [`hint_in`] finds it.
pub(crate) async fn open_targets(
    chosen: Vec<&TargetConfig>,
    access: Option<&Access>,
) -> Vec<PlannedTarget> {
    open_each(chosen, |storage| Repository::open_with(storage, access)).await
}

/// The chosen targets opened as format 2 repositories, for the key
/// commands ([`Repository::open_v2`]); a format 1 one is its target's failure.
pub(crate) async fn planned_v2_targets(
    cfg: &Config,
    name: Option<&str>,
) -> Result<Vec<PlannedTarget>> {
    Ok(open_each(chosen_targets(cfg, name)?, Repository::open_v2).await)
}

/// Each chosen target's backend opened, then its repository with `open`,
/// in order; a failure is that target's, named.
async fn open_each<F>(
    chosen: Vec<&TargetConfig>,
    open: impl Fn(Arc<dyn Storage>) -> F,
) -> Vec<PlannedTarget>
where
    F: std::future::Future<Output = backup_core::Result<Repository>>,
{
    let mut planned = Vec::with_capacity(chosen.len());
    for t in chosen {
        let repo = match targets::open(t) {
            Ok(storage) => open(storage).await.map_err(|e| on_target(&t.name, e)),
            Err(e) => Err(shared(e)),
        };
        planned.push(PlannedTarget {
            name: t.name.clone(),
            repo,
        });
    }
    planned
}

/// An error of the binary's as the engine's shared error, causes kept.
pub(crate) fn shared(e: anyhow::Error) -> SharedError {
    Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(e))
}

/// A target that failed as a whole in a per-target command (prune, verify,
/// unlock): a JSON result entry, or a line on stderr with a hint.
pub(crate) fn print_target_failure(
    as_json: bool,
    results: &mut Vec<serde_json::Value>,
    target: &str,
    e: &TargetError,
) {
    let text = e.described(target);
    if as_json {
        results.push(json!({"target": target, "ok": false, "error": text}));
    } else {
        eprintln!("{target}: FAILED: {text}");
        if let Some(h) = hint_in(e.error()) {
            eprintln!("  hint: {h}");
        }
    }
}

/// How a command shows one target's report: returns its JSON entry with
/// `--json`, else prints it.
pub(crate) type Show<R> = fn(&str, &R, bool) -> Option<serde_json::Value>;

/// A progress line for a part starting on a target.
pub(crate) type StartBar<P> = Box<dyn Fn(&str, Arc<P>, bool) -> Bar + Send + Sync>;

/// Prints each target's report (or failure) as soon as it is done, with a
/// progress line while it runs, and keeps the JSON entries for `--json`
/// ([`TargetPrinter::results`]), which the command prints as one array.
pub(crate) struct TargetPrinter<R, P = ()> {
    as_json: bool,
    show: Show<R>,
    start: Option<StartBar<P>>,
    results: Mutex<Vec<serde_json::Value>>,
    bar: Mutex<Option<Bar>>,
}

impl<R, P> TargetPrinter<R, P> {
    pub(crate) fn new(as_json: bool, show: Show<R>, start: Option<StartBar<P>>) -> Self {
        TargetPrinter {
            as_json,
            show,
            start,
            results: Mutex::default(),
            bar: Mutex::default(),
        }
    }

    /// The JSON entries of every target (empty unless `--json`).
    pub(crate) fn results(&self) -> serde_json::Value {
        serde_json::Value::Array(self.results.lock().expect("printer state").clone())
    }
}

impl<R, P> TargetObserver<R, P> for TargetPrinter<R, P> {
    fn event(&self, event: TargetEvent<'_, R, P>) {
        match event {
            TargetEvent::Started {
                target, progress, ..
            } => {
                if let Some(start) = &self.start {
                    *self.bar.lock().expect("printer state") =
                        Some(start(target, progress, !self.as_json));
                }
            }
            TargetEvent::Finished { target, result, .. } => {
                self.bar.lock().expect("printer state").take();
                let mut results = self.results.lock().expect("printer state");
                match result {
                    Ok(report) => results.extend((self.show)(target, report, self.as_json)),
                    Err(e) => print_target_failure(self.as_json, &mut results, target, e),
                }
            }
        }
    }
}
