//! A hashed timing wheel: `schedule(deadline_tick, id)`, `cancel(handle)`, `advance(now_tick)`.
//!
//! Owns: the pending timers and the wheel's notion of "now" (the last tick it was advanced to).
//! Must not: read the clock (time arrives as `now_tick` from `node/clock.rs`), allocate beyond
//! `TIMERS_MAX` entries, or call back into anything (it hands back ids, never closures).
//!
//! Layout: a slab of timer entries (`entries`, reused through a free list) and
//! `WHEEL_SLOTS + 1` intrusive doubly-linked lists threaded through it. List `s < WHEEL_SLOTS`
//! holds the timers whose deadline is `≡ s (mod WHEEL_SLOTS)`; each entry keeps its full
//! deadline, so a deadline many revolutions away simply stays in its slot until a visit finds
//! it due (no per-revolution "rounds" counter to maintain). The extra list `DUE` holds timers
//! scheduled at or before "now": they fire at the next `advance`, whatever its argument.
//!
//! `advance(now)` visits the slots of the ticks in `(self.now, now]`, but at most
//! `WHEEL_SLOTS` of them: a jump of a million ticks costs one visit of each slot, not a million.
//! Due entries are collected, sorted by `(deadline, seq)` and reported in that order, so ties
//! fire in schedule order.
//!
//! Invariants:
//! 1. Every entry in slot list `s` has `deadline & SLOT_MASK == s` and `deadline > self.now`.
//!    (This is what makes a visit of only the slots of `(old_now, new_now]` complete.)
//! 2. Every entry in the `DUE` list has `deadline <= self.now`.
//! 3. `len` equals the number of entries in all lists together, and `len <= TIMERS_MAX`.
//! 4. An entry is live (`id.is_some()`) iff it is on exactly one list; a free entry is on the
//!    free list only, and its generation was bumped when it was freed, so every handle to its
//!    previous life is stale.
//! 5. `slot_min[l]`, when `Some(m)`, is the exact smallest deadline on list `l` (`u64::MAX` for
//!    an empty list); `None` means "unknown, scan to learn it".

use std::cell::Cell;
use std::fmt;

use crate::limits::{TIMERS_MAX, WHEEL_SLOTS};

const SLOT_MASK: u64 = WHEEL_SLOTS as u64 - 1;
/// The list of timers already due when scheduled.
const DUE: usize = WHEEL_SLOTS;
const LISTS: usize = WHEEL_SLOTS + 1;
/// "No entry" in a link.
const NIL: u32 = u32::MAX;

const _: () = assert!(TIMERS_MAX < NIL as usize);

/// Names one scheduled timer, for `cancel`. Copy, and cheap to keep in a connection or a
/// peer record. A handle whose timer fired or was cancelled is stale: `cancel` returns false
/// for it, even after its entry has been reused by another timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    index: u32,
    generation: u64,
}

/// Why a timer could not be scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerError {
    /// `TIMERS_MAX` timers are already pending.
    Full { max: usize },
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerError::Full { max } => write!(f, "timer wheel full ({max} timers pending)"),
        }
    }
}

impl std::error::Error for TimerError {}

#[derive(Debug)]
struct TimerEntry<T> {
    deadline: u64,
    /// Schedule order, to fire equal deadlines first-scheduled first.
    seq: u64,
    generation: u64,
    /// `Some` while scheduled (invariant 4).
    id: Option<T>,
    /// The list this entry is on, when live.
    list: u32,
    prev: u32,
    next: u32,
}

/// A hashed timing wheel of `WHEEL_SLOTS` slots holding at most `TIMERS_MAX` timers, each
/// carrying a small `Copy` id (e.g. `enum TimerId { Election, Heartbeat, Reconnect(NodeId) }`).
#[derive(Debug)]
pub struct TimerWheel<T: Copy> {
    entries: Vec<TimerEntry<T>>,
    /// Head of the free list of `entries` (linked through `next`).
    free: u32,
    heads: Vec<u32>,
    /// Cached exact minimum deadline per list (invariant 5); a `Cell` so that
    /// `next_deadline(&self)` can remember what it scanned.
    slot_min: Vec<Cell<Option<u64>>>,
    /// The tick of the last `advance` (or of `new`).
    now: u64,
    next_seq: u64,
    len: usize,
    /// Reused by `advance`: (deadline, seq, entry index) of the timers that fire.
    scratch: Vec<(u64, u64, u32)>,
}

