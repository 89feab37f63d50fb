//! Issue 12, "Done when": no client command and no peer message can crash a node, and a
//! leader whose followers are both stopped still answers every pending request.
//!
//! Real `kvraftd` processes on 127.0.0.1 (see `harness/`). After every hostile batch each test
//! checks that no process exited and no log reports a panic, that every node answers PING,
//! and that the replicas' `state_hash` agree once their applied indexes are equal. Every wait
//! is a poll with a deadline.

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harness::{connect, put_retry, serial, wait_for, Cluster, Connection, Options};
use kvraft::client::Value;
use kvraft::limits::{
    APPEND_ENTRIES_MAX, CLIENT_ARGS_MAX, CLIENT_INLINE_SIZE_MAX, CLIENT_REQUEST_SIZE_MAX,
    ENTRY_SIZE_MAX, FRAME_SIZE_MAX, KEY_SIZE_MAX, MEMBERS_MAX, VALUE_SIZE_MAX,
};
use kvraft::raft::{
    AppendResult, ConfState, Entry, EntryId, EntryKind, LogIndex, Message, MessageBody, NodeId,
    RejectHint, SnapshotMeta, Term,
};
use kvraft::wire::{self, Frame};

const LONG: Duration = Duration::from_secs(30);
const IDS: [u64; 3] = [1, 2, 3];

// ---- checks shared by every test ----

/// No node exited or panicked, and every node answers PING.
fn assert_all_up(c: &mut Cluster, after: &str) {
    for id in IDS {
        if let Some(status) = c.exited(id) {
            panic!("node {id} exited ({status}) after {after}");
        }
        if let Some(line) = c.panic_line(id) {
            panic!("node {id} panicked after {after}: {line}");
        }
    }
    wait_for(
        LONG,
        &format!("every node to answer PING after {after}"),
        || {
            IDS.iter()
                .all(|&id| {
                    c.client(id)
                        .and_then(|mut cl| cl.call_str(&["PING"]))
                        .is_ok_and(|v| v == Value::Simple("PONG".into()))
                })
                .then_some(())
        },
    );
}

/// Once every replica has applied the same index, their state hashes are equal.
fn assert_replicas_agree(c: &Cluster, after: &str) {
    let what = format!("replicas to apply the same index and agree after {after}");
    let hashes = wait_for(LONG, &what, || {
        let infos: Vec<_> = IDS.iter().map(|&id| c.info(id)).collect::<Option<_>>()?;
        let applied: Vec<&String> = infos
            .iter()
            .map(|i| i.get("applied_index"))
            .collect::<Option<_>>()?;
        let hashes: Vec<String> = infos
            .iter()
            .map(|i| i.get("state_hash").cloned())
            .collect::<Option<_>>()?;
        applied.iter().all(|a| *a == applied[0]).then_some(hashes)
    });
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "state hashes differ after {after}: {hashes:?}"
    );
}

/// A write through every node commits (so the cluster still has a working leader).
fn assert_commits(c: &Cluster, tag: &str) {
    for via in IDS {
        put_retry(c, via, &format!("{tag}-via-{via}"), "ok", LONG);
    }
}

fn followers(leader: u64) -> Vec<u64> {
    IDS.iter().copied().filter(|&i| i != leader).collect()
}

/// A short description of a reply for the test's output.
fn brief(r: &Result<Value, harness::ClientError>) -> String {
    let s = match r {
        Ok(Value::Error(e)) => format!("-{e}"),
        Ok(Value::Array(a)) => format!("array of {}", a.len()),
        Ok(Value::Bulk(b)) => format!("bulk of {} bytes", b.len()),
        Ok(v) => format!("{v:?}"),
        Err(e) => format!("no reply: {e}"),
    };
    s.chars().take(120).collect()
}

// ---- 1. client commands at and past the limits, through every node ----

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| b(p)).collect()
}

/// One command on a fresh connection (a node may close a connection after a request past a
/// limit). Any reply, or none, is acceptable here; the caller checks the node afterwards.
fn call_fresh(addr: SocketAddr, args: &[Vec<u8>]) -> Result<Value, harness::ClientError> {
    let mut cl = connect(addr)?;
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    cl.call(&refs)
}

