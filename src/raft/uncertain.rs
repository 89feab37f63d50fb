//! An uncertain log tail: what a node may do after start-up cut non-zero bytes off the end of
//! its log (issue 13; protocol-aware recovery, CTRL, FAST'18).
//!
//! Owns: `Uncertain`, the in-memory `reports` of the other voters' log positions, and the two
//! rules built on them (may we grant, may we campaign). Must not: persist anything itself (the
//! term it is uncertain since is part of the hard state, which the driver persists), or send
//! messages.
//!
//! The hole. Damage confined to the newest synced batch of the last segment (a flipped byte
//! after it was synced and acknowledged) looks exactly like a batch torn by a power cut, so
//! recovery cuts it (`wal/recovery.rs`). If this node's acknowledgement was needed to commit an
//! entry of that batch, voting as if it never had it could elect a leader lacking the entry.
//! So the node is "uncertain since term T_rec" (T_rec: its term at the cut; every entry it
//! acknowledged is of a term at most T_rec) until it can trust its log again.
//!
//! The rules, with L our log's last entry id, V the voters of the configuration in force,
//! `others` = V without us, need = |others| - floor(|V|/2) + 1 (V = 3: 2 of 2; V = 5: 3 of 4;
//! V = 1: 0, never more than |others|), and `reports` the newest (highest, in the §5.4.1 up-to-date order) last entry id
//! each other voter announced in a PreVote or Vote request received since this start. Once
//! `need` of the others reported, bar = max(L, their reports).
//! 1. Grant a pre-vote or vote only when `need` others reported and the candidate's last entry
//!    is at least the bar (plus all the usual rules).
//! 2. Campaign (pre-vote, election, TimeoutNow) only when `need` others reported and L is at
//!    least the bar. A node whose timer fires but may not campaign sends PreVote requests as
//!    probes (staying a follower), so that when every member is uncertain (a whole-cluster
//!    power cut) they still learn each other's positions and elect the longest log. A probe
//!    is a pre-vote: it changes no term, and a node in a leader's lease ignores it.
//! 3. The node clears the uncertainty once its durable log (or snapshot) holds an entry of a
//!    term above T_rec (a leader elected after the crash sent it; that leader held every entry
//!    committed before, and Log Matching gives them to us), or when it wins an election (it
//!    was allowed to campaign, so its log is at least the bar).
//!
//! Why it is safe: damage strikes one node at a time, so an entry committed before the crash
//! is intact on a majority minus at most us, i.e. on at least floor(|V|/2) of the others; any
//! `need` others include one such holder; its report holds the entry, so the bar is at least
//! the entry, and any candidate at least the bar holds it too (Leader Completeness, §5.4.3).
//! Reports are only ever from after our restart (connections are new), and a holder never
//! loses the entry, so any report of a holder will do.
//!
//! Lost storage elsewhere. A voter that comes back as a new incarnation (it lost its disk:
//! it knows no configuration and never sends a vote request) counts as having reported an
//! empty log (`Raft::report_replaced`). Safe under the same assumption: that voter is the
//! one damaged node, so our cut was a torn tail and lost nothing acknowledged. Without it, a
//! lost disk and a torn tail elsewhere at the same time would leave no leader for good.
//!
//! Liveness cost: an uncertain node neither votes nor campaigns until it heard from `need`
//! others, i.e. with three voters both others must be up, with five three of the four. A
//! node that is only uncertain because a power cut tore an unsynced batch pays the same.
//!
//! NB (open): `V` is the configuration of the cut log. If the cut tail held configuration
//! changes (a learner's promotion), the configuration that committed what we lost may be
//! larger, and too few reports can pass: simulator seed 839 (`SIM_SEEDS=3000`), "LEADER
//! COMPLETENESS: leader 1 of term 5 lacks committed 3/19". Requiring every learner's report
//! too fixed 839 but cost liveness (seeds 4, 11: a learner that knows no configuration never
//! reports); not done yet.

use std::collections::BTreeMap;

use super::types::{ConfState, EntryId, NodeId, Term};

/// The uncertainty of one start (see the module header).
#[derive(Debug, Default)]
pub(super) struct Uncertain {
    /// The term the node is uncertain since (persisted in the hard state); `None`: certain.
    since: Option<Term>,
    /// Newest last entry id each other node announced in a vote request since this start.
    reports: BTreeMap<NodeId, EntryId>,
}

impl Uncertain {
    pub(super) fn new(since: Option<Term>) -> Uncertain {
        Uncertain {
            since,
            reports: BTreeMap::new(),
        }
    }

    pub(super) fn since(&self) -> Option<Term> {
        self.since
    }

