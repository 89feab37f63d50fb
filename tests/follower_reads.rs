//! Follower reads (issue 16) on real processes: a follower serves a GET itself, at a read
//! index the leader confirmed, and still reads what was written through another node.
//! Every wait is a poll with a deadline.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::{put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::{resp, Value};

const LONG: Duration = Duration::from_secs(20);

fn stat(c: &Cluster, id: u64, key: &str) -> u64 {
    let info = wait_for(LONG, "INFO", || c.info(id));
    info.get(key)
        .unwrap_or_else(|| panic!("INFO of node {id} lacks {key}"))
        .parse()
        .expect("a number")
}

/// Read-your-writes across nodes: a SET acknowledged by the leader is seen by a GET sent to
/// each follower right after, and INFO shows the followers served those GETs themselves
/// (`reads_served_locally`) on read indexes the leader confirmed (`read_index_answered`).
#[test]
fn a_get_on_a_follower_after_a_set_on_the_leader_sees_it_and_is_served_locally() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    // Followers know the leader (else they answer CLUSTERDOWN).
    wait_for(LONG, "followers to learn the leader", || {
        followers
            .iter()
            .all(|&id| {
                c.info(id)
                    .is_some_and(|i| i["leader_id"] == leader.to_string())
            })
            .then_some(())
    });
    let answered_before = stat(&c, leader, "read_index_answered");
    for round in 0..20 {
        let value = format!("v{round}");
        put_retry(&c, leader, "ryw", &value, LONG);
        for &f in &followers {
            let mut cl = c.client(f).expect("follower reachable");
            let got = cl.call_str(&["GET", "ryw"]).expect("a reply");
            assert_eq!(
                got,
                Value::Bulk(value.clone().into_bytes()),
                "GET ryw on follower {f} after SET ryw {value} was acknowledged by leader {leader}"
            );
        }
    }
    for &f in &followers {
        let served = stat(&c, f, "reads_served_locally");
        assert!(served >= 20, "follower {f} served {served} reads itself");
        assert!(stat(&c, f, "read_index_asked") >= 1, "follower {f} asked");
    }
    assert!(stat(&c, leader, "read_index_answered") > answered_before);
    assert_eq!(stat(&c, leader, "reads_served_locally"), 0);
}

/// A pipeline on a follower reads its own forwarded write: `SET` then `GET` of the same key
/// in one write, replies in order, the GET showing the SET's value.
#[test]
fn a_pipelined_get_on_a_follower_reads_the_set_before_it() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let f = (1..=3).find(|&i| i != leader).expect("a follower");
    put_retry(&c, f, "warm", "up", LONG);
    let addr = c.node(f).client;
    for round in 0..20 {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let value = format!("p{round}");
        let mut out = Vec::new();
        resp::encode_command(&[b"SET", b"pipe", value.as_bytes()], &mut out);
        resp::encode_command(&[b"GET", b"pipe"], &mut out);
        s.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        while replies.len() < 2 {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).expect("a reply within the timeout");
            assert!(n > 0, "the follower closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            while let Ok(Some((v, used))) = resp::parse_value(&buf) {
                buf.drain(..used);
                replies.push(v);
            }
        }
        assert_eq!(replies[0], Value::ok(), "SET through follower {f}");
        assert_eq!(replies[1], Value::Bulk(value.into_bytes()), "round {round}");
    }
    assert!(stat(&c, f, "reads_served_locally") >= 20);
}
