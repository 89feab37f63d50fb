//! Transactions as the state machine sees them: the `EXEC` log entry that carries a whole
//! `MULTI` ... `EXEC` (its queued commands and its watched keys), and `WATCH`'s read.
//!
//! Owns: the byte layout below, building it (`Queue`, `encode`), checking it (`decode`,
//! `parse_exec`) and the `WATCH` query. Must not: apply anything (the store does, see
//! `KvStore::apply_tx`), or know about connections (the client session queues).
//!
//! # Why one entry
//! The transaction applies atomically and in order on every replica because it is one log
//! entry: no other entry can interleave. A `GET` queued inside is answered from the state at
//! that point of the entry, like Redis. Reads are in the entry too, so the reply array is a
//! pure function of (state, entry) on every replica.
//!
//! # EXEC entry (format version 1, op 0x20), integers big-endian
//! ```text
//! offset 0  u8   version = 1
//! offset 1  u8   op = 0x20
//! offset 2  u32  w = watch count (<= WATCH_KEYS_MAX), then w watches:
//!                  u32 key length (<= KEY_SIZE_MAX), key bytes,
//!                  u64 the applied index of the state the key's WATCH read saw
//! then      u32  n = item count (<= TX_COMMANDS_MAX), then n items:
//!                  u8 kind, u32 length, that many bytes:
//!                  kind 0  a write payload (`command.rs`'s encoding; never another EXEC)
//!                  kind 1  a read query payload (`command.rs`'s encoding; never WATCH)
//!                  kind 2  an error reply: its text (UTF-8, no CR or LF)
//!                  kind 3  a status reply (`+OK`, `+PONG`): its text (UTF-8, no CR or LF)
//!                  kind 4  a bulk reply: its bytes (ECHO's argument)
//! ```
//! Nothing may follow the last item. Kinds 2 to 4 are replies the session decided while
//! queueing (a command's syntax error, `PING`): they take their place in the reply array.
//!
//! # WATCH query (format version 1, op 0x60)
//! `u32 count, then count keys (u32 length, bytes)`: answered with the applied index of the
//! state it is served from. A watch only needs that index: a key changed after it iff the
//! entry that last wrote it is later, or (for a key absent at `EXEC`) a deletion is later.
//!
//! # The client form of EXEC
//! The session sends `EXEC` to the node as the internal command `KVRAFT.EXEC <entry>` (one
//! argument: the whole entry above), so that a follower forwards it to the leader in one
//! `ClientRequest` like any other command. Any client may send it too, so `parse_exec`
//! checks it as it checks any input: decoded whole, every limit, every inner command.
//!
//! Invariants:
//! 1. `decode(encode(w, q))` gives back the watches and the queued items, for every queue the
//!    session can build within the limits; every such entry fits `ENTRY_SIZE_MAX`.
//! 2. Decoding never recurses more than one level: an inner EXEC (or WATCH) is refused by its
//!    op code before it is decoded.

use crate::client::value::Value;
use crate::kv::command::{self, arity_error, op, DecodeError, ReadCmd, WriteCmd};
use crate::kv::envelope::ENVELOPE_SIZE_MAX;
use crate::kv::Request;
use crate::limits::{ENTRY_SIZE_MAX, KEY_SIZE_MAX, TX_COMMANDS_MAX, TX_SIZE_MAX, WATCH_KEYS_MAX};
use crate::raft::LogIndex;

/// Bytes of an EXEC entry besides its watches and items: version, op and the two counts.
pub const EXEC_HEADER_SIZE: usize = 2 + 4 + 4;

// Whatever the session queues within TX_SIZE_MAX, enveloped, fits one entry (invariant 1).
const _: () = assert!(TX_SIZE_MAX + EXEC_HEADER_SIZE + ENVELOPE_SIZE_MAX <= ENTRY_SIZE_MAX);

/// The internal command that carries an encoded transaction (lowercase, as `command_name`
/// gives it).
pub const EXEC_COMMAND: &str = "kvraft.exec";

/// What one queued item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    Write = 0,
    Read = 1,
    Error = 2,
    Status = 3,
    Bulk = 4,
}

impl ItemKind {
    fn from_byte(b: u8) -> Option<ItemKind> {
        Some(match b {
            0 => ItemKind::Write,
            1 => ItemKind::Read,
            2 => ItemKind::Error,
            3 => ItemKind::Status,
            4 => ItemKind::Bulk,
            _ => return None,
        })
    }
}

