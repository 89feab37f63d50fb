//! `Pending`: the client requests this node has accepted and not yet answered — writes waiting
//! for their entry to apply, reads waiting for their ReadIndex round and then for apply, and
//! requests forwarded to the leader waiting for its reply — with the ids that name them.
//!
//! It owns only the bookkeeping: it never answers anyone itself. Every method that settles a
//! request hands back who is waiting (`ReplyTo`), and the node delivers the reply, so the
//! order of replies stays the node's business (`clients.rs`).
//!
//! Invariants (checked by `check_invariants`):
//! 1. No write waits at an index already applied: applying index `i` settles every waiter at
//!    or below `i` (the caller passes the applied index).
//! 2. At most `READS_PENDING_MAX` reads and `FORWARDS_PENDING_MAX` forwards are pending; the
//!    node checks `reads_full` / `forwards_full` before adding one.
//! 3. Every pending read's context is below `next_read_ctx`, every forward's id below
//!    `next_forward_id`: ids are handed out once and never reused while this node runs.
//! 4. A parked request (resendable, waiting for a leader to be known) is counted with the
//!    forwards against `FORWARDS_PENDING_MAX`, and keeps the deadline of its first forward,
//!    so re-forwarding never extends how long a client waits.
//! 5. A follower read (`add_follower_read`) is in `reads` with a deadline, and its context is
//!    in exactly one of: `unasked` (no read index asked for it yet), one batch of `asked`
//!    (a ReadIndexRequest to that leader is unanswered), `reads_ready` (the leader named its
//!    index). A context may linger in those lists after its read expired (`take_expired_reads`
//!    removes it from `reads` only); every user skips contexts `reads` no longer holds.
//!
//! # Follower reads (thesis §6.4)
//! A follower serves a plain read itself instead of forwarding it: the reads that arrive in
//! one turn are collected (`unasked`), and at the turn's end one ReadIndexRequest asks the
//! leader for an index covering them all (`asked`). The leader confirms its leadership with a
//! heartbeat round begun after the request arrived, and answers its commit index at arrival
//! (or its last index, if later: a pipeline's read follows the writes it forwarded before).
//! The follower serves each read once it has applied that index, in request order per
//! connection (the pipeline's slots). A batch whose leader goes away (another leader, a link
//! lost) is asked again of the next one; a refused batch fails (`-TRYAGAIN`); a read with no
//! answer by its deadline fails (`-TRYAGAIN`). It is never served without an index from a
//! leader, so a follower cut off from the leader never answers from its own state.
//!
//! # Forwards whose leader goes away
//! A follower forwards to the node it believes leads. When it learns that node no longer
//! does (another leader, a higher term, the peer link closed), `take_forwards_to` hands back
//! what was sent there: a write without a session can only be answered `-UNKNOWN` (it may
//! have reached the log), while a read or a session write (the state machine deduplicates
//! it) is `Resendable` and goes to the next leader, or is parked until one is known.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::ReplyTo;
use crate::auth::Rights;
use crate::limits;
use crate::raft::{LogIndex, NodeId, Term};

/// A write proposed by this node as leader, waiting for its entry to be applied.
struct Waiter {
    term: Term,
    to: ReplyTo,
}

/// A read waiting for its ReadIndex round, then for apply to reach its index.
pub(super) struct PendingRead {
    pub(super) to: ReplyTo,
    pub(super) query: Vec<u8>,
    /// The leader's last index when the read arrived: the read is served only after every
    /// write accepted before it is applied, so a pipeline reads its own writes (Redis's
    /// per-connection order), not merely a linearizable point before them.
    floor: LogIndex,
    /// A follower read: when it fails if still unserved (invariant 5); `None` on the leader.
    deadline: Option<Instant>,
    /// A follower read: the leader's clock its ReadIndexReply carried (TTLs expire as of it).
    pub(super) leader_now_ms: Option<u64>,
}

/// A ReadIndexRequest sent to `leader` for the follower reads `ctxs`.
struct Ask {
    leader: NodeId,
    ctxs: Vec<u64>,
}

