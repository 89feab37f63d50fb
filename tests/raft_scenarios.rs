//! The classic Raft scenarios, and one test per seed lesson that belongs to the core (1–6, 8,
//! 10, 12, 13 of seed-lessons.md), each named after what it shows. The cluster harness in
//! `support` also checks log matching and state-machine safety on every Ready.

mod support;

use kvraft::raft::{
    AppendResult, ConfChange, ConfChangeOp, Config, Entry, EntryId, EntryKind, HardState, LogIndex,
    Message, MessageBody, ProposeError, Raft, Restored, Role, SnapshotMeta, Term,
};
use support::{Cluster, NodeId};

fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

fn id(t: u64, i: u64) -> EntryId {
    EntryId::new(Term(t), LogIndex(i))
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

fn entry(t: u64, i: u64) -> Entry {
    Entry {
        term: Term(t),
        index: LogIndex(i),
        kind: EntryKind::Command,
        data: vec![i as u8].into(),
    }
}

/// A lone core of a 3-voter cluster, restored with `entries` at `term`.
fn lone(me: u64, term: u64, entries: Vec<Entry>) -> Raft {
    let conf = kvraft::raft::ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![]);
    let mut cfg = Config::new(NodeId(me), 7);
    plain(&mut cfg);
    Raft::new(
        cfg,
        Restored {
            hard_state: HardState {
                term: Term(term),
                ..HardState::default()
            },
            snapshot: SnapshotMeta {
                last: EntryId::default(),
                conf,
            },
            entries,
        },
    )
}

/// Delivers outbox messages one at a time (FIFO) until `stop` holds.
fn deliver_until(c: &mut Cluster, stop: impl Fn(&Cluster) -> bool) {
    for _ in 0..10_000 {
        c.process_all();
        if stop(c) {
            return;
        }
        if c.outbox.is_empty() {
            panic!("ran out of messages before the condition held");
        }
        let m = c.outbox.remove(0);
        c.deliver(m);
    }
    panic!("condition never held");
}

#[test]
fn figure_8_an_old_term_entry_on_a_majority_is_not_committed_by_counting() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 1, |cfg| {
        plain(cfg);
        cfg.append_entries_max = 1;
    });
    c.campaign(1);
    assert_eq!(c.leader(), Some(1));
    // Term 1: X at index 2 reaches only node 1.
    c.isolate(1);
    let x = c.propose(1, b"x");
    assert_eq!(x, id(1, 2));
    c.stabilize();
    // Term 2: node 2 wins with node 3's vote, but its entry at index 2 reaches nobody.
    c.heal();
    c.isolate(1);
    c.tick(NodeId(2));
    while c.node(2).role() != Role::Candidate {
        c.tick(NodeId(2));
    }
    deliver_until(&mut c, |c| c.node(2).role() == Role::Leader);
    c.isolate(2);
    c.stabilize();
    assert_eq!(c.node(2).term_at(LogIndex(2)), Some(Term(2)));
    // Term 3 (or later): node 1 wins with node 3 and copies X to it before its own entry.
    c.crash(NodeId(1));
    c.restart(NodeId(1));
    c.heal();
    c.isolate(2);
    while c.node(1).role() != Role::Leader {
        let t = c.node(1).term();
        while c.node(1).term() == t {
            c.tick(NodeId(1));
        }
        c.process_all();
        while !c.outbox.is_empty() && c.node(1).role() != Role::Leader {
            let m = c.outbox.remove(0);
            c.deliver(m);
            c.process_all();
        }
    }
    deliver_until(&mut c, |c| {
        c.node(1)
            .status()
            .progress
            .iter()
            .any(|p| p.id == NodeId(3) && p.match_index >= LogIndex(2))
    });
    // X is on a majority (1 and 3) but of an old term: it must not be committed by counting.
    assert!(
        c.node(1).commit() < LogIndex(2),
        "old-term entry committed by counting"
    );
    c.crash(NodeId(1));
    c.outbox.clear();
    c.heal();
    // Node 2 (last term 2) can now win and overwrite index 2; nobody may have applied X.
    c.crash(NodeId(2));
    c.restart(NodeId(2));
    while c.node(2).role() != Role::Leader {
        c.campaign(2);
    }
    c.run_ticks(5);
    assert_ne!(c.applied.get(&LogIndex(2)), Some(&x));
    assert_eq!(c.applied.get(&LogIndex(2)).map(|e| e.term), Some(Term(2)));
}

