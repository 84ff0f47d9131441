//! Drift probes' runs per model, and each session's answer points (length, similarity to the
//! session's earlier answers) with the running mean of its answers' embeddings.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::embeddings::{from_blob, to_blob};
use super::{Store, StoreError};

/// One probe's answer in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    pub prompt: String,
    pub answer: String,
    pub tokens: u64,
    pub refused: bool,
}

/// One run of a model's probe set, with its figures against the baseline (the first run).
#[derive(Debug, Clone, Serialize)]
pub struct DriftRun {
    pub id: i64,
    pub model: String,
    pub weights_sha256: Option<String>,
    pub ran_at: f64,
    pub answers: Vec<ProbeAnswer>,
    /// Mean cosine of each answer to the baseline's; None for the baseline itself.
    pub similarity: Option<f64>,
    /// Mean answer tokens over the baseline's; None for the baseline itself.
    pub length_ratio: Option<f64>,
    pub refusal_rate: f64,
    pub drifted: bool,
}

/// One answer of a session: when, how long, how like the session's earlier answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnswerPoint {
    pub session: String,
    pub model: String,
    pub at: f64,
    pub tokens: u64,
    pub similarity: Option<f64>,
}

fn run_of(r: sqlx::sqlite::SqliteRow) -> DriftRun {
    DriftRun {
        id: r.get(0),
        model: r.get(1),
        weights_sha256: r.get(2),
        ran_at: r.get(3),
        answers: serde_json::from_str(r.get::<&str, _>(4)).unwrap_or_default(),
        similarity: r.get(5),
        length_ratio: r.get(6),
        refusal_rate: r.get(7),
        drifted: r.get::<i64, _>(8) != 0,
    }
}

const RUN_COLUMNS: &str = "id, model, weights_sha256, ran_at, answers, similarity, \
                           length_ratio, refusal_rate, drifted";

