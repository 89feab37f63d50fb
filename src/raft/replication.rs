//! Log replication and commit (§5.3, §5.4.2, §7): the leader's appends, heartbeats and
//! snapshots; the follower's positional append, conflict hints and snapshot install.
//!
//! Invariants:
//! 1. A follower's ack leaves only after what it covers is durable (persisted messages: seed
//!    lesson 6), and every ack names the index it covers so a late one is recognised (seed
//!    lesson 4).
//! 2. The leader's commit index is the majority-th largest voter match index, recomputed
//!    whenever a match index changes (seed lesson 10), and only an entry of the current term is
//!    committed by counting (§5.4.2, Figure 8).
//! 3. The leader counts its own log only up to what the driver reported durable.
//! 4. A follower's answer is its word, not ours: an ack beyond our last index, a rejection of
//!    an append we never sent (after an index past our log) and a heartbeat answer to a read
//!    round we have not begun are dropped; a rejection's hint is clamped into our log, so
//!    `next_index` never passes `last_index + 1`.
//! 5. A follower is told every commit index it could adopt (`Progress::commit_owed`: the
//!    leader's, capped at its match index) within two ticks, and at once when it waits for it
//!    (`commit_wanted`): see below.
//!
//! # Telling followers the commit index
//! Every append carries the leader's commit index (the follower adopts it up to the append's
//! last entry) and so does every heartbeat (capped at the follower's match index). There is no
//! append just for a new commit index when one is due anyway: such an append, at one client,
//! was one more send, wake-up and receive on each side per follower per write, and the
//! follower's ack of it one more on the leader, dropped there as a duplicate (measured with
//! `tools/profile.sh 1 10000`: 13.3 syscalls per write on the leader and 8.0 on a follower
//! with it, 10.2 and 4.95 without). So when the commit index advances the leader sends
//! nothing; the followers learn it from the next append (at any load above one write per tick
//! there is one, to every follower), or the next heartbeat, or, when nothing carried what a
//! follower could adopt for a whole tick, from an append sent for it then (`tick_commit`,
//! empty if the follower has every entry). Etcd does the same without the tick: the next
//! append or heartbeat. `Progress::commit_sent` records what went out; a lost message makes
//! it too high, which the next heartbeat repairs (it always carries the commit index), and
//! probing (after a lost connection or a rejection) starts it again from 0.
//!
//! Who waits on a follower's commit index, and why a tick or two does not hurt them:
//! - A follower read (thesis §6.4; `node/pending.rs`) waits to apply the index the leader
//!   names: its last index when the request arrived. When that is committed, the heartbeat of
//!   the read's round carries it, sent before the answer. When it is not yet (a pipeline's
//!   read after its own forwarded writes), the node calls `want_commit` and every advance
//!   toward it goes to that follower at once (`send_wanted_commit` at the next `ready`, or
//!   with the answer to its ack), so the read is not held for a tick.
//! - A leader that removes or demotes itself tells the others at once that the change
//!   committed (`conf_committed_to` broadcasts before stepping down): it sends no more
//!   heartbeats. A removed follower is no longer replicated to once the change is in the
//!   leader's log, so it never learned the commit from us: unchanged.
//! - Leadership transfer needs the target to hold the leader's whole log (`match_index`),
//!   not its commit index; elections, votes and check-quorum read logs and terms only.
//! - A follower's snapshot covers what it applied, and INFO's apply lag shows how far that is
//!   behind: at rest the last write shows unapplied on a follower for a tick or two.
//! - Safety does not rest on a follower's commit index (§5.4: leader completeness is about
//!   logs), and a follower adopts no commit index it would not have adopted before.
//!
//! The follower still acknowledges an append that carried no entries: it cannot tell it from
//! a probe, whose answer the leader needs. Those are now rare (at most one per follower per
//! tick at rest, and the lost-append check after a heartbeat answer), so they are left be.

