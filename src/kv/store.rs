//! `KvStore`: the skiplist KV as a `StateMachine`, with Redis's reply shapes.
//!
//! Owns: applying decoded writes deterministically, answering queries, the state hash.
//! Must not: know about Raft beyond `LogIndex`, log, or read the clock.
//!
//! The state hash is kept incrementally: each (key, value) pair hashes to a 64-bit
//! `entry_hash`, and `entries_hash` is their wrapping sum, updated on every insert, replace
//! and remove. It is thus independent of insertion order and heights, O(1) to read, and a
//! snapshot load recomputes it record by record. `state_hash` mixes it with the applied index
//! and the key count. NB: not cryptographic; it detects divergence, not malice.
//!
//! Invariants:
//! 1. `entries_hash` == wrapping sum of `entry_hash(k, v)` over the stored pairs.
//! 2. `applied` only grows; `apply` asserts `index > applied` (a caller's bug otherwise).
//! 3. No stored key exceeds `KEY_SIZE_MAX` and no stored value exceeds `VALUE_SIZE_MAX`.

use crate::client::value::Value;
use crate::kv::command::{self, ReadCmd, WriteCmd, SET_GET, SET_NX, SET_XX};
use crate::kv::skiplist::{Entry, SkipList};
use crate::kv::{snapshot, Request, SnapshotError, StateMachine};
use crate::limits::VALUE_SIZE_MAX;
use crate::raft::LogIndex;

/// Bytes of keys and values one RANGE reply carries at most: the reply stops before the pair
/// that would cross it (but always holds at least one pair, so paging makes progress).
pub const RANGE_REPLY_SIZE_MAX: usize = 8 * 1024 * 1024;

/// Sizes of the store, for INFO and the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvStats {
    pub keys: usize,
    /// Bytes of keys plus values.
    pub data_bytes: usize,
    /// Heap bytes of the structure beyond the key and value bytes (arenas by capacity).
    pub overhead_bytes: usize,
}

/// The skiplist key-value state machine.
pub struct KvStore {
    list: SkipList,
    applied: LogIndex,
    entries_hash: u64,
    seed: u64,
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A fast, stable 64-bit hash of `bytes` (8 bytes per multiply), seeded.
pub fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(K).rotate_left(29);
    }
    fmix64(h)
}

/// The hash one stored pair contributes to the state hash.
pub fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    hash64(hash64(0x6b65_79, key), value)
}

/// The state hash of a store with these parts (shared with the snapshot loader).
pub fn combine_state_hash(applied: LogIndex, keys: usize, entries_hash: u64) -> u64 {
    fmix64(entries_hash ^ fmix64(applied.0 ^ 0x6170_706c_6965_64) ^ (keys as u64).wrapping_mul(K))
}

