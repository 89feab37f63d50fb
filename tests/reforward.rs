//! A follower's forwarded requests when the leader it forwarded to goes silent, as scripted
//! stories on a 3-node cluster of real nodes (`Node<KvStore, SimDisk, SimNet>`, as in
//! `sim.rs`): the silent leader simply takes no turns (a SIGSTOP), so everything is counted in
//! simulated ticks and replays exactly.
//!
//! A plain write is answered `-UNKNOWN` as soon as the follower learns of the next leader;
//! a session write and a read are sent on to that leader and answered normally, the session
//! write applied once.

mod support;

use kvraft::client::Value;
use kvraft::raft::NodeId;
use support::sim_net::SimStream;
use support::story::Story;

/// The forward timeout in ticks: an answer after it proves nothing about re-forwarding.
const FORWARD_TIMEOUT_TICKS: u64 = 1000;

impl Story {
    /// A follower of `leader`, and a connection to it that already wrote through it once
    /// (so it knows the leader and has a link to it).
    fn follower_of(&mut self, leader: u64) -> (u64, SimStream) {
        let follower = (1..=3).find(|&i| i != leader).expect("a follower");
        let mut s = self.connect(follower);
        assert_eq!(self.call(&mut s, &[b"SET", b"warm", b"1"]), Value::ok());
        (follower, s)
    }
}

#[test]
fn a_plain_write_through_a_follower_is_answered_unknown_once_it_loses_touch_with_the_leader() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let (follower, mut s) = c.follower_of(leader);
    c.stopped.insert(leader);
    c.send(&mut s, &[b"SET", b"k", b"v"]);
    // NB: the write leaves in the follower's next turn, to a leader that never reads it.
    let (reply, ticks) = c.reply(&mut s);
    let Value::Error(e) = &reply else {
        panic!("a write forwarded to a silent leader cannot be OK: {reply:?}")
    };
    assert!(
        e.starts_with("UNKNOWN") && e.ends_with("the command may or may not have been applied"),
        "{e}"
    );
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
    // By then the follower no longer takes the silent node for the leader (its election
    // timeout passed without a word from it, or another leader or term appeared).
    let known = c.nodes[&follower].raft().leader();
    assert!(known != Some(NodeId(leader)), "{known:?}: {e}");
}

#[test]
fn a_session_write_and_a_read_through_a_follower_are_sent_on_to_the_next_leader() {
    let mut c = Story::new(3);
    let leader = c.leader();
    let (_, mut s) = c.follower_of(leader);
    let Value::Integer(id) = c.call(&mut s, &[b"SESSION", b"OPEN"]) else {
        panic!("SESSION OPEN gives an id")
    };
    let id = id.to_string();
    let incr = |seq: &'static [u8]| -> Vec<Vec<u8>> {
        let parts: [&[u8]; 7] = [b"SESSION", b"RUN", id.as_bytes(), seq, seq, b"INCR", b"n"];
        parts.iter().map(|p| p.to_vec()).collect()
    };
    let one = incr(b"1");
    let one: Vec<&[u8]> = one.iter().map(Vec::as_slice).collect();
    assert_eq!(c.call(&mut s, &one), Value::Integer(1));
    c.stopped.insert(leader);
    let two = incr(b"2");
    let two: Vec<&[u8]> = two.iter().map(Vec::as_slice).collect();
    c.send(&mut s, &two);
    let (reply, ticks) = c.reply(&mut s);
    assert_eq!(reply, Value::Integer(2), "after {ticks} ticks");
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
    // The resend of 2 (as a client would after a lost connection) answers the saved reply.
    assert_eq!(c.call(&mut s, &two), Value::Integer(2));
    // A read sent through the third node while the next leader is silent is served once
    // another one leads (the first, running again, or the third itself).
    let next = c.leader();
    c.stopped.remove(&leader);
    let third = (1..=3).find(|&i| i != leader && i != next).unwrap();
    let mut s2 = c.connect(third);
    assert_eq!(c.call(&mut s2, &[b"GET", b"n"]), Value::Bulk(b"2".to_vec()));
    c.stopped.insert(next);
    c.send(&mut s2, &[b"GET", b"n"]);
    let (reply, ticks) = c.reply(&mut s2);
    assert_eq!(reply, Value::Bulk(b"2".to_vec()), "after {ticks} ticks");
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
}
