//! [`Identity`]: which cluster this storage belongs to and which incarnation of a member it is.
//!
//! Owns: the file `identity` in the data directory. Must not: decide what a mismatch means
//! (the node refuses a peer of another cluster and keeps a new incarnation out of votes).
//!
//! The cluster id is random and created once, when the cluster is formed; a member that joins
//! later copies it from the cluster. The incarnation id is random and created together with a
//! member's storage, so a member whose disk was lost and rebuilt has a new one: its peers can
//! tell it is not the member that voted and acknowledged before, even at the same node id.
//! Both come from the kernel's random pool (/dev/urandom), never from a clock: two members
//! formed in the same millisecond must still differ.
//!
//! The file is exactly `FILE_SIZE` = 56 bytes, big-endian:
//! ```text
//! offset size field
//!      0    8 magic "KVRFTIDN"
//!      8    4 format version (1)
//!     12    4 reserved, zero
//!     16   16 cluster id
//!     32   16 incarnation id
//!     48    4 crc32c of bytes 0..48
//!     52    4 reserved, zero
//! ```
//! It is replaced atomically: written whole to `identity.tmp`, fsynced, renamed over
//! `identity`, and the directory fsynced. So `identity` is either absent or whole; a crash
//! leaves at most a stale `identity.tmp`, which `load` ignores and the next `store` replaces.
//!
//! Invariants:
//! 1. `store` is durable (file and directory entry) before it returns.
//! 2. `load` never panics on any file contents, and never returns an identity whose bytes did
//!    not check (magic, version, reserved bytes, checksum, length).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

pub const IDENTITY_FILE: &str = "identity";
const TEMP_FILE: &str = "identity.tmp";
const MAGIC: [u8; 8] = *b"KVRFTIDN";
const VERSION: u32 = 1;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const RESERVED_OFFSET: usize = VERSION_OFFSET + 4;
const CLUSTER_OFFSET: usize = RESERVED_OFFSET + 4;
const INCARNATION_OFFSET: usize = CLUSTER_OFFSET + 16;
const CRC_OFFSET: usize = INCARNATION_OFFSET + 16;
const RESERVED2_OFFSET: usize = CRC_OFFSET + 4;
const FILE_SIZE: usize = RESERVED2_OFFSET + 4;
const _: () = assert!(CLUSTER_OFFSET == 16 && INCARNATION_OFFSET == 32);
const _: () = assert!(CRC_OFFSET == 48 && FILE_SIZE == 56);

/// The random id of a cluster, created once when it is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u128);

/// The random id of one member's storage: a member rebuilt from an empty disk gets a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IncarnationId(pub u128);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for IncarnationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl ClusterId {
    /// A fresh cluster id, for forming a new cluster.
    pub fn random() -> Result<ClusterId, IdentityError> {
        random_u128().map(ClusterId)
    }
}

impl IncarnationId {
    /// A fresh incarnation id, for new storage.
    pub fn random() -> Result<IncarnationId, IdentityError> {
        random_u128().map(IncarnationId)
    }
}

/// What `load` found wrong, or an I/O failure.
#[derive(Debug)]
pub enum IdentityError {
    /// No identity file: the storage is new (or was lost).
    Absent { path: PathBuf },
    /// The file is there but its bytes are not an identity we wrote.
    Corrupt { path: PathBuf, reason: String },
    /// A well-formed identity of a format version this binary does not read.
    Version { path: PathBuf, version: u32 },
    /// A system call failed.
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Absent { path } => {
                write!(f, "no identity file {} (new storage)", path.display())
            }
            IdentityError::Corrupt { path, reason } => {
                write!(f, "corrupt identity file {}: {reason}", path.display())
            }
            IdentityError::Version { path, version } => write!(
                f,
                "identity file {} has format version {version}; this kvraftd reads version {VERSION}",
                path.display()
            ),
            IdentityError::Io { path, op, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path, op: &'static str, source: io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// 16 bytes from the kernel's random pool. /dev/urandom rather than getrandom(2) through libc
/// keeps `unsafe` out of this file; on Linux both read the same pool and neither blocks once
/// it is initialised (long before a daemon starts).
fn random_u128() -> Result<u128, IdentityError> {
    let path = Path::new("/dev/urandom");
    let mut b = [0u8; 16];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| io_err(path, "read", e))?;
    Ok(u128::from_be_bytes(b))
}

/// The identity of this member's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster: ClusterId,
    pub incarnation: IncarnationId,
}

impl Identity {
    /// A new incarnation of a member of `cluster` (fresh storage).
    pub fn new_incarnation(cluster: ClusterId) -> Result<Identity, IdentityError> {
        Ok(Identity {
            cluster,
            incarnation: IncarnationId::random()?,
        })
    }

