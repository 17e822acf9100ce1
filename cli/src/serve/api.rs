//! The endpoints of `offsite serve` behind the token check: what the CLI's
//! `--json` outputs show, as JSON over HTTP, and the jobs. Every answer,
//! errors included, is JSON (`/metrics` is Prometheus text, a job's
//! events Server-Sent Events, events.rs).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::jobs::{self, JobRequest, Jobs};
use super::{events, read_off_thread, ApiError, AppState};
use crate::{cmd_snapshots, cmd_status, output, resolve};

type Answer = Result<Response, ApiError>;

pub async fn sources(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .cfg
        .sources
        .iter()
        .map(|s| json!({"name": s.name, "kind": s.kind, "path": s.path}))
        .collect();
    Json(Value::Array(list))
}

/// Names and kinds only: a target's other settings may hold credentials.
pub async fn targets(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .cfg
        .targets
        .iter()
        .map(|t| json!({"name": t.name, "kind": t.kind}))
        .collect();
    Json(Value::Array(list))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotFilter {
    source: Option<String>,
    target: Option<String>,
    /// Taken at or after (RFC 3339, or "YYYY-MM-DD[ HH:MM[:SS]]" local time).
    since: Option<String>,
    /// Taken at or before.
    until: Option<String>,
}

/// `offsite snapshots --json`, filtered by source, target and time.
pub async fn snapshots(
    State(state): State<Arc<AppState>>,
    filter: Result<Query<SnapshotFilter>, QueryRejection>,
) -> Answer {
    let Query(f) = filter.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let time = |name: &str, v: &Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
        v.as_deref()
            .map(|t| {
                resolve::parse_time(t)
                    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{name}: {e:#}")))
            })
            .transpose()
    };
    let (since, until) = (time("since", &f.since)?, time("until", &f.until)?);
    let (source, target) = (f.source, f.target);
    let list = read_off_thread(&state, move |st| async move {
        cmd_snapshots::snapshots_json(&st.cfg, source.as_deref(), target.as_deref()).await
    })
    .await??;
    let list: Vec<Value> = list
        .into_iter()
        .filter(|s| {
            let t: Option<DateTime<Utc>> = serde_json::from_value(s["time"].clone()).ok();
            t.is_some_and(|t| since.is_none_or(|s| t >= s) && until.is_none_or(|u| t <= u))
        })
        .collect();
    Ok(Json(list).into_response())
}

/// `offsite status --json`, with the summary a health check reads first.
pub async fn status(State(state): State<Arc<AppState>>) -> Answer {
    let report = checked(&state).await?;
    let mut v = serde_json::to_value(&*report).map_err(anyhow::Error::from)?;
    for (k, s) in summary(&report) {
        v[k] = s;
    }
    Ok(Json(v).into_response())
}

/// `offsite status`'s report, read at most once per [`super::STATUS_MAX_AGE`]
/// however many requests ask for it.
async fn checked(state: &Arc<AppState>) -> Result<Arc<cmd_status::Report>, ApiError> {
    let read = || async {
        Ok(read_off_thread(state, |st| async move { cmd_status::check(&st.cfg).await }).await??)
    };
    state.status.get(read).await
}

/// Totals over every source and target: snapshots (counted on each target
/// that holds one), stored and logical bytes, the newest snapshot.
fn summary(r: &cmd_status::Report) -> Vec<(&'static str, Value)> {
    let total_backups: u64 = r.sources.iter().map(|s| s.status.snapshots).sum();
    let stored: u64 = r.targets.iter().filter_map(|t| t.repository_bytes).sum();
    let logical: u64 = r.sources.iter().map(|s| s.status.logical_bytes).sum();
    let newest = r.sources.iter().filter_map(|s| s.status.newest.as_ref());
    let last = newest.clone().map(|n| n.time).max();
    let age = newest.map(|n| n.age_seconds).min();
    vec![
        ("totalBackups", json!(total_backups)),
        ("totalSize", json!(stored)),
        ("formattedTotalSize", json!(output::bytes(stored))),
        ("logicalSize", json!(logical)),
        ("formattedLogicalSize", json!(output::bytes(logical))),
        ("lastBackupTime", json!(last)),
        ("newestAgeSeconds", json!(age)),
        ("isHealthy", json!(r.ok)),
    ]
}

/// The Prometheus text `offsite status --prometheus` writes.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Answer {
    let report = checked(&state).await?;
    let text = cmd_status::prometheus_text(&report);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// docs/openapi.json: the OpenAPI 3.1 description of this API.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn list_jobs(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(state.jobs.list().iter().map(jobs::to_json).collect())
}

pub async fn job(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let (job, _) = followed(&state, id)?;
    Ok(Json(jobs::to_json(&job)).into_response())
}

/// `GET /api/v1/jobs/{id}/events`: the job as Server-Sent Events.
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Answer {
    let (job, live) = followed(&state, id)?;
    Ok(events::stream(Arc::clone(&state), &job, live).into_response())
}

/// The job the path names: 400 for what is not a job id, 404 for an
/// unknown one.
fn followed(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<(jobs::Job, Option<jobs::Live>), ApiError> {
    let Path(id) = id.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    if !jobs::valid_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a job id (letters, digits and '-')"),
        ));
    }
    state
        .jobs
        .follow(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job {id:?}")))
}

/// `POST /api/v1/jobs`: 202 and the new job's id, or 200 and the id of
/// the job of that kind already running on that source; 409 when a job
/// it must not run with runs.
pub async fn start_job(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = match body {
        Ok(body) => body,
        Err(e) => return Ok(unread_body(e)),
    };
    let mut request: JobRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not a job request ({e}); send e.g. {{\"kind\": \"backup\"}}"),
        )
    })?;
    jobs::allowed(&state.cfg, &caller, request.kind)?;
    jobs::check(&state.cfg, &mut request).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, m))?;
    let (id, new) =
        Jobs::start(&state, request).map_err(|m| ApiError::new(StatusCode::CONFLICT, m))?;
    tracing::info!(job = %id, token = %caller.name, new, "job requested");
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let body = json!({"id": id, "state": "running", "already_running": !new});
    Ok((status, Json(body)).into_response())
}

/// A body refused before it was read (413 for one over the limit): the
/// connection cannot carry another request, and `Connection: close` keeps
/// the client from sending one on it.
fn unread_body(e: BytesRejection) -> Response {
    let mut r = ApiError::new(e.status(), e.body_text()).into_response();
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}
