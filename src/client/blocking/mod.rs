//! The one blocking RESP client: a `std::net` connection to one server, used by `kvctl`, the
//! process tests and the benchmarks. The node never uses it (the node must not block); it
//! lives in the library so that there is exactly one copy.
//!
//! Owns: connecting with a timeout, writing commands (one at a time, or queued and flushed
//! together to pipeline them), writing raw bytes (tests that send garbage), and reading
//! replies with the crate's own parser, `client::resp::parse_value`, so that every reply type
//! the parser knows reaches callers unchanged. `cluster` adds the retries across a cluster's
//! members that `kvctl` needs.
//!
//! Invariants:
//! 1. `buf[start..end]` holds the bytes received and not yet returned as replies; a reply is
//!    returned only once the parser saw all of it, and its bytes are then dropped, so
//!    pipelined replies come back in order and none is split or lost.
//! 2. Memory is bounded: unparsed bytes never exceed `Options::reply_size_max` (the parser
//!    bounds each piece; this bounds their sum), and the buffer grows by doubling, so a reply
//!    of n bytes is read with O(log n) allocations.
//! 3. No call waits past its deadline: every read and write carries a socket timeout no
//!    longer than the time left.
//! 4. Bad bytes from the server are an error (`ClientError::Protocol`), never a panic.

pub mod cluster;
pub mod tls;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::client::resp::{encode_command, parse_value, ParseError, REPLY_BULK_SIZE_MAX};
use crate::client::value::Value;

pub use self::tls::ClientTls;

/// Largest amount of unparsed reply bytes held, by default: one reply of this size is read
/// whole before the parser can return it.
pub const REPLY_BUFFER_SIZE_MAX: usize = 256 * 1024 * 1024;

/// A read buffer starts this large; it doubles while a reply does not fit.
const READ_BUFFER_SIZE_MIN: usize = 16 * 1024;

// The largest bulk string the parser accepts must fit in the buffer, with its header.
const _: () = assert!(REPLY_BULK_SIZE_MAX + 64 <= REPLY_BUFFER_SIZE_MAX);
const _: () = assert!(READ_BUFFER_SIZE_MIN <= REPLY_BUFFER_SIZE_MAX);

/// How a connection waits and how much it holds. Every field is explicit at the call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Longest wait for the TCP handshake.
    pub connect_timeout: Duration,
    /// Longest wait for one `call`, `read_reply` or write, unless a deadline is given.
    pub io_timeout: Duration,
    /// Most unparsed reply bytes held (invariant 2).
    pub reply_size_max: usize,
}

impl Options {
    /// The given timeouts, with replies bounded by `REPLY_BUFFER_SIZE_MAX`.
    pub const fn new(connect_timeout: Duration, io_timeout: Duration) -> Options {
        Options {
            connect_timeout,
            io_timeout,
            reply_size_max: REPLY_BUFFER_SIZE_MAX,
        }
    }
}

/// Why a call got no reply.
#[derive(Debug)]
pub enum ClientError {
    /// No connection to `addr` (unresolvable, refused, or no handshake in time).
    Connect { addr: String, source: io::Error },
    /// Writing failed: the server may have read all, part or none of what was written.
    Write(io::Error),
    /// Reading failed (a reset, ...) before a whole reply arrived.
    Read(io::Error),
    /// The server closed the connection before a whole reply arrived.
    Closed,
    /// No whole reply before the deadline.
    TimedOut,
    /// The server's bytes are not a valid reply (or exceed one of the parser's limits).
    Protocol(ParseError),
    /// More than `max` unparsed bytes without a whole reply.
    ReplyTooLarge { len: usize, max: usize },
}

impl ClientError {
    /// The server spoke, but not RESP: retrying elsewhere would not be safe or useful.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            ClientError::Protocol(_) | ClientError::ReplyTooLarge { .. }
        )
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, source } => write!(f, "{addr}: {source}"),
            ClientError::Write(e) => write!(f, "write failed: {e}"),
            ClientError::Read(e) => write!(f, "read failed: {e}"),
            ClientError::Closed => f.write_str("connection closed by the server"),
            ClientError::TimedOut => f.write_str("timed out waiting for a reply"),
            ClientError::Protocol(e) => write!(f, "protocol error in reply: {e}"),
            ClientError::ReplyTooLarge { len, max } => {
                write!(f, "protocol error: reply of over {len} bytes exceeds {max}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// The socket, plain or with TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // A server that closes without close_notify has closed all the same.
            Stream::Tls(t) => match t.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => {
                let n = t.write(buf)?;
                t.flush()?;
                Ok(n)
            }
        }
    }
}

/// A blocking connection to one server.
pub struct Connection {
    stream: Stream,
    options: Options,
    /// Received bytes; `buf[start..end]` are not yet parsed (invariant 1). `buf.len()` is the
    /// allocated, zeroed size, so reads go straight into it.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Commands queued by `queue` and not yet written.
    out: Vec<u8>,
}

