//! One Loki request: the HTTP client, its headers and credentials. A push, and
//! the `query_range` read the sink makes after a restart to learn which records
//! of the push then in flight Loki already has.
//!
//! Promises: one connection pool per client; every request carries
//! `User-Agent: wisp-agent/<version>`, `X-Scope-OrgID` when a tenant is set, and
//! the configured credentials; every push answer (or failure to get one) becomes
//! a [`PushOutcome`], and, as the shipper is told, an [`Outcome`]; a query's
//! answer is read up to a bound given by the caller. Credentials are read once,
//! at construction, and never appear in `Debug` output, error messages or
//! outcome reasons.
//!
//! Proxies: the client follows reqwest's defaults, so `HTTP_PROXY`, `HTTPS_PROXY`
//! and `NO_PROXY` in the agent's environment apply, as they do for Promtail and
//! Alloy. The host is normally on a private network the proxy cannot reach: a VM
//! that exports a proxy system-wide should list the host in `NO_PROXY`.

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::encode::EncodedPush;
use super::refusal::Answer as RefusalAnswer;
use crate::config::LokiConfig;
use crate::http_client::{self, TlsError};
use crate::sink::retry::{
    bounded_text, error_chain, Outcome, Partial, PushOutcome, MAX_REASON_BYTES,
};

/// A 400 or 429 answer to a push is read up to this many bytes: Loki lists
/// the entries it refused there.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What became of one push request.
enum Reply {
    Answered(Answered),
    /// No answer; `maybe_stored`: the request may have reached Loki.
    Failed {
        outcome: PushOutcome,
        maybe_stored: bool,
    },
}

/// An HTTP answer to a push.
struct Answered {
    status: u16,
    headers: HeaderMap,
    /// The body of an answer that is not a success, up to
    /// [`MAX_ANSWER_BYTES`] (400, 429) or [`MAX_REASON_BYTES`].
    body: Vec<u8>,
    /// `body` is the whole answer.
    complete: bool,
}

/// Loki's tenant header.
const ORG_ID: HeaderName = HeaderName::from_static("x-scope-orgid");

/// Asks Loki 3.x to keep stream labels apart from structured metadata in a
/// query's answer (older versions ignore it).
const ENCODING_FLAGS: HeaderName = HeaderName::from_static("x-loki-response-encoding-flags");

