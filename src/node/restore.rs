//! `kvraftd --config C --id N --restore FILE`: create node N's data directory from a backup
//! (`snapshot/backup.rs`), then exit. Run on every member of the new cluster with the same
//! file; then start one of them with `--bootstrap` and the others plainly, as when forming
//! any cluster (`startup.rs`).
//!
//! What a restored data directory holds: a new incarnation with no cluster id yet, a hard
//! state at the backup's term, and one snapshot at the backup's index and term holding the
//! backup's state machine and NO membership (no voters, an empty member table). So the
//! restored directory belongs to no cluster: the node started with `--bootstrap` makes a new
//! cluster id and a membership of itself alone, in one log entry right after the snapshot;
//! the others adopt that cluster id from its Hello and are admitted learner-first like any
//! configured member. They already hold the snapshot the leader's log starts after, so no
//! InstallSnapshot is needed: the first append matches at the snapshot.
//!
//! Indexes are kept (not restarted at 1): session ids, WATCH's modification indexes and the
//! last deletion index in the state machine are log indexes, and must stay below every new
//! entry's.
//!
//! Must not: leave anything behind on failure (the directory is built under a temporary
//! name next to the target and renamed into place only when complete), or write into a data
//! directory that holds anything.

use std::fs;
use std::path::{Path, PathBuf};

use log::info;

use super::membership::MemberTable;
use super::snapshot::{self, SnapshotHeader};
use super::storage::{Disk, RealDisk};
use super::NodeError;
use crate::config::Config;
use crate::kv::{KvStore, StateMachine};
use crate::raft::{ConfState, HardState, SnapshotMeta};
use crate::wal::{ClusterId, Identity, IncarnationId};

/// Exit status of a refused restore (a non-empty data directory, a damaged backup).
pub const EXIT_RESTORE_REFUSED: u8 = 2;

/// What a restore created.
#[derive(Debug)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub last: crate::raft::EntryId,
    pub keys: usize,
    pub state_hash: u64,
}

/// Create `cfg.data_dir` from the backup at `backup` (see the module header).
pub fn restore(cfg: &Config, backup: &Path) -> Result<Restored, NodeError> {
    // Without a trailing `/`, so that the temporary sibling is not inside it.
    let dir: PathBuf = cfg.data_dir.components().collect();
    let refuse = |msg: String| NodeError(msg, EXIT_RESTORE_REFUSED);
    if let Ok(mut entries) = fs::read_dir(&dir) {
        if entries.next().is_some() {
            return Err(refuse(format!(
                "the data directory {} is not empty: a restore creates a new one (move it aside first)",
                dir.display()
            )));
        }
    } else if dir.exists() {
        return Err(refuse(format!("{} is not a directory", dir.display())));
    }
    let tmp = snapshot::with_suffix(&dir, ".restore-tmp");
    if tmp.exists() {
        // A restore that died half-way: never part of any cluster.
        fs::remove_dir_all(&tmp)
            .map_err(|e| NodeError::new(format!("removing {}: {e}", tmp.display())))?;
    }
    let result = build(cfg, backup, &tmp).and_then(|r| {
        // rename(2) replaces an empty directory (one made by the service's installer).
        fs::rename(&tmp, &dir)
            .and_then(|()| snapshot::sync_parent(&dir))
            .map_err(|e| {
                NodeError::new(format!(
                    "moving {} to {}: {e}",
                    tmp.display(),
                    dir.display()
                ))
            })?;
        Ok(r)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let (last, keys, state_hash) = result
        .map_err(|NodeError(msg, code)| NodeError(format!("{msg} (nothing was restored)"), code))?;
    info!(
        "restored snapshot {last} ({keys} keys, state hash {state_hash:016x}) into {}",
        dir.display()
    );
    Ok(Restored {
        data_dir: dir,
        last,
        keys,
        state_hash,
    })
}

/// Build the data directory in `tmp`: (last, keys, state hash).
fn build(
    cfg: &Config,
    backup: &Path,
    tmp: &Path,
) -> Result<(crate::raft::EntryId, usize, u64), NodeError> {
    let refuse = |msg: String| NodeError(msg, EXIT_RESTORE_REFUSED);
    fs::create_dir_all(tmp)
        .map_err(|e| NodeError::new(format!("creating {}: {e}", tmp.display())))?;
    let extracted = tmp.join("backup.snapshot");
    let header = snapshot::extract_backup(backup, &extracted).map_err(refuse)?;
    let mut sm = KvStore::new(cfg.seed.unwrap_or(cfg.id.0));
    let (loaded, _) = snapshot::load_snapshot_file(&extracted, &mut sm).map_err(|e| {
        refuse(format!(
            "backup {}: the snapshot inside: {e}",
            backup.display()
        ))
    })?;
    if loaded.meta.last != header.last {
        return Err(refuse(format!(
            "backup {}: the header names snapshot {} but the snapshot inside is {}",
            backup.display(),
            header.last,
            loaded.meta.last
        )));
    }
    fs::remove_file(&extracted)
        .map_err(|e| NodeError::new(format!("removing {}: {e}", extracted.display())))?;
    let last = header.last;
    let mut disk = RealDisk::open(tmp, cfg.segment_bytes).map_err(NodeError::new)?;
    let mut incarnation = IncarnationId(0);
    while incarnation.0 == 0 {
        incarnation = IncarnationId::random().map_err(|e| NodeError::new(e.to_string()))?;
    }
    // No cluster id: `--bootstrap` makes a new one, the others adopt it (module header).
    let identity = Identity {
        cluster: ClusterId(0),
        incarnation,
    };
    disk.store_identity(&identity)
        .map_err(|e| NodeError::new(format!("storing the identity: {e}")))?;
    disk.save_hard_state(&HardState {
        term: last.term,
        vote: None,
        uncertain: None,
        tail_confs: Vec::new(),
    })
    .map_err(|e| NodeError::new(format!("saving the hard state: {e}")))?;
    let header = SnapshotHeader {
        meta: SnapshotMeta {
            last,
            conf: ConfState::new(vec![], vec![]),
        },
        extra: MemberTable::default().encode(),
    };
    // Offline (the node is not running): as fast as the disk goes.
    snapshot::write_snapshot_file(tmp, &header, &sm, snapshot::WriteRate::Unlimited)
        .map_err(|e| NodeError::new(format!("writing the snapshot: {e}")))?;
    Ok((last, sm.len(), sm.state_hash()))
}
