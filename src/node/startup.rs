//! Start-up (recovery): from a `Disk` and the config, load the hard state, the newest valid
//! snapshot and the log after it, and build the `Node`. The one recovery path: `kvraftd` runs
//! it on the data directory (`event_loop.rs`), the simulator on its in-memory disks at every
//! restart. One log line per step, with facts.
//!
//! Commit starts at the snapshot index, never at the end of the log: what the log holds beyond
//! the snapshot is committed only when the protocol says so again (seed lesson 8).
//!
//! Identity (`membership.rs`, `wal::identity`). Storage that holds anything (a log, a hard
//! state, a snapshot) must hold its identity file too, or the node refuses to start (exit 3):
//! it cannot tell which incarnation voted and acknowledged what is there. Empty storage gets a
//! new incarnation. With `initial_cluster_state = new` (`--bootstrap`) it also gets a new
//! cluster id, and its log one entry making it the only voter, recorded with its incarnation;
//! otherwise its cluster id stays unknown (0) until a configured member's Hello names one,
//! and it neither votes nor campaigns until the leader admits it. Storage restored from a
//! backup (`restore.rs`) is of no cluster either: a snapshot with no membership and cluster
//! id 0; with `--bootstrap` it gets a new cluster id and the founder's entry right after the
//! snapshot, without it it waits to be admitted like empty storage.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::info;

