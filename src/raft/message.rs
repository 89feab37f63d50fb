//! The messages Raft peers exchange. Every reply carries what it answers (its term; for an
//! append, the index it matched or the `prev` it rejected; for a heartbeat, the read round), so
//! a late reply to an earlier request is recognised as stale and dropped, never read as the
//! answer to a newer one (seed lesson 4).
//!
//! Every field is input from the network. `in_range` bounds the terms and indexes before the
//! core does arithmetic on them; the handlers check the rest against the core's own state.

use super::types::{Entry, EntryId, LogIndex, NodeId, SnapshotMeta, Term, INDEX_MAX, TERM_MAX};

/// One message between two members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term. Any message with a term newer than the receiver's makes the receiver
    /// a follower of that term before the message is handled (§5.1) — except `PreVote` and a
    /// granted `PreVoteResp`, whose term is the one the sender *would* campaign in.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Pre-vote (dissertation §9.6): "would you vote for me in `term`?" asked before the
    /// candidate bumps its own term, so a node that cannot win never disrupts the cluster.
    /// `floor`: what the answer's `last` is to be (`uncertain.rs`): the responder's newest
    /// entry of a term at most `floor`. A node with an uncertain tail asks with the term it
    /// is uncertain since; any other with `TERM_MAX`, which makes it the responder's last.
    PreVote {
        last: EntryId,
        floor: Term,
    },
    /// `last`: the responder's newest entry id of a term at most the request's `floor`,
    /// whatever it answers, so that a node probing with an uncertain tail learns the position
    /// of every member it asks, also of one that knows no configuration and so never asks
    /// anybody itself (`uncertain.rs`).
    PreVoteResp {
        granted: bool,
        last: EntryId,
    },
    /// RequestVote (§5.2). `transfer` is set when campaigning on a leader's `TimeoutNow`, which
    /// lets voters ignore their "heard from a leader recently" lease (§4.2.3, §6 of the thesis).
    Vote {
        last: EntryId,
        transfer: bool,
    },
    VoteResp {
        granted: bool,
    },
    /// AppendEntries (§5.3): `entries` follow `prev`; the follower commits up to `commit`
    /// (bounded by what it knows matches).
    Append {
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    AppendResp {
        result: AppendResult,
    },
    /// A leader's heartbeat: keeps followers' election timers quiet, carries the commit index
    /// (at most the follower's known match) and the leader's current read round (ReadIndex).
    Heartbeat {
        commit: LogIndex,
        read_seq: u64,
    },
    HeartbeatResp {
        read_seq: u64,
    },
    /// InstallSnapshot (§7). Between cores this is one logical message; between processes
    /// the node streams the snapshot file in chunks (see `wire`) and hands the core this
    /// message once the whole file has arrived and checked out.
    Snapshot {
        meta: SnapshotMeta,
    },
    /// Leadership transfer (thesis §3.10): "campaign now, skipping pre-vote".
    TimeoutNow,
}

/// The outcome of an AppendEntries (or of installing a snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResult {
    /// Every entry up to and including `match_index` is durable on the follower and matches the
    /// leader's log. Sent only after those entries were synced.
    Accepted { match_index: LogIndex },
    /// The entry at `rejected` (the request's `prev.index`) did not match. `hint` lets the leader
    /// skip a whole conflicting term in one round trip.
    Rejected {
        rejected: LogIndex,
        hint: RejectHint,
    },
}

/// The follower's side of a rejected append (the "term-aware conflict hint").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// The follower's last log index.
    pub last_index: LogIndex,
    /// When the follower holds an entry at the rejected index: that entry's term, and the first
    /// index the follower holds with that term. The leader then retries from the end of that
    /// term in its own log, or from its start if the leader has no entry of that term.
    pub conflict: Option<EntryId>,
}

impl MessageBody {
    /// A short name for logs and traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre-vote",
            MessageBody::PreVoteResp { .. } => "pre-vote-resp",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResp { .. } => "vote-resp",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResp { .. } => "append-resp",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResp { .. } => "heartbeat-resp",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::TimeoutNow => "timeout-now",
        }
    }
}

/// Whether every term and index in `msg` is within `TERM_MAX` / `INDEX_MAX`, so that the core
/// can do arithmetic on them without overflowing, and no log entry a leader sends (appended
/// entries, their `prev`, a snapshot's last entry) is of a term above the message's: a leader
/// holds no entry newer than its term, and a follower that took one would, once leader at a
/// lower term, append behind it. A message is input from the network: a buggy or malicious
/// peer can put anything in it, and the core drops what fails this check.
pub(super) fn in_range(msg: &Message) -> bool {
    let bounded = |id: &EntryId| id.term <= TERM_MAX && id.index <= INDEX_MAX;
    let id_ok = |id: &EntryId| bounded(id) && id.term <= msg.term;
    let fields_ok = match &msg.body {
        MessageBody::PreVote { last, floor } => bounded(last) && *floor <= TERM_MAX,
        MessageBody::Vote { last, .. } | MessageBody::PreVoteResp { last, .. } => bounded(last),
        MessageBody::Append {
            prev,
            entries,
            commit,
        } => {
            // Entries follow `prev` contiguously (the decoder checks it, and the log refuses
            // anything else), and terms never fall, so the last entry bounds them all.
            id_ok(prev) && *commit <= INDEX_MAX && entries.last().is_none_or(|e| id_ok(&e.id()))
        }
        MessageBody::AppendResp { result } => match result {
            AppendResult::Accepted { match_index } => *match_index <= INDEX_MAX,
            AppendResult::Rejected { rejected, hint } => {
                *rejected <= INDEX_MAX
                    && hint.last_index <= INDEX_MAX
                    && hint.conflict.as_ref().is_none_or(bounded)
            }
        },
        MessageBody::Heartbeat { commit, .. } => *commit <= INDEX_MAX,
        MessageBody::Snapshot { meta } => id_ok(&meta.last),
        MessageBody::VoteResp { .. }
        | MessageBody::HeartbeatResp { .. }
        | MessageBody::TimeoutNow => true,
    };
    msg.term <= TERM_MAX && fields_ok
}
