//! The `[retention]` settings (global, and per source inside `[[sources]]`)
//! and their translation into backup-core's [`Policy`]. Checked when the
//! config is loaded, so a typo fails before any backup or prune runs.

use anyhow::{bail, Result};
use backup_core::retention::{Policy, Within, UNLIMITED};
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
        let within = match &self.keep_within {
            None => None,
            Some(s) => Some(
                s.parse::<Within>()
                    .map_err(|e| anyhow::anyhow!("{setting}.keep_within: {e}"))?,
            ),
        };
        Ok(Policy {
            last: count("keep_last", self.keep_last)?,
            hourly: count("keep_hourly", self.keep_hourly)?,
            daily: count("keep_daily", self.keep_daily)?,
            weekly: count("keep_weekly", self.keep_weekly)?,
            monthly: count("keep_monthly", self.keep_monthly)?,
            yearly: count("keep_yearly", self.keep_yearly)?,
            within,
        })
    }
}
