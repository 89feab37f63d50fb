//! The metrics port's connections (`metrics=host:port` in the node's config line), served
//! on the node's one loop: `GET` or `HEAD` of `/metrics`, `/livez`, `/readyz`; one request
//! per connection, answered with `Connection: close` (`http.rs` parses and writes).
//!
//! Owns: the HTTP connections (a slab of their own, their tokens from `token_base` up), their
//! buffers, phases and deadlines. The shell (`event_loop.rs`) accepts, hands over readiness
//! and says what each route answers; the node renders the bodies (`exposition.rs`).
//!
//! Must not: block or let HTTP clients stall the loop. Every dimension is bounded:
//! `HTTP_CONNECTIONS_MAX` connections (one more is answered 503 and closed), a head of at
//! most `HTTP_HEAD_SIZE_MAX` bytes, `HTTP_READ_BUDGET_PER_TURN` bytes read per turn across all
//! of them, `HTTP_RESPONSES_PER_TURN_MAX` responses rendered per turn, `HTTP_ACCEPTS_PER_TURN_MAX`
//! accepts per turn, and `HTTP_EXCHANGE_TIMEOUT` from accept to close: an idle or slow client
//! (one that never sends its head, or never reads the answer) is closed then. Output is
//! written without blocking; what the socket does not take waits for writability.
//!
//! After the response is written the write side is shut and the input is read and dropped
//! until the client closes (at most `HTTP_LINGER`): closing with unread input would reset the
//! connection and could destroy the response before the client read it.
//!
//! Invariants (`check_invariants`):
//! 1. At most `HTTP_CONNECTIONS_MAX` connections.
//! 2. A connection's input never exceeds `HTTP_HEAD_SIZE_MAX` bytes; it has output only once
//!    it answered, and `wpos <= out.len()`.
//! 3. The interest registered is derived from the phase (`interest()`).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use crate::http::{self, Method, HTTP_HEAD_SIZE_MAX};

/// HTTP connections served at once.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// Bytes read from all HTTP connections in one loop turn.
pub const HTTP_READ_BUDGET_PER_TURN: usize = 256 * 1024;
/// Responses rendered in one loop turn (a scrape renders the whole exposition).
pub const HTTP_RESPONSES_PER_TURN_MAX: usize = 16;
/// Connections accepted from the metrics listener in one loop turn.
pub const HTTP_ACCEPTS_PER_TURN_MAX: usize = 64;
/// From accept to close: the client sends its head and reads the answer within this.
pub const HTTP_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the answer is written: how long the client's remaining input is read and dropped.
pub const HTTP_LINGER: Duration = Duration::from_secs(1);

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Livez,
    Readyz,
}

/// An answer for a route: status, content type, body.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the request head.
    Reading,
    /// Writing the answer.
    Writing,
    /// Answer written, write side shut: dropping input until the client closes.
    Draining,
}

struct HttpConn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    wpos: usize,
    phase: Phase,
    deadline: Instant,
    registered: Interest,
}

impl HttpConn {
    fn interest(&self) -> Interest {
        match self.phase {
            Phase::Writing => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        }
    }
}

/// What one step on a connection left it needing.
enum Next {
    /// Wait for readiness.
    Wait,
    /// Serve it again next turn (a per-turn budget ran out).
    Again,
    Close,
}

pub struct HttpPort {
    conns: Slab<HttpConn>,
    token_base: usize,
    /// Connections to serve next turn without waiting for readiness (edge-triggered events
    /// are not repeated).
    again: Vec<usize>,
    /// The listener may hold more connections than one turn accepted.
    accept_again: bool,
}

/// Per-turn budgets.
struct Budget {
    read_bytes: usize,
    responses: usize,
}

