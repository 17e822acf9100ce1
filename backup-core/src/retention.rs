//! Retention policies: which snapshots of one source a prune keeps, and why.
//!
//! The semantics are restic's `forget` policy, which users of backup tools
//! already know:
//! - snapshots are taken newest first;
//! - `last n` keeps the n newest;
//! - `hourly/daily/weekly/monthly/yearly n` keep the newest snapshot of each of
//!   the n newest hours/days/ISO weeks/months/years (in local time) *that have
//!   snapshots*; if a rule still has count left when the oldest snapshot is
//!   reached, that oldest snapshot is kept too (it lengthens the history);
//! - a count of [`UNLIMITED`] keeps one per bucket for ever;
//! - `within 1y2m3d4h` keeps every snapshot taken after the newest snapshot's
//!   time minus that duration (calendar years, months and days, then hours);
//! - pinned snapshots are always kept; like restic's `--keep-tag` they still
//!   count in the buckets they fall in.
//!
//! Pre-restore snapshots (the copy of a file that `restore --force` was about
//! to replace, tagged [`crate::repo::PRE_RESTORE_TAG`]) follow their own rule
//! instead: each is kept until [`Policy::pre_restore`] after it was taken,
//! compared with `now` (the clock, not the newest snapshot: it is an undo
//! copy with a shelf life), then removed, unless pinned. They take
//! no part in the rules above: they fill no bucket, do not count for `last`
//! and do not anchor `within`. A restore at 10:00 of the snapshot taken at
//! 02:00 must not make that 02:00 snapshot lose its day to the copy of the
//! damaged file.
//!
//! A snapshot no rule keeps is removed. An empty policy keeps everything,
//! pre-restore snapshots too: a missing configuration must never delete data.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, Months, TimeZone, Timelike, Utc};

use crate::repo::{newest_first, Dated};

/// A count meaning "every bucket" (`-1` in the configuration, as in restic).
pub const UNLIMITED: u64 = u64::MAX;

/// How long a pre-restore snapshot is kept when the policy does not say.
pub const DEFAULT_PRE_RESTORE: Within = Within {
    years: 0,
    months: 0,
    days: 30,
    hours: 0,
};

/// How many snapshots to keep by each rule; zero disables a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub last: u64,
    pub hourly: u64,
    pub daily: u64,
    pub weekly: u64,
    pub monthly: u64,
    pub yearly: u64,
    pub within: Option<Within>,
    /// How long each pre-restore snapshot is kept after it was taken.
    pub pre_restore: Within,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            last: 0,
            hourly: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
            yearly: 0,
            within: None,
            pre_restore: DEFAULT_PRE_RESTORE,
        }
    }
}

impl Policy {
    /// True when no rule for regular snapshots is set (`pre_restore` alone
    /// does not count): such a policy keeps every snapshot.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none_or(|w| w.is_zero())
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, n) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            match n {
                0 => {}
                UNLIMITED => parts.push(format!("{name} all")),
                n => parts.push(format!("{name} {n}")),
            }
        }
        if let Some(w) = self.within {
            parts.push(format!("within {w}"));
        }
        if parts.is_empty() {
            f.write_str("(none)")
        } else {
            parts.push(format!("pre-restore {}", self.pre_restore));
            f.write_str(&parts.join(", "))
        }
    }
}

/// A calendar duration such as `2d`, `36h` or `1y2m`: years, months, days, hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Within {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Within {
    pub fn is_zero(&self) -> bool {
        *self == Within::default()
    }

    /// `t` minus this duration, with calendar arithmetic as restic does, except
    /// that a month before March 31st is the last day of February (Go's
    /// AddDate would overflow into March 3rd).
    fn before(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years * 12 + self.months;
        t.checked_sub_months(Months::new(months))
            .and_then(|t| t.checked_sub_days(Days::new(self.days.into())))
            .and_then(|t| t.checked_sub_signed(chrono::Duration::hours(self.hours.into())))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// `t` plus this duration, with the same calendar arithmetic.
    pub fn after(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let months = self.years * 12 + self.months;
        t.checked_add_months(Months::new(months))
            .and_then(|t| t.checked_add_days(Days::new(self.days.into())))
            .and_then(|t| t.checked_add_signed(chrono::Duration::hours(self.hours.into())))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

impl FromStr for Within {
    type Err = String;

    fn from_str(s: &str) -> Result<Within, String> {
        let bad = || {
            format!("{s:?} is not a duration (use a number and a unit y, m, d or h, e.g. \"2d\", \"36h\", \"1y2m\")")
        };
        let mut w = Within::default();
        let mut digits = String::new();
        let mut any = false;
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: u32 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            match c {
                'y' => w.years += n,
                'm' => w.months += n,
                'd' => w.days += n,
                'h' => w.hours += n,
                _ => return Err(bad()),
            }
            any = true;
        }
        if !digits.is_empty() || !any {
            return Err(bad());
        }
        Ok(w)
    }
}

impl fmt::Display for Within {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        if self.is_zero() {
            f.write_str("0h")?;
        }
        Ok(())
    }
}

