//! kvctl: the kvraft line client, over the RESP2 client port.
//!
//! Layout: `args` (the command line and the endpoints), `request` (kvctl's verbs as server
//! commands), `output` (what is printed for each reply), and this file: start-up and the
//! two ways to run (one command from the arguments, or one per stdin line). The connection
//! and its retries across members are the library's `client::blocking::cluster::ClusterClient`.
//!
//! Invariants:
//! 1. Exit codes: 0 success; 1 `get` of a missing key; 2 any error (usage, connection, or an
//!    error reply), with the message on stderr.
//! 2. A password (`--password`, else `KVRAFT_PASSWORD`) is sent with `AUTH` on every
//!    connection, `status`'s included, and never printed.
//! 3. Retries are the `ClusterClient`'s, never past the timeout. Every write goes through one
//!    exactly-once session per process (opened on the first write), so a write is resent
//!    with its sequence number after `-TRYAGAIN`, `-UNKNOWN` or a broken connection, and the
//!    cluster applies it once (`kvctl incr` counts exactly once). Reads are retried while the
//!    cluster has no leader, after a redirect or a connection failure.

mod args;
mod output;
mod request;

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use kvraft::client::blocking::cluster::ClusterClient;
use kvraft::client::blocking::{ClientTls, Connection, Options};
use kvraft::client::{split_args, Value};

use args::{client_tls, endpoints, parse_options, Endpoint, Invocation, USAGE};
use output::{parse_info, render, status_table};
use request::build_request;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Longest wait for one member's answer to `status`.
const STATUS_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// `AUTH`'s arguments after its name: `[user] password`.
type Auth = Option<Vec<Vec<u8>>>;

/// How `status` connects to each member: TLS and credentials, as the cluster client does.
struct Connect {
    tls: Option<ClientTls>,
    auth: Auth,
}

/// The credentials: `--password`, else `KVRAFT_PASSWORD`; `--user` only with a password.
fn credentials(opts: &args::Options) -> Result<Auth, String> {
    let password = match &opts.password {
        Some(p) => {
            eprintln!(
                "kvctl: warning: a password given with --password is visible to other users \
                 (ps); set KVRAFT_PASSWORD instead"
            );
            Some(p.clone().into_bytes())
        }
        None => std::env::var_os("KVRAFT_PASSWORD").map(|p| p.into_encoded_bytes()),
    };
    match (password, &opts.user) {
        (None, Some(_)) => Err("--user needs a password (--password or KVRAFT_PASSWORD)".into()),
        (None, None) => Ok(None),
        (Some(p), user) => {
            let mut args: Vec<Vec<u8>> = user.iter().map(|u| u.clone().into_bytes()).collect();
            args.push(p);
            Ok(Some(args))
        }
    }
}

/// Ask every endpoint for `INFO raft` (one short attempt each) and print the table.
fn status(endpoints: &[Endpoint], timeout: Duration, conn: &Connect) -> u8 {
    let per_node = timeout.min(STATUS_TIMEOUT_MAX);
    let rows: Vec<_> = endpoints
        .iter()
        .map(|e| (e.clone(), info_raft(&e.addr, per_node, conn)))
        .collect();
    print!("{}", status_table(&rows));
    let _ = io::stdout().flush();
    if rows.iter().any(|(_, info)| info.is_some()) {
        0
    } else {
        2
    }
}

fn info_raft(addr: &str, timeout: Duration, how: &Connect) -> Option<HashMap<String, String>> {
    let options = Options::new(CONNECT_TIMEOUT.min(timeout), timeout);
    let mut conn = Connection::open(addr, options, how.tls.as_ref()).ok()?;
    if let Some(auth) = &how.auth {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(auth.iter().map(Vec::as_slice));
        if conn.call(&args).ok()?.is_error() {
            return None;
        }
    }
    match conn.call(&[b"INFO", b"raft"]).ok()? {
        Value::Bulk(text) => Some(parse_info(&String::from_utf8_lossy(&text))),
        _ => None,
    }
}

/// Run one command given as words. `Ok(exit code)` once it was answered (or refused before
/// sending); `Err(())` if no server answered in time (already reported on stderr).
fn run_words(client: &mut ClusterClient, words: &[Vec<u8>], line_mode: bool) -> Result<u8, ()> {
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
fn run_lines(
    client: &mut ClusterClient,
    endpoints: &[Endpoint],
    timeout: Duration,
    conn: &Connect,
) -> u8 {
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
            status(endpoints, timeout, conn)
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
    let auth = match credentials(&opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::from(2);
        }
    };
    let tls = match client_tls(&opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kvctl: {e}");
            return ExitCode::from(2);
        }
    };
    let addrs = endpoints.iter().map(|e| e.addr.clone()).collect();
    // The io timeout is the whole budget of one command, retries included.
    let mut client =
        ClusterClient::new(addrs, Options::new(CONNECT_TIMEOUT, opts.timeout)).with_sessions();
    if let Some(a) = &auth {
        let (user, pass) = match a.as_slice() {
            [user, pass] => (Some(user.clone()), pass.clone()),
            _ => (None, a[0].clone()),
        };
        client = client.with_auth(user, pass);
    }
    if let Some(tls) = &tls {
        client = client.with_tls(tls.clone());
    }
    let how = Connect { tls, auth };
    let code = match opts.words.first().map(String::as_str) {
        None => run_lines(&mut client, &endpoints, opts.timeout, &how),
        Some("status") if opts.words.len() == 1 => status(&endpoints, opts.timeout, &how),
        Some(_) => {
            let words: Vec<Vec<u8>> = opts.words.iter().map(|w| w.as_bytes().to_vec()).collect();
            run_words(&mut client, &words, false).unwrap_or(2)
        }
    };
    ExitCode::from(code)
}
