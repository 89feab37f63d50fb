//! Recovery of the segmented log (`kvraft::wal`): boundary cases, torn batches with every subset
//! of their pages lost, damage to synced data (reported, intact prefix kept, files set aside),
//! and a model-based randomized test with power cuts (the unsynced batch cut at an offset or
//! losing an arbitrary subset of its pages) and flipped bytes anywhere.
//!
//! `WAL_SEEDS=n` runs n seeds (default 12); `WAL_SEED=s` replays one. A failure prints its seed.
//! The randomized test works in /dev/shm when it exists (msync is free there; the byte-level
//! behaviour is the same), the boundary tests in the normal temp directory.

use std::fs;
use std::path::{Path, PathBuf};

use kvraft::limits::ENTRY_SIZE_MAX;
use kvraft::prng::Prng;
use kvraft::raft::{Entry, EntryKind, LogIndex, Term};
use kvraft::wal::{
    OnDamage, Prefill, Wal, WalError, WalOptions, DAMAGED_SUFFIX, DAMAGE_FILE, SEGMENT_SIZE_MIN,
    SPARE_NAME,
};

/// Bytes of a segment header and of a record header (format.rs).
const SEG_HDR: usize = 32;
const REC_HDR: usize = 48;
const PAGE: usize = 4096;

fn opts(prefill: Prefill) -> WalOptions {
    WalOptions {
        segment_size: SEGMENT_SIZE_MIN,
        prefill,
        on_damage: OnDamage::KeepIntactPrefix,
    }
}

fn refusing() -> WalOptions {
    WalOptions {
        on_damage: OnDamage::Refuse,
        ..opts(Prefill::Fallocate)
    }
}

fn entry(term: u64, index: u64, len: usize, fill: u8) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Command,
        data: vec![fill; len].into(),
    }
}

fn all(wal: &Wal) -> Vec<Entry> {
    match (wal.first_index(), wal.last_index()) {
        (Some(f), Some(l)) => wal.entries(f, l.next(), usize::MAX).unwrap(),
        _ => Vec::new(),
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn empty_log_opens_empty_and_stays_empty_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert_eq!(wal.term(LogIndex(1)), None);
    assert!(matches!(
        wal.entries(LogIndex(1), LogIndex(2), 10),
        Err(WalError::Compacted { .. })
    ));
    assert!(wal
        .entries(LogIndex(1), LogIndex(1), 10)
        .unwrap()
        .is_empty());
    wal.sync().unwrap();
    wal.truncate_suffix(LogIndex(0)).unwrap();
    wal.discard_prefix(LogIndex(10)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(wal.last_index(), None);
    assert_eq!(wal.segment_count(), 0);
    assert_eq!(wal.recovery_report().records, 0);
}

#[test]
fn one_record_survives_reopen_with_its_term_kind_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::ZeroFill)).unwrap();
    let e = Entry {
        term: Term(7),
        index: LogIndex(42),
        kind: EntryKind::Noop,
        data: b"x".to_vec().into(),
    };
    wal.append(std::slice::from_ref(&e)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::ZeroFill)).unwrap();
    assert_eq!(wal.first_index(), Some(LogIndex(42)));
    assert_eq!(wal.last_index(), Some(LogIndex(42)));
    assert_eq!(wal.term(LogIndex(42)), Some(Term(7)));
    assert_eq!(all(&wal), vec![e]);
    assert_eq!(wal.recovery_report().records, 1);
}

#[test]
fn record_that_does_not_fit_goes_to_the_next_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let big = entry(1, 1, ENTRY_SIZE_MAX - 10, 0xAB);
    let small = entry(1, 2, 100, 0xCD);
    wal.append(&[big.clone(), small.clone()]).unwrap();
    assert_eq!(wal.segment_count(), 2);
    wal.sync().unwrap();
    drop(wal);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    assert!(files[1]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("00000000000000000002"));
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(all(&wal), vec![big, small]);
    // max_bytes stops early but always returns one entry.
    assert_eq!(wal.entries(LogIndex(1), LogIndex(3), 5).unwrap().len(), 1);
    assert_eq!(wal.entries(LogIndex(2), LogIndex(3), 5).unwrap().len(), 1);
}

/// `Prefill::ZeroAhead`: the next segment is zeroed while the current one fills, under the
/// spare's temp name, and the roll renames it into place; a spare left behind is a temp file
/// that the next open deletes.
#[test]
fn zero_ahead_prepares_the_next_segment_while_the_current_one_fills() {
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join(SPARE_NAME);
    let mut wal = Wal::open(dir.path(), opts(Prefill::ZeroAhead)).unwrap();
    let len = SEGMENT_SIZE_MIN as usize / 8;
    let mut written = Vec::new();
    let mut index = 1;
    // About half a segment: twice as many zeros are owed, the spare is whole.
    while index <= 4 {
        let e = entry(1, index, len, index as u8);
        wal.append(std::slice::from_ref(&e)).unwrap();
        written.push(e);
        index += 1;
    }
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(fs::metadata(&spare).unwrap().len(), SEGMENT_SIZE_MIN);
    assert!(fs::read(&spare).unwrap().iter().all(|&b| b == 0));
    // Until the roll, which takes the spare as the second segment.
    while wal.segment_count() < 2 {
        let e = entry(1, index, len, index as u8);
        wal.append(std::slice::from_ref(&e)).unwrap();
        written.push(e);
        index += 1;
    }
    wal.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert!(!spare.exists() || fs::metadata(&spare).unwrap().len() == SEGMENT_SIZE_MIN);
    assert_eq!(all(&wal), written);
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::ZeroAhead)).unwrap();
    assert_eq!(all(&wal), written);
    assert!(!spare.exists(), "a spare left behind is deleted at open");
}

