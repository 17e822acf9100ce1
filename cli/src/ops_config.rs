//! The operations part of the configuration: `[status]` thresholds, `[drill]`
//! settings (both with per-source overrides), `[[notify]]` endpoints, the
//! `[schedule]` of `offsite daemon` and the `[serve]` API of `offsite serve`. Kept apart from config.rs so the core
//! settings stay short; validated at load like everything else, so a typo in
//! a threshold or a cron expression is reported before anything runs.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use backup_core::source::SourceKind;
use serde::Deserialize;

use crate::config::{Config, SourceConfig};

/// A duration written like `"26h"`, `"90s"` or `"1day 2h"` (humantime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
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
    (num >= 0.0).then_some((num * scale as f64) as u64)
}

/// `[drill]` and `[sources.drill]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillSettings {
    /// The newest snapshot must be younger than this [default: the source's
    /// status max_age].
    pub max_age: Option<HumanDuration>,
    /// The restore must finish within this (the recovery time objective).
    pub rto_target: Option<HumanDuration>,
    /// A read-only SQL query run on the restored copy (SQLite sources).
    pub query: Option<String>,
    /// The least acceptable value of the query's first column of the first row.
    pub min_rows: Option<i64>,
}

/// `[status]` and `[sources.status]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSettings {
    pub max_age: Option<HumanDuration>,
    pub min_size: Option<ByteSize>,
    pub max_size_drop_percent: Option<f64>,
    /// Where `offsite status` (and the daemon's status job) writes Prometheus
    /// textfile metrics when `--prometheus` is not given. Global only.
    pub prometheus_file: Option<std::path::PathBuf>,
}

/// `[[notify]]`: where to report the outcome of backups, drills, status
/// checks, prunes and verifies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    pub kind: NotifyKind,
    pub url: String,
    /// Which events to report [default: every event for webhooks, "backup"
    /// for healthchecks].
    pub events: Option<Vec<String>>,
    /// Which outcomes to report, "success" and/or "failure" [default: both].
    /// Healthchecks always get their start ping and both outcomes: a check
    /// that only hears about failures cannot notice a job that never ran.
    pub on: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// POST a JSON description of each event.
    Webhook,
    /// Ping a healthchecks.io-style check: `<url>/start`, `<url>`, `<url>/fail`.
    Healthchecks,
}

/// `[schedule]`: cron expressions for `offsite daemon`, in local time; five
/// fields (`min hour day month weekday`) or six with seconds first.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub backup: Option<String>,
    pub prune: Option<String>,
    pub verify: Option<String>,
    pub drill: Option<String>,
    pub status: Option<String>,
}

impl ScheduleSettings {
    /// The configured jobs as (name, expression), in the order in which jobs
    /// due at the same moment run: a backup first, so that a drill or status
    /// check scheduled with it sees the new snapshot.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("backup", &self.backup),
            ("prune", &self.prune),
            ("verify", &self.verify),
            ("drill", &self.drill),
            ("status", &self.status),
        ]
        .into_iter()
        .filter_map(|(n, e)| e.as_deref().map(|e| (n, e)))
        .collect()
    }
}

/// `[serve]`: where `offsite serve` listens, the bearer tokens it
/// accepts (each stored as the SHA-256 of the token, never the token), and
/// whether it may restore in place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub tokens: Vec<ServeToken>,
    /// Whether a `{"kind": "restore"}` job may replace a source's live
    /// data (it still needs the `restore` scope and a confirmation); off
    /// unless set, so that no token can overwrite data on a host whose
    /// operator did not ask for it.
    #[serde(default)]
    pub restore_in_place: bool,
}

impl Default for ServeSettings {
    fn default() -> Self {
        ServeSettings {
            listen: default_listen(),
            tokens: Vec::new(),
            restore_in_place: false,
        }
    }
}

/// Loopback only unless another address is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8780";

fn default_listen() -> String {
    DEFAULT_LISTEN.to_string()
}

/// One `[[serve.tokens]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeToken {
    pub name: String,
    pub scopes: Vec<Scope>,
    /// Hex SHA-256 of the token (`offsite serve hash-token`).
    pub sha256: String,
}

/// What a token may do: `read` the GET endpoints, `operate` start jobs,
/// `restore` start restore-in-place jobs (where `[serve] restore_in_place`
/// allows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Operate,
    Restore,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Restore => "restore",
        }
    }
}

impl ServeSettings {
    /// The listen address, checked at load.
    pub fn address(&self) -> Result<std::net::SocketAddr> {
        self.listen.parse().map_err(|_| {
            anyhow::anyhow!(
                "serve.listen = {:?} is not an address with a port, like \"{DEFAULT_LISTEN}\"",
                self.listen
            )
        })
    }

    fn validate(&self) -> Result<()> {
        self.address()?;
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                bail!("serve.tokens[{i}].name is empty");
            }
            if !names.insert(&t.name) {
                bail!("serve.tokens: name {:?} is used twice", t.name);
            }
            if t.scopes.is_empty() {
                bail!(
                    "serve.tokens {:?}: scopes is empty; give read, operate and/or restore",
                    t.name
                );
            }
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "serve.tokens {:?}: sha256 must be 64 hex digits, the SHA-256 of the token \
                     (`offsite serve hash-token` makes a token and prints it)",
                    t.name
                );
            }
        }
        Ok(())
    }
}

/// The events `[[notify]] events` may name.
pub const NOTIFY_EVENTS: [&str; 5] = ["backup", "prune", "verify", "drill", "status"];
const OUTCOMES: [&str; 2] = ["success", "failure"];

