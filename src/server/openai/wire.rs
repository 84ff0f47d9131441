//! OpenAI's request bodies (`/v1/chat/completions`, `/v1/completions`) and their translation
//! into the one typed request. Parsing checks types and OpenAI's own shapes; ranges and meaning
//! are checked on the inference path, the same for every API.

use serde::Deserialize;

use crate::engine::template::ChatMessage;
use crate::infer::{Api, Caller, Input, OneOrMany, Request, Sampling};
use crate::server::errors::ApiError;
use crate::server::tools::{WireTool, WireToolCall};

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
    pub tool_calls: Option<Vec<WireToolCall>>,
    /// A tool result's call and function.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What both OpenAI bodies carry besides their input: streaming and the end user.
#[derive(Debug, Default, Deserialize)]
pub struct Delivery {
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
}

impl Delivery {
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    pub tools: Option<Vec<WireTool>>,
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
    /// Variables for the chat template (llama-server's and vLLM's extension); Lantern's
    /// templates read `enable_thinking` (Qwen3's switch).
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// OpenAI's switch for reasoning models: `none` turns thinking off, any other effort on.
    pub reasoning_effort: Option<String>,
    /// vLLM's extension: go on with the last message (an assistant's answer cut short)
    /// instead of answering it.
    #[serde(default)]
    pub continue_final_message: bool,
    #[serde(flatten)]
    pub delivery: Delivery,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// What an OpenAI `reasoning_effort` asks of a thinking model whose template has one switch
/// (Qwen3's `enable_thinking`): `none` turns thinking off; `minimal` to `high` turn it on, as no
/// local template grades it. None: the template's default.
pub fn thinking_of_effort(
    effort: Option<&str>,
    param: &'static str,
) -> Result<Option<bool>, ApiError> {
    match effort {
        None => Ok(None),
        Some("none") => Ok(Some(false)),
        Some("minimal" | "low" | "medium" | "high") => Ok(Some(true)),
        Some(other) => Err(ApiError::invalid(
            format!("`{param}` is none, minimal, low, medium or high, not `{other}`"),
            param,
        )),
    }
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
    pub delivery: Delivery,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// A message's text: a string, or text parts joined.
fn text_of(
    i: usize,
    role: &str,
    content: Option<Content>,
    calls: bool,
) -> Result<String, ApiError> {
    match content {
        // An assistant that only called tools has no text.
        None if role == "assistant" && calls => Ok(String::new()),
        None => Err(ApiError::invalid(
            format!(
                "messages[{i}].content is missing: a `{role}` message needs its text in `content`"
            ),
            format!("messages[{i}].content"),
        )),
        Some(Content::Text(t)) => Ok(t),
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
            Ok(text)
        }
    }
}

/// OpenAI's messages as the template's: `developer` is `system`, calls carry object arguments.
pub fn messages(wire: Vec<WireMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    wire.into_iter()
        .enumerate()
        .map(|(i, m)| {
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
            let content = text_of(i, &m.role, m.content, m.tool_calls.is_some())?;
            let mut message = ChatMessage::new(role, content);
            if let Some(calls) = m.tool_calls {
                message.tool_calls = Some(
                    calls
                        .into_iter()
                        .map(|c| crate::server::tools::template_call(i, c))
                        .collect::<Result<_, _>>()?,
                );
            }
            if role == "tool" {
                message.tool_call_id = m.tool_call_id;
                message.name = m.name;
            }
            Ok(message)
        })
        .collect()
}

/// `response_format` beside Lantern's `grammar`/`regex`: at most one of them.
fn output(
    response_format: Option<&serde_json::Value>,
    grammar: Option<String>,
    regex: Option<String>,
) -> Result<Option<crate::engine::constrain::Grammar>, ApiError> {
    use crate::server::structured;
    structured::one_of(
        structured::response_format(response_format, "response_format")?,
        structured::extension(grammar, regex)?,
    )
}

impl ChatRequest {
    /// The typed request; `caller` from the headers (and this body's `user`).
    pub fn into_request(self, caller: Caller) -> Result<Request, ApiError> {
        for (param, value) in [
            ("functions", &self.functions),
            ("function_call", &self.function_call),
        ] {
            if value.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(ApiError::invalid(
                    format!("`{param}` is the deprecated form of `tools`; send `tools` and `tool_choice`"),
                    param,
                ));
            }
        }
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (false, Some(_)) => {
                return Err(ApiError::invalid(
                    "`top_logprobs` needs `logprobs: true`",
                    "top_logprobs",
                ))
            }
            (false, None) => None,
            (true, t) => Some(t.unwrap_or(0)),
        };
        let mut req = Request::new(
            Api::Chat,
            self.model,
            Input::Chat(messages(self.messages)?),
            caller,
        );
        req.tools = crate::server::tools::specs(self.tools)?;
        req.tool_choice = crate::server::tools::choice(self.tool_choice.as_ref())?;
        req.parallel_tool_calls = self.parallel_tool_calls;
        req.output = output(self.response_format.as_ref(), self.grammar, self.regex)?;
        req.logprobs = logprobs;
        req.sampling = self.sampling;
        req.continue_final = self.continue_final_message;
        let effort = thinking_of_effort(self.reasoning_effort.as_deref(), "reasoning_effort")?;
        // The template's own switch, when given, wins over the effort.
        req.enable_thinking = match self
            .chat_template_kwargs
            .as_ref()
            .and_then(|k| k.get("enable_thinking"))
        {
            None | Some(serde_json::Value::Null) => effort,
            Some(serde_json::Value::Bool(on)) => Some(*on),
            Some(other) => {
                return Err(ApiError::invalid(
                    format!(
                        "`chat_template_kwargs.enable_thinking` must be true or false, got {other}"
                    ),
                    "chat_template_kwargs",
                ))
            }
        };
        Ok(req)
    }
}

impl CompletionRequest {
    pub fn into_request(self, caller: Caller) -> Result<Request, ApiError> {
        if self.echo {
            return Err(ApiError::invalid("`echo` is not supported", "echo"));
        }
        let mut req = Request::new(
            Api::Completions,
            self.model,
            Input::Prompts(self.prompt.into_vec()),
            caller,
        );
        req.output = output(self.response_format.as_ref(), self.grammar, self.regex)?;
        req.logprobs = self.logprobs;
        req.sampling = self.sampling;
        Ok(req)
    }
}
