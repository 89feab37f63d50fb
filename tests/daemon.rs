//! The daemon's behaviour at its edges, on real processes: clean shutdown on SIGTERM, the
//! client connection limit, the output cap for a client that never reads, a peer of another
//! cluster being refused, kvctl against a real cluster, and the process keeping its name when it
//! re-executes itself for huge pages.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{get, put_retry, serial, wait_for, ClientError, Cluster, Options};
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
        extra: vec!["max_clients = 3".into()],
        ..Options::default()
    });
    let leader = c.wait_leader(LONG);
    // The INFO connections that found the leader may take a moment to be closed on the
    // node's side: take the three slots one by one, each confirmed by a PING.
    let held: Vec<_> = (0..3)
        .map(|_| {
            wait_for(LONG, "a client slot", || {
                let mut cl = c.client(leader).ok()?;
                (cl.call_str(&["PING"]).ok()? == Value::Simple("PONG".into())).then_some(cl)
            })
        })
        .collect();
    let mut held = held;
    let mut extra = c.client(leader).unwrap();
    extra.set_io_timeout(Duration::from_secs(5));
    let got = extra.read_reply();
    assert!(
        matches!(&got, Ok(Value::Error(e)) if e.starts_with("ERR max number of clients reached")),
        "got {got:?}"
    );
    let after = extra.read_reply();
    assert!(
        matches!(after, Err(ClientError::Closed)),
        "the refused connection stayed open: {after:?}"
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

/// The node reads a socket until a short read, not until `EAGAIN` (`node/conn.rs`): a client
/// whose commands and end of file arrive together (one readiness edge) must still get every
/// reply and then see the connection closed, through the leader and through followers.
#[test]
fn a_client_that_half_closes_right_after_its_commands_gets_every_reply_then_end_of_file() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    c.wait_formed(LONG);
    let leader = c.wait_leader(LONG);
    let want: &[u8] = b"+OK\r\n$1\r\nv\r\n+PONG\r\n";
    for round in 0..30 {
        let id = [leader, 1, 2, 3][round % 4];
        let mut s = TcpStream::connect(c.node(id).client).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let key = format!("half-{round}");
        let cmds = format!("SET {key} v\r\nGET {key}\r\nPING\r\n");
        s.write_all(cmds.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "node {id}, round {round}: no end of file after {:?}: {e}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        // A write refused while leadership moves is retried on a fresh connection.
        if got.starts_with(b"-") {
            continue;
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "node {id}, round {round}"
        );
    }
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
    let mut s = c.client(leader).unwrap();
    s.set_io_timeout(Duration::from_secs(10));
    for _ in 0..200 {
        s.queue(&[b"GET", b"big"]);
    }
    let _ = s.flush();
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
                cluster_uid: 0,
                incarnation: 0,
                from: NodeId(7),
                to,
            },
            &mut out,
        )
        .unwrap();
        s.write_all(&out).unwrap();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0)),
            "the node did not close a Hello it should refuse: {r:?}"
        );
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
        .filter_map(|l| l.split_whitespace().nth(3))
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

/// Unmounts a test's tmpfs when dropped (after the cluster using it is gone).
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A cluster whose node 3 keeps its data on a 24 MiB tmpfs holding an 8 MiB ballast file:
/// its log fits two 6 MiB segments, and the third does not. `None` where a tmpfs cannot be
/// mounted (not root); CI runs as root.
fn cluster_with_a_small_disk_for_node_3() -> Option<(Cluster, Mount)> {
    let mounted: std::rc::Rc<std::cell::RefCell<Option<Mount>>> = Default::default();
    let m = mounted.clone();
    let prepare = move |dir: &std::path::Path| {
        let data = dir.join("node3");
        std::fs::create_dir_all(&data).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
            .arg(&data)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            std::fs::write(data.join("ballast"), vec![0u8; 8 << 20]).unwrap();
            *m.borrow_mut() = Some(Mount(data));
        }
    };
    let opts = Options {
        extra: vec![
            "segment_bytes = 6MiB".into(),
            "snapshot_entries = 1000000000".into(),
            "snapshot_bytes = 1000GiB".into(),
        ],
        prepare: Some(Box::new(prepare)),
        ..Options::default()
    };
    let c = Cluster::start(opts);
    let mount = mounted.borrow_mut().take();
    match mount {
        Some(m) => Some((c, m)),
        None => {
            println!("skipped: cannot mount a tmpfs here (needs root); CI runs this test as root");
            None
        }
    }
}

fn transfer_to(c: &Cluster, target: u64) {
    wait_for(LONG, &format!("node {target} to lead"), || {
        if c.leader() == Some(target) {
            return Some(());
        }
        let mut cl = c.client(c.leader()?).ok()?;
        let _ = cl.call_str(&["TRANSFER", &target.to_string()]);
        None
    });
}