impl Store {
    /// Save a run; its id comes back.
    pub async fn drift_insert(&self, run: &DriftRun) -> Result<i64, StoreError> {
        let answers = serde_json::to_string(&run.answers).expect("answers serialize");
        let id = sqlx::query(
            "INSERT INTO drift_runs (model, weights_sha256, ran_at, answers, similarity, \
             length_ratio, refusal_rate, drifted) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&run.model)
        .bind(&run.weights_sha256)
        .bind(run.ran_at)
        .bind(answers)
        .bind(run.similarity)
        .bind(run.length_ratio)
        .bind(run.refusal_rate)
        .bind(run.drifted as i64)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// A model's first run: what later runs are compared with.
    pub async fn drift_baseline(&self, model: &str) -> Result<Option<DriftRun>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM drift_runs WHERE model = ? ORDER BY ran_at, id LIMIT 1"
        ))
        .bind(model)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(run_of))
    }

    /// Runs since `from` (every model, or one), oldest first.
    pub async fn drift_runs(
        &self,
        model: Option<&str>,
        from: f64,
    ) -> Result<Vec<DriftRun>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM drift_runs WHERE ran_at >= ? AND (? IS NULL OR model = ?) \
             ORDER BY ran_at, id"
        ))
        .bind(from)
        .bind(model)
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(run_of).collect())
    }

    /// When each model was last probed.
    pub async fn drift_last_runs(&self) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query("SELECT model, MAX(ran_at) FROM drift_runs GROUP BY model")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Forget a model's runs (a new baseline starts with the next).
    pub async fn drift_forget(&self, model: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM drift_runs WHERE model = ?")
            .bind(model)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub async fn answer_point_insert(&self, p: &AnswerPoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO answer_points (session, model, at, tokens, similarity) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&p.session)
        .bind(&p.model)
        .bind(p.at)
        .bind(p.tokens as i64)
        .bind(p.similarity)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A session's answer points since `from` (every session when None), oldest first, at most
    /// `limit` of the newest.
    pub async fn answer_points(
        &self,
        session: Option<&str>,
        from: f64,
        limit: u64,
    ) -> Result<Vec<AnswerPoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT session, model, at, tokens, similarity FROM answer_points \
             WHERE at >= ? AND (? IS NULL OR session = ?) ORDER BY at DESC, id DESC LIMIT ?",
        )
        .bind(from)
        .bind(session)
        .bind(session)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut points: Vec<AnswerPoint> = rows
            .into_iter()
            .map(|r| AnswerPoint {
                session: r.get(0),
                model: r.get(1),
                at: r.get(2),
                tokens: r.get::<i64, _>(3) as u64,
                similarity: r.get(4),
            })
            .collect();
        points.reverse();
        Ok(points)
    }

    /// The running mean of a session's answer embeddings, and how many it averages.
    pub async fn centroid_get(&self, session: &str) -> Result<Option<(Vec<f32>, u64)>, StoreError> {
        let row = sqlx::query("SELECT vector, n FROM session_centroids WHERE session = ?")
            .bind(session)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|r| {
            let v = from_blob(r.get::<&[u8], _>(0))?;
            Some((v, r.get::<i64, _>(1) as u64))
        }))
    }

    pub async fn centroid_put(&self, session: &str, v: &[f32], n: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_centroids (session, vector, n) VALUES (?, ?, ?) \
             ON CONFLICT (session) DO UPDATE SET vector = excluded.vector, n = excluded.n",
        )
        .bind(session)
        .bind(to_blob(v))
        .bind(n as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(model: &str, at: f64, similarity: Option<f64>) -> DriftRun {
        DriftRun {
            id: 0,
            model: model.into(),
            weights_sha256: Some("abc".into()),
            ran_at: at,
            answers: vec![ProbeAnswer {
                prompt: "p".into(),
                answer: "a".into(),
                tokens: 3,
                refused: false,
            }],
            similarity,
            length_ratio: similarity,
            refusal_rate: 0.0,
            drifted: similarity.is_some_and(|s| s < 0.5),
        }
    }

    #[sqlx::test]
    async fn runs_keep_their_baseline_and_answers(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        store.drift_insert(&run("m", 10.0, None)).await.unwrap();
        store
            .drift_insert(&run("m", 20.0, Some(0.2)))
            .await
            .unwrap();
        store.drift_insert(&run("n", 15.0, None)).await.unwrap();
        let base = store.drift_baseline("m").await.unwrap().unwrap();
        assert_eq!((base.ran_at, base.answers[0].tokens), (10.0, 3));
        let runs = store.drift_runs(Some("m"), 0.0).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert!(runs[1].drifted && !runs[0].drifted);
        let mut last = store.drift_last_runs().await.unwrap();
        last.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(last, [("m".to_string(), 20.0), ("n".to_string(), 15.0)]);
        assert_eq!(store.drift_forget("m").await.unwrap(), 2);
        assert!(store.drift_baseline("m").await.unwrap().is_none());
    }

    #[sqlx::test]
    async fn answer_points_and_centroids(pool: sqlx::SqlitePool) {
        let store = Store::from_pool(pool);
        for (i, s) in ["a", "b", "a", "a"].iter().enumerate() {
            let p = AnswerPoint {
                session: s.to_string(),
                model: "m".into(),
                at: i as f64,
                tokens: i as u64,
                similarity: Some(0.5),
            };
            store.answer_point_insert(&p).await.unwrap();
        }
        let a = store.answer_points(Some("a"), 0.0, 2).await.unwrap();
        assert_eq!(a.iter().map(|p| p.tokens).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(store.answer_points(None, 1.0, 10).await.unwrap().len(), 3);
        assert!(store.centroid_get("a").await.unwrap().is_none());
        store.centroid_put("a", &[1.0, 2.0], 3).await.unwrap();
        store.centroid_put("a", &[3.0, 2.0], 4).await.unwrap();
        assert_eq!(
            store.centroid_get("a").await.unwrap(),
            Some((vec![3.0, 2.0], 4))
        );
    }
}
