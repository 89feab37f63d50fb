//! Every limit in kvraft, in one place.
//!
//! Each is checked before the memory it bounds is allocated: a length read from a socket or a
//! file is compared with its `*_MAX` first. The relations between limits are asserted at
//! compile time below, so changing one cannot silently break another.
//!
//! Units are in the name: `*_SIZE_*` is bytes, `*_TICKS` is timer ticks, `*_COUNT_*` / `*_MSGS_*`
//! is a count.

/// Largest key a client may store, in bytes.
pub const KEY_SIZE_MAX: usize = 64 * 1024;

/// Largest value a client may store, in bytes.
pub const VALUE_SIZE_MAX: usize = 1024 * 1024;

/// Largest payload of one log entry (an encoded command, or a membership change), in bytes.
/// An `MSET` whose encoding is larger is refused with an error, never split.
pub const ENTRY_SIZE_MAX: usize = 4 * 1024 * 1024;

/// Bytes of entry payload the leader packs into one AppendEntries message (at least one entry
/// is always sent, so one entry up to `ENTRY_SIZE_MAX` still fits a frame).
pub const APPEND_SIZE_MAX: usize = 1024 * 1024;

/// Entries the leader packs into one AppendEntries message.
pub const APPEND_ENTRIES_MAX: usize = 4096;

/// AppendEntries messages in flight to one follower before the leader waits for acks.
pub const INFLIGHT_MSGS_MAX: usize = 64;

/// Largest peer frame, header included, in bytes.
pub const FRAME_SIZE_MAX: usize = 8 * 1024 * 1024;

/// Bytes of one peer frame header (see `wire::frame`): length u32, kind u8.
pub const FRAME_HEADER_SIZE: usize = 5;

/// Bytes of slack in a frame around an AppendEntries payload: message header and the
/// per-entry framing (term, index, kind, length), generously.
pub const FRAME_OVERHEAD_MAX: usize = 64 * 1024 + APPEND_ENTRIES_MAX * 32;

/// Default and largest chunk of a snapshot sent in one InstallSnapshot frame, in bytes.
pub const SNAPSHOT_CHUNK_SIZE_MAX: usize = 1024 * 1024;

/// Snapshot chunks in flight to one follower.
pub const SNAPSHOT_CHUNKS_INFLIGHT_MAX: usize = 4;

/// Largest bulk string a client may send, in bytes (a value plus nothing).
pub const CLIENT_BULK_SIZE_MAX: usize = VALUE_SIZE_MAX;

/// Most elements in one client command array (`MSET k v k v ...`).
pub const CLIENT_ARGS_MAX: usize = 64 * 1024;

/// Largest inline (telnet-style) command line, in bytes.
pub const CLIENT_INLINE_SIZE_MAX: usize = 64 * 1024;

/// Largest whole client request (all of its bulk strings together), in bytes.
pub const CLIENT_REQUEST_SIZE_MAX: usize = ENTRY_SIZE_MAX;

/// Argument buffers a node keeps between commands (`client::resp::ArgBufs`): enough for
/// the common commands without allocating, so that a large `MSET` does not stay resident.
pub const ARG_BUFS_KEPT_MAX: usize = 16;

/// Capacity one kept argument buffer may hold, in bytes; a larger one (a large value passed
/// through) is given back.
pub const ARG_BUF_KEPT_SIZE_MAX: usize = 64 * 1024;

/// Client connections served at once; further ones are accepted and closed with an error.
pub const CLIENT_CONNECTIONS_MAX: usize = 10_000;

/// Peer connections (accepted or dialed) held at once: a member keeps one per other member;
/// the slack covers restarts that have not closed the old sockets yet. Beyond it, connections
/// to the peer port are refused.
pub const PEER_CONNECTIONS_MAX: usize = 4 * MEMBERS_MAX;

/// Replies queued for one client and not yet read by it, in bytes; past this the client is
/// disconnected rather than allowed to grow our memory.
pub const CLIENT_OUTPUT_SIZE_MAX: usize = 64 * 1024 * 1024;

/// Requests from one client that may wait for commit or a read round at once; a client that
/// pipelines more is not read from until some are answered.
pub const CLIENT_PENDING_MAX: usize = 1024;

/// Bytes queued for one peer and not yet written; past this, further Raft messages to that
/// peer are dropped (Raft tolerates loss; the peer catches up from the log).
pub const PEER_OUTPUT_SIZE_MAX: usize = 64 * 1024 * 1024;

/// Bytes read from one connection per readiness event before moving on to others.
pub const READ_BUDGET_PER_EVENT: usize = 256 * 1024;

/// Committed entries applied to the state machine per loop turn.
pub const APPLY_ENTRIES_PER_TURN_MAX: usize = 8192;

/// Log entries the core drops per step while compacting behind a snapshot.
pub const COMPACT_ENTRIES_PER_STEP: usize = 4096;

/// Client-forwarded requests a follower keeps waiting for the leader's reply.
pub const FORWARDS_PENDING_MAX: usize = 64 * 1024;

/// Slots in the timing wheel (a power of two).
pub const WHEEL_SLOTS: usize = 512;

/// Timers scheduled at once.
pub const TIMERS_MAX: usize = 64 * 1024;

/// Members of a cluster (voters and learners).
pub const MEMBERS_MAX: usize = 64;

/// Bytes of one config file line.
pub const CONFIG_LINE_SIZE_MAX: usize = 4096;

