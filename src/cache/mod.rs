//! Caches in front of the engine: embeddings (memory over SQLite) and, for deterministic
//! requests, whole responses.

pub mod embeddings;
pub mod lru;
pub mod responses;

pub use embeddings::EmbeddingCache;
pub use responses::ResponseCache;

use std::sync::Arc;

/// The server's caches; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub embeddings: Arc<EmbeddingCache>,
    pub responses: Arc<ResponseCache>,
}