impl HttpPort {
    /// Connection `key` is registered as `Token(token_base + key)`.
    pub fn new(token_base: usize) -> HttpPort {
        HttpPort {
            conns: Slab::with_capacity(HTTP_CONNECTIONS_MAX),
            token_base,
            again: Vec::new(),
            accept_again: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accept what the listener holds, up to the per-turn limit. Past `HTTP_CONNECTIONS_MAX`,
    /// a connection is answered 503 (one non-blocking write) and closed.
    pub fn accept(&mut self, listener: &TcpListener, registry: &Registry, now: Instant) {
        self.accept_again = false;
        for _ in 0..HTTP_ACCEPTS_PER_TURN_MAX {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("metrics port: accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= HTTP_CONNECTIONS_MAX {
                let body = format!("more than {HTTP_CONNECTIONS_MAX} metrics connections\n");
                let _ = stream.write(&http::response(503, "text/plain", body.as_bytes(), false));
                continue;
            }
            let entry = self.conns.vacant_entry();
            let token = Token(self.token_base + entry.key());
            if let Err(e) = registry.register(&mut stream, token, Interest::READABLE) {
                log::warn!("metrics port: registering a connection: {e}");
                continue;
            }
            entry.insert(HttpConn {
                stream,
                rbuf: Vec::new(),
                out: Vec::new(),
                wpos: 0,
                phase: Phase::Reading,
                deadline: now + HTTP_EXCHANGE_TIMEOUT,
                registered: Interest::READABLE,
            });
        }
        self.accept_again = true;
    }

    /// Whether the listener should be accepted from again this turn without an event.
    pub fn wants_accept(&self) -> bool {
        self.accept_again
    }

    /// Serve the connections that had events (`ready`, as keys) and those left from last
    /// turn, within this turn's budgets; close those past their deadline. `respond` gives
    /// the answer to a route.
    pub fn serve(
        &mut self,
        registry: &Registry,
        ready: &[usize],
        now: Instant,
        respond: &mut dyn FnMut(Route) -> Reply,
    ) {
        let mut budget = Budget {
            read_bytes: HTTP_READ_BUDGET_PER_TURN,
            responses: HTTP_RESPONSES_PER_TURN_MAX,
        };
        let mut keys = std::mem::take(&mut self.again);
        keys.extend_from_slice(ready);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            match step(c, &mut budget, now, respond) {
                Next::Wait => {}
                Next::Again => self.again.push(key),
                Next::Close => {
                    self.close(registry, key);
                    continue;
                }
            }
            let c = &mut self.conns[key];
            let interest = c.interest();
            if interest != c.registered {
                let token = Token(self.token_base + key);
                if registry.reregister(&mut c.stream, token, interest).is_err() {
                    self.close(registry, key);
                    continue;
                }
                c.registered = interest;
            }
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            self.close(registry, key);
        }
    }

    fn close(&mut self, registry: &Registry, key: usize) {
        if let Some(mut c) = self.conns.try_remove(key) {
            let _ = registry.deregister(&mut c.stream);
        }
        self.again.retain(|&k| k != key);
    }

    /// How long the loop may wait before this port needs a turn: zero with work left over,
    /// else until the earliest deadline.
    pub fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() || self.accept_again {
            return Some(Duration::ZERO);
        }
        self.conns
            .iter()
            .map(|(_, c)| c.deadline.saturating_duration_since(now))
            .min()
    }

    pub fn check_invariants(&self) {
        assert!(
            self.conns.len() <= HTTP_CONNECTIONS_MAX,
            "{} HTTP connections",
            self.conns.len()
        );
        for (key, c) in &self.conns {
            assert!(
                c.rbuf.len() <= HTTP_HEAD_SIZE_MAX,
                "HTTP connection {key}: {} bytes of head buffered",
                c.rbuf.len()
            );
            assert!(
                c.wpos <= c.out.len() && (c.phase != Phase::Reading || c.out.is_empty()),
                "HTTP connection {key}: output {}/{} while {:?}",
                c.wpos,
                c.out.len(),
                c.phase
            );
            assert_eq!(c.registered, c.interest(), "HTTP connection {key} interest");
        }
        for key in &self.again {
            assert!(
                self.conns.contains(*key),
                "HTTP connection {key} left over but closed"
            );
        }
    }
}

/// Move one connection on as far as its socket and the budgets allow.
fn step(
    c: &mut HttpConn,
    budget: &mut Budget,
    now: Instant,
    respond: &mut dyn FnMut(Route) -> Reply,
) -> Next {
    loop {
        match c.phase {
            Phase::Reading => match read_head(c, budget, respond) {
                Some(next) => return next,
                None => continue, // answered: write it
            },
            Phase::Writing => {
                while c.wpos < c.out.len() {
                    match c.stream.write(&c.out[c.wpos..]) {
                        Ok(0) => return Next::Close,
                        Ok(n) => c.wpos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close,
                    }
                }
                let _ = c.stream.shutdown(Shutdown::Write);
                c.phase = Phase::Draining;
                c.deadline = c.deadline.min(now + HTTP_LINGER);
            }
            Phase::Draining => {
                let mut sink = [0u8; 4096];
                return match read_into(&mut c.stream, &mut sink, budget) {
                    ReadOutcome::Got(_) => continue,
                    ReadOutcome::WouldBlock => Next::Wait,
                    ReadOutcome::OutOfBudget => Next::Again,
                    ReadOutcome::Closed => Next::Close,
                };
            }
        }
    }
}

