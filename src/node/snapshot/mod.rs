//! Snapshots on disk and on the wire. This file: the snapshot file format (below) and its
//! header codec; `files.rs` the files in the data directory; `child.rs` taking a snapshot in a
//! `fork()`ed child; `transfer.rs` streaming one to a follower. Overall: taking a snapshot in a
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
//! 6. A reader of a snapshot file (`SnapshotSender`: streaming to a follower, a backup) holds a
//!    shared `flock` on it for as long as it has it open; the fork child truncates an old
//!    snapshot away (`remove_gently`) only under the exclusive lock, else it only unlinks it,
//!    so a reader never sees its file shrink.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use byteorder::{BigEndian, ByteOrder};

use super::sys;

mod backup;
mod child;
mod files;
mod transfer;

use crate::kv::StateMachine;
use crate::limits::{MEMBERS_MAX, SNAPSHOT_CHUNK_SIZE_MAX};
use crate::raft::{ConfState, EntryId, LogIndex, NodeId, SnapshotMeta, Term};
pub use backup::*;
pub use child::*;
pub use files::*;
pub use transfer::*;

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
    pub fn new(path: &Path, kind: SnapshotFileErrorKind) -> SnapshotFileError {
        SnapshotFileError {
            path: path.to_path_buf(),
            kind,
        }
    }
    pub fn io(path: &Path, e: io::Error) -> SnapshotFileError {
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

/// Fsync the directory holding `path` (`.` for a bare name), so a rename into it is durable.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => sync_dir(d),
        _ => sync_dir(Path::new(".")),
    }
}

/// `path` with `suffix` appended to its last component (`x` -> `x.tmp`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------------------------
// CRC-computing and counting wrappers.

struct CrcWriter<W: Write> {
    inner: W,
    crc: u32,
    count: u64,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: 0,
            count: 0,
        }
    }
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
