//! A RESP value: what a command replies, and what `kvctl` reads back, in either protocol.
//!
//! A connection speaks RESP2 until it sends `HELLO 3`; the same `Value` is then encoded with
//! RESP3's richer types. Encoding (as Redis 7 defines it):
//! ```text
//! value              RESP2                          RESP3
//! Simple             +<text>\r\n                    same
//! Error              -<text>\r\n                    same
//! Integer            :<i64>\r\n                     same
//! Bulk               $<len>\r\n<bytes>\r\n          same
//! Nil / NilArray     $-1\r\n / *-1\r\n              _\r\n (the one null)
//! Array              *<n>\r\n<n values>             same
//! Map                *<2n>\r\n<k1 v1 ... kn vn>     %<n>\r\n<k1 v1 ... kn vn>
//! Set                *<n>\r\n<n values>             ~<n>\r\n<n values>
//! Double             $<len>\r\n<text>\r\n           ,<text>\r\n  (text: see `Double`)
//! Boolean            :1\r\n / :0\r\n                #t\r\n / #f\r\n
//! Verbatim           $<len>\r\n<text>\r\n           =<len+4>\r\n<fmt>:<text>\r\n
//! BigNumber          $<len>\r\n<digits>\r\n         (<digits>\r\n
//! ```
//! The reply parser (`resp::parse_value`) reads every RESP3 type back into these variants
//! (`_` as `Nil`, a push `>` as `Array`, a blob error `!` as `Error`).

use std::borrow::Cow;
use std::io::Write;

/// The protocol a connection speaks: RESP2 (the default) until `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    /// The protocol's number, as `HELLO` names it and the peer wire carries it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }

    /// The protocol numbered `n`, if it is one we speak.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            2 => Some(Protocol::Resp2),
            3 => Some(Protocol::Resp3),
            _ => None,
        }
    }
}

/// A double that compares by its bits, so `Value` keeps `Eq` (a NaN equals itself).
#[derive(Clone, Copy, Debug)]
pub struct Double(pub f64);

