//! A client for a whole cluster: it connects to whichever member answers and retries while the
//! cluster cannot answer yet. `kvctl` is built on it.
//!
//! With sessions on (`with_sessions`), every write goes through an exactly-once session: the
//! client opens one (`SESSION OPEN`) before its first write and sends each write as
//! `SESSION RUN <id> <seq> <lowest> <command...>`. The state machine answers a resent sequence
//! with the reply it saved, so such a write may be resent after any failure and still counts
//! once.
//!
//! With a password (`with_auth`), every connection sends `AUTH [user] password` before
//! anything else; a refused AUTH ends the call at once (retrying cannot help).
//!
//! Invariants:
//! 1. A request is retried only while the cluster cannot take it (`-CLUSTERDOWN`,
//!    `-TRYAGAIN`: not applied), after one redirect (`-REDIRECT addr`, `-MOVED slot addr`), or
//!    after a connection failure, and never past the call's deadline.
//! 2. A command that may have been applied is resent only if it carries a session: never
//!    after `-UNKNOWN` (or an older server's `-TIMEOUT`), and not after its connection broke
//!    unless it is idempotent (`INCR`, ... are not).
//! 3. A session write keeps its sequence number across every resend; a new sequence is used
//!    only for the next write. A `-SESSIONEXPIRED` reply reopens the session and resends
//!    only if no earlier attempt of that write could have been applied.
//! 4. Retries back off from `BACKOFF_MIN` to `BACKOFF_MAX`, so a cluster without a leader is
//!    not flooded while it elects one.

use std::time::{Duration, Instant};

use super::{ClientError, ClientTls, Connection, Options};
use crate::client::value::Value;
use crate::kv::Request;

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
    sessions: Sessions,
    /// TLS to every endpoint, when set.
    tls: Option<ClientTls>,
    /// `AUTH`'s arguments after the command name, sent on every new connection.
    auth: Option<Vec<Vec<u8>>>,
}

/// Why no connection is ready.
enum ConnectError {
    /// No member answered (try again, elsewhere, later).
    Unreachable(String),
    /// A member refused the password: every member would.
    Refused(String),
}

/// Whether writes go through a session, and the one open.
enum Sessions {
    Off,
    /// On; `None` until the first write opens one.
    On(Option<OpenSession>),
}

struct OpenSession {
    id: u64,
    /// The sequence number of the next write (the first is 1).
    next_seq: u64,
}

/// Why one exchange failed without a reply to show.
enum Failure {
    /// Retry elsewhere: the request cannot have been applied, or may be applied again.
    Retry(String),
    /// Give up: the request may have been applied, or the server spoke nonsense.
    Fatal(String),
}

/// Whether a request may be sent again after it may have been applied (invariant 2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Only if idempotent, and never after `-UNKNOWN`.
    IfIdempotent,
    /// Always: it carries a session (or opens one: an unused session just expires).
    Always,
}

