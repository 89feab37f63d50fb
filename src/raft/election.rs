//! Timers, terms, pre-vote, votes and role changes (§5.1, §5.2, §5.4.1; thesis §9.6 pre-vote,
//! §6.2 check-quorum and the leader lease on votes).
//!
//! Owns: the step dispatch (a message with a newer term makes us a follower before it is
//! handled, seed lesson 2, except a pre-vote and its grant, whose term nobody has started, and
//! a vote request inside our leader lease, which is ignored), the election timer (a fresh random timeout in [T, 2T) at every
//! reset: seed lesson 12), and the vote rules (one vote per term, durable before it is sent:
//! seed lesson 5; the up-to-date check on typed (term, index): seed lesson 1).
//!
//! A node with an uncertain log tail (`uncertain.rs`) records the log position every vote
//! request announces, grants and campaigns only past the bar those positions set, and while
//! it may not campaign (or may not vote at all: a new incarnation, a learner) its timer sends
//! PreVote probes instead, so that the others learn its position too.

use super::message::{Message, MessageBody};
use super::progress::Progress;
use super::read::ReadTracker;
use super::types::{ConfState, EntryKind, LogIndex, NodeId, Payload, Term};
use super::{quorum, LeaderState, Raft, RoleState, Votes};

/// What kind of election to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Campaign {
    /// Ask first whether we could win, without bumping the term.
    PreVote,
    Election,
    /// On a leader's TimeoutNow: skip pre-vote, and voters ignore their leader lease.
    Transfer,
}

