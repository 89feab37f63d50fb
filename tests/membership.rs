//! Membership changes, leadership transfer and cluster sizes other than three, on real
//! processes (seed lesson 15: the original was hard-coded to three nodes on localhost).

mod harness;

use std::time::Duration;

use harness::{call, get, on_leader, parse_info, put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(20);

/// Membership commands go to the leader; retry while leadership moves.
fn member(c: &Cluster, args: &[&str]) -> Value {
    on_leader(c, args, LONG)
}

fn voters(c: &Cluster, id: u64) -> String {
    c.info(id).map(|i| i["voters"].clone()).unwrap_or_default()
}

#[test]
fn a_joining_node_is_added_as_a_learner_catches_up_is_promoted_and_an_old_voter_is_removed() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    for i in 0..100 {
        put_retry(&c, leader, &format!("before-join-{i}"), "1", LONG);
    }
    let new = c.add_joiner();
    let (peer, client) = (c.node(new).peer.to_string(), c.node(new).client.to_string());
    let id = new.to_string();
    member(&c, &["MEMBER", "ADD", &id, &peer, &client, "LEARNER"]);
    // The learner receives the whole log without counting toward quorums.
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[new], applied, LONG);
    let learner = c.info(new).unwrap();
    assert_eq!(learner["role"], "learner", "{learner:?}");
    assert_eq!(learner["voters"], "1,2,3");
    member(&c, &["MEMBER", "PROMOTE", &id]);
    wait_for(LONG, "every node to see four voters", || {
        (1..=4).all(|n| voters(&c, n) == "1,2,3,4").then_some(())
    });
    // Four voters: a quorum is three, so one failure is still fine.
    let leader = c.wait_leader(LONG);
    let victim = (1..=3).find(|&n| n != leader).unwrap();
    c.kill(victim);
    put_retry(&c, new, "after-promote", "2", LONG);
    member(&c, &["MEMBER", "REMOVE", &victim.to_string()]);
    let rest: Vec<u64> = (1..=4).filter(|&n| n != victim).collect();
    wait_for(LONG, "the removal to reach every remaining node", || {
        rest.iter()
            .all(|&n| !voters(&c, n).split(',').any(|v| v == victim.to_string()))
            .then_some(())
    });
    put_retry(&c, new, "after-remove", "3", LONG);
    for &n in &rest {
        assert_eq!(
            get(&c, n, "before-join-99"),
            Some(Value::Bulk(b"1".to_vec())),
            "node {n}"
        );
        assert_eq!(
            get(&c, n, "after-remove"),
            Some(Value::Bulk(b"3".to_vec())),
            "node {n}"
        );
    }
    let list = call(&c, new, &["MEMBER", "LIST"]);
    let Value::Array(rows) = list else {
        panic!("MEMBER LIST: {list:?}")
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    // The newcomer holds exactly the state of the others.
    let leader = c.wait_leader(LONG);
    let target: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&rest, target, LONG);
    let hashes: Vec<String> = rest
        .iter()
        .map(|&n| c.info(n).unwrap()["state_hash"].clone())
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

#[test]
fn a_membership_change_is_refused_while_another_is_pending_or_when_it_changes_nothing() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    put_retry(&c, leader, "x", "1", LONG);
    let v = call(&c, leader, &["MEMBER", "PROMOTE", "2"]);
    assert!(
        v.is_error(),
        "promoting an existing voter was accepted: {v:?}"
    );
    let v = call(
        &c,
        leader,
        &["MEMBER", "ADD", "0", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert!(v.is_error(), "node id 0 was accepted: {v:?}");
    let v = call(
        &c,
        leader,
        &["MEMBER", "ADD", "9", "not-an-address", "127.0.0.1:2"],
    );
    assert!(v.is_error(), "a bad address was accepted: {v:?}");
}

#[test]
fn leadership_transfer_moves_the_leader_to_the_named_node_without_losing_writes() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    for i in 0..50 {
        put_retry(&c, leader, &format!("t{i}"), "v", LONG);
    }
    let target = (1..=3).find(|&n| n != leader).unwrap();
    assert_eq!(
        call(&c, leader, &["TRANSFER", &target.to_string()]),
        Value::ok()
    );
    wait_for(LONG, "the named node to lead", || {
        (c.leader() == Some(target)).then_some(())
    });
    let old = parse_info(&call(&c, leader, &["INFO", "raft"]));
    assert_eq!(old["role"], "follower");
    assert_eq!(old["leader_id"], target.to_string());
    put_retry(&c, leader, "after-transfer", "w", LONG);
    for i in 0..50 {
        assert_eq!(
            get(&c, target, &format!("t{i}")),
            Some(Value::Bulk(b"v".to_vec()))
        );
    }
    let v = call(&c, target, &["TRANSFER", "99"]);
    assert!(
        v.is_error(),
        "a transfer to a non-member was accepted: {v:?}"
    );
}

#[test]
fn a_five_node_cluster_keeps_serving_with_two_nodes_down() {
    let _g = serial();
    let mut c = Cluster::start(Options {
        nodes: 5,
        ..Options::default()
    });
    let leader = c.wait_leader(LONG);
    put_retry(&c, leader, "five", "1", LONG);
    let follower = (1..=5).find(|&n| n != leader).unwrap();
    c.kill(leader);
    c.kill(follower);
    let alive: Vec<u64> = (1..=5).filter(|&n| n != leader && n != follower).collect();
    put_retry(&c, alive[0], "three-left", "2", LONG);
    for &n in &alive {
        assert_eq!(get(&c, n, "five"), Some(Value::Bulk(b"1".to_vec())));
        assert_eq!(get(&c, n, "three-left"), Some(Value::Bulk(b"2".to_vec())));
    }
}
