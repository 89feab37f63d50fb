//! Client commands of the KV: parsing RESP argument lists (with Redis's errors), and the
//! compact binary encoding of writes (log entry payloads) and reads (ReadIndex queries).
//!
//! Owns: arity and option checking, key and value size limits, the entry format.
//! Must not: touch the store; everything here is a pure function of its input.
//!
//! # Encoding (version 1), all integers big-endian (byteorder)
//!
//! ```text
//! offset 0  u8   format version = 1
//! offset 1  u8   op code
//! offset 2  ...  fields of the op, in order:
//!   bytes  = u32 length, then that many bytes (keys <= KEY_SIZE_MAX, values <= VALUE_SIZE_MAX)
//!   list   = u32 count, then count items
//!
//! writes (log entries)                       reads (queries)
//! 0x01 SET    u8 flags, key bytes, value     0x41 GET     key
//!             flags: 1 NX, 2 XX, 4 GET        0x42 EXISTS  list of keys
//! 0x02 SETNX  key, value                      0x43 MGET    list of keys
//! 0x03 DEL    list of keys                    0x44 STRLEN  key
//! 0x04 MSET   list of (key, value) pairs      0x45 RANGE   start, end (empty = unbounded),
//! 0x05 INCRBY key, i64 delta                               u32 limit
//! 0x06 APPEND key, value                      0x46 DBSIZE
//! 0x07 CAS    key, expected, new              0x47 GETRANGE key, i64 start, i64 end
//! 0x08 GETDEL key                             0x48 TYPE    key
//! 0x09 MSETNX list of (key, value) pairs      0x49 SCAN    u64 cursor, u32 count,
//! 0x0a SETRANGE key, u64 offset, value                     u8 has pattern, [pattern bytes],
//! 0x0b INCRBYFLOAT key, increment bytes                    u8 type (0 any, 1 string, 2 other)
//!      (the text the client sent; parsed at    0x4a KEYS    pattern
//!      apply, identically on every replica)    0x4b RANDOMKEY
//! 0x0c RENAME key, new key, u8 nx (0 or 1)
//! 0x0d COPY   key, destination, u8 replace (0 or 1)
//! 0x0e FLUSHALL
//! 0x30 SESSION OPEN (no fields; reply: the session id, which is the index of this entry)
//! 0x10..=0x14 and 0x4c: the TTL commands, laid out in `ttl.rs`
//! 0x20 EXEC   a whole transaction: watches and queued commands   0x60 WATCH  list of keys
//!             (layout in `kv::tx`)                                (answers the applied index)
//! ```
//! Nothing may follow the last field. INCR, DECR and DECRBY are encoded as INCRBY; GETSET as
//! SET with the GET flag; SET with a TTL option as op 0x10 (`ttl.rs`); UNLINK as DEL; TOUCH as EXISTS; SUBSTR as GETRANGE; RENAMENX as
//! RENAME with nx = 1; FLUSHDB as FLUSHALL.
//!
//! Invariants:
//! 1. `decode(encode(c)) == c` for every command `parse` produces, and every payload `parse`
//!    produces fits `ENTRY_SIZE_MAX`.
//! 2. Decoding checks every length against the bytes remaining and its limit before
//!    allocating, and fails with a `DecodeError` (never a panic) on any other input.

use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::value::Value;
use crate::kv::ttl::{self, TtlRead, TtlWrite};
use crate::kv::Request;
use crate::limits::{ENTRY_SIZE_MAX, KEY_SIZE_MAX, SCAN_COUNT_MAX, VALUE_SIZE_MAX};
use byteorder::{BigEndian, ByteOrder};

/// The entry format version written by this code.
pub const FORMAT_VERSION: u8 = 1;

/// Default number of pairs a RANGE returns without LIMIT.
pub const RANGE_LIMIT_DEFAULT: u32 = 1000;
/// Largest LIMIT a RANGE accepts.
pub const RANGE_LIMIT_MAX: u32 = 100_000;

/// Flags of SET (bit values in the encoding).
pub const SET_NX: u8 = 1;
pub const SET_XX: u8 = 2;
pub const SET_GET: u8 = 4;

/// A decoded write, borrowing from the payload (or from the client's arguments).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteCmd<'a> {
    Set {
        flags: u8,
        key: &'a [u8],
        value: &'a [u8],
    },
    SetNx {
        key: &'a [u8],
        value: &'a [u8],
    },
    Del {
        keys: Vec<&'a [u8]>,
    },
    MSet {
        pairs: Vec<(&'a [u8], &'a [u8])>,
    },
    IncrBy {
        key: &'a [u8],
        delta: i64,
    },
    Append {
        key: &'a [u8],
        value: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected: &'a [u8],
        new: &'a [u8],
    },
    GetDel {
        key: &'a [u8],
    },
    MSetNx {
        pairs: Vec<(&'a [u8], &'a [u8])>,
    },
    SetRange {
        key: &'a [u8],
        offset: u64,
        value: &'a [u8],
    },
    IncrByFloat {
        key: &'a [u8],
        incr: &'a [u8],
    },
    Rename {
        from: &'a [u8],
        to: &'a [u8],
        nx: bool,
    },
    Copy {
        from: &'a [u8],
        to: &'a [u8],
        replace: bool,
    },
    FlushAll,
    /// `SESSION OPEN`: a new exactly-once session (see `session.rs`).
    SessionOpen,
    /// The TTL commands (see `ttl.rs`).
    Ttl(TtlWrite<'a>),
}

/// What `SCAN ... TYPE t` keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeFilter {
    Any,
    String,
    /// A type this store never holds: nothing passes.
    Other,
}

