//! The primitives both frame files build on: big-endian writers, the bounds-checked body
//! `Reader`, the two error types, and the encodings of the small Raft values that appear in
//! more than one frame kind (an `EntryId`, a `SnapshotMeta`).
//!
//! Owns: how a single field is written and read. Knows nothing of frame kinds or message tags:
//! `frame.rs` (the header and the non-Raft bodies) and `peer.rs` (the `raft::Message` body) both
//! depend on this file, and this file on neither.
//!
//! Must not: panic on any input it reads; allocate a `Vec` sized by a count not yet checked
//! against its limit and the bytes remaining.
//!
//! Invariants:
//! 1. Every `Reader` method checks the bytes remaining before it reads, and reports a short
//!    body as `Malformed` (the frame is complete, so missing bytes are not `Incomplete`).
//! 2. Every `put_*` writes exactly the bytes its `Reader` counterpart consumes, so
//!    `decode(encode(x)) == x` holds field by field.
//!
//! # Byte layout of the shared values (big-endian)
//!
//! ```text
//! bool       1 byte, 0 or 1 (anything else is malformed, so the encoding is canonical)
//! NodeId     8 bytes (u64), never 0 (0 means "none" and is refused)
//! bytes      length l (u32), then l bytes
//! EntryId    term u64, index u64                                              16 bytes
//! SnapshotMeta (20 + 8 * (v + l) bytes):
//!      0    8 last.term
//!      8    8 last.index
//!     16    4 voter count v
//!     20  8*v voters (NodeId, strictly ascending)
//!      .    4 learner count l; v + l <= MEMBERS_MAX
//!      .  8*l learners (strictly ascending, none of them a voter)
//! ```

use std::fmt;

use byteorder::{BigEndian, ByteOrder};

use crate::limits::{FRAME_HEADER_SIZE, FRAME_SIZE_MAX, MEMBERS_MAX};
use crate::raft::types::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};

/// Largest frame body, in bytes.
pub const BODY_SIZE_MAX: usize = FRAME_SIZE_MAX - FRAME_HEADER_SIZE;
/// Bytes of an encoded `EntryId`.
pub(super) const ENTRY_ID_SIZE: usize = 16;

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

/// A frame that cannot be encoded because something in it exceeds a limit the decoder
/// enforces. Sizes can come from outside (a client's arguments, a reply, a membership list),
/// so this is an error for the caller to handle, never a panic. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// In a frame of `kind`, `what` measures `len` (bytes or items, as `what` says), above
    /// `max`.
    TooLarge {
        kind: u8,
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge {
                kind,
                what,
                len,
                max,
            } => write!(
                f,
                "cannot encode a frame of kind {kind}: {what} {len} exceeds the limit of {max}"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// `Err(TooLarge)` when `len > max`.
pub(super) fn check_limit(
    kind: u8,
    what: &'static str,
    len: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::TooLarge {
            kind,
            what,
            len,
            max,
        });
    }
    Ok(())
}

// ---- writing (infallible: the caller checked every limit and reserved the space) ----

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

pub(super) fn put_u128(out: &mut Vec<u8>, v: u128) {
    let mut b = [0u8; 16];
    BigEndian::write_u128(&mut b, v);
    out.extend_from_slice(&b);
}

pub(super) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

/// Node ids are never 0 on the wire (0 means "none" and is refused by `decode`). Every id
/// encoded comes from our own configuration or core, so 0 here is our bug.
pub(super) fn put_node(out: &mut Vec<u8>, id: NodeId) {
    assert!(id.0 != 0, "encoding node id 0");
    put_u64(out, id.0);
}

/// A u32 length, then the bytes. The caller checked the length against the frame's limit.
pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    assert!(b.len() <= BODY_SIZE_MAX, "{} bytes", b.len());
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

pub(super) fn put_entry_id(out: &mut Vec<u8>, id: EntryId) {
    put_u64(out, id.term.0);
    put_u64(out, id.index.0);
}

/// Encoded size of `meta`.
pub(super) fn meta_len(meta: &SnapshotMeta) -> usize {
    ENTRY_ID_SIZE + 8 + 8 * (meta.conf.voters.len() + meta.conf.learners.len())
}

/// The membership count is the one part of a meta that outside input can inflate (a
/// `MEMBER ADD`); the core refuses such a change, and the encoder refuses it again here.
pub(super) fn check_meta(kind: u8, meta: &SnapshotMeta) -> Result<(), EncodeError> {
    let members = meta.conf.voters.len() + meta.conf.learners.len();
    check_limit(kind, "members", members, MEMBERS_MAX)
}

/// Writes `meta`; `check_meta` passed. The ordering rules are `ConfState`'s own invariant.
pub(super) fn put_meta(out: &mut Vec<u8>, meta: &SnapshotMeta) {
    let conf = &meta.conf;
    assert!(
        conf_is_valid(conf),
        "encoding an invalid conf state {conf:?}"
    );
    put_entry_id(out, meta.last);
    put_u32(out, conf.voters.len() as u32);
    for v in &conf.voters {
        put_node(out, *v);
    }
    put_u32(out, conf.learners.len() as u32);
    for l in &conf.learners {
        put_node(out, *l);
    }
}

/// `ConfState`'s invariant: sorted, no duplicates, disjoint, no node 0, at most MEMBERS_MAX.
pub(super) fn conf_is_valid(conf: &ConfState) -> bool {
    let ascending = |ids: &[NodeId]| ids.windows(2).all(|w| w[0] < w[1]);
    conf.voters.len() + conf.learners.len() <= MEMBERS_MAX
        && ascending(&conf.voters)
        && ascending(&conf.learners)
        && conf.members().all(|id| id.0 != 0)
        && conf.learners.iter().all(|l| !conf.is_voter(*l))
}

// ---- reading ----

/// A cursor over one complete frame body (invariant 1).
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

    pub(super) fn u128(&mut self, what: &'static str) -> Result<u128, DecodeError> {
        Ok(BigEndian::read_u128(self.take(16, what)?))
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

    pub(super) fn entry_id(&mut self, what: &'static str) -> Result<EntryId, DecodeError> {
        let term = Term(self.u64(what)?);
        let index = LogIndex(self.u64(what)?);
        Ok(EntryId::new(term, index))
    }

    fn node_list(&mut self, what: &'static str, max: usize) -> Result<Vec<NodeId>, DecodeError> {
        let count = self.count(what, 8, max)?;
        let mut ids = Vec::with_capacity(count);
        for _ in 0..count {
            ids.push(self.node(what)?);
        }
        Ok(ids)
    }

    pub(super) fn meta(&mut self) -> Result<SnapshotMeta, DecodeError> {
        let last = self.entry_id("snapshot last entry")?;
        let voters = self.node_list("voters", MEMBERS_MAX)?;
        let learners = self.node_list("learners", MEMBERS_MAX - voters.len())?;
        let conf = ConfState { voters, learners };
        if !conf_is_valid(&conf) {
            return Err(self.malformed("conf state not sorted, duplicated or overlapping"));
        }
        Ok(SnapshotMeta { last, conf })
    }

    /// The body must be used up exactly.
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.malformed("trailing bytes after the body"));
        }
        Ok(())
    }
}
