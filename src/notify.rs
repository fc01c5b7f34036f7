//! systemd readiness (`sd_notify(3)`) without libsystemd: one datagram to the
//! Unix socket named by `$NOTIFY_SOCKET`. `READY=1` once the pipeline runs (the
//! spools are open, the sinks and the tailer started), `STOPPING=1` when shutdown
//! begins, `RELOADING=1` when a SIGHUP's new configuration is being applied
//! (then `READY=1` again). Without `$NOTIFY_SOCKET` (not under systemd, or `Type=` other than
//! `notify`) every call does nothing. A failed send is logged at debug level and
//! otherwise ignored: readiness is a courtesy to the service manager, never a
//! reason to stop shipping.

use std::os::unix::net::UnixDatagram;

/// Where systemd listens: a path, or an abstract name (`@name`).
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Path(&'a str),
    Abstract(&'a [u8]),
}

fn target(socket: &str) -> Option<Target<'_>> {
    if let Some(name) = socket.strip_prefix('@') {
        Some(Target::Abstract(name.as_bytes()))
    } else if socket.starts_with('/') {
        Some(Target::Path(socket))
    } else {
        None
    }
}

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Some(socket) = socket.to_str().filter(|s| !s.is_empty()) else {
        return;
    };
    let Some(to) = target(socket) else {
        tracing::debug!(
            "NOTIFY_SOCKET={socket:?} is neither a path nor an abstract name; not notifying"
        );
        return;
    };
    if let Err(e) = send(&to, state) {
        tracing::debug!("cannot notify systemd ({state}) on {socket}: {e}");
    }
}

fn send(to: &Target<'_>, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match to {
        Target::Path(p) => sock.send_to(state.as_bytes(), p)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_paths_or_abstract() {
        assert_eq!(
            target("/run/systemd/notify"),
            Some(Target::Path("/run/systemd/notify"))
        );
        assert_eq!(target("@sd-notify"), Some(Target::Abstract(b"sd-notify")));
        assert_eq!(target("relative"), None);
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wisp-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&Target::Abstract(name.as_bytes()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
