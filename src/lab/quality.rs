//! How far a variant drifts from a reference, on a prompt set: the reference answers each prompt
//! greedily, then both models are teacher-forced over that answer, and at every position we
//! compare their next-token distributions — KL divergence (mean and p99), top-1 agreement, and
//! each model's perplexity of the reference's answer — and time each one's greedy generation.
//! Each model's part of each prompt runs as a job on that model's engine thread (between its
//! steps), so a comparison of served models shares their one copy and never races their
//! requests for the weights.

use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;

use crate::engine::kv_rows::KvType;
use crate::engine::models::{SeqInput, Transformer};
use crate::engine::template::ChatMessage;
use crate::scheduler::EngineHandle;

#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    pub reference: String,
    pub variant: String,
    pub prompt_set: String,
    pub prompts: usize,
    /// Positions compared (tokens of the reference's answers).
    pub positions: usize,
    /// KL divergence of the variant from the reference; none against a remote reference,
    /// whose whole next-token distributions are not served.
    pub kl_mean: Option<f64>,
    pub kl_p99: Option<f64>,
    pub kl_max: Option<f64>,
    /// Share of positions where both models' most likely token is the same (against a remote
    /// reference: where the variant's is the token the reference wrote).
    pub top1_agreement: f64,
    /// None against a remote reference.
    pub perplexity_reference: Option<f64>,
    pub perplexity_variant: f64,
    pub reference_tokens_per_second: f64,
    pub variant_tokens_per_second: f64,
    pub max_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error("the models do not share a vocabulary ({0} and {1} tokens): they cannot be compared token by token")]
    Vocabulary(usize, usize),
    #[error("{0}")]
    Run(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<candle_core::Error> for QualityError {
    fn from(e: candle_core::Error) -> Self {
        Self::Run(e.to_string())
    }
}

impl From<crate::engine::models::ModelError> for QualityError {
    fn from(e: crate::engine::models::ModelError) -> Self {
        Self::Run(e.to_string())
    }
}

pub(super) fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    row.iter().map(|&x| x as f64 - log_sum).collect()
}

pub(super) fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Greedy answer of `model` to `prompt`: its tokens (stopping at a stop token) and the time.
pub(super) fn greedy(
    model: &Transformer,
    kv: KvType,
    prompt: &[u32],
    max_tokens: usize,
    stop_ids: &[u32],
) -> Result<(Vec<u32>, f64), QualityError> {
    let mut cache = model.new_cache_of(kv);
    let mut logits = model.forward(&mut [SeqInput {
        tokens: prompt,
        cache: &mut cache,
        all_logits: false,
    }])?;
    let mut out = Vec::new();
    let mut first = None;
    for _ in 0..max_tokens {
        let next = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?[0];
        first.get_or_insert_with(Instant::now);
        if stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        logits = model.forward(&mut [SeqInput {
            tokens: &[next],
            cache: &mut cache,
            all_logits: false,
        }])?;
    }
    // From the first token on: the decode speed, as llama-bench's tg measures it.
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok((out, secs))
}

pub(super) fn all_logits(
    model: &Transformer,
    kv: KvType,
    tokens: &[u32],
) -> Result<Vec<Vec<f32>>, QualityError> {
    let mut cache = model.new_cache_of(kv);
    let logits: Tensor = model.forward(&mut [SeqInput {
        tokens,
        cache: &mut cache,
        all_logits: true,
    }])?;
    Ok(logits.to_vec2::<f32>()?)
}

fn rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[k.min(sorted.len()) - 1]
}

/// One model's part of one prompt: its greedy answer and that answer's time, and its logits
/// at every position of `forced` (the prompt and the reference's answer), when given.
type Part = (Vec<u32>, f64, Vec<Vec<f32>>);

/// Run `work` on `engine`'s thread with its model.
pub(super) async fn on_engine<R: Send + 'static>(
    engine: &EngineHandle,
    work: impl FnOnce(&crate::engine::ChatModel) -> Result<R, QualityError> + Send + 'static,
) -> Result<R, QualityError> {
    engine
        .exclusive(work)
        .await
        .map_err(|e| QualityError::Run(e.to_string()))?
}

