//! Constrained decoding: a JSON Schema, a Lark grammar or a regex enforced token by token with
//! llguidance (the library llama.cpp and vLLM use).
//!
//! Per model, [`Constraints`] holds the vocabulary as bytes (a token trie) and compiles grammars;
//! per sequence, a [`Constraint`] says which tokens may come next ([`Constraint::allowed`]) and
//! follows the tokens chosen ([`Constraint::accept`]). The mask of a step depends only on the
//! tokens already accepted, so the scheduler computes it while the forward pass runs.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::tokenizer::{GgufTokenizer, TokenizerFamily};

/// What a request asks its output to match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON Schema; `strict` refuses keywords llguidance cannot enforce instead of ignoring
    /// them.
    JsonSchema { schema: Value, strict: bool },
    /// A grammar in llguidance's Lark dialect (`%json {...}` embeds a schema).
    Lark(String),
    /// A regular expression the whole output matches.
    Regex(String),
}

impl Grammar {
    /// A stable text of the grammar: part of the response cache's key.
    pub fn key(&self) -> String {
        match self {
            Self::JsonObject => "json_object".into(),
            Self::JsonSchema { schema, strict } => format!("json_schema:{strict}:{schema}"),
            Self::Lark(g) => format!("lark:{g}"),
            Self::Regex(r) => format!("regex:{r}"),
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(with_layout(json_object(), false))
            }
            Self::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(with_layout(schema.clone(), !strict))
            }
            Self::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Self::Regex(r) => TopLevelGrammar::from_regex(r),
        }
    }
}

fn json_object() -> Value {
    serde_json::json!({"type": "object"})
}

/// JSON laid out as Python's `json.dumps` writes it (`", "` and `": "`, no other whitespace):
/// with free whitespace a small model can spend its whole budget on newlines. A schema's own
/// `x-guidance` options win.
pub fn with_layout(mut schema: Value, lenient: bool) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert(serde_json::json!({
            "item_separator": ", ",
            "key_separator": ": ",
            "whitespace_flexible": false,
            "lenient": lenient,
        }));
    }
    schema
}

/// Why a grammar cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The model's vocabulary could not be turned into a token trie.
    #[error("constrained decoding is not available for this model: {0}")]
    Vocabulary(String),
    /// The grammar or schema does not compile.
    #[error("{0}")]
    Compile(String),
}

/// The model's tokens as llguidance sees them: bytes per token, special tokens marked.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: GgufTokenizer,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode_plain(text)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// GPT-2's byte ↔ printable-character map, inverted: the character a byte-level BPE token
/// writes for each byte, back to the byte.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let c = if printable {
            char::from(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("below the surrogates")
        };
        map.insert(c, b);
    }
    map
}

/// The bytes each token stands for; control tokens get llguidance's `0xFF` marker before their
/// text so no grammar matches them as text.
fn token_bytes(tokenizer: &GgufTokenizer) -> Vec<Vec<u8>> {
    let t = &tokenizer.tokenizer;
    let n = t.get_vocab_size(true);
    let decoder = byte_level_decoder();
    (0..n as u32)
        .map(|id| {
            let Some(piece) = t.id_to_token(id) else {
                return Vec::new();
            };
            if tokenizer.control.binary_search(&id).is_ok() {
                let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(piece.as_bytes());
                return b;
            }
            match tokenizer.family {
                TokenizerFamily::ByteLevel => piece
                    .chars()
                    .map(|c| decoder.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_else(|| piece.into_bytes()),
                TokenizerFamily::SentencePiece => match byte_fallback(&piece) {
                    Some(b) => vec![b],
                    None => piece.replace('\u{2581}', " ").into_bytes(),
                },
            }
        })
        .collect()
}

/// `<0x0A>` → 0x0A: SentencePiece's tokens for single bytes.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// One model's grammar compiler.
pub struct Constraints {
    factory: ParserFactory,
    /// Ids that end a turn: allowed wherever the grammar allows its end.
    stop_ids: Arc<[u32]>,
}

impl Constraints {
    pub fn new(tokenizer: &GgufTokenizer) -> Result<Self, ConstraintError> {
        let words = token_bytes(tokenizer);
        let stop_ids: Arc<[u32]> = tokenizer.special.stop_ids.clone().into();
        let eos = *stop_ids.first().ok_or_else(|| {
            ConstraintError::Vocabulary("the model has no end-of-turn token".into())
        })?;
        let mut info = TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = tokenizer.special.bos;
        let vocab = Vocabulary {
            trie: TokTrie::from(&info, &words),
            tokenizer: tokenizer.clone(),
        };
        let env: TokEnv = Arc::new(vocab);
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| ConstraintError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, stop_ids })
    }

    /// Compile a grammar into a fresh per-sequence constraint.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, ConstraintError> {
        let parser = self
            .factory
            .create_parser(grammar.top_level())
            .map_err(|e| ConstraintError::Compile(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Compile(e));
        }
        Ok(Constraint {
            matcher,
            stop_ids: self.stop_ids.clone(),
        })
    }
}

/// Tokens allowed at one step.
pub struct Mask(SimpleVob);

impl Mask {
    /// Rule out every disallowed token (and any row entry past the vocabulary).
    pub fn apply(&self, logits: &mut [f32]) {
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= self.0.len() || !self.0.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    pub fn count(&self) -> usize {
        self.0.num_set()
    }
}

/// One sequence's place in its grammar.
pub struct Constraint {
    matcher: Matcher,
    stop_ids: Arc<[u32]>,
}

impl Clone for Constraint {
    /// Independent state: each of a request's choices walks the grammar on its own.
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            stop_ids: self.stop_ids.clone(),
        }
    }
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// The tokens the grammar allows next; where it may end, every end-of-turn token too.
    pub fn allowed(&mut self) -> Result<Mask, String> {
        let mut mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        let eos = self.matcher.tok_env().map(|e| e.tok_trie().eos_token());
        if eos.is_ok_and(|eos| mask.is_allowed(eos)) {
            for &id in self.stop_ids.iter() {
                if (id as usize) < mask.len() {
                    mask.allow_token(id);
                }
            }
        }
        Ok(Mask(mask))
    }

    /// Follow a chosen token. An end-of-turn token where the grammar may end is accepted.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        if self.stop_ids.contains(&token) {
            return match self.matcher.is_accepting() {
                Ok(true) => Ok(()),
                Ok(false) => Err("the output ended before the grammar was complete".into()),
                Err(e) => Err(e.to_string()),
            };
        }
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    /// The grammar is complete and allows nothing more: the sequence ends here.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_inverts_gpt2s() {
        let map = byte_level_decoder();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'a'], b'a');
        assert_eq!(map[&'\u{120}'], b' '); // Ġ
        assert_eq!(map[&'\u{10A}'], b'\n'); // Ċ
        assert_eq!(map[&'\u{100}'], 0);
    }

    #[test]
    fn sentencepiece_byte_tokens() {
        assert_eq!(byte_fallback("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback("<0xFF>"), Some(0xFF));
        assert_eq!(byte_fallback("<0x0>"), None);
        assert_eq!(byte_fallback("hello"), None);
    }

    #[test]
    fn layout_keeps_a_schemas_own_options() {
        let s = with_layout(serde_json::json!({"type": "string"}), true);
        assert_eq!(s["x-guidance"]["lenient"], true);
        let own =
            serde_json::json!({"type": "string", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(with_layout(own.clone(), false), own);
    }
}
