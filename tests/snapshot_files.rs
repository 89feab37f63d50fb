//! The snapshot file format (round trip, every flipped byte and every truncation rejected,
//! the directory helpers) and the chunked InstallSnapshot transfer (lossless, and under a
//! seeded simulation of lost, duplicated and reordered chunks and acks with restarts).
//! No fork here: the fork tests live in `snapshot_fork.rs`, alone in their binary.

mod snapshot_support;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use kvraft::kv::StateMachine;
use kvraft::limits::SNAPSHOT_CHUNK_SIZE_MAX;
use kvraft::node::snapshot::*;
use kvraft::prng::Prng;
use kvraft::raft::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};
use snapshot_support::TestSm;

fn header(term: u64, index: u64) -> SnapshotHeader {
    SnapshotHeader {
        meta: SnapshotMeta {
            last: EntryId::new(Term(term), LogIndex(index)),
            conf: ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![NodeId(7)]),
        },
        extra: b"1=127.0.0.1:7001 2=127.0.0.1:7002".to_vec(),
    }
}

fn write(dir: &Path, h: &SnapshotHeader, sm: &TestSm) -> SnapshotWritten {
    write_snapshot_file(dir, h, sm, WriteRate::Unlimited).expect("write snapshot")
}

#[test]
fn written_file_loads_back_with_the_same_header_state_and_hash() {
    let dir = tempfile::tempdir().unwrap();
    let sm = TestSm::random(1, 500);
    let h = header(3, 12345);
    let w = write(dir.path(), &h, &sm);
    assert_eq!(
        w.path,
        dir.path()
            .join("snapshot-00000000000000000003-00000000000000012345")
    );
    assert_eq!(w.size_bytes, fs::metadata(&w.path).unwrap().len());
    assert_eq!(w.state_hash, sm.state_hash());
    assert_eq!(read_snapshot_header(&w.path).unwrap(), h);
    assert_eq!(verify_snapshot_file(&w.path).unwrap(), h);
    let mut loaded = TestSm::default();
    let (got, hash) = load_snapshot_file(&w.path, &mut loaded).unwrap();
    assert_eq!(got, h);
    assert_eq!(hash, sm.state_hash());
    assert_eq!(loaded.map, sm.map);
    assert_eq!(loaded.applied, sm.applied);
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn an_empty_state_machine_with_no_members_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let h = SnapshotHeader {
        meta: SnapshotMeta::default(),
        extra: Vec::new(),
    };
    let w = write(dir.path(), &h, &TestSm::default());
    let mut loaded = TestSm::random(9, 3);
    let (got, hash) = load_snapshot_file(&w.path, &mut loaded).unwrap();
    assert_eq!(got, h);
    assert_eq!(hash, TestSm::default().state_hash());
    assert!(loaded.map.is_empty());
}

#[test]
fn file_names_sort_by_term_then_index_and_parse_back() {
    let ids = [(0, 0), (1, 5), (3, 12345), (u64::MAX, u64::MAX)];
    let mut names: Vec<String> = ids
        .iter()
        .map(|&(t, i)| snapshot_file_name(EntryId::new(Term(t), LogIndex(i))))
        .collect();
    let sorted = names.clone();
    names.sort();
    assert_eq!(names, sorted);
    for (name, &(t, i)) in names.iter().zip(&ids) {
        assert_eq!(
            parse_snapshot_file_name(name),
            Some(EntryId::new(Term(t), LogIndex(i)))
        );
    }
    for bad in [
        "snapshot-1-2",
        "snapshot-00000000000000000003-00000000000000012345.tmp",
        "snapshot-00000000000000000003-0000000000000001234x",
        "snapshot-99999999999999999999-00000000000000000001", // overflows u64
        "log",
    ] {
        assert_eq!(parse_snapshot_file_name(bad), None, "{bad}");
    }
}

