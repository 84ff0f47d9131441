//! OpenAI request bodies, and their validation into what the scheduler accepts.
//!
//! Parsing checks types; `validate` checks ranges and meaning and is the only way to a
//! [`ValidatedRequest`], so nothing unchecked reaches the engine.

use std::collections::HashMap;

use serde::Deserialize;

use super::errors::ApiError;
use crate::engine::constrain::Constraint;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::scheduler::{EngineHandle, KeepAlive, ValidatedRequest};

/// Choices per request, as OpenAI allows.
pub const MAX_N: usize = 8;
const MAX_STOPS: usize = 4;
const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// Message content: a string, or an array of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant's calls.
    pub tool_calls: Option<Vec<super::tools::WireToolCall>>,
    /// A tool result's call and function.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and limit fields chat and completions share.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// Ollama's extension: how long the model stays loaded after this request.
    pub keep_alive: Option<serde_json::Value>,
    /// llama.cpp's extension: reuse the KV of a cached prompt prefix (default true).
    pub cache_prompt: Option<bool>,
    /// Lantern's extension: compress the prompt first, `{"method": "prune", "ratio": 0.5}`.
    pub compression: Option<crate::compress::Spec>,
    /// Ollama's `num_ctx`: the prompt and the answer stay within this many tokens.
    pub context_limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    pub tools: Option<Vec<super::tools::WireTool>>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    /// The deprecated form of `tools`: refused with a pointer to `tools`.
    pub functions: Option<serde_json::Value>,
    pub function_call: Option<serde_json::Value>,
    pub response_format: Option<serde_json::Value>,
    /// Lantern's extension: a grammar (llguidance's Lark) the output must match.
    pub grammar: Option<String>,
    /// Lantern's extension: a regular expression the output must match.
    pub regex: Option<String>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: OneOrMany,
    /// Completions API: the number of alternatives per token to report.
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub response_format: Option<serde_json::Value>,
    pub grammar: Option<String>,
    pub regex: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// What the handlers need besides the scheduled requests.
#[derive(Debug)]
pub struct Plan {
    /// The compression applied to the prompt, if the request asked for one.
    pub compression: Option<Applied>,
    /// The experiment variant that served it (`EXPERIMENT/VARIANT`), set by the router.
    pub variant: Option<String>,
    pub requests: Vec<ValidatedRequest>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: Option<usize>,
    /// Tools whose calls are read out of the answers.
    pub tools: Option<super::tools::ToolsRequest>,
    /// The output's grammar, as text: part of the response cache's key.
    pub grammar_key: Option<String>,
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
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn compression_spec(
    spec: Option<crate::compress::Spec>,
) -> Result<Option<crate::compress::Spec>, ApiError> {
    match spec {
        Some(s) => {
            s.validate()
                .map_err(|e| ApiError::invalid(e, "compression"))?;
            Ok(Some(s))
        }
        None => Ok(None),
    }
}

fn range<T: PartialOrd + Copy + std::fmt::Display>(
    value: Option<T>,
    lo: T,
    hi: T,
    param: &'static str,
) -> Result<Option<T>, ApiError> {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => Err(ApiError::invalid(
            format!("`{param}` must be between {lo} and {hi}, got {v}"),
            param,
        )),
        _ => Ok(value),
    }
}

