//! Cluster identity and self-repair on real processes: a member that lost its disk never
//! serves or elects past an acknowledged write and comes back as a voter with no operator
//! step; a voter added to a one-node cluster does not make it unwritable; a member replaced
//! at a new address survives a full restart; a data directory of another cluster, or a log
//! without its identity file, is refused with exit status 3.

mod harness;

use std::fs;
use std::time::{Duration, Instant};

use harness::{call, get, on_leader, put_retry, serial, wait_for, Cluster, Options};
use kvraft::client::Value;
use kvraft::wal::{ClusterId, Identity};

const LONG: Duration = Duration::from_secs(30);

fn bulk(s: &str) -> Option<Value> {
    Some(Value::Bulk(s.as_bytes().to_vec()))
}

/// Membership commands go to the leader; retry while leadership moves.
fn member(c: &Cluster, args: &[&str]) -> Value {
    on_leader(c, args, LONG)
}

/// Node `id` reports `voters` and is one of them, voting (not a learner, not waiting).
fn is_voting_voter(c: &Cluster, id: u64, voters: &str) -> bool {
    c.info(id).is_some_and(|i| {
        i.get("voters").map(String::as_str) == Some(voters)
            && i.get("voting").map(String::as_str) == Some("1")
    })
}

fn log_of(c: &Cluster, id: u64) -> String {
    fs::read_to_string(c.log_path(id)).unwrap_or_default()
}

/// The scenario. Node 3 is stopped; `SET X` is acknowledged by nodes 1 and 2; both are
/// killed and node 2's data directory is lost; nodes 2 and 3 start with their usual command.
/// Before identities, node 2 voted as its old self, node 3 won and `GET X` answered nil (and
/// node 1's X was later truncated away). Now node 2 is a new incarnation that does not vote:
/// nodes 2 and 3 stay unavailable (never nil) until node 1 returns; then X is on every node
/// and node 2 is a voter again, re-admitted by the leader with one log line.
#[test]
fn a_member_that_lost_its_disk_never_serves_a_stale_read_and_rejoins_as_a_voter_on_its_own() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    c.kill(3);
    put_retry(&c, 1, "X", "acknowledged", LONG);
    c.kill(1);
    c.kill(2);
    fs::remove_dir_all(c.data_dir(2)).unwrap();
    c.spawn(2);
    c.spawn(3);
    // Node 2 learns the cluster id from node 3 (it must talk to it to be of any use).
    wait_for(LONG, "node 2 to adopt the cluster id", || {
        log_of(&c, 2).contains("adopted cluster id").then_some(())
    });
    // Several election timeouts (500 ms default) during which nodes 2 and 3 are up together:
    // X or an error, never nil. (An observation window, not a stand-in for a condition.)
    let until = Instant::now() + Duration::from_secs(5);
    let mut answers = 0;
    while Instant::now() < until {
        for via in [2, 3] {
            if let Some(v) = get(&c, via, "X") {
                answers += 1;
                assert!(
                    v == bulk("acknowledged").unwrap() || v.is_error(),
                    "GET X via node {via} answered {v:?}: an acknowledged write is lost"
                );
            }
        }
    }
    assert!(answers > 0, "nodes 2 and 3 never answered");
    assert!(
        c.leader().is_none(),
        "nodes 2 and 3 elected a leader without node 1"
    );
    c.spawn(1);
    for via in 1..=3 {
        wait_for(LONG, &format!("X via node {via}"), || {
            (get(&c, via, "X") == bulk("acknowledged")).then_some(())
        });
    }
    wait_for(LONG, "node 2 to be a voting voter again", || {
        (1..=3)
            .all(|n| is_voting_voter(&c, n, "1,2,3"))
            .then_some(())
    });
    let leader = c.wait_leader(LONG);
    assert!(
        log_of(&c, leader).contains(
            "node 2 came back as a new incarnation (lost its storage): re-admitting it as a learner"
        ),
        "no re-admission line in node {leader}'s log"
    );
    put_retry(&c, 2, "after", "1", LONG);
}

