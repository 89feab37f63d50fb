//! One segment file, created at full size and mapped: the only unsafe code in kvraft.
//!
//! Owns: creating a segment (temp name, preallocate, header, fdatasync, rename, fsync of the
//! directory), or turning a spare zeroed ahead of need (`Spare`, `Prefill::ZeroAhead`) into
//! one the same way, opening and mapping one, writing records at the tail (pwrite), and making the
//! file durable (fdatasync). Must not: interpret records beyond the header (see `format.rs`,
//! `segmented.rs`).
//!
//! Why appends use pwrite and not stores into the mapping (the issue asked for the latter):
//! with stores, every page of a fallocated segment takes a write fault whose `page_mkwrite`
//! (ext4: block reservation, buffer dirtying) costs ~4 µs, and every writeback write-protects
//! the dirty pages again (`folio_mkclean`, a TLB flush), so the partly filled last page faults
//! once more per batch. At batch 256 that held the log at 0.65-0.70x of plain write+fdatasync
//! (benches/wal.rs, ~210 ns/record in `append`, 0.04 faults/record). Prefaulting the batch's
//! range with one madvise(MADV_POPULATE_WRITE) did not help (same 0.68x: the cost is the
//! mkwrite work, not the trap), and MAP_POPULATE or prefaulting ahead would dirty zero pages
//! that are then written back twice. pwrite of the encoded batch takes none of those faults:
//! 0.001 faults/record, ~115 ns/record, 0.95-1.0x of plain. Reads, recovery and the rare
//! zeroing (torn tail, truncation) still go through the mapping, which sees the same page cache
//! pages pwrite fills (MAP_SHARED), so no read path changed.
//!
//! Invariants:
//! 1. The file is exactly `map.len()` bytes for the segment's whole life, and its blocks are
//!    allocated (fallocate or written zeros): neither a store into the mapping nor a pwrite
//!    inside it can hit a hole, so a full disk can never raise SIGBUS or fail an append.
//! 2. Nothing in this process truncates or resizes a mapped segment; a segment is unmapped
//!    (dropped) before its file is deleted.
//! 3. The descriptor we keep (for pwrite and fdatasync) is close-on-exec (std opens with
//!    O_CLOEXEC); a forked snapshot child inherits it and the mapping (MAP_SHARED) but never
//!    writes either.
#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use super::format::{encode_segment_header, SEGMENT_HEADER_SIZE};
use super::{io_error, WalError};
use crate::raft::LogIndex;

/// How a new segment's blocks are allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefill {
    /// `fallocate` only: fast to create, but the extents stay "unwritten", so the first
    /// fdatasync after writing into them also commits the extent conversion to the journal.
    Fallocate,
    /// `fallocate`, then write zeros over the whole file and fdatasync once: slower to create,
    /// cheaper to sync afterwards (the extents are already written).
    ZeroFill,
    /// The next segment is prepared ahead as a [`Spare`]: fallocated, then zeroed a step at a
    /// time as the log is written (twice as many bytes as appended, in steps of at least
    /// `SPARE_STEP`), so it is zero-filled by the time it is needed without one long stall;
    /// a roll before it is ready creates the segment as `Fallocate` does.
    ///
    /// Why: an fdatasync that writes into unwritten extents also converts them, a metadata
    /// change, so it waits for an ext4 journal commit, which carries whatever else is pending
    /// (a snapshot file's block allocations). Measured (4 KiB pwrite+fdatasync into a 64 MiB
    /// segment, 2-core VM, ext4, alternating): fdatasync p50 0.117-0.129 ms fallocated vs
    /// 0.063-0.080 ms zero-filled; beside a paced 288 MB snapshot writer p90 0.78-1.24 ms vs
    /// 0.08-0.44 ms. Zero-filling 64 MiB at once took 85-158 ms, against 0.6-25 ms for
    /// fallocate alone: not a pause the event loop can take at a roll.
    ZeroAhead,
}

/// Least bytes of zeros a [`Spare`] is written at a time.
pub const SPARE_STEP: u64 = 256 * 1024;
/// Name of the spare segment being prepared (a temp file: deleted at start-up if left).
pub const SPARE_NAME: &str = "spare.wal.tmp";

/// The next segment file, being zero-filled ahead of need (`Prefill::ZeroAhead`).
/// Invariant: `zeroed <= size`; bytes `[0, zeroed)` of the file are zeros written to it;
/// `synced` only once `zeroed == size` and an fdatasync succeeded after the last write.
pub struct Spare {
    path: PathBuf,
    file: File,
    size: u64,
    zeroed: u64,
    synced: bool,
}

