//! `Infer::run`: the one event stream every API renders. Its loop owns what every format needs
//! the same: the request's time limit, the client going away (the engine cancels), text held
//! while it may be a tool call, calls read out of the answer, and the one accounting record.
//! Non-streaming answers are the same events, collected.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::accounting::{finish, Account, CacheHit, Outcome, Totals};
use super::backend::{Backend, Generation};
use super::cache::{recording_if, response_key};
use super::error::InferError;
use super::phase::Phase;
use super::plan::{Admission, Infer, Plan};
use super::reasoning::{Piece, ThinkSplit, Thinking};
use super::tools::CallHold;
use super::validate::Applied;
use crate::engine::generate::FinishReason;
use crate::engine::tools::ToolCall;
use crate::scheduler::{GenEvent, Usage};

/// A generated token's text and log-probability, with the best alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: Option<f32>,
    pub top: Vec<(String, f32)>,
}

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The end of the turn (an end-of-turn token, or a grammar complete).
    Stop,
    /// One of the request's stop strings.
    StopSequence(String),
    /// `max_tokens` or the context window.
    Length,
    /// The answer is tool calls.
    ToolCalls,
}

/// What the one loop sends, in order: each choice's text and then its end, then the end of the
/// whole request; or an error that ends it.
#[derive(Debug)]
pub enum Event {
    /// Reasoning of choice `choice`: a thinking model's `<think>` text, without the tags.
    Reasoning { choice: usize, text: String },
    /// Text of choice `choice` (never held-back call markup, never reasoning), with its tokens
    /// when log-probabilities were asked for.
    Text {
        choice: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// Choice `choice` ended: its calls (when the request gave tools), the tokens not yet sent
    /// with text (those of the calls), why, and its figures.
    Done {
        choice: usize,
        calls: Vec<ToolCall>,
        logprobs: Vec<TokenLogprob>,
        finish: Finish,
        usage: Usage,
    },
    /// Every choice ended; the request is recorded. `usage`: the last choice's figures.
    End {
        totals: Totals,
        usage: Option<Usage>,
    },
    /// The request failed or ran out of time; nothing follows.
    Error(InferError),
}

/// A running request: its events and what rendering them needs.
pub struct Run {
    pub events: mpsc::Receiver<Event>,
    /// The model that serves it.
    pub model: String,
    pub n: usize,
    pub logprobs: bool,
    /// The first choice's prompt tokens, known before any is generated.
    pub prompt_tokens: usize,
    pub compression: Option<Applied>,
    pub admission: Admission,
    /// Time the request waited for its model to load.
    pub load: Duration,
    pub began: Instant,
    /// The target that answered (`X-Lantern-Served-By`): a chain's link, or a remote model.
    pub served_by: Option<String>,
    /// How routing chose it (`X-Lantern-Route`): `auto`'s rule, a chain's failed links.
    pub route: Option<String>,
    /// The response cache that answered (`X-Lantern-Response-Cache`).
    pub cache_hit: Option<CacheHit>,
}

/// One choice, whole.
#[derive(Debug)]
pub struct ChoiceAnswer {
    pub text: String,
    /// A thinking model's reasoning (empty for others).
    pub reasoning: String,
    pub logprobs: Vec<TokenLogprob>,
    pub calls: Vec<ToolCall>,
    pub finish: Finish,
    pub usage: Usage,
}

/// A request's answer, whole: every choice, the totals, the last choice's figures.
#[derive(Debug)]
pub struct Answer {
    pub choices: Vec<ChoiceAnswer>,
    pub totals: Totals,
    pub usage: Option<Usage>,
}

impl Run {
    /// The one answer of a one-choice request (Responses, Ollama, Anthropic), with the totals.
    pub async fn collect_one(&mut self) -> Result<(ChoiceAnswer, Totals), InferError> {
        let answer = self.collect().await?;
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| InferError::internal("the request ended without an answer"))?;
        Ok((choice, answer.totals))
    }

