//! One logical request written in each of the four wire formats Lantern speaks (OpenAI's chat,
//! OpenAI's Responses, Ollama's `/api/chat`, Anthropic's Messages), and each format's answer,
//! whole or streamed, read back into one shape: what `tests/wire_formats.rs` compares.
//!
//! Included by that test alone (`#[path]`), not through `common/mod.rs`: no other test binary
//! compiles it.

use serde_json::{json, Value};

use crate::common::server::Server;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Chat,
    Responses,
    Ollama,
    Messages,
}

impl Wire {
    pub const ALL: [Wire; 4] = [Wire::Chat, Wire::Responses, Wire::Ollama, Wire::Messages];

    pub fn path(self) -> &'static str {
        match self {
            Wire::Chat => "/v1/chat/completions",
            Wire::Responses => "/v1/responses",
            Wire::Ollama => "/api/chat",
            Wire::Messages => "/v1/messages",
        }
    }

    /// The name the request log and `/metrics` give this route's requests.
    pub fn api(self) -> &'static str {
        match self {
            Wire::Chat => "chat",
            Wire::Responses => "responses",
            Wire::Ollama => "ollama_chat",
            Wire::Messages => "messages",
        }
    }
}

/// A function the answer must call.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Value,
}

/// One logical request: greedy (temperature 0) always, the rest optional.
#[derive(Clone, Debug)]
pub struct Ask {
    /// `(role, text)`: system, user or assistant.
    pub messages: Vec<(&'static str, String)>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    /// Forced: the answer is a call of this function.
    pub tool: Option<Tool>,
    /// A JSON Schema the text must match.
    pub schema: Option<Value>,
    pub stream: bool,
}

impl Ask {
    pub fn new(user: &str, max_tokens: u32) -> Self {
        Self {
            messages: vec![("user", user.to_string())],
            max_tokens,
            stop: Vec::new(),
            tool: None,
            schema: None,
            stream: false,
        }
    }

    pub fn with_system(mut self, system: &str) -> Self {
        self.messages.insert(0, ("system", system.to_string()));
        self
    }

    pub fn with_stop(mut self, stop: &str) -> Self {
        self.stop.push(stop.to_string());
        self
    }

    pub fn with_tool(mut self, tool: Tool) -> Self {
        self.tool = Some(tool);
        self
    }

    pub fn with_schema(mut self, schema: Value) -> Self {
        self.schema = Some(schema);
        self
    }

