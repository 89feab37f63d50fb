//! Follower reads (issue 16) on a small simulated cluster of real nodes (`support::story`):
//! a follower cut off from the leader never answers a read from its own, stale state.

mod support;

use kvraft::client::Value;
use kvraft::raft::Role;
use support::story::Story;

/// Follower F holds `k = old`, applied. F is cut off from both others; leadership moves from
/// L to W (TRANSFER), and W commits `k = new`. A GET sent to F right after the cut (F still
/// believes L leads, and the value it holds is `old`) and another once F has noticed it lost
/// the leader must never be answered `old`: F serves a read only at an index a leader
/// confirmed, and no leader can confirm one to it. Each is answered an error the client
/// retries (the read's deadline, or no leader); once the network heals, F reads `new`.
#[test]
fn a_follower_cut_off_from_the_leader_never_answers_the_old_value() {
    let mut c = Story::new(3);
    let l = c.leader();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    let (f, w) = (others[0], others[1]);
    let mut to_l = c.connect(l);
    assert_eq!(c.call(&mut to_l, &[b"SET", b"k", b"old"]), Value::ok());
    let mut to_f = c.connect(f);
    assert_eq!(
        c.call(&mut to_f, &[b"GET", b"k"]),
        Value::Bulk(b"old".to_vec()),
        "F serves reads before the cut"
    );
    for other in [l, w] {
        c.block(f, other, true);
        c.block(other, f, true);
    }
    // Asked at once, while F still takes L for the leader.
    c.send(&mut to_f, &[b"GET", b"k"]);
    let t = w.to_string();
    assert_eq!(c.call(&mut to_l, &[b"TRANSFER", t.as_bytes()]), Value::ok());
    for _ in 0..300 {
        if c.nodes[&w].raft().role() == Role::Leader {
            break;
        }
        c.step();
    }
    assert_eq!(
        c.nodes[&w].raft().role(),
        Role::Leader,
        "W leads after TRANSFER"
    );
    let mut to_w = c.connect(w);
    assert_eq!(c.call(&mut to_w, &[b"SET", b"k", b"new"]), Value::ok());
    let first = c.reply_within(&mut to_f, 2_000);
    match &first {
        Some(Value::Error(e)) => assert!(e.starts_with("TRYAGAIN"), "{e}"),
        other => panic!("F, cut off, answered the GET sent at the cut with {other:?}"),
    }
    // Asked again, F long cut off (it knows no leader, or still the old one).
    let second = c.call(&mut to_f, &[b"GET", b"k"]);
    assert!(
        matches!(&second, Value::Error(_)),
        "F, cut off, answered a later GET with {second:?}"
    );
    for other in [l, w] {
        c.block(f, other, false);
        c.block(other, f, false);
    }
    let mut healed = None;
    for _ in 0..50 {
        match c.call(&mut to_f, &[b"GET", b"k"]) {
            Value::Error(_) => {
                for _ in 0..20 {
                    c.step();
                }
            }
            v => {
                healed = Some(v);
                break;
            }
        }
    }
    assert_eq!(
        healed,
        Some(Value::Bulk(b"new".to_vec())),
        "F reads the new value once healed"
    );
}
