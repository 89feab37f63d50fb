//! The simulator's network: in-memory connections between simulated nodes (and clients) that
//! behave like non-blocking sockets, behind the node's real `Net` seam.
//!
//! Each connection has two sides. What a side writes waits in the connection until the
//! simulator's `deliver` moves it to the other side. Peer traffic is cut into frames with the
//! real `wire::decode` (so a frame the real encoder made too large, or malformed, fails here
//! as it would at the receiver: its bytes are passed on raw and the receiver closes the
//! connection); each frame is then lost, duplicated or delayed (reordered) by the seeded
//! fault mix, or dropped by a partition. Client traffic (RESP) is moved unchanged. What a
//! node writes in a turn that is still running (a slow sync: `hold_output`) stays with it
//! until the turn ends.
//!
//! Invariants:
//! 1. Bytes of one side arrive at the other in order, except for whole peer frames the fault
//!    mix reorders, drops or duplicates (never a Hello: the handshake is exact).
//! 2. A side that is dropped (its node crashed or closed the connection) reads as closed at
//!    the other side once everything in flight was delivered.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use kvraft::node::net::{ConnectState, Net, NetStream};
use kvraft::node::Listener;
use kvraft::prng::Prng;
use kvraft::raft::NodeId;
use kvraft::wire::{self, DecodeError, Frame};
use mio::Interest;

/// Who holds one side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    Node(NodeId),
    Client(u64),
}

/// A frame (or raw bytes) in flight, due at `at` (ms).
struct InFlight {
    at: u64,
    seq: u64,
    bytes: Vec<u8>,
}

struct Side {
    owner: Owner,
    /// The slab key the owning node registered the stream under.
    key: Option<usize>,
    /// Written by this side, not yet cut into frames.
    written: Vec<u8>,
    /// Delivered to this side, not yet read.
    readable: Vec<u8>,
    /// In flight towards this side.
    inbound: Vec<InFlight>,
    /// This side was dropped.
    closed: bool,
}

struct SimConn {
    sides: [Side; 2],
    /// Peer traffic (framed, subject to faults) or client traffic (raw).
    framed: bool,
}

/// The fault mix of the network (per mille, and ms).
#[derive(Clone, Debug, Default)]
pub struct NetFaults {
    pub loss: u64,
    pub dup: u64,
    pub delay_max_ms: u64,
}

/// Every connection of the simulated cluster.
pub struct World {
    conns: BTreeMap<u64, SimConn>,
    next_conn: u64,
    next_seq: u64,
    /// Which node listens where, and for what.
    listeners: BTreeMap<SocketAddr, (NodeId, Listener)>,
    /// Nodes that are up (a connect to a down node is refused).
    up: BTreeSet<NodeId>,
    /// Connections waiting to be accepted by a node: (node, conn, listener, remote addr).
    accepts: Vec<(NodeId, u64, Listener, SocketAddr)>,
    /// Node pairs (from, to) whose frames are dropped.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose turn is still running (a slow sync) until a time (ms): what they wrote
    /// stays with them until then.
    held: BTreeMap<NodeId, u64>,
    pub faults: NetFaults,
    pub frames_delivered: u64,
    pub frames_dropped: u64,
    pub frames_duplicated: u64,
    /// Forwarded client requests (`ClientRequest` frames) written by nodes, counted by the
    /// rights byte they carry (0, 1, 2): the simulator checks what followers stamp.
    pub forwarded_rights: [u64; 3],
    /// Read indexes leaders confirmed to followers (`ReadIndexReply` frames with an index):
    /// the simulator checks that followers serve reads themselves.
    pub read_indexes_confirmed: u64,
    /// When set, every write in order: (connection, peer traffic, bytes). Off by default (the
    /// simulator writes millions); `turn_order.rs` reads the order of one node's turn.
    pub write_log: Option<Vec<(u64, bool, usize)>>,
}

pub type WorldRef = Rc<RefCell<World>>;

