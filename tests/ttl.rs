//! Real-process tests of deterministic TTLs: three `kvraftd` on 127.0.0.1. Expiry is decided
//! by the leader's clock, stamped in the log: every node answers alike, and a leader change
//! neither resets nor shortens a TTL.
//!
//! Time bounds are one-sided and sound on a loaded machine: the leader stamps a write no
//! earlier than the wall time before it was sent, so a reply received before
//! `sent + ttl` must still show the key; a read sent after `acknowledged + ttl` must not.

mod harness;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{serial, wait_for, Cluster, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(20);

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64
}

/// Send `args` through `via` until it answers something other than a retryable error.
fn call_retry(c: &Cluster, via: u64, args: &[&str]) -> Value {
    wait_for(LONG, &format!("{args:?} through node {via}"), || {
        let mut cl = c.client(via).ok()?;
        match cl.call_str(args).ok()? {
            Value::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => None,
            v => Some(v),
        }
    })
}

fn int(v: Value) -> i64 {
    match v {
        Value::Integer(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// Every node applied the same index and reports the same state hash.
fn wait_replicas_equal(c: &Cluster, ids: &[u64]) {
    wait_for(LONG, "equal applied indexes and state hashes", || {
        let infos: Vec<_> = ids.iter().map(|&id| c.info(id)).collect::<Option<_>>()?;
        let first = &infos[0];
        infos
            .iter()
            .all(|i| {
                i["applied_index"] == first["applied_index"]
                    && i["state_hash"] == first["state_hash"]
            })
            .then_some(())
    });
}

#[test]
fn a_key_set_with_px_reads_as_its_value_before_the_deadline_and_nil_after_through_every_node() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let ttl_ms = 4000;
    let sent = wall_ms();
    let ok = call_retry(&c, follower, &["SET", "k", "v", "PX", &ttl_ms.to_string()]);
    assert_eq!(ok, Value::ok());
    let acked = wall_ms();
    let mut checked_before = 0;
    for via in 1..=3 {
        let mut cl = c.client(via).unwrap();
        let got = cl.call_str(&["GET", "k"]).unwrap();
        let pttl = cl.call_str(&["PTTL", "k"]).unwrap();
        if wall_ms() < sent + ttl_ms {
            checked_before += 1;
            assert_eq!(
                got,
                Value::bulk_str("v"),
                "GET through node {via} before the deadline"
            );
            let left = int(pttl);
            assert!(
                left > 0 && left <= ttl_ms as i64,
                "PTTL {left} through node {via}"
            );
        }
    }
    assert!(
        checked_before > 0,
        "the machine was too slow to check before the deadline"
    );
    // Wait for the deadline itself (time passing is the condition here).
    let deadline = acked + ttl_ms + 1;
    while wall_ms() <= deadline {
        std::thread::sleep(Duration::from_millis(
            (deadline + 1).saturating_sub(wall_ms()),
        ));
    }
    for via in 1..=3 {
        let mut cl = c.client(via).unwrap();
        assert_eq!(
            cl.call_str(&["GET", "k"]).unwrap(),
            Value::Nil,
            "GET through node {via}"
        );
        assert_eq!(cl.call_str(&["EXISTS", "k"]).unwrap(), Value::Integer(0));
        assert_eq!(cl.call_str(&["PTTL", "k"]).unwrap(), Value::Integer(-2));
    }
    // The leader reclaims it through the log: every node deletes it, and all agree.
    wait_for(
        LONG,
        "the expired key to be reclaimed on every node",
        || {
            (1..=3)
                .all(|id| {
                    c.info(id).is_some_and(|i| {
                        i["expired_keys"] == "1"
                            && i["expires"] == "0"
                            && i["expiry_backlog"] == "0"
                    })
                })
                .then_some(())
        },
    );
    wait_replicas_equal(&c, &[1, 2, 3]);
    let info = c.info(leader).unwrap();
    let skew: i64 = info["clock_skew_ms"]
        .parse()
        .expect("clock_skew_ms is an integer");
    assert!(skew.abs() < 60_000, "clock skew {skew} ms on one machine");
}

#[test]
fn a_leader_change_neither_resets_nor_shortens_a_ttl() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    assert_eq!(
        call_retry(&c, leader, &["SET", "a", "1", "PX", "600000"]),
        Value::ok()
    );
    assert_eq!(call_retry(&c, leader, &["SET", "b", "2"]), Value::ok());
    assert_eq!(
        call_retry(&c, leader, &["EXPIRE", "b", "900"]),
        Value::Integer(1)
    );
    let a_at = int(call_retry(&c, leader, &["PEXPIRETIME", "a"]));
    let b_at = int(call_retry(&c, leader, &["PEXPIRETIME", "b"]));
    assert!(a_at > 0 && b_at > a_at, "{a_at} {b_at}");
    // Every node holds the same absolute expiries before the old leader goes.
    wait_replicas_equal(&c, &[1, 2, 3]);
    c.kill(leader);
    let new = wait_for(LONG, "a new leader", || c.leader().filter(|&l| l != leader));
    for via in (1..=3).filter(|&id| id != leader) {
        assert_eq!(
            int(call_retry(&c, via, &["PEXPIRETIME", "a"])),
            a_at,
            "via {via}"
        );
        assert_eq!(
            int(call_retry(&c, via, &["PEXPIRETIME", "b"])),
            b_at,
            "via {via}"
        );
        // The leader's now is at least our wall time before asking: the TTL kept running.
        let before = wall_ms() as i64;
        let left = int(call_retry(&c, via, &["PTTL", "a"]));
        assert!(left > 0 && left <= a_at - before, "PTTL {left} via {via}");
    }
    // The old leader comes back, catches up, and agrees.
    c.spawn(leader);
    assert_eq!(call_retry(&c, new, &["SET", "after", "x"]), Value::ok());
    wait_replicas_equal(&c, &[1, 2, 3]);
    assert_eq!(int(call_retry(&c, leader, &["PEXPIRETIME", "a"])), a_at);
}
