//! Real-process test support: a cluster of `kvraftd` processes on 127.0.0.1 with temporary
//! data directories, connections through the library's blocking client
//! (`kvraft::client::blocking`), and polling with deadlines (never sleeps standing in for
//! conditions).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvraft::client::blocking::Options as ClientOptions;
pub use kvraft::client::blocking::{ClientError, ClientTls, Connection};
use kvraft::client::Value;

/// Cluster tests run one at a time: two clusters electing on a 2-core machine would measure
/// each other's scheduling, not Raft.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long `Cluster::start` waits for node 1 to form the cluster and admit the others (the
/// machine is shared and loaded: generous, and only a bound).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(60);

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Free loopback ports (bound to port 0, then released for the daemon to take).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// How long a test client waits for a connection, and for one reply: generous, since the
/// machine is shared and a slow answer is not what these tests measure.
pub const CLIENT_OPTIONS: ClientOptions =
    ClientOptions::new(Duration::from_millis(500), Duration::from_secs(15));

/// A client connection to `addr` (the library's one blocking client).
pub fn connect(addr: SocketAddr) -> Result<Connection, ClientError> {
    Connection::connect(addr, CLIENT_OPTIONS)
}

/// `field:value` lines of an INFO reply.
pub fn parse_info(v: &Value) -> HashMap<String, String> {
    let Value::Bulk(b) = v else {
        return HashMap::new();
    };
    String::from_utf8_lossy(b)
        .lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub struct NodeProc {
    pub id: u64,
    /// The config file this node is started with, and whether it joins (`--join`).
    pub conf: PathBuf,
    pub join: bool,
    /// Pass `--bootstrap` at the next spawn (node 1's first start: it forms the cluster).
    pub bootstrap: bool,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub child: Option<Child>,
    pub stopped: bool,
}

/// A cluster of kvraftd processes sharing one config file in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub nodes: Vec<NodeProc>,
    /// Clients speak TLS with this (a cluster with `tls_cert` set).
    pub tls: Option<ClientTls>,
    /// `AUTH`'s arguments for the harness's own connections (`client`, `info`, ...): the
    /// admin's when the config sets `adminpass`, else the default user's for `requirepass`.
    pub auth: Option<Vec<String>>,
}

/// The credentials the harness uses with a config's `extra` lines (see `Cluster::auth`).
fn harness_auth(extra: &[String]) -> Option<Vec<String>> {
    let value = |key: &str| {
        extra.iter().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    match (value("adminpass"), value("requirepass")) {
        (Some(admin), _) => Some(vec!["admin".into(), admin]),
        (None, Some(default)) => Some(vec![default]),
        (None, None) => None,
    }
}

pub struct Options {
    pub nodes: usize,
    /// Extra config lines (tuning keys).
    pub extra: Vec<String>,
    /// Runs with the cluster's directory before any node starts (to prepare a data dir).
    pub prepare: Option<Prepare>,
    /// Clients (`Cluster::client`, `info`, ...) speak TLS with this.
    pub client_tls: Option<ClientTls>,
}

/// A step run on the cluster's directory before the nodes start.
pub type Prepare = Box<dyn Fn(&Path)>;

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            extra: Vec::new(),
            prepare: None,
            client_tls: None,
        }
    }
}