    pub fn streamed(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    /// The request body in `wire`'s format.
    pub fn body(&self, wire: Wire) -> Value {
        let turns = |keep_system: bool| -> Vec<Value> {
            self.messages
                .iter()
                .filter(|(role, _)| keep_system || *role != "system")
                .map(|(role, text)| json!({"role": role, "content": text}))
                .collect()
        };
        let mut b = json!({"model": "smollm2", "stream": self.stream});
        match wire {
            Wire::Chat => {
                b["messages"] = json!(turns(true));
                b["max_tokens"] = json!(self.max_tokens);
                b["temperature"] = json!(0);
                if !self.stop.is_empty() {
                    b["stop"] = json!(self.stop);
                }
                if let Some(t) = &self.tool {
                    b["tools"] = json!([{"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters}}]);
                    b["tool_choice"] = json!({"type": "function", "function": {"name": t.name}});
                    b["parallel_tool_calls"] = json!(false);
                }
                if let Some(s) = &self.schema {
                    b["response_format"] = json!({"type": "json_schema",
                        "json_schema": {"name": "answer", "schema": s, "strict": true}});
                }
                if self.stream {
                    b["stream_options"] = json!({"include_usage": true});
                }
            }
            Wire::Responses => {
                // Responses has no `stop`: the stop row leaves this format out.
                assert!(
                    self.stop.is_empty(),
                    "the Responses API has no stop sequences"
                );
                b["input"] = json!(turns(true));
                b["max_output_tokens"] = json!(self.max_tokens);
                b["temperature"] = json!(0);
                if let Some(t) = &self.tool {
                    b["tools"] = json!([{"type": "function", "name": t.name,
                        "description": t.description, "parameters": t.parameters}]);
                    b["tool_choice"] = json!({"type": "function", "name": t.name});
                    b["parallel_tool_calls"] = json!(false);
                }
                if let Some(s) = &self.schema {
                    b["text"] = json!({"format": {"type": "json_schema", "name": "answer",
                        "schema": s, "strict": true}});
                }
            }
            Wire::Ollama => {
                // Ollama has no `tool_choice`: the forced-call row leaves this format out.
                assert!(self.tool.is_none(), "Ollama cannot force a tool call");
                b["messages"] = json!(turns(true));
                // Ollama's own defaults (repeat_penalty 1.1) would change a greedy answer.
                b["options"] = json!({"num_predict": self.max_tokens, "temperature": 0, "repeat_penalty": 1.0});
                if !self.stop.is_empty() {
                    b["options"]["stop"] = json!(self.stop);
                }
                if let Some(s) = &self.schema {
                    b["format"] = s.clone();
                }
            }
            Wire::Messages => {
                // Messages has no JSON-schema output (only forced tools): the schema row
                // leaves this format out.
                assert!(
                    self.schema.is_none(),
                    "Anthropic's API has no JSON-schema output"
                );
                b["messages"] = json!(turns(false));
                if let Some((_, system)) = self.messages.iter().find(|(r, _)| *r == "system") {
                    b["system"] = json!(system);
                }
                b["max_tokens"] = json!(self.max_tokens);
                b["temperature"] = json!(0);
                if !self.stop.is_empty() {
                    b["stop_sequences"] = json!(self.stop);
                }
                if let Some(t) = &self.tool {
                    b["tools"] = json!([{"name": t.name, "description": t.description,
                        "input_schema": t.parameters}]);
                    b["tool_choice"] =
                        json!({"type": "tool", "name": t.name, "disable_parallel_tool_use": true});
                }
            }
        }
        b
    }
}

/// How an answer ended, in every format's words: `stop` (end of turn, a stop string), `length`
/// (max tokens), `tool` (it called a function).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Tool,
}

/// A call as the answer made it: the function and its arguments as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: Value,
}

/// An answer in any format, as one shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    pub calls: Vec<Call>,
    pub finish: Finish,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One event of a stream: its SSE `event:` name (empty for NDJSON lines and unnamed SSE) and
/// its data (`[DONE]` as a string).
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// What came back: the status, and the body (a whole answer or an error) or the stream's events.
#[derive(Debug)]
pub struct Sent {
    pub status: u16,
    pub body: Value,
    pub events: Vec<Event>,
}

/// The request, not yet read: for a stream that the test drops half-way.
pub async fn open(
    s: &Server,
    wire: Wire,
    ask: &Ask,
    session: &str,
    cache_control: &str,
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}{}", s.base, wire.path()))
        .header("x-session-id", session)
        .json(&ask.body(wire));
    if !cache_control.is_empty() {
        r = r.header("cache-control", cache_control);
    }
    if wire == Wire::Messages {
        r = r.header("anthropic-version", "2023-06-01");
    }
    r.send().await.unwrap()
}

/// Send `ask` in `wire`'s format as `session`, read it to the end.
pub async fn send(s: &Server, wire: Wire, ask: &Ask, session: &str, cache_control: &str) -> Sent {
    let r = open(s, wire, ask, session, cache_control).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let json =
        |t: &str| -> Value { serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t:?}")) };
    if !ask.stream || status != 200 {
        return Sent {
            status,
            body: json(&text),
            events: Vec::new(),
        };
    }
    let events = if wire == Wire::Ollama {
        text.lines()
            .map(|l| Event {
                name: String::new(),
                data: json(l),
            })
            .collect()
    } else {
        // One `data:` line a frame, as every route here writes them; comment-only frames
        // (keep-alives) carry none.
        text.split("\n\n")
            .filter_map(|frame| {
                let field = |k: &str| frame.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
                let data = field("data:")?;
                Some(Event {
                    name: field("event:").unwrap_or_default().to_string(),
                    data: if data == "[DONE]" {
                        json!(data)
                    } else {
                        json(data)
                    },
                })
            })
            .collect()
    };
    Sent {
        status,
        body: Value::Null,
        events,
    }
}

/// Send and read back, asserting success.
pub async fn ask(s: &Server, wire: Wire, ask: &Ask, session: &str, cache_control: &str) -> Answer {
    let sent = send(s, wire, ask, session, cache_control).await;
    assert_eq!(sent.status, 200, "{wire:?}: {}", sent.body);
    read(wire, &sent)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn parsed(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}")),
        other => other.clone(),
    }
}

/// A successful answer, whole or streamed, in the common shape.
pub fn read(wire: Wire, sent: &Sent) -> Answer {
    match (wire, sent.events.is_empty()) {
        (Wire::Chat, true) => chat(&sent.body),
        (Wire::Chat, false) => chat_stream(&sent.events),
        (Wire::Responses, true) => responses(&sent.body),
        (Wire::Responses, false) => responses_stream(&sent.events),
        (Wire::Ollama, true) => ollama(&sent.body, &sent.body["message"]["content"]),
        (Wire::Ollama, false) => ollama_stream(&sent.events),
        (Wire::Messages, true) => messages(&sent.body),
        (Wire::Messages, false) => messages_stream(&sent.events),
    }
}

fn chat(b: &Value) -> Answer {
    let c = &b["choices"][0];
    let calls = c["message"]["tool_calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Answer {
        text: c["message"]["content"].as_str().unwrap_or_default().into(),
        calls: calls
            .iter()
            .map(|t| Call {
                name: t["function"]["name"].as_str().unwrap().into(),
                arguments: parsed(&t["function"]["arguments"]),
            })
            .collect(),
        finish: match c["finish_reason"].as_str() {
            Some("stop") => Finish::Stop,
            Some("length") => Finish::Length,
            Some("tool_calls") => Finish::Tool,
            other => panic!("finish_reason {other:?}: {b}"),
        },
        prompt_tokens: u(&b["usage"]["prompt_tokens"]),
        completion_tokens: u(&b["usage"]["completion_tokens"]),
    }
}

fn chat_stream(events: &[Event]) -> Answer {
    let (last, chunks) = events.split_last().unwrap();
    assert_eq!(last.data, "[DONE]");
    let (mut text, mut calls, mut finish) = (String::new(), Vec::<(String, String)>::new(), None);
    for c in chunks.iter().filter_map(|e| e.data["choices"].get(0)) {
        text.push_str(c["delta"]["content"].as_str().unwrap_or_default());
        for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                calls.push(Default::default());
            }
            if let Some(n) = t["function"]["name"].as_str() {
                calls[i].0 = n.into();
            }
            calls[i].1 += t["function"]["arguments"].as_str().unwrap_or_default();
        }
        if !c["finish_reason"].is_null() {
            finish = Some(c["finish_reason"].clone());
        }
    }
    let usage = &chunks.last().unwrap().data["usage"];
    let mut whole = json!({"choices": [{"message": {"content": text}, "finish_reason": finish}],
                           "usage": usage});
    if !calls.is_empty() {
        whole["choices"][0]["message"]["tool_calls"] = calls
            .into_iter()
            .map(|(name, args)| json!({"function": {"name": name, "arguments": args}}))
            .collect();
    }
    chat(&whole)
}

