//! Storage as the node sees it: the `Disk` seam, and `RealDisk`, its implementation on the
//! data directory (the mmap WAL, the hard-state file, snapshot files, the fork() child).
//!
//! The node reaches its disk only through `Disk`: the daemon passes a `RealDisk`, the
//! simulator (`tests/sim.rs`) an in-memory disk that tears pages, loses unsynced writes, fails
//! syncs and fills up. So every storage call the daemon makes is one the simulator exercises.
//!
//! Contract every implementation keeps (the driver relies on it):
//! 1. `save_hard_state` is durable when it returns `Ok`.
//! 2. `append` writes after the last entry or overwrites a suffix (truncating what followed);
//!    nothing appended is durable until `sync` returns `Ok`. A failed `sync` is fatal to the
//!    node (the disk's state is unknown), never retried.
//! 3. `AppendError::NoSpace` leaves the log as it was before the call or with a prefix of the
//!    entries written; the node turns read-only and retries later.
//! 4. A snapshot under a final name is whole and durable; `snapshot_start` writes one in the
//!    background (`snapshot_poll` reports its end); a partial received file is never visible
//!    under a final name until `finish` verified it.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::snapshot::{
    self, DirStore, PartialStore, SnapshotDone, SnapshotFileError, SnapshotHeader,
    SnapshotReceiver, SnapshotSender, Snapshotter, WriteRate,
};
use crate::kv::StateMachine;
use crate::metrics::{Histogram, DISK_SECONDS_BUCKETS};
use crate::raft::{Entry, EntryId, HardState, LogIndex, SnapshotMeta, Term};
use crate::wal::{HardStateStore, Identity, IdentityError, OnDamage, Wal, WalError, WalOptions};

/// Why an append failed.
#[derive(Debug)]
pub enum AppendError {
    /// The disk is full: the node refuses writes and retries (contract 3).
    NoSpace(String),
    /// Anything else: fatal.
    Failed(String),
}

/// What INFO reports about the log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogStats {
    pub first: Option<LogIndex>,
    pub last: Option<LogIndex>,
    pub segments: usize,
    pub bytes: u64,
}

/// A background snapshot that was started.
pub struct SnapshotStarted {
    /// How long starting it held the loop (the fork).
    pub fork_time: Duration,
    /// A descriptor that becomes readable when it ends (the child's pipe), to watch in Poll.
    pub watch_fd: Option<RawFd>,
}

/// The node's storage (see the module header for the contract).
pub trait Disk {
    /// Reads chunks of a snapshot being streamed to a follower.
    type Source: snapshot::ChunkSource;
    /// Holds the partial file of a snapshot being received.
    type Partial: PartialStore;

    /// The hard state recovered when the disk was opened.
    fn recovered_hard_state(&self) -> HardState;
    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), String>;
    fn append(&mut self, entries: &[Entry]) -> Result<(), AppendError>;
    fn sync(&mut self) -> Result<(), String>;
    /// Empty the log (a snapshot replaced it).
    fn reset_log(&mut self) -> Result<(), String>;
    /// Delete at most one whole segment before `to`; false when there is nothing more.
    fn discard_log_some(&mut self, to: LogIndex) -> Result<bool, String>;
    fn log_stats(&self) -> LogStats;
    fn log_term(&self, index: LogIndex) -> Option<Term>;
    /// Entries `[from, to)`.
    fn log_entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, String>;

    /// Remove leftovers of snapshots being written or received when the node stopped.
    fn remove_stale_snapshot_files(&mut self) -> Result<usize, String>;
    /// The newest snapshot that loads into a fresh state machine from `make`.
    fn load_newest_snapshot<S: StateMachine>(
        &mut self,
        make: &mut dyn FnMut() -> S,
    ) -> Result<Option<(SnapshotHeader, S)>, String>;
    /// Start writing `sm` as the snapshot `header` describes, in the background.
    fn snapshot_start<S: StateMachine>(
        &mut self,
        header: SnapshotHeader,
        sm: &S,
        now: Instant,
    ) -> Result<SnapshotStarted, String>;
    fn snapshot_running(&self) -> bool;
    /// The background snapshot's end, once it ended.
    fn snapshot_poll(&mut self) -> Option<Result<SnapshotDone, String>>;
    /// Stop a background snapshot running longer than `deadline`; true if it did.
    fn snapshot_kill_if_overdue(&mut self, now: Instant, deadline: Duration) -> bool;
    /// Open the snapshot `meta` names for streaming (checking it is that snapshot).
    fn snapshot_open(
        &mut self,
        meta: &SnapshotMeta,
        chunk_bytes: usize,
        inflight_max: usize,
    ) -> io::Result<SnapshotSender<Self::Source>>;
    /// Load snapshot `last` into `sm` (a fresh state machine).
    fn snapshot_load<S: StateMachine>(
        &mut self,
        last: EntryId,
        sm: &mut S,
    ) -> Result<SnapshotHeader, String>;
    /// Remove every snapshot older than `keep`.
    fn snapshot_remove_older(&mut self, keep: EntryId) -> Result<(), String>;
    /// A receiver whose partial files live on this disk.
    fn snapshot_receiver(&mut self) -> SnapshotReceiver<Self::Partial>;
    /// The identity of this storage (cluster id, incarnation): `Ok(None)` when there is none
    /// (new or lost storage); an unreadable or corrupt one is an error.
    fn load_identity(&self) -> Result<Option<Identity>, String>;
    /// Replace the identity, durably before returning (contract 1's kind).
    fn store_identity(&mut self, identity: &Identity) -> Result<(), String>;

    /// Non-zero bytes recovery cut off the end of the log at this start (a torn tail, or damage
    /// to the newest synced batch: they look alike), described for the log. When it did, the
    /// hard state was saved "uncertain" before the bytes were zeroed (`raft/uncertain.rs`).
    fn uncertain_tail(&self) -> Option<String> {
        None
    }

    /// Damage recovery found in synced log data (the log ends at the intact prefix), until
    /// `clear_damage`. The simulator's disk has none.
    fn damage(&self) -> Option<String> {
        None
    }
    /// Forget the damage, durably (the node rejoined as a new incarnation and is admitted).
    fn clear_damage(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// How long the log's syncs took (`/metrics`), when the implementation measures them.
    fn fsync_seconds(&self) -> Option<&Histogram> {
        None
    }

    /// Assert the implementation's own invariants (the simulator calls it after every step).
    fn check_invariants(&self) {}
}