impl Spare {
    /// Creates (replacing any old one) and fallocates the spare file of `size` bytes in `dir`.
    pub fn create(dir: &Path, size: u64) -> Result<Spare, WalError> {
        let path = dir.join(SPARE_NAME);
        let file = create_allocated(&path, |f| fallocate(f, &path, size).map(|_| ()))?;
        Ok(Spare {
            path,
            file,
            size,
            zeroed: 0,
            synced: false,
        })
    }

    /// Zero-filled and durable: ready to become a segment.
    pub fn is_ready(&self) -> bool {
        self.synced
    }

    /// Writes up to `max` more bytes of zeros (whole `SPARE_STEP`s, at least one) and starts
    /// their writeback; once the whole file is written, fdatasyncs it (its writeback was
    /// started step by step, so little is left to wait for). Returns `is_ready()`.
    pub fn step(&mut self, max: u64) -> Result<bool, WalError> {
        static ZEROS: [u8; SPARE_STEP as usize] = [0; SPARE_STEP as usize];
        let mut left = max.max(SPARE_STEP);
        while left > 0 && self.zeroed < self.size {
            let n = (self.size - self.zeroed).min(SPARE_STEP);
            self.file
                .write_all_at(&ZEROS[..n as usize], self.zeroed)
                .map_err(|e| io_error(&self.path, "zero-fill", e))?;
            // SAFETY: sync_file_range on a descriptor we own, with integer arguments.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    self.zeroed as libc::off64_t,
                    n as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.zeroed += n;
            left = left.saturating_sub(n);
        }
        if self.zeroed == self.size && !self.synced {
            self.file
                .sync_data()
                .map_err(|e| sync_failed(&self.path, e))?;
            self.synced = true;
        }
        Ok(self.synced)
    }

    /// Removes the file (an abandoned spare).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Suffix of a segment file's name.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being created; any left at start-up are deleted.
pub const TEMP_SUFFIX: &str = ".wal.tmp";
/// A segment no longer part of the log (behind a snapshot), waiting to be unlinked by a
/// background process; never read, and removed at the next open.
pub const OBSOLETE_SUFFIX: &str = ".wal.obsolete";

/// The file name of the segment whose first record has index `first`.
pub fn segment_file_name(first: LogIndex) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first.0)
}

/// The first index encoded in a segment file name, if the name is one.
pub fn parse_segment_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

pub struct Segment {
    path: PathBuf,
    /// Kept for fdatasync (see `flush`); close-on-exec.
    file: File,
    map: MmapMut,
}

impl Segment {
    /// Creates the segment for `first` in `dir`, durably (file and directory entry).
    pub fn create(
        dir: &Path,
        first: LogIndex,
        size: u64,
        prefill: Prefill,
    ) -> Result<Segment, WalError> {
        assert!(size as usize > SEGMENT_HEADER_SIZE, "segment size {size}");
        let tmp = dir.join(format!("{:020}{TEMP_SUFFIX}", first.0));
        let file = create_allocated(&tmp, |f| preallocate(f, &tmp, size, prefill))?;
        Segment::finish(dir, first, file, &tmp, size)
    }

    /// Makes a ready `spare` the segment for `first` in `dir`, durably (as `create` does).
    pub fn from_spare(dir: &Path, first: LogIndex, spare: Spare) -> Result<Segment, WalError> {
        assert!(
            spare.is_ready(),
            "spare {} used before it is zeroed",
            spare.path.display()
        );
        Segment::finish(dir, first, spare.file, &spare.path, spare.size)
    }

    /// Header, fdatasync, rename of `tmp` to the segment's name, fsync of the directory, map.
    fn finish(
        dir: &Path,
        first: LogIndex,
        file: File,
        tmp: &Path,
        size: u64,
    ) -> Result<Segment, WalError> {
        let path = dir.join(segment_file_name(first));
        let header = encode_segment_header(first);
        file.write_all_at(&header, 0)
            .map_err(|e| io_error(tmp, "write header", e))?;
        file.sync_data().map_err(|e| sync_failed(tmp, e))?;
        fs::rename(tmp, &path).map_err(|e| io_error(&path, "rename", e))?;
        fsync_dir(dir)?;
        let map = map_file(&file, &path, size)?;
        Ok(Segment { path, file, map })
    }

