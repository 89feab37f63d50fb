//! Snapshots on disk and on the wire: the snapshot file format, taking a snapshot in a
//! `fork()`ed child (a copy-on-write view of the state machine, so the event loop pauses only
//! for the fork itself), and streaming a file to a follower in chunks (InstallSnapshot, §7).
//!
//! # The snapshot file
//!
//! Named `snapshot-<term>-<index>` (both zero-padded to 20 digits, so names sort by term then
//! index) in the node's data dir. Written under `<name>.tmp`, fsynced, renamed, and the
//! directory fsynced, so a crash leaves either the whole file or a `*.tmp` that is ignored.
//! All integers big-endian.
//!
//! ```text
//! offset      size  field
//!      0         8  magic  0x4b56_5241_4654_534e ("KVRAFTSN")
//!      8         4  version (1)
//!     12         8  last index
//!     20         8  last term
//!     28         4  voter count v (≤ MEMBERS_MAX)
//!     32        8v  voter ids, sorted, nonzero
//!  32+8v         4  learner count l (≤ MEMBERS_MAX - v)
//!  36+8v        8l  learner ids, sorted, nonzero, none a voter
//!  36+8v+8l      4  extra length e (≤ SNAPSHOT_EXTRA_SIZE_MAX)
//!  40+8v+8l      e  extra: opaque node metadata (the member address table)
//!  H = 40+8v+8l+e   (header length)
//!      H         b  body: the state machine's own bytes (`StateMachine::write_snapshot`)
//!    H+b         8  state hash (as returned by `write_snapshot`)
//!   H+b+8        8  body length b
//!  H+b+16        4  CRC32C of bytes [0, H+b+16): everything before this field
//!  H+b+20           end of file: the file size is exactly H + b + 20
//! ```
//!
//! Loading reads the trailer's body length first (one 20-byte read at the end) so the state
//! machine is handed a reader bounded to exactly its body, then streams the whole file once,
//! computing the CRC as it goes; success is reported only when the CRC, the body length and the
//! state hash all check out.
//!
//! # Invariants
//! 1. A file under a final `snapshot-*` name is complete and was fsynced before its rename;
//!    the directory is fsynced after it.
//! 2. Nothing is allocated from a length read from a file or a peer before that length is
//!    checked against its `*_MAX`.
//! 3. The fork child touches only the snapshot's temporary file and its status pipe, and
//!    leaves through `_exit` (seed lesson 11): no logging, no sockets (it closes every fd it
//!    was not given, so a socket the parent closes really closes), no destructors. Code
//!    reachable from the child (`write_snapshot_file`) never logs. Its status message is its
//!    last act before `_exit`.
//! 4. At most one snapshot child exists; it is always reaped (by `poll_child`,
//!    `kill_if_overdue` or `Drop`), waiting only for its own pid.
//! 5. The receiver writes chunks strictly in order; the file is renamed into place only after
//!    it was fsynced and verified whole (header + CRC trailer).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use byteorder::{BigEndian, ByteOrder};

use super::sys;
use crate::kv::StateMachine;
use crate::limits::{MEMBERS_MAX, SNAPSHOT_CHUNK_SIZE_MAX};
use crate::raft::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};

/// "KVRAFTSN".
pub const SNAPSHOT_MAGIC: u64 = 0x4b56_5241_4654_534e;
pub const SNAPSHOT_VERSION: u32 = 1;
/// Largest `SnapshotHeader::extra`, in bytes.
pub const SNAPSHOT_EXTRA_SIZE_MAX: usize = 64 * 1024;
/// Largest snapshot file a follower accepts, in bytes.
pub const SNAPSHOT_SIZE_MAX: u64 = 64 * 1024 * 1024 * 1024;

const HEADER_FIXED_SIZE: usize = 8 + 4 + 8 + 8;
/// A header with no members and no extra.
const HEADER_SIZE_MIN: usize = HEADER_FIXED_SIZE + 4 + 4 + 4;
const HEADER_SIZE_MAX: usize = HEADER_SIZE_MIN + 8 * MEMBERS_MAX + SNAPSHOT_EXTRA_SIZE_MAX;
const TRAILER_SIZE: usize = 8 + 8 + 4;
/// The smallest possible snapshot file: an empty header, an empty body, the trailer.
pub const SNAPSHOT_FILE_SIZE_MIN: u64 = (HEADER_SIZE_MIN + TRAILER_SIZE) as u64;
const IO_BUFFER_SIZE: usize = 256 * 1024;
/// Bytes of a child's status message read back through its pipe.
const CHILD_STATUS_SIZE_MAX: usize = 512;

const _: () = assert!(HEADER_SIZE_MIN == 40);
const _: () = assert!((HEADER_SIZE_MAX as u64) < SNAPSHOT_SIZE_MAX);

/// A snapshot file's header: what the snapshot stands for, and the node's own metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta,
    /// Opaque to this module (the node keeps its member address table here).
    /// Invariant: `extra.len() <= SNAPSHOT_EXTRA_SIZE_MAX`.
    pub extra: Vec<u8>,
}