/// Follower-read counters, for INFO.
#[derive(Default, Clone, Copy)]
pub(super) struct FollowerReadStats {
    /// Reads this follower served from its own state machine.
    pub(super) served_locally: u64,
    /// ReadIndexRequests this follower sent.
    pub(super) asked: u64,
    /// ReadIndexRequests this leader confirmed.
    pub(super) answered: u64,
}

/// A client request forwarded to the leader.
struct Forward {
    to: ReplyTo,
    deadline: Instant,
    /// The node it was sent to.
    leader: NodeId,
    kind: Forwarded,
    rights: Rights,
}

/// What a forwarded request may do if its leader goes away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Forwarded {
    /// A write without a session: it may have reached the log, so it is never sent again.
    Write,
    /// A read, or a write tagged with a session: sending it again is safe. `args` is the
    /// command as the client sent it.
    Resendable { args: Vec<Vec<u8>>, read: bool },
}

/// A forward taken back from a leader that went away, or a parked request.
pub(super) struct Orphan {
    pub(super) to: ReplyTo,
    pub(super) deadline: Instant,
    pub(super) kind: Forwarded,
    /// The client connection's rights when the request arrived: every forward of it
    /// carries them (`auth.rs` rule 4).
    pub(super) rights: Rights,
}

/// How a waiting write was settled by the apply of an index.
pub(super) enum Settled {
    /// Its own entry applied: answer with the entry's result.
    Applied(ReplyTo),
    /// Another entry took its index (leadership changed): it was not applied.
    Replaced(ReplyTo),
}

pub(super) struct Pending {
    /// Writes by the index of their entry, in index order, each index once. Invariant 1.
    /// A deque, not a map: a leader proposes in index order and apply settles from the
    /// front, so adding and settling are a push and a pop (issue 16: the map's node
    /// allocations and rebalancing were on every write's path).
    waiters: VecDeque<(LogIndex, Waiter)>,
    /// Reads by context. Invariants 2, 3.
    reads: BTreeMap<u64, PendingRead>,
    /// Reads whose round completed: (the index apply must reach, context), in arrival order.
    reads_ready: Vec<(LogIndex, u64)>,
    next_read_ctx: u64,
    /// Forwarded requests by id. Invariants 2, 3.
    forwards: BTreeMap<u64, Forward>,
    next_forward_id: u64,
    /// Resendable requests waiting for a leader to be known, oldest first. Invariant 4.
    parked: Vec<Orphan>,
    /// Nodes whose peer link closed since the last `take_lost_links` (at most one entry
    /// per node).
    lost_links: Vec<NodeId>,
    /// The leader as of the last `leader_changed` call.
    leader_seen: Option<NodeId>,
    /// Follower reads not yet asked for, in arrival order. Invariant 5.
    unasked: Vec<u64>,
    /// Follower reads by the id of the ReadIndexRequest that asked for them. Invariant 5.
    asked: BTreeMap<u64, Ask>,
    pub(super) follower_reads: FollowerReadStats,
}

impl Pending {
    /// `first_forward_id` comes from the caller, so ids differ across restarts of this node
    /// (a leader may still answer a forward sent before the restart).
    pub(super) fn new(first_forward_id: u64) -> Pending {
        Pending {
            waiters: VecDeque::new(),
            reads: BTreeMap::new(),
            reads_ready: Vec::new(),
            next_read_ctx: 1,
            forwards: BTreeMap::new(),
            next_forward_id: first_forward_id.max(1),
            parked: Vec::new(),
            lost_links: Vec::new(),
            leader_seen: None,
            unasked: Vec::new(),
            asked: BTreeMap::new(),
            follower_reads: FollowerReadStats::default(),
        }
    }

    /// (forwarded, reads, writes) pending, for INFO.
    pub(super) fn counts(&self) -> (usize, usize, usize) {
        let forwarded = self.forwards.len() + self.parked.len();
        (forwarded, self.reads.len(), self.waiters.len())
    }

