//! A least-recently-used map bounded in bytes (each entry says what it weighs).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct Lru<K, V> {
    entries: HashMap<K, (V, u64, usize)>,
    /// Use tick -> key, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    bytes: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            max_bytes,
        }
    }

    pub fn get(&mut self, key: &K) -> Option<V> {
        let (value, tick, _) = self.entries.get_mut(key)?;
        self.order.remove(tick);
        self.tick += 1;
        *tick = self.tick;
        self.order.insert(self.tick, key.clone());
        Some(value.clone())
    }

    /// Insert (or replace) and evict the oldest entries past the bound. An entry heavier than the
    /// whole bound is not kept.
    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        if weight > self.max_bytes {
            return;
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, self.tick, weight));
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = self.entries.remove(&oldest) {
                self.bytes -= w;
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, tick, weight) = self.entries.remove(key)?;
        self.order.remove(&tick);
        self.bytes -= weight;
        Some(value)
    }

    /// Remove every entry the predicate picks; returns how many.
    pub fn remove_where(&mut self, mut pick: impl FnMut(&K) -> bool) -> usize {
        let doomed: Vec<K> = self.entries.keys().filter(|k| pick(k)).cloned().collect();
        for k in &doomed {
            self.remove(k);
        }
        doomed.len()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_by_weight() {
        let mut lru = Lru::new(10);
        lru.insert("a", 1, 4);
        lru.insert("b", 2, 4);
        assert_eq!(lru.get(&"a"), Some(1)); // b is now the oldest
        lru.insert("c", 3, 4);
        assert_eq!(
            (lru.get(&"b"), lru.get(&"a"), lru.get(&"c")),
            (None, Some(1), Some(3))
        );
        assert_eq!((lru.len(), lru.bytes()), (2, 8));
        lru.insert("a", 9, 2); // replacing re-weighs
        assert_eq!((lru.get(&"a"), lru.bytes()), (Some(9), 6));
        lru.insert("huge", 0, 11);
        assert_eq!(lru.get(&"huge"), None);
        assert_eq!(lru.remove_where(|k| *k == "c"), 1);
        assert_eq!((lru.len(), lru.bytes()), (1, 2));
    }
}
