//! `ScanIndex`: the store's keys in scan order, as `(scan hash, NodeId)` pairs, 8 bytes each.
//!
//! Owns: the ordered set of pairs behind SCAN and RANDOMKEY (`store.rs`, "Scan order"). Knows
//! nothing of keys: the store hashes them and the skiplist holds them.
//!
//! # Layout
//!
//! A `BTreeSet<(u64, NodeId)>` spends about 29 bytes per pair (measured: 16-byte elements, as
//! the u64 aligns the tuple to 8, in B-tree leaves about 70% full, plus the allocator's
//! headers). Here a pair is packed as `(hash >> 32, id)`: 8 bytes, aligned to 4. The low half
//! of the hash is not stored: the id names the key it is the hash of, so the caller's `lo`
//! (every call that compares or yields pairs takes one) recomputes it, and that is needed
//! only to order pairs whose high halves are equal (about n / 2^32 of the comparisons: at a
//! million keys, almost never) and to yield full hashes. Two pairs with one id are the same
//! pair (invariant 3), which a removal relies on: the store removes a key's pair after its
//! node is gone, when `lo` could no longer read its key.
//!
//! The pairs live in sorted blocks of at most `BLOCK_MAX`, each a `Vec` grown `BLOCK_GROW`
//! pairs at a time (so it stays nearly full), found by a binary search over `firsts`, a copy
//! of every block's first pair. An insert or removal moves at most `BLOCK_MAX` pairs (4 KiB)
//! inside one block; a full block splits in two. About 9 bytes per pair in all (13 with the
//! low half stored: measured, `tools/profile.sh memory`, 632k keys, 4 bytes per key less).
//!
//! # Invariants (checked by `check_invariants`)
//!
//! 1. Every block holds 1..=`BLOCK_MAX` pairs, strictly increasing in `(hash, id)` order
//!    within the block, and each block's last pair is below the next block's first.
//! 2. `firsts[i] == blocks[i][0]` for every block, and `len` is the total number of pairs.
//! 3. No id appears in two pairs.

use crate::kv::skiplist::NodeId;
use std::cmp::Ordering;

/// Most pairs in one block: a split moves half of them, an insert at most all of them.
const BLOCK_MAX: usize = 512;
/// Pairs a block grows by when full, and the spare room it keeps at most after a removal
/// (twice this).
const BLOCK_GROW: usize = 16;
/// A block this small merges with a neighbour when the two fit in half a block.
const BLOCK_MERGE_BELOW: usize = BLOCK_MAX / 8;

/// A pair as stored: the high half of its hash and its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    hi: u32,
    id: NodeId,
}

const _: () = assert!(std::mem::size_of::<Packed>() == 8);

fn pack(hash: u64, id: NodeId) -> Packed {
    Packed {
        hi: (hash >> 32) as u32,
        id,
    }
}

/// The stored pair `q` against `(hash, id)`, in `(hash, id)` order; `lo` gives the low half of
/// the hash of an id's key.
#[inline]
fn cmp_pair(q: &Packed, hash: u64, id: NodeId, lo: &impl Fn(NodeId) -> u32) -> Ordering {
    match q.hi.cmp(&((hash >> 32) as u32)) {
        // One id, one pair (invariant 3): no need to ask `lo`.
        Ordering::Equal if q.id == id => Ordering::Equal,
        Ordering::Equal => (lo(q.id), q.id).cmp(&(hash as u32, id)),
        other => other,
    }
}

/// The full pair `q` stands for.
#[inline]
fn unpack(q: &Packed, lo: &impl Fn(NodeId) -> u32) -> (u64, NodeId) {
    ((u64::from(q.hi) << 32) | u64::from(lo(q.id)), q.id)
}

/// Pairs in a 64-byte cache line: `lower_bound`'s step.
const LINE_PAIRS: usize = 64 / std::mem::size_of::<Packed>();

