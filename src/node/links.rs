//! `Peers`: the address table and the links to other nodes — the members' addresses (as the
//! config file, a snapshot or a membership change gave them), the addresses of members since
//! removed (to reach one that still leads), and one `PeerLink` per node we talk to: where to
//! dial it, which connection we share with it, the dial backoff, and the snapshot stream to
//! it.
//!
//! What is sent and how connections are made lives in `peers.rs`; this part keeps the table
//! and the links consistent with each other and with `Connections`.
//!
//! Invariants (checked by `check_invariants`, given the node's id and its connections):
//! 1. Every member other than this node has a link, dialing the member's peer address; no
//!    link is to this node.
//! 2. A link's connection is open and is a peer connection of that very node (dialed to it,
//!    or accepted from it after its Hello).
//! 3. A link's dial backoff lies within `DIAL_BACKOFF_MIN_MS..=DIAL_BACKOFF_MAX_MS`.
//! 4. While `members_generation` is the member log's generation, `members` is the address
//!    table that log gives (`refresh_membership` rebuilds it only when the generation moved;
//!    `Node::check_invariants` compares the two).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::connections::{ConnKind, Connections};
use super::snapshot::{ChunkSource, SnapshotSender};
use crate::raft::NodeId;
use crate::timer::TimerHandle;

/// Reconnect backoff bounds for peers. Invariant 3.
const DIAL_BACKOFF_MIN_MS: u64 = 20;
const DIAL_BACKOFF_MAX_MS: u64 = 1000;

/// Member addresses, as the config file or a membership change gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MemberAddrs {
    pub(super) peer: SocketAddr,
    pub(super) client: SocketAddr,
}

/// A peer, and the one connection we share with it.
pub(super) struct PeerLink<F: ChunkSource> {
    /// Where to dial it (used only on the dialing side: the lower id). Invariant 1.
    pub(super) addr: SocketAddr,
    /// The slab key of the connection (dialed by us or accepted), when one exists.
    /// Invariant 2.
    pub(super) key: Option<usize>,
    /// Invariant 3.
    backoff_ms: u64,
    pub(super) dial_timer: Option<TimerHandle>,
    /// The core was told the peer is unreachable since the last connection broke.
    pub(super) reported_unreachable: bool,
    /// A snapshot being streamed to this peer.
    pub(super) sender: Option<SnapshotSender<F>>,
    /// Opening a snapshot for this peer failed; not before this time again.
    pub(super) snapshot_retry_at: Option<Instant>,
    /// When the snapshot stream last started or heard an ack.
    pub(super) snapshot_heard_at: Instant,
    /// Since when there is no connection (or when we last dialed as the higher id).
    pub(super) down_since: Instant,
}

impl<F: ChunkSource> PeerLink<F> {
    fn new(addr: SocketAddr, now: Instant) -> PeerLink<F> {
        PeerLink {
            addr,
            key: None,
            backoff_ms: DIAL_BACKOFF_MIN_MS,
            dial_timer: None,
            reported_unreachable: false,
            sender: None,
            snapshot_retry_at: None,
            snapshot_heard_at: now,
            down_since: now,
        }
    }

    /// How long to wait before the next dial; each call doubles the wait, up to the maximum.
    pub(super) fn next_backoff_ms(&mut self) -> u64 {
        let ms = self.backoff_ms;
        self.backoff_ms = (self.backoff_ms * 2).min(DIAL_BACKOFF_MAX_MS);
        ms
    }

    /// The peer answered: the next dial, if any, waits the least.
    pub(super) fn reset_backoff(&mut self) {
        self.backoff_ms = DIAL_BACKOFF_MIN_MS;
    }
}

pub(super) struct Peers<F: ChunkSource> {
    /// Invariant 1.
    members: BTreeMap<NodeId, MemberAddrs>,
    /// Addresses of members removed from `members` (to reach one that still leads).
    retired: BTreeMap<NodeId, MemberAddrs>,
    links: BTreeMap<NodeId, PeerLink<F>>,
    /// The member log generation (`Identities::address_generation`) `members` was last
    /// brought up to date with; `None` before the first time. Invariant 4.
    members_generation: Option<u64>,
}

