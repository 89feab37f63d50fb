//! The network as the node sees it: the `Net` seam, and `MioNet`, its implementation on mio.
//!
//! The node owns every connection's state (buffers, roles, handshakes, budgets, caps) and
//! reaches sockets only through `Net` and the `Net::Stream`s it hands out, which read and
//! write like non-blocking sockets (`WouldBlock` when there is nothing). The daemon passes
//! `MioNet` (TCP streams registered with its `Poll`); the simulator passes in-memory pipes
//! between its nodes, which lose, duplicate, delay and partition whole frames.
//!
//! Listening sockets are not part of the seam: the shell (`event_loop.rs`) accepts, wraps the
//! socket with `MioNet::accepted` and hands the stream to `Node::accept`.
//!
//! TLS is a property of the stream (`MioStream::Tls`, see `tls.rs`): with `tls_cert` set,
//! every stream `MioNet` hands out reads and writes plaintext through a TLS session, and the
//! node's code is the same with and without it. The configurations are swapped by
//! `set_tls` (SIGHUP); connections already open keep the session they have.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::tls::{TlsConfigs, TlsSocket, TlsStream};
use super::Listener;

/// A connection's token in Poll is `CONN_BASE + its slab key`.
pub const CONN_BASE: usize = 16;

/// How a non-blocking connect stands.
#[derive(Debug)]
pub enum ConnectState {
    Pending,
    Connected,
    Failed(io::Error),
}

/// What a connection needs of its stream besides reading and writing like a non-blocking
/// socket. A plain socket has nothing of its own to say (the defaults).
pub trait NetStream: io::Read + io::Write {
    /// The stream holds bytes of its own to send (TLS records): the connection asks for
    /// writability and calls `flush` until it has none.
    fn has_buffered_output(&self) -> bool {
        false
    }

    /// A handshake (TLS) is not over yet: the connection must finish it by a deadline.
    fn handshaking(&self) -> bool {
        false
    }

    /// A read that returned fewer bytes than asked means the stream had no more at that moment,
    /// and its next arrival raises a new readiness edge, so `Conn` need not read again to see
    /// `WouldBlock` (`conn.rs`). True of a plain TCP socket; not of TLS, whose short read of
    /// plaintext says nothing of the records still in the socket.
    fn drained_by_short_read(&self) -> bool {
        false
    }
}

pub trait Net {
    type Stream: NetStream;

    /// Start connecting to `addr` (non-blocking: `connect_state` tells when it is done).
    fn connect(&mut self, addr: SocketAddr) -> io::Result<Self::Stream>;
    fn connect_state(&mut self, stream: &Self::Stream) -> ConnectState;
    /// The remote address, when known.
    fn peer_addr(&self, stream: &Self::Stream) -> Option<SocketAddr>;
    /// Ask for readiness events of connection `key`.
    fn register(
        &mut self,
        stream: &mut Self::Stream,
        key: usize,
        interest: Interest,
    ) -> io::Result<()>;
    fn reregister(
        &mut self,
        stream: &mut Self::Stream,
        key: usize,
        interest: Interest,
    ) -> io::Result<()>;
    fn deregister(&mut self, stream: &mut Self::Stream);
}

/// A TCP connection, plain or with TLS.
pub enum MioStream {
    Plain(TcpStream),
    Tls(Box<TlsSocket<TcpStream>>),
}

impl MioStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            MioStream::Plain(s) => s,
            MioStream::Tls(t) => t.socket(),
        }
    }

    fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            MioStream::Plain(s) => s,
            MioStream::Tls(t) => t.socket_mut(),
        }
    }
}

impl Read for MioStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MioStream::Plain(s) => s.read(buf),
            MioStream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for MioStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            MioStream::Plain(s) => s.write(buf),
            MioStream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            MioStream::Plain(s) => s.flush(),
            MioStream::Tls(t) => t.flush(),
        }
    }
}

impl NetStream for MioStream {
    fn has_buffered_output(&self) -> bool {
        matches!(self, MioStream::Tls(t) if t.has_buffered_output())
    }

    fn handshaking(&self) -> bool {
        matches!(self, MioStream::Tls(t) if t.handshaking())
    }

    fn drained_by_short_read(&self) -> bool {
        matches!(self, MioStream::Plain(_))
    }
}

/// TCP through mio, with TLS when configured.
pub struct MioNet {
    registry: Registry,
    tls: Option<TlsConfigs>,
}

impl MioNet {
    pub fn new(registry: Registry, tls: Option<TlsConfigs>) -> MioNet {
        MioNet { registry, tls }
    }

    /// New connections use these configurations from now on (SIGHUP).
    pub fn set_tls(&mut self, tls: TlsConfigs) {
        self.tls = Some(tls);
    }

    /// A socket a listener accepted, as the node's stream: with TLS, the server side of a
    /// session (the peer port's demands a certificate signed by `tls_ca`).
    pub fn accepted(&self, tcp: TcpStream, listener: Listener) -> io::Result<MioStream> {
        let Some(tls) = &self.tls else {
            return Ok(MioStream::Plain(tcp));
        };
        let cfg = match listener {
            Listener::Peer => &tls.peer_accept,
            Listener::Client => &tls.client_port,
        };
        let session = TlsStream::accept(cfg).map_err(|e| io::Error::other(e.0))?;
        Ok(MioStream::Tls(Box::new(TlsSocket::new(tcp, session))))
    }
}

impl Net for MioNet {
    type Stream = MioStream;

    fn connect(&mut self, addr: SocketAddr) -> io::Result<MioStream> {
        let tcp = TcpStream::connect(addr)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(MioStream::Plain(tcp));
        };
        // The peer's certificate must name the IP address it is configured at.
        let session =
            TlsStream::dial(&tls.peer_dial, addr.ip()).map_err(|e| io::Error::other(e.0))?;
        Ok(MioStream::Tls(Box::new(TlsSocket::new(tcp, session))))
    }

    fn connect_state(&mut self, stream: &MioStream) -> ConnectState {
        let stream = stream.tcp();
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => ConnectState::Failed(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => ConnectState::Connected,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
                Err(e) => ConnectState::Failed(e),
            },
        }
    }

    fn peer_addr(&self, stream: &MioStream) -> Option<SocketAddr> {
        stream.tcp().peer_addr().ok()
    }

    fn register(&mut self, s: &mut MioStream, key: usize, interest: Interest) -> io::Result<()> {
        self.registry
            .register(s.tcp_mut(), Token(CONN_BASE + key), interest)
    }

    fn reregister(&mut self, s: &mut MioStream, key: usize, interest: Interest) -> io::Result<()> {
        self.registry
            .reregister(s.tcp_mut(), Token(CONN_BASE + key), interest)
    }

    fn deregister(&mut self, s: &mut MioStream) {
        let _ = self.registry.deregister(s.tcp_mut());
    }
}
