//! Peer frames: the header, the `Frame` enum, the check-then-decode entry points, the encoder,
//! and every body except the Raft message's (Hello, SnapshotChunk, SnapshotAck,
//! ClientRequest, ClientReply, ReadIndexRequest, ReadIndexReply). The Raft body is in `peer.rs`; the field primitives, `Reader`,
//! `DecodeError`, `EncodeError` and the `SnapshotMeta` layout are in `codec.rs`. This file
//! depends on both; neither depends on it.
//!
//! Owns: the byte layout of everything two kvraft processes say to each other.
//! Must not: allocate anything sized by a length it has not checked against both its limit and
//! the bytes actually present; recurse; panic on any input, whether bytes to decode or a frame
//! whose sizes came from outside (a client's arguments, a reply, a membership list).
//!
//! Invariants:
//! 1. `decode` returns `Incomplete` only when `buf` is a proper prefix of a frame whose header
//!    (once present) is acceptable; the frame's length and kind are judged from the header
//!    alone (`peek_header`), before any body byte is awaited.
//! 2. Every count is checked against its limit *and* against the bytes remaining (at the
//!    item's minimum size) before a `Vec` is sized by it; every length against its limit and
//!    the bytes present before it is copied.
//! 3. The encoding is canonical: for any `buf` that decodes to `(f, n)`, `encode(f)` is exactly
//!    `buf[..n]`; for any `f` that `encode` accepts, `decode(encode(f)) == (f, len)`.
//! 4. `encode` refuses with an `EncodeError`, writing nothing, every size or count that
//!    `decode` would refuse (the frame's length, client arguments, entries, members, chunk
//!    data). What the core and the node guarantee themselves (node ids non-zero, conf states
//!    sorted, entries contiguous, chunk ranges inside the file) is asserted.
//!
//! # Byte layout
//!
//! All integers are big-endian (byteorder). A `bool` is one byte, 0 or 1 (anything else is
//! malformed), so the encoding is canonical: decoding then re-encoding gives the same bytes.
//! `NodeId`, `EntryId` and `SnapshotMeta` are laid out as `codec.rs` says. `PROTOCOL_VERSION`
//! covers the layouts of all three files.
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
//! kind 1 Hello (first frame on every peer connection, both directions), 62 bytes:
//!      0    4 magic MAGIC = b"KVRF" (u32)
//!      4    2 protocol version PROTOCOL_VERSION (u16)
//!      6    8 cluster name hash (u64, see `cluster_id`: FNV-1a of `cluster_name`)
//!     14   16 cluster uid (u128): the random id the cluster got when it was formed, as the
//!             sender's identity file holds it; 0 = the sender has none yet (new storage
//!             waiting to be admitted)
//!     30   16 incarnation (u128): the random id of the sender's storage (0 = none: a tool,
//!             not a member; it is never admitted and its answers never count)
//!     46    8 from: NodeId, != 0
//!     54    8 to: NodeId, != 0
//!   The magic and version are checked before the length, so a peer speaking another version
//!   (whose Hello may be longer) is refused as a Handshake error, not as malformed.
//!
//! kind 2 Raft: a raft::Message, layout in peer.rs.
//! kind 3 SnapshotChunk (m = size of the SnapshotMeta, layout in codec.rs):
//!      0    8 term
//!      8    8 from: NodeId, != 0
//!     16    8 to: NodeId, != 0
//!     24    m meta
//!   24+m    8 total_size (bytes of the whole snapshot file)
//!   32+m    8 offset of this chunk in the file
//!   40+m    1 done bool (this is the last chunk)
//!   41+m    4 data length d (<= SNAPSHOT_CHUNK_SIZE_MAX)
//!   45+m    d data
//!   offset + d <= total_size, and done implies offset + d == total_size.
//!
//! kind 4 SnapshotAck, 49 bytes:
//!      0    8 term
//!      8    8 from: NodeId, != 0
//!     16    8 to: NodeId, != 0
//!     24    8 snapshot.term
//!     32    8 snapshot.index
//!     40    8 next_offset
//!     48    1 ok bool
//!
//! kind 5 ClientRequest (a follower forwards a client command to the leader):
//!      0    8 request id (u64, the follower's)
//!      8    4 argument count c (u32), c <= CLIENT_ARGS_MAX
//!     12      c times: length l (u32), then l bytes
//!      m    1 the client's RESP protocol (u8): 2 or 3, so the leader encodes the reply in
//!             it (added in protocol version 2; m is the offset after the arguments)
//!    m+1    1 the client connection's rights (u8, `auth::Rights`): 0 not authenticated,
//!             1 data commands, 2 admin commands too; anything else is malformed. The leader
//!             runs the command with these rights at most (added in protocol version 4)
//!
//! kind 6 ClientReply (the leader's RESP-encoded reply to a forwarded command):
//!      0    8 request id (u64)
//!      8    4 reply length l (u32)
//!     12    l RESP bytes (opaque here)
//!
//! kind 7 ReadIndexRequest (a follower asks the leader for a read index on behalf of every
//! read that arrived in one turn; added in protocol version 5), 8 bytes:
//!      0    8 request id (u64, the follower's; drawn from the same counter as ClientRequest ids)
//!
//! kind 8 ReadIndexReply (the leader's answer, once a heartbeat round begun after the request
//! arrived confirmed its leadership; added in protocol version 5), 25 bytes:
//!      0    8 request id (u64)
//!      8    1 ok bool: 1 = confirmed, 0 = refused (not the leader, too many reads, stepped
//!             down before the round completed)
//!      9    8 read index (u64, <= INDEX_MAX): the follower serves the reads once it has
//!             applied this index; 0 when refused (anything else is malformed)
//!     17    8 the leader's clock for the reads (u64, ms since the Unix epoch, as it stamps
//!             writes), so keys with a TTL expire as of the leader's time; 0 when refused
//! ```

