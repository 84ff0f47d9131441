//! Build a `tokenizers::Tokenizer` from GGUF metadata.
//!
//! Two families, chosen by `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE over `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`, with the
//!   pre-tokenizer that `tokenizer.ggml.pre` names (rules follow llama.cpp's `llama-vocab.cpp`).
//!   candle's own `TokenizerFromGguf` adds a prefix space after special tokens and so disagrees
//!   with llama.cpp on SmolLM2; this one matches it id for id (tests against `tests/fixtures`).
//! - `llama`: SentencePiece BPE (Gemma, Mistral, Llama 2): `▁` for spaces, merges ranked by the
//!   merged piece's score as SentencePiece does, byte fallback `<0xNN>`.
//!
//! Every CONTROL or USER_DEFINED token becomes a special token, so `<|im_start|>` in a rendered
//! template is one id, as in llama.cpp with special-token parsing on.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::{GgufError, GgufFile, Value};

pub use tokenizers::Tokenizer;

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: u64 = 3;
const TOKEN_TYPE_USER_DEFINED: u64 = 4;
const TOKEN_TYPE_BYTE: u64 = 6;

const REGEX_LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Why a tokenizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Metadata the tokenizer needs is missing or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file names a tokenizer family Lantern does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The tokenizers library refused the vocabulary.
    #[error("tokenizer: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Build(e.to_string())
}

/// The ids a generation loop needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// Ids that end a turn: EOS, EOT and the template's end-of-turn markers.
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
}

/// How a vocabulary's token strings spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerFamily {
    /// GPT-2's byte-level BPE: every byte is one printable character.
    ByteLevel,
    /// SentencePiece: `▁` for a space, `<0xNN>` tokens for single bytes.
    SentencePiece,
}

/// A tokenizer with the facts about it that the engine needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    /// Shared: every streaming request's decoder holds it.
    pub tokenizer: std::sync::Arc<Tokenizer>,
    pub special: SpecialTokens,
    pub family: TokenizerFamily,
    /// Ids of CONTROL tokens (`<|im_start|>`, `<end_of_turn>`), sorted: markup, never text.
    /// USER_DEFINED ones (Gemma's `\n` runs) are parsed as special yet spell plain text.
    pub control: std::sync::Arc<[u32]>,
}

impl GgufTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let types = token_types(gguf, tokens.len())?;
        let family = match model {
            "llama" => TokenizerFamily::SentencePiece,
            _ => TokenizerFamily::ByteLevel,
        };
        let mut tokenizer = match model {
            "gpt2" => byte_level_bpe(gguf, &tokens)?,
            "llama" => sentencepiece_bpe(gguf, &tokens, &types)?,
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer.ggml.model = `{other}` (supported: gpt2, llama)"
                )))
            }
        };
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(tok, _)| AddedToken::from(tok.to_string(), true))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(build_err)?;
        let special = special_tokens(gguf, &tokens)?;
        let control = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
            .map(|(id, _)| id as u32)
            .collect();
        Ok(Self {
            tokenizer: std::sync::Arc::new(tokenizer),
            special,
            family,
            control,
        })
    }

    /// Token ids for text; special tokens written in the text are parsed as such.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.tokenizer.encode(text, false).map_err(build_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.special.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids for text taken literally: `<|im_start|>` typed by a user stays plain text.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut t = (*self.tokenizer).clone();
        t.set_encode_special_tokens(true);
        Ok(t.encode(text, false).map_err(build_err)?.get_ids().to_vec())
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

fn token_types(gguf: &GgufFile, n: usize) -> Result<Vec<u64>, TokenizerError> {
    match gguf.get("tokenizer.ggml.token_type") {
        None => Ok(vec![1; n]),
        Some(v) => {
            let len = v.as_array().map_or(0, |a| a.len());
            if len != n {
                return Err(TokenizerError::Build(format!(
                    "{len} token types for {n} tokens"
                )));
            }
            let arr = v.as_array().expect("an array: its length was read");
            Ok((0..n).map(|i| arr.u64(i).unwrap_or(1)).collect())
        }
    }
}