    pub fn encode(&self) -> [u8; FILE_SIZE] {
        let mut b = [0u8; FILE_SIZE];
        b[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&MAGIC);
        b[VERSION_OFFSET..RESERVED_OFFSET].copy_from_slice(&VERSION.to_be_bytes());
        b[CLUSTER_OFFSET..INCARNATION_OFFSET].copy_from_slice(&self.cluster.0.to_be_bytes());
        b[INCARNATION_OFFSET..CRC_OFFSET].copy_from_slice(&self.incarnation.0.to_be_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..RESERVED2_OFFSET].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Checks the bytes of an identity file. The error is the reason, for `Corrupt`, or the
    /// version found, for `Version`.
    fn decode(b: &[u8]) -> Result<Identity, Result<String, u32>> {
        if b.len() != FILE_SIZE {
            return Err(Ok(format!("{} bytes, expected {FILE_SIZE}", b.len())));
        }
        if b[MAGIC_OFFSET..VERSION_OFFSET] != MAGIC {
            return Err(Ok("bad magic (not a kvraft identity file)".into()));
        }
        let crc = u32::from_be_bytes(b[CRC_OFFSET..RESERVED2_OFFSET].try_into().expect("4"));
        if crc32c::crc32c(&b[..CRC_OFFSET]) != crc {
            return Err(Ok("checksum mismatch".into()));
        }
        // After the checksum: a version number that checks was really written by some kvraftd.
        let version = u32::from_be_bytes(b[VERSION_OFFSET..RESERVED_OFFSET].try_into().expect("4"));
        if version != VERSION {
            return Err(Err(version));
        }
        let reserved = &b[RESERVED_OFFSET..CLUSTER_OFFSET];
        if reserved
            .iter()
            .chain(&b[RESERVED2_OFFSET..])
            .any(|&x| x != 0)
        {
            return Err(Ok("reserved bytes are not zero".into()));
        }
        let id = |at: usize| u128::from_be_bytes(b[at..at + 16].try_into().expect("16"));
        Ok(Identity {
            cluster: ClusterId(id(CLUSTER_OFFSET)),
            incarnation: IncarnationId(id(INCARNATION_OFFSET)),
        })
    }

    /// Reads `dir/identity`. `Absent` when there is none (a stale temp file does not count).
    pub fn load(dir: &Path) -> Result<Identity, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::Absent { path })
            }
            Err(e) => return Err(io_err(&path, "open", e)),
        };
        // One byte more than the format allows, so an overlong file is seen without reading
        // an arbitrarily large one.
        let mut b = Vec::with_capacity(FILE_SIZE + 1);
        (&mut f)
            .take(FILE_SIZE as u64 + 1)
            .read_to_end(&mut b)
            .map_err(|e| io_err(&path, "read", e))?;
        Identity::decode(&b).map_err(|e| match e {
            Ok(reason) => IdentityError::Corrupt { path, reason },
            Err(version) => IdentityError::Version { path, version },
        })
    }

    /// Replaces `dir/identity` atomically and durably (invariant 1).
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let tmp = dir.join(TEMP_FILE);
        let path = dir.join(IDENTITY_FILE);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| io_err(&tmp, "create", e))?;
        f.write_all(&self.encode())
            .map_err(|e| io_err(&tmp, "write", e))?;
        f.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| io_err(&path, "rename", e))?;
        // The rename is durable only once the directory is.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(dir, "fsync directory", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Identity {
        Identity {
            cluster: ClusterId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            incarnation: IncarnationId(0xfedc_ba98_7654_3210_8899_aabb_ccdd_eeff),
        }
    }

    #[test]
    fn identity_round_trips_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        sample().store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), sample());
        let other = Identity::new_incarnation(sample().cluster).unwrap();
        other.store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), other);
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn absent_file_is_absent_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Absent { .. }), "{err}");
        assert!(err.to_string().contains("new storage"), "{err}");
    }

    #[test]
    fn a_stale_temp_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(TEMP_FILE), b"half an ident").unwrap();
        assert!(matches!(
            Identity::load(dir.path()),
            Err(IdentityError::Absent { .. })
        ));
        sample().store(dir.path()).unwrap();
        let mut stale = sample();
        stale.incarnation = IncarnationId(1);
        fs::write(dir.path().join(TEMP_FILE), stale.encode()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), sample());
    }

    #[test]
    fn every_truncation_and_extension_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample().encode();
        let mut long = good.to_vec();
        long.push(0);
        let cases: Vec<Vec<u8>> = (0..FILE_SIZE)
            .map(|n| good[..n].to_vec())
            .chain([long])
            .collect();
        for b in cases {
            fs::write(dir.path().join(IDENTITY_FILE), &b).unwrap();
            let err = Identity::load(dir.path()).unwrap_err();
            assert!(
                matches!(&err, IdentityError::Corrupt { reason, .. } if reason.contains("bytes")),
                "{} bytes: {err}",
                b.len()
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample().encode();
        for bit in 0..FILE_SIZE * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            fs::write(dir.path().join(IDENTITY_FILE), b).unwrap();
            let err = Identity::load(dir.path()).unwrap_err();
            assert!(
                matches!(err, IdentityError::Corrupt { .. }),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn another_version_is_refused_naming_both_versions() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = sample().encode();
        b[VERSION_OFFSET..RESERVED_OFFSET].copy_from_slice(&2u32.to_be_bytes());
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        b[CRC_OFFSET..RESERVED2_OFFSET].copy_from_slice(&crc.to_be_bytes());
        fs::write(dir.path().join(IDENTITY_FILE), b).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Version { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 2") && err.to_string().contains("version 1"));
    }

    #[test]
    fn random_ids_differ() {
        let a = ClusterId::random().unwrap();
        let b = ClusterId::random().unwrap();
        let c = IncarnationId::random().unwrap();
        assert!(a != b && a.0 != c.0, "{a} {b} {c}");
        assert_eq!(a.to_string().len(), 32);
    }
}
