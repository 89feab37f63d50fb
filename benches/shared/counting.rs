//! The benchmarks' counting global allocator: every allocation is charged to whoever
//! `CHARGED` names (0 the harness, 1 the leader, 2 a follower), and with `SAMPLE_EVERY` set,
//! every Nth charged allocation's backtrace is kept for `print_sites`. Included by
//! `write_path.rs` and `read_path.rs` with `#[path]` (a file under benches/shared/ is not a
//! bench target of its own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Who the running code is charged to: 0 the harness, 1 the leader, 2 a follower.
pub static CHARGED: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Sample every this many charged allocations (0: none), from `BENCH_ALLOC_SITES`.
static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Inside the sampler: its own allocations are neither counted nor sampled.
    static SAMPLING: Cell<bool> = const { Cell::new(false) };
    /// The sampled backtraces, per node charged (1 leader, 2 follower).
    static SAMPLES: RefCell<Vec<(usize, Backtrace)>> = const { RefCell::new(Vec::new()) };
}

fn count(size: usize) {
    if SAMPLING.with(|s| s.get()) {
        return;
    }
    let who = CHARGED.load(Ordering::Relaxed);
    let n = ALLOCS[who].fetch_add(1, Ordering::Relaxed);
    BYTES[who].fetch_add(size as u64, Ordering::Relaxed);
    let every = SAMPLE_EVERY.load(Ordering::Relaxed);
    if who != 0 && every > 0 && n.is_multiple_of(every) {
        SAMPLING.with(|s| s.set(true));
        let bt = Backtrace::force_capture();
        SAMPLES.with(|v| v.borrow_mut().push((who, bt)));
        SAMPLING.with(|s| s.set(false));
    }
}

/// Print the sampled allocation sites of `who`, most frequent first: each site is the
/// innermost three frames of the kvraft crate (or the test support) below the allocator.
fn print_sites(who: usize, name: &str, every: u64, writes: f64) {
    let mut sites: HashMap<String, u64> = HashMap::new();
    SAMPLES.with(|v| {
        for (w, bt) in v.borrow().iter().filter(|(w, _)| *w == who) {
            let _ = w;
            let text = bt.to_string();
            let frames: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.contains(": ") && (l.contains("kvraft::") || l.contains("::support::"))
                })
                .map(|l| l.split_once(": ").map_or(l, |(_, f)| f))
                .take(3)
                .collect();
            *sites.entry(frames.join(" <- ")).or_default() += 1;
        }
    });
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.1));
    println!("{name}: allocation sites (sampled 1 in {every})");
    for (site, n) in sites {
        println!("  {:>6.2}  {site}", (n * every) as f64 / writes);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Starts a measurement: every counter at zero, and backtraces sampled every `sample_every`
/// charged allocations (0: none).
pub fn start(sample_every: u64) {
    for i in 0..3 {
        ALLOCS[i].store(0, Ordering::Relaxed);
        BYTES[i].store(0, Ordering::Relaxed);
    }
    SAMPLE_EVERY.store(sample_every, Ordering::Relaxed);
}

/// Prints the leader's and a follower's allocations per `unit` over `n` of them, then the
/// sampled sites if sampling was on; sampling stops.
pub fn report(unit: &str, n: f64) {
    for (i, who) in [(1, "leader"), (2, "follower")] {
        println!(
            "{who:<8} {:>6.2} allocations per {unit} ({:.0} bytes)",
            ALLOCS[i].load(Ordering::Relaxed) as f64 / n,
            BYTES[i].load(Ordering::Relaxed) as f64 / n
        );
    }
    let every = SAMPLE_EVERY.swap(0, Ordering::Relaxed);
    if every > 0 {
        for (i, who) in [(1, "leader"), (2, "follower")] {
            print_sites(i, who, every, n);
        }
    }
}
