//! A test PKI (rcgen), shared by the tests that serve over TLS.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

use super::write;

/// A CA with a server and a client certificate, all PEM.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A certificate signed by `issuer` for `cn` (and `sans`), with its private key (PEM).
pub fn issue(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A self-signed CA named `cn`: its certificate (PEM) and its issuer.
pub fn ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client
/// certificate with common name `acme`.
pub fn pki() -> Pki {
    let (ca_pem, issuer) = ca("idmatch test ca");
    let (server_cert, server_key) =
        issue(&issuer, "localhost", vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = issue(&issuer, "acme", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    Pki { ca_pem, server_cert, server_key, client_cert, client_key }
}

impl Pki {
    /// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem` and `client.key`
    /// to `dir` (mode 0600).
    pub fn write_to(&self, dir: &Path) {
        write(dir, "ca.pem", &self.ca_pem);
        write(dir, "server.pem", &self.server_cert);
        write(dir, "server.key", &self.server_key);
        write(dir, "client.pem", &self.client_cert);
        write(dir, "client.key", &self.client_key);
    }
}
