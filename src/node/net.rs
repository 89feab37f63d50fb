//! The network as the node sees it: the `Net` seam, and `MioNet`, its implementation on mio.
//!
//! The node owns every connection's state (buffers, roles, handshakes, budgets, caps) and
//! reaches sockets only through `Net` and the `Net::Stream`s it hands out, which read and
//! write like non-blocking sockets (`WouldBlock` when there is nothing). The daemon passes
//! `MioNet` (TCP streams registered with its `Poll`); the simulator passes in-memory pipes
//! between its nodes, which lose, duplicate, delay and partition whole frames.
//!
//! Listening sockets are not part of the seam: the shell (`event_loop.rs`) accepts and hands
//! the stream to `Node::accept`.

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// A connection's token in Poll is `CONN_BASE + its slab key`.
pub const CONN_BASE: usize = 16;

/// How a non-blocking connect stands.
#[derive(Debug)]
pub enum ConnectState {
    Pending,
    Connected,
    Failed(io::Error),
}

pub trait Net {
    type Stream: io::Read + io::Write;

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

/// TCP through mio.
pub struct MioNet {
    registry: Registry,
}

impl MioNet {
    pub fn new(registry: Registry) -> MioNet {
        MioNet { registry }
    }
}

impl Net for MioNet {
    type Stream = TcpStream;

    fn connect(&mut self, addr: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(addr)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn connect_state(&mut self, stream: &TcpStream) -> ConnectState {
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => ConnectState::Failed(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => ConnectState::Connected,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectState::Pending,
                Err(e) => ConnectState::Failed(e),
            },
        }
    }

    fn peer_addr(&self, stream: &TcpStream) -> Option<SocketAddr> {
        stream.peer_addr().ok()
    }

    fn register(&mut self, s: &mut TcpStream, key: usize, interest: Interest) -> io::Result<()> {
        self.registry.register(s, Token(CONN_BASE + key), interest)
    }

    fn reregister(&mut self, s: &mut TcpStream, key: usize, interest: Interest) -> io::Result<()> {
        self.registry
            .reregister(s, Token(CONN_BASE + key), interest)
    }

    fn deregister(&mut self, s: &mut TcpStream) {
        let _ = self.registry.deregister(s);
    }
}
