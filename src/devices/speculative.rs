//! `lantern bench MODEL --speculative [--draft DRAFT]`: decode speed with and without
//! speculative decoding, through the engine's own scheduler (where drafting lives), on an answer
//! that repeats its prompt (a code edit) and on free-form text.
//!
//! Every setting is an engine of its own over one copy of the weights, and the requests go round
//! them one at a time, so a noisy neighbour slows all alike. Decode tok/s is (tokens - 1) over
//! the time from the first token to the last. Greedy answers must be the same in every setting:
//! a run where one differs is an error, never a figure.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::engine::kv_rows::KvType;
use crate::engine::sampler::SamplingParams;
use crate::engine::template::ChatMessage;
use crate::engine::ChatModel;
use crate::scheduler::draft_model::DraftModel;
use crate::scheduler::{EngineConfig, EngineHandle, GenEvent, ValidatedRequest};

const CODE: &str = "Rewrite this Python code with the variable x renamed to value. Answer with \
the code only.\n\n```python\ndef area(x):\n    return x * x * 3.14159\n\ndef perimeter(x):\n    \
return 2 * x * 3.14159\n\ndef scaled(x, factor):\n    return area(x) * factor + perimeter(x) * \
factor\n\ndef describe(x):\n    print(\"area\", area(x), \"perimeter\", perimeter(x))\n```";

/// The prompts measured: one whose answer repeats it, one free-form.
const PROMPTS: [(&str, &str); 2] = [
    ("code edit", CODE),
    (
        "free-form",
        "Write a short story about a lighthouse keeper and a storm.",
    ),
];

/// One setting's figures on one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct SettingFigures {
    pub setting: String,
    pub prompt: String,
    pub completion_tokens: usize,
    /// Median decode tok/s over the repetitions.
    pub tok_s: f64,
    /// Over the plain setting's median on the same prompt.
    pub speedup: f64,
    pub drafted_tokens: u64,
    pub accepted_tokens: u64,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct SpeculativeReport {
    pub model: String,
    pub draft: Option<String>,
    pub reps: usize,
    pub max_tokens: usize,
    pub rows: Vec<SettingFigures>,
}