/// Read and parse the head. `None`: answered (the phase is now `Writing`).
fn read_head(
    c: &mut HttpConn,
    budget: &mut Budget,
    respond: &mut dyn FnMut(Route) -> Reply,
) -> Option<Next> {
    let mut chunk = [0u8; 4096];
    loop {
        let room = HTTP_HEAD_SIZE_MAX - c.rbuf.len();
        let got = if room == 0 {
            ReadOutcome::Got(0)
        } else {
            let want = room.min(chunk.len());
            read_into(&mut c.stream, &mut chunk[..want], budget)
        };
        if let ReadOutcome::Got(n) = got {
            c.rbuf.extend_from_slice(&chunk[..n]);
        }
        let answer = match http::parse_request(&c.rbuf) {
            Ok(None) => None,
            Ok(Some((req, _))) => Some(Ok(req)),
            Err(e) => Some(Err(e)),
        };
        if let Some(answer) = answer {
            if budget.responses == 0 {
                return Some(Next::Again);
            }
            budget.responses -= 1;
            c.out = match answer {
                Ok(req) => answer_request(&req, respond),
                Err(e) => {
                    let why = match &e {
                        http::ParseError::HeadTooLarge => {
                            format!("request head larger than {HTTP_HEAD_SIZE_MAX} bytes")
                        }
                        http::ParseError::TooManyHeaders => {
                            format!("more than {} header lines", http::HTTP_HEADERS_MAX)
                        }
                        http::ParseError::Malformed(why) => (*why).to_string(),
                    };
                    let body = format!("bad request: {why}\n");
                    http::response(e.status(), "text/plain", body.as_bytes(), false)
                }
            };
            c.rbuf = Vec::new();
            c.phase = Phase::Writing;
            return None;
        }
        match got {
            ReadOutcome::Got(_) => {}
            ReadOutcome::WouldBlock => return Some(Next::Wait),
            ReadOutcome::OutOfBudget => return Some(Next::Again),
            ReadOutcome::Closed => return Some(Next::Close),
        }
    }
}

fn answer_request(req: &http::Request, respond: &mut dyn FnMut(Route) -> Reply) -> Vec<u8> {
    let head_only = req.method == Method::Head;
    if req.method == Method::Other {
        let body = b"only GET and HEAD are served\n";
        return http::response(405, "text/plain", body, false);
    }
    let route = match req.path.as_str() {
        "/metrics" => Route::Metrics,
        "/livez" => Route::Livez,
        "/readyz" => Route::Readyz,
        _ => {
            let body = b"not found: the paths are /metrics, /livez and /readyz\n";
            return http::response(404, "text/plain", body, head_only);
        }
    };
    let r = respond(route);
    http::response(r.status, r.content_type, &r.body, head_only)
}

enum ReadOutcome {
    Got(usize),
    WouldBlock,
    OutOfBudget,
    Closed,
}

