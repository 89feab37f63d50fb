//! The in-memory log view: every entry after the last compaction point, plus the indexes that
//! say how far the log is durable, committed, handed out for applying, and applied.
//!
//! Owns: positional append (an entry that conflicts with ours drops our suffix from there),
//! compaction, snapshot restore, and the conflict hint of a rejected append. Does not own
//! durability: the driver's write-ahead log is the durable copy; this view only records what
//! the driver said it made durable.
//!
//! Invariants (`check` verifies 1 and 2 at the ends of the view, in O(1), and 3 and 4; 5 is
//! asserted where truncation happens):
//! 1. `entries` are contiguous: `entries[k].index == offset.index + 1 + k`.
//! 2. Terms never decrease along the log, starting from `offset.term`.
//! 3. `offset.index <= applied <= applying <= commit <= last_index`.
//! 4. `persisted <= last_index` and `unstable <= last_index + 1`: everything before
//!    `unstable` has been handed to the driver in a `Ready`.
//! 5. A committed entry is never truncated.

use super::types::{Entry, EntryId, LogIndex, Term};
use std::collections::VecDeque;

/// The view's deque never shrinks below this many slots (160 KiB of `Entry`): reallocating
/// a small deque saves nothing.
const SHRINK_FROM_SLOTS: usize = 4096;

/// The log view. See the module invariants.
#[derive(Debug)]
pub struct RaftLog {
    /// The entry just before `entries[0]`: the compaction point. Its term is still known, so an
    /// append whose `prev` is exactly here can be checked.
    offset: EntryId,
    /// A deque: compaction drops from the front in O(dropped), never moving what stays,
    /// except when it gives back spare capacity (`release_spare`).
    entries: VecDeque<Entry>,
    /// The last index the driver has reported durable (through `advance` or `log_synced`).
    persisted: LogIndex,
    /// The first index not yet handed to the driver to persist.
    unstable: LogIndex,
    /// The highest index known committed.
    commit: LogIndex,
    /// The last index handed to the driver to apply.
    applying: LogIndex,
    /// The last index the driver reported applied.
    applied: LogIndex,
}

/// Why a positional append was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AppendError {
    /// The entries are not contiguous, or do not start right after `prev`.
    NotContiguous,
    /// An entry conflicts with one we hold at or below the commit index: the sender's log
    /// disagrees with a committed prefix (a safety violation somewhere; never truncate it).
    ConflictsWithCommitted { index: LogIndex },
}

impl RaftLog {
    /// A view of `entries` following the snapshot point `offset`; all of it is durable and
    /// nothing in it is known committed beyond the snapshot (seed lesson 8).
    pub fn new(offset: EntryId, entries: Vec<Entry>) -> RaftLog {
        let last = offset.index.plus(entries.len() as u64);
        let log = RaftLog {
            offset,
            entries: VecDeque::from(entries),
            persisted: last,
            unstable: last.next(),
            commit: offset.index,
            applying: offset.index,
            applied: offset.index,
        };
        log.check_entries();
        log.check();
        log
    }

    /// Every entry follows the offset contiguously with terms that never fall. O(entries):
    /// run once on entries restored from disk; afterwards `push` (the only way in) keeps it.
    fn check_entries(&self) {
        let mut term = self.offset.term;
        for (k, e) in self.entries.iter().enumerate() {
            let want = self.offset.index.plus(k as u64 + 1);
            assert_eq!(
                e.index, want,
                "log entry {k} has index {} not {want}",
                e.index
            );
            assert!(e.term >= term, "term falls to {} at {}", e.term, e.index);
            term = e.term;
        }
    }

    /// The invariants checked after every step, in O(1): the ends of the view agree with the
    /// offset (the middle is kept by `push`, truncation and compaction), and the indexes are
    /// ordered. A check that walked the whole view would make every message cost O(log).
    pub fn check(&self) {
        if let (Some(first), Some(last)) = (self.entries.front(), self.entries.back()) {
            assert_eq!(
                first.index,
                self.offset.index.next(),
                "first entry after offset {}",
                self.offset
            );
            assert!(
                first.term >= self.offset.term,
                "term falls after offset {}",
                self.offset
            );
            assert_eq!(
                last.index,
                self.offset.index.plus(self.entries.len() as u64),
                "{} entries after offset {} end at {}",
                self.entries.len(),
                self.offset,
                last.index
            );
        }
        let last = self.last_index();
        assert!(
            self.offset.index <= self.applied
                && self.applied <= self.applying
                && self.applying <= self.commit
                && self.commit <= last,
            "offset {} applied {} applying {} commit {} last {}",
            self.offset.index,
            self.applied,
            self.applying,
            self.commit,
            last
        );
        assert!(
            self.persisted <= last,
            "persisted {} > last {last}",
            self.persisted
        );
        assert!(
            self.unstable <= last.next(),
            "unstable {} > last+1",
            self.unstable
        );
    }

