//! Peer frames: the header, the check-then-decode entry points, `DecodeError`, and the bodies
//! that carry no Raft types (Hello, ClientRequest, ClientReply). The Raft, SnapshotChunk and
//! SnapshotAck bodies are in `peer.rs`.
//!
//! Owns: the byte layout of everything two kvraft processes say to each other.
//! Must not: allocate anything sized by a length it has not checked against both its limit and
//! the bytes actually present; recurse; panic on any input.
//!
//! Invariants:
//! 1. `decode` returns `Incomplete` only when `buf` is a proper prefix of a frame whose header
//!    (once present) is acceptable; the frame's length and kind are judged from the header
//!    alone (`peek_header`), before any body byte is awaited.
//! 2. Every count is checked against its limit *and* against the bytes remaining (at the
//!    item's minimum size) before a `Vec` is sized by it; every length against its limit and
//!    the bytes present before it is copied.
//! 3. The encoding is canonical: for any `buf` that decodes to `(f, n)`, `encode(f)` is exactly
//!    `buf[..n]`; for any `f` that `encode` accepts, `decode(encode(f)) == (f, len)`. `encode`
//!    asserts everything `decode` checks (node ids, limits, conf state and chunk ranges).
//!
//! # Byte layout
//!
//! All integers are big-endian (byteorder). A `bool` is one byte, 0 or 1 (anything else is
//! malformed), so the encoding is canonical: decoding then re-encoding gives the same bytes.
//!
//! Every frame:
//! ```text
//! offset size field
//!      0    4 body length n (u32); FRAME_HEADER_SIZE + n <= FRAME_SIZE_MAX
//!      4    1 kind (KIND_*)
//!      5    n body, exactly n bytes (trailing bytes are malformed)
//! ```
//!
//! Kinds and their bodies (offsets from the start of the body):
//! ```text
//! kind 1 Hello (first frame on every peer connection, both directions), 30 bytes:
//!      0    4 magic MAGIC = b"KVRF" (u32)
//!      4    2 protocol version PROTOCOL_VERSION (u16)
//!      6    8 cluster id (u64, see `cluster_id`)
//!     14    8 from: NodeId, != 0
//!     22    8 to: NodeId, != 0
//!   The magic and version are checked before the length, so a peer speaking another version
//!   (whose Hello may be longer) is refused as a Handshake error, not as malformed.
//!
//! kind 2 Raft: a raft::Message, see peer.rs.
//! kind 3 SnapshotChunk: see peer.rs.
//! kind 4 SnapshotAck: see peer.rs.
//!
//! kind 5 ClientRequest (a follower forwards a client command to the leader):
//!      0    8 request id (u64, the follower's)
//!      8    4 argument count c (u32), c <= CLIENT_ARGS_MAX
//!     12      c times: length l (u32), then l bytes
//!      m    1 the client's RESP protocol (u8): 2 or 3, so the leader encodes the reply in
//!             it (added in protocol version 2; m is the offset after the arguments)
//!
//! kind 6 ClientReply (the leader's RESP-encoded reply to a forwarded command):
//!      0    8 request id (u64)
//!      8    4 reply length l (u32)
//!     12    l RESP bytes (opaque here)
//! ```

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use crate::limits::{CLIENT_ARGS_MAX, FRAME_HEADER_SIZE, FRAME_SIZE_MAX};
use crate::raft::message::Message;
use crate::raft::types::{EntryId, NodeId, SnapshotMeta, Term};

/// The first four bytes of every Hello body: "KVRF".
pub const MAGIC: u32 = u32::from_be_bytes(*b"KVRF");
/// The version of this layout; a peer with another version is refused at the Hello.
/// Version 2: ClientRequest carries the client's RESP protocol.
pub const PROTOCOL_VERSION: u16 = 2;