    /// Wait for the whole answer (within the request's time limit, which the loop owns).
    pub async fn collect(&mut self) -> Result<Answer, InferError> {
        let mut texts: Vec<(String, Vec<TokenLogprob>)> = Vec::new();
        let mut reasoning: Vec<String> = Vec::new();
        let mut choices = Vec::new();
        while let Some(event) = self.events.recv().await {
            match event {
                Event::Reasoning { choice, text } => {
                    if reasoning.len() <= choice {
                        reasoning.resize_with(choice + 1, Default::default);
                    }
                    reasoning[choice].push_str(&text);
                }
                Event::Text {
                    choice,
                    text,
                    logprobs,
                } => {
                    if texts.len() <= choice {
                        texts.resize_with(choice + 1, Default::default);
                    }
                    texts[choice].0.push_str(&text);
                    texts[choice].1.extend(logprobs);
                }
                Event::Done {
                    choice,
                    calls,
                    logprobs: rest,
                    finish,
                    usage,
                } => {
                    let (text, mut logprobs) = texts
                        .get_mut(choice)
                        .map(std::mem::take)
                        .unwrap_or_default();
                    logprobs.extend(rest);
                    choices.push(ChoiceAnswer {
                        text,
                        reasoning: reasoning
                            .get_mut(choice)
                            .map(std::mem::take)
                            .unwrap_or_default(),
                        logprobs,
                        calls,
                        finish,
                        usage,
                    });
                }
                Event::End { totals, usage } => {
                    return Ok(Answer {
                        choices,
                        totals,
                        usage,
                    })
                }
                Event::Error(e) => return Err(e),
            }
        }
        Err(InferError::internal("the request ended without an answer"))
    }
}

/// What the loop knows of the request's answers.
pub(super) struct Shape {
    pub n: usize,
    pub logprobs: bool,
    /// Tools whose calls are read out of the text (a local engine's answers).
    pub tools: Option<super::tools::ToolsRequest>,
    pub stops: bool,
    pub from_cache: Option<CacheHit>,
    /// Where a thinking model's answer starts (Off: no reasoning to split out).
    pub thinking: Thinking,
}

/// Where the loop sends, and what it knows of the request.
struct Loop {
    tx: mpsc::Sender<Event>,
    /// Names token ids (a local engine); a remote engine names its tokens itself.
    backend: Option<Arc<dyn Backend>>,
    account: Account,
    shape: Shape,
    /// The first choice's answer so far (cut at the consistency figures' length), when the
    /// monitor measures this session's answers.
    answer: Option<std::sync::Mutex<String>>,
}

impl Infer {
    /// Run a planned request: every choice is scheduled at once (they generate side by side) or
    /// replayed from the response cache. Scheduled before anything is sent: a full queue is an
    /// error here (a 429), not an event.
    pub fn run(&self, plan: Plan) -> Result<Run, InferError> {
        let Plan {
            engine,
            mut validated,
            caller,
            routing,
            load,
            semantic,
        } = plan;
        let began = routing.began;
        let account = Account {
            session: caller.session.clone(),
            rate_key: caller.rate_key.clone(),
            charge: self.charge.clone(),
            monitor: self.monitor.clone(),
            model: engine.model_id.to_string(),
            api: validated.api,
            started: began,
            variant: routing
                .variant
                .clone()
                .or_else(|| engine.model.quantization.clone()),
            compression: validated.compression.as_ref().map(|c| c.label()),
            observer: routing.observer.clone(),
            route: routing.route.clone(),
        };
        let key = response_key(&engine, &validated);
        let requests = std::mem::take(&mut validated.requests);
        let prompt_tokens = requests.first().map_or(0, |r| r.prompt.len());
        let stops = requests.iter().any(|r| !r.stop.is_empty());
        let backend: Arc<dyn Backend> = Arc::new(engine.clone());
        let lookup = tracing::info_span!(
            "cache_lookup",
            hit = tracing::field::Empty,
            similarity = tracing::field::Empty
        )
        .entered();
        let cached = match self.cached(key.as_ref(), &caller) {
            Some(replayed) => Some((replayed, CacheHit::Exact)),
            None => self.semantic_hit(semantic.as_ref(), &caller, prompt_tokens),
        };
        lookup.record("hit", cached.is_some());
        if let Some((_, CacheHit::Semantic { similarity })) = &cached {
            lookup.record("similarity", similarity);
        }
        drop(lookup);
        let (streams, from_cache) = match cached {
            Some((replayed, hit)) => {
                backend.served_without_running(requests.first().and_then(|r| r.keep_alive));
                (replayed, Some(hit))
            }
            None => {
                let scheduled = requests
                    .into_iter()
                    .map(|r| backend.schedule(r))
                    .collect::<Result<Vec<Generation>, InferError>>()?;
                let model = engine.model_id.to_string();
                let keep = self.keep(key, &caller, semantic, model);
                (recording_if(scheduled, keep), None)
            }
        };
        let shape = Shape {
            n: validated.n,
            logprobs: validated.logprobs.is_some(),
            tools: validated.tools.clone(),
            stops,
            from_cache,
            thinking: validated.thinking,
        };
        let events = self.launch(streams, account, shape, Some(backend), caller.timeout);
        Ok(Run {
            events,
            model: engine.model_id.to_string(),
            n: validated.n,
            logprobs: validated.logprobs.is_some(),
            prompt_tokens,
            compression: validated.compression,
            admission: routing.admission,
            load,
            began,
            served_by: None,
            route: routing.route,
            cache_hit: from_cache,
        })
    }

