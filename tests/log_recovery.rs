//! Recovery of the segmented log (`kvraft::wal`): boundary cases, and a model-based randomized
//! test with crashes simulated by cutting the last segment after its last sync point and by
//! flipping bytes.
//!
//! `WAL_SEEDS=n` runs n seeds (default 12); `WAL_SEED=s` replays one. A failure prints its seed.
//! The randomized test works in /dev/shm when it exists (msync is free there; the byte-level
//! behaviour is the same), the boundary tests in the normal temp directory.

use std::fs;
use std::path::{Path, PathBuf};

use kvraft::limits::ENTRY_SIZE_MAX;
use kvraft::prng::Prng;
use kvraft::raft::{Entry, EntryKind, LogIndex, Term};
use kvraft::wal::{Prefill, Wal, WalError, WalOptions, SEGMENT_SIZE_MIN};

fn opts(prefill: Prefill) -> WalOptions {
    WalOptions {
        segment_size: SEGMENT_SIZE_MIN,
        prefill,
    }
}

fn entry(term: u64, index: u64, len: usize, fill: u8) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Command,
        data: vec![fill; len],
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
        data: b"x".to_vec(),
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
    let rec = 32 + 100;
    b[32 + 2 * rec + 40] ^= 0xFF; // inside the last record's payload
    b[32 + 3 * rec + 7] = 0x55; // garbage in the preallocated space
    fs::write(path, &b).unwrap();
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(wal.last_index(), Some(LogIndex(2)));
    assert_eq!(wal.recovery_report().torn_tail_bytes, (rec + 8) as u64);
    drop(wal);
    let wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    assert_eq!(
        wal.recovery_report().torn_tail_bytes,
        0,
        "the cut was not durable"
    );
}

#[test]
fn corruption_followed_by_valid_records_refuses_to_start_naming_file_offset_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    wal.append(&(1..=5).map(|i| entry(1, i, 100, 1)).collect::<Vec<_>>())
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = &segment_files(dir.path())[0];
    let mut b = fs::read(path).unwrap();
    let rec = 32 + 100;
    b[32 + 2 * rec + 50] ^= 1;
    fs::write(path, &b).unwrap();
    let err = Wal::open(dir.path(), opts(Prefill::Fallocate))
        .err()
        .expect("must refuse");
    match &err {
        WalError::Corrupt {
            file,
            offset,
            index,
            ..
        } => {
            assert_eq!(file, path);
            assert_eq!(*offset, (32 + 2 * rec) as u64);
            assert_eq!(*index, Some(LogIndex(3)));
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000001.wal") && msg.contains("offset 296"),
        "{msg}"
    );
}

#[test]
fn a_missing_middle_segment_is_a_gap_and_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), opts(Prefill::Fallocate)).unwrap();
    wal.append(
        &(1..=6)
            .map(|i| entry(1, i, 2_000_000, 1))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 3);
    fs::remove_file(&files[1]).unwrap();
    let err = Wal::open(dir.path(), opts(Prefill::Fallocate))
        .err()
        .expect("gap");
    assert!(
        matches!(&err, WalError::Corrupt { file, .. } if file == &files[2]),
        "{err}"
    );
}