/// A snapshot file that was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWritten {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub state_hash: u64,
}

/// What was wrong with a snapshot file (or a transfer of one).
#[derive(Debug)]
pub enum SnapshotFileErrorKind {
    Io(io::Error),
    /// The file ends before its header (or trailer) does.
    Truncated {
        size: u64,
    },
    Magic {
        found: u64,
    },
    Version {
        found: u32,
    },
    TooManyMembers {
        voters: u32,
        learners: u32,
    },
    BadConf(String),
    ExtraTooLarge {
        len: u32,
    },
    /// Header + body + trailer do not add up to the file size.
    Length {
        header: u64,
        body: u64,
        size: u64,
    },
    Crc {
        stored: u32,
        computed: u32,
    },
    StateMachine(String),
    /// The state machine stopped reading before the end of its body.
    BodyNotConsumed {
        left: u64,
    },
    StateHash {
        trailer: u64,
        loaded: u64,
    },
    /// The file's name says one snapshot, its header another.
    NameMismatch {
        name: EntryId,
        header: EntryId,
    },
    /// A transferred file's header is not the snapshot the leader announced.
    MetaMismatch {
        expected: EntryId,
        header: EntryId,
    },
    TooLarge {
        size: u64,
    },
    ChunkTooLarge {
        len: usize,
    },
    ChunkBeyondEnd {
        offset: u64,
        len: u64,
        total: u64,
    },
    /// `done` set on a chunk that does not end the file, or missing on one that does.
    DoneMismatch {
        offset: u64,
        len: u64,
        total: u64,
    },
    /// Every snapshot file in the directory failed to load.
    AllCorrupt {
        count: usize,
    },
}

/// An error about one snapshot file, naming it.
#[derive(Debug)]
pub struct SnapshotFileError {
    pub path: PathBuf,
    pub kind: SnapshotFileErrorKind,
}

impl SnapshotFileError {
    fn new(path: &Path, kind: SnapshotFileErrorKind) -> SnapshotFileError {
        SnapshotFileError {
            path: path.to_path_buf(),
            kind,
        }
    }
    fn io(path: &Path, e: io::Error) -> SnapshotFileError {
        SnapshotFileError::new(path, SnapshotFileErrorKind::Io(e))
    }
}

impl std::fmt::Display for SnapshotFileErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SnapshotFileErrorKind::*;
        match self {
            Io(e) => write!(f, "I/O error: {e}"),
            Truncated { size } => write!(f, "truncated: the file ends at {size} bytes"),
            Magic { found } => write!(
                f,
                "bad magic {found:#018x}, expected {SNAPSHOT_MAGIC:#018x}"
            ),
            Version { found } => write!(f, "version {found}, expected {SNAPSHOT_VERSION}"),
            TooManyMembers { voters, learners } => write!(
                f,
                "{voters} voters + {learners} learners exceed {MEMBERS_MAX} members"
            ),
            BadConf(why) => write!(f, "bad membership: {why}"),
            ExtraTooLarge { len } => {
                write!(f, "extra of {len} bytes exceeds {SNAPSHOT_EXTRA_SIZE_MAX}")
            }
            Length { header, body, size } => write!(
                f,
                "header {header} + body {body} + trailer {TRAILER_SIZE} bytes != file size {size}"
            ),
            Crc { stored, computed } => write!(
                f,
                "CRC mismatch: trailer says {stored:#010x}, contents give {computed:#010x}"
            ),
            StateMachine(why) => write!(f, "state machine refused the body: {why}"),
            BodyNotConsumed { left } => {
                write!(f, "state machine left {left} body bytes unread")
            }
            StateHash { trailer, loaded } => write!(
                f,
                "state hash mismatch: trailer {trailer:#018x}, loaded {loaded:#018x}"
            ),
            NameMismatch { name, header } => {
                write!(f, "file name says {name} but the header says {header}")
            }
            MetaMismatch { expected, header } => {
                write!(
                    f,
                    "expected snapshot {expected} but the header says {header}"
                )
            }
            TooLarge { size } => {
                write!(f, "snapshot of {size} bytes exceeds {SNAPSHOT_SIZE_MAX}")
            }
            ChunkTooLarge { len } => {
                write!(f, "chunk of {len} bytes exceeds {SNAPSHOT_CHUNK_SIZE_MAX}")
            }
            ChunkBeyondEnd { offset, len, total } => write!(
                f,
                "chunk at {offset} of {len} bytes runs past the total size {total}"
            ),
            DoneMismatch { offset, len, total } => write!(
                f,
                "chunk at {offset} of {len} bytes (total {total}) has the wrong done flag"
            ),
            AllCorrupt { count } => write!(f, "all {count} snapshot files failed to load"),
        }
    }
}

impl std::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "snapshot file {}: {}", self.path.display(), self.kind)
    }
}