/// A decoded read query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadCmd<'a> {
    Get {
        key: &'a [u8],
    },
    Exists {
        keys: Vec<&'a [u8]>,
    },
    MGet {
        keys: Vec<&'a [u8]>,
    },
    StrLen {
        key: &'a [u8],
    },
    /// Keys in `[start, end)`; an empty `end` is unbounded.
    Range {
        start: &'a [u8],
        end: &'a [u8],
        limit: u32,
    },
    DbSize,
    GetRange {
        key: &'a [u8],
        start: i64,
        end: i64,
    },
    Type {
        key: &'a [u8],
    },
    /// Keys in scan order (see `KvStore`) from `cursor`, examining at most about `count`.
    Scan {
        cursor: u64,
        count: u32,
        pattern: Option<&'a [u8]>,
        kind: TypeFilter,
    },
    Keys {
        pattern: &'a [u8],
    },
    RandomKey,
    /// TTL, PTTL, EXPIRETIME, PEXPIRETIME (see `ttl.rs`).
    Ttl(TtlRead<'a>),
}

/// Why a payload did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    Version(u8),
    Op(u8),
    Truncated,
    TooLarge { len: usize, max: usize },
    Trailing { extra: usize },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty payload"),
            DecodeError::Version(v) => write!(f, "unknown format version {v}"),
            DecodeError::Op(op) => write!(f, "unknown op code {op:#04x}"),
            DecodeError::Truncated => write!(f, "truncated payload"),
            DecodeError::TooLarge { len, max } => write!(f, "field of {len} bytes > {max}"),
            DecodeError::Trailing { extra } => write!(f, "{extra} trailing bytes"),
        }
    }
}

pub(super) mod op {
    pub const SET: u8 = 0x01;
    pub const SETNX: u8 = 0x02;
    pub const DEL: u8 = 0x03;
    pub const MSET: u8 = 0x04;
    pub const INCRBY: u8 = 0x05;
    pub const APPEND: u8 = 0x06;
    pub const CAS: u8 = 0x07;
    pub const GETDEL: u8 = 0x08;
    pub const MSETNX: u8 = 0x09;
    pub const SETRANGE: u8 = 0x0a;
    pub const INCRBYFLOAT: u8 = 0x0b;
    pub const RENAME: u8 = 0x0c;
    pub const COPY: u8 = 0x0d;
    pub const FLUSHALL: u8 = 0x0e;
    /// A transaction (`kv::tx`); apart from the others so that new ops do not collide.
    pub const EXEC: u8 = 0x20;
    pub const SESSION_OPEN: u8 = 0x30;
    pub const GET: u8 = 0x41;
    pub const EXISTS: u8 = 0x42;
    pub const MGET: u8 = 0x43;
    pub const STRLEN: u8 = 0x44;
    pub const RANGE: u8 = 0x45;
    pub const DBSIZE: u8 = 0x46;
    pub const GETRANGE: u8 = 0x47;
    pub const TYPE: u8 = 0x48;
    pub const SCAN: u8 = 0x49;
    pub const KEYS: u8 = 0x4a;
    pub const RANDOMKEY: u8 = 0x4b;
    /// WATCH's read of the applied index (`kv::tx`).
    pub const WATCH: u8 = 0x60;
}

// ---------------------------------------------------------------------------------------------
// Parsing client arguments.

/// Redis's reply for a wrong argument count.
pub fn arity_error(name: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}
pub fn not_integer() -> Value {
    Value::error("ERR value is not an integer or out of range")
}
pub fn string_too_large() -> Value {
    Value::error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}
pub fn syntax_error() -> Value {
    Value::error("ERR syntax error")
}
fn key_too_large() -> Value {
    Value::error(format!(
        "ERR key exceeds maximum allowed size ({KEY_SIZE_MAX} bytes)"
    ))
}

/// Classify a client command; `None` for a command the KV does not know.
pub fn parse(args: &[Vec<u8>]) -> Option<Request> {
    let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
    let name = command_name(args.first()?, &mut buf)?;
    let req = match name {
        "set" | "setnx" | "del" | "unlink" | "mset" | "incr" | "decr" | "incrby" | "decrby"
        | "append" | "cas" => match parse_write(name, args) {
            Ok(cmd) => encode_write_checked(&cmd),
            Err(reply) => Request::Reply(reply),
        },
        "getdel" | "getset" | "msetnx" | "setrange" | "incrbyfloat" | "rename" | "renamenx"
        | "copy" | "flushdb" | "flushall" => match parse_write_more(name, args) {
            Ok(cmd) => encode_write_checked(&cmd),
            Err(reply) => Request::Reply(reply),
        },
        "session" => match parse_session(args) {
            Ok(cmd) => encode_write_checked(&cmd),
            Err(reply) => Request::Reply(reply),
        },
        "get" | "exists" | "mget" | "strlen" | "range" | "dbsize" => match parse_read(name, args) {
            Ok(cmd) => Request::Read(encode_read(&cmd)),
            Err(reply) => Request::Reply(reply),
        },
        "watch" => crate::kv::tx::parse_watch(args),
        crate::kv::tx::EXEC_COMMAND => crate::kv::tx::parse_exec(args),
        "touch" | "getrange" | "substr" | "type" | "scan" | "keys" | "randomkey" => {
            match parse_read_more(name, args) {
                Ok(cmd) => Request::Read(encode_read(&cmd)),
                Err(reply) => Request::Reply(reply),
            }
        }
        _ => return parse_ttl(name, args),
    };
    Some(req)
}

