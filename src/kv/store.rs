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
//! # Scan order
//! `SCAN` walks the keys in the order of a fixed 64-bit hash of each key (`scan_hash`, never
//! 0), kept in `scan_index`. Its cursor is the hash to resume from, so it means the same on
//! every replica and after any leader change (it depends on the keys alone, not on one node's
//! memory layout), and a key present for the whole scan is returned: every key whose hash is
//! below the cursor was already returned, and the scan only moves up. A call stops only
//! between two different hashes, so keys that collide are returned together.
//! NB: the index holds a second copy of every key (memory ~ 2x the key bytes).
//!
//! Invariants:
//! 1. `entries_hash` == wrapping sum of `entry_hash(k, v)` over the stored pairs.
//! 4. `scan_index` holds exactly `(scan_hash(k), k)` for every stored key `k`.
//! 2. `applied` only grows; `apply` asserts `index > applied` (a caller's bug otherwise).
//! 3. No stored key exceeds `KEY_SIZE_MAX` and no stored value exceeds `VALUE_SIZE_MAX`.

use crate::client::value::Value;
use crate::kv::command::{self, ReadCmd, TypeFilter, WriteCmd, SET_GET, SET_NX, SET_XX};
use crate::kv::envelope::{self, SessionTag};
use crate::kv::hash::hash64;
use crate::kv::hash::{combine_state_hash, entry_hash};
use crate::kv::session::{Admission, Sessions};
use crate::kv::skiplist::{Entry, SkipList};
use crate::kv::{snapshot, Request, SnapshotError, StateMachine};
use crate::limits::KEYS_KEYS_MAX;
use crate::limits::VALUE_SIZE_MAX;
use crate::raft::LogIndex;
use std::cell::Cell;
use std::collections::BTreeSet;

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
    /// The largest leader stamp applied so far (ms since the Unix epoch): apply's "now".
    /// Part of the replicated state. Invariant: only grows.
    stamp_ms: u64,
    entries_hash: u64,
    seed: u64,
    /// Every key by its scan hash (see "Scan order").
    scan_index: BTreeSet<(u64, Box<[u8]>)>,
    /// RANDOMKEY's generator state: local to this replica, it never affects the state.
    random: Cell<u64>,
    /// Exactly-once client sessions (`session.rs`): replicated state, in the state hash.
    sessions: Sessions,
}

/// The scan order's hash of a key: fixed (not the store's seed), so that cursors mean the same
/// on every replica; never 0, which is the cursor that starts and ends a scan.
pub fn scan_hash(key: &[u8]) -> u64 {
    hash64(0x7363_616e, key).max(1)
}