/// A byte flipped in the middle of a stopped follower's synced log. Before: the node refused
/// to start (the WAL's `OnDamage::Refuse`). Now it keeps the intact prefix, rejoins as a new
/// incarnation, is re-admitted and caught up, and ends with the same data as the others.
#[test]
fn a_flipped_byte_in_a_stopped_followers_log_is_repaired_from_the_leader() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    for i in 0..300 {
        put_retry(&c, 1, &format!("k{i:04}"), &format!("needle-{i:04}"), LONG);
    }
    let leader = c.wait_leader(LONG);
    let victim = (1..=3).find(|&n| n != leader).unwrap();
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[victim], applied, LONG);
    c.kill(victim);
    // The record holding "needle-0100" lies in the middle of the log: flip one of its bytes.
    let mut flipped = false;
    for e in fs::read_dir(c.data_dir(victim).join("log")).unwrap() {
        let path = e.unwrap().path();
        let mut b = fs::read(&path).unwrap();
        if let Some(at) = b.windows(11).position(|w| w == b"needle-0100") {
            b[at + 3] ^= 0x20;
            fs::write(&path, b).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "no log record holds needle-0100");
    c.spawn(victim);
    wait_for(LONG, "the damaged node to rejoin as a voting voter", || {
        is_voting_voter(&c, victim, "1,2,3").then_some(())
    });
    put_retry(&c, leader, "after", "1", LONG);
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[1, 2, 3], applied, LONG);
    let hashes: Vec<String> = (1..=3)
        .map(|n| c.info(n).unwrap()["state_hash"].clone())
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert_eq!(get(&c, victim, "k0100"), bulk("needle-0100"));
    assert!(
        log_of(&c, victim).contains("log damage"),
        "{}",
        log_of(&c, victim)
    );
    let leader = c.wait_leader(LONG);
    assert!(log_of(&c, leader).contains(&format!("node {victim} came back as a new incarnation")));
}

/// Before: `MEMBER ADD` of a voter made a one-node cluster a two-voter one whose quorum needs
/// the absent node, so it stopped taking writes. Now the new member is a learner until it
/// connects and catches up, then promoted on its own.
#[test]
fn a_voter_added_to_a_one_node_cluster_keeps_it_writable_while_the_new_node_is_absent() {
    let _g = serial();
    let mut c = Cluster::start(Options {
        nodes: 1,
        ..Options::default()
    });
    put_retry(&c, 1, "a", "1", LONG);
    let new = c.add_joiner_unstarted();
    let (peer, client) = (c.node(new).peer.to_string(), c.node(new).client.to_string());
    member(&c, &["MEMBER", "ADD", &new.to_string(), &peer, &client]);
    // Writes go on with node 2 absent (each needs its own commit: no stale success).
    for i in 0..5 {
        let v = call(&c, 1, &["SET", &format!("k{i}"), "v"]);
        assert_eq!(v, Value::ok(), "write {i} with the new member absent");
    }
    assert_eq!(c.info(1).unwrap()["voters"], "1");
    c.spawn(new);
    wait_for(LONG, "node 2 to be promoted", || {
        (1..=2).all(|n| is_voting_voter(&c, n, "1,2")).then_some(())
    });
    put_retry(&c, 2, "b", "2", LONG);
    assert_eq!(get(&c, 2, "a"), bulk("1"));
}

/// A member removed and added back at new ports is reachable, also after every node
/// restarts: the address table comes from the membership entries in the log, not from the
/// config file (which still names the old ports on nodes 1 and 2).
#[test]
fn a_member_replaced_at_a_new_address_is_reachable_after_a_full_restart() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    put_retry(&c, 1, "before", "1", LONG);
    member(&c, &["MEMBER", "REMOVE", "3"]);
    c.kill(3);
    fs::remove_dir_all(c.data_dir(3)).unwrap();
    // Node 3 moves: a config of its own, with new ports.
    let ports = harness::free_ports(2);
    let peer: std::net::SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let client: std::net::SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let text = fs::read_to_string(&c.conf).unwrap();
    let old = format!(
        "node.3 = peer={} client={}",
        c.node(3).peer,
        c.node(3).client
    );
    let moved = text.replace(&old, &format!("node.3 = peer={peer} client={client}"));
    assert_ne!(moved, text);
    let conf3 = c.dir.path().join("moved3.conf");
    fs::write(&conf3, moved).unwrap();
    c.nodes[2].conf = conf3;
    c.nodes[2].peer = peer;
    c.nodes[2].client = client;
    member(
        &c,
        &["MEMBER", "ADD", "3", &peer.to_string(), &client.to_string()],
    );
    c.spawn(3);
    wait_for(LONG, "node 3 to be a voter at its new address", || {
        (1..=3)
            .all(|n| is_voting_voter(&c, n, "1,2,3"))
            .then_some(())
    });
    put_retry(&c, 3, "moved", "1", LONG);
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    put_retry(&c, 3, "after-restart", "1", LONG);
    for via in 1..=3 {
        wait_for(LONG, &format!("every key via node {via}"), || {
            (get(&c, via, "before") == bulk("1") && get(&c, via, "after-restart") == bulk("1"))
                .then_some(())
        });
    }
    wait_for(LONG, "all three voting after the restart", || {
        (1..=3)
            .all(|n| is_voting_voter(&c, n, "1,2,3"))
            .then_some(())
    });
}

