//! What the monitor is told by the user: the default daily budget, alert thresholds and the
//! cloud price table. Saved in the database as one JSON document and applied at once.

use serde::{Deserialize, Serialize};

/// The monitor's settings as `GET /api/monitor/settings` shows them and `PUT` replaces them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    /// Tokens a day (UTC) for a session with no budget of its own; None: no limit.
    #[serde(default)]
    pub default_daily_tokens: Option<u64>,
    #[serde(default)]
    pub alerts: AlertThresholds,
    /// What the same tokens would cost on cloud models: the savings of running locally.
    #[serde(default = "default_prices")]
    pub prices: Vec<Price>,
    /// Hours between a loaded model's drift probes; None: off.
    #[serde(default = "default_drift_hours")]
    pub drift_probe_hours: Option<u64>,
    /// Measure each session's answers (length, similarity to its earlier answers).
    #[serde(default = "yes")]
    pub consistency: bool,
}

fn default_drift_hours() -> Option<u64> {
    Some(24)
}

fn yes() -> bool {
    true
}

/// When an alert fires. Latency and error rate are judged per model over the last `window_seconds`,
/// once at least `min_requests` finished in it (a single slow request is not a trend).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertThresholds {
    /// End-to-end latency p95 above this (milliseconds); None: off.
    pub p95_latency_ms: Option<f64>,
    /// Failed (5xx) over finished requests above this fraction; None: off.
    pub error_rate: Option<f64>,
    pub window_seconds: u64,
    pub min_requests: u64,
    /// A budget warning fires at this fraction of a session's daily tokens.
    pub budget_warning: f64,
    /// Drift: probe answers' mean similarity to the first run's below this; None: off.
    pub drift_similarity: Option<f64>,
    /// Drift: mean answer length off the first run's by more than this fraction; None: off.
    pub drift_length_change: Option<f64>,
    /// Drift: refusal rate off the first run's by more than this; None: off.
    pub drift_refusal_change: Option<f64>,
    /// Consistency: a session's latest answers judged against its earlier ones.
    pub consistency_recent: u64,
    /// Consistency: their mean length off the earlier ones' by more than this fraction.
    pub consistency_length_change: Option<f64>,
    /// Consistency: their similarity to the session's answers lower by more than this.
    pub consistency_similarity_drop: Option<f64>,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            p95_latency_ms: Some(30_000.0),
            error_rate: Some(0.05),
            window_seconds: 300,
            min_requests: 5,
            budget_warning: 0.8,
            drift_similarity: Some(0.8),
            drift_length_change: Some(0.5),
            drift_refusal_change: Some(0.25),
            consistency_recent: 5,
            consistency_length_change: Some(0.5),
            consistency_similarity_drop: Some(0.2),
        }
    }
}

/// One row of the price table: US dollars per million tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// The cloud model the figures are for.
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl Price {
    /// What `prompt` and `completion` tokens would have cost.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input_per_million + completion as f64 * self.output_per_million) / 1e6
    }
}

/// List prices of two common hosted models (per million tokens, as published in 2025); the
/// user edits the table to match what they would otherwise pay.
fn default_prices() -> Vec<Price> {
    vec![
        Price {
            model: "gpt-4o-mini".into(),
            input_per_million: 0.15,
            output_per_million: 0.60,
        },
        Price {
            model: "gpt-4o".into(),
            input_per_million: 2.50,
            output_per_million: 10.00,
        },
    ]
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            default_daily_tokens: None,
            alerts: AlertThresholds::default(),
            prices: default_prices(),
            drift_probe_hours: default_drift_hours(),
            consistency: true,
        }
    }
}

impl MonitorSettings {
    /// Why these settings cannot be applied, naming the field (for OpenAI's error `param`).
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        if self.default_daily_tokens == Some(0) {
            return Err((
                "'default_daily_tokens' must be at least 1 (use null for no limit)".into(),
                "default_daily_tokens",
            ));
        }
        let a = &self.alerts;
        if let Some(ms) = a.p95_latency_ms {
            if !(ms.is_finite() && ms > 0.0) {
                return Err((
                    "'alerts.p95_latency_ms' must be a positive number of milliseconds".into(),
                    "alerts.p95_latency_ms",
                ));
            }
        }
        if let Some(rate) = a.error_rate {
            if !(0.0..=1.0).contains(&rate) {
                return Err((
                    "'alerts.error_rate' must be a fraction between 0 and 1".into(),
                    "alerts.error_rate",
                ));
            }
        }
        if !(10..=86_400).contains(&a.window_seconds) {
            return Err((
                "'alerts.window_seconds' must be between 10 and 86400".into(),
                "alerts.window_seconds",
            ));
        }
        if a.min_requests == 0 {
            return Err((
                "'alerts.min_requests' must be at least 1".into(),
                "alerts.min_requests",
            ));
        }
        if !(a.budget_warning > 0.0 && a.budget_warning < 1.0) {
            return Err((
                "'alerts.budget_warning' must be a fraction between 0 and 1 (exclusive)".into(),
                "alerts.budget_warning",
            ));
        }
        let fractions = [
            ("alerts.drift_similarity", a.drift_similarity),
            ("alerts.drift_length_change", a.drift_length_change),
            ("alerts.drift_refusal_change", a.drift_refusal_change),
            (
                "alerts.consistency_length_change",
                a.consistency_length_change,
            ),
            (
                "alerts.consistency_similarity_drop",
                a.consistency_similarity_drop,
            ),
        ];
        for (field, value) in fractions {
            if value.is_some_and(|x| !(x.is_finite() && x > 0.0 && x <= 10.0)) {
                return Err((format!("'{field}' must be a positive fraction"), field));
            }
        }
        if self.drift_probe_hours == Some(0) {
            return Err((
                "'drift_probe_hours' must be at least 1 (use null for off)".into(),
                "drift_probe_hours",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.prices {
            if p.model.trim().is_empty() || p.model.len() > 200 {
                return Err((
                    "each price needs a 'model' name of 1 to 200 characters".into(),
                    "prices",
                ));
            }
            if !names.insert(p.model.as_str()) {
                return Err((format!("'prices' names `{}` twice", p.model), "prices"));
            }
            let ok = |x: f64| x.is_finite() && x >= 0.0;
            if !ok(p.input_per_million) || !ok(p.output_per_million) {
                return Err((
                    format!("prices of `{}` must be non-negative numbers", p.model),
                    "prices",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let s = MonitorSettings::default();
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<MonitorSettings>(&json).unwrap(), s);
        // A partial document fills in the rest.
        let partial: MonitorSettings =
            serde_json::from_str(r#"{"default_daily_tokens": 5000}"#).unwrap();
        assert_eq!(partial.default_daily_tokens, Some(5000));
        assert_eq!(partial.alerts, AlertThresholds::default());
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut s = MonitorSettings::default();
        s.alerts.error_rate = Some(1.5);
        assert_eq!(s.validate().unwrap_err().1, "alerts.error_rate");
        let mut s = MonitorSettings::default();
        s.prices.push(s.prices[0].clone());
        assert!(s.validate().unwrap_err().0.contains("twice"));
        assert!(serde_json::from_str::<MonitorSettings>(r#"{"budget": 1}"#).is_err());
    }

    #[test]
    fn cost_is_per_million() {
        let p = Price {
            model: "x".into(),
            input_per_million: 1.0,
            output_per_million: 4.0,
        };
        assert!((p.cost(500_000, 250_000) - 1.5).abs() < 1e-12);
    }
}
