//! RESP2 parsing throughput: `cargo bench --bench resp`. Prints a table; asserts nothing.

use std::hint::black_box;
use std::time::Instant;

use kvraft::client::{encode_command, parse_command, parse_value, Value};

fn main() {
    println!("{:<36} {:>12} {:>10}", "case", "ops/s", "MB/s");
    for (name, value_size) in [
        ("SET k v (16 B value)", 16),
        ("SET k v (4 KiB value)", 4096),
    ] {
        let mut buf = Vec::new();
        let value = vec![b'x'; value_size];
        let commands = 100_000;
        for i in 0..commands {
            let key = format!("key:{i:08}");
            encode_command(&[b"SET", key.as_bytes(), &value], &mut buf);
        }
        let start = Instant::now();
        let mut pos = 0;
        let mut parsed = 0;
        while let Ok(Some((args, n))) = parse_command(&buf[pos..]) {
            black_box(args);
            pos += n;
            parsed += 1;
        }
        assert_eq!(parsed, commands);
        report(&format!("parse_command {name}"), commands, buf.len(), start);
    }
    let reply = Value::Array(
        (0..1000)
            .map(|i| Value::Bulk(format!("value-{i}").into_bytes()))
            .collect(),
    )
    .to_bytes();
    let rounds = 2000;
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(parse_value(black_box(&reply)).ok());
    }
    report(
        "parse_value 1000-element array",
        rounds,
        reply.len() * rounds,
        start,
    );
}

fn report(name: &str, ops: usize, bytes: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<36} {:>12.0} {:>10.1}",
        name,
        ops as f64 / secs,
        bytes as f64 / secs / 1e6
    );
}