/// Commands of every family with arguments at their limits and just past them.
fn commands_at_the_limits() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let value = |n: usize| vec![b'v'; n];
    let mut out: Vec<(&'static str, Vec<Vec<u8>>)> = vec![
        (
            "SET key at KEY_SIZE_MAX",
            vec![b("SET"), vec![b'k'; KEY_SIZE_MAX], b("x")],
        ),
        (
            "SET key past KEY_SIZE_MAX",
            vec![b("SET"), vec![b'k'; KEY_SIZE_MAX + 1], b("x")],
        ),
        (
            "SET value past VALUE_SIZE_MAX",
            vec![b("SET"), b("vbig"), value(VALUE_SIZE_MAX + 1)],
        ),
        (
            "SETRANGE at VALUE_SIZE_MAX",
            cmd(&["SETRANGE", "sr", &(VALUE_SIZE_MAX - 1).to_string(), "x"]),
        ),
        (
            "SETRANGE past VALUE_SIZE_MAX",
            cmd(&["SETRANGE", "sr", &VALUE_SIZE_MAX.to_string(), "x"]),
        ),
        (
            "SETRANGE offset 2^40",
            cmd(&["SETRANGE", "sr", "1099511627776", "x"]),
        ),
        (
            "SETRANGE offset i64::MAX",
            cmd(&["SETRANGE", "sr", &i64::MAX.to_string(), "x"]),
        ),
        (
            "SETRANGE offset u64::MAX",
            cmd(&["SETRANGE", "sr", &u64::MAX.to_string(), "x"]),
        ),
        ("SETRANGE offset -1", cmd(&["SETRANGE", "sr", "-1", "x"])),
        (
            "GETRANGE huge",
            cmd(&[
                "GETRANGE",
                "sr",
                "-9223372036854775808",
                "9223372036854775807",
            ]),
        ),
        (
            "SET ap near VALUE_SIZE_MAX",
            vec![b("SET"), b("ap"), value(VALUE_SIZE_MAX - 10)],
        ),
        (
            "APPEND up to VALUE_SIZE_MAX",
            vec![b("APPEND"), b("ap"), value(10)],
        ),
        (
            "APPEND past VALUE_SIZE_MAX",
            vec![b("APPEND"), b("ap"), value(1)],
        ),
        ("KEYS *", cmd(&["KEYS", "*"])),
        (
            "SCAN COUNT u32::MAX",
            cmd(&["SCAN", "0", "COUNT", &u32::MAX.to_string()]),
        ),
        (
            "SCAN COUNT u64::MAX",
            cmd(&["SCAN", "0", "COUNT", &u64::MAX.to_string()]),
        ),
        ("SCAN COUNT 0", cmd(&["SCAN", "0", "COUNT", "0"])),
        ("SCAN COUNT -1", cmd(&["SCAN", "0", "COUNT", "-1"])),
        (
            "SCAN cursor u64::MAX",
            cmd(&[
                "SCAN",
                &u64::MAX.to_string(),
                "MATCH",
                "*",
                "COUNT",
                "1000000",
            ]),
        ),
        ("RANGE everything", cmd(&["RANGE", "", ""])),
        (
            "RANGE LIMIT u64::MAX",
            cmd(&["RANGE", "", "", "LIMIT", &u64::MAX.to_string()]),
        ),
        ("RANGE LIMIT -1", cmd(&["RANGE", "", "", "LIMIT", "-1"])),
        (
            "INCRBY overflow",
            cmd(&["INCRBY", "n", &i64::MAX.to_string()]),
        ),
        ("INCRBY overflow again", cmd(&["INCRBY", "n", "1"])),
        ("INCRBYFLOAT inf", cmd(&["INCRBYFLOAT", "f", "1e308"])),
        ("INCRBYFLOAT to inf", cmd(&["INCRBYFLOAT", "f", "1e308"])),
        ("MEMBER ADD garbage", cmd(&["MEMBER", "ADD", "0", "x", "y"])),
        (
            "MEMBER REMOVE unknown",
            cmd(&["MEMBER", "REMOVE", &u64::MAX.to_string()]),
        ),
        (
            "MEMBER TRANSFER unknown",
            cmd(&["MEMBER", "TRANSFER", "77"]),
        ),
        ("HELLO 4", cmd(&["HELLO", "4"])),
        ("empty command name", vec![Vec::new()]),
    ];
    // The whole request at CLIENT_REQUEST_SIZE_MAX and past it, and an MSET whose encoded
    // entry would pass ENTRY_SIZE_MAX although each value is within VALUE_SIZE_MAX.
    let pairs = CLIENT_REQUEST_SIZE_MAX / VALUE_SIZE_MAX;
    let mut mset = vec![b("MSET")];
    for i in 0..pairs {
        mset.push(format!("m{i}").into_bytes());
        mset.push(value(VALUE_SIZE_MAX - 64));
    }
    out.push(("MSET near ENTRY_SIZE_MAX", mset));
    let mut mset = vec![b("MSET")];
    for i in 0..pairs {
        mset.push(format!("m{i}").into_bytes());
        mset.push(value(VALUE_SIZE_MAX));
    }
    out.push(("MSET past CLIENT_REQUEST_SIZE_MAX", mset));
    let _ = ENTRY_SIZE_MAX;
    // CLIENT_ARGS_MAX elements, then one more.
    let mut exists = vec![b("EXISTS")];
    exists.extend((1..CLIENT_ARGS_MAX).map(|i| format!("{i}").into_bytes()));
    out.push(("EXISTS with CLIENT_ARGS_MAX elements", exists.clone()));
    exists.push(b("one-more"));
    out.push(("EXISTS past CLIENT_ARGS_MAX", exists));
    let mut del = vec![b("DEL")];
    del.extend((1..CLIENT_ARGS_MAX).map(|i| format!("{i}").into_bytes()));
    out.push(("DEL with CLIENT_ARGS_MAX elements", del));
    let mut mset = vec![b("MSET")];
    mset.extend((1..CLIENT_ARGS_MAX).map(|i| format!("{}", i / 2).into_bytes()));
    out.push(("MSET with an odd CLIENT_ARGS_MAX elements", mset));
    out
}

