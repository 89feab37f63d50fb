//! The deterministic cluster simulator: 3- and 5-node clusters of the REAL node
//! (`kvraft::node::Node<KvStore, SimDisk, SimNet>`: the daemon's driver, connections, client
//! port, forwarding, snapshots and recovery) on a simulated disk (`support/sim_disk.rs`),
//! network (`support/sim_net.rs`) and clock, all driven by one seed.
//!
//! Forming: node 1 starts once with `initial_cluster_state = new` (as `--bootstrap`); the
//! leader admits the other configured members (learner, caught up, promoted). Lost storage:
//! now and then a node restarts on an empty disk (only while a leader's configuration has at
//! least three voters and every other voter is up and voting, so a quorum remains; losing a
//! majority is unavailability by design), comes back as a new incarnation and is re-admitted;
//! the checks below prove no acknowledged write is lost. It found three liveness rules of the
//! identity design (seeds 7, 79 and 413; see `node/membership.rs`, `raft/election.rs`).
//!
//! Faults: peer frames lost, duplicated, delayed and reordered; partitions that come and go;
//! crashes and restarts (a crash loses unsynced log pages, any subset, torn at page
//! granularity), failed fsyncs (the node stops, as the daemon does, and is restarted: a crash
//! in the middle of a turn, after the append and before the sync), slow syncs, a full disk,
//! slow snapshots, whole-cluster power cuts.
//!
//! A slow sync is durable when it returns (the `Disk` contract: the daemon's fsync blocks its
//! one thread) and takes 1 to `slow_sync_ticks_max` ticks: the turn that ran it ends that
//! much later. The node takes no turn meanwhile (messages and clients wait for it, its peers'
//! election timers run), what it wrote in that turn leaves only when the turn ends
//! (`World::hold_output`), and its next turn catches up the ticks it missed. A crash during
//! those ticks strikes as the sync returns: what it synced stays, the held output is lost. Clients write and read through any node (followers
//! forward), send malformed and oversized requests, and (in some seeds) membership changes
//! and leadership transfers as client commands.
//!
//! After every step: each node's `check_invariants()`; election safety (one leader per term);
//! log matching (an entry id always follows the same term); leader completeness (a leader
//! holds every entry seen committed in an earlier term); state-machine safety (two replicas at
//! one applied index have the same state hash); a committed entry never changes; a read of a
//! key whose write was acknowledged before the read was sent returns that write. After the
//! faults heal: a leader is elected and a new write is acknowledged within a bound, and every
//! acknowledged write is in the leader's state.
//!
//! Defects it found in the node (each fixed, each seed failing before the fix): compaction
//! past what is durable on a full disk (seed 6: the core's `slice` assertion); snapshot
//! metadata moving backwards when a node's own snapshot finished after it installed a newer
//! one (seed 23); forwarded request ids reused after a restart, so a late reply reached the
//! wrong client (seed 137: STALE READ); a snapshot stream whose link was dropped at a
//! membership change never reported its end, and a lagging member never reconnected to a
//! leader it had removed from its table, nor the higher id of a pair to a lower one that had
//! dropped it (seeds 340, 717, 752: NO PROGRESS).
//!
//! Measured (release, shared 2-core machine): 1,500 seeds in 40.3 s (1.56M ticks, 25,063
//! crashes of which 5,630 at a failed fsync, 11,973 unsynced pages lost and 2,892 kept, 475
//! power cuts, 8,902 partitions, 17,484 slow syncs taking 208,250 ticks, 62,524 writes
//! acknowledged, 41,293 reads checked, 21,464 garbage requests, 6,404 admin commands, 9,235
//! elections). Slow syncs cost elections (7,929 without them) and acknowledged writes
//! (81,722 without them). A seed runs the same every time (the node iterates no hash map).
//!
//! `SIM_SEED=n` replays one seed; `SIM_SEEDS=n` runs seeds 0..n (default `DEFAULT_SEEDS`).
//! `make sim SEED=n` / `make sim SEEDS=n`.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvraft::client::resp;
use kvraft::client::Value;
use kvraft::config::{Config, InitialClusterState};
use kvraft::kv::{KvStore, Request, StateMachine};
use kvraft::node::{Listener, Node};
use kvraft::prng::Prng;
use kvraft::raft::{LogIndex, NodeId, Role, Term};
use support::sim_disk::{DiskFaults, FaultsRef, Image, ImageRef, SimDisk};
use support::sim_net::{SimNet, SimStream, World, WorldRef};

type SimNode = Node<KvStore, SimDisk, SimNet>;

