//! The Raft core against hostile or badly timed input: messages whose fields no correct peer
//! would send, reads across a step-down, snapshots that arrive late, membership beyond its
//! limit. Each test drives real cores through a small in-memory network (`Net`) that follows
//! the Ready contract (persist, apply, then `advance`) and delivers messages in rounds.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kvraft::limits::MEMBERS_MAX;
use kvraft::prng::Prng;
use kvraft::raft::types::{INDEX_MAX, TERM_MAX};
use kvraft::raft::{
    AppendResult, ConfChange, ConfChangeOp, ConfState, Config, Entry, EntryId, EntryKind, LogIndex,
    Message, MessageBody, NodeId, ProposeError, Raft, ReadState, RejectHint, Restored, Role,
    SnapshotMeta, Term,
};

struct Node {
    raft: Raft,
    durable: LogIndex,
    applied: LogIndex,
    read_states: Vec<ReadState>,
    failed_reads: Vec<u64>,
}

/// A few cores and the messages between them. Nodes in `cut` neither send nor receive.
struct Net {
    nodes: BTreeMap<u64, Node>,
    queue: VecDeque<Message>,
    cut: BTreeSet<u64>,
    /// Every message delivered (or dropped by `cut`), in order, once a test sets it.
    sent: Option<Vec<Message>>,
}

const ROUNDS_MAX: usize = 200;

impl Net {
    fn new(voters: &[u64], learners: &[u64]) -> Net {
        Net::with(voters, learners, |_| {})
    }

    /// Like `new`, with `tweak` applied to each node's config after the defaults above.
    fn with(voters: &[u64], learners: &[u64], tweak: impl Fn(&mut Config)) -> Net {
        let conf = ConfState::new(
            voters.iter().map(|&v| NodeId(v)).collect(),
            learners.iter().map(|&l| NodeId(l)).collect(),
        );
        let nodes = conf
            .members()
            .map(|id| {
                let mut cfg = Config::new(id, id.0);
                cfg.pre_vote = false;
                cfg.check_quorum = false;
                tweak(&mut cfg);
                let restored = Restored {
                    snapshot: SnapshotMeta {
                        last: EntryId::default(),
                        conf: conf.clone(),
                    },
                    ..Restored::default()
                };
                let node = Node {
                    raft: Raft::new(cfg, restored),
                    durable: LogIndex(0),
                    applied: LogIndex(0),
                    read_states: Vec::new(),
                    failed_reads: Vec::new(),
                };
                (id.0, node)
            })
            .collect();
        Net {
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            sent: None,
        }
    }

    fn raft(&mut self, id: u64) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("node exists").raft
    }

    fn node(&self, id: u64) -> &Node {
        &self.nodes[&id]
    }

    /// Runs every Ready of node `id` as the driver would; returns whether there was one.
    fn process(&mut self, id: u64) -> bool {
        let n = self.nodes.get_mut(&id).expect("node exists");
        let mut any = false;
        while n.raft.has_ready() {
            any = true;
            let rd = n.raft.ready();
            if let Some(meta) = &rd.snapshot {
                n.durable = meta.last.index;
                n.applied = meta.last.index;
            }
            if let Some(last) = rd.entries.last() {
                n.durable = last.index;
            }
            if let Some(last) = rd.committed.last() {
                n.applied = last.index;
            }
            n.read_states.extend(rd.read_states);
            n.failed_reads.extend(rd.failed_reads);
            self.queue.extend(rd.messages);
            self.queue.extend(rd.persisted_messages);
            n.raft.advance(n.durable, n.applied);
        }
        any
    }

    /// One round: every node runs its Ready, then every queued message is delivered.
    fn round(&mut self) -> bool {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut any = false;
        for id in ids {
            any |= self.process(id);
        }
        for m in std::mem::take(&mut self.queue) {
            any = true;
            if let Some(sent) = self.sent.as_mut() {
                sent.push(m.clone());
            }
            if self.cut.contains(&m.from.0) || self.cut.contains(&m.to.0) {
                continue;
            }
            if let Some(n) = self.nodes.get_mut(&m.to.0) {
                n.raft.step(m);
            }
        }
        any
    }

    fn stabilize(&mut self) {
        for _ in 0..ROUNDS_MAX {
            if !self.round() {
                return;
            }
        }
        panic!("no quiescence within {ROUNDS_MAX} rounds");
    }

    /// `stabilize`, then two ticks of the leader `id` with the net settling after each: the
    /// followers learn a new commit index from the next append or heartbeat, or from an append
    /// sent for it once a whole tick passed without one (`raft/replication.rs`).
    fn settle_commit(&mut self, id: u64) {
        self.stabilize();
        for _ in 0..2 {
            self.raft(id).tick();
            self.stabilize();
        }
    }

    /// Node `id` campaigns at once (as on a leader's TimeoutNow) and the net settles.
    fn elect(&mut self, id: u64) {
        let from = *self.nodes.keys().find(|&&k| k != id).unwrap_or(&id);
        let term = self.raft(id).term();
        if from == id {
            // A single node: its own election timeout.
            for _ in 0..100 {
                self.raft(id).tick();
                if self.raft(id).role() == Role::Leader {
                    break;
                }
            }
        } else {
            self.raft(id)
                .step(msg(from, id, term.0, MessageBody::TimeoutNow));
        }
        self.stabilize();
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} not elected");
    }

    /// Node `id` snapshots what it applied (keeping two entries), as the driver's fork does.
    fn snapshot(&mut self, id: u64) {
        let applied = self.node(id).applied;
        let st = self.raft(id).status();
        let Some(term) = self.raft(id).term_at(applied) else {
            return; // compacted already: the current snapshot is at least as new
        };
        let meta = SnapshotMeta {
            last: EntryId::new(term, applied),
            conf: st.conf,
        };
        let compact_to = LogIndex(applied.0.saturating_sub(2));
        self.raft(id).snapshot_taken(meta, compact_to);
    }

    fn propose(&mut self, leader: u64, n: usize) -> LogIndex {
        let mut last = LogIndex(0);
        for i in 0..n {
            last = self
                .raft(leader)
                .propose(vec![i as u8])
                .expect("leader")
                .index;
        }
        last
    }
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn id(t: u64, i: u64) -> EntryId {
    EntryId::new(Term(t), LogIndex(i))
}

