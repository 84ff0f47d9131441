//! Daily token budgets per session: a session's own or the default, counted per UTC day from the
//! same totals the request log records. Checked before a request is admitted (a spent budget is
//! a 429 that says which budget and when it resets) and charged when the request finishes.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

const DAY: f64 = 86_400.0;

/// The UTC day a unix time falls in.
pub fn day_of(unix: f64) -> i64 {
    (unix / DAY).floor() as i64
}

/// Where a session's limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Session,
    Default,
}

/// A session's budget as of now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetStatus {
    pub session: String,
    pub daily_tokens: u64,
    pub source: Source,
    /// Tokens (prompt and completion) charged today, UTC.
    pub used_today: u64,
    /// Unix seconds of the next UTC midnight, when `used_today` starts again from zero.
    pub resets_at: f64,
}

impl BudgetStatus {
    pub fn fraction(&self) -> f64 {
        self.used_today as f64 / self.daily_tokens as f64
    }

    pub fn exhausted(&self) -> bool {
        self.used_today >= self.daily_tokens
    }

    fn which(&self) -> String {
        match self.source {
            Source::Session => format!("Session '{}' daily token budget", self.session),
            Source::Default => format!(
                "The default daily token budget (session '{}')",
                self.session
            ),
        }
    }

    /// The 429 message: which budget, how much is used, when it resets.
    pub fn exhausted_message(&self) -> String {
        format!(
            "{} of {} tokens is used up ({} used today); it resets at {} UTC, in {}.",
            self.which(),
            self.daily_tokens,
            self.used_today,
            utc(self.resets_at),
            until(self.resets_at - crate::clock::unix_seconds()),
        )
    }

    /// The warning header's text once `fraction()` passes the warning threshold.
    pub fn warning(&self) -> String {
        format!(
            "{} of {} tokens is {:.0}% used ({} left); it resets at {} UTC",
            self.which(),
            self.daily_tokens,
            100.0 * self.fraction().min(1.0),
            self.daily_tokens.saturating_sub(self.used_today),
            utc(self.resets_at),
        )
    }
}

fn utc(unix: f64) -> String {
    let s = unix.rem_euclid(DAY) as u64;
    format!(
        "{} {:02}:{:02}:{:02}",
        super::summary::utc_day(unix),
        s / 3600,
        (s % 3600) / 60,
        s % 60
    )
}

fn until(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
}

/// What one charge crossed, for the alerts.
#[derive(Debug, Clone, PartialEq)]
pub enum Crossing {
    Warning(BudgetStatus),
    Exhausted(BudgetStatus),
}

#[derive(Default)]
struct State {
    default: Option<u64>,
    own: HashMap<String, u64>,
    /// Per session: the day its count belongs to, and the count.
    used: HashMap<String, (i64, u64)>,
}

impl State {
    fn status(&self, session: &str, now: f64) -> Option<BudgetStatus> {
        let (daily_tokens, source) = match self.own.get(session) {
            Some(&n) => (n, Source::Session),
            None => (self.default?, Source::Default),
        };
        let today = day_of(now);
        let used_today = match self.used.get(session) {
            Some(&(day, n)) if day == today => n,
            _ => 0,
        };
        Some(BudgetStatus {
            session: session.to_string(),
            daily_tokens,
            source,
            used_today,
            resets_at: (today + 1) as f64 * DAY,
        })
    }
}

/// Every session's budget and today's use; shared by the request path and the monitor.
#[derive(Default)]
pub struct Budgets {
    state: Mutex<State>,
}

