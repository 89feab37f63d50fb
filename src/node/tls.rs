//! TLS for the client and peer ports, with rustls (ring provider), on the event loop.
//!
//! rustls is sans-I/O: a `rustls::Connection` takes ciphertext (`read_tls`), turns it into
//! plaintext (`process_new_packets`, `reader`), and hands back ciphertext to send
//! (`write_tls`). `TlsStream` wraps one connection's session so that the loop keeps its usual
//! shape: read a budgeted amount from the socket, get plaintext out; queue plaintext, flush
//! ciphertext until `WouldBlock`. Nothing here blocks or reads a clock.
//!
//! Three configurations come from one certificate, key and CA (`tls_cert`, `tls_key`,
//! `tls_ca`), loaded by `TlsConfigs::load` at start-up and again on SIGHUP (a failed reload
//! keeps the old configurations and says why):
//! - the client port: a server config; with `tls_client_auth = require` it demands a client
//!   certificate signed by the CA;
//! - the peer port, accepting: a server config that always demands a peer certificate signed
//!   by the CA (mutual TLS), so an unverified peer never gets a byte of Raft through;
//! - the peer port, dialing: a client config presenting our certificate and verifying the
//!   peer's against the CA and the peer's configured IP address.
//!
//! Limits: ciphertext read per call is the caller's budget; decrypted plaintext is moved out
//! after every record, so rustls buffers at most one record (16 KiB) of it; plaintext queued
//! for sending is capped by `TLS_SEND_BUFFER_SIZE_MAX` (rustls refuses more, and the caller's
//! own output cap applies before that).
//!
//! `TlsSocket` is how the daemon uses it: a socket with a TLS session that reads and writes
//! plaintext like a non-blocking socket (`net::MioNet`'s streams), so that the node's
//! connections (`conn.rs`) are the same code with and without TLS. Its invariants:
//! 1. `write` takes plaintext only once the ciphertext of earlier writes is on the socket and
//!    the handshake is over (else `WouldBlock`), and at most `TLS_WRITE_CHUNK_MAX` bytes of it:
//!    what rustls holds for sending stays within one chunk's records, and the connection's
//!    own output cap bounds the rest. `has_buffered_output` says when ciphertext is waiting,
//!    so the connection asks for writability until it is sent.
//! 2. One `read` takes at most `TLS_IDLE_RECORDS_SIZE_MAX` bytes of ciphertext that carry no
//!    plaintext (handshake messages, alerts, empty records) before it fails: a hostile peer
//!    cannot make a read that the connection's budget does not count run on.
//! 3. A record that does not decrypt or verify, a certificate that does not verify, or bytes
//!    that are not TLS at all fail the read before any plaintext is returned.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// Plaintext rustls may hold for sending on one connection, in bytes.
pub const TLS_SEND_BUFFER_SIZE_MAX: usize = 64 * 1024 * 1024;

/// Most plaintext one `TlsSocket::write` encrypts (invariant 1), in bytes.
pub const TLS_WRITE_CHUNK_MAX: usize = 64 * 1024;

/// Most ciphertext one `TlsSocket::read` takes without finding plaintext (invariant 2), in
/// bytes: four times the largest handshake flight rustls accepts (64 KiB).
pub const TLS_IDLE_RECORDS_SIZE_MAX: usize = 256 * 1024;

const _: () = assert!(TLS_WRITE_CHUNK_MAX <= TLS_SEND_BUFFER_SIZE_MAX);

pub use crate::config::{ClientAuth, TlsFiles};

/// Why TLS could not be set up: the file and what was wrong with it.
#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// The three configurations built from one set of files.
#[derive(Clone)]
pub struct TlsConfigs {
    pub client_port: Arc<ServerConfig>,
    pub peer_accept: Arc<ServerConfig>,
    pub peer_dial: Arc<ClientConfig>,
}

