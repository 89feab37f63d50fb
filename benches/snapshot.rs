//! Snapshot costs: writing a file, loading it (with the CRC pass), verifying it without a
//! state machine, fork() pause, the whole fork-child snapshot, and an in-memory transfer.
//! Then the fork child's CPU without the disk: the real `KvStore` (the cluster bench's
//! 16-byte keys and 256-byte values) encoded in the file format, CRC included, into
//! `io::sink()`. `cargo bench --bench snapshot` prints a table; nothing is asserted.
//! `BENCH_ENCODE_KEYS` sets that store's size (300000).

#[path = "../tests/snapshot_support/mod.rs"]
mod snapshot_support;

use std::time::{Duration, Instant};

use kvraft::kv::{KvStore, Request, StateMachine};
use kvraft::node::snapshot::*;
use kvraft::node::sys;
use kvraft::raft::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};
use snapshot_support::TestSm;

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() {
    println!(
        "{:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} {:>10} | {:>9}",
        "pairs", "MB", "write", "load", "verify", "fork", "child", "transfer"
    );
    println!(
        "{:>9} {:>9} | {:>9} {:>9} {:>9} | {:>10} {:>10} | {:>9}",
        "", "", "MB/s", "MB/s", "MB/s", "pause", "total", "MB/s"
    );
    for pairs in [10_000usize, 100_000, 500_000] {
        let dir = tempfile::tempdir().unwrap();
        let sm = TestSm::random(pairs as u64, pairs);
        let header = SnapshotHeader {
            meta: SnapshotMeta {
                last: EntryId::new(Term(1), LogIndex(pairs as u64)),
                conf: ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![]),
            },
            extra: Vec::new(),
        };
        let t = Instant::now();
        let w = write_snapshot_file(dir.path(), &header, &sm, WriteRate::Unlimited).unwrap();
        let write = t.elapsed();
        let t = Instant::now();
        load_snapshot_file(&w.path, &mut TestSm::default()).unwrap();
        let load = t.elapsed();
        let t = Instant::now();
        verify_snapshot_file(&w.path).unwrap();
        let verify = t.elapsed();
        std::fs::remove_file(&w.path).unwrap();

        let mut snap = Snapshotter::new(WriteRate::Unlimited);
        let t = Instant::now();
        let (fd, fork) = snap.start(dir.path(), header.clone(), &sm, t, &[]).unwrap();
        assert!(sys::wait_readable(fd, Duration::from_secs(600)).unwrap());
        let done = loop {
            if let Some(done) = snap.poll_child() {
                break done.unwrap();
            }
            std::thread::sleep(Duration::from_micros(100));
        };

        let dst = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let mut tx =
            SnapshotSender::new(done.path.clone(), header.meta.clone(), 1 << 20, 4).unwrap();
        let mut rx = SnapshotReceiver::new(dst.path().to_path_buf());
        while !tx.is_complete() {
            let (off, data, last) = tx.next_chunk().unwrap().unwrap();
            let out = rx
                .on_chunk(&header.meta, tx.total_size(), off, &data, last)
                .unwrap();
            tx.on_ack(out.next_offset, out.ok);
        }
        let transfer = t.elapsed();
        println!(
            "{:>9} {:>9.1} | {:>9.0} {:>9.0} {:>9.0} | {:>10.2?} {:>10.2?} | {:>9.0}",
            pairs,
            w.size_bytes as f64 / 1e6,
            mb_per_s(w.size_bytes, write),
            mb_per_s(w.size_bytes, load),
            mb_per_s(w.size_bytes, verify),
            fork,
            done.took,
            mb_per_s(w.size_bytes, transfer),
        );
    }
    encode_row();
}

/// The fork child's CPU for one snapshot of the cluster bench's data, without the disk: a
/// `KvStore` of `BENCH_ENCODE_KEYS` SETs (16-byte keys, 256-byte values) written in the file
/// format (header, body, CRC, trailer) into `io::sink()`; best of three.
fn encode_row() {
    let keys: u64 = std::env::var("BENCH_ENCODE_KEYS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    let mut sm = KvStore::new(1);
    let value = vec![b'x'; 256];
    for i in 0..keys {
        let args = vec![
            b"SET".to_vec(),
            format!("key-{i:012}").into_bytes(),
            value.clone(),
        ];
        let Some(Request::Write(entry)) = sm.parse(&args) else {
            panic!("SET did not parse as a write");
        };
        sm.apply(LogIndex(i + 1), &entry);
    }
    let header = SnapshotHeader {
        meta: SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(keys)),
            conf: ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![]),
        },
        extra: Vec::new(),
    };
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let (size, _) = write_snapshot_to(&mut std::io::sink(), &header, &sm).unwrap();
        best = best.min(t.elapsed());
        bytes = size;
    }
    println!(
        "\nencode {keys} keys of KvStore into io::sink (the child's CPU without the disk): \
         {:.1} MB in {best:.2?} = {:.0} MB/s",
        bytes as f64 / 1e6,
        mb_per_s(bytes, best)
    );
}
