//! The peer wire codec from the outside: randomized round trips of every frame kind, every
//! truncation, random garbage and mutated frames (never a panic; anything accepted re-encodes
//! to the same bytes), and one test per error kind. Seeds are fixed; a failure prints the seed
//! and case number.

use kvraft::limits::{
    APPEND_ENTRIES_MAX, CLIENT_ARGS_MAX, ENTRY_SIZE_MAX, FRAME_HEADER_SIZE, FRAME_SIZE_MAX,
    MEMBERS_MAX, SNAPSHOT_CHUNK_SIZE_MAX,
};
use kvraft::prng::Prng;
use kvraft::raft::message::{AppendResult, Message, MessageBody, RejectHint};
use kvraft::raft::types::{
    ConfState, Entry, EntryId, EntryKind, LogIndex, NodeId, SnapshotMeta, Term, INDEX_MAX,
};
use kvraft::wire::{
    cluster_id, decode, decode_client_reply_ref, decode_client_request_with, encode,
    encode_client_reply_with, encode_client_request, encoded_len, peek_header, ClientRequestHead,
    DecodeError, EncodeError, Frame, CLIENT_REPLY_SIZE_MAX, KIND_CLIENT_REPLY, KIND_CLIENT_REQUEST,
    KIND_HELLO, KIND_RAFT, KIND_READ_INDEX_REPLY, KIND_READ_INDEX_REQUEST, KIND_SNAPSHOT_ACK,
    KIND_SNAPSHOT_CHUNK, MAGIC, PROTOCOL_VERSION,
};

// ---- random frames ----

/// A u64 biased towards the edges (0, 1, MAX) and small values, where off-by-ones live.
fn any_u64(rng: &mut Prng) -> u64 {
    match rng.range(0, 8) {
        0 => [0, 1, u64::MAX, u64::MAX - 1, u64::from(u32::MAX)][rng.range(0, 5) as usize],
        1..=3 => rng.range(0, 1000),
        _ => rng.next_u64(),
    }
}

fn node(rng: &mut Prng) -> NodeId {
    match rng.range(0, 4) {
        0 => NodeId(u64::MAX),
        1 => NodeId(rng.range(1, u64::MAX)),
        _ => NodeId(rng.range(1, 10)),
    }
}

fn entry_id(rng: &mut Prng) -> EntryId {
    EntryId::new(Term(any_u64(rng)), LogIndex(any_u64(rng)))
}

fn bytes(rng: &mut Prng, max: u64) -> Vec<u8> {
    let len = match rng.range(0, 10) {
        0 => 0,
        1 => rng.range(0, max + 1),
        _ => rng.range(0, max.min(48) + 1),
    };
    let mut b = vec![0u8; len as usize];
    rng.fill(&mut b);
    b
}

fn conf(rng: &mut Prng) -> ConfState {
    let total = rng.range(0, MEMBERS_MAX as u64 + 1);
    let voters_n = rng.range(0, total + 1);
    let span = if rng.chance(1, 2) { 100 } else { u64::MAX };
    let mut draw = |n: u64| {
        (0..n)
            .map(|_| NodeId(rng.range(1, span)))
            .collect::<Vec<_>>()
    };
    let voters = draw(voters_n);
    let learners = draw(total - voters_n);
    ConfState::new(voters, learners)
}

fn meta(rng: &mut Prng) -> SnapshotMeta {
    SnapshotMeta {
        last: entry_id(rng),
        conf: conf(rng),
    }
}

fn append(rng: &mut Prng) -> MessageBody {
    let count = match rng.range(0, 20) {
        0 => rng.range(0, 300),
        1 => 0,
        _ => rng.range(1, 8),
    };
    let prev = EntryId::new(Term(any_u64(rng)), LogIndex(rng.range(0, u64::MAX - 1000)));
    let entries = (0..count)
        .map(|i| Entry {
            term: Term(any_u64(rng)),
            index: prev.index.plus(1 + i),
            kind: [EntryKind::Command, EntryKind::Noop, EntryKind::ConfChange]
                [rng.range(0, 3) as usize],
            data: bytes(rng, 2048).into(),
        })
        .collect();
    MessageBody::Append {
        prev,
        entries,
        commit: LogIndex(any_u64(rng)),
    }
}

fn message_body(rng: &mut Prng) -> MessageBody {
    match rng.range(0, 10) {
        0 => MessageBody::PreVote {
            last: entry_id(rng),
            floor: Term(any_u64(rng)),
        },
        1 => MessageBody::PreVoteResp {
            granted: rng.chance(1, 2),
            last: entry_id(rng),
        },
        2 => MessageBody::Vote {
            last: entry_id(rng),
            transfer: rng.chance(1, 2),
        },
        3 => MessageBody::VoteResp {
            granted: rng.chance(1, 2),
        },
        4 => append(rng),
        5 => MessageBody::AppendResp {
            result: if rng.chance(1, 2) {
                AppendResult::Accepted {
                    match_index: LogIndex(any_u64(rng)),
                }
            } else {
                AppendResult::Rejected {
                    rejected: LogIndex(any_u64(rng)),
                    hint: RejectHint {
                        last_index: LogIndex(any_u64(rng)),
                        conflict: rng.chance(1, 2).then(|| entry_id(rng)),
                    },
                }
            },
        },
        6 => MessageBody::Heartbeat {
            commit: LogIndex(any_u64(rng)),
            read_seq: any_u64(rng),
        },
        7 => MessageBody::HeartbeatResp {
            read_seq: any_u64(rng),
        },
        8 => MessageBody::Snapshot { meta: meta(rng) },
        _ => MessageBody::TimeoutNow,
    }
}

