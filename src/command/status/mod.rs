//! `wisp-agent status [--json]`: asks the running daemon's admin endpoint
//! (`GET /status`) and prints the summary, or the JSON as served.
//!
//! The endpoint is `admin.listen` of the configuration: an address bound to
//! `0.0.0.0` or `::` is asked on loopback; port 0 (a free port chosen at the
//! daemon's start) cannot be guessed. Exit status: 0 the daemon answers and is
//! healthy (`/healthz`: a sink being away is not unhealthy, the summary shows
//! it); 1 it answers unhealthy, or does not answer; 2 a configuration error,
//! or no address to ask (`admin.listen = ""`, or port 0).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Loaded;

use crate::status::{render, Status};

/// How long the daemon has to answer, connecting included: it answers from
/// counters in memory, so a daemon slower than this is wedged or not there.
const TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why no daemon could be asked: each names `admin.listen` and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error(
        "no wisp-agent daemon answers at {url} (admin.listen in {origin}): {reason}; \
         start it with `sudo systemctl start wisp-agent` (or `wisp-agent run`), \
         or point --config at the configuration the daemon runs with"
    )]
    NoAnswer {
        url: String,
        origin: String,
        reason: String,
    },
    #[error(
        "the daemon at {url} answered {status} to GET /status{hint}; \
         `wisp-agent status` needs a daemon of the same version or newer"
    )]
    Refused {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("the daemon at {url} sent a status that cannot be read: {reason}")]
    Unreadable { url: String, reason: String },
}

/// Where to ask, from `admin.listen`: `Err` says why there is no address (exit 2).
pub fn endpoint(listen: &str, origin: &str) -> Result<SocketAddr, String> {
    endpoint_for("status", listen, origin)
}

/// [`endpoint`] for `wisp-agent COMMAND`, which the messages name.
pub fn endpoint_for(command: &str, listen: &str, origin: &str) -> Result<SocketAddr, String> {
    if listen.is_empty() {
        return Err(format!(
            "`wisp-agent {command}` needs the admin endpoint, but admin.listen = \"\" in {origin} \
             turns it off; set [admin] listen (default \"127.0.0.1:9465\") and restart the daemon"
        ));
    }
    let addr: SocketAddr = listen.parse().map_err(|_| {
        format!(
            "admin.listen = {listen:?} in {origin} is not an address such as \"127.0.0.1:9465\""
        )
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "admin.listen = {listen:?} in {origin} binds a free port chosen when the daemon \
             starts, which `wisp-agent {command}` cannot guess; the daemon logs it \
             (\"admin endpoint: http://…\"): set admin.listen to a fixed port such as \
             \"127.0.0.1:9465\" to use `{command}`"
        ));
    }
    // An address bound to every interface is reached on loopback.
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, addr.port()))
}

/// Fetches `/status` from `addr`: the body as served and what it says.
pub async fn fetch(addr: SocketAddr, origin: &str) -> Result<(String, Status), Unreachable> {
    let url = format!("http://{addr}/status");
    let no_answer = |reason: String| Unreachable::NoAnswer {
        url: url.clone(),
        origin: origin.to_string(),
        reason,
    };
    // A proxy in the environment must not carry a loopback request away.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| no_answer(e.to_string()))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| no_answer(describe(&e)))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(Unreachable::Refused {
            url,
            status,
            hint: if status == 404 {
                " (a wisp-agent older than `status`, or another program on that port)"
            } else {
                ""
            },
        });
    }
    let body = response.text().await.map_err(|e| no_answer(describe(&e)))?;
    let parsed = serde_json::from_str(&body).map_err(|e| Unreachable::Unreadable {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    Ok((body, parsed))
}

/// The cause of a failed request in a few words (reqwest's own message is
/// only "error sending request").
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    crate::http_client::describe(e)
}

/// The command: prints the summary (or `--json`) on stdout, problems on stderr.
pub async fn run(loaded: &Loaded, json: bool) -> ExitCode {
    let origin = loaded.origin.to_string();
    let addr = match endpoint(&loaded.config.admin.listen, &origin) {
        Ok(a) => a,
        Err(message) => {
            eprintln!("wisp-agent status: {message}");
            return ExitCode::from(2);
        }
    };
    let (body, status) = match fetch(addr, &origin).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wisp-agent status: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", body.trim_end());
    } else {
        print!("{}", render::summary(&status));
    }
    if status.health.ok {
        ExitCode::SUCCESS
    } else {
        if !json {
            eprintln!(
                "wisp-agent status: the daemon is unhealthy (as http://{addr}/healthz says): {}",
                status
                    .health
                    .problem
                    .as_deref()
                    .unwrap_or("no reason given")
            );
        }
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn the_endpoint_is_admin_listen_with_any_address_on_loopback() {
        assert_eq!(
            endpoint("127.0.0.1:9465", "f").unwrap().to_string(),
            "127.0.0.1:9465"
        );
        assert_eq!(
            endpoint("0.0.0.0:9465", "f").unwrap().to_string(),
            "127.0.0.1:9465"
        );
        assert_eq!(
            endpoint("[::]:9465", "f").unwrap().to_string(),
            "[::1]:9465"
        );
        assert_eq!(
            endpoint("10.0.0.5:80", "f").unwrap().to_string(),
            "10.0.0.5:80"
        );
        let off = endpoint("", "/etc/wisp-agent/config.toml").unwrap_err();
        assert!(off.contains("needs the admin endpoint") && off.contains("admin.listen"));
        let zero = endpoint("127.0.0.1:0", "f").unwrap_err();
        assert!(zero.contains("cannot guess"), "{zero}");
    }
}
