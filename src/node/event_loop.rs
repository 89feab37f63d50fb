//! The mio shell around `Node`: the one `Poll`, the two listeners, the signalfd and the
//! snapshot child's pipe, and the wall clock. It owns no protocol state: each turn it waits
//! for readiness (or the node's next deadline), reads the clock once, accepts, and hands the
//! ready connections to `Node::turn`. Everything the simulator does not replace lives here,
//! and nothing else does.
//!
//! It also speaks to systemd (`notify.rs`: `READY=1` once the storage is loaded and the
//! listeners are bound, never waiting for a leader; `WATCHDOG=1` at half of `WATCHDOG_USEC`,
//! the poll timeout waking the loop for it; `STOPPING=1` at SIGTERM/SIGINT) and serves the
//! metrics port (`http_port.rs`) after each turn, with what the node renders.
//!
//! Invariants:
//! 1. The clock is read once per turn, and only here (`Clock::now`, and `wall_ms` for the
//!    leader's TTL time, `Node::set_wall_ms`; besides, the node's apply stopwatch and the
//!    disk's sync timing read it for `/metrics`).
//! 2. Tokens: the listeners, signals and snapshot pipe below `CONN_BASE`; connection `key` is
//!    `CONN_BASE + key` (registered by the node through `MioNet`); HTTP connection `key` is
//!    `HTTP_BASE + key`, far above any connection key.
//! 3. TLS certificates are read at start-up (a missing or bad file stops the start with exit
//!    status 2) and again on SIGHUP; a failed reload keeps the ones in use and says why.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use log::{info, warn};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::clock::Clock;
use super::http_port::{HttpPort, Reply, Route};
use super::net::{MioNet, CONN_BASE};
use super::notify::{watchdog_interval_from_env, Notifier};
use super::snapshot::WriteRate;
use super::storage::RealDisk;
use super::tls::TlsConfigs;
use super::{sys, Listener, Node, NodeError};
use crate::config::{Config, TlsFiles};
use crate::kv::{KvStore, StateMachine};

const PEER_LISTENER: Token = Token(0);
const CLIENT_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const SNAPSHOT_CHILD: Token = Token(3);
const METRICS_LISTENER: Token = Token(4);
/// HTTP connection `key` is `Token(HTTP_BASE + key)`.
const HTTP_BASE: usize = usize::MAX / 2;

/// A snapshot completion that holds the loop longer than this is logged.
const COMPLETION_SLOW: Duration = Duration::from_millis(10);

/// Exit status of a configuration error found at start-up (a TLS file that does not load).
const EXIT_CONFIG: u8 = 2;

/// Events taken from Poll per turn.
const EVENTS_PER_TURN_MAX: usize = 1024;

type RealNode<S> = Node<S, RealDisk, MioNet>;

/// Start a node with the skiplist KV on the config's data directory and serve until SIGTERM
/// or SIGINT. `join`: this node is not in the initial membership; it waits to be added.
pub fn run(cfg: Config, join: bool) -> Result<(), NodeError> {
    let seed = cfg.seed.unwrap_or(cfg.id.0);
    let poll = Poll::new().map_err(|e| NodeError::new(format!("poll: {e}")))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| NodeError::new(format!("poll: {e}")))?;
    let tls_files = cfg.tls.clone();
    let tls = match &tls_files {
        Some(files) => {
            Some(TlsConfigs::load(files).map_err(|e| NodeError(format!("TLS: {e}"), EXIT_CONFIG))?)
        }
        None => None,
    };
    let mut disk = RealDisk::open(&cfg.data_dir, cfg.segment_bytes).map_err(NodeError::new)?;
    disk.set_snapshot_write_rate(WriteRate::from_config(cfg.snapshot_write_rate));
    let start = Clock::now();
    let mut node = Node::start(
        cfg,
        join,
        move || KvStore::new(seed),
        disk,
        MioNet::new(registry, tls),
        start,
        start,
        first_forward_id(),
    )?;
    node.time_applies_with(Clock::now);
    Shell::new(poll, node, tls_files)?.serve()
}

struct Shell<S: StateMachine> {
    poll: Poll,
    node: RealNode<S>,
    peer_listener: TcpListener,
    client_listener: TcpListener,
    signals: OwnedFd,
    stopping: bool,
    /// Reloaded on SIGHUP.
    tls_files: Option<TlsFiles>,
    /// The metrics port (`metrics=` in this node's config line), if configured.
    metrics_listener: Option<TcpListener>,
    http: HttpPort,
    /// systemd's notification socket, when `NOTIFY_SOCKET` names one.
    notifier: Option<Notifier>,
    /// Send `WATCHDOG=1` every this long, next at that instant.
    watchdog: Option<(Duration, std::time::Instant)>,
}

