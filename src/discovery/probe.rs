//! `wisp-agent probe`: every candidate, how it resolved, every service on it, the
//! chosen host, a verdict, and what to fix in plain words; `--push` also sends a
//! test line and span and reads the line back.
//!
//! Promises: without `--push` the probe ends within two step timeouts (resolution,
//! then one concurrent round of checks; see [`super::MAX_STEP_TIMEOUT`]), so under
//! 5 s even when every candidate hangs. Secrets (proxy URLs, passwords, tokens,
//! OTLP headers) never appear in the output.
//!
//! # JSON (`--json`)
//!
//! One document; these field names are stable (see `docs/probe.md`):
//!
//! - `version`: the agent's version; `config`: where the configuration came from.
//! - `candidates[]`: `name`; `resolution` (`via`: `literal` | `hosts_file` | `dns` |
//!   `route_table` | `failed`, with `address`/`addresses`, `path`, `interface`,
//!   `family` or `reason`); `address` (the address checked, or null); `services`
//!   with `loki`, `otlp_grpc`, `otlp_http`, `tempo`, `prometheus`, `grafana`, each
//!   `{port, target, required, status, …}` where `status` is `ok` | `http_status`
//!   | `grpc_status` | `refused` | `timeout` | `error` | `not_checked` and the other
//!   fields are `latency_ms`, `code`, `name`, `message`, `body`, `after_ms`, `reason`.
//! - `chosen`: `{name, address}` or null.
//! - `verdict`: `{ok, summary}`; `ok` is the exit status 0.
//! - `diagnoses[]`: `{kind, candidate, message}`; `kind` is one of
//!   `name_does_not_resolve`, `no_default_route`, `refused`, `timeout`,
//!   `not_ready`, `http_status`, `error`, `otlp_down`, `proxy`, `push_failed`.
//! - `push`: null without `--push`, else `{token, loki, otlp}`, each step
//!   `{status: ok | failed | skipped, detail, latency_ms}`.
//! - `elapsed_ms`: how long the probe took.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde::Serialize;

use super::check::{self, Check};
use super::{
    base_of, discover_with, endpoint_socket, otlp_traces_url, step_timeout, CandidateReport,
    Chosen, Depth, Inputs, ServiceReport,
};
use crate::cli::ProbeArgs;
use crate::config::{fill_host, Config, Loaded, OtlpProtocol};

/// How long `--push` waits for the test line to come back from Loki's query API.
pub const PUSH_READ_BACK_DEADLINE: Duration = Duration::from_secs(10);
/// One push or export request of `--push`.
const PUSH_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two read-back queries.
const READ_BACK_INTERVAL: Duration = Duration::from_millis(250);
/// The `job` label of the test line.
pub const PROBE_JOB: &str = "wisp-agent-probe";

/// Everything `probe` found; printed as a table or, with `--json`, as JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub version: &'static str,
    pub config: String,
    pub candidates: Vec<CandidateReport>,
    pub chosen: Option<Chosen>,
    pub verdict: Verdict,
    pub diagnoses: Vec<Diagnosis>,
    pub push: Option<PushReport>,
    pub elapsed_ms: u64,
}

/// The answer to "does it work?": `ok` is exit status 0.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub summary: String,
}

/// One known failure, named, with what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    pub kind: &'static str,
    /// The candidate it is about, if any.
    pub candidate: Option<String>,
    pub message: String,
}

/// What `--push` did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// The unique text in the test line (and the span's `wisp.probe.token`).
    pub token: String,
    pub loki: PushStep,
    pub otlp: PushStep,
}

#[derive(Clone, Debug, Serialize)]
pub struct PushStep {
    pub status: PushStatus,
    pub detail: String,
    pub latency_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushStatus {
    Ok,
    Failed,
    Skipped,
}

impl PushStep {
    fn skipped(detail: &str) -> Self {
        PushStep {
            status: PushStatus::Skipped,
            detail: detail.to_string(),
            latency_ms: 0,
        }
    }

