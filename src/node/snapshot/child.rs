//! Taking a snapshot in a `fork()`ed child (invariants 3 and 4 of `mod.rs`).

use super::*;

// ---------------------------------------------------------------------------------------------
// Taking a snapshot in a fork()ed child.

/// The child's status message through its pipe: `K` + state hash u64 + size u64 + the
/// priority settings the kernel refused it (`sys::Background`, u8) on success, `E` + a UTF-8
/// reason on failure.
const CHILD_OK: u8 = b'K';
const CHILD_ERR: u8 = b'E';
const CHILD_OK_SIZE: usize = 1 + 8 + 8 + 1;
/// Exit code of a child whose write failed (the reason is in the pipe).
const CHILD_EXIT_WRITE_FAILED: i32 = 1;

/// A snapshot child that finished writing its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDone {
    pub header: SnapshotHeader,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub state_hash: u64,
    /// From the fork to the reaping of the child.
    pub took: Duration,
    /// How long `fork()` itself paused the loop.
    pub fork_time: Duration,
}

struct Child {
    pid: sys::Pid,
    /// The read end of the status pipe; EOF once the child has exited.
    pipe: File,
    started: Instant,
    fork_time: Duration,
    header: SnapshotHeader,
    dir: PathBuf,
    /// Status bytes read so far. Invariant: `len() <= CHILD_STATUS_SIZE_MAX`.
    status: Vec<u8>,
}

impl Child {
    fn tmp_path(&self) -> PathBuf {
        tmp_path(&self.dir, self.header.meta.last, TMP_SUFFIX)
    }

    /// Reads the status pipe until it would block or ends; true at EOF.
    fn drain_pipe(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.pipe.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let room = CHILD_STATUS_SIZE_MAX - self.status.len();
                    self.status.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    log::warn!("snapshot child {} status pipe: {e}", self.pid.0);
                    return false;
                }
            }
        }
    }

    fn outcome(self, exit: sys::ChildExit) -> Result<SnapshotDone, String> {
        let ok = exit == sys::ChildExit::Exited(0)
            && self.status.len() == CHILD_OK_SIZE
            && self.status[0] == CHILD_OK;
        if ok {
            let background = sys::Background(self.status[17]);
            if !background.all_applied() {
                log::warn!(
                    "snapshot child pid {} ran without {}: refused by the kernel, so it \
                     competed with the event loop for the CPU or the disk",
                    self.pid.0,
                    background.refused()
                );
            }
            return Ok(SnapshotDone {
                path: self.dir.join(snapshot_file_name(self.header.meta.last)),
                state_hash: BigEndian::read_u64(&self.status[1..9]),
                size_bytes: BigEndian::read_u64(&self.status[9..17]),
                header: self.header,
                took: self.started.elapsed(),
                fork_time: self.fork_time,
            });
        }
        // The child removes its temp file on a write error, but not if it was killed.
        let _ = fs::remove_file(self.tmp_path());
        let reason = match self.status.split_first() {
            Some((&CHILD_ERR, msg)) => String::from_utf8_lossy(msg).into_owned(),
            _ => "no reason given".to_string(),
        };
        Err(format!(
            "snapshot child pid {} writing {} in {}: {exit}: {reason}",
            self.pid.0,
            snapshot_file_name(self.header.meta.last),
            self.dir.display()
        ))
    }

    /// SIGKILLs and reaps the child, and removes its temp file.
    fn kill_and_reap(self) {
        if let Err(e) = sys::kill(self.pid, libc::SIGKILL) {
            log::warn!("kill snapshot child {}: {e}", self.pid.0);
        }
        if let Err(e) = sys::wait_child(self.pid, sys::Wait::Block) {
            log::error!("reap snapshot child {}: {e}", self.pid.0);
        }
        let _ = fs::remove_file(self.tmp_path());
    }
}

/// Takes snapshots in a forked child, at most one at a time (invariant 4).
pub struct Snapshotter {
    child: Option<Child>,
    /// How fast a child writes ("Pacing" in files.rs).
    rate: WriteRate,
}

impl Snapshotter {
    pub fn new(rate: WriteRate) -> Self {
        Snapshotter { child: None, rate }
    }