/// Longest password (`requirepass`, `adminpass`, or the file that holds one), in bytes.
pub const PASSWORD_SIZE_MAX: usize = 1024;

const _: () = assert!(PASSWORD_SIZE_MAX < CONFIG_LINE_SIZE_MAX);

/// ReadIndex requests waiting at the leader at once.
pub const READS_PENDING_MAX: usize = 64 * 1024;

const _: () = assert!(KEY_SIZE_MAX + VALUE_SIZE_MAX + 64 <= ENTRY_SIZE_MAX);
const _: () = assert!(ENTRY_SIZE_MAX + FRAME_OVERHEAD_MAX <= FRAME_SIZE_MAX);
const _: () = assert!(APPEND_SIZE_MAX + FRAME_OVERHEAD_MAX <= FRAME_SIZE_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_SIZE_MAX + FRAME_OVERHEAD_MAX <= FRAME_SIZE_MAX);
const _: () = assert!(CLIENT_BULK_SIZE_MAX >= VALUE_SIZE_MAX);
const _: () = assert!(CLIENT_REQUEST_SIZE_MAX <= ENTRY_SIZE_MAX);
const _: () = assert!(WHEEL_SLOTS.is_power_of_two());
const _: () = assert!(FRAME_SIZE_MAX <= u32::MAX as usize);

/// Most keys a `SCAN` call examines (its COUNT is lowered to this): the work of one call.
pub const SCAN_COUNT_MAX: u32 = 100_000;

/// Largest keyspace `KEYS` walks; past it `KEYS` is refused with an error naming `SCAN`.
pub const KEYS_KEYS_MAX: usize = 1_000_000;

/// Client sessions the state machine keeps at once (exactly-once writes); opening one more
/// drops the least recently active.
pub const SESSIONS_MAX: usize = 4096;

/// Replies one session keeps for resends: writes it sent whose lowest outstanding sequence
/// has not passed them yet. One more is refused (not applied) until the client raises it.
pub const SESSION_RESULTS_MAX: usize = 32;

/// Bytes of one saved session reply (RESP2-encoded); a larger reply is saved as a short error
/// saying the command applied.
pub const SESSION_REPLY_SIZE_MAX: usize = 512;

/// A session with no entry for longer than this, by the leader stamps of applied entries
/// (never a local clock), expires; its writes then get `-SESSIONEXPIRED`. In milliseconds.
pub const SESSION_TIMEOUT_MS: u64 = 60 * 60 * 1000;

// What the session table may hold in saved replies at most: 64 MiB.
const _: () =
    assert!(SESSIONS_MAX * SESSION_RESULTS_MAX * SESSION_REPLY_SIZE_MAX <= 64 * 1024 * 1024);

/// Keys one reclaim entry deletes at most: the leader proposes deletions of expired keys in
/// batches of up to this many (and of up to `RECLAIM_ENTRY_SIZE_MAX` bytes).
pub const RECLAIM_KEYS_MAX: usize = 256;

/// Bytes of keys one reclaim entry names at most (one key always fits: it is at most
/// `KEY_SIZE_MAX`).
pub const RECLAIM_ENTRY_SIZE_MAX: usize = 256 * 1024;

/// Reclaim entries the leader proposes per second at most, so that a mass expiry becomes a
/// bounded trickle of log entries rather than a flood that delays client writes.
pub const RECLAIM_ENTRIES_PER_SEC_MAX: u64 = 10;

const _: () = assert!(KEY_SIZE_MAX <= RECLAIM_ENTRY_SIZE_MAX);
const _: () = assert!(RECLAIM_ENTRY_SIZE_MAX + RECLAIM_KEYS_MAX * 16 + 64 <= ENTRY_SIZE_MAX);

/// Commands one transaction (`MULTI` ... `EXEC`) may queue; one more is refused with an error
/// naming this limit, and `EXEC` then aborts the transaction.
pub const TX_COMMANDS_MAX: usize = 10_000;

/// Bytes of one transaction's log entry body: its queued commands' encodings and its watched
/// keys. Checked before each command is queued; it leaves room under `ENTRY_SIZE_MAX` for the
/// entry's own header and envelope.
pub const TX_SIZE_MAX: usize = ENTRY_SIZE_MAX - 64 * 1024;

/// Keys one connection may `WATCH` at once.
pub const WATCH_KEYS_MAX: usize = 1024;

// A transaction holds at least one command of the largest size.
const _: () = assert!(KEY_SIZE_MAX + VALUE_SIZE_MAX + 64 <= TX_SIZE_MAX);
const _: () = assert!(TX_SIZE_MAX + 1024 <= ENTRY_SIZE_MAX);

/// A leader's own log sync (`node/stored.rs`, "The leader's own sync"): after a follower was
/// found slower than its disk three times within the window (an entry older than
/// `leader_sync_wait_ms` not committed, which the leader's sync committed), the leader syncs
/// in every turn for `LEADER_SYNC_DEFER_OFF`.
pub const LEADER_SYNC_SLOW_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
pub const LEADER_SYNC_DEFER_OFF: std::time::Duration = std::time::Duration::from_secs(1);

/// A leader syncs its unsynced writes once the oldest is this old (or 4 x
/// `leader_sync_wait_ms`, if longer), or once this many writes (turns that wrote) or bytes of
/// entries wait: what it fetches again from the others after a crash.
pub const LEADER_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
pub const LEADER_UNSYNCED_WRITES_MAX: usize = 1024;
pub const LEADER_UNSYNCED_BYTES_MAX: usize = 16 * 1024 * 1024;
