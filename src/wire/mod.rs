//! The peer wire codec: length-prefixed binary frames between kvraft processes.
//!
//! `frame.rs` owns the header, `decode`/`encode`, `DecodeError` and the non-Raft bodies;
//! `peer.rs` owns the bodies carrying Raft types. Both are pure functions over `&[u8]` /
//! `Vec<u8>`: no I/O, no clock. Byte layouts are documented at the top of each file.
pub mod frame;
mod peer;

pub use frame::{
    cluster_id, decode, encode, encoded_len, peek_header, DecodeError, Frame, BODY_SIZE_MAX,
    KIND_CLIENT_REPLY, KIND_CLIENT_REQUEST, KIND_HELLO, KIND_RAFT, KIND_SNAPSHOT_ACK,
    KIND_SNAPSHOT_CHUNK, MAGIC, PROTOCOL_VERSION,
};