#[test]
fn truncating_into_an_earlier_segment_then_appending_recovers_only_the_new_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let old: Vec<Entry> = (1..=6).map(|i| entry(1, i, 1_500_000, i as u8)).collect();
    wal.append(&old).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 3);
    wal.truncate_suffix(LogIndex(1)).unwrap();
    assert_eq!(
        (wal.segment_count(), wal.last_index()),
        (1, Some(LogIndex(1)))
    );
    drop(wal);
    // Truncation alone is durable: none of the old suffix comes back.
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(all(&wal), old[..1].to_vec());
    // The same size as the dropped records, so old records would line up if not zeroed.
    let new: Vec<Entry> = (2..=3).map(|i| entry(2, i, 1_500_000, 0xEE)).collect();
    wal.append(&new).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let mut want = old[..1].to_vec();
    want.extend(new);
    assert_eq!(all(&wal), want);
}

#[test]
fn positional_append_replaces_the_suffix_without_resurrecting_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let old: Vec<Entry> = (1..=10).map(|i| entry(1, i, 50, 1)).collect();
    wal.append(&old).unwrap();
    wal.sync().unwrap();
    let new = entry(3, 4, 50, 2);
    wal.append(std::slice::from_ref(&new)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let mut want = old[..3].to_vec();
    want.push(new);
    assert_eq!(all(&wal), want);
    assert_eq!(wal.term(LogIndex(4)), Some(Term(3)));
    assert_eq!(wal.term(LogIndex(5)), None);
}

#[test]
fn discarding_all_of_the_log_leaves_it_empty_and_appendable_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let es: Vec<Entry> = (1..=4).map(|i| entry(1, i, 2_000_000, 9)).collect();
    wal.append(&es).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 2);
    wal.discard_prefix(LogIndex(3)).unwrap(); // the second segment holds 3 and 4: kept
    assert_eq!(
        (wal.first_index(), wal.segment_count()),
        (Some(LogIndex(3)), 1)
    );
    assert!(matches!(
        wal.entries(LogIndex(2), LogIndex(4), 1),
        Err(WalError::Compacted { .. })
    ));
    wal.discard_prefix(LogIndex(4)).unwrap();
    assert_eq!(
        (wal.first_index(), wal.last_index(), wal.segment_count()),
        (None, None, 0)
    );
    drop(wal);
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(wal.last_index(), None);
    wal.append(&[entry(2, 100, 5, 1)]).unwrap();
    wal.sync().unwrap();
    wal.reset().unwrap();
    assert_eq!(wal.last_index(), None);
    wal.append(&[entry(3, 7, 5, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(all(&wal), vec![entry(3, 7, 5, 1)]);
}

#[test]
fn retired_segments_go_one_at_a_time_are_never_read_back_and_vanish_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    // Two 2 MB entries per segment: 8 entries fill 4 segments.
    let es: Vec<Entry> = (1..=8).map(|i| entry(1, i, 2_000_000, i as u8)).collect();
    wal.append(&es).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 4);
    assert!(
        wal.discard_prefix_some(LogIndex(6), 1).unwrap(),
        "more segments remain to retire"
    );
    assert_eq!(wal.first_index(), Some(LogIndex(3)));
    assert_eq!(wal.obsolete_files().len(), 1);
    assert!(
        !wal.discard_prefix_some(LogIndex(6), 5).unwrap(),
        "nothing left to retire"
    );
    assert_eq!(wal.first_index(), Some(LogIndex(7)));
    assert_eq!(wal.obsolete_files().len(), 3);
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "retired segments still named *.wal"
    );
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(all(&wal), es[6..].to_vec());
    assert!(
        wal.obsolete_files().is_empty(),
        "open left retired segments behind"
    );
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    wal.append(&(1..=3).map(|i| entry(1, i, 100, 1)).collect::<Vec<_>>())
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = &segment_files(dir.path())[0];
    let mut b = fs::read(path).unwrap();
    let rec = REC_HDR + 100;
    b[SEG_HDR + 2 * rec + 60] ^= 0xFF; // inside the last record's payload
    b[SEG_HDR + 3 * rec + 7] = 0x55; // garbage in the preallocated space
    fs::write(path, &b).unwrap();
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(wal.last_index(), Some(LogIndex(2)));
    assert_eq!(wal.recovery_report().torn_tail_bytes, (rec + 8) as u64);
    assert_eq!(wal.damage(), None, "a torn tail is not damage");
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(
        wal.recovery_report().torn_tail_bytes,
        0,
        "the cut was not durable"
    );
}

