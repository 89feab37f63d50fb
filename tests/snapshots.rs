//! Real-process snapshot tests: fork()ed snapshots, log compaction, InstallSnapshot for a
//! follower that fell behind the log, and restart from snapshot + log.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{dir_size, parse_info, serial, wait_for, Cluster, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(30);

/// Small thresholds so that a few thousand writes take several snapshots.
fn snapshot_opts(entries: u64, keep: u64) -> Options {
    Options {
        nodes: 3,
        extra: vec![
            format!("snapshot_entries = {entries}"),
            format!("snapshot_keep_entries = {keep}"),
            "snapshot_chunk_bytes = 64KiB".into(),
            "segment_bytes = 6MiB".into(),
        ],
        ..Options::default()
    }
}

/// Write `keys` with values `val-<i>` through `via`, pipelining `batch` commands at a time;
/// every reply must be OK.
fn pipelined_sets(c: &Cluster, via: u64, keys: std::ops::Range<u64>, batch: usize) {
    pipelined_sets_of(c, via, keys, batch, |i| format!("val-{i}").into_bytes());
}

/// `pipelined_sets` with the value `value(i)` for key `i`.
fn pipelined_sets_of(
    c: &Cluster,
    via: u64,
    keys: std::ops::Range<u64>,
    batch: usize,
    value: impl Fn(u64) -> Vec<u8>,
) {
    let mut cl = wait_for(LONG, "a client connection", || c.client(via).ok());
    let keys: Vec<u64> = keys.collect();
    for chunk in keys.chunks(batch) {
        for &i in chunk {
            cl.send(&[b"SET", format!("key-{i:06}").as_bytes(), &value(i)])
                .unwrap();
        }
        for &i in chunk {
            let r = cl.read_reply().unwrap();
            assert_eq!(r, Value::ok(), "SET key-{i:06}");
        }
    }
}

fn info(c: &Cluster, id: u64) -> HashMap<String, String> {
    wait_for(LONG, &format!("INFO from node {id}"), || c.info(id))
}

fn num(i: &HashMap<String, String>, k: &str) -> u64 {
    i.get(k)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO has no numeric {k}: {i:?}"))
}

/// Wait until every node in `ids` applied what the leader applied, then compare state hashes.
fn converged(c: &Cluster, ids: &[u64]) -> String {
    let leader = c.wait_leader(LONG);
    let target = num(&info(c, leader), "applied_index");
    c.wait_applied(ids, target, LONG);
    wait_for(LONG, "state hashes to agree", || {
        let hashes: Vec<String> = ids
            .iter()
            .map(|&id| info(c, id)["state_hash"].clone())
            .collect();
        hashes
            .iter()
            .all(|h| *h == hashes[0])
            .then(|| hashes[0].clone())
    })
}

/// Kill -9 node `id` and start it again: it must come back to the state it had (from its
/// snapshot and log), the same as the others'.
fn restart_and_compare(c: &mut Cluster, id: u64) {
    let before = converged(c, &[1, 2, 3]);
    c.kill(id);
    c.spawn(id);
    assert_eq!(
        converged(c, &[1, 2, 3]),
        before,
        "the state after the restart differs"
    );
}

