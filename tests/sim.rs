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
//! Damaged storage: now and then, before a restart under the same condition as a lost
//! storage, a byte of the synced log flips or a segment followed by another is cut short
//! (`Image::damage`); at a crash a surviving unsynced page may have a flipped byte. The real
//! recovery judges each (`wal::image::judge`): an unsynced one is a torn tail, cut; synced
//! damage is detected, the node keeps the intact prefix and rejoins as a new incarnation.
//! Broken on purpose (startup.rs ignoring the damage, so the node kept voting on the cut
//! log as its old self), 300 seeds failed at seed 220: "LEADER COMPLETENESS: leader 2 of term
//! 5 lacks committed 3/95".
//!
//! An uncertain tail (raft/uncertain.rs): a flip in the newest synced batch of the last
//! segment is injected too (`tail_flips`, under the same condition, and never while another
//! such node is still uncertain: damage on one node at a time); the real recovery cuts it as a
//! torn tail, and the node, uncertain since its term, votes and campaigns only past the bar
//! its peers' positions set. Every crash that tears unsynced pages leaves an uncertain start
//! too (`uncertain_starts`, `uncertain_clears`), so power cuts leave every member uncertain at
//! once: the progress checks prove they still elect a leader.
//!
//! Faults: peer frames lost, duplicated, delayed and reordered; partitions that come and go;
//! crashes and restarts (a crash loses unsynced log pages, any subset, torn at page
//! granularity), failed fsyncs (the node stops, as the daemon does, and is restarted: a crash
//! in the middle of a turn, after the append and before the sync), slow syncs, a full disk,
//! slow snapshots, whole-cluster power cuts, graceful stops (a SIGTERM: `Node::begin_stop`,
//! then the node stops once `stop_ready`, a leader after handing off; drawn from a stream of
//! their own, so the other draws of a seed are as they were).
//!
//! A slow sync is durable when it returns (the `Disk` contract: the daemon's fsync blocks its
//! one thread) and takes 1 to `slow_sync_ticks_max` ticks: the turn that ran it ends that
//! much later. The node takes no turn meanwhile (messages and clients wait for it, its peers'
//! election timers run), what it wrote in that turn leaves only when the turn ends
//! (`World::hold_output`), and its next turn catches up the ticks it missed. A crash during
//! those ticks strikes as the sync returns: what it synced stays, the held output is lost. Clients write and read through any node (followers
//! forward writes and serve plain reads themselves at a read index the leader confirms), send malformed and oversized requests, and (in some seeds) membership changes
//! and leadership transfers as client commands. Each node has its own wall clock (fed through
//! `Node::set_wall_ms`) that starts apart from the others, drifts (±5%) and jumps (±3 s,
//! either way); in half the seeds clients also send TTL commands (`Clocks`). In the odd seeds
//! the cluster has `requirepass` and `adminpass`: every client connection AUTHs first (now
//! and then after a write that must answer NOAUTH), and the admin commands of the clients
//! that are `default` must answer NOPERM, through any node (issue 18). Every forwarded request
//! carries its connection's rights (`check_forwarded_rights`): never none, always admin
//! without passwords, and over a run both the default user's and the admin's.
//!
//! After every step: each node's `check_invariants()`; election safety (one leader per term);
//! log matching (an entry id always follows the same term); leader completeness (a leader
//! holds every entry seen committed in an earlier term); state-machine safety (two replicas at
//! one applied index have the same state hash); a committed entry never changes; a read of a
//! key whose write was acknowledged before the read was sent returns that write. After the
//! faults heal: a leader is elected and a new write is acknowledged within a bound, and every
//! acknowledged write is in the leader's state. Clients also run check-and-increment
//! transactions on two shared keys (`send_transaction`: WATCH and GET, then MULTI, INCR, INCR,
//! MGET, EXEC): an applied EXEC shows both counters equal (applied whole), and one above the
//! GET when its WATCH held (no missed change; a planted WATCH that never aborts fails seed 2).
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
//! `SIM_SEED=n` replays one seed; `SIM_SEEDS=n` runs seeds 0..n (default `DEFAULT_SEEDS`), and
//! the `REGRESSION_SEEDS` past n.
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
use support::sim_disk::{DiskFaults, FaultsRef, Image, ImageRef, Injected, SimDisk};
use support::sim_net::{SimNet, SimStream, World, WorldRef};

type SimNode = Node<KvStore, SimDisk, SimNet>;

const TICK_MS: u64 = 10;
const CHAOS_TICKS: u64 = 1000;
/// How long after a membership command is sent storage losses wait (`may_lose_storage`).
const ADMIN_SETTLE_MS: u64 = 3_000;

/// Ticks after healing within which a leader must be elected and a write acknowledged.
const HEAL_BOUND_TICKS: u64 = 1500;
const DEFAULT_SEEDS: u64 = 300;
/// Seeds past the default range that once failed, run with every range: a sync of log entries
/// replaced since they were handed out ("synced N beyond what was handed out", `RaftLog::synced_to`).
const REGRESSION_SEEDS: &[u64] = &[4610, 7186, 9605, 11906, 12066, 14634, 15106, 16339];
/// Requests a simulated client keeps in its pipeline.
const CLIENT_PIPELINE_MAX: usize = 3;
const TRACE_EVENTS_MAX: usize = 400;
/// Per mille of client requests that are a pipelined transaction (`send_transaction`).
const TX_PER_MILLE: u64 = 60;
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
    /// Per mille of restarts: synced log data is damaged first (a flipped byte or a segment
    /// cut short; same condition as a storage loss).
    damage: u64,
    /// Per mille of crashes: a surviving unsynced page has a flipped byte.
    flip_unsynced: u64,
    /// Per mille per tick: a SIGTERM (drawn from its own stream, after the rest).
    graceful_stop: u64,
    /// `leader_sync_wait_ms` (not drawn: from the seed).
    leader_sync_wait_ms: u64,
    clients: u64,
    garbage: u64,
    membership: bool,
    /// The cluster has `requirepass` and `adminpass` (odd seeds; not drawn, so the other
    /// draws of every seed stay as they were): every client AUTHs first, some after a
    /// command that must answer NOAUTH; odd clients are `default` and their admin commands
    /// must answer NOPERM, even ones are `admin`.
    auth: bool,
}