/// Raw RESP2 and RESP3 frames that are malformed, or well-formed but not commands.
fn malformed_frames() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = [
        "*-5\r\n",
        "*99999999999999999999\r\n",
        "*1\r\n$-2\r\n",
        "*1\r\n$4294967296\r\n",
        "*1\r\n$9223372036854775808\r\n",
        "*2\r\n$3\r\nGET\r\n:5\r\n",
        "*1\r\n*1\r\n*1\r\n$4\r\nPING\r\n",
        "*1\r\n$4\r\nPINGxx\r\n",
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048577\r\n",
        "*2147483647\r\n",
        "~1\r\n$4\r\nPING\r\n",
        "%1\r\n$4\r\nPING\r\n$1\r\nx\r\n",
        ">2\r\n$4\r\nPING\r\n$1\r\nx\r\n",
        "_\r\n",
        "#t\r\n",
        ",1.5e999\r\n",
        "(1234567890123456789012345678901234567890\r\n",
        "=9\r\ntxt:PING\r\n",
        "|1\r\n+a\r\n+b\r\n*1\r\n$4\r\nPING\r\n",
        "!5\r\nERROR\r\n",
        "\0\0\0\0\r\n",
        "\"unterminated\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // An inline line past CLIENT_INLINE_SIZE_MAX, and deep nesting.
    out.push(vec![b'a'; CLIENT_INLINE_SIZE_MAX + 1]);
    out.push("*1\r\n".repeat(100_000).into_bytes());
    out
}

/// Sends `bytes` raw, waits briefly for whatever comes back (a reply, a close), then hangs up.
fn send_raw_and_hang_up(addr: SocketAddr, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 512];
    let _ = s.read(&mut buf);
}

