//! The Raft consensus core: a pure state machine (no I/O, no clock, no global randomness).
//!
//! Inputs: [`Raft::step`] (a peer's message), [`Raft::tick`] (one timer tick), [`Raft::propose`],
//! [`Raft::propose_conf_change`], [`Raft::read_index`], [`Raft::transfer_leadership`], and the
//! driver's acknowledgements ([`Raft::advance`], [`Raft::snapshot_taken`],
//! [`Raft::report_snapshot`], [`Raft::report_unreachable`]). Every output leaves through one
//! [`Ready`], whose doc comment is the ordering contract.
//!
//! Files: `election.rs` (timers, the step dispatch, pre-vote, votes, role changes),
//! `replication.rs` (appends, heartbeats, snapshots, commit), `read.rs` (ReadIndex),
//! `membership.rs` (configuration changes, leadership transfer), `log.rs` (the in-memory log
//! view), `progress.rs` (the leader's view of each follower), `quorum.rs`, `ready.rs` (the
//! output and its ordering contract), `message.rs` and `types.rs` (the vocabulary, public).
//!
//! A message is input from the network: whatever a buggy or malicious peer puts in it is
//! dropped (with a debug line) or clamped, never asserted on. `step` drops messages whose
//! terms or indexes exceed `TERM_MAX` / `INDEX_MAX` or that carry log entries of a term above
//! the message's (`message::in_range`), and each handler checks the fields it uses against
//! our own state. Assertions are for our own invariants and the driver's.
//!
//! Invariants (1 and 2 checked by `check_invariants` after every input):
//! 1. The log view's own invariants (see `log.rs`).
//! 2. A leader or candidate has voted for itself in its term; a leader knows itself as leader
//!    and, for every member, `match_index < next_index <= last_index + 1`.
//! 3. `conf` is the configuration after the latest ConfChange entry in the log that takes
//!    effect (thesis §4.1: a server uses the latest configuration in its log, committed or
//!    not; see `membership.rs` for the entries that take none), or the snapshot's when the log
//!    holds none; `conf_committed` is that of the committed prefix, and `pending_confs` the
//!    configurations after each ConfChange entry beyond the commit index, in log order.
//! 4. Between `ready` and `advance` no other input arrives.
//! 5. The snapshot metadata never moves backwards: `snapshot_taken` ignores a snapshot at or
//!    before the current one, and an InstallSnapshot at or before the commit index is only
//!    acknowledged.

mod election;
mod log;
mod membership;
pub mod message;
mod progress;
mod quorum;
mod read;
mod ready;
mod replication;
pub mod types;
mod uncertain;

use std::collections::BTreeMap;
use std::fmt;

pub use message::{AppendResult, Message, MessageBody, RejectHint};
pub use progress::ProgressState;
pub use ready::{ReadState, Ready};
pub use types::{
    ConfChange, ConfChangeOp, ConfState, Entry, EntryId, EntryKind, HardState, LogIndex, NodeId,
    Payload, SnapshotMeta, TailConf, Term,
};

use crate::limits;
use crate::prng::Prng;
use log::RaftLog;
use progress::Progress;
use read::ReadTracker;

/// The core's tuning. `Config::new` gives the defaults; tests override fields.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// T: every reset of the election timer draws a fresh timeout in [T, 2T) (seed lesson 12).
    pub election_timeout_ticks: u64,
    pub heartbeat_interval_ticks: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub inflight_msgs_max: usize,
    pub append_entries_max: usize,
    /// Payload bytes per append (at least one entry always goes).
    pub append_size_max: usize,
    pub committed_per_ready_max: usize,
    pub seed: u64,
}

impl Config {
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: limits::INFLIGHT_MSGS_MAX,
            append_entries_max: limits::APPEND_ENTRIES_MAX,
            append_size_max: limits::APPEND_SIZE_MAX,
            committed_per_ready_max: limits::APPLY_ENTRIES_PER_TURN_MAX,
            seed,
        }
    }

    fn validate(&self) {
        assert!(self.id.0 != 0, "node id 0 is reserved");
        assert!(
            self.heartbeat_interval_ticks > 0
                && self.heartbeat_interval_ticks < self.election_timeout_ticks,
            "heartbeat {} must be in (0, election timeout {})",
            self.heartbeat_interval_ticks,
            self.election_timeout_ticks
        );
        assert!(self.inflight_msgs_max > 0 && self.append_entries_max > 0);
        assert!(self.append_size_max > 0 && self.committed_per_ready_max > 0);
    }
}