    /// Drive `streams` through the one loop under the request's time limit.
    pub(super) fn launch(
        &self,
        streams: Vec<Generation>,
        account: Account,
        shape: Shape,
        backend: Option<Arc<dyn Backend>>,
        limit: Duration,
    ) -> mpsc::Receiver<Event> {
        let (tx, events) = mpsc::channel(64);
        let measured = account.monitor.measures_answers(&account.session);
        let run = Loop {
            tx,
            backend,
            account,
            shape,
            answer: measured.then(Default::default),
        };
        tokio::spawn(
            run.drive(streams, limit)
                .instrument(tracing::info_span!("generate")),
        );
        events
    }
}

/// The end of a choice's text: what the hold kept, read for calls.
fn read_calls(
    held: Option<String>,
    tools: Option<&super::tools::ToolsRequest>,
) -> (String, Vec<ToolCall>) {
    match (held, tools) {
        (Some(text), Some(t)) => {
            let parsed = crate::engine::tools::parse(&text, &t.specs);
            (parsed.content, parsed.calls)
        }
        (Some(text), None) => (text, Vec::new()),
        (None, _) => (String::new(), Vec::new()),
    }
}

impl Loop {
    /// The loop under the request's time limit: on a timeout the request is recorded as one and
    /// the client is told; dropping the unfinished loop drops its generations (the engine
    /// cancels).
    async fn drive(self, streams: Vec<Generation>, limit: Duration) {
        let (tx, account) = (self.tx.clone(), self.account.clone());
        if tokio::time::timeout(limit, self.produce(streams))
            .await
            .is_err()
        {
            finish(&account, &Totals::default(), None, Outcome::Timeout);
            let _ = tx
                .send(Event::Error(InferError::Timeout(limit.as_secs())))
                .await;
        }
    }

    async fn produce(self, streams: Vec<Generation>) {
        let mut totals = Totals {
            from_cache: self.shape.from_cache,
            ..Totals::default()
        };
        let mut last_usage: Option<Usage> = None;
        for (choice, mut generation) in streams.into_iter().enumerate() {
            // Open from the request's scheduling to its first token, then to its last.
            let mut phase = Phase::prefill(choice);
            let mut streamed = 0;
            let mut pending = Vec::new();
            let mut hold = CallHold::new(self.shape.tools.is_some());
            let mut split = ThinkSplit::new(self.shape.thinking);
            let mut read_by_engine = Vec::new();
            loop {
                // The client going away is noticed at once, also while text is held.
                let event = tokio::select! {
                    e = generation.recv() => e,
                    _ = self.tx.closed() => None,
                };
                let Some(event) = event else {
                    return self.gone(totals, streamed, last_usage.as_ref());
                };
                phase.saw(&event);
                let sent = match event {
                    GenEvent::Token { id, logprob, top } => {
                        streamed += 1;
                        if self.shape.logprobs {
                            pending.push(self.token(id, logprob, top));
                        }
                        continue;
                    }
                    GenEvent::NamedToken {
                        token,
                        logprob,
                        top,
                    } => {
                        streamed += 1;
                        if self.shape.logprobs {
                            pending.push(TokenLogprob {
                                token,
                                logprob,
                                top,
                            });
                        }
                        continue;
                    }
                    GenEvent::Calls(calls) => {
                        read_by_engine = calls;
                        continue;
                    }
                    GenEvent::Text(text) => {
                        let pieces = split.push(&text);
                        self.pieces(choice, pieces, &mut hold, &mut pending).await
                    }
                    GenEvent::Done(usage) => {
                        let pieces = split.finish();
                        if !self.pieces(choice, pieces, &mut hold, &mut pending).await {
                            return self.gone(totals, streamed, Some(&usage));
                        }
                        let (content, mut calls) =
                            read_calls(hold.finish(), self.shape.tools.as_ref());
                        calls.append(&mut read_by_engine);
                        if !content.is_empty() && !self.text(choice, content, &mut pending).await {
                            return self.gone(totals, streamed, Some(&usage));
                        }
                        totals.add(choice, self.shape.n, &usage);
                        phase.done(&usage);
                        let reason = self.finish_of(&usage, &calls);
                        last_usage = Some(usage.clone());
                        let done = Event::Done {
                            choice,
                            calls,
                            logprobs: std::mem::take(&mut pending),
                            finish: reason,
                            usage,
                        };
                        if self.tx.send(done).await.is_err() {
                            return finish(
                                &self.account,
                                &totals,
                                last_usage.as_ref(),
                                Outcome::Cancelled,
                            );
                        }
                        break;
                    }
                    GenEvent::Failed(message) => {
                        finish(
                            &self.account,
                            &totals,
                            None,
                            Outcome::Error(message.clone()),
                        );
                        let error = InferError::internal(message);
                        let _ = self.tx.send(Event::Error(error)).await;
                        return;
                    }
                };
                if !sent {
                    return self.gone(totals, streamed, last_usage.as_ref());
                }
            }
        }
        // Recorded before the client hears the end, so what it reads next already counts it.
        finish(&self.account, &totals, last_usage.as_ref(), Outcome::Ok);
        self.answered(last_usage.as_ref());
        let _ = self
            .tx
            .send(Event::End {
                totals,
                usage: last_usage,
            })
            .await;
    }

