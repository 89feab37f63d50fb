//! Start-up (recovery): from a `Disk` and the config, load the hard state, the newest valid
//! snapshot and the log after it, and build the `Node`. The one recovery path: `kvraftd` runs
//! it on the data directory (`event_loop.rs`), the simulator on its in-memory disks at every
//! restart. One log line per step, with facts.
//!
//! Commit starts at the snapshot index, never at the end of the log: what the log holds beyond
//! the snapshot is committed only when the protocol says so again (seed lesson 8).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

use super::applied::Applied;
use super::clock::Clock;
use super::incoming::Incoming;
use super::net::Net;
use super::pending::Pending;
use super::storage::Disk;
use super::stored::Stored;
use super::{Connections, MemberAddrs, Node, NodeError, Peers, Stats, TimerId};
use crate::config::Config;
use crate::kv::StateMachine;
use crate::raft::{self, ConfState, HardState, LogIndex, NodeId, Raft, Restored, SnapshotMeta};
use crate::timer::TimerWheel;

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

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// Recover the node from `disk`. `join`: this node is not in the initial membership; it
    /// waits to be added (`MEMBER ADD`). `start`: the instant tick 0 stands for; `now`: the
    /// time now (both from the caller: the node reads no clock). `first_forward_id`: a number
    /// larger at every start of this node (the shell uses the wall clock, the simulator counts
    /// starts): forwarded request ids begin there, so a leader's late reply to a request
    /// forwarded before a restart can never match a request forwarded after it.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: Config,
        join: bool,
        mut make_sm: impl FnMut() -> S + 'static,
        mut disk: D,
        net: N,
        start: Instant,
        now: Instant,
        first_forward_id: u64,
    ) -> Result<Node<S, D, N>, NodeError> {
        let id = cfg.id;
        let members = config_members(&cfg, join);
        let mut hard_state = disk.recovered_hard_state();
        info!(
            "hard state: term {}, vote {}",
            hard_state.term,
            fmt_vote(hard_state)
        );
        let (snap_meta, members, sm, have_snapshot) =
            load_snapshot(&cfg, join, members, &mut disk, &mut make_sm)?;
        let mut entries = recovered_entries(&disk, &snap_meta)?;
        let log_last = disk.log_stats().last;
        if entries.is_empty() && log_last.is_some_and(|l| l != snap_meta.last.index) {
            // Nothing usable follows the snapshot; start the log afresh after it.
            disk.reset_log()
                .map_err(|e| NodeError::new(format!("log: {e}")))?;
        }
        if !join && !have_snapshot && disk.log_stats().last.is_none() {
            entries = bootstrap(&mut disk, &members)?;
        }
        if let Some(last) = entries.last() {
            if hard_state.term < last.term {
                // The log is ahead of the recorded term (a crash between writing the bootstrap
                // entries and the hard state): adopt the log's term, with no vote.
                hard_state = HardState {
                    term: last.term,
                    vote: None,
                };
                disk.save_hard_state(&hard_state)
                    .map_err(|e| NodeError::new(format!("saving hard state: {e}")))?;
            }
        }
        let durable_last = entries
            .last()
            .map(|e| e.index)
            .unwrap_or(snap_meta.last.index);
        let log = disk.log_stats();
        info!(
            "log recovered: {} entries ({}..{}), {} segments, {} bytes",
            entries.len(),
            log.first.map(|i| i.0).unwrap_or(0),
            log.last.map(|i| i.0).unwrap_or(0),
            log.segments,
            log.bytes,
        );
        let clock = Clock::starting_at(start, Duration::from_millis(cfg.tick_ms));
        let seed = cfg
            .seed
            .unwrap_or_else(|| id.0 ^ u64::from(std::process::id()) << 20);
        let raft_cfg = raft::Config {
            election_timeout_ticks: clock.ms_to_ticks(cfg.election_timeout_ms),
            heartbeat_interval_ticks: clock.ms_to_ticks(cfg.heartbeat_interval_ms),
            ..raft::Config::new(id, seed)
        };
        if !members.contains_key(&id) {
            return Err(NodeError::new(format!(
                "node {id} has no addresses in the member table"
            )));
        }
        let applied = snap_meta.last.index;
        let snapshot_meta = snap_meta.clone();
        let restored = Restored {
            hard_state,
            snapshot: snap_meta,
            entries,
        };
        let raft = Raft::new(raft_cfg, restored);
        let now_tick = clock.tick_at(now);
        let receiver = disk.snapshot_receiver();
        let mut node = Node {
            cluster_id: crate::wire::cluster_id(&cfg.cluster_name),
            id,
            now,
            now_tick,
            last_raft_tick: now_tick,
            wheel: TimerWheel::new(now_tick),
            clock,
            raft,
            stored: Stored::new(
                disk,
                durable_last,
                have_snapshot.then(|| snapshot_meta.clone()),
                snapshot_meta.clone(),
                now,
            ),
            net,
            conns: Connections::new(),
            peers: Peers::new(),
            pending: Pending::new(first_forward_id),
            applied: Applied::new(sm, &snapshot_meta, Box::new(make_sm)),
            snapshot_requested: false,
            watch_fd: None,
            incoming: Incoming::new(receiver, have_snapshot.then_some(snapshot_meta.last)),
            was_leader: false,
            in_ready: false,
            deferred_reports: Vec::new(),
            stats: Stats {
                started: Some(now),
                last_snapshot_index: applied,
                ..Stats::default()
            },
            cfg,
        };
        node.set_members(members);
        node.schedule(now_tick + 1, TimerId::RaftTick);
        node.schedule(now_tick + 1, TimerId::Housekeeping);
        Ok(node)
    }

    /// This node's own addresses (peer, client): where the shell listens.
    pub fn own_addrs(&self) -> (SocketAddr, SocketAddr) {
        let me = &self.peers.members()[&self.id];
        (me.peer, me.client)
    }
}