impl Raft {
    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        let t = self.cfg.election_timeout_ticks;
        self.election_timeout_ticks = self.prng.range(t, 2 * t);
    }

    /// A voter of the configuration in force (the latest in the log) campaigns; so does a voter
    /// of the committed one whose uncommitted tail takes it out of the voters, since it may be
    /// the only node able to win (see "Campaigning while changed out" in `membership.rs`).
    /// Either way the votes are counted in the configuration in force.
    ///
    /// Also a voter of any configuration in the uncommitted part of the log: after a restart
    /// the commit index is the snapshot's, so `conf_committed` may be older than what was
    /// committed, even empty (a cluster formed by `--bootstrap` starts from no members);
    /// a node whose unseen removal of itself holds the longest log must still campaign
    /// (simulator seed 413). Safe by the same argument: only which configuration counts the
    /// votes matters, never whether the candidate is in it.
    pub(super) fn promotable(&self) -> bool {
        self.conf.is_voter(self.id)
            || self.conf_committed.is_voter(self.id)
            || self.pending_confs.iter().any(|(_, c)| c.is_voter(self.id))
    }

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_at(to, self.term, body);
    }

    fn send_at(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let msg = Message {
            from: self.id,
            to,
            term,
            body,
        };
        self.msgs.push(msg);
    }

    /// Messages that claim something durable (a vote, an ack): sent only after the sync.
    pub(super) fn send_persisted(&mut self, to: NodeId, body: MessageBody) {
        let msg = Message {
            from: self.id,
            to,
            term: self.term,
            body,
        };
        self.persisted_msgs.push(msg);
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks < self.election_timeout_ticks {
            return;
        }
        if !self.promotable() || !self.may_campaign() {
            // A learner probes too: in an uncertain voter's newer configuration it may be a
            // voter whose report that voter needs (simulator seed 187).
            self.probe();
            return;
        }
        let kind = if self.cfg.pre_vote {
            Campaign::PreVote
        } else {
            Campaign::Election
        };
        self.campaign(kind);
    }

    /// Whether this node may start an election now: it votes (`set_voting`), and an
    /// uncertain tail allows it (`uncertain.rs` rule 2).
    fn may_campaign(&self) -> bool {
        self.voting
            && self
                .uncertain
                .may_campaign(self.id, &self.tail, self.log.last_id())
    }

    /// The timer fired but we may not campaign: announce our log position in PreVote requests
    /// (`uncertain.rs` rule 2), staying a follower and never proceeding on the answers. A
    /// pre-vote changes nobody's term, and a node in a leader's lease ignores it.
    fn probe(&mut self) {
        self.reset_election_timer();
        // No leader was heard within a timeout: forget it, or our own lease would make us
        // ignore the others' pre-votes for another timeout.
        self.leader = None;
        let last = self.log.last_id();
        let term = self.term.next();
        ::log::debug!(
            "node {}: probing the voters at term {term} with our last {last} (uncertain since {:?}, voting {})",
            self.id,
            self.uncertain.since(),
            self.voting
        );
        // Every member the rules may need a report of (`uncertain.rs`): the voters and
        // learners of every tail configuration; the answers carry their positions too.
        let me = self.id;
        let mut to: Vec<NodeId> = self.tail.iter().flat_map(|t| t.conf.members()).collect();
        to.extend(self.conf.voters.iter().copied());
        to.sort();
        to.dedup();
        let floor = self.pre_vote_floor();
        for to in to.into_iter().filter(|&v| v != me) {
            self.send_at(to, term, MessageBody::PreVote { last, floor });
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        self.tick_transfer();
        if self.election_elapsed_ticks >= self.cfg.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                ::log::info!(
                    "node {} stepping down at term {}: no quorum heard within an election timeout",
                    self.id,
                    self.term
                );
                self.become_follower(self.term, None);
                return;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.bcast_heartbeat();
        }
        self.tick_commit();
    }

    /// Check-quorum: did a majority of voters (us included) answer since the last round?
    /// Resets the round.
    fn quorum_recently_active(&mut self) -> bool {
        let RoleState::Leader(ls) = &mut self.role else {
            return false;
        };
        let mut active = 0;
        for (&id, pr) in ls.progress.iter_mut() {
            if self.conf.is_voter(id) && (pr.recent_active || id == self.id) {
                active += 1;
            }
            pr.recent_active = false;
        }
        quorum::is_majority(active, self.conf.voters.len())
    }

    /// Term handling first, then one handler per message kind.
    pub(super) fn step_checked(&mut self, msg: Message) {
        if let MessageBody::PreVote { last, .. }
        | MessageBody::Vote { last, .. }
        | MessageBody::PreVoteResp { last, .. } = msg.body
        {
            // Whatever its term: any position a member announced since our start will do
            // (`uncertain.rs`).
            self.uncertain.report(msg.from, last);
        }
        if msg.term > self.term {
            if !self.handle_newer_term(&msg) {
                return;
            }
        } else if msg.term < self.term {
            self.handle_older_term(msg);
            return;
        }
        let from = msg.from;
        match msg.body {
            MessageBody::PreVote { last, floor } => {
                self.handle_pre_vote(from, msg.term, last, floor)
            }
            MessageBody::Vote { last, .. } => self.handle_vote(from, last),
            MessageBody::PreVoteResp { granted, .. } => {
                self.handle_vote_resp(from, granted, Campaign::PreVote)
            }
            MessageBody::VoteResp { granted } => {
                self.handle_vote_resp(from, granted, Campaign::Election)
            }
            MessageBody::Append {
                prev,
                entries,
                commit,
            } => {
                if self.accept_leader(from) {
                    self.handle_append(from, prev, entries, commit);
                }
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                if self.accept_leader(from) {
                    self.handle_heartbeat(from, commit, read_seq);
                }
            }
            MessageBody::Snapshot { meta } => {
                if self.accept_leader(from) {
                    self.handle_snapshot(from, meta);
                }
            }
            MessageBody::AppendResp { result } => self.handle_append_resp(from, result),
            MessageBody::HeartbeatResp { read_seq } => self.handle_heartbeat_resp(from, read_seq),
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
        }
    }

    /// §5.1: a newer term makes us a follower of it before the message is handled. Returns
    /// false when the message is to be ignored instead.
    fn handle_newer_term(&mut self, msg: &Message) -> bool {
        let (is_vote_request, transfer) = match msg.body {
            MessageBody::PreVote { .. } => (true, false),
            MessageBody::Vote { transfer, .. } => (true, transfer),
            _ => (false, false),
        };
        if is_vote_request && !transfer && self.in_leader_lease() {
            ::log::debug!(
                "node {}: ignoring {} from {} at term {}: heard from leader {:?} recently",
                self.id,
                msg.body.name(),
                msg.from,
                msg.term,
                self.leader
            );
            return false;
        }
        match msg.body {
            // The term of a pre-vote (and of its grant) is the one the sender would campaign
            // in; nobody has started it yet.
            MessageBody::PreVote { .. } | MessageBody::PreVoteResp { granted: true, .. } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::Snapshot { .. } => {
                self.become_follower(msg.term, Some(msg.from));
                true
            }
            _ => {
                self.become_follower(msg.term, None);
                true
            }
        }
    }

    /// Check-quorum's other half: a node that heard from a live leader within the minimum
    /// election timeout does not help depose it.
    fn in_leader_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.election_elapsed_ticks < self.cfg.election_timeout_ticks
    }

    fn handle_older_term(&mut self, msg: Message) {
        match msg.body {
            // A stale leader (e.g. one cut off by a partition) would otherwise never learn of
            // the newer term, since pre-vote keeps the rest of the cluster's term steady.
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                if self.cfg.check_quorum || self.cfg.pre_vote =>
            {
                self.send(msg.from, MessageBody::HeartbeatResp { read_seq: 0 });
            }
            MessageBody::PreVote { floor, .. } => {
                let last = self.log.last_id_at_or_below(floor);
                self.send(
                    msg.from,
                    MessageBody::PreVoteResp {
                        granted: false,
                        last,
                    },
                );
            }
            _ => ::log::debug!(
                "node {}: dropping stale {} from {} (term {} < {})",
                self.id,
                msg.body.name(),
                msg.from,
                msg.term,
                self.term
            ),
        }
    }

    /// A message at our term from the leader of that term.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        match self.role {
            RoleState::Leader(_) => {
                ::log::error!(
                    "node {}: leader of term {} got a leader message from {from}; dropped",
                    self.id,
                    self.term
                );
                return false;
            }
            RoleState::Follower => {
                self.leader = Some(from);
                self.election_elapsed_ticks = 0;
            }
            _ => self.become_follower(self.term, Some(from)),
        }
        true
    }

    pub(super) fn campaign(&mut self, kind: Campaign) {
        let mut votes = Votes::default();
        votes.answers.insert(self.id, true);
        let term = match kind {
            Campaign::PreVote => {
                self.role = RoleState::PreCandidate(votes);
                self.leader = None;
                ::log::info!(
                    "node {} became pre-candidate at term {}",
                    self.id,
                    self.term
                );
                self.term.next()
            }
            Campaign::Election | Campaign::Transfer => {
                self.term = self.term.next();
                self.vote = Some(self.id);
                self.leader = None;
                self.role = RoleState::Candidate(votes);
                ::log::info!("node {} became candidate at term {}", self.id, self.term);
                self.term
            }
        };
        self.reset_election_timer();
        let own = usize::from(self.conf.is_voter(self.id));
        if quorum::is_majority(own, self.conf.voters.len()) {
            self.won_election(kind);
            return;
        }
        let last = self.log.last_id();
        let me = self.id;
        let voters: Vec<NodeId> = self.conf.voters.clone();
        for to in voters.into_iter().filter(|&v| v != me) {
            match kind {
                Campaign::PreVote => {
                    let floor = self.pre_vote_floor();
                    self.send_at(to, term, MessageBody::PreVote { last, floor })
                }
                // The vote for ourselves must be durable before anyone counts on our
                // candidacy (seed lesson 5), hence persisted.
                _ => self.send_persisted(
                    to,
                    MessageBody::Vote {
                        last,
                        transfer: kind == Campaign::Transfer,
                    },
                ),
            }
        }
    }

    fn won_election(&mut self, kind: Campaign) {
        match kind {
            // Reports that arrived meanwhile may have raised the bar above our log.
            Campaign::PreVote if !self.may_campaign() => self.become_follower(self.term, None),
            Campaign::PreVote => self.campaign(Campaign::Election),
            _ => self.become_leader(),
        }
    }

    /// What our pre-votes ask the answers' `last` to be at most (`MessageBody::PreVote`): the
    /// term our tail is uncertain since, or `TERM_MAX` (the responder's last entry).
    fn pre_vote_floor(&self) -> Term {
        self.uncertain.since().unwrap_or(super::types::TERM_MAX)
    }

    /// Rule 1 of `uncertain.rs`: whether a candidate whose log ends at `last` may have our
    /// (pre-)vote as far as an uncertain tail is concerned.
    fn uncertain_allows(&self, last: super::types::EntryId) -> bool {
        self.uncertain
            .may_grant(self.id, &self.tail, self.log.last_id(), last)
    }

    /// Thesis §9.6: grant if we would vote for it in `term`, without changing our own state.
    fn handle_pre_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last: super::types::EntryId,
        floor: Term,
    ) {
        let granted = self.voting
            && term > self.term
            && last.is_up_to_date_with(self.log.last_id())
            && self.uncertain_allows(last);
        let reply_term = if granted { term } else { self.term };
        ::log::debug!(
            "node {}: pre-vote for {from} at term {term}: granted={granted}",
            self.id
        );
        let last = self.log.last_id_at_or_below(floor);
        self.send_at(from, reply_term, MessageBody::PreVoteResp { granted, last });
    }

    /// §5.2, §5.4.1: one vote per term, for a candidate whose log is at least as up to date.
    fn handle_vote(&mut self, from: NodeId, last: super::types::EntryId) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        // A node not voting (its storage is not the member's that the configuration records)
        // refuses: its earlier incarnation may have voted in this term already.
        let granted = self.voting
            && can_vote
            && last.is_up_to_date_with(self.log.last_id())
            && self.uncertain_allows(last);
        if granted {
            self.vote = Some(from);
            self.election_elapsed_ticks = 0;
        }
        ::log::debug!(
            "node {}: vote for {from} at term {}: granted={granted} (our last {}, theirs {last})",
            self.id,
            self.term,
            self.log.last_id()
        );
        self.send_persisted(from, MessageBody::VoteResp { granted });
    }

    fn handle_vote_resp(&mut self, from: NodeId, granted: bool, kind: Campaign) {
        if !self.conf.is_voter(from) {
            return;
        }
        let votes = match (&mut self.role, kind) {
            (RoleState::PreCandidate(v), Campaign::PreVote) => v,
            (RoleState::Candidate(v), Campaign::Election) => v,
            _ => return,
        };
        votes.answers.entry(from).or_insert(granted);
        let (yes, no) = tally(&self.conf, votes);
        let voters = self.conf.voters.len();
        if quorum::is_majority(yes, voters) {
            self.won_election(kind);
        } else if quorum::is_majority(no, voters) {
            self.become_follower(self.term, None);
        }
    }

    fn handle_timeout_now(&mut self, from: NodeId) {
        if !self.promotable() || !self.may_campaign() || matches!(self.role, RoleState::Leader(_)) {
            return;
        }
        ::log::info!(
            "node {} campaigning at once on TimeoutNow from {from}",
            self.id
        );
        self.campaign(Campaign::Transfer);
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was = self.role();
        if let RoleState::Leader(ls) = &mut self.role {
            // Reads waiting for a round or for our first commit can no longer be confirmed:
            // hand them back so the node answers them (read.rs invariant 3).
            self.failed_reads.extend(ls.reads.drain_unreleased());
        }
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = RoleState::Follower;
        self.leader = leader;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_election_timer();
        if was != super::Role::Follower {
            ::log::info!(
                "node {} became follower at term {} (was {was})",
                self.id,
                self.term
            );
        }
    }

    fn become_leader(&mut self) {
        assert!(
            matches!(self.role, RoleState::Candidate(_)),
            "node {} becoming leader from {}",
            self.id,
            self.role()
        );
        let last = self.log.last_index();
        let cap = self.cfg.inflight_msgs_max;
        let mut progress = std::collections::BTreeMap::new();
        for id in self.conf.members() {
            progress.insert(id, Progress::new(last.next(), cap));
        }
        let mut me = Progress::new(last.next(), cap);
        me.match_index = self.log.persisted();
        progress.insert(self.id, me);
        self.role = RoleState::Leader(Box::new(LeaderState {
            progress,
            reads: ReadTracker::default(),
            transfer: None,
            term_start: last.next(),
        }));
        self.leader = Some(self.id);
        self.heartbeat_elapsed_ticks = 0;
        self.election_elapsed_ticks = 0;
        ::log::info!("node {} became leader at term {}", self.id, self.term);
        // It was allowed to campaign, so its log is at least the bar (`uncertain.rs` rule 3).
        self.clear_uncertain("won an election");
        // §8: an entry of our own term lets us commit (and learn the commit index) at once.
        self.append_local(EntryKind::Noop, Payload::from(&[][..]));
        self.bcast_append();
        self.bcast_pending = false;
    }

    /// The index of our no-op: committed once `commit >= term_start`.
    pub(super) fn committed_in_term(&self) -> bool {
        match &self.role {
            RoleState::Leader(ls) => self.log.commit() >= ls.term_start,
            _ => false,
        }
    }

    pub(super) fn leader_term_start(&self) -> LogIndex {
        match &self.role {
            RoleState::Leader(ls) => ls.term_start,
            _ => LogIndex(0),
        }
    }
}

/// The granted and refused answers of the voters of `conf`, the configuration in force. A
/// candidate's own answer counts only while it is one of them.
fn tally(conf: &ConfState, votes: &Votes) -> (usize, usize) {
    let counted = votes.answers.iter().filter(|(&id, _)| conf.is_voter(id));
    let (yes, no): (Vec<_>, Vec<_>) = counted.partition(|(_, &granted)| granted);
    (yes.len(), no.len())
}