    /// Records the log position a vote or pre-vote request from `from` announced. Kept only
    /// while uncertain (a later restart starts from nothing anyway).
    pub(super) fn report(&mut self, from: NodeId, last: EntryId) {
        if self.since.is_none() {
            return;
        }
        let r = self.reports.entry(from).or_insert(last);
        if last.is_up_to_date_with(*r) {
            *r = last;
        }
    }

    /// The bar a candidate must reach (rule 1, and for us rule 2), once enough others
    /// reported; `None` while they have not. Only meaningful while uncertain.
    fn bar(&self, me: NodeId, conf: &ConfState, own: EntryId) -> Option<EntryId> {
        let others: Vec<NodeId> = conf.voters.iter().copied().filter(|&v| v != me).collect();
        // need = |others| - floor(|V|/2) + 1, and never more than there are others (a single
        // voter has nobody to ask: what only it acknowledged is gone with its tail).
        let need = (others.len() + 1)
            .saturating_sub(conf.voters.len() / 2)
            .min(others.len());
        let heard: Vec<EntryId> = others
            .iter()
            .filter_map(|v| self.reports.get(v).copied())
            .collect();
        if heard.len() < need {
            return None;
        }
        Some(
            heard
                .into_iter()
                .fold(own, |bar, r| match r.is_up_to_date_with(bar) {
                    true => r,
                    false => bar,
                }),
        )
    }

    /// Rule 1: whether a candidate whose log ends at `candidate` may get our (pre-)vote.
    pub(super) fn may_grant(
        &self,
        me: NodeId,
        conf: &ConfState,
        own: EntryId,
        candidate: EntryId,
    ) -> bool {
        self.since.is_none()
            || self
                .bar(me, conf, own)
                .is_some_and(|bar| candidate.is_up_to_date_with(bar))
    }

    /// Rule 2: whether we may campaign with our log ending at `own`.
    pub(super) fn may_campaign(&self, me: NodeId, conf: &ConfState, own: EntryId) -> bool {
        self.may_grant(me, conf, own, own)
    }

    /// Rule 3: forget the uncertainty; true if there was one.
    pub(super) fn clear(&mut self) -> bool {
        self.reports.clear();
        self.since.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::LogIndex;

    fn id(t: u64, i: u64) -> EntryId {
        EntryId::new(Term(t), LogIndex(i))
    }

    fn conf(n: u64) -> ConfState {
        ConfState::new((1..=n).map(NodeId).collect(), vec![])
    }

    #[test]
    fn a_certain_node_follows_the_usual_rules_only() {
        let u = Uncertain::new(None);
        assert!(u.may_grant(NodeId(1), &conf(3), id(5, 9), id(1, 1)));
        assert!(u.may_campaign(NodeId(1), &conf(3), id(1, 1)));
    }

    #[test]
    fn three_voters_need_both_others_and_the_bar_is_the_highest_report() {
        let me = NodeId(2);
        let mut u = Uncertain::new(Some(Term(3)));
        let own = id(3, 10);
        assert!(!u.may_campaign(me, &conf(3), own), "nobody reported");
        u.report(NodeId(3), id(3, 9));
        assert!(!u.may_grant(me, &conf(3), own, id(3, 9)), "one of two");
        assert!(!u.may_grant(me, &conf(3), own, id(9, 99)), "one of two");
        u.report(NodeId(1), id(3, 12));
        assert!(!u.may_campaign(me, &conf(3), own), "node 1 is ahead of us");
        assert!(!u.may_grant(me, &conf(3), own, id(3, 11)));
        assert!(u.may_grant(me, &conf(3), own, id(3, 12)));
        assert!(u.may_grant(me, &conf(3), own, id(4, 1)));
        // A lower report later never lowers the bar.
        u.report(NodeId(1), id(3, 5));
        assert!(!u.may_grant(me, &conf(3), own, id(3, 11)));
        assert!(u.clear());
        assert!(u.may_grant(me, &conf(3), own, id(1, 1)));
        assert!(!u.clear());
    }

    #[test]
    fn five_voters_need_three_of_four_and_one_voter_needs_nobody() {
        let me = NodeId(1);
        let mut u = Uncertain::new(Some(Term(2)));
        for (k, v) in [2, 3].into_iter().enumerate() {
            u.report(NodeId(v), id(2, k as u64));
            assert!(!u.may_campaign(me, &conf(5), id(2, 7)));
        }
        u.report(NodeId(9), id(1, 1)); // not a voter: does not count
        assert!(!u.may_campaign(me, &conf(5), id(2, 7)));
        u.report(NodeId(5), id(2, 3));
        assert!(u.may_campaign(me, &conf(5), id(2, 7)));
        let single = Uncertain::new(Some(Term(2)));
        assert!(single.may_campaign(me, &conf(1), id(2, 7)));
    }
}
