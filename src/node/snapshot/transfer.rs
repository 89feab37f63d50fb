//! InstallSnapshot transfer (§7): the leader streams a file in chunks, a bounded number in
//! flight; the follower writes them in order to a partial file, verifies it whole and renames it
//! into place (invariant 5 of `mod.rs`).

use super::*;

// ---------------------------------------------------------------------------------------------
// InstallSnapshot transfer.

/// Leader side: streams one snapshot file to one follower in chunks, at most `inflight_max`
/// chunks unacknowledged, reading each chunk from the file when it is sent (never the whole
/// file in memory).
///
/// Recovery from loss without livelock: an ack that moves `acked` forward is progress; an ack
/// that repeats `acked` while chunks beyond it are out means the follower is missing the chunk
/// at `acked` (go-back-N), acted on once per offset so duplicated acks cannot amplify into
/// endless resends; `ok = false` rewinds to 0; and [`SnapshotSender::on_timeout`] resends from
/// `acked` when everything in flight was lost.
pub struct SnapshotSender<F: ChunkSource = File> {
    file: F,
    meta: SnapshotMeta,
    total_size: u64,
    chunk_bytes: usize,
    inflight_max: usize,
    /// The follower holds `[0, acked)`. Invariant: `acked <= next_send <= total_size`.
    acked: u64,
    /// Where the next chunk starts.
    next_send: u64,
    /// The `acked` value at which we last went back on a repeated ack.
    went_back_at: Option<u64>,
}

