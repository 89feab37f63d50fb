//! kvctl: the kvraft line client, over the RESP2 client port.
//!
//! Owns argument parsing, the mapping of kvctl's verbs to server commands, retries across the
//! cluster's endpoints, and output formatting. It blocks (one std TcpStream at a time); it
//! holds no protocol logic beyond RESP2.
//!
//! Invariants:
//! 1. Exit codes: 0 success; 1 `get` of a missing key; 2 any error (usage, connection, or an
//!    error reply), with the message on stderr.
//! 2. A request is retried only while the cluster has no leader (`-CLUSTERDOWN`, `-TRYAGAIN`),
//!    after a redirect, or after a connection failure, and never past the timeout. A
//!    non-idempotent command (`INCR`, ...) is not resent after its connection broke once it
//!    was written, since the server may have applied it.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kvraft::client::{encode_command, parse_value, split_args, Value};
use kvraft::config::load_members;

const USAGE: &str = "\
usage: kvctl [-e host:port[,host:port...]] [-c FILE] [-t SECONDS] [COMMAND ARGS...]

Commands:
  put KEY VALUE            store VALUE under KEY (SET); prints OK
  get KEY                  print KEY's value; a missing key prints nothing and exits 1
  del KEY...               delete keys; prints how many existed
  cas KEY OLD NEW          set KEY to NEW if it holds OLD; prints 1 if it did, else 0
  range FROM TO [LIMIT]    print `key<TAB>value` lines for FROM <= key < TO
  incr KEY                 add 1 to the integer at KEY; prints the result
  status                   one line per member: role, term, leader, commit, applied, last index
  ANYTHING ...             sent as a raw command (kvctl info raft, kvctl dbsize)
With no command, kvctl reads one command per line from stdin (words split on whitespace,
\"double quotes\" allowed) and prints one answer per line, over one connection.

Options:
  -e, --endpoints LIST     client addresses to try in turn (a bare port means 127.0.0.1:PORT)
  -c, --config FILE        take the endpoints from FILE's client= addresses
                           (default conf/cluster.conf, else 127.0.0.1:6001,6002,6003)
  -t, --timeout SECONDS    give up after this long (default 10); retries while no leader
  -h, --help               this text

Exit status: 0 success, 1 `get` of a missing key, 2 error.";

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// First and largest pause between retries while the cluster has no leader.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Largest reply read from a server, in bytes (the parser's own limits bound each piece).
const REPLY_BUFFER_MAX: usize = 256 * 1024 * 1024;

/// Parsed command line.
#[derive(Debug, PartialEq)]
struct Options {
    endpoints: Option<Vec<String>>,
    config: Option<PathBuf>,
    timeout: Duration,
    words: Vec<String>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Invocation {
    Help,
    Run(Options),
}

fn parse_options(argv: &[String]) -> Result<Invocation, String> {
    let mut opts = Options {
        endpoints: None,
        config: None,
        timeout: Duration::from_secs(10),
        words: Vec::new(),
    };
    let mut i = 0;
    while i < argv.len() {
        let arg = argv[i].as_str();
        let mut value = || {
            i += 1;
            argv.get(i)
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-e" | "--endpoints" => opts.endpoints = Some(parse_endpoints(&value()?)?),
            "-c" | "--config" => opts.config = Some(PathBuf::from(value()?)),
            "-t" | "--timeout" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|_| format!("bad timeout `{v}`"))?;
                if !(secs > 0.0 && secs <= 86_400.0) {
                    return Err(format!("timeout `{v}` must be from 0 to 86400 seconds"));
                }
                opts.timeout = Duration::from_secs_f64(secs);
            }
            "--" => {
                opts.words.extend(argv[i + 1..].iter().cloned());
                break;
            }
            _ if arg.starts_with('-') && opts.words.is_empty() && arg.len() > 1 => {
                return Err(format!("unknown option `{arg}`"))
            }
            _ => {
                opts.words.extend(argv[i..].iter().cloned());
                break;
            }
        }
        i += 1;
    }
    Ok(Invocation::Run(opts))
}

