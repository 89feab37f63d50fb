//! The on-disk format of a log segment, at the byte level, and its pure encode/decode.
//!
//! Owns: the segment header and record layouts, their checksums, and the check that decides
//! whether a byte range holds a valid record. Must not: touch a file (see `segment.rs`).
//!
//! All integers are big-endian.
//!
//! A segment file is named `<first index, 20 decimal digits>.wal` and is created at its full
//! size (`WalOptions::segment_size`), so every byte after the last record is zero or
//! garbage from a torn write.
//!
//! Segment header, `SEGMENT_HEADER_SIZE` = 32 bytes at offset 0:
//! ```text
//! offset size field
//!      0    8 magic "KVRFTWAL"
//!      8    4 format version (2)
//!     12    4 reserved, zero
//!     16    8 first index: the index of the first record (equal to the file name's)
//!     24    4 crc32c of bytes 0..24
//!     28    4 reserved, zero
//! ```
//!
//! Records follow back to back from offset 32; a record never spans two segments. One record,
//! `RECORD_HEADER_SIZE` = 48 bytes of header then the payload:
//! ```text
//! offset size field
//!      0    4 record magic "KVRC": lets recovery find records after a damaged one cheaply
//!      4    4 crc32c of bytes 8..48 followed by the payload
//!      8    4 payload length n (<= limits::ENTRY_SIZE_MAX)
//!     12    1 entry kind (raft::EntryKind)
//!     13    3 reserved, zero
//!     16    8 term
//!     24    8 index
//!     32    8 batch: sequence number of the group-commit batch the record was written in
//!     40    8 batch first index: the index of that batch's first record (<= index)
//!     48    n payload
//! ```
//! The next record starts at `48 + n`. A zeroed header never checks (the magic is not zero),
//! so the preallocated space reads as "no record".
//!
//! A batch is everything written between two points at which the whole log was durable (a
//! sync, a segment roll, a truncation). Its records share one batch number, larger than every
//! batch before it, and lie back to back in one segment starting at the record whose index is
//! the batch's first index. Because a batch is written only after the previous one was made
//! durable, a valid record of batch b proves that every batch before b was synced; that is how
//! recovery tells a torn tail from damage to synced data (see `segmented.rs`).
//!
//! Version 1 (32-byte record headers without a magic or a batch) is refused with an error
//! naming both versions: see `HeaderError::Version`.
//!
//! Invariants:
//! 1. `encode_record` and `check_record` agree: every encoded record checks, and a record that
//!    checks has a length within `ENTRY_SIZE_MAX`, lies inside the given bytes, and has
//!    `batch_first <= index`.
//! 2. `check_record` never panics on any input (it is called on arbitrary disk bytes).

use crate::limits::ENTRY_SIZE_MAX;
use crate::raft::{EntryKind, LogIndex, Term};

pub const SEGMENT_MAGIC: [u8; 8] = *b"KVRFTWAL";
pub const SEGMENT_VERSION: u32 = 2;
pub const RECORD_MAGIC: [u8; 4] = *b"KVRC";

const SEG_MAGIC_OFFSET: usize = 0;
const SEG_VERSION_OFFSET: usize = SEG_MAGIC_OFFSET + 8;
const SEG_RESERVED_OFFSET: usize = SEG_VERSION_OFFSET + 4;
const SEG_FIRST_INDEX_OFFSET: usize = SEG_RESERVED_OFFSET + 4;
const SEG_CRC_OFFSET: usize = SEG_FIRST_INDEX_OFFSET + 8;
const SEG_RESERVED2_OFFSET: usize = SEG_CRC_OFFSET + 4;
pub const SEGMENT_HEADER_SIZE: usize = SEG_RESERVED2_OFFSET + 4;
const _: () = assert!(SEG_FIRST_INDEX_OFFSET == 16);
const _: () = assert!(SEG_CRC_OFFSET == 24);
const _: () = assert!(SEGMENT_HEADER_SIZE == 32);

const REC_MAGIC_OFFSET: usize = 0;
const REC_CRC_OFFSET: usize = REC_MAGIC_OFFSET + 4;
const REC_LEN_OFFSET: usize = REC_CRC_OFFSET + 4;
const REC_KIND_OFFSET: usize = REC_LEN_OFFSET + 4;
const REC_RESERVED_OFFSET: usize = REC_KIND_OFFSET + 1;
const REC_TERM_OFFSET: usize = REC_RESERVED_OFFSET + 3;
const REC_INDEX_OFFSET: usize = REC_TERM_OFFSET + 8;
const REC_BATCH_OFFSET: usize = REC_INDEX_OFFSET + 8;
const REC_BATCH_FIRST_OFFSET: usize = REC_BATCH_OFFSET + 8;
pub const RECORD_HEADER_SIZE: usize = REC_BATCH_FIRST_OFFSET + 8;
const _: () = assert!(REC_LEN_OFFSET == 8);
const _: () = assert!(REC_TERM_OFFSET == 16);
const _: () = assert!(REC_INDEX_OFFSET == 24);
const _: () = assert!(REC_BATCH_OFFSET == 32 && REC_BATCH_FIRST_OFFSET == 40);
const _: () = assert!(RECORD_HEADER_SIZE == 48);
const _: () = assert!(ENTRY_SIZE_MAX <= u32::MAX as usize);

