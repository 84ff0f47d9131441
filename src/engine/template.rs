//! Chat templates from GGUF metadata, rendered in a sandboxed minijinja.
//!
//! Templates come with downloaded models, so they are untrusted code: the environment has no
//! loader (no file access), a fuel limit bounds execution, and every failure is an error that says
//! what went wrong. Rendering matches Hugging Face's jinja2 setup (`trim_blocks`,
//! `lstrip_blocks`, Python string methods through minijinja-contrib's pycompat).

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Serialize};

use super::gguf::GgufFile;

/// Enough for any real template on long conversations; stops a template that loops forever.
const FUEL: u64 = 5_000_000;

/// The most text a template may write: far past any real conversation's prompt, short of what
/// a template written to exhaust memory would try.
pub const MAX_OUTPUT: usize = 4 << 20;

/// Widths and precisions past this in a `str.format` spec are refused before they allocate
/// (`'{:>1000000000}'.format(1)` once asked for a gigabyte).
const MAX_FORMAT_WIDTH: u64 = 100_000;

/// Used when a GGUF carries no template; the same text Google ships with Gemma 3 (string
/// content only).
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// ChatML, the fallback for a GGUF without a template and without a known family.
const CHATML_TEMPLATE: &str = "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}";

/// What can go wrong with a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template text does not parse.
    #[error("chat template does not compile: {0}")]
    Syntax(String),
    /// The template raised an error itself (e.g. roles out of order).
    #[error("chat template refused the conversation: {0}")]
    Raised(String),
    /// The template ran out of fuel or failed while rendering.
    #[error("chat template failed: {0}")]
    Render(String),
}

/// One message of a conversation, as templates see it (Hugging Face's shape: an assistant's
/// `tool_calls` carry `arguments` as objects, a `tool` message its `tool_call_id` and `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// True when the GGUF had no template and a built-in one stands in.
    pub builtin: bool,
    /// The template's own text, for what it tells of the model (its tool-call format).
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("builtin", &self.builtin)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now` for the formats templates use (`%d %b %Y`, `%Y-%m-%d`), from the system clock
/// in UTC.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = crate::clock::civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%Y", &format!("{y:04}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Python's string methods (minijinja-contrib's pycompat), with `format`'s widths bounded.
fn python_method(
    state: &mut minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, JinjaError> {
    if method == "format" {
        if let Some(spec) = value.as_str() {
            if format_width(spec) > MAX_FORMAT_WIDTH {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("a format width past {MAX_FORMAT_WIDTH} is refused"),
                ));
            }
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The largest number written inside any `{...}` field of a format string.
fn format_width(spec: &str) -> u64 {
    let (mut inside, mut widest, mut n) = (false, 0u64, 0u64);
    for c in spec.chars() {
        match c {
            '{' => inside = true,
            '}' => inside = false,
            d if inside && d.is_ascii_digit() => {
                n = n.saturating_mul(10).saturating_add(d as u64 - '0' as u64);
                widest = widest.max(n);
                continue;
            }
            _ => {}
        }
        n = 0;
    }
    widest
}

/// A sink that refuses to grow past [`MAX_OUTPUT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other("template output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compile a template's source.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| TemplateError::Syntax(describe(&e)))?,
        );
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(python_method);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            builtin: false,
            source: source.to_string(),
        })
    }

    /// The GGUF's `tokenizer.chat_template`, or the family's known template when it has none.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TemplateError> {
        let tokens = gguf
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap_or_default();
        let token = |key: &str| {
            gguf.get_usize(key)
                .ok()
                .and_then(|id| tokens.get(id))
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        match gguf.get_str("tokenizer.chat_template") {
            Ok(source) => Self::new(source, &bos, &eos),
            Err(_) => {
                let arch = gguf.architecture().unwrap_or_default();
                let source = if arch.starts_with("gemma") {
                    GEMMA_TEMPLATE
                } else {
                    CHATML_TEMPLATE
                };
                let mut t = Self::new(source, &bos, &eos)?;
                t.builtin = true;
                Ok(t)
            }
        }
    }

    /// Render a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// The template's source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Does the template render a `tools` list itself (Hugging Face templates' `tools`)?
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// `render` with the functions a model may call, as the template's `tools` variable.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_chat(messages, tools, add_generation_prompt, None)
    }

    /// `render_with_tools`, with `enable_thinking` set when the caller chose (Qwen3's templates
    /// read it: false writes an empty `<think></think>` so the model answers at once). Unset,
    /// a template sees it undefined, as in Hugging Face's `apply_chat_template`.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
    ) -> Result<String, TemplateError> {
        let thinking = match enable_thinking {
            Some(on) => context! { enable_thinking => on },
            None => context! {},
        };
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let mut out = Bounded(Vec::new());
        tmpl.render_captured_to(
            context! {
                messages => minijinja::value::Serde(messages),
                tools => tools.map(minijinja::value::Serde),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
                ..thinking
            },
            &mut out,
        )
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => TemplateError::Raised(describe(&e)),
            ErrorKind::WriteFailure => TemplateError::Render(format!(
                "the template wrote more than {} MiB",
                MAX_OUTPUT >> 20
            )),
            _ => TemplateError::Render(describe(&e)),
        })?;
        String::from_utf8(out.0).map_err(|e| TemplateError::Render(e.to_string()))
    }

    /// The conversation rendered so the model goes on with its last message (an answer cut
    /// short): vLLM's `continue_final_message`, Anthropic's prefill. As Hugging Face's
    /// `apply_chat_template` does it: rendered whole, then cut after that message's text.
    pub fn render_continuation(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        enable_thinking: Option<bool>,
    ) -> Result<String, TemplateError> {
        let last = messages
            .last()
            .map(|m| m.content.trim())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| TemplateError::Raised("the message to continue is empty".into()))?;
        let text = self.render_chat(messages, tools, false, enable_thinking)?;
        let at = text.rfind(last).ok_or_else(|| {
            TemplateError::Render(
                "the template does not write the last message's text as given, so it cannot be \
                 continued"
                    .into(),
            )
        })?;
        Ok(text[..at + last.len()].to_string())
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
}

