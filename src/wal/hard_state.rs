//! [`HardStateStore`]: the current term and vote, replaced atomically and durably.
//!
//! Owns: the file `hardstate` in the data directory. Must not: know what a term means.
//!
//! The file is `FILE_SIZE` = 1024 bytes, created at full size, holding two slots at offsets 0
//! and `SLOT_STRIDE` = 512 (separate disk sectors, so a torn write damages at most one).
//! Big-endian; one slot (format version 3):
//! ```text
//! offset size field
//!      0    8 magic "KVRFTHST"
//!      8    4 format version (3)
//!     12    4 reserved, zero
//!     16    8 sequence number: grows by one per save
//!     24    8 term
//!     32    8 vote (node id; 0 = none)
//!     40    8 uncertain term: the log's tail was cut at a start and may have held
//!               acknowledged entries, "uncertain since term T" (raft/uncertain.rs; 0 = none)
//!     48    2 n: bytes of the tail configurations that follow (<= TAIL_BYTES_MAX = 454)
//!     50    n tail configurations (raft/uncertain.rs, "Which configurations"):
//!               1 byte count c, then c times: 1 byte flags (bit 0 near, bit 1 every, other
//!               bits zero), 1 byte voter count v, 1 byte learner count l, v voter ids and
//!               l learner ids (u64 each, non-zero, ascending, no learner a voter)
//!   50+n    4 crc32c of bytes 0..50+n
//! ```
//! A list longer than the slot holds is saved as one `every` entry naming all its members
//! (which asks an uncertain node for more reports, never fewer); if even that does not fit
//! (more than 56 members), as no list (c = 0), which a start reads as "not recorded": the
//! node then counts the configuration of its log, as a version 2 hard state does.
//! Version 2 is the same up to offset 48, where its crc32c of bytes 0..48 sits; version 1
//! ends at offset 40 with the crc32c of bytes 0..40 (no uncertain term). Both are read (no
//! tail configurations; version 1 as certain); saves always write version 3, so an old data
//! directory keeps working and is upgraded by its first save.
//! A save writes the slot the previous save did not (`sequence % 2`) and fdatasyncs before it
//! returns, so the other slot always holds the previous state whole. Loading picks the valid
//! slot with the higher sequence.
//!
//! Invariants:
//! 1. `save` is durable before it returns; a failed sync is sticky (every later save fails).
//! 2. The slot a save writes is never the slot holding the newest durable state.
//!
//! NB: a flipped bit in the newest slot is indistinguishable from a torn write of it, so the
//! previous state is loaded (one save older). Both slots bad with data in them is corruption.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment::fsync_dir;
use super::{io_error, WalError};
use crate::raft::{ConfState, HardState, NodeId, TailConf, Term};

pub const HARD_STATE_FILE: &str = "hardstate";
const MAGIC: [u8; 8] = *b"KVRFTHST";
const VERSION: u32 = 3;
/// The slot format before the tail configurations: read, never written.
const VERSION_2: u32 = 2;
/// The slot format before the uncertain term: read, never written.
const VERSION_1: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const RESERVED_OFFSET: usize = VERSION_OFFSET + 4;
const SEQ_OFFSET: usize = RESERVED_OFFSET + 4;
const TERM_OFFSET: usize = SEQ_OFFSET + 8;
const VOTE_OFFSET: usize = TERM_OFFSET + 8;
const UNCERTAIN_OFFSET: usize = VOTE_OFFSET + 8;
const TAIL_LEN_OFFSET: usize = UNCERTAIN_OFFSET + 8;
const TAIL_OFFSET: usize = TAIL_LEN_OFFSET + 2;
const SLOT_STRIDE: usize = 512;
/// The most bytes of tail configurations a slot holds (the rest is the checksum).
const TAIL_BYTES_MAX: usize = SLOT_STRIDE - TAIL_OFFSET - 8;
/// Version 2's checksum sat where the tail configurations' length is now, version 1's where
/// the uncertain term is.
const CRC_OFFSET_V2: usize = TAIL_LEN_OFFSET;
const CRC_OFFSET_V1: usize = UNCERTAIN_OFFSET;
const FILE_SIZE: usize = 2 * SLOT_STRIDE;
const TAIL_NEAR: u8 = 1;
const TAIL_EVERY: u8 = 2;
const _: () = assert!(TAIL_OFFSET == 50 && TAIL_BYTES_MAX == 454 && CRC_OFFSET_V2 == 48);
const _: () = assert!(TAIL_OFFSET + TAIL_BYTES_MAX + 4 <= SLOT_STRIDE);

