//! Alerts as they fired and resolved.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError};

/// One alert: what crossed which threshold, about which model or session, and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub rule: String,
    pub subject: String,
    pub severity: String,
    pub message: String,
    pub value: f64,
    pub threshold: f64,
    /// Unix seconds.
    pub fired_at: f64,
    pub resolved_at: Option<f64>,
}

impl Store {
    /// Store a fired alert under its id.
    pub async fn alert_insert(&self, a: &AlertRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO alerts (id, rule, subject, severity, message, value, threshold, fired_at, \
             resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(a.id)
        .bind(&a.rule)
        .bind(&a.subject)
        .bind(&a.severity)
        .bind(&a.message)
        .bind(a.value)
        .bind(a.threshold)
        .bind(a.fired_at)
        .bind(a.resolved_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn alert_resolve(&self, id: i64, at: f64) -> Result<(), StoreError> {
        sqlx::query("UPDATE alerts SET resolved_at = ? WHERE id = ? AND resolved_at IS NULL")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Resolve every open alert (at startup: conditions are judged afresh).
    pub async fn alerts_resolve_open(&self, at: f64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("UPDATE alerts SET resolved_at = ? WHERE resolved_at IS NULL")
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// The newest `limit` alerts, newest first.
    pub async fn alerts_recent(&self, limit: u64) -> Result<Vec<AlertRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, rule, subject, severity, message, value, threshold, fired_at, resolved_at \
             FROM alerts ORDER BY fired_at DESC, id DESC LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AlertRow {
                id: r.get(0),
                rule: r.get(1),
                subject: r.get(2),
                severity: r.get(3),
                message: r.get(4),
                value: r.get(5),
                threshold: r.get(6),
                fired_at: r.get(7),
                resolved_at: r.get(8),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: i64, at: f64) -> AlertRow {
        AlertRow {
            id,
            rule: "error_rate".into(),
            subject: "m".into(),
            severity: "critical".into(),
            message: "m: 50% of requests failed".into(),
            value: 0.5,
            threshold: 0.05,
            fired_at: at,
            resolved_at: None,
        }
    }

    #[sqlx::test]
    async fn fired_alerts_resolve_once(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let (first, second) = (1, 2);
        store.alert_insert(&alert(first, 1.0)).await.unwrap();
        store.alert_insert(&alert(second, 2.0)).await.unwrap();
        assert!(store.alert_insert(&alert(first, 1.0)).await.is_err());
        store.alert_resolve(first, 3.0).await.unwrap();
        store.alert_resolve(first, 9.0).await.unwrap();
        let recent = store.alerts_recent(10).await.unwrap();
        assert_eq!(
            recent.iter().map(|a| a.id).collect::<Vec<_>>(),
            [second, first]
        );
        assert_eq!(recent[1].resolved_at, Some(3.0));
        assert_eq!(store.alerts_resolve_open(5.0).await.unwrap(), 1);
        assert_eq!(
            store.alerts_recent(1).await.unwrap()[0].resolved_at,
            Some(5.0)
        );
    }
}
