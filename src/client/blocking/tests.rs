//! The blocking client against a tiny server on 127.0.0.1 that runs one script per test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::cluster::{idempotent, ClusterClient};
use super::{ClientError, Connection, Options};
use crate::client::resp::parse_command;
use crate::client::value::Value;

const OPTIONS: Options = Options::new(Duration::from_secs(5), Duration::from_secs(20));

/// Accept one connection and run `script` on it; the handle returns what the script returns.
fn server<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || script(listener.accept().unwrap().0));
    (addr, handle)
}

/// Read `n` whole commands from the client.
fn read_commands(stream: &mut TcpStream, n: usize) -> Vec<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut commands = Vec::new();
    let mut chunk = [0u8; 4096];
    while commands.len() < n {
        while let Some((args, used)) = parse_command(&buf).unwrap() {
            buf.drain(..used);
            commands.push(args);
        }
        if commands.len() == n {
            break;
        }
        let got = stream.read(&mut chunk).unwrap();
        assert!(
            got > 0,
            "the client closed after {} commands",
            commands.len()
        );
        buf.extend_from_slice(&chunk[..got]);
    }
    commands
}

fn words(s: &str) -> Vec<Vec<u8>> {
    s.split_whitespace()
        .map(|w| w.as_bytes().to_vec())
        .collect()
}

#[test]
fn a_reply_arriving_one_byte_at_a_time_is_returned_whole() {
    let (addr, srv) = server(|mut s| {
        let got = read_commands(&mut s, 1);
        s.set_nodelay(true).unwrap();
        for b in b"*2\r\n$3\r\nabc\r\n:-7\r\n" {
            s.write_all(&[*b]).unwrap();
        }
        got
    });
    let mut c = Connection::connect(addr, OPTIONS).unwrap();
    let reply = c.call_str(&["GET", "k"]).unwrap();
    assert_eq!(
        reply,
        Value::Array(vec![Value::Bulk(b"abc".to_vec()), Value::Integer(-7)])
    );
    assert_eq!(srv.join().unwrap(), vec![words("GET k")]);
}

#[test]
fn pipelined_commands_go_out_together_and_their_replies_come_back_in_order() {
    let (addr, srv) = server(|mut s| {
        let got = read_commands(&mut s, 3);
        // All three replies in one write: the client must split them itself.
        s.write_all(b"+OK\r\n$1\r\nv\r\n:3\r\n").unwrap();
        got
    });
    let mut c = Connection::connect(addr, OPTIONS).unwrap();
    c.queue(&[b"SET", b"k", b"v"]);
    c.queue(&[b"GET", b"k"]);
    c.queue(&[b"DBSIZE"]);
    c.flush().unwrap();
    assert_eq!(c.read_reply().unwrap(), Value::ok());
    assert_eq!(c.read_reply().unwrap(), Value::Bulk(b"v".to_vec()));
    assert_eq!(c.read_reply().unwrap(), Value::Integer(3));
    assert_eq!(
        srv.join().unwrap(),
        vec![words("SET k v"), words("GET k"), words("DBSIZE")]
    );
    // Nothing is left over: the server has closed, and the next read says so.
    assert!(matches!(c.read_reply(), Err(ClientError::Closed)));
}

