//! The last day's finished requests in memory, newest last: what the live stream and the alert
//! rules read each second without asking the database.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::store::requests::RequestRow;

/// How far back the window reaches, and how many rows it holds at most.
const KEEP_SECONDS: f64 = 86_400.0;
const KEEP_ROWS: usize = 100_000;

#[derive(Default)]
pub struct Recent {
    rows: Mutex<VecDeque<RequestRow>>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RequestRow>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, row: RequestRow) {
        let mut rows = self.lock();
        let horizon = row.finished_at - KEEP_SECONDS;
        rows.push_back(row);
        while rows.len() > KEEP_ROWS || rows.front().is_some_and(|r| r.finished_at < horizon) {
            rows.pop_front();
        }
    }

    /// Rows finished at or after `from` (unix seconds), oldest first.
    pub fn since(&self, from: f64) -> Vec<RequestRow> {
        let rows = self.lock();
        let start = rows.partition_point(|r| r.finished_at < from);
        rows.range(start..).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: f64) -> RequestRow {
        RequestRow {
            finished_at: at,
            session: "s".into(),
            model: "m".into(),
            api: "chat".into(),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: 1,
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
        }
    }

    #[test]
    fn keeps_a_day_and_answers_since() {
        let recent = Recent::default();
        for t in [0.0, 10.0, 20.0, 90_000.0] {
            recent.push(row(t));
        }
        // The first three are more than a day older than the last.
        assert_eq!(recent.since(0.0).len(), 1);
        recent.push(row(90_001.0));
        let times: Vec<f64> = recent
            .since(90_000.5)
            .iter()
            .map(|r| r.finished_at)
            .collect();
        assert_eq!(times, [90_001.0]);
    }
}
