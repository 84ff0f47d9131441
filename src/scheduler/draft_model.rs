//! Speculative decoding with a draft model: a smaller model with the same vocabulary guesses the
//! next few tokens greedily, and the served model checks them in one pass, as it checks prompt
//! lookup's drafts (`speculate`). The answer is the served model's, token for token.
//!
//! The draft model keeps a KV cache per sequence that follows the sequence's tokens. It never
//! learns which drafted tokens stood: before each draft its cache forgets every row past the
//! longest prefix it shares with the sequence, then catches up. Catching up takes at most one
//! prefill chunk per step, so a long prompt (or one whose KV came from the prefix cache) never
//! stalls the other streams; the sequence drafts once its cache has caught up.
//!
//! A draft's first token is always tried (the sequence's acceptance record decides whether to
//! draft at all); after it, drafting stops where the draft model is unsure, as llama.cpp's
//! `--draft-p-min` does: a token less likely under the draft model than what drafting it costs
//! (its draft step and its row in the check, as shares of a decode step) is not worth a try.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;

use crate::engine::kv::KvCache;
use crate::engine::kv_rows::KvType;
use crate::engine::models::{ModelError, SeqInput};
use crate::engine::ChatModel;
use crate::scheduler::speculate;

/// Token ids below this may differ between two vocabularies of one family (control tokens
/// renamed); llama.cpp's speculative example starts its comparison there too.
const FIRST_COMPARED_TOKEN: u32 = 5;
/// Vocabularies padded to different sizes still pair when the padding is this small.
const MAX_VOCAB_DIFFERENCE: usize = 128;

/// Why a model cannot draft for another.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(
        "the draft model's vocabulary has {draft} tokens and the served model's {target}; a \
         draft model must share the served model's tokenizer"
    )]
    VocabularySize { draft: usize, target: usize },
    #[error(
        "token {id} is `{draft}` in the draft model and `{target}` in the served model; a draft \
         model must share the served model's tokenizer"
    )]
    Token {
        id: u32,
        draft: String,
        target: String,
    },
    #[error("the draft model starts prompts with another token than the served model")]
    Bos,
}

/// The draft model of an engine.
pub struct DraftModel {
    /// The name it was given (`--draft`).
    pub name: String,
    model: Arc<ChatModel>,
    /// One drafted token's time as a share of a served decode step: decode reads every weight
    /// once, so the ratio of the two files' weight bytes.
    pub cost: f64,
    kv_type: KvType,
    /// Ids at or past this are not the served model's: a draft ends before one.
    target_vocab: usize,
    /// A drafted token less likely than this (under the draft model) ends the draft.
    min_confidence: f32,
}

/// One sequence's draft cache and the tokens its rows hold.
pub struct DraftCache {
    cache: KvCache,
    fed: Vec<u32>,
}

impl DraftCache {
    pub fn bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// What one sequence asks of a draft: its tokens so far (the last one not yet computed by the
/// served model) and how many tokens to draft at most.
pub struct DraftRequest<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut DraftCache,
    pub max: usize,
}

impl DraftModel {
    /// Load the GGUF at `path` (and warm it up) to draft for `target`, whose file has
    /// `target_bytes`.
    pub fn load(
        name: &str,
        path: &Path,
        target: &ChatModel,
        target_bytes: u64,
        device: &Device,
        kv_type: KvType,
    ) -> Result<Self, String> {
        let failed = |e: String| format!("the draft model `{name}`: {e}");
        let draft = ChatModel::load(path, device).map_err(|e| failed(e.to_string()))?;
        crate::engine::generate::warm_up(&draft).map_err(|e| failed(e.to_string()))?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let cost = bytes as f64 / target_bytes.max(1) as f64;
        Self::pair(name, target, draft, cost, kv_type).map_err(|e| failed(e.to_string()))
    }

    /// `draft` drafts for `target` if their vocabularies agree.
    pub fn pair(
        name: &str,
        target: &ChatModel,
        draft: impl Into<Arc<ChatModel>>,
        cost: f64,
        kv_type: KvType,
    ) -> Result<Self, PairError> {
        let draft = draft.into();
        let (t, d) = (&target.tokenizer, &draft.tokenizer);
        let (target_vocab, draft_vocab) = (t.vocab_size(), d.vocab_size());
        if target_vocab.abs_diff(draft_vocab) > MAX_VOCAB_DIFFERENCE {
            return Err(PairError::VocabularySize {
                draft: draft_vocab,
                target: target_vocab,
            });
        }
        let common = target_vocab.min(draft_vocab) as u32;
        for id in FIRST_COMPARED_TOKEN..common {
            let (a, b) = (t.tokenizer.id_to_token(id), d.tokenizer.id_to_token(id));
            if a != b {
                return Err(PairError::Token {
                    id,
                    draft: b.unwrap_or_default(),
                    target: a.unwrap_or_default(),
                });
            }
        }
        if t.special.bos != d.special.bos || t.special.add_bos != d.special.add_bos {
            return Err(PairError::Bos);
        }
        Ok(Self {
            name: name.to_string(),
            model: draft,
            cost,
            kv_type,
            target_vocab,
            min_confidence: (speculate::ROW_COST + cost).clamp(0.1, 0.9) as f32,
        })
    }

