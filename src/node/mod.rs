//! The node: the only place effects happen, through two narrow seams: `storage::Disk` (log,
//! hard state, snapshots) and `net::Net` (connections). `Node` itself never reads the clock,
//! polls, binds, forks or handles signals: the shell (`event_loop.rs`: mio, signalfd, the
//! snapshot child's pipe) does, and calls `Node::turn` with the time and the ready
//! connections. The simulator (`tests/sim.rs`) calls the very same `Node::turn` with an
//! in-memory disk and network and a simulated clock.
//!
//! Each turn (`Node::turn`):
//! 1. (shell) wait for readiness or the next deadline; read the clock once; accept;
//! 2. read (a bounded budget per connection), and hand what
//!    arrived to the core: peer messages to `Raft::step`, client writes to `Raft::propose`,
//!    client reads to `Raft::read_index` — everything that arrived this turn becomes one batch;
//! 3. fire due timers (Raft ticks, reconnects, housekeeping);
//! 4. execute the core's `Ready` in the contract's order (see `driver.rs`);
//! 5. flush every connection that has output, and re-derive its interest.
//!
//! Owned parts. `Node` holds the core and the connections, and a few parts that each own
//! their state and keep their own invariants behind methods (each part's fields are private
//! to its file; each has a `check_invariants`, which `Node::check_invariants` calls — debug
//! builds every turn, the simulator after every step):
//! - `Pending` (`pending.rs`): writes waiting for apply, reads waiting for their round and
//!   for apply, requests forwarded to the leader, and the ids that name them;
//! - `Applied` (`applied.rs`): the state machine, the last applied entry, the membership as
//!   of it;
//! - `Incoming` (`incoming.rs`): a snapshot being received from the leader, and the one
//!   received that waits for the core to install it;
//! - `Stored` (`stored.rs`): the `Disk`, the durable index, the snapshot on disk (never
//!   moving backwards), log compaction, and the read-only state of a full disk;
//! - `Connections` (`connections.rs`): the slab of client and peer connections, their counts
//!   and generations, the dirty and read-again lists, accepted peers awaiting their Hello,
//!   and each client's reply pipeline;
//! - `Peers` (`links.rs`): the member address table (and retired members' addresses) and one
//!   link per peer: its address, the connection shared with it, dial backoff, and the
//!   snapshot stream to it. Its check is given `Connections`, which its links point into.
//!
//! Files: `event_loop.rs` (the mio shell), `storage.rs` and `net.rs` (the seams), `conn.rs`
//! (one connection's buffers), `peers.rs` (dialing, handshakes, peer frames, snapshot
//! streams: behaviour over `Peers` and `Connections`), `clients.rs` (the RESP port,
//! dispatch, forwarding), `driver.rs` (the Ready contract, apply, snapshots), `info.rs`
//! (INFO and admin commands), `startup.rs` (recovery), `stop.rs` (the graceful stop: a
//! leader hands off first), `backup.rs` (the SNAPSHOT SAVE/OPEN/READ backup commands),
//! `contact.rs` (when each peer was last heard), `restore.rs` (`kvraftd --restore`), the
//! parts above, and `snapshot/` (the file format, files, the fork child, transfer, the
//! backup file).

pub mod clock;
pub mod conn;
pub mod net;
pub mod notify;
pub mod restore;
pub mod snapshot;
pub mod storage;
pub mod sys;
pub mod tls;

mod applied;
mod backup;
mod clients;
mod connections;
mod contact;
mod driver;
mod event_loop;
mod exposition;
mod http_port;
mod incoming;
mod info;
mod links;
mod membership;
mod peers;
mod pending;
mod startup;
mod stop;
mod stored;
mod telemetry;
mod ttl;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::client::session::Session;
use crate::client::Protocol;
use crate::config::Config;
use crate::kv::StateMachine;
use crate::raft::{EntryId, LogIndex, NodeId, Raft};
use crate::timer::{TimerHandle, TimerWheel};

