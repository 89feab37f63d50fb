//! Node defects of issue 12, each shown on a small cluster of real nodes (`Node<KvStore,
//! SimDisk, SimNet>`, as in `sim.rs`) with no faults, so each test is one scripted story.

mod support;

use kvraft::client::Value;
use support::story::{addrs, Story};

/// Before: the leader encoded a ClientReply of ~10 MiB and panicked in `wire/frame.rs`, so
/// any client could take down every leader in turn. Now the follower's client gets an error
/// naming the problem, and every node stays up (`step` fails if one stops or panics).
#[test]
fn a_reply_too_large_for_a_frame_is_an_error_through_a_follower_and_no_node_goes_down() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let mut to_leader = c.connect(leader);
    let value = vec![b'v'; 1000 * 1000];
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("big{i}").into_bytes()).collect();
    for k in &keys {
        let r = c.call(&mut to_leader, &[b"SET", k, &value]);
        assert_eq!(r, Value::ok());
    }
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_slice()));
    let mut to_follower = c.connect(follower);
    match c.call(&mut to_follower, &args) {
        Value::Error(e) => assert!(e.starts_with("ERR reply too large"), "{e}"),
        other => panic!(
            "expected an error, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    // The leader answers the same MGET directly, whole, and still serves.
    match c.call(&mut to_leader, &args) {
        Value::Array(vs) => assert_eq!(vs.len(), 10),
        other => panic!(
            "expected the values, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    assert_eq!(
        c.call(&mut to_follower, &[b"PING"]),
        Value::Simple("PONG".into())
    );
}

/// Before: `MEMBER ADD` proposed whatever it was given; past `MEMBERS_MAX` the membership
/// could not be written into a snapshot. Now the leader refuses before proposing.
#[test]
fn member_add_beyond_the_membership_limit_is_refused_before_proposing() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let mut s = c.connect(leader);
    let max = kvraft::limits::MEMBERS_MAX as u64;
    for id in 4..=max + 1 {
        let (p, cl) = addrs(id % 250 + 1);
        let (p, cl) = (p.to_string(), cl.to_string());
        let id_text = id.to_string();
        let args: [&[u8]; 6] = [
            b"MEMBER",
            b"ADD",
            id_text.as_bytes(),
            p.as_bytes(),
            cl.as_bytes(),
            b"LEARNER",
        ];
        let mut r = c.call(&mut s, &args);
        while matches!(&r, Value::Error(e) if e.contains("pending")) {
            r = c.call(&mut s, &args); // the previous change has not committed yet
        }
        if id <= max {
            assert_eq!(r, Value::ok(), "adding learner {id}");
        } else {
            match r {
                Value::Error(e) => assert!(e.contains("the most it may have"), "{e}"),
                other => panic!("member {id} beyond the limit was accepted: {other:?}"),
            }
        }
    }
    let conf = c.nodes[&leader].raft().status().conf;
    assert_eq!(conf.members().count() as u64, max);
}
