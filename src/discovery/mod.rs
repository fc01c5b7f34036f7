//! Host discovery: which address reaches the host's telemetry stack.
//!
//! Candidates are tried in the configured order (an explicit `host.address` or
//! `WISP_HOST` alone when set); each is resolved (a literal IP, `gateway` from the
//! route table, else the system resolver, which reads `/etc/hosts` too) and checked
//! concurrently: Loki's `/ready` answering 200, or with Loki disabled a TCP connect
//! to the OTLP port. The first candidate in order that answers is chosen. Every
//! check has a timeout, so discovery ends in about `host.probe_timeout` even when
//! every candidate hangs.

pub mod route;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{fill_host, Config};

/// Where discovery reads the machine's network facts; tests point these elsewhere.
#[derive(Clone, Debug)]
pub struct Inputs {
    pub route_table: PathBuf,
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            route_table: PathBuf::from("/proc/net/route"),
        }
    }
}

/// How a candidate name became addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Resolution {
    /// The candidate is an IP address.
    Literal { address: IpAddr },
    /// `gateway`: the default route.
    RouteTable { address: IpAddr },
    /// A name, through the system resolver (hosts file and DNS).
    Resolver { addresses: Vec<IpAddr> },
    /// It did not resolve.
    Failed { reason: String },
}

impl Resolution {
    pub fn addresses(&self) -> Vec<IpAddr> {
        match self {
            Resolution::Literal { address } | Resolution::RouteTable { address } => vec![*address],
            Resolution::Resolver { addresses } => addresses.clone(),
            Resolution::Failed { .. } => Vec::new(),
        }
    }
}

/// What one service check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Check {
    Ok { latency_ms: u64 },
    HttpStatus { code: u16, latency_ms: u64 },
    Refused,
    Timeout { after_ms: u64 },
    Error { reason: String },
    NotTried,
}

impl Check {
    pub fn is_ok(&self) -> bool {
        matches!(self, Check::Ok { .. })
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Ok { latency_ms } => write!(f, "ok ({latency_ms} ms)"),
            Check::HttpStatus { code, latency_ms } => write!(f, "HTTP {code} ({latency_ms} ms)"),
            Check::Refused => f.write_str("refused"),
            Check::Timeout { after_ms } => write!(f, "timeout after {after_ms} ms"),
            Check::Error { reason } => write!(f, "error: {reason}"),
            Check::NotTried => f.write_str("not tried"),
        }
    }
}

/// One candidate, resolved and checked.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateReport {
    pub name: String,
    pub resolution: Resolution,
    /// The address checked (the first that answered, else the first resolved).
    pub address: Option<IpAddr>,
    /// Loki's `/ready` (when Loki is enabled).
    pub loki: Check,
    /// A TCP connect to the OTLP endpoint's port (when OTLP is enabled).
    pub otlp: Check,
}

impl CandidateReport {
    /// Does this candidate serve what the configuration needs to choose it?
    pub fn usable(&self, config: &Config) -> bool {
        if config.loki.enabled {
            self.loki.is_ok()
        } else if config.otlp.enabled {
            self.otlp.is_ok()
        } else {
            false
        }
    }
}

/// The outcome of one discovery round.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    pub candidates: Vec<CandidateReport>,
    /// The chosen candidate's name and address.
    pub chosen: Option<Chosen>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chosen {
    pub name: String,
    pub address: IpAddr,
}

impl Chosen {
    /// The host as it goes into `{host}`: the address as text.
    pub fn host(&self) -> String {
        self.address.to_string()
    }
}

/// The candidate names to try, in order.
pub fn candidate_names(config: &Config) -> Vec<String> {
    if config.host.address != "auto" {
        vec![config.host.address.clone()]
    } else {
        config.host.candidates.clone()
    }
}

/// Resolves one candidate name.
pub async fn resolve(name: &str, inputs: &Inputs, timeout: Duration) -> Resolution {
    if let Ok(address) = name
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Resolution::Literal { address };
    }
    if name == "gateway" {
        return match tokio::fs::read_to_string(&inputs.route_table).await {
            Ok(text) => match route::default_gateway_v4(&text) {
                Some(gw) => Resolution::RouteTable {
                    address: IpAddr::V4(gw),
                },
                None => Resolution::Failed {
                    reason: format!("no IPv4 default route in {}", inputs.route_table.display()),
                },
            },
            Err(e) => Resolution::Failed {
                reason: format!("cannot read {}: {e}", inputs.route_table.display()),
            },
        };
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((name, 0))).await {
        Ok(Ok(addrs)) => {
            let mut addresses: Vec<IpAddr> = Vec::new();
            for a in addrs {
                if !addresses.contains(&a.ip()) {
                    addresses.push(a.ip());
                }
            }
            // Prefer IPv4: the host's stack usually listens there.
            addresses.sort_by_key(|a| a.is_ipv6());
            if addresses.is_empty() {
                Resolution::Failed {
                    reason: "the name has no addresses".into(),
                }
            } else {
                Resolution::Resolver { addresses }
            }
        }
        Ok(Err(e)) => Resolution::Failed {
            reason: format!("does not resolve ({e})"),
        },
        Err(_) => Resolution::Failed {
            reason: format!("resolver timed out after {} ms", timeout.as_millis()),
        },
    }
}

/// `scheme://authority` of a URL template with `{host}` filled in.
fn base_of(url_template: &str, host: &str) -> String {
    let url = fill_host(url_template, host);
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').unwrap_or(rest.len());
            format!("{}{}", &url[..i + 3], &rest[..end])
        }
        None => url,
    }
}

