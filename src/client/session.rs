//! What the client port keeps per connection beyond its pipeline: the protocol it speaks
//! (`HELLO`), its name and library (`CLIENT SETNAME` / `SETINFO`), and its transaction:
//! `MULTI` / `EXEC` / `DISCARD` / `WATCH` / `UNWATCH`, as Redis 7 does them.
//!
//! Owns: the replies of `HELLO`, `MULTI`, `EXEC`, `DISCARD`, `UNWATCH`, the queueing replies
//! and the per-connection `CLIENT` subcommands, with Redis 7's texts; the queued transaction
//! and the watched keys. Must not: read the clock or touch a socket (the node passes `now` in
//! and sends the replies), or apply anything (the state machine applies the EXEC entry).
//!
//! # Transactions
//! After `MULTI` every command is checked with the same parse the state machine uses and
//! answered `+QUEUED` (kept in its log encoding, `kv::tx::Queue`), or refused with an error
//! that makes `EXEC` answer `-EXECABORT` (as Redis: a wrong argument count, an unknown
//! command, a command that cannot be in a transaction, or a limit: `TX_COMMANDS_MAX`,
//! `TX_SIZE_MAX`). An error Redis finds only when the command runs (a syntax error, a bad
//! integer) is queued as that error and takes its place in `EXEC`'s reply. `PING`, `ECHO`,
//! `SELECT` and `UNWATCH` queue their replies. The node's own commands (`INFO`, `CLIENT`,
//! `HELLO`, `CONFIG`, ...) are refused inside a transaction ("Command not allowed inside a
//! transaction"), where Redis would queue them: they are not state machine commands.
//!
//! `EXEC` hands the node the whole transaction as one command, `KVRAFT.EXEC <entry>`
//! (`kv::tx`): one log entry, applied atomically, forwarded by a follower like any command.
//!
//! `WATCH k...` is a linearizable read (dispatched as the command itself): its reply, the
//! applied index of the state it was served from, comes back through `watch_done` and is
//! kept with each key; the client sees `+OK`. Until it comes, the node reads nothing more
//! from the connection (`watch_waiting`), so an `EXEC` pipelined behind a `WATCH` always
//! carries the index. `EXEC`, `DISCARD` and `UNWATCH` forget the watched keys.
//!
//! Invariants:
//! 1. While `multi` is `Some`, `admit` answers every command itself (or hands back EXEC's
//!    transaction): none reaches the node's dispatch as sent, except `QUIT`.
//! 2. `proto` changes only through a successful `HELLO`.
//! 3. `watched` holds each key once, at most `WATCH_KEYS_MAX` of them, and the queue plus
//!    the watched keys fit `TX_SIZE_MAX`, so every EXEC entry fits `ENTRY_SIZE_MAX`.
//! 4. At most one WATCH is waiting for its read (`watch_pending`).

use std::time::Instant;

use crate::auth::{self, ConnAuth, Rights};
use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::value::{Protocol, Value};
use crate::kv::tx::{self, ItemKind, Queue};
use crate::kv::Request;
use crate::limits::{TX_COMMANDS_MAX, TX_SIZE_MAX, WATCH_KEYS_MAX};
use crate::raft::LogIndex;

/// The version this server reports in `HELLO` and `INFO`: the Redis release whose replies
/// the client port follows.
pub const REDIS_VERSION: &str = "7.0.15";

/// Longest client name or library name/version kept, in bytes.
pub const CLIENT_NAME_SIZE_MAX: usize = 256;

/// What the node does with one command of this connection.
#[derive(Clone, Debug, PartialEq)]
pub enum Gate {
    /// Send this reply now.
    Reply(Value),
    /// Not the session's: dispatch the command as sent.
    Pass,
    /// EXEC: dispatch these arguments (`KVRAFT.EXEC <entry>`) in its place.
    Exec(Vec<Vec<u8>>),
    /// WATCH: dispatch the command as sent (a read), hand its reply to `watch_done`, and
    /// read nothing more from the connection until then.
    Watch,
}

/// A transaction being queued.
#[derive(Clone, Debug, Default)]
struct Multi {
    queue: Queue,
    /// A command failed to queue: EXEC aborts (nothing more is kept).
    failed: bool,
}

/// One client connection's session state.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique among this node's connections (`CLIENT ID`, `HELLO`'s `id`).
    pub id: u64,
    pub proto: Protocol,
    pub name: Vec<u8>,
    pub lib_name: Vec<u8>,
    pub lib_ver: Vec<u8>,
    /// Who the connection authenticated as, and what it may run (`crate::auth`).
    pub auth: ConnAuth,
    /// `MULTI` was sent and neither `EXEC` nor `DISCARD` yet.
    multi: Option<Multi>,
    /// Watched keys, each with the applied index its WATCH read saw.
    watched: Vec<(Vec<u8>, LogIndex)>,
    /// Bytes the watched keys add to an EXEC entry.
    watched_size: usize,
    /// The pipeline sequence number and keys of the WATCH whose read is out.
    watch_pending: Option<(u64, Vec<Vec<u8>>)>,
    /// The client's and our addresses, as `CLIENT INFO` shows them.
    pub addr: String,
    pub laddr: String,
    pub opened: Instant,
    /// The last command's name (lowercase) and when it arrived.
    pub last_cmd: String,
    pub last_at: Instant,
}

