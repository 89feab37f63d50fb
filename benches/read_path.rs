//! The read path's cost per linearizable GET, in measures that do not depend on the machine's
//! load: heap allocations (a counting global allocator) and, under callgrind, instructions.
//!
//! Three real nodes (`Node<KvStore, SimDisk, SimNet>`: the daemon's own node code, on the
//! simulator's in-memory disk and network with no faults; `tests/support/story.rs`) and
//! `BENCH_CLIENTS` closed-loop clients, each with one `GET` in flight over 1,000 keys that a
//! warm-up of `SET`s of 256 bytes filled. `BENCH_PLACE=leader` (default) puts every client on
//! the leader; `spread` puts them round-robin on the three nodes, as compare.py's load
//! generator does (a follower forwards its GETs). After the warm-up, `BENCH_READS` GETs are
//! measured; every allocation made during a node's turn is charged to that node, and the
//! leader's ReadIndex rounds are counted.
//!
//!     cargo bench --bench read_path
//!     BENCH_CLIENTS=64 BENCH_READS=20000 BENCH_PLACE=spread cargo bench --bench read_path
//!
//! Where the allocations are: `BENCH_ALLOC_SITES=N` samples every Nth one, as in
//! `write_path.rs` (the allocator is `shared/counting.rs`).
//!
//! Instructions per GET: `tools/profile.sh cpu-get` (callgrind, user space only, collecting
//! only in the measured turns).

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

const KEYSPACE: u64 = 1_000;
const VALUE_SIZE: usize = 256;

#[inline(never)]
fn measured_turn_leader(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

#[inline(never)]
fn measured_turn_follower(node: &mut SimNode, now: Instant, ready: &[(usize, bool)]) {
    node.turn(now, ready).expect("no node stops");
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Fill,
    Read,
}

impl Client {
    fn send(&mut self, story: &mut Story, phase: Phase) {
        let key = format!("key-{:012}", self.rng.range(0, KEYSPACE));
        match phase {
            Phase::Fill => story.send(
                &mut self.stream,
                &[b"SET", key.as_bytes(), &[b'x'; VALUE_SIZE]],
            ),
            Phase::Read => story.send(&mut self.stream, &[b"GET", key.as_bytes()]),
        }
    }
}

fn main() {
    let clients = env("BENCH_CLIENTS", 64) as usize;
    let reads = env("BENCH_READS", 20_000);
    let fill = env("BENCH_FILL", 5_000);
    let spread = sim_clients::spread();
    let mut story = Story::new(3);
    let leader = story.leader();
    let ids: Vec<u64> = story.nodes.keys().copied().collect();
    let mut cs = sim_clients::connect(&mut story, clients);
    let mut phase = Phase::Fill;
    for c in &mut cs {
        c.send(&mut story, phase);
    }
    let (mut answered, mut measured) = (0u64, 0u64);
    let mut rounds0 = 0;
    let follower = ids.iter().copied().find(|&i| i != leader).unwrap();
    loop {
        let measuring = phase == Phase::Read && answered >= fill + clients as u64;
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
            for _ in 0..c.replies(|v| assert!(!matches!(v, Value::Error(_)), "answered {v:?}")) {
                answered += 1;
                if measuring {
                    measured += 1;
                }
                if phase == Phase::Fill && answered >= fill {
                    phase = Phase::Read;
                }
                c.send(&mut story, phase);
            }
        }
        let now_measuring = phase == Phase::Read && answered >= fill + clients as u64;
        if now_measuring && !measuring {
            // Every client's SET is answered and a GET of each was answered: reads only now.
            rounds0 = story.nodes[&leader].raft().read_rounds();
            counting::start(env("BENCH_ALLOC_SITES", 0));
        }
        if measured >= reads {
            break;
        }
    }
    let n = measured as f64;
    let rounds = story.nodes[&leader].raft().read_rounds() - rounds0;
    println!(
        "read path: 3 real nodes on the simulated disk and network, {clients} clients ({}), \
         {measured} GETs measured, {rounds} read rounds on the leader ({:.1} GETs per round)",
        if spread { "spread" } else { "leader" },
        n / rounds.max(1) as f64
    );
    counting::report("GET", n);
}
