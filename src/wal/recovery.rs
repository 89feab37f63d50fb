//! Start-up recovery of the segmented log: a torn tail is cut, damage to synced data is
//! reported (and, if the options say so, set aside) without refusing to start forever.
//!
//! Owns: scanning segments, judging what follows the first bad record, cutting, setting files
//! aside. Must not: know about Raft roles; delete evidence (damaged bytes are copied or renamed
//! aside, never only overwritten).
//!
//! Segments are read in the order of the index in their names. In each, records are checked
//! one after the other from the header while they check and continue the sequence (next
//! index, term not below, same batch or a new batch starting at this record). The first one
//! that does not is the damage point D; every byte from D to the last non-zero byte is then
//! scanned for valid records (found by their magic, then checked in full).
//!
//! The verdict (see `format.rs` for batches; a batch is written only after the previous one
//! was durable, so a valid record of a later batch proves the earlier ones were synced):
//! 1. Nothing valid after D, in the last segment: a torn tail (or a clean end). Cut at D.
//! 2. Valid records after D, in the last segment, all of the batch that D is in (the batch of
//!    the last good record, or a new batch whose first index is the one expected at D): that
//!    batch was never synced, so nothing in it was acknowledged. Torn as well (a power cut
//!    that kept a later page of the batch and lost an earlier one): cut at the batch's start.
//! 3. Anything else is damage to synced data: a valid record of a later batch after D; damage
//!    in a segment followed by another (a roll syncs a segment before the next one is
//!    created, so every segment but the last was synced whole); a segment ending before the
//!    index the next one starts at (cut short, or one missing); an unreadable header.
//!
//! On damage, with `OnDamage::Refuse`, nothing is changed and `open` fails naming the file,
//! the offset and the first lost index. With `OnDamage::KeepIntactPrefix`: the damage marker
//! is written (`damage.rs`), the damaged segment is copied aside (`<name>.damaged`, or renamed
//! if nothing in it is intact), it is zeroed from D, the later segments are renamed aside, and
//! the log ends at the intact prefix; `Recovery::damage` says what was lost. Each step leaves
//! the next start finding the same damage (or the marker): the copy comes before the zeroing,
//! the later segments go before the damaged one.
//!
//! An uncertain tail. Whenever rules 1 or 2 cut non-zero bytes off the end of the last segment
//! (not a clean end of zeros), `Recovery::uncertain_tail` says so, and the caller's
//! `before_cut` hook runs before those bytes are zeroed (the node persists "uncertain" in the
//! hard state there: a crash right after the zeroing must not forget it).
//!
//! NB: damage confined to the last batch is indistinguishable from that batch torn by a power
//! cut, so a flipped byte in the newest synced batch is cut as a torn tail. Telling them apart
//! would need the sync itself recorded (a commit record per batch, one more write per sync).
//! Instead every such cut is reported as an uncertain tail, and the node recovers what it may
//! have lost from the other members before it votes again (protocol-aware recovery, CTRL
//! FAST'18; `raft/uncertain.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use log::warn;

use super::damage::{self, Damage};
use super::format::{
    self, check_record, BatchTag, HeaderError, RecordHeader, SEGMENT_HEADER_SIZE, SEGMENT_VERSION,
};
use super::segment::{fsync_dir, Segment};
use super::segmented::{Seg, Wal};
use super::{io_error, OnDamage, WalError};
use crate::raft::LogIndex;

/// Suffix added to the name of a file set aside because it is damaged.
pub const DAMAGED_SUFFIX: &str = ".damaged";
/// Most copies of one segment kept aside (`.damaged`, `.damaged.1`, ...): a bound on the
/// search for a free name. Reaching it fails the start with an error asking to clear them.
const DAMAGED_COPIES_MAX: usize = 64;

/// Non-zero bytes cut off the end of the last segment at start-up: a torn tail, or damage to
/// the newest synced batch, which look alike (see "An uncertain tail" at the top).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UncertainTail {
    pub segment: PathBuf,
    /// Where the cut starts, and how many bytes up to the last non-zero one were cut.
    pub offset: u64,
    pub bytes: u64,
    /// The log's last index after the cut (`None`: the segment kept no record).
    pub last_kept: Option<LogIndex>,
}