    pub fn new_cache(&self) -> DraftCache {
        DraftCache {
            cache: self.model.transformer.new_cache_of(self.kv_type),
            fed: Vec::new(),
        }
    }

    /// Greedy drafts for several sequences, batched: one pass catches every cache up (at most
    /// `catch_up` tokens each; a sequence further behind drafts nothing this time), then one
    /// pass per drafted position. Drafts may come back shorter than asked, or empty.
    pub fn draft(
        &self,
        requests: &mut [DraftRequest],
        catch_up: usize,
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut drafts: Vec<Vec<u32>> = vec![Vec::new(); requests.len()];
        // Each cache forgets what the sequence does not hold (drafts that fell, a preemption).
        let mut fed: Vec<Vec<u32>> = Vec::with_capacity(requests.len());
        let mut drafting: Vec<bool> = Vec::with_capacity(requests.len());
        for r in requests.iter_mut() {
            let keep = common_prefix(&r.cache.fed, r.tokens).min(r.tokens.len().saturating_sub(1));
            r.cache.cache.truncate(keep);
            r.cache.fed.truncate(keep);
            let behind = &r.tokens[keep..];
            let take = behind.len().min(catch_up.max(1));
            drafting.push(take == behind.len() && r.max > 0);
            fed.push(behind[..take].to_vec());
        }
        let mut next = self.pass(requests, &fed, 0.0)?;
        loop {
            let mut more = false;
            for (i, r) in requests.iter_mut().enumerate() {
                r.cache.fed.append(&mut fed[i]);
                if !drafting[i] {
                    continue;
                }
                match next[i] {
                    Some(token) => {
                        drafts[i].push(token);
                        // The last drafted token is checked, never fed to the draft model.
                        if drafts[i].len() < r.max {
                            fed[i].push(token);
                            more = true;
                        } else {
                            drafting[i] = false;
                        }
                    }
                    None => drafting[i] = false,
                }
            }
            if !more {
                break;
            }
            next = self.pass(requests, &fed, self.min_confidence)?;
        }
        Ok(drafts)
    }

    /// One forward pass over the sequences with tokens to feed: each one's greedy next token,
    /// None where it fed nothing or the draft model gives it less than `min`.
    fn pass(
        &self,
        requests: &mut [DraftRequest],
        fed: &[Vec<u32>],
        min: f32,
    ) -> Result<Vec<Option<u32>>, ModelError> {
        let mut next = vec![None; requests.len()];
        let mut inputs: Vec<SeqInput> = Vec::new();
        let mut rows: Vec<usize> = Vec::new();
        for (i, (r, tokens)) in requests.iter_mut().zip(fed).enumerate() {
            if !tokens.is_empty() {
                rows.push(i);
                inputs.push(SeqInput {
                    tokens,
                    cache: &mut r.cache.cache,
                    all_logits: false,
                });
            }
        }
        if inputs.is_empty() {
            return Ok(next);
        }
        let logits = self
            .model
            .transformer
            .forward(&mut inputs)?
            .to_vec2::<f32>()?;
        for (i, row) in rows.into_iter().zip(logits) {
            next[i] = confident_argmax(&row, min).filter(|&t| (t as usize) < self.target_vocab);
        }
        Ok(next)
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The most likely token, when its probability reaches `min`.
fn confident_argmax(logits: &[f32], min: f32) -> Option<u32> {
    let (best, &max) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let total: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (1.0 / total >= min).then_some(best as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsure_tokens_end_a_draft() {
        assert_eq!(confident_argmax(&[0.0, 10.0, 0.0], 0.75), Some(1));
        // Two tokens nearly as likely: 52.5% and 47.5%.
        assert_eq!(confident_argmax(&[5.0, 4.9, -20.0], 0.75), None);
        assert_eq!(confident_argmax(&[5.0, 4.9, -20.0], 0.4), Some(0));
        assert_eq!(confident_argmax(&[], 0.1), None);
    }

    #[test]
    fn caches_keep_the_prefix_they_share() {
        assert_eq!(common_prefix(&[1, 2, 3, 9], &[1, 2, 3, 4, 5]), 3);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2]), 2);
    }
}
