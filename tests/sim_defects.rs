//! Node defects of issue 12, each shown on a small cluster of real nodes (`Node<KvStore,
//! SimDisk, SimNet>`, as in `sim.rs`) with no faults, so each test is one scripted story.

mod support;

use kvraft::client::Value;
use kvraft::raft::Role;
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

/// Issue 13, the counting rule (`node/membership.rs`: a response counts only from the
/// connection whose Hello named the incarnation the membership records). A leader that has
/// not heard of a newer term must not count the answers of a member's new incarnation (its
/// storage lost) as that member's: the old incarnation may have voted in the newer term.
///
/// Leader L hands leadership to W (`TRANSFER`) while W's and V's frames to L are dropped: V
/// votes W in, and L never hears of the newer term. V then loses its disk and comes back as
/// V'; only V' and L talk. Without the rule L counts V' as V: check-quorum keeps it leader and
/// a `SET e` commits on L and V' alone and is acknowledged. Once the network heals W's log
/// (its term is newer) replaces e on every node: an acknowledged write lost. With the rule L
/// drops V''s answers, steps down, and never acknowledges e.
#[test]
fn a_stale_leader_never_counts_a_new_incarnation_as_the_member_it_replaced() {
    let mut c = Story::new(3);
    let l = c.leader();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    let (w, v) = (others[0], others[1]);
    let mut to_l = c.connect(l);
    assert_eq!(c.call(&mut to_l, &[b"SET", b"a", b"1"]), Value::ok());
    let term = c.nodes[&l].raft().term();
    c.block(w, l, true);
    c.block(v, l, true);
    c.send(&mut to_l, &[b"TRANSFER", w.to_string().as_bytes()]);
    for _ in 0..200 {
        c.step();
        if c.nodes[&w].raft().role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.nodes[&w].raft().role(), Role::Leader, "W elected by V");
    assert!(c.nodes[&w].raft().term() > term);
    assert_eq!(c.nodes[&l].raft().term(), term, "L has not heard of W's term");
    // V's disk is lost; V' talks to L only.
    c.block(w, v, true);
    c.block(v, w, true);
    c.restart_with_empty_storage(v);
    c.block(v, l, false);
    let mut to_l = c.connect(l);
    let mut acked = false;
    for _ in 0..20 {
        c.send(&mut to_l, &[b"SET", b"e", b"1"]);
        match c.reply_within(&mut to_l, 100) {
            Some(r) if r == Value::ok() => {
                acked = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    // Heal: L is cut off while W and V' settle, then everyone talks again.
    for (a, b) in [(w, l), (l, w), (v, l), (l, v)] {
        c.block(a, b, true);
    }
    c.block(w, v, false);
    c.block(v, w, false);
    for _ in 0..300 {
        c.step();
    }
    for (a, b) in [(w, l), (l, w), (v, l), (l, v)] {
        c.block(a, b, false);
    }
    let leader = c.leader();
    let mut s = c.connect(leader);
    let r = c.call(&mut s, &[b"GET", b"e"]);
    if acked {
        assert_eq!(
            r,
            Value::Bulk(b"1".to_vec()),
            "LOST WRITE: SET e was acknowledged by the stale leader {l} (counting node {v}'s \
             new incarnation), and node {leader} now answers GET e with {r:?}"
        );
    }
    assert_eq!(c.call(&mut s, &[b"SET", b"f", b"1"]), Value::ok());
}