/// Why a query got no usable answer. Nothing here shows the URL (it may carry a
/// password).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No connection could be made: Loki is down or unreachable, so a push could
    /// not go either.
    #[error("cannot connect: {0}")]
    Unreachable(String),
    /// Connected, then no answer: timed out, reset, a broken body.
    #[error("{0}")]
    Transport(String),
    #[error("status {status}: {reason}")]
    Status { status: u16, reason: String },
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Why a client could not be built: each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum LokiClientError {
    #[error("cannot read {what} {}: {source}; create the file (readable by the agent) or correct {what}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} is empty; put the secret in it", path.display())]
    EmptySecret { what: &'static str, path: PathBuf },
    /// `loki.ca_file` cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("loki.basic_auth and loki.bearer_token_file are both set; choose one")]
    BothAuth,
    /// The value itself is not shown: it may be a credential.
    #[error("{what} holds characters not allowed in an HTTP header")]
    InvalidHeader { what: &'static str },
    #[error("cannot build the loki http client: {0}")]
    Build(reqwest::Error),
}

/// A credential: shown as `<redacted>` everywhere.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
enum Auth {
    None,
    Basic { username: String, password: Secret },
    Bearer(Secret),
}

/// Pushes encoded batches to Loki. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct LokiClient {
    http: reqwest::Client,
    auth: Auth,
    tenant: String,
}

impl fmt::Debug for LokiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LokiClient")
            .field("tenant", &self.tenant)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl LokiClient {
    /// Builds the client from `[loki]`: reads the credential and CA files now, so
    /// a missing file is an error at start, naming the file.
    pub fn new(cfg: &LokiConfig) -> Result<Self, LokiClientError> {
        let auth = match (&cfg.basic_auth, &cfg.bearer_token_file) {
            (Some(_), Some(_)) => return Err(LokiClientError::BothAuth),
            (Some(basic), None) => Auth::Basic {
                username: basic.username.clone(),
                password: read_secret("loki.basic_auth.password_file", &basic.password_file)?,
            },
            (None, Some(path)) => Auth::Bearer(read_secret("loki.bearer_token_file", path)?),
            (None, None) => Auth::None,
        };
        // Checked now so a bad value fails at start, not on every push.
        match &auth {
            Auth::Basic { username, password } => {
                check_header("loki.basic_auth.username", username)?;
                check_header("loki.basic_auth.password_file", &password.0)?;
            }
            Auth::Bearer(token) => check_header("loki.bearer_token_file", &token.0)?,
            Auth::None => {}
        }

        let mut headers = HeaderMap::new();
        if !cfg.tenant.is_empty() {
            let v =
                HeaderValue::from_str(&cfg.tenant).map_err(|_| LokiClientError::InvalidHeader {
                    what: "loki.tenant",
                })?;
            headers.insert(ORG_ID, v);
        }

        let builder = http_client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout.get())
            .connect_timeout(cfg.timeout.get())
            // A redirected POST is resent as a GET without its body; the answer
            // would then drop the batch. A 3xx is classified (and kept) instead.
            .redirect(reqwest::redirect::Policy::none());
        let http = http_client::with_tls(builder, cfg)?
            .build()
            .map_err(LokiClientError::Build)?;
        Ok(LokiClient {
            http,
            auth,
            tenant: cfg.tenant.clone(),
        })
    }

    /// Sends one push to `url` (the full push URL) and classifies the answer.
    /// Never fails: a request that gets no answer is a [`PushOutcome::Retry`].
    pub async fn push(&self, url: &str, push: &EncodedPush) -> PushOutcome {
        match self.answer(url, push).await {
            Reply::Answered(a) => PushOutcome::from_response(a.status, &a.headers, &a.body),
            Reply::Failed { outcome, .. } => outcome,
        }
    }

    /// As [`LokiClient::push`], as the shipper is told: with whether a failed
    /// try may have left the push stored anyway, and a push Loki took in part
    /// as an [`Outcome::Partial`] with its answer (Loki's account of the
    /// entries it refused). A 400 is taken in part (Loki refused entries one by
    /// one and stored the others); so is a 429 telling of Loki's per-stream rate
    /// or stream limits, which an ingester answers after storing the rest (its
    /// ingestion rate limit stores nothing; either way the answer tells which).
    /// A try may have left the push stored when it may have reached Loki (a
    /// timeout, a connection lost after it was made) or Loki failed after it
    /// began writing (a 5xx other than 503, which Loki answers before writing:
    /// not ready, unhealthy ring). A refused connection and a 503 stored nothing.
    pub async fn send(&self, url: &str, push: &EncodedPush) -> Outcome {
        let a = match self.answer(url, push).await {
            Reply::Answered(a) => a,
            Reply::Failed {
                outcome,
                maybe_stored,
            } => return outcome.into_outcome(maybe_stored),
        };
        let outcome = PushOutcome::from_response(a.status, &a.headers, &a.body);
        let partial = |after| {
            Outcome::Partial(Partial {
                status: a.status,
                body: Bytes::from(a.body.clone()),
                complete: a.complete,
                after,
            })
        };
        match outcome {
            PushOutcome::Rejected { status: 400, .. } => partial(None),
            PushOutcome::Retry { after, .. }
                if a.status == 429
                    && RefusalAnswer::parse(429, &a.body, !a.complete).tells_refusals() =>
            {
                partial(after)
            }
            other => other.into_outcome(matches!(a.status, 500..=599) && a.status != 503),
        }
    }

    /// One push's HTTP answer, its body read up to a bound.
    async fn answer(&self, url: &str, push: &EncodedPush) -> Reply {
        let request = self
            .http
            .post(url)
            .header(CONTENT_TYPE, push.content_type)
            .body(push.body.clone());
        let request = self.authorize(request);
        let mut response = match request.send().await {
            Ok(r) => r,
            // The URL may carry a password; the caller logs its redacted form.
            Err(e) => {
                return Reply::Failed {
                    maybe_stored: !e.is_connect(),
                    outcome: PushOutcome::from_transport_error(&e.without_url()),
                }
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        // Only the head of the body is kept: a reason to log, or Loki's list
        // of refused entries; an unbounded read would let a broken server fill
        // memory.
        let limit = match status {
            400 | 429 => MAX_ANSWER_BYTES,
            _ => MAX_REASON_BYTES,
        };
        let mut body = Vec::new();
        let mut complete = true;
        if !(200..300).contains(&status) {
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) if body.len() + chunk.len() > limit => {
                        body.extend_from_slice(&chunk[..limit - body.len()]);
                        complete = false;
                        break;
                    }
                    Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
        }
        Reply::Answered(Answered {
            status,
            headers,
            body,
            complete,
        })
    }

    /// `GET url` with `params` as the query string, the push's headers and
    /// credentials, and `X-Loki-Response-Encoding-Flags: categorize-labels`.
    /// Returns the body of a 200 answer, read up to `max_body` bytes.
    pub async fn query(
        &self,
        url: &str,
        params: &[(&str, String)],
        max_body: usize,
    ) -> Result<Vec<u8>, QueryError> {
        let request = self
            .http
            .get(url)
            .query(params)
            .header(ENCODING_FLAGS, "categorize-labels");
        let request = self.authorize(request);
        let transport = |e: reqwest::Error| {
            // The URL may carry a password: never in the reason.
            let e = e.without_url();
            if e.is_connect() {
                QueryError::Unreachable(error_chain(&e))
            } else if e.is_timeout() {
                QueryError::Transport(format!("timed out: {}", error_chain(&e)))
            } else {
                QueryError::Transport(error_chain(&e))
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let limit = if status == 200 {
            max_body
        } else {
            MAX_REASON_BYTES
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > limit {
                if status == 200 {
                    return Err(QueryError::TooLarge { limit });
                }
                body.extend_from_slice(&chunk[..limit - body.len()]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        if status != 200 {
            let text = bounded_text(&body);
            return Err(QueryError::Status {
                status,
                reason: if text.is_empty() {
                    "no reason given".into()
                } else {
                    text
                },
            });
        }
        Ok(body)
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        // reqwest marks these headers sensitive, so they stay out of its Debug.
        match &self.auth {
            Auth::None => request,
            Auth::Basic { username, password } => request.basic_auth(username, Some(&password.0)),
            Auth::Bearer(token) => request.bearer_auth(&token.0),
        }
    }
}

fn read_secret(what: &'static str, path: &Path) -> Result<Secret, LokiClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| LokiClientError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    // Files written by `echo` end with a newline that is not part of the secret.
    let secret = text.trim();
    if secret.is_empty() {
        return Err(LokiClientError::EmptySecret {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(secret.to_string()))
}

fn check_header(what: &'static str, value: &str) -> Result<(), LokiClientError> {
    HeaderValue::from_str(value)
        .map(|_| ())
        .map_err(|_| LokiClientError::InvalidHeader { what })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BasicAuth;

    #[test]
    fn missing_credential_files_are_named_in_the_error() {
        let cfg = LokiConfig {
            bearer_token_file: Some("/nonexistent/wisp-token".into()),
            ..LokiConfig::default()
        };
        let err = LokiClient::new(&cfg).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read loki.bearer_token_file /nonexistent/wisp-token: "),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let cfg = LokiConfig {
            ca_file: Some(path.clone()),
            ..LokiConfig::default()
        };
        let err = LokiClient::new(&cfg).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("loki.ca_file"), "{err}");
    }

    #[test]
    fn both_basic_auth_and_a_bearer_token_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        let cfg = LokiConfig {
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                password_file: path.clone(),
            }),
            bearer_token_file: Some(path),
            ..LokiConfig::default()
        };
        assert!(matches!(
            LokiClient::new(&cfg),
            Err(LokiClientError::BothAuth)
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pass");
        std::fs::write(&path, "hunter2\n").unwrap();
        let cfg = LokiConfig {
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                password_file: path,
            }),
            tenant: "team".into(),
            ..LokiConfig::default()
        };
        let client = LokiClient::new(&cfg).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn a_secret_with_a_newline_inside_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\ndef\n").unwrap();
        let cfg = LokiConfig {
            bearer_token_file: Some(path),
            ..LokiConfig::default()
        };
        let err = LokiClient::new(&cfg).unwrap_err().to_string();
        assert!(!err.contains("abc"), "{err}");
        assert!(err.contains("loki.bearer_token_file"), "{err}");
    }
}