fn snapshot_chunk(rng: &mut Prng) -> Frame {
    let data = bytes(rng, 4096);
    let len = data.len() as u64;
    let total_size = rng.range(len, u64::MAX);
    let offset = if rng.chance(1, 3) {
        total_size - len
    } else {
        rng.range(0, total_size - len + 1)
    };
    let done = offset + len == total_size && rng.chance(3, 4);
    Frame::SnapshotChunk {
        term: Term(any_u64(rng)),
        from: node(rng),
        to: node(rng),
        meta: meta(rng),
        total_size,
        offset,
        data,
        done,
    }
}

fn frame(rng: &mut Prng) -> Frame {
    match rng.range(0, 14) {
        0 => Frame::Hello {
            cluster_id: any_u64(rng),
            cluster_uid: u128::from(any_u64(rng)) << 64 | u128::from(any_u64(rng)),
            incarnation: u128::from(any_u64(rng)) << 64 | u128::from(any_u64(rng)),
            from: node(rng),
            to: node(rng),
        },
        1..=6 => Frame::Raft(Message {
            from: node(rng),
            to: node(rng),
            term: Term(any_u64(rng)),
            body: message_body(rng),
        }),
        7 => snapshot_chunk(rng),
        8 => Frame::SnapshotAck {
            term: Term(any_u64(rng)),
            from: node(rng),
            to: node(rng),
            snapshot: entry_id(rng),
            next_offset: any_u64(rng),
            ok: rng.chance(1, 2),
        },
        9 | 10 => {
            let argc = rng.range(0, 12);
            Frame::ClientRequest {
                id: any_u64(rng),
                args: (0..argc).map(|_| bytes(rng, 512)).collect(),
                proto: if rng.chance(1, 2) { 2 } else { 3 },
                rights: rng.range(0, 3) as u8,
            }
        }
        11 => Frame::ClientReply {
            id: any_u64(rng),
            reply: bytes(rng, 1024),
        },
        12 => Frame::ReadIndexRequest { id: any_u64(rng) },
        _ => match rng.chance(1, 4) {
            true => Frame::ReadIndexReply {
                id: any_u64(rng),
                index: None,
                now_ms: 0,
            },
            false => Frame::ReadIndexReply {
                id: any_u64(rng),
                index: Some(LogIndex(rng.range(0, INDEX_MAX.0 + 1))),
                now_ms: any_u64(rng),
            },
        },
    }
}

fn bytes_exact(rng: &mut Prng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.range(0, 256) as u8).collect()
}

fn encoded(f: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(f, &mut out).unwrap_or_else(|e| panic!("{e} for {f:?}"));
    out
}

/// Decoding arbitrary bytes never panics; whatever it accepts re-encodes to exactly the bytes
/// it consumed (the encoding is canonical, and `encode` accepting it proves the frame is valid).
fn check_decode_is_sound(buf: &[u8], ctx: &str) -> Result<Frame, DecodeError> {
    let result = decode(buf);
    check_borrowed_decoders_agree(buf, &result, ctx);
    match &result {
        Ok((f, used)) => {
            assert!(
                *used <= buf.len(),
                "{ctx}: consumed {used} of {}",
                buf.len()
            );
            assert_eq!(
                encoded(f),
                &buf[..*used],
                "{ctx}: accepted a non-canonical frame"
            );
        }
        Err(DecodeError::Incomplete) => {
            if let Ok(Some((_, body))) = peek_header(buf) {
                assert!(
                    buf.len() < FRAME_HEADER_SIZE + body,
                    "{ctx}: whole frame Incomplete"
                );
            }
        }
        Err(_) => {}
    }
    result.map(|(f, _)| f)
}

/// The node's borrowed decoders of ClientRequest and ClientReply give what `decode` gives
/// for their kind (the same frame, length and error), and leave every other kind to it.
fn check_borrowed_decoders_agree(
    buf: &[u8],
    decoded: &Result<(Frame, usize), DecodeError>,
    ctx: &str,
) {
    let kind = match peek_header(buf) {
        Ok(Some((kind, _))) => Some(kind),
        _ => None,
    };
    let mut args = Vec::new();
    let request = decode_client_request_with(buf, |a| args.push(a.to_vec())).map(|r| {
        r.map(|(head, n)| {
            let frame = Frame::ClientRequest {
                id: head.id,
                args,
                proto: head.proto,
                rights: head.rights,
            };
            (frame, n)
        })
    });
    let reply = decode_client_reply_ref(buf).map(|r| {
        r.map(|(id, reply, n)| {
            let reply = reply.to_vec();
            (Frame::ClientReply { id, reply }, n)
        })
    });
    for (mine, of) in [(request, KIND_CLIENT_REQUEST), (reply, KIND_CLIENT_REPLY)] {
        match (kind, mine) {
            // A header that cannot be read or judged: the same answer as `decode`.
            (None, mine) => assert_eq!(mine.map(|_| ()), decoded.clone().map(|_| ()), "{ctx}"),
            (Some(k), Ok(None)) => assert_ne!(k, of, "{ctx}: a frame of kind {of} left to decode"),
            (Some(k), mine) => {
                assert_eq!(k, of, "{ctx}: kind {k} taken as {of}");
                assert_eq!(mine.map(|r| r.unwrap()), *decoded, "{ctx}: kind {of}");
            }
        }
    }
}

