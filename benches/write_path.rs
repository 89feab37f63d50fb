//! The write path's cost per committed write, in measures that do not depend on the machine's
//! load: heap allocations (a counting global allocator) and, under callgrind, instructions.
//!
//! Three real nodes (`Node<KvStore, SimDisk, SimNet>`: the daemon's own node code, on the
//! simulator's in-memory disk and network with no faults; `tests/support/story.rs`) and
//! `BENCH_CLIENTS` closed-loop clients on the leader, each with one `SET` of a 256-byte value
//! over 100k keys in flight. After a warm-up, `BENCH_WRITES` writes are measured; every
//! allocation made during a node's turn is charged to that node.
//!
//!     cargo bench --bench write_path
//!     BENCH_CLIENTS=64 BENCH_WRITES=20000 cargo bench --bench write_path
//!
//! Instructions per write (user space; the simulated disk and network stand in for the
//! kernel's work): run the binary under callgrind, collecting only in the measured turns,
//! and divide each function's inclusive count by the writes printed:
//!
//!     valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_turn*' \
//!         target/release/deps/write_path-<hash>
//!     callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep measured_turn
//!
//! Where the allocations are: `BENCH_ALLOC_SITES=N` captures a backtrace of every Nth
//! allocation charged to a node and prints, per node, the call sites that made them (the
//! innermost frames of this crate), with their estimated count per write.
//!
//!     BENCH_ALLOC_SITES=7 cargo bench --bench write_path

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

#[path = "../tests/support/mod.rs"]
mod support;

use kvraft::client::{resp, Value};
use kvraft::prng::Prng;
use support::sim_net::SimStream;
use support::story::{SimNode, Story};

const KEYSPACE: u64 = 100_000;
const VALUE_SIZE: usize = 256;

/// Who the running code is charged to: 0 the harness, 1 the leader, 2 a follower.
static CHARGED: AtomicUsize = AtomicUsize::new(0);
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
/// innermost three frames of this crate (or the test support) below the allocator.
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
                    l.contains(": ")
                        && (l.contains("kvraft::") || l.contains("write_path::support"))
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

#[inline(never)]
fn measured_turn_leader(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

#[inline(never)]
fn measured_turn_follower(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

struct Client {
    stream: SimStream,
    inbuf: Vec<u8>,
    rng: Prng,
}

impl Client {
    fn send_set(&mut self, story: &mut Story) {
        let key = format!("key-{:012}", self.rng.range(0, KEYSPACE));
        let value = [b'x'; VALUE_SIZE];
        story.send(&mut self.stream, &[b"SET", key.as_bytes(), &value]);
    }

    /// Replies that arrived (each must be +OK).
    fn replies(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.stream.read(&mut buf) {
            self.inbuf.extend_from_slice(&buf[..n]);
        }
        let mut got = 0;
        while let Some((v, n)) = resp::parse_value(&self.inbuf).expect("a well-formed reply") {
            assert_eq!(v, Value::ok(), "SET answered {v:?}");
            self.inbuf.drain(..n);
            got += 1;
        }
        got
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients = env("BENCH_CLIENTS", 64) as usize;
    let writes = env("BENCH_WRITES", 20_000);
    let warmup = env("BENCH_WARMUP", 5_000);
    let mut story = Story::new(3);
    let leader = story.leader();
    let mut cs: Vec<Client> = (0..clients)
        .map(|i| Client {
            stream: story.connect(leader),
            inbuf: Vec::new(),
            rng: Prng::new(i as u64 + 1),
        })
        .collect();
    for c in &mut cs {
        c.send_set(&mut story);
    }
    let mut measuring = false;
    let (mut answered, mut applied0) = (0u64, 0u64);
    let follower = story.nodes.keys().copied().find(|&i| i != leader).unwrap();
    loop {
        story.step_with(|id, node, now, ready| {
            if !measuring {
                node.turn(now, ready).expect("no node stops");
            } else if id == leader {
                CHARGED.store(1, Ordering::Relaxed);
                measured_turn_leader(node, now, ready);
                CHARGED.store(0, Ordering::Relaxed);
            } else if id == follower {
                CHARGED.store(2, Ordering::Relaxed);
                measured_turn_follower(node, now, ready);
                CHARGED.store(0, Ordering::Relaxed);
            } else {
                node.turn(now, ready).expect("no node stops");
            }
        });
        for c in &mut cs {
            for _ in 0..c.replies() {
                answered += 1;
                c.send_set(&mut story);
            }
        }
        if !measuring && answered >= warmup {
            measuring = true;
            SAMPLE_EVERY.store(env("BENCH_ALLOC_SITES", 0), Ordering::Relaxed);
            applied0 = story.nodes[&leader].applied().0;
            for i in 0..3 {
                ALLOCS[i].store(0, Ordering::Relaxed);
                BYTES[i].store(0, Ordering::Relaxed);
            }
        }
        if measuring && story.nodes[&leader].applied().0 - applied0 >= writes {
            break;
        }
    }
    let n = (story.nodes[&leader].applied().0 - applied0) as f64;
    println!(
        "write path: 3 real nodes on the simulated disk and network, {clients} clients on the \
         leader, {n} SETs of {VALUE_SIZE} B measured"
    );
    for (i, who) in [(1, "leader"), (2, "follower")] {
        println!(
            "{who:<8} {:>6.2} allocations per write ({:.0} bytes)",
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