/// The data directory: the WAL under `log/`, the hard-state file, `snapshot-*` files, the
/// `identity` file (`wal::identity`).
pub struct RealDisk {
    dir: PathBuf,
    wal: Wal,
    hard_state_store: HardStateStore,
    hard_state: HardState,
    /// What recovery cut off the end of the log at this start (`Disk::uncertain_tail`).
    uncertain_tail: Option<String>,
    snapshotter: Snapshotter,
    /// How long each WAL sync took (`/metrics`): the only clock reads of the write path
    /// besides the loop's one per turn.
    fsync_seconds: Histogram,
}

impl RealDisk {
    /// Open (creating) the data directory, the hard state and the log.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<RealDisk, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let (mut hard_state_store, mut hard_state) =
            HardStateStore::open(dir).map_err(|e| format!("hard state: {e}"))?;
        let wal = Wal::open_with(
            &dir.join("log"),
            WalOptions {
                segment_size: segment_bytes,
                // Damage to synced data keeps the intact prefix: the node then rejoins as a
                // new incarnation and is re-admitted by the leader (startup.rs), instead of
                // refusing to start forever.
                on_damage: OnDamage::KeepIntactPrefix,
                ..WalOptions::default()
            },
            // An uncertain tail: durably "uncertain since" the current term (or the one an
            // earlier start recorded, if higher) before the cut bytes are zeroed, so that a
            // crash right after the cut cannot forget it (raft/uncertain.rs).
            &mut |_| {
                let since = hard_state
                    .term
                    .max(hard_state.uncertain.unwrap_or_default());
                hard_state.uncertain = Some(since);
                hard_state_store.save(&hard_state)
            },
        )
        .map_err(|e| format!("log: {e}"))?;
        let uncertain_tail = wal
            .recovery_report()
            .uncertain_tail
            .as_ref()
            .map(|t| t.to_string());
        Ok(RealDisk {
            dir: dir.to_path_buf(),
            wal,
            hard_state_store,
            hard_state,
            uncertain_tail,
            snapshotter: Snapshotter::new(WriteRate::Unlimited),
            fsync_seconds: Histogram::new(DISK_SECONDS_BUCKETS),
        })
    }

    /// How fast its snapshot children write (`snapshot_write_rate`; unlimited until set).
    pub fn set_snapshot_write_rate(&mut self, rate: WriteRate) {
        self.snapshotter.set_rate(rate);
    }

    fn snapshot_path(&self, last: EntryId) -> PathBuf {
        self.dir.join(snapshot::snapshot_file_name(last))
    }
}

fn file_err(e: SnapshotFileError) -> String {
    e.to_string()
}

impl Disk for RealDisk {
    type Source = File;
    type Partial = DirStore;

    fn recovered_hard_state(&self) -> HardState {
        self.hard_state.clone()
    }