/// `host:port,host:port`; a bare port means 127.0.0.1.
fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part.parse::<u16>().is_ok() {
            out.push(format!("127.0.0.1:{part}"));
        } else if part
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            out.push(part.to_string());
        } else {
            return Err(format!("bad endpoint `{part}` (expected host:port)"));
        }
    }
    if out.is_empty() {
        return Err("no endpoints given".to_string());
    }
    Ok(out)
}

/// One endpoint of the cluster, with the member id when the config file names it.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    id: Option<u64>,
    addr: String,
}

fn endpoints(opts: &Options) -> Result<Vec<Endpoint>, String> {
    if let Some(list) = &opts.endpoints {
        return Ok(list
            .iter()
            .map(|a| Endpoint {
                id: None,
                addr: a.clone(),
            })
            .collect());
    }
    let path = opts
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("conf/cluster.conf"));
    if opts.config.is_none() && !Path::new(&path).exists() {
        return Ok(["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.1:6003"]
            .iter()
            .map(|a| Endpoint {
                id: None,
                addr: a.to_string(),
            })
            .collect());
    }
    let members = load_members(&path).map_err(|e| e.to_string())?;
    Ok(members
        .iter()
        .map(|m| Endpoint {
            id: Some(m.id.0),
            addr: m.client.to_string(),
        })
        .collect())
}

/// A kvctl verb turned into the command the server gets, and how to show its reply.
#[derive(Debug, PartialEq)]
struct Request {
    args: Vec<Vec<u8>>,
    shape: Shape,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `put`: +OK.
    Ok,
    /// `get`: the raw value; nil is "missing".
    Value,
    /// `del`, `cas`, `incr`: the integer.
    Integer,
    /// `range`: key/value pairs.
    Pairs,
    /// Anything else, shown as redis-cli does.
    Raw,
}

/// Map one command (words) to a request. `status` is handled before this.
fn build_request(words: &[Vec<u8>]) -> Result<Request, String> {
    let Some(verb) = words.first() else {
        return Err("empty command".to_string());
    };
    let verb_lc = String::from_utf8_lossy(verb).to_ascii_lowercase();
    let rest = &words[1..];
    let with = |name: &[u8], shape| {
        let mut args = vec![name.to_vec()];
        args.extend(rest.iter().cloned());
        Ok(Request { args, shape })
    };
    let arity = |ok: bool, usage: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("usage: kvctl {usage}"))
        }
    };
    match verb_lc.as_str() {
        "put" => arity(rest.len() == 2, "put KEY VALUE").and_then(|_| with(b"SET", Shape::Ok)),
        "get" => arity(rest.len() == 1, "get KEY").and_then(|_| with(b"GET", Shape::Value)),
        "del" => arity(!rest.is_empty(), "del KEY...").and_then(|_| with(b"DEL", Shape::Integer)),
        "cas" => {
            arity(rest.len() == 3, "cas KEY OLD NEW").and_then(|_| with(b"CAS", Shape::Integer))
        }
        "incr" => arity(rest.len() == 1, "incr KEY").and_then(|_| with(b"INCR", Shape::Integer)),
        "range" => {
            arity(rest.len() == 2 || rest.len() == 3, "range FROM TO [LIMIT]")?;
            let mut args = vec![b"RANGE".to_vec(), rest[0].clone(), rest[1].clone()];
            if let Some(limit) = rest.get(2) {
                if !limit.iter().all(u8::is_ascii_digit) || limit.is_empty() {
                    return Err("range: LIMIT must be a whole number".to_string());
                }
                args.push(b"LIMIT".to_vec());
                args.push(limit.clone());
            }
            Ok(Request {
                args,
                shape: Shape::Pairs,
            })
        }
        _ => Ok(Request {
            args: words.to_vec(),
            shape: Shape::Raw,
        }),
    }
}

