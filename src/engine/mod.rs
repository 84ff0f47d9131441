//! Everything that touches tensors and nothing that touches HTTP: GGUF files, tokenizers, chat
//! templates, model code, KV caches, sampling and stopping.

pub mod device;
pub mod generate;
pub mod gguf;
pub mod kv;
pub mod models;
pub mod qmatmul;
pub mod quant;
pub mod sampler;
pub mod stops;
pub mod template;
pub mod tokenizer;

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
        })
    }

    /// Prompt token ids for a conversation, ready for the assistant's reply.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, LoadError> {
        let text = self.template.render(messages, true)?;
        self.prompt_ids(&text)
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
