//! What the node observes for its metrics port, and how far it has caught up (`/readyz`).
//!
//! Owns: the counters and histograms no other part keeps (leader changes seen, failed
//! proposals, apply durations, snapshot durations and bytes, client commands by name, heartbeat
//! round trips per peer) and the catch-up state readiness is decided from. Everything else a
//! scrape shows is read from the part that owns it when the scrape renders
//! (`exposition.rs`): nothing here copies a value another part keeps.
//!
//! Must not: read a clock of its own. A round trip is measured between the turns' `now`s
//! (the turn that queued the heartbeat and the turn that read its answer); fsync durations
//! come from the `Disk`, snapshot durations from the snapshot child's report; apply durations
//! use the stopwatch the shell hands over (`Node::time_applies_with`, the shell's clock: the
//! simulator passes none, and then no apply duration is observed).
//!
//! Invariants (`check_invariants`):
//! 1. `commands` holds one counter per `command_labels()` entry, then one for `other`: the label
//!    set is fixed and bounded, whatever clients send.
//! 2. At most `MEMBERS_MAX` peers have round-trip state.
//! 3. A peer's probe is outstanding only while at least one heartbeat to it is unanswered.
//! 4. Catch-up only moves forward: `Waiting`, then `To(commit)`, then `Done`.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::server_cmds::COMMANDS;
use crate::limits::MEMBERS_MAX;
use crate::metrics::{
    Histogram, APPLY_SECONDS_BUCKETS, ROUND_TRIP_SECONDS_BUCKETS, SNAPSHOT_SECONDS_BUCKETS,
};
use crate::raft::{LogIndex, NodeId, Term};

/// Command names counted under their own label beyond the command table's (the session
/// command is dispatched before the table is consulted).
const EXTRA_COMMAND_LABELS: &[&str] = &["session"];

/// The label every other command name is counted under.
pub(super) const OTHER_COMMAND: &str = "other";

/// A probe older than this is taken as lost (its answer never came on this link): the next
/// heartbeat starts a new one.
const PROBE_STALE: Duration = Duration::from_secs(5);

/// The known command names, sorted (binary search on the hot path).
pub(super) fn command_labels() -> &'static [&'static str] {
    static LABELS: OnceLock<Vec<&'static str>> = OnceLock::new();
    LABELS.get_or_init(|| {
        let mut v: Vec<&'static str> = COMMANDS
            .iter()
            .map(|c| c.name)
            .chain(EXTRA_COMMAND_LABELS.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    })
}

/// How far a node is from serving what the cluster has committed (`/readyz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// No leader of the current term known since the start.
    Waiting,
    /// A leader was first known when the commit index was this: apply up to it.
    To(LogIndex),
    /// Applied up to the commit index learned at start.
    Done,
}

/// Heartbeat round trips to one peer. One probe at a time: a probe starts only when every
/// heartbeat sent before it was answered, so (the link being ordered, and a follower
/// answering each heartbeat of its term once) the next answer is the probe's.
struct RoundTrips {
    seconds: Histogram,
    term: Term,
    unanswered: u32,
    probe: Option<Instant>,
}

impl RoundTrips {
    fn new(term: Term) -> RoundTrips {
        RoundTrips {
            seconds: Histogram::new(ROUND_TRIP_SECONDS_BUCKETS),
            term,
            unanswered: 0,
            probe: None,
        }
    }

    fn restart(&mut self, term: Term) {
        self.term = term;
        self.unanswered = 0;
        self.probe = None;
    }
}

pub(super) struct Telemetry {
    leader_changes: u64,
    last_leader: Option<NodeId>,
    proposals_failed: u64,
    apply_seconds: Histogram,
    stopwatch: Option<fn() -> Instant>,
    snapshot_seconds: Histogram,
    snapshot_bytes: u64,
    /// Invariant 1.
    commands: Box<[u64]>,
    round_trips: BTreeMap<NodeId, RoundTrips>,
    catch_up: CatchUp,
    /// The largest commit index a leader's message carried while `Waiting`.
    leader_commit: LogIndex,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry {
            leader_changes: 0,
            last_leader: None,
            proposals_failed: 0,
            apply_seconds: Histogram::new(APPLY_SECONDS_BUCKETS),
            stopwatch: None,
            snapshot_seconds: Histogram::new(SNAPSHOT_SECONDS_BUCKETS),
            snapshot_bytes: 0,
            commands: vec![0; command_labels().len() + 1].into_boxed_slice(),
            round_trips: BTreeMap::new(),
            catch_up: CatchUp::Waiting,
            leader_commit: LogIndex(0),
        }
    }
}