/// Parses a `[schedule]` expression; `setting` names it in the error.
pub fn parse_cron(setting: &str, expr: &str) -> Result<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!(
                "{setting} = {expr:?} is not a cron expression; write 5 fields \
                 (minute hour day month weekday, e.g. \"0 2 * * *\") or 6 with seconds first"
            )
        })
}

impl Config {
    pub(crate) fn validate_monitoring(&self) -> Result<()> {
        let pct = |p: &Option<f64>, name: &str| -> Result<()> {
            if let Some(p) = p {
                if !(0.0..=100.0).contains(p) {
                    bail!("{name}.max_size_drop_percent = {p} must be 0 to 100");
                }
            }
            Ok(())
        };
        pct(&self.status.max_size_drop_percent, "status")?;
        check_drill(&self.drill, "drill")?;
        for s in &self.sources {
            if let Some(st) = &s.status {
                let name = format!("sources.{}.status", s.name);
                pct(&st.max_size_drop_percent, &name)?;
                if st.prometheus_file.is_some() {
                    bail!("{name}.prometheus_file: set it once, in [status]");
                }
            }
            if let Some(d) = &s.drill {
                let name = format!("sources.{}.drill", s.name);
                check_drill(d, &name)?;
                if d.min_rows.is_some() && d.query.is_none() && self.drill.query.is_none() {
                    bail!("{name}.min_rows needs a query (in [drill] or [sources.drill])");
                }
                if d.query.is_some() && s.kind != SourceKind::Sqlite {
                    bail!("{name}.query: a smoke query needs a sqlite source");
                }
            }
        }
        for (i, n) in self.notify.iter().enumerate() {
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                bail!(
                    "notify[{i}].url = {:?} must start with http:// or https://",
                    n.url
                );
            }
            for e in n.events.iter().flatten() {
                if !NOTIFY_EVENTS.contains(&e.as_str()) {
                    bail!(
                        "notify[{i}].events: unknown event {e:?} (events: {})",
                        NOTIFY_EVENTS.join(", ")
                    );
                }
            }
            for o in n.on.iter().flatten() {
                if !OUTCOMES.contains(&o.as_str()) {
                    bail!("notify[{i}].on: unknown outcome {o:?} (use \"success\" and/or \"failure\")");
                }
            }
        }
        if let Some(serve) = &self.serve {
            serve.validate()?;
        }
        for (job, expr) in self.schedule.entries() {
            let cron = parse_cron(&format!("schedule.{job}"), expr)?;
            // "0 0 30 2 *" parses but never comes: a daemon would never run it.
            if cron
                .find_next_occurrence(&chrono::Local::now(), false)
                .is_err()
            {
                bail!("schedule.{job} = {expr:?} never matches a date; check the day and month fields");
            }
        }
        Ok(())
    }

    fn source_config(&self, source: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == source)
    }

    /// The status thresholds of `source`: its own `[sources.status]` settings,
    /// each falling back to `[status]`; max_age defaults to 26 hours (a daily
    /// backup plus slack for a slow run).
    pub fn thresholds(&self, source: &str) -> backup_core::status::Thresholds {
        let own = self
            .source_config(source)
            .and_then(|s| s.status.clone())
            .unwrap_or_default();
        let global = &self.status;
        backup_core::status::Thresholds {
            max_age: Some(
                own.max_age
                    .or(global.max_age)
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(26 * 3600)),
            ),
            min_size: own.min_size.or(global.min_size).map(|b| b.0),
            max_size_drop_percent: own.max_size_drop_percent.or(global.max_size_drop_percent),
        }
    }

    /// The drill options of `source`: `[sources.drill]` over `[drill]`. A
    /// global query only applies to SQLite sources; max_age falls back to the
    /// status threshold.
    pub fn drill_options(&self, source: &str) -> backup_core::drill::DrillOptions {
        let src = self.source_config(source);
        let own = src.and_then(|s| s.drill.clone()).unwrap_or_default();
        let global = &self.drill;
        let sqlite = src.is_some_and(|s| s.kind == SourceKind::Sqlite);
        let (query, min_rows) = match own.query {
            Some(q) => (Some(q), own.min_rows),
            None if sqlite => (global.query.clone(), own.min_rows.or(global.min_rows)),
            None => (None, None),
        };
        backup_core::drill::DrillOptions {
            max_age: Some(
                own.max_age
                    .or(global.max_age)
                    .map(|d| d.0)
                    .or(self.thresholds(source).max_age)
                    .unwrap_or(Duration::from_secs(26 * 3600)),
            ),
            rto_target: own.rto_target.or(global.rto_target).map(|d| d.0),
            query: query.map(|sql| backup_core::drill::SmokeQuery { sql, min: min_rows }),
            ..Default::default()
        }
    }
}

fn check_drill(d: &DrillSettings, name: &str) -> Result<()> {
    if name == "drill" && d.min_rows.is_some() && d.query.is_none() {
        bail!("drill.min_rows needs drill.query (the query whose result it bounds)");
    }
    if let Some(q) = &d.query {
        if q.trim().is_empty() {
            bail!("{name}.query is empty: remove it or write a SELECT");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("10 MiB"), Some(10 << 20));
        assert_eq!(parse_size("1.5kb"), Some(1500));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn cron_expressions_with_and_without_seconds() {
        assert!(parse_cron("schedule.backup", "0 2 * * *").is_ok());
        assert!(parse_cron("schedule.backup", "*/5 * * * * *").is_ok());
        let e = parse_cron("schedule.backup", "0 25 * * *").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("schedule.backup = \"0 25 * * *\""),
            "{e:#}"
        );
        assert!(parse_cron("schedule.drill", "every night").is_err());
    }
}
