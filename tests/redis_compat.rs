//! Differential tests against a real `redis-server`: the same command sequences go to Redis
//! (no persistence, a free port) and to a one-node kvraft cluster, and the replies must be
//! equal, in RESP2 and after `HELLO 3`. TTLs are compared within a tolerance. Replies that legitimately
//! differ (ids, versions, times, the order of KEYS) are compared by shape or sorted first.
//!
//! Needs Debian's `redis-server` (`make setup` installs it); without it the tests say so and
//! pass, so a machine without Redis can still run `cargo test`.

mod harness;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{connect, free_ports, serial, wait_for, Cluster, Connection, Options};
use kvraft::client::{split_args, Value};

const LONG: Duration = Duration::from_secs(20);

/// A `redis-server` child on a free port, killed on drop.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<Redis> {
    let port = free_ports(1)[0];
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--bind", "127.0.0.1", "--daemonize", "no", "--logfile", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        eprintln!("redis-server is not installed (make setup); skipping the differential test");
        return None;
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let redis = Redis { child, addr };
    wait_for(LONG, "redis-server to answer PING", || {
        connect(addr).ok()?.call_str(&["PING"]).ok()
    });
    Some(redis)
}

/// Both servers, and a connection to each.
struct Pair {
    _redis: Redis,
    cluster: Cluster,
    redis: Connection,
    kv: Connection,
}

fn start_pair() -> Option<Pair> {
    let redis = start_redis()?;
    let cluster = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    });
    let leader = cluster.wait_leader(LONG);
    let kv = wait_for(LONG, "kvraft to accept writes", || {
        let mut c = cluster.client(leader).ok()?;
        (c.call_str(&["FLUSHALL"]).ok()? == Value::ok()).then_some(c)
    });
    let r = connect(redis.addr).expect("connect to redis-server");
    Some(Pair {
        _redis: redis,
        cluster,
        redis: r,
        kv,
    })
}

impl Pair {
    fn both(&mut self, args: &[Vec<u8>]) -> (Value, Value) {
        let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let r = self.redis.call(&a).expect("redis-server reply");
        let k = self.kv.call(&a).expect("kvraft reply");
        (r, k)
    }

    /// Run each line of `script` on both and require equal replies. A line starting with
    /// `sort ` has its array reply sorted first (KEYS returns keys in an unspecified order).
    fn run(&mut self, script: &str) {
        for line in script.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (sort, cmd) = match line.strip_prefix("sort ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let args = split_args(cmd.as_bytes()).expect("a well-formed script line");
            let (mut r, mut k) = self.both(&args);
            if sort {
                sort_array(&mut r);
                sort_array(&mut k);
            }
            assert_eq!(
                k, r,
                "kvraft (left) and redis-server (right) differ on: {line}"
            );
        }
    }
}

fn sort_array(v: &mut Value) {
    if let Value::Array(items) | Value::Set(items) = v {
        items.sort_by_key(|i| format!("{i:?}"));
    }
}

const STRINGS: &str = r#"
FLUSHALL
SET k v
GET k
GET missing
SET k v2 NX
SET k v3 XX GET
SET k v4 NX XX
SETNX k other
SETNX fresh 1
GETSET k newer
GETSET nothing x
GET nothing
GETDEL k
GETDEL k
EXISTS k
MSET a 1 b 2 c 3
MSETNX a 9 z 9
GET z
MSETNX y 1 z 2
MGET a b c y z missing
MSETNX a
MSET a
STRLEN a
STRLEN missing
APPEND a 23
APPEND newapp xyz
INCR a
INCR counter
INCRBY counter 41
DECR counter
DECRBY counter -9
INCRBY counter notanumber
SET big 9223372036854775807
INCR big
SET small -9223372036854775808
DECR small
DECRBY counter -9223372036854775808
SET s "hello world"
INCR s
GETRANGE s 0 4
GETRANGE s -5 -1
GETRANGE s 6 100
GETRANGE s -100 3
GETRANGE s 5 2
GETRANGE s -1 -5
GETRANGE s 0 -1
GETRANGE missing 0 -1
GETRANGE s x 1
SUBSTR s 1 3
SUBSTR s -3 -2
SETRANGE s 6 Redis
GET s
SETRANGE s 20 tail
GET s
SETRANGE fresh2 3 abc
GET fresh2
SETRANGE nokey 5 ""
EXISTS nokey
SETRANGE s 0 ""
SETRANGE s -1 x
SETRANGE s x x
GET
GETRANGE s 1
SET k v XX NX
SET k v BOGUS
"#;

