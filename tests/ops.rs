//! Issue 17, part A, on real `kvraftd` processes: systemd's notifications (a Unix datagram
//! socket standing in for systemd), and the metrics port (`metrics=` in the node lines):
//! `/metrics` read by a strict Prometheus text parser with counters moving as writes go by,
//! `/readyz` following the loss and return of a quorum, `/livez`, bad HTTP requests, and idle
//! HTTP connections that must not stall the client port.

mod harness;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{free_ports, put_retry, serial, wait_for, Cluster, Options};

const LONG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// A strict reader of the Prometheus text format (0.0.4).
// ---------------------------------------------------------------------------------------

/// A series' labels, sorted by name.
type Labels = Vec<(String, String)>;

/// One exposition: every series (name and sorted labels) and its value, and each family's type.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    series: BTreeMap<(String, Labels), f64>,
}

impl Exposition {
    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut l: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        l.sort();
        self.series.get(&(name.to_string(), l)).copied()
    }

    fn get(&self, name: &str) -> f64 {
        self.value(name, &[])
            .unwrap_or_else(|| panic!("no series {name}"))
    }

    /// Every label set `name` has.
    fn label_sets(&self, name: &str) -> Vec<Labels> {
        self.series
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|e| format!("value {s:?}: {e}")),
    }
}

/// `{k="v",...}` at the start of `s`: the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((Vec::new(), s));
    };
    let mut labels = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parse strictly: every line a `# HELP`, a `# TYPE` before the family's samples, or a
/// sample of the family last announced (histograms: `_bucket` with `le`, `_sum`, `_count`);
/// no series twice; histogram buckets cumulative, ending in `+Inf` equal to `_count`.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut family: Option<(String, String)> = None;
    let mut helped = HashSet::new();
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_name(name) || !helped.insert(name.to_string()) {
                return Err(err(format!("HELP for {name:?}")));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| err("TYPE".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(err(format!("type {kind}")));
            }
            if e.types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(err("a family announced twice".into()));
            }
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(err("a line that is neither comment nor sample".into()));
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(err)?;
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before the value".into()))?;
        let value = parse_value(value).map_err(err)?;
        let (fam, kind) = family
            .as_ref()
            .ok_or_else(|| err("a sample before any TYPE".into()))?;
        let belongs = match kind.as_str() {
            "histogram" => {
                let is_bucket = name == format!("{fam}_bucket");
                if is_bucket != labels.iter().any(|(k, _)| k == "le") {
                    return Err(err("le on a histogram sample other than _bucket".into()));
                }
                is_bucket || name == format!("{fam}_sum") || name == format!("{fam}_count")
            }
            _ => name == fam,
        };
        if !belongs || !valid_name(name) {
            return Err(err(format!("sample {name} outside its family {fam}")));
        }
        if (kind == "counter" || name.ends_with("_count")) && (value.is_nan() || value < 0.0) {
            return Err(err("a negative counter".into()));
        }
        let mut labels = labels;
        labels.sort();
        if e.series.insert((name.to_string(), labels), value).is_some() {
            return Err(err("a series twice".into()));
        }
    }
    check_histograms(&e)?;
    Ok(e)
}

fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (fam, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), v) in &e.series {
            if name != &format!("{fam}_bucket") {
                continue;
            }
            let le = labels.iter().find(|(k, _)| k == "le").unwrap();
            let le = parse_value(&le.1)?;
            let rest: Vec<_> = labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            by_series.entry(rest).or_default().push((le, *v));
        }
        for (labels, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            if buckets.windows(2).any(|w| w[0].1 > w[1].1) {
                return Err(format!("{fam}{labels:?}: buckets not cumulative"));
            }
            let last = buckets.last().unwrap();
            let count = e.series.get(&(format!("{fam}_count"), labels.clone()));
            if last.0 != f64::INFINITY || Some(&last.1) != count {
                return Err(format!(
                    "{fam}{labels:?}: +Inf bucket {last:?} vs count {count:?}"
                ));
            }
            if !e
                .series
                .contains_key(&(format!("{fam}_sum"), labels.clone()))
            {
                return Err(format!("{fam}{labels:?}: no _sum"));
            }
        }
    }
    Ok(())
}