use self::applied::Applied;
use self::clock::Clock;
use self::conn::{Conn, ReadStatus};
use self::connections::{ClientState, ConnKind, Connections};
use self::incoming::Incoming;
use self::links::{MemberAddrs, Peers};
use self::membership::Identities;
use self::net::{Net, NetStream};
use self::pending::Pending;
use self::snapshot::WriteRate;
use self::storage::Disk;
use self::stored::Stored;

pub use self::event_loop::run;

/// Ticks between housekeeping passes (forward timeouts, snapshot triggers, child deadline).
const HOUSEKEEPING_TICKS: u64 = 10;
/// A forwarded request whose leader has not answered within this long gets an error.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// A snapshot child still running after this long, plus twice the time its pace gives the
/// last snapshot's bytes (`snapshot_write_rate`), is killed (and retried later).
const SNAPSHOT_CHILD_DEADLINE: Duration = Duration::from_secs(600);
/// An accepted peer connection that has not said Hello within this long is closed, so idle
/// sockets cannot hold the peer port's slots (`PEER_CONNECTIONS_MAX`) against real members;
/// so is a client that has not finished its TLS handshake.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A fatal error: the node stops and the process exits non-zero (`exit_code`).
#[derive(Debug)]
pub struct NodeError(pub String, pub u8);

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NodeError {}

/// Exit status of a runtime failure (restarting may help).
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of an identity error: this data directory is not (or no longer) a member's
/// of this cluster; restarting cannot help (the systemd unit does not).
pub const EXIT_IDENTITY: u8 = 3;

impl NodeError {
    fn new(msg: impl Into<String>) -> NodeError {
        NodeError(msg.into(), EXIT_FAILURE)
    }

    fn identity(msg: impl Into<String>) -> NodeError {
        NodeError(msg.into(), EXIT_IDENTITY)
    }

    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        self.1
    }
}

/// Timers the loop schedules on the wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerId {
    RaftTick,
    Dial(NodeId),
    Housekeeping,
}

/// What the node tells the core about a peer, outside any message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CoreReport {
    /// A snapshot stream to the peer finished (`ok`) or failed.
    Snapshot,
    /// The connection to the peer broke.
    Unreachable,
}

/// Who is waiting for a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplyTo {
    /// A client connection (the generation tells a reused slab key apart) and the position of
    /// the request in that client's pipeline.
    Client { key: usize, gen: u64, seq: u64 },
    /// A follower forwarded the request; answer it with a `ClientReply` frame, encoded in the
    /// client's protocol.
    Peer {
        node: NodeId,
        id: u64,
        proto: Protocol,
    },
    /// A follower's ReadIndexRequest `id` (`clients.rs`): confirmed with a ReadIndexReply
    /// naming the index; anything delivered here is a failure, answered as a refusal.
    ReadIndex { node: NodeId, id: u64 },
}

/// Counters reported by INFO.
#[derive(Default)]
struct Stats {
    started: Option<Instant>,
    connections_received: u64,
    commands_processed: u64,
    rejected_connections: u64,
    syncs: u64,
    entries_applied: u64,
    snapshots_taken: u64,
    snapshots_installed: u64,
    last_snapshot_took: Duration,
    last_snapshot_fork: Duration,
    last_snapshot_bytes: u64,
    last_snapshot_index: LogIndex,
    snapshot_failures: u64,
}