    /// A write waits for the entry at `index`; one already waiting there is replaced (as a
    /// map's insert would: the index was proposed again, by a later term).
    pub(super) fn add_waiter(&mut self, index: LogIndex, term: Term, to: ReplyTo) {
        let w = Waiter { term, to };
        match self.waiters.back() {
            Some(&(last, _)) if last >= index => {
                match self.waiters.binary_search_by_key(&index, |&(i, _)| i) {
                    Ok(at) => self.waiters[at].1 = w,
                    Err(at) => self.waiters.insert(at, (index, w)),
                }
            }
            _ => self.waiters.push_back((index, w)),
        }
    }

    /// Every waiting write, oldest first (leadership was lost: none can be vouched for).
    pub(super) fn take_waiters(&mut self) -> Vec<ReplyTo> {
        self.waiters.drain(..).map(|(_, w)| w.to).collect()
    }

    /// The entry (`index`, `term`) applied: every waiter at or below its index is settled
    /// (invariant 1). Call until `None`; one waiter per call, oldest first, so settling
    /// allocates nothing (the write path's cost per write).
    pub(super) fn settle_next(&mut self, index: LogIndex, term: Term) -> Option<Settled> {
        self.waiters.front().filter(|&&(i, _)| i <= index)?;
        let (idx, w) = self.waiters.pop_front()?;
        Some(match idx == index && w.term == term {
            true => Settled::Applied(w.to),
            false => Settled::Replaced(w.to),
        })
    }

    /// Waiters at or below a snapshot's index: no apply will answer them here.
    pub(super) fn take_waiters_through(&mut self, index: LogIndex) -> Vec<ReplyTo> {
        let through = self.waiters.partition_point(|&(i, _)| i <= index);
        self.waiters.drain(..through).map(|(_, w)| w.to).collect()
    }

    pub(super) fn reads_full(&self) -> bool {
        self.reads.len() >= limits::READS_PENDING_MAX
    }

    /// The context the next read will use (pass it to the core, then `add_read` on success).
    pub(super) fn next_read_ctx(&self) -> u64 {
        self.next_read_ctx
    }

    pub(super) fn add_read(&mut self, ctx: u64, to: ReplyTo, query: Vec<u8>, floor: LogIndex) {
        assert_eq!(ctx, self.next_read_ctx, "read context out of turn");
        assert!(!self.reads_full(), "a read added beyond the limit");
        self.next_read_ctx += 1;
        let r = PendingRead {
            to,
            query,
            floor,
            deadline: None,
            leader_now_ms: None,
        };
        self.reads.insert(ctx, r);
    }

    /// A follower read: served here once a leader names its index (invariant 5).
    pub(super) fn add_follower_read(&mut self, to: ReplyTo, query: Vec<u8>, deadline: Instant) {
        assert!(!self.reads_full(), "a read added beyond the limit");
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let r = PendingRead {
            to,
            query,
            floor: LogIndex(0),
            deadline: Some(deadline),
            leader_now_ms: None,
        };
        self.reads.insert(ctx, r);
        self.unasked.push(ctx);
    }

    /// Whether follower reads wait to be asked for.
    pub(super) fn has_unasked(&self) -> bool {
        !self.unasked.is_empty()
    }

    /// The follower reads not yet asked for were asked of `leader` by request `id`.
    pub(super) fn asked(&mut self, id: u64, leader: NodeId) {
        let ctxs: Vec<u64> = std::mem::take(&mut self.unasked)
            .into_iter()
            .filter(|c| self.reads.contains_key(c))
            .collect();
        if !ctxs.is_empty() {
            self.asked.insert(id, Ask { leader, ctxs });
            self.follower_reads.asked += 1;
        }
    }

    /// The follower reads not yet asked for (this node leads now: they are failed).
    pub(super) fn take_unasked(&mut self) -> Vec<ReplyTo> {
        let ctxs = std::mem::take(&mut self.unasked);
        ctxs.into_iter().filter_map(|c| self.take_read(c)).collect()
    }

