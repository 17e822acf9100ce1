//! Configuration: a TOML file (`--config`, else `$OFFSITE_CONFIG`, else
//! `./offsite.toml`) overridden by `OFFSITE_*` environment variables
//! (`OFFSITE_ENCRYPTION__IDENTITY_FILE=...`: a double underscore separates
//! levels). Every mistake is reported with the setting's name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

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
    #[serde(default)]
    pub status: StatusSettings,
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
    #[serde(default)]
    pub schedule: ScheduleSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// age recipients (public keys); all a backup host needs.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// The age identity file; needed to restore.
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: backup_core::source::SourceKind,
    pub path: PathBuf,
    /// `[sources.drill]`: this source's restore drill.
    #[serde(default)]
    pub drill: DrillSettings,
    /// `[sources.status]`: overrides of the global `[status]` thresholds.
    #[serde(default)]
    pub status: Option<StatusSettings>,
}

/// A target: its name and kind, plus the backend's own settings, which are
/// checked by that backend's config type.
#[derive(Debug, Deserialize)]
pub struct TargetConfig {
    pub name: String,
    pub kind: String,
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
    8
}
fn default_uploads() -> usize {
    4
}

/// Which config file to read.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("OFFSITE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("offsite.toml"))
}

pub fn load(path: &Path) -> Result<Config> {
    if !path.exists() {
        bail!(
            "config file {} not found; pass --config FILE, set OFFSITE_CONFIG, or run `offsite demo` \
             to see a working setup",
            path.display()
        );
    }
    let figment = Figment::new().merge(Toml::file_exact(path)).merge(
        Env::prefixed("OFFSITE_")
            .ignore(&["CONFIG", "IDENTITY_PASSPHRASE", "LOG"])
            .split("__"),
    );
    let mut config: Config = figment
        .extract()
        .map_err(|e| anyhow::anyhow!("{}", describe_figment_error(e)))
        .with_context(|| format!("invalid config {}", path.display()))?;
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
    }
    if let Some(p) = &mut config.encryption.identity_file {
        fix(p);
    }
    for t in &mut config.targets {
        if t.kind == "local" {
            if let Some(serde_json::Value::String(p)) = t.settings.get_mut("path") {
                let mut pb = PathBuf::from(&*p);
                fix(&mut pb);
                *p = pb.to_string_lossy().into_owned();
            }
        }
    }
    config
        .validate()
        .with_context(|| format!("invalid config {}", path.display()))?;
    Ok(config)
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            if path.is_empty() {
                e.kind.to_string()
            } else {
                format!("{path}: {}", e.kind)
            }
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
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            if !names.insert(&t.name) {
                bail!("targets: name {:?} is used twice", t.name);
            }
        }
        for t in &self.targets {
            crate::targets::check(t)?;
        }
        if !(1..=19).contains(&self.backup.compression_level) {
            bail!("backup.compression_level must be 1 to 19");
        }
        if !(1..=256).contains(&self.backup.pack_size_mib) {
            bail!("backup.pack_size_mib must be 1 to 256");
        }
        self.validate_monitoring()?;
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<&SourceConfig> {
        self.sources
            .iter()
            .find(|s| s.name == name)
            .with_context(|| {
                format!(
                    "no source named {name:?} in the config (sources: {})",
                    self.sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }
}

// Monitoring, notification and scheduling settings (`offsite drill`,
// `offsite status`, `[[notify]]`, `offsite daemon`).

/// A duration written like `"26h"`, `"90s"` or `"1day 2h"` (humantime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(HumanDuration).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}); write it like \"26h\", \"90s\" or \"1day 2h\""
            ))
        })
    }
}

/// A byte count: an integer, or a string like `"10MB"`, `"512KiB"`, `"1.5GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => parse_size(&s).map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a size; write bytes (10485760) or \"10MB\", \"10MiB\""
                ))
            }),
        }
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = (s[..split].trim().parse::<f64>().ok()?, s[split..].trim());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" | "t" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return None,
    };
    (num >= 0.0).then(|| (num * scale as f64) as u64)
}

