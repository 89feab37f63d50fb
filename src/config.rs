//! The cluster config file, parsed by hand and validated.
//!
//! Owns the file format and every tuning default. It must not hide a default anywhere else:
//! what is not in this table is not configurable.
//!
//! # Format
//!
//! ```text
//! # conf/cluster.conf: full-line comments, and trailing " # ..." comments
//! data_dir = data/node{id}
//! election_timeout_ms = 500
//! node.1 = peer=127.0.0.1:7001 client=127.0.0.1:6001
//! node.2 = peer=127.0.0.1:7002 client=127.0.0.1:6002
//! node.3 = peer=127.0.0.1:7003 client=127.0.0.1:6003
//! ```
//!
//! One `key = value` per line; blank lines are ignored; a `#` at the start of a line or after
//! whitespace starts a comment. Every node reads the same file and is told its own id
//! (`kvraftd --config FILE --id N`).
//!
//! # Keys
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `node.<id>` | (at least one required) | a member: `peer=<host:port> client=<host:port> [metrics=<host:port>]`; id ≥ 1; host names are resolved, the first address is used. `metrics=` (optional) is where that node serves HTTP: `GET /metrics` (Prometheus), `/livez`, `/readyz` |
//! | `data_dir` | `data/node{id}` | this node's data directory; `{id}` is replaced by the node id; relative to the working directory; `--data-dir` overrides it |
//! | `cluster_name` | `kvraft` | peers that present another cluster name are refused; letters, digits, `.`, `_`, `-`, at most 64 bytes |
//! | `initial_cluster_state` | `existing` | `new`: a node started on an empty data directory forms a new cluster with itself as its only voter (as `kvraftd --bootstrap`); `existing`: it waits to be admitted by the cluster's leader. Set it on ONE node only, for the first start; a data directory that holds a cluster ignores it |
//! | `tick_ms` | `10` | the timer tick, 1..=1000 ms; every timeout is a whole number of ticks |
//! | `election_timeout_ms` | `500` | T: each node waits a fresh random time in [T, 2T) without a leader before it campaigns; ≥ 2 ticks, ≤ 600000 |
//! | `heartbeat_interval_ms` | `50` | how often a leader heartbeats; ≥ `tick_ms` and < `election_timeout_ms / 2` |
//! | `leader_sync_wait_ms` | `5` | a leader whose followers keep up leaves its own log writes unsynced and lets them commit on the followers' acknowledgements (`node/stored.rs`, "The leader's own sync"); an entry this old and still not committed makes it sync and sync in every turn for a while; 0 ..= 1000; `0`: the leader syncs its own log in every turn that writes, before it counts toward commit |
//! | `snapshot_entries` | `100000` | take a snapshot once this many entries were applied since the last one (≥ 1) |
//! | `snapshot_bytes` | `256MiB` | ... or once this many bytes of log were written since the last one (≥ 1 MiB) |
//! | `snapshot_write_rate` | `128MiB` | bytes per second a snapshot is written at, at most: a snapshot child writing as fast as the disk goes slows every log sync on that disk (README, Snapshots); `0`: unpaced; else ≥ 1 MiB |
//! | `snapshot_keep_entries` | `10000` | entries kept in the log behind a snapshot, for followers that are slightly behind |
//! | `snapshot_chunk_bytes` | `1MiB` | bytes of snapshot per InstallSnapshot message; 4 KiB ..= `limits::SNAPSHOT_CHUNK_SIZE_MAX` |
//! | `segment_bytes` | `64MiB` | size of one log segment file; > `limits::ENTRY_SIZE_MAX` + 1 MiB, ≤ 1 GiB |
//! | `max_clients` | `limits::CLIENT_CONNECTIONS_MAX` (10000) | client connections served at once, 1 ..= that limit |
//! | `forward_to_leader` | `true` | `true`: a follower forwards client writes to the leader; `false`: it answers `-REDIRECT <leader client address>` |
//! | `huge_pages` | `true` | `true`: `kvraftd` asks for transparent huge pages for its heap and for the state machine's record pages (`kv::records`, advised `MADV_HUGEPAGE`): at start it re-executes itself with glibc's `glibc.malloc.hugetlb=1` tunable added to `GLIBC_TUNABLES` (unless that variable already sets `glibc.malloc.hugetlb`, or the kernel's THP mode is `never`), so `fork()` for a snapshot copies one entry per 2 MiB instead of 512 and pauses the loop a few ms instead of tens (README, Snapshots); `false`: 4 KiB pages |
//! | `seed` | derived from the id | seed of this node's PRNG (election timeouts); set it to replay a run |
//! | `requirepass` | none | the `default` user's password: clients must `AUTH` before any other command (`crate::auth`); 1 ..= `limits::PASSWORD_SIZE_MAX` bytes, no whitespace before a `#` |
//! | `adminpass` | none | the `admin` user's password: only a connection that did `AUTH admin <pass>` may run admin commands (membership, transfer, snapshots, CONFIG SET) |
//! | `requirepass_file`, `adminpass_file` | none | read the password from this file instead (one line; a final newline is dropped), so it can stay out of a world-readable config; relative to the working directory |
//! | `tls_cert` | unset | PEM certificate chain of this node (`tls_cert`, `tls_key` and `tls_ca` go together): TLS on the client port, mutual TLS on the peer port; `{id}` is replaced by the node id (one file for every node: `tls_cert = /etc/kvraft/node{id}.pem`); relative to the working directory; reloaded on SIGHUP |
//! | `tls_key` | unset | PEM private key of `tls_cert` |
//! | `tls_ca` | unset | PEM CA certificate(s): peers (both directions) and, when required, clients must present a certificate it signed |
//! | `tls_client_auth` | `none` | `require`: a client must present a certificate signed by `tls_ca`; `none`: not demanded (one presented is still verified). `require` needs `tls_cert` |
//!
//! Numbers may use `_` separators (`100_000`); `*_bytes` keys also take a `KiB`, `MiB` or `GiB`
//! suffix (`64MiB`). Booleans are `true` or `false`. No error message ever quotes a password
//! (a line that sets one is not echoed).
//!
//! Invariants of a `Config` returned by `parse`/`load`:
//! 1. `members` is non-empty, sorted by id, with no duplicate ids or addresses, and holds `id`.
//! 2. `heartbeat_interval_ms < election_timeout_ms / 2` and `tick_ms <= heartbeat_interval_ms`.
//! 3. Every number is within the range its row above states.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::{Secret, Users};