impl Connection {
    /// Connect to `addr` (an address, or `host:port` resolved to its first address).
    pub fn connect<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        options: Options,
    ) -> Result<Connection, ClientError> {
        Connection::open(addr, options, None)
    }

    /// Connect to `addr`, over TLS when `tls` is given: the handshake is done here, within the
    /// io timeout, and the server's certificate must carry `addr`'s host.
    pub fn open<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        options: Options,
        tls: Option<&ClientTls>,
    ) -> Result<Connection, ClientError> {
        let fail = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .map_err(fail)?
            .next()
            .ok_or_else(|| fail(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
        let stream = TcpStream::connect_timeout(&sock, options.connect_timeout).map_err(fail)?;
        // Requests are small and answered one by one: Nagle would add a delay to each.
        let _ = stream.set_nodelay(true);
        let stream = match tls {
            None => Stream::Plain(stream),
            Some(tls) => Stream::Tls(Box::new(
                handshake(stream, &addr.to_string(), tls, options).map_err(fail)?,
            )),
        };
        Ok(Connection {
            stream,
            options,
            buf: Vec::new(),
            start: 0,
            end: 0,
            out: Vec::new(),
        })
    }

    /// Change the timeout of later calls (`call`, `read_reply`, writes).
    pub fn set_io_timeout(&mut self, timeout: Duration) {
        self.options.io_timeout = timeout;
    }

    /// Send one command and read its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, ClientError> {
        self.send(args)?;
        self.read_reply()
    }

    /// `call` with string arguments.
    pub fn call_str(&mut self, args: &[&str]) -> Result<Value, ClientError> {
        let args: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.call(&args)
    }

    /// Write one command (and any queued before it) without waiting for a reply.
    pub fn send(&mut self, args: &[&[u8]]) -> Result<(), ClientError> {
        self.queue(args);
        self.flush()
    }

    /// Add a command to the pipeline; `flush` writes every queued command in one go, and
    /// `read_reply` then returns their replies in order.
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode_command(args, &mut self.out);
    }

    /// Write the queued commands, waiting at most the io timeout.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.flush_by(Instant::now() + self.options.io_timeout)
    }

    /// Write the queued commands, waiting until `deadline` at most.
    pub fn flush_by(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let out = std::mem::take(&mut self.out);
        let written = self.write_by(&out, deadline);
        self.out = out;
        self.out.clear();
        written
    }

    /// Write `bytes` as they are (after any queued commands): for tests that send garbage,
    /// or a pipeline encoded elsewhere.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.flush()?;
        self.write_by(bytes, Instant::now() + self.options.io_timeout)
    }

    /// `write_all`, with each write's timeout cut to the time left (invariant 3).
    fn write_by(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), ClientError> {
        let timed_out = || ClientError::Write(io::ErrorKind::TimedOut.into());
        while !bytes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            self.stream
                .set_write_timeout(Some(left))
                .map_err(ClientError::Write)?;
            match self.stream.write(bytes) {
                Ok(0) => return Err(ClientError::Write(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out())
                }
                Err(e) => return Err(ClientError::Write(e)),
            }
        }
        Ok(())
    }

    /// Read the next reply, waiting at most the io timeout.
    pub fn read_reply(&mut self) -> Result<Value, ClientError> {
        self.read_reply_by(Instant::now() + self.options.io_timeout)
    }

    /// Read the next reply, waiting until `deadline` at most.
    pub fn read_reply_by(&mut self, deadline: Instant) -> Result<Value, ClientError> {
        loop {
            match parse_value(&self.buf[self.start..self.end]) {
                Ok(Some((value, used))) => {
                    self.consume(used);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e)),
            }
            self.make_room()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::TimedOut);
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(ClientError::Read)?;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A socket timeout reports WouldBlock on Linux, TimedOut elsewhere.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::TimedOut)
                }
                Err(e) => return Err(ClientError::Read(e)),
            }
        }
    }

    fn consume(&mut self, used: usize) {
        self.start += used;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Ensure free space after `end`: move the unparsed bytes to the front, else double the
    /// buffer, up to `reply_size_max` unparsed bytes (invariant 2).
    fn make_room(&mut self) -> Result<(), ClientError> {
        if self.end < self.buf.len() {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return Ok(());
        }
        let max = self.options.reply_size_max;
        if self.end >= max {
            return Err(ClientError::ReplyTooLarge { len: self.end, max });
        }
        let size = (self.buf.len() * 2).max(READ_BUFFER_SIZE_MIN).min(max);
        self.buf.resize(size, 0);
        Ok(())
    }
}

/// A TLS session over `sock`, its handshake done within `options.io_timeout`.
fn handshake(
    mut sock: TcpStream,
    addr: &str,
    tls: &ClientTls,
    options: Options,
) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = tls::server_name(addr).map_err(io::Error::other)?;
    let mut session =
        rustls::ClientConnection::new(tls.config().clone(), name).map_err(io::Error::other)?;
    sock.set_read_timeout(Some(options.io_timeout))?;
    sock.set_write_timeout(Some(options.io_timeout))?;
    while session.is_handshaking() {
        session.complete_io(&mut sock)?;
    }
    // The last handshake message may still be queued (TLS 1.3 client Finished).
    while session.wants_write() {
        session.complete_io(&mut sock)?;
    }
    Ok(rustls::StreamOwned::new(session, sock))
}

#[cfg(test)]
mod tests;