/// The members the config file names.
fn config_members(cfg: &Config, join: bool) -> BTreeMap<NodeId, MemberAddrs> {
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
        "config loaded: node {} of members [{}]{}",
        cfg.id,
        members
            .iter()
            .map(|(i, m)| format!("{i}@{}", m.peer))
            .collect::<Vec<_>>()
            .join(", "),
        if join { " (joining)" } else { "" }
    );
    members
}

fn fmt_vote(hs: HardState) -> String {
    hs.vote
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into())
}

type Loaded<S> = (SnapshotMeta, BTreeMap<NodeId, MemberAddrs>, S, bool);

/// The newest valid snapshot, or the initial state: every configured member a voter (none,
/// for a joining node, which waits to be added).
fn load_snapshot<S: StateMachine, D: Disk>(
    cfg: &Config,
    join: bool,
    members: BTreeMap<NodeId, MemberAddrs>,
    disk: &mut D,
    make_sm: &mut impl FnMut() -> S,
) -> Result<Loaded<S>, NodeError> {
    match disk.remove_stale_snapshot_files() {
        Ok(0) => {}
        Ok(n) => info!("removed {n} unfinished snapshot files"),
        Err(e) => return Err(NodeError::new(e)),
    }
    let loaded = disk
        .load_newest_snapshot(make_sm)
        .map_err(|e| NodeError::new(format!("snapshot: {e}")))?;
    match loaded {
        Some((header, sm)) => {
            let mut table = decode_members(&header.extra)
                .map_err(|e| NodeError::new(format!("snapshot at {}: {e}", header.meta.last)))?;
            // Our own addresses come from the config (the operator may have moved us).
            if let Some(me) = members.get(&cfg.id) {
                table.insert(cfg.id, me.clone());
            }
            for (id, m) in &members {
                table.entry(*id).or_insert_with(|| m.clone());
            }
            info!("snapshot: loaded {} ({} keys)", header.meta.last, sm.len());
            Ok((header.meta, table, sm, true))
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
            Ok((meta, members, make_sm(), false))
        }
    }
}

/// A new cluster's log begins with one `AddVoter` entry per configured member (term 1,
/// indexes 1..=n, in id order, addresses in the context), written and synced before anything
/// else. Every member builds the same entries from the same config file, so their logs agree;
/// a node that joins later replays them and learns the whole membership from the log alone
/// (a membership known only from a config file would let a promoted joiner believe it is
/// alone and elect itself).
fn bootstrap<D: Disk>(
    disk: &mut D,
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
    disk.append(&entries)
        .map_err(|e| format!("{e:?}"))
        .and_then(|_| disk.sync())
        .map_err(|e| NodeError::new(format!("writing the bootstrap entries: {e}")))?;
    info!(
        "bootstrapped a new cluster log with {} members",
        entries.len()
    );
    Ok(entries)
}

/// The log entries after the snapshot. A log that starts after the snapshot's next index has
/// lost entries: refuse to start rather than run with a hole.
fn recovered_entries<D: Disk>(
    disk: &D,
    snap: &SnapshotMeta,
) -> Result<Vec<raft::Entry>, NodeError> {
    let log = disk.log_stats();
    let (Some(first), Some(last)) = (log.first, log.last) else {
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
        if let Some(t) = disk.log_term(snap.last.index) {
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
    disk.log_entries(from, last.next())
        .map_err(|e| NodeError::new(format!("reading the log: {e}")))
}