pub const KIND_HELLO: u8 = 1;
pub const KIND_RAFT: u8 = 2;
pub const KIND_SNAPSHOT_CHUNK: u8 = 3;
pub const KIND_SNAPSHOT_ACK: u8 = 4;
pub const KIND_CLIENT_REQUEST: u8 = 5;
pub const KIND_CLIENT_REPLY: u8 = 6;

/// Largest frame body, in bytes.
pub const BODY_SIZE_MAX: usize = FRAME_SIZE_MAX - FRAME_HEADER_SIZE;
const HELLO_BODY_SIZE: usize = 30;

const _: () = assert!(FRAME_HEADER_SIZE == 5);

/// One peer frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// First frame on every peer connection, both directions.
    Hello {
        cluster_id: u64,
        from: NodeId,
        to: NodeId,
    },
    /// Any Raft message.
    Raft(Message),
    /// One chunk of a snapshot file streamed leader -> follower.
    SnapshotChunk {
        term: Term,
        from: NodeId,
        to: NodeId,
        meta: SnapshotMeta,
        total_size: u64,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    /// The follower's answer to a chunk: it has the file up to `next_offset`; `ok = false`
    /// means restart from 0 (or abort).
    SnapshotAck {
        term: Term,
        from: NodeId,
        to: NodeId,
        snapshot: EntryId,
        next_offset: u64,
        ok: bool,
    },
    /// A client command forwarded by a follower to the leader (args as the client sent them),
    /// with the client's RESP protocol number (2 or 3).
    ClientRequest {
        id: u64,
        args: Vec<Vec<u8>>,
        proto: u8,
    },
    /// The leader's RESP-encoded reply to a forwarded command.
    ClientReply { id: u64, reply: Vec<u8> },
}

impl Frame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => KIND_HELLO,
            Frame::Raft(_) => KIND_RAFT,
            Frame::SnapshotChunk { .. } => KIND_SNAPSHOT_CHUNK,
            Frame::SnapshotAck { .. } => KIND_SNAPSHOT_ACK,
            Frame::ClientRequest { .. } => KIND_CLIENT_REQUEST,
            Frame::ClientReply { .. } => KIND_CLIENT_REPLY,
        }
    }
}

/// A frame that cannot be decoded. Every variant except `Incomplete` means the connection is
/// speaking nonsense (or another protocol) and should be closed with the error logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not an error: the buffer holds only part of a frame; read more and retry.
    Incomplete,
    /// The header announces a frame of `len` bytes (header included) above `max`.
    TooLarge {
        len: usize,
        max: usize,
    },
    UnknownKind {
        kind: u8,
    },
    /// The body of a frame of `kind` does not parse exactly; `what` names the field.
    Malformed {
        kind: u8,
        what: &'static str,
    },
    /// A Hello with the wrong magic or protocol version.
    Handshake {
        what: String,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete => write!(f, "incomplete frame"),
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            DecodeError::UnknownKind { kind } => write!(f, "unknown frame kind {kind}"),
            DecodeError::Malformed { kind, what } => {
                write!(f, "malformed frame of kind {kind}: {what}")
            }
            DecodeError::Handshake { what } => write!(f, "handshake refused: {what}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn known_kind(kind: u8) -> bool {
    (KIND_HELLO..=KIND_CLIENT_REPLY).contains(&kind)
}

/// Reads a frame header: `Ok(None)` until the whole header is there, then the kind and body
/// length, refusing an oversize length or an unknown kind before any body byte is awaited.
pub fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize)>, DecodeError> {
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let body_len = BigEndian::read_u32(&buf[0..4]) as usize;
    let kind = buf[4];
    let len = FRAME_HEADER_SIZE + body_len;
    if len > FRAME_SIZE_MAX {
        return Err(DecodeError::TooLarge {
            len,
            max: FRAME_SIZE_MAX,
        });
    }
    if !known_kind(kind) {
        return Err(DecodeError::UnknownKind { kind });
    }
    Ok(Some((kind, body_len)))
}

