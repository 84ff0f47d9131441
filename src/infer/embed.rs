//! Texts to MiniLM vectors through the embedding cache, for the path's own comparisons: `auto`'s
//! examples, the semantic cache's questions, the drift probes' answers.

use std::sync::Arc;

use super::plan::Infer;
use crate::store::embeddings::ModelKey;

/// The embedding model the path compares texts with unless settings name another.
pub const DEFAULT_EMBEDDER: &str = "all-minilm";

/// Vectors of texts, and which weights made them (vectors of other weights do not compare).
pub struct Embedded {
    pub vectors: Vec<Arc<[f32]>>,
    /// `MODEL@SHA256` of the embedding model.
    pub by: String,
}

impl Infer {
    /// Each text's vector by the embedding model `name` (truncated to what it reads).
    pub async fn embed_texts(&self, name: &str, texts: &[&str]) -> Result<Embedded, String> {
        let embedder = self.embedders.get(name).await.map_err(|e| e.to_string())?;
        let model = embedder.model.clone();
        let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        // Tokenizing is real work: off the async threads.
        let ids = tokio::task::spawn_blocking(move || {
            owned
                .iter()
                .map(|t| model.tokenize(t, true).map(|t| t.ids))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let key = ModelKey {
            model: embedder.id.clone(),
            weights_sha256: embedder.weights_sha256.clone(),
        };
        let (vectors, _) = self
            .embeddings
            .get_or_compute(&key, &ids, |missing| embedder.embed(missing))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Embedded {
            vectors,
            by: format!("{}@{}", embedder.id, embedder.weights_sha256),
        })
    }
}
