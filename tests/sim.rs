//! The deterministic cluster simulator: 3- and 5-node clusters of Raft cores driven by one seed
//! through message loss, duplication, reordering and delay; symmetric and one-way partitions
//! that come and go; crashes (some in the middle of a Ready, before its sync) and restarts;
//! snapshots at random points; client proposals and ReadIndex reads throughout; and, in some
//! seeds, membership changes and leadership transfers.
//!
//! After every step it checks election safety, log matching, leader completeness, state-machine
//! safety and read linearizability (the last three partly in `support`). After the faults heal
//! it checks that a leader is elected and a new proposal commits within a bounded number of
//! ticks.
//!
//! Measured (release, shared 2-core machine): 1000 seeds in 8.2 s (21.8M steps, 11.6M
//! messages, 4,050 crashes of which 1,654 mid-Ready, 8,830 partitions, 20,172 snapshots,
//! 2,200 membership changes, 2,327 transfers, 4,763 elections); 20,000 seeds in 150 s.
//! Planted bugs it caught: the up-to-date check comparing indexes only (LEADER COMPLETENESS,
//! seed 66); granting a second vote in a term (the core's own invariant, seed 0); a leader
//! ignoring newer terms (RUNAWAY message storm, seed 4). Commit-time membership (etcd style,
//! without a persisted commit index) gave two leaders in one term (ELECTION SAFETY, seed
//! 1548). Counting an old term's entries toward commit (Figure 8) was NOT hit in 3,000 seeds;
//! `figure_8_...` in raft_scenarios.rs catches it.
//!
//! `SIM_SEED=n` replays one seed (printing a trace of its last events on failure);
//! `SIM_SEEDS=n` runs seeds 0..n; the default is 1000 seeds. `make sim SEED=n` / `SEEDS=n`.

mod support;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Instant;

use kvraft::prng::Prng;
use kvraft::raft::{ConfChange, ConfChangeOp, EntryId, LogIndex, Message, Term};
use support::{Cluster, CrashPoint, NodeId};

const CHAOS_TICKS: u64 = 1000;
/// Ticks after healing within which a leader must be elected and a proposal commit
/// (50 minimum election timeouts: small-batch seeds replicate a backlog slowly).
const HEAL_BOUND_TICKS: u64 = 500;
const TRACE_EVENTS_MAX: usize = 200;
/// A seed normally takes well under 1M steps; far more means a message storm or a livelock.
const STEPS_PER_SEED_MAX: u64 = 5_000_000;
const DEFAULT_SEEDS: u64 = 1000;

/// The fault mix of one seed.
#[derive(Debug, Clone)]
struct Params {
    voters: u64,
    /// Per mille.
    loss: u64,
    dup: u64,
    delay_max_ticks: u64,
    crash: u64,
    partition: u64,
    snapshot: u64,
    propose: u64,
    read: u64,
    membership: bool,
    transfers: bool,
    append_entries_max: usize,
    append_size_max: usize,
    inflight_msgs_max: usize,
    pre_vote: bool,
}

