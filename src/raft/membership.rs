//! Membership changes and leadership transfer.
//!
//! Single-server changes (thesis §4.1) carried in `EntryKind::ConfChange` entries. As in etcd,
//! a change takes effect when it COMMITS, on every node alike, which keeps `conf` a function of
//! the committed prefix. Learners receive the log but neither vote nor count toward quorum.
//!
//! Invariants:
//! 1. At most one change is uncommitted, and a leader proposes one only after an entry of its
//!    own term committed (the fix for the single-server change bug, Ongaro 2015).
//! 2. A leader that is no longer a voter steps down once its removal commits.
//! 3. During a transfer the leader accepts no proposals; the transfer is abandoned after an
//!    election timeout.

use super::message::MessageBody;
use super::progress::Progress;
use super::types::{ConfChange, EntryId, EntryKind, LogIndex, NodeId, CONF_CONTEXT_SIZE_MAX};
use super::{ProposeError, Raft, RoleState, Transfer};

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
        self.check_can_propose()?;
        let commit = self.log.commit();
        let committed = self.committed_in_term();
        let RoleState::Leader(ls) = &self.role else {
            unreachable!("checked leader");
        };
        if !committed || ls.pending_conf_index > commit {
            return Err(ProposeError::ConfChangePending);
        }
        if cc.context.len() > CONF_CONTEXT_SIZE_MAX {
            return Err(ProposeError::TooLarge {
                size: cc.context.len(),
            });
        }
        let next = cc.apply_to(&self.conf);
        if next == self.conf || next.voters.is_empty() {
            return Err(ProposeError::InvalidConfChange);
        }
        let id = self.append_local(EntryKind::ConfChange, cc.encode());
        if let RoleState::Leader(ls) = &mut self.role {
            ls.pending_conf_index = id.index;
        }
        ::log::info!("node {} proposed {:?} at {id}", self.id, cc);
        Ok(id)
    }

    /// Applies every membership change committed in `(old, commit]` to `conf`.
    pub(super) fn apply_committed_conf_changes(&mut self, old: LogIndex) {
        let mut i = old.next();
        while i <= self.log.commit() {
            let e = self.log.entry(i).expect("newly committed entry is in the view");
            if e.kind == EntryKind::ConfChange {
                match ConfChange::decode(&e.data) {
                    Ok(cc) => self.apply_conf_change(&cc, i),
                    Err(err) => ::log::error!("node {}: bad conf change at {i}: {err}", self.id),
                }
            }
            i = i.next();
        }
    }

    fn apply_conf_change(&mut self, cc: &ConfChange, index: LogIndex) {
        self.conf = cc.apply_to(&self.conf);
        ::log::info!(
            "node {}: membership at {index} is now voters {:?} learners {:?}",
            self.id,
            self.conf.voters,
            self.conf.learners
        );
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
        if !self.conf.is_voter(self.id) {
            // Tell the others the change committed before leaving.
            self.bcast_append();
            ::log::info!("node {} stepping down: no longer a voter", self.id);
            self.become_follower(self.term, None);
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
            && ls.progress.get(&from).is_some_and(|pr| pr.match_index == last);
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
