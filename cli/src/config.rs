//! Configuration: a TOML file (`--config`, else `$OFFSITE_CONFIG`, else
//! `./offsite.toml`, else `/etc/offsite/offsite.toml`: [`locate`]) overridden
//! by `OFFSITE_<SECTION>__<KEY>` environment variables
//! (`OFFSITE_ENCRYPTION__IDENTITY_FILE=...`; which ones are read:
//! config_env.rs). Every mistake is reported with the setting's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::usage::{self, Usage};

pub use crate::ops_config::{
    DrillSettings, NotifyConfig, ScheduleSettings, ServeSettings, StatusSettings,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub encryption: Encryption,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub backup: BackupSettings,
    /// What prune keeps, for sources without their own `retention`.
    #[serde(default)]
    pub retention: Option<crate::config_retention::RetentionConfig>,
    #[serde(default)]
    pub status: StatusSettings,
    #[serde(default)]
    pub drill: DrillSettings,
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    #[serde(default)]
    pub schedule: ScheduleSettings,
    /// Continuous replication (`offsite replicate`; the daemon runs it).
    #[serde(default)]
    pub replicate: Option<crate::cmd_replicate::ReplicateSettings>,
    /// `offsite serve`'s API; the daemon serves it too when it is set.
    #[serde(default)]
    pub serve: Option<ServeSettings>,
    /// Where offsite keeps its state on this host (the last drills):
    /// state.rs says what it defaults to.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// age recipients (public keys); all a backup host needs.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// The age identity file; needed to restore.
    pub identity_file: Option<PathBuf>,
    /// Format 2: the owner key (`offsite-owner1...`) this host trusts, for
    /// hosts without the owner's identity (validated at load).
    pub owner_key: Option<String>,
    /// Format 2: a backup host's writer key file (`offsite writer keygen`).
    pub writer_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: backup_core::source::SourceKind,
    pub path: PathBuf,
    /// Replaces the global `[retention]` entirely for this source.
    #[serde(default)]
    pub retention: Option<crate::config_retention::RetentionConfig>,
    /// `[sources.drill]`: overrides of the global `[drill]` settings.
    #[serde(default)]
    pub drill: Option<DrillSettings>,
    /// `[sources.status]`: overrides of the global `[status]` thresholds.
    #[serde(default)]
    pub status: Option<StatusSettings>,
    /// Shell command run before the source is read (see hooks.rs).
    pub before: Option<String>,
    /// Shell command run once the source has been read.
    pub after: Option<String>,
    /// Shell command run when the hooks or the backup of this source failed.
    pub on_error: Option<String>,
    /// Shell command run before a restore replaces this source's data.
    pub before_restore: Option<String>,
    /// Shell command run after such a restore, whether or not it succeeded.
    pub after_restore: Option<String>,
    /// DuckDB sources: how long to wait for a writer to close the database
    /// ("30s", "5m"); see [`SourceConfig::lock_timeout`].
    #[serde(rename = "lock_timeout")]
    pub lock_timeout_setting: Option<String>,
    /// When SQLite's integrity_check runs on this source's snapshots
    /// (format 2): at the first restore (the default), or at every backup.
    #[serde(default)]
    pub database_check: DatabaseCheckSetting,
    /// Where hooks run: the config file's directory.
    #[serde(skip)]
    pub hook_dir: Option<PathBuf>,
}

/// `database_check` of a source (docs/cli.md, "Database check").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseCheckSetting {
    /// The first restore (or drill) runs it and, as the owner, records it.
    #[default]
    Restore,
    /// Every backup runs it on the state it read and records an ok result.
    Backup,
}

/// `format` of a target: what a backup makes of it when it is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u32")]
pub enum RepoFormat {
    /// Unsigned snapshots and fixed recipients (docs/format.md, format 1).
    V1,
    /// Signed snapshots and changeable keys; created by its owner.
    #[default]
    V2,
}

impl TryFrom<u32> for RepoFormat {
    type Error = String;

    fn try_from(n: u32) -> Result<Self, String> {
        match n {
            1 => Ok(RepoFormat::V1),
            2 => Ok(RepoFormat::V2),
            n => Err(format!(
                "format = {n}: offsite makes format 1 or 2 repositories (2, the default, \
                 unless the stock-tools script or `offsite repair` must work on it)"
            )),
        }
    }
}

/// A target: its name and kind, plus the backend's own settings, which are
/// checked by that backend's config type.
#[derive(Debug, Deserialize)]
pub struct TargetConfig {
    pub name: String,
    pub kind: String,
    /// The format a backup makes of this target when it is empty.
    #[serde(default)]
    pub format: RepoFormat,
    /// Format 1 only: restore, verify and drill use its unsigned snapshots.
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(flatten)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// zstd level for packs (1-19). 3 is zstd's default balance.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// New data per pack object, in MiB.
    #[serde(default = "default_pack_mib")]
    pub pack_size_mib: usize,
    /// Pack uploads in flight per target.
    #[serde(default = "default_uploads")]
    pub upload_concurrency: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            compression_level: default_level(),
            pack_size_mib: default_pack_mib(),
            upload_concurrency: default_uploads(),
        }
    }
}

