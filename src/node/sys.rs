//! The node's few raw system calls: fork, pipes, waiting for and killing a child, the
//! parent-death signal, and a signalfd for clean shutdown. The ONLY node file with `unsafe`.
//!
//! Every function here is a thin, safe wrapper whose contract is stated on it; the policy
//! (what the snapshot child does, when it is killed) lives in `snapshot.rs`.
//!
//! Invariants:
//! 1. `fork_child` never returns in the child: the child runs its closure and leaves through
//!    `_exit`, so no destructor, atexit handler or buffered stdio of the parent runs twice, and a
//!    panic in the closure cannot unwind into the parent's code (it becomes exit code 101).
//! 2. Waiting is always for one named pid (never `-1`), so no other child's status is stolen.
//! 3. Every fd created here is close-on-exec.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A process id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pid(pub i32);

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChildExit::Exited(code) => write!(f, "exit status {code}"),
            ChildExit::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// Exit code of a child whose closure panicked.
pub const CHILD_PANIC_EXIT: i32 = 101;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn getpid() -> Pid {
    // SAFETY: getpid has no preconditions and cannot fail.
    Pid(unsafe { libc::getpid() })
}

/// A pipe whose both ends are close-on-exec and nonblocking: (read end, write end).
pub fn pipe_cloexec_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two c_ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks. In the parent, returns the child's pid. In the child: asks the kernel to SIGKILL it
/// when the parent dies (and exits at once if the parent is already gone), closes every fd
/// above stderr except those in `keep` (so a socket the parent closes really closes, and the
/// child can touch nothing it was not given), unblocks every signal, runs `child`, and
/// `_exit`s with its return value — it never returns (invariant 1). A child that should yield
/// to the parent calls [`become_background`] itself (it cannot log: it reports the outcome).
///
/// Contract for `child`: it runs in a copy-on-write copy of the parent with only the calling
/// thread alive. It must not take locks another thread of the parent might have held (the
/// logger, stdout): the node is single-threaded, and tests that fork do so from a single test.
pub fn fork_child(keep: &[RawFd], child: impl FnOnce() -> i32) -> io::Result<Pid> {
    let parent = getpid();
    // SAFETY: fork has no memory-safety preconditions by itself; what the child may do
    // afterwards is this function's documented contract, and the child never returns.
    let pid = check(unsafe { libc::fork() })?;
    if pid > 0 {
        return Ok(Pid(pid));
    }
    // In the child from here on.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number; the other args are ignored.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // SAFETY: getppid has no preconditions.
    if rc == -1 || unsafe { libc::getppid() } != parent.0 {
        // The parent died between fork and prctl (we were reparented): nobody wants our work.
        exit_now(1);
    }
    close_fds_except(keep);
    unblock_all_signals();
    let code = catch_unwind(AssertUnwindSafe(child)).unwrap_or(CHILD_PANIC_EXIT);
    exit_now(code)
}

/// Makes the calling (child) process yield to everything else: nice 19 for the CPU, and the lowest
/// best-effort I/O priority. Not the idle I/O class: under a steady stream of log syncs the disk is
/// never idle, an idle-class snapshot would starve, and the log it should compact would grow
/// without bound. Not the `SCHED_IDLE` CPU policy either: tried twice for issue 16 (the cluster
/// bench's snapshot rows, alternating builds on the shared 2-core machine): the first time it took
/// snapshots longer and the p99 ratio was no better; the second (9fbb2b7, three pooled rounds, two
/// runs each) gave p99 2.40x / 2.65x against 2.89x / 2.98x and throughput 0.72x / 0.71x against
/// 0.56x / 0.58x during snapshots, but its weight is a fifth of nice 19's, and a child already
/// starves on a loaded machine (the log then grows until it finishes). Pacing the child's writes to
/// 100 MB/s gave 2.24x / 2.16x with snapshots 4x longer: not kept either. A kernel that refuses a
/// setting leaves that default; the returned [`Background`] says which were refused, for the caller
/// to report (a fork child cannot log).
pub fn become_background() -> Background {
    let mut refused = 0;
    // SAFETY: setpriority only reads its integer arguments.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } == -1 {
        refused |= Background::NICE;
    }
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    const IOPRIO_LEVEL_LOWEST: libc::c_long = 7;
    let prio = IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT | IOPRIO_LEVEL_LOWEST;
    // SAFETY: ioprio_set takes three integers and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0 as libc::c_long,
            prio,
        )
    };
    if rc == -1 {
        refused |= Background::IOPRIO;
    }
    Background(refused)
}

