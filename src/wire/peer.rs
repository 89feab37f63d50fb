//! The body of a Raft frame (kind 2): a `raft::Message`, its size, its limits and its bytes.
//! The frame header, the other kinds and the dispatch on the kind byte are in `frame.rs`; the
//! field primitives, `Reader`, the error types and the `SnapshotMeta` layout are in `codec.rs`.
//! This file depends on `codec.rs` only (never on `frame.rs`).
//!
//! Must not: recurse, or allocate a `Vec` whose capacity comes from a count not yet checked
//! against its limit and against the bytes remaining; panic on a size that came from outside
//! (`check_message` turns those into an `EncodeError` before anything is written).
//!
//! # Byte layout (big-endian; offsets from the start of the frame body)
//!
//! ```text
//! kind 2 Raft (a raft::Message):
//!      0    8 from: NodeId, != 0
//!      8    8 to: NodeId, != 0
//!     16    8 term
//!     24    1 body tag, then the tag's fields from offset 25:
//!   tag 0 PreVote       last.term u64, last.index u64, floor u64 (a term)       24 bytes
//!   tag 1 PreVoteResp   granted bool, last.term u64, last.index u64            17 bytes
//!   tag 2 Vote          last.term u64, last.index u64, transfer bool           17 bytes
//!   tag 3 VoteResp      granted bool                                            1 byte
//!   tag 4 Append        prev.term u64, prev.index u64, commit u64,
//!                       entry count c u32 (<= APPEND_ENTRIES_MAX), then c entries:
//!                         term u64, index u64, kind u8 (EntryKind),
//!                         data length l u32 (<= ENTRY_SIZE_MAX), l bytes       21 + l each
//!                       entry i has index prev.index + 1 + i (contiguous)
//!   tag 5 AppendResp    result tag u8:
//!                         0 Accepted  match_index u64                           9 bytes
//!                         1 Rejected  rejected u64, hint.last_index u64,
//!                                     has_conflict bool, [conflict.term u64,
//!                                     conflict.index u64 if has_conflict]   18 or 34 bytes
//!   tag 6 Heartbeat     commit u64, read_seq u64                               16 bytes
//!   tag 7 HeartbeatResp read_seq u64                                            8 bytes
//!   tag 8 Snapshot      SnapshotMeta (layout in codec.rs)
//!   tag 9 TimeoutNow    nothing                                                 0 bytes
//! ```

use super::codec::{
    check_limit, check_meta, meta_len, put_bool, put_bytes, put_entry_id, put_meta, put_node,
    put_u32, put_u64, DecodeError, EncodeError, Reader, ENTRY_ID_SIZE,
};
use crate::limits::{APPEND_ENTRIES_MAX, ENTRY_SIZE_MAX};
use crate::raft::message::{AppendResult, Message, MessageBody, RejectHint};
use crate::raft::types::{Entry, EntryId, EntryKind, LogIndex, Term};

/// The frame kind whose body this file encodes (`frame::KIND_RAFT`), for error reports.
const KIND: u8 = 2;

const TAG_PRE_VOTE: u8 = 0;
const TAG_PRE_VOTE_RESP: u8 = 1;
const TAG_VOTE: u8 = 2;
const TAG_VOTE_RESP: u8 = 3;
const TAG_APPEND: u8 = 4;
const TAG_APPEND_RESP: u8 = 5;
const TAG_HEARTBEAT: u8 = 6;
const TAG_HEARTBEAT_RESP: u8 = 7;
const TAG_SNAPSHOT: u8 = 8;
const TAG_TIMEOUT_NOW: u8 = 9;

const RESULT_ACCEPTED: u8 = 0;
const RESULT_REJECTED: u8 = 1;

/// from, to, term, tag.
const MESSAGE_HEADER_SIZE: usize = 25;
/// term, index, kind, data length.
const ENTRY_HEADER_SIZE: usize = 21;

// ---- sizes and limits ----