/// What the node recovered from disk. A brand-new node: default hard state, `snapshot.last`
/// = 0/0 with `snapshot.conf` = the initial members, no entries.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// Contiguous, starting at `snapshot.last.index + 1`.
    pub entries: Vec<Entry>,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader {
        leader: Option<NodeId>,
    },
    TooLarge {
        size: usize,
    },
    TransferInProgress,
    /// A membership change is uncommitted, or this leader has not committed an entry of its
    /// term yet.
    ConfChangePending,
    /// The change would do nothing, or leave no voters.
    InvalidConfChange,
    /// The node is not a voter of the current configuration.
    UnknownNode {
        node: NodeId,
    },
    TooManyReads,
    /// The change would leave `count` members (voters and learners), above `MEMBERS_MAX`.
    TooManyMembers {
        count: usize,
    },
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader: Some(l) } => write!(f, "not the leader (try {l})"),
            ProposeError::NotLeader { leader: None } => write!(f, "not the leader (none known)"),
            ProposeError::TooLarge { size } => write!(
                f,
                "entry of {size} bytes exceeds {}",
                limits::ENTRY_SIZE_MAX
            ),
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress"),
            ProposeError::ConfChangePending => write!(f, "a membership change is pending"),
            ProposeError::InvalidConfChange => write!(f, "membership change has no effect"),
            ProposeError::UnknownNode { node } => write!(f, "node {node} is not a voter"),
            ProposeError::TooManyReads => {
                write!(f, "more than {} reads pending", limits::READS_PENDING_MAX)
            }
            ProposeError::TooManyMembers { count } => write!(
                f,
                "the change would make {count} members, above the limit of {}",
                limits::MEMBERS_MAX
            ),
        }
    }
}

impl std::error::Error for ProposeError {}

/// The role, as reported by [`Raft::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(s)
    }
}

/// One follower as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ProgressState,
}

/// A snapshot of the core's state for the driver, `status` commands and tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
    pub conf: ConfState,
    pub snapshot: SnapshotMeta,
    /// Leader only: every other member.
    pub progress: Vec<PeerStatus>,
    /// See [`Raft::set_voting`].
    pub voting: bool,
    /// The term this node's log tail is uncertain since (`uncertain.rs`), if it is.
    pub uncertain: Option<Term>,
}

/// Votes received in one (pre-)election: first answer per voter counts.
#[derive(Debug, Default)]
struct Votes {
    answers: BTreeMap<NodeId, bool>,
}

/// A leadership transfer in progress.
#[derive(Debug)]
struct Transfer {
    to: NodeId,
    elapsed_ticks: u64,
}

/// State only a leader has (style 7: role-specific state lives in its variant).
#[derive(Debug)]
struct LeaderState {
    /// Every member, this node included (its `match_index` is its durable last index).
    progress: BTreeMap<NodeId, Progress>,
    reads: ReadTracker,
    transfer: Option<Transfer>,
    /// The index of this leader's first entry (its no-op). Until it commits, the leader does
    /// not know the true commit index (§8), so reads and membership changes wait.
    term_start: LogIndex,
}

#[derive(Debug)]
enum RoleState {
    Follower,
    PreCandidate(Votes),
    Candidate(Votes),
    Leader(Box<LeaderState>),
}