/// The TTL commands other than SET, or `None`.
fn parse_ttl(name: &str, args: &[Vec<u8>]) -> Option<Request> {
    if let Some(parsed) = ttl::parse_write(name, args) {
        return Some(match parsed {
            Ok(cmd) => encode_write_checked(&cmd),
            Err(reply) => Request::Reply(reply),
        });
    }
    let parsed = ttl::parse_read(name, args)?;
    Some(match parsed {
        Ok(cmd) => Request::Read(encode_read(&ReadCmd::Ttl(cmd))),
        Err(reply) => Request::Reply(reply),
    })
}

fn encode_write_checked(cmd: &WriteCmd<'_>) -> Request {
    let payload = encode_write(cmd);
    // The leader wraps the payload in an envelope before proposing it: leave room for it.
    if payload.len() + crate::kv::envelope::ENVELOPE_SIZE_MAX > ENTRY_SIZE_MAX {
        return Request::Reply(Value::error(format!(
            "ERR request exceeds the maximum entry size ({ENTRY_SIZE_MAX} bytes)"
        )));
    }
    Request::Write(payload)
}

pub(crate) fn check_key(key: &[u8]) -> Result<&[u8], Value> {
    if key.len() > KEY_SIZE_MAX {
        return Err(key_too_large());
    }
    Ok(key)
}

pub(crate) fn check_value(value: &[u8]) -> Result<&[u8], Value> {
    if value.len() > VALUE_SIZE_MAX {
        return Err(string_too_large());
    }
    Ok(value)
}

fn check_keys(keys: &[Vec<u8>]) -> Result<Vec<&[u8]>, Value> {
    keys.iter().map(|k| check_key(k)).collect()
}

/// Redis's `string2ll`: an optional '-', then digits with no leading zero (or exactly "0"),
/// at most 20 characters, within i64. No '+', no spaces.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).ok()
    }
}

fn parse_write<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<WriteCmd<'a>, Value> {
    let n = args.len();
    let arity_ok = match name {
        "set" => n >= 3,
        "setnx" | "incrby" | "decrby" | "append" => n == 3,
        "incr" | "decr" => n == 2,
        "del" | "unlink" => n >= 2,
        "mset" => n >= 3 && n % 2 == 1,
        "cas" => n == 4,
        _ => unreachable!("parse_write called for {name}"),
    };
    if !arity_ok {
        return Err(arity_error(name));
    }
    let cmd = match name {
        "set" => crate::kv::ttl::parse_set(args)?,
        "setnx" => WriteCmd::SetNx {
            key: check_key(&args[1])?,
            value: check_value(&args[2])?,
        },
        "del" | "unlink" => WriteCmd::Del {
            keys: check_keys(&args[1..])?,
        },
        "mset" => {
            let mut pairs = Vec::with_capacity(n / 2);
            for kv in args[1..].chunks_exact(2) {
                pairs.push((check_key(&kv[0])?, check_value(&kv[1])?));
            }
            WriteCmd::MSet { pairs }
        }
        "incr" | "decr" => WriteCmd::IncrBy {
            key: check_key(&args[1])?,
            delta: if name == "incr" { 1 } else { -1 },
        },
        "incrby" | "decrby" => {
            let by = parse_i64(&args[2]).ok_or_else(not_integer)?;
            let delta = if name == "incrby" {
                by
            } else if by == i64::MIN {
                return Err(Value::error("ERR decrement would overflow"));
            } else {
                -by
            };
            WriteCmd::IncrBy {
                key: check_key(&args[1])?,
                delta,
            }
        }
        "append" => WriteCmd::Append {
            key: check_key(&args[1])?,
            value: check_value(&args[2])?,
        },
        _ => WriteCmd::Cas {
            key: check_key(&args[1])?,
            expected: check_value(&args[2])?,
            new: check_value(&args[3])?,
        },
    };
    Ok(cmd)
}

fn parse_read<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<ReadCmd<'a>, Value> {
    let n = args.len();
    let arity_ok = match name {
        "get" | "strlen" => n == 2,
        "exists" | "mget" => n >= 2,
        "range" => n == 3 || n == 5,
        "dbsize" => n == 1,
        _ => unreachable!("parse_read called for {name}"),
    };
    if !arity_ok {
        return Err(arity_error(name));
    }
    let cmd = match name {
        "get" => ReadCmd::Get {
            key: check_key(&args[1])?,
        },
        "strlen" => ReadCmd::StrLen {
            key: check_key(&args[1])?,
        },
        "exists" => ReadCmd::Exists {
            keys: check_keys(&args[1..])?,
        },
        "mget" => ReadCmd::MGet {
            keys: check_keys(&args[1..])?,
        },
        "range" => parse_range(args)?,
        _ => ReadCmd::DbSize,
    };
    Ok(cmd)
}

/// Key-value pairs borrowed from a command or a payload.
type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

fn parse_pairs(args: &[Vec<u8>]) -> Result<Pairs<'_>, Value> {
    let mut pairs = Vec::with_capacity(args.len() / 2);
    for kv in args.chunks_exact(2) {
        pairs.push((check_key(&kv[0])?, check_value(&kv[1])?));
    }
    Ok(pairs)
}

