//! Prompt compression, applied before a prompt is tokenized for the engine. Three methods, each
//! aimed at a ratio (tokens kept over tokens given):
//! - `normalize`: whitespace and boilerplate (runs of blanks, repeated lines, invisible
//!   characters); lossless for meaning, so it removes what it can and no more.
//! - `truncate`: keep the head and the tail of the context within the token budget.
//! - `prune`: LLMLingua-style. The model scores every token by its self-information
//!   (−log p under the model, given what precedes it); whole words with the least information
//!   go first until the budget holds.
//!
//! The instruction (system messages) and the question (the last sentence of the last user
//! message, or of a completion prompt) are never touched.

use serde::{Deserialize, Serialize};

use crate::engine::models::SeqInput;
use crate::engine::template::ChatMessage;
use crate::engine::ChatModel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Normalize,
    Truncate,
    Prune,
}

/// What a request (or a session, or an experiment's variant) asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub method: Method,
    /// Tokens kept over tokens given, in (0, 1].
    #[serde(default = "one")]
    pub ratio: f64,
    /// `prune`: the installed model that scores tokens (default: the request's own model). A
    /// small one is cheaper; ratios are still counted in the request model's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scorer: Option<String>,
}

fn one() -> f64 {
    1.0
}

impl Spec {
    pub fn validate(&self) -> Result<(), String> {
        if self.ratio > 0.0 && self.ratio <= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "compression ratio {} is not in (0, 1]: it is the share of tokens kept",
                self.ratio
            ))
        }
    }

    /// A short label for logs and the request log: `prune@0.5`.
    pub fn label(&self) -> String {
        let m = match self.method {
            Method::Normalize => "normalize",
            Method::Truncate => "truncate",
            Method::Prune => "prune",
        };
        format!("{m}@{}", self.ratio)
    }
}

/// What compression did, in the model's tokens (the prompt's text only, not the template's).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub method: Method,
    pub target_ratio: f64,
    pub original_tokens: usize,
    pub compressed_tokens: usize,
    pub ratio: f64,
}

/// Count tokens of text as the model sees it (no BOS).
fn count(model: &ChatModel, text: &str) -> usize {
    model
        .tokenizer
        .tokenizer
        .encode(text, false)
        .map(|e| e.len())
        .unwrap_or(0)
}

/// Whitespace and boilerplate: invisible characters, trailing blanks, runs of spaces, repeated
/// consecutive lines, more than one blank line in a row.
pub fn normalize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{FEFF}'))
        .map(|c| if c == '\u{A0}' || c == '\t' { ' ' } else { c })
        .collect();
    let mut out: Vec<String> = Vec::new();
    let mut blank_run = 0;
    for line in cleaned.lines() {
        let line = line
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
            if out.last() == Some(&line) {
                continue;
            }
        }
        out.push(line);
    }
    out.join("\n").trim().to_string()
}

/// Split a message into (context, question): the question is its last sentence.
pub fn split_question(text: &str) -> (&str, &str) {
    let trimmed = text.trim_end();
    let body = trimmed.trim_end_matches(['?', '!', '.', ':']);
    let cut = body
        .char_indices()
        .rev()
        .find(|&(i, c)| {
            c == '\n'
                || (matches!(c, '.' | '?' | '!') && body[i + 1..].starts_with(char::is_whitespace))
        })
        .map(|(i, c)| i + c.len_utf8());
    match cut {
        Some(i) => (&trimmed[..i], &trimmed[i..]),
        None => ("", trimmed),
    }
}

fn truncate(model: &ChatModel, context: &str, budget: usize) -> String {
    let Ok(enc) = model.tokenizer.tokenizer.encode(context, false) else {
        return context.to_string();
    };
    let ids = enc.get_ids();
    if ids.len() <= budget {
        return context.to_string();
    }
    let marker = " … ";
    let budget = budget.saturating_sub(count(model, marker));
    let head = budget / 3;
    let tail = budget - head;
    let decode = |ids: &[u32]| {
        model
            .tokenizer
            .tokenizer
            .decode(ids, false)
            .unwrap_or_default()
    };
    format!(
        "{}{marker}{}",
        decode(&ids[..head]),
        decode(&ids[ids.len() - tail..])
    )
}