fn outcome(r: &Result<Frame, DecodeError>) -> usize {
    match r {
        Ok(_) => 0,
        Err(DecodeError::Incomplete) => 1,
        Err(DecodeError::TooLarge { .. }) => 2,
        Err(DecodeError::UnknownKind { .. }) => 3,
        Err(DecodeError::Malformed { .. }) => 4,
        Err(DecodeError::Handshake { .. }) => 5,
    }
}

// ---- round trips ----

#[test]
fn random_frames_of_every_kind_round_trip_exactly() {
    let mut rng = Prng::new(0x5eed_0001);
    let mut seen_kinds = [0usize; 9];
    let mut seen_tags = [0usize; 10];
    let mut buf = Vec::new();
    for case in 0..100_000 {
        let f = frame(&mut rng);
        buf.clear();
        buf.extend_from_slice(&[0xAB; 3]); // encode appends: keep what was there
        encode(&f, &mut buf).unwrap_or_else(|e| panic!("case {case}: {e}"));
        let body = &buf[3..];
        assert_eq!(body.len(), encoded_len(&f), "case {case}: {f:?}");
        assert_eq!(
            peek_header(body),
            Ok(Some((f.kind(), body.len() - FRAME_HEADER_SIZE)))
        );
        let (g, used) = decode(body).unwrap_or_else(|e| panic!("case {case}: {e} for {f:?}"));
        assert_eq!((g, used), (f.clone(), body.len()), "case {case}");
        check_borrowed_decoders_agree(body, &Ok((f.clone(), body.len())), "round trip");
        if let Frame::ClientRequest {
            id,
            args,
            proto,
            rights,
        } = &f
        {
            let head = ClientRequestHead {
                id: *id,
                proto: *proto,
                rights: *rights,
            };
            let mut out = vec![0xAB; 3];
            encode_client_request(head, args, &mut out).unwrap();
            assert_eq!(
                out, buf,
                "case {case}: encode_client_request differs from encode"
            );
        }
        seen_kinds[f.kind() as usize] += 1;
        if let Frame::Raft(m) = &f {
            seen_tags[body[FRAME_HEADER_SIZE + 24] as usize] += 1;
            assert_eq!(body[FRAME_HEADER_SIZE + 24] as usize, tag_index(&m.body));
        }
    }
    assert!(seen_kinds[1..].iter().all(|&n| n > 1000), "{seen_kinds:?}");
    assert!(seen_tags.iter().all(|&n| n > 1000), "{seen_tags:?}");
}

fn tag_index(b: &MessageBody) -> usize {
    match b {
        MessageBody::PreVote { .. } => 0,
        MessageBody::PreVoteResp { .. } => 1,
        MessageBody::Vote { .. } => 2,
        MessageBody::VoteResp { .. } => 3,
        MessageBody::Append { .. } => 4,
        MessageBody::AppendResp { .. } => 5,
        MessageBody::Heartbeat { .. } => 6,
        MessageBody::HeartbeatResp { .. } => 7,
        MessageBody::Snapshot { .. } => 8,
        MessageBody::TimeoutNow => 9,
    }
}

#[test]
fn back_to_back_frames_decode_one_at_a_time() {
    let mut rng = Prng::new(0x5eed_0002);
    let frames: Vec<Frame> = (0..500).map(|_| frame(&mut rng)).collect();
    let mut stream = Vec::new();
    for f in &frames {
        encode(f, &mut stream).unwrap();
    }
    let mut at = 0;
    for (i, f) in frames.iter().enumerate() {
        let (g, used) = decode(&stream[at..]).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_eq!(&g, f, "frame {i}");
        at += used;
    }
    assert_eq!(at, stream.len());
    assert_eq!(decode(&stream[at..]), Err(DecodeError::Incomplete));
}

#[test]
fn the_largest_appends_fit_a_frame_and_round_trip() {
    let big = Entry {
        term: Term(7),
        index: LogIndex(1),
        kind: EntryKind::Command,
        data: vec![0x5a; ENTRY_SIZE_MAX].into(),
    };
    let many: Vec<Entry> = (0..APPEND_ENTRIES_MAX as u64)
        .map(|i| Entry {
            term: Term(7),
            index: LogIndex(1 + i),
            kind: EntryKind::Noop,
            data: vec![i as u8; 200].into(),
        })
        .collect();
    for entries in [vec![big], many] {
        let f = Frame::Raft(Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(7),
            body: MessageBody::Append {
                prev: EntryId::new(Term(6), LogIndex(0)),
                entries,
                commit: LogIndex(0),
            },
        });
        let b = encoded(&f);
        assert!(b.len() <= FRAME_SIZE_MAX, "{} bytes", b.len());
        assert_eq!(decode(&b), Ok((f, b.len())));
    }
}