    pub fn offset(&self) -> EntryId {
        self.offset
    }
    pub fn first_index(&self) -> LogIndex {
        self.offset.index.next()
    }
    pub fn last_index(&self) -> LogIndex {
        self.offset.index.plus(self.entries.len() as u64)
    }
    pub fn last_id(&self) -> EntryId {
        match self.entries.back() {
            Some(e) => e.id(),
            None => self.offset,
        }
    }
    pub fn commit(&self) -> LogIndex {
        self.commit
    }
    pub fn applied(&self) -> LogIndex {
        self.applied
    }
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The newest entry id of a term at most `floor` (what a PreVote asks, `uncertain.rs`):
    /// the last entry's when its term is at most `floor`, else the newest such entry's
    /// (terms never fall along the log, so they are a prefix); when every entry held is of a
    /// newer term, the compaction point's if it is not, else `(floor, compaction index)`,
    /// which is at least, in the up-to-date order, any entry of a term at most `floor` the
    /// compacted part held.
    pub fn last_id_at_or_below(&self, floor: Term) -> EntryId {
        let last = self.last_id();
        if last.term <= floor {
            return last;
        }
        match self.entries.partition_point(|e| e.term <= floor) {
            0 if self.offset.term <= floor => self.offset,
            0 => EntryId::new(floor, self.offset.index),
            n => self.entries[n - 1].id(),
        }
    }

