//! [`Damage`]: what recovery found wrong with synced data, and the marker file that keeps that
//! knowledge across restarts until the node has repaired the range.
//!
//! Owns: the file `DAMAGE` in the log directory. Must not: decide what the node does about the
//! damage (stay out of votes and quorums for the range, repair it from peers).
//!
//! Why a marker: recovery cuts the log at the intact prefix and sets the damaged files aside.
//! Without a durable record of that, a crash right afterwards would restart on a clean but
//! shorter log, and the node would take part in votes as if it had never held (and
//! acknowledged) the lost entries. So the marker is written, durably, before the log is cut,
//! and removed only by [`super::Wal::clear_damage`], which the node calls once the range is
//! repaired. A later damage while a marker exists widens the recorded range.
//!
//! The file, big-endian, `HEADER_SIZE` = 44 bytes then the segment file name:
//! ```text
//! offset size field
//!      0    8 magic "KVRFTDMG"
//!      8    4 format version (1)
//!     12    4 reserved, zero
//!     16    8 first lost index
//!     24    8 last index seen after the damage (0 = none seen)
//!     32    8 offset of the damage in the segment
//!     40    2 length n of the segment file name (<= NAME_LEN_MAX)
//!     42    2 reserved, zero
//!     44    n segment file name, UTF-8 (no directory)
//!   44+n    4 crc32c of bytes 0..44+n
//! ```
//! Written to `DAMAGE.tmp`, fsynced, renamed over `DAMAGE`, directory fsynced.
//!
//! Invariants:
//! 1. `store` is durable before it returns; `load` never panics on any contents.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::segment::fsync_dir;
use super::{io_error, WalError};
use crate::raft::LogIndex;

pub const DAMAGE_FILE: &str = "DAMAGE";
const TEMP_FILE: &str = "DAMAGE.tmp";
const MAGIC: [u8; 8] = *b"KVRFTDMG";
const VERSION: u32 = 1;
/// Longest segment file name the marker stores (ours are 24 bytes).
const NAME_LEN_MAX: usize = 255;

const VERSION_OFFSET: usize = 8;
const RESERVED_OFFSET: usize = VERSION_OFFSET + 4;
const FIRST_LOST_OFFSET: usize = RESERVED_OFFSET + 4;
const SEEN_AFTER_OFFSET: usize = FIRST_LOST_OFFSET + 8;
const DAMAGE_OFFSET_OFFSET: usize = SEEN_AFTER_OFFSET + 8;
const NAME_LEN_OFFSET: usize = DAMAGE_OFFSET_OFFSET + 8;
const RESERVED2_OFFSET: usize = NAME_LEN_OFFSET + 2;
const HEADER_SIZE: usize = RESERVED2_OFFSET + 2;
const _: () = assert!(FIRST_LOST_OFFSET == 16 && NAME_LEN_OFFSET == 40 && HEADER_SIZE == 44);
const FILE_SIZE_MAX: usize = HEADER_SIZE + NAME_LEN_MAX + 4;

/// Damage to data that was synced: found by recovery, or remembered from an earlier start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The segment in which the intact log ends (the damage is in it or right after it).
    pub segment: PathBuf,
    /// Offset in `segment` of the first byte that is not part of the intact log.
    pub offset: u64,
    /// The first index not in the intact log: entries from here on may have been lost.
    pub first_lost_index: LogIndex,
    /// The highest index of a valid record seen after the damage, if any: entries up to here
    /// were certainly written (and perhaps acknowledged) before.
    pub last_index_seen_after: Option<LogIndex>,
    /// What was wrong, for the log line.
    pub reason: String,
    /// Files renamed or copied aside (`*.damaged*`) in this start, for an operator.
    pub set_aside: Vec<PathBuf>,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "damaged log: {} at offset {}: {}; entries from index {} may be lost",
            self.segment.display(),
            self.offset,
            self.reason,
            self.first_lost_index
        )?;
        if let Some(l) = self.last_index_seen_after {
            write!(
                f,
                " (valid entries up to index {l} were seen after the damage)"
            )?;
        }
        if !self.set_aside.is_empty() {
            let names: Vec<String> = self
                .set_aside
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            write!(f, "; set aside: {}", names.join(", "))?;
        }
        Ok(())
    }
}

impl Damage {
    /// The union of two damages: the lower first lost index, the higher last index seen.
    pub fn merge(self, newer: Damage) -> Damage {
        let (low, high) = if newer.first_lost_index < self.first_lost_index {
            (newer, self)
        } else {
            (self, newer)
        };
        Damage {
            last_index_seen_after: low.last_index_seen_after.max(high.last_index_seen_after),
            reason: format!("{}; and earlier: {}", high.reason, low.reason),
            set_aside: [low.set_aside, high.set_aside].concat(),
            ..low
        }
    }

