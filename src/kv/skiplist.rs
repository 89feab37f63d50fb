//! An ordered map from byte strings to byte strings: a skiplist in an arena, with index links.
//!
//! Owns the ordered storage of the KV state machine. Knows nothing of commands, Raft or files.
//!
//! # Layout
//!
//! Nodes live in one `Vec<Node>`; a link is a `u32` index into it. Node 0 is the head: it has
//! no key, and nothing ever links to it, so index 0 doubles as "nil". A node's key and value
//! live in one record in `records` (`records.rs`: size-classed pages of our own, no malloc
//! header, 8-byte rounding): `modified ++ key ++ value`, where `modified` is the caller's
//! 8-byte stamp (little-endian; the store keeps the log index of the entry that last wrote the
//! key there, for WATCH), which the list only stores. Inline, the node holds the record's
//! 4-byte handle, `word`, the 8 key bytes that follow the list's common prefix (below),
//! big-endian (as two `u32`s, so the node aligns to 4), so that most comparisons never touch
//! the record (a cache miss), the key's length (with the height in its top byte), the
//! value's length and its level-0 link `next0`: 28 bytes. Measured (issue 16, a 3-node
//! cluster loaded by `redis-benchmark -t set -n 1000000 -r 1000000 -d 256`, 632k keys, the
//! log compacted to about 10k entries, RssAnon per key on the leader): a record in its own
//! `Box<[u8]>` took a 288-byte glibc chunk and a 40-byte node, 367 B per key in all; here
//! 280 + 28.
//! A replaced value that rounds to the same slot is overwritten in place.
//!
//! The express lanes (levels `1..height`) live apart, in `upper: Vec<u32>`. A node of height
//! h >= 2 owns a span there of h + 2 slots: `[node, word_hi, word_lo, link_1 .. link_{h-1}]`,
//! and its upper links point at other nodes' *spans*. A search therefore runs the upper levels
//! entirely inside this small, dense arena (a quarter of the nodes, ~4 bytes per key) and only
//! touches `nodes` for the last steps at level 0. The head's span is at offset 0 (so span 0
//! doubles as "nil" too); height-1 nodes (three quarters of them) have no span.
//!
//! # The common prefix
//!
//! Keys often share a long prefix (compare.py's `k000000000123456`, `user:...`), and the first
//! 8 bytes of such keys decide nothing. So the list keeps `common`, up to `COMMON_MAX` bytes
//! that every live key starts with, and inline words hold the key bytes
//! `[common.len(), common.len() + 8)`. A search key that does not start with `common` sorts
//! below or above every stored key, which one comparison with `common` tells. The words of two
//! keys agree exactly when their bytes over that window agree (zero padding past the end), so
//! equal words with either key ending inside the window are decided by the lengths alone: for
//! keys of up to `common.len() + 8` bytes a search reads no record at all.
//!
//! `common` is set from the first key stored into an empty list and only shrinks, when a key
//! that does not start with it is inserted: every word is then recomputed (O(n), but at most
//! `COMMON_MAX` times between two moments the list is empty). A shrink by fewer than 8 bytes
//! shifts the known bytes of `common` into the words without reading a record; a longer one
//! reads every key (at most `COMMON_MAX / 8` times). `Builder::finish` sets `common` from the
//! first and last keys (what every key in between shares too).
//!
//! Measured (cachegrind, `benches/kv.rs` with 100k compare.py keys, 100k inserts and 100k gets
//! in random order): per search 1,569 -> 1,050 instructions and 64.9 -> 19.4 L1 data read
//! misses, against the first-8-bytes prefix it replaced.
//!
//! Heights are drawn from a seeded `Prng` with p = 1/4, capped at `HEIGHT_MAX`. Removed nodes
//! go on a free list threaded through `next0`, their spans on a free list per height threaded
//! through the span's first slot; both are reused first. `compact` renumbers the arena in key
//! order.
//!
//! # Invariants (checked by `check_invariants`)
//!
//! 1. The level-0 chain from the head visits every live node exactly once, in strictly
//!    increasing key order (bytewise, shorter-is-less), and its length is `len`.
//! 2. For every level `l >= 1`, the level-`l` chain of spans from the head's span, mapped to
//!    their nodes, is the subsequence of the level-0 chain made of exactly the nodes whose
//!    height is `> l`.
//! 3. `1 <= height <= level <= HEIGHT_MAX` for every live node; the head's links at levels
//!    `>= level` are nil.
//! 4. Every live key starts with `common` (at most `COMMON_MAX` bytes); `word` (in the node,
//!    and in its span) equals the key bytes `[common.len(), common.len() + 8)`, big-endian,
//!    zero-padded; a span's `node` slot names its owner.
//! 5. Every node is exactly one of: the head, live, or on the free list (with no record);
//!    a live node's record is `RECORD_HEADER + key_len + value_len` bytes, each live record
//!    is held by one node (and `records` keeps its own invariants, checked here too);
//!    `data_bytes` is the sum of the live keys' and values' lengths.
//! 6. Live spans and free spans never overlap.

use crate::kv::records::{Handle, Records};
use crate::prng::Prng;
use std::cmp::Ordering;

/// Tallest node. With p = 1/4, 12 levels keep searches logarithmic up to ~4^12 = 16M keys.
pub const HEIGHT_MAX: usize = 12;

/// Most nodes (live, free and head) the arena may hold: links are `u32` and 0 is nil.
pub const NODES_MAX: usize = u32::MAX as usize;

const NIL: u32 = 0;
const HEAD: u32 = 0;
/// The head's span, and "no span".
const HEAD_SPAN: u32 = 0;
const SPAN_NODE: usize = 0;
const SPAN_WORD: usize = 1;
const SPAN_LINKS: usize = 3;
/// Longest common prefix the list keeps (see "The common prefix"): bounds how often the words
/// are recomputed, and the bytes compared with it per search.
pub const COMMON_MAX: usize = 32;
/// Bytes before the key in a record: the `modified` stamp, little-endian.
const RECORD_HEADER: usize = 8;

/// Slots of the span of a node of `height` (>= 2).
const fn span_len(height: usize) -> usize {
    SPAN_LINKS + height - 1
}

#[derive(Debug)]
struct Node {
    /// Where the record `modified ++ key ++ value` lives in `records` (`NONE` when free).
    rec: Handle,
    /// The 8 key bytes after the list's common prefix, big-endian, zero-padded: decides most
    /// comparisons. In halves (high, low), so that the node aligns to 4 (28 bytes, not 32).
    word: [u32; 2],
    /// The key's length (low 24 bits) and the node's height (top 8 bits; 0 when free).
    key_height: u32,
    value_len: u32,
    /// Level-0 successor (or next free node when free).
    next0: u32,
    /// Offset of this node's span in `upper` (height >= 2 only).
    span: u32,
}

/// Longest key the list stores: its length shares a `u32` with the height.
pub const KEY_LEN_MAX: usize = (1 << 24) - 1;

impl Node {
    /// Points the node at record `rec` holding a value of `value_len` bytes, storing only the
    /// fields that change: a store into a page the snapshot child still shares faults and
    /// copies the page even when it writes the bytes already there.
    #[inline]
    fn set_rec(&mut self, rec: Handle, value_len: u32) {
        if self.rec != rec {
            self.rec = rec;
        }
        if self.value_len != value_len {
            self.value_len = value_len;
        }
    }

