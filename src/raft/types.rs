//! The vocabulary of the protocol: typed ids, terms and indexes, entries, hard state,
//! membership (and the byte layout of a `ConfChange` entry payload), snapshot metadata, and the
//! bounds a peer's terms and indexes must respect (`TERM_MAX`, `INDEX_MAX`). Typed so that a
//! term can never be passed where an index is expected (the C++ original compared a term with
//! an index in RequestVote and let any candidate win).

use std::fmt;

/// A member's id, as written in the config file (`node.<id>`). Never 0: 0 means "none" on
/// the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A Raft term. Terms only grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// A position in the log. Index 0 is the empty prefix before the first entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

/// The largest term a peer's message may carry. Half the u64 range: no cluster runs 2^63
/// elections, and bounding what we accept means `Term::next` on any term we hold cannot
/// overflow (a message at `u64::MAX` would otherwise wrap our term on the next campaign).
pub const TERM_MAX: Term = Term(u64::MAX / 2);

/// The largest log index a peer's message may carry, for the same reason as `TERM_MAX`:
/// `next` and `plus` on any index we accept (plus at most one message of entries) cannot
/// overflow.
pub const INDEX_MAX: LogIndex = LogIndex(u64::MAX / 2);

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    /// The index before this one; `LogIndex(0).prev()` is a caller's bug.
    pub fn prev(self) -> LogIndex {
        assert!(self.0 > 0, "no index before 0");
        LogIndex(self.0 - 1)
    }
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An entry's identity: (term, index). Two logs that hold the same `EntryId` hold the same
/// entry and agree on everything before it (log matching, Raft §5.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub term: Term,
    pub index: LogIndex,
}

impl EntryId {
    pub fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }
    /// §5.4.1: a log ending at `self` is at least as up to date as one ending at `other`.
    pub fn is_up_to_date_with(self, other: EntryId) -> bool {
        (self.term, self.index) >= (other.term, other.index)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.term, self.index)
    }
}

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A state-machine command (opaque bytes to Raft).
    Command = 0,
    /// The empty entry a new leader appends to commit its term (§5.4.2, §8).
    Noop = 1,
    /// A membership change: `data` is an encoded [`ConfChange`].
    ConfChange = 2,
}

impl EntryKind {
    pub fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            0 => Some(EntryKind::Command),
            1 => Some(EntryKind::Noop),
            2 => Some(EntryKind::ConfChange),
            _ => None,
        }
    }
}

/// An entry's payload, shared: the log, the `Ready` handed to the driver, the append to every
/// follower and the apply all hold the same bytes, so cloning an entry copies no payload
/// (issue 16: no allocation per follower or per stage of the write path). Kept outside the
/// heap so that compacting the log gives its memory back (see `crate::payload`).
pub use crate::payload::Payload;

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    pub data: Payload,
}

impl Entry {
    pub fn id(&self) -> EntryId {
        EntryId::new(self.term, self.index)
    }
}

/// The state that must be durable before any message that depends on it is sent: a vote is
/// never sent before the vote is on disk, and a term never goes backwards across a crash.
/// The commit index is deliberately not here: after a restart commit starts at the snapshot
/// index and advances only through the protocol (seed lesson 8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    /// The log's tail was cut at a start and may have held acknowledged entries: "uncertain
    /// since term T" (see `raft/uncertain.rs`). Persisted until the node may trust its log
    /// again.
    pub uncertain: Option<Term>,
    /// The configurations an entry at the end of this node's log may have been committed
    /// under (`raft/uncertain.rs`, "Which configurations"), saved with every change of them,
    /// so that a start which cuts the tail, and the configuration changes in it, still knows
    /// whom to hear from. Empty: not recorded (a hard state from before they were).
    pub tail_confs: Vec<TailConf>,
}

/// One configuration an entry at the end of the log may have been committed under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TailConf {
    /// The voters (and, with `near`, the learners one of which may be promoted next).
    pub conf: ConfState,
    /// Also each configuration one change away: a learner promoted, or a voter removed or
    /// demoted (the next change may be appended before the entry commits).
    pub near: bool,
    /// Recorded in place of a list too long to save: every member of `conf` must report.
    pub every: bool,
}

/// The membership of the cluster: who votes, and who only receives the log.
/// Invariant: `voters` and `learners` are sorted, without duplicates, and disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    pub fn new(mut voters: Vec<NodeId>, mut learners: Vec<NodeId>) -> ConfState {
        voters.sort();
        voters.dedup();
        learners.sort();
        learners.dedup();
        learners.retain(|l| !voters.contains(l));
        ConfState { voters, learners }
    }
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }
    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What a snapshot stands for: the state after applying every entry up to `last`, with the
/// membership in force at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub last: EntryId,
    pub conf: ConfState,
}

/// One membership change (a single-server change, Ongaro's dissertation §4.1): at most one is
/// uncommitted at a time, and a leader proposes one only after an entry of its own term has
/// committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConfChangeOp {
    /// Add a node as a non-voting learner (it catches up without affecting quorums).
    AddLearner = 0,
    /// Make a node a voter (adding it, or promoting a learner).
    AddVoter = 1,
    /// Remove a node (voter or learner).
    Remove = 2,
}

/// A membership change as carried in a `EntryKind::ConfChange` entry.
///
/// Encoding (big-endian), the whole entry payload:
/// ```text
/// offset size field
///      0    1 version (1)
///      1    1 op (ConfChangeOp)
///      2    8 node id
///     10    4 context length n (≤ CONF_CONTEXT_SIZE_MAX)
///     14    n context: opaque to Raft; the node stores the member's addresses here
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub op: ConfChangeOp,
    pub node: NodeId,
    pub context: Vec<u8>,
}

