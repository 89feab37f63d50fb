//! Who a client connection is, and what it may do: Redis 6's `AUTH`, with two users.
//!
//! Owns: the passwords (`requirepass` for the `default` user, `adminpass` for `admin`), the
//! constant-time check of an `AUTH`, the split of commands into data commands and admin
//! commands, and one connection's authentication state (`ConnAuth`: `AUTH`, `HELLO ... AUTH`).
//! Must not: log or format a password (`Secret`'s `Debug` is redacted; no reply or error
//! echoes one), or leak a password's length or contents through the time a comparison takes.
//!
//! Rules:
//! 1. With no `requirepass`, a new connection is `default` already; with one, it is nobody
//!    until `AUTH`, and every command but `AUTH`, `HELLO` and `QUIT` answers `-NOAUTH`.
//! 2. With no `adminpass`, `default` may run admin commands (a cluster without passwords
//!    behaves as before). With one, only a connection authenticated as `admin` may.
//! 3. `admin` may run everything `default` may.
//! 4. A follower forwarding a request to the leader sends the connection's `Rights` along;
//!    the leader checks them again and never grants more.
//! 5. Admin commands are the node's own commands (membership, transfer, snapshots, CONFIG
//!    SET, SHUTDOWN, backup): a command is admin when the command table flags it `admin`, or
//!    when the table does not know it at all, so a command added without thought is admin.
//!    Every state machine command is a data command (FLUSHALL too, as for Redis's `default`
//!    user), so a transaction (`MULTI`/`EXEC`) or a session write (`SESSION RUN`), which
//!    carry state machine commands only, never carries an admin command.
//! 6. A failed `AUTH` changes nothing: the connection keeps the rights it had.

use std::sync::Arc;

use crate::client::resp::{command_name, COMMAND_NAME_SIZE_MAX};
use crate::client::server_cmds;
use crate::client::session::unknown_command;
use crate::client::value::Value;

/// A password from the config. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// Compare with `given` in time that depends only on `given`'s length (the caller's own),
    /// never on the secret's length or on where the two first differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut diff = (self.0.len() ^ given.len()) as u64;
        let len = self.0.len().max(1);
        for (i, &b) in given.iter().enumerate() {
            // Walk the secret cyclically: one load per given byte, whatever its length.
            let a = self.0.get(i % len).copied().unwrap_or(0);
            diff |= u64::from(a ^ b);
        }
        // Keep the optimiser from turning the loop into an early exit.
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rights {
    /// Not authenticated: only AUTH, HELLO and QUIT.
    None = 0,
    /// Reads and writes of keys, server introspection.
    Data = 1,
    /// Also membership, transfer, snapshots and backups, CONFIG SET, SHUTDOWN.
    Admin = 2,
}

// The wire format's bound on the byte a forwarded request carries.
const _: () = assert!(Rights::Admin as u8 == crate::wire::frame::RIGHTS_MAX);

impl Rights {
    /// The byte a forwarded request carries (see `wire`).
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// From a forwarded request's byte; an unknown byte grants nothing.
    pub fn from_byte(b: u8) -> Rights {
        match b {
            1 => Rights::Data,
            2 => Rights::Admin,
            _ => Rights::None,
        }
    }
}

/// The passwords of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Users {
    pub requirepass: Option<Secret>,
    pub adminpass: Option<Secret>,
}

/// Why an `AUTH` failed, with Redis's reply text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    WrongPass,
    /// `AUTH password` with no password configured at all.
    NoPasswordSet,
}

impl AuthError {
    pub fn reply_text(self) -> &'static str {
        match self {
            AuthError::WrongPass => {
                "WRONGPASS invalid username-password pair or user is disabled."
            }
            AuthError::NoPasswordSet => {
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
            }
        }
    }
}

impl Users {
    /// The rights of a connection that has not authenticated.
    pub fn initial_rights(&self) -> Rights {
        match (&self.requirepass, &self.adminpass) {
            (Some(_), _) => Rights::None,
            (None, Some(_)) => Rights::Data,
            (None, None) => Rights::Admin,
        }
    }