    #[inline]
    fn word(&self) -> u64 {
        u64::from(self.word[0]) << 32 | u64::from(self.word[1])
    }

    #[inline]
    fn set_word(&mut self, word: u64) {
        self.word = [(word >> 32) as u32, word as u32];
    }

    #[inline]
    fn key_len(&self) -> usize {
        (self.key_height & KEY_LEN_MAX as u32) as usize
    }

    #[inline]
    fn height(&self) -> usize {
        (self.key_height >> 24) as usize
    }

    /// Bytes of its record.
    #[inline]
    fn rec_len(&self) -> usize {
        RECORD_HEADER + self.key_len() + self.value_len as usize
    }
}

// The point of the record handle (see "Layout").
const _: () = assert!(std::mem::size_of::<Node>() == 28);

/// The stamp at the front of a live node's record.
fn record_modified(kv: &[u8]) -> u64 {
    u64::from_le_bytes(kv[..RECORD_HEADER].try_into().expect("8 bytes"))
}

fn set_record_modified(kv: &mut [u8], modified: u64) {
    kv[..RECORD_HEADER].copy_from_slice(&modified.to_le_bytes());
}

/// Bytes of the record of `key` and `value` (the caller's limits are below what a node's
/// lengths can hold: an invariant, not input checking).
fn record_len(key: &[u8], value: &[u8]) -> usize {
    assert!(key.len() <= KEY_LEN_MAX, "key of {} bytes", key.len());
    assert!(
        value.len() <= u32::MAX as usize,
        "value of {} bytes",
        value.len()
    );
    RECORD_HEADER + key.len() + value.len()
}

/// A record of `key` and `value` stamped `modified`, stored in `records`.
fn new_record(records: &mut Records, key: &[u8], value: &[u8], modified: u64) -> Handle {
    let len = record_len(key, value);
    let h = records.alloc(len);
    write_record(records.get_mut(h, len), key, value, modified);
    h
}

/// Fill `rec` (exactly `RECORD_HEADER + key.len() + value.len()` bytes) with a record.
fn write_record(rec: &mut [u8], key: &[u8], value: &[u8], modified: u64) {
    let (head, kv) = rec.split_at_mut(RECORD_HEADER);
    head.copy_from_slice(&modified.to_le_bytes());
    let (k, v) = kv.split_at_mut(key.len());
    k.copy_from_slice(key);
    v.copy_from_slice(value);
}

/// A record's `(key, value, modified)`, given its key's length.
fn split_record(rec: &[u8], key_len: usize) -> (&[u8], &[u8], u64) {
    let (key, value) = rec[RECORD_HEADER..].split_at(key_len);
    (key, value, record_modified(rec))
}

/// A live node's place in the arena: stable while the key stays stored, until `compact`
/// (which returns how ids moved). Lets a caller index keys without copying them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u32);

impl NodeId {
    /// Below every id: a range bound (`(hash, NodeId::MIN)..`).
    pub const MIN: NodeId = NodeId(0);

    #[cfg(test)]
    pub(crate) fn from_raw(n: u32) -> NodeId {
        NodeId(n)
    }

    #[cfg(test)]
    pub(crate) fn raw(self) -> u32 {
        self.0
    }
}

/// What `compact` did to the ids: `new_id(old)` for every id live before it.
pub struct Renumbering(Vec<u32>);

impl Renumbering {
    /// The id that the node `old` has after the compaction (it must have been live).
    pub fn new_id(&self, old: NodeId) -> NodeId {
        let new = self.0[old.0 as usize];
        assert!(new != NIL, "node {} was not live before compaction", old.0);
        NodeId(new)
    }
}

/// A key and value taken out of the list (replaced or removed), copied out of its record.
#[derive(Debug)]
pub struct Entry {
    kv: Box<[u8]>,
    key_len: usize,
}

impl Entry {
    /// An owned copy of a stored entry (what `insert_with` and `remove_with` show).
    fn copy(key: &[u8], value: &[u8], modified: u64) -> Entry {
        let mut kv = vec![0u8; RECORD_HEADER + key.len() + value.len()].into_boxed_slice();
        write_record(&mut kv, key, value, modified);
        Entry {
            kv,
            key_len: key.len(),
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.kv[RECORD_HEADER..RECORD_HEADER + self.key_len]
    }
    pub fn value(&self) -> &[u8] {
        &self.kv[RECORD_HEADER + self.key_len..]
    }
    /// Its `modified` stamp.
    pub fn modified(&self) -> u64 {
        record_modified(&self.kv)
    }
}

/// The skiplist map.
pub struct SkipList {
    nodes: Vec<Node>,
    /// Every live node's record.
    records: Records,
    upper: Vec<u32>,
    /// Head of the free node list (0 = empty).
    free_node: u32,
    /// For each height h in 2..=HEIGHT_MAX, the first free span for that height (0 = none).
    free_span: [u32; HEIGHT_MAX + 1],
    /// Levels in use: every live node's height is <= level.
    level: usize,
    /// Bytes every live key starts with (see "The common prefix"); `len() <= COMMON_MAX`.
    common: Vec<u8>,
    len: usize,
    data_bytes: usize,
    prng: Prng,
    /// Records read by searches to compare keys (tests count the cache misses avoided).
    #[cfg(test)]
    record_reads: std::cell::Cell<usize>,
}

/// The key bytes `[at, at + 8)`, big-endian, zero-padded.
fn word_at(key: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    let tail = key.get(at..).unwrap_or_default();
    let n = tail.len().min(8);
    b[..n].copy_from_slice(&tail[..n]);
    u64::from_be_bytes(b)
}

/// Bytes `a` and `b` share at their start.
fn common_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where a search key stands against the stored keys, from its comparison with `common`.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// It starts with `common`; its word.
    Shares(u64),
    /// Below every stored key.
    BelowAll,
    /// Above every stored key.
    AboveAll,
}

/// How `rederive_words` finds the words after `common` shrank.
#[derive(Clone, Copy, Debug)]
enum Rederive {
    /// `common` lost its last `bytes` (1..=7) bytes, which every key has, here at the top of a
    /// word: they move into the words, whose last `bytes` bytes fall off. Reads no record.
    Shift { top: u64, bytes: usize },
    /// Read every key.
    FromKeys,
}

/// Predecessors found by a search: `[0]` is a node index, `[1..]` are span offsets.
type Prev = [u32; HEIGHT_MAX];

impl SkipList {
    /// An empty list whose node heights are drawn from a generator seeded with `seed`.
    pub fn new(seed: u64) -> SkipList {
        SkipList::with_capacity(seed, 0, 0)
    }

