//! The engine thread of one loaded model: the continuous-batching step loop.
//!
//! Each step: take new requests (reusing cached prompt prefixes), drop the ones whose client
//! went away, let the [`Planner`] pick decode tokens and prefill chunks, run one forward pass
//! over the flattened batch, sample every sequence that is due with its own settings, and send
//! the tokens out at once. Finished sequences leave their KV to the prefix cache. The thread
//! ends, dropping the model, when every handle is gone and nothing is left to run.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::batch::{Planner, SeqId, StepPlan};
use super::draft_model::DraftModel;
use super::job::Job;
use super::prefix::PrefixCache;
use super::speculate::Speculation;
use super::status::kv_budget;
pub use super::status::{EngineConfig, EngineStatus};
use super::thinking_budget::Budget;
use super::{GenEvent, KeepAlive, Usage};
use crate::engine::constrain::{Constraint, Mask};
use crate::engine::generate::FinishReason;
use crate::engine::kv::KvCache;
use crate::engine::kv_rows::KvType;
use crate::engine::models::SeqInput;
use crate::engine::sampler::Sampler;
use crate::engine::stops::{StopStrings, StreamDecoder};
use crate::engine::ChatModel;

mod drafting;

/// What the engine thread publishes to its handles.
pub(crate) struct Shared {
    /// Scheduled and not yet finished: running plus waiting.
    pub in_flight: AtomicUsize,
    pub status: Mutex<EngineStatus>,
}

/// One request inside the engine.
struct Sequence {
    /// Prompt, then every generated token (the last one is fed in the next step).
    tokens: Vec<u32>,
    prompt_len: usize,
    cached_tokens: usize,
    max_tokens: usize,
    sampler: Sampler,
    decoder: StreamDecoder,
    stops: StopStrings,
    cache: KvCache,
    events: UnboundedSender<GenEvent>,
    /// The grammar its output follows, if it asked for one.
    constraint: Option<Constraint>,
    /// Prompt lookup's record for it; None when it does not look up (a grammar, or turned off).
    lookup: Option<Speculation>,
    /// The draft model's cache and record for it; None without a draft model or with a grammar.
    drafting: Option<drafting::ModelDrafts>,
    /// Its thinking budget, when the request set one.
    budget: Option<Budget>,
    /// While a draft is checked: the cache rows that stood (the rest hold drafted tokens).
    checked_rows: Option<usize>,
    keep_alive: Option<KeepAlive>,
    /// The request's trace span, parent of its `prefill_chunk` spans.
    trace: tracing::Span,
    /// The `queue` span, closed by the first step that includes the sequence.
    queue_span: Option<tracing::Span>,
    queued_at: Instant,
    admitted_at: Option<Instant>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
    /// Seconds between each token and the next (the inter-token latency histogram).
    inter_token: Vec<f32>,
    completion_tokens: usize,
}

impl Sequence {
    fn usage(&self, finish_reason: FinishReason) -> Usage {
        let now = Instant::now();
        let admitted = self.admitted_at.unwrap_or(now);
        let first = self.first_token_at.unwrap_or(now);
        Usage {
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.completion_tokens,
            finish_reason,
            stop_sequence: self.stops.matched().map(str::to_string),
            queue: admitted - self.queued_at,
            time_to_first_token: first - self.queued_at,
            prefill: first - admitted,
            decode: now - first,
            inter_token: self.inter_token.clone(),
        }
    }
}

/// What sampling a token did to a sequence.
enum Outcome {
    Continue,
    Finished {
        reason: FinishReason,
        stopped_by_string: bool,
    },
}

struct Worker {
    model: Arc<ChatModel>,
    planner: Planner,
    prefix: PrefixCache,
    seqs: HashMap<SeqId, Sequence>,
    next_id: SeqId,
    shared: Arc<Shared>,
    prompt_lookup: bool,
    /// The smaller model that drafts tokens for this one (`--draft`).
    draft: Option<DraftModel>,
    kv_type: KvType,
}

/// The thread's body: serve until every handle is dropped and nothing is left to run.
pub(crate) fn run(
    model: Arc<ChatModel>,
    draft: Option<DraftModel>,
    config: EngineConfig,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
) {
    let mut budgets = config.budgets;
    budgets.kv_tokens = kv_budget(&config, &model);
    let mut worker = Worker {
        planner: Planner::new(budgets),
        prefix: PrefixCache::new(config.prefix_cache_memory),
        seqs: HashMap::new(),
        next_id: 0,
        shared: shared.clone(),
        prompt_lookup: config.prompt_lookup,
        draft,
        kv_type: config.kv_type,
        model,
    };
    // A panic in a step must not leave handles believing the engine runs.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        worker.serve(&jobs);
    }));
    if outcome.is_err() {
        tracing::error!("the engine thread panicked; its requests fail");
        for (_, seq) in worker.seqs.drain() {
            let _ = seq
                .events
                .send(GenEvent::Failed("the engine stopped".into()));
        }
    }
    worker.prefix.clear();
    let mut status = shared.status.lock().unwrap_or_else(|e| e.into_inner());
    status.stopped = true;
    status.running = 0;
    status.waiting = 0;
}

