//! Notifications: tells `[[notify]]` endpoints how a backup, prune, verify,
//! drill or status check went. Webhooks get a JSON [`Event`] per source and
//! target; a healthchecks.io-style check gets `<url>/start` when a run begins
//! and one `<url>` (success) or `<url>/fail` ping when it ends, so a missing
//! ping raises its alarm.
//!
//! Never: fail the command it reports on, or hold it up for long. A
//! notification that cannot be delivered is logged as a warning; each request
//! gives up after a few seconds and is retried once.
//!
//! For commands that produce one result per run (prune, verify), [`around`]
//! does all of it: start ping, run, then the outcome to every endpoint.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::NotifyConfig;
use crate::ops_config::NotifyKind;

/// How long one notification request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before the one retry of a failed request.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Backup,
    Prune,
    Verify,
    Drill,
    Status,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Backup => "backup",
            EventKind::Prune => "prune",
            EventKind::Verify => "verify",
            EventKind::Drill => "drill",
            EventKind::Status => "status",
        }
    }
}

/// What a webhook receives (as JSON), for one source and target. Every field
/// is always present (null when it does not apply), so receivers can rely on
/// the shape; docs/cli.md documents it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub ok: bool,
    pub source: Option<String>,
    pub target: Option<String>,
    pub snapshot: Option<String>,
    /// Bytes of data in the snapshot.
    pub size: Option<u64>,
    /// Bytes the snapshot was the first to store (before compression).
    pub new_bytes: Option<u64>,
    /// Bytes uploaded (after compression and encryption).
    pub uploaded_bytes: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub error: Option<String>,
    pub host: String,
    pub time: chrono::DateTime<chrono::Utc>,
    /// Event-specific details: a drill's report, a status check's breaches.
    pub details: Option<serde_json::Value>,
}

impl Event {
    pub fn new(event: EventKind, ok: bool) -> Event {
        Event {
            event,
            ok,
            source: None,
            target: None,
            snapshot: None,
            size: None,
            new_bytes: None,
            uploaded_bytes: None,
            duration_seconds: None,
            error: None,
            host: backup_core::backup::hostname(),
            time: chrono::Utc::now(),
            details: None,
        }
    }

    pub fn at(mut self, source: Option<&str>, target: Option<&str>) -> Event {
        self.source = source.map(str::to_string);
        self.target = target.map(str::to_string);
        self
    }
}

/// The event of one successful backup.
pub fn backup_event(s: &backup_core::backup::BackupSummary, target: &str) -> Event {
    let m = &s.manifest;
    let mut ev = Event::new(EventKind::Backup, true).at(Some(&m.source), Some(target));
    ev.snapshot = Some(m.id.clone());
    ev.size = Some(m.size);
    ev.new_bytes = Some(m.new_bytes);
    ev.uploaded_bytes = Some(m.uploaded_bytes);
    ev.duration_seconds = Some(s.duration.as_secs_f64());
    ev
}

fn wants(n: &NotifyConfig, kind: EventKind) -> bool {
    match &n.events {
        Some(list) => list.iter().any(|e| e == kind.as_str()),
        // A healthchecks check watches one job; backups are the one to watch.
        None => n.kind == NotifyKind::Webhook || kind == EventKind::Backup,
    }
}

fn wants_outcome(n: &NotifyConfig, ok: bool) -> bool {
    let outcome = if ok { "success" } else { "failure" };
    n.on.as_ref().is_none_or(|l| l.iter().any(|o| o == outcome))
}

fn client() -> Option<reqwest::Client> {
    match reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("offsite/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up notifications");
            None
        }
    }
}