    fn with_capacity(seed: u64, nodes: usize, upper: usize) -> SkipList {
        let mut list = SkipList {
            nodes: Vec::with_capacity(nodes + 1),
            records: Records::new(),
            upper: Vec::with_capacity(upper + span_len(HEIGHT_MAX)),
            free_node: NIL,
            free_span: [HEAD_SPAN; HEIGHT_MAX + 1],
            level: 1,
            common: Vec::new(),
            len: 0,
            data_bytes: 0,
            prng: Prng::new(seed),
            #[cfg(test)]
            record_reads: Default::default(),
        };
        list.nodes.push(Node {
            rec: Handle::NONE,
            word: [0; 2],
            key_height: (HEIGHT_MAX as u32) << 24,
            value_len: 0,
            next0: NIL,
            span: HEAD_SPAN,
        });
        // The head span: node HEAD, prefix 0, all links nil.
        list.upper.resize(span_len(HEIGHT_MAX), NIL);
        list
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of keys and values stored.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Bytes of record pages mapped outside the global allocator (`Records::mapped_bytes`).
    pub fn mapped_bytes(&self) -> usize {
        self.records.mapped_bytes()
    }

    /// Heap bytes the list holds beyond the key and value bytes (node and span arenas,
    /// counted by capacity, and the record pages' stamps, rounding and free slots).
    pub fn overhead_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.upper.capacity() * std::mem::size_of::<u32>()
            + (self.records.heap_bytes() - self.data_bytes)
    }

    #[inline]
    fn up_link(&self, span: u32, level: usize) -> u32 {
        self.upper[span as usize + SPAN_LINKS + level - 1]
    }

    #[inline]
    fn set_up_link(&mut self, span: u32, level: usize, to: u32) {
        self.upper[span as usize + SPAN_LINKS + level - 1] = to;
    }

    #[inline]
    fn node_key(&self, x: u32) -> &[u8] {
        let n = &self.nodes[x as usize];
        &self.records.get(n.rec, RECORD_HEADER + n.key_len())[RECORD_HEADER..]
    }

    /// Node `n`'s whole record.
    #[inline]
    fn record(&self, n: &Node) -> &[u8] {
        self.records.get(n.rec, n.rec_len())
    }

    /// How `key` stands against the stored keys.
    #[inline]
    fn probe(&self, key: &[u8]) -> Probe {
        let c = &self.common[..];
        if key.len() >= c.len() && key[..c.len()] == *c {
            Probe::Shares(word_at(key, c.len()))
        } else if key < c {
            Probe::BelowAll
        } else {
            Probe::AboveAll
        }
    }

    /// Node `x`'s key (whose word is `word`) compared with `key`.
    #[inline]
    fn cmp_key(&self, word: u64, x: u32, key: &[u8], probe: Probe) -> Ordering {
        match probe {
            Probe::Shares(key_word) => match word.cmp(&key_word) {
                Ordering::Equal => self.cmp_past_word(x, key),
                other => other,
            },
            Probe::BelowAll => Ordering::Greater,
            Probe::AboveAll => Ordering::Less,
        }
    }

    /// Node `x`'s key compared with `key`, both starting with `common` and with equal words.
    /// If either ends inside the word, it is a prefix of the other (see "The common prefix"),
    /// so the lengths decide without reading the record.
    #[inline]
    fn cmp_past_word(&self, x: u32, key: &[u8]) -> Ordering {
        let end = self.common.len() + 8;
        let len = self.nodes[x as usize].key_len();
        if len <= end || key.len() <= end {
            return len.cmp(&key.len());
        }
        #[cfg(test)]
        self.record_reads.set(self.record_reads.get() + 1);
        self.node_key(x)[end..].cmp(&key[end..])
    }

    /// The word in span `s`.
    #[inline]
    fn span_word(&self, s: u32) -> u64 {
        let at = s as usize;
        u64::from(self.upper[at + SPAN_WORD]) << 32 | u64::from(self.upper[at + SPAN_WORD + 1])
    }

    /// Walk down to `key`: fills `prev` (if given) with the last node/span < `key` at every
    /// level in use, and returns the first node with a key >= `key` (or nil).
    #[inline]
    fn search(&self, key: &[u8], probe: Probe, mut prev: Option<&mut Prev>) -> u32 {
        let mut s = HEAD_SPAN;
        // A span already found >= key at a higher level need not be compared again.
        let mut known_ge = HEAD_SPAN;
        for level in (1..self.level).rev() {
            loop {
                let next = self.up_link(s, level);
                if next == HEAD_SPAN || next == known_ge {
                    break;
                }
                let node = self.upper[next as usize + SPAN_NODE];
                if self.cmp_key(self.span_word(next), node, key, probe) == Ordering::Less {
                    s = next;
                } else {
                    known_ge = next;
                    break;
                }
            }
            if let Some(p) = prev.as_deref_mut() {
                p[level] = s;
            }
        }
        let mut x = self.upper[s as usize + SPAN_NODE];
        let known_ge = match known_ge {
            HEAD_SPAN => NIL,
            span => self.upper[span as usize + SPAN_NODE],
        };
        loop {
            let next = self.nodes[x as usize].next0;
            if next == NIL || next == known_ge {
                break;
            }
            let word = self.nodes[next as usize].word();
            if self.cmp_key(word, next, key, probe) == Ordering::Less {
                x = next;
            } else {
                break;
            }
        }
        if let Some(p) = prev {
            p[0] = x;
        }
        self.nodes[x as usize].next0
    }

    /// The first node with a key >= `key` (or nil).
    fn find(&self, key: &[u8]) -> (u32, Probe) {
        let probe = self.probe(key);
        (self.search(key, probe, None), probe)
    }

    /// Whether node `x` holds exactly `key`; the inline word and length decide without
    /// touching the record unless the key runs past the word.
    fn is_key(&self, x: u32, key: &[u8], probe: Probe) -> bool {
        let Probe::Shares(word) = probe else {
            return false;
        };
        if x == NIL {
            return false;
        }
        let n = &self.nodes[x as usize];
        let end = self.common.len() + 8;
        n.key_len() == key.len()
            && n.word() == word
            && (key.len() <= end
                || self.records.get(n.rec, RECORD_HEADER + key.len())[RECORD_HEADER + end..]
                    == key[end..])
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.get_modified(key).map(|(v, _)| v)
    }

    /// The value stored under `key` and the stamp of its last insert.
    pub fn get_modified(&self, key: &[u8]) -> Option<(&[u8], u64)> {
        let (x, probe) = self.find(key);
        if self.is_key(x, key, probe) {
            let n = &self.nodes[x as usize];
            let (_, value, modified) = split_record(self.record(n), n.key_len());
            Some((value, modified))
        } else {
            None
        }
    }

    /// Set the stamp of a stored `key`, returning the old one (`None` if it is absent).
    pub fn set_modified(&mut self, key: &[u8], modified: u64) -> Option<u64> {
        let (x, probe) = self.find(key);
        if !self.is_key(x, key, probe) {
            return None;
        }
        let kv = self
            .records
            .get_mut(self.nodes[x as usize].rec, RECORD_HEADER);
        let old = record_modified(kv);
        set_record_modified(kv, modified);
        Some(old)
    }