/// Compare `variant` with `reference` on `prompts`. `progress(fraction, message)` returns false
/// to cancel.
pub async fn compare(
    names: (&str, &str),
    reference: &EngineHandle,
    variant: &EngineHandle,
    prompt_set: &str,
    prompts: &[String],
    max_tokens: usize,
    progress: &mut (dyn FnMut(f64, &str) -> bool + Send),
) -> Result<QualityReport, QualityError> {
    let (rv, vv) = (reference.info.vocab_size, variant.info.vocab_size);
    if rv != vv {
        return Err(QualityError::Vocabulary(rv, vv));
    }
    let stop_ids = reference.tokenizer.special.stop_ids.clone();
    // Each model with its engine's KV cache: the lab measures what a KV type costs, too.
    let (ref_kv, var_kv) = (reference.kv_type(), variant.kv_type());
    let mut kls = Vec::new();
    let (mut agree, mut nll_ref, mut nll_var) = (0usize, 0f64, 0f64);
    let (mut ref_tokens, mut ref_secs, mut var_tokens, mut var_secs) = (0usize, 0f64, 0usize, 0f64);
    for (i, prompt) in prompts.iter().enumerate() {
        if !progress(
            i as f64 / prompts.len() as f64,
            &format!("prompt {} of {}", i + 1, prompts.len()),
        ) {
            return Err(QualityError::Cancelled);
        }
        let (message, stops) = (ChatMessage::new("user", prompt.as_str()), stop_ids.clone());
        let (ids, (answer, secs, r)): (Vec<u32>, Part) = on_engine(reference, move |m| {
            let ids = m
                .chat_prompt(&[message])
                .map_err(|e| QualityError::Run(e.to_string()))?;
            let (answer, secs) = greedy(&m.transformer, ref_kv, &ids, max_tokens, &stops)?;
            let forced = [&ids[..], &answer[..]].concat();
            let r = if answer.is_empty() {
                Vec::new()
            } else {
                all_logits(&m.transformer, ref_kv, &forced)?
            };
            Ok((ids, (answer, secs, r)))
        })
        .await?;
        ref_tokens += answer.len().saturating_sub(1);
        ref_secs += secs;
        let (prompt_ids, stops) = (ids.clone(), stop_ids.clone());
        let forced = [&ids[..], &answer[..]].concat();
        let compare_answer = !answer.is_empty();
        let (own, secs, v): Part = on_engine(variant, move |m| {
            let (own, secs) = greedy(&m.transformer, var_kv, &prompt_ids, max_tokens, &stops)?;
            let v = if compare_answer {
                all_logits(&m.transformer, var_kv, &forced)?
            } else {
                Vec::new()
            };
            Ok((own, secs, v))
        })
        .await?;
        var_tokens += own.len().saturating_sub(1);
        var_secs += secs;
        if answer.is_empty() {
            continue;
        }
        for (j, &next) in answer.iter().enumerate() {
            let row = ids.len() - 1 + j;
            let (p, q) = (log_softmax(&r[row]), log_softmax(&v[row]));
            let kl: f64 = p
                .iter()
                .zip(&q)
                .map(|(&lp, &lq)| lp.exp() * (lp - lq))
                .sum::<f64>()
                .max(0.0);
            kls.push(kl);
            agree += (argmax(&p) == argmax(&q)) as usize;
            nll_ref -= p[next as usize];
            nll_var -= q[next as usize];
        }
    }
    let n = kls.len();
    let mean = |x: f64| if n == 0 { 0.0 } else { x / n as f64 };
    let kl_mean = mean(kls.iter().sum());
    kls.sort_by(f64::total_cmp);
    let speed = |t: usize, s: f64| if s > 0.0 { t as f64 / s } else { 0.0 };
    progress(1.0, "done");
    Ok(QualityReport {
        reference: names.0.to_string(),
        variant: names.1.to_string(),
        prompt_set: prompt_set.to_string(),
        prompts: prompts.len(),
        positions: n,
        kl_mean: Some(kl_mean),
        kl_p99: Some(rank(&kls, 99.0)),
        kl_max: Some(kls.last().copied().unwrap_or(0.0)),
        top1_agreement: mean(agree as f64),
        perplexity_reference: Some(mean(nll_ref).exp()),
        perplexity_variant: mean(nll_var).exp(),
        reference_tokens_per_second: speed(ref_tokens, ref_secs),
        variant_tokens_per_second: speed(var_tokens, var_secs),
        max_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalizes() {
        let p = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f64 = p.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(argmax(&p), 2);
        assert_eq!(rank(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
    }
}
