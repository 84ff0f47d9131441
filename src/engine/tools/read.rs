//! Calls read back out of a model's answer, in the shapes models write them: Hermes/Qwen
//! `<tool_call>` blocks, Mistral's `[TOOL_CALLS]`, Llama 3.1's `<|python_tag|>`, bare or fenced
//! JSON, one object per line. An answer cut short keeps the calls it completed.

use serde_json::Value;

use super::{Parsed, ToolCall, ToolSpec, CLOSE, OPEN};

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

/// The calls in one piece of text (a block's body, a line): one JSON object or an array of them,
/// possibly in a code fence.
fn calls_in(text: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    serde_json::from_str::<Value>(unfenced(text))
        .ok()
        .and_then(|v| calls_of(&v, tools))
}

/// A block's body without the start of a closing tag that `max_tokens` cut off.
fn without_partial_close(body: &str) -> &str {
    let t = body.trim_end();
    (1..CLOSE.len())
        .rev()
        .find_map(|n| t.strip_suffix(&CLOSE[..n]))
        .unwrap_or(t)
}

/// Is `text` the start of a `<tool_call>` tag and nothing more (`max_tokens` cut the tag)?
fn cut_open_tag(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty() && t.len() < OPEN.len() && OPEN.starts_with(t)
}

/// One `<tool_call>` block, read from just after its opening tag.
enum Block<'a> {
    /// Its calls, and the text after it.
    Calls(Vec<ToolCall>, &'a str),
    /// A block without a call, and the text after it.
    NotACall(&'a str),
    /// The answer ends inside it: it was cut short.
    Unfinished,
}

/// Read one block. Its JSON is read first, so a `</tool_call>` inside one of its strings (small
/// models write one there) does not end it; a body that is not JSON to begin with (a code fence)
/// ends at the first closing tag. A whole JSON value whose closing tag is missing or was cut
/// ends the answer.
fn block<'a>(after: &'a str, tools: &[ToolSpec]) -> Block<'a> {
    let body = after.trim_start();
    let mut values = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => {
            let tail = body[values.byte_offset()..].trim_start();
            let next = match tail.strip_prefix(CLOSE) {
                Some(next) => Some(next),
                None => CLOSE.starts_with(tail.trim_end()).then_some(""),
            };
            if let Some(next) = next {
                return match calls_of(&v, tools) {
                    Some(c) => Block::Calls(c, next),
                    None => Block::NotACall(next),
                };
            }
        }
        Some(Err(e)) if e.is_eof() => return Block::Unfinished,
        _ => {}
    }
    match after.find(CLOSE) {
        Some(end) => {
            let next = &after[end + CLOSE.len()..];
            match calls_in(&after[..end], tools) {
                Some(c) => Block::Calls(c, next),
                None => Block::NotACall(next),
            }
        }
        None => match calls_in(without_partial_close(after), tools) {
            Some(c) => Block::Calls(c, ""),
            None => Block::Unfinished,
        },
    }
}

/// Hermes / Qwen: any number of `<tool_call>` blocks, text around them. An unfinished block (the
/// answer was cut short) is dropped, and so is a last block without a call after complete ones;
/// any other block without a call makes the answer text (None).
fn hermes_calls(text: &str, tools: &[ToolSpec]) -> Option<Parsed> {
    let (mut content, mut calls, mut rest) = (String::new(), Vec::new(), text);
    while let Some(start) = rest.find(OPEN) {
        content.push_str(&rest[..start]);
        rest = match block(&rest[start + OPEN.len()..], tools) {
            Block::Calls(c, next) => {
                calls.extend(c);
                next
            }
            Block::Unfinished => "",
            Block::NotACall(next) if !calls.is_empty() && !next.contains(OPEN) => next,
            Block::NotACall(_) => return None,
        };
    }
    if !cut_open_tag(rest) {
        content.push_str(rest);
    }
    Some(Parsed {
        content: content.trim().to_string(),
        calls,
    })
}

/// Several objects, one per line, are several calls. The last line may be unfinished (the answer
/// was cut short) and is dropped when complete calls came before it.
fn line_calls(body: &str, tools: &[ToolSpec]) -> Option<Vec<ToolCall>> {
    let lines: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut calls = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match calls_in(line.trim_end_matches(';'), tools) {
            Some(c) => calls.extend(c),
            None if i + 1 == lines.len() && !calls.is_empty() => {}
            None => return None,
        }
    }
    Some(calls)
}