    /// Requests asked of any node but `leader` are to be asked again (of the leader now
    /// known, at the turn's end); with `None`, those asked of `gone` only.
    pub(super) fn ask_again(&mut self, keep: Option<NodeId>, gone: Option<NodeId>) {
        let ids: Vec<u64> = self
            .asked
            .iter()
            .filter(|(_, a)| Some(a.leader) != keep && gone.is_none_or(|g| g == a.leader))
            .map(|(&id, _)| id)
            .collect();
        let mut again: Vec<u64> = Vec::new();
        for id in ids {
            again.extend(self.asked.remove(&id).map(|a| a.ctxs).unwrap_or_default());
        }
        // Older reads first, so they keep their place in the next batch.
        again.append(&mut self.unasked);
        self.unasked = again;
    }

    /// The leader `from` answered request `id`. `Ok`: the reads of the batch wait for apply
    /// to reach `index` (served with the leader's clock `now_ms`); `Err`: who waited for the
    /// reads of a refused batch. An answer from a node not asked, or to a request no longer
    /// waiting, is ignored.
    pub(super) fn read_index_answered(
        &mut self,
        from: NodeId,
        id: u64,
        answer: Option<(LogIndex, u64)>,
    ) -> Vec<ReplyTo> {
        if self.asked.get(&id).is_none_or(|a| a.leader != from) {
            return Vec::new();
        }
        let ask = self.asked.remove(&id).expect("present");
        let Some((index, now_ms)) = answer else {
            return ask
                .ctxs
                .into_iter()
                .filter_map(|c| self.take_read(c))
                .collect();
        };
        for ctx in ask.ctxs {
            if let Some(r) = self.reads.get_mut(&ctx) {
                r.leader_now_ms = Some(now_ms);
                self.reads_ready.push((index, ctx));
            }
        }
        Vec::new()
    }

    /// Follower reads past their deadline, unserved: who waited for them.
    pub(super) fn take_expired_reads(&mut self, now: Instant) -> Vec<ReplyTo> {
        let late: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
            .map(|(&c, _)| c)
            .collect();
        if late.is_empty() {
            return Vec::new();
        }
        let tos = late.iter().filter_map(|&c| self.take_read(c)).collect();
        let reads = &self.reads;
        self.reads_ready.retain(|(_, c)| reads.contains_key(c));
        self.unasked.retain(|c| reads.contains_key(c));
        tos
    }

    /// The core confirmed read `ctx` at `index`: it waits for apply to reach that index (or
    /// its floor, whichever is later). A follower's ReadIndexRequest (`ReplyTo::ReadIndex`)
    /// waits for nothing here: it is handed back, with the index to answer, at once.
    pub(super) fn read_confirmed(
        &mut self,
        ctx: u64,
        index: LogIndex,
    ) -> Option<(ReplyTo, LogIndex)> {
        let r = self.reads.get(&ctx)?;
        let at = index.max(r.floor);
        if let ReplyTo::ReadIndex { .. } = r.to {
            self.follower_reads.answered += 1;
            return self.reads.remove(&ctx).map(|r| (r.to, at));
        }
        self.reads_ready.push((at, ctx));
        None
    }

    /// The confirmed reads that `applied` now covers, in the order they were confirmed.
    pub(super) fn take_due_reads(&mut self, applied: LogIndex) -> Vec<PendingRead> {
        if !self.reads_ready.iter().any(|&(index, _)| index <= applied) {
            return Vec::new();
        }
        let (due, later): (Vec<_>, Vec<_>) = self
            .reads_ready
            .drain(..)
            .partition(|&(index, _)| index <= applied);
        self.reads_ready = later;
        let due: Vec<PendingRead> = due
            .into_iter()
            .filter_map(|(_, ctx)| self.reads.remove(&ctx))
            .collect();
        let here = due.iter().filter(|r| r.deadline.is_some()).count() as u64;
        self.follower_reads.served_locally += here;
        due
    }

