//! `Connections`: every open connection of the node (clients and peers) in one slab, with
//! the bookkeeping around it — how many of each kind, the generation that tells a reused slab
//! key apart, which connections have output to flush (`dirty`), which must be read again next
//! turn (`leftover`), which accepted peers have not said Hello yet — and each client's
//! pipeline (`ClientState`: replies leave in request order).
//!
//! What a connection does with its bytes (RESP, peer frames) lives in `clients.rs` and
//! `peers.rs`; this part only keeps the lists and counts consistent with the slab, so
//! inserting and removing go through `insert` / `remove`, and the per-connection flags
//! through `mark_dirty`, `read_again` and friends.
//!
//! Invariants (checked by `check_invariants`, besides each `Conn`'s own):
//! 1. `client_count` and `peer_count` are the numbers of client and peer connections in the
//!    slab.
//! 2. Every connection's generation is unique and at most `next_gen`.
//! 3. A connection flagged dirty is listed in `dirty`; one flagged `more_input` is listed in
//!    `leftover` with its generation (the lists may also name connections since closed or
//!    no longer flagged: they are skipped).
//! 4. A client's pipeline holds consecutive sequence numbers below `next_seq`, at most
//!    `CLIENT_PENDING_MAX + 1` of them (the one over is a protocol error's reply), and
//!    `held_bytes` is the sum of the replies it holds.
//! 5. `awaiting_hello` (accepted peers before their Hello, clients in their TLS handshake) is
//!    ordered by deadline.
//!
//! NB: a `Connection`'s buffers (`conn`), its kind and its registered interest stay open to
//! the node's files, which read, write and handshake through them; what the lists and
//! counts depend on (generation, flags, a client's pipeline) is private here.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::ops::{Index, IndexMut};
use std::time::Instant;

use mio::Interest;
use slab::Slab;

use super::conn::Conn;
use super::net::{Net, NetStream};
use crate::client::session::Session;
use crate::limits;

/// What kind of connection a slab entry is (not to be confused with `raft::Role`).
pub(super) enum ConnKind {
    Client(ClientState),
    /// Accepted from a peer; `from` is known once its Hello arrived.
    PeerIn {
        from: Option<crate::raft::NodeId>,
    },
    /// Dialed by us to send to `to`; `hello_ok` once the peer's Hello came back.
    PeerOut {
        to: crate::raft::NodeId,
        hello_ok: bool,
    },
}

impl ConnKind {
    fn is_client(&self) -> bool {
        matches!(self, ConnKind::Client(_))
    }
}

/// A client's pipeline: replies leave in request order. Invariant 4.
pub(super) struct ClientState {
    next_seq: u64,
    /// Requests not yet answered, oldest first: (seq, reply once known).
    pending: VecDeque<(u64, Option<Vec<u8>>)>,
    /// Bytes of replies held in `pending` behind an unanswered one; they count toward the
    /// output cap like queued bytes do.
    held_bytes: usize,
    pub(super) addr: SocketAddr,
    /// Protocol, name, queued transaction and watched keys (`client::session`), boxed to keep
    /// `ConnKind` small.
    pub(super) session: Box<Session>,
}

impl ClientState {
    pub(super) fn new(addr: SocketAddr, session: Session) -> ClientState {
        ClientState {
            next_seq: 0,
            pending: VecDeque::new(),
            held_bytes: 0,
            addr,
            session: Box::new(session),
        }
    }

    /// A slot for the next request's reply; returns its sequence number.
    pub(super) fn open_slot(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back((seq, None));
        seq
    }

    /// Requests not yet answered.
    pub(super) fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of replies held behind an unanswered request.
    pub(super) fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Put a reply in its pipeline slot (nothing if the slot is gone).
    pub(super) fn fill(&mut self, seq: u64, reply: Vec<u8>) {
        let Some(&(front, _)) = self.pending.front() else {
            return;
        };
        if seq < front {
            return;
        }
        let Some(slot) = self.pending.get_mut((seq - front) as usize) else {
            return;
        };
        assert_eq!(slot.0, seq, "pipeline slots out of order");
        assert!(slot.1.is_none(), "request {seq} answered twice");
        self.held_bytes += reply.len();
        slot.1 = Some(reply);
    }

