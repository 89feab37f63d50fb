//! `Records`: the skiplist's key-value records, packed into size-classed pages of our own
//! instead of one `malloc` chunk each.
//!
//! Owns: where a record's bytes live, from `alloc` to `free`. Knows nothing of what the bytes
//! mean (the skiplist lays out `modified ++ key ++ value` in them) and keeps no lengths: the
//! caller passes a record's length back on every call, as the node that names it knows it.
//!
//! # Why
//!
//! A record of 8 + 16 + 256 bytes (compare.py's and redis-benchmark's keys and values) took a
//! 288-byte glibc chunk: 8 bytes of chunk header, then rounded up to 16. Here a record takes
//! its length rounded up to 8 (`GRAIN`), with no header: 280 bytes. And the node no longer
//! needs a fat `Box<[u8]>` (pointer and length) to reach it, only a 4-byte `Handle`, since
//! it keeps the key's and value's lengths anyway: a `u32`. Records of one size class share pages, so
//! freeing one leaves a slot that the next record of that class takes, instead of a hole in a
//! heap page that other allocations share.
//!
//! # Layout
//!
//! `pages` is every slot page. A `Handle` of a slot is `page << 18 | offset / GRAIN` (a page
//! is at most `PAGE_MAX` = 2^18 grains = 2 MiB, and at most `SLOT_PAGES_MAX` = 2^13 pages: 16 GiB
//! of slots). A record of `len` bytes (1..=`SLOT_MAX`) lives in a slot of `slot_size(len)`
//! bytes in a page of its class (`slot_size / GRAIN`); each class fills its newest page from
//! `fill` upwards, and keeps its freed slots on a free list threaded through the slots'
//! first 4 bytes (a `Handle`, little-endian; `NONE` ends it). A class's pages grow with it:
//! each new page is as large as the class's pages so far (at least `PAGE_MIN` and 16 slots,
//! at most `PAGE_MAX`), so a class holds at most about half its bytes, or `PAGE_MAX`, unused.
//! A record longer than `SLOT_MAX` gets a `Box<[u8]>` of its own in `large`, freed with it;
//! its handle is `LARGE | index` (the index is reused). So does a smaller record once
//! `SLOT_PAGES_MAX` pages exist (a handle can name no more), in an allocation of its slot's
//! size: a write is never refused for want of handles. Pages are anonymous mappings of
//! their own (memmap2: zeroed, resident only once written).
//!
//! # Huge pages
//!
//! A snapshot's `fork()` copies the page tables of everything the process maps, one entry per
//! 4 KiB page, and the event loop waits for it. The records are most of a node's memory, so a
//! page of `PAGE_MAX` (2 MiB, which the kernel places on a 2 MiB boundary) is advised
//! `MADV_HUGEPAGE` when the daemon runs with `huge_pages` (`set_huge_pages`): one entry per
//! page to copy. Measured (benches/cluster.rs snapshot rows, 1M keys, 288 MB per node): the
//! first version of this module used 1 MiB calloc pages, which glibc maps apart from its
//! huge-page heap, and forks took 7-27 ms; in mappings of their own advised as huge pages,
//! 2-9 ms (2-6 ms when the records were in the heap).
//!
//! # Invariants (checked by `check_invariants`, given the live records)
//!
//! 1. Live slots and free slots of a class are disjoint and all lie below their page's fill
//!    mark; a free list visits only its own class's slots, each once.
//! 2. A slot page holds slots of one class; a `large` entry is exactly one of: one live
//!    record's bytes (its length if over `SLOT_MAX`, else its slot's size, and then only
//!    once the pages ran out), or empty and on `free_large`.

use memmap2::{Advice, MmapMut};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};

/// Slot sizes are multiples of this (and so is every slot's offset in its page).
pub const GRAIN: usize = 8;
/// Longest record kept in a shared slot; longer ones get an allocation of their own.
pub const SLOT_MAX: usize = 4096;
const CLASSES: usize = SLOT_MAX / GRAIN + 1;
/// Smallest and largest slot page.
const PAGE_MIN: usize = 4096;
const PAGE_MAX: usize = GRAIN << OFFSET_BITS;
/// Slots a class's first page holds at least.
const PAGE_SLOTS_MIN: usize = 16;
/// A slot handle's low bits: the slot's offset in grains.
const OFFSET_BITS: u32 = 18;
/// The handle bit of a large record.
const LARGE: u32 = 1 << 31;
/// Most slot pages: a handle's page number has 13 bits (16 GiB of slots at `PAGE_MAX`).
pub const SLOT_PAGES_MAX: usize = 1 << (31 - OFFSET_BITS);
/// Most large records at once (`LARGE | index`, `NONE` excluded).
pub const LARGE_MAX: usize = (LARGE - 1) as usize;