#[test]
fn no_client_command_at_or_past_the_limits_crashes_a_node_through_any_node() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = followers(leader)[0];
    // Ten values of VALUE_SIZE_MAX: an MGET of all of them is a reply of about 10 MiB, more
    // than a peer frame carries.
    let big = vec![b'x'; VALUE_SIZE_MAX];
    let mut cl = c.client(leader).unwrap();
    for i in 0..10 {
        let r = cl
            .call(&[b"SET", format!("big{i}").as_bytes(), &big])
            .unwrap();
        assert_eq!(r, Value::Simple("OK".into()), "SET big{i}");
    }
    let mget: Vec<Vec<u8>> = std::iter::once(b("MGET"))
        .chain((0..10).map(|i| format!("big{i}").into_bytes()))
        .collect();
    // RESP2 and RESP3 clients of a follower. Inside MULTI the follower forwards the read
    // (it serves plain reads itself), and the leader refuses to forward the reply.
    for hello in [None, Some("3")] {
        let mut cl = c.client(follower).unwrap();
        if let Some(v) = hello {
            cl.call_str(&["HELLO", v]).unwrap();
        }
        let refs: Vec<&[u8]> = mget.iter().map(Vec::as_slice).collect();
        assert_eq!(cl.call_str(&["MULTI"]).unwrap(), Value::Simple("OK".into()));
        assert_eq!(cl.call(&refs).unwrap(), Value::Simple("QUEUED".into()));
        let r = cl.call_str(&["EXEC"]);
        println!(
            "MULTI MGET EXEC of ten 1 MiB values via follower (HELLO {hello:?}): {}",
            brief(&r)
        );
        match r {
            Ok(Value::Error(e)) => assert!(e.starts_with("ERR reply too large"), "{e}"),
            other => panic!("MULTI MGET EXEC via a follower: {}", brief(&other)),
        }
        assert_all_up(&mut c, "MGET of ten 1 MiB values through a follower");
        // The plain MGET the follower serves itself, whole.
        let r = cl.call(&refs);
        println!(
            "MGET of ten 1 MiB values via follower (HELLO {hello:?}): {}",
            brief(&r)
        );
        match r {
            Ok(Value::Array(vs)) => assert_eq!(vs.len(), 10),
            other => panic!("MGET via a follower: {}", brief(&other)),
        }
    }
    let r = call_fresh(c.node(leader).client, &mget);
    println!("MGET of ten 1 MiB values via the leader: {}", brief(&r));
    assert_all_up(&mut c, "MGET of ten 1 MiB values through the leader");

    let started = Instant::now();
    for via in [leader, follower] {
        let role = if via == leader { "leader" } else { "follower" };
        for (name, args) in commands_at_the_limits() {
            let r = call_fresh(c.node(via).client, &args);
            println!("{name} via the {role}: {}", brief(&r));
            assert_all_up(&mut c, &format!("{name} via the {role}"));
            assert_replicas_agree(&c, &format!("{name} via the {role}"));
        }
        for frame in malformed_frames() {
            for hello in [&b""[..], b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"] {
                let bytes = [hello, &frame].concat();
                send_raw_and_hang_up(c.node(via).client, &bytes);
            }
        }
        assert_all_up(&mut c, &format!("malformed RESP frames via the {role}"));
        // A client that pipelines large reads and never reads a reply (its output passes
        // CLIENT_OUTPUT_SIZE_MAX), and clients that stop in the middle of a request, hold
        // their connections open while everyone else is served.
        let mut silent = c.client(via).unwrap();
        for _ in 0..10 {
            silent.queue(&mget.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }
        let _ = silent.flush();
        let stalled: Vec<TcpStream> = [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\nabc"[..],
            b"GET k",
        ]
        .iter()
        .filter_map(|bytes| {
            let mut s = TcpStream::connect(c.node(via).client).ok()?;
            s.write_all(bytes).ok()?;
            Some(s)
        })
        .collect();
        assert_eq!(stalled.len(), 2, "stalled clients connected");
        assert_commits(&c, &format!("client-{role}"));
        assert_replicas_agree(&c, &format!("the commands via the {role}"));
        drop((silent, stalled));
    }
    println!("hostile commands took {:?}", started.elapsed());
}

