//! Operations on real processes (issue 17): SIGTERM on the leader hands leadership off
//! first (clients writing through a follower see a gap well under an election timeout, and
//! the process exits 0); a backup taken with `kvctl snapshot save`, refused when damaged,
//! restored with `kvraftd --restore` into a new cluster of three (every key, one state hash,
//! a new cluster id); `kvctl status --json`, `member list --json` and `transfer` parsed as
//! JSON by Python's `json` module.

mod harness;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{call, connect, get, put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(30);
/// The default `election_timeout_ms`.
const ELECTION_TIMEOUT: Duration = Duration::from_millis(500);

fn kvctl(conf: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["-c", conf.to_str().unwrap(), "-t", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvctl")
}

fn restore(conf: &Path, id: u64, backup: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvraftd"))
        .args(["--config", conf.to_str().unwrap(), "--id", &id.to_string()])
        .arg("--restore")
        .arg(backup)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kvraftd --restore")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run a Python expression over the JSON on `json` (bound to `d`) and return what it prints:
/// the JSON is parsed by a real JSON parser, not by us.
fn py(json: &str, expr: &str) -> String {
    let mut child = Command::new("python3")
        .args([
            "-c",
            &format!("import json,sys; d=json.load(sys.stdin); print({expr})"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests parse kvctl's JSON with it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 could not parse {json:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

/// Successful writes through one node, each with the time it was answered, from a thread
/// that writes one key after another, retrying at once on an error reply or a broken
/// connection.
struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(addr: std::net::SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acks.clone());
        let thread = std::thread::spawn(move || {
            let mut conn = None;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(addr) {
                        Ok(c) => conn.insert(c),
                        Err(_) => continue,
                    },
                };
                n += 1;
                let key = format!("w{n}");
                match c.call_str(&["SET", &key, "v"]) {
                    Ok(Value::Simple(ok)) if ok == "OK" => a.lock().unwrap().push(Instant::now()),
                    Ok(_) => {}
                    Err(_) => conn = None,
                }
            }
        });
        Writer {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// Stop; the longest time between two acknowledgements (or from `from` to the first)
    /// from `from` on.
    fn finish(mut self, from: Instant) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        let acks = self.acks.lock().unwrap();
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for &t in acks.iter().filter(|&&t| t > from) {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap
    }
}

#[test]
fn sigterm_on_the_leader_hands_off_so_writes_through_a_follower_pause_less_than_an_election_timeout(
) {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    put_retry(&c, follower, "warm", "1", LONG);
    let w = Writer::start(c.node(follower).client);
    wait_for(LONG, "writes through the follower", || {
        (w.count() >= 50).then_some(())
    });
    let before = w.count();
    let t0 = Instant::now();
    c.signal(leader, libc::SIGTERM);
    let status = wait_for(Duration::from_secs(10), "the old leader to exit", || {
        c.exited(leader)
    });
    let exited_after = t0.elapsed();
    // Writes go on after the old leader is gone, through the same follower.
    let at_exit = w.count();
    wait_for(LONG, "writes after the old leader exited", || {
        (w.count() >= at_exit + 50).then_some(())
    });
    let gap = w.finish(t0);
    eprintln!(
        "SIGTERM on leader {leader}: exited {status} after {exited_after:?}; longest write gap through node {follower}: {gap:?} ({} writes before, {} after the signal)",
        before,
        at_exit - before
    );
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        exited_after < Duration::from_secs(5),
        "exit took {exited_after:?}"
    );
    assert!(
        gap < ELECTION_TIMEOUT,
        "writes through node {follower} paused {gap:?} around the leader's stop (election timeout {ELECTION_TIMEOUT:?})"
    );
    let log = fs::read_to_string(c.log_path(leader)).unwrap();
    assert!(log.contains("handing leadership to node"), "{log}");
    let new_leader = c.wait_leader(LONG);
    assert_ne!(new_leader, leader);
    assert_eq!(
        get(&c, new_leader, "warm"),
        Some(Value::Bulk(b"1".to_vec()))
    );
}

#[test]
fn a_follower_stops_at_once_on_sigterm_and_exits_0() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    c.signal(follower, libc::SIGTERM);
    let status = wait_for(Duration::from_secs(5), "the follower to exit", || {
        c.exited(follower)
    });
    assert_eq!(status.code(), Some(0));
    assert_eq!(c.leader(), Some(leader), "the leader was not disturbed");
}

/// The keys every test cluster writes before its backup.
const KEYS: usize = 300;

#[test]
fn a_backup_restores_into_a_new_cluster_with_every_key_one_state_hash_and_a_new_cluster_id() {
    let _g = serial();
    let a = Cluster::start(Options::default());
    let leader = a.wait_leader(LONG);
    for i in 0..KEYS {
        put_retry(
            &a,
            1 + (i as u64 % 3),
            &format!("k{i}"),
            &format!("v{i}"),
            LONG,
        );
    }
    assert_eq!(call(&a, leader, &["INCR", "counter"]), Value::Integer(1));
    let old_cluster = a.info(leader).unwrap()["cluster_id"].clone();
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("kv.backup");
    let o = kvctl(
        &a.conf,
        &["snapshot", "save", backup.to_str().unwrap(), "--json"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let index: u64 = py(&out, "d['index']").parse().unwrap();
    let bytes: u64 = py(&out, "d['bytes']").parse().unwrap();
    assert!(index > KEYS as u64, "the backup covers every write: {out}");
    assert_eq!(fs::metadata(&backup).unwrap().len(), 48 + bytes);
    assert!(!dir.path().join("kv.backup.tmp").exists());
    // The backup commands refuse what makes no sense, naming it.
    let size = bytes.to_string();
    let (term, idx) = (py(&out, "d['term']"), index.to_string());
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let past = (bytes + 1).to_string();
    for (via, args, want) in [
        (follower, vec!["SNAPSHOT", "SAVE"], "not the leader"),
        (
            follower,
            vec!["SNAPSHOT", "READ", &term, &idx, "0"],
            "no backup open",
        ),
        (
            leader,
            vec!["SNAPSHOT", "READ", &term, &idx, &past],
            "past the snapshot",
        ),
        (leader, vec!["SNAPSHOT", "OPEN", "x"], "takes an index"),
        (leader, vec!["SNAPSHOT", "READ", "1", "2"], "usage"),
        (leader, vec!["SNAPSHOT", "BOGUS"], "usage"),
    ] {
        match call(&a, via, &args) {
            Value::Error(e) => assert!(e.contains(want), "{args:?}: {e}"),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    // The end of the file reads as empty.
    assert_eq!(
        call(&a, leader, &["SNAPSHOT", "READ", &term, &idx, &size]),
        Value::Bulk(Vec::new())
    );
    // Written after the backup: must not be in the restored cluster.
    put_retry(&a, leader, "later", "x", LONG);
    drop(a);

    let good = fs::read(&backup).unwrap();
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("b.conf");
    let data = |id: u64| conf_dir.path().join(format!("node{id}"));
    fs::write(
        &conf,
        format!(
            "data_dir = {}/node{{id}}\nnode.1 = peer=127.0.0.1:1 client=127.0.0.1:2\n",
            conf_dir.path().display()
        ),
    )
    .unwrap();
    let damaged = dir.path().join("damaged");
    let flipped = {
        let mut b = good.clone();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        b
    };
    for (bytes, why) in [
        (flipped, "checksum mismatch"),
        (good[..good.len() - 100].to_vec(), "truncated"),
    ] {
        fs::write(&damaged, &bytes).unwrap();
        let o = restore(&conf, 1, &damaged);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(why) && err.contains("nothing was restored"),
            "{err}"
        );
        assert!(!data(1).exists(), "a refused restore leaves nothing behind");
        assert_eq!(
            fs::read_dir(conf_dir.path()).unwrap().count(),
            1,
            "only b.conf"
        );
    }
    fs::create_dir(data(1)).unwrap();
    fs::write(data(1).join("precious"), "keep").unwrap();
    let o = restore(&conf, 1, &backup);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not empty"), "{}", text(&o.stderr));
    assert_eq!(
        fs::read_to_string(data(1).join("precious")).unwrap(),
        "keep"
    );

    // The new cluster: restored on every member before any starts; node 1 bootstraps.
    let backup2 = backup.clone();
    let b = Cluster::start(Options {
        prepare: Some(Box::new(move |dir: &Path| {
            for id in 1..=3 {
                let o = restore(&dir.join("cluster.conf"), id, &backup2);
                assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
                assert!(text(&o.stdout).contains("restored snapshot"));
            }
        })),
        ..Options::default()
    });
    let leader = b.wait_leader(LONG);
    // One write in the new cluster, then every member applies it.
    assert_eq!(call(&b, leader, &["INCR", "counter"]), Value::Integer(2));
    let applied: u64 = b.info(leader).unwrap()["applied_index"].parse().unwrap();
    b.wait_applied(&[1, 2, 3], applied, LONG);
    let infos: Vec<_> = (1..=3).map(|id| b.info(id).unwrap()).collect();
    for i in &infos {
        assert_eq!(i["state_hash"], infos[0]["state_hash"], "{infos:?}");
        assert_eq!(i["cluster_id"], infos[0]["cluster_id"]);
        assert_eq!(i["keys"], (KEYS + 1).to_string(), "{i:?}");
    }
    assert_ne!(infos[0]["cluster_id"], old_cluster, "a new cluster id");
    assert!(!infos[0]["cluster_id"].chars().all(|c| c == '0'));
    for id in 1..=3 {
        for k in [0, KEYS / 2, KEYS - 1] {
            let v = get(&b, id, &format!("k{k}"));
            assert_eq!(
                v,
                Some(Value::Bulk(format!("v{k}").into_bytes())),
                "node {id}"
            );
        }
        assert_eq!(get(&b, id, "later"), Some(Value::Nil));
    }
    // No member needed the whole snapshot sent: each holds the one it was restored with.
    for id in 1..=3 {
        let info = b.info(id).unwrap();
        assert_eq!(info["snapshots_installed"], "0", "node {id}: {info:?}");
    }
}

#[test]
fn kvctl_status_member_list_and_transfer_speak_json() {
    let _g = serial();
    let c = Cluster::start(Options::default());
    let leader = c.wait_leader(LONG);
    put_retry(&c, leader, "a", "1", LONG);
    // Every member healthy: each follower heard within an election timeout, none lagging.
    let status = wait_for(LONG, "every member healthy", || {
        let o = kvctl(&c.conf, &["status", "--json"]);
        let out = text(&o.stdout);
        (o.status.code() == Some(0)
            && py(&out, "all(m['health'] == 'healthy' for m in d['members'])") == "True")
            .then_some(out)
    });
    assert_eq!(py(&status, "len(d['members'])"), "3");
    assert_eq!(py(&status, "d['leader']"), leader.to_string());
    assert_eq!(
        py(
            &status,
            "sorted((m['id'], m['role']) for m in d['members'] if m['role'] == 'leader')"
        ),
        format!("[({leader}, 'leader')]")
    );
    assert_eq!(
        py(
            &status,
            "all(isinstance(m['lag'], int) and m['lag'] >= 0 for m in d['members'])"
        ),
        "True"
    );
    assert_eq!(
        py(
            &status,
            "all(isinstance(m['last_contact_ms'], int) for m in d['members'] if m['role'] != 'leader')"
        ),
        "True"
    );
    // The table says the same.
    let o = kvctl(&c.conf, &["status"]);
    let table = text(&o.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.matches("healthy").count(), 3, "{table}");

    let o = kvctl(&c.conf, &["--json", "member", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        py(
            &text(&o.stdout),
            "sorted((m['id'], m['role']) for m in d['members'])"
        ),
        "[(1, 'voter'), (2, 'voter'), (3, 'voter')]"
    );

    let target = (1..=3).find(|&i| i != leader).unwrap();
    let o = kvctl(&c.conf, &["transfer", &target.to_string(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(py(&text(&o.stdout), "d['leader']"), target.to_string());
    assert_eq!(c.wait_leader(LONG), target);
    // Without an id: the most up-to-date follower, whichever it is.
    let o = kvctl(&c.conf, &["transfer"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_ne!(c.wait_leader(LONG), target);
    // A bad id is refused by the leader, with exit 2.
    let o = kvctl(&c.conf, &["transfer", "9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!text(&o.stderr).is_empty());
}
