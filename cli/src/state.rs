//! offsite's own state on this host, kept between runs: the outcome of the
//! last drill of each source on each target, so that `offsite status`, the
//! API and the dashboard show it whoever ran the drill (the command line,
//! the daemon's schedule or an API job).
//!
//! The state directory is the config's `state_dir`, else
//! `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else
//! `$XDG_STATE_HOME/offsite`, else `~/.local/state/offsite`. A drill's
//! record is one small JSON file, `drills/<source>@<target>.json`, replaced
//! atomically, so two drills never mix their records and a crash leaves the
//! old record or the new one.
//!
//! [`write_atomically`] is also how `offsite status` writes its Prometheus
//! textfile.
//!
//! Never: fail the operation it records (a record that cannot be written,
//! or read, is a warning); hold anything secret (the files are mode 0644).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use backup_core::drill::DrillReport;
use backup_core::each::drill::failed_steps;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The outcome of one drill of a source on a target, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub source: String,
    pub target: String,
    /// When the drill ended.
    pub time: DateTime<Utc>,
    pub passed: bool,
    /// The measured restore time, when the restore ran.
    pub rto_seconds: Option<f64>,
    /// The `rto_target` the drill had, if any.
    pub rto_target_seconds: Option<f64>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    /// The failed steps ("restore: ...; rto: ..."), when it failed.
    pub failed: Option<String>,
}

impl DrillRecord {
    pub fn new(target: &str, r: &DrillReport, time: DateTime<Utc>) -> DrillRecord {
        DrillRecord {
            source: r.source.clone(),
            target: target.to_string(),
            time,
            passed: r.passed,
            rto_seconds: r.rto_seconds,
            rto_target_seconds: r.rto_target_seconds,
            snapshot: r.snapshot.clone(),
            snapshot_time: r.snapshot_time,
            failed: (!r.passed).then(|| failed_steps(r)),
        }
    }
}

/// The state directory of `cfg`, or `None` when neither the config nor the
/// environment gives one (no `HOME`).
pub fn dir(cfg: &Config) -> Option<PathBuf> {
    dir_from(cfg.state_dir.as_deref(), |name| std::env::var_os(name))
}

fn dir_from(setting: Option<&Path>, var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(d) = setting {
        return Some(d.to_path_buf());
    }
    // Relative values are ignored, as the XDG specification says.
    let absolute = |name: &str| {
        let v = var(name).filter(|v| !v.is_empty())?;
        Some(PathBuf::from(v)).filter(|p| p.is_absolute())
    };
    // systemd separates the directories of several StateDirectory= entries
    // with ':'; the first is this service's own.
    if let Some(v) = var("STATE_DIRECTORY") {
        let first = v.to_string_lossy().split(':').next().map(PathBuf::from);
        if let Some(p) = first.filter(|p| p.is_absolute()) {
            return Some(p);
        }
    }
    if let Some(p) = absolute("XDG_STATE_HOME") {
        return Some(p.join("offsite"));
    }
    absolute("HOME").map(|h| h.join(".local/state/offsite"))
}

/// `dir/drills/<source>@<target>.json`. Source names are letters, digits,
/// `-`, `_` and `.` (checked at load); any other byte of the target name
/// is written `%XX`, so no name reaches outside `drills/`.
fn record_path(dir: &Path, source: &str, target: &str) -> PathBuf {
    let mut name = format!("{source}@");
    for b in target.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => name.push(b as char),
            _ => name.push_str(&format!("%{b:02X}")),
        }
    }
    dir.join("drills").join(name + ".json")
}

/// Records the drill of `report` on `target` in `dir`; a warning when it
/// cannot be written (the drill's verdict stands either way).
pub fn record_drill(dir: Option<&Path>, target: &str, report: &DrillReport, time: DateTime<Utc>) {
    let what = format!("the drill of {} @ {target}", report.source);
    let Some(dir) = dir else {
        eprintln!(
            "warning: {what} is not recorded: no state directory (set state_dir in the config, \
             or HOME)"
        );
        return;
    };
    let record = DrillRecord::new(target, report, time);
    let path = record_path(dir, &record.source, target);
    let written = serde_json::to_string_pretty(&record)
        .map_err(std::io::Error::other)
        .and_then(|text| {
            std::fs::create_dir_all(dir.join("drills"))?;
            write_atomically(&path, &text)
        });
    if let Err(e) = written {
        eprintln!(
            "warning: {what} is not recorded in {}: {e}; `offsite status` and the dashboard \
             will not show it",
            path.display()
        );
    }
}

