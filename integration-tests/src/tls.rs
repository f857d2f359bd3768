//! TLS for tests: a throwaway certificate authority, a server certificate it signs for
//! `localhost` and `127.0.0.1`, and a TLS-terminating TCP proxy, the way an ingress or a sidecar
//! puts TLS in front of a service that speaks plain TCP.

use std::net::SocketAddr;
use std::path::PathBuf;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509NameBuilder, X509};
use tokio::net::{TcpListener, TcpStream};

/// Certificates in PEM files under a temporary directory, deleted on drop.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The CA that signed the server certificate: what clients must trust.
    pub ca_pem: PathBuf,
    /// A second CA that signed nothing here: trusting only it must fail.
    pub other_ca_pem: PathBuf,
    /// The server certificate (for `localhost` and `127.0.0.1`), PEM.
    pub server_cert_pem: Vec<u8>,
    /// The server's private key, PKCS#8 PEM.
    pub server_key_pem: Vec<u8>,
}

impl Pki {
    /// A new CA and a server certificate signed by it, valid for a day.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let (ca, ca_key) = self_signed_ca("saga test CA");
        let (other_ca, _) = self_signed_ca("saga unrelated CA");
        let (server, server_key) = server_cert(&ca, &ca_key);
        let ca_pem = dir.path().join("ca.pem");
        let other_ca_pem = dir.path().join("other-ca.pem");
        std::fs::write(&ca_pem, ca.to_pem().unwrap()).unwrap();
        std::fs::write(&other_ca_pem, other_ca.to_pem().unwrap()).unwrap();
        Pki { _dir: dir, ca_pem, other_ca_pem, server_cert_pem: server.to_pem().unwrap(), server_key_pem: server_key.private_key_to_pem_pkcs8().unwrap() }
    }

    /// Listens on a free loopback port, terminates TLS with the server certificate, and forwards
    /// each connection to `upstream` in plain TCP. Runs until the runtime stops.
    pub async fn proxy_to(&self, upstream: SocketAddr) -> SocketAddr {
        self.proxy_to_port(upstream, 0).await
    }

    /// [`Pki::proxy_to`] on loopback port `port`.
    pub async fn proxy_to_port(&self, upstream: SocketAddr, port: u16) -> SocketAddr {
        let identity = native_tls::Identity::from_pkcs8(&self.server_cert_pem, &self.server_key_pem).expect("server identity");
        let acceptor = tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).expect("TLS acceptor"));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind TLS proxy");
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust us aborts the handshake; that is the point of
                    // some tests, not an error of the proxy.
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut plain) = TcpStream::connect(upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        addr
    }
}

fn name(common_name: &str) -> openssl::x509::X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    name.build()
}

fn serial() -> openssl::asn1::Asn1Integer {
    let mut serial = BigNum::new().unwrap();
    serial.rand(128, MsbOption::MAYBE_ZERO, false).unwrap();
    serial.to_asn1_integer().unwrap()
}

fn self_signed_ca(common_name: &str) -> (X509, PKey<Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&serial()).unwrap();
    cert.set_subject_name(&name(common_name)).unwrap();
    cert.set_issuer_name(&name(common_name)).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    cert.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    cert.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (cert.build(), key)
}

fn server_cert(ca: &X509, ca_key: &PKey<Private>) -> (X509, PKey<Private>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&serial()).unwrap();
    cert.set_subject_name(&name("localhost")).unwrap();
    cert.set_issuer_name(ca.subject_name()).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    let san = SubjectAlternativeName::new().dns("localhost").ip("127.0.0.1").build(&cert.x509v3_context(Some(ca), None)).unwrap();
    cert.append_extension(san).unwrap();
    cert.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build().unwrap()).unwrap();
    cert.sign(ca_key, MessageDigest::sha256()).unwrap();
    (cert.build(), key)
}