fn responses(b: &Value) -> Answer {
    let (mut text, mut calls) = (String::new(), Vec::new());
    for item in b["output"].as_array().unwrap() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().unwrap() {
                    text.push_str(part["text"].as_str().unwrap());
                }
            }
            Some("function_call") => calls.push(Call {
                name: item["name"].as_str().unwrap().into(),
                arguments: parsed(&item["arguments"]),
            }),
            other => panic!("output item {other:?}: {b}"),
        }
    }
    let finish = match (b["status"].as_str(), calls.is_empty()) {
        (_, false) => Finish::Tool,
        (Some("completed"), true) => Finish::Stop,
        (Some("incomplete"), true) => Finish::Length,
        (other, _) => panic!("status {other:?}: {b}"),
    };
    Answer {
        text,
        calls,
        finish,
        prompt_tokens: u(&b["usage"]["input_tokens"]),
        completion_tokens: u(&b["usage"]["output_tokens"]),
    }
}

fn responses_stream(events: &[Event]) -> Answer {
    for e in events {
        assert_eq!(e.data["type"].as_str(), Some(e.name.as_str()), "{e:?}");
    }
    let last = events.last().unwrap();
    assert!(
        matches!(
            last.name.as_str(),
            "response.completed" | "response.incomplete"
        ),
        "{last:?}"
    );
    let whole = responses(&last.data["response"]);
    let deltas: String = events
        .iter()
        .filter(|e| e.name == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        deltas, whole.text,
        "the deltas add up to the final response"
    );
    whole
}

fn ollama(last: &Value, content: &Value) -> Answer {
    assert_eq!(last["done"], true, "{last}");
    let calls: Vec<Call> = last["message"]["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Call {
            name: t["function"]["name"].as_str().unwrap().into(),
            arguments: t["function"]["arguments"].clone(),
        })
        .collect();
    let finish = match (last["done_reason"].as_str(), calls.is_empty()) {
        (_, false) => Finish::Tool,
        (Some("stop"), true) => Finish::Stop,
        (Some("length"), true) => Finish::Length,
        (other, _) => panic!("done_reason {other:?}: {last}"),
    };
    Answer {
        text: content.as_str().unwrap_or_default().into(),
        calls,
        finish,
        prompt_tokens: u(&last["prompt_eval_count"]),
        completion_tokens: u(&last["eval_count"]),
    }
}

