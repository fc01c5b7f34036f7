//! Host discovery: which address reaches the host's telemetry stack.
//!
//! Candidates are tried in the configured order (an explicit `host.address` or
//! `WISP_HOST` alone when set); each is resolved ([`resolve`]: a literal IP,
//! `gateway` from the route tables, the hosts file, else the resolver) and checked
//! concurrently ([`check`]): Loki's `/ready` answering 200 (over https with
//! `loki.ca_file` and `loki.insecure_skip_verify`, as the sink), or with Loki disabled
//! the OTLP port accepting a connection. The first candidate in order that answers
//! is chosen. Every step has a timeout (`host.probe_timeout`, capped at
//! [`MAX_STEP_TIMEOUT`]), so discovery ends within two steps even when every
//! candidate hangs. `command/probe` builds `wisp-agent probe` on top of it and [`watch`]
//! keeps the daemon's choice fresh.

pub mod check;
pub mod metrics;
pub mod resolve;
pub mod route;
pub mod watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::{fill_host, redact_url, Config, OtlpProtocol};

pub use check::{check_client, check_http, check_tcp, Check};
pub use resolve::{resolve, Resolution, Resolver};
pub use watch::{current_host, watch, HostHealth};

/// A resolution or a round of checks never waits longer than this, whatever
/// `host.probe_timeout` says: two steps then fit in `probe`'s 5 s promise.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many addresses of one name are checked (the first ones, IPv4 first).
const MAX_ADDRESSES_PER_CANDIDATE: usize = 4;

/// Fixed ports of the services `probe` reports on but the agent does not use.
pub const TEMPO_PORT: u16 = 3200;
pub const PROMETHEUS_PORT: u16 = 9090;
pub const GRAFANA_PORT: u16 = 3000;
/// OTLP's standard ports, for the transport the configured endpoint does not use.
pub const OTLP_GRPC_PORT: u16 = 4317;
pub const OTLP_HTTP_PORT: u16 = 4318;

/// The proxy variables `probe` warns about (the checks themselves ignore them).
pub const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Where discovery reads the machine's network facts; tests point these elsewhere.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// `/proc/net/route`.
    pub route_table: PathBuf,
    /// `/proc/net/ipv6_route`.
    pub ipv6_route_table: PathBuf,
    /// `/etc/hosts`, read before the resolver so `probe` can say which answered.
    pub hosts_file: PathBuf,
    pub resolver: Resolver,
    /// The proxy variables of [`PROXY_VARS`] that are set, for `probe`'s diagnosis.
    pub proxy_env: BTreeMap<String, String>,
}

impl Default for Inputs {
    /// The machine's own files, the system resolver and the process environment.
    fn default() -> Self {
        Inputs {
            route_table: PathBuf::from("/proc/net/route"),
            ipv6_route_table: PathBuf::from("/proc/net/ipv6_route"),
            hosts_file: PathBuf::from("/etc/hosts"),
            resolver: Resolver::System,
            proxy_env: PROXY_VARS
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
        }
    }
}

/// One service on one address, as checked.
///
/// JSON: `port`, `target` (the URL or `address:port` checked), `required` (the
/// verdict depends on it), and the [`Check`] fields (`status`, …) inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceReport {
    pub port: u16,
    pub target: String,
    pub required: bool,
    #[serde(flatten)]
    pub check: Check,
}

/// Every service `probe` knows, on one address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Services {
    /// Loki `GET /ready` (port from `loki.url`).
    pub loki: ServiceReport,
    /// OTLP/gRPC: an empty trace export (port from `otlp.endpoint` when the
    /// protocol is grpc, else 4317).
    pub otlp_grpc: ServiceReport,
    /// OTLP/HTTP: an empty `POST /v1/traces` (port from `otlp.endpoint` when the
    /// protocol is http/*, else 4318).
    pub otlp_http: ServiceReport,
    /// Tempo `GET /ready` on 3200.
    pub tempo: ServiceReport,
    /// Prometheus `GET /-/healthy` on 9090.
    pub prometheus: ServiceReport,
    /// Grafana `GET /api/health` on 3000.
    pub grafana: ServiceReport,
}

impl Services {
    /// `(json name, human label, report)` in display order.
    pub fn iter(&self) -> [(&'static str, &'static str, &ServiceReport); 6] {
        [
            ("loki", "loki", &self.loki),
            ("otlp_grpc", "otlp grpc", &self.otlp_grpc),
            ("otlp_http", "otlp http", &self.otlp_http),
            ("tempo", "tempo", &self.tempo),
            ("prometheus", "prometheus", &self.prometheus),
            ("grafana", "grafana", &self.grafana),
        ]
    }

