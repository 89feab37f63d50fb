//! Membership changes and leadership transfer.
//!
//! Single-server changes (thesis §4.1) carried in `EntryKind::ConfChange` entries. A change
//! takes effect as soon as the entry is in a server's log (committed or not), and is undone if
//! the entry is truncated. (Taking effect at commit, as etcd does, is unsafe here: the commit
//! index is not persisted, so a restarted node would campaign under a configuration several
//! changes old; the simulator found two leaders in one term that way.) Learners receive the
//! log but neither vote nor count toward quorum. A change that would leave more than
//! `MEMBERS_MAX` members is refused when proposed (`ProposeError::TooManyMembers`) and, should
//! one reach a log anyway, has no effect on any node, like one that does not decode.
//!
//! Campaigning while changed out. A configuration in force before it commits has a cost: a
//! node whose uncommitted tail removes or demotes it may hold the longest log, so no other
//! node can win its vote (§5.4.1), and if it did not campaign no leader would ever be elected
//! (simulator seeds 723 and 2903: a leader of voters {1, 2} demotes itself, only it holds the
//! entry, it loses leadership to node 2's higher term). So a node campaigns when it is a voter
//! of the configuration in force OR of the committed one (the thesis, §4.1, makes the same
//! point: a server left out of its own latest configuration may be needed to elect a leader
//! until that entry commits, so it keeps starting elections). Votes are always counted in the
//! configuration in force, the candidate's own vote only while it is one of its voters; a
//! voter grants a vote without consulting any configuration. Why this is safe:
//! - Election safety and leader completeness rest on quorum overlap alone: a candidate wins
//!   with a majority of the latest configuration in its log, and the single-server argument
//!   (§4.1, with invariant 1 below) says any two configurations a leader can be elected under
//!   in one term, or commit under, are equal or differ by one server, so their majorities
//!   share a server. That server votes once per term, and by the up-to-date check votes only
//!   for a log holding everything it holds. Whether the candidate is itself in the
//!   configuration appears nowhere in that argument; only which configuration counts does,
//!   and it is the same one every node would use.
//! - Counting under the committed configuration instead would not be: it may be two changes
//!   behind another candidate's latest one (the disjoint majorities of §4.2 the single-server
//!   rule exists to prevent).
//! - The leader so elected manages a cluster it is not a voter of (thesis §4.2.2): its commit
//!   index counts only the voters' match indexes, check-quorum and reads count only voters,
//!   and once its removal or demotion commits it steps down (invariant 2), after which the
//!   remaining voters, whose logs it just brought up to date, elect one of themselves.
//! - A node learns its change committed from the commit index; from then on it stops
//!   campaigning. Until then, a removed node disturbs nobody who has moved on: pre-vote and
//!   the leader lease (§4.2.3) refuse it, and if its log is complete enough to win it is a
//!   legitimate leader by the argument above.
//!
//! Invariants:
//! 1. At most one change is uncommitted, and a leader proposes one only after an entry of its
//!    own term committed (the fix for the single-server change bug, Ongaro 2015).
//! 2. A leader that is no longer a voter steps down once its removal commits.
//! 3. During a transfer the leader accepts no proposals; the transfer is abandoned after an
//!    election timeout.

use super::message::MessageBody;
use super::progress::Progress;
use super::types::{
    ConfChange, ConfChangeOp, ConfState, EntryId, EntryKind, LogIndex, NodeId,
    CONF_CONTEXT_SIZE_MAX,
};
use super::{ProposeError, Raft, RoleState, Transfer};
use crate::limits::MEMBERS_MAX;

