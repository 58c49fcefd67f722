//! A least-recently-used map bounded by a byte budget: what keeps a mount's
//! memory flat while `find` or `grep -r` walks a large snapshot.

use std::hash::Hash;

/// Values by key, each with a weight in bytes; the least recently used go
/// first once the weights pass the budget (the newest one always stays).
/// The recency order is the `lru` crate's; this adds the byte budget.
pub struct Lru<K: Hash + Eq, V> {
    map: lru::LruCache<K, (V, usize)>,
    used: usize,
    budget: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map that holds about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Lru {
            map: lru::LruCache::unbounded(),
            used: 0,
            budget,
        }
    }

    /// The value of `k`, now the most recently used.
    pub fn get(&mut self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    /// Adds `v` under `k`, weighing `weight` bytes, and drops the least
    /// recently used values while over budget.
    pub fn insert(&mut self, k: K, v: V, weight: usize) {
        if let Some((_, (_, w))) = self.map.push(k, (v, weight)) {
            self.used -= w;
        }
        self.used += weight;
        while self.used > self.budget && self.map.len() > 1 {
            match self.map.pop_lru() {
                Some((_, (_, w))) => self.used -= w,
                None => break,
            }
        }
    }

    /// Whether `k` is held (without making it the most recently used).
    pub fn contains(&self, k: &K) -> bool {
        self.map.contains(k)
    }

    /// Bytes held.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_goes_first_and_the_budget_holds() {
        let mut l = Lru::new(30);
        l.insert(1, "a", 10);
        l.insert(2, "b", 10);
        l.insert(3, "c", 10);
        assert_eq!(l.get(&1), Some("a"), "1 is now the newest");
        l.insert(4, "d", 10);
        assert_eq!(l.get(&2), None, "2 was the least recently used");
        assert!(l.contains(&3) && !l.contains(&2));
        assert_eq!((l.len(), l.used()), (3, 30));
        l.insert(5, "big", 100);
        assert_eq!((l.len(), l.used()), (1, 100), "the newest stays alone");
        l.insert(5, "small", 5);
        assert_eq!((l.get(&5), l.used()), (Some("small"), 5));
    }
}
