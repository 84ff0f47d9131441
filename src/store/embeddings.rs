//! The embedding cache's table: vectors by (model, weights sha256, input sha256).

use sqlx::Row;

use super::{now, Store, StoreError};

/// Which model (and which weights) a vector belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub model: String,
    pub weights_sha256: String,
}

/// Size of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableSize {
    pub entries: u64,
    pub bytes: u64,
}

pub(super) fn to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn from_blob(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

impl Store {
    /// The stored vector of each input (None where there is none), and their last use set to now.
    pub async fn embeddings_get(
        &self,
        key: &ModelKey,
        inputs: &[[u8; 32]],
    ) -> Result<Vec<Option<Vec<f32>>>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut out = Vec::with_capacity(inputs.len());
        for input in inputs {
            let row = sqlx::query(
                "SELECT vector FROM embedding_cache \
                 WHERE model = ? AND model_sha256 = ? AND input_sha256 = ?",
            )
            .bind(&key.model)
            .bind(&key.weights_sha256)
            .bind(&input[..])
            .fetch_optional(&mut *conn)
            .await?;
            // A damaged row reads as a miss and is overwritten by the next put.
            out.push(row.and_then(|r| from_blob(r.get::<&[u8], _>(0))));
        }
        if out.iter().any(Option::is_some) {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let t = now();
            for (input, _) in inputs.iter().zip(&out).filter(|(_, v)| v.is_some()) {
                sqlx::query(
                    "UPDATE embedding_cache SET last_used_at = ? \
                     WHERE model = ? AND model_sha256 = ? AND input_sha256 = ?",
                )
                .bind(t)
                .bind(&key.model)
                .bind(&key.weights_sha256)
                .bind(&input[..])
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Ok(out)
    }

    /// Store vectors (replacing any with the same key), in one transaction.
    pub async fn embeddings_put(
        &self,
        key: &ModelKey,
        entries: &[([u8; 32], &[f32])],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let t = now();
        for (input, vector) in entries {
            sqlx::query(
                "INSERT OR REPLACE INTO embedding_cache \
                 (model, model_sha256, input_sha256, vector, created_at, last_used_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&key.model)
            .bind(&key.weights_sha256)
            .bind(&input[..])
            .bind(to_blob(vector))
            .bind(t)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Entries and bytes of vectors stored.
    pub async fn embeddings_size(&self) -> Result<TableSize, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*), COALESCE(SUM(LENGTH(vector)), 0) FROM embedding_cache")
                .fetch_one(&self.pool)
                .await?;
        Ok(TableSize {
            entries: row.get::<i64, _>(0) as u64,
            bytes: row.get::<i64, _>(1) as u64,
        })
    }

    /// Delete the least recently used vectors until at most `max_bytes` remain.
    pub async fn embeddings_evict(&self, max_bytes: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let size = self.embeddings_size().await?;
            if size.bytes <= max_bytes || size.entries == 0 {
                return Ok(removed);
            }
            let per_entry = (size.bytes / size.entries).max(1);
            let excess = (size.bytes - max_bytes).div_ceil(per_entry).max(1);
            let done = sqlx::query(
                "DELETE FROM embedding_cache WHERE (model, model_sha256, input_sha256) IN \
                 (SELECT model, model_sha256, input_sha256 FROM embedding_cache \
                  ORDER BY last_used_at LIMIT ?)",
            )
            .bind(excess as i64)
            .execute(&self.pool)
            .await?;
            removed += done.rows_affected();
        }
    }

    /// Delete every vector, or those of one model; returns how many.
    pub async fn embeddings_clear(&self, model: Option<&str>) -> Result<u64, StoreError> {
        let done = match model {
            Some(m) => {
                sqlx::query("DELETE FROM embedding_cache WHERE model = ?")
                    .bind(m)
                    .execute(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM embedding_cache")
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str) -> ModelKey {
        ModelKey {
            model: model.into(),
            weights_sha256: "abc".into(),
        }
    }

    #[sqlx::test]
    async fn put_get_evict_clear(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        store
            .embeddings_put(&key("m"), &[(a, &[1.0, -2.5][..]), (b, &[3.0, 4.0][..])])
            .await
            .unwrap();
        let got = store
            .embeddings_get(&key("m"), &[b, [9; 32], a])
            .await
            .unwrap();
        assert_eq!(got, vec![Some(vec![3.0, 4.0]), None, Some(vec![1.0, -2.5])]);
        // Another model or other weights never see these vectors.
        let other = ModelKey {
            weights_sha256: "def".into(),
            ..key("m")
        };
        assert_eq!(
            store.embeddings_get(&other, &[a]).await.unwrap(),
            vec![None]
        );
        assert_eq!(
            store.embeddings_size().await.unwrap(),
            TableSize {
                entries: 2,
                bytes: 16
            }
        );
        store
            .embeddings_put(&key("n"), &[(a, &[5.0][..])])
            .await
            .unwrap();
        assert_eq!(store.embeddings_evict(12).await.unwrap(), 2);
        assert_eq!(store.embeddings_size().await.unwrap().entries, 1);
        // Equal last uses (same second): either entry may be the one left.
        let left_n = store.embeddings_get(&key("n"), &[a]).await.unwrap()[0].is_some() as u64;
        store
            .embeddings_put(&key("n"), &[(b, &[6.0][..])])
            .await
            .unwrap();
        assert_eq!(store.embeddings_clear(Some("n")).await.unwrap(), 1 + left_n);
        assert_eq!(store.embeddings_clear(None).await.unwrap(), 1 - left_n);
    }
}