fn describe(e: &JinjaError) -> String {
    match e.detail() {
        Some(d) => format!("{} ({d})", e.kind()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> ChatTemplate {
        ChatTemplate::new(CHATML_TEMPLATE, "<s>", "</s>").unwrap()
    }

    #[test]
    fn a_continuation_ends_inside_the_last_message() {
        let t = chatml();
        let messages = [
            ChatMessage::new("user", "Count to five."),
            ChatMessage::new("assistant", "One, two, "),
        ];
        let text = t.render_continuation(&messages, None, None).unwrap();
        assert!(text.ends_with("<|im_start|>assistant\nOne, two,"), "{text}");
        let gemma = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let text = gemma.render_continuation(&messages, None, None).unwrap();
        assert!(text.ends_with("<start_of_turn>model\nOne, two,"), "{text}");
        let empty = [
            ChatMessage::new("user", "hi"),
            ChatMessage::new("assistant", " "),
        ];
        assert!(t.render_continuation(&empty, None, None).is_err());
    }

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let out = chatml()
            .render(&[ChatMessage::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_and_calls_reach_a_template_that_renders_them() {
        let source = "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}\
            {% for m in messages %}{{ m.role }}:{{ m.content }}\
            {% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments.x }}]{% endfor %}\
            {% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        assert!(t.renders_tools() && !chatml().renders_tools());
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![serde_json::json!(
            {"type": "function", "id": "c1", "function": {"name": "f", "arguments": {"x": 1}}}
        )]);
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("c1".into());
        let tools = [serde_json::json!({"type": "function", "function": {"name": "f"}})];
        let out = t
            .render_with_tools(
                &[ChatMessage::new("user", "hi"), call, result],
                Some(&tools),
                false,
            )
            .unwrap();
        // (`trim_blocks`, as Hugging Face renders, eats the newline after each block tag.)
        assert_eq!(out, "TOOLS:f;user:hiassistant:[call f 1]tool:42(c1)");
    }

    #[test]
    fn raise_exception_is_a_clear_error() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let err = t
            .render(
                &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
                true,
            )
            .unwrap_err();
        assert!(matches!(err, TemplateError::Raised(_)), "{err}");
        assert!(err.to_string().contains("alternate"), "{err}");
    }

    #[test]
    fn gemma_template_maps_roles() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(t.render(&[], true), Err(TemplateError::Render(_))));
    }

    #[test]
    fn huge_outputs_are_an_error() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("MiB"), "{e}");
    }

    #[test]
    fn growth_without_bound_runs_out_of_fuel_or_is_refused() {
        for source in [
            "{% set s = namespace(x='a') %}{% for i in range(60) %}{% set s.x = s.x ~ s.x %}{% endfor %}{{ s.x|length }}",
            "{{ ('ab' * 100000) * 100000 }}",
            "{{ '{:>1000000000}'.format(1) }}",
        ] {
            let t = ChatTemplate::new(source, "", "").unwrap();
            assert!(t.render(&[], true).is_err(), "{source}");
        }
        assert_eq!(format_width("{0:>12.3f} {1}"), 12);
        let t = ChatTemplate::new("{{ '{:>5}'.format('a') }}", "", "").unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "    a");
    }

    #[test]
    fn syntax_errors_do_not_panic() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(TemplateError::Syntax(_))
        ));
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  hi ")], false)
                .unwrap(),
            "HI"
        );
    }
}