// ---- issue 12 item 3: rejections and other fields a correct peer would not send ----

/// Before the fix, a rejection naming a `rejected` index past the leader's log moved the
/// follower's `next_index` there, and the next append panicked ("next ... beyond last").
#[test]
fn a_rejection_naming_an_index_beyond_the_leaders_log_is_dropped_and_replication_goes_on() {
    let hints = |last: u64| {
        let mut v = Vec::new();
        for rejected in [last, last + 1, last + 1000, INDEX_MAX.0] {
            for hint_last in [0, last + 5, INDEX_MAX.0] {
                for conflict in [None, Some(id(0, 0)), Some(id(99, last + 7))] {
                    v.push((rejected, hint_last, conflict));
                }
            }
        }
        v.push((last, last, Some(EntryId::new(TERM_MAX, INDEX_MAX))));
        v
    };
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.elect(1);
    net.propose(1, 5);
    net.stabilize();
    for (case, (rejected, hint_last, conflict)) in
        hints(net.raft(1).last_id().index.0).into_iter().enumerate()
    {
        let term = net.raft(1).term().0;
        let hint = RejectHint {
            last_index: LogIndex(hint_last),
            conflict,
        };
        let result = AppendResult::Rejected {
            rejected: LogIndex(rejected),
            hint,
        };
        net.raft(1)
            .step(msg(2, 1, term, MessageBody::AppendResp { result }));
        let last = net.propose(1, 1);
        net.settle_commit(1);
        for n in [1, 2, 3] {
            assert_eq!(
                net.raft(n).commit(),
                last,
                "case {case}: node {n} after rejected={rejected} hint={hint:?}"
            );
        }
    }
}

/// A message at a term or index no cluster reaches would overflow the core's arithmetic
/// (`Term::next` on the next campaign, `LogIndex::next` after a snapshot there). Before the
/// fix the follower adopted term `u64::MAX`. An entry of a term above its message's (which no
/// leader holds) made the follower, once leader itself, append behind it and panic ("push of
/// an older term"; found by the test below).
#[test]
fn terms_and_indexes_beyond_the_bounds_are_dropped() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.elect(1);
    net.propose(1, 3);
    net.stabilize();
    let before = net.raft(2).status();
    let huge = [
        msg(
            1,
            2,
            u64::MAX,
            MessageBody::Heartbeat {
                commit: LogIndex(1),
                read_seq: 0,
            },
        ),
        msg(
            3,
            2,
            TERM_MAX.0 + 1,
            MessageBody::Vote {
                last: id(1, 1),
                transfer: true,
            },
        ),
        msg(
            1,
            2,
            before.term.0,
            MessageBody::Snapshot {
                meta: SnapshotMeta {
                    last: EntryId::new(before.term, LogIndex(u64::MAX)),
                    conf: before.conf.clone(),
                },
            },
        ),
        msg(
            1,
            2,
            before.term.0,
            MessageBody::Append {
                prev: id(before.term.0, 4),
                entries: vec![Entry {
                    term: Term(u64::MAX),
                    index: LogIndex(5),
                    kind: EntryKind::Command,
                    data: vec![].into(),
                }],
                commit: LogIndex(4),
            },
        ),
        msg(
            1,
            2,
            before.term.0,
            MessageBody::Append {
                prev: EntryId::new(before.term, before.last_index),
                entries: vec![Entry {
                    term: before.term.next(),
                    index: before.last_index.next(),
                    kind: EntryKind::Command,
                    data: vec![].into(),
                }],
                commit: before.commit,
            },
        ),
    ];
    for m in huge {
        let what = format!("{m:?}");
        net.raft(2).step(m);
        assert!(!net.raft(2).has_ready(), "{what} was acted on");
        let after = net.raft(2).status();
        assert_eq!(
            (after.term, after.last_index, after.snapshot.last),
            (before.term, before.last_index, before.snapshot.last),
            "{what}"
        );
    }
}