const FLOATS: &str = r#"
FLUSHALL
INCRBYFLOAT f 10.5
INCRBYFLOAT f 0.1
INCRBYFLOAT f -5
INCRBYFLOAT f 5.0e3
INCRBYFLOAT f 2.0e2
INCRBYFLOAT f 1e-20
SET f 1000000
INCRBYFLOAT f 0.1
SET f 0.2
INCRBYFLOAT f 0.1
SET f 123456789.123
INCRBYFLOAT f 0.000001
SET f 1e20
INCRBYFLOAT f 0.1
SET f 3
INCRBYFLOAT f -3
INCRBYFLOAT f -0.000000000000000001
INCRBYFLOAT f abc
INCRBYFLOAT f inf
INCRBYFLOAT f 1e99999
SET f notafloat
INCRBYFLOAT f 1
SET f " 1"
INCRBYFLOAT f 1
INCRBYFLOAT g -1.5
INCRBYFLOAT g 1.5
INCRBYFLOAT g +7
INCRBYFLOAT g .5
INCRBYFLOAT g 5.
SET g 17
INCRBYFLOAT g 1.1e1
SET g 3.14159265358979323846264338327950288
INCRBYFLOAT g 2.71828182845904523536028747135266249
INCRBYFLOAT g 1e300
INCRBYFLOAT g -1e300
"#;

const KEYSPACE: &str = r#"
FLUSHALL
MSET user:1 a user:2 b user:10 c admin x "we ird" y
TYPE user:1
TYPE missing
sort KEYS *
sort KEYS user:*
sort KEYS user:?
sort KEYS user:[12]
sort KEYS user:[^1]*
sort KEYS *i*
sort KEYS "we*"
sort KEYS nothing*
sort KEYS [a-u]*
sort KEYS *\:1
RENAME user:1 user:one
GET user:one
RENAME user:1 other
RENAME user:one user:one
RENAMENX user:one user:2
RENAMENX user:one user:3
RENAMENX user:3 user:3
RENAMENX missing any
COPY user:2 copy
COPY user:2 copy
COPY user:2 copy REPLACE
COPY user:2 copy DB 0 REPLACE
COPY user:2 user:2
COPY missing x
COPY user:2 x BOGUS
GET copy
UNLINK copy user:2 missing
DEL copy
TOUCH admin admin missing
EXISTS admin admin missing
DBSIZE
DBSIZE extra
FLUSHDB
DBSIZE
FLUSHDB ASYNC
FLUSHALL SYNC
FLUSHALL bogus
SET only one
RANDOMKEY
DEL only
RANDOMKEY
SCAN 0
SCAN x
SCAN 0 COUNT 0
SCAN 0 COUNT
SCAN 0 MATCH
SCAN 0 BOGUS 1
SELECT 0
SELECT x
WAIT 0 0
WAIT 1 -1
WAIT x 0
ECHO hi
PING
PING hello
CLIENT GETNAME
CLIENT SETNAME app
CLIENT GETNAME
CLIENT SETNAME "a b"
CLIENT GETNAME
CLIENT NOSUCH
CLIENT GETNAME x
CLIENT
COMMAND NOSUCH
COMMAND COUNT x
CONFIG NOSUCH
CONFIG GET
CONFIG
CONFIG GET save
CONFIG GET nosuchparam
MULTI
DISCARD
EXEC
DISCARD
NOSUCHCOMMAND a b
"#;