    /// Whether `seq` is the request the pipeline answers next (the oldest unanswered).
    pub(super) fn is_next(&self, seq: u64) -> bool {
        matches!(self.pending.front(), Some(&(front, None)) if front == seq)
    }

    /// The next request, `seq`, was answered straight into the output (`deliver_value`).
    pub(super) fn pop_next(&mut self, seq: u64) {
        let popped = self.pending.pop_front();
        assert!(
            matches!(popped, Some((s, None)) if s == seq),
            "request {seq} answered out of turn: {:?}",
            popped.map(|(s, r)| (s, r.map(|r| r.len())))
        );
    }

    /// The oldest reply, once it is known (replies leave in request order).
    pub(super) fn pop_answered(&mut self) -> Option<Vec<u8>> {
        if !matches!(self.pending.front(), Some((_, Some(_)))) {
            return None;
        }
        let (_, bytes) = self.pending.pop_front().expect("front exists");
        let bytes = bytes.expect("filled");
        self.held_bytes -= bytes.len();
        Some(bytes)
    }

    fn check_invariants(&self, key: usize) {
        let held: usize = self
            .pending
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .map(Vec::len)
            .sum();
        assert_eq!(held, self.held_bytes, "client {key}: held reply bytes");
        assert!(
            self.pending.len() <= limits::CLIENT_PENDING_MAX + 1,
            "client {key}: {} requests pending",
            self.pending.len()
        );
        let seqs_in_order = self
            .pending
            .iter()
            .zip(self.pending.iter().skip(1))
            .all(|(a, b)| b.0 == a.0 + 1);
        assert!(seqs_in_order, "client {key}: pipeline slots out of order");
        if let Some(&(last, _)) = self.pending.back() {
            assert!(
                last < self.next_seq,
                "client {key}: slot {last} at or past next_seq {}",
                self.next_seq
            );
        }
    }
}

pub(super) struct Connection<T> {
    pub(super) conn: Conn<T>,
    pub(super) kind: ConnKind,
    /// Unique among this node's connections (invariant 2).
    gen: u64,
    /// Listed in `dirty` (has output to flush or interest to re-derive). Invariant 3.
    dirty: bool,
    /// Input may remain unread (the per-event budget ran out): read again next turn. Listed
    /// in `leftover` while set (invariant 3).
    more_input: bool,
    /// The interest the `Net` has for it.
    pub(super) registered: Interest,
}

impl<T> Connection<T> {
    pub(super) fn gen(&self) -> u64 {
        self.gen
    }
}

pub(super) struct Connections<T> {
    conns: Slab<Connection<T>>,
    /// Accepted peer connections waiting for their Hello: (key, generation, deadline), oldest
    /// first. Invariant 5.
    awaiting_hello: VecDeque<(usize, u64, Instant)>,
    /// How many of `conns` are clients, and how many peers. Invariant 1.
    client_conns: usize,
    peer_conns: usize,
    next_gen: u64,
    /// Invariant 3.
    dirty: Vec<usize>,
    /// The list `take_dirty` last handed out, given back empty (`give_back_dirty`): the next
    /// turn's `dirty` reuses its room instead of allocating anew (one allocation per turn).
    dirty_spare: Vec<usize>,
    /// Connections to read again next turn (their budget ran out, or a paused client may
    /// continue), with the generation that asked. Invariant 3.
    leftover: Vec<(usize, u64)>,
}

impl<T> Index<usize> for Connections<T> {
    type Output = Connection<T>;
    fn index(&self, key: usize) -> &Connection<T> {
        &self.conns[key]
    }
}

impl<T> IndexMut<usize> for Connections<T> {
    fn index_mut(&mut self, key: usize) -> &mut Connection<T> {
        &mut self.conns[key]
    }
}

impl<T: NetStream> Connections<T> {
    pub(super) fn new() -> Connections<T> {
        Connections {
            conns: Slab::new(),
            awaiting_hello: VecDeque::new(),
            client_conns: 0,
            peer_conns: 0,
            next_gen: 0,
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            leftover: Vec::new(),
        }
    }

    pub(super) fn contains(&self, key: usize) -> bool {
        self.conns.contains(key)
    }

    pub(super) fn get(&self, key: usize) -> Option<&Connection<T>> {
        self.conns.get(key)
    }

