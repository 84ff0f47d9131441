//! Validation: a typed [`Request`] checked against the model it names becomes the scheduler's
//! [`ValidatedRequest`]s (one per choice). Ranges, roles, tools, the output's grammar, the
//! prompt rendered and within the context: the only way to a `ValidatedRequest`, so nothing
//! unchecked reaches the engine.

use std::collections::HashMap;

use super::error::InferError;
use super::request::{Api, Input, OneOrMany, Request, Sampling};
use super::tools::{check_tools, ToolsRequest};
use crate::engine::constrain::{Constraint, Grammar};
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::scheduler::thinking_budget::ThinkingBudget;
use crate::scheduler::{EngineHandle, KeepAlive, ValidatedRequest};

/// Choices per request, as OpenAI allows.
pub const MAX_N: usize = 8;

/// A request checked for one model: what to schedule and what reading its answers needs.
#[derive(Debug)]
pub struct Validated {
    pub api: Api,
    /// The compression applied to the prompt, if the request asked for one.
    pub compression: Option<Applied>,
    pub requests: Vec<ValidatedRequest>,
    pub n: usize,
    /// Alternatives per token reported, when log-probabilities were asked for.
    pub logprobs: Option<usize>,
    /// Tools whose calls are read out of the answers.
    pub tools: Option<ToolsRequest>,
    /// The output's grammar, as text: part of the response cache's key.
    pub grammar_key: Option<String>,
    /// Chat (through the template) or prompts as written: part of the response cache's key.
    pub chat: bool,
    /// Where a thinking model's answer starts, as the rendered prompt leaves it.
    pub thinking: super::reasoning::Thinking,
}

/// A compression that was applied: what was asked and what it did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub spec: crate::compress::Spec,
    pub report: crate::compress::Report,
}

impl Applied {
    pub fn label(&self) -> String {
        self.spec.label()
    }
}

/// Run `f` (compute-heavy) where it may block: off the async workers when on a multi-thread
/// runtime.
pub(super) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn range<T: PartialOrd + Copy + std::fmt::Display>(
    value: Option<T>,
    lo: T,
    hi: T,
    param: &'static str,
) -> Result<Option<T>, InferError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(InferError::invalid(
            format!("`{param}` must be between {lo} and {hi}, got {v}"),
            param,
        )),
        _ => Ok(value),
    }
}

/// Compile for the engine's model (compute: callers run it where it may block); a grammar that
/// does not compile is the client's fault.
fn compile(
    engine: &EngineHandle,
    grammar: &Grammar,
    param: &str,
) -> Result<Constraint, InferError> {
    engine.model.constrain(grammar).map_err(|e| {
        InferError::invalid(
            format!("`{param}` cannot be enforced: {e}"),
            param.to_string(),
        )
    })
}

/// Sampling settings checked for one prompt: its answer's length, the sampler's settings, stops.
struct Checked {
    max_tokens: usize,
    params: SamplingParams,
    stop: Vec<String>,
}

