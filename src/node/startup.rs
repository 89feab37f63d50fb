//! Start-up: load the config's members, the hard state, the newest valid snapshot and the log
//! after it, then bind the listeners. One log line per step, with facts.
//!
//! Commit starts at the snapshot index, never at the end of the log: what the log holds beyond
//! the snapshot is committed only when the protocol says so again (seed lesson 8).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpListener;
use mio::{Interest, Poll};
use slab::Slab;

use super::clock::Clock;
use super::snapshot::{self, SnapshotReceiver, Snapshotter};
use super::{
    sys, MemberAddrs, Node, NodeError, Stats, TimerId, CLIENT_LISTENER, PEER_LISTENER, SIGNALS,
};
use crate::config::Config;
use crate::kv::{KvStore, StateMachine};
use crate::raft::{self, ConfState, HardState, LogIndex, NodeId, Raft, Restored, SnapshotMeta};
use crate::timer::TimerWheel;
use crate::wal::{HardStateStore, Wal, WalOptions};

/// Start a node with the skiplist KV and serve until a signal. `join`: this node is not in the
/// initial membership; it waits to be added by the cluster (`MEMBER ADD`).
pub fn run(cfg: Config, join: bool) -> Result<(), NodeError> {
    let seed = cfg.seed.unwrap_or(cfg.id.0);
    let mut node = Node::start(cfg, join, move || KvStore::new(seed))?;
    node.serve()
}

/// Encode the member address table for a snapshot's `extra` blob: one line per member,
/// `<id> <peer addr> <client addr>\n`, in id order (UTF-8 text; documented in snapshot.rs's
/// format as opaque node metadata).
pub(super) fn encode_members(members: &BTreeMap<NodeId, MemberAddrs>) -> Vec<u8> {
    let mut out = String::new();
    for (id, m) in members {
        out.push_str(&format!("{} {} {}\n", id.0, m.peer, m.client));
    }
    out.into_bytes()
}

pub(super) fn decode_members(b: &[u8]) -> Result<BTreeMap<NodeId, MemberAddrs>, String> {
    let text = std::str::from_utf8(b).map_err(|_| "member table is not UTF-8".to_string())?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let parse = || -> Option<(NodeId, MemberAddrs)> {
            if f.len() != 3 {
                return None;
            }
            let id = NodeId(f[0].parse().ok()?);
            let peer: SocketAddr = f[1].parse().ok()?;
            let client: SocketAddr = f[2].parse().ok()?;
            Some((id, MemberAddrs { peer, client }))
        };
        let (id, m) = parse().ok_or_else(|| format!("bad member line {line:?}"))?;
        out.insert(id, m);
    }
    Ok(out)
}

/// The addresses a membership change carries in its context: `peer=<addr> client=<addr>`.
pub(super) fn decode_member_context(b: &[u8]) -> Option<MemberAddrs> {
    let text = std::str::from_utf8(b).ok()?;
    let mut peer = None;
    let mut client = None;
    for word in text.split_whitespace() {
        if let Some(v) = word.strip_prefix("peer=") {
            peer = v.parse().ok();
        } else if let Some(v) = word.strip_prefix("client=") {
            client = v.parse().ok();
        }
    }
    Some(MemberAddrs {
        peer: peer?,
        client: client?,
    })
}

