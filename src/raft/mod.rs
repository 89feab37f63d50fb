//! The Raft consensus core: a pure state machine (no I/O, no clock, no global randomness).
pub mod message;
pub mod types;

pub use message::{AppendResult, Message, MessageBody, RejectHint};
pub use types::{
    ConfChange, ConfChangeOp, ConfState, Entry, EntryId, EntryKind, HardState, LogIndex, NodeId,
    SnapshotMeta, Term,
};