const TICK_MS: u64 = 10;
const CHAOS_TICKS: u64 = 1000;
/// Ticks after healing within which a leader must be elected and a write acknowledged.
const HEAL_BOUND_TICKS: u64 = 1500;
const DEFAULT_SEEDS: u64 = 300;
/// Requests a simulated client keeps in its pipeline.
const CLIENT_PIPELINE_MAX: usize = 3;
const TRACE_EVENTS_MAX: usize = 60;
/// Ticks a client waits for an answer before it tries another node.
const CLIENT_PATIENCE_TICKS: u64 = 300;

/// The fault mix of one seed (rates per mille per tick unless said otherwise).
#[derive(Debug, Clone)]
struct Params {
    voters: u64,
    joiners: u64,
    loss: u64,
    dup: u64,
    delay_max_ms: u64,
    crash: u64,
    sync_fail: u64,
    power_cut: u64,
    partition: u64,
    disk_full: u64,
    snapshot_entries: u64,
    snapshot_polls: u32,
    /// Per mille per tick: the node's next sync is slow, taking 1..=`slow_sync_ticks_max`.
    slow_sync: u64,
    slow_sync_ticks_max: u64,
    /// Per mille of restarts: the node comes back with its whole storage lost (only while
    /// every other voter is intact and admitted: see `may_lose_storage`).
    storage_loss: u64,
    clients: u64,
    garbage: u64,
    membership: bool,
}

