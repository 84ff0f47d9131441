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

/// The longest string, in characters, a [`bounded`] schema allows where it set no `maxLength`.
/// Short, because a string that runs on is a model lost, not a long argument: in about one
/// forced call in 45, SmolLM2 at temperature 1 writes `}}` or `}}</tool_call>` inside its string
/// as if the call were over and then rambles on to the limit, at 0.25 to 0.7 tokens a character
/// (760 tokens at 1024 characters). At 200 such a call stays under 200 tokens; a schema that
/// expects longer text says so with `maxLength`.
pub const MAX_STRING_CHARS: u64 = 200;

/// The most items an array of a [`bounded`] schema holds where it set no `maxItems`.
pub const MAX_ARRAY_ITEMS: u64 = 64;

/// Keywords that hold a map of subschemas (by property name or definition name).
const SCHEMA_MAPS: [&str; 4] = ["properties", "patternProperties", "$defs", "definitions"];

/// Keywords that hold a subschema or a list of them, each checked against (part of) the value.
/// `not` and `if` are not here: a bound inside them would widen what the schema accepts.
const SUBSCHEMAS: [&str; 9] = [
    "items",
    "prefixItems",
    "additionalItems",
    "additionalProperties",
    "anyOf",
    "oneOf",
    "allOf",
    "then",
    "else",
];

/// Keywords under which one object's properties are judged by several subschemas together:
/// closing any of them could leave no value valid, so a schema with one keeps its objects open.
const COMBINING: [&str; 5] = [
    "allOf",
    "if",
    "dependentSchemas",
    "dependencies",
    "unevaluatedProperties",
];

/// `schema` with an end to every value: a `maxLength` on each string and a `maxItems` on each
/// array that had none ([`MAX_STRING_CHARS`], [`MAX_ARRAY_ITEMS`]; a larger `minLength` or
/// `minItems` raises it), and `additionalProperties: false` on each object that declares its
/// properties and says nothing of others. Each change only narrows what the schema accepts, so
/// what matches the result matches the schema too; a small model that never closes a string or
/// keeps inventing keys meets an end instead of filling its context. Limits the schema sets are
/// kept as written, and strings fixed by `enum` or `const` are left alone.
pub fn bounded(mut schema: Value) -> Value {
    let close = !combines(&schema);
    bound(&mut schema, close);
    schema
}

/// Does the schema's `type` (a name or a list of names) admit `name`?
fn admits(schema: &serde_json::Map<String, Value>, name: &str) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == name,
        Some(Value::Array(ts)) => ts.iter().any(|t| t == name),
        _ => false,
    }
}

/// Does any subschema use a [`COMBINING`] keyword?
fn combines(schema: &Value) -> bool {
    let Value::Object(o) = schema else {
        return false;
    };
    COMBINING.iter().any(|k| o.contains_key(*k))
        || o.iter().any(|(key, value)| match (key.as_str(), value) {
            (k, Value::Object(map)) if SCHEMA_MAPS.contains(&k) => map.values().any(combines),
            (k, Value::Array(list)) if SUBSCHEMAS.contains(&k) => list.iter().any(combines),
            (k, v) if SUBSCHEMAS.contains(&k) => combines(v),
            _ => false,
        })
}

/// An object schema whose declared properties may be all it accepts: nothing else speaks of
/// other properties, and every required one is declared.
fn closable(o: &serde_json::Map<String, Value>) -> bool {
    let Some(Value::Object(properties)) = o.get("properties") else {
        return false;
    };
    let required = o.get("required").and_then(Value::as_array);
    (admits(o, "object") || !o.contains_key("type"))
        && [
            "additionalProperties",
            "patternProperties",
            "anyOf",
            "oneOf",
            "$ref",
        ]
        .iter()
        .all(|k| !o.contains_key(*k))
        && required
            .into_iter()
            .flatten()
            .all(|r| r.as_str().is_some_and(|name| properties.contains_key(name)))
}

