//! `cargo bench --bench wal`: the segmented log against plain `write` + `fdatasync` on one file.
//!
//! Appends 256-byte records in batches of 1, 16 and 256 with one sync per batch. For each batch
//! size the two logs run in `WAL_BENCH_ROUNDS` interleaved rounds (default 5; the order
//! alternates each round), so drift of the shared disk hits both alike; the table shows the
//! median rates and the median (min..max) of the per-round ratios wal/plain. A run stops at
//! `WAL_BENCH_RECORDS` records (default 1,000,000) or after `WAL_BENCH_SECS` seconds (default
//! 3), whichever comes first, so batch 1 and 16 run fewer records (printed).
//!
//! The plain baseline encodes the same records (the 48-byte header of format version 2 +
//! crc32c) and appends them with one write(2) and one fdatasync(2) per batch. Both logs live in fresh directories under
//! `WAL_BENCH_DIR` (default: the system temp dir), so on the same filesystem; its type is
//! printed. `WAL_BENCH_BATCHES=1,16` picks the batch sizes, `WAL_BENCH_PREFILL=zero` makes the
//! log zero-fill its segments instead of only fallocating them.
//!
//! `append ns/rec` is the wall time inside `append` (or encode + write(2) for plain) per
//! record, the sync excluded, and for the log the appends that created a segment excluded (their
//! total is shown as `seg ms`). `faults/rec` is the minor page faults of the process per record
//! (/proc/self/stat). Last, the recovery time of the last log written (page cache warm).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvraft::raft::{Entry, EntryKind, LogIndex, Term};
use kvraft::wal::{Prefill, Wal, WalOptions};

const PAYLOAD: usize = 256;

#[derive(Clone, Copy)]
struct Run {
    records: u64,
    elapsed: Duration,
    /// Time in `append` excluding the batches that created a segment, scaled to all records.
    append: Duration,
    /// Time in the appends that created a segment (preallocation, header, fsyncs).
    segments_created: Duration,
    minor_faults: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn append_ns(&self) -> f64 {
        self.append.as_nanos() as f64 / self.records as f64
    }
    fn faults_per_record(&self) -> f64 {
        self.minor_faults as f64 / self.records as f64
    }
}

struct Params {
    max: u64,
    budget: Duration,
    prefill: Prefill,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |s| s.parse().expect(name))
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 1..];
    after_comm
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .expect("minflt field")
}

fn batch_of(start: u64, n: usize) -> Vec<Entry> {
    (0..n as u64)
        .map(|k| Entry {
            term: Term(1),
            index: LogIndex(start + k),
            kind: EntryKind::Command,
            data: vec![(k % 251) as u8; PAYLOAD].into(),
        })
        .collect()
}

fn run_wal(dir: &Path, batch: usize, p: &Params) -> Run {
    let opts = WalOptions {
        prefill: p.prefill,
        ..WalOptions::default()
    };
    let mut wal = Wal::open(dir, opts).unwrap();
    let mut next = 1u64;
    let (mut append, mut appended, mut created) = (Duration::ZERO, 0u64, Duration::ZERO);
    let faults = minor_faults();
    let started = Instant::now();
    while next <= p.max && started.elapsed() < p.budget {
        let b = batch_of(next, batch);
        let segments = wal.segment_count();
        let t = Instant::now();
        wal.append(&b).unwrap();
        if wal.segment_count() == segments {
            append += t.elapsed();
            appended += batch as u64;
        } else {
            created += t.elapsed();
        }
        wal.sync().unwrap();
        next += batch as u64;
    }
    let elapsed = started.elapsed();
    let records = next - 1;
    Run {
        records,
        elapsed,
        append: append.mul_f64(records as f64 / appended.max(1) as f64),
        segments_created: created,
        minor_faults: minor_faults() - faults,
    }
}

fn run_plain(dir: &Path, batch: usize, p: &Params) -> Run {
    let path = dir.join("plain.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut next = 1u64;
    let mut buf = Vec::new();
    let mut append = Duration::ZERO;
    let faults = minor_faults();
    let started = Instant::now();
    while next <= p.max && started.elapsed() < p.budget {
        let b = batch_of(next, batch);
        let t = Instant::now();
        buf.clear();
        for e in &b {
            // The log's record header (format version 2): magic, crc, length, kind, term,
            // index, batch, batch first index; so both write the same bytes per record.
            let mut hdr = [0u8; 48];
            hdr[..4].copy_from_slice(b"KVRC");
            hdr[8..12].copy_from_slice(&(e.data.len() as u32).to_be_bytes());
            hdr[16..24].copy_from_slice(&e.term.0.to_be_bytes());
            hdr[24..32].copy_from_slice(&e.index.0.to_be_bytes());
            hdr[32..40].copy_from_slice(&next.to_be_bytes());
            hdr[40..48].copy_from_slice(&b[0].index.0.to_be_bytes());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&hdr[8..]), &e.data);
            hdr[4..8].copy_from_slice(&crc.to_be_bytes());
            buf.extend_from_slice(&hdr);
            buf.extend_from_slice(&e.data);
        }
        f.write_all(&buf).unwrap();
        append += t.elapsed();
        f.sync_data().unwrap();
        next += batch as u64;
    }
    Run {
        records: next - 1,
        elapsed: started.elapsed(),
        append,
        segments_created: Duration::ZERO,
        minor_faults: minor_faults() - faults,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The filesystem type of the mount holding `dir` (longest matching mount point).
fn fs_type(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 4 || !dir.starts_with(f[1]) {
            continue;
        }
        if best.as_ref().is_none_or(|(n, _)| f[1].len() >= *n) {
            best = Some((
                f[1].len(),
                format!("{} on {} ({}, {})", f[0], f[1], f[2], f[3]),
            ));
        }
    }
    best.map_or("unknown".into(), |(_, s)| s)
}