impl World {
    pub fn new() -> WorldRef {
        Rc::new(RefCell::new(World {
            conns: BTreeMap::new(),
            next_conn: 0,
            next_seq: 0,
            listeners: BTreeMap::new(),
            up: BTreeSet::new(),
            accepts: Vec::new(),
            blocked: BTreeSet::new(),
            held: BTreeMap::new(),
            faults: NetFaults::default(),
            frames_delivered: 0,
            frames_dropped: 0,
            frames_duplicated: 0,
            forwarded_rights: [0; 3],
            read_indexes_confirmed: 0,
            write_log: None,
        }))
    }

    pub fn listen(&mut self, addr: SocketAddr, node: NodeId, what: Listener) {
        self.listeners.insert(addr, (node, what));
    }

    pub fn set_up(&mut self, node: NodeId, up: bool) {
        if up {
            self.up.insert(node);
        } else {
            self.up.remove(&node);
            self.accepts.retain(|a| a.0 != node);
        }
    }

    fn open(&mut self, from: Owner, to: NodeId, what: Listener, from_addr: SocketAddr) -> u64 {
        let id = self.next_conn;
        self.next_conn += 1;
        let side = |owner| Side {
            owner,
            key: None,
            written: Vec::new(),
            readable: Vec::new(),
            inbound: Vec::new(),
            closed: false,
        };
        self.conns.insert(
            id,
            SimConn {
                sides: [side(from), side(Owner::Node(to))],
                framed: what == Listener::Peer,
            },
        );
        self.accepts.push((to, id, what, from_addr));
        id
    }

    /// Connections waiting for `node` to accept them.
    pub fn take_accepts(&mut self, node: NodeId) -> Vec<(u64, Listener, SocketAddr)> {
        let (mine, rest): (Vec<_>, Vec<_>) = self.accepts.drain(..).partition(|a| a.0 == node);
        self.accepts = rest;
        mine.into_iter().map(|(_, c, l, a)| (c, l, a)).collect()
    }

    /// The keys of `node`'s connections, each with whether it has something to read (bytes
    /// or the end). Every registered connection is listed (level-triggered readiness).
    pub fn ready_keys(&self, node: NodeId) -> Vec<(usize, bool)> {
        let mut out = Vec::new();
        for c in self.conns.values() {
            for (i, s) in c.sides.iter().enumerate() {
                if s.owner != Owner::Node(node) || s.closed {
                    continue;
                }
                if let Some(key) = s.key {
                    let other = &c.sides[1 - i];
                    let eof = other.closed && other.written.is_empty() && s.inbound.is_empty();
                    out.push((key, !s.readable.is_empty() || eof));
                }
            }
        }
        out
    }

