//! Certificates for tests and benchmarks, made with rcgen: a CA and the node certificates it
//! signs. Included by path (`#[path = ...] mod certs;`) from tests/tls.rs and
//! benches/cluster.rs, so neither carries its own copy.

use std::fs;
use std::path::Path;

/// A certificate authority and the certificates it signs (IP SAN 127.0.0.1, server and
/// client use).
pub struct Ca {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate and key (PEM) with serial number `serial`, and the certificate's DER.
    pub fn leaf(&self, serial: u64) -> (String, String, Vec<u8>) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    /// `ca.pem`, and `node{id}.pem`/`.key` for ids 1..=n (serial = id) in `dir`.
    pub fn write(&self, dir: &Path, n: u64) {
        fs::write(dir.join("ca.pem"), &self.pem).unwrap();
        for id in 1..=n {
            self.write_leaf(dir, &format!("node{id}"), id);
        }
    }

    pub fn write_leaf(&self, dir: &Path, name: &str, serial: u64) -> Vec<u8> {
        let (cert, key, der) = self.leaf(serial);
        fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
        fs::write(dir.join(format!("{name}.key")), key).unwrap();
        der
    }
}
