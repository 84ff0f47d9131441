//! Continuous batching decisions: which sequences take part in the next forward pass, and with
//! how many tokens. Plain data (no threads, no tensors), so unit tests drive it step by step.
//!
//! Every sequence has `known` tokens (prompt plus what it generated) of which `computed` are in
//! its KV cache. A step feeds each chosen sequence the next `tokens` of what it has not computed;
//! when that reaches `known` the step's logits give its next token (`samples`). A decoding
//! sequence therefore feeds one token per step, a prefilling one a chunk. One rule set:
//! - every running decode gets its token each step (streams never stall behind a long prompt);
//! - then unfinished prompts get chunks, oldest first, within the step's token budget;
//! - then waiting sequences are admitted in arrival order (no overtaking) while a sequence slot,
//!   tokens and KV memory for their whole pending prompt remain;
//! - when the decodes no longer fit in KV memory, the newest running sequence is preempted: its
//!   KV is dropped and it waits at the head of the queue to recompute prompt and output later.

use std::collections::VecDeque;

/// The scheduler's own name for a request.
pub type SeqId = u64;

/// Limits of one step and of the whole engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Sequences in the running set at once.
    pub max_seqs: usize,
    /// Tokens in one forward pass (decodes always fit: they are one per sequence).
    pub max_step_tokens: usize,
    /// Prompt tokens of one sequence in one step.
    pub prefill_chunk: usize,
    /// KV cache positions over every sequence (memory / bytes per position).
    pub kv_tokens: usize,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_seqs: 32,
            max_step_tokens: 512,
            prefill_chunk: 256,
            kv_tokens: 32 * 1024,
        }
    }
}

/// One sequence's part of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub id: SeqId,
    /// Position of the first token fed (= tokens already in its KV cache).
    pub start: usize,
    /// Tokens fed this step.
    pub tokens: usize,
    /// This step's logits give the sequence's next token.
    pub samples: bool,
}

/// What the next forward pass holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub work: Vec<Work>,
    /// Sequences whose KV caches must be dropped before this step (they will recompute).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.work.is_empty()
    }

    pub fn tokens(&self) -> usize {
        self.work.iter().map(|w| w.tokens).sum()
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: SeqId,
    known: usize,
    computed: usize,
}

impl Entry {
    fn pending(&self) -> usize {
        self.known - self.computed
    }
}

/// What is left of a step's token budget and of KV memory while it is planned.
struct Room {
    tokens: usize,
    kv: usize,
}

impl Room {
    fn take(&mut self, plan: &mut StepPlan, e: &Entry, n: usize) {
        self.tokens = self.tokens.saturating_sub(n);
        self.kv = self.kv.saturating_sub(n);
        plan.work.push(Work {
            id: e.id,
            start: e.computed,
            tokens: n,
            samples: e.computed + n == e.known,
        });
    }
}

/// The batching state: running sequences in admission order, waiting ones in arrival order.
#[derive(Debug)]
pub struct Planner {
    budgets: Budgets,
    running: Vec<Entry>,
    waiting: VecDeque<Entry>,
    preemptions: u64,
}

