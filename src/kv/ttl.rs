//! The TTL commands: parsing them with Redis 7's errors, and their part of the entry and
//! query encodings (`command.rs` holds the rest and dispatches here).
//!
//! Owns: `SET ... EX|PX|EXAT|PXAT|KEEPTTL`, `SETEX`, `PSETEX`, `EXPIRE`, `PEXPIRE`,
//! `EXPIREAT`, `PEXPIREAT`, `PERSIST`, `GETEX`, `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`,
//! and the leader's reclaim entry.
//! Must not: read a clock. A relative TTL is carried as such in the entry and becomes an
//! absolute time at apply, from the entry's stamp (see `envelope.rs`): every replica computes
//! the same expiry, and a leader change does not reset it.
//!
//! # Encoding (inside the command format, version 1; integers big-endian)
//!
//! ```text
//! writes
//! 0x10 SET+TTL   u8 flags (1 NX, 2 XX, 4 GET), u8 command (0 set, 1 setex, 2 psetex),
//!                ttl (kind 2, 3 or 4), key, value
//! 0x11 EXPIRE    u8 command (0 expire, 1 pexpire, 2 expireat, 3 pexpireat),
//!                u8 conditions (1 NX, 2 XX, 4 GT, 8 LT), i64 time in ms (relative for
//!                expire and pexpire), key
//! 0x12 PERSIST   key
//! 0x13 GETEX     ttl (kind 0, 1, 2 or 3), key
//! 0x14 RECLAIM   u32 count, then count times: key, u64 expiry (ms). Written by the leader
//!                only: deletes each key whose expiry is still exactly that one and has
//!                passed, so a concurrent SET ... EX or PERSIST wins.
//! reads
//! 0x4c TTL       u8 command (0 ttl, 1 pttl, 2 expiretime, 3 pexpiretime), key
//! ```
//! where key = u32 length, then the bytes (<= KEY_SIZE_MAX), and ttl = u8 kind, i64 ms:
//! kind 0 none, 1 PERSIST, 2 ms after the entry's stamp, 3 ms since the epoch, 4 KEEPTTL;
//! ms is 0 for kinds 0, 1 and 4 and > 0 for kinds 2 and 3.

use crate::client::value::Value;
use crate::kv::command::{
    arity_error, check_key, check_value, not_integer, parse_i64, syntax_error, DecodeError,
    WriteCmd, SET_GET, SET_NX, SET_XX,
};
use crate::limits::{KEY_SIZE_MAX, VALUE_SIZE_MAX};
use byteorder::{BigEndian, ByteOrder};

pub mod op {
    pub const SET_TTL: u8 = 0x10;
    pub const EXPIRE: u8 = 0x11;
    pub const PERSIST: u8 = 0x12;
    pub const GETEX: u8 = 0x13;
    pub const RECLAIM: u8 = 0x14;
    pub const TTL: u8 = 0x4c;
}

/// Which SET-like command wrote an entry (it names the command in an expire-time error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetName {
    Set,
    SetEx,
    PSetEx,
}

impl SetName {
    pub fn name(self) -> &'static str {
        match self {
            SetName::Set => "set",
            SetName::SetEx => "setex",
            SetName::PSetEx => "psetex",
        }
    }
}

/// A TTL given with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// Leave the key's TTL as it is (`KEEPTTL`).
    Keep,
    /// Drop the key's TTL (`GETEX ... PERSIST`).
    Persist,
    /// Expire this many ms (> 0) after the entry's stamp.
    In(i64),
    /// Expire at this time, ms since the epoch (> 0).
    At(i64),
}

/// The four EXPIRE commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireName {
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
}

impl ExpireName {
    pub fn name(self) -> &'static str {
        match self {
            ExpireName::Expire => "expire",
            ExpireName::PExpire => "pexpire",
            ExpireName::ExpireAt => "expireat",
            ExpireName::PExpireAt => "pexpireat",
        }
    }
    /// Whether the time is relative to the entry's stamp.
    pub fn relative(self) -> bool {
        matches!(self, ExpireName::Expire | ExpireName::PExpire)
    }
    fn seconds(self) -> bool {
        matches!(self, ExpireName::Expire | ExpireName::ExpireAt)
    }
}

