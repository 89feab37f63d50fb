//! Who a client connection is, and what it may do: Redis 6's `AUTH`, with two users.
//!
//! Owns: the passwords (`requirepass` for the `default` user, `adminpass` for `admin`), the
//! constant-time check of an `AUTH`, and the split of commands into data commands and admin
//! commands. Must not: log or format a password (`Secret`'s `Debug` is redacted), or leak a
//! password's length or contents through the time a comparison takes.
//!
//! Rules:
//! 1. With no `requirepass`, a new connection is `default` already; with one, it is nobody
//!    until `AUTH`, and every command but `AUTH`, `HELLO` and `QUIT` answers `-NOAUTH`.
//! 2. With no `adminpass`, `default` may run admin commands (a cluster without passwords
//!    behaves as before). With one, only a connection authenticated as `admin` may.
//! 3. `admin` may run everything `default` may.
//! 4. A follower forwarding a request to the leader sends the connection's `Rights` along;
//!    the leader checks them again and never grants more.

/// A password from the config. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    /// Compare with `given` in time that depends only on `given`'s length and the secret's
    /// length, never on where they first differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut diff = (self.0.len() ^ given.len()) as u64;
        let n = self.0.len().max(given.len());
        for i in 0..n {
            let a = self.0.get(i).copied().unwrap_or(0);
            let b = given.get(i).copied().unwrap_or(0xff);
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
    /// Also membership, transfer, snapshots, FLUSHALL, CONFIG SET, SHUTDOWN.
    Admin = 2,
}

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

/// What a command needs, by its lower-case name and (for a few) its first argument.
pub fn required_rights(cmd: &str, sub: Option<&[u8]>) -> Rights {
    let sub_is = |s: &str| sub.is_some_and(|x| x.eq_ignore_ascii_case(s.as_bytes()));
    match cmd {
        "auth" | "hello" | "quit" => Rights::None,
        "member" | "transfer" | "snapshot" | "bgsave" | "shutdown" | "flushall" | "flushdb" => {
            Rights::Admin
        }
        "config" if sub_is("set") || sub_is("rewrite") || sub_is("resetstat") => Rights::Admin,
        _ => Rights::Data,
    }
}

/// The reply to a command the connection may not run.
pub fn denied_reply(have: Rights, cmd: &str) -> String {
    match have {
        Rights::None => "NOAUTH Authentication required.".to_string(),
        _ => format!("NOPERM User default has no permissions to run the '{cmd}' command"),
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
