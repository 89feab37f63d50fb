//! Snapshots taken in a fork()ed child, and the shutdown signalfd. One #[test] runs every case
//! in order, alone in this binary, so no other test thread is running when we fork, and the
//! "no child process remains" checks see only our own children.

mod snapshot_support;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use kvraft::kv::StateMachine;
use kvraft::node::snapshot::*;
use kvraft::node::sys;
use kvraft::raft::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};
use snapshot_support::TestSm;

const WAIT_MAX: Duration = Duration::from_secs(60);

fn header(index: u64) -> SnapshotHeader {
    SnapshotHeader {
        meta: SnapshotMeta {
            last: EntryId::new(Term(4), LogIndex(index)),
            conf: ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![]),
        },
        extra: b"members".to_vec(),
    }
}

fn assert_no_children(case: &str) {
    assert!(
        !sys::has_child_processes().unwrap(),
        "{case}: a child process (running or zombie) remains"
    );
}

/// Waits for the child's pipe, then polls until it is reaped.
fn finish(snap: &mut Snapshotter, fd: i32) -> Result<SnapshotDone, String> {
    assert!(
        sys::wait_readable(fd, WAIT_MAX).unwrap(),
        "child pipe never became readable"
    );
    // Readable: the child wrote its status or exited; reaping follows once it has gone.
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let outcome = loop {
        if let Some(outcome) = snap.poll_child() {
            break outcome;
        }
        assert!(std::time::Instant::now() < deadline, "child never reaped");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(!snap.is_running());
    assert!(
        snap.poll_child().is_none(),
        "a second outcome for one child"
    );
    outcome
}

/// The pids of this process's children (any thread's), from /proc.
fn child_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap() {
        let children = task.unwrap().path().join("children");
        let text = fs::read_to_string(children).unwrap_or_default();
        pids.extend(text.split_whitespace().map(|p| p.parse::<i32>().unwrap()));
    }
    pids
}

/// A process's scheduling policy and nice value, from /proc/PID/stat (fields 41 and 19).
fn sched_policy_and_nice(pid: i32) -> (i32, i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')': the first is field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (
        fields[41 - 3].parse().unwrap(),
        fields[19 - 3].parse().unwrap(),
    )
}

fn only_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn child_writes_the_state_at_fork_time_while_the_parent_keeps_mutating() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(1, 20_000);
    sm.slow = Some(Duration::from_millis(100)); // the parent mutates while the child writes
    let at_fork = sm.clone();
    // A retired log segment the child is asked to unlink once the snapshot is durable.
    let trash = tempfile::tempdir().unwrap();
    let cleanup = vec![trash.path().join("00000000000000000001.wal.obsolete")];
    fs::write(&cleanup[0], b"old segment").unwrap();
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    let (fd, fork_time) = snap
        .start(dir.path(), header(20_000), &sm, Instant::now(), &cleanup)
        .unwrap();
    assert!(snap.is_running());
    for i in 0..5_000u32 {
        sm.set(&i.to_be_bytes(), b"after the fork");
    }
    sm.map.retain(|k, _| k.len() != 4 || k[3] % 2 == 0);
    assert_ne!(sm.state_hash(), at_fork.state_hash());
    let done = finish(&mut snap, fd).expect("child succeeded");
    assert!(
        !cleanup[0].exists(),
        "the child left the retired file behind"
    );
    assert_eq!(done.fork_time, fork_time);
    assert_eq!(done.header, header(20_000));
    assert_eq!(done.state_hash, at_fork.state_hash());
    assert_eq!(done.size_bytes, fs::metadata(&done.path).unwrap().len());
    assert!(
        done.took >= Duration::from_millis(100),
        "took {:?}",
        done.took
    );
    let mut loaded = TestSm::default();
    let (h, hash) = load_snapshot_file(&done.path, &mut loaded).unwrap();
    assert_eq!((h, hash), (header(20_000), at_fork.state_hash()));
    assert_eq!(loaded.map, at_fork.map);
    assert_eq!(
        only_entries(dir.path()),
        vec![snapshot_file_name(header(20_000).meta.last)]
    );
    eprintln!(
        "fork of a 20000-pair state machine: {fork_time:?}; child took {:?}; {} bytes",
        done.took, done.size_bytes
    );
    assert_no_children("successful snapshot");
}

fn a_child_that_cannot_write_is_reported_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    let (fd, _) = snap
        .start(
            &missing,
            header(5),
            &TestSm::random(2, 10),
            Instant::now(),
            &[],
        )
        .unwrap();
    let err = finish(&mut snap, fd).expect_err("child wrote into a missing dir");
    assert!(err.contains("exit status 1"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    assert_no_children("failed snapshot");
}

fn a_child_that_panics_is_reported_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(3, 10);
    sm.panic_in_write = true;
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    let (fd, _) = snap
        .start(dir.path(), header(6), &sm, Instant::now(), &[])
        .unwrap();
    let err = finish(&mut snap, fd).expect_err("panicking child succeeded");
    assert!(
        err.contains(&format!("exit status {}", sys::CHILD_PANIC_EXIT)),
        "{err}"
    );
    assert!(only_entries(dir.path()).is_empty(), "temp file left behind");
    assert_no_children("panicking snapshot");
}

