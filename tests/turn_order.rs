//! The order of the writes inside one turn of a real node (`Node<KvStore, SimDisk, SimNet>`,
//! as in `sim.rs`), on a small cluster with no faults: what `node/driver.rs` promises about
//! which bytes leave first, seen from the network.

mod support;

use kvraft::client::Value;
use support::story::{Story, TICKS_MAX};

/// The leader's turn in which a quorum's acks arrive persists nothing: it answers the client
/// before it writes the appends that carry the new commit index to the followers (each a
/// loopback send that runs the receiver's TCP input inline, ~10 µs apiece on the path of the
/// reply). Before: both appends were written first, then the reply.
#[test]
fn the_leader_answers_a_committed_write_before_telling_the_followers_its_commit_index() {
    let mut story = Story::new(3);
    let leader = story.leader();
    let world = story.world.clone();
    let mut client = story.connect(leader);
    assert_eq!(
        story.call(&mut client, &[b"SET", b"k0", b"v0"]),
        Value::ok()
    );
    story.send(&mut client, &[b"SET", b"k1", b"v1"]);
    // The leader's writes in the turn in which it wrote to a client.
    let mut answering_turn: Option<Vec<(u64, bool, usize)>> = None;
    for _ in 0..TICKS_MAX {
        story.step_with(|id, node, now, ready| {
            if id != leader {
                node.turn(now, ready).expect("no node stops");
                return;
            }
            world.borrow_mut().write_log = Some(Vec::new());
            node.turn(now, ready).expect("no node stops");
            let writes = world.borrow_mut().write_log.take().unwrap_or_default();
            if writes.iter().any(|&(_, peer, _)| !peer) {
                answering_turn = Some(writes);
            }
        });
        if answering_turn.is_some() {
            break;
        }
    }
    let writes = answering_turn.expect("the leader answered the SET");
    let first_peer_write = writes.iter().position(|&(_, peer, _)| peer);
    assert!(
        first_peer_write.is_some(),
        "the answering turn tells no follower the commit index (the story lost its point): \
         {writes:?}"
    );
    assert!(
        !writes[0].1,
        "the leader wrote to its peers before answering the client: {writes:?}"
    );
    assert_eq!(
        story.reply(&mut client).0,
        Value::ok(),
        "the second SET's answer"
    );
}