/// What to print for a reply, and the exit code it implies.
#[derive(Debug, PartialEq)]
struct Answer {
    out: Vec<u8>,
    err: Vec<u8>,
    code: u8,
}

/// Format `reply` to `request`. `line_mode` (stdin) prints `(nil)` for a missing key so every
/// command has an answer line, and error replies on stdout so answers stay in step.
fn render(request: &Request, reply: &Value, line_mode: bool) -> Answer {
    let mut answer = Answer {
        out: Vec::new(),
        err: Vec::new(),
        code: 0,
    };
    if let Value::Error(msg) = reply {
        let text = format!("(error) {msg}\n");
        if line_mode {
            answer.out = text.into_bytes();
        } else {
            answer.err = text.into_bytes();
        }
        answer.code = 2;
        return answer;
    }
    match (request.shape, reply) {
        (Shape::Value, Value::Bulk(b)) => {
            answer.out.extend_from_slice(b);
            answer.out.push(b'\n');
        }
        (Shape::Value, Value::Nil) => {
            if line_mode {
                answer.out.extend_from_slice(b"(nil)\n");
            }
            answer.code = 1;
        }
        (Shape::Ok | Shape::Integer, Value::Simple(s)) => {
            answer.out = format!("{s}\n").into_bytes()
        }
        (Shape::Integer, Value::Integer(n)) => answer.out = format!("{n}\n").into_bytes(),
        (Shape::Pairs, Value::Array(items)) => match pairs(items) {
            Some(lines) => answer.out = lines,
            None => answer.out = format_value(reply, 0).into_bytes(),
        },
        (Shape::Raw, Value::Bulk(b)) if is_info(&request.args) => {
            // INFO's text is meant to be read as lines, as redis-cli prints it.
            let text = String::from_utf8_lossy(b).replace("\r\n", "\n");
            answer.out = text.into_bytes();
            if !answer.out.ends_with(b"\n") {
                answer.out.push(b'\n');
            }
        }
        _ => answer.out = format_value(reply, 0).into_bytes(),
    }
    answer
}

fn is_info(args: &[Vec<u8>]) -> bool {
    args.first()
        .is_some_and(|a| a.eq_ignore_ascii_case(b"info"))
}

/// `key<TAB>value` lines from a flat `[k, v, k, v]` array or an array of `[k, v]` pairs.
fn pairs(items: &[Value]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |k: &Value, v: &Value| match (k, v) {
        (Value::Bulk(k), Value::Bulk(v)) => {
            out.extend_from_slice(k);
            out.push(b'\t');
            out.extend_from_slice(v);
            out.push(b'\n');
            true
        }
        _ => false,
    };
    let nested = items
        .iter()
        .all(|i| matches!(i, Value::Array(p) if p.len() == 2));
    if nested && !items.is_empty() {
        for item in items {
            let Value::Array(p) = item else { return None };
            if !push(&p[0], &p[1]) {
                return None;
            }
        }
    } else {
        if !items.len().is_multiple_of(2) {
            return None;
        }
        for kv in items.chunks(2) {
            if !push(&kv[0], &kv[1]) {
                return None;
            }
        }
    }
    Some(out)
}

/// A reply as redis-cli shows it on a terminal: `(integer) 3`, `"quoted"`, numbered arrays.
fn format_value(value: &Value, indent: usize) -> String {
    match value {
        Value::Simple(s) => format!("{s}\n"),
        Value::Error(s) => format!("(error) {s}\n"),
        Value::Integer(n) => format!("(integer) {n}\n"),
        Value::Bulk(b) => format!("{}\n", quote(b)),
        Value::Nil | Value::NilArray => "(nil)\n".to_string(),
        Value::Array(items) if items.is_empty() => "(empty array)\n".to_string(),
        Value::Double(d) => format!("(double) {}\n", d.text()),
        Value::Boolean(b) => format!("({b})\n"),
        Value::BigNumber(n) => format!("(big number) {n}\n"),
        Value::Verbatim { text, .. } => format!("{}\n", quote(text)),
        // A kvctl connection speaks RESP2, which has no maps or sets; show them flat.
        Value::Set(items) => format_value(&Value::Array(items.clone()), indent),
        Value::Map(pairs) => {
            let flat = pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]);
            format_value(&Value::Array(flat.collect()), indent)
        }
        Value::Array(items) => {
            let width = items.len().to_string().len();
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&" ".repeat(indent));
                }
                let label = format!("{:>width$}) ", i + 1);
                out.push_str(&label);
                out.push_str(&format_value(item, indent + label.len()));
            }
            out
        }
    }
}