#[test]
fn every_flipped_byte_is_rejected_with_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sm = TestSm::random(2, 6);
    let w = write(dir.path(), &header(1, 9), &sm);
    let good = fs::read(&w.path).unwrap();
    let bad_path = dir.path().join("flipped");
    for pos in 0..good.len() {
        let mut bytes = good.clone();
        bytes[pos] ^= 0x10;
        fs::write(&bad_path, &bytes).unwrap();
        let err = load_snapshot_file(&bad_path, &mut TestSm::default())
            .expect_err(&format!("flip at {pos} of {} accepted", good.len()));
        assert!(err.to_string().contains("flipped"), "{err}");
        verify_snapshot_file(&bad_path).expect_err(&format!("verify accepted flip at {pos}"));
    }
}

#[test]
fn every_truncation_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), &header(1, 9), &TestSm::random(3, 5));
    let good = fs::read(&w.path).unwrap();
    let bad_path = dir.path().join("cut");
    for len in 0..good.len() {
        fs::write(&bad_path, &good[..len]).unwrap();
        load_snapshot_file(&bad_path, &mut TestSm::default())
            .expect_err(&format!("truncation to {len} accepted"));
        verify_snapshot_file(&bad_path).expect_err(&format!("verify accepted cut to {len}"));
    }
    // And bytes appended.
    let mut long = good.clone();
    long.push(0);
    fs::write(&bad_path, &long).unwrap();
    assert!(matches!(
        load_snapshot_file(&bad_path, &mut TestSm::default())
            .unwrap_err()
            .kind,
        SnapshotFileErrorKind::Length { .. } | SnapshotFileErrorKind::Crc { .. }
    ));
}

#[test]
fn a_state_machine_that_leaves_body_bytes_unread_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(4, 10);
    sm.pad = 3;
    let w = write(dir.path(), &header(1, 2), &sm);
    let err = load_snapshot_file(&w.path, &mut TestSm::default()).unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::BodyNotConsumed { left: 3 }),
        "{err}"
    );
}

/// A header whose member count is absurd is refused before anything is allocated for it.
#[test]
fn huge_counts_in_a_header_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), &header(1, 2), &TestSm::default());
    let good = fs::read(&w.path).unwrap();
    let bad_path = dir.path().join("huge");
    let mut bytes = good.clone();
    bytes[28..32].copy_from_slice(&u32::MAX.to_be_bytes()); // voter count
    fs::write(&bad_path, &bytes).unwrap();
    let err = read_snapshot_header(&bad_path).unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::TooManyMembers { .. }),
        "{err}"
    );
    // Extra length: after 3 voters and 1 learner.
    let at = 32 + 3 * 8 + 4 + 8;
    let mut bytes = good.clone();
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    fs::write(&bad_path, &bytes).unwrap();
    let err = read_snapshot_header(&bad_path).unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::ExtraTooLarge { .. }),
        "{err}"
    );
}

#[test]
fn listing_is_newest_first_and_ignores_temporary_and_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let sm = TestSm::random(5, 3);
    for (t, i) in [(1, 10), (2, 30), (2, 20)] {
        write(dir.path(), &header(t, i), &sm);
    }
    fs::write(
        dir.path()
            .join("snapshot-00000000000000000009-00000000000000000099.tmp"),
        b"x",
    )
    .unwrap();
    fs::write(
        dir.path()
            .join("snapshot-00000000000000000009-00000000000000000098.recv.tmp"),
        b"x",
    )
    .unwrap();
    fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    let ids: Vec<u64> = list_snapshots(dir.path())
        .unwrap()
        .iter()
        .map(|(id, _)| id.index.0)
        .collect();
    assert_eq!(ids, vec![30, 20, 10]);
    assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 2);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4);
    let keep = EntryId::new(Term(2), LogIndex(20));
    assert_eq!(remove_older_than(dir.path(), keep).unwrap(), 1);
    let ids: Vec<u64> = list_snapshots(dir.path())
        .unwrap()
        .iter()
        .map(|(id, _)| id.index.0)
        .collect();
    assert_eq!(ids, vec![30, 20]);
}

