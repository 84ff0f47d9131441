//! Function calling: the model is told its tools, may answer with calls, and those calls are read
//! back out of its text.
//!
//! A template that renders `tools` itself (Qwen, Llama 3.1, Mistral, Hermes) gets them as its
//! `tools` variable and the conversation in Hugging Face's shape. A template that does not
//! (SmolLM2's ChatML, Gemma 3) gets Hermes's convention written into the conversation: the tools
//! in the system prompt, calls as `<tool_call>` blocks, results as `<tool_response>` blocks in a
//! user turn. Calls are parsed from any of the common formats: Hermes/Qwen `<tool_call>` JSON,
//! Mistral `[TOOL_CALLS] [...]`, Llama 3.1 `<|python_tag|>` or plain JSON with `parameters`, and a
//! bare JSON object or array. With `tool_choice` `required` or a named function the output is
//! constrained by a grammar, so the call is always well-formed JSON for the function's parameters.

use serde_json::{json, Value};

use super::constrain::{with_layout, Grammar};
use super::template::ChatMessage;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of its arguments.
    pub parameters: Value,
    pub strict: bool,
}

impl ToolSpec {
    /// OpenAI's wire shape, which Hugging Face templates read too.
    pub fn to_json(&self) -> Value {
        let mut function = json!({"name": self.name, "parameters": self.parameters});
        if let Some(d) = &self.description {
            function["description"] = json!(d);
        }
        json!({"type": "function", "function": function})
    }
}

/// Whether and how the model must call.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// A call read from the model's output.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// The model's answer split into text and calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// How a model writes calls, as its template shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`: Hermes, Qwen, and
    /// Lantern's own convention for templates without tools.
    Hermes,
    /// One JSON object per call, no markers (Llama 3.1/3.2, Mistral's array after `[TOOL_CALLS]`).
    Json,
}

impl ToolFormat {
    pub fn of_template(source: &str, renders_tools: bool) -> Self {
        if !renders_tools || source.contains("<tool_call>") {
            Self::Hermes
        } else {
            Self::Json
        }
    }
}

/// The system-prompt text that teaches a model without a tool-aware template its tools
/// (the text Qwen 2.5's template writes).
fn hermes_system_prompt(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&t.to_json().to_string());
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": \
         <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

fn hermes_call(call: &Value) -> String {
    let function = call.get("function").unwrap_or(call);
    let name = function.get("name").cloned().unwrap_or(Value::Null);
    let arguments = function.get("arguments").cloned().unwrap_or(json!({}));
    format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({"name": name, "arguments": arguments})
    )
}

/// Write Hermes's convention into a conversation whose template knows nothing of tools: the
/// tools into the system message (one is added first when there is none), each assistant's calls
/// into its text, and each run of tool results into one user turn (templates such as Gemma's
/// insist that user and assistant alternate).
pub fn inline_tools(messages: Vec<ChatMessage>, tools: &[ToolSpec]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut messages = messages.into_iter().peekable();
    if !tools.is_empty() {
        let prompt = hermes_system_prompt(tools);
        match messages.next_if(|m| m.role == "system") {
            Some(first) => out.push(ChatMessage::new(
                "system",
                format!("{}\n\n{prompt}", first.content),
            )),
            None => out.push(ChatMessage::new("system", prompt)),
        }
    }
    for m in messages {
        match m.role.as_str() {
            "assistant" if m.tool_calls.is_some() => {
                let mut text = m.content.clone();
                for call in m.tool_calls.iter().flatten() {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&hermes_call(call));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            _ => out.push(ChatMessage::new(m.role, m.content)),
        }
    }
    out
}

/// The schema of one call to `tool`: `{"name": <its name>, "arguments": <its parameters>}`.
fn call_schema(tool: &ToolSpec, arguments_key: &str) -> Value {
    let parameters = match &tool.parameters {
        Value::Object(o) if !o.is_empty() => tool.parameters.clone(),
        _ => json!({"type": "object"}),
    };
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": false,
    })
}

