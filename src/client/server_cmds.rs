//! Server commands whose replies depend only on their arguments and a few facts the node
//! passes in: `COMMAND` (COUNT, INFO, DOCS, LIST), `CONFIG GET`, `TIME`, `WAIT`.
//!
//! Owns: the table of commands the client port knows (name, arity, flags, key positions,
//! group, summary) and Redis 7's reply shapes and errors for these commands.
//! Must not: read the clock or the node's state (the node passes `now` and the voter count).

use crate::client::session::unknown_subcommand;
use crate::client::value::Value;
use crate::kv::glob;

/// One known command: what `COMMAND INFO` and `COMMAND DOCS` report.
pub struct CommandSpec {
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (name included), `-n` at least n.
    pub arity: i64,
    pub flags: &'static [&'static str],
    /// First key, last key (-1: the last argument) and step; 0, 0, 0 for no keys.
    pub keys: (i64, i64, i64),
    pub group: &'static str,
    pub summary: &'static str,
}

// Flag sets, as Redis 7 reports them for the same commands.
const W: &[&str] = &["write"];
const WF: &[&str] = &["write", "fast"];
const WD: &[&str] = &["write", "denyoom"];
const WDF: &[&str] = &["write", "denyoom", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const LS: &[&str] = &["loading", "stale"];
const LSF: &[&str] = &["loading", "stale", "fast"];
const NS: &[&str] = &["noscript"];
const QUIT: &[&str] = &[
    "noscript",
    "loading",
    "stale",
    "fast",
    "no_auth",
    "allow_busy",
];
const MULTI: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const EXEC: &[&str] = &["noscript", "loading", "stale", "skip_slowlog"];
const BGSAVE: &[&str] = &["admin", "noscript", "no_async_loading"];
const A: &[&str] = &["admin"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const TWO: (i64, i64, i64) = (1, 2, 1);

macro_rules! spec {
    ($name:expr, $arity:expr, $flags:expr, $keys:expr, $group:expr, $summary:expr) => {
        CommandSpec {
            name: $name,
            arity: $arity,
            flags: $flags,
            keys: $keys,
            group: $group,
            summary: $summary,
        }
    };
}

/// Every command the client port answers (others get `-ERR unknown command`).
#[rustfmt::skip]
pub const COMMANDS: &[CommandSpec] = &[
    spec!("get", 2, RF, ONE, "string", "Returns the string value of a key."),
    spec!("set", -3, WD, ONE, "string", "Sets the string value of a key (NX, XX, GET, EX, PX, EXAT, PXAT, KEEPTTL)."),
    spec!("setex", 4, WD, ONE, "string", "Sets a key with a TTL in seconds."),
    spec!("psetex", 4, WD, ONE, "string", "Sets a key with a TTL in milliseconds."),
    spec!("getex", -2, WF, ONE, "string", "Returns a key's value and sets or removes its TTL."),
    spec!("setnx", 3, WDF, ONE, "string", "Sets a key only when it does not exist."),
    spec!("getset", 3, WDF, ONE, "string", "Sets a key and returns its previous value."),
    spec!("getdel", 2, WF, ONE, "string", "Returns a key's value and deletes the key."),
    spec!("mget", -2, RF, ALL, "string", "Returns the values of several keys."),
    spec!("mset", -3, WD, (1, -1, 2), "string", "Sets several keys."),
    spec!("msetnx", -3, WD, (1, -1, 2), "string", "Sets several keys only if none exists."),
    spec!("incr", 2, WDF, ONE, "string", "Adds one to a key's integer value."),
    spec!("decr", 2, WDF, ONE, "string", "Subtracts one from a key's integer value."),
    spec!("incrby", 3, WDF, ONE, "string", "Adds a number to a key's integer value."),
    spec!("decrby", 3, WDF, ONE, "string", "Subtracts a number from a key's integer value."),
    spec!("incrbyfloat", 3, WDF, ONE, "string", "Adds a float to a key's value."),
    spec!("append", 3, WDF, ONE, "string", "Appends to a key's value."),
    spec!("strlen", 2, RF, ONE, "string", "Returns the length of a key's value."),
    spec!("getrange", 4, R, ONE, "string", "Returns a substring of a key's value."),
    spec!("substr", 4, R, ONE, "string", "Returns a substring of a key's value."),
    spec!("setrange", 4, WD, ONE, "string", "Overwrites part of a key's value at an offset."),
    spec!("cas", 4, WDF, ONE, "string", "Sets a key only if it holds the expected value."),
    spec!("del", -2, W, ALL, "generic", "Deletes keys."),
    spec!("unlink", -2, WF, ALL, "generic", "Deletes keys."),
    spec!("exists", -2, RF, ALL, "generic", "Counts the keys that exist."),
    spec!("touch", -2, RF, ALL, "generic", "Counts the keys that exist."),
    spec!("type", 2, RF, ONE, "generic", "Returns the type of a key's value."),
    spec!("rename", 3, W, TWO, "generic", "Renames a key, replacing the destination."),
    spec!("renamenx", 3, WF, TWO, "generic", "Renames a key if the destination is free."),
    spec!("copy", -3, WD, TWO, "generic", "Copies a key's value to another key."),
    spec!("randomkey", 1, R, NONE, "generic", "Returns a random key."),
    spec!("expire", -3, WF, ONE, "generic", "Sets a key's TTL in seconds (the leader's clock)."),
    spec!("pexpire", -3, WF, ONE, "generic", "Sets a key's TTL in milliseconds."),
    spec!("expireat", -3, WF, ONE, "generic", "Sets a key's expiry as a Unix time in seconds."),
    spec!("pexpireat", -3, WF, ONE, "generic", "Sets a key's expiry as a Unix time in ms."),
    spec!("persist", 2, WF, ONE, "generic", "Removes a key's TTL."),
    spec!("ttl", 2, RF, ONE, "generic", "Returns a key's TTL in seconds."),
    spec!("pttl", 2, RF, ONE, "generic", "Returns a key's TTL in milliseconds."),
    spec!("expiretime", 2, RF, ONE, "generic", "Returns a key's expiry as a Unix time in seconds."),
    spec!("pexpiretime", 2, RF, ONE, "generic", "Returns a key's expiry as a Unix time in ms."),
    spec!("scan", -2, R, NONE, "generic", "Iterates over the keys with a cursor."),
    spec!("keys", 2, R, NONE, "generic", "Returns the keys matching a pattern (bounded)."),
    spec!("range", -3, R, NONE, "generic", "Returns the pairs of a key range, in key order."),
    spec!("dbsize", 1, RF, NONE, "server", "Returns the number of keys."),
    spec!("flushdb", -1, W, NONE, "server", "Deletes every key."),
    spec!("flushall", -1, W, NONE, "server", "Deletes every key."),
    spec!("ping", -1, F, NONE, "connection", "Returns PONG, or its argument."),
    spec!("echo", 2, LSF, NONE, "connection", "Returns its argument."),
    spec!("quit", -1, QUIT, NONE, "connection", "Closes the connection."),
    spec!("hello", -1, QUIT, NONE, "connection", "Chooses the protocol (2 or 3)."),
    spec!("auth", -2, QUIT, NONE, "connection", "Authenticates the connection (requirepass, adminpass)."),
    spec!("select", 2, LSF, NONE, "connection", "Selects database 0, the only one."),
    spec!("client", -2, NONE_FLAGS, NONE, "connection", "Names and lists connections."),
    spec!("multi", 1, MULTI, NONE, "transactions", "Starts a transaction: commands queue until EXEC."),
    spec!("exec", 1, EXEC, NONE, "transactions", "Runs the queued commands as one log entry, atomically."),
    spec!("discard", 1, MULTI, NONE, "transactions", "Drops the queued commands and the watched keys."),
    spec!("watch", -2, MULTI, ALL, "transactions", "EXEC aborts if a key changes after this (a linearizable read)."),
    spec!("unwatch", 1, MULTI, NONE, "transactions", "Forgets the watched keys."),
    spec!("info", -1, LS, NONE, "server", "Returns server information."),
    spec!("command", -1, LS, NONE, "server", "Describes the commands."),
    spec!("config", -2, NONE_FLAGS, NONE, "server", "CONFIG GET: a few settings."),
    spec!("time", 1, LSF, NONE, "server", "Returns the server's time."),
    spec!("wait", 3, NS, NONE, "generic", "Returns the replicas holding the writes."),
    spec!("member", -2, A, NONE, "cluster", "Lists or changes the cluster's members."),
    spec!("transfer", 2, A, NONE, "cluster", "Hands leadership to another node."),
    spec!("snapshot", 1, A, NONE, "server", "Takes a snapshot now."),
    spec!("bgsave", -1, BGSAVE, NONE, "server", "Takes a snapshot now."),
];

const NONE_FLAGS: &[&str] = &[];

/// The table's entry for `name` (lowercase, as `resp::command_name` gives it).
pub fn spec(name: &str) -> Option<&'static CommandSpec> {
    find(name.as_bytes())
}

fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

fn info_entry(c: &CommandSpec) -> Value {
    let set = |items: &[&str]| {
        Value::Set(
            items
                .iter()
                .map(|f| Value::Simple(f.to_string().into()))
                .collect(),
        )
    };
    Value::Array(vec![
        Value::bulk_str(c.name),
        Value::Integer(c.arity),
        set(c.flags),
        Value::Integer(c.keys.0),
        Value::Integer(c.keys.1),
        Value::Integer(c.keys.2),
        set(&[]),
        set(&[]),
        Value::Array(vec![]),
        Value::Array(vec![]),
    ])
}

fn docs_entry(c: &CommandSpec) -> Value {
    let s = Value::bulk_str;
    Value::Map(vec![
        (s("summary"), s(c.summary)),
        (s("since"), s("1.0.0")),
        (s("group"), s(c.group)),
    ])
}

/// `COMMAND [COUNT | LIST | INFO [name ...] | DOCS [name ...]]`.
pub fn command(args: &[Vec<u8>]) -> Value {
    let Some(sub) = args.get(1) else {
        return Value::Array(COMMANDS.iter().map(info_entry).collect());
    };
    let names = &args[2..];
    match sub.to_ascii_lowercase().as_slice() {
        b"count" if names.is_empty() => Value::Integer(COMMANDS.len() as i64),
        b"list" if names.is_empty() => {
            Value::Array(COMMANDS.iter().map(|c| Value::bulk_str(c.name)).collect())
        }
        b"info" if names.is_empty() => Value::Array(COMMANDS.iter().map(info_entry).collect()),
        b"info" => Value::Array(
            names
                .iter()
                .map(|n| find(n).map_or(Value::Nil, info_entry))
                .collect(),
        ),
        b"docs" => {
            let pick: Vec<&CommandSpec> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| find(n)).collect()
            };
            Value::Map(
                pick.into_iter()
                    .map(|c| (Value::bulk_str(c.name), docs_entry(c)))
                    .collect(),
            )
        }
        s @ (b"count" | b"list") => Value::error(format!(
            "ERR wrong number of arguments for 'command|{}' command",
            String::from_utf8_lossy(s)
        )),
        _ => unknown_subcommand("COMMAND", sub),
    }
}