impl Session {
    pub fn new(id: u64, addr: String, laddr: String, now: Instant) -> Session {
        Session {
            id,
            proto: Protocol::Resp2,
            name: Vec::new(),
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            auth: ConnAuth::default(),
            multi: None,
            watched: Vec::new(),
            watched_size: 0,
            watch_pending: None,
            addr,
            laddr,
            opened: now,
            last_cmd: String::new(),
            last_at: now,
        }
    }

    /// `MULTI` was sent and neither `EXEC` nor `DISCARD` yet.
    pub fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// A WATCH's read is out: the node must not read further commands of this connection.
    pub fn watch_waiting(&self) -> bool {
        self.watch_pending.is_some()
    }

    /// Keys watched now.
    pub fn watched_count(&self) -> usize {
        self.watched.len()
    }

    /// Decide what happens to the command `args`, which is request `seq` of the pipeline.
    pub fn admit(&mut self, args: &[Vec<u8>], seq: u64, now: Instant) -> Gate {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        let name = args.first().and_then(|a| command_name(a, &mut buf));
        self.last_at = now;
        // Reuse the string's room: no allocation per command.
        self.last_cmd.clear();
        self.last_cmd.push_str(name.unwrap_or("unknown"));
        let name = name.unwrap_or("");
        // Rights first: a command the connection may not run does nothing else. Inside MULTI
        // the refusal makes EXEC abort, as in Redis.
        if let Some(denied) = auth::check(self.auth.rights(), args) {
            return Gate::Reply(self.fail(denied));
        }
        // QUIT still closes the connection inside MULTI, as in Redis.
        if self.multi.is_some() && name != "quit" {
            return self.admit_in_multi(name, args);
        }
        let reply = match (name, args.len()) {
            ("auth", _) => self.auth.auth_command(args),
            ("hello", _) => self.hello(args),
            ("multi", 1) => {
                self.multi = Some(Multi::default());
                Value::ok()
            }
            ("exec" | "discard", 1) => {
                Value::error(format!("ERR {} without MULTI", name.to_uppercase()))
            }
            ("unwatch", 1) => {
                self.unwatch();
                Value::ok()
            }
            ("watch", n) if n >= 2 => return self.watch(args, seq),
            ("multi" | "exec" | "discard" | "unwatch" | "watch", _) => arity(name),
            ("client", _) => match self.client(args, now) {
                Some(v) => v,
                None => return Gate::Pass,
            },
            _ => return Gate::Pass,
        };
        Gate::Reply(reply)
    }

    /// A command while queueing (see "Transactions").
    fn admit_in_multi(&mut self, name: &str, args: &[Vec<u8>]) -> Gate {
        let n = args.len();
        let reply = match (name, n) {
            ("exec", 1) => return self.exec(),
            // Redis 7 discards the transaction at once when EXEC itself is malformed.
            ("exec", _) => {
                self.discard();
                Value::error(
                    "EXECABORT Transaction discarded because of: wrong number of arguments \
                     for 'exec' command",
                )
            }
            ("discard", 1) => {
                self.discard();
                Value::ok()
            }
            ("multi", 1) => Value::error("ERR MULTI calls can not be nested"),
            ("auth", _) => self.fail(not_in_transaction()),
            ("watch", n) if n >= 2 => Value::error("ERR WATCH inside MULTI is not allowed"),
            ("unwatch", 1) => self.queue_reply(ItemKind::Status, b"OK"),
            ("ping", 1) => self.queue_reply(ItemKind::Status, b"PONG"),
            ("ping" | "echo", 2) => self.queue_reply(ItemKind::Bulk, &args[1]),
            ("select", 2) => match crate::kv::command::parse_i64(&args[1]) {
                Some(0) => self.queue_reply(ItemKind::Status, b"OK"),
                Some(_) => self.queue_reply(ItemKind::Error, b"ERR DB index is out of range"),
                None => self.queue_reply(
                    ItemKind::Error,
                    b"ERR value is not an integer or out of range",
                ),
            },
            ("discard" | "multi" | "watch" | "unwatch" | "ping" | "echo" | "select", _) => {
                self.fail(arity(name))
            }
            _ => self.queue_command(args),
        };
        Gate::Reply(reply)
    }

