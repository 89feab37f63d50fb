//! (placeholder in the snap worktree: the lead merges these lines into the real node/mod.rs)
pub mod snapshot;
pub mod sys;
