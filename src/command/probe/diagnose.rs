//! The verdict ("does it work?") and the diagnoses (what to fix, in plain
//! words) drawn from what discovery found. Pure functions of the report's
//! parts: nothing here waits or touches the network.

use std::net::IpAddr;

use super::report::{Diagnosis, Verdict};
use crate::config::{Config, OtlpProtocol};
use crate::discovery::check::Check;
use crate::discovery::{CandidateReport, Chosen, Inputs, ServiceReport};

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

pub(super) fn verdict(
    config: &Config,
    candidates: &[CandidateReport],
    chosen: Option<&Chosen>,
) -> Verdict {
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

pub(super) fn diagnose(
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
        crate::discovery::resolve::GATEWAY => (
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
        // Loopback is this machine (the VM itself): nothing to publish, the
        // service is not running here, or the host is elsewhere.
        Check::Refused { .. } if c.address.is_some_and(|a| a.is_loopback()) => (
            "refused",
            format!(
                "{service} on {at}: connection refused: nothing listens on that port on this \
                 machine ({a} is this machine itself, not the VM's host): start {service} here \
                 on port {p}, or if it runs on the host, set host.address to the host's \
                 address (or \"auto\" to discover it)",
                a = c.address.map(|a| a.to_string()).unwrap_or_default(),
                p = s.port
            ),
        ),
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
        // rustls's words for a certificate the client does not accept (unknown
        // issuer, another name, expired, a CA serving as the server).
        Check::Error { reason }
            if service == "loki" && reason.contains("invalid peer certificate") =>
        {
            (
                "certificate",
                format!(
                    "loki on {at}: its TLS certificate is not accepted ({reason}): set \
                 loki.ca_file to the PEM certificate of the CA that signed it (a \
                 self-signed one: the certificate itself, made with CA:FALSE), or \
                 loki.insecure_skip_verify = true to test without the check"
                ),
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_on(address: &str) -> String {
        let address: IpAddr = address.parse().unwrap();
        let s = ServiceReport {
            port: 3100,
            target: String::new(),
            required: true,
            check: Check::Refused { latency_ms: 1 },
        };
        let c = CandidateReport {
            name: address.to_string(),
            resolution: crate::discovery::Resolution::Literal { address },
            address: Some(address),
            services: crate::discovery::Services {
                loki: s.clone(),
                otlp_grpc: s.clone(),
                otlp_http: s.clone(),
                tempo: s.clone(),
                prometheus: s.clone(),
                grafana: s.clone(),
            },
        };
        service_diagnosis(&c, "loki", &s).unwrap().message
    }

    #[test]
    fn a_refused_port_on_the_host_says_publish_it_and_on_loopback_says_this_machine() {
        let host = refused_on("192.168.5.2");
        assert!(host.contains("publish the port on 0.0.0.0"), "{host}");
        for lo in ["127.0.0.1", "::1"] {
            let here = refused_on(lo);
            assert!(!here.contains("publish"), "{here}");
            assert!(
                here.contains("this machine itself") && here.contains("host.address"),
                "{here}"
            );
        }
    }

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
}
