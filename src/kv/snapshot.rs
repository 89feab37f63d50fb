//! The KV snapshot format: the whole state streamed in key order, and its loader.
//!
//! Owns: the byte layout below, writing it from a skiplist, and rebuilding a skiplist from it.
//! It works on the skiplist and the applied index, not on `KvStore`, so the store may call it
//! without the two modules importing each other.
//! Must not: open, sync or rename files (the node does), or log (the writer runs in a forked
//! child).
//!
//! # Format (version 2), integers big-endian
//!
//! ```text
//! offset          size  field
//! 0               8     magic  b"KVRSNAP\0"
//! 8               4     version = 2
//! 12              8     applied index
//! 20              8     applied stamp: the largest leader stamp applied, ms since the epoch
//! 28              8     last deletion: the index of the last entry that removed a key
//!                       (<= applied index; WATCH, see `store.rs`)
//! 36              8     entry count n
//! 44              ...   n records, keys strictly increasing:
//!                         u32 key length (<= KEY_SIZE_MAX), u32 value length (<= VALUE_SIZE_MAX),
//!                         u64 modified: the index of the entry that last wrote the key
//!                         (<= applied index; WATCH), key bytes, value bytes
//! then            8     expiry count m (<= n)
//!                 ...   m expiry records, keys strictly increasing, each a key stored above:
//!                         u32 key length (<= KEY_SIZE_MAX), u64 expiry (ms since the epoch),
//!                         key bytes
//! then            ...   the client sessions section, laid out in `session.rs`: u64 session
//!                       count (<= SESSIONS_MAX), then each session and its saved replies
//! end - 12        8     state hash (what `StateMachine::state_hash` returns for this state)
//! end - 4         4     CRC32C of every byte before it
//! ```
//! Version 1 (read, never written) is version 2 without the applied stamp and the last
//! deletion (its header is 28 bytes: the entry count follows the applied index), without the
//! modified index in its records (8-byte record headers) and without the expiry and session
//! sections: it loads with stamp 0, no TTLs, no sessions, and every modified index and the
//! last deletion 0, under the same state hash. NB: stamps of 0 are safe for every WATCH made
//! after the load (its read index is at least the snapshot's), not for older ones.
//!
//! Invariants:
//! 1. `load(write(s))` rebuilds `s` exactly, and both return `s.state_hash()`.
//! 2. The loader rejects, with a `SnapshotError` and the store untouched: a wrong magic or
//!    version, any truncation, a record over its limits, keys out of order, an expiry for a
//!    key that is not stored, a count that does not match, trailing bytes, a CRC mismatch,
//!    and a recomputed state hash that differs from the stored one. Lengths are checked
//!    before anything is allocated.

use crate::kv::expiry::Expiries;
use crate::kv::hash::{
    combine_state_hash, entry_hash, mix_extra_parts, modified_hash, watch_hash, ExtraParts,
};
use crate::kv::session::{SectionSource, Sessions};
use crate::kv::skiplist::{Builder, SkipList};
use crate::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use crate::raft::LogIndex;
use byteorder::{BigEndian, ByteOrder};
use std::fmt;
use std::io::{self, BufReader, Read, Write};

pub const MAGIC: [u8; 8] = *b"KVRSNAP\0";
pub const VERSION: u32 = 2;
/// The previous version, still loaded.
pub const VERSION_1: u32 = 1;
pub const HEADER_SIZE: usize = 44;
/// The header of a version 1 snapshot (no applied stamp).
pub const HEADER_SIZE_1: usize = 28;
pub const RECORD_HEADER_SIZE: usize = 16;
/// The record header of a version 1 snapshot (no modified index).
pub const RECORD_HEADER_SIZE_1: usize = 8;
pub const EXPIRY_RECORD_HEADER_SIZE: usize = 12;
pub const TRAILER_SIZE: usize = 12;
const BUFFER_SIZE: usize = 64 * 1024;