impl Cluster {
    pub fn start(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = free_ports(opts.nodes * 2);
        let mut conf = format!("data_dir = {}/node{{id}}\n", dir.path().display());
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let id = i as u64 + 1;
            let peer: SocketAddr = format!("127.0.0.1:{}", ports[2 * i]).parse().unwrap();
            let client: SocketAddr = format!("127.0.0.1:{}", ports[2 * i + 1]).parse().unwrap();
            conf.push_str(&format!("node.{id} = peer={peer} client={client}\n"));
            nodes.push(NodeProc {
                id,
                conf: dir.path().join("cluster.conf"),
                join: false,
                bootstrap: id == 1,
                peer,
                client,
                child: None,
                stopped: false,
            });
        }
        for line in &opts.extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.path().join("cluster.conf");
        fs::write(&conf_path, conf).expect("write config");
        if let Some(prepare) = &opts.prepare {
            prepare(dir.path());
        }
        let tls = opts.client_tls.clone();
        let mut c = Cluster {
            dir,
            conf: conf_path,
            nodes,
            tls,
            auth: harness_auth(&opts.extra),
        };
        for id in 1..=opts.nodes as u64 {
            c.spawn(id);
        }
        c.wait_formed(FORM_TIMEOUT);
        c
    }

    /// Node 1 formed the cluster (`--bootstrap`) and admitted the others one by one: wait
    /// until every node reports every configured member as a voter, so tests start from the
    /// cluster they describe.
    pub fn wait_formed(&self, timeout: Duration) {
        let all = (1..=self.nodes.len() as u64)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        wait_for(
            timeout,
            &format!("every node to report voters {all}"),
            || {
                self.nodes
                    .iter()
                    .filter(|n| !n.join)
                    .all(|n| {
                        self.info(n.id)
                            .is_some_and(|i| i.get("voters") == Some(&all))
                    })
                    .then_some(())
            },
        );
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn node(&self, id: u64) -> &NodeProc {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Start (or restart) node `id`.
    pub fn spawn(&mut self, id: u64) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .unwrap();
        let n = self.node(id);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvraftd"));
        cmd.arg("--config")
            .arg(&n.conf)
            .arg("--id")
            .arg(id.to_string());
        if n.join {
            cmd.arg("--join");
        }
        if n.bootstrap {
            cmd.arg("--bootstrap");
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("KVRAFT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn kvraftd");
        let n = self.node_mut(id);
        n.child = Some(child);
        n.stopped = false;
        // Only the first start forms the cluster: a node restarted on an empty data directory
        // must come back as a new incarnation of its member, never as a new cluster.
        n.bootstrap = false;
    }

    /// Start a new node outside the membership (`--join`), with a config of its own that lists
    /// the cluster and itself. Returns its id; `MEMBER ADD` brings it in.
    pub fn add_joiner(&mut self) -> u64 {
        let id = self.add_joiner_unstarted();
        self.spawn(id);
        id
    }

    /// Like `add_joiner`, without starting it (`spawn` does).
    pub fn add_joiner_unstarted(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let ports = free_ports(2);
        let peer: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
        let client: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
        let mut text = fs::read_to_string(&self.conf).unwrap();
        text.push_str(&format!("node.{id} = peer={peer} client={client}\n"));
        let conf = self.dir.path().join(format!("join{id}.conf"));
        fs::write(&conf, text).unwrap();
        self.nodes.push(NodeProc {
            id,
            conf,
            join: true,
            bootstrap: false,
            peer,
            client,
            child: None,
            stopped: false,
        });
        id
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&mut self, id: u64, sig: i32) {
        if let Some(child) = &self.node(id).child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(child.id().to_string())
                .status();
        }
        self.node_mut(id).stopped = sig == libc::SIGSTOP;
    }

    /// How node `id`'s process ended, if it has (a crash shows here even when the node's
    /// port was taken over by nothing).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        self.node_mut(id).child.as_mut()?.try_wait().ok()?
    }

    /// The first line of node `id`'s log that reports a panic, if any.
    pub fn panic_line(&self, id: u64) -> Option<String> {
        let log = fs::read_to_string(self.log_path(id)).ok()?;
        log.lines()
            .find(|l| l.contains("panicked"))
            .map(str::to_string)
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(|c| c.id())
    }

    /// A connection to node `id`, authenticated as `auth` says.
    pub fn client(&self, id: u64) -> Result<Connection, ClientError> {
        let mut c = Connection::open(self.node(id).client, CLIENT_OPTIONS, self.tls.as_ref())?;
        if let Some(auth) = &self.auth {
            let mut args = vec!["AUTH"];
            args.extend(auth.iter().map(String::as_str));
            let v = c.call_str(&args)?;
            assert!(!v.is_error(), "the harness's AUTH was refused: {v:?}");
        }
        Ok(c)
    }

    pub fn info(&self, id: u64) -> Option<HashMap<String, String>> {
        let mut c = self.client(id).ok()?;
        c.set_io_timeout(Duration::from_secs(2));
        let v = c.call_str(&["INFO"]).ok()?;
        Some(parse_info(&v))
    }

    /// The id of the node that reports itself leader, if exactly one live node does in the
    /// highest term reported.
    pub fn leader(&self) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for n in &self.nodes {
            if n.child.is_none() || n.stopped {
                continue;
            }
            let Some(info) = self.info(n.id) else {
                continue;
            };
            if info.get("role").map(String::as_str) == Some("leader") {
                let term: u64 = info.get("term")?.parse().ok()?;
                if best.is_none_or(|(t, _)| term > t) {
                    best = Some((term, n.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    pub fn wait_leader(&self, timeout: Duration) -> u64 {
        wait_for(timeout, "a leader", || self.leader())
    }

    /// Every live node applied at least `index`.
    pub fn wait_applied(&self, ids: &[u64], index: u64, timeout: Duration) {
        wait_for(
            timeout,
            &format!("nodes {ids:?} to apply index {index}"),
            || {
                ids.iter()
                    .all(|&id| {
                        self.info(id)
                            .and_then(|i| i.get("applied_index")?.parse::<u64>().ok())
                            .is_some_and(|a| a >= index)
                    })
                    .then_some(())
            },
        );
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            if let Ok(s) = fs::read_to_string(self.log_path(n.id)) {
                let tail: Vec<&str> = s.lines().rev().take(40).collect();
                eprintln!("--- node {} log (last 40 lines) ---", n.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if n.stopped {
                    let _ = Command::new("kill")
                        .arg("-CONT")
                        .arg(c.id().to_string())
                        .status();
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Write through any node, retrying while the cluster has no leader. Returns the reply.
pub fn put_retry(c: &Cluster, via: u64, key: &str, val: &str, timeout: Duration) -> Value {
    wait_for(timeout, &format!("SET {key} through node {via}"), || {
        let mut cl = c.client(via).ok()?;
        match cl.call_str(&["SET", key, val]) {
            Ok(Value::Simple(s)) if s == "OK" => Some(Value::Simple(s)),
            _ => None,
        }
    })
}

/// One command through node `via` (which must be reachable).
pub fn call(c: &Cluster, via: u64, args: &[&str]) -> Value {
    let mut cl = c.client(via).expect("node reachable");
    cl.call_str(args).expect("a reply")
}

/// An admin command (`MEMBER ...`, `TRANSFER`) sent to the leader, retried while leadership
/// moves, until the leader accepts it (answers anything but an error).
pub fn on_leader(c: &Cluster, args: &[&str], timeout: Duration) -> Value {
    wait_for(timeout, &format!("{args:?} to be accepted"), || {
        let leader = c.leader()?;
        let v = c.client(leader).ok()?.call_str(args).ok()?;
        (!v.is_error()).then_some(v)
    })
}

pub fn get(c: &Cluster, via: u64, key: &str) -> Option<Value> {
    let mut cl = c.client(via).ok()?;
    cl.call_str(&["GET", key]).ok()
}

pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let md = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if md.is_dir() {
                dir_size(&e.path())
            } else {
                md.len()
            };
        }
    }
    total
}
