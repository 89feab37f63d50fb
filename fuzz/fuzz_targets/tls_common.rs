//! The TLS-wrapped framing, driven by arbitrary bytes: shared by the `tls` fuzz target and
//! `tests/tls_framing.rs` (which runs it on seeded random inputs in `make test`).
//!
//! `run(data)` does three things with the daemon's own `TlsSocket` (the stream the node reads
//! and writes when TLS is on), over in-memory non-blocking pipes:
//! 1. `data` as ciphertext into a fresh server session of the client port and of the peer
//!    port: no panic, and no plaintext comes out (it is not a verified session).
//! 2. `data` as plaintext through an established session, written in pieces whose sizes come
//!    from `data`, read back in small reads: the server gets exactly `data`, and the RESP
//!    request parser and the peer frame decoder, fed from it as the node feeds them, do not
//!    panic.
//! 3. The same, with one ciphertext byte (chosen by `data`) flipped on the way: the read fails,
//!    and what came out before the failure is a prefix of `data`.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::OnceLock;

use kvraft::client::resp::parse_command;
use kvraft::config::{ClientAuth, TlsFiles};
use kvraft::node::tls::{TlsConfigs, TlsSocket, TlsStream};
use kvraft::wire;

type Queue = Rc<RefCell<VecDeque<u8>>>;

/// One end of an in-memory connection: reads what the other end wrote (`WouldBlock` when
/// there is nothing), writes for the other end; `corrupt_at` flips that byte of the stream
/// written through it (counted from the first byte written).
struct Pipe {
    inbox: Queue,
    outbox: Queue,
    written: usize,
    corrupt_at: Option<usize>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.inbox.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(q.len());
        for b in buf.iter_mut().take(n) {
            *b = q.pop_front().expect("counted");
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut q = self.outbox.borrow_mut();
        for &b in buf {
            let b = match self.corrupt_at == Some(self.written) {
                true => b ^ 0x5a,
                false => b,
            };
            q.push_back(b);
            self.written += 1;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pipes() -> (Pipe, Pipe) {
    let (a, b): (Queue, Queue) = Default::default();
    let end = |inbox: &Queue, outbox: &Queue| Pipe {
        inbox: inbox.clone(),
        outbox: outbox.clone(),
        written: 0,
        corrupt_at: None,
    };
    (end(&a, &b), end(&b, &a))
}

/// A CA and one certificate (IP SAN 127.0.0.1) in a directory kept for the process's life.
fn configs() -> &'static TlsConfigs {
    static CONFIGS: OnceLock<TlsConfigs> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("n.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("n.key"), key.serialize_pem()).unwrap();
        TlsConfigs::load(&TlsFiles {
            cert: dir.join("n.pem"),
            key: dir.join("n.key"),
            ca: dir.join("ca.pem"),
            client_auth: ClientAuth::Require,
        })
        .expect("the fixture's certificates load")
    })
}

/// Read `sock` in reads of at most `size` bytes until it would block; appends to `out`.
fn read_all(sock: &mut TlsSocket<Pipe>, out: &mut Vec<u8>, size: usize) -> io::Result<()> {
    let mut buf = vec![0u8; size.max(1)];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Write `bytes` (all of it, flushing as the node does).
fn write_all(sock: &mut TlsSocket<Pipe>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match sock.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.flush().ok();
                if sock.handshaking() {
                    panic!("write before the handshake is over");
                }
            }
            Err(e) => panic!("write to an in-memory pipe failed: {e}"),
        }
    }
    while sock.flush().is_err() {}
}

/// A client session and a server session (peer port: mutual TLS) with the handshake done.
fn established() -> (TlsSocket<Pipe>, TlsSocket<Pipe>) {
    let cfg = configs();
    let (a, b) = pipes();
    let dial = TlsStream::dial(&cfg.peer_dial, "127.0.0.1".parse().unwrap()).unwrap();
    let accept = TlsStream::accept(&cfg.peer_accept).unwrap();
    let mut client = TlsSocket::new(a, dial);
    let mut server = TlsSocket::new(b, accept);
    let mut sink = Vec::new();
    for _ in 0..20 {
        let _ = client.flush();
        read_all(&mut server, &mut sink, 4096).expect("server handshake");
        read_all(&mut client, &mut sink, 4096).expect("client handshake");
        let _ = server.flush();
        if !client.handshaking() && !server.handshaking() && !server.has_buffered_output() {
            read_all(&mut client, &mut sink, 4096).expect("tickets");
            assert!(sink.is_empty(), "plaintext during the handshake");
            return (client, server);
        }
    }
    panic!("the in-memory handshake did not finish");
}

/// Feed `plain` to the node's two decoders the way the node does: whole requests/frames from
/// the front, until one is incomplete or refused.
fn decode_all(plain: &[u8]) {
    let mut rest = plain;
    for _ in 0..plain.len() + 1 {
        match parse_command(rest) {
            Ok(Some((_, used))) if used > 0 && used <= rest.len() => rest = &rest[used..],
            _ => break,
        }
    }
    let mut rest = plain;
    for _ in 0..plain.len() + 1 {
        match wire::decode(rest) {
            Ok((_, used)) if used > 0 && used <= rest.len() => rest = &rest[used..],
            _ => break,
        }
    }
}

pub fn run(data: &[u8]) {
    let cfg = configs();
    // 1. Garbage as ciphertext, on both kinds of accepting session.
    for server_cfg in [&cfg.client_port, &cfg.peer_accept] {
        let (mut a, b) = pipes();
        let mut server = TlsSocket::new(b, TlsStream::accept(server_cfg).unwrap());
        a.write_all(data).unwrap();
        let mut plain = Vec::new();
        let _ = read_all(&mut server, &mut plain, 1024);
        assert!(plain.is_empty(), "plaintext from garbage: {plain:?}");
    }
    if data.is_empty() {
        return;
    }
    // 2. Through a session, in pieces of sizes taken from the data.
    let (mut client, mut server) = established();
    let mut got = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let piece = (data[i % data.len()] as usize * 97 % 20_000 + 1).min(data.len() - at);
        write_all(&mut client, &data[at..at + piece]);
        read_all(
            &mut server,
            &mut got,
            1 + data[(i + 1) % data.len()] as usize * 13,
        )
        .expect("a good session's records read");
        at += piece;
        i += 1;
    }
    read_all(&mut server, &mut got, 4096).unwrap();
    assert_eq!(got, data, "TLS changed the bytes");
    decode_all(&got);
    // 3. One flipped ciphertext byte: no altered plaintext comes out (a flipped record
    // fails to decrypt; a flipped header may fail, wait for bytes that never come, or, for
    // the ignored legacy version field, change nothing).
    let (mut client, mut server) = established();
    let flip = u16::from_le_bytes([data[0], *data.get(1).unwrap_or(&0)]) as usize;
    let pipe = client.socket_mut();
    pipe.corrupt_at = Some(pipe.written + flip % (data.len() + 22));
    write_all(&mut client, data);
    let mut out = Vec::new();
    let _ = read_all(&mut server, &mut out, 4096);
    assert!(data.starts_with(&out), "altered plaintext came out");
}