/// The first position in `block` (sorted, not empty) whose high half is `>= hi`. Guessed by
/// interpolating between the block's ends (the hashes are uniform, so the guess is off by
/// about the square root of the block's length), then bracketed a cache line at a time
/// toward the answer, then found by a binary search inside the bracket.
fn lower_bound(block: &[Packed], hi: u32) -> usize {
    let n = block.len();
    let (first, last) = (block[0].hi, block[n - 1].hi);
    if hi <= first {
        return 0;
    }
    if hi > last {
        return n;
    }
    // Here first < hi <= last. Invariant of the bracket: block[lo].hi < hi <= block[up].hi.
    let guess = (u64::from(hi - first) * (n as u64 - 1) / u64::from(last - first)) as usize;
    let (mut lo, mut up);
    if block[guess].hi < hi {
        lo = guess;
        up = (guess + LINE_PAIRS).min(n - 1);
        while block[up].hi < hi {
            lo = up;
            up = (up + LINE_PAIRS).min(n - 1);
        }
    } else {
        up = guess;
        lo = guess.saturating_sub(LINE_PAIRS);
        while block[lo].hi >= hi {
            up = lo;
            lo = lo.saturating_sub(LINE_PAIRS);
        }
    }
    lo + 1 + block[lo + 1..up].partition_point(|q| q.hi < hi)
}

/// The ordered set of `(scan hash, NodeId)` pairs. See the module invariants.
#[derive(Default)]
pub struct ScanIndex {
    blocks: Vec<Vec<Packed>>,
    /// Invariant 2: each block's first pair, for the binary search that picks a block.
    firsts: Vec<Packed>,
    len: usize,
}

impl ScanIndex {
    pub fn new() -> ScanIndex {
        ScanIndex::default()
    }

    /// The index of exactly these pairs (in any order; duplicates count once; no id twice).
    pub fn from_pairs(mut pairs: Vec<(u64, NodeId)>) -> ScanIndex {
        pairs.sort_unstable();
        pairs.dedup();
        let mut index = ScanIndex::new();
        // Blocks start three quarters full, so inserts spread do not split them at once.
        for chunk in pairs.chunks(BLOCK_MAX * 3 / 4) {
            let block: Vec<Packed> = chunk.iter().map(|&(h, id)| pack(h, id)).collect();
            index.firsts.push(block[0]);
            index.len += block.len();
            index.blocks.push(block);
        }
        index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        *self = ScanIndex::new();
    }

    /// The block that holds `(hash, id)` if anything does: the last one whose first pair is
    /// `<=` it (block 0 for pairs below every block).
    fn block_for(&self, hash: u64, id: NodeId, lo: &impl Fn(NodeId) -> u32) -> usize {
        self.firsts
            .partition_point(|f| cmp_pair(f, hash, id, lo) != Ordering::Greater)
            .saturating_sub(1)
    }

    /// Add a pair (`id` in no pair yet); false if it was there already.
    pub fn insert(&mut self, hash: u64, id: NodeId, lo: &impl Fn(NodeId) -> u32) -> bool {
        let p = pack(hash, id);
        if self.blocks.is_empty() {
            let mut block = Vec::with_capacity(BLOCK_GROW);
            block.push(p);
            self.blocks.push(block);
            self.firsts.push(p);
            self.len = 1;
            return true;
        }
        let b = self.block_for(hash, id, lo);
        let block = &mut self.blocks[b];
        let Err(at) = block.binary_search_by(|q| cmp_pair(q, hash, id, lo)) else {
            return false;
        };
        if block.len() == block.capacity() {
            block.reserve_exact(BLOCK_GROW);
        }
        block.insert(at, p);
        if at == 0 {
            self.firsts[b] = p;
        }
        self.len += 1;
        if block.len() > BLOCK_MAX {
            let mut tail = block.split_off(block.len() / 2);
            tail.reserve_exact(BLOCK_GROW);
            block.shrink_to(block.len() + BLOCK_GROW);
            self.firsts.insert(b + 1, tail[0]);
            self.blocks.insert(b + 1, tail);
        }
        true
    }

