//! Candidate names to addresses, saying how each resolved.
//!
//! Order: an IP literal is itself; `gateway` is the default route (IPv4 from
//! `/proc/net/route`, else IPv6 from `/proc/net/ipv6_route`); any other name is
//! looked up in the hosts file first, then through the resolver. The system
//! resolver reads `/etc/hosts` too, but parsing the hosts file ourselves lets
//! `probe` tell "hosts file" from "dns", which is what a user needs to know to fix
//! a VM image.
//!
//! Every lookup is bounded by the timeout it is given. The system resolver runs
//! `getaddrinfo` on a detached thread rather than tokio's blocking pool: a resolver
//! stuck on an unreachable DNS server then cannot hold the runtime's shutdown (and
//! so `probe`'s exit) past its deadline; the thread ends when libc gives up.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::route;
use super::Inputs;

/// The candidate name that means "the default route".
pub const GATEWAY: &str = "gateway";

/// Where names that are not in the hosts file are looked up.
#[derive(Clone, Debug, Default)]
pub enum Resolver {
    /// `getaddrinfo`: DNS and whatever else the system's NSS configuration says.
    #[default]
    System,
    /// A fixed table, for tests: a name not in it does not resolve.
    Fixed(Arc<HashMap<String, Vec<IpAddr>>>),
}

impl Resolver {
    /// A fixed table from `(name, addresses)` pairs.
    pub fn fixed<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = (S, Vec<IpAddr>)>,
        S: Into<String>,
    {
        Resolver::Fixed(Arc::new(
            entries
                .into_iter()
                .map(|(name, addrs)| (name.into().to_ascii_lowercase(), addrs))
                .collect(),
        ))
    }

    async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
        match self {
            Resolver::Fixed(table) => table
                .get(&name.to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .cloned()
                .ok_or_else(|| "no such name".to_string()),
            Resolver::System => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let owned = name.to_string();
                let spawned = std::thread::Builder::new()
                    .name("wisp-resolve".into())
                    .spawn(move || {
                        let result = (owned.as_str(), 0u16)
                            .to_socket_addrs()
                            .map(|it| it.map(|a| a.ip()).collect::<Vec<_>>())
                            .map_err(|e| e.to_string());
                        let _ = tx.send(result);
                    });
                if let Err(e) = spawned {
                    return Err(format!("cannot start a resolver thread: {e}"));
                }
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(_)) => Err("the resolver thread ended without an answer".into()),
                    Err(_) => Err(format!(
                        "the resolver did not answer within {} ms",
                        timeout.as_millis()
                    )),
                }
            }
        }
    }
}

/// How a candidate name became addresses.
///
/// JSON: an object tagged by `via` (`literal`, `hosts_file`, `dns`, `route_table`,
/// `failed`); see `docs/probe.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Resolution {
    /// The candidate is an IP address.
    Literal { address: IpAddr },
    /// Found in the hosts file (`path`).
    HostsFile {
        addresses: Vec<IpAddr>,
        path: PathBuf,
    },
    /// Through the system resolver (DNS, or another NSS source).
    Dns { addresses: Vec<IpAddr> },
    /// `gateway`: the default route of `family` (`ipv4` or `ipv6`) via `interface`.
    RouteTable {
        address: IpAddr,
        interface: String,
        family: &'static str,
    },
    /// It did not resolve; `reason` says why.
    Failed { reason: String },
}

impl Resolution {
    /// The addresses to check, IPv4 first (the host's stack usually listens there).
    pub fn addresses(&self) -> Vec<IpAddr> {
        match self {
            Resolution::Literal { address } | Resolution::RouteTable { address, .. } => {
                vec![*address]
            }
            Resolution::HostsFile { addresses, .. } | Resolution::Dns { addresses } => {
                addresses.clone()
            }
            Resolution::Failed { .. } => Vec::new(),
        }
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Resolution::Failed { .. })
    }

    /// A short name for how it resolved, as in the `via` JSON field.
    pub fn via(&self) -> &'static str {
        match self {
            Resolution::Literal { .. } => "literal",
            Resolution::HostsFile { .. } => "hosts_file",
            Resolution::Dns { .. } => "dns",
            Resolution::RouteTable { .. } => "route_table",
            Resolution::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |a: &[IpAddr]| {
            a.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Resolution::Literal { address } => write!(f, "{address} (literal)"),
            Resolution::HostsFile { addresses, path } => {
                write!(f, "{} (hosts file {})", list(addresses), path.display())
            }
            Resolution::Dns { addresses } => write!(f, "{} (dns)", list(addresses)),
            Resolution::RouteTable {
                address,
                interface,
                family,
            } => write!(f, "{address} ({family} default route via {interface})"),
            Resolution::Failed { reason } => f.write_str(reason),
        }
    }
}

