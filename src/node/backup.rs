//! Backups over the client port: `kvctl snapshot save FILE` asks the leader for a snapshot
//! that covers every write it has applied, then reads the snapshot file in bounded chunks.
//! The file on the wire is the node's snapshot file byte for byte (format: `snapshot/mod.rs`,
//! with its own CRC32C trailer); kvctl wraps it in the backup file (`snapshot/backup.rs`).
//!
//! ```text
//! SNAPSHOT SAVE                    (the leader) -> :N, the applied index the backup will
//!                                  cover at least; a snapshot is started if the newest on
//!                                  disk is older. A follower answers -ERR naming the leader.
//! SNAPSHOT OPEN N                  -> *3 :term :index :size once this node's newest snapshot
//!                                  covers N (0: any snapshot) (it is pinned: kept open for the reads, even if
//!                                  compaction removes its name); -TRYAGAIN while it is being
//!                                  written (a failed or missing one is started again).
//! SNAPSHOT READ term index offset  -> $bytes of the pinned snapshot from `offset`, at most
//!                                  BACKUP_CHUNK_BYTES; empty at the end of the file.
//! ```
//!
//! Why pull, not push: each reply is one bounded allocation (never the whole snapshot in one
//! reply), the client sets the pace (no output queue grows behind a slow reader), and the
//! node keeps no per-client streaming state besides the one pin.
//!
//! Must not: hold more than one snapshot open for backups, or keep it past `PIN_IDLE` without
//! a read (the pin holds the file's disk space after compaction removed its name).
//!
//! Invariants:
//! 1. The pin, if any, is a snapshot this node wrote or installed, opened by its meta (the
//!    disk checked the file's header names it).

use std::time::{Duration, Instant};

use log::info;

use super::clients::{no_leader, Dispatch};
use super::net::Net;
use super::snapshot::{ChunkSource, SnapshotSender};
use super::storage::Disk;
use super::Node;
use crate::client::Value;
use crate::kv::StateMachine;
use crate::limits::SNAPSHOT_CHUNK_SIZE_MAX;
use crate::raft::{EntryId, LogIndex, Role};

/// Bytes of a snapshot one `SNAPSHOT READ` returns at most.
pub const BACKUP_CHUNK_BYTES: usize = SNAPSHOT_CHUNK_SIZE_MAX;
/// A pin not read from for this long is dropped.
const PIN_IDLE: Duration = Duration::from_secs(60);

/// The snapshot a backup reads (invariant 1).
pub(super) struct BackupPin<F: ChunkSource> {
    pinned: Option<Pinned<F>>,
}

struct Pinned<F: ChunkSource> {
    sender: SnapshotSender<F>,
    last_read: Instant,
}

impl<F: ChunkSource> Default for BackupPin<F> {
    fn default() -> Self {
        BackupPin { pinned: None }
    }
}

impl<F: ChunkSource> BackupPin<F> {
    fn get(&mut self, last: EntryId) -> Option<&mut Pinned<F>> {
        self.pinned
            .as_mut()
            .filter(|p| p.sender.meta().last == last)
    }

    pub(super) fn check_invariants(&self) {
        if let Some(p) = &self.pinned {
            assert!(
                p.sender.meta().last.index > LogIndex(0),
                "a backup pinned the empty snapshot"
            );
        }
    }
}