/// Self-information of each token of `text` under the model (bits don't matter: nats), with
/// each token's byte offsets. Scored in chunks so the logits never hold more than a chunk.
fn self_information(model: &ChatModel, text: &str) -> Result<Vec<(f64, usize, usize)>, String> {
    let enc = model
        .tokenizer
        .tokenizer
        .encode(text, false)
        .map_err(|e| e.to_string())?;
    let ids = enc.get_ids();
    let offsets = enc.get_offsets();
    let t = &model.transformer;
    let limit = t.info.context_length.saturating_sub(1).max(2);
    let mut scores = Vec::with_capacity(ids.len());
    let mut cache = t.new_cache();
    // The first token is predicted from BOS where the model has one.
    let mut previous: Option<u32> = model.tokenizer.special.bos;
    const CHUNK: usize = 256;
    for (c, chunk) in ids.chunks(CHUNK).enumerate() {
        if cache.len() + CHUNK + 1 > limit {
            cache = t.new_cache();
        }
        let mut input: Vec<u32> = previous.into_iter().collect();
        input.extend_from_slice(chunk);
        let logits = t
            .forward(&mut [SeqInput {
                tokens: &input,
                cache: &mut cache,
                all_logits: true,
            }])
            .map_err(|e| e.to_string())?
            .to_vec2::<f32>()
            .map_err(|e| e.to_string())?;
        // Row r predicts input[r + 1]: with a previous token, row k predicts chunk[k]; without
        // (the very first token, no BOS) row k - 1 does, and chunk[0] has no prediction.
        let first = scores.len();
        for (k, &id) in chunk.iter().enumerate() {
            let row = match previous {
                Some(_) => &logits[k],
                None if k == 0 => continue,
                None => &logits[k - 1],
            };
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let logp = row[id as usize] as f64 - max - sum.ln();
            let (s, e) = offsets[c * CHUNK + k];
            scores.push((-logp, s, e));
        }
        if previous.is_none() {
            // Scored below as the mean of the others.
            let (s, e) = offsets[c * CHUNK];
            scores.insert(first, (f64::NAN, s, e));
        }
        // The cache now holds `input`; the next chunk starts from the last token of this one.
        cache.truncate(cache.len() - 1);
        previous = chunk.last().copied();
    }
    let known: Vec<f64> = scores
        .iter()
        .map(|s| s.0)
        .filter(|x| x.is_finite())
        .collect();
    let mean = known.iter().sum::<f64>() / known.len().max(1) as f64;
    for s in &mut scores {
        if !s.0.is_finite() {
            s.0 = mean;
        }
    }
    Ok(scores)
}

fn prune(
    model: &ChatModel,
    scorer: &ChatModel,
    context: &str,
    budget: usize,
) -> Result<String, String> {
    // Words with their byte spans; each word's score is the mean self-information of the
    // tokens that start inside it, and its cost the number of those tokens.
    let mut words: Vec<(usize, usize, f64, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in context
        .char_indices()
        .chain(std::iter::once((context.len(), ' ')))
    {
        match (start, c.is_whitespace()) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                words.push((s, i, 0.0, 0));
                start = None;
            }
            _ => {}
        }
    }
    if words.is_empty() {
        return Ok(String::new());
    }
    let scores = self_information(scorer, context)?;
    let mut w = 0;
    for (score, s, _) in scores {
        while w + 1 < words.len() && s >= words[w + 1].0 {
            w += 1;
        }
        words[w].2 += score;
        words[w].3 += 1;
    }
    let cost: usize = words.iter().map(|w| w.3).sum();
    let mut order: Vec<usize> = (0..words.len()).collect();
    order.sort_by(|&a, &b| {
        let mean = |i: usize| words[i].2 / words[i].3.max(1) as f64;
        mean(a).total_cmp(&mean(b))
    });
    let mut keep = vec![true; words.len()];
    let mut kept_cost = cost;
    let mut next = 0;
    let rebuild = |keep: &[bool]| -> String {
        words
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(w, _)| &context[w.0..w.1])
            .collect::<Vec<_>>()
            .join(" ")
    };
    loop {
        while kept_cost > budget && next < order.len() {
            let i = order[next];
            keep[i] = false;
            kept_cost -= words[i].3;
            next += 1;
        }
        // Words joined again can tokenize a little differently: measure and go on if need be.
        let text = rebuild(&keep);
        let real = count(model, &text);
        if real <= budget || next >= order.len() {
            return Ok(text);
        }
        kept_cost = real;
        let excess = real - budget;
        let mut dropped = 0;
        while dropped < excess && next < order.len() {
            let i = order[next];
            keep[i] = false;
            dropped += words[i].3;
            next += 1;
        }
        kept_cost -= dropped.min(kept_cost);
    }
}