/// The addresses `name` has in hosts-file text, in file order (case-insensitive).
pub fn hosts_lookup(hosts: &str, name: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(address)) = fields.next().map(|a| a.parse::<IpAddr>()) else {
            continue;
        };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(&address) {
            out.push(address);
        }
    }
    out
}

/// Resolves one candidate name.
pub async fn resolve(name: &str, inputs: &Inputs, timeout: Duration) -> Resolution {
    if let Ok(address) = name
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return Resolution::Literal { address };
    }
    if name.eq_ignore_ascii_case(GATEWAY) {
        return gateway(inputs).await;
    }
    if let Ok(text) = tokio::fs::read_to_string(&inputs.hosts_file).await {
        let addresses = ipv4_first(hosts_lookup(&text, name));
        if !addresses.is_empty() {
            return Resolution::HostsFile {
                addresses,
                path: inputs.hosts_file.clone(),
            };
        }
    }
    match inputs.resolver.lookup(name, timeout).await {
        Ok(addresses) => {
            let mut unique: Vec<IpAddr> = Vec::new();
            for a in addresses {
                if !unique.contains(&a) {
                    unique.push(a);
                }
            }
            if unique.is_empty() {
                Resolution::Failed {
                    reason: format!("{name} has no addresses"),
                }
            } else {
                Resolution::Dns {
                    addresses: ipv4_first(unique),
                }
            }
        }
        Err(e) => Resolution::Failed {
            reason: format!("{name} does not resolve ({e})"),
        },
    }
}

/// `gateway`: the IPv4 default route, else the IPv6 one.
async fn gateway(inputs: &Inputs) -> Resolution {
    let mut problems = Vec::new();
    match tokio::fs::read_to_string(&inputs.route_table).await {
        Ok(text) => match route::default_route_v4(&text) {
            Some(r) => {
                return Resolution::RouteTable {
                    address: r.gateway,
                    interface: r.interface,
                    family: "ipv4",
                }
            }
            None => problems.push(format!(
                "no IPv4 default route in {}",
                inputs.route_table.display()
            )),
        },
        Err(e) => problems.push(format!("cannot read {}: {e}", inputs.route_table.display())),
    }
    match tokio::fs::read_to_string(&inputs.ipv6_route_table).await {
        Ok(text) => match route::default_route_v6(&text) {
            Some(r) => {
                return Resolution::RouteTable {
                    address: r.gateway,
                    interface: r.interface,
                    family: "ipv6",
                }
            }
            None => problems.push(format!(
                "no IPv6 default route in {}",
                inputs.ipv6_route_table.display()
            )),
        },
        Err(e) => problems.push(format!(
            "cannot read {}: {e}",
            inputs.ipv6_route_table.display()
        )),
    }
    Resolution::Failed {
        reason: problems.join("; "),
    }
}

fn ipv4_first(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort_by_key(|a| a.is_ipv6());
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lines_match_any_alias_and_skip_comments() {
        let hosts = "127.0.0.1 localhost\n\
                     # 10.0.0.1 host.lima.internal\n\
                     192.168.5.2\tHOST.lima.internal lima # the host\n\
                     garbage line\n\
                     fd00::2 host.lima.internal\n";
        assert_eq!(
            hosts_lookup(hosts, "host.lima.internal"),
            vec![
                "192.168.5.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert!(hosts_lookup(hosts, "the").is_empty());
        assert!(hosts_lookup(hosts, "garbage").is_empty());
    }
}