#[test]
fn raw_bytes_reach_the_server_unchanged_after_queued_commands() {
    let (addr, srv) = server(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = Connection::connect(addr, OPTIONS).unwrap();
    c.queue(&[b"PING"]);
    c.send_raw(b"*1\r\n$-7\r\n\x00\xff").unwrap();
    drop(c);
    assert_eq!(
        srv.join().unwrap(),
        b"*1\r\n$4\r\nPING\r\n*1\r\n$-7\r\n\x00\xff".to_vec()
    );
}

#[test]
fn a_connection_closed_in_the_middle_of_a_reply_is_reported_as_closed() {
    let (addr, srv) = server(|mut s| {
        read_commands(&mut s, 1);
        s.write_all(b"$10\r\nabc").unwrap();
    });
    let mut c = Connection::connect(addr, OPTIONS).unwrap();
    c.send(&[b"GET", b"k"]).unwrap();
    srv.join().unwrap();
    let err = c.read_reply().unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(err.to_string(), "connection closed by the server");
}

#[test]
fn a_server_that_never_answers_makes_the_read_time_out() {
    let (done, wait) = mpsc::channel::<()>();
    let (addr, srv) = server(move |mut s| {
        read_commands(&mut s, 1);
        s.write_all(b"+HALF").unwrap(); // never finished
        let _ = wait.recv(); // hold the connection open until the client gave up
    });
    let options = Options::new(Duration::from_secs(5), Duration::from_millis(200));
    let mut c = Connection::connect(addr, options).unwrap();
    let err = c.call(&[b"PING"]).unwrap_err();
    assert!(matches!(err, ClientError::TimedOut), "{err:?}");
    done.send(()).unwrap();
    srv.join().unwrap();
}

#[test]
fn a_server_that_never_reads_makes_a_large_write_time_out() {
    let (done, wait) = mpsc::channel::<()>();
    let (addr, srv) = server(move |_s| {
        let _ = wait.recv(); // hold the connection open, reading nothing
    });
    let options = Options::new(Duration::from_secs(5), Duration::from_millis(200));
    let mut c = Connection::connect(addr, options).unwrap();
    // Far more than the kernel's socket buffers on both ends can take.
    let err = c.send_raw(&vec![b'x'; 64 * 1024 * 1024]).unwrap_err();
    assert!(
        matches!(&err, ClientError::Write(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{err:?}"
    );
    done.send(()).unwrap();
    srv.join().unwrap();
}

#[test]
fn bytes_that_are_not_resp_are_a_protocol_error_not_a_panic() {
    for garbage in [&b"@@@\r\n"[..], b"$99999999999999\r\n", b":12x\r\n"] {
        let (addr, srv) = server(move |mut s| {
            read_commands(&mut s, 1);
            s.write_all(garbage).unwrap();
        });
        let mut c = Connection::connect(addr, OPTIONS).unwrap();
        let err = c.call(&[b"PING"]).unwrap_err();
        assert!(err.is_protocol(), "{garbage:?}: {err:?}");
        srv.join().unwrap();
    }
}

#[test]
fn a_reply_larger_than_the_buffer_limit_is_refused_before_it_is_all_read() {
    let (addr, srv) = server(|mut s| {
        read_commands(&mut s, 1);
        let _ = s.write_all(format!("${}\r\n", 1000).as_bytes());
        let _ = s.write_all(&[b'x'; 1000]);
        let _ = s.write_all(b"\r\n");
    });
    let options = Options {
        reply_size_max: 100,
        ..OPTIONS
    };
    let mut c = Connection::connect(addr, options).unwrap();
    let err = c.call(&[b"GET", b"big"]).unwrap_err();
    assert!(
        matches!(err, ClientError::ReplyTooLarge { len: 100, max: 100 }),
        "{err:?}"
    );
    srv.join().unwrap();
}

#[test]
fn a_reply_of_several_mebibytes_is_read_through_a_growing_buffer_and_the_next_follows() {
    let big = vec![b'z'; 5 * 1024 * 1024 + 3];
    let sent = big.clone();
    let (addr, srv) = server(move |mut s| {
        read_commands(&mut s, 2);
        s.write_all(&Value::Bulk(sent).to_bytes()).unwrap();
        s.write_all(b"+PONG\r\n").unwrap();
    });
    let mut c = Connection::connect(addr, OPTIONS).unwrap();
    c.queue(&[b"GET", b"big"]);
    c.queue(&[b"PING"]);
    c.flush().unwrap();
    assert_eq!(c.read_reply().unwrap(), Value::Bulk(big));
    assert_eq!(c.read_reply().unwrap(), Value::Simple("PONG".into()));
    srv.join().unwrap();
}

#[test]
fn connecting_to_a_closed_port_names_the_address() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = match Connection::connect(addr, OPTIONS) {
        Err(e) => e,
        Ok(_) => panic!("connected to a closed port"),
    };
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&addr.to_string()), "{err}");
}

