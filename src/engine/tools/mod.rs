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
//!
//! A forced answer is bounded as well as well-formed: a named function is called once,
//! `required` at most [`MAX_PARALLEL_CALLS`] times, and the arguments have an end where their
//! schema gives none (`constrain::bounded`: limits on strings and arrays, no undeclared
//! properties). Without them a small model could keep calling, never close a string, or keep
//! inventing keys until its context was full. An answer cut short (`max_tokens`) keeps the calls
//! it completed; the unfinished one is dropped, never returned as text.

use serde_json::{json, Value};

use super::constrain::{bounded, rebased, with_layout, Grammar};
use super::template::ChatMessage;

/// The most calls one forced answer (`tool_choice: "required"` with parallel calls) may hold.
pub const MAX_PARALLEL_CALLS: usize = 8;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI sends them as a string).
    pub arguments: String,
}

/// The model's answer split into text and calls.
#[derive(Debug, Clone, Default, PartialEq)]
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

/// The schema of one call to `tool`: `{"name": <its name>, "arguments": <its parameters>}`,
/// the parameters bounded; `base`: where the call schema sits in the grammar's document (its
/// parameters' `$ref`s are rewritten to point there).
fn call_schema(tool: &ToolSpec, arguments_key: &str, base: &str) -> Value {
    let parameters = match &tool.parameters {
        Value::Object(o) if !o.is_empty() => rebased(
            bounded(tool.parameters.clone()),
            &format!("{base}/properties/{arguments_key}"),
        ),
        _ => json!({"type": "object"}),
    };
    json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": false,
    })
}

/// The grammar that makes the output calls (`required`: one, or with `parallel` up to
/// [`MAX_PARALLEL_CALLS`]) or one call of one function (named, whatever `parallel` says), and
/// then the end; None for `auto` and `none`, where the model answers freely.
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
    let alternatives: Vec<Value> = match &chosen[..] {
        [one] => vec![call_schema(one, "arguments", "")],
        many => many
            .iter()
            .enumerate()
            .map(|(i, t)| call_schema(t, "arguments", &format!("/anyOf/{i}")))
            .collect(),
    };
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
    // A named function is one call even with parallel calls allowed: OpenAI's named choice
    // answers with that call alone.
    let start = match choice {
        ToolChoice::Required if parallel => {
            format!("start: call (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
        }
        _ => "start: call".to_string(),
    };
    Some(Grammar::Lark(format!("{start}\ncall: {call}\n")))
}

mod read;
pub use read::{may_be_call, parse};

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn weather() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            strict: false,
        }]
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
        let bound = format!(
            "\"maxLength\":{}",
            crate::engine::constrain::MAX_STRING_CHARS
        );
        assert!(g.contains(&bound), "{g}");
    }

    #[test]
    fn forced_grammars_bound_the_number_of_calls() {
        let tools = weather();
        let start = |choice: ToolChoice, parallel: bool| {
            let Some(Grammar::Lark(g)) =
                forced_grammar(&tools, &choice, parallel, ToolFormat::Hermes)
            else {
                panic!("a Lark grammar")
            };
            g.lines().next().unwrap().to_string()
        };
        let named = || ToolChoice::Function("get_weather".into());
        assert_eq!(start(named(), true), "start: call");
        assert_eq!(start(named(), false), "start: call");
        assert_eq!(start(ToolChoice::Required, false), "start: call");
        assert_eq!(
            start(ToolChoice::Required, true),
            format!("start: call (\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1)
        );
    }
}