/// [`bounded`]'s walk; `close`: objects here may be closed.
fn bound(schema: &mut Value, close: bool) {
    let Value::Object(o) = schema else {
        return;
    };
    let fixed = o.contains_key("enum") || o.contains_key("const");
    for (kind, max_key, min_key, default) in [
        ("string", "maxLength", "minLength", MAX_STRING_CHARS),
        ("array", "maxItems", "minItems", MAX_ARRAY_ITEMS),
    ] {
        if admits(o, kind) && !fixed && !o.contains_key(max_key) {
            let min = o.get(min_key).and_then(Value::as_u64).unwrap_or(0);
            o.insert(max_key.into(), serde_json::json!(default.max(min)));
        }
    }
    if close && closable(o) {
        o.insert("additionalProperties".into(), Value::Bool(false));
    }
    // A member of anyOf/oneOf is read together with the keywords beside it: where those speak of
    // properties, closing the member could refuse them.
    let members_close = close && !o.contains_key("properties") && !o.contains_key("required");
    for (key, value) in o.iter_mut() {
        let key = key.as_str();
        let close = match key {
            "anyOf" | "oneOf" => members_close,
            _ => close,
        };
        match value {
            Value::Object(map) if SCHEMA_MAPS.contains(&key) => {
                map.values_mut().for_each(|s| bound(s, close))
            }
            Value::Array(list) if SUBSCHEMAS.contains(&key) => {
                list.iter_mut().for_each(|s| bound(s, close))
            }
            s if SUBSCHEMAS.contains(&key) => bound(s, close),
            _ => {}
        }
    }
}

/// `schema` placed at `base` (a JSON pointer such as `/properties/arguments`) inside a larger
/// document: each local `$ref` (`#` or `#/...`) points where its target now is.
pub fn rebased(mut schema: Value, base: &str) -> Value {
    rebase(&mut schema, base);
    schema
}

