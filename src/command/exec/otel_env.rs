//! The OpenTelemetry environment `exec` gives its command, so the command's own
//! spans, metrics and logs (a coding agent with telemetry on) go through the
//! agent's local receiver and join the run:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT`: the local receiver of `[receiver]`, unless
//!   exec's own environment sets it (then the command sends where the user said,
//!   and `OTEL_EXPORTER_OTLP_PROTOCOL` is left alone too). The HTTP receiver is
//!   preferred, with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` unless a
//!   protocol is set; a protocol of `grpc` gets the gRPC receiver; without the
//!   HTTP receiver the gRPC one is used with `grpc`. A receiver bound to
//!   `0.0.0.0` / `::` is reached at `127.0.0.1` / `::1`. Nothing is set when
//!   `[otlp]` is off, the receiver the protocol needs is off, or it listens on
//!   port 0 (its port is known only to the daemon).
//! - `OTEL_RESOURCE_ATTRIBUTES`: the user's own entries, kept as written, then
//!   `wisp.run.id=<trace id>`, `wisp.run.name=<job>`, `wisp.run.labels=<the
//!   label keys, comma-separated>` (when there are labels) and each `--label k=v`,
//!   values percent-encoded as the OpenTelemetry resource SDK reads them. The
//!   run's keys win: a user entry of the same key is left out (an SDK would keep
//!   either), and so is a malformed one (some SDKs drop the whole variable).
//!   Set even without a configuration: it links the command's telemetry to the
//!   run wherever it goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{Config, EnvSource};

pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";

/// The resource attributes naming the run, its job and its labels' keys: the
/// contract with the relay, which reads them back.
pub use crate::relay::run::{RUN_ID, RUN_LABELS, RUN_NAME};

/// What identifies the run to the command's telemetry.
pub struct Run<'a> {
    pub trace_id: &'a str,
    pub job: &'a str,
    pub labels: &'a [(String, String)],
}

/// The variables to set in the command's environment (see the module doc).
/// `env` is exec's own environment; an empty variable counts as unset, as the
/// OpenTelemetry SDKs take it.
pub fn command_env(
    config: Option<&Config>,
    env: &dyn EnvSource,
    run: &Run<'_>,
) -> Vec<(&'static str, String)> {
    let get = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
    let mut out = Vec::new();
    if get(ENDPOINT).is_none() {
        let protocol = get(PROTOCOL);
        if let Some((endpoint, set)) =
            config.and_then(|c| local_endpoint(c, protocol.as_deref().map(str::trim)))
        {
            out.push((ENDPOINT, endpoint));
            if let (Some(p), None) = (set, &protocol) {
                out.push((PROTOCOL, p.to_string()));
            }
        }
    }
    out.push((
        RESOURCE_ATTRIBUTES,
        resource_attributes(get(RESOURCE_ATTRIBUTES).as_deref(), run),
    ));
    out
}

/// The receiver's URL and the protocol it speaks, for a command whose protocol
/// is `protocol` (`None`: not set).
fn local_endpoint(
    config: &Config,
    protocol: Option<&str>,
) -> Option<(String, Option<&'static str>)> {
    if !config.otlp.enabled {
        return None;
    }
    let http = reachable(&config.receiver.http);
    let grpc = reachable(&config.receiver.grpc);
    match protocol {
        Some("grpc") => grpc.map(|e| (e, None)),
        // `http/protobuf`, `http/json` (or a value the SDK will judge).
        Some(_) => http.map(|e| (e, None)),
        None => http
            .map(|e| (e, Some("http/protobuf")))
            .or_else(|| grpc.map(|e| (e, Some("grpc")))),
    }
}

/// `http://ADDR` for a receiver's listen address, a wildcard made loopback;
/// `None` for a disabled one or one on port 0.
fn reachable(listen: &str) -> Option<String> {
    let addr: SocketAddr = listen.trim().parse().ok()?;
    if addr.port() == 0 {
        return None;
    }
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

/// The user's `OTEL_RESOURCE_ATTRIBUTES` merged with the run's (module doc).
fn resource_attributes(user: Option<&str>, run: &Run<'_>) -> String {
    let keys = run
        .labels
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut ours = vec![(RUN_ID, run.trace_id), (RUN_NAME, run.job)];
    if !keys.is_empty() {
        ours.push((RUN_LABELS, &keys));
    }
    ours.extend(run.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut parts: Vec<String> = user
        .unwrap_or("")
        .split(',')
        .filter(|part| {
            part.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                !k.is_empty() && !ours.iter().any(|(o, _)| *o == k)
            })
        })
        .map(|part| part.trim().to_string())
        .collect();
    parts.extend(
        ours.iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v))),
    );
    parts.join(",")
}

/// Percent-encodes what the W3C baggage octets leave out (controls, space, `"`,
/// `,`, `;`, `\`, non-ASCII), and `%` itself, so a decoder gives `v` back.
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for &b in v.as_bytes() {
        let plain =
            matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) && b != b'%';
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
