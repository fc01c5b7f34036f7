//! The default gateway, read from the kernel's route tables (`/proc/net/route`
//! for IPv4, `/proc/net/ipv6_route` for IPv6).
//!
//! Parsing is forgiving: a line that does not have the expected columns is
//! skipped, so a garbage file yields "no default route", never an error or a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kernel's `RTF_GATEWAY` flag: the route goes through a next hop.
const RTF_GATEWAY: u32 = 0x2;

/// A default route: the next hop and the interface it leaves by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: IpAddr,
    pub interface: String,
}

/// The IPv4 default gateway in `/proc/net/route` text, if there is one.
pub fn default_gateway_v4(route_table: &str) -> Option<Ipv4Addr> {
    match default_route_v4(route_table)?.gateway {
        IpAddr::V4(gw) => Some(gw),
        IpAddr::V6(_) => None,
    }
}

/// The IPv4 default route in `/proc/net/route` text, if there is one.
///
/// Columns: `Iface Destination Gateway Flags RefCnt Use Metric Mask …`, addresses
/// as hex of the in-memory (little-endian) u32. The default route has destination
/// and mask 0 and the RTF_GATEWAY flag (0x2); of several, the lowest metric wins.
pub fn default_route_v4(route_table: &str) -> Option<DefaultRoute> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 8 {
                return None;
            }
            let dest = u32::from_str_radix(cols[1], 16).ok()?;
            let gw = u32::from_str_radix(cols[2], 16).ok()?;
            let flags = u32::from_str_radix(cols[3], 16).ok()?;
            let metric: u32 = cols[6].parse().ok()?;
            let mask = u32::from_str_radix(cols[7], 16).ok()?;
            (dest == 0 && mask == 0 && flags & RTF_GATEWAY != 0 && gw != 0).then(|| {
                let route = DefaultRoute {
                    gateway: IpAddr::V4(Ipv4Addr::from(gw.to_le_bytes())),
                    interface: cols[0].to_string(),
                };
                (metric, route)
            })
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route)
}

/// The IPv6 default route in `/proc/net/ipv6_route` text, if there is one.
///
/// No header; columns: `dest dest_prefix src src_prefix next_hop metric refcnt use
/// flags iface`, addresses as 32 hex digits in network order, metric and flags in
/// hex. The default route is `::/0` with a non-zero next hop and RTF_GATEWAY (the
/// kernel's "unreachable" default on `lo` has neither); the lowest metric wins.
pub fn default_route_v6(route_table: &str) -> Option<DefaultRoute> {
    route_table
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                return None;
            }
            let dest = parse_v6(cols[0])?;
            let prefix = u8::from_str_radix(cols[1], 16).ok()?;
            let next_hop = parse_v6(cols[4])?;
            let metric = u32::from_str_radix(cols[5], 16).ok()?;
            let flags = u32::from_str_radix(cols[8], 16).ok()?;
            (dest.is_unspecified()
                && prefix == 0
                && !next_hop.is_unspecified()
                && flags & RTF_GATEWAY != 0)
                .then(|| {
                    let route = DefaultRoute {
                        gateway: IpAddr::V6(next_hop),
                        interface: cols[9].to_string(),
                    };
                    (metric, route)
                })
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, route)| route)
}

fn parse_v6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    #[test]
    fn finds_limas_user_mode_gateway() {
        let table = format!(
            "{HEADER}eth0\t00000000\t0205A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             eth0\t0005A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
        );
        assert_eq!(
            default_gateway_v4(&table),
            Some(Ipv4Addr::new(192, 168, 5, 2))
        );
    }

    #[test]
    fn lowest_metric_wins() {
        let table = format!(
            "{HEADER}eth1\t00000000\t017AA8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
             eth0\t00000000\t0300007F\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        );
        assert_eq!(
            default_gateway_v4(&table),
            Some(Ipv4Addr::new(127, 0, 0, 3))
        );
    }

    const V6: &str = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn finds_the_ipv6_default_route_and_skips_the_unreachable_one() {
        assert_eq!(
            default_route_v6(V6),
            Some(DefaultRoute {
                gateway: "fd00::1".parse().unwrap(),
                interface: "eth0".into()
            })
        );
        assert_eq!(default_route_v6(V6.lines().nth(2).unwrap()), None);
        assert_eq!(default_route_v6("garbage\n0 0 0 0 0 0 0 0 0 0\n"), None);
    }

    #[test]
    fn the_ipv4_route_names_its_interface() {
        let table =
            format!("{HEADER}eth0\t00000000\t0205A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n");
        assert_eq!(default_route_v4(&table).unwrap().interface, "eth0");
    }

    #[test]
    fn garbage_and_missing_routes_give_none() {
        assert_eq!(default_gateway_v4(""), None);
        assert_eq!(
            default_gateway_v4("garbage\nmore garbage here x y z w v\n"),
            None
        );
        assert_eq!(
            default_gateway_v4(&format!(
                "{HEADER}eth0\t0005A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n"
            )),
            None
        );
        assert_eq!(
            default_gateway_v4(&format!(
                "{HEADER}eth0\tZZZZ\t0205A8C0\t0003\t0\t0\t100\t00000000\n"
            )),
            None
        );
    }
}
