//! [`Wal`]: the segmented Raft log. Append (records encoded into a buffer, written at the tail
//! of the last segment with one pwrite per batch; see `segment.rs` for why not stores into the
//! mapping), group-commit sync, read from the mapping, truncate a suffix durably, discard a
//! prefix by deleting whole segments, and recover at start-up.
//!
//! Owns: the list of segments and the in-memory index (record offsets per segment). Must not:
//! know about Raft roles, or touch the bytes of a mapping except through `format.rs`.
//!
//! Invariants (checked by `check_invariants` in debug builds and by tests):
//! 1. Segments are ordered by first index and contiguous: `segments[k+1].first ==
//!    segments[k].last() + 1`. Every segment holds at least one record.
//! 2. `seg.offsets[i]` is the offset of index `seg.first + i`; offsets grow, the first is
//!    `SEGMENT_HEADER_SIZE`, and `seg.end` is the end of the last record.
//! 3. Every byte of a segment from `seg.end` on is zero in the mapping. Truncation zeroes what
//!    it drops and syncs that before returning, so recovery can never resurrect a dropped
//!    record, whether or not different entries were appended after it.
//! 4. A non-last segment is durable in full before the next segment receives a record (the
//!    roll syncs it), so after a crash only the last segment can have a torn tail.
//! 5. Once a sync has failed (`failed` is set) every call fails: the page cache state is
//!    unknown and nothing we write afterwards can be trusted to reach the disk.
//!
//! 6. Records written between two points at which the whole log was durable form one batch
//!    (`format.rs`). `next_batch` is above the batch of every record in the log. Only the last
//!    segment can have an open batch (`Seg::batch`); it is closed, and the next write opens a
//!    new one, whenever everything written is durable: after a sync, a roll, a truncation.
//!    Recovery (`recovery.rs`) relies on it to tell a torn tail from damage to synced data.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{info, warn};

use super::damage::{self, Damage};
use super::format::{
    self, check_record, encode_record, record_size, BatchTag, RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
};
use super::recovery::{BeforeCut, UncertainTail};
use super::segment::{
    fsync_dir, parse_segment_file_name, Prefill, Segment, Spare, OBSOLETE_SUFFIX, SEGMENT_SUFFIX,
    SPARE_STEP, TEMP_SUFFIX,
};
use super::{io_error, WalError, WalOptions};
use crate::limits::ENTRY_SIZE_MAX;
use crate::raft::{Entry, LogIndex, Term};

/// Smallest segment: a header and one record of the largest entry.
/// Most bytes of encoded records buffered before they are written to the segment.
const WRITE_BUF_MAX: usize = 1 << 20;

pub const SEGMENT_SIZE_MIN: u64 =
    (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE + ENTRY_SIZE_MAX) as u64;

/// What start-up found, for the node's start-up log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments_scanned: usize,
    pub records: u64,
    /// Bytes of garbage after the last good record that were zeroed (a torn write).
    pub torn_tail_bytes: u64,
    /// Segments without a single good record that were deleted (a crash right after creation).
    pub empty_segments_removed: usize,
    pub first: Option<LogIndex>,
    pub last: Option<LogIndex>,
    pub elapsed: Duration,
    /// Damage to synced data: found now, or recorded by an earlier start and not cleared yet
    /// (`Wal::clear_damage`). The log ends at the intact prefix.
    pub damage: Option<Damage>,
    /// Non-zero bytes were cut off the end of the last segment: a torn tail, or damage to the
    /// newest synced batch (`recovery.rs`, "An uncertain tail").
    pub uncertain_tail: Option<UncertainTail>,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idx = |i: Option<LogIndex>| i.map_or("-".to_string(), |i| i.to_string());
        write!(
            f,
            "log recovered: {} segments, {} records [{}..{}], torn tail {} bytes cut, {} empty segments removed, in {:.3}s",
            self.segments_scanned,
            self.records,
            idx(self.first),
            idx(self.last),
            self.torn_tail_bytes,
            self.empty_segments_removed,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(d) = &self.damage {
            write!(f, "; {d}")?;
        }
        Ok(())
    }
}