impl<S: StateMachine> Shell<S> {
    fn new(
        poll: Poll,
        node: RealNode<S>,
        tls_files: Option<TlsFiles>,
    ) -> Result<Shell<S>, NodeError> {
        let (peer, client) = node.own_addrs();
        let mut peer_listener = bind(peer, "peer")?;
        let mut client_listener = bind(client, "client")?;
        poll.registry()
            .register(&mut peer_listener, PEER_LISTENER, Interest::READABLE)
            .and_then(|_| {
                poll.registry()
                    .register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            })
            .map_err(|e| NodeError::new(format!("registering listeners: {e}")))?;
        let metrics_listener = match node.own_metrics_addr() {
            Some(addr) => {
                let mut l = bind(addr, "metrics scrape")?;
                poll.registry()
                    .register(&mut l, METRICS_LISTENER, Interest::READABLE)
                    .map_err(|e| NodeError::new(format!("registering the metrics port: {e}")))?;
                info!("serving /metrics, /livez, /readyz on {addr}");
                Some(l)
            }
            None => None,
        };
        let signals = sys::signal_fd(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(|e| NodeError::new(format!("signalfd: {e}")))?;
        let notifier = match Notifier::from_env() {
            Ok(n) => n,
            Err(e) => {
                warn!("not telling systemd anything: {e}");
                None
            }
        };
        let watchdog = notifier
            .as_ref()
            .and_then(|_| watchdog_interval_from_env())
            .map(|every| (every, Clock::now()));
        let shell = Shell {
            poll,
            node,
            peer_listener,
            client_listener,
            signals,
            stopping: false,
            tls_files,
            metrics_listener,
            http: HttpPort::new(HTTP_BASE),
            notifier,
            watchdog,
        };
        shell
            .register_fd(shell.signals.as_raw_fd(), SIGNALS)
            .map_err(|e| NodeError::new(format!("registering signals: {e}")))?;
        let tls = match shell.tls_files {
            Some(_) => " (TLS; mutual TLS between members)",
            None => "",
        };
        info!("listening: peers on {peer}, clients on {client}{tls}");
        Ok(shell)
    }

    /// Run the loop until SIGTERM or SIGINT (and the node's graceful stop, `stop.rs`), or a
    /// second one.
    fn serve(mut self) -> Result<(), NodeError> {
        let mut events = Events::with_capacity(EVENTS_PER_TURN_MAX);
        let mut ready = Vec::with_capacity(EVENTS_PER_TURN_MAX);
        let mut http_ready = Vec::new();
        // Storage is loaded (`Node::start`) and the listeners are bound: ready, whether or
        // not a leader exists (waiting for one would deadlock a cluster-wide restart).
        self.notify("READY=1");
        while !self.stopping {
            let timeout = self.poll_timeout(Clock::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NodeError::new(format!("poll: {e}")));
            }
            let now = Clock::now();
            self.node.set_now(now);
            self.node.set_wall_ms(wall_ms());
            ready.clear();
            http_ready.clear();
            for event in events.iter() {
                let readable = event.is_readable() || event.is_read_closed();
                match event.token() {
                    PEER_LISTENER => self.accept(Listener::Peer),
                    CLIENT_LISTENER => self.accept(Listener::Client),
                    SIGNALS => self.handle_signals(),
                    SNAPSHOT_CHILD => self.snapshot_child_ended(),
                    METRICS_LISTENER => self.accept_http(now),
                    Token(t) if t >= HTTP_BASE => http_ready.push(t - HTTP_BASE),
                    Token(t) if t >= CONN_BASE => {
                        if event.is_read_closed() || event.is_error() {
                            self.node.read_to_end(t - CONN_BASE);
                        }
                        ready.push((t - CONN_BASE, readable));
                    }
                    Token(t) => unreachable!("unknown token {t}"),
                }
            }
            self.node.turn(now, &ready)?;
            if self.node.stop_ready() {
                self.stopping = true;
            }
            self.serve_http(now, &http_ready);
            self.watchdog(now);
            if let Some(fd) = self.node.take_watch_fd() {
                if let Err(e) = self.register_fd(fd, SNAPSHOT_CHILD) {
                    warn!("registering the snapshot child's pipe: {e}");
                }
            }
        }
        let _ = self.poll.registry().deregister(&mut self.peer_listener);
        let _ = self.poll.registry().deregister(&mut self.client_listener);
        self.node.shutdown()
    }

    /// The loop's next deadline: the node's, the metrics port's, the watchdog's.
    fn poll_timeout(&self, now: std::time::Instant) -> Duration {
        let mut t = self.node.poll_timeout(now);
        if let Some(h) = self.http.poll_timeout(now) {
            t = t.min(h);
        }
        if let Some((_, next)) = self.watchdog {
            t = t.min(next.saturating_duration_since(now));
        }
        t
    }

