//! A least-recently-used map bounded by a byte budget: what keeps a mount's
//! memory flat while `find` or `grep -r` walks a large snapshot.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Values by key, each with a weight in bytes; the least recently used go
/// first once the weights pass the budget (the newest one always stays).
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64, usize)>,
    order: BTreeMap<u64, K>,
    tick: u64,
    used: usize,
    budget: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// An empty map that holds about `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            used: 0,
            budget,
        }
    }

    /// The value of `k`, now the most recently used.
    pub fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let (v, t, _) = self.map.get_mut(k)?;
        self.order.remove(t);
        *t = self.tick;
        self.order.insert(self.tick, k.clone());
        Some(v.clone())
    }

    /// Adds `v` under `k`, weighing `weight` bytes, and drops the least
    /// recently used values while over budget.
    pub fn insert(&mut self, k: K, v: V, weight: usize) {
        self.tick += 1;
        if let Some((_, t, w)) = self.map.insert(k.clone(), (v, self.tick, weight)) {
            self.order.remove(&t);
            self.used -= w;
        }
        self.order.insert(self.tick, k);
        self.used += weight;
        while self.used > self.budget && self.order.len() > 1 {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, _, w)) = self.map.remove(&old) {
                self.used -= w;
            }
        }
    }

    /// Whether `k` is held (without making it the most recently used).
    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
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