#[test]
fn options_smaller_than_one_largest_entry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = WalOptions {
        segment_size: SEGMENT_SIZE_MIN - 1,
        prefill: Prefill::Fallocate,
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
            prefill,
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

/// One record as found on disk by this test's own independent reader of the format.
#[derive(Clone, Debug)]
struct DiskRecord {
    file: usize,
    start: usize,
    end: usize,
    index: u64,
}

/// Walks each segment's records in order while they check (crc32c over bytes 4.. of the
/// record), as the format documents. No forward scan: this is what a correct log holds.
fn walk(files: &[Vec<u8>]) -> Vec<DiskRecord> {
    let mut out = Vec::new();
    for (f, b) in files.iter().enumerate() {
        let mut off = 32;
        while off + 32 <= b.len() {
            let len = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
            if len > ENTRY_SIZE_MAX || off + 32 + len > b.len() {
                break;
            }
            let crc = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
            if crc32c::crc32c(&b[off + 4..off + 32 + len]) != crc {
                break;
            }
            let index = u64::from_be_bytes(b[off + 16..off + 24].try_into().unwrap());
            out.push(DiskRecord {
                file: f,
                start: off,
                end: off + 32 + len,
                index,
            });
            off += 32 + len;
        }
    }
    out
}

struct Model {
    /// Everything appended (the log if nothing crashes).
    all: Vec<Entry>,
    /// How many of `all` are durable (synced or made durable by truncation).
    synced: usize,
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

/// The expected log after a crash (None: recovery must refuse), and how to undo a flip.
type CrashOutcome = (Option<Vec<Entry>>, Option<(PathBuf, usize, u8)>);

/// Simulates a crash: the last segment loses everything from a random offset at or after its
/// last durable byte, and maybe one byte somewhere flips. Returns the expected log, or None if
/// recovery must refuse to start (then the flip is undone and the caller reopens).
fn crash(dir: &Path, rng: &mut Prng, m: &Model) -> CrashOutcome {
    let paths = segment_files(dir);
    let mut files: Vec<Vec<u8>> = paths.iter().map(|p| fs::read(p).unwrap()).collect();
    let Some(last) = files.len().checked_sub(1) else {
        return (Some(Vec::new()), None);
    };
    let recs = walk(&files);
    let synced_last = m.synced.checked_sub(1).map(|k| m.all[k].index.0);
    let durable_end = recs
        .iter()
        .filter(|r| r.file == last && Some(r.index) <= synced_last)
        .map(|r| r.end)
        .max()
        .unwrap_or(32);
    let written_end = recs
        .iter()
        .filter(|r| r.file == last)
        .map(|r| r.end)
        .max()
        .unwrap_or(32);
    let cut = rng.range(durable_end as u64, written_end as u64 + 1) as usize;
    files[last][cut..].fill(0);
    fs::write(&paths[last], &files[last]).unwrap();
    let recs = walk(&files);
    let first_idx = m.all.first().map_or(0, |e| e.index.0);
    let upto = |k: u64| {
        m.all
            .iter()
            .filter(|e| e.index.0 < k && e.index.0 >= first_idx)
            .cloned()
            .collect::<Vec<_>>()
    };
    let disk_last = recs.last().map_or(0, |r| r.index);
    assert!(
        synced_last.is_none_or(|s| disk_last >= s),
        "cut removed synced data"
    );
    if !rng.chance(1, 3) {
        return (Some(upto(disk_last + 1)), None);
    }
    // Flip one byte of some segment, in its header, its records or just past them.
    let f = rng.range(0, files.len() as u64) as usize;
    let f_end = recs
        .iter()
        .filter(|r| r.file == f)
        .map(|r| r.end)
        .max()
        .unwrap_or(32);
    let at = rng.range(0, (f_end + 64).min(files[f].len()) as u64) as usize;
    let old = files[f][at];
    files[f][at] ^= rng.range(1, 256) as u8;
    fs::write(&paths[f], &files[f]).unwrap();
    let undo = Some((paths[f].clone(), at, old));
    if at < 32 {
        return (None, undo);
    }
    match recs
        .iter()
        .find(|r| r.file == f && r.start <= at && at < r.end)
    {
        // A damaged record with any record after it is corruption; the last one is a torn tail.
        Some(r) if r.index < disk_last => (None, undo),
        Some(r) => (Some(upto(r.index)), undo),
        None => (Some(upto(disk_last + 1)), undo),
    }
}

fn run_seed(seed: u64, root: &Path) {
    let dir = root.join(format!("seed-{seed}"));
    let mut rng = Prng::new(seed);
    let prefill = if rng.chance(1, 2) {
        Prefill::Fallocate
    } else {
        Prefill::ZeroFill
    };
    let mut wal = Wal::open(&dir, opts(prefill)).unwrap();
    let mut m = Model {
        all: Vec::new(),
        synced: 0,
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
                        data: random_payload(&mut rng),
                    })
                    .collect();
                wal.append(&batch).unwrap();
                let keep = m.all.iter().take_while(|e| e.index.0 < start).count();
                if keep < m.all.len() {
                    m.all.truncate(keep);
                    m.synced = keep; // the positional truncation made the prefix durable
                }
                m.all.extend(batch);
            }
            55..=74 => {
                wal.sync().unwrap();
                m.synced = m.all.len();
            }
            75..=82 if !m.all.is_empty() => {
                let lo = m.all[0].index.0 - 1;
                let after = rng.range(lo, m.all.last().unwrap().index.0 + 1);
                wal.truncate_suffix(LogIndex(after)).unwrap();
                m.all.retain(|e| e.index.0 <= after);
                m.synced = m.all.len();
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
                m.all.drain(..dropped);
                m.synced = m.synced.saturating_sub(dropped);
            }
            90..=91 => {
                wal.reset().unwrap();
                m.all.clear();
                m.synced = 0;
            }
            _ => {
                drop(wal);
                let want = if rng.chance(1, 2) {
                    let (want, undo) = crash(&dir, &mut rng, &m);
                    match want {
                        Some(want) => want,
                        None => {
                            let err = Wal::open(&dir, opts(prefill)).err();
                            assert!(
                                matches!(err, Some(WalError::Corrupt { .. })),
                                "{ctx}: corruption accepted: {err:?}"
                            );
                            let (p, at, old) = undo.expect("a flip");
                            let mut b = fs::read(&p).unwrap();
                            b[at] = old;
                            fs::write(&p, &b).unwrap();
                            crash_expectation_after_undo(&m, &dir)
                        }
                    }
                } else {
                    m.all.clone()
                };
                wal = Wal::open(&dir, opts(prefill)).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                check_matches(&wal, &want, &ctx);
                m.all = want;
                m.synced = m.all.len();
            }
        }
        check_matches(&wal, &m.all, &format!("seed {seed} step {step} live"));
    }
    drop(wal);
    let _ = fs::remove_dir_all(&dir);
}

/// After undoing a flip the files hold exactly what the cut left: the walk says what.
fn crash_expectation_after_undo(m: &Model, dir: &Path) -> Vec<Entry> {
    let files: Vec<Vec<u8>> = segment_files(dir)
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect();
    let disk_last = walk(&files).last().map_or(0, |r| r.index);
    m.all
        .iter()
        .filter(|e| e.index.0 <= disk_last)
        .cloned()
        .collect()
}

#[test]
fn random_operations_with_crashes_and_flipped_bytes_match_the_model() {
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
