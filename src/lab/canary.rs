//! Canary releases: an experiment in `canary` mode sends its new variant a share of the traffic
//! that steps up on a schedule while the variant's error rate and p95 latency stay within bounds
//! of the current variant over a window, and rolls back at once (share 0, an alert) when they do
//! not. The share is kept exactly: a request goes to the canary only while the canary's count
//! stays within its share of the experiment's requests. Every change is stored with its reason
//! (`store::canary`); the windows of outcomes live in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a canary is released (part of the experiment's spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The variant being released; the experiment's other variants are the current release.
    pub variant: String,
    /// The shares of traffic it is given, in order (the last reached is held; 1.0 promotes it).
    #[serde(default = "default_steps")]
    pub steps: Vec<f64>,
    /// Seconds each step is held, bounds kept, before the next.
    #[serde(default = "default_step_seconds")]
    pub step_seconds: f64,
    /// Seconds of outcomes the bounds are judged over.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: f64,
    /// Canary requests in the window before it is judged at all.
    #[serde(default = "default_min_requests")]
    pub min_requests: usize,
    /// How far its error rate may exceed the current variant's (absolute, 0.05 = 5 points).
    #[serde(default = "default_error_margin")]
    pub max_error_increase: f64,
    /// How many times the current variant's p95 latency its own may be.
    #[serde(default = "default_latency_ratio")]
    pub max_p95_ratio: f64,
}

fn default_steps() -> Vec<f64> {
    vec![0.05, 0.25, 0.5, 1.0]
}
fn default_step_seconds() -> f64 {
    600.0
}
fn default_window_seconds() -> f64 {
    600.0
}
fn default_min_requests() -> usize {
    20
}
fn default_error_margin() -> f64 {
    0.05
}
fn default_latency_ratio() -> f64 {
    1.5
}

impl CanarySpec {
    pub fn validate(&self, variants: &[&str]) -> Result<(), String> {
        if !variants.contains(&self.variant.as_str()) {
            return Err(format!(
                "canary: `{}` is not one of the variants",
                self.variant
            ));
        }
        let rising = self.steps.windows(2).all(|w| w[0] < w[1]);
        let in_range = self.steps.iter().all(|s| *s > 0.0 && *s <= 1.0);
        if self.steps.is_empty() || !rising || !in_range {
            return Err("canary: steps are shares in (0, 1], rising".into());
        }
        let positive = [self.step_seconds, self.window_seconds, self.max_p95_ratio];
        if positive.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(
                "canary: step_seconds, window_seconds and max_p95_ratio must be > 0".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.max_error_increase) || self.min_requests == 0 {
            return Err("canary: max_error_increase is in [0, 1] and min_requests ≥ 1".into());
        }
        Ok(())
    }
}

/// Where a canary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    Promoted,
    RolledBack,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "promoted" => Self::Promoted,
            "rolled_back" => Self::RolledBack,
            _ => Self::Running,
        }
    }
}

/// One change of a canary's share, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub at: f64,
    pub share: f64,
    pub status: Status,
    pub reason: String,
}

/// Outcomes of one side over the window: (when, ok, milliseconds).
#[derive(Default)]
struct Window(VecDeque<(Instant, bool, f64)>);

/// What a window says: requests, error rate, p95 latency of the successful ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    pub requests: usize,
    pub error_rate: f64,
    pub p95_ms: Option<f64>,
}

impl Window {
    fn trim(&mut self, span: Duration) {
        while self.0.front().is_some_and(|(t, _, _)| t.elapsed() > span) {
            self.0.pop_front();
        }
    }

    fn figures(&self) -> Figures {
        let n = self.0.len();
        let errors = self.0.iter().filter(|(_, ok, _)| !ok).count();
        let mut ms: Vec<f64> = self
            .0
            .iter()
            .filter(|(_, ok, _)| *ok)
            .map(|x| x.2)
            .collect();
        ms.sort_by(f64::total_cmp);
        let p95 = (!ms.is_empty())
            .then(|| ms[((ms.len() as f64 * 0.95).ceil() as usize).clamp(1, ms.len()) - 1]);
        Figures {
            requests: n,
            error_rate: if n == 0 {
                0.0
            } else {
                errors as f64 / n as f64
            },
            p95_ms: p95,
        }
    }
}

