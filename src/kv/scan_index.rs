//! `ScanIndex`: the store's keys in scan order, as `(scan hash, NodeId)` pairs, 12 bytes each.
//!
//! Owns: the ordered set of pairs behind SCAN and RANDOMKEY (`store.rs`, "Scan order"). Knows
//! nothing of keys: the store hashes them and the skiplist holds them.
//!
//! # Layout
//!
//! A `BTreeSet<(u64, NodeId)>` spends about 29 bytes per pair (measured: 16-byte elements, as
//! the u64 aligns the tuple to 8, in B-tree leaves about 70% full, plus the allocator's
//! headers). Here a pair is packed as `(hash >> 32, hash as u32, id)`: 12 bytes, aligned to 4,
//! and ordered exactly as `(hash, id)`. The pairs live in sorted blocks of at most `BLOCK_MAX`,
//! each a `Vec` grown `BLOCK_GROW` pairs at a time (so it stays nearly full), found by a binary
//! search over `firsts`, a copy of every block's first pair. An insert or removal moves at
//! most `BLOCK_MAX` pairs (6 KiB) inside one block; a full block splits in two. About 13
//! bytes per pair in all.
//!
//! # Invariants (checked by `check_invariants`)
//!
//! 1. Every block holds 1..=`BLOCK_MAX` pairs, strictly increasing within the block, and each
//!    block's last pair is below the next block's first.
//! 2. `firsts[i] == blocks[i][0]` for every block, and `len` is the total number of pairs.

use crate::kv::skiplist::NodeId;

/// Most pairs in one block: a split moves half of them, an insert at most all of them.
const BLOCK_MAX: usize = 512;
/// Pairs a block grows by when full, and the spare room it keeps at most after a removal
/// (twice this).
const BLOCK_GROW: usize = 16;
/// A block this small merges with a neighbour when the two fit in half a block.
const BLOCK_MERGE_BELOW: usize = BLOCK_MAX / 8;

/// `(hash >> 32, hash as u32, id)`: sorts as `(hash, id)`.
type Packed = (u32, u32, NodeId);

fn pack(hash: u64, id: NodeId) -> Packed {
    ((hash >> 32) as u32, hash as u32, id)
}

