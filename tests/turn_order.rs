//! The order of the writes inside one turn of a real node (`Node<KvStore, SimDisk, SimNet>`,
//! as in `sim.rs`), on a small cluster with no faults: what `node/driver.rs` promises about
//! which bytes leave first, seen from the network.

mod support;

use kvraft::client::Value;
use kvraft::raft::LogIndex;
use support::story::{Story, TICKS_MAX};

/// The leader's turn in which a quorum's acks arrive persists nothing and answers the client.
/// It writes nothing to the followers: the new commit index rides on the next write's appends
/// (`raft/replication.rs`, "Telling followers the commit index"). Before: it wrote an append
/// to each follower that carried only the commit index (after the reply, since the driver's
/// step 0), and each follower acknowledged it: at one client, one more send, wake-up and
/// receive per follower per write on each side.
#[test]
fn the_leader_answers_a_committed_write_and_leaves_its_commit_index_to_the_next_append() {
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
    assert!(
        writes.iter().all(|&(_, peer, _)| !peer),
        "the answering turn wrote to the leader's peers (an append carrying only the commit \
         index): {writes:?}"
    );
    assert_eq!(
        story.reply(&mut client).0,
        Value::ok(),
        "the second SET's answer"
    );
    let k1 = story.nodes[&leader].raft().commit();
    let followers: Vec<u64> = story
        .nodes
        .keys()
        .copied()
        .filter(|&i| i != leader)
        .collect();
    let lagging = |story: &Story| {
        followers
            .iter()
            .filter(|f| story.nodes[f].raft().commit() < k1)
            .count()
    };
    assert_eq!(
        lagging(&story),
        followers.len(),
        "a follower learned the commit index {k1} with no message carrying it"
    );
    // The next write's appends carry it: the followers have it once they hold that write.
    story.send(&mut client, &[b"SET", b"k2", b"v2"]);
    for _ in 0..TICKS_MAX {
        story.step();
        let holds = |f: &u64| story.nodes[f].raft().last_id().index > k1;
        if followers.iter().all(holds) {
            break;
        }
    }
    assert_eq!(
        lagging(&story),
        0,
        "the followers hold the next write but not the commit index {k1} its appends carried"
    );
    assert!(k1 > LogIndex(0));
    assert_eq!(story.reply(&mut client).0, Value::ok(), "the third SET");
}