impl std::fmt::Display for UncertainTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes cut from {} at offset {} (log now ends at {})",
            self.bytes,
            self.segment.display(),
            self.offset,
            self.last_kept
                .map_or_else(|| "the previous segment".to_string(), |i| i.to_string())
        )
    }
}

/// Called with the uncertain tail before its bytes are zeroed; an error stops the open.
pub type BeforeCut<'a> = &'a mut dyn FnMut(&UncertainTail) -> Result<(), WalError>;

/// Where a `Cut { keep }` verdict cuts, and the end of the non-zero bytes it cuts.
pub(super) fn cut_range(scan: &Scan, keep: usize) -> (usize, usize) {
    let cut = scan.offsets.get(keep).map_or(scan.end, |&o| o as usize);
    (cut, scan.garbage_end.max(cut))
}

/// Valid records found after the damage point of one segment.
#[derive(Clone, Copy, Debug, Default)]
struct After {
    max_index: Option<LogIndex>,
    /// The batch of the first record found.
    tag: Option<BatchTag>,
    /// Whether every record found is of that batch.
    one_batch: bool,
}

impl After {
    fn add(&mut self, h: &RecordHeader) {
        let tag = BatchTag {
            batch: h.batch,
            first: h.batch_first,
        };
        match self.tag {
            None => {
                self.tag = Some(tag);
                self.one_batch = true;
            }
            Some(t) => self.one_batch &= t == tag,
        }
        self.max_index = self.max_index.max(Some(h.index));
    }
}

/// What the scan of one segment found.
pub(super) struct Scan {
    /// Offsets of the good records, in order (`offsets[i]` holds index `first + i`).
    pub(super) offsets: Vec<u32>,
    /// The damage point D: end of the last good record.
    end: usize,
    pub(super) last: Option<RecordHeader>,
    /// End of the non-zero bytes from `end` on (== `end` when the tail is clean).
    garbage_end: usize,
    after: After,
}

/// Whether `h` may follow `prev` (or open a segment whose first index is `first`).
fn follows(prev: Option<&RecordHeader>, h: &RecordHeader, first: LogIndex) -> bool {
    let opens_batch = |after: u64| h.batch > after && h.batch_first == h.index;
    match prev {
        None => h.index == first && opens_batch(0),
        Some(p) => {
            h.index == p.index.next()
                && h.term >= p.term
                && ((h.batch == p.batch && h.batch_first == p.batch_first) || opens_batch(p.batch))
        }
    }
}

fn scan_segment(b: &[u8], first: LogIndex) -> Scan {
    let mut offsets = Vec::new();
    let mut off = SEGMENT_HEADER_SIZE;
    let mut last: Option<RecordHeader> = None;
    while let Some(h) = check_record(b, off) {
        if !follows(last.as_ref(), &h, first) {
            break;
        }
        offsets.push(off as u32);
        off += h.size();
        last = Some(h);
    }
    let garbage_end = nonzero_end(b, off);
    let mut after = After::default();
    let mut p = off + 1;
    while p < garbage_end {
        // The magic's first byte, then the whole record: a byte-by-byte walk over garbage.
        let Some(k) = b[p..garbage_end]
            .iter()
            .position(|&x| x == format::RECORD_MAGIC[0])
        else {
            break;
        };
        p += k;
        match check_record(b, p) {
            Some(h) => {
                after.add(&h);
                p += h.size();
            }
            None => p += 1,
        }
    }
    Scan {
        offsets,
        end: off,
        last,
        garbage_end,
        after,
    }
}

pub(super) enum Verdict {
    /// Keep the first `keep` good records; zero everything after them.
    Cut {
        keep: usize,
    },
    Damaged {
        reason: String,
    },
}