use crate::limits::{
    CLIENT_CONNECTIONS_MAX, CONFIG_LINE_SIZE_MAX, ENTRY_SIZE_MAX, MEMBERS_MAX, PASSWORD_SIZE_MAX,
    SNAPSHOT_CHUNK_SIZE_MAX,
};
use crate::raft::types::NodeId;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Longest `cluster_name`, in bytes.
pub const CLUSTER_NAME_SIZE_MAX: usize = 64;

/// Largest log segment file, in bytes.
pub const SEGMENT_SIZE_MAX: u64 = GIB;

/// Every key a file may set (`node.<id>` stands for the member lines), in the table's order.
const KEYS: &[&str] = &[
    "node.<id>",
    "data_dir",
    "cluster_name",
    "initial_cluster_state",
    "tick_ms",
    "election_timeout_ms",
    "heartbeat_interval_ms",
    "leader_sync_wait_ms",
    "snapshot_entries",
    "snapshot_bytes",
    "snapshot_write_rate",
    "snapshot_keep_entries",
    "snapshot_chunk_bytes",
    "segment_bytes",
    "max_clients",
    "forward_to_leader",
    "huge_pages",
    "seed",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_client_auth",
    "requirepass",
    "adminpass",
    "requirepass_file",
    "adminpass_file",
];

/// Keys whose value is a secret: never echoed in an error.
const SECRET_KEYS: &[&str] = &["requirepass", "adminpass"];

/// Keys without a default value, left out of `conf/example.conf`'s list of defaults.
#[cfg(test)]
const KEYS_WITHOUT_DEFAULT: &[&str] = &[
    "seed",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "requirepass",
    "adminpass",
    "requirepass_file",
    "adminpass_file",
];

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Where other nodes reach this one (the binary peer protocol).
    pub peer: SocketAddr,
    /// Where clients reach this one (RESP2).
    pub client: SocketAddr,
    /// Where this node serves HTTP (`/metrics`, `/livez`, `/readyz`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// What a node started on empty storage does (`initial_cluster_state`, `--bootstrap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialClusterState {
    /// Form a new cluster: a new cluster id, this node its only voter.
    New,
    /// Join the cluster of the configured members: wait for the leader to admit it.
    Existing,
}

/// Whether the client port demands a client certificate (`tls_client_auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `none`: not demanded; one presented is still verified against `tls_ca`.
    Optional,
    /// `require`: demanded, signed by `tls_ca`.
    Require,
}

/// Where the PEM files of TLS are (`tls_cert`, `tls_key`, `tls_ca`), read at start-up and on
/// SIGHUP by `node::tls::TlsConfigs::load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub client_auth: ClientAuth,
}

/// A validated configuration for one node. See the module documentation for every field's
/// default and range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub id: NodeId,
    pub members: Vec<Member>,
    pub data_dir: PathBuf,
    pub cluster_name: String,
    pub initial_cluster_state: InitialClusterState,
    pub tick_ms: u64,
    pub election_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// 0: no deferred leader sync (see the table above).
    pub leader_sync_wait_ms: u64,
    pub snapshot_entries: u64,
    pub snapshot_bytes: u64,
    /// Bytes per second; 0: unpaced.
    pub snapshot_write_rate: u64,
    pub snapshot_keep_entries: u64,
    pub snapshot_chunk_bytes: u64,
    pub segment_bytes: u64,
    pub max_clients: usize,
    pub forward_to_leader: bool,
    /// Transparent huge pages for the heap, through glibc's tunable (see the table above).
    pub huge_pages: bool,
    pub seed: Option<u64>,
    /// The passwords (`requirepass`, `adminpass`); shared by every client connection.
    pub users: Arc<Users>,
    /// TLS on both ports, when the three files are set.
    pub tls: Option<TlsFiles>,
}

/// Why a config file was refused: the file, the 1-based line if one line is to blame, and what
/// was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The file's settings before the node id is known: defaults overwritten by what it sets.
struct Settings {
    members: Vec<Member>,
    /// `data_dir` with `{id}` not yet replaced.
    data_dir: String,
    config: Config,
    /// The line that set each key, for duplicates and for errors that relate two keys.
    lines: HashMap<String, usize>,
    /// `tls_cert`, `tls_key`, `tls_ca` as set; `check_settings` makes them `config.tls`.
    tls_paths: [Option<PathBuf>; 3],
    client_auth: ClientAuth,
}

