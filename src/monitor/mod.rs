//! Every finished request, recorded once: the server hands a row to the monitor where it counted
//! the request's tokens, and a writer task stores rows in SQLite in small transactions, off the
//! request path (a slow disk never slows generation). Closing the last handle flushes what is
//! queued; a row is safe once its transaction commits. Each row also feeds `/metrics`.

pub mod metrics;
pub mod summary;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::store::requests::RequestRow;
use crate::store::Store;

/// Unix seconds now, as the log stores times.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Rows per transaction at most.
const BATCH: usize = 256;

/// Where finished requests are sent; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    rows: Option<mpsc::UnboundedSender<RequestRow>>,
    store: Option<Store>,
    counters: Arc<Counters>,
    metrics: Arc<metrics::Metrics>,
}

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
    /// A monitor writing to `store` (without one, rows are counted and dropped); the returned
    /// task ends once every handle is gone and the queue is written.
    pub fn start(store: Option<Store>) -> (Self, Option<tokio::task::JoinHandle<()>>) {
        let counters = Arc::new(Counters::default());
        let Some(db) = store.clone() else {
            return (
                Self {
                    rows: None,
                    store,
                    counters,
                    metrics: Arc::default(),
                },
                None,
            );
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer(db, rx, counters.clone()));
        (
            Self {
                rows: Some(tx),
                store,
                counters,
                metrics: Arc::default(),
            },
            Some(task),
        )
    }

    pub fn record(&self, row: RequestRow) {
        self.counters.recorded.fetch_add(1, Ordering::Relaxed);
        self.metrics.observe(&row);
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
        let (monitor, task) = Monitor::start(Some(store.clone()));
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