/// A heartbeat answer for a read round the leader has not begun yet must not count for that
/// round later: before the fix, a peer answering round 1000 up front confirmed every later
/// read without ever seeing its heartbeat.
#[test]
fn an_answer_to_a_read_round_not_yet_begun_confirms_nothing() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.elect(1);
    net.cut.extend([2, 3]);
    let term = net.raft(1).term().0;
    let resp = |read_seq| msg(2, 1, term, MessageBody::HeartbeatResp { read_seq });
    net.raft(1).step(resp(1000));
    net.raft(1).read_index(4).unwrap();
    net.stabilize();
    net.raft(1).step(resp(0)); // any later answer makes the leader count again
    net.stabilize();
    assert!(
        net.node(1).read_states.is_empty(),
        "read confirmed by a forged answer: {:?}",
        net.node(1).read_states
    );
}

// ---- items 4 and 5: reads ----

#[test]
fn a_leader_that_is_the_only_voter_answers_a_read_at_once_learners_or_not() {
    for learners in [&[][..], &[2, 3][..]] {
        let mut net = Net::new(&[1], learners);
        net.elect(1);
        net.cut.extend(learners.iter().copied()); // the learners never answer
        net.raft(1).read_index(7).unwrap();
        net.stabilize();
        let commit = net.raft(1).commit();
        assert_eq!(
            net.node(1).read_states,
            vec![ReadState {
                ctx: 7,
                index: commit
            }],
            "learners {learners:?}"
        );
    }
}

/// Before the fix, "one voter" was enough for the shortcut even when that voter was another
/// node: a leader whose own removal was in its log answered reads that node 2, leading on its
/// own by then, may have overtaken.
#[test]
fn a_leader_whose_only_voter_is_another_node_confirms_a_read_with_it() {
    let mut net = Net::new(&[1, 2], &[]);
    net.elect(1);
    net.raft(1)
        .propose_conf_change(ConfChange {
            op: ConfChangeOp::Remove,
            node: NodeId(1),
            context: vec![],
        })
        .unwrap();
    assert_eq!(net.raft(1).status().conf.voters, vec![NodeId(2)]);
    net.cut.insert(2);
    net.raft(1).read_index(9).unwrap();
    net.stabilize();
    assert!(
        net.node(1).read_states.is_empty(),
        "read answered without node 2: {:?}",
        net.node(1).read_states
    );
    // Once node 2 is heard from, the read leaves exactly once, released or failed (the
    // removal commits with the same round trip and this leader steps down).
    net.cut.clear();
    for _ in 0..20 {
        net.raft(1).tick();
        net.stabilize();
    }
    let released: Vec<u64> = net.node(1).read_states.iter().map(|r| r.ctx).collect();
    let mut all = released.clone();
    all.extend(&net.node(1).failed_reads);
    assert_eq!(all, vec![9], "released {released:?}");
}

/// Before the fix the core dropped a stepped-down leader's pending reads without a word and
/// the node guessed from the role change.
#[test]
fn reads_pending_when_the_leader_steps_down_are_reported_failed() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.elect(1);
    net.cut.extend([2, 3]);
    net.raft(1).read_index(5).unwrap(); // joins a heartbeat round nobody answers
    net.stabilize();
    assert!(net.node(1).read_states.is_empty());
    let term = net.raft(1).term().0 + 1;
    net.raft(1).step(msg(
        2,
        1,
        term,
        MessageBody::Heartbeat {
            commit: LogIndex(0),
            read_seq: 0,
        },
    ));
    assert_eq!(net.raft(1).role(), Role::Follower);
    net.process(1);
    assert_eq!(net.node(1).failed_reads, vec![5]);
    assert!(net.node(1).read_states.is_empty());
}