#[test]
fn a_partitioned_old_leader_that_keeps_accepting_proposals_loses_them() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 2, |_| {});
    c.campaign(1);
    c.isolate(1);
    let lost = c.propose(1, b"lost");
    c.stabilize();
    let new_leader = loop {
        c.run_ticks(1);
        if let Some(l) = c.leaders().iter().find(|l| l.0 != NodeId(1)) {
            break l.0 .0;
        }
    };
    let kept = c.propose(new_leader, b"kept");
    c.heal();
    c.run_ticks(30);
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_ne!(c.applied.get(&lost.index), Some(&lost));
    assert!(c.applied.values().any(|&e| e == kept));
}

#[test]
fn a_follower_with_a_longer_divergent_log_is_repaired_skipping_a_whole_term_in_one_round_trip() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 3, plain);
    c.campaign(1);
    c.isolate(1);
    for k in 0..10 {
        c.propose(1, format!("divergent {k}").as_bytes());
    }
    c.stabilize();
    assert_eq!(c.node(1).last_id(), id(1, 11));
    c.campaign(2);
    assert_eq!(c.leader_of_term(Term(2)), Some(2));
    c.propose(2, b"a");
    c.propose(2, b"b");
    c.stabilize();
    assert_eq!(c.node(2).last_id(), id(2, 4));
    // Node 3 leads term 3 with the same log; it has never heard from node 1, so it starts
    // probing node 1 just past its own last index (5).
    c.campaign(3);
    assert_eq!(c.leader_of_term(Term(3)), Some(3));
    c.heal();
    c.delivered.clear();
    c.run_ticks(6);
    let rejections = c
        .delivered
        .iter()
        .filter(|m| {
            m.from == NodeId(1)
                && matches!(
                    m.body,
                    MessageBody::AppendResp {
                        result: AppendResult::Rejected { .. }
                    }
                )
        })
        .count();
    assert_eq!(rejections, 1, "the term hint skips all of term 1 at once");
    assert_eq!(c.node(1).last_id(), c.node(3).last_id());
    assert_eq!(c.node(1).term_at(LogIndex(4)), Some(Term(2)));
}

#[test]
fn a_node_rejoining_after_missing_many_terms_catches_up() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 4, plain);
    c.campaign(1);
    c.isolate(3);
    for round in 0..6 {
        let l = [2, 1][round % 2];
        c.campaign(l);
        c.propose(l, format!("r{round}").as_bytes());
        c.stabilize();
    }
    assert!(c.node(1).term() >= Term(6));
    c.heal();
    c.run_ticks(20);
    let leader = c.leader().expect("leader");
    assert_eq!(c.node(3).last_id(), c.node(leader).last_id());
    assert_eq!(c.node(3).commit(), c.node(leader).commit());
}

#[test]
fn a_candidate_with_a_stale_log_never_wins() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 5, plain);
    c.campaign(1);
    c.isolate(3);
    c.propose(1, b"one");
    c.stabilize();
    c.crash(NodeId(1));
    c.heal();
    for _ in 0..5 {
        c.campaign(3);
        assert_ne!(c.node(3).role(), Role::Leader, "stale candidate won");
    }
    let l = c.run_until_leader(200);
    assert_eq!(l, 2);
}