impl Sampling {
    /// Range-check everything and build the engine's settings; `prompt_len` tokens are already
    /// used of the model's context.
    fn check(
        &self,
        engine: &EngineHandle,
        api: Api,
        prompt_len: usize,
        top_logprobs: Option<usize>,
    ) -> Result<Checked, InferError> {
        let context = engine
            .info
            .context_length
            .min(self.context_limit.unwrap_or(usize::MAX));
        if prompt_len >= context {
            return Err(InferError::Invalid {
                message: format!(
                    "This model's maximum context length is {context} tokens, but the prompt has {prompt_len}"
                ),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            });
        }
        let room = context - prompt_len;
        let asked = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some((v, "max_completion_tokens")),
            (None, Some(v)) => Some((v, "max_tokens")),
            _ => None,
        };
        let max_tokens = match asked {
            // The legacy completions API's default is 16 tokens.
            None if api == Api::Completions => room.min(16),
            None => room,
            Some((v, param)) => {
                // Anthropic's clients (Claude Code) ask for a large budget whatever the model's
                // context: the answer is held to the room there is, as llama-server does.
                let bound = if api == Api::Messages {
                    i64::MAX as usize
                } else {
                    context
                };
                if v < 1 || v as usize > bound {
                    return Err(InferError::invalid(
                        format!("`{param}` must be between 1 and {bound}, got {v}"),
                        param,
                    ));
                }
                (v as usize).min(room)
            }
        };
        let defaults = SamplingParams::default();
        let temperature = range(self.temperature, 0.0, 2.0, "temperature")?;
        let top_p = range(self.top_p, 0.0, 1.0, "top_p")?;
        let top_k = range(self.top_k, 0, engine.info.vocab_size as i64, "top_k")?;
        let min_p = range(self.min_p, 0.0, 1.0, "min_p")?;
        let freq = range(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
        let presence = range(self.presence_penalty, -2.0, 2.0, "presence_penalty")?;
        let repetition = range(self.repetition_penalty, 0.01, 10.0, "repetition_penalty")?;
        let mut logit_bias = HashMap::new();
        for (token, bias) in self.logit_bias.iter().flatten() {
            let id = token
                .parse::<u32>()
                .ok()
                .filter(|&id| (id as usize) < engine.info.vocab_size)
                .ok_or_else(|| {
                    InferError::invalid(
                        format!("`logit_bias` key `{token}` is not a token id of this model"),
                        "logit_bias",
                    )
                })?;
            range(Some(*bias), -100.0, 100.0, "logit_bias")?;
            logit_bias.insert(id, *bias);
        }
        Ok(Checked {
            max_tokens,
            params: SamplingParams {
                // OpenAI's defaults: temperature 1 and top_p 1 with nothing else cutting.
                temperature: temperature.unwrap_or(1.0),
                top_p: top_p.unwrap_or(1.0),
                top_k: top_k.map(|k| k as usize).unwrap_or(0),
                min_p: min_p.unwrap_or(0.0),
                frequency_penalty: freq.unwrap_or(defaults.frequency_penalty),
                presence_penalty: presence.unwrap_or(defaults.presence_penalty),
                repetition_penalty: repetition.unwrap_or(defaults.repetition_penalty),
                logit_bias,
                seed: self.seed.map(|s| s as u64),
                top_logprobs,
            },
            stop: self.stops(api.max_stops())?,
        })
    }

    fn stops(&self, max: usize) -> Result<Vec<String>, InferError> {
        let stops = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stops.len() > max {
            return Err(InferError::invalid(
                format!("`stop` takes at most {max} sequences, got {}", stops.len()),
                "stop",
            ));
        }
        Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
    }

    fn n(&self) -> Result<usize, InferError> {
        Ok(range(self.n, 1, MAX_N as i64, "n")?.unwrap_or(1) as usize)
    }

    fn keep_alive(&self) -> Result<Option<KeepAlive>, InferError> {
        match &self.keep_alive {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => KeepAlive::parse(v).map(Some).ok_or_else(|| {
                InferError::invalid(
                    format!("`keep_alive` must be seconds (a number, -1 for forever) or a duration like \"5m\", got {v}"),
                    "keep_alive",
                )
            }),
        }
    }
}

/// One scheduled request per choice; with a seed, choice `i` uses `seed + i` so the choices
/// differ yet the whole response repeats.
fn per_choice(first: ValidatedRequest, n: usize) -> Vec<ValidatedRequest> {
    (0..n)
        .map(|i| {
            let mut r = first.clone();
            r.sampling.seed = r.sampling.seed.map(|seed| seed.wrapping_add(i as u64));
            r
        })
        .collect()
}