/// One decoded item of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Item<'a> {
    Write(WriteCmd<'a>),
    Read(ReadCmd<'a>),
    /// A reply decided while queueing.
    Reply(Value),
}

/// A decoded transaction, borrowing from its entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Tx<'a> {
    /// Each watched key with the applied index its WATCH read saw.
    pub watches: Vec<(&'a [u8], LogIndex)>,
    pub items: Vec<Item<'a>>,
}

/// Bytes a watched key adds to the entry.
pub fn watch_size(key: &[u8]) -> usize {
    4 + key.len() + 8
}

/// A transaction's items as they are queued: already in their entry encoding, so that the
/// size checked while queueing is the size that goes into the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    bytes: Vec<u8>,
    count: usize,
}

impl Queue {
    /// Items queued.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the items take in the entry.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// Bytes `body` would add as one item.
    pub fn item_size(body: &[u8]) -> usize {
        1 + 4 + body.len()
    }

    /// Append an item. The caller checked the limits (`TX_COMMANDS_MAX`, `TX_SIZE_MAX`).
    pub fn push(&mut self, kind: ItemKind, body: &[u8]) {
        assert!(
            self.count < TX_COMMANDS_MAX && self.size() + Self::item_size(body) <= TX_SIZE_MAX,
            "queue over its limits: {} items, {} + {} bytes",
            self.count,
            self.size(),
            Self::item_size(body)
        );
        self.bytes.push(kind as u8);
        self.bytes
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.bytes.extend_from_slice(body);
        self.count += 1;
    }
}

/// The EXEC entry for these watches and queued items.
pub fn encode(watches: &[(Vec<u8>, LogIndex)], queue: &Queue) -> Vec<u8> {
    let watch_bytes: usize = watches.iter().map(|(k, _)| watch_size(k)).sum();
    let mut out = Vec::with_capacity(2 + 4 + watch_bytes + 4 + queue.size());
    out.extend_from_slice(&[command::FORMAT_VERSION, op::EXEC]);
    out.extend_from_slice(&(watches.len() as u32).to_be_bytes());
    for (key, seen) in watches {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&seen.0.to_be_bytes());
    }
    out.extend_from_slice(&(queue.count as u32).to_be_bytes());
    out.extend_from_slice(&queue.bytes);
    out
}

/// Whether `data` is an EXEC entry (by its header; it may still not decode).
pub fn is_exec(data: &[u8]) -> bool {
    matches!(data, [command::FORMAT_VERSION, op::EXEC, ..])
}

/// Whether `data` is a WATCH query (by its header).
pub fn is_watch(data: &[u8]) -> bool {
    matches!(data, [command::FORMAT_VERSION, op::WATCH, ..])
}

/// Decode an EXEC entry whole: watches, then every item, each inner command decoded.
pub fn decode(data: &[u8]) -> Result<Tx<'_>, DecodeError> {
    let (code, mut r) = command::header(data)?;
    if code != op::EXEC {
        return Err(DecodeError::Op(code));
    }
    let w = r.count(4 + 8)?;
    if w > WATCH_KEYS_MAX {
        return Err(DecodeError::TooLarge {
            len: w,
            max: WATCH_KEYS_MAX,
        });
    }
    let mut watches = Vec::with_capacity(w);
    for _ in 0..w {
        let key = r.key()?;
        watches.push((key, LogIndex(r.u64()?)));
    }
    let n = r.count(1 + 4)?;
    if n > TX_COMMANDS_MAX {
        return Err(DecodeError::TooLarge {
            len: n,
            max: TX_COMMANDS_MAX,
        });
    }
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = r.u8()?;
        let body = r.bytes(ENTRY_SIZE_MAX)?;
        items.push(decode_item(kind, body)?);
    }
    r.finish()?;
    Ok(Tx { watches, items })
}

fn decode_item(kind: u8, body: &[u8]) -> Result<Item<'_>, DecodeError> {
    let inner_op = body.get(1).copied();
    let item = match ItemKind::from_byte(kind) {
        // Checked before decoding: no EXEC inside an EXEC, so no recursion.
        Some(ItemKind::Write) if inner_op == Some(op::EXEC) => {
            return Err(DecodeError::Op(op::EXEC))
        }
        Some(ItemKind::Read) if inner_op == Some(op::WATCH) => {
            return Err(DecodeError::Op(op::WATCH))
        }
        Some(ItemKind::Write) => Item::Write(command::decode_write(body)?),
        Some(ItemKind::Read) => Item::Read(command::decode_read(body)?),
        Some(ItemKind::Error) => Item::Reply(Value::Error(line_text(body)?)),
        Some(ItemKind::Status) => Item::Reply(Value::Simple(line_text(body)?.into())),
        Some(ItemKind::Bulk) => Item::Reply(Value::Bulk(body.to_vec())),
        None => return Err(DecodeError::Op(kind)),
    };
    Ok(item)
}

