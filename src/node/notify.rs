//! systemd's readiness protocol (`sd_notify`), spoken by hand: no libsystemd.
//!
//! systemd passes `NOTIFY_SOCKET` (a Unix datagram socket: a path, or `@name` in the abstract
//! namespace) to a `Type=notify` service. The daemon sends newline-separated `KEY=VALUE`
//! datagrams to it: `READY=1` once its storage is loaded and its listeners are bound (never
//! waiting for a leader: readiness that needs a quorum deadlocks a cluster-wide restart under
//! systemd), `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` so that a wedged loop is restarted. Without `NOTIFY_SOCKET` nothing is sent
//! and nothing is logged.
//!
//! Must not: block (a datagram send on a Unix socket either queues or fails at once; the
//! socket is non-blocking besides), or fail the daemon: a lost notification is logged once.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Longest `NOTIFY_SOCKET` value accepted (the size of `sun_path`, less its terminator).
const NOTIFY_SOCKET_SIZE_MAX: usize = 107;

/// A connection to the service manager's notification socket.
pub struct Notifier {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// A send already failed and was logged; later failures are quiet.
    failed_once: bool,
}

/// Why `NOTIFY_SOCKET` could not be used.
#[derive(Debug)]
pub enum NotifyError {
    /// Empty, too long, or neither a path nor `@name`.
    BadAddress(String),
    Io(io::Error),
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyError::BadAddress(a) => write!(f, "NOTIFY_SOCKET {a:?} is not a socket address"),
            NotifyError::Io(e) => write!(f, "NOTIFY_SOCKET: {e}"),
        }
    }
}

impl Notifier {
    /// The notifier for `NOTIFY_SOCKET`, or `Ok(None)` when it is not set (not under
    /// systemd, or a unit of another type): then the daemon sends nothing.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) => Notifier::new(&v.to_string_lossy()).map(Some),
        }
    }

    /// A notifier for `address`: a filesystem path, or `@name` for the abstract namespace.
    pub fn new(address: &str) -> Result<Notifier, NotifyError> {
        let bad = || NotifyError::BadAddress(address.to_string());
        if address.is_empty() || address.len() > NOTIFY_SOCKET_SIZE_MAX {
            return Err(bad());
        }
        let addr = match address.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None if address.starts_with('/') => SocketAddr::from_pathname(address),
            None => return Err(bad()),
        }
        .map_err(|_| bad())?;
        let sock = UnixDatagram::unbound().map_err(NotifyError::Io)?;
        sock.set_nonblocking(true).map_err(NotifyError::Io)?;
        Ok(Notifier {
            sock,
            addr,
            failed_once: false,
        })
    }

    /// Send one state update (`READY=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=...`).
    pub fn notify(&mut self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            if !self.failed_once {
                self.failed_once = true;
                log::warn!("telling systemd {state:?}: {e} (further failures are not logged)");
            }
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, when it is set for this process
/// (`WATCHDOG_PID`, when present, must be ours). `None`: no watchdog.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(&usec, pid.as_deref(), std::process::id())
}

fn watchdog_interval(usec: &str, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_arrive_as_datagrams_on_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.notify("READY=1");
        n.notify("STOPPING=1");
        let mut buf = [0u8; 64];
        let got = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"READY=1");
        let got = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"STOPPING=1");

        let name = format!("kvraft-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let mut n = Notifier::new(&format!("@{name}")).unwrap();
        n.notify("WATCHDOG=1");
        let got = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..got], b"WATCHDOG=1");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Notifier::new(dir.path().join("absent").to_str().unwrap()).unwrap();
        n.notify("READY=1");
        n.notify("READY=1");
        assert!(n.failed_once);
    }

    #[test]
    fn bad_addresses_are_refused_by_name() {
        for a in ["", "relative/path", &format!("/{}", "x".repeat(200))] {
            match Notifier::new(a) {
                Err(NotifyError::BadAddress(got)) => assert_eq!(got, a),
                other => panic!("{a:?}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn the_watchdog_runs_at_half_its_period_and_only_for_our_pid() {
        assert_eq!(
            watchdog_interval("2000000", None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval("2000000", Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval("2000000", Some("8"), 7), None);
        assert_eq!(watchdog_interval("0", None, 7), None);
        assert_eq!(watchdog_interval("soon", None, 7), None);
    }
}