    /// Store `value` under `key` with stamp 0, returning the entry it replaced.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Option<Entry> {
        self.insert_at(key, value, 0)
    }

    /// Store `value` under `key`, stamped `modified`, returning the entry it replaced.
    pub fn insert_at(&mut self, key: &[u8], value: &[u8], modified: u64) -> Option<Entry> {
        self.insert_with(key, value, modified, Entry::copy).0
    }

    /// `insert_at`, also returning the id of the node that holds the key now.
    pub fn insert_at_id(
        &mut self,
        key: &[u8],
        value: &[u8],
        modified: u64,
    ) -> (Option<Entry>, NodeId) {
        self.insert_with(key, value, modified, Entry::copy)
    }

    /// Store `value` under `key`, stamped `modified`. If the key was there, `old` is shown
    /// the entry it replaces (key, value, stamp) before its bytes go, and what it returns is
    /// returned, with the id of the node that holds the key now. Copies nothing but the new
    /// key and value into their record (which reuses the old one's slot when it fits).
    pub fn insert_with<R>(
        &mut self,
        key: &[u8],
        value: &[u8],
        modified: u64,
        old: impl FnOnce(&[u8], &[u8], u64) -> R,
    ) -> (Option<R>, NodeId) {
        self.make_common(key);
        let probe = self.probe(key);
        let mut prev = [HEAD; HEIGHT_MAX]; // HEAD == HEAD_SPAN: right for unused levels
        let at = self.search(key, probe, Some(&mut prev));
        if self.is_key(at, key, probe) {
            return (
                Some(self.replace_at(NodeId(at), key, value, modified, old)),
                NodeId(at),
            );
        }
        let height = self.random_height();
        self.level = self.level.max(height);
        let word = word_at(key, self.common.len());
        let h = new_record(&mut self.records, key, value, modified);
        let x = self.alloc_node(h, key.len(), value.len(), word, height);
        self.nodes[x as usize].next0 = self.nodes[prev[0] as usize].next0;
        self.nodes[prev[0] as usize].next0 = x;
        let span = self.nodes[x as usize].span;
        for (level, &p) in prev.iter().enumerate().take(height).skip(1) {
            let next = self.up_link(p, level);
            self.set_up_link(span, level, next);
            self.set_up_link(p, level, span);
        }
        self.len += 1;
        (None, NodeId(x))
    }

    /// Whether the live node `id` holds exactly `key`, for a caller that found `id` by other
    /// means (the store's hash-ordered index): the inline word and the length decide, and the
    /// record is read only for a key longer than the common prefix plus 8 bytes.
    pub fn holds(&self, id: NodeId, key: &[u8]) -> bool {
        debug_assert!(self.is_live(id), "node {} is not live", id.0);
        self.is_key(id.0, key, self.probe(key))
    }

    /// The value of the live node `id` and the stamp of its last insert.
    pub fn entry_at(&self, id: NodeId) -> (&[u8], u64) {
        debug_assert!(self.is_live(id), "node {} is not live", id.0);
        let n = &self.nodes[id.0 as usize];
        let (_, value, modified) = split_record(self.record(n), n.key_len());
        (value, modified)
    }

    /// Store `value`, stamped `modified`, in the live node `id`, which holds `key` (`holds`):
    /// `insert_with` without the search. `old` is shown the entry it replaces before its bytes
    /// go; its answer is returned. The record's slot is reused when the new one rounds to it.
    pub fn replace_at<R>(
        &mut self,
        id: NodeId,
        key: &[u8],
        value: &[u8],
        modified: u64,
        old: impl FnOnce(&[u8], &[u8], u64) -> R,
    ) -> R {
        debug_assert!(self.holds(id, key), "node {} does not hold the key", id.0);
        let len = record_len(key, value);
        let n = &self.nodes[id.0 as usize];
        let (h, old_len) = (n.rec, n.rec_len());
        let (k, v, m) = split_record(self.records.get(h, old_len), key.len());
        let r = old(k, v, m);
        let h = if Records::same_slot(old_len, len) {
            h
        } else {
            self.records.free(h, old_len);
            self.records.alloc(len)
        };
        write_record(self.records.get_mut(h, len), key, value, modified);
        // The node is stored to only if it changes: most overwrites keep the record's slot and
        // the value's length, and while a snapshot child shares this memory any store, even
        // of the same bytes, costs a copy-on-write fault on the node's page (~3.5 us here).
        // `cargo bench --bench kv`, 1M keys, overwrites beside a forked child: 0.075 -> 0.068
        // faults per overwrite (the rest are the records' own pages, written in place).
        self.nodes[id.0 as usize].set_rec(h, value.len() as u32);
        self.data_bytes = self.data_bytes - old_len + len;
        r
    }

    /// Remove `key`, returning its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        self.remove_id(key).map(|(e, _)| e)
    }

    /// Remove `key`, returning its entry and the id its node had.
    pub fn remove_id(&mut self, key: &[u8]) -> Option<(Entry, NodeId)> {
        self.remove_with(key, Entry::copy)
    }

    /// Remove `key`: `old` is shown its entry (key, value, stamp) before its bytes go; returns
    /// what `old` returned and the id the node had.
    pub fn remove_with<R>(
        &mut self,
        key: &[u8],
        old: impl FnOnce(&[u8], &[u8], u64) -> R,
    ) -> Option<(R, NodeId)> {
        let probe = self.probe(key);
        let mut prev = [HEAD; HEIGHT_MAX];
        let x = self.search(key, probe, Some(&mut prev));
        if !self.is_key(x, key, probe) {
            return None;
        }
        let (height, span) = {
            let n = &self.nodes[x as usize];
            (n.height(), n.span)
        };
        self.nodes[prev[0] as usize].next0 = self.nodes[x as usize].next0;
        for (level, &p) in prev.iter().enumerate().take(height).skip(1) {
            debug_assert_eq!(self.up_link(p, level), span);
            let next = self.up_link(span, level);
            self.set_up_link(p, level, next);
        }
        while self.level > 1 && self.up_link(HEAD_SPAN, self.level - 1) == HEAD_SPAN {
            self.level -= 1;
        }
        self.len -= 1;
        let n = &self.nodes[x as usize];
        let (h, len) = (n.rec, n.rec_len());
        let (k, v, m) = split_record(self.records.get(h, len), key.len());
        let r = old(k, v, m);
        self.records.free(h, len);
        self.free_node(x);
        self.data_bytes -= len - RECORD_HEADER;
        Some((r, NodeId(x)))
    }

    /// Whether `id` names a live node.
    pub fn is_live(&self, id: NodeId) -> bool {
        id.0 != HEAD
            && self
                .nodes
                .get(id.0 as usize)
                .is_some_and(|n| n.height() != 0)
    }

    /// The key of the live node `id`.
    pub fn key_at(&self, id: NodeId) -> &[u8] {
        debug_assert!(self.is_live(id), "node {} is not live", id.0);
        self.node_key(id.0)
    }

    /// Every live node's id and key, in key order.
    pub fn ids(&self) -> impl Iterator<Item = (NodeId, &[u8])> + '_ {
        let mut x = self.nodes[HEAD as usize].next0;
        std::iter::from_fn(move || {
            (x != NIL).then(|| {
                let id = x;
                x = self.nodes[x as usize].next0;
                (NodeId(id), self.node_key(id))
            })
        })
    }

    /// Remove every key, keeping the generator's state.
    pub fn clear(&mut self) {
        let prng = self.prng.clone();
        *self = SkipList::new(0);
        self.prng = prng;
    }

    /// Entries with keys in `[start, end)` (`end = None`: unbounded), in key order.
    pub fn range<'a>(&'a self, start: &[u8], end: Option<&'a [u8]>) -> Iter<'a> {
        Iter {
            list: self,
            node: self.find(start).0,
            end,
        }
    }

    /// Entries from the first key >= `bound` on, in key order.
    pub fn seek(&self, bound: &[u8]) -> Iter<'_> {
        self.range(bound, None)
    }

    /// All entries in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            list: self,
            node: self.nodes[HEAD as usize].next0,
            end: None,
        }
    }

    /// Renumber the arena in key order (keeping every node's height), dropping free nodes and
    /// spans, and copy the records into fresh pages in the same order, dropping free slots.
    /// Afterwards a scan walks memory sequentially and neighbouring keys share cache lines.
    /// O(n); the caller picks the moment.
    pub fn compact(&mut self) -> Renumbering {
        let old = std::mem::take(&mut self.nodes);
        let mut renumbered = vec![NIL; old.len()];
        let upper_len = self.upper.len();
        let mut b = Builder {
            list: SkipList::with_capacity(0, self.len, upper_len),
            tails: [HEAD; HEIGHT_MAX],
            last: NIL,
        };
        b.list.prng = self.prng.clone();
        // The keys and so `common` and the words stay as they are.
        b.list.common = std::mem::take(&mut self.common);
        let mut x = old[HEAD as usize].next0;
        while x != NIL {
            let n = &old[x as usize];
            let rec = self.records.get(n.rec, n.rec_len());
            let h = b.list.records.alloc(rec.len());
            b.list.records.get_mut(h, rec.len()).copy_from_slice(rec);
            b.push_node(h, n.key_len(), n.value_len as usize, n.word(), n.height());
            renumbered[x as usize] = b.last;
            x = n.next0;
        }
        assert_eq!(b.list.len, self.len, "compaction lost nodes");
        b.list.upper.shrink_to_fit();
        *self = b.list;
        Renumbering(renumbered)
    }

    /// Height h >= 1 with P(h > k) = 4^-k, capped: two random zero bits per extra level.
    fn random_height(&mut self) -> usize {
        let bits = self.prng.next_u64();
        1 + ((bits.trailing_zeros() / 2) as usize).min(HEIGHT_MAX - 1)
    }

    /// Make `common` a prefix of `key` (which is about to be stored): set it from `key` in an
    /// empty list, else cut it to what they share and recompute the words.
    fn make_common(&mut self, key: &[u8]) {
        if self.len == 0 {
            self.common.clear();
            self.common
                .extend_from_slice(&key[..key.len().min(COMMON_MAX)]);
            return;
        }
        let keep = common_len(key, &self.common);
        let lost = self.common.len() - keep;
        if lost == 0 {
            return;
        }
        let how = if lost < 8 {
            let mut top = [0u8; 8];
            top[..lost].copy_from_slice(&self.common[keep..]);
            Rederive::Shift {
                top: u64::from_be_bytes(top),
                bytes: lost,
            }
        } else {
            Rederive::FromKeys
        };
        self.common.truncate(keep);
        self.rederive_words(how);
    }

    /// Recompute every live node's word (and its span's copy) after `common` changed. O(n).
    fn rederive_words(&mut self, how: Rederive) {
        let at = self.common.len();
        let records = &self.records;
        for n in self.nodes.iter_mut().skip(1).filter(|n| n.height() != 0) {
            let word = match how {
                Rederive::Shift { top, bytes } => top | n.word() >> (8 * bytes),
                Rederive::FromKeys => {
                    let rec = records.get(n.rec, RECORD_HEADER + n.key_len());
                    word_at(&rec[RECORD_HEADER..], at)
                }
            };
            n.set_word(word);
            if n.height() > 1 {
                let s = n.span as usize;
                self.upper[s + SPAN_WORD..s + SPAN_WORD + 2].copy_from_slice(&n.word);
            }
        }
    }

    /// A node (and its span, filled in) with nil links, holding the record at `rec`.
    fn alloc_node(
        &mut self,
        rec: Handle,
        key_len: usize,
        value_len: usize,
        word: u64,
        height: usize,
    ) -> u32 {
        debug_assert_eq!(
            word,
            word_at(
                &self.records.get(rec, RECORD_HEADER + key_len)[RECORD_HEADER..],
                self.common.len()
            )
        );
        self.data_bytes += key_len + value_len;
        let x = if self.free_node != NIL {
            self.free_node
        } else {
            assert!(self.nodes.len() < NODES_MAX, "skiplist arena full");
            self.nodes.len() as u32
        };
        let span = self.alloc_span(height);
        if span != HEAD_SPAN {
            let at = span as usize;
            self.upper[at + SPAN_NODE] = x;
            self.upper[at + SPAN_WORD] = (word >> 32) as u32;
            self.upper[at + SPAN_WORD + 1] = word as u32;
            self.upper[at + SPAN_LINKS..at + span_len(height)].fill(HEAD_SPAN);
        }
        let node = Node {
            rec,
            word: [(word >> 32) as u32, word as u32],
            key_height: (height as u32) << 24 | key_len as u32,
            value_len: value_len as u32,
            next0: NIL,
            span,
        };
        if x == self.free_node {
            self.free_node = self.nodes[x as usize].next0;
            self.nodes[x as usize] = node;
        } else {
            self.nodes.push(node);
        }
        x
    }

    fn alloc_span(&mut self, height: usize) -> u32 {
        if height == 1 {
            return HEAD_SPAN;
        }
        let free = self.free_span[height];
        if free != HEAD_SPAN {
            self.free_span[height] = self.upper[free as usize];
            return free;
        }
        let at = self.upper.len();
        assert!(
            at + span_len(height) <= u32::MAX as usize,
            "span arena full"
        );
        self.upper.resize(at + span_len(height), NIL);
        at as u32
    }

    /// Put `x` (its record already freed) on the free lists.
    fn free_node(&mut self, x: u32) {
        let (height, span) = {
            let n = &self.nodes[x as usize];
            (n.height(), n.span)
        };
        if height > 1 {
            self.upper[span as usize] = self.free_span[height];
            self.free_span[height] = span;
        }
        let n = &mut self.nodes[x as usize];
        n.rec = Handle::NONE;
        n.key_height = 0;
        n.value_len = 0;
        n.word = [0; 2];
        n.span = HEAD_SPAN;
        n.next0 = self.free_node;
        self.free_node = x;
    }

    /// Assert invariants 1-6 (see the file header). O(n); for tests and debug builds.
    pub fn check_invariants(&self) {
        let mut state = vec![0u8; self.nodes.len()]; // 0 unseen, 1 live, 2 free, 3 head
        state[HEAD as usize] = 3;
        let mut span_used = vec![false; self.upper.len()];
        span_used[..span_len(HEIGHT_MAX)].fill(true);
        let (mut count, mut bytes) = (0usize, 0usize);
        let mut x = self.nodes[HEAD as usize].next0;
        let mut prev_key: Option<&[u8]> = None;
        assert!(self.common.len() <= COMMON_MAX, "common prefix too long");
        while x != NIL {
            assert_eq!(state[x as usize], 0, "node {x} reached twice at level 0");
            state[x as usize] = 1;
            let n = &self.nodes[x as usize];
            let key = self.node_key(x);
            if let Some(p) = prev_key {
                assert!(p < key, "keys out of order at node {x}: {p:?} !< {key:?}");
            }
            let h = n.height();
            assert!(
                (1..=self.level).contains(&h),
                "node {x} height {h}, level {}",
                self.level
            );
            assert!(
                key.starts_with(&self.common),
                "node {x} key {key:?} lacks the common prefix {:?}",
                self.common
            );
            assert_eq!(n.word(), word_at(key, self.common.len()), "node {x} word");
            if h > 1 {
                let at = n.span as usize;
                assert_eq!(
                    self.upper[at + SPAN_NODE],
                    x,
                    "span {at} names another node"
                );
                assert_eq!(self.span_word(n.span), n.word(), "span {at} word");
                mark_span(&mut span_used, at, h);
            }
            prev_key = Some(key);
            count += 1;
            bytes += n.key_len() + n.value_len as usize;
            x = n.next0;
        }
        assert_eq!(count, self.len, "level-0 chain length vs len");
        assert_eq!(bytes, self.data_bytes, "data_bytes");
        self.records.check_invariants(
            self.nodes
                .iter()
                .skip(1)
                .filter(|n| n.height() != 0)
                .map(|n| (n.rec, n.rec_len())),
        );
        for level in 1..HEIGHT_MAX {
            self.check_level(level, &state);
        }
        self.check_free_lists(&mut state, &mut span_used);
        assert!(
            state.iter().all(|&s| s != 0),
            "a node is neither live, free nor head"
        );
    }

    /// Invariants 2 and 3 at one level: the chain is the level-0 chain filtered by height.
    fn check_level(&self, level: usize, state: &[u8]) {
        let mut expect = self.nodes[HEAD as usize].next0;
        let mut s = self.up_link(HEAD_SPAN, level);
        if level >= self.level {
            assert_eq!(
                s, HEAD_SPAN,
                "head link at level {level} >= level {}",
                self.level
            );
        }
        loop {
            while expect != NIL && self.nodes[expect as usize].height() <= level {
                expect = self.nodes[expect as usize].next0;
            }
            if s == HEAD_SPAN {
                assert_eq!(expect, NIL, "level {level} chain ends early");
                break;
            }
            let x = self.upper[s as usize + SPAN_NODE];
            assert_eq!(x, expect, "level {level} chain skips or adds a node");
            assert_eq!(state[x as usize], 1, "level {level} links to dead node {x}");
            s = self.up_link(s, level);
            expect = self.nodes[expect as usize].next0;
        }
    }

    /// Invariants 5 and 6 for the free lists.
    fn check_free_lists(&self, state: &mut [u8], span_used: &mut [bool]) {
        let mut x = self.free_node;
        while x != NIL {
            assert_eq!(state[x as usize], 0, "free node {x} also live or repeated");
            state[x as usize] = 2;
            assert!(
                self.nodes[x as usize].rec == Handle::NONE,
                "free node {x} holds a record"
            );
            x = self.nodes[x as usize].next0;
        }
        for h in 2..=HEIGHT_MAX {
            let mut span = self.free_span[h];
            while span != HEAD_SPAN {
                mark_span(span_used, span as usize, h);
                span = self.upper[span as usize];
            }
        }
    }
}

