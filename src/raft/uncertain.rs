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
//! The rules, with L our log's last entry id, `reports` the position each other node
//! announced since this start (its last entry id in a PreVote or Vote request, or in a
//! PreVote answer its newest entry of a term at most T_rec; capped and the lowest kept, see
//! "Reports"), and S the candidate voter sets (below). For a set C, with
//! `others` = C without us, need(C) = ceil(|C|/2), never more than |others| (C = 3 voters with
//! us: both others; 5: three of the four; us alone: nobody). Once every C in S has need(C) of
//! its others reported, bar = max(L, the reports of every member named in S).
//! 1. Grant a pre-vote or vote only when the bar is known and the candidate's last entry is
//!    at least the bar (plus all the usual rules).
//! 2. Campaign (pre-vote, election, TimeoutNow) only when the bar is known and L is at least
//!    it. A node whose timer fires but may not campaign sends PreVote requests as probes
//!    (staying a follower), so that when every member is uncertain (a whole-cluster power
//!    cut) they still learn each other's positions and elect the longest log. A probe is a
//!    pre-vote: it changes no term, and a node in a leader's lease ignores it.
//! 3. The node clears the uncertainty once its durable log (or snapshot) holds an entry of a
//!    term above T_rec (a leader elected after the crash sent it; that leader held every entry
//!    committed before, and Log Matching gives them to us), or when it wins an election (it
//!    was allowed to campaign, so its log is at least the bar).
//!
//! Why it is safe: damage strikes one node at a time, so an entry e we lost that was
//! committed is held by a majority of the voter set C that committed it, floor(|C|/2) + 1
//! nodes, of which all but at most one (us) are others of C: at most need(C) - 1 of C's
//! others lack e, so any need(C) of them include a holder (with the cap: a set of us alone
//! committed nothing anybody else holds, and what only we held is gone with our tail). The
//! holder's report holds e, so the bar is at least e, and any candidate at least the bar
//! holds e too (Leader Completeness, §5.4.3). Reports are only ever from after our restart
//! (connections are new), and a holder never loses the entry, so any report of a holder will
//! do. It remains that S must contain C.
//!
//! Reports. Only an entry we acknowledged can be lost with our tail, so only entries of a
//! term at most T_rec matter: the entry e that our acknowledgement helped commit is of such a
//! term (an entry of its leader's term, which commits the ones before it). So a report
//! (t, i) with t > T_rec counts as (T_rec, i): a holder's e is then before i and of a term
//! at most T_rec, and a log at least (T_rec, i) holds it (its last entry is either of a term
//! above e's, written by a leader that held e, after e; or of e's term and not before it).
//! And since any report of a holder will do, the lowest one is kept. Without the cap a
//! learner whose log ended in a newer term's entry that never committed raised the bar above
//! every voter, and nobody could be elected (simulator seed 982). So that such a member can
//! also say where its entries of a term at most T_rec end, our pre-votes carry T_rec as
//! their `floor` and the answers report the responder's newest entry of a term at most it
//! (`RaftLog::last_id_at_or_below`).
//!
//! Which configurations (S). The cut tail may have held configuration changes, so the
//! configuration of the cut log is not enough (simulator seed 839: a learner's promotion was
//! in the cut batch; counting the two voters left, one report passed, and a leader lacking a
//! committed entry was elected). So the hard state records, with every change of them, the
//! configurations an entry at the end of the log may have committed under (`TailConf`, saved
//! before the entries are acknowledged): with K the newest configuration in the log,
//! - K itself, "near": an entry after K's change commits under K, or under the next change,
//!   which is appended only after K's committed (single-server changes, `membership.rs`
//!   invariant 1) and is one change away: a learner of K promoted (every voter joins as a
//!   learner first; the founder's first entry has nobody else to ask) or a voter of K
//!   removed or demoted. So S holds K's voters, plus each learner, minus each voter.
//! - while K's change is not known committed, the configuration P before it (exactly): K's
//!   change was proposed after P's committed, so an entry before K's change is held by a
//!   majority of P, or commits with K's change under K.
//!   Entries before P's change are held by a majority of P (P's change committed after them).
//!
//! While uncertain, the record loaded at start is kept beside the live one (a second cut
//! before the first is resolved still knows both); the hard state file collapses a list too
//! long for its slot into one `every` entry (all its members must report), which only asks
//! more. A record missing (an older hard state) leaves the cut log's configuration, near.
//!
//! Lost storage elsewhere. A voter that comes back as a new incarnation (it lost its disk:
//! it knows no configuration and never sends a vote request) counts as having reported an
//! empty log (`Raft::report_replaced`). Safe under the same assumption: that voter is the
//! one damaged node, so our cut was a torn tail and lost nothing acknowledged. Without it, a
//! lost disk and a torn tail elsewhere at the same time would leave no leader for good.
//!
//! Liveness cost: an uncertain node neither votes nor campaigns until it heard from enough
//! others: with three voters both others, with five three of the four, with four voters
//! all three (the next change could remove one). A node that is only uncertain because a
//! power cut tore an unsynced batch pays the same.

