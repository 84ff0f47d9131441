//! Prefix cache: KV caches of finished sequences, kept so that a new prompt starting with the
//! same tokens (a system prompt, the earlier turns of a chat) skips computing them again.
//!
//! The KV of position `i` depends only on tokens `0..=i`, so any common prefix of a stored
//! sequence and a new prompt is reusable, not only whole entries. A hit hands out a copy (the
//! new sequence appends to it); a finished sequence's cache moves in without a copy. Memory is
//! bounded; the least recently used entries go first.

use candle_core::Result;

use crate::engine::kv::KvCache;

/// Shorter common prefixes are not worth a lookup's copy.
pub const MIN_REUSE: usize = 4;

struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: usize,
    last_used: u64,
}

/// Figures for `/api/engine`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PrefixStats {
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub lookups: u64,
    pub hits: u64,
    /// Prompt tokens served from the cache instead of computed.
    pub hit_tokens: u64,
    /// Prompt tokens looked up.
    pub lookup_tokens: u64,
}

/// A hit: this many prompt tokens are already in `cache`.
pub struct Hit {
    pub tokens: usize,
    pub cache: KvCache,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: usize,
    max_bytes: usize,
    clock: u64,
    stats: PrefixStats,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            max_bytes,
            clock: 0,
            stats: PrefixStats::default(),
        }
    }

    pub fn stats(&self) -> PrefixStats {
        PrefixStats {
            entries: self.entries.len(),
            bytes: self.bytes,
            max_bytes: self.max_bytes,
            ..self.stats
        }
    }

    /// The longest cached prefix of `prompt`, copied into a cache with room for `reserve`
    /// positions. At least the prompt's last token is left to compute: its logits are needed.
    pub fn lookup(&mut self, prompt: &[u32], reserve: usize) -> Result<Option<Hit>> {
        self.stats.lookups += 1;
        self.stats.lookup_tokens += prompt.len() as u64;
        let usable = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter_mut()
            .map(|e| (common_prefix(&e.tokens, prompt).min(usable), e))
            .max_by_key(|(n, _)| *n);
        let Some((n, entry)) = best else {
            return Ok(None);
        };
        if n < MIN_REUSE {
            return Ok(None);
        }
        self.clock += 1;
        entry.last_used = self.clock;
        let cache = entry.cache.copy_prefix(n, reserve)?;
        self.stats.hits += 1;
        self.stats.hit_tokens += n as u64;
        Ok(Some(Hit { tokens: n, cache }))
    }

    /// Keep a finished sequence's KV: `tokens` are the ones in `cache`, in order.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: KvCache) {
        // Rows that do not match their tokens one for one are never kept for reuse.
        if tokens.len() < MIN_REUSE || tokens.len() != cache.len() {
            return;
        }
        // Already covered by a longer entry: nothing new to keep.
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.len() >= tokens.len() && e.tokens.starts_with(&tokens))
        {
            self.clock += 1;
            e.last_used = self.clock;
            return;
        }
        // Entries this one extends are superseded.
        let mut freed = 0;
        self.entries.retain(|e| {
            let keep = !tokens.starts_with(&e.tokens);
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        self.bytes -= freed;
        let bytes = cache.bytes();
        if bytes > self.max_bytes {
            return;
        }
        self.clock += 1;
        self.entries.push(Entry {
            tokens,
            cache,
            bytes,
            last_used: self.clock,
        });
        self.bytes += bytes;
        while self.bytes > self.max_bytes {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
                .expect("bytes > 0 means entries exist");
            self.bytes -= self.entries.swap_remove(oldest).bytes;
        }
    }

    /// Drop everything (the model is unloading).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A one-layer cache whose keys at position i equal the token at i, so reuse is visible.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut cache = KvCache::new(1);
        let vals: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
        let k = Tensor::from_vec(vals, (1, tokens.len(), 1), &Device::Cpu).unwrap();
        cache.append(0, &k, &k).unwrap();
        cache.advance(tokens.len());
        cache
    }

    fn keys(cache: &mut KvCache) -> Vec<f32> {
        let z = Tensor::zeros((1, 1, 1), candle_core::DType::F32, &Device::Cpu).unwrap();
        let (k, _) = cache.append(0, &z, &z).unwrap();
        let n = cache.len();
        k.narrow(1, 0, n)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn rows_that_do_not_match_their_tokens_are_never_kept() {
        let mut pc = PrefixCache::new(1 << 20);
        // A cache with two more rows than tokens (drafts still being checked).
        let tokens: Vec<u32> = (1..=8).collect();
        pc.insert(tokens.clone(), cache_of(&(1..=10).collect::<Vec<u32>>()));
        let mut prompt = tokens.clone();
        prompt.push(99);
        assert!(pc.lookup(&prompt, 64).unwrap().is_none());
        pc.insert(tokens.clone(), cache_of(&tokens));
        assert_eq!(pc.lookup(&prompt, 64).unwrap().expect("hit").tokens, 8);
    }

    #[test]
    fn the_longest_common_prefix_is_reused_and_the_last_token_left_to_compute() {
        let mut pc = PrefixCache::new(1 << 20);
        let system: Vec<u32> = (1..=10).collect();
        pc.insert(system.clone(), cache_of(&system));
        let mut turn: Vec<u32> = (1..=6).collect();
        turn.extend([50, 51]);
        pc.insert(turn.clone(), cache_of(&turn));

        let mut prompt = system.clone();
        prompt.extend([20, 21, 22]);
        let mut hit = pc.lookup(&prompt, 64).unwrap().expect("hit");
        assert_eq!(hit.tokens, 10);
        assert_eq!(
            keys(&mut hit.cache),
            (1..=10).map(|t| t as f32).collect::<Vec<_>>()
        );

        // The whole prompt is cached: all but its last token are reused.
        let hit = pc.lookup(&system, 64).unwrap().unwrap();
        assert_eq!(hit.tokens, 9);
        // A prompt diverging after 3 tokens is below the reuse threshold.
        assert!(pc.lookup(&[1, 2, 3, 99, 98], 64).unwrap().is_none());
        let s = pc.stats();
        assert_eq!((s.lookups, s.hits, s.hit_tokens), (3, 2, 19));
    }

    #[test]
    fn a_longer_turn_supersedes_its_prefix_and_a_shorter_one_adds_nothing() {
        let mut pc = PrefixCache::new(1 << 20);
        let a: Vec<u32> = (1..=8).collect();
        let b: Vec<u32> = (1..=16).collect();
        pc.insert(a.clone(), cache_of(&a));
        pc.insert(b.clone(), cache_of(&b));
        assert_eq!(pc.stats().entries, 1);
        pc.insert(a.clone(), cache_of(&a));
        assert_eq!(pc.stats().entries, 1);
        assert_eq!(pc.stats().bytes, cache_of(&b).bytes());
    }

    #[test]
    fn memory_is_bounded_by_evicting_the_least_recently_used() {
        let one = cache_of(&[1, 2, 3, 4, 5]).bytes();
        let mut pc = PrefixCache::new(2 * one);
        let seqs: Vec<Vec<u32>> = (0..3).map(|i| vec![i * 10, 1, 2, 3, 4]).collect();
        pc.insert(seqs[0].clone(), cache_of(&seqs[0]));
        pc.insert(seqs[1].clone(), cache_of(&seqs[1]));
        // Touch the first so the second is the oldest.
        assert!(pc.lookup(&[0, 1, 2, 3, 4, 9], 8).unwrap().is_some());
        pc.insert(seqs[2].clone(), cache_of(&seqs[2]));
        let s = pc.stats();
        assert_eq!((s.entries, s.bytes), (2, 2 * one));
        assert!(pc.lookup(&[10, 1, 2, 3, 4, 9], 8).unwrap().is_none());
        assert!(pc.lookup(&[0, 1, 2, 3, 4, 9], 8).unwrap().is_some());
        assert!(pc.lookup(&[20, 1, 2, 3, 4, 9], 8).unwrap().is_some());
    }
}
