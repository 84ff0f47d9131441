//! Every finished request, recorded once: the server hands a row to the monitor where it counted
//! the request's tokens, and a writer task stores rows in SQLite in small transactions, off the
//! request path (a slow disk never slows generation). Closing the last handle flushes what is
//! queued; a row is safe once its transaction commits. Each row also feeds `/metrics`, the
//! live window (`recent`), the session's daily budget, and the alert rules judged each second.

pub mod alerts;
pub mod answers;
pub mod budgets;
pub mod drift;
pub mod metrics;
pub mod recent;
pub mod series;
pub mod settings;
pub mod summary;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::clock::unix_seconds;
use crate::store::requests::RequestRow;
use crate::store::Store;

/// Rows per transaction at most.
const BATCH: usize = 256;

/// Where finished requests are sent; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    rows: Option<mpsc::UnboundedSender<RequestRow>>,
    store: Option<Store>,
    counters: Arc<Counters>,
    metrics: Arc<metrics::Metrics>,
    recent: Arc<recent::Recent>,
    budgets: Arc<budgets::Budgets>,
    alerts: Arc<alerts::Alerts>,
    settings: Arc<RwLock<settings::MonitorSettings>>,
    /// Finished answers for the consistency figures.
    answers: Arc<answers::AnswerQueue>,
}

/// The settings section the monitor saves under.
const SETTINGS_KEY: &str = "monitor";

#[derive(Default)]
struct Counters {
    recorded: AtomicU64,
    written: AtomicU64,
    failed: AtomicU64,
}

/// What the monitor has done, for `/api/sessions`' callers to know how fresh the data is.
#[derive(Debug, serde::Serialize)]
pub struct MonitorStats {
    pub recorded: u64,
    pub written: u64,
    pub failed_writes: u64,
    pub stored: bool,
}

