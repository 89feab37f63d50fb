//! RESP request parsing, reply parsing (RESP2 and RESP3) and command encoding.
//!
//! Clients send commands the same way in both protocols (arrays of bulk strings, or inline
//! lines), so one request parser serves both; replies are parsed with every RESP3 type.
//!
//! Owns the byte-level reading of what arrives on a client connection (`parse_command`) and of
//! what a server replies (`parse_value`, used by `kvctl` and tests). It must not block, keep
//! state between calls, or allocate for bytes it has not yet seen complete.
//!
//! Invariants:
//! 1. Check, then parse: a first pass walks the headers of the whole request without allocating;
//!    only when the request is complete and within every limit does a second pass copy it out.
//!    So a client that sends `*65536\r\n` and stops costs us no memory.
//! 2. `Ok(None)` means "incomplete": every strict prefix of a valid request returns it, and no
//!    prefix of a valid request is ever an error.
//! 3. A length or count is compared with its limit as soon as its digits exceed it, before the
//!    line's CRLF arrives, so an oversize header is refused at once instead of awaited.
//! 4. No recursion: nested replies are walked with an explicit stack bounded by
//!    `REPLY_DEPTH_MAX`. No input can make these functions panic.

use std::fmt;

use crate::client::value::{Double, Value};
use crate::limits::{
    ARG_BUFS_KEPT_MAX, ARG_BUF_KEPT_SIZE_MAX, CLIENT_ARGS_MAX, CLIENT_BULK_SIZE_MAX,
    CLIENT_INLINE_SIZE_MAX, CLIENT_REQUEST_SIZE_MAX,
};

/// Deepest nesting of arrays accepted in a reply (our replies nest at most two deep).
pub const REPLY_DEPTH_MAX: usize = 32;

/// Largest bulk string accepted in a reply, in bytes: a value, or an `INFO` text.
pub const REPLY_BULK_SIZE_MAX: usize = 64 * 1024 * 1024;

/// Most elements in one reply array (a `RANGE` answer holds two per key).
pub const REPLY_ARRAY_LEN_MAX: usize = 16 * 1024 * 1024;

/// Longest simple-string, error or integer line in a reply, in bytes.
pub const REPLY_LINE_SIZE_MAX: usize = 64 * 1024;

/// What a parse gives: `Ok(None)` if the buffer is incomplete, else the parsed thing and the
/// number of bytes it took from the front of the buffer.
pub type Parsed<T> = Result<Option<(T, usize)>, ParseError>;