#[test]
fn string_commands_answer_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    p.run(STRINGS);
}

#[test]
fn incrbyfloat_computes_and_formats_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    p.run(FLOATS);
}

#[test]
fn keyspace_commands_answer_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    p.run(KEYSPACE);
}

#[test]
fn resp3_replies_match_after_hello_3() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    let hello = |c: &mut Connection| match c.call_str(&["HELLO", "3"]).unwrap() {
        Value::Map(pairs) => pairs,
        other => panic!("HELLO 3 gave {other:?}"),
    };
    let (r, k) = (hello(&mut p.redis), hello(&mut p.kv));
    let keys = |m: &[(Value, Value)]| m.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&k), keys(&r), "HELLO map keys");
    let field = |m: &[(Value, Value)], name: &str| {
        m.iter()
            .find(|(k, _)| *k == Value::bulk_str(name))
            .map(|(_, v)| v.clone())
    };
    for name in ["server", "proto", "mode", "role", "modules"] {
        assert_eq!(field(&k, name), field(&r, name), "HELLO field {name}");
    }
    p.run(STRINGS);
    p.run(FLOATS);
    p.run(KEYSPACE);
    p.run("CONFIG GET save\nCONFIG GET appendonly\nHELLO 4\nHELLO x\nHELLO 3 SETNAME \"a b\"\nHELLO 3 BOGUS\nHELLO 3 AUTH nobody pw");
    for c in [&mut p.redis, &mut p.kv] {
        match c.call_str(&["INFO", "server"]).unwrap() {
            Value::Verbatim { format, .. } => assert_eq!(&format, b"txt"),
            other => panic!("INFO in RESP3 gave {other:?}"),
        }
        assert!(matches!(
            c.call_str(&["CLIENT", "INFO"]).unwrap(),
            Value::Verbatim { .. }
        ));
        assert!(!c.call_str(&["HELLO", "2"]).unwrap().is_error());
    }
    // Back on RESP2, the nulls are RESP2's again.
    p.run("GET missing\nCONFIG GET save");
}

