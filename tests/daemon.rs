//! The daemon's behaviour at its edges, on real processes: clean shutdown on SIGTERM, the
//! client connection limit, the output cap for a client that never reads, a peer of another
//! cluster being refused, and kvctl against a real cluster.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{get, put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::Value;
use kvraft::raft::NodeId;
use kvraft::wire::{self, Frame};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn sigterm_stops_a_node_with_exit_status_zero_and_its_writes_survive_the_restart() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    for i in 0..20 {
        put_retry(&c, leader, &format!("term-{i}"), "kept", LONG);
    }
    c.signal(leader, libc::SIGTERM);
    let status = wait_for(LONG, "the node to exit", || {
        c.nodes[(leader - 1) as usize]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
    });
    assert!(status.success(), "SIGTERM exit status: {status:?}");
    c.nodes[(leader - 1) as usize].child = None;
    let log = std::fs::read_to_string(c.log_path(leader)).unwrap();
    assert!(log.contains("stopped"), "no shutdown line in the log");
    c.spawn(leader);
    let l = c.wait_leader(LONG);
    let applied: u64 = c.info(l).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[leader], applied, LONG);
    assert_eq!(
        get(&c, leader, "term-19"),
        Some(Value::Bulk(b"kept".to_vec()))
    );
}

#[test]
fn connections_beyond_max_clients_are_refused_with_an_error_and_the_rest_keep_working() {
    let _g = serial();
    let c = Cluster::start(Options {
        nodes: 3,
        extra: vec!["max_clients = 3".into()],
    });
    let leader = c.wait_leader(LONG);
    let mut held: Vec<_> = (0..3).map(|_| c.client(leader).unwrap()).collect();
    for cl in &mut held {
        assert_eq!(
            cl.call_str(&["PING"]).unwrap(),
            Value::Simple("PONG".into())
        );
    }
    let mut extra = TcpStream::connect(c.node(leader).client).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = String::new();
    let _ = extra.read_to_string(&mut got);
    assert!(
        got.starts_with("-ERR max number of clients reached"),
        "got {got:?}"
    );
    assert_eq!(
        held[0].call_str(&["SET", "still", "here"]).unwrap(),
        Value::ok()
    );
    drop(held);
    wait_for(LONG, "a free slot again", || {
        let mut cl = c.client(leader).ok()?;
        (cl.call_str(&["PING"]).ok()? == Value::Simple("PONG".into())).then_some(())
    });
}

#[test]
fn a_client_that_never_reads_its_replies_is_disconnected_instead_of_growing_memory() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let big = vec![b'b'; 1024 * 1024];
    let mut cl = c.client(leader).unwrap();
    assert_eq!(cl.call(&[b"SET", b"big", &big]).unwrap(), Value::ok());
    // Connected: `cl` and the INFO connection that asks.
    let baseline = c.info(leader).unwrap()["connected_clients"].clone();
    assert_eq!(baseline, "2");
    // 200 pipelined GETs of 1 MiB: 200 MiB of replies, far past the 64 MiB output cap.
    let mut s = TcpStream::connect(c.node(leader).client).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(200);
    let _ = s.write_all(&get);
    wait_for(LONG, "the node to drop the client", || {
        let info = c.info(leader)?;
        (info["connected_clients"] == baseline).then_some(())
    });
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", c.pid(leader).unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    println!("peak resident memory of the node: {rss_kb} kB");
    assert!(
        rss_kb < 200 * 1024,
        "the node's memory peaked at {rss_kb} kB: replies were buffered without bound"
    );
    assert_eq!(cl.call_str(&["GET", "missing"]).unwrap(), Value::Nil);
}

#[test]
fn a_peer_of_another_cluster_or_speaking_to_the_wrong_id_is_refused() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    for (cluster, to) in [
        (wire::cluster_id("another"), NodeId(leader)),
        (wire::cluster_id("kvraft"), NodeId(42)),
    ] {
        let mut s = TcpStream::connect(c.node(leader).peer).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        wire::encode(
            &Frame::Hello {
                cluster_id: cluster,
                from: NodeId(7),
                to,
            },
            &mut out,
        );
        s.write_all(&out).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "the node answered a Hello it should refuse");
    }
    let log = std::fs::read_to_string(c.log_path(leader)).unwrap();
    assert!(
        log.contains("of another cluster"),
        "no logged reason for the refused cluster"
    );
    assert!(
        log.contains("meant for node 42"),
        "no logged reason for the wrong id"
    );
    put_retry(&c, leader, "still", "fine", LONG);
}

#[test]
fn kvctl_puts_gets_reports_status_and_reads_commands_from_a_pipe() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    c.wait_leader(LONG);
    let kvctl = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
        cmd.args(["-c", c.conf.to_str().unwrap()]).args(args);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(kvctl(&["put", "a", "1"], None), (Some(0), "OK\n".into()));
    assert_eq!(kvctl(&["get", "a"], None), (Some(0), "1\n".into()));
    assert_eq!(kvctl(&["get", "nope"], None), (Some(1), "".into()));
    assert_eq!(kvctl(&["cas", "a", "1", "2"], None).1.trim(), "1");
    assert_eq!(kvctl(&["cas", "a", "1", "3"], None).1.trim(), "0");
    assert_eq!(kvctl(&["incr", "n"], None).1.trim(), "1");
    let (code, status) = kvctl(&["status"], None);
    assert_eq!(code, Some(0));
    let roles: Vec<&str> = status
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(roles.len(), 3, "{status}");
    assert_eq!(
        roles.iter().filter(|&&r| r == "leader").count(),
        1,
        "exactly one member leads:\n{status}"
    );
    assert_eq!(
        roles.iter().filter(|&&r| r == "follower").count(),
        2,
        "{status}"
    );
    let (code, out) = kvctl(&[], Some("put p q\nget p\nrange a z\n"));
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "OK");
    assert_eq!(lines[1], "q");
    assert!(lines.contains(&"a\t2") && lines.contains(&"p\tq"), "{out}");
}