fn flip_byte(path: &Path, pos_from_end: u64) {
    let mut bytes = fs::read(path).unwrap();
    let at = bytes.len() - pos_from_end as usize;
    bytes[at] ^= 1;
    fs::write(path, bytes).unwrap();
}

#[test]
fn load_newest_skips_a_corrupt_newer_file_and_refuses_when_all_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load_newest(dir.path(), TestSm::default).unwrap().is_none());
    let old = TestSm::random(6, 20);
    let mut new = old.clone();
    new.set(b"k", b"v");
    let w_old = write(dir.path(), &header(1, 20), &old);
    let w_new = write(dir.path(), &header(1, 21), &new);
    let (h, sm, path) = load_newest(dir.path(), TestSm::default).unwrap().unwrap();
    assert_eq!(
        (h.meta.last.index, path.clone(), sm.state_hash()),
        (LogIndex(21), w_new.path.clone(), new.state_hash())
    );
    flip_byte(&w_new.path, 30);
    let (h, sm, path) = load_newest(dir.path(), TestSm::default).unwrap().unwrap();
    assert_eq!(
        (h.meta.last.index, path, sm.state_hash()),
        (LogIndex(20), w_old.path.clone(), old.state_hash())
    );
    flip_byte(&w_old.path, 30);
    let err = load_newest(dir.path(), TestSm::default).unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::AllCorrupt { count: 2 }),
        "{err}"
    );
}

#[test]
fn load_newest_refuses_a_file_whose_name_disagrees_with_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), &header(1, 20), &TestSm::random(7, 2));
    let renamed = dir
        .path()
        .join(snapshot_file_name(EntryId::new(Term(1), LogIndex(25))));
    fs::rename(&w.path, renamed).unwrap();
    let err = load_newest(dir.path(), TestSm::default).unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::AllCorrupt { count: 1 }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Transfer.

struct Source {
    _dir: tempfile::TempDir,
    path: PathBuf,
    header: SnapshotHeader,
    bytes: Vec<u8>,
    hash: u64,
}

fn source(seed: u64, pairs: usize) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let sm = TestSm::random(seed, pairs);
    let h = header(2, 1000 + seed);
    let w = write(dir.path(), &h, &sm);
    let bytes = fs::read(&w.path).unwrap();
    Source {
        _dir: dir,
        path: w.path,
        header: h,
        bytes,
        hash: sm.state_hash(),
    }
}

fn check_installed(src: &Source, path: &Path) {
    assert_eq!(fs::read(path).unwrap(), src.bytes, "installed file differs");
    let mut sm = TestSm::default();
    let (h, hash) = load_snapshot_file(path, &mut sm).unwrap();
    assert_eq!((h, hash), (src.header.clone(), src.hash));
}

#[test]
fn a_lossless_transfer_with_random_chunk_sizes_installs_the_identical_file() {
    for seed in 0..8 {
        let mut rng = Prng::new(seed);
        let src = source(seed, 300);
        let dst = tempfile::tempdir().unwrap();
        let chunk = rng.range(1, 4096) as usize;
        let window = rng.range(1, 6) as usize;
        let mut tx =
            SnapshotSender::new(src.path.clone(), src.header.meta.clone(), chunk, window).unwrap();
        let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
        let mut installed = None;
        let mut in_flight = VecDeque::new();
        for _ in 0..1_000_000 {
            while let Some(c) = tx.next_chunk().unwrap() {
                in_flight.push_back(c);
                assert!(in_flight.len() <= window, "window {window} exceeded");
            }
            let Some((offset, data, done)) = in_flight.pop_front() else {
                break;
            };
            let out = rx
                .on_chunk(&src.header.meta, tx.total_size(), offset, &data, done)
                .unwrap();
            if let Some((h, path)) = out.complete {
                assert_eq!(h, src.header);
                installed = Some(path);
            }
            tx.on_ack(out.next_offset, out.ok);
        }
        assert!(tx.is_complete(), "seed {seed}: sender not complete");
        check_installed(&src, &installed.expect("receiver completed"));
        // Nothing but the installed file is left in the follower's dir.
        assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 1);
    }
}

