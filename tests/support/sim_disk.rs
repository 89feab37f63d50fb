//! The simulator's disk: the node's real `Disk` seam over memory, with the faults of a real
//! one.
//!
//! `Image` is what survives a crash: the hard state, the synced log, the finished snapshot
//! files (in the real snapshot file format, written and verified by the real code), the
//! identity, and the damage marker. `SimDisk` is the running node's view: the image plus the
//! log pages (one entry each) written since the last point at which everything was durable.
//!
//! The log keeps the WAL's layout (`kvraft::wal`, `segmented.rs`): every entry is a record
//! of a segment (`SEGMENT_RECORDS` records each) and of a group-commit batch. As in the WAL, a
//! batch is closed, and everything written before it made durable, by a sync, a segment roll
//! and a truncation (an append that overwrites a suffix); a prefix is discarded a whole
//! segment at a time. So the durable point is where the WAL has it, and every unsynced page is
//! in the last segment's open batch.
//!
//! Damage is judged by the real recovery: the image's records are encoded into segment images
//! in the real byte format (`wal::image`) and `wal::image::judge` says what `Wal::open` would
//! keep and whether it would report damage. Two kinds:
//! - a crash (`SimDisk::crash`): an arbitrary subset of the unsynced pages reaches the image
//!   (a later page may survive an earlier one: torn writes at page granularity), and now and
//!   then a surviving page has a flipped byte. Recovery cuts the torn tail (it must never call
//!   that damage: asserted).
//! - damage to synced data, injected between a crash and the restart (`Image::damage`): a
//!   flipped byte in a durable record, or a segment followed by another cut short. What the
//!   real recovery detects becomes the node's damage (`Disk::damage`): the log ends at the
//!   intact prefix and the node rejoins as a new incarnation. A flip in the newest batch of
//!   the last segment is indistinguishable from a torn tail for the WAL (recovery.rs, "NB"):
//!   it is injected too (`Injected::TailFlip`), the real verdict must cut it as a torn tail
//!   (asserted), and the node must not lose an acknowledged write for it (raft/uncertain.rs);
//!   everywhere else the real verdict must name the damaged record (asserted).
//!
//! An uncertain tail. Whenever the real verdict cut non-zero bytes off the end of the last
//! segment (a crash's torn pages, a tail flip), the image remembers it (`Image::tail_cut`)
//! and the next `SimDisk::open` does what `RealDisk::open` does before zeroing them: it saves
//! the hard state "uncertain since" its term, and reports the cut (`Disk::uncertain_tail`).
//!
//! Faults the simulator sets in `DiskFaults`: the next sync fails (the node treats it as
//! fatal and stops; the simulator restarts it), the next sync is slow, the disk is full
//! (appends fail with `NoSpace`), and snapshots take a number of polls to finish.
//!
//! A slow sync. `Disk::sync` is synchronous (the daemon's fsync blocks its one thread), so a
//! slow sync is durable when it returns, like any other; what it costs is time. The disk
//! only records how many ticks the sync took (`take_stall_ticks`); the simulator charges
//! them to the node's turn: the turn that synced ends that many ticks later, so the node
//! takes no turn meanwhile and what it wrote in that turn leaves only when the turn ends
//! (`World::hold_output`). Its peers meanwhile see a silent node (their election timers
//! run), its clients wait, and its next turn catches up the ticks it missed.
//!
//! Invariants (`check_invariants`):
//! 1. The view's log is contiguous and, below the first unsynced page, equals the image's.
//! 2. The unsynced pages are contiguous, directly after the image's log, all of the open
//!    batch and in the last segment.
//! 3. Records are tagged as the WAL tags them: segments and batches never decrease along the
//!    log, a segment's first record opens a batch, a segment holds at most `SEGMENT_RECORDS`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvraft::kv::StateMachine;
use kvraft::node::snapshot::{
    self, PartialStore, SnapshotDone, SnapshotFileError, SnapshotHeader, SnapshotReceiver,
    SnapshotSender,
};
use kvraft::node::storage::{AppendError, Disk, LogStats, SnapshotStarted};
use kvraft::prng::Prng;
use kvraft::raft::{Entry, EntryId, HardState, LogIndex, SnapshotMeta, Term};
use kvraft::wal::image::{self, SegmentImage};
use kvraft::wal::Identity;