    /// Take a pair out; false if it was not there. `lo` is not asked about `id`.
    pub fn remove(&mut self, hash: u64, id: NodeId, lo: &impl Fn(NodeId) -> u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_for(hash, id, lo);
        let block = &mut self.blocks[b];
        let Ok(at) = block.binary_search_by(|q| cmp_pair(q, hash, id, lo)) else {
            return false;
        };
        block.remove(at);
        self.len -= 1;
        if block.is_empty() {
            self.blocks.remove(b);
            self.firsts.remove(b);
            return true;
        }
        if at == 0 {
            self.firsts[b] = block[0];
        }
        if block.capacity() - block.len() > 2 * BLOCK_GROW {
            block.shrink_to(block.len() + BLOCK_GROW);
        }
        if block.len() < BLOCK_MERGE_BELOW {
            self.merge_small(b);
        }
        true
    }

    /// Merge the small block `b` into a neighbour when the two fit in half a block, so that
    /// removals cannot leave a block (and its headers) per pair.
    fn merge_small(&mut self, b: usize) {
        let fits = |x: &Vec<Packed>, y: &Vec<Packed>| x.len() + y.len() <= BLOCK_MAX / 2;
        let into = if b + 1 < self.blocks.len() && fits(&self.blocks[b], &self.blocks[b + 1]) {
            b
        } else if b > 0 && fits(&self.blocks[b - 1], &self.blocks[b]) {
            b - 1
        } else {
            return;
        };
        let next = self.blocks.remove(into + 1);
        self.firsts.remove(into + 1);
        let block = &mut self.blocks[into];
        block.reserve_exact(next.len());
        block.extend_from_slice(&next);
    }

    /// The id of the first pair whose hash has the high half of `hash` and for which `is`
    /// holds: a point lookup by key, the caller's `is` checking the key a candidate's node
    /// holds (pairs share a high half about n / 2^32 of the time). The block comes from the
    /// dense `firsts`; inside it, `lower_bound` interpolates (scan hashes are uniform), so a
    /// lookup touches about two cache lines of one block where the skiplist's search touches
    /// one or two per level.
    pub fn find(&self, hash: u64, mut is: impl FnMut(NodeId) -> bool) -> Option<NodeId> {
        let hi = (hash >> 32) as u32;
        // Pairs with this high half may start in the block before the first whose first
        // pair has it.
        let mut b = self.firsts.partition_point(|f| f.hi < hi).saturating_sub(1);
        while let Some(block) = self.blocks.get(b) {
            for q in &block[lower_bound(block, hi)..] {
                if q.hi != hi {
                    return None;
                }
                if is(q.id) {
                    return Some(q.id);
                }
            }
            b += 1;
        }
        None
    }