    /// Check `AUTH [user] password`. Both users' passwords are always compared, so the time
    /// taken does not tell which user exists or matched.
    pub fn authenticate(&self, user: Option<&[u8]>, pass: &[u8]) -> Result<Rights, AuthError> {
        if user.is_none() && self.requirepass.is_none() {
            return Err(AuthError::NoPasswordSet);
        }
        let default_ok = match &self.requirepass {
            Some(s) => s.matches(pass),
            // Redis: the default user with `nopass` accepts any password.
            None => true,
        };
        let admin_ok = self.adminpass.as_ref().is_some_and(|s| s.matches(pass));
        let is = |name: &[u8]| user.is_some_and(|u| u.eq_ignore_ascii_case(name));
        let default_rights = match self.adminpass {
            Some(_) => Rights::Data,
            None => Rights::Admin,
        };
        if user.is_none() || is(b"default") {
            return match default_ok {
                true => Ok(default_rights),
                false => Err(AuthError::WrongPass),
            };
        }
        if is(b"admin") && admin_ok {
            return Ok(Rights::Admin);
        }
        Err(AuthError::WrongPass)
    }
}

/// State machine commands the command table does not list (rule 5): `SESSION` (`OPEN`,
/// `RUN`: the command inside is a state machine command too) and the client form of `EXEC`.
const DATA_COMMANDS_UNLISTED: &[&str] = &["session", crate::kv::tx::EXEC_COMMAND];

/// Admin commands the node may know without the table listing them.
const ADMIN_COMMANDS: &[&str] = &[
    "member", "transfer", "snapshot", "bgsave", "shutdown", "backup", "debug", "config",
];

/// What a command needs, by its lower-case name and (for a few) its first argument (rule 5).
pub fn required_rights(cmd: &str, sub: Option<&[u8]>) -> Rights {
    let sub_is = |s: &str| sub.is_some_and(|x| x.eq_ignore_ascii_case(s.as_bytes()));
    match cmd {
        "auth" | "hello" | "quit" => Rights::None,
        "config" if sub_is("get") => Rights::Data,
        _ if ADMIN_COMMANDS.contains(&cmd) => Rights::Admin,
        _ if DATA_COMMANDS_UNLISTED.contains(&cmd) => Rights::Data,
        _ => match server_cmds::spec(cmd) {
            Some(spec) if !spec.flags.contains(&"admin") => Rights::Data,
            _ => Rights::Admin,
        },
    }
}

/// Whether the node knows `cmd` at all (a denial then says NOPERM, not "unknown command").
fn known(cmd: &str) -> bool {
    ADMIN_COMMANDS.contains(&cmd)
        || DATA_COMMANDS_UNLISTED.contains(&cmd)
        || server_cmds::spec(cmd).is_some()
}

/// The reply to a command the connection may not run.
pub fn denied_reply(have: Rights, cmd: &str) -> String {
    match have {
        Rights::None => "NOAUTH Authentication required.".to_string(),
        _ => format!("NOPERM User default has no permissions to run the '{cmd}' command"),
    }
}

/// The error `args` gets from a connection (or a forwarded request) with rights `have`, or
/// `None` if it may run. A data user's command the node does not know is answered as unknown
/// (Redis checks the name first), so a typo reads as a typo.
pub fn check(have: Rights, args: &[Vec<u8>]) -> Option<Value> {
    // Rule 3: admin may run everything (and without passwords every connection is admin).
    if have == Rights::Admin {
        return None;
    }
    let mut buf = [0u8; COMMAND_NAME_SIZE_MAX];
    let name = args.first().and_then(|a| command_name(a, &mut buf));
    let need = match name {
        Some(n) => required_rights(n, args.get(1).map(Vec::as_slice)),
        // Longer than any command name: unknown to everyone.
        None => Rights::Data,
    };
    if have >= need {
        return None;
    }
    if have > Rights::None && !name.is_some_and(known) {
        return Some(unknown_command(args));
    }
    let shown = match (name, args.get(1)) {
        (Some("config"), Some(sub)) if sub.len() <= COMMAND_NAME_SIZE_MAX => {
            format!("config|{}", String::from_utf8_lossy(sub).to_lowercase())
        }
        (Some(n), _) => n.to_string(),
        (None, _) => String::new(),
    };
    Some(Value::error(denied_reply(have, &shown)))
}

/// One client connection's authentication: whose passwords it checks, and its rights now.
#[derive(Clone, Debug)]
pub struct ConnAuth {
    users: Arc<Users>,
    rights: Rights,
}

impl Default for ConnAuth {
    /// A node without passwords: every connection may do everything.
    fn default() -> ConnAuth {
        ConnAuth::new(Arc::new(Users::default()))
    }
}

