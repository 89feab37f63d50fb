//! kvctl's output: what each verb prints for a reply (and the exit code it implies), replies
//! shown as redis-cli shows them (the `status` table: `status.rs`). Pure functions of the reply; no I/O.

use std::collections::HashMap;

use kvraft::client::Value;

use crate::request::{Request, Shape};

/// What to print for a reply, and the exit code it implies.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub out: Vec<u8>,
    pub err: Vec<u8>,
    pub code: u8,
}

/// Format `reply` to `request`. `line_mode` (stdin) prints `(nil)` for a missing key so every
/// command has an answer line, and error replies on stdout so answers stay in step.
pub fn render(request: &Request, reply: &Value, line_mode: bool) -> Answer {
    let mut answer = Answer {
        out: Vec::new(),
        err: Vec::new(),
        code: 0,
    };
    if let Value::Error(msg) = reply {
        let text = format!("(error) {msg}\n");
        if line_mode {
            answer.out = text.into_bytes();
        } else {
            answer.err = text.into_bytes();
        }
        answer.code = 2;
        return answer;
    }
    match (request.shape, reply) {
        (Shape::Value, Value::Bulk(b)) => {
            answer.out.extend_from_slice(b);
            answer.out.push(b'\n');
        }
        (Shape::Value, Value::Nil) => {
            if line_mode {
                answer.out.extend_from_slice(b"(nil)\n");
            }
            answer.code = 1;
        }
        (Shape::Ok | Shape::Integer, Value::Simple(s)) => {
            answer.out = format!("{s}\n").into_bytes()
        }
        (Shape::Integer, Value::Integer(n)) => answer.out = format!("{n}\n").into_bytes(),
        (Shape::Pairs, Value::Array(items)) => match pairs(items) {
            Some(lines) => answer.out = lines,
            None => answer.out = format_value(reply, 0).into_bytes(),
        },
        (Shape::Raw, Value::Bulk(b)) if is_info(&request.args) => {
            // INFO's text is meant to be read as lines, as redis-cli prints it.
            let text = String::from_utf8_lossy(b).replace("\r\n", "\n");
            answer.out = text.into_bytes();
            if !answer.out.ends_with(b"\n") {
                answer.out.push(b'\n');
            }
        }
        _ => answer.out = format_value(reply, 0).into_bytes(),
    }
    answer
}

fn is_info(args: &[Vec<u8>]) -> bool {
    args.first()
        .is_some_and(|a| a.eq_ignore_ascii_case(b"info"))
}

/// `key<TAB>value` lines from a flat `[k, v, k, v]` array or an array of `[k, v]` pairs.
fn pairs(items: &[Value]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |k: &Value, v: &Value| match (k, v) {
        (Value::Bulk(k), Value::Bulk(v)) => {
            out.extend_from_slice(k);
            out.push(b'\t');
            out.extend_from_slice(v);
            out.push(b'\n');
            true
        }
        _ => false,
    };
    let nested = items
        .iter()
        .all(|i| matches!(i, Value::Array(p) if p.len() == 2));
    if nested && !items.is_empty() {
        for item in items {
            let Value::Array(p) = item else { return None };
            if !push(&p[0], &p[1]) {
                return None;
            }
        }
    } else {
        if !items.len().is_multiple_of(2) {
            return None;
        }
        for kv in items.chunks(2) {
            if !push(&kv[0], &kv[1]) {
                return None;
            }
        }
    }
    Some(out)
}

/// A reply as redis-cli shows it on a terminal: `(integer) 3`, `"quoted"`, numbered arrays.
pub fn format_value(value: &Value, indent: usize) -> String {
    match value {
        Value::Simple(s) => format!("{s}\n"),
        Value::Error(s) => format!("(error) {s}\n"),
        Value::Integer(n) => format!("(integer) {n}\n"),
        Value::Bulk(b) => format!("{}\n", quote(b)),
        Value::Nil | Value::NilArray => "(nil)\n".to_string(),
        Value::Array(items) if items.is_empty() => "(empty array)\n".to_string(),
        Value::Double(d) => format!("(double) {}\n", d.text()),
        Value::Boolean(b) => format!("({b})\n"),
        Value::BigNumber(n) => format!("(big number) {n}\n"),
        Value::Verbatim { text, .. } => format!("{}\n", quote(text)),
        // A kvctl connection speaks RESP2, which has no maps or sets; show them flat.
        Value::Set(items) => format_value(&Value::Array(items.clone()), indent),
        Value::Map(pairs) => {
            let flat = pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]);
            format_value(&Value::Array(flat.collect()), indent)
        }
        Value::Array(items) => {
            let width = items.len().to_string().len();
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&" ".repeat(indent));
                }
                let label = format!("{:>width$}) ", i + 1);
                out.push_str(&label);
                out.push_str(&format_value(item, indent + label.len()));
            }
            out
        }
    }
}

/// A byte string in double quotes with non-printable bytes escaped, as redis-cli does.
fn quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// `field:value` lines of an INFO reply (section headers and blank lines skipped).
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::build_request;
    use crate::request::tests::words;

    #[test]
    fn replies_render_as_each_verb_promises() {
        let get = build_request(&words("get k")).unwrap();
        let a = render(&get, &Value::Bulk(b"v\x01".to_vec()), false);
        assert_eq!((a.out, a.code), (b"v\x01\n".to_vec(), 0));
        let a = render(&get, &Value::Nil, false);
        assert_eq!((a.out, a.code), (vec![], 1));
        assert_eq!(render(&get, &Value::Nil, true).out, b"(nil)\n");
        let a = render(&get, &Value::error("ERR bad"), false);
        assert_eq!((a.err, a.code), (b"(error) ERR bad\n".to_vec(), 2));
        let put = build_request(&words("put k v")).unwrap();
        assert_eq!(render(&put, &Value::ok(), false).out, b"OK\n");
        let del = build_request(&words("del k")).unwrap();
        assert_eq!(render(&del, &Value::Integer(2), false).out, b"2\n");
        let range = build_request(&words("range a z")).unwrap();
        let flat = Value::Array(vec![
            Value::Bulk(b"a".to_vec()),
            Value::Bulk(b"1".to_vec()),
            Value::Bulk(b"b".to_vec()),
            Value::Bulk(b"2".to_vec()),
        ]);
        assert_eq!(render(&range, &flat, false).out, b"a\t1\nb\t2\n");
        let nested = Value::Array(vec![Value::Array(vec![
            Value::Bulk(b"a".to_vec()),
            Value::Bulk(b"1".to_vec()),
        ])]);
        assert_eq!(render(&range, &nested, false).out, b"a\t1\n");
        assert_eq!(render(&range, &Value::Array(vec![]), false).out, b"");
        let info = build_request(&words("info raft")).unwrap();
        let text = Value::Bulk(b"# Raft\r\nrole:leader\r\n".to_vec());
        assert_eq!(render(&info, &text, false).out, b"# Raft\nrole:leader\n");
    }

    #[test]
    fn raw_replies_look_like_redis_cli() {
        let v = Value::Array(vec![
            Value::Integer(3),
            Value::Bulk(b"a\"b\n\x00".to_vec()),
            Value::Nil,
            Value::Array(vec![Value::ok(), Value::Array(vec![])]),
        ]);
        assert_eq!(
            format_value(&v, 0),
            "1) (integer) 3\n2) \"a\\\"b\\n\\x00\"\n3) (nil)\n4) 1) OK\n   2) (empty array)\n"
        );
        assert_eq!(format_value(&Value::error("ERR x"), 0), "(error) ERR x\n");
    }
}
