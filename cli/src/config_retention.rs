//! The `[retention]` settings (global, and per source inside `[[sources]]`)
//! and their translation into backup-core's [`Policy`]. Checked when the
//! config is loaded, so a typo fails before any backup or prune runs.

use anyhow::{bail, Result};
use backup_core::retention::{Policy, Within, DEFAULT_PRE_RESTORE, UNLIMITED};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<i64>,
    pub keep_hourly: Option<i64>,
    pub keep_daily: Option<i64>,
    pub keep_weekly: Option<i64>,
    pub keep_monthly: Option<i64>,
    pub keep_yearly: Option<i64>,
    /// A duration such as "2d", "36h" or "1y2m".
    pub keep_within: Option<String>,
    /// How long each pre-restore snapshot is kept after it was taken, a
    /// duration like `keep_within` [default: "30d"]. Such snapshots count in
    /// no other rule.
    pub keep_pre_restore: Option<String>,
}

impl RetentionConfig {
    /// The policy; `setting` names the table in errors (`retention`,
    /// `sources.app.retention`).
    pub fn policy(&self, setting: &str) -> Result<Policy> {
        let count = |name: &str, v: Option<i64>| -> Result<u64> {
            match v {
                None | Some(0) => Ok(0),
                Some(-1) => Ok(UNLIMITED),
                Some(n) if n > 0 => Ok(n as u64),
                Some(n) => bail!("{setting}.{name} = {n}: use a count of 0 or more, or -1 to keep one per period for ever"),
            }
        };
        let duration = |name: &str, v: &str| {
            v.parse::<Within>()
                .map_err(|e| anyhow::anyhow!("{setting}.{name}: {e}"))
        };
        let within = match &self.keep_within {
            None => None,
            Some(s) => Some(duration("keep_within", s)?),
        };
        let pre_restore = match &self.keep_pre_restore {
            None => DEFAULT_PRE_RESTORE,
            Some(s) => duration("keep_pre_restore", s)?,
        };
        Ok(Policy {
            last: count("keep_last", self.keep_last)?,
            hourly: count("keep_hourly", self.keep_hourly)?,
            daily: count("keep_daily", self.keep_daily)?,
            weekly: count("keep_weekly", self.keep_weekly)?,
            monthly: count("keep_monthly", self.keep_monthly)?,
            yearly: count("keep_yearly", self.keep_yearly)?,
            within,
            pre_restore,
        })
    }
}