impl<S: StateMachine> Node<S> {
    /// Recover durable state and bind the listeners.
    pub fn start(
        cfg: Config,
        join: bool,
        mut make_sm: impl FnMut() -> S + 'static,
    ) -> Result<Node<S>, NodeError> {
        let id = cfg.id;
        let members: BTreeMap<NodeId, MemberAddrs> = cfg
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    MemberAddrs {
                        peer: m.peer,
                        client: m.client,
                    },
                )
            })
            .collect();
        info!(
            "config loaded: node {id} of members [{}]{}",
            members
                .iter()
                .map(|(i, m)| format!("{i}@{}", m.peer))
                .collect::<Vec<_>>()
                .join(", "),
            if join { " (joining)" } else { "" }
        );
        let dir = cfg.data_dir.clone();
        fs::create_dir_all(&dir).map_err(|e| {
            NodeError::new(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let (mut hard_state_store, hard_state) =
            HardStateStore::open(&dir).map_err(|e| NodeError::new(format!("hard state: {e}")))?;
        info!(
            "hard state: term {}, vote {}",
            hard_state.term,
            fmt_vote(hard_state)
        );

        let (snap_meta, members, sm, snapshot_path) =
            load_snapshot(&cfg, join, members, &mut make_sm)?;

        let t0 = Instant::now();
        let log_dir = dir.join("log");
        let mut wal = Wal::open(
            &log_dir,
            WalOptions {
                segment_size: cfg.segment_bytes,
                ..WalOptions::default()
            },
        )
        .map_err(|e| NodeError::new(format!("log: {e}")))?;
        let mut entries = recovered_entries(&wal, &snap_meta)?;
        if entries.is_empty() && wal.last_index().is_some_and(|l| l != snap_meta.last.index) {
            // Nothing usable follows the snapshot; start the log afresh after it.
            wal.reset()
                .map_err(|e| NodeError::new(format!("log: {e}")))?;
        }
        if !join && snapshot_path.is_none() && wal.last_index().is_none() {
            entries = bootstrap(&mut wal, &members)?;
        }
        let mut hard_state = hard_state;
        if let Some(last) = entries.last() {
            if hard_state.term < last.term {
                // The log is ahead of the recorded term (a crash between writing the bootstrap
                // entries and the hard state): adopt the log's term, with no vote.
                hard_state = HardState {
                    term: last.term,
                    vote: None,
                };
                hard_state_store
                    .save(&hard_state)
                    .map_err(|e| NodeError::new(format!("saving hard state: {e}")))?;
            }
        }
        let durable_last = entries
            .last()
            .map(|e| e.index)
            .unwrap_or(snap_meta.last.index);
        info!(
            "log recovered: {} entries ({}..{}), {} segments, {} bytes, in {:?}",
            entries.len(),
            wal.first_index().map(|i| i.0).unwrap_or(0),
            wal.last_index().map(|i| i.0).unwrap_or(0),
            wal.segment_count(),
            wal.disk_bytes(),
            t0.elapsed()
        );

        let clock = Clock::new(Duration::from_millis(cfg.tick_ms));
        let seed = cfg
            .seed
            .unwrap_or_else(|| id.0 ^ u64::from(std::process::id()) << 20);
        let raft_cfg = raft::Config {
            election_timeout_ticks: clock.ms_to_ticks(cfg.election_timeout_ms),
            heartbeat_interval_ticks: clock.ms_to_ticks(cfg.heartbeat_interval_ms),
            ..raft::Config::new(id, seed)
        };
        let applied = snap_meta.last.index;
        let snapshot_meta = snap_meta.clone();
        let restored = Restored {
            hard_state,
            snapshot: snap_meta,
            entries,
        };
        let raft = Raft::new(raft_cfg, restored);

        let poll = Poll::new().map_err(|e| NodeError::new(format!("poll: {e}")))?;
        let me = members
            .get(&id)
            .ok_or_else(|| {
                NodeError::new(format!("node {id} has no addresses in the member table"))
            })?
            .clone();
        let mut peer_listener = bind(me.peer, "peer")?;
        let mut client_listener = bind(me.client, "client")?;
        poll.registry()
            .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
            .and_then(|_| {
                poll.registry()
                    .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            })
            .map_err(|e| NodeError::new(format!("registering listeners: {e}")))?;
        let signals = sys::signal_fd(&[libc::SIGTERM, libc::SIGINT])
            .map_err(|e| NodeError::new(format!("signalfd: {e}")))?;
        info!("listening: peers on {}, clients on {}", me.peer, me.client);

        let now = clock.now();
        let now_tick = clock.tick_at(now);
        let mut node = Node {
            cluster_id: crate::wire::cluster_id(&cfg.cluster_name),
            id,
            poll,
            now,
            now_tick,
            last_raft_tick: now_tick,
            wheel: TimerWheel::new(now_tick),
            clock,
            raft,
            wal,
            hard_state: hard_state_store,
            sm,
            peer_listener,
            client_listener,
            signals,
            conns: Slab::new(),
            awaiting_hello: VecDeque::new(),
            client_conns: 0,
            peer_conns: 0,
            next_gen: 0,
            dirty: Vec::new(),
            leftover: Vec::new(),
            members: BTreeMap::new(),
            peers: HashMap::new(),
            waiters: BTreeMap::new(),
            reads: HashMap::new(),
            reads_ready: Vec::new(),
            next_read_ctx: 1,
            forwards: HashMap::new(),
            next_forward_id: 1,
            durable_last,
            applied,
            applied_term: snapshot_meta.last.term,
            conf_applied: snapshot_meta.conf.clone(),
            make_sm: Box::new(make_sm),
            snapshot_path,
            snapshot_meta,
            received_snapshot: None,
            snapshot_requested: false,
            snapshotter: Snapshotter::new(),
            receiver: SnapshotReceiver::new(dir.clone()),
            wal_discard_to: LogIndex(0),
            log_bytes_since_snapshot: 0,
            read_only: None,
            disk_retry_at: now,
            was_leader: false,
            in_ready: false,
            deferred_reports: Vec::new(),
            stopping: false,
            stats: Stats {
                started: Some(now),
                last_snapshot_index: applied,
                ..Stats::default()
            },
            cfg,
        };
        node.register_fd(node.signals.as_raw_fd(), SIGNALS)
            .map_err(|e| NodeError::new(format!("registering signals: {e}")))?;
        if node.snapshot_path.is_some() {
            node.receiver.set_installed(node.snapshot_meta.last);
        }
        node.set_members(members);
        node.schedule(now_tick + 1, TimerId::RaftTick);
        node.schedule(now_tick + 1, TimerId::Housekeeping);
        Ok(node)
    }
}

fn fmt_vote(hs: HardState) -> String {
    hs.vote
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into())
}