    /// The contexts of every confirmed read still waiting for apply (a leader stepping down
    /// cannot promise their index will be applied: it may be its own uncommitted entry).
    pub(super) fn take_confirmed_contexts(&mut self) -> Vec<u64> {
        self.reads_ready.drain(..).map(|(_, ctx)| ctx).collect()
    }

    /// Read `ctx` failed (the core could not confirm it); who waited for it, if anyone.
    pub(super) fn take_read(&mut self, ctx: u64) -> Option<ReplyTo> {
        self.reads.remove(&ctx).map(|r| r.to)
    }

    pub(super) fn forwards_full(&self) -> bool {
        self.forwards.len() + self.parked.len() >= limits::FORWARDS_PENDING_MAX
    }

    /// An id for a request about to be forwarded (used once, even if the send fails).
    pub(super) fn new_forward_id(&mut self) -> u64 {
        let id = self.next_forward_id;
        self.next_forward_id += 1;
        id
    }

    /// Record forward `id` of `o` (a new request, or an orphan sent on) to `leader`.
    pub(super) fn add_forward(&mut self, id: u64, leader: NodeId, o: Orphan) {
        assert!(id < self.next_forward_id, "forward id {id} not handed out");
        assert!(!self.forwards_full(), "a forward added beyond the limit");
        let f = Forward {
            to: o.to,
            deadline: o.deadline,
            leader,
            kind: o.kind,
            rights: o.rights,
        };
        self.forwards.insert(id, f);
    }

    /// The leader answered forward `id`; who waited for it, if anyone still does.
    pub(super) fn take_forward(&mut self, id: u64) -> Option<Orphan> {
        self.forwards.remove(&id).map(Forward::orphan)
    }

    /// Forwards sent to `leader` (which no longer leads, or whose link closed), oldest first.
    pub(super) fn take_forwards_to(&mut self, leader: NodeId) -> Vec<Orphan> {
        let ids: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.leader == leader)
            .map(|(&id, _)| id)
            .collect();
        let forwards = ids.into_iter().filter_map(|id| self.forwards.remove(&id));
        forwards.map(Forward::orphan).collect()
    }

    /// The nodes forwards wait on (to notice when one of them stops leading).
    pub(super) fn forward_leaders(&self) -> Vec<NodeId> {
        let mut leaders: Vec<NodeId> = self.forwards.values().map(|f| f.leader).collect();
        leaders.sort();
        leaders.dedup();
        leaders
    }

    /// Hold a resendable request until a leader is known (invariant 4: the caller took it
    /// from the forwards, so the count does not grow).
    pub(super) fn park(&mut self, o: Orphan) {
        assert!(
            matches!(o.kind, Forwarded::Resendable { .. }),
            "only resendable requests are parked"
        );
        self.parked.push(o);
    }

    /// The peer link to `node` closed: the forwards waiting on it are to be taken back
    /// (at the end of the turn, outside the core's output).
    pub(super) fn note_link_lost(&mut self, node: NodeId) {
        let waits = self.forwards.values().any(|f| f.leader == node)
            || self.asked.values().any(|a| a.leader == node);
        if waits && !self.lost_links.contains(&node) {
            self.lost_links.push(node);
        }
    }

    pub(super) fn take_lost_links(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.lost_links)
    }

    /// Whether the leader this node knows differs from the one at the last call.
    pub(super) fn leader_changed(&mut self, leader: Option<NodeId>) -> bool {
        let changed = self.leader_seen != leader;
        self.leader_seen = leader;
        changed
    }

    pub(super) fn take_parked(&mut self) -> Vec<Orphan> {
        std::mem::take(&mut self.parked)
    }

    /// Forwards whose leader did not answer by `now`, and parked requests still without a
    /// leader by then.
    pub(super) fn take_expired_forwards(&mut self, now: Instant) -> Vec<Orphan> {
        let expired: Vec<u64> = self
            .forwards
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        let mut out: Vec<Orphan> = expired
            .into_iter()
            .filter_map(|id| self.forwards.remove(&id).map(Forward::orphan))
            .collect();
        let (late, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|o| o.deadline <= now);
        self.parked = waiting;
        out.extend::<Vec<Orphan>>(late);
        out
    }

    /// The invariants in the module header; `applied` is the node's applied index.
    pub(super) fn check_invariants(&self, applied: LogIndex) {
        assert!(
            self.parked
                .iter()
                .all(|o| matches!(o.kind, Forwarded::Resendable { .. })),
            "a request parked that cannot be resent"
        );
        assert!(
            self.reads.len() <= limits::READS_PENDING_MAX,
            "{} reads pending",
            self.reads.len()
        );
        assert!(
            self.forwards.len() + self.parked.len() <= limits::FORWARDS_PENDING_MAX,
            "{} forwards and {} parked pending",
            self.forwards.len(),
            self.parked.len()
        );
        if let Some(&(idx, _)) = self.waiters.front() {
            assert!(idx > applied, "a write waits at {idx}, applied {applied}");
        }
        let mut indexes = self.waiters.iter().map(|&(i, _)| i);
        if let Some(mut prev) = indexes.next() {
            for i in indexes {
                assert!(prev < i, "waiters out of order: {prev} before {i}");
                prev = i;
            }
        }
        let follower_reads = self.reads.values().filter(|r| r.deadline.is_some()).count();
        let listed = self.unasked.len()
            + self.asked.values().map(|a| a.ctxs.len()).sum::<usize>()
            + self.reads_ready.len();
        assert!(
            follower_reads <= listed,
            "{follower_reads} follower reads pending, {listed} listed (invariant 5)"
        );
        if let Some(&ctx) = self.reads.keys().find(|&&c| c >= self.next_read_ctx) {
            panic!(
                "read context {ctx} not handed out (next {})",
                self.next_read_ctx
            );
        }
        if let Some(&id) = self.forwards.keys().find(|&&i| i >= self.next_forward_id) {
            panic!(
                "forward id {id} not handed out (next {})",
                self.next_forward_id
            );
        }
    }
}

