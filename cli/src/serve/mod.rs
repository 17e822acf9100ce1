//! `offsite serve`: the JSON API over HTTP (docs/api.md) and the dashboard
//! page that reads it (dashboard.rs), in the foreground until SIGTERM or
//! SIGINT. The binary's config is resolved once; every endpoint calls the
//! same functions as the CLI commands, so what the API reports is what
//! `offsite ... --json` prints.
//!
//! Shutdown is the daemon's: a signal stops taking requests and lets the
//! running jobs finish; a second one abandons them (nothing half done is
//! visible: a snapshot exists only once its manifest is written).
//!
//! Never: answer anything but `/healthz` and the dashboard's page shell
//! (which holds no data) without a valid token (auth.rs); listen beyond
//! loopback unless `[serve] listen` says so.

mod api;
mod auth;
mod dashboard;
mod events;
mod fresh;
mod jobs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde_json::json;
use std::future::IntoFuture;

use crate::cmd_daemon::Signals;
use crate::config::{Config, ServeSettings};

/// Request bodies larger than this get 413: a job request is a few dozen bytes.
const BODY_LIMIT: usize = 16 * 1024;

/// Repository reads (status, snapshots, metrics) at once; more requests
/// wait their turn, so a burst of them cannot crowd out a running backup.
const CONCURRENT_READS: usize = 4;

/// How old a status (and `/metrics`) answer may be: requests within it
/// share one read of the repositories.
const STATUS_MAX_AGE: Duration = Duration::from_secs(2);