use byteorder::{BigEndian, ByteOrder};

use super::codec::{
    check_limit, check_meta, meta_len, put_bool, put_bytes, put_entry_id, put_meta, put_node,
    put_u128, put_u16, put_u32, put_u64, Reader,
};
pub use super::codec::{DecodeError, EncodeError, BODY_SIZE_MAX};
use super::peer;
use crate::limits::{CLIENT_ARGS_MAX, FRAME_HEADER_SIZE, FRAME_SIZE_MAX, SNAPSHOT_CHUNK_SIZE_MAX};
use crate::raft::message::Message;
use crate::raft::types::{EntryId, LogIndex, NodeId, SnapshotMeta, Term, INDEX_MAX};

/// The first four bytes of every Hello body: "KVRF".
pub const MAGIC: u32 = u32::from_be_bytes(*b"KVRF");
/// The version of this layout (and of peer.rs's and codec.rs's); a peer with another version
/// is refused at the Hello. Version 2: ClientRequest carries the client's RESP protocol.
/// Version 3: Hello carries the cluster uid and the sender's incarnation. Version 4:
/// ClientRequest carries the client connection's rights. Version 5: ReadIndexRequest and
/// ReadIndexReply (follower reads); PreVote carries a floor and PreVoteResp the responder's
/// newest entry id of a term at most it (peer.rs, raft/uncertain.rs). A peer of version 4
/// is refused at the Hello, as any other.
pub const PROTOCOL_VERSION: u16 = 5;

pub const KIND_HELLO: u8 = 1;
pub const KIND_RAFT: u8 = 2;
pub const KIND_SNAPSHOT_CHUNK: u8 = 3;
pub const KIND_SNAPSHOT_ACK: u8 = 4;
pub const KIND_CLIENT_REQUEST: u8 = 5;
pub const KIND_CLIENT_REPLY: u8 = 6;
pub const KIND_READ_INDEX_REQUEST: u8 = 7;
pub const KIND_READ_INDEX_REPLY: u8 = 8;