impl KvStore {
    /// An empty store; `seed` seeds the skiplist's heights (which never affect replies,
    /// snapshots or the state hash).
    pub fn new(seed: u64) -> KvStore {
        KvStore {
            list: SkipList::new(seed),
            applied: LogIndex(0),
            entries_hash: 0,
            seed,
        }
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.list.len(),
            data_bytes: self.list.data_bytes(),
            overhead_bytes: self.list.overhead_bytes(),
        }
    }

    /// The value under `key` (for tests and the node's diagnostics).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.list.get(key)
    }

    /// Assert the skiplist's and the hash's invariants. O(n).
    pub fn check_invariants(&self) {
        self.list.check_invariants();
        let sum = self
            .list
            .iter()
            .fold(0u64, |s, (k, v)| s.wrapping_add(entry_hash(k, v)));
        assert_eq!(sum, self.entries_hash, "incremental entries hash drifted");
    }

    pub(crate) fn list(&self) -> &SkipList {
        &self.list
    }

    /// Install a state built by the snapshot loader.
    pub(crate) fn replace_state(&mut self, list: SkipList, applied: LogIndex, entries_hash: u64) {
        self.list = list;
        self.applied = applied;
        self.entries_hash = entries_hash;
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Option<Entry> {
        self.entries_hash = self.entries_hash.wrapping_add(entry_hash(key, value));
        let old = self.list.insert(key, value);
        if let Some(e) = &old {
            self.entries_hash = self.entries_hash.wrapping_sub(entry_hash(key, e.value()));
        }
        old
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        match self.list.remove(key) {
            Some(e) => {
                self.entries_hash = self.entries_hash.wrapping_sub(entry_hash(key, e.value()));
                true
            }
            None => false,
        }
    }

    fn apply_write(&mut self, cmd: WriteCmd<'_>) -> Value {
        match cmd {
            WriteCmd::Set { flags, key, value } => self.apply_set(flags, key, value),
            WriteCmd::SetNx { key, value } => {
                if self.list.get(key).is_some() {
                    return Value::Integer(0);
                }
                self.put(key, value);
                Value::Integer(1)
            }
            WriteCmd::Del { keys } => {
                let removed = keys.iter().filter(|k| self.delete(k)).count();
                Value::Integer(removed as i64)
            }
            WriteCmd::MSet { pairs } => {
                for (k, v) in pairs {
                    self.put(k, v);
                }
                Value::ok()
            }
            WriteCmd::IncrBy { key, delta } => self.apply_incrby(key, delta),
            WriteCmd::Append { key, value } => {
                let old = self.list.get(key).unwrap_or_default();
                let new_len = old.len() + value.len();
                if new_len > VALUE_SIZE_MAX {
                    return command::string_too_large();
                }
                let mut joined = Vec::with_capacity(new_len);
                joined.extend_from_slice(old);
                joined.extend_from_slice(value);
                self.put(key, &joined);
                Value::Integer(new_len as i64)
            }
            WriteCmd::Cas { key, expected, new } => {
                if self.list.get(key) == Some(expected) {
                    self.put(key, new);
                    Value::Integer(1)
                } else {
                    Value::Integer(0)
                }
            }
        }
    }

    /// `SET` with NX/XX/GET: without GET, +OK or nil when the condition fails; with GET, the
    /// old value (or nil) whether or not the condition held (Redis 7).
    fn apply_set(&mut self, flags: u8, key: &[u8], value: &[u8]) -> Value {
        let exists = self.list.get(key).is_some();
        let allowed = !(flags & SET_NX != 0 && exists || flags & SET_XX != 0 && !exists);
        if flags & SET_GET != 0 {
            let old = self.list.get(key).map(<[u8]>::to_vec);
            if allowed {
                self.put(key, value);
            }
            return old.map_or(Value::Nil, Value::Bulk);
        }
        if !allowed {
            return Value::Nil;
        }
        self.put(key, value);
        Value::ok()
    }

    fn apply_incrby(&mut self, key: &[u8], delta: i64) -> Value {
        let current = match self.list.get(key) {
            None => 0,
            Some(v) => match command::parse_i64(v) {
                Some(n) => n,
                None => return command::not_integer(),
            },
        };
        match current.checked_add(delta) {
            Some(n) => {
                self.put(key, n.to_string().as_bytes());
                Value::Integer(n)
            }
            None => Value::error("ERR increment or decrement would overflow"),
        }
    }

    fn answer(&self, cmd: ReadCmd<'_>) -> Value {
        let bulk = |v: Option<&[u8]>| v.map_or(Value::Nil, |v| Value::Bulk(v.to_vec()));
        match cmd {
            ReadCmd::Get { key } => bulk(self.list.get(key)),
            ReadCmd::Exists { keys } => {
                let n = keys.iter().filter(|k| self.list.get(k).is_some()).count();
                Value::Integer(n as i64)
            }
            ReadCmd::MGet { keys } => {
                Value::Array(keys.iter().map(|k| bulk(self.list.get(k))).collect())
            }
            ReadCmd::StrLen { key } => {
                Value::Integer(self.list.get(key).map_or(0, <[u8]>::len) as i64)
            }
            ReadCmd::Range { start, end, limit } => self.answer_range(start, end, limit),
            ReadCmd::DbSize => Value::Integer(self.list.len() as i64),
        }
    }

    /// Flat array `k1 v1 k2 v2 ...` of keys in `[start, end)` (empty `end`: unbounded), at
    /// most `limit` pairs and about `RANGE_REPLY_SIZE_MAX` bytes.
    fn answer_range(&self, start: &[u8], end: &[u8], limit: u32) -> Value {
        let end = if end.is_empty() { None } else { Some(end) };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (k, v) in self.list.range(start, end).take(limit as usize) {
            bytes += k.len() + v.len();
            if bytes > RANGE_REPLY_SIZE_MAX && !out.is_empty() {
                break;
            }
            out.push(Value::Bulk(k.to_vec()));
            out.push(Value::Bulk(v.to_vec()));
        }
        Value::Array(out)
    }
}

impl StateMachine for KvStore {
    fn parse(&self, args: &[Vec<u8>]) -> Option<Request> {
        command::parse(args)
    }

    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Value {
        assert!(
            index > self.applied,
            "apply at index {index} but applied is {}",
            self.applied
        );
        self.applied = index;
        match command::decode_write(data) {
            Ok(cmd) => self.apply_write(cmd),
            Err(e) => Value::error(format!("ERR undecodable entry at index {index}: {e}")),
        }
    }

    fn query(&self, data: &[u8]) -> Value {
        match command::decode_read(data) {
            Ok(cmd) => self.answer(cmd),
            Err(e) => Value::error(format!("ERR undecodable query: {e}")),
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64> {
        snapshot::write(self, w)
    }

    fn load_snapshot(&mut self, r: &mut dyn std::io::Read) -> Result<u64, SnapshotError> {
        snapshot::load(self, r)
    }

    fn state_hash(&self) -> u64 {
        combine_state_hash(self.applied, self.list.len(), self.entries_hash)
    }

    fn len(&self) -> usize {
        self.list.len()
    }
}