impl Telemetry {
    /// The leader this turn ends with. Counted as etcd counts: each time a leader is known
    /// that differs from the one known before (the first leader included).
    pub(super) fn leader_seen(&mut self, leader: Option<NodeId>) {
        if leader.is_some() && leader != self.last_leader {
            self.leader_changes += 1;
        }
        self.last_leader = leader;
    }

    pub(super) fn leader_changes(&self) -> u64 {
        self.leader_changes
    }

    /// `n` proposals this node made will not be applied as proposed (the client got
    /// `-TRYAGAIN` or `-UNKNOWN`).
    pub(super) fn proposals_failed(&mut self, n: usize) {
        self.proposals_failed += n as u64;
    }

    pub(super) fn failed(&self) -> u64 {
        self.proposals_failed
    }

    pub(super) fn set_stopwatch(&mut self, now: fn() -> Instant) {
        self.stopwatch = Some(now);
    }

    /// Start timing one apply (None without a stopwatch).
    pub(super) fn apply_started(&self) -> Option<Instant> {
        self.stopwatch.map(|now| now())
    }

    pub(super) fn apply_done(&mut self, started: Option<Instant>) {
        if let (Some(now), Some(t0)) = (self.stopwatch, started) {
            self.apply_seconds
                .observe_duration(now().saturating_duration_since(t0));
        }
    }

    pub(super) fn apply_seconds(&self) -> &Histogram {
        &self.apply_seconds
    }

    pub(super) fn snapshot_saved(&mut self, took: Duration, bytes: u64) {
        self.snapshot_seconds.observe_duration(took);
        self.snapshot_bytes += bytes;
    }

    pub(super) fn snapshot_seconds(&self) -> &Histogram {
        &self.snapshot_seconds
    }