/// Run the comparison: `draft` adds the draft model's settings (alone and beside prompt
/// lookup). `progress` hears each finished request.
pub fn compare(
    (name, path): (&str, &Path),
    draft: Option<(&str, &Path)>,
    device: &candle_core::Device,
    (reps, max_tokens): (usize, usize),
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<SpeculativeReport> {
    let model = Arc::new(ChatModel::load(path, device)?);
    let target_bytes = std::fs::metadata(path)?.len();
    let draft_model = match draft {
        Some((draft_name, draft_path)) => Some(Arc::new(ChatModel::load(draft_path, device)?))
            .map(|m| (draft_name, draft_path, m)),
        None => None,
    };
    let pair = |lookup: bool, drafting: bool| -> anyhow::Result<EngineHandle> {
        let config = EngineConfig {
            prompt_lookup: lookup,
            ..Default::default()
        };
        let draft = match (&draft_model, drafting) {
            (Some((n, p, m)), true) => {
                let bytes = std::fs::metadata(p)?.len();
                let cost = bytes as f64 / target_bytes.max(1) as f64;
                Some(DraftModel::pair(n, &model, m.clone(), cost, KvType::F16)?)
            }
            _ => None,
        };
        Ok(EngineHandle::start_with_draft(
            name,
            model.clone(),
            draft,
            config,
        ))
    };
    let mut settings = vec![
        ("plain", pair(false, false)?),
        ("prompt lookup", pair(true, false)?),
    ];
    if draft_model.is_some() {
        settings.push(("draft model", pair(false, true)?));
        settings.push(("both", pair(true, true)?));
    }
    let mut rows = Vec::new();
    for (label, prompt) in PROMPTS {
        let messages = vec![ChatMessage::new("user", prompt)];
        let (ids, _) = model.chat_prompt_with_tools(messages, &[], None, false)?;
        let before: Vec<(u64, u64)> = settings.iter().map(|(_, h)| drafted(h)).collect();
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
        let mut answers: Vec<Option<Vec<u32>>> = vec![None; settings.len()];
        for rep in 0..=reps {
            for (i, (setting, handle)) in settings.iter().enumerate() {
                let (tokens, tok_s) = greedy(handle, &ids, max_tokens)?;
                match &answers[i] {
                    Some(first) if *first != tokens => {
                        anyhow::bail!("{label}: {setting} answered differently on a repetition")
                    }
                    _ => answers[i] = Some(tokens),
                }
                // The first round warms every engine up.
                if rep > 0 {
                    runs[i].push(tok_s);
                }
                progress(&format!("{label}: {setting}, repetition {rep} of {reps}"));
            }
        }
        if answers.iter().any(|a| *a != answers[0]) {
            anyhow::bail!("{label}: speculative decoding changed a greedy answer");
        }
        let plain = median(&runs[0]);
        for (i, (setting, handle)) in settings.iter().enumerate() {
            let (d, a) = drafted(handle);
            rows.push(SettingFigures {
                setting: setting.to_string(),
                prompt: label.to_string(),
                completion_tokens: answers[i].as_ref().map_or(0, Vec::len),
                tok_s: median(&runs[i]),
                speedup: median(&runs[i]) / plain.max(f64::MIN_POSITIVE),
                drafted_tokens: d - before[i].0,
                accepted_tokens: a - before[i].1,
            });
        }
    }
    Ok(SpeculativeReport {
        model: name.to_string(),
        draft: draft.map(|(n, _)| n.to_string()),
        reps,
        max_tokens,
        rows,
    })
}

/// Tokens drafted and accepted by an engine so far.
fn drafted(handle: &EngineHandle) -> (u64, u64) {
    let status = handle.status();
    (status.drafted_tokens, status.accepted_tokens)
}

/// One greedy answer's tokens and its decode tok/s.
fn greedy(
    handle: &EngineHandle,
    prompt: &[u32],
    max_tokens: usize,
) -> anyhow::Result<(Vec<u32>, f64)> {
    let sampling = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let request = ValidatedRequest::new(prompt.to_vec(), max_tokens, sampling, Vec::new(), None);
    let mut events = handle.schedule(request)?;
    let (mut tokens, mut first, mut last) = (Vec::new(), None, None);
    while let Some(event) = events.blocking_recv() {
        match event {
            GenEvent::Token { id, .. } => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                tokens.push(id);
            }
            GenEvent::Done(_) => break,
            GenEvent::Failed(e) => anyhow::bail!("generation failed: {e}"),
            _ => {}
        }
    }
    let seconds = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    let tok_s = match (tokens.len(), seconds > 0.0) {
        (n, true) if n > 1 => (n - 1) as f64 / seconds,
        _ => 0.0,
    };
    Ok((tokens, tok_s))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The report as a markdown table.
pub fn markdown(r: &SpeculativeReport) -> String {
    let draft = r
        .draft
        .as_ref()
        .map_or(String::new(), |d| format!(", draft model {d}"));
    let mut out = format!(
        "Speculative decoding on {}{draft}: greedy, decode tok/s, median of {} (up to {} tokens)\n\n\
         | prompt | setting | tokens | tok/s | speed-up | drafted | accepted |\n\
         | ------ | ------- | -----: | ----: | -------: | ------: | -------: |\n",
        r.model, r.reps, r.max_tokens
    );
    for row in &r.rows {
        let rate = match row.drafted_tokens {
            0 => "–".to_string(),
            d => format!("{:.0}%", 100.0 * row.accepted_tokens as f64 / d as f64),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2}× | {} | {} ({rate}) |\n",
            row.prompt,
            row.setting,
            row.completion_tokens,
            row.tok_s,
            row.speedup,
            row.drafted_tokens,
            row.accepted_tokens
        ));
    }
    out
}
