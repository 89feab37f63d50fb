//! A small cluster of real nodes (`Node<KvStore, SimDisk, SimNet>`, as in `sim.rs`) with no
//! faults, stepped tick by tick, for tests that tell one scripted story each
//! (`sim_defects.rs`, `reforward.rs`). Node 1 forms the cluster (`--bootstrap`); the leader
//! admits the others as they connect. A node in `stopped` takes no turns, as under SIGSTOP.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvraft::client::{resp, Value};
use kvraft::config::{Config, InitialClusterState};
use kvraft::kv::KvStore;
use kvraft::node::{Listener, Node};
use kvraft::prng::Prng;
use kvraft::raft::{NodeId, Role};

use super::sim_disk::{DiskFaults, FaultsRef, Image, ImageRef, SimDisk};
use super::sim_net::{SimNet, SimStream, World, WorldRef};

pub type SimNode = Node<KvStore, SimDisk, SimNet>;

pub const TICK_MS: u64 = 10;
/// Ticks any story may take before it is declared stuck.
pub const TICKS_MAX: u64 = 3000;

/// Node `id`'s peer and client addresses.
pub fn addrs(id: u64) -> (SocketAddr, SocketAddr) {
    let ip = [10, 0, 0, id as u8];
    ((ip, 7000).into(), (ip, 6000).into())
}

pub struct Story {
    pub world: WorldRef,
    pub nodes: BTreeMap<u64, SimNode>,
    /// Nodes that take no turns (stopped, as by SIGSTOP).
    pub stopped: BTreeSet<u64>,
    /// Each node's config (to restart it) and starts so far.
    cfgs: BTreeMap<u64, (Config, u64)>,
    /// Each node's disk image and faults (what a crash leaves for the restart).
    disks: BTreeMap<u64, (ImageRef, FaultsRef)>,
    start: Instant,
    now_ms: u64,
    rng: Prng,
}

impl Story {
    /// `n` nodes, all started; none is a voter but node 1 until the leader admits them.
    pub fn new(n: u64) -> Story {
        Story::with_seed(n, 0)
    }

    /// `new`, with node `i` seeded `seed + i` (its election timeout and incarnation follow).
    pub fn with_seed(n: u64, seed: u64) -> Story {
        Story::with_config(n, seed, "")
    }

