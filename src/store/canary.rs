//! Canary releases' changes of share, each with its reason.

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::lab::canary::{Change, Status};

impl Store {
    pub async fn canary_change_put(&self, experiment: i64, c: &Change) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO canary_changes (experiment_id, at, share, status, reason) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(experiment)
        .bind(c.at)
        .bind(c.share)
        .bind(c.status.name())
        .bind(&c.reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every change, oldest first.
    pub async fn canary_changes(&self, experiment: i64) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, share, status, reason FROM canary_changes \
             WHERE experiment_id = ? ORDER BY id",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Change {
                at: r.get(0),
                share: r.get(1),
                status: Status::parse(&r.get::<String, _>(2)),
                reason: r.get(3),
            })
            .collect())
    }
}
