//! Log entry payloads, packed into blocks mapped outside the heap and given back to the kernel
//! whole.
//!
//! Owns: where a log entry's bytes live from the moment they are proposed, received from a
//! leader or read back from the log, until the last holder (the log view, after a snapshot
//! compacts the entry) lets them go. Knows nothing of what the bytes mean.
//!
//! Why not one heap allocation per payload (`Arc<[u8]>`, as before): a payload lives until a
//! snapshot compacts its entry, while the state machine's records, allocated when the entry
//! is applied, live on. Allocated from the same heap, the two interleave on every page, and
//! when a compaction frees 100k+ payloads at once the holes stay resident: glibc can only give
//! back whole free pages, and a live record sits on nearly every one. Measured (issue 16,
//! `redis-benchmark -t set -n 1000000 -r 1000000 -d 256` into a 3-node cluster, 632k keys, the
//! log compacted down to 10k entries): 240 MB in use but 372 MB resident on the leader, and
//! `malloc_trim(0)` returned only 8 MB of it. Here payloads are appended to blocks of
//! `BLOCK_SIZE` bytes mapped anonymously (memmap2); a block is unmapped when the last payload
//! in it is dropped. Entries are compacted in log order, so blocks empty in the order they
//! filled, and the heap keeps only the records.
//!
//! The blocks of a thread are filled by that thread's arena (a `thread_local!`); a `Payload`
//! may be sent to and dropped on any thread. A payload longer than `SHARED_MAX` gets a block
//! of its own, sized to it; the empty payload names no block.
//!
//! Invariants:
//! 1. A block's bytes below its arena's fill mark are never written again; every `Payload`
//!    names a range below the mark of the block it holds.
//! 2. Only the arena that created a block writes into it, only above the mark, and only
//!    through the one `&mut [u8]` that `Payload::build` hands out before the payload exists.
//! 3. A block lives (stays mapped) as long as any `Payload` or the arena holds it (`Arc`).
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use memmap2::MmapMut;

/// Bytes per shared block: about 850 entries of a 256-byte SET.
pub const BLOCK_SIZE: usize = 256 * 1024;

/// Payloads longer than this get a block of their own, so that one large entry never leaves
/// most of a shared block unused.
pub const SHARED_MAX: usize = 16 * 1024;

/// One anonymous mapping. Its bytes are reached through `base`, taken once while the mapping
/// was still owned exclusively (the `MmapMut` is kept only to unmap it on drop).
struct Block {
    base: *mut u8,
    len: usize,
    _map: MmapMut,
}

// SAFETY: a block's bytes are written only by the arena that created it, above its fill mark
// (invariant 2), and read only below it (invariant 1); a range is published (a `Payload`
// created) after its bytes are written, and any hand-off to another thread goes through that
// thread's own synchronisation (a channel, a join), which orders the write before the reads.
// Sharing a block between threads therefore never lets two of them touch the same byte with
// one of them writing.
unsafe impl Send for Block {}
// SAFETY: as for Send: `&Block` only ever yields reads of published, immutable ranges.
unsafe impl Sync for Block {}

impl Block {
    /// A fresh zeroed mapping of `len` bytes (at least 1).
    fn map(len: usize) -> Block {
        let mut map = match MmapMut::map_anon(len.max(1)) {
            Ok(map) => map,
            // Anonymous memory cannot be had: the same condition the global allocator
            // answers with an abort, so answer it the same way.
            Err(e) => panic!("payload block of {len} bytes: mmap failed: {e}"),
        };
        // Not inherited by a fork()ed child (MADV_DONTFORK): the snapshot child writes the
        // state machine only and never reads a log payload, and the blocks are the log's
        // whole tail since the last snapshot, mapped 4 KiB at a time (a block is too small
        // for a huge page). Copying their page-table entries was most of the fork's pause
        // (the event loop's) once the log had grown to a snapshot's worth. A kernel that
        // refuses only costs that pause.
        let _ = map.advise(memmap2::Advice::DontFork);
        Block {
            base: map.as_mut_ptr(),
            len: map.len(),
            _map: map,
        }
    }
}

/// A log entry's bytes: cheap to clone (a reference count), immutable, `Deref`s to `[u8]`.
#[derive(Clone)]
pub struct Payload {
    /// `None` for the empty payload.
    block: Option<Arc<Block>>,
    start: u32,
    len: u32,
}

/// The blocks one thread is filling.
struct Arena {
    /// The block being filled, and its fill mark.
    current: Option<Arc<Block>>,
    filled: usize,
}

thread_local! {
    static ARENA: RefCell<Arena> = const { RefCell::new(Arena { current: None, filled: 0 }) };
}

impl Arena {
    /// Reserves `len` bytes (1..=SHARED_MAX) in the current block, starting a new one when it
    /// is full: the block and the range's start.
    fn reserve(&mut self, len: usize) -> (Arc<Block>, usize) {
        debug_assert!(len > 0 && len <= SHARED_MAX);
        let fits = self
            .current
            .as_ref()
            .is_some_and(|b| b.len - self.filled >= len);
        if !fits {
            // The full block is reused only if nothing names it any more (its pages are warm);
            // otherwise it stays alive through its payloads alone and a new one is mapped.
            let reusable = self
                .current
                .as_mut()
                .is_some_and(|b| Arc::get_mut(b).is_some());
            if !reusable {
                self.current = Some(Arc::new(Block::map(BLOCK_SIZE)));
            }
            self.filled = 0;
        }
        let block = self.current.clone().expect("a block was just ensured");
        let start = self.filled;
        self.filled += len;
        (block, start)
    }
}