/// What every handler shares.
pub struct AppState {
    pub cfg: Config,
    pub config_path: PathBuf,
    auth: auth::Auth,
    jobs: jobs::Jobs,
    reads: tokio::sync::Semaphore,
    pub(super) status: fresh::Fresh<crate::cmd_status::Report>,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    /// A usage mistake (an unknown source, a bad time) is the client's: 400.
    fn from(e: anyhow::Error) -> ApiError {
        let status = if crate::usage::is_usage(&e) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        ApiError::new(status, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

/// `offsite serve`: serves until a signal, then lets the jobs finish.
pub async fn run(cfg: Config, config_path: PathBuf) -> Result<()> {
    let mut signals = Signals::install()?;
    let listener = bind(&cfg).await?;
    let (mut server, stop, state) = serve(listener, cfg, config_path);
    let sig = tokio::select! {
        r = &mut server => return r.context("the HTTP server failed"),
        sig = signals.recv() => sig,
    };
    tracing::info!("{sig} received: taking no more requests; finishing the running jobs (signal again to abandon them)");
    let _ = stop.send(());
    let drain = async {
        let _ = server.await;
        state.jobs.idle().await;
    };
    tokio::select! {
        () = drain => tracing::info!("exiting"),
        sig = signals.recv() => tracing::warn!("{sig} received again: abandoning the running jobs; nothing they wrote is visible"),
    }
    Ok(())
}

/// The listener on `[serve] listen` (127.0.0.1:8780 unless set).
async fn bind(cfg: &Config) -> Result<tokio::net::TcpListener> {
    let settings = cfg.serve.clone().unwrap_or_default();
    if settings.tokens.is_empty() {
        return Err(crate::usage::mistake(
            "no [[serve.tokens]] in the config: every request but /healthz would be refused; \
             run `offsite serve hash-token` and add its sha256 line to a [[serve.tokens]] entry \
             with name and scopes",
        ));
    }
    let addr = settings.address()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (serve.listen)"))?;
    tracing::info!(address = %listener.local_addr()?, "serving the API");
    Ok(listener)
}

type ServerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

/// The server running on `listener`, the sender that starts its graceful
/// shutdown, and the shared state (for the jobs still running).
fn serve(
    listener: tokio::net::TcpListener,
    cfg: Config,
    config_path: PathBuf,
) -> (
    ServerFuture,
    tokio::sync::oneshot::Sender<()>,
    Arc<AppState>,
) {
    let settings: ServeSettings = cfg.serve.clone().unwrap_or_default();
    let state = Arc::new(AppState {
        auth: auth::Auth::new(&settings.tokens).expect("sha256 checked at load"),
        jobs: jobs::Jobs::default(),
        reads: tokio::sync::Semaphore::new(CONCURRENT_READS),
        status: fresh::Fresh::new(STATUS_MAX_AGE),
        cfg,
        config_path,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    (Box::pin(server.into_future()), stop, state)
}

type Routes = Vec<(&'static str, MethodRouter<Arc<AppState>>)>;

/// The API's endpoints behind the token check. [`router`] mounts exactly
/// these and [`open_routes`]; docs/openapi.json describes each (tested).
fn protected_routes() -> Routes {
    vec![
        ("/api/v1/sources", get(api::sources)),
        ("/api/v1/targets", get(api::targets)),
        ("/api/v1/snapshots", get(api::snapshots)),
        ("/api/v1/status", get(api::status)),
        ("/api/v1/jobs", get(api::list_jobs).post(api::start_job)),
        ("/api/v1/jobs/{id}", get(api::job)),
        ("/api/v1/jobs/{id}/events", get(api::job_events)),
        ("/api/v1/openapi.json", get(api::openapi)),
        ("/api/v1/token", get(auth::token)),
        ("/metrics", get(api::metrics)),
    ]
}

/// The one endpoint without a token: liveness, which reads nothing.
fn open_routes() -> Routes {
    vec![(
        "/healthz",
        get(|| async { axum::Json(json!({"ok": true})) }),
    )]
}

fn mounted(routes: Routes) -> Router<Arc<AppState>> {
    routes
        .into_iter()
        .fold(Router::new(), |r, (path, method)| r.route(path, method))
}

fn router(state: Arc<AppState>) -> Router {
    let protected = mounted(protected_routes()).route_layer(axum::middleware::from_fn_with_state(
        Arc::clone(&state),
        auth::require_token,
    ));
    mounted(open_routes())
        .merge(protected)
        .merge(dashboard::routes())
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint (see docs/api.md)")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response(dashboard::security_headers))
        .with_state(state)
}

/// Runs the future `f` makes on a blocking thread of the runtime: the
/// engine's futures (the CLI commands') are not all `Send`, so they cannot
/// be spawned, and a handler must not run them on the server's threads.
/// A panic in it is an error, not the end of the server.
async fn off_thread<T, F, Fut>(state: &Arc<AppState>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let (handle, state) = (tokio::runtime::Handle::current(), Arc::clone(state));
    tokio::task::spawn_blocking(move || handle.block_on(f(state)))
        .await
        .map_err(|e| match e.is_panic() {
            true => anyhow::anyhow!("the task panicked"),
            false => anyhow::anyhow!("the task was cancelled"),
        })
}

/// [`off_thread`] for a request that reads the repositories: at most
/// [`CONCURRENT_READS`] at once.
async fn read_off_thread<T, F, Fut>(state: &Arc<AppState>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    let _permit = state.reads.acquire().await?;
    off_thread(state, f).await
}

/// `offsite serve hash-token`: a new random token and the line of its hash.
pub fn hash_token() -> Result<()> {
    let token = hex::encode(rand::random::<[u8; 32]>());
    println!("{token}");
    println!("sha256 = \"{}\"", hex::encode(auth::digest(&token)));
    eprintln!(
        "the first line is the token (give it to the client: it is not stored anywhere); \
         put the second in a [[serve.tokens]] entry with a name and scopes"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every path the router mounts is described, and nothing else is (the
    /// methods of each are checked over HTTP: tests/e2e/serve_api.rs).
    #[test]
    fn openapi_json_describes_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).expect("valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let described: BTreeSet<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        let mounted: BTreeSet<&str> = protected_routes()
            .into_iter()
            .chain(open_routes())
            .map(|(path, _)| path)
            .collect();
        assert_eq!(described, mounted);
    }
}
