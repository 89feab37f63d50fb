//! Real-process tests: three `kvraftd` on 127.0.0.1, driven through the client port.
//! Every wait is a poll with a deadline; failures dump the nodes' logs.

mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{get, put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(20);

fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

#[test]
fn three_nodes_elect_exactly_one_leader_and_a_write_through_any_node_is_readable_through_every_node(
) {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    // Exactly one node says leader, and the others agree on who it is.
    let infos: Vec<_> = (1..=3)
        .map(|id| wait_for(LONG, "INFO", || c.info(id)))
        .collect();
    let leaders = infos.iter().filter(|i| i["role"] == "leader").count();
    assert_eq!(
        leaders,
        1,
        "roles: {:?}",
        infos.iter().map(|i| i["role"].clone()).collect::<Vec<_>>()
    );
    wait_for(LONG, "one connection per pair of members", || {
        (1..=3)
            .all(|id| c.info(id).is_some_and(|i| i["peer_connections"] == "2"))
            .then_some(())
    });
    wait_for(LONG, "followers to learn the leader", || {
        (1..=3)
            .all(|id| {
                c.info(id)
                    .is_some_and(|i| i["leader_id"] == leader.to_string())
            })
            .then_some(())
    });
    for via in 1..=3u64 {
        let key = format!("key-via-{via}");
        put_retry(&c, via, &key, &format!("value-{via}"), LONG);
    }
    for via in 1..=3u64 {
        for from in 1..=3u64 {
            let key = format!("key-via-{from}");
            assert_eq!(
                get(&c, via, &key),
                Some(bulk(&format!("value-{from}"))),
                "GET {key} via node {via}"
            );
        }
    }
    // Every replica applies the same entries to the same state.
    let mut cl = c.client(leader).unwrap();
    let applied: u64 = harness::parse_info(&cl.call_str(&["INFO", "raft"]).unwrap())
        ["applied_index"]
        .parse()
        .unwrap();
    c.wait_applied(&[1, 2, 3], applied, LONG);
    let hashes: Vec<String> = (1..=3)
        .map(|id| c.info(id).unwrap()["state_hash"].clone())
        .collect();
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "state hashes differ: {hashes:?}"
    );
}

#[test]
fn killing_the_leader_elects_a_new_one_and_the_old_leader_catches_up_on_restart() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let old = c.wait_leader(LONG);
    for i in 0..20 {
        put_retry(&c, old, &format!("before-{i}"), "x", LONG);
    }
    let killed_at = Instant::now();
    c.kill(old);
    let new = wait_for(LONG, "a new leader", || c.leader().filter(|&l| l != old));
    let failover = killed_at.elapsed();
    println!("failover: new leader node {new} {failover:?} after kill -9 of node {old}");
    for i in 0..20 {
        put_retry(&c, new, &format!("after-{i}"), "y", LONG);
    }
    c.spawn(old);
    // One connection per pair of members, in both directions: the restarted node's new
    // connections replace the dead ones.
    wait_for(LONG, "one peer connection per pair again", || {
        (1..=3)
            .all(|id| c.info(id).is_some_and(|i| i["peer_connections"] == "2"))
            .then_some(())
    });
    let mut cl = c.client(new).unwrap();
    let applied: u64 = harness::parse_info(&cl.call_str(&["INFO", "raft"]).unwrap())
        ["applied_index"]
        .parse()
        .unwrap();
    c.wait_applied(&[old], applied, LONG);
    for i in 0..20 {
        assert_eq!(get(&c, old, &format!("before-{i}")), Some(bulk("x")));
        assert_eq!(get(&c, old, &format!("after-{i}")), Some(bulk("y")));
    }
    let hashes: Vec<String> = [old, new]
        .iter()
        .map(|&id| c.info(id).unwrap()["state_hash"].clone())
        .collect();
    assert_eq!(
        hashes[0], hashes[1],
        "the restarted node's state differs from the leader's"
    );
}