impl SnapshotSender<File> {
    /// Opens the file, takes a shared `flock` on it and checks that its header is the snapshot
    /// `meta` names. The open, locked file keeps its contents readable even if compaction
    /// removes its name meanwhile.
    pub fn new(
        path: PathBuf,
        meta: SnapshotMeta,
        chunk_bytes: usize,
        inflight_max: usize,
    ) -> io::Result<Self> {
        assert!(
            (1..=SNAPSHOT_CHUNK_SIZE_MAX).contains(&chunk_bytes),
            "chunk of {chunk_bytes} bytes outside 1..={SNAPSHOT_CHUNK_SIZE_MAX}"
        );
        assert!(inflight_max >= 1, "inflight_max 0 would never send");
        let file = File::open(&path)?;
        // Held while the file is open: the snapshot child truncates an old snapshot away only
        // when nobody holds this (`remove_gently`); it just unlinks one that is being read.
        if !sys::try_lock(file.as_raw_fd(), sys::FileLock::Shared)? {
            let msg = format!("snapshot file {} is being removed", path.display());
            return Err(io::Error::new(io::ErrorKind::NotFound, msg));
        }
        let header = read_header_of(&file, &path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if header.meta != meta {
            let msg = format!(
                "snapshot file {} holds {} but {} was to be sent",
                path.display(),
                header.meta.last,
                meta.last
            );
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        let total_size = file.metadata()?.len();
        Ok(SnapshotSender::from_source(
            file,
            meta,
            total_size,
            chunk_bytes,
            inflight_max,
        ))
    }
}

/// Where a sender reads its chunks: an open file, or (in the simulator) bytes in memory.
pub trait ChunkSource {
    /// Fill `buf` from `offset`; the caller keeps `offset + buf.len()` within the size.
    fn read_chunk_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ChunkSource for File {
    fn read_chunk_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

impl ChunkSource for std::rc::Rc<[u8]> {
    fn read_chunk_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = self
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl<F: ChunkSource> SnapshotSender<F> {
    /// A sender over `file`, whose contents the caller checked are the snapshot `meta` names.
    pub fn from_source(
        file: F,
        meta: SnapshotMeta,
        total_size: u64,
        chunk_bytes: usize,
        inflight_max: usize,
    ) -> Self {
        assert!(
            (1..=SNAPSHOT_CHUNK_SIZE_MAX).contains(&chunk_bytes),
            "chunk of {chunk_bytes} bytes outside 1..={SNAPSHOT_CHUNK_SIZE_MAX}"
        );
        assert!(inflight_max >= 1, "inflight_max 0 would never send");
        SnapshotSender {
            file,
            meta,
            total_size,
            chunk_bytes,
            inflight_max,
            acked: 0,
            next_send: 0,
            went_back_at: None,
        }
    }

    /// The next chunk to send if the window allows: (offset, data, done).
    pub fn next_chunk(&mut self) -> io::Result<Option<(u64, Vec<u8>, bool)>> {
        let window = (self.chunk_bytes as u64) * (self.inflight_max as u64);
        if self.next_send >= self.total_size || self.next_send - self.acked >= window {
            return Ok(None);
        }
        let offset = self.next_send;
        let len = (self.total_size - offset).min(self.chunk_bytes as u64) as usize;
        let mut data = vec![0u8; len];
        self.file.read_chunk_at(&mut data, offset)?;
        self.next_send = offset + len as u64;
        self.check_invariants();
        Ok(Some((offset, data, self.next_send == self.total_size)))
    }

    /// The follower holds the file up to `next_offset` (`ok`), or asks to start over.
    pub fn on_ack(&mut self, next_offset: u64, ok: bool) {
        if !ok {
            self.acked = 0;
            self.next_send = 0;
            self.went_back_at = None;
        } else if next_offset > self.total_size {
            log::warn!(
                "snapshot {} ack at {next_offset} beyond its {} bytes: ignored",
                self.meta.last,
                self.total_size
            );
        } else if next_offset > self.acked {
            self.acked = next_offset;
            // A follower that resumes an earlier transfer may be ahead of what we sent.
            self.next_send = self.next_send.max(next_offset);
        } else if next_offset == self.acked
            && self.next_send > self.acked
            && self.went_back_at != Some(self.acked)
        {
            self.next_send = self.acked;
            self.went_back_at = Some(self.acked);
        }
        self.check_invariants();
    }

    /// No ack arrived for a while: resend from what the follower is known to hold.
    pub fn on_timeout(&mut self) {
        self.next_send = self.acked;
        self.check_invariants();
    }

    /// Bytes `[offset, offset + len)` of the file, outside the transfer window: a backup
    /// (`SNAPSHOT READ`) reads the file at its own pace. Past the end is an error.
    pub fn read_at(&mut self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        assert!(
            len <= SNAPSHOT_CHUNK_SIZE_MAX,
            "read of {len} bytes past the chunk limit {SNAPSHOT_CHUNK_SIZE_MAX}"
        );
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.total_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at offset {offset} run past the snapshot's {} bytes",
                    self.total_size
                ),
            ));
        }
        let mut data = vec![0u8; len];
        self.file.read_chunk_at(&mut data, offset)?;
        Ok(data)
    }

    /// The follower acknowledged the whole file.
    pub fn is_complete(&self) -> bool {
        self.acked == self.total_size
    }

    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Bytes the follower has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    fn check_invariants(&self) {
        assert!(
            self.acked <= self.next_send && self.next_send <= self.total_size,
            "sender acked {} next {} total {}",
            self.acked,
            self.next_send,
            self.total_size
        );
    }
}

/// The follower's answer to one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// The offset the follower expects next (the file size once complete).
    pub next_offset: u64,
    /// False: the follower holds nothing of this snapshot; the leader must start from 0.
    pub ok: bool,
    /// Set once, on the chunk that completed the file: it was verified and renamed into place.
    pub complete: Option<(SnapshotHeader, PathBuf)>,
}

impl ChunkOutcome {
    fn expect(next_offset: u64) -> ChunkOutcome {
        ChunkOutcome {
            next_offset,
            ok: true,
            complete: None,
        }
    }
    fn restart() -> ChunkOutcome {
        ChunkOutcome {
            next_offset: 0,
            ok: false,
            complete: None,
        }
    }
}

/// Where a receiver keeps the file being received: the data directory (`DirStore`), or (in the
/// simulator) memory. One partial file at a time.
pub trait PartialStore {
    /// The partial file's name, for errors.
    fn partial_name(&self, last: EntryId) -> PathBuf;
    /// Start an empty partial file for `last`, replacing any other.
    fn create(&mut self, last: EntryId) -> io::Result<()>;
    /// Append to the partial file.
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Make the partial file durable, verify it whole (header + CRC), check it is the snapshot
    /// `meta` announced, and put it in place as snapshot `last`.
    fn finish(
        &mut self,
        last: EntryId,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotHeader, PathBuf), SnapshotFileError>;
    /// Remove the partial file of `last`, if any.
    fn remove(&mut self, last: EntryId);
}