/// Conditions of EXPIRE (bits).
pub const EXPIRE_NX: u8 = 1;
pub const EXPIRE_XX: u8 = 2;
pub const EXPIRE_GT: u8 = 4;
pub const EXPIRE_LT: u8 = 8;

/// TTL, PTTL, EXPIRETIME, PEXPIRETIME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlName {
    Ttl,
    PTtl,
    ExpireTime,
    PExpireTime,
}

impl TtlName {
    /// Whether the answer is in ms (else seconds, rounded to the nearest).
    pub fn ms(self) -> bool {
        matches!(self, TtlName::PTtl | TtlName::PExpireTime)
    }
    /// Whether the answer is an absolute time (else the time left).
    pub fn absolute(self) -> bool {
        matches!(self, TtlName::ExpireTime | TtlName::PExpireTime)
    }
}

/// A decoded TTL write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TtlWrite<'a> {
    Set {
        flags: u8,
        name: SetName,
        ttl: Ttl,
        key: &'a [u8],
        value: &'a [u8],
    },
    Expire {
        name: ExpireName,
        conditions: u8,
        when_ms: i64,
        key: &'a [u8],
    },
    Persist {
        key: &'a [u8],
    },
    /// `ttl` is never `Keep`.
    GetEx {
        ttl: Option<Ttl>,
        key: &'a [u8],
    },
    /// Delete each key whose expiry is still the given one (and has passed).
    Reclaim {
        keys: Vec<(&'a [u8], u64)>,
    },
}