impl TlsConfigs {
    pub fn load(files: &TlsFiles) -> Result<TlsConfigs, TlsError> {
        let certs = load_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| TlsError(format!("{}: no private key: {e}", files.key.display())))?;
        let roots = Arc::new(load_roots(&files.ca)?);
        let provider = Arc::new(ring::default_provider());
        let verifier = |optional: bool| {
            let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let b = if optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| TlsError(format!("{}: {e}", files.ca.display())))
        };
        let server = |verifier| {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(format!("TLS versions: {e}")))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(|e| {
                    TlsError(format!(
                        "{} does not go with {}: {e}",
                        files.cert.display(),
                        files.key.display()
                    ))
                })
        };
        let client_port = server(verifier(files.client_auth == ClientAuth::Optional)?)?;
        let peer_accept = server(verifier(false)?)?;
        let peer_dial = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS versions: {e}")))?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?;
        Ok(TlsConfigs {
            client_port: Arc::new(client_port),
            peer_accept: Arc::new(peer_accept),
            peer_dial: Arc::new(peer_dial),
        })
    }
}

/// Every certificate in the PEM file `path` (at least one).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// The CA certificates in the PEM file `path`, as a root store.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("{}: not a CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}

/// What a budgeted read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRead {
    /// The socket has nothing more now.
    WouldBlock,
    /// The budget ran out with input perhaps left: read again next turn.
    More,
    /// The peer closed (cleanly or not).
    Closed,
}

/// One connection's TLS session.
pub struct TlsStream {
    conn: rustls::Connection,
}

impl TlsStream {
    /// The accepting side (client port, or the peer port's accepted connections).
    pub fn accept(cfg: &Arc<ServerConfig>) -> Result<TlsStream, TlsError> {
        let conn = ServerConnection::new(cfg.clone())
            .map_err(|e| TlsError(format!("new TLS session: {e}")))?;
        Ok(TlsStream::with(conn.into()))
    }

    /// The dialing side, verifying the peer's certificate against `ip`.
    pub fn dial(cfg: &Arc<ClientConfig>, ip: IpAddr) -> Result<TlsStream, TlsError> {
        let name = ServerName::IpAddress(ip.into());
        let conn = ClientConnection::new(cfg.clone(), name)
            .map_err(|e| TlsError(format!("new TLS session: {e}")))?;
        Ok(TlsStream::with(conn.into()))
    }

    fn with(mut conn: rustls::Connection) -> TlsStream {
        conn.set_buffer_limit(Some(TLS_SEND_BUFFER_SIZE_MAX));
        TlsStream { conn }
    }

    /// Read at most about `budget` ciphertext bytes from `sock`, appending the plaintext they
    /// carry to `plain`. A protocol error (a plaintext client on a TLS port, a certificate that
    /// does not verify) is an `Err` naming it; rustls has queued an alert, so the caller may
    /// `flush` once before closing.
    pub fn read_from(
        &mut self,
        sock: &mut impl Read,
        plain: &mut Vec<u8>,
        budget: usize,
    ) -> Result<TlsRead, TlsError> {
        let mut got = 0usize;
        loop {
            let n = match self.conn.read_tls(sock) {
                Ok(0) => return self.drain(plain).map(|_| TlsRead::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.drain(plain).map(|_| TlsRead::WouldBlock)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(TlsError(format!("read: {e}"))),
            };
            got += n;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| TlsError(format!("TLS: {e}")))?;
            self.drain(plain)?;
            if state.peer_has_closed() {
                return Ok(TlsRead::Closed);
            }
            if got >= budget {
                return Ok(TlsRead::More);
            }
        }
    }