pub struct HardStateStore {
    path: PathBuf,
    file: File,
    /// Sequence number of the newest durable slot (0 when none was ever written).
    sequence: u64,
    failed: Option<String>,
}

impl HardStateStore {
    /// Opens (creating durably if missing) the hard state in `dir`; the default state when
    /// nothing was ever saved.
    pub fn open(dir: &Path) -> Result<(HardStateStore, HardState), WalError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create directory", e))?;
        let path = dir.join(HARD_STATE_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error(&path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(&path, "stat", e))?
            .len();
        if len == 0 {
            file.write_all_at(&[0u8; FILE_SIZE], 0)
                .map_err(|e| io_error(&path, "write", e))?;
            file.sync_all().map_err(|e| io_error(&path, "fsync", e))?;
            fsync_dir(dir)?;
        } else if len != FILE_SIZE as u64 {
            return Err(corrupt(
                &path,
                0,
                format!("file of {len} bytes, expected {FILE_SIZE}"),
            ));
        }
        let mut buf = [0u8; FILE_SIZE];
        file.read_exact_at(&mut buf, 0)
            .map_err(|e| io_error(&path, "read", e))?;
        let slots = [
            decode_slot(&buf[..SLOT_STRIDE]),
            decode_slot(&buf[SLOT_STRIDE..]),
        ];
        let best = slots.iter().flatten().max_by_key(|(seq, _)| *seq).cloned();
        let (sequence, hs) = match best {
            Some(found) => found,
            None if buf.iter().all(|&b| b == 0) => (0, HardState::default()),
            None => return Err(corrupt(&path, 0, "neither hard-state slot checks".into())),
        };
        let store = HardStateStore {
            path,
            file,
            sequence,
            failed: None,
        };
        Ok((store, hs))
    }