/// Mark the slots of the span at `at` for a node of `height`, asserting none was taken.
fn mark_span(used: &mut [bool], at: usize, height: usize) {
    for (i, slot) in used[at..at + span_len(height)].iter_mut().enumerate() {
        assert!(
            !*slot,
            "span at {at} (height {height}) overlaps at slot {}",
            at + i
        );
        *slot = true;
    }
}

/// Builds a list from entries given in strictly increasing key order, in O(1) per entry
/// (the snapshot loader's path). The caller checks the order; `push` asserts it.
pub struct Builder {
    list: SkipList,
    /// The last node (`[0]`) and span (`[1..]`) at each level; the head where none yet.
    tails: Prev,
    last: u32,
}

impl Builder {
    pub fn new(seed: u64) -> Builder {
        Builder {
            list: SkipList::new(seed),
            tails: [HEAD; HEIGHT_MAX],
            last: NIL,
        }
    }

    /// The key pushed last.
    pub fn last_key(&self) -> Option<&[u8]> {
        (self.last != NIL).then(|| self.list.node_key(self.last))
    }

    /// Append `key` and `value`; the key must sort after every key so far. Stamp 0.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        self.push_at(key, value, 0);
    }

    /// `push`, with the key's `modified` stamp.
    pub fn push_at(&mut self, key: &[u8], value: &[u8], modified: u64) {
        if let Some(last) = self.last_key() {
            assert!(last < key, "Builder::push out of order");
        }
        let height = self.list.random_height();
        // Words from the start of the key until `finish` sets `common`.
        let word = word_at(key, self.list.common.len());
        let h = new_record(&mut self.list.records, key, value, modified);
        self.push_node(h, key.len(), value.len(), word, height);
    }

    /// Append a node of a known height and key prefix, its record at `rec` (the order is the
    /// caller's promise).
    fn push_node(
        &mut self,
        rec: Handle,
        key_len: usize,
        value_len: usize,
        word: u64,
        height: usize,
    ) {
        self.list.level = self.list.level.max(height);
        let x = self.list.alloc_node(rec, key_len, value_len, word, height);
        self.list.nodes[self.tails[0] as usize].next0 = x;
        self.tails[0] = x;
        let span = self.list.nodes[x as usize].span;
        for level in 1..height {
            self.list.set_up_link(self.tails[level], level, span);
            self.tails[level] = span;
        }
        self.list.len += 1;
        self.last = x;
    }

    pub fn len(&self) -> usize {
        self.list.len
    }

    pub fn is_empty(&self) -> bool {
        self.list.len == 0
    }

    /// The list, with `common` set to what the first and last keys (so all keys) share.
    pub fn finish(mut self) -> SkipList {
        let list = &mut self.list;
        if list.len > 0 {
            let first = list.node_key(list.nodes[HEAD as usize].next0);
            let shared = common_len(first, list.node_key(self.last)).min(COMMON_MAX);
            list.common = first[..shared].to_vec();
            list.rederive_words(Rederive::FromKeys);
        }
        self.list
    }
}