/// The largest rights byte a ClientRequest carries (`auth::Rights::Admin`).
pub const RIGHTS_MAX: u8 = 2;

/// Bytes of a ClientReply body before the reply itself: request id, reply length.
const CLIENT_REPLY_FIXED_SIZE: usize = 12;
/// The largest RESP reply one ClientReply frame carries, in bytes. A leader checks a reply
/// to a forwarded command against it before building the frame (an `MGET` of ten 1 MiB
/// values is larger) and answers an error in its place.
pub const CLIENT_REPLY_SIZE_MAX: usize = BODY_SIZE_MAX - CLIENT_REPLY_FIXED_SIZE;
const HELLO_BODY_SIZE: usize = 62;
const SNAPSHOT_ACK_BODY_SIZE: usize = 49;
const READ_INDEX_REQUEST_BODY_SIZE: usize = 8;
const READ_INDEX_REPLY_BODY_SIZE: usize = 25;
/// term, from, to | total_size, offset, done, data length.
const SNAPSHOT_CHUNK_FIXED_SIZE: usize = 24 + 21;

const _: () = assert!(FRAME_HEADER_SIZE == 5);

/// One peer frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// First frame on every peer connection, both directions.
    Hello {
        /// FNV-1a of the cluster name (`cluster_id`).
        cluster_id: u64,
        /// The cluster's random id; 0 = the sender has none yet.
        cluster_uid: u128,
        /// The sender's storage incarnation; 0 = not a member's.
        incarnation: u128,
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
    /// with the client's RESP protocol number (2 or 3) and its connection's rights
    /// (`auth::Rights::to_byte`: 0, 1 or 2).
    ClientRequest {
        id: u64,
        args: Vec<Vec<u8>>,
        proto: u8,
        rights: u8,
    },
    /// The leader's RESP-encoded reply to a forwarded command.
    ClientReply { id: u64, reply: Vec<u8> },
    /// A follower asks the leader for a read index (for every read of one turn).
    ReadIndexRequest { id: u64 },
    /// The leader's answer: `Some(index)` once its leadership is confirmed (the follower
    /// serves the reads at or after applying `index`, with `now_ms` as the time); `None` when
    /// refused (`now_ms` is then 0).
    ReadIndexReply {
        id: u64,
        index: Option<LogIndex>,
        now_ms: u64,
    },
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
            Frame::ReadIndexRequest { .. } => KIND_READ_INDEX_REQUEST,
            Frame::ReadIndexReply { .. } => KIND_READ_INDEX_REPLY,
        }
    }
}

fn known_kind(kind: u8) -> bool {
    (KIND_HELLO..=KIND_READ_INDEX_REPLY).contains(&kind)
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
        KIND_RAFT => Frame::Raft(peer::decode_message(&mut r)?),
        KIND_SNAPSHOT_CHUNK => decode_snapshot_chunk(&mut r)?,
        KIND_SNAPSHOT_ACK => decode_snapshot_ack(&mut r)?,
        KIND_CLIENT_REQUEST => decode_client_request(&mut r)?,
        KIND_CLIENT_REPLY => decode_client_reply(&mut r)?,
        KIND_READ_INDEX_REQUEST => Frame::ReadIndexRequest {
            id: r.u64("read index request id")?,
        },
        KIND_READ_INDEX_REPLY => decode_read_index_reply(&mut r)?,
        _ => unreachable!("peek_header let through kind {kind}"),
    };
    r.finish()?;
    Ok((frame, end))
}