/// What travels between sender and receiver in the simulation.
enum Packet {
    Chunk(u64, Vec<u8>, bool),
    Ack(u64, bool),
}

/// One seeded run: loss, duplication and reordering of chunks and acks, restarts of both
/// ends, and a retransmit timer that fires when nothing is in flight. Returns the steps taken.
fn simulate(seed: u64) -> u64 {
    let mut rng = Prng::new(seed);
    let src = source(seed, rng.range(50, 600) as usize);
    let dst = tempfile::tempdir().unwrap();
    let meta = src.header.meta.clone();
    let new_sender = |rng: &mut Prng| {
        let chunk = rng.range(1, 2048) as usize;
        let window = rng.range(1, 5) as usize;
        SnapshotSender::new(src.path.clone(), meta.clone(), chunk, window).unwrap()
    };
    let mut tx = new_sender(&mut rng);
    let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
    let mut net: Vec<Packet> = Vec::new();
    let mut installed: Option<PathBuf> = None;
    let loss = rng.range(0, 30);
    for step in 0..200_000u64 {
        if tx.is_complete() {
            check_installed(
                &src,
                installed.as_ref().expect("sender complete before receiver"),
            );
            return step;
        }
        match rng.range(0, 100) {
            0 => tx = new_sender(&mut rng), // leader restarts the transfer
            1 => {
                // The follower restarts: its temp file is lost, but it knows what it installed.
                rx = SnapshotReceiver::new(dst.path().to_path_buf());
                remove_stale_temp_files(dst.path()).unwrap();
                if installed.is_some() {
                    rx.set_installed(meta.last);
                }
            }
            _ => {}
        }
        while let Some((off, data, done)) = tx.next_chunk().unwrap() {
            net.push(Packet::Chunk(off, data, done));
        }
        if net.is_empty() {
            tx.on_timeout();
            continue;
        }
        // Reorder: take any packet, mostly the oldest.
        let i = if rng.chance(1, 4) {
            rng.range(0, net.len() as u64) as usize
        } else {
            0
        };
        let packet = if rng.chance(1, 10) {
            clone_packet(&net[i])
        } else {
            net.remove(i)
        };
        if rng.range(0, 100) < loss {
            continue;
        }
        match packet {
            Packet::Chunk(off, data, done) => {
                let out = rx
                    .on_chunk(&meta, src.bytes.len() as u64, off, &data, done)
                    .unwrap();
                if let Some((_, path)) = out.complete {
                    assert!(installed.is_none(), "seed {seed}: installed twice");
                    installed = Some(path);
                }
                net.push(Packet::Ack(out.next_offset, out.ok));
            }
            Packet::Ack(next, ok) => tx.on_ack(next, ok),
        }
    }
    panic!(
        "seed {seed}: transfer did not complete in 200000 steps (acked {})",
        tx.acked()
    );
}

fn clone_packet(p: &Packet) -> Packet {
    match p {
        Packet::Chunk(o, d, done) => Packet::Chunk(*o, d.clone(), *done),
        Packet::Ack(n, ok) => Packet::Ack(*n, *ok),
    }
}

#[test]
fn transfers_complete_despite_lost_duplicated_and_reordered_packets_and_restarts() {
    let mut total_steps = 0;
    for seed in 0..200 {
        total_steps += simulate(seed);
    }
    eprintln!("200 seeded transfers, {total_steps} steps");
}