/// Where a record lives: `page << 17 | offset / GRAIN` for a slot, `LARGE | index` for a large
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handle(u32);

impl Handle {
    /// No record (a free node's handle, the end of a free list).
    pub const NONE: Handle = Handle(u32::MAX);

    fn slot(page: usize, offset: usize) -> Handle {
        debug_assert!(page < SLOT_PAGES_MAX && offset < PAGE_MAX && offset.is_multiple_of(GRAIN));
        Handle((page as u32) << OFFSET_BITS | (offset / GRAIN) as u32)
    }

    fn is_large(self) -> bool {
        self.0 & LARGE != 0
    }

    /// A slot's page, or a large record's index.
    fn page(self) -> usize {
        if self.is_large() {
            (self.0 & !LARGE) as usize
        } else {
            (self.0 >> OFFSET_BITS) as usize
        }
    }

    fn offset(self) -> usize {
        (self.0 & ((1 << OFFSET_BITS) - 1)) as usize * GRAIN
    }
}

/// The bytes a record of `len` takes in a shared slot (at least one grain).
fn slot_size(len: usize) -> usize {
    len.max(GRAIN).div_ceil(GRAIN) * GRAIN
}

/// Bytes of a record of `len` in an allocation of its own: its length if large, else its
/// slot's size (a small one there only once the pages ran out).
fn own_size(len: usize) -> usize {
    if len > SLOT_MAX {
        len
    } else {
        slot_size(len)
    }
}

#[derive(Clone, Copy, Debug)]
struct Class {
    /// First free slot (`NONE`: none).
    free: Handle,
    /// The page being filled (meaningful when `capacity > 0`) and its fill mark.
    page: u32,
    fill: u32,
    /// Bytes of all this class's pages.
    capacity: usize,
}

const EMPTY_CLASS: Class = Class {
    free: Handle::NONE,
    page: 0,
    fill: 0,
    capacity: 0,
};

/// Whether full-size pages are advised `MADV_HUGEPAGE` ("Huge pages" above).
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// Whether full-size record pages ask the kernel for huge pages: the daemon's `huge_pages`
/// setting, set once at start (off by default, as in tests and benches of the library).
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, AtomicOrdering::Relaxed);
}

/// A zeroed page of `bytes`, mapped on its own.
fn map_page(bytes: usize) -> MmapMut {
    let map = match MmapMut::map_anon(bytes) {
        Ok(m) => m,
        // What the global allocator does when the kernel refuses memory (it aborts): the
        // state machine cannot apply a committed write without room for it.
        Err(e) => panic!("record page of {bytes} bytes: mmap failed: {e}"),
    };
    if bytes == PAGE_MAX && HUGE_PAGES.load(AtomicOrdering::Relaxed) {
        // A kernel that refuses (THP `never`) only leaves the page at 4 KiB pages.
        let _ = map.advise(Advice::HugePage);
    }
    map
}

/// The record pages. See the module invariants.
pub struct Records {
    pages: Vec<MmapMut>,
    classes: Box<[Class; CLASSES]>,
    /// Records longer than `SLOT_MAX`, one allocation each (empty: free).
    large: Vec<Box<[u8]>>,
    /// Indexes of empty `large` entries, to reuse.
    free_large: Vec<u32>,
    /// Bytes of all pages and large records.
    page_bytes: usize,
    /// Most slot pages (`SLOT_PAGES_MAX`; smaller in tests). Past it, a record gets an
    /// allocation of its own, as a large one does: a handle names at most this many pages.
    pages_max: usize,
}

impl Default for Records {
    fn default() -> Records {
        Records::new()
    }
}

impl Records {
    pub fn new() -> Records {
        Records {
            pages: Vec::new(),
            classes: Box::new([EMPTY_CLASS; CLASSES]),
            large: Vec::new(),
            free_large: Vec::new(),
            page_bytes: 0,
            pages_max: SLOT_PAGES_MAX,
        }
    }