fn unpack(p: &Packed) -> (u64, NodeId) {
    ((u64::from(p.0) << 32) | u64::from(p.1), p.2)
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

    /// The index of exactly these pairs (in any order; duplicates count once).
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

    /// The block that holds `p` if anything does: the last one whose first pair is `<= p`
    /// (block 0 for pairs below every block).
    fn block_for(&self, p: &Packed) -> usize {
        self.firsts.partition_point(|f| f <= p).saturating_sub(1)
    }

    /// Add a pair; false if it was there already.
    pub fn insert(&mut self, hash: u64, id: NodeId) -> bool {
        let p = pack(hash, id);
        if self.blocks.is_empty() {
            let mut block = Vec::with_capacity(BLOCK_GROW);
            block.push(p);
            self.blocks.push(block);
            self.firsts.push(p);
            self.len = 1;
            return true;
        }
        let b = self.block_for(&p);
        let block = &mut self.blocks[b];
        let Err(at) = block.binary_search(&p) else {
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

    /// Take a pair out; false if it was not there.
    pub fn remove(&mut self, hash: u64, id: NodeId) -> bool {
        let p = pack(hash, id);
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_for(&p);
        let block = &mut self.blocks[b];
        let Ok(at) = block.binary_search(&p) else {
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

    /// Every pair in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, NodeId)> + '_ {
        self.blocks.iter().flatten().map(unpack)
    }

    /// The pairs whose hash is `>= hash`, in order.
    pub fn from_hash(&self, hash: u64) -> impl Iterator<Item = (u64, NodeId)> + '_ {
        let p = pack(hash, NodeId::MIN);
        let b = self.block_for(&p);
        let at = self
            .blocks
            .get(b)
            .map_or(0, |block| block.partition_point(|q| q < &p));
        let first = self.blocks.get(b).map_or(&[][..], |block| &block[at..]);
        first
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
            .map(unpack)
    }

    /// The same pairs with every id mapped by `new_id` (the skiplist was renumbered).
    pub fn renumber(&mut self, new_id: impl Fn(NodeId) -> NodeId) {
        let pairs = self.iter().map(|(h, id)| (h, new_id(id))).collect();
        *self = ScanIndex::from_pairs(pairs);
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

    /// Assert the module invariants. O(n); for tests and the store's checks.
    pub fn check_invariants(&self) {
        assert_eq!(self.blocks.len(), self.firsts.len(), "blocks vs firsts");
        let mut total = 0usize;
        let mut last: Option<&Packed> = None;
        for (i, block) in self.blocks.iter().enumerate() {
            assert!(
                (1..=BLOCK_MAX).contains(&block.len()),
                "block {i} holds {} pairs",
                block.len()
            );
            assert_eq!(self.firsts[i], block[0], "first pair of block {i}");
            for p in block {
                if let Some(q) = last {
                    assert!(q < p, "pairs out of order in block {i}: {q:?} !< {p:?}");
                }
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
    use std::collections::BTreeSet;

    fn id(n: u32) -> NodeId {
        NodeId::from_raw(n)
    }

    /// Random inserts and removals (with clustered hashes, so blocks split and merge) against
    /// a `BTreeSet` as the model, comparing every query after each step.
    #[test]
    fn matches_a_btreeset() {
        let mut p = Prng::new(5);
        let mut index = ScanIndex::new();
        let mut model = BTreeSet::new();
        for step in 0..40_000u32 {
            // Few distinct hashes early on (collisions), more later.
            let h = match p.range(0, 4) {
                0 => p.range(0, 8),
                _ => p.next_u64(),
            };
            let n = p.range(1, 3000) as u32;
            let remove = (step > 20_000 && p.range(0, 3) != 0) || p.range(0, 4) == 0;
            if remove {
                // Often remove a present pair, not just a random one.
                let target = model
                    .range((h, id(0))..)
                    .next()
                    .copied()
                    .unwrap_or((h, id(n)));
                assert_eq!(
                    index.remove(target.0, target.1),
                    model.remove(&target),
                    "remove {target:?}"
                );
            } else {
                assert_eq!(index.insert(h, id(n)), model.insert((h, id(n))));
            }
            if step % 997 == 0 {
                index.check_invariants();
                assert!(index.iter().eq(model.iter().copied()));
                let c = p.next_u64();
                assert!(index.from_hash(c).eq(model.range((c, id(0))..).copied()));
            }
            assert_eq!(index.len(), model.len());
        }
        index.check_invariants();
        assert!(index.iter().eq(model.iter().copied()));
        // Draining leaves nothing behind.
        for &(h, n) in &model {
            assert!(index.remove(h, n));
        }
        index.check_invariants();
        assert!(index.is_empty() && index.blocks.is_empty());
    }

    #[test]
    fn from_pairs_and_renumber_keep_the_order() {
        let mut p = Prng::new(9);
        let pairs: Vec<(u64, NodeId)> = (1..5000u32).map(|n| (p.next_u64() % 700, id(n))).collect();
        let model: BTreeSet<_> = pairs.iter().copied().collect();
        let mut index = ScanIndex::from_pairs(pairs);
        index.check_invariants();
        assert!(index.iter().eq(model.iter().copied()));
        // Reversing the ids reorders pairs that share a hash.
        index.renumber(|n| id(10_000 - n.raw()));
        index.check_invariants();
        let want: BTreeSet<_> = model
            .iter()
            .map(|&(h, n)| (h, id(10_000 - n.raw())))
            .collect();
        assert!(index.iter().eq(want.iter().copied()));
        assert!(index.from_hash(u64::MAX).next().is_none());
        assert!(ScanIndex::new().from_hash(0).next().is_none());
    }

    /// The point of the type: far less than a `BTreeSet`'s ~29 bytes a pair.
    #[test]
    fn random_inserts_cost_about_13_bytes_a_pair() {
        let mut p = Prng::new(1);
        let mut index = ScanIndex::new();
        for n in 1..100_000u32 {
            index.insert(p.next_u64(), id(n));
        }
        let per = index.heap_bytes() as f64 / index.len() as f64;
        assert!(per < 14.0, "{per:.1} bytes per pair");
    }
}
