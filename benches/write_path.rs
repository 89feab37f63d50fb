//! The write path's cost per committed write, in measures that do not depend on the machine's
//! load: heap allocations (a counting global allocator) and, under callgrind, instructions.
//!
//! Three real nodes (`Node<KvStore, SimDisk, SimNet>`: the daemon's own node code, on the
//! simulator's in-memory disk and network with no faults; `tests/support/story.rs`) and
//! `BENCH_CLIENTS` closed-loop clients, each with one `SET` of a 256-byte value over 100k keys
//! in flight: all on the leader (`BENCH_PLACE=leader`, the default), or round-robin over the
//! three nodes (`BENCH_PLACE=spread`, as compare.py places them: two thirds of the writes are
//! forwarded by a follower, and the follower measured is one of those). After a warm-up, `BENCH_WRITES` writes are measured; every
//! allocation made during a node's turn is charged to that node.
//!
//!     cargo bench --bench write_path
//!     BENCH_CLIENTS=64 BENCH_WRITES=20000 cargo bench --bench write_path
//!     BENCH_PLACE=spread cargo bench --bench write_path
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

use std::sync::atomic::Ordering;
use std::time::Instant;

#[path = "shared/counting.rs"]
mod counting;
#[path = "shared/sim_clients.rs"]
mod sim_clients;
#[path = "../tests/support/mod.rs"]
mod support;

use counting::CHARGED;
use sim_clients::{env, Client};

use kvraft::client::Value;
use support::story::{SimNode, Story};

const KEYSPACE: u64 = 100_000;
const VALUE_SIZE: usize = 256;

#[inline(never)]
fn measured_turn_leader(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

#[inline(never)]
fn measured_turn_follower(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

impl Client {
    fn send_set(&mut self, story: &mut Story) {
        let key = format!("key-{:012}", self.rng.range(0, KEYSPACE));
        let value = [b'x'; VALUE_SIZE];
        story.send(&mut self.stream, &[b"SET", key.as_bytes(), &value]);
    }
}

fn main() {
    let clients = env("BENCH_CLIENTS", 64) as usize;
    let writes = env("BENCH_WRITES", 20_000);
    let warmup = env("BENCH_WARMUP", 5_000);
    let spread = sim_clients::spread();
    let mut story = Story::new(3);
    let leader = story.leader();
    let mut cs = sim_clients::connect(&mut story, clients);
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
            for _ in 0..c.replies(|v| assert_eq!(*v, Value::ok(), "SET answered {v:?}")) {
                answered += 1;
                c.send_set(&mut story);
            }
        }
        if !measuring && answered >= warmup {
            measuring = true;
            applied0 = story.nodes[&leader].applied().0;
            counting::start(env("BENCH_ALLOC_SITES", 0));
        }
        if measuring && story.nodes[&leader].applied().0 - applied0 >= writes {
            break;
        }
    }
    let n = (story.nodes[&leader].applied().0 - applied0) as f64;
    println!(
        "write path: 3 real nodes on the simulated disk and network, {clients} clients on the \
         {}, {n} SETs of {VALUE_SIZE} B measured",
        if spread { "three nodes" } else { "leader" }
    );
    counting::report("write", n);
}