    /// The pace of the children started from now on (one running keeps its own).
    pub fn set_rate(&mut self, rate: WriteRate) {
        self.rate = rate;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Forks a child that writes `sm` (its copy-on-write view at the moment of the fork) as
    /// the snapshot `header` into `dir`, then `_exit`s. Returns the read end of a pipe
    /// (close-on-exec, nonblocking) that becomes readable when the child has ended — register
    /// it in mio with `SourceFd` and call [`Snapshotter::poll_child`] when it is. The fd is
    /// owned here and closed when `poll_child` returns `Some`; a closed fd leaves epoll by
    /// itself, so do not deregister it afterwards (or ignore that error). Also returns how
    /// long the fork took: the loop's only pause. Once its snapshot is durable the child also
    /// unlinks the older snapshots and the files in `cleanup` (retired log segments): work the
    /// loop must not spend its time on.
    pub fn start<S: StateMachine + ?Sized>(
        &mut self,
        dir: &Path,
        header: SnapshotHeader,
        sm: &S,
        now: Instant,
        cleanup: &[PathBuf],
    ) -> io::Result<(RawFd, Duration)> {
        assert!(
            self.child.is_none(),
            "snapshot {} started while {} is still being written",
            header.meta.last,
            self.child
                .as_ref()
                .map_or(EntryId::default(), |c| c.header.meta.last)
        );
        let (read, write) = sys::pipe_cloexec_nonblocking()?;
        let fork_started = Instant::now();
        // The closure owns the write end: the parent drops (closes) it when fork_child
        // returns, so only the child holds it and its exit is the pipe's EOF.
        let mut status = File::from(write);
        let header_ref = &header;
        let keep = [status.as_raw_fd()];
        let rate = self.rate;
        let pid = sys::fork_child(&keep, move || {
            child_main(dir, header_ref, sm, rate, cleanup, &mut status)
        })?;
        let fork_time = fork_started.elapsed();
        let pipe = File::from(read);
        let fd = pipe.as_raw_fd();
        self.child = Some(Child {
            pid,
            pipe,
            started: now,
            fork_time,
            header,
            dir: dir.to_path_buf(),
            status: Vec::new(),
        });
        Ok((fd, fork_time))
    }

    /// Call when the pipe is readable (or periodically). Reaps the child if it has ended
    /// (waiting only for its pid) and returns its outcome; `None` while it runs or when no
    /// child exists.
    pub fn poll_child(&mut self) -> Option<Result<SnapshotDone, String>> {
        let child = self.child.as_mut()?;
        // Never blocks: a child that has written its status may still be tearing down its
        // copy of the parent's memory (tens of ms for a GiB), and the loop must not wait for
        // that. The caller polls again (the pipe's EOF, then periodically) until it is reaped.
        child.drain_pipe();
        let exit = match sys::wait_child(child.pid, sys::Wait::NoHang) {
            Ok(None) => return None,
            Ok(Some(exit)) => exit,
            Err(e) => {
                let child = self.child.take().expect("child checked above");
                let _ = fs::remove_file(child.tmp_path());
                return Some(Err(format!("waitpid({}) failed: {e}", child.pid.0)));
            }
        };
        let mut child = self.child.take().expect("child checked above");
        child.drain_pipe(); // the status written just before exiting
        Some(child.outcome(exit))
    }

    /// SIGKILLs and reaps a child running for longer than `deadline`; true if it did.
    pub fn kill_if_overdue(&mut self, now: Instant, deadline: Duration) -> bool {
        let overdue = self
            .child
            .as_ref()
            .is_some_and(|c| now.saturating_duration_since(c.started) > deadline);
        if !overdue {
            return false;
        }
        let child = self.child.take().expect("overdue implies a child");
        log::warn!(
            "snapshot child pid {} writing {} ran longer than {deadline:?}: killing it",
            child.pid.0,
            child.header.meta.last
        );
        child.kill_and_reap();
        true
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill_and_reap();
        }
    }
}

/// The fork child's whole life (invariant 3): write the file, report through the pipe, return
/// the exit code for `_exit`.
fn child_main<S: StateMachine + ?Sized>(
    dir: &Path,
    header: &SnapshotHeader,
    sm: &S,
    rate: WriteRate,
    cleanup: &[PathBuf],
    status: &mut File,
) -> i32 {
    let background = sys::become_background();
    match write_snapshot_file(dir, header, sm, rate) {
        Ok(w) => {
            // The older files go here, not in the parent: unlinking hundreds of MiB can take
            // tens of ms (more on a filesystem mounted with `discard`), which the event loop
            // must not spend. A failure only leaves a file for the next snapshot to remove.
            // Gently (`remove_gently`): one unlink of a large file stalls every log sync on
            // the disk for as long as the file system takes to free (and trim) its blocks.
            // The newest of them is kept to be written over by the next snapshot ("Recycling:
            // the spare" in files.rs).
            let _ = retire_older(dir, header.meta.last);
            let _ = remove_gently(cleanup, Readers::None);
            let mut msg = [0u8; CHILD_OK_SIZE];
            msg[0] = CHILD_OK;
            BigEndian::write_u64(&mut msg[1..9], w.state_hash);
            BigEndian::write_u64(&mut msg[9..17], w.size_bytes);
            msg[17] = background.0;
            // Under PIPE_BUF, into an empty pipe: one atomic write that never blocks. It is
            // the child's last act before `_exit` (poll_child relies on it).
            match status.write_all(&msg) {
                Ok(()) => 0,
                Err(_) => CHILD_EXIT_WRITE_FAILED,
            }
        }
        Err(e) => {
            let mut msg = [0u8; 256];
            let mut cursor = io::Cursor::new(&mut msg[..]);
            let _ = write!(cursor, "{}{e}", CHILD_ERR as char);
            let len = cursor.position() as usize;
            let _ = status.write_all(&msg[..len]); // atomic, and the last act, as above
            CHILD_EXIT_WRITE_FAILED
        }
    }
}
