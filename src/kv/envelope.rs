//! The entry envelope: what the leader adds around a command payload when it proposes it, so
//! that applying the entry needs no clock and no local knowledge (the leader's time, and the
//! client session the write belongs to).
//!
//! Owns: the byte layout below, its encoding and its check-then-decode.
//! Must not: interpret the command inside (that is `command.rs`), read a clock.
//!
//! # Log entry payload, format version 2 (all integers big-endian)
//!
//! ```text
//! offset  0  u8   version = 2 (ENVELOPE_VERSION)
//! offset  1  u64  leader stamp: ms since the Unix epoch, set by the leader when it proposes
//! offset  9  u8   flags: bit 0 = a session tag follows (other bits must be 0)
//! offset 10  u64  session id      \
//! offset 18  u64  sequence number  } only when flags bit 0
//! offset 26  u64  lowest sequence  / still outstanding at the client
//! then       the command payload exactly as command.rs encodes it (starting with its own
//!            format version byte, 1)
//! ```
//! A payload whose first byte is 1 is a bare command payload (written before envelopes
//! existed, or by tests): it applies with the previous entry's stamp and no session.
//!
//! Invariants:
//! 1. `open(&wrap(e, c)) == Ok((Some(e), c))` for every envelope `e` and every command `c`
//!    whose first byte is `command::FORMAT_VERSION`.
//! 2. `open` checks every length against the bytes present before reading, and answers any
//!    other input with a `DecodeError` (never a panic); a wrapped payload is never longer
//!    than the command plus `ENVELOPE_SIZE_MAX`.

use crate::kv::command::FORMAT_VERSION as COMMAND_VERSION;
use crate::payload::Payload;
use byteorder::{BigEndian, ByteOrder};

/// The first byte of an enveloped payload.
pub const ENVELOPE_VERSION: u8 = 2;

/// Bytes of the envelope without a session tag: version, stamp, flags.
pub const ENVELOPE_HEADER_SIZE: usize = 1 + 8 + 1;
/// Bytes of a session tag: id, sequence, lowest outstanding sequence.
pub const SESSION_TAG_SIZE: usize = 3 * 8;
/// Most bytes an envelope adds in front of a command payload.
pub const ENVELOPE_SIZE_MAX: usize = ENVELOPE_HEADER_SIZE + SESSION_TAG_SIZE;

const OFFSET_STAMP: usize = 1;
const OFFSET_FLAGS: usize = OFFSET_STAMP + 8;
const OFFSET_SESSION: usize = OFFSET_FLAGS + 1;
const _: () = assert!(OFFSET_SESSION == ENVELOPE_HEADER_SIZE);
const _: () = assert!(ENVELOPE_VERSION != COMMAND_VERSION);

/// Flag bit: a session tag follows the flags byte.
const FLAG_SESSION: u8 = 1;

/// The client session a write belongs to (exactly-once writes, Raft dissertation §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTag {
    /// The session's id (the index of the entry that opened it).
    pub id: u64,
    /// This write's sequence number within the session.
    pub seq: u64,
    /// The lowest sequence number the client still waits for: results below it may go.
    pub lowest: u64,
}

/// What the leader stamps on an entry when it proposes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The leader's time at proposal, ms since the Unix epoch. Apply's "now" is the largest
    /// stamp applied so far, so it never goes backwards even if a later leader's clock does.
    pub stamp_ms: u64,
    pub session: Option<SessionTag>,
}

/// Why an entry payload's envelope did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    /// The first byte is neither an envelope nor a bare command version.
    Version(u8),
    /// The envelope header or session tag is cut short: `need` bytes, `have` present.
    Truncated {
        need: usize,
        have: usize,
    },
    /// Flag bits this version does not define.
    Flags(u8),
    /// The envelope holds no command.
    NoCommand,
    /// The wrapped command's first byte is not the command format version (nested
    /// envelopes included).
    CommandVersion(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty payload"),
            DecodeError::Version(v) => write!(f, "unknown entry format version {v}"),
            DecodeError::Truncated { need, have } => {
                write!(f, "envelope truncated: {have} of {need} bytes")
            }
            DecodeError::Flags(b) => write!(f, "unknown envelope flags {b:#04x}"),
            DecodeError::NoCommand => write!(f, "envelope without a command"),
            DecodeError::CommandVersion(v) => {
                write!(f, "enveloped command has format version {v}")
            }
        }
    }
}

