//! The graceful stop (`node/stop.rs`, issue 17) as scripted stories on a 3-node cluster of
//! real nodes (`Node<KvStore, SimDisk, SimNet>`, as in `sim.rs`), counted in simulated
//! ticks: the very `begin_stop` / `stop_ready` the daemon's shell calls on SIGTERM.
//!
//! A stopping leader hands its leadership to a follower before it stops, so a client writing
//! through a follower waits far less than the election timeout the others would otherwise
//! need to notice a silent leader; a stopping follower is ready at once.

mod support;

use kvraft::client::Value;
use kvraft::raft::{NodeId, Role};
use support::story::{Story, TICK_MS};

/// The story cluster's `election_timeout_ms` (`support/story.rs`), in ticks.
const ELECTION_TIMEOUT_TICKS: u64 = 150 / TICK_MS;

#[test]
fn a_stopping_leader_hands_off_and_writes_through_a_follower_resume_within_an_election_timeout() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let term = c.nodes[&leader].raft().term();
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let mut s = c.connect(follower);
    assert_eq!(c.call(&mut s, &[b"SET", b"warm", b"1"]), Value::ok());

    c.nodes.get_mut(&leader).unwrap().begin_stop();
    assert!(c.nodes[&leader].stopping());
    let mut ticks = 0;
    while !c.nodes[&leader].stop_ready() {
        c.step();
        ticks += 1;
        assert!(
            ticks <= 2 * ELECTION_TIMEOUT_TICKS,
            "the stopping leader is not ready after {ticks} ticks"
        );
    }
    // Ready because another node took over, not because the wait ran out.
    assert!(
        ticks < ELECTION_TIMEOUT_TICKS,
        "the hand-off took {ticks} ticks, an election timeout is {ELECTION_TIMEOUT_TICKS}"
    );
    let old = &c.nodes[&leader];
    assert_ne!(old.raft().role(), Role::Leader);
    let new_leader = old
        .raft()
        .leader()
        .expect("the old leader knows the new one");
    assert_ne!(new_leader, NodeId(leader));
    assert!(old.raft().term() > term);
    // The node exits: it takes no more turns.
    c.stopped.insert(leader);

    // A write through the follower, retried on the errors that say to retry, from the
    // moment the stop began: it must succeed well within an election timeout.
    let mut gap = ticks;
    let mut n = 0;
    loop {
        n += 1;
        let key = format!("k{n}");
        c.send(&mut s, &[b"SET", key.as_bytes(), b"v"]);
        let (reply, took) = c.reply(&mut s);
        gap += took;
        if reply == Value::ok() {
            break;
        }
        let Value::Error(e) = &reply else {
            panic!("unexpected reply {reply:?}")
        };
        assert!(
            e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") || e.starts_with("UNKNOWN"),
            "{e}"
        );
        assert!(n < 100, "no write succeeded after {n} tries");
    }
    assert!(
        gap < ELECTION_TIMEOUT_TICKS,
        "writes through node {follower} stopped for {gap} ticks around the stop of leader {leader}"
    );
    let mut r = c.connect(new_leader.0);
    assert_eq!(
        c.call(&mut r, &[b"GET", b"warm"]),
        Value::Bulk(b"1".to_vec())
    );
}

#[test]
fn a_stopping_follower_is_ready_at_once_and_a_second_begin_changes_nothing() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let f = c.nodes.get_mut(&follower).unwrap();
    assert!(!f.stop_ready(), "not stopping yet");
    f.begin_stop();
    assert!(f.stop_ready());
    f.begin_stop();
    assert!(f.stop_ready());
    // The leader was not asked to do anything.
    assert_eq!(c.nodes[&leader].raft().role(), Role::Leader);
}

#[test]
fn a_stopping_leader_with_no_voter_to_take_over_stops_at_once() {
    let mut c = Story::new(1);
    let leader = c.leader();
    let n = c.nodes.get_mut(&leader).unwrap();
    n.begin_stop();
    assert!(n.stop_ready());
}

#[test]
fn a_stopping_leader_whose_followers_are_gone_stops_after_one_election_timeout() {
    let mut c = Story::new(3);
    let leader = c.leader();
    for i in (1..=3).filter(|&i| i != leader) {
        c.stopped.insert(i);
    }
    c.nodes.get_mut(&leader).unwrap().begin_stop();
    let mut ticks = 0;
    while !c.nodes[&leader].stop_ready() {
        c.step();
        ticks += 1;
        assert!(
            ticks <= 2 * ELECTION_TIMEOUT_TICKS,
            "still waiting after {ticks} ticks"
        );
    }
    assert!(
        ticks + 1 >= ELECTION_TIMEOUT_TICKS,
        "stopped after {ticks} ticks without anyone taking over"
    );
}
