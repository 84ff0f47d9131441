//! One circuit breaker per routing target (a local model or `NAME/MODEL`): after `failures`
//! failures in a row the circuit opens and the target is passed over; after `cooldown` one
//! request is let through as a probe (half-open), whose outcome closes or reopens it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::spec::BreakerSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    /// A probe is out; others are passed over until it answers.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
struct Circuit {
    failures: u32,
    opened: Option<Instant>,
    probing: bool,
}

/// Every target's circuit.
#[derive(Debug)]
pub struct Breakers {
    spec: Mutex<BreakerSpec>,
    circuits: Mutex<HashMap<String, Circuit>>,
}

impl Breakers {
    pub fn new(spec: BreakerSpec) -> Self {
        Self {
            spec: Mutex::new(spec),
            circuits: Mutex::default(),
        }
    }

    pub fn configure(&self, spec: BreakerSpec) {
        *self.spec.lock().unwrap_or_else(|e| e.into_inner()) = spec;
    }

    fn cooldown(&self) -> Duration {
        let s = self.spec.lock().unwrap_or_else(|e| e.into_inner());
        Duration::from_secs_f64(s.cooldown.max(0.0))
    }

    /// May a request go to `target` now? An open circuit past its cooldown lets this one
    /// through as the probe.
    pub fn allow(&self, target: &str) -> bool {
        let cooldown = self.cooldown();
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = circuits.get_mut(target) else {
            return true;
        };
        match c.opened {
            None => true,
            Some(_) if c.probing => false,
            Some(at) if at.elapsed() >= cooldown => {
                c.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// `target` answered: its circuit closes.
    pub fn success(&self, target: &str) {
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        circuits.remove(target);
    }

    /// `target` failed: one more in a row; the circuit opens at the limit (or again at once
    /// when the probe failed). True when this failure opened it.
    pub fn failure(&self, target: &str) -> bool {
        let limit = self
            .spec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
            .max(1);
        let mut circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        let c = circuits.entry(target.to_string()).or_insert(Circuit {
            failures: 0,
            opened: None,
            probing: false,
        });
        c.failures += 1;
        let was_open = c.opened.is_some();
        if c.probing || c.failures >= limit {
            c.opened = Some(Instant::now());
            c.probing = false;
        }
        !was_open && c.opened.is_some()
    }

    pub fn state(&self, target: &str) -> State {
        let circuits = self.circuits.lock().unwrap_or_else(|e| e.into_inner());
        match circuits.get(target) {
            Some(c) if c.probing => State::HalfOpen,
            Some(c) if c.opened.is_some() => State::Open,
            _ => State::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_a_probe_closes_it() {
        let b = Breakers::new(BreakerSpec {
            failures: 2,
            cooldown: 0.05,
        });
        assert!(b.allow("r/m"));
        assert!(!b.failure("r/m"));
        b.success("r/m");
        assert!(!b.failure("r/m"), "a success in between resets the count");
        assert!(b.failure("r/m"), "the second failure in a row opens it");
        assert_eq!(b.state("r/m"), State::Open);
        assert!(!b.allow("r/m"));
        assert!(b.allow("other"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("r/m"), "past the cooldown one probe goes through");
        assert_eq!(b.state("r/m"), State::HalfOpen);
        assert!(!b.allow("r/m"), "only one probe at a time");
        b.failure("r/m");
        assert_eq!(b.state("r/m"), State::Open, "a failed probe reopens it");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("r/m"));
        b.success("r/m");
        assert_eq!(b.state("r/m"), State::Closed);
        assert!(b.allow("r/m"));
    }
}
