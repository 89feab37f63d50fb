//! Exactly-once sessions and prompt answers across leader changes, on real `kvraftd`
//! processes: `kvctl incr` in a loop while the leader is killed (-9) and restarted counts
//! exactly once per call; a plain client writing through a follower gets a reply (`OK` or
//! `-UNKNOWN`) within two seconds of the leader going silent (SIGSTOP); a smart client's
//! `SESSION RUN` resent after the leader went silent answers the saved reply.

mod harness;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{serial, wait_for, Cluster, Options};
use kvraft::client::Value;

/// `kvctl incr` calls made by the loop.
const INCR_CALLS: usize = 60;

fn endpoints(c: &Cluster) -> String {
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.client.to_string()).collect();
    addrs.join(",")
}

/// One `kvctl incr KEY` against every member; its exit code and output.
fn kvctl_incr(endpoints: &str, key: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["-e", endpoints, "-t", "60", "incr", key])
        .output()
        .expect("run kvctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// The value of `key` read through the leader, as an integer.
fn counter(c: &Cluster, key: &str) -> i64 {
    let leader = c.wait_leader(Duration::from_secs(30));
    let mut cl = c.client(leader).expect("connect to the leader");
    match cl.call_str(&["GET", key]).expect("GET") {
        Value::Bulk(b) => String::from_utf8_lossy(&b).parse().expect("an integer"),
        other => panic!("GET {key}: {other:?}"),
    }
}

#[test]
fn kvctl_incr_counts_exactly_once_while_the_leader_is_killed_and_restarted() {
    let _guard = serial();
    let mut c = Cluster::start(Options::default());
    c.wait_leader(Duration::from_secs(30));
    let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let eps = endpoints(&c);
    let calls = {
        let (started, done) = (started.clone(), done.clone());
        thread::spawn(move || {
            for i in 0..INCR_CALLS {
                started.fetch_add(1, Ordering::SeqCst);
                let (code, text) = kvctl_incr(&eps, "counter");
                assert_eq!(code, Some(0), "call {i}: {text}");
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // Three times, once the loop made progress: stop the leader, wait until a call is in
    // flight (started and not done: it cannot finish while the leader is stopped and no
    // other is elected), then kill the leader (-9) and restart it once the loop went on.
    for round in 1..=3 {
        let (s, d) = (started.clone(), done.clone());
        let progress = move |n: usize| (d.load(Ordering::SeqCst) >= n).then_some(());
        wait_for(Duration::from_secs(120), "kvctl calls", || {
            progress(round * 15)
        });
        let leader = c.wait_leader(Duration::from_secs(30));
        c.signal(leader, libc::SIGSTOP);
        let d = done.clone();
        wait_for(Duration::from_secs(60), "a call in flight", || {
            (s.load(Ordering::SeqCst) > d.load(Ordering::SeqCst)).then_some(())
        });
        c.kill(leader);
        wait_for(Duration::from_secs(120), "calls", || {
            progress(round * 15 + 5)
        });
        c.spawn(leader);
    }
    calls.join().expect("every kvctl incr succeeded");
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
    let leader = c.wait_leader(Duration::from_secs(30));
    let applied: u64 = c.info(leader).expect("INFO")["applied_index"]
        .parse()
        .unwrap();
    c.wait_applied(&ids, applied, Duration::from_secs(60));
    assert_eq!(counter(&c, "counter"), INCR_CALLS as i64);
}

#[test]
fn a_plain_write_through_a_follower_is_answered_within_two_seconds_of_the_leader_stopping() {
    let _guard = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = c.nodes.iter().map(|n| n.id).find(|&i| i != leader).unwrap();
    let mut cl = c.client(follower).expect("connect to a follower");
    // The follower knows the leader: a write through it goes there and back.
    assert_eq!(cl.call_str(&["SET", "before", "1"]).unwrap(), Value::ok());
    c.signal(leader, libc::SIGSTOP);
    let stopped_at = Instant::now();
    cl.set_io_timeout(Duration::from_secs(30));
    let reply = cl.call_str(&["SET", "k", "v"]).expect("a reply");
    let took = stopped_at.elapsed();
    c.signal(leader, libc::SIGCONT);
    let ok = match &reply {
        Value::Simple(s) => s == "OK",
        Value::Error(e) => {
            e.starts_with("UNKNOWN") && e.contains("may or may not have been applied")
        }
        _ => false,
    };
    println!("a write through a follower answered {took:?} after the leader stopped: {reply:?}");
    assert!(ok, "{reply:?}");
    assert!(
        took < Duration::from_secs(2),
        "answered {took:?} after the leader stopped: {reply:?}"
    );
}

#[test]
fn a_session_write_resent_after_the_leader_stops_answers_its_saved_reply() {
    let _guard = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = c.nodes.iter().map(|n| n.id).find(|&i| i != leader).unwrap();
    let mut cl = c.client(follower).expect("connect to a follower");
    let Value::Integer(id) = cl.call_str(&["SESSION", "OPEN"]).unwrap() else {
        panic!("SESSION OPEN gives an id")
    };
    let id = id.to_string();
    let run = |cl: &mut harness::Connection, seq: &str| {
        cl.call_str(&["SESSION", "RUN", &id, seq, seq, "INCR", "n"])
            .expect("a reply")
    };
    assert_eq!(run(&mut cl, "1"), Value::Integer(1));
    assert_eq!(
        run(&mut cl, "1"),
        Value::Integer(1),
        "a resend applies once"
    );
    // Through the leader going silent: the session write is re-forwarded to the next leader
    // (or retried by us on an error reply) and still counts once.
    c.signal(leader, libc::SIGSTOP);
    cl.set_io_timeout(Duration::from_secs(30));
    let reply = wait_for(Duration::from_secs(30), "seq 2 answered", || {
        match run(&mut cl, "2") {
            Value::Integer(n) => Some(n),
            _ => None,
        }
    });
    assert_eq!(reply, 2);
    assert_eq!(run(&mut cl, "2"), Value::Integer(2));
    c.signal(leader, libc::SIGCONT);
    // Below the lowest outstanding, a resend is refused, never applied again.
    let Value::Error(e) = run(&mut cl, "1") else {
        panic!("a stale resend must be refused")
    };
    assert!(e.starts_with("SESSIONEXPIRED"), "{e}");
    let Value::Error(e) = cl
        .call_str(&["SESSION", "RUN", "999999", "1", "1", "INCR", "n"])
        .unwrap()
    else {
        panic!("an unknown session must be refused")
    };
    assert!(e.starts_with("SESSIONEXPIRED"), "{e}");
    assert_eq!(counter(&c, "n"), 2);
}
