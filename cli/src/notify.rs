//! Notifications: tells `[[notify]]` endpoints how a backup, drill, prune or
//! verify went. Webhooks get a JSON [`Event`] per source and target; a
//! healthchecks.io-style check gets `<url>/start` when a run begins and one
//! `<url>` (success) or `<url>/fail` ping when it ends, so a missing ping
//! raises its alarm.
//!
//! Never: fail or delay the command it reports on for long. A notification
//! that cannot be delivered is logged as a warning; each request gives up
//! after a few seconds.

use std::time::Duration;

use serde::Serialize;

use crate::config::{NotifyConfig, NotifyKind};

/// How long one notification request may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Backup,
    Prune,
    Verify,
    Drill,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Backup => "backup",
            EventKind::Prune => "prune",
            EventKind::Verify => "verify",
            EventKind::Drill => "drill",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failure,
}

/// What a webhook receives (as JSON), for one source and target.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub status: Status,
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
    /// Event-specific details (a drill's report, for instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Event {
    pub fn new(event: EventKind, status: Status) -> Event {
        Event {
            event,
            status,
            source: None,
            target: None,
            snapshot: None,
            size: None,
            new_bytes: None,
            uploaded_bytes: None,
            duration_seconds: None,
            error: None,
            host: hostname(),
            time: chrono::Utc::now(),
            details: None,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn wants(n: &NotifyConfig, kind: EventKind) -> bool {
    match &n.events {
        Some(list) => list.iter().any(|e| e == kind.as_str()),
        // A healthchecks check watches one job; backups are the one to watch.
        None => n.kind == NotifyKind::Webhook || kind == EventKind::Backup,
    }
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

/// Sends one request; failures are logged, never returned.
async fn deliver(client: &reqwest::Client, url: &str, body: Option<Vec<u8>>, what: &str) {
    let mut req = client.post(url);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => tracing::debug!(url, what, "notified"),
        Ok(r) => tracing::warn!(url, what, status = %r.status(), "notification was refused"),
        Err(e) => {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            tracing::warn!(url, what, "notification failed: {e}{cause}")
        }
    }
}

fn ping_url(base: &str, suffix: &str) -> String {
    format!("{}{suffix}", base.trim_end_matches('/'))
}

/// Tells healthchecks endpoints that a run of `kind` has started.
pub async fn start(cfg: &[NotifyConfig], kind: EventKind) {
    let hcs: Vec<&NotifyConfig> = cfg
        .iter()
        .filter(|n| n.kind == NotifyKind::Healthchecks && wants(n, kind))
        .collect();
    if hcs.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hcs {
        deliver(&client, &ping_url(&n.url, "/start"), None, "start ping").await;
    }
}

/// Posts per-source-and-target events to the webhooks.
pub async fn events(cfg: &[NotifyConfig], list: &[Event]) {
    let Some(first) = list.first() else { return };
    let hooks: Vec<&NotifyConfig> = cfg
        .iter()
        .filter(|n| n.kind == NotifyKind::Webhook && wants(n, first.event))
        .collect();
    if hooks.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hooks {
        for ev in list {
            let body = serde_json::to_vec(ev).expect("event serializes");
            deliver(&client, &n.url, Some(body), ev.event.as_str()).await;
        }
    }
}

/// Tells healthchecks endpoints how a run of `kind` ended; `summary` is sent
/// as the ping's body, which healthchecks.io shows in its log.
pub async fn finish(cfg: &[NotifyConfig], kind: EventKind, ok: bool, summary: &str) {
    let hcs: Vec<&NotifyConfig> = cfg
        .iter()
        .filter(|n| n.kind == NotifyKind::Healthchecks && wants(n, kind))
        .collect();
    if hcs.is_empty() {
        return;
    }
    let Some(client) = client() else { return };
    for n in hcs {
        let url = ping_url(&n.url, if ok { "" } else { "/fail" });
        let body = serde_json::to_vec(&serde_json::json!({"event": kind, "summary": summary}))
            .expect("summary serializes");
        deliver(&client, &url, Some(body), "result ping").await;
    }
}

/// Reports one finished operation: the event to every webhook, and a success
/// or failure ping to every healthchecks endpoint. For commands (prune,
/// verify) that produce one result per run.
pub async fn send(cfg: &[NotifyConfig], event: Event) {
    let ok = event.status == Status::Success;
    let summary = event
        .error
        .clone()
        .unwrap_or_else(|| format!("{} {}", event.event.as_str(), "succeeded"));
    let kind = event.event;
    events(cfg, std::slice::from_ref(&event)).await;
    finish(cfg, kind, ok, &summary).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremock::matchers::{body_partial_json, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn hook(url: String, kind: NotifyKind) -> NotifyConfig {
        NotifyConfig {
            kind,
            url,
            events: None,
        }
    }

    #[tokio::test]
    async fn webhook_gets_the_event_and_healthchecks_the_pings() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(body_partial_json(serde_json::json!({
                "event": "backup", "status": "failure", "source": "app",
                "target": "local", "error": "disk full"
            })))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        for p in ["/hc/start", "/hc/fail"] {
            Mock::given(method("POST"))
                .and(path(p))
                .respond_with(ResponseTemplate::new(200))
                .expect(1)
                .mount(&server)
                .await;
        }
        Mock::given(path("/hc"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let cfg = vec![
            hook(format!("{}/hook", server.uri()), NotifyKind::Webhook),
            hook(format!("{}/hc/", server.uri()), NotifyKind::Healthchecks),
        ];
        start(&cfg, EventKind::Backup).await;
        let mut ev = Event::new(EventKind::Backup, Status::Failure);
        ev.source = Some("app".into());
        ev.target = Some("local".into());
        ev.error = Some("disk full".into());
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
        Mock::given(path("/hook"))
            .respond_with(ResponseTemplate::new(200))
            .expect(0)
            .mount(&server)
            .await;
        let mut only_drills = hook(format!("{}/hook", server.uri()), NotifyKind::Webhook);
        only_drills.events = Some(vec!["drill".into()]);
        let cfg = vec![
            only_drills,
            hook(format!("{}/hc", server.uri()), NotifyKind::Healthchecks),
        ];
        send(&cfg, Event::new(EventKind::Backup, Status::Success)).await;
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
        let cfg = vec![hook(
            format!("http://127.0.0.1:{port}/hook"),
            NotifyKind::Webhook,
        )];
        let clock = std::time::Instant::now();
        send(&cfg, Event::new(EventKind::Drill, Status::Success)).await;
        assert!(clock.elapsed() < TIMEOUT * 2);
    }
}