impl Monitor {
    /// A monitor writing to `store` (without one, rows are counted and dropped, and settings
    /// last until exit). Reads the saved settings, budgets and today's use, and the last day's
    /// requests for the live window; the returned task ends once every handle is gone and the
    /// queue is written.
    pub async fn open(store: Option<Store>) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let now = unix_seconds();
        let settings = match &store {
            Some(db) => load_settings(db).await,
            None => settings::MonitorSettings::default(),
        };
        let budgets = Arc::new(budgets::Budgets::default());
        budgets.set_default(settings.default_daily_tokens);
        let recent = Arc::new(recent::Recent::default());
        if let Some(db) = &store {
            let today = budgets::day_of(now) as f64 * 86_400.0;
            match db.budgets_all().await {
                Ok(own) => own
                    .into_iter()
                    .for_each(|(s, n)| budgets.set_session(&s, Some(n))),
                Err(e) => tracing::warn!(error = %e, "budgets not read"),
            }
            match db.requests_tokens_by_session(today).await {
                Ok(used) => budgets.seed(budgets::day_of(now), used),
                Err(e) => tracing::warn!(error = %e, "today's token use not read"),
            }
            match db
                .requests_between(now - 86_400.0, f64::INFINITY, None)
                .await
            {
                Ok(rows) => rows.into_iter().for_each(|r| recent.push(r)),
                Err(e) => tracing::warn!(error = %e, "recent requests not read"),
            }
        }
        let alerts = Arc::new(alerts::Alerts::open(store.as_ref()).await);
        let counters = Arc::new(Counters::default());
        let (rows, task) = match store.clone() {
            Some(db) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Some(tx),
                    Some(tokio::spawn(writer(db, rx, counters.clone()))),
                )
            }
            None => (None, None),
        };
        let monitor = Self {
            rows,
            store,
            counters,
            metrics: Arc::default(),
            recent,
            budgets,
            alerts,
            settings: Arc::new(RwLock::new(settings)),
            answers: Arc::default(),
        };
        tokio::spawn(monitor.judge_each_second());
        (monitor, task)
    }

    /// Judge the alert rules once a second. Holds no sender of the row queue, so it never keeps
    /// the writer from finishing.
    fn judge_each_second(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (recent, alerts, budgets, settings) = (
            self.recent.clone(),
            self.alerts.clone(),
            self.budgets.clone(),
            self.settings.clone(),
        );
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let now = unix_seconds();
                let thresholds = read(&settings).alerts.clone();
                let rows = recent.since(now - thresholds.window_seconds as f64);
                let refs: Vec<&RequestRow> = rows.iter().collect();
                alerts.apply(alerts::judge(&refs, &thresholds), now);
                // A budget alert ends when the day turns or the budget is raised or removed.
                let still_over = |session: &str, at: f64| {
                    budgets
                        .status(session, now)
                        .is_some_and(|s| s.fraction() >= at)
                };
                alerts.resolve_where("budget_warning", now, |s| {
                    still_over(s, thresholds.budget_warning)
                });
                alerts.resolve_where("budget_exhausted", now, |s| still_over(s, 1.0));
            }
        }
    }

    pub fn record(&self, row: RequestRow) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        self.metrics.observe(&row);
        let tokens = row.prompt_tokens + row.completion_tokens;
        let warn_at = read(&self.settings).alerts.budget_warning;
        if let Some(crossing) = self
            .budgets
            .charge(&row.session, tokens, row.finished_at, warn_at)
        {
            self.alerts.fire(budget_finding(crossing), row.finished_at);
        }
        self.recent.push(row.clone());
        if let Some(tx) = &self.rows {
            let _ = tx.send(row);
        }
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    pub fn budgets(&self) -> &budgets::Budgets {
        &self.budgets
    }

    pub fn alerts(&self) -> &alerts::Alerts {
        &self.alerts
    }

    /// Whether `session`'s answers are measured for the consistency figures (the setting is on,
    /// and it is not the drift probes' own session): asked once as a request starts.
    pub fn measures_answers(&self, session: &str) -> bool {
        read(&self.settings).consistency && session != drift::PROBE_SESSION
    }

    /// Queue a finished answer for its session's consistency figures.
    pub fn answered(&self, a: answers::Answered) {
        self.answers.push(a);
    }

    pub fn answers(&self) -> &answers::AnswerQueue {
        &self.answers
    }

    /// Requests finished since `from` (unix seconds, at most a day back), oldest first.
    pub fn recent_since(&self, from: f64) -> Vec<RequestRow> {
        self.recent.since(from)
    }

    pub fn settings(&self) -> settings::MonitorSettings {
        read(&self.settings).clone()
    }

    /// Save and apply new settings (validated by the caller).
    pub async fn set_settings(
        &self,
        new: settings::MonitorSettings,
    ) -> Result<(), crate::store::StoreError> {
        if let Some(db) = &self.store {
            let json = serde_json::to_string(&new).expect("settings serialize");
            db.settings_put(SETTINGS_KEY, &json).await?;
        }
        self.budgets.set_default(new.default_daily_tokens);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }

    /// Save and apply a session's own daily budget (None: back to the default).
    pub async fn set_session_budget(
        &self,
        session: &str,
        daily_tokens: Option<u64>,
    ) -> Result<(), crate::store::StoreError> {
        if let Some(db) = &self.store {
            db.budget_set(session, daily_tokens).await?;
        }
        self.budgets.set_session(session, daily_tokens);
        Ok(())
    }

    pub fn stats(&self) -> MonitorStats {
        let c = &self.counters;
        MonitorStats {
            recorded: c.recorded.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            failed_writes: c.failed.load(Ordering::Relaxed),
            stored: self.store.is_some(),
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

/// The saved settings; defaults where none were saved. Settings that no longer parse are left
/// in the database untouched (the user's copy is never lost) and the defaults apply.
async fn load_settings(db: &Store) -> settings::MonitorSettings {
    match db.settings_get(SETTINGS_KEY).await {
        Ok(Some(json)) => match serde_json::from_str::<settings::MonitorSettings>(&json) {
            Ok(s) if s.validate().is_ok() => s,
            _ => {
                tracing::warn!(
                    saved = json.as_str(),
                    "monitor settings not understood; using defaults"
                );
                settings::MonitorSettings::default()
            }
        },
        Ok(None) => settings::MonitorSettings::default(),
        Err(e) => {
            tracing::warn!(error = %e, "monitor settings not read; using defaults");
            settings::MonitorSettings::default()
        }
    }
}

fn budget_finding(crossing: budgets::Crossing) -> alerts::Finding {
    let (rule, severity, status) = match crossing {
        budgets::Crossing::Warning(s) => ("budget_warning", "warning", s),
        budgets::Crossing::Exhausted(s) => ("budget_exhausted", "critical", s),
    };
    let message = if status.exhausted() {
        status.exhausted_message()
    } else {
        status.warning()
    };
    alerts::Finding {
        rule,
        subject: status.session.clone(),
        severity,
        message,
        value: status.used_today as f64,
        threshold: status.daily_tokens as f64,
    }
}

async fn writer(store: Store, mut rows: mpsc::UnboundedReceiver<RequestRow>, c: Arc<Counters>) {
    while let Some(first) = rows.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rows.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match store.requests_insert(&batch).await {
            Ok(()) => c.written.fetch_add(batch.len() as u64, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.len(), "request log: rows not stored");
                c.failed.fetch_add(batch.len() as u64, Ordering::Relaxed)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_are_written_and_flushed_when_the_last_handle_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("m.db")).await.unwrap();
        let (monitor, task) = Monitor::open(Some(store.clone())).await;
        let row = |i: u64| RequestRow {
            finished_at: i as f64,
            session: "s".into(),
            model: "m".into(),
            api: "chat".into(),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: i,
            cached_tokens: 0,
            completion_tokens: 1,
            queue_ms: None,
            ttft_ms: None,
            total_ms: 1.0,
            tokens_per_second: None,
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        };
        for i in 0..1000 {
            monitor.clone().record(row(i));
        }
        drop(monitor);
        task.unwrap().await.unwrap();
        let rows = store.requests_between(0.0, 1e9, None).await.unwrap();
        assert_eq!(rows.len(), 1000);
        assert_eq!(
            rows.iter().map(|r| r.prompt_tokens).sum::<u64>(),
            999 * 1000 / 2
        );
    }
}