#[test]
fn member_add_past_members_max_is_refused_and_every_node_stays_up() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    // Learners that never start: their addresses refuse connections, which is fine here.
    let mut refused = None;
    for id in 4..=MEMBERS_MAX as u64 + 2 {
        // Membership changes go to the leader (a follower answers "not the leader").
        let via = leader;
        let peer = "127.0.0.1:1";
        let r = wait_for(LONG, &format!("MEMBER ADD {id} to be answered"), || {
            let r = call_fresh(
                c.node(via).client,
                &cmd(&["MEMBER", "ADD", &id.to_string(), peer, peer, "LEARNER"]),
            );
            match r {
                // A change still in progress: try again.
                Ok(Value::Error(e)) if e.contains("in progress") || e.starts_with("TRYAGAIN") => {
                    None
                }
                Ok(v) => Some(v),
                Err(_) => None,
            }
        });
        if id as usize <= MEMBERS_MAX {
            assert!(!matches!(r, Value::Error(_)), "MEMBER ADD {id}: {r:?}");
        } else {
            match &r {
                Value::Error(e) => refused = Some(e.clone()),
                other => panic!("MEMBER ADD {id} past MEMBERS_MAX was accepted: {other:?}"),
            }
        }
    }
    println!("MEMBER ADD past MEMBERS_MAX: -{}", refused.unwrap());
    assert_all_up(&mut c, "MEMBER ADD past MEMBERS_MAX");
    assert_commits(&c, "members");
    assert_replicas_agree(&c, "MEMBER ADD past MEMBERS_MAX");
}

// ---- 2. peer messages with hostile fields ----

/// A peer connection to `target` that has said Hello as node `from`.
fn peer_conn(c: &Cluster, target: u64, from: u64) -> Option<TcpStream> {
    let mut s = TcpStream::connect(c.node(target).peer).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let hello = Frame::Hello {
        cluster_id: wire::cluster_id("kvraft"),
        cluster_uid: 0,
        incarnation: 0,
        from: NodeId(from),
        to: NodeId(target),
    };
    let mut out = Vec::new();
    wire::encode(&hello, &mut out).unwrap();
    s.write_all(&out).ok()?;
    Some(s)
}

fn raft(from: u64, to: u64, term: u64, body: MessageBody) -> Frame {
    Frame::Raft(Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    })
}

fn id(term: u64, index: u64) -> EntryId {
    EntryId::new(Term(term), LogIndex(index))
}

fn entries(term: u64, first: u64, n: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|i| Entry {
            term: Term(term),
            index: LogIndex(i),
            kind: EntryKind::Command,
            data: b"garbage".to_vec().into(),
        })
        .collect()
}