#[test]
fn the_strict_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\\\"\"} 3\n";
    assert_eq!(
        parse_exposition(good)
            .unwrap()
            .value("a_total", &[("k", "v\"")]),
        Some(3.0)
    );
    for bad in [
        "a_total 3\n",                  // no TYPE
        "# TYPE a counter\nb 1\n",      // outside its family
        "# TYPE a counter\na 1\na 2\n", // twice
        "# TYPE a counter\na{k=v} 1\n", // unquoted
        "# TYPE a counter\na one\n",    // not a number
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 2\n",
        "# TYPE a counter\na 1", // no final newline
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A small blocking HTTP client.
// ---------------------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// Send `request` as is, read the answer to EOF.
fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no head in {text:?}"),
        )
    })?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: ops-test\r\n\r\n").as_bytes(),
    )
}

fn scrape(addr: SocketAddr) -> Exposition {
    let a = wait_for(LONG, "a /metrics answer", || {
        http_get(addr, "/metrics").ok()
    });
    assert_eq!(a.status, 200, "{}", a.headers);
    assert!(
        a.headers
            .contains("Content-Type: text/plain; version=0.0.4"),
        "{}",
        a.headers
    );
    parse_exposition(&a.body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}"))
}

/// Add `metrics=127.0.0.1:<port>` to each node line of the cluster's config; returns the
/// addresses by node id (1-based index 0).
fn with_metrics(opts: &mut Options, nodes: usize) -> Vec<SocketAddr> {
    let addrs: Vec<SocketAddr> = free_ports(nodes)
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let for_prepare = addrs.clone();
    opts.nodes = nodes;
    opts.prepare = Some(Box::new(move |dir: &Path| {
        let conf = dir.join("cluster.conf");
        let text = fs::read_to_string(&conf).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            if let Some(rest) = line.strip_prefix("node.") {
                let id: usize = rest.split(' ').next().unwrap().parse().unwrap();
                out.push_str(&format!(" metrics={}", for_prepare[id - 1]));
            }
            out.push('\n');
        }
        fs::write(&conf, out).unwrap();
    }));
    addrs
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

/// Wait for the next datagram on `sock` that `want` accepts, giving up at `deadline`.
fn recv_until(sock: &UnixDatagram, deadline: Instant, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg == want;
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    panic!("no {want:?} within the deadline; got {seen:?}");
}