impl<F: ChunkSource> Peers<F> {
    pub(super) fn new() -> Peers<F> {
        Peers {
            members: BTreeMap::new(),
            retired: BTreeMap::new(),
            links: BTreeMap::new(),
            members_generation: None,
        }
    }

    /// The member log generation `members` is up to date with (invariant 4).
    pub(super) fn members_generation(&self) -> Option<u64> {
        self.members_generation
    }

    /// `members` is now up to date with the member log's `generation`.
    pub(super) fn set_members_generation(&mut self, generation: u64) {
        self.members_generation = Some(generation);
    }

    pub(super) fn members(&self) -> &BTreeMap<NodeId, MemberAddrs> {
        &self.members
    }

    pub(super) fn member(&self, id: NodeId) -> Option<&MemberAddrs> {
        self.members.get(&id)
    }

    /// The addresses of a node removed from the member table.
    pub(super) fn retired(&self, id: NodeId) -> Option<&MemberAddrs> {
        self.retired.get(&id)
    }

    /// Remember the addresses of member `id`, about to leave the table.
    pub(super) fn retire(&mut self, id: NodeId) {
        if let Some(m) = self.members.get(&id) {
            self.retired.insert(id, m.clone());
        }
    }

    /// Adopt a new member table; the caller makes the links match it first (invariant 1).
    pub(super) fn replace_members(&mut self, members: BTreeMap<NodeId, MemberAddrs>) {
        self.members = members;
    }

    pub(super) fn link(&self, id: NodeId) -> Option<&PeerLink<F>> {
        self.links.get(&id)
    }

    pub(super) fn link_mut(&mut self, id: NodeId) -> Option<&mut PeerLink<F>> {
        self.links.get_mut(&id)
    }

    /// The connection shared with `id`, if there is one.
    pub(super) fn key_of(&self, id: NodeId) -> Option<usize> {
        self.links.get(&id).and_then(|l| l.key)
    }

    pub(super) fn links(&self) -> impl Iterator<Item = (NodeId, &PeerLink<F>)> {
        self.links.iter().map(|(&id, l)| (id, l))
    }

    pub(super) fn links_mut(&mut self) -> impl Iterator<Item = (NodeId, &mut PeerLink<F>)> {
        self.links.iter_mut().map(|(&id, l)| (id, l))
    }

    /// A new link to `id` at `addr`, with no connection yet.
    pub(super) fn add_link(&mut self, id: NodeId, addr: SocketAddr, now: Instant) {
        self.links.insert(id, PeerLink::new(addr, now));
    }

    /// The link to `id`, created at `addr` if there is none.
    pub(super) fn link_or_add(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        now: Instant,
    ) -> &mut PeerLink<F> {
        self.links
            .entry(id)
            .or_insert_with(|| PeerLink::new(addr, now))
    }

    pub(super) fn remove_link(&mut self, id: NodeId) -> Option<PeerLink<F>> {
        self.links.remove(&id)
    }

    pub(super) fn check_invariants<T: super::net::NetStream>(
        &self,
        me: NodeId,
        conns: &Connections<T>,
    ) {
        assert!(!self.links.contains_key(&me), "a link to this node ({me})");
        for (id, m) in &self.members {
            if *id == me {
                continue;
            }
            let addr = self.links.get(id).map(|l| l.addr);
            assert_eq!(addr, Some(m.peer), "member {id}: link address");
        }
        for (id, link) in &self.links {
            assert!(
                (DIAL_BACKOFF_MIN_MS..=DIAL_BACKOFF_MAX_MS).contains(&link.backoff_ms),
                "link to node {id}: backoff {} ms",
                link.backoff_ms
            );
            let Some(key) = link.key else {
                continue;
            };
            let owner = match conns.get(key).map(|c| &c.kind) {
                Some(ConnKind::PeerOut { to, .. }) => Some(*to),
                Some(ConnKind::PeerIn { from }) => *from,
                _ => None,
            };
            assert_eq!(
                owner,
                Some(*id),
                "link to node {id} names connection {key}, not that node's"
            );
        }
    }
}