/// One read of at most `buf.len()` bytes and what is left of the turn's read budget.
fn read_into(stream: &mut TcpStream, buf: &mut [u8], budget: &mut Budget) -> ReadOutcome {
    if budget.read_bytes == 0 {
        return ReadOutcome::OutOfBudget;
    }
    let want = buf.len().min(budget.read_bytes);
    loop {
        return match stream.read(&mut buf[..want]) {
            Ok(0) => ReadOutcome::Closed,
            Ok(n) => {
                budget.read_bytes -= n;
                ReadOutcome::Got(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadOutcome::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => ReadOutcome::Closed,
        };
    }
}

const _: () = assert!(HTTP_READ_BUDGET_PER_TURN >= HTTP_HEAD_SIZE_MAX);
const _: () = assert!(HTTP_LINGER.as_nanos() < HTTP_EXCHANGE_TIMEOUT.as_nanos());
const _: () = assert!(HTTP_ACCEPTS_PER_TURN_MAX >= HTTP_RESPONSES_PER_TURN_MAX);

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll};

    const BASE: usize = 1000;

    struct Rig {
        poll: Poll,
        listener: TcpListener,
        port: HttpPort,
        addr: std::net::SocketAddr,
        renders: usize,
    }

    impl Rig {
        fn new() -> Rig {
            let poll = Poll::new().unwrap();
            let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            poll.registry()
                .register(&mut listener, Token(0), Interest::READABLE)
                .unwrap();
            let addr = listener.local_addr().unwrap();
            Rig {
                poll,
                listener,
                port: HttpPort::new(BASE),
                addr,
                renders: 0,
            }
        }

        /// One loop turn at `now`, as the shell takes it.
        fn turn(&mut self, now: Instant) {
            let mut events = Events::with_capacity(256);
            let timeout = self
                .port
                .poll_timeout(now)
                .unwrap_or(Duration::from_millis(50));
            self.poll
                .poll(&mut events, Some(timeout.min(Duration::from_millis(50))))
                .unwrap();
            let mut ready = Vec::new();
            let mut accept = self.port.wants_accept();
            for e in events.iter() {
                match e.token() {
                    Token(0) => accept = true,
                    Token(t) => ready.push(t - BASE),
                }
            }
            if accept {
                self.port.accept(&self.listener, self.poll.registry(), now);
            }
            let renders = &mut self.renders;
            let mut respond = |route: Route| {
                *renders += 1;
                Reply {
                    status: 200,
                    content_type: "text/plain",
                    body: format!("{route:?}\n").into_bytes(),
                }
            };
            self.port
                .serve(self.poll.registry(), &ready, now, &mut respond);
            self.port.check_invariants();
        }
    }

    fn read_all(s: &mut std::net::TcpStream, rig: &mut Rig, now: Instant) -> String {
        s.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        for _ in 0..200 {
            rig.turn(now);
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        panic!(
            "no end of the answer; got {:?}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn a_request_is_answered_and_the_connection_closed() {
        let mut rig = Rig::new();
        let now = Instant::now();
        let mut s = std::net::TcpStream::connect(rig.addr).unwrap();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let out = read_all(&mut s, &mut rig, now);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
        assert!(out.ends_with("\r\n\r\nReadyz\n"), "{out:?}");
        drop(s);
        for _ in 0..50 {
            rig.turn(now);
            if rig.port.is_empty() {
                return;
            }
        }
        panic!("the connection was not closed after the client closed");
    }

    #[test]
    fn connections_past_the_limit_get_503_and_idle_ones_close_at_their_deadline() {
        let mut rig = Rig::new();
        let now = Instant::now();
        let mut held: Vec<std::net::TcpStream> = (0..HTTP_CONNECTIONS_MAX)
            .map(|_| std::net::TcpStream::connect(rig.addr).unwrap())
            .collect();
        for _ in 0..50 {
            rig.turn(now);
            if rig.port.conns.len() == HTTP_CONNECTIONS_MAX {
                break;
            }
        }
        assert_eq!(rig.port.conns.len(), HTTP_CONNECTIONS_MAX);
        let mut extra = std::net::TcpStream::connect(rig.addr).unwrap();
        let out = read_all(&mut extra, &mut rig, now);
        assert!(out.starts_with("HTTP/1.1 503 "), "{out:?}");
        let wait = rig.port.poll_timeout(now).unwrap();
        assert!(wait <= HTTP_EXCHANGE_TIMEOUT, "{wait:?}");
        // No time passes in this test: the deadline is reached by handing a later `now`.
        rig.turn(now + HTTP_EXCHANGE_TIMEOUT);
        assert!(
            rig.port.is_empty(),
            "idle connections outlived their deadline"
        );
        assert_eq!(rig.port.poll_timeout(now), None);
        let mut buf = [0u8; 8];
        held[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(held[0].read(&mut buf).unwrap(), 0);
        assert_eq!(rig.renders, 0, "nothing was asked, nothing rendered");
    }

    #[test]
    fn at_most_the_per_turn_number_of_answers_is_rendered_in_one_turn() {
        let mut rig = Rig::new();
        let now = Instant::now();
        let n = HTTP_RESPONSES_PER_TURN_MAX + 4;
        let mut clients: Vec<std::net::TcpStream> = (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(rig.addr).unwrap();
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                s
            })
            .collect();
        let mut max_per_turn = 0;
        for _ in 0..100 {
            let before = rig.renders;
            rig.turn(now);
            max_per_turn = max_per_turn.max(rig.renders - before);
            if rig.renders == n {
                break;
            }
        }
        assert_eq!(rig.renders, n, "every request answered in the end");
        // All were ready in one turn: the cap, not the arrival, spread them over two.
        assert_eq!(max_per_turn, HTTP_RESPONSES_PER_TURN_MAX);
        for s in &mut clients {
            let out = read_all(s, &mut rig, now);
            assert!(out.ends_with("Metrics\n"), "{out:?}");
        }
    }
}
