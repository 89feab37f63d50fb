//! Concurrent clients on a few keys, through every node, while the leader is killed and
//! nodes are paused; the recorded history is checked for linearizability.
//!
//! The checker: each key is a register and every written value is unique, so each read names
//! the write it saw. Group each write with its reads (a "cluster"). For a cluster, let `f` be
//! the earliest response and `s` the latest invocation among its operations: the zone is
//! forward (`f < s`, the operations must be linearized across `[f, s]`) or backward. The
//! history is linearizable iff no two forward zones overlap and no backward zone lies inside a
//! forward zone, and no read ends before its write began (Gibbons & Korach, "Testing shared
//! memories", 1997; the zone form is Golab, Li & Shah's). A write whose outcome is unknown (an
//! error or a lost connection) may have happened at any time after it began: its response is
//! infinitely late; if nobody read it, it is left out.

mod harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{serial, wait_for, Cluster, Options};
use kvraft::client::Value;
use kvraft::prng::Prng;

const LONG: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
enum Kind {
    /// Wrote this value (unique per history).
    Write(String),
    /// Read this value (`None`: the key was absent).
    Read(Option<String>),
}

#[derive(Clone, Debug)]
struct Op {
    key: String,
    kind: Kind,
    invoke: u64,
    /// `u64::MAX` when the outcome is unknown.
    response: u64,
}

/// Check one register's history; `Err` describes a violation.
fn check_register(ops: &[Op]) -> Result<(), String> {
    // Clusters by the value written; `None` is the initial (absent) value, written at time 0.
    let mut clusters: HashMap<Option<String>, (u64, u64, usize)> = HashMap::new(); // (f, s, reads)
    let mut write_invoke: HashMap<Option<String>, u64> = HashMap::new();
    write_invoke.insert(None, 0);
    clusters.insert(None, (0, 0, 0));
    for op in ops {
        if let Kind::Write(v) = &op.kind {
            let prev = write_invoke.insert(Some(v.clone()), op.invoke);
            assert!(
                prev.is_none(),
                "value {v} written twice: the test must write unique values"
            );
            clusters.insert(Some(v.clone()), (op.response, op.invoke, 0));
        }
    }
    for op in ops {
        if let Kind::Read(v) = &op.kind {
            let Some(&w_invoke) = write_invoke.get(v) else {
                return Err(format!("read of {v:?} that no write produced: {op:?}"));
            };
            if op.response < w_invoke {
                return Err(format!(
                    "read {op:?} ended before its write began at {w_invoke}"
                ));
            }
            let c = clusters.get_mut(v).expect("cluster exists");
            c.0 = c.0.min(op.response);
            c.1 = c.1.max(op.invoke);
            c.2 += 1;
        }
    }
    let mut forward = Vec::new();
    let mut backward = Vec::new();
    for (v, (f, s, reads)) in &clusters {
        if *f == u64::MAX && *reads == 0 {
            continue; // an unknown write nobody saw may never have happened
        }
        if f < s {
            forward.push((*f, *s, v.clone()));
        } else {
            backward.push((*s, *f, v.clone()));
        }
    }
    forward.sort();
    for w in forward.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!("forward zones overlap: {:?} and {:?}", w[0], w[1]));
        }
    }
    for b in &backward {
        for fz in &forward {
            if fz.0 < b.0 && b.1 < fz.1 {
                return Err(format!(
                    "backward zone {b:?} lies inside forward zone {fz:?}"
                ));
            }
        }
    }
    Ok(())
}

fn check_history(ops: &[Op]) -> Result<(), String> {
    let mut by_key: HashMap<&str, Vec<Op>> = HashMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        check_register(&ops).map_err(|e| format!("key {key}: {e}"))?;
    }
    Ok(())
}

