//! MULTI/EXEC/WATCH on real `kvraftd` processes: a transaction through a follower is one log
//! entry, applied atomically on every replica; a WATCH made through one node is broken by a
//! write through another; a pipelined WATCH ... EXEC carries its watch; and optimistic
//! increments from several clients through different nodes lose no update.

mod harness;

use std::time::Duration;

use harness::{serial, wait_for, Cluster, Connection, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(30);

fn applied(c: &Cluster, id: u64) -> u64 {
    c.info(id).expect("INFO")["applied_index"].parse().unwrap()
}

/// The node ids other than `leader`.
fn followers(c: &Cluster, leader: u64) -> Vec<u64> {
    (1..=c.nodes.len() as u64)
        .filter(|&i| i != leader)
        .collect()
}

/// Every node applied `index` and they report one state hash.
fn replicas_agree(c: &Cluster, index: u64) {
    let ids: Vec<u64> = (1..=c.nodes.len() as u64).collect();
    c.wait_applied(&ids, index, LONG);
    wait_for(LONG, "equal state hashes", || {
        let hashes: Vec<String> = ids
            .iter()
            .map(|&id| c.info(id).map(|i| i["state_hash"].clone()))
            .collect::<Option<_>>()?;
        hashes.windows(2).all(|w| w[0] == w[1]).then_some(())
    });
}

fn ok(c: &mut Connection, args: &[&str]) {
    assert_eq!(c.call_str(args).unwrap(), Value::ok(), "{args:?}");
}

#[test]
fn a_transaction_through_a_follower_is_one_entry_applied_atomically_on_every_replica() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let f = followers(&c, leader)[0];
    let mut a = c.client(f).unwrap();
    ok(&mut a, &["SET", "s", "text"]);
    let before = applied(&c, leader);
    ok(&mut a, &["MULTI"]);
    for cmd in [
        &["SET", "a", "1"][..],
        &["INCR", "s"],
        &["INCRBY", "a", "41"],
        &["GET", "a"],
        &["MGET", "a", "s", "none"],
    ] {
        assert_eq!(
            a.call_str(cmd).unwrap(),
            Value::Simple("QUEUED".into()),
            "{cmd:?}"
        );
    }
    let want = Value::Array(vec![
        Value::ok(),
        Value::error("ERR value is not an integer or out of range"),
        Value::Integer(42),
        Value::bulk_str("42"),
        Value::Array(vec![
            Value::bulk_str("42"),
            Value::bulk_str("text"),
            Value::Nil,
        ]),
    ]);
    assert_eq!(a.call_str(&["EXEC"]).unwrap(), want);
    assert_eq!(
        applied(&c, leader),
        before + 1,
        "the transaction is one log entry"
    );
    replicas_agree(&c, before + 1);
    // A transaction that failed to queue applies nothing, through the leader too.
    let mut l = c.client(leader).unwrap();
    ok(&mut l, &["MULTI"]);
    l.call_str(&["SET", "never", "1"]).unwrap();
    assert!(l.call_str(&["GET"]).unwrap().is_error());
    match l.call_str(&["EXEC"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("EXECABORT"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.call_str(&["EXISTS", "never"]).unwrap(), Value::Integer(0));
    // The internal command EXEC becomes is checked like any input, through either node.
    for conn in [&mut a, &mut l] {
        for junk in [&b"x"[..], b"\x01\x20\xff\xff\xff\xff", b""] {
            match conn.call(&[b"KVRAFT.EXEC", junk]).unwrap() {
                Value::Error(e) => assert!(e.starts_with("ERR malformed transaction"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(l.call_str(&["PING"]).unwrap(), Value::Simple("PONG".into()));
}

#[test]
fn a_watch_through_one_node_is_broken_by_a_write_through_another() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let fs = followers(&c, leader);
    let mut a = c.client(fs[0]).unwrap();
    let mut b = c.client(fs[1]).unwrap();
    ok(&mut a, &["SET", "w", "1"]);
    ok(&mut a, &["WATCH", "w"]);
    ok(&mut b, &["SET", "w", "2"]);
    ok(&mut a, &["MULTI"]);
    a.call_str(&["SET", "w", "mine"]).unwrap();
    assert_eq!(a.call_str(&["EXEC"]).unwrap(), Value::NilArray);
    assert_eq!(a.call_str(&["GET", "w"]).unwrap(), Value::bulk_str("2"));
    // Unchanged since the WATCH (a read by another node does not count): EXEC runs.
    ok(&mut a, &["WATCH", "w"]);
    b.call_str(&["GET", "w"]).unwrap();
    ok(&mut a, &["MULTI"]);
    a.call_str(&["SET", "w", "mine"]).unwrap();
    assert_eq!(
        a.call_str(&["EXEC"]).unwrap(),
        Value::Array(vec![Value::ok()])
    );
    // A deletion through the leader breaks a watch on a key, and a pipelined WATCH ... EXEC
    // (sent in one write) carries its watch: the node reads EXEC only after WATCH's read.
    let mut l = c.client(leader).unwrap();
    ok(&mut a, &["WATCH", "w"]);
    assert_eq!(l.call_str(&["DEL", "w"]).unwrap(), Value::Integer(1));
    for cmd in [&["MULTI"][..], &["SET", "w", "late"], &["EXEC"]] {
        let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
        a.queue(&args);
    }
    a.flush().unwrap();
    assert_eq!(a.read_reply().unwrap(), Value::ok());
    assert_eq!(a.read_reply().unwrap(), Value::Simple("QUEUED".into()));
    assert_eq!(a.read_reply().unwrap(), Value::NilArray);
    for cmd in [
        &["WATCH", "w"][..],
        &["MULTI"],
        &["SET", "w", "piped"],
        &["EXEC"],
    ] {
        let args: Vec<&[u8]> = cmd.iter().map(|s| s.as_bytes()).collect();
        a.queue(&args);
    }
    a.flush().unwrap();
    let replies: Vec<Value> = (0..4).map(|_| a.read_reply().unwrap()).collect();
    assert_eq!(
        replies,
        vec![
            Value::ok(),
            Value::ok(),
            Value::Simple("QUEUED".into()),
            Value::Array(vec![Value::ok()])
        ]
    );
    // That EXEC consumed the watch (it was read before EXEC was): a later change of `w`
    // does not abort a transaction that watches nothing.
    ok(&mut b, &["SET", "w", "other"]);
    ok(&mut a, &["MULTI"]);
    a.call_str(&["SET", "z", "1"]).unwrap();
    assert_eq!(
        a.call_str(&["EXEC"]).unwrap(),
        Value::Array(vec![Value::ok()])
    );
    let index = applied(&c, leader);
    replicas_agree(&c, index);
}

/// Check-and-set increments (WATCH, GET, MULTI, SET, EXEC; again on a null array) from
/// clients on every node: a WATCH that missed a change would lose an update.
#[test]
fn optimistic_increments_through_every_node_lose_no_update() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    c.wait_leader(LONG);
    const PER_CLIENT: u64 = 25;
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.client).collect();
    let workers: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            std::thread::spawn(move || {
                let mut conn = harness::connect(addr).unwrap();
                let mut aborted = 0u64;
                for _ in 0..PER_CLIENT {
                    loop {
                        if increment(&mut conn) {
                            break;
                        }
                        aborted += 1;
                    }
                }
                aborted
            })
        })
        .collect();
    let aborted: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let mut l = c.client(c.wait_leader(LONG)).unwrap();
    let want = (PER_CLIENT * c.nodes.len() as u64).to_string();
    assert_eq!(
        l.call_str(&["GET", "counter"]).unwrap(),
        Value::bulk_str(&want),
        "{aborted} transactions aborted on the way"
    );
    eprintln!("{want} increments, {aborted} EXECs aborted by a concurrent change");
}

/// One check-and-set increment of `counter`; false if EXEC aborted (or the cluster said to
/// try again before anything was queued).
fn increment(c: &mut Connection) -> bool {
    if c.call_str(&["WATCH", "counter"]).unwrap() != Value::ok() {
        return false;
    }
    let n: u64 = match c.call_str(&["GET", "counter"]).unwrap() {
        Value::Nil => 0,
        Value::Bulk(b) => String::from_utf8(b).unwrap().parse().unwrap(),
        _ => {
            c.call_str(&["UNWATCH"]).unwrap();
            return false;
        }
    };
    ok(c, &["MULTI"]);
    let next = (n + 1).to_string();
    c.call_str(&["SET", "counter", &next]).unwrap();
    match c.call_str(&["EXEC"]).unwrap() {
        Value::Array(replies) => {
            assert_eq!(replies, vec![Value::ok()]);
            true
        }
        Value::NilArray => false,
        other => panic!("EXEC gave {other:?}"),
    }
}