/// Bytes a record with an `n`-byte payload takes in a segment.
pub fn record_size(n: usize) -> usize {
    RECORD_HEADER_SIZE + n
}

/// The decoded header of a record that checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    pub payload_len: usize,
    /// The group-commit batch the record was written in.
    pub batch: u64,
    /// The index of that batch's first record.
    pub batch_first: LogIndex,
}

impl RecordHeader {
    pub fn size(&self) -> usize {
        record_size(self.payload_len)
    }
}

/// Why a segment header does not check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short { len: usize },
    Magic,
    Version { version: u32 },
    Checksum,
    Reserved,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short { len } => {
                write!(f, "file of {len} bytes is shorter than the segment header")
            }
            HeaderError::Magic => write!(f, "bad magic (not a kvraft log segment)"),
            HeaderError::Version { version } => {
                write!(
                    f,
                    "segment format version {version}, expected {SEGMENT_VERSION}"
                )
            }
            HeaderError::Checksum => write!(f, "segment header checksum mismatch"),
            HeaderError::Reserved => write!(f, "segment header reserved bytes are not zero"),
        }
    }
}

pub fn encode_segment_header(first: LogIndex) -> [u8; SEGMENT_HEADER_SIZE] {
    let mut h = [0u8; SEGMENT_HEADER_SIZE];
    h[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    h[SEG_VERSION_OFFSET..SEG_RESERVED_OFFSET].copy_from_slice(&SEGMENT_VERSION.to_be_bytes());
    h[SEG_FIRST_INDEX_OFFSET..SEG_CRC_OFFSET].copy_from_slice(&first.0.to_be_bytes());
    let crc = crc32c::crc32c(&h[..SEG_CRC_OFFSET]);
    h[SEG_CRC_OFFSET..SEG_RESERVED2_OFFSET].copy_from_slice(&crc.to_be_bytes());
    h
}

/// Checks the segment header at the start of `b` and returns its first index.
pub fn decode_segment_header(b: &[u8]) -> Result<LogIndex, HeaderError> {
    if b.len() < SEGMENT_HEADER_SIZE {
        return Err(HeaderError::Short { len: b.len() });
    }
    if b[SEG_MAGIC_OFFSET..SEG_VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    let crc = read_u32(b, SEG_CRC_OFFSET);
    if crc32c::crc32c(&b[..SEG_CRC_OFFSET]) != crc {
        return Err(HeaderError::Checksum);
    }
    let version = read_u32(b, SEG_VERSION_OFFSET);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Version { version });
    }
    if read_u32(b, SEG_RESERVED_OFFSET) != 0 || read_u32(b, SEG_RESERVED2_OFFSET) != 0 {
        return Err(HeaderError::Reserved);
    }
    Ok(LogIndex(read_u64(b, SEG_FIRST_INDEX_OFFSET)))
}

/// Where a record belongs: its batch number and the index of the batch's first record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchTag {
    pub batch: u64,
    pub first: LogIndex,
}

/// Writes one record into `out`, which must be exactly `record_size(payload.len())` bytes.
pub fn encode_record(
    out: &mut [u8],
    term: Term,
    index: LogIndex,
    kind: EntryKind,
    tag: BatchTag,
    payload: &[u8],
) {
    assert!(
        payload.len() <= ENTRY_SIZE_MAX,
        "payload of {} bytes exceeds ENTRY_SIZE_MAX",
        payload.len()
    );
    assert!(
        tag.first <= index,
        "batch first {} after index {index}",
        tag.first
    );
    assert_eq!(out.len(), record_size(payload.len()), "record buffer size");
    let (hdr, body) = out.split_at_mut(RECORD_HEADER_SIZE);
    hdr[REC_MAGIC_OFFSET..REC_CRC_OFFSET].copy_from_slice(&RECORD_MAGIC);
    hdr[REC_LEN_OFFSET..REC_KIND_OFFSET].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    hdr[REC_KIND_OFFSET] = kind as u8;
    hdr[REC_RESERVED_OFFSET..REC_TERM_OFFSET].fill(0);
    hdr[REC_TERM_OFFSET..REC_INDEX_OFFSET].copy_from_slice(&term.0.to_be_bytes());
    hdr[REC_INDEX_OFFSET..REC_BATCH_OFFSET].copy_from_slice(&index.0.to_be_bytes());
    hdr[REC_BATCH_OFFSET..REC_BATCH_FIRST_OFFSET].copy_from_slice(&tag.batch.to_be_bytes());
    hdr[REC_BATCH_FIRST_OFFSET..RECORD_HEADER_SIZE].copy_from_slice(&tag.first.0.to_be_bytes());
    body.copy_from_slice(payload);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[REC_LEN_OFFSET..]), body);
    hdr[REC_CRC_OFFSET..REC_LEN_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// The record at `b[off..]` if it checks completely (magic, length, reserved bytes, kind,
/// batch, checksum).
pub fn check_record(b: &[u8], off: usize) -> Option<RecordHeader> {
    let hdr_end = off.checked_add(RECORD_HEADER_SIZE)?;
    if hdr_end > b.len() {
        return None;
    }
    let hdr = &b[off..hdr_end];
    if hdr[REC_MAGIC_OFFSET..REC_CRC_OFFSET] != RECORD_MAGIC {
        return None;
    }
    let payload_len = read_u32(hdr, REC_LEN_OFFSET) as usize;
    if payload_len > ENTRY_SIZE_MAX || payload_len > b.len() - hdr_end {
        return None;
    }
    if hdr[REC_RESERVED_OFFSET..REC_TERM_OFFSET]
        .iter()
        .any(|&x| x != 0)
    {
        return None;
    }
    let kind = EntryKind::from_u8(hdr[REC_KIND_OFFSET])?;
    let payload = &b[hdr_end..hdr_end + payload_len];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[REC_LEN_OFFSET..]), payload);
    if crc != read_u32(hdr, REC_CRC_OFFSET) {
        return None;
    }
    let index = LogIndex(read_u64(hdr, REC_INDEX_OFFSET));
    let batch_first = LogIndex(read_u64(hdr, REC_BATCH_FIRST_OFFSET));
    if batch_first > index {
        return None;
    }
    Some(RecordHeader {
        term: Term(read_u64(hdr, REC_TERM_OFFSET)),
        index,
        kind,
        payload_len,
        batch: read_u64(hdr, REC_BATCH_OFFSET),
        batch_first,
    })
}