impl Planner {
    pub fn new(budgets: Budgets) -> Self {
        assert!(budgets.max_seqs > 0 && budgets.prefill_chunk > 0 && budgets.max_step_tokens > 0);
        Self {
            budgets,
            running: Vec::new(),
            waiting: VecDeque::new(),
            preemptions: 0,
        }
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// A new sequence of `known` tokens, `computed` of them already in its KV cache (a prefix
    /// cache hit); at least one token must remain to compute.
    pub fn add(&mut self, id: SeqId, known: usize, computed: usize) {
        assert!(computed < known, "a sequence needs a token to compute");
        self.waiting.push_back(Entry {
            id,
            known,
            computed,
        });
    }

    /// Forget a finished or cancelled sequence; its KV memory is free from the next step on.
    pub fn remove(&mut self, id: SeqId) -> bool {
        let before = self.running.len() + self.waiting.len();
        self.running.retain(|e| e.id != id);
        self.waiting.retain(|e| e.id != id);
        before != self.running.len() + self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// Sequences preempted since start.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// KV cache positions held by every sequence, running or waiting with a cached prefix.
    pub fn kv_used(&self) -> usize {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .map(|e| e.computed)
            .sum()
    }

    /// Decide the next step. Call [`Planner::commit`] with it once the forward pass ran.
    pub fn plan(&mut self) -> StepPlan {
        let b = self.budgets;
        let mut plan = StepPlan::default();

        // Preempt the newest sequences until every decode fits in KV memory.
        loop {
            let decodes = self.running.iter().filter(|e| e.pending() == 1).count();
            if self.running.len() <= 1 || self.kv_used() + decodes <= b.kv_tokens {
                break;
            }
            let mut victim = self.running.pop().expect("more than one running");
            victim.computed = 0;
            self.preemptions += 1;
            plan.preempted.push(victim.id);
            self.waiting.push_front(victim);
        }

        let mut room = Room {
            tokens: b.max_step_tokens,
            kv: b.kv_tokens.saturating_sub(self.kv_used()),
        };
        for e in self.running.iter().filter(|e| e.pending() == 1) {
            room.take(&mut plan, e, 1);
        }
        for e in self.running.iter().filter(|e| e.pending() > 1) {
            let n = e
                .pending()
                .min(b.prefill_chunk)
                .min(room.tokens)
                .min(room.kv);
            if n == 0 {
                break;
            }
            room.take(&mut plan, e, n);
        }
        while self.running.len() < b.max_seqs && room.tokens > 0 {
            let Some(head) = self.waiting.front() else {
                break;
            };
            // An engine with nothing running always admits, so one huge prompt cannot wedge it.
            let alone = self.running.is_empty() && plan.work.is_empty();
            if !alone && head.pending() > room.kv {
                break;
            }
            let mut n = head.pending().min(b.prefill_chunk).min(room.tokens);
            if !alone {
                n = n.min(room.kv);
            }
            let entry = self.waiting.pop_front().expect("head exists");
            room.take(&mut plan, &entry, n);
            self.running.push(entry);
        }
        plan
    }

    /// `n` drafted tokens of a sequence stood: they are computed and known (prompt lookup).
    pub fn advance(&mut self, id: SeqId, n: usize) {
        if let Some(e) = self.running.iter_mut().find(|e| e.id == id) {
            e.computed += n;
            e.known += n;
        }
    }

    /// Record that `plan` ran: each sequence computed its tokens, and every sampling sequence
    /// has one more known token (remove the ones that finished instead).
    pub fn commit(&mut self, plan: &StepPlan) {
        for w in &plan.work {
            if let Some(e) = self.running.iter_mut().find(|e| e.id == w.id) {
                debug_assert_eq!(e.computed, w.start);
                e.computed += w.tokens;
                if w.samples {
                    e.known += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(max_seqs: usize, step: usize, chunk: usize, kv: usize) -> Budgets {
        Budgets {
            max_seqs,
            max_step_tokens: step,
            prefill_chunk: chunk,
            kv_tokens: kv,
        }
    }

    fn work(plan: &StepPlan, id: SeqId) -> Option<Work> {
        plan.work.iter().copied().find(|w| w.id == id)
    }

    #[test]
    fn a_short_prompt_prefills_then_decodes_one_token_per_step() {
        let mut p = Planner::new(budgets(4, 64, 16, 1000));
        p.add(1, 10, 0);
        let s = p.plan();
        assert_eq!(
            s.work,
            vec![Work {
                id: 1,
                start: 0,
                tokens: 10,
                samples: true
            }]
        );
        p.commit(&s);
        for step in 0..3 {
            let s = p.plan();
            assert_eq!(
                s.work,
                vec![Work {
                    id: 1,
                    start: 10 + step,
                    tokens: 1,
                    samples: true
                }]
            );
            p.commit(&s);
        }
        assert_eq!(p.kv_used(), 13);
        assert!(p.remove(1));
        assert!(p.is_idle());
        assert_eq!(p.kv_used(), 0);
    }

    #[test]
    fn a_long_prompt_is_chunked_and_never_stalls_running_decodes() {
        let mut p = Planner::new(budgets(8, 40, 32, 10_000));
        p.add(1, 5, 0);
        let s = p.plan();
        p.commit(&s);
        p.add(2, 100, 0);
        let mut fed = 0;
        let mut steps = 0;
        loop {
            let s = p.plan();
            steps += 1;
            let d = work(&s, 1).expect("the running stream decodes every step");
            assert_eq!(d.tokens, 1);
            assert!(s.tokens() <= 40, "step budget: {}", s.tokens());
            let w = work(&s, 2).unwrap();
            assert_eq!(w.start, fed);
            assert!(w.tokens <= 32);
            fed += w.tokens;
            p.commit(&s);
            if w.samples {
                break;
            }
        }
        assert_eq!(fed, 100);
        assert_eq!(steps, 4, "32 + 32 + 32 + 4");
        let s = p.plan();
        assert_eq!((work(&s, 2).unwrap().tokens, s.work.len()), (1, 2));
    }

    #[test]
    fn admission_is_first_come_first_served_within_the_sequence_limit() {
        let mut p = Planner::new(budgets(2, 1000, 100, 10_000));
        for id in 1..=4 {
            p.add(id, 10, 0);
        }
        let s = p.plan();
        let ids: Vec<_> = s.work.iter().map(|w| w.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!((p.running(), p.waiting()), (2, 2));
        p.commit(&s);
        p.remove(1);
        let s = p.plan();
        let ids: Vec<_> = s.work.iter().map(|w| w.id).collect();
        assert_eq!(ids, vec![2, 3], "3 is admitted before 4");
    }

    #[test]
    fn the_step_token_budget_holds_back_new_prompts_in_order() {
        let mut p = Planner::new(budgets(8, 20, 16, 10_000));
        p.add(1, 16, 0);
        p.add(2, 16, 0);
        p.add(3, 3, 0);
        let s = p.plan();
        // 16 for the first, 4 for the second: the short third prompt does not overtake.
        assert_eq!(work(&s, 1).unwrap().tokens, 16);
        assert_eq!(work(&s, 2).unwrap().tokens, 4);
        assert!(work(&s, 3).is_none());
    }

    #[test]
    fn a_prompt_waits_until_its_kv_memory_is_free() {
        let mut p = Planner::new(budgets(8, 1000, 1000, 100));
        p.add(1, 60, 0);
        p.add(2, 50, 0);
        let s = p.plan();
        assert!(work(&s, 2).is_none(), "60 + 50 positions do not fit in 100");
        p.commit(&s);
        assert_eq!(p.waiting(), 1);
        p.remove(1);
        let s = p.plan();
        assert_eq!(work(&s, 2).unwrap().tokens, 50);
    }

    #[test]
    fn when_kv_runs_out_the_newest_sequence_is_preempted_and_later_recomputes() {
        let mut p = Planner::new(budgets(8, 1000, 1000, 30));
        p.add(1, 10, 0);
        p.add(2, 10, 0);
        let s = p.plan();
        p.commit(&s); // each has 10 computed, 11 known
        for _ in 0..4 {
            let s = p.plan();
            assert!(s.preempted.is_empty());
            p.commit(&s);
        }
        // 14 + 14 computed; the next decodes need 2 more: 30 fit exactly.
        let s = p.plan();
        assert!(s.preempted.is_empty());
        p.commit(&s);
        // 15 + 15: no room for both decodes. The newest (2) gives its KV back and waits.
        let s = p.plan();
        assert_eq!(s.preempted, vec![2]);
        assert_eq!(s.work.len(), 1);
        assert_eq!(work(&s, 1).unwrap().tokens, 1);
        assert_eq!((p.running(), p.waiting()), (1, 1));
        p.commit(&s);
        p.remove(1);
        // Sequence 2 recomputes everything it knew (its prompt and its 5 generated tokens), then
        // samples its next token: nothing is lost.
        let s = p.plan();
        assert_eq!(
            work(&s, 2).unwrap(),
            Work {
                id: 2,
                start: 0,
                tokens: 16,
                samples: true
            }
        );
        assert_eq!(p.preemptions(), 1);
    }

    #[test]
    fn an_idle_engine_admits_a_prompt_larger_than_its_kv_budget() {
        let mut p = Planner::new(budgets(4, 64, 64, 10));
        p.add(1, 40, 0);
        let s = p.plan();
        assert_eq!(work(&s, 1).unwrap().tokens, 40);
    }

    #[test]
    fn a_cached_prefix_is_not_recomputed_and_counts_as_kv_in_use() {
        let mut p = Planner::new(budgets(4, 64, 64, 1000));
        p.add(1, 100, 90);
        assert_eq!(p.kv_used(), 90);
        let s = p.plan();
        assert_eq!(
            work(&s, 1).unwrap(),
            Work {
                id: 1,
                start: 90,
                tokens: 10,
                samples: true
            }
        );
    }

    #[test]
    fn removing_a_waiting_sequence_frees_its_place() {
        let mut p = Planner::new(budgets(1, 64, 64, 1000));
        p.add(1, 5, 0);
        p.add(2, 5, 0);
        p.add(3, 5, 0);
        let s = p.plan();
        p.commit(&s);
        assert!(p.remove(2));
        assert!(!p.remove(2));
        p.remove(1);
        let s = p.plan();
        assert_eq!(s.work[0].id, 3);
    }
}