    /// The term of the entry at `index`, if this view still knows it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset.index {
            return Some(self.offset.term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset.index || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index.0 - self.offset.index.0 - 1) as usize])
    }

    /// True when we hold `id` (same index, same term): by log matching, we then agree with its
    /// author on everything up to it.
    pub fn matches(&self, id: EntryId) -> bool {
        self.term(id.index) == Some(id.term)
    }

    /// Entries in `[lo, hi)`; both ends must lie inside the view.
    pub fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
    ) -> std::collections::vec_deque::Iter<'_, Entry> {
        assert!(
            lo > self.offset.index && lo <= hi && hi <= self.last_index().next(),
            "slice [{lo}, {hi}) outside ({}, {}]",
            self.offset.index,
            self.last_index()
        );
        let base = self.offset.index.0 + 1;
        self.entries
            .range((lo.0 - base) as usize..(hi.0 - base) as usize)
    }

    /// The leader's append at the tail.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "push not at the tail"
        );
        assert!(entry.term >= self.last_id().term, "push of an older term");
        self.entries.push_back(entry);
    }

    /// §5.3 positional append of `entries`, which follow `prev` (the caller checked that we
    /// hold `prev`). Entries we already hold are skipped; at the first conflict our suffix is
    /// dropped and the rest appended (seed lesson 3: never append at the tail regardless).
    /// Returns the first index written, if any.
    pub fn append_after(
        &mut self,
        prev: EntryId,
        entries: &[Entry],
    ) -> Result<Option<LogIndex>, AppendError> {
        let mut expect = prev.index.next();
        let mut term = prev.term;
        for e in entries {
            if e.index != expect || e.term < term {
                return Err(AppendError::NotContiguous);
            }
            expect = expect.next();
            term = e.term;
        }
        let mut k = 0;
        while k < entries.len() {
            let e = &entries[k];
            if e.index <= self.offset.index || self.matches(e.id()) {
                k += 1;
                continue;
            }
            if e.index <= self.last_index() {
                if e.index <= self.commit {
                    return Err(AppendError::ConflictsWithCommitted { index: e.index });
                }
                self.truncate_from(e.index);
            }
            break;
        }
        for e in &entries[k..] {
            self.push(e.clone());
        }
        Ok(entries.get(k).map(|e| e.index))
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(index > self.commit, "truncating committed index {index}");
        self.entries
            .truncate((index.0 - self.offset.index.0 - 1) as usize);
        self.unstable = self.unstable.min(index);
        self.persisted = self.persisted.min(index.prev());
    }

    /// Entries not yet handed to the driver to persist; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.unstable > last {
            return Vec::new();
        }
        let out: Vec<Entry> = self.slice(self.unstable, last.next()).cloned().collect();
        self.unstable = last.next();
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable <= self.last_index()
    }

    /// The driver wrote the log up to `written` and made it durable up to `persisted`
    /// (`persisted <= written`: a leader may sync its own log later, `driver.rs`, "The
    /// leader's own sync"). Entries handed out beyond `written` were not written (the disk
    /// was full): they are handed out again with the next `Ready`.
    pub fn stored_to(&mut self, written: LogIndex, persisted: LogIndex) {
        assert!(
            persisted <= written && written <= self.last_index() && written < self.unstable,
            "written {written} / persisted {persisted} beyond what was handed out (last {}, \
             unstable {})",
            self.last_index(),
            self.unstable
        );
        self.persisted = persisted;
        self.unstable = self
            .unstable
            .min(written.next().max(self.offset.index.next()));
    }

    /// The driver made what it had written durable up to `index`, outside a `Ready`; returns
    /// how much of this log that makes durable. What the driver synced can end in entries this
    /// log has replaced since it handed them out: a leader leaves its own writes unsynced, a
    /// newer leader's append overwrites them here (handing the new ones out again from
    /// `unstable`), and the driver syncs its stale tail before it writes the new one
    /// (simulator seed 4610: "synced 74 beyond what was handed out"). Only the entries before
    /// `unstable` are the ones the driver holds, so only they count.
    pub fn synced_to(&mut self, index: LogIndex) -> LogIndex {
        let durable = index.min(self.unstable.prev());
        self.persisted = durable;
        durable
    }

    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        if index <= self.commit {
            return false;
        }
        self.commit = index;
        true
    }

    pub fn has_committed_to_apply(&self) -> bool {
        self.applying < self.commit
    }

    /// Up to `max` committed entries not yet handed out for applying, in index order.
    pub fn take_committed(&mut self, max: usize) -> Vec<Entry> {
        if self.applying >= self.commit {
            return Vec::new();
        }
        let lo = self.applying.next();
        let hi = self.commit.next().min(lo.plus(max as u64));
        let out: Vec<Entry> = self.slice(lo, hi).cloned().collect();
        self.applying = hi.prev();
        out
    }

    pub fn applied_to(&mut self, index: LogIndex) {
        assert!(
            index >= self.applied && index <= self.applying,
            "applied {index} outside [{}, {}]",
            self.applied,
            self.applying
        );
        self.applied = index;
    }

    /// Drops entries up to and including `index` (a durable snapshot covers them).
    pub fn compact(&mut self, index: LogIndex) {
        if index <= self.offset.index {
            return;
        }
        assert!(
            index <= self.applied,
            "compact to {index} beyond applied {}",
            self.applied
        );
        let term = self.term(index).expect("applied entry is in the view");
        self.entries
            .drain(..(index.0 - self.offset.index.0) as usize);
        self.offset = EntryId::new(term, index);
        self.release_spare();
    }

    /// Give back the deque's spare slots once it is under a quarter full. A deque never
    /// shrinks by itself, so without this the view would hold, for good, slots (40 bytes
    /// each) for the most entries it ever held: under a bulk load that was 350k entries
    /// between two snapshots, 20 MiB (33 B per key of 632k) after compaction emptied them.
    /// Shrinking to twice the length moves the entries once (O(len)) and happens again only
    /// after the view has halved, so a compaction round pays O(len) in all.
    fn release_spare(&mut self) {
        let cap = self.entries.capacity();
        if cap > SHRINK_FROM_SLOTS && cap > 4 * self.entries.len() {
            self.entries
                .shrink_to((2 * self.entries.len()).max(SHRINK_FROM_SLOTS));
        }
    }

    /// Replaces the whole view with a snapshot at `last` (InstallSnapshot, §7).
    pub fn restore(&mut self, last: EntryId) {
        assert!(
            last.index > self.commit,
            "restore to {last} at or below commit"
        );
        self.entries.clear();
        self.release_spare();
        self.offset = last;
        self.persisted = last.index;
        self.unstable = last.index.next();
        self.commit = last.index;
        self.applying = last.index;
        self.applied = last.index;
    }

    /// The first index of the term held at `index` (for a rejection's conflict hint). Terms are
    /// monotone along the log, so this is a binary search.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> Option<EntryId> {
        let term = self.term(index)?;
        if index == self.offset.index {
            return Some(self.offset);
        }
        let upto = (index.0 - self.offset.index.0) as usize; // entries[..upto] end at index
                                                             // Terms never fall along the log and the entry at `index` has `term`, so the search
                                                             // over the whole deque ends within `entries[..upto]`.
        let k = self.entries.partition_point(|e| e.term < term).min(upto);
        if k == 0 && self.offset.term == term {
            return Some(self.offset);
        }
        Some(EntryId::new(term, self.offset.index.plus(k as u64 + 1)))
    }

    /// The last index at or before `upto` whose term is at most `term`, if the view knows it.
    pub fn last_index_with_term_at_most(&self, term: Term, upto: LogIndex) -> Option<EntryId> {
        let upto = upto.min(self.last_index());
        if upto < self.offset.index || self.offset.term > term {
            return None;
        }
        let n = (upto.0 - self.offset.index.0) as usize;
        // Terms never fall: the prefix's partition point is the whole deque's, capped at n.
        let k = self.entries.partition_point(|e| e.term <= term).min(n);
        if k == 0 {
            return Some(self.offset);
        }
        Some(self.entries[k - 1].id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{EntryKind, TERM_MAX};

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Command,
            data: vec![index as u8].into(),
        }
    }
    fn id(term: u64, index: u64) -> EntryId {
        EntryId::new(Term(term), LogIndex(index))
    }

    fn terms(log: &RaftLog) -> Vec<u64> {
        log.entries.iter().map(|e| e.term.0).collect()
    }

    #[test]
    fn the_newest_entry_of_a_term_at_most_a_floor() {
        let log = RaftLog::new(id(2, 10), vec![e(3, 11), e(3, 12), e(5, 13), e(7, 14)]);
        assert_eq!(log.last_id_at_or_below(Term(9)), id(7, 14));
        assert_eq!(log.last_id_at_or_below(TERM_MAX), id(7, 14));
        assert_eq!(log.last_id_at_or_below(Term(6)), id(5, 13));
        assert_eq!(log.last_id_at_or_below(Term(3)), id(3, 12));
        // Nothing held is that old: the compaction point, or a bound at its index.
        assert_eq!(log.last_id_at_or_below(Term(2)), id(2, 10));
        assert_eq!(log.last_id_at_or_below(Term(1)), id(1, 10));
        let empty = RaftLog::new(id(4, 20), vec![]);
        assert_eq!(empty.last_id_at_or_below(Term(4)), id(4, 20));
        assert_eq!(empty.last_id_at_or_below(Term(3)), id(3, 20));
    }

    #[test]
    fn positional_append_truncates_the_conflicting_suffix() {
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(1, 2), e(2, 3), e(2, 4)]);
        assert_eq!(
            log.append_after(id(1, 2), &[e(3, 3)]),
            Ok(Some(LogIndex(3)))
        );
        assert_eq!(terms(&log), vec![1, 1, 3]);
        assert_eq!(log.persisted(), LogIndex(2));
        assert_eq!(log.take_unstable(), vec![e(3, 3)]);
    }

    #[test]
    fn a_sync_of_entries_replaced_since_they_were_handed_out_counts_only_what_precedes_them() {
        // A leader wrote 1..=4 and left them unsynced (persisted 2).
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(1, 2), e(2, 3), e(2, 4)]);
        let _ = log.take_unstable();
        log.stored_to(LogIndex(4), LogIndex(2));
        // A newer leader's append replaces 4; the driver has not written the new 4 yet when
        // it syncs what it holds, its old 3 and 4.
        assert_eq!(
            log.append_after(id(2, 3), &[e(3, 4)]),
            Ok(Some(LogIndex(4)))
        );
        assert_eq!(log.synced_to(LogIndex(4)), LogIndex(3));
        assert_eq!(log.persisted(), LogIndex(3));
        // The same when the replacement is shorter than what the driver holds.
        assert_eq!(
            log.append_after(id(1, 2), &[e(4, 3)]),
            Ok(Some(LogIndex(3)))
        );
        assert_eq!(log.synced_to(LogIndex(4)), LogIndex(2));
        assert_eq!(log.persisted(), LogIndex(2));
        // Once handed out and written, the new entries count.
        assert_eq!(log.take_unstable(), vec![e(4, 3)]);
        log.stored_to(LogIndex(3), LogIndex(2));
        assert_eq!(log.synced_to(LogIndex(3)), LogIndex(3));
        log.check();
    }

    #[test]
    fn positional_append_of_held_entries_keeps_the_longer_suffix() {
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(1, 2), e(1, 3)]);
        assert_eq!(log.append_after(id(1, 1), &[e(1, 2)]), Ok(None));
        assert_eq!(terms(&log), vec![1, 1, 1]);
        assert!(!log.has_unstable());
    }

    #[test]
    fn positional_append_never_truncates_committed_entries() {
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(1, 2)]);
        log.commit_to(LogIndex(2));
        assert_eq!(
            log.append_after(id(1, 1), &[e(2, 2)]),
            Err(AppendError::ConflictsWithCommitted { index: LogIndex(2) })
        );
        assert_eq!(
            log.append_after(id(1, 1), &[e(2, 3)]),
            Err(AppendError::NotContiguous)
        );
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(2, 2), e(2, 3)]);
        log.commit_to(LogIndex(3));
        assert_eq!(log.take_committed(10).len(), 3);
        log.applied_to(LogIndex(3));
        log.compact(LogIndex(2));
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(2)), Some(Term(2)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert!(log.matches(id(2, 3)));
    }

    #[test]
    fn compaction_gives_back_the_spare_capacity_of_a_long_view() {
        let n = 100_000u64;
        let mut log = RaftLog::new(id(0, 0), (1..=n).map(|i| e(1, i)).collect());
        log.commit_to(LogIndex(n));
        while !log.take_committed(8192).is_empty() {}
        log.applied_to(LogIndex(n));
        let full = log.entries.capacity();
        assert!(full >= n as usize);
        // Compacting in steps, as the core does, to within 1000 entries of the end.
        let mut upto = 0;
        while upto < n - 1000 {
            upto = (upto + 4096).min(n - 1000);
            log.compact(LogIndex(upto));
            log.check();
        }
        let cap = log.entries.capacity();
        assert!(
            cap <= SHRINK_FROM_SLOTS.max(4 * 1000),
            "capacity {cap} of {full} kept for 1000 entries"
        );
        assert_eq!(log.first_index(), LogIndex(n - 999));
        assert_eq!(log.entry(LogIndex(n)), Some(&e(1, n)));
        // Installing a snapshot empties the view and gives back its slots too.
        log.restore(id(2, n + 10));
        assert!(log.entries.capacity() <= SHRINK_FROM_SLOTS);
    }

    #[test]
    fn conflict_hint_finds_the_first_index_of_a_term() {
        let log = RaftLog::new(id(0, 0), vec![e(1, 1), e(3, 2), e(3, 3), e(3, 4), e(5, 5)]);
        assert_eq!(log.first_index_of_term_at(LogIndex(4)), Some(id(3, 2)));
        assert_eq!(log.first_index_of_term_at(LogIndex(5)), Some(id(5, 5)));
        assert_eq!(log.first_index_of_term_at(LogIndex(6)), None);
        assert_eq!(
            log.last_index_with_term_at_most(Term(4), LogIndex(5)),
            Some(id(3, 4))
        );
        assert_eq!(
            log.last_index_with_term_at_most(Term(0), LogIndex(5)),
            Some(id(0, 0))
        );
    }

    #[test]
    fn committed_entries_are_handed_out_once_and_in_batches() {
        let mut log = RaftLog::new(id(0, 0), vec![e(1, 1), e(1, 2), e(1, 3)]);
        log.commit_to(LogIndex(3));
        assert_eq!(log.take_committed(2), vec![e(1, 1), e(1, 2)]);
        assert_eq!(log.take_committed(2), vec![e(1, 3)]);
        assert!(log.take_committed(2).is_empty());
    }
}
