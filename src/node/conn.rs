//! One connection: its stream (a TCP socket, or the simulator's pipe; see `net.rs`), a bounded
//! read buffer and a write queue with an offset.
//!
//! Reading costs one `recv` per arrival, not two: the socket is read straight into the
//! buffer's free room (zeroed once when the buffer grows, never per read), and a read that
//! returns less than the room it was given means the socket is drained for now, so the
//! `recv` that would only say `EAGAIN` is not made. That is safe with edge-triggered
//! readiness because Linux raises a new edge for every arrival after the drained moment. The
//! exceptions: a peer that half-closed (its end-of-file raised its edge together with the
//! data, so a connection told so, `read_to_end`, reads on until EOF), and a stream whose short
//! read does not mean drained (TLS: `NetStream::drained_by_short_read`).
//!
//! Invariants:
//! 1. `rbuf[..rlen]` (the bytes read) never exceeds `read_cap` bytes: a peer or client that
//!    sends more than one frame's worth without it parsing is cut off, never buffered without
//!    bound; `rpos <= rlen <= rbuf.len() <= read_cap`.
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

/// Initial size of a read buffer; it doubles (up to the cap) when a read finds it full.
const READ_BUFFER_MIN: usize = 4096;
/// An idle read buffer larger than this is given back (a large request passed through).
const READ_BUFFER_KEEP_MAX: usize = 1024 * 1024;