#[test]
fn reads_waiting_for_a_new_leaders_first_commit_are_reported_failed_on_step_down() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.cut.insert(3);
    let term = net.raft(1).term().0;
    net.raft(1).step(msg(2, 1, term, MessageBody::TimeoutNow));
    // Rounds until node 1 leads; its no-op cannot have committed in the same round.
    for _ in 0..ROUNDS_MAX {
        net.round();
        if net.raft(1).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(net.raft(1).role(), Role::Leader);
    net.cut.insert(2);
    net.raft(1).read_index(6).unwrap();
    net.raft(1).read_index(7).unwrap();
    net.stabilize();
    assert!(net.node(1).read_states.is_empty());
    let term = net.raft(1).term().0 + 1;
    net.raft(1).step(msg(3, 1, term, MessageBody::TimeoutNow));
    net.process(1);
    assert_ne!(net.raft(1).role(), Role::Leader);
    assert_eq!(net.node(1).failed_reads, vec![6, 7]);
}

// ---- item 6: snapshot metadata never moves backwards ----

#[test]
fn a_snapshot_taken_behind_the_current_one_is_ignored() {
    let mut net = Net::new(&[1], &[]);
    net.elect(1);
    let last = net.propose(1, 10);
    net.stabilize();
    assert_eq!(net.node(1).applied, last);
    let conf = net.raft(1).status().conf;
    let mut meta = |i: u64| SnapshotMeta {
        last: EntryId::new(net.raft(1).term_at(LogIndex(i)).unwrap(), LogIndex(i)),
        conf: conf.clone(),
    };
    let at8 = meta(8);
    let at5 = meta(5);
    assert!(net.raft(1).snapshot_taken(at8, LogIndex(8)));
    let before = net.raft(1).status();
    assert_eq!(
        (before.snapshot.last.index, before.first_index),
        (LogIndex(8), LogIndex(9))
    );
    assert!(!net.raft(1).snapshot_taken(at5, LogIndex(5)));
    assert!(!net
        .raft(1)
        .snapshot_taken(before.snapshot.clone(), LogIndex(8)));
    let after = net.raft(1).status();
    assert_eq!(after.snapshot, before.snapshot);
    assert_eq!(after.first_index, before.first_index);
}

#[test]
fn an_install_snapshot_at_or_behind_the_commit_index_is_acknowledged_not_installed() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    net.elect(1);
    let last = net.propose(1, 6);
    net.settle_commit(1);
    let st = net.raft(2).status();
    assert_eq!(st.commit, last);
    for i in [1, 4, last.0] {
        let meta = SnapshotMeta {
            last: EntryId::new(st.term, LogIndex(i)),
            conf: st.conf.clone(),
        };
        net.raft(2)
            .step(msg(1, 2, st.term.0, MessageBody::Snapshot { meta }));
        let rd = net.raft(2).ready();
        assert!(rd.snapshot.is_none(), "snapshot at {i} installed");
        let acks: Vec<&AppendResult> = rd
            .persisted_messages
            .iter()
            .filter_map(|m| match &m.body {
                MessageBody::AppendResp { result } => Some(result),
                _ => None,
            })
            .collect();
        assert_eq!(acks, vec![&AppendResult::Accepted { match_index: last }]);
        net.raft(2).advance(last, last);
        let after = net.raft(2).status();
        assert_eq!(
            (after.first_index, after.last_index, after.snapshot.last),
            (st.first_index, st.last_index, st.snapshot.last)
        );
    }
}

// ---- item 7: membership beyond MEMBERS_MAX ----

fn full_cluster() -> Net {
    let learners: Vec<u64> = (2..=MEMBERS_MAX as u64).collect();
    let mut net = Net::new(&[1], &learners);
    net.cut.extend(learners);
    net.elect(1);
    net
}

/// Before the fix the leader accepted the 65th member, and the first snapshot message or
/// snapshot header carrying that configuration hit the encoder's assertion.
#[test]
fn member_add_beyond_the_limit_is_refused_with_an_error() {
    let mut net = full_cluster();
    for op in [ConfChangeOp::AddLearner, ConfChangeOp::AddVoter] {
        let r = net.raft(1).propose_conf_change(ConfChange {
            op,
            node: NodeId(MEMBERS_MAX as u64 + 1),
            context: vec![],
        });
        assert_eq!(
            r,
            Err(ProposeError::TooManyMembers {
                count: MEMBERS_MAX + 1
            })
        );
        let shown = r.unwrap_err().to_string();
        assert!(shown.contains(&MEMBERS_MAX.to_string()), "{shown}");
    }
    // Promoting an existing member changes no count and is allowed.
    net.raft(1)
        .propose_conf_change(ConfChange {
            op: ConfChangeOp::AddVoter,
            node: NodeId(2),
            context: vec![],
        })
        .unwrap();
}