/// One record as this test's own reader of the documented format sees it.
#[derive(Clone, Copy, Debug)]
struct DiskRecord {
    start: usize,
    end: usize,
    index: u64,
    batch: u64,
    batch_first: u64,
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// The record at `off` if it checks: magic "KVRC", length, crc32c over bytes 8.. of the
/// record (header and payload), batch first index not after the index.
fn read_record(b: &[u8], off: usize) -> Option<DiskRecord> {
    if off + REC_HDR > b.len() || &b[off..off + 4] != b"KVRC" {
        return None;
    }
    let len = be32(b, off + 8) as usize;
    if len > ENTRY_SIZE_MAX || off + REC_HDR + len > b.len() {
        return None;
    }
    if crc32c::crc32c(&b[off + 8..off + REC_HDR + len]) != be32(b, off + 4) {
        return None;
    }
    let r = DiskRecord {
        start: off,
        end: off + REC_HDR + len,
        index: be64(b, off + 24),
        batch: be64(b, off + 32),
        batch_first: be64(b, off + 40),
    };
    (r.batch_first <= r.index).then_some(r)
}

/// The records of one segment, in order, while they check.
fn walk_segment(b: &[u8]) -> Vec<DiskRecord> {
    let mut out = Vec::new();
    let mut off = SEG_HDR;
    while let Some(r) = read_record(b, off) {
        out.push(r);
        off = r.end;
    }
    out
}

fn damaged_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().contains(DAMAGED_SUFFIX))
        .collect();
    v.sort();
    v
}

fn entries(range: std::ops::RangeInclusive<u64>, len: usize) -> Vec<Entry> {
    range.map(|i| entry(1, i, len, i as u8)).collect()
}

#[test]
fn a_torn_last_batch_is_cut_at_its_start_whatever_subset_of_its_pages_survived() {
    let src = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(src.path(), opts(Prefill::Fallocate)).unwrap();
    let synced = entries(1..=3, 700);
    wal.append(&synced).unwrap();
    wal.sync().unwrap();
    // The unsynced batch: two appends before one sync, 20 records over six pages.
    let torn = entries(4..=23, 1000);
    wal.append(&torn[..5]).unwrap();
    wal.append(&torn[5..]).unwrap();
    drop(wal);
    let name = segment_files(src.path())[0].file_name().unwrap().to_owned();
    let original = fs::read(src.path().join(&name)).unwrap();
    let recs = walk_segment(&original);
    assert_eq!(recs.len(), 23);
    assert!(recs[3..]
        .iter()
        .all(|r| r.batch == recs[3].batch && r.batch_first == 4));
    assert!(recs[2].batch < recs[3].batch);
    let (lo, hi) = (recs[3].start, recs[22].end);
    let pages: Vec<usize> = (lo / PAGE..hi.div_ceil(PAGE)).collect();
    assert_eq!(pages.len(), 6, "batch spans [{lo}, {hi})");
    let mut cut_at_batch_start_with_later_page_kept = 0;
    for mask in 0u32..1 << pages.len() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = original.clone();
        for (j, p) in pages.iter().enumerate() {
            if mask & (1 << j) == 0 {
                let (from, to) = ((p * PAGE).max(lo), ((p + 1) * PAGE).min(hi));
                b[from..to].fill(0);
            }
        }
        fs::write(dir.path().join(&name), &b).unwrap();
        // Expected, by the documented rule: the first torn record D; a valid record after it
        // (all are of this batch) means the batch is cut at its start, else the log ends at D.
        let intact: Vec<bool> = recs[3..]
            .iter()
            .map(|r| read_record(&b, r.start).is_some())
            .collect();
        let want_last = match intact.iter().position(|&ok| !ok) {
            None => 23,
            Some(d) if intact[d..].iter().any(|&ok| ok) => {
                cut_at_batch_start_with_later_page_kept += 1;
                3
            }
            Some(d) => 3 + d as u64,
        };
        let ctx = format!("pages kept {mask:06b}");
        let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        assert_eq!(wal.last_index(), Some(LogIndex(want_last)), "{ctx}");
        assert_eq!(wal.damage(), None, "{ctx}: a torn batch is not damage");
        let mut want = synced.clone();
        want.extend(torn.iter().filter(|e| e.index.0 <= want_last).cloned());
        assert_eq!(all(&wal), want, "{ctx}");
        drop(wal);
        // The cut was durable: nothing of the torn batch comes back, even behind new entries.
        let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        assert_eq!(wal.recovery_report().torn_tail_bytes, 0, "{ctx}");
        let more = entry(2, want_last + 1, 10, 0xEE);
        wal.append(std::slice::from_ref(&more)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        want.push(more);
        assert_eq!(all(&wal), want, "{ctx} after a new append");
        assert!(damaged_files(dir.path()).is_empty(), "{ctx}");
    }
    assert!(cut_at_batch_start_with_later_page_kept > 20);
}

