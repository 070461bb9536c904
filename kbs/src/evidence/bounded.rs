//! The bounded map behind the verifiers' caches of verified outcomes (VEK
//! chains, GPU device chains, RIM appraisals, the CoCo front end's
//! attestation tokens): at most `capacity` entries, the oldest evicted
//! first. Only outcomes that passed every check go in; the caller keeps it
//! behind a lock.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map of at most `capacity` entries, evicting the oldest when full. A
/// capacity of zero keeps nothing.
#[derive(Debug)]
pub(crate) struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), capacity }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get(key)
    }

    /// Inserts `value` unless `key` is already present (the first outcome
    /// stays; equal keys mean equal inputs), evicting the oldest entries
    /// to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.capacity == 0 || self.map.contains_key(&key) {
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_oldest_and_keeps_the_first_outcome() {
        let mut map = BoundedMap::new(2);
        for i in 0..5u8 {
            map.insert([i; 32], i);
        }
        assert_eq!(map.len(), 2);
        assert_eq!((map.get(&[3; 32]), map.get(&[4; 32]), map.get(&[2; 32])), (Some(&3), Some(&4), None));
        assert_eq!(map.order.len(), 2);
        map.insert([4; 32], 9);
        assert_eq!(map.get(&[4; 32]), Some(&4));
        let mut none = BoundedMap::new(0);
        none.insert(1, 1);
        assert_eq!((none.len(), none.get(&1)), (0, None));
    }
}