use std::collections::BTreeMap;

use super::types::{EntryId, NodeId, TailConf, Term};

/// The uncertainty of one start (see the module header).
#[derive(Debug, Default)]
pub(super) struct Uncertain {
    /// The term the node is uncertain since (persisted in the hard state); `None`: certain.
    since: Option<Term>,
    /// The lowest capped position each other node announced since this start ("Reports").
    reports: BTreeMap<NodeId, EntryId>,
    /// The tail configurations the hard state held at start, kept while uncertain.
    recorded: Vec<TailConf>,
}

impl Uncertain {
    pub(super) fn new(since: Option<Term>, recorded: &[TailConf]) -> Uncertain {
        Uncertain {
            since,
            reports: BTreeMap::new(),
            recorded: match since {
                Some(_) => recorded.to_vec(),
                None => Vec::new(),
            },
        }
    }

    pub(super) fn since(&self) -> Option<Term> {
        self.since
    }

    /// Records a log position `from` announced (in a vote or pre-vote request, or a pre-vote
    /// answer), capped at `since` and keeping the lowest (see "Reports" in the header). Kept
    /// only while uncertain (a later restart starts from nothing anyway).
    pub(super) fn report(&mut self, from: NodeId, last: EntryId) {
        let Some(since) = self.since else {
            return;
        };
        let capped = match last.term > since {
            true => EntryId::new(since, last.index),
            false => last,
        };
        let r = self.reports.entry(from).or_insert(capped);
        if r.is_up_to_date_with(capped) {
            *r = capped;
        }
    }

    /// The tail configurations to keep and save: `live` (those of the log now) and, while
    /// uncertain, those recorded at start, without repeats.
    pub(super) fn tail_confs(&self, mut live: Vec<TailConf>) -> Vec<TailConf> {
        for t in &self.recorded {
            if !live.contains(t) {
                live.push(t.clone());
            }
        }
        live
    }

    /// The bar a candidate must reach (rule 1, and for us rule 2), once enough others
    /// reported; `None` while they have not. Only meaningful while uncertain.
    fn bar(&self, me: NodeId, confs: &[TailConf], own: EntryId) -> Option<EntryId> {
        let heard = |c: &mut dyn Iterator<Item = NodeId>| {
            let (mut others, mut heard) = (0, 0);
            for v in c.filter(|&v| v != me) {
                others += 1;
                heard += usize::from(self.reports.contains_key(&v));
            }
            (others, heard)
        };
        // need(C) = ceil(|C|/2), at most |others|.
        let enough =
            |size: usize, (others, heard): (usize, usize)| heard >= size.div_ceil(2).min(others);
        for t in confs {
            let c = &t.conf;
            if t.every {
                let (others, h) = heard(&mut c.members());
                if h < others {
                    return None;
                }
                continue;
            }
            let voters = || c.voters.iter().copied();
            if !enough(c.voters.len(), heard(&mut voters())) {
                return None;
            }
            if !t.near {
                continue;
            }
            for &x in &c.learners {
                if !enough(c.voters.len() + 1, heard(&mut voters().chain([x]))) {
                    return None;
                }
            }
            for &y in &c.voters {
                if !enough(c.voters.len() - 1, heard(&mut voters().filter(|&v| v != y))) {
                    return None;
                }
            }
        }
        let named = |v: &NodeId| confs.iter().any(|t| t.conf.contains(*v));
        Some(
            self.reports
                .iter()
                .filter(|(v, _)| **v != me && named(v))
                .fold(own, |bar, (_, &r)| match r.is_up_to_date_with(bar) {
                    true => r,
                    false => bar,
                }),
        )
    }

    /// Rule 1: whether a candidate whose log ends at `candidate` may get our (pre-)vote.
    pub(super) fn may_grant(
        &self,
        me: NodeId,
        confs: &[TailConf],
        own: EntryId,
        candidate: EntryId,
    ) -> bool {
        self.since.is_none()
            || self
                .bar(me, confs, own)
                .is_some_and(|bar| candidate.is_up_to_date_with(bar))
    }

