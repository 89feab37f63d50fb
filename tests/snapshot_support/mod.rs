//! A small state machine for the snapshot tests: a `BTreeMap` with its own trivial snapshot
//! encoding, so these tests never depend on the real `KvStore`.
//!
//! Body encoding (big-endian): applied index u64, pair count u64, then per pair key length
//! u32, key, value length u32, value; then `pad` zero bytes the loader does not read (to test
//! a state machine that leaves body bytes behind).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::Duration;

use kvraft::client::Value;
use kvraft::kv::{Request, SnapshotError, StateMachine};
use kvraft::prng::Prng;
use kvraft::raft::LogIndex;

const PART_SIZE_MAX: u32 = 1 << 20;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSm {
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    pub applied: LogIndex,
    /// Zero bytes written after the pairs (the loader leaves them unread).
    pub pad: usize,
    /// Sleep this long inside `write_snapshot` (a slow disk, for the overdue-child test).
    pub slow: Option<Duration>,
    /// Panic inside `write_snapshot`.
    pub panic_in_write: bool,
}

impl TestSm {
    /// `n` random pairs from `seed`.
    pub fn random(seed: u64, n: usize) -> TestSm {
        let mut rng = Prng::new(seed);
        let mut sm = TestSm::default();
        for i in 0..n {
            let klen = rng.range(1, 24) as usize;
            let vlen = rng.range(0, 200) as usize;
            let mut k = vec![0u8; klen];
            let mut v = vec![0u8; vlen];
            rng.fill(&mut k);
            rng.fill(&mut v);
            sm.map.insert(k, v);
            sm.applied = LogIndex(i as u64 + 1);
        }
        sm
    }

    pub fn set(&mut self, k: &[u8], v: &[u8]) {
        self.applied = self.applied.next();
        self.map.insert(k.to_vec(), v.to_vec());
    }
}

fn fnv(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn hash_of(applied: LogIndex, map: &BTreeMap<Vec<u8>, Vec<u8>>) -> u64 {
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &applied.0.to_be_bytes());
    for (k, v) in map {
        h = fnv(h, &(k.len() as u32).to_be_bytes());
        h = fnv(h, k);
        h = fnv(h, &(v.len() as u32).to_be_bytes());
        h = fnv(h, v);
    }
    h
}

fn read_u64(r: &mut dyn Read) -> Result<u64, SnapshotError> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(|e| {
        SnapshotError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("read: {e}"),
        ))
    })?;
    Ok(u64::from_be_bytes(b))
}

fn read_part(r: &mut dyn Read) -> Result<Vec<u8>, SnapshotError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(|e| {
        SnapshotError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("read: {e}"),
        ))
    })?;
    let len = u32::from_be_bytes(b);
    if len > PART_SIZE_MAX {
        return Err(SnapshotError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("part of {len} bytes"),
        )));
    }
    let mut part = vec![0u8; len as usize];
    r.read_exact(&mut part).map_err(|e| {
        SnapshotError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("read: {e}"),
        ))
    })?;
    Ok(part)
}

impl StateMachine for TestSm {
    fn parse(&self, _args: &[Vec<u8>]) -> Option<Request> {
        None
    }
    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Value {
        self.applied = index;
        let (k, v) = data.split_at(data.len() / 2);
        self.map.insert(k.to_vec(), v.to_vec());
        Value::ok()
    }
    fn query(&self, data: &[u8]) -> Value {
        self.map
            .get(data)
            .map_or(Value::Nil, |v| Value::Bulk(v.clone()))
    }
    fn applied_index(&self) -> LogIndex {
        self.applied
    }
    fn write_snapshot(&self, w: &mut dyn Write) -> io::Result<u64> {
        assert!(
            !self.panic_in_write,
            "TestSm told to panic in write_snapshot"
        );
        if let Some(d) = self.slow {
            std::thread::sleep(d);
        }
        w.write_all(&self.applied.0.to_be_bytes())?;
        w.write_all(&(self.map.len() as u64).to_be_bytes())?;
        for (k, v) in &self.map {
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(v)?;
        }
        w.write_all(&vec![0u8; self.pad])?;
        Ok(self.state_hash())
    }
    fn load_snapshot(&mut self, r: &mut dyn Read) -> Result<u64, SnapshotError> {
        let applied = LogIndex(read_u64(r)?);
        let count = read_u64(r)?;
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let k = read_part(r)?;
            let v = read_part(r)?;
            map.insert(k, v);
        }
        self.applied = applied;
        self.map = map;
        Ok(self.state_hash())
    }
    fn state_hash(&self) -> u64 {
        hash_of(self.applied, &self.map)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}
