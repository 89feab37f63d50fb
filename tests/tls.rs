//! TLS on both ports (issue 18), on real `kvraftd` processes with certificates made here with
//! rcgen: the client port speaks TLS only (a plaintext client gets no reply and is closed),
//! `redis-cli --tls` and `kvctl --cacert` work, `tls_client_auth = require` demands a client
//! certificate, a member whose certificate another CA signed gets no data and no vote,
//! garbage and stalled handshakes on either port leave every node up, SIGHUP reloads the
//! certificate (a failed reload keeps the old one), and a missing file stops the start.
//! With passwords set too, `redis-cli --tls -a` and kvctl with `KVRAFT_PASSWORD` are served.

#[path = "support/certs.rs"]
mod certs;
mod harness;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use certs::Ca;
use harness::{serial, wait_for, ClientTls, Cluster, Connection, Options, CLIENT_OPTIONS};
use kvraft::client::Value;

const LONG: Duration = Duration::from_secs(60);

/// The config lines of a TLS cluster whose files `Pki::write` put in `dir`.
fn tls_lines(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("tls_cert = {d}/node{{id}}.pem"),
        format!("tls_key = {d}/node{{id}}.key"),
        format!("tls_ca = {d}/ca.pem"),
    ]
}

/// A TLS cluster, and the directory of its certificates (`ca.pem`, `node{id}.pem`/`.key`,
/// `client.pem`/`.key`). Fields drop in order: the nodes stop before their files go.
struct TlsCluster {
    c: Cluster,
    pki: tempfile::TempDir,
    ca: Ca,
}

impl TlsCluster {
    /// `n` nodes with TLS from one CA; `extra` config lines.
    fn start(n: usize, extra: &[&str]) -> TlsCluster {
        let pki = tempfile::tempdir().unwrap();
        let ca = Ca::new("kvraft test CA");
        ca.write(pki.path(), n as u64);
        ca.write_leaf(pki.path(), "client", 100);
        let mut lines = tls_lines(pki.path());
        lines.extend(extra.iter().map(|s| s.to_string()));
        let client_tls = match extra.contains(&"tls_client_auth = require") {
            true => client_tls_with_cert(pki.path()),
            false => ClientTls::load(&pki.path().join("ca.pem"), None).unwrap(),
        };
        let c = Cluster::start(Options {
            nodes: n,
            extra: lines,
            client_tls: Some(client_tls),
            ..Options::default()
        });
        TlsCluster { c, pki, ca }
    }

    fn dir(&self) -> &Path {
        self.pki.path()
    }
}

/// TLS clients that present `client.pem` (for `tls_client_auth = require`).
fn client_tls_with_cert(dir: &Path) -> ClientTls {
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    ClientTls::load(&dir.join("ca.pem"), Some((&cert, &key))).unwrap()
}

/// What a plaintext client gets from `addr` after sending PING: every byte until the server
/// closes (panics if it does not close within `LONG`).
fn plaintext_ping(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the plaintext connection: {e}"),
    }
    got
}

/// The certificate a TLS server at `addr` presents (DER), verified against `ca`.
fn served_certificate(addr: SocketAddr, ca: &ClientTls) -> Option<Vec<u8>> {
    let name = "127.0.0.1".try_into().unwrap();
    let mut session = rustls::ClientConnection::new(ca.config().clone(), name).ok()?;
    let mut sock = TcpStream::connect(addr).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while session.is_handshaking() {
        session.complete_io(&mut sock).ok()?;
    }
    Some(session.peer_certificates()?.first()?.to_vec())
}

fn redis_cli(dir: &Path, port: u16, extra: &[&str], args: &[&str]) -> String {
    let ca = dir.join("ca.pem");
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert", ca.to_str().unwrap()])
        .args(extra)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian's redis-tools; `make setup` installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.trim().to_string()
}

fn kvctl(c: &Cluster, tls_args: &[String], args: &[&str]) -> (i32, String) {
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.client.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["-e", &endpoints.join(",")])
        .args(tls_args)
        .args(args)
        .output()
        .expect("run kvctl");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code().unwrap_or(-1), format!("{text}{err}"))
}

