//! Alerts: p95 latency and error rate per model over a recent window, judged each second, and a
//! session's budget passing its warning threshold or running out. An alert fires once, stays
//! active while its condition holds, and resolves when it no longer does; every change is pushed
//! to subscribers (the live stream) and stored.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use super::settings::AlertThresholds;
use crate::store::alerts::AlertRow;
use crate::store::requests::RequestRow;
use crate::store::Store;

/// Resolved alerts kept in memory for `/api/alerts`.
const RECENT: usize = 200;

/// A rule's verdict about one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: &'static str,
    pub subject: String,
    pub severity: &'static str,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
}

/// What the rules over requests see in `rows` (the window's requests): one finding per model
/// whose p95 latency or error rate is over its threshold.
pub fn judge(rows: &[&RequestRow], t: &AlertThresholds) -> Vec<Finding> {
    let mut by_model: HashMap<&str, Vec<&RequestRow>> = HashMap::new();
    for r in rows.iter().filter(|r| r.outcome != "cancelled") {
        by_model.entry(r.model.as_str()).or_default().push(r);
    }
    let mut found = Vec::new();
    let window = t.window_seconds;
    for (model, rows) in by_model {
        if (rows.len() as u64) < t.min_requests {
            continue;
        }
        if let Some(limit) = t.p95_latency_ms {
            let p95 = super::summary::Percentiles::of(rows.iter().map(|r| r.total_ms).collect())
                .p95
                .unwrap_or(0.0);
            if p95 > limit {
                found.push(Finding {
                    rule: "p95_latency",
                    subject: model.to_string(),
                    severity: "warning",
                    message: format!(
                        "{model}: p95 latency {p95:.0} ms over the last {window} s is above \
                         {limit:.0} ms ({} requests)",
                        rows.len()
                    ),
                    value: p95,
                    threshold: limit,
                });
            }
        }
        if let Some(limit) = t.error_rate {
            let failed = rows.iter().filter(|r| r.status >= 500).count();
            let rate = failed as f64 / rows.len() as f64;
            if rate > limit {
                found.push(Finding {
                    rule: "error_rate",
                    subject: model.to_string(),
                    severity: "critical",
                    message: format!(
                        "{model}: {failed} of {} requests failed over the last {window} s \
                         ({:.1}%, above {:.1}%)",
                        rows.len(),
                        100.0 * rate,
                        100.0 * limit
                    ),
                    value: rate,
                    threshold: limit,
                });
            }
        }
    }
    found
}

/// A change pushed to subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct AlertEvent {
    /// `fired` or `resolved`.
    pub state: &'static str,
    pub alert: AlertRow,
}

enum Write {
    Insert(AlertRow),
    Resolve(i64, f64),
}

struct Inner {
    active: HashMap<(String, String), AlertRow>,
    /// Resolved alerts, newest first.
    recent: VecDeque<AlertRow>,
    next_id: i64,
}

/// The alerts, active and recent.
pub struct Alerts {
    inner: Mutex<Inner>,
    events: broadcast::Sender<AlertEvent>,
    writes: Option<mpsc::UnboundedSender<Write>>,
}