/// The writes added for Redis compatibility (issue 15).
fn parse_write_more<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<WriteCmd<'a>, Value> {
    let n = args.len();
    let arity_ok = match name {
        "getdel" => n == 2,
        "getset" | "incrbyfloat" | "rename" | "renamenx" => n == 3,
        "setrange" => n == 4,
        "msetnx" => n >= 3 && n % 2 == 1,
        "copy" => n >= 3,
        "flushdb" | "flushall" => n <= 2,
        _ => unreachable!("parse_write_more called for {name}"),
    };
    if !arity_ok {
        return Err(arity_error(name));
    }
    let cmd = match name {
        "getdel" => WriteCmd::GetDel {
            key: check_key(&args[1])?,
        },
        "getset" => WriteCmd::Set {
            flags: SET_GET,
            key: check_key(&args[1])?,
            value: check_value(&args[2])?,
        },
        "msetnx" => WriteCmd::MSetNx {
            pairs: parse_pairs(&args[1..])?,
        },
        "setrange" => {
            let offset = parse_i64(&args[2]).ok_or_else(not_integer)?;
            if offset < 0 {
                return Err(Value::error("ERR offset is out of range"));
            }
            WriteCmd::SetRange {
                key: check_key(&args[1])?,
                offset: offset as u64,
                value: check_value(&args[3])?,
            }
        }
        "incrbyfloat" => {
            if crate::kv::float::LongDouble::parse(&args[2]).is_none() {
                return Err(crate::kv::float::not_a_float());
            }
            WriteCmd::IncrByFloat {
                key: check_key(&args[1])?,
                incr: &args[2],
            }
        }
        "rename" | "renamenx" => WriteCmd::Rename {
            from: check_key(&args[1])?,
            to: check_key(&args[2])?,
            nx: name == "renamenx",
        },
        "copy" => parse_copy(args)?,
        _ => {
            if let Some(mode) = args.get(1) {
                if !mode.eq_ignore_ascii_case(b"sync") && !mode.eq_ignore_ascii_case(b"async") {
                    return Err(syntax_error());
                }
            }
            WriteCmd::FlushAll
        }
    };
    Ok(cmd)
}

/// `SESSION OPEN`. (`SESSION RUN` is taken apart by the node before the state machine
/// parses its command: see `session::parse_run`.)
fn parse_session(args: &[Vec<u8>]) -> Result<WriteCmd<'_>, Value> {
    let Some(sub) = args.get(1) else {
        return Err(arity_error("session"));
    };
    if sub.eq_ignore_ascii_case(b"open") {
        if args.len() != 2 {
            return Err(arity_error("session|open"));
        }
        return Ok(WriteCmd::SessionOpen);
    }
    if sub.eq_ignore_ascii_case(b"run") {
        return Err(Value::error(
            "ERR SESSION RUN cannot be nested or used inside a transaction",
        ));
    }
    Err(Value::error(format!(
        "ERR unknown subcommand '{}'. Try SESSION OPEN or SESSION RUN.",
        String::from_utf8_lossy(sub)
    )))
}

/// `COPY source destination [DB 0] [REPLACE]`: one database, so `DB` takes only 0.
fn parse_copy(args: &[Vec<u8>]) -> Result<WriteCmd<'_>, Value> {
    let mut replace = false;
    let mut j = 3;
    while j < args.len() {
        let opt = &args[j];
        if opt.eq_ignore_ascii_case(b"replace") {
            replace = true;
        } else if opt.eq_ignore_ascii_case(b"db") && j + 1 < args.len() {
            let db = parse_i64(&args[j + 1]).ok_or_else(not_integer)?;
            if db != 0 {
                return Err(Value::error("ERR DB index is out of range"));
            }
            j += 1;
        } else {
            return Err(syntax_error());
        }
        j += 1;
    }
    Ok(WriteCmd::Copy {
        from: check_key(&args[1])?,
        to: check_key(&args[2])?,
        replace,
    })
}

/// The reads added for Redis compatibility (issue 15).
fn parse_read_more<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<ReadCmd<'a>, Value> {
    let n = args.len();
    let arity_ok = match name {
        "touch" => n >= 2,
        "getrange" | "substr" => n == 4,
        "type" | "keys" => n == 2,
        "scan" => n >= 2,
        "randomkey" => n == 1,
        _ => unreachable!("parse_read_more called for {name}"),
    };
    if !arity_ok {
        return Err(arity_error(name));
    }
    let cmd = match name {
        "touch" => ReadCmd::Exists {
            keys: check_keys(&args[1..])?,
        },
        "getrange" | "substr" => {
            let start = parse_i64(&args[2]).ok_or_else(not_integer)?;
            let end = parse_i64(&args[3]).ok_or_else(not_integer)?;
            ReadCmd::GetRange {
                key: check_key(&args[1])?,
                start,
                end,
            }
        }
        "type" => ReadCmd::Type {
            key: check_key(&args[1])?,
        },
        "keys" => ReadCmd::Keys {
            pattern: check_key(&args[1])?,
        },
        "scan" => parse_scan(args)?,
        _ => ReadCmd::RandomKey,
    };
    Ok(cmd)
}