/// Why bytes could not be parsed. Either way the connection cannot continue: Redis answers
/// `-ERR <Display>` and closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed input, with Redis's wording ("Protocol error: invalid multibulk length").
    Protocol(String),
    /// A length, count or line beyond its limit, seen before allocating for it.
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl ParseError {
    fn protocol(msg: &str) -> ParseError {
        ParseError::Protocol(format!("Protocol error: {msg}"))
    }

    /// The error reply a server sends before closing the connection.
    pub fn reply(&self) -> Value {
        Value::error(format!("ERR {self}"))
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Protocol(msg) => f.write_str(msg),
            ParseError::TooLarge { what, len, max } => {
                write!(f, "Protocol error: {what} {len} exceeds the limit {max}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

/// The outcome of reading one `<int>\r\n` line.
enum Int {
    /// The value and the position just after its CRLF.
    Done(i64, usize),
    Incomplete,
    Invalid,
    /// A non-negative value already larger than the caller's maximum (saturated at usize::MAX).
    TooLarge(usize),
}

/// Read a decimal integer ending in CRLF at `buf[start..]`, strictly as Redis's `string2ll`
/// does (optional `-`, no leading zeros, no `+`, no spaces). A non-negative value above `max`
/// is reported as soon as its digits exceed it (invariant 3).
fn read_int(buf: &[u8], start: usize, max: usize) -> Int {
    let max = max.min(i64::MAX as usize);
    let mut pos = start;
    let negative = buf.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let digits_start = pos;
    let mut magnitude: u64 = 0;
    let mut overflow = false;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Int::Incomplete;
        };
        if !b.is_ascii_digit() {
            break;
        }
        if pos > digits_start && buf[digits_start] == b'0' {
            return Int::Invalid; // leading zero
        }
        match magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(u64::from(b - b'0')))
        {
            Some(m) => magnitude = m,
            None => overflow = true,
        }
        if !negative && (overflow || magnitude > max as u64) {
            return Int::TooLarge(usize::try_from(magnitude).unwrap_or(usize::MAX));
        }
        if negative && (overflow || magnitude > 1 << 63) {
            return Int::Invalid;
        }
        pos += 1;
    }
    if pos == digits_start || (negative && buf[digits_start] == b'0') {
        return Int::Invalid;
    }
    match (buf.get(pos), buf.get(pos + 1)) {
        (Some(b'\r'), Some(b'\n')) => {}
        (Some(b'\r'), None) => return Int::Incomplete,
        _ => return Int::Invalid,
    }
    let value = if negative {
        // magnitude <= 2^63 was checked above, so this cannot overflow.
        0i64.wrapping_sub_unsigned(magnitude)
    } else {
        magnitude as i64 // magnitude <= max <= i64::MAX
    };
    Int::Done(value, pos + 2)
}

/// Parse one client command from the front of `buf`: a RESP array of bulk strings
/// (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline line (`GET k\r\n`, split as Redis's
/// `sdssplitargs` does, quotes included).
///
/// `Ok(None)`: incomplete, read more and call again with the longer buffer.
/// `Ok(Some((args, consumed)))`: drop `consumed` bytes. **`args` may be empty** (`*0\r\n`,
/// `*-1\r\n`, a blank inline line), which Redis skips: execute nothing and parse on.
/// `Err`: answer `err.reply()` and close the connection.
pub fn parse_command(buf: &[u8]) -> Parsed<Vec<Vec<u8>>> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => {
            let Some(end) = walk_multibulk(buf, |_| {})? else {
                return Ok(None);
            };
            let mut args = Vec::new();
            let consumed = walk_multibulk(buf, |arg| args.push(arg.to_vec()))?;
            debug_assert_eq!(consumed, Some(end), "second pass disagrees with the first");
            Ok(consumed.map(|n| (args, n)))
        }
        Some(_) => parse_inline(buf),
    }
}

/// A command's arguments, parsed into buffers that are kept from one command to the next, so
/// the common request (a few short arguments) costs no allocation once the first ones grew
/// (issue 16: four per `SET` before). `args()` is what the last parse found.
///
/// Invariant: after `trim`, at most `ARG_BUFS_KEPT_MAX` buffers are kept, none with more
/// than `ARG_BUF_KEPT_SIZE_MAX` bytes of capacity (an `MSET` of thousands of keys, or one
/// large value, does not stay resident).
#[derive(Debug, Default)]
pub struct ArgBufs {
    bufs: Vec<Vec<u8>>,
    /// `bufs[..len]` are the arguments; the others are spare.
    len: usize,
}

impl ArgBufs {
    pub fn new() -> ArgBufs {
        ArgBufs::default()
    }

