//! The member table: for every member, its addresses, the incarnation of its storage that the
//! cluster admitted, and whether it is promoted to voter on its own once caught up. And the
//! rules built on it: which members this node may count on (the voting gate), and which
//! membership change a leader proposes next to admit a member (a new one, or one that came
//! back with new storage).
//!
//! Owns: the record's encoding in a `ConfChange` context and the table's encoding in a
//! snapshot's `extra` blob (both below, byte for byte), the table as of the newest appended
//! entry (`MemberLog`), and the admission decision (`next_admission`). Must not: touch a
//! socket, a file or the core; the node feeds it what it appended, applied and heard.
//!
//! Why incarnations. A member whose disk was lost comes back empty under the same node id.
//! Its earlier self voted and acknowledged entries that are now gone: were it counted again
//! at once, a candidate lacking an acknowledged entry could win with its vote, or an entry
//! could commit on its fresh acks while an old vote of its earlier self elects a leader
//! without it. So a member counts only as the incarnation the newest membership records
//! (the node drops responses from any other, and votes itself only while the record names
//! it), and the leader re-admits a new incarnation as a learner first (C1), then promotes it
//! (C2) once it holds the log up to the commit index. Once C1 commits, no candidate whose log
//! lacks C1 can win among C1's voters without the new incarnation, which votes only once it
//! holds C2 (hence C1): the old incarnation's votes and the new one's never add up in a term.
//!
//! # ConfChange context (AddLearner / AddVoter; Remove carries none), big-endian
//! ```text
//! offset size field
//!      0    4 magic "KVMR"
//!      4    1 version (1)
//!      5    1 flags: bit 0 auto_promote; other bits zero
//!      6   16 incarnation (u128; 0 = invited, not yet known)
//!     22    a peer address   (a = 7 for IPv4: family 4, 4 address bytes, port u16;
//!   22+a    b client address      19 for IPv6: family 6, 16 address bytes, port u16)
//! ```
//! At most 60 bytes, well under `CONF_CONTEXT_SIZE_MAX`. The text context of earlier versions
//! (`peer=.. client=..`) is not read: such logs predate the identity file, and a node refuses
//! a log without one.
//!
//! # Member table (snapshot `extra`), big-endian
//! ```text
//! offset size field
//!      0    4 magic "KVMT"
//!      4    1 version (1)
//!      5    2 member count m (<= MEMBERS_MAX)
//!      7    2 removed count r (<= REMOVED_MARKS_MAX)
//!      9      m times: node id (u64, != 0, ascending), then a record as in a context
//!             (magic, version, flags, incarnation, addresses)
//!      ..     r times: node id (u64, != 0, ascending, none of the members), then the
//!             incarnation it had when removed (u128; 0 = none recorded)
//! ```
//! The old text table (one `id peer client` line per member) is not read (see above).
//!
//! Invariants:
//! 1. `MemberLog::newest` is `applied` changed by every ConfChange entry appended after the
//!    applied index, in log order (an entry overwritten by an append is forgotten).
//!    `MemberLog::generation` moves on whenever `newest` may have changed, so what is derived
//!    from it (the address table, `Identities::address_table`) is rebuilt only then.
//! 2. Decoding never panics and never allocates by a count it has not checked against its
//!    limit and the bytes present; encode then decode is the identity.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::limits::MEMBERS_MAX;
use crate::raft::{ConfChange, ConfChangeOp, ConfState, Entry, EntryKind, LogIndex, NodeId};

const RECORD_MAGIC: [u8; 4] = *b"KVMR";
const TABLE_MAGIC: [u8; 4] = *b"KVMT";
const VERSION: u8 = 1;
const FLAG_AUTO_PROMOTE: u8 = 1;
/// magic, version, flags, incarnation.
const RECORD_FIXED_SIZE: usize = 4 + 1 + 1 + 16;
/// The largest record: two IPv6 addresses.
pub(super) const RECORD_SIZE_MAX: usize = RECORD_FIXED_SIZE + 2 * 19;
const _: () = assert!(RECORD_SIZE_MAX <= crate::raft::types::CONF_CONTEXT_SIZE_MAX);
/// Members removed by `MEMBER REMOVE` remembered (so a config file listing them does not bring
/// them back); beyond this the lowest ids are forgotten.
pub(super) const REMOVED_MARKS_MAX: usize = 64;
const TABLE_HEADER_SIZE: usize = 9;

/// One member as the membership records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberRecord {
    pub peer: SocketAddr,
    pub client: SocketAddr,
    /// The incarnation of its storage the cluster admitted; 0 = invited, not yet known.
    pub incarnation: u128,
    /// Promote it to voter once it is caught up (a voter added by `MEMBER ADD`, a configured
    /// member); false for `MEMBER ADD .. LEARNER`.
    pub auto_promote: bool,
}

/// The context of `MEMBER ADD id peer client [LEARNER]`: the addresses, the incarnation the
/// member was admitted as if it is a member already (a demotion), else 0 (invited: the leader
/// admits it under the incarnation its Hello names), and whether it is promoted on its own.
/// Addresses were checked by the caller; unparsable ones give an empty context (the change
/// then records nothing).
pub(super) fn invited(peer: &str, client: &str, incarnation: u128, auto_promote: bool) -> Vec<u8> {
    match (peer.parse(), client.parse()) {
        (Ok(peer), Ok(client)) => MemberRecord {
            peer,
            client,
            incarnation,
            auto_promote,
        }
        .encode(),
        _ => Vec::new(),
    }
}