/// Well-framed messages from `from` to `to`, whose fields no correct peer sends, given the
/// receiver's term and last index.
fn hostile_frames(from: u64, to: u64, term: u64, last: u64) -> Vec<Frame> {
    let max = u64::MAX;
    let half = u64::MAX / 2;
    let rejected = |rejected: u64, last_index: u64, conflict| MessageBody::AppendResp {
        result: AppendResult::Rejected {
            rejected: LogIndex(rejected),
            hint: RejectHint {
                last_index: LogIndex(last_index),
                conflict,
            },
        },
    };
    let accepted = |m: u64| MessageBody::AppendResp {
        result: AppendResult::Accepted {
            match_index: LogIndex(m),
        },
    };
    let append = |prev, entries, commit| MessageBody::Append {
        prev,
        entries,
        commit: LogIndex(commit),
    };
    let mut out = vec![
        // Rejections beyond the receiver's last index, in its own term.
        raft(from, to, term, rejected(last + 1000, last + 2000, None)),
        raft(
            from,
            to,
            term,
            rejected(last + 1, last + 1, Some(id(term, last + 1))),
        ),
        raft(from, to, term, rejected(max, max, Some(id(max, max)))),
        raft(
            from,
            to,
            term,
            rejected(half, half, Some(id(term + 5, half))),
        ),
        raft(from, to, term, rejected(0, 0, Some(id(0, 0)))),
        // Acknowledgements of entries the leader never wrote.
        raft(from, to, term, accepted(last + 1000)),
        raft(from, to, term, accepted(max)),
        raft(from, to, term, MessageBody::HeartbeatResp { read_seq: max }),
        // Terms and indexes past TERM_MAX / INDEX_MAX.
        raft(
            from,
            to,
            max,
            MessageBody::PreVote {
                last: id(max, max),
                floor: Term(max),
            },
        ),
        // A pre-vote's floor past TERM_MAX.
        raft(
            from,
            to,
            half,
            MessageBody::PreVote {
                last: id(half, half),
                floor: Term(u64::MAX),
            },
        ),
        raft(
            from,
            to,
            half + 1,
            MessageBody::Vote {
                last: id(half + 1, max),
                transfer: true,
            },
        ),
        raft(
            from,
            to,
            max,
            MessageBody::Heartbeat {
                commit: LogIndex(max),
                read_seq: max,
            },
        ),
        raft(
            from,
            to,
            max,
            append(id(max, max - 2), entries(max, max - 1, 1), max),
        ),
        raft(from, to, max, MessageBody::TimeoutNow),
        // Entries of a higher term than the message's, and a commit beyond everything.
        raft(
            from,
            to,
            term,
            append(id(term, last), entries(term + 1, last + 1, 3), last + 3),
        ),
        raft(
            from,
            to,
            term,
            append(
                id(term + 7, last + 50),
                entries(term + 9, last + 51, 2),
                max,
            ),
        ),
        raft(from, to, term, append(id(0, 0), Vec::new(), half + 1)),
        raft(
            from,
            to,
            max,
            MessageBody::Snapshot {
                meta: SnapshotMeta {
                    last: id(max, max),
                    conf: ConfState::new(vec![NodeId(from)], vec![]),
                },
            },
        ),
        Frame::SnapshotChunk {
            term: Term(max),
            from: NodeId(from),
            to: NodeId(to),
            meta: SnapshotMeta {
                last: id(max, max),
                conf: ConfState::new(vec![NodeId(1), NodeId(2), NodeId(3)], vec![]),
            },
            total_size: max,
            offset: max - 10,
            done: false,
            data: vec![0; 5],
        },
        Frame::SnapshotAck {
            term: Term(term),
            from: NodeId(from),
            to: NodeId(to),
            snapshot: id(max, max),
            next_offset: max,
            ok: true,
        },
        Frame::ClientRequest {
            id: max,
            args: Vec::new(),
            proto: 3,
            rights: 2,
        },
        Frame::ClientRequest {
            id: 0,
            args: vec![Vec::new(); 3],
            proto: 2,
            rights: 0,
        },
        Frame::ClientReply {
            id: max,
            reply: b"+OK\r\n".to_vec(),
        },
        Frame::ClientReply {
            id: 1,
            reply: b"*99999\r\n".to_vec(),
        },
    ];
    // Not every hostile message is in a Raft term: a vote in the receiver's term, too.
    out.push(raft(
        from,
        to,
        term,
        MessageBody::VoteResp { granted: true },
    ));
    out
}

