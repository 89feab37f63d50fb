//! The peer wire codec: length-prefixed binary frames between kvraft processes.
//!
//! `frame.rs` owns the header, the `Frame` enum, `decode`/`encode` and every body but the Raft
//! message's; `peer.rs` owns the `raft::Message` body; `codec.rs` owns the field primitives
//! (`Reader`, the `put_*` writers, `DecodeError`, `EncodeError`, the `SnapshotMeta` layout)
//! that both use. Imports run one way: `frame -> peer -> codec` and `frame -> codec`. All three
//! are pure functions over `&[u8]` / `Vec<u8>`: no I/O, no clock. Byte layouts are documented
//! at the top of each file.
mod codec;
pub mod frame;
mod peer;

pub use frame::{
    cluster_id, decode, decode_client_reply_ref, decode_client_request_with, encode,
    encode_client_reply_with, encode_client_request, encoded_len, peek_header, ClientRequestHead,
    DecodeError, EncodeError, Frame, BODY_SIZE_MAX, CLIENT_REPLY_SIZE_MAX, KIND_CLIENT_REPLY,
    KIND_CLIENT_REQUEST, KIND_HELLO, KIND_RAFT, KIND_READ_INDEX_REPLY, KIND_READ_INDEX_REQUEST,
    KIND_SNAPSHOT_ACK, KIND_SNAPSHOT_CHUNK, MAGIC, PROTOCOL_VERSION,
};