/// Interleaved rounds of one batch size; returns the last log's directory.
fn bench_batch(base: &Path, batch: usize, rounds: u64, p: &Params) -> tempfile::TempDir {
    let mut plains = Vec::new();
    let mut wals = Vec::new();
    let mut last = None;
    for r in 0..rounds {
        let plain_first = r % 2 == 0;
        for k in 0..2 {
            let dir = tempfile::tempdir_in(base).unwrap();
            if (k == 0) == plain_first {
                plains.push(run_plain(dir.path(), batch, p));
            } else {
                wals.push(run_wal(dir.path(), batch, p));
                last = Some(dir);
            }
        }
    }
    let ratios: Vec<f64> = plains
        .iter()
        .zip(&wals)
        .map(|(p, w)| w.rate() / p.rate())
        .collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    let ratio = median(ratios);
    for (name, runs) in [("plain", &plains), ("wal", &wals)] {
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let rate = m(&|r| r.rate());
        let vs = if name == "wal" {
            format!("{ratio:.2}x ({lo:.2}..{hi:.2})")
        } else {
            "1.00x".into()
        };
        println!(
            "{:>5} {:<6} {:>9.0} {:>10.0} {:>7.1} {:>19} {:>8.0} {:>9.3} {:>7.1}",
            batch,
            name,
            m(&|r| r.records as f64),
            rate,
            rate * PAYLOAD as f64 / 1e6,
            vs,
            m(&|r| r.append_ns()),
            m(&|r| r.faults_per_record()),
            m(&|r| r.segments_created.as_secs_f64() * 1e3),
        );
    }
    last.expect("at least one round")
}

fn main() {
    let p = Params {
        max: env_u64("WAL_BENCH_RECORDS", 1_000_000),
        budget: Duration::from_secs(env_u64("WAL_BENCH_SECS", 3)),
        prefill: match std::env::var("WAL_BENCH_PREFILL").as_deref() {
            Ok("zero") => Prefill::ZeroFill,
            _ => Prefill::Fallocate,
        },
    };
    let rounds = env_u64("WAL_BENCH_ROUNDS", 5).max(1);
    let base: PathBuf =
        std::env::var("WAL_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), Into::into);
    let batches: Vec<usize> = std::env::var("WAL_BENCH_BATCHES").map_or(vec![1, 16, 256], |s| {
        s.split(',')
            .map(|b| b.parse().expect("WAL_BENCH_BATCHES"))
            .collect()
    });
    println!(
        "wal bench: {PAYLOAD}-byte records, one sync per batch, {rounds} interleaved rounds, \
         each run stops at {} records or {}s; log prefill {:?}",
        p.max,
        p.budget.as_secs(),
        p.prefill
    );
    println!("dir: {} on {}", base.display(), fs_type(&base));
    println!(
        "{:>5} {:<6} {:>9} {:>10} {:>7} {:>19} {:>8} {:>9} {:>7}",
        "batch",
        "log",
        "records",
        "records/s",
        "MB/s",
        "vs plain (min..max)",
        "ns/rec",
        "faults/rec",
        "seg ms"
    );
    let mut last = None;
    for batch in batches {
        last = Some(bench_batch(&base, batch, rounds, &p));
    }
    if let Some(dir) = last {
        // WAL_BENCH_COLD=1: drop the page cache first (needs root), so recovery reads the disk.
        let cold = std::env::var("WAL_BENCH_COLD").is_ok_and(|v| v == "1") && drop_page_cache();
        let t = Instant::now();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let took = t.elapsed();
        let bytes = wal.disk_bytes();
        println!(
            "recovery of the last log ({} records, {} segments, {:.1} MiB on disk, page cache {}): {:.3}s ({:.2} s/GiB)",
            wal.recovery_report().records,
            wal.segment_count(),
            bytes as f64 / (1 << 20) as f64,
            if cold { "dropped" } else { "warm" },
            took.as_secs_f64(),
            took.as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64)
        );
    }
}

/// Write back and drop the page cache; false (with a note) where that is not allowed.
fn drop_page_cache() -> bool {
    let ok = std::process::Command::new("sync")
        .status()
        .is_ok_and(|s| s.success())
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    if !ok {
        println!("(could not drop the page cache: not root?)");
    }
    ok
}