/// Decodes the frame at the start of `buf`, returning it and the bytes it took.
/// `Err(Incomplete)` means "read more"; any other error means the stream is bad.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let Some((kind, body_len)) = peek_header(buf)? else {
        return Err(DecodeError::Incomplete);
    };
    let end = FRAME_HEADER_SIZE + body_len;
    if buf.len() < end {
        return Err(DecodeError::Incomplete);
    }
    let mut r = Reader::new(kind, &buf[FRAME_HEADER_SIZE..end]);
    let frame = match kind {
        KIND_HELLO => decode_hello(&mut r)?,
        KIND_RAFT => Frame::Raft(super::peer::decode_message(&mut r)?),
        KIND_SNAPSHOT_CHUNK => super::peer::decode_snapshot_chunk(&mut r)?,
        KIND_SNAPSHOT_ACK => super::peer::decode_snapshot_ack(&mut r)?,
        KIND_CLIENT_REQUEST => decode_client_request(&mut r)?,
        KIND_CLIENT_REPLY => decode_client_reply(&mut r)?,
        _ => unreachable!("peek_header let through kind {kind}"),
    };
    r.finish()?;
    Ok((frame, end))
}

/// The encoded size of `frame`, header included.
pub fn encoded_len(frame: &Frame) -> usize {
    FRAME_HEADER_SIZE
        + match frame {
            Frame::Hello { .. } => HELLO_BODY_SIZE,
            Frame::Raft(m) => super::peer::message_body_len(m),
            Frame::SnapshotChunk { meta, data, .. } => {
                super::peer::snapshot_chunk_body_len(meta, data.len())
            }
            Frame::SnapshotAck { .. } => super::peer::SNAPSHOT_ACK_BODY_SIZE,
            Frame::ClientRequest { args, .. } => {
                13 + args.iter().map(|a| 4 + a.len()).sum::<usize>()
            }
            Frame::ClientReply { reply, .. } => 12 + reply.len(),
        }
}

/// Appends `frame` (header and body) to `out`, reserving its exact size once.
///
/// The frame must be one `decode` accepts: within `FRAME_SIZE_MAX`, node ids non-zero, counts
/// and sizes within their limits. Breaking that is the caller's bug and panics with the values;
/// check `encoded_len` first when the size depends on outside input.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let len = encoded_len(frame);
    assert!(
        len <= FRAME_SIZE_MAX,
        "frame of {len} bytes exceeds {FRAME_SIZE_MAX}"
    );
    out.reserve(len);
    let start = out.len();
    put_u32(out, (len - FRAME_HEADER_SIZE) as u32);
    out.push(frame.kind());
    match frame {
        Frame::Hello {
            cluster_id,
            from,
            to,
        } => {
            put_u32(out, MAGIC);
            put_u16(out, PROTOCOL_VERSION);
            put_u64(out, *cluster_id);
            put_node(out, *from);
            put_node(out, *to);
        }
        Frame::Raft(m) => super::peer::encode_message(m, out),
        Frame::SnapshotChunk { .. } | Frame::SnapshotAck { .. } => {
            super::peer::encode_snapshot_frame(frame, out)
        }
        Frame::ClientRequest { id, args, proto } => {
            assert!(args.len() <= CLIENT_ARGS_MAX, "{} args", args.len());
            assert!(matches!(proto, 2 | 3), "RESP protocol {proto}");
            put_u64(out, *id);
            put_u32(out, args.len() as u32);
            for a in args {
                put_bytes(out, a);
            }
            out.push(*proto);
        }
        Frame::ClientReply { id, reply } => {
            put_u64(out, *id);
            put_bytes(out, reply);
        }
    }
    let written = out.len() - start;
    assert_eq!(
        written, len,
        "encoded {written} bytes of a {len}-byte frame"
    );
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let magic = r.u32("magic")?;
    if magic != MAGIC {
        return Err(DecodeError::Handshake {
            what: format!("magic {magic:#010x}, expected {MAGIC:#010x} (not a kvraft peer)"),
        });
    }
    let version = r.u16("version")?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Handshake {
            what: format!("protocol version {version}, expected {PROTOCOL_VERSION}"),
        });
    }
    let cluster_id = r.u64("cluster id")?;
    let from = r.node("hello from")?;
    let to = r.node("hello to")?;
    Ok(Frame::Hello {
        cluster_id,
        from,
        to,
    })
}

