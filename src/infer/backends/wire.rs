//! The typed request as the body a remote OpenAI-compatible engine reads: `/chat/completions`
//! for a conversation, `/completions` for prompts, always streamed with usage. What the remote
//! API cannot express (a Lark grammar, a regex, prompt compression) is refused here with a
//! clear error instead of being dropped.

use serde_json::{json, Map, Value};

use crate::engine::constrain::Grammar;
use crate::engine::template::ChatMessage;
use crate::engine::tools::ToolChoice;
use crate::infer::{InferError, Input, Request};

/// Where a request goes on the remote API, and what it sends.
pub struct Outgoing {
    /// `/chat/completions` or `/completions`.
    pub path: &'static str,
    pub body: Value,
    /// Choices the answer has (`n` for each prompt).
    pub choices: usize,
    pub chat: bool,
}

/// A message as OpenAI's API takes it: call arguments as JSON text.
fn message(m: &ChatMessage) -> Value {
    let mut v = json!({"role": m.role, "content": m.content});
    if let Some(calls) = &m.tool_calls {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let mut c = c.clone();
                if let Some(args) = c.pointer_mut("/function/arguments") {
                    if !args.is_string() {
                        *args = Value::String(args.to_string());
                    }
                }
                c
            })
            .collect();
        v["tool_calls"] = json!(calls);
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    v
}

fn unsupported(what: &str, param: &'static str) -> InferError {
    InferError::invalid(
        format!("{what} cannot be passed to a remote backend (its OpenAI API has no such field)"),
        param,
    )
}

/// `req` for the remote model `model`.
pub fn outgoing(req: &Request, model: &str) -> Result<Outgoing, InferError> {
    let s = &req.sampling;
    if s.compression.is_some() {
        return Err(unsupported("Prompt compression", "compression"));
    }
    let n = s.n.unwrap_or(1);
    if !(1..=crate::infer::validate::MAX_N as i64).contains(&n) {
        return Err(InferError::invalid(
            format!(
                "`n` must be between 1 and {}, got {n}",
                crate::infer::validate::MAX_N
            ),
            "n",
        ));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    let (path, prompts, chat) = match &req.input {
        Input::Chat(messages) => {
            let messages: Vec<Value> = messages.iter().map(message).collect();
            body.insert("messages".into(), json!(messages));
            ("/chat/completions", 1, true)
        }
        Input::Prompts(prompts) => {
            body.insert("prompt".into(), json!(prompts));
            ("/completions", prompts.len(), false)
        }
    };
    if !req.tools.is_empty() {
        let tools: Vec<Value> = req.tools.iter().map(|t| t.to_json()).collect();
        body.insert("tools".into(), json!(tools));
        let choice = match &req.tool_choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        };
        body.insert("tool_choice".into(), choice);
    }
    if let Some(p) = req.parallel_tool_calls {
        body.insert("parallel_tool_calls".into(), json!(p));
    }
    match &req.output {
        None => {}
        Some(Grammar::JsonObject) => {
            body.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(Grammar::JsonSchema { schema, strict }) => {
            body.insert(
                "response_format".into(),
                json!({"type": "json_schema",
                       "json_schema": {"name": "output", "schema": schema, "strict": strict}}),
            );
        }
        Some(Grammar::Lark(_)) => return Err(unsupported("A Lark grammar", req.output_param)),
        Some(Grammar::Regex(_)) => return Err(unsupported("A regex", req.output_param)),
    }
    if let Some(top) = req.logprobs {
        if chat {
            body.insert("logprobs".into(), json!(true));
            body.insert("top_logprobs".into(), json!(top));
        } else {
            body.insert("logprobs".into(), json!(top));
        }
    }
    let max_tokens = s.max_completion_tokens.or(s.max_tokens);
    let fields: [(&str, Option<Value>); 13] = [
        ("max_tokens", max_tokens.map(|v| json!(v))),
        ("temperature", s.temperature.map(|v| json!(v))),
        ("top_p", s.top_p.map(|v| json!(v))),
        ("top_k", s.top_k.map(|v| json!(v))),
        ("min_p", s.min_p.map(|v| json!(v))),
        ("frequency_penalty", s.frequency_penalty.map(|v| json!(v))),
        ("presence_penalty", s.presence_penalty.map(|v| json!(v))),
        ("repetition_penalty", s.repetition_penalty.map(|v| json!(v))),
        ("logit_bias", s.logit_bias.as_ref().map(|v| json!(v))),
        ("seed", s.seed.map(|v| json!(v))),
        ("stop", s.stop.clone().map(|v| json!(v.into_vec()))),
        ("n", s.n.map(|v| json!(v))),
        ("cache_prompt", s.cache_prompt.map(|v| json!(v))),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    }
    Ok(Outgoing {
        path,
        body: Value::Object(body),
        choices: prompts * n as usize,
        chat,
    })
}

/// Whether the same request gives the same answer (greedy, or seeded): only then may the
/// response cache keep it.
pub fn deterministic(req: &Request) -> bool {
    req.sampling.temperature.is_some_and(|t| t <= 0.0) || req.sampling.seed.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::{Api, Caller};

    fn request(input: Input) -> Request {
        Request::new(Api::Chat, "remote/m", input, Caller::test())
    }

    #[test]
    fn a_conversation_becomes_a_streamed_chat_body() {
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls = Some(vec![json!({"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": {"x": 1}}})]);
        let mut req = request(Input::Chat(vec![ChatMessage::new("user", "hi"), assistant]));
        req.sampling.temperature = Some(0.0);
        req.sampling.max_tokens = Some(8);
        req.sampling.stop = Some(crate::infer::OneOrMany::One("\n".into()));
        req.output = Some(Grammar::JsonObject);
        let out = outgoing(&req, "m").unwrap();
        assert_eq!(out.path, "/chat/completions");
        assert_eq!(out.choices, 1);
        let b = &out.body;
        assert_eq!(b["model"], "m");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(
            b["messages"][1]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(b["max_tokens"], 8);
        assert_eq!(b["stop"], json!(["\n"]));
        assert_eq!(b["response_format"]["type"], "json_object");
        assert!(b.get("top_p").is_none(), "unset fields stay unset");
        assert!(deterministic(&req));
    }

    #[test]
    fn prompts_go_to_completions_and_what_cannot_pass_is_refused() {
        let mut req = request(Input::Prompts(vec!["a".into(), "b".into()]));
        req.sampling.n = Some(2);
        let out = outgoing(&req, "m").unwrap();
        assert_eq!(
            (out.path, out.choices, out.chat),
            ("/completions", 4, false)
        );
        assert!(!deterministic(&req));
        req.output = Some(Grammar::Regex("a+".into()));
        assert!(matches!(
            outgoing(&req, "m"),
            Err(InferError::Invalid { .. })
        ));
        req.output = None;
        req.sampling.n = Some(9);
        assert!(outgoing(&req, "m").is_err());
    }
}
