//! Which offsite runs are still alive: the process-id space of this run, and
//! a short tag a run writes into the names of what it leaves while working
//! (temporary files, staged uploads), so that a later run can tell whether
//! their writer is gone. Locks ([`crate::lock`]) use the same test.
//!
//! Only a run in the same pid space (same boot, same pid namespace) can be
//! judged by its pid; for anything else only age can tell, and callers must
//! fall back to that. Never claims a run is gone when it cannot know.

/// This process's pid space: `<boot id>/<pid namespace>` on Linux, `None`
/// where that cannot be known.
pub fn pid_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}/{}", boot.trim(), ns.display()))
}

/// Whether a process of this host is alive. Only Linux can tell (via
/// /proc); elsewhere every process counts as alive.
pub fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// `<pid>-<12 hex of the pid space>` (`<pid>-x` when the pid space is not
/// known): characters that are valid in any storage key and file name.
pub fn run_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        scope_hash(pid_scope().as_deref())
    )
}

fn scope_hash(scope: Option<&str>) -> String {
    match scope {
        Some(s) => blake3::hash(s.as_bytes()).to_hex()[..12].to_string(),
        None => "x".into(),
    }
}

/// Whether the run that wrote `tag` (from [`run_tag`]) is known to be gone:
/// it ran in this pid space, is not this process, and its process no longer
/// exists. `false` for anything it cannot tell, including tags that are not
/// tags at all.
pub fn run_is_gone(tag: &str) -> bool {
    let Some((pid, scope)) = tag.split_once('-') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    let ours = scope_hash(pid_scope().as_deref());
    ours != "x" && scope == ours && pid != std::process::id() && !process_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_tell_dead_runs_of_this_pid_space_only() {
        let mine = run_tag();
        assert!(!run_is_gone(&mine), "this run is alive");
        if pid_scope().is_none() {
            return;
        }
        let scope = mine.split_once('-').unwrap().1;
        // Above Linux's pid_max: no such process.
        assert!(run_is_gone(&format!("{}-{scope}", u32::MAX - 1)));
        assert!(!run_is_gone(&format!("1-{scope}")), "init is alive");
        assert!(!run_is_gone(&format!("{}-0123456789ab", u32::MAX - 1)));
        for junk in ["", "abc", "12", "x-y", "12-x"] {
            assert!(!run_is_gone(junk), "{junk:?}");
        }
    }
}
