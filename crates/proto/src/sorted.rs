//! `SortedMap`, a map kept as a `Vec` sorted by key.
//!
//! The authority's tables (operators, replay steps, failure counters, issue
//! buckets, revocations) and a message's `metadata` are small and bounded
//! by their owners, and every
//! `BTreeMap<K, V>` instance costs kilobytes of node code in the guest image
//! (insert, remove, balancing, iteration per key/value type). A sorted vector
//! gives the same ordered iteration and lookups by binary search with a
//! fraction of that code; insertion and removal are O(n), which is fine for
//! the few hundred entries at most these tables hold. The bounds stay with
//! the callers, as they did with `BTreeMap`.

use alloc::vec::Vec;
use core::borrow::Borrow;
use core::fmt;

/// An ordered map from `K` to `V`, one entry per key, iterated in key order.
#[derive(Clone, PartialEq, Eq)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap { entries: Vec::new() }
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SortedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k, v))).finish()
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// An empty map.
    pub const fn new() -> Self {
        SortedMap { entries: Vec::new() }
    }

    /// Where `key` is (`Ok`) or would go (`Err`).
    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value of `key`, if any.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        self.entries.get(i).map(|(_, v)| v)
    }

    /// The value of `key` to change, if any.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets the value of `key`; the value it replaced, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => self.entries.get_mut(i).map(|(_, v)| core::mem::replace(v, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`; its value, if it had one.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<K: Ord, V> Extend<(K, V)> for SortedMap<K, V> {
    /// Inserts each pair in turn (a later value for a key replaces an earlier one).
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.insert(k, v);
        }
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    /// The map of `pairs` inserted in turn (a later value for a key wins).
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut m = SortedMap::new();
        m.extend(pairs);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::SortedMap;
    use alloc::string::{String, ToString};
    use alloc::vec::Vec;

    #[test]
    fn keeps_keys_sorted_and_unique() {
        let mut m = SortedMap::new();
        for k in [5u32, 1, 9, 3, 1, 7] {
            m.insert(k, k * 10);
        }
        assert_eq!(m.insert(9, 0), Some(90));
        let got: Vec<(u32, u32)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(got, [(1, 10), (3, 30), (5, 50), (7, 70), (9, 0)]);
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn lookups_by_borrowed_key() {
        let mut m: SortedMap<String, u64> = SortedMap::new();
        m.extend([("bob".to_string(), 2), ("alice".to_string(), 1), ("carol".to_string(), 3)]);
        assert_eq!(m.get("alice"), Some(&1));
        assert!(m.contains_key("carol"));
        assert_eq!(m.get("dave"), None);
        *m.get_mut("bob").unwrap() += 40;
        assert_eq!(m.get("bob"), Some(&42));
        assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["alice", "bob", "carol"]);
    }

    #[test]
    fn remove_and_retain() {
        let mut m: SortedMap<u32, u32> = SortedMap::new();
        m.extend((0..10).map(|k| (k, k)));
        assert_eq!(m.remove(&4), Some(4));
        assert_eq!(m.remove(&4), None);
        m.retain(|k, _| k % 2 == 1);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 3, 5, 7, 9]);
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [1, 3, 5, 7, 9]);
        assert!(!m.is_empty());
    }
}