impl KvStore {
    /// An empty store; `seed` seeds the skiplist's heights (which never affect replies,
    /// snapshots or the state hash).
    pub fn new(seed: u64) -> KvStore {
        KvStore {
            list: SkipList::new(seed),
            applied: LogIndex(0),
            stamp_ms: 0,
            entries_hash: 0,
            seed,
            scan_index: BTreeSet::new(),
            random: Cell::new(seed | 1),
            sessions: Sessions::new(),
        }
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.list.len(),
            data_bytes: self.list.data_bytes(),
            overhead_bytes: self.list.overhead_bytes(),
        }
    }

    /// Lay the skiplist's arena out in key order (see `SkipList::compact`): faster scans and
    /// lookups afterwards, at the cost of an O(n) pause (about 0.1 s per million keys), so the
    /// node calls it when it chooses (e.g. idle, or after a snapshot). Never changes replies,
    /// snapshots or the state hash.
    pub fn compact(&mut self) {
        self.list.compact();
    }

    /// The largest leader stamp applied so far, ms since the Unix epoch (0 before any).
    pub fn applied_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// The value under `key` (for tests and the node's diagnostics).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.list.get(key)
    }

    /// Assert the skiplist's and the hash's invariants. O(n).
    pub fn check_invariants(&self) {
        self.list.check_invariants();
        self.sessions.check_invariants();
        let sum = self
            .list
            .iter()
            .fold(0u64, |s, (k, v)| s.wrapping_add(entry_hash(k, v)));
        assert_eq!(sum, self.entries_hash, "incremental entries hash drifted");
        assert_eq!(self.scan_index.len(), self.list.len(), "scan index size");
        for (k, _) in self.list.iter() {
            assert!(
                self.scan_index.contains(&(scan_hash(k), k.into())),
                "key {k:?} missing from the scan index"
            );
        }
    }

    #[cfg(test)]
    pub(crate) fn list(&self) -> &SkipList {
        &self.list
    }

    /// Install a state built by the snapshot loader.
    fn replace_state(&mut self, list: SkipList, applied: LogIndex, entries_hash: u64) {
        self.scan_index = list.iter().map(|(k, _)| (scan_hash(k), k.into())).collect();
        self.list = list;
        self.applied = applied;
        self.entries_hash = entries_hash;
        self.sessions = Sessions::new();
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Option<Entry> {
        self.entries_hash = self.entries_hash.wrapping_add(entry_hash(key, value));
        let old = self.list.insert(key, value);
        match &old {
            Some(e) => {
                self.entries_hash = self.entries_hash.wrapping_sub(entry_hash(key, e.value()))
            }
            None => {
                self.scan_index.insert((scan_hash(key), key.into()));
            }
        }
        old
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        match self.list.remove(key) {
            Some(e) => {
                self.entries_hash = self.entries_hash.wrapping_sub(entry_hash(key, e.value()));
                self.scan_index.remove(&(scan_hash(key), key.into()));
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
            other => self.apply_write_more(other),
        }
    }

    /// The writes added for Redis compatibility, with Redis 7's replies.
    fn apply_write_more(&mut self, cmd: WriteCmd<'_>) -> Value {
        match cmd {
            WriteCmd::GetDel { key } => match self.list.get(key).map(<[u8]>::to_vec) {
                Some(v) => {
                    self.delete(key);
                    Value::Bulk(v)
                }
                None => Value::Nil,
            },
            WriteCmd::MSetNx { pairs } => {
                if pairs.iter().any(|(k, _)| self.list.get(k).is_some()) {
                    return Value::Integer(0);
                }
                for (k, v) in pairs {
                    self.put(k, v);
                }
                Value::Integer(1)
            }
            WriteCmd::SetRange { key, offset, value } => self.apply_setrange(key, offset, value),
            WriteCmd::IncrByFloat { key, incr } => {
                match crate::kv::float::incr_by_float(self.list.get(key), incr) {
                    Ok(text) => {
                        self.put(key, text.as_bytes());
                        Value::Bulk(text.into_bytes())
                    }
                    Err(e) => e,
                }
            }
            WriteCmd::Rename { from, to, nx } => {
                let Some(v) = self.list.get(from).map(<[u8]>::to_vec) else {
                    return Value::error("ERR no such key");
                };
                if from == to {
                    return if nx { Value::Integer(0) } else { Value::ok() };
                }
                if nx && self.list.get(to).is_some() {
                    return Value::Integer(0);
                }
                self.delete(from);
                self.put(to, &v);
                if nx {
                    Value::Integer(1)
                } else {
                    Value::ok()
                }
            }
            WriteCmd::Copy { from, to, replace } => {
                if from == to {
                    return Value::error("ERR source and destination objects are the same");
                }
                let Some(v) = self.list.get(from).map(<[u8]>::to_vec) else {
                    return Value::Integer(0);
                };
                if !replace && self.list.get(to).is_some() {
                    return Value::Integer(0);
                }
                self.put(to, &v);
                Value::Integer(1)
            }
            WriteCmd::FlushAll => {
                self.list.clear();
                self.scan_index.clear();
                self.entries_hash = 0;
                Value::ok()
            }
            other => unreachable!("apply_write handles {other:?}"),
        }
    }

    /// Apply a command payload at `index`; a write tagged with a session goes through the
    /// session table first, so a resent sequence answers its saved reply and applies once
    /// (Raft dissertation §6.3). Sessions idle past their timeout by the applied stamp expire
    /// first, identically on every replica.
    fn apply_in_session(
        &mut self,
        index: LogIndex,
        session: Option<SessionTag>,
        data: &[u8],
    ) -> Value {
        self.sessions.expire(self.stamp_ms);
        let cmd = match command::decode_write(data) {
            Ok(cmd) => cmd,
            Err(e) => return Value::error(format!("ERR undecodable entry at index {index}: {e}")),
        };
        match (session, cmd) {
            (None, WriteCmd::SessionOpen) => {
                // The id is the entry's index: unique, and the same on every replica.
                self.sessions.open(index.0, self.stamp_ms);
                Value::Integer(index.0 as i64)
            }
            (Some(_), WriteCmd::SessionOpen) => {
                Value::error("ERR SESSION commands cannot run inside a session")
            }
            (None, cmd) => self.apply_write(cmd),
            (Some(tag), cmd) => match self.sessions.admit(tag, self.stamp_ms) {
                Admission::Fresh => {
                    let reply = self.apply_write(cmd);
                    self.sessions.record(tag, &reply);
                    reply
                }
                Admission::Duplicate(reply) | Admission::Refused(reply) => reply,
            },
        }
    }

    /// Open sessions, and the bytes of replies they keep for resends (for INFO).
    pub fn session_stats(&self) -> (usize, usize) {
        (self.sessions.len(), self.sessions.saved_bytes())
    }

    /// `SETRANGE`, in Redis's order of checks: an empty value changes nothing (and creates
    /// no key); otherwise the result must fit `VALUE_SIZE_MAX`; the gap is zero-filled.
    fn apply_setrange(&mut self, key: &[u8], offset: u64, value: &[u8]) -> Value {
        let old = self.list.get(key);
        if value.is_empty() {
            return Value::Integer(old.map_or(0, <[u8]>::len) as i64);
        }
        let end = offset.saturating_add(value.len() as u64);
        if end > VALUE_SIZE_MAX as u64 {
            return command::string_too_large();
        }
        let (offset, end) = (offset as usize, end as usize);
        let mut new = old.unwrap_or_default().to_vec();
        if new.len() < end {
            new.resize(end, 0);
        }
        new[offset..end].copy_from_slice(value);
        let len = new.len();
        self.put(key, &new);
        Value::Integer(len as i64)
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
            ReadCmd::GetRange { key, start, end } => {
                Value::Bulk(substring(self.list.get(key).unwrap_or_default(), start, end).to_vec())
            }
            ReadCmd::Type { key } => Value::Simple(
                if self.list.get(key).is_some() {
                    "string"
                } else {
                    "none"
                }
                .into(),
            ),
            ReadCmd::Scan {
                cursor,
                count,
                pattern,
                kind,
            } => self.answer_scan(cursor, count, pattern, kind),
            ReadCmd::Keys { pattern } => self.answer_keys(pattern),
            ReadCmd::RandomKey => self.random_key(),
        }
    }

    /// One SCAN step: examine about `count` keys from `cursor` in scan order (see "Scan
    /// order"), stopping only between two different hashes; reply `[next cursor, keys]`.
    fn answer_scan(
        &self,
        cursor: u64,
        count: u32,
        pattern: Option<&[u8]>,
        kind: TypeFilter,
    ) -> Value {
        let mut keys = Vec::new();
        let mut next = 0u64;
        let mut last_hash = None;
        let from = self.scan_index.range((cursor, Box::default())..);
        for (examined, (h, key)) in from.enumerate() {
            if examined >= count as usize && last_hash != Some(*h) {
                next = *h;
                break;
            }
            last_hash = Some(*h);
            let matched = pattern.is_none_or(|p| crate::kv::glob::matches(p, key, false));
            if matched && kind != TypeFilter::Other {
                keys.push(Value::Bulk(key.to_vec()));
            }
        }
        Value::Array(vec![
            Value::Bulk(next.to_string().into_bytes()),
            Value::Array(keys),
        ])
    }

    /// `KEYS`, in key order; refused past `KEYS_KEYS_MAX` keys, since it walks them all.
    fn answer_keys(&self, pattern: &[u8]) -> Value {
        if self.list.len() > KEYS_KEYS_MAX {
            return Value::error(format!(
                "ERR KEYS would walk {} keys, more than the limit of {KEYS_KEYS_MAX}; use SCAN",
                self.list.len()
            ));
        }
        let all = pattern == b"*";
        let keys = self
            .list
            .iter()
            .filter(|(k, _)| all || crate::kv::glob::matches(pattern, k, false))
            .map(|(k, _)| Value::Bulk(k.to_vec()))
            .collect();
        Value::Array(keys)
    }

    /// A key picked at random in O(log n): the first in scan order at or after a random hash.
    /// (Keys after a wide gap of hashes are a little likelier; Redis is not uniform either.)
    fn random_key(&self) -> Value {
        let mut x = self.random.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.set(x);
        let pick = self
            .scan_index
            .range((x, Box::default())..)
            .next()
            .or_else(|| self.scan_index.iter().next());
        pick.map_or(Value::Nil, |(_, k)| Value::Bulk(k.to_vec()))
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

/// `GETRANGE`'s slice of `s`, with Redis's rules for negative and out-of-range indexes.
pub fn substring(s: &[u8], start: i64, end: i64) -> &[u8] {
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    let start = if start < 0 { len + start } else { start }.max(0);
    let end = if end < 0 { len + end } else { end }.max(0).min(len - 1);
    if start > end || len == 0 {
        return &[];
    }
    &s[start as usize..=end as usize]
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
        let (env, data) = match envelope::open(data) {
            Ok(opened) => opened,
            Err(e) => return Value::error(format!("ERR undecodable entry at index {index}: {e}")),
        };
        if let Some(env) = env {
            // Apply's "now": never backwards, whatever the proposing leader's clock said.
            self.stamp_ms = self.stamp_ms.max(env.stamp_ms);
        }
        self.apply_in_session(index, env.and_then(|e| e.session), data)
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
        snapshot::write(&self.list, self.applied, self.state_hash(), w)
    }

    fn load_snapshot(&mut self, r: &mut dyn std::io::Read) -> Result<u64, SnapshotError> {
        let loaded = snapshot::load(self.seed, r)?;
        self.replace_state(loaded.list, loaded.applied, loaded.entries_hash);
        debug_assert_eq!(self.state_hash(), loaded.state_hash);
        Ok(loaded.state_hash)
    }

    fn state_hash(&self) -> u64 {
        // An empty session table hashes to 0, leaving the hash of a store without sessions.
        combine_state_hash(self.applied, self.list.len(), self.entries_hash) ^ self.sessions.hash()
    }

    fn len(&self) -> usize {
        self.list.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run one command as the node would: parse, then apply (at the next index) or query.
    fn run(kv: &mut KvStore, args: &[&[u8]]) -> Value {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        match kv.parse(&args).expect("a KV command") {
            Request::Write(p) => {
                let index = kv.applied_index().next();
                kv.apply(index, &p)
            }
            Request::Read(q) => kv.query(&q),
            Request::Reply(v) => v,
        }
    }

    fn bulk(b: &[u8]) -> Value {
        Value::Bulk(b.to_vec())
    }

    fn err(s: &str) -> Value {
        Value::error(s)
    }

    #[test]
    fn set_and_get_follow_redis_including_nx_xx_and_get() {
        let kv = &mut KvStore::new(1);
        assert_eq!(run(kv, &[b"GET", b"k"]), Value::Nil);
        assert_eq!(run(kv, &[b"SET", b"k", b"v", b"XX"]), Value::Nil);
        assert_eq!(run(kv, &[b"GET", b"k"]), Value::Nil);
        assert_eq!(run(kv, &[b"SET", b"k", b"v", b"NX"]), Value::ok());
        assert_eq!(run(kv, &[b"SET", b"k", b"w", b"NX"]), Value::Nil);
        assert_eq!(run(kv, &[b"GET", b"k"]), bulk(b"v"));
        assert_eq!(run(kv, &[b"SET", b"k", b"w", b"xx"]), Value::ok());
        assert_eq!(run(kv, &[b"SET", b"k", b"x", b"GET"]), bulk(b"w"));
        assert_eq!(run(kv, &[b"SET", b"new", b"1", b"GET"]), Value::Nil);
        assert_eq!(run(kv, &[b"GET", b"new"]), bulk(b"1"));
        // NX GET on an existing key: not set, old value returned.
        assert_eq!(run(kv, &[b"SET", b"k", b"y", b"NX", b"GET"]), bulk(b"x"));
        assert_eq!(run(kv, &[b"GET", b"k"]), bulk(b"x"));
        // XX GET on a missing key: not set, nil.
        assert_eq!(run(kv, &[b"SET", b"zz", b"y", b"XX", b"GET"]), Value::Nil);
        assert_eq!(run(kv, &[b"EXISTS", b"zz"]), Value::Integer(0));
        assert_eq!(run(kv, &[b"SETNX", b"k", b"q"]), Value::Integer(0));
        assert_eq!(run(kv, &[b"SETNX", b"q", b"q"]), Value::Integer(1));
        kv.check_invariants();
    }

    #[test]
    fn del_exists_mget_mset_strlen_and_dbsize_count_like_redis() {
        let kv = &mut KvStore::new(2);
        assert_eq!(
            run(kv, &[b"MSET", b"a", b"1", b"b", b"22", b"a", b"333"]),
            Value::ok()
        );
        assert_eq!(run(kv, &[b"DBSIZE"]), Value::Integer(2));
        assert_eq!(run(kv, &[b"GET", b"a"]), bulk(b"333"), "later pair wins");
        assert_eq!(
            run(kv, &[b"EXISTS", b"a", b"a", b"nope", b"b"]),
            Value::Integer(3)
        );
        assert_eq!(
            run(kv, &[b"MGET", b"a", b"nope", b"b"]),
            Value::Array(vec![bulk(b"333"), Value::Nil, bulk(b"22")])
        );
        assert_eq!(run(kv, &[b"STRLEN", b"b"]), Value::Integer(2));
        assert_eq!(run(kv, &[b"STRLEN", b"nope"]), Value::Integer(0));
        assert_eq!(run(kv, &[b"DEL", b"a", b"a", b"nope"]), Value::Integer(1));
        assert_eq!(run(kv, &[b"DEL", b"a"]), Value::Integer(0));
        assert_eq!(run(kv, &[b"DBSIZE"]), Value::Integer(1));
        assert_eq!(
            run(kv, &[b"dbsize", b"x"]),
            err("ERR wrong number of arguments for 'dbsize' command")
        );
        kv.check_invariants();
    }

    #[test]
    fn counters_follow_redis_integer_rules_and_overflow_errors() {
        let kv = &mut KvStore::new(3);
        assert_eq!(run(kv, &[b"INCR", b"n"]), Value::Integer(1));
        assert_eq!(run(kv, &[b"INCRBY", b"n", b"41"]), Value::Integer(42));
        assert_eq!(run(kv, &[b"DECR", b"n"]), Value::Integer(41));
        assert_eq!(run(kv, &[b"DECRBY", b"n", b"-9"]), Value::Integer(50));
        assert_eq!(run(kv, &[b"GET", b"n"]), bulk(b"50"));
        assert_eq!(run(kv, &[b"DECRBY", b"m", b"5"]), Value::Integer(-5));
        let not_int = err("ERR value is not an integer or out of range");
        let overflow = err("ERR increment or decrement would overflow");
        for v in [
            &b"abc"[..],
            b" 1",
            b"1.5",
            b"01",
            b"",
            b"99999999999999999999",
        ] {
            run(kv, &[b"SET", b"s", v]);
            assert_eq!(run(kv, &[b"INCR", b"s"]), not_int, "{v:?}");
            assert_eq!(run(kv, &[b"GET", b"s"]), bulk(v), "unchanged after error");
        }
        run(kv, &[b"SET", b"big", b"9223372036854775807"]);
        assert_eq!(run(kv, &[b"INCR", b"big"]), overflow);
        assert_eq!(
            run(kv, &[b"INCRBY", b"big", b"0"]),
            Value::Integer(i64::MAX)
        );
        run(kv, &[b"SET", b"small", b"-9223372036854775808"]);
        assert_eq!(run(kv, &[b"DECR", b"small"]), overflow);
        assert_eq!(run(kv, &[b"INCRBY", b"x", b"nope"]), not_int);
        assert_eq!(
            run(kv, &[b"INCR"]),
            err("ERR wrong number of arguments for 'incr' command")
        );
        kv.check_invariants();
    }

    #[test]
    fn append_and_cas_behave_as_documented() {
        let kv = &mut KvStore::new(4);
        assert_eq!(run(kv, &[b"APPEND", b"k", b"ab"]), Value::Integer(2));
        assert_eq!(run(kv, &[b"APPEND", b"k", b"\0\xff"]), Value::Integer(4));
        assert_eq!(run(kv, &[b"GET", b"k"]), bulk(b"ab\0\xff"));
        assert_eq!(run(kv, &[b"CAS", b"k", b"ab", b"z"]), Value::Integer(0));
        assert_eq!(
            run(kv, &[b"CAS", b"k", b"ab\0\xff", b"z"]),
            Value::Integer(1)
        );
        assert_eq!(run(kv, &[b"GET", b"k"]), bulk(b"z"));
        // A missing key never matches, not even the empty expected value.
        assert_eq!(run(kv, &[b"CAS", b"gone", b"", b"z"]), Value::Integer(0));
        assert_eq!(run(kv, &[b"EXISTS", b"gone"]), Value::Integer(0));
        run(kv, &[b"SET", b"e", b""]);
        assert_eq!(run(kv, &[b"CAS", b"e", b"", b"full"]), Value::Integer(1));
        kv.check_invariants();
    }

    #[test]
    fn empty_keys_binary_bytes_and_megabyte_values_are_stored_exactly() {
        let kv = &mut KvStore::new(5);
        assert_eq!(run(kv, &[b"SET", b"", b"empty key"]), Value::ok());
        assert_eq!(run(kv, &[b"GET", b""]), bulk(b"empty key"));
        let binary: Vec<u8> = (0..=255u8).collect();
        run(kv, &[b"SET", &binary, &binary]);
        assert_eq!(run(kv, &[b"GET", &binary]), Value::Bulk(binary.clone()));
        let mib = vec![0xa5u8; VALUE_SIZE_MAX];
        assert_eq!(run(kv, &[b"SET", b"big", &mib]), Value::ok());
        assert_eq!(
            run(kv, &[b"STRLEN", b"big"]),
            Value::Integer(VALUE_SIZE_MAX as i64)
        );
        assert_eq!(
            run(kv, &[b"APPEND", b"big", b"x"]),
            err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
        );
        assert_eq!(run(kv, &[b"GET", b"big"]), Value::Bulk(mib));
        kv.check_invariants();
    }

    #[test]
    fn range_pages_in_key_order_with_limits_and_an_unbounded_end() {
        let kv = &mut KvStore::new(6);
        for i in 0..25u32 {
            let k = format!("key{i:02}");
            run(kv, &[b"SET", k.as_bytes(), &i.to_be_bytes()]);
        }
        run(kv, &[b"SET", b"other", b"o"]);
        let keys = |v: Value| -> Vec<Vec<u8>> {
            match v {
                Value::Array(items) => items
                    .chunks(2)
                    .map(|p| match &p[0] {
                        Value::Bulk(k) => k.clone(),
                        x => panic!("{x:?}"),
                    })
                    .collect(),
                x => panic!("{x:?}"),
            }
        };
        let got = keys(run(kv, &[b"RANGE", b"key05", b"key08"]));
        assert_eq!(
            got,
            vec![b"key05".to_vec(), b"key06".to_vec(), b"key07".to_vec()]
        );
        // Page through everything three at a time, continuing from last key + "\0".
        let mut all = Vec::new();
        let mut start = Vec::new();
        loop {
            let page = keys(run(kv, &[b"RANGE", &start, b"", b"LIMIT", b"3"]));
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 3);
            start = page.last().unwrap().clone();
            start.push(0);
            all.extend(page);
        }
        assert_eq!(all.len(), 26);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(run(kv, &[b"RANGE", b"z", b"a"]), Value::Array(vec![]));
        let pair = run(kv, &[b"RANGE", b"key00", b"key01"]);
        assert_eq!(
            pair,
            Value::Array(vec![bulk(b"key00"), bulk(&0u32.to_be_bytes())])
        );
    }

    #[test]
    fn range_replies_stop_near_the_byte_cap_but_always_make_progress() {
        let kv = &mut KvStore::new(7);
        let mib = vec![1u8; VALUE_SIZE_MAX];
        for i in 0..12u8 {
            run(kv, &[b"SET", &[i], &mib]);
        }
        match run(kv, &[b"RANGE", b"", b""]) {
            Value::Array(items) => {
                let pairs = items.len() / 2;
                assert!(
                    pairs >= 1 && pairs * VALUE_SIZE_MAX <= RANGE_REPLY_SIZE_MAX,
                    "{pairs}"
                );
                assert!(pairs < 12);
            }
            x => panic!("{x:?}"),
        }
    }

    /// One SCAN call's (next cursor, keys).
    fn scan_step(kv: &mut KvStore, cursor: u64, count: u32) -> (u64, Vec<Vec<u8>>) {
        let c = cursor.to_string();
        let n = count.to_string();
        let Value::Array(parts) = run(kv, &[b"SCAN", c.as_bytes(), b"COUNT", n.as_bytes()]) else {
            panic!("SCAN reply")
        };
        let (Value::Bulk(next), Value::Array(keys)) = (&parts[0], &parts[1]) else {
            panic!("{parts:?}")
        };
        let keys = keys
            .iter()
            .map(|k| match k {
                Value::Bulk(k) => k.clone(),
                x => panic!("{x:?}"),
            })
            .collect();
        (String::from_utf8_lossy(next).parse().unwrap(), keys)
    }

    #[test]
    fn scan_returns_every_key_present_throughout_despite_concurrent_writes() {
        let mut p = crate::prng::Prng::new(21);
        for round in 0..20 {
            let kv = &mut KvStore::new(round);
            let stable: Vec<Vec<u8>> = (0..300).map(|i| format!("s{i}").into_bytes()).collect();
            for k in &stable {
                run(kv, &[b"SET", k, b"v"]);
            }
            let mut seen = std::collections::HashSet::new();
            let mut cursor = 0;
            for step in 0.. {
                assert!(step < 10_000, "scan did not finish");
                // Churn: other keys come and go between calls.
                for _ in 0..p.range(0, 20) {
                    let k = format!("c{}", p.range(0, 500)).into_bytes();
                    if p.chance(1, 2) {
                        run(kv, &[b"SET", &k, b"x"]);
                    } else {
                        run(kv, &[b"DEL", &k]);
                    }
                }
                let (next, keys) = scan_step(kv, cursor, p.range(1, 30) as u32);
                seen.extend(keys);
                if next == 0 {
                    break;
                }
                assert!(next > cursor, "the cursor only moves up");
                cursor = next;
            }
            for k in &stable {
                assert!(seen.contains(k), "round {round}: {k:?} missed");
            }
            kv.check_invariants();
        }
    }

    #[test]
    fn a_scan_without_changes_returns_each_key_exactly_once_and_survives_a_snapshot() {
        let kv = &mut KvStore::new(3);
        for i in 0..1000 {
            run(kv, &[b"SET", format!("k{i}").as_bytes(), b"v"]);
        }
        let mut all = Vec::new();
        let (mut cursor, keys) = scan_step(kv, 0, 100);
        all.extend(keys);
        // Continue on a replica rebuilt from a snapshot: the cursor means the same there.
        let mut snap = Vec::new();
        kv.write_snapshot(&mut snap).unwrap();
        let other = &mut KvStore::new(99);
        other.load_snapshot(&mut snap.as_slice()).unwrap();
        while cursor != 0 {
            let (next, keys) = scan_step(other, cursor, 77);
            all.extend(keys);
            cursor = next;
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!((n, all.len()), (1000, 1000));
        assert!(matches!(run(other, &[b"RANDOMKEY"]), Value::Bulk(_)));
        run(other, &[b"FLUSHALL"]);
        assert_eq!(run(other, &[b"RANDOMKEY"]), Value::Nil);
        other.check_invariants();
    }

    #[test]
    fn undecodable_entries_are_answered_with_errors_and_still_applied() {
        let kv = &mut KvStore::new(8);
        let v = kv.apply(LogIndex(1), &[9, 9, 9]);
        assert!(v.is_error(), "{v:?}");
        assert_eq!(kv.applied_index(), LogIndex(1));
        assert!(kv.query(&[]).is_error());
    }

    fn write_payload(args: &[&[u8]]) -> Vec<u8> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        match command::parse(&args) {
            Some(Request::Write(p)) => p,
            x => panic!("{x:?}"),
        }
    }

    #[test]
    fn enveloped_writes_apply_and_the_applied_stamp_never_goes_backwards() {
        use crate::kv::envelope::{wrap, Envelope};
        let kv = &mut KvStore::new(10);
        let at = |stamp_ms| Envelope {
            stamp_ms,
            session: None,
        };
        let incr = write_payload(&[b"INCR", b"n"]);
        assert_eq!(
            kv.apply(LogIndex(1), &wrap(&at(500), &incr)),
            Value::Integer(1)
        );
        assert_eq!(kv.applied_stamp_ms(), 500);
        // A later leader with a slower clock: "now" stays at 500.
        assert_eq!(
            kv.apply(LogIndex(2), &wrap(&at(200), &incr)),
            Value::Integer(2)
        );
        assert_eq!(kv.applied_stamp_ms(), 500);
        // A bare version-1 payload applies with the previous stamp.
        assert_eq!(kv.apply(LogIndex(3), &incr), Value::Integer(3));
        assert_eq!(kv.applied_stamp_ms(), 500);
        assert_eq!(
            kv.apply(LogIndex(4), &wrap(&at(900), &incr)),
            Value::Integer(4)
        );
        assert_eq!(kv.applied_stamp_ms(), 900);
        // A damaged envelope is an error reply, counted as applied, state unchanged.
        let mut bad = wrap(&at(5000), &incr);
        bad[9] = 0x80;
        let v = kv.apply(LogIndex(5), &bad);
        assert!(v.is_error(), "{v:?}");
        assert_eq!(kv.applied_index(), LogIndex(5));
        assert_eq!(kv.applied_stamp_ms(), 900);
        assert_eq!(run(kv, &[b"GET", b"n"]), bulk(b"4"));
    }

    /// The payload `args` parses to, tagged (or not) and stamped as a leader would.
    fn enveloped(args: &[&[u8]], stamp_ms: u64, session: Option<SessionTag>) -> Vec<u8> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        let Some(Request::Write(p)) = command::parse(&args) else {
            panic!("{args:?} is not a write")
        };
        envelope::wrap(&envelope::Envelope { stamp_ms, session }, &p)
    }

    #[test]
    fn a_tagged_write_applies_once_however_often_it_is_resent() {
        let kv = &mut KvStore::new(12);
        let open = enveloped(&[b"SESSION", b"OPEN"], 1_000, None);
        assert_eq!(
            kv.apply(LogIndex(1), &open),
            Value::Integer(1),
            "id = index"
        );
        let tag = |seq, lowest| Some(SessionTag { id: 1, seq, lowest });
        let incr = |seq, lowest, at| enveloped(&[b"INCR", b"n"], at, tag(seq, lowest));
        assert_eq!(kv.apply(LogIndex(2), &incr(1, 1, 1_001)), Value::Integer(1));
        // Resent through another leader after a failure: the saved reply, no second INCR.
        assert_eq!(kv.apply(LogIndex(3), &incr(1, 1, 1_002)), Value::Integer(1));
        assert_eq!(kv.apply(LogIndex(4), &incr(2, 2, 1_003)), Value::Integer(2));
        assert_eq!(kv.apply(LogIndex(5), &incr(2, 2, 1_004)), Value::Integer(2));
        assert_eq!(run(kv, &[b"GET", b"n"]), bulk(b"2"));
        // An untagged INCR is at-least-once, as with any Redis client.
        let plain = enveloped(&[b"INCR", b"n"], 1_005, None);
        assert_eq!(kv.apply(LogIndex(6), &plain), Value::Integer(3));
        // A session inside a session is refused; so is an unknown one, without applying.
        let nested = enveloped(&[b"SESSION", b"OPEN"], 1_006, tag(3, 3));
        assert!(kv.apply(LogIndex(7), &nested).is_error());
        let stranger = Some(SessionTag {
            id: 6,
            seq: 1,
            lowest: 1,
        });
        let v = kv.apply(LogIndex(8), &enveloped(&[b"INCR", b"n"], 1_007, stranger));
        assert!(
            matches!(&v, Value::Error(e) if e.starts_with("SESSIONEXPIRED")),
            "{v:?}"
        );
        assert_eq!(run(kv, &[b"GET", b"n"]), bulk(b"3"));
        assert_eq!(kv.session_stats().0, 1);
        kv.check_invariants();
    }

    #[test]
    fn sessions_expire_by_the_entries_stamps_and_replicas_agree_on_the_hash() {
        let (mut a, mut b) = (KvStore::new(1), KvStore::new(2));
        let open = enveloped(&[b"SESSION", b"OPEN"], 5_000, None);
        let tag = Some(SessionTag {
            id: 1,
            seq: 1,
            lowest: 1,
        });
        let set = enveloped(&[b"SET", b"k", b"v"], 5_000, tag);
        let late = 5_001 + crate::limits::SESSION_TIMEOUT_MS;
        let other = enveloped(&[b"SET", b"x", b"y"], late, None);
        let resend = enveloped(&[b"SET", b"k", b"w"], late, tag);
        let mut hashes = Vec::new();
        for (i, e) in [open, set, other, resend].iter().enumerate() {
            let index = LogIndex(i as u64 + 1);
            let (ra, rb) = (a.apply(index, e), b.apply(index, e));
            assert_eq!(ra, rb, "reply at {index}");
            assert_eq!(a.state_hash(), b.state_hash(), "hash at {index}");
            hashes.push((a.state_hash(), ra));
        }
        // The unrelated write's stamp expired the session: the resend is refused, not applied.
        assert!(matches!(&hashes[3].1, Value::Error(e) if e.starts_with("SESSIONEXPIRED")));
        assert_eq!(a.get(b"k"), Some(&b"v"[..]));
        assert_eq!(a.session_stats().0, 0);
        a.check_invariants();
        // Sessions are in the state hash: an open session alone tells two stores apart.
        let (mut c, mut d) = (KvStore::new(3), KvStore::new(3));
        c.apply(LogIndex(1), &enveloped(&[b"SESSION", b"OPEN"], 9, None));
        d.apply(LogIndex(1), &enveloped(&[b"DEL", b"nothing"], 9, None));
        assert_ne!(c.state_hash(), d.state_hash());
    }

    #[test]
    #[should_panic(expected = "apply at index 3 but applied is 5")]
    fn applying_an_old_index_is_a_caller_bug() {
        let kv = &mut KvStore::new(9);
        let p = match command::parse(&[b"incr".to_vec(), b"n".to_vec()]) {
            Some(Request::Write(p)) => p,
            x => panic!("{x:?}"),
        };
        kv.apply(LogIndex(5), &p);
        kv.apply(LogIndex(3), &p);
    }

    #[test]
    fn replicas_applying_the_same_entries_agree_on_the_state_hash() {
        let mut p = crate::prng::Prng::new(11);
        let (mut a, mut b) = (KvStore::new(1), KvStore::new(2));
        let mut entries = Vec::new();
        for _ in 0..3000 {
            let key = format!("k{}", p.range(0, 200)).into_bytes();
            let args: Vec<Vec<u8>> = match p.range(0, 5) {
                0 => vec![b"SET".to_vec(), key, p.next_u64().to_string().into_bytes()],
                1 => vec![b"DEL".to_vec(), key],
                2 => vec![b"INCRBY".to_vec(), key, b"7".to_vec()],
                3 => vec![b"APPEND".to_vec(), key, b"x".to_vec()],
                _ => vec![b"CAS".to_vec(), key, b"1".to_vec(), b"2".to_vec()],
            };
            if let Some(Request::Write(e)) = a.parse(&args) {
                entries.push(e);
            }
        }
        for (i, e) in entries.iter().enumerate() {
            let index = LogIndex(i as u64 + 1);
            assert_eq!(a.apply(index, e), b.apply(index, e), "reply at {index}");
            assert_eq!(a.state_hash(), b.state_hash(), "hash at {index}");
        }
        a.check_invariants();
        b.check_invariants();
        // A single differing value changes the hash.
        let h = a.state_hash();
        let e = match a.parse(&[b"SET".to_vec(), b"k1".to_vec(), b"different".to_vec()]) {
            Some(Request::Write(e)) => e,
            x => panic!("{x:?}"),
        };
        let next = a.applied_index().next();
        a.apply(next, &e);
        assert_ne!(a.state_hash(), h);
    }
}