/// Frames that are well framed but whose bodies lie about their counts, and plain garbage.
fn hostile_bytes(from: u64, to: u64, term: u64) -> Vec<Vec<u8>> {
    let frame = |kind: u8, body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        f
    };
    let header = |tag: u8| {
        let mut h = Vec::new();
        for x in [from, to, term] {
            h.extend_from_slice(&x.to_be_bytes());
        }
        h.push(tag);
        h
    };
    // Append: prev (term, index), commit, entry count past APPEND_ENTRIES_MAX, no entries.
    let mut append = header(4);
    for x in [term, 0, 0] {
        append.extend_from_slice(&x.to_be_bytes());
    }
    let mut too_many = append.clone();
    too_many.extend_from_slice(&(APPEND_ENTRIES_MAX as u32 + 1).to_be_bytes());
    let mut lying = append.clone();
    lying.extend_from_slice(&u32::MAX.to_be_bytes());
    // An entry whose data length is u32::MAX.
    let mut long_entry = append;
    long_entry.extend_from_slice(&1u32.to_be_bytes());
    for x in [term, 1] {
        long_entry.extend_from_slice(&x.to_be_bytes());
    }
    long_entry.push(0);
    long_entry.extend_from_slice(&u32::MAX.to_be_bytes());
    // A ClientRequest claiming u32::MAX arguments.
    let mut args = 7u64.to_be_bytes().to_vec();
    args.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut huge_header = ((FRAME_SIZE_MAX) as u32).to_be_bytes().to_vec();
    huge_header.push(2);
    vec![
        frame(2, &too_many),
        frame(2, &lying),
        frame(2, &long_entry),
        frame(5, &args),
        frame(2, &header(200)),
        frame(200, b"unknown kind"),
        frame(1, &[0; 30]),
        huge_header,
        u32::MAX.to_be_bytes().to_vec(),
        vec![0xff; 4096],
    ]
}

/// Sends `bytes` on a peer connection, then reads what comes back until the node is quiet or
/// closes the connection, so a node that answers is not blocked writing to us.
fn send_peer(mut s: TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    // Our end of file comes after every byte we sent, so the node has handled them all by
    // the time it closes the connection (or stops answering, for a node that is slow).
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut =>
            {
                break
            }
            _ => {}
        }
    }
}

fn info_u64(c: &Cluster, id: u64, field: &str) -> u64 {
    wait_for(LONG, &format!("INFO {field} of node {id}"), || {
        c.info(id)?.get(field)?.parse().ok()
    })
}

#[test]
fn no_peer_message_crashes_a_node_and_the_cluster_keeps_committing() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let started = Instant::now();
    let mut sent = 0;
    for round in 0..2 {
        let leader = c.wait_leader(LONG);
        assert_commits(&c, &format!("before-peer-{round}"));
        // Each node hears from each other member id (so the messages reach its core) and from
        // an id outside the membership.
        for to in IDS {
            let term = info_u64(&c, to, "term");
            let last = info_u64(&c, to, "last_log_index");
            for from in IDS.iter().copied().filter(|&f| f != to).chain([99]) {
                for f in hostile_frames(from, to, term, last) {
                    let mut bytes = Vec::new();
                    wire::encode(&f, &mut bytes)
                        .expect("hostile frames stay within the frame limits");
                    if let Some(s) = peer_conn(&c, to, from) {
                        send_peer(s, &bytes);
                        sent += 1;
                    }
                }
                for bytes in hostile_bytes(from, to, term) {
                    if let Some(s) = peer_conn(&c, to, from) {
                        send_peer(s, &bytes);
                        sent += 1;
                    }
                }
            }
            // Garbage in place of a Hello.
            send_raw_and_hang_up(c.node(to).peer, &[0x00, 0x00, 0x00, 0x1e, 0x01, 0xde, 0xad]);
        }
        // Peer connections that stop in the middle of a frame (one announcing the largest
        // frame) stay open while the cluster commits.
        let stalled: Vec<TcpStream> = IDS
            .iter()
            .filter_map(|&to| {
                let mut s = peer_conn(&c, to, 99)?;
                let mut partial = ((FRAME_SIZE_MAX - 5) as u32).to_be_bytes().to_vec();
                partial.extend_from_slice(&[2, 0, 0, 0]);
                s.write_all(&partial).ok()?;
                Some(s)
            })
            .collect();
        assert_all_up(
            &mut c,
            &format!("hostile peer messages (round {round}, leader {leader})"),
        );
        assert_commits(&c, &format!("after-peer-{round}"));
        assert_replicas_agree(&c, &format!("hostile peer messages (round {round})"));
        drop(stalled);
    }
    println!("{sent} hostile peer connections in {:?}", started.elapsed());
}

// ---- 3. a leader whose followers are both stopped ----