impl std::error::Error for SnapshotFileError {}

// ---------------------------------------------------------------------------------------------
// Names.

const NAME_PREFIX: &str = "snapshot-";
const TMP_SUFFIX: &str = ".tmp";
const RECV_TMP_SUFFIX: &str = ".recv.tmp";

/// `snapshot-<term>-<index>`, both zero-padded to 20 digits.
pub fn snapshot_file_name(last: EntryId) -> String {
    format!("{NAME_PREFIX}{:020}-{:020}", last.term.0, last.index.0)
}

/// The inverse of [`snapshot_file_name`]; `None` for any other name (including `*.tmp`).
pub fn parse_snapshot_file_name(name: &str) -> Option<EntryId> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (term, index) = rest.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(term) || !digits(index) {
        return None;
    }
    Some(EntryId::new(
        Term(term.parse().ok()?),
        LogIndex(index.parse().ok()?),
    ))
}

fn tmp_path(dir: &Path, last: EntryId, suffix: &str) -> PathBuf {
    dir.join(format!("{}{suffix}", snapshot_file_name(last)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

// ---------------------------------------------------------------------------------------------
// CRC-computing and counting wrappers.

struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
    count: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R: Read> {
    inner: R,
    crc: u32,
    count: u64,
}

impl<R: Read> CrcReader<R> {
    fn new(inner: R) -> Self {
        CrcReader {
            inner,
            crc: 0,
            count: 0,
        }
    }
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Header encoding and decoding.

fn encode_header(header: &SnapshotHeader) -> Vec<u8> {
    let conf = &header.meta.conf;
    assert!(
        conf.voters.len() + conf.learners.len() <= MEMBERS_MAX,
        "{} voters + {} learners exceed {MEMBERS_MAX}",
        conf.voters.len(),
        conf.learners.len()
    );
    assert!(
        header.extra.len() <= SNAPSHOT_EXTRA_SIZE_MAX,
        "snapshot extra of {} bytes exceeds {SNAPSHOT_EXTRA_SIZE_MAX}",
        header.extra.len()
    );
    let len = HEADER_SIZE_MIN + 8 * (conf.voters.len() + conf.learners.len()) + header.extra.len();
    let mut out = Vec::with_capacity(len);
    let mut put = |bytes: &[u8]| out.extend_from_slice(bytes);
    put(&SNAPSHOT_MAGIC.to_be_bytes());
    put(&SNAPSHOT_VERSION.to_be_bytes());
    put(&header.meta.last.index.0.to_be_bytes());
    put(&header.meta.last.term.0.to_be_bytes());
    for ids in [&conf.voters, &conf.learners] {
        put(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            put(&id.0.to_be_bytes());
        }
    }
    put(&(header.extra.len() as u32).to_be_bytes());
    put(&header.extra);
    assert_eq!(out.len(), len);
    out
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(BigEndian::read_u32(&b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(BigEndian::read_u64(&b))
}

fn read_ids(r: &mut impl Read, count: u32) -> io::Result<Vec<NodeId>> {
    (0..count).map(|_| read_u64(r).map(NodeId)).collect()
}

/// Checks a membership read from a file against `ConfState`'s invariant.
fn check_conf(conf: &ConfState) -> Result<(), String> {
    for (what, ids) in [("voters", &conf.voters), ("learners", &conf.learners)] {
        if ids.iter().any(|id| id.0 == 0) {
            return Err(format!("{what} include node 0"));
        }
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("{what} not sorted and distinct: {ids:?}"));
        }
    }
    if let Some(both) = conf.learners.iter().find(|l| conf.is_voter(**l)) {
        return Err(format!("node {both} is both voter and learner"));
    }
    Ok(())
}

/// Reads and checks a header, checking every count before allocating for it (invariant 2).
fn decode_header(
    r: &mut impl Read,
    path: &Path,
    size: u64,
) -> Result<SnapshotHeader, SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let io_err = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotFileError::new(path, K::Truncated { size })
        } else {
            SnapshotFileError::io(path, e)
        }
    };
    let magic = read_u64(r).map_err(io_err)?;
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotFileError::new(path, K::Magic { found: magic }));
    }
    let version = read_u32(r).map_err(io_err)?;
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotFileError::new(path, K::Version { found: version }));
    }
    let index = LogIndex(read_u64(r).map_err(io_err)?);
    let term = Term(read_u64(r).map_err(io_err)?);
    let voters_count = read_u32(r).map_err(io_err)?;
    let too_many =
        |voters, learners| SnapshotFileError::new(path, K::TooManyMembers { voters, learners });
    if voters_count as usize > MEMBERS_MAX {
        return Err(too_many(voters_count, 0));
    }
    let voters = read_ids(r, voters_count).map_err(io_err)?;
    let learners_count = read_u32(r).map_err(io_err)?;
    if (voters_count as usize) + (learners_count as usize) > MEMBERS_MAX {
        return Err(too_many(voters_count, learners_count));
    }
    let learners = read_ids(r, learners_count).map_err(io_err)?;
    let conf = ConfState { voters, learners };
    check_conf(&conf).map_err(|why| SnapshotFileError::new(path, K::BadConf(why)))?;
    let extra_len = read_u32(r).map_err(io_err)?;
    if extra_len as usize > SNAPSHOT_EXTRA_SIZE_MAX {
        return Err(SnapshotFileError::new(
            path,
            K::ExtraTooLarge { len: extra_len },
        ));
    }
    let mut extra = vec![0u8; extra_len as usize];
    r.read_exact(&mut extra).map_err(io_err)?;
    Ok(SnapshotHeader {
        meta: SnapshotMeta {
            last: EntryId::new(term, index),
            conf,
        },
        extra,
    })
}

