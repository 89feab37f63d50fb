//! Node defects of issue 12, each shown on a small cluster of real nodes (`Node<KvStore,
//! SimDisk, SimNet>`, as in `sim.rs`) with no faults, so each test is one scripted story.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvraft::client::{resp, Value};
use kvraft::config::Config;
use kvraft::kv::KvStore;
use kvraft::node::{Listener, Node};
use kvraft::prng::Prng;
use kvraft::raft::{NodeId, Role};
use support::sim_disk::{DiskFaults, Image, SimDisk};
use support::sim_net::{SimNet, SimStream, World, WorldRef};

type SimNode = Node<KvStore, SimDisk, SimNet>;

/// Ticks any story may take before it is declared stuck.
const TICKS_MAX: u64 = 3000;

fn addrs(id: u64) -> (SocketAddr, SocketAddr) {
    let ip = [10, 0, 0, id as u8];
    ((ip, 7000).into(), (ip, 6000).into())
}

struct Cluster {
    world: WorldRef,
    nodes: BTreeMap<u64, SimNode>,
    start: Instant,
    now_ms: u64,
    rng: Prng,
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        let world = World::new();
        let start = Instant::now();
        let mut text = String::from(
            "cluster_name = t\ndata_dir = /t/{id}\ntick_ms = 10\nelection_timeout_ms = 150\n\
             heartbeat_interval_ms = 30\n",
        );
        for i in 1..=n {
            let (p, c) = addrs(i);
            text.push_str(&format!("node.{i} = peer={p} client={c}\n"));
        }
        let mut nodes = BTreeMap::new();
        for i in 1..=n {
            // Distinct seeds: equal election timeouts would split every vote.
            let text = format!("{text}seed = {i}\n");
            let mut cfg = Config::parse(&text, "t.conf", NodeId(i), None).expect("config");
            if i == 1 {
                // Node 1 forms the cluster; the leader admits the others as they connect.
                cfg.initial_cluster_state = kvraft::config::InitialClusterState::New;
            }
            let (p, c) = addrs(i);
            world.borrow_mut().listen(p, NodeId(i), Listener::Peer);
            world.borrow_mut().listen(c, NodeId(i), Listener::Client);
            world.borrow_mut().set_up(NodeId(i), true);
            let image = Rc::new(RefCell::new(Image::default()));
            let faults = Rc::new(RefCell::new(DiskFaults::default()));
            let disk = SimDisk::open(&image, &faults);
            let net = SimNet::new(&world, NodeId(i), p);
            let node = Node::start(
                cfg,
                false,
                move || KvStore::new(i),
                disk,
                net,
                start,
                start,
                1,
            )
            .expect("starts");
            nodes.insert(i, node);
        }
        Cluster {
            world,
            nodes,
            start,
            now_ms: 0,
            rng: Prng::new(1),
        }
    }

    fn step(&mut self) {
        self.now_ms += 10;
        let now = self.start + Duration::from_millis(self.now_ms);
        self.world.borrow_mut().deliver(self.now_ms, &mut self.rng);
        for (&i, node) in self.nodes.iter_mut() {
            let accepts = self.world.borrow_mut().take_accepts(NodeId(i));
            node.set_now(now);
            for (conn, what, addr) in accepts {
                node.accept(SimStream::accepted(&self.world, conn), addr, what);
            }
            let ready = self.world.borrow().ready_keys(NodeId(i));
            node.turn(now, &ready).expect("no node stops");
            node.check_invariants();
        }
    }

    fn leader(&mut self) -> u64 {
        for _ in 0..TICKS_MAX {
            // A leader with every node admitted as a voter (the cluster formed).
            let all = self.nodes.len();
            let l = self.nodes.iter().find(|(_, n)| {
                n.raft().role() == Role::Leader && n.raft().conf().voters.len() == all
            });
            if let Some((&id, _)) = l {
                return id;
            }
            self.step();
        }
        panic!("no leader elected");
    }

    fn connect(&mut self, node: u64) -> SimStream {
        SimStream::client_connect(&self.world, node, addrs(node).1).expect("listening")
    }

    /// Send one command on `s` and run the cluster until its reply arrives.
    fn call(&mut self, s: &mut SimStream, args: &[&[u8]]) -> Value {
        let mut out = Vec::new();
        resp::encode_command(args, &mut out);
        std::io::Write::write_all(s, &out).expect("write");
        let mut inbuf = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..TICKS_MAX {
            self.step();
            while let Ok(n) = std::io::Read::read(s, &mut buf) {
                if n == 0 {
                    break;
                }
                inbuf.extend_from_slice(&buf[..n]);
            }
            if let Some((v, _)) = resp::parse_value(&inbuf).expect("a well-formed reply") {
                return v;
            }
        }
        panic!("no reply to {:?}", String::from_utf8_lossy(args[0]));
    }
}

