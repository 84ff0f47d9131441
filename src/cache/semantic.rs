//! The semantic response cache: answers kept with the MiniLM embedding of the question they
//! answered, so a later question that means the same (above the caller's similarity threshold)
//! is answered from it. Look-ups stay within one scope: the model's weights and every setting
//! but the question, earlier messages included, so an answer is never served to another model,
//! another parameter set or another conversation. An HNSW index (usearch) finds the nearest
//! question; it is saved to a file beside the database, and the answers to the database, so
//! the cache survives a restart. Bounded in bytes, least recently used out first. Like the
//! other caches it is a help, never a fault: a database or index failure is logged and counted
//! and the request is served without it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::responses::ResponseKey;
use crate::scheduler::GenEvent;
use crate::store::semantic::SemanticRow;
use crate::store::Store;

/// Upper edges of the similarity histogram's buckets (the last is everything above 0.98).
pub const SIMILARITY_EDGES: [f64; 8] = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98];

/// Counted against the bound besides the answer's JSON and the vector.
const ENTRY_OVERHEAD: usize = 256;

/// A kept answer, in memory.
struct Entry {
    scope: ResponseKey,
    model: String,
    choices: Arc<Vec<Vec<GenEvent>>>,
    bytes: usize,
    used: f64,
}

/// A question answered from the cache.
pub struct SemanticHit {
    pub choices: Arc<Vec<Vec<GenEvent>>>,
    pub similarity: f32,
    /// The question the kept answer was given for.
    pub question: String,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    hits: AtomicU64,
    stored: AtomicU64,
    evicted: AtomicU64,
    errors: AtomicU64,
}

/// What `/api/cache` and the Monitor page show.
#[derive(Debug, Serialize)]
pub struct SemanticCacheStats {
    pub entries: u64,
    pub bytes: u64,
    pub max_bytes: u64,
    pub index_bytes: u64,
    pub index_path: Option<String>,
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub stored: u64,
    pub evicted: u64,
    pub errors: u64,
    /// The best match's similarity per look-up that had one: `le` the bucket's upper edge.
    pub similarity: Vec<Bucket>,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    pub le: f64,
    pub count: u64,
}

struct Inner {
    index: Option<Index>,
    entries: HashMap<u64, Entry>,
    /// Questions by id, for the hit's explanation.
    questions: HashMap<u64, String>,
    bytes: usize,
    next_id: u64,
}

pub struct SemanticCache {
    inner: Mutex<Inner>,
    store: Option<Store>,
    index_path: Option<PathBuf>,
    max_bytes: usize,
    counters: Counters,
    buckets: [AtomicU64; SIMILARITY_EDGES.len() + 1],
    /// Observed per look-up for `/metrics`.
    histogram: Option<prometheus::Histogram>,
    /// The index changed since it was last saved.
    dirty: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_index(dimensions: usize, capacity: usize) -> Result<Index, String> {
    let options = IndexOptions {
        dimensions,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F32,
        ..Default::default()
    };
    let index = Index::new(&options).map_err(|e| e.to_string())?;
    index.reserve(capacity.max(64)).map_err(|e| e.to_string())?;
    Ok(index)
}

/// Add to the index, growing it by half when full.
fn add(index: &Index, id: u64, vector: &[f32]) -> Result<(), String> {
    if index.size() >= index.capacity() {
        index
            .reserve(index.capacity() + index.capacity() / 2 + 64)
            .map_err(|e| e.to_string())?;
    }
    index.add(id, vector).map_err(|e| e.to_string())
}

/// The index file as saved, when it holds exactly the kept answers.
fn load_index(path: &std::path::Path, rows: &[SemanticRow]) -> Option<Index> {
    let dims = rows.first()?.vector.len();
    if !path.exists() {
        return None;
    }
    let index = new_index(dims, rows.len()).ok()?;
    index.load(path.to_str()?).ok()?;
    let whole = index.dimensions() == dims
        && index.size() == rows.len()
        && rows.iter().all(|r| index.contains(r.id));
    whole.then_some(index)
}

impl SemanticCache {
    /// The kept answers from the database, under `max_bytes` (0 turns the cache off), with the
    /// index file beside the database (rebuilt from the rows when it is missing or behind).
    pub async fn open(
        max_bytes: usize,
        store: Option<Store>,
        histogram: Option<prometheus::Histogram>,
    ) -> Self {
        let index_path = store
            .as_ref()
            .map(|s| s.path().with_file_name("semantic-cache.usearch"));
        let cache = Self {
            inner: Mutex::new(Inner {
                index: None,
                entries: HashMap::new(),
                questions: HashMap::new(),
                bytes: 0,
                next_id: 1,
            }),
            store,
            index_path,
            max_bytes,
            counters: Counters::default(),
            buckets: Default::default(),
            histogram,
            dirty: AtomicBool::new(false),
        };
        if let Err(e) = cache.restore().await {
            cache.failed(format!("kept answers not read: {e}"));
        }
        cache
    }