    /// Rule 2: whether we may campaign with our log ending at `own`.
    pub(super) fn may_campaign(&self, me: NodeId, confs: &[TailConf], own: EntryId) -> bool {
        self.may_grant(me, confs, own, own)
    }

    /// Rule 3: forget the uncertainty (and what was recorded at start); true if there was one.
    pub(super) fn clear(&mut self) -> bool {
        self.reports.clear();
        self.recorded.clear();
        self.since.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::{ConfState, LogIndex};

    fn id(t: u64, i: u64) -> EntryId {
        EntryId::new(Term(t), LogIndex(i))
    }

    fn nodes(ids: &[u64]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    fn tail(voters: &[u64], learners: &[u64], near: bool) -> TailConf {
        TailConf {
            conf: ConfState::new(nodes(voters), nodes(learners)),
            near,
            every: false,
        }
    }

    /// Voters 1..=n, no learners, near.
    fn conf(n: u64) -> Vec<TailConf> {
        vec![tail(&(1..=n).collect::<Vec<_>>(), &[], true)]
    }

    #[test]
    fn a_certain_node_follows_the_usual_rules_only() {
        let u = Uncertain::new(None, &conf(3));
        assert!(u.may_grant(NodeId(1), &conf(3), id(5, 9), id(1, 1)));
        assert!(u.may_campaign(NodeId(1), &conf(3), id(1, 1)));
        assert!(u.recorded.is_empty(), "a certain node keeps no record");
    }

    #[test]
    fn three_voters_need_both_others_and_the_bar_is_the_highest_report() {
        let me = NodeId(2);
        let mut u = Uncertain::new(Some(Term(3)), &[]);
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
        // Any report of a holder will do: a lower one later lowers the bar (to our own log).
        u.report(NodeId(1), id(3, 5));
        assert!(u.may_grant(me, &conf(3), own, id(3, 10)));
        assert!(!u.may_grant(me, &conf(3), own, id(3, 9)));
        u.report(NodeId(1), id(3, 12));
        assert!(
            u.may_grant(me, &conf(3), own, id(3, 10)),
            "a higher one does not raise it"
        );
        assert!(u.clear());
        assert!(u.may_grant(me, &conf(3), own, id(1, 1)));
        assert!(!u.clear());
    }

    #[test]
    fn five_voters_need_three_of_four_and_one_voter_needs_nobody() {
        let me = NodeId(1);
        let mut u = Uncertain::new(Some(Term(2)), &[]);
        for (k, v) in [2, 3].into_iter().enumerate() {
            u.report(NodeId(v), id(2, k as u64));
            assert!(!u.may_campaign(me, &conf(5), id(2, 7)));
        }
        u.report(NodeId(9), id(9, 9)); // not a member: neither counts nor raises the bar
        assert!(!u.may_campaign(me, &conf(5), id(2, 7)));
        u.report(NodeId(5), id(2, 3));
        assert!(u.may_campaign(me, &conf(5), id(2, 7)));
        let single = Uncertain::new(Some(Term(2)), &[]);
        assert!(single.may_campaign(me, &conf(1), id(2, 7)));
    }

    #[test]
    fn a_report_of_a_term_after_the_uncertainty_counts_as_that_term() {
        // Uncertain since term 3: what we may have lost is of a term at most 3, so a report
        // (5, 20) asks a candidate for no more than (3, 20).
        let me = NodeId(1);
        let mut u = Uncertain::new(Some(Term(3)), &[]);
        u.report(NodeId(2), id(5, 20));
        u.report(NodeId(3), id(2, 4));
        assert!(u.may_grant(me, &conf(3), id(3, 7), id(3, 20)));
        assert!(u.may_grant(me, &conf(3), id(3, 7), id(4, 1)));
        assert!(!u.may_grant(me, &conf(3), id(3, 7), id(3, 19)));
        assert!(!u.may_campaign(me, &conf(3), id(3, 7)));
    }

    #[test]
    fn a_learner_ahead_in_a_newer_term_does_not_block_the_voters() {
        // Simulator seed 982: voters {1, 2}, learners {3, 4, 5}, we (1) uncertain since term
        // 9, both voters end at (7, 51); learner 5 ends at (10, 52), an entry that never
        // committed. Its probe says (10, 52), capped (9, 52): above both voters. Its answer
        // to our probe (floor 9) says where its entries of terms up to 9 end: (7, 51).
        let me = NodeId(1);
        let confs = vec![tail(&[1, 2], &[3, 4, 5], true)];
        let own = id(7, 51);
        let mut u = Uncertain::new(Some(Term(9)), &[]);
        u.report(NodeId(2), id(7, 51));
        u.report(NodeId(3), id(2, 15));
        u.report(NodeId(4), id(3, 23));
        u.report(NodeId(5), id(10, 52));
        assert!(
            !u.may_grant(me, &confs, own, id(7, 51)),
            "(9, 52) from the probe"
        );
        u.report(NodeId(5), id(7, 51));
        assert!(u.may_grant(me, &confs, own, id(7, 51)));
        assert!(u.may_campaign(me, &confs, own));
        assert!(!u.may_grant(me, &confs, own, id(7, 50)));
    }

    #[test]
    fn four_voters_need_all_three_others_since_the_next_change_may_remove_one() {
        // Voters {1,2,3,4}: the next change may remove node 1 (an entry after it commits on
        // {2,3} of {2,3,4}) or promote learner 5 (on {2,3,5} of five); reports of 1 and 4,
        // two of three, would do for the four alone and miss both.
        let me = NodeId(2);
        let confs = vec![tail(&[1, 2, 3, 4], &[5], true)];
        let mut u = Uncertain::new(Some(Term(4)), &[]);
        u.report(NodeId(1), id(4, 8));
        u.report(NodeId(4), id(4, 8));
        assert!(!u.may_grant(me, &confs, id(4, 8), id(4, 8)), "two of three");
        u.report(NodeId(5), id(4, 10));
        assert!(
            !u.may_grant(me, &confs, id(4, 8), id(4, 10)),
            "the learner is no voter"
        );
        u.report(NodeId(3), id(4, 8));
        assert!(u.may_grant(me, &confs, id(4, 8), id(4, 10)));
        assert!(
            !u.may_grant(me, &confs, id(4, 8), id(4, 9)),
            "the learner raised the bar"
        );
        let exact = vec![tail(&[1, 2, 3, 4], &[5], false)];
        let mut v = Uncertain::new(Some(Term(4)), &[]);
        for n in [1, 4] {
            v.report(NodeId(n), id(4, 8));
        }
        assert!(
            v.may_grant(me, &exact, id(4, 8), id(4, 8)),
            "two of three, not near"
        );
    }

    #[test]
    fn a_member_added_and_promoted_in_the_cut_tail_is_counted_from_the_record() {
        // The shape of simulator seed 839: the cut log says voters {1,2}, learner 3; the
        // batch cut held node 4's admission and promotion, and entries committed on {2,4}.
        // The hard state recorded {1,2,4} (near) and {1,2} before the promotion.
        let me = NodeId(2);
        let cut = tail(&[1, 2], &[3], true);
        let recorded = vec![tail(&[1, 2, 4], &[3], true), tail(&[1, 2], &[3, 4], false)];
        let mut u = Uncertain::new(Some(Term(3)), &recorded);
        let confs = u.tail_confs(vec![cut.clone()]);
        assert_eq!(confs.len(), 3);
        let own = id(3, 14);
        for n in [1, 3] {
            u.report(NodeId(n), id(3, 15));
        }
        assert!(
            u.may_grant(me, std::slice::from_ref(&cut), own, id(3, 15)),
            "from the cut log alone, node 1 passes (the defect)"
        );
        assert!(
            !u.may_grant(me, &confs, own, id(3, 15)),
            "node 4 must report"
        );
        u.report(NodeId(4), id(3, 27));
        assert!(
            !u.may_grant(me, &confs, own, id(3, 15)),
            "4 holds 3/27: 1 lacks it"
        );
        assert!(u.may_grant(me, &confs, own, id(3, 27)));
        assert!(u.clear());
        assert_eq!(
            u.tail_confs(vec![cut.clone()]),
            vec![cut],
            "certain again: record dropped"
        );
    }

    #[test]
    fn an_every_entry_needs_every_member() {
        let me = NodeId(1);
        let confs = vec![TailConf {
            conf: ConfState::new(nodes(&[1, 2, 3]), nodes(&[4])),
            near: false,
            every: true,
        }];
        let mut u = Uncertain::new(Some(Term(1)), &[]);
        for n in [2, 3] {
            u.report(NodeId(n), id(1, 1));
        }
        assert!(!u.may_campaign(me, &confs, id(1, 1)));
        u.report(NodeId(4), id(1, 1));
        assert!(u.may_campaign(me, &confs, id(1, 1)));
    }
}