    /// Queue a state machine command, or refuse it (see "Transactions").
    fn queue_command(&mut self, args: &[Vec<u8>]) -> Value {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        let name = args.first().and_then(|a| command_name(a, &mut buf));
        if name == Some(tx::EXEC_COMMAND) {
            return self.fail(not_in_transaction());
        }
        match crate::kv::command::parse(args) {
            Some(Request::Write(p)) => self.queue_item(ItemKind::Write, &p),
            Some(Request::Read(p)) => self.queue_item(ItemKind::Read, &p),
            Some(Request::Reply(Value::Error(e))) if e.starts_with(ARITY_PREFIX) => {
                self.fail(Value::Error(e))
            }
            Some(Request::Reply(Value::Error(e))) => self.queue_item(ItemKind::Error, e.as_bytes()),
            Some(Request::Reply(_)) => self.fail(not_in_transaction()),
            None if is_node_command(name.unwrap_or("")) => self.fail(not_in_transaction()),
            None => self.fail(unknown_command(args)),
        }
    }

    fn queue_reply(&mut self, kind: ItemKind, body: &[u8]) -> Value {
        self.queue_item(kind, body)
    }

    /// Queue one item, within `TX_COMMANDS_MAX` and `TX_SIZE_MAX` (checked first).
    fn queue_item(&mut self, kind: ItemKind, body: &[u8]) -> Value {
        let watched_size = self.watched_size;
        let Some(m) = self.multi.as_mut() else {
            unreachable!("queue_item outside MULTI")
        };
        if m.failed {
            return queued();
        }
        if m.queue.len() >= TX_COMMANDS_MAX {
            return self.fail(Value::error(format!(
                "ERR transaction has {TX_COMMANDS_MAX} queued commands, the most allowed \
                 (TX_COMMANDS_MAX); EXEC will abort it"
            )));
        }
        let size = m.queue.size() + Queue::item_size(body) + watched_size;
        if size > TX_SIZE_MAX {
            return self.fail(Value::error(format!(
                "ERR transaction would take {size} bytes, more than TX_SIZE_MAX \
                 ({TX_SIZE_MAX} bytes, watched keys included); EXEC will abort it"
            )));
        }
        m.queue.push(kind, body);
        queued()
    }

    /// Refuse a command while queueing: `EXEC` will abort; what was queued is dropped.
    fn fail(&mut self, reply: Value) -> Value {
        if let Some(m) = self.multi.as_mut() {
            m.failed = true;
            m.queue = Queue::default();
        }
        reply
    }

