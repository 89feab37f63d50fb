//! Durable storage: the mmap-backed segmented Raft log and the atomic hard state (the design's
//! `log/`, named `wal` so it never shadows the `log` crate).
//!
//! | file             | owns                                                             |
//! |------------------|------------------------------------------------------------------|
//! | `format.rs`      | the segment byte layout, record encode/check (pure)              |
//! | `segment.rs`     | one preallocated, mapped segment file: the only unsafe code      |
//! | `segmented.rs`   | [`Wal`]: append, group-commit sync, read, truncate, discard |
//! | `recovery.rs`    | start-up recovery: torn tail cut, damage to synced data reported and set aside |
//! | `image.rs`       | segment images in memory and recovery's verdict on them (for the simulator) |
//! | `damage.rs`      | [`Damage`] and the marker file that remembers it until repaired |
//! | `hard_state.rs`  | [`HardStateStore`]: term and vote in two alternating checksummed slots |
//! | `identity.rs`    | [`Identity`]: the cluster id and this member's incarnation id |
//!
//! Must not: know about Raft roles. The node driver calls `append` then `sync` once per loop
//! turn (one fdatasync per dirty segment), and treats `WalError::SyncFailed` as fatal for the process.

mod damage;
mod format;
mod hard_state;
mod identity;
pub mod image;
mod recovery;
mod segment;
mod segmented;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::raft::LogIndex;

pub use damage::{Damage, DAMAGE_FILE};
pub use hard_state::HardStateStore;
pub use identity::{ClusterId, Identity, IdentityError, IncarnationId, IDENTITY_FILE};
pub use recovery::{BeforeCut, UncertainTail, DAMAGED_SUFFIX};
pub use segment::{Prefill, SPARE_NAME};
pub use segmented::{Recovery, Wal, SEGMENT_SIZE_MIN};

/// Default size of one segment file, in bytes.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 * 1024 * 1024;

/// Tunables of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// Size of every segment file, in bytes: at least [`SEGMENT_SIZE_MIN`] (one largest entry
    /// plus the headers), at most 4 GiB (record offsets are u32).
    pub segment_size: u64,
    /// How a new segment's blocks are allocated.
    pub prefill: Prefill,
    /// What `Wal::open` does when synced data is damaged.
    pub on_damage: OnDamage,
}

/// What `Wal::open` does on damage to synced data (never on a torn tail, which is always cut).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Change nothing and fail with `WalError::Corrupt` naming the file, the offset and the
    /// first lost index; also when an earlier start recorded damage not cleared yet. The
    /// default until the node can keep out of votes and quorums for a damaged range: starting
    /// on a shorter log without knowing would let it vote as if it never held those entries.
    #[default]
    Refuse,
    /// Record the damage (a marker file), set the damaged files aside, continue with the intact
    /// prefix, and report it in `Recovery::damage` / `Wal::damage` until `Wal::clear_damage`.
    KeepIntactPrefix,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        // ZeroAhead: zero-filled segments sync without an ext4 journal commit (fdatasync p50
        // ~0.07 against ~0.12 ms, and no wait for a snapshot's block allocations; see
        // `Prefill::ZeroAhead`), and zeroing the next one ahead, in steps, spares the append
        // that rolls a stall of 85-158 ms (64 MiB written and fsynced at once, as ZeroFill
        // does), which a single-threaded event loop cannot afford.
        WalOptions {
            segment_size: SEGMENT_SIZE_DEFAULT,
            prefill: Prefill::ZeroAhead,
            on_damage: OnDamage::default(),
        }
    }
}

/// Everything that can go wrong in the log or the hard state.
#[derive(Debug)]
pub enum WalError {
    /// A system call failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The bytes on disk are not what we wrote (with `OnDamage::Refuse`, or in a way recovery
    /// cannot set aside, such as an unknown format version): refuse to start.
    Corrupt {
        file: PathBuf,
        offset: u64,
        index: Option<LogIndex>,
        reason: String,
    },
    /// The disk is full while creating a segment: stop accepting writes, keep serving reads.
    NoSpace { path: PathBuf },
    /// An msync/fdatasync failed. The page cache state is unknown afterwards, so this is
    /// sticky: every later call on the same `Wal` fails with it too. Fatal for the process.
    SyncFailed { path: PathBuf, reason: String },
    /// The options cannot work.
    BadOptions { reason: String },
    /// An entry's payload exceeds `limits::ENTRY_SIZE_MAX`.
    EntryTooLarge { index: LogIndex, len: usize },
    /// The requested entry was discarded (it is in a snapshot).
    Compacted {
        index: LogIndex,
        first: Option<LogIndex>,
    },
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { path, op, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
            WalError::Corrupt {
                file,
                offset,
                index,
                reason,
            } => {
                write!(f, "corrupt log: {} at offset {offset}", file.display())?;
                if let Some(i) = index {
                    write!(f, " (index {i})")?;
                }
                write!(f, ": {reason}")
            }
            WalError::NoSpace { path } => {
                write!(f, "no space left on device creating {}", path.display())
            }
            WalError::SyncFailed { path, reason } => {
                write!(f, "sync failed on {} (fatal): {reason}", path.display())
            }
            WalError::BadOptions { reason } => write!(f, "bad log options: {reason}"),
            WalError::EntryTooLarge { index, len } => {
                write!(
                    f,
                    "entry {index} of {len} bytes exceeds the entry size limit"
                )
            }
            WalError::Compacted { index, first } => match first {
                Some(first) => write!(f, "entry {index} was discarded; the log starts at {first}"),
                None => write!(f, "entry {index} was discarded; the log is empty"),
            },
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub(crate) fn io_error(path: &Path, op: &'static str, source: io::Error) -> WalError {
    WalError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
