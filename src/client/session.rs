//! What the client port keeps per connection beyond its pipeline: the protocol it speaks
//! (`HELLO`), its name and library (`CLIENT SETNAME` / `SETINFO`), and the `MULTI` gate.
//!
//! Owns: the replies of `HELLO`, `MULTI`, `EXEC`, `DISCARD` and the per-connection `CLIENT`
//! subcommands, with Redis 7's texts. Must not: read the clock or touch a socket (the node
//! passes `now` in and sends the replies).
//!
//! # The MULTI gate (until MULTI/EXEC exists)
//! Transactions are not supported yet, but a client that sends `MULTI`, some commands and
//! `EXEC` must never see those commands applied one by one as if `MULTI` were not there. So
//! after `MULTI` the connection refuses every command up to `EXEC` or `DISCARD` with an error
//! (nothing is queued, nothing runs); `EXEC` then answers `-EXECABORT` (as Redis does when a
//! command failed to queue) and `DISCARD` answers `+OK`.
//!
//! Invariants:
//! 1. While `in_multi`, `gate` answers every command itself: none reaches the node's dispatch.
//! 2. `proto` changes only through a successful `HELLO`.

use std::time::Instant;

use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::value::{Protocol, Value};

/// The version this server reports in `HELLO` and `INFO`: the Redis release whose replies
/// the client port follows.
pub const REDIS_VERSION: &str = "7.0.15";

/// Longest client name or library name/version kept, in bytes.
pub const CLIENT_NAME_SIZE_MAX: usize = 256;

/// One client connection's session state.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unique among this node's connections (`CLIENT ID`, `HELLO`'s `id`).
    pub id: u64,
    pub proto: Protocol,
    pub name: Vec<u8>,
    pub lib_name: Vec<u8>,
    pub lib_ver: Vec<u8>,
    /// `MULTI` was sent and neither `EXEC` nor `DISCARD` yet.
    pub in_multi: bool,
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
            in_multi: false,
            addr,
            laddr,
            opened: now,
            last_cmd: String::new(),
            last_at: now,
        }
    }

    /// Answer the command here if it is a session command, or if the MULTI gate refuses it;
    /// `None` hands it on to the node.
    pub fn gate(&mut self, args: &[Vec<u8>], now: Instant) -> Option<Value> {
        let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
        let name = args.first().and_then(|a| command_name(a, &mut buf));
        self.last_at = now;
        self.last_cmd = name.unwrap_or("unknown").to_string();
        let name = name.unwrap_or("");
        // QUIT still closes the connection inside MULTI, as in Redis.
        if self.in_multi && name != "quit" {
            return Some(self.gate_multi(name));
        }
        let reply = match name {
            "hello" => self.hello(args),
            "multi" if args.len() == 1 => {
                self.in_multi = true;
                Value::ok()
            }
            "exec" | "discard" if args.len() == 1 => {
                Value::error(format!("ERR {} without MULTI", name.to_uppercase()))
            }
            "multi" | "exec" | "discard" => arity(name),
            "client" => self.client(args, now)?,
            _ => return None,
        };
        Some(reply)
    }

    fn gate_multi(&mut self, name: &str) -> Value {
        match name {
            "exec" => {
                self.in_multi = false;
                Value::error(
                    "EXECABORT Transaction discarded: MULTI/EXEC is not supported yet, \
                     so no command after MULTI was queued or run",
                )
            }
            "discard" => {
                self.in_multi = false;
                Value::ok()
            }
            "multi" => Value::error("ERR MULTI calls can not be nested"),
            _ => Value::error(format!(
                "ERR MULTI/EXEC is not supported yet: '{name}' was not queued and will not run; \
                 send DISCARD (or EXEC, which runs nothing)"
            )),
        }
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
        let mut j = 2;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let opt = &args[j];
            if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
                // No ACLs yet: the default user has no password, as in a fresh Redis.
                if !args[j + 1].eq_ignore_ascii_case(b"default") {
                    return wrongpass();
                }
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
        let multi: i64 = if self.in_multi { 0 } else { -1 };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={age} idle={idle} flags=N db=0 sub=0 \
             psub=0 ssub=0 multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 \
             obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} \
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

/// Redis 7's reply to a subcommand it does not know.
pub fn unknown_subcommand(command: &str, sub: &[u8]) -> Value {
    Value::error(format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        String::from_utf8_lossy(sub)
    ))
}

fn wrongpass() -> Value {
    Value::error("WRONGPASS invalid username-password pair or user is disabled.")
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

    #[test]
    fn after_multi_nothing_passes_the_gate_until_exec_or_discard() {
        let s = &mut session();
        let now = Instant::now();
        assert_eq!(s.gate(&args(&["SET", "k", "v"]), now), None);
        assert_eq!(s.gate(&args(&["MULTI"]), now), Some(Value::ok()));
        for cmd in [
            &["SET", "k", "v"][..],
            &["INCR", "n"],
            &["HELLO", "3"],
            &["PING"],
        ] {
            match s.gate(&args(cmd), now) {
                Some(Value::Error(e)) => assert!(e.contains("not queued"), "{e}"),
                other => panic!("{cmd:?} gave {other:?}"),
            }
        }
        assert_eq!(s.proto, Protocol::Resp2);
        assert_eq!(s.gate(&args(&["QUIT"]), now), None, "QUIT is not refused");
        match s.gate(&args(&["EXEC"]), now) {
            Some(Value::Error(e)) => assert!(e.starts_with("EXECABORT"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.gate(&args(&["GET", "k"]), now),
            None,
            "the gate is open again"
        );
        s.gate(&args(&["MULTI"]), now);
        assert_eq!(s.gate(&args(&["DISCARD"]), now), Some(Value::ok()));
        assert_eq!(
            s.gate(&args(&["EXEC"]), now),
            Some(Value::error("ERR EXEC without MULTI"))
        );
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