/// One running canary: its share, the counts that keep it, the two windows.
struct Live {
    spec: CanarySpec,
    share: f64,
    status: Status,
    stepped: Instant,
    total: u64,
    to_canary: u64,
    canary: Window,
    current: Window,
}

/// What a request's outcome changed, for the caller to store and announce.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The share stepped up (or reached 1.0: promoted).
    Step(Change),
    /// Out of bounds: rolled back.
    RollBack(Change),
}

/// Every experiment's canary, by experiment name.
#[derive(Default)]
pub struct Canaries {
    live: Mutex<HashMap<String, Live>>,
}

impl Canaries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `experiment`'s canary is live under this spec.
    pub fn is_live(&self, experiment: &str, spec: &CanarySpec) -> bool {
        self.lock().get(experiment).is_some_and(|l| l.spec == *spec)
    }

    /// Take up `experiment`'s canary at its last stored change (or its first step), unless it is
    /// already live with the same spec.
    pub fn ensure(&self, experiment: &str, spec: &CanarySpec, last: Option<&Change>) {
        let mut live = self.lock();
        if live.get(experiment).is_some_and(|l| l.spec == *spec) {
            return;
        }
        let (share, status) =
            last.map_or((spec.steps[0], Status::Running), |c| (c.share, c.status));
        live.insert(
            experiment.to_string(),
            Live {
                spec: spec.clone(),
                share,
                status,
                stepped: Instant::now(),
                total: 0,
                to_canary: 0,
                canary: Window::default(),
                current: Window::default(),
            },
        );
    }

    /// Does this request go to the canary? Only while its count stays within its share.
    pub fn pick(&self, experiment: &str) -> bool {
        let mut live = self.lock();
        let Some(l) = live.get_mut(experiment) else {
            return false;
        };
        l.total += 1;
        let take = (l.to_canary + 1) as f64 <= l.share * l.total as f64 + 1e-9;
        if take {
            l.to_canary += 1;
        }
        take
    }

    /// Set the share by hand (`promote`, `rollback`): the change to store.
    pub fn set(&self, experiment: &str, status: Status, reason: &str) -> Option<Change> {
        let mut live = self.lock();
        let l = live.get_mut(experiment)?;
        l.status = status;
        l.share = match status {
            Status::Promoted => 1.0,
            Status::RolledBack => 0.0,
            Status::Running => l.spec.steps[0],
        };
        l.stepped = Instant::now();
        Some(Change {
            at: crate::clock::unix_seconds(),
            share: l.share,
            status,
            reason: reason.to_string(),
        })
    }

    /// A request of the experiment finished: on the canary or not, ok or not, how long. Judged
    /// at once: a breach rolls back; a step held long enough within bounds steps up.
    pub fn observe(
        &self,
        experiment: &str,
        on_canary: bool,
        ok: bool,
        ms: f64,
    ) -> Option<Decision> {
        let mut live = self.lock();
        let l = live.get_mut(experiment)?;
        let span = Duration::from_secs_f64(l.spec.window_seconds);
        let side = if on_canary {
            &mut l.canary
        } else {
            &mut l.current
        };
        side.0.push_back((Instant::now(), ok, ms));
        l.canary.trim(span);
        l.current.trim(span);
        if l.status != Status::Running {
            return None;
        }
        let (c, b) = (l.canary.figures(), l.current.figures());
        let s = &l.spec;
        let change = |l: &mut Live, status: Status, share: f64, reason: String| {
            l.status = status;
            l.share = share;
            l.stepped = Instant::now();
            Change {
                at: crate::clock::unix_seconds(),
                share,
                status,
                reason,
            }
        };
        if c.requests >= s.min_requests {
            if c.error_rate > b.error_rate + s.max_error_increase {
                let reason = format!(
                    "error rate {:.1}% against {:.1}% for the current variant (bound +{:.1} points) over {} requests",
                    c.error_rate * 100.0,
                    b.error_rate * 100.0,
                    s.max_error_increase * 100.0,
                    c.requests
                );
                return Some(Decision::RollBack(change(
                    l,
                    Status::RolledBack,
                    0.0,
                    reason,
                )));
            }
            if let (Some(cp), Some(bp)) = (c.p95_ms, b.p95_ms) {
                if cp > bp * s.max_p95_ratio {
                    let reason = format!(
                        "p95 latency {cp:.0} ms against {bp:.0} ms for the current variant (bound {:.2}×)",
                        s.max_p95_ratio
                    );
                    return Some(Decision::RollBack(change(
                        l,
                        Status::RolledBack,
                        0.0,
                        reason,
                    )));
                }
            }
            let held = l.stepped.elapsed().as_secs_f64() >= s.step_seconds;
            if let (true, Some(next)) = (held, s.steps.iter().copied().find(|x| *x > l.share)) {
                let status = if next >= 1.0 {
                    Status::Promoted
                } else {
                    Status::Running
                };
                let reason = format!(
                    "held {:.0} s within bounds (errors {:.1}%, {} requests): share {:.0}% → {:.0}%",
                    s.step_seconds,
                    c.error_rate * 100.0,
                    c.requests,
                    l.share * 100.0,
                    next * 100.0
                );
                return Some(Decision::Step(change(l, status, next, reason)));
            }
        }
        None
    }

    /// The share, status and both windows' figures, for the API and the Compare page.
    pub fn view(&self, experiment: &str) -> Option<serde_json::Value> {
        let live = self.lock();
        let l = live.get(experiment)?;
        Some(serde_json::json!({
            "variant": l.spec.variant,
            "share": l.share,
            "status": l.status,
            "requests": l.total,
            "to_canary": l.to_canary,
            "canary": l.canary.figures(),
            "current": l.current.figures(),
            "bounds": {
                "max_error_increase": l.spec.max_error_increase,
                "max_p95_ratio": l.spec.max_p95_ratio,
                "window_seconds": l.spec.window_seconds,
                "min_requests": l.spec.min_requests,
            },
            "steps": l.spec.steps,
            "step_seconds": l.spec.step_seconds,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CanarySpec {
        CanarySpec {
            variant: "new".into(),
            steps: vec![0.2, 0.5, 1.0],
            step_seconds: 0.0,
            window_seconds: 60.0,
            min_requests: 5,
            max_error_increase: 0.05,
            max_p95_ratio: 2.0,
        }
    }

    #[test]
    fn the_share_is_never_exceeded() {
        let c = Canaries::default();
        c.ensure("e", &spec(), None);
        let mut to_canary = 0;
        for n in 1..=1000 {
            to_canary += c.pick("e") as u32;
            assert!(
                to_canary as f64 <= 0.2 * n as f64 + 1e-9,
                "at {n}: {to_canary}"
            );
        }
        assert_eq!(to_canary, 200);
    }

    #[test]
    fn errors_past_the_bound_roll_back_and_a_clean_run_steps_up_to_promotion() {
        let c = Canaries::default();
        c.ensure("e", &spec(), None);
        for _ in 0..10 {
            assert_eq!(c.observe("e", false, true, 100.0), None);
        }
        let mut decisions = Vec::new();
        for i in 0..5 {
            decisions.extend(c.observe("e", true, i != 0, 100.0));
        }
        // 1 in 5 failed (20% against 0%): rolled back at the fifth, the first it could judge.
        let [Decision::RollBack(change)] = &decisions[..] else {
            panic!("{decisions:?}")
        };
        assert_eq!((change.share, change.status), (0.0, Status::RolledBack));
        assert!(
            change.reason.contains("error rate 20.0%"),
            "{}",
            change.reason
        );
        assert!(!c.pick("e"), "a rolled-back canary gets nothing");
        assert_eq!(c.observe("e", true, false, 1.0), None, "judged no more");

        let ok = Canaries::default();
        ok.ensure("e", &spec(), None);
        let mut shares = Vec::new();
        for _ in 0..20 {
            for d in [
                ok.observe("e", false, true, 100.0),
                ok.observe("e", true, true, 120.0),
            ] {
                if let Some(Decision::Step(ch)) = d {
                    shares.push((ch.share, ch.status));
                }
            }
        }
        assert_eq!(
            shares,
            vec![(0.5, Status::Running), (1.0, Status::Promoted)],
        );
        let slow = Canaries::default();
        slow.ensure("e", &spec(), None);
        for _ in 0..5 {
            slow.observe("e", false, true, 100.0);
        }
        let last = (0..5)
            .filter_map(|_| slow.observe("e", true, true, 500.0))
            .last();
        assert!(matches!(last, Some(Decision::RollBack(ch)) if ch.reason.contains("p95")));
    }
}