    /// Opens and maps an existing segment (its header is checked by the caller).
    pub fn open(path: &Path) -> Result<Segment, WalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_error(path, "open", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_error(path, "stat", e))?
            .len();
        if len < SEGMENT_HEADER_SIZE as u64 || len > u32::MAX as u64 {
            return Err(WalError::Corrupt {
                file: path.to_path_buf(),
                offset: 0,
                index: None,
                reason: format!(
                    "segment file of {len} bytes (header is {SEGMENT_HEADER_SIZE}, at most 4 GiB)"
                ),
            });
        }
        let map = map_file(&file, path, len)?;
        Ok(Segment {
            path: path.to_path_buf(),
            file,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Writes `bytes` at `offset` with pwrite (through the page cache the mapping shares).
    pub fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), WalError> {
        assert!(
            offset + bytes.len() <= self.map.len(),
            "write {offset}+{} beyond {}",
            bytes.len(),
            self.map.len()
        );
        self.file
            .write_all_at(bytes, offset as u64)
            .map_err(|e| io_error(&self.path, "write", e))
    }

    /// Makes `[offset, offset + len)` durable, whether written with `write_at` or through the
    /// mapping. fdatasync of the file: it writes back pages dirtied through the mapping too, and
    /// only the range we wrote since the last flush is dirty. Measured faster than
    /// msync(MS_SYNC) of the range on ext4 (0.65x vs 0.40x of plain write+fdatasync at batch
    /// 256, when appends were stores into the mapping).
    pub fn flush(&self, offset: usize, len: usize) -> Result<(), WalError> {
        assert!(
            offset + len <= self.map.len(),
            "flush {offset}+{len} beyond {}",
            self.map.len()
        );
        if len == 0 {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| sync_failed(&self.path, e))
    }
}

fn map_file(file: &File, path: &Path, len: u64) -> Result<MmapMut, WalError> {
    // SAFETY: memmap2 requires that the file is not truncated or modified behind the mapping's
    // back while it lives. The segment files belong to this process (one node per data
    // directory); we never resize a mapped file (invariant 1, 2) and unmap before deleting,
    // and the mapping covers exactly the file's current length, so every page is backed.
    unsafe { MmapOptions::new().len(len as usize).map_mut(file) }
        .map_err(|e| io_error(path, "mmap", e))
}

/// Creates (or truncates) the file at `path` and gives it its blocks with `allocate`; the file
/// is removed again if that fails.
fn create_allocated(
    path: &Path,
    allocate: impl FnOnce(&File) -> Result<(), WalError>,
) -> Result<File, WalError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io_error(path, "create", e))?;
    if let Err(e) = allocate(&file) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

fn preallocate(file: &File, path: &Path, size: u64, prefill: Prefill) -> Result<(), WalError> {
    let fallocated = fallocate(file, path, size)?;
    if fallocated && prefill != Prefill::ZeroFill {
        return Ok(());
    }
    write_zeros(file, path, size)
}

/// `fallocate` of `size` bytes; false if the filesystem cannot (then zeros must be written).
fn fallocate(file: &File, path: &Path, size: u64) -> Result<bool, WalError> {
    // SAFETY: fallocate on a descriptor we own, with plain integer arguments; it touches no
    // memory of ours.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size as libc::off_t) };
    let fallocated = if rc == 0 {
        true
    } else {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                return Err(WalError::NoSpace {
                    path: path.to_path_buf(),
                })
            }
            // The filesystem cannot preallocate: writing zeros allocates the blocks instead.
            Some(libc::EOPNOTSUPP) => false,
            _ => return Err(io_error(path, "fallocate", e)),
        }
    };
    Ok(fallocated)
}

fn write_zeros(file: &File, path: &Path, size: u64) -> Result<(), WalError> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], off).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                WalError::NoSpace {
                    path: path.to_path_buf(),
                }
            } else {
                io_error(path, "zero-fill", e)
            }
        })?;
        off += n as u64;
    }
    Ok(())
}

fn sync_failed(path: &Path, e: io::Error) -> WalError {
    WalError::SyncFailed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// fsync of a directory, so the creation, rename or deletion of its entries is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    let d = File::open(dir).map_err(|e| io_error(dir, "open directory", e))?;
    d.sync_all().map_err(|e| sync_failed(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_first_index_and_parse_back() {
        let a = segment_file_name(LogIndex(9));
        let b = segment_file_name(LogIndex(10));
        assert!(a < b);
        assert_eq!(parse_segment_file_name(&a), Some(LogIndex(9)));
        assert_eq!(parse_segment_file_name("hardstate"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000009.wal.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("0000000000000000000x.wal"), None);
    }

    #[test]
    fn created_segment_is_full_size_mapped_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        for prefill in [Prefill::Fallocate, Prefill::ZeroFill] {
            let first = LogIndex(if prefill == Prefill::Fallocate { 1 } else { 2 });
            let mut s = Segment::create(dir.path(), first, 1 << 20, prefill).unwrap();
            assert_eq!(s.len(), 1 << 20);
            assert_eq!(fs::metadata(s.path()).unwrap().len(), 1 << 20);
            s.bytes_mut()[100] = 7;
            s.flush(100, 1).unwrap();
            drop(s);
            let again = Segment::open(&dir.path().join(segment_file_name(first))).unwrap();
            assert_eq!(again.bytes()[100], 7);
        }
    }
}
