//! Throughput of the peer codec and the timing wheel. `cargo bench --bench wire` prints a
//! table; nothing here asserts a time.
use std::hint::black_box;
use std::time::Instant;

use kvraft::raft::message::{Message, MessageBody};
use kvraft::raft::types::{Entry, EntryId, EntryKind, LogIndex, NodeId, Term};
use kvraft::timer::TimerWheel;
use kvraft::wire::{decode, encode, Frame};

fn append(entries: u64, size: usize) -> Frame {
    Frame::Raft(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body: MessageBody::Append {
            prev: EntryId::new(Term(3), LogIndex(100)),
            entries: (0..entries)
                .map(|i| Entry {
                    term: Term(3),
                    index: LogIndex(101 + i),
                    kind: EntryKind::Command,
                    data: vec![i as u8; size].into(),
                })
                .collect(),
            commit: LogIndex(100),
        },
    })
}

fn codec_row(name: &str, f: &Frame, iters: u32) {
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..iters {
        out.clear();
        encode(black_box(f), &mut out).expect("within the limits");
    }
    let enc = t.elapsed() / iters;
    let t = Instant::now();
    for _ in 0..iters {
        black_box(decode(black_box(&out)).expect("valid"));
    }
    let dec = t.elapsed() / iters;
    let mbps = |d: std::time::Duration| out.len() as f64 / d.as_secs_f64() / 1e6;
    println!(
        "{name:<28} {:>9} B  encode {enc:>10.2?} ({:>7.0} MB/s)  decode {dec:>10.2?} ({:>7.0} MB/s)",
        out.len(),
        mbps(enc),
        mbps(dec)
    );
}

fn wheel_row() {
    const N: u64 = 60_000;
    let mut w = TimerWheel::new(0);
    let mut fired = Vec::new();
    let t = Instant::now();
    let handles: Vec<_> = (0..N)
        .map(|i| w.schedule(1 + (i * 7919) % 5000, i).unwrap())
        .collect();
    let sched = t.elapsed() / N as u32;
    let t = Instant::now();
    for h in handles.iter().step_by(2) {
        assert!(w.cancel(*h));
    }
    let cancel = t.elapsed() / (N / 2) as u32;
    let t = Instant::now();
    let next = w.next_deadline();
    let nd = t.elapsed();
    let t = Instant::now();
    for now in 1..=5000 {
        w.advance(now, &mut fired);
    }
    let adv = t.elapsed() / 5000;
    let t = Instant::now();
    w.schedule(1 << 40, 0).unwrap();
    w.advance(1 << 41, &mut fired);
    let jump = t.elapsed();
    println!(
        "wheel: schedule {sched:.2?}/op, cancel {cancel:.2?}/op, next_deadline {nd:.2?} ({next:?}), \
         advance by 1 tick {adv:.2?} ({} fired), jump of 2^41 ticks {jump:.2?}",
        fired.len()
    );
}

fn main() {
    codec_row(
        "heartbeat",
        &Frame::Raft(Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::Heartbeat {
                commit: LogIndex(9),
                read_seq: 4,
            },
        }),
        200_000,
    );
    codec_row("append 64 x 128 B", &append(64, 128), 20_000);
    codec_row("append 4096 x 16 B", &append(4096, 16), 500);
    codec_row("append 1 x 1 MiB", &append(1, 1 << 20), 200);
    wheel_row();
}