/// A data directory whose log has no identity file (a copy of half a directory, or one of
/// an older kvraft) is refused with exit status 3, which the systemd unit does not restart
/// (`RestartPreventExitStatus=2 3`). A node whose identity names another cluster is refused
/// by its peers and, once a majority of the configured members named their own cluster to
/// it, stops with exit status 3 and a line naming both ids and what to do; the peers, each
/// refused by that one node only, keep serving.
#[test]
fn a_log_without_identity_or_of_another_cluster_exits_with_status_3() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    put_retry(&c, 1, "k", "v", LONG);
    c.kill(3);
    let identity = c.data_dir(3).join("identity");
    let saved = fs::read(&identity).unwrap();
    fs::remove_file(&identity).unwrap();
    c.spawn(3);
    let st = wait_for(LONG, "node 3 to exit", || c.exited(3));
    assert_eq!(st.code(), Some(3), "{st:?}");
    assert!(log_of(&c, 3).contains("identity"), "{}", log_of(&c, 3));
    fs::write(&identity, saved).unwrap();
    c.spawn(3);
    wait_for(LONG, "node 3 back as a voter", || {
        is_voting_voter(&c, 3, "1,2,3").then_some(())
    });
    // A fresh cluster's identity in node 2's directory: its Hello names another cluster id,
    // so its peers refuse it, and it them; nodes 1 and 3 are a majority of the three.
    let ours = Identity::load(&c.data_dir(1)).unwrap().cluster;
    c.kill(2);
    let other = Identity::new_incarnation(ClusterId::random().unwrap()).unwrap();
    other.store(&c.data_dir(2)).unwrap();
    c.spawn(2);
    let st = wait_for(LONG, "node 2 to exit", || c.exited(2));
    let log = log_of(&c, 2);
    assert_eq!(st.code(), Some(3), "{st:?}\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("belongs to cluster"))
        .unwrap_or_else(|| panic!("no line naming the clusters:\n{log}"));
    assert!(
        line.contains(&other.cluster.to_string())
            && line.contains(&ours.to_string())
            && line.contains("nodes 1, 3")
            && line.contains("move its data directory aside"),
        "{line}"
    );
    assert!(
        c.exited(1).is_none() && c.exited(3).is_none(),
        "a healthy member stopped"
    );
    put_retry(&c, 1, "k2", "v2", LONG);
    assert_eq!(get(&c, 3, "k2"), bulk("v2"));
}