/// Bytes that are not a record or a table this version wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// A cursor over bytes from outside: every read checks what is left.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.b.len() - self.at < n {
            return err(format!("truncated at the {what} (byte {})", self.at));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(
            self.take(2, what)?.try_into().expect("2"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn u128(&mut self, what: &str) -> Result<u128, DecodeError> {
        Ok(u128::from_be_bytes(
            self.take(16, what)?.try_into().expect("16"),
        ))
    }
    fn addr(&mut self, what: &str) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8(what)? {
            4 => {
                let b: [u8; 4] = self.take(4, what)?.try_into().expect("4");
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self.take(16, what)?.try_into().expect("16");
                IpAddr::V6(Ipv6Addr::from(b))
            }
            f => return err(format!("{what}: address family {f}, expected 4 or 6")),
        };
        Ok(SocketAddr::new(ip, self.u16(what)?))
    }
    fn node(&mut self, what: &str) -> Result<NodeId, DecodeError> {
        match self.u64(what)? {
            0 => err(format!("{what}: node id 0")),
            n => Ok(NodeId(n)),
        }
    }
    fn finish(&self, what: &str) -> Result<(), DecodeError> {
        match self.b.len() - self.at {
            0 => Ok(()),
            n => err(format!("{n} bytes after the {what}")),
        }
    }
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

impl MemberRecord {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&RECORD_MAGIC);
        out.push(VERSION);
        out.push(if self.auto_promote {
            FLAG_AUTO_PROMOTE
        } else {
            0
        });
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        put_addr(out, &self.peer);
        put_addr(out, &self.client);
    }

    /// The record as a ConfChange context.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_SIZE_MAX);
        self.put(&mut out);
        out
    }

    fn read(r: &mut Reader<'_>) -> Result<MemberRecord, DecodeError> {
        if r.take(4, "record magic")? != RECORD_MAGIC {
            return err("bad record magic (not a kvraft member record)");
        }
        let version = r.u8("record version")?;
        if version != VERSION {
            return err(format!(
                "member record version {version}, expected {VERSION}"
            ));
        }
        let flags = r.u8("record flags")?;
        if flags & !FLAG_AUTO_PROMOTE != 0 {
            return err(format!("unknown member record flags {flags:#04x}"));
        }
        let incarnation = r.u128("incarnation")?;
        let peer = r.addr("peer address")?;
        let client = r.addr("client address")?;
        Ok(MemberRecord {
            peer,
            client,
            incarnation,
            auto_promote: flags & FLAG_AUTO_PROMOTE != 0,
        })
    }

    /// A ConfChange context: `None` when it is empty (a removal, or a promotion that keeps the
    /// record as it is).
    pub(super) fn decode(b: &[u8]) -> Result<Option<MemberRecord>, DecodeError> {
        if b.is_empty() {
            return Ok(None);
        }
        let mut r = Reader { b, at: 0 };
        let rec = MemberRecord::read(&mut r)?;
        r.finish("member record")?;
        Ok(Some(rec))
    }
}

/// Every member's record, and the members removed by `MEMBER REMOVE` (not to be re-admitted
/// from a config file until `MEMBER ADD` names them again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct MemberTable {
    members: BTreeMap<NodeId, MemberRecord>,
    /// Removed members and the incarnation each had (a removed node may still have to
    /// campaign until it learns its removal committed: raft/membership.rs).
    removed: BTreeMap<NodeId, u128>,
}

impl MemberTable {
    pub(super) fn get(&self, id: NodeId) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    pub(super) fn members(&self) -> &BTreeMap<NodeId, MemberRecord> {
        &self.members
    }

    pub(super) fn is_removed(&self, id: NodeId) -> bool {
        self.removed.contains_key(&id)
    }

    /// Records `rec` for `id` (an addition, or a new incarnation). Used for the founder's own
    /// record and by `apply`.
    pub(super) fn insert(&mut self, id: NodeId, rec: MemberRecord) {
        self.removed.remove(&id);
        self.members.insert(id, rec);
    }