    fn save_hard_state(&mut self, hs: &HardState) -> Result<(), String> {
        self.hard_state_store.save(hs).map_err(|e| e.to_string())?;
        self.hard_state = hs.clone();
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), AppendError> {
        match self.wal.append(entries) {
            Ok(()) => Ok(()),
            Err(WalError::NoSpace { path }) => Err(AppendError::NoSpace(format!(
                "no space left on the device for the log ({})",
                path.display()
            ))),
            Err(e) => Err(AppendError::Failed(e.to_string())),
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        let t0 = Instant::now();
        let synced = self.wal.sync().map_err(|e| e.to_string());
        self.fsync_seconds.observe_duration(t0.elapsed());
        synced
    }

    fn fsync_seconds(&self) -> Option<&Histogram> {
        Some(&self.fsync_seconds)
    }

    fn reset_log(&mut self) -> Result<(), String> {
        self.wal.reset().map_err(|e| e.to_string())
    }

    fn discard_log_some(&mut self, to: LogIndex) -> Result<bool, String> {
        self.wal
            .discard_prefix_some(to, 1)
            .map_err(|e| e.to_string())
    }

    fn log_stats(&self) -> LogStats {
        LogStats {
            first: self.wal.first_index(),
            last: self.wal.last_index(),
            segments: self.wal.segment_count(),
            bytes: self.wal.disk_bytes(),
        }
    }

    fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.wal.term(index)
    }

    fn log_entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, String> {
        self.wal
            .entries(from, to, usize::MAX)
            .map_err(|e| e.to_string())
    }

    fn remove_stale_snapshot_files(&mut self) -> Result<usize, String> {
        snapshot::remove_stale_temp_files(&self.dir)
            .map_err(|e| format!("cleaning {}: {e}", self.dir.display()))
    }

    fn load_newest_snapshot<S: StateMachine>(
        &mut self,
        make: &mut dyn FnMut() -> S,
    ) -> Result<Option<(SnapshotHeader, S)>, String> {
        let loaded = snapshot::load_newest(&self.dir, make).map_err(file_err)?;
        Ok(loaded.map(|(header, sm, path)| {
            log::info!("snapshot: loaded {}", path.display());
            (header, sm)
        }))
    }

    fn snapshot_start<S: StateMachine>(
        &mut self,
        header: SnapshotHeader,
        sm: &S,
        now: Instant,
    ) -> Result<SnapshotStarted, String> {
        let cleanup = self.wal.obsolete_files();
        let (fd, fork_time) = self
            .snapshotter
            .start(&self.dir, header, sm, now, &cleanup)
            .map_err(|e| format!("fork failed: {e}"))?;
        Ok(SnapshotStarted {
            fork_time,
            watch_fd: Some(fd),
        })
    }

    fn snapshot_running(&self) -> bool {
        self.snapshotter.is_running()
    }

    fn snapshot_poll(&mut self) -> Option<Result<SnapshotDone, String>> {
        self.snapshotter.poll_child()
    }

    fn snapshot_kill_if_overdue(&mut self, now: Instant, deadline: Duration) -> bool {
        self.snapshotter.kill_if_overdue(now, deadline)
    }

    fn snapshot_open(
        &mut self,
        meta: &SnapshotMeta,
        chunk_bytes: usize,
        inflight_max: usize,
    ) -> io::Result<SnapshotSender<File>> {
        let path = self.snapshot_path(meta.last);
        SnapshotSender::new(path, meta.clone(), chunk_bytes, inflight_max)
    }

    fn snapshot_load<S: StateMachine>(
        &mut self,
        last: EntryId,
        sm: &mut S,
    ) -> Result<SnapshotHeader, String> {
        let path = self.snapshot_path(last);
        snapshot::load_snapshot_file(&path, sm)
            .map(|(h, _)| h)
            .map_err(file_err)
    }

    fn snapshot_remove_older(&mut self, keep: EntryId) -> Result<(), String> {
        snapshot::remove_older_than(&self.dir, keep)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn snapshot_receiver(&mut self) -> SnapshotReceiver<DirStore> {
        SnapshotReceiver::new(self.dir.clone())
    }

    fn load_identity(&self) -> Result<Option<Identity>, String> {
        match Identity::load(&self.dir) {
            Ok(id) => Ok(Some(id)),
            Err(IdentityError::Absent { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn store_identity(&mut self, identity: &Identity) -> Result<(), String> {
        identity.store(&self.dir).map_err(|e| e.to_string())
    }

    fn uncertain_tail(&self) -> Option<String> {
        self.uncertain_tail.clone()
    }

    fn damage(&self) -> Option<String> {
        self.wal.damage().map(|d| d.to_string())
    }

    fn clear_damage(&mut self) -> Result<(), String> {
        self.wal.clear_damage().map_err(|e| e.to_string())
    }
}