use super::log::AppendError;
use super::message::{AppendResult, MessageBody, RejectHint};
use super::progress::ProgressState;
use super::types::{Entry, EntryId, EntryKind, LogIndex, NodeId, Payload, SnapshotMeta};
use super::{quorum, Raft, RoleState};

impl Raft {
    /// The leader appends one entry of its term at the tail; it goes out at the next `ready`
    /// (so the proposals of one turn share appends).
    pub(super) fn append_local(&mut self, kind: EntryKind, data: Payload) -> EntryId {
        assert!(
            matches!(self.role, RoleState::Leader(_)),
            "append on non-leader"
        );
        let id = EntryId::new(self.term, self.log.last_index().next());
        self.log.push(Entry {
            term: id.term,
            index: id.index,
            kind,
            data,
        });
        if kind == EntryKind::ConfChange {
            self.scan_conf_entries_from(id.index);
        }
        self.bcast_pending = true;
        id
    }

    pub(super) fn bcast_append(&mut self) {
        for to in self.peers() {
            self.send_appends(to, true);
        }
    }

    pub(super) fn bcast_heartbeat(&mut self) {
        let id = self.id;
        let commit = self.log.commit();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let read_seq = ls.reads.seq();
        let beats: Vec<(NodeId, LogIndex)> = ls
            .progress
            .iter_mut()
            .filter(|(&to, _)| to != id)
            .map(|(&to, pr)| {
                // The commit index is capped at what the follower is known to hold: beyond
                // that its log may still diverge from ours.
                let owed = pr.commit_owed(commit);
                pr.commit_sent = pr.commit_sent.max(owed);
                (to, owed)
            })
            .collect();
        for (to, commit) in beats {
            self.send(to, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    /// Once a tick: a follower that could adopt more of the commit index than it was sent, a
    /// whole tick ago already, gets an append now (empty if it has every entry): nothing else
    /// carried it meanwhile ("Telling followers the commit index" above).
    pub(super) fn tick_commit(&mut self) {
        let commit = self.log.commit();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        // Allocates only when some follower is due (rare): this runs every tick.
        let mut due: Vec<NodeId> = Vec::new();
        for (&to, pr) in ls.progress.iter_mut() {
            if to != self.id && pr.commit_sent < pr.commit_due {
                due.push(to);
            }
            pr.commit_due = pr.commit_owed(commit);
        }
        for to in due {
            self.send_appends(to, true);
        }
    }

    /// After the commit index advanced (once per `ready`): the followers waiting for it
    /// (`Progress::commit_wanted`) are told at once.
    pub(super) fn send_wanted_commit(&mut self) {
        let commit = self.log.commit();
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        // Allocates only when some follower waits (rare): this runs at every commit.
        let wanted: Vec<NodeId> = ls
            .progress
            .iter()
            .filter(|(&to, pr)| to != self.id && pr.commit_wanted_now(commit))
            .map(|(&to, _)| to)
            .collect();
        for to in wanted {
            self.send_appends(to, true);
        }
    }

    /// Whether follower `to` waits for a commit index we can now give it more of.
    fn commit_wanted_now(&self, to: NodeId) -> bool {
        let RoleState::Leader(ls) = &self.role else {
            return false;
        };
        ls.progress
            .get(&to)
            .is_some_and(|pr| pr.commit_wanted_now(self.log.commit()))
    }

    /// Follower `to` waits for commit index `index` (a follower read at an index the leader
    /// had not committed yet): each advance toward it goes out at once, not a tick later.
    pub(super) fn want_commit_checked(&mut self, to: NodeId, index: LogIndex) {
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress.get_mut(&to) else {
            return;
        };
        pr.commit_wanted = pr.commit_wanted.max(index.min(self.log.last_index()));
        if self.commit_wanted_now(to) {
            self.send_appends(to, true);
        }
    }

    /// Every other member of the leader's progress map.
    pub(super) fn peers(&self) -> Vec<NodeId> {
        match &self.role {
            RoleState::Leader(ls) => ls
                .progress
                .keys()
                .copied()
                .filter(|&id| id != self.id)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Sends as many appends to `to` as its progress state allows. The first may be empty (to
    /// carry the commit index) when `allow_empty`.
    pub(super) fn send_appends(&mut self, to: NodeId, allow_empty: bool) {
        let mut allow_empty = allow_empty;
        // Bounded: each round either sends entries (bounded by inflights) or stops.
        for _ in 0..=self.cfg.inflight_msgs_max {
            if !self.maybe_send_append(to, allow_empty) {
                return;
            }
            allow_empty = false;
        }
    }

    /// One append (or a snapshot when the follower needs entries we compacted away).
    fn maybe_send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let RoleState::Leader(ls) = &mut self.role else {
            return false;
        };
        let Some(pr) = ls.progress.get_mut(&to) else {
            return false;
        };
        if pr.is_paused() {
            return false;
        }
        let prev_index = pr.next_index.prev();
        let Some(prev_term) = self.log.term(prev_index) else {
            // §7: the entries this follower needs are compacted: send the snapshot instead.
            assert!(
                prev_index < self.log.offset().index,
                "next {} beyond last {}",
                pr.next_index,
                self.log.last_index()
            );
            let meta = self.snapshot.clone();
            pr.become_snapshot(meta.last.index);
            ::log::info!(
                "node {}: sending snapshot {} to {to} (needs {})",
                self.id,
                meta.last,
                pr.next_index
            );
            self.send(to, MessageBody::Snapshot { meta });
            return false;
        };
        let last = self.log.last_index();
        let mut entries: Vec<Entry> = Vec::new();
        let mut size = 0usize;
        let mut i = pr.next_index;
        while i <= last && entries.len() < self.cfg.append_entries_max {
            let e = self.log.entry(i).expect("entry in view");
            if !entries.is_empty() && size + e.data.len() > self.cfg.append_size_max {
                break;
            }
            size += e.data.len();
            entries.push(e.clone());
            i = i.next();
        }
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let count = entries.len();
        let end = prev_index.plus(count as u64);
        pr.sent(end, count);
        let commit = self.log.commit();
        // The follower adopts the commit index up to the append's last entry.
        pr.commit_sent = pr.commit_sent.max(commit.min(end));
        self.send(
            to,
            MessageBody::Append {
                prev: EntryId::new(prev_term, prev_index),
                entries,
                commit,
            },
        );
        count > 0
    }

    /// Follower side of AppendEntries (§5.3).
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) {
        if prev.index < self.log.commit() {
            // Everything up to our commit index matches the leader's log already.
            let match_index = self.log.commit();
            self.send_ack(from, AppendResult::Accepted { match_index });
            return;
        }
        if !self.log.matches(prev) {
            let hint = RejectHint {
                last_index: self.log.last_index(),
                conflict: self.log.first_index_of_term_at(prev.index),
            };
            ::log::debug!(
                "node {}: rejecting append after {prev} from {from}, hint {hint:?}",
                self.id
            );
            let result = AppendResult::Rejected {
                rejected: prev.index,
                hint,
            };
            self.send_ack(from, result);
            return;
        }
        let last_new = prev.index.plus(entries.len() as u64);
        match self.log.append_after(prev, &entries) {
            Ok(Some(first_written)) => self.scan_conf_entries_from(first_written),
            Ok(None) => {}
            Err(AppendError::NotContiguous) => {
                ::log::error!("node {}: malformed append from {from}; dropped", self.id);
                return;
            }
            Err(AppendError::ConflictsWithCommitted { index }) => {
                ::log::error!(
                    "node {}: append from {from} conflicts with committed index {index}; dropped",
                    self.id
                );
                return;
            }
        }
        self.raise_commit(commit.min(last_new));
        self.send_ack(
            from,
            AppendResult::Accepted {
                match_index: last_new,
            },
        );
    }

    fn send_ack(&mut self, to: NodeId, result: AppendResult) {
        self.send_persisted(to, MessageBody::AppendResp { result });
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, read_seq: u64) {
        self.raise_commit(commit.min(self.log.last_index()));
        self.send(from, MessageBody::HeartbeatResp { read_seq });
    }

    /// Follower side of InstallSnapshot (§7). The driver hands us this message only once the
    /// whole snapshot file arrived.
    pub(super) fn handle_snapshot(&mut self, from: NodeId, meta: SnapshotMeta) {
        let last = meta.last;
        if last.index <= self.log.commit() {
            let match_index = self.log.commit();
            self.send_ack(from, AppendResult::Accepted { match_index });
            return;
        }
        if self.log.matches(last) {
            // Our log already holds the snapshot's last entry: keep the log after it, and
            // just learn that it is committed.
            self.raise_commit(last.index);
        } else {
            ::log::info!(
                "node {}: installing snapshot {} from {from} (log was {}..={}, commit {})",
                self.id,
                last,
                self.log.first_index(),
                self.log.last_index(),
                self.log.commit()
            );
            self.log.restore(last);
            self.conf = meta.conf.clone();
            self.conf_committed = meta.conf.clone();
            self.pending_confs.clear();
            self.refresh_tail();
            self.snapshot = meta.clone();
            self.pending_snapshot = Some(meta);
        }
        self.send_ack(
            from,
            AppendResult::Accepted {
                match_index: last.index,
            },
        );
    }

    /// Leader side of an append (or snapshot) acknowledgement.
    pub(super) fn handle_append_resp(&mut self, from: NodeId, result: AppendResult) {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match result {
            AppendResult::Accepted { match_index } => {
                if match_index > last {
                    ::log::error!(
                        "node {}: {from} acked {match_index} beyond our last {last}; dropped",
                        self.id
                    );
                    return;
                }
                let updated = pr.maybe_update(match_index);
                let probe_acked = pr.state == ProgressState::Probe && match_index == pr.match_index;
                if !updated && !probe_acked {
                    return; // a stale or duplicate ack
                }
                match pr.state {
                    ProgressState::Probe => pr.become_replicate(),
                    ProgressState::Snapshot if pr.match_index >= pr.pending_snapshot => {
                        pr.become_replicate()
                    }
                    ProgressState::Snapshot => {}
                    ProgressState::Replicate => pr.inflights.free_to(match_index),
                }
                if updated {
                    self.commit_and_broadcast();
                }
                // Entries if there are any (they carry the commit index); an empty append
                // only for a follower waiting on the commit index (a follower read).
                let wanted = self.commit_wanted_now(from);
                self.send_appends(from, wanted);
                self.maybe_send_timeout_now(from);
            }
            AppendResult::Rejected { rejected, hint } => {
                if rejected > last {
                    // We never sent an append after an entry we do not have: a confused or
                    // malicious peer. Acting on it would point `next_index` past our log.
                    ::log::debug!(
                        "node {}: {from} rejected an append after {rejected}, beyond our last \
                         {last}; dropped",
                        self.id
                    );
                    return;
                }
                let next = self.next_from_hint(rejected, hint);
                let RoleState::Leader(ls) = &mut self.role else {
                    return;
                };
                let pr = ls.progress.get_mut(&from).expect("checked above");
                if pr.maybe_decr_to(rejected, next) {
                    ::log::debug!(
                        "node {}: {from} rejected {rejected}, retrying from {}",
                        self.id,
                        pr.next_index
                    );
                    self.send_appends(from, true);
                }
            }
        }
    }

    /// Where to retry after a rejection of the append after `rejected` (at most our last
    /// index): with a conflict term, just past our last entry of that term (or at the
    /// follower's first entry of it when we have none), so a whole conflicting term is skipped
    /// in one round trip. The hint is the follower's word, so it is only a hint: whatever it
    /// names, the answer is clamped to `[1, rejected]`, inside our log.
    fn next_from_hint(&self, rejected: LogIndex, hint: RejectHint) -> LogIndex {
        let next = match hint.conflict {
            None => LogIndex(hint.last_index.0.saturating_add(1)),
            Some(conflict) => match self
                .log
                .last_index_with_term_at_most(conflict.term, rejected)
            {
                Some(ours) if ours.term == conflict.term => ours.index.next(),
                _ => conflict.index,
            },
        };
        next.min(rejected).max(LogIndex(1))
    }

    pub(super) fn handle_heartbeat_resp(&mut self, from: NodeId, read_seq: u64) {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            // A full pipeline with a lost append would stall forever otherwise.
            ProgressState::Replicate if pr.inflights.full() => pr.inflights.free_first_one(),
            _ => {}
        }
        let behind = pr.match_index < last;
        if read_seq > ls.reads.seq() {
            // An answer to a round we have not begun: counting it would release reads that
            // round has not confirmed (read.rs invariant 2).
            ::log::debug!(
                "node {}: {from} answered read round {read_seq}, beyond ours {}; ignored",
                self.id,
                ls.reads.seq()
            );
        } else if self.conf.is_voter(from) {
            ls.reads.acked(from, read_seq);
            self.release_reads();
        }
        if behind {
            // Empty if everything was sent already: should an append have been lost, the
            // follower's rejection of this one brings us back to probing.
            self.send_appends(from, true);
        }
    }

    /// Recomputes the commit index from the voters' match indexes (and again after a committed
    /// membership change alters the voters). The followers learn it from the next append or
    /// heartbeat, within a tick or two, or at once if one waits for it ("Telling followers the
    /// commit index" above).
    pub(super) fn commit_and_broadcast(&mut self) {
        let mut advanced = false;
        // Bounded: the commit index grows at each round.
        while self.maybe_commit() {
            advanced = true;
        }
        if advanced && matches!(self.role, RoleState::Leader(_)) {
            self.commit_advanced = true;
        }
    }

    fn maybe_commit(&mut self) -> bool {
        let RoleState::Leader(ls) = &self.role else {
            return false;
        };
        let mut matches: Vec<LogIndex> = self
            .conf
            .voters
            .iter()
            .map(|v| ls.progress.get(v).map_or(LogIndex(0), |pr| pr.match_index))
            .collect();
        if matches.is_empty() {
            return false;
        }
        let index = quorum::committed_index(&mut matches);
        // §5.4.2: only an entry of our own term is committed by counting replicas.
        if index <= self.log.commit() || self.log.term(index) != Some(self.term) {
            return false;
        }
        self.raise_commit(index);
        true
    }

    /// Raises the commit index, applies committed membership changes and serves reads that
    /// waited for this leader's first commit.
    pub(super) fn raise_commit(&mut self, index: LogIndex) {
        let old = self.log.commit();
        if !self.log.commit_to(index) {
            return;
        }
        self.conf_committed_to(index);
        let start = self.leader_term_start();
        if matches!(self.role, RoleState::Leader(_)) && old < start && index >= start {
            self.start_waiting_reads();
        }
    }

    pub(super) fn report_snapshot_checked(&mut self, to: NodeId, ok: bool) {
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let Some(pr) = ls.progress.get_mut(&to) else {
            return;
        };
        if pr.state != ProgressState::Snapshot {
            return;
        }
        if !ok {
            pr.pending_snapshot = pr.match_index;
        }
        ::log::debug!(
            "node {}: snapshot to {to} finished ok={ok}; probing",
            self.id
        );
        // Probe (paused until the next heartbeat answer) from after the snapshot if it went
        // through, else from the known match.
        pr.become_probe();
        pr.probe_sent = true;
    }
}