    /// The client went away (or the engine did): record what it was sent; dropping the
    /// generations cancels the rest.
    fn gone(&self, mut totals: Totals, streamed: usize, last: Option<&Usage>) {
        totals.completion += streamed;
        finish(&self.account, &totals, last, Outcome::Cancelled);
    }

    fn token(&self, id: u32, logprob: Option<f32>, top: Vec<(u32, f32)>) -> TokenLogprob {
        let name = |id: u32| match &self.backend {
            Some(b) => b.token_text(id),
            None => format!("<{id}>"),
        };
        TokenLogprob {
            token: name(id),
            logprob,
            top: top.into_iter().map(|(t, l)| (name(t), l)).collect(),
        }
    }

    /// Send reasoning as it comes, and answer text through the call hold; false when the client
    /// is gone.
    async fn pieces(
        &self,
        choice: usize,
        pieces: Vec<Piece>,
        hold: &mut CallHold,
        pending: &mut Vec<TokenLogprob>,
    ) -> bool {
        for piece in pieces {
            let sent = match piece {
                Piece::Reasoning(text) => self
                    .tx
                    .send(Event::Reasoning { choice, text })
                    .await
                    .is_ok(),
                Piece::Answer(text) => match hold.push(text) {
                    Some(text) => self.text(choice, text, pending).await,
                    None => true,
                },
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// Send text with the tokens it came from; false when the client is gone.
    async fn text(&self, choice: usize, text: String, pending: &mut Vec<TokenLogprob>) -> bool {
        if let (0, Some(answer)) = (choice, &self.answer) {
            let mut answer = answer.lock().unwrap_or_else(|e| e.into_inner());
            if answer.len() < crate::monitor::answers::KEEP_CHARS * 4 {
                answer.push_str(&text);
            }
        }
        let logprobs = std::mem::take(pending);
        self.tx
            .send(Event::Text {
                choice,
                text,
                logprobs,
            })
            .await
            .is_ok()
    }

    /// Hand the first choice's answer to the monitor's consistency figures.
    fn answered(&self, usage: Option<&Usage>) {
        let Some(answer) = &self.answer else { return };
        let text = std::mem::take(&mut *answer.lock().unwrap_or_else(|e| e.into_inner()));
        if text.trim().is_empty() {
            return;
        }
        self.account
            .monitor
            .answered(crate::monitor::answers::Answered {
                session: self.account.session.clone(),
                model: self.account.model.clone(),
                at: crate::clock::unix_seconds(),
                text,
                tokens: usage.map_or(0, |u| u.completion_tokens as u64),
            });
    }

    fn finish_of(&self, usage: &Usage, calls: &[ToolCall]) -> Finish {
        if !calls.is_empty() {
            return Finish::ToolCalls;
        }
        match (&usage.finish_reason, &usage.stop_sequence) {
            (FinishReason::Stop, Some(s)) if self.shape.stops => Finish::StopSequence(s.clone()),
            (FinishReason::Stop, _) => Finish::Stop,
            (FinishReason::Length | FinishReason::Cancelled, _) => Finish::Length,
        }
    }
}