pub struct Node<S: StateMachine, D: Disk, N: Net> {
    cfg: Config,
    id: NodeId,
    clock: Clock,
    /// The time of this turn, as the caller gave it.
    now: Instant,
    now_tick: u64,
    last_raft_tick: u64,
    wheel: TimerWheel<TimerId>,
    raft: Raft,
    /// The disk and what it holds (`stored.rs`).
    stored: Stored<D>,
    net: N,
    /// Every connection, client pipelines included (`connections.rs`).
    conns: Connections<N::Stream>,
    /// The address table and the link to each peer (`links.rs`).
    peers: Peers<D::Source>,
    /// FNV-1a of the configured cluster name (refuses peers configured for another cluster).
    cluster_id: u64,
    /// The cluster id, this node's incarnation, the member table of its log and the
    /// incarnation each peer connection announced (`membership.rs`).
    ids: Identities,
    /// Client requests accepted and not yet answered (`pending.rs`).
    pending: Pending,
    /// The state machine and how far it is applied (`applied.rs`).
    applied: Applied<S>,
    /// An admin asked for a snapshot (`SNAPSHOT`).
    snapshot_requested: bool,
    /// A descriptor the shell should watch (a snapshot child's pipe), once.
    watch_fd: Option<RawFd>,
    /// A snapshot coming from the leader (`incoming.rs`).
    incoming: Incoming<D::Partial>,
    /// Executing a Ready: the core takes no input until `advance` (its contract), so reports
    /// made meanwhile (a send that found a dead connection) wait in `deferred_reports`.
    in_ready: bool,
    deferred_reports: Vec<(CoreReport, NodeId, bool)>,
    /// Argument buffers reused by every command parsed (`clients.rs`) or forwarded to us
    /// (`peers.rs`): no allocation per argument (`client::resp::ArgBufs`).
    arg_bufs: crate::client::resp::ArgBufs,
    /// A forwarded command's reply, copied out of the peer connection's input (`peers.rs`);
    /// kept while at most `ARG_BUF_KEPT_SIZE_MAX` bytes.
    reply_buf: Vec<u8>,
    /// This node was leader at the end of the last turn.
    was_leader: bool,
    stats: Stats,
    /// The leader's time for TTLs and the reclaim of expired keys (`ttl.rs`).
    ttl: ttl::TtlClock,
    /// A graceful stop in progress (`stop.rs`).
    stopping: Option<stop::Stopping>,
    /// When each peer was last heard from (`contact.rs`).
    contact: contact::LastContact,
    /// The snapshot a backup is reading (`backup.rs`).
    backup: backup::BackupPin<D::Source>,
    /// What `/metrics` and `/readyz` report beyond the other parts' state (`telemetry.rs`).
    telemetry: telemetry::Telemetry,
}

