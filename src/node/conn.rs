//! One connection: its stream (a TCP socket, or the simulator's pipe; see `net.rs`), a bounded
//! read buffer and a write queue with an offset.
//!
//! Invariants:
//! 1. `rbuf` never holds more than `read_cap` bytes: a peer or client that sends more than one
//!    frame's worth without it parsing is cut off, never buffered without bound.
//! 2. `wbuf[wpos..]` is what is still to be written; it never exceeds `write_cap` bytes (a
//!    reader that never reads is disconnected rather than allowed to grow our memory).
//! 3. The interest registered with Poll is derived from state (`interest()`), never toggled
//!    at call sites. Bytes the stream holds of its own (TLS records, `NetStream`) count as
//!    output to flush.

use std::io;

use super::net::NetStream;
use crate::limits;
use mio::Interest;

/// What one read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// The socket has no more bytes for now.
    WouldBlock,
    /// The budget ran out or the buffer is full: parse, then read again.
    More,
    /// The other side closed its end.
    Closed,
}

/// Why a connection must be closed.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// More unparsed input than one request or frame may take.
    ReadOverflow {
        len: usize,
        cap: usize,
    },
    /// More queued output than the reader takes.
    WriteOverflow {
        len: usize,
        cap: usize,
    },
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::ReadOverflow { len, cap } => {
                write!(f, "{len} unparsed bytes exceed the input cap of {cap}")
            }
            ConnError::WriteOverflow { len, cap } => {
                write!(f, "{len} queued bytes exceed the output cap of {cap}")
            }
        }
    }
}

pub struct Conn<T> {
    pub stream: T,
    rbuf: Vec<u8>,
    /// `rbuf[..rpos]` was consumed; compacted before the next read.
    rpos: usize,
    read_cap: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    write_cap: usize,
    /// Still waiting for a non-blocking connect to finish.
    pub connecting: bool,
    /// Stop reading (back-pressure: too many requests of this client are pending).
    pub read_paused: bool,
    /// Close once everything queued has been written (QUIT, or a protocol error reply).
    pub close_after_flush: bool,
}

impl<T: NetStream> Conn<T> {
    /// A peer connection: room for one largest frame (twice, so a frame and the start of the
    /// next fit), and a peer's whole output queue.
    pub fn peer(stream: T) -> Conn<T> {
        Conn::new(
            stream,
            limits::FRAME_SIZE_MAX * 2,
            limits::PEER_OUTPUT_SIZE_MAX,
        )
    }

    /// A client connection: room for one largest request and its framing.
    pub fn client(stream: T) -> Conn<T> {
        Conn::new(
            stream,
            limits::CLIENT_REQUEST_SIZE_MAX + 1024 * 1024,
            limits::CLIENT_OUTPUT_SIZE_MAX,
        )
    }

    fn new(stream: T, read_cap: usize, write_cap: usize) -> Conn<T> {
        Conn {
            stream,
            rbuf: Vec::new(),
            rpos: 0,
            read_cap,
            wbuf: Vec::new(),
            wpos: 0,
            write_cap,
            connecting: false,
            read_paused: false,
            close_after_flush: false,
        }
    }

    /// Read what the socket has, up to `budget` bytes, appending to the read buffer.
    /// Returns the status and how many bytes arrived. A full buffer is an error only if the
    /// caller could not parse anything out of it (see `check_overflow`).
    pub fn read_some(&mut self, budget: usize) -> Result<(ReadStatus, usize), ConnError> {
        if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        let mut read = 0;
        let mut chunk = [0u8; 64 * 1024];
        while read < budget {
            let room = self.read_cap.saturating_sub(self.rbuf.len());
            if room == 0 {
                return Ok((ReadStatus::More, read));
            }
            let want = room.min(chunk.len()).min(budget - read);
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => return Ok((ReadStatus::Closed, read)),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((ReadStatus::WouldBlock, read))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok((ReadStatus::More, read))
    }

    /// After parsing: a buffer still full means one request or frame is larger than the cap.
    pub fn check_overflow(&self) -> Result<(), ConnError> {
        if self.rbuf.len() - self.rpos >= self.read_cap {
            return Err(ConnError::ReadOverflow {
                len: self.rbuf.len() - self.rpos,
                cap: self.read_cap,
            });
        }
        Ok(())
    }

    /// The bytes read and not yet consumed.
    pub fn input(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    /// Mark the first `n` bytes of input as parsed.
    pub fn consume(&mut self, n: usize) {
        let left = self.rbuf.len() - self.rpos;
        assert!(n <= left, "consume {n} of {left} buffered bytes");
        self.rpos += n;
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
    }

    /// Queue bytes for writing. Fails (and the caller closes the connection) past the cap.
    pub fn queue(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let pending = self.pending_output() + bytes.len();
        if pending > self.write_cap {
            return Err(ConnError::WriteOverflow {
                len: pending,
                cap: self.write_cap,
            });
        }
        self.output_buf().extend_from_slice(bytes);
        Ok(())
    }

    /// The output buffer, to encode straight into (no copy). The caller checks the room it
    /// needs against `pending_output` first.
    pub fn output_buf(&mut self) -> &mut Vec<u8> {
        if self.wpos > 0 && self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        &mut self.wbuf
    }

    pub fn pending_output(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Write queued bytes until the socket would block. A partial write is normal.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        if self.connecting {
            return Ok(());
        }
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    return Err(ConnError::Io(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write 0",
                    )))
                }
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 1024 * 1024 && self.wpos * 2 > self.wbuf.len() {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        // What the stream holds of its own (TLS records): sent now or at the next writability.
        match self.stream.flush() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// The readiness this connection needs, derived from its state.
    pub fn interest(&self) -> Interest {
        if self.connecting || self.pending_output() > 0 || self.stream.has_buffered_output() {
            if self.read_paused {
                Interest::WRITABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            }
        } else {
            Interest::READABLE
        }
    }

    /// Invariants 1 and 2.
    pub fn check_invariants(&self) {
        assert!(
            self.rpos <= self.rbuf.len(),
            "read position past the buffer"
        );
        assert!(
            self.rbuf.len() <= self.read_cap,
            "{} buffered input bytes exceed the cap of {}",
            self.rbuf.len(),
            self.read_cap
        );
        assert!(
            self.wpos <= self.wbuf.len(),
            "write position past the buffer"
        );
    }

    /// Everything is written and the connection asked to be closed after that.
    pub fn done(&self) -> bool {
        self.close_after_flush && self.pending_output() == 0 && !self.stream.has_buffered_output()
    }
}