/// The settings `CONFIG GET` reports: what clients and tools ask about at start-up.
const CONFIG: &[(&str, &str)] = &[
    ("appendonly", "no"),
    ("databases", "1"),
    ("maxmemory", "0"),
    ("proto-max-bulk-len", "1048576"),
    ("save", ""),
];

/// `CONFIG GET pattern [pattern ...]` (a map; other CONFIG subcommands are refused).
pub fn config(args: &[Vec<u8>]) -> Value {
    let sub = args.get(1).map(|a| a.to_ascii_lowercase());
    match sub.as_deref() {
        Some(b"get") if args.len() >= 3 => {
            let pairs = CONFIG
                .iter()
                .filter(|(k, _)| {
                    args[2..]
                        .iter()
                        .any(|p| glob::matches(p, k.as_bytes(), true))
                })
                .map(|(k, v)| (Value::bulk_str(k), Value::bulk_str(v)))
                .collect();
            Value::Map(pairs)
        }
        Some(b"get") => Value::error("ERR wrong number of arguments for 'config|get' command"),
        None => Value::error("ERR wrong number of arguments for 'config' command"),
        Some(_) => unknown_subcommand("CONFIG", &args[1]),
    }
}

/// `TIME`: seconds and microseconds since the Unix epoch, as bulk strings.
pub fn time(args: &[Vec<u8>], since_epoch: std::time::Duration) -> Value {
    if args.len() != 1 {
        return Value::error("ERR wrong number of arguments for 'time' command");
    }
    Value::Array(vec![
        Value::bulk_str(&since_epoch.as_secs().to_string()),
        Value::bulk_str(&since_epoch.subsec_micros().to_string()),
    ])
}

