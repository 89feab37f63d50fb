//! The hashes behind the state hash: a fast seeded 64-bit hash of bytes, the hash one stored
//! pair contributes, and how a store's parts combine into its state hash.
//!
//! Shared by the store (kept incrementally) and the snapshot loader (recomputed record by
//! record), so neither imports the other. NB: not cryptographic; they detect divergence, not
//! malice. Changing any of them changes every state hash and snapshot trailer.

use crate::raft::LogIndex;

const K: u64 = 0x9e37_79b9_7f4a_7c15;

pub fn fmix64(mut h: u64) -> u64 {
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
    hash64(hash64(0x006b_6579, key), value)
}

/// The state hash of a store with these parts (shared with the snapshot loader).
pub fn combine_state_hash(applied: LogIndex, keys: usize, entries_hash: u64) -> u64 {
    fmix64(entries_hash ^ fmix64(applied.0 ^ 0x0061_7070_6c69_6564) ^ (keys as u64).wrapping_mul(K))
}

/// The parts of the state added with snapshot format 2: the applied leader stamp, the expiry
/// table's hash and the client sessions' hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraParts {
    pub stamp_ms: u64,
    pub expiries_hash: u64,
    pub sessions_hash: u64,
    /// `watch_hash` of the keys' modified stamps and the last deletion index.
    pub watch_hash: u64,
}

/// Mix `x` into a state hash from `combine_state_hash`. A zero part adds nothing
/// (`fmix64(0) == 0`), so a state without a stamp, TTLs or sessions hashes as before (and a
/// format 1 snapshot keeps its stored hash).
pub fn mix_extra_parts(base: u64, x: &ExtraParts) -> u64 {
    base ^ fmix64(x.stamp_ms).rotate_left(17)
        ^ fmix64(x.expiries_hash).rotate_left(31)
        ^ fmix64(x.sessions_hash).rotate_left(47)
        ^ fmix64(x.watch_hash).rotate_left(7)
}

/// The hash one key's modified stamp (the index that last wrote it) contributes; 0 for stamp
/// 0, so a state loaded from a format 1 snapshot (all stamps 0) hashes as it did.
pub fn modified_hash(key: &[u8], modified: u64) -> u64 {
    if modified == 0 {
        return 0;
    }
    hash64(modified ^ 0x6d6f_6469_6669_6564, key)
}

/// The WATCH part of the state: the wrapping sum of `modified_hash` over the keys, and the
/// index of the last deletion (0 adds nothing).
pub fn watch_hash(modified_sum: u64, last_deletion: LogIndex) -> u64 {
    modified_sum.wrapping_add(fmix64(last_deletion.0).rotate_left(5))
}