fn default_level() -> i32 {
    3
}
fn default_pack_mib() -> usize {
    // 4 MiB of new data is about 1 MiB stored: few enough requests for a
    // nightly backup, and small enough that the buffers in flight stay
    // well under restic's footprint.
    4
}
fn default_uploads() -> usize {
    4
}

/// The config file of a system-wide install, looked at last.
pub const SYSTEM_CONFIG: &str = "/etc/offsite/offsite.toml";

/// A config file, and what chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    WorkingDir,
    System,
}

impl Origin {
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Flag => "given by --config",
            Origin::Env => "given by $OFFSITE_CONFIG",
            Origin::WorkingDir => "./offsite.toml in the working directory",
            Origin::System => "the system-wide config",
        }
    }
}

/// Which config file to read: `--config`, else `$OFFSITE_CONFIG`, else the
/// first of `./offsite.toml` and [`SYSTEM_CONFIG`] that exists. A file named
/// by the flag or the variable must exist: falling back to another file
/// would back up what the user did not ask for.
pub fn locate(flag: Option<&Path>) -> Result<Located> {
    locate_in(
        flag,
        std::env::var_os("OFFSITE_CONFIG"),
        Path::new(SYSTEM_CONFIG),
    )
}

fn locate_in(
    flag: Option<&Path>,
    env: Option<std::ffi::OsString>,
    system: &Path,
) -> Result<Located> {
    let explicit = match (flag, env.filter(|v| !v.is_empty())) {
        (Some(p), _) => Some((p.to_path_buf(), Origin::Flag)),
        (None, Some(v)) => Some((PathBuf::from(v), Origin::Env)),
        (None, None) => None,
    };
    if let Some((path, origin)) = explicit {
        if !path.exists() {
            return Err(usage::mistake(format!(
                "config file {} ({}) not found",
                path.display(),
                origin.describe()
            )));
        }
        return Ok(Located { path, origin });
    }
    let candidates = [
        (PathBuf::from("offsite.toml"), Origin::WorkingDir),
        (system.to_path_buf(), Origin::System),
    ];
    for (path, origin) in candidates {
        if path.exists() {
            return Ok(Located { path, origin });
        }
    }
    Err(usage::mistake(format!(
        "no config file found; looked for, in order: --config FILE (not given), \
         $OFFSITE_CONFIG (not set), ./offsite.toml (not in {}), {} (does not exist). \
         Pass --config FILE, set OFFSITE_CONFIG, or run `offsite demo` to see a working setup",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|_| "the working directory".into()),
        system.display()
    )))
}

/// The file and the environment, merged: what [`load`] reads. `ignored` is
/// called with each `OFFSITE_*` variable that is not a setting.
pub fn figment(path: &Path, ignored: impl FnMut(&str)) -> Figment {
    let env = crate::config_env::provider(has_serve(path), ignored);
    Figment::new().merge(Toml::file_exact(path)).merge(env)
}

/// Whether the file has a `[serve]` section, which the environment's
/// `[serve]` settings need (config_env.rs). A file that does not parse
/// has none here; reading it reports why.
pub fn has_serve(path: &Path) -> bool {
    Figment::from(Toml::file_exact(path)).contains("serve")
}