/// Five synced batches of four 200-byte records (indices 1..=20) in one segment.
fn five_synced_batches(dir: &Path) -> (PathBuf, Vec<u8>, Vec<Entry>) {
    let mut wal = Wal::open(dir, opts(Prefill::Fallocate)).unwrap();
    let es = entries(1..=20, 200);
    for batch in es.chunks(4) {
        wal.append(batch).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let path = segment_files(dir)[0].clone();
    let bytes = fs::read(&path).unwrap();
    (path, bytes, es)
}

#[test]
fn a_flipped_byte_in_any_earlier_batch_is_damage_keeping_the_intact_prefix_and_the_evidence() {
    let src = tempfile::tempdir().unwrap();
    let (path, original, es) = five_synced_batches(src.path());
    let name = path.file_name().unwrap().to_owned();
    let recs = walk_segment(&original);
    for r in &recs[..16] {
        for at in [r.start + 1, r.start + 20, r.start + REC_HDR + 100] {
            let ctx = format!("byte {at} of index {}", r.index);
            let dir = tempfile::tempdir().unwrap();
            let seg = dir.path().join(&name);
            let mut b = original.clone();
            b[at] ^= 0x10;
            fs::write(&seg, &b).unwrap();
            let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
            assert_eq!(all(&wal), es[..r.index as usize - 1].to_vec(), "{ctx}");
            let d = wal.damage().expect("damage").clone();
            assert_eq!(d.segment, seg, "{ctx}");
            assert_eq!(d.offset, r.start as u64, "{ctx}");
            assert_eq!(d.first_lost_index, LogIndex(r.index), "{ctx}");
            assert_eq!(d.last_index_seen_after, Some(LogIndex(20)), "{ctx}");
            let copy = PathBuf::from(format!("{}{DAMAGED_SUFFIX}", seg.display()));
            assert_eq!(d.set_aside, vec![copy.clone()], "{ctx}");
            assert_eq!(
                fs::read(&copy).unwrap(),
                b,
                "{ctx}: the evidence was changed"
            );
            drop(wal);
            // Remembered across restarts until cleared, with the log still the intact prefix.
            let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
            let again = wal.damage().expect("remembered");
            assert_eq!(again.first_lost_index, LogIndex(r.index), "{ctx}");
            assert_eq!(again.last_index_seen_after, Some(LogIndex(20)), "{ctx}");
            let prefix_last = (r.index > 1).then(|| LogIndex(r.index - 1));
            assert_eq!(wal.last_index(), prefix_last, "{ctx}");
            wal.clear_damage().unwrap();
            drop(wal);
            let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
            assert_eq!(wal.damage(), None, "{ctx}");
            assert_eq!(wal.last_index(), prefix_last, "{ctx}");
        }
    }
    // The last batch: indistinguishable from a torn one, cut at its start (or at the last
    // record, when nothing valid follows the flip).
    for r in &recs[16..] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = original.clone();
        b[r.start + REC_HDR + 5] ^= 0x01;
        fs::write(dir.path().join(&name), &b).unwrap();
        let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        let want = if r.index == 20 { 19 } else { 16 };
        assert_eq!(wal.last_index(), Some(LogIndex(want)), "index {}", r.index);
        assert_eq!(wal.damage(), None);
    }
}

#[test]
fn with_refuse_damage_fails_the_open_naming_file_offset_and_index_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, original, _) = five_synced_batches(dir.path());
    let r = walk_segment(&original)[6];
    let mut b = original.clone();
    b[r.start + REC_HDR + 3] ^= 1;
    fs::write(&path, &b).unwrap();
    let err = Wal::open(dir.path(), refusing())
        .err()
        .expect("must refuse");
    match &err {
        WalError::Corrupt {
            file,
            offset,
            index,
            ..
        } => {
            assert_eq!(file, &path);
            assert_eq!(*offset, r.start as u64);
            assert_eq!(*index, Some(LogIndex(7)));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000001.wal") && msg.contains(&format!("offset {}", r.start)),
        "{msg}"
    );
    assert_eq!(fs::read(&path).unwrap(), b, "refusing changed the segment");
    assert!(damaged_files(dir.path()).is_empty());
    assert!(!dir.path().join(DAMAGE_FILE).exists());
    // Kept once, then a refusing start still refuses: the damage is not repaired yet.
    drop(Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap());
    let err = Wal::open(dir.path(), refusing()).err().expect("marker");
    assert!(err.to_string().contains("index 7"), "{err}");
}

