//! `Incoming`: a snapshot being received from the leader, and the one received whole and
//! verified that waits for the core to install it.
//!
//! The receiver (`snapshot/transfer.rs`) writes chunks to a partial file and renames it into
//! place once verified; this part remembers which snapshot that was until the core's `Ready`
//! installs it (`take_received`), so the node never installs a file it did not receive.
//!
//! Invariants (checked by `check_invariants`, besides the receiver's own):
//! 1. A snapshot waiting to be installed is the last one the receiver completed (chunks of
//!    it are answered "complete", never written again).

use log::warn;

use super::snapshot::{PartialStore, SnapshotHeader, SnapshotReceiver};
use crate::raft::{EntryId, NodeId, SnapshotMeta};

/// What one chunk gave: the offset to ask for next, whether the chunk was taken, and the
/// completed file's header and path.
pub(super) type ChunkResult = (u64, bool, Option<(SnapshotHeader, std::path::PathBuf)>);

pub(super) struct Incoming<P: PartialStore> {
    receiver: SnapshotReceiver<P>,
    /// Received, verified and renamed into place; the core has not installed it yet.
    /// Invariant 1.
    received: Option<EntryId>,
}

impl<P: PartialStore> Incoming<P> {
    /// `on_disk`: the snapshot the node already holds (chunks of it are answered "complete").
    pub(super) fn new(receiver: SnapshotReceiver<P>, on_disk: Option<EntryId>) -> Incoming<P> {
        let mut receiver = receiver;
        if let Some(last) = on_disk {
            receiver.set_installed(last);
        }
        Incoming {
            receiver,
            received: None,
        }
    }

    /// Hand a chunk from `from` to the receiver. A bad chunk abandons the transfer.
    pub(super) fn on_chunk(
        &mut self,
        from: NodeId,
        meta: &SnapshotMeta,
        total_size: u64,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> ChunkResult {
        match self.receiver.on_chunk(meta, total_size, offset, data, done) {
            Ok(out) => {
                if let Some((header, _)) = &out.complete {
                    self.received = Some(header.meta.last);
                }
                (out.next_offset, out.ok, out.complete)
            }
            Err(e) => {
                warn!("snapshot chunk from node {from}: {e}");
                self.receiver.abort();
                (0, false, None)
            }
        }
    }

    /// The core installs the snapshot at `last`: it must be the one received.
    pub(super) fn take_received(&mut self, last: EntryId) -> Result<(), String> {
        match self.received.take() {
            Some(id) if id == last => Ok(()),
            other => Err(format!(
                "the core installs a snapshot at {last} but the received file is {other:?}"
            )),
        }
    }

    pub(super) fn check_invariants(&self) {
        self.receiver.check_invariants();
        if let Some(id) = self.received {
            assert_eq!(
                self.receiver.installed(),
                Some(id),
                "snapshot {id} waits to be installed but the receiver completed another"
            );
        }
    }
}