    /// Every pair in order.
    pub fn iter<'a>(
        &'a self,
        lo: impl Fn(NodeId) -> u32 + 'a,
    ) -> impl Iterator<Item = (u64, NodeId)> + 'a {
        self.blocks.iter().flatten().map(move |q| unpack(q, &lo))
    }

    /// The pairs whose hash is `>= hash`, in order.
    pub fn from_hash<'a>(
        &'a self,
        hash: u64,
        lo: impl Fn(NodeId) -> u32 + 'a,
    ) -> impl Iterator<Item = (u64, NodeId)> + 'a {
        let (b, at) = {
            let b = self.block_for(hash, NodeId::MIN, &lo);
            let at = self.blocks.get(b).map_or(0, |block| {
                block.partition_point(|q| cmp_pair(q, hash, NodeId::MIN, &lo) == Ordering::Less)
            });
            (b, at)
        };
        let first = self.blocks.get(b).map_or(&[][..], |block| &block[at..]);
        first
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
            .map(move |q| unpack(q, &lo))
    }

    /// Heap bytes held, by capacity.
    pub fn heap_bytes(&self) -> usize {
        let packed = std::mem::size_of::<Packed>();
        self.blocks
            .iter()
            .map(|b| b.capacity() * packed)
            .sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<Packed>>()
            + self.firsts.capacity() * packed
    }

    /// Assert the module invariants. O(n log n); for tests and the store's checks.
    pub fn check_invariants(&self, lo: impl Fn(NodeId) -> u32) {
        assert_eq!(self.blocks.len(), self.firsts.len(), "blocks vs firsts");
        let mut total = 0usize;
        let mut last: Option<(u64, NodeId)> = None;
        let mut ids = std::collections::HashSet::new();
        for (i, block) in self.blocks.iter().enumerate() {
            assert!(
                (1..=BLOCK_MAX).contains(&block.len()),
                "block {i} holds {} pairs",
                block.len()
            );
            assert_eq!(self.firsts[i], block[0], "first pair of block {i}");
            for q in block {
                let p = unpack(q, &lo);
                if let Some(l) = last {
                    assert!(l < p, "pairs out of order in block {i}: {l:?} !< {p:?}");
                }
                assert!(ids.insert(q.id), "{:?} in two pairs", q.id);
                last = Some(p);
            }
            total += block.len();
        }
        assert_eq!(total, self.len, "len");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;
    use std::collections::{BTreeSet, HashMap};

    fn id(n: u32) -> NodeId {
        NodeId::from_raw(n)
    }

    /// Random inserts and removals (with hashes whose high halves collide, so the low halves
    /// are asked for, and clustered, so blocks split and merge) against a `BTreeSet` as the
    /// model, comparing every query after each step. Each id has one hash while stored, as
    /// a node has one key; `lo` answers from the model.
    #[test]
    fn matches_a_btreeset() {
        let mut p = Prng::new(5);
        let mut index = ScanIndex::new();
        let mut model = BTreeSet::new();
        let mut hash_of: HashMap<NodeId, u64> = HashMap::new();
        for step in 0..40_000u32 {
            let n = id(p.range(1, 3000) as u32);
            let remove = (step > 20_000 && p.range(0, 3) != 0) || p.range(0, 4) == 0;
            let lo = |i: NodeId| hash_of[&i] as u32;
            match hash_of.get(&n).copied() {
                Some(h) if remove => {
                    hash_of.remove(&n);
                    let lo = |i: NodeId| hash_of[&i] as u32;
                    assert!(index.remove(h, n, &lo), "remove ({h}, {n:?})");
                    assert!(model.remove(&(h, n)));
                }
                Some(h) => {
                    // Present: inserting it again, or removing it under another hash, fails.
                    assert!(!index.insert(h, n, &lo));
                    assert!(!index.remove(h ^ 1 << 40, n, &lo));
                }
                None if remove => {
                    assert!(!index.remove(p.next_u64(), n, &lo));
                }
                None => {
                    // Few distinct high halves early on (collisions), more later.
                    let h = match p.range(0, 4) {
                        0 => p.range(0, 4) << 32 | p.range(0, 8),
                        1 => p.range(0, 4) << 32 | p.next_u64() >> 32,
                        _ => p.next_u64(),
                    };
                    hash_of.insert(n, h);
                    let lo = |i: NodeId| hash_of[&i] as u32;
                    assert!(index.insert(h, n, &lo));
                    assert!(model.insert((h, n)));
                }
            }
            if step % 997 == 0 {
                let lo = |i: NodeId| hash_of[&i] as u32;
                index.check_invariants(lo);
                assert!(index.iter(lo).eq(model.iter().copied()));
                for c in [p.next_u64(), p.range(0, 4) << 32 | p.range(0, 8)] {
                    assert!(index
                        .from_hash(c, lo)
                        .eq(model.range((c, id(0))..).copied()));
                }
                // A point lookup finds every stored pair among those sharing its high half
                // (clustered high halves put them in several blocks), and nothing else.
                for &(h, n) in &model {
                    assert_eq!(index.find(h, |i| i == n), Some(n), "find ({h}, {n:?})");
                    assert_eq!(index.find(h, |_| false), None);
                }
                let absent = p.next_u64() | 1 << 63;
                let seen = |i: NodeId| hash_of[&i] >> 32 == absent >> 32;
                assert_eq!(index.find(absent, seen), None);
            }
            assert_eq!(index.len(), model.len());
        }
        let lo = |i: NodeId| hash_of[&i] as u32;
        index.check_invariants(lo);
        assert!(index.iter(lo).eq(model.iter().copied()));
        // Draining leaves nothing behind.
        for &(h, n) in &model {
            assert!(index.remove(h, n, &lo));
        }
        let lo = |_: NodeId| -> u32 { unreachable!("nothing left to ask about") };
        index.check_invariants(lo);
        assert!(index.is_empty() && index.blocks.is_empty());
    }

    /// `lower_bound` against a plain binary search, on sorted blocks of every length up to
    /// `BLOCK_MAX` whose high halves are uniform, clustered or mostly equal, for values below,
    /// inside, between and above them.
    #[test]
    fn lower_bound_matches_a_binary_search() {
        let mut p = Prng::new(11);
        for round in 0..3000 {
            let n = p.range(1, BLOCK_MAX as u64 + 1) as usize;
            let spread = [u64::from(u32::MAX), 1000, 3][round % 3];
            let mut block: Vec<Packed> = (0..n)
                .map(|i| Packed {
                    hi: p.range(0, spread + 1) as u32,
                    id: id(i as u32 + 1),
                })
                .collect();
            block.sort_unstable_by_key(|q| q.hi);
            let mut probes: Vec<u32> = vec![0, u32::MAX, block[0].hi, block[n - 1].hi];
            probes.extend((0..8).map(|_| block[p.range(0, n as u64) as usize].hi));
            probes.extend((0..8).map(|_| p.range(0, spread + 2) as u32));
            for hi in probes {
                let want = block.partition_point(|q| q.hi < hi);
                assert_eq!(lower_bound(&block, hi), want, "n {n}, hi {hi}");
            }
        }
    }

    #[test]
    fn from_pairs_keeps_the_order() {
        let mut p = Prng::new(9);
        let pairs: Vec<(u64, NodeId)> = (1..5000u32)
            .map(|n| (((p.next_u64() % 7) << 32) | (p.next_u64() % 100), id(n)))
            .collect();
        let hash_of: HashMap<NodeId, u64> = pairs.iter().map(|&(h, n)| (n, h)).collect();
        let lo = |i: NodeId| hash_of[&i] as u32;
        let model: BTreeSet<_> = pairs.iter().copied().collect();
        let index = ScanIndex::from_pairs(pairs);
        index.check_invariants(lo);
        assert!(index.iter(lo).eq(model.iter().copied()));
        let c = 3 << 32 | 50;
        assert!(index
            .from_hash(c, lo)
            .eq(model.range((c, id(0))..).copied()));
        assert!(index.from_hash(u64::MAX, lo).next().is_none());
        assert!(ScanIndex::new().from_hash(0, lo).next().is_none());
    }

    /// The point of the type: far less than a `BTreeSet`'s ~29 bytes a pair.
    #[test]
    fn random_inserts_cost_about_9_bytes_a_pair() {
        let mut p = Prng::new(1);
        let mut index = ScanIndex::new();
        let hashes: Vec<u64> = (0..100_000).map(|_| p.next_u64()).collect();
        let lo = |i: NodeId| hashes[i.raw() as usize] as u32;
        for n in 1..100_000u32 {
            index.insert(hashes[n as usize], id(n), &lo);
        }
        let per = index.heap_bytes() as f64 / index.len() as f64;
        assert!(per < 9.5, "{per:.1} bytes per pair");
    }
}
