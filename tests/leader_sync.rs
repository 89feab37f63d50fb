//! The leader's own log sync (`node/stored.rs`, "The leader's own sync"), on a small cluster
//! of real nodes (`Node<KvStore, SimDisk, SimNet>`, as in `sim.rs`): while its followers keep
//! up, a leader acknowledges writes that a majority of followers made durable before it synced
//! them itself; a crash then loses none of them; with a follower gone, or with
//! `leader_sync_wait_ms = 0`, it syncs in the very turn it writes.

mod support;

use kvraft::client::Value;
use kvraft::raft::LogIndex;
use support::sim_net::SimStream;
use support::story::{Story, TICKS_MAX};

/// Whole ticks (10 ms) of wait, so that a healthy story cluster's acknowledgements (two ticks
/// after the leader wrote) come before it.
const WAIT: &str = "leader_sync_wait_ms = 40\n";

/// The leader's log as written (the core's last index) and as durable.
fn leader_log(story: &Story, leader: u64) -> (LogIndex, LogIndex) {
    let n = &story.nodes[&leader];
    (n.raft().status().last_index, n.durable().0)
}

/// SET `key` through the leader and run the cluster until the reply: the reply, and whether
/// the leader's durable log stopped short of the write when the reply came.
fn set_and_see(story: &mut Story, leader: u64, key: &str) -> (Value, bool) {
    let mut client = story.connect(leader);
    story.send(&mut client, &[b"SET", key.as_bytes(), b"v"]);
    let (v, _) = story.reply(&mut client);
    let (last, durable) = leader_log(story, leader);
    (v, durable < last)
}

#[test]
fn a_leader_whose_followers_keep_up_acknowledges_writes_they_made_durable_before_its_own_sync() {
    let mut story = Story::with_config(3, 0, WAIT);
    let leader = story.leader();
    let mut before_own_sync = 0;
    for k in 0..20 {
        let key = format!("k{k}");
        let (v, unsynced) = set_and_see(&mut story, leader, &key);
        assert_eq!(v, Value::ok(), "SET {key}");
        if !unsynced {
            continue;
        }
        before_own_sync += 1;
        // Acknowledged on the followers' account: both hold it durably.
        let (last, _) = leader_log(&story, leader);
        for (&id, n) in &story.nodes {
            if id != leader {
                assert!(
                    n.durable().0 >= last,
                    "SET {key} acknowledged with the leader's log unsynced at {last} and node \
                     {id}'s durable only to {}",
                    n.durable().0
                );
            }
        }
    }
    assert!(
        before_own_sync >= 10,
        "only {before_own_sync} of 20 writes were acknowledged before the leader's own sync"
    );
    // And the leader's own sync follows within its interval (4 x 40 ms here), with no writes.
    let (last, _) = leader_log(&story, leader);
    let mut ticks = 0;
    while leader_log(&story, leader).1 < last {
        assert!(
            ticks < 30,
            "the leader's log stayed unsynced for {ticks} ticks"
        );
        story.step();
        ticks += 1;
    }
}

#[test]
fn a_leader_that_crashes_before_its_own_sync_loses_no_acknowledged_write() {
    let mut story = Story::with_config(3, 0, WAIT);
    let leader = story.leader();
    let mut crashed_with = None;
    for k in 0..20 {
        let key = format!("k{k}");
        let (v, unsynced) = set_and_see(&mut story, leader, &key);
        assert_eq!(v, Value::ok(), "SET {key}");
        if unsynced {
            crashed_with = Some((k, leader_log(&story, leader)));
            break;
        }
    }
    let (k, (last, durable)) = crashed_with.expect("a write acknowledged before the own sync");
    story.crash(leader);
    let mut next = None;
    for _ in 0..TICKS_MAX {
        story.step();
        next = story
            .nodes
            .iter()
            .find(|(_, n)| n.raft().role() == kvraft::raft::Role::Leader)
            .map(|(&id, _)| id);
        if next.is_some() {
            break;
        }
    }
    let next = next.expect("a new leader");
    story.restart(leader);
    // The restarted node lost what it had not synced, and gets it back from the new leader.
    assert!(
        story.nodes[&leader].raft().status().last_index < last,
        "the crash kept the unsynced tail ({durable}..={last})"
    );
    for key in 0..=k {
        let key = format!("k{key}");
        for node in [next, leader] {
            let mut client = story.connect(node);
            let v = story.call(&mut client, &[b"GET", key.as_bytes()]);
            assert_eq!(v, Value::bulk_str("v"), "GET {key} on node {node}");
        }
    }
}

