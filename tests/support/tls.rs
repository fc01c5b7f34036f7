//! A self-signed certificate for `127.0.0.1`, made by the `openssl` command in a
//! temp dir, and the rustls acceptor that serves it: a Loki over https with a
//! private CA, as a VM's host may run one.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate (PEM, also its own CA: what `loki.ca_file` takes) and its key.
pub struct SelfSigned {
    pub dir: tempfile::TempDir,
    /// `cert.pem`.
    pub cert: PathBuf,
    key: PathBuf,
}

impl SelfSigned {
    /// Runs `openssl req -x509` for `IP:127.0.0.1` (`CA:FALSE`); `None`, having printed
    /// "skipped: needs openssl", when the command is not installed.
    pub fn generate() -> Option<SelfSigned> {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=wisp-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                // A server certificate, not a CA: webpki refuses a CA
                // certificate as the server's own (`CaUsedAsEndEntity`), and
                // openssl's default extensions make one.
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-days",
                "2",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("skipped: needs openssl");
                None
            }
            Err(e) => panic!("cannot run openssl: {e}"),
            Ok(o) => {
                assert!(
                    o.status.success(),
                    "openssl req failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                Some(SelfSigned { dir, cert, key })
            }
        }
    }

    /// A TLS acceptor serving the certificate, with ring (the provider
    /// reqwest's rustls already uses) and HTTP/1.1 (no ALPN).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .expect("read cert.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("parse cert.pem");
        let key = PrivateKeyDer::from_pem_file(&self.key).expect("read key.pem");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a server certificate");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