#[test]
fn a_full_snapshot_chunk_and_a_full_conf_round_trip() {
    let conf = ConfState::new(
        (1..=40).map(NodeId).collect(),
        (41..=64).map(NodeId).collect(),
    );
    assert_eq!(conf.voters.len() + conf.learners.len(), MEMBERS_MAX);
    let f = Frame::SnapshotChunk {
        term: Term(3),
        from: NodeId(1),
        to: NodeId(64),
        meta: SnapshotMeta {
            last: EntryId::new(Term(3), LogIndex(1_000_000)),
            conf,
        },
        total_size: 10 * SNAPSHOT_CHUNK_SIZE_MAX as u64,
        offset: 9 * SNAPSHOT_CHUNK_SIZE_MAX as u64,
        data: vec![1; SNAPSHOT_CHUNK_SIZE_MAX],
        done: true,
    };
    let b = encoded(&f);
    assert_eq!(decode(&b), Ok((f, b.len())));
}

// ---- truncation, garbage, mutation ----

#[test]
fn every_truncation_of_a_valid_frame_is_incomplete() {
    let mut rng = Prng::new(0x5eed_0003);
    let mut prefixes = 0usize;
    for case in 0..3_000 {
        let b = encoded(&frame(&mut rng));
        if b.len() > 4096 {
            continue;
        }
        for n in 0..b.len() {
            assert_eq!(
                decode(&b[..n]),
                Err(DecodeError::Incomplete),
                "case {case} prefix {n}"
            );
            prefixes += 1;
        }
    }
    eprintln!("{prefixes} truncated prefixes checked");
    assert!(prefixes > 100_000, "only {prefixes} prefixes");
}

/// Random bytes, with a plausible header most of the time so bodies get parsed.
fn garbage(rng: &mut Prng) -> Vec<u8> {
    let body_len = rng.range(0, 160) as usize;
    let mut b = vec![0u8; FRAME_HEADER_SIZE + body_len + rng.range(0, 4) as usize];
    rng.fill(&mut b);
    if rng.chance(7, 8) {
        b[0..4].copy_from_slice(&(body_len as u32).to_be_bytes());
        b[4] = rng.range(0, 8) as u8;
        if b[4] == KIND_HELLO && rng.chance(3, 4) {
            let n = 4.min(body_len);
            b[5..5 + n].copy_from_slice(&MAGIC.to_be_bytes()[..n]);
        }
    }
    if rng.chance(1, 2) && b.len() > 30 {
        // Mostly-small numbers make counts and tags plausible.
        for x in &mut b[FRAME_HEADER_SIZE..] {
            if rng.chance(2, 3) {
                *x = rng.range(0, 3) as u8;
            }
        }
    }
    b
}

#[test]
fn random_garbage_gives_errors_never_a_panic() {
    let mut rng = Prng::new(0x5eed_0004);
    let mut outcomes = [0usize; 6];
    for case in 0..150_000 {
        let b = garbage(&mut rng);
        outcomes[outcome(&check_decode_is_sound(&b, &format!("garbage case {case}")))] += 1;
    }
    eprintln!("garbage [ok, incomplete, too large, kind, malformed, handshake]: {outcomes:?}");
    // Some garbage is a valid frame (e.g. a TimeoutNow); none may panic; every path is reached.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
    assert!(outcomes[0] < 150_000 / 2, "{outcomes:?}");
}

fn mutate(rng: &mut Prng, b: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let at = rng.range(0, b.len() as u64) as usize;
        match rng.range(0, 6) {
            0 => b[at] ^= 1 << rng.range(0, 8),
            1 => b[at] = rng.next_u64() as u8,
            2 => b.insert(at, rng.next_u64() as u8),
            3 if b.len() > 1 => {
                b.remove(at);
            }
            4 => {
                // Shift the length field so the body boundary moves.
                let len = u32::from_be_bytes(b[0..4].try_into().unwrap());
                let delta = rng.range(0, 9) as u32;
                let len = if rng.chance(1, 2) {
                    len.wrapping_add(delta)
                } else {
                    len.wrapping_sub(delta)
                };
                b[0..4].copy_from_slice(&len.to_be_bytes());
            }
            _ => {
                let n = 8.min(b.len() - at);
                for x in &mut b[at..at + n] {
                    *x = 0xff;
                }
            }
        }
    }
}

#[test]
fn mutated_valid_frames_give_errors_or_canonical_frames_never_a_panic() {
    let mut rng = Prng::new(0x5eed_0005);
    let mut outcomes = [0usize; 6];
    for case in 0..150_000 {
        let mut b = encoded(&frame(&mut rng));
        mutate(&mut rng, &mut b);
        outcomes[outcome(&check_decode_is_sound(&b, &format!("mutation case {case}")))] += 1;
    }
    eprintln!("mutation [ok, incomplete, too large, kind, malformed, handshake]: {outcomes:?}");
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
    assert!(outcomes[0] < 150_000 / 2, "{outcomes:?}");
}

// ---- each error, specifically ----

fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = (body.len() as u32).to_be_bytes().to_vec();
    b.push(kind);
    b.extend_from_slice(body);
    b
}

fn malformed_what(b: &[u8]) -> &'static str {
    match decode(b) {
        Err(DecodeError::Malformed { what, .. }) => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn raft_frame(body: MessageBody) -> Vec<u8> {
    encoded(&Frame::Raft(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(5),
        body,
    }))
}

#[test]
fn lengths_over_the_limit_are_refused_from_the_header_alone() {
    for len in [
        u32::MAX,
        (FRAME_SIZE_MAX - FRAME_HEADER_SIZE + 1) as u32,
        1 << 31,
    ] {
        let mut b = len.to_be_bytes().to_vec();
        b.push(KIND_RAFT);
        let want = DecodeError::TooLarge {
            len: FRAME_HEADER_SIZE + len as usize,
            max: FRAME_SIZE_MAX,
        };
        assert_eq!(peek_header(&b), Err(want.clone()));
        assert_eq!(decode(&b), Err(want));
    }
    let mut at_limit = ((FRAME_SIZE_MAX - FRAME_HEADER_SIZE) as u32)
        .to_be_bytes()
        .to_vec();
    at_limit.push(KIND_CLIENT_REPLY);
    assert_eq!(
        peek_header(&at_limit),
        Ok(Some((KIND_CLIENT_REPLY, FRAME_SIZE_MAX - 5)))
    );
    assert_eq!(decode(&at_limit), Err(DecodeError::Incomplete));
}

#[test]
fn unknown_kinds_are_refused_from_the_header() {
    for kind in [0u8, 9, 99, 255] {
        assert_eq!(
            decode(&raw(kind, &[])),
            Err(DecodeError::UnknownKind { kind })
        );
        assert_eq!(
            peek_header(&raw(kind, &[])),
            Err(DecodeError::UnknownKind { kind })
        );
    }
    assert_eq!(peek_header(&[0, 0, 0, 0]), Ok(None));
}

#[test]
fn a_hello_with_the_wrong_magic_or_version_is_a_handshake_error() {
    let good = encoded(&Frame::Hello {
        cluster_id: cluster_id("prod"),
        cluster_uid: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
        incarnation: u128::MAX - 1,
        from: NodeId(1),
        to: NodeId(2),
    });
    assert_eq!(good.len(), 67);
    assert_eq!(&good[5..9], b"KVRF");
    assert_eq!(&good[9..11], &PROTOCOL_VERSION.to_be_bytes());
    assert_eq!(PROTOCOL_VERSION, 5);
    // The byte layout of frame.rs's table: uid at body offset 14, incarnation at 30.
    assert_eq!(
        &good[19..35],
        &0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10u128.to_be_bytes()
    );
    assert_eq!(&good[35..51], &(u128::MAX - 1).to_be_bytes());
    assert_eq!(&good[51..59], &1u64.to_be_bytes());
    let mut http = good.clone();
    http[5..9].copy_from_slice(b"GET ");
    assert!(matches!(decode(&http), Err(DecodeError::Handshake { .. })));
    // A future version with a longer Hello is refused for its version, not its length.
    let mut v2 = good[5..].to_vec();
    let future = PROTOCOL_VERSION + 1;
    v2[4..6].copy_from_slice(&future.to_be_bytes());
    v2.extend_from_slice(&[0; 16]);
    match decode(&raw(KIND_HELLO, &v2)) {
        Err(DecodeError::Handshake { what }) => {
            assert!(what.contains(&format!("version {future}")), "{what}")
        }
        other => panic!("{other:?}"),
    }
    let mut zero_from = good.clone();
    zero_from[51..59].fill(0);
    assert_eq!(malformed_what(&zero_from), "hello from");
}

#[test]
fn short_bodies_and_trailing_bytes_are_malformed() {
    let b = raft_frame(MessageBody::Heartbeat {
        commit: LogIndex(3),
        read_seq: 9,
    });
    let body = &b[5..];
    assert_eq!(
        malformed_what(&raw(KIND_RAFT, &body[..body.len() - 1])),
        "heartbeat read seq"
    );
    let mut long = body.to_vec();
    long.push(0);
    assert_eq!(
        malformed_what(&raw(KIND_RAFT, &long)),
        "trailing bytes after the body"
    );
    assert_eq!(malformed_what(&raw(KIND_SNAPSHOT_ACK, &[])), "ack term");
}

#[test]
fn bad_tags_and_bools_are_malformed() {
    let mut b = raft_frame(MessageBody::TimeoutNow);
    b[5 + 24] = 10;
    assert_eq!(malformed_what(&b), "unknown message tag");
    let mut b = raft_frame(MessageBody::VoteResp { granted: true });
    b[5 + 25] = 2;
    assert_eq!(malformed_what(&b), "vote granted");
    let mut b = raft_frame(MessageBody::AppendResp {
        result: AppendResult::Accepted {
            match_index: LogIndex(1),
        },
    });
    b[5 + 25] = 2;
    assert_eq!(malformed_what(&b), "unknown append result tag");
}