    /// `with_seed`, with `extra` config lines for every node (each replaces the story's
    /// setting of its key).
    pub fn with_config(n: u64, seed: u64, extra: &str) -> Story {
        let world = World::new();
        let start = Instant::now();
        // The story's settings, each unless `extra` sets it.
        let base = [
            "cluster_name = t",
            "data_dir = /t/{id}",
            "tick_ms = 10",
            "election_timeout_ms = 150",
            "heartbeat_interval_ms = 30",
        ];
        let mut text = String::new();
        for line in base {
            let key = line.split(' ').next().expect("a key");
            if !extra.lines().any(|l| l.split(' ').next() == Some(key)) {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(extra);
        for i in 1..=n {
            let (p, c) = addrs(i);
            text.push_str(&format!("node.{i} = peer={p} client={c}\n"));
        }
        let mut nodes = BTreeMap::new();
        let mut cfgs = BTreeMap::new();
        let mut disks = BTreeMap::new();
        for i in 1..=n {
            // Distinct seeds: equal election timeouts would split every vote.
            let text = format!("{text}seed = {}\n", seed + i);
            let mut cfg = Config::parse(&text, "t.conf", NodeId(i), None).expect("config");
            cfgs.insert(i, (cfg.clone(), 1));
            if i == 1 {
                cfg.initial_cluster_state = InitialClusterState::New;
            }
            let (p, c) = addrs(i);
            world.borrow_mut().listen(p, NodeId(i), Listener::Peer);
            world.borrow_mut().listen(c, NodeId(i), Listener::Client);
            world.borrow_mut().set_up(NodeId(i), true);
            let image = Rc::new(RefCell::new(Image::default()));
            let faults = Rc::new(RefCell::new(DiskFaults::default()));
            let disk = SimDisk::open(&image, &faults);
            disks.insert(i, (image.clone(), faults.clone()));
            let net = SimNet::new(&world, NodeId(i), p);
            let make_sm = move || KvStore::new(i);
            let node = Node::start(cfg, false, make_sm, disk, net, start, start, 1);
            nodes.insert(i, node.expect("starts"));
        }
        Story {
            world,
            nodes,
            stopped: BTreeSet::new(),
            cfgs,
            disks,
            start,
            now_ms: 0,
            rng: Prng::new(1),
        }
    }

    /// Node `i` stops (its connections close) and starts again on an empty disk, as after a
    /// lost disk: a new incarnation of its member.
    pub fn restart_with_empty_storage(&mut self, i: u64) {
        self.crash(i);
        self.disks.insert(
            i,
            (
                Rc::new(RefCell::new(Image::default())),
                Rc::new(RefCell::new(DiskFaults::default())),
            ),
        );
        self.restart(i);
    }

    /// Node `i` loses power: its connections close and every log page it had not synced is
    /// lost (the disk image holds only what was synced).
    pub fn crash(&mut self, i: u64) {
        self.world.borrow_mut().drop_node(NodeId(i));
        self.nodes.remove(&i);
    }

    /// Node `i`, crashed, starts again on what its disk kept.
    pub fn restart(&mut self, i: u64) {
        let now = self.start + Duration::from_millis(self.now_ms);
        let (cfg, starts) = self.cfgs.get_mut(&i).expect("a node of the story");
        *starts += 1;
        let (cfg, first_forward_id) = (cfg.clone(), *starts << 32);
        let (image, faults) = &self.disks[&i];
        let disk = SimDisk::open(image, faults);
        let net = SimNet::new(&self.world, NodeId(i), addrs(i).0);
        let make_sm = move || KvStore::new(i);
        let node = Node::start(
            cfg,
            false,
            make_sm,
            disk,
            net,
            self.start,
            now,
            first_forward_id,
        );
        self.world.borrow_mut().set_up(NodeId(i), true);
        self.nodes.insert(i, node.expect("restarts"));
    }

    /// Frames from node `a` to node `b` are dropped (`true`) or delivered again.
    pub fn block(&mut self, a: u64, b: u64, blocked: bool) {
        let pair = (NodeId(a), NodeId(b));
        let mut w = self.world.borrow_mut();
        match blocked {
            true => w.blocked.insert(pair),
            false => w.blocked.remove(&pair),
        };
    }

    /// Run the cluster at most `ticks` ticks for a reply on `s`.
    pub fn reply_within(&mut self, s: &mut SimStream, ticks: u64) -> Option<Value> {
        let mut inbuf = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..ticks {
            self.step();
            while let Ok(n @ 1..) = std::io::Read::read(s, &mut buf) {
                inbuf.extend_from_slice(&buf[..n]);
            }
            if let Some((v, _)) = resp::parse_value(&inbuf).expect("a well-formed reply") {
                return Some(v);
            }
        }
        None
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.now_ms / TICK_MS
    }

    /// One tick: deliver what is due, then one turn of every running node.
    pub fn step(&mut self) {
        self.step_with(|_, node, now, ready| node.turn(now, ready).expect("no node stops"));
    }

    /// `step`, with each node's turn made by `turn(id, node, now, ready)` (the write-path
    /// benchmark counts what each node's turn costs).
    pub fn step_with(
        &mut self,
        mut turn: impl FnMut(u64, &mut SimNode, Instant, &[(usize, bool)]),
    ) {
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
            turn(i, node, now, &ready);
            node.check_invariants();
        }
    }

    /// The running node that leads in the highest term once the cluster formed (every node
    /// admitted as a voter).
    pub fn leader(&mut self) -> u64 {
        let all = self.nodes.len();
        for _ in 0..TICKS_MAX {
            let l = self
                .nodes
                .iter()
                .filter(|(i, n)| !self.stopped.contains(i) && n.raft().role() == Role::Leader)
                .filter(|(_, n)| n.raft().conf().voters.len() == all)
                .max_by_key(|(_, n)| n.raft().term());
            if let Some((&id, _)) = l {
                return id;
            }
            self.step();
        }
        panic!("no leader elected");
    }

    pub fn connect(&mut self, node: u64) -> SimStream {
        SimStream::client_connect(&self.world, node, addrs(node).1).expect("listening")
    }

    pub fn send(&mut self, s: &mut SimStream, args: &[&[u8]]) {
        let mut out = Vec::new();
        resp::encode_command(args, &mut out);
        std::io::Write::write_all(s, &out).expect("write");
    }

    /// Run the cluster until a reply arrives on `s`; the reply and the ticks it took.
    pub fn reply(&mut self, s: &mut SimStream) -> (Value, u64) {
        let mut inbuf = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
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

    /// Send one command on `s` and run the cluster until its reply arrives.
    pub fn call(&mut self, s: &mut SimStream, args: &[&[u8]]) -> Value {
        self.send(s, args);
        self.reply(s).0
    }
}
