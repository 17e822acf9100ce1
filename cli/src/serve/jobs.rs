//! The jobs of `offsite serve`: a backup, prune, verify, drill,
//! restore-test or restore started by `POST /api/v1/jobs`, run in the
//! background by the same functions the CLI commands use (their `--json`
//! reports are the jobs' results), and kept in memory for polling.
//!
//! At most one job of a kind per source runs at a time: a request for one
//! that runs gets the running job. A restore of a source and a backup that
//! reads it never run at once (409). Never: report a job succeeded that the
//! command would have failed; restore in place unless `[serve]
//! restore_in_place` allows it, the token has the `restore` scope and the
//! request names the source it overwrites (restore-test is `offsite restore
//! --test`, which touches nothing).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::auth::Caller;
use super::{off_thread, ApiError, AppState};
use crate::notify::{self, EventKind};
use crate::ops_config::Scope;
use crate::output::{self, Displays, Done};
use crate::per_target::Unsigned;
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
    Restore,
}

impl Kind {
    /// The scope a token needs to start a job of this kind.
    pub fn scope(self) -> Scope {
        match self {
            Kind::Restore => Scope::Restore,
            _ => Scope::Operate,
        }
    }

    /// The kind as requests spell it ("restore-test").
    fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
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
    /// Restore-test and restore: the snapshot id (or a unique part of
    /// one) [default: the newest].
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Restore only: the name of the source it overwrites, typed out as
    /// the confirmation (an input; a job does not show it).
    #[serde(default, skip_serializing)]
    pub confirm: Option<String>,
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

/// What the event stream of a running job follows: the progress displays
/// its command opened, and whether it has finished.
#[derive(Clone)]
pub struct Live {
    pub displays: Arc<Displays>,
    pub finished: watch::Receiver<bool>,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<String, Job>,
    /// Ids, oldest first.
    order: VecDeque<String>,
    /// (kind, source) -> the id of the job of that kind running on it.
    running: HashMap<(Kind, Option<String>), String>,
    /// The running jobs' progress, by id.
    live: HashMap<String, Live>,
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