impl Params {
    fn draw(rng: &mut Prng) -> Params {
        Params {
            voters: if rng.chance(1, 2) { 3 } else { 5 },
            loss: [0, 10, 50, 150][rng.range(0, 4) as usize],
            dup: [0, 10, 50][rng.range(0, 3) as usize],
            delay_max_ticks: rng.range(0, 5),
            crash: [0, 3, 10][rng.range(0, 3) as usize],
            partition: [0, 5, 20][rng.range(0, 3) as usize],
            snapshot: [0, 10, 50][rng.range(0, 3) as usize],
            propose: rng.range(100, 800),
            read: rng.range(0, 300),
            membership: rng.chance(1, 4),
            transfers: rng.chance(1, 4),
            append_entries_max: [1, 3, 16, 4096][rng.range(0, 4) as usize],
            append_size_max: [16, 200, 1 << 20][rng.range(0, 3) as usize],
            inflight_msgs_max: [2, 4, 8, 64][rng.range(0, 4) as usize],
            pre_vote: rng.chance(3, 4),
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    steps: u64,
    ticks: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    crashes_mid_ready: u64,
    restarts: u64,
    partitions: u64,
    snapshots: u64,
    proposals: u64,
    reads_served: u64,
    conf_changes: u64,
    transfers: u64,
    elections: u64,
    applied: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.ticks += o.ticks;
        self.messages += o.messages;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.crashes += o.crashes;
        self.crashes_mid_ready += o.crashes_mid_ready;
        self.restarts += o.restarts;
        self.partitions += o.partitions;
        self.snapshots += o.snapshots;
        self.proposals += o.proposals;
        self.reads_served += o.reads_served;
        self.conf_changes += o.conf_changes;
        self.transfers += o.transfers;
        self.elections += o.elections;
        self.applied += o.applied;
    }
}

struct Sim {
    cl: Cluster,
    rng: Prng,
    p: Params,
    now: u64,
    net: Vec<(u64, Message)>,
    /// Nodes whose next Ready is interrupted by a crash before its sync.
    crash_next_ready: Vec<NodeId>,
    leaders_by_term: HashMap<Term, NodeId>,
    /// Applied indexes up to here were checked against the live leaders.
    completeness_checked: LogIndex,
    next_cmd: u64,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Prng::new(seed ^ 0x5eed_0000_0000);
        let p = Params::draw(&mut rng);
        let voters: Vec<u64> = (1..=p.voters).collect();
        let extra = [p.voters + 1];
        let mut cl = Cluster::new(&voters, &extra, seed, |c| {
            c.append_entries_max = p.append_entries_max;
            c.append_size_max = p.append_size_max;
            c.inflight_msgs_max = p.inflight_msgs_max;
            c.pre_vote = p.pre_vote;
        });
        cl.record_delivered = false;
        Sim {
            cl,
            rng,
            p,
            now: 0,
            net: Vec::new(),
            crash_next_ready: Vec::new(),
            leaders_by_term: HashMap::new(),
            completeness_checked: LogIndex(0),
            next_cmd: 1,
            stats: Stats::default(),
        }
    }

    fn run(&mut self) {
        for _ in 0..CHAOS_TICKS {
            self.faults();
            self.clients();
            self.tick();
        }
        self.heal();
        self.check_liveness();
        self.stats.applied = self.cl.applied_max.0;
        self.stats.reads_served = self.cl.served_reads.len() as u64;
    }

