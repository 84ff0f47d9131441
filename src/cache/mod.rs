//! Caches in front of the engine: embeddings (memory over SQLite), whole responses to
//! deterministic requests, and answers to questions that mean the same (the semantic cache).

pub mod embeddings;
pub mod lru;
pub mod responses;
pub mod semantic;

pub use embeddings::EmbeddingCache;
pub use responses::ResponseCache;
pub use semantic::SemanticCache;

use std::sync::Arc;

/// The server's caches; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub embeddings: Arc<EmbeddingCache>,
    pub responses: Arc<ResponseCache>,
    pub semantic: Arc<SemanticCache>,
}
