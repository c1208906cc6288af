//! When each company's next sync runs: a pure function of the time, the company's schedule
//! and its sync history. No clock is read and nothing sleeps here, so every rule is tested
//! with a controlled clock.
//!
//! Takes [`Now`], a [`Schedule`], a [`History`] and whether a sync was asked for; produces a
//! [`Decision`]: run now (and why), or wait until a time (and why). The rules, in order:
//! 1. Paused: nothing runs before the pause ends, not even a requested sync (it stays queued).
//! 2. Requested (by the API client or the user): runs now, whatever the quiet hours or backoff.
//! 3. Never synced: the first sync runs now (it follows Confirm on the settings page).
//! 4. After a failure: the next try waits [`retry_delay`] (never longer than the schedule's
//!    period) and respects quiet hours.
//! 5. Otherwise daily (the schedule's period), counted from the last successful sync; a due
//!    time passed more than [`MISSED_GRACE`] ago is a missed sync (the PC was off or asleep,
//!    or the agent not running) and runs now. A due or missed sync inside quiet hours waits
//!    for their end. A wait's `until` is the due time even when that falls in quiet hours: the
//!    caller decides again then and gets the end of the quiet period.

use chrono::{DateTime, Duration, FixedOffset, NaiveTime, Utc};

/// A due time passed longer ago than this is a missed sync.
pub const MISSED_GRACE: Duration = Duration::minutes(5);

/// A local-time period in which no scheduled sync starts (`09:00-17:00`; may cross midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Start (inclusive), local time.
    pub start: NaiveTime,
    /// End (exclusive), local time.
    pub end: NaiveTime,
}

impl QuietHours {
    /// Whether a local time is inside the period.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The end of the period that contains `now` (as UTC), if `now` is inside it.
    pub fn end_after(&self, now: &Now) -> Option<DateTime<Utc>> {
        let local = now.utc.with_timezone(&now.offset);
        let t = local.time();
        if !self.contains(t) {
            return None;
        }
        let mut end = local.date_naive().and_time(self.end);
        if self.end <= t {
            end += Duration::days(1);
        }
        end.and_local_timezone(now.offset)
            .single()
            .map(|d| d.with_timezone(&Utc))
    }
}

impl std::str::FromStr for QuietHours {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hint = "write quiet hours as HH:MM-HH:MM, e.g. 09:00-17:00";
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("{s:?} has no '-': {hint}"))?;
        let parse = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .map_err(|_| format!("{t:?} is not a time: {hint}"))
        };
        let (start, end) = (parse(a)?, parse(b)?);
        if start == end {
            return Err(format!("{s:?} starts and ends at the same time: {hint}"));
        }
        Ok(QuietHours { start, end })
    }
}

impl std::fmt::Display for QuietHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M")
        )
    }
}

/// A company's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Period of scheduled syncs, counted from the last successful one (daily by default).
    pub every: Duration,
    /// Periods in which no scheduled sync or retry starts.
    pub quiet: Vec<QuietHours>,
    /// Nothing runs before this.
    pub paused_until: Option<DateTime<Utc>>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            every: Duration::hours(24),
            quiet: Vec::new(),
            paused_until: None,
        }
    }
}

/// What happened so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// When the last successful sync finished.
    pub last_success: Option<DateTime<Utc>>,
    /// When the last failed sync finished (if after the last success).
    pub last_failure: Option<DateTime<Utc>>,
    /// Failed syncs since the last success.
    pub failures_in_a_row: u32,
}

/// The time now, with the local offset for quiet hours.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Now.
    pub utc: DateTime<Utc>,
    /// The local offset now.
    pub offset: FixedOffset,
}

/// Why a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunReason {
    /// Never synced.
    FirstSync,
    /// Its time came.
    Due,
    /// Its time passed while the PC was off or the agent not running.
    Missed,
    /// Asked for by the API client or the user.
    Requested,
    /// After a failure, once the backoff passed.
    Retry,
}

impl RunReason {
    /// Snake-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunReason::FirstSync => "first_sync",
            RunReason::Due => "due",
            RunReason::Missed => "missed",
            RunReason::Requested => "requested",
            RunReason::Retry => "retry",
        }
    }
}

/// Why a sync waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Not its time yet.
    NotDue,
    /// Inside quiet hours.
    QuietHours,
    /// Paused by the user.
    Paused,
    /// Waiting after a failure.
    RetryBackoff,
}