/// The encoded size of `frame`, header included, whether or not `encode` would accept it
/// (compare with `FRAME_SIZE_MAX`, or just call `encode` and handle its error).
pub fn encoded_len(frame: &Frame) -> usize {
    FRAME_HEADER_SIZE
        + match frame {
            Frame::Hello { .. } => HELLO_BODY_SIZE,
            Frame::Raft(m) => peer::message_body_len(m),
            Frame::SnapshotChunk { meta, data, .. } => {
                SNAPSHOT_CHUNK_FIXED_SIZE + meta_len(meta) + data.len()
            }
            Frame::SnapshotAck { .. } => SNAPSHOT_ACK_BODY_SIZE,
            Frame::ClientRequest { args, .. } => client_request_len(args) - FRAME_HEADER_SIZE,
            Frame::ClientReply { reply, .. } => CLIENT_REPLY_FIXED_SIZE + reply.len(),
            Frame::ReadIndexRequest { .. } => READ_INDEX_REQUEST_BODY_SIZE,
            Frame::ReadIndexReply { .. } => READ_INDEX_REPLY_BODY_SIZE,
        }
}

/// Every limit `decode` enforces on a size or count, checked before anything is written
/// (invariant 4); returns the frame's encoded length.
fn check_limits(frame: &Frame) -> Result<usize, EncodeError> {
    let kind = frame.kind();
    match frame {
        Frame::Raft(m) => peer::check_message(m)?,
        Frame::SnapshotChunk { meta, data, .. } => {
            check_meta(kind, meta)?;
            check_limit(kind, "chunk bytes", data.len(), SNAPSHOT_CHUNK_SIZE_MAX)?;
        }
        Frame::ClientRequest { args, .. } => {
            check_limit(kind, "arguments", args.len(), CLIENT_ARGS_MAX)?;
        }
        Frame::Hello { .. }
        | Frame::SnapshotAck { .. }
        | Frame::ClientReply { .. }
        | Frame::ReadIndexRequest { .. }
        | Frame::ReadIndexReply { .. } => {}
    }
    let len = encoded_len(frame);
    check_limit(kind, "frame bytes", len, FRAME_SIZE_MAX)?;
    Ok(len)
}

/// Appends `frame` (header and body) to `out`, reserving its exact size once.
///
/// A size or count beyond its limit (the frame's length, a client's arguments, a membership
/// list...) is refused with `EncodeError::TooLarge` and nothing is appended: those sizes can
/// come from outside. What the caller guarantees itself (node ids non-zero, a sorted conf
/// state, contiguous entries, a chunk inside its file) is asserted.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = check_limits(frame)?;
    out.reserve(len);
    let start = out.len();
    put_u32(out, (len - FRAME_HEADER_SIZE) as u32);
    out.push(frame.kind());
    match frame {
        Frame::Hello {
            cluster_id,
            cluster_uid,
            incarnation,
            from,
            to,
        } => {
            put_u32(out, MAGIC);
            put_u16(out, PROTOCOL_VERSION);
            put_u64(out, *cluster_id);
            put_u128(out, *cluster_uid);
            put_u128(out, *incarnation);
            put_node(out, *from);
            put_node(out, *to);
        }
        Frame::Raft(m) => peer::encode_message(m, out),
        Frame::SnapshotChunk { .. } | Frame::SnapshotAck { .. } => {
            encode_snapshot_frame(frame, out)
        }
        Frame::ClientRequest {
            id,
            args,
            proto,
            rights,
        } => {
            let head = ClientRequestHead {
                id: *id,
                proto: *proto,
                rights: *rights,
            };
            put_client_request(head, args, out);
        }
        Frame::ClientReply { id, reply } => {
            put_u64(out, *id);
            put_bytes(out, reply);
        }
        Frame::ReadIndexRequest { id } => put_u64(out, *id),
        Frame::ReadIndexReply { id, index, now_ms } => {
            // The leader's own commit index and clock: a refusal carries neither.
            assert!(
                index.is_none_or(|i| i <= INDEX_MAX) && (index.is_some() || *now_ms == 0),
                "read index reply {index:?} at {now_ms} ms"
            );
            put_u64(out, *id);
            put_bool(out, index.is_some());
            put_u64(out, index.map_or(0, |i| i.0));
            put_u64(out, *now_ms);
        }
    }
    let written = out.len() - start;
    assert_eq!(
        written, len,
        "encoded {written} bytes of a {len}-byte frame"
    );
    Ok(())
}