/// The socket address of an endpoint template for a host (default port by scheme).
pub fn endpoint_socket(url_template: &str, host: IpAddr) -> Option<SocketAddr> {
    let base = base_of(url_template, &host.to_string());
    let (scheme, authority) = base.split_once("://")?;
    let authority = authority.rsplit('@').next()?;
    let port = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => p.parse().ok()?,
        _ => {
            if scheme == "https" {
                443
            } else {
                80
            }
        }
    };
    Some(SocketAddr::new(host, port))
}

/// An HTTP client for checks: no proxy (the host is local), short timeouts.
pub fn check_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("wisp-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// GETs `url` and reports ok on a 200.
pub async fn check_http(client: &reqwest::Client, url: &str, timeout: Duration) -> Check {
    let started = Instant::now();
    match tokio::time::timeout(timeout, client.get(url).send()).await {
        Err(_) => Check::Timeout {
            after_ms: timeout.as_millis() as u64,
        },
        Ok(Ok(resp)) => {
            let latency_ms = started.elapsed().as_millis() as u64;
            if resp.status().as_u16() == 200 {
                Check::Ok { latency_ms }
            } else {
                Check::HttpStatus {
                    code: resp.status().as_u16(),
                    latency_ms,
                }
            }
        }
        Ok(Err(e)) if e.is_timeout() => Check::Timeout {
            after_ms: timeout.as_millis() as u64,
        },
        Ok(Err(e)) if e.is_connect() && is_refused(&e) => Check::Refused,
        Ok(Err(e)) => Check::Error {
            reason: error_chain(&e),
        },
    }
}

/// Opens (and closes) a TCP connection.
pub async fn check_tcp(addr: SocketAddr, timeout: Duration) -> Check {
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => Check::Timeout {
            after_ms: timeout.as_millis() as u64,
        },
        Ok(Ok(_)) => Check::Ok {
            latency_ms: started.elapsed().as_millis() as u64,
        },
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::Refused,
        Ok(Err(e)) => Check::Error {
            reason: e.to_string(),
        },
    }
}

fn is_refused(e: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = s.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Resolves and checks one candidate.
async fn check_candidate(
    name: String,
    config: &Config,
    inputs: &Inputs,
    client: &reqwest::Client,
) -> CandidateReport {
    let timeout = config.host.probe_timeout.get();
    let resolution = resolve(&name, inputs, timeout).await;
    let addresses = resolution.addresses();
    let mut report = CandidateReport {
        name,
        address: addresses.first().copied(),
        resolution,
        loki: Check::NotTried,
        otlp: Check::NotTried,
    };
    for address in addresses {
        let loki = if config.loki.enabled {
            let url = format!("{}/ready", base_of(&config.loki.url, &address.to_string()));
            check_http(client, &url, timeout).await
        } else {
            Check::NotTried
        };
        let otlp = match (
            config.otlp.enabled,
            endpoint_socket(&config.otlp.endpoint, address),
        ) {
            (true, Some(sock)) => check_tcp(sock, timeout).await,
            _ => Check::NotTried,
        };
        let first = report.loki == Check::NotTried && report.otlp == Check::NotTried;
        let candidate = CandidateReport {
            name: report.name.clone(),
            resolution: report.resolution.clone(),
            address: Some(address),
            loki,
            otlp,
        };
        let usable = candidate.usable(config);
        if first || usable {
            report = candidate;
        }
        if usable {
            break;
        }
    }
    report
}

/// Resolves and checks every candidate concurrently; chooses the first usable in order.
pub async fn discover(config: &Config, inputs: &Inputs) -> Discovery {
    let client = check_client(config.host.probe_timeout.get());
    let checks = candidate_names(config)
        .into_iter()
        .map(|name| check_candidate(name, config, inputs, &client));
    let candidates: Vec<CandidateReport> = futures_util::future::join_all(checks).await;
    let chosen = candidates.iter().find(|c| c.usable(config)).and_then(|c| {
        c.address.map(|address| Chosen {
            name: c.name.clone(),
            address,
        })
    });
    Discovery { candidates, chosen }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ports_come_from_the_url_or_the_scheme() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            endpoint_socket("http://{host}:4317", ip),
            Some("127.0.0.2:4317".parse().unwrap())
        );
        assert_eq!(
            endpoint_socket("https://{host}/v1", ip),
            Some("127.0.0.2:443".parse().unwrap())
        );
    }

    #[test]
    fn the_loki_base_drops_the_push_path() {
        assert_eq!(
            base_of("http://{host}:3100/loki/api/v1/push", "10.1.2.3"),
            "http://10.1.2.3:3100"
        );
    }

    #[tokio::test]
    async fn literal_and_gateway_candidates_resolve_without_dns() {
        let dir = tempfile::tempdir().unwrap();
        let route = dir.path().join("route");
        std::fs::write(
            &route,
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
             lo\t00000000\t0300007F\t0003\t0\t0\t0\t00000000\n",
        )
        .unwrap();
        let inputs = Inputs { route_table: route };
        let t = Duration::from_secs(1);
        assert_eq!(
            resolve("127.0.0.9", &inputs, t).await,
            Resolution::Literal {
                address: "127.0.0.9".parse().unwrap()
            }
        );
        assert_eq!(
            resolve("gateway", &inputs, t).await,
            Resolution::RouteTable {
                address: "127.0.0.3".parse().unwrap()
            }
        );
    }
}