#[test]
fn a_corrupted_chunk_is_caught_by_the_crc_and_the_transfer_restarts() {
    let src = source(42, 200);
    let dst = tempfile::tempdir().unwrap();
    let total = src.bytes.len() as u64;
    let meta = &src.header.meta;
    let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
    let mid = src.bytes.len() / 2;
    let mut bad = src.bytes.clone();
    bad[mid] ^= 0x40;
    let first = rx.on_chunk(meta, total, 0, &bad[..mid + 1], false).unwrap();
    assert_eq!(
        first,
        ChunkOutcome {
            next_offset: mid as u64 + 1,
            ok: true,
            complete: None
        }
    );
    let err = rx
        .on_chunk(meta, total, mid as u64 + 1, &bad[mid + 1..], true)
        .unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::Crc { .. }),
        "{err}"
    );
    assert_eq!(
        fs::read_dir(dst.path()).unwrap().count(),
        0,
        "temp file left behind"
    );
    // The leader's next chunk is answered "start over"; a clean resend then installs.
    let again = rx
        .on_chunk(meta, total, mid as u64 + 1, &src.bytes[mid + 1..], true)
        .unwrap();
    assert_eq!(
        again,
        ChunkOutcome {
            next_offset: 0,
            ok: false,
            complete: None
        }
    );
    let out = rx.on_chunk(meta, total, 0, &src.bytes, true).unwrap();
    check_installed(&src, &out.complete.expect("complete").1);
}

#[test]
fn a_file_that_is_not_the_announced_snapshot_is_rejected() {
    let src = source(43, 20);
    let dst = tempfile::tempdir().unwrap();
    let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
    let mut meta = src.header.meta.clone();
    meta.conf.voters.push(NodeId(9));
    let err = rx
        .on_chunk(&meta, src.bytes.len() as u64, 0, &src.bytes, true)
        .unwrap_err();
    assert!(
        matches!(err.kind, SnapshotFileErrorKind::MetaMismatch { .. }),
        "{err}"
    );
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
}