    /// Records with at most `pages_max` slot pages (tests: what happens when they run out).
    #[cfg(test)]
    fn with_pages_max(pages_max: usize) -> Records {
        Records {
            pages_max,
            ..Records::new()
        }
    }

    /// Bytes of the slot pages: mapped on their own, so outside what the global allocator
    /// counts (benches add them to it).
    pub fn mapped_bytes(&self) -> usize {
        self.pages.iter().map(|p| p.len()).sum()
    }

    /// Heap bytes held: the pages, whole, the large records and the tables.
    pub fn heap_bytes(&self) -> usize {
        self.page_bytes
            + self.pages.capacity() * std::mem::size_of::<MmapMut>()
            + self.large.capacity() * std::mem::size_of::<Box<[u8]>>()
            + std::mem::size_of::<[Class; CLASSES]>()
            + self.free_large.capacity() * 4
    }

    /// Room for a record of `len` bytes (its content unspecified): fill it with `get_mut`.
    pub fn alloc(&mut self, len: usize) -> Handle {
        assert!(len > 0, "empty record");
        if len > SLOT_MAX {
            return self.alloc_own(len);
        }
        let size = slot_size(len);
        let c = size / GRAIN;
        let class = self.classes[c];
        if class.free != Handle::NONE {
            let next = self.read_handle(class.free);
            self.classes[c].free = next;
            return class.free;
        }
        if class.capacity > 0 && class.fill as usize + size <= self.pages[class.page as usize].len()
        {
            self.classes[c].fill += size as u32;
            return Handle::slot(class.page as usize, class.fill as usize);
        }
        if self.pages.len() >= self.pages_max {
            // Every page a handle can name is taken (16 GiB of small records): this record
            // gets an allocation of its own, of its slot's size, so that a value replaced in
            // place (`same_slot`) still fits. Slower and 8-16 bytes larger, never refused: a
            // committed write must apply.
            return self.alloc_own(size);
        }
        // A new page, as large as the class so far, within bounds: in whole slots, or a
        // whole `PAGE_MAX` (its tail past the last slot unused) so that it can be a huge page.
        let bytes = match class
            .capacity
            .clamp(PAGE_MIN.max(PAGE_SLOTS_MIN * size), PAGE_MAX)
        {
            PAGE_MAX => PAGE_MAX,
            b => b / size * size,
        };
        self.pages.push(map_page(bytes));
        self.page_bytes += bytes;
        let page = self.pages.len() - 1;
        let class = &mut self.classes[c];
        class.page = page as u32;
        class.fill = size as u32;
        class.capacity += bytes;
        Handle::slot(page, 0)
    }

    /// An allocation of `bytes` of its own: a large record, or a small one once the pages ran
    /// out.
    fn alloc_own(&mut self, bytes: usize) -> Handle {
        let own = vec![0u8; bytes].into_boxed_slice();
        self.page_bytes += bytes;
        let at = match self.free_large.pop() {
            Some(at) => {
                self.large[at as usize] = own;
                at as usize
            }
            None => {
                // 2^31 records of their own would take more than 16 GiB of handles' worth
                // of memory before this: an invariant, not an input check.
                assert!(self.large.len() < LARGE_MAX, "too many large records");
                self.large.push(own);
                self.large.len() - 1
            }
        };
        Handle(LARGE | at as u32)
    }

    /// Give back the record of `len` bytes at `h`.
    pub fn free(&mut self, h: Handle, len: usize) {
        if h.is_large() {
            let at = h.page();
            debug_assert_eq!(self.large[at].len(), own_size(len), "large record length");
            self.page_bytes -= self.large[at].len();
            self.large[at] = Box::default();
            self.free_large.push(at as u32);
            return;
        }
        let c = slot_size(len) / GRAIN;
        let next = self.classes[c].free;
        self.write_handle(h, next);
        self.classes[c].free = h;
    }

    /// Whether records of `a` and `b` bytes take the same slots (one may replace the other
    /// in place).
    pub fn same_slot(a: usize, b: usize) -> bool {
        a <= SLOT_MAX && b <= SLOT_MAX && slot_size(a) == slot_size(b)
    }

    /// The record of `len` bytes at `h`.
    #[inline]
    pub fn get(&self, h: Handle, len: usize) -> &[u8] {
        if h.is_large() {
            return &self.large[h.page()][..len];
        }
        let at = h.offset();
        &self.pages[h.page()][at..at + len]
    }

