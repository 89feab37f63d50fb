//! A message pump for the pure Raft core (`raft_scenarios.rs`): N `raft::Raft`s in one
//! process, each with an in-memory store (hard state, log, snapshot) that survives `crash`.
//! It tests the core's protocol, not a driver: the node's driver (`src/node/driver.rs`) is
//! simulated whole by `tests/sim.rs`. `pump` hands a core's output to the store and the
//! network and acknowledges it; it models none of the driver's ordering, batching or faults.
//!
//! The state machine is the list of applied entry ids (index i at position i-1), so two nodes
//! agree on their state exactly when they applied the same entries. Snapshot contents live in
//! one store shared by the whole cluster, keyed by the snapshot's last entry.
//!
//! Checks that need no global view run here on every Ready: entries are contiguous; log
//! matching (an entry id always has the same payload and the same predecessor term);
//! state-machine safety (no two nodes apply different entries at one index; each node applies
//! in order, each index once, and after a restart re-applies the same entries).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

pub use kvraft::raft::NodeId;
use kvraft::raft::{
    ConfChange, ConfState, Config, Entry, EntryId, EntryKind, HardState, LogIndex, Message,
    MessageBody, Raft, ReadState, Restored, Role, SnapshotMeta, Term,
};

/// The applied prefix of a state machine: entry ids in index order.
pub type SmState = Vec<EntryId>;

#[derive(Clone, Debug)]
pub struct Durable {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub snapshot_sm: Rc<SmState>,
    /// The index before `log[0]`.
    pub log_offset: LogIndex,
    pub log: Vec<Entry>,
}

impl Durable {
    pub fn last_index(&self) -> LogIndex {
        self.log_offset.plus(self.log.len() as u64)
    }
}

pub struct SimNode {
    pub id: NodeId,
    pub raft: Option<Raft>,
    pub durable: Durable,
    pub sm: SmState,
    /// The membership as of the applied index (for snapshot metadata).
    pub sm_conf: ConfState,
    pub applied: LogIndex,
    pub reads_waiting: Vec<(ReadState, u64)>,
    pub restarts: u64,
    pub cfg: Config,
}

impl SimNode {
    pub fn raft(&self) -> &Raft {
        self.raft.as_ref().expect("node is up")
    }
    pub fn raft_mut(&mut self) -> &mut Raft {
        self.raft.as_mut().expect("node is up")
    }
    pub fn is_up(&self) -> bool {
        self.raft.is_some()
    }
}

/// A read that was served: requested when `acked_before` was the highest index any client had
/// seen applied; served at `index`.
#[derive(Clone, Copy, Debug)]
pub struct ServedRead {
    pub node: NodeId,
    pub ctx: u64,
    pub index: LogIndex,
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, SimNode>,
    /// Messages sent and not yet taken by the harness's network.
    pub outbox: Vec<Message>,
    /// Links that drop everything (from, to).
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, in order (for scenario assertions).
    pub delivered: Vec<Message>,
    /// Whether to fill `delivered` (the simulator turns it off).
    pub record_delivered: bool,
    pub snapshots: HashMap<EntryId, Rc<SmState>>,
    /// index -> the entry id first applied there by any node (state-machine safety).
    pub applied: BTreeMap<LogIndex, EntryId>,
    /// entry id -> (payload checksum, term of the entry before it) (log matching).
    pub entry_ids: HashMap<EntryId, (u64, Term)>,
    pub served_reads: Vec<ServedRead>,
    /// Highest index applied by any node so far.
    pub applied_max: LogIndex,
    /// Read ctx -> `applied_max` when the read was requested.
    pub read_floor: HashMap<u64, LogIndex>,
    pub next_ctx: u64,
    pub trace: Option<Box<dyn FnMut(String)>>,
}

