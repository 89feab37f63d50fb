//! kvctl's operator commands, which talk to particular members rather than to "the
//! cluster": `status`, `member list|add|remove|promote`, `transfer [ID]` and `snapshot save
//! FILE`. Each finds the leader through the members' `INFO raft` (`leader_client_addr`) and
//! retries while leadership moves, never past the timeout.
//!
//! Output: a table or a line by default, one JSON object with `--json`. Exit codes as
//! everywhere in kvctl: 0 done, 2 an error (on stderr).

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use kvraft::client::blocking::{ClientTls, Connection, Options};
use kvraft::client::Value;
use kvraft::node::snapshot::BackupWriter;
use kvraft::raft::{EntryId, LogIndex, Term};

use crate::args::Endpoint;
use crate::json::Json;
use crate::output::parse_info;
use crate::status::{align, status_json, status_table, Info};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest wait for one member's answer to `INFO raft`.
const INFO_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// Pause between two polls of a condition (a leader, a snapshot being written).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Where the command runs: the members, the whole budget, and the output form.
pub struct Ctx<'a> {
    pub endpoints: &'a [Endpoint],
    pub timeout: Duration,
    pub json: bool,
    /// `--tls` / `--cacert`: every connection speaks TLS.
    pub tls: Option<&'a ClientTls>,
    /// `AUTH`'s arguments (`[user] password`), sent first on every connection.
    pub auth: Option<&'a Vec<Vec<u8>>>,
}

impl Ctx<'_> {
    fn connect(&self, addr: &str, timeout: Duration) -> Result<Connection, String> {
        let opts = Options::new(CONNECT_TIMEOUT.min(timeout), timeout);
        let mut conn =
            Connection::open(addr, opts, self.tls).map_err(|e| format!("{addr}: {e}"))?;
        if let Some(auth) = self.auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(auth.iter().map(Vec::as_slice));
            match conn.call(&args) {
                Ok(Value::Error(e)) => return Err(format!("{addr}: AUTH: {e}")),
                Ok(_) => {}
                Err(e) => return Err(format!("{addr}: {e}")),
            }
        }
        Ok(conn)
    }
}

/// `INFO raft` of one member (one short attempt), parsed.
fn info_raft(ctx: &Ctx, addr: &str) -> Option<Info> {
    let mut conn = ctx.connect(addr, ctx.timeout.min(INFO_TIMEOUT_MAX)).ok()?;
    match conn.call(&[b"INFO", b"raft"]).ok()? {
        Value::Bulk(text) => Some(parse_info(&String::from_utf8_lossy(&text))),
        _ => None,
    }
}

/// `status`: every member's row. Exit 0 if any member answered, else 2.
pub fn status(ctx: &Ctx) -> u8 {
    let rows: Vec<_> = ctx
        .endpoints
        .iter()
        .map(|e| (e.clone(), info_raft(ctx, &e.addr)))
        .collect();
    let out = match ctx.json {
        true => status_json(&rows),
        false => status_table(&rows),
    };
    print!("{out}");
    let _ = io::stdout().flush();
    if rows.iter().any(|(_, info)| info.is_some()) {
        0
    } else {
        2
    }
}

/// The leader's client address and INFO, as the first member that knows it says.
fn find_leader(ctx: &Ctx) -> Option<(String, Info)> {
    for e in ctx.endpoints {
        let Some(info) = info_raft(ctx, &e.addr) else {
            continue;
        };
        if info.get("role").map(String::as_str) == Some("leader") {
            return Some((e.addr.clone(), info));
        }
        let Some(addr) = info.get("leader_client_addr").filter(|a| !a.is_empty()) else {
            continue;
        };
        if let Some(li) = info_raft(ctx, addr) {
            if li.get("role").map(String::as_str) == Some("leader") {
                return Some((addr.clone(), li));
            }
        }
    }
    None
}

/// Poll `f` until it gives an answer or the budget is spent.
fn poll<T>(ctx: &Ctx, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + ctx.timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("gave up after {:?}: {what}", ctx.timeout));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Send `args` to the leader, retrying while there is none or it moves. `Ok` with the
/// reply (an error reply other than "not the leader" is an answer too).
fn on_leader(ctx: &Ctx, args: &[&[u8]]) -> Result<(Value, String), String> {
    let name = String::from_utf8_lossy(args[0]).into_owned();
    let mut last_err = String::new();
    poll(ctx, &format!("no leader accepted {name}"), || {
        let (addr, _) = find_leader(ctx)?;
        let reply = ctx
            .connect(&addr, ctx.timeout)
            .and_then(|mut c| c.call(args).map_err(|e| e.to_string()))
            .map_err(|e| last_err = e)
            .ok()?;
        match &reply {
            Value::Error(e)
                if e.contains("not the leader")
                    || e.starts_with("CLUSTERDOWN")
                    || e.starts_with("TRYAGAIN") =>
            {
                last_err = e.clone();
                None
            }
            _ => Some((reply, addr.clone())),
        }
    })
    .map_err(|e| match last_err.is_empty() {
        true => e,
        false => format!("{e} (last: {last_err})"),
    })
}

