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
//! The index holds `(hash, NodeId)` pairs, not keys: the key is read from the skiplist node
//! (about 9 bytes per key in `ScanIndex`'s packed blocks, which keep only the high half of
//! the hash: `scan_lo` recomputes the low half from the key; no second copy of the key).
//! `compact` renumbers the nodes, and the store rebuilds the index after it.
//!
//! # Point lookups
//! A key's value is found through the same index, not by the skiplist's search: its scan hash
//! picks one block of `scan_index` (a binary search over the blocks' first pairs, a few KiB
//! that stay in cache), an interpolation finds its pair there (about two cache lines: the
//! hashes are uniform), and the node the pair names is checked to hold the key (its inline
//! word and length, usually without reading the record). The skiplist's search is a cache
//! miss or two per level; under compare.py's random SETs over 100k keys it was a fifth of
//! every node's CPU (issue 16, `perf record` on the leader and a follower). It remains for
//! inserting a new key (which needs its neighbours), for removals and for ordered walks.
//!
//! # Modification indexes (WATCH)
//! Every key carries the index of the entry that last wrote it (`SkipList`'s `modified`
//! stamp), and the store keeps `last_deletion`, the index of the last entry that removed a
//! key. An EXEC entry's watch on `key`, made by a read of the state at index `seen`, is broken
//! iff the key is present and was written after `seen`, or is absent and some key was removed
//! after `seen`. The second is conservative (a spurious abort is allowed, a missed change
//! never): a key deleted and re-created, or created and deleted, since `seen` is always seen.
//!
//! Invariants:
//! 1. `entries_hash` == wrapping sum of `entry_hash(k, v)` over the stored pairs.
//! 4. `scan_index` holds exactly `(scan_hash(k), id)` for every stored key `k`, `id` being the
//!    skiplist node that holds `k`.
//! 2. `applied` only grows; `apply` asserts `index > applied` (a caller's bug otherwise).
//! 3. No stored key exceeds `KEY_SIZE_MAX` and no stored value exceeds `VALUE_SIZE_MAX`.
//! 5. Every key in `expiries` is stored (deleting a key drops its expiry).
//! 6. `modified_sum` == wrapping sum of `modified_hash(k, stamp)` over the stored keys, and
//!    no stamp exceeds `applied`.

use crate::client::value::Value;
use crate::kv::command::{self, ReadCmd, TypeFilter, WriteCmd, SET_GET, SET_NX, SET_XX};
use crate::kv::envelope::SessionTag;
use crate::kv::expiry;
use crate::kv::expiry::Expiries;
use crate::kv::hash::hash64;
use crate::kv::hash::{
    combine_state_hash, entry_hash, mix_extra_parts, modified_hash, watch_hash, ExtraParts,
};
use crate::kv::scan_index::ScanIndex;
use crate::kv::session::{Admission, Sessions};
use crate::kv::skiplist::{NodeId, SkipList};
use crate::kv::ttl::{
    invalid_expire_time, ExpireName, SetName, Ttl, TtlName, TtlWrite, EXPIRE_GT, EXPIRE_LT,
    EXPIRE_NX, EXPIRE_XX,
};
use crate::kv::tx::{self, Item, Tx};
use crate::kv::{envelope, snapshot, Request, SnapshotError, StateMachine, TtlStats};
use crate::limits::VALUE_SIZE_MAX;
use crate::limits::{KEYS_KEYS_MAX, KEY_SIZE_MAX, RECLAIM_ENTRY_SIZE_MAX};
use crate::raft::LogIndex;
use std::cell::Cell;

/// Bytes of keys and values one RANGE reply carries at most: the reply stops before the pair
/// that would cross it (but always holds at least one pair, so paging makes progress).
pub const RANGE_REPLY_SIZE_MAX: usize = 8 * 1024 * 1024;

// Every key the store takes fits the skiplist's length field.
const _: () = assert!(KEY_SIZE_MAX <= crate::kv::skiplist::KEY_LEN_MAX);

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
    /// Expiry times of the keys with a TTL. Invariant 5.
    expiries: Expiries,
    /// Keys deleted because their TTL passed (for INFO; local, not part of the state).
    expired_count: u64,
    entries_hash: u64,
    seed: u64,
    /// Every key by its scan hash (see "Scan order").
    scan_index: ScanIndex,
    /// RANDOMKEY's generator state: local to this replica, it never affects the state.
    random: Cell<u64>,
    /// The index of the last entry that removed a key (see "Modification indexes").
    last_deletion: LogIndex,
    /// Wrapping sum of `modified_hash(k, stamp)` over the stored keys (invariant 6).
    modified_sum: u64,
    /// Exactly-once client sessions (`session.rs`): replicated state, in the state hash.
    sessions: Sessions,
}

