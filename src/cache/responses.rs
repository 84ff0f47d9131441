//! Whole responses to deterministic requests (greedy, or sampled with a fixed seed), kept in
//! memory for a while and bounded in bytes. What is kept is each choice's event stream as the
//! engine produced it (tokens, text pieces, the final figures), so a hit replays as the same
//! response or the same stream, chunk for chunk. The key covers the weights and everything
//! that changes the output; a request that samples without a seed never reads or fills it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::lru::Lru;
use crate::scheduler::GenEvent;

pub type ResponseKey = [u8; 32];

/// Builds a key from typed parts; every part is length-prefixed, so no two different
/// sequences of parts can collide by concatenation.
#[derive(Default)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub fn text(mut self, s: &str) -> Self {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
        self
    }

    pub fn number(mut self, x: u64) -> Self {
        self.0.update(x.to_le_bytes());
        self
    }

    pub fn float(self, x: f32) -> Self {
        self.number(x.to_bits() as u64)
    }

    pub fn tokens(mut self, ids: &[u32]) -> Self {
        self.0.update((ids.len() as u64).to_le_bytes());
        for id in ids {
            self.0.update(id.to_le_bytes());
        }
        self
    }

    pub fn finish(self) -> ResponseKey {
        self.0.finalize().into()
    }
}

/// One stored response: each choice's events, `Done` last.
pub struct Recorded {
    pub choices: Vec<Vec<GenEvent>>,
    stored_at: Instant,
}

fn weight(choices: &[Vec<GenEvent>]) -> usize {
    let event = |e: &GenEvent| match e {
        GenEvent::Token { top, .. } => 16 + top.len() * 8,
        GenEvent::Text(t) => 24 + t.len(),
        GenEvent::NamedToken { token, top, .. } => {
            32 + token.len() + top.iter().map(|(t, _)| 28 + t.len()).sum::<usize>()
        }
        GenEvent::Calls(calls) => calls
            .iter()
            .map(|c| 48 + c.name.len() + c.arguments.len())
            .sum(),
        GenEvent::Done(_) | GenEvent::Failed(_) => 96,
    };
    256 + choices.iter().flatten().map(event).sum::<usize>()
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    expired: AtomicU64,
    bypassed: AtomicU64,
}

/// What `/api/cache` shows.
#[derive(Debug, Serialize)]
pub struct ResponseCacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub ttl_seconds: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub stored: u64,
    pub expired: u64,
    /// Requests that asked not to use it (`Cache-Control: no-cache` / `no-store`).
    pub bypassed: u64,
}

pub struct ResponseCache {
    entries: Mutex<Lru<ResponseKey, Arc<Recorded>>>,
    ttl: Duration,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResponseCache {
    /// `max_bytes` 0 turns the cache off.
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(Lru::new(max_bytes)),
            ttl,
            counters: Counters::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        lock(&self.entries).max_bytes() > 0 && !self.ttl.is_zero()
    }

    /// A stored response younger than the TTL.
    pub fn get(&self, key: &ResponseKey) -> Option<Arc<Recorded>> {
        let mut entries = lock(&self.entries);
        let c = &self.counters;
        match entries.get(key) {
            Some(r) if r.stored_at.elapsed() < self.ttl => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                Some(r)
            }
            Some(_) => {
                entries.remove(key);
                c.expired.fetch_add(1, Ordering::Relaxed);
                c.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            None => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keep a finished response; one whose choices did not all finish normally is not kept.
    pub fn put(&self, key: ResponseKey, choices: Vec<Vec<GenEvent>>) {
        let complete = choices
            .iter()
            .all(|c| matches!(c.last(), Some(GenEvent::Done(_))));
        if !complete || !self.enabled() {
            return;
        }
        let w = weight(&choices);
        let recorded = Arc::new(Recorded {
            choices,
            stored_at: Instant::now(),
        });
        lock(&self.entries).insert(key, recorded, w);
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_bypass(&self) {
        self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn clear(&self) -> usize {
        lock(&self.entries).remove_where(|_| true)
    }

    pub fn stats(&self) -> ResponseCacheStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (hits, misses) = (load(&self.counters.hits), load(&self.counters.misses));
        let entries = lock(&self.entries);
        ResponseCacheStats {
            entries: entries.len() as u64,
            bytes: entries.bytes() as u64,
            max_bytes: entries.max_bytes() as u64,
            ttl_seconds: self.ttl.as_secs(),
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            stored: load(&self.counters.stored),
            expired: load(&self.counters.expired),
            bypassed: load(&self.counters.bypassed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Usage;

    fn done() -> GenEvent {
        GenEvent::Done(Usage::stopped(3, 1))
    }

    #[test]
    fn keys_separate_their_parts() {
        let a = KeyBuilder::default().text("ab").text("c").finish();
        let b = KeyBuilder::default().text("a").text("bc").finish();
        assert_ne!(a, b);
        let t = |ids: &[u32]| KeyBuilder::default().tokens(ids).finish();
        assert_ne!(t(&[1, 2]), t(&[1]));
        assert_eq!(t(&[1, 2]), t(&[1, 2]));
    }

    #[test]
    fn stores_complete_responses_until_they_expire() {
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(50));
        let key = KeyBuilder::default().text("k").finish();
        assert!(cache.get(&key).is_none());
        cache.put(key, vec![vec![GenEvent::Text("hi".into())]]);
        assert!(
            cache.get(&key).is_none(),
            "an unfinished response is not kept"
        );
        cache.put(key, vec![vec![GenEvent::Text("hi".into()), done()]]);
        let hit = cache.get(&key).unwrap();
        assert!(matches!(&hit.choices[0][0], GenEvent::Text(t) if t == "hi"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&key).is_none());
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.expired, s.entries), (1, 3, 1, 0));
    }

    #[test]
    fn a_zero_bound_turns_it_off() {
        let cache = ResponseCache::new(0, Duration::from_secs(60));
        let key = KeyBuilder::default().finish();
        cache.put(key, vec![vec![done()]]);
        assert!(!cache.enabled() && cache.get(&key).is_none());
    }
}