impl Config {
    /// kvraftd: load `path` for node `id`; `data_dir`, if given, overrides the file's.
    pub fn load(path: &Path, id: NodeId, data_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = read(path)?;
        Config::parse(&text, &file, id, data_dir)
    }

    /// Parse the text of a config file named `file_name` (used in errors) for node `id`.
    pub fn parse(
        text: &str,
        file_name: &str,
        id: NodeId,
        data_dir: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let settings = parse_settings(text, file_name)?;
        if !settings.members.iter().any(|m| m.id == id) {
            let ids: Vec<String> = settings.members.iter().map(|m| m.id.to_string()).collect();
            return Err(ConfigError {
                file: file_name.to_string(),
                line: None,
                msg: format!(
                    "node id {id} is not a member (expected one of: {})",
                    ids.join(", ")
                ),
            });
        }
        let mut config = settings.config;
        config.id = id;
        config.members = settings.members;
        config.data_dir = match data_dir {
            Some(dir) => dir.to_path_buf(),
            None => PathBuf::from(settings.data_dir.replace("{id}", &id.to_string())),
        };
        if let Some(tls) = &mut config.tls {
            for path in [&mut tls.cert, &mut tls.key, &mut tls.ca] {
                let with_id = path.to_string_lossy().replace("{id}", &id.to_string());
                *path = PathBuf::from(with_id);
            }
        }
        Ok(config)
    }

    /// The member with this id.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// kvctl: only the members of the file at `path` (the rest is still validated).
pub fn load_members(path: &Path) -> Result<Vec<Member>, ConfigError> {
    let text = read(path)?;
    Ok(parse_settings(&text, &path.display().to_string())?.members)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: None,
        msg: format!("cannot read the config file: {e}"),
    })
}

fn defaults() -> Config {
    Config {
        id: NodeId(0),
        members: Vec::new(),
        data_dir: PathBuf::new(),
        cluster_name: "kvraft".to_string(),
        initial_cluster_state: InitialClusterState::Existing,
        tick_ms: 10,
        election_timeout_ms: 500,
        heartbeat_interval_ms: 50,
        leader_sync_wait_ms: 5,
        snapshot_entries: 100_000,
        snapshot_bytes: 256 * MIB,
        snapshot_write_rate: 128 * MIB,
        snapshot_keep_entries: 10_000,
        snapshot_chunk_bytes: MIB,
        segment_bytes: 64 * MIB,
        max_clients: CLIENT_CONNECTIONS_MAX,
        forward_to_leader: true,
        huge_pages: true,
        seed: None,
        users: Arc::new(Users::default()),
        tls: None,
    }
}

