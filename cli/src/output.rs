//! Human-readable figures, progress display, and the writing of results.
//! Progress goes to stderr and only when stderr is a terminal, so cron mail
//! and `--json` stay clean.
//!
//! `--quiet` ([`set_quiet`]) drops the progress display and the results a
//! command prints for people; main.rs leaves stdout on when it is the
//! command's product (`--json`, `keygen`, `snapshots`, `config`, ...).
//! Errors and warnings go to stderr whatever the flag says.
//!
//! Whoever runs a command may also see its progress without a terminal: a
//! command run inside [`with_displays`] lists every progress display it
//! opens there, whether or not it draws it (`offsite serve` streams a job's
//! progress from that list). The commands do not know who watches.
//!
//! Results go to stdout through [`print_out`] (the crate's `println!`, see
//! main.rs), which never panics: once stdout is closed (`offsite snapshots |
//! head` after head exits) the rest of the output is dropped and the command
//! finishes its work quietly, with the exit code of that work. A command is
//! never cut short by its output: a backup still reaches its other targets and
//! runs its `after` hook. Other write errors (a full disk under `> file`) are
//! kept and reported once the command is done ([`stdout_error`]).
//!
//! Why not SIGPIPE's default action, as C tools have: it kills the process at
//! whichever write meets a closed pipe, which may be stderr to a logger that
//! died, mid-backup or between the renames of an in-place restore, and an
//! `after` hook that restarts the application would not run.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backup_core::backup::Progress;
use backup_core::keyset::Trust;
use backup_core::repo::Manifest;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// A progress line on stderr, redrawn from live counters until the guard is
/// dropped. Never drawn with `--quiet`, when the caller says so (`--json`),
/// or when stderr is not a terminal.
pub struct Bar {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What a progress line shows at one moment: a message and bytes done of a
/// total, and for a backup or restore the encoded bytes uploaded so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub message: String,
    pub done: u64,
    pub total: u64,
    pub uploaded: Option<u64>,
}

/// What a progress display reads its figures from.
pub type SampleFn = Arc<dyn Fn() -> Sample + Send + Sync>;

/// The progress displays a command opened inside [`with_displays`], in
/// order: (label, where its figures come from). A display stays listed
/// once closed: its counters then hold the final figures.
#[derive(Default)]
pub struct Displays(Mutex<Vec<(String, SampleFn)>>);

impl Displays {
    /// Every display's label and figures now.
    pub fn samples(&self) -> Vec<(String, Sample)> {
        let open = self.0.lock().expect("displays");
        open.iter().map(|(label, f)| (label.clone(), f())).collect()
    }
}

tokio::task_local! {
    static DISPLAYS: Arc<Displays>;
}

/// Runs `f`, listing in `displays` the progress displays it opens (those
/// opened in tasks it spawns are not: the commands open theirs in their
/// observers, which run in the command's own future).
pub async fn with_displays<F: std::future::Future>(displays: Arc<Displays>, f: F) -> F::Output {
    DISPLAYS.scope(displays, f).await
}

/// The label, then a bar of bytes.
const BYTES: &str = "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}";
/// The label, what is being done, then a bar of bytes as wide as the
/// terminal leaves room for (a line that wraps is redrawn as two).
pub const STEP_AND_BYTES: &str =
    "{prefix}: {msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}";
/// The label and what is being done, for work that is not counted in bytes.
pub const STEP: &str = "{prefix}: {msg} {elapsed}";

impl Bar {
    /// A bar of the bytes a backup or restore has read of its total.
    pub fn start(label: String, progress: Arc<Progress>, enabled: bool) -> Bar {
        Bar::watch(label, BYTES, enabled, move || Sample {
            message: String::new(),
            done: progress.read.load(Ordering::Relaxed),
            total: progress.total.load(Ordering::Relaxed),
            uploaded: Some(progress.uploaded.load(Ordering::Relaxed)),
        })
    }

