//! `cargo bench --bench wal`: the segmented log against plain `write` + `fdatasync` on one file.
//!
//! Appends 256-byte records in batches of 1, 16 and 256 with one sync per batch. Rows stop at
//! `WAL_BENCH_RECORDS` records (default 1,000,000) or after `WAL_BENCH_SECS` seconds
//! (default 6) per row, whichever comes first, so batch 1 and 16 run fewer records (printed).
//! The plain baseline encodes the same records (header + crc32c) and appends them with one
//! write(2) and one fdatasync(2) per batch. `WAL_BENCH_DIR` picks the directory (default: the
//! system temp dir); `WAL_BENCH_BATCHES=1,16` picks the batch sizes. Prints records/s, MB/s, ratio to plain, the CPU per record spent in
//! `append` (sync excluded, and the appends that created a segment excluded and shown
//! separately as `seg create ms`), then the recovery time of the largest log written.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use kvraft::raft::{Entry, EntryKind, LogIndex, Term};
use kvraft::wal::{Prefill, Wal, WalOptions};

const PAYLOAD: usize = 256;

struct Row {
    records: u64,
    elapsed: Duration,
    /// Time in `append` excluding the batches that created a segment, scaled to all records.
    append_cpu: Duration,
    /// Time in the appends that created a segment (preallocation, header, fsyncs).
    segments_created: Duration,
}

impl Row {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mbps(&self) -> f64 {
        self.rate() * PAYLOAD as f64 / 1e6
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |s| s.parse().expect(name))
}

fn batch_of(start: u64, n: usize) -> Vec<Entry> {
    (0..n as u64)
        .map(|k| Entry {
            term: Term(1),
            index: LogIndex(start + k),
            kind: EntryKind::Command,
            data: vec![(k % 251) as u8; PAYLOAD],
        })
        .collect()
}

fn run_wal(dir: &Path, prefill: Prefill, batch: usize, max: u64, budget: Duration) -> Row {
    let mut wal = Wal::open(
        dir,
        WalOptions {
            prefill,
            ..WalOptions::default()
        },
    )
    .unwrap();
    let mut next = 1u64;
    let mut append_cpu = Duration::ZERO;
    let (mut appended, mut created) = (0u64, Duration::ZERO);
    let started = Instant::now();
    while next <= max && started.elapsed() < budget {
        let b = batch_of(next, batch);
        let segments = wal.segment_count();
        let t = Instant::now();
        wal.append(&b).unwrap();
        if wal.segment_count() == segments {
            append_cpu += t.elapsed();
            appended += batch as u64;
        } else {
            created += t.elapsed();
        }
        wal.sync().unwrap();
        next += batch as u64;
    }
    let records = next - 1;
    Row {
        records,
        elapsed: started.elapsed(),
        append_cpu: append_cpu.mul_f64(records as f64 / appended.max(1) as f64),
        segments_created: created,
    }
}

fn run_plain(dir: &Path, batch: usize, max: u64, budget: Duration) -> Row {
    let path = dir.join("plain.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut next = 1u64;
    let mut buf = Vec::new();
    let mut append_cpu = Duration::ZERO;
    let started = Instant::now();
    while next <= max && started.elapsed() < budget {
        let b = batch_of(next, batch);
        let t = Instant::now();
        buf.clear();
        for e in &b {
            let mut hdr = [0u8; 32];
            hdr[4..8].copy_from_slice(&(e.data.len() as u32).to_be_bytes());
            hdr[8..16].copy_from_slice(&e.term.0.to_be_bytes());
            hdr[16..24].copy_from_slice(&e.index.0.to_be_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[4..]), &e.data);
            hdr[..4].copy_from_slice(&crc.to_be_bytes());
            buf.extend_from_slice(&hdr);
            buf.extend_from_slice(&e.data);
        }
        f.write_all(&buf).unwrap();
        append_cpu += t.elapsed();
        f.sync_data().unwrap();
        next += batch as u64;
    }
    Row {
        records: next - 1,
        elapsed: started.elapsed(),
        append_cpu,
        segments_created: Duration::ZERO,
    }
}

fn main() {
    let max = env_u64("WAL_BENCH_RECORDS", 1_000_000);
    let budget = Duration::from_secs(env_u64("WAL_BENCH_SECS", 6));
    let base = std::env::var("WAL_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), Into::into);
    println!("wal bench: {PAYLOAD}-byte records, one sync per batch, each row stops at {max} records or {}s", budget.as_secs());
    println!("dir: {}", base.display());
    println!(
        "{:>5} {:<10} {:>9} {:>11} {:>8} {:>10} {:>13} {:>14}",
        "batch",
        "log",
        "records",
        "records/s",
        "MB/s",
        "vs plain",
        "append ns/rec",
        "seg create ms"
    );
    let mut largest: Option<(tempfile::TempDir, u64)> = None;
    let batches: Vec<usize> = std::env::var("WAL_BENCH_BATCHES").map_or(vec![1, 16, 256], |s| {
        s.split(',')
            .map(|b| b.parse().expect("WAL_BENCH_BATCHES"))
            .collect()
    });
    for batch in batches {
        let pdir = tempfile::tempdir_in(&base).unwrap();
        let plain = run_plain(pdir.path(), batch, max, budget);
        drop(pdir);
        let mut rows = vec![("plain", plain)];
        for (name, prefill) in [
            ("wal-zero", Prefill::ZeroFill),
            ("wal-falloc", Prefill::Fallocate),
        ] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let row = run_wal(dir.path(), prefill, batch, max, budget);
            if largest.as_ref().is_none_or(|(_, n)| row.records > *n) {
                largest = Some((dir, row.records));
            }
            rows.push((name, row));
        }
        let plain_rate = rows[0].1.rate();
        for (name, r) in &rows {
            println!(
                "{:>5} {:<10} {:>9} {:>11.0} {:>8.2} {:>9.2}x {:>13.0} {:>14.1}",
                batch,
                name,
                r.records,
                r.rate(),
                r.mbps(),
                r.rate() / plain_rate,
                r.append_cpu.as_nanos() as f64 / r.records as f64,
                r.segments_created.as_secs_f64() * 1e3
            );
        }
    }
    if let Some((dir, records)) = largest {
        let t = Instant::now();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let took = t.elapsed();
        let bytes = wal.disk_bytes();
        println!(
            "recovery of the largest log ({records} records, {} segments, {:.1} MiB on disk, page cache warm): {:.3}s ({:.2} s/GiB)",
            wal.segment_count(),
            bytes as f64 / (1 << 20) as f64,
            took.as_secs_f64(),
            took.as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64)
        );
        println!("  {}", wal.recovery_report());
    }
}