/// Appends a ClientReply frame for request `id` whose RESP reply `write_reply` appends to
/// `out` in place: the same bytes as `encode` of a `Frame::ClientReply` holding that reply,
/// without a buffer of the reply's own (issue 16). `reply_len_max` bounds what `write_reply`
/// writes; it is checked against `CLIENT_REPLY_SIZE_MAX` before anything is appended (a
/// refusal appends nothing), and the reply written is asserted within it (our bound).
pub fn encode_client_reply_with(
    id: u64,
    reply_len_max: usize,
    out: &mut Vec<u8>,
    write_reply: impl FnOnce(&mut Vec<u8>),
) -> Result<(), EncodeError> {
    check_limit(
        KIND_CLIENT_REPLY,
        "reply bytes",
        reply_len_max,
        CLIENT_REPLY_SIZE_MAX,
    )?;
    out.reserve(FRAME_HEADER_SIZE + CLIENT_REPLY_FIXED_SIZE + reply_len_max);
    let start = out.len();
    put_u32(out, 0); // the body length, patched below once the reply is written
    out.push(KIND_CLIENT_REPLY);
    put_u64(out, id);
    put_u32(out, 0); // the reply length, likewise
    let reply_at = out.len();
    write_reply(out);
    let reply_len = out.len() - reply_at;
    assert!(
        reply_len <= reply_len_max,
        "a reply of {reply_len} bytes beyond its bound {reply_len_max}"
    );
    let body_len = (CLIENT_REPLY_FIXED_SIZE + reply_len) as u32;
    out[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    out[reply_at - 4..reply_at].copy_from_slice(&(reply_len as u32).to_be_bytes());
    Ok(())
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
    let cluster_uid = r.u128("cluster uid")?;
    let incarnation = r.u128("incarnation")?;
    let from = r.node("hello from")?;
    let to = r.node("hello to")?;
    Ok(Frame::Hello {
        cluster_id,
        cluster_uid,
        incarnation,
        from,
        to,
    })
}

fn decode_client_request(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let mut args = Vec::new();
    let head = client_request_body(r, |a| args.push(a.to_vec()))?;
    Ok(Frame::ClientRequest {
        id: head.id,
        args,
        proto: head.proto,
        rights: head.rights,
    })
}

/// A ClientRequest's fields but its arguments (`decode_client_request_with`,
/// `encode_client_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientRequestHead {
    pub id: u64,
    pub proto: u8,
    pub rights: u8,
}

/// The ClientRequest body in `r`, each argument handed to `on_arg` borrowed, once its length
/// is checked against its limit and the bytes present (invariant 2).
fn client_request_body(
    r: &mut Reader<'_>,
    mut on_arg: impl FnMut(&[u8]),
) -> Result<ClientRequestHead, DecodeError> {
    let id = r.u64("request id")?;
    let count = r.count("argument count", 4, CLIENT_ARGS_MAX)?;
    for _ in 0..count {
        on_arg(r.bytes("argument", BODY_SIZE_MAX)?);
    }
    let proto = r.u8("protocol")?;
    if !matches!(proto, 2 | 3) {
        return Err(r.malformed("protocol"));
    }
    let rights = r.u8("rights")?;
    if rights > RIGHTS_MAX {
        return Err(r.malformed("rights"));
    }
    Ok(ClientRequestHead { id, proto, rights })
}

/// The frame at the start of `buf`, if it is a ClientRequest, decoded as `decode` would
/// (same checks, same errors) but with each argument handed to `on_arg` borrowed from `buf`
/// instead of copied into a `Vec` of its own: the leader copies them into buffers it reuses
/// (issue 16: one allocation per argument of every forwarded command before). `Ok(None)`:
/// another kind of frame (call `decode`). On an error `on_arg` may have seen some of the
/// arguments; the stream is bad all the same.
pub fn decode_client_request_with(
    buf: &[u8],
    on_arg: impl FnMut(&[u8]),
) -> Result<Option<(ClientRequestHead, usize)>, DecodeError> {
    let Some(body) = body_of_kind(buf, KIND_CLIENT_REQUEST)? else {
        return Ok(None);
    };
    let mut r = Reader::new(KIND_CLIENT_REQUEST, body);
    let head = client_request_body(&mut r, on_arg)?;
    r.finish()?;
    Ok(Some((head, FRAME_HEADER_SIZE + body.len())))
}