impl Sampling {
    /// Range-check everything and build the engine's settings; `prompt_len` tokens are already
    /// used of the model's context.
    fn params(
        &self,
        engine: &EngineHandle,
        prompt_len: usize,
        top_logprobs: Option<usize>,
    ) -> Result<(usize, SamplingParams, Vec<String>), ApiError> {
        let context = engine
            .info
            .context_length
            .min(self.context_limit.unwrap_or(usize::MAX));
        if prompt_len >= context {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "This model's maximum context length is {context} tokens, but the prompt has {prompt_len}"
                ),
                param: Some("messages".into()),
                code: Some("context_length_exceeded"),
            });
        }
        let room = context - prompt_len;
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some((v, "max_completion_tokens")),
            (None, Some(v)) => Some((v, "max_tokens")),
            _ => None,
        };
        let max_tokens = match max_tokens {
            None => room,
            Some((v, param)) => {
                if v < 1 || v as usize > context {
                    return Err(ApiError::invalid(
                        format!("`{param}` must be between 1 and {context}, got {v}"),
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
                    ApiError::invalid(
                        format!("`logit_bias` key `{token}` is not a token id of this model"),
                        "logit_bias",
                    )
                })?;
            range(Some(*bias), -100.0, 100.0, "logit_bias")?;
            logit_bias.insert(id, *bias);
        }
        let stop = self.stop.take_stops()?;
        Ok((
            max_tokens,
            SamplingParams {
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
            stop,
        ))
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    fn n(&self) -> Result<usize, ApiError> {
        Ok(range(self.n, 1, MAX_N as i64, "n")?.unwrap_or(1) as usize)
    }
}

trait TakeStops {
    fn take_stops(&self) -> Result<Vec<String>, ApiError>;
}

impl TakeStops for Option<OneOrMany> {
    fn take_stops(&self) -> Result<Vec<String>, ApiError> {
        let stops: Vec<String> = match self {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![s.clone()],
            Some(OneOrMany::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                format!(
                    "`stop` takes at most {MAX_STOPS} sequences, got {}",
                    stops.len()
                ),
                "stop",
            ));
        }
        Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
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

/// The first choice's request; the others are copies with their own seeds (`per_choice`).
struct Choice {
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    keep_alive: Option<KeepAlive>,
    cache_prompt: bool,
}

impl Choice {
    fn request(self, prompt: Vec<u32>, constraint: Option<&Constraint>) -> ValidatedRequest {
        let mut r = ValidatedRequest::new(
            prompt,
            self.max_tokens,
            self.sampling,
            self.stop,
            self.keep_alive,
        );
        r.cache_prompt = self.cache_prompt;
        r.constraint = constraint.cloned();
        r
    }
}

impl Sampling {
    fn keep_alive(&self) -> Result<Option<KeepAlive>, ApiError> {
        match &self.keep_alive {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => KeepAlive::parse(v).map(Some).ok_or_else(|| {
                ApiError::invalid(
                    format!("`keep_alive` must be seconds (a number, -1 for forever) or a duration like \"5m\", got {v}"),
                    "keep_alive",
                )
            }),
        }
    }
}

/// Validate a chat request for `engine`, the model its `model` field named.
/// `scorer`: the model a `prune` compression scores tokens with, when it names one.
pub fn validate_chat(
    engine: &EngineHandle,
    mut req: ChatRequest,
    scorer: Option<&crate::engine::ChatModel>,
) -> Result<Plan, ApiError> {
    for (param, value) in [
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(
                format!(
                    "`{param}` is the deprecated form of `tools`; send `tools` and `tool_choice`"
                ),
                param,
            ));
        }
    }
    let tools = super::tools::tools_request(
        req.tools.take(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let format = super::structured::one_of(
        super::structured::response_format(req.response_format.as_ref(), "response_format")?,
        super::structured::extension(req.grammar.take(), req.regex.take())?,
    )?;
    let forced = tools.as_ref().and_then(|t| {
        crate::engine::tools::forced_grammar(
            &t.specs,
            &t.choice,
            t.parallel,
            engine.model.tool_format(),
        )
    });
    if forced.is_some() && format.is_some() {
        return Err(ApiError::invalid(
            "`tool_choice` `required` or a named function already fixes the output; drop `response_format`",
            "response_format",
        ));
    }
    let (grammar, grammar_param) = match (forced, format) {
        (Some(g), _) => (Some(g), "tool_choice"),
        (None, g) => (g, "response_format"),
    };
    let constraint = grammar
        .as_ref()
        .map(|g| blocking(|| super::structured::compile(engine, g, grammar_param)))
        .transpose()?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "`messages` must not be empty",
            "messages",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role `{other}` is not one of system, developer, user, assistant, tool"),
                    "messages",
                ))
            }
        };
        let content = match m.content {
            // An assistant that only called tools has no text.
            None if role == "assistant" && m.tool_calls.is_some() => String::new(),
            None => {
                return Err(ApiError::invalid(
                    format!(
                    "messages[{i}].content is missing: a `{}` message needs its text in `content`",
                    m.role
                ),
                    format!("messages[{i}].content"),
                ))
            }
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: content parts of type `{kind}` are not supported by this model (text only)"),
                                "messages",
                            ))
                        }
                    }
                }
                text
            }
        };
        let mut message = ChatMessage::new(role, content);
        if let Some(calls) = m.tool_calls {
            if role != "assistant" {
                return Err(ApiError::invalid(
                    format!("messages[{i}]: only assistant messages carry `tool_calls`"),
                    "messages",
                ));
            }
            message.tool_calls = Some(
                calls
                    .into_iter()
                    .map(|c| super::tools::template_call(i, c))
                    .collect::<Result<_, _>>()?,
            );
        }
        if role == "tool" {
            message.tool_call_id = m.tool_call_id;
            message.name = m.name;
        }
        messages.push(message);
    }
    let mut compression = None;
    if let Some(spec) = compression_spec(req.sampling.compression.take())? {
        let (compressed, report) =
            blocking(|| crate::compress::compress_chat(&engine.model, scorer, messages, &spec))
                .map_err(|e| ApiError::invalid(e, "compression"))?;
        messages = compressed;
        compression = Some(Applied { spec, report });
    }
    let specs = tools.as_ref().map(|t| &t.specs[..]).unwrap_or_default();
    let prompt = blocking(|| engine.model.chat_prompt_with_tools(messages, specs))
        .map_err(|e| ApiError::invalid(e.to_string(), "messages"))?;
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "`top_logprobs` needs `logprobs: true`",
                "top_logprobs",
            ))
        }
        (false, None) => None,
        (true, t) => {
            Some(range(t, 0, MAX_TOP_LOGPROBS as i64, "top_logprobs")?.unwrap_or(0) as usize)
        }
    };
    let n = req.sampling.n()?;
    let keep_alive = req.sampling.keep_alive()?;
    let (max_tokens, sampling, stop) = req.sampling.params(engine, prompt.len(), top_logprobs)?;
    Ok(Plan {
        variant: None,
        compression,
        requests: per_choice(
            Choice {
                max_tokens,
                sampling,
                stop,
                keep_alive,
                cache_prompt: req.sampling.cache_prompt.unwrap_or(true),
            }
            .request(prompt, constraint.as_ref()),
            n,
        ),
        n,
        stream: req.sampling.stream,
        include_usage: req.sampling.include_usage(),
        logprobs: top_logprobs,
        grammar_key: grammar.as_ref().map(|g| g.key()),
        tools: tools.filter(|t| t.parses()),
    })
}