#[test]
fn a_node_alone_tells_systemd_ready_without_a_leader_then_watchdog_then_stopping() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    // Node 1 of three, started alone and without --bootstrap: it never has a leader, and
    // systemd must hear READY=1 all the same.
    let conf = dir.path().join("cluster.conf");
    fs::write(
        &conf,
        format!(
            "data_dir = {}/node{{id}}\nnode.1 = peer={} client={} metrics={}\n\
             node.2 = peer=127.0.0.1:1 client=127.0.0.1:2\nnode.3 = peer=127.0.0.1:3 client=127.0.0.1:4\n",
            dir.path().display(),
            addr(0),
            addr(1),
            addr(2),
        ),
    )
    .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let log = fs::File::create(dir.path().join("node1.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvraftd"))
        .args(["--config", conf.to_str().unwrap(), "--id", "1"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000") // WATCHDOG=1 every 200 ms
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let got = recv_until(&sock, Instant::now() + LONG, "READY=1");
    assert_eq!(got, ["READY=1"], "READY=1 is the first notification");
    // The listeners were bound before READY=1.
    TcpStream::connect(addr(1)).expect("the client port accepts once READY=1 is sent");
    let metrics: SocketAddr = addr(2).parse().unwrap();
    let a = http_get(metrics, "/readyz").unwrap();
    assert_eq!(a.status, 503, "no leader: not ready");
    assert!(a.body.contains("no leader"), "{}", a.body);
    assert_eq!(http_get(metrics, "/livez").unwrap().status, 200);
    // The watchdog keeps coming from the loop while nothing else happens.
    for _ in 0..3 {
        let got = recv_until(&sock, Instant::now() + LONG, "WATCHDOG=1");
        assert!(got.iter().all(|m| m == "WATCHDOG=1"), "{got:?}");
    }
    unsafe_kill(child.id(), libc::SIGTERM);
    recv_until(&sock, Instant::now() + LONG, "STOPPING=1");
    let status = wait_for(LONG, "kvraftd to exit", || child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");

    // Without NOTIFY_SOCKET nothing is sent and nothing is said about it.
    let log_path = dir.path().join("node1-plain.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvraftd"))
        .args(["--config", conf.to_str().unwrap(), "--id", "1"])
        .env_remove("NOTIFY_SOCKET")
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(LONG, "the restarted node's client port", || {
        TcpStream::connect(addr(1)).ok()
    });
    unsafe_kill(child.id(), libc::SIGTERM);
    let status = wait_for(LONG, "kvraftd to exit", || child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let text = fs::read_to_string(&log_path).unwrap();
    assert!(
        !text.contains("systemd") && !text.contains("NOTIFY_SOCKET"),
        "a log line about systemd without NOTIFY_SOCKET:\n{text}"
    );
    let mut buf = [0u8; 64];
    sock.set_nonblocking(true).unwrap();
    assert!(
        sock.recv(&mut buf).is_err(),
        "a datagram without NOTIFY_SOCKET"
    );
}

fn unsafe_kill(pid: u32, sig: i32) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

// ---------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_parse_strictly_and_counters_move_as_writes_go_by() {
    let _g = serial();
    let mut opts = Options::default();
    let addrs = with_metrics(&mut opts, 3);
    let c = Cluster::start(opts);
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    put_retry(&c, follower, "warm", "up", LONG);
    let before_l = scrape(addrs[leader as usize - 1]);
    let before_f = scrape(addrs[follower as usize - 1]);
    for name in [
        "kvraft_server_has_leader",
        "kvraft_server_is_leader",
        "kvraft_server_leader_changes_seen_total",
        "kvraft_server_proposals_committed_total",
        "kvraft_server_proposals_applied_total",
        "kvraft_server_proposals_pending",
        "kvraft_server_proposals_failed_total",
        "kvraft_server_client_connections",
        "kvraft_log_entries",
        "kvraft_state_keys",
        "kvraft_snapshot_save_total",
        "kvraft_disk_wal_fsync_duration_seconds_count",
        "kvraft_server_apply_duration_seconds_count",
        "kvraft_snapshot_save_duration_seconds_count",
    ] {
        before_l.get(name);
    }
    assert_eq!(
        before_l.types["kvraft_disk_wal_fsync_duration_seconds"],
        "histogram"
    );
    assert_eq!(before_l.get("kvraft_server_is_leader"), 1.0);
    assert_eq!(before_f.get("kvraft_server_is_leader"), 0.0);
    assert_eq!(before_f.get("kvraft_server_has_leader"), 1.0);
    assert!(before_f.get("kvraft_server_leader_changes_seen_total") >= 1.0);

    const WRITES: u64 = 50;
    let mut cl = c.client(follower).unwrap();
    for i in 0..WRITES {
        let v = cl.call_str(&["SET", &format!("m{i}"), "v"]).unwrap();
        assert!(!v.is_error(), "{v:?}");
    }
    let mut misc = c.client(follower).unwrap();
    misc.call_str(&["NOSUCHCOMMAND"]).unwrap();
    misc.call_str(&["GET", "m1"]).unwrap();
    let after_l = scrape(addrs[leader as usize - 1]);
    let moved = |b: &Exposition, a: &Exposition, name: &str| a.get(name) - b.get(name);
    // The follower applies the writes after the leader answered them: poll for it.
    let after_f = wait_for(LONG, "the follower to apply the writes", || {
        let a = scrape(addrs[follower as usize - 1]);
        let applied = moved(&before_f, &a, "kvraft_server_proposals_applied_total");
        (applied >= WRITES as f64).then_some(a)
    });
    assert!(
        moved(
            &before_l,
            &after_l,
            "kvraft_server_proposals_committed_total"
        ) >= WRITES as f64
    );
    assert!(moved(&before_l, &after_l, "kvraft_server_proposals_applied_total") >= WRITES as f64);
    assert!(
        moved(
            &before_l,
            &after_l,
            "kvraft_server_apply_duration_seconds_count"
        ) >= WRITES as f64
    );
    // A follower syncs before it acknowledges; the leader syncs its own log within 20 ms of
    // the writes, not necessarily before it answers them (`node/stored.rs`, "The leader's own
    // sync"): poll for it.
    let fsyncs = "kvraft_disk_wal_fsync_duration_seconds_count";
    assert!(moved(&before_f, &after_f, fsyncs) >= 1.0);
    wait_for(LONG, "the leader to sync its own log", || {
        let a = scrape(addrs[leader as usize - 1]);
        (moved(&before_l, &a, fsyncs) >= 1.0).then_some(())
    });
    assert_eq!(
        moved(&before_l, &after_l, "kvraft_state_keys"),
        WRITES as f64
    );
    let set = |e: &Exposition| {
        e.value("kvraft_server_commands_total", &[("command", "set")])
            .unwrap()
    };
    let other = |e: &Exposition| {
        e.value("kvraft_server_commands_total", &[("command", "other")])
            .unwrap()
    };
    assert_eq!(
        set(&after_f) - set(&before_f),
        WRITES as f64,
        "SETs counted where clients sent them"
    );
    assert_eq!(
        other(&after_f) - other(&before_f),
        1.0,
        "an unknown command counts as other"
    );
    assert!(after_f.get("kvraft_server_client_connections") >= 2.0);
    // The leader measures a round trip to each follower.
    let peers = after_l.label_sets("kvraft_network_peer_round_trip_time_seconds_count");
    assert_eq!(peers.len(), 2, "{peers:?}");
    for labels in peers {
        let to: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let n = after_l
            .value("kvraft_network_peer_round_trip_time_seconds_count", &to)
            .unwrap();
        assert!(n >= 1.0, "{to:?}: {n} round trips");
    }
    // HEAD gives the head alone, with the length of the body GET gives.
    let head = http_raw(addrs[0], b"HEAD /metrics HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert!(
        head.headers.contains("Content-Length: "),
        "{}",
        head.headers
    );
}

// ---------------------------------------------------------------------------------------
// /readyz and /livez
// ---------------------------------------------------------------------------------------

fn status_of(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get(addr, path).ok().map(|a| (a.status, a.body))
}

#[test]
fn readyz_turns_503_when_quorum_is_lost_and_200_when_it_returns() {
    let _g = serial();
    let mut opts = Options::default();
    let addrs = with_metrics(&mut opts, 3);
    let mut c = Cluster::start(opts);
    let leader = c.wait_leader(LONG);
    put_retry(&c, leader, "k", "v", LONG);
    for (i, &a) in addrs.iter().enumerate() {
        wait_for(LONG, &format!("node {} ready", i + 1), || {
            (status_of(a, "/readyz")?.0 == 200).then_some(())
        });
    }
    // Stop both followers: the leader loses its quorum (check-quorum steps it down).
    let followers: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    for &f in &followers {
        c.kill(f);
    }
    let a = addrs[leader as usize - 1];
    let (_, why) = wait_for(LONG, "the survivor's /readyz to turn 503", || {
        status_of(a, "/readyz").filter(|(s, _)| *s == 503)
    });
    assert!(why.contains("not ready: no leader"), "{why}");
    assert_eq!(
        status_of(a, "/livez").map(|s| s.0),
        Some(200),
        "the loop still turns"
    );
    let m = scrape(a);
    assert_eq!(m.get("kvraft_server_has_leader"), 0.0);
    assert_eq!(m.get("kvraft_server_ready"), 0.0);
    for &f in &followers {
        c.spawn(f);
    }
    for (i, &a) in addrs.iter().enumerate() {
        wait_for(LONG, &format!("node {} ready again", i + 1), || {
            (status_of(a, "/readyz")?.0 == 200).then_some(())
        });
    }
    assert_eq!(scrape(a).get("kvraft_server_ready"), 1.0);
}

// ---------------------------------------------------------------------------------------
// Hostile HTTP clients
// ---------------------------------------------------------------------------------------

#[test]
fn bad_and_oversized_http_requests_get_4xx_and_do_no_harm() {
    let _g = serial();
    let mut opts = Options::default();
    let addrs = with_metrics(&mut opts, 1);
    let mut c = Cluster::start(opts);
    let a = addrs[0];
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
    huge.resize(64 * 1024, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"garbage\r\n\r\n".to_vec(), 400),
        (b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(), 400),
        (b"GET metrics HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"\x00\xff\x13\r\n\r\n".to_vec(), 400),
        (huge, 431),
        (many, 431),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            405,
        ),
        (b"GET /secret HTTP/1.1\r\n\r\n".to_vec(), 404),
    ];
    for (req, want) in cases {
        let shown = String::from_utf8_lossy(&req[..req.len().min(40)]).into_owned();
        let got = http_raw(a, &req).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(got.status, want, "{shown:?}: {}", got.headers);
        assert!(got.headers.contains("Connection: close"), "{}", got.headers);
    }
    // A head sent a byte at a time is still answered.
    let mut s = TcpStream::connect(a).unwrap();
    for b in b"GET /livez HTTP/1.1\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
    }
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("ok\n"),
        "{out:?}"
    );
    // A connection that sends nothing is closed at its deadline.
    let mut idle = TcpStream::connect(a).unwrap();
    idle.set_read_timeout(Some(LONG)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "an idle connection is closed"
    );
    assert_eq!(status_of(a, "/livez").map(|s| s.0), Some(200));
    assert!(harness::call(&c, 1, &["PING"]) == kvraft::client::Value::Simple("PONG".into()));
    assert!(c.exited(1).is_none() && c.panic_line(1).is_none());
}