    fn drain(&mut self, plain: &mut Vec<u8>) -> Result<(), TlsError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // The peer closed without close_notify: a truncation attack or a crash; the
                // read side treats it as closed.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(TlsError(format!("TLS read: {e}"))),
            }
        }
    }

    /// Queue plaintext to send. Fails only past `TLS_SEND_BUFFER_SIZE_MAX` (the caller's own
    /// output cap is smaller and checked first).
    pub fn queue(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = self.conn.writer().write(bytes)?;
        if n < bytes.len() {
            return Err(io::Error::other(format!(
                "TLS send buffer full ({TLS_SEND_BUFFER_SIZE_MAX} bytes)"
            )));
        }
        Ok(())
    }

    /// Write ciphertext until done or `WouldBlock`. `Ok(true)`: nothing is left to write.
    pub fn flush_to(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the other end presented a certificate that verified.
    pub fn peer_certified(&self) -> bool {
        !self.conn.is_handshaking() && self.conn.peer_certificates().is_some()
    }

    /// Say goodbye (queues a close_notify alert to flush).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// A socket with a TLS session: plaintext in and out, non-blocking (see the module header's
/// invariants 1 to 3).
pub struct TlsSocket<S> {
    sock: S,
    tls: TlsStream,
}

impl<S: Read + Write> TlsSocket<S> {
    pub fn new(sock: S, tls: TlsStream) -> TlsSocket<S> {
        TlsSocket { sock, tls }
    }

    pub fn socket(&self) -> &S {
        &self.sock
    }

    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Ciphertext (records, handshake messages, alerts) waits to be written.
    pub fn has_buffered_output(&self) -> bool {
        self.tls.wants_write()
    }

    /// The handshake is not over yet.
    pub fn handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Write waiting ciphertext; `Ok(true)` once none is left.
    fn send_records(&mut self) -> io::Result<bool> {
        self.tls.flush_to(&mut self.sock)
    }
}

impl<S: Read + Write> Read for TlsSocket<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut taken = 0usize;
        loop {
            match self.tls.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify: a crash, or a truncation; either way the end.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if taken >= TLS_IDLE_RECORDS_SIZE_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {taken} bytes of records carried no data"),
                ));
            }
            match self.tls.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Handshake replies, session tickets: sent now, or once writable.
                    self.send_records()?;
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.conn.process_new_packets() {
                // rustls queued an alert saying why; one try to send it, then the caller closes.
                let _ = self.tls.conn.write_tls(&mut self.sock);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS: {e}"),
                ));
            }
        }
    }
}

