//! The engine thread's part of speculative decoding: which decodes get a draft this step (prompt
//! lookup first, being free; the draft model where lookup finds nothing), and the check of each
//! draft against the served model's own sampling.

use std::collections::HashMap;

use super::Worker;
use crate::scheduler::batch::{SeqId, StepPlan, Work};
use crate::scheduler::draft_model::{DraftCache, DraftModel, DraftRequest};
use crate::scheduler::speculate::{self, Speculation};

/// What a draft model's tokens are expected to do before a sequence has a record of its own:
/// typical of a same-family pair (llama.cpp and vLLM report 0.6-0.9).
const EXPECTED_ACCEPTANCE: f64 = 0.7;

/// Tokens drafted for one sequence this step, and who drafted them.
pub(super) struct Draft {
    pub tokens: Vec<u32>,
    by_model: bool,
}

/// A sequence's draft-model cache and the record of how its drafts fared.
pub(super) struct ModelDrafts {
    cache: DraftCache,
    record: Speculation,
}

impl ModelDrafts {
    pub fn new(draft: &DraftModel) -> Self {
        Self {
            cache: draft.new_cache(),
            record: Speculation::expecting(EXPECTED_ACCEPTANCE),
        }
    }

    /// Free the cache (a preempted sequence computes everything again).
    pub fn forget(&mut self, draft: &DraftModel) {
        self.cache = draft.new_cache();
    }

    pub fn bytes(&self) -> usize {
        self.cache.bytes()
    }
}

impl Worker {
    /// Drafts for this step's decodes, within the step's token budget.
    pub(super) fn drafts(&mut self, plan: &StepPlan) -> HashMap<SeqId, Draft> {
        let limit = self.model.transformer.info.context_length;
        let budgets = self.planner.budgets();
        let mut room = budgets.max_step_tokens.saturating_sub(plan.tokens());
        let mut drafts = HashMap::new();
        // Sequences left to the draft model, and how many tokens each may take.
        let mut for_model: Vec<(SeqId, usize)> = Vec::new();
        for w in plan.work.iter().filter(|w| w.samples && w.tokens == 1) {
            let Some(seq) = self.seqs.get_mut(&w.id) else {
                continue;
            };
            // Room left in the answer and in the context after the token this step samples.
            let left = (seq.max_tokens.saturating_sub(seq.completion_tokens + 1))
                .min(limit.saturating_sub(seq.tokens.len() + 1))
                .min(room);
            if left == 0 {
                continue;
            }
            if let Some(lookup) = seq.lookup.as_mut() {
                let tokens = speculate::lookup(&seq.tokens, lookup.draft_len(0.0).min(left));
                if !tokens.is_empty() {
                    room -= tokens.len();
                    let draft = Draft {
                        tokens,
                        by_model: false,
                    };
                    drafts.insert(w.id, draft);
                    continue;
                }
            }
            if let (Some(model), Some(d)) = (self.draft.as_ref(), seq.drafting.as_mut()) {
                let want = d.record.draft_len(model.cost).min(left);
                if want > 0 {
                    room -= want;
                    for_model.push((w.id, want));
                }
            }
        }
        if !for_model.is_empty() {
            self.draft_with_model(&for_model, budgets.prefill_chunk, &mut drafts);
        }
        drafts
    }

    /// The draft model's drafts for `wanted`, batched. A failed pass costs only the drafts.
    fn draft_with_model(
        &mut self,
        wanted: &[(SeqId, usize)],
        catch_up: usize,
        drafts: &mut HashMap<SeqId, Draft>,
    ) {
        let Some(model) = self.draft.as_ref() else {
            return;
        };
        let mut requests: Vec<(SeqId, DraftRequest)> = Vec::with_capacity(wanted.len());
        for (id, seq) in self.seqs.iter_mut() {
            let Some(&(_, max)) = wanted.iter().find(|(w, _)| w == id) else {
                continue;
            };
            if let Some(d) = seq.drafting.as_mut() {
                let request = DraftRequest {
                    tokens: &seq.tokens,
                    cache: &mut d.cache,
                    max,
                };
                requests.push((*id, request));
            }
        }
        let ids: Vec<SeqId> = requests.iter().map(|(id, _)| *id).collect();
        let mut requests: Vec<DraftRequest> = requests.into_iter().map(|(_, r)| r).collect();
        match model.draft(&mut requests, catch_up) {
            Ok(made) => {
                for (id, tokens) in ids.into_iter().zip(made) {
                    if !tokens.is_empty() {
                        let draft = Draft {
                            tokens,
                            by_model: true,
                        };
                        drafts.insert(id, draft);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the draft model failed; decoding without drafts"),
        }
    }

    /// Sample a drafting sequence's rows in order, going on while the sampler picks the drafted
    /// token; then its cache and the planner keep what stood.
    pub(super) fn verify(&mut self, w: &Work, draft: &Draft, rows: &mut [Vec<f32>]) {
        let mut accepted = 0;
        for (i, logits) in rows.iter_mut().enumerate() {
            // Should the sequence end at row i, the prefix cache keeps only the rows that
            // stood, never one of a draft still being checked.
            if let Some(seq) = self.seqs.get_mut(&w.id) {
                seq.checked_rows = Some(w.start + 1 + i);
            }
            match self.sample(w.id, logits, None) {
                Some(token) if draft.tokens.get(i) == Some(&token) => accepted += 1,
                _ => break,
            }
        }
        let drafted = draft.tokens.len();
        self.with_status(|s| {
            s.drafted_tokens += drafted as u64;
            s.accepted_tokens += accepted as u64;
            if let (true, Some(m)) = (draft.by_model, s.draft_model.as_mut()) {
                m.drafted_tokens += drafted as u64;
                m.accepted_tokens += accepted as u64;
            }
        });
        if let Some(seq) = self.seqs.get_mut(&w.id) {
            // The pending token and the drafts that stood; the rest of the pass is forgotten.
            seq.cache.truncate(w.start + 1 + accepted);
            seq.checked_rows = None;
            let record = match draft.by_model {
                true => seq.drafting.as_mut().map(|d| &mut d.record),
                false => seq.lookup.as_mut(),
            };
            if let Some(record) = record {
                record.record(drafted, accepted);
            }
            self.planner.advance(w.id, accepted);
        }
    }
}
