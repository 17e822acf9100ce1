//! `GET /api/v1/jobs/{id}/events`: a job followed as Server-Sent Events.
//! A running job's stream opens with a `state` event, sends a `progress`
//! event whenever a figure of one of its command's progress displays
//! changed (looked at every [`TICK`]), and ends with the final `state` and
//! a `done` event holding the job as `GET /api/v1/jobs/{id}` shows it; a
//! finished job's stream sends those two at once. Comments keep a quiet
//! stream open.
//!
//! A stream is a value the connection owns, not a task: a client that goes
//! away drops it, and nothing else. Never: hold a lock of the jobs across
//! a wait, or let a watcher change what the job does.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;

use super::jobs::{self, Job, Live};
use super::AppState;
use crate::output::Sample;

/// How often a running job's progress is looked at; an event goes out
/// only when a figure changed.
const TICK: Duration = Duration::from_millis(500);
/// A comment this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event stream of `job`, followed through `live` while it runs.
pub fn stream(
    state: Arc<AppState>,
    job: &Job,
    live: Option<Live>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut feed = Feed {
        state,
        id: job.id.clone(),
        live,
        sent: Vec::new(),
        queue: VecDeque::new(),
        over: false,
    };
    if feed.live.is_some() {
        feed.queue.push_back(state_event(job));
    }
    let events = futures::stream::unfold(feed, Feed::next);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// Where one stream is: what it has sent and what is queued.
struct Feed {
    state: Arc<AppState>,
    id: String,
    /// None once the job has finished (or when it had already).
    live: Option<Live>,
    /// The figures last sent, per display (in the order they opened).
    sent: Vec<Sample>,
    queue: VecDeque<Event>,
    /// The last event is queued: the stream ends once the queue is empty.
    over: bool,
}

impl Feed {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some((Ok(e), self));
            }
            if self.over {
                return None;
            }
            self.step().await;
        }
    }

    /// Waits a tick, or for the job to finish; queues what changed.
    async fn step(&mut self) {
        let ended = match &mut self.live {
            None => true,
            Some(live) => {
                // An error: the job's task is gone, so it has finished too.
                let finished = live.finished.wait_for(|f| *f);
                tokio::select! {
                    _ = finished => true,
                    () = tokio::time::sleep(TICK) => false,
                }
            }
        };
        self.progress();
        if ended {
            self.end();
        }
    }

    /// A `progress` event for each display whose figures changed.
    fn progress(&mut self) {
        let Some(live) = &self.live else { return };
        for (i, (label, now)) in live.displays.samples().into_iter().enumerate() {
            if self.sent.get(i) == Some(&now) {
                continue;
            }
            self.queue.push_back(progress_event(&self.id, &label, &now));
            match self.sent.get_mut(i) {
                Some(last) => *last = now,
                None => self.sent.push(now),
            }
        }
    }

    /// The final `state` and `done`.
    fn end(&mut self) {
        self.over = true;
        self.live = None;
        if let Some(job) = self.state.jobs.get(&self.id) {
            self.queue.push_back(state_event(&job));
            self.queue.push_back(
                Event::default()
                    .event("done")
                    .data(jobs::to_json(&job).to_string()),
            );
        }
    }
}

fn state_event(job: &Job) -> Event {
    let data = json!({"id": job.id, "state": job.state});
    Event::default().event("state").data(data.to_string())
}

fn progress_event(id: &str, what: &str, s: &Sample) -> Event {
    let data = json!({
        "id": id, "what": what, "step": s.message,
        "done": s.done, "total": s.total, "uploaded": s.uploaded,
    });
    Event::default().event("progress").data(data.to_string())
}