    fn failed(&self, e: impl std::fmt::Display) {
        tracing::warn!(error = %e, "semantic cache");
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
    }

    async fn restore(&self) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut rows = store.semantic_all().await.map_err(|e| e.to_string())?;
        let all_ids = store.semantic_ids().await.map_err(|e| e.to_string())?;
        let dims = rows.first().map_or(0, |r| r.vector.len());
        // Rows whose answer no longer parses, or whose vector has another size, are dropped;
        // past the bound, the least recently used go first (rows come oldest first).
        let mut parsed: Vec<(SemanticRow, Vec<Vec<GenEvent>>)> = Vec::new();
        for row in rows.drain(..) {
            if row.vector.len() != dims {
                continue;
            }
            if let Ok(choices) = serde_json::from_str(&row.events) {
                parsed.push((row, choices));
            }
        }
        let mut total: usize = parsed.iter().map(|(r, _)| r.bytes as usize).sum();
        while total > self.max_bytes && !parsed.is_empty() {
            total -= parsed.remove(0).0.bytes as usize;
        }
        let kept: Vec<SemanticRow> = parsed.iter().map(|(r, _)| r.clone()).collect();
        let doomed: Vec<u64> = all_ids
            .into_iter()
            .filter(|id| !kept.iter().any(|r| r.id == *id))
            .collect();
        if !doomed.is_empty() {
            store
                .semantic_delete(&doomed)
                .await
                .map_err(|e| e.to_string())?;
        }
        let index = match self
            .index_path
            .as_deref()
            .and_then(|p| load_index(p, &kept))
        {
            Some(index) => Some(index),
            None if kept.is_empty() => None,
            None => {
                let index = new_index(dims, kept.len())?;
                for r in &kept {
                    add(&index, r.id, &r.vector)?;
                }
                self.dirty.store(true, Ordering::Relaxed);
                Some(index)
            }
        };
        let mut inner = lock(&self.inner);
        inner.index = index;
        for (row, choices) in parsed {
            inner.next_id = inner.next_id.max(row.id + 1);
            inner.bytes += row.bytes as usize;
            inner.questions.insert(row.id, row.question);
            inner.entries.insert(
                row.id,
                Entry {
                    scope: row.scope,
                    model: row.model,
                    choices: Arc::new(choices),
                    bytes: row.bytes as usize,
                    used: row.used_at,
                },
            );
        }
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn observe(&self, similarity: f64) {
        let bucket = SIMILARITY_EDGES
            .iter()
            .position(|le| similarity <= *le)
            .unwrap_or(SIMILARITY_EDGES.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.histogram {
            h.observe(similarity);
        }
    }

    /// The kept answer in `scope` whose question is nearest `vector`, when its cosine
    /// similarity is at least `threshold`.
    pub fn lookup(
        &self,
        scope: &ResponseKey,
        vector: &[f32],
        threshold: f32,
    ) -> Option<SemanticHit> {
        if !self.enabled() {
            return None;
        }
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let mut inner = lock(&self.inner);
        let index = inner.index.as_ref()?;
        if index.dimensions() != vector.len() {
            return None;
        }
        let entries = &inner.entries;
        let found = index.filtered_search(vector, 1, |id| {
            entries.get(&id).is_some_and(|e| e.scope == *scope)
        });
        let (id, distance) = match found {
            Ok(m) => (*m.keys.first()?, *m.distances.first()?),
            Err(e) => {
                drop(inner);
                self.failed(format!("search failed: {e}"));
                return None;
            }
        };
        let similarity = (1.0 - distance).clamp(-1.0, 1.0);
        self.observe(similarity as f64);
        if similarity < threshold {
            return None;
        }
        let now = crate::clock::unix_seconds();
        let entry = inner.entries.get_mut(&id)?;
        entry.used = now;
        let choices = entry.choices.clone();
        let question = inner.questions.get(&id).cloned().unwrap_or_default();
        drop(inner);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        if let Some(store) = self.store.clone() {
            tokio::spawn(async move {
                if let Err(e) = store.semantic_touch(id, now).await {
                    tracing::warn!(error = %e, "semantic cache: hit not saved");
                }
            });
        }
        Some(SemanticHit {
            choices,
            similarity,
            question,
        })
    }

    /// Keep a finished answer to `question` in `scope`; one whose choices did not all finish
    /// normally is not kept.
    pub fn put(
        &self,
        scope: ResponseKey,
        model: &str,
        question: &str,
        vector: Vec<f32>,
        choices: Vec<Vec<GenEvent>>,
    ) {
        let complete = choices
            .iter()
            .all(|c| matches!(c.last(), Some(GenEvent::Done(_))));
        if !complete || !self.enabled() || vector.is_empty() {
            return;
        }
        let events = match serde_json::to_string(&choices) {
            Ok(json) => json,
            Err(e) => return self.failed(format!("answer not serialized: {e}")),
        };
        let bytes = ENTRY_OVERHEAD + events.len() + question.len() + vector.len() * 4;
        if bytes > self.max_bytes {
            return;
        }
        let now = crate::clock::unix_seconds();
        let (id, evicted) = {
            let mut inner = lock(&self.inner);
            if inner.index.is_none() {
                match new_index(vector.len(), 64) {
                    Ok(index) => inner.index = Some(index),
                    Err(e) => {
                        drop(inner);
                        return self.failed(format!("index not made: {e}"));
                    }
                }
            }
            let mut evicted = Vec::new();
            while inner.bytes + bytes > self.max_bytes {
                let Some(oldest) = inner
                    .entries
                    .iter()
                    .min_by(|a, b| a.1.used.total_cmp(&b.1.used))
                    .map(|(id, _)| *id)
                else {
                    break;
                };
                Self::forget(&mut inner, oldest);
                evicted.push(oldest);
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let index = inner.index.as_ref().expect("made above");
            if index.dimensions() != vector.len() {
                return;
            }
            if let Err(e) = add(index, id, &vector) {
                drop(inner);
                return self.failed(format!("not indexed: {e}"));
            }
            inner.bytes += bytes;
            inner.questions.insert(id, question.to_string());
            inner.entries.insert(
                id,
                Entry {
                    scope,
                    model: model.to_string(),
                    choices: Arc::new(choices),
                    bytes,
                    used: now,
                },
            );
            (id, evicted)
        };
        self.counters.stored.fetch_add(1, Ordering::Relaxed);
        self.counters
            .evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
        if let Some(store) = self.store.clone() {
            let row = SemanticRow {
                id,
                scope,
                model: model.to_string(),
                question: question.to_string(),
                vector,
                events,
                bytes: bytes as u64,
                created_at: now,
                used_at: now,
                hits: 0,
            };
            tokio::spawn(async move {
                let saved = match store.semantic_delete(&evicted).await {
                    Ok(()) => store.semantic_insert(&row).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "semantic cache: answer not saved");
                }
            });
        }
    }

    fn forget(inner: &mut Inner, id: u64) {
        if let Some(e) = inner.entries.remove(&id) {
            inner.bytes -= e.bytes;
        }
        inner.questions.remove(&id);
        if let Some(index) = &inner.index {
            let _ = index.remove(id);
        }
    }

    /// Drop every kept answer (of `model`, when named); returns how many.
    pub async fn clear(&self, model: Option<&str>) -> usize {
        let doomed: Vec<u64> = {
            let mut inner = lock(&self.inner);
            let ids: Vec<u64> = inner
                .entries
                .iter()
                .filter(|(_, e)| model.is_none_or(|m| e.model == m))
                .map(|(id, _)| *id)
                .collect();
            for id in &ids {
                Self::forget(&mut inner, *id);
            }
            ids
        };
        self.dirty.store(true, Ordering::Relaxed);
        if let Some(store) = &self.store {
            if let Err(e) = store.semantic_delete(&doomed).await {
                self.failed(format!("cleared answers not deleted: {e}"));
            }
        }
        doomed.len()
    }

    /// Save the index file when it changed (written aside, then renamed over the old one).
    pub fn save_index(&self) {
        let Some(path) = &self.index_path else { return };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let inner = lock(&self.inner);
        let Some(index) = &inner.index else {
            let _ = std::fs::remove_file(path);
            return;
        };
        let aside = path.with_extension("usearch.part");
        let saved = aside
            .to_str()
            .ok_or_else(|| "the data directory's path is not UTF-8".to_string())
            .and_then(|p| index.save(p).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::rename(&aside, path).map_err(|e| e.to_string()));
        drop(inner);
        if let Err(e) = saved {
            self.dirty.store(true, Ordering::Relaxed);
            self.failed(format!("index not saved: {e}"));
        }
    }

    /// Save the index every few seconds while it changes, off the async threads.
    pub fn spawn_saver(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tick.tick().await;
                let c = cache.clone();
                let _ = tokio::task::spawn_blocking(move || c.save_index()).await;
            }
        })
    }

    pub fn stats(&self) -> SemanticCacheStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let inner = lock(&self.inner);
        let (lookups, hits) = (load(&self.counters.lookups), load(&self.counters.hits));
        let edges = SIMILARITY_EDGES.iter().copied().chain([1.0]);
        SemanticCacheStats {
            entries: inner.entries.len() as u64,
            bytes: inner.bytes as u64,
            max_bytes: self.max_bytes as u64,
            index_bytes: inner.index.as_ref().map_or(0, |i| i.memory_usage() as u64),
            index_path: self.index_path.as_ref().map(|p| p.display().to_string()),
            lookups,
            hits,
            misses: lookups - hits,
            hit_rate: if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            },
            stored: load(&self.counters.stored),
            evicted: load(&self.counters.evicted),
            errors: load(&self.counters.errors),
            similarity: edges
                .zip(&self.buckets)
                .map(|(le, c)| Bucket { le, count: load(c) })
                .collect(),
        }
    }
}

#[cfg(test)]
#[path = "semantic_tests.rs"]
mod tests;