/// Six 2 MB entries: two per segment, three segments.
fn three_segments(dir: &Path) -> Vec<PathBuf> {
    let mut wal = Wal::open(dir, opts(Prefill::Fallocate)).unwrap();
    wal.append(&entries(1..=6, 2_000_000)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let files = segment_files(dir);
    assert_eq!(files.len(), 3);
    files
}

#[test]
fn a_segment_cut_short_or_missing_before_a_later_one_is_damage_not_a_refusal() {
    const REC: usize = REC_HDR + 2_000_000;
    type Cut = fn(&Path);
    // (what, how, first lost index, whether segment 2 itself is set aside)
    let cases: [(&str, Cut, u64, bool); 4] = [
        (
            "truncated mid-record",
            |p| {
                fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len((SEG_HDR + REC + 999) as u64)
                    .unwrap()
            },
            4,
            true,
        ),
        (
            "zeroed from its second record",
            |p| {
                let mut b = fs::read(p).unwrap();
                b[SEG_HDR + REC..].fill(0);
                fs::write(p, b).unwrap();
            },
            4,
            false,
        ),
        ("missing", |p| fs::remove_file(p).unwrap(), 3, false),
        (
            "shorter than its header",
            |p| {
                fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(10)
                    .unwrap()
            },
            3,
            true,
        ),
    ];
    for (what, cut, first_lost, seg2_aside) in cases {
        let dir = tempfile::tempdir().unwrap();
        let files = three_segments(dir.path());
        cut(&files[1]);
        let wal = Wal::open(dir.path(), opts(Prefill::Fallocate))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(wal.last_index(), Some(LogIndex(first_lost - 1)), "{what}");
        let d = wal.damage().unwrap_or_else(|| panic!("{what}: no damage"));
        assert_eq!(d.first_lost_index, LogIndex(first_lost), "{what}");
        assert_eq!(d.last_index_seen_after, Some(LogIndex(6)), "{what}");
        let aside = |p: &PathBuf| PathBuf::from(format!("{}{DAMAGED_SUFFIX}", p.display()));
        assert!(d.set_aside.contains(&aside(&files[2])), "{what}: {d}");
        assert_eq!(
            d.set_aside.contains(&aside(&files[1])),
            seg2_aside,
            "{what}: {d}"
        );
        assert_eq!(damaged_files(dir.path()).len(), d.set_aside.len(), "{what}");
        drop(wal);
        let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        assert_eq!(wal.last_index(), Some(LogIndex(first_lost - 1)), "{what}");
        assert!(wal.damage().is_some(), "{what}: forgotten");
        // The log goes on from the intact prefix.
        let next = entry(2, first_lost, 10, 1);
        wal.append(std::slice::from_ref(&next)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
        assert_eq!(wal.last_index(), Some(LogIndex(first_lost)), "{what}");
        assert_eq!(wal.term(LogIndex(first_lost)), Some(Term(2)), "{what}");
    }
}

#[test]
fn a_log_of_format_version_1_is_refused_with_a_clear_error_and_left_alone() {
    // Version 1: the same segment header with version 1, then 32-byte record headers
    // (crc32c of bytes 4.., length, term, index, kind, 7 reserved bytes).
    let mut b = vec![0u8; SEGMENT_SIZE_MIN as usize];
    b[..8].copy_from_slice(b"KVRFTWAL");
    b[8..12].copy_from_slice(&1u32.to_be_bytes());
    b[16..24].copy_from_slice(&1u64.to_be_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_be_bytes());
    let rec = &mut b[32..32 + 32 + 3];
    rec[4..8].copy_from_slice(&3u32.to_be_bytes());
    rec[8..16].copy_from_slice(&1u64.to_be_bytes());
    rec[16..24].copy_from_slice(&1u64.to_be_bytes());
    rec[32..35].copy_from_slice(b"abc");
    let crc = crc32c::crc32c(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_be_bytes());
    for o in [opts(Prefill::Fallocate), refusing()] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000001.wal");
        fs::write(&path, &b).unwrap();
        let err = Wal::open(dir.path(), o).err().expect("must refuse");
        let msg = err.to_string();
        assert!(
            matches!(err, WalError::Corrupt { .. })
                && msg.contains("version 1")
                && msg.contains("only version 2"),
            "{msg}"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            b,
            "{o:?}: the old log was changed"
        );
        assert!(damaged_files(dir.path()).is_empty());
    }
}

#[test]
fn options_smaller_than_one_largest_entry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_size: SEGMENT_SIZE_MIN - 1,
        ..opts(Prefill::Fallocate)
    };
    assert!(matches!(
        Wal::open(dir.path(), o),
        Err(WalError::BadOptions { .. })
    ));
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    let err = wal
        .append(&[entry(1, 1, ENTRY_SIZE_MAX + 1, 0)])
        .expect_err("too large");
    assert!(matches!(err, WalError::EntryTooLarge { .. }));
    assert_eq!(wal.last_index(), None);
}

/// A small tmpfs mounted for one test and unmounted when dropped (even if the test panics).
struct SmallFs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. "24m"), or says why it cannot (not root, no mount).
    fn mount(size: &str) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount_point = dir.path().join("fs");
        fs::create_dir(&mount_point).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs {
            mount_point,
            _dir: dir,
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = std::process::Command::new("umount")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount {}", self.mount_point.display());
        }
    }
}

#[test]
fn a_full_disk_when_creating_a_segment_is_no_space_and_the_log_stays_readable_and_reopens() {
    const SEGMENT: u64 = 10 << 20; // two fit in the 24 MiB filesystem, the third does not
    const PAYLOAD: usize = 256 << 10;
    for prefill in [Prefill::Fallocate, Prefill::ZeroFill] {
        let small = match SmallFs::mount("24m") {
            Ok(m) => m,
            Err(why) => {
                eprintln!("skipped (needs root to mount a small tmpfs): {why}");
                return;
            }
        };
        let dir = small.mount_point.join("log");
        let o = WalOptions {
            segment_size: SEGMENT,
            ..opts(prefill)
        };
        let mut wal = Wal::open(&dir, o).unwrap();
        let mut model = Vec::new();
        let err = loop {
            let e = entry(1, model.len() as u64 + 1, PAYLOAD, model.len() as u8);
            match wal.append(std::slice::from_ref(&e)) {
                Ok(()) => model.push(e),
                Err(err) => break err,
            }
            wal.sync().unwrap();
            assert!(model.len() < 200, "{prefill:?}: 24 MiB never filled up");
        };
        assert!(
            matches!(&err, WalError::NoSpace { path } if path.starts_with(&dir)),
            "{prefill:?}: expected NoSpace, got {err}"
        );
        assert!(err.to_string().contains("no space left"), "{err}");
        assert_eq!(wal.segment_count(), 2, "{prefill:?}");
        // Not sticky and not poisoning: reads and syncs work, a retry fails the same clear way.
        assert_eq!(all(&wal), model, "{prefill:?}");
        wal.sync().unwrap();
        let retry = entry(1, model.len() as u64 + 1, PAYLOAD, 0);
        assert!(matches!(
            wal.append(&[retry]),
            Err(WalError::NoSpace { .. })
        ));
        drop(wal);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(".tmp")),
            "{prefill:?}: leftover temp segment in {names:?}"
        );
        let wal = Wal::open(&dir, o).unwrap();
        assert_eq!(all(&wal), model, "{prefill:?} after reopen");
        assert_eq!(wal.recovery_report().torn_tail_bytes, 0);
        drop(wal);
        drop(small);
    }
}