/// Before: the leader encoded a ClientReply of ~10 MiB and panicked in `wire/frame.rs`, so
/// any client could take down every leader in turn. Now the follower's client gets an error
/// naming the problem, and every node stays up (`step` fails if one stops or panics).
#[test]
fn a_reply_too_large_for_a_frame_is_an_error_through_a_follower_and_no_node_goes_down() {
    let mut c = Cluster::new(3);
    let leader = c.leader();
    let follower = (1..=3).find(|&i| i != leader).expect("a follower");
    let mut to_leader = c.connect(leader);
    let value = vec![b'v'; 1000 * 1000];
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("big{i}").into_bytes()).collect();
    for k in &keys {
        let r = c.call(&mut to_leader, &[b"SET", k, &value]);
        assert_eq!(r, Value::ok());
    }
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_slice()));
    let mut to_follower = c.connect(follower);
    match c.call(&mut to_follower, &args) {
        Value::Error(e) => assert!(e.starts_with("ERR reply too large"), "{e}"),
        other => panic!(
            "expected an error, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    // The leader answers the same MGET directly, whole, and still serves.
    match c.call(&mut to_leader, &args) {
        Value::Array(vs) => assert_eq!(vs.len(), 10),
        other => panic!(
            "expected the values, got {:?}",
            std::mem::discriminant(&other)
        ),
    }
    assert_eq!(
        c.call(&mut to_follower, &[b"PING"]),
        Value::Simple("PONG".into())
    );
}

/// Before: `MEMBER ADD` proposed whatever it was given; past `MEMBERS_MAX` the membership
/// could not be written into a snapshot. Now the leader refuses before proposing.
#[test]
fn member_add_beyond_the_membership_limit_is_refused_before_proposing() {
    let mut c = Cluster::new(3);
    let leader = c.leader();
    let mut s = c.connect(leader);
    let max = kvraft::limits::MEMBERS_MAX as u64;
    for id in 4..=max + 1 {
        let (p, cl) = addrs(id % 250 + 1);
        let (p, cl) = (p.to_string(), cl.to_string());
        let id_text = id.to_string();
        let args: [&[u8]; 6] = [
            b"MEMBER",
            b"ADD",
            id_text.as_bytes(),
            p.as_bytes(),
            cl.as_bytes(),
            b"LEARNER",
        ];
        let mut r = c.call(&mut s, &args);
        while matches!(&r, Value::Error(e) if e.contains("pending")) {
            r = c.call(&mut s, &args); // the previous change has not committed yet
        }
        if id <= max {
            assert_eq!(r, Value::ok(), "adding learner {id}");
        } else {
            match r {
                Value::Error(e) => assert!(e.contains("the most it may have"), "{e}"),
                other => panic!("member {id} beyond the limit was accepted: {other:?}"),
            }
        }
    }
    let conf = c.nodes[&leader].raft().status().conf;
    assert_eq!(conf.members().count() as u64, max);
}
