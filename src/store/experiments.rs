//! Experiments, their rows and votes.

use sqlx::Row as _;

use super::{Store, StoreError};
use crate::lab::experiments::{ExperimentSpec, Row, Vote};
use crate::lab::runner::{Pending, Rows};

/// A stored experiment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Experiment {
    pub id: i64,
    pub name: String,
    pub created_at: f64,
    pub spec: ExperimentSpec,
}

fn experiment_of(r: &sqlx::sqlite::SqliteRow) -> Option<Experiment> {
    Some(Experiment {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
        spec: serde_json::from_str(&r.get::<String, _>(3)).ok()?,
    })
}

impl Store {
    /// Create an experiment; None when the name is taken.
    pub async fn experiment_create(
        &self,
        spec: &ExperimentSpec,
    ) -> Result<Option<i64>, StoreError> {
        let result = sqlx::query(
            "INSERT INTO experiments (name, created_at, spec) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&spec.name)
        .bind(crate::clock::unix_seconds())
        .bind(serde_json::to_string(spec).expect("specs serialize"))
        .execute(&self.pool)
        .await?;
        Ok((result.rows_affected() == 1).then(|| result.last_insert_rowid()))
    }

    /// By id, or by name when `key` is not a number.
    pub async fn experiment_get(&self, key: &str) -> Result<Option<Experiment>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, created_at, spec FROM experiments \
             WHERE name = ? OR id = CAST(? AS INTEGER)",
        )
        .bind(key)
        .bind(key.parse::<i64>().ok())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().and_then(experiment_of))
    }

    pub async fn experiments_list(&self) -> Result<Vec<Experiment>, StoreError> {
        let rows =
            sqlx::query("SELECT id, name, created_at, spec FROM experiments ORDER BY id DESC")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().filter_map(experiment_of).collect())
    }

    pub async fn experiment_rows(&self, id: i64) -> Result<Vec<Row>, StoreError> {
        let rows = sqlx::query(
            "SELECT row FROM experiment_rows WHERE experiment_id = ? ORDER BY prompt_index, variant",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(&r.get::<String, _>(0)).ok())
            .collect())
    }

    /// Store one finished row (its own transaction: a crash loses at most the row in flight).
    pub async fn experiment_row_put(&self, id: i64, row: &Row) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO experiment_rows (experiment_id, prompt_index, variant, row) VALUES (?, ?, ?, ?) \
             ON CONFLICT (experiment_id, prompt_index, variant) DO UPDATE SET row = excluded.row",
        )
        .bind(id)
        .bind(row.prompt_index as i64)
        .bind(&row.variant)
        .bind(serde_json::to_string(row).expect("rows serialize"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn vote_insert(&self, id: i64, vote: &Vote) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO experiment_votes (experiment_id, created_at, vote) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(crate::clock::unix_seconds())
        .bind(serde_json::to_string(vote).expect("votes serialize"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn votes(&self, id: i64) -> Result<Vec<Vote>, StoreError> {
        let rows =
            sqlx::query("SELECT vote FROM experiment_votes WHERE experiment_id = ? ORDER BY id")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .filter_map(|r| serde_json::from_str(&r.get::<String, _>(0)).ok())
            .collect())
    }
}

/// An experiment run's rows and votes, in this database.
impl Rows for Store {
    fn rows(&self, experiment: i64) -> Pending<'_, Result<Vec<Row>, String>> {
        Box::pin(async move {
            self.experiment_rows(experiment)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn put<'a>(&'a self, experiment: i64, row: &'a Row) -> Pending<'a, Result<(), String>> {
        Box::pin(async move {
            self.experiment_row_put(experiment, row)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn votes(&self, experiment: i64) -> Pending<'_, Result<Vec<Vote>, String>> {
        Box::pin(async move { self.votes(experiment).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::experiments::Variant;

    #[sqlx::test]
    async fn experiments_rows_and_votes_round_trip(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        let variant = |name: &str| Variant {
            name: name.into(),
            model: "m".into(),
            compression: None,
            temperature: None,
            weight: 1.0,
        };
        let spec = ExperimentSpec {
            name: "e1".into(),
            variants: vec![variant("a"), variant("b")],
            reference: None,
            prompts: Some(vec!["hi".into()]),
            prompt_limit: None,
            max_tokens: 8,
            canary: None,
        };
        let id = store.experiment_create(&spec).await.unwrap().unwrap();
        assert_eq!(
            store.experiment_create(&spec).await.unwrap(),
            None,
            "names are unique"
        );
        assert_eq!(store.experiment_get("e1").await.unwrap().unwrap().id, id);
        assert_eq!(
            store
                .experiment_get(&id.to_string())
                .await
                .unwrap()
                .unwrap()
                .spec,
            spec
        );
        let row = Row {
            prompt_index: 0,
            variant: "a".into(),
            output: "hello".into(),
            ttft_ms: 1.0,
            tokens_per_second: None,
            prompt_tokens: 3,
            completion_tokens: 1,
            similarity: Some(1.0),
        };
        store.experiment_row_put(id, &row).await.unwrap();
        store.experiment_row_put(id, &row).await.unwrap();
        assert_eq!(store.experiment_rows(id).await.unwrap(), vec![row]);
        let vote = Vote {
            prompt_index: 0,
            a: "a".into(),
            b: "b".into(),
            winner: "tie".into(),
        };
        store.vote_insert(id, &vote).await.unwrap();
        assert_eq!(store.votes(id).await.unwrap(), vec![vote]);
    }
}