/// Records per simulated segment: small, so that logs span several segments (damage in a
/// segment followed by another is always detectable) and compaction deletes whole ones.
pub const SEGMENT_RECORDS: u64 = 16;

/// Where a record lies, as the WAL tags it (`wal/format.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    /// Its group-commit batch, and that batch's first index.
    pub batch: u64,
    pub batch_first: LogIndex,
    /// The first index of its segment.
    pub segment: LogIndex,
}

/// What survives a crash.
#[derive(Clone, Default)]
pub struct Image {
    pub hard_state: HardState,
    /// The index before `log[0]`.
    pub log_offset: LogIndex,
    pub log: Vec<Entry>,
    /// `recs[k]` says where `log[k]` lies.
    pub recs: Vec<Rec>,
    /// Finished snapshot files, in the real format.
    pub snapshots: BTreeMap<(LogIndex, Term), Rc<[u8]>>,
    /// The identity file (written durably: it survives crashes; lost with the whole image).
    pub identity: Option<Identity>,
    /// The WAL's damage marker: damage recovery found, until the node clears it.
    pub damage: Option<String>,
    /// Non-zero bytes the real recovery cut off the end of the last segment since the last
    /// open (the next open reports it and saves the hard state uncertain).
    pub tail_cut: Option<String>,
}

/// Damage injected into synced data (`Image::damage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injected {
    /// A flipped byte the real recovery detects: the log now ends before `first_lost`.
    Flip { first_lost: LogIndex },
    /// A segment followed by another cut short: the log now ends before `first_lost`.
    Cut { first_lost: LogIndex },
    /// A flip in the newest batch of the last segment, which the WAL cannot tell from a torn
    /// tail: cut as one, so the log now ends before `first_cut` (an uncertain tail).
    TailFlip { first_cut: LogIndex },
}

impl Image {
    fn last_index(&self) -> LogIndex {
        self.log_offset.plus(self.log.len() as u64)
    }

    /// Whether a record at `index` would extend the log without a gap (an empty log takes
    /// any index after its offset).
    fn follows(&self, index: LogIndex) -> bool {
        match self.log.is_empty() {
            true => index > self.log_offset,
            false => index == self.last_index().next(),
        }
    }

    /// Write a record at its index, truncating what followed (a hole is refused: the caller
    /// keeps pages only up to one).
    fn write(&mut self, e: &Entry, rec: Rec) -> bool {
        if self.log.is_empty() && e.index > self.log_offset {
            // An empty log (new, reset or compacted) takes the next entry at any index, as
            // the WAL does after a reset; the node never leaves a gap (it asserts that).
            self.log_offset = e.index.prev();
        }
        if e.index <= self.log_offset || e.index > self.last_index().next() {
            return false;
        }
        let keep = (e.index.0 - self.log_offset.0 - 1) as usize;
        self.log.truncate(keep);
        self.recs.truncate(keep);
        self.log.push(e.clone());
        self.recs.push(rec);
        true
    }

    /// Keep the first `n` records.
    fn keep(&mut self, n: usize) {
        self.log.truncate(n);
        self.recs.truncate(n);
    }

    /// The real recovery cut `bytes` non-zero bytes off the end of the last segment.
    fn note_tail_cut(&mut self, bytes: u64, what: &str) {
        let what = format!(
            "{what}: {bytes} bytes cut, the log now ends at {}",
            self.last_index()
        );
        self.tail_cut = Some(match self.tail_cut.take() {
            Some(old) => format!("{old}; {what}"),
            None => what,
        });
    }

    /// The records from `log[from]` on, encoded as the WAL's segment files (the first one
    /// starting at `log[from]`, which opens its segment), with each record's segment and
    /// byte range.
    fn encode(&self, from: usize) -> (Vec<SegmentImage>, Vec<(usize, Range<usize>)>) {
        let mut segs: Vec<SegmentImage> = Vec::new();
        let mut at = Vec::with_capacity(self.log.len() - from);
        for (e, r) in self.log[from..].iter().zip(&self.recs[from..]) {
            if segs.last().is_none_or(|s| s.first() != r.segment) {
                assert_eq!(
                    r.segment, e.index,
                    "record {} in the middle of a segment",
                    e.index
                );
                segs.push(SegmentImage::new(r.segment));
            }
            let k = segs.len() - 1;
            at.push((k, segs[k].push(e, r.batch, r.batch_first)));
        }
        (segs, at)
    }