/// One snapshot as the policy sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
    pub pinned: bool,
    /// A pre-restore snapshot: kept by [`Policy::pre_restore`] only.
    pub pre_restore: bool,
}

impl Dated for Candidate {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }
    fn id(&self) -> &str {
        &self.id
    }
}

/// The verdict on one snapshot: kept (with every rule that keeps it) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Why it is kept, e.g. `"daily 2026-11-22"`, `"last 3"`, `"pinned"`,
    /// `"pre-restore 30d"`; empty when it is removed.
    pub reasons: Vec<String>,
    /// For a pre-restore snapshot: when its rule stops keeping it (in the
    /// past when that is why it is removed).
    pub expires: Option<DateTime<Utc>>,
}

impl Dated for Decision {
    fn time(&self) -> DateTime<Utc> {
        self.time
    }
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Clone, Copy)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    /// The bucket a snapshot falls in, and how a reason names it.
    fn bucket<Tz: TimeZone>(self, t: &DateTime<Tz>, position: usize) -> (i64, String) {
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month()),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Rule::Last => (position as i64, String::new()),
            Rule::Hourly => (
                ((y * 100 + m) * 100 + d) * 100 + h,
                format!("hourly {y:04}-{m:02}-{d:02} {h:02}h"),
            ),
            Rule::Daily => (
                (y * 100 + m) * 100 + d,
                format!("daily {y:04}-{m:02}-{d:02}"),
            ),
            Rule::Weekly => {
                let w = t.iso_week();
                (
                    i64::from(w.year()) * 100 + i64::from(w.week()),
                    format!("weekly {:04}-W{:02}", w.year(), w.week()),
                )
            }
            Rule::Monthly => (y * 100 + m, format!("monthly {y:04}-{m:02}")),
            Rule::Yearly => (y, format!("yearly {y:04}")),
        }
    }
}

/// Applies `policy` to one group of snapshots (one source on one target).
/// Buckets are computed in `tz` (the local time zone in production); `now`
/// keeps snapshots with clocks in the future from anchoring `within`, and is
/// what pre-restore snapshots expire against. Returns one decision per
/// snapshot, newest first.
pub fn apply<Tz: TimeZone>(
    policy: &Policy,
    snapshots: &[Candidate],
    tz: &Tz,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    if policy.is_empty() {
        let mut list: Vec<&Candidate> = snapshots.iter().collect();
        list.sort_by(newest_first);
        return list
            .into_iter()
            .map(|c| Decision {
                id: c.id.clone(),
                time: c.time,
                keep: true,
                reasons: vec!["no retention policy".into()],
                expires: None,
            })
            .collect();
    }
    let (mut undo, mut list): (Vec<&Candidate>, Vec<&Candidate>) =
        snapshots.iter().partition(|c| c.pre_restore);
    list.sort_by(newest_first);
    undo.sort_by(newest_first);
    let mut decisions = apply_rules(policy, &list, tz, now);
    decisions.extend(
        undo.into_iter()
            .map(|c| pre_restore(policy.pre_restore, c, now)),
    );
    decisions.sort_by(newest_first);
    decisions
}

/// The verdict on a pre-restore snapshot: kept until its time plus `keep`.
fn pre_restore(keep: Within, c: &Candidate, now: DateTime<Utc>) -> Decision {
    let expires = keep.after(c.time);
    let mut reasons = Vec::new();
    if c.pinned {
        reasons.push("pinned".to_string());
    }
    if expires > now {
        reasons.push(format!("pre-restore {keep}"));
    }
    Decision {
        id: c.id.clone(),
        time: c.time,
        keep: !reasons.is_empty(),
        reasons,
        expires: Some(expires),
    }
}