type Loaded<S> = (
    SnapshotMeta,
    BTreeMap<NodeId, MemberAddrs>,
    S,
    Option<std::path::PathBuf>,
);

/// The newest valid snapshot, or the initial state: every configured member a voter (none,
/// for a joining node, which waits to be added).
fn load_snapshot<S: StateMachine>(
    cfg: &Config,
    join: bool,
    members: BTreeMap<NodeId, MemberAddrs>,
    make_sm: &mut impl FnMut() -> S,
) -> Result<Loaded<S>, NodeError> {
    match snapshot::remove_stale_temp_files(&cfg.data_dir) {
        Ok(0) => {}
        Ok(n) => info!("removed {n} unfinished snapshot files"),
        Err(e) => {
            return Err(NodeError::new(format!(
                "cleaning {}: {e}",
                cfg.data_dir.display()
            )))
        }
    }
    let loaded = snapshot::load_newest(&cfg.data_dir, &mut *make_sm)
        .map_err(|e| NodeError::new(format!("snapshot: {e}")))?;
    match loaded {
        Some((header, sm, path)) => {
            let mut table = decode_members(&header.extra)
                .map_err(|e| NodeError::new(format!("snapshot {}: {e}", path.display())))?;
            // Our own addresses come from the config (the operator may have moved us).
            if let Some(me) = members.get(&cfg.id) {
                table.insert(cfg.id, me.clone());
            }
            for (id, m) in &members {
                table.entry(*id).or_insert_with(|| m.clone());
            }
            info!(
                "snapshot: loaded {} at {} ({} keys)",
                path.display(),
                header.meta.last,
                sm.len()
            );
            Ok((header.meta, table, sm, Some(path)))
        }
        None => {
            info!("snapshot: none");
            let voters = if join {
                Vec::new()
            } else {
                members.keys().copied().collect()
            };
            let meta = SnapshotMeta {
                last: Default::default(),
                conf: ConfState::new(voters, vec![]),
            };
            Ok((meta, members, make_sm(), None))
        }
    }
}

/// A new cluster's log begins with one `AddVoter` entry per configured member (term 1,
/// indexes 1..=n, in id order, addresses in the context), written and synced before anything
/// else. Every member builds the same entries from the same config file, so their logs agree;
/// a node that joins later replays them and learns the whole membership from the log alone
/// (a membership known only from a config file would let a promoted joiner believe it is
/// alone and elect itself).
fn bootstrap(
    wal: &mut Wal,
    members: &BTreeMap<NodeId, MemberAddrs>,
) -> Result<Vec<raft::Entry>, NodeError> {
    let entries: Vec<raft::Entry> = members
        .iter()
        .enumerate()
        .map(|(i, (&id, m))| raft::Entry {
            term: raft::Term(1),
            index: LogIndex(i as u64 + 1),
            kind: raft::EntryKind::ConfChange,
            data: raft::ConfChange {
                op: raft::ConfChangeOp::AddVoter,
                node: id,
                context: format!("peer={} client={}", m.peer, m.client).into_bytes(),
            }
            .encode(),
        })
        .collect();
    wal.append(&entries)
        .and_then(|_| wal.sync())
        .map_err(|e| NodeError::new(format!("writing the bootstrap entries: {e}")))?;
    info!(
        "bootstrapped a new cluster log with {} members",
        entries.len()
    );
    Ok(entries)
}

/// The log entries after the snapshot. A log that starts after the snapshot's next index has
/// lost entries: refuse to start rather than run with a hole.
fn recovered_entries(wal: &Wal, snap: &SnapshotMeta) -> Result<Vec<raft::Entry>, NodeError> {
    let (Some(first), Some(last)) = (wal.first_index(), wal.last_index()) else {
        return Ok(Vec::new());
    };
    let from = snap.last.index.next();
    if last < from {
        return Ok(Vec::new());
    }
    if first > from {
        return Err(NodeError::new(format!(
            "log starts at index {first} but the snapshot ends at {}: entries {}..{} are missing",
            snap.last.index,
            from,
            first.0 - 1
        )));
    }
    if snap.last.index > LogIndex(0) {
        if let Some(t) = wal.term(snap.last.index) {
            if t != snap.last.term {
                // The log before our snapshot disagrees with it: only what follows a matching
                // entry can be trusted; drop the rest and let the leader resend it.
                log::warn!(
                    "log term {t} at snapshot index {} differs from the snapshot's {}; ignoring the log",
                    snap.last.index,
                    snap.last.term
                );
                return Ok(Vec::new());
            }
        }
    }
    wal.entries(from, last.next(), usize::MAX)
        .map_err(|e| NodeError::new(format!("reading the log: {e}")))
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .map_err(|e| NodeError::new(format!("cannot listen for {what}s on {addr}: {e}")))
}