/// A byte string in double quotes with non-printable bytes escaped, as redis-cli does.
fn quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// Commands that must not be resent after the connection broke once they were written.
fn idempotent(args: &[Vec<u8>]) -> bool {
    let verb = args
        .first()
        .map(|v| v.to_ascii_uppercase())
        .unwrap_or_default();
    !matches!(
        verb.as_slice(),
        b"INCR" | b"INCRBY" | b"DECR" | b"DECRBY" | b"APPEND" | b"INCRBYFLOAT"
    )
}

/// A blocking connection to whichever endpoint answers, with retries.
struct Client {
    endpoints: Vec<Endpoint>,
    /// The endpoint tried next when the current connection fails.
    next: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

/// Why a call failed without a reply to show.
enum Failure {
    /// Retry elsewhere: the connection failed before the request could have been applied.
    Retry(String),
    /// Give up: the request may have been applied, or the server spoke nonsense.
    Fatal(String),
}

impl Client {
    fn new(endpoints: Vec<Endpoint>, timeout: Duration) -> Client {
        Client {
            endpoints,
            next: 0,
            stream: None,
            buf: Vec::new(),
            timeout,
        }
    }

    /// Send `args` and return the reply, retrying as the header's invariant 2 says.
    fn call(&mut self, args: &[Vec<u8>]) -> Result<Value, String> {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = BACKOFF_MIN;
        let mut last_problem = String::from("timed out");
        let mut redirected = false;
        loop {
            if Instant::now() >= deadline {
                return Err(last_problem);
            }
            if self.stream.is_none() {
                if let Err(e) = self.connect_any() {
                    last_problem = e;
                    pause(&mut backoff, deadline);
                    continue;
                }
            }
            let reply = match self.exchange(args, deadline) {
                Ok(reply) => reply,
                Err(Failure::Retry(e)) => {
                    last_problem = e;
                    pause(&mut backoff, deadline);
                    continue;
                }
                Err(Failure::Fatal(e)) => return Err(e),
            };
            let Value::Error(msg) = &reply else {
                return Ok(reply);
            };
            if msg.starts_with("CLUSTERDOWN") || msg.starts_with("TRYAGAIN") {
                last_problem = msg.clone();
                redirected = false;
                // This node may be cut off from the majority: ask the next one next time.
                self.stream = None;
                pause(&mut backoff, deadline);
                if Instant::now() >= deadline {
                    return Ok(reply);
                }
                continue;
            }
            if (msg.starts_with("REDIRECT ") || msg.starts_with("MOVED ")) && !redirected {
                let target = msg
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_string();
                redirected = true;
                if let Err(e) = self.connect_to(&target) {
                    last_problem = e;
                }
                continue;
            }
            return Ok(reply);
        }
    }

    /// Connect to the first endpoint that accepts, starting after the last one used.
    fn connect_any(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        for _ in 0..self.endpoints.len() {
            let addr = self.endpoints[self.next % self.endpoints.len()]
                .addr
                .clone();
            self.next = (self.next + 1) % self.endpoints.len();
            match self.connect_to(&addr) {
                Ok(()) => return Ok(()),
                Err(e) => problems.push(e),
            }
        }
        Err(problems.join("; "))
    }