fn decode_client_request(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let id = r.u64("request id")?;
    let count = r.count("argument count", 4, CLIENT_ARGS_MAX)?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        args.push(r.bytes("argument", BODY_SIZE_MAX)?.to_vec());
    }
    let proto = r.u8("protocol")?;
    if !matches!(proto, 2 | 3) {
        return Err(r.malformed("protocol"));
    }
    Ok(Frame::ClientRequest { id, args, proto })
}

fn decode_client_reply(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let id = r.u64("request id")?;
    let reply = r.bytes("reply", BODY_SIZE_MAX)?.to_vec();
    Ok(Frame::ClientReply { id, reply })
}

/// cluster_id: FNV-1a (64-bit) of the cluster name. Stable across versions and platforms, so
/// nodes configured for another cluster are refused at the Hello.
pub fn cluster_id(name: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

// ---- writing (infallible: `out` was reserved by `encode`) ----

pub(super) fn put_u16(out: &mut Vec<u8>, v: u16) {
    let mut b = [0u8; 2];
    BigEndian::write_u16(&mut b, v);
    out.extend_from_slice(&b);
}

pub(super) fn put_u32(out: &mut Vec<u8>, v: u32) {
    let mut b = [0u8; 4];
    BigEndian::write_u32(&mut b, v);
    out.extend_from_slice(&b);
}

pub(super) fn put_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = [0u8; 8];
    BigEndian::write_u64(&mut b, v);
    out.extend_from_slice(&b);
}

pub(super) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// Node ids are never 0 on the wire (0 means "none" and is refused by `decode`).
pub(super) fn put_node(out: &mut Vec<u8>, id: NodeId) {
    assert!(id.0 != 0, "encoding node id 0");
    put_u64(out, id.0);
}

/// A u32 length, then the bytes.
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    assert!(b.len() <= BODY_SIZE_MAX, "{} bytes", b.len());
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

// ---- reading ----

/// A cursor over one complete frame body. Every read checks the bytes remaining first and
/// reports a short body as `Malformed` (the frame is complete, so missing bytes are not
/// `Incomplete`).
pub(super) struct Reader<'a> {
    kind: u8,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(kind: u8, buf: &'a [u8]) -> Self {
        Reader { kind, buf, pos: 0 }
    }

    pub(super) fn malformed(&self, what: &'static str) -> DecodeError {
        DecodeError::Malformed {
            kind: self.kind,
            what,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.malformed(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(BigEndian::read_u16(self.take(2, what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(BigEndian::read_u32(self.take(4, what)?))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(BigEndian::read_u64(self.take(8, what)?))
    }

    pub(super) fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.malformed(what)),
        }
    }

    /// A node id, refusing 0.
    pub(super) fn node(&mut self, what: &'static str) -> Result<NodeId, DecodeError> {
        match self.u64(what)? {
            0 => Err(self.malformed(what)),
            id => Ok(NodeId(id)),
        }
    }

    /// A u32 count of items of at least `item_size` bytes each: refused if above `max` or if
    /// the remaining bytes cannot hold that many items, so `Vec::with_capacity(count)` is safe.
    pub(super) fn count(
        &mut self,
        what: &'static str,
        item_size: usize,
        max: usize,
    ) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count > max || count.saturating_mul(item_size) > self.remaining() {
            return Err(self.malformed(what));
        }
        Ok(count)
    }

    /// A u32 length (at most `max`) and that many bytes.
    pub(super) fn bytes(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(self.malformed(what));
        }
        self.take(len, what)
    }

    /// The body must be used up exactly.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.malformed("trailing bytes after the body"));
        }
        Ok(())
    }
}