/// Parse and validate everything that does not depend on the node id.
fn parse_settings(text: &str, file: &str) -> Result<Settings, ConfigError> {
    let mut settings = Settings {
        members: Vec::new(),
        data_dir: "data/node{id}".to_string(),
        config: defaults(),
        lines: HashMap::new(),
        tls_paths: [None, None, None],
        client_auth: ClientAuth::Optional,
    };
    let at = |line: usize, msg: String| ConfigError {
        file: file.to_string(),
        line: Some(line),
        msg,
    };
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        if raw.len() > CONFIG_LINE_SIZE_MAX {
            let msg = format!(
                "line of {} bytes is longer than the limit of {CONFIG_LINE_SIZE_MAX}",
                raw.len()
            );
            return Err(at(line_no, msg));
        }
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            // `requirepass hunter2` must not reach a log.
            let secret = SECRET_KEYS.iter().any(|k| line.starts_with(k));
            let shown = if secret { "a password line" } else { line };
            return Err(at(
                line_no,
                format!("expected `key = value`, got `{shown}`"),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(&first) = settings.lines.get(key) {
            let what = if key.starts_with("node.") {
                "node id"
            } else {
                "key"
            };
            return Err(at(
                line_no,
                format!("duplicate {what} `{key}` (first set on line {first})"),
            ));
        }
        apply(&mut settings, key, value).map_err(|msg| at(line_no, msg))?;
        settings.lines.insert(key.to_string(), line_no);
    }
    check_settings(&mut settings).map_err(|(line, msg)| ConfigError {
        file: file.to_string(),
        line,
        msg,
    })?;
    Ok(settings)
}

/// `line` without a comment: `#` at its start or after whitespace.
fn strip_comment(line: &str) -> &str {
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

/// Set one key. Errors name what was expected.
fn apply(settings: &mut Settings, key: &str, value: &str) -> Result<(), String> {
    let c = &mut settings.config;
    match key {
        "data_dir" => {
            if value.is_empty() {
                return Err("`data_dir` expects a directory path".to_string());
            }
            settings.data_dir = value.to_string();
        }
        "cluster_name" => c.cluster_name = cluster_name(value)?,
        "initial_cluster_state" => {
            c.initial_cluster_state = match value {
                "new" => InitialClusterState::New,
                "existing" => InitialClusterState::Existing,
                _ => return Err(format!("`{key}` expects new or existing, got `{value}`")),
            }
        }
        "tick_ms" => c.tick_ms = number(key, value, 1, 1000)?,
        "election_timeout_ms" => c.election_timeout_ms = number(key, value, 1, 600_000)?,
        "heartbeat_interval_ms" => c.heartbeat_interval_ms = number(key, value, 1, 300_000)?,
        "leader_sync_wait_ms" => c.leader_sync_wait_ms = number(key, value, 0, 1000)?,
        "snapshot_entries" => c.snapshot_entries = number(key, value, 1, u64::MAX)?,
        "snapshot_bytes" => c.snapshot_bytes = number(key, value, MIB, u64::MAX)?,
        "snapshot_write_rate" => {
            c.snapshot_write_rate = number(key, value, 0, u64::MAX)?;
            if (1..MIB).contains(&c.snapshot_write_rate) {
                return Err(format!(
                    "`{key}` expects 0 (unpaced) or at least 1MiB (bytes per second), got `{value}`"
                ));
            }
        }
        "snapshot_keep_entries" => c.snapshot_keep_entries = number(key, value, 0, u64::MAX)?,
        "snapshot_chunk_bytes" => {
            c.snapshot_chunk_bytes = number(key, value, 4 * KIB, SNAPSHOT_CHUNK_SIZE_MAX as u64)?
        }
        "segment_bytes" => {
            let min = ENTRY_SIZE_MAX as u64 + MIB + 1;
            c.segment_bytes = number(key, value, min, SEGMENT_SIZE_MAX)?
        }
        "max_clients" => {
            c.max_clients = number(key, value, 1, CLIENT_CONNECTIONS_MAX as u64)? as usize
        }
        "forward_to_leader" => {
            c.forward_to_leader = match value {
                "true" => true,
                "false" => false,
                _ => return Err(format!("`{key}` expects true or false, got `{value}`")),
            }
        }
        "huge_pages" => {
            c.huge_pages = match value {
                "true" => true,
                "false" => false,
                _ => return Err(format!("`{key}` expects true or false, got `{value}`")),
            }
        }
        "seed" => c.seed = Some(number(key, value, 0, u64::MAX)?),
        "requirepass" | "adminpass" | "requirepass_file" | "adminpass_file" => {
            set_password(c, key, value)?
        }
        "tls_cert" | "tls_key" | "tls_ca" => {
            if value.is_empty() {
                return Err(format!("`{key}` expects a PEM file path"));
            }
            let slot = ["tls_cert", "tls_key", "tls_ca"]
                .iter()
                .position(|k| *k == key)
                .expect("one of the three");
            settings.tls_paths[slot] = Some(PathBuf::from(value));
        }
        "tls_client_auth" => {
            settings.client_auth = match value {
                "require" => ClientAuth::Require,
                "none" => ClientAuth::Optional,
                _ => return Err(format!("`{key}` expects require or none, got `{value}`")),
            }
        }
        _ => match key.strip_prefix("node.") {
            Some(id) => settings.members.push(member(id, value)?),
            None => {
                return Err(format!(
                    "unknown key `{key}` (expected one of: {})",
                    KEYS.join(", ")
                ))
            }
        },
    }
    Ok(())
}

/// `requirepass`, `adminpass`, or their `_file` forms. Errors name the key, never the value.
fn set_password(c: &mut Config, key: &str, value: &str) -> Result<(), String> {
    let (user, pass) = match key.strip_suffix("_file") {
        Some(user) => (user, read_password_file(key, value)?),
        None => (key, value.as_bytes().to_vec()),
    };
    if pass.is_empty() || pass.len() > PASSWORD_SIZE_MAX {
        return Err(format!(
            "`{key}` expects a password of 1 to {PASSWORD_SIZE_MAX} bytes (leave the key out \
             for none)"
        ));
    }
    let users = Arc::make_mut(&mut c.users);
    let slot = match user {
        "requirepass" => &mut users.requirepass,
        _ => &mut users.adminpass,
    };
    if slot.is_some() {
        return Err(format!(
            "`{user}` is set twice (`{user}` and `{user}_file`)"
        ));
    }
    *slot = Some(Secret::new(pass));
    Ok(())
}

/// The password in the file `path` (one line; one final newline is dropped), checked against
/// `PASSWORD_SIZE_MAX` before it is read.
fn read_password_file(key: &str, path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("`{key}`: cannot read `{path}`: {e}");
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut bytes = Vec::new();
    // One byte past the limit (and a newline) tells an overlong file from a full one.
    file.take(PASSWORD_SIZE_MAX as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.contains(&b'\n') {
        return Err(format!("`{key}`: `{path}` holds more than one line"));
    }
    Ok(bytes)
}

fn cluster_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= CLUSTER_NAME_SIZE_MAX
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(format!(
            "`cluster_name` expects 1 to {CLUSTER_NAME_SIZE_MAX} letters, digits, `.`, `_` or `-`, got `{value}`"
        ));
    }
    Ok(value.to_string())
}

/// Whether a key's value is a size (bytes, or bytes per second): it may carry a unit.
fn takes_units(key: &str) -> bool {
    key.ends_with("_bytes") || key == "snapshot_write_rate"
}

/// A number in `[min, max]`, with `_` separators and, for sizes (`takes_units`), a KiB/MiB/GiB
/// suffix.
fn number(key: &str, value: &str, min: u64, max: u64) -> Result<u64, String> {
    let expected = || {
        let suffix = if takes_units(key) {
            " (a KiB, MiB or GiB suffix is allowed)"
        } else {
            ""
        };
        format!("`{key}` expects a whole number from {min} to {max}{suffix}, got `{value}`")
    };
    let (digits, unit) = match takes_units(key) {
        true => split_unit(value),
        false => (value, 1),
    };
    let digits: String = digits.trim_end().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(expected)?;
    if n < min || n > max {
        return Err(expected());
    }
    Ok(n)
}

fn split_unit(value: &str) -> (&str, u64) {
    for (suffix, unit) in [("KiB", KIB), ("MiB", MIB), ("GiB", GIB)] {
        if let Some(digits) = value.strip_suffix(suffix) {
            return (digits, unit);
        }
    }
    (value, 1)
}

/// A `node.<id> = peer=<host:port> client=<host:port> [metrics=<host:port>]` line.
fn member(id: &str, value: &str) -> Result<Member, String> {
    const EXPECTED: &str = "expected peer=<host:port> client=<host:port> [metrics=<host:port>]";
    let id = match id.parse::<u64>() {
        Ok(n) if n >= 1 && id.bytes().all(|b| b.is_ascii_digit()) => NodeId(n),
        _ => {
            return Err(format!(
                "`node.{id}`: a node id must be a whole number from 1 to {}",
                u64::MAX
            ))
        }
    };
    let (mut peer, mut client, mut metrics) = (None, None, None);
    for field in value.split_whitespace() {
        let (name, addr) = field.split_once('=').unwrap_or((field, ""));
        let slot = match name {
            "peer" => &mut peer,
            "client" => &mut client,
            "metrics" => &mut metrics,
            _ => return Err(format!("`node.{id}`: unknown field `{field}` ({EXPECTED})")),
        };
        if slot.is_some() {
            return Err(format!("`node.{id}`: `{name}=` given twice"));
        }
        *slot = Some(address(id, name, addr)?);
    }
    match (peer, client) {
        (Some(peer), Some(client)) => Ok(Member {
            id,
            peer,
            client,
            metrics,
        }),
        (None, _) => Err(format!(
            "`node.{id}`: missing peer=<host:port> ({EXPECTED})"
        )),
        (_, None) => Err(format!(
            "`node.{id}`: missing client=<host:port> ({EXPECTED})"
        )),
    }
}

/// Resolve `host:port`, taking the first address.
fn address(id: NodeId, name: &str, addr: &str) -> Result<SocketAddr, String> {
    let bad =
        |why: String| format!("`node.{id}`: {name}=`{addr}` is not a usable host:port: {why}");
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    // Reject what is not host:port before asking the resolver.
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("expected host:port".to_string()));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad(
            "expected host:port with a port from 0 to 65535".to_string()
        ));
    }
    match addr.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| bad("the name has no address".to_string())),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Checks across lines: members, and the relations between timings. The error carries the
