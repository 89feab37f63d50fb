//! The driver: executes the core's `Ready` in the contract's order, once per loop turn.
//!
//! The order (Raft §5, etcd's README), asserted where it can be:
//! 0. on a leader, when the Ready persists nothing (no entries, hard state or snapshot: the
//!    turn in which a quorum's acks arrived), steps 6 and 7 come first and their replies are
//!    written at once: with no sync for the messages to overlap, the client's reply need not
//!    wait behind whatever appends go to the followers in that turn (each a loopback send that
//!    runs the receiver's TCP input inline). A new commit index alone sends none: it rides on
//!    the next append or heartbeat (`raft/replication.rs`, "Telling followers the commit
//!    index"). Not on a follower: there the messages are answers (a heartbeat's, for a
//!    leader's read round) that must not wait for an apply;
//! 1. send `messages` at once: the leader's appends and heartbeats go out before its own
//!    sync, so followers write in parallel with it;
//! 2. install a snapshot received from the leader (state machine, then the log reset);
//! 3. persist the hard state (durable on return) and append the entries;
//! 4. sync the log once for the whole turn (group commit) — a failed sync is fatal; a leader
//!    whose followers keep up leaves its own writes for later (`stored.rs`, "The leader's
//!    own sync"; its log counts toward commit only once synced);
//! 5. only then send `persisted_messages` (votes granted, append acks): nothing claims
//!    durability before it is durable (seed lessons 5 and 6); they are written at once, not
//!    after the apply below (a follower's ack is on the path of every write's latency);
//! 6. apply `committed` in index order, each exactly once, answering the waiting clients;
//! 7. serve the reads whose round completed and whose index is applied;
//! 8. `advance` the core with what is now durable and applied.

use log::{error, info, warn};

use super::applied::Outcome;
use super::membership::MemberTable;
use super::net::Net;
use super::pending::Settled;
use super::snapshot::SnapshotHeader;
use super::storage::Disk;
use super::stored::SyncDue;
use super::{Node, NodeError};
use crate::client::Value;
use crate::kv::StateMachine;
use crate::raft::{ConfChange, Entry, LogIndex, Ready, SnapshotMeta};