/// The verdict on one segment (see the numbered rules at the top).
fn judge(scan: &Scan, first: LogIndex, next_first: Option<LogIndex>) -> Verdict {
    let expect = scan.last.map_or(first, |h| h.index.next());
    let good = scan.offsets.len();
    let Some(tag) = scan.after.tag else {
        return match next_first {
            None => Verdict::Cut { keep: good },
            Some(n) if n == expect && good > 0 => Verdict::Cut { keep: good },
            Some(n) => Verdict::Damaged {
                reason: format!(
                    "the segment ends before index {expect} but the next one starts at {n}"
                ),
            },
        };
    };
    let in_last_batch = scan
        .last
        .is_some_and(|h| h.batch == tag.batch && h.batch_first == tag.first);
    let opens_at_d = tag.first == expect && scan.last.is_none_or(|h| tag.batch > h.batch);
    if next_first.is_none() && scan.after.one_batch && (in_last_batch || opens_at_d) {
        // Rule 2: the unsynced last batch, torn. Its first record is a good one or at D.
        return Verdict::Cut {
            keep: (tag.first.0 - first.0) as usize,
        };
    }
    Verdict::Damaged {
        reason: format!(
            "bad record where index {expect} was expected, followed by valid records \
             (batch {} from index {}){}",
            tag.batch,
            tag.first,
            if next_first.is_some() {
                " in a segment followed by others"
            } else {
                ""
            }
        ),
    }
}

/// The decision on one segment's bytes (the one `Wal::open` and `image::judge` make).
pub(super) enum Judged {
    /// The header does not check, or names another first index than the file name: damage,
    /// nothing in the segment is read.
    Unreadable { reason: String },
    /// The header checked; the records were scanned and judged.
    Scanned { scan: Scan, verdict: Verdict },
}

/// Judges one segment's bytes: its header, then its records. `Err` holds an unknown format
/// version, which recovery refuses outright (no upgrade in place).
pub(super) fn judge_segment(
    b: &[u8],
    name_first: LogIndex,
    next_first: Option<LogIndex>,
) -> Result<Judged, u32> {
    match format::decode_segment_header(b) {
        Err(HeaderError::Version { version }) => Err(version),
        Err(e) => Ok(Judged::Unreadable {
            reason: e.to_string(),
        }),
        Ok(first) if first != name_first => Ok(Judged::Unreadable {
            reason: format!("header says first index {first}, file name says {name_first}"),
        }),
        Ok(_) => {
            let scan = scan_segment(b, name_first);
            let verdict = judge(&scan, name_first, next_first);
            Ok(Judged::Scanned { scan, verdict })
        }
    }
}

/// A damaged segment, not (yet) part of the log.
pub(super) struct Found {
    path: PathBuf,
    file: Option<Segment>,
    first: LogIndex,
    offsets: Vec<u32>,
    end: usize,
    garbage_end: usize,
    first_lost: LogIndex,
    seen_after: Option<LogIndex>,
    reason: String,
}

impl Wal {
    /// Recovers every segment in `names` (sorted by first index) into `self.segments`.
    pub(super) fn recover(
        &mut self,
        names: &[(LogIndex, PathBuf)],
        before_cut: BeforeCut<'_>,
    ) -> Result<(), WalError> {
        let marker = damage::load(&self.dir)?;
        let mut found = None;
        for (k, (first, path)) in names.iter().enumerate() {
            let next_first = names.get(k + 1).map(|(f, _)| *f);
            if let Some(f) = self.recover_segment(*first, path, next_first, before_cut)? {
                found = Some((f, k));
                break;
            }
        }
        self.recovery.damage = match found {
            Some((f, k)) => Some(self.handle_damage(f, &names[k + 1..], marker)?),
            None => marker,
        };
        if let Some(d) = &self.recovery.damage {
            if self.opts.on_damage == OnDamage::Refuse {
                // Only a start that keeps the intact prefix writes a marker; one that does not
                // know about damage must not start on the cut log either.
                return Err(WalError::Corrupt {
                    file: self.dir.join(damage::DAMAGE_FILE),
                    offset: 0,
                    index: Some(d.first_lost_index),
                    reason: format!("{d} (refusing to start: OnDamage::Refuse)"),
                });
            }
            warn!("{}: {d}", self.dir.display());
        }
        Ok(())
    }