impl Params {
    /// `slow`: a stream of its own for the slow-sync fault, so that adding it left every
    /// other draw of a seed (and the seeds cited above) as it was.
    fn draw(rng: &mut Prng, slow: &mut Prng, lost: &mut Prng) -> Params {
        let five = rng.chance(1, 2);
        let membership = rng.chance(1, 3);
        Params {
            voters: if five && !membership { 5 } else { 3 },
            joiners: if five && membership { 2 } else { 0 },
            loss: [0, 10, 50, 150][rng.range(0, 4) as usize],
            dup: [0, 10, 50][rng.range(0, 3) as usize],
            delay_max_ms: [0, 10, 30, 80][rng.range(0, 4) as usize],
            crash: [0, 3, 10][rng.range(0, 3) as usize],
            sync_fail: [0, 2, 5][rng.range(0, 3) as usize],
            power_cut: [0, 0, 1][rng.range(0, 3) as usize],
            partition: [0, 5, 20][rng.range(0, 3) as usize],
            disk_full: [0, 0, 3][rng.range(0, 3) as usize],
            snapshot_entries: [20, 60, 400][rng.range(0, 3) as usize],
            snapshot_polls: [0, 3, 30][rng.range(0, 3) as usize] as u32,
            slow_sync: [0, 5, 30][slow.range(0, 3) as usize],
            slow_sync_ticks_max: [3, 20, 60][slow.range(0, 3) as usize],
            storage_loss: [0, 200, 500][lost.range(0, 3) as usize],
            clients: rng.range(1, 5),
            garbage: [0, 20, 100][rng.range(0, 3) as usize],
            membership,
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    ticks: u64,
    crashes: u64,
    sync_failures: u64,
    pages_lost: u64,
    pages_kept: u64,
    power_cuts: u64,
    partitions: u64,
    disk_full: u64,
    writes_acked: u64,
    reads_checked: u64,
    garbage_sent: u64,
    admin_sent: u64,
    elections: u64,
    /// Syncs that took time, and the ticks they took.
    slow_syncs: u64,
    slow_sync_ticks: u64,
    /// Restarts with the whole storage lost, and re-admissions seen (the node voting again).
    storage_losses: u64,
    readmitted: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.ticks += o.ticks;
        self.crashes += o.crashes;
        self.sync_failures += o.sync_failures;
        self.pages_lost += o.pages_lost;
        self.pages_kept += o.pages_kept;
        self.power_cuts += o.power_cuts;
        self.partitions += o.partitions;
        self.disk_full += o.disk_full;
        self.writes_acked += o.writes_acked;
        self.reads_checked += o.reads_checked;
        self.garbage_sent += o.garbage_sent;
        self.admin_sent += o.admin_sent;
        self.elections += o.elections;
        self.slow_syncs += o.slow_syncs;
        self.slow_sync_ticks += o.slow_sync_ticks;
        self.storage_losses += o.storage_losses;
        self.readmitted += o.readmitted;
    }
}

struct Member {
    id: NodeId,
    cfg: Config,
    join: bool,
    image: ImageRef,
    faults: FaultsRef,
    node: Option<SimNode>,
    /// Ticks until a crashed node restarts.
    down_ticks: u64,
    /// How often it was started (forwarded request ids of each start begin at `starts << 32`).
    starts: u64,
    /// Its last turn ran a slow sync and lasts until this time (ms): no turn before.
    busy_until_ms: u64,
}

/// What a client waits for.
enum Op {
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// A read of a key whose write was acknowledged before the read was sent.
    Get {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Admin commands: any reply will do (the node must merely survive).
    Any,
    /// Garbage: any number of replies (or none) and maybe the end of the connection; the
    /// client sends nothing more on this connection.
    Garbage,
}

struct Client {
    id: u64,
    stream: Option<SimStream>,
    inbuf: Vec<u8>,
    pending: VecDeque<Op>,
    next_key: u64,
    /// Ticks since the oldest pending request was answered (or sent).
    waited_ticks: u64,
    /// Reconnect to another node once the pipeline is empty.
    retry: bool,
}

struct Sim {
    rng: Prng,
    /// Draws for slow syncs only (see `Params::draw`).
    slow_rng: Prng,
    /// Draws for storage loss only.
    lost_rng: Prng,
    /// A node whose storage was lost and that is not yet a voter again as its new incarnation:
    /// no other storage is lost meanwhile (losing a second voter could lose a majority, which
    /// is unavailability by design, not a defect to find).
    lost_pending: Option<NodeId>,
    p: Params,
    world: WorldRef,
    members: BTreeMap<NodeId, Member>,
    start: Instant,
    now_ms: u64,
    clients: Vec<Client>,
    /// Acknowledged writes (keys are written once).
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    /// term -> its leader.
    leaders: HashMap<Term, NodeId>,
    /// applied index -> state hash.
    hashes: HashMap<LogIndex, u64>,
    /// index -> term of every entry seen committed.
    /// index -> (term of every entry seen committed, term of the node that first saw it
    /// committed: it was committed in that term or an earlier one).
    committed: BTreeMap<LogIndex, (Term, Term)>,
    /// entry (index, term) -> term of its predecessor.
    entry_prev: HashMap<(LogIndex, Term), Option<Term>>,
    /// Leaders whose log was checked for completeness: (term, node).
    checked_leaders: std::collections::HashSet<(Term, NodeId)>,
    trace: VecDeque<String>,
    /// The node taking its turn (named when a turn panics).
    turning: Option<NodeId>,
    stats: Stats,
}

fn addrs(id: NodeId) -> (SocketAddr, SocketAddr) {
    let ip = [10, 0, 0, id.0 as u8];
    ((ip, 7000).into(), (ip, 6000).into())
}

fn config_text(ids: &[u64], seed: u64, p: &Params) -> String {
    let mut t = format!(
        "cluster_name = sim\ndata_dir = /sim/node{{id}}\ntick_ms = {TICK_MS}\n\
         election_timeout_ms = 150\nheartbeat_interval_ms = 30\n\
         snapshot_entries = {}\nsnapshot_keep_entries = 5\nsnapshot_chunk_bytes = 4096\nseed = {seed}\n",
        p.snapshot_entries
    );
    for &i in ids {
        let (peer, client) = addrs(NodeId(i));
        t.push_str(&format!("node.{i} = peer={peer} client={client}\n"));
    }
    t
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Prng::new(seed);
        let mut slow_rng = Prng::new(seed ^ 0x5105_5c4c);
        let mut lost_rng = Prng::new(seed ^ 0x1057_d15c);
        let p = Params::draw(&mut rng, &mut slow_rng, &mut lost_rng);
        let world = World::new();
        world.borrow_mut().faults = support::sim_net::NetFaults {
            loss: p.loss,
            dup: p.dup,
            delay_max_ms: p.delay_max_ms,
        };
        let voters: Vec<u64> = (1..=p.voters).collect();
        let mut members = BTreeMap::new();
        for i in 1..=p.voters + p.joiners {
            let join = i > p.voters;
            let mut ids = voters.clone();
            if join {
                ids.push(i);
            }
            let text = config_text(&ids, seed.wrapping_mul(31).wrapping_add(i), &p);
            let cfg = Config::parse(&text, "sim.conf", NodeId(i), None).expect("sim config");
            let (peer, client) = addrs(NodeId(i));
            world.borrow_mut().listen(peer, NodeId(i), Listener::Peer);
            world
                .borrow_mut()
                .listen(client, NodeId(i), Listener::Client);
            let faults = Rc::new(RefCell::new(DiskFaults {
                snapshot_polls: p.snapshot_polls,
                ..DiskFaults::default()
            }));
            let m = Member {
                id: NodeId(i),
                cfg,
                join,
                image: Rc::new(RefCell::new(Image::default())),
                faults,
                node: None,
                down_ticks: 0,
                starts: 1,
                busy_until_ms: 0,
            };
            members.insert(NodeId(i), m);
        }
        let clients = (0..p.clients)
            .map(|id| Client {
                id,
                stream: None,
                inbuf: Vec::new(),
                pending: VecDeque::new(),
                next_key: 0,
                waited_ticks: 0,
                retry: false,
            })
            .collect();
        let mut sim = Sim {
            rng,
            slow_rng,
            lost_rng,
            lost_pending: None,
            p,
            world,
            members,
            start: Instant::now(),
            now_ms: 0,
            clients,
            acked: BTreeMap::new(),
            leaders: HashMap::new(),
            hashes: HashMap::new(),
            committed: BTreeMap::new(),
            entry_prev: HashMap::new(),
            checked_leaders: Default::default(),
            trace: VecDeque::new(),
            turning: None,
            stats: Stats::default(),
        };
        for id in sim.ids() {
            sim.restart(id);
        }
        sim
    }

    fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.now_ms)
    }

    fn note(&mut self, s: String) {
        if self.trace.len() == TRACE_EVENTS_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {s}", self.now_ms));
    }

    fn restart(&mut self, id: NodeId) {
        let now = self.now();
        let start = self.start;
        let m = self.members.get_mut(&id).expect("member");
        if m.node.is_some() {
            return;
        }
        let disk = SimDisk::open(&m.image, &m.faults);
        let (peer, _) = addrs(id);
        let net = SimNet::new(&self.world, id, peer);
        let seed = m.cfg.seed.unwrap_or(id.0);
        let mut cfg = m.cfg.clone();
        if id == NodeId(1) && m.starts == 1 {
            // Node 1 forms the cluster, once; the others are admitted as they connect.
            cfg.initial_cluster_state = InitialClusterState::New;
        }
        let node = Node::start(
            cfg,
            m.join,
            move || KvStore::new(seed),
            disk,
            net,
            start,
            now,
            m.starts << 32,
        )
        .unwrap_or_else(|e| panic!("node {id} does not recover: {e}"));
        m.starts += 1;
        m.node = Some(node);
        self.world.borrow_mut().set_up(id, true);
        self.note(format!("start {id}"));
    }

    /// Before node `id` restarts: now and then its whole storage is gone (a replaced disk),
    /// only while a quorum of intact voters remains without it: a leader is up, its
    /// configuration has at least three voters, and every other voter is up and voting as the
    /// incarnation the membership records. The node comes back as a new incarnation; the
    /// checks prove no acknowledged write is lost.
    fn maybe_lose_storage(&mut self, id: NodeId) {
        if self.p.storage_loss == 0 || self.lost_pending.is_some() {
            return;
        }
        if self.lost_rng.range(0, 1000) >= self.p.storage_loss {
            return;
        }
        let Some(leader) = self.leader() else {
            return;
        };
        let conf = self.members[&leader]
            .node
            .as_ref()
            .expect("up")
            .raft()
            .conf()
            .clone();
        let others_voting = conf.voters.iter().filter(|&&v| v != id).all(|v| {
            self.members[v]
                .node
                .as_ref()
                .is_some_and(|n| n.raft().voting())
        });
        if conf.voters.len() < 3 || !others_voting || self.members[&id].starts <= 1 {
            return;
        }
        let m = &self.members[&id];
        *m.image.borrow_mut() = Image::default();
        self.lost_pending = Some(id);
        self.stats.storage_losses += 1;
        self.note(format!("storage of {id} lost"));
    }

    /// Stop `id` as a crash does: unsynced pages partly lost, connections gone.
    fn crash(&mut self, id: NodeId, why: &str) {
        let m = self.members.get_mut(&id).expect("member");
        let Some(mut node) = m.node.take() else {
            return;
        };
        let (kept, total) = node.disk_mut().crash(&mut self.rng);
        drop(node);
        m.faults.borrow_mut().fail_next_sync = false;
        m.faults.borrow_mut().slow_next_sync_ticks = 0;
        // A crash during a slow sync strikes as it returns: what it synced stays, and the
        // turn's output, still held, is lost with the connections.
        m.busy_until_ms = 0;
        m.down_ticks = self.rng.range(1, 100);
        self.world.borrow_mut().drop_node(id);
        self.stats.crashes += 1;
        self.stats.pages_kept += kept as u64;
        self.stats.pages_lost += (total - kept) as u64;
        self.note(format!(
            "crash {id} ({why}; kept {kept} of {total} unsynced pages)"
        ));
    }

    fn run(&mut self) {
        for _ in 0..CHAOS_TICKS {
            self.faults();
            self.step(true);
        }
        self.heal();
        self.check_progress();
        self.check_acked_writes();
    }

    /// One tick: the network delivers, every live node takes its turn, clients act; then
    /// every check runs.
    fn step(&mut self, clients: bool) {
        self.now_ms += TICK_MS;
        self.stats.ticks += 1;
        let now = self.now();
        self.world.borrow_mut().deliver(self.now_ms, &mut self.rng);
        for id in self.ids() {
            self.node_turn(id, now);
        }
        if clients {
            for c in 0..self.clients.len() {
                self.client_step(c);
            }
        }
        self.check();
    }

    fn node_turn(&mut self, id: NodeId, now: Instant) {
        let world = self.world.clone();
        let m = self.members.get_mut(&id).expect("member");
        let Some(node) = m.node.as_mut() else {
            if m.down_ticks > 0 {
                m.down_ticks -= 1;
                if m.down_ticks == 0 {
                    self.maybe_lose_storage(id);
                    self.restart(id);
                }
            }
            return;
        };
        if m.busy_until_ms > self.now_ms {
            return; // still in the turn that ran a slow sync
        }
        let accepts = world.borrow_mut().take_accepts(id);
        node.set_now(now);
        for (conn, what, addr) in accepts {
            node.accept(SimStream::accepted(&world, conn), addr, what);
        }
        let ready = world.borrow().ready_keys(id);
        self.turning = Some(id);
        let result = node.turn(now, &ready);
        self.turning = None;
        let stall_ticks = node.disk_mut().take_stall_ticks();
        if stall_ticks > 0 {
            m.busy_until_ms = self.now_ms + stall_ticks * TICK_MS;
            world.borrow_mut().hold_output(id, m.busy_until_ms);
            self.stats.slow_syncs += 1;
            self.stats.slow_sync_ticks += stall_ticks;
            self.note(format!("slow sync on {id}: {stall_ticks} ticks"));
        }
        if let Err(e) = result {
            self.stats.sync_failures += 1;
            self.crash(id, &format!("stopped: {e}"));
        }
    }

    fn faults(&mut self) {
        let p = self.p.clone();
        for id in self.ids() {
            let up = self.members[&id].node.is_some();
            if up && self.rng.range(0, 1000) < p.crash {
                self.crash(id, "killed");
            }
            if up && self.rng.range(0, 1000) < p.sync_fail {
                self.members[&id].faults.borrow_mut().fail_next_sync = true;
            }
            if up && self.slow_rng.range(0, 1000) < p.slow_sync {
                let ticks = self.slow_rng.range(1, p.slow_sync_ticks_max + 1);
                self.members[&id].faults.borrow_mut().slow_next_sync_ticks = ticks;
            }
            if self.rng.range(0, 1000) < p.disk_full {
                let f = &self.members[&id].faults;
                let full = !f.borrow().full;
                f.borrow_mut().full = full;
                self.stats.disk_full += u64::from(full);
                self.note(format!("disk of {id} full={full}"));
            }
        }
        if self.rng.range(0, 1000) < p.power_cut {
            self.stats.power_cuts += 1;
            self.note("power cut".into());
            for id in self.ids() {
                self.crash(id, "power cut");
            }
        }
        if self.rng.range(0, 1000) < p.partition {
            self.partition();
        }
    }

    fn partition(&mut self) {
        let mut w = self.world.borrow_mut();
        if !w.blocked.is_empty() && self.rng.chance(1, 2) {
            w.blocked.clear();
            drop(w);
            self.note("partition healed".into());
            return;
        }
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        let mut side = Vec::new();
        for &id in &ids {
            if self.rng.chance(1, 3) {
                side.push(id);
            }
        }
        let one_way = self.rng.chance(1, 4);
        for &a in &side {
            for &b in &ids {
                if !side.contains(&b) {
                    w.blocked.insert((a, b));
                    if !one_way {
                        w.blocked.insert((b, a));
                    }
                }
            }
        }
        drop(w);
        self.stats.partitions += 1;
        self.note(format!("partition {side:?} one_way={one_way}"));
    }

    fn heal(&mut self) {
        self.world.borrow_mut().blocked.clear();
        self.world.borrow_mut().faults = Default::default();
        for id in self.ids() {
            *self.members[&id].faults.borrow_mut() = DiskFaults::default();
            self.restart(id);
        }
        self.note("healed".into());
    }

    // --- clients ---------------------------------------------------------------------------

    fn client_step(&mut self, c: usize) {
        if self.clients[c].stream.is_none() {
            let ids = self.ids();
            let target = ids[self.rng.range(0, ids.len() as u64) as usize];
            let (_, addr) = addrs(target);
            let id = self.clients[c].id;
            let cl = &mut self.clients[c];
            cl.stream = SimStream::client_connect(&self.world, id, addr);
            cl.inbuf.clear();
            cl.pending.clear();
        }
        if self.clients[c].stream.is_none() {
            return;
        }
        let before = self.clients[c].pending.len();
        self.client_read(c);
        let cl = &mut self.clients[c];
        cl.waited_ticks = match cl.pending.len() < before || cl.pending.is_empty() {
            true => 0,
            false => cl.waited_ticks + 1,
        };
        // A client gives up on a node that answers errors or nothing (a removed member, one
        // cut off by a partition) and connects to another; unanswered writes stay unknown.
        let stuck = cl.waited_ticks > CLIENT_PATIENCE_TICKS;
        if stuck || (cl.retry && cl.pending.is_empty()) {
            cl.stream = None;
            cl.retry = false;
            cl.waited_ticks = 0;
        }
        if cl.stream.is_none() {
            return;
        }
        if matches!(cl.pending.back(), Some(Op::Garbage)) {
            if self.rng.chance(1, 30) {
                cl.stream = None; // give up on it; its outcome does not matter
            }
            return;
        }
        if cl.pending.len() < CLIENT_PIPELINE_MAX && self.rng.chance(1, 3) {
            self.client_send(c);
        }
    }

    fn client_send(&mut self, c: usize) {
        let roll = self.rng.range(0, 1000);
        let mut out = Vec::new();
        let op = if roll < self.p.garbage {
            self.stats.garbage_sent += 1;
            out = garbage(&mut self.rng);
            Op::Garbage
        } else if self.p.membership && roll < self.p.garbage + 30 {
            self.stats.admin_sent += 1;
            let args = self.admin_command();
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            resp::encode_command(&refs, &mut out);
            Op::Any
        } else if roll < 600 || self.acked.is_empty() {
            let cl = &mut self.clients[c];
            cl.next_key += 1;
            let key = format!("c{}-k{}", cl.id, cl.next_key).into_bytes();
            let size = [1usize, 40, 3000][self.rng.range(0, 3) as usize];
            let value = vec![b'a' + (self.rng.range(0, 26) as u8); size];
            resp::encode_command(&[b"SET", &key, &value], &mut out);
            Op::Set { key, value }
        } else {
            let n = self.rng.range(0, self.acked.len() as u64) as usize;
            let (key, value) = self.acked.iter().nth(n).expect("in range");
            let (key, value) = (key.clone(), value.clone());
            resp::encode_command(&[b"GET", &key], &mut out);
            Op::Get { key, value }
        };
        let cl = &mut self.clients[c];
        let stream = cl.stream.as_mut().expect("connected");
        if std::io::Write::write_all(stream, &out).is_err() {
            cl.stream = None;
            return;
        }
        cl.pending.push_back(op);
    }

    fn admin_command(&mut self) -> Vec<Vec<u8>> {
        let ids = self.ids();
        let target = ids[self.rng.range(0, ids.len() as u64) as usize];
        let t = target.0.to_string().into_bytes();
        let (peer, client) = addrs(target);
        // Adding a learner that is already a voter demotes it, the leader included. (Once
        // left out: a leader that demoted itself, its entry reaching only itself, left no node
        // able to win an election, seeds 723 and 2903; the core now lets a voter of the
        // committed configuration campaign, raft/membership.rs "Campaigning while changed out".)
        let mut pick = self.rng.range(0, 5);
        if self.lost_pending.is_some() && pick < 3 {
            // A member that lost its storage is being re-admitted: removing or demoting
            // another voter meanwhile could leave a majority of voters unable to vote, which
            // is unavailability by design (seed 79: voters {1, 3}, node 3's disk lost).
            pick = 4;
        }
        match pick {
            0 => vec![
                b"MEMBER".to_vec(),
                b"ADD".to_vec(),
                t,
                peer.to_string().into_bytes(),
                client.to_string().into_bytes(),
                b"LEARNER".to_vec(),
            ],
            1 => vec![b"MEMBER".to_vec(), b"PROMOTE".to_vec(), t],
            2 => vec![b"MEMBER".to_vec(), b"REMOVE".to_vec(), t],
            3 => vec![b"TRANSFER".to_vec(), t],
            _ => vec![b"SNAPSHOT".to_vec()],
        }
    }

    fn client_read(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let Some(stream) = cl.stream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match std::io::Read::read(stream, &mut buf) {
                Ok(0) => break,
                Ok(n) => cl.inbuf.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        loop {
            let cl = &mut self.clients[c];
            let (v, n) = match resp::parse_value(&cl.inbuf) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => panic!("client {}: the node sent an unparsable reply: {e}", cl.id),
            };
            cl.inbuf.drain(..n);
            if matches!(cl.pending.front(), Some(Op::Garbage)) {
                continue;
            }
            let Some(op) = cl.pending.pop_front() else {
                panic!("client {}: a reply nobody asked for: {v:?}", cl.id);
            };
            if matches!(v, Value::Error(_)) && self.rng.chance(1, 2) {
                // Like a real client: after an error, try another node.
                self.clients[c].retry = true;
            }
            self.settle(op, v);
        }
        let cl = &mut self.clients[c];
        let ended = cl.stream.as_ref().is_some_and(|s| s.at_end());
        if ended {
            cl.stream = None;
        }
    }

    fn settle(&mut self, op: Op, v: Value) {
        match (op, v) {
            (Op::Set { key, value }, Value::Simple(s)) if s == "OK" => {
                self.stats.writes_acked += 1;
                self.acked.insert(key, value);
            }
            (Op::Get { key, value }, Value::Bulk(got)) => {
                self.stats.reads_checked += 1;
                assert!(
                    got == value,
                    "STALE READ: GET {} returned a value of {} bytes, the acknowledged write \
                     had {}",
                    String::from_utf8_lossy(&key),
                    got.len(),
                    value.len()
                );
            }
            (Op::Get { key, .. }, Value::Nil) => panic!(
                "LOST WRITE: GET {} found nothing after its write was acknowledged",
                String::from_utf8_lossy(&key)
            ),
            _ => {}
        }
    }

    // --- checks ----------------------------------------------------------------------------

    fn check(&mut self) {
        if let Some(id) = self.lost_pending {
            let back = |n: &SimNode| n.raft().voting() && n.raft().conf().is_voter(id);
            if self.members[&id].node.as_ref().is_some_and(back) {
                self.lost_pending = None;
                self.stats.readmitted += 1;
                self.note(format!("{id} voting again as its new incarnation"));
            }
        }
        for id in self.ids() {
            let Some(node) = self.members[&id].node.as_ref() else {
                continue;
            };
            node.check_invariants();
            let raft = node.raft();
            if raft.role() == Role::Leader {
                let prev = self.leaders.insert(raft.term(), id);
                assert!(
                    prev.is_none_or(|p| p == id),
                    "ELECTION SAFETY: nodes {} and {id} both lead term {}",
                    prev.unwrap_or(id),
                    raft.term()
                );
                if prev.is_none() {
                    self.stats.elections += 1;
                }
            }
            let (applied, hash) = (node.applied(), node.state_machine().state_hash());
            let seen = *self.hashes.entry(applied).or_insert(hash);
            assert_eq!(
                seen, hash,
                "STATE MACHINE SAFETY: node {id} at applied {applied} has another state"
            );
            self.check_log(id);
        }
    }

    /// Log matching on the newest entries, committed entries never change, and a leader
    /// holds every entry seen committed.
    fn check_log(&mut self, id: NodeId) {
        let node = self.members[&id].node.as_ref().expect("up");
        let raft = node.raft();
        let last = raft.last_id().index;
        let first = raft.status().first_index;
        let from = LogIndex(last.0.saturating_sub(4).max(first.0));
        let mut i = from;
        while i <= last && i.0 > 0 {
            if let Some(t) = raft.term_at(i) {
                let prev = raft.term_at(i.prev());
                let seen = self.entry_prev.entry((i, t)).or_insert(prev);
                if let (Some(a), Some(b)) = (*seen, prev) {
                    assert_eq!(a, b, "LOG MATCHING: node {id} holds {t}/{i} after term {b}, another node after {a}");
                }
            }
            i = i.next();
        }
        let commit = raft.commit();
        let known = self
            .committed
            .last_key_value()
            .map_or(LogIndex(0), |(&k, _)| k);
        let mut i = known.next().max(first);
        while i <= commit {
            if let Some(t) = raft.term_at(i) {
                self.committed.insert(i, (t, raft.term()));
            }
            i = i.next();
        }
        let hi = commit.min(last);
        let range = if first <= hi {
            self.committed.range(first..=hi)
        } else {
            self.committed.range(first..first)
        };
        for (&i, &(t, _)) in range {
            if let Some(mine) = raft.term_at(i) {
                assert_eq!(
                    mine, t,
                    "COMMITTED ENTRY CHANGED: node {id} holds {mine}/{i}, committed was {t}/{i}"
                );
            }
        }
        if raft.role() == Role::Leader && self.checked_leaders.insert((raft.term(), id)) {
            // §5.4: a leader holds every entry committed in an earlier term. A stale leader
            // of a term before the commit need not (a candidate whose votes arrived late
            // wins an old term while a newer leader commits: found with slow syncs, seed 1898).
            let earlier = self
                .committed
                .range(first..)
                .filter(|(_, &(_, seen))| seen < raft.term());
            for (&i, &(t, _)) in earlier {
                assert_eq!(
                    raft.term_at(i),
                    Some(t),
                    "LEADER COMPLETENESS: leader {id} of term {} lacks committed {t}/{i}",
                    raft.term()
                );
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let mut best: Option<(Term, NodeId)> = None;
        for m in self.members.values() {
            if let Some(n) = &m.node {
                if n.raft().role() == Role::Leader && best.is_none_or(|b| n.raft().term() > b.0) {
                    best = Some((n.raft().term(), m.id));
                }
            }
        }
        best.map(|b| b.1)
    }

    /// After healing: a leader, and a new write acknowledged, within the bound.
    fn check_progress(&mut self) {
        let acked_before = self.stats.writes_acked;
        for t in 0..HEAL_BOUND_TICKS {
            self.step(true);
            if self.leader().is_some() && self.stats.writes_acked > acked_before {
                self.note(format!("progress after {t} ticks"));
                return;
            }
        }
        panic!(
            "NO PROGRESS: {HEAL_BOUND_TICKS} ticks after healing, leader {:?}, {} writes acked",
            self.leader(),
            self.stats.writes_acked - acked_before
        );
    }

    /// Every acknowledged write is in the leader's state once it applied all it committed.
    fn check_acked_writes(&mut self) {
        for _ in 0..HEAL_BOUND_TICKS {
            // A new leader's commit may lag what others applied until it commits an entry of
            // its own term: wait for it to catch up with every node.
            let applied_max = self
                .members
                .values()
                .filter_map(|m| m.node.as_ref().map(|n| n.applied()))
                .max()
                .unwrap_or_default();
            if let Some(l) = self.leader() {
                let n = self.members[&l].node.as_ref().expect("up");
                if n.applied() == n.raft().commit() && n.applied() >= applied_max {
                    break;
                }
            }
            self.step(false);
        }
        let l = self.leader().expect("a leader after healing");
        let n = self.members[&l].node.as_ref().expect("up");
        let sm = n.state_machine();
        for (key, value) in &self.acked {
            let args = [b"GET".to_vec(), key.clone()];
            let Some(Request::Read(q)) = sm.parse(&args) else {
                panic!("GET does not parse as a read");
            };
            match sm.query(&q) {
                Value::Bulk(v) if &v == value => {}
                other => panic!(
                    "LOST WRITE: leader {l} holds {:?} for {}, acknowledged with {} bytes",
                    other,
                    String::from_utf8_lossy(key),
                    value.len()
                ),
            }
        }
    }
}

/// Malformed or oversized requests: each must get an error (or nothing) and never crash.
fn garbage(rng: &mut Prng) -> Vec<u8> {
    let huge = (kvraft::limits::CLIENT_REQUEST_SIZE_MAX * 2).to_string();
    match rng.range(0, 6) {
        0 => format!("*2\r\n$3\r\nGET\r\n${huge}\r\n").into_bytes(),
        1 => format!("*{huge}\r\n").into_bytes(),
        2 => b"*1\r\n$x\r\n".to_vec(),
        3 => b"*-7\r\n:1\r\n$3\r\nSET\r\n".to_vec(),
        4 => {
            let mut v = vec![0u8; rng.range(1, 200) as usize];
            rng.fill(&mut v);
            v
        }
        _ => b"MGET a b c\r\nSET\r\nINCR\r\n".to_vec(),
    }
}

fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    let r = catch_unwind(AssertUnwindSafe(|| sim.run()));
    if let Err(e) = r {
        eprintln!("--- seed {seed} failed; params {:?}; last events:", sim.p);
        for line in &sim.trace {
            eprintln!("  {line}");
        }
        if let Some(id) = sim.turning {
            eprintln!("  (in the turn of node {id})");
        }
        for m in sim.members.values() {
            if let Some(n) = &m.node {
                let st = n.raft().status();
                eprintln!(
                    "  node {}: {:?} term {} commit {} log {}..{} core snapshot {} applied {} durable {:?} image log ({}, +{}] snaps {:?} disk {:?}",
                    m.id,
                    st.role,
                    st.term,
                    st.commit,
                    st.first_index,
                    st.last_index,
                    st.snapshot.last,
                    n.applied(),
                    n.durable(),
                    m.image.borrow().log_offset,
                    m.image.borrow().log.len(),
                    m.image.borrow().snapshots.keys().collect::<Vec<_>>(),
                    m.faults.borrow()
                );
                eprintln!("    conf {:?} progress {:?}", st.conf, st.progress);
            }
        }
        eprintln!("replay: make sim SEED={seed}");
        std::panic::resume_unwind(e);
    }
    sim.stats
}

#[test]
fn simulated_clusters_of_real_nodes_keep_every_safety_property_and_recover_after_faults_heal() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..n).collect()
        }
    };
    let t0 = Instant::now();
    let mut total = Stats::default();
    for seed in seeds.iter().copied() {
        total.add(&run_seed(seed));
    }
    eprintln!("{} seeds in {:.1?}: {total:?}", seeds.len(), t0.elapsed());
}