impl Payload {
    /// The empty payload.
    pub const fn empty() -> Payload {
        Payload {
            block: None,
            start: 0,
            len: 0,
        }
    }

    /// A payload of `len` bytes, written by `fill` (which must write all of them; they start
    /// zeroed or holding earlier bytes of a reused block).
    pub fn build(len: usize, fill: impl FnOnce(&mut [u8])) -> Payload {
        assert!(len <= u32::MAX as usize, "payload of {len} bytes");
        if len == 0 {
            fill(&mut []);
            return Payload::empty();
        }
        let (block, start) = if len > SHARED_MAX {
            (Arc::new(Block::map(len)), 0)
        } else {
            ARENA.with(|a| a.borrow_mut().reserve(len))
        };
        debug_assert!(start + len <= block.len);
        // SAFETY: [start, start + len) lies inside the mapping (reserve and Block::map size
        // it), is above every range published from this block (invariant 1: the fill mark
        // moved past it just now, or the block is new or was reused with no payload left
        // naming it), and no other reference to it exists until `fill` returns: the slice is
        // unique.
        let buf = unsafe { std::slice::from_raw_parts_mut(block.base.add(start), len) };
        fill(buf);
        Payload {
            block: Some(block),
            start: start as u32,
            len: len as u32,
        }
    }

    /// A payload holding a copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Payload {
        Payload::build(bytes.len(), |buf| buf.copy_from_slice(bytes))
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.block {
            None => &[],
            // SAFETY: the range was written before this payload was created and is never
            // written again (invariant 1); the block stays mapped while `self` holds it
            // (invariant 3).
            Some(b) => unsafe {
                std::slice::from_raw_parts(b.base.add(self.start as usize), self.len as usize)
            },
        }
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::empty()
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Payload {
        Payload::copy_from(bytes)
    }
}

impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(bytes: &[u8; N]) -> Payload {
        Payload::copy_from(bytes)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::copy_from(&bytes)
    }
}

impl From<&Vec<u8>> for Payload {
    fn from(bytes: &Vec<u8>) -> Payload {
        Payload::copy_from(bytes)
    }
}

impl From<&str> for Payload {
    fn from(s: &str) -> Payload {
        Payload::copy_from(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` line of the mapping in /proc/self/smaps that holds `addr`.
    fn vm_flags_at(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.to_string();
                }
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn blocks_are_not_copied_into_a_forked_child() {
        // A shared block and a block of its own: both marked MADV_DONTFORK ("dc"), so a
        // snapshot's fork does not copy the log's page tables.
        for len in [100, SHARED_MAX + 1] {
            let p = Payload::build(len, |b| b.fill(7));
            let flags = vm_flags_at(p.as_ptr() as usize);
            assert!(
                flags.split_whitespace().any(|f| f == "dc"),
                "payload of {len} bytes: VmFlags{flags}"
            );
        }
    }

    #[test]
    fn payloads_keep_their_bytes_across_blocks() {
        // Enough payloads of varied sizes to fill several blocks; every one must still read
        // back exactly what was written, whatever was written after it.
        let mut kept = Vec::new();
        let mut total = 0;
        for i in 0..4000usize {
            let len = 1 + (i * 7919) % 700;
            let bytes: Vec<u8> = (0..len).map(|k| (i + k) as u8).collect();
            total += len;
            kept.push((Payload::from(&bytes), bytes));
        }
        assert!(total > 3 * BLOCK_SIZE, "the test must cross blocks");
        for (p, bytes) in &kept {
            assert_eq!(&**p, &bytes[..]);
        }
    }

    #[test]
    fn a_block_is_unmapped_with_its_last_payload() {
        let first = Payload::copy_from(b"first");
        let weak = Arc::downgrade(first.block.as_ref().unwrap());
        let second = first.clone();
        drop(first);
        // Move the arena on to a new block while `second` still names the old one.
        let filler = vec![0u8; SHARED_MAX];
        let mut later = Vec::new();
        loop {
            let p = Payload::copy_from(&filler);
            let moved = !std::ptr::eq(Arc::as_ptr(p.block.as_ref().unwrap()), weak.as_ptr());
            later.push(p);
            if moved {
                break;
            }
            assert!(
                later.len() <= 2 * BLOCK_SIZE / SHARED_MAX,
                "the arena never moved on"
            );
        }
        drop(later);
        assert!(weak.upgrade().is_some(), "a clone still names the block");
        drop(second);
        assert!(
            weak.upgrade().is_none(),
            "the block outlived its last payload"
        );
    }

    #[test]
    fn a_full_block_nothing_names_is_reused() {
        let filler = vec![7u8; SHARED_MAX];
        // Fill the current block to the end, dropping every payload as it is made.
        let p = Payload::copy_from(&filler);
        let block = Arc::as_ptr(p.block.as_ref().unwrap());
        drop(p);
        for _ in 0..BLOCK_SIZE / SHARED_MAX {
            drop(Payload::copy_from(&filler));
        }
        let after = Payload::copy_from(&filler);
        assert_eq!(Arc::as_ptr(after.block.as_ref().unwrap()), block);
        assert_eq!(&*after, &filler[..]);
    }

    #[test]
    fn large_and_empty_payloads() {
        let big = vec![3u8; SHARED_MAX + 1];
        let p = Payload::from(&big);
        assert_eq!(p.block.as_ref().unwrap().len, SHARED_MAX + 1);
        assert_eq!(&*p, &big[..]);
        let e = Payload::from(&b""[..]);
        assert!(e.block.is_none() && e.is_empty());
        assert_eq!(e, Payload::empty());
        assert_eq!(Payload::from("ab"), Payload::from(vec![b'a', b'b']));
    }
}
