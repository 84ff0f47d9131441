//! Benchmark history.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One stored run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub id: i64,
    pub finished_at: f64,
    pub model: String,
    pub quantization: String,
    pub device: String,
    pub software: String,
    pub result: serde_json::Value,
}

fn row_of(r: &sqlx::sqlite::SqliteRow) -> BenchRow {
    let json: String = r.get(6);
    BenchRow {
        id: r.get(0),
        finished_at: r.get(1),
        model: r.get(2),
        quantization: r.get(3),
        device: r.get(4),
        software: r.get(5),
        result: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
    }
}

const COLUMNS: &str = "id, finished_at, model, quantization, device, software, result";

impl Store {
    /// Store a run; returns its id.
    pub async fn bench_insert(&self, row: &BenchRow) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO bench_runs (finished_at, model, quantization, device, software, result) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(row.finished_at)
        .bind(&row.model)
        .bind(&row.quantization)
        .bind(&row.device)
        .bind(&row.software)
        .bind(row.result.to_string())
        .execute(&self.pool)
        .await?
        .last_insert_rowid())
    }

    /// Store a finished benchmark (its whole result beside the columns it is listed by).
    pub async fn bench_save(
        &self,
        result: &crate::devices::bench::BenchResult,
    ) -> Result<i64, StoreError> {
        self.bench_insert(&BenchRow {
            id: 0,
            finished_at: result.finished_at,
            model: result.model.name.clone(),
            quantization: result.model.quantization.clone(),
            device: result.device.clone(),
            software: result.software.clone(),
            result: serde_json::json!(result),
        })
        .await
    }

    /// The newest `limit` runs, newest first.
    pub async fn bench_recent(&self, limit: u64) -> Result<Vec<BenchRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bench_runs ORDER BY finished_at DESC, id DESC LIMIT ?"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(row_of).collect())
    }

    pub async fn bench_get(&self, id: i64) -> Result<Option<BenchRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM bench_runs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test]
    async fn runs_are_stored_listed_and_fetched(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let row = |at: f64| BenchRow {
            id: 0,
            finished_at: at,
            model: "m".into(),
            quantization: "Q4_K".into(),
            device: "cpu".into(),
            software: "lantern 0".into(),
            result: serde_json::json!({"speeds": [{"test": "tg128"}]}),
        };
        let a = store.bench_insert(&row(1.0)).await.unwrap();
        let b = store.bench_insert(&row(2.0)).await.unwrap();
        let recent = store.bench_recent(10).await.unwrap();
        assert_eq!(recent.iter().map(|r| r.id).collect::<Vec<_>>(), [b, a]);
        let got = store.bench_get(a).await.unwrap().unwrap();
        assert_eq!(got.result["speeds"][0]["test"], "tg128");
        assert!(store.bench_get(99).await.unwrap().is_none());
    }
}