/// Read calls out of a model's answer. Text outside the calls stays as content; an answer that
/// holds no well-formed call of a declared tool is all content, except that an unfinished
/// `<tool_call>` block is never content. An answer cut short keeps the calls it completed.
pub fn parse(text: &str, tools: &[ToolSpec]) -> Parsed {
    let plain = || Parsed {
        content: text.to_string(),
        calls: Vec::new(),
    };
    if tools.is_empty() {
        return plain();
    }
    if text.contains(OPEN) {
        return hermes_calls(text, tools).unwrap_or_else(plain);
    }
    if cut_open_tag(text) {
        return Parsed::default();
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
    let calls = match serde_json::from_str::<Value>(body) {
        Ok(v) => calls_of(&v, tools),
        Err(_) => line_calls(body, tools),
    };
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
    use crate::engine::tools::tests::weather;
    use serde_json::json;

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

    const PARIS: &str =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    #[test]
    fn an_answer_cut_short_keeps_its_complete_calls() {
        let tools = weather();
        let paris = vec![call("{\"city\":\"Paris\"}")];
        for (cut, content) in [
            // Inside the second call's arguments, its name, its opening tag.
            (
                "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Os",
                "",
            ),
            ("\n<tool_call>\n{\"na", ""),
            ("\n<tool_call>", ""),
            ("\n<tool_", ""),
            ("\n<", ""),
            ("\n<tool_call>\n", ""),
            // A second block that closed without a call after a complete one.
            ("\n<tool_call>\n{\"name\": \"get_wea\n</tool_call>", ""),
            ("\n<tool_call>\nnot json\n</tool_call>\nSorry.", "Sorry."),
        ] {
            let p = parse(&format!("{PARIS}{cut}"), &tools);
            assert_eq!(p.calls, paris, "{cut:?}");
            assert_eq!(p.content, content, "{cut:?}");
            let p = parse(&format!("Let me check.\n{PARIS}{cut}"), &tools);
            assert_eq!(p.calls, paris, "{cut:?}");
            assert!(p.content.starts_with("Let me check."), "{cut:?}");
            assert!(!p.content.contains("tool_call"), "{cut:?}");
        }
        // A call whose JSON is whole keeps it though its closing tag was cut.
        for cut in ["", "\n", "\n<", "\n</tool_", "\n</tool_call"] {
            let whole = &PARIS[..PARIS.len() - CLOSE.len()];
            let p = parse(&format!("{whole}{cut}"), &tools);
            assert_eq!(p.calls, paris, "{cut:?}");
            assert_eq!(p.content, "");
        }
    }

    #[test]
    fn an_unfinished_block_alone_is_neither_call_nor_content() {
        let tools = weather();
        for text in [
            "<",
            "<tool_",
            "<tool_call>",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}",
        ] {
            assert_eq!(parse(text, &tools), Parsed::default(), "{text:?}");
        }
        let p = parse("Let me check.\n<tool_call>\n{\"na", &tools);
        assert_eq!(p.content, "Let me check.");
        assert!(p.calls.is_empty());
        // A block without a call before another one is not a cut: the answer is text.
        let text = format!("<tool_call>\nnot json\n</tool_call>\n{PARIS}");
        assert_eq!(parse(&text, &tools).content, text);
    }

    #[test]
    fn a_closing_tag_inside_a_string_does_not_end_the_call() {
        let tools = weather();
        // SmolLM2's answer for one seed, under the forced grammar.
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"<x()}}</tool_call>  # Output: {'city': \"}}\n</tool_call>";
        let p = parse(text, &tools);
        assert_eq!(
            p.calls,
            vec![call(
                "{\"city\":\"<x()}}</tool_call>  # Output: {'city': \"}"
            )]
        );
        assert_eq!(p.content, "");
        // Cut inside such a string: unfinished, so dropped with all it holds.
        let cut = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"<x()}}</tool_call> more";
        for (text, calls) in [(cut.to_string(), 0), (format!("{PARIS}\n{cut}"), 1)] {
            let p = parse(&text, &tools);
            assert_eq!(p.calls.len(), calls, "{text}");
            assert_eq!(p.content, "", "{text}");
        }
    }

    #[test]
    fn json_lines_cut_short_keep_their_complete_calls() {
        let tools = weather();
        let line = |city: &str| {
            format!("{{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"{city}\"}}}}")
        };
        let text = format!(
            "{}\n{}\n{{\"name\": \"get_weather\", \"param",
            line("Paris"),
            line("Oslo")
        );
        let p = parse(&text, &tools);
        assert_eq!(
            p.calls,
            vec![call("{\"city\":\"Paris\"}"), call("{\"city\":\"Oslo\"}")]
        );
        assert_eq!(p.content, "");
        let p = parse(&format!("<|python_tag|>{}\n{{\"na", line("Paris")), &tools);
        assert_eq!(p.calls, vec![call("{\"city\":\"Paris\"}")]);
        // Without a complete call the answer stays text, as does one whose first line is no call.
        for text in [
            "{\"name\": \"get_weather\", \"param".to_string(),
            format!("Here you go:\n{}\n{{\"na", line("Paris")),
        ] {
            let p = parse(&text, &tools);
            assert!(p.calls.is_empty(), "{text}");
            assert_eq!(p.content, text);
        }
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
}
