//! Tools on the one path: the functions a request declares, checked once for every API; the
//! grammar a required or named call is held to; and the hold on streamed text that may still
//! turn into a call.

use super::error::InferError;
use crate::engine::constrain::Grammar;
use crate::engine::tools::{ToolChoice, ToolSpec};
use crate::scheduler::EngineHandle;

/// What a request asked of tools, checked.
#[derive(Debug, Clone)]
pub struct ToolsRequest {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

impl ToolsRequest {
    /// Are calls read out of the answer? Not with `tool_choice: "none"`.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None && !self.specs.is_empty()
    }

    /// The grammar a `required` or named choice holds the answer to, in the model's own format.
    pub fn forced_grammar(&self, engine: &EngineHandle) -> Option<Grammar> {
        crate::engine::tools::forced_grammar(
            &self.specs,
            &self.choice,
            self.parallel,
            engine.model.tool_format(),
        )
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Check the tools, the choice and `parallel_tool_calls` together; no tools and no demand for
/// a call is no tools at all.
pub fn check_tools(
    specs: Vec<ToolSpec>,
    choice: ToolChoice,
    parallel: Option<bool>,
) -> Result<Option<ToolsRequest>, InferError> {
    for (i, spec) in specs.iter().enumerate() {
        if !valid_name(&spec.name) {
            return Err(InferError::invalid(
                format!(
                    "tools[{i}] name `{}` must be 1-64 letters, digits, `_`, `-` or `.`",
                    spec.name
                ),
                format!("tools[{i}]"),
            ));
        }
        if specs[..i].iter().any(|s| s.name == spec.name) {
            return Err(InferError::invalid(
                format!("two tools are named `{}`", spec.name),
                "tools",
            ));
        }
        if !spec.parameters.is_object() {
            return Err(InferError::invalid(
                format!("tools[{i}]: the parameters must be a JSON Schema object"),
                format!("tools[{i}]"),
            ));
        }
    }
    if let ToolChoice::Function(name) = &choice {
        if !specs.iter().any(|s| &s.name == name) {
            return Err(InferError::invalid(
                format!("`tool_choice` names `{name}`, which is not in `tools`"),
                "tool_choice",
            ));
        }
    }
    if specs.is_empty() {
        return match choice {
            ToolChoice::Auto | ToolChoice::None => Ok(None),
            _ => Err(InferError::invalid(
                "`tool_choice` needs `tools`",
                "tool_choice",
            )),
        };
    }
    Ok(Some(ToolsRequest {
        specs,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// A stream's text while it may still turn out to be a tool call: held until it is known not to
/// be one (then it flows on as text) or the answer ends (then it is read for calls).
#[derive(Debug, Default)]
pub struct CallHold {
    holding: bool,
    held: String,
}

impl CallHold {
    /// `tools`: the request gave tools whose calls are read out of the answer.
    pub fn new(tools: bool) -> Self {
        Self {
            holding: tools,
            held: String::new(),
        }
    }

    /// A piece of text in; the text to send now, if any.
    pub fn push(&mut self, text: String) -> Option<String> {
        if !self.holding {
            return Some(text);
        }
        self.held.push_str(&text);
        if crate::engine::tools::may_be_call(&self.held) {
            return None;
        }
        self.holding = false;
        Some(std::mem::take(&mut self.held))
    }

    /// The answer ended: the held text, when some is left to read for calls.
    pub fn finish(&mut self) -> Option<String> {
        (self.holding && !self.held.is_empty()).then(|| std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: None,
            parameters: json!({"type": "object"}),
            strict: false,
        }
    }

    #[test]
    fn choices() {
        let r = check_tools(vec![tool("f")], ToolChoice::Auto, None)
            .unwrap()
            .unwrap();
        assert!(r.parallel && r.parses());
        let r = check_tools(vec![tool("f")], ToolChoice::None, None)
            .unwrap()
            .unwrap();
        assert!(!r.parses());
        let r = check_tools(
            vec![tool("f")],
            ToolChoice::Function("f".into()),
            Some(false),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.choice, ToolChoice::Function("f".into()));
        assert!(!r.parallel);
        assert!(check_tools(vec![], ToolChoice::Auto, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_tools_are_clear_errors() {
        let mut not_schema = tool("f");
        not_schema.parameters = json!("x");
        for (tools, choice, needle) in [
            (
                vec![tool("f")],
                ToolChoice::Function("g".into()),
                "not in `tools`",
            ),
            (vec![tool("f"), tool("f")], ToolChoice::Auto, "two tools"),
            (vec![tool("bad name")], ToolChoice::Auto, "letters"),
            (vec![], ToolChoice::Required, "needs `tools`"),
            (vec![not_schema], ToolChoice::Auto, "JSON Schema"),
        ] {
            let e = check_tools(tools, choice, None).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn text_is_held_only_while_it_may_be_a_call() {
        let mut hold = CallHold::new(true);
        assert_eq!(hold.push("<tool".into()), None);
        assert_eq!(hold.push("_call>".into()), None);
        assert_eq!(hold.finish().as_deref(), Some("<tool_call>"));
        let mut hold = CallHold::new(true);
        assert_eq!(hold.push("{".into()), None);
        assert_eq!(hold.push("Hi".into()), None);
        let mut prose = CallHold::new(true);
        assert_eq!(prose.push("Hello".into()).as_deref(), Some("Hello"));
        assert_eq!(prose.push(" there".into()).as_deref(), Some(" there"));
        assert_eq!(prose.finish(), None);
        assert_eq!(CallHold::new(false).push("{".into()).as_deref(), Some("{"));
    }
}