/// Runs `writes` SETs through the leader and asserts that each leader turn that wrote an entry
/// also synced it.
fn every_leader_turn_syncs_what_it_writes(story: &mut Story, leader: u64, writes: usize) {
    let mut client = story.connect(leader);
    for k in 0..writes {
        let key = format!("s{k}");
        story.send(&mut client, &[b"SET", key.as_bytes(), b"v"]);
        let mut replied = false;
        for _ in 0..TICKS_MAX {
            let mut unsynced = None;
            story.step_with(|id, node, now, ready| {
                node.turn(now, ready).expect("no node stops");
                if id == leader {
                    let last = node.raft().status().last_index;
                    if node.durable().0 < last {
                        unsynced = Some((node.durable().0, last));
                    }
                }
            });
            assert_eq!(
                unsynced, None,
                "SET {key}: a leader turn left its log unsynced (durable, last)"
            );
            let mut buf = [0u8; 64];
            if matches!(std::io::Read::read(&mut client, &mut buf), Ok(n) if n > 0) {
                assert!(buf.starts_with(b"+OK"), "SET {key}");
                replied = true;
                break;
            }
        }
        assert!(replied, "SET {key} answered");
    }
}

#[test]
fn with_a_follower_gone_the_leader_syncs_in_the_turn_it_writes() {
    let mut story = Story::with_config(3, 0, WAIT);
    let leader = story.leader();
    let follower = *story.nodes.keys().find(|&&id| id != leader).unwrap();
    story.crash(follower);
    // The connection's loss sends the follower's progress back to probing: the others alone
    // are no majority.
    every_leader_turn_syncs_what_it_writes(&mut story, leader, 10);
}

#[test]
fn with_leader_sync_wait_ms_0_the_leader_syncs_in_the_turn_it_writes() {
    let mut story = Story::with_config(3, 0, "leader_sync_wait_ms = 0\n");
    let leader = story.leader();
    every_leader_turn_syncs_what_it_writes(&mut story, leader, 10);
}

/// A story whose check-quorum does not notice a silent follower during it (a long election
/// timeout), its leader, and a client of it that wrote once (the followers keep up).
fn warm_story_without_check_quorum() -> (Story, u64, SimStream) {
    let mut story = Story::with_config(3, 0, &format!("{WAIT}election_timeout_ms = 2000\n"));
    let leader = story.leader();
    let mut client = story.connect(leader);
    let v = story.call(&mut client, &[b"SET", b"warm", b"v"]);
    assert_eq!(v, Value::ok());
    (story, leader, client)
}

#[test]
fn with_a_follower_stalled_the_leader_syncs_once_a_write_waited_and_its_sync_commits_it() {
    let (mut story, leader, mut client) = warm_story_without_check_quorum();
    // SIGSTOP: its connection stays open, so the leader still counts it as keeping up.
    let stalled = *story.nodes.keys().find(|&&id| id != leader).unwrap();
    story.stopped.insert(stalled);
    story.send(&mut client, &[b"SET", b"k", b"v"]);
    let (v, ticks) = story.reply(&mut client);
    assert_eq!(v, Value::ok());
    let (last, durable) = leader_log(&story, leader);
    assert!(
        durable >= last,
        "acknowledged without the leader's own sync"
    );
    // The wait (4 ticks) and a tick for the acknowledgement, not the 16-tick interval.
    assert!(ticks <= 7, "the write took {ticks} ticks");
    let info = story.call(&mut client, &[b"INFO"]);
    let Value::Bulk(text) = info else {
        panic!("INFO answered {info:?}")
    };
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("log_sync_slow_followers:1\r\n"),
        "INFO counts the wait that the leader's sync ended: {text}"
    );
}

#[test]
fn a_write_that_waited_with_no_follower_holding_it_commits_on_the_first_acknowledgement() {
    let (mut story, leader, mut client) = warm_story_without_check_quorum();
    let followers: Vec<u64> = story
        .nodes
        .keys()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    story.stopped.extend(followers.iter().copied());
    story.send(&mut client, &[b"SET", b"k", b"v"]);
    // Past the wait (4 ticks): the leader's sync alone would commit nothing.
    assert_eq!(
        story.reply_within(&mut client, 6),
        None,
        "committed with no follower"
    );
    story.stopped.remove(&followers[0]);
    let v = story.reply_within(&mut client, 5);
    // At the first acknowledgement, not at the end of the interval (16 ticks after the write).
    assert_eq!(
        v,
        Some(Value::ok()),
        "answered within 5 ticks of a follower's return"
    );
}