pub fn load(path: &Path) -> Result<Config> {
    if !path.exists() {
        return Err(usage::mistake(format!(
            "config file {} not found; pass --config FILE, set OFFSITE_CONFIG, or run `offsite demo` \
             to see a working setup",
            path.display()
        )));
    }
    let figment = figment(path, |name| {
        eprintln!(
            "warning: ignoring {name}: not a setting (the environment sets \
             OFFSITE_<SECTION>__<KEY> for the keys of [{}]; [serve]'s only when the file \
             has a [serve] section, and never [[serve.tokens]])",
            crate::config_env::SECTIONS.join("], [")
        )
    });
    let mut config: Config = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("{}", describe_figment_error(e)))
        .context(Usage::Config(path.to_path_buf()))?;
    // Relative paths in the file are relative to the file, as users expect
    // when cron runs offsite from another directory.
    let base = path.parent().unwrap_or(Path::new("."));
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    for s in &mut config.sources {
        fix(&mut s.path);
        s.hook_dir = (!base.as_os_str().is_empty()).then(|| base.to_path_buf());
    }
    if let Some(p) = &mut config.encryption.identity_file {
        fix(p);
    }
    if let Some(p) = &mut config.encryption.writer_key_file {
        fix(p);
    }
    if let Some(p) = &mut config.status.prometheus_file {
        fix(p);
    }
    if let Some(p) = &mut config.state_dir {
        fix(p);
    }
    for t in &mut config.targets {
        for setting in crate::targets::path_settings(&t.kind) {
            if let Some(serde_json::Value::String(p)) = t.settings.get_mut(*setting) {
                let mut pb = PathBuf::from(&*p);
                fix(&mut pb);
                *p = pb.to_string_lossy().into_owned();
            }
        }
    }
    config
        .validate()
        .context(Usage::Config(path.to_path_buf()))?;
    Ok(config)
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            if path.is_empty() {
                return e.kind.to_string();
            }
            // The environment overrides the file: a set variable is where the value came from.
            let var = crate::config_env::variable_name(&path);
            let from = if std::env::var_os(&var).is_some() {
                format!(" (from the environment variable {var})")
            } else {
                String::new()
            };
            format!("{path}: {}{from}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    fn validate(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!(
                    "sources: name {:?} must be letters, digits, '-', '_' or '.'",
                    s.name
                );
            }
            if !names.insert(&s.name) {
                bail!("sources: name {:?} is used twice", s.name);
            }
            if let Some(t) = &s.lock_timeout_setting {
                if s.kind != backup_core::source::SourceKind::Duckdb {
                    bail!(
                        "sources {:?}: lock_timeout applies only to kind = \"duckdb\"",
                        s.name
                    );
                }
                humantime::parse_duration(t).map_err(|e| {
                    anyhow::anyhow!(
                        "sources {:?}: lock_timeout {t:?} is not a duration like \"30s\" or \"5m\" ({e})",
                        s.name
                    )
                })?;
            }
            for (hook, cmd) in [
                ("before", &s.before),
                ("after", &s.after),
                ("on_error", &s.on_error),
                ("before_restore", &s.before_restore),
                ("after_restore", &s.after_restore),
            ] {
                if cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    bail!(
                        "sources {:?}: {hook} is empty; give a shell command or remove the setting",
                        s.name
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            if !names.insert(&t.name) {
                bail!("targets: name {:?} is used twice", t.name);
            }
        }
        for t in &self.targets {
            for warning in crate::targets::check(t)? {
                eprintln!("warning: target {:?}: {warning}", t.name);
            }
        }
        if let Some(k) = &self.encryption.owner_key {
            k.parse::<backup_core::keys::OwnerPublic>()
                .map_err(|e| anyhow::anyhow!("encryption.owner_key: {e}"))?;
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            bail!("backup.compression_level must be 1 to 19");
        }
        if !(1..=256).contains(&self.backup.pack_size_mib) {
            bail!("backup.pack_size_mib must be 1 to 256");
        }
        if let Some(r) = &self.retention {
            r.policy("retention")?;
        }
        for s in &self.sources {
            if let Some(r) = &s.retention {
                r.policy(&format!("sources.{}.retention", s.name))?;
            }
        }
        self.validate_monitoring()?;
        if let Some(r) = &self.replicate {
            r.validate()?;
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name).ok_or_else(|| {
            usage::mistake(format!(
                "no source named {name:?} in the config (sources: {})",
                self.sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
}

impl SourceConfig {
    /// How long a DuckDB source waits for its writer (validated at load).
    pub fn lock_timeout(&self) -> std::time::Duration {
        self.lock_timeout_setting
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(backup_core::source::DEFAULT_LOCK_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The working directory is the crate's, which has no offsite.toml; the
    /// system path is a temporary file, since /etc cannot be written here.
    #[test]
    fn lookup_order_is_flag_variable_then_system_path() {
        assert!(!Path::new("offsite.toml").exists());
        let dir = tempfile::tempdir().unwrap();
        let (flag, var, system) = (
            dir.path().join("flag.toml"),
            dir.path().join("var.toml"),
            dir.path().join("system.toml"),
        );
        for f in [&flag, &var, &system] {
            std::fs::write(f, "").unwrap();
        }
        let found = |f: Option<&Path>, v: Option<&Path>| {
            locate_in(f, v.map(|v| v.as_os_str().to_owned()), &system)
        };
        let at = |path: &Path, origin| Located {
            path: path.to_path_buf(),
            origin,
        };
        assert_eq!(
            found(Some(&flag), Some(&var)).unwrap(),
            at(&flag, Origin::Flag)
        );
        assert_eq!(found(None, Some(&var)).unwrap(), at(&var, Origin::Env));
        assert_eq!(found(None, None).unwrap(), at(&system, Origin::System));
        std::fs::remove_file(&var).unwrap();
        let err = found(None, Some(&var)).unwrap_err().to_string();
        assert!(
            err.contains("var.toml") && err.contains("$OFFSITE_CONFIG"),
            "{err}"
        );
        std::fs::remove_file(&system).unwrap();
        let err = found(None, None).unwrap_err().to_string();
        assert!(
            err.contains("./offsite.toml") && err.contains("system.toml"),
            "{err}"
        );
    }
}