/// The text of an error or status reply: it goes on one RESP line, so no CR or LF (a client
/// that sends `KVRAFT.EXEC` itself must not be able to forge replies).
fn line_text(body: &[u8]) -> Result<String, DecodeError> {
    if body.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(DecodeError::Op(op::EXEC));
    }
    String::from_utf8(body.to_vec()).map_err(|_| DecodeError::Op(op::EXEC))
}

/// `KVRAFT.EXEC <entry>`, from the session or from any client: the entry if it decodes whole.
pub fn parse_exec(args: &[Vec<u8>]) -> Request {
    if args.len() != 2 {
        return Request::Reply(arity_error(EXEC_COMMAND));
    }
    let entry = &args[1];
    if entry.len() + ENVELOPE_SIZE_MAX > ENTRY_SIZE_MAX {
        return Request::Reply(Value::error(format!(
            "ERR transaction of {} bytes exceeds the maximum entry size ({ENTRY_SIZE_MAX} bytes)",
            entry.len()
        )));
    }
    match decode(entry) {
        Ok(_) => Request::Write(entry.clone()),
        Err(e) => Request::Reply(Value::error(format!("ERR malformed transaction: {e}"))),
    }
}

/// `WATCH key [key ...]` as a read: the keys are checked as any key; the reply is the applied
/// index the session keeps with them.
pub fn parse_watch(args: &[Vec<u8>]) -> Request {
    if args.len() < 2 {
        return Request::Reply(arity_error("watch"));
    }
    if args.len() - 1 > WATCH_KEYS_MAX {
        return Request::Reply(watch_limit_error());
    }
    let mut out = vec![command::FORMAT_VERSION, op::WATCH];
    out.extend_from_slice(&((args.len() - 1) as u32).to_be_bytes());
    for key in &args[1..] {
        if key.len() > KEY_SIZE_MAX {
            return Request::Reply(Value::error(format!(
                "ERR key exceeds maximum allowed size ({KEY_SIZE_MAX} bytes)"
            )));
        }
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
    }
    Request::Read(out)
}

/// Check a WATCH query (its keys are not needed to answer it).
pub fn decode_watch(data: &[u8]) -> Result<(), DecodeError> {
    let (code, mut r) = command::header(data)?;
    if code != op::WATCH {
        return Err(DecodeError::Op(code));
    }
    let keys = r.keys()?;
    if keys.len() > WATCH_KEYS_MAX {
        return Err(DecodeError::TooLarge {
            len: keys.len(),
            max: WATCH_KEYS_MAX,
        });
    }
    r.finish()
}

