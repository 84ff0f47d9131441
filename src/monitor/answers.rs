//! Finished answers waiting to be measured for their session's consistency (length, and
//! similarity to the session's earlier answers): a bounded queue the consistency worker drains.
//! When the worker falls behind, the oldest answers are dropped and counted, never the request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// Answers waiting at most; past it the oldest go.
const QUEUE: usize = 256;
/// Characters of an answer kept: enough for its embedding (MiniLM reads 256 tokens).
pub const KEEP_CHARS: usize = 4000;

/// One finished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub session: String,
    pub model: String,
    pub at: f64,
    pub text: String,
    pub tokens: u64,
}

#[derive(Default)]
pub struct AnswerQueue {
    queue: Mutex<VecDeque<Answered>>,
    ready: Notify,
    dropped: AtomicU64,
}

impl AnswerQueue {
    pub fn push(&self, mut a: Answered) {
        if let Some((cut, _)) = a.text.char_indices().nth(KEEP_CHARS) {
            a.text.truncate(cut);
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= QUEUE {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(a);
        drop(q);
        self.ready.notify_one();
    }

    /// Everything queued, oldest first (empty when nothing is).
    pub fn drain(&self) -> Vec<Answered> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.drain(..).collect()
    }

    /// Wait until something is queued.
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(i: usize, text: &str) -> Answered {
        Answered {
            session: "s".into(),
            model: "m".into(),
            at: i as f64,
            text: text.into(),
            tokens: 1,
        }
    }

    #[test]
    fn bounded_oldest_first_and_cut_to_length() {
        let q = AnswerQueue::default();
        for i in 0..QUEUE + 2 {
            q.push(answer(i, "x"));
        }
        let all = q.drain();
        assert_eq!((all.len(), all[0].at, q.dropped()), (QUEUE, 2.0, 2));
        assert!(q.drain().is_empty());
        q.push(answer(0, &"é".repeat(KEEP_CHARS + 10)));
        assert_eq!(q.drain()[0].text.chars().count(), KEEP_CHARS);
    }
}