fn one_entry_append() -> Vec<u8> {
    raft_frame(MessageBody::Append {
        prev: EntryId::new(Term(1), LogIndex(4)),
        entries: vec![Entry {
            term: Term(1),
            index: LogIndex(5),
            kind: EntryKind::Command,
            data: b"set k v".to_vec().into(),
        }],
        commit: LogIndex(4),
    })
}

#[test]
fn entry_counts_kinds_indexes_and_sizes_are_checked() {
    let b = one_entry_append();
    // Offsets in the body: 25 prev, 41 commit, 49 count, 53 entry term, 61 index, 69 kind,
    // 70 data length.
    let body_at = |off: usize| 5 + off;
    let mut huge_count = b.clone();
    huge_count[body_at(49)..body_at(53)].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(malformed_what(&huge_count), "entry count");
    let mut over_max = b.clone();
    over_max[body_at(49)..body_at(53)]
        .copy_from_slice(&(APPEND_ENTRIES_MAX as u32 + 1).to_be_bytes());
    assert_eq!(malformed_what(&over_max), "entry count");
    let mut kind = b.clone();
    kind[body_at(69)] = 3;
    assert_eq!(malformed_what(&kind), "unknown entry kind");
    let mut gap = b.clone();
    gap[body_at(61)..body_at(69)].copy_from_slice(&7u64.to_be_bytes());
    assert_eq!(
        malformed_what(&gap),
        "entry index does not follow prev contiguously"
    );
    let mut too_big = b.clone();
    too_big[body_at(70)..body_at(74)].copy_from_slice(&(ENTRY_SIZE_MAX as u32 + 1).to_be_bytes());
    assert_eq!(malformed_what(&too_big), "entry data");
    let mut short = b.clone();
    short[body_at(70)..body_at(74)].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(malformed_what(&short), "entry data");
}

#[test]
fn node_id_zero_is_refused_where_a_member_is_named() {
    let mut b = raft_frame(MessageBody::TimeoutNow);
    b[5..13].fill(0);
    assert_eq!(malformed_what(&b), "message from");
    let mut b = raft_frame(MessageBody::TimeoutNow);
    b[13..21].fill(0);
    assert_eq!(malformed_what(&b), "message to");
    let snap = raft_frame(MessageBody::Snapshot {
        meta: SnapshotMeta {
            last: EntryId::new(Term(2), LogIndex(9)),
            conf: ConfState::new(vec![NodeId(1), NodeId(2)], vec![]),
        },
    });
    let mut b = snap.clone();
    // Voters start at body offset 25 + 16 + 4 = 45.
    b[5 + 45..5 + 53].fill(0);
    assert_eq!(malformed_what(&b), "voters");
}

#[test]
fn a_conf_state_that_is_unsorted_duplicated_or_overlapping_is_malformed() {
    let with_conf = |voters: &[u64], learners: &[u64]| {
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&2u64.to_be_bytes());
        body.extend_from_slice(&5u64.to_be_bytes());
        body.push(8); // Snapshot
        body.extend_from_slice(&[0; 16]);
        for list in [voters, learners] {
            body.extend_from_slice(&(list.len() as u32).to_be_bytes());
            for id in list {
                body.extend_from_slice(&id.to_be_bytes());
            }
        }
        raw(KIND_RAFT, &body)
    };
    assert!(decode(&with_conf(&[1, 2], &[3])).is_ok());
    let what = "conf state not sorted, duplicated or overlapping";
    assert_eq!(malformed_what(&with_conf(&[2, 1], &[])), what);
    assert_eq!(malformed_what(&with_conf(&[1, 1], &[])), what);
    assert_eq!(malformed_what(&with_conf(&[1, 2], &[2])), what);
    let too_many: Vec<u64> = (1..=MEMBERS_MAX as u64 + 1).collect();
    assert_eq!(malformed_what(&with_conf(&too_many, &[])), "voters");
    assert_eq!(
        malformed_what(&with_conf(&too_many[..40], &too_many[40..])),
        "learners"
    );
}

#[test]
fn a_snapshot_chunk_outside_its_file_is_malformed() {
    let chunk = |total_size: u64, offset: u64, len: usize, done: bool| {
        let mut body = Vec::new();
        for v in [4u64, 1, 2, 4, 100] {
            body.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&[0; 8]); // no voters, no learners
        body.extend_from_slice(&total_size.to_be_bytes());
        body.extend_from_slice(&offset.to_be_bytes());
        body.push(u8::from(done));
        body.extend_from_slice(&(len as u32).to_be_bytes());
        body.extend(std::iter::repeat_n(7, len));
        raw(KIND_SNAPSHOT_CHUNK, &body)
    };
    assert!(decode(&chunk(10, 6, 4, true)).is_ok());
    assert!(decode(&chunk(0, 0, 0, true)).is_ok());
    let what = "chunk range outside the snapshot, or done before its end";
    assert_eq!(malformed_what(&chunk(10, 7, 4, false)), what);
    assert_eq!(malformed_what(&chunk(10, 5, 4, true)), what);
    assert_eq!(malformed_what(&chunk(u64::MAX, u64::MAX, 1, false)), what);
    let mut over = chunk(u64::MAX, 0, 0, false);
    let n = over.len();
    over[n - 4..].copy_from_slice(&(SNAPSHOT_CHUNK_SIZE_MAX as u32 + 1).to_be_bytes());
    assert_eq!(malformed_what(&over), "chunk data");
}