impl Raft {
    pub(super) fn check_can_propose(&self) -> Result<(), ProposeError> {
        let RoleState::Leader(ls) = &self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if ls.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    pub(super) fn propose_conf_change_checked(
        &mut self,
        cc: ConfChange,
    ) -> Result<EntryId, ProposeError> {
        self.propose_conf_change_inner(cc, false)
    }

    /// `cc` (an AddLearner) re-admits a member under a new record: accepted also when the
    /// node is a learner already (the record changes, not the configuration), and the leader
    /// forgets what it knew of the node's log, since that storage is gone: its match index
    /// restarts at 0 and it is probed afresh, so no acknowledgement of the old storage counts
    /// toward its promotion (the node layer's `membership.rs` says why).
    pub(super) fn propose_readmission_checked(
        &mut self,
        cc: ConfChange,
    ) -> Result<EntryId, ProposeError> {
        if cc.op != ConfChangeOp::AddLearner {
            return Err(ProposeError::InvalidConfChange);
        }
        let node = cc.node;
        let next = self.log.last_index().next();
        let id = self.propose_conf_change_inner(cc, true)?;
        let cap = self.cfg.inflight_msgs_max;
        if let RoleState::Leader(ls) = &mut self.role {
            if node != self.id {
                ls.progress.insert(node, Progress::new(next, cap));
            }
        }
        Ok(id)
    }

    fn propose_conf_change_inner(
        &mut self,
        cc: ConfChange,
        record_only_ok: bool,
    ) -> Result<EntryId, ProposeError> {
        self.check_can_propose()?;
        if !self.committed_in_term() || !self.pending_confs.is_empty() {
            return Err(ProposeError::ConfChangePending);
        }
        if cc.context.len() > CONF_CONTEXT_SIZE_MAX {
            return Err(ProposeError::TooLarge {
                size: cc.context.len(),
            });
        }
        let next = cc.apply_to(&self.conf);
        if (next == self.conf && !record_only_ok) || next.voters.is_empty() {
            return Err(ProposeError::InvalidConfChange);
        }
        let count = next.voters.len() + next.learners.len();
        if count > MEMBERS_MAX {
            // Every list of members (peer frames, snapshot headers) is bounded by this limit.
            return Err(ProposeError::TooManyMembers { count });
        }
        let id = self.append_local(EntryKind::ConfChange, cc.encode().into());
        ::log::info!("node {} proposed {:?} at {id}", self.id, cc);
        Ok(id)
    }

    /// Re-derives the configurations of the ConfChange entries at or after `from` (what was
    /// recorded there was just replaced), and the configuration in force.
    pub(super) fn scan_conf_entries_from(&mut self, from: LogIndex) {
        let pending = self.pending_confs.len();
        self.pending_confs.retain(|(i, _)| *i < from);
        // Whether the configurations moved (a change cut away or appended): only then can the
        // tail configurations (`refresh_tail`); a plain append (every turn) changes nothing.
        let mut moved = self.pending_confs.len() != pending;
        let mut conf = match self.pending_confs.last() {
            Some((_, c)) => c.clone(),
            None => self.conf_committed.clone(),
        };
        let mut i = from.max(self.log.commit().next());
        while i <= self.log.last_index() {
            let e = self.log.entry(i).expect("entry in view");
            if e.kind == EntryKind::ConfChange {
                match ConfChange::decode(&e.data) {
                    Ok(cc) => {
                        conf = Self::apply_conf_change(self.id, i, &cc, &conf);
                        self.pending_confs.push((i, conf.clone()));
                        moved = true;
                    }
                    Err(err) => ::log::error!("node {}: bad conf change at {i}: {err}", self.id),
                }
            }
            i = i.next();
        }
        if conf != self.conf {
            ::log::info!(
                "node {}: membership now voters {:?} learners {:?} (log up to {})",
                self.id,
                conf.voters,
                conf.learners,
                self.log.last_index()
            );
            self.conf = conf;
            self.sync_leader_progress();
        }
        if moved {
            self.refresh_tail();
        }
    }

    /// The configuration after the change at `index`. A change that would exceed
    /// `MEMBERS_MAX` (which our leader refuses to propose, but a log entry comes from the
    /// network) has no effect, like one that does not decode: every node reads the same log
    /// the same way, so all of them agree on the configuration.
    fn apply_conf_change(
        id: NodeId,
        index: LogIndex,
        cc: &ConfChange,
        conf: &ConfState,
    ) -> ConfState {
        let next = cc.apply_to(conf);
        if next.voters.len() + next.learners.len() > MEMBERS_MAX {
            ::log::error!(
                "node {id}: ignoring conf change at {index}: {cc:?} exceeds {MEMBERS_MAX} members"
            );
            return conf.clone();
        }
        next
    }

    /// The commit index reached `commit`: the configurations up to it are committed. A leader
    /// that is not a voter of the committed configuration steps down (thesis §4.2.2).
    pub(super) fn conf_committed_to(&mut self, commit: LogIndex) {
        let pending = self.pending_confs.len();
        while self
            .pending_confs
            .first()
            .is_some_and(|(i, _)| *i <= commit)
        {
            self.conf_committed = self.pending_confs.remove(0).1;
        }
        if self.pending_confs.len() != pending {
            self.refresh_tail();
        }
        if matches!(self.role, RoleState::Leader(_)) && !self.conf_committed.is_voter(self.id) {
            // Tell the others the change committed before leaving.
            self.bcast_append();
            ::log::info!("node {} stepping down: no longer a voter", self.id);
            self.become_follower(self.term, None);
        }
    }

    /// The leader tracks exactly the members of the configuration in force.
    fn sync_leader_progress(&mut self) {
        let next = self.log.last_index().next();
        let cap = self.cfg.inflight_msgs_max;
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        for m in self.conf.members() {
            ls.progress
                .entry(m)
                .or_insert_with(|| Progress::new(next, cap));
        }
        let (id, conf) = (self.id, &self.conf);
        ls.progress.retain(|&p, _| p == id || conf.contains(p));
        if ls.transfer.as_ref().is_some_and(|t| !conf.is_voter(t.to)) {
            ls.transfer = None;
        }
    }

    pub(super) fn transfer_leadership_checked(&mut self, to: NodeId) -> Result<(), ProposeError> {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &mut self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) || !ls.progress.contains_key(&to) {
            return Err(ProposeError::UnknownNode { node: to });
        }
        if ls.transfer.as_ref().is_some_and(|t| t.to == to) {
            return Ok(());
        }
        ls.transfer = Some(Transfer {
            to,
            elapsed_ticks: 0,
        });
        ::log::info!("node {} transferring leadership to {to}", self.id);
        let caught_up = ls.progress[&to].match_index == last;
        if caught_up {
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_appends(to, true);
        }
        Ok(())
    }

    /// Once the transfer target holds our whole log, tell it to campaign now.
    pub(super) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let last = self.log.last_index();
        let RoleState::Leader(ls) = &self.role else {
            return;
        };
        let ready = ls.transfer.as_ref().is_some_and(|t| t.to == from)
            && ls
                .progress
                .get(&from)
                .is_some_and(|pr| pr.match_index == last);
        if ready {
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    /// Abandons a transfer that did not finish within an election timeout.
    pub(super) fn tick_transfer(&mut self) {
        let timeout = self.cfg.election_timeout_ticks;
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        if let Some(t) = &mut ls.transfer {
            t.elapsed_ticks += 1;
            if t.elapsed_ticks >= timeout {
                ::log::info!(
                    "node {}: leadership transfer to {} timed out",
                    self.id,
                    t.to
                );
                ls.transfer = None;
            }
        }
    }
}