/// Compress one context to `budget` tokens with `method`.
fn apply(
    model: &ChatModel,
    scorer: &ChatModel,
    method: Method,
    context: &str,
    budget: usize,
) -> Result<String, String> {
    Ok(match method {
        Method::Normalize => normalize(context),
        Method::Truncate => truncate(model, &normalize(context), budget),
        Method::Prune => prune(model, scorer, &normalize(context), budget)?,
    })
}

/// Compress a chat: system messages and the question (the last sentence of the last user
/// message) stay; everything else shares the budget in proportion to its length.
pub fn compress_chat(
    model: &ChatModel,
    scorer: Option<&ChatModel>,
    messages: Vec<ChatMessage>,
    spec: &Spec,
) -> Result<(Vec<ChatMessage>, Report), String> {
    spec.validate()?;
    let original: usize = messages.iter().map(|m| count(model, &m.content)).sum();
    let last_user = messages.iter().rposition(|m| m.role == "user");
    // The compressible parts (message index, text) and the protected token count.
    let mut parts: Vec<(usize, String, String)> = Vec::new(); // (index, context, kept suffix)
    let mut protected = 0usize;
    for (i, m) in messages.iter().enumerate() {
        if m.role == "system" {
            protected += count(model, &m.content);
        } else if Some(i) == last_user {
            let (context, question) = split_question(&m.content);
            protected += count(model, question);
            parts.push((i, context.to_string(), question.to_string()));
        } else {
            parts.push((i, m.content.clone(), String::new()));
        }
    }
    let compressible: usize = parts.iter().map(|p| count(model, &p.1)).sum();
    let target = (spec.ratio * original as f64).round() as usize;
    let budget = target.saturating_sub(protected);
    let mut out = messages;
    for (i, context, question) in parts {
        let share = if compressible == 0 {
            0
        } else {
            (budget as f64 * count(model, &context) as f64 / compressible as f64).floor() as usize
        };
        let compressed = apply(model, scorer.unwrap_or(model), spec.method, &context, share)?;
        out[i].content = match (compressed.is_empty(), question.is_empty()) {
            (true, _) => question.trim_start().to_string(),
            (false, true) => compressed,
            (false, false) => format!(
                "{compressed}{}",
                if question.starts_with(char::is_whitespace) {
                    question
                } else {
                    format!(" {question}")
                }
            ),
        };
    }
    let compressed: usize = out.iter().map(|m| count(model, &m.content)).sum();
    Ok((out, report(spec, original, compressed)))
}

/// Compress a completion prompt: its last sentence stays.
pub fn compress_text(
    model: &ChatModel,
    scorer: Option<&ChatModel>,
    text: &str,
    spec: &Spec,
) -> Result<(String, Report), String> {
    let (messages, report) =
        compress_chat(model, scorer, vec![ChatMessage::new("user", text)], spec)?;
    Ok((
        messages
            .into_iter()
            .next()
            .map(|m| m.content)
            .unwrap_or_default(),
        report,
    ))
}

fn report(spec: &Spec, original: usize, compressed: usize) -> Report {
    Report {
        method: spec.method,
        target_ratio: spec.ratio,
        original_tokens: original,
        compressed_tokens: compressed,
        ratio: if original == 0 {
            1.0
        } else {
            compressed as f64 / original as f64
        },
    }
}

/// Where the sessions' compression defaults (applied when a request names none) are saved.
pub const SETTINGS_KEY: &str = "compression.sessions";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_removes_blanks_and_repeats_only() {
        let text = "Hello\u{200B}  world\t!\n\n\n\nSame line\nSame line\nEnd  ";
        assert_eq!(normalize(text), "Hello world !\n\nSame line\nEnd");
    }

    #[test]
    fn the_question_is_the_last_sentence() {
        assert_eq!(
            split_question("Some text. More text. What is it?"),
            ("Some text. More text.", " What is it?")
        );
        assert_eq!(split_question("Only a question?"), ("", "Only a question?"));
        assert_eq!(
            split_question("Context\nWhat now"),
            ("Context\n", "What now")
        );
        assert!(Spec {
            method: Method::Prune,
            ratio: 0.0,
            scorer: None
        }
        .validate()
        .is_err());
    }
}
