//! kvraft: a Raft-replicated key-value store.
//!
//! # Layout
//!
//! | module     | owns                                                                  | must not |
//! |------------|-----------------------------------------------------------------------|----------|
//! | [`raft`]   | the consensus protocol as a pure state machine: `step`/`tick`/`propose` → `Ready` | touch a socket, a file, the clock or a global RNG |
//! | [`wire`]   | the peer frame codec (length-prefixed, byteorder, big-endian)         | allocate before checking a length |
//! | [`timer`]  | the hashed timing wheel                                               | read the clock |
//! | [`wal`]    | the mmap-backed segmented Raft log and the hard state (the design's `log/`, renamed so it never shadows the `log` crate) | know about Raft roles |
//! | [`kv`]     | the skiplist state machine, its commands and snapshots                | know about Raft |
//! | [`client`] | RESP2 parsing and encoding; `client::blocking`, the one blocking client for kvctl, tests and benches | block (except `client::blocking`, which the node never uses) |
//! | [`node`]   | the only place effects happen: Poll, sockets, the clock, fork, fsync  | hold protocol logic |
//! | [`payload`] | log entry bytes, in blocks mapped outside the heap (unsafe inside, behind its invariants) | know what the bytes mean |
//! | [`config`] | the cluster config file, parsed by hand and validated                 | |
//! | [`limits`] | every limit, with the relations between them asserted                 | |
//!
//! Only `node` ties the others together; `wire` reads `raft`'s message types.
#![deny(unsafe_code)]

pub mod auth;
pub mod client;
pub mod config;
pub mod http;
pub mod kv;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod payload;
pub mod prng;
pub mod raft;
pub mod timer;
pub mod wal;
pub mod wire;
