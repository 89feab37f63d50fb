//! Segment images in memory: log segments in the real byte format (`format.rs`), built
//! without a file, and the verdict start-up recovery (`recovery.rs`) reaches on them.
//!
//! Owns: nothing durable. It exists so that the simulator's disk (tests/support/sim_disk.rs),
//! which keeps its log as entries, can ask the real recovery what it would make of damage it
//! injects (a flipped byte, a segment cut short, a torn unsynced tail): the simulated disk
//! then never detects damage the real log could not tell from a torn tail, nor the reverse.
//! Must not: touch a file; judge differently from `Wal::open` (both call
//! `recovery::judge_segment`, segment after segment, stopping at the first damaged one).
//!
//! Invariant: a `SegmentImage` holds a valid segment header followed by the records pushed, back
//! to back, as `Wal::append` writes them; only `bytes_mut` and `truncate` (the caller
//! damaging it on purpose) break that.

use std::ops::Range;

use super::format::{self, encode_record, record_size, BatchTag, SEGMENT_HEADER_SIZE};
use super::recovery::{cut_range, judge_segment, Judged, Verdict};
use crate::limits::ENTRY_SIZE_MAX;
use crate::raft::{Entry, LogIndex};

/// One segment file's bytes, built in memory.
#[derive(Clone, Debug)]
pub struct SegmentImage {
    first: LogIndex,
    bytes: Vec<u8>,
}

impl SegmentImage {
    /// A segment whose first record will be `first` (its file name and header say so).
    pub fn new(first: LogIndex) -> SegmentImage {
        SegmentImage {
            first,
            bytes: format::encode_segment_header(first).to_vec(),
        }
    }

    pub fn first(&self) -> LogIndex {
        self.first
    }

    /// Appends the record of `e`, written in group-commit batch `batch` whose first record is
    /// `batch_first` (see `format.rs`); returns where its bytes are.
    pub fn push(&mut self, e: &Entry, batch: u64, batch_first: LogIndex) -> Range<usize> {
        assert!(
            e.data.len() <= ENTRY_SIZE_MAX,
            "entry {} of {} bytes",
            e.index,
            e.data.len()
        );
        let start = self.bytes.len();
        self.bytes.resize(start + record_size(e.data.len()), 0);
        let tag = BatchTag {
            batch,
            first: batch_first,
        };
        encode_record(
            &mut self.bytes[start..],
            e.term,
            e.index,
            e.kind,
            tag,
            &e.data,
        );
        start..self.bytes.len()
    }

    /// The bytes, to damage.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Cut the file short at `len` bytes (at least the header's).
    pub fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len.max(SEGMENT_HEADER_SIZE));
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() <= SEGMENT_HEADER_SIZE
    }
}

/// Damage recovery found in synced data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDamage {
    /// The first index not kept.
    pub first_lost: LogIndex,
    pub reason: String,
}

/// What recovery makes of a log of segment images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// Records kept, counted from the first segment's first index (the intact prefix, or the
    /// log without its torn tail).
    pub kept: usize,
    /// Damage to synced data (`None`: whatever was cut was a torn tail).
    pub damage: Option<ImageDamage>,
    /// Non-zero bytes cut off the end of the last segment: an uncertain tail
    /// (`Recovery::uncertain_tail`); 0 for a clean end.
    pub tail_cut_bytes: u64,
}

