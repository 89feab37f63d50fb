//! `cargo bench --bench kv`: the skiplist against std's BTreeMap on the same data in the same
//! run: 1M random 16-byte keys with 256-byte values. Prints ops/s, the ratio, and heap bytes
//! per entry beyond the key and value bytes (counted by a counting global allocator, which
//! counts what malloc reserved, `malloc_usable_size`, not what was asked for: glibc rounds a
//! 272-byte request up to 280 usable bytes, and that rounding is part of a structure's cost;
//! the allocator's own 8-byte chunk header is not counted).
//! Set KV_BENCH_N to change the entry count.
//!
//! A second table uses compare.py's key shape (`k` + 15 zero-padded digits, as the loadgen's
//! `make_key`: keys share a long prefix, which defeats a comparison on the first 8 bytes) at
//! 100k and 1M keys (KV_BENCH_SHARED_N, comma-separated, changes them), inserted and read in
//! random order. KV_BENCH_SHARED_ONLY=1 runs only that table. Its last line: the store's
//! overwrites again while a forked child (which only sleeps) shares the memory, as a snapshot
//! child does, with the page faults per overwrite (copy-on-write: the first store into each
//! shared page faults and copies it).
//!
//! NB: the only unsafe code here is the counting allocator, which forwards to `System`, and
//! one getrusage.
#![allow(unsafe_code)]

use kvraft::kv::skiplist::SkipList;
use kvraft::kv::snapshot::{HEADER_SIZE, RECORD_HEADER_SIZE, TRAILER_SIZE};
use kvraft::kv::{KvStore, Request, StateMachine};
use kvraft::node::sys;
use kvraft::prng::Prng;
use kvraft::raft::LogIndex;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// What malloc reserved for `ptr` (null: nothing).
///
/// SAFETY: `ptr` is null or a live pointer from `System` (which is glibc's malloc family).
unsafe fn usable(ptr: *mut u8) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract.
    unsafe { libc::malloc_usable_size(ptr.cast()) }
}

