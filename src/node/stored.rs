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
//! 4. `durable_last <= written_last`, and `unsynced` is empty exactly when they are equal;
//!    its writes are in index order, all after `durable_last`, the last at `written_last`.
//!
//! The leader's own sync. A follower syncs in every turn that appended (its acknowledgement
//! claims durability). A leader's entries commit once a majority holds them durably (Raft
//! dissertation §10.2.1: the leader may write its log in parallel with replicating, and need
//! not be part of that majority), and its own log counts only up to what it synced
//! (`Raft::advance_written`, `Raft::log_synced`). So while the other voters that keep up are
//! a majority by themselves (`Raft::others_form_quorum`), a leader writes its entries without
//! an fdatasync and lets them commit on the followers' acknowledgements; its loop does not
//! stop for a millisecond of fdatasync per turn (measured, `make compare` at 64 clients:
//! 17.8k and 20.7k puts/s with the sync in every turn, 24.0k and 35.0k without it). It syncs
//! what it wrote (`Stored::leader_sync_due`, `Node::sync_log_if_due`):
//! - when it is not (or no longer) the leader, or stopping, or the others are no majority;
//! - when an entry it wrote `leader_sync_wait_ms` ago (config, 5 ms) is still not committed
//!   and its own sync would commit it (a follower holds it, another is slow); the third time
//!   within `LEADER_SYNC_SLOW_WINDOW` a follower is slower than its own disk for more than a
//!   moment, and it syncs in every turn for `LEADER_SYNC_DEFER_OFF`. (When no follower holds
//!   it yet, its sync would commit nothing: it waits on, and syncs in the turn that brings
//!   the first follower's acknowledgement.) Measured (`redis-benchmark -c 64
//!   -t set` on `make cluster`, same run): syncing in every turn for 100 ms after each such
//!   wait, 26.9k and 41.5k SET/s with 2,677 and 657 leader syncs; after the third in a
//!   window only, 37.0k and 41.1k with 281 and 256 (one loaded shared disk: its followers
//!   are each slower than the other now and then, 3-57 waits in a run).
//! - when the oldest unsynced write is `LEADER_SYNC_INTERVAL` old (or 4 x the wait), or
//!   `LEADER_UNSYNCED_*_MAX` writes or bytes wait: a bounded amount to catch up after a crash.
//!
//! With `leader_sync_wait_ms = 0` a leader syncs in every turn that writes, as a follower does.
//! Losing the unsynced tail in a crash is what a follower's lost tail already is (a log cut at
//! a start, `raft/uncertain.rs`): none of it was acknowledged on this node's account.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::storage::{AppendError, Disk};
use super::NodeError;
use crate::raft::{Entry, LogIndex, SnapshotMeta};

/// What is due of a leader's unsynced writes (`Stored::leader_sync_due`).
pub(super) enum SyncDue {
    No,
    Now,
    /// The write ending at this index waited `leader_sync_wait_ms` for commit
    /// (`Stored::waited` says what follows).
    Waited(LogIndex),
}