/// A ClientReply as `decode_client_reply_ref` finds it: `(id, reply, bytes taken)`.
pub type ClientReplyRef<'a> = (u64, &'a [u8], usize);

/// The frame at the start of `buf`, if it is a ClientReply, as `decode` would give it but
/// with the reply borrowed from `buf`. `Ok(None)`: another kind.
pub fn decode_client_reply_ref(buf: &[u8]) -> Result<Option<ClientReplyRef<'_>>, DecodeError> {
    let Some(body) = body_of_kind(buf, KIND_CLIENT_REPLY)? else {
        return Ok(None);
    };
    let mut r = Reader::new(KIND_CLIENT_REPLY, body);
    let (id, reply) = client_reply_body(&mut r)?;
    r.finish()?;
    Ok(Some((id, reply, FRAME_HEADER_SIZE + body.len())))
}

/// The body of the frame at the start of `buf` if its kind is `kind`, `Ok(None)` if it is
/// another; `Err(Incomplete)` until the whole frame is there, as `decode`.
fn body_of_kind(buf: &[u8], kind: u8) -> Result<Option<&[u8]>, DecodeError> {
    let Some((k, body_len)) = peek_header(buf)? else {
        return Err(DecodeError::Incomplete);
    };
    if k != kind {
        return Ok(None);
    }
    let end = FRAME_HEADER_SIZE + body_len;
    if buf.len() < end {
        return Err(DecodeError::Incomplete);
    }
    Ok(Some(&buf[FRAME_HEADER_SIZE..end]))
}

/// Appends to `out` the bytes `encode` writes for `Frame::ClientRequest` with these fields,
/// from borrowed arguments: a follower forwards the buffers it parsed the client's command
/// into, without copying them into a `Frame` first. Refuses (writing nothing) what `encode`
/// refuses.
pub fn encode_client_request(
    head: ClientRequestHead,
    args: &[Vec<u8>],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    check_limit(
        KIND_CLIENT_REQUEST,
        "arguments",
        args.len(),
        CLIENT_ARGS_MAX,
    )?;
    let len = client_request_len(args);
    check_limit(KIND_CLIENT_REQUEST, "frame bytes", len, FRAME_SIZE_MAX)?;
    out.reserve(len);
    let start = out.len();
    put_u32(out, (len - FRAME_HEADER_SIZE) as u32);
    out.push(KIND_CLIENT_REQUEST);
    put_client_request(head, args, out);
    let written = out.len() - start;
    assert_eq!(
        written, len,
        "encoded {written} bytes of a {len}-byte frame"
    );
    Ok(())
}

/// A ClientRequest frame's length, header included.
fn client_request_len(args: &[Vec<u8>]) -> usize {
    FRAME_HEADER_SIZE + 14 + args.iter().map(|a| 4 + a.len()).sum::<usize>()
}

fn put_client_request(head: ClientRequestHead, args: &[Vec<u8>], out: &mut Vec<u8>) {
    let ClientRequestHead { id, proto, rights } = head;
    // The node sets the protocol from a connection's HELLO: only 2 or 3 exist; the rights
    // byte comes from `Rights::to_byte`.
    assert!(matches!(proto, 2 | 3), "RESP protocol {proto}");
    assert!(rights <= RIGHTS_MAX, "rights byte {rights}");
    put_u64(out, id);
    put_u32(out, args.len() as u32);
    for a in args {
        put_bytes(out, a);
    }
    out.push(proto);
    out.push(rights);
}