/// A forward iterator over `(key, value)` pairs in key order.
pub struct Iter<'a> {
    list: &'a SkipList,
    node: u32,
    end: Option<&'a [u8]>,
}

impl<'a> Iter<'a> {
    /// The next entry with its `modified` stamp.
    pub fn next_modified(&mut self) -> Option<(&'a [u8], &'a [u8], u64)> {
        if self.node == NIL {
            return None;
        }
        let n = &self.list.nodes[self.node as usize];
        let (key, value, modified) = split_record(self.list.record(n), n.key_len());
        if let Some(end) = self.end {
            if key >= end {
                self.node = NIL;
                return None;
            }
        }
        self.node = n.next0;
        Some((key, value, modified))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_modified().map(|(k, v, _)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn random_key(p: &mut Prng, space: u64) -> Vec<u8> {
        // Small alphabets and lengths so that keys collide, share prefixes longer and shorter
        // than 8 bytes, and include the empty key and zero bytes.
        let len = p.range(0, 12) as usize;
        let mut k: Vec<u8> = (0..len).map(|_| b"a\0b"[p.range(0, 3) as usize]).collect();
        if p.chance(1, 2) {
            k = format!("{}", p.range(0, space)).into_bytes();
        } else if p.chance(1, 2) {
            // A shared 8-byte prefix and lengths across 16.
            let tail = p.range(0, 14) as usize;
            k = b"key:0000".to_vec();
            k.extend((0..tail).map(|_| b"a\0b"[p.range(0, 3) as usize]));
        }
        k
    }

    /// The first `n` entries from `key` on are the model's.
    fn assert_seek_matches(
        list: &SkipList,
        model: &BTreeMap<Vec<u8>, Vec<u8>>,
        key: &[u8],
        n: usize,
        step: u32,
    ) {
        let got: Vec<_> = list.seek(key).take(n).collect();
        let want: Vec<_> = model
            .range(key.to_vec()..)
            .take(n)
            .map(|(k, v)| (&k[..], &v[..]))
            .collect();
        assert_eq!(got, want, "seek at step {step}");
    }

    #[test]
    fn model_test_against_btreemap_over_many_random_operations() {
        for seed in 1..=3u64 {
            let mut p = Prng::new(seed);
            let mut list = SkipList::new(seed);
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for step in 0..40_000u32 {
                let key = random_key(&mut p, 3000);
                match p.range(0, 10) {
                    0..=3 => {
                        let mut v = vec![0u8; p.range(0, 20) as usize];
                        p.fill(&mut v);
                        let old = list.insert(&key, &v);
                        let want = model.insert(key.clone(), v);
                        assert_eq!(
                            old.as_ref().map(|e| e.value()),
                            want.as_deref(),
                            "step {step}"
                        );
                        if let Some(e) = old {
                            assert_eq!(e.key(), &key[..]);
                        }
                    }
                    4..=5 => {
                        let got = list.remove(&key);
                        let want = model.remove(&key);
                        assert_eq!(
                            got.as_ref().map(|e| e.value()),
                            want.as_deref(),
                            "step {step}"
                        );
                    }
                    6..=7 => assert_eq!(list.get(&key), model.get(&key).map(|v| &v[..])),
                    8 => {
                        assert_seek_matches(&list, &model, &key, 5, step);
                    }
                    _ => {
                        let end = random_key(&mut p, 3000);
                        let got: Vec<_> = list.range(&key, Some(&end)).take(50).collect();
                        let want: Vec<_> = if key < end {
                            model
                                .range(key.clone()..end.clone())
                                .take(50)
                                .map(|(k, v)| (&k[..], &v[..]))
                                .collect()
                        } else {
                            Vec::new()
                        };
                        assert_eq!(got, want, "range at step {step}");
                    }
                }
                assert_eq!(list.len(), model.len());
                if step % 5000 == 0 {
                    list.check_invariants();
                }
                if step % 7000 == 3500 {
                    list.compact();
                }
            }
            list.check_invariants();
            let all: Vec<_> = list.iter().collect();
            let want: Vec<_> = model.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            assert_eq!(all, want, "seed {seed}");
        }
    }

    /// Keys of one family: `base` (longer than `COMMON_MAX`) cut to `shared` bytes, then a
    /// short random tail, so that the list's common prefix shrinks by small and large steps.
    fn family_key(p: &mut Prng, base: &[u8], shared: usize) -> Vec<u8> {
        let mut k = base[..shared].to_vec();
        k.extend((0..p.range(0, 12)).map(|_| b"a\0b~"[p.range(0, 4) as usize]));
        k
    }

    #[test]
    fn keys_sharing_long_prefixes_that_shrink_in_steps_match_a_btreemap() {
        let base = [b'x'; COMMON_MAX + 12];
        for seed in 1..=4u64 {
            let mut p = Prng::new(seed);
            let mut list = SkipList::new(seed);
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            // The shared length falls now and then, by 1..=10 bytes: both ways of recomputing
            // the words. Probes also use shorter shared lengths and other first bytes, so they
            // fall below and above every stored key.
            let mut shared = base.len();
            for step in 0..12_000u32 {
                if step % 600 == 599 {
                    shared = shared.saturating_sub(p.range(1, 11) as usize);
                }
                let mut key = family_key(&mut p, &base, shared);
                match p.range(0, 8) {
                    0..=3 => {
                        let old = list.insert(&key, &key);
                        let want = model.insert(key.clone(), key.clone());
                        assert_eq!(old.map(|e| e.value().to_vec()), want, "step {step}");
                        assert!(list.common.len() <= shared.min(COMMON_MAX) + 11);
                    }
                    4 => {
                        let got = list.remove(&key).map(|e| e.value().to_vec());
                        assert_eq!(got, model.remove(&key), "step {step}");
                    }
                    5 => {
                        let cut = p.range(0, shared as u64 + 1) as usize;
                        key = family_key(&mut p, &base, cut);
                        if p.chance(1, 2) {
                            key.insert(0, b"wy"[p.range(0, 2) as usize]);
                        }
                        assert_seek_matches(&list, &model, &key, 3, step);
                    }
                    _ => assert_eq!(list.get(&key), model.get(&key).map(|v| &v[..])),
                }
                if step % 600 == 598 || step % 600 == 0 {
                    list.check_invariants();
                }
                if step == 6000 {
                    list.compact();
                    list.check_invariants();
                }
            }
            let all: Vec<_> = list.iter().collect();
            let want: Vec<_> = model.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            assert_eq!(all, want, "seed {seed}");
        }
    }

    #[test]
    fn searches_among_keys_with_a_long_common_prefix_read_no_record() {
        // compare.py's keys: "k" + 15 digits, the first 8 bytes the same for all.
        let key = |i: u64| format!("k{i:015}").into_bytes();
        let mut list = SkipList::new(6);
        let mut p = Prng::new(6);
        for _ in 0..20_000 {
            let i = p.range(0, 100_000);
            list.insert(&key(i), b"v");
        }
        assert_eq!(list.common, b"k0000000000");
        list.record_reads.set(0);
        for i in 0..2000 {
            list.get(&key(i * 50));
            list.seek(&key(i * 50 + 1));
        }
        assert_eq!(list.record_reads.get(), 0, "records read to compare keys");
        // Loaded from a snapshot: the same.
        let mut b = Builder::new(7);
        for (k, _) in list.iter() {
            b.push(k, b"v");
        }
        let built = b.finish();
        built.check_invariants();
        assert_eq!(built.common, list.common);
        for i in 0..2000 {
            assert_eq!(built.get(&key(i * 50)), list.get(&key(i * 50)));
        }
        assert_eq!(built.record_reads.get(), 0, "records read to compare keys");
    }

    #[test]
    fn the_common_prefix_is_set_by_the_first_key_shrinks_and_restarts_when_empty() {
        let mut list = SkipList::new(2);
        list.insert(b"user:1234", b"a");
        assert_eq!(list.common, b"user:1234");
        list.insert(b"user:1299", b"b");
        assert_eq!(list.common, b"user:12");
        list.insert(b"user", b"c");
        assert_eq!(list.common, b"user");
        list.check_invariants();
        let long = [b'q'; COMMON_MAX + 5];
        for k in [&b"user:1234"[..], b"user:1299", b"user"] {
            list.remove(k);
        }
        list.insert(&long, b"d");
        assert_eq!(list.common, &long[..COMMON_MAX]);
        list.insert(b"", b"e");
        assert_eq!(list.common, b"");
        assert_eq!(list.get(&long), Some(&b"d"[..]));
        assert_eq!(list.get(b""), Some(&b"e"[..]));
        list.check_invariants();
    }

    #[test]
    fn freed_nodes_and_link_spans_are_reused() {
        let mut list = SkipList::new(9);
        for i in 0..1000u32 {
            list.insert(&i.to_be_bytes(), b"v");
        }
        let (nodes, upper) = (list.nodes.len(), list.upper.len());
        for round in 0..5u32 {
            for i in 0..1000u32 {
                assert!(list.remove(&i.to_be_bytes()).is_some());
            }
            assert!(list.is_empty());
            list.check_invariants();
            for i in 0..1000u32 {
                list.insert(&(i + round).to_be_bytes(), b"w");
            }
            list.check_invariants();
            assert_eq!(list.nodes.len(), nodes, "node arena grew in round {round}");
            // Heights are redrawn, so spans of one height may run short; growth stays small.
            assert!(
                list.upper.len() < upper * 2,
                "{} vs {upper}",
                list.upper.len()
            );
            for i in 0..1000u32 {
                list.remove(&(i + round).to_be_bytes());
            }
            for i in 0..1000u32 {
                list.insert(&i.to_be_bytes(), b"v");
            }
        }
    }

    #[test]
    fn builder_makes_the_same_map_as_inserting() {
        let mut b = Builder::new(4);
        let mut list = SkipList::new(5);
        for i in 0..5000u32 {
            let key = (i * 7).to_be_bytes();
            b.push(&key, b"val");
            list.insert(&key, b"val");
        }
        let built = b.finish();
        built.check_invariants();
        assert!(built.iter().eq(list.iter()));
        assert_eq!(built.get(&70u32.to_be_bytes()), Some(&b"val"[..]));
        assert_eq!(built.get(&71u32.to_be_bytes()), None);
    }

    #[test]
    fn compaction_keeps_the_map_and_orders_the_arena_by_key() {
        let mut list = SkipList::new(8);
        let mut p = Prng::new(8);
        for _ in 0..3000 {
            let k = p.range(0, 2000).to_be_bytes();
            if p.chance(1, 3) {
                list.remove(&k);
            } else {
                list.insert(&k, &k[4..]);
            }
        }
        let before: Vec<(Vec<u8>, Vec<u8>)> =
            list.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        list.compact();
        list.check_invariants();
        assert_eq!(list.nodes.len(), list.len() + 1, "free nodes dropped");
        let mut x = list.nodes[0].next0;
        let mut expect = 1;
        while x != NIL {
            assert_eq!(x, expect, "arena not in key order");
            x = list.nodes[x as usize].next0;
            expect += 1;
        }
        let after: Vec<(Vec<u8>, Vec<u8>)> =
            list.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(before, after);
        list.insert(b"new", b"v");
        assert_eq!(
            list.remove(&before[0].0).map(|e| e.value().to_vec()),
            Some(before[0].1.clone())
        );
        list.check_invariants();
    }

    #[test]
    fn modified_stamps_follow_the_last_insert_through_removal_reuse_and_compaction() {
        let mut list = SkipList::new(9);
        let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut p = Prng::new(9);
        for stamp in 1..4000u64 {
            let k = p.range(0, 500).to_be_bytes();
            if p.chance(1, 3) {
                list.remove(&k);
                model.remove(&k[..]);
            } else {
                list.insert_at(&k, b"v", stamp);
                model.insert(k.to_vec(), stamp);
            }
            if stamp == 2000 {
                list.compact();
            }
        }
        for (k, &m) in &model {
            assert_eq!(list.get_modified(k), Some((&b"v"[..], m)), "{k:?}");
        }
        let mut it = list.iter();
        let mut seen = Vec::new();
        while let Some((k, _, m)) = it.next_modified() {
            seen.push((k.to_vec(), m));
        }
        assert_eq!(seen, model.into_iter().collect::<Vec<_>>());
        assert_eq!(list.get_modified(b"absent"), None);
        list.check_invariants();
    }

    #[test]
    fn node_ids_name_their_keys_until_removal_and_compaction_says_where_they_moved() {
        let mut list = SkipList::new(12);
        let mut model: BTreeMap<Vec<u8>, NodeId> = BTreeMap::new();
        let mut p = Prng::new(12);
        for step in 0..6000u32 {
            let k = random_key(&mut p, 800);
            if p.chance(1, 3) {
                let got = list.remove_id(&k).map(|(e, id)| (e.key().to_vec(), id));
                assert_eq!(got, model.remove(&k).map(|id| (k.clone(), id)), "{step}");
                if let Some((_, id)) = got {
                    assert!(!list.is_live(id), "removed node {id:?} still live");
                }
            } else {
                let (old, id) = list.insert_at_id(&k, b"v", u64::from(step));
                // A replaced key keeps its node; a new one gets a node no other key has.
                match model.insert(k.clone(), id) {
                    Some(was) => assert_eq!((old.is_some(), was), (true, id)),
                    None => assert!(old.is_none()),
                }
            }
            if step % 1500 == 1499 {
                let moved = list.compact();
                for id in model.values_mut() {
                    *id = moved.new_id(*id);
                }
                list.check_invariants();
            }
            if step % 500 == 0 {
                for (k, &id) in &model {
                    assert!(list.is_live(id));
                    assert_eq!(list.key_at(id), &k[..]);
                }
                let ids: Vec<(NodeId, Vec<u8>)> =
                    list.ids().map(|(id, k)| (id, k.to_vec())).collect();
                let want: Vec<(NodeId, Vec<u8>)> =
                    model.iter().map(|(k, &id)| (id, k.clone())).collect();
                assert_eq!(ids, want);
            }
        }
        assert!(!list.is_live(NodeId(HEAD)), "the head is not a key's node");
    }

    #[test]
    fn heights_follow_a_quarter_ratio_and_respect_the_cap() {
        let mut list = SkipList::new(3);
        let mut counts = [0usize; HEIGHT_MAX + 1];
        for _ in 0..100_000 {
            counts[list.random_height()] += 1;
        }
        assert_eq!(counts[0], 0);
        // Expect 75% height 1 and 18.75% height 2; allow generous slack.
        assert!((73_000..77_000).contains(&counts[1]), "{counts:?}");
        assert!((17_000..20_500).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn binary_keys_and_the_empty_key_are_ordered_bytewise() {
        let mut list = SkipList::new(1);
        let keys: [&[u8]; 6] = [b"", b"\0", b"\0\0", b"\xff", b"a\0b", b"a"];
        for k in keys {
            list.insert(k, k);
        }
        let got: Vec<&[u8]> = list.iter().map(|(k, _)| k).collect();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(list.get(b""), Some(&b""[..]));
        list.check_invariants();
    }
}
