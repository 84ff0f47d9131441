//! The lab's stored results.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct QualityRow {
    pub id: i64,
    pub finished_at: f64,
    pub reference: String,
    pub variant: String,
    pub prompt_set: String,
    pub report: serde_json::Value,
}

impl Store {
    pub async fn quality_insert(&self, row: &QualityRow) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO quality_runs (finished_at, reference, variant, prompt_set, report) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(row.finished_at)
        .bind(&row.reference)
        .bind(&row.variant)
        .bind(&row.prompt_set)
        .bind(row.report.to_string())
        .execute(&self.pool)
        .await?
        .last_insert_rowid())
    }

    /// The newest `limit` measurements, newest first.
    pub async fn quality_recent(&self, limit: u64) -> Result<Vec<QualityRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, finished_at, reference, variant, prompt_set, report FROM quality_runs \
             ORDER BY finished_at DESC, id DESC LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| QualityRow {
                id: r.get(0),
                finished_at: r.get(1),
                reference: r.get(2),
                variant: r.get(3),
                prompt_set: r.get(4),
                report: serde_json::from_str(&r.get::<String, _>(5)).unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test]
    async fn measurements_are_stored_newest_first(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        for (i, v) in ["a-q8_0", "a-q4_0"].iter().enumerate() {
            store
                .quality_insert(&QualityRow {
                    id: 0,
                    finished_at: i as f64,
                    reference: "a".into(),
                    variant: v.to_string(),
                    prompt_set: "builtin".into(),
                    report: serde_json::json!({"kl_mean": i}),
                })
                .await
                .unwrap();
        }
        let rows = store.quality_recent(10).await.unwrap();
        assert_eq!(rows[0].variant, "a-q4_0");
        assert_eq!(rows[1].report["kl_mean"], 0);
    }
}
