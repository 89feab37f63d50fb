//! The client port: RESP2 commands in, replies out in request order.
//!
//! A write becomes a log entry (on the leader) and is answered when that entry is applied; a
//! read waits for a ReadIndex round and for apply to reach the index it recorded. A follower
//! forwards the command to the leader over the peer connection and relays the reply, so any
//! node serves any client. A forwarded command is never forwarded again (no loops): a node
//! that is not the leader answers it with an error the client may retry.
//!
//! A follower serves a plain read (outside MULTI, WATCH and `SESSION RUN`) itself: it asks
//! the leader for a read index, once per turn for all the reads of that turn, and answers
//! each read once it has applied that index (`pending.rs`, "Follower reads"). Writes, and
//! the reads it does not serve itself, are forwarded.
//!
//! Invariants:
//! 1. Replies leave in the order requests arrived on a connection (`ClientState`'s pipeline,
//!    `connections.rs`).
//! 2. A client has at most `CLIENT_PENDING_MAX` unanswered requests; beyond that it is not
//!    read from until some are answered (back-pressure, not buffering).

use log::{debug, warn};

use super::net::Net;
use super::pending::{Forwarded, Orphan};
use super::storage::Disk;
use super::{ConnKind, Node, ReplyTo, FORWARD_TIMEOUT};
use crate::auth::{self, Rights};
use crate::client::resp::{self, ArgBufs};
use crate::client::session::{unknown_command, Gate};
use crate::client::{Protocol, Value};
use crate::kv::envelope::SessionTag;
use crate::kv::{session, Request, StateMachine};
use crate::limits;
use crate::raft::{LogIndex, NodeId, ProposeError};
use crate::wire::{self, Frame};

/// What a command turned into.
pub(super) enum Dispatch {
    /// The reply is known now.
    Reply(Value),
    /// The reply will come later through `deliver`.
    Pending,
    /// Reply, then close the connection (QUIT).
    ReplyAndClose(Value),
}

/// Whether a forwarded request may be sent again if its leader goes away.
#[derive(Clone, Copy)]
enum Resend {
    /// A write without a session.
    No,
    /// A read, or a session write (deduplicated by the state machine).
    Yes { read: bool },
}

/// Whether a read may be served by this node as a follower (`pending.rs`, "Follower reads"):
/// only a plain command of a client connection; reads inside MULTI, WATCH's read and
/// `SESSION RUN` are forwarded as before.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FollowerRead {
    Allowed,
    Forward,
}