/// Roles the templates know; the adapters map their own (`developer`) onto these.
fn check_roles(messages: &[ChatMessage]) -> Result<(), InferError> {
    if messages.is_empty() {
        return Err(InferError::invalid(
            "`messages` must not be empty",
            "messages",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(InferError::invalid(
                format!(
                    "messages[{i}].role `{}` is not one of system, user, assistant, tool",
                    m.role
                ),
                "messages",
            ));
        }
        if m.tool_calls.is_some() && m.role != "assistant" {
            return Err(InferError::invalid(
                format!("messages[{i}]: only assistant messages carry tool calls"),
                "messages",
            ));
        }
    }
    Ok(())
}

/// Validate `req` for `engine`, the model it names (its prompt already compressed, when it asked
/// for that: `Infer::compress`).
pub fn validate(engine: &EngineHandle, req: Request) -> Result<Validated, InferError> {
    let api = req.api;
    let tools = check_tools(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    let forced = tools.as_ref().and_then(|t| t.forced_grammar(engine));
    if forced.is_some() && req.output.is_some() {
        return Err(InferError::invalid(
            format!(
                "a required or named tool choice already fixes the output; drop `{}`",
                req.output_param
            ),
            req.output_param,
        ));
    }
    let (grammar, grammar_param) = match (forced, req.output) {
        (Some(g), _) => (Some(g), "tool_choice"),
        (None, g) => (g, req.output_param),
    };
    let constraint = grammar
        .as_ref()
        .map(|g| blocking(|| compile(engine, g, grammar_param)))
        .transpose()?;
    let top_logprobs = range(
        req.logprobs,
        0,
        api.max_top_logprobs() as i64,
        "top_logprobs",
    )?
    .map(|t| t as usize);
    let n = req.sampling.n()?;
    let keep_alive = req.sampling.keep_alive()?;
    let cache_prompt = req.sampling.cache_prompt.unwrap_or(true);
    let chat = matches!(req.input, Input::Chat(_));
    refuse_thinking(engine, api, &req.model, req.enable_thinking)?;
    let mut thinking = super::reasoning::Thinking::Off;
    let prompts = match req.input {
        Input::Chat(messages) => {
            check_roles(&messages)?;
            let continue_final = req.continue_final;
            if continue_final && messages.last().is_none_or(|m| m.role != "assistant") {
                return Err(InferError::invalid(
                    "only an assistant's message can be continued: the last message is not one",
                    "messages",
                ));
            }
            let specs = tools.as_ref().map(|t| &t.specs[..]).unwrap_or_default();
            let (prompt, text) = blocking(|| {
                engine.model.chat_prompt_with_tools(
                    messages,
                    specs,
                    req.enable_thinking,
                    continue_final,
                )
            })
            .map_err(|e| InferError::invalid(e.to_string(), "messages"))?;
            // Under a grammar the output is the grammar's, tags and all.
            if constraint.is_none() {
                thinking = super::reasoning::Thinking::of(engine.model.template_source(), &text);
            }
            vec![prompt]
        }
        Input::Prompts(texts) => prompt_ids(engine, texts)?,
    };
    let mut requests = Vec::with_capacity(prompts.len() * n);
    for prompt in prompts {
        let checked = req
            .sampling
            .check(engine, api, prompt.len(), top_logprobs)?;
        let mut first = ValidatedRequest::new(
            prompt,
            checked.max_tokens,
            checked.params,
            checked.stop,
            keep_alive,
        );
        first.cache_prompt = cache_prompt;
        first.constraint = constraint.clone();
        first.thinking_budget = thinking_budget(engine, thinking, req.thinking_budget)?;
        requests.extend(per_choice(first, n));
    }
    Ok(Validated {
        api,
        compression: None,
        requests,
        n,
        logprobs: top_logprobs,
        grammar_key: grammar.as_ref().map(|g| g.key()),
        tools: tools.filter(|t| t.parses()),
        chat,
        thinking,
    })
}

/// The engine's budget for a thinking answer: the closing it writes, as this tokenizer spells
/// it. None when nothing is thought (no template support, thinking off, or under a grammar).
fn thinking_budget(
    engine: &EngineHandle,
    thinking: super::reasoning::Thinking,
    tokens: Option<usize>,
) -> Result<Option<ThinkingBudget>, InferError> {
    use super::reasoning::Thinking;
    let Some(tokens) = tokens.filter(|_| thinking != Thinking::Off) else {
        return Ok(None);
    };
    let close = engine
        .model
        .tokenizer
        .encode("\n</think>\n\n", false)
        .map_err(InferError::internal)?;
    Ok(Some(ThinkingBudget {
        tokens,
        opened: thinking == Thinking::Open,
        close,
    }))
}

/// Asked to think, a model whose template knows no thinking says so on the APIs whose own
/// servers do (Ollama's `think`, Anthropic's `thinking`); `chat_template_kwargs` are only the
/// template's variables, as in llama-server and vLLM.
fn refuse_thinking(
    engine: &EngineHandle,
    api: Api,
    model: &str,
    enable_thinking: Option<bool>,
) -> Result<(), InferError> {
    if enable_thinking != Some(true) || engine.model.template_source().contains("<think>") {
        return Ok(());
    }
    let param = match api {
        Api::OllamaChat | Api::OllamaGenerate => "think",
        Api::Messages => "thinking",
        _ => return Ok(()),
    };
    Err(InferError::invalid(
        format!("\"{model}\" does not support thinking"),
        param,
    ))
}

/// Prompts as written, as token ids.
fn prompt_ids(engine: &EngineHandle, texts: Vec<String>) -> Result<Vec<Vec<u32>>, InferError> {
    if texts.is_empty() {
        return Err(InferError::invalid("`prompt` must not be empty", "prompt"));
    }
    texts
        .iter()
        .map(|text| {
            let ids = engine
                .model
                .prompt_ids(text)
                .map_err(|e| InferError::invalid(e.to_string(), "prompt"))?;
            if ids.is_empty() {
                return Err(InferError::invalid("`prompt` must not be empty", "prompt"));
            }
            Ok(ids)
        })
        .collect()
}
