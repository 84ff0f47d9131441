//! Prompt lookup: drafts of a sequence's next tokens copied from what it already holds, checked
//! in one forward pass.
//!
//! An answer that repeats its input (a code edit, an extraction, a quote, names from a
//! document) holds runs of tokens that appeared before. The last few tokens are looked up in
//! the prompt and the answer so far, and the tokens that followed their latest earlier
//! occurrence become a draft. One forward pass over the pending token and the draft gives
//! logits for every drafted position; the sequence's own sampler then samples position by
//! position, and a drafted token stands only where the sampler picked that very token. Logits
//! do not depend on how many rows share a pass (see `host_attention` and `qmatmul`), so the
//! output is token for token the one plain decoding gives, for every sampler and seed.
//!
//! A CPU decode step reads every weight to compute one row; a few more rows in the same pass
//! cost a fraction of that. How many tokens to draft follows the sequence's own acceptance
//! rate, so a free-form answer whose drafts keep failing stops paying for them.

/// Drafted tokens at most: with the pending token, eight rows, one pass of the CPU kernels over
/// each weight block (`qmatmul::ROW_GROUP`).
pub const MAX_DRAFT: usize = 7;
/// Longest and shortest suffix looked up; a single token matches too often to be worth a row.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 2;
/// Time of one more verified row, as a share of a one-row decode step: the output head's
/// rows and the arithmetic of every layer, while the weights are read once. Measured on the
/// default models at 1 and 2 threads (0.12-0.2); the larger figure keeps drafting cautious.
pub const ROW_COST: f64 = 0.2;
/// Weight of the past in the acceptance estimate, per verification.
const DECAY: f64 = 0.8;
/// A sequence that stopped drafting tries one token again after this many steps, so its
/// estimate can recover when its answer turns repetitive.
const PROBE_EVERY: u32 = 16;

/// The tokens that followed the latest earlier occurrence of `tokens`' last n-gram (longest
/// first), at most `max` of them; empty when nothing matches.
pub fn lookup(tokens: &[u32], max: usize) -> Vec<u32> {
    let len = tokens.len();
    if max == 0 {
        return Vec::new();
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if len <= n {
            continue;
        }
        let suffix = &tokens[len - n..];
        // Occurrences that end before the last token, latest first.
        if let Some(at) = (0..len - n).rev().find(|&i| &tokens[i..i + n] == suffix) {
            let from = at + n;
            return tokens[from..(from + max).min(len)].to_vec();
        }
    }
    Vec::new()
}

/// One sequence's record of how its drafts fared.
#[derive(Debug, Clone)]
pub struct Speculation {
    /// Decayed counts of drafted tokens that stood and of drafts cut short.
    accepted: f64,
    rejected: f64,
    idle_steps: u32,
}

impl Default for Speculation {
    fn default() -> Self {
        // Even odds to begin with: two tokens drafted at the first match.
        Self {
            accepted: 1.0,
            rejected: 1.0,
            idle_steps: 0,
        }
    }
}

impl Speculation {
    /// A record that starts out expecting `acceptance` (a draft model, unlike a lookup, is
    /// built to guess right).
    pub fn expecting(acceptance: f64) -> Self {
        Self {
            accepted: 5.0 * acceptance,
            rejected: 5.0 * (1.0 - acceptance),
            idle_steps: 0,
        }
    }

    /// The chance that a drafted token stands, given the one before it did.
    pub fn acceptance(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    /// Tokens to draft this step (0: a plain step): the count whose expected tokens per step
    /// over its cost is highest, or one now and then as a probe when none pays. `making`: what
    /// drafting one token costs, as a share of a decode step (0 for prompt lookup; a draft
    /// model's own step).
    pub fn draft_len(&mut self, making: f64) -> usize {
        let a = self.acceptance();
        let best = (0..=MAX_DRAFT)
            .max_by(|&x, &y| gain(a, x, making).total_cmp(&gain(a, y, making)))
            .unwrap_or(0);
        if best > 0 {
            self.idle_steps = 0;
            return best;
        }
        self.idle_steps += 1;
        if self.idle_steps >= PROBE_EVERY {
            self.idle_steps = 0;
            return 1;
        }
        0
    }

    /// `accepted` of `drafted` tokens stood.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.rejected = self.rejected * DECAY + f64::from(u8::from(accepted < drafted));
    }
}

/// Expected tokens per step with `k` drafted at acceptance `a`, over the step's cost (each
/// drafted token costs `making` and its row in the check).
fn gain(a: f64, k: usize, making: f64) -> f64 {
    let tokens: f64 = (0..=k as i32).map(|i| a.powi(i)).sum();
    tokens / (1.0 + k as f64 * (ROW_COST + making))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_what_followed_the_latest_earlier_occurrence() {
        // "a b c d e ... a b c" → "d e" follows the earlier "a b c".
        let t = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(lookup(&t, 2), vec![4, 5]);
        assert_eq!(lookup(&t, 7), vec![4, 5, 9, 9, 1, 2, 3]);
        // The latest earlier occurrence wins.
        let t = [7, 8, 1, 7, 8, 2, 7, 8];
        assert_eq!(lookup(&t, 1), vec![2]);
        // No repeated bigram, one token, a zero budget: nothing.
        assert!(lookup(&[1, 2, 3, 4], 5).is_empty());
        assert!(lookup(&[1, 1], 5).is_empty());
        assert!(lookup(&[1, 2, 1, 2], 0).is_empty());
        // A run of one token drafts more of it.
        assert_eq!(lookup(&[5, 5, 5, 5], 3), vec![5]);
    }

    #[test]
    fn drafts_grow_with_acceptance_and_stop_when_they_fail() {
        let mut s = Speculation::default();
        assert!((1..=3).contains(&s.draft_len(0.0)));
        for _ in 0..10 {
            s.record(7, 7);
        }
        assert_eq!(s.draft_len(0.0), MAX_DRAFT, "acceptance {}", s.acceptance());
        for _ in 0..20 {
            s.record(2, 0);
        }
        assert!(s.acceptance() < 0.2);
        let drafted: Vec<usize> = (0..PROBE_EVERY).map(|_| s.draft_len(0.0)).collect();
        assert_eq!(drafted.iter().filter(|&&k| k > 0).count(), 1, "{drafted:?}");
        assert_eq!(drafted.last(), Some(&1), "the probe comes last");
    }

    #[test]
    fn drafting_pays_only_above_the_row_cost() {
        assert_eq!(gain(0.0, 0, 0.0), 1.0);
        assert!(gain(0.1, 1, 0.0) < 1.0);
        assert!(gain(0.5, 2, 0.0) > 1.0);
        assert!(gain(0.9, MAX_DRAFT, 0.0) > 2.0);
        // A draft model half as costly as the served one pays only when it is mostly right.
        assert!(gain(0.5, 2, 0.5) < 1.0);
        assert!(gain(0.9, 3, 0.5) > 1.0);
        let mut s = Speculation::default();
        assert_eq!(
            s.draft_len(2.0),
            0,
            "a draft model dearer than the served one"
        );
    }
}