impl Worker {
    fn serve(&mut self, jobs: &Receiver<Job>) {
        loop {
            if self.planner.is_idle() {
                self.publish();
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            loop {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty) => break,
                    // Handles are gone, but the running sequences still have listeners.
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.drop_cancelled();
            if !self.planner.is_idle() {
                self.step();
            }
            self.publish();
        }
    }

    /// Take a request in: look up its prompt's prefix, then queue it with the planner. Work
    /// that needs the model to itself runs now, between two steps.
    fn admit(&mut self, job: Job) {
        let job = match job {
            Job::Generate(job) => *job,
            Job::Exclusive(work) => return work(&self.model),
        };
        let request = job.request;
        let info = &self.model.transformer.info;
        let reserve = (request.prompt.len() + request.max_tokens).min(info.context_length);
        let lookup = if request.cache_prompt {
            self.prefix.lookup(&request.prompt, reserve)
        } else {
            Ok(None)
        };
        let (cache, cached_tokens) = match lookup {
            Ok(Some(hit)) => (hit.cache, hit.tokens),
            Ok(None) => (self.model.transformer.new_cache_of(self.kv_type), 0),
            Err(e) => {
                tracing::warn!(error = %e, "prefix cache copy failed; computing the prompt");
                (self.model.transformer.new_cache_of(self.kv_type), 0)
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.planner.add(id, request.prompt.len(), cached_tokens);
        let tokenizer = self.model.tokenizer.tokenizer.clone();
        let free = request.constraint.is_none() && request.thinking_budget.is_none();
        self.seqs.insert(
            id,
            Sequence {
                prompt_len: request.prompt.len(),
                tokens: request.prompt,
                cached_tokens,
                max_tokens: request.max_tokens,
                sampler: Sampler::new(request.sampling),
                decoder: StreamDecoder::new(tokenizer),
                stops: StopStrings::new(request.stop),
                cache,
                events: job.events,
                // Drafts are for free-running text: not under a grammar or a thinking budget.
                lookup: (self.prompt_lookup && free).then(Speculation::default),
                drafting: self
                    .draft
                    .as_ref()
                    .filter(|_| free)
                    .map(drafting::ModelDrafts::new),
                budget: request.thinking_budget.map(Budget::new),
                checked_rows: None,
                constraint: request.constraint,
                keep_alive: request.keep_alive,
                trace: job.trace,
                queue_span: Some(job.queue),
                queued_at: job.queued_at,
                admitted_at: None,
                first_token_at: None,
                last_token_at: None,
                inter_token: Vec::new(),
                completion_tokens: 0,
            },
        );
    }

    /// Sequences whose stream was dropped leave now; their KV is freed.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.planner.remove(id);
            self.seqs.remove(&id);
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.with_status(|s| s.cancelled += 1);
        }
    }

    fn step(&mut self) {
        let plan = self.planner.plan();
        for id in &plan.preempted {
            if let Some(seq) = self.seqs.get_mut(id) {
                seq.cache = self.model.transformer.new_cache_of(self.kv_type);
                if let (Some(d), Some(draft)) = (seq.drafting.as_mut(), self.draft.as_ref()) {
                    d.forget(draft);
                }
            }
        }
        if plan.is_empty() {
            return;
        }
        let now = Instant::now();
        // Each prompt chunk this step feeds is a span of its request, open until the step ends.
        let mut chunks = Vec::new();
        for w in &plan.work {
            let seq = self.seqs.get_mut(&w.id).expect("planned sequences exist");
            seq.admitted_at.get_or_insert(now);
            seq.queue_span = None;
            if w.start < seq.prompt_len {
                let (from, tokens) = (w.start as i64, w.tokens as i64);
                chunks.push(tracing::info_span!(parent: &seq.trace, "prefill_chunk", from, tokens));
            }
        }
        let drafts = self.drafts(&plan);
        // Grammar masks depend only on tokens already accepted: they are computed on another
        // thread while this one runs the forward pass.
        let mut constrained: Vec<(SeqId, Constraint)> = plan
            .work
            .iter()
            .filter(|w| w.samples)
            .filter_map(|w| {
                let seq = self.seqs.get_mut(&w.id)?;
                Some((w.id, seq.constraint.take()?))
            })
            .collect();
        let (forward, masks) = std::thread::scope(|scope| {
            let masks = (!constrained.is_empty()).then(|| {
                scope.spawn(|| {
                    use rayon::prelude::*;
                    constrained
                        .par_iter_mut()
                        .map(|(id, c)| (*id, c.allowed()))
                        .collect::<HashMap<SeqId, Result<Mask, String>>>()
                })
            });
            let forward = self.forward(&plan, &drafts);
            let masks = masks
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default();
            (forward, masks)
        });
        let mut masks = masks;
        for (id, c) in constrained {
            if let Some(seq) = self.seqs.get_mut(&id) {
                seq.constraint = Some(c);
            }
        }
        match forward {
            Ok(mut logits) => {
                self.planner.commit(&plan);
                let mut row = 0;
                for w in &plan.work {
                    let draft = drafts.get(&w.id);
                    let rows = 1 + draft.map_or(0, |d| d.tokens.len());
                    match draft {
                        Some(draft) => self.verify(w, draft, &mut logits[row..row + rows]),
                        None if w.samples => {
                            let mask = masks.remove(&w.id);
                            self.sample(w.id, &mut logits[row], mask);
                        }
                        None => {}
                    }
                    row += rows;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                for w in &plan.work {
                    self.planner.remove(w.id);
                    if let Some(seq) = self.seqs.remove(&w.id) {
                        let _ = seq.events.send(GenEvent::Failed(e.to_string()));
                        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                self.with_status(|s| s.failed += plan.work.len() as u64);
            }
        }
        self.with_status(|s| s.steps += 1);
        drop(chunks);
    }

    /// One forward pass over the plan: one row of logits per planned sequence, and one more per
    /// drafted token.
    fn forward(
        &mut self,
        plan: &StepPlan,
        drafts: &HashMap<SeqId, drafting::Draft>,
    ) -> Result<Vec<Vec<f32>>, crate::engine::models::ModelError> {
        let fed: Vec<Vec<u32>> = plan
            .work
            .iter()
            .map(|w| {
                let tokens = &self.seqs[&w.id].tokens[w.start..w.start + w.tokens];
                let draft = drafts.get(&w.id).map_or(&[][..], |d| d.tokens.as_slice());
                [tokens, draft].concat()
            })
            .collect();
        // Caches move out for the pass (the batch needs them all mutably at once) and back in.
        let mut caches: Vec<KvCache> = plan
            .work
            .iter()
            .map(|w| {
                let seq = self.seqs.get_mut(&w.id).expect("planned sequences exist");
                std::mem::replace(&mut seq.cache, KvCache::new(0))
            })
            .collect();
        let result = {
            let mut inputs: Vec<SeqInput> = plan
                .work
                .iter()
                .zip(caches.iter_mut())
                .zip(&fed)
                .map(|((w, cache), tokens)| SeqInput {
                    tokens,
                    cache,
                    all_logits: drafts.contains_key(&w.id),
                })
                .collect();
            self.model.transformer.forward(&mut inputs)
        };
        for (w, cache) in plan.work.iter().zip(caches) {
            self.seqs.get_mut(&w.id).expect("still there").cache = cache;
        }
        Ok(result?.to_vec2::<f32>()?)
    }

    /// Sample a sequence's next token and send it out; finish the sequence if it is done.
    /// `mask`: what its grammar allows at this step, when it has one. The token, if the
    /// sequence goes on.
    fn sample(
        &mut self,
        id: SeqId,
        logits: &mut [f32],
        mask: Option<Result<Mask, String>>,
    ) -> Option<u32> {
        let stop_ids = &self.model.tokenizer.special.stop_ids;
        let limit = self.model.transformer.info.context_length;
        let seq = self.seqs.get_mut(&id).expect("sampled sequences exist");
        match mask {
            Some(Ok(mask)) if mask.count() > 0 => mask.apply(logits),
            Some(Ok(_)) => {
                self.fail(id, "the grammar allows no token here".into());
                return None;
            }
            Some(Err(e)) => {
                self.fail(id, format!("grammar: {e}"));
                return None;
            }
            None => {}
        }
        let now = Instant::now();
        seq.first_token_at.get_or_insert(now);
        if let Some(last) = seq.last_token_at.replace(now) {
            seq.inter_token.push((now - last).as_secs_f32());
        }
        let sampled = match seq.budget.as_mut().and_then(Budget::forced) {
            Some(token) => crate::engine::sampler::Sampled {
                token,
                logprob: None,
                top: Vec::new(),
            },
            None => seq.sampler.sample(logits, &seq.tokens),
        };
        let grammar_done = match seq.constraint.as_mut().map(|c| {
            c.accept(sampled.token)
                .map(|()| c.is_finished() || stop_ids.contains(&sampled.token))
        }) {
            Some(Err(e)) => {
                self.fail(id, format!("grammar: {e}"));
                return None;
            }
            Some(Ok(done)) => done,
            None => false,
        };
        seq.completion_tokens += 1;
        let _ = seq.events.send(GenEvent::Token {
            id: sampled.token,
            logprob: sampled.logprob,
            top: sampled.top,
        });
        let outcome = 'decide: {
            if stop_ids.contains(&sampled.token) {
                break 'decide Outcome::Finished {
                    reason: FinishReason::Stop,
                    stopped_by_string: false,
                };
            }
            seq.tokens.push(sampled.token);
            let text = seq.decoder.push(sampled.token);
            if let Some(b) = seq.budget.as_mut() {
                b.saw_text(text.as_deref().unwrap_or_default());
                b.saw_token();
            }
            if let Some(text) = text {
                let check = seq.stops.push(&text);
                if !check.emit.is_empty() {
                    let _ = seq.events.send(GenEvent::Text(check.emit));
                }
                if check.stopped {
                    break 'decide Outcome::Finished {
                        reason: FinishReason::Stop,
                        stopped_by_string: true,
                    };
                }
            }
            // The grammar is complete and allows nothing more: the answer is whole.
            if grammar_done {
                break 'decide Outcome::Finished {
                    reason: FinishReason::Stop,
                    stopped_by_string: false,
                };
            }
            if seq.completion_tokens >= seq.max_tokens || seq.tokens.len() >= limit {
                break 'decide Outcome::Finished {
                    reason: FinishReason::Length,
                    stopped_by_string: false,
                };
            }
            Outcome::Continue
        };
        match outcome {
            Outcome::Continue => Some(sampled.token),
            Outcome::Finished {
                reason,
                stopped_by_string,
            } => {
                self.finish(id, reason, stopped_by_string);
                None
            }
        }
    }

    /// End one sequence with an error its client sees.
    fn fail(&mut self, id: SeqId, message: String) {
        self.planner.remove(id);
        if let Some(seq) = self.seqs.remove(&id) {
            tracing::warn!(error = %message, "a sequence failed");
            let _ = seq.events.send(GenEvent::Failed(message));
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.with_status(|s| s.failed += 1);
        }
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason, stopped_by_string: bool) {
        self.planner.remove(id);
        let Some(mut seq) = self.seqs.remove(&id) else {
            return;
        };
        if !stopped_by_string {
            let rest = seq.decoder.finish();
            let tail = seq.stops.push(&rest);
            let mut text = tail.emit;
            if !tail.stopped {
                text.push_str(&seq.stops.flush());
            }
            if !text.is_empty() {
                let _ = seq.events.send(GenEvent::Text(text));
            }
        }
        let usage = seq.usage(reason);
        let generated = seq.completion_tokens as u64;
        let keep_alive = seq.keep_alive;
        let events = seq.events.clone();
        // Its KV stays useful to the next turn of the same chat.
        let computed = seq.cache.len().min(seq.checked_rows.unwrap_or(usize::MAX));
        seq.cache.truncate(computed);
        seq.tokens.truncate(computed);
        self.prefix.insert(seq.tokens, seq.cache);
        // The books are closed before the client hears `Done`: what it reads next in
        // `/api/engine` already counts this request.
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.with_status(|s| {
            s.completed += 1;
            s.generated_tokens += generated;
            s.requested_keep_alive = keep_alive;
        });
        self.publish();
        let _ = events.send(GenEvent::Done(usage));
    }

    fn with_status(&self, f: impl FnOnce(&mut super::EngineStatus)) {
        f(&mut self.shared.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Publish the live figures for `/api/engine` and the keep-alive reaper.
    fn publish(&self) {
        let kv_bytes = self.seqs.values().map(|s| s.cache.bytes()).sum::<usize>()
            + self
                .seqs
                .values()
                .filter_map(|s| s.drafting.as_ref())
                .map(drafting::ModelDrafts::bytes)
                .sum::<usize>();
        let idle = self.planner.is_idle();
        self.with_status(|s| {
            s.running = self.planner.running();
            s.waiting = self.planner.waiting();
            s.kv_tokens = self.planner.kv_used();
            s.kv_bytes = kv_bytes;
            s.prefix_cache = self.prefix.stats();
            s.preemptions = self.planner.preemptions();
            s.idle_since = match (idle, s.idle_since) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(Instant::now()),
                (false, _) => None,
            };
        });
    }
}