#[test]
fn tls_clients_are_served_and_a_plaintext_client_gets_no_reply_and_is_closed() {
    let _g = serial();
    let t = TlsCluster::start(3, &[]);
    let (c, dir) = (&t.c, t.dir());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // The library's client, through a follower (forwarded to the leader over mutual TLS).
    let mut conn = c.client(follower).unwrap();
    let set = conn.call_str(&["SET", "k", "v"]).unwrap();
    assert_eq!(set, Value::Simple("OK".into()));
    assert_eq!(
        conn.call_str(&["GET", "k"]).unwrap(),
        Value::Bulk(b"v".to_vec())
    );

    // A plaintext client: no RESP reply (at most a TLS alert record, type 21), then closed.
    for id in 1..=3 {
        let got = plaintext_ping(c.node(id).client);
        assert!(
            got.is_empty() || got[0] == 0x15,
            "node {id} answered a plaintext client: {got:?}"
        );
        assert!(!String::from_utf8_lossy(&got).contains("PONG"));
    }

    // redis-cli --tls.
    let port = c.node(follower).client.port();
    assert_eq!(
        redis_cli(dir, port, &[], &["SET", "greeting", "hello"]),
        "OK"
    );
    assert_eq!(redis_cli(dir, port, &[], &["GET", "greeting"]), "hello");
    // ... and redis-cli without --tls gets nothing it can read.
    let plain = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("PONG"));

    // kvctl --cacert (and --tls --cacert).
    let ca = vec![
        "--cacert".to_string(),
        dir.join("ca.pem").display().to_string(),
    ];
    assert_eq!(kvctl(c, &ca, &["put", "x", "1"]), (0, "OK".to_string()));
    let mut with_tls = vec!["--tls".to_string()];
    with_tls.extend(ca.iter().cloned());
    assert_eq!(kvctl(c, &with_tls, &["get", "x"]), (0, "1".to_string()));
    let (code, status) = kvctl(c, &ca, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status.lines().count(), 4, "{status}"); // the header and a row per member
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");
    assert!(!status.contains("unreachable"), "{status}");
    // kvctl without TLS fails with exit status 2.
    assert_eq!(kvctl(c, &["-t".into(), "2".into()], &["get", "x"]).0, 2);
    let (code, err) = kvctl(c, &["--tls".into()], &["get", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--cacert"), "{err}");
}

#[test]
fn tls_client_auth_require_refuses_a_client_without_a_certificate() {
    let _g = serial();
    let t = TlsCluster::start(1, &["tls_client_auth = require"]);
    let (c, dir) = (&t.c, t.dir());
    c.wait_leader(LONG);
    let port = c.node(1).client.port();
    let cert = dir.join("client.pem").display().to_string();
    let key = dir.join("client.key").display().to_string();
    let with_cert = ["--cert", cert.as_str(), "--key", key.as_str()];
    assert_eq!(redis_cli(dir, port, &with_cert, &["SET", "a", "1"]), "OK");
    assert_ne!(redis_cli(dir, port, &[], &["GET", "a"]), "1");
    // The library's client without a certificate: refused during the handshake or at the first
    // read (TLS 1.3 reports a refused client certificate after the client's Finished).
    let no_cert = ClientTls::load(&dir.join("ca.pem"), None).unwrap();
    let refused = match Connection::open(c.node(1).client, CLIENT_OPTIONS, Some(&no_cert)) {
        Err(_) => true,
        Ok(mut conn) => conn.call_str(&["GET", "a"]).is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let ca = [
        "--cacert".to_string(),
        dir.join("ca.pem").display().to_string(),
    ];
    let mut args = ca.to_vec();
    args.extend(["--cert".into(), cert.clone(), "--key".into(), key.clone()]);
    assert_eq!(kvctl(c, &args, &["get", "a"]), (0, "1".to_string()));
    let no_cert = [ca[0].clone(), ca[1].clone(), "-t".into(), "2".into()];
    let (code, _) = kvctl(c, &no_cert, &["get", "a"]);
    assert_eq!(code, 2);
}

#[test]
fn a_member_whose_certificate_another_ca_signed_gets_no_data_and_no_vote() {
    let _g = serial();
    let mut t = TlsCluster::start(3, &[]);
    let dir = t.dir().to_path_buf();
    let c = &mut t.c;
    harness::put_retry(c, 1, "before", "1", LONG);
    // Node 3 comes back with its data but a certificate from another CA.
    c.kill(3);
    let rogue = Ca::new("rogue CA");
    rogue.write_leaf(&dir, "node3", 3);
    c.spawn(3);
    let w = harness::put_retry(c, 1, "after", "2", LONG);
    assert_eq!(w, Value::Simple("OK".into()));
    let leader = c.wait_leader(LONG);
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[1, 2], applied, LONG);
    // Both good members refuse node 3's certificate (as dialer or as acceptor).
    wait_for(LONG, "a refused certificate in node 1's or 2's log", || {
        let refused = [1, 2].iter().any(|&id| {
            let log = fs::read_to_string(c.log_path(id)).unwrap_or_default();
            log.contains("UnknownIssuer") || log.contains("unknown issuer")
        });
        refused.then_some(())
    });
    // No data reached node 3: its own INFO (asked by a client trusting both CAs, since its
    // client port presents the rogue certificate) shows no leader and its applied index below
    // the write.
    let both = dir.join("both.pem");
    let ours = fs::read_to_string(dir.join("ca.pem")).unwrap();
    fs::write(&both, format!("{ours}{}", rogue.pem)).unwrap();
    let trust_both = ClientTls::load(&both, None).unwrap();
    let mut conn = Connection::open(c.node(3).client, CLIENT_OPTIONS, Some(&trust_both)).unwrap();
    let info = harness::parse_info(&conn.call_str(&["INFO", "raft"]).unwrap());
    let applied3: u64 = info["applied_index"].parse().unwrap();
    assert!(applied3 < applied, "node 3 applied {applied3} of {applied}");
    assert_eq!(info["leader_id"], "0", "{info:?}");

    // Node 3's vote does not count: with the leader stopped, the one other good member
    // cannot win an election with node 3's vote, so nothing commits. An absence, so it is
    // watched over a window of ten election timeouts (5 s at the default 500 ms), retrying.
    let other = if leader == 2 { 1 } else { 2 };
    let stopped = leader;
    c.signal(stopped, libc::SIGSTOP);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let mut conn = c.client(other).unwrap();
        conn.set_io_timeout(Duration::from_secs(3));
        let got = conn.call_str(&["SET", "alone", "x"]);
        assert!(
            !matches!(&got, Ok(Value::Simple(s)) if s == "OK"),
            "node {other} committed a write with only node 3: {got:?} after {:?}",
            start.elapsed()
        );
        if let Ok(info) = conn.call_str(&["INFO", "raft"]) {
            let info = harness::parse_info(&info);
            assert_ne!(
                info["role"], "leader",
                "node {other} won with node 3's vote"
            );
        }
    }
    c.signal(stopped, libc::SIGCONT);
    harness::put_retry(c, other, "together", "y", LONG);
}