    /// Recovers one segment: `Some` if it is damaged (then it is not in the log).
    fn recover_segment(
        &mut self,
        name_first: LogIndex,
        path: &Path,
        next_first: Option<LogIndex>,
        before_cut: BeforeCut<'_>,
    ) -> Result<Option<Found>, WalError> {
        let first_lost = self.last_index().map_or(name_first, |l| l.next());
        let unreadable = |file: Option<Segment>, reason: String| Found {
            path: path.to_path_buf(),
            file,
            first: name_first,
            offsets: Vec::new(),
            end: 0,
            garbage_end: 0,
            first_lost,
            seen_after: None,
            reason,
        };
        let file = match Segment::open(path) {
            Ok(f) => f,
            Err(WalError::Corrupt { reason, .. }) => return Ok(Some(unreadable(None, reason))),
            Err(e) => return Err(e),
        };
        self.recovery.segments_scanned += 1;
        let (scan, verdict) = match judge_segment(file.bytes(), name_first, next_first) {
            Err(version) => {
                return Err(WalError::Corrupt {
                    file: path.to_path_buf(),
                    offset: 8,
                    index: None,
                    reason: format!(
                        "log format version {version}; this kvraftd reads only version \
                         {SEGMENT_VERSION} (no upgrade in place: run the kvraftd that wrote \
                         it, or rebuild this member from an empty data directory)"
                    ),
                })
            }
            Ok(Judged::Unreadable { reason }) => return Ok(Some(unreadable(Some(file), reason))),
            Ok(Judged::Scanned { scan, verdict }) => (scan, verdict),
        };
        match verdict {
            Verdict::Cut { keep } => {
                let last = next_first.is_none().then_some(before_cut);
                self.keep_segment(file, name_first, scan, keep, last)?;
                Ok(None)
            }
            Verdict::Damaged { reason } => Ok(Some(Found {
                path: path.to_path_buf(),
                file: Some(file),
                first: name_first,
                first_lost: scan.last.map_or(first_lost, |h| h.index.next()),
                seen_after: scan.after.max_index,
                offsets: scan.offsets,
                end: scan.end,
                garbage_end: scan.garbage_end,
                reason,
            })),
        }
    }

    /// Cuts the segment after its first `keep` records (zeroing the rest, durably) and adds it
    /// to the log, or removes it if that leaves nothing (only the last segment can be empty).
    /// `last_segment` holds the hook to call before non-zero bytes are cut off the last one.
    fn keep_segment(
        &mut self,
        mut file: Segment,
        first: LogIndex,
        mut scan: Scan,
        keep: usize,
        last_segment: Option<BeforeCut<'_>>,
    ) -> Result<(), WalError> {
        let (cut, garbage_end) = cut_range(&scan, keep);
        scan.offsets.truncate(keep);
        if let Some(before_cut) = last_segment.filter(|_| garbage_end > cut) {
            let tail = UncertainTail {
                segment: file.path().to_path_buf(),
                offset: cut as u64,
                bytes: (garbage_end - cut) as u64,
                last_kept: match keep {
                    0 => self.last_index(),
                    k => Some(first.plus(k as u64 - 1)),
                },
            };
            before_cut(&tail)?;
            self.recovery.uncertain_tail = Some(tail);
        }
        if scan.garbage_end > cut {
            // Zero the torn tail so later appends never sit next to stale bytes, durably before
            // anything new is written after it (segmented.rs invariant 3).
            file.bytes_mut()[cut..scan.garbage_end].fill(0);
            file.flush(cut, scan.garbage_end - cut)?;
            self.recovery.torn_tail_bytes += (scan.garbage_end - cut) as u64;
        }
        if scan.offsets.is_empty() {
            let path = file.path().to_path_buf();
            drop(file);
            fs::remove_file(&path).map_err(|e| io_error(&path, "remove empty segment", e))?;
            fsync_dir(&self.dir)?;
            self.recovery.empty_segments_removed += 1;
            return Ok(());
        }
        self.recovery.records += scan.offsets.len() as u64;
        let last = scan.last.expect("records were found");
        self.next_batch = self.next_batch.max(last.batch + 1);
        self.segments
            .push(Seg::recovered(file, first, scan.offsets, cut));
        Ok(())
    }