impl Params {
    /// `slow`: a stream of its own for the slow-sync fault, so that adding it left every
    /// other draw of a seed (and the seeds cited above) as it was.
    fn draw(rng: &mut Prng, slow: &mut Prng, lost: &mut Prng, damage: &mut Prng) -> Params {
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
            damage: [0, 200, 500][damage.range(0, 3) as usize],
            flip_unsynced: [0, 200, 500][damage.range(0, 3) as usize],
            graceful_stop: 0,
            leader_sync_wait_ms: 5,
            clients: rng.range(1, 5),
            garbage: [0, 20, 100][rng.range(0, 3) as usize],
            membership,
            auth: false,
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
    txs_applied: u64,
    txs_aborted: u64,
    garbage_sent: u64,
    admin_sent: u64,
    /// NOAUTH and NOPERM answers checked (seeds with `Params::auth`).
    auth_refusals: u64,
    /// Forwarded requests by the rights they carried (`check_forwarded_rights`).
    forwarded_rights: [u64; 3],
    /// Read indexes leaders confirmed to followers (follower reads, `clients.rs`).
    read_indexes_confirmed: u64,
    elections: u64,
    /// Syncs that took time, and the ticks they took.
    slow_syncs: u64,
    slow_sync_ticks: u64,
    /// Restarts with the whole storage lost, and re-admissions seen (the node voting again).
    storage_losses: u64,
    readmitted: u64,
    /// Damage to synced log data injected at a restart and detected by the real recovery:
    /// flipped bytes, segments cut short; flips in the newest synced batch, which the WAL cuts
    /// as a torn tail (an uncertain tail); flipped bytes in unsynced pages at a crash.
    flips_synced: u64,
    cuts_synced: u64,
    tail_flips: u64,
    flips_unsynced: u64,
    /// Starts with an uncertain log tail (non-zero bytes cut: torn pages or a tail flip), and
    /// nodes that cleared the uncertainty (raft/uncertain.rs).
    uncertain_starts: u64,
    uncertain_clears: u64,
    /// SIGTERMs, and the stops they led to.
    sigterms: u64,
    graceful_stops: u64,
    /// Session workload: tagged INCRs acknowledged, and resends of one.
    session_incrs_acked: u64,
    session_resends: u64,
    /// TTL commands sent, clock jumps, and keys expired (the most any replica counted).
    ttl_sent: u64,
    clock_jumps: u64,
    keys_expired: u64,
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
        self.txs_applied += o.txs_applied;
        self.txs_aborted += o.txs_aborted;
        self.reads_checked += o.reads_checked;
        self.garbage_sent += o.garbage_sent;
        self.admin_sent += o.admin_sent;
        self.auth_refusals += o.auth_refusals;
        self.read_indexes_confirmed += o.read_indexes_confirmed;
        for (t, r) in self.forwarded_rights.iter_mut().zip(o.forwarded_rights) {
            *t += r;
        }
        self.elections += o.elections;
        self.slow_syncs += o.slow_syncs;
        self.slow_sync_ticks += o.slow_sync_ticks;
        self.storage_losses += o.storage_losses;
        self.readmitted += o.readmitted;
        self.flips_synced += o.flips_synced;
        self.cuts_synced += o.cuts_synced;
        self.tail_flips += o.tail_flips;
        self.uncertain_starts += o.uncertain_starts;
        self.uncertain_clears += o.uncertain_clears;
        self.flips_unsynced += o.flips_unsynced;
        self.sigterms += o.sigterms;
        self.graceful_stops += o.graceful_stops;
        self.session_incrs_acked += o.session_incrs_acked;
        self.session_resends += o.session_resends;
        self.ttl_sent += o.ttl_sent;
        self.clock_jumps += o.clock_jumps;
        self.keys_expired += o.keys_expired;
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
    /// Its log tail was uncertain when last seen up (`Stats::uncertain_clears`).
    was_uncertain: bool,
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
    /// One reply of a pipelined transaction (see `send_transaction`).
    Tx(TxStep),
    /// `AUTH`: `+OK`, always (the node answers it itself).
    Auth,
    /// A command before `AUTH`, or an admin command of a `default` client: exactly this
    /// refusal (`Params::auth`).
    Refused(&'static str),
}

/// The replies of the pipeline `send_transaction` sends, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxStep {
    Watch,
    Get,
    Multi,
    Queued,
    Exec,
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
    /// The transaction whose replies are arriving: whether its WATCH was answered +OK, and
    /// the value its GET read (see `settle_tx`).
    tx_watched: bool,
    tx_before: Option<i64>,
}

struct Sim {
    rng: Prng,
    /// Draws for slow syncs only (see `Params::draw`).
    slow_rng: Prng,
    /// The graceful-stop fault's own stream.
    stop_rng: Prng,
    /// Draws for storage loss only.
    lost_rng: Prng,
    /// Draws for log damage (synced and unsynced) only.
    damage_rng: Prng,
    /// A node whose storage was lost or damaged and that is not yet a voter again as its new
    /// incarnation: no other storage is lost or damaged meanwhile (losing a second voter could
    /// lose a majority, which is unavailability by design, not a defect to find).
    lost_pending: Option<NodeId>,
    /// When the last membership command (`admin_command`) was sent: until it has had time to
    /// reach the leader's log, no storage is lost (`may_lose_storage`).
    admin_sent_ms: Option<u64>,
    /// A node whose newest synced batch was damaged (a tail flip) and that is still uncertain
    /// (it may lack acknowledged entries): no other storage is lost or damaged meanwhile
    /// (raft/uncertain.rs assumes damage on one node at a time).
    flip_pending: Option<NodeId>,
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
    /// The session workload's clients (see `SessionClient`), with their own generator.
    session_clients: Vec<SessionClient>,
    session_rng: Prng,
    /// Per-node wall clocks and TTL commands (kvttl).
    clocks: Clocks,
}

fn addrs(id: NodeId) -> (SocketAddr, SocketAddr) {
    let ip = [10, 0, 0, id.0 as u8];
    ((ip, 7000).into(), (ip, 6000).into())
}

fn config_text(ids: &[u64], seed: u64, p: &Params) -> String {
    let mut t = format!(
        "cluster_name = sim\ndata_dir = /sim/node{{id}}\ntick_ms = {TICK_MS}\n\
         election_timeout_ms = 150\nheartbeat_interval_ms = 30\n\
         snapshot_entries = {}\nsnapshot_keep_entries = 5\nsnapshot_chunk_bytes = 4096\nseed = {seed}\n\
         leader_sync_wait_ms = {}\n",
        p.snapshot_entries, p.leader_sync_wait_ms
    );
    for &i in ids {
        let (peer, client) = addrs(NodeId(i));
        t.push_str(&format!("node.{i} = peer={peer} client={client}\n"));
    }
    if p.auth {
        t.push_str(&format!(
            "requirepass = {SIM_DATA_PASS}\nadminpass = {SIM_ADMIN_PASS}\n"
        ));
    }
    t
}

/// The passwords of the seeds with `Params::auth`.
const SIM_DATA_PASS: &str = "sim-data";
const SIM_ADMIN_PASS: &str = "sim-admin";

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Prng::new(seed);
        let mut slow_rng = Prng::new(seed ^ 0x5105_5c4c);
        let mut lost_rng = Prng::new(seed ^ 0x1057_d15c);
        let mut damage_rng = Prng::new(seed ^ 0xda3a_9e00);
        let mut p = Params::draw(&mut rng, &mut slow_rng, &mut lost_rng, &mut damage_rng);
        let mut stop_rng = Prng::new(seed ^ 0x5167_7e53);
        p.graceful_stop = [0, 1, 5][stop_rng.range(0, 3) as usize];
        p.auth = seed % 2 == 1;
        // The leader's own sync (`node/stored.rs`): never deferred, the daemon's default
        // (under a tick, so any follower is "slow" here), and two waits of whole ticks under
        // which a healthy cluster's leader defers (seeds 2 and 3 mod 4). Not a draw: every
        // other draw of a seed stays as it was.
        p.leader_sync_wait_ms = [0, 5, 40, 200][(seed / 2 % 4) as usize];
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
                was_uncertain: false,
            };
            members.insert(NodeId(i), m);
        }
        let voters_and_joiners: Vec<NodeId> = members.keys().copied().collect();
        let clients = (0..p.clients)
            .map(|id| Client {
                id,
                stream: None,
                inbuf: Vec::new(),
                pending: VecDeque::new(),
                next_key: 0,
                waited_ticks: 0,
                retry: false,
                tx_watched: false,
                tx_before: None,
            })
            .collect();
        let mut sim = Sim {
            rng,
            slow_rng,
            stop_rng,
            lost_rng,
            damage_rng,
            lost_pending: None,
            admin_sent_ms: None,
            flip_pending: None,
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
            session_clients: Vec::new(),
            session_rng: Prng::new(seed ^ 0x5e55_1045),
            clocks: Clocks::new(seed, &voters_and_joiners),
        };
        sim.add_session_clients();
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
        let uncertain_start = kvraft::node::storage::Disk::uncertain_tail(&disk).is_some();
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
        let uncertain = node.raft().uncertain();
        m.node = Some(node);
        self.world.borrow_mut().set_up(id, true);
        self.stats.uncertain_starts += u64::from(uncertain_start);
        self.note(format!(
            "start {id}{}",
            match uncertain {
                Some(t) => format!(" (log tail uncertain since term {t})"),
                None => String::new(),
            }
        ));
    }

    /// Before node `id` restarts: now and then its whole storage is gone (a replaced disk),
    /// or its synced log is damaged (`maybe_damage_log`), only while a quorum of intact voters
    /// remains without it (`may_lose_storage`). The node comes back as a new incarnation; the
    /// checks prove no acknowledged write is lost.
    fn maybe_lose_storage(&mut self, id: NodeId) {
        if self.p.storage_loss == 0 || self.lost_pending.is_some() || self.flip_pending.is_some() {
            return;
        }
        if self.lost_rng.range(0, 1000) >= self.p.storage_loss {
            return;
        }
        if !self.may_lose_storage(id) {
            return;
        }
        let m = &self.members[&id];
        *m.image.borrow_mut() = Image::default();
        self.lost_pending = Some(id);
        self.stats.storage_losses += 1;
        self.note(format!("storage of {id} lost"));
    }

    /// Whether `id` may lose (or damage) its storage: a leader is up, its configuration has at
    /// least three voters, and every other voter is up and voting as the incarnation the
    /// membership records; and no membership command sent in the last `ADMIN_SETTLE_MS` may
    /// still be on its way to the leader's log. (Seed 128 of the follower-reads change: a
    /// `MEMBER ADD 3 .. LEARNER` sent 10 ms before node 1 lost its storage demoted 3 after the
    /// check, leaving voters {1, 2} with 1 a new incarnation: no quorum, ever.)
    fn may_lose_storage(&self, id: NodeId) -> bool {
        if self
            .admin_sent_ms
            .is_some_and(|at| self.now_ms < at + ADMIN_SETTLE_MS)
        {
            return false;
        }
        let Some(leader) = self.leader() else {
            return false;
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
        conf.voters.len() >= 3 && others_voting && self.members[&id].starts > 1
    }

    /// Before node `id` restarts: now and then a byte of its synced log flips or a segment is
    /// cut short (`Image::damage`, judged by the real recovery). Detected damage makes the node
    /// a new incarnation that keeps the intact prefix and is re-admitted.
    fn maybe_damage_log(&mut self, id: NodeId) {
        if self.p.damage == 0 || self.lost_pending.is_some() || self.flip_pending.is_some() {
            return;
        }
        if self.damage_rng.range(0, 1000) >= self.p.damage || !self.may_lose_storage(id) {
            return;
        }
        let injected = self.members[&id]
            .image
            .borrow_mut()
            .damage(&mut self.damage_rng);
        let (first_lost, what) = match injected {
            None => return,
            Some(Injected::TailFlip { first_cut }) => {
                // Not a new incarnation: the node keeps voting, under the uncertain rules.
                self.stats.tail_flips += 1;
                self.flip_pending = Some(id);
                self.note(format!(
                    "log of {id} damaged in its newest synced batch: cut as a torn tail from {first_cut}"
                ));
                return;
            }
            Some(Injected::Flip { first_lost }) => {
                self.stats.flips_synced += 1;
                (first_lost, "flipped byte")
            }
            Some(Injected::Cut { first_lost }) => {
                self.stats.cuts_synced += 1;
                (first_lost, "segment cut short")
            }
        };
        self.lost_pending = Some(id);
        self.note(format!(
            "log of {id} damaged ({what}): kept up to {}",
            first_lost.prev()
        ));
    }

    /// Stop `id` as a crash does: unsynced pages partly lost, connections gone.
    fn crash(&mut self, id: NodeId, why: &str) {
        let m = self.members.get_mut(&id).expect("member");
        let Some(mut node) = m.node.take() else {
            return;
        };
        let crashed =
            node.disk_mut()
                .crash(&mut self.rng, &mut self.damage_rng, self.p.flip_unsynced);
        let (kept, total) = (crashed.kept, crashed.pages);
        self.stats.flips_unsynced += u64::from(crashed.flipped);
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
            "crash {id} ({why}; kept {kept} of {total} unsynced pages{})",
            if crashed.flipped { ", one flipped" } else { "" }
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
        self.check_session_counters();
        self.check_forwarded_rights();
        self.stats.keys_expired = self
            .members
            .values()
            .filter_map(|m| m.node.as_ref())
            .map(|n| n.state_machine().ttl_stats(0).expired_keys)
            .max()
            .unwrap_or(0);
    }

    /// One tick: the network delivers, every live node takes its turn, clients act; then
    /// every check runs.
    /// A follower forwards a request with the rights of the client's connection: never
    /// none (an unauthenticated client's command is refused where it arrives), and without
    /// passwords always the admin's (every connection may do everything, `auth.rs` rule 2).
    /// Across seeds, both 1 (`default` clients) and 2 must be seen (the main test).
    fn check_forwarded_rights(&mut self) {
        let seen = self.world.borrow().forwarded_rights;
        assert_eq!(
            seen[0], 0,
            "FORWARD RIGHTS: unauthenticated requests were forwarded"
        );
        if !self.p.auth {
            assert_eq!(
                seen[1], 0,
                "FORWARD RIGHTS: without passwords, rights below admin"
            );
        }
        self.stats.forwarded_rights = seen;
        self.stats.read_indexes_confirmed = self.world.borrow().read_indexes_confirmed;
    }

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
            self.session_clients_step();
        }
        self.check();
    }

    fn node_turn(&mut self, id: NodeId, now: Instant) {
        let world = self.world.clone();
        let wall_ms = self.clocks.wall_ms(id, self.now_ms);
        let m = self.members.get_mut(&id).expect("member");
        let Some(node) = m.node.as_mut() else {
            if m.down_ticks > 0 {
                m.down_ticks -= 1;
                if m.down_ticks == 0 {
                    self.maybe_lose_storage(id);
                    self.maybe_damage_log(id);
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
        node.set_wall_ms(wall_ms);
        for (conn, what, addr) in accepts {
            node.accept(SimStream::accepted(&world, conn), addr, what);
        }
        let ready = world.borrow().ready_keys(id);
        self.turning = Some(id);
        let result = node.turn(now, &ready);
        self.turning = None;
        let stop_ready = result.is_ok() && node.stop_ready();
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
        } else if stop_ready {
            self.stop_gracefully(id);
        }
    }

    /// A node whose graceful stop is ready exits as the daemon does (`Node::shutdown`: a final
    /// sync), and restarts later like a crashed one.
    fn stop_gracefully(&mut self, id: NodeId) {
        let node = self.members.get_mut(&id).and_then(|m| m.node.as_mut());
        let result = node.expect("running").shutdown();
        self.stats.graceful_stops += 1;
        match result {
            Ok(()) => self.crash(id, "stopped gracefully"),
            Err(e) => self.crash(id, &format!("stopping: {e}")),
        }
    }

    fn faults(&mut self) {
        if let Some((id, by)) = self.clocks.maybe_jump() {
            self.stats.clock_jumps += 1;
            self.note(format!("clock {id} jumps {by} ms"));
        }
        let p = self.p.clone();
        for id in self.ids() {
            let up = self.members[&id].node.is_some();
            if up && self.rng.range(0, 1000) < p.crash {
                self.crash(id, "killed");
            }
            if up && self.rng.range(0, 1000) < p.sync_fail {
                self.members[&id].faults.borrow_mut().fail_next_sync = true;
            }
            if self.stop_rng.range(0, 1000) < p.graceful_stop {
                let node = self.members.get_mut(&id).and_then(|m| m.node.as_mut());
                if let Some(node) = node.filter(|n| !n.stopping()) {
                    node.begin_stop();
                    self.stats.sigterms += 1;
                    self.note(format!("SIGTERM {id}"));
                }
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
            if self.p.auth && self.clients[c].stream.is_some() {
                self.client_auth(c);
            }
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
        let op = if let Some(args) = self.clocks.ttl_command() {
            self.stats.ttl_sent += 1;
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            resp::encode_command(&refs, &mut out);
            Op::Any
        } else if roll < self.p.garbage {
            self.stats.garbage_sent += 1;
            out = garbage(&mut self.rng);
            Op::Garbage
        } else if self.p.membership && roll < self.p.garbage + 30 {
            self.stats.admin_sent += 1;
            let args = self.admin_command();
            self.admin_sent_ms = Some(self.now_ms);
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            resp::encode_command(&refs, &mut out);
            match self.p.auth && self.clients[c].id % 2 == 1 {
                true => Op::Refused("NOPERM User default has no permissions"),
                false => Op::Any,
            }
        } else if roll >= 1000 - TX_PER_MILLE && !self.transaction_open(c) {
            return self.send_transaction(c);
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

    /// A new connection of a cluster with passwords: now and then a write that must be
    /// refused (NOAUTH) first, then `AUTH` as `admin` (even clients) or `default` (odd).
    fn client_auth(&mut self, c: usize) {
        let mut out = Vec::new();
        let mut ops = Vec::new();
        if self.rng.chance(1, 4) {
            resp::encode_command(&[b"SET", b"never-written", b"x"], &mut out);
            ops.push(Op::Refused("NOAUTH Authentication required."));
        }
        match self.clients[c].id % 2 {
            0 => resp::encode_command(&[b"AUTH", b"admin", SIM_ADMIN_PASS.as_bytes()], &mut out),
            _ => resp::encode_command(&[b"AUTH", SIM_DATA_PASS.as_bytes()], &mut out),
        }
        ops.push(Op::Auth);
        let cl = &mut self.clients[c];
        let stream = cl.stream.as_mut().expect("connected");
        if std::io::Write::write_all(stream, &out).is_err() {
            cl.stream = None;
            return;
        }
        cl.pending.extend(ops);
    }

    // --- transactions (MULTI/EXEC/WATCH) ----------------------------------------------------

    /// Start one check-and-increment transaction on the two keys every client shares:
    /// `WATCH tx-a` and `GET tx-a` pipelined (the node reads the GET only after the WATCH's
    /// read: the session's barrier), then, once the GET is answered, `MULTI`, `INCR tx-a`,
    /// `INCR tx-b`, `MGET tx-a tx-b`, `EXEC` (`send_transaction_body`). Nothing else writes
    /// these keys, so an applied EXEC must show both counters equal (the entry applied whole)
    /// and, when its WATCH held, `tx-a` one above what the GET read: a change after the WATCH
    /// that did not abort the EXEC is a missed change.
    fn send_transaction(&mut self, c: usize) {
        let cmds: [&[&[u8]]; 2] = [&[b"WATCH", b"tx-a"], &[b"GET", b"tx-a"]];
        self.send_pipeline(c, &cmds, &[TxStep::Watch, TxStep::Get]);
    }

    /// Whether a transaction of this client awaits replies (one at a time: two interleaved
    /// on one connection would share its watches).
    fn transaction_open(&self, c: usize) -> bool {
        self.clients[c]
            .pending
            .iter()
            .any(|op| matches!(op, Op::Tx(_)))
    }

    /// The transaction itself, sent after its GET was answered (the GET must not race it).
    fn send_transaction_body(&mut self, c: usize) {
        let cmds: [&[&[u8]]; 5] = [
            &[b"MULTI"],
            &[b"INCR", b"tx-a"],
            &[b"INCR", b"tx-b"],
            &[b"MGET", b"tx-a", b"tx-b"],
            &[b"EXEC"],
        ];
        use TxStep::*;
        self.send_pipeline(c, &cmds, &[Multi, Queued, Queued, Queued, Exec]);
    }

    fn send_pipeline(&mut self, c: usize, cmds: &[&[&[u8]]], steps: &[TxStep]) {
        let mut out = Vec::new();
        for cmd in cmds {
            resp::encode_command(cmd, &mut out);
        }
        let cl = &mut self.clients[c];
        let Some(stream) = cl.stream.as_mut() else {
            return;
        };
        if std::io::Write::write_all(stream, &out).is_err() {
            cl.stream = None;
            return;
        }
        cl.pending.extend(steps.iter().map(|&s| Op::Tx(s)));
    }

    /// Check one reply of a transaction pipeline (see `send_transaction`).
    fn settle_tx(&mut self, c: usize, step: TxStep, v: Value) {
        let cl = &mut self.clients[c];
        let client = cl.id;
        match (step, v) {
            (TxStep::Watch, v) => {
                cl.tx_watched = v == Value::ok();
                cl.tx_before = None;
            }
            (TxStep::Get, v) => {
                cl.tx_before = match v {
                    Value::Nil => Some(0),
                    Value::Bulk(b) => String::from_utf8_lossy(&b).parse().ok(),
                    _ => None,
                };
                self.send_transaction_body(c);
            }
            (TxStep::Multi, v) => assert_eq!(v, Value::ok(), "client {client}: MULTI"),
            (TxStep::Queued, v) => {
                assert_eq!(
                    v,
                    Value::Simple("QUEUED".into()),
                    "client {client}: queueing"
                )
            }
            (TxStep::Exec, Value::NilArray) => {
                assert!(
                    cl.tx_watched,
                    "client {client}: EXEC aborted though its WATCH failed (nothing watched)"
                );
                self.stats.txs_aborted += 1;
            }
            (TxStep::Exec, Value::Array(items)) => {
                let (watched, before) = (cl.tx_watched, cl.tx_before);
                self.check_tx_reply(client, &items, watched.then_some(before).flatten());
                self.stats.txs_applied += 1;
            }
            (TxStep::Exec, _) => {} // an error (no leader, ...): it may or may not have applied
        }
    }

    /// An applied transaction's replies: `[a, b, [a, b]]` with `a == b`, and `a` one above the
    /// value read after a WATCH that held.
    fn check_tx_reply(&self, client: u64, items: &[Value], before: Option<i64>) {
        let int = |v: &Value| match v {
            Value::Integer(n) => *n,
            other => panic!("client {client}: a transaction's INCR answered {other:?}"),
        };
        assert_eq!(items.len(), 3, "client {client}: EXEC replies {items:?}");
        let (a, b) = (int(&items[0]), int(&items[1]));
        assert_eq!(
            a, b,
            "TX NOT ATOMIC: client {client} saw tx-a {a} and tx-b {b}"
        );
        let read = Value::Array(vec![
            Value::Bulk(a.to_string().into_bytes()),
            Value::Bulk(b.to_string().into_bytes()),
        ]);
        assert_eq!(items[2], read, "client {client}: MGET inside EXEC");
        if let Some(before) = before {
            assert_eq!(
                a,
                before + 1,
                "WATCH MISSED A CHANGE: client {client} read tx-a = {before} after its WATCH, \
                 and its EXEC applied with tx-a = {a}"
            );
        }
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
            if let Op::Tx(step) = op {
                self.settle_tx(c, step, v);
                continue;
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
            (Op::Auth, v) => assert_eq!(v, Value::ok(), "AUTH with the right password"),
            (Op::Refused(want), v) => {
                assert!(
                    matches!(&v, Value::Error(e) if e.starts_with(want)),
                    "AUTH: expected {want:?}, got {v:?}"
                );
                self.stats.auth_refusals += 1;
            }
            _ => {}
        }
    }

    // --- checks ----------------------------------------------------------------------------

    fn check(&mut self) {
        for m in self.members.values_mut() {
            let uncertain = m.node.as_ref().map(|n| n.raft().uncertain().is_some());
            if m.was_uncertain && uncertain == Some(false) {
                self.stats.uncertain_clears += 1;
            }
            if let Some(u) = uncertain {
                m.was_uncertain = u;
            }
        }
        if let Some(id) = self.flip_pending {
            let certain = |n: &SimNode| n.raft().uncertain().is_none();
            if self.members[&id].node.as_ref().is_some_and(certain) {
                self.flip_pending = None;
                self.note(format!("{id} certain of its log again"));
            }
        }
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
            if self.stats.ticks.is_multiple_of(50) {
                // What the metrics port serves is rendered by the node itself: render it under
                // the faults too (its writer asserts names and histogram counts).
                let text = node.metrics_text();
                assert!(
                    text.contains("\nkvraft_server_has_leader "),
                    "node {id}: {text}"
                );
                let ready = node.readiness();
                assert!(
                    ready.is_err() || node.raft().leader().is_some(),
                    "node {id} ready without a leader"
                );
            }
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
            // its own term: wait for it to catch up with every node, and with every index
            // ever seen committed (nodes that applied it may have restarted since: seed 13590).
            let applied_max = self
                .members
                .values()
                .filter_map(|m| m.node.as_ref().map(|n| n.applied()))
                .chain(self.committed.keys().next_back().copied())
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
/// Simulated time 0 as a wall clock: ms since the Unix epoch.
const SIM_EPOCH_MS: u64 = 1_700_000_000_000;

/// Per-node wall clocks that start apart, drift apart and jump (both ways), fed to each node
/// through `set_wall_ms`; and, in some seeds, TTL commands on a small set of shared keys
/// (SET PX, PEXPIRE with conditions, PERSIST, GETEX, INCR, reads). The checker's equal state
/// hashes at equal applied indexes then show that expiry does not depend on any replica's
/// clock. It draws from its own generator, so a seed's other draws are unchanged.
struct Clocks {
    rng: Prng,
    /// Per node: offset from simulated time (ms) and drift (parts per million).
    skew: BTreeMap<NodeId, (i64, i64)>,
    ttl_commands: bool,
}

impl Clocks {
    fn new(seed: u64, ids: &[NodeId]) -> Clocks {
        let mut rng = Prng::new(seed ^ 0x7474_6c5f_636c_6b73);
        let skew = ids
            .iter()
            .map(|&id| {
                let offset = rng.range(0, 4000) as i64 - 2000;
                let drift_ppm = rng.range(0, 100_001) as i64 - 50_000;
                (id, (offset, drift_ppm))
            })
            .collect();
        let ttl_commands = rng.chance(1, 2);
        Clocks {
            rng,
            skew,
            ttl_commands,
        }
    }

    fn wall_ms(&self, id: NodeId, now_ms: u64) -> u64 {
        let (offset, drift_ppm) = self.skew.get(&id).copied().unwrap_or((0, 0));
        let t = now_ms as i64;
        (SIM_EPOCH_MS as i64 + t + offset + t * drift_ppm / 1_000_000) as u64
    }

    /// Now and then a node's clock jumps, forwards or back: (node, ms).
    fn maybe_jump(&mut self) -> Option<(NodeId, i64)> {
        if !self.rng.chance(3, 1000) || self.skew.is_empty() {
            return None;
        }
        let n = self.rng.range(0, self.skew.len() as u64) as usize;
        let (&id, skew) = self.skew.iter_mut().nth(n).expect("in range");
        let by = self.rng.range(0, 6001) as i64 - 3000;
        skew.0 += by;
        Some((id, by))
    }

    /// A TTL command for a client to send instead of its usual one, about one time in three.
    fn ttl_command(&mut self) -> Option<Vec<Vec<u8>>> {
        if !self.ttl_commands || !self.rng.chance(1, 3) {
            return None;
        }
        let key = format!("ttl{}", self.rng.range(0, 8)).into_bytes();
        let ms = self.rng.range(1, 2000).to_string().into_bytes();
        let v = |s: &str| s.as_bytes().to_vec();
        let cmd = match self.rng.range(0, 10) {
            0 | 1 => vec![v("SET"), key, v("x"), v("PX"), ms],
            2 => vec![v("PEXPIRE"), key, ms],
            3 => {
                let cond = ["NX", "XX", "GT", "LT"][self.rng.range(0, 4) as usize];
                vec![v("PEXPIRE"), key, ms, v(cond)]
            }
            4 => vec![v("PERSIST"), key],
            5 => vec![v("GETEX"), key, v("PX"), ms],
            6 => vec![v("INCR"), key],
            7 => vec![v("PTTL"), key],
            8 => vec![v("GET"), key],
            _ => vec![v("SET"), key, v("y"), v("KEEPTTL")],
        };
        Some(cmd)
    }
}

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
            let beyond = REGRESSION_SEEDS.iter().copied().filter(|&s| s >= n);
            (0..n).chain(beyond).collect()
        }
    };
    let t0 = Instant::now();
    let mut total = Stats::default();
    for seed in seeds.iter().copied() {
        total.add(&run_seed(seed));
    }
    eprintln!("{} seeds in {:.1?}: {total:?}", seeds.len(), t0.elapsed());
    if seeds.len() >= 20 {
        // Followers stamp what each connection has, not one constant (`Params::auth`).
        let [_, data, admin] = total.forwarded_rights;
        assert!(
            data > 0 && admin > 0,
            "FORWARD RIGHTS: {:?}",
            total.forwarded_rights
        );
        // Clients connect to any node: followers serve reads themselves (`clients.rs`).
        assert!(
            total.read_indexes_confirmed > 0,
            "FOLLOWER READS: no leader confirmed a follower's read index"
        );
    }
}

// --- the session workload ------------------------------------------------------------------
//
// Session clients open an exactly-once session and send `SESSION RUN <id> <seq> <seq> INCR
// <own key>` one sequence at a time, through any node. Whatever goes wrong (an error reply
// other than SESSIONEXPIRED, no answer within their patience, a connection lost) they resend
// the SAME sequence through another node. The counter is theirs alone, so each INCR reply
// must equal its sequence: a write applied twice (or a session lost, e.g. by a snapshot)
// shows at once. At the end the leader's counter is the last acknowledged sequence, or one
// more if the last write is still unanswered.

/// One session client of the workload above.
struct SessionClient {
    /// Connection owner id in the simulated network (apart from the plain clients').
    id: u64,
    stream: Option<SimStream>,
    inbuf: Vec<u8>,
    session: Option<u64>,
    /// The request not yet answered: 0 is `SESSION OPEN`, n > 0 is the INCR of sequence n.
    outstanding: Option<u64>,
    /// Whether `outstanding` was sent on the current connection.
    sent: bool,
    /// How often `outstanding` was sent so far.
    sends: u64,
    acked: u64,
    waited_ticks: u64,
    key: Vec<u8>,
    /// The newest applied stamp in the cluster at the last acknowledgement: a session may
    /// expire (legitimately) only once the stamps moved past it by the session timeout.
    acked_stamp_ms: u64,
    /// Stopped after its session expired legitimately (clocks jumped past the timeout).
    retired: bool,
    /// Its `AUTH` (sent first on every connection, `Params::auth`) is not answered yet.
    auth_pending: bool,
}

impl Sim {
    fn add_session_clients(&mut self) {
        let n = self.session_rng.range(1, 3);
        for i in 0..n {
            self.session_clients.push(SessionClient {
                id: 100 + i,
                stream: None,
                inbuf: Vec::new(),
                session: None,
                outstanding: None,
                sent: false,
                sends: 0,
                acked: 0,
                waited_ticks: 0,
                key: format!("session-counter-{i}").into_bytes(),
                acked_stamp_ms: 0,
                retired: false,
                auth_pending: false,
            });
        }
    }

    fn session_clients_step(&mut self) {
        for c in 0..self.session_clients.len() {
            self.session_client_step(c);
        }
    }

    fn session_client_step(&mut self, c: usize) {
        if self.session_clients[c].retired {
            return;
        }
        if self.session_clients[c].stream.is_none() {
            let ids = self.ids();
            let target = ids[self.session_rng.range(0, ids.len() as u64) as usize];
            let (_, addr) = addrs(target);
            let sc = &mut self.session_clients[c];
            sc.stream = SimStream::client_connect(&self.world, sc.id, addr);
            sc.inbuf.clear();
            sc.sent = false;
            sc.waited_ticks = 0;
            sc.auth_pending = false;
            let Some(stream) = sc.stream.as_mut() else {
                return;
            };
            if self.p.auth {
                let mut out = Vec::new();
                resp::encode_command(&[b"AUTH", SIM_DATA_PASS.as_bytes()], &mut out);
                if std::io::Write::write_all(stream, &out).is_err() {
                    sc.stream = None;
                    return;
                }
                sc.auth_pending = true;
            }
        }
        self.session_client_read(c);
        let sc = &mut self.session_clients[c];
        if sc.sent {
            sc.waited_ticks += 1;
        }
        let ended = sc.stream.as_ref().is_none_or(|s| s.at_end());
        if ended || sc.waited_ticks > CLIENT_PATIENCE_TICKS {
            sc.stream = None; // resend through another node
            return;
        }
        if sc.outstanding.is_none() && self.session_rng.chance(1, 3) {
            sc.outstanding = Some(if sc.session.is_none() {
                0
            } else {
                sc.acked + 1
            });
        }
        if let (Some(seq), false) = (sc.outstanding, sc.sent) {
            let mut out = Vec::new();
            match sc.session {
                None => resp::encode_command(&[b"SESSION", b"OPEN"], &mut out),
                Some(id) => {
                    let (id, seq) = (id.to_string(), seq.to_string());
                    let (id, seq) = (id.as_bytes(), seq.as_bytes());
                    let cmd: [&[u8]; 7] = [b"SESSION", b"RUN", id, seq, seq, b"INCR", &sc.key];
                    resp::encode_command(&cmd, &mut out);
                }
            }
            let stream = sc.stream.as_mut().expect("connected");
            if std::io::Write::write_all(stream, &out).is_err() {
                sc.stream = None;
                return;
            }
            if seq > 0 && sc.sends > 0 {
                self.stats.session_resends += 1;
            }
            sc.sends += 1;
            sc.sent = true;
            sc.waited_ticks = 0;
        }
    }

    /// The newest applied stamp among the running nodes.
    fn newest_stamp_ms(&self) -> u64 {
        let nodes = self.members.values().filter_map(|m| m.node.as_ref());
        let stamps = nodes.map(|n| n.state_machine().applied_stamp_ms());
        stamps.max().unwrap_or(0)
    }

    /// Read the answer to the outstanding request, if it came.
    fn session_client_read(&mut self, c: usize) {
        let newest_ms = self.newest_stamp_ms();
        let sc = &mut self.session_clients[c];
        let Some(stream) = sc.stream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = std::io::Read::read(stream, &mut buf) {
            sc.inbuf.extend_from_slice(&buf[..n]);
        }
        let (v, n) = match resp::parse_value(&sc.inbuf) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => panic!("session client {}: unparsable reply: {e}", sc.id),
        };
        sc.inbuf.drain(..n);
        if sc.auth_pending {
            assert_eq!(v, Value::ok(), "session client {}: AUTH", sc.id);
            sc.auth_pending = false;
            return;
        }
        let seq = sc.outstanding.expect("a reply to a request sent");
        match (seq, v) {
            (0, Value::Integer(id)) => {
                sc.session = Some(id as u64);
                sc.acked_stamp_ms = newest_ms;
            }
            (0, _) => {
                sc.stream = None; // open one through another node
                return;
            }
            (_, Value::Integer(n)) => {
                assert_eq!(
                    n, seq as i64,
                    "EXACTLY ONCE: session {:?} INCR of sequence {seq} answered {n}",
                    sc.session
                );
                sc.acked = seq;
                sc.acked_stamp_ms = newest_ms;
                self.stats.session_incrs_acked += 1;
            }
            (_, Value::Error(e)) if e.starts_with("SESSIONEXPIRED") => {
                let idle_ms = newest_ms.saturating_sub(sc.acked_stamp_ms);
                assert!(
                    idle_ms > kvraft::limits::SESSION_TIMEOUT_MS,
                    "SESSION LOST: session {:?} seq {seq} after {idle_ms} ms of stamps: {e}",
                    sc.session
                );
                sc.retired = true; // its last INCR stays unknown; the final check allows it
                sc.stream = None;
                return;
            }
            (_, Value::Error(_)) => {
                // Not applied, or not known to be: resend the same sequence elsewhere.
                sc.stream = None;
                return;
            }
            (_, other) => panic!("session client {}: INCR answered {other:?}", sc.id),
        }
        sc.outstanding = None;
        sc.sent = false;
        sc.sends = 0;
        sc.waited_ticks = 0;
    }

    /// After healing: each counter is the last acknowledged sequence (or one more if the
    /// last INCR is unanswered): no INCR applied twice, none acknowledged and lost.
    fn check_session_counters(&mut self) {
        let l = self.leader().expect("a leader after healing");
        let n = self.members[&l].node.as_ref().expect("up");
        let sm = n.state_machine();
        for sc in &self.session_clients {
            let args = [b"GET".to_vec(), sc.key.clone()];
            let Some(Request::Read(q)) = sm.parse(&args) else {
                panic!("GET does not parse as a read");
            };
            let value = match sm.query(&q) {
                Value::Bulk(v) => String::from_utf8_lossy(&v).parse().expect("a counter"),
                Value::Nil => 0u64,
                other => panic!("counter {other:?}"),
            };
            let unanswered = u64::from(sc.outstanding.is_some_and(|s| s > 0));
            assert!(
                value == sc.acked || value == sc.acked + unanswered,
                "EXACTLY ONCE: counter {} is {value}, {} INCRs acknowledged",
                String::from_utf8_lossy(&sc.key),
                sc.acked
            );
        }
    }
}
