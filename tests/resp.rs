//! RESP2 and RESP3 request and reply parsing: round trips, truncation, limits, and random bad input.

use std::cell::RefCell;

use kvraft::client::resp::{parse_command_into, ArgBufs};
use kvraft::client::value::Double;
use kvraft::client::{
    encode_command, parse_command, parse_value, split_args, ParseError, Protocol, Value,
};
use kvraft::limits::{
    ARG_BUFS_KEPT_MAX, ARG_BUF_KEPT_SIZE_MAX, CLIENT_ARGS_MAX, CLIENT_BULK_SIZE_MAX,
    CLIENT_INLINE_SIZE_MAX,
};
use kvraft::prng::Prng;

type Args = Vec<Vec<u8>>;

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_command(args, &mut out);
    out
}

fn parsed(buf: &[u8]) -> (Args, usize) {
    match parse_command(buf) {
        Ok(Some(r)) => r,
        other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn err(buf: &[u8]) -> ParseError {
    match parse_command(buf) {
        Err(e) => e,
        other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn random_args(rng: &mut Prng) -> Args {
    let n = rng.range(1, 6) as usize;
    (0..n)
        .map(|_| {
            let mut arg = vec![0u8; rng.range(0, 20) as usize];
            rng.fill(&mut arg);
            arg
        })
        .collect()
}

#[test]
fn a_multibulk_command_parses_to_its_arguments() {
    let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nbc\r\n";
    let (args, n) = parsed(buf);
    assert_eq!(
        args,
        vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\nbc".to_vec()]
    );
    assert_eq!(n, buf.len());
}

#[test]
fn an_inline_command_splits_on_whitespace_and_honours_quotes() {
    let (args, n) = parsed(b"SET  k \"a b\\x41\\n\" 'it\\'s'\r\nGET k\r\n");
    assert_eq!(
        args,
        vec![
            b"SET".to_vec(),
            b"k".to_vec(),
            b"a bA\n".to_vec(),
            b"it's".to_vec()
        ]
    );
    assert_eq!(n, 28);
    let (args, n) = parsed(b"PING\n");
    assert_eq!((args, n), (vec![b"PING".to_vec()], 5));
}

#[test]
fn unbalanced_quotes_in_an_inline_command_are_a_protocol_error() {
    let e = err(b"SET k \"abc\r\n");
    assert_eq!(
        e.to_string(),
        "Protocol error: unbalanced quotes in request"
    );
    assert!(matches!(err(b"SET k \"a\"b\r\n"), ParseError::Protocol(_)));
    assert_eq!(split_args(b"'x'y"), None);
    // An escape that is not one is the escaped character itself, as in Redis.
    assert_eq!(split_args(b"\"\\xZZ\\q\""), Some(vec![b"xZZq".to_vec()]));
}

#[test]
fn empty_commands_are_consumed_with_no_arguments() {
    for buf in [&b"*0\r\n"[..], b"*-1\r\n", b"\r\n", b"   \n", b"\n"] {
        let (args, n) = parsed(buf);
        assert!(args.is_empty(), "{buf:?} gave {args:?}");
        assert_eq!(n, buf.len(), "{buf:?}");
    }
}

#[test]
fn pipelined_commands_parse_one_after_another() {
    let mut rng = Prng::new(7);
    let mut buf = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let args = random_args(&mut rng);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        encode_command(&refs, &mut buf);
        if i % 10 == 0 {
            buf.extend_from_slice(b"PING hello\r\n*0\r\n");
            want.push(args);
            want.push(vec![b"PING".to_vec(), b"hello".to_vec()]);
            want.push(vec![]);
        } else {
            want.push(args);
        }
    }
    let mut got = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let (args, n) = parsed(&buf[pos..]);
        assert!(n > 0);
        got.push(args);
        pos += n;
    }
    assert_eq!(got, want);
}

#[test]
fn every_truncation_of_a_valid_command_is_incomplete() {
    let mut rng = Prng::new(11);
    for _ in 0..300 {
        let args = random_args(&mut rng);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let buf = encode(&refs);
        for cut in 0..buf.len() {
            assert_eq!(parse_command(&buf[..cut]), Ok(None), "cut {cut} of {buf:?}");
        }
        assert_eq!(parse_command(&buf), Ok(Some((args, buf.len()))));
    }
    let inline = b"SET key \"quoted value\"\r\n";
    for cut in 0..inline.len() {
        assert_eq!(parse_command(&inline[..cut]), Ok(None), "cut {cut}");
    }
}

#[test]
fn an_array_element_that_is_not_a_bulk_string_is_refused_as_redis_does() {
    assert_eq!(
        err(b"*2\r\n$3\r\nGET\r\n:1\r\n").to_string(),
        "Protocol error: expected '$', got ':'"
    );
    assert_eq!(
        err(b"*x\r\n").to_string(),
        "Protocol error: invalid multibulk length"
    );
    assert_eq!(
        err(b"*1\r\n$-1\r\n").to_string(),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        err(b"*1\r\n$01\r\nx\r\n").to_string(),
        "Protocol error: invalid bulk length"
    );
    assert!(matches!(
        err(b"*1\r\n$1\r\nxy\r\n"),
        ParseError::Protocol(_)
    ));
    assert_eq!(
        err(b"*1\r\n$1\r\nx!!").reply(),
        Value::error("ERR Protocol error: expected CRLF after bulk string")
    );
}

#[test]
fn oversize_lengths_are_refused_from_the_header_before_their_crlf_arrives() {
    let cases: [(&[u8], &str, usize); 5] = [
        (b"*1\r\n$4294967296", "bulk length", CLIENT_BULK_SIZE_MAX),
        (b"*1\r\n$1048577\r\n", "bulk length", CLIENT_BULK_SIZE_MAX),
        (b"*99999999999", "multibulk length", CLIENT_ARGS_MAX),
        (b"*65537", "multibulk length", CLIENT_ARGS_MAX),
        (
            b"*1\r\n$99999999999999999999999999",
            "bulk length",
            CLIENT_BULK_SIZE_MAX,
        ),
    ];
    for (buf, what, max) in cases {
        match err(buf) {
            ParseError::TooLarge {
                what: w,
                len,
                max: m,
            } => {
                assert_eq!((w, m), (what, max), "{buf:?}");
                assert!(len > max, "{buf:?}: {len}");
            }
            other => panic!("{buf:?}: {other:?}"),
        }
    }
    // At the limit, the command is merely incomplete.
    assert_eq!(parse_command(b"*65536\r\n$1048576\r\n"), Ok(None));
}

#[test]
fn a_request_whose_bulks_together_exceed_the_request_limit_is_refused() {
    let big = vec![b'x'; CLIENT_BULK_SIZE_MAX];
    let args: Vec<&[u8]> = vec![&big; 5];
    let e = err(&encode(&args));
    assert!(
        matches!(
            e,
            ParseError::TooLarge {
                what: "request size",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn an_inline_line_longer_than_the_limit_is_refused_without_waiting_for_its_newline() {
    let mut buf = vec![b'a'; CLIENT_INLINE_SIZE_MAX];
    assert_eq!(parse_command(&buf), Ok(None));
    buf.push(b'a');
    assert!(matches!(
        err(&buf),
        ParseError::TooLarge {
            what: "inline request size",
            ..
        }
    ));
}

thread_local! {
    /// One `ArgBufs` for every check, as a node keeps one: each parse reuses the buffers the
    /// last one filled, whatever it held.
    static ARG_BUFS: RefCell<ArgBufs> = RefCell::new(ArgBufs::new());
}

/// `parse_command_into` gives what `parse_command` gives, into reused buffers.
fn check_into_agrees(buf: &[u8]) {
    ARG_BUFS.with(|bufs| {
        let mut bufs = bufs.borrow_mut();
        let into = parse_command_into(buf, &mut bufs).map(|r| r.map(|n| (bufs.args().to_vec(), n)));
        assert_eq!(
            into,
            parse_command(buf),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
        bufs.trim();
    });
}

fn check_outcome(buf: &[u8]) {
    check_into_agrees(buf);
    match parse_command(buf) {
        Ok(None) | Err(_) => {}
        Ok(Some((args, n))) => {
            assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
            assert_eq!(parse_command(&buf[..n]), Ok(Some((args, n))));
        }
    }
    match parse_value(buf) {
        Ok(None) | Err(_) => {}
        Ok(Some((value, n))) => {
            assert!(n > 0 && n <= buf.len());
            // Simple strings are read lossily, so only valid UTF-8 keeps its length; RESP3
            // types have more than one spelling (`,1.0`), so only RESP2 bytes do.
            let resp3 = buf[..n].iter().any(|b| b"_,#(!=%~>".contains(b));
            if std::str::from_utf8(&buf[..n]).is_ok() && !resp3 {
                assert_eq!(value.to_bytes().len(), n, "{value:?} from {buf:?}");
            }
        }
    }
}

#[test]
fn random_garbage_never_panics_and_either_parses_waits_or_errs() {
    let mut rng = Prng::new(0x5eed);
    const ALPHABET: &[u8] = b"*$+-:\r\n0123456789-x \"'\\";
    let mut buf = Vec::new();
    for i in 0..100_000 {
        buf.clear();
        let len = rng.range(0, 40) as usize;
        for _ in 0..len {
            // Mostly protocol-ish bytes, so parsing gets past the first header often.
            let b = if i % 4 == 0 {
                rng.next_u64() as u8
            } else {
                ALPHABET[rng.range(0, ALPHABET.len() as u64) as usize]
            };
            buf.push(b);
        }
        check_outcome(&buf);
    }
}

#[test]
fn mutated_valid_commands_and_replies_never_panic() {
    let mut rng = Prng::new(42);
    for _ in 0..50_000 {
        let mut buf = if rng.chance(1, 2) {
            let args = random_args(&mut rng);
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            encode(&refs)
        } else {
            random_value(&mut rng, 0).to_bytes()
        };
        for _ in 0..rng.range(1, 4) {
            let at = rng.range(0, buf.len() as u64) as usize;
            match rng.range(0, 3) {
                0 => buf[at] = rng.next_u64() as u8,
                1 => {
                    buf.remove(at);
                }
                _ => buf.insert(at, b"*$:\r\n-9"[rng.range(0, 7) as usize]),
            }
            if buf.is_empty() {
                break;
            }
        }
        check_outcome(&buf);
    }
}

#[test]
fn parsing_into_reused_buffers_agrees_with_parse_command_and_keeps_bounded_memory() {
    let mut rng = Prng::new(0x5eed_a965);
    for _ in 0..20_000 {
        let args = random_args(&mut rng);
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let buf = encode(&refs);
        check_into_agrees(&buf);
        check_into_agrees(&buf[..rng.range(0, buf.len() as u64) as usize]);
    }
    check_into_agrees(b"set  'a b' \"x\\ty\"\r\n");
    // An MSET of many keys and a large value pass through; what stays is bounded.
    let big = vec![b'v'; 4 * ARG_BUF_KEPT_SIZE_MAX];
    let mut many: Vec<&[u8]> = vec![b"MSET"];
    for i in 0..ARG_BUFS_KEPT_MAX {
        let value = if i % 4 == 0 { big.as_slice() } else { b"v" };
        many.extend([b"k".as_slice(), value]);
    }
    let mut bufs = ArgBufs::new();
    let buf = encode(&many);
    assert_eq!(parse_command_into(&buf, &mut bufs), Ok(Some(buf.len())));
    assert_eq!(bufs.args().len(), many.len());
    assert_eq!(bufs.args()[2], big);
    bufs.trim();
    assert!(bufs.args().is_empty());
    assert!(
        bufs.kept_bytes() <= ARG_BUFS_KEPT_MAX * ARG_BUF_KEPT_SIZE_MAX,
        "{} bytes kept",
        bufs.kept_bytes()
    );
    let buf = encode(&[b"SET", b"k", b"v"]);
    assert_eq!(parse_command_into(&buf, &mut bufs), Ok(Some(buf.len())));
    assert_eq!(bufs.args(), [b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]);
}

fn random_value(rng: &mut Prng, depth: usize) -> Value {
    let kinds = if depth >= 3 { 6 } else { 7 };
    match rng.range(0, kinds) {
        0 => Value::Simple("OK then".into()),
        1 => Value::Error("CLUSTERDOWN no leader".into()),
        2 => Value::Integer(rng.next_u64() as i64),
        3 => {
            let mut b = vec![0u8; rng.range(0, 12) as usize];
            rng.fill(&mut b);
            Value::Bulk(b)
        }
        4 => Value::Nil,
        5 => Value::NilArray,
        _ => Value::Array(
            (0..rng.range(0, 4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
    }
}

#[test]
fn replies_round_trip_and_every_truncation_is_incomplete() {
    let mut rng = Prng::new(3);
    for _ in 0..2_000 {
        let value = random_value(&mut rng, 0);
        let buf = value.to_bytes();
        for cut in 0..buf.len() {
            assert_eq!(parse_value(&buf[..cut]), Ok(None), "cut {cut} of {value:?}");
        }
        assert_eq!(parse_value(&buf), Ok(Some((value, buf.len()))));
    }
    assert_eq!(
        parse_value(b":-9223372036854775808\r\n"),
        Ok(Some((Value::Integer(i64::MIN), 23)))
    );
}

#[test]
fn replies_nested_deeper_than_the_limit_are_refused_without_recursion() {
    let mut buf = Vec::new();
    for _ in 0..100_000 {
        buf.extend_from_slice(b"*1\r\n");
    }
    assert!(matches!(
        parse_value(&buf),
        Err(ParseError::TooLarge {
            what: "reply nesting depth",
            ..
        })
    ));
    let mut ok = b"*1\r\n".repeat(kvraft::client::resp::REPLY_DEPTH_MAX);
    ok.extend_from_slice(b":1\r\n");
    assert!(matches!(parse_value(&ok), Ok(Some(_))));
}

#[test]
fn malformed_replies_are_protocol_errors() {
    for buf in [
        &b"?x\r\n"[..],
        b":12a\r\n",
        b"$-2\r\n",
        b"*-3\r\n",
        b"$1\r\nab\r\n",
    ] {
        assert!(
            matches!(parse_value(buf), Err(ParseError::Protocol(_))),
            "{buf:?}"
        );
    }
}

/// A value of any RESP3 type, in the form it reads back as (RESP3 has one null: `Nil`).
fn random_value3(rng: &mut Prng, depth: usize) -> Value {
    let kinds = if depth >= 3 { 9 } else { 12 };
    match rng.range(0, kinds) {
        0 => Value::Simple("OK then".into()),
        1 => Value::Error("WRONGTYPE nope".into()),
        2 => Value::Integer(rng.next_u64() as i64),
        3 => {
            let mut b = vec![0u8; rng.range(0, 12) as usize];
            rng.fill(&mut b);
            Value::Bulk(b)
        }
        4 => Value::Nil,
        5 => Value::Double(Double(f64::from_bits(rng.next_u64()))),
        6 => Value::Boolean(rng.chance(1, 2)),
        7 => Value::Verbatim {
            format: *b"txt",
            text: b"a:b\r\nc".to_vec(),
        },
        8 => Value::BigNumber(format!("-{}{}", rng.next_u64(), rng.next_u64())),
        9 => Value::Array(
            (0..rng.range(0, 4))
                .map(|_| random_value3(rng, depth + 1))
                .collect(),
        ),
        10 => Value::Set(
            (0..rng.range(0, 4))
                .map(|_| random_value3(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Map(
            (0..rng.range(0, 3))
                .map(|_| (random_value3(rng, depth + 1), random_value3(rng, depth + 1)))
                .collect(),
        ),
    }
}

#[test]
fn resp3_replies_round_trip_and_every_truncation_is_incomplete() {
    let mut rng = Prng::new(33);
    for _ in 0..2_000 {
        let value = random_value3(&mut rng, 0);
        let buf = value.to_bytes_as(Protocol::Resp3);
        for cut in 0..buf.len() {
            assert_eq!(parse_value(&buf[..cut]), Ok(None), "cut {cut} of {value:?}");
        }
        assert_eq!(parse_value(&buf), Ok(Some((value, buf.len()))));
    }
}

#[test]
fn resp3_nulls_pushes_and_blob_errors_read_as_their_resp2_counterparts() {
    let one = |b: &[u8]| parse_value(b).unwrap().unwrap().0;
    assert_eq!(one(b"_\r\n"), Value::Nil);
    assert_eq!(
        one(b">2\r\n+a\r\n:1\r\n"),
        Value::Array(vec![Value::Simple("a".into()), Value::Integer(1)])
    );
    assert_eq!(
        one(b"!8\r\nERR a\r\nb\r\n"),
        Value::Error("ERR a\r\nb".into())
    );
    assert_eq!(one(b",-inf\r\n"), Value::Double(Double(f64::NEG_INFINITY)));
    assert_eq!(one(b"%0\r\n"), Value::Map(vec![]));
}

#[test]
fn malformed_resp3_replies_are_protocol_errors() {
    for buf in [
        &b"#x\r\n"[..],
        b",1.2.3\r\n",
        b"(12a\r\n",
        b"(\r\n",
        b"_x\r\n",
        b"=3\r\ntxt\r\n",
        b"=5\r\ntxt-a\r\n",
        b"%-1\r\n",
        b"~-1\r\n",
        b"!-1\r\n",
    ] {
        assert!(
            matches!(parse_value(buf), Err(ParseError::Protocol(_))),
            "{:?} gave {:?}",
            String::from_utf8_lossy(buf),
            parse_value(buf)
        );
    }
    // A map's pair count is judged against the element limit from its header alone.
    let huge = format!("%{}\r\n", kvraft::client::resp::REPLY_ARRAY_LEN_MAX / 2 + 1);
    assert!(matches!(
        parse_value(huge.as_bytes()),
        Err(ParseError::TooLarge { .. })
    ));
}