/// The error for a connection that would watch more than `WATCH_KEYS_MAX` keys.
pub fn watch_limit_error() -> Value {
    Value::error(format!(
        "ERR WATCH would watch more than {WATCH_KEYS_MAX} keys on this connection \
         (WATCH_KEYS_MAX); UNWATCH or EXEC first"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    fn payload(a: &[&[u8]]) -> (ItemKind, Vec<u8>) {
        match command::parse(&args(a)) {
            Some(Request::Write(p)) => (ItemKind::Write, p),
            Some(Request::Read(p)) => (ItemKind::Read, p),
            other => panic!("{a:?}: {other:?}"),
        }
    }

    fn sample() -> (Vec<(Vec<u8>, LogIndex)>, Queue) {
        let mut q = Queue::default();
        for a in [
            &[&b"SET"[..], b"k", b"v"][..],
            &[b"GET", b"k"],
            &[b"INCR", b"n"],
        ] {
            let (kind, p) = payload(a);
            q.push(kind, &p);
        }
        q.push(ItemKind::Error, b"ERR syntax error");
        q.push(ItemKind::Status, b"PONG");
        q.push(ItemKind::Bulk, b"\r\nany bytes\0");
        (vec![(b"w".to_vec(), LogIndex(7)), (vec![], LogIndex(0))], q)
    }

    #[test]
    fn an_exec_entry_round_trips_and_every_truncation_or_extension_is_refused() {
        let (watches, q) = sample();
        let e = encode(&watches, &q);
        assert!(is_exec(&e));
        let tx = decode(&e).expect("decodes");
        assert_eq!(
            tx.watches,
            vec![(&b"w"[..], LogIndex(7)), (&b""[..], LogIndex(0))]
        );
        assert_eq!(tx.items.len(), 6);
        assert_eq!(
            tx.items[0],
            Item::Write(WriteCmd::Set {
                flags: 0,
                key: b"k",
                value: b"v"
            })
        );
        assert_eq!(tx.items[1], Item::Read(ReadCmd::Get { key: b"k" }));
        assert_eq!(tx.items[3], Item::Reply(Value::error("ERR syntax error")));
        assert_eq!(tx.items[4], Item::Reply(Value::Simple("PONG".into())));
        assert_eq!(
            tx.items[5],
            Item::Reply(Value::Bulk(b"\r\nany bytes\0".to_vec()))
        );
        for cut in 0..e.len() {
            assert!(decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert_eq!(
            parse_exec(&[b"KVRAFT.EXEC".to_vec(), e.clone()]),
            Request::Write(e)
        );
    }

    #[test]
    fn hostile_exec_entries_are_refused_with_errors() {
        let err = |e: Vec<u8>| match parse_exec(&[b"kvraft.exec".to_vec(), e]) {
            Request::Reply(Value::Error(e)) => e,
            other => panic!("{other:?}"),
        };
        let (watches, q) = sample();
        // An EXEC inside an EXEC, and a WATCH query as an item.
        let inner = encode(&watches, &q);
        let mut nested = Queue::default();
        nested.push(ItemKind::Write, &inner);
        assert!(err(encode(&[], &nested)).contains("malformed transaction"));
        let mut watch_item = Queue::default();
        let Request::Read(w) = parse_watch(&args(&[b"watch", b"k"])) else {
            panic!()
        };
        watch_item.push(ItemKind::Read, &w);
        assert!(err(encode(&[], &watch_item)).contains("malformed"));
        // A reply text that would forge a RESP line, and a kind that does not exist.
        let mut forged = Queue::default();
        forged.push(ItemKind::Status, b"OK\r\n+FORGED");
        assert!(err(encode(&[], &forged)).contains("malformed"));
        let mut bad_kind = encode(&[], &q);
        bad_kind[2 + 4 + 4] = 9;
        assert!(err(bad_kind).contains("malformed"));
        // Counts past the limits, with or without the bytes behind them.
        let mut many = vec![command::FORMAT_VERSION, op::EXEC, 0, 0, 0, 0];
        many.extend_from_slice(&((TX_COMMANDS_MAX + 1) as u32).to_be_bytes());
        many.extend(std::iter::repeat_n(0u8, (TX_COMMANDS_MAX + 1) * 5));
        assert!(err(many).contains("malformed"));
        let huge = vec![command::FORMAT_VERSION, op::EXEC, 0xff, 0xff, 0xff, 0xff];
        assert!(err(huge).contains("malformed"));
        assert!(err(vec![]).contains("malformed"));
        assert!(matches!(
            parse_exec(&args(&[b"kvraft.exec"])),
            Request::Reply(Value::Error(e)) if e.contains("wrong number")
        ));
        // Random bytes behind a valid header never panic.
        let mut p = crate::prng::Prng::new(14);
        for _ in 0..20_000 {
            let mut buf = vec![0u8; p.range(2, 48) as usize];
            p.fill(&mut buf);
            buf[0] = command::FORMAT_VERSION;
            buf[1] = op::EXEC;
            if buf.len() >= 6 && p.chance(1, 2) {
                buf[2..6].copy_from_slice(&(p.range(0, 3) as u32).to_be_bytes());
            }
            let _ = decode(&buf);
        }
    }

    #[test]
    fn watch_is_a_read_whose_keys_are_checked() {
        let Request::Read(q) = parse_watch(&args(&[b"WATCH", b"a", b"b"])) else {
            panic!()
        };
        assert!(is_watch(&q));
        assert_eq!(decode_watch(&q), Ok(()));
        assert!(decode_watch(&q[..q.len() - 1]).is_err());
        assert!(matches!(
            command::parse(&args(&[b"watch"])),
            Some(Request::Reply(Value::Error(e))) if e == "ERR wrong number of arguments for 'watch' command"
        ));
        let big = vec![b'k'; KEY_SIZE_MAX + 1];
        assert!(matches!(
            parse_watch(&[b"watch".to_vec(), big]),
            Request::Reply(Value::Error(e)) if e.contains("key exceeds")
        ));
        let mut many = vec![b"watch".to_vec()];
        many.extend((0..=WATCH_KEYS_MAX).map(|i| i.to_string().into_bytes()));
        assert_eq!(parse_watch(&many), Request::Reply(watch_limit_error()));
    }
}