    /// The change of one ConfChange entry. A context that does not decode leaves the record
    /// as it was (the entry still changes the configuration: the core reads only the op).
    pub(super) fn apply(&mut self, cc: &ConfChange) {
        match cc.op {
            ConfChangeOp::Remove => {
                let inc = self.members.remove(&cc.node).map_or(0, |r| r.incarnation);
                self.removed.insert(cc.node, inc);
                while self.removed.len() > REMOVED_MARKS_MAX {
                    self.removed.pop_first();
                }
            }
            ConfChangeOp::AddLearner | ConfChangeOp::AddVoter => {
                match MemberRecord::decode(&cc.context) {
                    Ok(Some(rec)) => self.insert(cc.node, rec),
                    Ok(None) => {}
                    Err(e) => log::error!("membership change of node {}: {e}", cc.node),
                }
            }
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        assert!(
            self.members.len() <= MEMBERS_MAX && self.removed.len() <= REMOVED_MARKS_MAX,
            "member table of {} members and {} removed",
            self.members.len(),
            self.removed.len()
        );
        let size = TABLE_HEADER_SIZE + self.members.len() * (8 + RECORD_SIZE_MAX);
        let mut out = Vec::with_capacity(size + 24 * self.removed.len());
        out.extend_from_slice(&TABLE_MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&(self.members.len() as u16).to_be_bytes());
        out.extend_from_slice(&(self.removed.len() as u16).to_be_bytes());
        for (id, rec) in &self.members {
            out.extend_from_slice(&id.0.to_be_bytes());
            rec.put(&mut out);
        }
        for (id, inc) in &self.removed {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&inc.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(b: &[u8]) -> Result<MemberTable, DecodeError> {
        let mut r = Reader { b, at: 0 };
        if r.take(4, "table magic")? != TABLE_MAGIC {
            return err("bad member table magic (not a kvraft member table)");
        }
        let version = r.u8("table version")?;
        if version != VERSION {
            return err(format!(
                "member table version {version}, expected {VERSION}"
            ));
        }
        let m = r.u16("member count")? as usize;
        let n = r.u16("removed count")? as usize;
        if m > MEMBERS_MAX || n > REMOVED_MARKS_MAX {
            return err(format!(
                "member table of {m} members and {n} removed, above {MEMBERS_MAX} / {REMOVED_MARKS_MAX}"
            ));
        }
        let mut t = MemberTable::default();
        let mut prev = NodeId(0);
        for _ in 0..m {
            let id = r.node("member id")?;
            if id <= prev {
                return err(format!("member {id} out of order"));
            }
            prev = id;
            t.members.insert(id, MemberRecord::read(&mut r)?);
        }
        prev = NodeId(0);
        for _ in 0..n {
            let id = r.node("removed id")?;
            if id <= prev || t.members.contains_key(&id) {
                return err(format!("removed node {id} out of order or a member"));
            }
            prev = id;
            t.removed.insert(id, r.u128("removed incarnation")?);
        }
        r.finish("member table")?;
        Ok(t)
    }
}

/// The member table as of the newest entry appended to this node's log (invariant 1): the
/// addresses to dial and the incarnations to count come from it as soon as an entry is
/// appended, not when it is applied (thesis §4.1: a server uses the latest configuration in
/// its log).
#[derive(Debug)]
pub(super) struct MemberLog {
    /// The table as of `applied_index`.
    applied: MemberTable,
    applied_index: LogIndex,
    /// ConfChange entries after `applied_index`, in log order.
    tail: Vec<(LogIndex, ConfChange)>,
    newest: MemberTable,
    /// Bumped whenever `newest` may have changed (invariant 1); never moves backwards.
    generation: u64,
}

impl MemberLog {
    /// `table` as of `index` (a snapshot's, or the empty one at 0), then the `entries` that
    /// follow it in the log.
    pub(super) fn new(table: MemberTable, index: LogIndex, entries: &[Entry]) -> MemberLog {
        let mut log = MemberLog {
            newest: table.clone(),
            applied: table,
            applied_index: index,
            tail: Vec::new(),
            generation: 0,
        };
        log.appended(entries);
        log
    }

    /// Moves on whenever `newest` may have changed (invariant 1).
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn newest(&self) -> &MemberTable {
        &self.newest
    }

    pub(super) fn applied(&self) -> &MemberTable {
        &self.applied
    }

    /// `entries` were appended (contiguous); an append at index i replaced the log from i on.
    pub(super) fn appended(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let cut = self.tail.iter().position(|(i, _)| *i >= first.index);
        let truncated = cut.is_some();
        if let Some(cut) = cut {
            self.tail.truncate(cut);
        }
        let mut changed = Vec::new();
        for e in entries.iter().filter(|e| e.index > self.applied_index) {
            if e.kind == EntryKind::ConfChange {
                if let Ok(cc) = ConfChange::decode(&e.data) {
                    changed.push((e.index, cc));
                }
            }
        }
        if truncated || !changed.is_empty() {
            self.generation += 1;
        }
        if truncated {
            self.newest = self.applied.clone();
            for (_, cc) in &self.tail {
                self.newest.apply(cc);
            }
        }
        for (_, cc) in &changed {
            self.newest.apply(cc);
        }
        self.tail.extend(changed);
    }

    /// Entries up to `index` are applied.
    pub(super) fn applied_to(&mut self, index: LogIndex) {
        while self.tail.first().is_some_and(|(i, _)| *i <= index) {
            let (_, cc) = self.tail.remove(0);
            self.applied.apply(&cc);
        }
        self.applied_index = self.applied_index.max(index);
    }

    /// A snapshot at `index` with `table` replaced the state (and the log up to it).
    pub(super) fn installed(&mut self, table: MemberTable, index: LogIndex) {
        self.tail.retain(|(i, _)| *i > index);
        self.applied = table;
        self.applied_index = index;
        self.generation += 1;
        self.newest = self.applied.clone();
        for (_, cc) in &self.tail {
            self.newest.apply(cc);
        }
    }

    pub(super) fn check_invariants(&self) {
        let mut t = self.applied.clone();
        for (i, cc) in &self.tail {
            assert!(
                *i > self.applied_index,
                "tail entry {i} at or before applied"
            );
            t.apply(cc);
        }
        assert_eq!(
            t, self.newest,
            "newest member table differs from applied + tail"
        );
    }
}

/// The voting gate: this node may vote and campaign only while the newest member table
/// records its own incarnation (the core adds: campaign only as a voter). Not "only while a
/// voter": a member promoted in a leader's log it has not received yet must still grant that
/// leader its vote, as any Raft voter does, or neither could ever win (found by the
/// simulator, seed 7: voters {1, 3} in node 1's log, node 3 a learner in its own). Safe: its
/// record names this incarnation only once its log holds the change that admitted it, and
/// candidates count its answer only where the record names it (`counts`).
///
/// A member removed as this incarnation still may: it is its true self, and it may hold the
/// only log that can elect a leader until its removal commits (simulator seed 413).
pub(super) fn may_vote(table: &MemberTable, me: NodeId, incarnation: u128) -> bool {
    match table.get(me) {
        Some(r) => r.incarnation == incarnation,
        None => table.removed.get(&me) == Some(&incarnation),
    }
}

/// Whether a response from `from`, on a connection whose Hello named `incarnation`, may count:
/// only when the newest table records that incarnation for it.
pub(super) fn counts(table: &MemberTable, from: NodeId, incarnation: u128) -> bool {
    table
        .get(from)
        .is_some_and(|r| r.incarnation == incarnation)
}

/// What a leader knows when it decides whom to admit next.
pub(super) struct AdmissionView<'a> {
    pub me: NodeId,
    /// The configuration in force.
    pub conf: &'a ConfState,
    pub table: &'a MemberTable,
    /// The members this node's config file lists (id, peer, client).
    pub configured: &'a [(NodeId, SocketAddr, SocketAddr)],
    /// Connected peers and the incarnation their Hello named.
    pub connected: &'a BTreeMap<NodeId, u128>,
    /// The leader's match index of each member.
    pub matched: &'a BTreeMap<NodeId, LogIndex>,
    pub commit: LogIndex,
}

/// The next membership change a leader proposes to admit a member, with its log line: a
/// member (configured here and not removed, or already in the table) connected as an
/// incarnation the table does not record becomes a learner of that incarnation (C1); a
/// learner to auto-promote, connected as its recorded incarnation and holding the log up to
/// the commit index, becomes a voter (C2). Lowest id first; `None` when nothing is to do.
pub(super) fn next_admission(v: &AdmissionView<'_>) -> Option<(ConfChange, String)> {
    for (&id, &inc) in v.connected {
        if id == v.me || inc == 0 {
            continue;
        }
        let rec = v.table.get(id);
        let configured = v.configured.iter().find(|m| m.0 == id);
        let addrs = match (rec, configured) {
            (Some(r), _) => (r.peer, r.client),
            (None, Some(&(_, p, c))) if !v.table.is_removed(id) => (p, c),
            _ => continue,
        };
        match rec {
            Some(r) if r.incarnation == inc => {
                let caught_up = v.matched.get(&id).is_some_and(|&m| m >= v.commit);
                if r.auto_promote && v.conf.is_learner(id) && caught_up {
                    let cc = ConfChange {
                        op: ConfChangeOp::AddVoter,
                        node: id,
                        context: r.encode(),
                    };
                    return Some((cc, format!("node {id} caught up: promoting it to voter")));
                }
            }
            _ => {
                let known = rec.is_some_and(|r| r.incarnation != 0);
                let rec = MemberRecord {
                    peer: addrs.0,
                    client: addrs.1,
                    incarnation: inc,
                    auto_promote: rec.is_none_or(|r| r.auto_promote) || v.conf.is_voter(id),
                };
                let why = if known {
                    format!("node {id} came back as a new incarnation (lost its storage): re-admitting it as a learner")
                } else {
                    format!("admitting node {id} as a learner")
                };
                let cc = ConfChange {
                    op: ConfChangeOp::AddLearner,
                    node: id,
                    context: rec.encode(),
                };
                return Some((cc, why));
            }
        }
    }
    None
}

/// What the node does with a peer's Hello, as far as identity goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HelloVerdict {
    Accept,
    /// We have no cluster id yet and a configured member has one: adopt it (persisting it
    /// before anything is acknowledged), then accept.
    Adopt(u128),
    Refuse(String),
}

/// This node's identity, the member table from its log, and the incarnation each peer
/// connection announced: everything the node consults to decide whom to count.
#[derive(Debug)]
pub(super) struct Identities {
    /// The cluster uid (0 until this node has one) and this node's incarnation.
    cluster: u128,
    incarnation: u128,
    log: MemberLog,
    /// Each open peer connection (slab key) whose Hello arrived: the peer, the incarnation
    /// its Hello named, and the order of the Hellos (the newest tells a peer's current
    /// incarnation).
    heard: BTreeMap<usize, (NodeId, u128, u64)>,
    hellos: u64,
    /// The members this node's config file lists (id, peer, client).
    configured: Vec<(NodeId, SocketAddr, SocketAddr)>,
    /// Recovery found damage in the log; cleared once this incarnation is admitted.
    damaged: bool,
    /// Configured peers whose newest Hello named another cluster id than ours (both known),
    /// with that id: when they are a majority of the configured members, this storage is not
    /// this cluster's (`foreign_majority`).
    foreign: BTreeMap<NodeId, u128>,
}

impl Identities {
    pub(super) fn new(
        cluster: u128,
        incarnation: u128,
        log: MemberLog,
        configured: Vec<(NodeId, SocketAddr, SocketAddr)>,
    ) -> Identities {
        assert!(incarnation != 0, "incarnation 0 is reserved");
        Identities {
            cluster,
            incarnation,
            log,
            heard: BTreeMap::new(),
            hellos: 0,
            configured,
            damaged: false,
            foreign: BTreeMap::new(),
        }
    }

