//! The state-machine seam, exercised from outside the crate: the same generic driver runs
//! the skiplist KV and a second, tiny state machine (a replicated counter), checking that
//! replicas agree, that snapshots carry the whole state, and that bad payloads are errors.

use kvraft::client::Value;
use kvraft::kv::{KvStore, Request, SnapshotError, StateMachine};
use kvraft::prng::Prng;
use kvraft::raft::LogIndex;
use std::io::{Read, Write};

/// A replicated counter: `CINCR n` adds n (a write), `CGET` reads it.
/// Entry payload: version byte 1, then the i64 delta big-endian.
/// Snapshot: magic b"CTR1", applied index u64, value i64, crc32c u32 of the preceding bytes.
#[derive(Default)]
struct Counter {
    value: i64,
    applied: LogIndex,
}

impl StateMachine for Counter {
    fn parse(&self, args: &[Vec<u8>]) -> Option<Request> {
        let name = args.first()?.to_ascii_lowercase();
        match (name.as_slice(), args.len()) {
            (b"cget", 1) => Some(Request::Read(vec![1])),
            (b"cincr", 2) => {
                let n: Option<i64> = std::str::from_utf8(&args[1]).ok()?.parse().ok();
                Some(match n {
                    Some(n) => {
                        let mut e = vec![1];
                        e.extend_from_slice(&n.to_be_bytes());
                        Request::Write(e)
                    }
                    None => Request::Reply(Value::error("ERR not an integer")),
                })
            }
            (b"cget" | b"cincr", _) => Some(Request::Reply(Value::error("ERR arity"))),
            _ => None,
        }
    }

    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Value {
        assert!(index > self.applied);
        self.applied = index;
        match data {
            [1, rest @ ..] if rest.len() == 8 => {
                let d = i64::from_be_bytes(rest.try_into().unwrap());
                self.value = self.value.wrapping_add(d);
                Value::Integer(self.value)
            }
            _ => Value::error("ERR bad entry"),
        }
    }

    fn query(&self, _data: &[u8]) -> Value {
        Value::Integer(self.value)
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn write_snapshot(&self, w: &mut dyn Write) -> std::io::Result<u64> {
        let mut buf = b"CTR1".to_vec();
        buf.extend_from_slice(&self.applied.0.to_be_bytes());
        buf.extend_from_slice(&self.value.to_be_bytes());
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_be_bytes());
        w.write_all(&buf)?;
        Ok(self.state_hash())
    }

    fn load_snapshot(&mut self, r: &mut dyn Read) -> Result<u64, SnapshotError> {
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).map_err(SnapshotError::Io)?;
        if buf.len() < 24 {
            return Err(SnapshotError::Truncated {
                offset: buf.len() as u64,
            });
        }
        if buf.len() > 24 || &buf[..4] != b"CTR1" {
            return Err(SnapshotError::BadMagic);
        }
        let stored = u32::from_be_bytes(buf[20..24].try_into().unwrap());
        let computed = crc32c::crc32c(&buf[..20]);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        self.applied = LogIndex(u64::from_be_bytes(buf[4..12].try_into().unwrap()));
        self.value = i64::from_be_bytes(buf[12..20].try_into().unwrap());
        Ok(self.state_hash())
    }

    fn state_hash(&self) -> u64 {
        self.applied.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.value as u64
    }

    fn len(&self) -> usize {
        1
    }
}

/// Drive three replicas of any state machine through the same commands: two apply every
/// entry, the third is rebuilt from a snapshot taken halfway and then catches up from the
/// "log". All three must agree on replies and hashes. Returns the replies of the first.
fn drive<S: StateMachine>(make: impl Fn() -> S, commands: &[Vec<Vec<u8>>]) -> Vec<Value> {
    let (mut a, mut b, mut c) = (make(), make(), make());
    let mut log: Vec<Vec<u8>> = Vec::new();
    let mut replies = Vec::new();
    let mut snapshot = None;
    for (i, args) in commands.iter().enumerate() {
        let reply = match a.parse(args).expect("known command") {
            Request::Write(entry) => {
                let index = LogIndex(log.len() as u64 + 1);
                let ra = a.apply(index, &entry);
                assert_eq!(ra, b.apply(index, &entry), "replicas differ at {index}");
                log.push(entry);
                ra
            }
            Request::Read(q) => {
                assert_eq!(a.query(&q), b.query(&q));
                a.query(&q)
            }
            Request::Reply(v) => v,
        };
        replies.push(reply);
        assert_eq!(a.state_hash(), b.state_hash());
        if i == commands.len() / 2 {
            let mut buf = Vec::new();
            let h = a.write_snapshot(&mut buf).unwrap();
            assert_eq!(h, a.state_hash());
            snapshot = Some((buf, a.applied_index()));
        }
    }
    if let Some((buf, at)) = snapshot {
        c.load_snapshot(&mut &buf[..]).expect("snapshot loads");
        assert_eq!(c.applied_index(), at);
        for (i, entry) in log.iter().enumerate().skip(at.0 as usize) {
            c.apply(LogIndex(i as u64 + 1), entry);
        }
        assert_eq!(
            c.state_hash(),
            a.state_hash(),
            "snapshot + log tail != full log"
        );
        assert_eq!(c.len(), a.len());
        // Truncated snapshots are refused by both implementations.
        assert!(make().load_snapshot(&mut &buf[..buf.len() - 1]).is_err());
    }
    // An undecodable payload is an error reply, not a panic.
    assert!(a.apply(a.applied_index().next(), &[0xee]).is_error());
    replies
}

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

#[test]
fn a_second_tiny_state_machine_runs_through_the_same_seam() {
    let mut commands = Vec::new();
    for i in 0..50 {
        commands.push(cmd(&["CINCR", &(i - 10).to_string()]));
        commands.push(cmd(&["cget"]));
    }
    commands.push(cmd(&["CINCR", "x"]));
    let replies = drive(Counter::default, &commands);
    let total: i64 = (0..50).map(|i| i - 10).sum();
    assert_eq!(replies[replies.len() - 2], Value::Integer(total));
    assert!(replies.last().unwrap().is_error());
    assert!(Counter::default().parse(&cmd(&["GET", "k"])).is_none());
}

#[test]
fn the_kv_replicates_snapshots_and_catches_up_through_the_same_seam() {
    let mut p = Prng::new(21);
    let mut commands = Vec::new();
    for _ in 0..4000 {
        let k = format!("k{}", p.range(0, 300));
        let v = p.next_u64().to_string();
        commands.push(match p.range(0, 8) {
            0 => cmd(&["SET", &k, &v]),
            1 => cmd(&["DEL", &k, "k1"]),
            2 => cmd(&["INCR", &k]),
            3 => cmd(&["MSET", &k, &v, "k2", "2"]),
            4 => cmd(&["APPEND", &k, "+"]),
            5 => cmd(&["CAS", &k, "2", &v]),
            6 => cmd(&["GET", &k]),
            _ => cmd(&["RANGE", &k, "", "LIMIT", "5"]),
        });
    }
    let replies = drive(|| KvStore::new(7), &commands);
    assert_eq!(replies.len(), commands.len());
    assert!(replies
        .iter()
        .any(|r| matches!(r, Value::Integer(n) if *n > 1)));
}
