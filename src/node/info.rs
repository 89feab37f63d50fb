//! Commands the node answers itself (not the state machine): PING, ECHO, QUIT, INFO,
//! COMMAND, CLIENT LIST, SELECT, CONFIG GET, TIME, WAIT, and the cluster commands MEMBER,
//! TRANSFER, SNAPSHOT. (HELLO, MULTI and the other CLIENT subcommands are per connection:
//! `client::session`; COMMAND, CONFIG, TIME and WAIT replies: `client::server_cmds`.)
//!
//! `INFO` follows Redis's layout (`# Section` headers, `field:value` lines) so Redis tooling
//! can read it; its `raft` section is what `kvctl status` prints.

use std::fmt::Write as _;

use super::clients::{no_leader, Dispatch};
use super::net::Net;
use super::storage::Disk;
use super::{Node, ReplyTo};
use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::server_cmds;
use crate::client::Value;
use crate::kv::command::parse_i64;
use crate::kv::StateMachine;
use crate::limits::MEMBERS_MAX;
use crate::raft::{ConfChange, ConfChangeOp, NodeId, ProposeError, Role as RaftRole};

const SECTIONS: [&str; 6] = [
    "server",
    "clients",
    "persistence",
    "stats",
    "raft",
    "keyspace",
];

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// `Some` when the command is the node's own; `None` hands it to the state machine.
    pub(super) fn node_command(&mut self, to: ReplyTo, args: &[Vec<u8>]) -> Option<Dispatch> {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        let d = match command_name(args.first()?, &mut buf)? {
            "ping" => match args.len() {
                1 => Dispatch::Reply(Value::Simple("PONG".into())),
                2 => Dispatch::Reply(Value::Bulk(args[1].clone())),
                _ => Dispatch::Reply(arity("ping")),
            },
            "echo" if args.len() == 2 => Dispatch::Reply(Value::Bulk(args[1].clone())),
            "echo" => Dispatch::Reply(arity("echo")),
            "quit" => Dispatch::ReplyAndClose(Value::ok()),
            "command" => Dispatch::Reply(server_cmds::command(args)),
            // The other CLIENT subcommands are the connection's own (`client::session`).
            "client" => Dispatch::Reply(self.client_list(args)),
            "time" => Dispatch::Reply(server_cmds::time(args, wall_clock())),
            "wait" => Dispatch::Reply(server_cmds::wait(args, self.applied.conf().voters.len())),
            "select" if args.len() == 2 => Dispatch::Reply(match parse_i64(&args[1]) {
                Some(0) => Value::ok(),
                Some(_) => Value::error("ERR DB index is out of range"),
                None => Value::error("ERR value is not an integer or out of range"),
            }),
            "select" => Dispatch::Reply(arity("select")),
            "config" => Dispatch::Reply(server_cmds::config(args)),
            // RESP3 clients get INFO as a verbatim string, as from Redis 7.
            "info" => Dispatch::Reply(Value::Verbatim {
                format: *b"txt",
                text: self.info(args.get(1)).into_bytes(),
            }),
            "member" => self.member_command(to, args),
            "transfer" => self.transfer_command(args),
            "snapshot" if args.len() > 1 => self.backup_command(args),
            "snapshot" | "bgsave" => {
                self.snapshot_requested = true;
                Dispatch::Reply(Value::Simple("Background saving started".into()))
            }
            _ => return None,
        };
        Some(d)
    }

    fn member_command(&mut self, to: ReplyTo, args: &[Vec<u8>]) -> Dispatch {
        let sub = args
            .get(1)
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default();
        let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).into_owned());
        let node = |i: usize| {
            text(i)
                .and_then(|t| t.parse::<u64>().ok())
                .filter(|&n| n > 0)
                .map(NodeId)
        };
        let (op, id, context) = match sub.as_slice() {
            b"LIST" => return Dispatch::Reply(self.member_list()),
            b"ADD" if args.len() == 5 || args.len() == 6 => {
                let Some(id) = node(2) else { return Dispatch::Reply(Value::error("ERR bad node id")) };
                let (peer, client) = (text(3).unwrap_or_default(), text(4).unwrap_or_default());
                if peer.parse::<std::net::SocketAddr>().is_err() || client.parse::<std::net::SocketAddr>().is_err() {
                    return Dispatch::Reply(Value::error("ERR addresses must be host:port IP addresses"));
                }
                let learner = args.get(5).is_some_and(|a| a.eq_ignore_ascii_case(b"LEARNER"));
                // Always a learner first (issue 13): a voter is promoted once it connected
                // and caught up (`membership.rs`), so adding one never costs availability.
                // A current member (a demotion, or new addresses) keeps the incarnation it was
                // admitted as: recording it as invited would take its vote away until a leader
                // re-admits it, and a leader that demoted itself, its entry reaching no other
                // node, then left no node able to win (found by the simulator, seed 4035).
                let admitted = self.ids.log().newest().get(id).map_or(0, |r| r.incarnation);
                let context = super::membership::invited(&peer, &client, admitted, !learner);
                (ConfChangeOp::AddLearner, id, context)
            }
            b"PROMOTE" if args.len() == 3 => match node(2) {
                Some(id) => (ConfChangeOp::AddVoter, id, Vec::new()),
                None => return Dispatch::Reply(Value::error("ERR bad node id")),
            },
            b"REMOVE" if args.len() == 3 => match node(2) {
                Some(id) => (ConfChangeOp::Remove, id, Vec::new()),
                None => return Dispatch::Reply(Value::error("ERR bad node id")),
            },
            _ => {
                return Dispatch::Reply(Value::error(
                    "ERR usage: MEMBER LIST | MEMBER ADD <id> <peer> <client> [LEARNER] | MEMBER PROMOTE <id> | MEMBER REMOVE <id>",
                ))
            }
        };
        if op != ConfChangeOp::Remove {
            let conf = self.raft.status().conf;
            let known = conf.is_voter(id) || conf.is_learner(id);
            if !known && conf.members().count() >= MEMBERS_MAX {
                // Checked before proposing: a membership past the limit cannot be encoded in
                // a snapshot or a frame (issue 12: it panicked).
                return Dispatch::Reply(Value::error(format!(
                    "ERR the cluster has {MEMBERS_MAX} members, the most it may have"
                )));
            }
        }
        let context = if context.is_empty() && op == ConfChangeOp::AddVoter {
            // A promotion keeps the member's record (the incarnation it admitted). A member
            // not admitted as any incarnation yet could never vote: promoting it could leave
            // a quorum that can never form (found by the simulator, seed 40).
            let st = self.raft.status();
            let caught_up = st
                .progress
                .iter()
                .any(|p| p.id == id && p.match_index >= st.commit);
            match self.ids.log().newest().get(id) {
                // Not before it holds the log to the commit index: until its log holds its own
                // record it does not vote (`membership.rs`), and a leader needing its vote
                // could then never be elected (found by the simulator, seed 79).
                Some(_) if !caught_up && st.role == RaftRole::Leader => {
                    return Dispatch::Reply(Value::error(format!(
                        "ERR node {id} has not caught up yet; try again once it has (kvctl status)"
                    )))
                }
                Some(r) if r.incarnation != 0 => r.encode(),
                _ => {
                    return Dispatch::Reply(Value::error(format!(
                        "ERR node {id} has not connected as an admitted member yet; a voter added by MEMBER ADD is promoted on its own once caught up"
                    )))
                }
            }
        } else {
            context
        };
        let cc = ConfChange {
            op,
            node: id,
            context,
        };
        let proposed = match op {
            ConfChangeOp::AddLearner => self.raft.propose_readmission(cc),
            _ => self.raft.propose_conf_change(cc),
        };
        match proposed {
            Ok(entry) => {
                self.pending.add_waiter(entry.index, entry.term, to);
                Dispatch::Pending
            }
            Err(ProposeError::NotLeader { leader }) => match leader.filter(|&l| l != self.id) {
                Some(l) => Dispatch::Reply(Value::error(format!(
                    "ERR not the leader; send membership changes to node {l} ({})",
                    self.peers
                        .member(l)
                        .map(|m| m.client.to_string())
                        .unwrap_or_default()
                ))),
                None => Dispatch::Reply(no_leader()),
            },
            Err(e) => Dispatch::Reply(Value::error(format!("ERR {e}"))),
        }
    }

    /// `CLIENT LIST`: one line per client connection of this node.
    fn client_list(&self, args: &[Vec<u8>]) -> Value {
        if args.len() != 2 || !args[1].eq_ignore_ascii_case(b"list") {
            return Value::error("ERR syntax error");
        }
        let mut text = String::new();
        for (_, c) in self.conns.iter() {
            if let super::ConnKind::Client(st) = &c.kind {
                text.push_str(&st.session.info_line(self.now));
            }
        }
        Value::Verbatim {
            format: *b"txt",
            text: text.into_bytes(),
        }
    }

    fn member_list(&self) -> Value {
        let conf = self.applied.conf();
        let rows = self
            .peers
            .members()
            .iter()
            .map(|(id, m)| {
                let role = if conf.is_voter(*id) {
                    "voter"
                } else if conf.is_learner(*id) {
                    "learner"
                } else {
                    "none"
                };
                Value::Bulk(format!("{id} {} {} {role}", m.peer, m.client).into_bytes())
            })
            .collect();
        Value::Array(rows)
    }

    fn transfer_command(&mut self, args: &[Vec<u8>]) -> Dispatch {
        let target = args
            .get(1)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|_| args.len() == 2);
        let Some(target) = target else {
            return Dispatch::Reply(Value::error("ERR usage: TRANSFER <node id>"));
        };
        match self.raft.transfer_leadership(NodeId(target)) {
            Ok(()) => Dispatch::Reply(Value::ok()),
            Err(e) => Dispatch::Reply(Value::error(format!("ERR {e}"))),
        }
    }

    /// The INFO text: every section, or the one named.
    fn info(&self, section: Option<&Vec<u8>>) -> String {
        let want = section.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let mut out = String::new();
        for name in SECTIONS {
            let all = matches!(
                want.as_deref(),
                None | Some("all") | Some("everything") | Some("default")
            );
            if all || want.as_deref() == Some(name) {
                if !out.is_empty() {
                    out.push_str("\r\n");
                }
                self.info_section(name, &mut out);
            }
        }
        out
    }

    fn info_section(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# {}\r", capitalize(name));
        let mut kv = |k: &str, v: String| {
            let _ = write!(out, "{k}:{v}\r\n");
        };
        match name {
            "server" => {
                kv("kvraft_version", env!("CARGO_PKG_VERSION").into());
                kv("process_id", std::process::id().to_string());
                kv("node_id", self.id.to_string());
                if let Some(m) = self.peers.member(self.id) {
                    kv("tcp_port", m.client.port().to_string());
                    kv("peer_addr", m.peer.to_string());
                }
                let up = self
                    .stats
                    .started
                    .map(|s| self.now.duration_since(s).as_secs())
                    .unwrap_or(0);
                kv("uptime_in_seconds", up.to_string());
                kv("tick_ms", self.cfg.tick_ms.to_string());
            }
            "clients" => {
                kv("connected_clients", self.conns.client_count().to_string());
                kv("peer_connections", self.conns.peer_count().to_string());
                kv("maxclients", self.cfg.max_clients.to_string());
                let (forwards, reads, writes) = self.pending.counts();
                kv("forwarded_pending", forwards.to_string());
                kv("reads_pending", reads.to_string());
                kv("writes_pending", writes.to_string());
            }
            "persistence" => {
                let log = self.stored.disk().log_stats();
                kv(
                    "log_first_index",
                    log.first.map(|i| i.0).unwrap_or(0).to_string(),
                );
                kv(
                    "log_last_index",
                    log.last.map(|i| i.0).unwrap_or(0).to_string(),
                );
                kv("log_segments", log.segments.to_string());
                kv("log_disk_bytes", log.bytes.to_string());
                kv("log_syncs", self.stats.syncs.to_string());
                let (deferred, fallbacks) = self.stored.deferral_counts();
                kv("log_writes_sync_deferred", deferred.to_string());
                kv("log_sync_slow_followers", fallbacks.to_string());
                kv(
                    "snapshot_index",
                    self.stored.snapshot_meta().last.index.to_string(),
                );
                kv(
                    "snapshot_term",
                    self.stored.snapshot_meta().last.term.to_string(),
                );
                kv(
                    "snapshot_in_progress",
                    u8::from(self.stored.disk().snapshot_running()).to_string(),
                );
                kv("snapshots_taken", self.stats.snapshots_taken.to_string());
                kv(
                    "snapshots_installed",
                    self.stats.snapshots_installed.to_string(),
                );
                kv(
                    "snapshot_failures",
                    self.stats.snapshot_failures.to_string(),
                );
                kv(
                    "last_snapshot_ms",
                    self.stats.last_snapshot_took.as_millis().to_string(),
                );
                kv(
                    "last_snapshot_fork_us",
                    self.stats.last_snapshot_fork.as_micros().to_string(),
                );
                kv(
                    "last_snapshot_bytes",
                    self.stats.last_snapshot_bytes.to_string(),
                );
                kv(
                    "read_only",
                    self.stored.read_only().unwrap_or("no").to_string(),
                );
            }
            "stats" => {
                kv(
                    "total_connections_received",
                    self.stats.connections_received.to_string(),
                );
                kv(
                    "total_commands_processed",
                    self.stats.commands_processed.to_string(),
                );
                kv(
                    "rejected_connections",
                    self.stats.rejected_connections.to_string(),
                );
                kv("entries_applied", self.stats.entries_applied.to_string());
                kv("read_rounds", self.raft.read_rounds().to_string());
                let fr = self.pending.follower_reads;
                kv("reads_served_locally", fr.served_locally.to_string());
                kv("read_index_asked", fr.asked.to_string());
                kv("read_index_answered", fr.answered.to_string());
                self.info_ttl(&mut kv);
            }
            "raft" => self.info_raft(&mut kv),
            "keyspace" => {
                kv("keys", self.applied.sm().len().to_string());
                kv(
                    "state_hash",
                    format!("{:016x}", self.applied.sm().state_hash()),
                );
            }
            _ => unreachable!("unknown section {name}"),
        }
    }

    fn info_raft(&self, kv: &mut impl FnMut(&str, String)) {
        let st = self.raft.status();
        let role = match st.role {
            RaftRole::Leader => "leader",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::PreCandidate => "precandidate",
        };
        let role = if !st.conf.is_voter(self.id) && st.role == RaftRole::Follower {
            if st.conf.is_learner(self.id) {
                "learner"
            } else {
                "none"
            }
        } else {
            role
        };
        kv("node_id", self.id.to_string());
        kv("role", role.into());
        kv("term", st.term.to_string());
        kv("leader_id", st.leader.map(|l| l.0).unwrap_or(0).to_string());
        let leader_client = st
            .leader
            .and_then(|l| self.peers.member(l))
            .map(|m| m.client.to_string());
        kv("leader_client_addr", leader_client.unwrap_or_default());
        kv("commit_index", st.commit.to_string());
        kv("applied_index", self.applied.index().to_string());
        kv("first_log_index", st.first_index.to_string());
        kv("last_log_index", st.last_index.to_string());
        kv("durable_index", self.stored.durable_last().to_string());
        let ids = |v: &[NodeId]| {
            v.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        kv(
            "election_timeout_ms",
            self.cfg.election_timeout_ms.to_string(),
        );
        kv("voters", ids(&st.conf.voters));
        kv("learners", ids(&st.conf.learners));
        // Issue 13: whether this node votes (its incarnation is the recorded voter), and its
        // identity.
        kv("voting", u8::from(st.voting).to_string());
        // Its log tail was cut at start-up and may have lost acknowledged entries: it waits
        // for its peers' positions before it votes or campaigns (raft/uncertain.rs).
        kv(
            "log_uncertain",
            u8::from(st.uncertain.is_some()).to_string(),
        );
        kv("cluster_id", format!("{:032x}", self.ids.cluster()));
        kv("incarnation", format!("{:032x}", self.ids.incarnation()));
        kv(
            "state_hash",
            format!("{:016x}", self.applied.sm().state_hash()),
        );
        // Issue 17: what `kvctl status` shows of each member, as the leader sees it: how
        // many entries it is behind the leader's log, and how long since it was heard from.
        for p in &st.progress {
            let lag = st.last_index.0.saturating_sub(p.match_index.0);
            let contact = self
                .contact
                .since(p.id, self.now)
                .map_or(-1, |d| d.as_millis() as i64);
            kv(
                &format!("peer_{}", p.id),
                format!(
                    "match={},next={},lag={lag},last_contact_ms={contact}",
                    p.match_index, p.next_index
                ),
            );
        }
    }
}

/// Wall-clock time for `TIME` (the one command that reports it; nothing else depends on it).
fn wall_clock() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn arity(cmd: &str) -> Value {
    Value::error(format!("ERR wrong number of arguments for '{cmd}' command"))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