/// Largest `ConfChange::context`, in bytes.
pub const CONF_CONTEXT_SIZE_MAX: usize = 1024;
const CONF_CHANGE_VERSION: u8 = 1;
const CONF_CHANGE_HEADER_SIZE: usize = 14;

/// A `ConfChange` payload that does not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    Truncated { len: usize },
    Version { version: u8 },
    Op { op: u8 },
    NodeZero,
    ContextTooLarge { len: usize },
    TrailingBytes { len: usize },
}

impl fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfChangeError::Truncated { len } => write!(f, "conf change truncated at {len} bytes"),
            ConfChangeError::Version { version } => {
                write!(
                    f,
                    "conf change version {version}, expected {CONF_CHANGE_VERSION}"
                )
            }
            ConfChangeError::Op { op } => write!(f, "unknown conf change op {op}"),
            ConfChangeError::NodeZero => write!(f, "conf change names node 0"),
            ConfChangeError::ContextTooLarge { len } => {
                write!(
                    f,
                    "conf change context of {len} bytes exceeds {CONF_CONTEXT_SIZE_MAX}"
                )
            }
            ConfChangeError::TrailingBytes { len } => {
                write!(f, "{len} bytes after the conf change")
            }
        }
    }
}

impl std::error::Error for ConfChangeError {}

impl ConfChange {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.context.len() <= CONF_CONTEXT_SIZE_MAX);
        let mut out = Vec::with_capacity(CONF_CHANGE_HEADER_SIZE + self.context.len());
        out.push(CONF_CHANGE_VERSION);
        out.push(self.op as u8);
        out.extend_from_slice(&self.node.0.to_be_bytes());
        out.extend_from_slice(&(self.context.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.context);
        out
    }

    pub fn decode(b: &[u8]) -> Result<ConfChange, ConfChangeError> {
        if b.len() < CONF_CHANGE_HEADER_SIZE {
            return Err(ConfChangeError::Truncated { len: b.len() });
        }
        if b[0] != CONF_CHANGE_VERSION {
            return Err(ConfChangeError::Version { version: b[0] });
        }
        let op = match b[1] {
            0 => ConfChangeOp::AddLearner,
            1 => ConfChangeOp::AddVoter,
            2 => ConfChangeOp::Remove,
            op => return Err(ConfChangeError::Op { op }),
        };
        let node = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
        if node == 0 {
            return Err(ConfChangeError::NodeZero);
        }
        let len = u32::from_be_bytes(b[10..14].try_into().expect("4 bytes")) as usize;
        if len > CONF_CONTEXT_SIZE_MAX {
            return Err(ConfChangeError::ContextTooLarge { len });
        }
        let end = CONF_CHANGE_HEADER_SIZE + len;
        if b.len() < end {
            return Err(ConfChangeError::Truncated { len: b.len() });
        }
        if b.len() > end {
            return Err(ConfChangeError::TrailingBytes { len: b.len() - end });
        }
        Ok(ConfChange {
            op,
            node: NodeId(node),
            context: b[CONF_CHANGE_HEADER_SIZE..end].to_vec(),
        })
    }

    /// The membership after applying this change to `conf`.
    pub fn apply_to(&self, conf: &ConfState) -> ConfState {
        let mut voters = conf.voters.clone();
        let mut learners = conf.learners.clone();
        voters.retain(|&v| v != self.node);
        learners.retain(|&l| l != self.node);
        match self.op {
            ConfChangeOp::AddLearner => learners.push(self.node),
            ConfChangeOp::AddVoter => voters.push(self.node),
            ConfChangeOp::Remove => {}
        }
        ConfState::new(voters, learners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_date_compares_term_before_index() {
        let a = EntryId::new(Term(3), LogIndex(5));
        let b = EntryId::new(Term(2), LogIndex(100));
        assert!(a.is_up_to_date_with(b));
        assert!(!b.is_up_to_date_with(a));
        assert!(a.is_up_to_date_with(a));
        assert!(!EntryId::new(Term(3), LogIndex(4)).is_up_to_date_with(a));
    }

    #[test]
    fn conf_change_round_trips_and_rejects_every_truncation() {
        let cc = ConfChange {
            op: ConfChangeOp::AddVoter,
            node: NodeId(4),
            context: b"addr".to_vec(),
        };
        let b = cc.encode();
        assert_eq!(ConfChange::decode(&b), Ok(cc.clone()));
        for n in 0..b.len() {
            assert!(
                ConfChange::decode(&b[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            ConfChange::decode(&long),
            Err(ConfChangeError::TrailingBytes { len: 1 })
        );
    }

    #[test]
    fn conf_change_apply_moves_a_node_between_sets() {
        let c = ConfState::new(vec![NodeId(1), NodeId(2)], vec![NodeId(3)]);
        let promote = ConfChange {
            op: ConfChangeOp::AddVoter,
            node: NodeId(3),
            context: vec![],
        };
        let c2 = promote.apply_to(&c);
        assert_eq!(c2.voters, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert!(c2.learners.is_empty());
        let rm = ConfChange {
            op: ConfChangeOp::Remove,
            node: NodeId(1),
            context: vec![],
        };
        assert_eq!(rm.apply_to(&c2).voters, vec![NodeId(2), NodeId(3)]);
        assert_eq!(c2.quorum(), 2);
    }
}