#[test]
fn client_request_counts_are_checked_against_the_bytes_present() {
    let ok = encoded(&Frame::ClientRequest {
        id: 1,
        args: vec![b"GET".to_vec(), b"k".to_vec()],
        proto: 2,
        rights: 1,
    });
    let mut count = ok.clone();
    // 14 body bytes follow the count (arguments, protocol, rights): room for at most 3
    // four-byte lengths.
    count[13..17].copy_from_slice(&4u32.to_be_bytes());
    assert_eq!(malformed_what(&count), "argument count");
    count[13..17].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(malformed_what(&count), "argument");
    count[13..17].copy_from_slice(&(CLIENT_ARGS_MAX as u32 + 1).to_be_bytes());
    assert_eq!(malformed_what(&count), "argument count");
    let mut arg_len = ok.clone();
    arg_len[17..21].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(malformed_what(&arg_len), "argument");
    // The RESP protocol byte is 2 or 3; the trailing rights byte at most 2.
    let mut proto = ok.clone();
    let n = proto.len();
    proto[n - 2] = 4;
    assert_eq!(malformed_what(&proto), "protocol");
    let mut rights = ok.clone();
    *rights.last_mut().unwrap() = 3;
    assert_eq!(malformed_what(&rights), "rights");
    let mut short = ok.clone();
    short.pop();
    short[..4].copy_from_slice(&((ok.len() - 6) as u32).to_be_bytes());
    assert_eq!(malformed_what(&short), "rights");
    let mut reply = encoded(&Frame::ClientReply {
        id: 1,
        reply: b"+OK\r\n".to_vec(),
    });
    reply[13..17].copy_from_slice(&6u32.to_be_bytes());
    assert_eq!(malformed_what(&reply), "reply");
    assert_eq!(raw(KIND_CLIENT_REQUEST, &[])[4], KIND_CLIENT_REQUEST);
}

#[test]
fn every_error_displays_its_reason() {
    let errors = [
        DecodeError::Incomplete,
        DecodeError::TooLarge {
            len: 1 << 32,
            max: FRAME_SIZE_MAX,
        },
        DecodeError::UnknownKind { kind: 9 },
        DecodeError::Malformed {
            kind: KIND_RAFT,
            what: "entry count",
        },
        DecodeError::Handshake {
            what: "protocol version 2, expected 1".into(),
        },
    ];
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(shown[1].contains("4294967296") && shown[1].contains(&FRAME_SIZE_MAX.to_string()));
    assert!(shown[2].contains('9'));
    assert!(shown[3].contains("entry count"));
    assert!(shown[4].contains("version 2"));
}