    /// The record of `len` bytes at `h`, to write.
    #[inline]
    pub fn get_mut(&mut self, h: Handle, len: usize) -> &mut [u8] {
        if h.is_large() {
            return &mut self.large[h.page()][..len];
        }
        let at = h.offset();
        &mut self.pages[h.page()][at..at + len]
    }

    fn read_handle(&self, h: Handle) -> Handle {
        let b = self.get(h, 4);
        Handle(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn write_handle(&mut self, h: Handle, to: Handle) {
        self.get_mut(h, 4).copy_from_slice(&to.0.to_le_bytes());
    }

    /// Assert the module invariants, given every live record as `(handle, len)`. O(pages'
    /// slots).
    pub fn check_invariants(&self, live: impl Iterator<Item = (Handle, usize)>) {
        // Each slot page's class.
        let mut owner: Vec<Option<usize>> = vec![None; self.pages.len()];
        let mut large_used = vec![false; self.large.len()];
        for &at in &self.free_large {
            assert!(
                self.large[at as usize].is_empty(),
                "free large {at} holds bytes"
            );
            assert!(
                !std::mem::replace(&mut large_used[at as usize], true),
                "large {at} freed twice"
            );
        }
        let mut used: std::collections::HashSet<Handle> = Default::default();
        let mut fills = vec![None; self.pages.len()];
        for (c, class) in self.classes.iter().enumerate() {
            if class.capacity > 0 {
                fills[class.page as usize] = Some(class.fill as usize);
            }
            let mut h = class.free;
            let mut n = 0usize;
            while h != Handle::NONE {
                assert!(!h.is_large(), "free list of class {c} holds a large record");
                self.check_slot(&mut owner, h, c);
                assert!(used.insert(h), "free slot {h:?} taken twice");
                h = self.read_handle(h);
                n += 1;
                assert!(n <= self.page_bytes / GRAIN, "free list of class {c} loops");
            }
        }
        for (h, len) in live {
            if len > SLOT_MAX || h.is_large() {
                assert!(h.is_large(), "record of {len} bytes in a slot");
                assert!(
                    len > SLOT_MAX || self.pages.len() >= self.pages_max,
                    "record of {len} bytes in an allocation of its own while pages remain"
                );
                assert_eq!(
                    self.large[h.page()].len(),
                    own_size(len),
                    "large {h:?} length"
                );
                assert!(
                    !std::mem::replace(&mut large_used[h.page()], true),
                    "large {h:?} shared"
                );
            } else {
                self.check_slot(&mut owner, h, slot_size(len) / GRAIN);
                assert!(used.insert(h), "slot {h:?} taken twice");
            }
        }
        assert!(
            large_used.iter().all(|&u| u),
            "a large record is neither live nor free"
        );
        // Below the fill mark of its class's current page (full pages are filled whole).
        for h in &used {
            if let (Some(fill), Some(c)) = (fills[h.page()], owner[h.page()]) {
                assert!(
                    h.offset() + c * GRAIN <= fill,
                    "slot {h:?} above the fill mark"
                );
            }
        }
        let bytes: usize = self.pages.iter().map(|p| p.len()).sum::<usize>()
            + self.large.iter().map(|p| p.len()).sum::<usize>();
        assert_eq!(bytes, self.page_bytes, "page bytes");
    }

    /// A slot of class `c` at `h`: within its page, and the page is one of class `c`'s.
    fn check_slot(&self, owner: &mut [Option<usize>], h: Handle, c: usize) {
        let page = &self.pages[h.page()];
        assert!(
            h.offset() + c * GRAIN <= page.len(),
            "slot {h:?} past its page"
        );
        let was = *owner[h.page()].get_or_insert(c);
        assert_eq!(was, c, "page {} holds two classes", h.page());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;

    #[test]
    fn records_keep_their_bytes_through_random_allocs_and_frees() {
        let mut p = Prng::new(7);
        let mut r = Records::new();
        // (handle, bytes written)
        let mut live: Vec<(Handle, Vec<u8>)> = Vec::new();
        for step in 0..20_000u32 {
            if live.is_empty() || p.chance(3, 5) {
                let len = match p.range(0, 10) {
                    0 => p.range(SLOT_MAX as u64 + 1, 3 * SLOT_MAX as u64) as usize,
                    1..=4 => p.range(1, 40) as usize,
                    _ => p.range(270, 300) as usize,
                };
                let mut bytes = vec![0u8; len];
                p.fill(&mut bytes);
                let h = r.alloc(len);
                r.get_mut(h, len).copy_from_slice(&bytes);
                live.push((h, bytes));
            } else {
                let i = p.range(0, live.len() as u64) as usize;
                let (h, bytes) = live.swap_remove(i);
                assert_eq!(r.get(h, bytes.len()), &bytes[..], "step {step}");
                r.free(h, bytes.len());
            }
            if step % 1000 == 0 {
                r.check_invariants(live.iter().map(|(h, b)| (*h, b.len())));
            }
        }
        for (h, bytes) in &live {
            assert_eq!(r.get(*h, bytes.len()), &bytes[..]);
        }
        r.check_invariants(live.iter().map(|(h, b)| (*h, b.len())));
    }

    #[test]
    fn a_280_byte_record_takes_280_bytes_and_freed_slots_are_reused() {
        let mut r = Records::new();
        let hs: Vec<Handle> = (0..1000).map(|_| r.alloc(280)).collect();
        // 1000 slots in pages that grow with the class: no more than twice what they hold.
        assert!(
            r.page_bytes <= 2 * 1000 * 280,
            "{} page bytes",
            r.page_bytes
        );
        assert_eq!(hs[1].offset() - hs[0].offset(), 280);
        let before = r.page_bytes;
        for &h in &hs[..500] {
            r.free(h, 280);
        }
        // 277..=280 share the class.
        for _ in 0..500 {
            r.alloc(277);
        }
        assert_eq!(r.page_bytes, before, "freed slots were not reused");
        assert!(Records::same_slot(273, 280) && !Records::same_slot(272, 273));
    }

    #[test]
    fn records_past_the_last_page_get_allocations_of_their_own() {
        // Two pages at most: the records after them must still be stored, freed, reused and
        // replaced in place, never refused (the real limit is 16 GiB of pages).
        let mut r = Records::with_pages_max(2);
        let mut live: Vec<(Handle, usize, u8)> = Vec::new();
        for i in 0..200usize {
            let len = [24, 280, 277][i % 3];
            let h = r.alloc(len);
            r.get_mut(h, len).fill(i as u8);
            live.push((h, len, i as u8));
        }
        assert_eq!(r.pages.len(), 2, "pages past the limit");
        assert!(
            live.iter().any(|(h, _, _)| h.is_large()),
            "no record past the pages"
        );
        r.check_invariants(live.iter().map(|&(h, len, _)| (h, len)));
        // A value replaced in place by one of the same slot size fits its own allocation.
        let (h, len, _) = *live
            .iter()
            .rev()
            .find(|(h, len, _)| h.is_large() && *len == 277)
            .expect("own 277");
        assert!(Records::same_slot(len, 280));
        r.get_mut(h, 280).fill(0xEE);
        let at = live.iter().position(|&(x, _, _)| x == h).expect("live");
        live[at] = (h, 280, 0xEE);
        // Free every other record, then allocate again: bytes of the rest survive.
        let mut kept = Vec::new();
        for (n, (h, len, b)) in live.into_iter().enumerate() {
            if n % 2 == 0 {
                r.free(h, len);
            } else {
                kept.push((h, len, b));
            }
        }
        for i in 0..100usize {
            let h = r.alloc(280);
            r.get_mut(h, 280).fill(i as u8);
            kept.push((h, 280, i as u8));
        }
        for &(h, len, b) in &kept {
            assert!(
                r.get(h, len).iter().all(|&x| x == b),
                "record {h:?} lost its bytes"
            );
        }
        r.check_invariants(kept.iter().map(|&(h, len, _)| (h, len)));
    }

    #[test]
    fn a_large_record_gets_an_allocation_of_its_own_and_gives_it_back() {
        let mut r = Records::new();
        let h = r.alloc(SLOT_MAX + 1);
        assert!(h.is_large());
        assert_eq!(r.page_bytes, SLOT_MAX + 1);
        r.free(h, SLOT_MAX + 1);
        assert_eq!(r.page_bytes, 0);
        let again = r.alloc(100_000);
        assert_eq!(again, h, "the index is reused");
        r.check_invariants([(again, 100_000)].into_iter());
    }
}
