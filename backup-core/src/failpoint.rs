//! Fail-points: named steps of a write path (write a temporary file, fsync
//! it, rename the old file aside, rename the new one into place...) where a
//! test makes offsite fail or die on purpose, to check that every
//! interruption leaves the live database and every snapshot intact.
//!
//! A step calls [`hit`] with its name; normally that is a lookup in an empty
//! table and nothing happens. Tests arm points in two ways:
//! - through the binary, with the environment variable
//!   `OFFSITE_FAILPOINTS="name=action[@N],..."` (read once per process), so a
//!   kill test can stop a real `offsite` at any step;
//! - inside a test process, with [`arm`], which returns a guard that disarms
//!   the points when dropped and serialises the tests that use fail-points.
//!
//! Actions: `error` makes the step return an I/O error, `kill` sends the
//! process SIGKILL (exactly what `kill -9` or the OOM killer does: no
//! destructors, no cleanup), `panic` panics. `@N` fires on the N-th hit of
//! that point only (1-based), so "the third pack upload" can be chosen.
//!
//! Never used for anything but tests: with nothing armed a step costs two
//! atomic loads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What an armed fail-point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The step fails with an I/O error.
    Error,
    /// The process is killed with SIGKILL.
    Kill,
    /// The step panics.
    Panic,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    action: Action,
    /// Fire on this hit only (1-based); every hit when `None`.
    on_hit: Option<u64>,
    hits: u64,
}

/// The name of the environment variable tests arm points with.
pub const ENV: &str = "OFFSITE_FAILPOINTS";

static ANY_ARMED: AtomicBool = AtomicBool::new(false);

fn table() -> &'static Mutex<HashMap<String, Point>> {
    static TABLE: OnceLock<Mutex<HashMap<String, Point>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let points = std::env::var(ENV)
            .map(|spec| parse(&spec))
            .unwrap_or_default();
        if !points.is_empty() {
            ANY_ARMED.store(true, Ordering::SeqCst);
        }
        Mutex::new(points)
    })
}

fn parse(spec: &str) -> HashMap<String, Point> {
    let mut out = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, action)) = item.split_once('=') else {
            tracing::warn!("{ENV}: ignoring {item:?} (expected name=action)");
            continue;
        };
        let (action, on_hit) = match action.split_once('@') {
            Some((a, n)) => (a, n.parse().ok()),
            None => (action, None),
        };
        let action = match action {
            "error" => Action::Error,
            "kill" => Action::Kill,
            "panic" => Action::Panic,
            other => {
                tracing::warn!("{ENV}: unknown action {other:?} for {name}");
                continue;
            }
        };
        out.insert(
            name.to_string(),
            Point {
                action,
                on_hit,
                hits: 0,
            },
        );
    }
    out
}

/// Marks the step `name`. Returns an error, kills the process or panics when
/// a test armed this point; otherwise does nothing.
pub fn hit(name: &str) -> std::io::Result<()> {
    let table = table();
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let action = {
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        let Some(point) = table.get_mut(name) else {
            return Ok(());
        };
        point.hits += 1;
        match point.on_hit {
            Some(n) if n != point.hits => return Ok(()),
            _ => point.action,
        }
    };
    match action {
        Action::Error => Err(std::io::Error::other(format!("fail-point {name}"))),
        Action::Panic => panic!("fail-point {name}"),
        Action::Kill => kill_self(),
    }
}

#[cfg(unix)]
fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so this
    // does not return.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(not(unix))]
fn kill_self() -> ! {
    std::process::abort()
}

/// Points armed by [`arm`] for the guard's lifetime.
pub struct Armed {
    names: Vec<String>,
    _serial: MutexGuard<'static, ()>,
}

/// Arms points inside a test process: `(name, action, on_hit)`. Tests that
/// arm points run one at a time (the guard holds a process-wide lock), so
/// parallel tests do not fire each other's points.
pub fn arm(points: &[(&str, Action, Option<u64>)]) -> Armed {
    static SERIAL: Mutex<()> = Mutex::new(());
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    for (name, action, on_hit) in points {
        table.insert(
            name.to_string(),
            Point {
                action: *action,
                on_hit: *on_hit,
                hits: 0,
            },
        );
    }
    ANY_ARMED.store(true, Ordering::SeqCst);
    Armed {
        names: points.iter().map(|(n, _, _)| n.to_string()).collect(),
        _serial: serial,
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
        for n in &self.names {
            table.remove(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unarmed_points_do_nothing_and_armed_ones_fire() {
        assert!(hit("test.nothing").is_ok());
        {
            let _armed = arm(&[("test.second", Action::Error, Some(2))]);
            assert!(hit("test.second").is_ok(), "first hit passes");
            assert!(hit("test.second").is_err(), "second hit fires");
            assert!(hit("test.second").is_ok(), "only the second");
        }
        assert!(hit("test.second").is_ok(), "disarmed with the guard");
    }

    #[test]
    fn parses_the_environment_syntax() {
        let p = parse("a=error, b=kill@3,bad,c=nope");
        assert_eq!(p["a"].action, Action::Error);
        assert_eq!(p["b"].action, Action::Kill);
        assert_eq!(p["b"].on_hit, Some(3));
        assert_eq!(p.len(), 2);
    }
}