/// Why a snapshot was refused.
#[derive(Debug)]
pub enum SnapshotError {
    Io(io::Error),
    /// The input ended at `offset` before the format did.
    Truncated {
        offset: u64,
    },
    BadMagic,
    Version(u32),
    Corrupt {
        offset: u64,
        reason: &'static str,
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    StateHash {
        stored: u64,
        computed: u64,
    },
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Io(e) => write!(f, "snapshot read failed: {e}"),
            SnapshotError::Truncated { offset } => {
                write!(f, "snapshot truncated at byte {offset}")
            }
            SnapshotError::BadMagic => write!(f, "not a kvraft snapshot (bad magic)"),
            SnapshotError::Version(v) => {
                write!(
                    f,
                    "snapshot format version {v} unsupported (expected {VERSION})"
                )
            }
            SnapshotError::Corrupt { offset, reason } => {
                write!(f, "snapshot corrupt at byte {offset}: {reason}")
            }
            SnapshotError::Checksum { stored, computed } => write!(
                f,
                "snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            SnapshotError::StateHash { stored, computed } => write!(
                f,
                "snapshot state hash mismatch: stored {stored:#018x}, computed {computed:#018x}"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

/// A buffered writer that keeps the CRC32C of everything written through it. The CRC is taken
/// over each full buffer, not over each record's pieces: the crc32c crate interleaves three
/// streams of the CPU's CRC instruction only for long inputs, and record-sized pieces took the
/// serial path (3 cycles per 8 bytes), a visible share of the snapshot child's CPU, which
/// competes with the event loops (issue 16).
struct CrcWriter<'a> {
    out: &'a mut dyn Write,
    /// Bytes not yet checksummed nor written. Invariant: `len() <= BUFFER_SIZE`.
    buf: Vec<u8>,
    /// The CRC of everything written to `out` so far.
    crc: u32,
}

impl CrcWriter<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.buf.len() + bytes.len() > BUFFER_SIZE {
            self.drain()?;
        }
        if bytes.len() >= BUFFER_SIZE {
            self.crc = crc32c::crc32c_append(self.crc, bytes);
            return self.out.write_all(bytes);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// Checksum and write what is buffered.
    fn drain(&mut self) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

/// The state a snapshot holds, borrowed from the store.
pub struct State<'a> {
    pub list: &'a SkipList,
    pub applied: LogIndex,
    pub stamp_ms: u64,
    pub expiries: &'a Expiries,
    pub last_deletion: LogIndex,
    pub sessions: &'a Sessions,
}

/// Stream `state`, whose state hash is `state_hash`, to `w` in the format above; returns
/// `state_hash`.
pub fn write(state: &State<'_>, state_hash: u64, w: &mut dyn Write) -> io::Result<u64> {
    let mut out = CrcWriter {
        out: w,
        buf: Vec::with_capacity(BUFFER_SIZE),
        crc: 0,
    };
    let list = state.list;
    let mut header = [0u8; HEADER_SIZE];
    header[0..8].copy_from_slice(&MAGIC);
    BigEndian::write_u32(&mut header[8..12], VERSION);
    BigEndian::write_u64(&mut header[12..20], state.applied.0);
    BigEndian::write_u64(&mut header[20..28], state.stamp_ms);
    BigEndian::write_u64(&mut header[28..36], state.last_deletion.0);
    BigEndian::write_u64(&mut header[36..44], list.len() as u64);
    out.put(&header)?;
    let mut written = 0usize;
    let mut records = list.iter();
    while let Some((key, value, modified)) = records.next_modified() {
        let mut rec = [0u8; RECORD_HEADER_SIZE];
        BigEndian::write_u32(&mut rec[0..4], key.len() as u32);
        BigEndian::write_u32(&mut rec[4..8], value.len() as u32);
        BigEndian::write_u64(&mut rec[8..16], modified);
        out.put(&rec)?;
        out.put(key)?;
        out.put(value)?;
        written += 1;
    }
    assert_eq!(written, list.len(), "iteration count vs len");
    out.put(&(state.expiries.len() as u64).to_be_bytes())?;
    for (key, at) in state.expiries.iter() {
        let mut rec = [0u8; EXPIRY_RECORD_HEADER_SIZE];
        BigEndian::write_u32(&mut rec[0..4], key.len() as u32);
        BigEndian::write_u64(&mut rec[4..12], at);
        out.put(&rec)?;
        out.put(key)?;
    }
    state.sessions.write_section(&mut |b| out.put(b))?;
    let hash = state_hash;
    out.put(&hash.to_be_bytes())?;
    out.drain()?;
    let crc = out.crc;
    out.out.write_all(&crc.to_be_bytes())?;
    out.out.flush()?;
    Ok(hash)
}

/// A reader that counts bytes and keeps the CRC32C of everything read through it.
struct CrcReader<'a> {
    input: BufReader<&'a mut dyn Read>,
    offset: u64,
    crc: u32,
}

impl CrcReader<'_> {
    fn get(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.raw(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    /// Read without adding to the CRC.
    fn raw(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(SnapshotError::Truncated {
                        offset: self.offset + filled as u64,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::Io(e)),
            }
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn at_end(&mut self) -> Result<bool, SnapshotError> {
        let mut one = [0u8; 1];
        loop {
            match self.input.read(&mut one) {
                Ok(0) => return Ok(true),
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SnapshotError::Io(e)),
            }
        }
    }
}

/// A state rebuilt from a snapshot, verified against its checksum and state hash.
pub struct Loaded {
    pub list: SkipList,
    pub applied: LogIndex,
    pub stamp_ms: u64,
    pub expiries: Expiries,
    pub last_deletion: LogIndex,
    pub sessions: Sessions,
    /// The wrapping sum of the records' entry hashes (see `hash::entry_hash`).
    pub entries_hash: u64,
    /// The wrapping sum of the records' `hash::modified_hash`.
    pub modified_sum: u64,
    pub state_hash: u64,
}

/// Read and verify the snapshot in `r`; `seed` seeds the rebuilt skiplist's heights.
pub fn load(seed: u64, r: &mut dyn Read) -> Result<Loaded, SnapshotError> {
    let mut input = CrcReader {
        input: BufReader::with_capacity(BUFFER_SIZE, r),
        offset: 0,
        crc: 0,
    };
    let mut header = [0u8; HEADER_SIZE];
    input.get(&mut header[..12])?;
    if header[0..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = BigEndian::read_u32(&header[8..12]);
    let header_size = match version {
        VERSION => HEADER_SIZE,
        VERSION_1 => HEADER_SIZE_1,
        v => return Err(SnapshotError::Version(v)),
    };
    input.get(&mut header[12..header_size])?;
    let applied = LogIndex(BigEndian::read_u64(&header[12..20]));
    let (stamp_ms, last_deletion, count) = match version {
        VERSION => (
            BigEndian::read_u64(&header[20..28]),
            LogIndex(BigEndian::read_u64(&header[28..36])),
            BigEndian::read_u64(&header[36..44]),
        ),
        _ => (0, LogIndex(0), BigEndian::read_u64(&header[20..28])),
    };
    if last_deletion > applied {
        return Err(SnapshotError::Corrupt {
            offset: 28,
            reason: "last deletion after the applied index",
        });
    }
    let mut builder = Builder::new(seed);
    let (mut entries_hash, mut modified_sum) = (0u64, 0u64);
    // One buffer for every record's key and value, on their way into the list's pages.
    let mut scratch = Vec::new();
    for _ in 0..count {
        let (e, m) = read_record(&mut input, &mut builder, &mut scratch, version, applied)?;
        entries_hash = entries_hash.wrapping_add(e);
        modified_sum = modified_sum.wrapping_add(m);
    }
    let list = builder.finish();
    let mut expiries = Expiries::new();
    let mut sessions = Sessions::new();
    if version == VERSION {
        read_expiries(&mut input, &list, &mut expiries)?;
        sessions = Sessions::read_section(&mut input)?;
    }
    let extra = ExtraParts {
        stamp_ms,
        expiries_hash: expiries.hash(),
        sessions_hash: sessions.hash(),
        watch_hash: watch_hash(modified_sum, last_deletion),
    };
    let computed_hash = mix_extra_parts(
        combine_state_hash(applied, list.len(), entries_hash),
        &extra,
    );
    read_trailer(&mut input, computed_hash)?;
    Ok(Loaded {
        list,
        applied,
        stamp_ms,
        expiries,
        last_deletion,
        sessions,
        entries_hash,
        modified_sum,
        state_hash: computed_hash,
    })
}

/// Read the state hash and CRC that end the snapshot, and check both and that nothing
/// follows.
fn read_trailer(input: &mut CrcReader<'_>, computed_hash: u64) -> Result<(), SnapshotError> {
    let mut trailer = [0u8; TRAILER_SIZE];
    input.get(&mut trailer[..8])?;
    let computed_crc = input.crc;
    input.raw(&mut trailer[8..])?;
    let stored_crc = BigEndian::read_u32(&trailer[8..]);
    if stored_crc != computed_crc {
        return Err(SnapshotError::Checksum {
            stored: stored_crc,
            computed: computed_crc,
        });
    }
    if !input.at_end()? {
        return Err(SnapshotError::Corrupt {
            offset: input.offset,
            reason: "bytes after the trailer",
        });
    }
    let stored_hash = BigEndian::read_u64(&trailer[..8]);
    if stored_hash != computed_hash {
        return Err(SnapshotError::StateHash {
            stored: stored_hash,
            computed: computed_hash,
        });
    }
    Ok(())
}

/// Read the expiry section into `expiries`: each key must be stored in `list`, in order.
fn read_expiries(
    input: &mut CrcReader<'_>,
    list: &SkipList,
    expiries: &mut Expiries,
) -> Result<(), SnapshotError> {
    let at = input.offset;
    let mut count = [0u8; 8];
    input.get(&mut count)?;
    let count = BigEndian::read_u64(&count);
    if count > list.len() as u64 {
        return Err(SnapshotError::Corrupt {
            offset: at,
            reason: "more expiries than keys",
        });
    }
    let mut last: Option<Box<[u8]>> = None;
    for _ in 0..count {
        let at = input.offset;
        let mut rec = [0u8; EXPIRY_RECORD_HEADER_SIZE];
        input.get(&mut rec)?;
        let key_len = BigEndian::read_u32(&rec[0..4]) as usize;
        if key_len > KEY_SIZE_MAX {
            return Err(SnapshotError::Corrupt {
                offset: at,
                reason: "expiry key longer than KEY_SIZE_MAX",
            });
        }
        let mut key = vec![0u8; key_len].into_boxed_slice();
        input.get(&mut key)?;
        let corrupt = |reason| SnapshotError::Corrupt { offset: at, reason };
        if last.as_ref().is_some_and(|l| *l >= key) {
            return Err(corrupt("expiry keys out of order"));
        }
        if list.get(&key).is_none() {
            return Err(corrupt("expiry for a key that is not stored"));
        }
        expiries.set(&key, BigEndian::read_u64(&rec[4..12]));
        last = Some(key);
    }
    Ok(())
}

/// The sessions section is read through the checksummed reader (`session.rs` lays it out).
impl SectionSource for CrcReader<'_> {
    fn get(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        CrcReader::get(self, buf)
    }

    fn corrupt(&self, reason: &'static str) -> SnapshotError {
        SnapshotError::Corrupt {
            offset: self.offset,
            reason,
        }
    }
}

/// Read one record of a `version` snapshot into `builder` (its key and value through
/// `scratch`); returns its entry hash and its modified hash.
fn read_record(
    input: &mut CrcReader<'_>,
    builder: &mut Builder,
    scratch: &mut Vec<u8>,
    version: u32,
    applied: LogIndex,
) -> Result<(u64, u64), SnapshotError> {
    let at = input.offset;
    let mut rec = [0u8; RECORD_HEADER_SIZE];
    let size = match version {
        VERSION_1 => RECORD_HEADER_SIZE_1,
        _ => RECORD_HEADER_SIZE,
    };
    input.get(&mut rec[..size])?;
    let key_len = BigEndian::read_u32(&rec[0..4]) as usize;
    let value_len = BigEndian::read_u32(&rec[4..8]) as usize;
    let modified = BigEndian::read_u64(&rec[8..16]);
    if modified > applied.0 {
        return Err(SnapshotError::Corrupt {
            offset: at,
            reason: "key modified after the applied index",
        });
    }
    if key_len > KEY_SIZE_MAX {
        return Err(SnapshotError::Corrupt {
            offset: at,
            reason: "key longer than KEY_SIZE_MAX",
        });
    }
    if value_len > VALUE_SIZE_MAX {
        return Err(SnapshotError::Corrupt {
            offset: at,
            reason: "value longer than VALUE_SIZE_MAX",
        });
    }
    // Both lengths were checked against their limits above, before this allocates.
    scratch.clear();
    scratch.resize(key_len + value_len, 0);
    input.get(scratch)?;
    let (key, value) = scratch.split_at(key_len);
    if builder.last_key().is_some_and(|last| last >= key) {
        return Err(SnapshotError::Corrupt {
            offset: at,
            reason: "keys out of order",
        });
    }
    let hashes = (entry_hash(key, value), modified_hash(key, modified));
    builder.push_at(key, value, modified);
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::store::KvStore;
    use crate::kv::{Request, StateMachine};
    use crate::prng::Prng;

    fn store_with(n: usize, seed: u64) -> KvStore {
        let mut kv = KvStore::new(seed);
        let mut p = Prng::new(seed);
        for i in 0..n {
            let mut key = vec![0u8; p.range(0, 24) as usize];
            p.fill(&mut key);
            let mut value = vec![0u8; p.range(0, 100) as usize];
            p.fill(&mut value);
            let args = vec![b"SET".to_vec(), key, value];
            let Some(Request::Write(e)) = kv.parse(&args) else {
                panic!("SET did not parse")
            };
            kv.apply(LogIndex(i as u64 + 1), &e);
        }
        kv
    }

    fn snapshot_of(kv: &KvStore) -> (Vec<u8>, u64) {
        let mut buf = Vec::new();
        let h = kv.write_snapshot(&mut buf).expect("write to a Vec");
        (buf, h)
    }

    fn assert_same(a: &KvStore, b: &KvStore) {
        assert_eq!(a.applied_index(), b.applied_index());
        assert_eq!(a.state_hash(), b.state_hash());
        assert!(a.list().iter().eq(b.list().iter()), "contents differ");
    }

    #[test]
    fn empty_small_and_large_states_round_trip_with_the_same_hash() {
        for n in [0usize, 1, 100, 50_000] {
            let kv = store_with(n, n as u64 + 1);
            let (buf, h) = snapshot_of(&kv);
            assert_eq!(h, kv.state_hash());
            let mut loaded = store_with(3, 99); // previous contents must be replaced
            let h2 = loaded.load_snapshot(&mut &buf[..]).expect("loads");
            assert_eq!(h2, h);
            assert_same(&kv, &loaded);
            loaded.check_invariants();
            // Writing the loaded store again gives the same bytes.
            assert_eq!(snapshot_of(&loaded).0, buf, "n = {n}");
        }
    }

    /// A reader that returns at most `step` bytes per read, so that records and the trailer
    /// straddle the reader's buffer refills at every kind of boundary.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_snapshot_read_in_pieces_of_any_size_loads_and_its_corruption_is_found() {
        let mut kv = store_with(3000, 8);
        // The greatest key (longer than any of store_with's), with a value over three
        // buffers: the bytes before the trailer are its value.
        let big = vec![b"SET".to_vec(), vec![0xff; 30], vec![7; 3 * BUFFER_SIZE]];
        let Some(Request::Write(e)) = kv.parse(&big) else {
            panic!("SET did not parse")
        };
        kv.apply(LogIndex(3001), &e);
        let (buf, h) = snapshot_of(&kv);
        for step in [
            1,
            7,
            4096,
            BUFFER_SIZE - 1,
            BUFFER_SIZE,
            BUFFER_SIZE + 3,
            usize::MAX,
        ] {
            let mut loaded = KvStore::new(2);
            let mut r = Trickle { data: &buf, step };
            assert_eq!(
                loaded.load_snapshot(&mut r).expect("loads"),
                h,
                "step {step}"
            );
            assert_same(&kv, &loaded);
            // A flipped byte inside the big value is found by the CRC (checked before the
            // state hash).
            let mut bad = buf.clone();
            bad[buf.len() - BUFFER_SIZE] ^= 0x10;
            let mut r = Trickle { data: &bad, step };
            let r = loaded.load_snapshot(&mut r);
            assert!(
                matches!(r, Err(SnapshotError::Checksum { .. })),
                "step {step}: {r:?}"
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected_and_leaves_the_store_untouched() {
        let (buf, _) = snapshot_of(&store_with(40, 3));
        let mut target = store_with(5, 4);
        let before = target.state_hash();
        for cut in 0..buf.len() {
            match target.load_snapshot(&mut &buf[..cut]) {
                Err(SnapshotError::Truncated { offset }) => assert_eq!(offset, cut as u64),
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert_eq!(target.state_hash(), before);
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let (buf, _) = snapshot_of(&store_with(30, 5));
        let mut target = KvStore::new(1);
        let before = target.state_hash();
        for i in 0..buf.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = buf.clone();
                bad[i] ^= bit;
                let r = target.load_snapshot(&mut &bad[..]);
                assert!(r.is_err(), "flip {bit:#x} at byte {i} accepted");
                assert_eq!(target.state_hash(), before);
            }
        }
    }

    #[test]
    fn wrong_magic_version_order_and_trailing_bytes_get_clear_errors() {
        let (buf, _) = snapshot_of(&store_with(3, 6));
        let mut kv = KvStore::new(1);
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(
            kv.load_snapshot(&mut &bad[..]),
            Err(SnapshotError::BadMagic)
        ));
        let mut bad = buf.clone();
        bad[11] = 3;
        assert!(matches!(
            kv.load_snapshot(&mut &bad[..]),
            Err(SnapshotError::Version(3))
        ));
        let mut bad = buf.clone();
        bad.push(0);
        let e = kv.load_snapshot(&mut &bad[..]).unwrap_err();
        assert!(e.to_string().contains("after the trailer"), "{e}");
        // Two records in the wrong order, with a valid CRC: caught by the order check
        // (in a version 1 snapshot, which is still read).
        let mut w = Vec::new();
        w.extend_from_slice(&MAGIC);
        w.extend_from_slice(&VERSION_1.to_be_bytes());
        w.extend_from_slice(&7u64.to_be_bytes());
        w.extend_from_slice(&2u64.to_be_bytes());
        for k in [b"b", b"a"] {
            w.extend_from_slice(&1u32.to_be_bytes());
            w.extend_from_slice(&0u32.to_be_bytes());
            w.extend_from_slice(k);
        }
        w.extend_from_slice(&0u64.to_be_bytes());
        let crc = crc32c::crc32c(&w);
        w.extend_from_slice(&crc.to_be_bytes());
        let e = kv.load_snapshot(&mut &w[..]).unwrap_err();
        assert!(
            matches!(e, SnapshotError::Corrupt { offset: 37, .. }),
            "{e}"
        );
        // A record claiming a value beyond the limit is refused before allocating it.
        let mut w = buf[..HEADER_SIZE].to_vec();
        w.extend_from_slice(&0u32.to_be_bytes());
        w.extend_from_slice(&u32::MAX.to_be_bytes());
        w.extend_from_slice(&0u64.to_be_bytes());
        let e = kv.load_snapshot(&mut &w[..]).unwrap_err();
        assert!(e.to_string().contains("VALUE_SIZE_MAX"), "{e}");
    }

    /// `w` with a valid CRC32C recomputed over everything before it.
    #[test]
    fn sessions_and_their_saved_replies_survive_a_snapshot_and_still_deduplicate() {
        use crate::kv::envelope::{wrap, Envelope, SessionTag};
        let mut kv = store_with(20, 11);
        let at = |stamp_ms, session| Envelope { stamp_ms, session };
        let payload = |args: &[&[u8]]| {
            let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
            match kv_parse(&args) {
                Request::Write(p) => p,
                other => panic!("{other:?}"),
            }
        };
        let (open, incr) = (payload(&[b"SESSION", b"OPEN"]), payload(&[b"INCR", b"n"]));
        let id = kv.applied_index().next();
        assert_eq!(
            kv.apply(id, &wrap(&at(50, None), &open)),
            crate::client::Value::Integer(id.0 as i64)
        );
        let tag = Some(SessionTag {
            id: id.0,
            seq: 1,
            lowest: 1,
        });
        let next = kv.applied_index().next();
        kv.apply(next, &wrap(&at(60, tag), &incr));
        let (buf, h) = snapshot_of(&kv);
        let mut loaded = KvStore::new(5);
        assert_eq!(loaded.load_snapshot(&mut &buf[..]).unwrap(), h);
        assert_same(&kv, &loaded);
        assert_eq!(loaded.session_stats(), kv.session_stats());
        assert_eq!(loaded.session_stats().0, 1);
        loaded.check_invariants();
        // The resend after the snapshot is answered from the saved reply, not applied again.
        let next = loaded.applied_index().next();
        let v = loaded.apply(next, &wrap(&at(70, tag), &incr));
        assert_eq!(v, crate::client::Value::Integer(1));
        assert_eq!(loaded.get(b"n"), Some(&b"1"[..]));
    }

    fn kv_parse(args: &[Vec<u8>]) -> Request {
        crate::kv::command::parse(args).expect("a KV command")
    }

    fn recrc(mut w: Vec<u8>) -> Vec<u8> {
        let n = w.len();
        let crc = crc32c::crc32c(&w[..n - 4]);
        w[n - 4..].copy_from_slice(&crc.to_be_bytes());
        w
    }

    /// A store with a stamp and TTLs on some keys (applied as enveloped entries).
    fn store_with_ttls(seed: u64) -> KvStore {
        let mut kv = store_with(50, seed);
        let keys: Vec<Vec<u8>> = kv.list().iter().map(|(k, _)| k.to_vec()).collect();
        for (i, k) in keys.iter().enumerate().step_by(3) {
            kv.test_set_expiry(k, 1_000 + i as u64);
        }
        kv
    }

    #[test]
    fn stamps_and_expiries_round_trip_and_count_in_the_state_hash() {
        let kv = store_with_ttls(8);
        assert!(kv.expiry_count() > 10);
        let (buf, h) = snapshot_of(&kv);
        let mut loaded = KvStore::new(1);
        assert_eq!(loaded.load_snapshot(&mut &buf[..]).unwrap(), h);
        assert_same(&kv, &loaded);
        assert_eq!(loaded.expiry_count(), kv.expiry_count());
        assert_eq!(loaded.applied_stamp_ms(), kv.applied_stamp_ms());
        loaded.check_invariants();
        assert_eq!(snapshot_of(&loaded).0, buf);
        // One expiry more, or a different stamp, is a different state.
        let mut other = KvStore::new(1);
        other.load_snapshot(&mut &buf[..]).unwrap();
        let k = other.list().iter().nth(1).unwrap().0.to_vec();
        other.test_set_expiry(&k, 5);
        assert_ne!(other.state_hash(), h);
    }

    #[test]
    fn expiries_for_missing_or_unordered_keys_and_unknown_sessions_are_refused() {
        let kv = store_with_ttls(9);
        let (buf, _) = snapshot_of(&kv);
        // Locate the expiry section: after the header and the records.
        let records: usize = kv
            .list()
            .iter()
            .map(|(k, v)| RECORD_HEADER_SIZE + k.len() + v.len())
            .sum();
        let exp_at = HEADER_SIZE + records;
        let sessions_at = buf.len() - TRAILER_SIZE - 8;
        let mut bad = buf.clone();
        bad[sessions_at + 7] = 1;
        // One session claimed, none there: the trailer is too short to be its record.
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        let mut bad = buf.clone();
        bad[sessions_at..sessions_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(e.to_string().contains("SESSIONS_MAX"), "{e}");
        // A count larger than the number of keys.
        let mut bad = buf.clone();
        bad[exp_at..exp_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(e.to_string().contains("more expiries than keys"), "{e}");
        // Known keys: k00..k19, with expiries on k03 and k07.
        let mut kv = KvStore::new(2);
        for i in 0..20 {
            let args = vec![
                b"SET".to_vec(),
                format!("k{i:02}").into_bytes(),
                b"v".to_vec(),
            ];
            let Some(Request::Write(e)) = kv.parse(&args) else {
                panic!("SET did not parse")
            };
            kv.apply(LogIndex(i + 1), &e);
        }
        kv.test_set_expiry(b"k03", 10);
        kv.test_set_expiry(b"k07", 20);
        let (buf, _) = snapshot_of(&kv);
        let first = buf.windows(3).position(|w| w == b"k03").unwrap();
        let first = first
            + buf[first + 3..]
                .windows(3)
                .position(|w| w == b"k03")
                .unwrap()
            + 3;
        for (key, want) in [(b"k99", "not stored"), (b"k08", "out of order")] {
            let mut bad = buf.clone();
            bad[first..first + 3].copy_from_slice(key);
            let e = KvStore::new(1)
                .load_snapshot(&mut &recrc(bad)[..])
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn a_version_1_snapshot_loads_with_its_stored_hash() {
        let kv = store_with(20, 10);
        // Write it as version 1: no stamp, no last deletion, no modified indexes (8-byte
        // record headers), no expiry and session sections.
        let mut w = MAGIC.to_vec();
        w.extend_from_slice(&VERSION_1.to_be_bytes());
        w.extend_from_slice(&kv.applied_index().0.to_be_bytes());
        w.extend_from_slice(&(kv.len() as u64).to_be_bytes());
        let mut entries_hash = 0u64;
        for (k, v) in kv.list().iter() {
            w.extend_from_slice(&(k.len() as u32).to_be_bytes());
            w.extend_from_slice(&(v.len() as u32).to_be_bytes());
            w.extend_from_slice(k);
            w.extend_from_slice(v);
            entries_hash = entries_hash.wrapping_add(entry_hash(k, v));
        }
        let h = combine_state_hash(kv.applied_index(), kv.len(), entries_hash);
        w.extend_from_slice(&h.to_be_bytes());
        w.extend_from_slice(&[0; 4]);
        let mut loaded = KvStore::new(3);
        assert_eq!(loaded.load_snapshot(&mut &recrc(w)[..]).unwrap(), h);
        assert_eq!(loaded.state_hash(), h);
        let pairs = |s: &KvStore| -> Vec<(Vec<u8>, Vec<u8>)> {
            s.list()
                .iter()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()
        };
        assert_eq!(pairs(&loaded), pairs(&kv));
        loaded.check_invariants();
    }

    #[test]
    fn modified_indexes_and_the_last_deletion_round_trip_and_count_in_the_state_hash() {
        let mut kv = store_with(30, 11);
        let next = |kv: &KvStore| kv.applied_index().next();
        let victim = kv.list().iter().nth(3).unwrap().0.to_vec();
        let del = match kv.parse(&[b"DEL".to_vec(), victim]) {
            Some(Request::Write(e)) => e,
            x => panic!("{x:?}"),
        };
        let at = next(&kv);
        kv.apply(at, &del);
        let (buf, h) = snapshot_of(&kv);
        let mut loaded = KvStore::new(4);
        assert_eq!(loaded.load_snapshot(&mut &buf[..]).unwrap(), h);
        assert_eq!(BigEndian::read_u64(&buf[28..36]), at.0, "last deletion");
        let stamps = |s: &KvStore| -> Vec<u64> {
            let mut it = s.list().iter();
            std::iter::from_fn(|| it.next_modified().map(|(_, _, m)| m)).collect()
        };
        assert_eq!(stamps(&loaded), stamps(&kv));
        assert!(stamps(&kv).iter().any(|&m| m > 1), "stamps differ by key");
        loaded.check_invariants();
        // A different stamp, or a stamp past the applied index, with a valid CRC: refused.
        let first_stamp = HEADER_SIZE + 8;
        let mut bad = buf.clone();
        bad[first_stamp + 7] ^= 1;
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(matches!(e, SnapshotError::StateHash { .. }), "{e}");
        let mut bad = buf.clone();
        bad[first_stamp..first_stamp + 8].copy_from_slice(&(at.0 + 1).to_be_bytes());
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(e.to_string().contains("modified after the applied"), "{e}");
        let mut bad = buf.clone();
        bad[28..36].copy_from_slice(&(at.0 + 1).to_be_bytes());
        let e = KvStore::new(1)
            .load_snapshot(&mut &recrc(bad)[..])
            .unwrap_err();
        assert!(e.to_string().contains("last deletion"), "{e}");
    }

    #[test]
    fn a_valid_crc_over_a_wrong_state_hash_is_rejected() {
        let (mut buf, _) = snapshot_of(&store_with(10, 7));
        let n = buf.len();
        buf[n - TRAILER_SIZE] ^= 1;
        let crc = crc32c::crc32c(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_be_bytes());
        let mut kv = KvStore::new(1);
        assert!(matches!(
            kv.load_snapshot(&mut &buf[..]),
            Err(SnapshotError::StateHash { .. })
        ));
    }
}