    fn encode(&self) -> Vec<u8> {
        let name = self
            .segment
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let name = &name.as_bytes()[..name.len().min(NAME_LEN_MAX)];
        let mut b = vec![0u8; HEADER_SIZE + name.len() + 4];
        b[..VERSION_OFFSET].copy_from_slice(&MAGIC);
        b[VERSION_OFFSET..RESERVED_OFFSET].copy_from_slice(&VERSION.to_be_bytes());
        b[FIRST_LOST_OFFSET..SEEN_AFTER_OFFSET]
            .copy_from_slice(&self.first_lost_index.0.to_be_bytes());
        let seen = self.last_index_seen_after.map_or(0, |i| i.0);
        b[SEEN_AFTER_OFFSET..DAMAGE_OFFSET_OFFSET].copy_from_slice(&seen.to_be_bytes());
        b[DAMAGE_OFFSET_OFFSET..NAME_LEN_OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        b[NAME_LEN_OFFSET..RESERVED2_OFFSET].copy_from_slice(&(name.len() as u16).to_be_bytes());
        b[HEADER_SIZE..HEADER_SIZE + name.len()].copy_from_slice(name);
        let crc_at = HEADER_SIZE + name.len();
        let crc = crc32c::crc32c(&b[..crc_at]);
        b[crc_at..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8], dir: &Path) -> Result<Damage, String> {
        if b.len() < HEADER_SIZE + 4 || b.len() > FILE_SIZE_MAX {
            return Err(format!("{} bytes", b.len()));
        }
        if b[..VERSION_OFFSET] != MAGIC {
            return Err("bad magic".into());
        }
        let name_len = u16::from_be_bytes([b[NAME_LEN_OFFSET], b[NAME_LEN_OFFSET + 1]]) as usize;
        if b.len() != HEADER_SIZE + name_len + 4 {
            return Err(format!("{} bytes for a name of {name_len}", b.len()));
        }
        let crc_at = HEADER_SIZE + name_len;
        let crc = u32::from_be_bytes(b[crc_at..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[..crc_at]) != crc {
            return Err("checksum mismatch".into());
        }
        let version = u32::from_be_bytes(b[VERSION_OFFSET..RESERVED_OFFSET].try_into().expect("4"));
        if version != VERSION {
            return Err(format!("format version {version}, expected {VERSION}"));
        }
        let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let name = std::str::from_utf8(&b[HEADER_SIZE..crc_at]).map_err(|e| e.to_string())?;
        let seen = u64_at(SEEN_AFTER_OFFSET);
        Ok(Damage {
            segment: dir.join(name),
            offset: u64_at(DAMAGE_OFFSET_OFFSET),
            first_lost_index: LogIndex(u64_at(FIRST_LOST_OFFSET)),
            last_index_seen_after: (seen > 0).then_some(LogIndex(seen)),
            reason: "recorded by an earlier start, not repaired yet".into(),
            set_aside: Vec::new(),
        })
    }
}

/// Reads the marker in `dir`, if any. An unreadable marker still means damage: it is reported
/// as damage from index 1 (the whole log is suspect), never ignored.
pub fn load(dir: &Path) -> Result<Option<Damage>, WalError> {
    let path = dir.join(DAMAGE_FILE);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, "open", e)),
    };
    let mut b = Vec::new();
    f.take(FILE_SIZE_MAX as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| io_error(&path, "read", e))?;
    Ok(Some(Damage::decode(&b, dir).unwrap_or_else(|why| Damage {
        segment: path.clone(),
        offset: 0,
        first_lost_index: LogIndex(1),
        last_index_seen_after: None,
        reason: format!("damage marker {} unreadable ({why})", path.display()),
        set_aside: Vec::new(),
    })))
}

/// Replaces the marker in `dir` durably.
pub fn store(dir: &Path, damage: &Damage) -> Result<(), WalError> {
    let tmp = dir.join(TEMP_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, "create", e))?;
    f.write_all(&damage.encode())
        .map_err(|e| io_error(&tmp, "write", e))?;
    f.sync_all().map_err(|e| io_error(&tmp, "fsync", e))?;
    drop(f);
    let path = dir.join(DAMAGE_FILE);
    fs::rename(&tmp, &path).map_err(|e| io_error(&path, "rename", e))?;
    fsync_dir(dir)
}

/// Removes the marker in `dir` durably (the node repaired the range).
pub fn clear(dir: &Path) -> Result<(), WalError> {
    let path = dir.join(DAMAGE_FILE);
    match fs::remove_file(&path) {
        Ok(()) => fsync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(&path, "remove", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Damage {
        Damage {
            segment: dir.join("00000000000000000007.wal"),
            offset: 4096,
            first_lost_index: LogIndex(12),
            last_index_seen_after: Some(LogIndex(40)),
            reason: "recorded by an earlier start, not repaired yet".into(),
            set_aside: Vec::new(),
        }
    }

    #[test]
    fn marker_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        store(dir.path(), &sample(dir.path())).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample(dir.path())));
        clear(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        clear(dir.path()).unwrap();
    }

    #[test]
    fn a_damaged_marker_is_damage_from_index_one_never_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample(dir.path()).encode();
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            cases.push(b);
        }
        for b in cases {
            fs::write(dir.path().join(DAMAGE_FILE), &b).unwrap();
            let d = load(dir.path()).unwrap().expect("damage");
            assert_eq!(d.first_lost_index, LogIndex(1), "{b:?}");
            assert!(d.reason.contains("unreadable"), "{}", d.reason);
        }
    }

    #[test]
    fn merge_keeps_the_widest_range() {
        let dir = tempfile::tempdir().unwrap();
        let a = sample(dir.path());
        let b = Damage {
            first_lost_index: LogIndex(5),
            last_index_seen_after: None,
            ..sample(dir.path())
        };
        let m = a.clone().merge(b.clone());
        assert_eq!(m.first_lost_index, LogIndex(5));
        assert_eq!(m.last_index_seen_after, Some(LogIndex(40)));
        assert_eq!(b.merge(a).first_lost_index, LogIndex(5));
    }
}