/// The payload of a log entry: `command` (as `command.rs` encodes it) behind `env`.
pub fn wrap(env: &Envelope, command: &[u8]) -> Vec<u8> {
    // Exactly the bytes written: the leader keeps this vector in its in-memory log until
    // compaction (tens of thousands of entries), so spare room would cost a malloc size
    // class per entry.
    let (head, n) = header(env);
    let mut out = Vec::with_capacity(n + command.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(command);
    out
}

/// `wrap`'s bytes, written straight into the payload a log entry holds: no vector, no copy
/// through the stack, no heap allocation (see `crate::payload`).
pub fn wrap_shared(env: &Envelope, command: &[u8]) -> Payload {
    let (head, n) = header(env);
    Payload::build(n + command.len(), |buf| {
        buf[..n].copy_from_slice(&head[..n]);
        buf[n..].copy_from_slice(command);
    })
}

/// The envelope's bytes (the first `n` of the array).
fn header(env: &Envelope) -> ([u8; ENVELOPE_SIZE_MAX], usize) {
    let mut head = [0u8; ENVELOPE_SIZE_MAX];
    head[0] = ENVELOPE_VERSION;
    BigEndian::write_u64(&mut head[OFFSET_STAMP..OFFSET_FLAGS], env.stamp_ms);
    match env.session {
        None => (head, ENVELOPE_HEADER_SIZE),
        Some(tag) => {
            head[OFFSET_FLAGS] = FLAG_SESSION;
            for (i, v) in [tag.id, tag.seq, tag.lowest].into_iter().enumerate() {
                let at = OFFSET_SESSION + 8 * i;
                BigEndian::write_u64(&mut head[at..at + 8], v);
            }
            (head, ENVELOPE_SIZE_MAX)
        }
    }
}

/// Split an entry payload into its envelope (`None` for a bare version-1 command payload)
/// and the command payload it carries.
pub fn open(payload: &[u8]) -> Result<(Option<Envelope>, &[u8]), DecodeError> {
    match payload.first() {
        None => return Err(DecodeError::Empty),
        Some(&COMMAND_VERSION) => return Ok((None, payload)),
        Some(&ENVELOPE_VERSION) => {}
        Some(&v) => return Err(DecodeError::Version(v)),
    }
    let have = payload.len();
    if have < ENVELOPE_HEADER_SIZE {
        return Err(DecodeError::Truncated {
            need: ENVELOPE_HEADER_SIZE,
            have,
        });
    }
    let stamp_ms = BigEndian::read_u64(&payload[OFFSET_STAMP..]);
    let flags = payload[OFFSET_FLAGS];
    if flags & !FLAG_SESSION != 0 {
        return Err(DecodeError::Flags(flags));
    }
    let (session, command) = if flags & FLAG_SESSION != 0 {
        let need = ENVELOPE_HEADER_SIZE + SESSION_TAG_SIZE;
        if have < need {
            return Err(DecodeError::Truncated { need, have });
        }
        let tag = &payload[OFFSET_SESSION..need];
        let tag = SessionTag {
            id: BigEndian::read_u64(&tag[0..8]),
            seq: BigEndian::read_u64(&tag[8..16]),
            lowest: BigEndian::read_u64(&tag[16..24]),
        };
        (Some(tag), &payload[need..])
    } else {
        (None, &payload[ENVELOPE_HEADER_SIZE..])
    };
    match command.first() {
        None => Err(DecodeError::NoCommand),
        Some(&COMMAND_VERSION) => Ok((Some(Envelope { stamp_ms, session }), command)),
        Some(&v) => Err(DecodeError::CommandVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::encode_write;
    use crate::kv::command::WriteCmd;

    fn command() -> Vec<u8> {
        encode_write(&WriteCmd::Set {
            flags: 0,
            key: b"k",
            value: b"v",
        })
    }

    fn envelopes() -> Vec<Envelope> {
        let tag = |id, seq, lowest| Some(SessionTag { id, seq, lowest });
        vec![
            Envelope {
                stamp_ms: 0,
                session: None,
            },
            Envelope {
                stamp_ms: 1_800_000_000_123,
                session: None,
            },
            Envelope {
                stamp_ms: u64::MAX,
                session: tag(7, 9, 3),
            },
            Envelope {
                stamp_ms: 5,
                session: tag(u64::MAX, 0, u64::MAX),
            },
        ]
    }

    #[test]
    fn wrapped_commands_open_to_the_same_envelope_and_command() {
        let c = command();
        for e in envelopes() {
            let p = wrap(&e, &c);
            let extra = if e.session.is_some() {
                ENVELOPE_SIZE_MAX
            } else {
                ENVELOPE_HEADER_SIZE
            };
            assert_eq!(p.len(), c.len() + extra, "{e:?}");
            assert_eq!(p[0], ENVELOPE_VERSION);
            assert_eq!(open(&p), Ok((Some(e), &c[..])), "{e:?}");
            assert_eq!(
                &wrap_shared(&e, &c)[..],
                &p[..],
                "{e:?}: the shared copy differs"
            );
        }
    }

    #[test]
    fn shared_payloads_equal_wrap_on_both_sides_of_the_shared_block_limit() {
        for e in envelopes() {
            let (_, n) = header(&e);
            // wrap_shared does not read the command: any bytes do. Payloads of 1 byte past
            // the header, up to the arena's shared limit and past it (a block of its own).
            let shared_max = crate::payload::SHARED_MAX - n;
            for len in [
                1,
                shared_max - 1,
                shared_max,
                shared_max + 1,
                3 * shared_max,
            ] {
                let c: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let shared = wrap_shared(&e, &c);
                assert_eq!(shared.len(), n + len, "{e:?}, {len} bytes");
                assert_eq!(&shared[..], &wrap(&e, &c)[..], "{e:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let e = Envelope {
            stamp_ms: 0x0102_0304_0506_0708,
            session: Some(SessionTag {
                id: 0x11,
                seq: 0x22,
                lowest: 0x33,
            }),
        };
        let p = wrap(&e, &[1, 0xaa]);
        let mut want = vec![2, 1, 2, 3, 4, 5, 6, 7, 8, 1];
        for v in [0x11u8, 0x22, 0x33] {
            want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, v]);
        }
        want.extend_from_slice(&[1, 0xaa]);
        assert_eq!(p, want);
    }

    #[test]
    fn a_bare_command_payload_opens_without_an_envelope() {
        let c = command();
        assert_eq!(open(&c), Ok((None, &c[..])));
    }

    #[test]
    fn every_cut_of_an_envelope_is_an_error_naming_the_cause() {
        let c = command();
        for e in envelopes() {
            let p = wrap(&e, &c);
            let header = p.len() - c.len();
            for cut in 0..=header {
                let got = open(&p[..cut]);
                let want = match cut {
                    0 => DecodeError::Empty,
                    n if n == header => DecodeError::NoCommand,
                    n if n < ENVELOPE_HEADER_SIZE => DecodeError::Truncated {
                        need: ENVELOPE_HEADER_SIZE,
                        have: n,
                    },
                    n => DecodeError::Truncated {
                        need: ENVELOPE_SIZE_MAX,
                        have: n,
                    },
                };
                assert_eq!(got, Err(want), "{e:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn hostile_bytes_are_errors_not_panics() {
        assert_eq!(open(&[]), Err(DecodeError::Empty));
        for v in [0u8, 3, 0x7f, 0xff] {
            assert_eq!(open(&[v, 1, 2]), Err(DecodeError::Version(v)));
        }
        let c = command();
        let plain = Envelope {
            stamp_ms: 1,
            session: None,
        };
        for bad in [2u8, 4, 0x80, 0xfe, 0xff] {
            let mut p = wrap(&plain, &c);
            p[OFFSET_FLAGS] = bad | (p[OFFSET_FLAGS] & FLAG_SESSION);
            assert_eq!(open(&p), Err(DecodeError::Flags(p[OFFSET_FLAGS])));
        }
        // A nested envelope, or any other inner version, is refused.
        let nested = wrap(&plain, &wrap(&plain, &c));
        assert_eq!(open(&nested), Err(DecodeError::CommandVersion(2)));
        assert_eq!(
            open(&wrap(&plain, &[9, 9])),
            Err(DecodeError::CommandVersion(9))
        );
        // Every byte string up to a few bytes past the header: no panic, and an Ok always
        // hands back a command that starts with the command version.
        let mut p = crate::prng::Prng::new(14);
        for _ in 0..20_000 {
            let len = p.range(0, ENVELOPE_SIZE_MAX as u64 + 4) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| p.next_u64() as u8).collect();
            if !buf.is_empty() && p.chance(3, 4) {
                buf[0] = ENVELOPE_VERSION;
            }
            if buf.len() > OFFSET_FLAGS && p.chance(1, 2) {
                buf[OFFSET_FLAGS] &= FLAG_SESSION;
            }
            if let Ok((_, cmd)) = open(&buf) {
                assert_eq!(cmd.first(), Some(&COMMAND_VERSION), "{buf:?}");
            }
        }
    }
}