#[test]
fn the_receiver_refuses_chunks_and_totals_over_the_limits() {
    let dst = tempfile::tempdir().unwrap();
    let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
    let meta = header(1, 1).meta;
    let kind = |r: Result<ChunkOutcome, SnapshotFileError>| r.unwrap_err().kind;
    assert!(matches!(
        kind(rx.on_chunk(&meta, SNAPSHOT_SIZE_MAX + 1, 0, b"x", false)),
        SnapshotFileErrorKind::TooLarge { .. }
    ));
    let big = vec![0u8; SNAPSHOT_CHUNK_SIZE_MAX + 1];
    assert!(matches!(
        kind(rx.on_chunk(&meta, 1 << 30, 0, &big, false)),
        SnapshotFileErrorKind::ChunkTooLarge { .. }
    ));
    assert!(matches!(
        kind(rx.on_chunk(&meta, 100, 90, &[0u8; 20], true)),
        SnapshotFileErrorKind::ChunkBeyondEnd { .. }
    ));
    assert!(matches!(
        kind(rx.on_chunk(&meta, 100, 0, &[0u8; 20], true)),
        SnapshotFileErrorKind::DoneMismatch { .. }
    ));
    assert!(matches!(
        kind(rx.on_chunk(&meta, 100, 80, &[0u8; 20], false)),
        SnapshotFileErrorKind::DoneMismatch { .. }
    ));
    assert!(matches!(
        kind(rx.on_chunk(&meta, 5, 0, &[0u8; 5], true)),
        SnapshotFileErrorKind::Truncated { .. }
    ));
    assert_eq!(
        fs::read_dir(dst.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn a_different_snapshot_restarts_the_transfer_only_from_offset_zero() {
    let a = source(50, 100);
    let b = source(51, 100);
    let dst = tempfile::tempdir().unwrap();
    let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
    let (ta, tb) = (a.bytes.len() as u64, b.bytes.len() as u64);
    assert_eq!(
        rx.on_chunk(&a.header.meta, ta, 0, &a.bytes[..100], false)
            .unwrap()
            .next_offset,
        100
    );
    // B mid-stream: told to start over, A's transfer kept.
    let out = rx
        .on_chunk(&b.header.meta, tb, 100, &b.bytes[100..200], false)
        .unwrap();
    assert_eq!(
        out,
        ChunkOutcome {
            next_offset: 0,
            ok: false,
            complete: None
        }
    );
    assert_eq!(rx.in_progress(), Some((a.header.meta.last, 100, ta)));
    // A gap and a duplicate in A: both answered with the expected offset.
    assert_eq!(
        rx.on_chunk(&a.header.meta, ta, 150, &a.bytes[150..160], false)
            .unwrap()
            .next_offset,
        100
    );
    assert_eq!(
        rx.on_chunk(&a.header.meta, ta, 0, &a.bytes[..50], false)
            .unwrap()
            .next_offset,
        100
    );
    // An overlapping resend writes only the new part.
    assert_eq!(
        rx.on_chunk(&a.header.meta, ta, 50, &a.bytes[50..120], false)
            .unwrap()
            .next_offset,
        120
    );
    // B from 0: A is abandoned, B installs.
    let out = rx.on_chunk(&b.header.meta, tb, 0, &b.bytes, true).unwrap();
    check_installed(&b, &out.complete.unwrap().1);
    assert_eq!(
        fs::read_dir(dst.path()).unwrap().count(),
        1,
        "A's temp file left behind"
    );
    // A late chunk of B is answered "complete", not restarted.
    let out = rx
        .on_chunk(&b.header.meta, tb, 100, &b.bytes[100..200], false)
        .unwrap();
    assert_eq!(
        out,
        ChunkOutcome {
            next_offset: tb,
            ok: true,
            complete: None
        }
    );
}

#[test]
fn the_sender_resumes_where_a_follower_already_is_and_rewinds_on_restart() {
    let src = source(60, 300);
    let meta = src.header.meta.clone();
    let mut tx = SnapshotSender::new(src.path.clone(), meta.clone(), 100, 2).unwrap();
    let (o1, d1, _) = tx.next_chunk().unwrap().unwrap();
    let (o2, _, _) = tx.next_chunk().unwrap().unwrap();
    assert_eq!((o1, d1.as_slice(), o2), (0, &src.bytes[..100], 100));
    assert!(tx.next_chunk().unwrap().is_none(), "window of 2 exceeded");
    // The follower already holds 1000 bytes from an earlier transfer: skip ahead.
    tx.on_ack(1000, true);
    assert_eq!(tx.next_chunk().unwrap().unwrap().0, 1000);
    // It restarted and lost them: rewind to 0.
    tx.on_ack(0, false);
    assert_eq!(tx.next_chunk().unwrap().unwrap().0, 0);
    // An ack beyond the file is ignored.
    tx.on_ack(u64::MAX, true);
    assert_eq!(tx.acked(), 0);
    // A sender for a file that is not the named snapshot is refused.
    let mut other = meta.clone();
    other.last.index = other.last.index.next();
    assert!(SnapshotSender::new(src.path.clone(), other, 100, 2).is_err());
}

// ---------------------------------------------------------------------------------------------
// Removing old files gently (what the snapshot child does once its snapshot is durable).

#[test]
fn removing_gently_unlinks_every_name_and_frees_files_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("{i:020}.wal.obsolete")))
        .collect();
    // Larger than one 16 MiB step, and not a multiple of it.
    for (i, p) in paths.iter().enumerate() {
        fs::write(p, vec![i as u8 + 1; 33 * 1024 * 1024 + 17 * i]).unwrap();
    }
    // An observer's handle on the middle file: it sees the blocks go.
    let observer = fs::File::open(&paths[1]).unwrap();
    let mut with_missing = paths.clone();
    with_missing.push(dir.path().join("never-existed.wal.obsolete"));
    assert_eq!(remove_gently(&with_missing, Readers::None).unwrap(), 3);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(
        observer.metadata().unwrap().len(),
        0,
        "the unread file was freed"
    );
    assert_eq!(remove_gently(&paths, Readers::None).unwrap(), 0);
}