fn children_of(pid: u32) -> usize {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

#[test]
fn a_follower_stopped_while_writes_go_by_catches_up_through_install_snapshot_and_holds_every_key() {
    let _g = serial();
    let mut c = Cluster::start(snapshot_opts(2000, 500));
    let leader = c.wait_leader(LONG);
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(lagger);
    let n = 50_000;
    pipelined_sets(&c, leader, 0..n, 500);
    // Snapshots finish in the background (one at a time per node, at staggered points).
    wait_for(
        LONG,
        "the leader to take two snapshots and compact its log",
        || {
            let li = info(&c, leader);
            (num(&li, "snapshots_taken") >= 2 && num(&li, "first_log_index") > 1).then_some(())
        },
    );
    c.spawn(lagger);
    converged(&c, &[1, 2, 3]);
    let fi = info(&c, lagger);
    assert!(
        num(&fi, "snapshots_installed") >= 1,
        "the follower caught up without InstallSnapshot: {fi:?}"
    );
    assert_eq!(
        num(&fi, "keys"),
        n,
        "the follower holds a different number of keys"
    );
    // Reads through the follower (forwarded, linearizable) see every key.
    let mut cl = c.client(lagger).unwrap();
    for i in (0..n).step_by(997) {
        let v = cl.call_str(&["GET", &format!("key-{i:06}")]).unwrap();
        assert_eq!(v, Value::Bulk(format!("val-{i}").into_bytes()));
    }
}

#[test]
fn a_cluster_restarts_from_snapshot_and_log_with_every_key() {
    let _g = serial();
    let mut c = Cluster::start(snapshot_opts(1000, 100));
    let leader = c.wait_leader(LONG);
    pipelined_sets(&c, leader, 0..3000, 200);
    // An explicit snapshot on every node, then more writes that live only in the log.
    for id in 1..=3 {
        let mut cl = c.client(id).unwrap();
        assert!(!cl.call_str(&["SNAPSHOT"]).unwrap().is_error());
    }
    wait_for(LONG, "snapshots on every node", || {
        (1..=3)
            .all(|id| num(&info(&c, id), "snapshot_index") > 0)
            .then_some(())
    });
    pipelined_sets(&c, leader, 3000..3500, 100);
    let before = converged(&c, &[1, 2, 3]);
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    let after = converged(&c, &[1, 2, 3]);
    assert_eq!(before, after, "the state after a full restart differs");
    let leader = c.wait_leader(LONG);
    let mut cl = c.client(leader).unwrap();
    for i in [0u64, 1500, 2999, 3000, 3499] {
        let v = cl.call_str(&["GET", &format!("key-{i:06}")]).unwrap();
        assert_eq!(
            v,
            Value::Bulk(format!("val-{i}").into_bytes()),
            "key-{i:06} after restart"
        );
    }
    let li = parse_info(&cl.call_str(&["INFO", "persistence"]).unwrap());
    assert!(num(&li, "snapshot_index") > 0);
}

#[test]
fn the_log_directory_stays_bounded_during_a_long_write_run_and_no_snapshot_child_remains() {
    let _g = serial();
    let c = Cluster::start(snapshot_opts(3000, 300));
    let leader = c.wait_leader(LONG);
    let segment = 6 * 1024 * 1024;
    let mut peak = 0u64;
    let mut written = 0;
    // 80 MB of values through a log of 6 MiB segments: without compaction it would hold 14+.
    // With it, the directory holds the entries since the last snapshot and the kept tail,
    // plus retired segments until the next snapshot's child unlinks them, plus whatever is
    // written while a snapshot is being taken (which depends on this machine's load).
    for round in 0..40 {
        let mut cl = c.client(leader).unwrap();
        let value = vec![b'v'; 2000];
        for i in 0..1000u64 {
            cl.send(&[
                b"SET",
                format!("big-{}", (round * 1000 + i) % 5000).as_bytes(),
                &value,
            ])
            .unwrap();
        }
        for _ in 0..1000 {
            assert_eq!(cl.read_reply().unwrap(), Value::ok());
        }
        written += 1000 * 2000;
        peak = peak.max(dir_size(&c.data_dir(leader).join("log")));
    }
    // Settle: three more snapshots after the big writes, driven by small writes (one may
    // have been under way and cover only part of the big values; the next compacts the rest;
    // the third's child unlinks what that compaction retired).
    let taken = num(&info(&c, leader), "snapshots_taken");
    let mut cl = c.client(leader).unwrap();
    let mut small = 0u64;
    let li = wait_for(LONG, "three more snapshots on the leader", || {
        for _ in 0..500 {
            cl.send(&[b"SET", format!("small-{}", small % 100).as_bytes(), b"s"])
                .unwrap();
            small += 1;
        }
        for _ in 0..500 {
            assert_eq!(cl.read_reply().unwrap(), Value::ok());
        }
        let li = info(&c, leader);
        (num(&li, "snapshots_taken") >= taken + 3 && num(&li, "snapshot_in_progress") == 0)
            .then_some(li)
    });
    let settled = dir_size(&c.data_dir(leader).join("log"));
    println!(
        "wrote {written} bytes of values; the log directory peaked at {peak} bytes and \
         settled at {settled} bytes; {li:?}"
    );
    // Bounded by the snapshot policy, not by what was written: once the small writes have
    // carried the snapshots past the big values, at most the segment being written, one
    // retired by the last compaction and one preallocated ahead remain.
    assert!(
        settled <= 3 * segment,
        "the log directory holds {settled} bytes after compaction settled (peak {peak})"
    );
    // And compaction ran during the run, not only at its end: the peak stays well below
    // the 14 segments 80 MB fills without it.
    assert!(
        peak <= 10 * segment,
        "the log directory grew to {peak} bytes during the run"
    );
    for id in 1..=3 {
        let pid = c.pid(id).unwrap();
        wait_for(LONG, "snapshot children to be reaped", || {
            let i = info(&c, id);
            (num(&i, "snapshot_in_progress") == 0 && children_of(pid) == 0).then_some(())
        });
    }
    // Only the newest snapshot file is kept.
    for id in 1..=3 {
        let snaps = std::fs::read_dir(c.data_dir(id))
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("snapshot-") && !name.ends_with(".tmp")
            })
            .count();
        assert!(snaps <= 1, "node {id} keeps {snaps} snapshot files");
    }
}