    /// Damage synced data: flip a byte of a durable record or cut short a segment that is
    /// followed by another, then apply the real recovery's verdict (`wal::image::judge`). `None`
    /// when the log is empty.
    pub fn damage(&mut self, rng: &mut Prng) -> Option<Injected> {
        if self.log.is_empty() {
            return None;
        }
        // The log starts at a segment's start (compaction deletes whole segments, a reset
        // empties the log): encode from there.
        let (mut segs, at) = self.encode(0);
        let cut = segs.len() > 1 && rng.chance(1, 3);
        let expect = if cut {
            let k = rng.range(0, segs.len() as u64 - 1) as usize;
            let header = SegmentImage::new(segs[k].first()).len();
            let len = rng.range(header as u64, segs[k].len() as u64) as usize;
            segs[k].truncate(len);
            // The first record of that segment not whole any more.
            let lost = at
                .iter()
                .position(|(s, r)| *s == k && r.end > len)
                .expect("a record past the cut");
            Some((lost, true))
        } else {
            let i = rng.range(0, self.log.len() as u64) as usize;
            let (k, r) = at[i].clone();
            let newest = self.recs.last().expect("not empty");
            let undetectable = k == segs.len() - 1 && self.recs[i].batch == newest.batch;
            let byte = rng.range(r.start as u64, r.end as u64) as usize;
            segs[k].bytes_mut()[byte] ^= 1 << rng.range(0, 8);
            (!undetectable).then_some((i, false))
        };
        let j = image::judge(&segs);
        let Some((lost, cut)) = expect else {
            // Recovery cuts it as a torn tail (from the damaged record or its batch's start
            // on): the node must treat its tail as uncertain.
            assert!(
                j.damage.is_none(),
                "SIM DISK MODEL: a flip in the newest batch judged as damage: {j:?}"
            );
            let newest = self.recs.last().expect("not empty").batch_first;
            let batch_start = (newest.0 - self.log_offset.0 - 1) as usize;
            assert!(
                j.tail_cut_bytes > 0 && j.kept >= batch_start && j.kept < self.log.len(),
                "SIM DISK MODEL: a flip in the newest batch (from index {newest}) not cut as an \
                 uncertain tail: {j:?}"
            );
            self.keep(j.kept);
            self.note_tail_cut(
                j.tail_cut_bytes,
                "a flipped byte in the newest synced batch",
            );
            return Some(Injected::TailFlip {
                first_cut: self.last_index().next(),
            });
        };
        let d =
            j.damage.unwrap_or_else(|| {
                panic!(
                "SIM DISK MODEL: the real recovery did not detect a {} at index {} ({} records \
                 kept)",
                if cut { "segment cut short" } else { "flipped byte" },
                self.log[lost].index,
                j.kept
            )
            });
        assert_eq!(
            (j.kept, d.first_lost),
            (lost, self.log[lost].index),
            "SIM DISK MODEL: recovery's intact prefix differs from the damaged record ({})",
            d.reason
        );
        self.keep(lost);
        let what = format!("{} (first lost index {})", d.reason, d.first_lost);
        self.damage = Some(match self.damage.take() {
            Some(old) => format!("{old}; {what}"),
            None => what,
        });
        Some(match cut {
            true => Injected::Cut {
                first_lost: d.first_lost,
            },
            false => Injected::Flip {
                first_lost: d.first_lost,
            },
        })
    }
}

/// Faults the simulator injects.
#[derive(Clone, Debug, Default)]
pub struct DiskFaults {
    pub fail_next_sync: bool,
    /// Ticks the next (successful) sync takes; 0: it takes no time.
    pub slow_next_sync_ticks: u64,
    pub full: bool,
    /// Polls a snapshot takes to finish (a slow disk).
    pub snapshot_polls: u32,
}