// SAFETY: every call forwards to `System` with the caller's layout and pointer unchanged;
// the counter only observes sizes (of live pointers, before they are freed).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        // SAFETY: `p` is null or just allocated.
        LIVE.fetch_add(unsafe { usable(p) }, Ordering::Relaxed);
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is live until the call below.
        LIVE.fetch_sub(unsafe { usable(ptr) }, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live until the call below.
        let old = unsafe { usable(ptr) };
        // SAFETY: `ptr` came from `System` with `layout`; `new_size` is the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // SAFETY: `p` was just returned live.
            LIVE.fetch_add(unsafe { usable(p) }, Ordering::Relaxed);
            LIVE.fetch_sub(old, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const KEY_SIZE: usize = 16;
const VALUE_SIZE: usize = 256;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn keys(n: usize, seed: u64) -> Vec<[u8; KEY_SIZE]> {
    let mut p = Prng::new(seed);
    (0..n)
        .map(|_| {
            let mut k = [0u8; KEY_SIZE];
            p.fill(&mut k);
            k
        })
        .collect()
}

fn value_for(i: usize, template: &[u8; VALUE_SIZE]) -> [u8; VALUE_SIZE] {
    let mut v = *template;
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    v
}

/// Seconds taken by `f`.
fn time(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

struct Row {
    name: &'static str,
    skip: f64,
    btree: f64,
}

fn main() {
    let shared_ns: Vec<usize> = std::env::var("KV_BENCH_SHARED_N")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    for &n in &shared_ns {
        shared_prefix_rows(n);
    }
    if std::env::var("KV_BENCH_SHARED_ONLY").is_ok_and(|v| v == "1") {
        return;
    }
    let n: usize = std::env::var("KV_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let ks = keys(n, 1);
    let misses = keys(n, 2);
    let mut order: Vec<usize> = (0..n).collect();
    let mut p = Prng::new(3);
    for i in (1..n).rev() {
        order.swap(i, p.range(0, i as u64 + 1) as usize);
    }
    let mut template = [0u8; VALUE_SIZE];
    p.fill(&mut template);
    let data_bytes = n * (KEY_SIZE + VALUE_SIZE);
    let mut rows = Vec::new();

    // Warm-up, untimed: fault in and free a heap of the same shape, so that neither
    // structure is charged for the kernel's first touch of the pages.
    let warm: Vec<Vec<u8>> = ks
        .iter()
        .enumerate()
        .map(|(i, k)| [&k[..], &value_for(i, &template)[..]].concat())
        .collect();
    drop(black_box(warm));

    // --- skiplist
    let base = live();
    let mut list = SkipList::new(42);
    let s_insert = time(|| {
        for (i, k) in ks.iter().enumerate() {
            list.insert(k, &value_for(i, &template));
        }
    });
    // Record pages are mapped outside the allocator this bench counts: add them.
    let s_mem = live() - base + list.mapped_bytes();
    let s_self = list.overhead_bytes();
    let s_hit = time(|| {
        for &i in &order {
            black_box(list.get(&ks[i]));
        }
    });
    let s_miss = time(|| {
        for k in &misses {
            black_box(list.get(k));
        }
    });
    let s_scan = time(|| {
        let mut total = 0usize;
        for (k, v) in list.iter() {
            total += k.len() + v[0] as usize;
        }
        black_box(total);
    });
    let s_compact = time(|| {
        black_box(list.compact());
    });
    let s_mem_compact = live() - base + list.mapped_bytes();
    let s_hit_c = time(|| {
        for &i in &order {
            black_box(list.get(&ks[i]));
        }
    });
    let s_scan_c = time(|| {
        let mut total = 0usize;
        for (k, v) in list.iter() {
            total += k.len() + v[0] as usize;
        }
        black_box(total);
    });
    let s_remove = time(|| {
        for &i in &order {
            black_box(list.remove(&ks[i]));
        }
    });
    drop(list);

    // --- BTreeMap
    let base = live();
    let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let b_insert = time(|| {
        for (i, k) in ks.iter().enumerate() {
            map.insert(k.to_vec(), value_for(i, &template).to_vec());
        }
    });
    let b_mem = live() - base;
    let b_hit = time(|| {
        for &i in &order {
            black_box(map.get(&ks[i][..]));
        }
    });
    let b_miss = time(|| {
        for k in &misses {
            black_box(map.get(&k[..]));
        }
    });
    let b_scan = time(|| {
        let mut total = 0usize;
        for (k, v) in map.iter() {
            total += k.len() + v[0] as usize;
        }
        black_box(total);
    });
    let b_remove = time(|| {
        for &i in &order {
            black_box(map.remove(&ks[i][..]));
        }
    });
    drop(map);

    rows.push(Row {
        name: "insert",
        skip: s_insert,
        btree: b_insert,
    });
    rows.push(Row {
        name: "get (hit)",
        skip: s_hit,
        btree: b_hit,
    });
    rows.push(Row {
        name: "get (miss)",
        skip: s_miss,
        btree: b_miss,
    });
    rows.push(Row {
        name: "full ordered scan",
        skip: s_scan,
        btree: b_scan,
    });
    rows.push(Row {
        name: "get (hit), compacted",
        skip: s_hit_c,
        btree: b_hit,
    });
    rows.push(Row {
        name: "scan, compacted",
        skip: s_scan_c,
        btree: b_scan,
    });
    rows.push(Row {
        name: "remove",
        skip: s_remove,
        btree: b_remove,
    });

    // --- the state machine: apply SETs, snapshot write and load (vs. the same format by hand
    // over a BTreeMap).
    let entries: Vec<Vec<u8>> = ks
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let args = vec![
                b"SET".to_vec(),
                k.to_vec(),
                value_for(i, &template).to_vec(),
            ];
            match KvStore::new(0).parse(&args) {
                Some(Request::Write(e)) => e,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let before_kv = LIVE.load(Ordering::Relaxed);
    let mut kv = KvStore::new(42);
    let apply = time(|| {
        for (i, e) in entries.iter().enumerate() {
            black_box(kv.apply(LogIndex(i as u64 + 1), e));
        }
    });
    // The whole store, skiplist and SCAN index together.
    let kv_mem = LIVE.load(Ordering::Relaxed) - before_kv + kv.mapped_bytes();
    drop(entries);
    let mut snap = Vec::with_capacity(data_bytes + n * 8 + 64);
    let s_write = time(|| {
        kv.write_snapshot(&mut snap).unwrap();
    });
    let hash = kv.state_hash();
    drop(kv);
    let mut loaded = KvStore::new(43);
    let s_load = time(|| {
        assert_eq!(loaded.load_snapshot(&mut &snap[..]).unwrap(), hash);
    });
    drop(loaded);
    let (b_write, b_load) = btree_snapshot(&ks, &template, &snap);
    rows.push(Row {
        name: "snapshot write",
        skip: s_write,
        btree: b_write,
    });
    rows.push(Row {
        name: "snapshot load",
        skip: s_load,
        btree: b_load,
    });

    println!("kv bench: {n} random {KEY_SIZE}-byte keys, {VALUE_SIZE}-byte values");
    println!(
        "{:<20} {:>14} {:>14} {:>10}   (ratio = BTreeMap ops/s / skiplist ops/s; < 1 is better)",
        "operation", "skiplist op/s", "BTreeMap op/s", "ratio"
    );
    for r in &rows {
        println!(
            "{:<20} {:>14.0} {:>14.0} {:>10.2}",
            r.name,
            n as f64 / r.skip,
            n as f64 / r.btree,
            r.skip / r.btree
        );
    }
    println!(
        "{:<20} {:>14.0}   (KvStore::apply of encoded SET entries)",
        "apply SET",
        n as f64 / apply
    );
    println!(
        "KvStore memory beyond key+value bytes per entry (skiplist + SCAN index): {:.1} B",
        (kv_mem as f64 - data_bytes as f64) / n as f64
    );
    println!(
        "memory beyond key+value bytes per entry: skiplist {:.1} B (own count: {:.1} B), BTreeMap {:.1} B",
        (s_mem as f64 - data_bytes as f64) / n as f64,
        s_self as f64 / n as f64,
        (b_mem as f64 - data_bytes as f64) / n as f64
    );
    println!(
        "after compact() ({:.0} ms): skiplist {:.1} B/entry beyond key+value",
        s_compact * 1e3,
        (s_mem_compact as f64 - data_bytes as f64) / n as f64
    );
    println!(
        "snapshot size: {} bytes ({:.1} B/entry)",
        snap.len(),
        snap.len() as f64 / n as f64
    );
}

/// Random inserts and gets of compare.py-shaped keys (`k` + 15 digits, 0..n), skiplist vs
/// BTreeMap, in one run.
fn shared_prefix_rows(n: usize) {
    let ks: Vec<Vec<u8>> = (0..n).map(|i| format!("k{i:015}").into_bytes()).collect();
    let mut p = Prng::new(5);
    let shuffled = |p: &mut Prng| {
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, p.range(0, i as u64 + 1) as usize);
        }
        order
    };
    let (ins, look) = (shuffled(&mut p), shuffled(&mut p));
    let mut template = [0u8; VALUE_SIZE];
    p.fill(&mut template);
    let mut list = SkipList::new(42);
    let s_insert = time(|| {
        for &i in &ins {
            list.insert(&ks[i], &value_for(i, &template));
        }
    });
    let s_get = time(|| {
        for &i in &look {
            black_box(list.get(&ks[i]));
        }
    });
    drop(list);
    let mut map: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let b_insert = time(|| {
        for &i in &ins {
            map.insert(ks[i].clone(), value_for(i, &template).to_vec());
        }
    });
    let b_get = time(|| {
        for &i in &look {
            black_box(map.get(&ks[i]));
        }
    });
    let b_overwrite = time(|| {
        for &i in &look {
            map.insert(ks[i].clone(), value_for(i ^ 1, &template).to_vec());
        }
    });
    drop(map);
    // The store (what a node runs): SETs applied as encoded entries, found through the SCAN
    // index's point lookup rather than the skiplist's search ("Point lookups" in store.rs).
    let set = |i: usize, v: usize| -> Vec<u8> {
        let args = vec![
            b"SET".to_vec(),
            ks[i].clone(),
            value_for(v, &template).to_vec(),
        ];
        match KvStore::new(0).parse(&args) {
            Some(Request::Write(e)) => e,
            other => panic!("{other:?}"),
        }
    };
    let (fresh, again): (Vec<_>, Vec<_>) = (
        ins.iter().map(|&i| set(i, i)).collect(),
        look.iter().map(|&i| set(i, i ^ 1)).collect(),
    );
    let mut kv = KvStore::new(42);
    let k_insert = time(|| {
        for (at, e) in fresh.iter().enumerate() {
            black_box(kv.apply(LogIndex(at as u64 + 1), e));
        }
    });
    let k_overwrite = time(|| {
        for (at, e) in again.iter().enumerate() {
            black_box(kv.apply(LogIndex((n + at) as u64 + 1), e));
        }
    });
    let k_get = time(|| {
        for &i in &look {
            black_box(kv.get(&ks[i]));
        }
    });
    // The same overwrites again while a forked child shares the store's memory, as a snapshot
    // child does: each first store into a shared page takes a copy-on-write fault.
    let (cow_faults, cow_secs) = overwrites_beside_a_child(|| {
        for (at, e) in fresh.iter().enumerate() {
            black_box(kv.apply(LogIndex((2 * n + at) as u64 + 1), e));
        }
    });
    drop(kv);
    println!("kv bench: {n} compare.py-shaped keys (k + 15 digits), {VALUE_SIZE}-byte values, random order");
    println!(
        "{:<20} {:>14} {:>14} {:>10}",
        "operation", "skiplist op/s", "BTreeMap op/s", "ratio"
    );
    for (name, s, b) in [
        ("insert", s_insert, b_insert),
        ("get (hit)", s_get, b_get),
        ("store SET new key", k_insert, b_insert),
        ("store SET overwrite", k_overwrite, b_overwrite),
        ("store get (hit)", k_get, b_get),
    ] {
        println!(
            "{:<20} {:>14.0} {:>14.0} {:>10.2}",
            name,
            n as f64 / s,
            n as f64 / b,
            s / b
        );
    }
    println!(
        "store SET overwrite beside a forked child (copy-on-write): {:.0} op/s, {:.3} page \
         faults per overwrite",
        n as f64 / cow_secs,
        cow_faults as f64 / n as f64
    );
}

/// Runs `f` while a forked child (which only waits to be killed) shares this process's memory,
/// and returns the minor page faults `f` took (its thread's) and its seconds. The child comes
/// from the daemon's own `fork_child`, so it dies with the bench if the bench dies first.
fn overwrites_beside_a_child(f: impl FnOnce()) -> (u64, f64) {
    let faults = || {
        // SAFETY: getrusage writes one rusage into the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        ru.ru_minflt as u64
    };
    let child = sys::fork_child(&[], || {
        std::thread::sleep(std::time::Duration::from_secs(600));
        0
    })
    .expect("fork");
    let before = faults();
    let secs = time(f);
    let taken = faults() - before;
    sys::kill(child, libc::SIGKILL).expect("kill the child");
    sys::wait_child(child, sys::Wait::Block).expect("reap the child");
    (taken, secs)
}

/// The snapshot format written from and read into a BTreeMap by hand, for comparison.
fn btree_snapshot(ks: &[[u8; KEY_SIZE]], template: &[u8; VALUE_SIZE], snap: &[u8]) -> (f64, f64) {
    let map: BTreeMap<Vec<u8>, Vec<u8>> = ks
        .iter()
        .enumerate()
        .map(|(i, k)| (k.to_vec(), value_for(i, template).to_vec()))
        .collect();
    let mut out = Vec::with_capacity(snap.len());
    let write = time(|| {
        let mut crc = 0u32;
        let mut put = |b: &[u8], out: &mut Vec<u8>| {
            crc = crc32c::crc32c_append(crc, b);
            out.extend_from_slice(b);
        };
        put(&[0u8; HEADER_SIZE], &mut out);
        for (k, v) in &map {
            put(&(k.len() as u32).to_be_bytes(), &mut out);
            put(&(v.len() as u32).to_be_bytes(), &mut out);
            put(&0u64.to_be_bytes(), &mut out);
            put(k, &mut out);
            put(v, &mut out);
        }
        out.extend_from_slice(&crc.to_be_bytes());
    });
    drop(map);
    let load = time(|| {
        let mut m = BTreeMap::new();
        let mut at = HEADER_SIZE;
        // The records end before the (empty) expiry and session sections' two counts.
        let end = snap.len() - TRAILER_SIZE - 16;
        while at < end {
            let kl = u32::from_be_bytes(snap[at..at + 4].try_into().unwrap()) as usize;
            let vl = u32::from_be_bytes(snap[at + 4..at + 8].try_into().unwrap()) as usize;
            at += RECORD_HEADER_SIZE;
            m.insert(
                snap[at..at + kl].to_vec(),
                snap[at + kl..at + kl + vl].to_vec(),
            );
            at += kl + vl;
        }
        black_box(crc32c::crc32c(&snap[..end]));
        black_box(m.len());
    });
    (write, load)
}