    fn failed(detail: String, started: Instant) -> Self {
        PushStep {
            status: PushStatus::Failed,
            detail,
            latency_ms: ms(started.elapsed()),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `wisp-agent probe`: runs the probe, prints it, returns the exit status
/// (0 when every required service answers on the chosen host, else 1).
pub async fn probe(
    loaded: &Loaded,
    args: &ProbeArgs,
    inputs: &Inputs,
) -> std::io::Result<ExitCode> {
    let mut report = run_probe(&loaded.config, inputs, args.push).await;
    report.config = loaded.origin.to_string();
    let mut out = std::io::stdout().lock();
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
        writeln!(out, "{text}")?;
    } else {
        out.write_all(render_text(&report).as_bytes())?;
    }
    out.flush()?;
    Ok(if report.verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Resolves and checks every candidate and service, chooses, diagnoses, and with
/// `push` sends the test line and span to the chosen host.
pub async fn run_probe(config: &Config, inputs: &Inputs, push: bool) -> ProbeReport {
    let started = Instant::now();
    let discovery = discover_with(config, inputs, Depth::Full).await;
    let mut diagnoses = diagnose(
        config,
        inputs,
        &discovery.candidates,
        discovery.chosen.as_ref(),
    );
    let mut verdict = verdict(config, &discovery.candidates, discovery.chosen.as_ref());
    let push = match (push, &discovery.chosen) {
        (false, _) => None,
        (true, None) => Some(PushReport {
            token: String::new(),
            loki: PushStep::skipped("no host chosen"),
            otlp: PushStep::skipped("no host chosen"),
        }),
        (true, Some(chosen)) => Some(push_test_data(config, chosen).await),
    };
    if let Some(p) = &push {
        for (what, step) in [("loki", &p.loki), ("otlp", &p.otlp)] {
            if step.status == PushStatus::Failed {
                verdict.ok = false;
                diagnoses.push(Diagnosis {
                    kind: "push_failed",
                    candidate: discovery.chosen.as_ref().map(|c| c.name.clone()),
                    message: format!("the test push to {what} failed: {}", step.detail),
                });
            }
        }
        if !verdict.ok && discovery.chosen.is_some() && verdict.summary.starts_with("ok") {
            verdict.summary = "the host answers but the test push failed".into();
        }
    }
    ProbeReport {
        version: env!("CARGO_PKG_VERSION"),
        config: String::new(),
        candidates: discovery.candidates,
        chosen: discovery.chosen,
        verdict,
        diagnoses,
        push,
        elapsed_ms: ms(started.elapsed()),
    }
}

fn chosen_report<'a>(
    candidates: &'a [CandidateReport],
    chosen: Option<&Chosen>,
) -> Option<&'a CandidateReport> {
    let chosen = chosen?;
    candidates
        .iter()
        .find(|c| c.name == chosen.name && c.address == Some(chosen.address))
}

fn protocol_name(config: &Config) -> &'static str {
    match config.otlp.protocol {
        OtlpProtocol::Grpc => "grpc",
        OtlpProtocol::HttpProtobuf => "http/protobuf",
        OtlpProtocol::HttpJson => "http/json",
    }
}

fn verdict(config: &Config, candidates: &[CandidateReport], chosen: Option<&Chosen>) -> Verdict {
    let Some(report) = chosen_report(candidates, chosen) else {
        let tried = candidates
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let what = if config.loki.enabled {
            "Loki /ready answers 200"
        } else if config.otlp.enabled {
            "the OTLP port accepts a connection"
        } else {
            "a service is enabled (loki and otlp are both disabled)"
        };
        return Verdict {
            ok: false,
            summary: format!("no host: on no candidate ({tried}) {what}"),
        };
    };
    let mut missing = Vec::new();
    if config.loki.enabled && !report.services.loki.check.is_ok() {
        missing.push(format!("loki {}", report.services.loki.check));
    }
    let otlp = report.services.otlp(config);
    if config.otlp.enabled && !otlp.check.is_ok() {
        missing.push(format!(
            "otlp ({}) :{} {}",
            protocol_name(config),
            otlp.port,
            otlp.check
        ));
    }
    let host = format!(
        "{} ({})",
        report.name,
        report.address.map(|a| a.to_string()).unwrap_or_default()
    );
    if missing.is_empty() {
        let mut served = Vec::new();
        if config.loki.enabled {
            served.push("Loki");
        }
        if config.otlp.enabled {
            served.push("OTLP");
        }
        Verdict {
            ok: true,
            summary: format!("ok: {} reachable on {host}", served.join(" and ")),
        }
    } else {
        Verdict {
            ok: false,
            summary: format!("host {host} chosen, but {}", missing.join("; ")),
        }
    }
}

fn diagnose(
    config: &Config,
    inputs: &Inputs,
    candidates: &[CandidateReport],
    chosen: Option<&Chosen>,
) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let chosen_report = chosen_report(candidates, chosen);
    match chosen_report {
        // A host answers: only what is wrong with it matters, not the candidates
        // that are expected to fail on this kind of VM.
        Some(report) => {
            if config.otlp.enabled {
                let otlp = report.services.otlp(config);
                if !otlp.check.is_ok() {
                    out.push(otlp_down(config, report, otlp));
                }
            }
        }
        None => {
            for c in candidates {
                if c.resolution.is_failed() {
                    out.push(resolution_diagnosis(c));
                    continue;
                }
                let required = [
                    ("loki", &c.services.loki),
                    ("otlp", c.services.otlp(config)),
                ];
                for (service, s) in required {
                    if !s.required {
                        continue;
                    }
                    if let Some(d) = service_diagnosis(c, service, s) {
                        out.push(d);
                    }
                }
            }
        }
    }
    if let Some(d) = proxy_diagnosis(inputs, candidates, chosen) {
        out.push(d);
    }
    out
}

fn resolution_diagnosis(c: &CandidateReport) -> Diagnosis {
    let reason = c.resolution.to_string();
    let (kind, message) = match c.name.as_str() {
        super::resolve::GATEWAY => (
            "no_default_route",
            format!(
                "gateway: {reason}: this network has no default route to find the host by; \
                 set host.address (or WISP_HOST) to the host's IP"
            ),
        ),
        "host.lima.internal" => (
            "name_does_not_resolve",
            format!(
                "{reason}: not a Lima VM (or Lima older than 0.15)? the `gateway` candidate \
                 (the default route) reaches the host from most VMs"
            ),
        ),
        "host.docker.internal" => (
            "name_does_not_resolve",
            format!(
                "{reason}: Docker Desktop and Colima define this name inside containers only \
                 (or with --add-host host.docker.internal:host-gateway); try `gateway`"
            ),
        ),
        _ => (
            "name_does_not_resolve",
            format!("{reason}: check the name (and /etc/hosts), or use `gateway` or the host's IP"),
        ),
    };
    Diagnosis {
        kind,
        candidate: Some(c.name.clone()),
        message,
    }
}

fn where_(c: &CandidateReport, s: &ServiceReport) -> String {
    match c.address {
        Some(a) if a.to_string() == c.name => format!("{a}:{}", s.port),
        Some(a) => format!("{} ({a}) port {}", c.name, s.port),
        None => c.name.clone(),
    }
}

fn service_diagnosis(c: &CandidateReport, service: &str, s: &ServiceReport) -> Option<Diagnosis> {
    let at = where_(c, s);
    let (kind, message) = match &s.check {
        Check::Ok { .. } | Check::NotChecked { .. } => return None,
        Check::Refused { .. } => (
            "refused",
            format!(
                "{service} on {at}: connection refused: the address answers but nothing \
                 listens on that port; if the stack runs there it probably listens on \
                 127.0.0.1 only: publish the port on 0.0.0.0 (docker: -p 0.0.0.0:{p}:{p})",
                p = s.port
            ),
        ),
        Check::Timeout { after_ms } => (
            "timeout",
            format!(
                "{service} on {at}: no answer within {after_ms} ms: a firewall probably drops \
                 the traffic (Linux: `sudo ufw allow from <vm subnet> to any port {p}`; macOS: \
                 System Settings > Network > Firewall), or this address is not the host",
                p = s.port
            ),
        ),
        Check::HttpStatus {
            code: 503, body, ..
        } if service == "loki" => (
            "not_ready",
            format!(
                "loki on {at} is up but not ready (HTTP 503{}): it is still starting (wait \
                 a few seconds) or its ring is unhealthy (see Loki's own log)",
                if body.is_empty() {
                    String::new()
                } else {
                    format!(": {body}")
                }
            ),
        ),
        Check::HttpStatus { .. } | Check::GrpcStatus { .. } => (
            "http_status",
            format!(
                "{service} on {at} answered {}: something listens on that port but it does \
                 not answer as {service} does (another program, or a proxy in front?)",
                s.check
            ),
        ),
        Check::Error { reason } => {
            let hint = match c.address {
                Some(IpAddr::V6(a)) if (a.segments()[0] & 0xffc0) == 0xfe80 => {
                    ": a link-local IPv6 gateway needs an interface; set host.address to the \
                     host's IPv4 address or a global IPv6 one"
                }
                _ => "",
            };
            ("error", format!("{service} on {at}: {reason}{hint}"))
        }
    };
    Some(Diagnosis {
        kind,
        candidate: Some(c.name.clone()),
        message,
    })
}

fn otlp_down(config: &Config, c: &CandidateReport, otlp: &ServiceReport) -> Diagnosis {
    let loki_note = if config.loki.enabled {
        format!("Loki answers on {}, but ", c.name)
    } else {
        String::new()
    };
    let detail = service_diagnosis(c, "otlp", otlp)
        .map(|d| d.message)
        .unwrap_or_else(|| format!("otlp: {}", otlp.check));
    Diagnosis {
        kind: "otlp_down",
        candidate: Some(c.name.clone()),
        message: format!(
            "{loki_note}OTLP ({}) on port {} does not: is the OpenTelemetry collector running \
             and publishing that port? Traces and metrics wait in the buffer meanwhile. ({detail})",
            protocol_name(config),
            otlp.port
        ),
    }
}

/// Warns when proxy variables are set and `NO_PROXY` does not cover the host:
/// the agent ignores proxies for the host, but the programs it relays for and
/// `curl` would not.
fn proxy_diagnosis(
    inputs: &Inputs,
    candidates: &[CandidateReport],
    chosen: Option<&Chosen>,
) -> Option<Diagnosis> {
    let set: Vec<&str> = inputs
        .proxy_env
        .iter()
        .filter(|(k, v)| !k.eq_ignore_ascii_case("no_proxy") && !v.trim().is_empty())
        .map(|(k, _)| k.as_str())
        .collect();
    if set.is_empty() {
        return None;
    }
    let no_proxy: String = inputs
        .proxy_env
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("no_proxy"))
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    // The hosts that matter: the chosen one, else every resolved candidate.
    let hosts: Vec<(String, Option<IpAddr>)> = match chosen {
        Some(c) => vec![(c.name.clone(), Some(c.address))],
        None => candidates
            .iter()
            .filter(|c| !c.resolution.is_failed())
            .map(|c| (c.name.clone(), c.address))
            .collect(),
    };
    let uncovered: Vec<String> = hosts
        .iter()
        .filter(|(name, address)| !no_proxy_covers(&no_proxy, name, *address))
        .map(|(name, address)| match address {
            Some(a) if a.to_string() != *name => format!("{name},{a}"),
            _ => name.clone(),
        })
        .collect();
    if uncovered.is_empty() && !no_proxy.is_empty() {
        return None;
    }
    let listed = if uncovered.is_empty() {
        "the host".to_string()
    } else {
        uncovered.join(",")
    };
    Some(Diagnosis {
        kind: "proxy",
        candidate: chosen.map(|c| c.name.clone()),
        message: format!(
            "proxy variables are set ({}) and NO_PROXY does not cover {listed}: wisp-agent \
             ignores proxies for the host, but curl and the programs whose OTLP it relays \
             would send host traffic through the proxy: add {listed} to NO_PROXY and no_proxy",
            set.join(", ")
        ),
    })
}