/// Print `v` (an answer to an admin command): `OK`-like replies as text, errors to stderr.
fn answer(ctx: &Ctx, v: &Value, json: impl FnOnce() -> Json) -> u8 {
    match v {
        Value::Error(e) => {
            eprintln!("kvctl: {e}");
            2
        }
        _ if ctx.json => {
            println!("{}", json().render());
            0
        }
        Value::Simple(s) => {
            println!("{s}");
            0
        }
        Value::Integer(n) => {
            println!("{n}");
            0
        }
        other => {
            println!("{other:?}");
            0
        }
    }
}

/// `member list | add ID PEER CLIENT [learner] | remove ID | promote ID`.
pub fn member(ctx: &Ctx, words: &[String]) -> u8 {
    let sub = words
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let ok = match (sub.as_str(), words.len()) {
        ("list", 1) | ("remove", 2) | ("promote", 2) | ("add", 4) => true,
        ("add", 5) => words[4].eq_ignore_ascii_case("learner"),
        _ => false,
    };
    if !ok {
        eprintln!("kvctl: usage: member list | member add ID PEER CLIENT [learner] | member remove ID | member promote ID");
        return 2;
    }
    let mut args: Vec<&[u8]> = vec![b"MEMBER"];
    args.extend(words.iter().map(|w| w.as_bytes()));
    let (reply, _) = match on_leader(ctx, &args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return 2;
        }
    };
    if sub != "list" {
        return answer(ctx, &reply, || Json::Obj(vec![("ok", Json::Bool(true))]));
    }
    let Value::Array(items) = reply else {
        return answer(ctx, &reply, || Json::Null);
    };
    // Each item: "id peer client role".
    let rows: Vec<Vec<String>> = items
        .iter()
        .filter_map(|v| match v {
            Value::Bulk(b) => Some(
                String::from_utf8_lossy(b)
                    .split_whitespace()
                    .map(String::from)
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    if ctx.json {
        let members = rows
            .iter()
            .map(|r| {
                let cell = |i: usize| r.get(i).map_or(Json::Null, |c| Json::str(c.clone()));
                Json::Obj(vec![
                    ("id", Json::int_or_null(r.first())),
                    ("peer", cell(1)),
                    ("client", cell(2)),
                    ("role", cell(3)),
                ])
            })
            .collect();
        println!(
            "{}",
            Json::Obj(vec![("members", Json::Arr(members))]).render()
        );
    } else {
        let mut table = vec![["ID", "PEER", "CLIENT", "ROLE"].map(String::from).to_vec()];
        table.extend(rows);
        print!("{}", align(&table));
    }
    0
}

/// `transfer [ID]`: hand leadership to ID (default: the most up-to-date follower) and wait
/// until it leads.
pub fn transfer(ctx: &Ctx, words: &[String]) -> u8 {
    let target = match words {
        [] => None,
        [id] => match id.parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("kvctl: transfer: `{id}` is not a node id");
                return 2;
            }
        },
        _ => {
            eprintln!("kvctl: usage: transfer [ID]");
            return 2;
        }
    };
    let chosen = std::cell::Cell::new(target);
    let result = poll(ctx, "no leader to transfer from", || {
        let (addr, info) = find_leader(ctx)?;
        let to = match chosen.get() {
            Some(t) => t,
            None => {
                let best = most_up_to_date_follower(&info)?;
                chosen.set(Some(best));
                best
            }
        };
        if info.get("node_id").and_then(|n| n.parse::<u64>().ok()) == Some(to) {
            return Some(Ok(to));
        }
        let mut c = ctx.connect(&addr, ctx.timeout).ok()?;
        match c.call(&[b"TRANSFER", to.to_string().as_bytes()]).ok()? {
            Value::Error(e) if e.contains("not the leader") || e.starts_with("CLUSTERDOWN") => None,
            Value::Error(e) => Some(Err(e)),
            _ => Some(Ok(to)),
        }
    });
    let to = match result {
        Ok(Ok(to)) => to,
        Ok(Err(e)) | Err(e) => {
            eprintln!("kvctl: transfer: {e}");
            return 2;
        }
    };
    let led = poll(ctx, &format!("node {to} to lead"), || {
        let (_, info) = find_leader(ctx)?;
        (info.get("node_id")? == &to.to_string()).then_some(())
    });
    match led {
        Ok(()) if ctx.json => println!(
            "{}",
            Json::Obj(vec![("leader", Json::Int(to as i64))]).render()
        ),
        Ok(()) => println!("node {to} leads"),
        Err(e) => {
            eprintln!("kvctl: transfer: {e}");
            return 2;
        }
    }
    0
}