/// The newest segment file of node `id`'s log (names sort by first index).
fn newest_segment(c: &Cluster, id: u64) -> std::path::PathBuf {
    let mut segs: Vec<_> = fs::read_dir(c.data_dir(id).join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Node `id`'s INFO field `key`.
fn info_field(c: &Cluster, id: u64, key: &str) -> Option<String> {
    c.info(id)?.get(key).cloned()
}

/// The scenario with a damaged tail instead of a lost disk. Node 3 is stopped; `SET X`
/// is acknowledged by nodes 1 and 2; both are killed and a byte of X's record flips in node
/// 2's newest segment (after it was synced and acknowledged). Recovery cannot tell that from a
/// batch torn by a power cut and cuts it. Before: node 2 voted as if it never had X, node 3
/// was elected and X was gone. Now node 2's tail is uncertain: it waits to hear from both
/// others before it votes, so nodes 2 and 3 elect nobody while node 1 is down; once node 1 is
/// back, node 1 is elected and X is on every node.
#[test]
fn a_flipped_byte_in_the_newest_acknowledged_batch_never_loses_the_write() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    put_retry(&c, 1, "before", "1", LONG);
    c.kill(3);
    put_retry(&c, 1, "X", "acknowledged-tail", LONG);
    let leader = c.wait_leader(LONG);
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[1, 2], applied, LONG);
    c.kill(1);
    c.kill(2);
    // X is the last entry written: its record is in node 2's newest batch, at the end of its
    // newest segment (nothing but zeros after it).
    let seg = newest_segment(&c, 2);
    let mut b = fs::read(&seg).unwrap();
    let at = b
        .windows(17)
        .rposition(|w| w == b"acknowledged-tail")
        .expect("X's record in node 2's newest segment");
    b[at + 4] ^= 0x01;
    fs::write(&seg, b).unwrap();
    c.spawn(2);
    c.spawn(3);
    wait_for(LONG, "node 2 to report an uncertain tail", || {
        (info_field(&c, 2, "log_uncertain").as_deref() == Some("1")).then_some(())
    });
    assert!(
        log_of(&c, 2).contains("log tail uncertain"),
        "{}",
        log_of(&c, 2)
    );
    // Several election timeouts (500 ms default) with nodes 2 and 3 up together: no leader,
    // and X is never answered nil. (An observation window, not a stand-in for a condition.)
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            c.leader().is_none(),
            "nodes 2 and 3 elected a leader without node 1"
        );
        for via in [2, 3] {
            if let Some(v) = get(&c, via, "X") {
                assert!(
                    v == bulk("acknowledged-tail").unwrap() || v.is_error(),
                    "GET X via node {via} answered {v:?}: an acknowledged write is lost"
                );
            }
        }
        assert_eq!(info_field(&c, 2, "log_uncertain").as_deref(), Some("1"));
    }
    c.spawn(1);
    c.wait_leader(LONG);
    for via in 1..=3 {
        wait_for(LONG, &format!("X via node {via}"), || {
            (get(&c, via, "X") == bulk("acknowledged-tail")).then_some(())
        });
    }
    wait_for(LONG, "node 2 to be certain of its log again", || {
        (info_field(&c, 2, "log_uncertain").as_deref() == Some("0")).then_some(())
    });
    assert!(log_of(&c, 2).contains("log tail certain again"));
    put_retry(&c, 2, "after", "1", LONG);
}

/// A whole-cluster SIGKILL, and every node's newest segment ends in torn bytes (garbage after
/// its last record, as a power cut leaves an unsynced write): every node starts with an
/// uncertain tail. They still learn each other's log positions (pre-vote probes), elect a
/// leader, clear the uncertainty and keep every write.
#[test]
fn a_whole_cluster_restarting_with_every_tail_torn_still_elects_a_leader() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    for i in 0..20 {
        put_retry(&c, 1, &format!("k{i}"), &format!("v{i}"), LONG);
    }
    let leader = c.wait_leader(LONG);
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[1, 2, 3], applied, LONG);
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        let seg = newest_segment(&c, id);
        let mut b = fs::read(&seg).unwrap();
        let end = b.iter().rposition(|&x| x != 0).expect("records") + 1;
        b[end..end + 100].fill(0x5A);
        fs::write(&seg, b).unwrap();
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    c.wait_leader(LONG);
    for id in 1..=3 {
        assert!(
            log_of(&c, id).contains("log tail uncertain"),
            "node {id} did not report its torn tail"
        );
        wait_for(LONG, &format!("node {id} to be certain again"), || {
            (info_field(&c, id, "log_uncertain").as_deref() == Some("0")).then_some(())
        });
    }
    put_retry(&c, 2, "after", "1", LONG);
    for i in 0..20 {
        assert_eq!(get(&c, 3, &format!("k{i}")), bulk(&format!("v{i}")));
    }
}