pub type ImageRef = Rc<RefCell<Image>>;
pub type FaultsRef = Rc<RefCell<DiskFaults>>;

struct Job {
    header: SnapshotHeader,
    bytes: Rc<[u8]>,
    state_hash: u64,
    polls_left: u32,
}

/// What a crash did to the unsynced pages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Crashed {
    /// Unsynced pages, and those recovery kept.
    pub pages: usize,
    pub kept: usize,
    /// Whether a surviving page had a flipped byte.
    pub flipped: bool,
    /// Whether recovery cut non-zero bytes (an uncertain tail at the next start).
    pub tail_cut: bool,
}

pub struct SimDisk {
    image: ImageRef,
    faults: FaultsRef,
    /// The log as the node sees it (the image plus unsynced pages).
    offset: LogIndex,
    log: Vec<Entry>,
    recs: Vec<Rec>,
    /// Pages written since everything was last durable, in order.
    unsynced: Vec<(Entry, Rec)>,
    /// The open batch (number, first index); `None` once everything written is durable.
    batch: Option<(u64, LogIndex)>,
    /// Above the batch of every record in the log.
    next_batch: u64,
    job: Option<Job>,
    /// A sync failed: every later one fails too (a failed fsync is sticky).
    failed: bool,
    pub syncs: u64,
    /// Ticks the syncs since the last `take_stall_ticks` took.
    stall_ticks: u64,
    /// What recovery cut off the end of the log at this open (`Disk::uncertain_tail`).
    uncertain_tail: Option<String>,
}

fn name(id: EntryId) -> PathBuf {
    PathBuf::from(format!("sim:{}", snapshot::snapshot_file_name(id)))
}

impl SimDisk {
    /// The disk as a (re)started node finds it.
    pub fn open(image: &ImageRef, faults: &FaultsRef) -> SimDisk {
        let (offset, log, recs, uncertain_tail) = {
            let mut im = image.borrow_mut();
            let tail = im.tail_cut.take();
            if tail.is_some() {
                // As `RealDisk::open` does before recovery zeroes the cut bytes.
                let hs = &mut im.hard_state;
                hs.uncertain = Some(hs.term.max(hs.uncertain.unwrap_or_default()));
            }
            (im.log_offset, im.log.clone(), im.recs.clone(), tail)
        };
        let next_batch = recs.last().map_or(1, |r| r.batch + 1);
        SimDisk {
            image: image.clone(),
            faults: faults.clone(),
            offset,
            log,
            recs,
            unsynced: Vec::new(),
            batch: None,
            next_batch,
            job: None,
            failed: false,
            syncs: 0,
            stall_ticks: 0,
            uncertain_tail,
        }
    }

    /// The node stopped without a sync: some of the unsynced pages reach the image, any
    /// subset, and with `flip` drawing so, one that does has a flipped byte. The image then
    /// holds what the real recovery keeps of it (a torn tail cut; never damage).
    pub fn crash(&mut self, rng: &mut Prng, flip: &mut Prng, flip_per_mille: u64) -> Crashed {
        let pages = std::mem::take(&mut self.unsynced);
        let survives: Vec<bool> = pages.iter().map(|_| rng.chance(1, 2)).collect();
        let mut out = Crashed {
            pages: pages.len(),
            ..Crashed::default()
        };
        let Some((first, _)) = pages.first() else {
            return out;
        };
        let mut im = self.image.borrow_mut();
        assert!(
            im.follows(first.index),
            "unsynced page {} does not follow the image ({}, +{}]",
            first.index,
            im.log_offset,
            im.log.len()
        );
        let base = im.log.len();
        for (e, r) in &pages {
            assert!(im.write(e, *r), "page {} leaves a hole", e.index);
        }
        // Encode from the start of the last segment (every unsynced page is in it).
        let seg = pages[0].1.segment;
        let from = im
            .recs
            .iter()
            .position(|r| r.segment == seg)
            .expect("segment");
        let (mut segs, at) = im.encode(from);
        for (k, (_, range)) in at[base - from..].iter().enumerate() {
            if !survives[k] {
                segs.last_mut().expect("a segment").bytes_mut()[range.clone()].fill(0);
            }
        }
        let alive: Vec<usize> = (0..pages.len()).filter(|&k| survives[k]).collect();
        if !alive.is_empty() && flip.range(0, 1000) < flip_per_mille {
            let k = alive[flip.range(0, alive.len() as u64) as usize];
            let range = at[base - from + k].1.clone();
            let byte = flip.range(range.start as u64, range.end as u64) as usize;
            segs.last_mut().expect("a segment").bytes_mut()[byte] ^= 1 << flip.range(0, 8);
            out.flipped = true;
        }
        let j = image::judge(&segs);
        assert!(
            j.damage.is_none(),
            "SIM DISK MODEL: a torn unsynced tail judged as damage to synced data: {:?}",
            j.damage
        );
        assert!(j.kept >= base - from, "recovery cut synced records");
        im.keep(from + j.kept);
        out.kept = from + j.kept - base;
        if j.tail_cut_bytes > 0 {
            im.note_tail_cut(j.tail_cut_bytes, "torn unsynced pages");
            out.tail_cut = true;
        }
        out
    }

