//! `Expiries`: the expiry table, absolute times (ms since the Unix epoch) of the keys that have
//! a TTL. Keys without one cost nothing here.
//!
//! Owns: the table in two orders (by key, for lookups and the snapshot; by time, for finding
//! the keys that are due) and its share of the state hash.
//! Must not: read a clock. "Now" is always an argument: at apply the largest leader stamp
//! applied so far, for a read the leader's time (see `envelope.rs`).
//!
//! A key with expiry `at` is alive while `now <= at` and expired once `now > at`, as in Redis
//! (`keyIsExpired`), so a TTL of 0 ms is still readable at the very millisecond it was set.
//!
//! Invariants (checked by `check_invariants`):
//! 1. `by_time` holds exactly `(at, key)` for every `(key, at)` in `by_key`.
//! 2. `hash` == wrapping sum of `expiry_hash(key, at)` over `by_key`.

use crate::kv::hash::hash64;
use std::collections::{BTreeMap, BTreeSet};

/// The hash one `(key, expiry)` pair contributes to the state hash.
pub fn expiry_hash(key: &[u8], at_ms: u64) -> u64 {
    hash64(0x0074_746c ^ at_ms.rotate_left(23), key)
}

/// Whether a key expiring at `at_ms` is gone at `now_ms`.
pub fn is_expired(at_ms: u64, now_ms: u64) -> bool {
    now_ms > at_ms
}

#[derive(Clone, Debug, Default)]
pub struct Expiries {
    by_key: BTreeMap<Box<[u8]>, u64>,
    by_time: BTreeSet<(u64, Box<[u8]>)>,
    hash: u64,
}

impl Expiries {
    pub fn new() -> Expiries {
        Expiries::default()
    }

    /// Keys with a TTL.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The state hash share of the table (0 when empty).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The expiry of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// Give `key` the expiry `at_ms`; returns the previous one.
    pub fn set(&mut self, key: &[u8], at_ms: u64) -> Option<u64> {
        let old = self.remove(key);
        self.by_key.insert(key.into(), at_ms);
        self.by_time.insert((at_ms, key.into()));
        self.hash = self.hash.wrapping_add(expiry_hash(key, at_ms));
        old
    }

    /// Drop `key`'s expiry; returns it.
    pub fn remove(&mut self, key: &[u8]) -> Option<u64> {
        let at = self.by_key.remove(key)?;
        let removed = self.by_time.remove(&(at, key.into()));
        assert!(
            removed,
            "expiry of {key:?} at {at} missing from the time order"
        );
        self.hash = self.hash.wrapping_sub(expiry_hash(key, at));
        Some(at)
    }

    pub fn clear(&mut self) {
        *self = Expiries::default();
    }

    /// Whether `key` has an expiry that has passed at `now_ms`.
    pub fn expired(&self, key: &[u8], now_ms: u64) -> bool {
        self.get(key).is_some_and(|at| is_expired(at, now_ms))
    }

    /// Keys expired at `now_ms`, earliest first, with their expiry.
    pub fn due(&self, now_ms: u64) -> impl Iterator<Item = (&[u8], u64)> {
        self.by_time
            .iter()
            .take_while(move |(at, _)| is_expired(*at, now_ms))
            .map(|(at, k)| (&k[..], *at))
    }

    /// Every `(key, expiry)` in key order (for the snapshot).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.by_key.iter().map(|(k, at)| (&k[..], *at))
    }

    /// Assert invariants 1 and 2. O(n).
    pub fn check_invariants(&self) {
        assert_eq!(
            self.by_key.len(),
            self.by_time.len(),
            "expiry orders differ"
        );
        let mut sum = 0u64;
        for (k, at) in &self.by_key {
            assert!(
                self.by_time.contains(&(*at, k.clone())),
                "expiry of {k:?} at {at} missing from the time order"
            );
            sum = sum.wrapping_add(expiry_hash(k, *at));
        }
        assert_eq!(sum, self.hash, "incremental expiry hash drifted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_due_in_time_order_once_now_passes_their_expiry() {
        let mut e = Expiries::new();
        assert_eq!(e.hash(), 0);
        e.set(b"b", 20);
        e.set(b"a", 30);
        e.set(b"c", 10);
        assert_eq!(e.set(b"a", 15), Some(30));
        e.check_invariants();
        let due: Vec<_> = e.due(15).collect();
        assert_eq!(due, vec![(&b"c"[..], 10)], "alive at exactly its expiry");
        let due: Vec<_> = e.due(100).map(|(k, _)| k.to_vec()).collect();
        assert_eq!(due, vec![b"c".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert!(e.expired(b"a", 16) && !e.expired(b"a", 15) && !e.expired(b"zz", 99));
        let keys: Vec<_> = e.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(e.remove(b"b"), Some(20));
        assert_eq!(e.remove(b"b"), None);
        e.check_invariants();
    }

    #[test]
    fn the_hash_depends_on_contents_not_on_history() {
        let mut a = Expiries::new();
        let mut b = Expiries::new();
        a.set(b"x", 1);
        a.set(b"y", 2);
        b.set(b"y", 7);
        b.set(b"x", 1);
        assert_ne!(a.hash(), b.hash());
        b.set(b"y", 2);
        assert_eq!(a.hash(), b.hash());
        a.remove(b"x");
        a.remove(b"y");
        assert_eq!(a.hash(), 0);
        b.clear();
        assert_eq!((b.hash(), b.len()), (0, 0));
    }
}
