//! The request log's table.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One finished request as the log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRow {
    /// Unix seconds.
    pub finished_at: f64,
    pub session: String,
    pub model: String,
    pub api: String,
    pub status: u16,
    pub outcome: String,
    pub error_kind: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub queue_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub total_ms: f64,
    pub tokens_per_second: Option<f64>,
    pub response_cached: bool,
    /// The model's variant: its weight type, or an experiment's variant name.
    pub variant: Option<String>,
    /// Compression applied to the prompt (`prune@0.5`).
    pub compression: Option<String>,
    /// How routing chose the target (`auto`'s rule, a chain's fallback), with its reason.
    pub route: Option<String>,
}

const COLUMNS: &str = "finished_at, session, model, api, status, outcome, error_kind, \
    prompt_tokens, cached_tokens, completion_tokens, queue_ms, ttft_ms, total_ms, \
    tokens_per_second, response_cached, variant, compression, route";

fn row_of(r: &sqlx::sqlite::SqliteRow) -> RequestRow {
    RequestRow {
        finished_at: r.get(0),
        session: r.get(1),
        model: r.get(2),
        api: r.get(3),
        status: r.get::<i64, _>(4) as u16,
        outcome: r.get(5),
        error_kind: r.get(6),
        prompt_tokens: r.get::<i64, _>(7) as u64,
        cached_tokens: r.get::<i64, _>(8) as u64,
        completion_tokens: r.get::<i64, _>(9) as u64,
        queue_ms: r.get(10),
        ttft_ms: r.get(11),
        total_ms: r.get(12),
        tokens_per_second: r.get(13),
        response_cached: r.get::<i64, _>(14) != 0,
        variant: r.get(15),
        compression: r.get(16),
        route: r.get(17),
    }
}

impl Store {
    /// Append finished requests in one transaction.
    pub async fn requests_insert(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for r in rows {
            sqlx::query(&format!(
                "INSERT INTO requests ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(r.finished_at)
            .bind(&r.session)
            .bind(&r.model)
            .bind(&r.api)
            .bind(r.status as i64)
            .bind(&r.outcome)
            .bind(&r.error_kind)
            .bind(r.prompt_tokens as i64)
            .bind(r.cached_tokens as i64)
            .bind(r.completion_tokens as i64)
            .bind(r.queue_ms)
            .bind(r.ttft_ms)
            .bind(r.total_ms)
            .bind(r.tokens_per_second)
            .bind(r.response_cached as i64)
            .bind(&r.variant)
            .bind(&r.compression)
            .bind(&r.route)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Requests finished in `[from, to)` (unix seconds), of one session or all, oldest first.
    pub async fn requests_between(
        &self,
        from: f64,
        to: f64,
        session: Option<&str>,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM requests WHERE finished_at >= ? AND finished_at < ? \
             AND (? IS NULL OR session = ?) ORDER BY finished_at"
        ))
        .bind(from)
        .bind(to)
        .bind(session)
        .bind(session)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(row_of).collect())
    }

    /// Tokens (prompt and completion) each session used since `from` (unix seconds).
    pub async fn requests_tokens_by_session(
        &self,
        from: f64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT session, SUM(prompt_tokens + completion_tokens) FROM requests \
             WHERE finished_at >= ? GROUP BY session",
        )
        .bind(from)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// One session's requests, newest first, a page at a time; and how many it has in all.
    pub async fn requests_page(
        &self,
        session: &str,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<RequestRow>, u64), StoreError> {
        // One read transaction: the page and the count see the same rows.
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM requests WHERE session = ? \
             ORDER BY finished_at DESC, id DESC LIMIT ? OFFSET ?"
        ))
        .bind(session)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&mut *tx)
        .await?;
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM requests WHERE session = ?")
            .bind(session)
            .fetch_one(&mut *tx)
            .await?
            .get(0);
        tx.commit().await?;
        Ok((rows.iter().map(row_of).collect(), total as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn row(session: &str, at: f64, tokens: u64) -> RequestRow {
        RequestRow {
            finished_at: at,
            session: session.into(),
            model: "m".into(),
            api: "chat".into(),
            status: 200,
            outcome: "ok".into(),
            error_kind: None,
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: tokens,
            queue_ms: Some(1.0),
            ttft_ms: Some(20.0),
            total_ms: 100.0,
            tokens_per_second: Some(50.0),
            response_cached: false,
            variant: None,
            compression: None,
            route: None,
        }
    }

    #[sqlx::test]
    async fn insert_then_query_by_time_and_session(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let rows = vec![row("a", 10.0, 1), row("b", 20.0, 2), row("a", 30.0, 3)];
        store.requests_insert(&rows).await.unwrap();
        assert_eq!(
            store.requests_between(0.0, 100.0, None).await.unwrap(),
            rows
        );
        let a = store
            .requests_between(15.0, 100.0, Some("a"))
            .await
            .unwrap();
        assert_eq!(a, vec![rows[2].clone()]);
        let (page, total) = store.requests_page("a", 0, 1).await.unwrap();
        assert_eq!((page, total), (vec![rows[2].clone()], 2));
        let (page, _) = store.requests_page("a", 1, 5).await.unwrap();
        assert_eq!(page, vec![rows[0].clone()]);
    }

    #[sqlx::test]
    async fn tokens_by_session_since_a_time(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let rows = vec![row("a", 10.0, 1), row("b", 20.0, 2), row("a", 30.0, 3)];
        store.requests_insert(&rows).await.unwrap();
        let mut used = store.requests_tokens_by_session(15.0).await.unwrap();
        used.sort();
        assert_eq!(used, vec![("a".to_string(), 13), ("b".to_string(), 12)]);
    }
}