    /// Reports the damage and, with `KeepIntactPrefix`, sets the damaged files aside and keeps
    /// the intact prefix of the damaged segment (see the steps at the top).
    fn handle_damage(
        &mut self,
        f: Found,
        later: &[(LogIndex, PathBuf)],
        marker: Option<Damage>,
    ) -> Result<Damage, WalError> {
        let seen_later = later.iter().filter_map(|(_, p)| last_valid_index(p)).max();
        let mut d = Damage {
            segment: f.path.clone(),
            offset: f.end as u64,
            first_lost_index: f.first_lost,
            last_index_seen_after: f.seen_after.max(seen_later),
            reason: f.reason,
            set_aside: Vec::new(),
        };
        if self.opts.on_damage == OnDamage::Refuse {
            return Err(WalError::Corrupt {
                file: d.segment.clone(),
                offset: d.offset,
                index: Some(d.first_lost_index),
                reason: format!("{d} (refusing to start: OnDamage::Refuse)"),
            });
        }
        // The marker first, holding the older range too: from here on a crash at any step
        // leaves a start that knows about all of it.
        if let Some(old) = marker {
            d = old.merge(d);
        }
        damage::store(&self.dir, &d)?;
        let Some(mut file) = f.file.filter(|_| !f.offsets.is_empty()) else {
            for (_, p) in later {
                d.set_aside.push(set_aside(p)?);
            }
            d.set_aside.push(set_aside(&f.path)?);
            fsync_dir(&self.dir)?;
            return Ok(d);
        };
        if f.garbage_end > f.end {
            d.set_aside.push(copy_aside(&f.path)?);
            file.bytes_mut()[f.end..f.garbage_end].fill(0);
            file.flush(f.end, f.garbage_end - f.end)?;
        }
        for (_, p) in later {
            d.set_aside.push(set_aside(p)?);
        }
        fsync_dir(&self.dir)?;
        let last = check_record(file.bytes(), *f.offsets.last().expect("records") as usize)
            .expect("a record that checked during the scan");
        self.next_batch = self.next_batch.max(last.batch + 1);
        self.recovery.records += f.offsets.len() as u64;
        self.segments
            .push(Seg::recovered(file, f.first, f.offsets, f.end));
        Ok(d)
    }
}

/// The highest index of the valid records at the start of the segment at `path` (for the
/// damage report only: best effort, `None` when unreadable).
fn last_valid_index(path: &Path) -> Option<LogIndex> {
    let file = Segment::open(path).ok()?;
    let first = format::decode_segment_header(file.bytes()).ok()?;
    let scan = scan_segment(file.bytes(), first);
    scan.last.map(|h| h.index).max(scan.after.max_index)
}

/// A free name for a damaged copy of `path`.
fn damaged_name(path: &Path) -> Result<PathBuf, WalError> {
    for k in 0..DAMAGED_COPIES_MAX {
        let mut name = path.as_os_str().to_os_string();
        name.push(DAMAGED_SUFFIX);
        if k > 0 {
            name.push(format!(".{k}"));
        }
        let p = PathBuf::from(name);
        if !p.exists() {
            return Ok(p);
        }
    }
    Err(WalError::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        index: None,
        reason: format!(
            "{DAMAGED_COPIES_MAX} damaged copies of this segment are kept already; \
             move them elsewhere"
        ),
    })
}

/// Renames `path` aside (the caller fsyncs the directory).
fn set_aside(path: &Path) -> Result<PathBuf, WalError> {
    let to = damaged_name(path)?;
    fs::rename(path, &to).map_err(|e| io_error(path, "rename aside", e))?;
    Ok(to)
}

/// Copies `path` aside durably (the original is about to be zeroed from the damage on).
fn copy_aside(path: &Path) -> Result<PathBuf, WalError> {
    let to = damaged_name(path)?;
    let mut tmp = to.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::copy(path, &tmp).map_err(|e| io_error(path, "copy aside", e))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(&tmp, "fsync", e))?;
    fs::rename(&tmp, &to).map_err(|e| io_error(&to, "rename", e))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(to)
}