    /// `EXEC`: abort if a command failed to queue, else hand the node the transaction.
    fn exec(&mut self) -> Gate {
        let m = self.multi.take().expect("exec inside MULTI");
        let watched = std::mem::take(&mut self.watched);
        self.watched_size = 0;
        if m.failed {
            return Gate::Reply(Value::error(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        let entry = tx::encode(&watched, &m.queue);
        Gate::Exec(vec![tx::EXEC_COMMAND.as_bytes().to_vec(), entry])
    }

    fn discard(&mut self) {
        self.multi = None;
        self.unwatch();
    }

    fn unwatch(&mut self) {
        self.watched.clear();
        self.watched_size = 0;
    }

    /// `WATCH key...` outside MULTI: within the limits, send the read (see "Transactions").
    fn watch(&mut self, args: &[Vec<u8>], seq: u64) -> Gate {
        assert!(
            self.watch_pending.is_none(),
            "a second WATCH while one is out"
        );
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut size = self.watched_size;
        for key in &args[1..] {
            if self.watched.iter().any(|(k, _)| k == key) || keys.contains(key) {
                continue;
            }
            size += tx::watch_size(key);
            keys.push(key.clone());
            if self.watched.len() + keys.len() > WATCH_KEYS_MAX {
                return Gate::Reply(tx::watch_limit_error());
            }
        }
        if size > TX_SIZE_MAX {
            return Gate::Reply(Value::error(format!(
                "ERR WATCH would take {size} bytes of watched keys, more than TX_SIZE_MAX \
                 ({TX_SIZE_MAX} bytes)"
            )));
        }
        self.watch_pending = Some((seq, keys));
        Gate::Watch
    }

    /// Whether request `seq` is the WATCH whose read is out.
    pub fn is_watch_reply(&self, seq: u64) -> bool {
        self.watch_pending.as_ref().is_some_and(|(s, _)| *s == seq)
    }

    /// The reply to the WATCH read `seq` arrived (`reply`, encoded): keep its keys with the
    /// index it carries and answer `+OK`; an error (no leader, ...) watches nothing and is
    /// passed on.
    pub fn watch_done(&mut self, seq: u64, reply: Vec<u8>) -> Vec<u8> {
        let Some((s, keys)) = self.watch_pending.take() else {
            return reply;
        };
        assert_eq!(s, seq, "WATCH reply for request {seq}, waiting for {s}");
        let Some(seen) = parse_integer_reply(&reply) else {
            return reply;
        };
        for key in keys {
            self.watched_size += tx::watch_size(&key);
            self.watched.push((key, LogIndex(seen)));
        }
        Value::ok().to_bytes()
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`, as Redis 7 checks it:
    /// the version first, then the options, and nothing changes unless all of them are valid.
    fn hello(&mut self, args: &[Vec<u8>]) -> Value {
        let mut proto = None;
        if let Some(v) = args.get(1) {
            let Some(n) = crate::kv::command::parse_i64(v) else {
                return Value::error("ERR Protocol version is not an integer or out of range");
            };
            match u8::try_from(n).ok().and_then(Protocol::from_number) {
                Some(p) => proto = Some(p),
                None => return Value::error("NOPROTO unsupported protocol version"),
            }
        }
        let mut name = None;
        let mut credentials: Option<(&[u8], &[u8])> = None;
        let mut j = 2;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let opt = &args[j];
            if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
                credentials = Some((&args[j + 1], &args[j + 2]));
                j += 3;
            } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
                if let Err(e) = check_name(&args[j + 1]) {
                    return e;
                }
                name = Some(args[j + 1].clone());
                j += 2;
            } else {
                return Value::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(opt)
                ));
            }
        }
        // Redis authenticates once every option parsed, before anything changes.
        if let Some((user, pass)) = credentials {
            if let Err(e) = self.auth.authenticate(Some(user), pass) {
                return e;
            }
        }
        if self.auth.rights() == Rights::None {
            return Value::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            );
        }
        if let Some(n) = name {
            self.name = n;
        }
        if let Some(p) = proto {
            self.proto = p;
        }
        self.hello_map()
    }

    /// The map `HELLO` answers (a flat array in RESP2).
    pub fn hello_map(&self) -> Value {
        let s = Value::bulk_str;
        Value::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s(REDIS_VERSION)),
            (s("proto"), Value::Integer(i64::from(self.proto.number()))),
            (s("id"), Value::Integer(self.id as i64)),
            (s("mode"), s("standalone")),
            // Every node accepts writes (a follower forwards them), so each is a master to
            // its clients.
            (s("role"), s("master")),
            (s("modules"), Value::Array(vec![])),
        ])
    }

    /// The per-connection `CLIENT` subcommands; `None` for `LIST`, which needs every
    /// connection and is answered by the node (with `info_line` for each).
    fn client(&mut self, args: &[Vec<u8>], now: Instant) -> Option<Value> {
        let Some(sub) = args.get(1) else {
            return Some(arity("client"));
        };
        let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
        let n = args.len();
        let reply = match sub.as_str() {
            "id" if n == 2 => Value::Integer(self.id as i64),
            "getname" if n == 2 && self.name.is_empty() => Value::Nil,
            "getname" if n == 2 => Value::Bulk(self.name.clone()),
            "setname" if n == 3 => match check_name(&args[2]) {
                Ok(()) => {
                    self.name = args[2].clone();
                    Value::ok()
                }
                Err(e) => e,
            },
            "setinfo" if n == 4 => self.setinfo(&args[2], &args[3]),
            "info" if n == 2 => Value::Verbatim {
                format: *b"txt",
                text: self.info_line(now).into_bytes(),
            },
            "list" => return None,
            "id" | "getname" | "setname" | "setinfo" | "info" => arity(&format!("client|{sub}")),
            _ => unknown_subcommand("CLIENT", &args[1]),
        };
        Some(reply)
    }

    /// `CLIENT SETINFO LIB-NAME|LIB-VER value` (Redis 7.2).
    fn setinfo(&mut self, attr: &[u8], value: &[u8]) -> Value {
        let bad = value.len() > CLIENT_NAME_SIZE_MAX
            || value.iter().any(|&b| !(b'!'..=b'~').contains(&b));
        if attr.eq_ignore_ascii_case(b"lib-name") {
            if bad {
                return Value::error(
                    "ERR lib-name cannot contain spaces, newlines or special characters.",
                );
            }
            self.lib_name = value.to_vec();
        } else if attr.eq_ignore_ascii_case(b"lib-ver") {
            if bad {
                return Value::error(
                    "ERR lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            self.lib_ver = value.to_vec();
        } else {
            return Value::error(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(attr)
            ));
        }
        Value::ok()
    }

    /// This connection's line of `CLIENT LIST` / `CLIENT INFO` (Redis's fields; the memory
    /// and buffer figures we do not track are 0), ending in a newline.
    pub fn info_line(&self, now: Instant) -> String {
        let age = now.saturating_duration_since(self.opened).as_secs();
        let idle = now.saturating_duration_since(self.last_at).as_secs();
        let multi: i64 = self.multi.as_ref().map_or(-1, |m| m.queue.len() as i64);
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={age} idle={idle} flags=N db=0 sub=0 \
             psub=0 ssub=0 multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
             obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} \
             lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name),
            if self.last_cmd.is_empty() {
                "NULL"
            } else {
                &self.last_cmd
            },
            self.auth.user(),
            self.proto.number(),
            String::from_utf8_lossy(&self.lib_name),
            String::from_utf8_lossy(&self.lib_ver),
        )
    }
}

fn arity(name: &str) -> Value {
    Value::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// How Redis's wrong-argument-count errors begin (they abort a transaction).
const ARITY_PREFIX: &str = "ERR wrong number of arguments";

fn queued() -> Value {
    Value::Simple("QUEUED".into())
}

/// Redis 7's reply to a command flagged `no-multi` inside MULTI.
fn not_in_transaction() -> Value {
    Value::error("ERR Command not allowed inside a transaction")
}

/// The node's own commands (answered by the node, not the state machine): refused inside a
/// transaction, which holds state machine commands only.
fn is_node_command(name: &str) -> bool {
    matches!(
        name,
        "hello"
            | "client"
            | "command"
            | "time"
            | "wait"
            | "config"
            | "info"
            | "member"
            | "transfer"
            | "snapshot"
            | "bgsave"
            | "quit"
    )
}

/// Redis's reply to an unknown command: each argument quoted and followed by a space, the
/// whole list cut at 128 bytes.
pub fn unknown_command(args: &[Vec<u8>]) -> Value {
    let name = args
        .first()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    let mut rest = Vec::new();
    for a in args.iter().skip(1) {
        if rest.len() >= 128 {
            break;
        }
        let room = 128 - rest.len();
        rest.push(b'\'');
        rest.extend_from_slice(&a[..a.len().min(room)]);
        rest.extend_from_slice(b"' ");
    }
    Value::error(format!(
        "ERR unknown command '{name}', with args beginning with: {}",
        String::from_utf8_lossy(&rest)
    ))
}

/// The value of an encoded integer reply (`:123\r\n`, the same in RESP2 and RESP3), if
/// `reply` is exactly one non-negative integer.
fn parse_integer_reply(reply: &[u8]) -> Option<u64> {
    let digits = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Redis 7's reply to a subcommand it does not know.
pub fn unknown_subcommand(command: &str, sub: &[u8]) -> Value {
    Value::error(format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

/// Redis's rule for client names: printable ASCII without spaces, bounded here.
fn check_name(name: &[u8]) -> Result<(), Value> {
    if name.len() > CLIENT_NAME_SIZE_MAX || name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(Value::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    impl Session {
        /// `admit` for commands that are answered here or passed on.
        fn gate(&mut self, args: &[Vec<u8>], now: Instant) -> Option<Value> {
            match self.admit(args, 0, now) {
                Gate::Reply(v) => Some(v),
                Gate::Pass => None,
                other => panic!("{other:?}"),
            }
        }
    }

    fn session() -> Session {
        Session::new(
            7,
            "127.0.0.1:5000".into(),
            "127.0.0.1:6001".into(),
            Instant::now(),
        )
    }

    #[test]
    fn hello_switches_the_protocol_only_when_every_option_is_valid() {
        let s = &mut session();
        let now = Instant::now();
        let err = |v: Option<Value>| match v {
            Some(Value::Error(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            err(s.gate(&args(&["HELLO", "4"]), now)),
            "NOPROTO unsupported protocol version"
        );
        assert_eq!(
            err(s.gate(&args(&["hello", "x"]), now)),
            "ERR Protocol version is not an integer or out of range"
        );
        assert_eq!(
            err(s.gate(&args(&["hello", "3", "setname", "a b"]), now)),
            "ERR Client names cannot contain spaces, newlines or special characters."
        );
        assert_eq!(
            err(s.gate(&args(&["hello", "3", "bogus"]), now)),
            "ERR Syntax error in HELLO option 'bogus'"
        );
        assert_eq!(
            err(s.gate(&args(&["hello", "3", "auth", "bob", "pw"]), now)),
            "WRONGPASS invalid username-password pair or user is disabled."
        );
        assert_eq!(s.proto, Protocol::Resp2, "failed HELLOs change nothing");
        let v = s
            .gate(
                &args(&["HELLO", "3", "AUTH", "default", "x", "SETNAME", "me"]),
                now,
            )
            .unwrap();
        assert_eq!(s.proto, Protocol::Resp3);
        assert_eq!(s.name, b"me");
        let Value::Map(pairs) = v else {
            panic!("{v:?}")
        };
        let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
        let want: Vec<_> = [
            "server", "version", "proto", "id", "mode", "role", "modules",
        ]
        .iter()
        .map(|k| Value::bulk_str(k))
        .collect();
        assert_eq!(keys, want);
        assert_eq!(pairs[2].1, Value::Integer(3));
        assert_eq!(pairs[3].1, Value::Integer(7));
        // HELLO without a version reports, and keeps, the current protocol.
        s.gate(&args(&["hello"]), now);
        assert_eq!(s.proto, Protocol::Resp3);
        s.gate(&args(&["hello", "2"]), now);
        assert_eq!(s.proto, Protocol::Resp2);
    }

    fn reply(g: Gate) -> Value {
        match g {
            Gate::Reply(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn error(g: Gate) -> String {
        match g {
            Gate::Reply(Value::Error(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    /// The EXEC entry a Gate::Exec carries, applied to `kv` at its next index.
    fn run_exec(kv: &mut crate::kv::KvStore, g: Gate) -> Value {
        use crate::kv::StateMachine;
        let Gate::Exec(a) = g else { panic!("{g:?}") };
        assert_eq!(a[0], b"kvraft.exec");
        let Some(Request::Write(entry)) = kv.parse(&a) else {
            panic!("the EXEC command does not parse")
        };
        let index = kv.applied_index().next();
        kv.apply(index, &entry)
    }

    #[test]
    fn commands_queue_after_multi_and_exec_runs_them_as_one_entry() {
        let s = &mut session();
        let now = Instant::now();
        let kv = &mut crate::kv::KvStore::new(1);
        assert_eq!(s.admit(&args(&["SET", "k", "v"]), 0, now), Gate::Pass);
        assert_eq!(reply(s.admit(&args(&["MULTI"]), 1, now)), Value::ok());
        assert!(s.info_line(now).contains(" multi=0 "));
        for cmd in [
            &["SET", "k", "v"][..],
            &["INCR", "k"],
            &["set", "k", "v", "bogus"],
            &["GET", "k"],
            &["PING"],
            &["ECHO", "hi"],
            &["UNWATCH"],
            &["SELECT", "1"],
        ] {
            assert_eq!(reply(s.admit(&args(cmd), 2, now)), queued(), "{cmd:?}");
        }
        // Not queued, and no harm to the transaction (as Redis).
        assert_eq!(
            error(s.admit(&args(&["MULTI"]), 3, now)),
            "ERR MULTI calls can not be nested"
        );
        assert_eq!(
            error(s.admit(&args(&["WATCH", "k"]), 3, now)),
            "ERR WATCH inside MULTI is not allowed"
        );
        assert!(s.info_line(now).contains(" multi=8 "));
        let got = run_exec(kv, s.admit(&args(&["EXEC"]), 4, now));
        let want = Value::Array(vec![
            Value::ok(),
            Value::error("ERR value is not an integer or out of range"),
            Value::error("ERR syntax error"),
            Value::bulk_str("v"),
            Value::Simple("PONG".into()),
            Value::bulk_str("hi"),
            Value::ok(),
            Value::error("ERR DB index is out of range"),
        ]);
        assert_eq!(got, want);
        assert!(!s.in_multi());
        assert_eq!(s.admit(&args(&["GET", "k"]), 5, now), Gate::Pass);
        assert_eq!(
            error(s.admit(&args(&["EXEC"]), 6, now)),
            "ERR EXEC without MULTI"
        );
        assert_eq!(
            error(s.admit(&args(&["DISCARD"]), 6, now)),
            "ERR DISCARD without MULTI"
        );
        // An empty transaction is an empty array.
        s.admit(&args(&["MULTI"]), 7, now);
        assert_eq!(
            run_exec(kv, s.admit(&args(&["EXEC"]), 8, now)),
            Value::Array(vec![])
        );
    }

    #[test]
    fn a_command_that_fails_to_queue_makes_exec_abort() {
        let s = &mut session();
        let now = Instant::now();
        let abort = "EXECABORT Transaction discarded because of previous errors.";
        for bad in [
            &["GET"][..],
            &["FOO", "a"],
            &["INFO"],
            &["CLIENT", "ID"],
            &["HELLO", "3"],
            &["KVRAFT.EXEC", "x"],
            &["DISCARD", "x"],
            &["WATCH"],
        ] {
            s.admit(&args(&["MULTI"]), 0, now);
            assert_eq!(reply(s.admit(&args(&["SET", "a", "1"]), 1, now)), queued());
            let e = error(s.admit(&args(bad), 2, now));
            assert!(
                e.starts_with("ERR wrong number")
                    || e.starts_with("ERR unknown command 'FOO'")
                    || e == "ERR Command not allowed inside a transaction",
                "{bad:?}: {e}"
            );
            // Later commands still answer QUEUED, as in Redis.
            assert_eq!(reply(s.admit(&args(&["SET", "b", "2"]), 3, now)), queued());
            assert_eq!(error(s.admit(&args(&["EXEC"]), 4, now)), abort, "{bad:?}");
            assert!(!s.in_multi());
        }
        assert_eq!(s.proto, Protocol::Resp2, "HELLO inside MULTI did nothing");
        // DISCARD drops the queue; a malformed EXEC discards at once.
        s.admit(&args(&["MULTI"]), 5, now);
        s.admit(&args(&["SET", "a", "1"]), 6, now);
        assert_eq!(reply(s.admit(&args(&["DISCARD"]), 7, now)), Value::ok());
        assert!(!s.in_multi());
        s.admit(&args(&["MULTI"]), 8, now);
        assert_eq!(
            error(s.admit(&args(&["EXEC", "x"]), 9, now)),
            "EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command"
        );
        assert!(!s.in_multi());
        assert_eq!(s.admit(&args(&["QUIT"]), 10, now), Gate::Pass);
    }

    #[test]
    fn watch_waits_for_its_read_and_exec_carries_the_index_it_saw() {
        let s = &mut session();
        let now = Instant::now();
        let kv = &mut crate::kv::KvStore::new(2);
        assert_eq!(
            s.admit(&args(&["WATCH", "w", "x", "w"]), 11, now),
            Gate::Watch
        );
        assert!(s.watch_waiting());
        assert!(s.is_watch_reply(11) && !s.is_watch_reply(12));
        assert_eq!(s.watch_done(11, b":0\r\n".to_vec()), b"+OK\r\n");
        assert!(!s.watch_waiting());
        assert_eq!(s.watched_count(), 2, "each key once");
        // A failed read watches nothing, and its error reaches the client.
        assert_eq!(s.admit(&args(&["WATCH", "y"]), 12, now), Gate::Watch);
        let e = b"-CLUSTERDOWN no leader\r\n".to_vec();
        assert_eq!(s.watch_done(12, e.clone()), e);
        assert_eq!(s.watched_count(), 2);
        // Another write to `w` after the watch's index: EXEC answers a null array.
        use crate::kv::StateMachine;
        let Some(Request::Write(set)) = kv.parse(&args(&["SET", "w", "1"])) else {
            panic!()
        };
        kv.apply(crate::raft::LogIndex(1), &set);
        s.admit(&args(&["MULTI"]), 13, now);
        s.admit(&args(&["SET", "out", "1"]), 14, now);
        assert_eq!(
            run_exec(kv, s.admit(&args(&["EXEC"]), 15, now)),
            Value::NilArray
        );
        assert_eq!(s.watched_count(), 0, "EXEC forgets the watches");
        // Watched at the current index: EXEC runs.
        s.admit(&args(&["WATCH", "w"]), 16, now);
        s.watch_done(16, format!(":{}\r\n", kv.applied_index().0).into_bytes());
        s.admit(&args(&["MULTI"]), 17, now);
        s.admit(&args(&["SET", "out", "1"]), 18, now);
        assert_eq!(
            run_exec(kv, s.admit(&args(&["EXEC"]), 19, now)),
            Value::Array(vec![Value::ok()])
        );
        // UNWATCH and DISCARD forget them too.
        s.admit(&args(&["WATCH", "a"]), 20, now);
        s.watch_done(20, b":1\r\n".to_vec());
        assert_eq!(reply(s.admit(&args(&["UNWATCH"]), 21, now)), Value::ok());
        assert_eq!(s.watched_count(), 0);
        s.admit(&args(&["WATCH", "a"]), 22, now);
        s.watch_done(22, b":1\r\n".to_vec());
        s.admit(&args(&["MULTI"]), 23, now);
        s.admit(&args(&["DISCARD"]), 24, now);
        assert_eq!(s.watched_count(), 0);
        assert_eq!(
            error(s.admit(&args(&["UNWATCH", "x"]), 25, now)),
            "ERR wrong number of arguments for 'unwatch' command"
        );
    }

    #[test]
    fn queued_commands_watched_keys_and_bytes_are_bounded_with_errors_naming_the_limit() {
        let s = &mut session();
        let now = Instant::now();
        s.admit(&args(&["MULTI"]), 0, now);
        for _ in 0..TX_COMMANDS_MAX {
            assert_eq!(reply(s.admit(&args(&["INCR", "n"]), 1, now)), queued());
        }
        assert!(error(s.admit(&args(&["INCR", "n"]), 2, now)).contains("TX_COMMANDS_MAX"));
        assert!(error(s.admit(&args(&["EXEC"]), 3, now)).starts_with("EXECABORT"));
        // Bytes: megabyte values until the entry would pass TX_SIZE_MAX.
        let big = vec![b'v'; crate::limits::VALUE_SIZE_MAX];
        s.admit(&args(&["MULTI"]), 4, now);
        let mut queued_n = 0;
        let e = loop {
            let cmd = vec![b"SET".to_vec(), b"k".to_vec(), big.clone()];
            match s.admit(&cmd, 5, now) {
                Gate::Reply(Value::Simple(q)) if q == "QUEUED" => queued_n += 1,
                other => break error(other),
            }
        };
        assert!(e.contains("TX_SIZE_MAX"), "{e}");
        assert_eq!(queued_n, TX_SIZE_MAX / big.len());
        assert!(error(s.admit(&args(&["EXEC"]), 6, now)).starts_with("EXECABORT"));
        // Watched keys.
        let mut many = vec![b"WATCH".to_vec()];
        many.extend((0..WATCH_KEYS_MAX).map(|i| i.to_string().into_bytes()));
        assert_eq!(s.admit(&many, 7, now), Gate::Watch);
        s.watch_done(7, b":3\r\n".to_vec());
        assert_eq!(s.watched_count(), WATCH_KEYS_MAX);
        assert_eq!(
            s.admit(&args(&["WATCH", "one-more"]), 8, now),
            Gate::Reply(tx::watch_limit_error())
        );
        assert_eq!(
            s.admit(&args(&["WATCH", "0"]), 9, now),
            Gate::Watch,
            "already watched"
        );
    }

    #[test]
    fn with_passwords_only_auth_hello_and_quit_pass_until_auth() {
        let users = crate::auth::Users {
            requirepass: Some(crate::auth::Secret::new("pw")),
            adminpass: Some(crate::auth::Secret::new("root")),
        };
        let s = &mut session();
        s.auth = ConnAuth::new(std::sync::Arc::new(users));
        let now = Instant::now();
        let noauth = Value::error("NOAUTH Authentication required.");
        for cmd in [
            &["GET", "k"][..],
            &["MULTI"],
            &["CLIENT", "ID"],
            &["WATCH", "k"],
        ] {
            assert_eq!(
                s.admit(&args(cmd), 0, now),
                Gate::Reply(noauth.clone()),
                "{cmd:?}"
            );
        }
        assert_eq!(s.admit(&args(&["QUIT"]), 0, now), Gate::Pass);
        let e = error(s.admit(&args(&["HELLO", "3"]), 0, now));
        assert!(e.starts_with("NOAUTH HELLO must be called"), "{e}");
        let e = error(s.admit(&args(&["HELLO", "3", "AUTH", "default", "x"]), 0, now));
        assert!(e.starts_with("WRONGPASS"), "{e}");
        assert_eq!(
            s.proto,
            Protocol::Resp2,
            "a failed HELLO AUTH changes nothing"
        );
        let v = reply(s.admit(&args(&["HELLO", "3", "AUTH", "default", "pw"]), 0, now));
        assert!(matches!(v, Value::Map(_)));
        assert_eq!((s.proto, s.auth.rights()), (Protocol::Resp3, Rights::Data));
        assert_eq!(s.admit(&args(&["GET", "k"]), 0, now), Gate::Pass);
        // A refused command inside MULTI aborts the transaction; AUTH is not queued.
        s.admit(&args(&["MULTI"]), 0, now);
        assert!(error(s.admit(&args(&["MEMBER", "LIST"]), 0, now)).starts_with("NOPERM"));
        assert!(error(s.admit(&args(&["AUTH", "pw"]), 0, now)).contains("not allowed"));
        assert!(error(s.admit(&args(&["EXEC"]), 0, now)).starts_with("EXECABORT"));
        assert_eq!(
            reply(s.admit(&args(&["AUTH", "admin", "root"]), 0, now)),
            Value::ok()
        );
        assert!(s.info_line(now).contains(" user=admin "));
        assert_eq!(s.admit(&args(&["MEMBER", "LIST"]), 0, now), Gate::Pass);
    }

    #[test]
    fn client_subcommands_keep_the_name_and_library() {
        let s = &mut session();
        let now = Instant::now();
        assert_eq!(s.gate(&args(&["CLIENT", "GETNAME"]), now), Some(Value::Nil));
        assert_eq!(
            s.gate(&args(&["client", "setname", "app"]), now),
            Some(Value::ok())
        );
        assert_eq!(
            s.gate(&args(&["client", "getname"]), now),
            Some(Value::bulk_str("app"))
        );
        assert_eq!(
            s.gate(&args(&["client", "id"]), now),
            Some(Value::Integer(7))
        );
        assert_eq!(
            s.gate(&args(&["client", "setinfo", "lib-name", "redis-py"]), now),
            Some(Value::ok())
        );
        assert_eq!(
            s.gate(&args(&["client", "setinfo", "color", "x"]), now),
            Some(Value::error("ERR Unrecognized option 'color'"))
        );
        assert_eq!(s.gate(&args(&["client", "list"]), now), None);
        let line = s.info_line(now);
        assert!(line.starts_with("id=7 addr=127.0.0.1:5000 "), "{line}");
        assert!(
            line.contains(" name=app ") && line.contains("lib-name=redis-py "),
            "{line}"
        );
        assert!(line.ends_with('\n'));
    }
}