pub fn validate_completion(
    engine: &EngineHandle,
    mut req: CompletionRequest,
    scorer: Option<&crate::engine::ChatModel>,
) -> Result<Plan, ApiError> {
    if req.echo {
        return Err(ApiError::invalid("`echo` is not supported", "echo"));
    }
    let prompts = req.prompt.into_vec();
    if prompts.is_empty() {
        return Err(ApiError::invalid("`prompt` must not be empty", "prompt"));
    }
    let logprobs = range(req.logprobs, 0, 5, "logprobs")?.map(|l| l as usize);
    let grammar = super::structured::one_of(
        super::structured::response_format(req.response_format.as_ref(), "response_format")?,
        super::structured::extension(req.grammar.take(), req.regex.take())?,
    )?;
    let constraint = grammar
        .as_ref()
        .map(|g| blocking(|| super::structured::compile(engine, g, "response_format")))
        .transpose()?;
    let n = req.sampling.n()?;
    let keep_alive = req.sampling.keep_alive()?;
    let spec = compression_spec(req.sampling.compression.take())?;
    let mut compression: Option<Applied> = None;
    let mut requests = Vec::new();
    for prompt in prompts {
        // Each prompt is compressed on its own; the report adds them up.
        let prompt = match &spec {
            Some(spec) => {
                let spec = spec.clone();
                let (text, report) = blocking(|| {
                    crate::compress::compress_text(&engine.model, scorer, &prompt, &spec)
                })
                .map_err(|e| ApiError::invalid(e, "compression"))?;
                compression = Some(match compression.take() {
                    None => Applied { spec, report },
                    Some(mut a) => {
                        a.report.original_tokens += report.original_tokens;
                        a.report.compressed_tokens += report.compressed_tokens;
                        a.report.ratio = a.report.compressed_tokens as f64
                            / a.report.original_tokens.max(1) as f64;
                        a
                    }
                });
                text
            }
            None => prompt,
        };
        let ids = engine
            .model
            .prompt_ids(&prompt)
            .map_err(|e| ApiError::invalid(e.to_string(), "prompt"))?;
        if ids.is_empty() {
            return Err(ApiError::invalid("`prompt` must not be empty", "prompt"));
        }
        let (max_tokens, sampling, stop) = req.sampling.params(engine, ids.len(), logprobs)?;
        // The Completions API's default is 16 tokens.
        let max_tokens = if req.sampling.max_tokens.is_none() {
            max_tokens.min(16)
        } else {
            max_tokens
        };
        requests.extend(per_choice(
            Choice {
                max_tokens,
                sampling,
                stop,
                keep_alive,
                cache_prompt: req.sampling.cache_prompt.unwrap_or(true),
            }
            .request(ids, constraint.as_ref()),
            n,
        ));
    }
    Ok(Plan {
        variant: None,
        compression,
        requests,
        n,
        stream: req.sampling.stream,
        include_usage: req.sampling.include_usage(),
        logprobs,
        grammar_key: grammar.as_ref().map(|g| g.key()),
        tools: None,
    })
}