#[test]
fn a_corrupt_snapshot_stops_the_node_with_an_error_naming_the_file_never_an_empty_state() {
    let _g = serial();
    let mut c = Cluster::start(snapshot_opts(1000, 100));
    let leader = c.wait_leader(LONG);
    pipelined_sets(&c, leader, 0..3000, 200);
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    wait_for(LONG, "a snapshot on the victim", || {
        (num(&info(&c, victim), "snapshot_index") > 0).then_some(())
    });
    c.kill(victim);
    let snap = std::fs::read_dir(c.data_dir(victim))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("snapshot-") && !name.ends_with(".tmp")
        })
        .expect("a snapshot file");
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&snap, &bytes).unwrap();
    c.spawn(victim);
    let status = wait_for(LONG, "the node to refuse to start", || {
        c.nodes[(victim - 1) as usize]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
    });
    assert!(!status.success(), "started on a corrupt snapshot");
    let log = std::fs::read_to_string(c.log_path(victim)).unwrap();
    let name = snap.file_name().unwrap().to_string_lossy().into_owned();
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&name))
    {
        println!("{line}");
    }
    assert!(log.contains(&name), "the error does not name {name}");
    // The others carry on.
    let mut cl = c.client(leader).unwrap();
    assert_eq!(
        cl.call_str(&["SET", "after", "corruption"]).unwrap(),
        Value::ok()
    );
}

/// The only `snapshot-*` file in `dir` that is not a temporary one: (inode, length).
fn the_snapshot_file(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let files: Vec<std::fs::Metadata> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("snapshot-") && !name.ends_with(".tmp")
        })
        .map(|e| e.metadata().unwrap())
        .collect();
    assert_eq!(files.len(), 1, "snapshot files in {}", dir.display());
    (files[0].ino(), files[0].len())
}

/// A superseded snapshot is kept as the spare and the next snapshot is written over its blocks
/// (the same inode), so that taking a snapshot frees and allocates no file's worth of blocks
/// beside the log's syncs; a spare longer than the new snapshot is cut to it, and the node
/// restarts from that file with every key (start-up removes the spare).
#[test]
fn a_snapshot_is_written_over_the_last_ones_blocks_and_the_node_restarts_from_it() {
    use std::os::unix::fs::MetadataExt;
    let _g = serial();
    // No snapshot but the ones asked for.
    let mut c = Cluster::start(snapshot_opts(1_000_000_000, 100));
    let leader = c.wait_leader(LONG);
    let id = (1..=3).find(|&i| i != leader).unwrap();
    let dir = c.data_dir(id);
    let spare = dir.join("snapshot-spare.tmp");
    let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    let snapshot = |c: &Cluster| {
        let taken = num(&info(c, id), "snapshots_taken");
        let mut cl = c.client(id).unwrap();
        assert!(!cl.call_str(&["SNAPSHOT"]).unwrap().is_error());
        wait_for(LONG, "the snapshot", || {
            let i = info(c, id);
            (num(&i, "snapshots_taken") > taken && num(&i, "snapshot_in_progress") == 0)
                .then_some(())
        });
    };
    pipelined_sets(&c, leader, 0..3000, 200);
    converged(&c, &[1, 2, 3]);
    snapshot(&c);
    let (first, first_len) = the_snapshot_file(&dir);
    assert!(!spare.exists(), "nothing to keep after the first snapshot");
    pipelined_sets(&c, leader, 3000..4000, 200);
    converged(&c, &[1, 2, 3]);
    snapshot(&c);
    let (second, _) = the_snapshot_file(&dir);
    assert_ne!(second, first, "the second snapshot is a new file");
    assert_eq!(inode(&spare), first, "the first snapshot became the spare");
    // Shrink the state, so that the next snapshot is shorter than the spare it overwrites.
    let mut cl = c.client(leader).unwrap();
    for chunk in (0..3500u64).collect::<Vec<_>>().chunks(200) {
        for &i in chunk {
            cl.send(&[b"DEL", format!("key-{i:06}").as_bytes()])
                .unwrap();
        }
        for _ in chunk {
            assert_eq!(cl.read_reply().unwrap(), Value::Integer(1));
        }
    }
    converged(&c, &[1, 2, 3]);
    snapshot(&c);
    let (third, third_len) = the_snapshot_file(&dir);
    assert_eq!(
        third, first,
        "the third snapshot was written over the first's file"
    );
    assert!(
        third_len < first_len,
        "{third_len} bytes, the spare had {first_len}"
    );
    assert_eq!(num(&info(&c, id), "last_snapshot_bytes"), third_len);
    assert_eq!(
        inode(&spare),
        second,
        "the second snapshot is the spare now"
    );
    restart_and_compare(&mut c, id);
    // Reads on the restarted follower, once it knows the leader again.
    for (key, want) in [
        ("key-003999", Value::Bulk(b"val-3999".to_vec())),
        ("key-000000", Value::Nil),
    ] {
        wait_for(LONG, &format!("{key} on the restarted node"), || {
            (harness::get(&c, id, key)? == want).then_some(())
        });
    }
    assert!(!spare.exists(), "start-up removes the spare");
}

