//! The semantic response cache's table: answers with the embedding of their question.

use sqlx::Row;

use super::embeddings::{from_blob, to_blob};
use super::{Store, StoreError};

/// One kept answer.
#[derive(Debug, Clone)]
pub struct SemanticRow {
    pub id: u64,
    pub scope: [u8; 32],
    pub model: String,
    pub question: String,
    pub vector: Vec<f32>,
    /// Each choice's events, as JSON.
    pub events: String,
    pub bytes: u64,
    pub created_at: f64,
    pub used_at: f64,
    pub hits: u64,
}

impl Store {
    pub async fn semantic_insert(&self, row: &SemanticRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO semantic_answers \
             (id, scope, model, question, vector, events, bytes, created_at, used_at, hits) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.id as i64)
        .bind(&row.scope[..])
        .bind(&row.model)
        .bind(&row.question)
        .bind(to_blob(&row.vector))
        .bind(&row.events)
        .bind(row.bytes as i64)
        .bind(row.created_at)
        .bind(row.used_at)
        .bind(row.hits as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every kept answer, least recently used first; damaged rows are left out (and deleted by
    /// the cache that reads them).
    pub async fn semantic_all(&self) -> Result<Vec<SemanticRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, scope, model, question, vector, events, bytes, created_at, used_at, hits \
             FROM semantic_answers ORDER BY used_at",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(SemanticRow {
                    id: r.get::<i64, _>(0) as u64,
                    scope: r.get::<&[u8], _>(1).try_into().ok()?,
                    model: r.get(2),
                    question: r.get(3),
                    vector: from_blob(r.get::<&[u8], _>(4))?,
                    events: r.get(5),
                    bytes: r.get::<i64, _>(6) as u64,
                    created_at: r.get(7),
                    used_at: r.get(8),
                    hits: r.get::<i64, _>(9) as u64,
                })
            })
            .collect())
    }

    /// A hit: the answer's last use and its count of hits.
    pub async fn semantic_touch(&self, id: u64, at: f64) -> Result<(), StoreError> {
        sqlx::query("UPDATE semantic_answers SET used_at = ?, hits = hits + 1 WHERE id = ?")
            .bind(at)
            .bind(id as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn semantic_delete(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM semantic_answers WHERE id = ?")
                .bind(*id as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every kept answer's id.
    pub async fn semantic_ids(&self) -> Result<Vec<u64>, StoreError> {
        let rows = sqlx::query("SELECT id FROM semantic_answers")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| r.get::<i64, _>(0) as u64)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, used_at: f64) -> SemanticRow {
        SemanticRow {
            id,
            scope: [id as u8; 32],
            model: "m".into(),
            question: format!("q{id}"),
            vector: vec![0.5, -1.0, id as f32],
            events: "[]".into(),
            bytes: 10,
            created_at: 1.0,
            used_at,
            hits: 0,
        }
    }

    #[sqlx::test]
    async fn rows_round_trip_in_order_of_use(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        store.semantic_insert(&row(2, 5.0)).await.unwrap();
        store.semantic_insert(&row(1, 3.0)).await.unwrap();
        store.semantic_touch(1, 9.0).await.unwrap();
        let all = store.semantic_all().await.unwrap();
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 1]);
        assert_eq!((all[1].hits, all[1].used_at), (1, 9.0));
        assert_eq!(all[0].vector, vec![0.5, -1.0, 2.0]);
        assert_eq!(all[0].scope, [2u8; 32]);
        store.semantic_delete(&[2]).await.unwrap();
        assert_eq!(store.semantic_ids().await.unwrap(), [1]);
    }
}