/// Does a `NO_PROXY` list cover a host? Entries: `*`, an IP, an IP/CIDR, a domain
/// (`example.com`, `.example.com`, `*.example.com` cover its subdomains too).
pub fn no_proxy_covers(no_proxy: &str, name: &str, address: Option<IpAddr>) -> bool {
    let name = name
        .trim_matches(|c| c == '[' || c == ']')
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let bare = entry.trim_matches(|c| c == '[' || c == ']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                return Some(ip) == address || bare == name;
            }
            if let Some((net, bits)) = bare.split_once('/') {
                return match (net.parse::<IpAddr>(), bits.parse::<u32>(), address) {
                    (Ok(net), Ok(bits), Some(a)) => in_cidr(a, net, bits),
                    _ => false,
                };
            }
            let domain = entry.trim_start_matches("*.").trim_start_matches('.');
            name == domain || name.ends_with(&format!(".{domain}"))
        })
}

fn in_cidr(address: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (address, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The table a person reads.
pub fn render_text(r: &ProbeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "wisp-agent {} probe", r.version);
    if !r.config.is_empty() {
        let _ = writeln!(s, "configuration: {}", r.config);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<24} {:<13} ADDRESS", "CANDIDATE", "RESOLVED VIA");
    for c in &r.candidates {
        let via = c.resolution.via().replace('_', " ");
        let address = match (&c.resolution, c.address) {
            (super::Resolution::Failed { reason }, _) => reason.clone(),
            (
                super::Resolution::RouteTable {
                    interface, family, ..
                },
                Some(a),
            ) => format!("{a} ({family} default route via {interface})"),
            (super::Resolution::HostsFile { path, .. }, Some(a)) => {
                format!("{a} (from {})", path.display())
            }
            (_, Some(a)) => a.to_string(),
            (_, None) => String::new(),
        };
        let _ = writeln!(s, "{:<24} {:<13} {}", c.name, via, address);
        if c.resolution.is_failed() {
            continue;
        }
        for (_, label, service) in c.services.iter() {
            let required = if service.required { "  (required)" } else { "" };
            let _ = writeln!(
                s,
                "    {:<11} :{:<5} {}{}",
                label, service.port, service.check, required
            );
        }
    }
    let _ = writeln!(s);
    match &r.chosen {
        Some(c) => {
            let _ = writeln!(s, "chosen host: {} ({})", c.name, c.address);
        }
        None => {
            let _ = writeln!(s, "chosen host: none");
        }
    }
    let _ = writeln!(s, "verdict: {}", r.verdict.summary);
    if let Some(p) = &r.push {
        let _ = writeln!(s, "test push (token {}):", p.token);
        for (what, step) in [("loki", &p.loki), ("otlp", &p.otlp)] {
            let status = match step.status {
                PushStatus::Ok => "ok",
                PushStatus::Failed => "FAILED",
                PushStatus::Skipped => "skipped",
            };
            let _ = writeln!(
                s,
                "    {what:<5} {status} ({} ms): {}",
                step.latency_ms, step.detail
            );
        }
    }
    if !r.diagnoses.is_empty() {
        let _ = writeln!(s, "\nwhat to fix:");
        for d in &r.diagnoses {
            let _ = writeln!(s, "  - {}", d.message);
        }
    }
    let _ = writeln!(s, "\n(probe took {} ms)", r.elapsed_ms);
    s
}

/// A token unique enough to find one line among a Loki's: time, pid and a
/// process-random hash.
fn unique_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("probe-{:016x}", h.finish())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn push_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PUSH_REQUEST_TIMEOUT)
        .connect_timeout(PUSH_REQUEST_TIMEOUT)
        .user_agent(concat!("wisp-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

async fn push_test_data(config: &Config, chosen: &Chosen) -> PushReport {
    let token = unique_token();
    let (loki, otlp) = tokio::join!(
        async {
            if config.loki.enabled {
                push_loki_line(config, chosen, &token).await
            } else {
                PushStep::skipped("loki.enabled = false")
            }
        },
        async {
            if config.otlp.enabled {
                push_span(config, chosen, &token).await
            } else {
                PushStep::skipped("otlp.enabled = false")
            }
        }
    );
    PushReport { token, loki, otlp }
}

/// Adds the tenant and credentials Loki is configured with; the error names the
/// file that could not be read (never its content).
fn loki_auth(
    config: &Config,
    mut request: reqwest::RequestBuilder,
) -> Result<reqwest::RequestBuilder, String> {
    if !config.loki.tenant.is_empty() {
        request = request.header("X-Scope-OrgID", config.loki.tenant.as_str());
    }
    if let Some(auth) = &config.loki.basic_auth {
        let password = std::fs::read_to_string(&auth.password_file)
            .map_err(|e| format!("cannot read {}: {e}", auth.password_file.display()))?;
        request = request.basic_auth(&auth.username, Some(password.trim_end()));
    }
    if let Some(path) = &config.loki.bearer_token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        request = request.bearer_auth(token.trim());
    }
    Ok(request)
}

/// Pushes one line (JSON encoding) and polls `query_range` until it is there.
async fn push_loki_line(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let client = push_client();
    let host = chosen.host();
    let push_url = fill_host(&config.loki.url, &host);
    let hostname = if config.agent.hostname.is_empty() {
        hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    } else {
        config.agent.hostname.clone()
    };
    let sent_at = now_nanos();
    let line = format!("wisp-agent probe test line {token}");
    let body = serde_json::json!({
        "streams": [{
            "stream": { "job": PROBE_JOB, "host": hostname },
            "values": [[sent_at.to_string(), line]],
        }]
    });
    let request = client
        .post(&push_url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    let request = match loki_auth(config, request) {
        Ok(r) => r,
        Err(e) => return PushStep::failed(e, started),
    };
    match request.send().await {
        Ok(resp) if resp.status().is_success() => {}
        Ok(resp) => {
            let code = resp.status().as_u16();
            let text = check::excerpt(&resp.text().await.unwrap_or_default());
            return PushStep::failed(format!("the push answered HTTP {code}: {text}"), started);
        }
        Err(e) => {
            return PushStep::failed(
                format!("the push failed: {}", check::error_chain(&e.without_url())),
                started,
            )
        }
    }
    let pushed_ms = ms(started.elapsed());

    let query_url = format!(
        "{}/loki/api/v1/query_range",
        base_of(&config.loki.url, &host)
    );
    let query = format!("{{job=\"{PROBE_JOB}\"}} |= \"{token}\"");
    let window = Duration::from_secs(600).as_nanos();
    let start = sent_at.saturating_sub(window).to_string();
    let end = (sent_at + window).to_string();
    let deadline = tokio::time::Instant::now() + PUSH_READ_BACK_DEADLINE;
    let mut last;
    loop {
        let request = client.get(&query_url).query(&[
            ("query", query.as_str()),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("limit", "100"),
            ("direction", "backward"),
        ]);
        match loki_auth(config, request) {
            Err(e) => return PushStep::failed(e, started),
            Ok(request) => match request.send().await {
                Ok(resp) if resp.status().is_success() => match resp.text().await {
                    Ok(text) if query_has_line(&text, token) => {
                        return PushStep {
                            status: PushStatus::Ok,
                            detail: format!(
                                "pushed in {pushed_ms} ms and read back through query_range after {} ms",
                                ms(started.elapsed())
                            ),
                            latency_ms: ms(started.elapsed()),
                        }
                    }
                    Ok(_) => last = "query_range does not return the line yet".into(),
                    Err(e) => last = format!("query_range: {}", check::error_chain(&e.without_url())),
                },
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let text = check::excerpt(&resp.text().await.unwrap_or_default());
                    last = format!("query_range answered HTTP {code}: {text}");
                }
                Err(e) => last = format!("query_range: {}", check::error_chain(&e.without_url())),
            },
        }
        if tokio::time::Instant::now() + READ_BACK_INTERVAL > deadline {
            return PushStep::failed(
                format!(
                    "pushed (accepted), but not read back within {} s: {last}",
                    PUSH_READ_BACK_DEADLINE.as_secs()
                ),
                started,
            );
        }
        tokio::time::sleep(READ_BACK_INTERVAL).await;
    }
}

/// Does a `query_range` answer (streams) hold a line containing `token`?
fn query_has_line(body: &str, token: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let Some(result) = v.pointer("/data/result").and_then(|r| r.as_array()) else {
        return false;
    };
    result.iter().any(|stream| {
        stream
            .get("values")
            .and_then(|vals| vals.as_array())
            .is_some_and(|vals| {
                vals.iter().any(|pair| {
                    pair.get(1)
                        .and_then(|l| l.as_str())
                        .is_some_and(|l| l.contains(token))
                })
            })
    })
}

fn test_span_request(config: &Config, token: &str) -> ExportTraceServiceRequest {
    let string_kv = |key: &str, value: &str| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    };
    let end = u64::try_from(now_nanos()).unwrap_or(u64::MAX);
    let span = Span {
        trace_id: random_bytes::<16>().to_vec(),
        span_id: random_bytes::<8>().to_vec(),
        name: "wisp-agent probe".into(),
        kind: SpanKind::Internal as i32,
        start_time_unix_nano: end.saturating_sub(1_000_000),
        end_time_unix_nano: end,
        attributes: vec![string_kv("wisp.probe.token", token)],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string_kv("service.name", &config.otlp.service_name)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wisp-agent".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends one span per `otlp.protocol` and reports what the collector answered.
async fn push_span(config: &Config, chosen: &Chosen, token: &str) -> PushStep {
    let started = Instant::now();
    let request = test_span_request(config, token);
    let host = chosen.host();
    let accepted = |rejected: i64, message: &str| {
        if rejected > 0 {
            PushStep::failed(
                format!("the collector rejected the span: {message}"),
                started,
            )
        } else {
            PushStep {
                status: PushStatus::Ok,
                detail: "the collector accepted the span".into(),
                latency_ms: ms(started.elapsed()),
            }
        }
    };
    match config.otlp.protocol {
        OtlpProtocol::Grpc => {
            if fill_host(&config.otlp.endpoint, &host).starts_with("https://") {
                return PushStep::skipped("probe --push sends gRPC over plain HTTP/2 only");
            }
            let Some(sock) = endpoint_socket(&config.otlp.endpoint, chosen.address) else {
                return PushStep::failed("otlp.endpoint has no usable port".into(), started);
            };
            let request = check::grpc_request(request, &config.otlp.headers);
            let timeout = PUSH_REQUEST_TIMEOUT.max(step_timeout(config));
            match tokio::time::timeout(timeout, check::grpc_export(sock, request, timeout)).await {
                Err(_) => PushStep::failed(
                    format!("no answer from {sock} within {} s", timeout.as_secs()),
                    started,
                ),
                Ok(Ok(resp)) => match resp.partial_success {
                    Some(p) => accepted(p.rejected_spans, &p.error_message),
                    None => accepted(0, ""),
                },
                Ok(Err(check::GrpcFailure::Status(status))) => PushStep::failed(
                    format!(
                        "the collector answered gRPC {:?}: {}",
                        status.code(),
                        check::excerpt(status.message())
                    ),
                    started,
                ),
                Ok(Err(check::GrpcFailure::Connect(reason))) => {
                    PushStep::failed(format!("cannot connect to {sock}: {reason}"), started)
                }
            }
        }
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let json = config.otlp.protocol == OtlpProtocol::HttpJson;
            let (content_type, body) = if json {
                match serde_json::to_vec(&request) {
                    Ok(b) => ("application/json", b),
                    Err(e) => {
                        return PushStep::failed(format!("cannot encode the span: {e}"), started)
                    }
                }
            } else {
                ("application/x-protobuf", request.encode_to_vec())
            };
            let url = otlp_traces_url(&config.otlp.endpoint, &host);
            let mut req = push_client()
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
            for (k, v) in &config.otlp.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => accepted(0, ""),
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let text = check::excerpt(&resp.text().await.unwrap_or_default());
                    PushStep::failed(
                        format!("the collector answered HTTP {code}: {text}"),
                        started,
                    )
                }
                Err(e) => PushStep::failed(check::error_chain(&e.without_url()), started),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_entries_cover_names_addresses_and_networks() {
        let a: Option<IpAddr> = Some("192.168.5.2".parse().unwrap());
        assert!(no_proxy_covers("localhost,192.168.5.2", "gateway", a));
        assert!(no_proxy_covers("192.168.0.0/16", "gateway", a));
        assert!(no_proxy_covers(".internal", "host.lima.internal", a));
        assert!(no_proxy_covers("*.lima.internal", "host.lima.internal", a));
        assert!(no_proxy_covers("*", "x", None));
        assert!(!no_proxy_covers("localhost,10.0.0.0/8", "gateway", a));
        assert!(!no_proxy_covers("", "gateway", a));
        assert!(!no_proxy_covers("ternal", "host.lima.internal", a));
    }

    #[test]
    fn query_answers_are_searched_for_the_token() {
        let body = r#"{"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"job":"wisp-agent-probe"},"values":[["1","wisp-agent probe test line probe-42"]]}]}}"#;
        assert!(query_has_line(body, "probe-42"));
        assert!(!query_has_line(body, "probe-43"));
        assert!(!query_has_line("not json", "probe-42"));
    }
}