#[test]
fn killing_every_node_during_a_stream_of_acknowledged_writes_loses_none_of_them() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = c.node(leader).client;
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut cl) = harness::connect(addr) else {
                    // The node is down: pace the retries until it is back or the test stops.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                loop {
                    let key = format!("k{i}");
                    match cl.call_str(&["SET", &key, &format!("v{i}")]) {
                        Ok(Value::Simple(s)) if s == "OK" => acked.lock().unwrap().push(i),
                        _ => break,
                    }
                    i += 1;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                i += 1;
            }
        })
    };
    wait_for(LONG, "200 acknowledged writes", || {
        (acked.lock().unwrap().len() >= 200).then_some(())
    });
    for id in 1..=3 {
        c.kill(id);
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    for id in 1..=3 {
        c.spawn(id);
    }
    let leader = c.wait_leader(LONG);
    for &i in &acked {
        let v = wait_for(LONG, "a read after restart", || {
            get(&c, leader, &format!("k{i}"))
        });
        assert_eq!(
            v,
            bulk(&format!("v{i}")),
            "acknowledged write k{i} lost after a full-cluster crash"
        );
    }
    println!(
        "{} acknowledged writes all survived kill -9 of every node",
        acked.len()
    );
}

#[test]
fn a_stopped_minority_does_not_stop_progress_and_a_stopped_majority_stops_writes_until_it_returns()
{
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    c.signal(followers[0], libc::SIGSTOP);
    for i in 0..10 {
        put_retry(&c, leader, &format!("minority-{i}"), "1", LONG);
    }
    c.signal(followers[1], libc::SIGSTOP);
    // The leader alone cannot commit: the write is refused with an error, not acknowledged.
    let mut cl = c.client(leader).unwrap();
    let reply = cl
        .call_str(&["SET", "majority-down", "1"])
        .expect("a reply");
    match &reply {
        Value::Error(e) => println!("with a majority stopped, SET answered: {e}"),
        other => panic!("a write was acknowledged without a majority: {other:?}"),
    }
    c.signal(followers[0], libc::SIGCONT);
    c.signal(followers[1], libc::SIGCONT);
    put_retry(&c, leader, "majority-back", "1", LONG);
    let l = c.wait_leader(LONG);
    assert_eq!(get(&c, l, "majority-back"), Some(bulk("1")));
    assert_eq!(get(&c, l, "minority-9"), Some(bulk("1")));
}

#[test]
fn garbage_on_the_client_and_peer_ports_leaves_the_daemon_serving_everyone_else() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let mut prng = kvraft::prng::Prng::new(7);
    // The client port through the client's raw sender; the peer port speaks frames, not RESP.
    let garbage_client = |addr, payload: &[u8]| {
        if let Ok(mut s) = harness::connect(addr) {
            let _ = s.send_raw(payload);
        }
    };
    let garbage = |addr, payload: &[u8]| {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.write_all(payload);
        }
    };
    for id in 1..=3u64 {
        let n = c.node(id);
        let (client, peer) = (n.client, n.peer);
        let mut random = vec![0u8; 4096];
        prng.fill(&mut random);
        for payload in [
            &random[..],
            b"*99999999999\r\n",
            b"*1\r\n$4294967296\r\n",
            b"*-5\r\n",
            b"*2\r\n$3\r\nSET\r\n$1\r\n",
            b"$\r\n\r\n\r\n+++",
        ] {
            garbage_client(client, payload);
            garbage(peer, payload);
        }
        // A frame header claiming 4 GiB, and half a frame.
        garbage(peer, &[0xff, 0xff, 0xff, 0xff, 1]);
        garbage(peer, &[0, 0, 0, 40, 1, 0x4b, 0x56]);
    }
    for i in 0..10 {
        put_retry(&c, leader, &format!("after-garbage-{i}"), "ok", LONG);
    }
    for id in 1..=3 {
        assert_eq!(
            get(&c, id, "after-garbage-9"),
            Some(bulk("ok")),
            "node {id} stopped serving"
        );
        let n = &mut c.nodes[(id - 1) as usize];
        let status = n.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "node {id} exited after garbage: {status:?}"
        );
    }
}

