//! kvctl against a tiny in-test RESP2 server on 127.0.0.1 that answers GET/SET/DEL/INFO,
//! and can play a cluster without a leader or a node that redirects.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use kvraft::client::{parse_command, Value};

/// How a fake node behaves.
#[derive(Clone)]
enum Mode {
    /// Answer this many requests with `-CLUSTERDOWN`, then serve.
    Serve { clusterdown_first: usize },
    /// Answer everything with `-REDIRECT <addr>`.
    Redirect(SocketAddr),
}

struct Fake {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

fn fake(mode: Mode) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let counter = requests.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (mode, store, counter) = (mode.clone(), store.clone(), counter.clone());
            thread::spawn(move || serve(conn, addr, mode, store, counter));
        }
    });
    Fake { addr, requests }
}

fn serve(
    mut conn: TcpStream,
    me: SocketAddr,
    mode: Mode,
    store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    counter: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some((args, n))) = parse_command(&buf) {
            buf.drain(..n);
            if args.is_empty() {
                continue;
            }
            let seen = counter.fetch_add(1, Ordering::SeqCst);
            let reply = match &mode {
                Mode::Redirect(to) => Value::error(format!("REDIRECT {to}")),
                Mode::Serve { clusterdown_first } if seen < *clusterdown_first => {
                    Value::error("CLUSTERDOWN no leader elected yet")
                }
                Mode::Serve { .. } => execute(&args, me, &mut store.lock().unwrap()),
            };
            if conn.write_all(&reply.to_bytes()).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn execute(args: &[Vec<u8>], me: SocketAddr, store: &mut HashMap<Vec<u8>, Vec<u8>>) -> Value {
    let verb = args[0].to_ascii_uppercase();
    // kvctl sends writes in a session: open one, run the command inside (no deduplication
    // here: these tests never resend).
    if verb == b"SESSION" && args.len() == 2 {
        return Value::Integer(1);
    }
    if verb == b"SESSION" && args.len() > 5 {
        return execute(&args[5..], me, store);
    }
    match (verb.as_slice(), args.len()) {
        (b"SET", 3) => {
            store.insert(args[1].clone(), args[2].clone());
            Value::ok()
        }
        (b"GET", 2) => store.get(&args[1]).cloned().map_or(Value::Nil, Value::Bulk),
        (b"DEL", _) => Value::Integer(
            args[1..]
                .iter()
                .filter(|k| store.remove(*k).is_some())
                .count() as i64,
        ),
        (b"INFO", _) => Value::Bulk(
            format!(
                "# Raft\r\nnode_id:{}\r\nrole:follower\r\nterm:3\r\nleader_id:1\r\n\
                 commit_index:7\r\napplied_index:7\r\nlast_log_index:8\r\n",
                me.port()
            )
            .into_bytes(),
        ),
        _ => Value::error("ERR unknown command"),
    }
}

fn kvctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A port with nothing listening on it.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn put_get_and_del_round_trip_through_a_server() {
    let f = fake(Mode::Serve {
        clusterdown_first: 0,
    });
    let e = f.addr.to_string();
    let o = kvctl(&["-e", &e, "put", "k", "a value"], None);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("OK\n", Some(0)));
    let o = kvctl(&["-e", &e, "get", "k"], None);
    assert_eq!(
        (stdout(&o).as_str(), o.status.code()),
        ("a value\n", Some(0))
    );
    let o = kvctl(&["-e", &e, "get", "missing"], None);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("", Some(1)));
    let o = kvctl(&["-e", &e, "del", "k", "missing"], None);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("1\n", Some(0)));
    let o = kvctl(&["-e", &e, "frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ERR unknown command"));
}

#[test]
fn kvctl_retries_while_the_cluster_has_no_leader() {
    let f = fake(Mode::Serve {
        clusterdown_first: 3,
    });
    let o = kvctl(&["-e", &f.addr.to_string(), "put", "k", "v"], None);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("OK\n", Some(0)));
    // SESSION OPEN three times (CLUSTERDOWN), then again, then the SET in the session.
    assert_eq!(f.requests.load(Ordering::SeqCst), 5);
}

#[test]
fn kvctl_gives_up_at_its_timeout_with_the_last_error() {
    let f = fake(Mode::Serve {
        clusterdown_first: usize::MAX,
    });
    let o = kvctl(&["-e", &f.addr.to_string(), "-t", "0.3", "get", "k"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("CLUSTERDOWN"));
}

#[test]
fn kvctl_skips_a_dead_endpoint_and_follows_a_redirect() {
    let target = fake(Mode::Serve {
        clusterdown_first: 0,
    });
    let redirector = fake(Mode::Redirect(target.addr));
    let list = format!("{},{}", closed_port(), redirector.addr);
    let o = kvctl(&["-e", &list, "put", "k", "v"], None);
    assert_eq!((stdout(&o).as_str(), o.status.code()), ("OK\n", Some(0)));
    // SESSION OPEN is redirected once; it and the SET in the session reach the target.
    assert_eq!(redirector.requests.load(Ordering::SeqCst), 1);
    assert_eq!(target.requests.load(Ordering::SeqCst), 2);
}

#[test]
fn line_mode_answers_every_stdin_line_over_one_connection() {
    let f = fake(Mode::Serve {
        clusterdown_first: 0,
    });
    let input = "put a \"x y\"\n\nget a\nget b\nbogus\ndel a\n";
    let o = kvctl(&["-e", &f.addr.to_string()], Some(input));
    assert_eq!(
        stdout(&o),
        "OK\nx y\n(nil)\n(error) ERR unknown command\n1\n"
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "an error reply makes the exit code 2"
    );
}

#[test]
fn status_shows_each_member_and_marks_the_unreachable_one() {
    let f = fake(Mode::Serve {
        clusterdown_first: 0,
    });
    let dead = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.conf");
    std::fs::write(
        &conf,
        format!(
            "node.1 = peer=127.0.0.1:1 client={}\nnode.2 = peer=127.0.0.1:2 client={dead}\n",
            f.addr
        ),
    )
    .unwrap();
    let o = kvctl(&["-c", conf.to_str().unwrap(), "status"], None);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let row1: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row1,
        vec![
            "1",
            &f.addr.to_string(),
            // It names a leader, but no member answers as the leader: lag is unknown.
            "unknown",
            "follower",
            "3",
            "1",
            "7",
            "7",
            "8",
            "-",
            "-"
        ]
    );
    let row2: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row2, vec!["2", &dead.to_string(), "unreachable"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn help_prints_usage_and_a_bad_option_exits_2() {
    let o = kvctl(&["--help"], None);
    assert!(stdout(&o).starts_with("usage: kvctl"));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(kvctl(&["--bogus"], None).status.code(), Some(2));
}
