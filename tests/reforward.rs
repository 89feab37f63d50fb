//! A follower's forwarded requests when the leader it forwarded to goes silent, as scripted
//! stories on a 3-node cluster of real nodes (`Node<KvStore, SimDisk, SimNet>`, as in
//! `sim.rs`): the silent leader simply takes no turns (a SIGSTOP), so everything is counted in
//! simulated ticks and replays exactly.
//!
//! A plain write is answered `-UNKNOWN` as soon as the follower learns of the next leader;
//! a session write and a read are sent on to that leader and answered normally, the session
//! write applied once.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
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

const TICK_MS: u64 = 10;
/// Ticks any story may take before it is declared stuck.
const TICKS_MAX: u64 = 3000;
/// The forward timeout in ticks: an answer after it proves nothing about re-forwarding.
const FORWARD_TIMEOUT_TICKS: u64 = 1000;

fn addrs(id: u64) -> (SocketAddr, SocketAddr) {
    let ip = [10, 0, 0, id as u8];
    ((ip, 7000).into(), (ip, 6000).into())
}

struct Cluster {
    world: WorldRef,
    nodes: BTreeMap<u64, SimNode>,
    /// Nodes that take no turns (stopped, as by SIGSTOP).
    stopped: BTreeSet<u64>,
    start: Instant,
    now_ms: u64,
    rng: Prng,
}

impl Cluster {
    fn new() -> Cluster {
        let world = World::new();
        let start = Instant::now();
        let mut text = String::from(
            "cluster_name = t\ndata_dir = /t/{id}\ntick_ms = 10\nelection_timeout_ms = 150\n\
             heartbeat_interval_ms = 30\n",
        );
        for i in 1..=3 {
            let (p, c) = addrs(i);
            text.push_str(&format!("node.{i} = peer={p} client={c}\n"));
        }
        let mut nodes = BTreeMap::new();
        for i in 1..=3u64 {
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
            stopped: BTreeSet::new(),
            start,
            now_ms: 0,
            rng: Prng::new(1),
        }
    }

    fn step(&mut self) {
        self.now_ms += TICK_MS;
        let now = self.start + Duration::from_millis(self.now_ms);
        self.world.borrow_mut().deliver(self.now_ms, &mut self.rng);
        for (&i, node) in self.nodes.iter_mut() {
            if self.stopped.contains(&i) {
                continue;
            }
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

    /// The running node that leads in the highest term, once there is one.
    fn leader(&mut self) -> u64 {
        for _ in 0..TICKS_MAX {
            let l = self
                .nodes
                .iter()
                .filter(|(i, n)| !self.stopped.contains(i) && n.raft().role() == Role::Leader)
                // The cluster formed: every node admitted as a voter.
                .filter(|(_, n)| n.raft().conf().voters.len() == 3)
                .max_by_key(|(_, n)| n.raft().term());
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

    fn send(&mut self, s: &mut SimStream, args: &[&[u8]]) {
        let mut out = Vec::new();
        resp::encode_command(args, &mut out);
        std::io::Write::write_all(s, &out).expect("write");
    }

    /// Run the cluster until a reply arrives on `s`; the reply and the ticks it took.
    fn reply(&mut self, s: &mut SimStream) -> (Value, u64) {
        let mut inbuf = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for ticks in 1..=TICKS_MAX {
            self.step();
            while let Ok(n @ 1..) = std::io::Read::read(s, &mut buf) {
                inbuf.extend_from_slice(&buf[..n]);
            }
            if let Some((v, _)) = resp::parse_value(&inbuf).expect("a well-formed reply") {
                return (v, ticks);
            }
        }
        panic!("no reply in {TICKS_MAX} ticks");
    }

    fn call(&mut self, s: &mut SimStream, args: &[&[u8]]) -> Value {
        self.send(s, args);
        self.reply(s).0
    }

    /// A follower of `leader`, and a connection to it that already wrote through it once
    /// (so it knows the leader and has a link to it).
    fn follower_of(&mut self, leader: u64) -> (u64, SimStream) {
        let follower = (1..=3).find(|&i| i != leader).expect("a follower");
        let mut s = self.connect(follower);
        assert_eq!(self.call(&mut s, &[b"SET", b"warm", b"1"]), Value::ok());
        (follower, s)
    }
}

#[test]
fn a_plain_write_through_a_follower_is_answered_unknown_once_it_loses_touch_with_the_leader() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let (follower, mut s) = c.follower_of(leader);
    c.stopped.insert(leader);
    c.send(&mut s, &[b"SET", b"k", b"v"]);
    // NB: the write leaves in the follower's next turn, to a leader that never reads it.
    let (reply, ticks) = c.reply(&mut s);
    let Value::Error(e) = &reply else {
        panic!("a write forwarded to a silent leader cannot be OK: {reply:?}")
    };
    assert!(
        e.starts_with("UNKNOWN") && e.ends_with("the command may or may not have been applied"),
        "{e}"
    );
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
    // By then the follower no longer takes the silent node for the leader (its election
    // timeout passed without a word from it, or another leader or term appeared).
    let known = c.nodes[&follower].raft().leader();
    assert!(known != Some(NodeId(leader)), "{known:?}: {e}");
}

#[test]
fn a_session_write_and_a_read_through_a_follower_are_sent_on_to_the_next_leader() {
    let mut c = Cluster::new();
    let leader = c.leader();
    let (_, mut s) = c.follower_of(leader);
    let Value::Integer(id) = c.call(&mut s, &[b"SESSION", b"OPEN"]) else {
        panic!("SESSION OPEN gives an id")
    };
    let id = id.to_string();
    let incr = |seq: &'static [u8]| -> Vec<Vec<u8>> {
        let parts: [&[u8]; 7] = [b"SESSION", b"RUN", id.as_bytes(), seq, seq, b"INCR", b"n"];
        parts.iter().map(|p| p.to_vec()).collect()
    };
    let one = incr(b"1");
    let one: Vec<&[u8]> = one.iter().map(Vec::as_slice).collect();
    assert_eq!(c.call(&mut s, &one), Value::Integer(1));
    c.stopped.insert(leader);
    let two = incr(b"2");
    let two: Vec<&[u8]> = two.iter().map(Vec::as_slice).collect();
    c.send(&mut s, &two);
    let (reply, ticks) = c.reply(&mut s);
    assert_eq!(reply, Value::Integer(2), "after {ticks} ticks");
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
    // The resend of 2 (as a client would after a lost connection) answers the saved reply.
    assert_eq!(c.call(&mut s, &two), Value::Integer(2));
    // A read sent through the third node while the next leader is silent is served once
    // another one leads (the first, running again, or the third itself).
    let next = c.leader();
    c.stopped.remove(&leader);
    let third = (1..=3).find(|&i| i != leader && i != next).unwrap();
    let mut s2 = c.connect(third);
    assert_eq!(c.call(&mut s2, &[b"GET", b"n"]), Value::Bulk(b"2".to_vec()));
    c.stopped.insert(next);
    c.send(&mut s2, &[b"GET", b"n"]);
    let (reply, ticks) = c.reply(&mut s2);
    assert_eq!(reply, Value::Bulk(b"2".to_vec()), "after {ticks} ticks");
    assert!(
        ticks < FORWARD_TIMEOUT_TICKS / 4,
        "answered after {ticks} ticks"
    );
}