/// The term of a record already known to be valid (recovered or written by us).
pub fn record_term(b: &[u8], off: usize) -> Term {
    Term(read_u64(b, off + REC_TERM_OFFSET))
}

fn read_u32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trips_and_rejects_any_flipped_bit() {
        let h = encode_segment_header(LogIndex(77));
        assert_eq!(decode_segment_header(&h), Ok(LogIndex(77)));
        for i in 0..h.len() * 8 {
            let mut b = h;
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                decode_segment_header(&b).is_err(),
                "bit {i} flipped still decodes"
            );
        }
        assert_eq!(
            decode_segment_header(&h[..31]),
            Err(HeaderError::Short { len: 31 })
        );
    }

    #[test]
    fn record_round_trips_and_rejects_any_flipped_bit_or_truncation() {
        let payload = b"hello wal";
        let mut buf = vec![0u8; record_size(payload.len())];
        let tag = BatchTag {
            batch: 5,
            first: LogIndex(7),
        };
        encode_record(
            &mut buf,
            Term(3),
            LogIndex(9),
            EntryKind::Command,
            tag,
            payload,
        );
        let h = check_record(&buf, 0).expect("valid");
        assert_eq!(
            h,
            RecordHeader {
                term: Term(3),
                index: LogIndex(9),
                kind: EntryKind::Command,
                payload_len: payload.len(),
                batch: 5,
                batch_first: LogIndex(7),
            }
        );
        for i in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(
                check_record(&b, 0).is_none(),
                "bit {i} flipped still checks"
            );
        }
        for n in 0..buf.len() {
            assert!(check_record(&buf[..n], 0).is_none(), "prefix of {n} checks");
        }
    }

    #[test]
    fn a_version_1_header_is_refused_as_a_version_error() {
        let mut h = encode_segment_header(LogIndex(5));
        h[SEG_VERSION_OFFSET..SEG_RESERVED_OFFSET].copy_from_slice(&1u32.to_be_bytes());
        let crc = crc32c::crc32c(&h[..SEG_CRC_OFFSET]);
        h[SEG_CRC_OFFSET..SEG_RESERVED2_OFFSET].copy_from_slice(&crc.to_be_bytes());
        let err = decode_segment_header(&h).unwrap_err();
        assert_eq!(err, HeaderError::Version { version: 1 });
        assert!(err.to_string().contains("version 1, expected 2"), "{err}");
    }

    #[test]
    fn a_record_claiming_its_batch_starts_after_it_does_not_check() {
        let mut buf = vec![0u8; record_size(3)];
        let tag = BatchTag {
            batch: 1,
            first: LogIndex(9),
        };
        encode_record(
            &mut buf,
            Term(1),
            LogIndex(9),
            EntryKind::Command,
            tag,
            b"abc",
        );
        assert!(check_record(&buf, 0).is_some());
        buf[REC_BATCH_FIRST_OFFSET..RECORD_HEADER_SIZE].copy_from_slice(&10u64.to_be_bytes());
        let crc = crc32c::crc32c_append(
            crc32c::crc32c(&buf[REC_LEN_OFFSET..RECORD_HEADER_SIZE]),
            b"abc",
        );
        buf[REC_CRC_OFFSET..REC_LEN_OFFSET].copy_from_slice(&crc.to_be_bytes());
        assert!(check_record(&buf, 0).is_none());
    }

    #[test]
    fn zeroed_space_is_not_a_record() {
        let z = vec![0u8; 256];
        for off in 0..z.len() {
            assert!(check_record(&z, off).is_none());
        }
        assert!(check_record(&z, usize::MAX - 3).is_none());
    }
}