/// Redis's default `SCAN` COUNT.
pub const SCAN_COUNT_DEFAULT: u32 = 10;

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`, with Redis's errors. A COUNT above
/// `SCAN_COUNT_MAX` is lowered to it (COUNT is a hint), which bounds the work of one call.
fn parse_scan(args: &[Vec<u8>]) -> Result<ReadCmd<'_>, Value> {
    let cursor = parse_cursor(&args[1]).ok_or_else(|| Value::error("ERR invalid cursor"))?;
    let (mut count, mut pattern, mut kind) = (SCAN_COUNT_DEFAULT, None, TypeFilter::Any);
    let mut j = 2;
    while j < args.len() {
        let (opt, arg) = (&args[j], args.get(j + 1));
        match arg {
            Some(a) if opt.eq_ignore_ascii_case(b"count") => {
                let n = parse_i64(a).ok_or_else(not_integer)?;
                if n < 1 {
                    return Err(syntax_error());
                }
                count = n.min(i64::from(SCAN_COUNT_MAX)) as u32;
            }
            Some(a) if opt.eq_ignore_ascii_case(b"match") => {
                pattern = (a.as_slice() != b"*").then_some(check_key(a)?);
            }
            Some(a) if opt.eq_ignore_ascii_case(b"type") => {
                kind = if a.eq_ignore_ascii_case(b"string") {
                    TypeFilter::String
                } else {
                    TypeFilter::Other
                };
            }
            _ => return Err(syntax_error()),
        }
        j += 2;
    }
    Ok(ReadCmd::Scan {
        cursor,
        count,
        pattern,
        kind,
    })
}

/// A SCAN cursor: decimal digits within u64 (what redis-py and go-redis send back).
fn parse_cursor(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// `RANGE start end [LIMIT n]`.
fn parse_range(args: &[Vec<u8>]) -> Result<ReadCmd<'_>, Value> {
    let mut limit = RANGE_LIMIT_DEFAULT;
    if args.len() == 5 {
        if !args[3].eq_ignore_ascii_case(b"limit") {
            return Err(syntax_error());
        }
        let n = parse_i64(&args[4]).ok_or_else(not_integer)?;
        if n < 1 || n > i64::from(RANGE_LIMIT_MAX) {
            return Err(Value::error(format!(
                "ERR LIMIT must be between 1 and {RANGE_LIMIT_MAX}"
            )));
        }
        limit = n as u32;
    }
    Ok(ReadCmd::Range {
        start: check_key(&args[1])?,
        end: check_key(&args[2])?,
        limit,
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding.

fn put_u32(out: &mut Vec<u8>, v: u32) {
    let mut b = [0u8; 4];
    BigEndian::write_u32(&mut b, v);
    out.extend_from_slice(&b);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_list(out: &mut Vec<u8>, items: &[&[u8]]) {
    put_u32(out, items.len() as u32);
    for it in items {
        put_bytes(out, it);
    }
}

/// The log entry payload of a write.
pub fn encode_write(cmd: &WriteCmd<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(write_size_hint(cmd));
    out.push(FORMAT_VERSION);
    match cmd {
        WriteCmd::Set { flags, key, value } => {
            out.extend_from_slice(&[op::SET, *flags]);
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        WriteCmd::SetNx { key, value } => {
            out.push(op::SETNX);
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        WriteCmd::Del { keys } => {
            out.push(op::DEL);
            put_list(&mut out, keys);
        }
        WriteCmd::MSet { pairs } => {
            out.push(op::MSET);
            put_u32(&mut out, pairs.len() as u32);
            for (k, v) in pairs {
                put_bytes(&mut out, k);
                put_bytes(&mut out, v);
            }
        }
        WriteCmd::IncrBy { key, delta } => {
            out.push(op::INCRBY);
            put_bytes(&mut out, key);
            out.extend_from_slice(&delta.to_be_bytes());
        }
        WriteCmd::Append { key, value } => {
            out.push(op::APPEND);
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        WriteCmd::Cas { key, expected, new } => {
            out.push(op::CAS);
            put_bytes(&mut out, key);
            put_bytes(&mut out, expected);
            put_bytes(&mut out, new);
        }
        _ => encode_write_more(cmd, &mut out),
    }
    out
}

/// The encoded size of the common writes, exactly, so encoding allocates once (the write
/// path's cost per write); a small default for the rest, which may grow.
fn write_size_hint(cmd: &WriteCmd<'_>) -> usize {
    const HEAD: usize = 3; // version, op, flags
    match cmd {
        WriteCmd::Set { key, value, .. }
        | WriteCmd::SetNx { key, value }
        | WriteCmd::Append { key, value } => HEAD + 8 + key.len() + value.len(),
        WriteCmd::Cas { key, expected, new } => HEAD + 12 + key.len() + expected.len() + new.len(),
        WriteCmd::MSet { pairs } | WriteCmd::MSetNx { pairs } => {
            HEAD + 4
                + pairs
                    .iter()
                    .map(|(k, v)| 8 + k.len() + v.len())
                    .sum::<usize>()
        }
        WriteCmd::Del { keys } => HEAD + 4 + keys.iter().map(|k| 4 + k.len()).sum::<usize>(),
        _ => 64,
    }
}

fn encode_write_more(cmd: &WriteCmd<'_>, out: &mut Vec<u8>) {
    match cmd {
        WriteCmd::GetDel { key } => {
            out.push(op::GETDEL);
            put_bytes(out, key);
        }
        WriteCmd::MSetNx { pairs } => {
            out.push(op::MSETNX);
            put_u32(out, pairs.len() as u32);
            for (k, v) in pairs {
                put_bytes(out, k);
                put_bytes(out, v);
            }
        }
        WriteCmd::SetRange { key, offset, value } => {
            out.push(op::SETRANGE);
            put_bytes(out, key);
            out.extend_from_slice(&offset.to_be_bytes());
            put_bytes(out, value);
        }
        WriteCmd::IncrByFloat { key, incr } => {
            out.push(op::INCRBYFLOAT);
            put_bytes(out, key);
            put_bytes(out, incr);
        }
        WriteCmd::Rename { from, to, nx } => {
            out.push(op::RENAME);
            put_bytes(out, from);
            put_bytes(out, to);
            out.push(u8::from(*nx));
        }
        WriteCmd::Copy { from, to, replace } => {
            out.push(op::COPY);
            put_bytes(out, from);
            put_bytes(out, to);
            out.push(u8::from(*replace));
        }
        WriteCmd::FlushAll => out.push(op::FLUSHALL),
        WriteCmd::SessionOpen => out.push(op::SESSION_OPEN),
        WriteCmd::Ttl(t) => ttl::encode_write(t, out),
        _ => unreachable!("encode_write handles {cmd:?}"),
    }
}

/// The query payload of a read.
pub fn encode_read(cmd: &ReadCmd<'_>) -> Vec<u8> {
    // One allocation for the commonest read, GET, sized at once (issue 16): a buffer of one
    // byte grown later would be a second one (a realloc per GET).
    let mut out = Vec::with_capacity(match cmd {
        ReadCmd::Get { key } => 1 + 1 + 4 + key.len(),
        _ => 16,
    });
    out.push(FORMAT_VERSION);
    match cmd {
        ReadCmd::Get { key } => {
            out.push(op::GET);
            put_bytes(&mut out, key);
        }
        ReadCmd::Exists { keys } => {
            out.push(op::EXISTS);
            put_list(&mut out, keys);
        }
        ReadCmd::MGet { keys } => {
            out.push(op::MGET);
            put_list(&mut out, keys);
        }
        ReadCmd::StrLen { key } => {
            out.push(op::STRLEN);
            put_bytes(&mut out, key);
        }
        ReadCmd::Range { start, end, limit } => {
            out.push(op::RANGE);
            put_bytes(&mut out, start);
            put_bytes(&mut out, end);
            put_u32(&mut out, *limit);
        }
        ReadCmd::DbSize => out.push(op::DBSIZE),
        ReadCmd::GetRange { key, start, end } => {
            out.push(op::GETRANGE);
            put_bytes(&mut out, key);
            out.extend_from_slice(&start.to_be_bytes());
            out.extend_from_slice(&end.to_be_bytes());
        }
        ReadCmd::Type { key } => {
            out.push(op::TYPE);
            put_bytes(&mut out, key);
        }
        ReadCmd::Scan {
            cursor,
            count,
            pattern,
            kind,
        } => {
            out.push(op::SCAN);
            out.extend_from_slice(&cursor.to_be_bytes());
            put_u32(&mut out, *count);
            match pattern {
                Some(p) => {
                    out.push(1);
                    put_bytes(&mut out, p);
                }
                None => out.push(0),
            }
            out.push(match kind {
                TypeFilter::Any => 0,
                TypeFilter::String => 1,
                TypeFilter::Other => 2,
            });
        }
        ReadCmd::Keys { pattern } => {
            out.push(op::KEYS);
            put_bytes(&mut out, pattern);
        }
        ReadCmd::RandomKey => out.push(op::RANDOMKEY),
        ReadCmd::Ttl(t) => ttl::encode_read(t, &mut out),
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding: check-then-decode over a byte slice.

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(BigEndian::read_u32(self.take(4)?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(BigEndian::read_i64(self.take(8)?))
    }
    pub(super) fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        self.take(len)
    }
    pub(super) fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        self.bytes(KEY_SIZE_MAX)
    }
    fn value(&mut self) -> Result<&'a [u8], DecodeError> {
        self.bytes(VALUE_SIZE_MAX)
    }
    /// A count of items each at least `item_min` bytes long, checked against what remains.
    pub(super) fn count(&mut self, item_min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item_min) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }
    /// A byte that must be 0 or 1.
    fn flag(&mut self, code: u8) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Op(code)),
        }
    }
    fn pairs(&mut self) -> Result<Pairs<'a>, DecodeError> {
        let n = self.count(8)?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            pairs.push((self.key()?, self.value()?));
        }
        Ok(pairs)
    }
    pub(super) fn keys(&mut self) -> Result<Vec<&'a [u8]>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.key()).collect()
    }
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { extra }),
        }
    }
}

/// Version byte and op code.
pub(super) fn header(data: &[u8]) -> Result<(u8, Reader<'_>), DecodeError> {
    match data {
        [] => Err(DecodeError::Empty),
        [FORMAT_VERSION, op, rest @ ..] => Ok((*op, Reader { buf: rest })),
        [FORMAT_VERSION] => Err(DecodeError::Truncated),
        [v, ..] => Err(DecodeError::Version(*v)),
    }
}

/// Decode a log entry payload.
pub fn decode_write(data: &[u8]) -> Result<WriteCmd<'_>, DecodeError> {
    let (code, mut r) = header(data)?;
    let cmd = match code {
        op::SET => {
            let flags = r.u8()?;
            if flags & !(SET_NX | SET_XX | SET_GET) != 0
                || flags & (SET_NX | SET_XX) == SET_NX | SET_XX
            {
                return Err(DecodeError::Op(code));
            }
            WriteCmd::Set {
                flags,
                key: r.key()?,
                value: r.value()?,
            }
        }
        op::SETNX => WriteCmd::SetNx {
            key: r.key()?,
            value: r.value()?,
        },
        op::DEL => WriteCmd::Del { keys: r.keys()? },
        op::MSET => {
            let n = r.count(8)?;
            let mut pairs = Vec::with_capacity(n);
            for _ in 0..n {
                pairs.push((r.key()?, r.value()?));
            }
            WriteCmd::MSet { pairs }
        }
        op::INCRBY => WriteCmd::IncrBy {
            key: r.key()?,
            delta: r.i64()?,
        },
        op::APPEND => WriteCmd::Append {
            key: r.key()?,
            value: r.value()?,
        },
        op::CAS => WriteCmd::Cas {
            key: r.key()?,
            expected: r.value()?,
            new: r.value()?,
        },
        op::GETDEL => WriteCmd::GetDel { key: r.key()? },
        op::MSETNX => WriteCmd::MSetNx { pairs: r.pairs()? },
        op::SETRANGE => WriteCmd::SetRange {
            key: r.key()?,
            offset: r.u64()?,
            value: r.value()?,
        },
        op::INCRBYFLOAT => WriteCmd::IncrByFloat {
            key: r.key()?,
            incr: r.value()?,
        },
        op::RENAME => WriteCmd::Rename {
            from: r.key()?,
            to: r.key()?,
            nx: r.flag(code)?,
        },
        op::COPY => WriteCmd::Copy {
            from: r.key()?,
            to: r.key()?,
            replace: r.flag(code)?,
        },
        op::FLUSHALL => WriteCmd::FlushAll,
        op::SESSION_OPEN => WriteCmd::SessionOpen,
        other => {
            let fields = &mut ttl::Fields { buf: r.buf };
            return match ttl::decode_write(other, fields) {
                Some(decoded) => decoded.map(WriteCmd::Ttl),
                None => Err(DecodeError::Op(other)),
            };
        }
    };
    r.finish()?;
    Ok(cmd)
}

/// Decode a read query.
pub fn decode_read(data: &[u8]) -> Result<ReadCmd<'_>, DecodeError> {
    let (code, mut r) = header(data)?;
    let cmd = match code {
        op::GET => ReadCmd::Get { key: r.key()? },
        op::EXISTS => ReadCmd::Exists { keys: r.keys()? },
        op::MGET => ReadCmd::MGet { keys: r.keys()? },
        op::STRLEN => ReadCmd::StrLen { key: r.key()? },
        op::RANGE => ReadCmd::Range {
            start: r.key()?,
            end: r.key()?,
            limit: r.u32()?.min(RANGE_LIMIT_MAX),
        },
        op::DBSIZE => ReadCmd::DbSize,
        op::GETRANGE => ReadCmd::GetRange {
            key: r.key()?,
            start: r.i64()?,
            end: r.i64()?,
        },
        op::TYPE => ReadCmd::Type { key: r.key()? },
        op::SCAN => {
            let cursor = r.u64()?;
            let count = r.u32()?.clamp(1, SCAN_COUNT_MAX);
            let pattern = if r.flag(code)? { Some(r.key()?) } else { None };
            let kind = match r.u8()? {
                0 => TypeFilter::Any,
                1 => TypeFilter::String,
                2 => TypeFilter::Other,
                _ => return Err(DecodeError::Op(code)),
            };
            ReadCmd::Scan {
                cursor,
                count,
                pattern,
                kind,
            }
        }
        op::KEYS => ReadCmd::Keys { pattern: r.key()? },
        op::RANDOMKEY => ReadCmd::RandomKey,
        other => {
            let fields = &mut ttl::Fields { buf: r.buf };
            return match ttl::decode_read(other, fields) {
                Some(decoded) => decoded.map(ReadCmd::Ttl),
                None => Err(DecodeError::Op(other)),
            };
        }
    };
    r.finish()?;
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn integers_follow_redis_string2ll() {
        for (s, want) in [
            (&b"0"[..], Some(0)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"01", None),
            (b"-0", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"", None),
            (b"-", None),
            (b"1.0", None),
            (b"000000000000000000001", None),
        ] {
            assert_eq!(parse_i64(s), want, "{:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn every_parsed_command_round_trips_through_its_encoding() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            args(&[b"SET", b"k", b"v"]),
            args(&[b"set", b"", b"\0\xff", b"xx", b"GET"]),
            args(&[b"setnx", b"k", b"v"]),
            args(&[b"DEL", b"a", b"b", b"a"]),
            args(&[b"mset", b"a", b"1", b"b", b"2"]),
            args(&[b"incr", b"n"]),
            args(&[b"decrby", b"n", b"-5"]),
            args(&[b"append", b"k", b"more"]),
            args(&[b"cas", b"k", b"old", b"new"]),
            args(&[b"get", b"k"]),
            args(&[b"exists", b"a", b"b"]),
            args(&[b"mget", b"a", b""]),
            args(&[b"strlen", b"k"]),
            args(&[b"range", b"a", b"", b"limit", b"7"]),
            args(&[b"dbsize"]),
            args(&[b"getdel", b"k"]),
            args(&[b"getset", b"k", b"v"]),
            args(&[b"msetnx", b"a", b"1", b"b", b"2"]),
            args(&[b"setrange", b"k", b"5", b"xy"]),
            args(&[b"incrbyfloat", b"k", b"-1.5e3"]),
            args(&[b"rename", b"a", b"b"]),
            args(&[b"renamenx", b"a", b"b"]),
            args(&[b"copy", b"a", b"b", b"db", b"0", b"replace"]),
            args(&[b"flushdb", b"async"]),
            args(&[b"session", b"open"]),
            args(&[b"touch", b"a", b"b"]),
            args(&[b"getrange", b"k", b"-3", b"-1"]),
            args(&[b"substr", b"k", b"0", b"2"]),
            args(&[b"type", b"k"]),
            args(&[b"scan", b"0"]),
            args(&[
                b"scan",
                b"18446744073709551615",
                b"match",
                b"k*",
                b"count",
                b"5",
                b"type",
                b"string",
            ]),
            args(&[b"keys", b"*"]),
            args(&[b"randomkey"]),
        ];
        for a in &cases {
            match parse(a) {
                Some(Request::Write(p)) => {
                    let cmd = decode_write(&p).expect("decodes");
                    assert_eq!(encode_write(&cmd), p, "{a:?}");
                    for cut in 0..p.len() {
                        assert!(decode_write(&p[..cut]).is_err(), "{a:?} cut at {cut}");
                    }
                    let mut longer = p.clone();
                    longer.push(0);
                    assert!(decode_write(&longer).is_err());
                }
                Some(Request::Read(p)) => {
                    let cmd = decode_read(&p).expect("decodes");
                    assert_eq!(encode_read(&cmd), p, "{a:?}");
                    for cut in 0..p.len() {
                        assert!(decode_read(&p[..cut]).is_err(), "{a:?} cut at {cut}");
                    }
                }
                other => panic!("{a:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_arity_and_bad_options_are_answered_like_redis() {
        let reply = |a: &[&[u8]]| match parse(&args(a)) {
            Some(Request::Reply(Value::Error(e))) => e,
            other => panic!("{a:?} gave {other:?}"),
        };
        assert_eq!(
            reply(&[b"GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            reply(&[b"MSET", b"a", b"1", b"b"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(
            reply(&[b"del"]),
            "ERR wrong number of arguments for 'del' command"
        );
        assert_eq!(
            reply(&[b"set", b"k", b"v", b"nx", b"xx"]),
            "ERR syntax error"
        );
        assert_eq!(reply(&[b"set", b"k", b"v", b"bogus"]), "ERR syntax error");
        assert_eq!(
            reply(&[b"incrby", b"k", b"1x"]),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(
            reply(&[b"decrby", b"k", b"-9223372036854775808"]),
            "ERR decrement would overflow"
        );
        assert_eq!(
            reply(&[b"range", b"a", b"b", b"limit", b"0"]),
            "ERR LIMIT must be between 1 and 100000"
        );
        assert_eq!(
            reply(&[b"range", b"a", b"b", b"lim", b"5"]),
            "ERR syntax error"
        );
        assert_eq!(reply(&[b"scan", b"-1"]), "ERR invalid cursor");
        assert_eq!(
            reply(&[b"scan", b"18446744073709551616"]),
            "ERR invalid cursor"
        );
        assert_eq!(reply(&[b"scan", b"0", b"count", b"0"]), "ERR syntax error");
        assert_eq!(reply(&[b"scan", b"0", b"count"]), "ERR syntax error");
        assert_eq!(
            reply(&[b"setrange", b"k", b"-1", b"x"]),
            "ERR offset is out of range"
        );
        assert_eq!(
            reply(&[b"incrbyfloat", b"k", b"1x"]),
            "ERR value is not a valid float"
        );
        assert_eq!(
            reply(&[b"copy", b"a", b"b", b"db", b"1"]),
            "ERR DB index is out of range"
        );
        assert_eq!(reply(&[b"flushall", b"now"]), "ERR syntax error");
        assert!(parse(&args(&[b"ping"])).is_none());
        assert!(parse(&[]).is_none());
    }

    #[test]
    fn oversized_keys_values_and_entries_are_refused_at_parse_time() {
        let big_key = vec![b'k'; KEY_SIZE_MAX + 1];
        let big_value = vec![b'v'; VALUE_SIZE_MAX + 1];
        let max_value = vec![b'v'; VALUE_SIZE_MAX];
        assert!(matches!(
            parse(&[b"set".to_vec(), big_key, b"v".to_vec()]),
            Some(Request::Reply(Value::Error(e))) if e.contains("key exceeds")
        ));
        assert!(matches!(
            parse(&[b"set".to_vec(), b"k".to_vec(), big_value]),
            Some(Request::Reply(Value::Error(e))) if e.contains("proto-max-bulk-len")
        ));
        assert!(matches!(
            parse(&[b"set".to_vec(), b"k".to_vec(), max_value.clone()]),
            Some(Request::Write(_))
        ));
        let mut mset = vec![b"mset".to_vec()];
        for i in 0..5u8 {
            mset.push(vec![i]);
            mset.push(max_value.clone());
        }
        assert!(matches!(
            parse(&mset),
            Some(Request::Reply(Value::Error(e))) if e.contains("maximum entry size")
        ));
    }

    #[test]
    fn hostile_payloads_are_errors_not_panics() {
        assert_eq!(decode_write(&[]), Err(DecodeError::Empty));
        assert_eq!(decode_write(&[9, 1]), Err(DecodeError::Version(9)));
        assert_eq!(decode_write(&[1, 0x7f]), Err(DecodeError::Op(0x7f)));
        // A count claiming 4 billion keys in a 10-byte payload.
        assert_eq!(
            decode_write(&[1, op::DEL, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
            Err(DecodeError::Truncated)
        );
        // A key length past the limit.
        assert!(matches!(
            decode_write(&[1, op::SETNX, 0x7f, 0xff, 0xff, 0xff]),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut p = crate::prng::Prng::new(5);
        for _ in 0..20_000 {
            let mut buf = vec![0u8; p.range(0, 40) as usize];
            p.fill(&mut buf);
            if buf.len() >= 2 {
                const OPS: [u8; 25] = [
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0x41, 0x42, 0x43, 0x44,
                    0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b,
                ];
                buf[0] = FORMAT_VERSION;
                buf[1] = OPS[p.range(0, OPS.len() as u64) as usize];
                // Small lengths and counts, so that decoding gets past the first field.
                if buf.len() >= 6 && p.chance(1, 2) {
                    buf[2..6].copy_from_slice(&(p.range(0, 8) as u32).to_be_bytes());
                }
            }
            let _ = decode_write(&buf);
            let _ = decode_read(&buf);
        }
    }
}
