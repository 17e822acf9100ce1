//! The jobs of `offsite serve`: a backup, prune, verify, drill or
//! restore-test started by `POST /api/v1/jobs`, run in the background by
//! the same functions the CLI commands use (their `--json` reports are the
//! jobs' results), and kept in memory for polling.
//!
//! At most one job of a kind per source runs at a time: a request for one
//! that runs gets the running job. Never: report a job succeeded that the
//! command would have failed; restore anywhere but a temporary directory
//! (restore-test is `offsite restore --test`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{off_thread, AppState};
use crate::notify::{self, EventKind};
use crate::output::Done;
use crate::{cmd_backup, cmd_drill, cmd_prune, cmd_restore, cmd_verify, RestoreArgs};

/// Finished jobs kept for polling; the oldest are forgotten first.
const KEEP_FINISHED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Backup,
    Prune,
    Verify,
    Drill,
    RestoreTest,
}

/// The body of `POST /api/v1/jobs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: Kind,
    /// One source [default: every source; for restore-test, the only one].
    #[serde(default)]
    pub source: Option<String>,
    /// Prune only: say what would be removed, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Restore-test only: the snapshot id (or a unique part of one)
    /// [default: the newest].
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A job as `GET /api/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: String,
    pub state: JobState,
    #[serde(flatten)]
    pub request: JobRequest,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    /// The command's `--json` report, when it got that far.
    pub result: Option<Value>,
    pub error: Option<String>,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<String, Job>,
    /// Ids, oldest first.
    order: VecDeque<String>,
    /// (kind, source) -> the id of the job of that kind running on it.
    running: HashMap<(Kind, Option<String>), String>,
    next: u64,
}

/// Every job of this process.
pub struct Jobs {
    table: Mutex<Table>,
    /// How many jobs run.
    active: watch::Sender<usize>,
    /// Makes ids of one run differ from another's.
    epoch: i64,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            table: Mutex::default(),
            active: watch::Sender::new(0),
            epoch: Utc::now().timestamp(),
        }
    }
}

impl Jobs {
    pub fn get(&self, id: &str) -> Option<Job> {
        self.table.lock().expect("jobs").jobs.get(id).cloned()
    }

    /// Every job kept, newest first.
    pub fn list(&self) -> Vec<Job> {
        let t = self.table.lock().expect("jobs");
        t.order
            .iter()
            .rev()
            .filter_map(|id| t.jobs.get(id).cloned())
            .collect()
    }

    /// Returns once no job runs.
    pub async fn idle(&self) {
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Starts the job `request` asks for, or returns the one of its kind
    /// that runs on its source: (id, whether it is new).
    pub fn start(state: &Arc<AppState>, request: JobRequest) -> (String, bool) {
        let key = (request.kind, request.source.clone());
        let mut t = state.jobs.table.lock().expect("jobs");
        if let Some(id) = t.running.get(&key) {
            return (id.clone(), false);
        }
        t.next += 1;
        let id = format!("job-{}-{}", state.jobs.epoch, t.next);
        t.running.insert(key, id.clone());
        t.order.push_back(id.clone());
        t.jobs.insert(
            id.clone(),
            Job {
                id: id.clone(),
                state: JobState::Running,
                request: request.clone(),
                started: Utc::now(),
                finished: None,
                result: None,
                error: None,
            },
        );
        forget_old(&mut t);
        state.jobs.active.send_modify(|n| *n += 1);
        tracing::info!(job = %id, kind = ?request.kind, source = ?request.source, "job started");
        let (state, job_id) = (Arc::clone(state), id.clone());
        tokio::spawn(async move {
            let r = request.clone();
            let outcome = off_thread(&state, move |st| async move { run(&st, &r).await })
                .await
                .and_then(|done| done);
            state.jobs.finish(&job_id, &request, outcome);
        });
        (id, true)
    }

    fn finish(&self, id: &str, request: &JobRequest, outcome: Result<Done>) {
        let mut t = self.table.lock().expect("jobs");
        t.running.remove(&(request.kind, request.source.clone()));
        if let Some(job) = t.jobs.get_mut(id) {
            job.finished = Some(Utc::now());
            let (result, error) = match outcome {
                Ok(done) => (Some(done.json), done.result.err()),
                Err(e) => (None, Some(e)),
            };
            job.result = result;
            job.state = if error.is_none() {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            job.error = error.map(|e| format!("{e:#}"));
            match &job.error {
                None => tracing::info!(job = id, "job succeeded"),
                Some(e) => tracing::error!(job = id, "job failed: {e}"),
            }
        }
        drop(t);
        self.active.send_modify(|n| *n -= 1);
    }
}

/// Drops the oldest finished jobs beyond [`KEEP_FINISHED`].
fn forget_old(t: &mut Table) {
    let finished = |t: &Table| {
        t.jobs
            .values()
            .filter(|j| j.state != JobState::Running)
            .count()
    };
    while finished(t) > KEEP_FINISHED {
        let Some(pos) = t
            .order
            .iter()
            .position(|id| t.jobs.get(id).is_some_and(|j| j.state != JobState::Running))
        else {
            break;
        };
        if let Some(id) = t.order.remove(pos) {
            t.jobs.remove(&id);
        }
    }
}

/// The request's command, as the CLI runs it with `--json`.
async fn run(state: &AppState, r: &JobRequest) -> Result<Done> {
    let (cfg, source) = (&state.cfg, r.source.as_deref());
    match r.kind {
        Kind::Backup => cmd_backup::backup_report(cfg, source, None, Vec::new(), false, true).await,
        Kind::Prune => {
            let args = cmd_prune::PruneArgs {
                dry_run: r.dry_run,
                source: r.source.clone(),
                target: None,
                json: true,
            };
            notified(
                cfg,
                EventKind::Prune,
                cmd_prune::prune_report(cfg, &state.config_path, &args),
            )
            .await
        }
        Kind::Verify => {
            let args = cmd_verify::VerifyArgs {
                source: r.source.clone(),
                target: None,
                read_data: false,
                read_data_subset: None,
                identity: None,
                json: true,
            };
            notified(
                cfg,
                EventKind::Verify,
                cmd_verify::verify_report(cfg, &args),
            )
            .await
        }
        Kind::Drill => cmd_drill::drill_report(cfg, source, None, None, true).await,
        Kind::RestoreTest => restore_test(state, r).await,
    }
}

/// `offsite restore --test --json` of the snapshot (or the newest).
async fn restore_test(state: &AppState, r: &JobRequest) -> Result<Done> {
    let args = RestoreArgs {
        source: r.source.clone(),
        all: false,
        latest: r.snapshot.is_none(),
        snapshot: r.snapshot.clone(),
        at: None,
        to: None,
        force: false,
        no_pre_restore_snapshot: false,
        no_database_check: false,
        test: true,
        target: None,
        identity: None,
        json: true,
    };
    let mut done = cmd_restore::restore_report(&state.cfg, &args).await?;
    // One source's result, as `restore --json` prints it.
    if let Value::Array(one) = &mut done.json {
        done.json = one.pop().unwrap_or(Value::Null);
    }
    Ok(done)
}

/// A prune or verify notified as `offsite prune` and the daemon notify it.
async fn notified(
    cfg: &crate::config::Config,
    kind: EventKind,
    job: impl std::future::Future<Output = Result<Done>>,
) -> Result<Done> {
    let mut report = Value::Null;
    let result = notify::around(&cfg.notify, kind, async {
        let done = job.await?;
        report = done.json;
        done.result
    })
    .await;
    Ok(Done {
        json: report,
        result,
    })
}

/// A job's id in a path: only what [`Jobs::start`] makes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The request checked against the config: a usage mistake as a message.
pub fn check(cfg: &crate::config::Config, r: &mut JobRequest) -> Result<(), String> {
    if let Some(s) = &r.source {
        cfg.source(s).map_err(|e| format!("{e:#}"))?;
    }
    if r.dry_run && r.kind != Kind::Prune {
        return Err("dry_run applies to prune jobs only".into());
    }
    if r.snapshot.is_some() && r.kind != Kind::RestoreTest {
        return Err("snapshot applies to restore-test jobs only".into());
    }
    if let Some(id) = &r.snapshot {
        if !valid_id(id) {
            return Err(format!(
                "snapshot {id:?} is not a snapshot id (letters, digits and '-')"
            ));
        }
    }
    if r.kind == Kind::RestoreTest && r.source.is_none() {
        match cfg.sources.as_slice() {
            [only] => r.source = Some(only.name.clone()),
            _ => {
                return Err(
                    "a restore-test job needs \"source\" (the config has several sources)".into(),
                )
            }
        }
    }
    Ok(())
}

/// The JSON of a job, for the API.
pub fn to_json(job: &Job) -> Value {
    serde_json::to_value(job).unwrap_or_else(|e| json!({"id": job.id, "error": e.to_string()}))
}