impl WaitReason {
    /// Snake-case name.
    pub fn as_str(&self) -> &'static str {
        match self {
            WaitReason::NotDue => "not_due",
            WaitReason::QuietHours => "quiet_hours",
            WaitReason::Paused => "paused",
            WaitReason::RetryBackoff => "retry_backoff",
        }
    }
}

/// Run now, or wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run now.
    Run(RunReason),
    /// Wait until then.
    Wait {
        /// Decide again then.
        until: DateTime<Utc>,
        /// Why.
        because: WaitReason,
    },
}

/// The wait after `failures_in_a_row` failures: 1 min, 5 min, 15 min, 1 h, then 4 h.
pub fn retry_delay(failures_in_a_row: u32) -> Duration {
    match failures_in_a_row {
        0 | 1 => Duration::minutes(1),
        2 => Duration::minutes(5),
        3 => Duration::minutes(15),
        4 => Duration::hours(1),
        _ => Duration::hours(4),
    }
}

fn quiet_end(now: &Now, schedule: &Schedule) -> Option<DateTime<Utc>> {
    schedule.quiet.iter().filter_map(|q| q.end_after(now)).max()
}

/// Decides for one company (the module header gives the rules).
pub fn decide(now: &Now, schedule: &Schedule, history: &History, requested: bool) -> Decision {
    if let Some(until) = schedule.paused_until.filter(|t| *t > now.utc) {
        return Decision::Wait {
            until,
            because: WaitReason::Paused,
        };
    }
    if requested {
        return Decision::Run(RunReason::Requested);
    }
    let failing = match (history.last_failure, history.last_success) {
        (Some(f), Some(s)) => f > s,
        (Some(_), None) => true,
        _ => false,
    };
    let (due, run) = if failing {
        let failed = history.last_failure.unwrap_or(now.utc);
        let delay = retry_delay(history.failures_in_a_row).min(schedule.every);
        (failed + delay, RunReason::Retry)
    } else {
        match history.last_success {
            None => return Decision::Run(RunReason::FirstSync),
            Some(s) => {
                let due = s + schedule.every;
                let why = if now.utc - due > MISSED_GRACE {
                    RunReason::Missed
                } else {
                    RunReason::Due
                };
                (due, why)
            }
        }
    };
    if now.utc < due {
        return Decision::Wait {
            until: due,
            because: if failing {
                WaitReason::RetryBackoff
            } else {
                WaitReason::NotDue
            },
        };
    }
    if let Some(until) = quiet_end(now, schedule) {
        return Decision::Wait {
            until,
            because: WaitReason::QuietHours,
        };
    }
    Decision::Run(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, offset_hours: i32) -> Now {
        Now {
            utc: DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc),
            offset: FixedOffset::east_opt(offset_hours * 3600).unwrap(),
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn synced(s: &str) -> History {
        History {
            last_success: Some(t(s)),
            ..History::default()
        }
    }

    #[test]
    fn the_first_sync_runs_at_once_even_in_quiet_hours() {
        let schedule = Schedule {
            quiet: vec!["00:00-23:59".parse().unwrap()],
            ..Schedule::default()
        };
        let d = decide(
            &at("2026-12-03T10:00:00Z", 0),
            &schedule,
            &History::default(),
            false,
        );
        assert_eq!(d, Decision::Run(RunReason::FirstSync));
    }

    #[test]
    fn a_sync_missed_while_the_pc_was_off_runs_at_once() {
        let d = decide(
            &at("2026-12-03T10:00:00Z", 0),
            &Schedule::default(),
            &synced("2026-12-01T08:00:00Z"),
            false,
        );
        assert_eq!(d, Decision::Run(RunReason::Missed));
        // Just due (within the grace): due, not missed.
        let d = decide(
            &at("2026-12-03T08:01:00Z", 0),
            &Schedule::default(),
            &synced("2026-12-02T08:00:00Z"),
            false,
        );
        assert_eq!(d, Decision::Run(RunReason::Due));
    }

    #[test]
    fn a_recent_sync_waits_a_day_from_its_success() {
        let d = decide(
            &at("2026-12-03T10:00:00Z", 0),
            &Schedule::default(),
            &synced("2026-12-03T09:00:00Z"),
            false,
        );
        assert_eq!(
            d,
            Decision::Wait {
                until: t("2026-12-04T09:00:00Z"),
                because: WaitReason::NotDue
            }
        );
    }

    #[test]
    fn a_due_sync_in_quiet_hours_waits_for_their_end_in_local_time() {
        // 10:00 UTC is 12:00 at UTC+2, inside 09:00-17:00 local: wait until 17:00 local.
        let schedule = Schedule {
            quiet: vec!["09:00-17:00".parse().unwrap()],
            ..Schedule::default()
        };
        let d = decide(
            &at("2026-12-03T10:00:00Z", 2),
            &schedule,
            &synced("2026-12-01T08:00:00Z"),
            false,
        );
        assert_eq!(
            d,
            Decision::Wait {
                until: t("2026-12-03T15:00:00Z"),
                because: WaitReason::QuietHours
            }
        );
        // A period across midnight: 23:30 local inside 22:00-06:00 waits until 06:00 next day.
        let schedule = Schedule {
            quiet: vec!["22:00-06:00".parse().unwrap()],
            ..Schedule::default()
        };
        let d = decide(
            &at("2026-12-03T23:30:00Z", 0),
            &schedule,
            &synced("2026-12-01T08:00:00Z"),
            false,
        );
        assert_eq!(
            d,
            Decision::Wait {
                until: t("2026-12-04T06:00:00Z"),
                because: WaitReason::QuietHours
            }
        );
        // And 01:00 local, after midnight, waits until 06:00 the same day.
        let d = decide(
            &at("2026-12-04T01:00:00Z", 0),
            &schedule,
            &synced("2026-12-01T08:00:00Z"),
            false,
        );
        assert_eq!(
            d,
            Decision::Wait {
                until: t("2026-12-04T06:00:00Z"),
                because: WaitReason::QuietHours
            }
        );
    }

    #[test]
    fn a_request_beats_quiet_hours_and_backoff_but_not_pause() {
        let mut schedule = Schedule {
            quiet: vec!["00:00-23:59".parse().unwrap()],
            ..Schedule::default()
        };
        let failing = History {
            last_failure: Some(t("2026-12-03T09:59:00Z")),
            failures_in_a_row: 5,
            ..History::default()
        };
        let now = at("2026-12-03T10:00:00Z", 0);
        assert_eq!(
            decide(&now, &schedule, &failing, true),
            Decision::Run(RunReason::Requested)
        );
        schedule.paused_until = Some(t("2026-12-04T10:00:00Z"));
        assert_eq!(
            decide(&now, &schedule, &failing, true),
            Decision::Wait {
                until: t("2026-12-04T10:00:00Z"),
                because: WaitReason::Paused
            }
        );
        // A pause that ended is no pause.
        schedule.paused_until = Some(t("2026-12-03T09:00:00Z"));
        assert_eq!(
            decide(&now, &schedule, &failing, true),
            Decision::Run(RunReason::Requested)
        );
    }

    #[test]
    fn retries_back_off_and_are_capped_by_the_period() {
        assert!(retry_delay(1) < retry_delay(2));
        assert!(retry_delay(3) < retry_delay(4));
        assert_eq!(retry_delay(50), Duration::hours(4));
        let failing = |n| History {
            last_success: Some(t("2026-12-01T10:00:00Z")),
            last_failure: Some(t("2026-12-03T10:00:00Z")),
            failures_in_a_row: n,
        };
        let d = decide(
            &at("2026-12-03T10:03:00Z", 0),
            &Schedule::default(),
            &failing(2),
            false,
        );
        assert_eq!(
            d,
            Decision::Wait {
                until: t("2026-12-03T10:05:00Z"),
                because: WaitReason::RetryBackoff
            }
        );
        let d = decide(
            &at("2026-12-03T10:06:00Z", 0),
            &Schedule::default(),
            &failing(2),
            false,
        );
        assert_eq!(d, Decision::Run(RunReason::Retry));
        // A period shorter than the backoff caps it.
        let hourly = Schedule {
            every: Duration::minutes(30),
            ..Schedule::default()
        };
        let d = decide(&at("2026-12-03T10:31:00Z", 0), &hourly, &failing(9), false);
        assert_eq!(d, Decision::Run(RunReason::Retry));
    }

    #[test]
    fn quiet_hours_parse_and_refuse_what_is_not_a_period() {
        let q: QuietHours = "09:00-17:30".parse().unwrap();
        assert_eq!(q.to_string(), "09:00-17:30");
        for bad in ["9-5", "09:00", "09:00-09:00", "25:00-26:00"] {
            let e = bad.parse::<QuietHours>().unwrap_err();
            assert!(e.contains("HH:MM-HH:MM"), "{bad}: {e}");
        }
    }
}