    /// A line drawn with `template` (an indicatif template: [`STEP`],
    /// [`STEP_AND_BYTES`]) from what `sample` says, ten times a second;
    /// listed in the [`Displays`] of [`with_displays`] whether drawn or not.
    pub fn watch(
        label: String,
        template: &'static str,
        enabled: bool,
        sample: impl Fn() -> Sample + Send + Sync + 'static,
    ) -> Bar {
        let sample: SampleFn = Arc::new(sample);
        let _ = DISPLAYS.try_with(|d| {
            let entry = (label.clone(), Arc::clone(&sample));
            d.0.lock().expect("displays").push(entry);
        });
        if !enabled || QUIET.load(Ordering::Relaxed) || !std::io::stderr().is_terminal() {
            return Bar {
                bar: None,
                task: None,
            };
        }
        // Hidden until the first sample is in: no frame without a message.
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
            .with_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            )
            .with_prefix(label);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let now = sample();
                b.set_message(now.message);
                b.set_length(now.total);
                b.set_position(now.done);
                if b.is_hidden() {
                    b.set_draw_target(ProgressDrawTarget::stderr());
                }
                // Each setter may draw (at most 20 times a second) with the
                // others' old values, and the last may not: one frame with
                // all three.
                b.force_draw();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar {
            bar: Some(bar),
            task: Some(task),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Set once stdout cannot take more output; later output is dropped.
static STDOUT_DONE: AtomicBool = AtomicBool::new(false);
/// The first write error other than a closed pipe.
static STDOUT_ERROR: Mutex<Option<std::io::Error>> = Mutex::new(None);

/// Set by `--quiet`: no progress, and stdout only for a command's product.
static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: `stdout` says whether the command's stdout is kept (see the
/// module doc); the progress display is off either way.
pub fn set_quiet(stdout: bool) {
    QUIET.store(true, Ordering::Relaxed);
    STDOUT_QUIET.store(!stdout, Ordering::Relaxed);
}

/// Set by `--quiet` for commands whose stdout is only for people.
static STDOUT_QUIET: AtomicBool = AtomicBool::new(false);

/// Writes to stdout; see the module doc for what happens when it fails.
pub fn print_out(args: fmt::Arguments) {
    if STDOUT_DONE.load(Ordering::Relaxed) || STDOUT_QUIET.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        STDOUT_DONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(e);
        }
    }
}

/// Writes to stderr, ignoring errors: there is nowhere left to report them.
pub fn print_err(args: fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// True once output to stdout was dropped (closed, or a write failed).
pub fn stdout_closed() -> bool {
    STDOUT_DONE.load(Ordering::Relaxed)
}

/// The error that stopped the output, unless it was a closed pipe.
pub fn stdout_error() -> Option<std::io::Error> {
    STDOUT_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// What a command produced: its `--json` report and its verdict. The
/// command prints the report; `offsite serve` returns it as a job's result.
pub(crate) struct Done {
    pub json: serde_json::Value,
    pub result: anyhow::Result<()>,
}

pub(crate) fn snapshot_json(m: &Manifest, target: &str) -> serde_json::Value {
    let mut v = snapshot_fields(m, target);
    if let Some(trust) = &m.trust {
        v["trust"] = trust_json(trust);
    }
    v
}

/// A format 2 snapshot's trust: `{"state": "signed", "writer": NAME}` or
/// `{"state": "rejected", "reason": ...}`.
pub(crate) fn trust_json(trust: &Trust) -> serde_json::Value {
    match trust {
        Trust::Signed { writer } => json!({"state": "signed", "writer": writer}),
        Trust::Unsigned => json!({"state": "unsigned"}),
        Trust::Rejected { reason } => json!({"state": "rejected", "reason": reason}),
    }
}

/// Who signed a snapshot, for a table: "-" for format 1.
pub(crate) fn signed_by(m: &Manifest) -> String {
    match &m.trust {
        None | Some(Trust::Unsigned) => "-".into(),
        Some(Trust::Signed { writer }) => writer.clone(),
        Some(Trust::Rejected { .. }) => "REJECTED".into(),
    }
}

fn snapshot_fields(m: &Manifest, target: &str) -> serde_json::Value {
    json!({
        "id": m.id,
        "source": m.source,
        "kind": m.kind,
        "host": m.host,
        "target": target,
        "started": m.started,
        "time": m.finished,
        "size": m.size,
        "files": m.files,
        "chunks": m.chunks,
        "new_bytes": m.new_bytes,
        "uploaded_bytes": m.uploaded_bytes,
        "sha256": m.sha256,
        "tags": m.tags,
    })
}
