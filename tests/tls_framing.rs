//! The `tls` fuzz target's checks (`fuzz/fuzz_targets/tls_common.rs`) on seeded inputs, so
//! `make test` runs them without cargo-fuzz: garbage as ciphertext into the daemon's server
//! sessions, and bytes through an established session (whole, and with a flipped ciphertext
//! byte) into the RESP and peer decoders. A failure prints the seed.

#[path = "../fuzz/fuzz_targets/tls_common.rs"]
mod tls_common;

use kvraft::client::resp::encode_command;
use kvraft::prng::Prng;

#[test]
fn tls_framing_never_panics_and_hands_over_exactly_what_was_sent() {
    let mut inputs: Vec<Vec<u8>> = vec![Vec::new(), vec![0x16, 0x03, 0x01, 0x00, 0x05]];
    let mut pipeline = Vec::new();
    for i in 0..200 {
        encode_command(
            &[b"SET", format!("key{i}").as_bytes(), &[b'v'; 300]],
            &mut pipeline,
        );
    }
    inputs.push(pipeline);
    for seed in 0..300u64 {
        let mut prng = Prng::new(seed);
        let len = match seed % 4 {
            0 => prng.range(0, 64),
            1 => prng.range(0, 4096),
            2 => prng.range(16_000, 17_000),
            _ => prng.range(0, 100_000),
        } as usize;
        let mut data = vec![0u8; len];
        for b in data.iter_mut() {
            *b = prng.next_u64() as u8;
        }
        if seed % 5 == 0 && len > 0 {
            data[0] = 0x16; // looks like a handshake record
        }
        inputs.push(data);
    }
    for (i, data) in inputs.iter().enumerate() {
        let result = std::panic::catch_unwind(|| tls_common::run(data));
        assert!(result.is_ok(), "input {i} ({} bytes) failed", data.len());
    }
}