/// After a new snapshot: an older one being streamed is only unlinked (never made the spare,
/// never truncated: the sender reads every byte); one nobody reads becomes the spare, and the
/// next snapshot is written over its blocks.
#[test]
fn an_old_snapshot_being_streamed_is_unlinked_and_one_nobody_reads_is_written_over() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join(SPARE_NAME);
    let old = write(dir.path(), &header(2, 100), &TestSm::random(5, 3000));
    let bytes = fs::read(&old.path).unwrap();
    let mut tx = SnapshotSender::new(old.path.clone(), header(2, 100).meta, 4096, 1).unwrap();
    let newer = write(dir.path(), &header(2, 200), &TestSm::random(6, 10));
    assert_eq!(
        retire_older(dir.path(), header(2, 200).meta.last).unwrap(),
        1
    );
    assert!(!old.path.exists(), "the old name is gone");
    assert!(
        !spare.exists(),
        "a snapshot being read is not kept to be written over"
    );
    assert!(newer.path.exists());
    // The sender's locked file kept its contents: it streams the whole old snapshot.
    assert_eq!(tx.read_at(0, bytes.len()).unwrap(), bytes);
    drop(tx);
    let inode = |p: &Path| fs::metadata(p).unwrap().ino();
    let newer_inode = inode(&newer.path);
    write(dir.path(), &header(3, 300), &TestSm::random(7, 10));
    assert_eq!(
        retire_older(dir.path(), header(3, 300).meta.last).unwrap(),
        0
    );
    assert_eq!(
        inode(&spare),
        newer_inode,
        "the unread older snapshot became the spare"
    );
    assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    let next = write(dir.path(), &header(4, 400), &TestSm::random(8, 10));
    assert_eq!(
        inode(&next.path),
        newer_inode,
        "written over the spare's blocks"
    );
    let mut loaded = TestSm::default();
    load_snapshot_file(&next.path, &mut loaded).expect("the recycled file loads");
    assert_eq!(loaded, TestSm::random(8, 10));
}

#[test]
fn a_large_file_under_a_shared_lock_is_unlinked_but_not_truncated() {
    use kvraft::node::sys::{try_lock, FileLock};
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let (read, unread) = (dir.path().join("read"), dir.path().join("unread"));
    let bytes: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    fs::write(&read, &bytes).unwrap();
    fs::write(&unread, &bytes).unwrap();
    let reader = fs::File::open(&read).unwrap();
    assert!(try_lock(reader.as_raw_fd(), FileLock::Shared).unwrap());
    let observer = fs::File::open(&unread).unwrap(); // no lock: not a reader
    let paths = [read.clone(), unread.clone()];
    assert_eq!(remove_gently(&paths, Readers::Locked).unwrap(), 2);
    assert!(!read.exists() && !unread.exists());
    assert_eq!(
        observer.metadata().unwrap().len(),
        0,
        "the unread file was freed"
    );
    let mut kept = Vec::new();
    std::io::Read::read_to_end(&mut &reader, &mut kept).unwrap();
    assert!(
        kept == bytes,
        "the locked file lost bytes: {} of {}",
        kept.len(),
        bytes.len()
    );
}

#[test]
fn a_snapshot_being_removed_is_not_opened_for_streaming() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let w = write(dir.path(), &header(2, 100), &TestSm::random(8, 100));
    let remover = fs::File::open(&w.path).unwrap();
    assert!(kvraft::node::sys::try_lock(
        remover.as_raw_fd(),
        kvraft::node::sys::FileLock::Exclusive
    )
    .unwrap());
    let err = SnapshotSender::new(w.path.clone(), header(2, 100).meta, 4096, 1)
        .err()
        .expect("refused while locked");
    assert!(err.to_string().contains("being removed"), "{err}");
    drop(remover);
    // Readers share: two senders at once, and then the remover's lock is refused.
    let a = SnapshotSender::new(w.path.clone(), header(2, 100).meta, 4096, 1).unwrap();
    let b = SnapshotSender::new(w.path.clone(), header(2, 100).meta, 4096, 1).unwrap();
    let remover = fs::File::open(&w.path).unwrap();
    assert!(!kvraft::node::sys::try_lock(
        remover.as_raw_fd(),
        kvraft::node::sys::FileLock::Exclusive
    )
    .unwrap());
    drop((a, b));
    assert!(kvraft::node::sys::try_lock(
        remover.as_raw_fd(),
        kvraft::node::sys::FileLock::Exclusive
    )
    .unwrap());
}