#[test]
fn a_paced_snapshot_takes_its_bytes_over_the_rate_while_the_node_serves_and_then_loads() {
    let _g = serial();
    let rate: u64 = 1024 * 1024;
    let mut opts = snapshot_opts(1_000_000_000, 100);
    opts.extra.push(format!("snapshot_write_rate = {rate}"));
    let mut c = Cluster::start(opts);
    let leader = c.wait_leader(LONG);
    let id = (1..=3).find(|&i| i != leader).unwrap();
    // About 3 MiB of state: 3000 values of 1 KiB.
    pipelined_sets_of(&c, leader, 0..3000, 200, |_| vec![b'v'; 1024]);
    converged(&c, &[1, 2, 3]);
    let taken = num(&info(&c, id), "snapshots_taken");
    let mut on_id = c.client(id).unwrap();
    assert!(!on_id.call_str(&["SNAPSHOT"]).unwrap().is_error());
    // The pace is the child's: the node goes on serving (a write through it commits and
    // reads back) while its snapshot is still being written. (The node forks at its next
    // housekeeping pass.)
    let started = wait_for(LONG, "the snapshot to start or end", || {
        let i = info(&c, id);
        (num(&i, "snapshot_in_progress") == 1 || num(&i, "snapshots_taken") > taken)
            .then(|| num(&i, "snapshot_in_progress") == 1)
    });
    assert!(
        started,
        "a 3 MiB snapshot at 1 MiB/s ended before it was seen running"
    );
    assert_eq!(
        on_id.call_str(&["SET", "during", "the-snapshot"]).unwrap(),
        Value::ok()
    );
    assert_eq!(
        on_id.call_str(&["GET", "during"]).unwrap(),
        Value::Bulk(b"the-snapshot".to_vec())
    );
    assert_eq!(
        num(&info(&c, id), "snapshot_in_progress"),
        1,
        "a 3 MiB snapshot at 1 MiB/s was already done"
    );
    wait_for(LONG, "the paced snapshot", || {
        let i = info(&c, id);
        (num(&i, "snapshots_taken") > taken && num(&i, "snapshot_in_progress") == 0).then_some(())
    });
    let i = info(&c, id);
    let (bytes, took_ms) = (num(&i, "last_snapshot_bytes"), num(&i, "last_snapshot_ms"));
    assert!(bytes > 3_000_000, "{bytes} bytes");
    // At most the last partial chunk and the pacer's catch-up credit (20 ms) go unpaced.
    let floor_ms = (bytes - 512 * 1024) * 1000 / rate - 20;
    assert!(
        took_ms >= floor_ms,
        "{bytes} bytes at {rate} B/s took {took_ms} ms (< {floor_ms})"
    );
    restart_and_compare(&mut c, id);
}