// ---- the model-based randomized test ----

struct Model {
    /// Everything appended (the log if nothing crashes).
    all: Vec<Entry>,
    /// How many of `all` are durable (synced, made durable by a truncation, or recovered).
    synced: usize,
    /// Where in `all` the writer's batches start: a batch is closed by a sync, a truncation
    /// that drops something, or a restart (the log also closes one at a segment roll, which
    /// the model does not see: its batches can only be larger than the log's).
    batch_starts: Vec<usize>,
    open_batch: bool,
}

impl Model {
    fn appended(&mut self, keep: usize, batch: Vec<Entry>) {
        if keep < self.all.len() {
            self.truncated(keep); // the positional truncation made the prefix durable
        }
        if !self.open_batch {
            self.batch_starts.push(self.all.len());
            self.open_batch = true;
        }
        self.all.extend(batch);
    }

    fn durable(&mut self) {
        self.synced = self.all.len();
        self.open_batch = false;
    }

    fn truncated(&mut self, len: usize) {
        self.all.truncate(len);
        self.batch_starts.retain(|&s| s < len);
        self.durable();
    }

    fn discarded(&mut self, dropped: usize) {
        self.all.drain(..dropped);
        self.synced = self.synced.saturating_sub(dropped);
        for s in &mut self.batch_starts {
            *s = s.saturating_sub(dropped);
        }
        self.batch_starts.dedup();
    }

    fn reset(&mut self) {
        self.all.clear();
        self.batch_starts.clear();
        self.durable();
    }

    fn recovered(&mut self, log: Vec<Entry>) {
        self.truncated(log.len());
        self.all = log;
    }

    /// Where the newest synced batch starts: a flipped byte from there on is indistinguishable
    /// from a torn batch and may lose entries without a damage report (recovery.rs NB).
    fn newest_synced_batch_start(&self) -> usize {
        let k = self
            .batch_starts
            .len()
            .saturating_sub(1 + self.open_batch as usize);
        self.batch_starts.get(k).copied().unwrap_or(0)
    }
}