pub(super) struct Seg {
    file: Segment,
    first: LogIndex,
    /// Invariant 2: offset of each record; `offsets[i]` holds index `first + i`.
    offsets: Vec<u32>,
    /// End of the last record: where the next one goes.
    end: usize,
    /// Start of the bytes written since the last flush (`end` when clean).
    dirty_from: usize,
    /// Invariant 6: the batch records written into this segment now belong to, if one is open.
    batch: Option<BatchTag>,
}

impl Seg {
    /// A segment recovered with `offsets` good records ending at `end`, all of them durable.
    pub(super) fn recovered(file: Segment, first: LogIndex, offsets: Vec<u32>, end: usize) -> Seg {
        Seg {
            file,
            first,
            offsets,
            end,
            dirty_from: end,
            batch: None,
        }
    }

    fn last(&self) -> LogIndex {
        assert!(
            !self.offsets.is_empty(),
            "segment {} without records",
            self.first
        );
        self.first.plus(self.offsets.len() as u64 - 1)
    }

    fn offset_of(&self, index: LogIndex) -> usize {
        assert!(
            index >= self.first && index <= self.last(),
            "index {index} outside segment"
        );
        self.offsets[(index.0 - self.first.0) as usize] as usize
    }

    fn flush_dirty(&mut self) -> Result<(), WalError> {
        if self.dirty_from < self.end {
            self.file
                .flush(self.dirty_from, self.end - self.dirty_from)?;
        }
        self.dirty_from = self.end;
        Ok(())
    }
}

pub struct Wal {
    pub(super) dir: PathBuf,
    pub(super) opts: WalOptions,
    /// Invariant 1: ordered, contiguous, each non-empty.
    pub(super) segments: Vec<Seg>,
    pub(super) recovery: Recovery,
    /// Invariant 6: the number of the next batch opened.
    pub(super) next_batch: u64,
    /// Invariant 5: the first fatal failure, repeated by every later call.
    failed: Option<(PathBuf, String)>,
    /// Scratch for the records of one `append`, written with one pwrite.
    buf: Vec<u8>,
    /// `Prefill::ZeroAhead`: the next segment, being zeroed (`advance_spare`).
    spare: Option<Spare>,
    /// Bytes of zeros owed to the spare and not yet written (under `SPARE_STEP`).
    spare_debt: u64,
    /// Preparing the spare failed since the last roll: do not retry until the next one.
    spare_failed: bool,
}