/// The grammar that makes the output a call (`required`) or a call of one function (named);
/// None for `auto` and `none`, where the model answers freely.
pub fn forced_grammar(
    tools: &[ToolSpec],
    choice: &ToolChoice,
    parallel: bool,
    format: ToolFormat,
) -> Option<Grammar> {
    let chosen: Vec<&ToolSpec> = match choice {
        ToolChoice::Auto | ToolChoice::None => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    let strict = chosen.iter().all(|t| t.strict);
    let alternatives: Vec<Value> = chosen.iter().map(|t| call_schema(t, "arguments")).collect();
    let schema = if alternatives.len() == 1 {
        alternatives.into_iter().next().expect("one")
    } else {
        json!({"anyOf": alternatives})
    };
    let schema = with_layout(schema, !strict);
    let call = match format {
        ToolFormat::Hermes => format!("\"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\""),
        ToolFormat::Json => format!("%json {schema}"),
    };
    let start = if parallel {
        "start: call (\"\\n\" call)*"
    } else {
        "start: call"
    };
    Some(Grammar::Lark(format!("{start}\ncall: {call}\n")))
}

/// A call in any of the shapes models write: `{"name", "arguments"|"parameters"}`, possibly under
/// `function`; arguments given as a JSON string are taken as written.
fn call_of(value: &Value, tools: &[ToolSpec]) -> Option<ToolCall> {
    let v = value
        .get("function")
        .filter(|f| f.is_object())
        .unwrap_or(value);
    let name = v.get("name")?.as_str()?;
    if !tools.iter().any(|t| t.name == name) {
        return None;
    }
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall {
        name: name.to_string(),
        arguments,
    })
}

/// Every call in a JSON value: one object or an array of them; None if any part is not a call.
fn calls_of(value: &Value, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    match value {
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|i| call_of(i, tools)).collect()
        }
        Value::Object(_) => call_of(value, tools).map(|c| vec![c]),
        _ => None,
    }
}

/// Text without a Markdown code fence around it.
fn unfenced(text: &str) -> &str {
    let t = text.trim();
    match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.strip_prefix("json").unwrap_or(rest);
            rest.strip_suffix("```").unwrap_or(rest).trim()
        }
        None => t,
    }
}

/// Read calls out of a model's answer. Text outside the calls stays as content; an answer that
/// holds no well-formed call of a declared tool is all content.
pub fn parse(text: &str, tools: &[ToolSpec]) -> Parsed {
    let plain = || Parsed {
        content: text.to_string(),
        calls: Vec::new(),
    };
    if tools.is_empty() {
        return plain();
    }
    // Hermes / Qwen: any number of <tool_call> blocks.
    if text.contains("<tool_call>") {
        let (mut content, mut calls, mut rest) = (String::new(), Vec::new(), text);
        while let Some(start) = rest.find("<tool_call>") {
            content.push_str(&rest[..start]);
            let after = &rest[start + "<tool_call>".len()..];
            let (body, next) = match after.find("</tool_call>") {
                Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
                None => (after, ""),
            };
            match serde_json::from_str::<Value>(unfenced(body))
                .ok()
                .and_then(|v| calls_of(&v, tools))
            {
                Some(c) => calls.extend(c),
                None => return plain(),
            }
            rest = next;
        }
        content.push_str(rest);
        return Parsed {
            content: content.trim().to_string(),
            calls,
        };
    }
    // Mistral's marker, Llama 3.1's python tag, or a bare JSON answer.
    let (content, body) = match text
        .find("[TOOL_CALLS]")
        .map(|i| (i, "[TOOL_CALLS]".len()))
        .or_else(|| {
            text.find("<|python_tag|>")
                .map(|i| (i, "<|python_tag|>".len()))
        }) {
        Some((i, len)) => (text[..i].trim(), &text[i + len..]),
        None => ("", text),
    };
    let body = unfenced(body);
    // Several objects, one per line, are several calls.
    let values: Option<Vec<Value>> = serde_json::from_str::<Value>(body)
        .map(|v| vec![v])
        .or_else(|_| {
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Value>(l.trim().trim_end_matches(';')))
                .collect::<Result<Vec<_>, _>>()
        })
        .ok();
    let calls: Option<Vec<ToolCall>> = values.and_then(|vs| {
        vs.iter()
            .map(|v| calls_of(v, tools))
            .collect::<Option<Vec<_>>>()
            .map(|c| c.concat())
    });
    match calls {
        Some(calls) if !calls.is_empty() => Parsed {
            content: content.to_string(),
            calls,
        },
        _ => plain(),
    }
}