/// `WAIT numreplicas timeout`. A reply leaves only after every earlier write of the same
/// connection was committed (replies keep request order), and commit is synchronous, so the
/// answer is immediate: the other voters, `voters - 1`.
pub fn wait(args: &[Vec<u8>], voters: usize) -> Value {
    use crate::kv::command::parse_i64;
    if args.len() != 3 {
        return Value::error("ERR wrong number of arguments for 'wait' command");
    }
    if parse_i64(&args[1]).is_none() {
        return Value::error("ERR value is not an integer or out of range");
    }
    match parse_i64(&args[2]) {
        None => Value::error("ERR timeout is not an integer or out of range"),
        Some(t) if t < 0 => Value::error("ERR timeout is negative"),
        Some(_) => Value::Integer(voters.saturating_sub(1) as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    #[test]
    fn the_command_table_has_unique_lowercase_names_and_redis_arities() {
        let mut names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        assert!(names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_lowercase())));
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate command names");
        assert_eq!(
            command(&args(&["COMMAND", "COUNT"])),
            Value::Integer(COMMANDS.len() as i64)
        );
        let Value::Array(info) = command(&args(&["command", "info", "get", "nope"])) else {
            panic!()
        };
        assert_eq!(info[1], Value::Nil);
        let Value::Array(get) = &info[0] else {
            panic!()
        };
        assert_eq!(get.len(), 10);
        assert_eq!(get[1], Value::Integer(2));
    }

    #[test]
    fn config_get_matches_globs_and_wait_counts_the_other_voters() {
        assert_eq!(
            config(&args(&["config", "get", "save"])),
            Value::Map(vec![(Value::bulk_str("save"), Value::bulk_str(""))])
        );
        let Value::Map(all) = config(&args(&["CONFIG", "GET", "*"])) else {
            panic!()
        };
        assert_eq!(all.len(), CONFIG.len());
        assert!(config(&args(&["config", "set", "a", "b"])).is_error());
        assert_eq!(wait(&args(&["wait", "1", "0"]), 3), Value::Integer(2));
        assert_eq!(
            wait(&args(&["wait", "1", "-1"]), 3),
            Value::error("ERR timeout is negative")
        );
    }
}