/// How often a node whose disk is full tries to append again.
const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Ready rounds per turn: later rounds carry what earlier ones unlocked (a commit after the
/// leader's own sync), without letting one turn run unbounded.
const READY_ROUNDS_PER_TURN: usize = 4;

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    pub(super) fn process_ready(&mut self) -> Result<(), NodeError> {
        self.sync_log_if_due()?;
        for _ in 0..READY_ROUNDS_PER_TURN {
            if !self.raft.has_ready() {
                break;
            }
            let rd = self.raft.ready();
            self.in_ready = true;
            let done = self.handle_ready(rd);
            self.in_ready = false;
            done?;
            for (kind, peer, ok) in std::mem::take(&mut self.deferred_reports) {
                self.report_to_core(kind, peer, ok);
            }
            if self.stored.read_only().is_some() {
                break; // the unpersisted entries come back next turn (or at the next retry)
            }
        }
        self.notice_role_change();
        self.refresh_membership();
        self.reforward_orphans();
        Ok(())
    }

    /// A leader that lost its leadership cannot say whether its pending writes will commit
    /// (the next leader may keep or drop them): their clients get an error saying exactly that,
    /// rather than waiting forever. Reads still in their round are failed by the core
    /// (`Ready::failed_reads`); reads past their round but not yet applied are failed here.
    fn notice_role_change(&mut self) {
        let is_leader = self.raft.role() == crate::raft::Role::Leader;
        if self.was_leader && !is_leader {
            let waiters = self.pending.take_waiters();
            self.telemetry.proposals_failed(waiters.len());
            for to in waiters {
                let v = Value::error(
                    "UNKNOWN leadership lost with the command in flight; the command may or may \
                     not have been applied",
                );
                self.deliver(to, v.to_bytes());
            }
            // A read whose round completed waits for its index, which may be one of this
            // leader's uncommitted entries (the read's floor): it may never be applied now.
            self.serve_ready_reads();
            let waiting = self.pending.take_confirmed_contexts();
            self.fail_reads(waiting);
        }
        self.was_leader = is_leader;
    }

    fn handle_ready(&mut self, rd: Ready) -> Result<(), NodeError> {
        let Ready {
            hard_state,
            entries,
            snapshot,
            messages,
            persisted_messages,
            committed,
            read_states,
            failed_reads,
        } = rd;
        // 0. `answer`: steps 6 and 7, when they are still to do.
        let leads = self.raft.role() == crate::raft::Role::Leader;
        let answer = if leads && hard_state.is_none() && entries.is_empty() && snapshot.is_none() {
            self.apply_and_serve(committed, read_states, failed_reads);
            self.flush_dirty();
            None
        } else {
            Some((committed, read_states, failed_reads))
        };
        // 1.
        for m in messages {
            self.send_raft(m);
        }
        self.flush_dirty();
        // 2.
        if let Some(meta) = snapshot {
            self.install_received_snapshot(meta)?;
        }
        // 3.
        if let Some(hs) = hard_state {
            self.stored
                .disk_mut()
                .save_hard_state(&hs)
                .map_err(|e| NodeError::new(format!("saving hard state: {e}")))?;
        }
        let mut durable = true;
        let wrote = !entries.is_empty();
        if let Some(first) = entries.first() {
            // The member table follows the log as appended (as the core's configuration does).
            self.ids.log_mut().appended(&entries);
            durable = self.append(&entries)?;
            let last = entries.last().expect("non-empty").index;
            let bytes = entries.iter().map(|e| e.data.len()).sum();
            self.stored
                .written(first.index, last, bytes, durable, self.now);
        }
        // 4. A leader whose followers keep up may leave its own writes for later
        // (`stored.rs`, "The leader's own sync"); nothing else is sent on their account.
        let defer = leads
            && durable
            && persisted_messages.is_empty()
            && self.stopping.is_none()
            && self
                .stored
                .may_defer_sync(self.raft.others_form_quorum(), self.now);
        if (wrote || self.stored.has_unsynced()) && !defer {
            self.sync_log()?;
        } else if wrote {
            self.stored.deferred();
        }
        // 5. Not after a failed append: these acks and votes may promise what is not on disk
        // (Raft takes their loss like any lost message).
        if durable && !persisted_messages.is_empty() {
            for m in persisted_messages {
                self.send_raft(m);
            }
            self.flush_dirty();
        }
        // 6. and 7. (unless done at 0.)
        if let Some((committed, read_states, failed_reads)) = answer {
            self.apply_and_serve(committed, read_states, failed_reads);
        }
        // 8.
        self.raft.advance_written(
            self.stored.written_last(),
            self.stored.durable_last(),
            self.applied.index(),
        );
        Ok(())
    }

    /// Step 4: one fdatasync for everything written (group commit).
    fn sync_log(&mut self) -> Result<(), NodeError> {
        self.stored.sync()?;
        self.stats.syncs += 1;
        Ok(())
    }

    /// Between `Ready`s: sync the writes a leader left unsynced once they are due, or at
    /// once on a node that no longer leads (its acknowledgements claim durability), and tell
    /// the core (a leader's own log may complete a majority).
    fn sync_log_if_due(&mut self) -> Result<(), NodeError> {
        if !self.stored.has_unsynced() {
            return Ok(());
        }
        let leads = self.raft.role() == crate::raft::Role::Leader;
        let due = !leads
            || self.stopping.is_some()
            || match self.stored.leader_sync_due(
                self.raft.others_form_quorum(),
                self.raft.commit(),
                self.now,
            ) {
                SyncDue::No => false,
                SyncDue::Now => true,
                SyncDue::Waited(index) => {
                    let helps = self.raft.own_sync_would_commit(index);
                    self.stored.waited(index, helps, self.now);
                    helps
                }
            };
        if due {
            self.sync_log()?;
            self.raft.log_synced(self.stored.durable_last());
        }
        Ok(())
    }

    /// Steps 6 and 7: apply `committed` in index order, answering the waiting clients, then
    /// serve the reads whose round completed and whose index is applied.
    fn apply_and_serve(
        &mut self,
        committed: Vec<Entry>,
        read_states: Vec<crate::raft::ReadState>,
        failed_reads: Vec<u64>,
    ) {
        // 6.
        for e in committed {
            self.apply_entry(e);
        }
        // 7.
        for rs in read_states {
            self.read_confirmed(rs.ctx, rs.index);
        }
        self.serve_ready_reads();
        self.fail_reads(failed_reads);
    }

    /// Append to the WAL. `Ok(false)`: the disk is full; this node refuses client writes and
    /// retries (every `DISK_FULL_RETRY`) until space returns, serving what it can meanwhile.
    fn append(&mut self, entries: &[Entry]) -> Result<bool, NodeError> {
        self.stored.append(entries, self.now, DISK_FULL_RETRY)
    }

    fn apply_entry(&mut self, e: Entry) {
        let started = self.telemetry.apply_started();
        let outcome = self.applied.apply(&e);
        self.telemetry.apply_done(started);
        let reply = match outcome {
            Outcome::Reply(v) => v,
            Outcome::ConfChanged(cc) => self.apply_conf_change(e.index, cc),
        };
        self.stats.entries_applied += 1;
        // Every waiter at or below this index is settled now.
        while let Some(settled) = self.pending.settle_next(e.index, e.term) {
            match settled {
                Settled::Applied(to) => self.deliver_value(to, &reply),
                Settled::Replaced(to) => {
                    self.telemetry.proposals_failed(1);
                    let v = Value::error(
                        "TRYAGAIN leadership changed before the command committed; it was not applied",
                    );
                    self.deliver(to, v.to_bytes());
                }
            }
        }
    }

    /// A membership change applied at `index` (to `Applied`'s membership already). The
    /// address table and the records follow the log as appended (`refresh_membership`); here
    /// the applied table moves on (what a snapshot taken now records).
    fn apply_conf_change(&mut self, index: LogIndex, cc: ConfChange) -> Value {
        self.ids.log_mut().applied_to(index);
        info!(
            "membership change at {}: {:?} node {}",
            index, cc.op, cc.node
        );
        Value::ok()
    }

    /// Serve, in the order they arrived, the reads whose index is applied.
    pub(super) fn serve_ready_reads(&mut self) {
        for r in self.pending.take_due_reads(self.applied.index()) {
            // As of the leader's time: keys whose TTL has passed are gone. A follower read
            // carries the leader's clock from its ReadIndexReply (`clients.rs`).
            let now_ms = match r.leader_now_ms {
                Some(ms) => ms.max(self.applied.sm().applied_stamp_ms()),
                None => self.leader_now_ms(),
            };
            let v = self.applied.sm().query_at(&r.query, now_ms);
            self.deliver_value(r.to, &v);
        }
    }

    /// Reads the core could not confirm (it stepped down first) are failed, so the client
    /// retries instead of waiting forever.
    fn fail_reads(&mut self, ctxs: Vec<u64>) {
        for ctx in ctxs {
            if let Some(to) = self.pending.take_read(ctx) {
                let v = Value::error("TRYAGAIN leadership changed during the read");
                self.deliver(to, v.to_bytes());
            }
        }
    }

    /// The leader sent us a snapshot (already received, verified and renamed into place by
    /// the receiver): load it into a fresh state machine, then reset the log after it.
    fn install_received_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), NodeError> {
        self.incoming
            .take_received(meta.last)
            .map_err(NodeError::new)?;
        let mut fresh = self.applied.fresh_sm();
        let header = self
            .stored
            .disk_mut()
            .snapshot_load(meta.last, &mut fresh)
            .map_err(|e| NodeError::new(format!("installing snapshot {}: {e}", meta.last)))?;
        match MemberTable::decode(&header.extra) {
            Ok(table) => self.ids.log_mut().installed(table, meta.last.index),
            // The file checked (its checksum): a table that does not decode was written by
            // a leader of another version. Keep ours; the log's later changes still apply.
            Err(e) => warn!("snapshot {}: member table: {e}", meta.last),
        }
        self.stored
            .disk_mut()
            .reset_log()
            .map_err(|e| NodeError::new(format!("resetting the log: {e}")))?;
        self.applied.install(fresh, &meta);
        self.stored.snapshot_installed(meta.clone());
        self.stats.snapshots_installed += 1;
        self.stats.last_snapshot_index = meta.last.index;
        // Waiters below the snapshot were answered by no apply here; they are settled.
        let waiters = self.pending.take_waiters_through(meta.last.index);
        self.telemetry.proposals_failed(waiters.len());
        for to in waiters {
            let v = Value::error(
                "UNKNOWN this node installed a snapshot while the command waited; the command \
                 may or may not have been applied",
            );
            self.deliver(to, v.to_bytes());
        }
        if let Err(e) = self.stored.disk_mut().snapshot_remove_older(meta.last) {
            warn!("removing snapshots older than {}: {e}", meta.last);
        }
        info!(
            "installed snapshot at {} ({} keys)",
            meta.last,
            self.applied.sm().len()
        );
        Ok(())
    }

    /// A leader whose disk is full cannot make new entries durable: it hands leadership to
    /// its most up-to-date voter, so the cluster stays writable while this node waits for
    /// space (it still serves reads and forwards writes as a follower).
    pub(super) fn hand_off_if_disk_full(&mut self) {
        if self.stored.read_only().is_none() || self.raft.role() != crate::raft::Role::Leader {
            return;
        }
        let st = self.raft.status();
        let best = st
            .progress
            .iter()
            .filter(|p| p.id != self.id && st.conf.is_voter(p.id))
            .max_by_key(|p| p.match_index);
        if let Some(p) = best {
            if self.raft.transfer_leadership(p.id).is_ok() {
                warn!("the disk is full: handing leadership to node {}", p.id);
            }
        }
    }

    /// Start a snapshot when enough was applied since the last one (or when asked).
    pub(super) fn maybe_snapshot(&mut self) {
        if !self.stored.disk().snapshot_running() && self.snapshot_due() {
            self.start_snapshot();
        }
    }

    /// A snapshot is due when asked for, when the log since the last one passed
    /// `snapshot_bytes`, or when `applied` reached this member's next snapshot point.
    ///
    /// Members take snapshots at staggered points: every `snapshot_entries` entries, offset by
    /// their position in the membership (phase = position × interval / members). All replicas
    /// apply the same entries, so without the offset they would all fork and write at once;
    /// with it, while one member writes its snapshot the others still form a quorum at full
    /// speed (a snapshot slows its own node's disk and CPU).
    fn snapshot_due(&self) -> bool {
        let last = self.stored.snapshot_meta().last.index.0;
        let applied = self.applied.index().0;
        if applied <= last {
            return false;
        }
        if self.snapshot_requested
            || self.stored.log_bytes_since_snapshot() >= self.cfg.snapshot_bytes
        {
            return true;
        }
        let members: Vec<_> = self.applied.conf().members().collect();
        let position = members.iter().position(|&m| m == self.id).unwrap_or(0);
        applied >= next_snapshot_point(last, self.cfg.snapshot_entries, position, members.len())
    }

    pub(super) fn start_snapshot(&mut self) {
        self.snapshot_requested = false;
        let meta = SnapshotMeta {
            last: self.applied.last(),
            conf: self.applied.conf().clone(),
        };
        let header = SnapshotHeader {
            meta,
            extra: self.ids.log().applied().encode(),
        };
        match self
            .stored
            .disk_mut()
            .snapshot_start(header, self.applied.sm(), self.now)
        {
            Ok(started) => {
                self.stats.last_snapshot_fork = started.fork_time;
                self.watch_fd = started.watch_fd;
                info!(
                    "snapshot at {}: started (fork took {:?})",
                    self.applied.index(),
                    started.fork_time
                );
            }
            Err(e) => {
                self.stats.snapshot_failures += 1;
                warn!("snapshot: {e}");
            }
        }
    }

    /// The background snapshot may have ended (the shell saw its pipe readable, or
    /// housekeeping asks): check how, then compact.
    pub fn snapshot_child_ended(&mut self) {
        let Some(outcome) = self.stored.disk_mut().snapshot_poll() else {
            return;
        };
        match outcome {
            Ok(done) if done.header.meta.last.index <= self.stored.snapshot_meta().last.index => {
                let current = self.stored.snapshot_meta().last;
                // A snapshot received from the leader meanwhile is newer: the metadata never
                // moves backwards (the log after it may already be gone). Found by the
                // simulator: a follower's own snapshot finishing after an install.
                info!(
                    "snapshot at {} written, but {} is newer: dropping it",
                    done.header.meta.last, current
                );
                if let Err(e) = self.stored.disk_mut().snapshot_remove_older(current) {
                    warn!("removing snapshots older than {current}: {e}");
                }
            }
            Ok(done) => {
                let meta = done.header.meta.clone();
                let keep = self.cfg.snapshot_keep_entries;
                // Never past what is durable here: a follower whose disk is full applies
                // entries the leader committed but this node has not persisted, and the core
                // must still hand those out to be appended (found by the simulator).
                let compact_to = LogIndex(meta.last.index.0.saturating_sub(keep))
                    .min(self.stored.durable_last());
                if !self.raft.snapshot_taken(meta.clone(), compact_to) {
                    // A newer snapshot was installed from the leader while the child ran.
                    info!(
                        "snapshot at {} finished behind the current {}; not used",
                        meta.last,
                        self.stored.snapshot_meta().last
                    );
                    return;
                }
                // The WAL's whole segments before `compact_to` go one per housekeeping pass.
                self.stored.snapshot_taken(meta.clone(), compact_to);
                self.stored.discard_some_log();
                self.stats.snapshots_taken += 1;
                self.stats.last_snapshot_took = done.took;
                self.stats.last_snapshot_bytes = done.size_bytes;
                self.telemetry.snapshot_saved(done.took, done.size_bytes);
                self.stats.last_snapshot_index = meta.last.index;
                info!(
                    "snapshot at {} written: {} bytes in {:?} (fork {:?}); log compacted to {compact_to}",
                    meta.last, done.size_bytes, done.took, done.fork_time
                );
            }
            Err(why) => {
                self.stats.snapshot_failures += 1;
                error!("snapshot child failed: {why}");
            }
        }
    }
}