#[test]
fn garbage_and_stalled_handshakes_on_both_ports_leave_every_node_up() {
    let _g = serial();
    let mut t = TlsCluster::start(3, &[]);
    let c = &mut t.c;
    c.wait_leader(LONG);
    let mut prng = kvraft::prng::Prng::new(18);
    for id in 1..=3u64 {
        for addr in [c.node(id).peer, c.node(id).client] {
            // Megabytes of garbage, connection after connection (each is closed at its first
            // record that is not TLS).
            let mut sent = 0usize;
            let deadline = Instant::now() + LONG;
            while sent < 4 << 20 && Instant::now() < deadline {
                let Ok(mut s) = TcpStream::connect(addr) else {
                    continue;
                };
                let mut chunk = vec![0u8; 256 * 1024];
                for b in chunk.iter_mut() {
                    *b = prng.next_u64() as u8;
                }
                while let Ok(n) = s.write(&chunk) {
                    if n == 0 {
                        break;
                    }
                    sent += n;
                }
            }
            assert!(sent >= 4 << 20, "only {sent} bytes reached {addr}");
        }
    }
    // A handshake that starts and stalls is closed by the Hello/handshake deadline.
    let mut stalled = Vec::new();
    for id in 1..=3u64 {
        for addr in [c.node(id).peer, c.node(id).client] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).unwrap(); // a handshake record's first bytes
            s.set_read_timeout(Some(LONG)).unwrap();
            stalled.push(s);
        }
    }
    for mut s in stalled {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => assert_eq!(buf[0], 0x15, "a stalled handshake got {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a stalled handshake was not closed: {e}"),
        }
    }
    for id in 1..=3 {
        assert!(c.exited(id).is_none(), "node {id} exited");
        assert_eq!(c.panic_line(id), None);
        let pong = c.client(id).unwrap().call_str(&["PING"]).unwrap();
        assert_eq!(pong, Value::Simple("PONG".into()));
    }
    harness::put_retry(c, 1, "still", "here", LONG);
}

