//! A RESP2 value: what a command replies, and what `kvctl` reads back.
//!
//! Encoding (RESP2, as Redis defines it):
//! ```text
//! +<text>\r\n                 simple string (no CR or LF inside)
//! -<text>\r\n                 error ("ERR ...", "CLUSTERDOWN ...", ...)
//! :<i64>\r\n                  integer
//! $<len>\r\n<bytes>\r\n       bulk string;  $-1\r\n is the nil bulk string
//! *<n>\r\n<n values>          array;        *-1\r\n is the nil array
//! ```

use std::io::Write;

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
    NilArray,
}

impl Value {
    /// `+OK`.
    pub fn ok() -> Value {
        Value::Simple("OK".to_string())
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`).
    pub fn error(msg: impl Into<String>) -> Value {
        Value::Error(msg.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Append the RESP2 encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Simple(s) => line(out, b'+', s.as_bytes()),
            Value::Error(s) => line(out, b'-', s.as_bytes()),
            Value::Integer(n) => {
                let _ = write!(out, ":{n}\r\n");
            }
            Value::Bulk(b) => {
                let _ = write!(out, "${}\r\n", b.len());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Nil => out.extend_from_slice(b"$-1\r\n"),
            Value::Array(items) => {
                let _ = write!(out, "*{}\r\n", items.len());
                for item in items {
                    item.encode(out);
                }
            }
            Value::NilArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// The encoding of `self` as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
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

    #[test]
    fn encodes_every_kind_as_redis_does() {
        let v = Value::Array(vec![
            Value::ok(),
            Value::error("ERR bad\r\nthing"),
            Value::Integer(-7),
            Value::Bulk(b"a\r\nb".to_vec()),
            Value::Nil,
            Value::NilArray,
        ]);
        assert_eq!(
            v.to_bytes(),
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-7\r\n$4\r\na\r\nb\r\n$-1\r\n*-1\r\n".to_vec()
        );
    }
}