    /// The arguments of the last parse (or pushes since `clear`).
    pub fn args(&self) -> &[Vec<u8>] {
        &self.bufs[..self.len]
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Append one argument, reusing a spare buffer if there is one.
    pub fn push(&mut self, arg: &[u8]) {
        match self.bufs.get_mut(self.len) {
            Some(b) => {
                b.clear();
                b.extend_from_slice(arg);
            }
            None => self.bufs.push(arg.to_vec()),
        }
        self.len += 1;
    }

    /// The capacity of every buffer kept, in bytes.
    pub fn kept_bytes(&self) -> usize {
        self.bufs.iter().map(|b| b.capacity()).sum()
    }

    /// Give back what is beyond the limits (see the invariant); `args()` is then empty.
    pub fn trim(&mut self) {
        self.bufs.truncate(ARG_BUFS_KEPT_MAX);
        for b in &mut self.bufs[..self.len.min(ARG_BUFS_KEPT_MAX)] {
            if b.capacity() > ARG_BUF_KEPT_SIZE_MAX {
                *b = Vec::new();
            }
        }
        self.len = 0;
    }
}

/// `parse_command`, with the arguments put in `out` (cleared first) instead of new `Vec`s;
/// `Ok(Some(consumed))` when a whole command was there (`out.args()` may be empty, as
/// `parse_command`'s may). Same checks, in the same order: the first pass walks the
/// headers without copying (invariant 1).
pub fn parse_command_into(buf: &[u8], out: &mut ArgBufs) -> Result<Option<usize>, ParseError> {
    out.clear();
    match buf.first() {
        None => Ok(None),
        Some(b'*') => {
            let Some(end) = walk_multibulk(buf, |_| {})? else {
                return Ok(None);
            };
            let consumed = walk_multibulk(buf, |arg| out.push(arg))?;
            debug_assert_eq!(consumed, Some(end), "second pass disagrees with the first");
            Ok(consumed)
        }
        Some(_) => Ok(parse_inline(buf)?.map(|(args, n)| {
            for a in &args {
                out.push(a);
            }
            n
        })),
    }
}

/// Walk one `*N` request, handing each bulk string to `on_arg` (pass 1 gives a no-op).
/// Returns the position after the request.
fn walk_multibulk(buf: &[u8], mut on_arg: impl FnMut(&[u8])) -> Result<Option<usize>, ParseError> {
    let (count, mut pos) = match read_int(buf, 1, CLIENT_ARGS_MAX) {
        Int::Done(n, pos) => (n, pos),
        Int::Incomplete => return Ok(None),
        Int::Invalid => return Err(ParseError::protocol("invalid multibulk length")),
        Int::TooLarge(len) => {
            return Err(ParseError::TooLarge {
                what: "multibulk length",
                len,
                max: CLIENT_ARGS_MAX,
            })
        }
    };
    let mut request_size = 0usize;
    // count <= 0 is an empty command, skipped (as Redis does); the loop does not run.
    for _ in 0..count.max(0) {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ParseError::Protocol(format!(
                    "Protocol error: expected '$', got '{}'",
                    char::from(other)
                )))
            }
        }
        let (len, data) = match read_int(buf, pos + 1, CLIENT_BULK_SIZE_MAX) {
            Int::Done(n, _) if n < 0 => return Err(ParseError::protocol("invalid bulk length")),
            Int::Done(n, data) => (n as usize, data),
            Int::Incomplete => return Ok(None),
            Int::Invalid => return Err(ParseError::protocol("invalid bulk length")),
            Int::TooLarge(len) => {
                return Err(ParseError::TooLarge {
                    what: "bulk length",
                    len,
                    max: CLIENT_BULK_SIZE_MAX,
                })
            }
        };
        request_size += len;
        if request_size > CLIENT_REQUEST_SIZE_MAX {
            return Err(ParseError::TooLarge {
                what: "request size",
                len: request_size,
                max: CLIENT_REQUEST_SIZE_MAX,
            });
        }
        let data_end = data + len;
        if buf.len() < data_end + 2 {
            return Ok(None);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err(ParseError::protocol("expected CRLF after bulk string"));
        }
        on_arg(&buf[data..data_end]);
        pos = data_end + 2;
    }
    Ok(Some(pos))
}

/// An inline command: one line, ended by `\n` (a `\r` before it is dropped).
fn parse_inline(buf: &[u8]) -> Parsed<Vec<Vec<u8>>> {
    let window = &buf[..buf.len().min(CLIENT_INLINE_SIZE_MAX + 1)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() > CLIENT_INLINE_SIZE_MAX {
            return Err(ParseError::TooLarge {
                what: "inline request size",
                len: buf.len(),
                max: CLIENT_INLINE_SIZE_MAX,
            });
        }
        return Ok(None);
    };
    let mut line = &buf[..newline];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args =
        split_args(line).ok_or_else(|| ParseError::protocol("unbalanced quotes in request"))?;
    // A line of at most CLIENT_INLINE_SIZE_MAX bytes holds at most half as many words.
    debug_assert!(args.len() <= CLIENT_ARGS_MAX, "{} inline args", args.len());
    Ok(Some((args, newline + 1)))
}

/// Split a line into words as Redis's `sdssplitargs` does: whitespace separates words;
/// `"..."` may hold `\n \r \t \b \a \\ \" \xHH` escapes; `'...'` only `\'`; a closing quote must
/// be followed by whitespace or the end. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while pos < line.len() && line[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos == line.len() {
            return Some(args);
        }
        let (word, next) = split_word(line, pos)?;
        args.push(word);
        pos = next;
    }
}