    /// The ticks the syncs since the last call took (the simulator charges them to the
    /// node's turn).
    pub fn take_stall_ticks(&mut self) -> u64 {
        std::mem::take(&mut self.stall_ticks)
    }

    fn check_open(&self) -> Result<(), String> {
        match self.failed {
            true => Err("an earlier sync failed".into()),
            false => Ok(()),
        }
    }

    /// Everything written is durable now (a sync, a roll, a truncation): the pages reach the
    /// image and the open batch closes.
    fn make_durable(&mut self) {
        let mut im = self.image.borrow_mut();
        for (e, r) in self.unsynced.drain(..) {
            assert!(im.write(&e, r), "synced page {} leaves a hole", e.index);
        }
        self.batch = None;
    }
}

impl Disk for SimDisk {
    type Source = Rc<[u8]>;
    type Partial = SimPartial;

    fn recovered_hard_state(&self) -> HardState {
        self.image.borrow().hard_state.clone()
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), String> {
        self.check_open()?;
        self.image.borrow_mut().hard_state = hs.clone();
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), AppendError> {
        self.check_open().map_err(AppendError::Failed)?;
        if self.faults.borrow().full {
            return Err(AppendError::NoSpace("the simulated disk is full".into()));
        }
        for e in entries {
            if self.log.is_empty() && e.index > self.offset {
                self.offset = e.index.prev(); // as `Image::write`
            }
            let last = self.offset.plus(self.log.len() as u64);
            if e.index <= self.offset || e.index > last.next() {
                return Err(AppendError::Failed(format!(
                    "append at {} to a log of ({}, {last}]",
                    e.index, self.offset
                )));
            }
            if e.index <= last {
                // A truncation is durable when it returns, with everything before it (the
                // WAL's `truncate_suffix`), and closes the batch.
                let keep = (e.index.0 - self.offset.0 - 1) as usize;
                self.unsynced.retain(|(p, _)| p.index < e.index);
                self.make_durable();
                let mut im = self.image.borrow_mut();
                let im_keep =
                    (e.index.0.saturating_sub(im.log_offset.0 + 1) as usize).min(im.log.len());
                im.keep(im_keep);
                drop(im);
                self.log.truncate(keep);
                self.recs.truncate(keep);
            }
            let segment = match self.recs.last() {
                Some(r) if e.index.0 - r.segment.0 < SEGMENT_RECORDS => r.segment,
                _ => {
                    // A roll: the old segment is durable before the new one gets a record.
                    self.make_durable();
                    e.index
                }
            };
            let next_batch = &mut self.next_batch;
            let (batch, batch_first) = *self.batch.get_or_insert_with(|| {
                *next_batch += 1;
                (*next_batch - 1, e.index)
            });
            let rec = Rec {
                batch,
                batch_first,
                segment,
            };
            self.log.push(e.clone());
            self.recs.push(rec);
            self.unsynced.push((e.clone(), rec));
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        self.check_open()?;
        let (fail, slow_ticks) = {
            let mut f = self.faults.borrow_mut();
            let slow = std::mem::take(&mut f.slow_next_sync_ticks);
            (std::mem::take(&mut f.fail_next_sync), slow)
        };
        if fail {
            self.failed = true;
            return Err("simulated fsync failure".into());
        }
        self.stall_ticks += slow_ticks;
        self.make_durable();
        self.syncs += 1;
        Ok(())
    }

    fn reset_log(&mut self) -> Result<(), String> {
        self.check_open()?;
        // Like the WAL's reset, durable on return: the next entry may have any index.
        let mut im = self.image.borrow_mut();
        im.keep(0);
        im.log_offset = LogIndex(0);
        self.log.clear();
        self.recs.clear();
        self.unsynced.clear();
        self.batch = None;
        self.offset = LogIndex(0);
        Ok(())
    }

    fn discard_log_some(&mut self, to: LogIndex) -> Result<bool, String> {
        // As the WAL's `discard_prefix_some(to, 1)`: delete the first segment if all of its
        // records are at or before `to`; say whether another one is.
        let whole = |recs: &[Rec], offset: LogIndex| -> Option<usize> {
            let seg = recs.first()?.segment;
            let n = recs.iter().take_while(|r| r.segment == seg).count();
            (offset.plus(n as u64) <= to).then_some(n)
        };
        let Some(n) = whole(&self.recs, self.offset) else {
            return Ok(false);
        };
        let seg_last = self.offset.plus(n as u64);
        let mut im = self.image.borrow_mut();
        let im_drop = (seg_last.0.saturating_sub(im.log_offset.0) as usize).min(im.log.len());
        im.log.drain(..im_drop);
        im.recs.drain(..im_drop);
        im.log_offset = im.log_offset.max(seg_last);
        drop(im);
        self.log.drain(..n);
        self.recs.drain(..n);
        self.offset = seg_last;
        self.unsynced.retain(|(p, _)| p.index > seg_last);
        if self.unsynced.is_empty() {
            self.batch = None;
        }
        Ok(whole(&self.recs, self.offset).is_some())
    }

    fn log_stats(&self) -> LogStats {
        let n = self.log.len() as u64;
        LogStats {
            first: (n > 0).then(|| self.offset.next()),
            last: (n > 0).then(|| self.offset.plus(n)),
            segments: {
                let mut segs: Vec<LogIndex> = self.recs.iter().map(|r| r.segment).collect();
                segs.dedup();
                segs.len()
            },
            bytes: self.log.iter().map(|e| e.data.len() as u64 + 32).sum(),
        }
    }

    fn log_term(&self, index: LogIndex) -> Option<Term> {
        let i = index.0.checked_sub(self.offset.0 + 1)? as usize;
        self.log.get(i).map(|e| e.term)
    }

    fn log_entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, String> {
        let lo = from.0.checked_sub(self.offset.0 + 1).ok_or("compacted")? as usize;
        let hi = (to.0 - self.offset.0 - 1) as usize;
        self.log
            .get(lo..hi)
            .map(|s| s.to_vec())
            .ok_or_else(|| format!("entries {from}..{to} are not in the log"))
    }

    fn remove_stale_snapshot_files(&mut self) -> Result<usize, String> {
        Ok(0)
    }

    fn load_newest_snapshot<S: StateMachine>(
        &mut self,
        make: &mut dyn FnMut() -> S,
    ) -> Result<Option<(SnapshotHeader, S)>, String> {
        // Only the newest: the simulated disk never corrupts a finished file, so a newest
        // file that does not load is a bug to report, not a file to skip.
        let newest = self
            .image
            .borrow()
            .snapshots
            .iter()
            .next_back()
            .map(|(k, v)| (*k, v.clone()));
        let Some(((index, term), bytes)) = newest else {
            return Ok(None);
        };
        let mut sm = make();
        let id = EntryId::new(term, index);
        let (header, _) =
            snapshot::load_snapshot_bytes(&bytes, &mut sm, &name(id)).map_err(|e| e.to_string())?;
        Ok(Some((header, sm)))
    }

    fn snapshot_start<S: StateMachine>(
        &mut self,
        header: SnapshotHeader,
        sm: &S,
        _now: Instant,
    ) -> Result<SnapshotStarted, String> {
        assert!(self.job.is_none(), "a second snapshot while one runs");
        let mut bytes = Vec::new();
        let (_, state_hash) =
            snapshot::write_snapshot_to(&mut bytes, &header, sm).map_err(|e| e.to_string())?;
        self.job = Some(Job {
            header,
            bytes: bytes.into(),
            state_hash,
            polls_left: self.faults.borrow().snapshot_polls,
        });
        Ok(SnapshotStarted {
            fork_time: Duration::ZERO,
            watch_fd: None,
        })
    }

    fn snapshot_running(&self) -> bool {
        self.job.is_some()
    }

    fn snapshot_poll(&mut self) -> Option<Result<SnapshotDone, String>> {
        let job = self.job.as_mut()?;
        if job.polls_left > 0 {
            job.polls_left -= 1;
            return None;
        }
        let job = self.job.take().expect("checked");
        let last = job.header.meta.last;
        let size_bytes = job.bytes.len() as u64;
        let mut im = self.image.borrow_mut();
        im.snapshots.insert((last.index, last.term), job.bytes);
        // The real child removes older snapshots once its own is in place.
        im.snapshots.retain(|&k, _| k >= (last.index, last.term));
        Some(Ok(SnapshotDone {
            header: job.header,
            path: name(last),
            size_bytes,
            state_hash: job.state_hash,
            took: Duration::ZERO,
            fork_time: Duration::ZERO,
        }))
    }

    fn snapshot_kill_if_overdue(&mut self, _now: Instant, _deadline: Duration) -> bool {
        false
    }

    fn snapshot_open(
        &mut self,
        meta: &SnapshotMeta,
        chunk_bytes: usize,
        inflight_max: usize,
    ) -> io::Result<SnapshotSender<Rc<[u8]>>> {
        let key = (meta.last.index, meta.last.term);
        let bytes = self.image.borrow().snapshots.get(&key).cloned();
        let Some(bytes) = bytes else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: No such file", name(meta.last).display()),
            ));
        };
        let header = snapshot::verify_snapshot_bytes(&bytes, &name(meta.last))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if header.meta != *meta {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "meta differs"));
        }
        let total = bytes.len() as u64;
        Ok(SnapshotSender::from_source(
            bytes,
            meta.clone(),
            total,
            chunk_bytes,
            inflight_max,
        ))
    }

    fn snapshot_load<S: StateMachine>(
        &mut self,
        last: EntryId,
        sm: &mut S,
    ) -> Result<SnapshotHeader, String> {
        let bytes = self
            .image
            .borrow()
            .snapshots
            .get(&(last.index, last.term))
            .cloned()
            .ok_or_else(|| format!("{}: No such file", name(last).display()))?;
        snapshot::load_snapshot_bytes(&bytes, sm, &name(last))
            .map(|(h, _)| h)
            .map_err(|e| e.to_string())
    }

    fn snapshot_remove_older(&mut self, keep: EntryId) -> Result<(), String> {
        let keep = (keep.index, keep.term);
        self.image.borrow_mut().snapshots.retain(|&k, _| k >= keep);
        Ok(())
    }

    fn load_identity(&self) -> Result<Option<Identity>, String> {
        Ok(self.image.borrow().identity)
    }

    fn store_identity(&mut self, identity: &Identity) -> Result<(), String> {
        self.check_open()?;
        self.image.borrow_mut().identity = Some(*identity);
        Ok(())
    }

    fn uncertain_tail(&self) -> Option<String> {
        self.uncertain_tail.clone()
    }

    fn damage(&self) -> Option<String> {
        self.image.borrow().damage.clone()
    }

    fn clear_damage(&mut self) -> Result<(), String> {
        self.check_open()?;
        self.image.borrow_mut().damage = None;
        Ok(())
    }

    fn snapshot_receiver(&mut self) -> SnapshotReceiver<SimPartial> {
        SnapshotReceiver::with_store(SimPartial {
            image: self.image.clone(),
            partial: None,
        })
    }

    fn check_invariants(&self) {
        let im = self.image.borrow();
        for (k, e) in self.log.iter().enumerate() {
            assert_eq!(
                e.index,
                self.offset.plus(k as u64 + 1),
                "sim log not contiguous"
            );
        }
        assert_eq!(self.log.len(), self.recs.len(), "a record per entry");
        assert_eq!(im.log.len(), im.recs.len(), "a record per image entry");
        let first_unsynced = self.unsynced.first().map(|(p, _)| p.index);
        for (e, r) in im.log.iter().zip(&im.recs) {
            if first_unsynced.is_some_and(|u| e.index >= u) || e.index <= self.offset {
                continue;
            }
            let i = (e.index.0 - self.offset.0 - 1) as usize;
            if let Some(v) = self.log.get(i) {
                assert_eq!(v.id(), e.id(), "synced entry differs from the view");
                assert_eq!(
                    self.recs[i], *r,
                    "synced record tagged otherwise in the view"
                );
            }
        }
        // 2: the unsynced pages follow the image, in the open batch of the last segment.
        if let Some(u) = first_unsynced {
            assert!(im.follows(u), "unsynced page {u} does not follow the image");
            let open = self.batch.expect("unsynced pages without an open batch");
            let last_seg = self.recs.last().expect("pages").segment;
            for (k, (p, r)) in self.unsynced.iter().enumerate() {
                assert_eq!(p.index, u.plus(k as u64), "unsynced pages not contiguous");
                assert_eq!(
                    (r.batch, r.batch_first),
                    open,
                    "page {} outside the open batch",
                    p.index
                );
                assert_eq!(
                    r.segment, last_seg,
                    "page {} outside the last segment",
                    p.index
                );
            }
        }
        // 3: tagged as the WAL tags records.
        for (k, (e, r)) in self.log.iter().zip(&self.recs).enumerate() {
            assert!(r.segment <= e.index && e.index.0 - r.segment.0 < SEGMENT_RECORDS);
            assert!(r.batch_first <= e.index && r.batch < self.next_batch);
            match k.checked_sub(1).map(|p| self.recs[p]) {
                Some(p) if p.segment == r.segment => assert!(
                    (p.batch, p.batch_first) == (r.batch, r.batch_first)
                        || (r.batch > p.batch && r.batch_first == e.index),
                    "record {} does not continue or open a batch",
                    e.index
                ),
                Some(p) => assert!(
                    r.segment == e.index && r.batch > p.batch && r.batch_first == e.index,
                    "segment {} does not open with a batch",
                    e.index
                ),
                None => assert!(
                    r.segment == e.index && r.batch_first == e.index,
                    "the log starts at {} in the middle of a segment or batch",
                    e.index
                ),
            }
        }
    }
}

