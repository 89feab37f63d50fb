//! Peer connections: one TCP connection per pair of members, used in both directions. The
//! member with the lower id dials, the other accepts; each side opens with a `Hello` (cluster
//! id, sender, intended receiver, protocol version), so a node of another cluster or version,
//! or a misconfigured address, is refused with a logged reason. A newer connection from the
//! same peer (it restarted) replaces the older one.
//!
//! A broken connection loses messages, nothing more: the core is told the peer is
//! unreachable and falls back to probing; the dialing side reconnects with exponential
//! backoff. Snapshots are streamed in chunks, a bounded number in flight, so heartbeats
//! queued on the same connection are never stuck behind a whole file.

use log::{debug, error, info, warn};
use std::collections::BTreeMap;

use super::conn::Conn;

/// After a snapshot could not be opened for a follower, how long until the next try.
const SNAPSHOT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// The higher id of a pair dials when the lower has not connected for this long.
const DIAL_FALLBACK: std::time::Duration = std::time::Duration::from_secs(3);
/// A snapshot stream that heard no ack for this long resends from its last acked offset.
const SNAPSHOT_ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
use super::membership::{HelloVerdict, MemberRecord};
use super::net::{ConnectState, Net};
use super::storage::Disk;
use super::{ConnKind, CoreReport, MemberAddrs, Node, TimerId};
use crate::kv::StateMachine;
use crate::limits;
use crate::raft::{EntryId, Message, MessageBody, NodeId, SnapshotMeta, Term};
use crate::wal::{ClusterId, Identity, IncarnationId};
use crate::wire::{self, DecodeError, Frame};