pub struct Conn<T> {
    pub stream: T,
    /// The read buffer: `rbuf[rpos..rlen]` is read and not yet consumed, `rbuf[rlen..]` is
    /// free room (initialized, so reads go straight into it).
    rbuf: Vec<u8>,
    /// `rbuf[..rpos]` was consumed; compacted before the next read.
    rpos: usize,
    rlen: usize,
    /// The other side closed its end: read until EOF, not only until a short read.
    read_to_end: bool,
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
            rlen: 0,
            read_to_end: false,
            read_cap,
            wbuf: Vec::new(),
            wpos: 0,
            write_cap,
            connecting: false,
            read_paused: false,
            close_after_flush: false,
        }
    }

    /// The readiness event said the other side closed its end (or the socket failed): read
    /// until EOF or an error from now on (see the module header).
    pub fn read_to_end(&mut self) {
        self.read_to_end = true;
    }

    /// Read what the socket has, up to `budget` bytes, appending to the read buffer.
    /// Returns the status and how many bytes arrived. A full buffer is an error only if the
    /// caller could not parse anything out of it (see `check_overflow`).
    pub fn read_some(&mut self, budget: usize) -> Result<(ReadStatus, usize), ConnError> {
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        let mut read = 0;
        while read < budget {
            if self.rlen == self.read_cap {
                return Ok((ReadStatus::More, read));
            }
            if self.rlen == self.rbuf.len() {
                // Grow (zeroed once, here): double, within the cap (checked before allocating).
                let size = (self.rbuf.len() * 2).clamp(READ_BUFFER_MIN, self.read_cap);
                self.rbuf.resize(size, 0);
            }
            let want = (self.rbuf.len() - self.rlen).min(budget - read);
            match self
                .stream
                .read(&mut self.rbuf[self.rlen..self.rlen + want])
            {
                Ok(0) => return Ok((ReadStatus::Closed, read)),
                Ok(n) => {
                    self.rlen += n;
                    read += n;
                    if n < want && !self.read_to_end && self.stream.drained_by_short_read() {
                        // Drained: the next arrival raises a new edge (module header).
                        return Ok((ReadStatus::WouldBlock, read));
                    }
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
        if self.rlen - self.rpos >= self.read_cap {
            return Err(ConnError::ReadOverflow {
                len: self.rlen - self.rpos,
                cap: self.read_cap,
            });
        }
        Ok(())
    }

    /// The bytes read and not yet consumed.
    pub fn input(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rlen]
    }

    /// Mark the first `n` bytes of input as parsed.
    pub fn consume(&mut self, n: usize) {
        let left = self.rlen - self.rpos;
        assert!(n <= left, "consume {n} of {left} buffered bytes");
        self.rpos += n;
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
            if self.rbuf.len() > READ_BUFFER_KEEP_MAX {
                self.rbuf = Vec::new();
            }
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

    /// Whether `len` more bytes fit under the write cap (what `queue` would refuse).
    pub fn has_room(&self, len: usize) -> bool {
        self.pending_output() + len <= self.write_cap
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
            self.rpos <= self.rlen && self.rlen <= self.rbuf.len(),
            "read positions {} and {} past the buffer of {}",
            self.rpos,
            self.rlen,
            self.rbuf.len()
        );
        assert!(
            self.rbuf.len() <= self.read_cap,
            "a read buffer of {} bytes exceeds the cap of {}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::io::{Read, Write};

    /// A stream that hands out scripted chunks, counting the reads made.
    #[derive(Default)]
    struct Script {
        /// Each read returns (up to the buffer's size of) the front chunk; an empty queue
        /// reads `WouldBlock`, or EOF once `eof`.
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
        reads: usize,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let Some(front) = self.chunks.front_mut() else {
                return match self.eof {
                    true => Ok(0),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                };
            };
            let n = buf.len().min(front.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            Ok(n)
        }
    }

    /// As a plain TCP socket: a short read means drained.
    impl NetStream for Script {
        fn drained_by_short_read(&self) -> bool {
            true
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(chunks: &[&[u8]], eof: bool) -> Conn<Script> {
        let stream = Script {
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
            eof,
            reads: 0,
        };
        Conn::client(stream)
    }

    #[test]
    fn a_short_read_means_drained_and_costs_no_second_read() {
        let mut c = conn(&[b"*1\r\n$4\r\nPING\r\n"], false);
        let (status, got) = c.read_some(1 << 20).unwrap();
        assert_eq!((status, got), (ReadStatus::WouldBlock, 14));
        assert_eq!(c.stream.reads, 1, "no recv that could only say EAGAIN");
        assert_eq!(c.input(), b"*1\r\n$4\r\nPING\r\n");
        c.check_invariants();
    }

    #[test]
    fn a_half_closed_peer_is_read_to_its_end_of_file() {
        // The data and the FIN raised one edge: a short read must not end the reading.
        let mut c = conn(&[b"PING\r\n"], true);
        c.read_to_end();
        let (status, got) = c.read_some(1 << 20).unwrap();
        assert_eq!((status, got), (ReadStatus::Closed, 6));
        assert_eq!(c.input(), b"PING\r\n");
    }

    #[test]
    fn a_full_buffer_grows_and_keeps_reading_and_consumed_bytes_are_compacted_away() {
        // 10,000 bytes arrive at once: the 4 KiB buffer fills (not short), doubles, and
        // the read that finds room left over is the short one.
        let big = vec![b'x'; 10_000];
        let mut c = conn(&[&big], false);
        let (status, got) = c.read_some(1 << 20).unwrap();
        assert_eq!((status, got), (ReadStatus::WouldBlock, 10_000));
        assert_eq!(c.input(), &big[..]);
        c.consume(9_000);
        c.stream.chunks.push_back(b"tail".to_vec());
        let (status, got) = c.read_some(1 << 20).unwrap();
        assert_eq!((status, got), (ReadStatus::WouldBlock, 4));
        let mut want = vec![b'x'; 1_000];
        want.extend_from_slice(b"tail");
        assert_eq!(c.input(), &want[..]);
        c.consume(want.len());
        assert!(c.input().is_empty());
        c.check_invariants();
    }

    #[test]
    fn the_budget_and_the_cap_bound_what_one_call_reads() {
        let big = vec![b'y'; 100_000];
        let mut c = conn(&[&big], false);
        let (status, got) = c.read_some(8192).unwrap();
        assert_eq!((status, got), (ReadStatus::More, 8192));
        let mut small = Conn::new(
            Script {
                chunks: [big.clone()].into(),
                ..Script::default()
            },
            5000,
            1024,
        );
        let (status, got) = small.read_some(1 << 20).unwrap();
        assert_eq!((status, got), (ReadStatus::More, 5000));
        assert!(
            small.check_overflow().is_err(),
            "a cap-full buffer overflows"
        );
        small.check_invariants();
    }
}
