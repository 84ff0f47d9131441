//! The only place where requests meet the engine.
//!
//! Handlers see one narrow door: [`EngineHandle::schedule`] takes a [`ValidatedRequest`] (only
//! validation can make one) and returns a stream of [`GenEvent`]s. Behind it one OS thread owns
//! the model (compute is not async work) and, until continuous batching lands, serves requests
//! one at a time in arrival order. Dropping the stream cancels the request within one step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::generate::{generate_until, Event, FinishReason, GenerateRequest};
use crate::engine::models::ModelInfo;
use crate::engine::sampler::SamplingParams;
use crate::engine::tokenizer::GgufTokenizer;
use crate::engine::ChatModel;

/// A request that passed validation: token ids within the context, sane sampling settings.
#[derive(Debug, Clone)]
pub struct ValidatedRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

impl ValidatedRequest {
    /// Only the server's validation builds these; the fields are checked there.
    pub fn new(
        prompt: Vec<u32>,
        max_tokens: usize,
        sampling: SamplingParams,
        stop: Vec<String>,
    ) -> Self {
        Self {
            prompt,
            max_tokens,
            sampling,
            stop,
        }
    }
}

/// What a scheduled request produces, in order: tokens and text, then exactly one `Done` or
/// `Failed`.
#[derive(Debug, Clone)]
pub enum GenEvent {
    /// A sampled token with its log-probability and the best alternatives (when asked).
    Token {
        id: u32,
        logprob: f32,
        top: Vec<(u32, f32)>,
    },
    /// Text that became whole (never part of a stop string).
    Text(String),
    Done(Usage),
    Failed(String),
}

/// The figures of one finished request, counted here once.
#[derive(Debug, Clone)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    pub queue: Duration,
    pub time_to_first_token: Duration,
    pub prefill: Duration,
    pub decode: Duration,
}

/// Why a request could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The engine thread is gone (it panicked or the server is shutting down).
    #[error("the engine is not running")]
    EngineStopped,
    /// Too many requests are already waiting.
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
}

struct Job {
    request: ValidatedRequest,
    events: mpsc::Sender<GenEvent>,
    queued_at: Instant,
}

/// A cheap, cloneable handle to one model's engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: std::sync::mpsc::SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    max_waiting: usize,
    pub model_id: Arc<str>,
    /// Unix time the model was loaded (OpenAI's `created`).
    pub created: u64,
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<GgufTokenizer>,
    pub model: Arc<ChatModel>,
}

impl EngineHandle {
    /// Start the engine thread for a loaded model.
    pub fn start(model_id: &str, model: ChatModel, max_waiting: usize) -> Self {
        let model = Arc::new(model);
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(max_waiting.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        let worker_model = model.clone();
        let worker_waiting = waiting.clone();
        let cancelled = Arc::new(AtomicUsize::new(0));
        let worker_cancelled = cancelled.clone();
        std::thread::Builder::new()
            .name(format!("engine-{model_id}"))
            .spawn(move || {
                for job in rx {
                    worker_waiting.fetch_sub(1, Ordering::Relaxed);
                    if run_job(&worker_model, job) == Some(FinishReason::Cancelled) {
                        worker_cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .expect("the engine thread starts");
        Self {
            jobs,
            waiting,
            cancelled,
            max_waiting,
            model_id: model_id.into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            info: Arc::new(model.transformer.info.clone()),
            tokenizer: Arc::new(model.tokenizer.clone()),
            model,
        }
    }

    /// Queue a request; its events arrive on the returned stream.
    pub fn schedule(
        &self,
        request: ValidatedRequest,
    ) -> Result<mpsc::Receiver<GenEvent>, ScheduleError> {
        if self.waiting.load(Ordering::Relaxed) >= self.max_waiting {
            return Err(ScheduleError::QueueFull(self.max_waiting));
        }
        let (events, rx) = mpsc::channel(256);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            request,
            events,
            queued_at: Instant::now(),
        };
        self.jobs.try_send(job).map_err(|e| {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    ScheduleError::QueueFull(self.max_waiting)
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => ScheduleError::EngineStopped,
            }
        })?;
        Ok(rx)
    }

    /// Requests waiting for the engine.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests whose client went away before they finished.
    pub fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// Run one request; returns how it finished (None: it failed or nobody was listening).
fn run_job(model: &ChatModel, job: Job) -> Option<FinishReason> {
    if job.events.is_closed() {
        return Some(FinishReason::Cancelled);
    }
    let queue = job.queued_at.elapsed();
    let started = Instant::now();
    let mut first_token: Option<Duration> = None;
    let request = GenerateRequest {
        prompt: job.request.prompt,
        max_tokens: job.request.max_tokens,
        sampling: job.request.sampling,
        stop: job.request.stop,
    };
    let events = &job.events;
    let result = generate_until(
        model,
        &request,
        |event| {
            let message = match event {
                Event::Token(s) => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    GenEvent::Token {
                        id: s.token,
                        logprob: s.logprob,
                        top: s.top.clone(),
                    }
                }
                Event::Text(t) => GenEvent::Text(t.to_string()),
            };
            // A closed stream is noticed by `is_closed` below.
            let _ = events.blocking_send(message);
        },
        || events.is_closed(),
    );
    let finish = result.as_ref().ok().map(|s| s.finish_reason);
    let last = match result {
        Ok(stats) => GenEvent::Done(Usage {
            prompt_tokens: stats.prompt_tokens,
            completion_tokens: stats.completion_tokens,
            finish_reason: stats.finish_reason,
            queue,
            time_to_first_token: first_token.unwrap_or_default(),
            prefill: stats.prefill,
            decode: stats.decode,
        }),
        Err(e) => {
            tracing::error!(error = %e, "generation failed");
            GenEvent::Failed(e.to_string())
        }
    };
    let _ = events.blocking_send(last);
    finish
}