impl Alerts {
    /// Alerts stored in `store` (if any), resuming its history: alerts left open by the last run
    /// are resolved now, since their conditions are judged afresh.
    pub async fn open(store: Option<&Store>) -> Self {
        let now = crate::clock::unix_seconds();
        let mut recent = VecDeque::new();
        let mut writes = None;
        if let Some(store) = store {
            if let Err(e) = store.alerts_resolve_open(now).await {
                tracing::warn!(error = %e, "alerts: could not close the last run's alerts");
            }
            match store.alerts_recent(RECENT as u64).await {
                Ok(rows) => recent.extend(rows),
                Err(e) => tracing::warn!(error = %e, "alerts: history not read"),
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_alerts(store.clone(), rx));
            writes = Some(tx);
        }
        let next_id = recent.iter().map(|a| a.id).max().unwrap_or(0) + 1;
        Self {
            inner: Mutex::new(Inner {
                active: HashMap::new(),
                recent,
                next_id,
            }),
            events: broadcast::channel(256).0,
            writes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AlertEvent> {
        self.events.subscribe()
    }

    fn push(&self, state: &'static str, alert: AlertRow, write: Write) {
        if let Some(tx) = &self.writes {
            let _ = tx.send(write);
        }
        let _ = self.events.send(AlertEvent { state, alert });
    }

    /// Fire `f` unless an alert of its rule and subject is already active (then its figures
    /// are brought up to date).
    pub fn fire(&self, f: Finding, now: f64) {
        let mut inner = self.lock();
        let key = (f.rule.to_string(), f.subject.clone());
        if let Some(active) = inner.active.get_mut(&key) {
            active.value = f.value;
            active.message = f.message;
            return;
        }
        let alert = AlertRow {
            id: inner.next_id,
            rule: f.rule.into(),
            subject: f.subject,
            severity: f.severity.into(),
            message: f.message,
            value: f.value,
            threshold: f.threshold,
            fired_at: now,
            resolved_at: None,
        };
        inner.next_id += 1;
        inner.active.insert(key, alert.clone());
        drop(inner);
        tracing::warn!(
            rule = alert.rule.as_str(),
            subject = alert.subject.as_str(),
            "{}",
            alert.message
        );
        self.push("fired", alert.clone(), Write::Insert(alert));
    }

    /// Resolve the active alerts of `rule` whose subject `keep` rejects.
    pub fn resolve_where(&self, rule: &str, now: f64, mut keep: impl FnMut(&str) -> bool) {
        let mut inner = self.lock();
        let gone: Vec<_> = inner
            .active
            .keys()
            .filter(|(r, s)| r == rule && !keep(s))
            .cloned()
            .collect();
        let mut resolved = Vec::new();
        for key in gone {
            if let Some(mut a) = inner.active.remove(&key) {
                a.resolved_at = Some(now);
                inner.recent.push_front(a.clone());
                inner.recent.truncate(RECENT);
                resolved.push(a);
            }
        }
        drop(inner);
        for a in resolved {
            let id = a.id;
            self.push("resolved", a, Write::Resolve(id, now));
        }
    }

    /// Apply one round of `judge`: fire what was found, resolve what no longer holds.
    pub fn apply(&self, found: Vec<Finding>, now: f64) {
        for rule in ["p95_latency", "error_rate"] {
            let subjects: Vec<&str> = found
                .iter()
                .filter(|f| f.rule == rule)
                .map(|f| f.subject.as_str())
                .collect();
            self.resolve_where(rule, now, |s| subjects.contains(&s));
        }
        for f in found {
            self.fire(f, now);
        }
    }

    /// Active alerts (oldest first) and the recently resolved (newest first).
    pub fn list(&self) -> (Vec<AlertRow>, Vec<AlertRow>) {
        let inner = self.lock();
        let mut active: Vec<_> = inner.active.values().cloned().collect();
        active.sort_by(|a, b| a.fired_at.total_cmp(&b.fired_at).then(a.id.cmp(&b.id)));
        (active, inner.recent.iter().cloned().collect())
    }

    /// Subjects of the active alerts of `rule`.
    pub fn active_subjects(&self, rule: &str) -> Vec<String> {
        self.lock()
            .active
            .keys()
            .filter(|(r, _)| r == rule)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

async fn write_alerts(store: Store, mut writes: mpsc::UnboundedReceiver<Write>) {
    while let Some(w) = writes.recv().await {
        let result = match &w {
            Write::Insert(a) => store.alert_insert(a).await,
            Write::Resolve(id, at) => store.alert_resolve(*id, *at).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "alerts: not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(model: &str, total_ms: f64, status: u16) -> RequestRow {
        RequestRow {
            finished_at: 0.0,
            session: "s".into(),
            model: model.into(),
            api: "chat".into(),
            status,
            outcome: if status == 499 { "cancelled" } else { "ok" }.into(),
            error_kind: None,
            prompt_tokens: 1,
            cached_tokens: 0,
            completion_tokens: 1,
            queue_ms: None,
            ttft_ms: None,
            total_ms,
            tokens_per_second: None,
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        }
    }

    fn thresholds() -> AlertThresholds {
        AlertThresholds {
            p95_latency_ms: Some(1_000.0),
            error_rate: Some(0.1),
            window_seconds: 60,
            min_requests: 5,
            ..AlertThresholds::default()
        }
    }

    #[test]
    fn latency_and_errors_are_judged_per_model_with_enough_requests() {
        let mut rows: Vec<RequestRow> = (0..19).map(|_| row("fast", 100.0, 200)).collect();
        rows.push(row("fast", 5_000.0, 200)); // 1 in 20: the p95 is still 100 ms
        rows.extend((0..18).map(|_| row("slow", 2_000.0, 200)));
        rows.extend((0..2).map(|_| row("slow", 10.0, 500))); // 2 of 20 failed: 10%, not above
        rows.extend((0..4).map(|_| row("few", 9_000.0, 500))); // under min_requests
        rows.extend((0..10).map(|_| row("fast", 1.0, 499))); // cancellations are not judged
        let refs: Vec<&RequestRow> = rows.iter().collect();
        let found = judge(&refs, &thresholds());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].rule, found[0].subject.as_str()),
            ("p95_latency", "slow")
        );
        assert_eq!(found[0].value, 2_000.0);

        rows.push(row("slow", 10.0, 500)); // 3 of 21 failed: above 10%
        let refs: Vec<&RequestRow> = rows.iter().collect();
        let found = judge(&refs, &thresholds());
        let errors: Vec<_> = found.iter().filter(|f| f.rule == "error_rate").collect();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("3 of 21 requests failed"),
            "{}",
            errors[0].message
        );
    }

    #[tokio::test]
    async fn an_alert_fires_once_and_resolves_when_its_condition_ends() {
        let alerts = Alerts::open(None).await;
        let mut events = alerts.subscribe();
        let finding = Finding {
            rule: "p95_latency",
            subject: "m".into(),
            severity: "warning",
            message: "slow".into(),
            value: 2.0,
            threshold: 1.0,
        };
        alerts.apply(vec![finding.clone()], 1.0);
        alerts.apply(
            vec![Finding {
                value: 3.0,
                ..finding
            }],
            2.0,
        );
        let (active, _) = alerts.list();
        assert_eq!(active.len(), 1);
        assert_eq!((active[0].fired_at, active[0].value), (1.0, 3.0));
        alerts.apply(vec![], 3.0);
        let (active, recent) = alerts.list();
        assert!(active.is_empty());
        assert_eq!(recent[0].resolved_at, Some(3.0));
        assert_eq!(events.try_recv().unwrap().state, "fired");
        assert_eq!(events.try_recv().unwrap().state, "resolved");
        assert!(events.try_recv().is_err());
    }

    #[tokio::test]
    async fn alerts_are_stored_and_the_last_runs_open_ones_closed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("a.db")).await.unwrap();
        let alerts = Alerts::open(Some(&store)).await;
        alerts.fire(
            Finding {
                rule: "error_rate",
                subject: "m".into(),
                severity: "critical",
                message: "failing".into(),
                value: 0.5,
                threshold: 0.1,
            },
            10.0,
        );
        drop(alerts);
        // The writer task drains its queue once the sender is gone.
        for _ in 0..100 {
            if !store.alerts_recent(1).await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let again = Alerts::open(Some(&store)).await;
        let (active, recent) = again.list();
        assert!(active.is_empty());
        assert_eq!(recent.len(), 1);
        assert!(recent[0].resolved_at.is_some());
    }
}
