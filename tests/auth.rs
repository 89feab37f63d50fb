//! AUTH on real kvraftd processes (issue 18): `requirepass` and `adminpass`, NOAUTH,
//! WRONGPASS and NOPERM through the leader and a follower, HELLO's AUTH, the rights a
//! forwarded request carries on the peer link, redis-cli `-a`, and kvctl's `--password`,
//! `--user` and `KVRAFT_PASSWORD`. No password may reach a log or a reply.

mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use harness::{connect, serial, wait_for, Cluster, Connection, Options};
use kvraft::client::Value;
use kvraft::raft::NodeId;
use kvraft::wire::{self, DecodeError, Frame};

const LONG: Duration = Duration::from_secs(30);
const DATA_PASS: &str = "data-pw-4f1c";
const ADMIN_PASS: &str = "admin-pw-9e2d";
const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn cluster() -> Cluster {
    Cluster::start(Options {
        extra: vec![
            format!("requirepass = {DATA_PASS}"),
            format!("adminpass = {ADMIN_PASS}"),
        ],
        ..Options::default()
    })
}

/// A connection that has not authenticated.
fn raw(c: &Cluster, id: u64) -> Connection {
    connect(c.node(id).client).expect("node reachable")
}

fn call(conn: &mut Connection, args: &[&str]) -> Value {
    conn.call_str(args).expect("a reply")
}

