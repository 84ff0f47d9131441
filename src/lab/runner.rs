//! An experiment's run: every prompt on every variant not yet done (the reference first, so each
//! output is compared with it), rows stored as they finish so a stopped run resumes where it
//! was. The answers come from the inference path, which the server hands in as a [`Generator`],
//! and rows go to the database through [`Rows`] (the lab sits below both).

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Value};

use super::experiments::{cosine, summarize, ExperimentSpec, Row, Variant, Vote};
use crate::jobs::JobHandle;
use crate::scheduler::embedder::Embedders;
use crate::scheduler::Usage;

/// A boxed future, as a trait object's method returns one.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Generates one answer for a run: the variant's model and settings on `prompt`, telling
/// `partial` the text so far.
pub trait Generator: Send + Sync {
    fn generate<'a>(
        &'a self,
        variant: &'a Variant,
        prompt: &'a str,
        max_tokens: usize,
        partial: &'a mut (dyn FnMut(&str) + Send),
    ) -> Pending<'a, Result<(String, Usage), String>>;
}

/// Where an experiment's rows and votes are kept.
pub trait Rows: Send + Sync {
    fn rows(&self, experiment: i64) -> Pending<'_, Result<Vec<Row>, String>>;
    fn put<'a>(&'a self, experiment: i64, row: &'a Row) -> Pending<'a, Result<(), String>>;
    fn votes(&self, experiment: i64) -> Pending<'_, Result<Vec<Vote>, String>>;
}

/// The experiment a run is for.
pub struct Experiment<'a> {
    pub id: i64,
    pub name: &'a str,
    pub spec: &'a ExperimentSpec,
}

/// Texts to MiniLM vectors by the embedding model directly (no cache: these texts rarely repeat).
pub async fn embed(embedders: &Embedders, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
    let embedder = embedders
        .get("all-minilm")
        .await
        .map_err(|e| e.to_string())?;
    let ids = texts
        .iter()
        .map(|t| embedder.model.tokenize(t, true).map(|t| t.ids))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    embedder.embed(ids).await.map_err(|e| e.to_string())
}

/// What a run needs: answers, embeddings for similarity, the database.
pub struct Lab<'a> {
    pub generator: &'a dyn Generator,
    pub embedders: &'a Embedders,
    pub db: &'a dyn Rows,
}

impl Lab<'_> {
    /// Run `e` as the job `job`: its summary when every row is done.
    pub async fn run(&self, e: &Experiment<'_>, job: &JobHandle) -> Result<Value, String> {
        let (db, spec) = (self.db, e.spec);
        let prompts = spec.prompt_list();
        let done: Vec<Row> = db.rows(e.id).await?;
        let mut variants: Vec<&Variant> = spec.variants.iter().collect();
        variants.sort_by_key(|v| v.name != spec.reference());
        let total = prompts.len() * variants.len();
        let mut finished = done.len();
        for (i, prompt) in prompts.iter().enumerate() {
            // The reference output's embedding, computed when first needed.
            let mut reference: Option<Vec<f32>> = None;
            for v in &variants {
                if done
                    .iter()
                    .any(|r| r.prompt_index == i && r.variant == v.name)
                {
                    continue;
                }
                if job.cancelled() {
                    return Err("cancelled".to_string());
                }
                job.progress(
                    finished as f64 / total as f64,
                    &format!("prompt {} · {}", i + 1, v.name),
                );
                let mut partial = |text: &str| {
                    job.live(Some(
                        json!({"prompt_index": i, "variant": v.name, "text": text}),
                    ))
                };
                let (output, usage) = self
                    .generator
                    .generate(v, prompt, spec.max_tokens, &mut partial)
                    .await?;
                // Similarity to the reference's output for this prompt (1 for the reference).
                if reference.is_none() {
                    let text = if v.name == spec.reference() {
                        Some(output.clone())
                    } else {
                        db.rows(e.id)
                            .await?
                            .into_iter()
                            .find(|r| r.prompt_index == i && r.variant == spec.reference())
                            .map(|r| r.output)
                    };
                    if let Some(text) = text {
                        reference = embed(self.embedders, &[&text]).await?.pop();
                    }
                }
                let similarity = match &reference {
                    Some(r) => Some(cosine(r, &embed(self.embedders, &[&output]).await?[0])),
                    None => None,
                };
                db.put(e.id, &row(i, v, output, &usage, similarity)).await?;
                finished += 1;
            }
        }
        let rows = db.rows(e.id).await?;
        let votes = db.votes(e.id).await?;
        job.live(None);
        Ok(
            json!({"experiment": e.name, "rows": rows.len(), "summary": summarize(spec, &rows, &votes)}),
        )
    }
}

/// One finished answer as the row stored for it.
fn row(i: usize, v: &Variant, output: String, usage: &Usage, similarity: Option<f64>) -> Row {
    let decode = usage.decode.as_secs_f64();
    Row {
        prompt_index: i,
        variant: v.name.clone(),
        output,
        ttft_ms: usage.time_to_first_token.as_secs_f64() * 1e3,
        tokens_per_second: (usage.completion_tokens > 1 && decode > 0.0)
            .then(|| (usage.completion_tokens - 1) as f64 / decode),
        prompt_tokens: usage.prompt_tokens as u64,
        completion_tokens: usage.completion_tokens as u64,
        similarity,
    }
}