/// What the call loop saw.
struct Outcome {
    reply: Value,
    /// Some attempt may have reached the state machine (a write was sent and then its
    /// connection failed, or an `-UNKNOWN` came back).
    maybe_applied: bool,
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
            sessions: Sessions::Off,
            tls: None,
            auth: None,
        }
    }

    /// Authenticate every connection as `user` (the `default` user if `None`) with
    /// `password`.
    pub fn with_auth(mut self, user: Option<Vec<u8>>, password: Vec<u8>) -> ClusterClient {
        let mut args: Vec<Vec<u8>> = user.into_iter().collect();
        args.push(password);
        self.auth = Some(args);
        self
    }

    /// Speak TLS to every endpoint.
    pub fn with_tls(mut self, tls: ClientTls) -> ClusterClient {
        self.tls = Some(tls);
        self
    }

    /// Send every write through an exactly-once session (see the module header).
    pub fn with_sessions(mut self) -> ClusterClient {
        self.sessions = Sessions::On(None);
        self
    }

    /// The id of the session open, if any.
    pub fn session_id(&self) -> Option<u64> {
        match &self.sessions {
            Sessions::On(Some(s)) => Some(s.id),
            _ => None,
        }
    }

    /// Send `args` and return the reply (an error reply included), retrying as the
    /// invariants say; `Err` names the last problem once `io_timeout` has passed.
    pub fn call(&mut self, args: &[Vec<u8>]) -> Result<Value, String> {
        let deadline = Instant::now() + self.options.io_timeout;
        if matches!(self.sessions, Sessions::On(_)) && is_write(args) {
            return self.call_in_session(args, deadline);
        }
        self.call_by(args, deadline, Resend::IfIdempotent)
            .map(|o| o.reply)
    }

    /// A write in the session: open one if needed, then send it tagged until answered.
    fn call_in_session(&mut self, args: &[Vec<u8>], deadline: Instant) -> Result<Value, String> {
        loop {
            let Some((id, seq)) = self.session_seq(deadline)? else {
                // The server has no sessions: at-least-once, as a plain client.
                return self
                    .call_by(args, deadline, Resend::IfIdempotent)
                    .map(|o| o.reply);
            };
            let mut tagged = vec![b"SESSION".to_vec(), b"RUN".to_vec()];
            for n in [id, seq, seq] {
                tagged.push(n.to_string().into_bytes());
            }
            tagged.extend(args.iter().cloned());
            let out = self.call_by(&tagged, deadline, Resend::Always)?;
            let expired = matches!(&out.reply, Value::Error(e) if e.starts_with("SESSIONEXPIRED"));
            if !expired || out.maybe_applied {
                return Ok(out.reply);
            }
            // Never applied under this session: open a new one and send it there.
            self.sessions = Sessions::On(None);
        }
    }

    /// The open session's id and a fresh sequence number, opening a session first if none
    /// is. `None` if the server does not know sessions (sessions are turned off).
    fn session_seq(&mut self, deadline: Instant) -> Result<Option<(u64, u64)>, String> {
        if let Sessions::On(None) = self.sessions {
            let open = [b"SESSION".to_vec(), b"OPEN".to_vec()];
            match self.call_by(&open, deadline, Resend::Always)?.reply {
                Value::Integer(id) if id > 0 => {
                    self.sessions = Sessions::On(Some(OpenSession {
                        id: id as u64,
                        next_seq: 1,
                    }))
                }
                Value::Error(e) if e.starts_with("ERR unknown command") => {
                    self.sessions = Sessions::Off;
                    return Ok(None);
                }
                other => return Err(format!("opening a session: {other:?}")),
            }
        }
        let Sessions::On(Some(s)) = &mut self.sessions else {
            return Ok(None);
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        Ok(Some((s.id, seq)))
    }

    /// The retry loop of one request (invariants 1, 2, 4).
    fn call_by(
        &mut self,
        args: &[Vec<u8>],
        deadline: Instant,
        resend: Resend,
    ) -> Result<Outcome, String> {
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::from("timed out");
        let mut redirected = false;
        let mut maybe_applied = false;
        loop {
            if Instant::now() >= deadline {
                return Err(last_problem);
            }
            if self.conn.is_none() {
                match self.connect_any() {
                    Ok(()) => {}
                    Err(ConnectError::Refused(e)) => return Err(e),
                    Err(ConnectError::Unreachable(e)) => {
                        last_problem = e;
                        pause(&mut backoff, deadline);
                        continue;
                    }
                }
            }
            let reply = match self.exchange(args, deadline, resend) {
                Ok(reply) => reply,
                Err(Failure::Retry(e)) => {
                    maybe_applied = true;
                    last_problem = e;
                    pause(&mut backoff, deadline);
                    continue;
                }
                Err(Failure::Fatal(e)) => return Err(e),
            };
            let Value::Error(msg) = &reply else {
                return Ok(Outcome {
                    reply,
                    maybe_applied,
                });
            };
            let unknown = msg.starts_with("UNKNOWN") || msg.starts_with("TIMEOUT");
            let retry = msg.starts_with("CLUSTERDOWN") || msg.starts_with("TRYAGAIN");
            if retry || (unknown && resend == Resend::Always) {
                maybe_applied |= unknown;
                last_problem = msg.clone();
                redirected = false;
                // This member may be cut off from the majority: ask the next one next time.
                self.conn = None;
                pause(&mut backoff, deadline);
                if Instant::now() >= deadline {
                    return Ok(Outcome {
                        reply,
                        maybe_applied,
                    });
                }
                continue;
            }
            if let Some(target) = redirect_target(msg).filter(|_| !redirected) {
                redirected = true;
                match self.connect_to(&target) {
                    Ok(()) => {}
                    Err(ConnectError::Refused(e)) => return Err(e),
                    Err(ConnectError::Unreachable(e)) => last_problem = e,
                }
                continue;
            }
            maybe_applied |= unknown;
            return Ok(Outcome {
                reply,
                maybe_applied,
            });
        }
    }

    /// Connect to the first endpoint that accepts, starting after the last one used.
    fn connect_any(&mut self) -> Result<(), ConnectError> {
        let mut problems = Vec::new();
        for _ in 0..self.endpoints.len() {
            let addr = self.endpoints[self.next].clone();
            self.next = (self.next + 1) % self.endpoints.len();
            match self.connect_to(&addr) {
                Ok(()) => return Ok(()),
                Err(ConnectError::Unreachable(e)) => problems.push(e),
                Err(refused) => return Err(refused),
            }
        }
        Err(ConnectError::Unreachable(problems.join("; ")))
    }

    /// Connect to `addr`, and authenticate if a password is set.
    fn connect_to(&mut self, addr: &str) -> Result<(), ConnectError> {
        self.conn = None; // closed now, even if the new connection fails
        let unreachable = |e: ClientError| ConnectError::Unreachable(e.to_string());
        let mut conn =
            Connection::open(addr, self.options, self.tls.as_ref()).map_err(unreachable)?;
        if let Some(auth) = &self.auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(Vec::as_slice));
            // The reply never holds the password (`crate::auth`).
            if let Value::Error(e) = conn.call(&args).map_err(unreachable)? {
                return Err(ConnectError::Refused(format!(
                    "AUTH refused by {addr}: {e}"
                )));
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Write the request and read one reply on the current connection.
    fn exchange(
        &mut self,
        args: &[Vec<u8>],
        deadline: Instant,
        resend: Resend,
    ) -> Result<Value, Failure> {
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
                let resendable = resend == Resend::Always || idempotent(args);
                if resendable && !e.is_protocol() {
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

/// Whether resending `args` after a broken connection is safe without a session
/// (invariant 2).
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

/// Whether `args` is a write of the state machine (a log entry), by the server's own parser.
/// `SESSION` commands themselves never go inside a session.
pub fn is_write(args: &[Vec<u8>]) -> bool {
    let session_cmd = args
        .first()
        .is_some_and(|v| v.eq_ignore_ascii_case(b"session"));
    !session_cmd && matches!(crate::kv::command::parse(args), Some(Request::Write(_)))
}