/// Write 2 KB values through `via` until node 3 reports its disk full; every write must be
/// acknowledged all the same (the other two members hold it). Returns how many were written.
fn fill_node_3(c: &Cluster) -> u64 {
    let read_only = |c: &Cluster| c.info(3).map(|i| i["read_only"] != "no").unwrap_or(false);
    let value = vec![b'd'; 2000];
    let mut written = 0u64;
    while !read_only(c) {
        assert!(written < 20_000, "node 3 never ran out of space");
        let via = c.wait_leader(LONG);
        let mut cl = c.client(via).unwrap();
        for i in written..written + 500 {
            cl.send(&[b"SET", format!("full-{i}").as_bytes(), &value])
                .unwrap();
        }
        for i in written..written + 500 {
            let r = cl.read_reply().unwrap();
            // The leader itself may be node 3, losing its disk mid-batch: it answers with an
            // error and hands leadership over; the write is retried below.
            if r != Value::ok() {
                put_retry(c, via, &format!("full-{i}"), "d", LONG);
            }
        }
        written += 500;
    }
    println!("node 3 ran out of space after {written} writes");
    written
}

/// Space comes back: node 3 persists what it held back, catches up, and a restart recovers
/// the same state.
fn free_space_and_check_node_3_catches_up(c: &mut Cluster) {
    std::fs::remove_file(c.data_dir(3).join("ballast")).unwrap();
    let leader = c.wait_leader(LONG);
    let target: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    wait_for(LONG, "node 3 to accept writes again and catch up", || {
        let i = c.info(3)?;
        (i["read_only"] == "no" && i["durable_index"].parse::<u64>().ok()? >= target).then_some(())
    });
    c.wait_applied(&[1, 2, 3], target, LONG);
    let hash = |c: &Cluster, id| c.info(id).unwrap()["state_hash"].clone();
    assert_eq!(hash(c, 3), hash(c, leader));
    c.kill(3);
    c.spawn(3);
    c.wait_applied(&[3], target, LONG);
    assert_eq!(hash(c, 3), hash(c, leader));
}

#[test]
fn a_follower_whose_disk_fills_keeps_serving_and_catches_up_when_space_returns() {
    let _g = serial();
    let Some((mut c, _unmount)) = cluster_with_a_small_disk_for_node_3() else {
        return;
    };
    c.wait_leader(LONG);
    transfer_to(&c, 1);
    fill_node_3(&c);
    // It stays up: forwarded writes and linearizable reads through it work.
    put_retry(&c, 3, "via-full-node", "ok", LONG);
    assert_eq!(get(&c, 3, "full-0"), Some(Value::Bulk(vec![b'd'; 2000])));
    let n3 = &mut c.nodes[2];
    assert!(
        n3.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "node 3 exited on a full disk"
    );
    let log = std::fs::read_to_string(c.log_path(3)).unwrap();
    assert!(
        log.contains("no space left"),
        "no clear error in node 3's log"
    );
    free_space_and_check_node_3_catches_up(&mut c);
}

#[test]
fn a_leader_whose_disk_fills_hands_leadership_over_and_the_cluster_stays_writable() {
    let _g = serial();
    let Some((mut c, _unmount)) = cluster_with_a_small_disk_for_node_3() else {
        return;
    };
    c.wait_leader(LONG);
    transfer_to(&c, 3);
    fill_node_3(&c);
    let new = wait_for(LONG, "a leader other than node 3", || {
        c.leader().filter(|&l| l != 3)
    });
    let log = std::fs::read_to_string(c.log_path(3)).unwrap();
    assert!(
        log.contains("handing leadership to node"),
        "node 3 did not say why it stepped aside"
    );
    // Writes through every node, the full one included, are accepted.
    for via in 1..=3 {
        put_retry(&c, via, &format!("after-handoff-{via}"), "ok", LONG);
    }
    assert_eq!(
        get(&c, new, "after-handoff-3"),
        Some(Value::Bulk(b"ok".to_vec()))
    );
    free_space_and_check_node_3_catches_up(&mut c);
}

#[test]
fn idle_sockets_cannot_hold_the_peer_port_past_the_cap_nor_past_the_hello_deadline() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let addr = c.node(leader).peer;
    // As many as the cap: with the two members' connections, the last ones are refused.
    let mut idle: Vec<TcpStream> = (0..kvraft::limits::PEER_CONNECTIONS_MAX)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    wait_for(LONG, "the node to refuse connections past the cap", || {
        let log = std::fs::read_to_string(c.log_path(leader)).ok()?;
        log.contains("refusing a peer connection").then_some(())
    });
    // None of them said Hello: every one is closed by the deadline, refused or not.
    for s in &mut idle {
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(r, Ok(0)),
            "an idle peer socket was not closed: {r:?}"
        );
    }
    wait_for(LONG, "only the members' connections to remain", || {
        (c.info(leader)?["peer_connections"] == "2").then_some(())
    });
    put_retry(&c, leader, "after-idle-sockets", "ok", LONG);
}

#[test]
fn a_node_that_reexecutes_itself_for_huge_pages_keeps_its_name_and_gets_the_tunable() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    c.wait_leader(LONG);
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    for n in &c.nodes {
        let pid = n.child.as_ref().unwrap().id();
        // What `pkill kvraftd` and `pgrep kvraftd` match: the executed file's name.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(
            comm.trim_end(),
            "kvraftd",
            "node {} is named {comm:?}",
            n.id
        );
        if !thp.is_empty() && !thp.contains("[never]") {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let has = environ.split(|&b| b == 0).any(|v| {
                v.starts_with(b"GLIBC_TUNABLES=") && v.ends_with(b"glibc.malloc.hugetlb=1")
            });
            assert!(has, "node {} runs without glibc.malloc.hugetlb=1", n.id);
        }
    }
}
