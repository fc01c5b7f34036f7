//! What every HTTP client of the agent shares: the `User-Agent`, and `[loki]`'s
//! TLS settings (`loki.ca_file`, `loki.insecure_skip_verify`). The sinks'
//! clients and discovery's readiness checks are built from here, so a Loki that
//! the sink trusts is one discovery chooses, and neither imports the other.
//!
//! Promises: `loki.ca_file` is read when a client is built (a missing or
//! unusable file is an error naming it, at start); its certificates are trusted
//! besides the built-in roots, never instead of them.

use std::path::PathBuf;

use crate::config::LokiConfig;

/// `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("wisp-agent/", env!("CARGO_PKG_VERSION"));

/// Why `loki.ca_file` could not be used: each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read loki.ca_file {}: {source}; create the file (readable by the agent) or correct loki.ca_file", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid CA certificate in loki.ca_file {}: {source}; expected PEM certificates", path.display())]
    BadCa {
        path: PathBuf,
        source: reqwest::Error,
    },
    #[error("loki.ca_file {} holds no certificate; expected PEM certificates (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCa { path: PathBuf },
}

/// A client builder with the agent's `User-Agent`.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(USER_AGENT)
}

/// `builder` with `[loki]`'s TLS settings: the certificates of `loki.ca_file`
/// trusted besides the built-in roots, and `loki.insecure_skip_verify`. Reads
/// `loki.ca_file` now.
pub fn with_tls(
    builder: reqwest::ClientBuilder,
    cfg: &LokiConfig,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut builder = builder.danger_accept_invalid_certs(cfg.insecure_skip_verify);
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| TlsError::BadCa {
                path: path.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCa { path: path.clone() });
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

/// The cause of a failed request in a few words (reqwest's own message is
/// only "error sending request"): the innermost error, after "cannot
/// connect" when the connection failed.
pub fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        format!("cannot connect ({cause})")
    } else {
        cause.to_string()
    }
}
