//! A client for a whole cluster: it connects to whichever member answers and retries while the
//! cluster cannot answer yet. `kvctl` is built on it.
//!
//! Invariants:
//! 1. A request is retried only while the cluster has no leader (`-CLUSTERDOWN`, `-TRYAGAIN`),
//!    after one redirect (`-REDIRECT addr`, `-MOVED slot addr`), or after a connection failure,
//!    and never past the call's deadline.
//! 2. A command that is not idempotent (`INCR`, ...) is not resent once it was written on a
//!    connection that then broke, since the server may have applied it.
//! 3. Retries back off from `BACKOFF_MIN` to `BACKOFF_MAX`, so a cluster without a leader is
//!    not flooded while it elects one.

use std::time::{Duration, Instant};

use super::{ClientError, Connection, Options};
use crate::client::value::Value;

/// First and largest pause between retries while the cluster has no leader.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// A connection to one member at a time of a cluster, with retries (see the invariants).
pub struct ClusterClient {
    /// Client addresses (`host:port`), tried in turn.
    endpoints: Vec<String>,
    /// The endpoint tried next when the current connection fails.
    next: usize,
    conn: Option<Connection>,
    /// Connect timeout per attempt; `io_timeout` is the whole budget of one `call`.
    options: Options,
}

/// Why one exchange failed without a reply to show.
enum Failure {
    /// Retry elsewhere: the request cannot have been applied, or may be applied again.
    Retry(String),
    /// Give up: the request may have been applied, or the server spoke nonsense.
    Fatal(String),
}

impl ClusterClient {
    /// `endpoints` must not be empty (the caller's argument parsing refuses an empty list).
    pub fn new(endpoints: Vec<String>, options: Options) -> ClusterClient {
        assert!(!endpoints.is_empty(), "a cluster client needs an endpoint");
        ClusterClient {
            endpoints,
            next: 0,
            conn: None,
            options,
        }
    }

    /// Send `args` and return the reply (an error reply included), retrying as the
    /// invariants say; `Err` names the last problem once `io_timeout` has passed.
    pub fn call(&mut self, args: &[Vec<u8>]) -> Result<Value, String> {
        let deadline = Instant::now() + self.options.io_timeout;
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::from("timed out");
        let mut redirected = false;
        loop {
            if Instant::now() >= deadline {
                return Err(last_problem);
            }
            if self.conn.is_none() {
                if let Err(e) = self.connect_any() {
                    last_problem = e;
                    pause(&mut backoff, deadline);
                    continue;
                }
            }
            let reply = match self.exchange(args, deadline) {
                Ok(reply) => reply,
                Err(Failure::Retry(e)) => {
                    last_problem = e;
                    pause(&mut backoff, deadline);
                    continue;
                }
                Err(Failure::Fatal(e)) => return Err(e),
            };
            let Value::Error(msg) = &reply else {
                return Ok(reply);
            };
            if msg.starts_with("CLUSTERDOWN") || msg.starts_with("TRYAGAIN") {
                last_problem = msg.clone();
                redirected = false;
                // This member may be cut off from the majority: ask the next one next time.
                self.conn = None;
                pause(&mut backoff, deadline);
                if Instant::now() >= deadline {
                    return Ok(reply);
                }
                continue;
            }
            if let Some(target) = redirect_target(msg).filter(|_| !redirected) {
                redirected = true;
                if let Err(e) = self.connect_to(&target) {
                    last_problem = e.to_string();
                }
                continue;
            }
            return Ok(reply);
        }
    }

    /// Connect to the first endpoint that accepts, starting after the last one used.
    fn connect_any(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        for _ in 0..self.endpoints.len() {
            let addr = self.endpoints[self.next].clone();
            self.next = (self.next + 1) % self.endpoints.len();
            match self.connect_to(&addr) {
                Ok(()) => return Ok(()),
                Err(e) => problems.push(e.to_string()),
            }
        }
        Err(problems.join("; "))
    }

    fn connect_to(&mut self, addr: &str) -> Result<(), ClientError> {
        self.conn = None; // closed now, even if the new connection fails
        self.conn = Some(Connection::connect(addr, self.options)?);
        Ok(())
    }

    /// Write the request and read one reply on the current connection.
    fn exchange(&mut self, args: &[Vec<u8>], deadline: Instant) -> Result<Value, Failure> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Retry("not connected".to_string()));
        };
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        conn.queue(&refs);
        if let Err(e) = conn.flush_by(deadline) {
            self.conn = None;
            return Err(Failure::Retry(e.to_string()));
        }
        match conn.read_reply_by(deadline) {
            Ok(value) => Ok(value),
            Err(e) => {
                self.conn = None;
                if idempotent(args) && !e.is_protocol() {
                    Err(Failure::Retry(e.to_string()))
                } else {
                    Err(Failure::Fatal(e.to_string()))
                }
            }
        }
    }
}

/// The address a `-REDIRECT addr` or `-MOVED slot addr` error points to.
fn redirect_target(msg: &str) -> Option<String> {
    if !(msg.starts_with("REDIRECT ") || msg.starts_with("MOVED ")) {
        return None;
    }
    msg.split_whitespace().last().map(str::to_string)
}

fn pause(backoff: &mut Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep((*backoff).min(left));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// Whether resending `args` after a broken connection is safe (invariant 2).
pub fn idempotent(args: &[Vec<u8>]) -> bool {
    let verb = args
        .first()
        .map(|v| v.to_ascii_uppercase())
        .unwrap_or_default();
    !matches!(
        verb.as_slice(),
        b"INCR" | b"INCRBY" | b"DECR" | b"DECRBY" | b"APPEND" | b"INCRBYFLOAT"
    )
}