impl Budgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The budget `session` is under at `now` (None: no limit applies).
    pub fn status(&self, session: &str, now: f64) -> Option<BudgetStatus> {
        self.lock().status(session, now)
    }

    /// Before admitting a request: Err when the session's budget is spent for today.
    pub fn check(&self, session: &str, now: f64) -> Result<Option<BudgetStatus>, BudgetStatus> {
        match self.status(session, now) {
            Some(s) if s.exhausted() => Err(s),
            other => Ok(other),
        }
    }

    /// Count `tokens` that `session` used at `at`; returns the threshold this charge crossed.
    pub fn charge(&self, session: &str, tokens: u64, at: f64, warn_at: f64) -> Option<Crossing> {
        let mut state = self.lock();
        let before = state.status(session, at);
        let day = day_of(at);
        let entry = state.used.entry(session.to_string()).or_insert((day, 0));
        if entry.0 != day {
            *entry = (day, 0);
        }
        entry.1 += tokens;
        let after = state.status(session, at)?;
        let was = before.map_or(0.0, |b| b.fraction());
        if after.exhausted() && was < 1.0 {
            Some(Crossing::Exhausted(after))
        } else if after.fraction() >= warn_at && was < warn_at {
            Some(Crossing::Warning(after))
        } else {
            None
        }
    }

    /// Today's use as the request log holds it (at startup).
    pub fn seed(&self, day: i64, used: impl IntoIterator<Item = (String, u64)>) {
        let mut state = self.lock();
        for (session, n) in used {
            state.used.insert(session, (day, n));
        }
    }

    pub fn set_default(&self, daily_tokens: Option<u64>) {
        self.lock().default = daily_tokens;
    }

    /// Give `session` its own budget, or (None) put it back on the default.
    pub fn set_session(&self, session: &str, daily_tokens: Option<u64>) {
        let mut state = self.lock();
        match daily_tokens {
            Some(n) => state.own.insert(session.to_string(), n),
            None => state.own.remove(session),
        };
    }

    /// Sessions with a budget of their own.
    pub fn own(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .lock()
            .own
            .iter()
            .map(|(s, &n)| (s.clone(), n))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: f64 = 20_000.0 * DAY + 43_200.0;

    #[test]
    fn the_default_applies_until_a_session_has_its_own() {
        let b = Budgets::default();
        assert_eq!(b.status("s", NOON), None);
        b.set_default(Some(100));
        assert_eq!(b.status("s", NOON).unwrap().source, Source::Default);
        b.set_session("s", Some(10));
        let s = b.status("s", NOON).unwrap();
        assert_eq!((s.daily_tokens, s.source), (10, Source::Session));
        b.set_session("s", None);
        assert_eq!(b.status("s", NOON).unwrap().daily_tokens, 100);
    }

    #[test]
    fn warns_once_at_the_threshold_then_stops_at_the_limit() {
        let b = Budgets::default();
        b.set_session("s", Some(100));
        assert_eq!(b.charge("s", 50, NOON, 0.8), None);
        assert!(matches!(
            b.charge("s", 30, NOON, 0.8),
            Some(Crossing::Warning(_))
        ));
        assert_eq!(b.charge("s", 10, NOON, 0.8), None);
        assert!(b.check("s", NOON).unwrap().is_some());
        match b.charge("s", 15, NOON, 0.8) {
            Some(Crossing::Exhausted(s)) => assert_eq!(s.used_today, 105),
            other => panic!("{other:?}"),
        }
        let spent = b.check("s", NOON).unwrap_err();
        let message = spent.exhausted_message();
        assert!(
            message.contains("Session 's' daily token budget of 100"),
            "{message}"
        );
        assert!(message.contains("resets at"), "{message}");
        assert_eq!(spent.resets_at, 20_001.0 * DAY);
        // Other sessions are not affected.
        assert_eq!(b.check("t", NOON), Ok(None));
    }

    #[test]
    fn a_new_utc_day_starts_from_zero() {
        let b = Budgets::default();
        b.set_default(Some(100));
        b.charge("s", 100, NOON, 0.8);
        assert!(b.check("s", NOON).is_err());
        let tomorrow = NOON + DAY;
        let s = b.check("s", tomorrow).unwrap().unwrap();
        assert_eq!(s.used_today, 0);
        // The first charge of the new day counts from zero, not from yesterday's total.
        b.charge("s", 5, tomorrow, 0.8);
        assert_eq!(b.status("s", tomorrow).unwrap().used_today, 5);
    }

    #[test]
    fn seeding_restores_todays_use() {
        let b = Budgets::default();
        b.set_default(Some(10));
        b.seed(day_of(NOON), [("s".to_string(), 12)]);
        assert!(b.check("s", NOON).is_err());
        assert!(b.check("s", NOON + DAY).is_ok());
    }
}