#[test]
fn scan_returns_every_key_once_and_command_info_matches() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for i in 0..1000 {
        mset.push(format!("key:{i}").into_bytes());
        mset.push(b"v".to_vec());
    }
    let (r, k) = p.both(&mset);
    assert_eq!(k, r);
    for (pattern, count) in [
        ("*", "10"),
        ("key:1*", "7"),
        ("nomatch*", "50"),
        ("*", "1000"),
    ] {
        let want = full_scan(&mut p.redis, pattern, count);
        let got = full_scan(&mut p.kv, pattern, count);
        assert_eq!(got, want, "SCAN MATCH {pattern} COUNT {count}");
    }
    // TIME: two decimal strings, seconds and microseconds, close to Redis's own.
    let (r, k) = p.both(&[b"TIME".to_vec()]);
    let secs = |v: &Value| match v {
        Value::Array(parts) if parts.len() == 2 => match &parts[0] {
            Value::Bulk(s) => String::from_utf8_lossy(s).parse::<i64>().unwrap(),
            other => panic!("{other:?}"),
        },
        other => panic!("TIME gave {other:?}"),
    };
    assert!((secs(&r) - secs(&k)).abs() <= 5, "TIME {r:?} vs {k:?}");
    let all = full_scan(&mut p.kv, "*", "33");
    assert_eq!(all.len(), 1000);
    assert!(full_scan_typed(&mut p.kv, "hash").is_empty());
    assert_eq!(full_scan_typed(&mut p.kv, "string").len(), 1000);
    // The first six fields of COMMAND INFO (name, arity, flags, key positions) match.
    for name in [
        "get",
        "set",
        "del",
        "mset",
        "incrbyfloat",
        "rename",
        "scan",
        "getdel",
    ] {
        let (r, k) = p.both(&[
            b"COMMAND".to_vec(),
            b"INFO".to_vec(),
            name.as_bytes().to_vec(),
        ]);
        let head = |v: &Value| match v {
            Value::Array(outer) => match &outer[0] {
                Value::Array(fields) => fields[..6].to_vec(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let (mut r, mut k) = (head(&r), head(&k));
        sort_array(&mut r[2]);
        sort_array(&mut k[2]);
        assert_eq!(k, r, "COMMAND INFO {name}");
    }
    drop(p.cluster);
}

/// Every key a full SCAN returns (sorted; duplicates kept, so a repeat shows).
fn full_scan(c: &mut Connection, pattern: &str, count: &str) -> Vec<Vec<u8>> {
    scan_loop(c, &["MATCH", pattern, "COUNT", count])
}

fn full_scan_typed(c: &mut Connection, kind: &str) -> Vec<Vec<u8>> {
    scan_loop(c, &["TYPE", kind, "COUNT", "100"])
}

fn scan_loop(c: &mut Connection, opts: &[&str]) -> Vec<Vec<u8>> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    for _ in 0..100_000 {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(opts);
        let reply = c.call_str(&args).unwrap();
        let Value::Array(parts) = reply else {
            panic!("SCAN gave {reply:?}")
        };
        let (Value::Bulk(next), Value::Array(batch)) = (&parts[0], &parts[1]) else {
            panic!("SCAN gave {parts:?}")
        };
        for k in batch {
            let Value::Bulk(k) = k else { panic!("{k:?}") };
            keys.push(k.clone());
        }
        cursor = String::from_utf8(next.clone()).unwrap();
        cursor.parse::<u64>().expect("a decimal 64-bit cursor");
        if cursor == "0" {
            keys.sort();
            return keys;
        }
    }
    panic!("SCAN did not finish");
}

// --- Transactions (MULTI/EXEC/DISCARD/WATCH/UNWATCH) --------------------------------------

const TRANSACTIONS: &str = r#"
FLUSHALL
MULTI
SET k v
INCR k
SET k v bogus
GET k
MGET k nokey
PING
PING hello
ECHO hi
SELECT 0
UNWATCH
EXEC
GET k
MULTI
SET discarded 1
DISCARD
EXISTS discarded
EXEC
DISCARD
MULTI
MULTI
SET a 1
WATCH a
EXEC
GET a
MULTI
SET never 1
GET
SET never 2
EXEC
EXISTS never
MULTI
SET never 1
FOO a
EXEC
EXISTS never
MULTI
EXEC
MULTI x
WATCH
UNWATCH x
UNWATCH
MULTI
SET never 1
EXEC x
EXEC
EXISTS never
MULTI
INCRBY n notanumber
INCRBY n 5
APPEND n x
INCR n
DECR n
GETDEL n
EXEC
"#;

/// Queued replies, EXECABORT after a command that failed to queue, runtime errors that fail
/// their command alone, DISCARD, nested MULTI, and the errors outside a transaction.
#[test]
fn transactions_queue_abort_and_exec_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    p.run(TRANSACTIONS);
}

/// A second connection to each server (the leader's, for kvraft).
fn other_connections(p: &Pair) -> (Connection, Connection) {
    let r = connect(p._redis.addr).expect("connect to redis-server");
    let leader = p.cluster.wait_leader(LONG);
    let k = p.cluster.client(leader).expect("connect to kvraft");
    (r, k)
}