fn an_overdue_child_is_killed_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(4, 10);
    sm.slow = Some(Duration::from_secs(600));
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    let started = Instant::now();
    let (other_read, other_write) = sys::pipe_cloexec_nonblocking().unwrap();
    let (fd, _) = snap
        .start(dir.path(), header(7), &sm, started, &[])
        .unwrap();
    // The child closed its copy of every fd it was not given: when the parent closes one
    // (say a peer socket), it really closes, even while the child runs.
    drop(other_write);
    // It yields the CPU to the loop: nice 19, set by the child itself (normal policy).
    let child = child_pids().into_iter().next().expect("the snapshot child");
    let deadline = Instant::now() + WAIT_MAX;
    let policy_and_nice = loop {
        let got = sched_policy_and_nice(child);
        if got == (libc::SCHED_OTHER, 19) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(
        policy_and_nice,
        (libc::SCHED_OTHER, 19),
        "the snapshot child's (scheduling policy, nice)"
    );
    assert!(sys::wait_readable(other_read.as_raw_fd(), WAIT_MAX).unwrap());
    let mut other_read = fs::File::from(other_read);
    assert_eq!(other_read.read(&mut [0u8; 8]).unwrap(), 0, "expected EOF");
    assert!(snap.is_running());
    let deadline = Duration::from_secs(30);
    assert!(
        !snap.kill_if_overdue(started + deadline, deadline),
        "killed before its deadline"
    );
    assert!(
        snap.poll_child().is_none(),
        "a sleeping child reported an outcome"
    );
    assert!(snap.kill_if_overdue(started + deadline * 2, deadline));
    assert!(!snap.is_running());
    assert!(snap.poll_child().is_none());
    assert!(only_entries(dir.path()).is_empty(), "temp file left behind");
    let _ = fd; // closed with the child's record
    assert_no_children("overdue snapshot");
}

fn dropping_the_snapshotter_kills_and_reaps_its_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(5, 10);
    sm.slow = Some(Duration::from_secs(600));
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    snap.start(dir.path(), header(8), &sm, Instant::now(), &[])
        .unwrap();
    drop(snap);
    assert_no_children("dropped snapshotter");
}

fn consecutive_snapshots_each_reap_their_child() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = TestSm::random(6, 100);
    let mut snap = Snapshotter::new(WriteRate::Unlimited);
    for i in 0..5u64 {
        sm.set(&i.to_be_bytes(), b"v");
        let expected = sm.state_hash();
        let (fd, _) = snap
            .start(dir.path(), header(100 + i), &sm, Instant::now(), &[])
            .unwrap();
        let done = finish(&mut snap, fd).unwrap();
        assert_eq!(done.state_hash, expected);
        assert_no_children("consecutive snapshots");
    }
    // Each child removed the snapshots before its own: only the newest is left.
    let keep = header(104).meta.last;
    assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    assert_eq!(remove_older_than(dir.path(), keep).unwrap(), 0);
    let (h, loaded, _) = load_newest(dir.path(), TestSm::default).unwrap().unwrap();
    assert_eq!((h.meta.last, loaded.state_hash()), (keep, sm.state_hash()));
}

/// In a child (so blocking SIGTERM cannot affect the test process): block SIGTERM and SIGINT
/// into a signalfd, send ourselves SIGTERM, and read it back.
fn sigterm_arrives_through_the_signalfd() {
    let pid = sys::fork_child(&[], || {
        let Ok(fd) = sys::signal_fd(&[libc::SIGTERM, libc::SIGINT]) else {
            return 2;
        };
        if !matches!(sys::read_signals(std::os::fd::AsFd::as_fd(&fd)), Ok(v) if v.is_empty()) {
            return 3;
        }
        if sys::kill(sys::getpid(), libc::SIGTERM).is_err() {
            return 4;
        }
        match sys::read_signals(std::os::fd::AsFd::as_fd(&fd)) {
            Ok(v) if v == [libc::SIGTERM] => 0,
            _ => 5,
        }
    })
    .unwrap();
    let exit = sys::wait_child(pid, sys::Wait::Block).unwrap();
    assert_eq!(exit, Some(sys::ChildExit::Exited(0)), "signalfd child");
    assert_no_children("signalfd child");
}

#[test]
fn fork_snapshots_and_signals_leave_no_child_behind() {
    assert_no_children("start");
    child_writes_the_state_at_fork_time_while_the_parent_keeps_mutating();
    a_child_that_cannot_write_is_reported_as_an_error();
    a_child_that_panics_is_reported_as_an_error();
    an_overdue_child_is_killed_and_reaped();
    dropping_the_snapshotter_kills_and_reaps_its_child();
    consecutive_snapshots_each_reap_their_child();
    sigterm_arrives_through_the_signalfd();
}