impl<S: StateMachine, D: Disk, N: Net> Node<S, D, N> {
    /// `SNAPSHOT SAVE | OPEN n | READ term index offset` (see the module header).
    pub(super) fn backup_command(&mut self, args: &[Vec<u8>]) -> Dispatch {
        let sub = args[1].to_ascii_uppercase();
        let num = |i: usize| {
            args.get(i)
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|t| t.parse::<u64>().ok())
        };
        let reply = match (sub.as_slice(), args.len()) {
            (b"SAVE", 2) => self.backup_save(),
            (b"OPEN", 3) => match num(2) {
                Some(n) => self.backup_open(LogIndex(n)),
                None => Value::error("ERR SNAPSHOT OPEN takes an index"),
            },
            (b"READ", 5) => match (num(2), num(3), num(4)) {
                (Some(t), Some(i), Some(o)) => self.backup_read(
                    EntryId {
                        term: crate::raft::Term(t),
                        index: LogIndex(i),
                    },
                    o,
                ),
                _ => Value::error("ERR SNAPSHOT READ takes a term, an index and an offset"),
            },
            _ => Value::error(
                "ERR usage: SNAPSHOT | SNAPSHOT SAVE | SNAPSHOT OPEN <index> | SNAPSHOT READ <term> <index> <offset>",
            ),
        };
        Dispatch::Reply(reply)
    }

    /// The applied index a backup through this leader covers; starts a snapshot if needed.
    fn backup_save(&mut self) -> Value {
        if self.raft.role() != Role::Leader {
            return match self.raft.leader().filter(|&l| l != self.id) {
                Some(l) => Value::error(format!(
                    "ERR not the leader; send SNAPSHOT SAVE to node {l} ({})",
                    self.peers
                        .member(l)
                        .map(|m| m.client.to_string())
                        .unwrap_or_default()
                )),
                None => no_leader(),
            };
        }
        let want = self.applied.index();
        if self.stored.snapshot_meta().last.index < want {
            self.snapshot_requested = true;
            self.maybe_snapshot();
        }
        info!("backup: snapshot SAVE covering index {want}");
        Value::Integer(want.0 as i64)
    }

    /// Pin the newest snapshot once it covers `want`.
    fn backup_open(&mut self, want: LogIndex) -> Value {
        let meta = self.stored.snapshot_meta().clone();
        if meta.last.index == LogIndex(0) || meta.last.index < want {
            if !self.stored.disk().snapshot_running() {
                // Asked for (SAVE) but failed, or never asked here (leadership moved).
                self.snapshot_requested = true;
                self.maybe_snapshot();
            }
            return Value::error(format!(
                "TRYAGAIN the snapshot covering index {want} is not written yet (newest: {})",
                meta.last
            ));
        }
        match self
            .stored
            .disk_mut()
            .snapshot_open(&meta, BACKUP_CHUNK_BYTES, 1)
        {
            Ok(sender) => {
                let size = sender.total_size();
                self.backup.pinned = Some(Pinned {
                    sender,
                    last_read: self.now,
                });
                info!(
                    "backup: snapshot {} ({size} bytes) open for reading",
                    meta.last
                );
                Value::Array(vec![
                    Value::Integer(meta.last.term.0 as i64),
                    Value::Integer(meta.last.index.0 as i64),
                    Value::Integer(size as i64),
                ])
            }
            Err(e) => Value::error(format!("ERR opening snapshot {}: {e}", meta.last)),
        }
    }

    /// Up to `BACKUP_CHUNK_BYTES` of the pinned snapshot `last`, from `offset`.
    fn backup_read(&mut self, last: EntryId, offset: u64) -> Value {
        let now = self.now;
        let Some(p) = self.backup.get(last) else {
            return Value::error(format!(
                "ERR no backup open for snapshot {last} (SNAPSHOT OPEN first; a pin idle for {PIN_IDLE:?} is dropped)"
            ));
        };
        let size = p.sender.total_size();
        if offset > size {
            return Value::error(format!(
                "ERR offset {offset} is past the snapshot's {size} bytes"
            ));
        }
        let len = (size - offset).min(BACKUP_CHUNK_BYTES as u64) as usize;
        p.last_read = now;
        match p.sender.read_at(offset, len) {
            Ok(data) => Value::Bulk(data),
            Err(e) => Value::error(format!("ERR reading snapshot {last}: {e}")),
        }
    }

    /// Housekeeping: drop a pin nobody reads.
    pub(super) fn expire_backup_pin(&mut self) {
        let idle = self
            .backup
            .pinned
            .as_ref()
            .is_some_and(|p| self.now.saturating_duration_since(p.last_read) >= PIN_IDLE);
        if idle {
            self.backup.pinned = None;
        }
    }
}