/// WATCH as Redis 7 does it: a write (even of the same value), a deletion, a creation and
/// deletion of a missing key, a TTL change or an expiry by another connection after WATCH
/// makes EXEC answer a null array and apply nothing; reads, no-op writes and UNWATCH do not.
#[test]
fn watch_aborts_exec_after_another_connection_changes_the_key_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    let (mut r2, mut k2) = other_connections(&p);
    let mut other = |line: &str| {
        let args = split_args(line.as_bytes()).unwrap();
        let a: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let (r, k) = (r2.call(&a).unwrap(), k2.call(&a).unwrap());
        assert_eq!(
            k, r,
            "kvraft (left) and redis-server (right) differ on: {line}"
        );
    };
    // Each case: what this connection does first, what the other one does, then a
    // transaction; both servers must agree on every reply (EXEC's null array included).
    let cases: &[(&str, &str)] = &[
        ("SET w 1\nWATCH w", "SET w 2"),
        ("SET w 1\nWATCH w", "SET w 1"),
        ("SET w 1\nWATCH w", "GET w"),
        ("SET w 1\nWATCH w", "DEL w"),
        ("DEL w\nWATCH w", "SET w 1\nDEL w"),
        ("DEL w\nWATCH w", "DEL w"),
        ("SET w 1\nWATCH w", "EXPIRE w 100"),
        ("SET w 1\nWATCH w", "PERSIST w"),
        ("SET w 1\nWATCH w", "INCR notw\nSET w 1 NX"),
        ("SET w 1\nWATCH w\nUNWATCH", "SET w 9"),
        ("SET w 1\nWATCH w x y\nWATCH z", "SET z 1"),
        ("SET w 1\nWATCH w\nMULTI\nDISCARD", "SET w 3"),
        ("SET w 1\nWATCH w\nEXEC", "SET w 4"),
    ];
    for (mine, theirs) in cases {
        p.run(mine);
        for line in theirs.lines() {
            other(line);
        }
        p.run("MULTI\nINCR w\nGET w\nSET out done\nEXEC\nGET out\nDEL out\nGET w");
    }
    // A key that expires after WATCH counts as changed (Redis 7).
    p.run("SET e 1 PX 200\nWATCH e");
    for c in [&mut p.redis, &mut p.kv] {
        wait_for(LONG, "the watched key to expire", || {
            (c.call_str(&["PTTL", "e"]).ok()? == Value::Integer(-2)).then_some(())
        });
    }
    p.run("MULTI\nSET out 1\nEXEC\nEXISTS out");
}

/// COMMAND INFO's first six fields (name, arity, flags, key positions) for the transaction
/// commands.
#[test]
fn transaction_commands_are_described_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    for name in ["multi", "exec", "discard", "watch", "unwatch"] {
        let (r, k) = p.both(&[
            b"COMMAND".to_vec(),
            b"INFO".to_vec(),
            name.as_bytes().to_vec(),
        ]);
        let head = |v: &Value| match v {
            Value::Array(outer) => match &outer[0] {
                Value::Array(fields) => fields[..6].to_vec(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let (mut r, mut k) = (head(&r), head(&k));
        sort_array(&mut r[2]);
        sort_array(&mut k[2]);
        assert_eq!(k, r, "COMMAND INFO {name}");
    }
}

/// The same transactions in RESP3: EXEC's null is RESP3's null, its array holds RESP3 replies.
#[test]
fn transactions_answer_in_resp3_as_redis_does() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    let (mut r2, mut k2) = other_connections(&p);
    // HELLO's map differs (ids, versions): switch both without comparing it.
    p.redis.call_str(&["HELLO", "3"]).unwrap();
    p.kv.call_str(&["HELLO", "3"]).unwrap();
    p.run("SET w 1\nWATCH w\nMULTI\nGET w\nGET nokey\nINCR w\nEXEC");
    p.run("WATCH w");
    r2.call_str(&["SET", "w", "x"]).unwrap();
    k2.call_str(&["SET", "w", "x"]).unwrap();
    p.run("MULTI\nGET w\nEXEC");
}

/// Read exactly `want.len()` bytes from `s` (the reply to one command).
fn read_exact_reply(s: &mut std::net::TcpStream, want: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got).expect("a reply");
    got
}

