//! The simulator's disk: the node's real `Disk` seam over memory, with the faults of a real
//! one.
//!
//! `Image` is what survives a crash: the hard state, the synced log and the finished
//! snapshot files (in the real snapshot file format, written and verified by the real code).
//! `SimDisk` is the running node's view: the image plus the log pages written since the last
//! sync. At a crash (`SimDisk::crash`) an arbitrary subset of those pages reaches the image:
//! a later page may survive while an earlier one is lost (torn writes at page granularity);
//! recovery then keeps the log up to the first hole, as the WAL's torn-tail rule does.
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
//! 2. Every unsynced page lies after the image's synced log or overwrites a suffix of it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
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
use kvraft::wal::Identity;

/// What survives a crash.
#[derive(Clone, Default)]
pub struct Image {
    pub hard_state: HardState,
    /// The index before `log[0]`.
    pub log_offset: LogIndex,
    pub log: Vec<Entry>,
    /// Finished snapshot files, in the real format.
    pub snapshots: BTreeMap<(LogIndex, Term), Rc<[u8]>>,
    /// The identity file (written durably: it survives crashes; lost with the whole image).
    pub identity: Option<Identity>,
}

impl Image {
    fn last_index(&self) -> LogIndex {
        self.log_offset.plus(self.log.len() as u64)
    }

    /// Write entries at their indexes, truncating what followed (a hole is refused: the
    /// caller keeps pages only up to one).
    fn write(&mut self, e: &Entry) -> bool {
        if self.log.is_empty() && e.index > self.log_offset {
            // An empty log (new, reset or compacted) takes the next entry at any index, as
            // the WAL does after a reset; the node never leaves a gap (it asserts that).
            self.log_offset = e.index.prev();
        }
        if e.index <= self.log_offset || e.index > self.last_index().next() {
            return false;
        }
        self.log
            .truncate((e.index.0 - self.log_offset.0 - 1) as usize);
        self.log.push(e.clone());
        true
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

pub struct SimDisk {
    image: ImageRef,
    faults: FaultsRef,
    /// The log as the node sees it (the image plus unsynced pages).
    offset: LogIndex,
    log: Vec<Entry>,
    /// Pages written since the last sync, in order.
    unsynced: Vec<Entry>,
    job: Option<Job>,
    /// A sync failed: every later one fails too (a failed fsync is sticky).
    failed: bool,
    pub syncs: u64,
    /// Ticks the syncs since the last `take_stall_ticks` took.
    stall_ticks: u64,
}

fn name(id: EntryId) -> PathBuf {
    PathBuf::from(format!("sim:{}", snapshot::snapshot_file_name(id)))
}

impl SimDisk {
    /// The disk as a (re)started node finds it.
    pub fn open(image: &ImageRef, faults: &FaultsRef) -> SimDisk {
        let (offset, log) = {
            let im = image.borrow();
            (im.log_offset, im.log.clone())
        };
        SimDisk {
            image: image.clone(),
            faults: faults.clone(),
            offset,
            log,
            unsynced: Vec::new(),
            job: None,
            failed: false,
            syncs: 0,
            stall_ticks: 0,
        }
    }

    /// The node stopped without a sync: some of the unsynced pages reach the image, any
    /// subset, kept only up to the first lost page (the recovery of a torn tail).
    pub fn crash(&mut self, rng: &mut Prng) -> (usize, usize) {
        let pages = std::mem::take(&mut self.unsynced);
        let mut im = self.image.borrow_mut();
        let mut kept = 0;
        let mut hole: Option<LogIndex> = None;
        for page in &pages {
            let survives = rng.chance(1, 2);
            if hole.is_some_and(|h| page.index > h) {
                continue; // after a hole: recovery cuts the log there
            }
            if !survives {
                hole = Some(hole.map_or(page.index, |h| h.min(page.index)));
                continue;
            }
            if im.write(page) {
                kept += 1;
            }
        }
        (kept, pages.len())
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
}

impl Disk for SimDisk {
    type Source = Rc<[u8]>;
    type Partial = SimPartial;

    fn recovered_hard_state(&self) -> HardState {
        self.image.borrow().hard_state
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), String> {
        self.check_open()?;
        self.image.borrow_mut().hard_state = *hs;
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
            self.log.truncate((e.index.0 - self.offset.0 - 1) as usize);
            self.log.push(e.clone());
            self.unsynced.push(e.clone());
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
        let mut im = self.image.borrow_mut();
        for page in self.unsynced.drain(..) {
            assert!(im.write(&page), "synced page {} leaves a hole", page.index);
        }
        self.syncs += 1;
        Ok(())
    }

    fn reset_log(&mut self) -> Result<(), String> {
        self.check_open()?;
        // Like the WAL's reset, durable on return: the next entry may have any index.
        let mut im = self.image.borrow_mut();
        im.log.clear();
        self.log.clear();
        self.unsynced.clear();
        self.offset = LogIndex(0);
        im.log_offset = LogIndex(0);
        Ok(())
    }

    fn discard_log_some(&mut self, to: LogIndex) -> Result<bool, String> {
        let drop = (to.0.saturating_sub(self.offset.0 + 1) as usize).min(self.log.len());
        if drop == 0 {
            return Ok(false);
        }
        let mut im = self.image.borrow_mut();
        let im_drop = (to.0.saturating_sub(im.log_offset.0 + 1) as usize).min(im.log.len());
        im.log.drain(..im_drop);
        im.log_offset = im.log_offset.plus(im_drop as u64);
        self.log.drain(..drop);
        self.offset = self.offset.plus(drop as u64);
        self.unsynced.retain(|p| p.index > self.offset);
        Ok(true)
    }

    fn log_stats(&self) -> LogStats {
        let n = self.log.len() as u64;
        LogStats {
            first: (n > 0).then(|| self.offset.next()),
            last: (n > 0).then(|| self.offset.plus(n)),
            segments: 1,
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
        let first_unsynced = self.unsynced.iter().map(|p| p.index).min();
        for e in &im.log {
            if first_unsynced.is_some_and(|u| e.index >= u) || e.index <= self.offset {
                continue;
            }
            let i = (e.index.0 - self.offset.0 - 1) as usize;
            if let Some(v) = self.log.get(i) {
                assert_eq!(v.id(), e.id(), "synced entry differs from the view");
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