/// The low half of the scan hash of the key `id` names in `list`: what `ScanIndex` does not
/// store.
fn scan_lo(list: &SkipList) -> impl Fn(NodeId) -> u32 + '_ {
    move |id| scan_hash(list.key_at(id)) as u32
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
            expiries: Expiries::new(),
            expired_count: 0,
            entries_hash: 0,
            seed,
            scan_index: ScanIndex::new(),
            random: Cell::new(seed | 1),
            last_deletion: LogIndex(0),
            modified_sum: 0,
            sessions: Sessions::new(),
        }
    }

    /// Bytes of record pages the store maps outside the global allocator
    /// (`SkipList::mapped_bytes`): for memory accounting that counts allocations.
    pub fn mapped_bytes(&self) -> usize {
        self.list.mapped_bytes()
    }

    pub fn stats(&self) -> KvStats {
        KvStats {
            keys: self.list.len(),
            data_bytes: self.list.data_bytes(),
            overhead_bytes: self.list.overhead_bytes() + self.scan_index.heap_bytes(),
        }
    }

    /// Lay the skiplist's arena out in key order (see `SkipList::compact`): faster scans and
    /// lookups afterwards, at the cost of an O(n) pause (about 0.1 s per million keys), so the
    /// node calls it when it chooses (e.g. idle, or after a snapshot). Never changes replies,
    /// snapshots or the state hash.
    pub fn compact(&mut self) {
        self.list.compact();
        self.scan_index =
            ScanIndex::from_pairs(self.list.ids().map(|(id, k)| (scan_hash(k), id)).collect());
    }

    /// The largest leader stamp applied so far, ms since the Unix epoch (0 before any).
    pub fn applied_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// The value under `key` (for tests and the node's diagnostics).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.lookup(key)
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
        let mut modified_sum = 0u64;
        let mut it = self.list.iter();
        while let Some((k, _, m)) = it.next_modified() {
            assert!(
                m <= self.applied.0,
                "{k:?} stamped {m} > applied {}",
                self.applied
            );
            modified_sum = modified_sum.wrapping_add(modified_hash(k, m));
        }
        assert_eq!(
            modified_sum, self.modified_sum,
            "incremental modified sum drifted"
        );
        assert_eq!(self.scan_index.len(), self.list.len(), "scan index size");
        self.expiries.check_invariants();
        for (k, at) in self.expiries.iter() {
            assert!(
                self.lookup(k).is_some(),
                "expiry {at} for {k:?}, not stored"
            );
        }
        // Equal sizes, and every pair names a live node with that hash: a bijection, since
        // a node's pair is determined by its id.
        self.scan_index.check_invariants(scan_lo(&self.list));
        for (h, id) in self.scan_index.iter(scan_lo(&self.list)) {
            assert!(self.list.is_live(id), "scan index names dead node {id:?}");
            let k = self.list.key_at(id);
            assert_eq!(scan_hash(k), h, "scan index hash of {k:?}");
        }
    }

    /// Keys with a TTL.
    pub fn expiry_count(&self) -> usize {
        self.expiries.len()
    }

    #[cfg(test)]
    pub(crate) fn test_set_expiry(&mut self, key: &[u8], at_ms: u64) {
        assert!(self.lookup(key).is_some());
        self.expiries.set(key, at_ms);
        self.stamp_ms = self.stamp_ms.max(at_ms / 2);
    }

    #[cfg(test)]
    pub(crate) fn list(&self) -> &SkipList {
        &self.list
    }

    /// Install a state built by the snapshot loader.
    fn replace_state(&mut self, loaded: snapshot::Loaded) {
        let list = loaded.list;
        self.scan_index =
            ScanIndex::from_pairs(list.ids().map(|(id, k)| (scan_hash(k), id)).collect());
        self.list = list;
        self.applied = loaded.applied;
        self.stamp_ms = loaded.stamp_ms;
        self.expiries = loaded.expiries;
        self.entries_hash = loaded.entries_hash;
        self.last_deletion = loaded.last_deletion;
        self.modified_sum = loaded.modified_sum;
        self.sessions = loaded.sessions;
    }

    /// The node that holds `key`, found through the scan index (see "Point lookups").
    fn locate(&self, key: &[u8], hash: u64) -> Option<NodeId> {
        let list = &self.list;
        self.scan_index.find(hash, |id| list.holds(id, key))
    }

    /// The value under `key` and the stamp of its last write.
    fn lookup_modified(&self, key: &[u8]) -> Option<(&[u8], u64)> {
        self.locate(key, scan_hash(key))
            .map(|id| self.list.entry_at(id))
    }

    /// The value under `key`.
    fn lookup(&self, key: &[u8]) -> Option<&[u8]> {
        self.lookup_modified(key).map(|(v, _)| v)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        let hashes = |k: &[u8], v: &[u8], m: u64| (entry_hash(k, v), modified_hash(k, m));
        let scan = scan_hash(key);
        let stamp = self.applied.0;
        self.entries_hash = self.entries_hash.wrapping_add(entry_hash(key, value));
        self.modified_sum = self.modified_sum.wrapping_add(modified_hash(key, stamp));
        if let Some(id) = self.locate(key, scan) {
            let (entry, modified) = self.list.replace_at(id, key, value, stamp, hashes);
            self.entries_hash = self.entries_hash.wrapping_sub(entry);
            self.modified_sum = self.modified_sum.wrapping_sub(modified);
        } else {
            let (old, id) = self.list.insert_with(key, value, stamp, hashes);
            assert!(old.is_none(), "the scan index missed a stored key");
            self.scan_index.insert(scan, id, &scan_lo(&self.list));
        }
    }

    fn delete(&mut self, key: &[u8]) -> bool {
        let removed = self
            .list
            .remove_with(key, |k, v, m| (entry_hash(k, v), modified_hash(k, m)));
        match removed {
            Some(((entry, modified), id)) => {
                self.entries_hash = self.entries_hash.wrapping_sub(entry);
                self.modified_sum = self.modified_sum.wrapping_sub(modified);
                self.scan_index
                    .remove(scan_hash(key), id, &scan_lo(&self.list));
                self.last_deletion = self.applied;
                self.expiries.remove(key);
                true
            }
            None => false,
        }
    }

    /// Delete the keys `cmd` touches whose TTL has passed at apply's "now", so that every
    /// write sees an expired key as absent (INCR starts from 0, SET NX sets, ...). Every
    /// replica does the same at the same entry: the now is the entry's stamp.
    fn purge_expired(&mut self, cmd: &WriteCmd<'_>) {
        if self.expiries.is_empty() {
            return;
        }
        let now = self.stamp_ms;
        let purge = |kv: &mut KvStore, key: &[u8]| {
            if kv.expiries.expired(key, now) {
                kv.delete(key);
                kv.expired_count += 1;
            }
        };
        match cmd {
            WriteCmd::Set { key, .. }
            | WriteCmd::SetNx { key, .. }
            | WriteCmd::IncrBy { key, .. }
            | WriteCmd::Append { key, .. }
            | WriteCmd::Cas { key, .. }
            | WriteCmd::GetDel { key }
            | WriteCmd::SetRange { key, .. }
            | WriteCmd::IncrByFloat { key, .. } => purge(self, key),
            WriteCmd::Del { keys } => keys.iter().for_each(|k| purge(self, k)),
            WriteCmd::MSet { pairs } | WriteCmd::MSetNx { pairs } => {
                pairs.iter().for_each(|(k, _)| purge(self, k))
            }
            WriteCmd::Rename { from, to, .. } | WriteCmd::Copy { from, to, .. } => {
                purge(self, from);
                purge(self, to);
            }
            WriteCmd::Ttl(t) => {
                if let Some(key) = t.key() {
                    purge(self, key)
                }
            }
            WriteCmd::FlushAll | WriteCmd::SessionOpen => {}
        }
    }

    fn apply_write(&mut self, cmd: WriteCmd<'_>) -> Value {
        self.purge_expired(&cmd);
        match cmd {
            WriteCmd::Set { flags, key, value } => {
                self.apply_set(flags, key, value, Ttl::Persist, SetName::Set)
            }
            WriteCmd::SetNx { key, value } => {
                if self.lookup(key).is_some() {
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
                    self.expiries.remove(k);
                }
                Value::ok()
            }
            WriteCmd::IncrBy { key, delta } => self.apply_incrby(key, delta),
            WriteCmd::Append { key, value } => {
                let old = self.lookup(key).unwrap_or_default();
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
                if self.lookup(key) == Some(expected) {
                    // A new value, like SET: the TTL goes.
                    self.put(key, new);
                    self.expiries.remove(key);
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
            WriteCmd::GetDel { key } => match self.lookup(key).map(<[u8]>::to_vec) {
                Some(v) => {
                    self.delete(key);
                    Value::Bulk(v)
                }
                None => Value::Nil,
            },
            WriteCmd::MSetNx { pairs } => {
                if pairs.iter().any(|(k, _)| self.lookup(k).is_some()) {
                    return Value::Integer(0);
                }
                for (k, v) in pairs {
                    self.put(k, v);
                }
                Value::Integer(1)
            }
            WriteCmd::SetRange { key, offset, value } => self.apply_setrange(key, offset, value),
            WriteCmd::IncrByFloat { key, incr } => {
                match crate::kv::float::incr_by_float(self.lookup(key), incr) {
                    Ok(text) => {
                        self.put(key, text.as_bytes());
                        Value::Bulk(text.into_bytes())
                    }
                    Err(e) => e,
                }
            }
            WriteCmd::Rename { from, to, nx } => {
                let Some(v) = self.lookup(from).map(<[u8]>::to_vec) else {
                    return Value::error("ERR no such key");
                };
                if from == to {
                    return if nx { Value::Integer(0) } else { Value::ok() };
                }
                if nx && self.lookup(to).is_some() {
                    return Value::Integer(0);
                }
                // The TTL moves with the value; the destination's own TTL goes.
                let ttl = self.expiries.get(from);
                self.delete(from);
                self.put(to, &v);
                self.set_expiry(to, ttl);
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
                let Some(v) = self.lookup(from).map(<[u8]>::to_vec) else {
                    return Value::Integer(0);
                };
                if !replace && self.lookup(to).is_some() {
                    return Value::Integer(0);
                }
                // The copy has the source's TTL (or none), as in Redis.
                self.put(to, &v);
                self.set_expiry(to, self.expiries.get(from));
                Value::Integer(1)
            }
            WriteCmd::FlushAll => {
                if !self.list.is_empty() {
                    self.last_deletion = self.applied;
                }
                self.list.clear();
                self.scan_index.clear();
                self.expiries.clear();
                self.entries_hash = 0;
                self.modified_sum = 0;
                Value::ok()
            }
            WriteCmd::Ttl(t) => self.apply_ttl(t),
            other => unreachable!("apply_write handles {other:?}"),
        }
    }

    /// An EXEC entry: nothing if a watched key changed (a null array, as Redis answers),
    /// else every item in order, each command's runtime error failing that command alone.
    fn apply_tx(&mut self, t: Tx<'_>) -> Value {
        if t.watches
            .iter()
            .any(|&(key, seen)| self.changed_since(key, seen))
        {
            return Value::NilArray;
        }
        let replies = t
            .items
            .into_iter()
            .map(|item| match item {
                Item::Write(cmd) => self.apply_write(cmd),
                Item::Read(cmd) => self.answer(cmd, self.stamp_ms),
                Item::Reply(v) => v,
            })
            .collect();
        Value::Array(replies)
    }

    /// Whether `key` may have changed since the state at `seen` (see "Modification indexes").
    /// A stored key whose TTL has passed counts as changed: it may have expired since
    /// (conservative; once reclaimed, the deletion index decides).
    fn changed_since(&self, key: &[u8], seen: LogIndex) -> bool {
        match self.lookup_modified(key) {
            Some((_, modified)) => modified > seen.0 || self.expiries.expired(key, self.stamp_ms),
            None => self.last_deletion > seen,
        }
    }

    /// Stamp a stored key as changed by the entry being applied, without rewriting it (its
    /// TTL changed): WATCH sees a TTL change as Redis does.
    fn touch(&mut self, key: &[u8]) {
        if let Some(old) = self.list.set_modified(key, self.applied.0) {
            self.modified_sum = self
                .modified_sum
                .wrapping_sub(modified_hash(key, old))
                .wrapping_add(modified_hash(key, self.applied.0));
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
        if tx::is_exec(data) {
            return match tx::decode(data) {
                Ok(t) => self.in_session(session, |kv| kv.apply_tx(t)),
                Err(e) => Value::error(format!("ERR undecodable entry at index {index}: {e}")),
            };
        }
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
            (session, cmd) => self.in_session(session, |kv| kv.apply_write(cmd)),
        }
    }

    /// Apply through `apply` once per session sequence: a duplicate gets the saved reply.
    fn in_session(
        &mut self,
        session: Option<SessionTag>,
        apply: impl FnOnce(&mut KvStore) -> Value,
    ) -> Value {
        let Some(tag) = session else {
            return apply(self);
        };
        match self.sessions.admit(tag, self.stamp_ms) {
            Admission::Fresh => {
                let reply = apply(self);
                self.sessions.record(tag, &reply);
                reply
            }
            Admission::Duplicate(reply) | Admission::Refused(reply) => reply,
        }
    }

    /// Open sessions, and the bytes of replies they keep for resends (for INFO).
    pub fn session_stats(&self) -> (usize, usize) {
        (self.sessions.len(), self.sessions.saved_bytes())
    }

    /// `SETRANGE`, in Redis's order of checks: an empty value changes nothing (and creates
    /// no key); otherwise the result must fit `VALUE_SIZE_MAX`; the gap is zero-filled.
    fn apply_setrange(&mut self, key: &[u8], offset: u64, value: &[u8]) -> Value {
        let old = self.lookup(key);
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
    /// old value (or nil) whether or not the condition held (Redis 7). When it sets, the
    /// key's TTL becomes `ttl` (`Persist`: none; `Keep`: unchanged; relative: from now).
    fn apply_set(&mut self, flags: u8, key: &[u8], value: &[u8], ttl: Ttl, name: SetName) -> Value {
        let at = match self.absolute(ttl) {
            Ok(at) => at,
            Err(()) => return invalid_expire_time(name.name()),
        };
        // One search for a plain SET (the insert's own); NX, XX and GET look first, once.
        let mut allowed = true;
        let mut old = None;
        if flags & (SET_NX | SET_XX | SET_GET) != 0 {
            let current = self.lookup(key);
            let exists = current.is_some();
            allowed = !(flags & SET_NX != 0 && exists || flags & SET_XX != 0 && !exists);
            old = (flags & SET_GET != 0).then(|| current.map(<[u8]>::to_vec));
        }
        if allowed {
            self.put(key, value);
            if ttl != Ttl::Keep {
                // `put` stamped the key already: no second search to touch it.
                self.expiries_set(key, at);
            }
        }
        match old {
            Some(old) => old.map_or(Value::Nil, Value::Bulk),
            None if allowed => Value::ok(),
            None => Value::Nil,
        }
    }

    /// The absolute expiry `ttl` gives at apply's now: `None` for none (or `Keep`), `Err` when
    /// a relative one overflows (Redis's "invalid expire time").
    fn absolute(&self, ttl: Ttl) -> Result<Option<u64>, ()> {
        match ttl {
            Ttl::Keep | Ttl::Persist => Ok(None),
            Ttl::At(ms) => Ok(Some(ms as u64)),
            Ttl::In(ms) => {
                let now = self.stamp_ms.min(i64::MAX as u64) as i64;
                ms.checked_add(now).map(|at| Some(at as u64)).ok_or(())
            }
        }
    }

    /// Give `key` (stored) the expiry `at`, or none.
    fn set_expiry(&mut self, key: &[u8], at: Option<u64>) {
        self.expiries_set(key, at);
        self.touch(key);
    }

    /// `set_expiry` for a key `put` has just stamped at this index (so `touch` would change
    /// nothing).
    fn expiries_set(&mut self, key: &[u8], at: Option<u64>) {
        match at {
            Some(at) => self.expiries.set(key, at),
            None => self.expiries.remove(key),
        };
    }

    fn apply_ttl(&mut self, cmd: TtlWrite<'_>) -> Value {
        match cmd {
            TtlWrite::Set {
                flags,
                name,
                ttl,
                key,
                value,
            } => self.apply_set(flags, key, value, ttl, name),
            TtlWrite::Expire {
                name,
                conditions,
                when_ms,
                key,
            } => self.apply_expire(name, conditions, when_ms, key),
            TtlWrite::Persist { key } => {
                let had = self.lookup(key).is_some() && self.expiries.remove(key).is_some();
                if had {
                    self.touch(key);
                }
                Value::Integer(i64::from(had))
            }
            TtlWrite::GetEx { ttl, key } => self.apply_getex(ttl, key),
            TtlWrite::Reclaim { keys } => {
                let now = self.stamp_ms;
                let mut deleted = 0;
                for (key, at) in keys {
                    if self.expiries.get(key) == Some(at) && expiry::is_expired(at, now) {
                        self.delete(key);
                        deleted += 1;
                    }
                }
                self.expired_count += deleted;
                Value::Integer(deleted as i64)
            }
        }
    }

    /// EXPIRE and its kin, as Redis 7's `expireGenericCommand`: 0 for a missing key or a
    /// failed NX/XX/GT/LT (no TTL counts as infinite), 1 otherwise; a time not after now
    /// deletes the key.
    fn apply_expire(&mut self, name: ExpireName, conditions: u8, when: i64, key: &[u8]) -> Value {
        let now = self.stamp_ms.min(i64::MAX as u64) as i64;
        let when = if name.relative() {
            match when.checked_add(now) {
                Some(w) => w,
                None => return invalid_expire_time(name.name()),
            }
        } else {
            when
        };
        if self.lookup(key).is_none() {
            return Value::Integer(0);
        }
        let current = self.expiries.get(key).map(|at| at as i64);
        let refused = conditions & EXPIRE_NX != 0 && current.is_some()
            || conditions & EXPIRE_XX != 0 && current.is_none()
            || conditions & EXPIRE_GT != 0 && current.is_none_or(|c| when <= c)
            || conditions & EXPIRE_LT != 0 && current.is_some_and(|c| when >= c);
        if refused {
            return Value::Integer(0);
        }
        if when <= now {
            self.delete(key);
        } else {
            self.expiries.set(key, when as u64);
            self.touch(key);
        }
        Value::Integer(1)
    }

    /// GETEX: the value (nil for a missing key), then the TTL change; an absolute time not
    /// after now deletes the key (Redis 7).
    fn apply_getex(&mut self, ttl: Option<Ttl>, key: &[u8]) -> Value {
        let Some(ttl) = ttl else {
            return self
                .list
                .get(key)
                .map_or(Value::Nil, |v| Value::Bulk(v.to_vec()));
        };
        let at = match self.absolute(ttl) {
            Ok(at) => at,
            Err(()) => return invalid_expire_time("getex"),
        };
        let Some(value) = self.lookup(key).map(<[u8]>::to_vec) else {
            return Value::Nil;
        };
        match (ttl, at) {
            (Ttl::At(_), Some(at)) if at <= self.stamp_ms => {
                self.delete(key);
            }
            _ => self.set_expiry(key, at),
        }
        Value::Bulk(value)
    }

    /// The leader's reclaim entry for keys due at `now_ms` (see `StateMachine::expired_batch`).
    /// At most `keys_max` keys and about `RECLAIM_ENTRY_SIZE_MAX` bytes of them (at least one).
    fn reclaim_entry(&self, now_ms: u64, keys_max: usize) -> Option<Vec<u8>> {
        let mut bytes = 0usize;
        let keys: Vec<(&[u8], u64)> = self
            .expiries
            .due(now_ms)
            .take(keys_max)
            .take_while(|(k, _)| {
                bytes += k.len();
                bytes <= RECLAIM_ENTRY_SIZE_MAX || bytes == k.len()
            })
            .collect();
        if keys.is_empty() {
            return None;
        }
        Some(command::encode_write(&WriteCmd::Ttl(TtlWrite::Reclaim {
            keys,
        })))
    }

    fn apply_incrby(&mut self, key: &[u8], delta: i64) -> Value {
        let current = match self.lookup(key) {
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

    /// The value of `key` unless it is absent or its TTL has passed at `now_ms`.
    fn live(&self, key: &[u8], now_ms: u64) -> Option<&[u8]> {
        let v = self.lookup(key)?;
        (!self.expiries.expired(key, now_ms)).then_some(v)
    }

    /// Keys whose TTL has passed at `now_ms` but that are not reclaimed yet. O(that many).
    pub fn expired_backlog(&self, now_ms: u64) -> usize {
        self.expiries.due(now_ms).count()
    }

    /// Answer a read as of `now_ms`: keys expired by then are absent.
    fn answer(&self, cmd: ReadCmd<'_>, now_ms: u64) -> Value {
        let bulk = |v: Option<&[u8]>| v.map_or(Value::Nil, |v| Value::Bulk(v.to_vec()));
        let live = |k: &[u8]| self.live(k, now_ms);
        match cmd {
            ReadCmd::Get { key } => bulk(live(key)),
            ReadCmd::Exists { keys } => {
                let n = keys.iter().filter(|k| live(k).is_some()).count();
                Value::Integer(n as i64)
            }
            ReadCmd::MGet { keys } => Value::Array(keys.iter().map(|k| bulk(live(k))).collect()),
            ReadCmd::StrLen { key } => Value::Integer(live(key).map_or(0, <[u8]>::len) as i64),
            ReadCmd::Range { start, end, limit } => self.answer_range(start, end, limit, now_ms),
            ReadCmd::DbSize => {
                Value::Integer((self.list.len() - self.expired_backlog(now_ms)) as i64)
            }
            ReadCmd::GetRange { key, start, end } => {
                Value::Bulk(substring(live(key).unwrap_or_default(), start, end).to_vec())
            }
            ReadCmd::Ttl(t) => self.answer_ttl(t.which, t.key, now_ms),
            ReadCmd::Type { key } => Value::Simple(
                if live(key).is_some() {
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
            } => self.answer_scan(cursor, count, pattern, kind, now_ms),
            ReadCmd::Keys { pattern } => self.answer_keys(pattern, now_ms),
            ReadCmd::RandomKey => self.random_key(now_ms),
        }
    }

    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME as Redis 7's `ttlGenericCommand`: -2 for a missing
    /// key, -1 for one without a TTL; seconds are rounded to the nearest.
    fn answer_ttl(&self, which: TtlName, key: &[u8], now_ms: u64) -> Value {
        if self.live(key, now_ms).is_none() {
            return Value::Integer(-2);
        }
        let Some(at) = self.expiries.get(key) else {
            return Value::Integer(-1);
        };
        // Alive, so at >= now; stored expiries are positive i64s.
        let t = if which.absolute() { at } else { at - now_ms } as i64;
        Value::Integer(if which.ms() { t } else { (t + 500) / 1000 })
    }

    /// One SCAN step: examine about `count` keys from `cursor` in scan order (see "Scan
    /// order"), stopping only between two different hashes; reply `[next cursor, keys]`.
    fn answer_scan(
        &self,
        cursor: u64,
        count: u32,
        pattern: Option<&[u8]>,
        kind: TypeFilter,
        now_ms: u64,
    ) -> Value {
        let mut keys = Vec::new();
        let mut next = 0u64;
        let mut last_hash = None;
        let from = self.scan_index.from_hash(cursor, scan_lo(&self.list));
        for (examined, (h, id)) in from.enumerate() {
            if examined >= count as usize && last_hash != Some(h) {
                next = h;
                break;
            }
            last_hash = Some(h);
            let key = self.list.key_at(id);
            let matched = pattern.is_none_or(|p| crate::kv::glob::matches(p, key, false));
            if matched && kind != TypeFilter::Other && !self.expiries.expired(key, now_ms) {
                keys.push(Value::Bulk(key.to_vec()));
            }
        }
        Value::Array(vec![
            Value::Bulk(next.to_string().into_bytes()),
            Value::Array(keys),
        ])
    }

    /// `KEYS`, in key order; refused past `KEYS_KEYS_MAX` keys, since it walks them all.
    fn answer_keys(&self, pattern: &[u8], now_ms: u64) -> Value {
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
            .filter(|(k, _)| !self.expiries.expired(k, now_ms))
            .map(|(k, _)| Value::Bulk(k.to_vec()))
            .collect();
        Value::Array(keys)
    }

    /// A key picked at random in O(log n): the first in scan order at or after a random hash.
    /// (Keys after a wide gap of hashes are a little likelier; Redis is not uniform either.)
    /// Expired keys are skipped: the next live key in scan order (wrapping) is taken.
    fn random_key(&self, now_ms: u64) -> Value {
        let mut x = self.random.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.set(x);
        let pick = self
            .scan_index
            .from_hash(x, scan_lo(&self.list))
            .chain(
                self.scan_index
                    .iter(scan_lo(&self.list))
                    .take_while(|&(h, _)| h < x),
            )
            .map(|(_, id)| self.list.key_at(id))
            .find(|k| !self.expiries.expired(k, now_ms));
        pick.map_or(Value::Nil, |k| Value::Bulk(k.to_vec()))
    }

    /// Flat array `k1 v1 k2 v2 ...` of keys in `[start, end)` (empty `end`: unbounded), at
    /// most `limit` pairs and about `RANGE_REPLY_SIZE_MAX` bytes.
    fn answer_range(&self, start: &[u8], end: &[u8], limit: u32, now_ms: u64) -> Value {
        let end = if end.is_empty() { None } else { Some(end) };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let pairs = self.list.range(start, end);
        let live = pairs.filter(|(k, _)| !self.expiries.expired(k, now_ms));
        for (k, v) in live.take(limit as usize) {
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
        self.query_at(data, self.stamp_ms)
    }

    fn query_at(&self, data: &[u8], now_ms: u64) -> Value {
        if tx::is_watch(data) {
            return match tx::decode_watch(data) {
                Ok(()) => Value::Integer(self.applied.0 as i64),
                Err(e) => Value::error(format!("ERR undecodable query: {e}")),
            };
        }
        match command::decode_read(data) {
            Ok(cmd) => self.answer(cmd, now_ms),
            Err(e) => Value::error(format!("ERR undecodable query: {e}")),
        }
    }

    fn applied_stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    fn expired_batch(&self, now_ms: u64, keys_max: usize) -> Option<Vec<u8>> {
        self.reclaim_entry(now_ms, keys_max)
    }

    fn ttl_stats(&self, now_ms: u64) -> TtlStats {
        TtlStats {
            expired_keys: self.expired_count,
            expires: self.expiries.len(),
            backlog: self.expired_backlog(now_ms),
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64> {
        let state = snapshot::State {
            list: &self.list,
            applied: self.applied,
            stamp_ms: self.stamp_ms,
            expiries: &self.expiries,
            last_deletion: self.last_deletion,
            sessions: &self.sessions,
        };
        snapshot::write(&state, self.state_hash(), w)
    }

    fn load_snapshot(&mut self, r: &mut dyn std::io::Read) -> Result<u64, SnapshotError> {
        let loaded = snapshot::load(self.seed, r)?;
        let hash = loaded.state_hash;
        self.replace_state(loaded);
        debug_assert_eq!(self.state_hash(), hash);
        Ok(hash)
    }

    fn state_hash(&self) -> u64 {
        let extra = ExtraParts {
            stamp_ms: self.stamp_ms,
            expiries_hash: self.expiries.hash(),
            sessions_hash: self.sessions.hash(),
            watch_hash: watch_hash(self.modified_sum, self.last_deletion),
        };
        mix_extra_parts(
            combine_state_hash(self.applied, self.list.len(), self.entries_hash),
            &extra,
        )
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn memory_bytes(&self) -> Option<(usize, usize)> {
        let stats = self.stats();
        Some((stats.data_bytes, stats.overhead_bytes))
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

    /// Point lookups go through the SCAN index ("Point lookups"): random SETs (values whose
    /// records keep their slot and ones that move), DELs, GETs and compactions against a
    /// `BTreeMap`, over short keys and keys past the common prefix plus 8 bytes (whose check
    /// reads the record), with the list's common prefix shrinking on the way.
    #[test]
    fn gets_and_overwrites_found_through_the_scan_index_match_a_model() {
        let mut p = crate::prng::Prng::new(33);
        let kv = &mut KvStore::new(7);
        let mut model = std::collections::BTreeMap::new();
        for step in 0..30_000u32 {
            let n = p.range(0, 700);
            let key = match p.range(0, 4) {
                0 => format!("user:{n}").into_bytes(),
                1 => format!("user:{n:0>40}").into_bytes(),
                2 => format!("u{n}").into_bytes(),
                _ => format!("k{n:015}").into_bytes(),
            };
            match p.range(0, 10) {
                0..=4 => {
                    let mut value = vec![0u8; p.range(0, 300) as usize];
                    p.fill(&mut value);
                    assert_eq!(run(kv, &[b"SET", &key, &value]), Value::ok());
                    model.insert(key, value);
                }
                5 => {
                    let want = i64::from(model.remove(&key).is_some());
                    assert_eq!(run(kv, &[b"DEL", &key]), Value::Integer(want));
                }
                _ => {
                    let want = model.get(&key).map_or(Value::Nil, |v| bulk(v));
                    assert_eq!(run(kv, &[b"GET", &key]), want, "step {step}");
                }
            }
            if step % 5000 == 4999 {
                kv.compact();
                kv.check_invariants();
            }
        }
        kv.check_invariants();
        for (key, value) in &model {
            assert_eq!(kv.get(key), Some(&value[..]));
        }
        assert_eq!(kv.len(), model.len());
    }

    #[test]
    fn scan_returns_every_key_present_throughout_despite_concurrent_writes_and_compaction() {
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
                if p.chance(1, 8) {
                    // Renumbers the skiplist's nodes, which the scan index names.
                    kv.compact();
                    kv.check_invariants();
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

    /// Apply a transaction as EXEC would: `cmds` queued (parse errors as queued error
    /// replies), each key of `watched` with the index its WATCH read saw.
    fn exec(kv: &mut KvStore, watched: &[(&[u8], LogIndex)], cmds: &[&[&[u8]]]) -> Value {
        let mut q = tx::Queue::default();
        for a in cmds {
            let args: Vec<Vec<u8>> = a.iter().map(|x| x.to_vec()).collect();
            match kv.parse(&args).expect("a KV command") {
                Request::Write(p) => q.push(tx::ItemKind::Write, &p),
                Request::Read(p) => q.push(tx::ItemKind::Read, &p),
                Request::Reply(Value::Error(e)) => q.push(tx::ItemKind::Error, e.as_bytes()),
                Request::Reply(v) => panic!("{v:?}"),
            }
        }
        let watches: Vec<(Vec<u8>, LogIndex)> =
            watched.iter().map(|(k, i)| (k.to_vec(), *i)).collect();
        let entry = tx::encode(&watches, &q);
        run(kv, &[b"KVRAFT.EXEC", &entry])
    }

    /// What a WATCH read answers now.
    fn watch(kv: &mut KvStore, key: &[u8]) -> LogIndex {
        match run(kv, &[b"WATCH", key]) {
            Value::Integer(n) => LogIndex(n as u64),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_transaction_applies_in_order_and_a_runtime_error_fails_only_its_command() {
        let kv = &mut KvStore::new(12);
        run(kv, &[b"SET", b"s", b"text"]);
        let got = exec(
            kv,
            &[],
            &[
                &[b"SET", b"a", b"1"],
                &[b"INCR", b"s"],
                &[b"SET", b"k", b"v", b"bogus"],
                &[b"INCRBY", b"a", b"41"],
                &[b"GET", b"a"],
                &[b"MGET", b"a", b"s", b"none"],
            ],
        );
        let want = Value::Array(vec![
            Value::ok(),
            err("ERR value is not an integer or out of range"),
            err("ERR syntax error"),
            Value::Integer(42),
            bulk(b"42"),
            Value::Array(vec![bulk(b"42"), bulk(b"text"), Value::Nil]),
        ]);
        assert_eq!(got, want);
        assert_eq!(exec(kv, &[], &[]), Value::Array(vec![]));
        // Every key the entry wrote carries the entry's index.
        let at = kv.applied_index();
        assert_eq!(kv.list.get_modified(b"a").map(|(_, m)| m), Some(at.0 - 1));
        kv.check_invariants();
    }

    #[test]
    fn a_watched_key_written_after_its_watch_aborts_exec_with_nothing_applied() {
        let kv = &mut KvStore::new(13);
        run(kv, &[b"SET", b"w", b"one"]);
        run(kv, &[b"SET", b"other", b"1"]);
        let seen = watch(kv, b"w");
        // Writes to other keys, failed writes and reads do not count.
        run(kv, &[b"SET", b"other", b"2"]);
        run(kv, &[b"SET", b"w", b"x", b"NX"]);
        run(kv, &[b"INCR", b"w"]);
        run(kv, &[b"DEL", b"never"]);
        let ok = exec(kv, &[(b"w", seen)], &[&[b"SET", b"out", b"1"]]);
        assert_eq!(ok, Value::Array(vec![Value::ok()]));
        // Rewriting the same value counts, as in Redis.
        let seen = watch(kv, b"w");
        run(kv, &[b"SET", b"w", b"one"]);
        let aborted = exec(kv, &[(b"w", seen)], &[&[b"SET", b"out", b"2"]]);
        assert_eq!(aborted, Value::NilArray);
        assert_eq!(run(kv, &[b"GET", b"out"]), bulk(b"1"), "nothing applied");
        // A watch taken before a transaction that wrote the key is broken by it.
        let seen = watch(kv, b"w");
        exec(kv, &[], &[&[b"APPEND", b"w", b"z"]]);
        assert_eq!(exec(kv, &[(b"w", seen)], &[]), Value::NilArray);
        kv.check_invariants();
    }

    #[test]
    fn deletions_after_a_watch_break_it_whether_the_key_existed_or_not() {
        let kv = &mut KvStore::new(14);
        run(kv, &[b"SET", b"gone", b"1"]);
        let live = watch(kv, b"gone");
        run(kv, &[b"DEL", b"gone"]);
        assert_eq!(exec(kv, &[(b"gone", live)], &[]), Value::NilArray);
        // Absent at WATCH, created and deleted since: changed.
        let absent = watch(kv, b"ghost");
        run(kv, &[b"SET", b"ghost", b"1"]);
        run(kv, &[b"GETDEL", b"ghost"]);
        assert_eq!(exec(kv, &[(b"ghost", absent)], &[]), Value::NilArray);
        // Absent at WATCH and untouched: not changed (a DEL that removed nothing is no change).
        let absent = watch(kv, b"ghost");
        run(kv, &[b"DEL", b"ghost"]);
        run(kv, &[b"FLUSHALL"]);
        assert_eq!(exec(kv, &[(b"ghost", absent)], &[]), Value::Array(vec![]));
        // RENAME removes its source; FLUSHALL of a non-empty store removes everything.
        run(kv, &[b"SET", b"a", b"1"]);
        let seen = watch(kv, b"a");
        run(kv, &[b"RENAME", b"a", b"b"]);
        assert_eq!(exec(kv, &[(b"a", seen)], &[]), Value::NilArray);
        let seen = watch(kv, b"c");
        run(kv, &[b"FLUSHALL"]);
        assert_eq!(exec(kv, &[(b"c", seen)], &[]), Value::NilArray);
        kv.check_invariants();
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

    /// Run one command at leader time `now`: a write is applied in an entry stamped `now`,
    /// a read is answered as of `now`.
    fn run_at(kv: &mut KvStore, now: u64, args: &[&[u8]]) -> Value {
        use crate::kv::envelope::{wrap, Envelope};
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
        match kv.parse(&args).expect("a KV command") {
            Request::Write(p) => {
                let env = Envelope {
                    stamp_ms: now,
                    session: None,
                };
                let index = kv.applied_index().next();
                kv.apply(index, &wrap(&env, &p))
            }
            Request::Read(q) => kv.query_at(&q, now),
            Request::Reply(v) => v,
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_key_set_with_px_lives_until_its_expiry_and_is_gone_after() {
        let kv = &mut KvStore::new(20);
        assert_eq!(
            run_at(kv, T0, &[b"SET", b"k", b"v", b"PX", b"100"]),
            Value::ok()
        );
        assert_eq!(run_at(kv, T0 + 100, &[b"GET", b"k"]), bulk(b"v"));
        assert_eq!(run_at(kv, T0 + 100, &[b"PTTL", b"k"]), Value::Integer(0));
        assert_eq!(run_at(kv, T0 + 40, &[b"PTTL", b"k"]), Value::Integer(60));
        assert_eq!(run_at(kv, T0 + 101, &[b"GET", b"k"]), Value::Nil);
        assert_eq!(run_at(kv, T0 + 101, &[b"TTL", b"k"]), Value::Integer(-2));
        assert_eq!(run_at(kv, T0 + 101, &[b"EXISTS", b"k"]), Value::Integer(0));
        assert_eq!(run_at(kv, T0 + 101, &[b"DBSIZE"]), Value::Integer(0));
        assert_eq!(
            run_at(kv, T0 + 101, &[b"TYPE", b"k"]),
            Value::Simple("none".into())
        );
        assert_eq!(run_at(kv, T0 + 101, &[b"STRLEN", b"k"]), Value::Integer(0));
        assert_eq!(
            run_at(kv, T0 + 101, &[b"MGET", b"k"]),
            Value::Array(vec![Value::Nil])
        );
        assert_eq!(run_at(kv, T0 + 101, &[b"KEYS", b"*"]), Value::Array(vec![]));
        assert_eq!(run_at(kv, T0 + 101, &[b"RANDOMKEY"]), Value::Nil);
        assert_eq!(
            run_at(kv, T0 + 101, &[b"RANGE", b"", b""]),
            Value::Array(vec![])
        );
        let scan = run_at(kv, T0 + 101, &[b"SCAN", b"0"]);
        assert_eq!(scan, Value::Array(vec![bulk(b"0"), Value::Array(vec![])]));
        // Still stored until reclaimed: the backlog counts it.
        assert_eq!(kv.ttl_stats(T0 + 101).backlog, 1);
        assert_eq!(kv.ttl_stats(T0 + 100).backlog, 0);
        kv.check_invariants();
    }

    #[test]
    fn ttl_pttl_and_expiretime_answer_like_redis() {
        let kv = &mut KvStore::new(21);
        assert_eq!(run_at(kv, T0, &[b"TTL", b"nope"]), Value::Integer(-2));
        run_at(kv, T0, &[b"SET", b"p", b"v"]);
        for cmd in [&b"TTL"[..], b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"] {
            assert_eq!(run_at(kv, T0, &[cmd, b"p"]), Value::Integer(-1));
            assert_eq!(run_at(kv, T0, &[cmd, b"nope"]), Value::Integer(-2));
        }
        run_at(kv, T0, &[b"SET", b"k", b"v", b"EX", b"10"]);
        assert_eq!(run_at(kv, T0 + 1, &[b"PTTL", b"k"]), Value::Integer(9_999));
        // Seconds are rounded to the nearest.
        assert_eq!(run_at(kv, T0 + 1, &[b"TTL", b"k"]), Value::Integer(10));
        assert_eq!(run_at(kv, T0 + 600, &[b"TTL", b"k"]), Value::Integer(9));
        let at = T0 + 10_000;
        assert_eq!(
            run_at(kv, T0 + 5, &[b"PEXPIRETIME", b"k"]),
            Value::Integer(at as i64)
        );
        let secs = (at as i64 + 500) / 1000;
        assert_eq!(
            run_at(kv, T0 + 5, &[b"EXPIRETIME", b"k"]),
            Value::Integer(secs)
        );
        let at_s = (T0 / 1000 + 50).to_string();
        run_at(kv, T0, &[b"SET", b"a", b"v", b"EXAT", at_s.as_bytes()]);
        assert_eq!(run_at(kv, T0, &[b"TTL", b"a"]), Value::Integer(50));
        let at_ms = (T0 + 70).to_string();
        run_at(kv, T0, &[b"SET", b"b", b"v", b"PXAT", at_ms.as_bytes()]);
        assert_eq!(run_at(kv, T0 + 20, &[b"PTTL", b"b"]), Value::Integer(50));
        kv.check_invariants();
    }

    #[test]
    fn relative_ttls_start_at_the_entry_stamp_and_never_at_a_replica_clock() {
        // The same entries on two replicas give the same expiry, whatever the reader's now.
        let (a, b) = (&mut KvStore::new(1), &mut KvStore::new(2));
        for kv in [&mut *a, &mut *b] {
            run_at(kv, T0, &[b"SET", b"k", b"v", b"EX", b"5"]);
            run_at(kv, T0 - 1000, &[b"PEXPIRE", b"j", b"5"]); // stamp goes no lower
            run_at(kv, T0 + 7, &[b"SETEX", b"s", b"1", b"v"]);
        }
        assert_eq!(a.state_hash(), b.state_hash());
        assert_eq!(
            run_at(a, 0, &[b"PEXPIRETIME", b"k"]),
            Value::Integer(T0 as i64 + 5000)
        );
        assert_eq!(
            run_at(b, 0, &[b"PEXPIRETIME", b"s"]),
            Value::Integer(T0 as i64 + 1007)
        );
        assert_eq!(a.applied_stamp_ms(), T0 + 7);
    }

    #[test]
    fn set_drops_the_ttl_unless_keepttl_and_counters_and_append_keep_it() {
        let kv = &mut KvStore::new(22);
        let pttl = |kv: &mut KvStore, k: &[u8]| run_at(kv, T0, &[b"PTTL", k]);
        run_at(kv, T0, &[b"SET", b"k", b"v", b"PX", b"1000"]);
        assert_eq!(
            run_at(kv, T0, &[b"SET", b"k", b"w", b"KEEPTTL"]),
            Value::ok()
        );
        assert_eq!(pttl(kv, b"k"), Value::Integer(1000));
        assert_eq!(run_at(kv, T0, &[b"APPEND", b"k", b"x"]), Value::Integer(2));
        assert_eq!(
            run_at(kv, T0, &[b"SETRANGE", b"k", b"0", b"y"]),
            Value::Integer(2)
        );
        assert_eq!(pttl(kv, b"k"), Value::Integer(1000));
        run_at(kv, T0, &[b"SET", b"k", b"v"]);
        assert_eq!(pttl(kv, b"k"), Value::Integer(-1));
        run_at(kv, T0, &[b"SET", b"n", b"1", b"PX", b"1000"]);
        assert_eq!(run_at(kv, T0, &[b"INCR", b"n"]), Value::Integer(2));
        assert_eq!(
            run_at(kv, T0, &[b"INCRBYFLOAT", b"n", b"1.5"]),
            bulk(b"3.5")
        );
        assert_eq!(pttl(kv, b"n"), Value::Integer(1000));
        // A SET whose NX fails leaves the TTL alone; GETSET and MSET drop it.
        assert_eq!(run_at(kv, T0, &[b"SET", b"n", b"x", b"NX"]), Value::Nil);
        assert_eq!(pttl(kv, b"n"), Value::Integer(1000));
        assert_eq!(run_at(kv, T0, &[b"GETSET", b"n", b"x"]), bulk(b"3.5"));
        assert_eq!(pttl(kv, b"n"), Value::Integer(-1));
        run_at(kv, T0, &[b"SET", b"m", b"1", b"PX", b"1000"]);
        run_at(kv, T0, &[b"MSET", b"m", b"2"]);
        assert_eq!(pttl(kv, b"m"), Value::Integer(-1));
        run_at(kv, T0, &[b"SET", b"c", b"1", b"PX", b"1000"]);
        run_at(kv, T0, &[b"CAS", b"c", b"1", b"2"]);
        assert_eq!(pttl(kv, b"c"), Value::Integer(-1));
        kv.check_invariants();
    }

    #[test]
    fn writes_see_an_expired_key_as_absent() {
        let kv = &mut KvStore::new(23);
        let cases: [(&[&[u8]], Value); 11] = [
            (&[b"INCR", b"k"], Value::Integer(1)),
            (&[b"APPEND", b"k", b"new"], Value::Integer(3)),
            (&[b"SET", b"k", b"2", b"NX"], Value::ok()),
            (&[b"SET", b"k", b"2", b"GET"], Value::Nil),
            (&[b"SET", b"k", b"2", b"XX"], Value::Nil),
            (&[b"DEL", b"k"], Value::Integer(0)),
            (&[b"RENAME", b"k", b"k2"], err("ERR no such key")),
            (&[b"EXPIRE", b"k", b"100"], Value::Integer(0)),
            (&[b"PERSIST", b"k"], Value::Integer(0)),
            (&[b"GETEX", b"k", b"PERSIST"], Value::Nil),
            (&[b"GETDEL", b"k"], Value::Nil),
        ];
        // Stamps only grow: each case sets at t and writes at t + 11.
        for (i, (args, want)) in cases.iter().enumerate() {
            let t = T0 + 100 * i as u64;
            run_at(kv, t, &[b"DEL", b"k"]);
            run_at(kv, t, &[b"SET", b"k", b"41", b"PX", b"10"]);
            assert_eq!(&run_at(kv, t + 11, args), want, "{args:?}");
            // What a write leaves has no TTL from before.
            assert!(
                kv.expiries.get(b"k").is_none_or(|at| at > t + 11),
                "{args:?}"
            );
        }
        assert_eq!(kv.ttl_stats(T0).expired_keys, 11);
        kv.check_invariants();
    }

    #[test]
    fn expire_conditions_follow_redis_7() {
        let kv = &mut KvStore::new(24);
        let at = |kv: &mut KvStore| run_at(kv, T0, &[b"PEXPIRETIME", b"k"]);
        assert_eq!(run_at(kv, T0, &[b"EXPIRE", b"k", b"10"]), Value::Integer(0));
        run_at(kv, T0, &[b"SET", b"k", b"v"]);
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"100", b"XX"]),
            Value::Integer(0)
        );
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"100", b"GT"]),
            Value::Integer(0)
        );
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"100", b"LT"]),
            Value::Integer(1)
        );
        assert_eq!(at(kv), Value::Integer(T0 as i64 + 100));
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"200", b"NX"]),
            Value::Integer(0)
        );
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"200", b"LT"]),
            Value::Integer(0)
        );
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"200", b"xx", b"gt"]),
            Value::Integer(1)
        );
        assert_eq!(at(kv), Value::Integer(T0 as i64 + 200));
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIRE", b"k", b"200", b"GT"]),
            Value::Integer(0)
        );
        let t = (T0 + 300).to_string();
        assert_eq!(
            run_at(kv, T0, &[b"PEXPIREAT", b"k", t.as_bytes()]),
            Value::Integer(1)
        );
        let t = (T0 / 1000 + 9).to_string();
        assert_eq!(
            run_at(kv, T0, &[b"EXPIREAT", b"k", t.as_bytes()]),
            Value::Integer(1)
        );
        assert_eq!(at(kv), Value::Integer(T0 as i64 + 9000));
        assert_eq!(run_at(kv, T0, &[b"PERSIST", b"k"]), Value::Integer(1));
        assert_eq!(run_at(kv, T0, &[b"PERSIST", b"k"]), Value::Integer(0));
        // A time not after now deletes the key at once.
        assert_eq!(run_at(kv, T0, &[b"EXPIRE", b"k", b"-5"]), Value::Integer(1));
        assert_eq!(run_at(kv, T0, &[b"EXISTS", b"k"]), Value::Integer(0));
        run_at(kv, T0, &[b"SET", b"k", b"v"]);
        assert_eq!(run_at(kv, T0, &[b"PEXPIRE", b"k", b"0"]), Value::Integer(1));
        assert_eq!(run_at(kv, T0, &[b"EXISTS", b"k"]), Value::Integer(0));
        assert_eq!(kv.expiry_count(), 0);
        // An overflow is found at apply, where the stamp is added.
        run_at(kv, T0, &[b"SET", b"k", b"v"]);
        let big = i64::MAX.to_string();
        let e = err("ERR invalid expire time in 'pexpire' command");
        assert_eq!(run_at(kv, T0, &[b"PEXPIRE", b"k", big.as_bytes()]), e);
        let e = err("ERR invalid expire time in 'set' command");
        assert_eq!(
            run_at(kv, T0, &[b"SET", b"k", b"v", b"PX", big.as_bytes()]),
            e
        );
        kv.check_invariants();
    }

    #[test]
    fn ttl_option_errors_are_redis_7s() {
        let kv = &mut KvStore::new(25);
        let syntax = err("ERR syntax error");
        let not_int = err("ERR value is not an integer or out of range");
        for args in [
            &[&b"SET"[..], b"k", b"v", b"EX"][..],
            &[b"SET", b"k", b"v", b"EX", b"1", b"PX", b"1"],
            &[b"SET", b"k", b"v", b"EX", b"1", b"KEEPTTL"],
            &[b"SET", b"k", b"v", b"KEEPTTL", b"PX", b"1"],
            &[b"SET", b"k", b"v", b"EX", b"abc", b"bogus"],
            &[b"GETEX", b"k", b"PERSIST", b"EX", b"1"],
            &[b"GETEX", b"k", b"EX", b"1", b"PERSIST"],
            &[b"GETEX", b"k", b"KEEPTTL"],
            &[b"GETEX", b"k", b"EX"],
        ] {
            assert_eq!(run_at(kv, T0, args), syntax, "{args:?}");
        }
        assert_eq!(
            run_at(kv, T0, &[b"SET", b"k", b"v", b"EX", b"1.5"]),
            not_int
        );
        assert_eq!(run_at(kv, T0, &[b"SETEX", b"k", b"x", b"v"]), not_int);
        assert_eq!(run_at(kv, T0, &[b"EXPIRE", b"k", b"x"]), not_int);
        for (args, name) in [
            (&[&b"SET"[..], b"k", b"v", b"EX", b"0"][..], "set"),
            (&[b"SET", b"k", b"v", b"PXAT", b"-1"], "set"),
            (&[b"SET", b"k", b"v", b"EX", b"9223372036854776"], "set"),
            (&[b"SETEX", b"k", b"0", b"v"], "setex"),
            (&[b"PSETEX", b"k", b"-3", b"v"], "psetex"),
            (&[b"GETEX", b"k", b"PX", b"0"], "getex"),
            (&[b"EXPIRE", b"k", b"9223372036854776"], "expire"),
        ] {
            let want = err(&format!("ERR invalid expire time in '{name}' command"));
            assert_eq!(run_at(kv, T0, args), want, "{args:?}");
        }
        assert_eq!(
            run_at(kv, T0, &[b"EXPIRE", b"k", b"1", b"NX", b"XX"]),
            err("ERR NX and XX, GT or LT options at the same time are not compatible")
        );
        assert_eq!(
            run_at(kv, T0, &[b"EXPIRE", b"k", b"1", b"GT", b"LT"]),
            err("ERR GT and LT options at the same time are not compatible")
        );
        assert_eq!(
            run_at(kv, T0, &[b"EXPIRE", b"k", b"1", b"Bogus"]),
            err("ERR Unsupported option Bogus")
        );
        for (args, name) in [
            (&[&b"SETEX"[..], b"k", b"1"][..], "setex"),
            (&[b"EXPIRE", b"k"], "expire"),
            (&[b"TTL"], "ttl"),
            (&[b"PERSIST", b"a", b"b"], "persist"),
            (&[b"GETEX"], "getex"),
        ] {
            let want = err(&format!(
                "ERR wrong number of arguments for '{name}' command"
            ));
            assert_eq!(run_at(kv, T0, args), want);
        }
        assert_eq!(kv.len(), 0, "no error wrote anything");
    }

    #[test]
    fn getex_returns_the_value_and_changes_the_ttl() {
        let kv = &mut KvStore::new(26);
        assert_eq!(run_at(kv, T0, &[b"GETEX", b"k", b"EX", b"1"]), Value::Nil);
        assert_eq!(kv.expiry_count(), 0);
        run_at(kv, T0, &[b"SET", b"k", b"v"]);
        assert_eq!(run_at(kv, T0, &[b"GETEX", b"k"]), bulk(b"v"));
        assert_eq!(run_at(kv, T0, &[b"GETEX", b"k", b"PX", b"50"]), bulk(b"v"));
        assert_eq!(run_at(kv, T0, &[b"PTTL", b"k"]), Value::Integer(50));
        assert_eq!(run_at(kv, T0, &[b"GETEX", b"k", b"PERSIST"]), bulk(b"v"));
        assert_eq!(run_at(kv, T0, &[b"PTTL", b"k"]), Value::Integer(-1));
        let past = (T0 - 1).to_string();
        assert_eq!(
            run_at(kv, T0, &[b"GETEX", b"k", b"PXAT", past.as_bytes()]),
            bulk(b"v")
        );
        assert_eq!(run_at(kv, T0, &[b"EXISTS", b"k"]), Value::Integer(0));
        assert_eq!(kv.len(), 0);
        kv.check_invariants();
    }

    #[test]
    fn del_rename_copy_and_flushall_treat_the_ttl_as_redis_does() {
        let kv = &mut KvStore::new(27);
        let pttl = |kv: &mut KvStore, k: &[u8]| run_at(kv, T0, &[b"PTTL", k]);
        run_at(kv, T0, &[b"SET", b"a", b"1", b"PX", b"500"]);
        run_at(kv, T0, &[b"SET", b"b", b"2", b"PX", b"900"]);
        assert_eq!(run_at(kv, T0, &[b"RENAME", b"a", b"b"]), Value::ok());
        assert_eq!(pttl(kv, b"b"), Value::Integer(500), "the TTL moves");
        run_at(kv, T0, &[b"SET", b"c", b"3"]);
        run_at(kv, T0, &[b"RENAME", b"c", b"b"]);
        assert_eq!(
            pttl(kv, b"b"),
            Value::Integer(-1),
            "the destination's TTL goes"
        );
        run_at(kv, T0, &[b"PEXPIRE", b"b", b"700"]);
        assert_eq!(run_at(kv, T0, &[b"COPY", b"b", b"d"]), Value::Integer(1));
        assert_eq!(pttl(kv, b"d"), Value::Integer(700));
        run_at(kv, T0, &[b"SET", b"e", b"5"]);
        assert_eq!(
            run_at(kv, T0, &[b"COPY", b"e", b"d", b"REPLACE"]),
            Value::Integer(1)
        );
        assert_eq!(pttl(kv, b"d"), Value::Integer(-1));
        assert_eq!(run_at(kv, T0, &[b"DEL", b"b"]), Value::Integer(1));
        run_at(kv, T0, &[b"SET", b"b", b"x"]);
        assert_eq!(
            pttl(kv, b"b"),
            Value::Integer(-1),
            "a new key has no old TTL"
        );
        run_at(kv, T0, &[b"PEXPIRE", b"b", b"700"]);
        run_at(kv, T0, &[b"FLUSHALL"]);
        assert_eq!(kv.expiry_count(), 0);
        kv.check_invariants();
    }

    #[test]
    fn reclaim_deletes_only_keys_whose_expiry_is_unchanged_and_past() {
        let kv = &mut KvStore::new(28);
        for k in [&b"a"[..], b"b", b"c", b"d"] {
            run_at(kv, T0, &[b"SET", k, b"v", b"PX", b"10"]);
        }
        run_at(kv, T0, &[b"SET", b"late", b"v", b"PX", b"1000"]);
        let now = T0 + 11;
        assert_eq!(kv.expired_batch(T0 + 10, 100), None, "nothing due yet");
        let batch = kv.expired_batch(now, 3).expect("due keys");
        let batch2 = kv.expired_batch(now, 100).expect("due keys");
        // Before the batches apply, a client gives b a new TTL and persists c.
        run_at(kv, T0, &[b"PEXPIRE", b"b", b"5000"]);
        run_at(kv, T0, &[b"PERSIST", b"c"]);
        let index = kv.applied_index().next();
        let env = crate::kv::envelope::Envelope {
            stamp_ms: now,
            session: None,
        };
        let reply = kv.apply(index, &crate::kv::envelope::wrap(&env, &batch));
        assert_eq!(reply, Value::Integer(1), "only a of a, b, c");
        let reply = kv.apply(index.next(), &crate::kv::envelope::wrap(&env, &batch2));
        assert_eq!(reply, Value::Integer(1), "d; a is gone already");
        let mut left: Vec<_> = kv.list().iter().map(|(k, _)| k.to_vec()).collect();
        left.sort();
        assert_eq!(left, vec![b"b".to_vec(), b"c".to_vec(), b"late".to_vec()]);
        assert_eq!(
            kv.ttl_stats(now),
            TtlStats {
                expired_keys: 2,
                expires: 2,
                backlog: 0
            }
        );
        kv.check_invariants();
    }

    #[test]
    fn a_reclaim_entry_is_bounded_by_keys_and_bytes_and_takes_the_earliest() {
        let kv = &mut KvStore::new(29);
        let big = vec![b'k'; crate::limits::KEY_SIZE_MAX - 1];
        for i in 0..10u8 {
            let mut k = big.clone();
            k.push(i);
            run_at(kv, T0, &[b"SET", &k, b"v", b"PX", &[b'1' + i]]);
        }
        run_at(kv, T0, &[b"SET", b"small", b"v", b"PX", b"1"]);
        let keys = |p: Vec<u8>| match command::decode_write(&p) {
            Ok(WriteCmd::Ttl(TtlWrite::Reclaim { keys })) => keys
                .iter()
                .map(|(k, at)| (k.len(), *at))
                .collect::<Vec<_>>(),
            x => panic!("{x:?}"),
        };
        let now = T0 + 100;
        let got = keys(kv.expired_batch(now, 2).unwrap());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, T0 + 1, "earliest first");
        let got = keys(kv.expired_batch(now, 100).unwrap());
        let bytes: usize = got.iter().map(|(n, _)| n).sum();
        assert!(
            got.len() < 11 && bytes <= RECLAIM_ENTRY_SIZE_MAX,
            "{} keys",
            got.len()
        );
        assert_eq!(
            got.len(),
            RECLAIM_ENTRY_SIZE_MAX / crate::limits::KEY_SIZE_MAX
        );
    }

    #[test]
    fn ttls_set_by_commands_survive_a_snapshot_and_answer_alike_on_the_copy() {
        let kv = &mut KvStore::new(30);
        run_at(kv, T0, &[b"SET", b"a", b"1", b"PX", b"500"]);
        run_at(kv, T0 + 10, &[b"SET", b"b", b"2"]);
        run_at(kv, T0 + 20, &[b"EXPIRE", b"b", b"9"]);
        run_at(kv, T0 + 30, &[b"SET", b"c", b"3", b"PXAT", b"1"]);
        let mut snap = Vec::new();
        let h = kv.write_snapshot(&mut snap).unwrap();
        let copy = &mut KvStore::new(31);
        assert_eq!(copy.load_snapshot(&mut snap.as_slice()).unwrap(), h);
        assert_eq!(copy.applied_stamp_ms(), T0 + 30);
        for now in [T0 + 40, T0 + 600, T0 + 10_000] {
            for cmd in [&b"PTTL"[..], b"PEXPIRETIME", b"GET"] {
                for key in [&b"a"[..], b"b", b"c"] {
                    let want = run_at(kv, now, &[cmd, key]);
                    assert_eq!(
                        run_at(copy, now, &[cmd, key]),
                        want,
                        "{cmd:?} {key:?} at {now}"
                    );
                }
            }
            assert_eq!(
                run_at(copy, now, &[b"DBSIZE"]),
                run_at(kv, now, &[b"DBSIZE"])
            );
        }
        // The same reclaim entry applies alike on both.
        let batch = kv.expired_batch(T0 + 10_000, 100).unwrap();
        assert_eq!(copy.expired_batch(T0 + 10_000, 100).unwrap(), batch);
        copy.check_invariants();
    }

    #[test]
    fn ttl_commands_round_trip_through_their_encoding() {
        for a in [
            &[&b"SET"[..], b"k", b"v", b"EX", b"5", b"NX", b"GET"][..],
            &[b"set", b"k", b"v", b"keepttl", b"xx"],
            &[b"SET", b"k", b"v", b"PXAT", b"123456"],
            &[b"SETEX", b"k", b"5", b"v"],
            &[b"PSETEX", b"k", b"5", b"v"],
            &[b"EXPIRE", b"k", b"-5", b"XX", b"GT"],
            &[b"PEXPIREAT", b"k", b"5", b"lt"],
            &[b"PERSIST", b"k"],
            &[b"GETEX", b"k"],
            &[b"GETEX", b"k", b"EXAT", b"7"],
            &[b"GETEX", b"k", b"persist"],
        ] {
            let p = write_payload(a);
            let cmd = command::decode_write(&p).expect("decodes");
            assert_eq!(command::encode_write(&cmd), p, "{a:?}");
            for cut in 0..p.len() {
                assert!(
                    command::decode_write(&p[..cut]).is_err(),
                    "{a:?} cut at {cut}"
                );
            }
        }
        let kv = &mut KvStore::new(1);
        run_at(kv, T0, &[b"SET", b"k", b"v", b"PX", b"1"]);
        let p = kv.expired_batch(T0 + 2, 10).unwrap();
        let cmd = command::decode_write(&p).expect("decodes");
        assert_eq!(command::encode_write(&cmd), p);
        for cut in 0..p.len() {
            assert!(
                command::decode_write(&p[..cut]).is_err(),
                "reclaim cut at {cut}"
            );
        }
        for which in [&b"TTL"[..], b"PTTL", b"EXPIRETIME", b"PEXPIRETIME"] {
            let args = vec![which.to_vec(), b"k".to_vec()];
            let Some(Request::Read(q)) = command::parse(&args) else {
                panic!("{which:?}")
            };
            let cmd = command::decode_read(&q).expect("decodes");
            assert_eq!(command::encode_read(&cmd), q);
        }
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
}
