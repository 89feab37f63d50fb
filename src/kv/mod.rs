//! (placeholder in the snap worktree: the kv helper owns this file; only the trait is here)
use crate::client::Value;
use crate::raft::LogIndex;

pub enum Request {
    Write(Vec<u8>),
    Read(Vec<u8>),
    Reply(Value),
}

#[derive(Debug)]
pub struct SnapshotError(pub String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for SnapshotError {}

#[allow(clippy::len_without_is_empty)]
pub trait StateMachine {
    fn parse(&self, args: &[Vec<u8>]) -> Option<Request>;
    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Value;
    fn query(&self, data: &[u8]) -> Value;
    fn applied_index(&self) -> LogIndex;
    /// Returns the state hash.
    fn write_snapshot(&self, w: &mut dyn std::io::Write) -> std::io::Result<u64>;
    fn load_snapshot(&mut self, r: &mut dyn std::io::Read) -> Result<u64, SnapshotError>;
    fn state_hash(&self) -> u64;
    fn len(&self) -> usize;
}
