//! Linearizable reads by ReadIndex (thesis §6.4).
//!
//! A read records the commit index when it arrives and joins a heartbeat round; it is released
//! (as a `ReadState`) once a majority of voters answered a heartbeat of that round or a later
//! one. Reads share a round while its heartbeats have not yet left the core (until the next
//! `ready`), so every answer counted was to a heartbeat sent after the read arrived. A leader
//! whose no-op has not committed yet does not know the commit index (§8), so its reads wait.
//! When the voters are exactly this node, it is a quorum by itself and a read is released at
//! once, with no round; a leader that is not among the voters (its removal is in the log but
//! not committed) must hear from them like any other. When the leader steps down, every read
//! still pending is handed back as failed (`Ready::failed_reads`) so the node can answer it.
//!
//! Invariants:
//! 1. `pending` is in arrival order, with non-decreasing `seq` and `index`.
//! 2. A read is released only by answers to a round begun at or after its arrival, or at once
//!    when this node alone is the voters.
//! 3. Every read accepted by `read_index` leaves exactly once: as a `ReadState`, or as a failed
//!    context when this node stops being leader first.

use std::collections::{BTreeMap, VecDeque};

use super::ready::ReadState;
use super::types::{LogIndex, NodeId};
use super::{quorum, ProposeError, Raft, RoleState};
use crate::limits;

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    index: LogIndex,
    seq: u64,
}

/// The leader's reads in progress.
#[derive(Debug, Default)]
pub struct ReadTracker {
    /// The current round; heartbeats carry it.
    seq: u64,
    /// The current round's heartbeats are still in the outbox: new reads may join it.
    round_open: bool,
    pending: VecDeque<PendingRead>,
    /// The highest round each voter answered.
    acked: BTreeMap<NodeId, u64>,
    /// Reads waiting for this leader's first commit.
    waiting: Vec<u64>,
}

impl ReadTracker {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn close_round(&mut self) {
        self.round_open = false;
    }
    pub fn acked(&mut self, from: NodeId, seq: u64) {
        let a = self.acked.entry(from).or_insert(0);
        *a = (*a).max(seq);
    }
    fn len(&self) -> usize {
        self.pending.len() + self.waiting.len()
    }
    /// Every read not yet released, in arrival order among the released-later ones.
    pub fn drain_unreleased(&mut self) -> Vec<u64> {
        let mut ctxs: Vec<u64> = self.pending.drain(..).map(|r| r.ctx).collect();
        ctxs.append(&mut self.waiting);
        ctxs
    }
    /// Adds a read at `index`; returns true when it opened a new round (whose heartbeats the
    /// caller must send).
    fn add(&mut self, ctx: u64, index: LogIndex) -> bool {
        let opened = !self.round_open;
        if opened {
            self.seq += 1;
            self.round_open = true;
        }
        self.pending.push_back(PendingRead {
            ctx,
            index,
            seq: self.seq,
        });
        opened
    }
}

impl Raft {
    pub(super) fn read_index_checked(&mut self, ctx: u64) -> Result<(), ProposeError> {
        let committed = self.committed_in_term();
        let commit = self.log.commit();
        let single = self.sole_voter();
        let RoleState::Leader(ls) = &mut self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if ls.reads.len() >= limits::READS_PENDING_MAX {
            return Err(ProposeError::TooManyReads);
        }
        if !committed {
            ls.reads.waiting.push(ctx);
        } else if single {
            self.read_states.push(ReadState { ctx, index: commit });
        } else if ls.reads.add(ctx, commit) {
            self.read_rounds += 1;
            self.bcast_heartbeat();
        }
        Ok(())
    }

    /// The voters are exactly this node: it alone is a quorum, so a read needs no round.
    /// Not when the one voter is another node (our removal is in the log), which must confirm
    /// our leadership: it may already lead on its own. Learners do not vote and do not count.
    fn sole_voter(&self) -> bool {
        self.conf.voters == [self.id]
    }

    /// This leader's first entry committed: the reads that waited for it start a round.
    pub(super) fn start_waiting_reads(&mut self) {
        let commit = self.log.commit();
        let single = self.sole_voter();
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let waiting = std::mem::take(&mut ls.reads.waiting);
        let mut opened = false;
        for ctx in waiting {
            if single {
                self.read_states.push(ReadState { ctx, index: commit });
            } else {
                opened |= ls.reads.add(ctx, commit);
            }
        }
        if opened {
            self.read_rounds += 1;
            self.bcast_heartbeat();
        }
    }

    /// Releases every read whose round a majority of voters has answered.
    pub(super) fn release_reads(&mut self) {
        let RoleState::Leader(ls) = &mut self.role else {
            return;
        };
        let voters = &self.conf.voters;
        while let Some(front) = ls.reads.pending.front() {
            let answered = voters
                .iter()
                .filter(|&&v| {
                    v == self.id || ls.reads.acked.get(&v).is_some_and(|&s| s >= front.seq)
                })
                .count();
            if !quorum::is_majority(answered, voters.len()) {
                break;
            }
            let r = ls.reads.pending.pop_front().expect("front exists");
            self.read_states.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(t: &ReadTracker) -> Vec<u64> {
        t.pending.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn reads_share_a_round_only_while_its_heartbeats_are_in_the_outbox() {
        let mut t = ReadTracker::default();
        assert!(t.add(1, LogIndex(5)), "the first read opens round 1");
        assert!(!t.add(2, LogIndex(5)), "a read in the same turn joins it");
        t.close_round(); // `ready`: round 1's heartbeats left the core
        assert!(
            t.add(3, LogIndex(6)),
            "a later read opens round 2 (invariant 2)"
        );
        assert!(!t.add(4, LogIndex(6)));
        assert_eq!(seqs(&t), vec![1, 1, 2, 2]);
        assert_eq!(t.seq(), 2);
        // Answers to round 1 count for round 1 only: the reads of round 2 need round 2's.
        t.acked(NodeId(2), 1);
        assert!(
            t.pending
                .iter()
                .filter(|r| r.seq <= t.acked[&NodeId(2)])
                .count()
                == 2
        );
        assert_eq!(t.drain_unreleased(), vec![1, 2, 3, 4]);
    }
}