fn optional_id(gguf: &GgufFile, key: &str, n: usize) -> Option<u32> {
    gguf.get(key)
        .and_then(Value::as_u64)
        .filter(|&id| (id as usize) < n)
        .map(|id| id as u32)
}

fn special_tokens(gguf: &GgufFile, tokens: &[&str]) -> Result<SpecialTokens, TokenizerError> {
    let n = tokens.len();
    let bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", n);
    let mut stop_ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| optional_id(gguf, k, n))
        .collect();
    // Templates end turns with these even where the GGUF's EOS is another token (Gemma's EOS is
    // `<eos>` but a turn ends with `<end_of_turn>`), as llama.cpp's EOG list does.
    for marker in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"] {
        if let Some(id) = tokens.iter().position(|t| *t == marker) {
            stop_ids.push(id as u32);
        }
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    let add_bos = gguf
        .get("tokenizer.ggml.add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(gguf.get_str("tokenizer.ggml.model")? == "llama");
    Ok(SpecialTokens {
        bos,
        stop_ids,
        add_bos,
    })
}

fn vocab_map(tokens: &[&str]) -> HashMap<String, u32> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect()
}

fn byte_level_bpe(gguf: &GgufFile, tokens: &[&str]) -> Result<Tokenizer, TokenizerError> {
    let merges = gguf
        .get_str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| TokenizerError::Build(format!("bad merge `{m}`")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens).into_iter().collect::<Vocab>(), merges)
        .build()
        .map_err(build_err)?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

/// The pre-tokenizer for `tokenizer.ggml.pre`, following llama.cpp's per-`pre` regexes.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |regex: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(build_err)?
        .into())
    };
    Ok(match pre {
        // SmolLM: GPT-2's regex after splitting every digit (measured against llama.cpp).
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" | "falcon3" => {
            Sequence::new(vec![split(REGEX_LLAMA3)?, byte_level(false).into()]).into()
        }
        "qwen2" | "deepseek-r1-qwen" => {
            Sequence::new(vec![split(REGEX_QWEN2)?, byte_level(false).into()]).into()
        }
        "default" | "gpt2" | "gpt-2" => byte_level(true).into(),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.pre = `{other}`"
            )))
        }
    })
}

/// SentencePiece BPE: merges are implied by scores. A merge `a b` exists when `a`, `b` and `ab`
/// are all pieces, ranked by the score of `ab` (higher first), which is the order in which
/// SentencePiece's (and llama.cpp's) bigram loop applies them.
fn sentencepiece_bpe(
    gguf: &GgufFile,
    tokens: &[&str],
    types: &[u64],
) -> Result<Tokenizer, TokenizerError> {
    let scores: Vec<f64> = match gguf.get("tokenizer.ggml.scores") {
        Some(Value::Array(a)) => (0..a.len()).map(|i| a.f64(i).unwrap_or(0.0)).collect(),
        _ => vec![0.0; tokens.len()],
    };
    let vocab = vocab_map(tokens);
    let mut merges: Vec<(f64, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] == TOKEN_TYPE_CONTROL || types[id] == TOKEN_TYPE_BYTE {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((
                    scores.get(id).copied().unwrap_or(0.0),
                    id as u32,
                    left.to_string(),
                    right.to_string(),
                ));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = merges.into_iter().map(|(_, _, l, r)| (l, r)).collect();
    let unk = optional_id(gguf, "tokenizer.ggml.unknown_token_id", tokens.len())
        .map(|id| tokens[id as usize].to_string());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let mut tokenizer = Tokenizer::new(builder.build().map_err(build_err)?);
    let add_space_prefix = gguf
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(Value::as_bool)
        .unwrap_or(gguf.architecture()? != "gemma3" && gguf.architecture()? != "gemma2");
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(Replace::new(" ", "▁").map_err(build_err)?.into());
    tokenizer
        .with_normalizer(Some(tokenizers::normalizers::Sequence::new(normalizers)))
        .map_err(build_err)?;
    let mut decoders = vec![
        Replace::new("▁", " ").map_err(build_err)?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}