/// A ConfChange entry comes from the network on a follower; one that would exceed the limit
/// has no effect there (every node reads the same log the same way).
#[test]
fn a_logged_conf_change_beyond_the_limit_has_no_effect() {
    let mut net = full_cluster();
    let term = net.raft(1).term();
    let last = net.raft(2).last_id(); // node 2 was cut off: its log is empty
    let cc = ConfChange {
        op: ConfChangeOp::AddLearner,
        node: NodeId(MEMBERS_MAX as u64 + 1),
        context: vec![],
    };
    let append = MessageBody::Append {
        prev: last,
        entries: vec![Entry {
            term,
            index: last.index.next(),
            kind: EntryKind::ConfChange,
            data: cc.encode().into(),
        }],
        commit: LogIndex(0),
    };
    net.raft(2).step(msg(1, 2, term.0, append));
    let st = net.raft(2).status();
    assert_eq!(
        st.last_index,
        last.index.next(),
        "the entry was not appended"
    );
    assert_eq!(st.conf.voters.len() + st.conf.learners.len(), MEMBERS_MAX);
    assert!(!st.conf.contains(NodeId(MEMBERS_MAX as u64 + 1)));
}

// ---- any message a peer can put on the wire ----

/// Values where off-by-ones and overflows live, around `near`.
fn edge(rng: &mut Prng, near: u64, max: u64) -> u64 {
    match rng.range(0, 10) {
        0 => 0,
        1 => near.saturating_sub(1),
        2 => near,
        3 => near + 1,
        4 => near + 1000,
        5 => max,
        6 => max + 1,
        7 => u64::MAX,
        _ => rng.range(0, near + 10),
    }
}

fn any_conf(rng: &mut Prng) -> ConfState {
    let pick = |rng: &mut Prng| -> Vec<NodeId> {
        [1, 2, 3, 9]
            .into_iter()
            .filter(|_| rng.chance(1, 2))
            .map(NodeId)
            .collect()
    };
    let voters = pick(rng);
    ConfState::new(voters, pick(rng))
}

/// Any message the wire decoder accepts: node ids non-zero, append entries contiguous after
/// `prev`, a well-formed conf state; every other field arbitrary.
fn any_message(rng: &mut Prng, to: u64, term: u64, last: u64) -> Message {
    let from = [1, 2, 3, 9][rng.range(0, 4) as usize];
    // Mostly the current term: a message at another term is dropped or deposes the receiver,
    // and the handlers behind the term check are where the fields matter.
    let term = if rng.chance(3, 4) {
        term
    } else {
        edge(rng, term, TERM_MAX.0)
    };
    let idx = |rng: &mut Prng| LogIndex(edge(rng, last, INDEX_MAX.0));
    let eid = |rng: &mut Prng| {
        let t = Term(edge(rng, term, TERM_MAX.0));
        EntryId::new(t, LogIndex(edge(rng, last, INDEX_MAX.0)))
    };
    let body = match rng.range(0, 10) {
        0 => MessageBody::PreVote {
            last: eid(rng),
            floor: Term(edge(rng, term, TERM_MAX.0)),
        },
        1 => MessageBody::PreVoteResp {
            granted: rng.chance(1, 2),
            last: eid(rng),
        },
        2 => MessageBody::Vote {
            last: eid(rng),
            transfer: rng.chance(1, 2),
        },
        3 => MessageBody::VoteResp {
            granted: rng.chance(1, 2),
        },
        4 => {
            let prev = eid(rng);
            let n = rng.range(0, 4).min(u64::MAX - prev.index.0);
            let entries = (1..=n)
                .map(|k| {
                    let (kind, data) = match rng.range(0, 3) {
                        0 => (EntryKind::Command, vec![k as u8]),
                        1 => (EntryKind::Noop, vec![]),
                        _ => (EntryKind::ConfChange, any_conf_change(rng)),
                    };
                    Entry {
                        term: Term(prev.term.0.saturating_add(rng.range(0, 2))),
                        index: prev.index.plus(k),
                        kind,
                        data: data.into(),
                    }
                })
                .collect();
            MessageBody::Append {
                prev,
                entries,
                commit: idx(rng),
            }
        }
        5 => MessageBody::AppendResp {
            result: if rng.chance(1, 2) {
                AppendResult::Accepted {
                    match_index: idx(rng),
                }
            } else {
                let rejected = idx(rng);
                let last_index = idx(rng);
                let conflict = rng.chance(1, 2).then(|| eid(rng));
                AppendResult::Rejected {
                    rejected,
                    hint: RejectHint {
                        last_index,
                        conflict,
                    },
                }
            },
        },
        6 => MessageBody::Heartbeat {
            commit: idx(rng),
            read_seq: edge(rng, 2, u64::MAX / 2),
        },
        7 => MessageBody::HeartbeatResp {
            read_seq: edge(rng, 2, u64::MAX / 2),
        },
        8 => MessageBody::Snapshot {
            meta: SnapshotMeta {
                last: eid(rng),
                conf: any_conf(rng),
            },
        },
        _ => MessageBody::TimeoutNow,
    };
    msg(from, to, term, body)
}