impl TtlWrite<'_> {
    /// The key the write reads or changes (none for a reclaim, which checks expiries itself).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            TtlWrite::Set { key, .. }
            | TtlWrite::Expire { key, .. }
            | TtlWrite::Persist { key }
            | TtlWrite::GetEx { key, .. } => Some(key),
            TtlWrite::Reclaim { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing.

/// Redis's reply for an expire time out of range.
pub fn invalid_expire_time(name: &str) -> Value {
    Value::error(format!("ERR invalid expire time in '{name}' command"))
}

/// The expire options of SET and GETEX, as Redis's `parseExtendedStringArgumentsOrReply`
/// takes them: which one (a later one of the same kind wins) and its argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExpireOpt {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// Redis's `getExpireMillisecondsOrReply` up to (not including) adding the stamp: the
/// argument must be an integer > 0, and in seconds at most `i64::MAX / 1000`.
fn expire_ms(opt: ExpireOpt, arg: &[u8], name: &str) -> Result<Ttl, Value> {
    let n = parse_i64(arg).ok_or_else(not_integer)?;
    let seconds = matches!(opt, ExpireOpt::Ex | ExpireOpt::ExAt);
    if n <= 0 || seconds && n > i64::MAX / 1000 {
        return Err(invalid_expire_time(name));
    }
    let ms = if seconds { n * 1000 } else { n };
    Ok(match opt {
        ExpireOpt::Ex | ExpireOpt::Px => Ttl::In(ms),
        ExpireOpt::ExAt | ExpireOpt::PxAt => Ttl::At(ms),
    })
}

fn expire_opt(o: &[u8]) -> Option<ExpireOpt> {
    let o = o.to_ascii_lowercase();
    Some(match o.as_slice() {
        b"ex" => ExpireOpt::Ex,
        b"px" => ExpireOpt::Px,
        b"exat" => ExpireOpt::ExAt,
        b"pxat" => ExpireOpt::PxAt,
        _ => return None,
    })
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]`, in Redis 7's order:
/// option syntax first, then the expire time. A SET without a TTL option is the plain SET
/// (which drops a TTL); with one it is `TtlWrite::Set`.
pub fn parse_set(args: &[Vec<u8>]) -> Result<WriteCmd<'_>, Value> {
    let (mut flags, mut keep) = (0u8, false);
    let mut expire: Option<(ExpireOpt, &[u8])> = None;
    let mut j = 3;
    while j < args.len() {
        let o = args[j].to_ascii_lowercase();
        let next = args.get(j + 1);
        match (o.as_slice(), expire_opt(&o)) {
            (b"nx", _) if flags & SET_XX == 0 => flags |= SET_NX,
            (b"xx", _) if flags & SET_NX == 0 => flags |= SET_XX,
            (b"get", _) => flags |= SET_GET,
            (b"keepttl", _) if expire.is_none() => keep = true,
            (_, Some(opt)) if !keep && expire.is_none_or(|(o, _)| o == opt) && next.is_some() => {
                expire = Some((opt, next.map_or(&[][..], |n| &n[..])));
                j += 1;
            }
            _ => return Err(syntax_error()),
        }
        j += 1;
    }
    let (key, value) = (check_key(&args[1])?, check_value(&args[2])?);
    let ttl = match expire {
        Some((opt, arg)) => expire_ms(opt, arg, "set")?,
        None if keep => Ttl::Keep,
        None => return Ok(WriteCmd::Set { flags, key, value }),
    };
    Ok(WriteCmd::Ttl(TtlWrite::Set {
        flags,
        name: SetName::Set,
        ttl,
        key,
        value,
    }))
}

/// A TTL write command other than SET (`name` is lower case); `None` if not one of them.
pub fn parse_write<'a>(name: &str, args: &'a [Vec<u8>]) -> Option<Result<WriteCmd<'a>, Value>> {
    let n = args.len();
    let (arity_ok, parsed) = match name {
        "setex" | "psetex" => (n == 4, parse_setex as ParseFn),
        "expire" | "pexpire" | "expireat" | "pexpireat" => (n >= 3, parse_expire as ParseFn),
        "persist" => (n == 2, parse_persist as ParseFn),
        "getex" => (n >= 2, parse_getex as ParseFn),
        _ => return None,
    };
    if !arity_ok {
        return Some(Err(arity_error(name)));
    }
    Some(parsed(name, args).map(WriteCmd::Ttl))
}

type ParseFn = for<'a> fn(&str, &'a [Vec<u8>]) -> Result<TtlWrite<'a>, Value>;

fn parse_setex<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<TtlWrite<'a>, Value> {
    let (set_name, opt) = if name == "setex" {
        (SetName::SetEx, ExpireOpt::Ex)
    } else {
        (SetName::PSetEx, ExpireOpt::Px)
    };
    let ttl = expire_ms(opt, &args[2], name)?;
    Ok(TtlWrite::Set {
        flags: 0,
        name: set_name,
        ttl,
        key: check_key(&args[1])?,
        value: check_value(&args[3])?,
    })
}

/// `EXPIRE key time [NX|XX|GT|LT]...`: the options first (Redis 7's
/// `parseExtendedExpireArgumentsOrReply`), then the time.
fn parse_expire<'a>(name: &str, args: &'a [Vec<u8>]) -> Result<TtlWrite<'a>, Value> {
    let expire_name = match name {
        "expire" => ExpireName::Expire,
        "pexpire" => ExpireName::PExpire,
        "expireat" => ExpireName::ExpireAt,
        _ => ExpireName::PExpireAt,
    };
    let mut conditions = 0u8;
    for opt in &args[3..] {
        conditions |= match opt.to_ascii_lowercase().as_slice() {
            b"nx" => EXPIRE_NX,
            b"xx" => EXPIRE_XX,
            b"gt" => EXPIRE_GT,
            b"lt" => EXPIRE_LT,
            _ => {
                return Err(Value::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )))
            }
        };
    }
    if conditions & EXPIRE_NX != 0 && conditions & (EXPIRE_XX | EXPIRE_GT | EXPIRE_LT) != 0 {
        return Err(Value::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if conditions & EXPIRE_GT != 0 && conditions & EXPIRE_LT != 0 {
        return Err(Value::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let mut when = parse_i64(&args[2]).ok_or_else(not_integer)?;
    if expire_name.seconds() {
        when = when
            .checked_mul(1000)
            .ok_or_else(|| invalid_expire_time(name))?;
    }
    Ok(TtlWrite::Expire {
        name: expire_name,
        conditions,
        when_ms: when,
        key: check_key(&args[1])?,
    })
}

fn parse_persist<'a>(_: &str, args: &'a [Vec<u8>]) -> Result<TtlWrite<'a>, Value> {
    Ok(TtlWrite::Persist {
        key: check_key(&args[1])?,
    })
}

/// `GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST]`.
fn parse_getex<'a>(_: &str, args: &'a [Vec<u8>]) -> Result<TtlWrite<'a>, Value> {
    let mut persist = false;
    let mut expire: Option<(ExpireOpt, &[u8])> = None;
    let mut j = 2;
    while j < args.len() {
        let o = args[j].to_ascii_lowercase();
        let next = args.get(j + 1);
        match (o.as_slice(), expire_opt(&o)) {
            (b"persist", _) if expire.is_none() => persist = true,
            (_, Some(opt))
                if !persist && expire.is_none_or(|(o, _)| o == opt) && next.is_some() =>
            {
                expire = Some((opt, next.map_or(&[][..], |n| &n[..])));
                j += 1;
            }
            _ => return Err(syntax_error()),
        }
        j += 1;
    }
    let ttl = match expire {
        Some((opt, arg)) => Some(expire_ms(opt, arg, "getex")?),
        None if persist => Some(Ttl::Persist),
        None => None,
    };
    Ok(TtlWrite::GetEx {
        ttl,
        key: check_key(&args[1])?,
    })
}

/// `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME` (lower-case `name`); `None` if not one of them.
pub fn parse_read<'a>(name: &str, args: &'a [Vec<u8>]) -> Option<Result<TtlRead<'a>, Value>> {
    let which = match name {
        "ttl" => TtlName::Ttl,
        "pttl" => TtlName::PTtl,
        "expiretime" => TtlName::ExpireTime,
        "pexpiretime" => TtlName::PExpireTime,
        _ => return None,
    };
    if args.len() != 2 {
        return Some(Err(arity_error(name)));
    }
    Some(check_key(&args[1]).map(|key| TtlRead { which, key }))
}

/// A decoded TTL read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlRead<'a> {
    pub which: TtlName,
    pub key: &'a [u8],
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding.

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn ttl_code(ttl: Option<Ttl>) -> (u8, i64) {
    match ttl {
        None => (0, 0),
        Some(Ttl::Persist) => (1, 0),
        Some(Ttl::In(ms)) => (2, ms),
        Some(Ttl::At(ms)) => (3, ms),
        Some(Ttl::Keep) => (4, 0),
    }
}

/// Append the encoding of `cmd` (op code onwards) to `out`.
pub fn encode_write(cmd: &TtlWrite<'_>, out: &mut Vec<u8>) {
    match cmd {
        TtlWrite::Set {
            flags,
            name,
            ttl,
            key,
            value,
        } => {
            let (kind, ms) = ttl_code(Some(*ttl));
            out.extend_from_slice(&[op::SET_TTL, *flags, *name as u8, kind]);
            out.extend_from_slice(&ms.to_be_bytes());
            put_bytes(out, key);
            put_bytes(out, value);
        }
        TtlWrite::Expire {
            name,
            conditions,
            when_ms,
            key,
        } => {
            out.extend_from_slice(&[op::EXPIRE, *name as u8, *conditions]);
            out.extend_from_slice(&when_ms.to_be_bytes());
            put_bytes(out, key);
        }
        TtlWrite::Persist { key } => {
            out.push(op::PERSIST);
            put_bytes(out, key);
        }
        TtlWrite::GetEx { ttl, key } => {
            let (kind, ms) = ttl_code(*ttl);
            out.extend_from_slice(&[op::GETEX, kind]);
            out.extend_from_slice(&ms.to_be_bytes());
            put_bytes(out, key);
        }
        TtlWrite::Reclaim { keys } => {
            out.push(op::RECLAIM);
            out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            for (k, at) in keys {
                put_bytes(out, k);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
    }
}

/// Append the encoding of a TTL read (op code onwards) to `out`.
pub fn encode_read(cmd: &TtlRead<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&[op::TTL, cmd.which as u8]);
    put_bytes(out, cmd.key);
}

/// A cursor over the fields after the op code, checking each length before taking it.
pub struct Fields<'a> {
    pub buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(BigEndian::read_u64(self.take(8)?))
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = BigEndian::read_u32(self.take(4)?) as usize;
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        self.take(len)
    }
    fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        self.bytes(KEY_SIZE_MAX)
    }
    /// A TTL of kind 2 or 3 must be > 0 (the parser never writes another).
    fn ttl(&mut self, code: u8) -> Result<Option<Ttl>, DecodeError> {
        let kind = self.u8()?;
        let ms = self.u64()? as i64;
        match (kind, ms) {
            (0, 0) => Ok(None),
            (1, 0) => Ok(Some(Ttl::Persist)),
            (2, ms) if ms > 0 => Ok(Some(Ttl::In(ms))),
            (3, ms) if ms > 0 => Ok(Some(Ttl::At(ms))),
            (4, 0) => Ok(Some(Ttl::Keep)),
            _ => Err(DecodeError::Op(code)),
        }
    }
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing { extra }),
        }
    }
}

/// Decode a TTL write's fields (after the op code `code`); `None` if `code` is not a TTL op.
pub fn decode_write<'a>(code: u8, r: &mut Fields<'a>) -> Option<Result<TtlWrite<'a>, DecodeError>> {
    let cmd = match code {
        op::SET_TTL => decode_set(code, r),
        op::EXPIRE => decode_expire(code, r),
        op::PERSIST => r.key().map(|key| TtlWrite::Persist { key }),
        op::GETEX => decode_getex(code, r),
        op::RECLAIM => decode_reclaim(r),
        _ => return None,
    };
    Some(cmd.and_then(|c| r.finish().map(|()| c)))
}

fn decode_set<'a>(code: u8, r: &mut Fields<'a>) -> Result<TtlWrite<'a>, DecodeError> {
    let flags = r.u8()?;
    if flags & !(SET_NX | SET_XX | SET_GET) != 0 || flags & (SET_NX | SET_XX) == SET_NX | SET_XX {
        return Err(DecodeError::Op(code));
    }
    let name = match r.u8()? {
        0 => SetName::Set,
        1 => SetName::SetEx,
        2 => SetName::PSetEx,
        _ => return Err(DecodeError::Op(code)),
    };
    let ttl = match r.ttl(code)? {
        Some(t @ (Ttl::Keep | Ttl::In(_) | Ttl::At(_))) => t,
        _ => return Err(DecodeError::Op(code)),
    };
    Ok(TtlWrite::Set {
        flags,
        name,
        ttl,
        key: r.key()?,
        value: r.bytes(VALUE_SIZE_MAX)?,
    })
}

fn decode_expire<'a>(code: u8, r: &mut Fields<'a>) -> Result<TtlWrite<'a>, DecodeError> {
    let name = match r.u8()? {
        0 => ExpireName::Expire,
        1 => ExpireName::PExpire,
        2 => ExpireName::ExpireAt,
        3 => ExpireName::PExpireAt,
        _ => return Err(DecodeError::Op(code)),
    };
    let conditions = r.u8()?;
    let nx_with_other =
        conditions & EXPIRE_NX != 0 && conditions & (EXPIRE_XX | EXPIRE_GT | EXPIRE_LT) != 0;
    let gt_and_lt = conditions & (EXPIRE_GT | EXPIRE_LT) == EXPIRE_GT | EXPIRE_LT;
    if conditions > 15 || nx_with_other || gt_and_lt {
        return Err(DecodeError::Op(code));
    }
    Ok(TtlWrite::Expire {
        name,
        conditions,
        when_ms: r.u64()? as i64,
        key: r.key()?,
    })
}

fn decode_getex<'a>(code: u8, r: &mut Fields<'a>) -> Result<TtlWrite<'a>, DecodeError> {
    let ttl = r.ttl(code)?;
    if ttl == Some(Ttl::Keep) {
        return Err(DecodeError::Op(code));
    }
    Ok(TtlWrite::GetEx { ttl, key: r.key()? })
}

fn decode_reclaim<'a>(r: &mut Fields<'a>) -> Result<TtlWrite<'a>, DecodeError> {
    let n = BigEndian::read_u32(r.take(4)?) as usize;
    // Each item is at least a 4-byte length and an 8-byte time.
    if n.saturating_mul(12) > r.buf.len() {
        return Err(DecodeError::Truncated);
    }
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push((r.key()?, r.u64()?));
    }
    Ok(TtlWrite::Reclaim { keys })
}

/// Decode a TTL read's fields; `None` if `code` is not a TTL op.
pub fn decode_read<'a>(code: u8, r: &mut Fields<'a>) -> Option<Result<TtlRead<'a>, DecodeError>> {
    if code != op::TTL {
        return None;
    }
    let read = (|| {
        let which = match r.u8()? {
            0 => TtlName::Ttl,
            1 => TtlName::PTtl,
            2 => TtlName::ExpireTime,
            3 => TtlName::PExpireTime,
            _ => return Err(DecodeError::Op(code)),
        };
        let key = r.key()?;
        r.finish()?;
        Ok(TtlRead { which, key })
    })();
    Some(read)
}

#[cfg(test)]
mod tests {
    use crate::kv::command::{decode_read, decode_write};
    use crate::kv::envelope::{wrap, Envelope};
    use crate::kv::{KvStore, StateMachine};
    use crate::raft::LogIndex;

    fn payload(args: &[&str]) -> Vec<u8> {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        match crate::kv::command::parse(&args) {
            Some(crate::kv::Request::Write(p)) => p,
            x => panic!("{x:?}"),
        }
    }

    #[test]
    fn hostile_ttl_payloads_are_errors_or_harmless_writes_never_panics() {
        let mut valid = vec![
            payload(&["SET", "k", "v", "PX", "100", "NX", "GET"]),
            payload(&["SET", "k", "v", "KEEPTTL"]),
            payload(&["SETEX", "k", "5", "v"]),
            payload(&["PEXPIRE", "k", "-5", "XX", "GT"]),
            payload(&["EXPIREAT", "k", "5", "LT"]),
            payload(&["PERSIST", "k"]),
            payload(&["GETEX", "k", "PXAT", "7"]),
            payload(&["GETEX", "k", "PERSIST"]),
        ];
        let mut seed = KvStore::new(1);
        let env = |stamp_ms| Envelope {
            stamp_ms,
            session: None,
        };
        seed.apply(LogIndex(1), &wrap(&env(10), &valid[0]));
        valid.push(seed.expired_batch(1_000, 10).expect("k is due"));
        let mut p = crate::prng::Prng::new(14);
        let kv = &mut KvStore::new(1);
        let (mut index, mut decoded) = (0, 0);
        for i in 0..30_000u64 {
            let mut buf = valid[p.range(0, valid.len() as u64) as usize].clone();
            for _ in 0..p.range(1, 4) {
                let at = p.range(1, buf.len() as u64) as usize;
                buf[at] = if p.chance(1, 2) {
                    p.range(0, 5) as u8
                } else {
                    p.next_u64() as u8
                };
            }
            if p.chance(1, 4) {
                buf.truncate(p.range(2, buf.len() as u64 + 1) as usize);
            }
            decoded += usize::from(decode_write(&buf).is_ok());
            let mut q = buf.clone();
            q[1] = 0x4c;
            let _ = decode_read(&q);
            let _ = kv.query_at(&q, p.next_u64());
            index += 1;
            let _ = kv.apply(LogIndex(index), &wrap(&env(1_000 + i), &buf));
            if index % 1000 == 0 {
                kv.check_invariants();
            }
        }
        kv.check_invariants();
        assert!(
            decoded > 3000,
            "only {decoded} of the payloads decoded: not exercising apply"
        );
    }
}
