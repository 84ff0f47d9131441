//! One sequence from prompt to finish: chunked prefill, decode, sampling, stop ids and strings,
//! streaming text out as it becomes whole, and the figures of the run. The CLI's `run` uses it;
//! the server's scheduler batches many sequences over the same pieces.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::models::{ModelError, SeqInput};
use super::sampler::{Sampled, Sampler, SamplingParams};
use super::stops::{StopStrings, StreamDecoder};
use super::ChatModel;

/// Prompt tokens per forward pass during prefill: bounds the attention scratch memory.
pub const PREFILL_CHUNK: usize = 512;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The caller went away; nothing more was sent.
    Cancelled,
}

/// The figures of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
    pub finish_reason: FinishReason,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Tokens after the first, over the time after the first (the first comes from prefill).
    pub fn generation_tokens_per_second(&self) -> f64 {
        self.completion_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Events a caller sees while a sequence runs.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A piece of text, whole characters only, never part of a stop string.
    Text(&'a str),
    /// A sampled token with its log-probabilities.
    Token(&'a Sampled),
}

/// Run one sequence to its end, calling `on_event` as text becomes available.
pub fn generate(
    model: &ChatModel,
    request: &GenerateRequest,
    on_event: impl FnMut(Event),
) -> Result<GenerationStats, ModelError> {
    generate_until(model, request, on_event, || false)
}

/// `generate`, stopping early (finish reason `Cancelled`) once `cancelled` says so; it is asked
/// before every forward pass, so a dropped client frees the engine within one step.
pub fn generate_until(
    model: &ChatModel,
    request: &GenerateRequest,
    mut on_event: impl FnMut(Event),
    cancelled: impl Fn() -> bool,
) -> Result<GenerationStats, ModelError> {
    let t = &model.transformer;
    let mut cache = t.new_cache();
    let mut sampler = Sampler::new(request.sampling.clone());
    let mut decoder = StreamDecoder::new(model.tokenizer.tokenizer.clone());
    let mut stops = StopStrings::new(request.stop.clone());
    let stop_ids = &model.tokenizer.special.stop_ids;
    let mut context = request.prompt.clone();
    let limit = t.info.context_length;
    if request.prompt.is_empty() {
        return Err(ModelError::Inconsistent("empty prompt".into()));
    }
    if request.prompt.len() >= limit {
        return Err(ModelError::ContextExceeded {
            needed: request.prompt.len() + 1,
            limit,
        });
    }

    let start = Instant::now();
    let mut logits = None;
    for chunk in request.prompt.chunks(PREFILL_CHUNK) {
        if cancelled() {
            return Ok(GenerationStats {
                prompt_tokens: request.prompt.len(),
                completion_tokens: 0,
                prefill: start.elapsed(),
                decode: Duration::ZERO,
                finish_reason: FinishReason::Cancelled,
            });
        }
        logits = Some(t.forward(&mut [SeqInput {
            tokens: chunk,
            cache: &mut cache,
            all_logits: false,
        }])?);
    }
    let prefill = start.elapsed();
    let mut logits = logits
        .expect("prompt is not empty")
        .squeeze(0)?
        .to_vec1::<f32>()?;

    let decode_start = Instant::now();
    let mut completion_tokens = 0;
    let mut stopped_by_string = false;
    let finish_reason = loop {
        let sampled = sampler.sample(&logits, &context);
        completion_tokens += 1;
        on_event(Event::Token(&sampled));
        if stop_ids.contains(&sampled.token) {
            break FinishReason::Stop;
        }
        context.push(sampled.token);
        if let Some(text) = decoder.push(sampled.token) {
            let check = stops.push(&text);
            if !check.emit.is_empty() {
                on_event(Event::Text(&check.emit));
            }
            if check.stopped {
                stopped_by_string = true;
                break FinishReason::Stop;
            }
        }
        if completion_tokens >= request.max_tokens || cache.len() + 1 >= limit {
            break FinishReason::Length;
        }
        if cancelled() {
            break FinishReason::Cancelled;
        }
        logits = t
            .forward(&mut [SeqInput {
                tokens: &[sampled.token],
                cache: &mut cache,
                all_logits: false,
            }])?
            .squeeze(0)?
            .to_vec1::<f32>()?;
    };
    if !stopped_by_string && finish_reason != FinishReason::Cancelled {
        let rest = decoder.finish();
        let tail = stops.push(&rest);
        let mut text = tail.emit;
        if !tail.stopped {
            text.push_str(&stops.flush());
        }
        if !text.is_empty() {
            on_event(Event::Text(&text));
        }
    }
    Ok(GenerationStats {
        prompt_tokens: request.prompt.len(),
        completion_tokens,
        prefill,
        decode: decode_start.elapsed(),
        finish_reason,
    })
}

/// A short prefill and decode on load, so the first real request pays no first-touch cost
/// (page faults on the weights, scratch buffers, the thread pool's start).
pub fn warm_up(model: &ChatModel) -> Result<Duration, ModelError> {
    let start = Instant::now();
    let prompt = model
        .prompt_ids("Hello, how are you today? Tell me a story.")
        .map_err(|e| ModelError::Inconsistent(e.to_string()))?;
    let request = GenerateRequest {
        prompt,
        max_tokens: 4,
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
    };
    generate(model, &request, |_| {})?;
    Ok(start.elapsed())
}
