//! The binary's side of a per-target command (prune, unlock, verify, drill,
//! status): the chosen targets opened into the engine's
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

/// The chosen targets, each opened (or why not), in config order.
pub(crate) async fn planned_targets(
    cfg: &Config,
    name: Option<&str>,
) -> Result<Vec<PlannedTarget>> {
    Ok(open_targets(chosen_targets(cfg, name)?, None).await)
}

/// [`planned_targets`] for the commands built for format 2 too (restore,
/// snapshots, verify, drill): format 2 targets are opened with this host's
/// keys for reading ([`Purpose::Read`]).
pub(crate) async fn planned_readable_targets(
    cfg: &Config,
    name: Option<&str>,
    identity: Option<&Path>,
) -> Result<Vec<PlannedTarget>> {
    let access = access(cfg, Purpose::Read, identity)?;
    Ok(open_targets(chosen_targets(cfg, name)?, access.as_ref()).await)
}

/// Opens each target's repository: format 2 ones with `access` when it is
/// given (else they are refused as not supported by that command yet). The
/// errors are as they come: opening the backend names the target already,
/// the engine's own error is kept as it is so that [`hint_in`] finds it.
pub(crate) async fn open_targets(
    chosen: Vec<&TargetConfig>,
    access: Option<&Access>,
) -> Vec<PlannedTarget> {
    open_each(chosen, async |storage| match access {
        Some(access) => Repository::open_with(storage, Some(access)).await,
        None => Repository::open(storage).await,
    })
    .await
}

/// The chosen targets for a command built for format 2 that writes
/// (prune): format 2 ones opened with `access` ([`Purpose::Write`]'s), and
/// without it refused with what to configure ([`Repository::open_with`]).
pub(crate) async fn open_writable_targets(
    chosen: Vec<&TargetConfig>,
    access: Option<&Access>,
) -> Vec<PlannedTarget> {
    open_each(chosen, async |storage| {
        Repository::open_with(storage, access).await
    })
    .await
}

/// The chosen targets opened as format 2 repositories, for the key
/// commands ([`Repository::open_v2`]); a format 1 one is its target's failure.
pub(crate) async fn planned_v2_targets(
    cfg: &Config,
    name: Option<&str>,
) -> Result<Vec<PlannedTarget>> {
    Ok(open_each(chosen_targets(cfg, name)?, Repository::open_v2).await)
}

/// Each target's store opened with `open`, in order; a failure is that
/// target's, named.
async fn open_each(
    chosen: Vec<&TargetConfig>,
    open: impl AsyncFn(Arc<dyn Storage>) -> backup_core::Result<Repository>,
) -> Vec<PlannedTarget> {
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
