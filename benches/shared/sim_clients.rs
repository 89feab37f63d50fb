//! The simulated clients of `write_path.rs` and `read_path.rs`: one connection each, placed on
//! the leader or (`BENCH_PLACE=spread`) round-robin on the three nodes as `compare.py` places
//! real ones, with a random key generator, and the numeric settings read from the
//! environment. Included with `#[path]` beside `counting.rs`; the including bench declares
//! `mod support` (tests/support) at its root.

use std::io::Read;

use kvraft::client::{resp, Value};
use kvraft::prng::Prng;

use crate::support::sim_net::SimStream;
use crate::support::story::Story;

pub struct Client {
    pub stream: SimStream,
    inbuf: Vec<u8>,
    pub rng: Prng,
}

impl Client {
    /// Replies that arrived; each is handed to `check` (which asserts what it must be).
    pub fn replies(&mut self, check: impl Fn(&Value)) -> usize {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = self.stream.read(&mut buf) {
            self.inbuf.extend_from_slice(&buf[..n]);
        }
        let mut got = 0;
        while let Some((v, n)) = resp::parse_value(&self.inbuf).expect("a well-formed reply") {
            check(&v);
            self.inbuf.drain(..n);
            got += 1;
        }
        got
    }
}

/// Whether the clients are spread over the nodes (`BENCH_PLACE=spread`), not all on the leader.
pub fn spread() -> bool {
    std::env::var("BENCH_PLACE").is_ok_and(|p| p == "spread")
}

/// `clients` connections, on the leader or spread over the nodes (`spread`).
pub fn connect(story: &mut Story, clients: usize) -> Vec<Client> {
    let spread = spread();
    let leader = story.leader();
    let ids: Vec<u64> = story.nodes.keys().copied().collect();
    (0..clients)
        .map(|i| {
            let at = if spread { ids[i % ids.len()] } else { leader };
            Client {
                stream: story.connect(at),
                inbuf: Vec::new(),
                rng: Prng::new(i as u64 + 1),
            }
        })
        .collect()
}

/// A numeric setting from the environment, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