fn any_conf_change(rng: &mut Prng) -> Vec<u8> {
    if rng.chance(1, 4) {
        let mut junk = vec![0; rng.range(0, 20) as usize];
        rng.fill(&mut junk);
        return junk;
    }
    let op = [
        ConfChangeOp::AddLearner,
        ConfChangeOp::AddVoter,
        ConfChangeOp::Remove,
    ][rng.range(0, 3) as usize];
    let node = NodeId([1, 2, 3, 9][rng.range(0, 4) as usize]);
    ConfChange {
        op,
        node,
        context: vec![],
    }
    .encode()
}

/// The bar: no peer message can crash a node. Cores of a live cluster take forged
/// messages of every kind with edge values in every field, between rounds of real traffic,
/// ticks, proposals and local snapshots; every step runs the core's invariant checks.
/// Nothing may panic.
#[test]
fn no_message_a_peer_can_send_panics_a_core() {
    for seed in 1..=4u64 {
        let mut rng = Prng::new(0xbad_9ee2 + seed);
        let mut net = Net::new(&[1, 2, 3], &[]);
        for case in 0..20_000 {
            // A forged term or index at the bounds can wedge a cluster for good (nobody may
            // campaign past TERM_MAX): start afresh now and then so later forgeries meet live
            // leaders and replicating followers.
            if case % 500 == 0 {
                net = Net::new(&[1, 2, 3], &[]);
                net.elect(1);
                net.propose(1, 5);
                net.stabilize();
            }
            // One forged message in four; between them the cluster runs (rounds, ticks,
            // proposals), so forged answers also reach leaders whose followers replicate.
            let forged = rng.chance(1, 4).then(|| {
                let to = rng.range(1, 4);
                let st = net.raft(to).status();
                any_message(&mut rng, to, st.term.0, st.last_index.0)
            });
            let shown = format!("{forged:?}");
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if let Some(m) = forged {
                    let to = m.to.0;
                    net.raft(to).step(m);
                    net.process(to);
                    return;
                }
                match rng.range(0, 5) {
                    0 | 1 => {
                        net.round();
                    }
                    2 => net.raft(rng.range(1, 4)).tick(),
                    3 => net.snapshot(rng.range(1, 4)),
                    _ => {
                        let leader = (1..=3).find(|&n| net.raft(n).role() == Role::Leader);
                        if let Some(l) = leader {
                            let _ = net.raft(l).propose(vec![case as u8]);
                        }
                    }
                }
            }));
            if stepped.is_err() {
                panic!("seed {seed} case {case}: a core panicked; forged message: {shown}");
            }
        }
    }
}

// ---- issue 12: a node whose uncommitted tail removes or demotes it (sim seeds 723, 2903) ----

/// Ticks every node (all messages delivered after each tick) until `done` holds, at most
/// `ticks_max` ticks; returns whether it did.
fn tick_until(net: &mut Net, ticks_max: u64, done: impl Fn(&Net) -> bool) -> bool {
    let ids: Vec<u64> = net.nodes.keys().copied().collect();
    for _ in 0..ticks_max {
        for &id in &ids {
            net.raft(id).tick();
        }
        net.stabilize();
        if done(net) {
            return true;
        }
    }
    false
}

fn leads(net: &Net, id: u64) -> bool {
    net.node(id).raft.role() == Role::Leader
}

/// Voters {1, 2}; leader 1 appends a change that takes itself out of the voters while node 2
/// is cut off, then loses its leadership to node 2's higher term (seed 2903's stuck state). Node 1 holds the longest
/// log, so node 2 can never win its vote. Returns the net, leaderless, and the change's index.
fn leader_changes_itself_out_unseen(
    op: ConfChangeOp,
    tweak: impl Fn(&mut Config),
) -> (Net, LogIndex) {
    let mut net = Net::with(&[1, 2], &[], tweak);
    net.elect(1);
    net.cut.insert(2);
    let change = net
        .raft(1)
        .propose_conf_change(ConfChange {
            op,
            node: NodeId(1),
            context: vec![],
        })
        .unwrap();
    net.stabilize();
    assert!(!net.raft(1).status().conf.is_voter(NodeId(1)));
    assert!(net.raft(2).status().conf.is_voter(NodeId(1)));
    // Node 2 campaigns and deposes node 1. (A stale TimeoutNow, delivered late, makes it
    // skip pre-vote, which node 1 would refuse while still leading; a crash and restart of
    // node 1 does the same in the simulator.)
    net.cut.clear();
    let term = net.raft(2).term();
    net.raft(2).step(msg(1, 2, term.0, MessageBody::TimeoutNow));
    net.stabilize();
    assert!(net.raft(1).term() > term);
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert!(net.raft(1).last_id().index > net.raft(2).last_id().index);
    (net, change.index)
}

