//! The typed request every wire format builds directly: what to run (messages or prompts), how
//! to sample, which tools and output constraint, and who asks. No JSON round trip: an adapter in
//! `server/` parses its body into this and nothing else reaches [`super::Infer::start`].

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::constrain::Grammar;
use crate::engine::template::ChatMessage;
use crate::engine::tools::{ToolChoice, ToolSpec};

/// Which wire format a request came through: the name the request log and `/metrics` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`
    Chat,
    /// `/v1/completions`
    Completions,
    /// `/v1/responses`
    Responses,
    /// Ollama's `/api/chat`
    OllamaChat,
    /// Ollama's `/api/generate`
    OllamaGenerate,
    /// Anthropic's `/v1/messages`
    Messages,
    /// The lab's own runs (experiments), not a client's request.
    Lab,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completions => "completions",
            Self::Responses => "responses",
            Self::OllamaChat => "ollama_chat",
            Self::OllamaGenerate => "ollama_generate",
            Self::Messages => "messages",
            Self::Lab => "lab",
        }
    }

    /// Stop strings a request may give: OpenAI's APIs allow four; Anthropic's and Ollama's more.
    pub fn max_stops(self) -> usize {
        match self {
            Self::Chat | Self::Completions | Self::Responses => 4,
            _ => 16,
        }
    }

    /// Alternatives per token a request may ask for: five on the legacy completions API.
    pub fn max_top_logprobs(self) -> usize {
        match self {
            Self::Completions => 5,
            _ => 20,
        }
    }
}

/// What the model is given: a conversation through its chat template, or prompts as written
/// (one answer each, side by side).
#[derive(Debug, Clone)]
pub enum Input {
    Chat(Vec<ChatMessage>),
    Prompts(Vec<String>),
}

/// One stop string or several, as OpenAI accepts them.
#[derive(Debug, Clone, Deserialize)]
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

/// Sampling and limits: every API fills these (OpenAI's body deserializes straight into them);
/// `None` means the API's default.
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// Ollama's extension: how long the model stays loaded after this request.
    pub keep_alive: Option<serde_json::Value>,
    /// llama.cpp's extension: reuse the KV of a cached prompt prefix (default true).
    pub cache_prompt: Option<bool>,
    /// Lantern's extension: compress the prompt first, `{"method": "prune", "ratio": 0.5}`.
    pub compression: Option<crate::compress::Spec>,
    /// Lantern's extension: `{"semantic": 0.95}` answers from an earlier answer to a question
    /// this similar (MiniLM cosine), of the same model and settings.
    pub cache: Option<CacheSpec>,
    /// Ollama's `num_ctx`: the prompt and the answer stay within this many tokens.
    pub context_limit: Option<usize>,
}

/// What a request (or a session, by default) asks of the semantic response cache.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// The least cosine similarity of a kept question to answer from it, in (0, 1].
    pub semantic: Option<f32>,
}

impl CacheSpec {
    /// The threshold, checked.
    pub fn threshold(&self) -> Result<Option<f32>, String> {
        match self.semantic {
            Some(t) if !(t > 0.0 && t <= 1.0) => Err(format!(
                "`cache.semantic` is a similarity in (0, 1], not {t}"
            )),
            t => Ok(t),
        }
    }
}

/// What a request's `Cache-Control` allows the response cache: `no-cache` skips reading it
/// (the fresh answer is still kept), `no-store` skips both.
#[derive(Debug, Clone, Copy)]
pub struct CacheUse {
    pub read: bool,
    pub write: bool,
}

impl Default for CacheUse {
    fn default() -> Self {
        Self {
            read: true,
            write: true,
        }
    }
}

/// Who asks, and under which limits: the session the request is recorded against, the key its
/// tokens are charged to, what it allows the response cache, how long it may take.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: String,
    pub rate_key: String,
    pub cache: CacheUse,
    pub timeout: Duration,
}

#[cfg(test)]
impl Caller {
    /// A caller for unit tests: session `s`, both caches allowed, five seconds.
    pub fn test() -> Self {
        Self {
            session: "s".into(),
            rate_key: "k".into(),
            cache: CacheUse::default(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One request, whichever wire format it came through.
#[derive(Debug, Clone)]
pub struct Request {
    pub api: Api,
    pub model: String,
    pub input: Input,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: Option<bool>,
    /// The grammar the output must match (a schema, `json_object`, Lark, a regex).
    pub output: Option<Grammar>,
    /// The field an error about `output` names (`response_format`, `format`, `text.format`).
    pub output_param: &'static str,
    /// Alternatives per token to report, when log-probabilities are asked for.
    pub logprobs: Option<i64>,
    pub sampling: Sampling,
    pub caller: Caller,
    /// The template's `enable_thinking` (`chat_template_kwargs`, Ollama's `think`, Anthropic's
    /// `thinking`), when the client chose.
    pub enable_thinking: Option<bool>,
    /// The last message is an assistant's answer to go on with, not to reply to (vLLM's
    /// `continue_final_message`).
    pub continue_final: bool,
    /// Tokens a thinking model may reason for before its `<think>` block is closed for it
    /// (Anthropic's `thinking.budget_tokens`).
    pub thinking_budget: Option<usize>,
}

impl Request {
    /// A request with the API's defaults: no tools, no constraint, no log-probabilities.
    pub fn new(api: Api, model: impl Into<String>, input: Input, caller: Caller) -> Self {
        Self {
            api,
            model: model.into(),
            input,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: None,
            output: None,
            output_param: "response_format",
            logprobs: None,
            sampling: Sampling::default(),
            caller,
            enable_thinking: None,
            continue_final: false,
            thinking_budget: None,
        }
    }
}