impl PartialEq for Double {
    fn eq(&self, other: &Double) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Double {}

impl Double {
    /// The text of the double: `inf`, `-inf`, `nan`, else the shortest decimal that reads
    /// back as the same double (`0.1`, `1e+300` style is not used: `1e300` prints in full).
    pub fn text(self) -> String {
        let d = self.0;
        if d.is_nan() {
            "nan".into()
        } else if d.is_infinite() {
            if d > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            format!("{d}")
        }
    }
}

/// One RESP value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A status line; static text (`+OK`) costs no allocation.
    Simple(Cow<'static, str>),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// The null bulk string (RESP3: the null).
    Nil,
    Array(Vec<Value>),
    /// The null array (RESP3: the null).
    NilArray,
    /// Key-value pairs, in order (RESP2: a flat array).
    Map(Vec<(Value, Value)>),
    /// An unordered collection (RESP2: an array).
    Set(Vec<Value>),
    Double(Double),
    Boolean(bool),
    /// Text with a three-letter format (`txt`, `mkd`); RESP2 sends only the text.
    Verbatim {
        format: [u8; 3],
        text: Vec<u8>,
    },
    /// An integer beyond i64, as decimal digits (an optional `-` first).
    BigNumber(String),
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple(Cow::Borrowed("OK"))
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`).
    pub fn error(msg: impl Into<String>) -> Value {
        Value::Error(msg.into())
    }

    /// A bulk string from text.
    pub fn bulk_str(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Append the RESP2 encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_as(Protocol::Resp2, out);
    }

    /// Append the encoding of `self` in `proto` to `out`. Nesting is walked with an explicit
    /// stack, so no value can exhaust the thread's stack.
    pub fn encode_as(&self, proto: Protocol, out: &mut Vec<u8>) {
        if !matches!(self, Value::Array(_) | Value::Set(_) | Value::Map(_)) {
            // A scalar (every write's reply): no stack to allocate.
            return encode_head(self, proto, out);
        }
        let mut stack: Vec<&Value> = vec![self];
        while let Some(v) = stack.pop() {
            encode_head(v, proto, out);
            match v {
                Value::Array(items) | Value::Set(items) => stack.extend(items.iter().rev()),
                Value::Map(pairs) => {
                    for (k, v) in pairs.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
                _ => {}
            }
        }
    }

    /// The RESP2 encoding of `self` as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_as(Protocol::Resp2)
    }

    /// The most bytes `self` encodes to in either protocol, for a scalar whose size is known
    /// without encoding it; `None` for an aggregate and for the rarer scalars (a double, a
    /// big number, verbatim text). Lets a caller check its output cap before it encodes.
    pub fn scalar_len_max(&self) -> Option<usize> {
        match self {
            Value::Simple(s) => Some(s.len() + 3),
            Value::Error(s) => Some(s.len() + 3),
            Value::Integer(_) => Some(HEADER_LEN_MAX),
            Value::Bulk(b) => Some(HEADER_LEN_MAX + b.len() + 2),
            Value::Nil | Value::NilArray | Value::Boolean(_) => Some(5),
            _ => None,
        }
    }

    /// The encoding of `self` in `proto` as a new buffer.
    pub fn to_bytes_as(&self, proto: Protocol) -> Vec<u8> {
        // Sized for a scalar at once: a GET's reply is one allocation, not four (issue 16).
        let mut out = Vec::with_capacity(match self {
            Value::Bulk(b) => b.len() + HEADER_LEN_MAX,
            Value::Simple(s) => s.len() + 3,
            Value::Error(s) => s.len() + 3,
            _ => HEADER_LEN_MAX,
        });
        self.encode_as(proto, &mut out);
        out
    }
}

/// Encode `v` itself, or only its header if it is an aggregate (its elements follow).
fn encode_head(v: &Value, proto: Protocol, out: &mut Vec<u8>) {
    let resp3 = proto == Protocol::Resp3;
    match v {
        Value::Simple(s) => line(out, b'+', s.as_bytes()),
        Value::Error(s) => line(out, b'-', s.as_bytes()),
        Value::Integer(n) => {
            let _ = write!(out, ":{n}\r\n");
        }
        Value::Bulk(b) => bulk(out, b),
        Value::Nil | Value::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::NilArray => out.extend_from_slice(b"*-1\r\n"),
        Value::Array(items) => header(out, b'*', items.len()),
        Value::Set(items) => header(out, if resp3 { b'~' } else { b'*' }, items.len()),
        Value::Map(pairs) if resp3 => header(out, b'%', pairs.len()),
        Value::Map(pairs) => header(out, b'*', pairs.len() * 2),
        Value::Double(d) if resp3 => line(out, b',', d.text().as_bytes()),
        Value::Double(d) => bulk(out, d.text().as_bytes()),
        Value::Boolean(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Value::Boolean(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
        Value::Verbatim { format, text } if resp3 => {
            header(out, b'=', text.len() + 4);
            out.extend_from_slice(format);
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        Value::Verbatim { text, .. } => bulk(out, text),
        Value::BigNumber(digits) if resp3 => line(out, b'(', digits.as_bytes()),
        Value::BigNumber(digits) => bulk(out, digits.as_bytes()),
    }
}

/// The longest aggregate or bulk header: a tag, 20 digits, CR LF.
const HEADER_LEN_MAX: usize = 23;

/// `tag`, `n` in decimal, CR LF; without `fmt`, which costs a GET's reply more than the rest
/// of its encoding.
fn header(out: &mut Vec<u8>, tag: u8, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.reserve(digits.len() - at + 3);
    out.push(tag);
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.reserve(b.len() + HEADER_LEN_MAX);
    header(out, b'$', b.len());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// A simple string or error line. CR and LF would end the line early and let a reply inject
/// another one, so they are replaced by spaces.
fn line(out: &mut Vec<u8>, tag: u8, text: &[u8]) {
    out.push(tag);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        Value::Array(vec![
            Value::ok(),
            Value::error("ERR bad\r\nthing"),
            Value::Integer(-7),
            Value::Bulk(b"a\r\nb".to_vec()),
            Value::Nil,
            Value::NilArray,
        ])
    }

    #[test]
    fn encodes_every_resp2_kind_as_redis_does() {
        assert_eq!(
            sample().to_bytes(),
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-7\r\n$4\r\na\r\nb\r\n$-1\r\n*-1\r\n".to_vec()
        );
    }

    #[test]
    fn headers_write_every_length_in_decimal_without_leading_zeros() {
        for n in [0usize, 7, 9, 10, 256, 1_000_000, usize::MAX] {
            let mut out = b"x".to_vec();
            header(&mut out, b'$', n);
            assert_eq!(out, format!("x${n}\r\n").into_bytes());
            assert!(out.len() <= 1 + HEADER_LEN_MAX);
        }
        let v = Value::Bulk(vec![b'v'; 256]);
        let bytes = v.to_bytes();
        assert_eq!(&bytes[..6], b"$256\r\n");
        assert_eq!(bytes.len(), 6 + 256 + 2);
    }

    #[test]
    fn a_scalar_never_encodes_longer_than_its_bound_and_aggregates_have_none() {
        let scalars = [
            Value::ok(),
            Value::error("ERR bad\r\nthing"),
            Value::Integer(i64::MIN),
            Value::Integer(i64::MAX),
            Value::Bulk(Vec::new()),
            Value::Bulk(vec![b'v'; 100_000]),
            Value::Nil,
            Value::NilArray,
            Value::Boolean(true),
        ];
        for v in &scalars {
            let bound = v.scalar_len_max().expect("a scalar has a bound");
            for proto in [Protocol::Resp2, Protocol::Resp3] {
                let len = v.to_bytes_as(proto).len();
                assert!(
                    len <= bound,
                    "{v:?} in {proto:?}: {len} bytes > bound {bound}"
                );
            }
        }
        assert_eq!(sample().scalar_len_max(), None);
        assert_eq!(Value::Double(Double(0.1)).scalar_len_max(), None);
    }

    #[test]
    fn resp3_nulls_are_one_type_and_the_rest_of_resp2_is_unchanged() {
        assert_eq!(
            sample().to_bytes_as(Protocol::Resp3),
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-7\r\n$4\r\na\r\nb\r\n_\r\n_\r\n".to_vec()
        );
    }

    #[test]
    fn resp3_types_degrade_to_their_resp2_shapes() {
        let v = Value::Map(vec![
            (Value::bulk_str("proto"), Value::Integer(3)),
            (
                Value::bulk_str("s"),
                Value::Set(vec![Value::Boolean(true), Value::Boolean(false)]),
            ),
            (Value::bulk_str("d"), Value::Double(Double(1.5))),
            (
                Value::bulk_str("v"),
                Value::Verbatim {
                    format: *b"txt",
                    text: b"hi".to_vec(),
                },
            ),
            (Value::bulk_str("b"), Value::BigNumber("-123".into())),
        ]);
        assert_eq!(
            String::from_utf8(v.to_bytes_as(Protocol::Resp3)).unwrap(),
            "%5\r\n$5\r\nproto\r\n:3\r\n$1\r\ns\r\n~2\r\n#t\r\n#f\r\n$1\r\nd\r\n,1.5\r\n\
             $1\r\nv\r\n=6\r\ntxt:hi\r\n$1\r\nb\r\n(-123\r\n"
        );
        assert_eq!(
            String::from_utf8(v.to_bytes()).unwrap(),
            "*10\r\n$5\r\nproto\r\n:3\r\n$1\r\ns\r\n*2\r\n:1\r\n:0\r\n$1\r\nd\r\n$3\r\n1.5\r\n\
             $1\r\nv\r\n$2\r\nhi\r\n$1\r\nb\r\n$4\r\n-123\r\n"
        );
    }

    #[test]
    fn doubles_print_as_redis_clients_read_them() {
        let t = |d: f64| Double(d).text();
        assert_eq!(t(0.1), "0.1");
        assert_eq!(t(-2.0), "-2");
        assert_eq!(t(f64::INFINITY), "inf");
        assert_eq!(t(f64::NEG_INFINITY), "-inf");
        assert_eq!(t(f64::NAN), "nan");
        assert_eq!(Double(f64::NAN), Double(f64::NAN));
    }

    #[test]
    fn deep_nesting_encodes_without_recursion() {
        let mut v = Value::Integer(1);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        let bytes = v.to_bytes_as(Protocol::Resp3);
        assert_eq!(bytes.len(), 100_000 * 4 + 4);
        // Dropping a deep value recursively would overflow the stack; unwind it by hand.
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Nil);
        }
    }
}