#[test]
fn sighup_reloads_the_certificate_and_a_failed_reload_keeps_the_old_one() {
    let _g = serial();
    let mut t = TlsCluster::start(1, &[]);
    let dir = t.dir().to_path_buf();
    t.c.wait_leader(LONG);
    let addr = t.c.node(1).client;
    let tls = t.c.tls.clone().unwrap();
    let first = served_certificate(addr, &tls).expect("a TLS handshake");
    let first_on_disk = pem_to_der(&fs::read_to_string(dir.join("node1.pem")).unwrap());
    assert_eq!(first, first_on_disk);

    // Renew: same CA, a new key and serial. Until SIGHUP the old certificate is served.
    let renewed = t.ca.write_leaf(&dir, "node1", 2);
    let c = &mut t.c;
    assert_eq!(served_certificate(addr, &tls), Some(first.clone()));
    c.signal(1, libc::SIGHUP);
    wait_for(LONG, "the renewed certificate to be served", || {
        (served_certificate(addr, &tls)? == renewed).then_some(())
    });
    harness::put_retry(c, 1, "after-reload", "1", LONG);

    // A broken file: the reload fails, says why, and the renewed certificate stays.
    fs::write(dir.join("node1.pem"), "not a certificate").unwrap();
    c.signal(1, libc::SIGHUP);
    wait_for(LONG, "the failed reload to be logged", || {
        let log = fs::read_to_string(c.log_path(1)).unwrap_or_default();
        log.contains("TLS reload failed").then_some(())
    });
    assert_eq!(served_certificate(addr, &tls), Some(renewed));
    assert!(c.exited(1).is_none());
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn a_missing_or_bad_tls_file_stops_the_start_with_exit_status_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kvraft test CA");
    ca.write(dir.path(), 1);
    let ports = harness::free_ports(2);
    let d = dir.path().display();
    let base = format!(
        "data_dir = {d}/data{{id}}\nnode.1 = peer=127.0.0.1:{} client=127.0.0.1:{}\n",
        ports[0], ports[1]
    );
    fs::write(dir.path().join("junk.pem"), "-----BEGIN NOTHING-----\n").unwrap();
    for (lines, named) in [
        (
            format!("tls_cert = {d}/missing.pem\ntls_key = {d}/node1.key\ntls_ca = {d}/ca.pem\n"),
            "missing.pem",
        ),
        (
            format!("tls_cert = {d}/node1.pem\ntls_key = {d}/node1.key\ntls_ca = {d}/junk.pem\n"),
            "junk.pem",
        ),
        (
            format!("tls_cert = {d}/node1.pem\ntls_key = {d}/ca.pem\ntls_ca = {d}/ca.pem\n"),
            "ca.pem",
        ),
    ] {
        let conf = dir.path().join("c.conf");
        fs::write(&conf, format!("{base}{lines}")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_kvraftd"))
            .args([
                "--config",
                conf.to_str().unwrap(),
                "--id",
                "1",
                "--bootstrap",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(named), "{named} not named in: {err}");
    }
}

#[test]
fn a_follower_catches_up_through_install_snapshot_over_mutual_tls() {
    let _g = serial();
    let extra = [
        "snapshot_entries = 500",
        "snapshot_keep_entries = 50",
        "snapshot_chunk_bytes = 64KiB",
    ];
    let mut t = TlsCluster::start(3, &extra);
    let c = &mut t.c;
    let leader = c.wait_leader(LONG);
    let lagger = (1..=3).find(|&i| i != leader).unwrap();
    c.kill(lagger);
    // 2,000 writes of 2 KiB: 4 MB of snapshot and log, through TLS records of at most 16 KiB.
    let mut conn = c.client(leader).unwrap();
    let value = vec![b'v'; 2048];
    for batch in 0..20 {
        for i in 0..100 {
            conn.queue(&[b"SET", format!("key-{batch}-{i}").as_bytes(), &value]);
        }
        conn.flush().unwrap();
        for _ in 0..100 {
            assert_eq!(conn.read_reply().unwrap(), Value::ok());
        }
    }
    wait_for(LONG, "the leader to snapshot and compact its log", || {
        let i = c.info(leader)?;
        let first: u64 = i.get("first_log_index")?.parse().ok()?;
        let taken: u64 = i.get("snapshots_taken")?.parse().ok()?;
        (taken >= 1 && first > 1).then_some(())
    });
    c.spawn(lagger);
    let applied: u64 = c.info(leader).unwrap()["applied_index"].parse().unwrap();
    c.wait_applied(&[lagger], applied, LONG);
    let lagging = c.info(lagger).unwrap();
    let installed: u64 = lagging["snapshots_installed"].parse().unwrap();
    assert!(
        installed >= 1,
        "caught up without InstallSnapshot: {lagging:?}"
    );
    wait_for(LONG, "equal state hashes", || {
        let hashes: Vec<String> = (1..=3)
            .map(|id| c.info(id).map(|i| i["state_hash"].clone()))
            .collect::<Option<_>>()?;
        hashes.iter().all(|h| *h == hashes[0]).then_some(())
    });
}

/// TLS and passwords together (issue 18): `redis-cli --tls --cacert ... -a ...` and kvctl
/// with `--cacert` and `KVRAFT_PASSWORD` are served; without the password, NOAUTH.
#[test]
fn redis_cli_and_kvctl_authenticate_over_tls() {
    let _g = serial();
    let t = TlsCluster::start(
        3,
        &["requirepass = tls-data-pw", "adminpass = tls-admin-pw"],
    );
    let (c, dir) = (&t.c, t.dir());
    let leader = c.wait_leader(LONG);
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let port = c.node(follower).client.port();
    let data = ["--no-auth-warning", "-a", "tls-data-pw"];
    wait_for(LONG, "redis-cli --tls -a SET through a follower", || {
        (redis_cli(dir, port, &data, &["SET", "tls-auth", "yes"]) == "OK").then_some(())
    });
    assert_eq!(redis_cli(dir, port, &data, &["GET", "tls-auth"]), "yes");
    assert!(redis_cli(dir, port, &[], &["GET", "tls-auth"]).contains("NOAUTH"));
    let admin = [
        "--no-auth-warning",
        "--user",
        "admin",
        "--pass",
        "tls-admin-pw",
    ];
    assert!(!redis_cli(dir, port, &admin, &["MEMBER", "LIST"]).contains("NOPERM"));
    let ca = dir.join("ca.pem").display().to_string();
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.client.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args([
            "-e",
            &endpoints.join(","),
            "--cacert",
            &ca,
            "get",
            "tls-auth",
        ])
        .env("KVRAFT_PASSWORD", "tls-data-pw")
        .output()
        .expect("run kvctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
}
