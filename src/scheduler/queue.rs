//! Admission: the handle that handlers hold for one loaded model. Scheduling never blocks: a
//! request either joins the engine's queue or is refused at once (429 when the running set and
//! the wait queue are both full).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;

use super::draft_model::DraftModel;
use super::job::{Generate, Job};
use super::worker::{self, EngineConfig, EngineStatus, Shared};
use super::{GenEvent, ValidatedRequest};
use crate::engine::models::ModelInfo;
use crate::engine::tokenizer::GgufTokenizer;
use crate::engine::ChatModel;

/// Why a request could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The engine thread is gone (it panicked or the model was unloaded).
    #[error("the engine is not running")]
    EngineStopped,
    /// Every sequence slot and every place in the queue is taken.
    #[error("the queue is full ({0} requests running or waiting)")]
    QueueFull(usize),
}

/// A cheap, cloneable handle to one model's engine thread. The thread ends (and the model
/// leaves memory) once every handle is dropped and its last sequence finished.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<Shared>,
    capacity: usize,
    pub model_id: Arc<str>,
    /// Unix time the model was loaded (OpenAI's `created`).
    pub created: u64,
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<GgufTokenizer>,
    pub model: Arc<ChatModel>,
    /// sha256 of the GGUF file when the loader computed it (responses cached for these weights).
    pub weights_sha256: Option<Arc<str>>,
}

impl EngineHandle {
    /// Start the engine thread for a loaded (and warmed) model.
    pub fn start(model_id: &str, model: ChatModel, config: EngineConfig) -> Self {
        Self::start_with_draft(model_id, model, None, config)
    }

    /// Start the engine thread for a model and the draft model that speeds up its decoding.
    pub fn start_with_draft(
        model_id: &str,
        model: impl Into<Arc<ChatModel>>,
        draft: Option<DraftModel>,
        config: EngineConfig,
    ) -> Self {
        let model = model.into();
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let capacity = config.budgets.max_seqs + config.max_waiting;
        let shared = Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            status: Mutex::new(EngineStatus::new(
                &config,
                &model,
                draft.as_ref().map(|d| d.name.as_str()),
            )),
        });
        let worker_model = model.clone();
        let worker_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("engine-{model_id}"))
            .spawn(move || worker::run(worker_model, draft, config, rx, worker_shared))
            .expect("the engine thread starts");
        Self {
            jobs,
            shared,
            capacity,
            model_id: model_id.into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            info: Arc::new(model.transformer.info.clone()),
            tokenizer: Arc::new(model.tokenizer.clone()),
            model,
            weights_sha256: None,
        }
    }

    /// Queue a request; its events arrive on the returned stream. Dropping the stream cancels
    /// the request.
    pub fn schedule(
        &self,
        request: ValidatedRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>, ScheduleError> {
        let before = self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ScheduleError::QueueFull(self.capacity));
        }
        // Unbounded: the engine never waits on a slow reader; a request's events are bounded
        // by its max_tokens.
        let (events, rx) = mpsc::unbounded_channel();
        let queue = tracing::info_span!("queue", prompt_tokens = request.prompt.len() as i64);
        let job = Job::Generate(Box::new(Generate {
            request,
            events,
            queued_at: Instant::now(),
            trace: tracing::Span::current(),
            queue,
        }));
        self.jobs.send(job).map_err(|_| {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            ScheduleError::EngineStopped
        })?;
        Ok(rx)
    }

    /// Run `work` on the engine thread with the model, between two steps, and wait for its
    /// result: the way anything besides generation (prompt-compression scoring) uses a loaded
    /// model, queued with the requests rather than beside them.
    pub async fn exclusive<R: Send + 'static>(
        &self,
        work: impl FnOnce(&ChatModel) -> R + Send + 'static,
    ) -> Result<R, ScheduleError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Job::Exclusive(Box::new(move |model: &ChatModel| {
            let _ = tx.send(work(model));
        }));
        self.jobs
            .send(job)
            .map_err(|_| ScheduleError::EngineStopped)?;
        rx.await.map_err(|_| ScheduleError::EngineStopped)
    }

    /// A request answered without the engine (from the response cache) still uses the model:
    /// its keep-alive takes effect and the idle clock restarts, as if the engine had run it.
    pub fn served_without_engine(&self, keep_alive: Option<super::KeepAlive>) {
        let mut s = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        s.requested_keep_alive = keep_alive;
        if s.idle_since.is_some() {
            s.idle_since = Some(std::time::Instant::now());
        }
    }

    /// Scheduled requests not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// A snapshot of the engine's figures (updated every step).
    /// How this engine's KV cache stores rows on the CPU.
    pub fn kv_type(&self) -> crate::engine::kv_rows::KvType {
        self.status().kv_type
    }

    pub fn status(&self) -> EngineStatus {
        self.shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The engine thread has ended (it only does on a panic while handles exist).
    pub fn is_stopped(&self) -> bool {
        self.status().stopped
    }
}