/// Encoded size of `m`'s body.
pub(super) fn message_body_len(m: &Message) -> usize {
    MESSAGE_HEADER_SIZE
        + match &m.body {
            MessageBody::PreVote { .. } => ENTRY_ID_SIZE + 8,
            MessageBody::PreVoteResp { .. } => 1 + ENTRY_ID_SIZE,
            MessageBody::VoteResp { .. } => 1,
            MessageBody::Vote { .. } => ENTRY_ID_SIZE + 1,
            MessageBody::Append { entries, .. } => {
                ENTRY_ID_SIZE
                    + 12
                    + entries
                        .iter()
                        .map(|e| ENTRY_HEADER_SIZE + e.data.len())
                        .sum::<usize>()
            }
            MessageBody::AppendResp { result } => match result {
                AppendResult::Accepted { .. } => 9,
                AppendResult::Rejected { hint, .. } => {
                    18 + if hint.conflict.is_some() {
                        ENTRY_ID_SIZE
                    } else {
                        0
                    }
                }
            },
            MessageBody::Heartbeat { .. } => 16,
            MessageBody::HeartbeatResp { .. } => 8,
            MessageBody::Snapshot { meta } => meta_len(meta),
            MessageBody::TimeoutNow => 0,
        }
}

/// Every count and size in `m` that `decode_message` would refuse. Checked before anything is
/// written, so a refused message leaves the output buffer as it was.
pub(super) fn check_message(m: &Message) -> Result<(), EncodeError> {
    match &m.body {
        MessageBody::Append { entries, .. } => {
            check_limit(KIND, "entries", entries.len(), APPEND_ENTRIES_MAX)?;
            for e in entries {
                check_limit(KIND, "entry bytes", e.data.len(), ENTRY_SIZE_MAX)?;
            }
            Ok(())
        }
        MessageBody::Snapshot { meta } => check_meta(KIND, meta),
        _ => Ok(()),
    }
}

// ---- encoding ----

/// Writes `m`'s body; `check_message` passed.
pub(super) fn encode_message(m: &Message, out: &mut Vec<u8>) {
    put_node(out, m.from);
    put_node(out, m.to);
    put_u64(out, m.term.0);
    match &m.body {
        MessageBody::PreVote { last, floor } => {
            out.push(TAG_PRE_VOTE);
            put_entry_id(out, *last);
            put_u64(out, floor.0);
        }
        MessageBody::PreVoteResp { granted, last } => {
            out.push(TAG_PRE_VOTE_RESP);
            put_bool(out, *granted);
            put_entry_id(out, *last);
        }
        MessageBody::Vote { last, transfer } => {
            out.push(TAG_VOTE);
            put_entry_id(out, *last);
            put_bool(out, *transfer);
        }
        MessageBody::VoteResp { granted } => {
            out.push(TAG_VOTE_RESP);
            put_bool(out, *granted);
        }
        MessageBody::Append {
            prev,
            entries,
            commit,
        } => encode_append(*prev, entries, *commit, out),
        MessageBody::AppendResp { result } => {
            out.push(TAG_APPEND_RESP);
            encode_append_result(result, out);
        }
        MessageBody::Heartbeat { commit, read_seq } => {
            out.push(TAG_HEARTBEAT);
            put_u64(out, commit.0);
            put_u64(out, *read_seq);
        }
        MessageBody::HeartbeatResp { read_seq } => {
            out.push(TAG_HEARTBEAT_RESP);
            put_u64(out, *read_seq);
        }
        MessageBody::Snapshot { meta } => {
            out.push(TAG_SNAPSHOT);
            put_meta(out, meta);
        }
        MessageBody::TimeoutNow => out.push(TAG_TIMEOUT_NOW),
    }
}

/// The entries' contiguity is the core's own invariant (its log view), hence asserted.
fn encode_append(prev: EntryId, entries: &[Entry], commit: LogIndex, out: &mut Vec<u8>) {
    out.push(TAG_APPEND);
    put_entry_id(out, prev);
    put_u64(out, commit.0);
    put_u32(out, entries.len() as u32);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            Some(e.index.0),
            prev.index.0.checked_add(1 + i as u64),
            "append entries must follow prev {prev} contiguously"
        );
        put_u64(out, e.term.0);
        put_u64(out, e.index.0);
        out.push(e.kind as u8);
        put_bytes(out, &e.data);
    }
}