/// One Raft node's consensus state. See the module documentation.
pub struct Raft {
    cfg: Config,
    id: NodeId,
    term: Term,
    vote: Option<NodeId>,
    /// The leader of `term`, when known.
    leader: Option<NodeId>,
    log: RaftLog,
    /// The configuration in force: that of the latest ConfChange in the log (invariant 3).
    conf: ConfState,
    /// The configuration of the committed prefix.
    conf_committed: ConfState,
    /// (index of a ConfChange entry beyond commit, the configuration after it), in log order.
    pending_confs: Vec<(LogIndex, ConfState)>,
    role: RoleState,
    prng: Prng,
    election_elapsed_ticks: u64,
    /// The current randomized timeout, in [T, 2T).
    election_timeout_ticks: u64,
    heartbeat_elapsed_ticks: u64,
    /// The latest durable local snapshot (taken or installed).
    snapshot: SnapshotMeta,
    /// The log view is being compacted up to here, a bounded step per `advance`.
    compact_target: LogIndex,
    /// A received snapshot the driver must install (next `Ready.snapshot`).
    pending_snapshot: Option<SnapshotMeta>,
    msgs: Vec<Message>,
    persisted_msgs: Vec<Message>,
    read_states: Vec<ReadState>,
    /// Reads this node accepted as leader and could not confirm before stepping down.
    failed_reads: Vec<u64>,
    /// ReadIndex rounds this node began as leader, over every term (for INFO: reads per
    /// round is what batching buys).
    read_rounds: u64,
    /// The hard state last handed to the driver.
    hard_state_emitted: HardState,
    /// Entries were proposed since the last `ready`: broadcast them then (batching).
    bcast_pending: bool,
    /// The leader's commit index advanced since the last `ready`: tell the followers waiting
    /// for it then (`replication.rs`, "Telling followers the commit index").
    commit_advanced: bool,
    awaiting_advance: bool,
    /// While false this node neither campaigns (timeout or TimeoutNow) nor grants a vote or
    /// pre-vote: the node turns it off while its newest membership does not record this
    /// node's storage (its incarnation) as a voter, e.g. after a lost disk (see
    /// `set_voting`).
    voting: bool,
    /// An uncertain log tail and the others' reported positions (`uncertain.rs`).
    uncertain: uncertain::Uncertain,
    /// The configurations an entry at the end of the log may have committed under
    /// (`uncertain.rs`, "Which configurations"), part of the hard state; `refresh_tail`
    /// keeps it current.
    tail: Vec<TailConf>,
}

impl Raft {
    /// A node recovered from `restored`. Commit and applied start at the snapshot index: the
    /// log is never trusted as committed (seed lesson 8).
    pub fn new(config: Config, restored: Restored) -> Raft {
        config.validate();
        let Restored {
            hard_state,
            snapshot,
            entries,
        } = restored;
        let log = RaftLog::new(snapshot.last, entries);
        let mut raft = Raft {
            id: config.id,
            prng: Prng::new(config.seed),
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            log,
            conf: snapshot.conf.clone(),
            conf_committed: snapshot.conf.clone(),
            pending_confs: Vec::new(),
            role: RoleState::Follower,
            election_elapsed_ticks: 0,
            election_timeout_ticks: config.election_timeout_ticks,
            heartbeat_elapsed_ticks: 0,
            snapshot,
            compact_target: LogIndex(0),
            pending_snapshot: None,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            read_states: Vec::new(),
            read_rounds: 0,
            failed_reads: Vec::new(),
            uncertain: uncertain::Uncertain::new(hard_state.uncertain, &hard_state.tail_confs),
            hard_state_emitted: hard_state,
            bcast_pending: false,
            commit_advanced: false,
            awaiting_advance: false,
            voting: true,
            tail: Vec::new(),
            cfg: config,
        };
        raft.reset_election_timer();
        raft.scan_conf_entries_from(raft.log.first_index());
        raft.refresh_tail();
        ::log::info!(
            "node {} starting at term {} (log {}..={}, snapshot {})",
            raft.id,
            raft.term,
            raft.log.first_index(),
            raft.log.last_index(),
            raft.snapshot.last
        );
        raft.check_invariants();
        raft
    }

