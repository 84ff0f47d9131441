//! The embedding cache. Level 1 in memory (LRU bounded in bytes), level 2 in SQLite (kept across
//! restarts, bounded in bytes too), keyed by model, weights sha256 and the sha256 of the token
//! ids the model sees (texts that tokenize alike share a vector). A request for an input that
//! another request is computing right now waits for that result instead of computing it again.
//! The database is a help, never a fault: when it fails (corrupt, locked, full) the request is
//! served without it and the fault is logged and counted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::lru::Lru;
use crate::store::embeddings::{ModelKey, TableSize};
use crate::store::Store;

pub type InputHash = [u8; 32];

/// sha256 of the token ids as u32 little-endian.
pub fn input_hash(ids: &[u32]) -> InputHash {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

type Key = (ModelKey, InputHash);
/// Requests waiting for an input another request is computing.
type Waiters = Vec<oneshot::Sender<Arc<[f32]>>>;

/// Per-entry overhead counted against the memory bound besides the vector itself.
const ENTRY_OVERHEAD: usize = 128;
/// Puts between two checks of the database's size bound.
const EVICT_EVERY: u64 = 32;

/// Where one request's vectors came from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub memory_hits: usize,
    pub store_hits: usize,
    /// Waited for by another request computing the same input.
    pub joined: usize,
    pub computed: usize,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    memory_hits: AtomicU64,
    store_hits: AtomicU64,
    joined: AtomicU64,
    computed: AtomicU64,
    store_errors: AtomicU64,
    puts: AtomicU64,
}

/// What `/api/cache` shows.
#[derive(Debug, Serialize)]
pub struct EmbeddingCacheStats {
    pub lookups: u64,
    pub hit_rate: f64,
    pub misses: u64,
    pub joined_in_flight: u64,
    pub memory: LevelStats,
    pub store: StoreStats,
}

#[derive(Debug, Serialize)]
pub struct LevelStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
}

#[derive(Debug, Serialize)]
pub struct StoreStats {
    pub enabled: bool,
    pub path: Option<String>,
    pub entries: Option<u64>,
    pub bytes: Option<u64>,
    pub max_bytes: u64,
    pub hits: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

pub struct EmbeddingCache {
    memory: Mutex<Lru<Key, Arc<[f32]>>>,
    store: Option<Store>,
    store_max_bytes: u64,
    in_flight: Mutex<HashMap<Key, Waiters>>,
    counters: Counters,
    last_store_error: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Inputs this request promised to compute; whatever is still claimed when it is dropped (the
/// client went away, the model failed) is released, and the requests waiting on it compute it
/// themselves.
struct Claim<'a> {
    cache: &'a EmbeddingCache,
    keys: Vec<Key>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.cache.in_flight);
        for k in &self.keys {
            in_flight.remove(k);
        }
    }
}

impl EmbeddingCache {
    pub fn new(memory_bytes: usize, store: Option<Store>, store_max_bytes: u64) -> Self {
        Self {
            memory: Mutex::new(Lru::new(memory_bytes)),
            store,
            store_max_bytes,
            in_flight: Mutex::default(),
            counters: Counters::default(),
            last_store_error: Mutex::default(),
        }
    }

