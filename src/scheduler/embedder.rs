//! Embedding models: one worker thread per loaded model, which batches the texts of every
//! request waiting for it into one call of the model (sorted by length there), so concurrent
//! clients share forward passes instead of queueing behind each other's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use candle_core::Device;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::engine::models::bert::{is_embedding_dir, EmbedError, EmbeddingInfo, EmbeddingModel};
use crate::library::Library;

/// Requests waiting for one model's worker before new ones are turned away.
const QUEUE_REQUESTS: usize = 256;
/// Inputs gathered into one call of the model (it splits them into passes by length).
const INPUTS_PER_CALL: usize = 512;

/// Why an embedding request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error("`{0}` is not an installed embedding model")]
    NotInstalled(String),
    #[error("cannot load embedding model `{model}`: {source}")]
    Load { model: String, source: EmbedError },
    #[error("{0} embedding requests are already waiting")]
    QueueFull(usize),
    #[error("the embedding worker failed: {0}")]
    Failed(String),
}

/// An installed embedding model as `/v1/models` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingModelEntry {
    pub id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub loaded: bool,
}

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// One loaded embedding model and the queue to its worker.
pub struct Embedder {
    pub id: String,
    pub model: Arc<EmbeddingModel>,
    /// sha256 of the weights file: cached vectors belong to these exact weights.
    pub weights_sha256: String,
    queue: SyncSender<Job>,
}

impl Embedder {
    /// Vectors for already tokenized inputs, in order.
    pub async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { inputs, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => EmbedderError::QueueFull(QUEUE_REQUESTS),
                TrySendError::Disconnected(_) => EmbedderError::Failed("worker stopped".into()),
            })?;
        answer
            .await
            .map_err(|_| EmbedderError::Failed("worker stopped".into()))?
            .map_err(EmbedderError::Failed)
    }
}

/// Drain whatever is waiting (up to a bound), run it as one call, answer each request.
fn worker(model: Arc<EmbeddingModel>, queue: Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut count = first.inputs.len();
        let mut jobs = vec![first];
        while count < INPUTS_PER_CALL {
            match queue.try_recv() {
                Ok(job) => {
                    count += job.inputs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A client that has gone away needs no vectors.
        jobs.retain(|j| !j.reply.is_closed());
        let inputs: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|j| j.inputs.iter().map(Vec::as_slice))
            .collect();
        match model.embed(&inputs) {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in jobs {
                    let mine = vectors.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedding pass failed");
                for job in jobs {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// The embedding models of one library, loaded on first use and kept (they are small).
#[derive(Clone)]
pub struct Embedders {
    library: Library,
    device: Device,
    loaded: Arc<Mutex<HashMap<String, Arc<Embedder>>>>,
    /// One load at a time, so two first requests do not load the same model twice.
    loading: Arc<tokio::sync::Mutex<()>>,
}

impl Embedders {
    pub fn new(library: Library, device: Device) -> Self {
        Self {
            library,
            device,
            loaded: Arc::default(),
            loading: Arc::default(),
        }
    }

    fn lookup(&self, id: &str) -> Option<Arc<Embedder>> {
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Every installed embedding model.
    pub fn installed(&self) -> Vec<EmbeddingModelEntry> {
        let mut out: Vec<EmbeddingModelEntry> = self
            .library
            .list()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.path.parent().is_some_and(is_embedding_dir))
            .map(|m| EmbeddingModelEntry {
                loaded: self.lookup(&m.name).is_some(),
                id: m.name,
                path: m.path,
                size_bytes: m.size_bytes,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The worker for `id`, loading the model first if need be.
    pub async fn get(&self, id: &str) -> Result<Arc<Embedder>, EmbedderError> {
        if let Some(e) = self.lookup(id) {
            return Ok(e);
        }
        let _one_load = self.loading.lock().await;
        if let Some(e) = self.lookup(id) {
            return Ok(e);
        }
        let dir = self.library.models_dir().join(id);
        if id.is_empty()
            || id.contains(['/', '\\'])
            || id.starts_with('.')
            || !is_embedding_dir(&dir)
        {
            return Err(EmbedderError::NotInstalled(id.to_string()));
        }
        let device = self.device.clone();
        let started = std::time::Instant::now();
        let (model, weights_sha256) = tokio::task::spawn_blocking(move || {
            let model = EmbeddingModel::load(&dir, &device)?;
            let weights = dir.join("model.safetensors");
            let sha =
                crate::library::pull::sha256_file(&weights).map_err(|e| EmbedError::Read {
                    path: weights,
                    reason: e.to_string(),
                })?;
            Ok((model, sha))
        })
        .await
        .map_err(|e| EmbedderError::Failed(e.to_string()))?
        .map_err(|source| EmbedderError::Load {
            model: id.to_string(),
            source,
        })?;
        tracing::info!(model = id, load = ?started.elapsed(), "embedding model loaded");
        let model = Arc::new(model);
        let (queue, jobs) = sync_channel(QUEUE_REQUESTS);
        let for_worker = model.clone();
        std::thread::Builder::new()
            .name(format!("embed-{id}"))
            .spawn(move || worker(for_worker, jobs))
            .map_err(|e| EmbedderError::Failed(e.to_string()))?;
        let embedder = Arc::new(Embedder {
            id: id.to_string(),
            model,
            weights_sha256,
            queue,
        });
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), embedder.clone());
        Ok(embedder)
    }

    /// What `/api/engine` shows of the loaded embedding models.
    pub fn loaded(&self) -> Vec<(String, EmbeddingInfo)> {
        let map = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .values()
            .map(|e| (e.id.clone(), e.model.info.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