    pub(super) fn set_damaged(&mut self, damaged: bool) {
        self.damaged = damaged;
    }

    pub(super) fn damaged(&self) -> bool {
        self.damaged
    }

    pub(super) fn cluster(&self) -> u128 {
        self.cluster
    }

    pub(super) fn incarnation(&self) -> u128 {
        self.incarnation
    }

    pub(super) fn log(&self) -> &MemberLog {
        &self.log
    }

    pub(super) fn log_mut(&mut self) -> &mut MemberLog {
        &mut self.log
    }

    pub(super) fn is_configured(&self, id: NodeId) -> bool {
        self.configured.iter().any(|m| m.0 == id)
    }

    /// Judge a Hello's cluster uid: 0 (the peer has none yet) is accepted; another id than
    /// ours is refused naming both; a configured member's id is adopted while we have none.
    pub(super) fn judge_hello(&self, from: NodeId, cluster: u128) -> HelloVerdict {
        if cluster == 0 || cluster == self.cluster {
            return HelloVerdict::Accept;
        }
        if self.cluster == 0 && self.is_configured(from) {
            return HelloVerdict::Adopt(cluster);
        }
        HelloVerdict::Refuse(format!(
            "Hello from node {from} of another cluster (cluster id {cluster:032x}, ours {})",
            if self.cluster == 0 {
                "not yet known; node {from} is not in our config file".to_string()
            } else {
                format!("{:032x}", self.cluster)
            }
        ))
    }

    /// The cluster id was adopted (and persisted) by the node.
    pub(super) fn adopted(&mut self, cluster: u128) {
        assert!(
            self.cluster == 0 && cluster != 0,
            "adopting {cluster:x} over {:x}",
            self.cluster
        );
        self.cluster = cluster;
    }

    /// Peer `from`'s Hello named `cluster`, which `judge_hello` refused.
    pub(super) fn refused(&mut self, from: NodeId, cluster: u128) {
        if self.cluster != 0 && cluster != 0 && cluster != self.cluster && self.is_configured(from)
        {
            self.foreign.insert(from, cluster);
        }
    }