    fn store_failed(&self, e: impl std::fmt::Display) {
        tracing::warn!(error = %e, "embedding cache: database skipped");
        self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_store_error) = Some(e.to_string());
    }

    /// Put vectors in memory in input order (the last input is the most recently used).
    fn remember(
        &self,
        key: &ModelKey,
        order: &[InputHash],
        vectors: &HashMap<InputHash, Arc<[f32]>>,
    ) {
        let mut memory = lock(&self.memory);
        for h in order {
            if let Some(v) = vectors.get(h) {
                let weight = v.len() * 4 + ENTRY_OVERHEAD;
                memory.insert((key.clone(), *h), v.clone(), weight);
            }
        }
    }

    /// The vector of every input, from the cache where it is there and from `compute` (called
    /// with the missing inputs, deduplicated) where not; in input order.
    pub async fn get_or_compute<F, Fut, E>(
        &self,
        key: &ModelKey,
        inputs: &[Vec<u32>],
        compute: F,
    ) -> Result<(Vec<Arc<[f32]>>, Outcome), E>
    where
        F: Fn(Vec<Vec<u32>>) -> Fut,
        Fut: Future<Output = Result<Vec<Vec<f32>>, E>>,
    {
        let hashes: Vec<InputHash> = inputs.iter().map(|ids| input_hash(ids)).collect();
        let first_of: HashMap<InputHash, usize> = hashes
            .iter()
            .enumerate()
            .rev()
            .map(|(i, h)| (*h, i))
            .collect();
        let mut outcome = Outcome::default();
        let mut found: HashMap<InputHash, Arc<[f32]>> = HashMap::new();
        {
            let mut memory = lock(&self.memory);
            for h in first_of.keys() {
                if let Some(v) = memory.get(&(key.clone(), *h)) {
                    found.insert(*h, v);
                }
            }
        }

        // Claim what nobody computes yet; join what someone does. A finished computation is in
        // memory before it leaves `in_flight`, so memory is looked at again under that lock: an
        // input finished between the two looks is a hit, not a second computation.
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        {
            let mut in_flight = lock(&self.in_flight);
            let missing: Vec<InputHash> = first_of
                .keys()
                .filter(|h| !found.contains_key(*h))
                .copied()
                .collect();
            for h in missing {
                let k = (key.clone(), h);
                match in_flight.get_mut(&k) {
                    Some(waiters) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        waits.push((h, rx));
                    }
                    None => match lock(&self.memory).get(&k) {
                        Some(v) => {
                            found.insert(h, v);
                        }
                        None => {
                            in_flight.insert(k, Vec::new());
                            mine.push(h);
                        }
                    },
                }
            }
        }
        outcome.memory_hits = hashes.iter().filter(|h| found.contains_key(*h)).count();
        let mut claim = Claim {
            cache: self,
            keys: mine.iter().map(|h| (key.clone(), *h)).collect(),
        };

        let mut fresh: HashMap<InputHash, Arc<[f32]>> = HashMap::new();
        if let (Some(store), false) = (&self.store, mine.is_empty()) {
            match store.embeddings_get(key, &mine).await {
                Ok(stored) => {
                    for (h, v) in mine.iter().zip(stored) {
                        if let Some(v) = v {
                            fresh.insert(*h, v.into());
                        }
                    }
                }
                Err(e) => self.store_failed(e),
            }
        }
        outcome.store_hits = hashes.iter().filter(|h| fresh.contains_key(*h)).count();

        let todo: Vec<InputHash> = mine
            .iter()
            .filter(|h| !fresh.contains_key(*h))
            .copied()
            .collect();
        if !todo.is_empty() {
            let ids = todo.iter().map(|h| inputs[first_of[h]].clone()).collect();
            let vectors = compute(ids).await?;
            for (h, v) in todo.iter().zip(vectors) {
                fresh.insert(*h, v.into());
            }
            if let Some(store) = &self.store {
                let rows: Vec<(InputHash, &[f32])> =
                    todo.iter().map(|h| (*h, &fresh[h][..])).collect();
                if let Err(e) = store.embeddings_put(key, &rows).await {
                    self.store_failed(e);
                }
                let puts = self.counters.puts.fetch_add(1, Ordering::Relaxed) + 1;
                if puts.is_multiple_of(EVICT_EVERY) {
                    if let Err(e) = store.embeddings_evict(self.store_max_bytes).await {
                        self.store_failed(e);
                    }
                }
            }
        }
        outcome.computed = hashes.iter().filter(|h| todo.contains(h)).count();

        // Publish: memory first, then whoever waits.
        self.remember(key, &hashes, &fresh);
        {
            let mut in_flight = lock(&self.in_flight);
            for (h, v) in &fresh {
                for waiter in in_flight.remove(&(key.clone(), *h)).unwrap_or_default() {
                    let _ = waiter.send(v.clone());
                }
            }
        }
        claim.keys.clear();
        drop(claim);
        found.extend(fresh);

        let mut orphaned = Vec::new();
        for (h, rx) in waits {
            match rx.await {
                Ok(v) => {
                    found.insert(h, v);
                }
                Err(_) => orphaned.push(h),
            }
        }
        outcome.joined = hashes.iter().filter(|h| found.contains_key(*h)).count()
            - outcome.memory_hits
            - outcome.store_hits
            - outcome.computed;
        if !orphaned.is_empty() {
            // Their first requester gave up: compute them here, without waiting on anyone again.
            let ids = orphaned
                .iter()
                .map(|h| inputs[first_of[h]].clone())
                .collect();
            let vectors = compute(ids).await?;
            let mut late = HashMap::new();
            for (h, v) in orphaned.iter().zip(vectors) {
                late.insert(*h, Arc::<[f32]>::from(v));
            }
            self.remember(key, &hashes, &late);
            let n = hashes.iter().filter(|h| late.contains_key(*h)).count();
            outcome.computed += n;
            found.extend(late);
        }

        let c = &self.counters;
        c.lookups.fetch_add(hashes.len() as u64, Ordering::Relaxed);
        c.memory_hits
            .fetch_add(outcome.memory_hits as u64, Ordering::Relaxed);
        c.store_hits
            .fetch_add(outcome.store_hits as u64, Ordering::Relaxed);
        c.joined.fetch_add(outcome.joined as u64, Ordering::Relaxed);
        c.computed
            .fetch_add(outcome.computed as u64, Ordering::Relaxed);
        let vectors = hashes.iter().map(|h| found[h].clone()).collect();
        Ok((vectors, outcome))
    }

    /// Forget every vector, or one model's; returns (from memory, from the database).
    pub async fn clear(&self, model: Option<&str>) -> (usize, Option<u64>) {
        let memory = lock(&self.memory).remove_where(|(k, _)| model.is_none_or(|m| k.model == m));
        let stored = match &self.store {
            Some(store) => match store.embeddings_clear(model).await {
                Ok(n) => Some(n),
                Err(e) => {
                    self.store_failed(e);
                    None
                }
            },
            None => None,
        };
        (memory, stored)
    }

    pub async fn stats(&self) -> EmbeddingCacheStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (lookups, memory_hits, store_hits) =
            (load(&c.lookups), load(&c.memory_hits), load(&c.store_hits));
        let (entries, bytes, max_bytes) = {
            let m = lock(&self.memory);
            (m.len() as u64, m.bytes() as u64, m.max_bytes() as u64)
        };
        let size: Option<TableSize> = match &self.store {
            Some(store) => match store.embeddings_size().await {
                Ok(s) => Some(s),
                Err(e) => {
                    self.store_failed(e);
                    None
                }
            },
            None => None,
        };
        EmbeddingCacheStats {
            lookups,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                (memory_hits + store_hits) as f64 / lookups as f64
            },
            misses: lookups - memory_hits - store_hits,
            joined_in_flight: load(&c.joined),
            memory: LevelStats {
                entries,
                bytes,
                max_bytes,
                hits: memory_hits,
            },
            store: StoreStats {
                enabled: self.store.is_some(),
                path: self.store.as_ref().map(|s| s.path().display().to_string()),
                entries: size.map(|s| s.entries),
                bytes: size.map(|s| s.bytes),
                max_bytes: self.store_max_bytes,
                hits: store_hits,
                errors: load(&c.store_errors),
                last_error: lock(&self.last_store_error).clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn key() -> ModelKey {
        ModelKey {
            model: "m".into(),
            weights_sha256: "w".into(),
        }
    }

    type Encoded = std::future::Ready<Result<Vec<Vec<f32>>, ()>>;

    /// A stand-in encoder with a call counter: the vector of ids is [sum, len].
    fn encoder(calls: &AtomicUsize) -> impl Fn(Vec<Vec<u32>>) -> Encoded + '_ {
        move |inputs| {
            calls.fetch_add(inputs.len(), Ordering::SeqCst);
            std::future::ready(Ok(inputs
                .iter()
                .map(|i| vec![i.iter().sum::<u32>() as f32, i.len() as f32])
                .collect()))
        }
    }

    #[tokio::test]
    async fn memory_then_database_then_compute() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let calls = AtomicUsize::new(0);
        let cache = EmbeddingCache::new(1 << 20, Some(store.clone()), 1 << 20);
        let inputs = vec![vec![1, 2], vec![3], vec![1, 2]];
        let (v, o) = cache
            .get_or_compute(&key(), &inputs, encoder(&calls))
            .await
            .unwrap();
        assert_eq!(
            v.iter().map(|v| v.to_vec()).collect::<Vec<_>>(),
            [vec![3.0, 2.0], vec![3.0, 1.0], vec![3.0, 2.0]]
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a repeated input is computed once"
        );
        assert_eq!((o.computed, o.memory_hits), (3, 0));
        let (_, o) = cache
            .get_or_compute(&key(), &inputs, encoder(&calls))
            .await
            .unwrap();
        assert_eq!((o.memory_hits, o.computed), (3, 0));
        // A new process: empty memory, same database.
        let cache = EmbeddingCache::new(1 << 20, Some(store), 1 << 20);
        let (v, o) = cache
            .get_or_compute(&key(), &inputs[..2], encoder(&calls))
            .await
            .unwrap();
        assert_eq!((o.store_hits, o.computed), (2, 0));
        assert_eq!(v[1].to_vec(), vec![3.0, 1.0]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let s = cache.stats().await;
        assert_eq!((s.lookups, s.store.hits, s.store.entries), (2, 2, Some(2)));
        assert_eq!(cache.clear(Some("m")).await, (2, Some(2)));
    }

    #[tokio::test]
    async fn memory_is_bounded_in_bytes() {
        let calls = AtomicUsize::new(0);
        let per_entry = 2 * 4 + ENTRY_OVERHEAD;
        let cache = EmbeddingCache::new(3 * per_entry, None, 0);
        let inputs: Vec<Vec<u32>> = (0..5).map(|i| vec![i]).collect();
        cache
            .get_or_compute(&key(), &inputs, encoder(&calls))
            .await
            .unwrap();
        let s = cache.stats().await;
        assert_eq!(
            (s.memory.entries, s.memory.bytes),
            (3, 3 * per_entry as u64)
        );
        // The two oldest were evicted; the newest three are hits.
        let (_, o) = cache
            .get_or_compute(&key(), &inputs[2..], encoder(&calls))
            .await
            .unwrap();
        assert_eq!(o.memory_hits, 3);
        assert!(!s.store.enabled);
    }

    #[tokio::test]
    async fn concurrent_identical_requests_compute_once() {
        let cache = Arc::new(EmbeddingCache::new(1 << 20, None, 0));
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let slow = |calls: Arc<AtomicUsize>, gate: tokio::sync::watch::Receiver<bool>| {
            move |inputs: Vec<Vec<u32>>| {
                let (calls, mut gate) = (calls.clone(), gate.clone());
                async move {
                    calls.fetch_add(inputs.len(), Ordering::SeqCst);
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok::<_, ()>(inputs.iter().map(|i| vec![i[0] as f32]).collect())
                }
            }
        };
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, f) = (cache.clone(), slow(calls.clone(), gate.clone()));
                tokio::spawn(
                    async move { cache.get_or_compute(&key(), &[vec![7]], f).await.unwrap() },
                )
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        release.send(true).unwrap();
        let mut joined = 0;
        for t in tasks {
            let (v, o) = t.await.unwrap();
            assert_eq!(v[0].to_vec(), vec![7.0]);
            joined += o.joined;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 7);
    }

    #[tokio::test]
    async fn waiters_compute_themselves_when_the_first_request_is_dropped() {
        let cache = Arc::new(EmbeddingCache::new(1 << 20, None, 0));
        let first = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_compute(&key(), &[vec![5]], |_| {
                        std::future::pending::<Result<Vec<Vec<f32>>, ()>>()
                    })
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let calls = AtomicUsize::new(0);
        let (k, inputs) = (key(), [vec![5]]);
        let second = cache.get_or_compute(&k, &inputs, encoder(&calls));
        let abort = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            first.abort();
        };
        let ((v, o), ()) = tokio::join!(async { second.await.unwrap() }, abort);
        assert_eq!(v[0].to_vec(), vec![5.0, 1.0]);
        assert_eq!((o.computed, calls.load(Ordering::SeqCst)), (1, 1));
    }

    #[tokio::test]
    async fn a_broken_database_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = Store::open(&path).await.unwrap();
        let cache = EmbeddingCache::new(1 << 20, Some(store), 1 << 20);
        // Replace the database under the open pool with something that is not one.
        std::fs::write(&path, vec![0x42; 8192]).unwrap();
        let _ = std::fs::remove_file(dir.path().join("c.db-wal"));
        let _ = std::fs::remove_file(dir.path().join("c.db-shm"));
        let calls = AtomicUsize::new(0);
        let (v, o) = cache
            .get_or_compute(&key(), &[vec![1, 1]], encoder(&calls))
            .await
            .unwrap();
        assert_eq!((v[0].to_vec(), o.computed), (vec![2.0, 2.0], 1));
        let s = cache.stats().await;
        assert!(s.store.errors >= 1 && s.store.last_error.is_some(), "{s:?}");
    }
}