#[test]
fn the_checker_rejects_a_stale_read_and_accepts_a_concurrent_one() {
    let w = |v: &str, i, r| Op {
        key: "k".into(),
        kind: Kind::Write(v.into()),
        invoke: i,
        response: r,
    };
    let rd = |v: Option<&str>, i, r| Op {
        key: "k".into(),
        kind: Kind::Read(v.map(String::from)),
        invoke: i,
        response: r,
    };
    // a written, then b written, then a read of a: stale.
    let stale = vec![w("a", 1, 2), w("b", 3, 4), rd(Some("a"), 5, 6)];
    assert!(check_history(&stale).is_err());
    // a read overlapping the write of b may see a or b.
    assert!(check_history(&[w("a", 1, 2), w("b", 3, 6), rd(Some("a"), 4, 5)]).is_ok());
    assert!(check_history(&[w("a", 1, 2), w("b", 3, 6), rd(Some("b"), 4, 5)]).is_ok());
    // reading b, then later reading a again (a's write long done): not linearizable.
    assert!(check_history(&[
        w("a", 1, 2),
        w("b", 3, 10),
        rd(Some("b"), 4, 5),
        rd(Some("a"), 6, 7)
    ])
    .is_err());
    // reading the initial value after a write completed: stale.
    assert!(check_history(&[w("a", 1, 2), rd(None, 3, 4)]).is_err());
    // an unknown write that is read later is fine; one never read is ignored.
    assert!(check_history(&[w("a", 1, u64::MAX), rd(Some("a"), 5, 6)]).is_ok());
    assert!(check_history(&[w("a", 1, u64::MAX), rd(None, 5, 6)]).is_ok());
    // a read of a value never written.
    assert!(check_history(&[rd(Some("zz"), 1, 2)]).is_err());
}

#[test]
fn concurrent_reads_and_writes_through_every_node_stay_linearizable_across_leader_kills() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    c.wait_leader(LONG);
    let start = Instant::now();
    let now = move || start.elapsed().as_micros() as u64 + 1;
    let history = Arc::new(Mutex::new(Vec::<Op>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<_> = c.nodes.iter().map(|n| n.client).collect();
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let (history, stop, addrs) = (history.clone(), stop.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut rng = Prng::new(t + 100);
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let addr = addrs[rng.range(0, addrs.len() as u64) as usize];
                    let Ok(mut cl) = harness::connect(addr) else {
                        // That node is down (the nemesis): pace the retries, pick another.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    for _ in 0..20 {
                        let key = format!("reg{}", rng.range(0, 3));
                        let op = if rng.chance(1, 2) {
                            seq += 1;
                            let v = format!("w{t}-{seq}");
                            let invoke = now();
                            let r = cl.call_str(&["SET", &key, &v]);
                            let ok = matches!(&r, Ok(Value::Simple(s)) if s == "OK");
                            Op {
                                key,
                                kind: Kind::Write(v),
                                invoke,
                                response: if ok { now() } else { u64::MAX },
                            }
                        } else {
                            let invoke = now();
                            let value = match cl.call_str(&["GET", &key]) {
                                Ok(Value::Bulk(b)) => Some(String::from_utf8(b).unwrap()),
                                Ok(Value::Nil) => None,
                                _ => break, // a failed read has no effect; reconnect
                            };
                            Op {
                                key,
                                kind: Kind::Read(value),
                                invoke,
                                response: now(),
                            }
                        };
                        let failed = op.response == u64::MAX;
                        history.lock().unwrap().push(op);
                        if failed || stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // The nemesis: kill the leader, bring it back, pause a follower, resume it.
    for round in 0..3 {
        let before = history.lock().unwrap().len();
        wait_for(LONG, "progress", || {
            (history.lock().unwrap().len() >= before + 100).then_some(())
        });
        let leader = c.wait_leader(LONG);
        if round % 2 == 0 {
            c.kill(leader);
            wait_for(LONG, "a new leader", || c.leader().filter(|&l| l != leader));
            c.spawn(leader);
        } else {
            let f = (1..=3).find(|&i| i != leader).unwrap();
            c.signal(f, libc::SIGSTOP);
            let before = history.lock().unwrap().len();
            wait_for(LONG, "progress with a node paused", || {
                (history.lock().unwrap().len() >= before + 50).then_some(())
            });
            c.signal(f, libc::SIGCONT);
        }
    }
    let before = history.lock().unwrap().len();
    wait_for(LONG, "progress after healing", || {
        (history.lock().unwrap().len() >= before + 100).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let ops = history.lock().unwrap().clone();
    let reads = ops
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read(_)))
        .count();
    let unknown = ops.iter().filter(|o| o.response == u64::MAX).count();
    println!(
        "history: {} operations ({reads} reads, {unknown} writes of unknown outcome)",
        ops.len()
    );
    if let Err(e) = check_history(&ops) {
        panic!("not linearizable: {e}");
    }
}