use super::applied::Applied;
use super::clock::Clock;
use super::incoming::Incoming;
use super::membership::{Identities, MemberLog, MemberRecord, MemberTable};
use super::net::Net;
use super::pending::Pending;
use super::storage::Disk;
use super::stored::Stored;
use super::{Connections, Node, NodeError, Peers, Stats, TimerId};
use crate::config::{Config, InitialClusterState};
use crate::kv::StateMachine;
use crate::raft::{self, ConfState, HardState, LogIndex, NodeId, Raft, Restored, SnapshotMeta};
use crate::timer::TimerWheel;
use crate::wal::{ClusterId, Identity, IncarnationId};

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// Recover the node from `disk`. `join` only shows in the log: a node forms a cluster
    /// only with `initial_cluster_state = new` (`--bootstrap`), and otherwise waits to be
    /// admitted, `--join` or not. `start`: the instant tick 0 stands for; `now`: the
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
        let configured = config_members(&cfg, join);
        let mut hard_state = disk.recovered_hard_state();
        info!(
            "hard state: term {}, vote {}",
            hard_state.term,
            fmt_vote(&hard_state)
        );
        match (disk.uncertain_tail(), hard_state.uncertain) {
            (Some(cut), Some(since)) => log::warn!(
                "log tail uncertain: {cut}; this may have been an acknowledged batch, so until the log holds an entry of a term above {since} this node votes and campaigns only once enough other voters told it their log positions (raft/uncertain.rs)"
            ),
            (None, Some(since)) => info!(
                "log tail still uncertain since term {since} (an earlier start cut it)"
            ),
            _ => {}
        }
        let (snap_meta, table, sm, have_snapshot) = load_snapshot(&mut disk, &mut make_sm)?;
        let used =
            have_snapshot || disk.log_stats().last.is_some() || hard_state != HardState::default();
        let mut identity = load_identity(&cfg, &mut disk, used)?;
        let damaged = disk.damage();
        if let Some(d) = &damaged {
            // Entries this node acknowledged may be gone: it must not count as the member
            // that acknowledged them. A new incarnation keeps the intact prefix and the
            // cluster id; the leader re-admits it (learner, caught up, promoted).
            identity = Identity::new_incarnation(identity.cluster)
                .map_err(|e| NodeError::new(e.to_string()))?;
            disk.store_identity(&identity)
                .map_err(|e| NodeError::new(format!("storing the identity: {e}")))?;
            log::warn!(
                "log damage: {d}; kept the intact prefix and rejoining as a new incarnation {} (the leader re-admits it)",
                identity.incarnation
            );
        }
        let mut entries = recovered_entries(&disk, &snap_meta)?;
        let log_last = disk.log_stats().last;
        if entries.is_empty() && log_last.is_some_and(|l| l != snap_meta.last.index) {
            // Nothing usable follows the snapshot; start the log afresh after it.
            disk.reset_log()
                .map_err(|e| NodeError::new(format!("log: {e}")))?;
        }
        let forms = cfg.initial_cluster_state == InitialClusterState::New;
        // Storage of no cluster yet: empty, or restored from a backup (`restore.rs`: a
        // snapshot with no membership, and no cluster id).
        let unformed = disk.log_stats().last.is_none()
            && snap_meta.conf.voters.is_empty()
            && snap_meta.conf.learners.is_empty();
        if forms && unformed && identity.cluster.0 == 0 {
            identity.cluster = ClusterId::random().map_err(|e| NodeError::new(e.to_string()))?;
            disk.store_identity(&identity)
                .map_err(|e| NodeError::new(format!("storing the identity: {e}")))?;
            info!(
                "identity: formed a new cluster {} (--bootstrap) on the restored snapshot {}, incarnation {}",
                identity.cluster, snap_meta.last, identity.incarnation
            );
        }
        if forms && unformed {
            let me = configured
                .iter()
                .find(|m| m.0 == id)
                .expect("config holds us");
            let record = MemberRecord {
                peer: me.1,
                client: me.2,
                incarnation: identity.incarnation.0,
                auto_promote: true,
            };
            entries = bootstrap(&mut disk, id, &record, snap_meta.last)?;
        } else if forms {
            info!("--bootstrap / initial_cluster_state = new ignored: this storage already belongs to cluster {}", identity.cluster);
        }
        if let Some(last) = entries.last() {
            if hard_state.term < last.term {
                // The log is ahead of the recorded term (a crash between writing the bootstrap
                // entry and the hard state): adopt the log's term, with no vote.
                hard_state = HardState {
                    term: last.term,
                    vote: None,
                    uncertain: hard_state.uncertain.map(|t| t.max(last.term)),
                    tail_confs: std::mem::take(&mut hard_state.tail_confs),
                };
                disk.save_hard_state(&hard_state)
                    .map_err(|e| NodeError::new(format!("saving hard state: {e}")))?;
            }
        }
        let member_log = MemberLog::new(table, snap_meta.last.index, &entries);
        let mut ids = Identities::new(
            identity.cluster.0,
            identity.incarnation.0,
            member_log,
            configured,
        );
        ids.set_damaged(damaged.is_some());
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
            ids,
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
                std::time::Duration::from_millis(cfg.leader_sync_wait_ms),
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
            arg_bufs: Default::default(),
            reply_buf: Vec::new(),
            stats: Stats {
                started: Some(now),
                last_snapshot_index: applied,
                ..Stats::default()
            },
            ttl: Default::default(),
            stopping: None,
            contact: Default::default(),
            backup: Default::default(),
            telemetry: Default::default(),
            cfg,
        };
        node.refresh_membership();
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

/// The members the config file names: (id, peer, client).
fn config_members(cfg: &Config, join: bool) -> Vec<(NodeId, SocketAddr, SocketAddr)> {
    let members: Vec<_> = cfg
        .members
        .iter()
        .map(|m| (m.id, m.peer, m.client))
        .collect();
    info!(
        "config loaded: node {} of members [{}]{}",
        cfg.id,
        members
            .iter()
            .map(|(i, p, _)| format!("{i}@{p}"))
            .collect::<Vec<_>>()
            .join(", "),
        if join {
            " (--join: the default without --bootstrap)"
        } else {
            ""
        }
    );
    members
}