fn err(v: Value) -> String {
    match v {
        Value::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// `args` answered with something other than an error, retried while leadership moves.
fn ok_retrying(conn: &mut Connection, args: &[&str]) -> Value {
    wait_for(LONG, &format!("{args:?}"), || {
        let v = call(conn, args);
        match &v {
            Value::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => None,
            Value::Error(e) => panic!("{args:?}: {e}"),
            _ => Some(v),
        }
    })
}

fn follower_of(c: &Cluster) -> (u64, u64) {
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    (leader, follower)
}

/// No password appears in any node's log.
fn assert_logs_hold_no_password(c: &Cluster) {
    for id in 1..=c.nodes.len() as u64 {
        let log = std::fs::read_to_string(c.log_path(id)).expect("the node's log");
        assert!(!log.is_empty(), "node {id}'s log is empty");
        for pw in [DATA_PASS, ADMIN_PASS] {
            assert!(!log.contains(pw), "node {id}'s log shows a password");
        }
    }
}

#[test]
fn every_command_needs_auth_first_and_admin_commands_need_the_admin() {
    let _g = serial();
    let c = cluster();
    let (leader, follower) = follower_of(&c);
    for id in [leader, follower] {
        let mut conn = raw(&c, id);
        for cmd in [
            &["GET", "k"][..],
            &["SET", "k", "v"],
            &["PING"],
            &["MULTI"],
            &["CLIENT", "ID"],
            &["INFO"],
            &["MEMBER", "LIST"],
            &["SESSION", "OPEN"],
            &["NO-SUCH-COMMAND"],
        ] {
            assert_eq!(err(call(&mut conn, cmd)), NOAUTH, "{cmd:?} on node {id}");
        }
        assert!(
            err(call(&mut conn, &["HELLO", "3"])).starts_with("NOAUTH HELLO must be called"),
            "HELLO without AUTH"
        );
        // Wrong passwords, for either user, change nothing.
        for cmd in [
            &["AUTH", "nope"][..],
            &["AUTH", "default", "nope"],
            &["AUTH", "admin", DATA_PASS],
            &["AUTH", "nobody", ADMIN_PASS],
        ] {
            let e = err(call(&mut conn, cmd));
            assert_eq!(e, WRONGPASS, "{cmd:?}");
        }
        assert_eq!(err(call(&mut conn, &["GET", "k"])), NOAUTH);
        // The default user: data commands, through the leader and a follower (forwarded
        // with the connection's rights), but no admin command.
        assert_eq!(call(&mut conn, &["AUTH", DATA_PASS]), Value::ok());
        let key = format!("k{id}");
        ok_retrying(&mut conn, &["SET", &key, "v"]);
        assert_eq!(ok_retrying(&mut conn, &["GET", &key]), Value::bulk_str("v"));
        assert!(matches!(
            ok_retrying(&mut conn, &["SESSION", "OPEN"]),
            Value::Integer(_)
        ));
        assert_eq!(call(&mut conn, &["MULTI"]), Value::ok());
        call(&mut conn, &["INCR", "n"]);
        assert!(matches!(call(&mut conn, &["EXEC"]), Value::Array(_)));
        for (cmd, name) in [
            (&["MEMBER", "LIST"][..], "member"),
            (&["MEMBER", "REMOVE", "3"], "member"),
            (&["TRANSFER", "2"], "transfer"),
            (&["SNAPSHOT"], "snapshot"),
            (&["BGSAVE"], "bgsave"),
            (&["CONFIG", "SET", "requirepass", "x"], "config|set"),
        ] {
            let want =
                format!("NOPERM User default has no permissions to run the '{name}' command");
            assert_eq!(err(call(&mut conn, cmd)), want, "{cmd:?} on node {id}");
        }
        // Inside MULTI a refused command makes EXEC abort, as in Redis.
        assert_eq!(call(&mut conn, &["MULTI"]), Value::ok());
        assert!(err(call(&mut conn, &["MEMBER", "LIST"])).starts_with("NOPERM"));
        assert!(err(call(&mut conn, &["EXEC"])).starts_with("EXECABORT"));
        assert!(err(call(&mut conn, &["FOO"])).starts_with("ERR unknown command 'FOO'"));
        assert!(matches!(
            call(&mut conn, &["CONFIG", "GET", "save"]),
            Value::Array(_) | Value::Map(_)
        ));
        // CONFIG GET never shows a password (Redis's would show requirepass).
        let all = format!("{:?}", call(&mut conn, &["CONFIG", "GET", "*"]));
        assert!(
            !all.contains(DATA_PASS) && !all.contains(ADMIN_PASS),
            "{all}"
        );
        // The admin may.
        assert_eq!(call(&mut conn, &["AUTH", "admin", ADMIN_PASS]), Value::ok());
        assert!(matches!(
            call(&mut conn, &["MEMBER", "LIST"]),
            Value::Array(_)
        ));
        let Value::Bulk(list) = call(&mut conn, &["CLIENT", "LIST"]) else {
            panic!("CLIENT LIST")
        };
        assert!(String::from_utf8_lossy(&list).contains(" user=admin "));
        // AUTH as the default user again gives the admin rights up.
        assert_eq!(
            call(&mut conn, &["AUTH", "default", DATA_PASS]),
            Value::ok()
        );
        assert!(err(call(&mut conn, &["MEMBER", "LIST"])).starts_with("NOPERM"));
    }
    assert_logs_hold_no_password(&c);
}

#[test]
fn hello_authenticates_and_picks_the_protocol_at_once() {
    let _g = serial();
    let c = cluster();
    let (_, follower) = follower_of(&c);
    let mut conn = raw(&c, follower);
    // A wrong password changes nothing, not even the protocol.
    let e = err(call(&mut conn, &["HELLO", "3", "AUTH", "default", "nope"]));
    assert_eq!(e, WRONGPASS);
    assert_eq!(err(call(&mut conn, &["GET", "k"])), NOAUTH);
    let Value::Map(hello) = call(
        &mut conn,
        &["HELLO", "3", "AUTH", "default", DATA_PASS, "SETNAME", "app"],
    ) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(hello.contains(&(Value::bulk_str("proto"), Value::Integer(3))));
    assert_eq!(ok_retrying(&mut conn, &["SET", "h", "1"]), Value::ok());
    assert!(err(call(&mut conn, &["TRANSFER", "1"])).starts_with("NOPERM"));
    let mut admin = raw(&c, follower);
    assert!(matches!(
        call(&mut admin, &["HELLO", "2", "AUTH", "admin", ADMIN_PASS]),
        Value::Array(_)
    ));
    assert!(matches!(
        call(&mut admin, &["MEMBER", "LIST"]),
        Value::Array(_)
    ));
    assert_logs_hold_no_password(&c);
}

/// A peer connection to `target` that said Hello as node `from`, as robustness.rs does.
fn peer_conn(c: &Cluster, target: u64, from: u64) -> TcpStream {
    let mut s = TcpStream::connect(c.node(target).peer).expect("peer port");
    let hello = Frame::Hello {
        cluster_id: wire::cluster_id("kvraft"),
        cluster_uid: 0,
        incarnation: 0,
        from: NodeId(from),
        to: NodeId(target),
    };
    let mut out = Vec::new();
    wire::encode(&hello, &mut out).unwrap();
    s.write_all(&out).unwrap();
    s
}

/// Send a ClientRequest with `rights` and wait for its ClientReply.
fn forward(s: &mut TcpStream, buf: &mut Vec<u8>, id: u64, rights: u8, args: &[&str]) -> Vec<u8> {
    let frame = Frame::ClientRequest {
        id,
        args: args.iter().map(|a| a.as_bytes().to_vec()).collect(),
        proto: 2,
        rights,
    };
    let mut out = Vec::new();
    wire::encode(&frame, &mut out).unwrap();
    s.write_all(&out).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + LONG;
    let mut chunk = [0u8; 4096];
    loop {
        match wire::decode(buf) {
            Ok((f, n)) => {
                buf.drain(..n);
                if let Frame::ClientReply { id: got, reply } = f {
                    if got == id {
                        return reply;
                    }
                }
                continue;
            }
            Err(DecodeError::Incomplete) => {}
            Err(e) => panic!("the node sent a bad frame: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no reply to forwarded request {id}"
        );
        match s.read(&mut chunk) {
            Ok(0) => panic!("the node closed the peer connection"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {} // timed out: poll again
        }
    }
}

#[test]
fn the_leader_runs_a_forwarded_request_with_the_rights_it_carries_and_no_more() {
    let _g = serial();
    let c = cluster();
    let leader = c.wait_leader(LONG);
    harness::put_retry(&c, leader, "fk", "fv", LONG);
    let mut s = peer_conn(&c, leader, 9);
    let mut buf = Vec::new();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    // Rights 0: an unauthenticated client's request is refused, whatever it is.
    assert_eq!(
        text(forward(&mut s, &mut buf, 1, 0, &["GET", "fk"])),
        format!("-{NOAUTH}\r\n")
    );
    // Rights 1 (default user): data commands run, admin commands do not.
    assert_eq!(
        text(forward(&mut s, &mut buf, 2, 1, &["GET", "fk"])),
        "$2\r\nfv\r\n"
    );
    let e = text(forward(&mut s, &mut buf, 3, 1, &["MEMBER", "LIST"]));
    assert!(e.starts_with("-NOPERM "), "{e}");
    let e = text(forward(&mut s, &mut buf, 4, 1, &["SNAPSHOT"]));
    assert!(e.starts_with("-NOPERM "), "{e}");
    // Rights 2: the admin's request runs (the peer link is trusted to say who asked).
    let list = text(forward(&mut s, &mut buf, 5, 2, &["MEMBER", "LIST"]));
    assert!(list.starts_with('*'), "{list}");
    // A follower stamps what its connection has: an authenticated default user's writes
    // through it are applied, its admin commands refused.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let mut conn = raw(&c, follower);
    assert_eq!(call(&mut conn, &["AUTH", DATA_PASS]), Value::ok());
    ok_retrying(&mut conn, &["SET", "via-follower", "1"]);
    let mut admin = c.client(leader).unwrap();
    assert_eq!(
        call(&mut admin, &["GET", "via-follower"]),
        Value::bulk_str("1")
    );
}

fn redis_cli_present() -> bool {
    let ok = Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("KVRAFT_REQUIRE_CLIENTS").is_none(),
            "redis-cli is not installed (make setup)"
        );
        eprintln!("redis-cli is not installed (make setup); skipping");
    }
    ok
}

fn redis_cli(c: &Cluster, id: u64, auth: &[&str], cmd: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &c.node(id).client.port().to_string()])
        .args(auth)
        .args(cmd)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_cli_authenticates_with_a_and_user() {
    if !redis_cli_present() {
        return;
    }
    let _g = serial();
    let c = cluster();
    let (_, follower) = follower_of(&c);
    let data = ["--no-auth-warning", "-a", DATA_PASS];
    wait_for(LONG, "redis-cli SET through a follower", || {
        (redis_cli(&c, follower, &data, &["SET", "cli", "yes"]) == "OK").then_some(())
    });
    assert_eq!(redis_cli(&c, follower, &data, &["GET", "cli"]), "yes");
    assert!(redis_cli(&c, follower, &[], &["GET", "cli"]).contains("NOAUTH"));
    assert!(redis_cli(&c, follower, &data, &["MEMBER", "LIST"]).contains("NOPERM"));
    let admin = ["--no-auth-warning", "--user", "admin", "--pass", ADMIN_PASS];
    let list = redis_cli(&c, follower, &admin, &["MEMBER", "LIST"]);
    assert!(!list.contains("NOPERM") && !list.is_empty(), "{list}");
    let wrong = ["--no-auth-warning", "-a", "nope"];
    let out = redis_cli(&c, follower, &wrong, &["GET", "cli"]);
    assert!(out.contains("NOAUTH") || out.contains("WRONGPASS"), "{out}");
}

fn kvctl(c: &Cluster, args: &[&str], env_password: Option<&str>) -> Output {
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.client.to_string()).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    cmd.args(["-e", &endpoints.join(","), "-t", "20"])
        .args(args);
    cmd.env_remove("KVRAFT_PASSWORD");
    if let Some(p) = env_password {
        cmd.env("KVRAFT_PASSWORD", p);
    }
    cmd.output().expect("run kvctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn kvctl_takes_the_password_from_the_environment_or_the_command_line() {
    let _g = serial();
    let c = cluster();
    c.wait_leader(LONG);
    // From the environment: no warning, and writes go through its session.
    let o = kvctl(&c, &["incr", "kv-n"], Some(DATA_PASS));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1");
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let o = kvctl(&c, &["get", "kv-n"], Some(DATA_PASS));
    assert_eq!(stdout(&o), "1");
    // On the command line: it works and warns that ps shows it.
    let o = kvctl(&c, &["--password", DATA_PASS, "put", "kv-k", "v"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("visible"), "{}", stderr(&o));
    // No password: NOAUTH, exit 2. A wrong one: refused at once, never echoed.
    let o = kvctl(&c, &["get", "kv-k"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("NOAUTH"), "{}", stderr(&o));
    // (Refused at once, not retried to the timeout: the message is the refusal's.)
    let o = kvctl(&c, &["get", "kv-k"], Some("wrong-pw-1234"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("AUTH refused by"), "{}", stderr(&o));
    assert!(stderr(&o).contains("WRONGPASS"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("wrong-pw-1234"), "{}", stderr(&o));
    // The admin, with --user; status authenticates too.
    let o = kvctl(&c, &["member", "list"], Some(DATA_PASS));
    assert!(stderr(&o).contains("NOPERM"), "{}", stderr(&o));
    let o = kvctl(&c, &["--user", "admin", "member", "list"], Some(ADMIN_PASS));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = kvctl(&c, &["status"], Some(DATA_PASS));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("leader"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("unreachable"), "{}", stdout(&o));
    assert_logs_hold_no_password(&c);
}
