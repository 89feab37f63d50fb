//! What the metrics port shows: `/metrics` in the Prometheus text format, and the
//! readiness `/readyz` reports. The shell's HTTP port (`http_port.rs`) calls these between
//! turns; the simulator may call them after any step. Both only read the node.
//!
//! Metric names follow etcd's (`etcd_server_has_leader` → `kvraft_server_has_leader`, ...).
//! As in etcd, `kvraft_server_proposals_committed_total` and `..._applied_total` are gauges
//! (the commit and applied indexes), despite their suffix. The label sets are bounded: peers
//! by `MEMBERS_MAX`, commands by the command table (`telemetry.rs`).
//!
//! Readiness (`/readyz`): this node knows a leader of its current term (a leader: once it
//! committed an entry of its term, so it knows the commit index), and it has applied up to
//! the commit index it learned when it first knew a leader after starting. Liveness (`/livez`)
//! needs nothing from the node: an answer at all means the loop turns.

use log::info;

use super::net::Net;
use super::storage::Disk;
use super::telemetry::CatchUp;
use super::Node;
use crate::kv::StateMachine;
use crate::metrics::{Kind, TextWriter};
use crate::raft::{Message, MessageBody, Role, Status};

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// Time each apply with `now` (the shell's clock). Without it (the simulator), apply
    /// durations are not observed.
    pub fn time_applies_with(&mut self, now: fn() -> std::time::Instant) {
        self.telemetry.set_stopwatch(now);
    }

    /// Where this node serves its metrics port (`metrics=` in its config line).
    pub fn own_metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.cfg.member(self.id).and_then(|m| m.metrics)
    }

    /// A leader of the current term is known, and knows the commit index.
    fn leader_of_term(&self) -> bool {
        match self.raft.leader() {
            None => false,
            Some(l) if l == self.id => {
                self.raft.role() == Role::Leader
                    && self.raft.term_at(self.raft.commit()) == Some(self.raft.term())
            }
            Some(_) => true,
        }
    }

    /// A message from `peer` about to go to the core: heartbeat answers end round trips, and
    /// a leader's commit index is what catching up aims for.
    pub(super) fn observe_peer_message(&mut self, peer: crate::raft::NodeId, msg: &Message) {
        match msg.body {
            MessageBody::HeartbeatResp { .. } => {
                self.telemetry.heartbeat_answered(peer, msg.term, self.now)
            }
            MessageBody::Append { commit, .. } | MessageBody::Heartbeat { commit, .. }
                if msg.term >= self.raft.term() =>
            {
                self.telemetry.leader_commit_seen(commit)
            }
            _ => {}
        }
    }

    /// End of a turn: what telemetry follows from the state the turn left.
    pub(super) fn observe_turn(&mut self) {
        self.telemetry.leader_seen(self.raft.leader());
        let (lot, commit, applied) = (
            self.leader_of_term(),
            self.raft.commit(),
            self.applied.index(),
        );
        if let Some(target) = self.telemetry.catch_up(lot, commit, applied) {
            info!("applied up to commit index {target}, the one learned at start: ready");
        }
    }

    /// `/readyz`: `Ok` when ready, else why not (the body of the 503).
    pub fn readiness(&self) -> Result<(), String> {
        let term = self.raft.term();
        match self.raft.leader() {
            None => return Err(format!("no leader known at term {term}")),
            Some(_) if !self.leader_of_term() => {
                return Err(format!(
                    "leader at term {term}, not yet committed an entry of its term"
                ))
            }
            Some(_) => {}
        }
        match self.telemetry.catch_up_state() {
            CatchUp::Done => Ok(()),
            CatchUp::To(target) => Err(format!(
                "catching up: applied {} of commit index {target} (learned at start)",
                self.applied.index()
            )),
            CatchUp::Waiting => Err("no leader known since start".to_string()),
        }
    }

    /// `/metrics`: the Prometheus text exposition (format 0.0.4).
    pub fn metrics_text(&self) -> String {
        let mut w = TextWriter::new();
        let st = self.raft.status();
        self.write_server_metrics(&mut w, &st);
        self.write_storage_metrics(&mut w, &st);
        self.write_snapshot_metrics(&mut w);
        w.finish()
    }

    fn write_server_metrics(&self, w: &mut TextWriter, st: &Status) {
        let gauge = Kind::Gauge;
        let counter = Kind::Counter;
        let version = env!("CARGO_PKG_VERSION");
        w.family(
            "kvraft_build_info",
            gauge,
            "Always 1, labelled with the version.",
        );
        w.sample("kvraft_build_info", &[("version", version)], 1.0);
        let has_leader = f64::from(u8::from(st.leader.is_some()));
        let is_leader = f64::from(u8::from(st.role == Role::Leader));
        w.single(
            "kvraft_server_has_leader",
            gauge,
            "1 if a leader is known, else 0.",
            has_leader,
        );
        w.single(
            "kvraft_server_is_leader",
            gauge,
            "1 if this node is the leader.",
            is_leader,
        );
        let ready = f64::from(u8::from(self.readiness().is_ok()));
        w.single(
            "kvraft_server_ready",
            gauge,
            "1 when /readyz answers 200.",
            ready,
        );
        w.single(
            "kvraft_server_term",
            gauge,
            "The current term.",
            st.term.0 as f64,
        );
        w.single(
            "kvraft_server_leader_changes_seen_total",
            counter,
            "Leader changes seen by this node (the first leader included).",
            self.telemetry.leader_changes() as f64,
        );
        w.single(
            "kvraft_server_proposals_committed_total",
            gauge,
            "The commit index (a gauge, as in etcd).",
            st.commit.0 as f64,
        );
        w.single(
            "kvraft_server_proposals_applied_total",
            gauge,
            "The applied index (a gauge, as in etcd).",
            self.applied.index().0 as f64,
        );
        let (forwards, reads, writes) = self.pending.counts();
        w.single(
            "kvraft_server_proposals_pending",
            gauge,
            "Writes this node proposed that wait to be applied.",
            writes as f64,
        );
        w.single(
            "kvraft_server_proposals_failed_total",
            counter,
            "Writes this node proposed that were answered -TRYAGAIN or -UNKNOWN (leadership lost, a snapshot installed).",
            self.telemetry.failed() as f64,
        );
        w.single(
            "kvraft_server_reads_pending",
            gauge,
            "Linearizable reads waiting.",
            reads as f64,
        );
        w.single(
            "kvraft_server_forwards_pending",
            gauge,
            "Requests forwarded to the leader, waiting for its answer.",
            forwards as f64,
        );
        w.single(
            "kvraft_server_read_only",
            gauge,
            "1 while a full disk makes this node refuse writes.",
            f64::from(u8::from(self.stored.read_only().is_some())),
        );
        w.family(
            "kvraft_server_apply_duration_seconds",
            Kind::Histogram,
            "Time to apply one committed entry to the state machine.",
        );
        w.histogram(
            "kvraft_server_apply_duration_seconds",
            &[],
            self.telemetry.apply_seconds(),
        );
        w.single(
            "kvraft_server_entries_applied_total",
            counter,
            "Entries applied since start.",
            self.stats.entries_applied as f64,
        );
        self.write_connection_metrics(w);
    }

    fn write_connection_metrics(&self, w: &mut TextWriter) {
        let (gauge, counter) = (Kind::Gauge, Kind::Counter);
        w.single(
            "kvraft_server_client_connections",
            gauge,
            "Client connections open.",
            self.conns.client_count() as f64,
        );
        w.single(
            "kvraft_server_peer_connections",
            gauge,
            "Peer connections open.",
            self.conns.peer_count() as f64,
        );
        w.single(
            "kvraft_server_connections_received_total",
            counter,
            "Client and peer connections accepted.",
            self.stats.connections_received as f64,
        );
        w.single(
            "kvraft_server_connections_rejected_total",
            counter,
            "Connections refused at the max_clients or peer limit.",
            self.stats.rejected_connections as f64,
        );
        let name = "kvraft_server_commands_total";
        w.family(
            name,
            counter,
            "Client commands received, by command name (unknown names: other).",
        );
        for (command, n) in self.telemetry.commands() {
            w.sample(name, &[("command", command)], n as f64);
        }
        let name = "kvraft_network_peer_round_trip_time_seconds";
        w.family(
            name,
            Kind::Histogram,
            "Heartbeat round trips to each peer, from the loop turn that sent one to the turn that read its answer.",
        );
        for (peer, h) in self.telemetry.round_trips() {
            w.histogram(name, &[("to", &peer.to_string())], h);
        }
    }

    fn write_storage_metrics(&self, w: &mut TextWriter, st: &Status) {
        let (gauge, counter) = (Kind::Gauge, Kind::Counter);
        if let Some(h) = self.stored.disk().fsync_seconds() {
            let name = "kvraft_disk_wal_fsync_duration_seconds";
            w.family(name, Kind::Histogram, "Time of each log sync (fdatasync).");
            w.histogram(name, &[], h);
        }
        w.single(
            "kvraft_disk_wal_syncs_total",
            counter,
            "Log syncs (one per turn that appended).",
            self.stats.syncs as f64,
        );
        let entries = (st.last_index.0 + 1).saturating_sub(st.first_index.0);
        w.single(
            "kvraft_log_first_index",
            gauge,
            "The first index in the log.",
            st.first_index.0 as f64,
        );
        w.single(
            "kvraft_log_last_index",
            gauge,
            "The last index in the log.",
            st.last_index.0 as f64,
        );
        w.single(
            "kvraft_log_entries",
            gauge,
            "Entries in the log (not compacted into a snapshot).",
            entries as f64,
        );
        w.single(
            "kvraft_log_durable_index",
            gauge,
            "The last index synced to this node's disk.",
            self.stored.durable_last().0 as f64,
        );
        let log = self.stored.disk().log_stats();
        w.single(
            "kvraft_log_segments",
            gauge,
            "Log segment files.",
            log.segments as f64,
        );
        w.single(
            "kvraft_log_disk_bytes",
            gauge,
            "Bytes of log segment files on disk.",
            log.bytes as f64,
        );
        w.single(
            "kvraft_state_keys",
            gauge,
            "Keys in the state machine.",
            self.applied.sm().len() as f64,
        );
        if let Some((data, overhead)) = self.applied.sm().memory_bytes() {
            w.single(
                "kvraft_state_data_bytes",
                gauge,
                "Bytes of keys and values.",
                data as f64,
            );
            w.single(
                "kvraft_state_overhead_bytes",
                gauge,
                "Heap bytes of the state machine beyond its keys and values.",
                overhead as f64,
            );
        }
    }

    fn write_snapshot_metrics(&self, w: &mut TextWriter) {
        let (gauge, counter) = (Kind::Gauge, Kind::Counter);
        let s = &self.stats;
        w.single(
            "kvraft_snapshot_save_total",
            counter,
            "Snapshots this node wrote.",
            s.snapshots_taken as f64,
        );
        w.single(
            "kvraft_snapshot_save_failures_total",
            counter,
            "Snapshots that failed (fork, child, or killed past its deadline).",
            s.snapshot_failures as f64,
        );
        let name = "kvraft_snapshot_save_duration_seconds";
        w.family(
            name,
            Kind::Histogram,
            "Time to write a snapshot (the forked child's run).",
        );
        w.histogram(name, &[], self.telemetry.snapshot_seconds());
        w.single(
            "kvraft_snapshot_save_bytes_total",
            counter,
            "Bytes of snapshots this node wrote.",
            self.telemetry.snapshot_bytes() as f64,
        );
        w.single(
            "kvraft_snapshot_last_bytes",
            gauge,
            "Size of the last snapshot written.",
            s.last_snapshot_bytes as f64,
        );
        w.single(
            "kvraft_snapshot_fork_seconds",
            gauge,
            "How long the last snapshot's fork() held the loop.",
            s.last_snapshot_fork.as_secs_f64(),
        );
        w.single(
            "kvraft_snapshot_installed_total",
            counter,
            "Snapshots received from the leader and installed.",
            s.snapshots_installed as f64,
        );
        w.single(
            "kvraft_snapshot_index",
            gauge,
            "The last index of the snapshot on disk.",
            self.stored.snapshot_meta().last.index.0 as f64,
        );
    }
}