/// The last recorded drill of `source` on `target`: `None` when there is
/// none, or (with a warning) when its record cannot be read.
pub fn last_drill(dir: &Path, source: &str, target: &str) -> Option<DrillRecord> {
    let path = record_path(dir, source, target);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            eprintln!(
                "warning: cannot read the drill record {}: {e}",
                path.display()
            );
            return None;
        }
    };
    serde_json::from_str(&text)
        .map_err(|e| {
            eprintln!(
                "warning: the drill record {} is not one ({e}); the next drill replaces it",
                path.display()
            )
        })
        .ok()
}

/// Writes `path` so that readers see the old or the new content, never a
/// part, and the new content survives a crash: a temporary file in the same
/// directory, synced, renamed over `path`, and the directory synced. Mode
/// 0644: readable by a metrics exporter running as another user.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // node_exporter reads only *.prom files, so the temporary name is ignored.
    let mut tmp = tempfile::Builder::new()
        .prefix(".offsite-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    #[cfg(unix)]
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, OsString)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_state_directory_is_the_setting_then_systemd_s_then_xdg_s_then_home() {
        let all = vars(&[
            ("STATE_DIRECTORY", "/var/lib/offsite:/var/lib/other"),
            ("XDG_STATE_HOME", "/home/u/.state"),
            ("HOME", "/home/u"),
        ]);
        let at = |p: &str| Some(PathBuf::from(p));
        assert_eq!(dir_from(Some(Path::new("/srv/st")), &all), at("/srv/st"));
        assert_eq!(dir_from(None, &all), at("/var/lib/offsite"));
        let xdg = vars(&[("XDG_STATE_HOME", "/home/u/.state"), ("HOME", "/home/u")]);
        assert_eq!(dir_from(None, xdg), at("/home/u/.state/offsite"));
        let relative = vars(&[("XDG_STATE_HOME", "rel"), ("HOME", "/home/u")]);
        assert_eq!(dir_from(None, relative), at("/home/u/.local/state/offsite"));
        assert_eq!(dir_from(None, vars(&[])), None);
    }

    #[test]
    fn records_are_replaced_and_target_names_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(dir.path(), "app", "../s3 eu");
        assert_eq!(path.file_name().unwrap(), "app@..%2Fs3%20eu.json");
        assert_eq!(path.parent().unwrap(), dir.path().join("drills"));

        let report = DrillReport {
            source: "app".into(),
            snapshot: Some("s1".into()),
            snapshot_time: None,
            snapshot_size: Some(10),
            passed: true,
            rto_seconds: Some(1.5),
            rto_target_seconds: Some(60.0),
            query_value: None,
            steps: Vec::new(),
        };
        let t = Utc::now();
        record_drill(Some(dir.path()), "../s3 eu", &report, t);
        let got = last_drill(dir.path(), "app", "../s3 eu").unwrap();
        assert_eq!(got, DrillRecord::new("../s3 eu", &report, t));
        assert!(got.passed && got.failed.is_none());
        let down = DrillReport::unavailable("app", "the bucket is gone".into());
        record_drill(Some(dir.path()), "../s3 eu", &down, t);
        let got = last_drill(dir.path(), "app", "../s3 eu").unwrap();
        assert!(!got.passed);
        assert_eq!(got.failed.unwrap(), "open_repository: the bucket is gone");
        assert_eq!(last_drill(dir.path(), "app", "local"), None);
        std::fs::write(record_path(dir.path(), "app", "local"), "{").unwrap();
        assert_eq!(last_drill(dir.path(), "app", "local"), None);
    }
}