impl<S: Read + Write> Write for TlsSocket<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.send_records()? || self.tls.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(TLS_WRITE_CHUNK_MAX);
        let n = self.tls.conn.writer().write(&buf[..n])?;
        self.send_records()?;
        Ok(n)
    }

    /// Send waiting ciphertext; `WouldBlock` if some is left.
    fn flush(&mut self) -> io::Result<()> {
        match self.send_records()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A non-blocking in-memory pipe end: reads what the other side wrote, `WouldBlock` when
    /// empty, `Ok(0)` once closed.
    #[derive(Default)]
    struct Pipe {
        inbox: VecDeque<u8>,
        closed: bool,
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.inbox.is_empty() {
                return match self.closed {
                    true => Ok(0),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                };
            }
            let n = buf.len().min(self.inbox.len());
            for b in buf.iter_mut().take(n) {
                *b = self.inbox.pop_front().expect("checked");
            }
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inbox.extend(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        /// A CA, and for each name a certificate (IP SAN 127.0.0.1) signed by it.
        fn new(names: &[&str]) -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let (ca_pem, issuer) = ca();
            std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
            for name in names {
                let (cert, key) = leaf(&issuer);
                std::fs::write(dir.path().join(format!("{name}.pem")), cert).unwrap();
                std::fs::write(dir.path().join(format!("{name}.key")), key).unwrap();
            }
            Pki { dir }
        }

        fn files(&self, name: &str, client_auth: ClientAuth) -> TlsFiles {
            TlsFiles {
                cert: self.dir.path().join(format!("{name}.pem")),
                key: self.dir.path().join(format!("{name}.key")),
                ca: self.dir.path().join("ca.pem"),
                client_auth,
            }
        }
    }

    fn ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kvraft test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    }

    fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Run both sides until neither has anything to say; the first error ends it.
    fn pump(
        a: &mut TlsStream,
        b: &mut TlsStream,
        a_in: &mut Vec<u8>,
        b_in: &mut Vec<u8>,
    ) -> Result<(), TlsError> {
        for _ in 0..50 {
            let mut ab = Pipe::default();
            let mut ba = Pipe::default();
            a.flush_to(&mut ab).unwrap();
            b.flush_to(&mut ba).unwrap();
            if ab.inbox.is_empty() && ba.inbox.is_empty() {
                return Ok(());
            }
            b.read_from(&mut ab, b_in, usize::MAX)?;
            a.read_from(&mut ba, a_in, usize::MAX)?;
        }
        panic!("TLS sessions never went quiet");
    }

    #[test]
    fn peers_with_certificates_from_one_ca_handshake_and_exchange_bytes_both_ways() {
        let pki = Pki::new(&["n1", "n2"]);
        let c1 = TlsConfigs::load(&pki.files("n1", ClientAuth::Optional)).unwrap();
        let c2 = TlsConfigs::load(&pki.files("n2", ClientAuth::Optional)).unwrap();
        let mut dialer = TlsStream::dial(&c1.peer_dial, "127.0.0.1".parse().unwrap()).unwrap();
        let mut acceptor = TlsStream::accept(&c2.peer_accept).unwrap();
        let (mut d_in, mut a_in) = (Vec::new(), Vec::new());
        dialer.queue(b"hello from 1").unwrap();
        pump(&mut dialer, &mut acceptor, &mut d_in, &mut a_in).unwrap();
        assert!(!dialer.is_handshaking() && acceptor.peer_certified());
        assert_eq!(a_in, b"hello from 1");
        let big = vec![7u8; 300_000];
        acceptor.queue(&big).unwrap();
        pump(&mut dialer, &mut acceptor, &mut d_in, &mut a_in).unwrap();
        assert_eq!(d_in, big);
    }

    #[test]
    fn a_peer_from_another_ca_is_refused_before_any_plaintext() {
        let ours = Pki::new(&["n1"]);
        let theirs = Pki::new(&["rogue"]);
        let good = TlsConfigs::load(&ours.files("n1", ClientAuth::Optional)).unwrap();
        let rogue = TlsConfigs::load(&theirs.files("rogue", ClientAuth::Optional)).unwrap();
        let mut dialer = TlsStream::dial(&rogue.peer_dial, "127.0.0.1".parse().unwrap()).unwrap();
        let mut acceptor = TlsStream::accept(&good.peer_accept).unwrap();
        dialer.queue(b"*3\r\n$4\r\nVOTE").unwrap();
        let (mut d_in, mut a_in) = (Vec::new(), Vec::new());
        let err = pump(&mut dialer, &mut acceptor, &mut d_in, &mut a_in).unwrap_err();
        assert!(a_in.is_empty(), "plaintext got through: {a_in:?}");
        assert!(err.0.contains("TLS"), "{err}");
    }

    #[test]
    fn a_plaintext_client_on_a_tls_port_gets_an_error_and_no_reply() {
        let pki = Pki::new(&["n1"]);
        let cfg = TlsConfigs::load(&pki.files("n1", ClientAuth::Optional)).unwrap();
        let mut server = TlsStream::accept(&cfg.client_port).unwrap();
        let mut sock = Pipe::default();
        sock.inbox.extend(b"*1\r\n$4\r\nPING\r\n");
        let mut plain = Vec::new();
        assert!(server.read_from(&mut sock, &mut plain, 1 << 20).is_err());
        assert!(plain.is_empty());
    }

    #[test]
    fn the_client_port_demands_a_certificate_only_when_required() {
        let pki = Pki::new(&["n1"]);
        let no_cert_client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(Arc::new(
                    load_roots(&pki.dir.path().join("ca.pem")).unwrap(),
                ))
                .with_no_client_auth(),
        );
        for (auth, ok) in [(ClientAuth::Optional, true), (ClientAuth::Require, false)] {
            let cfg = TlsConfigs::load(&pki.files("n1", auth)).unwrap();
            let mut client =
                TlsStream::dial(&no_cert_client, "127.0.0.1".parse().unwrap()).unwrap();
            let mut server = TlsStream::accept(&cfg.client_port).unwrap();
            client.queue(b"PING\r\n").unwrap();
            let (mut c_in, mut s_in) = (Vec::new(), Vec::new());
            let got = pump(&mut client, &mut server, &mut c_in, &mut s_in);
            assert_eq!(got.is_ok(), ok, "{auth:?}: {:?}", got.err());
            assert_eq!(s_in == b"PING\r\n", ok, "{auth:?}");
        }
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let pki = Pki::new(&["n1"]);
        let mut files = pki.files("n1", ClientAuth::Optional);
        files.key = pki.dir.path().join("missing.key");
        let err = TlsConfigs::load(&files).err().unwrap();
        assert!(err.0.contains("missing.key"), "{err}");
        std::fs::write(pki.dir.path().join("junk.pem"), "not a certificate").unwrap();
        let mut files = pki.files("n1", ClientAuth::Optional);
        files.ca = pki.dir.path().join("junk.pem");
        let err = TlsConfigs::load(&files).err().unwrap();
        assert!(err.0.contains("junk.pem"), "{err}");
    }
}