/// Could text that begins so still turn out to be a call? A stream holds such text back until
/// the answer is whole, so a call never reaches the client as content.
pub fn may_be_call(text_so_far: &str) -> bool {
    let t = text_so_far.trim_start();
    if t.is_empty() {
        return true;
    }
    [
        "<tool_call>",
        "[TOOL_CALLS]",
        "<|python_tag|>",
        "```",
        "{",
        "[",
    ]
    .iter()
    .any(|m| m.starts_with(t) || t.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            strict: false,
        }]
    }

    fn call(args: &str) -> ToolCall {
        ToolCall {
            name: "get_weather".into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn parses_the_common_formats() {
        let tools = weather();
        let cases = [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            "```json\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}}\n```",
        ];
        for text in cases {
            let p = parse(text, &tools);
            assert_eq!(p.calls.len(), 1, "{text}");
            let args: Value = serde_json::from_str(&p.calls[0].arguments).unwrap();
            assert_eq!(args, json!({"city": "Paris"}), "{text}");
            assert_eq!(p.content, "", "{text}");
        }
    }

    #[test]
    fn several_calls_and_surrounding_text() {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        let p = parse(text, &weather());
        assert_eq!(
            p.calls,
            vec![call("{\"city\":\"Paris\"}"), call("{\"city\":\"Oslo\"}")]
        );
        assert_eq!(p.content, "Let me check.");
    }

    #[test]
    fn what_is_not_a_call_stays_text() {
        for text in [
            "The weather is fine.",
            "{\"name\": \"launch_rockets\", \"arguments\": {}}",
            "<tool_call>\nnot json\n</tool_call>",
            "{\"city\": \"Paris\"}",
        ] {
            let p = parse(text, &weather());
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content, text);
        }
        assert!(parse("{\"name\": \"get_weather\"}", &[]).calls.is_empty());
    }

    #[test]
    fn holds_back_only_what_may_become_a_call() {
        for t in [
            "",
            "  ",
            "<tool",
            "<tool_call>\n{\"na",
            "{",
            "[TOOL",
            "```j",
        ] {
            assert!(may_be_call(t), "{t:?}");
        }
        for t in ["Hello", "The answer", "<b>bold"] {
            assert!(!may_be_call(t), "{t:?}");
        }
    }

    #[test]
    fn a_template_without_tools_gets_hermes_in_the_conversation() {
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls = Some(vec![
            json!({"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
        ]);
        let mut result = ChatMessage::new("tool", "18C");
        result.tool_call_id = Some("c1".into());
        let out = inline_tools(
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Weather in Paris?"),
                assistant,
                result.clone(),
                result,
            ],
            &weather(),
        );
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0].content.contains("\"get_weather\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n18C\n</tool_response>\n<tool_response>\n18C\n</tool_response>"
        );
        let no_system = inline_tools(vec![ChatMessage::new("user", "hi")], &weather());
        assert_eq!(no_system[0].role, "system");
        assert_eq!(no_system[1].content, "hi");
    }

    #[test]
    fn forced_grammars_name_the_function() {
        let tools = weather();
        assert_eq!(
            forced_grammar(&tools, &ToolChoice::Auto, true, ToolFormat::Hermes),
            None
        );
        let Some(Grammar::Lark(g)) = forced_grammar(
            &tools,
            &ToolChoice::Function("get_weather".into()),
            false,
            ToolFormat::Hermes,
        ) else {
            panic!("a Lark grammar")
        };
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(
            g.contains("<tool_call>") && g.contains("\"const\":\"get_weather\""),
            "{g}"
        );
    }
}
