//! The backup file: what `kvctl snapshot save FILE` writes (`BackupWriter`) and what
//! `kvraftd --restore FILE` reads (`BackupReader`). It wraps one snapshot file of the leader,
//! byte for byte, with what the snapshot does not say itself: that it is a backup, of which
//! snapshot, and a checksum of the whole.
//!
//! # The backup file (version 1), big-endian
//!
//! ```text
//! offset  size  field
//!      0     8  magic 0x4b56_5241_4654_424b ("KVRAFTBK")
//!      8     4  version (1)
//!     12     4  flags (0; other values are refused)
//!     16     8  snapshot last index
//!     24     8  snapshot last term
//!     32     8  payload length n (SNAPSHOT_FILE_SIZE_MIN ..= SNAPSHOT_SIZE_MAX)
//!     40     4  CRC32C of the payload
//!     44     4  CRC32C of bytes [0, 44) (this header)
//!     48     n  payload: the node's snapshot file, byte for byte (format in `mod.rs`,
//!               with its own magic, version, state hash and CRC32C trailer)
//!   48+n        end of file: the file size is exactly 48 + n
//! ```
//!
//! Written under `FILE.tmp`, fsynced, renamed to `FILE`, the directory fsynced: a failure
//! (a broken connection, a bad checksum, a full disk) removes the temporary file and leaves
//! nothing behind. While writing, the payload's own CRC trailer is checked as the bytes pass
//! (the node's checksum, end to end), and the payload CRC of the header is computed.
//!
//! Invariants:
//! 1. A file under the final name is whole: its header names the payload's length and CRC,
//!    and the payload's own trailer CRC checked out when it was written.
//! 2. Nothing is allocated from a length read from the file before it is checked against
//!    its limit; reading streams the payload in bounded buffers.

use super::*;

/// "KVRAFTBK".
pub const BACKUP_MAGIC: u64 = 0x4b56_5241_4654_424b;
pub const BACKUP_VERSION: u32 = 1;
/// The header's size: the payload starts here.
pub const BACKUP_HEADER_SIZE: usize = 48;
const _: () = assert!(BACKUP_HEADER_SIZE == 8 + 4 + 4 + 8 + 8 + 8 + 4 + 4);

