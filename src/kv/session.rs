//! Client sessions: exactly-once writes (Raft dissertation §6.3; LogCabin does the same).
//!
//! A client opens a session through the log (`SESSION OPEN`: its id is the index of that
//! entry), then tags each write with (session id, sequence number, lowest sequence it still
//! waits for) in the entry's envelope. Applying a tagged write consults this table first: a
//! sequence already applied answers its saved reply instead of applying again, so a client
//! may resend a write after any failure (a lost leader, a broken connection) and it counts
//! once.
//!
//! Owns: the sessions, their saved replies, their deterministic expiry, their hash, and the
//! byte layout of the sessions section of the kv snapshot (below).
//! Must not: read a clock (time is the applied leader stamp the store passes in), allocate
//! past its limits, or know about Raft.
//!
//! # Snapshot section (written inside the kv snapshot, integers big-endian)
//!
//! ```text
//! u64   session count n (<= SESSIONS_MAX)
//! n times, ids strictly increasing:
//!   u64  session id
//!   u64  last active: the applied stamp (ms) of its latest entry
//!   u64  lowest: results below this sequence are dropped; such a sequence is refused
//!   u32  saved result count m (<= SESSION_RESULTS_MAX)
//!   m times, sequences strictly increasing and >= lowest:
//!     u64  sequence
//!     u32  reply length (<= SESSION_REPLY_SIZE_MAX)
//!     ...  the reply, RESP2-encoded
//! ```
//!
//! Invariants (checked by `check_invariants`):
//! 1. `by_activity` holds exactly `(last_active_ms, id)` for every session.
//! 2. At most `SESSIONS_MAX` sessions, each with at most `SESSION_RESULTS_MAX` saved results
//!    of at most `SESSION_REPLY_SIZE_MAX` bytes, every saved sequence >= the session's lowest.
//! 3. `hash` == the wrapping sum of `session_hash` over the sessions and `result_hash` over
//!    their saved results, so two tables with the same contents hash alike.
//! 4. No session is idle longer than `SESSION_TIMEOUT_MS` as of the last `expire` call.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use byteorder::{BigEndian, ByteOrder};

use crate::client::resp::parse_value;
use crate::client::value::Value;
use crate::kv::envelope::SessionTag;
use crate::kv::hash::{fmix64, hash64};
use crate::kv::SnapshotError;
use crate::limits::{
    SESSIONS_MAX, SESSION_REPLY_SIZE_MAX, SESSION_RESULTS_MAX, SESSION_TIMEOUT_MS,
};

/// Bytes of a session's record header in the snapshot section: id, last active, lowest, count.
const SESSION_RECORD_SIZE: usize = 8 + 8 + 8 + 4;
/// Bytes of a saved result's header: sequence, reply length.
const RESULT_RECORD_SIZE: usize = 8 + 4;

/// One client session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    /// The applied stamp of the latest entry of this session (its open included).
    last_active_ms: u64,
    /// Every saved result below this sequence has been dropped (the client said it has them).
    lowest: u64,
    /// Replies by sequence, RESP2-encoded. Invariant 2.
    results: BTreeMap<u64, Box<[u8]>>,
}

/// What a tagged write may do, decided before it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Not seen before: apply it, then `record` its reply.
    Fresh,
    /// Applied before: answer this saved reply, change nothing else.
    Duplicate(Value),
    /// Not applied, and not to be: answer this error.
    Refused(Value),
}

/// Every open session of the store. Invariants 1-4.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    by_id: BTreeMap<u64, Session>,
    /// (last active stamp, id): the order in which sessions expire or are evicted.
    by_activity: BTreeSet<(u64, u64)>,
    /// Invariant 3.
    hash: u64,
}

fn session_hash(id: u64, s: &Session) -> u64 {
    fmix64(id ^ fmix64(s.last_active_ms ^ 0x7365_7373) ^ fmix64(s.lowest).rotate_left(17))
}