#[test]
fn cluster_ids_are_fnv1a_and_differ_between_names() {
    // Published FNV-1a 64 test vectors.
    assert_eq!(cluster_id(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(cluster_id("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(cluster_id("foobar"), 0x8594_4171_f739_67e8);
    assert_ne!(cluster_id("prod"), cluster_id("staging"));
}

// ---- encoding sizes that came from outside ----

/// `encode` of `f` must fail with `TooLarge { kind, what, .. }` and leave `out` untouched.
fn assert_refused(f: &Frame, what: &str) -> EncodeError {
    let mut out = vec![0xAB; 3];
    let err = encode(f, &mut out).expect_err("an oversize frame was encoded");
    let EncodeError::TooLarge {
        kind,
        what: w,
        len,
        max,
    } = &err;
    assert_eq!((*kind, *w), (f.kind(), what), "{err}");
    assert!(len > max, "{err}");
    assert_eq!(out, vec![0xAB; 3], "a refused frame wrote bytes");
    err
}

fn raft_msg(body: MessageBody) -> Frame {
    Frame::Raft(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(3),
        body,
    })
}

/// Issue 12: a leader answering an MGET of ten ~1 MiB values forwarded by a follower built a
/// 10 MiB ClientReply, and `encode` panicked ("frame of 10484902 bytes exceeds 8388608").
#[test]
fn a_reply_larger_than_a_frame_is_an_encode_error_not_a_panic() {
    let reply = vec![b'x'; 10 * 1024 * 1024];
    let err = assert_refused(&Frame::ClientReply { id: 9, reply }, "frame bytes");
    let shown = err.to_string();
    assert!(
        shown.contains(&FRAME_SIZE_MAX.to_string()) && shown.contains("kind 6"),
        "{shown}"
    );
    // The advertised limit is exact: the largest reply fits, one byte more does not.
    let fits = Frame::ClientReply {
        id: 9,
        reply: vec![b'y'; CLIENT_REPLY_SIZE_MAX],
    };
    let b = encoded(&fits);
    assert_eq!(b.len(), FRAME_SIZE_MAX);
    assert_eq!(decode(&b), Ok((fits, FRAME_SIZE_MAX)));
    let over = Frame::ClientReply {
        id: 9,
        reply: vec![b'y'; CLIENT_REPLY_SIZE_MAX + 1],
    };
    assert_refused(&over, "frame bytes");
}

/// Issue 16: a leader writes the reply to a forwarded command straight into the frame; the
/// bytes are exactly those of the `Frame::ClientReply` it replaces, whatever the reply's
/// length (under its bound), and a bound beyond the limit appends nothing.
#[test]
fn a_client_reply_written_in_place_is_the_frame_encode_would_build() {
    let mut rng = Prng::new(16);
    for len in [0usize, 1, 5, 300, 70_000] {
        let reply = bytes_exact(&mut rng, len);
        let id = any_u64(&mut rng);
        let mut out = b"queued before".to_vec();
        let bound = len + rng.range(0, 30) as usize;
        encode_client_reply_with(id, bound, &mut out, |o| o.extend_from_slice(&reply))
            .expect("within the limit");
        let want = encoded(&Frame::ClientReply { id, reply });
        assert_eq!(&out[..13], b"queued before");
        assert_eq!(out[13..], want[..], "reply of {len} bytes");
    }
    let mut out = b"x".to_vec();
    let err = encode_client_reply_with(1, CLIENT_REPLY_SIZE_MAX + 1, &mut out, |_| {
        panic!("nothing is written past the limit")
    });
    assert!(matches!(err, Err(EncodeError::TooLarge { .. })), "{err:?}");
    assert_eq!(out, b"x");
}

#[test]
fn every_count_decode_refuses_is_an_encode_error() {
    let args = vec![Vec::new(); CLIENT_ARGS_MAX + 1];
    assert_refused(
        &Frame::ClientRequest {
            id: 1,
            args,
            proto: 2,
            rights: 0,
        },
        "arguments",
    );
    let members = ConfState::new((1..=MEMBERS_MAX as u64 + 1).map(NodeId).collect(), vec![]);
    let meta = SnapshotMeta {
        last: EntryId::new(Term(2), LogIndex(10)),
        conf: members,
    };
    assert_refused(
        &raft_msg(MessageBody::Snapshot { meta: meta.clone() }),
        "members",
    );
    let chunk = |meta: SnapshotMeta, len: usize| Frame::SnapshotChunk {
        term: Term(2),
        from: NodeId(1),
        to: NodeId(2),
        meta,
        total_size: len as u64,
        offset: 0,
        data: vec![0; len],
        done: true,
    };
    assert_refused(&chunk(meta, 1), "members");
    let small = SnapshotMeta {
        last: EntryId::new(Term(2), LogIndex(10)),
        conf: ConfState::new(vec![NodeId(1)], vec![]),
    };
    assert_refused(&chunk(small, SNAPSHOT_CHUNK_SIZE_MAX + 1), "chunk bytes");
    let entries = |n: u64, size: usize| MessageBody::Append {
        prev: EntryId::new(Term(3), LogIndex(0)),
        entries: (1..=n)
            .map(|i| Entry {
                term: Term(3),
                index: LogIndex(i),
                kind: EntryKind::Command,
                data: vec![1; size].into(),
            })
            .collect(),
        commit: LogIndex(0),
    };
    assert_refused(
        &raft_msg(entries(APPEND_ENTRIES_MAX as u64 + 1, 0)),
        "entries",
    );
    assert_refused(&raft_msg(entries(1, ENTRY_SIZE_MAX + 1)), "entry bytes");
}

/// The follower-read frames of protocol version 5, byte by byte as `frame.rs` documents them;
/// a refusal carrying an index or a time, and an index beyond `INDEX_MAX`, are malformed.
#[test]
fn read_index_frames_are_laid_out_as_documented_and_refusals_carry_nothing() {
    let req = encoded(&Frame::ReadIndexRequest { id: 0x0102 });
    assert_eq!(
        req,
        [0, 0, 0, 8, KIND_READ_INDEX_REQUEST, 0, 0, 0, 0, 0, 0, 1, 2]
    );
    let ok = encoded(&Frame::ReadIndexReply {
        id: 7,
        index: Some(LogIndex(9)),
        now_ms: 11,
    });
    assert_eq!(&ok[..5], &[0, 0, 0, 25, KIND_READ_INDEX_REPLY]);
    assert_eq!(&ok[5..13], &7u64.to_be_bytes());
    assert_eq!(ok[13], 1);
    assert_eq!(&ok[14..22], &9u64.to_be_bytes());
    assert_eq!(&ok[22..30], &11u64.to_be_bytes());
    let refused = encoded(&Frame::ReadIndexReply {
        id: 7,
        index: None,
        now_ms: 0,
    });
    assert_eq!(&refused[13..30], &[0; 17]);
    let mut with_index = refused.clone();
    with_index[21] = 1;
    assert!(matches!(
        decode(&with_index),
        Err(DecodeError::Malformed { .. })
    ));
    let mut with_time = refused.clone();
    with_time[29] = 1;
    assert!(matches!(
        decode(&with_time),
        Err(DecodeError::Malformed { .. })
    ));
    let mut beyond = ok.clone();
    beyond[14..22].copy_from_slice(&(INDEX_MAX.0 + 1).to_be_bytes());
    assert!(matches!(
        decode(&beyond),
        Err(DecodeError::Malformed { .. })
    ));
    let mut bad_bool = ok;
    bad_bool[13] = 2;
    assert!(matches!(
        decode(&bad_bool),
        Err(DecodeError::Malformed { .. })
    ));
}
