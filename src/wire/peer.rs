//! The frame bodies that carry Raft types: `raft::Message` (kind 2), SnapshotChunk (kind 3)
//! and SnapshotAck (kind 4). The header, `Reader` and `DecodeError` are in `frame.rs`.
//!
//! Must not: recurse, or allocate a `Vec` whose capacity comes from a count not yet checked
//! against its limit and against the bytes remaining.
//!
//! # Byte layout (big-endian; offsets from the start of the frame body)
//!
//! ```text
//! kind 2 Raft (a raft::Message):
//!      0    8 from: NodeId, != 0
//!      8    8 to: NodeId, != 0
//!     16    8 term
//!     24    1 body tag, then the tag's fields from offset 25:
//!   tag 0 PreVote       last.term u64, last.index u64                          16 bytes
//!   tag 1 PreVoteResp   granted bool                                            1 byte
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
//!   tag 8 Snapshot      SnapshotMeta (below)
//!   tag 9 TimeoutNow    nothing                                                 0 bytes
//!
//! SnapshotMeta (20 + 8 * (v + l) bytes):
//!      0    8 last.term
//!      8    8 last.index
//!     16    4 voter count v
//!     20  8*v voters (NodeId u64, != 0, strictly ascending)
//!      .    4 learner count l; v + l <= MEMBERS_MAX
//!      .  8*l learners (strictly ascending, none of them a voter)
//!
//! kind 3 SnapshotChunk (m = size of the SnapshotMeta):
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
//! kind 4 SnapshotAck (49 bytes):
//!      0    8 term
//!      8    8 from: NodeId, != 0
//!     16    8 to: NodeId, != 0
//!     24    8 snapshot.term
//!     32    8 snapshot.index
//!     40    8 next_offset
//!     48    1 ok bool
//! ```

use super::frame::{put_bool, put_bytes, put_node, put_u32, put_u64, DecodeError, Frame, Reader};
use crate::limits::{APPEND_ENTRIES_MAX, ENTRY_SIZE_MAX, MEMBERS_MAX, SNAPSHOT_CHUNK_SIZE_MAX};
use crate::raft::message::{AppendResult, Message, MessageBody, RejectHint};
use crate::raft::types::{
    ConfState, Entry, EntryId, EntryKind, LogIndex, NodeId, SnapshotMeta, Term,
};

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
const ENTRY_ID_SIZE: usize = 16;
pub(super) const SNAPSHOT_ACK_BODY_SIZE: usize = 49;
/// term, from, to | total_size, offset, done, data length.
const SNAPSHOT_CHUNK_FIXED_SIZE: usize = 24 + 21;

// ---- sizes ----

fn meta_len(meta: &SnapshotMeta) -> usize {
    ENTRY_ID_SIZE + 8 + 8 * (meta.conf.voters.len() + meta.conf.learners.len())
}