impl Wal {
    /// Opens the log in `dir` (creating the directory if missing) and recovers it.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal, WalError> {
        Wal::open_with(dir, opts, &mut |_| Ok(()))
    }

    /// `open`, calling `before_cut` before non-zero bytes are cut off the end of the last
    /// segment (an uncertain tail): what it makes durable survives a crash right after the cut.
    pub fn open_with(
        dir: &Path,
        opts: WalOptions,
        before_cut: BeforeCut<'_>,
    ) -> Result<Wal, WalError> {
        if opts.segment_size < SEGMENT_SIZE_MIN || opts.segment_size > u32::MAX as u64 {
            return Err(WalError::BadOptions {
                reason: format!(
                    "segment_size {} outside [{SEGMENT_SIZE_MIN}, {}]",
                    opts.segment_size,
                    u32::MAX
                ),
            });
        }
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            opts,
            segments: Vec::new(),
            recovery: Recovery::default(),
            failed: None,
            buf: Vec::new(),
            next_batch: 1,
            spare: None,
            spare_debt: 0,
            spare_failed: false,
        };
        let names = list_segments(dir)?;
        wal.recover(&names, before_cut)?;
        if let Some(seg) = wal.segments.last() {
            // What recovery read may still be only in the page cache (a process crash, not a
            // power cut): make it durable before the node treats it as such, and before a new
            // batch is written after it (a later batch proves earlier ones synced).
            seg.file.flush(0, seg.end)?;
        }
        wal.recovery.first = wal.first_index();
        wal.recovery.last = wal.last_index();
        wal.recovery.elapsed = started.elapsed();
        wal.check_invariants();
        info!("{}: {}", dir.display(), wal.recovery);
        Ok(wal)
    }

    pub fn first_index(&self) -> Option<LogIndex> {
        self.segments.first().map(|s| s.first)
    }

    pub fn last_index(&self) -> Option<LogIndex> {
        self.segments.last().map(|s| s.last())
    }

    pub fn recovery_report(&self) -> &Recovery {
        &self.recovery
    }

    /// Damage to synced data recovery found (or an earlier start recorded), not cleared yet.
    pub fn damage(&self) -> Option<&Damage> {
        self.recovery.damage.as_ref()
    }

    /// Forgets the damage, durably: the node calls this once it has repaired the damaged
    /// range (or rejoined as a new incarnation). The files set aside stay for an operator.
    pub fn clear_damage(&mut self) -> Result<(), WalError> {
        self.check_ok()?;
        damage::clear(&self.dir)?;
        self.recovery.damage = None;
        Ok(())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.file.len() as u64).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn check_ok(&self) -> Result<(), WalError> {
        match &self.failed {
            None => Ok(()),
            Some((path, reason)) => Err(WalError::SyncFailed {
                path: path.clone(),
                reason: format!("an earlier sync failed: {reason}"),
            }),
        }
    }

    /// Records a fatal error (everything but a full disk) so every later call fails too.
    fn poison<T>(&mut self, r: Result<T, WalError>) -> Result<T, WalError> {
        if let Err(e) = &r {
            let path = match e {
                WalError::Io { path, .. } | WalError::SyncFailed { path, .. } => Some(path.clone()),
                _ => None,
            };
            if let Some(path) = path {
                self.failed.get_or_insert((path, e.to_string()));
            }
        }
        r
    }

    /// Appends a batch. If `entries[0].index <= last_index` the suffix from there is dropped
    /// first (durably). Not durable until [`Wal::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.check_ok()?;
        let Some(head) = entries.first() else {
            return Ok(());
        };
        assert!(head.index.0 > 0, "entry index 0");
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                head.index.plus(k as u64),
                "batch not contiguous at position {k}"
            );
            if e.data.len() > ENTRY_SIZE_MAX {
                return Err(WalError::EntryTooLarge {
                    index: e.index,
                    len: e.data.len(),
                });
            }
        }
        if let (Some(first), Some(last)) = (self.first_index(), self.last_index()) {
            assert!(
                head.index >= first && head.index <= last.next(),
                "append at {} to a log holding [{first}, {last}]",
                head.index
            );
            if head.index <= last {
                self.truncate_suffix(head.index.prev())?;
            }
        }
        let r = self.write_records(entries);
        self.poison(r)
    }

    /// Encodes the batch into `buf` and writes it at the tail of the last segment with pwrite,
    /// in one call per segment (or per `WRITE_BUF_MAX` bytes).
    fn write_records(&mut self, entries: &[Entry]) -> Result<(), WalError> {
        self.buf.clear();
        for e in entries {
            let size = record_size(e.data.len());
            let fits = self
                .segments
                .last()
                .is_some_and(|s| s.end + size <= s.file.len());
            if !fits || self.buf.len() + size > WRITE_BUF_MAX {
                self.write_pending()?;
            }
            if !fits {
                self.roll(e.index)?;
            }
            let start = self.buf.len();
            self.buf.resize(start + size, 0);
            let seg = self.segments.last_mut().expect("a segment");
            let tag = *seg.batch.get_or_insert_with(|| {
                let tag = BatchTag {
                    batch: self.next_batch,
                    first: e.index,
                };
                self.next_batch += 1;
                tag
            });
            encode_record(
                &mut self.buf[start..],
                e.term,
                e.index,
                e.kind,
                tag,
                &e.data,
            );
            seg.offsets.push(seg.end as u32);
            seg.end += size;
        }
        self.write_pending()
    }

    /// Writes `buf`, the records that end at the last segment's `end`, into the file.
    fn write_pending(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.last_mut().expect("a segment");
        let at = seg.end - self.buf.len();
        let r = seg.file.write_at(at, &self.buf);
        let written = self.buf.len();
        self.buf.clear();
        if r.is_ok() {
            self.advance_spare(written);
            return r;
        }
        // Forget the records that may not be in the file (the error poisons the log, but
        // `first_index`, `last_index` and `term` must still describe only written records).
        let seg = self.segments.last_mut().expect("a segment");
        let keep = seg.offsets.partition_point(|&o| (o as usize) < at);
        seg.offsets.truncate(keep);
        seg.end = at;
        seg.dirty_from = seg.dirty_from.min(at);
        if keep == 0 {
            // Invariant 1 (no empty segment): recovery deletes an empty last segment.
            self.segments.pop();
        }
        r
    }

    /// `Prefill::ZeroAhead`: owes the spare twice the `written` bytes of zeros and pays them in
    /// steps of at least `SPARE_STEP`, so the spare is ready when the segment being written is
    /// about half full. A failure only drops the spare (the next roll fallocates instead).
    fn advance_spare(&mut self, written: usize) {
        if self.opts.prefill != Prefill::ZeroAhead
            || self.spare_failed
            || self.spare.as_ref().is_some_and(Spare::is_ready)
        {
            return;
        }
        self.spare_debt += 2 * written as u64;
        if self.spare_debt < SPARE_STEP {
            return;
        }
        let debt = std::mem::take(&mut self.spare_debt);
        if self.spare.is_none() {
            match Spare::create(&self.dir, self.opts.segment_size) {
                Ok(spare) => self.spare = Some(spare),
                Err(e) => {
                    warn!("{}: preparing the next segment: {e}", self.dir.display());
                    self.spare_failed = true;
                    return;
                }
            }
        }
        let spare = self.spare.as_mut().expect("created above");
        if let Err(e) = spare.step(debt) {
            warn!("{}: zeroing the next segment: {e}", self.dir.display());
            self.spare.take().expect("stepped above").discard();
            self.spare_failed = true;
        }
    }

    /// Makes the last segment durable and starts a new one whose first record is `first`.
    fn roll(&mut self, first: LogIndex) -> Result<(), WalError> {
        // Invariant 4: the old segment is durable before the new one gets a record.
        if let Some(old) = self.segments.last_mut() {
            old.flush_dirty()?;
            old.batch = None;
        }
        self.spare_failed = false;
        let file = match self.spare.take() {
            Some(spare) if spare.is_ready() => Segment::from_spare(&self.dir, first, spare)?,
            not_ready => {
                // ZeroAhead without a ready spare: fallocate now, keep zeroing the spare.
                self.spare = not_ready;
                let prefill = match self.opts.prefill {
                    Prefill::ZeroAhead => Prefill::Fallocate,
                    other => other,
                };
                Segment::create(&self.dir, first, self.opts.segment_size, prefill)?
            }
        };
        self.segments.push(Seg {
            file,
            first,
            offsets: Vec::new(),
            end: SEGMENT_HEADER_SIZE,
            dirty_from: SEGMENT_HEADER_SIZE,
            batch: None,
        });
        Ok(())
    }

    /// Makes everything appended so far durable: one fdatasync per dirty segment (group commit).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.check_ok()?;
        let mut r = Ok(());
        for seg in &mut self.segments {
            r = seg.flush_dirty();
            if r.is_err() {
                break;
            }
        }
        if r.is_ok() {
            if let Some(seg) = self.segments.last_mut() {
                seg.batch = None;
            }
        }
        self.poison(r)
    }

    /// Entries in `[lo, hi)`, stopping once `max_bytes` of payload would be exceeded (at least
    /// one entry if the range is not empty). Payloads are checked against their CRC again.
    pub fn entries(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, WalError> {
        self.check_ok()?;
        if lo >= hi {
            return Ok(Vec::new());
        }
        let first = self.first_index();
        if first.is_none_or(|f| lo < f) {
            return Err(WalError::Compacted { index: lo, first });
        }
        let last = self.last_index().expect("non-empty");
        assert!(
            hi <= last.next(),
            "entries up to {hi} from a log ending at {last}"
        );
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut k = self.segment_of(lo);
        let mut index = lo;
        while index < hi {
            let seg = &self.segments[k];
            if index > seg.last() {
                k += 1;
                continue;
            }
            let off = seg.offset_of(index);
            let b = seg.file.bytes();
            let h = check_record(b, off).ok_or_else(|| WalError::Corrupt {
                file: seg.file.path().to_path_buf(),
                offset: off as u64,
                index: Some(index),
                reason: "record no longer checks in memory".into(),
            })?;
            assert_eq!(h.index, index, "index table points at the wrong record");
            if !out.is_empty() && bytes + h.payload_len > max_bytes {
                break;
            }
            bytes += h.payload_len;
            let data_at = off + RECORD_HEADER_SIZE;
            out.push(Entry {
                term: h.term,
                index,
                kind: h.kind,
                data: b[data_at..data_at + h.payload_len].into(),
            });
            index = index.next();
        }
        Ok(out)
    }

    /// The term of the entry at `index`, if the log holds it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        let (first, last) = (self.first_index()?, self.last_index()?);
        if index < first || index > last {
            return None;
        }
        let seg = &self.segments[self.segment_of(index)];
        Some(format::record_term(seg.file.bytes(), seg.offset_of(index)))
    }

    fn segment_of(&self, index: LogIndex) -> usize {
        let k = self.segments.partition_point(|s| s.first <= index);
        assert!(k > 0, "index {index} before the log");
        k - 1
    }

    /// Drops every entry after `after`, durably: later segments are deleted first (and the
    /// directory synced), then the dropped records of the kept segment are zeroed and synced.
    /// In that order a crash in between leaves the old suffix whole, never a gap.
    pub fn truncate_suffix(&mut self, after: LogIndex) -> Result<(), WalError> {
        self.check_ok()?;
        let r = self.truncate_suffix_inner(after);
        self.check_invariants();
        self.poison(r)
    }

    fn truncate_suffix_inner(&mut self, after: LogIndex) -> Result<(), WalError> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if after >= last {
            return Ok(());
        }
        let mut removed = false;
        while self.segments.last().is_some_and(|s| s.first > after) {
            let seg = self.segments.pop().expect("a segment");
            let path = seg.file.path().to_path_buf();
            drop(seg);
            fs::remove_file(&path).map_err(|e| io_error(&path, "remove segment", e))?;
            removed = true;
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        if seg.last() <= after {
            return Ok(());
        }
        let keep = (after.0 + 1 - seg.first.0) as usize;
        let cut = seg.offsets[keep] as usize;
        let end = seg.end;
        seg.file.bytes_mut()[cut..end].fill(0);
        let from = seg.dirty_from.min(cut);
        seg.file.flush(from, end - from)?;
        seg.offsets.truncate(keep);
        seg.end = cut;
        seg.dirty_from = cut;
        // Everything left is durable now: the next write opens a new batch (invariant 6).
        seg.batch = None;
        Ok(())
    }

    /// Deletes the whole segments all of whose entries are `<= upto` (they are in a
    /// snapshot), oldest first, so a crash midway leaves a contiguous log.
    pub fn discard_prefix(&mut self, upto: LogIndex) -> Result<(), WalError> {
        while self.discard_prefix_some(upto, usize::MAX)? {}
        Ok(())
    }

    /// Like `discard_prefix`, deleting at most `max_segments` segments; returns whether more
    /// remain to delete. Unmapping and unlinking a segment can take tens of ms (more on a
    /// filesystem mounted with `discard`), so an event loop deletes one at a time.
    pub fn discard_prefix_some(
        &mut self,
        upto: LogIndex,
        max_segments: usize,
    ) -> Result<bool, WalError> {
        self.check_ok()?;
        let n = self
            .segments
            .iter()
            .take_while(|s| s.last() <= upto)
            .count();
        let k = n.min(max_segments);
        let r = self.retire_segments(k);
        self.poison(r)?;
        Ok(n > k)
    }

    /// Segments this log retired and that are not unlinked yet: a background process (the
    /// snapshot child) removes them, since unlinking tens of MiB can take tens of ms.
    pub fn obsolete_files(&self) -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.ends_with(OBSOLETE_SUFFIX))
            })
            .map(|e| e.path())
            .collect()
    }

    /// Take the first `k` segments out of the log by renaming them to `*.wal.obsolete`
    /// (cheap, unlike unlinking them); recovery never reads such files.
    fn retire_segments(&mut self, k: usize) -> Result<(), WalError> {
        if k == 0 {
            return Ok(());
        }
        for seg in self.segments.drain(..k) {
            let path = seg.file.path().to_path_buf();
            drop(seg);
            let mut retired = path.clone().into_os_string();
            retired.push(&OBSOLETE_SUFFIX[SEGMENT_SUFFIX.len()..]);
            fs::rename(&path, &retired).map_err(|e| io_error(&path, "retire segment", e))?;
        }
        fsync_dir(&self.dir)
    }

    /// Drops the whole log (a snapshot from the leader replaces it); the next append may start
    /// at any index.
    pub fn reset(&mut self) -> Result<(), WalError> {
        self.check_ok()?;
        // Newest first: a crash midway leaves a shorter but contiguous log.
        let mut r = Ok(());
        while !self.segments.is_empty() && r.is_ok() {
            let k = self.segments.len() - 1;
            r = self.remove_segments(k..k + 1);
        }
        self.poison(r)
    }

    fn remove_segments(&mut self, range: std::ops::Range<usize>) -> Result<(), WalError> {
        if range.is_empty() {
            return Ok(());
        }
        for seg in self.segments.drain(range) {
            let path = seg.file.path().to_path_buf();
            drop(seg);
            fs::remove_file(&path).map_err(|e| io_error(&path, "remove segment", e))?;
        }
        fsync_dir(&self.dir)
    }

    fn check_invariants(&self) {
        if !cfg!(debug_assertions) {
            return;
        }
        for pair in self.segments.windows(2) {
            assert_eq!(
                pair[1].first,
                pair[0].last().next(),
                "segments not contiguous"
            );
        }
        for s in &self.segments {
            assert!(!s.offsets.is_empty(), "empty segment {}", s.first);
            assert_eq!(s.offsets[0] as usize, SEGMENT_HEADER_SIZE);
            assert!(
                s.offsets.windows(2).all(|w| w[0] < w[1]),
                "offsets not increasing"
            );
            assert!(s.dirty_from <= s.end && s.end <= s.file.len());
            assert!(
                s.batch
                    .is_none_or(|b| b.batch < self.next_batch && b.first >= s.first),
                "open batch {:?} of segment {} (next batch {})",
                s.batch,
                s.first,
                self.next_batch
            );
        }
        let n = self.segments.len();
        assert!(
            self.segments
                .iter()
                .take(n.saturating_sub(1))
                .all(|s| s.batch.is_none()),
            "an open batch before the last segment"
        );
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(LogIndex, PathBuf)>, WalError> {
    let mut out = Vec::new();
    let mut removed_temp = false;
    let rd = fs::read_dir(dir).map_err(|e| io_error(dir, "read directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| io_error(dir, "read directory", e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) || name.ends_with(OBSOLETE_SUFFIX) {
            // A segment whose creation did not finish (it never held a record), or one retired
            // behind a snapshot that nobody unlinked yet.
            fs::remove_file(ent.path())
                .map_err(|e| io_error(&ent.path(), "remove temp segment", e))?;
            removed_temp = true;
        } else if let Some(first) = parse_segment_file_name(name) {
            out.push((first, ent.path()));
        }
    }
    if removed_temp {
        fsync_dir(dir)?;
    }
    out.sort();
    Ok(out)
}