    /// Move what every side wrote towards the other side, then hand over what is due at
    /// `now_ms`. Frames are cut with the real decoder and exposed to the fault mix.
    pub fn deliver(&mut self, now_ms: u64, rng: &mut Prng) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            for from in 0..2 {
                self.cut_frames(id, from, now_ms, rng);
            }
            let c = self.conns.get_mut(&id).expect("listed");
            for side in c.sides.iter_mut() {
                side.inbound.sort_by_key(|f| (f.at, f.seq));
                let due = side.inbound.iter().take_while(|f| f.at <= now_ms).count();
                for f in side.inbound.drain(..due) {
                    if !side.closed {
                        side.readable.extend_from_slice(&f.bytes);
                    }
                }
            }
            let both_gone = c.sides.iter().all(|s| s.closed);
            if both_gone {
                self.conns.remove(&id);
            }
        }
    }

    /// What `node` writes leaves no sooner than `until_ms` (its turn runs until then).
    pub fn hold_output(&mut self, node: NodeId, until_ms: u64) {
        self.held.insert(node, until_ms);
    }

    fn cut_frames(&mut self, id: u64, from: usize, now_ms: u64, rng: &mut Prng) {
        let faults = self.faults.clone();
        let (owners, framed) = {
            let c = &self.conns[&id];
            ((c.sides[0].owner, c.sides[1].owner), c.framed)
        };
        if let Owner::Node(n) = [owners.0, owners.1][from] {
            if self.held.get(&n).is_some_and(|&until| until > now_ms) {
                return;
            }
        }
        let c = self.conns.get_mut(&id).expect("listed");
        let written = std::mem::take(&mut c.sides[from].written);
        if written.is_empty() {
            return;
        }
        let mut pieces: Vec<(Vec<u8>, bool)> = Vec::new();
        if framed {
            let mut rest = &written[..];
            while !rest.is_empty() {
                match wire::decode(rest) {
                    Ok((frame, n)) => {
                        if let Frame::ClientRequest { rights, .. } = &frame {
                            // The decoder refuses a byte above 2.
                            self.forwarded_rights[usize::from(*rights)] += 1;
                        }
                        if let Frame::ReadIndexReply { index: Some(_), .. } = &frame {
                            self.read_indexes_confirmed += 1;
                        }
                        pieces.push((rest[..n].to_vec(), matches!(frame, Frame::Hello { .. })));
                        rest = &rest[n..];
                    }
                    Err(DecodeError::Incomplete) => {
                        // The rest of this frame was not written yet: keep it for later.
                        c.sides[from].written = rest.to_vec();
                        break;
                    }
                    Err(_) => {
                        // A frame the receiver will refuse: pass it on as it is.
                        pieces.push((rest.to_vec(), true));
                        break;
                    }
                }
            }
        } else {
            pieces.push((written, true));
        }
        let (a, b) = owners;
        let (src, dst) = if from == 0 { (a, b) } else { (b, a) };
        let partitioned = match (src, dst) {
            (Owner::Node(x), Owner::Node(y)) => self.blocked.contains(&(x, y)),
            _ => false,
        };
        for (bytes, exact) in pieces {
            let copies = if exact {
                1
            } else if partitioned || rng.range(0, 1000) < faults.loss {
                self.frames_dropped += 1;
                0
            } else if rng.range(0, 1000) < faults.dup {
                self.frames_duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = match exact {
                    true => 0,
                    false => rng.range(0, faults.delay_max_ms + 1),
                };
                self.next_seq += 1;
                let f = InFlight {
                    at: now_ms + delay,
                    seq: self.next_seq,
                    bytes: bytes.clone(),
                };
                self.frames_delivered += 1;
                let c = self.conns.get_mut(&id).expect("listed");
                c.sides[1 - from].inbound.push(f);
            }
        }
    }

    /// Close every connection `node` holds (it crashed): its sides are gone.
    pub fn drop_node(&mut self, node: NodeId) {
        for c in self.conns.values_mut() {
            for s in c.sides.iter_mut() {
                if s.owner == Owner::Node(node) {
                    s.closed = true;
                    s.written.clear();
                    s.readable.clear();
                }
            }
        }
        self.held.remove(&node);
        self.set_up(node, false);
    }
}

/// One side of a simulated connection.
pub struct SimStream {
    world: WorldRef,
    conn: u64,
    side: usize,
}

impl SimStream {
    /// The accepting side of connection `conn`.
    pub fn accepted(world: &WorldRef, conn: u64) -> SimStream {
        SimStream {
            world: world.clone(),
            conn,
            side: 1,
        }
    }

    /// A client connects to `addr` (a node's client port). None if nobody listens there.
    pub fn client_connect(world: &WorldRef, client: u64, addr: SocketAddr) -> Option<SimStream> {
        let mut w = world.borrow_mut();
        let &(node, what) = w.listeners.get(&addr)?;
        if !w.up.contains(&node) {
            return None;
        }
        let from: SocketAddr = ([10, 9, 0, 1], 10_000 + (client % 50_000) as u16).into();
        let conn = w.open(Owner::Client(client), node, what, from);
        Some(SimStream {
            world: world.clone(),
            conn,
            side: 0,
        })
    }