#[test]
fn split_votes_resolve_by_randomized_timeouts() {
    let mut c = Cluster::new(&[1, 2, 3, 4], &[], 6, plain);
    // Nodes 1 and 2 campaign in the same term before hearing from each other.
    while c.node(1).role() != Role::Candidate {
        c.tick(NodeId(1));
    }
    while c.node(2).role() != Role::Candidate || c.node(2).term() != c.node(1).term() {
        c.tick(NodeId(2));
    }
    // Node 3 hears only node 1, node 4 only node 2: two votes each, no majority of four.
    c.blocked.insert((NodeId(1), NodeId(4)));
    c.blocked.insert((NodeId(2), NodeId(3)));
    c.stabilize();
    assert!(c.leaders().is_empty(), "split vote");
    c.heal();
    c.run_until_leader(300);
    assert_eq!(c.leaders().len(), 1);
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_bumping_the_cluster_term() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 7, |_| {});
    let l = c.run_until_leader(100);
    let term = c.node(l).term();
    let other = if l == 3 { 2 } else { 3 };
    c.isolate(other);
    c.run_ticks(100);
    assert_eq!(
        c.node(other).term(),
        term,
        "pre-vote failed, so no term bump"
    );
    c.heal();
    c.run_ticks(30);
    assert_eq!(c.leader(), Some(l));
    assert_eq!(c.node(l).term(), term);
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 8, |_| {});
    let l = c.run_until_leader(100);
    c.isolate(l);
    c.run_ticks(25);
    assert_eq!(c.node(l).role(), Role::Follower);
}

#[test]
fn leadership_transfer_hands_over_and_blocks_proposals_meanwhile() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 9, |_| {});
    let l = c.run_until_leader(100);
    let to = if l == 1 { 2 } else { 1 };
    c.isolate(to);
    c.propose(l, b"before");
    c.stabilize();
    c.heal();
    c.node_mut(l).transfer_leadership(NodeId(to)).unwrap();
    assert_eq!(
        c.node_mut(l).propose(b"during".to_vec()),
        Err(ProposeError::TransferInProgress)
    );
    c.stabilize();
    assert_eq!(c.leader(), Some(to));
    assert_eq!(c.node(l).role(), Role::Follower);
}

#[test]
fn a_learner_is_added_promoted_and_a_voter_removed() {
    let mut c = Cluster::new(&[1, 2, 3], &[4], 10, |_| {});
    let l = c.run_until_leader(100);
    for k in 0..5 {
        c.propose(l, format!("v{k}").as_bytes());
    }
    c.stabilize();
    let cc = |op, node| ConfChange {
        op,
        node: NodeId(node),
        context: vec![],
    };
    c.node_mut(l)
        .propose_conf_change(cc(ConfChangeOp::AddLearner, 4))
        .unwrap();
    assert_eq!(
        c.node_mut(l)
            .propose_conf_change(cc(ConfChangeOp::AddVoter, 4)),
        Err(ProposeError::ConfChangePending)
    );
    c.run_ticks(5);
    assert!(c.node(4).status().conf.is_learner(NodeId(4)));
    assert_eq!(
        c.node(4).last_id(),
        c.node(l).last_id(),
        "learner receives the log"
    );
    c.node_mut(l)
        .propose_conf_change(cc(ConfChangeOp::AddVoter, 4))
        .unwrap();
    c.run_ticks(5);
    let victim = if l == 3 { 2 } else { 3 };
    c.node_mut(l)
        .propose_conf_change(cc(ConfChangeOp::Remove, victim))
        .unwrap();
    c.run_ticks(5);
    let conf = c.node(l).status().conf;
    let mut want: Vec<NodeId> = [1, 2, 3, 4]
        .iter()
        .filter(|&&n| n != victim)
        .map(|&n| NodeId(n))
        .collect();
    want.sort();
    assert_eq!(conf.voters, want);
    // The new configuration commits without the removed node.
    c.crash(NodeId(victim));
    let e = c.propose(l, b"after");
    c.run_ticks(3);
    assert_eq!(c.applied.get(&e.index), Some(&e));
}

