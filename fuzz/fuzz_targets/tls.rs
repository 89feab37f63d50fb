//! Fuzzes the TLS-wrapped framing (see `tls_common.rs`): arbitrary bytes as ciphertext into
//! the daemon's server sessions (client port and peer port), and as plaintext through an
//! established session into the RESP and peer decoders, whole and with a flipped ciphertext
//! byte. No input may panic, and TLS must hand over exactly what was sent, or less, never
//! altered bytes. `tests/tls_framing.rs` runs the same code on seeded inputs in `make test`.
#![no_main]

#[path = "tls_common.rs"]
mod tls_common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tls_common::run(data));