    fn live(&self) -> Vec<NodeId> {
        self.cl
            .nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    fn pick(&mut self, ids: &[NodeId]) -> Option<NodeId> {
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.range(0, ids.len() as u64) as usize])
    }

    fn faults(&mut self) {
        let ids = self.cl.ids();
        if self.rng.chance(self.p.crash, 1000) {
            let live = self.live();
            if let Some(id) = self.pick(&live) {
                self.stats.crashes += 1;
                if self.rng.chance(1, 2) {
                    self.crash_next_ready.push(id);
                } else {
                    self.cl.crash(id);
                }
            }
        }
        if self.rng.chance(40, 1000) {
            let down: Vec<NodeId> = ids
                .iter()
                .copied()
                .filter(|id| !self.cl.nodes[id].is_up())
                .collect();
            if let Some(id) = self.pick(&down) {
                self.stats.restarts += 1;
                self.cl.restart(id);
            }
        }
        if self.rng.chance(self.p.partition, 1000) {
            self.stats.partitions += 1;
            self.partition(&ids);
        }
        if !self.cl.blocked.is_empty() && self.rng.chance(30, 1000) {
            self.cl.heal();
        }
        if self.rng.chance(self.p.snapshot, 1000) {
            let live = self.live();
            if let Some(id) = self.pick(&live) {
                self.stats.snapshots += 1;
                let keep = self.rng.range(0, 4);
                self.cl.snapshot(id, keep);
                self.step_done();
            }
        }
    }

    fn partition(&mut self, ids: &[NodeId]) {
        self.cl.heal();
        if self.rng.chance(1, 2) {
            // Symmetric: split into two sides.
            let side: Vec<bool> = ids.iter().map(|_| self.rng.chance(1, 2)).collect();
            for (i, &a) in ids.iter().enumerate() {
                for (j, &b) in ids.iter().enumerate() {
                    if side[i] != side[j] {
                        self.cl.blocked.insert((a, b));
                    }
                }
            }
        } else {
            // One-way: a few links drop in one direction only.
            for _ in 0..self.rng.range(1, 4) {
                let a = ids[self.rng.range(0, ids.len() as u64) as usize];
                let b = ids[self.rng.range(0, ids.len() as u64) as usize];
                if a != b {
                    self.cl.blocked.insert((a, b));
                }
            }
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.cl.leader().map(NodeId)
    }

    fn clients(&mut self) {
        if self.rng.chance(self.p.propose, 1000) {
            let target = if self.rng.chance(9, 10) {
                self.leader()
            } else {
                let live = self.live();
                self.pick(&live)
            };
            if let Some(id) = target {
                let mut data = self.next_cmd.to_be_bytes().to_vec();
                let pad = self.rng.range(0, 64) as usize;
                data.resize(8 + pad, 0xab);
                if self.cl.node_mut(id.0).propose(data).is_ok() {
                    self.next_cmd += 1;
                    self.stats.proposals += 1;
                }
            }
        }
        if self.rng.chance(self.p.read, 1000) {
            let target = if self.rng.chance(9, 10) {
                self.leader()
            } else {
                let live = self.live();
                self.pick(&live)
            };
            if let Some(id) = target {
                self.cl.read(id);
            }
        }
        if self.p.membership && self.rng.chance(15, 1000) {
            self.membership_change();
        }
        if self.p.transfers && self.rng.chance(10, 1000) {
            if let Some(l) = self.leader() {
                let voters = self.cl.node(l.0).status().conf.voters;
                if let Some(to) = self.pick(&voters) {
                    if self.cl.node_mut(l.0).transfer_leadership(to).is_ok() {
                        self.stats.transfers += 1;
                    }
                }
            }
        }
    }

    fn membership_change(&mut self) {
        let Some(l) = self.leader() else {
            return;
        };
        let conf = self.cl.node(l.0).status().conf;
        let all = self.cl.ids();
        let node = all[self.rng.range(0, all.len() as u64) as usize];
        let op = if conf.is_voter(node) {
            if conf.voters.len() <= 2 {
                return;
            }
            if self.rng.chance(1, 2) {
                ConfChangeOp::Remove
            } else {
                ConfChangeOp::AddLearner
            }
        } else if conf.is_learner(node) {
            if self.rng.chance(2, 3) {
                ConfChangeOp::AddVoter
            } else {
                ConfChangeOp::Remove
            }
        } else {
            ConfChangeOp::AddLearner
        };
        let cc = ConfChange {
            op,
            node,
            context: vec![],
        };
        if self.cl.node_mut(l.0).propose_conf_change(cc).is_ok() {
            self.stats.conf_changes += 1;
        }
    }

    /// One tick: every live node's timer, then a few rounds of message delivery.
    fn tick(&mut self) {
        self.now += 1;
        self.stats.ticks += 1;
        let now = self.now;
        self.cl.note(|| format!("---- tick {now}"));
        for id in self.live() {
            self.cl.tick(id);
            self.step_done();
        }
        for _ in 0..4 {
            self.process_some(true);
            self.flush_outbox();
            let mut due: Vec<Message> = Vec::new();
            let now = self.now;
            self.net.retain(|(at, m)| {
                if *at <= now {
                    due.push(m.clone());
                    false
                } else {
                    true
                }
            });
            if due.is_empty() {
                break;
            }
            // Reordering: deliver the due messages in a random order.
            for i in (1..due.len()).rev() {
                let j = self.rng.range(0, i as u64 + 1) as usize;
                due.swap(i, j);
            }
            for m in due {
                self.deliver(m);
            }
        }
        self.process_some(true);
        self.flush_outbox();
    }

    fn deliver(&mut self, m: Message) {
        self.stats.messages += 1;
        if self.rng.chance(self.p.loss, 1000) {
            self.stats.dropped += 1;
            if matches!(m.body, kvraft::raft::MessageBody::Snapshot { .. }) {
                if let Some(r) = self.cl.nodes.get_mut(&m.from).and_then(|n| n.raft.as_mut()) {
                    r.report_snapshot(m.to, false);
                }
            }
            return;
        }
        if self.rng.chance(self.p.dup, 1000) {
            self.stats.duplicated += 1;
            let at = self.now + self.rng.range(0, self.p.delay_max_ticks + 2);
            self.net.push((at, m.clone()));
        }
        let to = m.to;
        self.cl.deliver(m);
        self.step_done();
        if self.rng.chance(1, 3) {
            self.process_node(to);
        }
    }

    fn flush_outbox(&mut self) {
        let out = std::mem::take(&mut self.cl.outbox);
        for m in out {
            let at = self.now + self.rng.range(0, self.p.delay_max_ticks + 1);
            self.net.push((at, m));
        }
    }

    fn process_some(&mut self, all: bool) {
        for id in self.cl.ids() {
            if all || self.rng.chance(1, 2) {
                self.process_node(id);
            }
        }
    }

    /// Executes `id`'s pending Readies, crashing it mid-Ready if that was scheduled.
    fn process_node(&mut self, id: NodeId) {
        for _ in 0..16 {
            let has = self.cl.nodes[&id]
                .raft
                .as_ref()
                .is_some_and(|r| r.has_ready());
            if !has {
                return;
            }
            let crash = if let Some(pos) = self.crash_next_ready.iter().position(|&c| c == id) {
                self.crash_next_ready.remove(pos);
                self.stats.crashes_mid_ready += 1;
                Some(CrashPoint {
                    keep_hard_state: self.rng.chance(1, 2),
                    keep_snapshot: self.rng.chance(1, 2),
                    keep_entries: self.rng.range(0, 8) as usize,
                })
            } else {
                None
            };
            self.cl.process_one(id, crash);
            self.step_done();
        }
    }

    fn heal(&mut self) {
        self.cl.heal();
        self.p.loss = 0;
        self.p.dup = 0;
        self.p.delay_max_ticks = self.p.delay_max_ticks.min(1);
        self.crash_next_ready.clear();
        for id in self.cl.ids() {
            self.cl.restart(id);
        }
    }

    /// After healing: a leader is elected and a new proposal commits within the bound.
    fn check_liveness(&mut self) {
        let mut marker: Option<EntryId> = None;
        for t in 0..HEAL_BOUND_TICKS {
            self.tick();
            if let Some(m) = marker {
                if self.cl.applied.get(&m.index) == Some(&m) {
                    return;
                }
                let lost = self.cl.applied.get(&m.index).is_some_and(|&e| e != m);
                if lost || !self.leader_is(m.term) {
                    marker = None;
                }
            }
            if marker.is_none() {
                if let Some(l) = self.leader() {
                    let data = format!("marker {t}").into_bytes();
                    marker = self.cl.node_mut(l.0).propose(data).ok();
                }
            }
        }
        let status: Vec<String> = self
            .cl
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| format!("{:?} progress {:?}", r, r.status().progress))
            .collect();
        panic!(
            "LIVENESS: no leader committed a new proposal within {HEAL_BOUND_TICKS} ticks of healing \
             (leaders {:?})\n{}",
            self.cl.leaders(),
            status.join("\n")
        );
    }

    fn leader_is(&self, term: Term) -> bool {
        self.cl.leaders().iter().any(|&(_, t)| t == term)
    }

    /// The global checks, after every step.
    fn step_done(&mut self) {
        self.stats.steps += 1;
        assert!(
            self.stats.steps <= STEPS_PER_SEED_MAX,
            "RUNAWAY: more than {STEPS_PER_SEED_MAX} steps ({} messages in flight)",
            self.net.len()
        );
        for (id, term) in self.cl.leaders() {
            match self.leaders_by_term.get(&term) {
                Some(&other) => assert_eq!(
                    other, id,
                    "ELECTION SAFETY: nodes {other} and {id} both leader in term {term}"
                ),
                None => {
                    self.leaders_by_term.insert(term, id);
                    self.stats.elections += 1;
                    self.check_leader_has_committed(id, LogIndex(0));
                }
            }
        }
        if self.cl.applied_max > self.completeness_checked {
            let from = self.completeness_checked;
            for (id, _) in self.cl.leaders() {
                self.check_leader_has_committed(id, from);
            }
            self.completeness_checked = self.cl.applied_max;
        }
    }

    /// Leader completeness: every entry committed (applied anywhere) after `from`, of an older
    /// term than the leader's, is in the leader's log (or under its snapshot).
    fn check_leader_has_committed(&self, id: NodeId, from: LogIndex) {
        let r = self.cl.nodes[&id].raft();
        let first = r.status().first_index;
        let lo = from.next().max(first);
        for (&index, &e) in self.cl.applied.range(lo..) {
            if e.term > r.term() {
                continue;
            }
            assert_eq!(
                r.term_at(index),
                Some(e.term),
                "LEADER COMPLETENESS: leader {id} of term {} lacks committed entry {e}",
                r.term()
            );
        }
    }
}