fn random_payload(rng: &mut Prng) -> Vec<u8> {
    let len = match rng.range(0, 100) {
        0..=89 => rng.range(0, 512),
        90..=98 => rng.range(512, 64 * 1024),
        _ => rng.range(64 * 1024, ENTRY_SIZE_MAX as u64 + 1),
    } as usize;
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn check_matches(wal: &Wal, want: &[Entry], ctx: &str) {
    assert_eq!(
        wal.first_index(),
        want.first().map(|e| e.index),
        "{ctx}: first"
    );
    assert_eq!(
        wal.last_index(),
        want.last().map(|e| e.index),
        "{ctx}: last"
    );
    let got = all(wal);
    assert_eq!(got.len(), want.len(), "{ctx}: count");
    for (g, w) in got.iter().zip(want) {
        assert!(g == w, "{ctx}: entry {} differs", w.index);
    }
    for w in want.iter().step_by(7) {
        assert_eq!(
            wal.term(w.index),
            Some(w.term),
            "{ctx}: term at {}",
            w.index
        );
    }
}

/// What recovery must do after a crash, by the documented rules applied with this test's own
/// reader: the log ends before `end_before`, and damage is reported from there or not.
#[derive(Debug, PartialEq, Eq)]
struct Expect {
    end_before: Option<u64>,
    damage: bool,
}

/// Applies the recovery rules to the crashed `files`, whose records (before the crash) were
/// `before`: per file, the first record that no longer checks, and what checks after it.
fn expect_after_crash(files: &[Vec<u8>], before: &[Vec<DiskRecord>], seg_first: &[u64]) -> Expect {
    let last = files.len() - 1;
    for (f, b) in files.iter().enumerate() {
        let header_ok = &b[..8] == b"KVRFTWAL"
            && crc32c::crc32c(&b[..24]) == be32(b, 24)
            && be32(b, 8) == 2
            && be32(b, 12) == 0
            && be32(b, 28) == 0;
        if !header_ok {
            return Expect {
                end_before: Some(seg_first[f]),
                damage: true,
            };
        }
        let ok: Vec<bool> = before[f]
            .iter()
            .map(|r| read_record(b, r.start).is_some_and(|now| now.end == r.end))
            .collect();
        let Some(d) = ok.iter().position(|&x| !x) else {
            continue;
        };
        let bad = before[f][d];
        let valid_after: Vec<&DiskRecord> = before[f][d + 1..]
            .iter()
            .zip(&ok[d + 1..])
            .filter_map(|(r, &x)| x.then_some(r))
            .collect();
        if f < last {
            return Expect {
                end_before: Some(bad.index),
                damage: true,
            };
        }
        let Some(first_after) = valid_after.first() else {
            return Expect {
                end_before: Some(bad.index),
                damage: false,
            };
        };
        let one_batch = valid_after
            .iter()
            .all(|r| (r.batch, r.batch_first) == (first_after.batch, first_after.batch_first));
        // The batch D is in: the last good record's, or one starting at D.
        let d_batch_start = if d > 0 && before[f][d - 1].batch == bad.batch {
            bad.batch_first
        } else {
            bad.index
        };
        if one_batch && first_after.batch_first == d_batch_start {
            return Expect {
                end_before: Some(first_after.batch_first),
                damage: false,
            };
        }
        return Expect {
            end_before: Some(bad.index),
            damage: true,
        };
    }
    Expect {
        end_before: None,
        damage: false,
    }
}

/// Simulates a power cut: the unsynced batch at the end of the last segment either loses
/// everything from a random offset or an arbitrary subset of its pages; and maybe one byte
/// flips anywhere (synced or not, header or record or the free space after). Returns what
/// recovery must do and whether a byte flipped.
fn crash(dir: &Path, rng: &mut Prng, m: &Model) -> (Expect, bool) {
    let paths = segment_files(dir);
    let mut files: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    let Some(last) = files.len().checked_sub(1) else {
        let none = Expect {
            end_before: None,
            damage: false,
        };
        return (none, false);
    };
    let before: Vec<Vec<DiskRecord>> = files.iter().map(|b| walk_segment(b)).collect();
    let seg_first: Vec<u64> = files.iter().map(|b| be64(b, 16)).collect();
    let synced_last = m.synced.checked_sub(1).map(|k| m.all[k].index.0);
    let in_last = &before[last];
    let durable_end = in_last
        .iter()
        .filter(|r| Some(r.index) <= synced_last)
        .map(|r| r.end)
        .max()
        .unwrap_or(SEG_HDR);
    let written_end = in_last.last().map_or(SEG_HDR, |r| r.end);
    if rng.chance(1, 2) {
        let cut = rng.range(durable_end as u64, written_end as u64 + 1) as usize;
        files[last][cut..written_end].fill(0);
    } else {
        for p in durable_end / PAGE..written_end.div_ceil(PAGE) {
            if rng.chance(1, 2) {
                let (from, to) = (
                    (p * PAGE).max(durable_end),
                    ((p + 1) * PAGE).min(written_end),
                );
                files[last][from..to].fill(0);
            }
        }
    }
    let flipped = rng.chance(1, 3);
    if flipped {
        let f = rng.range(0, files.len() as u64) as usize;
        let f_end = before[f].last().map_or(SEG_HDR, |r| r.end);
        let at = rng.range(0, (f_end + 64).min(files[f].len()) as u64) as usize;
        files[f][at] ^= rng.range(1, 256) as u8;
    }
    for (p, b) in paths.iter().zip(&files) {
        fs::write(p, b).unwrap();
    }
    (expect_after_crash(&files, &before, &seg_first), flipped)
}

/// Reopens after a crash and checks recovery against the rules and the model.
fn reopen_after_crash(
    dir: &Path,
    rng: &mut Prng,
    m: &Model,
    o: WalOptions,
    ctx: &str,
) -> (Wal, Vec<Entry>) {
    let (expect, flipped) = crash(dir, rng, m);
    let mut wal = Wal::open(dir, o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let want: Vec<Entry> = m
        .all
        .iter()
        .filter(|e| expect.end_before.is_none_or(|x| e.index.0 < x))
        .cloned()
        .collect();
    check_matches(&wal, &want, ctx);
    assert_eq!(
        wal.damage().is_some(),
        expect.damage,
        "{ctx}: {expect:?} {:?}",
        wal.damage()
    );
    if let Some(d) = wal.damage() {
        assert_eq!(Some(d.first_lost_index.0), expect.end_before, "{ctx}");
        assert!(!d.set_aside.is_empty() || d.offset > 0, "{ctx}: {d}");
        wal.clear_damage().unwrap();
    } else if want.len() < m.synced {
        // Never a silent loss of synced entries, but for a flip in the newest synced batch.
        assert!(
            flipped && want.len() >= m.newest_synced_batch_start(),
            "{ctx}: synced entry {} lost without a damage report (synced {}, newest batch from {})",
            want.len(),
            m.synced,
            m.newest_synced_batch_start()
        );
    }
    (wal, want)
}

fn run_seed(seed: u64, root: &Path) {
    let dir = root.join(format!("seed-{seed}"));
    let mut rng = Prng::new(seed);
    let prefill = if rng.chance(1, 2) {
        Prefill::Fallocate
    } else {
        Prefill::ZeroFill
    };
    let o = opts(prefill);
    let mut wal = Wal::open(&dir, o).unwrap();
    let mut m = Model {
        all: Vec::new(),
        synced: 0,
        batch_starts: Vec::new(),
        open_batch: false,
    };
    let mut term = 1u64;
    for step in 0..250 {
        let ctx = format!("seed {seed} step {step}");
        match rng.range(0, 100) {
            0..=54 => {
                let start = match (m.all.first(), m.all.last()) {
                    (Some(f), Some(l)) if rng.chance(1, 6) => rng.range(f.index.0, l.index.0 + 1),
                    (_, Some(l)) => l.index.0 + 1,
                    (None, None) => rng.range(1, 1000),
                    _ => unreachable!(),
                };
                if rng.chance(1, 5) {
                    term += 1;
                }
                let n = rng.range(1, 17);
                let batch: Vec<Entry> = (0..n)
                    .map(|k| Entry {
                        term: Term(term),
                        index: LogIndex(start + k),
                        kind: EntryKind::Command,
                        data: random_payload(&mut rng).into(),
                    })
                    .collect();
                wal.append(&batch).unwrap();
                let keep = m.all.iter().take_while(|e| e.index.0 < start).count();
                m.appended(keep, batch);
            }
            55..=74 => {
                wal.sync().unwrap();
                m.durable();
            }
            75..=82 if !m.all.is_empty() => {
                let lo = m.all[0].index.0 - 1;
                let last = m.all.last().unwrap().index.0;
                let after = rng.range(lo, last + 1);
                wal.truncate_suffix(LogIndex(after)).unwrap();
                if after < last {
                    // A truncation that drops something leaves the rest durable; one that
                    // drops nothing changes nothing.
                    let keep = m.all.iter().take_while(|e| e.index.0 <= after).count();
                    m.truncated(keep);
                }
            }
            83..=89 if !m.all.is_empty() => {
                let upto = rng.range(m.all[0].index.0, m.all.last().unwrap().index.0 + 1);
                wal.discard_prefix(LogIndex(upto)).unwrap();
                let first = wal.first_index().map_or(u64::MAX, |i| i.0);
                assert!(
                    first == u64::MAX || first <= upto + 1,
                    "{ctx}: discarded past {upto}"
                );
                let dropped = m.all.iter().take_while(|e| e.index.0 < first).count();
                assert!(m.all[..dropped].iter().all(|e| e.index.0 <= upto), "{ctx}");
                m.discarded(dropped);
            }
            90..=91 => {
                wal.reset().unwrap();
                m.reset();
            }
            _ => {
                drop(wal);
                let want = if rng.chance(1, 2) {
                    let (w, want) = reopen_after_crash(&dir, &mut rng, &m, o, &ctx);
                    wal = w;
                    want
                } else {
                    wal = Wal::open(&dir, o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    m.all.clone()
                };
                check_matches(&wal, &want, &ctx);
                m.recovered(want);
            }
        }
        check_matches(&wal, &m.all, &format!("seed {seed} step {step} live"));
    }
    drop(wal);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn random_operations_with_power_cuts_and_flipped_bytes_match_the_model() {
    let root = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let seeds: Vec<u64> = match std::env::var("WAL_SEED") {
        Ok(s) => vec![s.parse().expect("WAL_SEED")],
        Err(_) => {
            let n = std::env::var("WAL_SEEDS").map_or(12, |s| s.parse().expect("WAL_SEEDS"));
            (1..=n).collect()
        }
    };
    for seed in seeds {
        let r = std::panic::catch_unwind(|| run_seed(seed, root.path()));
        if let Err(e) = r {
            eprintln!("failing seed: WAL_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

/// A flipped byte in the newest synced batch looks like a torn tail and is cut as one; it is
/// reported as an uncertain tail, and `before_cut` runs once, before the bytes are zeroed (the
/// file still holds them while it runs). A clean end (zeros after the last record, or a
/// segment cut short at a record boundary) is certain, and so is the next open after a cut.
#[test]
fn non_zero_bytes_cut_off_the_last_segment_are_an_uncertain_tail_reported_before_the_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, _) = five_synced_batches(dir.path());
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(wal.recovery_report().uncertain_tail, None, "a clean end");
    drop(wal);
    let recs = walk_segment(&bytes);
    let last = recs[recs.len() - 1];
    let mut b = bytes.clone();
    b[last.start + REC_HDR + 10] ^= 0x10; // index 20, in the newest batch (17..=20)
    fs::write(&path, &b).unwrap();
    let mut calls = Vec::new();
    let wal = Wal::open_with(dir.path(), opts(Prefill::Fallocate), &mut |t| {
        let now = fs::read(&path).unwrap();
        assert_eq!(now[last.start + REC_HDR + 10], b[last.start + REC_HDR + 10]);
        calls.push(t.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(wal.last_index(), Some(LogIndex(19)));
    assert_eq!(wal.damage(), None);
    let tail = wal
        .recovery_report()
        .uncertain_tail
        .clone()
        .expect("uncertain");
    assert_eq!(calls, vec![tail.clone()]);
    assert_eq!(tail.offset, last.start as u64);
    assert_eq!(tail.bytes, (last.end - last.start) as u64);
    assert_eq!(tail.last_kept, Some(LogIndex(19)));
    drop(wal);
    let wal = Wal::open_with(dir.path(), opts(Prefill::Fallocate), &mut |t| {
        panic!("a second cut: {t}")
    })
    .unwrap();
    assert_eq!(wal.recovery_report().uncertain_tail, None);
    drop(wal);
    // A failing hook fails the open and leaves the bytes in place.
    fs::write(&path, &b).unwrap();
    let err = Wal::open_with(dir.path(), opts(Prefill::Fallocate), &mut |_| {
        Err(WalError::BadOptions {
            reason: "hook failed".into(),
        })
    })
    .err()
    .expect("the hook's error");
    assert!(err.to_string().contains("hook failed"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b);
}