/// Simulator seeds 723 and 2903, with the defaults (pre-vote, check-quorum): the leader of
/// voters {l, o} demotes itself while o is cut off, then crashes and restarts. Its durable
/// log is the longest and its newest configuration leaves it a learner; o cannot win its
/// vote. Before the fix no node was ever elected. Now l, a voter of its committed
/// configuration, campaigns under the newest one (o's vote alone decides), commits its
/// demotion and steps down, and o leads the voters it is the only one of.
#[test]
fn a_leader_that_demoted_itself_unseen_and_restarted_is_elected_then_steps_down() {
    let mut c = Cluster::new(&[1, 2], &[], 11, |_| {});
    let l = c.run_until_leader(100);
    let o = 3 - l;
    c.isolate(o);
    let demote = ConfChange {
        op: ConfChangeOp::AddLearner,
        node: NodeId(l),
        context: vec![],
    };
    let change = c.node_mut(l).propose_conf_change(demote).unwrap();
    c.stabilize();
    c.crash(NodeId(l));
    c.restart(NodeId(l));
    c.heal();
    assert!(c.node(l).last_id().index > c.node(o).last_id().index);
    let mut settled = false;
    for _ in 0..2000 {
        c.tick_all();
        c.stabilize();
        let st = c.node(o).status();
        if st.role == Role::Leader && st.commit >= change.index {
            settled = true;
            break;
        }
    }
    assert!(settled, "node {o} never led with the demotion committed");
    assert_eq!(c.node(o).status().conf.voters, vec![NodeId(o)]);
    assert!(c.node(o).status().conf.is_learner(NodeId(l)));
    assert_eq!(c.applied.get(&change.index), Some(&change));
}

// ---- seed lessons ----

#[test]
fn lesson_1_vote_compares_last_term_before_last_index() {
    let mut r = lone(1, 3, vec![entry(1, 1), entry(3, 2)]);
    // Candidate 2's log is longer but ends in an older term: refused.
    r.step(msg(
        2,
        1,
        4,
        MessageBody::Vote {
            last: id(2, 9),
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResp { granted: false }
    ));
    r.advance(LogIndex(2), LogIndex(0));
    r.step(msg(
        3,
        1,
        4,
        MessageBody::Vote {
            last: id(3, 2),
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResp { granted: true }
    ));
}

#[test]
fn lesson_2_a_leader_seeing_a_newer_term_steps_down_before_handling_the_message() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 11, plain);
    c.campaign(1);
    let t = c.node(1).term();
    c.node_mut(1).step(msg(
        2,
        1,
        t.0 + 5,
        MessageBody::Heartbeat {
            commit: LogIndex(0),
            read_seq: 0,
        },
    ));
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), Term(t.0 + 5));
    assert_eq!(c.node(1).leader(), Some(NodeId(2)));
}

#[test]
fn lesson_3_a_conflicting_suffix_is_truncated_before_appending() {
    let mut r = lone(2, 2, vec![entry(1, 1), entry(1, 2), entry(1, 3)]);
    let append = MessageBody::Append {
        prev: id(1, 1),
        entries: vec![entry(2, 2)],
        commit: LogIndex(0),
    };
    r.step(msg(1, 2, 2, append));
    assert_eq!(
        r.last_id(),
        id(2, 2),
        "index 3 (after the conflict) is gone"
    );
    let rd = r.ready();
    assert_eq!(rd.entries, vec![entry(2, 2)]);
}

#[test]
fn lesson_4_a_late_reply_to_an_earlier_append_is_recognised_and_ignored() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 12, plain);
    c.campaign(1);
    for k in 0..3 {
        c.propose(1, &[k]);
    }
    c.stabilize();
    let t = c.node(1).term().0;
    let pr = |c: &Cluster| {
        c.node(1)
            .status()
            .progress
            .into_iter()
            .find(|p| p.id == NodeId(2))
            .unwrap()
    };
    let before = pr(&c);
    // An old ack and an old rejection, answering requests already superseded.
    c.node_mut(1).step(msg(
        2,
        1,
        t,
        MessageBody::AppendResp {
            result: AppendResult::Accepted {
                match_index: LogIndex(1),
            },
        },
    ));
    let hint = kvraft::raft::RejectHint {
        last_index: LogIndex(0),
        conflict: None,
    };
    c.node_mut(1).step(msg(
        2,
        1,
        t,
        MessageBody::AppendResp {
            result: AppendResult::Rejected {
                rejected: LogIndex(1),
                hint,
            },
        },
    ));
    assert_eq!(pr(&c), before);
}