/// The data directory as a `PartialStore`: `<name>.recv.tmp`, renamed into place when whole.
pub struct DirStore {
    dir: PathBuf,
    file: Option<File>,
}

impl DirStore {
    pub fn new(dir: PathBuf) -> DirStore {
        DirStore { dir, file: None }
    }
}

impl PartialStore for DirStore {
    fn partial_name(&self, last: EntryId) -> PathBuf {
        tmp_path(&self.dir, last, RECV_TMP_SUFFIX)
    }

    fn create(&mut self, last: EntryId) -> io::Result<()> {
        self.file = None;
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.partial_name(last))?;
        self.file = Some(file);
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(data),
            None => Err(io::Error::other("no partial snapshot file open")),
        }
    }

    fn finish(
        &mut self,
        last: EntryId,
        meta: &SnapshotMeta,
    ) -> Result<(SnapshotHeader, PathBuf), SnapshotFileError> {
        let tmp = self.partial_name(last);
        let result = finish_transfer(&self.dir, self.file.take(), &tmp, last, meta);
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn remove(&mut self, last: EntryId) {
        self.file = None;
        let tmp = self.partial_name(last);
        if let Err(e) = fs::remove_file(&tmp) {
            log::warn!("remove {}: {e}", tmp.display());
        }
    }
}

struct Partial {
    last: EntryId,
    total_size: u64,
    /// Bytes written, in order, from offset 0. Invariant: `written <= total_size`.
    written: u64,
}

impl Partial {
    /// Appends the part of the chunk at `offset` that extends what was written; a duplicate
    /// or a chunk after a gap writes nothing.
    fn write_in_order(
        &mut self,
        store: &mut impl PartialStore,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset <= self.written && end > self.written {
            let skip = (self.written - offset) as usize;
            store.append(&data[skip..])?;
            self.written = end;
        }
        assert!(
            self.written <= self.total_size,
            "wrote {} of {}",
            self.written,
            self.total_size
        );
        Ok(())
    }
}

/// Follower side: writes chunks, strictly in order, to a partial file (`<name>.recv.tmp` in the
/// data dir), and on the last one makes it durable, verifies the whole file and puts it in
/// place (invariant 5).
///
/// Answers: a chunk at the expected offset is written; one before it is a duplicate and one
/// after it a gap, both answered with the expected offset (resume). A chunk of a different
/// snapshot at offset 0 abandons the current transfer and starts that one (the newest sender
/// wins); at any other offset, or with no transfer under way (e.g. after a restart lost the
/// temp file), it is answered `ok = false`: start over from 0.
pub struct SnapshotReceiver<P: PartialStore = DirStore> {
    store: P,
    partial: Option<Partial>,
    /// The last snapshot completed (or loaded) here, so a late chunk of it is answered
    /// "complete" rather than starting it again.
    installed: Option<EntryId>,
}

impl SnapshotReceiver<DirStore> {
    pub fn new(dir: PathBuf) -> Self {
        SnapshotReceiver::with_store(DirStore::new(dir))
    }
}

impl<P: PartialStore> SnapshotReceiver<P> {
    pub fn with_store(store: P) -> Self {
        SnapshotReceiver {
            store,
            partial: None,
            installed: None,
        }
    }