impl<T: Copy> TimerWheel<T> {
    /// An empty wheel whose "now" is `now_tick`.
    pub fn new(now_tick: u64) -> Self {
        TimerWheel {
            entries: Vec::new(),
            free: NIL,
            heads: vec![NIL; LISTS],
            slot_min: (0..LISTS).map(|_| Cell::new(Some(u64::MAX))).collect(),
            now: now_tick,
            next_seq: 0,
            len: 0,
            scratch: Vec::new(),
        }
    }

    /// Schedules `id` to fire at the first `advance` whose `now_tick >= deadline_tick`. A
    /// deadline at or before the wheel's now fires at the next `advance`. O(1).
    pub fn schedule(&mut self, deadline_tick: u64, id: T) -> Result<TimerHandle, TimerError> {
        if self.len >= TIMERS_MAX {
            return Err(TimerError::Full { max: TIMERS_MAX });
        }
        let list = if deadline_tick <= self.now {
            DUE
        } else {
            (deadline_tick & SLOT_MASK) as usize
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = self.alloc(deadline_tick, seq, id);
        self.link(list, index);
        self.len += 1;
        let generation = self.entries[index as usize].generation;
        Ok(TimerHandle { index, generation })
    }

    /// Cancels a pending timer. Returns false, and changes nothing, for a handle whose timer
    /// already fired or was cancelled, or that this wheel never issued. O(1).
    pub fn cancel(&mut self, h: TimerHandle) -> bool {
        let live = match self.entries.get(h.index as usize) {
            Some(e) => e.generation == h.generation && e.id.is_some(),
            None => false,
        };
        if !live {
            return false;
        }
        self.unlink(h.index);
        self.release(h.index);
        true
    }

    /// Moves the wheel's now to `now_tick` and appends to `fired` the id of every timer whose
    /// deadline is `<= now_tick`, in deadline order (equal deadlines in schedule order). A
    /// `now_tick` earlier than the wheel's now is treated as no time passing (timers already
    /// due still fire). Work: at most `WHEEL_SLOTS` slot visits plus the timers on them.
    pub fn advance(&mut self, now_tick: u64, fired: &mut Vec<T>) {
        let mut due = std::mem::take(&mut self.scratch);
        debug_assert!(due.is_empty());
        self.collect_list(DUE, u64::MAX, &mut due);
        if now_tick > self.now {
            let elapsed = now_tick - self.now;
            let visits = elapsed.min(WHEEL_SLOTS as u64);
            for k in 1..=visits {
                let slot = (self.now.wrapping_add(k) & SLOT_MASK) as usize;
                self.collect_list(slot, now_tick, &mut due);
            }
            self.now = now_tick;
        }
        due.sort_unstable_by_key(|&(deadline, seq, _)| (deadline, seq));
        fired.reserve(due.len());
        for &(_, _, index) in &due {
            let id = self.entries[index as usize]
                .id
                .expect("a collected timer is live");
            fired.push(id);
            self.release(index);
        }
        due.clear();
        self.scratch = due;
    }

    /// The earliest pending deadline, if any (the loop's poll timeout). O(WHEEL_SLOTS) plus a
    /// scan of the lists whose cached minimum a cancel invalidated; a full scan of every
    /// timer only when no timer is due within one revolution.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        if let Some(due_min) = self.list_min(DUE) {
            // Invariant 2: due timers are no later than any timer on the wheel (invariant 1).
            return Some(due_min);
        }
        let mut best: Option<u64> = None;
        for k in 1..=WHEEL_SLOTS as u64 {
            let tick = self.now.wrapping_add(k);
            let Some(m) = self.list_min((tick & SLOT_MASK) as usize) else {
                continue;
            };
            if m == tick {
                // Invariant 1: every earlier slot's timers are at least a revolution later.
                return Some(tick);
            }
            best = Some(best.map_or(m, |b| b.min(m)));
        }
        assert!(best.is_some(), "{} timers pending but none found", self.len);
        best
    }

    /// Timers pending.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tick of the last `advance` (or of `new`).
    pub fn now(&self) -> u64 {
        self.now
    }

    fn alloc(&mut self, deadline: u64, seq: u64, id: T) -> u32 {
        if self.free != NIL {
            let index = self.free;
            let e = &mut self.entries[index as usize];
            assert!(e.id.is_none(), "free entry {index} is live");
            self.free = e.next;
            e.deadline = deadline;
            e.seq = seq;
            e.id = Some(id);
            return index;
        }
        let index = self.entries.len();
        assert!(
            index < TIMERS_MAX,
            "slab of {index} entries beyond TIMERS_MAX"
        );
        self.entries.push(TimerEntry {
            deadline,
            seq,
            generation: 0,
            id: Some(id),
            list: NIL,
            prev: NIL,
            next: NIL,
        });
        index as u32
    }

    /// Returns an unlinked entry to the free list, making its handles stale (invariant 4).
    fn release(&mut self, index: u32) {
        let e = &mut self.entries[index as usize];
        assert!(e.id.is_some(), "releasing free entry {index}");
        e.id = None;
        e.generation += 1;
        e.list = NIL;
        e.prev = NIL;
        e.next = self.free;
        self.free = index;
        self.len -= 1;
    }

    fn link(&mut self, list: usize, index: u32) {
        let head = self.heads[list];
        let deadline = {
            let e = &mut self.entries[index as usize];
            e.list = list as u32;
            e.prev = NIL;
            e.next = head;
            e.deadline
        };
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[list] = index;
        let cell = &self.slot_min[list];
        if let Some(m) = cell.get() {
            cell.set(Some(m.min(deadline)));
        }
    }

    fn unlink(&mut self, index: u32) {
        let (list, prev, next, deadline) = {
            let e = &self.entries[index as usize];
            (e.list as usize, e.prev, e.next, e.deadline)
        };
        assert!(list < LISTS, "unlinking entry {index} on no list");
        if prev == NIL {
            assert_eq!(
                self.heads[list], index,
                "entry {index} not the head of list {list}"
            );
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        let cell = &self.slot_min[list];
        if self.heads[list] == NIL {
            cell.set(Some(u64::MAX));
        } else if cell.get() == Some(deadline) {
            cell.set(None);
        }
    }

    /// Unlinks every entry on `list` with `deadline <= limit` into `due`, and recomputes the
    /// list's minimum from the ones that stay.
    fn collect_list(&mut self, list: usize, limit: u64, due: &mut Vec<(u64, u64, u32)>) {
        let mut cursor = self.heads[list];
        let mut min = u64::MAX;
        while cursor != NIL {
            let (deadline, seq, next) = {
                let e = &self.entries[cursor as usize];
                (e.deadline, e.seq, e.next)
            };
            if deadline <= limit {
                self.unlink(cursor);
                due.push((deadline, seq, cursor));
            } else {
                min = min.min(deadline);
            }
            cursor = next;
        }
        self.slot_min[list].set(Some(min));
    }

    /// The smallest deadline on `list` (`None` if empty), from the cache or by a scan that
    /// refills the cache.
    fn list_min(&self, list: usize) -> Option<u64> {
        if self.heads[list] == NIL {
            return None;
        }
        if let Some(m) = self.slot_min[list].get() {
            return Some(m);
        }
        let mut min = u64::MAX;
        let mut cursor = self.heads[list];
        while cursor != NIL {
            let e = &self.entries[cursor as usize];
            min = min.min(e.deadline);
            cursor = e.next;
        }
        self.slot_min[list].set(Some(min));
        Some(min)
    }

    /// Checks invariants 1-5 by walking every list. O(timers); for tests.
    pub fn check_invariants(&self) {
        let mut seen = 0usize;
        for (list, &head) in self.heads.iter().enumerate() {
            let mut cursor = head;
            let mut prev = NIL;
            let mut min = u64::MAX;
            while cursor != NIL {
                let e = &self.entries[cursor as usize];
                assert!(e.id.is_some(), "free entry {cursor} on list {list}");
                assert_eq!(e.list as usize, list, "entry {cursor} on the wrong list");
                assert_eq!(e.prev, prev, "entry {cursor} has a broken back link");
                if list == DUE {
                    assert!(
                        e.deadline <= self.now,
                        "due {} > now {}",
                        e.deadline,
                        self.now
                    );
                } else {
                    assert_eq!((e.deadline & SLOT_MASK) as usize, list, "entry {cursor}");
                    assert!(e.deadline > self.now, "{} <= now {}", e.deadline, self.now);
                }
                min = min.min(e.deadline);
                seen += 1;
                assert!(
                    seen <= self.len,
                    "more linked entries than len {}",
                    self.len
                );
                prev = cursor;
                cursor = e.next;
            }
            match self.slot_min[list].get() {
                Some(m) if head != NIL => assert_eq!(m, min, "stale cached minimum of {list}"),
                _ => {}
            }
        }
        assert_eq!(seen, self.len, "linked entries vs len");
        assert!(self.len <= TIMERS_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::Prng;
    use std::collections::{BTreeMap, HashMap};

    fn advance(w: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut fired = Vec::new();
        w.advance(now, &mut fired);
        fired
    }

    #[test]
    fn timers_fire_in_deadline_order_with_ties_in_schedule_order() {
        let mut w = TimerWheel::new(100);
        w.schedule(105, 1).unwrap();
        w.schedule(103, 2).unwrap();
        w.schedule(105, 3).unwrap();
        w.schedule(103, 4).unwrap();
        assert_eq!(advance(&mut w, 102), Vec::<u32>::new());
        assert_eq!(w.next_deadline(), Some(103));
        assert_eq!(advance(&mut w, 110), vec![2, 4, 1, 3]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn a_deadline_at_or_before_now_fires_at_the_next_advance_even_without_time_passing() {
        let mut w = TimerWheel::new(50);
        w.schedule(50, 1).unwrap();
        w.schedule(10, 2).unwrap();
        assert_eq!(w.next_deadline(), Some(10));
        assert_eq!(advance(&mut w, 50), vec![2, 1]);
        w.schedule(49, 3).unwrap();
        assert_eq!(
            advance(&mut w, 40),
            vec![3],
            "time going back still fires due timers"
        );
        assert_eq!(w.now(), 50);
    }

    #[test]
    fn cancel_is_false_for_fired_cancelled_and_reused_handles() {
        let mut w = TimerWheel::new(0);
        let a = w.schedule(5, 1).unwrap();
        let b = w.schedule(6, 2).unwrap();
        assert!(w.cancel(b));
        assert!(!w.cancel(b), "cancelled twice");
        assert_eq!(advance(&mut w, 10), vec![1]);
        assert!(!w.cancel(a), "cancelled after firing");
        // The freed entries are reused; the old handles must stay stale.
        let c = w.schedule(20, 3).unwrap();
        let d = w.schedule(20, 4).unwrap();
        assert!(!w.cancel(a) && !w.cancel(b));
        assert!(!w.cancel(TimerHandle {
            index: 9999,
            generation: 0
        }));
        assert!(w.cancel(c) && w.cancel(d));
        assert!(w.is_empty());
    }

    #[test]
    fn deadlines_many_revolutions_away_wait_for_their_tick() {
        let slots = WHEEL_SLOTS as u64;
        let mut w = TimerWheel::new(0);
        w.schedule(3 * slots + 7, 1).unwrap();
        w.schedule(7, 2).unwrap();
        assert_eq!(advance(&mut w, 7), vec![2]);
        assert_eq!(w.next_deadline(), Some(3 * slots + 7));
        assert_eq!(advance(&mut w, slots + 7), Vec::<u32>::new());
        assert_eq!(advance(&mut w, 3 * slots + 6), Vec::<u32>::new());
        assert_eq!(advance(&mut w, 3 * slots + 7), vec![1]);
    }

    #[test]
    fn a_huge_jump_fires_everything_due_in_order_and_keeps_the_rest() {
        let mut w = TimerWheel::new(1_000);
        for i in 0..2_000u32 {
            w.schedule(1_000 + u64::from(i) * 37, i).unwrap();
        }
        w.schedule(u64::MAX, 9_999).unwrap();
        let fired = advance(&mut w, 1_000 + 1_000 * 37);
        assert_eq!(fired, (0..=1_000).collect::<Vec<u32>>());
        assert_eq!(advance(&mut w, 1 << 40).len(), 999);
        assert_eq!(w.next_deadline(), Some(u64::MAX));
        assert_eq!(advance(&mut w, u64::MAX), vec![9_999]);
    }

    #[test]
    fn schedule_fails_when_full_and_succeeds_again_after_a_cancel() {
        let mut w = TimerWheel::new(0);
        let mut first = None;
        for i in 0..TIMERS_MAX {
            let h = w.schedule(1 + i as u64 % 5_000, i as u32).unwrap();
            first.get_or_insert(h);
        }
        assert_eq!(w.schedule(1, 0), Err(TimerError::Full { max: TIMERS_MAX }));
        assert!(w.cancel(first.unwrap()));
        assert!(w.schedule(1, 0).is_ok());
        assert_eq!(w.len(), TIMERS_MAX);
    }

    /// The wheel against a naive model: a `BTreeMap` of (deadline, seq) -> id.
    fn run_against_model(seed: u64, ops: usize) {
        let mut rng = Prng::new(seed);
        let mut now = rng.range(0, 1 << 50);
        let mut w = TimerWheel::new(now);
        let mut model: BTreeMap<(u64, u64), u32> = BTreeMap::new();
        let mut handles: Vec<(TimerHandle, u64, u64)> = Vec::new(); // live or stale
        let mut by_handle: HashMap<TimerHandle, (u64, u64)> = HashMap::new();
        let mut seq = 0u64;
        let slots = WHEEL_SLOTS as u64;
        for op in 0..ops {
            let r = rng.range(0, 100);
            if r < 45 {
                let deadline = match rng.range(0, 10) {
                    0 => now.saturating_sub(rng.range(0, 100)),
                    1..=6 => now + rng.range(0, 2 * slots),
                    7 | 8 => now + rng.range(0, 50 * slots),
                    _ => now + rng.range(0, 1 << 30),
                };
                let id = op as u32;
                let h = w
                    .schedule(deadline, id)
                    .expect("model stays far below TIMERS_MAX");
                model.insert((deadline, seq), id);
                by_handle.insert(h, (deadline, seq));
                handles.push((h, deadline, seq));
                seq += 1;
            } else if r < 70 && !handles.is_empty() {
                let i = rng.range(0, handles.len() as u64) as usize;
                let (h, _, _) = handles.swap_remove(i);
                let expect = match by_handle.remove(&h) {
                    Some(key) => model.remove(&key).is_some(),
                    None => false,
                };
                assert_eq!(w.cancel(h), expect, "seed {seed} op {op}: cancel {h:?}");
            } else if r < 72 {
                let bogus = TimerHandle {
                    index: rng.range(0, 1 << 20) as u32,
                    generation: rng.range(0, 4),
                };
                let expect = by_handle.get(&bogus).is_some_and(|k| model.contains_key(k));
                assert_eq!(w.cancel(bogus), expect, "seed {seed} op {op}: bogus cancel");
                if expect {
                    let key = by_handle.remove(&bogus).unwrap();
                    model.remove(&key);
                }
            } else {
                now = match rng.range(0, 20) {
                    0 => now + rng.range(slots, 1 << 24),      // a stall
                    1 => now.saturating_sub(rng.range(0, 10)), // time going back
                    _ => now + rng.range(0, 8),
                };
                let mut fired = Vec::new();
                w.advance(now, &mut fired);
                let now_w = w.now();
                let mut expect = Vec::new();
                while let Some((&(d, s), &id)) = model.iter().next() {
                    if d > now_w {
                        break;
                    }
                    model.remove(&(d, s));
                    expect.push(id);
                }
                assert_eq!(fired, expect, "seed {seed} op {op}: advance to {now}");
                now = now_w;
            }
            assert_eq!(w.len(), model.len(), "seed {seed} op {op}");
            assert_eq!(
                w.next_deadline(),
                model.keys().next().map(|&(d, _)| d),
                "seed {seed} op {op}: next deadline"
            );
            if op % 997 == 0 {
                w.check_invariants();
            }
        }
        w.check_invariants();
    }

    #[test]
    fn the_wheel_agrees_with_a_naive_model_over_random_operations() {
        // 8 seeds × 20k ops = 160k operations.
        for seed in 0..8 {
            run_against_model(seed, 20_000);
        }
    }
}