/// One word of `split_args` starting at `line[pos]` (not whitespace); returns it and the
/// position after it.
fn split_word(line: &[u8], mut pos: usize) -> Option<(Vec<u8>, usize)> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Double,
        Single,
    }
    let mut quote = Quote::None;
    let mut word = Vec::new();
    loop {
        let b = line.get(pos).copied();
        match quote {
            Quote::None => match b {
                None => return Some((word, pos)),
                Some(c) if c.is_ascii_whitespace() => return Some((word, pos)),
                Some(b'"') => quote = Quote::Double,
                Some(b'\'') => quote = Quote::Single,
                Some(c) => word.push(c),
            },
            Quote::Double => match b {
                None => return None,
                Some(b'\\')
                    if pos + 3 < line.len()
                        && line[pos + 1] == b'x'
                        && hex_pair(line, pos + 2).is_some() =>
                {
                    word.extend(hex_pair(line, pos + 2));
                    pos += 3;
                }
                Some(b'\\') if pos + 1 < line.len() => {
                    pos += 1;
                    word.push(match line[pos] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        c => c,
                    });
                }
                Some(b'"') => {
                    let after = line.get(pos + 1);
                    if after.is_some_and(|c| !c.is_ascii_whitespace()) {
                        return None;
                    }
                    return Some((word, pos + 1));
                }
                Some(c) => word.push(c),
            },
            Quote::Single => match b {
                None => return None,
                Some(b'\\') if line.get(pos + 1) == Some(&b'\'') => {
                    pos += 1;
                    word.push(b'\'');
                }
                Some(b'\'') => {
                    let after = line.get(pos + 1);
                    if after.is_some_and(|c| !c.is_ascii_whitespace()) {
                        return None;
                    }
                    return Some((word, pos + 1));
                }
                Some(c) => word.push(c),
            },
        }
        pos += 1;
    }
}

/// The byte written as two hex digits at `line[at..at + 2]`.
fn hex_pair(line: &[u8], at: usize) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    Some(digit(*line.get(at)?)? * 16 + digit(*line.get(at + 1)?)?)
}

/// Append `args` as a RESP array of bulk strings: what a client sends.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Aggregate reply types: what an open aggregate becomes once its elements are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agg {
    /// `*`, and a RESP3 push `>` (read as an array).
    Array,
    /// `%`: its element count is twice its pair count.
    Map,
    /// `~`.
    Set,
}