/// `[sources.drill]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSettings {
    /// The newest snapshot must be younger than this [default: the source's
    /// status max_age].
    pub max_age: Option<HumanDuration>,
    /// The restore must finish within this.
    pub rto_target: Option<HumanDuration>,
    /// A read-only SQL query run on the restored copy.
    pub query: Option<String>,
    /// The least acceptable value of the query's first column of the first row.
    pub min: Option<i64>,
}

/// `[status]` and `[sources.status]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    pub max_age: Option<HumanDuration>,
    pub min_size: Option<ByteSize>,
    pub max_size_drop_percent: Option<f64>,
}

/// `[[notify]]`: where to report the outcome of backups, drills, prunes and verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub kind: NotifyKind,
    pub url: String,
    /// Which events to report [default: all for webhooks, "backup" for healthchecks].
    pub events: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// POST a JSON description of each event.
    Webhook,
    /// Ping a healthchecks.io-style check: `<url>/start`, `<url>`, `<url>/fail`.
    Healthchecks,
}

/// `[schedule]`: cron expressions (`sec min hour day month weekday`, the
/// seconds field optional) for `offsite daemon`, in local time.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub backup: Option<String>,
    pub drill: Option<String>,
    pub prune: Option<String>,
    pub verify: Option<String>,
}

/// The events `[[notify]] events` may name.
pub const NOTIFY_EVENTS: [&str; 4] = ["backup", "prune", "verify", "drill"];

impl Config {
    fn validate_monitoring(&self) -> Result<()> {
        let pct = |p: &Option<f64>, name: &str| -> Result<()> {
            if let Some(p) = p {
                if !(0.0..=100.0).contains(p) {
                    bail!("{name}.max_size_drop_percent must be 0 to 100");
                }
            }
            Ok(())
        };
        pct(&self.status.max_size_drop_percent, "status")?;
        for s in &self.sources {
            if let Some(st) = &s.status {
                pct(&st.max_size_drop_percent, &format!("sources.{}.status", s.name))?;
            }
            if s.drill.min.is_some() && s.drill.query.is_none() {
                bail!("sources.{}.drill.min needs a drill.query", s.name);
            }
            if s.drill.query.is_some() && s.kind != backup_core::source::SourceKind::Sqlite {
                bail!("sources.{}.drill.query needs a sqlite source", s.name);
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                bail!("notify.{i}.url must start with http:// or https://");
            }
            for e in n.events.iter().flatten() {
                if !NOTIFY_EVENTS.contains(&e.as_str()) {
                    bail!(
                        "notify.{i}.events: unknown event {e:?} (events: {})",
                        NOTIFY_EVENTS.join(", ")
                    );
                }
            }
        }
        crate::daemon::jobs(&self.schedule)?;
        Ok(())
    }

    /// The status thresholds of `source`: its own `[sources.status]` settings,
    /// each falling back to `[status]`; max_age defaults to 26 hours (a daily
    /// backup plus slack for a slow run).
    pub fn thresholds(&self, source: &str) -> backup_core::status::Thresholds {
        let own = self
            .sources
            .iter()
            .find(|s| s.name == source)
            .and_then(|s| s.status.clone())
            .unwrap_or_default();
        let global = &self.status;
        backup_core::status::Thresholds {
            max_age: Some(
                own.max_age
                    .or(global.max_age)
                    .map(|d| d.0)
                    .unwrap_or(std::time::Duration::from_secs(26 * 3600)),
            ),
            min_size: own.min_size.or(global.min_size).map(|b| b.0),
            max_size_drop_percent: own.max_size_drop_percent.or(global.max_size_drop_percent),
        }
    }
}

#[cfg(test)]
mod monitoring_tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("10 MiB"), Some(10 << 20));
        assert_eq!(parse_size("1.5kb"), Some(1500));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