    /// One timer tick.
    pub fn tick(&mut self) {
        self.assert_not_awaiting_advance("tick");
        match self.role {
            RoleState::Leader(_) => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.check_invariants();
    }

    /// A message from a peer.
    pub fn step(&mut self, msg: Message) {
        self.assert_not_awaiting_advance("step");
        if msg.to != self.id || msg.from == self.id || msg.from.0 == 0 {
            ::log::debug!("node {}: dropping misaddressed {:?}", self.id, msg);
            return;
        }
        if !message::in_range(&msg) {
            ::log::debug!(
                "node {}: dropping {} from {}: a term or index beyond {} / {}",
                self.id,
                msg.body.name(),
                msg.from,
                types::TERM_MAX,
                types::INDEX_MAX
            );
            return;
        }
        self.step_checked(msg);
        self.check_invariants();
    }

    /// A client command. Fails on a non-leader (with the leader, if known).
    pub fn propose(&mut self, data: impl Into<Payload>) -> Result<EntryId, ProposeError> {
        let data = data.into();
        self.assert_not_awaiting_advance("propose");
        self.check_can_propose()?;
        if data.len() > limits::ENTRY_SIZE_MAX {
            return Err(ProposeError::TooLarge { size: data.len() });
        }
        let id = self.append_local(EntryKind::Command, data);
        self.check_invariants();
        Ok(id)
    }

    /// A membership change (single-server; at most one uncommitted; see `membership.rs`).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<EntryId, ProposeError> {
        self.assert_not_awaiting_advance("propose_conf_change");
        let id = self.propose_conf_change_checked(cc)?;
        self.check_invariants();
        Ok(id)
    }

    /// Re-admits `cc.node` as a learner under a new record (an `AddLearner` whose context
    /// names a new incarnation): accepted even when it is a learner already, and the leader
    /// restarts its match index at 0 (see `membership.rs`).
    pub fn propose_readmission(&mut self, cc: ConfChange) -> Result<EntryId, ProposeError> {
        self.assert_not_awaiting_advance("propose_readmission");
        let id = self.propose_readmission_checked(cc)?;
        self.check_invariants();
        Ok(id)
    }

