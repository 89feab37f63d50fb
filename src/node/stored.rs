//! `Stored`: what this node keeps on its disk, as the node tracks it — the `Disk` itself,
//! how much of the log is durable, the snapshot on disk, which log segments may go, and
//! whether a full disk made the node refuse writes.
//!
//! Calls that need nothing of this bookkeeping (hard state, snapshot streams, INFO) reach
//! the disk through `disk()` / `disk_mut()`; the ones that change it (append, snapshots
//! taken or installed, log compaction) go through the methods here, which keep:
//!
//! Invariants (checked by `check_invariants`, besides the disk's own):
//! 1. The snapshot metadata never moves backwards: `snapshot_taken` / `snapshot_installed`
//!    take only a snapshot at or after the current one.
//! 2. `wal_discard_to <= snapshot.last.index`: only log a snapshot covers is deleted.
//! 3. `read_only` is set exactly while the last append found the disk full; appends are
//!    retried no sooner than `retry_at`.

use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::storage::{AppendError, Disk};
use super::NodeError;
use crate::raft::{Entry, LogIndex, SnapshotMeta};

pub(super) struct Stored<D: Disk> {
    disk: D,
    /// The last index known durable in the WAL.
    durable_last: LogIndex,
    /// Whether a snapshot file exists, and what the latest one stands for. Invariant 1.
    on_disk: bool,
    snapshot: SnapshotMeta,
    /// WAL segments wholly before this index are deleted, one per housekeeping pass
    /// (0: nothing to delete). Invariant 2.
    wal_discard_to: LogIndex,
    /// Log bytes appended since the last snapshot (a trigger besides the entry count).
    log_bytes_since_snapshot: u64,
    /// Why writes are refused (the disk is full), and when to try appending again. Invariant 3.
    read_only: Option<String>,
    retry_at: Instant,
}

impl<D: Disk> Stored<D> {
    pub(super) fn new(
        disk: D,
        durable_last: LogIndex,
        snapshot: Option<SnapshotMeta>,
        empty: SnapshotMeta,
        now: Instant,
    ) -> Stored<D> {
        Stored {
            disk,
            durable_last,
            on_disk: snapshot.is_some(),
            snapshot: snapshot.unwrap_or(empty),
            wal_discard_to: LogIndex(0),
            log_bytes_since_snapshot: 0,
            read_only: None,
            retry_at: now,
        }
    }

    pub(super) fn disk(&self) -> &D {
        &self.disk
    }

    pub(super) fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub(super) fn durable_last(&self) -> LogIndex {
        self.durable_last
    }

    /// The snapshot on disk, if there is one.
    pub(super) fn snapshot_on_disk(&self) -> Option<&SnapshotMeta> {
        self.on_disk.then_some(&self.snapshot)
    }

    /// The latest snapshot's metadata (the empty one, at index 0, before any).
    pub(super) fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub(super) fn log_bytes_since_snapshot(&self) -> u64 {
        self.log_bytes_since_snapshot
    }

    /// Why writes are refused, while the disk is full.
    pub(super) fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// Append to the WAL (not synced). `Ok(false)`: the disk is full; writes are refused and
    /// retried no sooner than `retry_after` from `now` (invariant 3).
    pub(super) fn append(
        &mut self,
        entries: &[Entry],
        now: Instant,
        retry_after: Duration,
    ) -> Result<bool, NodeError> {
        if let Some(first) = entries.first() {
            assert!(
                first.index <= self.durable_last.next(),
                "append at {} leaves a gap after the durable log ending at {}",
                first.index,
                self.durable_last
            );
        }
        if self.read_only.is_some() && now < self.retry_at {
            return Ok(false);
        }
        match self.disk.append(entries) {
            Ok(()) => {
                let bytes: usize = entries.iter().map(|e| e.data.len() + 32).sum();
                self.log_bytes_since_snapshot += bytes as u64;
                if self.read_only.take().is_some() {
                    info!("the log has room again: writes are accepted");
                }
                Ok(true)
            }
            Err(AppendError::NoSpace(why)) => {
                if self.read_only.is_none() {
                    error!("{why}: refusing writes until there is room");
                }
                self.read_only = Some(why);
                self.retry_at = now + retry_after;
                Ok(false)
            }
            Err(AppendError::Failed(e)) => Err(NodeError::new(format!("log append failed: {e}"))),
        }
    }

    /// The entries `[first, last]` were appended (`appended`) or not, then synced. After a
    /// failed append only what precedes them is known to agree with the core (the WAL may
    /// hold part of them, or an older suffix when the retry was paced): claim no more; the
    /// core hands the rest out again and the next append rewrites them in place.
    pub(super) fn synced(&mut self, first: LogIndex, last: LogIndex, appended: bool) {
        self.durable_last = match appended {
            true => last,
            false => self
                .disk
                .log_stats()
                .last
                .unwrap_or(self.snapshot.last.index)
                .min(first.prev()),
        };
    }

    /// This node wrote a snapshot at `meta`; the log before `compact_to` may go.
    pub(super) fn snapshot_taken(&mut self, meta: SnapshotMeta, compact_to: LogIndex) {
        assert!(
            compact_to <= meta.last.index,
            "compacting to {compact_to} past the snapshot at {}",
            meta.last
        );
        self.set_snapshot(meta);
        self.wal_discard_to = self.wal_discard_to.max(compact_to);
    }

    /// A snapshot from the leader replaced the state machine and the (reset) log.
    pub(super) fn snapshot_installed(&mut self, meta: SnapshotMeta) {
        self.durable_last = meta.last.index;
        self.set_snapshot(meta);
    }

    fn set_snapshot(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.last.index >= self.snapshot.last.index,
            "snapshot metadata moves back from {} to {}",
            self.snapshot.last,
            meta.last
        );
        self.on_disk = true;
        self.snapshot = meta;
        self.log_bytes_since_snapshot = 0;
    }

    /// Delete at most one WAL segment that a snapshot made unnecessary.
    pub(super) fn discard_some_log(&mut self) {
        if self.wal_discard_to == LogIndex(0) {
            return;
        }
        match self.disk.discard_log_some(self.wal_discard_to) {
            Ok(true) => {}
            Ok(false) => self.wal_discard_to = LogIndex(0),
            Err(e) => {
                warn!("compacting the log to {}: {e}", self.wal_discard_to);
                self.wal_discard_to = LogIndex(0);
            }
        }
    }

    /// The invariants in the module header (1 is checked where the metadata changes).
    pub(super) fn check_invariants(&self) {
        assert!(
            self.wal_discard_to <= self.snapshot.last.index,
            "deleting the log to {} past the snapshot at {}",
            self.wal_discard_to,
            self.snapshot.last
        );
        self.disk.check_invariants();
    }
}