/// Forming is explicit: three nodes on empty storage, none started with `--bootstrap`, never
/// form a cluster by themselves and never vote (no identity names a cluster, nobody leads,
/// writes are refused) for many election timeouts. Once node 1 is started with `--bootstrap`
/// it forms one, and the others adopt its cluster id, each with an incarnation of its own.
#[test]
fn nodes_on_empty_storage_never_form_a_cluster_or_vote_until_one_is_told_to_form_it() {
    let _g = serial();
    let mut c = Cluster::start(Options::default());
    let first = Identity::load(&c.data_dir(1)).unwrap().cluster;
    for id in 1..=3 {
        c.kill(id);
        fs::remove_dir_all(c.data_dir(id)).unwrap();
        c.nodes[id as usize - 1].bootstrap = false;
    }
    // The harness appends to each node's log: only what follows counts.
    let logged: Vec<usize> = (1..=3).map(|id| log_of(&c, id).len()).collect();
    for id in 1..=3 {
        c.spawn(id);
    }
    // Six election timeouts (500 ms default) with all three up: an observation window for
    // something that must never happen, not a stand-in for a condition.
    let until = Instant::now() + Duration::from_secs(3);
    let mut answers = 0;
    while Instant::now() < until {
        for id in 1..=3 {
            if let Some(i) = c.info(id) {
                answers += 1;
                assert_eq!(i["voting"], "0", "node {id} votes on empty storage: {i:?}");
                assert_ne!(i["role"], "leader", "node {id} leads: {i:?}");
            }
        }
        assert_eq!(c.leader(), None, "a leader without --bootstrap");
    }
    assert!(answers > 0, "no node answered INFO");
    let write = c.client(1).ok().and_then(|mut cl| {
        cl.set_io_timeout(Duration::from_secs(2));
        cl.call_str(&["SET", "k", "v"]).ok()
    });
    assert_ne!(
        write,
        Some(Value::ok()),
        "a write acknowledged by no cluster"
    );
    for id in 1..=3 {
        let identity = Identity::load(&c.data_dir(id)).unwrap();
        assert_eq!(
            identity.cluster.0, 0,
            "node {id} formed cluster {}",
            identity.cluster
        );
        let log = log_of(&c, id);
        let log = &log[logged[id as usize - 1]..];
        assert!(log.contains("cluster id unknown"), "node {id}: {log}");
        assert!(!log.contains("formed a new cluster"), "node {id}: {log}");
    }
    // Node 1 is told to form the cluster: its own empty storage, --bootstrap, once.
    c.kill(1);
    fs::remove_dir_all(c.data_dir(1)).unwrap();
    c.nodes[0].bootstrap = true;
    c.spawn(1);
    c.wait_formed(LONG);
    put_retry(&c, 2, "k", "v", LONG);
    let ids: Vec<Identity> = (1..=3)
        .map(|id| Identity::load(&c.data_dir(id)).unwrap())
        .collect();
    let formed = ids[0].cluster;
    assert!(
        formed.0 != 0 && formed != first,
        "{formed} (first cluster {first})"
    );
    assert!(ids.iter().all(|i| i.cluster == formed), "{ids:?}");
    assert!(
        ids[0].incarnation != ids[1].incarnation
            && ids[1].incarnation != ids[2].incarnation
            && ids[0].incarnation != ids[2].incarnation,
        "{ids:?}"
    );
}

/// A configuration error exits with status 2 (a bad key, a bad flag), which the systemd unit
/// lists with 3 (identity errors) in `RestartPreventExitStatus`: neither is restarted in a
/// loop, while other failures are (`Restart=on-failure`).
#[test]
fn a_configuration_error_exits_with_status_2_which_the_unit_does_not_restart() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    fs::write(
        &conf,
        "node.1 = peer=127.0.0.1:1 client=127.0.0.1:2\nelecton_timeout_ms = 5\n",
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    for args in [
        vec!["--config", conf, "--id", "1"],
        vec!["--config", conf, "--id", "1", "--no-such-flag"],
        vec!["--id", "1"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvraftd"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/kvraftd@.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
    };
    let prevent: Vec<&str> = value("RestartPreventExitStatus")
        .split_whitespace()
        .collect();
    assert!(
        prevent.contains(&"2") && prevent.contains(&"3"),
        "{prevent:?}"
    );
    assert_eq!(value("Restart"), "on-failure");
}