    /// When the configured peers whose Hello named another cluster are a majority of the
    /// configured members (not counting this node: two of three, three of five), what to tell
    /// the operator: this data directory belongs to another cluster than theirs. One such
    /// peer (itself misconfigured, or holding another cluster's directory) is not enough.
    pub(super) fn foreign_majority(&self, me: NodeId) -> Option<String> {
        let members = self.configured.len();
        let peers: Vec<&NodeId> = self.foreign.keys().filter(|&&id| id != me).collect();
        if peers.len() < members / 2 + 1 {
            return None;
        }
        let mut theirs: Vec<String> = self.foreign.values().map(|c| format!("{c:032x}")).collect();
        theirs.dedup();
        let names: Vec<String> = peers.iter().map(|id| id.to_string()).collect();
        Some(format!(
            "this data directory belongs to cluster {:032x}, but nodes {} ({} of the {members} \
             configured members) belong to cluster {}: it is another cluster's data directory \
             (or the config file lists another cluster's members). Stopping: check --config and \
             --data-dir; to make this node a member of the configured cluster, move its data \
             directory aside and start it again with an empty one (the leader re-admits it as \
             a new incarnation)",
            self.cluster,
            names.join(", "),
            peers.len(),
            theirs.join(", ")
        ))
    }

    /// Peer `from`'s connection `key` said Hello as `incarnation`.
    pub(super) fn heard(&mut self, from: NodeId, key: usize, incarnation: u128) {
        self.foreign.remove(&from);
        self.hellos += 1;
        self.heard.insert(key, (from, incarnation, self.hellos));
    }

    /// Connection `key` closed.
    pub(super) fn closed(&mut self, key: usize) {
        self.heard.remove(&key);
    }

    /// Whether a response from `from` that arrived on connection `key` counts: that
    /// connection's Hello named `from` and the incarnation the newest table records for it.
    pub(super) fn counts(&self, from: NodeId, key: usize) -> bool {
        match self.heard.get(&key) {
            Some(&(f, inc, _)) => f == from && counts(self.log.newest(), from, inc),
            None => false,
        }
    }

    /// Each connected peer's incarnation, as its newest Hello named it.
    fn connected(&self) -> BTreeMap<NodeId, u128> {
        let mut newest: BTreeMap<NodeId, (u64, u128)> = BTreeMap::new();
        for &(from, inc, seq) in self.heard.values() {
            let e = newest.entry(from).or_insert((seq, inc));
            if seq >= e.0 {
                *e = (seq, inc);
            }
        }
        newest.into_iter().map(|(id, (_, inc))| (id, inc)).collect()
    }

    /// The voting gate for this node.
    pub(super) fn may_vote(&self, me: NodeId) -> bool {
        may_vote(self.log.newest(), me, self.incarnation)
    }

    /// The leader's next admission step (see `next_admission`).
    pub(super) fn next_admission(
        &self,
        me: NodeId,
        conf: &ConfState,
        matched: &BTreeMap<NodeId, LogIndex>,
        commit: LogIndex,
    ) -> Option<(ConfChange, String)> {
        let connected = self.connected();
        next_admission(&AdmissionView {
            me,
            conf,
            table: self.log.newest(),
            configured: &self.configured,
            connected: &connected,
            matched,
            commit,
        })
    }

    /// Moves on whenever `address_table` may answer differently (`configured` is fixed).
    pub(super) fn address_generation(&self) -> u64 {
        self.log.generation()
    }

    /// The addresses to reach every member: the newest table's, then configured members
    /// not removed (they may be admitted), and this node's own from its config file.
    pub(super) fn address_table(&self, me: NodeId) -> BTreeMap<NodeId, (SocketAddr, SocketAddr)> {
        let table = self.log.newest();
        let mut out: BTreeMap<NodeId, (SocketAddr, SocketAddr)> = table
            .members()
            .iter()
            .map(|(&id, r)| (id, (r.peer, r.client)))
            .collect();
        for &(id, peer, client) in &self.configured {
            if id == me {
                out.insert(id, (peer, client));
            } else if !table.is_removed(id) {
                out.entry(id).or_insert((peer, client));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Entry, Term};

    fn rec(port: u16, incarnation: u128, auto_promote: bool) -> MemberRecord {
        MemberRecord {
            peer: format!("127.0.0.1:{port}").parse().unwrap(),
            client: format!("[::1]:{}", port + 1).parse().unwrap(),
            incarnation,
            auto_promote,
        }
    }

    fn cc(op: ConfChangeOp, node: u64, r: Option<&MemberRecord>) -> ConfChange {
        ConfChange {
            op,
            node: NodeId(node),
            context: r.map(MemberRecord::encode).unwrap_or_default(),
        }
    }

    fn entry(index: u64, c: &ConfChange) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(index),
            kind: EntryKind::ConfChange,
            data: c.encode().into(),
        }
    }

    #[test]
    fn records_round_trip_and_fit_a_context() {
        for r in [rec(7001, 0, true), rec(1, u128::MAX, false)] {
            let b = r.encode();
            assert!(b.len() <= RECORD_SIZE_MAX);
            assert_eq!(MemberRecord::decode(&b).unwrap(), Some(r));
        }
        assert_eq!(MemberRecord::decode(&[]).unwrap(), None);
    }

    /// `MEMBER ADD` of a current member (a demotion) keeps the incarnation it was admitted
    /// as; a new member (or one removed) stays invited.
    #[test]
    fn a_member_added_again_keeps_its_admitted_incarnation() {
        let kept = invited("127.0.0.1:7001", "[::1]:7002", 42, false);
        assert_eq!(
            MemberRecord::decode(&kept).unwrap(),
            Some(rec(7001, 42, false))
        );
        let new = invited("127.0.0.1:7001", "[::1]:7002", 0, true);
        assert_eq!(
            MemberRecord::decode(&new).unwrap(),
            Some(rec(7001, 0, true))
        );
        assert!(invited("nowhere", "[::1]:7002", 42, true).is_empty());
    }