/// Judges `segments` (ordered by first index) as `Wal::open` does.
pub fn judge(segments: &[SegmentImage]) -> Judgement {
    let mut kept = 0usize;
    let mut tail_cut_bytes = 0;
    let mut last: Option<LogIndex> = None;
    for (k, seg) in segments.iter().enumerate() {
        let next_first = segments.get(k + 1).map(|s| s.first);
        let first_lost = last.map_or(seg.first, |l| l.next());
        let (first_lost, reason) = match judge_segment(&seg.bytes, seg.first, next_first) {
            Err(version) => (first_lost, format!("segment format version {version}")),
            Ok(Judged::Unreadable { reason }) => (first_lost, reason),
            Ok(Judged::Scanned {
                scan,
                verdict: Verdict::Cut { keep },
            }) => {
                if next_first.is_none() {
                    let (cut, garbage_end) = cut_range(&scan, keep);
                    tail_cut_bytes = (garbage_end - cut) as u64;
                }
                kept += keep;
                if keep > 0 {
                    last = Some(seg.first.plus(keep as u64 - 1));
                }
                continue;
            }
            Ok(Judged::Scanned {
                scan,
                verdict: Verdict::Damaged { reason },
            }) => {
                kept += scan.offsets.len();
                (scan.last.map_or(first_lost, |h| h.index.next()), reason)
            }
        };
        return Judgement {
            kept,
            damage: Some(ImageDamage { first_lost, reason }),
            tail_cut_bytes: 0,
        };
    }
    Judgement {
        kept,
        damage: None,
        tail_cut_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryKind, Term};

    fn entry(i: u64) -> Entry {
        Entry {
            term: Term(1),
            index: LogIndex(i),
            kind: EntryKind::Command,
            data: vec![i as u8; 40].into(),
        }
    }

    /// Segments starting at 1 and 6; batches [1, 2], [3, 4, 5] in the first and [6, 7], [8]
    /// in the second. Returns the images and each record's byte range.
    fn log() -> (Vec<SegmentImage>, Vec<(usize, Range<usize>)>) {
        let mut segs = vec![
            SegmentImage::new(LogIndex(1)),
            SegmentImage::new(LogIndex(6)),
        ];
        let batches = [
            (1, 1, 0),
            (1, 1, 0),
            (2, 3, 0),
            (2, 3, 0),
            (2, 3, 0),
            (3, 6, 1),
        ];
        let mut at = Vec::new();
        for (k, &(b, f, s)) in batches.iter().enumerate() {
            at.push((s, segs[s].push(&entry(k as u64 + 1), b, LogIndex(f))));
        }
        at.push((1, segs[1].push(&entry(7), 3, LogIndex(6))));
        at.push((1, segs[1].push(&entry(8), 4, LogIndex(8))));
        (segs, at)
    }

    #[test]
    fn a_whole_log_keeps_every_record() {
        let (segs, _) = log();
        assert_eq!(
            judge(&segs),
            Judgement {
                kept: 8,
                damage: None,
                tail_cut_bytes: 0,
            }
        );
    }

    #[test]
    fn a_flip_followed_by_a_later_batch_is_damage_at_that_index() {
        for k in [0, 3, 4, 5, 6] {
            let (mut segs, at) = log();
            let (s, r) = at[k].clone();
            segs[s].bytes_mut()[r.start + 50] ^= 4;
            let j = judge(&segs);
            assert_eq!(j.kept, k, "flip in {}", k + 1);
            let d = j.damage.expect("damage");
            assert_eq!(d.first_lost, LogIndex(k as u64 + 1), "{}", d.reason);
        }
    }

    #[test]
    fn a_flip_in_the_newest_batch_is_a_torn_tail() {
        let (mut segs, at) = log();
        let (s, r) = at[7].clone();
        segs[s].bytes_mut()[r.start + 50] ^= 4;
        // The whole record is cut, and reported as an uncertain tail.
        assert_eq!(
            judge(&segs),
            Judgement {
                kept: 7,
                damage: None,
                tail_cut_bytes: r.len() as u64,
            }
        );
    }

    #[test]
    fn a_segment_cut_short_before_the_next_one_is_damage() {
        let (mut segs, at) = log();
        let (_, r) = at[3].clone();
        segs[0].truncate(r.start + 10);
        let j = judge(&segs);
        assert_eq!(j.kept, 3);
        assert_eq!(j.damage.expect("damage").first_lost, LogIndex(4));
    }

    #[test]
    fn the_last_segment_cut_short_is_a_torn_tail() {
        let (mut segs, at) = log();
        let (_, r) = at[6].clone();
        segs[1].truncate(r.start);
        // Nothing non-zero is cut: a clean end, certain.
        assert_eq!(
            judge(&segs),
            Judgement {
                kept: 6,
                damage: None,
                tail_cut_bytes: 0,
            }
        );
    }
}