/// What a backup's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    pub last: EntryId,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl BackupHeader {
    fn encode(&self) -> [u8; BACKUP_HEADER_SIZE] {
        let mut b = [0u8; BACKUP_HEADER_SIZE];
        BigEndian::write_u64(&mut b[0..8], BACKUP_MAGIC);
        BigEndian::write_u32(&mut b[8..12], BACKUP_VERSION);
        BigEndian::write_u32(&mut b[12..16], 0);
        BigEndian::write_u64(&mut b[16..24], self.last.index.0);
        BigEndian::write_u64(&mut b[24..32], self.last.term.0);
        BigEndian::write_u64(&mut b[32..40], self.payload_len);
        BigEndian::write_u32(&mut b[40..44], self.payload_crc);
        let crc = crc32c::crc32c(&b[..44]);
        BigEndian::write_u32(&mut b[44..48], crc);
        b
    }

    /// Check-then-decode (invariant 2): `file_size` is the whole file's.
    pub fn decode(b: &[u8; BACKUP_HEADER_SIZE], file_size: u64) -> Result<Self, String> {
        let magic = BigEndian::read_u64(&b[0..8]);
        if magic != BACKUP_MAGIC {
            return Err(format!(
                "not a kvraft backup (magic {magic:#018x}, expected {BACKUP_MAGIC:#018x})"
            ));
        }
        let version = BigEndian::read_u32(&b[8..12]);
        if version != BACKUP_VERSION {
            return Err(format!(
                "backup format version {version}; this kvraft reads version {BACKUP_VERSION}"
            ));
        }
        let (stored, computed) = (BigEndian::read_u32(&b[44..48]), crc32c::crc32c(&b[..44]));
        if stored != computed {
            return Err(format!(
                "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let flags = BigEndian::read_u32(&b[12..16]);
        if flags != 0 {
            return Err(format!("unknown header flags {flags:#x}"));
        }
        let h = BackupHeader {
            last: EntryId {
                index: LogIndex(BigEndian::read_u64(&b[16..24])),
                term: Term(BigEndian::read_u64(&b[24..32])),
            },
            payload_len: BigEndian::read_u64(&b[32..40]),
            payload_crc: BigEndian::read_u32(&b[40..44]),
        };
        check_payload_len(h.payload_len)?;
        if BACKUP_HEADER_SIZE as u64 + h.payload_len != file_size {
            return Err(format!(
                "the file is {file_size} bytes; its header says {} (truncated or extended)",
                BACKUP_HEADER_SIZE as u64 + h.payload_len
            ));
        }
        Ok(h)
    }
}

fn check_payload_len(n: u64) -> Result<(), String> {
    if !(SNAPSHOT_FILE_SIZE_MIN..=SNAPSHOT_SIZE_MAX).contains(&n) {
        return Err(format!(
            "a snapshot of {n} bytes is outside {SNAPSHOT_FILE_SIZE_MIN}..={SNAPSHOT_SIZE_MAX}"
        ));
    }
    Ok(())
}

/// Writes a backup file from the snapshot's bytes as they arrive, in order.
pub struct BackupWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// `None` once finished (or failed and cleaned up).
    file: Option<BufWriter<File>>,
    header: BackupHeader,
    written: u64,
    /// CRC32C of the payload but its last 4 bytes (the snapshot file's own CRC covers
    /// exactly that); the whole payload's CRC follows from it and `tail`.
    inner_crc: u32,
    /// The payload's last 4 bytes (its stored CRC), as they pass.
    tail: [u8; 4],
}

impl BackupWriter {
    /// Start `path` (as `path.tmp`) for snapshot `last` of `payload_len` bytes.
    pub fn create(path: &Path, last: EntryId, payload_len: u64) -> io::Result<BackupWriter> {
        check_payload_len(payload_len)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let tmp = with_suffix(path, ".tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut w = BackupWriter {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::with_capacity(IO_BUFFER_SIZE, file)),
            header: BackupHeader {
                last,
                payload_len,
                payload_crc: 0,
            },
            written: 0,
            inner_crc: 0,
            tail: [0; 4],
        };
        // A placeholder header; `finish` writes the real one once the CRC is known.
        w.io(|f| f.write_all(&[0u8; BACKUP_HEADER_SIZE]))?;
        Ok(w)
    }

    /// The payload bytes from `written()` on.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self.written + data.len() as u64;
        if end > self.header.payload_len {
            return Err(self.fail(format!(
                "the snapshot sent {end} bytes, more than the {} announced",
                self.header.payload_len
            )));
        }
        self.io(|f| f.write_all(data))?;
        let inner_end = self.header.payload_len - 4;
        if self.written < inner_end {
            let n = (inner_end - self.written).min(data.len() as u64) as usize;
            self.inner_crc = crc32c::crc32c_append(self.inner_crc, &data[..n]);
        }
        if end > inner_end {
            // The part of `data` at or past `inner_end`, and where it lands in `tail`.
            let from = inner_end.saturating_sub(self.written) as usize;
            let at = (self.written + from as u64 - inner_end) as usize;
            self.tail[at..at + data.len() - from].copy_from_slice(&data[from..]);
        }
        self.written = end;
        Ok(())
    }

    /// Payload bytes written so far (the offset of the next `write`).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Check the whole payload arrived and its own CRC holds, write the header, fsync,
    /// rename into place and fsync the directory. Returns the header written.
    pub fn finish(mut self) -> io::Result<BackupHeader> {
        if self.written != self.header.payload_len {
            let why = format!(
                "the snapshot ended after {} of {} bytes",
                self.written, self.header.payload_len
            );
            return Err(self.fail(why));
        }
        let stored = u32::from_be_bytes(self.tail);
        if stored != self.inner_crc {
            let why = format!(
                "the snapshot's checksum does not match its bytes (stored {stored:#010x}, computed {:#010x})",
                self.inner_crc
            );
            return Err(self.fail(why));
        }
        self.header.payload_crc = crc32c::crc32c_append(self.inner_crc, &self.tail);
        let head = self.header.encode();
        let result = (|| {
            let file = self.file.take().expect("open until finished");
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.write_all_at(&head, 0)?;
            file.sync_all()?;
            fs::rename(&self.tmp, &self.path)?;
            sync_parent(&self.path)
        })();
        match result {
            Ok(()) => Ok(self.header),
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                Err(e)
            }
        }
    }

    fn io(&mut self, f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> io::Result<()> {
        let file = self.file.as_mut().expect("open until finished");
        let r = f(file);
        if let Err(e) = &r {
            let why = e.to_string();
            return Err(self.fail(why));
        }
        r
    }

    /// Remove the temporary file; the error to return.
    fn fail(&mut self, why: String) -> io::Error {
        self.file = None;
        let _ = fs::remove_file(&self.tmp);
        io::Error::new(io::ErrorKind::InvalidData, why)
    }
}