/// Serve every connection to `listener`: the script gets the number of commands seen so far
/// (over all connections) and the command, and answers it, or closes the connection (`None`).
/// Returns the count of commands seen.
fn member(
    listener: TcpListener,
    script: impl Fn(usize, &[Vec<u8>]) -> Option<Value> + Send + Sync + 'static,
) -> Arc<AtomicUsize> {
    let seen = Arc::new(AtomicUsize::new(0));
    let (script, counter) = (Arc::new(script), seen.clone());
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (script, counter) = (script.clone(), counter.clone());
            thread::spawn(move || loop {
                let mut one = Vec::new();
                let mut byte = [0u8; 1];
                // Byte by byte, so that no command is read past the one being answered.
                while parse_command(&one).ok().flatten().is_none() {
                    match conn.read(&mut byte) {
                        Ok(1) => one.push(byte[0]),
                        _ => return,
                    }
                }
                let (args, _) = parse_command(&one).unwrap().unwrap();
                let Some(reply) = script(counter.fetch_add(1, Ordering::SeqCst), &args) else {
                    return; // drops the connection unanswered
                };
                if conn.write_all(&reply.to_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    seen
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn a_command_whose_connection_broke_after_sending_is_resent_only_if_idempotent() {
    for (command, resent) in [("GET k", true), ("INCR k", false)] {
        let (l, addr) = listener();
        // The first command is dropped unanswered; any later one is answered.
        let seen = member(l, |n, _| (n > 0).then_some(Value::Integer(1)));
        let mut client = ClusterClient::new(vec![addr], OPTIONS);
        let reply = client.call(&words(command));
        if resent {
            assert_eq!(reply, Ok(Value::Integer(1)), "{command}");
            assert_eq!(seen.load(Ordering::SeqCst), 2, "{command}");
        } else {
            let err = reply.unwrap_err();
            assert!(err.contains("closed"), "{command}: {err}");
            assert_eq!(seen.load(Ordering::SeqCst), 1, "{command} was resent");
        }
    }
}

#[test]
fn clusterdown_moves_to_the_next_member_and_a_redirect_is_followed_only_once() {
    let (down, down_addr) = listener();
    let (up, up_addr) = listener();
    let down_seen = member(down, |_, _| Some(Value::error("CLUSTERDOWN no leader")));
    let up_seen = member(up, |_, _| Some(Value::ok()));
    let mut client = ClusterClient::new(vec![down_addr, up_addr], OPTIONS);
    assert_eq!(client.call(&words("SET k v")), Ok(Value::ok()));
    assert_eq!(down_seen.load(Ordering::SeqCst), 1);
    assert_eq!(up_seen.load(Ordering::SeqCst), 1);

    // Two members that redirect to each other: the second redirect is the answer.
    let (a, a_addr) = listener();
    let (b, b_addr) = listener();
    let to_b = format!("REDIRECT {b_addr}");
    let to_a = format!("REDIRECT {a_addr}");
    let a_seen = member(a, move |_, _| Some(Value::error(to_b.clone())));
    let b_seen = member(b, move |_, _| Some(Value::error(to_a.clone())));
    let mut client = ClusterClient::new(vec![a_addr.clone()], OPTIONS);
    let reply = client.call(&words("GET k"));
    assert_eq!(reply, Ok(Value::error(format!("REDIRECT {a_addr}"))));
    assert_eq!(
        (a_seen.load(Ordering::SeqCst), b_seen.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[test]
fn only_increments_are_never_resent() {
    assert!(!idempotent(&words("incr k")));
    assert!(!idempotent(&words("DECRBY k 2")));
    assert!(idempotent(&words("SET k v")));
}

/// A member that keeps sessions as the state machine does: `SESSION OPEN` answers the next
/// id; a `SESSION RUN` of a sequence seen before answers the saved reply. `INCR` counts in
/// `applied`. `fault(n, args)` may replace the reply to the n-th command (n from 0):
/// `Some(None)` drops the connection after applying, `Some(Some(v))` answers `v` instead,
/// after applying unless `v` is a refusal (`-TRYAGAIN`, `-SESSIONEXPIRED`).
#[allow(clippy::type_complexity)]
fn session_member(
    listener: TcpListener,
    fault: impl Fn(usize, &[Vec<u8>]) -> Option<Option<Value>> + Send + Sync + 'static,
) -> (Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<Vec<Vec<u8>>>>>) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let applied = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let saved: Arc<Mutex<HashMap<(u64, u64), Value>>> = Arc::default();
    let next_id = Arc::new(AtomicUsize::new(7));
    let (a, l) = (applied.clone(), log.clone());
    member(listener, move |n, args| {
        l.lock().unwrap().push(args.to_vec());
        let fault = fault(n, args);
        if let Some(Some(Value::Error(e))) = &fault {
            if e.starts_with("TRYAGAIN") || e.starts_with("SESSIONEXPIRED") {
                return Some(Value::Error(e.clone()));
            }
        }
        let text: Vec<String> = args
            .iter()
            .map(|a| String::from_utf8_lossy(a).to_uppercase())
            .collect();
        let reply = match text.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["SESSION", "OPEN"] => Value::Integer(next_id.fetch_add(1, Ordering::SeqCst) as i64),
            ["SESSION", "RUN", id, seq, _, "INCR", _] => {
                let key = (id.parse().unwrap(), seq.parse().unwrap());
                let mut saved = saved.lock().unwrap();
                saved
                    .entry(key)
                    .or_insert_with(|| Value::Integer(a.fetch_add(1, Ordering::SeqCst) as i64 + 1))
                    .clone()
            }
            ["INCR", _] => Value::Integer(a.fetch_add(1, Ordering::SeqCst) as i64 + 1),
            _ => Value::error("ERR unexpected"),
        };
        fault.unwrap_or(Some(reply))
    });
    (applied, log)
}

#[test]
fn a_session_write_is_resent_with_its_sequence_after_any_failure_and_counts_once() {
    let (l, addr) = listener();
    // Command 1 (the first RUN) applies, then its connection drops; command 2 (the resend)
    // gets -UNKNOWN; command 3 (the next resend) is answered.
    let (applied, log) = session_member(l, |n, _| match n {
        1 => Some(None),
        2 => Some(Some(Value::error(
            "UNKNOWN leader lost; the command may or may not have been applied",
        ))),
        _ => None,
    });
    let mut client = ClusterClient::new(vec![addr], OPTIONS).with_sessions();
    assert_eq!(client.call(&words("INCR n")), Ok(Value::Integer(1)));
    assert_eq!(applied.load(Ordering::SeqCst), 1, "applied once");
    assert_eq!(client.session_id(), Some(7));
    // Reads are not tagged; the next write takes the next sequence.
    assert_eq!(client.call(&words("INCR n")), Ok(Value::Integer(2)));
    let log = log.lock().unwrap().clone();
    let expected = [
        "SESSION OPEN",
        "SESSION RUN 7 1 1 INCR n",
        "SESSION RUN 7 1 1 INCR n",
        "SESSION RUN 7 1 1 INCR n",
        "SESSION RUN 7 2 2 INCR n",
    ];
    let expected: Vec<_> = expected.iter().map(|s| words(s)).collect();
    assert_eq!(log, expected);
}

#[test]
fn without_a_session_unknown_is_the_answer_and_tryagain_is_retried() {
    let (l, addr) = listener();
    let (applied, _) = session_member(l, |n, _| match n {
        0 => Some(Some(Value::error("TRYAGAIN not applied"))),
        1 => Some(Some(Value::error(
            "UNKNOWN the command may or may not have been applied",
        ))),
        _ => None,
    });
    let mut client = ClusterClient::new(vec![addr], OPTIONS);
    let reply = client.call(&words("INCR n")).unwrap();
    assert!(
        matches!(&reply, Value::Error(e) if e.starts_with("UNKNOWN")),
        "{reply:?}"
    );
    assert_eq!(
        applied.load(Ordering::SeqCst),
        1,
        "sent twice: TRYAGAIN, then UNKNOWN"
    );
    assert_eq!(client.call(&words("INCR n")), Ok(Value::Integer(2)));
}

#[test]
fn an_expired_session_is_reopened_only_when_the_write_cannot_have_applied() {
    let (l, addr) = listener();
    let expired = || Some(Some(Value::error("SESSIONEXPIRED session 7 is unknown")));
    // First write: its only attempt is refused (never applied): reopen, resend under 8.
    // Second write (session 8): dropped after applying, then the resend sees SESSIONEXPIRED:
    // it may have applied, so the error is the answer.
    let (applied, log) = session_member(l, move |n, _| match n {
        1 | 5 => expired(),
        4 => Some(None),
        _ => None,
    });
    let mut client = ClusterClient::new(vec![addr], OPTIONS).with_sessions();
    assert_eq!(client.call(&words("INCR n")), Ok(Value::Integer(1)));
    assert_eq!(client.session_id(), Some(8));
    let reply = client.call(&words("INCR n")).unwrap();
    assert!(
        matches!(&reply, Value::Error(e) if e.starts_with("SESSIONEXPIRED")),
        "{reply:?}"
    );
    assert_eq!(applied.load(Ordering::SeqCst), 2);
    let sent: Vec<_> = log.lock().unwrap().iter().map(|c| c.len()).collect();
    assert_eq!(sent, [2, 7, 2, 7, 7, 7], "open, run, open, run, run, run");
}