    /// Replaces the hard state; durable before it returns (invariant 1).
    pub fn save(&mut self, hs: &HardState) -> Result<(), WalError> {
        if let Some(reason) = &self.failed {
            return Err(WalError::SyncFailed {
                path: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let sequence = self.sequence + 1;
        let slot = encode_slot(sequence, hs);
        // Invariant 2: slot (sequence % 2) differs from the newest one's, (sequence - 1) % 2.
        let at = (sequence % 2) as usize * SLOT_STRIDE;
        let r = self
            .file
            .write_all_at(&slot, at as u64)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = r {
            self.failed = Some(e.to_string());
            return Err(WalError::SyncFailed {
                path: self.path.clone(),
                reason: e.to_string(),
            });
        }
        self.sequence = sequence;
        Ok(())
    }
}

fn corrupt(path: &Path, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        file: path.to_path_buf(),
        offset,
        index: None,
        reason,
    }
}

fn encode_slot(sequence: u64, hs: &HardState) -> Vec<u8> {
    let mut b = vec![0u8; TAIL_OFFSET];
    b[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
    b[VERSION_OFFSET..RESERVED_OFFSET].copy_from_slice(&VERSION.to_be_bytes());
    b[SEQ_OFFSET..TERM_OFFSET].copy_from_slice(&sequence.to_be_bytes());
    b[TERM_OFFSET..VOTE_OFFSET].copy_from_slice(&hs.term.0.to_be_bytes());
    let vote = hs.vote.map_or(0, |n| n.0);
    b[VOTE_OFFSET..UNCERTAIN_OFFSET].copy_from_slice(&vote.to_be_bytes());
    let uncertain = hs.uncertain.map_or(0, |t| t.0);
    b[UNCERTAIN_OFFSET..TAIL_LEN_OFFSET].copy_from_slice(&uncertain.to_be_bytes());
    let tail = encode_tail(&hs.tail_confs);
    b[TAIL_LEN_OFFSET..TAIL_OFFSET].copy_from_slice(&(tail.len() as u16).to_be_bytes());
    b.extend_from_slice(&tail);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    debug_assert!(b.len() <= SLOT_STRIDE);
    b
}

fn tail_bytes(list: &[TailConf]) -> usize {
    1 + list
        .iter()
        .map(|t| 3 + 8 * (t.conf.voters.len() + t.conf.learners.len()))
        .sum::<usize>()
}

/// The tail configurations as saved: the list, or, when it does not fit, one `every` entry
/// of all their members, or, when that does not fit either, none (see the header).
fn encode_tail(list: &[TailConf]) -> Vec<u8> {
    let collapsed;
    let list = if tail_bytes(list) <= TAIL_BYTES_MAX && list.len() <= u8::MAX as usize {
        list
    } else {
        let voters = list.iter().flat_map(|t| t.conf.voters.iter().copied());
        let learners = list.iter().flat_map(|t| t.conf.learners.iter().copied());
        collapsed = [TailConf {
            conf: ConfState::new(voters.collect(), learners.collect()),
            near: false,
            every: true,
        }];
        match tail_bytes(&collapsed) <= TAIL_BYTES_MAX {
            true => &collapsed[..],
            false => {
                log::warn!(
                    "hard state: {} tail configurations of more members than a slot holds: not recorded",
                    list.len()
                );
                &[]
            }
        }
    };
    let mut b = Vec::with_capacity(tail_bytes(list));
    b.push(list.len() as u8);
    for t in list {
        let flags = (u8::from(t.near) * TAIL_NEAR) | (u8::from(t.every) * TAIL_EVERY);
        // Fits: at most TAIL_BYTES_MAX / 8 ids in all.
        b.extend_from_slice(&[
            flags,
            t.conf.voters.len() as u8,
            t.conf.learners.len() as u8,
        ]);
        for id in t.conf.voters.iter().chain(&t.conf.learners) {
            b.extend_from_slice(&id.0.to_be_bytes());
        }
    }
    b
}

/// The tail configurations of a slot whose checksum held; `None` if they do not decode (a
/// bug or damage the checksum missed: the slot is not used).
fn decode_tail(mut b: &[u8]) -> Option<Vec<TailConf>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        b = rest;
        Some(head)
    };
    let count = take(1)?[0];
    let mut list = Vec::new();
    for _ in 0..count {
        let h = take(3)?;
        let (flags, v, l) = (h[0], h[1] as usize, h[2] as usize);
        if flags & !(TAIL_NEAR | TAIL_EVERY) != 0 {
            return None;
        }
        let ids = take(8 * (v + l))?;
        let id = |k: usize| {
            NodeId(u64::from_be_bytes(
                ids[8 * k..8 * k + 8].try_into().expect("8"),
            ))
        };
        let voters: Vec<NodeId> = (0..v).map(id).collect();
        let learners: Vec<NodeId> = (v..v + l).map(id).collect();
        let conf = ConfState::new(voters.clone(), learners.clone());
        // As written: ascending, non-zero, disjoint (what `ConfState::new` keeps unchanged).
        if conf.voters != voters || conf.learners != learners || conf.members().any(|n| n.0 == 0) {
            return None;
        }
        list.push(TailConf {
            conf,
            near: flags & TAIL_NEAR != 0,
            every: flags & TAIL_EVERY != 0,
        });
    }
    b.is_empty().then_some(list)
}

fn decode_slot(b: &[u8]) -> Option<(u64, HardState)> {
    let b = b.get(..SLOT_STRIDE)?;
    let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u16_at = |o: usize| u16::from_be_bytes(b[o..o + 2].try_into().expect("2 bytes"));
    if b[MAGIC_OFFSET..VERSION_OFFSET] != MAGIC || u32_at(RESERVED_OFFSET) != 0 {
        return None;
    }
    let version = u32_at(VERSION_OFFSET);
    let crc_offset = match version {
        VERSION => {
            let n = u16_at(TAIL_LEN_OFFSET) as usize;
            if n > TAIL_BYTES_MAX {
                return None;
            }
            TAIL_OFFSET + n
        }
        VERSION_2 => CRC_OFFSET_V2,
        VERSION_1 => CRC_OFFSET_V1,
        _ => return None,
    };
    if crc32c::crc32c(&b[..crc_offset]) != u32_at(crc_offset) {
        return None;
    }
    let vote = u64_at(VOTE_OFFSET);
    let uncertain = match version {
        VERSION_1 => 0,
        _ => u64_at(UNCERTAIN_OFFSET),
    };
    let tail_confs = match version {
        VERSION => decode_tail(&b[TAIL_OFFSET..crc_offset])?,
        _ => Vec::new(),
    };
    let hs = HardState {
        term: Term(u64_at(TERM_OFFSET)),
        vote: (vote != 0).then_some(NodeId(vote)),
        uncertain: (uncertain != 0).then_some(Term(uncertain)),
        tail_confs,
    };
    Some((u64_at(SEQ_OFFSET), hs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: Option<u64>) -> HardState {
        HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            uncertain: None,
            tail_confs: Vec::new(),
        }
    }

    fn tail(voters: &[u64], learners: &[u64], near: bool) -> TailConf {
        let ids = |v: &[u64]| v.iter().copied().map(NodeId).collect();
        TailConf {
            conf: ConfState::new(ids(voters), ids(learners)),
            near,
            every: false,
        }
    }

    /// A slot of an older `version`, as the kvraftd of that version wrote it: the same
    /// fields as version 3 up to `crc_offset`, where its checksum sits.
    fn encode_old_slot(sequence: u64, hs: &HardState, version: u32, crc_offset: usize) -> Vec<u8> {
        let mut b = encode_slot(sequence, hs);
        b.truncate(crc_offset + 4);
        b[VERSION_OFFSET..RESERVED_OFFSET].copy_from_slice(&version.to_be_bytes());
        let crc = crc32c::crc32c(&b[..crc_offset]);
        b[crc_offset..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A version 2 slot, as the kvraftd before the tail configurations wrote it.
    fn encode_slot_v2(sequence: u64, term: u64, uncertain: u64) -> Vec<u8> {
        let hs = HardState {
            uncertain: Some(Term(uncertain)),
            ..hs(term, None)
        };
        encode_old_slot(sequence, &hs, VERSION_2, CRC_OFFSET_V2)
    }

    #[test]
    fn tail_configurations_round_trip_and_a_version_2_slot_loads_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = vec![0u8; FILE_SIZE];
        let s2 = encode_slot_v2(1, 4, 3);
        file[SLOT_STRIDE..SLOT_STRIDE + s2.len()].copy_from_slice(&s2);
        std::fs::write(dir.path().join(HARD_STATE_FILE), &file).unwrap();
        let (mut s, h) = HardStateStore::open(dir.path()).unwrap();
        let want = HardState {
            uncertain: Some(Term(3)),
            ..hs(4, None)
        };
        assert_eq!(h, want);
        let with = HardState {
            tail_confs: vec![tail(&[1, 2, 4], &[3, 5], true), tail(&[1, 2], &[], false)],
            ..want
        };
        s.save(&with).unwrap();
        assert_eq!(HardStateStore::open(dir.path()).unwrap().1, with);
    }

    #[test]
    fn a_tail_list_too_long_for_a_slot_is_saved_as_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = HardStateStore::open(dir.path()).unwrap();
        // 8 configurations of 7 members: 8 * (3 + 56) bytes, more than a slot holds.
        let long: Vec<TailConf> = (0..8u64)
            .map(|k| tail(&[1, 2, 3, 4, 5, 6], &[10 + k], true))
            .collect();
        let hs_long = HardState {
            tail_confs: long,
            ..hs(2, Some(1))
        };
        s.save(&hs_long).unwrap();
        let h = HardStateStore::open(dir.path()).unwrap().1;
        let learners: Vec<u64> = (10..18).collect();
        let every = TailConf {
            every: true,
            ..tail(&[1, 2, 3, 4, 5, 6], &learners, false)
        };
        assert_eq!(h.tail_confs, vec![every]);
        // Too many members for even that: not recorded.
        let voters: Vec<u64> = (1..=60).collect();
        let huge = HardState {
            tail_confs: vec![tail(&voters, &[], true)],
            ..hs(3, None)
        };
        s.save(&huge).unwrap();
        assert_eq!(HardStateStore::open(dir.path()).unwrap().1, hs(3, None));
    }

    #[test]
    fn a_slot_whose_tail_list_does_not_decode_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = HardStateStore::open(dir.path()).unwrap();
        s.save(&hs(1, None)).unwrap();
        drop(s);
        // Sequence 2 with a list naming node 0, checksummed: read as damage, the older slot wins.
        let bad = HardState {
            tail_confs: vec![tail(&[0, 1], &[], true)],
            ..hs(2, None)
        };
        let slot = encode_slot(2, &bad);
        let mut file = std::fs::read(dir.path().join(HARD_STATE_FILE)).unwrap();
        file[..slot.len()].copy_from_slice(&slot);
        std::fs::write(dir.path().join(HARD_STATE_FILE), &file).unwrap();
        assert_eq!(HardStateStore::open(dir.path()).unwrap().1, hs(1, None));
    }