#[test]
fn redis_cli_can_set_and_get_against_the_cluster() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let port = c.node(follower).client.port().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools; `make setup` installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_for(LONG, "redis-cli SET to succeed", || {
        (run(&["SET", "greeting", "hello world"]) == "OK").then_some(())
    });
    assert_eq!(run(&["GET", "greeting"]), "hello world");
    assert_eq!(run(&["INCR", "counter"]), "1");
    assert_eq!(run(&["INCR", "counter"]), "2");
    assert_eq!(run(&["EXISTS", "greeting", "nope"]), "1");
    assert_eq!(run(&["PING"]), "PONG");
}

#[test]
fn pipelined_commands_on_one_connection_are_answered_in_order() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    put_retry(&c, follower, "warm", "up", LONG);
    let mut cl = c.client(follower).unwrap();
    // Writes, reads and node-local commands interleaved: replies must come back in order.
    for i in 0..200 {
        cl.send(&[
            b"SET",
            format!("p{i}").as_bytes(),
            format!("{i}").as_bytes(),
        ])
        .unwrap();
        cl.send(&[b"GET", format!("p{i}").as_bytes()]).unwrap();
        cl.send(&[b"PING"]).unwrap();
    }
    for i in 0..200 {
        assert_eq!(cl.read_reply().unwrap(), Value::ok(), "SET p{i}");
        assert_eq!(cl.read_reply().unwrap(), bulk(&i.to_string()), "GET p{i}");
        assert_eq!(
            cl.read_reply().unwrap(),
            Value::Simple("PONG".into()),
            "PING {i}"
        );
    }
}

#[test]
fn a_bad_config_is_refused_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(
        &conf,
        "node.1 = peer=127.0.0.1:1 client=127.0.0.1:2\nelecton_timeout_ms = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvraftd"))
        .args(["--config", conf.to_str().unwrap(), "--id", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.conf:2"),
        "stderr does not name the line: {err}"
    );
    assert!(
        err.contains("electon_timeout_ms"),
        "stderr does not name the key: {err}"
    );
}

#[test]
fn an_unusable_data_directory_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let conf = dir.path().join("c.conf");
    std::fs::write(
        &conf,
        format!(
            "data_dir = {}/sub\nnode.1 = peer=127.0.0.1:1 client=127.0.0.1:2\n",
            file.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kvraftd"))
        .args(["--config", conf.to_str().unwrap(), "--id", "1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "started on an unusable data directory"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("data directory"), "unclear error: {err}");
}

#[test]
fn quit_or_a_protocol_error_after_pipelined_writes_answers_every_write_before_closing() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    put_retry(&c, follower, "warm", "up", LONG);
    for (tail, last) in [
        (&b"*1\r\n$4\r\nQUIT\r\n"[..], Value::ok()),
        (
            &b"*1\r\n$-7\r\n"[..],
            Value::error("ERR Protocol error: invalid bulk length"),
        ),
    ] {
        let mut cl = c.client(follower).unwrap();
        for i in 0..50 {
            cl.send(&[b"SET", format!("q{i}").as_bytes(), b"v"])
                .unwrap();
        }
        cl.send_raw(tail).unwrap();
        for i in 0..50 {
            assert_eq!(
                cl.read_reply().unwrap(),
                Value::ok(),
                "SET q{i} before {last:?}"
            );
        }
        assert_eq!(cl.read_reply().unwrap(), last);
        let eof = cl.read_reply();
        assert!(
            eof.is_err(),
            "the connection stayed open after {last:?}: {eof:?}"
        );
    }
}

#[test]
fn a_pipeline_longer_than_the_pending_limit_is_paused_and_resumed_and_fully_answered() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    put_retry(&c, leader, "warm", "up", LONG);
    let n = 5 * kvraft::limits::CLIENT_PENDING_MAX;
    let mut out = Vec::new();
    for i in 0..n {
        kvraft::client::resp::encode_command(
            &[b"SET", format!("deep{i}").as_bytes(), b"v"],
            &mut out,
        );
    }
    let mut cl = c.client(leader).unwrap();
    cl.send_raw(&out).unwrap();
    for i in 0..n {
        assert_eq!(cl.read_reply().unwrap(), Value::ok(), "SET deep{i}");
    }
    assert_eq!(get(&c, leader, &format!("deep{}", n - 1)), Some(bulk("v")));
}