/// The voter follower with the least lag, from the leader's `peer_<id>` lines.
fn most_up_to_date_follower(leader: &Info) -> Option<u64> {
    let voters: Vec<u64> = leader
        .get("voters")?
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let me: u64 = leader.get("node_id")?.parse().ok()?;
    let lag = |id: u64| -> Option<u64> {
        let line = leader.get(&format!("peer_{id}"))?;
        line.split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "lag")?
            .1
            .parse()
            .ok()
    };
    voters
        .into_iter()
        .filter(|&v| v != me)
        .filter_map(|v| Some((lag(v)?, v)))
        .min()
        .map(|(_, v)| v)
}

/// `snapshot save FILE`: a snapshot from the leader covering every write it applied, read
/// in chunks into FILE (`BackupWriter`: FILE.tmp, checked, fsynced, renamed).
pub fn snapshot_save(ctx: &Ctx, words: &[String]) -> u8 {
    let [sub, file] = words else {
        eprintln!("kvctl: usage: snapshot save FILE");
        return 2;
    };
    if !sub.eq_ignore_ascii_case("save") {
        eprintln!("kvctl: usage: snapshot save FILE");
        return 2;
    }
    match save(ctx, Path::new(file)) {
        Ok((last, bytes, addr)) => {
            if ctx.json {
                let j = Json::Obj(vec![
                    ("file", Json::str(file.clone())),
                    ("term", Json::Int(last.term.0 as i64)),
                    ("index", Json::Int(last.index.0 as i64)),
                    ("bytes", Json::Int(bytes as i64)),
                    ("from", Json::str(addr)),
                ]);
                println!("{}", j.render());
            } else {
                println!(
                    "saved snapshot {} ({bytes} bytes) from {addr} to {file}",
                    last
                );
            }
            0
        }
        Err(e) => {
            eprintln!("kvctl: snapshot save: {e}");
            2
        }
    }
}

fn save(ctx: &Ctx, file: &Path) -> Result<(EntryId, u64, String), String> {
    let (reply, addr) = on_leader(ctx, &[b"SNAPSHOT", b"SAVE"])?;
    let want = match reply {
        Value::Integer(n) if n >= 0 => n as u64,
        Value::Error(e) => return Err(e),
        other => return Err(format!("unexpected reply to SNAPSHOT SAVE: {other:?}")),
    };
    // The node that answered SAVE holds (or is writing) the snapshot: read from it.
    let mut conn = ctx.connect(&addr, ctx.timeout)?;
    let want_s = want.to_string();
    let mut last_err = String::new();
    let opened = poll(
        ctx,
        &format!("the snapshot covering index {want}"),
        || match conn.call(&[b"SNAPSHOT", b"OPEN", want_s.as_bytes()]) {
            Ok(Value::Array(v)) => Some(Ok(v)),
            Ok(Value::Error(e)) if e.starts_with("TRYAGAIN") => {
                last_err = e;
                None
            }
            Ok(other) => Some(Err(format!("unexpected reply to SNAPSHOT OPEN: {other:?}"))),
            Err(e) => Some(Err(format!("{addr}: {e}"))),
        },
    )
    .map_err(|e| format!("{e} ({last_err})"))??;
    let int = |i: usize| match opened.get(i) {
        Some(Value::Integer(n)) if *n >= 0 => Ok(*n as u64),
        _ => Err(format!("unexpected reply to SNAPSHOT OPEN: {opened:?}")),
    };
    let last = EntryId {
        term: Term(int(0)?),
        index: LogIndex(int(1)?),
    };
    let size = int(2)?;
    let mut w =
        BackupWriter::create(file, last, size).map_err(|e| format!("{}: {e}", file.display()))?;
    let (t, i) = (last.term.0.to_string(), last.index.0.to_string());
    while w.written() < size {
        let off = w.written().to_string();
        let reply = conn
            .call(&[
                b"SNAPSHOT",
                b"READ",
                t.as_bytes(),
                i.as_bytes(),
                off.as_bytes(),
            ])
            .map_err(|e| format!("{addr}: {e}"))?;
        match reply {
            Value::Bulk(data) if !data.is_empty() => w.write(&data).map_err(|e| e.to_string())?,
            Value::Bulk(_) => return Err(format!("the snapshot ended at {off} of {size} bytes")),
            Value::Error(e) => return Err(e),
            other => return Err(format!("unexpected reply to SNAPSHOT READ: {other:?}")),
        }
    }
    w.finish().map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((last, size, addr))
}