    /// Handles one chunk. `Err` is a chunk that breaks a limit or the protocol (nothing is
    /// written, the transfer under way is kept), or an I/O error or a completed file that
    /// fails verification (the transfer is abandoned and its temp file removed). Either way
    /// log it and answer the leader with offset 0, `ok = false` (or drop the connection).
    pub fn on_chunk(
        &mut self,
        meta: &SnapshotMeta,
        total_size: u64,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<ChunkOutcome, SnapshotFileError> {
        let tmp = self.store.partial_name(meta.last);
        check_chunk(&tmp, total_size, offset, data.len(), done)?;
        if self.installed == Some(meta.last) {
            return Ok(ChunkOutcome::expect(total_size));
        }
        let same = |p: &Partial| p.last == meta.last && p.total_size == total_size;
        match &self.partial {
            Some(p) if same(p) => {}
            Some(_) | None if offset != 0 => return Ok(ChunkOutcome::restart()),
            Some(_) => self.abort(),
            None => {}
        }
        if self.partial.is_none() {
            self.store
                .create(meta.last)
                .map_err(|e| SnapshotFileError::io(&tmp, e))?;
            self.partial = Some(Partial {
                last: meta.last,
                total_size,
                written: 0,
            });
        }
        let p = self.partial.as_mut().expect("created above");
        if let Err(e) = p.write_in_order(&mut self.store, offset, data) {
            self.abort();
            return Err(SnapshotFileError::io(&tmp, e));
        }
        if p.written < p.total_size {
            return Ok(ChunkOutcome::expect(p.written));
        }
        let p = self.partial.take().expect("checked above");
        let complete = self.store.finish(p.last, meta)?;
        self.installed = Some(meta.last);
        Ok(ChunkOutcome {
            next_offset: total_size,
            ok: true,
            complete: Some(complete),
        })
    }

    /// Tells the receiver the node already holds snapshot `last` (e.g. loaded at start-up), so
    /// chunks of it are answered "complete".
    pub fn set_installed(&mut self, last: EntryId) {
        self.installed = Some(last);
    }

    /// The snapshot the node holds or last received whole, if any.
    pub fn installed(&self) -> Option<EntryId> {
        self.installed
    }

    /// Drops the transfer under way, removing its temp file.
    pub fn abort(&mut self) {
        if let Some(p) = self.partial.take() {
            self.store.remove(p.last);
        }
    }

    /// The transfer under way: (snapshot, bytes received, total size).
    pub fn in_progress(&self) -> Option<(EntryId, u64, u64)> {
        self.partial
            .as_ref()
            .map(|p| (p.last, p.written, p.total_size))
    }

    /// The store (the simulator inspects its in-memory files).
    pub fn store_mut(&mut self) -> &mut P {
        &mut self.store
    }

    /// Invariant 5's bookkeeping: what was written never passes the announced size.
    pub fn check_invariants(&self) {
        if let Some(p) = &self.partial {
            assert!(
                p.written <= p.total_size,
                "receiving {}: wrote {} of {}",
                p.last,
                p.written,
                p.total_size
            );
        }
    }
}

/// Limits and the protocol, checked before anything is written (invariant 2).
fn check_chunk(
    tmp: &Path,
    total: u64,
    offset: u64,
    len: usize,
    done: bool,
) -> Result<(), SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let fail = |kind| Err(SnapshotFileError::new(tmp, kind));
    if total > SNAPSHOT_SIZE_MAX {
        return fail(K::TooLarge { size: total });
    }
    if total < SNAPSHOT_FILE_SIZE_MIN {
        return fail(K::Truncated { size: total });
    }
    if len > SNAPSHOT_CHUNK_SIZE_MAX {
        return fail(K::ChunkTooLarge { len });
    }
    let len = len as u64;
    if offset > total || len > total - offset {
        return fail(K::ChunkBeyondEnd { offset, len, total });
    }
    if done != (offset + len == total) {
        return fail(K::DoneMismatch { offset, len, total });
    }
    Ok(())
}

/// fsync, verify (header + CRC), check it is the announced snapshot, rename, fsync the dir.
fn finish_transfer(
    dir: &Path,
    file: Option<File>,
    tmp: &Path,
    last: EntryId,
    meta: &SnapshotMeta,
) -> Result<(SnapshotHeader, PathBuf), SnapshotFileError> {
    let file = file.ok_or_else(|| {
        SnapshotFileError::io(tmp, io::Error::other("no partial snapshot file open"))
    })?;
    file.sync_all().map_err(|e| SnapshotFileError::io(tmp, e))?;
    drop(file);
    let header = verify_snapshot_file(tmp)?;
    check_announced(&header, meta, tmp)?;
    let path = dir.join(snapshot_file_name(last));
    fs::rename(tmp, &path).map_err(|e| SnapshotFileError::io(tmp, e))?;
    sync_dir(dir).map_err(|e| SnapshotFileError::io(dir, e))?;
    Ok((header, path))
}

/// A transferred file must be the snapshot the leader announced.
pub fn check_announced(
    header: &SnapshotHeader,
    meta: &SnapshotMeta,
    name: &Path,
) -> Result<(), SnapshotFileError> {
    if header.meta != *meta {
        let kind = SnapshotFileErrorKind::MetaMismatch {
            expected: meta.last,
            header: header.meta.last,
        };
        return Err(SnapshotFileError::new(name, kind));
    }
    Ok(())
}