/// This storage's identity. Absent on storage that holds something: refused (exit 3). Absent
/// on empty storage: a new incarnation (and, when forming a cluster, a new cluster id),
/// stored before anything else is written.
fn load_identity<D: Disk>(cfg: &Config, disk: &mut D, used: bool) -> Result<Identity, NodeError> {
    let loaded = disk.load_identity().map_err(|e| {
        NodeError::identity(format!(
            "{e} (move the data directory {} aside to rejoin as a new member incarnation)",
            cfg.data_dir.display()
        ))
    })?;
    if let Some(identity) = loaded {
        info!(
            "identity: cluster {}, incarnation {}",
            identity.cluster, identity.incarnation
        );
        if identity.incarnation.0 == 0 {
            return Err(NodeError::identity("the identity file names incarnation 0"));
        }
        return Ok(identity);
    }
    if used {
        return Err(NodeError::identity(format!(
            "the data directory {} holds a log but no identity file: it cannot be told which member incarnation wrote it; move it aside to rejoin as a new incarnation",
            cfg.data_dir.display()
        )));
    }
    let fresh =
        |r: Result<u128, crate::wal::IdentityError>| r.map_err(|e| NodeError::new(e.to_string()));
    let mut incarnation = 0;
    while incarnation == 0 {
        incarnation = fresh(IncarnationId::random().map(|i| i.0))?;
    }
    let cluster = match cfg.initial_cluster_state {
        InitialClusterState::New => fresh(ClusterId::random().map(|c| c.0))?,
        InitialClusterState::Existing => 0,
    };
    let identity = Identity {
        cluster: ClusterId(cluster),
        incarnation: IncarnationId(incarnation),
    };
    disk.store_identity(&identity)
        .map_err(|e| NodeError::new(format!("storing the identity: {e}")))?;
    if cluster == 0 {
        info!("identity: new storage, incarnation {}; cluster id unknown until a configured member says it (not voting until admitted)", identity.incarnation);
    } else {
        info!(
            "identity: formed a new cluster {} (--bootstrap), incarnation {}",
            identity.cluster, identity.incarnation
        );
    }
    Ok(identity)
}

fn fmt_vote(hs: &HardState) -> String {
    hs.vote
        .map(|v| v.to_string())
        .unwrap_or_else(|| "none".into())
}

type Loaded<S> = (SnapshotMeta, MemberTable, S, bool);

/// The newest valid snapshot (with its member table), or the empty initial state: no
/// members at all (a founder's first entry makes it the only voter; anyone else waits).
fn load_snapshot<S: StateMachine, D: Disk>(
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
            let table = MemberTable::decode(&header.extra).map_err(|e| {
                NodeError::new(format!(
                    "snapshot at {}: member table: {e}",
                    header.meta.last
                ))
            })?;
            info!("snapshot: loaded {} ({} keys)", header.meta.last, sm.len());
            Ok((header.meta, table, sm, true))
        }
        None => {
            info!("snapshot: none");
            let meta = SnapshotMeta {
                last: Default::default(),
                conf: ConfState::new(vec![], vec![]),
            };
            Ok((meta, MemberTable::default(), make_sm(), false))
        }
    }
}

/// A new cluster's log begins with one entry (term 1, index 1; after a restored snapshot,
/// its index + 1 in its term): `AddVoter` of the founder, recorded with its addresses and
/// incarnation, written and synced before anything else. Every other member is admitted by
/// the leader as it connects (`membership.rs`), so every membership in any log names the
/// incarnations it counts.
fn bootstrap<D: Disk>(
    disk: &mut D,
    id: NodeId,
    record: &MemberRecord,
    after: raft::EntryId,
) -> Result<Vec<raft::Entry>, NodeError> {
    let entries = vec![raft::Entry {
        term: after.term.max(raft::Term(1)),
        index: after.index.next(),
        kind: raft::EntryKind::ConfChange,
        data: raft::ConfChange {
            op: raft::ConfChangeOp::AddVoter,
            node: id,
            context: record.encode(),
        }
        .encode()
        .into(),
    }];
    disk.append(&entries)
        .map_err(|e| format!("{e:?}"))
        .and_then(|_| disk.sync())
        .map_err(|e| NodeError::new(format!("writing the bootstrap entry: {e}")))?;
    info!("bootstrapped a new cluster: node {id} its only voter");
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