fn header_len(header: &SnapshotHeader) -> u64 {
    let conf = &header.meta.conf;
    (HEADER_SIZE_MIN + 8 * (conf.voters.len() + conf.learners.len()) + header.extra.len()) as u64
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// Writes `sm` as the snapshot described by `header` into `dir` (under a temporary name,
/// fsynced, renamed, directory fsynced). Runs in the fork child: it never logs (invariant 3).
/// On failure the temporary file is removed.
pub fn write_snapshot_file<S: StateMachine + ?Sized>(
    dir: &Path,
    header: &SnapshotHeader,
    sm: &S,
) -> io::Result<SnapshotWritten> {
    let last = header.meta.last;
    let tmp = tmp_path(dir, last, TMP_SUFFIX);
    let path = dir.join(snapshot_file_name(last));
    let result = write_tmp(&tmp, header, sm).and_then(|(size_bytes, state_hash)| {
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        Ok(SnapshotWritten {
            path: path.clone(),
            size_bytes,
            state_hash,
        })
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp<S: StateMachine + ?Sized>(
    tmp: &Path,
    header: &SnapshotHeader,
    sm: &S,
) -> io::Result<(u64, u64)> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(IO_BUFFER_SIZE, WritebackFile::new(file)),
        crc: 0,
        count: 0,
    };
    let head = encode_header(header);
    w.write_all(&head)?;
    let state_hash = sm.write_snapshot(&mut w)?;
    let body_len = w.count - head.len() as u64;
    w.write_all(&state_hash.to_be_bytes())?;
    w.write_all(&body_len.to_be_bytes())?;
    let crc = w.crc;
    w.write_all(&crc.to_be_bytes())?;
    let size = w.count;
    let file = w.inner.into_inner().map_err(|e| e.into_error())?.file;
    file.sync_all()?;
    Ok((size, state_hash))
}

/// Bytes a snapshot writer lets pile up before pushing them to the disk.
const WRITEBACK_WINDOW: u64 = 8 * 1024 * 1024;

/// A file written front to back that keeps its dirty pages to about two windows: each full
/// window is sent to the disk at once, and the one before it is waited for. Without this, a
/// snapshot of hundreds of MiB sits in the page cache and its final flush stalls every log
/// sync on the same disk for as long as it takes (seen: p99 write latency up 100x).
/// Invariant: `waited <= started <= written`.
struct WritebackFile {
    file: File,
    written: u64,
    /// Everything before this offset has been sent to the disk.
    started: u64,
    /// Everything before this offset is on the disk.
    waited: u64,
}

impl WritebackFile {
    fn new(file: File) -> WritebackFile {
        WritebackFile {
            file,
            written: 0,
            started: 0,
            waited: 0,
        }
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_WINDOW {
            let fd = self.file.as_raw_fd();
            if self.started > self.waited {
                sys::writeback(
                    fd,
                    self.waited,
                    self.started - self.waited,
                    sys::Writeback::Wait,
                )?;
                self.waited = self.started;
            }
            sys::writeback(
                fd,
                self.started,
                self.written - self.started,
                sys::Writeback::Start,
            )?;
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// Reads only the header (no CRC check): for listing and for deciding what a file is.
pub fn read_snapshot_header(path: &Path) -> Result<SnapshotHeader, SnapshotFileError> {
    let file = File::open(path).map_err(|e| SnapshotFileError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| SnapshotFileError::io(path, e))?
        .len();
    let mut r = BufReader::with_capacity(4096, file);
    decode_header(&mut r, path, size)
}

/// An open snapshot file whose header was read through the CRC, positioned at its body.
struct Opened {
    reader: CrcReader<BufReader<File>>,
    header: SnapshotHeader,
    body_len: u64,
    trailer_hash: u64,
}

fn open_checked(path: &Path) -> Result<Opened, SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let file = File::open(path).map_err(|e| SnapshotFileError::io(path, e))?;
    let size = file
        .metadata()
        .map_err(|e| SnapshotFileError::io(path, e))?
        .len();
    if size < SNAPSHOT_FILE_SIZE_MIN {
        return Err(SnapshotFileError::new(path, K::Truncated { size }));
    }
    let mut trailer = [0u8; TRAILER_SIZE];
    file.read_exact_at(&mut trailer, size - TRAILER_SIZE as u64)
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let trailer_hash = BigEndian::read_u64(&trailer[0..8]);
    let body_len = BigEndian::read_u64(&trailer[8..16]);
    let mut reader = CrcReader::new(BufReader::with_capacity(IO_BUFFER_SIZE, file));
    let header = decode_header(&mut reader, path, size)?;
    let header_len = reader.count;
    assert_eq!(header_len, self::header_len(&header));
    let fits = header_len
        .checked_add(body_len)
        .and_then(|n| n.checked_add(TRAILER_SIZE as u64))
        == Some(size);
    if !fits {
        let kind = K::Length {
            header: header_len,
            body: body_len,
            size,
        };
        return Err(SnapshotFileError::new(path, kind));
    }
    Ok(Opened {
        reader,
        header,
        body_len,
        trailer_hash,
    })
}

/// Reads the trailer through the CRC and compares the stored CRC with the computed one.
fn check_trailer(o: &mut Opened, path: &Path) -> Result<(), SnapshotFileError> {
    let mut trailer = [0u8; TRAILER_SIZE];
    o.reader
        .read_exact(&mut trailer[..16])
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let computed = o.reader.crc;
    o.reader
        .read_exact(&mut trailer[16..])
        .map_err(|e| SnapshotFileError::io(path, e))?;
    let stored = BigEndian::read_u32(&trailer[16..]);
    if stored != computed {
        return Err(SnapshotFileError::new(
            path,
            SnapshotFileErrorKind::Crc { stored, computed },
        ));
    }
    Ok(())
}

/// Checks a whole file (header, lengths, CRC) without a state machine: what a follower does
/// with a transferred file before renaming it into place.
pub fn verify_snapshot_file(path: &Path) -> Result<SnapshotHeader, SnapshotFileError> {
    let mut o = open_checked(path)?;
    let body_len = o.body_len;
    let copied = io::copy(&mut (&mut o.reader).take(body_len), &mut io::sink())
        .map_err(|e| SnapshotFileError::io(path, e))?;
    assert_eq!(
        copied, body_len,
        "file size was checked against the body length"
    );
    check_trailer(&mut o, path)?;
    Ok(o.header)
}

/// Loads the file into `sm` and verifies it in the same pass. On any error `sm` holds
/// whatever was partly loaded: load into a fresh state machine and swap only on `Ok`.
pub fn load_snapshot_file<S: StateMachine + ?Sized>(
    path: &Path,
    sm: &mut S,
) -> Result<(SnapshotHeader, u64), SnapshotFileError> {
    use SnapshotFileErrorKind as K;
    let mut o = open_checked(path)?;
    let mut body = (&mut o.reader).take(o.body_len);
    let loaded = sm.load_snapshot(&mut body);
    // Read whatever the state machine left, so the CRC covers the whole file: a bad CRC is
    // the better explanation of a state machine's complaint.
    let left = io::copy(&mut body, &mut io::sink()).map_err(|e| SnapshotFileError::io(path, e))?;
    check_trailer(&mut o, path)?;
    let loaded =
        loaded.map_err(|e| SnapshotFileError::new(path, K::StateMachine(e.to_string())))?;
    if left != 0 {
        return Err(SnapshotFileError::new(path, K::BodyNotConsumed { left }));
    }
    if loaded != o.trailer_hash {
        let kind = K::StateHash {
            trailer: o.trailer_hash,
            loaded,
        };
        return Err(SnapshotFileError::new(path, kind));
    }
    Ok((o.header, loaded))
}

// ---------------------------------------------------------------------------------------------
// The directory.

/// Snapshot files in `dir`, newest (highest index, then term) first; ignores `*.tmp` and any
/// other name.
pub fn list_snapshots(dir: &Path) -> io::Result<Vec<(EntryId, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(parse_snapshot_file_name) {
            out.push((id, entry.path()));
        }
    }
    out.sort_by_key(|(id, _)| std::cmp::Reverse((id.index, id.term)));
    Ok(out)
}

/// Removes `snapshot-*.tmp` files left by crashed writers or interrupted transfers. Call it
/// at start-up only, before any snapshot child or receiver exists.
pub fn remove_stale_temp_files(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(NAME_PREFIX) && name.ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The newest snapshot that loads fully into a fresh state machine from `make`. Newer files
/// that fail are logged (naming the file and the reason) and skipped; if there are files and
/// every one fails, that is an error — never a silent empty state. `Ok(None)`: no files.
pub fn load_newest<S: StateMachine>(
    dir: &Path,
    mut make: impl FnMut() -> S,
) -> Result<Option<(SnapshotHeader, S, PathBuf)>, SnapshotFileError> {
    let files = list_snapshots(dir).map_err(|e| SnapshotFileError::io(dir, e))?;
    let count = files.len();
    for (id, path) in files {
        let mut sm = make();
        match load_snapshot_file(&path, &mut sm) {
            Ok((header, _)) if header.meta.last != id => {
                let kind = SnapshotFileErrorKind::NameMismatch {
                    name: id,
                    header: header.meta.last,
                };
                log::error!("{}; skipping it", SnapshotFileError::new(&path, kind));
            }
            Ok((header, _)) => return Ok(Some((header, sm, path))),
            Err(e) => log::error!("{e}; skipping it"),
        }
    }
    if count == 0 {
        Ok(None)
    } else {
        Err(SnapshotFileError::new(
            dir,
            SnapshotFileErrorKind::AllCorrupt { count },
        ))
    }
}

/// Removes every snapshot file older than `keep` (lower index, or same index and lower term).
/// Returns how many it removed.
pub fn remove_older_than(dir: &Path, keep: EntryId) -> io::Result<usize> {
    let mut removed = 0;
    for (id, path) in list_snapshots(dir)? {
        if (id.index, id.term) < (keep.index, keep.term) {
            fs::remove_file(&path)?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// Taking a snapshot in a fork()ed child.

/// The child's status message through its pipe: `K` + state hash u64 + size u64 on success,
/// `E` + a UTF-8 reason on failure.
const CHILD_OK: u8 = b'K';
const CHILD_ERR: u8 = b'E';
const CHILD_OK_SIZE: usize = 1 + 8 + 8;
/// Exit code of a child whose write failed (the reason is in the pipe).
const CHILD_EXIT_WRITE_FAILED: i32 = 1;

/// A snapshot child that finished writing its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDone {
    pub header: SnapshotHeader,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub state_hash: u64,
    /// From the fork to the reaping of the child.
    pub took: Duration,
    /// How long `fork()` itself paused the loop.
    pub fork_time: Duration,
}

struct Child {
    pid: sys::Pid,
    /// The read end of the status pipe; EOF once the child has exited.
    pipe: File,
    started: Instant,
    fork_time: Duration,
    header: SnapshotHeader,
    dir: PathBuf,
    /// Status bytes read so far. Invariant: `len() <= CHILD_STATUS_SIZE_MAX`.
    status: Vec<u8>,
}

impl Child {
    fn tmp_path(&self) -> PathBuf {
        tmp_path(&self.dir, self.header.meta.last, TMP_SUFFIX)
    }

    /// Reads the status pipe until it would block or ends; true at EOF.
    fn drain_pipe(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.pipe.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    let room = CHILD_STATUS_SIZE_MAX - self.status.len();
                    self.status.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    log::warn!("snapshot child {} status pipe: {e}", self.pid.0);
                    return false;
                }
            }
        }
    }

    fn outcome(self, exit: sys::ChildExit) -> Result<SnapshotDone, String> {
        let ok = exit == sys::ChildExit::Exited(0)
            && self.status.len() == CHILD_OK_SIZE
            && self.status[0] == CHILD_OK;
        if ok {
            return Ok(SnapshotDone {
                path: self.dir.join(snapshot_file_name(self.header.meta.last)),
                state_hash: BigEndian::read_u64(&self.status[1..9]),
                size_bytes: BigEndian::read_u64(&self.status[9..17]),
                header: self.header,
                took: self.started.elapsed(),
                fork_time: self.fork_time,
            });
        }
        // The child removes its temp file on a write error, but not if it was killed.
        let _ = fs::remove_file(self.tmp_path());
        let reason = match self.status.split_first() {
            Some((&CHILD_ERR, msg)) => String::from_utf8_lossy(msg).into_owned(),
            _ => "no reason given".to_string(),
        };
        Err(format!(
            "snapshot child pid {} writing {} in {}: {exit}: {reason}",
            self.pid.0,
            snapshot_file_name(self.header.meta.last),
            self.dir.display()
        ))
    }

    /// SIGKILLs and reaps the child, and removes its temp file.
    fn kill_and_reap(self) {
        if let Err(e) = sys::kill(self.pid, libc::SIGKILL) {
            log::warn!("kill snapshot child {}: {e}", self.pid.0);
        }
        if let Err(e) = sys::wait_child(self.pid, sys::Wait::Block) {
            log::error!("reap snapshot child {}: {e}", self.pid.0);
        }
        let _ = fs::remove_file(self.tmp_path());
    }
}

/// Takes snapshots in a forked child, at most one at a time (invariant 4).
#[derive(Default)]
pub struct Snapshotter {
    child: Option<Child>,
}

impl Snapshotter {
    pub fn new() -> Self {
        Snapshotter { child: None }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Forks a child that writes `sm` (its copy-on-write view at the moment of the fork) as
    /// the snapshot `header` into `dir`, then `_exit`s. Returns the read end of a pipe
    /// (close-on-exec, nonblocking) that becomes readable when the child has ended — register
    /// it in mio with `SourceFd` and call [`Snapshotter::poll_child`] when it is. The fd is
    /// owned here and closed when `poll_child` returns `Some`; a closed fd leaves epoll by
    /// itself, so do not deregister it afterwards (or ignore that error). Also returns how
    /// long the fork took: the loop's only pause. Once its snapshot is durable the child also
    /// unlinks the older snapshots and the files in `cleanup` (retired log segments): work the
    /// loop must not spend its time on.
    pub fn start<S: StateMachine + ?Sized>(
        &mut self,
        dir: &Path,
        header: SnapshotHeader,
        sm: &S,
        now: Instant,
        cleanup: &[PathBuf],
    ) -> io::Result<(RawFd, Duration)> {
        assert!(
            self.child.is_none(),
            "snapshot {} started while {} is still being written",
            header.meta.last,
            self.child
                .as_ref()
                .map_or(EntryId::default(), |c| c.header.meta.last)
        );
        let (read, write) = sys::pipe_cloexec_nonblocking()?;
        let fork_started = Instant::now();
        // The closure owns the write end: the parent drops (closes) it when fork_child
        // returns, so only the child holds it and its exit is the pipe's EOF.
        let mut status = File::from(write);
        let header_ref = &header;
        let keep = [status.as_raw_fd()];
        let pid = sys::fork_child(&keep, move || {
            child_main(dir, header_ref, sm, cleanup, &mut status)
        })?;
        let fork_time = fork_started.elapsed();
        let pipe = File::from(read);
        let fd = pipe.as_raw_fd();
        self.child = Some(Child {
            pid,
            pipe,
            started: now,
            fork_time,
            header,
            dir: dir.to_path_buf(),
            status: Vec::new(),
        });
        Ok((fd, fork_time))
    }

    /// Call when the pipe is readable (or periodically). Reaps the child if it has ended
    /// (waiting only for its pid) and returns its outcome; `None` while it runs or when no
    /// child exists.
    pub fn poll_child(&mut self) -> Option<Result<SnapshotDone, String>> {
        let child = self.child.as_mut()?;
        // Never blocks: a child that has written its status may still be tearing down its
        // copy of the parent's memory (tens of ms for a GiB), and the loop must not wait for
        // that. The caller polls again (the pipe's EOF, then periodically) until it is reaped.
        child.drain_pipe();
        let exit = match sys::wait_child(child.pid, sys::Wait::NoHang) {
            Ok(None) => return None,
            Ok(Some(exit)) => exit,
            Err(e) => {
                let child = self.child.take().expect("child checked above");
                let _ = fs::remove_file(child.tmp_path());
                return Some(Err(format!("waitpid({}) failed: {e}", child.pid.0)));
            }
        };
        let mut child = self.child.take().expect("child checked above");
        child.drain_pipe(); // the status written just before exiting
        Some(child.outcome(exit))
    }

    /// SIGKILLs and reaps a child running for longer than `deadline`; true if it did.
    pub fn kill_if_overdue(&mut self, now: Instant, deadline: Duration) -> bool {
        let overdue = self
            .child
            .as_ref()
            .is_some_and(|c| now.saturating_duration_since(c.started) > deadline);
        if !overdue {
            return false;
        }
        let child = self.child.take().expect("overdue implies a child");
        log::warn!(
            "snapshot child pid {} writing {} ran longer than {deadline:?}: killing it",
            child.pid.0,
            child.header.meta.last
        );
        child.kill_and_reap();
        true
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill_and_reap();
        }
    }
}

/// The fork child's whole life (invariant 3): write the file, report through the pipe, return
/// the exit code for `_exit`.
fn child_main<S: StateMachine + ?Sized>(
    dir: &Path,
    header: &SnapshotHeader,
    sm: &S,
    cleanup: &[PathBuf],
    status: &mut File,
) -> i32 {
    match write_snapshot_file(dir, header, sm) {
        Ok(w) => {
            // The older files go here, not in the parent: unlinking hundreds of MiB can take
            // tens of ms (more on a filesystem mounted with `discard`), which the event loop
            // must not spend. A failure only leaves a file for the next snapshot to remove.
            let _ = remove_older_than(dir, header.meta.last);
            for path in cleanup {
                let _ = fs::remove_file(path);
            }
            let mut msg = [0u8; CHILD_OK_SIZE];
            msg[0] = CHILD_OK;
            BigEndian::write_u64(&mut msg[1..9], w.state_hash);
            BigEndian::write_u64(&mut msg[9..17], w.size_bytes);
            // Under PIPE_BUF, into an empty pipe: one atomic write that never blocks. It is
            // the child's last act before `_exit` (poll_child relies on it).
            match status.write_all(&msg) {
                Ok(()) => 0,
                Err(_) => CHILD_EXIT_WRITE_FAILED,
            }
        }
        Err(e) => {
            let mut msg = [0u8; 256];
            let mut cursor = io::Cursor::new(&mut msg[..]);
            let _ = write!(cursor, "{}{e}", CHILD_ERR as char);
            let len = cursor.position() as usize;
            let _ = status.write_all(&msg[..len]); // atomic, and the last act, as above
            CHILD_EXIT_WRITE_FAILED
        }
    }
}

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
pub struct SnapshotSender {
    file: File,
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

impl SnapshotSender {
    /// Opens the file and checks that its header is the snapshot `meta` names. The open file
    /// keeps its contents readable even if compaction removes its name meanwhile.
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
        let header = read_snapshot_header(&path)
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
        let file = File::open(&path)?;
        let total_size = file.metadata()?.len();
        Ok(SnapshotSender {
            file,
            meta,
            total_size,
            chunk_bytes,
            inflight_max,
            acked: 0,
            next_send: 0,
            went_back_at: None,
        })
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
        self.file.read_exact_at(&mut data, offset)?;
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

struct Partial {
    last: EntryId,
    total_size: u64,
    file: File,
    tmp: PathBuf,
    /// Bytes written, in order, from offset 0. Invariant: `written <= total_size`.
    written: u64,
}

impl Partial {
    fn create(tmp: PathBuf, last: EntryId, total_size: u64) -> Result<Partial, SnapshotFileError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| SnapshotFileError::io(&tmp, e))?;
        Ok(Partial {
            last,
            total_size,
            file,
            tmp,
            written: 0,
        })
    }

    /// Appends the part of the chunk at `offset` that extends what was written; a duplicate
    /// or a chunk after a gap writes nothing.
    fn write_in_order(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if offset <= self.written && end > self.written {
            let skip = (self.written - offset) as usize;
            self.file.write_all(&data[skip..])?;
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

/// Follower side: writes chunks, strictly in order, to `<name>.recv.tmp` in the data dir, and
/// on the last one fsyncs, verifies the whole file and renames it into place (invariant 5).
///
/// Answers: a chunk at the expected offset is written; one before it is a duplicate and one
/// after it a gap, both answered with the expected offset (resume). A chunk of a different
/// snapshot at offset 0 abandons the current transfer and starts that one (the newest sender
/// wins); at any other offset, or with no transfer under way (e.g. after a restart lost the
/// temp file), it is answered `ok = false`: start over from 0.
pub struct SnapshotReceiver {
    dir: PathBuf,
    partial: Option<Partial>,
    /// The last snapshot completed (or loaded) here, so a late chunk of it is answered
    /// "complete" rather than starting it again.
    installed: Option<EntryId>,
}

impl SnapshotReceiver {
    pub fn new(dir: PathBuf) -> Self {
        SnapshotReceiver {
            dir,
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
        let tmp = tmp_path(&self.dir, meta.last, RECV_TMP_SUFFIX);
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
            self.partial = Some(Partial::create(tmp, meta.last, total_size)?);
        }
        let p = self.partial.as_mut().expect("created above");
        if let Err(e) = p.write_in_order(offset, data) {
            let e = SnapshotFileError::io(&p.tmp, e);
            self.abort();
            return Err(e);
        }
        if p.written < p.total_size {
            return Ok(ChunkOutcome::expect(p.written));
        }
        let p = self.partial.take().expect("checked above");
        let tmp = p.tmp.clone();
        match finish_transfer(&self.dir, p, meta) {
            Ok(complete) => {
                self.installed = Some(meta.last);
                Ok(ChunkOutcome {
                    next_offset: total_size,
                    ok: true,
                    complete: Some(complete),
                })
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Tells the receiver the node already holds snapshot `last` (e.g. loaded at start-up), so
    /// chunks of it are answered "complete".
    pub fn set_installed(&mut self, last: EntryId) {
        self.installed = Some(last);
    }

    /// Drops the transfer under way, removing its temp file.
    pub fn abort(&mut self) {
        if let Some(p) = self.partial.take() {
            drop(p.file);
            if let Err(e) = fs::remove_file(&p.tmp) {
                log::warn!("remove {}: {e}", p.tmp.display());
            }
        }
    }

    /// The transfer under way: (snapshot, bytes received, total size).
    pub fn in_progress(&self) -> Option<(EntryId, u64, u64)> {
        self.partial
            .as_ref()
            .map(|p| (p.last, p.written, p.total_size))
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
    p: Partial,
    meta: &SnapshotMeta,
) -> Result<(SnapshotHeader, PathBuf), SnapshotFileError> {
    p.file
        .sync_all()
        .map_err(|e| SnapshotFileError::io(&p.tmp, e))?;
    drop(p.file);
    let header = verify_snapshot_file(&p.tmp)?;
    if header.meta != *meta {
        let kind = SnapshotFileErrorKind::MetaMismatch {
            expected: meta.last,
            header: header.meta.last,
        };
        return Err(SnapshotFileError::new(&p.tmp, kind));
    }
    let path = dir.join(snapshot_file_name(p.last));
    fs::rename(&p.tmp, &path).map_err(|e| SnapshotFileError::io(&p.tmp, e))?;
    sync_dir(dir).map_err(|e| SnapshotFileError::io(dir, e))?;
    Ok((header, path))
}