/// One header-level piece of a reply, borrowed from the buffer.
enum Item<'a> {
    Simple(&'a [u8]),
    /// `-` line or `!` blob error.
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    /// `$-1`, and the RESP3 null `_`.
    Nil,
    NilArray,
    /// An aggregate header with this many elements (> 0) to follow.
    Open(Agg, usize),
    Empty(Agg),
    Double(f64),
    Boolean(bool),
    /// A verbatim string's `fmt:text` payload (at least 4 bytes, checked).
    Verbatim(&'a [u8]),
    BigNumber(&'a [u8]),
}

/// Parse one reply (any RESP2 or RESP3 value) from the front of `buf`: `Ok(None)` if
/// incomplete, else the value and the bytes it took.
pub fn parse_value(buf: &[u8]) -> Parsed<Value> {
    let Some(end) = walk_value(buf, |_| {})? else {
        return Ok(None);
    };
    let mut builder = Builder::default();
    let consumed = walk_value(buf, |item| builder.add(item))?;
    debug_assert_eq!(consumed, Some(end), "second pass disagrees with the first");
    match (builder.done, consumed) {
        (Some(value), Some(n)) => Ok(Some((value, n))),
        _ => Err(ParseError::protocol("incomplete value")), // unreachable: pass 1 completed
    }
}

/// Assembles `Item`s into a `Value` with an explicit stack of open aggregates.
#[derive(Default)]
struct Builder {
    /// Open aggregates, innermost last, each with the element count it still expects.
    open: Vec<(Agg, Vec<Value>, usize)>,
    done: Option<Value>,
}

/// The value of a completed aggregate (a map's elements alternate key, value).
fn close(agg: Agg, items: Vec<Value>) -> Value {
    match agg {
        Agg::Array => Value::Array(items),
        Agg::Set => Value::Set(items),
        Agg::Map => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            Value::Map(pairs)
        }
    }
}

impl Builder {
    fn add(&mut self, item: Item<'_>) {
        let text = |s: &[u8]| String::from_utf8_lossy(s).into_owned();
        let mut value = match item {
            Item::Open(agg, n) => {
                self.open.push((agg, Vec::with_capacity(n), n));
                return;
            }
            Item::Simple(s) => Value::Simple(text(s).into()),
            Item::Error(s) => Value::Error(text(s)),
            Item::Integer(n) => Value::Integer(n),
            Item::Bulk(b) => Value::Bulk(b.to_vec()),
            Item::Nil => Value::Nil,
            Item::NilArray => Value::NilArray,
            Item::Empty(agg) => close(agg, Vec::new()),
            Item::Double(d) => Value::Double(Double(d)),
            Item::Boolean(b) => Value::Boolean(b),
            Item::Verbatim(b) => Value::Verbatim {
                format: [b[0], b[1], b[2]],
                text: b[4..].to_vec(),
            },
            Item::BigNumber(b) => Value::BigNumber(text(b)),
        };
        loop {
            let Some((_, items, want)) = self.open.last_mut() else {
                self.done = Some(value);
                return;
            };
            items.push(value);
            if items.len() < *want {
                return;
            }
            let Some((agg, items, _)) = self.open.pop() else {
                unreachable!("an aggregate was just seen open")
            };
            value = close(agg, items);
        }
    }
}

/// Walk one reply, handing each item to `sink` in order; returns the position after it.
fn walk_value(buf: &[u8], mut sink: impl FnMut(Item<'_>)) -> Result<Option<usize>, ParseError> {
    // Elements still expected by each open aggregate, innermost last.
    let mut open: Vec<usize> = Vec::new();
    let mut pos = 0;
    loop {
        let Some((item, next)) = read_item(buf, pos)? else {
            return Ok(None);
        };
        pos = next;
        let opens = matches!(item, Item::Open(..));
        if let Item::Open(_, n) = item {
            if open.len() == REPLY_DEPTH_MAX {
                return Err(ParseError::TooLarge {
                    what: "reply nesting depth",
                    len: open.len() + 1,
                    max: REPLY_DEPTH_MAX,
                });
            }
            open.push(n);
        }
        sink(item);
        if opens {
            continue;
        }
        // A complete value: it may complete its enclosing aggregates too.
        loop {
            match open.last_mut() {
                None => return Ok(Some(pos)),
                Some(left) if *left > 1 => {
                    *left -= 1;
                    break;
                }
                Some(_) => {
                    open.pop();
                }
            }
        }
    }
}

/// Read one reply item at `buf[pos..]`.
fn read_item(buf: &[u8], pos: usize) -> Result<Option<(Item<'_>, usize)>, ParseError> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let start = pos + 1;
    match tag {
        b'+' | b'-' | b',' | b'#' | b'(' | b'_' => read_line_item(buf, tag, start),
        b':' => match read_int(buf, start, i64::MAX as usize) {
            Int::Done(n, next) => Ok(Some((Item::Integer(n), next))),
            Int::Incomplete => Ok(None),
            Int::Invalid | Int::TooLarge(_) => Err(ParseError::protocol("invalid integer")),
        },
        b'$' | b'!' | b'=' => read_blob_item(buf, tag, start),
        b'*' | b'>' | b'%' | b'~' => {
            let (agg, per) = match tag {
                b'%' => (Agg::Map, 2),
                b'~' => (Agg::Set, 1),
                _ => (Agg::Array, 1),
            };
            let max = REPLY_ARRAY_LEN_MAX / per;
            match read_length(buf, start, "multibulk length", max)? {
                None => Ok(None),
                Some((None, next)) if tag == b'*' => Ok(Some((Item::NilArray, next))),
                Some((None, _)) => Err(ParseError::protocol("invalid aggregate length")),
                Some((Some(0), next)) => Ok(Some((Item::Empty(agg), next))),
                Some((Some(n), next)) => Ok(Some((Item::Open(agg, n * per), next))),
            }
        }
        other => Err(ParseError::Protocol(format!(
            "Protocol error: unexpected reply type '{}'",
            char::from(other)
        ))),
    }
}

/// A one-line item: simple string, error, double, boolean, big number or null.
fn read_line_item(
    buf: &[u8],
    tag: u8,
    start: usize,
) -> Result<Option<(Item<'_>, usize)>, ParseError> {
    let Some((line, next)) = read_line(buf, start)? else {
        return Ok(None);
    };
    let item = match tag {
        b'+' => Item::Simple(line),
        b'-' => Item::Error(line),
        b'_' if line.is_empty() => Item::Nil,
        b'#' if line == b"t" => Item::Boolean(true),
        b'#' if line == b"f" => Item::Boolean(false),
        b',' => {
            Item::Double(parse_double(line).ok_or_else(|| ParseError::protocol("invalid double"))?)
        }
        b'(' if is_big_number(line) => Item::BigNumber(line),
        _ => {
            return Err(ParseError::Protocol(format!(
                "Protocol error: invalid '{}' line",
                char::from(tag)
            )))
        }
    };
    Ok(Some((item, next)))
}

/// A length-prefixed item: bulk string, blob error or verbatim string.
fn read_blob_item(
    buf: &[u8],
    tag: u8,
    start: usize,
) -> Result<Option<(Item<'_>, usize)>, ParseError> {
    match read_length(buf, start, "bulk length", REPLY_BULK_SIZE_MAX)? {
        None => Ok(None),
        Some((None, next)) if tag == b'$' => Ok(Some((Item::Nil, next))),
        Some((None, _)) => Err(ParseError::protocol("invalid bulk length")),
        Some((Some(len), data)) => {
            if buf.len() < data + len + 2 {
                return Ok(None);
            }
            if &buf[data + len..data + len + 2] != b"\r\n" {
                return Err(ParseError::protocol("expected CRLF after bulk string"));
            }
            let body = &buf[data..data + len];
            let item = match tag {
                b'$' => Item::Bulk(body),
                b'!' => Item::Error(body),
                _ if len >= 4 && body[3] == b':' => Item::Verbatim(body),
                _ => return Err(ParseError::protocol("invalid verbatim string")),
            };
            Ok(Some((item, data + len + 2)))
        }
    }
}

/// A RESP3 double's text: `inf`, `-inf`, `nan` or a decimal Rust reads.
fn parse_double(line: &[u8]) -> Option<f64> {
    match line {
        b"inf" | b"+inf" => Some(f64::INFINITY),
        b"-inf" => Some(f64::NEG_INFINITY),
        b"nan" | b"-nan" => Some(f64::NAN),
        _ => std::str::from_utf8(line).ok()?.parse().ok(),
    }
}

fn is_big_number(line: &[u8]) -> bool {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// A `$` or `*` length: `Some((None, next))` for -1 (nil), `Some((Some(len), next))`.
#[allow(clippy::type_complexity)]
fn read_length(
    buf: &[u8],
    start: usize,
    what: &'static str,
    max: usize,
) -> Result<Option<(Option<usize>, usize)>, ParseError> {
    match read_int(buf, start, max) {
        Int::Done(-1, next) => Ok(Some((None, next))),
        Int::Done(n, next) if n >= 0 => Ok(Some((Some(n as usize), next))),
        Int::Done(..) | Int::Invalid => Err(ParseError::Protocol(format!(
            "Protocol error: invalid {what}"
        ))),
        Int::Incomplete => Ok(None),
        Int::TooLarge(len) => Err(ParseError::TooLarge { what, len, max }),
    }
}

/// A `+`/`-` line's text (without CRLF) and the position after its CRLF.
fn read_line(buf: &[u8], start: usize) -> Result<Option<(&[u8], usize)>, ParseError> {
    let rest = &buf[start.min(buf.len())..];
    let window = &rest[..rest.len().min(REPLY_LINE_SIZE_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(n) => Ok(Some((&rest[..n], start + n + 2))),
        None if rest.len() > REPLY_LINE_SIZE_MAX + 1 => Err(ParseError::TooLarge {
            what: "reply line size",
            len: rest.len(),
            max: REPLY_LINE_SIZE_MAX,
        }),
        None => Ok(None),
    }
}

/// Longest command name `command_name` folds; longer names are no known command.
pub const COMMAND_NAME_SIZE_MAX: usize = 16;

/// A command name folded to lowercase in `buf`, without allocating (it runs for every
/// command); `None` when it is longer than any known command.
pub fn command_name<'a>(name: &[u8], buf: &'a mut [u8; COMMAND_NAME_SIZE_MAX]) -> Option<&'a str> {
    let folded = buf.get_mut(..name.len())?;
    folded.copy_from_slice(name);
    folded.make_ascii_lowercase();
    std::str::from_utf8(folded).ok()
}

#[cfg(test)]
mod command_name_tests {
    use super::*;

    #[test]
    fn command_names_fold_to_lowercase_and_overlong_ones_are_none() {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        assert_eq!(command_name(b"GeT", &mut buf), Some("get"));
        assert_eq!(
            command_name(&[b'A'; 16], &mut buf),
            Some("aaaaaaaaaaaaaaaa")
        );
        assert_eq!(command_name(&[b'A'; 17], &mut buf), None);
        assert_eq!(command_name(b"\xff", &mut buf), None);
    }
}
