//! Everything that touches tensors and nothing that touches HTTP: GGUF files, tokenizers, chat
//! templates, model code, KV caches, sampling and stopping.

pub mod constrain;
pub mod device;
pub mod generate;
pub mod gguf;
pub mod host_ops;
pub mod kv;
pub mod kv_rows;
pub mod models;
pub mod pass_threads;
pub mod qmatmul;
pub mod quant;
pub mod sampler;
pub mod stops;
pub mod template;
pub mod tokenizer;
pub mod tools;

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;

use gguf::{GgufError, GgufFile};
use models::{ModelError, Transformer};
use template::{ChatMessage, ChatTemplate, TemplateError};
use tokenizer::{GgufTokenizer, TokenizerError};

/// Why a chat model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The GGUF file is unreadable or invalid.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// Its tokenizer cannot be built.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Its chat template does not compile.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Its weights do not make a model Lantern can run.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A chat model ready to run: weights, tokenizer and template from one GGUF file.
pub struct ChatModel {
    pub transformer: Transformer,
    pub tokenizer: GgufTokenizer,
    pub template: ChatTemplate,
    pub load_time: Duration,
    /// The file's weight type as llama.cpp names it (`Q4_1`, `Q4_K_M`): the model's variant.
    pub quantization: Option<String>,
    /// The grammar compiler, built on the first request that asks for structured output.
    constraints: std::sync::OnceLock<Result<constrain::Constraints, String>>,
}

impl ChatModel {
    pub fn load(path: &Path, device: &Device) -> Result<Self, LoadError> {
        let start = Instant::now();
        let gguf = GgufFile::open(path)?;
        let tokenizer = GgufTokenizer::from_gguf(&gguf)?;
        let template = ChatTemplate::from_gguf(&gguf)?;
        let transformer = Transformer::load(&gguf, device)?;
        let load_time = start.elapsed();
        tracing::info!(
            path = %path.display(),
            architecture = %transformer.info.architecture,
            layers = transformer.info.n_layers,
            builtin_template = template.builtin,
            ?load_time,
            "model loaded"
        );
        Ok(Self {
            transformer,
            tokenizer,
            template,
            load_time,
            quantization: gguf.quantization(),
            constraints: std::sync::OnceLock::new(),
        })
    }

    /// Compile a grammar for one sequence of this model.
    pub fn constrain(
        &self,
        grammar: &constrain::Grammar,
    ) -> Result<constrain::Constraint, constrain::ConstraintError> {
        let constraints = self
            .constraints
            .get_or_init(|| {
                constrain::Constraints::new(&self.tokenizer).map_err(|e| match e {
                    constrain::ConstraintError::Vocabulary(m)
                    | constrain::ConstraintError::Compile(m) => m,
                })
            })
            .as_ref()
            .map_err(|e| constrain::ConstraintError::Vocabulary(e.clone()))?;
        constraints.compile(grammar)
    }

    /// Prompt token ids for a conversation, ready for the assistant's reply.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LoadError> {
        let text = self.template.render(messages, true)?;
        self.prompt_ids(&text)
    }

    /// `chat_prompt` for a conversation that may call `tools` or carry earlier calls and their
    /// results: the template renders them itself when it knows how, else Hermes's convention
    /// is written into the conversation (`tools::inline_tools`). `enable_thinking` reaches the
    /// template when the caller set it. Also returns the rendered prompt, whose end says whether
    /// the answer starts inside a `<think>`. With `continue_final` the prompt ends inside the
    /// last message (an assistant's answer), which the model goes on with.
    pub fn chat_prompt_with_tools(
        &self,
        messages: Vec<ChatMessage>,
        tools: &[tools::ToolSpec],
        enable_thinking: Option<bool>,
        continue_final: bool,
    ) -> Result<(Vec<u32>, String), LoadError> {
        let render = |messages: &[ChatMessage], specs: Option<&[serde_json::Value]>| {
            if continue_final {
                self.template
                    .render_continuation(messages, specs, enable_thinking)
            } else {
                self.template
                    .render_chat(messages, specs, true, enable_thinking)
            }
        };
        let text = if self.template.renders_tools() {
            let specs: Vec<serde_json::Value> =
                tools.iter().map(tools::ToolSpec::to_json).collect();
            render(&messages, (!specs.is_empty()).then_some(&specs[..]))?
        } else {
            render(&tools::inline_tools(messages, tools), None)?
        };
        Ok((self.prompt_ids(&text)?, text))
    }

    /// The chat template's source (what it knows: tools, thinking).
    pub fn template_source(&self) -> &str {
        self.template.source()
    }

    /// How this model writes tool calls, as its template shows.
    pub fn tool_format(&self) -> tools::ToolFormat {
        tools::ToolFormat::of_template(self.template.source(), self.template.renders_tools())
    }

    /// Token ids for a raw prompt, with BOS when the model wants one and the text lacks it.
    pub fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, LoadError> {
        let bos_in_text =
            !self.template.bos_token().is_empty() && text.starts_with(self.template.bos_token());
        Ok(self
            .tokenizer
            .encode(text, self.tokenizer.special.add_bos && !bos_in_text)?)
    }
}
