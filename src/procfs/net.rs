//! `/proc/net/tcp` and `/proc/net/tcp6`: which local user owns the other end
//! of a loopback TCP connection (the OTLP receivers' senders, whose share of
//! the buffer and whose `job` values are counted per user).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The most read of one table (some 100 000 sockets): past it the owner is
/// unknown.
const MAX_TABLE_BYTES: u64 = 16 << 20;

/// The uid owning the socket bound to `socket` and connected to `peer` (the
/// client's end of a connection the agent accepted from `socket` on its own
/// address `peer`), when the client runs on this machine. `None` when no such
/// socket is listed (another host, a closed connection) or the tables cannot
/// be read.
pub(crate) fn tcp_socket_uid(socket: SocketAddr, peer: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .find_map(|path| {
            let file = File::open(path).ok()?;
            let lines = BufReader::new(file.take(MAX_TABLE_BYTES))
                .lines()
                .map_while(Result::ok);
            find_uid(lines, socket, peer)
        })
}

/// The uid of the line of a `tcp`/`tcp6` table whose local and remote
/// addresses are `socket` and `peer` (IPv4-mapped IPv6 addresses equal their
/// IPv4 ones).
pub(crate) fn find_uid(
    lines: impl Iterator<Item = impl AsRef<str>>,
    socket: SocketAddr,
    peer: SocketAddr,
) -> Option<u32> {
    let (socket, peer) = (plain(socket), plain(peer));
    lines.skip(1).find_map(|line| {
        let mut fields = line.as_ref().split_ascii_whitespace();
        let local = address(fields.nth(1)?)?;
        let remote = address(fields.next()?)?;
        if local != socket || remote != peer {
            return None;
        }
        // st, tx:rx queue, tr:when, retrnsmt, then uid.
        fields.nth(4)?.parse().ok()
    })
}

fn plain(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// `0100007F:1F90` (the kernel prints each 32-bit word of the address in the
/// host's byte order) as an address.
fn address(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(plain(SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(ip: [u8; 4]) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip))
    }

    #[test]
    fn the_client_socket_of_a_connection_names_its_owner() {
        let lo = le([127, 0, 0, 1]);
        let table = [
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode".to_string(),
            format!("   0: {lo}:1112 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1078 1 0 100 0 0 10 0"),
            format!("   1: {lo}:1112 {lo}:D431 01 00000000:00000000 00:00000000 00000000     0        0 1079 1 0 20 4 30 10 -1"),
            format!("   2: {lo}:D431 {lo}:1112 01 00000000:00000000 00:00000000 00000000  1001        0 1080 1 0 20 4 30 10 -1"),
        ];
        let server: SocketAddr = "127.0.0.1:4370".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(find_uid(table.iter(), client, server), Some(1001));
        // A mapped address (a dual-stack listener) finds the same line.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:54321".parse().unwrap();
        assert_eq!(find_uid(table.iter(), mapped, server), Some(1001));
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(find_uid(table.iter(), other, server), None);
    }

    #[test]
    fn odd_lines_are_skipped() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for text in [
            "",
            "x",
            "h\n0: zz:1 00:00 01 0 0 0 nope",
            "h\n0: 0100007F 1",
        ] {
            assert_eq!(find_uid(text.lines(), a, a), None);
        }
    }

    #[test]
    fn this_process_owns_its_own_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_conn, from) = listener.accept().unwrap();
        assert_eq!(from, client.local_addr().unwrap());
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(
            tcp_socket_uid(from, listener.local_addr().unwrap()),
            Some(uid)
        );
    }
}
