//! A quality run against a remote reference (a cloud model, a vLLM deployment): the remote
//! answers each prompt greedily; the local variant is teacher-forced over that answer (in its
//! own tokens) and measured by its perplexity of it and how often its most likely token is the
//! one the reference wrote. A remote engine serves no whole next-token distributions, so there
//! is no KL divergence here: the report says so with empty KL fields.

use std::future::Future;

use super::quality::{
    all_logits, argmax, greedy, log_softmax, on_engine, QualityError, QualityReport,
};
use crate::engine::template::ChatMessage;
use crate::scheduler::EngineHandle;

/// The reference's greedy answer to one prompt, and its decode figures.
pub struct Answer {
    pub text: String,
    pub tokens: usize,
    pub decode_secs: f64,
}

/// Compare `variant` with the answers `reference` gives. `progress(fraction, message)` returns
/// false to cancel.
pub async fn compare<F, Fut>(
    names: (&str, &str),
    mut reference: F,
    variant: &EngineHandle,
    prompt_set: &str,
    prompts: &[String],
    max_tokens: usize,
    progress: &mut (dyn FnMut(f64, &str) -> bool + Send),
) -> Result<QualityReport, QualityError>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Answer, String>>,
{
    let stop_ids = variant.tokenizer.special.stop_ids.clone();
    let kv = variant.kv_type();
    let (mut positions, mut agree, mut nll) = (0usize, 0usize, 0f64);
    let (mut ref_tokens, mut ref_secs, mut var_tokens, mut var_secs) = (0usize, 0f64, 0usize, 0f64);
    for (i, prompt) in prompts.iter().enumerate() {
        let step = format!("prompt {} of {}", i + 1, prompts.len());
        if !progress(i as f64 / prompts.len() as f64, &step) {
            return Err(QualityError::Cancelled);
        }
        let answer = reference(prompt.clone()).await.map_err(QualityError::Run)?;
        ref_tokens += answer.tokens.saturating_sub(1);
        ref_secs += answer.decode_secs;
        let (message, stops) = (ChatMessage::new("user", prompt.as_str()), stop_ids.clone());
        let text = answer.text;
        let (own, secs, scored) = on_engine(variant, move |m| {
            let ids = m
                .chat_prompt(&[message])
                .map_err(|e| QualityError::Run(e.to_string()))?;
            let (own, secs) = greedy(&m.transformer, kv, &ids, max_tokens, &stops)?;
            let written = m
                .tokenizer
                .encode_plain(&text)
                .map_err(|e| QualityError::Run(e.to_string()))?;
            let mut scored = Vec::with_capacity(written.len());
            if !written.is_empty() {
                let forced = [&ids[..], &written[..]].concat();
                let logits = all_logits(&m.transformer, kv, &forced)?;
                for (j, &next) in written.iter().enumerate() {
                    let q = log_softmax(&logits[ids.len() - 1 + j]);
                    scored.push((argmax(&q) == next as usize, q[next as usize]));
                }
            }
            Ok((own, secs, scored))
        })
        .await?;
        var_tokens += own.len().saturating_sub(1);
        var_secs += secs;
        positions += scored.len();
        agree += scored.iter().filter(|(same, _)| *same).count();
        nll -= scored.iter().map(|(_, lp)| lp).sum::<f64>();
    }
    progress(1.0, "done");
    let mean = |x: f64| {
        if positions == 0 {
            0.0
        } else {
            x / positions as f64
        }
    };
    let speed = |t: usize, s: f64| if s > 0.0 { t as f64 / s } else { 0.0 };
    Ok(QualityReport {
        reference: names.0.to_string(),
        variant: names.1.to_string(),
        prompt_set: prompt_set.to_string(),
        prompts: prompts.len(),
        positions,
        kl_mean: None,
        kl_p99: None,
        kl_max: None,
        top1_agreement: mean(agree as f64),
        perplexity_reference: None,
        perplexity_variant: mean(nll).exp(),
        reference_tokens_per_second: speed(ref_tokens, ref_secs),
        variant_tokens_per_second: speed(var_tokens, var_secs),
        max_tokens,
    })
}
