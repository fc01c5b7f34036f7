//! The default gateway, read from the kernel's route table (`/proc/net/route`).

use std::net::Ipv4Addr;

/// The IPv4 default gateway in `/proc/net/route` text, if there is one.
///
/// Columns: `Iface Destination Gateway Flags RefCnt Use Metric Mask …`, addresses
/// as hex of the in-memory (little-endian) u32. The default route has destination
/// and mask 0 and the RTF_GATEWAY flag (0x2); of several, the lowest metric wins.
pub fn default_gateway_v4(route_table: &str) -> Option<Ipv4Addr> {
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
            (dest == 0 && mask == 0 && flags & 0x2 != 0 && gw != 0)
                .then(|| (metric, Ipv4Addr::from(gw.to_le_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, ip)| ip)
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