fn checksum(data: &[u8], kind: EntryKind) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ kind as u64;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl Cluster {
    /// `voters` form the initial configuration; `extra` nodes exist but start outside it.
    pub fn new(voters: &[u64], extra: &[u64], seed: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let conf = ConfState::new(voters.iter().map(|&v| NodeId(v)).collect(), vec![]);
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(extra) {
            let mut cfg = Config::new(NodeId(id), seed.wrapping_mul(1000).wrapping_add(id));
            tweak(&mut cfg);
            let durable = Durable {
                hard_state: HardState::default(),
                snapshot: SnapshotMeta {
                    last: EntryId::default(),
                    conf: conf.clone(),
                },
                snapshot_sm: Rc::new(Vec::new()),
                log_offset: LogIndex(0),
                log: Vec::new(),
            };
            let mut node = SimNode {
                id: NodeId(id),
                raft: None,
                durable,
                sm: Vec::new(),
                sm_conf: conf.clone(),
                applied: LogIndex(0),
                reads_waiting: Vec::new(),
                restarts: 0,
                cfg,
            };
            node.raft = Some(Raft::new(node.cfg.clone(), restored(&node.durable)));
            nodes.insert(NodeId(id), node);
        }
        Cluster {
            nodes,
            outbox: Vec::new(),
            blocked: BTreeSet::new(),
            delivered: Vec::new(),
            record_delivered: true,
            snapshots: HashMap::new(),
            applied: BTreeMap::new(),
            entry_ids: HashMap::new(),
            served_reads: Vec::new(),
            applied_max: LogIndex(0),
            read_floor: HashMap::new(),
            next_ctx: 1,
            trace: None,
        }
    }

    pub fn node(&self, id: u64) -> &Raft {
        self.nodes[&NodeId(id)].raft()
    }
    pub fn node_mut(&mut self, id: u64) -> &mut Raft {
        self.nodes
            .get_mut(&NodeId(id))
            .expect("node exists")
            .raft_mut()
    }
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn note(&mut self, s: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t(s());
        }
    }

    /// The live leaders, highest term first.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        let mut v: Vec<(NodeId, Term)> = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == Role::Leader)
            .map(|r| (r.id(), r.term()))
            .collect();
        v.sort_by_key(|l| std::cmp::Reverse(l.1));
        v
    }

    /// The leader of the highest term, if any.
    pub fn leader(&self) -> Option<u64> {
        self.leaders().first().map(|l| l.0 .0)
    }

    pub fn tick(&mut self, id: NodeId) {
        if let Some(r) = self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut()) {
            r.tick();
        }
    }

    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// Executes every pending Ready of `id` (no crash).
    pub fn process(&mut self, id: NodeId) {
        for _ in 0..100 {
            let ready = match self.nodes.get(&id).and_then(|n| n.raft.as_ref()) {
                Some(r) => r.has_ready(),
                None => false,
            };
            if !ready {
                return;
            }
            self.pump(id);
        }
        panic!("node {id} never ran out of Ready");
    }

    pub fn process_all(&mut self) {
        for id in self.ids() {
            self.process(id);
        }
    }

    /// Takes one output batch of `id`: stores it, queues its messages, applies, acknowledges.
    pub fn pump(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let rd = raft.ready();
        // Log matching: an entry id always carries the same payload and follows the same term.
        let mut prev_term = rd
            .entries
            .first()
            .map(|e| {
                let p = e.index.0 - 1;
                let from_rd = rd.snapshot.as_ref().filter(|m| m.last.index.0 == p);
                from_rd.map(|m| m.last.term).or_else(|| {
                    raft.term_at(LogIndex(p)).or_else(|| {
                        (node.durable.snapshot.last.index.0 == p)
                            .then_some(node.durable.snapshot.last.term)
                    })
                })
            })
            .unwrap_or(None);
        for (k, e) in rd.entries.iter().enumerate() {
            if k > 0 {
                assert_eq!(
                    e.index,
                    rd.entries[k - 1].index.next(),
                    "node {id}: Ready entries not contiguous"
                );
            }
            let sum = checksum(&e.data, e.kind);
            let pt = prev_term.unwrap_or(Term(u64::MAX));
            match self.entry_ids.get(&e.id()) {
                Some(&(s, t)) => {
                    assert_eq!(s, sum, "LOG MATCHING: entry {} has two payloads", e.id());
                    if pt != Term(u64::MAX) && t != Term(u64::MAX) {
                        assert_eq!(
                            t, pt,
                            "LOG MATCHING: node {id} holds {} after term {pt}, another node after term {t}",
                            e.id()
                        );
                    }
                }
                None => {
                    self.entry_ids.insert(e.id(), (sum, pt));
                }
            }
            prev_term = Some(e.term);
        }
        let msgs = rd.messages.clone();
        self.outbox.extend(msgs);
        let node = self.nodes.get_mut(&id).expect("node exists");
        if let Some(meta) = &rd.snapshot {
            let sm = self
                .snapshots
                .get(&meta.last)
                .expect("snapshot content")
                .clone();
            install_durable(&mut node.durable, meta, sm.clone());
            node.sm = (*sm).clone();
            node.sm_conf = meta.conf.clone();
            node.applied = meta.last.index;
        }
        if let Some(hs) = rd.hard_state {
            node.durable.hard_state = hs;
        }
        append_durable(&mut node.durable, &rd.entries);
        self.outbox.extend(rd.persisted_messages.iter().cloned());
        for e in &rd.committed {
            self.apply(id, e);
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        for rs in &rd.read_states {
            node.reads_waiting.push((*rs, 0));
        }
        self.serve_reads(id);
        let node = self.nodes.get_mut(&id).expect("node exists");
        let persisted = node.durable.last_index();
        let applied = node.applied;
        node.raft_mut().advance(persisted, applied);
    }

    fn apply(&mut self, id: NodeId, e: &Entry) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        assert_eq!(
            e.index,
            node.applied.next(),
            "node {id}: applied {} then got {} (each index exactly once, in order)",
            node.applied,
            e.index
        );
        node.applied = e.index;
        node.sm.push(e.id());
        assert_eq!(node.sm.len() as u64, e.index.0);
        if e.kind == EntryKind::ConfChange {
            let cc = ConfChange::decode(&e.data).expect("conf change decodes");
            node.sm_conf = cc.apply_to(&node.sm_conf);
        }
        match self.applied.get(&e.index) {
            Some(&other) => assert_eq!(
                other,
                e.id(),
                "STATE MACHINE SAFETY: node {id} applied {} at {}, another node applied {other}",
                e.id(),
                e.index
            ),
            None => {
                self.applied.insert(e.index, e.id());
            }
        }
        self.applied_max = self.applied_max.max(e.index);
    }

    fn serve_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        let applied = node.applied;
        let (ready, wait): (Vec<_>, Vec<_>) = node
            .reads_waiting
            .drain(..)
            .partition(|(rs, _)| rs.index <= applied);
        node.reads_waiting = wait;
        for (rs, _) in ready {
            if let Some(&floor) = self.read_floor.get(&rs.ctx) {
                assert!(
                    rs.index >= floor,
                    "READ LINEARIZABILITY: read {} served by node {id} at index {} misses a write \
                     acknowledged at {floor} before the read began",
                    rs.ctx,
                    rs.index
                );
            }
            self.served_reads.push(ServedRead {
                node: id,
                ctx: rs.ctx,
                index: rs.index,
            });
        }
    }

    /// A client read at `id`: remembers the highest index any client has seen applied.
    pub fn read(&mut self, id: NodeId) -> Option<u64> {
        let ctx = self.next_ctx;
        let floor = self.applied_max;
        let r = self.nodes.get_mut(&id)?.raft.as_mut()?;
        if r.read_index(ctx).is_ok() {
            self.next_ctx += 1;
            self.read_floor.insert(ctx, floor);
            Some(ctx)
        } else {
            None
        }
    }

    /// Delivers one message (dropped when its link is blocked or the receiver is down).
    pub fn deliver(&mut self, msg: Message) {
        let up = self.nodes.get(&msg.to).is_some_and(|n| n.is_up());
        let is_snapshot = matches!(msg.body, MessageBody::Snapshot { .. });
        if !up || self.blocked.contains(&(msg.from, msg.to)) {
            if is_snapshot {
                self.report_snapshot(msg.from, msg.to, false);
            }
            return;
        }
        self.note(|| {
            format!(
                "deliver {} -> {} t{} {:?}",
                msg.from,
                msg.to,
                msg.term.0,
                short(&msg.body)
            )
        });
        if self.record_delivered {
            self.delivered.push(msg.clone());
        }
        let (from, to) = (msg.from, msg.to);
        self.nodes
            .get_mut(&to)
            .expect("node exists")
            .raft_mut()
            .step(msg);
        if is_snapshot {
            self.report_snapshot(from, to, true);
        }
    }

    fn report_snapshot(&mut self, from: NodeId, to: NodeId, ok: bool) {
        if let Some(r) = self.nodes.get_mut(&from).and_then(|n| n.raft.as_mut()) {
            r.report_snapshot(to, ok);
        }
    }

    /// Processes and delivers until nothing moves (no ticks).
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            self.process_all();
            if self.outbox.is_empty() {
                return;
            }
            let msgs = std::mem::take(&mut self.outbox);
            for m in msgs {
                self.deliver(m);
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks every node `n` times, stabilizing after each.
    pub fn run_ticks(&mut self, n: u64) {
        for _ in 0..n {
            self.tick_all();
            self.stabilize();
        }
    }

    /// Ticks until some node is leader (at most `max` ticks).
    pub fn run_until_leader(&mut self, max: u64) -> u64 {
        for _ in 0..max {
            self.tick_all();
            self.stabilize();
            if let Some(l) = self.leader() {
                return l;
            }
        }
        panic!("no leader after {max} ticks");
    }

    /// Makes `id` start a new (pre-)election (ticks only it until it does), then stabilizes.
    pub fn campaign(&mut self, id: u64) {
        let term = self.node(id).term();
        for _ in 0..1000 {
            self.tick(NodeId(id));
            let r = self.node(id);
            if r.role() == Role::PreCandidate || r.term() > term {
                self.stabilize();
                return;
            }
        }
        panic!("node {id} never campaigned");
    }

    /// The live leader of `term`, if any.
    pub fn leader_of_term(&self, term: Term) -> Option<u64> {
        self.leaders().iter().find(|l| l.1 == term).map(|l| l.0 .0)
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other.0 != id {
                self.blocked.insert((NodeId(id), other));
                self.blocked.insert((other, NodeId(id)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn propose(&mut self, id: u64, data: &[u8]) -> EntryId {
        self.node_mut(id)
            .propose(data.to_vec())
            .expect("leader accepts the proposal")
    }

    /// Crash `id` (keeping only what was synced).
    pub fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if n.raft.take().is_some() {
                n.reads_waiting.clear();
                self.note(|| format!("crash {id}"));
            }
        }
    }

    /// Restart `id` from its durable state.
    pub fn restart(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.raft.is_some() {
            return;
        }
        n.restarts += 1;
        n.cfg.seed = n.cfg.seed.wrapping_add(0x9e37_79b9);
        n.sm = (*n.durable.snapshot_sm).clone();
        n.sm_conf = n.durable.snapshot.conf.clone();
        n.applied = n.durable.snapshot.last.index;
        n.raft = Some(Raft::new(n.cfg.clone(), restored(&n.durable)));
        self.note(|| format!("restart {id}"));
    }

    /// Takes a snapshot of `id` at its applied index, compacting up to `keep` entries before it.
    pub fn snapshot(&mut self, id: NodeId, keep: u64) {
        let n = self.nodes.get_mut(&id).expect("node exists");
        if n.raft.is_none() || n.applied <= n.durable.snapshot.last.index {
            return;
        }
        let last = *n.sm.last().expect("applied something");
        assert_eq!(last.index, n.applied);
        let meta = SnapshotMeta {
            last,
            conf: n.sm_conf.clone(),
        };
        let content = Rc::new(n.sm.clone());
        let content = match self.snapshots.get(&last) {
            Some(c) => {
                assert_eq!(**c, *content, "two different snapshots at {last}");
                c.clone()
            }
            None => {
                self.snapshots.insert(last, content.clone());
                content
            }
        };
        let compact_to = LogIndex(last.index.0.saturating_sub(keep));
        let d = &mut n.durable;
        d.snapshot = meta.clone();
        d.snapshot_sm = content;
        if compact_to > d.log_offset {
            let drop = ((compact_to.0 - d.log_offset.0) as usize).min(d.log.len());
            d.log.drain(..drop);
            d.log_offset = compact_to;
        }
        n.raft_mut().snapshot_taken(meta, compact_to);
        self.note(|| format!("snapshot {id} at {last} compact {compact_to}"));
    }
}

fn restored(d: &Durable) -> Restored {
    let from = d.snapshot.last.index;
    assert!(
        d.last_index() >= from || d.log.is_empty(),
        "durable log ends before the snapshot"
    );
    Restored {
        hard_state: d.hard_state.clone(),
        snapshot: d.snapshot.clone(),
        entries: d.log.iter().filter(|e| e.index > from).cloned().collect(),
    }
}

fn install_durable(d: &mut Durable, meta: &SnapshotMeta, sm: Rc<SmState>) {
    d.snapshot = meta.clone();
    d.snapshot_sm = sm;
    d.log.clear();
    d.log_offset = meta.last.index;
}

fn append_durable(d: &mut Durable, entries: &[Entry]) {
    let Some(first) = entries.first() else {
        return;
    };
    assert!(
        first.index > d.log_offset && first.index <= d.last_index().next(),
        "append at {} to a durable log of ({}, {}]",
        first.index,
        d.log_offset,
        d.last_index()
    );
    d.log
        .truncate((first.index.0 - d.log_offset.0 - 1) as usize);
    d.log.extend_from_slice(entries);
}

/// A compact rendering of a message body for traces.
pub fn short(b: &MessageBody) -> String {
    match b {
        MessageBody::Append {
            prev,
            entries,
            commit,
        } => format!(
            "append prev={prev} n={} last={} commit={commit}",
            entries.len(),
            entries.last().map_or(prev.index, |e| e.index)
        ),
        MessageBody::Snapshot { meta } => format!("snapshot {}", meta.last),
        other => format!("{other:?}"),
    }
}