/// A follower forwards reads and writes to the leader with the client's protocol, so a
/// RESP3 client behind a follower gets RESP3's null, and a RESP2 client RESP2's; and a SCAN
/// started on one node continues on another after the leader changed, missing no key.
#[test]
fn followers_forward_the_protocol_and_scans_survive_a_leader_change() {
    use std::io::Write;
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut s = std::net::TcpStream::connect(c.node(follower).client).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"GET missing\r\nSET k v\r\n").unwrap();
    assert_eq!(
        read_exact_reply(&mut s, b"$-1\r\n+OK\r\n"),
        b"$-1\r\n+OK\r\n"
    );
    s.write_all(b"HELLO 3\r\n").unwrap();
    let mut buf = Vec::new();
    while kvraft::client::parse_value(&buf).unwrap().is_none() {
        let mut chunk = [0u8; 4096];
        let n = std::io::Read::read(&mut s, &mut chunk).unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(
        buf.starts_with(b"%7\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Forwarded read (GET), forwarded write (SET ... GET), both nulls in RESP3.
    s.write_all(b"GET missing\r\nSET new v GET\r\nGET k\r\n")
        .unwrap();
    let want = b"_\r\n_\r\n$1\r\nv\r\n";
    assert_eq!(read_exact_reply(&mut s, want), want);

    // 2,000 keys; half a scan on the leader, a leader change, the rest on another node.
    let mut kv = c.client(leader).unwrap();
    let mut mset: Vec<String> = vec!["MSET".into()];
    for i in 0..2000 {
        mset.push(format!("scan:{i}"));
        mset.push("v".into());
    }
    let args: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(kv.call_str(&args).unwrap(), Value::ok());
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    let step =
        |cl: &mut Connection, cursor: &str, seen: &mut std::collections::BTreeSet<Vec<u8>>| {
            let reply = cl
                .call_str(&["SCAN", cursor, "MATCH", "scan:*", "COUNT", "100"])
                .unwrap();
            let Value::Array(parts) = reply else {
                panic!("{reply:?}")
            };
            let (Value::Bulk(next), Value::Array(keys)) = (&parts[0], &parts[1]) else {
                panic!("{parts:?}")
            };
            for k in keys {
                let Value::Bulk(k) = k else { panic!() };
                seen.insert(k.clone());
            }
            String::from_utf8(next.clone()).unwrap()
        };
    for _ in 0..5 {
        cursor = step(&mut kv, &cursor, &mut seen);
    }
    assert_ne!(cursor, "0");
    let target = follower;
    assert_eq!(
        kv.call_str(&["TRANSFER", &target.to_string()]).unwrap(),
        Value::ok()
    );
    wait_for(LONG, "the leader to move", || {
        (c.leader() == Some(target)).then_some(())
    });
    let other = (1..=3).find(|&id| id != target).unwrap();
    let mut rest = c.client(other).unwrap();
    for _ in 0..10_000 {
        cursor = step(&mut rest, &cursor, &mut seen);
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0");
    assert_eq!(seen.len(), 2000, "keys missed across the leader change");
}

/// Random INCRBYFLOAT sums, from tiny to huge and with many digits, checked against
/// redis-server digit for digit.
#[test]
fn random_incrbyfloat_sums_match_redis_digit_for_digit() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    let mut rng = kvraft::prng::Prng::new(15);
    let mut script = String::from("FLUSHALL\n");
    for i in 0..400 {
        let mut num = || {
            let sign = if rng.chance(1, 2) { "-" } else { "" };
            let int = rng.next_u64() % 10u64.pow(rng.range(0, 12) as u32);
            let frac = rng.next_u64() % 10u64.pow(rng.range(0, 10) as u32);
            match rng.range(0, 3) {
                0 => format!("{sign}{int}.{frac}"),
                1 => format!("{sign}{int}.{frac}e{}", rng.range(0, 80) as i64 - 40),
                _ => format!("{sign}{int}"),
            }
        };
        let (a, b) = (num(), num());
        script.push_str(&format!("SET f{i} {a}\nINCRBYFLOAT f{i} {b}\nGET f{i}\n"));
    }
    p.run(&script);
}

// ---------------------------------------------------------------------------------------------
// TTLs (kvttl). Lines starting with `~` reply an integer that depends on the time: it must be
// within a tolerance of Redis's (2 for seconds, 2000 for ms: the machine is loaded), with the
// same sign. Keys expired "in the past" (PXAT 1) are never counted by DBSIZE here: Redis
// counts an expired key until its active cycle deletes it, kvraft never does.

const TTLS: &str = r#"
FLUSHALL
SET k v EX 100
~TTL k
~PTTL k
SET k v2 KEEPTTL
~TTL k
GET k
SET k v
TTL k
PTTL k
SET k v PX 100000 NX
SET k v PX 100000 XX GET
~PTTL k
SET k v EX 10 EX 20
~TTL k
SET k v KEEPTTL KEEPTTL
~TTL k
SET k v EX 0
SET k v EX -1
SET k v PX 0
SET k v EX abc
SET k v EX 1.5
SET k v EX 10 PX 10
SET k v KEEPTTL EX 10
SET k v EX 10 KEEPTTL
SET k v EX
SET k v PXAT
SET k v EX 9223372036854775807
SET k v EX 9223372036854775
SET k v PX 9223372036854775807
SET k v EXAT 0
SET k v NX XX EX 10
~TTL k
SETEX s 100 v
~TTL s
SETEX s 0 v
SETEX s -1 v
SETEX s x v
SETEX s 10
PSETEX p 100000 v
~PTTL p
PSETEX p -5 v
PSETEX p 0 v
TTL nokey
PTTL nokey
EXPIRETIME nokey
PEXPIRETIME nokey
EXPIRE nokey 10
SET k v
EXPIRETIME k
EXPIRE k 100
~TTL k
EXPIRE k 200 NX
EXPIRE k 200 XX
~TTL k
EXPIRE k 100 GT
EXPIRE k 300 GT
~TTL k
EXPIRE k 400 LT
EXPIRE k 50 LT
~TTL k
EXPIRE k 60 xx gt
~TTL k
EXPIRE k 10 NX XX
EXPIRE k 10 NX GT
EXPIRE k 10 GT LT
EXPIRE k 10 foo
EXPIRE k abc
EXPIRE k
EXPIRE k 9223372036854775807
PEXPIRE k 9223372036854775807
PERSIST k
PERSIST k
PERSIST nokey
TTL k
EXPIRE k 10 GT
EXPIRE k 10 LT
~TTL k
PERSIST k
EXPIRE k 10 XX
PEXPIRE k 100000
~PTTL k
EXPIREAT k 4102444800
EXPIRETIME k
PEXPIRETIME k
~TTL k
PEXPIREAT k 4102444800123
PEXPIRETIME k
EXPIRETIME k
PEXPIREAT k 1
EXISTS k
GET k
TTL k
SET k v
EXPIRE k -5
EXISTS k
SET k v
PEXPIRE k 0
EXISTS k
SET k v
EXPIREAT k 0
GET k
SET k v
GETEX k
GETEX k PERSIST
TTL k
GETEX k EX 100
~TTL k
GETEX k PX 100000
~PTTL k
GETEX k EXAT 4102444800
EXPIRETIME k
GETEX k PXAT 4102444800999
PEXPIRETIME k
GETEX k PX 0
GETEX k EX -3
GETEX k EX 10 PERSIST
GETEX k PERSIST EX 10
GETEX k KEEPTTL
GETEX k EX
GETEX k bogus
GETEX
GETEX nokey EX 10
GETEX nokey PERSIST
GETEX k PXAT 1
EXISTS k
GET k
SET n 5 PXAT 1
GET n
INCR n
TTL n
SET a x PXAT 1
APPEND a yz
GET a
SET nx 1 PXAT 1
SET nx 2 NX
GET nx
TTL nx
SET g 1 PXAT 1
SET g 2 GET
SET xx 1 PXAT 1
SET xx 2 XX
GET xx
SET d 1 PXAT 1
DEL d
SET r 1 PXAT 1
RENAME r r2
SET e 1 PXAT 1
EXPIRE e 100
SET gd 1 PXAT 1
GETDEL gd
SET r1 v EX 100
RENAME r1 r2
~TTL r2
TTL r1
SET r3 x EX 500
RENAME r2 r3
~TTL r3
SET r4 y
RENAME r4 r3
TTL r3
EXPIRE r3 100
COPY r3 r5
~TTL r5
SET r6 z
COPY r6 r5 REPLACE
TTL r5
DEL r3
TTL r3
SET r3 again
TTL r3
SET c 1 EX 100
INCR c
~TTL c
INCRBY c 5
DECR c
INCRBYFLOAT c 0.5
~TTL c
APPEND c 0
SETRANGE c 0 9
~TTL c
GET c
GETSET c 2
TTL c
SET m 1 EX 100
MSET m 2
TTL m
SET m 1 EX 100
MSETNX m 3 other 4
~TTL m
FLUSHALL
SET x 1 EX 100
SET y 2
SET z 3 PXAT 1
sort KEYS *
EXISTS x y z
TYPE z
TYPE x
STRLEN z
MGET x y z
"#;

/// Run `script` on both servers; a line starting with `~` compares integer replies within a
/// tolerance instead of exactly.
fn run_with_tolerance(p: &mut Pair, script: &str) {
    for line in script.lines().map(str::trim) {
        let Some(cmd) = line.strip_prefix('~') else {
            p.run(line);
            continue;
        };
        let args = split_args(cmd.as_bytes()).expect("a well-formed script line");
        let (r, k) = p.both(&args);
        let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
        let tolerance = if name.starts_with('p') { 2000 } else { 2 };
        match (&r, &k) {
            (Value::Integer(r), Value::Integer(k)) => assert!(
                (r - k).abs() <= tolerance && r.signum() == k.signum(),
                "kvraft {k} vs redis-server {r} (within {tolerance}) on: {cmd}"
            ),
            _ => panic!("kvraft {k:?} vs redis-server {r:?} on: {cmd}"),
        }
    }
}

#[test]
fn ttl_commands_answer_as_redis_does_within_a_tolerance() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    run_with_tolerance(&mut p, TTLS);
    // COMMAND INFO's first six fields for the TTL commands.
    for name in [
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "ttl",
        "pttl",
        "expiretime",
        "pexpiretime",
        "persist",
        "getex",
        "setex",
        "psetex",
    ] {
        let (r, k) = p.both(&[
            b"COMMAND".to_vec(),
            b"INFO".to_vec(),
            name.as_bytes().to_vec(),
        ]);
        let head = |v: &Value| match v {
            Value::Array(outer) => match &outer[0] {
                Value::Array(fields) => fields[..6].to_vec(),
                other => panic!("{name}: {other:?}"),
            },
            other => panic!("{other:?}"),
        };
        let (mut r, mut k) = (head(&r), head(&k));
        sort_array(&mut r[2]);
        sort_array(&mut k[2]);
        assert_eq!(k, r, "COMMAND INFO {name}");
    }
}

/// A key with a short PX is readable before its deadline and gone after it, on both servers
/// (polled with a deadline: the machine is loaded, so no fixed sleep decides anything).
#[test]
fn a_short_px_expires_on_both_servers() {
    let _g = serial();
    let Some(mut p) = start_pair() else { return };
    p.run("SET short v PX 300\nSET long v PX 600000");
    for c in [&mut p.redis, &mut p.kv] {
        wait_for(LONG, "the key to expire", || {
            let v = c.call_str(&["GET", "short"]).ok()?;
            (v == Value::Nil).then_some(())
        });
        assert_eq!(c.call_str(&["EXISTS", "short"]).unwrap(), Value::Integer(0));
        assert_eq!(c.call_str(&["TTL", "short"]).unwrap(), Value::Integer(-2));
        assert_eq!(c.call_str(&["GET", "long"]).unwrap(), Value::bulk_str("v"));
    }
}