pub(super) struct Stored<D: Disk> {
    disk: D,
    /// The last index known durable in the WAL. Invariant 4.
    durable_last: LogIndex,
    /// The last index written to the WAL, durable or not. Invariant 4.
    written_last: LogIndex,
    /// The writes since the last sync, oldest first: (last index, when, bytes). Invariant 4.
    unsynced: VecDeque<(LogIndex, Instant, usize)>,
    unsynced_bytes: usize,
    /// A leader syncs in every turn until then (its followers were slower than its disk).
    defer_off_until: Instant,
    /// When the last two waits that the leader's own sync ended happened.
    slow_waits: [Option<Instant>; 2],
    /// Writes up to here already waited for commit and the leader's sync would not have
    /// committed them: they wait for the interval.
    waited_through: LogIndex,
    /// `leader_sync_wait_ms` (zero: a leader never defers its sync).
    sync_wait: Duration,
    /// For INFO: leader turns that wrote without a sync, and times followers slower than the
    /// wait made the leader sync and stop deferring.
    writes_deferred: u64,
    slow_fallbacks: u64,
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
        sync_wait: Duration,
    ) -> Stored<D> {
        Stored {
            disk,
            durable_last,
            written_last: durable_last,
            unsynced: VecDeque::new(),
            unsynced_bytes: 0,
            defer_off_until: now,
            waited_through: LogIndex(0),
            slow_waits: [None; 2],
            sync_wait,
            writes_deferred: 0,
            slow_fallbacks: 0,
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

    pub(super) fn written_last(&self) -> LogIndex {
        self.written_last
    }

    /// (leader turns that wrote without a sync, times followers slower than the wait ended
    /// that), for INFO.
    pub(super) fn deferral_counts(&self) -> (u64, u64) {
        (self.writes_deferred, self.slow_fallbacks)
    }

    /// A leader left this turn's write unsynced.
    pub(super) fn deferred(&mut self) {
        self.writes_deferred += 1;
    }

    /// Whether the WAL holds writes not yet synced.
    pub(super) fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
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
                first.index <= self.written_last.next(),
                "append at {} leaves a gap after the log written to {}",
                first.index,
                self.written_last
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

    /// The entries `[first, last]` (`bytes` of payload) were appended at `now` (`appended`)
    /// or not. After a failed append only what precedes them is known to agree with the core
    /// (the WAL may hold part of them, or an older suffix when the retry was paced): claim no
    /// more; the core hands the rest out again and the next append rewrites them in place.
    /// What was written is durable after the next `sync`.
    pub(super) fn written(
        &mut self,
        first: LogIndex,
        last: LogIndex,
        bytes: usize,
        appended: bool,
        now: Instant,
    ) {
        self.written_last = match appended {
            true => last,
            false => self
                .disk
                .log_stats()
                .last
                .unwrap_or(self.snapshot.last.index)
                .min(first.prev()),
        };
        // An append over durable entries (a follower's conflicting suffix) replaces them.
        self.durable_last = self.durable_last.min(first.prev());
        if self.unsynced.back().is_some_and(|&(i, _, _)| i >= first) {
            // Only a non-leader overwrites (and it syncs in the same turn): rare, so recount.
            self.unsynced.retain(|&(i, _, _)| i < first);
            self.unsynced_bytes = self.unsynced.iter().map(|&(_, _, b)| b).sum();
        }
        if self.written_last > self.durable_last {
            self.unsynced.push_back((self.written_last, now, bytes));
            self.unsynced_bytes += bytes;
        }
    }

    /// fdatasync what was written; a failed sync is fatal (`WalError::SyncFailed`).
    pub(super) fn sync(&mut self) -> Result<(), NodeError> {
        self.disk
            .sync()
            .map_err(|e| NodeError::new(format!("log sync failed: {e}")))?;
        self.durable_last = self.written_last;
        self.unsynced.clear();
        self.unsynced_bytes = 0;
        Ok(())
    }

    /// Whether a leader may leave this turn's writes unsynced: its followers keep up
    /// (`others_form_quorum`), and they were not found slower than its disk lately.
    pub(super) fn may_defer_sync(&self, others_form_quorum: bool, now: Instant) -> bool {
        others_form_quorum
            && !self.sync_wait.is_zero()
            && now >= self.defer_off_until
            && self.unsynced.len() < crate::limits::LEADER_UNSYNCED_WRITES_MAX
            && self.unsynced_bytes < crate::limits::LEADER_UNSYNCED_BYTES_MAX
    }

    /// When the writes waiting for a sync must be synced, given the commit index (see the
    /// module header), and the last index of the write that waited for commit too long, if
    /// that is the reason. `None`: nothing waits.
    /// `for_poll`: leave out the writes that waited already and the leader's sync would not
    /// have committed (the next acknowledgement wakes the loop for them, not a timer).
    fn sync_deadline(
        &self,
        commit: LogIndex,
        for_poll: bool,
    ) -> Option<(Instant, Option<LogIndex>)> {
        let &(_, oldest, _) = self.unsynced.front()?;
        let interval = oldest + crate::limits::LEADER_SYNC_INTERVAL.max(4 * self.sync_wait);
        let settled = match for_poll {
            true => commit.max(self.waited_through),
            false => commit,
        };
        // In index order (invariant 4): the first write not yet settled.
        let waiting = self
            .unsynced
            .get(self.unsynced.partition_point(|&(i, _, _)| i <= settled));
        match waiting {
            Some(&(i, at, _)) if at + self.sync_wait < interval => {
                Some((at + self.sync_wait, Some(i)))
            }
            _ => Some((interval, None)),
        }
    }

    /// How long until `sync_deadline` (the shell's poll timeout includes it).
    pub(super) fn sync_wait(&self, commit: LogIndex, now: Instant) -> Option<Duration> {
        let (at, _) = self.sync_deadline(commit, true)?;
        Some(at.saturating_duration_since(now))
    }

    /// What is due of a leader's unsynced writes (see the module header).
    pub(super) fn leader_sync_due(
        &self,
        others_form_quorum: bool,
        commit: LogIndex,
        now: Instant,
    ) -> SyncDue {
        let Some((at, waited)) = self.sync_deadline(commit, false) else {
            return SyncDue::No;
        };
        if !others_form_quorum || now < self.defer_off_until {
            return SyncDue::Now;
        }
        match (now < at, waited) {
            (true, _) => SyncDue::No,
            (false, Some(index)) => SyncDue::Waited(index),
            (false, None) => SyncDue::Now,
        }
    }

    /// The write ending at `index` waited `leader_sync_wait_ms` for commit. If this leader's
    /// own sync completes a majority for it (`helps`: a follower is slower than this disk),
    /// the caller syncs now, and at the third time within `LEADER_SYNC_SLOW_WINDOW` the
    /// leader syncs in every turn for `LEADER_SYNC_DEFER_OFF`; if not (no follower has it
    /// yet: its sync would not commit it), it waits on, and asks again in each turn until a
    /// follower's acknowledgement makes its sync worth it (or the interval ends).
    pub(super) fn waited(&mut self, index: LogIndex, helps: bool, now: Instant) {
        match helps {
            true => {
                self.slow_fallbacks += 1;
                let [older, _] = self.slow_waits;
                self.slow_waits = [self.slow_waits[1], Some(now)];
                // The third in a short window: a follower is slower than this disk for more
                // than a moment.
                if older.is_some_and(|t| now - t <= crate::limits::LEADER_SYNC_SLOW_WINDOW) {
                    self.defer_off_until = now + crate::limits::LEADER_SYNC_DEFER_OFF;
                }
            }
            false => self.waited_through = self.waited_through.max(index),
        }
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
        assert!(
            self.unsynced.is_empty(),
            "installing a snapshot over unsynced writes"
        );
        self.durable_last = meta.last.index;
        self.written_last = meta.last.index;
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
        assert!(
            self.durable_last <= self.written_last
                && self.unsynced.is_empty() == (self.durable_last == self.written_last),
            "durable {} written {} with {} unsynced writes",
            self.durable_last,
            self.written_last,
            self.unsynced.len()
        );
        if let (Some(f), Some(b)) = (self.unsynced.front(), self.unsynced.back()) {
            assert!(f.0 > self.durable_last && b.0 == self.written_last);
        }
        self.disk.check_invariants();
    }
}