fn encode_append_result(result: &AppendResult, out: &mut Vec<u8>) {
    match result {
        AppendResult::Accepted { match_index } => {
            out.push(RESULT_ACCEPTED);
            put_u64(out, match_index.0);
        }
        AppendResult::Rejected { rejected, hint } => {
            out.push(RESULT_REJECTED);
            put_u64(out, rejected.0);
            put_u64(out, hint.last_index.0);
            put_bool(out, hint.conflict.is_some());
            if let Some(c) = hint.conflict {
                put_entry_id(out, c);
            }
        }
    }
}

// ---- decoding ----

pub(super) fn decode_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let from = r.node("message from")?;
    let to = r.node("message to")?;
    let term = Term(r.u64("term")?);
    let body = match r.u8("message tag")? {
        TAG_PRE_VOTE => MessageBody::PreVote {
            last: r.entry_id("pre-vote last")?,
            floor: Term(r.u64("pre-vote floor")?),
        },
        TAG_PRE_VOTE_RESP => MessageBody::PreVoteResp {
            granted: r.bool("pre-vote granted")?,
            last: r.entry_id("pre-vote response last")?,
        },
        TAG_VOTE => MessageBody::Vote {
            last: r.entry_id("vote last")?,
            transfer: r.bool("vote transfer")?,
        },
        TAG_VOTE_RESP => MessageBody::VoteResp {
            granted: r.bool("vote granted")?,
        },
        TAG_APPEND => decode_append(r)?,
        TAG_APPEND_RESP => MessageBody::AppendResp {
            result: decode_append_result(r)?,
        },
        TAG_HEARTBEAT => MessageBody::Heartbeat {
            commit: LogIndex(r.u64("heartbeat commit")?),
            read_seq: r.u64("heartbeat read seq")?,
        },
        TAG_HEARTBEAT_RESP => MessageBody::HeartbeatResp {
            read_seq: r.u64("heartbeat-resp read seq")?,
        },
        TAG_SNAPSHOT => MessageBody::Snapshot { meta: r.meta()? },
        TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        _ => return Err(r.malformed("unknown message tag")),
    };
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

fn decode_append(r: &mut Reader<'_>) -> Result<MessageBody, DecodeError> {
    let prev = r.entry_id("append prev")?;
    let commit = LogIndex(r.u64("append commit")?);
    let count = r.count("entry count", ENTRY_HEADER_SIZE, APPEND_ENTRIES_MAX)?;
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let term = Term(r.u64("entry term")?);
        let index = r.u64("entry index")?;
        if Some(index) != prev.index.0.checked_add(1 + i as u64) {
            return Err(r.malformed("entry index does not follow prev contiguously"));
        }
        let Some(kind) = EntryKind::from_u8(r.u8("entry kind")?) else {
            return Err(r.malformed("unknown entry kind"));
        };
        let data = r.bytes("entry data", ENTRY_SIZE_MAX)?.into();
        entries.push(Entry {
            term,
            index: LogIndex(index),
            kind,
            data,
        });
    }
    Ok(MessageBody::Append {
        prev,
        entries,
        commit,
    })
}

fn decode_append_result(r: &mut Reader<'_>) -> Result<AppendResult, DecodeError> {
    match r.u8("append result tag")? {
        RESULT_ACCEPTED => Ok(AppendResult::Accepted {
            match_index: LogIndex(r.u64("match index")?),
        }),
        RESULT_REJECTED => {
            let rejected = LogIndex(r.u64("rejected index")?);
            let last_index = LogIndex(r.u64("hint last index")?);
            let conflict = if r.bool("hint has conflict")? {
                Some(r.entry_id("hint conflict")?)
            } else {
                None
            };
            Ok(AppendResult::Rejected {
                rejected,
                hint: RejectHint {
                    last_index,
                    conflict,
                },
            })
        }
        _ => Err(r.malformed("unknown append result tag")),
    }
}