/// Before the fix no node was ever elected: node 1 would not campaign (not a voter of its
/// newest configuration) and node 2 could not win node 1's vote. Now node 1 campaigns as a
/// voter of its committed configuration, wins the newest one's voters (node 2), commits its
/// own change and steps down (thesis §4.2.2); node 2 then leads alone.
#[test]
fn a_leader_whose_unseen_entry_demotes_or_removes_it_does_not_leave_the_cluster_leaderless() {
    for op in [ConfChangeOp::AddLearner, ConfChangeOp::Remove] {
        for pre_vote in [false, true] {
            let (mut net, change) = leader_changes_itself_out_unseen(op, |c| c.pre_vote = pre_vote);
            // Node 1's own vote does not count in a configuration it is not a voter of: cut
            // off from node 2 it campaigns but never wins.
            net.cut.insert(2);
            let alone = tick_until(&mut net, 100, |n| leads(n, 1));
            assert!(
                !alone,
                "{op:?} pre_vote={pre_vote}: node 1 won without node 2"
            );
            net.cut.clear();
            let elected = tick_until(&mut net, 200, |n| leads(n, 1) || leads(n, 2));
            assert!(elected, "{op:?} pre_vote={pre_vote}: no leader");
            // Whoever led first, the change commits and node 2, the only voter left, leads.
            let done = tick_until(&mut net, 400, |n| leads(n, 2));
            assert!(done, "{op:?} pre_vote={pre_vote}: node 2 never led");
            let st = net.raft(2).status();
            assert_eq!(st.conf.voters, vec![NodeId(2)], "{op:?}");
            assert!(
                st.commit >= change,
                "{op:?}: commit {} < {change}",
                st.commit
            );
            assert!(!leads(&net, 1));
            // Node 1 knows its change committed: it stays out of elections for good (a
            // removed node hears from nobody, and without pre-vote its campaign would depose
            // node 2).
            let term = net.raft(2).term();
            let quiet = |n: &Net| n.node(1).raft.role() != Role::Follower || !leads(n, 2);
            assert!(
                !tick_until(&mut net, 100, quiet),
                "{op:?} pre_vote={pre_vote}"
            );
            assert_eq!(net.raft(2).term(), term);
        }
    }
}

// ---- issue 13: a node whose storage the membership does not record stays out of votes ----

/// A node with voting off never campaigns, on its timeout or on a TimeoutNow, and refuses
/// every vote and pre-vote (with an answer, so candidates are not left waiting). Checked
/// against the core without the gate: node 2 campaigns, and grants node 3's vote.
#[test]
fn a_node_with_voting_off_neither_campaigns_nor_grants_a_vote_or_pre_vote() {
    for pre_vote in [false, true] {
        let mut net = Net::with(&[1, 2, 3], &[], |c| c.pre_vote = pre_vote);
        net.raft(2).set_voting(false);
        assert!(!net.raft(2).voting());
        net.cut.insert(1);
        net.cut.insert(3);
        // Alone and cut off, it would become a (pre-)candidate within 2T ticks.
        for _ in 0..100 {
            net.raft(2).tick();
            assert_eq!(net.raft(2).role(), Role::Follower, "pre_vote={pre_vote}");
        }
        let term = net.raft(2).term();
        net.raft(2).step(msg(1, 2, term.0, MessageBody::TimeoutNow));
        assert_eq!(net.raft(2).role(), Role::Follower);
        assert_eq!(net.raft(2).term(), term, "a TimeoutNow started an election");
        net.process(2);
        net.queue.clear();
        // A vote and a pre-vote from a candidate whose log is as up to date: both refused.
        let last = net.raft(2).last_id();
        let next = term.0 + 1;
        net.raft(2).step(msg(
            3,
            2,
            next,
            MessageBody::PreVote {
                last,
                floor: TERM_MAX,
            },
        ));
        net.raft(2).step(msg(
            3,
            2,
            next,
            MessageBody::Vote {
                last,
                transfer: true,
            },
        ));
        net.process(2);
        let answers: Vec<_> = net.queue.drain(..).map(|m| m.body).collect();
        assert_eq!(
            answers,
            vec![
                MessageBody::PreVoteResp {
                    granted: false,
                    last
                },
                MessageBody::VoteResp { granted: false }
            ],
            "pre_vote={pre_vote}"
        );
        assert_eq!(net.raft(2).status().vote, None, "voted while not voting");
        // Voting on again: it campaigns and can win.
        net.raft(2).set_voting(true);
        net.cut.clear();
        assert!(tick_until(&mut net, 200, |n| n.node(1).raft.role()
            == Role::Leader
            || n.node(2).raft.role() == Role::Leader
            || n.node(3).raft.role() == Role::Leader));
    }
}