impl Forward {
    fn orphan(self) -> Orphan {
        Orphan {
            to: self.to,
            deadline: self.deadline,
            kind: self.kind,
            rights: self.rights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(seq: u64) -> ReplyTo {
        ReplyTo::Client {
            key: 0,
            gen: 1,
            seq,
        }
    }

    #[test]
    fn applying_an_index_settles_every_waiter_at_or_below_it() {
        let mut p = Pending::new(1);
        p.add_waiter(LogIndex(3), Term(2), client(0));
        p.add_waiter(LogIndex(4), Term(2), client(1));
        p.add_waiter(LogIndex(5), Term(2), client(2));
        // Index 4 applied from a later term: 3 was overtaken, 4 was replaced, 5 still waits.
        let settled: Vec<_> = std::iter::from_fn(|| p.settle_next(LogIndex(4), Term(3))).collect();
        let replaced: Vec<_> = settled
            .iter()
            .map(|s| match s {
                Settled::Replaced(to) => Some(*to),
                Settled::Applied(_) => None,
            })
            .collect();
        assert_eq!(replaced, vec![Some(client(0)), Some(client(1))]);
        p.check_invariants(LogIndex(4));
        let settled: Vec<_> = std::iter::from_fn(|| p.settle_next(LogIndex(5), Term(2))).collect();
        assert!(matches!(settled[..], [Settled::Applied(to)] if to == client(2)));
        assert_eq!(p.counts(), (0, 0, 0));
    }

    /// The waiters' deque keeps a map's behaviour (the model) when indexes come out of
    /// order or again (proposals of a later term at truncated indexes).
    #[test]
    fn waiters_added_in_any_order_settle_as_a_map_by_index_would() {
        let mut rng = crate::prng::Prng::new(0x5eed_3a17);
        for case in 0..200 {
            let mut p = Pending::new(1);
            let mut model: BTreeMap<LogIndex, (Term, ReplyTo)> = BTreeMap::new();
            let mut applied = LogIndex(0);
            for seq in 0..200 {
                let index = LogIndex(applied.0 + rng.range(1, 20));
                let term = Term(rng.range(1, 3));
                match rng.range(0, 4) {
                    0 => {
                        let through = LogIndex(applied.0 + rng.range(0, 10));
                        let mut want: Vec<ReplyTo> = Vec::new();
                        while let Some((&i, _)) = model.first_key_value() {
                            if i > through {
                                break;
                            }
                            want.push(model.pop_first().unwrap().1 .1);
                        }
                        assert_eq!(p.take_waiters_through(through), want, "case {case}");
                        applied = applied.max(through);
                    }
                    1 => {
                        applied = LogIndex(applied.0 + rng.range(1, 8));
                        while let Some(s) = p.settle_next(applied, term) {
                            let (i, (t, to)) = model.pop_first().expect("a waiter the model has");
                            match s {
                                Settled::Applied(got) => {
                                    assert!(i == applied && t == term && got == to, "case {case}")
                                }
                                Settled::Replaced(got) => assert_eq!(got, to, "case {case}"),
                            }
                        }
                        assert!(model.first_key_value().is_none_or(|(&i, _)| i > applied));
                    }
                    _ => {
                        p.add_waiter(index, term, client(seq));
                        model.insert(index, (term, client(seq)));
                    }
                }
                p.check_invariants(applied);
                assert_eq!(p.counts().2, model.len(), "case {case}");
            }
            let want: Vec<ReplyTo> = model.into_values().map(|(_, to)| to).collect();
            assert_eq!(p.take_waiters(), want, "case {case}");
        }
    }

    #[test]
    fn a_read_waits_for_its_floor_and_reads_leave_in_confirmation_order() {
        let mut p = Pending::new(1);
        let a = p.next_read_ctx();
        p.add_read(a, client(0), b"a".to_vec(), LogIndex(7));
        let b = p.next_read_ctx();
        p.add_read(b, client(1), b"b".to_vec(), LogIndex(2));
        p.read_confirmed(a, LogIndex(5));
        p.read_confirmed(b, LogIndex(5));
        // `a` arrived after writes up to 7 were accepted: it waits for them.
        let due: Vec<_> = p.take_due_reads(LogIndex(6)).iter().map(|r| r.to).collect();
        assert_eq!(due, vec![client(1)]);
        let due: Vec<_> = p.take_due_reads(LogIndex(7)).iter().map(|r| r.to).collect();
        assert_eq!(due, vec![client(0)]);
        assert!(p.take_read(a).is_none(), "a served read is gone");
    }

    fn orphan(seq: u64, deadline: Instant, kind: Forwarded) -> Orphan {
        Orphan {
            to: client(seq),
            deadline,
            kind,
            rights: Rights::Data,
        }
    }

    fn tos(v: &[Orphan]) -> Vec<ReplyTo> {
        v.iter().map(|o| o.to).collect()
    }

    #[test]
    fn forward_ids_start_where_the_caller_says_and_expire_by_deadline() {
        let now = Instant::now();
        let mut p = Pending::new(1_000);
        let id = p.new_forward_id();
        assert_eq!(id, 1_000);
        let later = now + std::time::Duration::from_secs(1);
        p.add_forward(id, NodeId(2), orphan(0, later, Forwarded::Write));
        assert!(p.take_expired_forwards(now).is_empty());
        assert_eq!(tos(&p.take_expired_forwards(later)), vec![client(0)]);
        assert!(p.take_forward(id).is_none());
        p.check_invariants(LogIndex(0));
    }

    #[test]
    fn forwards_to_a_leader_that_went_away_come_back_and_parked_ones_keep_their_deadline() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut p = Pending::new(1);
        let read = Forwarded::Resendable {
            args: vec![b"GET".to_vec(), b"k".to_vec()],
            read: true,
        };
        for (seq, leader, kind) in [
            (0, 2, Forwarded::Write),
            (1, 3, Forwarded::Write),
            (2, 2, read.clone()),
        ] {
            let id = p.new_forward_id();
            p.add_forward(id, NodeId(leader), orphan(seq, later, kind));
        }
        assert_eq!(p.forward_leaders(), vec![NodeId(2), NodeId(3)]);
        let back = p.take_forwards_to(NodeId(2));
        assert_eq!(tos(&back), vec![client(0), client(2)]);
        assert_eq!(back[1].kind, read);
        assert_eq!(p.forward_leaders(), vec![NodeId(3)]);
        // The read waits for a leader; it counts against the limit and expires on time.
        p.park(back.into_iter().nth(1).unwrap());
        assert_eq!(p.counts().0, 2);
        p.check_invariants(LogIndex(0));
        assert!(p.take_expired_forwards(now).is_empty());
        assert_eq!(
            tos(&p.take_expired_forwards(later)),
            vec![client(1), client(2)]
        );
        assert!(p.take_parked().is_empty());
    }

    #[test]
    fn follower_reads_are_asked_once_per_batch_asked_again_when_the_leader_goes_and_never_served_unconfirmed(
    ) {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut p = Pending::new(1);
        p.add_follower_read(client(0), b"a".to_vec(), later);
        p.add_follower_read(client(1), b"b".to_vec(), later);
        assert!(p.has_unasked());
        // Nothing is served before a leader names an index, however far apply goes.
        assert!(p.take_due_reads(LogIndex(1_000)).is_empty());
        p.asked(7, NodeId(2));
        assert!(!p.has_unasked());
        p.check_invariants(LogIndex(0));
        // Node 2 stops leading: the batch is asked again (of node 3), and node 2's late answer
        // to request 7 is ignored, as is an answer from a node not asked.
        p.ask_again(Some(NodeId(3)), None);
        assert!(p.has_unasked());
        p.asked(8, NodeId(3));
        assert!(p
            .read_index_answered(NodeId(2), 7, Some((LogIndex(1), 5)))
            .is_empty());
        assert!(p
            .read_index_answered(NodeId(2), 8, Some((LogIndex(1), 5)))
            .is_empty());
        assert!(p.take_due_reads(LogIndex(1_000)).is_empty());
        // Node 3 confirms index 4: served once apply reaches it, in order, with its clock.
        assert!(p
            .read_index_answered(NodeId(3), 8, Some((LogIndex(4), 5)))
            .is_empty());
        assert!(p.take_due_reads(LogIndex(3)).is_empty());
        let due = p.take_due_reads(LogIndex(4));
        let tos: Vec<ReplyTo> = due.iter().map(|r| r.to).collect();
        assert_eq!(tos, vec![client(0), client(1)]);
        assert!(due.iter().all(|r| r.leader_now_ms == Some(5)));
        assert_eq!(p.follower_reads.served_locally, 2);
        // A refused batch hands back who waited; an unanswered read expires at its deadline.
        p.add_follower_read(client(2), b"c".to_vec(), later);
        p.asked(9, NodeId(3));
        assert_eq!(p.read_index_answered(NodeId(3), 9, None), vec![client(2)]);
        p.add_follower_read(client(3), b"d".to_vec(), later);
        p.asked(10, NodeId(3));
        assert!(p.take_expired_reads(now).is_empty());
        assert_eq!(p.take_expired_reads(later), vec![client(3)]);
        assert!(p
            .read_index_answered(NodeId(3), 10, Some((LogIndex(4), 5)))
            .is_empty());
        assert!(p.take_due_reads(LogIndex(1_000)).is_empty());
        assert_eq!(p.counts(), (0, 0, 0));
    }

    #[test]
    #[should_panic(expected = "a write waits at 3, applied 3")]
    fn a_waiter_at_an_applied_index_breaks_an_invariant() {
        let mut p = Pending::new(1);
        p.add_waiter(LogIndex(3), Term(1), client(0));
        p.check_invariants(LogIndex(3));
    }
}