fn result_hash(id: u64, seq: u64, reply: &[u8]) -> u64 {
    hash64(fmix64(id) ^ seq.rotate_left(32), reply)
}

/// The error for a write of a session this table does not hold.
pub fn expired_error(id: u64) -> Value {
    Value::error(format!(
        "SESSIONEXPIRED session {id} is unknown or has expired; open a new session (the \
         command was not applied)"
    ))
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions::default()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The part of the state hash the sessions contribute (invariant 3).
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Bytes of saved replies held, over every session (for INFO).
    pub fn saved_bytes(&self) -> usize {
        let replies = self.by_id.values().flat_map(|s| s.results.values());
        replies.map(|r| r.len()).sum()
    }

    /// Drop every session idle for longer than `SESSION_TIMEOUT_MS` as of `now_ms` (the
    /// applied stamp: identical on every replica, never a local clock). Returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut expired = 0;
        while let Some(&(last, id)) = self.by_activity.first() {
            if now_ms.saturating_sub(last) <= SESSION_TIMEOUT_MS {
                break;
            }
            self.remove(id);
            expired += 1;
        }
        expired
    }

    /// Open session `id` (the index of the `SESSION OPEN` entry) at `now_ms`. With
    /// `SESSIONS_MAX` open, the least recently active is dropped first: a client that opens
    /// a session is never refused, and the dropped one gets `SESSIONEXPIRED`, never a
    /// second application.
    pub fn open(&mut self, id: u64, now_ms: u64) {
        assert!(!self.by_id.contains_key(&id), "session {id} opened twice");
        if self.by_id.len() >= SESSIONS_MAX {
            let &(_, oldest) = self
                .by_activity
                .first()
                .expect("a full table has a session");
            self.remove(oldest);
        }
        let s = Session {
            last_active_ms: now_ms,
            lowest: 0,
            results: BTreeMap::new(),
        };
        self.hash = self.hash.wrapping_add(session_hash(id, &s));
        self.by_activity.insert((now_ms, id));
        self.by_id.insert(id, s);
    }

    /// Decide what the write tagged `tag` may do at `now_ms`, dropping the results the tag
    /// says the client no longer waits for (those below `tag.lowest`).
    pub fn admit(&mut self, tag: SessionTag, now_ms: u64) -> Admission {
        if tag.seq < tag.lowest {
            return Admission::Refused(Value::error(format!(
                "ERR session sequence {} is below its own lowest outstanding sequence {}",
                tag.seq, tag.lowest
            )));
        }
        if !self.by_id.contains_key(&tag.id) {
            return Admission::Refused(expired_error(tag.id));
        }
        self.touch(tag.id, now_ms, tag.lowest);
        let s = &self.by_id[&tag.id];
        if tag.seq < s.lowest {
            return Admission::Refused(Value::error(format!(
                "SESSIONEXPIRED session {} no longer keeps the result of sequence {} (its \
                 lowest outstanding is {}); the command may or may not have been applied",
                tag.id, tag.seq, s.lowest
            )));
        }
        if let Some(saved) = s.results.get(&tag.seq) {
            return Admission::Duplicate(decode_reply(saved));
        }
        if s.results.len() >= SESSION_RESULTS_MAX {
            return Admission::Refused(Value::error(format!(
                "ERR session {} holds {} unacknowledged results (the limit); raise the lowest \
                 outstanding sequence (the command was not applied)",
                tag.id,
                s.results.len()
            )));
        }
        Admission::Fresh
    }

    /// Save the reply of the fresh write `tag` (after `admit` said `Fresh` and it applied).
    /// A reply over `SESSION_REPLY_SIZE_MAX` bytes is saved as an error saying so: a resend
    /// learns that it applied, not what it answered.
    pub fn record(&mut self, tag: SessionTag, reply: &Value) {
        let mut bytes = reply.to_bytes();
        if bytes.len() > SESSION_REPLY_SIZE_MAX {
            bytes = Value::error(format!(
                "ERR the command was applied, but its reply ({} bytes) was too large to keep \
                 for a resend",
                bytes.len()
            ))
            .to_bytes();
        }
        assert!(
            bytes.len() <= SESSION_REPLY_SIZE_MAX,
            "stand-in reply too large"
        );
        let s = self
            .by_id
            .get_mut(&tag.id)
            .expect("record after a Fresh admit");
        assert!(
            tag.seq >= s.lowest && s.results.len() < SESSION_RESULTS_MAX,
            "record of seq {} not admitted (lowest {}, {} saved)",
            tag.seq,
            s.lowest,
            s.results.len()
        );
        self.hash = self.hash.wrapping_add(result_hash(tag.id, tag.seq, &bytes));
        let old = s.results.insert(tag.seq, bytes.into_boxed_slice());
        assert!(
            old.is_none(),
            "seq {} of session {} recorded twice",
            tag.seq,
            tag.id
        );
    }

    /// Mark session `id` active at `now_ms` and raise its lowest to `lowest`, dropping the
    /// results below it.
    fn touch(&mut self, id: u64, now_ms: u64, lowest: u64) {
        let s = self.by_id.get_mut(&id).expect("touch of an open session");
        self.hash = self.hash.wrapping_sub(session_hash(id, s));
        self.by_activity.remove(&(s.last_active_ms, id));
        // The applied stamp never goes backwards, but stay monotonic here regardless.
        s.last_active_ms = s.last_active_ms.max(now_ms);
        self.by_activity.insert((s.last_active_ms, id));
        if lowest > s.lowest {
            s.lowest = lowest;
            let kept = s.results.split_off(&lowest);
            for (seq, reply) in std::mem::replace(&mut s.results, kept) {
                self.hash = self.hash.wrapping_sub(result_hash(id, seq, &reply));
            }
        }
        self.hash = self.hash.wrapping_add(session_hash(id, s));
    }

    fn remove(&mut self, id: u64) {
        let s = self.by_id.remove(&id).expect("remove of an open session");
        self.by_activity.remove(&(s.last_active_ms, id));
        self.hash = self.hash.wrapping_sub(session_hash(id, &s));
        for (seq, reply) in &s.results {
            self.hash = self.hash.wrapping_sub(result_hash(id, *seq, reply));
        }
    }

    /// Drop every session (FLUSHALL does not: sessions are not data).
    pub fn clear(&mut self) {
        *self = Sessions::default();
    }

    /// Assert invariants 1-3. O(sessions + results).
    pub fn check_invariants(&self) {
        assert!(
            self.by_id.len() <= SESSIONS_MAX,
            "{} sessions",
            self.by_id.len()
        );
        assert_eq!(
            self.by_activity.len(),
            self.by_id.len(),
            "activity index size"
        );
        let mut sum = 0u64;
        for (&id, s) in &self.by_id {
            assert!(
                self.by_activity.contains(&(s.last_active_ms, id)),
                "session {id} missing from the activity index"
            );
            assert!(
                s.results.len() <= SESSION_RESULTS_MAX,
                "session {id} results"
            );
            sum = sum.wrapping_add(session_hash(id, s));
            for (&seq, reply) in &s.results {
                assert!(
                    seq >= s.lowest,
                    "session {id} keeps {seq} below {}",
                    s.lowest
                );
                assert!(
                    reply.len() <= SESSION_REPLY_SIZE_MAX,
                    "session {id} reply size"
                );
                sum = sum.wrapping_add(result_hash(id, seq, reply));
            }
        }
        assert_eq!(sum, self.hash, "incremental sessions hash drifted");
    }

    /// Write the snapshot section (format above) through `put`.
    pub fn write_section(&self, put: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        put(&(self.by_id.len() as u64).to_be_bytes())?;
        for (&id, s) in &self.by_id {
            let mut rec = [0u8; SESSION_RECORD_SIZE];
            BigEndian::write_u64(&mut rec[0..8], id);
            BigEndian::write_u64(&mut rec[8..16], s.last_active_ms);
            BigEndian::write_u64(&mut rec[16..24], s.lowest);
            BigEndian::write_u32(&mut rec[24..28], s.results.len() as u32);
            put(&rec)?;
            for (&seq, reply) in &s.results {
                let mut head = [0u8; RESULT_RECORD_SIZE];
                BigEndian::write_u64(&mut head[0..8], seq);
                BigEndian::write_u32(&mut head[8..12], reply.len() as u32);
                put(&head)?;
                put(reply)?;
            }
        }
        Ok(())
    }

    /// Read a snapshot section written by `write_section`, checking every count and length
    /// against its limit before allocating, and the order of ids and sequences.
    pub fn read_section(src: &mut dyn SectionSource) -> Result<Sessions, SnapshotError> {
        let mut count = [0u8; 8];
        src.get(&mut count)?;
        let count = BigEndian::read_u64(&count);
        if count > SESSIONS_MAX as u64 {
            return Err(src.corrupt("more sessions than SESSIONS_MAX"));
        }
        let mut table = Sessions::new();
        for _ in 0..count {
            let (id, s) = read_session(src)?;
            if table
                .by_id
                .last_key_value()
                .is_some_and(|(&last, _)| last >= id)
            {
                return Err(src.corrupt("session ids out of order"));
            }
            table.hash = table.hash.wrapping_add(session_hash(id, &s));
            for (&seq, reply) in &s.results {
                table.hash = table.hash.wrapping_add(result_hash(id, seq, reply));
            }
            table.by_activity.insert((s.last_active_ms, id));
            table.by_id.insert(id, s);
        }
        Ok(table)
    }
}