    /// A job as it is now and, while it runs, its progress to follow.
    pub fn follow(&self, id: &str) -> Option<(Job, Option<Live>)> {
        let t = self.table.lock().expect("jobs");
        let job = t.jobs.get(id)?.clone();
        Some((job, t.live.get(id).cloned()))
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
    /// that runs on its source: (id, whether it is new). A job it must not
    /// run with is the error, in words.
    pub fn start(state: &Arc<AppState>, request: JobRequest) -> Result<(String, bool), String> {
        let key = (request.kind, request.source.clone());
        let mut t = state.jobs.table.lock().expect("jobs");
        if let Some(id) = t.running.get(&key) {
            return match t.jobs.get(id) {
                Some(running) if !same_work(&running.request, &request) => {
                    Err(different_work(id, &running.request))
                }
                _ => Ok((id.clone(), false)),
            };
        }
        if let Some(message) = conflict(&t, &request) {
            return Err(message);
        }
        let id = t.add(state.jobs.epoch, key, &request);
        let displays = Arc::new(Displays::default());
        let (finished, watched) = watch::channel(false);
        let live = Live {
            displays: Arc::clone(&displays),
            finished: watched,
        };
        t.live.insert(id.clone(), live);
        drop(t);
        state.jobs.active.send_modify(|n| *n += 1);
        tracing::info!(job = %id, kind = ?request.kind, source = ?request.source, "job started");
        let (state, job_id) = (Arc::clone(state), id.clone());
        tokio::spawn(async move {
            let r = request.clone();
            let job = move |st: Arc<AppState>| async move {
                output::with_displays(displays, run(&st, &r)).await
            };
            let outcome = off_thread(&state, job).await.and_then(|done| done);
            // What the job did (a snapshot, a drill record, a prune) shows
            // in the next status, not one read before it: forgotten before
            // anyone can see the job finished.
            state.status.forget();
            state.jobs.finish(&job_id, &request, outcome);
            let _ = finished.send(true);
        });
        Ok((id, true))
    }

    fn finish(&self, id: &str, request: &JobRequest, outcome: Result<Done>) {
        let mut t = self.table.lock().expect("jobs");
        t.running.remove(&(request.kind, request.source.clone()));
        t.live.remove(id);
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

impl Table {
    /// A new running job for `request` (whose (kind, source) is `key`): its id.
    fn add(&mut self, epoch: i64, key: (Kind, Option<String>), request: &JobRequest) -> String {
        self.next += 1;
        let id = format!("job-{epoch}-{}", self.next);
        self.running.insert(key, id.clone());
        self.order.push_back(id.clone());
        let job = Job {
            id: id.clone(),
            state: JobState::Running,
            request: request.clone(),
            started: Utc::now(),
            finished: None,
            result: None,
            error: None,
        };
        self.jobs.insert(id.clone(), job);
        forget_old(self);
        id
    }
}

/// Why `request` cannot start now: a restore of a source and a backup that
/// reads it (of that source or of every source) exclude each other, since
/// the backup would read the file while the restore replaces it.
/// Whether a request asks for what the running job of its kind and source
/// does: another snapshot to restore, or a real prune while a dry run runs,
/// is other work, and answering it with the running job's id would say it
/// is being done.
fn same_work(running: &JobRequest, request: &JobRequest) -> bool {
    running.snapshot == request.snapshot && running.dry_run == request.dry_run
}

/// The refusal of a request for other work than the running job `id`'s.
fn different_work(id: &str, running: &JobRequest) -> String {
    let what = match (&running.snapshot, running.dry_run) {
        (Some(s), _) => format!("with snapshot {s}"),
        (None, true) => "as a dry run".to_string(),
        (None, false) if running.kind == Kind::Prune => "for real (not a dry run)".to_string(),
        (None, false) => "with the newest snapshot".to_string(),
    };
    format!(
        "job {id} of this kind runs on this source {what}: one runs at a time; \
         start this job again once that one has finished"
    )
}

fn conflict(t: &Table, request: &JobRequest) -> Option<String> {
    let other = match request.kind {
        Kind::Restore => Kind::Backup,
        Kind::Backup => Kind::Restore,
        _ => return None,
    };
    let overlaps =
        |s: &Option<String>| s.is_none() || request.source.is_none() || *s == request.source;
    let ((_, source), id) = t
        .running
        .iter()
        .find(|((kind, source), _)| *kind == other && overlaps(source))?;
    let on = source
        .as_deref()
        .map_or("every source".to_string(), |s| format!("source {s:?}"));
    Some(format!(
        "job {id} ({}) runs on {on}: a backup and a restore of the same source never run at once; \
         start this job again once that one has finished",
        other.name()
    ))
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
                allow_unsigned: false,
                json: true,
            };
            notified(
                cfg,
                EventKind::Verify,
                cmd_verify::verify_report(cfg, &args),
            )
            .await
        }
        Kind::Drill => {
            cmd_drill::drill_report(cfg, source, None, None, Unsigned::AS_CONFIGURED, true).await
        }
        Kind::RestoreTest => restore(state, r, true).await,
        Kind::Restore => restore(state, r, false).await,
    }
}

/// `offsite restore --test --json` of the snapshot (or the newest), or
/// without `test` `offsite restore --force --json`: in place, after a
/// pre-restore snapshot of the file it replaces.
async fn restore(state: &AppState, r: &JobRequest, test: bool) -> Result<Done> {
    let args = RestoreArgs {
        source: r.source.clone(),
        all: false,
        latest: r.snapshot.is_none(),
        snapshot: r.snapshot.clone(),
        at: None,
        to: None,
        force: !test,
        no_pre_restore_snapshot: false,
        no_database_check: false,
        database_check: false,
        allow_unsigned: false,
        test,
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

/// Whether `caller` may start a job of `kind` here: 403 without the
/// kind's scope, or for a restore where the config does not allow one.
pub fn allowed(cfg: &crate::config::Config, caller: &Caller, kind: Kind) -> Result<(), ApiError> {
    caller.require(kind.scope())?;
    let enabled = cfg.serve.as_ref().is_some_and(|s| s.restore_in_place);
    if kind == Kind::Restore && !enabled {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "restore in place is off on this server: set restore_in_place = true in [serve] \
             (or OFFSITE_SERVE__RESTORE_IN_PLACE=true) and restart it; a restore-test job \
             checks a snapshot without touching the live data",
        ));
    }
    Ok(())
}

/// The request checked against the config: a usage mistake as a message.
pub fn check(cfg: &crate::config::Config, r: &mut JobRequest) -> Result<(), String> {
    if let Some(s) = &r.source {
        cfg.source(s).map_err(|e| format!("{e:#}"))?;
    }
    let restores = matches!(r.kind, Kind::RestoreTest | Kind::Restore);
    if r.dry_run && r.kind != Kind::Prune {
        return Err("dry_run applies to prune jobs only".into());
    }
    if r.snapshot.is_some() && !restores {
        return Err("snapshot applies to restore-test and restore jobs only".into());
    }
    if r.confirm.is_some() && r.kind != Kind::Restore {
        return Err("confirm applies to restore jobs only".into());
    }
    if let Some(id) = &r.snapshot {
        if !valid_id(id) {
            return Err(format!(
                "snapshot {id:?} is not a snapshot id (letters, digits and '-')"
            ));
        }
    }
    if restores && r.source.is_none() {
        match cfg.sources.as_slice() {
            [only] => r.source = Some(only.name.clone()),
            _ => {
                return Err(format!(
                    "a {} job needs \"source\" (the config has several sources)",
                    r.kind.name()
                ))
            }
        }
    }
    if r.kind == Kind::Restore {
        confirmed(r)?;
    }
    Ok(())
}

/// A restore's `confirm` must name the source it overwrites, as typing a
/// repository's name confirms deleting it.
fn confirmed(r: &JobRequest) -> Result<(), String> {
    let source = r.source.as_deref().unwrap_or_default();
    match r.confirm.as_deref() {
        Some(c) if c == source => Ok(()),
        Some(c) => Err(format!(
            "confirm is {c:?}, but this job overwrites source {source:?}: send \"confirm\": {source:?}"
        )),
        None => Err(format!(
            "a restore job replaces the live data of source {source:?}: send \"confirm\": {source:?} to confirm it"
        )),
    }
}

/// The JSON of a job, for the API.
pub fn to_json(job: &Job) -> Value {
    serde_json::to_value(job).unwrap_or_else(|e| json!({"id": job.id, "error": e.to_string()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: Kind, snapshot: Option<&str>, dry_run: bool) -> JobRequest {
        JobRequest {
            kind,
            source: Some("app".into()),
            dry_run,
            snapshot: snapshot.map(str::to_string),
            confirm: None,
        }
    }

    #[test]
    fn only_the_same_work_gets_the_running_job() {
        let a = request(Kind::Restore, Some("a"), false);
        assert!(same_work(&a, &a.clone()));
        assert!(!same_work(&a, &request(Kind::Restore, Some("b"), false)));
        assert!(!same_work(&a, &request(Kind::Restore, None, false)));
        let dry = request(Kind::Prune, None, true);
        assert!(!same_work(&dry, &request(Kind::Prune, None, false)));
        assert!(different_work("job-1-1", &a).contains("with snapshot a"));
        assert!(different_work("job-1-2", &dry).contains("as a dry run"));
        let real = request(Kind::Prune, None, false);
        assert!(different_work("job-1-3", &real).contains("for real"));
    }
}
