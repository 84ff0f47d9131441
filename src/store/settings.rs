//! Saved settings (one JSON document per section) and sessions' own budgets.

use sqlx::Row;

use super::{now, Store, StoreError};

impl Store {
    /// The saved JSON of one settings section, if it was ever saved.
    pub async fn settings_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0)))
    }

    pub async fn settings_put(&self, key: &str, json: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(json)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sessions with a daily budget of their own.
    pub async fn budgets_all(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows =
            sqlx::query("SELECT session, daily_tokens FROM session_budgets ORDER BY session")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64))
            .collect())
    }

    /// Set (Some) or remove (None) a session's own budget.
    pub async fn budget_set(
        &self,
        session: &str,
        daily_tokens: Option<u64>,
    ) -> Result<(), StoreError> {
        match daily_tokens {
            Some(n) => {
                sqlx::query(
                    "INSERT INTO session_budgets (session, daily_tokens, updated_at) VALUES (?, ?, ?) \
                     ON CONFLICT (session) DO UPDATE SET daily_tokens = excluded.daily_tokens, \
                     updated_at = excluded.updated_at",
                )
                .bind(session)
                .bind(n as i64)
                .bind(now())
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM session_budgets WHERE session = ?")
                    .bind(session)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[sqlx::test]
    async fn settings_are_replaced_not_duplicated(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        assert_eq!(store.settings_get("monitor").await.unwrap(), None);
        store.settings_put("monitor", r#"{"a":1}"#).await.unwrap();
        store.settings_put("monitor", r#"{"a":2}"#).await.unwrap();
        assert_eq!(
            store.settings_get("monitor").await.unwrap().as_deref(),
            Some(r#"{"a":2}"#)
        );
    }

    #[sqlx::test]
    async fn budgets_set_change_and_remove(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        store.budget_set("b", Some(10)).await.unwrap();
        store.budget_set("a", Some(5)).await.unwrap();
        store.budget_set("b", Some(20)).await.unwrap();
        assert_eq!(
            store.budgets_all().await.unwrap(),
            vec![("a".to_string(), 5), ("b".to_string(), 20)]
        );
        store.budget_set("a", None).await.unwrap();
        assert_eq!(
            store.budgets_all().await.unwrap(),
            vec![("b".to_string(), 20)]
        );
    }
}