fn rebase(value: &mut Value, base: &str) {
    match value {
        Value::Object(o) => {
            for (key, v) in o.iter_mut() {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) if r == "#" || r.starts_with("#/") => {
                        *r = format!("#{base}{}", &r[1..]);
                    }
                    // Values, not schemas: a `$ref` in them is data.
                    ("const" | "enum" | "default" | "examples", _) => {}
                    (k, Value::Object(map)) if SCHEMA_MAPS.contains(&k) => {
                        map.values_mut().for_each(|s| rebase(s, base))
                    }
                    (_, v) => rebase(v, base),
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| rebase(v, base)),
        _ => {}
    }
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
    use serde_json::json;

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
    fn unbounded_strings_and_arrays_get_limits() {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "short": {"type": "string", "maxLength": 30},
                "long": {"type": "string", "maxLength": 5000},
                "at_least": {"type": "string", "minLength": 2000},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "fixed": {"type": "string", "const": "x"},
                "maybe": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "few": {"type": "array", "maxItems": 3, "items": {"$ref": "#/$defs/place"}},
                "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "one": {"oneOf": [{"type": "string"}]},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
                "tuple": {"type": "array", "prefixItems": [{"type": "string"}]},
                "other": {"not": {"type": "string"}},
            },
            "$defs": {"place": {"type": "object", "properties": {"name": {"type": "string"}}}},
            "definitions": {"old": {"type": "array"}},
        });
        let b = bounded(schema);
        let p = &b["properties"];
        let max = json!(MAX_STRING_CHARS);
        assert_eq!(p["city"]["maxLength"], max);
        assert_eq!(p["short"]["maxLength"], 30);
        assert_eq!(p["long"]["maxLength"], 5000);
        assert_eq!(p["at_least"]["maxLength"], 2000);
        assert_eq!(p["unit"].get("maxLength"), None);
        assert_eq!(p["fixed"].get("maxLength"), None);
        assert_eq!(p["maybe"]["maxLength"], max);
        assert_eq!(p["tags"]["maxItems"], json!(MAX_ARRAY_ITEMS));
        assert_eq!(p["tags"]["items"]["maxLength"], max);
        assert_eq!(p["few"]["maxItems"], 3);
        assert_eq!(p["either"]["anyOf"][0]["maxLength"], max);
        assert_eq!(p["either"]["anyOf"][1].get("maxLength"), None);
        assert_eq!(p["one"]["oneOf"][0]["maxLength"], max);
        assert_eq!(p["map"]["additionalProperties"]["maxLength"], max);
        assert_eq!(p["tuple"]["prefixItems"][0]["maxLength"], max);
        assert_eq!(p["tuple"]["maxItems"], json!(MAX_ARRAY_ITEMS));
        assert_eq!(p["other"]["not"].get("maxLength"), None);
        assert_eq!(b["$defs"]["place"]["properties"]["name"]["maxLength"], max);
        assert_eq!(b["definitions"]["old"]["maxItems"], json!(MAX_ARRAY_ITEMS));
        assert_eq!(b.get("maxLength"), None);
        // Objects that declare their properties take no others; one that declares none, or
        // speaks of others itself, stays as written.
        assert_eq!(b["additionalProperties"], false);
        assert_eq!(b["$defs"]["place"]["additionalProperties"], false);
        assert_eq!(p["map"]["additionalProperties"]["type"], "string");
        let free = bounded(json!({"type": "object"}));
        assert_eq!(free, json!({"type": "object"}));
    }

    #[test]
    fn objects_stay_open_where_closing_could_refuse_every_value() {
        let open = |schema: Value| {
            let b = bounded(schema);
            assert_eq!(b.get("additionalProperties"), None, "{b}");
            b
        };
        // A required property it does not declare.
        open(json!({"properties": {"a": {}}, "required": ["a", "b"]}));
        // Properties declared beside it, by patterns, by a reference or by alternatives.
        open(json!({"properties": {"a": {}}, "patternProperties": {"^x": {}}}));
        open(json!({"properties": {"a": {}}, "$ref": "#/$defs/b", "$defs": {"b": {}}}));
        let b = open(json!({"properties": {"a": {}}, "anyOf": [{"properties": {"b": {}}}]}));
        assert_eq!(b["anyOf"][0].get("additionalProperties"), None);
        // allOf and its kin anywhere: the schema keeps every object open.
        let b = open(json!({
            "properties": {"a": {"type": "object", "properties": {"x": {}}}},
            "allOf": [{"properties": {"b": {"type": "string"}}}],
        }));
        assert_eq!(b["properties"]["a"].get("additionalProperties"), None);
        // Its strings are bounded all the same.
        let max = json!(MAX_STRING_CHARS);
        assert_eq!(b["allOf"][0]["properties"]["b"]["maxLength"], max);
        // Alternatives alone are closed each on its own.
        let b = bounded(json!({"anyOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}));
        assert_eq!(b["anyOf"][0]["additionalProperties"], false);
        assert_eq!(b["anyOf"][1]["additionalProperties"], false);
    }

    #[test]
    fn references_follow_a_schema_into_a_larger_document() {
        let schema = json!({
            "properties": {
                "a": {"$ref": "#/$defs/a"},
                "self": {"$ref": "#"},
                "const": {"$ref": "#/$defs/a"},
                "far": {"$ref": "https://example.com/s.json#/x"},
                "named": {"$ref": "#anchor"},
                "data": {"const": {"$ref": "#/keep"}},
            },
            "$defs": {"a": {"items": {"$ref": "#/$defs/a"}}},
        });
        let r = rebased(schema, "/properties/arguments");
        let p = &r["properties"];
        assert_eq!(p["a"]["$ref"], "#/properties/arguments/$defs/a");
        assert_eq!(p["self"]["$ref"], "#/properties/arguments");
        assert_eq!(p["const"]["$ref"], "#/properties/arguments/$defs/a");
        assert_eq!(p["far"]["$ref"], "https://example.com/s.json#/x");
        assert_eq!(p["named"]["$ref"], "#anchor");
        assert_eq!(p["data"]["const"]["$ref"], "#/keep");
        assert_eq!(
            r["$defs"]["a"]["items"]["$ref"],
            "#/properties/arguments/$defs/a"
        );
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