    fn connect_to(&mut self, addr: &str) -> Result<(), String> {
        self.stream = None;
        self.buf.clear();
        let stream = connect(addr)?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Write the request and read one reply on the current connection.
    fn exchange(&mut self, args: &[Vec<u8>], deadline: Instant) -> Result<Value, Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Retry("not connected".to_string()));
        };
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let mut request = Vec::new();
        encode_command(&refs, &mut request);
        if let Err(e) = stream.write_all(&request) {
            self.stream = None;
            return Err(Failure::Retry(format!("write failed: {e}")));
        }
        match read_reply(stream, &mut self.buf, deadline) {
            Ok(value) => Ok(value),
            Err(e) => {
                self.stream = None;
                if idempotent(args) && !e.starts_with("protocol") {
                    Err(Failure::Retry(e))
                } else {
                    Err(Failure::Fatal(e))
                }
            }
        }
    }
}

fn pause(backoff: &mut Duration, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep((*backoff).min(left));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let stream =
        TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Read until `buf` holds one whole reply; leftover bytes stay in `buf`.
fn read_reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Value, String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match parse_value(buf) {
            Ok(Some((value, n))) => {
                buf.drain(..n);
                return Ok(value);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("protocol error in reply: {e}")),
        }
        if buf.len() > REPLY_BUFFER_MAX {
            return Err(format!(
                "protocol: reply larger than {REPLY_BUFFER_MAX} bytes"
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out waiting for a reply".to_string());
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err("connection closed by the server".to_string()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// `field:value` lines of an INFO reply (section headers and blank lines skipped).
fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

const STATUS_FIELDS: [&str; 6] = [
    "role",
    "term",
    "leader_id",
    "commit_index",
    "applied_index",
    "last_log_index",
];

/// The status table: one row per endpoint, from its INFO raft fields or `None` if unreachable.
fn status_table(rows: &[(Endpoint, Option<HashMap<String, String>>)]) -> String {
    let mut table = vec![[
        "ID", "ADDRESS", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST",
    ]
    .map(String::from)
    .to_vec()];
    for (endpoint, info) in rows {
        let id = match (endpoint.id, info.as_ref().and_then(|i| i.get("node_id"))) {
            (Some(id), _) => id.to_string(),
            (None, Some(id)) => id.clone(),
            (None, None) => "-".to_string(),
        };
        let mut row = vec![id, endpoint.addr.clone()];
        match info {
            Some(info) => row.extend(
                STATUS_FIELDS
                    .iter()
                    .map(|f| info.get(*f).cloned().unwrap_or_else(|| "?".to_string())),
            ),
            None => row.push("unreachable".to_string()),
        }
        table.push(row);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Ask every endpoint for `INFO raft` (one short attempt each) and print the table.
fn status(endpoints: &[Endpoint], timeout: Duration) -> u8 {
    let per_node = timeout.min(Duration::from_secs(2));
    let rows: Vec<_> = endpoints
        .iter()
        .map(|e| (e.clone(), info_raft(&e.addr, per_node)))
        .collect();
    print!("{}", status_table(&rows));
    let _ = io::stdout().flush();
    if rows.iter().any(|(_, info)| info.is_some()) {
        0
    } else {
        2
    }
}

fn info_raft(addr: &str, timeout: Duration) -> Option<HashMap<String, String>> {
    let mut stream = connect(addr).ok()?;
    let mut request = Vec::new();
    encode_command(&[b"INFO", b"raft"], &mut request);
    stream.write_all(&request).ok()?;
    let mut buf = Vec::new();
    match read_reply(&mut stream, &mut buf, Instant::now() + timeout).ok()? {
        Value::Bulk(text) => Some(parse_info(&String::from_utf8_lossy(&text))),
        _ => None,
    }
}

/// Run one command given as words. `Ok(exit code)` once it was answered (or refused before
/// sending); `Err(())` if no server answered in time (already reported on stderr).
fn run_words(client: &mut Client, words: &[Vec<u8>], line_mode: bool) -> Result<u8, ()> {
    let request = match build_request(words) {
        Ok(r) => r,
        Err(e) => {
            if line_mode {
                println!("(error) {e}");
            } else {
                eprintln!("kvctl: {e}");
            }
            return Ok(2);
        }
    };
    match client.call(&request.args) {
        Ok(reply) => {
            let answer = render(&request, &reply, line_mode);
            let _ = io::stdout().write_all(&answer.out);
            let _ = io::stdout().flush();
            let _ = io::stderr().write_all(&answer.err);
            Ok(answer.code)
        }
        Err(e) => {
            eprintln!("kvctl: {e}");
            Err(())
        }
    }
}

/// Line mode: one command per stdin line, one answer each. Error replies are answers and do
/// not stop it; no server answering does (exit 2). Exits 2 if any command failed, else 0.
fn run_lines(client: &mut Client, endpoints: &[Endpoint], timeout: Duration) -> u8 {
    let mut worst = 0;
    for line in io::stdin().lock().split(b'\n') {
        let Ok(line) = line else { return 2 };
        let Some(words) = split_args(&line) else {
            println!("(error) unbalanced quotes");
            worst = 2;
            continue;
        };
        if words.is_empty() {
            continue;
        }
        let code = if words.len() == 1 && words[0].eq_ignore_ascii_case(b"status") {
            status(endpoints, timeout)
        } else {
            match run_words(client, &words, true) {
                Ok(code) => code,
                Err(()) => return 2,
            }
        };
        // A missing key is an answer ("(nil)") in line mode, not a failure.
        if code == 2 {
            worst = 2;
        }
    }
    worst
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_options(&argv) {
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run(opts)) => opts,
        Err(e) => {
            eprintln!("kvctl: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let endpoints = match endpoints(&opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = Client::new(endpoints.clone(), opts.timeout);
    let code = match opts.words.first().map(String::as_str) {
        None => run_lines(&mut client, &endpoints, opts.timeout),
        Some("status") if opts.words.len() == 1 => status(&endpoints, opts.timeout),
        Some(_) => {
            let words: Vec<Vec<u8>> = opts.words.iter().map(|w| w.as_bytes().to_vec()).collect();
            run_words(&mut client, &words, false).unwrap_or(2)
        }
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Vec<u8>> {
        split_args(s.as_bytes()).unwrap()
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_come_before_the_command_and_the_rest_is_the_command() {
        let Ok(Invocation::Run(o)) = parse_options(&argv("-e 6001,h:7 -t 2.5 put k -v")) else {
            panic!()
        };
        assert_eq!(
            o.endpoints,
            Some(vec!["127.0.0.1:6001".into(), "h:7".into()])
        );
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.words, argv("put k -v"));
        assert_eq!(parse_options(&argv("--help")), Ok(Invocation::Help));
        assert!(parse_options(&argv("-x get k")).is_err());
        assert!(parse_options(&argv("-t 0 get k")).is_err());
        assert!(parse_options(&argv("-e")).is_err());
        assert!(parse_options(&argv("-e nohostport get k")).is_err());
    }

    #[test]
    fn verbs_map_to_server_commands_with_their_arity_checked() {
        let r = build_request(&words("put k \"v v\"")).unwrap();
        assert_eq!(r.args, words("SET k \"v v\""));
        assert_eq!(r.shape, Shape::Ok);
        assert_eq!(build_request(&words("GET k")).unwrap().args, words("GET k"));
        assert_eq!(
            build_request(&words("del a b")).unwrap().args,
            words("DEL a b")
        );
        assert_eq!(
            build_request(&words("cas k 1 2")).unwrap().args,
            words("CAS k 1 2")
        );
        assert_eq!(
            build_request(&words("range a z 10")).unwrap().args,
            words("RANGE a z LIMIT 10")
        );
        assert_eq!(
            build_request(&words("range a z")).unwrap().args,
            words("RANGE a z")
        );
        assert_eq!(
            build_request(&words("incr n")).unwrap().args,
            words("INCR n")
        );
        let raw = build_request(&words("info raft")).unwrap();
        assert_eq!((raw.args, raw.shape), (words("info raft"), Shape::Raw));
        for bad in [
            "put k",
            "get",
            "get a b",
            "del",
            "cas k 1",
            "range a",
            "range a z x",
            "incr",
        ] {
            assert!(build_request(&words(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_render_as_each_verb_promises() {
        let get = build_request(&words("get k")).unwrap();
        let a = render(&get, &Value::Bulk(b"v\x01".to_vec()), false);
        assert_eq!((a.out, a.code), (b"v\x01\n".to_vec(), 0));
        let a = render(&get, &Value::Nil, false);
        assert_eq!((a.out, a.code), (vec![], 1));
        assert_eq!(render(&get, &Value::Nil, true).out, b"(nil)\n");
        let a = render(&get, &Value::error("ERR bad"), false);
        assert_eq!((a.err, a.code), (b"(error) ERR bad\n".to_vec(), 2));
        let put = build_request(&words("put k v")).unwrap();
        assert_eq!(render(&put, &Value::ok(), false).out, b"OK\n");
        let del = build_request(&words("del k")).unwrap();
        assert_eq!(render(&del, &Value::Integer(2), false).out, b"2\n");
        let range = build_request(&words("range a z")).unwrap();
        let flat = Value::Array(vec![
            Value::Bulk(b"a".to_vec()),
            Value::Bulk(b"1".to_vec()),
            Value::Bulk(b"b".to_vec()),
            Value::Bulk(b"2".to_vec()),
        ]);
        assert_eq!(render(&range, &flat, false).out, b"a\t1\nb\t2\n");
        let nested = Value::Array(vec![Value::Array(vec![
            Value::Bulk(b"a".to_vec()),
            Value::Bulk(b"1".to_vec()),
        ])]);
        assert_eq!(render(&range, &nested, false).out, b"a\t1\n");
        assert_eq!(render(&range, &Value::Array(vec![]), false).out, b"");
        let info = build_request(&words("info raft")).unwrap();
        let text = Value::Bulk(b"# Raft\r\nrole:leader\r\n".to_vec());
        assert_eq!(render(&info, &text, false).out, b"# Raft\nrole:leader\n");
    }

    #[test]
    fn raw_replies_look_like_redis_cli() {
        let v = Value::Array(vec![
            Value::Integer(3),
            Value::Bulk(b"a\"b\n\x00".to_vec()),
            Value::Nil,
            Value::Array(vec![Value::ok(), Value::Array(vec![])]),
        ]);
        assert_eq!(
            format_value(&v, 0),
            "1) (integer) 3\n2) \"a\\\"b\\n\\x00\"\n3) (nil)\n4) 1) OK\n   2) (empty array)\n"
        );
        assert_eq!(format_value(&Value::error("ERR x"), 0), "(error) ERR x\n");
    }

    #[test]
    fn the_status_table_shows_each_member_or_unreachable() {
        let info = parse_info(
            "# Raft\r\nnode_id:1\r\nrole:leader\r\nterm:4\r\nleader_id:1\r\ncommit_index:10\r\n\
             applied_index:9\r\nlast_log_index:11\r\n",
        );
        assert_eq!(info["applied_index"], "9");
        let rows = vec![
            (
                Endpoint {
                    id: None,
                    addr: "127.0.0.1:6001".into(),
                },
                Some(info),
            ),
            (
                Endpoint {
                    id: Some(2),
                    addr: "127.0.0.1:6002".into(),
                },
                None,
            ),
        ];
        assert_eq!(
            status_table(&rows),
            "ID  ADDRESS         ROLE         TERM  LEADER  COMMIT  APPLIED  LAST\n\
             1   127.0.0.1:6001  leader       4     1       10      9        11\n\
             2   127.0.0.1:6002  unreachable\n"
        );
    }

    #[test]
    fn only_increments_are_never_resent() {
        assert!(!idempotent(&words("incr k")));
        assert!(idempotent(&words("SET k v")));
    }
}