#[test]
fn many_idle_and_slow_http_clients_do_not_stall_client_writes() {
    let _g = serial();
    let mut opts = Options::default();
    let addrs = with_metrics(&mut opts, 1);
    let mut c = Cluster::start(opts);
    let a = addrs[0];
    put_retry(&c, 1, "warm", "up", LONG);
    // More idle connections than the port serves, and some that send half a head.
    let mut idle = Vec::new();
    for i in 0..150 {
        let Ok(mut s) = TcpStream::connect(a) else {
            continue;
        };
        if i % 3 == 0 {
            let _ = s.write_all(b"GET /metr");
        }
        idle.push(s);
    }
    // Scrapes that never read their answer.
    for _ in 0..5 {
        if let Ok(mut s) = TcpStream::connect(a) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            idle.push(s);
        }
    }
    let mut cl = c.client(1).unwrap();
    for i in 0..200 {
        let v = cl.call_str(&["SET", &format!("w{i}"), "v"]).unwrap();
        assert_eq!(v, kvraft::client::Value::Simple("OK".into()));
    }
    // Past the limit the port answered 503 and closed; within it, the deadline closes them.
    let mut rejected = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 64];
        if matches!(s.read(&mut buf), Ok(n) if n > 0 && buf[..n].starts_with(b"HTTP/1.1 503")) {
            rejected += 1;
        }
    }
    assert!(rejected > 0, "no connection past the limit was refused");
    for s in &mut idle {
        s.set_read_timeout(Some(LONG)).unwrap();
        let mut sink = Vec::new();
        // EOF (or a reset) once the port closes it; a timeout means it never did.
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("an idle HTTP connection was not closed by its deadline: {e}"),
        }
    }
    wait_for(LONG, "the metrics port to answer again", || {
        (status_of(a, "/livez")?.0 == 200).then_some(())
    });
    assert!(c.exited(1).is_none() && c.panic_line(1).is_none());
}