#[test]
fn lesson_5_one_vote_per_term_and_it_is_sent_only_after_it_is_durable() {
    let mut r = lone(1, 1, vec![]);
    r.step(msg(
        2,
        1,
        2,
        MessageBody::Vote {
            last: id(0, 0),
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert_eq!(
        rd.hard_state.map(|h| (h.term, h.vote, h.uncertain)),
        Some((Term(2), Some(NodeId(2)), None))
    );
    assert!(rd.messages.is_empty(), "vote must wait for the sync");
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResp { granted: true }
    ));
    r.advance(LogIndex(0), LogIndex(0));
    r.step(msg(
        3,
        1,
        2,
        MessageBody::Vote {
            last: id(0, 0),
            transfer: false,
        },
    ));
    let rd = r.ready();
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResp { granted: false }
    ));
}

#[test]
fn lesson_6_an_append_is_acknowledged_only_after_it_is_persisted() {
    let mut r = lone(2, 1, vec![]);
    let append = MessageBody::Append {
        prev: id(0, 0),
        entries: vec![entry(1, 1)],
        commit: LogIndex(0),
    };
    r.step(msg(1, 2, 1, append));
    let rd = r.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.messages.is_empty());
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::AppendResp {
            result: AppendResult::Accepted {
                match_index: LogIndex(1)
            }
        }
    ));
}

#[test]
fn lesson_8_a_restarted_node_does_not_treat_its_log_as_committed() {
    let mut r = lone(1, 2, vec![entry(1, 1), entry(2, 2)]);
    assert_eq!(r.commit(), LogIndex(0));
    let rd = r.ready();
    assert!(rd.committed.is_empty());
}

#[test]
fn lesson_10_commit_advances_after_an_election_from_the_match_indexes() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 13, plain);
    c.campaign(1);
    c.isolate(1);
    c.propose(1, b"only on 1");
    c.stabilize();
    c.heal();
    c.crash(NodeId(1));
    c.restart(NodeId(1));
    c.campaign(1); // a new term: index 2 (term 1) commits once the new no-op does
    let commit = c.node(1).commit();
    assert_eq!(commit, c.node(1).last_id().index);
    assert!(commit >= LogIndex(3));
    // Lost acks do not stall it: the next ack carries a higher match and commits all.
    c.blocked.insert((NodeId(2), NodeId(1)));
    c.propose(1, b"a");
    c.stabilize();
    c.blocked.clear();
    let e = c.propose(1, b"b");
    c.stabilize();
    assert_eq!(c.node(1).commit(), e.index);
}

#[test]
fn lesson_12_election_timeouts_are_fresh_random_draws_in_t_to_2t() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..4 {
        let mut c = Cluster::new(&[1, 2, 3], &[], seed, plain);
        for _ in 0..5 {
            let mut ticks = 0;
            while c.node(1).role() == Role::Follower {
                c.tick(NodeId(1));
                ticks += 1;
            }
            assert!((10..20).contains(&ticks), "timeout {ticks} outside [T, 2T)");
            seen.insert(ticks);
            c.process_all();
            c.outbox.clear();
            // Back to follower, with a newer term: the timer is reset and redrawn.
            let t = c.node(1).term().0 + 1;
            c.node_mut(1).step(msg(
                2,
                1,
                t,
                MessageBody::Heartbeat {
                    commit: LogIndex(0),
                    read_seq: 0,
                },
            ));
            c.process_all();
            c.outbox.clear();
        }
    }
    assert!(seen.len() >= 4, "timeouts not re-randomised: {seen:?}");
}

#[test]
fn lesson_13_a_new_election_supersedes_the_previous_one_and_its_late_votes() {
    let mut c = Cluster::new(&[1, 2, 3], &[], 14, plain);
    while c.node(1).role() != Role::Candidate {
        c.tick(NodeId(1));
    }
    let first = c.node(1).term();
    c.process_all();
    c.outbox.clear();
    while c.node(1).term() == first {
        c.tick(NodeId(1));
    }
    // A vote granted for the first election arrives late: it is of an older term.
    c.node_mut(1)
        .step(msg(2, 1, first.0, MessageBody::VoteResp { granted: true }));
    assert_eq!(c.node(1).role(), Role::Candidate);
}