/// One past the last non-zero byte of `b[from..]`, or `from` if all are zero.
pub(super) fn nonzero_end(b: &[u8], from: usize) -> usize {
    let tail = &b[from.min(b.len())..];
    let mut chunks = tail.rchunks_exact(64);
    let rem_len = chunks.remainder().len();
    let mut end = tail.len();
    for c in chunks.by_ref() {
        if c.iter().any(|&x| x != 0) {
            return from + end - c.iter().rev().position(|&x| x != 0).expect("non-zero");
        }
        end -= 64;
    }
    assert_eq!(end, rem_len);
    from + tail[..rem_len]
        .iter()
        .rposition(|&x| x != 0)
        .map_or(0, |p| p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{EntryKind, Term};

    /// A segment body of 100-byte records, `(index, batch, batch first)` each, from the header.
    fn segment(records: &[(u64, u64, u64)]) -> (Vec<u8>, Vec<usize>) {
        let mut b = vec![0u8; 64 * 1024];
        let mut offs = Vec::new();
        let mut off = SEGMENT_HEADER_SIZE;
        for &(index, batch, first) in records {
            let size = format::record_size(100);
            let tag = BatchTag {
                batch,
                first: LogIndex(first),
            };
            let payload = [index as u8; 100];
            format::encode_record(
                &mut b[off..off + size],
                Term(1),
                LogIndex(index),
                EntryKind::Command,
                tag,
                &payload,
            );
            offs.push(off);
            off += size;
        }
        (b, offs)
    }

    fn verdict(b: &[u8], next_first: Option<LogIndex>) -> Result<usize, String> {
        let scan = scan_segment(b, LogIndex(1));
        match judge(&scan, LogIndex(1), next_first) {
            Verdict::Cut { keep } => Ok(keep),
            Verdict::Damaged { reason } => Err(reason),
        }
    }

    // Batches: 1 = [1, 2], 2 = [3, 4, 5], 3 = [6, 7].
    const LOG: [(u64, u64, u64); 7] = [
        (1, 1, 1),
        (2, 1, 1),
        (3, 2, 3),
        (4, 2, 3),
        (5, 2, 3),
        (6, 3, 6),
        (7, 3, 6),
    ];

    #[test]
    fn a_clean_segment_keeps_everything() {
        let (b, _) = segment(&LOG);
        assert_eq!(verdict(&b, None), Ok(7));
        assert_eq!(verdict(&b, Some(LogIndex(8))), Ok(7));
        assert!(
            verdict(&b, Some(LogIndex(9))).is_err(),
            "a gap to the next segment"
        );
    }

    #[test]
    fn damage_in_the_last_batch_with_a_valid_record_after_it_cuts_at_the_batch_start() {
        let (mut b, offs) = segment(&LOG);
        b[offs[5] + 60] ^= 1; // index 6, the first of batch 3
        assert_eq!(verdict(&b, None), Ok(5));
        let (mut b, offs) = segment(&LOG);
        b[offs[6] + 60] ^= 1; // index 7, the last record: nothing valid after it
        assert_eq!(verdict(&b, None), Ok(6));
    }

    #[test]
    fn damage_followed_by_a_record_of_a_later_batch_is_damage() {
        for k in 0..5 {
            let (mut b, offs) = segment(&LOG);
            b[offs[k] + 70] ^= 0x80;
            let why = verdict(&b, None).unwrap_err();
            assert!(why.contains(&format!("index {}", k + 1)), "{why}");
        }
    }

    #[test]
    fn damage_in_a_segment_followed_by_another_is_damage_even_in_its_last_batch() {
        let (mut b, offs) = segment(&LOG);
        b[offs[5] + 60] ^= 1;
        assert!(verdict(&b, Some(LogIndex(8))).is_err());
    }

    #[test]
    fn the_forward_scan_finds_a_record_behind_garbage_at_any_offset() {
        let (b, offs) = segment(&LOG[..3]);
        for shift in 1..9 {
            // Records 1, 2 good, then garbage, then record 3 (batch 2) moved by `shift`.
            let mut c = b.clone();
            let rec = b[offs[2]..offs[2] + format::record_size(100)].to_vec();
            c[offs[2]..offs[2] + shift].fill(0x4B); // 'K', the magic's first byte
            c[offs[2] + shift..offs[2] + shift + rec.len()].copy_from_slice(&rec);
            let scan = scan_segment(&c, LogIndex(1));
            assert_eq!(scan.offsets.len(), 2, "shift {shift}");
            assert_eq!(scan.after.max_index, Some(LogIndex(3)), "shift {shift}");
            // Batch 2 opens at index 3, where the damage is: torn, keep 1 and 2.
            assert_eq!(verdict(&c, None), Ok(2), "shift {shift}");
        }
    }

    #[test]
    fn nonzero_end_finds_the_last_nonzero_byte() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            let mut b = vec![0u8; len];
            assert_eq!(nonzero_end(&b, 0), 0);
            for p in 0..len {
                b.fill(0);
                b[p] = 1;
                assert_eq!(nonzero_end(&b, 0), p + 1, "len {len} p {p}");
                assert_eq!(nonzero_end(&b, p + 1), p + 1);
                if p > 0 {
                    assert_eq!(nonzero_end(&b, p - 1), p + 1);
                }
            }
        }
    }
}