type Trace = Rc<RefCell<VecDeque<String>>>;

fn run_seed(seed: u64, trace: Option<Trace>) -> Stats {
    let mut sim = Sim::new(seed);
    if let Some(t) = trace {
        println!("seed {seed}: {:?}", sim.p);
        sim.cl.trace = Some(Box::new(move |s| {
            let mut q = t.borrow_mut();
            if q.len() >= TRACE_EVENTS_MAX {
                q.pop_front();
            }
            q.push_back(s);
        }));
    }
    sim.run();
    sim.stats
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panic".to_string()
    }
}

/// Runs `seed`; on failure replays it with tracing and panics with the seed and the command.
fn check_seed(seed: u64) -> Stats {
    match catch_unwind(AssertUnwindSafe(|| run_seed(seed, None))) {
        Ok(s) => s,
        Err(e) => {
            let msg = panic_text(&*e);
            let trace: Trace = Rc::new(RefCell::new(VecDeque::new()));
            let t2 = trace.clone();
            let _ = catch_unwind(AssertUnwindSafe(move || run_seed(seed, Some(t2))));
            eprintln!("---- last {TRACE_EVENTS_MAX} events of seed {seed} ----");
            for line in trace.borrow().iter() {
                eprintln!("{line}");
            }
            panic!("simulation seed {seed} failed: {msg}\nreplay with: make sim SEED={seed}");
        }
    }
}

#[test]
fn simulated_clusters_keep_every_safety_property_and_recover_after_faults_heal() {
    if std::env::var("SIM_SEED").is_ok() {
        // RUST_LOG=info shows the cores' role changes, RUST_LOG=debug every decision.
        let _ = env_logger::builder().is_test(true).try_init();
    }
    let seeds: Vec<u64> = match (std::env::var("SIM_SEED"), std::env::var("SIM_SEEDS")) {
        (Ok(s), _) => vec![s.trim().parse().expect("SIM_SEED is a number")],
        (_, Ok(n)) => (0..n.trim().parse().expect("SIM_SEEDS is a number")).collect(),
        _ => (0..DEFAULT_SEEDS).collect(),
    };
    let start = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        let s = check_seed(seed);
        total.add(&s);
    }
    println!(
        "sim: {} seeds in {:.1}s: {:?}",
        seeds.len(),
        start.elapsed().as_secs_f64(),
        total
    );
}