pub(super) fn message_body_len(m: &Message) -> usize {
    MESSAGE_HEADER_SIZE
        + match &m.body {
            MessageBody::PreVote { .. } => ENTRY_ID_SIZE,
            MessageBody::PreVoteResp { .. } | MessageBody::VoteResp { .. } => 1,
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

pub(super) fn snapshot_chunk_body_len(meta: &SnapshotMeta, data_len: usize) -> usize {
    SNAPSHOT_CHUNK_FIXED_SIZE + meta_len(meta) + data_len
}

// ---- encoding ----

fn put_entry_id(out: &mut Vec<u8>, id: EntryId) {
    put_u64(out, id.term.0);
    put_u64(out, id.index.0);
}

fn put_meta(out: &mut Vec<u8>, meta: &SnapshotMeta) {
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

pub(super) fn encode_message(m: &Message, out: &mut Vec<u8>) {
    put_node(out, m.from);
    put_node(out, m.to);
    put_u64(out, m.term.0);
    match &m.body {
        MessageBody::PreVote { last } => {
            out.push(TAG_PRE_VOTE);
            put_entry_id(out, *last);
        }
        MessageBody::PreVoteResp { granted } => {
            out.push(TAG_PRE_VOTE_RESP);
            put_bool(out, *granted);
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

fn encode_append(prev: EntryId, entries: &[Entry], commit: LogIndex, out: &mut Vec<u8>) {
    assert!(
        entries.len() <= APPEND_ENTRIES_MAX,
        "append of {} entries exceeds {APPEND_ENTRIES_MAX}",
        entries.len()
    );
    out.push(TAG_APPEND);
    put_entry_id(out, prev);
    put_u64(out, commit.0);
    put_u32(out, entries.len() as u32);
    for (i, e) in entries.iter().enumerate() {
        assert!(
            e.data.len() <= ENTRY_SIZE_MAX,
            "entry {} of {} bytes exceeds {ENTRY_SIZE_MAX}",
            e.index,
            e.data.len()
        );
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

/// Encodes the body of a SnapshotChunk or SnapshotAck frame.
pub(super) fn encode_snapshot_frame(frame: &Frame, out: &mut Vec<u8>) {
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

// ---- validation shared by both directions ----

/// `ConfState`'s invariant: sorted, no duplicates, disjoint, no node 0, at most MEMBERS_MAX.
fn conf_is_valid(conf: &ConfState) -> bool {
    let ascending = |ids: &[NodeId]| ids.windows(2).all(|w| w[0] < w[1]);
    conf.voters.len() + conf.learners.len() <= MEMBERS_MAX
        && ascending(&conf.voters)
        && ascending(&conf.learners)
        && conf.members().all(|id| id.0 != 0)
        && conf.learners.iter().all(|l| !conf.is_voter(*l))
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

// ---- decoding ----

fn entry_id(r: &mut Reader<'_>, what: &'static str) -> Result<EntryId, DecodeError> {
    let term = Term(r.u64(what)?);
    let index = LogIndex(r.u64(what)?);
    Ok(EntryId::new(term, index))
}

fn node_list(
    r: &mut Reader<'_>,
    what: &'static str,
    max: usize,
) -> Result<Vec<NodeId>, DecodeError> {
    let count = r.count(what, 8, max)?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(r.node(what)?);
    }
    Ok(ids)
}

fn meta(r: &mut Reader<'_>) -> Result<SnapshotMeta, DecodeError> {
    let last = entry_id(r, "snapshot last entry")?;
    let voters = node_list(r, "voters", MEMBERS_MAX)?;
    let learners = node_list(r, "learners", MEMBERS_MAX - voters.len())?;
    let conf = ConfState { voters, learners };
    if !conf_is_valid(&conf) {
        return Err(r.malformed("conf state not sorted, duplicated or overlapping"));
    }
    Ok(SnapshotMeta { last, conf })
}

pub(super) fn decode_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    let from = r.node("message from")?;
    let to = r.node("message to")?;
    let term = Term(r.u64("term")?);
    let body = match r.u8("message tag")? {
        TAG_PRE_VOTE => MessageBody::PreVote {
            last: entry_id(r, "pre-vote last")?,
        },
        TAG_PRE_VOTE_RESP => MessageBody::PreVoteResp {
            granted: r.bool("pre-vote granted")?,
        },
        TAG_VOTE => MessageBody::Vote {
            last: entry_id(r, "vote last")?,
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
        TAG_SNAPSHOT => MessageBody::Snapshot { meta: meta(r)? },
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
    let prev = entry_id(r, "append prev")?;
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
        let data = r.bytes("entry data", ENTRY_SIZE_MAX)?.to_vec();
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
                Some(entry_id(r, "hint conflict")?)
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

pub(super) fn decode_snapshot_chunk(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let term = Term(r.u64("chunk term")?);
    let from = r.node("chunk from")?;
    let to = r.node("chunk to")?;
    let meta = meta(r)?;
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

pub(super) fn decode_snapshot_ack(r: &mut Reader<'_>) -> Result<Frame, DecodeError> {
    let term = Term(r.u64("ack term")?);
    let from = r.node("ack from")?;
    let to = r.node("ack to")?;
    let snapshot = entry_id(r, "ack snapshot")?;
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