/// line to blame, if one is.
fn check_settings(settings: &mut Settings) -> Result<(), (Option<usize>, String)> {
    let line_of = |key: &str| settings.lines.get(key).copied();
    if settings.members.is_empty() {
        return Err((
            None,
            "no members: expected at least one `node.<id> = peer=<host:port> client=<host:port>` line"
                .to_string(),
        ));
    }
    if settings.members.len() > MEMBERS_MAX {
        let msg = format!(
            "{} members is more than the limit of {MEMBERS_MAX}",
            settings.members.len()
        );
        return Err((None, msg));
    }
    settings.members.sort_by_key(|m| m.id);
    let mut used: HashMap<SocketAddr, NodeId> = HashMap::new();
    for m in &settings.members {
        for addr in [Some(m.peer), Some(m.client), m.metrics]
            .into_iter()
            .flatten()
        {
            if let Some(other) = used.insert(addr, m.id) {
                let msg = format!(
                    "address {addr} is used twice (by node {other} and node {})",
                    m.id
                );
                return Err((line_of(&format!("node.{}", m.id)), msg));
            }
        }
    }
    let c = &settings.config;
    if c.heartbeat_interval_ms >= c.election_timeout_ms / 2 {
        let line = line_of("heartbeat_interval_ms").or(line_of("election_timeout_ms"));
        let msg = format!(
            "heartbeat_interval_ms ({}) must be less than half of election_timeout_ms ({})",
            c.heartbeat_interval_ms, c.election_timeout_ms
        );
        return Err((line, msg));
    }
    if c.heartbeat_interval_ms < c.tick_ms {
        let line = line_of("heartbeat_interval_ms").or(line_of("tick_ms"));
        let msg = format!(
            "heartbeat_interval_ms ({}) must be at least tick_ms ({})",
            c.heartbeat_interval_ms, c.tick_ms
        );
        return Err((line, msg));
    }
    check_tls(settings)
}