/// A two-voter cluster whose second voter does not vote cannot elect anyone: the first needs
/// its vote. Turning voting off makes a candidate a follower at once.
#[test]
fn a_candidate_turned_non_voting_steps_back_and_a_quorum_needs_a_voting_node() {
    let mut net = Net::new(&[1, 2], &[]);
    net.raft(2).set_voting(false);
    assert!(!tick_until(&mut net, 200, |n| leads(n, 1) || leads(n, 2)));
    net.cut.insert(1);
    net.raft(2).set_voting(true);
    assert!(tick_until(&mut net, 100, |n| n.node(2).raft.role() == Role::Candidate));
    net.raft(2).set_voting(false);
    assert_eq!(net.raft(2).role(), Role::Follower);
    net.cut.clear();
    net.raft(2).set_voting(true);
    assert!(tick_until(&mut net, 200, |n| leads(n, 1) || leads(n, 2)));
}

// ---- issue 16: the commit index rides on the next append ----

/// The appends from `from` that carried no entries, by receiver, in `sent`.
fn empty_appends(sent: &[Message], from: u64) -> Vec<u64> {
    sent.iter()
        .filter(|m| m.from.0 == from)
        .filter(|m| matches!(&m.body, MessageBody::Append { entries, .. } if entries.is_empty()))
        .map(|m| m.to.0)
        .collect()
}

/// Before: once a quorum acknowledged a write, the leader sent every follower an append with
/// no entries, only to carry the new commit index (and each follower acknowledged it, a
/// duplicate the leader dropped). Now the next write's appends carry it; at rest, an append
/// sent once a whole tick passed with nothing carrying it (heartbeats here are 9 ticks apart,
/// so they play no part).
#[test]
fn a_new_commit_index_rides_on_the_next_append_or_goes_out_a_tick_later() {
    let mut net = Net::with(&[1, 2, 3], &[], |c| c.heartbeat_interval_ticks = 9);
    net.elect(1);
    net.settle_commit(1);
    net.sent = Some(Vec::new());
    let first = net.propose(1, 1);
    net.stabilize();
    assert_eq!(net.raft(1).commit(), first);
    let sent = net.sent.replace(Vec::new()).unwrap();
    assert_eq!(
        empty_appends(&sent, 1),
        Vec::<u64>::new(),
        "appends only for the commit index: {sent:?}"
    );
    for f in [2, 3] {
        assert!(
            net.raft(f).commit() < first,
            "node {f} learned {first} unsent"
        );
    }
    // The next write carries it.
    let second = net.propose(1, 1);
    net.stabilize();
    for f in [2, 3] {
        assert_eq!(
            net.raft(f).commit(),
            first,
            "node {f}: the next append's commit"
        );
    }
    assert_eq!(net.raft(1).commit(), second);
    // At rest: nothing for the tick in which the commit was last seen owed...
    net.sent = Some(Vec::new());
    net.raft(1).tick();
    net.stabilize();
    assert_eq!(net.sent.replace(Vec::new()).unwrap(), Vec::new());
    // ...and one append each after a whole tick with nothing carrying it.
    net.raft(1).tick();
    net.stabilize();
    let sent = net.sent.replace(Vec::new()).unwrap();
    assert_eq!(empty_appends(&sent, 1), vec![2, 3], "{sent:?}");
    for f in [2, 3] {
        assert_eq!(net.raft(f).commit(), second, "node {f} at rest");
    }
    // Told once: a further tick sends nothing.
    net.raft(1).tick();
    net.stabilize();
    assert_eq!(net.sent.take().unwrap(), Vec::new());
}

/// A follower read waits for the index the leader names (its last index when the request
/// arrived, perhaps not yet committed): `want_commit` makes each advance toward it go to that
/// follower at once, not a tick later, and to that follower only.
#[test]
fn a_follower_waiting_for_a_commit_index_is_sent_it_as_soon_as_it_advances() {
    let mut net = Net::with(&[1, 2, 3], &[], |c| c.heartbeat_interval_ticks = 9);
    net.elect(1);
    net.settle_commit(1);
    let last = net.propose(1, 3);
    net.raft(1).want_commit(NodeId(2), last);
    net.stabilize();
    assert_eq!(net.raft(1).commit(), last);
    assert_eq!(net.raft(2).commit(), last, "node 2 waits for {last}");
    assert!(net.raft(3).commit() < last, "node 3 waits for nothing");
    // Wanted and sent: the next write's commit goes with the next write, as for anyone.
    let next = net.propose(1, 1);
    net.stabilize();
    assert_eq!(net.raft(2).commit(), last, "told {next} unasked");
}