/// Answers that count toward a commit, an election or a read's quorum: dropped unless they
/// come from the incarnation the membership records (`membership.rs`). A heartbeat answer
/// confirms leadership for reads, so it is one of them.
fn is_response(body: &MessageBody) -> bool {
    matches!(
        body,
        MessageBody::AppendResp { .. }
            | MessageBody::HeartbeatResp { .. }
            | MessageBody::VoteResp { .. }
            | MessageBody::PreVoteResp { .. }
    )
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// Adopt a new member table: dial new peers, drop removed ones, redial moved ones.
    pub(super) fn set_members(&mut self, members: BTreeMap<NodeId, MemberAddrs>) {
        let removed: Vec<NodeId> = self
            .peers
            .links()
            .map(|(id, _)| id)
            .filter(|id| !members.contains_key(id))
            .collect();
        for id in removed {
            self.peers.retire(id);
            if let Some(link) = self.peers.remove_link(id) {
                info!("node {id} left the member table");
                if link.sender.is_some() {
                    // The core waits for the stream's end: tell it, or it waits forever
                    // (found by the simulator).
                    self.report_to_core(CoreReport::Snapshot, id, false);
                }
                if let Some(key) = link.key {
                    self.close_conn(key, "member removed");
                }
                if let Some(h) = link.dial_timer {
                    self.wheel.cancel(h);
                }
            }
        }
        for (&id, m) in &members {
            if id == self.id {
                continue;
            }
            let moved = self.peers.link(id).map(|l| l.addr != m.peer);
            match moved {
                Some(false) => {}
                Some(true) => {
                    let key = self.peers.link_mut(id).and_then(|l| {
                        l.addr = m.peer;
                        l.key
                    });
                    if let (Some(key), true) = (key, self.dials(id)) {
                        self.close_conn(key, "member address changed");
                    }
                }
                None => {
                    self.peers.add_link(id, m.peer, self.now);
                    self.dial(id);
                }
            }
        }
        self.peers.replace_members(members);
    }

    /// After every Ready, and at start: the voting gate (`membership.rs`: vote and campaign
    /// only as the incarnation the newest membership records) and the address
    /// table (the newest records, configured members not removed, our own config line).
    pub(super) fn refresh_membership(&mut self) {
        let voting = self.ids.may_vote(self.id);
        if voting != self.raft.voting() {
            info!(
                "{}",
                if voting {
                    "this incarnation is the one the membership records: voting"
                } else {
                    "the membership does not record this incarnation: not voting until the leader admits it"
                }
            );
            self.raft.set_voting(voting);
        }
        if voting && self.ids.damaged() && self.raft.conf().is_voter(self.id) {
            // Re-admitted, caught up and promoted as the incarnation that replaced the damaged
            // one: the damaged range is repaired from the leader's log; forget it.
            match self.stored.disk_mut().clear_damage() {
                Ok(()) => {
                    info!("log damage repaired: re-admitted as a new incarnation");
                    self.ids.set_damaged(false);
                }
                Err(e) => warn!("clearing the log damage marker: {e}"),
            }
        }
        // The address table follows the member log: rebuilt only when that moved on (it is
        // otherwise the same every turn, and rebuilding it cost allocations on every turn).
        let generation = self.ids.address_generation();
        if self.peers.members_generation() == Some(generation) {
            return;
        }
        let table = self.address_table();
        if &table != self.peers.members() {
            self.set_members(table);
        }
        self.peers.set_members_generation(generation);
    }

    /// The member addresses the member log and the config file give.
    pub(super) fn address_table(&self) -> BTreeMap<NodeId, MemberAddrs> {
        self.ids
            .address_table(self.id)
            .into_iter()
            .map(|(id, (peer, client))| (id, MemberAddrs { peer, client }))
            .collect()
    }

    /// Leader only, from housekeeping: propose the next admission step, if any (one change
    /// at a time; the core refuses another while one is uncommitted).
    pub(super) fn admit_members(&mut self) {
        if self.raft.role() != crate::raft::Role::Leader {
            return;
        }
        let st = self.raft.status();
        let mut matched: BTreeMap<NodeId, crate::raft::LogIndex> =
            st.progress.iter().map(|p| (p.id, p.match_index)).collect();
        matched.insert(self.id, st.last_index);
        let Some((cc, why)) = self
            .ids
            .next_admission(self.id, &st.conf, &matched, st.commit)
        else {
            return;
        };
        let node = cc.node;
        let proposed = match cc.op {
            crate::raft::ConfChangeOp::AddLearner => self.raft.propose_readmission(cc),
            _ => self.raft.propose_conf_change(cc),
        };
        match proposed {
            Ok(at) => info!("{why} (at {at})"),
            Err(crate::raft::ProposeError::ConfChangePending) => {}
            Err(e) => debug!("admitting node {node}: {e}"),
        }
    }

    /// A node this node no longer lists but must still reach: the leader, or a member of the
    /// core's configuration (this node applied a removal and lags behind a log in which the
    /// node came back, or the removal is not committed yet). Of a pair only the lower id
    /// dials, so without this a lagging member and such a node never connect again (found by
    /// the simulator: clusters that stalled after membership changes).
    pub(super) fn relink_known_nodes(&mut self) {
        let mut wanted: Vec<NodeId> = self.raft.leader().into_iter().collect();
        wanted.extend(self.raft.status().conf.members());
        for id in wanted {
            if id == self.id || self.peers.link(id).is_some() {
                continue;
            }
            if let Some(addr) = self.peers.retired(id).map(|m| m.peer) {
                info!("node {id} left our member table but is still needed: reconnecting");
                self.peers.add_link(id, addr, self.now);
                self.dial(id);
            }
        }
    }

    /// Of each pair of members, the one with the lower id dials.
    pub(super) fn dials(&self, peer: NodeId) -> bool {
        self.id < peer
    }

    /// Open the connection to `to` (non-blocking; `dial_done` finishes it), if this side dials.
    pub(super) fn dial(&mut self, to: NodeId) {
        if self.dials(to) {
            self.connect_to(to);
        }
    }

    /// The higher id of a pair dials too when no connection came for `DIAL_FALLBACK`: the
    /// lower one may have dropped us from its member table (it lags behind a membership
    /// change) while we need it, e.g. for its vote (found by the simulator: a cluster with
    /// no leader after healing). A connection it accepts from us serves it as well.
    pub(super) fn dial_silent_peers(&mut self) {
        let now = self.now;
        let silent: Vec<NodeId> = self
            .peers
            .links()
            .filter(|&(id, l)| !self.dials(id) && l.key.is_none() && l.dial_timer.is_none())
            .filter(|(_, l)| now.saturating_duration_since(l.down_since) >= DIAL_FALLBACK)
            .map(|(id, _)| id)
            .collect();
        for id in silent {
            if let Some(link) = self.peers.link_mut(id) {
                link.down_since = now; // the next try, if this one fails, after another wait
            }
            debug!("no connection from node {id} for {DIAL_FALLBACK:?}: dialing it");
            self.connect_to(id);
        }
    }

    fn connect_to(&mut self, to: NodeId) {
        let Some(link) = self.peers.link(to) else {
            return;
        };
        if link.key.is_some() || link.dial_timer.is_some() {
            return;
        }
        let addr = link.addr;
        let stream = match self.net.connect(addr) {
            Ok(s) => s,
            Err(e) => {
                debug!("dial node {to} at {addr}: {e}");
                self.schedule_redial(to);
                return;
            }
        };
        let mut conn = Conn::peer(stream);
        conn.connecting = true;
        let hello = self.hello_to(to);
        wire::encode(&hello, conn.output_buf()).expect("a Hello has a fixed size");
        match self.insert_conn(
            conn,
            ConnKind::PeerOut {
                to,
                hello_ok: false,
            },
        ) {
            Ok(key) => {
                if let Some(link) = self.peers.link_mut(to) {
                    link.key = Some(key);
                }
            }
            Err(e) => {
                warn!("registering the connection to node {to}: {e}");
                self.schedule_redial(to);
            }
        }
    }

    /// The non-blocking connect finished, one way or the other.
    pub(super) fn dial_done(&mut self, key: usize) {
        let c = &mut self.conns[key];
        match self.net.connect_state(&c.conn.stream) {
            ConnectState::Pending => return,
            ConnectState::Failed(e) => {
                self.close_conn(key, &format!("connect failed: {e}"));
                return;
            }
            ConnectState::Connected => {}
        }
        c.conn.connecting = false;
        if let ConnKind::PeerOut { to, .. } = c.kind {
            debug!("connected to node {to}");
        }
    }

    fn schedule_redial(&mut self, to: NodeId) {
        let Some(link) = self.peers.link_mut(to) else {
            return;
        };
        if link.dial_timer.is_some() {
            return;
        }
        let ticks = self.clock.ms_to_ticks(link.next_backoff_ms());
        let at = self.now_tick + ticks;
        let h = self.schedule(at, TimerId::Dial(to));
        if let Some(link) = self.peers.link_mut(to) {
            link.dial_timer = h;
        }
    }

    /// Connection `key` to `to` closed. If it was the current one: tell the core, stop any
    /// snapshot stream, and (on the dialing side) redial later.
    pub(super) fn peer_down(&mut self, to: NodeId, key: usize) {
        self.ids.closed(key);
        let Some(link) = self.peers.link_mut(to) else {
            return;
        };
        if link.key != Some(key) {
            return; // an older connection, already replaced
        }
        self.telemetry.link_lost(to);
        link.key = None;
        link.down_since = self.now;
        // Forwards waiting on this link will get no reply over it: settled at the turn's end.
        self.pending.note_link_lost(to);
        let had_sender = link.sender.take().is_some();
        let report = !link.reported_unreachable;
        link.reported_unreachable = true;
        if had_sender {
            self.report_to_core(CoreReport::Snapshot, to, false);
        }
        if report {
            self.report_to_core(CoreReport::Unreachable, to, false);
        }
        if self.dials(to) {
            self.schedule_redial(to);
        }
    }

    /// The connection of peer `to`, if it is connected and its output has room for a frame.
    fn peer_with_room(&self, to: NodeId) -> Option<usize> {
        let key = self.peers.key_of(to)?;
        if self.conns[key].conn.pending_output()
            >= limits::PEER_OUTPUT_SIZE_MAX - limits::FRAME_SIZE_MAX
        {
            debug!("output queue to node {to} full");
            return None;
        }
        Some(key)
    }

    /// Queue a frame on the connection to `to`. Dropped (Raft tolerates loss) when
    /// there is no connection or its queue is full.
    pub(super) fn send_frame(&mut self, to: NodeId, frame: &Frame) -> bool {
        let Some(key) = self.peer_with_room(to) else {
            return false;
        };
        if let Err(e) = wire::encode(frame, self.conns[key].conn.output_buf()) {
            // Nothing was queued; Raft tolerates the loss, and callers whose frame carries a
            // client's data answer that client themselves.
            warn!("dropping a frame to node {to}: {e}");
            return false;
        }
        self.mark_dirty(key);
        true
    }

    /// A ClientReply frame to `to` whose reply `write_reply` encodes straight into the output
    /// (`wire::encode_client_reply_with`), as `send_frame` would queue it. False, with nothing
    /// queued, when `reply_len_max` is beyond what a frame carries or the output is full:
    /// the caller then takes the path that answers those cases.
    pub(super) fn send_client_reply(
        &mut self,
        to: NodeId,
        id: u64,
        reply_len_max: usize,
        write_reply: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let Some(key) = self.peer_with_room(to) else {
            return false;
        };
        let out = self.conns[key].conn.output_buf();
        if wire::encode_client_reply_with(id, reply_len_max, out, write_reply).is_err() {
            return false;
        }
        self.mark_dirty(key);
        true
    }

    /// A ClientRequest frame to `to` with borrowed arguments (`wire::encode_client_request`),
    /// as `send_frame` would queue `Frame::ClientRequest`.
    pub(super) fn send_client_request(
        &mut self,
        to: NodeId,
        head: wire::ClientRequestHead,
        args: &[Vec<u8>],
    ) -> bool {
        let Some(key) = self.peer_with_room(to) else {
            return false;
        };
        if let Err(e) = wire::encode_client_request(head, args, self.conns[key].conn.output_buf()) {
            warn!("dropping a forwarded command to node {to}: {e}");
            return false;
        }
        self.mark_dirty(key);
        true
    }

    /// Send a message from the core. A `Snapshot` message becomes a chunked stream.
    pub(super) fn send_raft(&mut self, msg: Message) {
        if let MessageBody::Snapshot { meta } = &msg.body {
            let meta = meta.clone();
            self.start_snapshot_stream(msg.to, msg.term, meta);
            return;
        }
        let (to, term) = (msg.to, msg.term);
        let heartbeat = matches!(msg.body, MessageBody::Heartbeat { .. });
        if self.send_frame(to, &Frame::Raft(msg)) && heartbeat {
            self.telemetry.heartbeat_sent(to, term, self.now);
        }
    }

    pub(super) fn read_peer(&mut self, key: usize) {
        self.read_budgeted(key, Self::parse_frames);
    }

    /// Decode and handle every complete frame buffered. False if the connection closed.
    fn parse_frames(&mut self, key: usize) -> bool {
        loop {
            match self.parse_client_frame(key) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(DecodeError::Incomplete) => return true,
                Err(e) => {
                    self.close_conn(key, &format!("bad frame: {e}"));
                    return false;
                }
            }
            let Some(c) = self.conns.get_mut(key) else {
                return false;
            };
            match wire::decode(c.conn.input()) {
                Ok((frame, n)) => {
                    c.conn.consume(n);
                    self.handle_frame(key, frame);
                }
                Err(DecodeError::Incomplete) => return true,
                Err(e) => {
                    self.close_conn(key, &format!("bad frame: {e}"));
                    return false;
                }
            }
        }
    }

    /// The frame at the front of `key`'s input, if it is a ClientRequest or a ClientReply
    /// from a peer past its Hello: handled without a `Frame` of its own (issue 16: the leader
    /// decoded every forwarded command into one allocation per argument, the follower every
    /// reply into one). The arguments are copied into the node's reused `ArgBufs`, the reply
    /// into `reply_buf`, so the connection's input is free again before they are handled.
    /// `Ok(false)`: another frame (or a connection before its Hello), for `wire::decode`.
    fn parse_client_frame(&mut self, key: usize) -> Result<bool, DecodeError> {
        let Some(c) = self.conns.get_mut(key) else {
            return Ok(false);
        };
        let peer = match c.kind {
            ConnKind::PeerIn { from: Some(f) } => f,
            ConnKind::PeerOut { to, hello_ok: true } => to,
            _ => return Ok(false),
        };
        let input = c.conn.input();
        let mut bufs = std::mem::take(&mut self.arg_bufs);
        bufs.clear();
        let request = wire::decode_client_request_with(input, |a| bufs.push(a));
        let reply = match request {
            Ok(None) => wire::decode_client_reply_ref(input).map(|r| {
                r.map(|(id, reply, n)| {
                    self.reply_buf.clear();
                    self.reply_buf.extend_from_slice(reply);
                    (id, n)
                })
            }),
            _ => Ok(None),
        };
        let handled = match (request, reply) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(Some((head, n))), _) => {
                c.conn.consume(n);
                self.contact.heard(peer, self.now);
                let rights = crate::auth::Rights::from_byte(head.rights);
                self.handle_forwarded(peer, head.id, head.proto, rights, bufs.args());
                Ok(true)
            }
            (Ok(None), Ok(Some((id, n)))) => {
                c.conn.consume(n);
                self.contact.heard(peer, self.now);
                let reply = std::mem::take(&mut self.reply_buf);
                self.forward_reply(id, &reply);
                self.reply_buf = reply;
                Ok(true)
            }
            (Ok(None), Ok(None)) => Ok(false),
        };
        bufs.trim();
        self.arg_bufs = bufs;
        if self.reply_buf.capacity() > limits::ARG_BUF_KEPT_SIZE_MAX {
            self.reply_buf = Vec::new();
        }
        handled
    }

    fn handle_frame(&mut self, key: usize, frame: Frame) {
        let peer = match (&self.conns[key].kind, &frame) {
            (ConnKind::PeerIn { from: None }, Frame::Hello { .. })
            | (
                ConnKind::PeerOut {
                    hello_ok: false, ..
                },
                Frame::Hello { .. },
            ) => return self.handle_hello(key, frame),
            (ConnKind::PeerIn { from: Some(f) }, _) => *f,
            (ConnKind::PeerOut { to, hello_ok: true }, _) => *to,
            _ => return self.close_conn(key, "expected a Hello first"),
        };
        self.contact.heard(peer, self.now);
        match frame {
            Frame::Hello { .. } => self.close_conn(key, "a second Hello"),
            Frame::Raft(msg) => {
                if msg.from != peer || msg.to != self.id {
                    warn!(
                        "dropping a {} from {} to {} on node {peer}'s connection",
                        msg.body.name(),
                        msg.from,
                        msg.to
                    );
                    return;
                }
                if is_response(&msg.body) && !self.ids.counts(peer, key) {
                    // Rule 2 of membership.rs: only the incarnation the membership records
                    // counts; requests still go through (a lagging follower must learn of
                    // its re-admission from the leader's appends). A pre-vote answer's log
                    // position still counts as a report for an uncertain tail (simulator
                    // seed 21: the member was named only in a configuration our cut removed).
                    if let MessageBody::PreVoteResp { last, .. } = msg.body {
                        self.raft.report_position(peer, last);
                    }
                    debug!(
                        "dropping a {} from node {peer}: its connection's incarnation is not the one recorded",
                        msg.body.name()
                    );
                    return;
                }
                self.observe_peer_message(peer, &msg);
                self.raft.step(msg);
            }
            Frame::SnapshotChunk {
                term,
                from,
                to,
                meta,
                total_size,
                offset,
                data,
                done,
            } => {
                if from != peer || to != self.id {
                    return self.close_conn(key, "snapshot chunk with wrong ids");
                }
                self.on_snapshot_chunk(peer, term, meta, total_size, offset, &data, done);
            }
            Frame::SnapshotAck {
                from,
                snapshot,
                next_offset,
                ok,
                ..
            } => {
                if from == peer {
                    self.on_snapshot_ack(peer, snapshot, next_offset, ok);
                }
            }
            Frame::ClientRequest {
                id,
                args,
                proto,
                rights,
            } => {
                let rights = crate::auth::Rights::from_byte(rights);
                self.handle_forwarded(peer, id, proto, rights, &args)
            }
            Frame::ClientReply { id, reply } => self.forward_reply(id, &reply),
            Frame::ReadIndexRequest { id } => self.handle_read_index_request(peer, id),
            Frame::ReadIndexReply { id, index, now_ms } => {
                self.read_index_reply(peer, id, index, now_ms)
            }
        }
    }

    /// Our Hello to `to`: the cluster name's hash, the cluster id (0 until we have one) and
    /// our incarnation.
    fn hello_to(&self, to: NodeId) -> Frame {
        Frame::Hello {
            cluster_id: self.cluster_id,
            cluster_uid: self.ids.cluster(),
            incarnation: self.ids.incarnation(),
            from: self.id,
            to,
        }
    }

    /// The identity half of a Hello: refuse another cluster id (naming both), adopt a
    /// configured member's while we have none (durably, before anything on this connection
    /// is handled, so nothing is acknowledged under no cluster id), and record the peer's
    /// incarnation for this connection. False if the connection was closed.
    fn judge_hello_identity(
        &mut self,
        key: usize,
        from: NodeId,
        cluster: u128,
        incarnation: u128,
    ) -> bool {
        match self.ids.judge_hello(from, cluster) {
            HelloVerdict::Accept => {}
            HelloVerdict::Refuse(why) => {
                warn!("refusing a peer connection: {why}");
                self.ids.refused(from, cluster);
                self.close_conn(key, &why);
                return false;
            }
            HelloVerdict::Adopt(cluster) => {
                let me = Identity {
                    cluster: ClusterId(cluster),
                    incarnation: IncarnationId(self.ids.incarnation()),
                };
                if let Err(e) = self.stored.disk_mut().store_identity(&me) {
                    error!("storing the identity: {e}");
                    self.close_conn(key, "cannot store the cluster id");
                    return false;
                }
                self.ids.adopted(cluster);
                info!(
                    "adopted cluster id {} from node {from}; waiting to be admitted as incarnation {}",
                    me.cluster, me.incarnation
                );
            }
        }
        self.ids.heard(from, key, incarnation);
        // A voter that came back as a new incarnation lost its storage. Damage strikes one
        // node at a time, so an uncertain tail of ours is then a torn one: count that voter
        // as having reported (raft/uncertain.rs), or it could never help us elect anyone.
        let replaced = |r: &MemberRecord| r.incarnation != 0 && r.incarnation != incarnation;
        if self.ids.log().newest().get(from).is_some_and(replaced) {
            self.raft.report_replaced(from);
        }
        true
    }

    fn handle_hello(&mut self, key: usize, frame: Frame) {
        let Frame::Hello {
            cluster_id,
            cluster_uid,
            incarnation,
            from,
            to,
        } = frame
        else {
            unreachable!()
        };
        let refused = if cluster_id != self.cluster_id {
            Some(format!(
                "Hello from node {from} of another cluster (id {cluster_id:#x}, ours {:#x})",
                self.cluster_id
            ))
        } else if to != self.id {
            Some(format!(
                "Hello from node {from} meant for node {to}, but this is node {}",
                self.id
            ))
        } else if from == self.id {
            Some("Hello from a node with our own id".to_string())
        } else {
            None
        };
        if let Some(why) = refused {
            warn!("refusing a peer connection: {why}");
            return self.close_conn(key, &why);
        }
        if let ConnKind::PeerOut { to: expected, .. } = self.conns[key].kind {
            if from != expected {
                return self.close_conn(
                    key,
                    &format!("dialed node {expected} but node {from} answered"),
                );
            }
        }
        if !self.judge_hello_identity(key, from, cluster_uid, incarnation) {
            return;
        }
        match &mut self.conns[key].kind {
            ConnKind::PeerIn { from: f } => {
                *f = Some(from);
                self.adopt_inbound(from, key);
                let hello = self.hello_to(from);
                let c = &mut self.conns[key];
                wire::encode(&hello, c.conn.output_buf()).expect("a Hello has a fixed size");
                self.mark_dirty(key);
            }
            ConnKind::PeerOut {
                to: expected,
                hello_ok,
            } => {
                if from != *expected {
                    let expected = *expected;
                    return self.close_conn(
                        key,
                        &format!("dialed node {expected} but node {from} answered"),
                    );
                }
                *hello_ok = true;
                if let Some(link) = self.peers.link_mut(from) {
                    link.reset_backoff();
                    link.reported_unreachable = false;
                }
                info!("connected to node {from}");
            }
            ConnKind::Client(_) => unreachable!("hello on a client connection"),
        }
    }

    /// A peer dialed us and said who it is: its connection becomes the one we send on, replacing
    /// an older one (the peer restarted and the old socket has not noticed yet).
    fn adopt_inbound(&mut self, from: NodeId, key: usize) {
        let addr = match self.peers.member(from) {
            Some(m) => m.peer,
            None => {
                info!("accepted a connection from node {from}, not (yet) a member");
                self.net
                    .peer_addr(&self.conns[key].conn.stream)
                    .unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
            }
        };
        let now = self.now;
        let link = self.peers.link_or_add(from, addr, now);
        let old = link.key.replace(key);
        link.reported_unreachable = false;
        if let Some(old) = old.filter(|&old| old != key) {
            self.close_conn(old, "replaced by a newer connection");
        }
        info!("connected to node {from} (it dialed)");
    }

    fn start_snapshot_stream(&mut self, to: NodeId, term: Term, meta: SnapshotMeta) {
        if self.stored.snapshot_on_disk().is_none() {
            warn!("the core asked to send a snapshot to node {to} but there is none on disk");
            return self.report_to_core(CoreReport::Snapshot, to, false);
        }
        let Some(link) = self.peers.link(to) else {
            return self.report_to_core(CoreReport::Snapshot, to, false);
        };
        if link
            .sender
            .as_ref()
            .is_some_and(|s| s.meta().last == meta.last)
        {
            return; // already streaming this one
        }
        if link.snapshot_retry_at.is_some_and(|at| self.now < at) {
            // Opening failed a moment ago: fail fast and quietly rather than retrying (and
            // logging) at every probe of the core (issue 12: a busy loop of "No such file").
            return self.report_to_core(CoreReport::Snapshot, to, false);
        }
        let chunk = self.cfg.snapshot_chunk_bytes as usize;
        let inflight = limits::SNAPSHOT_CHUNKS_INFLIGHT_MAX;
        let mut opened = self.stored.disk_mut().snapshot_open(&meta, chunk, inflight);
        if opened.is_err() && self.stored.snapshot_meta().last != meta.last {
            // The file asked for is gone (a newer one replaced it): the current one serves the
            // follower as well, and it is the one on disk.
            let current = self.stored.snapshot_meta().clone();
            opened = self
                .stored
                .disk_mut()
                .snapshot_open(&current, chunk, inflight);
        }
        let now = self.now;
        let Some(link) = self.peers.link_mut(to) else {
            return;
        };
        match opened {
            Ok(sender) => {
                info!(
                    "streaming snapshot at {} ({} bytes) to node {to}",
                    sender.meta().last,
                    sender.total_size()
                );
                link.snapshot_retry_at = None;
                link.snapshot_heard_at = now;
                link.sender = Some(sender);
                self.pump_snapshot(to, term);
            }
            Err(e) => {
                warn!(
                    "opening the snapshot {} for node {to}: {e}; retrying in {SNAPSHOT_RETRY:?}",
                    meta.last
                );
                link.snapshot_retry_at = Some(now + SNAPSHOT_RETRY);
                self.report_to_core(CoreReport::Snapshot, to, false);
            }
        }
    }

    /// Streams whose follower has not acknowledged anything for `SNAPSHOT_ACK_TIMEOUT` resend
    /// from the last acknowledged offset: chunks or acks were lost on a connection that stayed
    /// up, or the follower dropped chunks of a term it had left behind.
    pub(super) fn resend_stalled_snapshots(&mut self) {
        let term = self.raft.term();
        let now = self.now;
        let mut stalled = Vec::new();
        for (id, link) in self.peers.links_mut() {
            let Some(sender) = link.sender.as_mut() else {
                continue;
            };
            if now.saturating_duration_since(link.snapshot_heard_at) >= SNAPSHOT_ACK_TIMEOUT {
                sender.on_timeout();
                link.snapshot_heard_at = now;
                stalled.push(id);
            }
        }
        for id in stalled {
            debug!("snapshot stream to node {id} stalled; resending from its last ack");
            self.pump_snapshot(id, term);
        }
    }

    /// Send the next chunks the sender's window allows.
    fn pump_snapshot(&mut self, to: NodeId, term: Term) {
        loop {
            let Some(link) = self.peers.link_mut(to) else {
                return;
            };
            let Some(sender) = link.sender.as_mut() else {
                return;
            };
            let next = match sender.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => return,
                Err(e) => {
                    warn!("reading the snapshot for node {to}: {e}");
                    link.sender = None;
                    return self.report_to_core(CoreReport::Snapshot, to, false);
                }
            };
            let (offset, data, done) = next;
            let frame = Frame::SnapshotChunk {
                term,
                from: self.id,
                to,
                meta: sender.meta().clone(),
                total_size: sender.total_size(),
                offset,
                data,
                done,
            };
            if !self.send_frame(to, &frame) {
                if let Some(link) = self.peers.link_mut(to) {
                    link.sender = None;
                }
                return self.report_to_core(CoreReport::Snapshot, to, false);
            }
        }
    }

    fn on_snapshot_ack(&mut self, from: NodeId, snapshot: EntryId, next_offset: u64, ok: bool) {
        let term = self.raft.term();
        let Some(link) = self.peers.link_mut(from) else {
            return;
        };
        let Some(sender) = link.sender.as_mut() else {
            return;
        };
        if sender.meta().last != snapshot {
            return; // an ack for an earlier stream
        }
        sender.on_ack(next_offset, ok);
        link.snapshot_heard_at = self.now;
        if sender.is_complete() {
            info!("snapshot at {snapshot} delivered to node {from}");
            link.sender = None;
            // The follower has the file; the core probes from just after it (and does not
            // wait forever if the follower's own acknowledgement is lost).
            return self.report_to_core(CoreReport::Snapshot, from, true);
        }
        self.pump_snapshot(from, term);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        term: Term,
        meta: SnapshotMeta,
        total_size: u64,
        offset: u64,
        data: &[u8],
        done: bool,
    ) {
        if term < self.raft.term() {
            // A deposed leader's stream: writing it could only waste the disk, and its ack
            // would mislead nobody; drop it (issue 12).
            debug!("dropping a snapshot chunk of term {term} from node {from}");
            return;
        }
        let (next_offset, ok, complete) =
            if meta.last.index <= self.stored.snapshot_meta().last.index {
                // We hold this snapshot or a newer one: never write an older one (the metadata
                // never moves backwards); tell the sender it is complete so it stops.
                (total_size, true, None)
            } else {
                self.incoming
                    .on_chunk(from, &meta, total_size, offset, data, done)
            };
        let ack = Frame::SnapshotAck {
            term,
            from: self.id,
            to: from,
            snapshot: meta.last,
            next_offset,
            ok,
        };
        self.send_frame(from, &ack);
        if let Some((header, path)) = complete {
            info!(
                "received snapshot at {} from node {from} ({})",
                header.meta.last,
                path.display()
            );
            let msg = Message {
                from,
                to: self.id,
                term,
                body: MessageBody::Snapshot { meta: header.meta },
            };
            self.raft.step(msg);
        }
    }
}
