//! The Monitor page's charts over a chosen window (last 5 minutes, hour or day): the request log
//! cut into equal buckets that span exactly the window, so an axis never runs past it, and each
//! bucket's generated tokens/s, TTFT and latency percentiles; plus requests per API.

use std::collections::BTreeMap;

use serde::Serialize;

use super::summary::Percentiles;
use crate::store::requests::RequestRow;

/// A window the page offers: its name, length and bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub name: &'static str,
    pub seconds: f64,
    pub step: f64,
}

pub const WINDOWS: [Window; 3] = [
    Window {
        name: "5m",
        seconds: 300.0,
        step: 5.0,
    },
    Window {
        name: "1h",
        seconds: 3600.0,
        step: 60.0,
    },
    Window {
        name: "1d",
        seconds: 86_400.0,
        step: 1800.0,
    },
];

impl Window {
    pub fn named(name: &str) -> Option<Self> {
        WINDOWS.iter().copied().find(|w| w.name == name)
    }
}

/// Bucketed measures; `t` is each bucket's start (unix seconds), `None` where a bucket had no
/// request to measure.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub window: &'static str,
    pub from: f64,
    pub to: f64,
    pub step: f64,
    pub t: Vec<f64>,
    pub requests: Vec<u64>,
    pub tokens_per_second: Vec<f64>,
    pub ttft_p50_ms: Vec<Option<f64>>,
    pub ttft_p95_ms: Vec<Option<f64>>,
    pub latency_p95_ms: Vec<Option<f64>>,
    /// Requests in the window per API (`chat`, `messages`, `ollama_chat`, ...).
    pub by_api: BTreeMap<String, u64>,
}

/// `rows` (finished in `[now - window, now)`) cut into the window's buckets, the last ending at
/// `now` (rounded up to a step, so buckets stay put from one refresh to the next).
pub fn series(rows: &[RequestRow], window: Window, now: f64) -> Series {
    let to = (now / window.step).ceil() * window.step;
    let n = (window.seconds / window.step).round() as usize;
    let from = to - n as f64 * window.step;
    let mut buckets: Vec<Vec<&RequestRow>> = vec![Vec::new(); n];
    let mut by_api = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.finished_at >= from && r.finished_at < to)
    {
        let i = (((r.finished_at - from) / window.step) as usize).min(n - 1);
        buckets[i].push(r);
        *by_api.entry(r.api.clone()).or_insert(0) += 1;
    }
    let measure = |b: &[&RequestRow], f: fn(&RequestRow) -> Option<f64>| {
        Percentiles::of(b.iter().filter_map(|r| f(r)).collect())
    };
    Series {
        window: window.name,
        from,
        to,
        step: window.step,
        t: (0..n).map(|i| from + i as f64 * window.step).collect(),
        requests: buckets.iter().map(|b| b.len() as u64).collect(),
        tokens_per_second: buckets
            .iter()
            .map(|b| b.iter().map(|r| r.completion_tokens).sum::<u64>() as f64 / window.step)
            .collect(),
        ttft_p50_ms: buckets
            .iter()
            .map(|b| measure(b, |r| r.ttft_ms).p50)
            .collect(),
        ttft_p95_ms: buckets
            .iter()
            .map(|b| measure(b, |r| r.ttft_ms).p95)
            .collect(),
        latency_p95_ms: buckets
            .iter()
            .map(|b| measure(b, |r| Some(r.total_ms)).p95)
            .collect(),
        by_api,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at: f64, api: &str, tokens: u64, ttft: f64) -> RequestRow {
        RequestRow {
            finished_at: at,
            session: "s".into(),
            model: "m".into(),
            api: api.into(),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: 1,
            cached_tokens: 0,
            completion_tokens: tokens,
            queue_ms: None,
            ttft_ms: Some(ttft),
            total_ms: ttft * 2.0,
            tokens_per_second: None,
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        }
    }

    #[test]
    fn buckets_span_exactly_the_window() {
        let w = Window::named("5m").unwrap();
        let now = 1_000_003.0;
        let rows = [
            row(now - 400.0, "chat", 50, 10.0), // before the window
            row(now - 2.0, "chat", 100, 20.0),
            row(now - 1.0, "messages", 50, 40.0),
        ];
        let s = series(&rows, w, now);
        assert_eq!(s.t.len(), 60);
        assert_eq!((s.from, s.to), (1_000_005.0 - 300.0, 1_000_005.0));
        assert!(s.t.iter().all(|t| *t >= s.from && *t < s.to));
        assert_eq!(s.requests.iter().sum::<u64>(), 2);
        assert_eq!(*s.tokens_per_second.last().unwrap(), 150.0 / 5.0);
        assert_eq!(s.ttft_p95_ms.last().unwrap(), &Some(40.0));
        assert_eq!(s.ttft_p50_ms[0], None);
        assert_eq!(s.by_api.get("chat"), Some(&1));
        assert_eq!(s.by_api.get("messages"), Some(&1));
    }

    #[test]
    fn an_empty_log_has_every_bucket_and_no_measure() {
        let s = series(&[], Window::named("1d").unwrap(), 86_400.0 * 3.0);
        assert_eq!(s.t.len(), 48);
        assert!(s.requests.iter().all(|n| *n == 0));
        assert!(s.ttft_p95_ms.iter().all(Option::is_none));
        assert!(Window::named("2w").is_none());
    }
}