    fn notify(&mut self, state: &str) {
        if let Some(n) = self.notifier.as_mut() {
            n.notify(state);
        }
    }

    /// `WATCHDOG=1` when due: the loop turned, so it is not wedged.
    fn watchdog(&mut self, now: std::time::Instant) {
        let Some((every, next)) = self.watchdog else {
            return;
        };
        if now >= next {
            self.notify("WATCHDOG=1");
            self.watchdog = Some((every, now + every));
        }
    }

    fn accept_http(&mut self, now: std::time::Instant) {
        if let Some(l) = &self.metrics_listener {
            self.http.accept(l, self.poll.registry(), now);
        }
    }

    /// Answer the metrics port's requests after the turn, from the state it left. One
    /// rendering of `/metrics` serves every scrape of the turn.
    fn serve_http(&mut self, now: std::time::Instant, ready: &[usize]) {
        if self.http.wants_accept() {
            self.accept_http(now);
        }
        if self.http.is_empty() {
            return;
        }
        let node = &self.node;
        let mut metrics: Option<Vec<u8>> = None;
        let mut respond = |route: Route| match route {
            Route::Metrics => Reply {
                status: 200,
                content_type: crate::metrics::CONTENT_TYPE,
                body: metrics
                    .get_or_insert_with(|| node.metrics_text().into_bytes())
                    .clone(),
            },
            Route::Livez => Reply {
                status: 200,
                content_type: "text/plain",
                body: b"ok\n".to_vec(),
            },
            Route::Readyz => match node.readiness() {
                Ok(()) => Reply {
                    status: 200,
                    content_type: "text/plain",
                    body: b"ready\n".to_vec(),
                },
                Err(why) => Reply {
                    status: 503,
                    content_type: "text/plain",
                    body: format!("not ready: {why}\n").into_bytes(),
                },
            },
        };
        self.http
            .serve(self.poll.registry(), ready, now, &mut respond);
        if cfg!(debug_assertions) {
            self.http.check_invariants();
        }
    }

    fn accept(&mut self, listener: Listener) {
        loop {
            let l = match listener {
                Listener::Peer => &self.peer_listener,
                Listener::Client => &self.client_listener,
            };
            match l.accept() {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    match self.node.net_mut().accepted(tcp, listener) {
                        Ok(stream) => self.node.accept(stream, addr, listener),
                        Err(e) => warn!("a connection from {addr}: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    /// Everything slow in finishing a snapshot (unlinking, compaction, reaping) is deferred
    /// or bounded; a completion that still stalls the loop is worth a line.
    fn snapshot_child_ended(&mut self) {
        let t0 = Clock::now();
        self.node.snapshot_child_ended();
        let took = Clock::now().duration_since(t0);
        if took > COMPLETION_SLOW {
            warn!("finishing a snapshot held the loop for {took:?}");
        }
    }

    fn handle_signals(&mut self) {
        let sigs = match sys::read_signals(self.signals.as_fd()) {
            Ok(sigs) => sigs,
            Err(e) => return warn!("reading signals: {e}"),
        };
        if sigs.contains(&libc::SIGHUP) {
            self.reload_tls();
        }
        // SIGTERM and SIGINT: the first begins a graceful stop (a leader hands off first:
        // `stop.rs`); a second one stops at once.
        let stops = sigs.iter().filter(|&&s| s != libc::SIGHUP).count();
        if stops == 0 {
            return;
        }
        if self.node.stopping() {
            info!("signal {sigs:?} again: stopping now");
            self.stopping = true;
            return;
        }
        info!("signal {sigs:?}: shutting down");
        self.notify("STOPPING=1");
        self.node.begin_stop();
        if stops > 1 {
            self.stopping = true;
        }
    }

    /// SIGHUP: read the TLS files again; new connections use them, open ones keep theirs.
    fn reload_tls(&mut self) {
        let Some(files) = &self.tls_files else {
            info!("SIGHUP: no TLS configured, nothing to reload");
            return;
        };
        match TlsConfigs::load(files) {
            Ok(cfgs) => {
                self.node.net_mut().set_tls(cfgs);
                info!(
                    "SIGHUP: reloaded TLS from {}, {} and {}",
                    files.cert.display(),
                    files.key.display(),
                    files.ca.display()
                );
            }
            Err(e) => warn!("SIGHUP: TLS reload failed, keeping the certificates in use: {e}"),
        }
    }

    fn register_fd(&self, fd: RawFd, token: Token) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
    }
}

/// Milliseconds since the Unix epoch: the leader's time for TTLs (see `node/ttl.rs`).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch: larger at every start (see `Node::start`), and far
/// from wrapping the forwarded-request ids counted up from it.
fn first_forward_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .map_err(|e| NodeError::new(format!("cannot listen for {what}s on {addr}: {e}")))
}