/// Which listener accepted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Peer,
    Client,
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// One loop turn at `now` (see the module header): `ready` lists the connections (slab
    /// keys) with readiness events, and whether each is readable.
    pub fn turn(&mut self, now: Instant, ready: &[(usize, bool)]) -> Result<(), NodeError> {
        self.set_now(now);
        for &(key, readable) in ready {
            if self.conns.contains(key) {
                self.conn_ready(key, readable);
            }
        }
        self.read_leftovers();
        self.fire_timers();
        self.process_ready()?;
        self.flush_dirty();
        self.observe_turn();
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
        if let Some(why) = self.ids.foreign_majority(self.id) {
            // Another cluster's data directory (membership.rs, `foreign_majority`): no
            // restart can help, so exit status 3, which the systemd unit does not restart.
            return Err(NodeError::identity(why));
        }
        Ok(())
    }

    /// Set the time of the work that follows (never backwards).
    pub fn set_now(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        self.now_tick = self.clock.tick_at(self.now);
    }

    /// How long the shell may wait for events before the next turn is due.
    pub fn poll_timeout(&self, now: Instant) -> Duration {
        if self.conns.has_leftover() {
            return Duration::ZERO;
        }
        let timers = match self.wheel.next_deadline() {
            Some(at) => self.clock.until_tick(now, at),
            None => Duration::from_millis(100),
        };
        match self.stored.sync_wait(self.raft.commit(), now) {
            Some(sync) => timers.min(sync),
            None => timers,
        }
    }

    /// A descriptor to watch for readability (the snapshot child's pipe); the shell calls
    /// `snapshot_child_ended` when it is readable.
    pub fn take_watch_fd(&mut self) -> Option<RawFd> {
        self.watch_fd.take()
    }

    /// A listener accepted `stream` from `addr`.
    pub fn accept(&mut self, stream: N::Stream, addr: SocketAddr, listener: Listener) {
        let peer = listener == Listener::Peer;
        self.stats.connections_received += 1;
        let (count, max) = match peer {
            true => (self.conns.peer_count(), crate::limits::PEER_CONNECTIONS_MAX),
            false => (self.conns.client_count(), self.cfg.max_clients),
        };
        if count >= max {
            self.stats.rejected_connections += 1;
            if !peer {
                let mut stream = stream;
                let _ = io::Write::write(&mut stream, b"-ERR max number of clients reached\r\n");
            } else {
                warn!("refusing a peer connection from {addr}: {max} already open");
            }
            return;
        }
        let (conn, kind) = match peer {
            true => (Conn::peer(stream), ConnKind::PeerIn { from: None }),
            false => {
                // The local address is the configured client address: the stream is behind
                // the `Net` seam, which does not expose it.
                let laddr = self
                    .peers
                    .member(self.id)
                    .map(|m| m.client.to_string())
                    .unwrap_or_default();
                // The id is the generation `insert_conn` gives it: unique on this node.
                let mut session =
                    Session::new(self.conns.next_gen(), addr.to_string(), laddr, self.now);
                session.auth = crate::auth::ConnAuth::new(self.cfg.users.clone());
                let state = ClientState::new(addr, session);
                (Conn::client(stream), ConnKind::Client(state))
            }
        };
        match self.insert_conn(conn, kind) {
            // A peer must say Hello in time; a TLS client must finish its handshake.
            Ok(key) if peer || self.conns[key].conn.stream.handshaking() => {
                self.conns.await_hello(key, self.now + HELLO_TIMEOUT)
            }
            Ok(_) => {}
            Err(e) => warn!("registering a connection from {addr}: {e}"),
        }
    }

    /// The readiness event of connection `key` said its other side closed its end (or the
    /// socket failed): read it until EOF, since a short read no longer means "more will raise
    /// an edge" (`conn.rs`). Edge-triggered shells call this before the turn.
    pub fn read_to_end(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.conn.read_to_end();
        }
    }

    fn insert_conn(&mut self, conn: Conn<N::Stream>, kind: ConnKind) -> io::Result<usize> {
        self.conns.insert(&mut self.net, conn, kind)
    }

    fn conn_ready(&mut self, key: usize, readable: bool) {
        let c = &mut self.conns[key];
        if c.conn.connecting {
            self.dial_done(key);
            if !self.conns.contains(key) {
                return;
            }
        }
        if readable {
            self.read_conn(key);
        }
        if self.conns.contains(key) {
            self.mark_dirty(key);
        }
    }

    fn read_conn(&mut self, key: usize) {
        match self.conns[key].kind {
            ConnKind::Client(_) => self.read_client(key),
            ConnKind::PeerIn { .. } | ConnKind::PeerOut { .. } => self.read_peer(key),
        }
    }

    /// Read a connection within the per-event budget, handing what arrived to `parse` after
    /// every read (`parse` returns false once it closed the connection). Edge-triggered
    /// readiness is not repeated, so a connection whose budget ran out is marked to be read
    /// again next turn. A client that closed its end still gets the replies it is owed; a
    /// peer's connection closes at once.
    fn read_budgeted(&mut self, key: usize, parse: fn(&mut Self, usize) -> bool) {
        let mut budget = crate::limits::READ_BUDGET_PER_EVENT;
        loop {
            if matches!(self.conns[key].kind, ConnKind::Client(_)) && self.client_paused(key) {
                return;
            }
            let (status, got) = match self.conns[key].conn.read_some(budget) {
                Ok(r) => r,
                Err(e) => return self.close_conn(key, &format!("read: {e}")),
            };
            budget = budget.saturating_sub(got);
            if !parse(self, key) {
                return;
            }
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match status {
                ReadStatus::WouldBlock => return,
                ReadStatus::Closed if matches!(c.kind, ConnKind::Client(_)) => {
                    c.conn.close_after_flush = true;
                    return;
                }
                ReadStatus::Closed => return self.close_conn(key, "closed by peer"),
                ReadStatus::More if budget == 0 => return self.read_again(key),
                ReadStatus::More => {
                    if let Err(e) = c.conn.check_overflow() {
                        return self.close_conn(key, &e.to_string());
                    }
                }
            }
        }
    }

    /// Connections whose budget ran out last turn are read again (edge-triggered readiness
    /// will not repeat the event).
    fn read_leftovers(&mut self) {
        for (key, gen) in self.conns.take_leftover() {
            if !self.conns.begin_reread(key, gen) {
                continue;
            }
            self.read_conn(key);
            if self.conns.contains(key) {
                self.mark_dirty(key);
            }
        }
    }

    /// Read `key` again next turn, without waiting for readiness.
    fn read_again(&mut self, key: usize) {
        self.conns.read_again(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        self.conns.mark_dirty(key);
    }

    /// Write what each dirty connection has queued and re-derive its interest.
    fn flush_dirty(&mut self) {
        let dirty = self.conns.take_dirty();
        for &key in &dirty {
            self.flush_one(key);
        }
        self.conns.give_back_dirty(dirty);
    }

    fn flush_one(&mut self, key: usize) {
        let Some(c) = self.conns.begin_flush(key) else {
            return;
        };
        if let Err(e) = c.conn.flush() {
            self.close_conn(key, &format!("write: {e}"));
            return;
        }
        let owed = matches!(&c.kind, ConnKind::Client(st) if st.unanswered() > 0);
        if c.conn.done() && !owed {
            self.close_conn(key, "closed after reply");
            return;
        }
        let interest = c.conn.interest();
        if interest != c.registered {
            if let Err(e) = self.net.reregister(&mut c.conn.stream, key, interest) {
                self.close_conn(key, &format!("reregister: {e}"));
                return;
            }
            c.registered = interest;
        }
    }

    fn close_conn(&mut self, key: usize, why: &str) {
        let Some(mut c) = self.conns.remove(key) else {
            return;
        };
        self.net.deregister(&mut c.conn.stream);
        match c.kind {
            ConnKind::Client(ref st) => {
                log::debug!("client {} closed: {why}", st.addr);
            }
            ConnKind::PeerIn { from } => match from {
                Some(from) => {
                    info!("connection from node {from} closed: {why}");
                    self.peer_down(from, key);
                }
                None => {
                    let addr = self.net.peer_addr(&c.conn.stream);
                    let addr = addr.map_or("?".to_string(), |a| a.to_string());
                    info!("peer connection from {addr} closed before its Hello: {why}");
                }
            },
            ConnKind::PeerOut { to, .. } => {
                info!("connection to node {to} closed: {why}");
                self.peer_down(to, key);
            }
        }
    }

    fn fire_timers(&mut self) {
        let mut fired = Vec::new();
        self.wheel.advance(self.now_tick, &mut fired);
        for id in fired {
            match id {
                TimerId::RaftTick => self.raft_ticks(),
                TimerId::Dial(node) => {
                    if let Some(link) = self.peers.link_mut(node) {
                        link.dial_timer = None;
                    }
                    self.dial(node);
                }
                TimerId::Housekeeping => self.housekeeping(),
            }
        }
    }

    /// Tick the core once per tick elapsed since the last call (bounded, so a loop that stalled
    /// for a long time does not replay thousands of ticks at once).
    fn raft_ticks(&mut self) {
        let elapsed = self
            .now_tick
            .saturating_sub(self.last_raft_tick)
            .clamp(1, 1000);
        for _ in 0..elapsed {
            self.raft.tick();
        }
        self.last_raft_tick = self.now_tick;
        self.schedule(self.now_tick + 1, TimerId::RaftTick);
    }

    fn housekeeping(&mut self) {
        self.expire_forwards();
        self.expire_silent_peers();
        self.resend_stalled_snapshots();
        self.relink_known_nodes();
        self.dial_silent_peers();
        self.admit_members();
        if self.stored.disk().snapshot_running() {
            // The child may have written its status and still be exiting: reap it when gone.
            self.snapshot_child_ended();
        }
        self.stored.discard_some_log();
        self.hand_off_if_disk_full();
        self.maybe_snapshot();
        self.maybe_reclaim_expired();
        self.expire_backup_pin();
        let paced = WriteRate::from_config(self.cfg.snapshot_write_rate)
            .time_for(self.stats.last_snapshot_bytes.saturating_mul(2));
        let deadline = SNAPSHOT_CHILD_DEADLINE.saturating_add(paced);
        if self
            .stored
            .disk_mut()
            .snapshot_kill_if_overdue(self.now, deadline)
        {
            error!("snapshot child ran past {deadline:?}; killed it");
            self.stats.snapshot_failures += 1;
        }
        self.schedule(self.now_tick + HOUSEKEEPING_TICKS, TimerId::Housekeeping);
    }

    /// Close accepted peer connections that never said who they are, and clients that did not
    /// finish their TLS handshake in time.
    fn expire_silent_peers(&mut self) {
        for key in self.conns.take_silent(self.now) {
            let why = match self.conns[key].kind {
                ConnKind::Client(_) => "no TLS handshake in time",
                _ => "no Hello in time",
            };
            self.close_conn(key, why);
        }
    }

    fn schedule(&mut self, at: u64, id: TimerId) -> Option<TimerHandle> {
        match self.wheel.schedule(at, id) {
            Ok(h) => Some(h),
            Err(e) => {
                // Bounded by TIMERS_MAX; the loop schedules a handful per peer, so this is a bug.
                panic!("timer wheel refused {id:?} at {at}: {e:?}");
            }
        }
    }

    /// Tell the core about a peer now, or right after the Ready being executed.
    fn report_to_core(&mut self, kind: CoreReport, peer: NodeId, ok: bool) {
        if self.in_ready {
            self.deferred_reports.push((kind, peer, ok));
            return;
        }
        match kind {
            CoreReport::Snapshot => self.raft.report_snapshot(peer, ok),
            CoreReport::Unreachable => self.raft.report_unreachable(peer),
        }
    }

    /// Stop: sync what is appended and flush what is queued (the shell stops accepting and
    /// exits). A failed sync is reported: the process exits non-zero.
    pub fn shutdown(&mut self) -> Result<(), NodeError> {
        self.stored
            .disk_mut()
            .sync()
            .map_err(|e| NodeError::new(format!("final sync: {e}")))?;
        self.flush_dirty();
        info!("node {} stopped", self.id);
        Ok(())
    }
}