/// `tls_cert`, `tls_key` and `tls_ca` go together; `tls_client_auth = require` needs them. The files
/// themselves are read when the node starts (a missing or unreadable one is a start-up error).
fn check_tls(settings: &mut Settings) -> Result<(), (Option<usize>, String)> {
    const NAMES: [&str; 3] = ["tls_cert", "tls_key", "tls_ca"];
    let line_of = |key: &str| settings.lines.get(key).copied();
    let set: Vec<&str> = (0..3)
        .filter(|&i| settings.tls_paths[i].is_some())
        .map(|i| NAMES[i])
        .collect();
    if set.is_empty() {
        if settings.client_auth == ClientAuth::Require {
            return Err((
                line_of("tls_client_auth"),
                "`tls_client_auth = require` needs tls_cert, tls_key and tls_ca".to_string(),
            ));
        }
        return Ok(());
    }
    if set.len() < 3 {
        let missing: Vec<&str> = NAMES.iter().filter(|n| !set.contains(n)).copied().collect();
        return Err((
            line_of(set[0]),
            format!(
                "TLS needs tls_cert, tls_key and tls_ca together; missing: {}",
                missing.join(", ")
            ),
        ));
    }
    let [cert, key, ca] = std::mem::take(&mut settings.tls_paths);
    settings.config.tls = Some(TlsFiles {
        cert: cert.expect("set"),
        key: key.expect("set"),
        ca: ca.expect("set"),
        client_auth: settings.client_auth,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: &str = "\
node.1 = peer=127.0.0.1:7001 client=127.0.0.1:6001
node.2 = peer=127.0.0.1:7002 client=127.0.0.1:6002
node.3 = peer=127.0.0.1:7003 client=127.0.0.1:6003
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "t.conf", NodeId(2), None)
    }

    /// The error for `extra` appended to three valid member lines.
    fn error(extra: &str) -> ConfigError {
        match parse(&format!("{MEMBERS}{extra}")) {
            Err(e) => e,
            Ok(c) => panic!("{extra:?} was accepted: {c:?}"),
        }
    }

    fn assert_error(extra: &str, line: Option<usize>, contains: &str) {
        let e = error(extra);
        assert_eq!(e.line, line, "{e}");
        assert!(e.msg.contains(contains), "{e} lacks {contains:?}");
        assert_eq!(e.file, "t.conf");
    }

    #[test]
    fn passwords_come_from_the_file_or_a_password_file_and_are_never_echoed() {
        let c = parse(&format!(
            "{MEMBERS}requirepass = s3cret # a comment\nadminpass = r00t\n"
        ))
        .unwrap();
        assert!(c.users.requirepass.as_ref().unwrap().matches(b"s3cret"));
        assert!(c.users.adminpass.as_ref().unwrap().matches(b"r00t"));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug shows a password"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = parse(&format!("{MEMBERS}adminpass_file = {}\n", file.display())).unwrap();
        assert!(c.users.adminpass.as_ref().unwrap().matches(b"from-file"));
        assert!(c.users.requirepass.is_none());
        // Errors name the key, never the value.
        for (extra, contains) in [
            ("requirepass hunter2\n", "a password line"),
            (
                "requirepass =\n",
                "`requirepass` expects a password of 1 to",
            ),
            (
                "adminpass_file = /nonexistent/pw\n",
                "`adminpass_file`: cannot read",
            ),
        ] {
            let e = error(extra);
            assert!(e.msg.contains(contains), "{e}");
            assert!(!e.msg.contains("hunter2"), "{e}");
        }
        let long = "x".repeat(PASSWORD_SIZE_MAX + 1);
        let e = error(&format!("requirepass = {long}\n"));
        assert!(
            !e.msg.contains(&long) && e.msg.contains("1 to 1024 bytes"),
            "{e}"
        );
        std::fs::write(&file, format!("{long}\n")).unwrap();
        let e = error(&format!("requirepass_file = {}\n", file.display()));
        assert!(
            !e.msg.contains(&long) && e.msg.contains("1 to 1024 bytes"),
            "{e}"
        );
        std::fs::write(&file, "two\nlines\n").unwrap();
        let e = error(&format!("requirepass_file = {}\n", file.display()));
        assert!(e.msg.contains("more than one line"), "{e}");
        std::fs::write(&file, "pw\n").unwrap();
        let e = error(&format!(
            "requirepass = a\nrequirepass_file = {}\n",
            file.display()
        ));
        assert!(e.msg.contains("set twice"), "{e}");
    }

    #[test]
    fn a_file_with_only_members_gets_every_default() {
        let c = parse(MEMBERS).unwrap();
        let mut want = defaults();
        want.id = NodeId(2);
        want.members = c.members.clone();
        want.data_dir = PathBuf::from("data/node2");
        assert_eq!(c, want);
        assert_eq!(c.cluster_name, "kvraft");
        assert_eq!(
            (c.tick_ms, c.election_timeout_ms, c.heartbeat_interval_ms),
            (10, 500, 50)
        );
        assert_eq!((c.snapshot_entries, c.snapshot_bytes), (100_000, 256 * MIB));
        assert_eq!(c.snapshot_write_rate, 128 * MIB);
        assert_eq!(
            (c.snapshot_keep_entries, c.snapshot_chunk_bytes),
            (10_000, MIB)
        );
        assert_eq!(
            (c.segment_bytes, c.max_clients),
            (64 * MIB, CLIENT_CONNECTIONS_MAX)
        );
        assert!(c.forward_to_leader);
        assert!(c.huge_pages);
        assert_eq!(c.leader_sync_wait_ms, 5);
        assert_eq!(c.seed, None);
        assert_eq!(
            c.member(NodeId(3)).unwrap().client,
            "127.0.0.1:6003".parse().unwrap()
        );
        assert_eq!(c.member(NodeId(4)), None);
    }

    #[test]
    fn every_key_is_read_with_comments_units_and_separators() {
        let text = "\
# a comment

data_dir = /var/lib/kv/{id}/x   # trailing comment
cluster_name = prod-eu.1
initial_cluster_state = new
tick_ms = 5
election_timeout_ms = 1_000
heartbeat_interval_ms = 100
leader_sync_wait_ms = 0
snapshot_entries = 7
snapshot_bytes = 2MiB
snapshot_write_rate = 0
snapshot_keep_entries = 0
snapshot_chunk_bytes = 64KiB
segment_bytes = 1GiB
max_clients = 3
forward_to_leader = false
huge_pages = false
seed = 18446744073709551615
node.3 = peer=127.0.0.1:7003 client=127.0.0.1:6003
node.1 = peer=127.0.0.1:7001 client=127.0.0.1:6001 # one
node.2 = client=127.0.0.1:6002 peer=127.0.0.1:7002
";
        let c = parse(text).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/kv/2/x"));
        assert_eq!(c.cluster_name, "prod-eu.1");
        assert_eq!(c.initial_cluster_state, InitialClusterState::New);
        assert_eq!(
            (c.tick_ms, c.election_timeout_ms, c.heartbeat_interval_ms),
            (5, 1000, 100)
        );
        assert_eq!((c.snapshot_entries, c.snapshot_bytes), (7, 2 * MIB));
        assert_eq!(c.snapshot_write_rate, 0);
        assert_eq!(
            (c.snapshot_keep_entries, c.snapshot_chunk_bytes),
            (0, 64 * KIB)
        );
        assert_eq!((c.segment_bytes, c.max_clients), (GIB, 3));
        assert!(!c.forward_to_leader);
        assert!(!c.huge_pages);
        assert_eq!(c.leader_sync_wait_ms, 0);
        assert_eq!(c.seed, Some(u64::MAX));
        let ids: Vec<u64> = c.members.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![1, 2, 3], "members are sorted by id");
        assert_eq!(
            c.member(NodeId(2)).unwrap().peer,
            "127.0.0.1:7002".parse().unwrap()
        );
    }

    #[test]
    fn the_data_dir_override_wins_over_the_file() {
        let c = Config::parse(MEMBERS, "t.conf", NodeId(1), Some(Path::new("/tmp/d"))).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
    }

    #[test]
    fn host_names_are_resolved() {
        let text = "node.1 = peer=localhost:7001 client=localhost:6001\n";
        let c = Config::parse(text, "t.conf", NodeId(1), None).unwrap();
        assert_eq!(c.members[0].peer.port(), 7001);
        assert!(c.members[0].peer.ip().is_loopback());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_the_keys_expected() {
        let e = error("\n# x\nelecton_timeout_ms = 500\n");
        assert_eq!(e.line, Some(6));
        assert!(
            e.to_string().starts_with(
                "t.conf:6: unknown key `electon_timeout_ms` (expected one of: node.<id>, data_dir,"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_line_without_an_equals_sign_is_malformed() {
        assert_error("tick_ms 10\n", Some(4), "expected `key = value`");
    }

    #[test]
    fn a_duplicate_key_or_node_id_is_refused() {
        assert_error(
            "tick_ms = 10\ntick_ms = 20\n",
            Some(5),
            "duplicate key `tick_ms` (first set on line 4)",
        );
        assert_error(
            "node.2 = peer=127.0.0.1:7009 client=127.0.0.1:6009\n",
            Some(4),
            "duplicate node id `node.2`",
        );
    }

    #[test]
    fn node_ids_must_be_positive_numbers() {
        for bad in ["node.0", "node.x", "node.-1", "node.", "node.+1"] {
            assert_error(
                &format!("{bad} = peer=127.0.0.1:7009 client=127.0.0.1:6009\n"),
                Some(4),
                "a node id must be a whole number",
            );
        }
    }

    #[test]
    fn a_member_line_needs_both_addresses_and_nothing_else() {
        assert_error("node.4 = peer=127.0.0.1:7004\n", Some(4), "missing client=");
        assert_error("node.4 = client=127.0.0.1:6004\n", Some(4), "missing peer=");
        assert_error(
            "node.4 = peer=127.0.0.1:7004 client=127.0.0.1:6004 raft=1\n",
            Some(4),
            "unknown field `raft=1`",
        );
        assert_error(
            "node.4 = peer=127.0.0.1:7004 peer=127.0.0.1:7005 client=127.0.0.1:6004\n",
            Some(4),
            "given twice",
        );
    }

    #[test]
    fn an_unparsable_address_is_refused() {
        for bad in [
            "127.0.0.1",
            "127.0.0.1:99999",
            ":7004",
            "peer",
            "no such host:1",
        ] {
            assert_error(
                &format!("node.4 = peer={bad} client=127.0.0.1:6004\n"),
                Some(4),
                "is not a usable host:port",
            );
        }
    }

    #[test]
    fn a_metrics_address_is_optional_and_checked_like_the_others() {
        let text = "node.1 = peer=127.0.0.1:7001 client=127.0.0.1:6001 metrics=127.0.0.1:9001\n\
                    node.2 = peer=127.0.0.1:7002 client=127.0.0.1:6002\n";
        let cfg = Config::parse(text, "t.conf", NodeId(1), None).unwrap();
        assert_eq!(
            cfg.members[0].metrics,
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(cfg.members[1].metrics, None);
        for (line, want) in [
            ("metrics=", "metrics=`` is not a usable host:port"),
            ("metrics=9001", "metrics=`9001` is not a usable host:port"),
            ("metrics=127.0.0.1:70000", "is not a usable host:port"),
            (
                "metrics=127.0.0.1:9 metrics=127.0.0.1:8",
                "`metrics=` given twice",
            ),
            ("metrics=127.0.0.1:6001", "used twice"),
            ("metric=127.0.0.1:9", "unknown field `metric=127.0.0.1:9`"),
        ] {
            assert_error(
                &format!("node.4 = peer=127.0.0.1:7004 client=127.0.0.1:6004 {line}\n"),
                Some(4),
                want,
            );
        }
    }

    #[test]
    fn an_address_used_twice_is_refused() {
        assert_error(
            "node.4 = peer=127.0.0.1:7001 client=127.0.0.1:6004\n",
            Some(4),
            "used twice",
        );
    }

    #[test]
    fn numbers_out_of_range_or_not_numbers_are_refused() {
        let cases = [
            "tick_ms = 0",
            "tick_ms = 1001",
            "tick_ms = ten",
            "tick_ms = -1",
            "tick_ms = 1.5",
            "tick_ms =",
            "election_timeout_ms = 99999999999999999999999",
            "snapshot_entries = 0",
            "snapshot_bytes = 1KiB",
            "snapshot_chunk_bytes = 2MiB",
            "segment_bytes = 4MiB",
            "segment_bytes = 2GiB",
            "max_clients = 0",
            "max_clients = 10001",
            "seed = 18446744073709551616",
            "snapshot_entries = 10MiB",
            "snapshot_write_rate = fast",
        ];
        for case in cases {
            let e = error(&format!("{case}\n"));
            assert_eq!(e.line, Some(4), "{case}: {e}");
            assert!(e.msg.contains("expects a whole number from"), "{case}: {e}");
        }
        // A rate too slow to mean anything is refused by name, with the spellings it takes.
        assert_error(
            "snapshot_write_rate = 1KiB\n",
            Some(4),
            "0 (unpaced) or at least 1MiB",
        );
        assert_eq!(
            parse(&format!("snapshot_write_rate = 64MiB\n{MEMBERS}"))
                .unwrap()
                .snapshot_write_rate,
            64 * MIB
        );
        assert_error(
            "forward_to_leader = yes\n",
            Some(4),
            "expects true or false",
        );
        assert_error("cluster_name = a b\n", Some(4), "`cluster_name` expects");
        assert_error(
            "initial_cluster_state = old\n",
            Some(4),
            "`initial_cluster_state` expects new or existing, got `old`",
        );
        assert_error("data_dir =\n", Some(4), "expects a directory path");
    }

    #[test]
    fn a_heartbeat_not_below_half_the_election_timeout_is_refused() {
        assert_error(
            "election_timeout_ms = 100\nheartbeat_interval_ms = 50\n",
            Some(5),
            "must be less than half of election_timeout_ms (100)",
        );
        assert_error("election_timeout_ms = 100\n", Some(4), "less than half");
        assert_error("tick_ms = 60\n", Some(4), "at least tick_ms (60)");
    }

    #[test]
    fn an_id_that_is_not_a_member_is_refused_without_a_line() {
        let e = Config::parse(MEMBERS, "t.conf", NodeId(9), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.conf: node id 9 is not a member (expected one of: 1, 2, 3)"
        );
    }

    #[test]
    fn a_file_without_members_is_refused() {
        let e = Config::parse("# nothing\ntick_ms = 10\n", "t.conf", NodeId(1), None).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e.msg.starts_with("no members"), "{e}");
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused() {
        let long = format!("# {}\n", "x".repeat(CONFIG_LINE_SIZE_MAX));
        assert_error(&long, Some(4), "longer than the limit");
    }

    #[test]
    fn load_reads_a_file_and_load_members_needs_no_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.conf");
        std::fs::write(&path, MEMBERS).unwrap();
        let c = Config::load(&path, NodeId(3), None).unwrap();
        assert_eq!(c.id, NodeId(3));
        assert_eq!(load_members(&path).unwrap(), c.members);
        let e = load_members(&dir.path().join("missing.conf")).unwrap_err();
        assert!(e.msg.contains("cannot read"), "{e}");
    }

    #[test]
    fn the_example_conf_sets_every_key_to_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/example.conf");
        let c = Config::load(&path, NodeId(1), None).unwrap();
        let mut want = defaults();
        want.id = NodeId(1);
        want.members = c.members.clone();
        want.data_dir = PathBuf::from("data/node1");
        assert_eq!(c, want);
        // Every key with a default (the others are commented out there) appears in it.
        let text = std::fs::read_to_string(&path).unwrap();
        for key in KEYS
            .iter()
            .filter(|k| !k.starts_with("node.") && !KEYS_WITHOUT_DEFAULT.contains(k))
        {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing from example.conf"
            );
        }
    }

    #[test]
    fn tls_keys_go_together_and_client_auth_needs_them() {
        let with = |extra: &str| parse(&format!("{MEMBERS}{extra}")).unwrap();
        let c = with("tls_cert = a.pem\ntls_key = a.key\ntls_ca = ca.pem\n");
        let want = TlsFiles {
            cert: PathBuf::from("a.pem"),
            key: PathBuf::from("a.key"),
            ca: PathBuf::from("ca.pem"),
            client_auth: ClientAuth::Optional,
        };
        assert_eq!(c.tls, Some(want));
        let c = with("tls_cert = a\ntls_key = b\ntls_ca = c\ntls_client_auth = require\n");
        assert_eq!(c.tls.unwrap().client_auth, ClientAuth::Require);
        assert_eq!(with("").tls, None);
        let c = with("tls_cert = n{id}.pem\ntls_key = n{id}.key\ntls_ca = ca.pem\n");
        let tls = c.tls.unwrap();
        assert_eq!((tls.cert, tls.key), ("n2.pem".into(), "n2.key".into()));
        assert_error(
            "tls_cert = a.pem\ntls_ca = ca.pem\n",
            Some(4),
            "missing: tls_key",
        );
        assert_error("tls_client_auth = require\n", Some(4), "needs tls_cert");
        assert_error(
            "tls_client_auth = maybe\n",
            Some(4),
            "expects require or none",
        );
        assert_error("tls_key =\n", Some(4), "expects a PEM file path");
    }

    #[test]
    fn the_shipped_cluster_conf_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/cluster.conf");
        let members = load_members(&path).unwrap();
        assert_eq!(members.len(), 3);
    }
}