fn decode_client_reply(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let (id, reply) = client_reply_body(r)?;
    Ok(Frame::ClientReply {
        id,
        reply: reply.to_vec(),
    })
}

/// A ClientReply body's request id and reply, borrowed (`decode_client_reply`,
/// `decode_client_reply_ref`).
fn client_reply_body<'a>(r: &mut Reader<'a>) -> Result<(u64, &'a [u8]), DecodeError> {
    let id = r.u64("request id")?;
    let reply = r.bytes("reply", BODY_SIZE_MAX)?;
    Ok((id, reply))
}

fn decode_read_index_reply(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let id = r.u64("read index reply id")?;
    let ok = r.bool("read index ok")?;
    let index = LogIndex(r.u64("read index")?);
    let now_ms = r.u64("read index time")?;
    if index > INDEX_MAX || (!ok && (index.0 != 0 || now_ms != 0)) {
        return Err(r.malformed("read index beyond INDEX_MAX, or a refusal with an index or time"));
    }
    Ok(Frame::ReadIndexReply {
        id,
        index: ok.then_some(index),
        now_ms,
    })
}

/// cluster_id: FNV-1a (64-bit) of the cluster name. Stable across versions and platforms, so
/// nodes configured for another cluster are refused at the Hello.
pub fn cluster_id(name: &str) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.bytes()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

// ---- snapshot transfer bodies ----

/// Encodes the body of a SnapshotChunk or SnapshotAck frame.
fn encode_snapshot_frame(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::SnapshotChunk {
            term,
            from,
            to,
            meta,
            total_size,
            offset,
            data,
            done,
        } => {
            assert!(
                chunk_is_valid(*total_size, *offset, data.len(), *done),
                "invalid snapshot chunk: total {total_size} offset {offset} len {} done {done}",
                data.len()
            );
            put_u64(out, term.0);
            put_node(out, *from);
            put_node(out, *to);
            put_meta(out, meta);
            put_u64(out, *total_size);
            put_u64(out, *offset);
            put_bool(out, *done);
            put_bytes(out, data);
        }
        Frame::SnapshotAck {
            term,
            from,
            to,
            snapshot,
            next_offset,
            ok,
        } => {
            put_u64(out, term.0);
            put_node(out, *from);
            put_node(out, *to);
            put_entry_id(out, *snapshot);
            put_u64(out, *next_offset);
            put_bool(out, *ok);
        }
        _ => unreachable!("not a snapshot frame: kind {}", frame.kind()),
    }
}

fn chunk_is_valid(total_size: u64, offset: u64, len: usize, done: bool) -> bool {
    if len > SNAPSHOT_CHUNK_SIZE_MAX {
        return false;
    }
    match offset.checked_add(len as u64) {
        Some(end) => end <= total_size && (!done || end == total_size),
        None => false,
    }
}

fn decode_snapshot_chunk(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let term = Term(r.u64("chunk term")?);
    let from = r.node("chunk from")?;
    let to = r.node("chunk to")?;
    let meta = r.meta()?;
    let total_size = r.u64("chunk total size")?;
    let offset = r.u64("chunk offset")?;
    let done = r.bool("chunk done")?;
    let data = r.bytes("chunk data", SNAPSHOT_CHUNK_SIZE_MAX)?;
    if !chunk_is_valid(total_size, offset, data.len(), done) {
        return Err(r.malformed("chunk range outside the snapshot, or done before its end"));
    }
    Ok(Frame::SnapshotChunk {
        term,
        from,
        to,
        meta,
        total_size,
        offset,
        data: data.to_vec(),
        done,
    })
}

fn decode_snapshot_ack(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let term = Term(r.u64("ack term")?);
    let from = r.node("ack from")?;
    let to = r.node("ack to")?;
    let snapshot = r.entry_id("ack snapshot")?;
    let next_offset = r.u64("ack next offset")?;
    let ok = r.bool("ack ok")?;
    Ok(Frame::SnapshotAck {
        term,
        from,
        to,
        snapshot,
        next_offset,
        ok,
    })
}
