//! TLS for the blocking client (`kvctl`, the tests, the benchmarks): a rustls client
//! configuration made from PEM files, and the name a server's certificate must carry.
//!
//! Owns: reading `--cacert` (the CA that signed the servers' certificates) and, for a port
//! with `tls_client_auth = require`, `--cert`/`--key` (this client's certificate). Must not:
//! trust anything but the given CA (no system roots: a kvraft cluster has its own CA).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::ClientConfig;

use crate::node::tls::{load_certs, load_roots};

/// A client's TLS configuration. Cheap to clone (shared).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trust the CA certificates in `ca`; present `cert_key` (certificate chain, private key)
    /// when given. Errors name the file and what is wrong with it.
    pub fn load(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<ClientTls, String> {
        let roots = load_roots(ca).map_err(|e| e.0)?;
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots);
        let config = match cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs(cert).map_err(|e| e.0)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: no private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }
}

/// The name the server's certificate must carry: the host of `host:port` (an IP address or
/// a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{addr}: not a name a certificate can carry: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        let ip = server_name("127.0.0.1:6001").unwrap();
        assert!(matches!(ip, ServerName::IpAddress(_)), "{ip:?}");
        let v6 = server_name("[::1]:6001").unwrap();
        assert!(matches!(v6, ServerName::IpAddress(_)), "{v6:?}");
        let dns = server_name("kv1.example.com:6001").unwrap();
        assert!(matches!(dns, ServerName::DnsName(_)), "{dns:?}");
        assert!(server_name("bad name!:6001").is_err());
    }
}