/// POSTs one request, retrying once after a connection failure, a timeout
/// or a 5xx; failures are logged, never returned.
async fn deliver(client: &reqwest::Client, url: &str, body: Option<Vec<u8>>, what: &str) {
    for attempt in 1..=2 {
        let mut req = client.post(url);
        if let Some(b) = &body {
            req = req
                .header("content-type", "application/json")
                .body(b.clone());
        }
        let problem = match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(url, what, "notified");
                return;
            }
            Ok(r) if !r.status().is_server_error() => {
                tracing::warn!(url, what, status = %r.status(), "notification refused; check the URL");
                return;
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                format!("{e}{cause}")
            }
        };
        if attempt == 2 {
            tracing::warn!(
                url,
                what,
                "notification failed (the operation itself is not affected): {problem}"
            );
        } else {
            tracing::debug!(url, what, "notification failed, retrying: {problem}");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

fn ping_url(base: &str, suffix: &str) -> String {
    format!("{}{suffix}", base.trim_end_matches('/'))
}

fn healthchecks(cfg: &[NotifyConfig], kind: EventKind) -> Vec<&NotifyConfig> {
    cfg.iter()
        .filter(|n| n.kind == NotifyKind::Healthchecks && wants(n, kind))
        .collect()
}

/// Tells healthchecks endpoints that a run of `kind` has started (which
/// lets healthchecks.io measure run times and notice runs that hang).
pub async fn start(cfg: &[NotifyConfig], kind: EventKind) {
    let hcs = healthchecks(cfg, kind);
    if hcs.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hcs {
        deliver(&client, &ping_url(&n.url, "/start"), None, "start ping").await;
    }
}

/// Posts events (one per source and target) to the webhooks that want them.
pub async fn events(cfg: &[NotifyConfig], list: &[Event]) {
    let hooks: Vec<&NotifyConfig> = cfg
        .iter()
        .filter(|n| n.kind == NotifyKind::Webhook)
        .collect();
    if hooks.is_empty() || list.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hooks {
        for ev in list
            .iter()
            .filter(|e| wants(n, e.event) && wants_outcome(n, e.ok))
        {
            let body = serde_json::to_vec(ev).expect("an event serializes");
            deliver(&client, &n.url, Some(body), ev.event.as_str()).await;
        }
    }
}

/// Tells healthchecks endpoints how a run of `kind` ended; `summary` is the
/// ping's body, which healthchecks.io shows in its event log.
pub async fn finish(cfg: &[NotifyConfig], kind: EventKind, ok: bool, summary: &str) {
    let hcs = healthchecks(cfg, kind);
    if hcs.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hcs {
        let url = ping_url(&n.url, if ok { "" } else { "/fail" });
        deliver(
            &client,
            &url,
            Some(summary.as_bytes().to_vec()),
            "result ping",
        )
        .await;
    }
}

/// Reports one finished run: the event to every webhook, and a success or
/// failure ping to every healthchecks endpoint.
pub async fn send(cfg: &[NotifyConfig], event: Event) {
    let (kind, ok) = (event.event, event.ok);
    let summary = event
        .error
        .clone()
        .unwrap_or_else(|| format!("{} succeeded", kind.as_str()));
    events(cfg, std::slice::from_ref(&event)).await;
    finish(cfg, kind, ok, &summary).await;
}

/// Runs `job` between a start ping and a report of its outcome (with its
/// duration and, on failure, its error), and returns the job's result
/// unchanged. For commands with one result per run: prune, verify.
pub async fn around<F>(cfg: &[NotifyConfig], kind: EventKind, job: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    start(cfg, kind).await;
    let clock = Instant::now();
    let result = job.await;
    let mut ev = Event::new(kind, result.is_ok());
    ev.duration_seconds = Some(clock.elapsed().as_secs_f64());
    ev.error = result.as_ref().err().map(|e| format!("{e:#}"));
    send(cfg, ev).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{body_json, body_string, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn endpoint(url: String, kind: NotifyKind) -> NotifyConfig {
        NotifyConfig {
            kind,
            url,
            events: None,
            on: None,
        }
    }

    #[tokio::test]
    async fn webhook_gets_the_event_and_healthchecks_the_pings() {
        let server = MockServer::start().await;
        let mut ev = Event::new(EventKind::Backup, false).at(Some("app"), Some("local"));
        ev.error = Some("disk full".into());
        let expected = serde_json::to_value(&ev).unwrap();
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(body_json(&expected))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/hc/start"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/hc/fail"))
            .and(body_string("disk full"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/hc"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let cfg = vec![
            endpoint(format!("{}/hook", server.uri()), NotifyKind::Webhook),
            endpoint(format!("{}/hc/", server.uri()), NotifyKind::Healthchecks),
        ];
        start(&cfg, EventKind::Backup).await;
        send(&cfg, ev).await;
        server.verify().await;
    }

    #[tokio::test]
    async fn success_pings_the_bare_url_and_filters_apply() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hc"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(path("/drills-only"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        Mock::given(path("/failures-only"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let mut drills = endpoint(format!("{}/drills-only", server.uri()), NotifyKind::Webhook);
        drills.events = Some(vec!["drill".into()]);
        let mut failures = endpoint(
            format!("{}/failures-only", server.uri()),
            NotifyKind::Webhook,
        );
        failures.on = Some(vec!["failure".into()]);
        let cfg = vec![
            drills,
            failures,
            endpoint(format!("{}/hc", server.uri()), NotifyKind::Healthchecks),
        ];
        send(&cfg, Event::new(EventKind::Backup, true)).await;
        // Not for healthchecks (they watch backups by default), and a
        // success is not for /failures-only: only this failure reaches it.
        send(&cfg, Event::new(EventKind::Verify, false)).await;
        send(&cfg, Event::new(EventKind::Verify, true)).await;
        server.verify().await;
    }

    #[tokio::test]
    async fn a_server_error_is_retried_once_then_given_up() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .respond_with(ResponseTemplate::new(500))
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/gone"))
            .respond_with(ResponseTemplate::new(404))
            .expect(1)
            .mount(&server)
            .await;
        let cfg = vec![
            endpoint(format!("{}/hook", server.uri()), NotifyKind::Webhook),
            endpoint(format!("{}/gone", server.uri()), NotifyKind::Webhook),
        ];
        send(&cfg, Event::new(EventKind::Prune, true)).await;
        server.verify().await;
    }

    #[tokio::test]
    async fn around_reports_the_outcome_and_returns_the_result() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(wiremock::matchers::body_partial_json(serde_json::json!({
                "event": "verify", "ok": false, "error": "pack 3 is corrupt: checksum"
            })))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let cfg = vec![endpoint(
            format!("{}/hook", server.uri()),
            NotifyKind::Webhook,
        )];
        let r = around(&cfg, EventKind::Verify, async {
            Err(anyhow::anyhow!("checksum").context("pack 3 is corrupt"))
        })
        .await;
        assert_eq!(
            format!("{:#}", r.unwrap_err()),
            "pack 3 is corrupt: checksum"
        );
        server.verify().await;
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_not_an_error() {
        // A port that was free a moment ago: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = vec![endpoint(
            format!("http://127.0.0.1:{port}/hook"),
            NotifyKind::Webhook,
        )];
        let r = around(&cfg, EventKind::Drill, async { Ok(()) }).await;
        assert!(r.is_ok());
    }
}