    /// A version 1 slot, as the kvraftd before the uncertain term wrote it.
    fn encode_slot_v1(sequence: u64, term: u64, vote: u64) -> Vec<u8> {
        encode_old_slot(sequence, &hs(term, Some(vote)), VERSION_1, CRC_OFFSET_V1)
    }

    #[test]
    fn a_version_1_file_loads_as_certain_and_its_next_save_writes_version_3() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = vec![0u8; FILE_SIZE];
        let s1 = encode_slot_v1(1, 4, 2);
        file[SLOT_STRIDE..SLOT_STRIDE + s1.len()].copy_from_slice(&s1);
        let s2 = encode_slot_v1(2, 5, 3);
        file[..s2.len()].copy_from_slice(&s2);
        std::fs::write(dir.path().join(HARD_STATE_FILE), &file).unwrap();
        let (mut s, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, hs(5, Some(3)));
        let uncertain = HardState {
            uncertain: Some(Term(5)),
            ..hs(6, None)
        };
        s.save(&uncertain).unwrap();
        drop(s);
        let b = std::fs::read(dir.path().join(HARD_STATE_FILE)).unwrap();
        assert_eq!(
            b[SLOT_STRIDE + VERSION_OFFSET + 3],
            3,
            "sequence 3 -> slot 1, version 3"
        );
        let (_, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, uncertain);
    }

    #[test]
    fn the_uncertain_term_round_trips_and_is_cleared_by_a_save_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = HardStateStore::open(dir.path()).unwrap();
        let u = HardState {
            uncertain: Some(Term(7)),
            ..hs(9, Some(1))
        };
        s.save(&u).unwrap();
        assert_eq!(HardStateStore::open(dir.path()).unwrap().1, u);
        s.save(&hs(9, Some(1))).unwrap();
        assert_eq!(HardStateStore::open(dir.path()).unwrap().1, hs(9, Some(1)));
    }

    #[test]
    fn fresh_store_loads_the_default_and_keeps_the_last_save_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, HardState::default());
        for t in 1..=5 {
            s.save(&hs(t, Some(t % 3 + 1))).unwrap();
            let (_, h) = HardStateStore::open(dir.path()).unwrap();
            assert_eq!(h, hs(t, Some(t % 3 + 1)));
        }
        s.save(&hs(6, None)).unwrap();
        drop(s);
        let (_, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, hs(6, None));
    }

    #[test]
    fn hard_state_descriptor_is_close_on_exec() {
        use std::os::unix::io::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = HardStateStore::open(dir.path()).unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", s.file.as_raw_fd())).unwrap();
        let line = info.lines().find(|l| l.starts_with("flags:")).unwrap();
        let flags = u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap();
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "hard-state fd without O_CLOEXEC"
        );
    }

    #[test]
    fn torn_newest_slot_falls_back_to_the_previous_save() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = HardStateStore::open(dir.path()).unwrap();
        s.save(&hs(1, Some(1))).unwrap(); // sequence 1 -> slot 1
        s.save(&hs(2, Some(2))).unwrap(); // sequence 2 -> slot 0
        drop(s);
        let path = dir.path().join(HARD_STATE_FILE);
        let mut b = std::fs::read(&path).unwrap();
        b[TERM_OFFSET] ^= 0x40; // damage slot 0
        std::fs::write(&path, &b).unwrap();
        let (mut s, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, hs(1, Some(1)));
        // The next save overwrites the damaged slot, never the good one.
        s.save(&hs(3, None)).unwrap();
        let (_, h) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(h, hs(3, None));
    }

    #[test]
    fn both_slots_damaged_is_reported_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = HardStateStore::open(dir.path()).unwrap();
        s.save(&hs(1, Some(1))).unwrap();
        s.save(&hs(2, Some(2))).unwrap();
        drop(s);
        let path = dir.path().join(HARD_STATE_FILE);
        let mut b = std::fs::read(&path).unwrap();
        b[TERM_OFFSET] ^= 1;
        b[SLOT_STRIDE + TERM_OFFSET] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let err = HardStateStore::open(dir.path()).err().expect("corrupt");
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("hardstate"), "{err}");
    }
}