/// The regular rules over `list` (newest first, no pre-restore snapshots).
fn apply_rules<Tz: TimeZone>(
    policy: &Policy,
    list: &[&Candidate],
    tz: &Tz,
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let latest = list
        .iter()
        .map(|c| c.time)
        .filter(|t| *t <= now)
        .max()
        .or_else(|| list.iter().map(|c| c.time).min());
    let within_start = policy
        .within
        .filter(|w| !w.is_zero())
        .zip(latest)
        .map(|(w, latest)| (w, w.before(latest)));

    let mut rules: Vec<(Rule, u64, Option<i64>)> = [
        (Rule::Last, policy.last),
        (Rule::Hourly, policy.hourly),
        (Rule::Daily, policy.daily),
        (Rule::Weekly, policy.weekly),
        (Rule::Monthly, policy.monthly),
        (Rule::Yearly, policy.yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| (r, n, None))
    .collect();

    let count = list.len();
    list.iter()
        .enumerate()
        .map(|(position, c)| {
            let mut reasons = Vec::new();
            if c.pinned {
                reasons.push("pinned".to_string());
            }
            if let Some((w, start)) = within_start {
                if c.time > start {
                    reasons.push(format!("within {w}"));
                }
            }
            let local = c.time.with_timezone(tz);
            let oldest = position + 1 == count;
            // As restic's --keep-tag: a pinned snapshot also fills the
            // buckets it falls in, so it is listed with those rules too.
            for (rule, left, last) in rules.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let (bucket, name) = rule.bucket(&local, position);
                if Some(bucket) != *last || oldest {
                    *last = Some(bucket);
                    if *left != UNLIMITED {
                        *left -= 1;
                    }
                    reasons.push(match rule {
                        Rule::Last if policy.last == UNLIMITED => "last (all)".to_string(),
                        Rule::Last => format!("last {}", policy.last),
                        _ => name,
                    });
                }
            }
            Decision {
                id: c.id.clone(),
                time: c.time,
                keep: !reasons.is_empty(),
                reasons,
                expires: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn snaps(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                id: format!("s{i:02}"),
                time: at(t),
                pinned: false,
                pre_restore: false,
            })
            .collect()
    }

    /// Ids kept, newest first.
    fn kept(policy: &Policy, list: &[Candidate]) -> Vec<String> {
        apply(policy, list, &Utc, at("2030-01-01T00:00:00Z"))
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect()
    }

    fn reasons(policy: &Policy, list: &[Candidate], id: &str) -> Vec<String> {
        apply(policy, list, &Utc, at("2030-01-01T00:00:00Z"))
            .into_iter()
            .find(|d| d.id == id)
            .unwrap()
            .reasons
    }

    /// Two snapshots a day, at 03:00 and 15:00, from 2026-11-01 to 2026-11-22.
    fn twice_daily() -> Vec<Candidate> {
        let mut times = Vec::new();
        for d in 1..=22 {
            times.push(format!("2026-11-{d:02}T03:00:00Z"));
            times.push(format!("2026-11-{d:02}T15:00:00Z"));
        }
        let refs: Vec<&str> = times.iter().map(String::as_str).collect();
        snaps(&refs)
    }

    fn id_at(list: &[Candidate], t: &str) -> String {
        list.iter().find(|c| c.time == at(t)).unwrap().id.clone()
    }

    /// One history, many policies: the kept set and the reason of one kept
    /// snapshot, worked out by hand from restic's rules.
    #[test]
    fn table_of_policies() {
        let list = snaps(&[
            "2026-11-23T10:00:00Z", // s0 Monday, 2026-W48
            "2026-11-23T08:00:00Z", // s1
            "2026-11-22T22:00:00Z", // s2 Sunday, 2026-W47
            "2026-11-20T12:00:00Z", // s3 Friday, 2026-W47
            "2026-11-13T12:00:00Z", // s4 2026-W46
            "2026-11-01T12:00:00Z", // s5 2026-W44
            "2026-10-15T12:00:00Z", // s6 2026-W42
            "2026-09-30T12:00:00Z", // s7 2026-W40
            "2025-12-31T12:00:00Z", // s8 Wednesday of ISO week 2026-W01
            "2025-06-15T12:00:00Z", // s9 2025-W24
        ]);
        let p = |f: fn(&mut Policy)| {
            let mut p = Policy::default();
            f(&mut p);
            p
        };
        // (policy, kept ids, (one kept id, its reasons))
        type Row = (Policy, Vec<&'static str>, (&'static str, Vec<&'static str>));
        let table: Vec<Row> = vec![
            (
                p(|p| p.last = 4),
                vec!["s00", "s01", "s02", "s03"],
                ("s03", vec!["last 4"]),
            ),
            (
                p(|p| p.hourly = 3),
                vec!["s00", "s01", "s02"],
                ("s02", vec!["hourly 2026-11-22 22h"]),
            ),
            (
                p(|p| p.daily = 3),
                vec!["s00", "s02", "s03"],
                ("s03", vec!["daily 2026-11-20"]),
            ),
            (
                p(|p| p.weekly = 3),
                vec!["s00", "s02", "s04"],
                ("s04", vec!["weekly 2026-W46"]),
            ),
            (
                p(|p| p.monthly = 3),
                vec!["s00", "s06", "s07"],
                ("s07", vec!["monthly 2026-09"]),
            ),
            // Count left at the oldest snapshot: it is kept too.
            (
                p(|p| p.yearly = 5),
                vec!["s00", "s08", "s09"],
                ("s09", vec!["yearly 2025"]),
            ),
            (
                p(|p| p.weekly = 10),
                vec!["s00", "s02", "s04", "s05", "s06", "s07", "s08", "s09"],
                ("s08", vec!["weekly 2026-W01"]),
            ),
            (
                p(|p| p.within = Some("3d".parse().unwrap())),
                vec!["s00", "s01", "s02", "s03"],
                ("s03", vec!["within 3d"]),
            ),
            (
                p(|p| p.within = Some("1y".parse().unwrap())),
                vec![
                    "s00", "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08",
                ],
                ("s08", vec!["within 1y"]),
            ),
            (
                p(|p| {
                    p.daily = 2;
                    p.monthly = 2;
                }),
                vec!["s00", "s02", "s06"],
                ("s00", vec!["daily 2026-11-23", "monthly 2026-11"]),
            ),
        ];
        for (policy, expected, (id, why)) in table {
            assert_eq!(kept(&policy, &list), expected, "{policy}");
            assert_eq!(reasons(&policy, &list, id), why, "{policy}");
        }
    }

    /// Backups at 02:00 on two days, then at 10:00 a `restore --force` of the
    /// second day's snapshot: the pre-restore snapshot of the damaged file
    /// must not take that day's slot from the snapshot that was restored.
    #[test]
    fn a_pre_restore_snapshot_takes_no_slot_from_the_snapshot_it_replaced() {
        let mut list = snaps(&[
            "2026-11-22T10:00:00Z", // s00: pre-restore, the damaged file
            "2026-11-22T02:00:00Z", // s01: the good one, restored
            "2026-11-21T02:00:00Z", // s02
        ]);
        list[0].pre_restore = true;
        let now = at("2026-11-22T11:00:00Z");
        // (policy, whether the first day's snapshot is kept too)
        for (p, first_day) in [
            (
                Policy {
                    daily: 7,
                    ..Default::default()
                },
                true,
            ),
            (
                Policy {
                    last: 2,
                    ..Default::default()
                },
                true,
            ),
            (
                Policy {
                    hourly: 1,
                    daily: 1,
                    ..Default::default()
                },
                false,
            ),
        ] {
            let d = apply(&p, &list, &Utc, now);
            let ids: Vec<(&str, bool)> = d.iter().map(|d| (d.id.as_str(), d.keep)).collect();
            assert_eq!(
                ids,
                [("s00", true), ("s01", true), ("s02", first_day)],
                "{p}"
            );
            assert_eq!(d[0].reasons, ["pre-restore 30d"], "{p}");
            assert_eq!(d[0].expires, Some(at("2026-12-22T10:00:00Z")));
            assert_eq!(d[1].expires, None);
        }
        let daily = Policy {
            daily: 7,
            ..Default::default()
        };
        assert_eq!(
            apply(&daily, &list, &Utc, now)[1].reasons,
            ["daily 2026-11-22"]
        );
    }

    #[test]
    fn pre_restore_snapshots_expire_by_their_own_rule_unless_pinned() {
        let mut list = snaps(&[
            "2026-11-22T10:00:00Z", // s00 pre-restore
            "2026-11-22T02:00:00Z", // s01
            "2026-11-01T10:00:00Z", // s02 pre-restore, pinned
            "2026-10-01T10:00:00Z", // s03 pre-restore
        ]);
        for i in [0, 2, 3] {
            list[i].pre_restore = true;
        }
        list[2].pinned = true;
        let p = Policy {
            last: 1,
            within: Some("1d".parse().unwrap()),
            pre_restore: "1m".parse().unwrap(),
            ..Default::default()
        };
        let d = apply(&p, &list, &Utc, at("2026-12-02T00:00:00Z"));
        let v: Vec<(&str, bool, Vec<String>)> = d
            .iter()
            .map(|d| (d.id.as_str(), d.keep, d.reasons.clone()))
            .collect();
        assert_eq!(
            v,
            [
                ("s00", true, vec!["pre-restore 1m".to_string()]),
                // within counts from the newest regular snapshot, last from the regular ones.
                ("s01", true, vec!["within 1d".into(), "last 1".into()]),
                ("s02", true, vec!["pinned".into()]),
                ("s03", false, vec![]),
            ]
        );
        assert_eq!(d[3].expires, Some(at("2026-11-01T10:00:00Z")));
        // No policy at all: everything stays, pre-restore snapshots too.
        let none = apply(&Policy::default(), &list, &Utc, at("2030-01-01T00:00:00Z"));
        assert!(none.iter().all(|d| d.keep));
        // A policy of only pre-restore snapshots leaves the others' rules empty.
        assert!(Policy {
            pre_restore: "1d".parse().unwrap(),
            ..Default::default()
        }
        .is_empty());
    }

    #[test]
    fn durations_parse_like_restic() {
        assert_eq!(
            "1y2m3d4h".parse::<Within>().unwrap(),
            Within {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!("36h".parse::<Within>().unwrap().hours, 36);
        assert_eq!("2d".parse::<Within>().unwrap().to_string(), "2d");
        for bad in ["", "2", "d", "2w", "1.5d", "-2d", "2 days"] {
            let e = bad.parse::<Within>().unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let list = twice_daily();
        assert_eq!(kept(&Policy::default(), &list).len(), list.len());
        assert_eq!(
            reasons(&Policy::default(), &list, "s00"),
            ["no retention policy"]
        );
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let list = twice_daily();
        let p = Policy {
            last: 3,
            ..Default::default()
        };
        assert_eq!(kept(&p, &list), ["s43", "s42", "s41"]);
        assert_eq!(reasons(&p, &list, "s42"), ["last 3"]);
        let all = Policy {
            last: UNLIMITED,
            ..Default::default()
        };
        assert_eq!(kept(&all, &list).len(), list.len());
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day_with_snapshots() {
        let list = twice_daily();
        let p = Policy {
            daily: 3,
            ..Default::default()
        };
        let expected: Vec<String> = ["2026-11-22", "2026-11-21", "2026-11-20"]
            .iter()
            .map(|d| id_at(&list, &format!("{d}T15:00:00Z")))
            .collect();
        assert_eq!(kept(&p, &list), expected);
        assert_eq!(reasons(&p, &list, &expected[1]), ["daily 2026-11-21"]);

        // Days without snapshots do not count: a gap of a week still leaves 3 days.
        let gappy = snaps(&[
            "2026-11-22T10:00:00Z",
            "2026-11-14T10:00:00Z",
            "2026-11-14T09:00:00Z",
            "2026-11-10T10:00:00Z",
            "2026-11-01T10:00:00Z",
        ]);
        assert_eq!(kept(&p, &gappy), ["s00", "s01", "s03"]);
    }

    #[test]
    fn the_oldest_snapshot_is_kept_while_a_rule_has_count_left() {
        let list = snaps(&[
            "2026-11-22T15:00:00Z",
            "2026-11-22T03:00:00Z",
            "2026-11-21T15:00:00Z",
            "2026-11-21T03:00:00Z",
        ]);
        let p = Policy {
            daily: 7,
            ..Default::default()
        };
        // Two days for seven: both days' newest, plus the oldest snapshot.
        assert_eq!(kept(&p, &list), ["s00", "s02", "s03"]);
    }

    #[test]
    fn weekly_monthly_yearly_use_iso_weeks_and_calendar_months() {
        let list = snaps(&[
            "2026-11-23T10:00:00Z", // Monday, ISO week 48
            "2026-11-22T10:00:00Z", // Sunday, week 47
            "2026-11-16T10:00:00Z", // Monday, week 47
            "2026-10-31T10:00:00Z",
            "2026-10-01T10:00:00Z",
            "2025-12-31T10:00:00Z",
            "2025-06-01T10:00:00Z",
            "2024-12-29T10:00:00Z", // Sunday of 2024-W52
        ]);
        let weekly = Policy {
            weekly: 2,
            ..Default::default()
        };
        assert_eq!(kept(&weekly, &list), ["s00", "s01"]);
        assert_eq!(reasons(&weekly, &list, "s01"), ["weekly 2026-W47"]);
        let monthly = Policy {
            monthly: 3,
            ..Default::default()
        };
        assert_eq!(kept(&monthly, &list), ["s00", "s03", "s05"]);
        let yearly = Policy {
            yearly: 10,
            ..Default::default()
        };
        assert_eq!(kept(&yearly, &list), ["s00", "s05", "s07"]);
        assert_eq!(reasons(&yearly, &list, "s05"), ["yearly 2025"]);
    }

    #[test]
    fn buckets_follow_the_given_time_zone() {
        // 23:30 UTC on the 21st is 00:30 on the 22nd at UTC+1.
        let list = snaps(&[
            "2026-11-22T10:00:00Z",
            "2026-11-21T23:30:00Z",
            "2026-11-20T10:00:00Z",
        ]);
        let p = Policy {
            daily: 2,
            ..Default::default()
        };
        let plus_one = FixedOffset::east_opt(3600).unwrap();
        let now = at("2030-01-01T00:00:00Z");
        let keep = |tz: &FixedOffset| -> Vec<String> {
            apply(&p, &list, tz, now)
                .into_iter()
                .filter(|d| d.keep)
                .map(|d| d.id)
                .collect()
        };
        assert_eq!(keep(&FixedOffset::east_opt(0).unwrap()), ["s00", "s01"]);
        assert_eq!(keep(&plus_one), ["s00", "s02"]);
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot_with_calendar_months() {
        let list = snaps(&[
            "2026-03-31T12:00:00Z",
            "2026-03-01T12:00:00Z",
            "2026-02-28T12:00:01Z",
            "2026-02-28T12:00:00Z",
            "2026-02-27T12:00:00Z",
        ]);
        let p = Policy {
            within: Some("1m".parse().unwrap()),
            ..Default::default()
        };
        // 2026-03-31 minus one month is 2026-02-28 12:00 (restic: strictly after).
        assert_eq!(kept(&p, &list), ["s00", "s01", "s02"]);
        assert_eq!(reasons(&p, &list, "s01"), ["within 1m"]);
        let hours = Policy {
            within: Some("36h".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(kept(&hours, &list), ["s00"]);
        // Not relative to now: old repositories are not emptied by a stopped backup.
        let far_now = apply(&p, &list, &Utc, at("2099-01-01T00:00:00Z"));
        assert_eq!(far_now.iter().filter(|d| d.keep).count(), 3);
    }

    #[test]
    fn pinned_snapshots_are_always_kept_and_fill_their_buckets() {
        let mut list = twice_daily();
        let pinned = id_at(&list, "2026-11-21T15:00:00Z");
        let old_pin = id_at(&list, "2026-11-02T03:00:00Z");
        for c in &mut list {
            c.pinned = c.id == pinned || c.id == old_pin;
        }
        let p = Policy {
            daily: 2,
            ..Default::default()
        };
        let decisions = apply(&p, &list, &Utc, at("2030-01-01T00:00:00Z"));
        let kept: Vec<&Decision> = decisions.iter().filter(|d| d.keep).collect();
        let ids: Vec<&str> = kept.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                id_at(&list, "2026-11-22T15:00:00Z").as_str(),
                pinned.as_str(),
                old_pin.as_str()
            ]
        );
        assert_eq!(kept[1].reasons, ["pinned", "daily 2026-11-21"]);
        assert_eq!(kept[2].reasons, ["pinned"]);
    }

    #[test]
    fn rules_combine_and_every_matching_rule_is_named() {
        let list = twice_daily();
        let p = Policy {
            last: 2,
            daily: 2,
            weekly: 2,
            monthly: 1,
            within: Some("1d".parse().unwrap()),
            ..Default::default()
        };
        let newest = id_at(&list, "2026-11-22T15:00:00Z");
        assert_eq!(
            reasons(&p, &list, &newest),
            [
                "within 1d",
                "last 2",
                "daily 2026-11-22",
                "weekly 2026-W47",
                "monthly 2026-11"
            ]
        );
        // The second weekly is the newest of week 46 (Sunday the 15th); every
        // count is used up before the oldest snapshot, so it goes.
        let expected: Vec<String> = [
            "2026-11-22T15:00:00Z",
            "2026-11-22T03:00:00Z",
            "2026-11-21T15:00:00Z",
            "2026-11-15T15:00:00Z",
        ]
        .iter()
        .map(|t| id_at(&list, t))
        .collect();
        assert_eq!(kept(&p, &list), expected);
    }
}