impl Drop for BackupWriter {
    /// Not finished: nothing is left behind.
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Copy the payload of the backup at `path` to `to` (a new file, fsynced), checking the
/// header and the payload CRC on the way. On any error `to` is removed. Returns the header.
pub fn extract_backup(path: &Path, to: &Path) -> Result<BackupHeader, String> {
    let fail = |e: String| format!("backup {}: {e}", path.display());
    let file = File::open(path).map_err(|e| fail(e.to_string()))?;
    let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut head = [0u8; BACKUP_HEADER_SIZE];
    if size < BACKUP_HEADER_SIZE as u64 {
        return Err(fail(format!(
            "{size} bytes is shorter than a backup header (truncated)"
        )));
    }
    file.read_exact_at(&mut head, 0)
        .map_err(|e| fail(e.to_string()))?;
    let header = BackupHeader::decode(&head, size).map_err(fail)?;
    let result = copy_payload(file, &header, to).map_err(fail);
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result.map(|()| header)
}

fn copy_payload(file: File, header: &BackupHeader, to: &Path) -> Result<(), String> {
    let mut r = BufReader::with_capacity(IO_BUFFER_SIZE, file);
    io::copy(
        &mut (&mut r).take(BACKUP_HEADER_SIZE as u64),
        &mut io::sink(),
    )
    .map_err(|e| e.to_string())?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| format!("creating {}: {e}", to.display()))?;
    let mut w = CrcWriter::new(BufWriter::with_capacity(IO_BUFFER_SIZE, out));
    let n = io::copy(&mut (&mut r).take(header.payload_len), &mut w).map_err(|e| e.to_string())?;
    if n != header.payload_len {
        return Err(format!(
            "the payload ends after {n} of {} bytes",
            header.payload_len
        ));
    }
    if w.crc != header.payload_crc {
        return Err(format!(
            "payload checksum mismatch (stored {:#010x}, computed {:#010x}): the file is damaged",
            header.payload_crc, w.crc
        ));
    }
    let out = w
        .inner
        .into_inner()
        .map_err(|e| e.into_error().to_string())?;
    out.sync_all().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_bytes() -> Vec<u8> {
        let sm = crate::kv::KvStore::new(1);
        let header = SnapshotHeader {
            meta: SnapshotMeta {
                last: EntryId {
                    term: Term(3),
                    index: LogIndex(42),
                },
                conf: ConfState::new(vec![NodeId(1)], vec![]),
            },
            extra: Vec::new(),
        };
        let mut out = Vec::new();
        write_snapshot_to(&mut out, &header, &sm).expect("write");
        out
    }

    fn last() -> EntryId {
        EntryId {
            term: Term(3),
            index: LogIndex(42),
        }
    }

    fn save(dir: &Path, payload: &[u8], chunk: usize) -> io::Result<PathBuf> {
        let path = dir.join("b.kvbk");
        let mut w = BackupWriter::create(&path, last(), payload.len() as u64)?;
        for c in payload.chunks(chunk) {
            w.write(c)?;
        }
        w.finish()?;
        Ok(path)
    }

    #[test]
    fn a_saved_backup_extracts_to_the_same_snapshot_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let payload = snapshot_bytes();
        let path = save(dir.path(), &payload, 7).expect("saved");
        assert!(!dir.path().join("b.kvbk.tmp").exists());
        let out = dir.path().join("x");
        let h = extract_backup(&path, &out).expect("extracts");
        assert_eq!(h.last, last());
        assert_eq!(fs::read(&out).unwrap(), payload);
    }

    #[test]
    fn a_payload_whose_own_checksum_fails_or_that_ends_early_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = snapshot_bytes();
        let mid = payload.len() / 2;
        payload[mid] ^= 0x40;
        let e = save(dir.path(), &payload, 5).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let path = dir.path().join("b.kvbk");
        let mut w = BackupWriter::create(&path, last(), payload.len() as u64).unwrap();
        w.write(&payload[..10]).unwrap();
        let e = w.finish().unwrap_err();
        assert!(e.to_string().contains("ended after 10"), "{e}");
        let w = BackupWriter::create(&path, last(), payload.len() as u64).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_or_truncated_backup_is_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let payload = snapshot_bytes();
        let path = save(dir.path(), &payload, 1 << 20).expect("saved");
        let good = fs::read(&path).unwrap();
        let out = dir.path().join("x");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "truncated"),
            (good[..20].to_vec(), "shorter than a backup header"),
            (
                {
                    let mut b = good.clone();
                    b[BACKUP_HEADER_SIZE + 30] ^= 1;
                    b
                },
                "payload checksum mismatch",
            ),
            (
                {
                    let mut b = good.clone();
                    b[17] ^= 1;
                    b
                },
                "header checksum mismatch",
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] ^= 1;
                    b
                },
                "not a kvraft backup",
            ),
        ];
        for (bytes, want) in cases {
            fs::write(&path, &bytes).unwrap();
            let e = extract_backup(&path, &out).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
            assert!(!out.exists());
        }
    }
}
