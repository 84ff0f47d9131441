//! Aggregates over recorded requests: counts, tokens, exact percentiles of the stored values.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::requests::RequestRow;

/// p50 / p95 / p99 of one measure, nearest-rank on the values themselves (None: no values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Nearest-rank percentile of sorted values.
pub fn rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[k.min(sorted.len()) - 1])
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self {
            p50: rank(&values, 50.0),
            p95: rank(&values, 95.0),
            p99: rank(&values, 99.0),
        }
    }
}

/// What a group of requests adds up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub response_cache_hits: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub ttft_ms: Percentiles,
    pub latency_ms: Percentiles,
    /// Generated tokens over the time spent generating them (first token to last), all requests.
    pub tokens_per_second: Option<f64>,
    /// Unix seconds of the first and last request.
    pub first_at: Option<f64>,
    pub last_at: Option<f64>,
}

impl Summary {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a RequestRow>) -> Self {
        let mut s = Summary::default();
        let (mut ttft, mut latency) = (Vec::new(), Vec::new());
        let (mut gen_tokens, mut gen_secs) = (0u64, 0f64);
        for r in rows {
            s.requests += 1;
            s.errors += (r.outcome == "error" || r.outcome == "timeout") as u64;
            s.cancelled += (r.outcome == "cancelled") as u64;
            s.response_cache_hits += r.response_cached as u64;
            s.prompt_tokens += r.prompt_tokens;
            s.cached_tokens += r.cached_tokens;
            s.completion_tokens += r.completion_tokens;
            ttft.extend(r.ttft_ms);
            latency.push(r.total_ms);
            if let (Some(tps), true) = (r.tokens_per_second, r.completion_tokens > 1) {
                if tps > 0.0 {
                    gen_tokens += r.completion_tokens - 1;
                    gen_secs += (r.completion_tokens - 1) as f64 / tps;
                }
            }
            s.first_at = Some(s.first_at.map_or(r.finished_at, |f| f.min(r.finished_at)));
            s.last_at = Some(s.last_at.map_or(r.finished_at, |l| l.max(r.finished_at)));
        }
        s.ttft_ms = Percentiles::of(ttft);
        s.latency_ms = Percentiles::of(latency);
        s.tokens_per_second = (gen_secs > 0.0).then(|| gen_tokens as f64 / gen_secs);
        s
    }
}

/// How `/api/usage` groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Session,
    Model,
    /// UTC day, `YYYY-MM-DD`.
    Day,
}

pub(crate) fn utc_day(unix: f64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let days = (unix / 86_400.0).floor() as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

/// One summary per group, in key order.
pub fn group(rows: &[RequestRow], by: GroupBy) -> BTreeMap<String, Summary> {
    let mut groups: BTreeMap<String, Vec<&RequestRow>> = BTreeMap::new();
    for r in rows {
        let key = match by {
            GroupBy::Session => r.session.clone(),
            GroupBy::Model => r.model.clone(),
            GroupBy::Day => utc_day(r.finished_at),
        };
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(k, v)| (k, Summary::of(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_on_a_known_set() {
        let p = Percentiles::of((1..=100).rev().map(f64::from).collect());
        assert_eq!((p.p50, p.p95, p.p99), (Some(50.0), Some(95.0), Some(99.0)));
        let p = Percentiles::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((p.p50, p.p95, p.p99), (Some(2.0), Some(3.0), Some(3.0)));
        assert_eq!(Percentiles::of(vec![]), Percentiles::default());
    }

    #[test]
    fn days_are_utc_calendar_dates() {
        assert_eq!(utc_day(0.0), "1970-01-01");
        assert_eq!(utc_day(951_782_400.0), "2000-02-29");
        assert_eq!(utc_day(1_795_478_399.0), "2026-11-23");
        assert_eq!(utc_day(1_795_478_400.0), "2026-11-24");
    }

    #[test]
    fn summaries_add_up_and_group() {
        let mk = |session: &str, outcome: &str, tokens: u64, total: f64| RequestRow {
            finished_at: 1_795_400_000.0,
            session: session.into(),
            model: "m".into(),
            api: "chat".into(),
            status: 200,
            outcome: outcome.into(),
            error_kind: None,
            prompt_tokens: 5,
            cached_tokens: 1,
            completion_tokens: tokens,
            queue_ms: Some(1.0),
            ttft_ms: Some(total / 10.0),
            total_ms: total,
            tokens_per_second: Some(10.0),
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        };
        let rows = vec![
            mk("a", "ok", 11, 100.0),
            mk("a", "error", 0, 50.0),
            mk("b", "cancelled", 3, 10.0),
        ];
        let g = group(&rows, GroupBy::Session);
        let a = &g["a"];
        assert_eq!(
            (a.requests, a.errors, a.prompt_tokens, a.completion_tokens),
            (2, 1, 10, 11)
        );
        assert_eq!(a.latency_ms.p50, Some(50.0));
        assert_eq!(a.tokens_per_second, Some(10.0));
        assert_eq!(g["b"].cancelled, 1);
        assert_eq!(group(&rows, GroupBy::Model)["m"].requests, 3);
        assert_eq!(
            group(&rows, GroupBy::Day).keys().collect::<Vec<_>>(),
            ["2026-11-23"]
        );
    }
}