    pub(super) fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes
    }

    /// A client sent a command named `name` (any case; unknown names count as `other`).
    pub(super) fn command(&mut self, name: &[u8]) {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        let labels = command_labels();
        let slot = command_name(name, &mut buf)
            .and_then(|n| labels.binary_search(&n).ok())
            .unwrap_or(labels.len());
        self.commands[slot] += 1;
    }

    /// (label, count) for every known command, then `other`.
    pub(super) fn commands(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        command_labels()
            .iter()
            .copied()
            .chain(std::iter::once(OTHER_COMMAND))
            .zip(self.commands.iter().copied())
    }

    /// A heartbeat of `term` to `peer` was queued at `now`.
    pub(super) fn heartbeat_sent(&mut self, peer: NodeId, term: Term, now: Instant) {
        if !self.round_trips.contains_key(&peer) && self.round_trips.len() >= MEMBERS_MAX {
            return;
        }
        let rt = self
            .round_trips
            .entry(peer)
            .or_insert_with(|| RoundTrips::new(term));
        if rt.term != term {
            rt.restart(term);
        }
        if rt
            .probe
            .is_some_and(|at| now.saturating_duration_since(at) > PROBE_STALE)
        {
            // NB: its answer was lost without the link breaking (a dropped frame); the
            // count of unanswered heartbeats is a guess from here, so start over.
            rt.restart(term);
        }
        if rt.probe.is_none() && rt.unanswered == 0 {
            rt.probe = Some(now);
        }
        rt.unanswered = rt.unanswered.saturating_add(1);
    }

    /// `peer` answered a heartbeat of `term`; the answer was read at `now`.
    pub(super) fn heartbeat_answered(&mut self, peer: NodeId, term: Term, now: Instant) {
        let Some(rt) = self.round_trips.get_mut(&peer) else {
            return;
        };
        if rt.term != term || rt.unanswered == 0 {
            return;
        }
        rt.unanswered -= 1;
        if let Some(at) = rt.probe.take() {
            rt.seconds
                .observe_duration(now.saturating_duration_since(at));
        }
    }

    /// The link to `peer` broke: heartbeats in flight on it will not be answered.
    pub(super) fn link_lost(&mut self, peer: NodeId) {
        if let Some(rt) = self.round_trips.get_mut(&peer) {
            let term = rt.term;
            rt.restart(term);
        }
    }

    /// Round-trip histograms, by peer.
    pub(super) fn round_trips(&self) -> impl Iterator<Item = (NodeId, &Histogram)> + '_ {
        self.round_trips.iter().map(|(id, rt)| (*id, &rt.seconds))
    }

    /// A leader's append or heartbeat carried `commit` (an append carries the leader's
    /// commit index; a heartbeat one capped at what the leader knows this node holds).
    pub(super) fn leader_commit_seen(&mut self, commit: LogIndex) {
        if self.catch_up == CatchUp::Waiting {
            self.leader_commit = self.leader_commit.max(commit);
        }
    }

    /// Called at the end of every turn: `leader_of_term` when this node knows a leader of
    /// its current term (a leader: once it committed an entry of its term, so that it knows
    /// the commit index). Returns the catch-up target when it was just reached.
    pub(super) fn catch_up(
        &mut self,
        leader_of_term: bool,
        commit: LogIndex,
        applied: LogIndex,
    ) -> Option<LogIndex> {
        if self.catch_up == CatchUp::Waiting && leader_of_term {
            self.catch_up = CatchUp::To(commit.max(self.leader_commit));
        }
        match self.catch_up {
            CatchUp::To(target) if applied >= target => {
                self.catch_up = CatchUp::Done;
                Some(target)
            }
            _ => None,
        }
    }

    pub(super) fn catch_up_state(&self) -> CatchUp {
        self.catch_up
    }

    pub(super) fn check_invariants(&self) {
        assert_eq!(
            self.commands.len(),
            command_labels().len() + 1,
            "one counter per command label and one for other"
        );
        assert!(
            self.round_trips.len() <= MEMBERS_MAX,
            "{} peers with round-trip state",
            self.round_trips.len()
        );
        for (id, rt) in &self.round_trips {
            assert!(
                rt.probe.is_none() || rt.unanswered > 0,
                "peer {id}: a probe with no heartbeat unanswered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_under_known_names_or_other() {
        let mut t = Telemetry::default();
        for name in [
            &b"GET"[..],
            b"get",
            b"Set",
            b"session",
            b"FLUSHALL",
            b"nosuch",
            b"\xff",
        ] {
            t.command(name);
        }
        t.command(&[b'x'; 100]);
        let counts: BTreeMap<&str, u64> = t.commands().collect();
        assert_eq!(counts["get"], 2);
        assert_eq!(counts["set"], 1);
        assert_eq!(counts["session"], 1);
        assert_eq!(counts["flushall"], 1);
        assert_eq!(counts[OTHER_COMMAND], 3);
        assert_eq!(counts.len(), command_labels().len() + 1);
        t.check_invariants();
    }

    #[test]
    fn a_round_trip_is_the_probe_to_its_answer_and_later_heartbeats_wait_for_it() {
        let mut t = Telemetry::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (p, term) = (NodeId(2), Term(3));
        t.heartbeat_sent(p, term, ms(0)); // the probe
        t.heartbeat_sent(p, term, ms(50)); // in flight behind it
        t.heartbeat_answered(p, term, ms(3)); // the probe's answer: 3 ms
        t.heartbeat_sent(p, term, ms(100)); // one still unanswered: no probe
        t.heartbeat_answered(p, term, ms(120));
        t.heartbeat_answered(p, term, ms(121));
        t.heartbeat_sent(p, term, ms(150)); // all answered: a new probe
        t.heartbeat_answered(p, Term(2), ms(151)); // another term's answer: ignored
        t.heartbeat_answered(p, term, ms(151)); // 1 ms
        t.check_invariants();
        let (_, h) = t.round_trips().next().unwrap();
        assert_eq!(h.count(), 2);
        assert!((h.sum() - 0.004).abs() < 1e-9, "sum {}", h.sum());
        // A broken link forgets what was in flight; a new term starts over.
        t.heartbeat_sent(p, term, ms(200));
        t.link_lost(p);
        t.heartbeat_answered(p, term, ms(900));
        t.heartbeat_sent(p, Term(4), ms(1000));
        t.heartbeat_answered(p, Term(4), ms(1001));
        let (_, h) = t.round_trips().next().unwrap();
        assert_eq!(h.count(), 3);
        t.check_invariants();
    }

    #[test]
    fn catch_up_waits_for_a_leader_then_for_apply_and_never_goes_back() {
        let mut t = Telemetry::default();
        assert_eq!(t.catch_up(false, LogIndex(5), LogIndex(0)), None);
        assert_eq!(t.catch_up_state(), CatchUp::Waiting);
        t.leader_commit_seen(LogIndex(9)); // the leader's append said 9; we know of 7
        assert_eq!(t.catch_up(true, LogIndex(7), LogIndex(4)), None);
        assert_eq!(t.catch_up_state(), CatchUp::To(LogIndex(9)));
        t.leader_commit_seen(LogIndex(50)); // too late: the target stays
        assert_eq!(t.catch_up(true, LogIndex(20), LogIndex(8)), None);
        assert_eq!(
            t.catch_up(false, LogIndex(20), LogIndex(9)),
            Some(LogIndex(9))
        );
        assert_eq!(t.catch_up(true, LogIndex(30), LogIndex(9)), None);
        assert_eq!(t.catch_up_state(), CatchUp::Done);
    }

    #[test]
    fn leader_changes_count_each_new_leader_as_etcd_does() {
        let mut t = Telemetry::default();
        for l in [None, Some(1), Some(1), None, Some(1), Some(2), Some(2)] {
            t.leader_seen(l.map(NodeId));
        }
        assert_eq!(t.leader_changes(), 3);
    }
}