/// The first index after `last` at which the member at `position` of `members` takes its
/// next snapshot: the points `k × interval + phase`, `phase = position × interval / members`.
fn next_snapshot_point(last: u64, interval: u64, position: usize, members: usize) -> u64 {
    let interval = interval.max(1);
    let phase = position as u64 * interval / members.max(1) as u64;
    if last < phase {
        phase
    } else {
        (last - phase) / interval * interval + interval + phase
    }
}

#[cfg(test)]
mod tests {
    use super::next_snapshot_point;

    #[test]
    fn snapshot_points_are_one_interval_apart_and_staggered_across_members() {
        let interval = 90_000;
        for members in 1..=7usize {
            let mut firsts = Vec::new();
            for position in 0..members {
                let first = next_snapshot_point(0, interval, position, members);
                let second = next_snapshot_point(first, interval, position, members);
                assert_eq!(second - first, interval, "member {position} of {members}");
                // A point is never at or before `last`, and never more than an interval after.
                for last in [
                    first,
                    first + 1,
                    first + interval - 1,
                    first + 5 * interval + 7,
                ] {
                    let next = next_snapshot_point(last, interval, position, members);
                    assert!(
                        next > last && next - last <= interval,
                        "last {last} next {next}"
                    );
                }
                firsts.push(first % interval);
            }
            firsts.sort_unstable();
            firsts.dedup();
            assert_eq!(
                firsts.len(),
                members,
                "two of {members} members share a phase"
            );
            for w in firsts.windows(2) {
                let gap = w[1] - w[0];
                assert!(
                    gap >= interval / members as u64 - 1,
                    "phases {firsts:?} bunch up"
                );
            }
        }
    }
}