fn ollama_stream(events: &[Event]) -> Answer {
    let (last, pieces) = events.split_last().unwrap();
    let text: String = pieces
        .iter()
        .map(|e| e.data["message"]["content"].as_str().unwrap_or_default())
        .collect();
    let mut last = last.data.clone();
    if let Some(calls) = pieces
        .iter()
        .find_map(|e| e.data["message"].get("tool_calls"))
    {
        last["message"]["tool_calls"] = calls.clone();
    }
    ollama(&last, &json!(text))
}

fn messages(b: &Value) -> Answer {
    assert_eq!(
        (b["type"].as_str(), b["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert!(b["id"].as_str().unwrap().starts_with("msg_"), "{b}");
    let (mut text, mut calls) = (String::new(), Vec::new());
    for block in b["content"].as_array().unwrap() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap()),
            Some("tool_use") => {
                assert!(
                    block["id"].as_str().unwrap().starts_with("toolu_"),
                    "{block}"
                );
                calls.push(Call {
                    name: block["name"].as_str().unwrap().into(),
                    arguments: parsed(&block["input"]),
                });
            }
            other => panic!("content block {other:?}: {b}"),
        }
    }
    let finish = match b["stop_reason"].as_str() {
        Some("end_turn" | "stop_sequence") => Finish::Stop,
        Some("max_tokens") => Finish::Length,
        Some("tool_use") => Finish::Tool,
        other => panic!("stop_reason {other:?}: {b}"),
    };
    let usage = &b["usage"];
    // Anthropic counts prompt tokens read from or written to a cache apart from `input_tokens`.
    let prompt = [
        "input_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ]
    .iter()
    .map(|k| usage[*k].as_u64().unwrap_or(0))
    .sum();
    Answer {
        text,
        calls,
        finish,
        prompt_tokens: prompt,
        completion_tokens: u(&usage["output_tokens"]),
    }
}

/// Anthropic's stream, its order checked: `message_start`, each block's start, deltas and stop,
/// `message_delta`, `message_stop` (pings anywhere after the start).
fn messages_stream(events: &[Event]) -> Answer {
    let events: Vec<&Event> = events.iter().filter(|e| e.name != "ping").collect();
    for e in &events {
        assert_eq!(e.data["type"].as_str(), Some(e.name.as_str()), "{e:?}");
    }
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(
        &names[names.len() - 2..],
        ["message_delta", "message_stop"],
        "{names:?}"
    );
    let mut message = events[0].data["message"].clone();
    assert_eq!(message["content"], json!([]), "{message}");
    let mut open: Option<(usize, Value, String)> = None;
    let mut blocks = Vec::new();
    for e in &events[1..events.len() - 2] {
        let d = &e.data;
        match (e.name.as_str(), &mut open) {
            ("content_block_start", None) => {
                assert_eq!(d["index"], blocks.len(), "{d}");
                open = Some((blocks.len(), d["content_block"].clone(), String::new()));
            }
            ("content_block_delta", Some((index, block, buf))) => {
                assert_eq!(d["index"], *index, "{d}");
                match (block["type"].as_str(), d["delta"]["type"].as_str()) {
                    (Some("text"), Some("text_delta")) => {
                        buf.push_str(d["delta"]["text"].as_str().unwrap())
                    }
                    (Some("tool_use"), Some("input_json_delta")) => {
                        buf.push_str(d["delta"]["partial_json"].as_str().unwrap())
                    }
                    other => panic!("delta {other:?} in {block}: {d}"),
                }
            }
            ("content_block_stop", Some((index, block, buf))) => {
                assert_eq!(d["index"], *index, "{d}");
                if block["type"] == "text" {
                    block["text"] = json!(buf);
                } else {
                    assert_eq!(block["input"], json!({}), "the input comes as deltas");
                    block["input"] =
                        serde_json::from_str(buf).unwrap_or_else(|e| panic!("{e}: {buf}"));
                }
                blocks.push(block.clone());
                open = None;
            }
            (name, _) => panic!("{name} out of order in {names:?}"),
        }
    }
    assert!(open.is_none(), "a block was never stopped: {names:?}");
    let delta = &events[events.len() - 2].data;
    message["content"] = json!(blocks);
    message["stop_reason"] = delta["delta"]["stop_reason"].clone();
    message["stop_sequence"] = delta["delta"]["stop_sequence"].clone();
    message["usage"]["output_tokens"] = delta["usage"]["output_tokens"].clone();
    messages(&message)
}