    /// The configuration in force (that of the newest ConfChange in the log).
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// A linearizable read; answered through `Ready::read_states` with the same `ctx`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        self.assert_not_awaiting_advance("read_index");
        self.read_index_checked(ctx)?;
        self.check_invariants();
        Ok(())
    }

    /// Follower `to` waits for the commit index to reach `index` (a follower read the leader
    /// answered with an index it had not committed yet): the leader sends it each advance
    /// toward `index` at once, rather than leaving it to the next append or tick
    /// (`replication.rs`, "Telling followers the commit index"). Ignored on a non-leader.
    pub fn want_commit(&mut self, to: NodeId, index: LogIndex) {
        self.assert_not_awaiting_advance("want_commit");
        self.want_commit_checked(to, index);
        self.check_invariants();
    }

    /// Hands leadership to `to` (thesis §3.10).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        self.assert_not_awaiting_advance("transfer_leadership");
        self.transfer_leadership_checked(to)?;
        self.check_invariants();
        Ok(())
    }

    /// Whether this node may campaign and grant votes (true unless the node says otherwise).
    ///
    /// A node whose storage is new (lost, or never admitted) must not vote as the member its
    /// id names: the votes and acknowledgements its earlier incarnation gave are gone with its
    /// disk, so counting it again could elect a leader lacking an acknowledged entry. The node
    /// turns voting off until its newest membership records this incarnation as a voter.
    /// Turning it off makes a (pre-)candidate a follower; a leader stays one (it was elected
    /// while voting, and its own incarnation cannot be replaced behind its back).
    pub fn set_voting(&mut self, voting: bool) {
        self.assert_not_awaiting_advance("set_voting");
        if self.voting == voting {
            return;
        }
        self.voting = voting;
        ::log::info!(
            "node {}: voting {}",
            self.id,
            if voting { "on" } else { "off" }
        );
        if !voting
            && matches!(
                self.role,
                RoleState::PreCandidate(_) | RoleState::Candidate(_)
            )
        {
            self.become_follower(self.term, None);
        }
        self.check_invariants();
    }

    pub fn voting(&self) -> bool {
        self.voting
    }

    /// Voter `id` came back as a new incarnation (it lost its storage): while uncertain, count
    /// it as having reported an empty log (`uncertain.rs`, "Lost storage elsewhere").
    pub fn report_replaced(&mut self, id: NodeId) {
        if id != self.id {
            self.uncertain.report(id, EntryId::default());
        }
    }

    /// A member whose incarnation the membership does not record (yet) announced its log
    /// position in a pre-vote answer: while uncertain, it counts as a report (its answer is
    /// not counted as a pre-vote). It may be named only in a configuration cut from our log
    /// (simulator seed 21: the cut entry admitted it as a learner). Its log is what it holds
    /// now; were it a replaced incarnation, it would count as empty anyway (`uncertain.rs`,
    /// "Lost storage elsewhere").
    pub fn report_position(&mut self, id: NodeId, last: EntryId) {
        if id != self.id {
            self.uncertain.report(id, last);
        }
    }

    /// The term this node's log tail is uncertain since (`uncertain.rs`), if it is.
    pub fn uncertain(&self) -> Option<Term> {
        self.uncertain.since()
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            uncertain: self.uncertain.since(),
            tail_confs: self.tail.clone(),
        }
    }

    /// Whether the hard state differs from the one last handed out (without building it).
    fn hard_state_changed(&self) -> bool {
        let e = &self.hard_state_emitted;
        e.term != self.term
            || e.vote != self.vote
            || e.uncertain != self.uncertain.since()
            || e.tail_confs != self.tail
    }

    /// Recomputes `tail` after the configurations changed (an append, a truncation, a
    /// commit, a snapshot) or the uncertainty cleared: the newest configuration, near; while
    /// its change is not known committed, the one before it, exactly (`uncertain.rs`).
    pub(super) fn refresh_tail(&mut self) {
        let mut live = vec![TailConf {
            conf: self.conf.clone(),
            near: true,
            every: false,
        }];
        if let Some(k) = self.pending_confs.len().checked_sub(1) {
            let prev = match k {
                0 => &self.conf_committed,
                _ => &self.pending_confs[k - 1].1,
            };
            if *prev != self.conf {
                live.push(TailConf {
                    conf: ConfState::new(prev.voters.clone(), Vec::new()),
                    near: false,
                    every: false,
                });
            }
        }
        self.tail = self.uncertain.tail_confs(live);
    }

    /// Rule 3 of `uncertain.rs`: the node trusts its log again (one log line).
    fn clear_uncertain(&mut self, why: &str) {
        let since = self.uncertain.since();
        if self.uncertain.clear() {
            self.refresh_tail();
            ::log::info!(
                "node {}: log tail certain again ({why}; was uncertain since term {})",
                self.id,
                since.unwrap_or_default()
            );
        }
    }

    pub fn has_ready(&self) -> bool {
        self.hard_state_changed()
            || self.bcast_pending
            || self.commit_advanced
            || self.log.has_unstable()
            || self.pending_snapshot.is_some()
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.read_states.is_empty()
            || !self.failed_reads.is_empty()
            || self.log.has_committed_to_apply()
    }

    /// Takes all pending output. Must be followed by `advance` before any other input.
    pub fn ready(&mut self) -> Ready {
        self.assert_not_awaiting_advance("ready");
        if self.bcast_pending {
            self.bcast_pending = false;
            self.bcast_append();
        }
        if self.commit_advanced {
            self.commit_advanced = false;
            self.send_wanted_commit();
        }
        if let RoleState::Leader(ls) = &mut self.role {
            ls.reads.close_round();
        }
        let hard_state = self.hard_state_changed().then(|| self.hard_state());
        if let Some(hs) = &hard_state {
            self.hard_state_emitted = hs.clone();
        }
        self.awaiting_advance = true;
        Ready {
            hard_state,
            entries: self.log.take_unstable(),
            snapshot: self.pending_snapshot.take(),
            messages: std::mem::take(&mut self.msgs),
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed: self.log.take_committed(self.cfg.committed_per_ready_max),
            read_states: std::mem::take(&mut self.read_states),
            failed_reads: std::mem::take(&mut self.failed_reads),
        }
    }

    /// The driver executed the last `Ready`: the log is durable up to `persisted` (its durable
    /// last index) and the state machine has applied up to `applied`.
    pub fn advance(&mut self, persisted: LogIndex, applied: LogIndex) {
        self.advance_written(persisted, persisted, applied);
    }

    /// `advance` for a driver that wrote the log up to `written` but made it durable only up
    /// to `persisted` (a leader that syncs its own log later: `log_synced` reports it).
    pub fn advance_written(&mut self, written: LogIndex, persisted: LogIndex, applied: LogIndex) {
        assert!(self.awaiting_advance, "advance without a ready");
        self.awaiting_advance = false;
        self.log.stored_to(written, persisted);
        self.log.applied_to(applied);
        self.trust_durable_log(persisted);
        self.compact_some();
        self.count_own_log(persisted);
        self.check_invariants();
    }

    /// The driver made the log it had written durable up to `synced`, between `Ready`s.
    /// On a leader this may commit (its own log counts once durable).
    pub fn log_synced(&mut self, synced: LogIndex) {
        self.assert_not_awaiting_advance("log_synced");
        // Not `synced` itself: its end may be entries this log has replaced (`synced_to`),
        // which must neither count as our acknowledgement nor clear an uncertain tail.
        let persisted = self.log.synced_to(synced);
        self.trust_durable_log(persisted);
        self.count_own_log(persisted);
        self.check_invariants();
    }

    /// The log is durable up to `persisted`: what that tells the uncertainty rule.
    fn trust_durable_log(&mut self, persisted: LogIndex) {
        if let Some(since) = self.uncertain.since() {
            // A durable entry of a later term came from a leader elected after the crash,
            // which held everything committed before it (`uncertain.rs` rule 3).
            if let Some(t) = self.log.term(persisted).filter(|&t| t > since) {
                self.clear_uncertain(&format!("the log holds {persisted} of term {t}"));
            }
        }
    }

    /// The log is durable up to `persisted`: on a leader, its own progress (which may commit).
    fn count_own_log(&mut self, persisted: LogIndex) {
        if let RoleState::Leader(ls) = &mut self.role {
            let me = ls
                .progress
                .get_mut(&self.id)
                .expect("leader has its own progress");
            if me.maybe_update(persisted) {
                self.commit_and_broadcast();
            }
        }
    }

    /// On a leader: whether its own log, once durable through `index`, would complete a
    /// majority for it with the voters that acknowledged it.
    pub fn own_sync_would_commit(&self, index: LogIndex) -> bool {
        let holding = self.other_voters_where(|pr| pr.match_index >= index);
        holding.is_some_and(|n| {
            self.conf.is_voter(self.id) && quorum::is_majority(n + 1, self.conf.voters.len())
        })
    }

    /// On a leader: whether the other voters that are keeping up (pipelined appends, heard
    /// from within the last check-quorum period) are a majority by themselves, so that
    /// entries can commit on their acknowledgements without this node's own sync.
    pub fn others_form_quorum(&self) -> bool {
        let keeping_up = self.other_voters_where(|pr| {
            pr.state == progress::ProgressState::Replicate && pr.recent_active
        });
        keeping_up.is_some_and(|n| quorum::is_majority(n, self.conf.voters.len()))
    }

    /// On a leader: how many voters other than itself satisfy `f`. `None` on a non-leader.
    fn other_voters_where(&self, f: impl Fn(&Progress) -> bool) -> Option<usize> {
        let RoleState::Leader(ls) = &self.role else {
            return None;
        };
        let n = self.conf.voters.iter().filter(|&&v| v != self.id);
        Some(n.filter(|v| ls.progress.get(v).is_some_and(&f)).count())
    }

    /// A local snapshot at `meta` is durable; drop the log view up to `compact_to`. Returns
    /// whether the core adopted it: a snapshot at or before the current one (a fork that
    /// finished after a newer snapshot was installed from the leader) is ignored, so the
    /// snapshot metadata and the log view never move backwards.
    pub fn snapshot_taken(&mut self, meta: SnapshotMeta, compact_to: LogIndex) -> bool {
        self.assert_not_awaiting_advance("snapshot_taken");
        if meta.last.index <= self.snapshot.last.index {
            ::log::debug!(
                "node {}: ignoring snapshot {}, not newer than {}",
                self.id,
                meta.last,
                self.snapshot.last
            );
            return false;
        }
        // The driver snapshots what it applied, and applied entries never change: anything
        // else is the driver's bug.
        assert!(
            compact_to <= meta.last.index && meta.last.index <= self.log.applied(),
            "snapshot {} / compact {compact_to} beyond applied {}",
            meta.last,
            self.log.applied()
        );
        assert!(
            meta.last.index < self.log.first_index() || self.log.matches(meta.last),
            "snapshot {} does not match the log",
            meta.last
        );
        self.snapshot = meta;
        self.compact_target = self.compact_target.max(compact_to);
        self.compact_some();
        self.check_invariants();
        true
    }

    /// Drop up to `COMPACT_ENTRIES_PER_STEP` entries toward `compact_target`. Dropping a whole
    /// snapshot interval at once frees tens of thousands of entries in one turn (measured:
    /// 7-19 ms per snapshot, 200 ms after a bulk load), so compaction proceeds a bounded step
    /// at a time; entries not yet dropped can still be sent to followers.
    fn compact_some(&mut self) {
        let first = self.log.first_index();
        if self.compact_target < first {
            return;
        }
        let upto = self
            .compact_target
            .min(first.plus(limits::COMPACT_ENTRIES_PER_STEP as u64 - 1));
        self.log.compact(upto);
    }

    /// The driver's snapshot stream to `to` finished (`ok`) or failed.
    pub fn report_snapshot(&mut self, to: NodeId, ok: bool) {
        self.assert_not_awaiting_advance("report_snapshot");
        self.report_snapshot_checked(to, ok);
        self.check_invariants();
    }

    /// The connection to `to` was lost: whatever was in flight is gone, so probe again.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.assert_not_awaiting_advance("report_unreachable");
        if let RoleState::Leader(ls) = &mut self.role {
            if let Some(pr) = ls.progress.get_mut(&to) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
            }
        }
    }

    pub fn status(&self) -> Status {
        let progress = match &self.role {
            RoleState::Leader(ls) => ls
                .progress
                .iter()
                .filter(|(&id, _)| id != self.id)
                .map(|(&id, pr)| PeerStatus {
                    id,
                    match_index: pr.match_index,
                    next_index: pr.next_index,
                    state: pr.state,
                })
                .collect(),
            _ => Vec::new(),
        };
        Status {
            id: self.id,
            role: self.role(),
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit: self.log.commit(),
            applied: self.log.applied(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            conf: self.conf.clone(),
            snapshot: self.snapshot.clone(),
            progress,
            voting: self.voting,
            uncertain: self.uncertain.since(),
        }
    }

    /// ReadIndex rounds (heartbeat broadcasts for reads) this node began as leader.
    pub fn read_rounds(&self) -> u64 {
        self.read_rounds
    }

    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::PreCandidate(_) => Role::PreCandidate,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn commit(&self) -> LogIndex {
        self.log.commit()
    }
    pub fn last_id(&self) -> EntryId {
        self.log.last_id()
    }

    /// The term of the entry at `index`, if the log view still holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    /// Entries in `[lo, hi)` from the in-memory view, or None when part of the range was
    /// compacted or lies past the end.
    pub fn entries(&self, lo: LogIndex, hi: LogIndex) -> Option<Vec<Entry>> {
        if lo < self.log.first_index() || lo > hi || hi > self.log.last_index().next() {
            return None;
        }
        Some(self.log.slice(lo, hi).cloned().collect())
    }

    fn assert_not_awaiting_advance(&self, what: &str) {
        assert!(
            !self.awaiting_advance,
            "node {}: {what} between ready and advance (see the Ready contract)",
            self.id
        );
    }

    fn check_invariants(&self) {
        self.log.check();
        match &self.role {
            RoleState::Leader(ls) => {
                assert_eq!(self.leader, Some(self.id), "leader does not know itself");
                assert_eq!(self.vote, Some(self.id), "leader without its own vote");
                assert!(
                    ls.progress.contains_key(&self.id),
                    "leader lacks own progress"
                );
                let last = self.log.last_index();
                for (id, pr) in &ls.progress {
                    assert!(
                        pr.match_index < pr.next_index && pr.next_index <= last.next(),
                        "peer {id} match {} next {} last {last}",
                        pr.match_index,
                        pr.next_index
                    );
                }
            }
            RoleState::Candidate(_) => {
                assert_eq!(self.vote, Some(self.id), "candidate without its own vote")
            }
            _ => {}
        }
    }
}

impl fmt::Debug for Raft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Raft{{id {} {} term {} vote {:?} leader {:?} log {}..={} commit {}}}",
            self.id,
            self.role(),
            self.term,
            self.vote,
            self.leader,
            self.log.first_index(),
            self.log.last_index(),
            self.log.commit()
        )
    }
}