/// Where the snapshot loader's bytes come from (the kv snapshot's checksummed reader).
pub trait SectionSource {
    /// Fill `buf` exactly, or fail (truncation, I/O).
    fn get(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError>;
    /// A corruption error at the current offset.
    fn corrupt(&self, reason: &'static str) -> SnapshotError;
}

fn read_session(src: &mut dyn SectionSource) -> Result<(u64, Session), SnapshotError> {
    let mut rec = [0u8; SESSION_RECORD_SIZE];
    src.get(&mut rec)?;
    let id = BigEndian::read_u64(&rec[0..8]);
    let last_active_ms = BigEndian::read_u64(&rec[8..16]);
    let lowest = BigEndian::read_u64(&rec[16..24]);
    let n = BigEndian::read_u32(&rec[24..28]) as usize;
    if n > SESSION_RESULTS_MAX {
        return Err(src.corrupt("more session results than SESSION_RESULTS_MAX"));
    }
    let mut results = BTreeMap::new();
    for _ in 0..n {
        let mut head = [0u8; RESULT_RECORD_SIZE];
        src.get(&mut head)?;
        let seq = BigEndian::read_u64(&head[0..8]);
        let len = BigEndian::read_u32(&head[8..12]) as usize;
        if len > SESSION_REPLY_SIZE_MAX {
            return Err(src.corrupt("session reply longer than SESSION_REPLY_SIZE_MAX"));
        }
        let in_order = results.last_key_value().is_none_or(|(&last, _)| last < seq);
        if seq < lowest || !in_order {
            return Err(src.corrupt("session result sequences out of order"));
        }
        let mut reply = vec![0u8; len].into_boxed_slice();
        src.get(&mut reply)?;
        if !matches!(parse_value(&reply), Ok(Some((_, used))) if used == len) {
            return Err(src.corrupt("a saved session reply is not one RESP value"));
        }
        results.insert(seq, reply);
    }
    let s = Session {
        last_active_ms,
        lowest,
        results,
    };
    Ok((id, s))
}

/// Arguments before the command in `SESSION RUN <id> <seq> <lowest> <command> ...`.
pub const RUN_PREFIX_ARGS: usize = 5;

/// A `SESSION RUN`'s tag and the command it carries (`args[0]` is the command's name).
pub type TaggedCommand<'a> = (SessionTag, &'a [Vec<u8>]);

/// `SESSION RUN <id> <seq> <lowest> <command> [args...]`, taken apart: the tag for the
/// envelope and the command inside. `None` if `args` is not a `SESSION RUN`. The node does
/// this (the tag belongs in the envelope it builds), then parses the command as usual.
pub fn parse_run(args: &[Vec<u8>]) -> Option<Result<TaggedCommand<'_>, Value>> {
    let is_run = args.len() >= 2
        && args[0].eq_ignore_ascii_case(b"session")
        && args[1].eq_ignore_ascii_case(b"run");
    if !is_run {
        return None;
    }
    if args.len() < 6 {
        return Some(Err(Value::error(
            "ERR wrong number of arguments for 'session|run' command",
        )));
    }
    let number = |a: &[u8]| crate::kv::command::parse_i64(a).and_then(|n| u64::try_from(n).ok());
    let (Some(id), Some(seq), Some(lowest)) =
        (number(&args[2]), number(&args[3]), number(&args[4]))
    else {
        return Some(Err(Value::error(
            "ERR SESSION RUN wants a session id, a sequence and a lowest outstanding sequence, \
             as non-negative integers",
        )));
    };
    if lowest > seq {
        return Some(Err(Value::error(format!(
            "ERR session sequence {seq} is below its own lowest outstanding sequence {lowest}"
        ))));
    }
    if args[5].eq_ignore_ascii_case(b"session") {
        return Some(Err(Value::error(
            "ERR SESSION commands cannot run inside a session",
        )));
    }
    Some(Ok((
        SessionTag { id, seq, lowest },
        &args[RUN_PREFIX_ARGS..],
    )))
}

