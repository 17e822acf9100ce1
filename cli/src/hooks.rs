//! Source hooks: shell commands configured per source that quiesce and
//! resume the application around its snapshot (`before`, `after`,
//! `on_error`) and around a restore over its data (`before_restore`,
//! `after_restore`), e.g. `before = "docker stop app"`,
//! `after = "docker start app"`.
//!
//! When each runs is decided by the engine (`backup_core::run` and
//! `backup_core::restore_run`, through [`ConfigHooks`]); in short, per
//! source and backup run (whatever the number of targets):
//! - `before`: once, before the source is first read. If it fails (non-zero
//!   exit), the source is not backed up, `after` does not run (nothing was
//!   read), and `on_error` runs.
//! - `after`: once, as soon as the source has been read for the last target,
//!   whether or not the uploads then succeed: an application stopped by
//!   `before` must come back even when a target is down.
//! - `on_error`: once, if `before`, any backup of the source, or `after`
//!   failed; `OFFSITE_ERROR` holds the errors.
//!
//! And per `offsite restore` whose `--to` is the source's own path (a
//! restore elsewhere, or `--test`, leaves the application alone):
//! - `before_restore`: once the snapshot is downloaded and verified beside
//!   the database, before anything at the path changes (the check that no
//!   other process has the database open comes after it, and so does the
//!   pre-restore snapshot). If it fails, nothing is restored and
//!   `after_restore` does not run.
//! - `after_restore`: once the restore is done, whether it succeeded or
//!   failed after `before_restore` ran (`OFFSITE_ERROR` then holds the
//!   error), so that an application stopped for the restore is started again.
//!
//! Each runs as `sh -c COMMAND` in the config file's directory with
//! `OFFSITE_SOURCE`, `OFFSITE_SOURCE_KIND`, `OFFSITE_SOURCE_PATH` and
//! `OFFSITE_EVENT` set. Its output goes to the log (`-v`), line by line;
//! offsite waits for the command's output to close, so a hook that starts a
//! daemon itself must redirect the daemon's output (`systemctl start` and
//! `docker start` return at once).

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub use backup_core::run::Hook;
use backup_core::run::Hooks;

use crate::config::SourceConfig;

/// The command configured for `event`, if any.
pub fn command(source: &SourceConfig, event: Hook) -> Option<&str> {
    match event {
        Hook::Before => source.before.as_deref(),
        Hook::After => source.after.as_deref(),
        Hook::OnError => source.on_error.as_deref(),
        Hook::BeforeRestore => source.before_restore.as_deref(),
        Hook::AfterRestore => source.after_restore.as_deref(),
    }
}

/// Runs the hook for `event` if one is configured. Blocking.
pub fn run(source: &SourceConfig, event: Hook, error: Option<&str>) -> Result<()> {
    let Some(cmd) = command(source, event) else {
        return Ok(());
    };
    tracing::info!(source = %source.name, hook = event.name(), command = cmd, "running hook");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .env("OFFSITE_SOURCE", &source.name)
        .env("OFFSITE_SOURCE_KIND", source.kind.to_string())
        .env("OFFSITE_SOURCE_PATH", &source.path)
        .env("OFFSITE_EVENT", event.name())
        .stdin(Stdio::null());
    if let Some(dir) = &source.hook_dir {
        c.current_dir(dir);
    }
    if let Some(e) = error {
        c.env("OFFSITE_ERROR", e);
    }
    let out = c.output().with_context(|| {
        format!(
            "source {:?}: cannot run its {} hook with sh",
            source.name,
            event.name()
        )
    })?;
    log_lines(&source.name, event, "stdout", &out.stdout);
    log_lines(&source.name, event, "stderr", &out.stderr);
    if !out.status.success() {
        let last = String::from_utf8_lossy(&out.stderr)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        bail!(
            "source {:?}: {} hook `{cmd}` failed ({}){last}",
            source.name,
            event.name(),
            out.status
        );
    }
    Ok(())
}

fn log_lines(source: &str, event: Hook, stream: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        tracing::info!(source, hook = event.name(), stream, "{line}");
    }
}

/// The `[[sources]]` hook commands, as the engine's runs call them: the
/// one way a hook is run, for backups and restores alike.
pub struct ConfigHooks(pub Vec<SourceConfig>);

impl ConfigHooks {
    fn source(&self, name: &str) -> std::result::Result<&SourceConfig, String> {
        self.0
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no source named {name:?}"))
    }
}

impl Hooks for ConfigHooks {
    fn has(&self, source: &str, hook: Hook) -> bool {
        self.source(source)
            .is_ok_and(|s| command(s, hook).is_some())
    }

    fn run(
        &self,
        source: &str,
        hook: Hook,
        errors: Option<&str>,
    ) -> std::result::Result<(), String> {
        let src = self.source(source)?;
        run(src, hook, errors).map_err(|e| format!("{e:#}"))
    }
}