    /// The OTLP service the configuration exports to.
    pub fn otlp(&self, config: &Config) -> &ServiceReport {
        match config.otlp.protocol {
            OtlpProtocol::Grpc => &self.otlp_grpc,
            OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => &self.otlp_http,
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
    /// The services on `address` (all `not_checked` when it did not resolve).
    pub services: Services,
}

impl CandidateReport {
    /// Does this candidate serve what the configuration needs to choose it?
    pub fn usable(&self, config: &Config) -> bool {
        usable(&self.services, config)
    }
}

fn usable(services: &Services, config: &Config) -> bool {
    if config.loki.enabled {
        services.loki.check.is_ok()
    } else if config.otlp.enabled {
        services.otlp(config).check.answered()
    } else {
        false
    }
}

/// The outcome of one discovery round.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    pub candidates: Vec<CandidateReport>,
    /// The chosen candidate's name and address.
    pub chosen: Option<Chosen>,
}

/// The host the sinks send to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chosen {
    /// The candidate as configured (`host.lima.internal`, `gateway`, an IP).
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

/// The timeout of one step (a resolution, a round of checks).
pub fn step_timeout(config: &Config) -> Duration {
    config.host.probe_timeout.get().min(MAX_STEP_TIMEOUT)
}

/// `scheme://authority` of a URL template with `{host}` filled in.
pub(crate) fn base_of(url_template: &str, host: &str) -> String {
    let url = fill_host(url_template, host);
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
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

/// The OTLP/HTTP traces URL of an endpoint template (`/v1/traces` appended).
pub(crate) fn otlp_traces_url(endpoint_template: &str, host: &str) -> String {
    let url = fill_host(endpoint_template, host);
    let url = url.trim_end_matches('/');
    if url.ends_with("/v1/traces") {
        url.to_string()
    } else {
        format!("{url}/v1/traces")
    }
}

/// How much to check on each candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Only what choosing needs (the daemon).
    Choose,
    /// Every service (`probe`).
    Full,
}

/// The HTTP clients of one round of checks.
struct CheckClients {
    /// Every HTTP check but Loki's.
    plain: reqwest::Client,
    /// Loki's: with `[loki]`'s TLS settings, as the sink's client has them; the
    /// reason when it cannot be built (`loki.ca_file` gone since the start).
    loki: Result<reqwest::Client, String>,
}

impl CheckClients {
    fn new(config: &Config) -> Self {
        let timeout = step_timeout(config);
        let plain = check_client(timeout);
        let loki = if config.loki.enabled {
            check::loki_check_client(&config.loki, timeout)
        } else {
            Ok(plain.clone())
        };
        CheckClients { plain, loki }
    }
}

/// The services of one address, checked concurrently.
async fn check_address(
    address: IpAddr,
    config: &Config,
    clients: &CheckClients,
    depth: Depth,
) -> Services {
    let client = &clients.plain;
    let timeout = step_timeout(config);
    let host = address.to_string();
    let grpc = config.otlp.protocol == OtlpProtocol::Grpc;
    let choose_otlp = !config.loki.enabled && config.otlp.enabled;
    let full = depth == Depth::Full;
    let not_needed = "not needed to choose a host";

    // Loki.
    let loki_sock = endpoint_socket(&config.loki.url, address);
    let loki_url = format!("{}/ready", base_of(&config.loki.url, &host));
    let loki = async {
        if !config.loki.enabled {
            Check::not_checked("loki.enabled = false")
        } else if loki_sock.is_none() {
            Check::not_checked("loki.url has no usable port")
        } else {
            match &clients.loki {
                Ok(loki_client) => check_http(loki_client, &loki_url, timeout).await,
                Err(reason) => Check::Error {
                    reason: reason.clone(),
                },
            }
        }
    };

    // OTLP over gRPC.
    let grpc_sock = if grpc {
        endpoint_socket(&config.otlp.endpoint, address)
    } else {
        Some(SocketAddr::new(address, OTLP_GRPC_PORT))
    };
    let grpc_tls = grpc && fill_host(&config.otlp.endpoint, &host).starts_with("https://");
    let otlp_grpc = async {
        match grpc_sock {
            None => Check::not_checked("otlp.endpoint has no usable port"),
            Some(_) if grpc && !config.otlp.enabled => Check::not_checked("otlp.enabled = false"),
            Some(sock) if full => {
                check::check_otlp_grpc(sock, grpc_tls, &config.otlp.headers, timeout).await
            }
            Some(sock) if grpc && choose_otlp => check_tcp(sock, timeout).await,
            Some(_) => Check::not_checked(not_needed),
        }
    };

    // OTLP over HTTP.
    let http_url = if grpc {
        format!(
            "http://{}/v1/traces",
            SocketAddr::new(address, OTLP_HTTP_PORT)
        )
    } else {
        otlp_traces_url(&config.otlp.endpoint, &host)
    };
    let http_sock = if grpc {
        Some(SocketAddr::new(address, OTLP_HTTP_PORT))
    } else {
        endpoint_socket(&config.otlp.endpoint, address)
    };
    let otlp_http = async {
        match http_sock {
            None => Check::not_checked("otlp.endpoint has no usable port"),
            Some(_) if !grpc && !config.otlp.enabled => Check::not_checked("otlp.enabled = false"),
            Some(_) if full => {
                let json = config.otlp.protocol == OtlpProtocol::HttpJson;
                check::check_otlp_http(client, &http_url, json, &config.otlp.headers, timeout).await
            }
            Some(sock) if !grpc && choose_otlp => check_tcp(sock, timeout).await,
            Some(_) => Check::not_checked(not_needed),
        }
    };

    let fixed = |port: u16, path: &str| format!("http://{}{path}", SocketAddr::new(address, port));
    let tempo_url = fixed(TEMPO_PORT, "/ready");
    let prometheus_url = fixed(PROMETHEUS_PORT, "/-/healthy");
    let grafana_url = fixed(GRAFANA_PORT, "/api/health");
    let optional = |url: String| async move {
        if full {
            check_http(client, &url, timeout).await
        } else {
            Check::not_checked(not_needed)
        }
    };

    let (loki, otlp_grpc, otlp_http, tempo, prometheus, grafana) = tokio::join!(
        loki,
        otlp_grpc,
        otlp_http,
        optional(tempo_url.clone()),
        optional(prometheus_url.clone()),
        optional(grafana_url.clone()),
    );
    let port = |s: Option<SocketAddr>| s.map(|s| s.port()).unwrap_or(0);
    Services {
        loki: ServiceReport {
            port: port(loki_sock),
            target: redact_url(&loki_url),
            required: config.loki.enabled,
            check: loki,
        },
        otlp_grpc: ServiceReport {
            port: port(grpc_sock),
            target: grpc_sock.map(|s| s.to_string()).unwrap_or_default(),
            required: config.otlp.enabled && grpc,
            check: otlp_grpc,
        },
        otlp_http: ServiceReport {
            port: port(http_sock),
            target: redact_url(&http_url),
            required: config.otlp.enabled && !grpc,
            check: otlp_http,
        },
        tempo: ServiceReport {
            port: TEMPO_PORT,
            target: tempo_url,
            required: false,
            check: tempo,
        },
        prometheus: ServiceReport {
            port: PROMETHEUS_PORT,
            target: prometheus_url,
            required: false,
            check: prometheus,
        },
        grafana: ServiceReport {
            port: GRAFANA_PORT,
            target: grafana_url,
            required: false,
            check: grafana,
        },
    }
}

/// The services of a candidate that did not resolve.
fn unresolved_services(config: &Config) -> Services {
    let none = |required: bool| ServiceReport {
        port: 0,
        target: String::new(),
        required,
        check: Check::not_checked("the candidate did not resolve"),
    };
    let grpc = config.otlp.protocol == OtlpProtocol::Grpc;
    Services {
        loki: none(config.loki.enabled),
        otlp_grpc: none(config.otlp.enabled && grpc),
        otlp_http: none(config.otlp.enabled && !grpc),
        tempo: none(false),
        prometheus: none(false),
        grafana: none(false),
    }
}

/// Resolves and checks one candidate; its addresses are checked concurrently.
async fn check_candidate(
    name: String,
    config: &Config,
    inputs: &Inputs,
    clients: &CheckClients,
    depth: Depth,
) -> CandidateReport {
    let resolution = resolve(&name, inputs, step_timeout(config)).await;
    let addresses: Vec<IpAddr> = resolution
        .addresses()
        .into_iter()
        .take(MAX_ADDRESSES_PER_CANDIDATE)
        .collect();
    let checked = futures_util::future::join_all(
        addresses
            .iter()
            .map(|a| check_address(*a, config, clients, depth)),
    )
    .await;
    let pick = checked.iter().position(|s| usable(s, config)).unwrap_or(0);
    match checked.into_iter().nth(pick) {
        Some(services) => CandidateReport {
            name,
            resolution,
            address: addresses.get(pick).copied(),
            services,
        },
        None => CandidateReport {
            name,
            resolution,
            address: None,
            services: unresolved_services(config),
        },
    }
}

pub(crate) async fn discover_with(config: &Config, inputs: &Inputs, depth: Depth) -> Discovery {
    let clients = CheckClients::new(config);
    let checks = candidate_names(config)
        .into_iter()
        .map(|name| check_candidate(name, config, inputs, &clients, depth));
    let candidates: Vec<CandidateReport> = futures_util::future::join_all(checks).await;
    let chosen = candidates.iter().find(|c| c.usable(config)).and_then(|c| {
        c.address.map(|address| Chosen {
            name: c.name.clone(),
            address,
        })
    });
    Discovery { candidates, chosen }
}

/// Resolves and checks every candidate concurrently (only what choosing needs);
/// chooses the first usable in order.
pub async fn discover(config: &Config, inputs: &Inputs) -> Discovery {
    discover_with(config, inputs, Depth::Choose).await
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
        let inputs = Inputs {
            route_table: route,
            ..Inputs::default()
        };
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
                address: "127.0.0.3".parse().unwrap(),
                interface: "lo".into(),
                family: "ipv4",
            }
        );
    }
}