/// Queues `n` writes and `n` reads on `cl` and sends them without waiting for replies.
fn pipeline(cl: &mut Connection, tag: &str, n: usize) {
    for i in 0..n {
        let key = format!("{tag}-{i}");
        cl.queue(&[b"SET", key.as_bytes(), b"v"]);
        cl.queue(&[b"GET", key.as_bytes()]);
    }
    cl.flush().expect("send the pipeline");
}

/// Reads `n` replies from `cl`, each by `deadline`; returns them.
fn replies_by(cl: &mut Connection, n: usize, deadline: Instant, what: &str) -> Vec<Value> {
    (0..n)
        .map(|i| match cl.read_reply_by(deadline) {
            Ok(v) => v,
            Err(e) => panic!("{what}: reply {i} of {n} not received in time: {e}"),
        })
        .collect()
}

fn summarize(replies: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = replies
        .iter()
        .map(|v| match v {
            Value::Error(e) => format!(
                "-{}",
                e.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
            ),
            Value::Bulk(_) => "bulk".into(),
            other => format!("{other:?}"),
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

#[test]
fn a_leader_whose_followers_are_both_stopped_answers_every_pending_request() {
    let _g = serial();
    const ELECTION_TIMEOUT_MS: u64 = 500;
    let mut c = Cluster::start(Options {
        extra: vec![format!("election_timeout_ms = {ELECTION_TIMEOUT_MS}")],
        ..Options::default()
    });
    let leader = c.wait_leader(LONG);
    let fs = followers(leader);
    assert_commits(&c, "warm-up");
    const N: usize = 200;
    // Requests through a follower (forwarded to the leader) and to the leader, in flight when
    // the followers stop; then more to the leader once both are stopped.
    let mut via_follower = c.client(fs[0]).unwrap();
    let mut before = c.client(leader).unwrap();
    pipeline(&mut via_follower, "via-follower", N);
    pipeline(&mut before, "before", N);
    c.signal(fs[0], libc::SIGSTOP);
    c.signal(fs[1], libc::SIGSTOP);
    let stopped_at = Instant::now();
    let mut after = c.client(leader).unwrap();
    pipeline(&mut after, "after", N);
    // A leader cut off from its voters steps down within 2T of its last contact (the
    // election timeout is drawn from [T, 2T)), then answers what is pending; the rest is slack
    // for a loaded machine.
    let deadline =
        stopped_at + Duration::from_millis(2 * 2 * ELECTION_TIMEOUT_MS) + Duration::from_secs(5);
    let r_before = replies_by(
        &mut before,
        2 * N,
        deadline,
        "requests sent before the stop",
    );
    let r_after = replies_by(&mut after, 2 * N, deadline, "requests sent after the stop");
    println!(
        "all {} leader replies within {:?} of the stop; before: {:?}; after: {:?}",
        4 * N,
        stopped_at.elapsed(),
        summarize(&r_before),
        summarize(&r_after)
    );
    // No write was acknowledged without a majority.
    for (i, r) in r_after.iter().enumerate().step_by(2) {
        assert!(
            !matches!(r, Value::Simple(s) if s == "OK"),
            "write {i} acknowledged with both followers stopped"
        );
    }
    // A new request still gets an answer (not a hang) while both followers are stopped.
    let mut late = c.client(leader).unwrap();
    let r = late.call_str(&["GET", "before-0"]);
    println!("a new GET with both followers stopped: {}", brief(&r));
    assert!(r.is_ok(), "{r:?}");

    c.signal(fs[0], libc::SIGCONT);
    c.signal(fs[1], libc::SIGCONT);
    let r_follower = replies_by(
        &mut via_follower,
        2 * N,
        Instant::now() + LONG,
        "requests through the follower",
    );
    println!(
        "through the follower once resumed: {:?}",
        summarize(&r_follower)
    );
    c.wait_leader(LONG);
    assert_all_up(&mut c, "stopping both followers");
    assert_commits(&c, "resumed");
    assert_replicas_agree(&c, "stopping both followers");
}