/// The error a client gets while no leader is known; clients retry on it.
pub(super) fn no_leader() -> Value {
    Value::error("CLUSTERDOWN no leader elected yet, try again")
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    pub(super) fn read_client(&mut self, key: usize) {
        self.read_budgeted(key, Self::parse_client_input);
    }

    /// Back-pressure: too many requests of this client are unanswered.
    pub(super) fn client_paused(&mut self, key: usize) -> bool {
        let c = &mut self.conns[key];
        let ConnKind::Client(st) = &c.kind else {
            return false;
        };
        // A WATCH waiting for its read holds the rest of the pipeline (`client::session`).
        let paused = st.unanswered() >= limits::CLIENT_PENDING_MAX
            || c.conn.close_after_flush
            || st.session.watch_waiting();
        c.conn.read_paused = paused;
        if paused {
            self.conns.cancel_read_again(key);
        }
        paused
    }

    /// Parse and dispatch every complete command buffered. False if the connection closed.
    fn parse_client_input(&mut self, key: usize) -> bool {
        // The commands are parsed into the node's reused argument buffers (`ArgBufs`), taken
        // out for the call (nothing in a command's dispatch parses another client's input).
        let mut bufs = std::mem::take(&mut self.arg_bufs);
        let open = self.parse_client_commands(key, &mut bufs);
        bufs.trim();
        self.arg_bufs = bufs;
        open
    }

    fn parse_client_commands(&mut self, key: usize, bufs: &mut ArgBufs) -> bool {
        loop {
            if self.client_paused(key) {
                return true;
            }
            let c = &mut self.conns[key];
            let parsed = resp::parse_command_into(c.conn.input(), bufs);
            match parsed {
                Ok(None) => return true,
                Ok(Some(n)) => {
                    c.conn.consume(n);
                    let args = bufs.args();
                    if args.is_empty() {
                        continue; // `*0`, `*-1` or a blank inline line: Redis skips them
                    }
                    let gen = c.gen();
                    let ConnKind::Client(st) = &mut c.kind else {
                        unreachable!()
                    };
                    let seq = st.open_slot();
                    let to = ReplyTo::Client { key, gen, seq };
                    self.stats.commands_processed += 1;
                    self.telemetry.command(&args[0]);
                    let gate = st.session.admit(args, seq, self.now);
                    let proto = st.session.proto;
                    let dispatched = self.dispatch_admitted(to, gate, args);
                    match dispatched {
                        Dispatch::Reply(v) => self.deliver_value(to, &v),
                        Dispatch::Pending => {}
                        Dispatch::ReplyAndClose(v) => {
                            self.deliver(to, v.to_bytes_as(proto));
                            if let Some(c) = self.conns.get_mut(key) {
                                c.conn.close_after_flush = true;
                            }
                            return true;
                        }
                    }
                }
                Err(e) => {
                    debug!("client protocol error: {e}");
                    // Redis answers a protocol error, then closes the connection; the error
                    // takes its place after the replies still owed.
                    let gen = c.gen();
                    let ConnKind::Client(st) = &mut c.kind else {
                        unreachable!()
                    };
                    let seq = st.open_slot();
                    c.conn.close_after_flush = true;
                    let to = ReplyTo::Client { key, gen, seq };
                    self.deliver(to, e.reply().to_bytes());
                    return self.conns.contains(key);
                }
            }
        }
    }

    /// Route a client's command as its session decided: MULTI's queueing is answered there,
    /// EXEC becomes the one command that carries the transaction, WATCH is a read whose reply
    /// goes back to the session (`deliver`).
    fn dispatch_admitted(&mut self, to: ReplyTo, gate: Gate, args: &[Vec<u8>]) -> Dispatch {
        match gate {
            Gate::Reply(v) => Dispatch::Reply(v),
            Gate::Pass => self.route(to, args, FollowerRead::Allowed),
            Gate::Watch => self.dispatch(to, args),
            Gate::Exec(transaction) => self.dispatch(to, &transaction),
        }
    }

    /// Route one command: node commands here, state-machine commands to the log or a read.
    pub(super) fn dispatch(&mut self, to: ReplyTo, args: &[Vec<u8>]) -> Dispatch {
        self.route(to, args, FollowerRead::Forward)
    }

    fn route(&mut self, to: ReplyTo, args: &[Vec<u8>], here: FollowerRead) -> Dispatch {
        if let Some(d) = self.node_command(to, args) {
            return d;
        }
        match session::parse_run(args) {
            None => {}
            Some(Err(v)) => return Dispatch::Reply(v),
            Some(Ok((tag, command))) => {
                let parsed = self.applied.sm().parse(command);
                return self.dispatch_tagged(to, tag, parsed, args);
            }
        }
        match self.applied.sm().parse(args) {
            None => Dispatch::Reply(unknown_command(args)),
            Some(Request::Reply(v)) => Dispatch::Reply(v),
            Some(Request::Write(data)) => self.submit_write(to, data, None, args),
            Some(Request::Read(query)) => self.submit_read(to, query, args, here),
        }
    }

    /// A `SESSION RUN`: the command inside runs as usual, a write carrying the session's tag
    /// in its entry's envelope (the state machine applies it once: `kv/session.rs`).
    fn dispatch_tagged(
        &mut self,
        to: ReplyTo,
        tag: SessionTag,
        parsed: Option<Request>,
        args: &[Vec<u8>],
    ) -> Dispatch {
        match parsed {
            None => Dispatch::Reply(unknown_command(&args[session::RUN_PREFIX_ARGS..])),
            Some(Request::Reply(v)) => Dispatch::Reply(v),
            Some(Request::Write(data)) => self.submit_write(to, data, Some(tag), args),
            Some(Request::Read(query)) => self.submit_read(to, query, args, FollowerRead::Forward),
        }
    }

    fn submit_write(
        &mut self,
        to: ReplyTo,
        data: Vec<u8>,
        session: Option<SessionTag>,
        args: &[Vec<u8>],
    ) -> Dispatch {
        // A follower with a full disk still forwards writes: the leader and the others hold them.
        if let (Some(why), crate::raft::Role::Leader) = (self.stored.read_only(), self.raft.role())
        {
            return Dispatch::Reply(Value::error(format!("READONLY writes are refused: {why}")));
        }
        let resend = match session {
            Some(_) => Resend::Yes { read: false },
            None => Resend::No,
        };
        // The leader stamps what it proposes, with the session's tag if any (a follower
        // forwards the arguments instead).
        let data = match self.raft.role() {
            crate::raft::Role::Leader => self.stamp_write(&data, session),
            _ => data.into(),
        };
        match self.raft.propose(data) {
            Ok(id) => {
                self.pending.add_waiter(id.index, id.term, to);
                Dispatch::Pending
            }
            Err(e) => self.not_leader(to, e, args, resend),
        }
    }

    fn submit_read(
        &mut self,
        to: ReplyTo,
        query: Vec<u8>,
        args: &[Vec<u8>],
        here: FollowerRead,
    ) -> Dispatch {
        if self.pending.reads_full() {
            return Dispatch::Reply(Value::error("TRYAGAIN too many reads pending"));
        }
        let ctx = self.pending.next_read_ctx();
        let floor = self.raft.last_id().index;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                self.pending.add_read(ctx, to, query, floor);
                Dispatch::Pending
            }
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) if leader != self.id
                && here == FollowerRead::Allowed
                && self.cfg.forward_to_leader
                && matches!(to, ReplyTo::Client { .. }) =>
            {
                // Asked of the leader at the turn's end (`ask_read_index`).
                let deadline = self.now + FORWARD_TIMEOUT;
                self.pending.add_follower_read(to, query, deadline);
                Dispatch::Pending
            }
            Err(e) => self.not_leader(to, e, args, Resend::Yes { read: true }),
        }
    }

    /// Once a turn (after the forwards of the turn went out, so a pipeline's read is asked
    /// after the writes it forwarded before): one ReadIndexRequest to the leader for every
    /// follower read not yet asked for. With no leader known they wait (until their deadline);
    /// if this node leads now they fail, and the client retries.
    fn ask_read_index(&mut self) {
        if !self.pending.has_unasked() {
            return;
        }
        match self.raft.leader() {
            Some(l) if l == self.id => {
                for to in self.pending.take_unasked() {
                    let v = Value::error("TRYAGAIN leadership changed during the read");
                    self.deliver(to, v.to_bytes());
                }
            }
            Some(l) => {
                let id = self.pending.new_forward_id();
                if self.send_frame(l, &Frame::ReadIndexRequest { id }) {
                    self.pending.asked(id, l);
                }
            }
            None => {}
        }
    }

    /// A follower asks us for a read index: confirmed by a heartbeat round like our own reads
    /// (`read_confirmed` answers it), or refused at once if we cannot.
    pub(super) fn handle_read_index_request(&mut self, from: NodeId, id: u64) {
        let to = ReplyTo::ReadIndex { node: from, id };
        if self.pending.reads_full() {
            return self.refuse_read_index(to);
        }
        let ctx = self.pending.next_read_ctx();
        let floor = self.raft.last_id().index;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                // The follower serves the read once it applied `floor`: the core tells it the
                // commit index at once when it reaches there, not with a later append.
                self.raft.want_commit(from, floor);
                self.pending.add_read(ctx, to, Vec::new(), floor)
            }
            Err(_) => self.refuse_read_index(to),
        }
    }

    fn refuse_read_index(&mut self, to: ReplyTo) {
        if let ReplyTo::ReadIndex { node, id } = to {
            let frame = Frame::ReadIndexReply {
                id,
                index: None,
                now_ms: 0,
            };
            self.send_frame(node, &frame);
        }
    }

    /// The core confirmed read `ctx` at `index`: a follower's request is answered now, our
    /// own read waits for apply (`serve_ready_reads`).
    pub(super) fn read_confirmed(&mut self, ctx: u64, index: LogIndex) {
        if let Some((ReplyTo::ReadIndex { node, id }, at)) = self.pending.read_confirmed(ctx, index)
        {
            let now_ms = self.leader_now_ms();
            let frame = Frame::ReadIndexReply {
                id,
                index: Some(at),
                now_ms,
            };
            self.send_frame(node, &frame);
        }
    }

    /// The leader answered our ReadIndexRequest `id`.
    pub(super) fn read_index_reply(
        &mut self,
        from: NodeId,
        id: u64,
        index: Option<LogIndex>,
        now_ms: u64,
    ) {
        let answer = index.map(|i| (i, now_ms));
        for to in self.pending.read_index_answered(from, id, answer) {
            let v = Value::error(format!(
                "TRYAGAIN node {from} did not confirm the read (leadership changed)"
            ));
            self.deliver(to, v.to_bytes());
        }
        self.serve_ready_reads();
    }

    /// This node cannot serve the command itself: forward it to the leader (once), or say why.
    /// `resend` says whether the forward may be sent again if that leader goes away.
    fn not_leader(
        &mut self,
        to: ReplyTo,
        err: ProposeError,
        args: &[Vec<u8>],
        resend: Resend,
    ) -> Dispatch {
        let leader = match err {
            ProposeError::NotLeader { leader } => leader,
            other => return Dispatch::Reply(Value::error(format!("TRYAGAIN {other}"))),
        };
        let Some(leader) = leader.filter(|&l| l != self.id) else {
            return Dispatch::Reply(no_leader());
        };
        if matches!(to, ReplyTo::Peer { .. }) {
            return Dispatch::Reply(Value::error(format!(
                "TRYAGAIN leadership moved to node {leader}"
            )));
        }
        if !self.cfg.forward_to_leader {
            return match self.peers.member(leader) {
                Some(m) => Dispatch::Reply(Value::error(format!("REDIRECT {}", m.client))),
                None => Dispatch::Reply(no_leader()),
            };
        }
        if self.pending.forwards_full() {
            return Dispatch::Reply(Value::error("TRYAGAIN too many forwarded requests pending"));
        }
        let kind = match resend {
            Resend::No => Forwarded::Write,
            Resend::Yes { read } => Forwarded::Resendable {
                args: args.to_vec(),
                read,
            },
        };
        let o = Orphan {
            to,
            deadline: self.now + FORWARD_TIMEOUT,
            kind,
            rights: self.rights_of(to),
        };
        match self.forward_to(leader, args, o) {
            Ok(()) => Dispatch::Pending,
            Err(_) => Dispatch::Reply(no_leader()),
        }
    }

    /// Forward `args` for `o` to `leader`; gives `o` back if there is no link to it.
    fn forward_to(&mut self, leader: NodeId, args: &[Vec<u8>], o: Orphan) -> Result<(), Orphan> {
        let id = self.pending.new_forward_id();
        let head = wire::ClientRequestHead {
            id,
            proto: self.protocol_of(o.to).number(),
            rights: o.rights.to_byte(),
        };
        if !self.send_client_request(leader, head, args) {
            return Err(o);
        }
        self.pending.add_forward(id, leader, o);
        Ok(())
    }

    /// A follower forwarded a client's command to us, with its connection's rights: the
    /// command runs only if they allow it (`auth.rs` rule 4); they are never raised here.
    pub(super) fn handle_forwarded(
        &mut self,
        from: NodeId,
        id: u64,
        proto: u8,
        rights: Rights,
        args: &[Vec<u8>],
    ) {
        // The frame decoder let only 2 and 3 through.
        let proto = Protocol::from_number(proto).unwrap_or_default();
        let to = ReplyTo::Peer {
            node: from,
            id,
            proto,
        };
        if let Some(denied) = auth::check(rights, args) {
            debug!("a command forwarded by node {from} exceeds the rights it carries ({rights:?})");
            return self.deliver(to, denied.to_bytes_as(proto));
        }
        match self.dispatch(to, args) {
            Dispatch::Reply(v) | Dispatch::ReplyAndClose(v) => {
                self.deliver(to, v.to_bytes_as(proto))
            }
            Dispatch::Pending => {}
        }
    }

    /// The leader answered a command we forwarded. The reply a client's pipeline waits for
    /// next is copied straight into its output (no buffer of its own), as `deliver_value`
    /// does; any other takes `deliver`'s path.
    pub(super) fn forward_reply(&mut self, id: u64, reply: &[u8]) {
        let Some(o) = self.pending.take_forward(id) else {
            return;
        };
        let in_place = match o.to {
            ReplyTo::Client { key, gen, seq } => {
                self.write_next_reply(key, gen, seq, reply.len(), |_, out| {
                    out.extend_from_slice(reply)
                })
            }
            ReplyTo::Peer { .. } | ReplyTo::ReadIndex { .. } => false,
        };
        if !in_place {
            self.deliver(o.to, reply.to_vec());
        }
    }

    /// Forwarded requests no leader answered in time get an error: a read was not applied
    /// (`-TRYAGAIN`); a write may or may not have been (`-UNKNOWN`).
    pub(super) fn expire_forwards(&mut self) {
        for to in self.pending.take_expired_reads(self.now) {
            let v = Value::error("TRYAGAIN no leader answered the read in time");
            self.deliver(to, v.to_bytes());
        }
        for o in self.pending.take_expired_forwards(self.now) {
            let v = match o.kind {
                Forwarded::Resendable { read: true, .. } => {
                    Value::error("TRYAGAIN no leader answered the read in time")
                }
                _ => Value::error(
                    "UNKNOWN the leader did not answer in time; the command may or may not have \
                     been applied",
                ),
            };
            self.deliver(o.to, v.to_bytes());
        }
    }

    /// Once a turn (after the core's output): requests forwarded to a node that no longer
    /// leads as far as this node knows (another leader, a higher term, or its link closed)
    /// are answered or sent on at once (`pending.rs`, "Forwards whose leader goes away"), and
    /// parked requests go to a leader once one is known.
    pub(super) fn reforward_orphans(&mut self) {
        let leader = self.raft.leader();
        for gone in self.pending.take_lost_links() {
            self.pending.ask_again(None, Some(gone));
            self.forwards_lost(gone, "the connection to the leader closed");
        }
        if self.pending.leader_changed(leader) {
            self.pending.ask_again(leader, None);
            let why = match leader {
                Some(_) => "another node leads now",
                None => "this node lost touch with the leader (an election began)",
            };
            for l in self.pending.forward_leaders() {
                if Some(l) != leader {
                    self.forwards_lost(l, why);
                }
            }
        }
        if leader.is_some() {
            for o in self.pending.take_parked() {
                self.resend(o);
            }
        }
        self.ask_read_index();
    }

    /// Requests forwarded to `gone`: a write without a session is answered `-UNKNOWN` (it
    /// may have reached the log); a read or a session write is sent on.
    fn forwards_lost(&mut self, gone: NodeId, why: &str) {
        for o in self.pending.take_forwards_to(gone) {
            match o.kind {
                Forwarded::Write => {
                    let v = Value::error(format!(
                        "UNKNOWN {why} while the write was forwarded to node {gone}; the \
                         command may or may not have been applied"
                    ));
                    self.deliver(o.to, v.to_bytes());
                }
                Forwarded::Resendable { .. } => self.resend(o),
            }
        }
    }

    /// Send a resendable request to the leader now known, serve it here if this node leads
    /// now, or park it until a leader is known (never past its first deadline).
    fn resend(&mut self, o: Orphan) {
        let Forwarded::Resendable { args, .. } = &o.kind else {
            unreachable!("only resendable requests are sent again")
        };
        let args = args.clone();
        match self.raft.leader() {
            Some(l) if l == self.id => match self.dispatch(o.to, &args) {
                Dispatch::Reply(v) | Dispatch::ReplyAndClose(v) => self.deliver_value(o.to, &v),
                Dispatch::Pending => {}
            },
            Some(l) => {
                if let Err(o) = self.forward_to(l, &args, o) {
                    self.pending.park(o);
                }
            }
            None => self.pending.park(o),
        }
    }

    /// The rights of the client connection waiting (none if it has left: a request of a
    /// client that left is not forwarded with more than nothing).
    fn rights_of(&self, to: ReplyTo) -> Rights {
        match to {
            // A forwarded request is never forwarded again (`not_leader`).
            ReplyTo::Peer { .. } | ReplyTo::ReadIndex { .. } => Rights::None,
            ReplyTo::Client { key, gen, .. } => match self.conns.get(key) {
                Some(c) if c.gen() == gen => match &c.kind {
                    ConnKind::Client(st) => st.session.auth.rights(),
                    _ => Rights::None,
                },
                _ => Rights::None,
            },
        }
    }

    /// The protocol the waiting client speaks (RESP2 if it has left).
    pub(super) fn protocol_of(&self, to: ReplyTo) -> Protocol {
        match to {
            ReplyTo::Peer { proto, .. } => proto,
            ReplyTo::ReadIndex { .. } => Protocol::Resp2,
            ReplyTo::Client { key, gen, .. } => match self.conns.get(key) {
                Some(c) if c.gen() == gen => match &c.kind {
                    ConnKind::Client(st) => st.session.proto,
                    _ => Protocol::Resp2,
                },
                _ => Protocol::Resp2,
            },
        }
    }

    /// `v` encoded in the protocol of whoever waits for it.
    pub(super) fn encode_reply(&self, to: ReplyTo, v: &Value) -> Vec<u8> {
        v.to_bytes_as(self.protocol_of(to))
    }

    /// Hand a reply to whoever waits for it; a client's replies leave in request order.
    pub(super) fn deliver(&mut self, to: ReplyTo, reply: Vec<u8>) {
        match to {
            ReplyTo::Peer { node, id, .. } => {
                let reply = fit_forwarded_reply(node, reply);
                self.send_frame(node, &Frame::ClientReply { id, reply });
            }
            // Only a failure is delivered to a follower's ReadIndexRequest (a confirmation
            // goes out in `read_confirmed`): the leader stepped down, or could not take it.
            ReplyTo::ReadIndex { .. } => self.refuse_read_index(to),
            ReplyTo::Client { key, gen, seq } => {
                let Some(c) = self.conns.get_mut(key) else {
                    return;
                };
                if c.gen() != gen {
                    return; // the client left; the slab key belongs to someone else now
                }
                let ConnKind::Client(st) = &mut c.kind else {
                    return;
                };
                let reply = match st.session.is_watch_reply(seq) {
                    true => st.session.watch_done(seq, reply),
                    false => reply,
                };
                st.fill(seq, reply);
                self.release_answered(key);
            }
        }
    }

    /// Hand `v` to whoever waits for it, as `deliver(to, self.encode_reply(to, v))` does.
    /// The common case, a scalar answering the request a client's pipeline waits for next,
    /// is encoded straight into the connection's output (its size checked against the caps
    /// first): no buffer of its own and no copy per reply (issue 16).
    pub(super) fn deliver_value(&mut self, to: ReplyTo, v: &Value) {
        if !self.encode_in_place(to, v) {
            self.deliver(to, self.encode_reply(to, v));
        }
    }

    /// `deliver_value`'s direct path; false (nothing done) when it does not apply.
    fn encode_in_place(&mut self, to: ReplyTo, v: &Value) -> bool {
        let Some(len_max) = v.scalar_len_max() else {
            return false;
        };
        match to {
            ReplyTo::Client { key, gen, seq } => {
                self.write_next_reply(key, gen, seq, len_max, |proto, out| v.encode_as(proto, out))
            }
            ReplyTo::Peer { node, id, proto } => {
                self.send_client_reply(node, id, len_max, |out| v.encode_as(proto, out))
            }
            ReplyTo::ReadIndex { .. } => false,
        }
    }

    /// `write` appends (at most `len_max` bytes, in the client's protocol) the reply to
    /// request `seq` of client `key` straight into its output, when that is the reply its
    /// pipeline waits for next and it fits the caps; false, with nothing written, otherwise
    /// (the client left, a WATCH's reply, an earlier reply still owed, no room).
    fn write_next_reply(
        &mut self,
        key: usize,
        gen: u64,
        seq: u64,
        len_max: usize,
        write: impl FnOnce(Protocol, &mut Vec<u8>),
    ) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if c.gen() != gen {
            return false; // the client left: the ordinary path drops the reply
        }
        let ConnKind::Client(st) = &mut c.kind else {
            return false;
        };
        let fits = c.conn.has_room(len_max)
            && st.held_bytes() + c.conn.pending_output() + len_max
                <= limits::CLIENT_OUTPUT_SIZE_MAX;
        // A WATCH reply takes the ordinary path (which rewrites it), and so does a reply that
        // may not fit (where that path closes the connection).
        if !st.is_next(seq) || st.session.is_watch_reply(seq) || !fits {
            return false;
        }
        let out = c.conn.output_buf();
        let before = out.len();
        write(st.session.proto, out);
        assert!(
            out.len() - before <= len_max,
            "a reply of {} bytes beyond its bound {len_max}",
            out.len() - before
        );
        st.pop_next(seq);
        self.release_answered(key);
        true
    }

    /// Client `key`'s replies that are known, in order, to its output; the connection is
    /// closed if they overflow it. Then it is flushed at the end of the turn, and read again
    /// if it was paused on a full pipeline.
    fn release_answered(&mut self, key: usize) {
        let c = &mut self.conns[key];
        let ConnKind::Client(st) = &mut c.kind else {
            unreachable!("only a client has a pipeline")
        };
        let mut overflow = false;
        while let Some(bytes) = st.pop_answered() {
            if c.conn.queue(&bytes).is_err() {
                overflow = true;
                break;
            }
        }
        let held = st.held_bytes() + c.conn.pending_output();
        if overflow || held > limits::CLIENT_OUTPUT_SIZE_MAX {
            return self.close_conn(key, "client does not read its replies");
        }
        let was_paused = c.conn.read_paused;
        self.mark_dirty(key);
        if was_paused {
            // Room in the pipeline again: resume reading what is buffered or pending.
            self.read_again(key);
        }
    }
}

/// A reply too large for one frame (an MGET of many large values through a follower) is
/// replaced by an error the client can act on: it cannot be framed, and must never take the
/// leader down. Direct clients get such replies whole (`CLIENT_OUTPUT_SIZE_MAX`).
fn fit_forwarded_reply(node: NodeId, reply: Vec<u8>) -> Vec<u8> {
    if reply.len() <= wire::CLIENT_REPLY_SIZE_MAX {
        return reply;
    }
    warn!(
        "reply of {} bytes to a command forwarded by node {node} exceeds {}",
        reply.len(),
        wire::CLIENT_REPLY_SIZE_MAX
    );
    Value::error(format!(
        "ERR reply too large to forward ({} bytes, at most {} through a follower); send the \
         command to the leader or ask for fewer keys",
        reply.len(),
        wire::CLIENT_REPLY_SIZE_MAX
    ))
    .to_bytes()
}