/// What the simulator (and tests) may look at; none of it changes the node.
impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn raft(&self) -> &Raft {
        &self.raft
    }
    pub fn state_machine(&self) -> &S {
        self.applied.sm()
    }
    pub fn applied(&self) -> LogIndex {
        self.applied.index()
    }
    /// The last index known durable, and the snapshot on disk.
    pub fn durable(&self) -> (LogIndex, EntryId) {
        (self.stored.durable_last(), self.stored.snapshot_meta().last)
    }
    pub fn disk(&self) -> &D {
        self.stored.disk()
    }
    pub fn disk_mut(&mut self) -> &mut D {
        self.stored.disk_mut()
    }
    pub fn net_mut(&mut self) -> &mut N {
        &mut self.net
    }
    /// The connection `key`'s stream, if it is open (the simulator moves bytes through it).
    pub fn stream_mut(&mut self, key: usize) -> Option<&mut N::Stream> {
        self.conns.get_mut(key).map(|c| &mut c.conn.stream)
    }

    /// Every owned part's invariants; debug builds check them every turn, the simulator after
    /// every step. A failure is a bug in this node.
    pub fn check_invariants(&self) {
        self.conns.check_invariants();
        self.peers.check_invariants(self.id, &self.conns);
        if self.peers.members_generation() == Some(self.ids.address_generation()) {
            // links.rs invariant 4: the table is rebuilt only when the member log moved on.
            assert_eq!(
                self.peers.members(),
                &self.address_table(),
                "the address table is stale at member log generation {}",
                self.ids.address_generation()
            );
        }
        self.pending.check_invariants(self.applied.index());
        self.applied.check_invariants(
            self.stored.snapshot_meta().last.index,
            self.raft.status().commit,
        );
        self.incoming.check_invariants();
        self.stored.check_invariants();
        self.ids.log().check_invariants();
        self.ttl.check_invariants();
        self.contact.check_invariants();
        self.backup.check_invariants();
        self.telemetry.check_invariants();
    }
}