    #[test]
    fn every_truncation_extension_and_hostile_byte_of_a_record_is_an_error_not_a_panic() {
        let good = rec(7001, 42, true).encode();
        for n in 1..good.len() {
            assert!(MemberRecord::decode(&good[..n]).is_err(), "{n} bytes");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(MemberRecord::decode(&long).unwrap_err().0.contains("after"));
        for (at, v, what) in [
            (0, b'X', "magic"),
            (4, 2, "version"),
            (5, 2, "flags"),
            (22, 5, "family"),
        ] {
            let mut b = good.clone();
            b[at] = v;
            let e = MemberRecord::decode(&b).unwrap_err();
            assert!(e.0.contains(what), "{what}: {e}");
        }
        // Every single byte value at every offset: an error or a record, never a panic.
        for at in 0..good.len() {
            for v in 0..=255u8 {
                let mut b = good.clone();
                b[at] = v;
                let _ = MemberRecord::decode(&b);
            }
        }
    }

    fn table() -> MemberTable {
        let mut t = MemberTable::default();
        t.apply(&cc(ConfChangeOp::AddVoter, 1, Some(&rec(7001, 11, true))));
        t.apply(&cc(
            ConfChangeOp::AddLearner,
            3,
            Some(&rec(7003, 33, false)),
        ));
        t.apply(&cc(ConfChangeOp::AddVoter, 2, Some(&rec(7002, 22, true))));
        t.apply(&cc(ConfChangeOp::Remove, 2, None));
        t.apply(&cc(ConfChangeOp::Remove, 9, None));
        t
    }

    #[test]
    fn a_table_applies_changes_and_round_trips() {
        let t = table();
        assert_eq!(
            t.members().keys().copied().collect::<Vec<_>>(),
            [NodeId(1), NodeId(3)]
        );
        assert!(t.is_removed(NodeId(2)) && t.is_removed(NodeId(9)));
        assert_eq!(MemberTable::decode(&t.encode()).unwrap(), t);
        // A promotion without a context keeps the record; MEMBER ADD clears the removed mark.
        let mut u = t.clone();
        u.apply(&cc(ConfChangeOp::AddVoter, 3, None));
        assert_eq!(u.get(NodeId(3)), t.get(NodeId(3)));
        u.apply(&cc(ConfChangeOp::AddLearner, 2, Some(&rec(7002, 0, true))));
        assert!(!u.is_removed(NodeId(2)));
        assert_eq!(MemberTable::decode(&u.encode()).unwrap(), u);
        assert_eq!(
            MemberTable::decode(&MemberTable::default().encode()).unwrap(),
            MemberTable::default()
        );
    }

    #[test]
    fn removed_marks_are_bounded() {
        let mut t = MemberTable::default();
        for n in 1..=(REMOVED_MARKS_MAX as u64 + 10) {
            t.apply(&cc(ConfChangeOp::Remove, n, None));
        }
        assert_eq!(t.removed.len(), REMOVED_MARKS_MAX);
        assert!(t.is_removed(NodeId(REMOVED_MARKS_MAX as u64 + 10)) && !t.is_removed(NodeId(1)));
        assert_eq!(MemberTable::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn hostile_tables_are_errors_not_panics() {
        let good = table().encode();
        for n in 0..good.len() {
            assert!(MemberTable::decode(&good[..n]).is_err(), "{n} bytes");
        }
        let mut b = good.clone();
        b[5..7].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(MemberTable::decode(&b).unwrap_err().0.contains("above"));
        // Old text format: refused with a reason.
        let e = MemberTable::decode(b"1 127.0.0.1:7001 127.0.0.1:6001\n").unwrap_err();
        assert!(e.0.contains("magic"), "{e}");
        // Members out of order, or a removed id that is a member.
        let mut t = MemberTable::default();
        t.insert(NodeId(1), rec(1, 1, true));
        t.insert(NodeId(2), rec(2, 2, true));
        let mut b = t.encode();
        let second = TABLE_HEADER_SIZE + 8 + rec(1, 1, true).encode().len();
        b[second..second + 8].copy_from_slice(&1u64.to_be_bytes());
        assert!(MemberTable::decode(&b).unwrap_err().0.contains("order"));
        let mut prng = crate::prng::Prng::new(13);
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..prng.range(1, 4) {
                let at = prng.range(0, b.len() as u64) as usize;
                b[at] = prng.range(0, 256) as u8;
            }
            let _ = MemberTable::decode(&b);
        }
    }

    #[test]
    fn the_member_log_follows_appends_truncations_applies_and_snapshots() {
        let a = cc(ConfChangeOp::AddVoter, 1, Some(&rec(1, 1, true)));
        let b = cc(ConfChangeOp::AddLearner, 2, Some(&rec(2, 2, true)));
        let c = cc(ConfChangeOp::AddLearner, 2, Some(&rec(2, 5, true)));
        let mut log = MemberLog::new(MemberTable::default(), LogIndex(0), &[entry(1, &a)]);
        assert_eq!(log.newest().get(NodeId(1)).unwrap().incarnation, 1);
        log.appended(&[entry(2, &b)]);
        assert_eq!(log.newest().get(NodeId(2)).unwrap().incarnation, 2);
        log.check_invariants();
        // An append at 2 replaces entry 2: its change is forgotten, the new one counts.
        log.appended(&[entry(2, &c)]);
        assert_eq!(log.newest().get(NodeId(2)).unwrap().incarnation, 5);
        log.check_invariants();
        log.appended(&[Entry {
            term: Term(2),
            index: LogIndex(2),
            kind: EntryKind::Noop,
            data: vec![].into(),
        }]);
        assert!(log.newest().get(NodeId(2)).is_none());
        log.applied_to(LogIndex(2));
        assert_eq!(log.applied(), log.newest());
        log.check_invariants();
        log.appended(&[entry(3, &b)]);
        let mut snap = MemberTable::default();
        snap.insert(NodeId(7), rec(7, 7, true));
        log.installed(snap.clone(), LogIndex(3));
        assert_eq!(log.newest(), &snap);
        log.check_invariants();
    }

    #[test]
    fn the_generation_moves_whenever_the_newest_table_may_change_and_only_then() {
        let a = cc(ConfChangeOp::AddVoter, 1, Some(&rec(1, 1, true)));
        let b = cc(ConfChangeOp::AddLearner, 2, Some(&rec(2, 2, true)));
        let noop = |index| Entry {
            term: Term(2),
            index: LogIndex(index),
            kind: EntryKind::Noop,
            data: vec![].into(),
        };
        let mut log = MemberLog::new(MemberTable::default(), LogIndex(0), &[entry(1, &a)]);
        let mut seen = log.generation();
        let mut moved = |log: &MemberLog, expect: bool, what: &str| {
            let g = log.generation();
            assert!(
                g >= seen,
                "{what}: the generation went back from {seen} to {g}"
            );
            assert_eq!(g != seen, expect, "{what}: generation {seen} -> {g}");
            seen = g;
        };
        // Ordinary entries and applies leave the table, and the generation, alone.
        log.appended(&[noop(2), noop(3)]);
        moved(&log, false, "noops appended");
        log.applied_to(LogIndex(3));
        moved(&log, false, "applied");
        log.appended(&[entry(4, &b)]);
        moved(&log, true, "a change appended");
        log.appended(&[noop(5)]);
        moved(&log, false, "a noop after it");
        // Overwriting the change forgets it: the table changes back.
        log.appended(&[noop(4)]);
        moved(&log, true, "the change overwritten");
        assert!(log.newest().get(NodeId(2)).is_none());
        log.installed(MemberTable::default(), LogIndex(9));
        moved(&log, true, "a snapshot installed");
        log.check_invariants();
    }

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState::new(
            voters.iter().map(|&v| NodeId(v)).collect(),
            learners.iter().map(|&v| NodeId(v)).collect(),
        )
    }

    #[test]
    fn the_voting_gate_and_counting_need_the_recorded_incarnation() {
        let mut t = MemberTable::default();
        t.insert(NodeId(1), rec(1, 11, true));
        t.insert(NodeId(2), rec(2, 22, true));
        assert!(may_vote(&t, NodeId(1), 11));
        assert!(!may_vote(&t, NodeId(1), 12), "another incarnation");
        assert!(
            may_vote(&t, NodeId(2), 22),
            "a learner of its incarnation grants votes"
        );
        assert!(!may_vote(&t, NodeId(3), 0), "no record");
        assert!(
            counts(&t, NodeId(2), 22) && !counts(&t, NodeId(2), 23) && !counts(&t, NodeId(3), 1)
        );
        t.apply(&cc(ConfChangeOp::Remove, 2, None));
        assert!(may_vote(&t, NodeId(2), 22), "removed as this incarnation");
        assert!(!may_vote(&t, NodeId(2), 23) && !counts(&t, NodeId(2), 22));
        assert_eq!(MemberTable::decode(&t.encode()).unwrap(), t);
    }

    #[test]
    fn another_cluster_is_fatal_only_from_a_majority_of_the_configured_members() {
        let p = |i: u64| -> SocketAddr { format!("127.0.0.1:{i}").parse().unwrap() };
        let configured: Vec<_> = (1..=5).map(|i| (NodeId(i), p(i), p(i + 100))).collect();
        let log = || MemberLog::new(MemberTable::default(), LogIndex(0), &[]);
        let mut ids = Identities::new(42, 7, log(), configured.clone());
        ids.refused(NodeId(2), 43);
        ids.refused(NodeId(3), 43);
        ids.refused(NodeId(9), 43); // not configured
        ids.refused(NodeId(4), 0); // no cluster id yet
        assert_eq!(ids.foreign_majority(NodeId(1)), None, "two of five");
        ids.refused(NodeId(4), 44);
        let why = ids.foreign_majority(NodeId(1)).expect("three of five");
        assert!(
            why.contains(&format!("{:032x}", 42u128))
                && why.contains(&format!("{:032x}", 43u128))
                && why.contains("nodes 2, 3, 4")
                && why.contains("move its data directory aside"),
            "{why}"
        );
        ids.heard(NodeId(3), 1, 5);
        assert_eq!(
            ids.foreign_majority(NodeId(1)),
            None,
            "node 3 said Hello as ours"
        );
        // Without a cluster id of its own (empty storage) a node adopts, never counts.
        let mut fresh = Identities::new(0, 7, log(), configured);
        for i in 2..=5 {
            fresh.refused(NodeId(i), 43);
        }
        assert_eq!(fresh.foreign_majority(NodeId(1)), None);
    }

    fn admit(
        conf: &ConfState,
        t: &MemberTable,
        connected: &[(u64, u128)],
        matched: &[(u64, u64)],
        commit: u64,
    ) -> Option<(ConfChange, String)> {
        let configured = [
            (NodeId(1), rec(1, 0, true).peer, rec(1, 0, true).client),
            (NodeId(2), rec(2, 0, true).peer, rec(2, 0, true).client),
        ];
        let connected = connected.iter().map(|&(i, n)| (NodeId(i), n)).collect();
        let matched = matched
            .iter()
            .map(|&(i, m)| (NodeId(i), LogIndex(m)))
            .collect();
        next_admission(&AdmissionView {
            me: NodeId(1),
            conf,
            table: t,
            configured: &configured,
            connected: &connected,
            matched: &matched,
            commit: LogIndex(commit),
        })
    }

    #[test]
    fn hellos_of_another_cluster_are_refused_and_a_new_node_adopts_a_configured_members_id() {
        let p = |n: u16| -> SocketAddr { format!("127.0.0.1:{n}").parse().unwrap() };
        let configured = vec![(NodeId(1), p(1), p(2)), (NodeId(2), p(3), p(4))];
        let fresh = Identities::new(
            0,
            7,
            MemberLog::new(MemberTable::default(), LogIndex(0), &[]),
            configured.clone(),
        );
        assert_eq!(fresh.judge_hello(NodeId(1), 0), HelloVerdict::Accept);
        assert_eq!(fresh.judge_hello(NodeId(1), 99), HelloVerdict::Adopt(99));
        assert!(matches!(
            fresh.judge_hello(NodeId(5), 99),
            HelloVerdict::Refuse(_)
        ));
        let mut t = MemberTable::default();
        t.insert(NodeId(1), rec(1, 7, true));
        t.insert(NodeId(2), rec(3, 8, true));
        t.apply(&cc(ConfChangeOp::Remove, 3, None));
        let mut ids = Identities::new(42, 7, MemberLog::new(t, LogIndex(0), &[]), configured);
        assert_eq!(ids.judge_hello(NodeId(2), 42), HelloVerdict::Accept);
        let HelloVerdict::Refuse(why) = ids.judge_hello(NodeId(2), 43) else {
            panic!()
        };
        assert!(
            why.contains("another cluster") && why.contains(&format!("{:032x}", 42u128)),
            "{why}"
        );
        // Responses count only on the connection whose Hello named the recorded incarnation.
        assert!(!ids.counts(NodeId(2), 5));
        ids.heard(NodeId(2), 5, 9);
        assert!(!ids.counts(NodeId(2), 5), "another incarnation");
        ids.heard(NodeId(2), 6, 8);
        assert!(
            ids.counts(NodeId(2), 6) && !ids.counts(NodeId(2), 5),
            "an older connection"
        );
        assert!(!ids.counts(NodeId(1), 6), "another node's connection");
        assert_eq!(ids.connected()[&NodeId(2)], 8, "the newest Hello");
        ids.closed(5);
        assert!(ids.counts(NodeId(2), 6));
        ids.closed(6);
        assert!(!ids.counts(NodeId(2), 6));
        assert!(ids.may_vote(NodeId(1)) && !ids.may_vote(NodeId(3)));
        let addrs = ids.address_table(NodeId(1));
        assert_eq!(
            addrs[&NodeId(1)],
            (p(1), p(2)),
            "our own from the config file"
        );
        assert_eq!(
            addrs[&NodeId(2)].0,
            rec(3, 8, true).peer,
            "the log's record wins"
        );
    }

    #[test]
    fn a_leader_admits_configured_and_returning_members_as_learners_then_promotes_them() {
        let mut t = MemberTable::default();
        t.insert(NodeId(1), rec(1, 11, true));
        // A configured member, never seen: a learner of its incarnation, auto-promoted.
        let (c1, why) = admit(&conf(&[1], &[]), &t, &[(2, 22)], &[], 5).unwrap();
        assert_eq!((c1.op, c1.node), (ConfChangeOp::AddLearner, NodeId(2)));
        assert_eq!(
            MemberRecord::decode(&c1.context).unwrap(),
            Some(rec(2, 22, true))
        );
        assert!(why.starts_with("admitting node 2"), "{why}");
        t.apply(&c1);
        // Not caught up: nothing; caught up: promoted with the same record.
        assert!(admit(&conf(&[1], &[2]), &t, &[(2, 22)], &[(2, 4)], 5).is_none());
        let (c2, _) = admit(&conf(&[1], &[2]), &t, &[(2, 22)], &[(2, 5)], 5).unwrap();
        assert_eq!(
            (c2.op, c2.node, &c2.context),
            (ConfChangeOp::AddVoter, NodeId(2), &c1.context)
        );
        t.apply(&c2);
        assert!(admit(&conf(&[1, 2], &[]), &t, &[(2, 22)], &[(2, 9)], 5).is_none());
        // It lost its disk: re-admitted as a learner of the new incarnation, with a log line.
        let (c3, why) = admit(&conf(&[1, 2], &[]), &t, &[(2, 23)], &[(2, 9)], 5).unwrap();
        assert_eq!((c3.op, c3.node), (ConfChangeOp::AddLearner, NodeId(2)));
        assert_eq!(
            MemberRecord::decode(&c3.context)
                .unwrap()
                .unwrap()
                .incarnation,
            23
        );
        assert!(
            why.contains("came back as a new incarnation (lost its storage)"),
            "{why}"
        );
        // Unknown (neither configured nor recorded), removed, or no incarnation: nothing.
        assert!(admit(&conf(&[1], &[]), &t, &[(5, 55)], &[], 5).is_none());
        assert!(admit(&conf(&[1], &[]), &t, &[(2, 0)], &[], 5).is_none());
        t.apply(&cc(ConfChangeOp::Remove, 2, None));
        assert!(admit(&conf(&[1], &[]), &t, &[(2, 24)], &[], 5).is_none());
        // A manual learner (MEMBER ADD .. LEARNER) is admitted but never promoted on its own.
        t.apply(&cc(ConfChangeOp::AddLearner, 3, Some(&rec(3, 0, false))));
        let (c4, why) = admit(&conf(&[1], &[3]), &t, &[(3, 33)], &[], 5).unwrap();
        assert!(why.starts_with("admitting node 3"), "{why}");
        assert_eq!(
            MemberRecord::decode(&c4.context).unwrap(),
            Some(rec(3, 33, false))
        );
        t.apply(&c4);
        assert!(admit(&conf(&[1], &[3]), &t, &[(3, 33)], &[(3, 9)], 5).is_none());
    }
}