    pub(super) fn get_mut(&mut self, key: usize) -> Option<&mut Connection<T>> {
        self.conns.get_mut(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &Connection<T>)> {
        self.conns.iter()
    }

    pub(super) fn client_count(&self) -> usize {
        self.client_conns
    }

    pub(super) fn peer_count(&self) -> usize {
        self.peer_conns
    }

    /// The generation the next inserted connection gets (a client session's id).
    pub(super) fn next_gen(&self) -> u64 {
        self.next_gen + 1
    }

    /// Register `conn` with `net` and add it; returns its key.
    pub(super) fn insert<N: Net<Stream = T>>(
        &mut self,
        net: &mut N,
        conn: Conn<T>,
        kind: ConnKind,
    ) -> io::Result<usize> {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut c = Connection {
            conn,
            kind,
            gen: self.next_gen + 1,
            dirty: false,
            more_input: false,
            registered: Interest::READABLE,
        };
        self.next_gen += 1;
        let interest = c.conn.interest();
        net.register(&mut c.conn.stream, key, interest)?;
        c.registered = interest;
        match c.kind.is_client() {
            true => self.client_conns += 1,
            false => self.peer_conns += 1,
        }
        entry.insert(c);
        Ok(key)
    }

    /// Remove `key` (the caller deregisters its stream); `None` if it is not open.
    pub(super) fn remove(&mut self, key: usize) -> Option<Connection<T>> {
        let c = self.conns.try_remove(key)?;
        match c.kind.is_client() {
            true => self.client_conns -= 1,
            false => self.peer_conns -= 1,
        }
        Some(c)
    }

    /// An accepted peer connection must say Hello by `deadline` (a client, finish its TLS
    /// handshake).
    pub(super) fn await_hello(&mut self, key: usize, deadline: Instant) {
        let gen = self.conns[key].gen;
        if let Some(&(_, _, last)) = self.awaiting_hello.back() {
            assert!(last <= deadline, "Hello deadlines out of order");
        }
        self.awaiting_hello.push_back((key, gen, deadline));
    }

    /// Accepted peer connections whose Hello deadline passed at `now` without one, and client
    /// connections still in their TLS handshake then.
    pub(super) fn take_silent(&mut self, now: Instant) -> Vec<usize> {
        let mut silent = Vec::new();
        while let Some(&(key, gen, deadline)) = self.awaiting_hello.front() {
            if deadline > now {
                break;
            }
            self.awaiting_hello.pop_front();
            let still = self.conns.get(key).is_some_and(|c| {
                c.gen == gen
                    && match c.kind {
                        ConnKind::PeerIn { from } => from.is_none(),
                        ConnKind::Client(_) => c.conn.stream.handshaking(),
                        ConnKind::PeerOut { .. } => false,
                    }
            });
            if still {
                silent.push(key);
            }
        }
        silent
    }

    /// `key` has output to flush or interest to re-derive at the end of the turn.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(key);
        }
    }

    /// The connections marked dirty; each one's flag is cleared by `begin_flush`. Hand the
    /// list back with `give_back_dirty` once done with it.
    pub(super) fn take_dirty(&mut self) -> Vec<usize> {
        let spare = std::mem::take(&mut self.dirty_spare);
        std::mem::replace(&mut self.dirty, spare)
    }

    /// The list `take_dirty` returned, for the next one to reuse.
    pub(super) fn give_back_dirty(&mut self, mut list: Vec<usize>) {
        list.clear();
        if list.capacity() > self.dirty_spare.capacity() {
            self.dirty_spare = list;
        }
    }

    /// Clear `key`'s dirty flag to flush it; `None` if it closed meanwhile.
    pub(super) fn begin_flush(&mut self, key: usize) -> Option<&mut Connection<T>> {
        let c = self.conns.get_mut(key)?;
        c.dirty = false;
        Some(c)
    }

    /// Read `key` again next turn, without waiting for readiness.
    pub(super) fn read_again(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.more_input {
            c.more_input = true;
            self.leftover.push((key, c.gen));
        }
    }

    /// `key` stops reading (a paused client): it is not read again until resumed.
    pub(super) fn cancel_read_again(&mut self, key: usize) {
        self.conns[key].more_input = false;
    }

    pub(super) fn has_leftover(&self) -> bool {
        !self.leftover.is_empty()
    }

    /// The connections listed to read again, with the generation that asked; each is read
    /// only if `begin_reread` agrees.
    pub(super) fn take_leftover(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.leftover)
    }

    /// Whether `key` (of generation `gen`) is still to be read again; clears its flag if so.
    pub(super) fn begin_reread(&mut self, key: usize, gen: u64) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.gen != gen || !c.more_input {
            return false;
        }
        c.more_input = false;
        true
    }

    pub(super) fn check_invariants(&self) {
        let clients = self
            .conns
            .iter()
            .filter(|(_, c)| c.kind.is_client())
            .count();
        assert_eq!(clients, self.client_conns, "client connection count");
        assert_eq!(
            self.conns.len() - clients,
            self.peer_conns,
            "peer connection count"
        );
        let dirty: HashSet<usize> = self.dirty.iter().copied().collect();
        let leftover: HashSet<(usize, u64)> = self.leftover.iter().copied().collect();
        let mut gens = HashSet::new();
        for (key, c) in self.conns.iter() {
            c.conn.check_invariants();
            assert!(
                c.gen <= self.next_gen && gens.insert(c.gen),
                "connection {key}: generation {} reused or past {}",
                c.gen,
                self.next_gen
            );
            assert!(
                !c.dirty || dirty.contains(&key),
                "connection {key}: dirty, unlisted"
            );
            assert!(
                !c.more_input || leftover.contains(&(key, c.gen)),
                "connection {key}: more input, not listed to read again"
            );
            if let ConnKind::Client(st) = &c.kind {
                st.check_invariants(key);
            }
        }
        let ordered = self
            .awaiting_hello
            .iter()
            .zip(self.awaiting_hello.iter().skip(1))
            .all(|(a, b)| a.2 <= b.2);
        assert!(ordered, "Hello deadlines out of order");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientState {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let session = Session::new(1, addr.to_string(), String::new(), Instant::now());
        ClientState::new(addr, session)
    }

    #[test]
    fn replies_leave_in_request_order_and_held_bytes_count_those_waiting() {
        let mut st = client();
        let (a, b, c) = (st.open_slot(), st.open_slot(), st.open_slot());
        st.fill(c, b"ccc".to_vec());
        st.fill(b, b"bb".to_vec());
        assert_eq!(st.held_bytes(), 5);
        assert_eq!(
            st.pop_answered(),
            None,
            "the first request is not answered yet"
        );
        st.fill(a, b"a".to_vec());
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| st.pop_answered()).collect();
        assert_eq!(out, vec![b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()]);
        assert_eq!((st.held_bytes(), st.unanswered()), (0, 0));
        st.check_invariants(0);
    }

    #[test]
    fn only_the_oldest_unanswered_request_is_next_and_popping_it_releases_those_held_behind() {
        let mut st = client();
        let (a, b, c) = (st.open_slot(), st.open_slot(), st.open_slot());
        assert!(st.is_next(a));
        assert!(!st.is_next(b), "b waits behind a");
        st.fill(b, b"bb".to_vec());
        st.pop_next(a); // a's reply went straight to the output
        assert!(
            !st.is_next(b),
            "b is answered already: its reply is held, not next"
        );
        assert_eq!(st.pop_answered(), Some(b"bb".to_vec()));
        assert!(st.is_next(c));
        assert_eq!(st.pop_answered(), None);
        st.check_invariants(0);
    }

    #[test]
    #[should_panic(expected = "answered out of turn")]
    fn popping_a_request_that_is_not_next_is_our_bug() {
        let mut st = client();
        let (_a, b) = (st.open_slot(), st.open_slot());
        st.pop_next(b);
    }

    #[test]
    fn a_reply_for_a_slot_already_gone_is_ignored() {
        let mut st = client();
        let a = st.open_slot();
        st.fill(a, b"x".to_vec());
        assert_eq!(st.pop_answered(), Some(b"x".to_vec()));
        st.fill(a, b"late".to_vec());
        st.fill(a + 5, b"unknown".to_vec());
        assert_eq!((st.held_bytes(), st.unanswered()), (0, 0));
    }
}