/// Which of [`become_background`]'s settings the kernel refused: a bit set per setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Background(pub u8);

impl Background {
    pub const NICE: u8 = 1;
    pub const IOPRIO: u8 = 2;

    /// Every setting was applied.
    pub fn all_applied(self) -> bool {
        self.0 == 0
    }

    /// The refused settings, by name ("" when none was).
    pub fn refused(self) -> String {
        [
            (Self::NICE, "nice 19"),
            (Self::IOPRIO, "I/O priority best-effort 7"),
        ]
        .iter()
        .filter(|(bit, _)| self.0 & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// Which part of `sync_file_range` to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writeback {
    /// Start writing the range's dirty pages back; do not wait.
    Start,
    /// Write the range back and wait until it is on the device (no metadata, no cache flush:
    /// the final fsync still makes the file durable).
    Wait,
}

/// `sync_file_range` on `fd`: lets a large sequential writer push its pages to the disk as it
/// goes, instead of leaving one huge dirty backlog that stalls every other fsync on the disk.
pub fn writeback(fd: RawFd, offset: u64, len: u64, how: Writeback) -> io::Result<()> {
    let flags = match how {
        Writeback::Start => libc::SYNC_FILE_RANGE_WRITE,
        Writeback::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    // SAFETY: sync_file_range only reads its integer arguments; a bad fd is EBADF.
    let rc =
        unsafe { libc::sync_file_range(fd, offset as libc::off64_t, len as libc::off64_t, flags) };
    check(rc).map(|_| ())
}

/// Which `flock` to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileLock {
    /// Many holders at once (readers of a snapshot file).
    Shared,
    /// One holder, and no shared ones (the snapshot child about to truncate a file away).
    Exclusive,
}

/// `flock(fd, LOCK_SH | LOCK_NB)` or `LOCK_EX | LOCK_NB`: true if taken, false if another open
/// file holds a conflicting lock. The lock belongs to the open file (every fd duplicated from
/// it, a fork child's included) and ends when the last of them closes.
pub fn try_lock(fd: RawFd, how: FileLock) -> io::Result<bool> {
    let op = match how {
        FileLock::Shared => libc::LOCK_SH,
        FileLock::Exclusive => libc::LOCK_EX,
    };
    // SAFETY: flock only reads its integer arguments; a bad fd is EBADF.
    match check(unsafe { libc::flock(fd, op | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// `_exit(code)`: ends the process without running destructors, atexit handlers or flushing
/// stdio buffers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Fds the fallback loop of [`close_fds_except`] closes when close_range is unavailable.
const FDS_CLOSED_MAX: i32 = 65_536;

/// Closes every fd from 3 up, except those in `keep`.
fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd > 2).collect();
    keep.sort_unstable();
    let mut first = 3;
    for &fd in keep.iter().chain(std::iter::once(&RawFd::MAX)) {
        if fd > first {
            close_range(first, fd - 1);
        }
        first = fd.saturating_add(1);
    }
}

fn close_range(first: RawFd, last: RawFd) {
    // SAFETY: close_range only closes descriptors; nothing in this (child) process uses the
    // ones closed here afterwards, by fork_child's contract.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) };
    if rc == -1 {
        // Kernels before 5.9: close one by one, up to a bound.
        for fd in first..=last.min(FDS_CLOSED_MAX) {
            // SAFETY: as above; EBADF for fds that are not open is harmless.
            unsafe { libc::close(fd) };
        }
    }
}

fn unblock_all_signals() {
    // SAFETY: `set` is a plain C struct that sigemptyset initialises before use; sigprocmask
    // reads it and is given a null old-set pointer, which it accepts.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Sends `signal` to `pid`.
pub fn kill(pid: Pid, signal: i32) -> io::Result<()> {
    assert!(pid.0 > 0, "kill of pid {} would signal a group", pid.0);
    // SAFETY: kill takes plain integers; pid > 0 names exactly one process.
    check(unsafe { libc::kill(pid.0, signal) })?;
    Ok(())
}

/// Whether to block in [`wait_child`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Block,
    NoHang,
}

/// Reaps `pid` if it has ended (`Wait::NoHang`) or once it ends (`Wait::Block`). `Ok(None)`:
/// still running (only with `NoHang`). Retries on EINTR.
pub fn wait_child(pid: Pid, wait: Wait) -> io::Result<Option<ChildExit>> {
    assert!(pid.0 > 0, "waiting for pid {} would reap any child", pid.0);
    let flags = match wait {
        Wait::Block => 0,
        Wait::NoHang => libc::WNOHANG,
    };
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid c_int for waitpid to write.
        let rc = unsafe { libc::waitpid(pid.0, &mut status, flags) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Ok(None);
        }
        assert_eq!(rc, pid.0, "waitpid({}) reaped pid {rc}", pid.0);
        if libc::WIFEXITED(status) {
            return Ok(Some(ChildExit::Exited(libc::WEXITSTATUS(status))));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(ChildExit::Signaled(libc::WTERMSIG(status))));
        }
        // Stopped or continued: not an end; keep waiting (NoHang reports it as running).
        if wait == Wait::NoHang {
            return Ok(None);
        }
    }
}

/// Whether this process has any child, running or zombie, without reaping it (waitid with
/// WNOWAIT). For tests and diagnostics: a leaked child is seed lesson 11.
pub fn has_child_processes() -> io::Result<bool> {
    // SAFETY: `info` is a zeroed siginfo_t, a valid buffer for waitid to fill; P_ALL ignores
    // the id; WNOWAIT leaves any waitable child unreaped.
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc == 0 {
        return Ok(true); // a child exists (waitable or not yet)
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ECHILD) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn sigset_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set and sigaddset only writes into it; the
    // signal numbers are asserted in range first.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            assert!(s > 0 && s < 65, "signal number {s} out of range");
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` for the calling thread (the node's only thread) and returns a nonblocking,
/// close-on-exec signalfd that becomes readable when one of them is pending. Register it in
/// mio with `SourceFd` and call [`read_signals`] when it is readable.
pub fn signal_fd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = sigset_of(signals);
    // SAFETY: `set` is an initialised sigset_t; the old-set pointer may be null.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new fd; `set` is initialised; the flags are valid for signalfd.
    let fd = check(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd succeeded, so `fd` is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most signals taken from a signalfd per call (the rest stay pending for the next call).
pub const SIGNALS_PER_READ_MAX: usize = 16;

/// Reads the pending signals from a signalfd made by [`signal_fd`] until it would block.
pub fn read_signals(fd: BorrowedFd<'_>) -> io::Result<Vec<i32>> {
    const INFO_SIZE: usize = std::mem::size_of::<libc::signalfd_siginfo>();
    let mut out = Vec::new();
    while out.len() < SIGNALS_PER_READ_MAX {
        // SAFETY: an all-zero signalfd_siginfo is a valid value (plain integers).
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a writable buffer of exactly INFO_SIZE bytes.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                INFO_SIZE,
            )
        };
        if n == -1 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        assert_eq!(n as usize, INFO_SIZE, "signalfd read {n} bytes");
        out.push(info.ssi_signo as i32);
    }
    Ok(out)
}

/// Waits up to `timeout` for `fd` to become readable (or hung up); true if it did. For
/// tests and tools — the node waits in mio instead.
pub fn wait_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `pfd` is one valid pollfd, and we pass a count of 1. An fd that is not open
        // is reported in `revents` (POLLNVAL), not undefined behaviour.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}