impl ConnAuth {
    pub fn new(users: Arc<Users>) -> ConnAuth {
        let rights = users.initial_rights();
        ConnAuth { users, rights }
    }

    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// The user `CLIENT LIST` shows: `admin` once authenticated as admin, else `default`.
    pub fn user(&self) -> &'static str {
        match (self.rights, &self.users.adminpass) {
            (Rights::Admin, Some(_)) => "admin",
            _ => "default",
        }
    }

    /// Authenticate as `user` (the `default` user if `None`) with `pass`; a failure keeps
    /// the rights the connection had (rule 6).
    pub fn authenticate(&mut self, user: Option<&[u8]>, pass: &[u8]) -> Result<(), Value> {
        match self.users.authenticate(user, pass) {
            Ok(r) => {
                self.rights = r;
                Ok(())
            }
            Err(e) => Err(Value::error(e.reply_text())),
        }
    }

    /// `AUTH [username] password`, as Redis 7 answers it.
    pub fn auth_command(&mut self, args: &[Vec<u8>]) -> Value {
        let result = match args.len() {
            2 => self.authenticate(None, &args[1]),
            3 => self.authenticate(Some(&args[1]), &args[2]),
            n if n > 3 => Err(Value::error("ERR syntax error")),
            _ => Err(Value::error(
                "ERR wrong number of arguments for 'auth' command",
            )),
        };
        match result {
            Ok(()) => Value::ok(),
            Err(e) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(default: Option<&str>, admin: Option<&str>) -> Users {
        Users {
            requirepass: default.map(Secret::new),
            adminpass: admin.map(Secret::new),
        }
    }

    #[test]
    fn without_passwords_everyone_may_do_everything() {
        let u = users(None, None);
        assert_eq!(u.initial_rights(), Rights::Admin);
        assert_eq!(u.authenticate(None, b"x"), Err(AuthError::NoPasswordSet));
        assert_eq!(u.authenticate(Some(b"default"), b"x"), Ok(Rights::Admin));
    }

    #[test]
    fn requirepass_gates_data_and_adminpass_gates_admin() {
        let u = users(Some("s3cret"), Some("r00t"));
        assert_eq!(u.initial_rights(), Rights::None);
        assert_eq!(u.authenticate(None, b"s3cret"), Ok(Rights::Data));
        assert_eq!(
            u.authenticate(Some(b"DEFAULT"), b"s3cret"),
            Ok(Rights::Data)
        );
        assert_eq!(u.authenticate(Some(b"admin"), b"r00t"), Ok(Rights::Admin));
        for (user, pass) in [
            (None, &b"r00t"[..]),
            (None, b"s3cre"),
            (None, b"s3cret "),
            (Some(&b"admin"[..]), b"s3cret"),
            (Some(b"root"), b"r00t"),
            (Some(b"default"), b""),
        ] {
            assert_eq!(
                u.authenticate(user, pass),
                Err(AuthError::WrongPass),
                "{user:?}"
            );
        }
        let only_admin = users(None, Some("r00t"));
        assert_eq!(only_admin.initial_rights(), Rights::Data);
        assert_eq!(
            only_admin.authenticate(Some(b"admin"), b"r00t"),
            Ok(Rights::Admin)
        );
        assert_eq!(
            only_admin.authenticate(Some(b"admin"), b"nope"),
            Err(AuthError::WrongPass)
        );
    }

    #[test]
    fn admin_commands_are_classified_and_denials_name_the_reason() {
        assert_eq!(required_rights("member", Some(b"list")), Rights::Admin);
        assert_eq!(required_rights("config", Some(b"SET")), Rights::Admin);
        assert_eq!(required_rights("config", Some(b"get")), Rights::Data);
        assert_eq!(required_rights("get", None), Rights::Data);
        assert_eq!(required_rights("hello", None), Rights::None);
        assert!(denied_reply(Rights::None, "get").starts_with("NOAUTH "));
        assert!(denied_reply(Rights::Data, "member").starts_with("NOPERM "));
        for r in [Rights::None, Rights::Data, Rights::Admin] {
            assert_eq!(Rights::from_byte(r.to_byte()), r);
        }
        assert_eq!(Rights::from_byte(77), Rights::None);
    }

    fn args(parts: &[&str]) -> Vec<Vec<u8>> {
        parts.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn error(v: Option<Value>) -> String {
        match v {
            Some(Value::Error(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn state_machine_commands_are_data_and_unknown_node_commands_are_admin() {
        for cmd in [
            "flushall",
            "flushdb",
            "session",
            "kvraft.exec",
            "watch",
            "exec",
            "set",
        ] {
            assert_eq!(required_rights(cmd, None), Rights::Data, "{cmd}");
        }
        for cmd in [
            "member", "transfer", "snapshot", "bgsave", "shutdown", "backup", "foo",
        ] {
            assert_eq!(required_rights(cmd, None), Rights::Admin, "{cmd}");
        }
        // Introspection is data; changing the configuration is admin.
        for cmd in [
            "get", "mget", "scan", "keys", "info", "client", "command", "ping",
        ] {
            assert_eq!(required_rights(cmd, None), Rights::Data, "{cmd}");
        }
        assert_eq!(required_rights("config", Some(b"get")), Rights::Data);
        assert_eq!(required_rights("config", Some(b"set")), Rights::Admin);
        for cmd in ["auth", "hello", "quit"] {
            assert_eq!(required_rights(cmd, None), Rights::None, "{cmd}");
        }
    }

    #[test]
    fn check_answers_noauth_noperm_or_unknown_command() {
        assert_eq!(check(Rights::Data, &args(&["GET", "k"])), None);
        assert_eq!(check(Rights::None, &args(&["AUTH", "x"])), None);
        assert_eq!(check(Rights::None, &args(&["hello", "3"])), None);
        assert_eq!(
            error(check(Rights::None, &args(&["GET", "k"]))),
            "NOAUTH Authentication required."
        );
        assert_eq!(
            error(check(Rights::None, &args(&["NO-SUCH-COMMAND-AT-ALL"]))),
            "NOAUTH Authentication required."
        );
        assert_eq!(
            error(check(Rights::Data, &args(&["member", "list"]))),
            "NOPERM User default has no permissions to run the 'member' command"
        );
        assert_eq!(
            error(check(
                Rights::Data,
                &args(&["CONFIG", "SET", "requirepass", "x"])
            )),
            "NOPERM User default has no permissions to run the 'config|set' command"
        );
        assert_eq!(check(Rights::Data, &args(&["CONFIG", "GET", "save"])), None);
        assert!(error(check(Rights::Data, &args(&["FOO", "x"])))
            .starts_with("ERR unknown command 'FOO'"));
        assert_eq!(check(Rights::Admin, &args(&["member", "list"])), None);
    }

    #[test]
    fn a_connection_authenticates_and_a_failure_keeps_its_rights() {
        let users = Arc::new(users(Some("s3cret"), Some("r00t")));
        let mut c = ConnAuth::new(users);
        assert_eq!(c.rights(), Rights::None);
        let wrong = "WRONGPASS invalid username-password pair or user is disabled.";
        assert_eq!(
            c.auth_command(&args(&["AUTH", "nope"])),
            Value::error(wrong)
        );
        assert_eq!(c.rights(), Rights::None);
        assert_eq!(c.auth_command(&args(&["AUTH", "s3cret"])), Value::ok());
        assert_eq!((c.rights(), c.user()), (Rights::Data, "default"));
        assert_eq!(
            c.auth_command(&args(&["AUTH", "admin", "r00t"])),
            Value::ok()
        );
        assert_eq!((c.rights(), c.user()), (Rights::Admin, "admin"));
        assert_eq!(
            c.auth_command(&args(&["AUTH", "admin", "s3cret"])),
            Value::error(wrong)
        );
        assert_eq!(c.rights(), Rights::Admin, "a failed AUTH keeps the rights");
        assert_eq!(
            c.auth_command(&args(&["AUTH", "default", "s3cret"])),
            Value::ok()
        );
        assert_eq!(c.rights(), Rights::Data);
        assert_eq!(
            c.auth_command(&args(&["AUTH"])),
            Value::error("ERR wrong number of arguments for 'auth' command")
        );
        assert_eq!(
            c.auth_command(&args(&["AUTH", "a", "b", "c"])),
            Value::error("ERR syntax error")
        );
        let open = ConnAuth::default();
        assert_eq!((open.rights(), open.user()), (Rights::Admin, "default"));
    }

    #[test]
    fn a_secret_never_prints_and_compares_whole() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter"));
        assert!(!s.matches(b"hunter22"));
        assert!(!s.matches(b"Hunter2"));
        assert!(!Secret::new("").matches(b"\xff"));
        assert!(Secret::new("").matches(b""));
    }
}