/// A snapshot being received, in memory; finished files go to the image.
pub struct SimPartial {
    image: ImageRef,
    partial: Option<(EntryId, Vec<u8>)>,
}

impl PartialStore for SimPartial {
    fn partial_name(&self, last: EntryId) -> PathBuf {
        PathBuf::from(format!(
            "sim:{}.recv.tmp",
            snapshot::snapshot_file_name(last)
        ))
    }

    fn create(&mut self, last: EntryId) -> io::Result<()> {
        self.partial = Some((last, Vec::new()));
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.partial {
            Some((_, bytes)) => {
                bytes.extend_from_slice(data);
                Ok(())
            }
            None => Err(io::Error::other("no partial file")),
        }
    }

    fn finish(
        &mut self,
        last: EntryId,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotHeader, PathBuf), SnapshotFileError> {
        let tmp = self.partial_name(last);
        let Some((id, bytes)) = self.partial.take().filter(|(id, _)| *id == last) else {
            return Err(SnapshotFileError::io(
                &tmp,
                io::Error::other("no partial file"),
            ));
        };
        let header = snapshot::verify_snapshot_bytes(&bytes, Path::new(&tmp))?;
        snapshot::check_announced(&header, meta, &tmp)?;
        let mut im = self.image.borrow_mut();
        im.snapshots.insert((id.index, id.term), bytes.into());
        Ok((header, name(id)))
    }

    fn remove(&mut self, _last: EntryId) {
        self.partial = None;
    }
}