/// A saved reply back as a value (the loader checked each one parses whole).
fn decode_reply(saved: &[u8]) -> Value {
    match parse_value(saved) {
        Ok(Some((v, _))) => v,
        other => panic!("a saved session reply does not parse: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(id: u64, seq: u64, lowest: u64) -> SessionTag {
        SessionTag { id, seq, lowest }
    }

    /// Admit, and when fresh "apply" by recording `reply`; returns what the client sees.
    fn run(t: &mut Sessions, tg: SessionTag, now: u64, reply: Value) -> Value {
        match t.admit(tg, now) {
            Admission::Fresh => {
                t.record(tg, &reply);
                reply
            }
            Admission::Duplicate(v) | Admission::Refused(v) => v,
        }
    }

    #[test]
    fn a_resent_sequence_answers_its_saved_reply_and_applies_once() {
        let mut t = Sessions::new();
        t.open(7, 1000);
        assert_eq!(t.admit(tag(7, 1, 1), 1001), Admission::Fresh);
        t.record(tag(7, 1, 1), &Value::Integer(41));
        // The resend is a duplicate even if the client sent a different command under seq 1.
        assert_eq!(
            t.admit(tag(7, 1, 1), 1002),
            Admission::Duplicate(Value::Integer(41))
        );
        assert_eq!(t.admit(tag(7, 2, 1), 1003), Admission::Fresh);
        t.record(tag(7, 2, 1), &Value::Nil);
        assert_eq!(
            t.admit(tag(7, 2, 2), 1004),
            Admission::Duplicate(Value::Nil)
        );
        t.check_invariants();
    }

    #[test]
    fn results_below_the_lowest_outstanding_are_dropped_and_their_resends_refused() {
        let mut t = Sessions::new();
        t.open(3, 0);
        for seq in 1..=5 {
            run(&mut t, tag(3, seq, 1), 0, Value::Integer(seq as i64));
        }
        assert_eq!(t.by_id[&3].results.len(), 5);
        // The client now waits only for 4 and later: 1..=3 go.
        assert_eq!(t.admit(tag(3, 6, 4), 0), Admission::Fresh);
        assert_eq!(
            t.by_id[&3].results.keys().copied().collect::<Vec<_>>(),
            [4, 5]
        );
        let Admission::Refused(Value::Error(e)) = t.admit(tag(3, 2, 2), 0) else {
            panic!("a resend below lowest must be refused")
        };
        assert!(
            e.starts_with("SESSIONEXPIRED") && e.contains("sequence 2"),
            "{e}"
        );
        // The lowest never goes back down: a late tag with a lower `lowest` drops nothing.
        assert_eq!(
            t.admit(tag(3, 5, 1), 0),
            Admission::Duplicate(Value::Integer(5))
        );
        assert_eq!(t.by_id[&3].lowest, 4);
        let Admission::Refused(Value::Error(e)) = t.admit(tag(3, 2, 3), 0) else {
            panic!("seq below its own lowest")
        };
        assert!(e.starts_with("ERR"), "{e}");
        t.check_invariants();
    }

    #[test]
    fn sessions_expire_by_applied_stamp_only_after_the_timeout() {
        let mut t = Sessions::new();
        t.open(1, 10_000);
        t.open(2, 10_000);
        let h = t.hash();
        assert_eq!(
            t.expire(10_000 + SESSION_TIMEOUT_MS),
            0,
            "exactly the timeout: kept"
        );
        assert_eq!(t.hash(), h);
        // Session 2 is active later, so only session 1 expires.
        run(
            &mut t,
            tag(2, 1, 1),
            10_000 + SESSION_TIMEOUT_MS,
            Value::ok(),
        );
        assert_eq!(t.expire(10_001 + SESSION_TIMEOUT_MS), 1);
        assert_eq!(
            t.admit(tag(1, 1, 1), 0),
            Admission::Refused(expired_error(1))
        );
        assert_eq!(t.len(), 1);
        // An unknown session is refused the same way, and its refusal changes nothing.
        let h = t.hash();
        assert_eq!(
            t.admit(tag(99, 1, 1), 0),
            Admission::Refused(expired_error(99))
        );
        assert_eq!(t.hash(), h);
        assert_eq!(t.expire(u64::MAX), 1);
        assert!(t.is_empty());
        assert_eq!(t.hash(), 0);
        t.check_invariants();
    }

    #[test]
    fn limits_evict_the_least_active_session_refuse_excess_results_and_cap_replies() {
        let mut t = Sessions::new();
        for id in 1..=SESSIONS_MAX as u64 {
            t.open(id, id);
        }
        run(&mut t, tag(1, 1, 1), SESSIONS_MAX as u64 + 5, Value::ok());
        // Full: opening one more drops session 2 (1 was active since), never refuses.
        t.open(SESSIONS_MAX as u64 + 1, SESSIONS_MAX as u64 + 6);
        assert_eq!(t.len(), SESSIONS_MAX);
        assert_eq!(
            t.admit(tag(2, 1, 1), 0),
            Admission::Refused(expired_error(2))
        );
        assert_eq!(t.admit(tag(1, 1, 1), 0), Admission::Duplicate(Value::ok()));
        // Results: one past the limit is refused (not applied) until lowest rises.
        let mut t = Sessions::new();
        t.open(5, 0);
        for seq in 1..=SESSION_RESULTS_MAX as u64 {
            run(&mut t, tag(5, seq, 1), 0, Value::Integer(0));
        }
        let next = SESSION_RESULTS_MAX as u64 + 1;
        let Admission::Refused(Value::Error(e)) = t.admit(tag(5, next, 1), 0) else {
            panic!("one result too many")
        };
        assert!(e.contains("not applied"), "{e}");
        assert_eq!(t.admit(tag(5, next, 2), 0), Admission::Fresh);
        // A large reply is kept as a short error saying the command applied.
        let big = Value::Bulk(vec![b'x'; SESSION_REPLY_SIZE_MAX]);
        t.record(tag(5, next, 2), &big);
        let Admission::Duplicate(Value::Error(e)) = t.admit(tag(5, next, 2), 0) else {
            panic!("saved stand-in")
        };
        assert!(e.contains("was applied"), "{e}");
        t.check_invariants();
    }

    #[test]
    fn session_run_is_taken_apart_into_a_tag_and_its_command() {
        let args = |s: &str| -> Vec<Vec<u8>> {
            s.split_whitespace()
                .map(|w| w.as_bytes().to_vec())
                .collect()
        };
        let a = args("session RUN 12 5 3 INCR n");
        let (t, cmd) = parse_run(&a).unwrap().unwrap();
        assert_eq!(t, tag(12, 5, 3));
        assert_eq!(cmd, &args("INCR n")[..]);
        assert!(parse_run(&args("SESSION OPEN")).is_none());
        assert!(parse_run(&args("INCR n")).is_none());
        for bad in [
            "SESSION RUN 1 2 3",
            "SESSION RUN 1 2 x INCR n",
            "SESSION RUN -1 2 1 INCR n",
            "SESSION RUN 1 2 3 INCR n",
            "SESSION RUN 1 2 1 SESSION OPEN",
        ] {
            let Some(Err(Value::Error(e))) = parse_run(&args(bad)) else {
                panic!("{bad} accepted")
            };
            assert!(e.starts_with("ERR"), "{bad}: {e}");
        }
    }

    struct Slice<'a>(&'a [u8], usize);

    impl SectionSource for Slice<'_> {
        fn get(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
            let end = self.1 + buf.len();
            if end > self.0.len() {
                return Err(SnapshotError::Truncated {
                    offset: self.0.len() as u64,
                });
            }
            buf.copy_from_slice(&self.0[self.1..end]);
            self.1 = end;
            Ok(())
        }
        fn corrupt(&self, reason: &'static str) -> SnapshotError {
            SnapshotError::Corrupt {
                offset: self.1 as u64,
                reason,
            }
        }
    }

    fn section(t: &Sessions) -> Vec<u8> {
        let mut out = Vec::new();
        t.write_section(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn the_snapshot_section_round_trips_and_refuses_damage() {
        let mut t = Sessions::new();
        assert_eq!(section(&t), [0u8; 8]);
        for id in [4u64, 9, 12] {
            t.open(id, id * 10);
            for seq in 1..=id % 5 {
                run(&mut t, tag(id, seq, 1), id * 11, Value::Integer(seq as i64));
            }
        }
        run(&mut t, tag(9, 7, 3), 500, Value::Bulk(b"v".to_vec()));
        let buf = section(&t);
        let mut src = Slice(&buf, 0);
        let back = Sessions::read_section(&mut src).unwrap();
        assert_eq!(src.1, buf.len(), "the section is read whole");
        assert_eq!(back, t);
        assert_eq!(back.hash(), t.hash());
        back.check_invariants();
        for cut in 0..buf.len() {
            let r = Sessions::read_section(&mut Slice(&buf[..cut], 0));
            assert!(
                matches!(r, Err(SnapshotError::Truncated { .. })),
                "cut {cut}"
            );
        }
        // A count over the limit is refused before anything is allocated.
        let mut bad = buf.clone();
        bad[0..8].copy_from_slice(&u64::MAX.to_be_bytes());
        let e = Sessions::read_section(&mut Slice(&bad, 0)).unwrap_err();
        assert!(e.to_string().contains("SESSIONS_MAX"), "{e}");
        // Ids out of order.
        let mut bad = buf.clone();
        bad[8..16].copy_from_slice(&100u64.to_be_bytes());
        let e = Sessions::read_section(&mut Slice(&bad, 0)).unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }
}