    /// The other side closed and everything it sent was read.
    pub fn at_end(&self) -> bool {
        let w = self.world.borrow();
        match w.conns.get(&self.conn) {
            None => true,
            Some(c) => {
                let me = &c.sides[self.side];
                let other = &c.sides[1 - self.side];
                other.closed
                    && other.written.is_empty()
                    && me.inbound.is_empty()
                    && me.readable.is_empty()
            }
        }
    }
}

/// A pipe holds nothing of its own to send, and has no handshake (no TLS in the simulator); a
/// read hands out all it holds, up to the buffer, so a short read means drained (as TCP's).
impl NetStream for SimStream {
    fn drained_by_short_read(&self) -> bool {
        true
    }
}

impl io::Read for SimStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let Some(c) = w.conns.get_mut(&self.conn) else {
            return Ok(0);
        };
        let (me, other) = match self.side {
            0 => {
                let (a, b) = c.sides.split_at_mut(1);
                (&mut a[0], &b[0])
            }
            _ => {
                let (a, b) = c.sides.split_at_mut(1);
                (&mut b[0], &a[0])
            }
        };
        if me.readable.is_empty() {
            if other.closed && other.written.is_empty() && me.inbound.is_empty() {
                return Ok(0);
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(me.readable.len());
        buf[..n].copy_from_slice(&me.readable[..n]);
        me.readable.drain(..n);
        Ok(n)
    }
}

impl io::Write for SimStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let Some(c) = w.conns.get_mut(&self.conn) else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if c.sides[1 - self.side].closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        c.sides[self.side].written.extend_from_slice(buf);
        let framed = c.framed;
        if let Some(log) = w.write_log.as_mut() {
            log.push((self.conn, framed, buf.len()));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        if let Ok(mut w) = self.world.try_borrow_mut() {
            if let Some(c) = w.conns.get_mut(&self.conn) {
                c.sides[self.side].closed = true;
                c.sides[self.side].readable.clear();
            }
        }
    }
}

/// One node's view of the network (its `Net`).
pub struct SimNet {
    world: WorldRef,
    node: NodeId,
    addr: SocketAddr,
}

impl SimNet {
    pub fn new(world: &WorldRef, node: NodeId, addr: SocketAddr) -> SimNet {
        SimNet {
            world: world.clone(),
            node,
            addr,
        }
    }
}

impl Net for SimNet {
    type Stream = SimStream;

    fn connect(&mut self, addr: SocketAddr) -> io::Result<SimStream> {
        let mut w = self.world.borrow_mut();
        let Some(&(to, what)) = w.listeners.get(&addr) else {
            return Err(io::ErrorKind::ConnectionRefused.into());
        };
        if !w.up.contains(&to) || w.blocked.contains(&(self.node, to)) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        let conn = w.open(Owner::Node(self.node), to, what, self.addr);
        Ok(SimStream {
            world: self.world.clone(),
            conn,
            side: 0,
        })
    }

    fn connect_state(&mut self, _stream: &SimStream) -> ConnectState {
        ConnectState::Connected
    }

    fn peer_addr(&self, _stream: &SimStream) -> Option<SocketAddr> {
        None
    }

    fn register(&mut self, s: &mut SimStream, key: usize, _: Interest) -> io::Result<()> {
        let mut w = self.world.borrow_mut();
        if let Some(c) = w.conns.get_mut(&s.conn) {
            c.sides[s.side].key = Some(key);
        }
        Ok(())
    }

    fn reregister(&mut self, _s: &mut SimStream, _key: usize, _: Interest) -> io::Result<()> {
        Ok(())
    }

    fn deregister(&mut self, s: &mut SimStream) {
        let mut w = self.world.borrow_mut();
        if let Some(c) = w.conns.get_mut(&s.conn) {
            c.sides[s.side].key = None;
        }
    }
}
