//! `wisp-agent tap [--source file|exec|otlp] [--job J] [--level L]`: streams
//! the records the running daemon ships, from its admin endpoint (`GET /tap`),
//! one JSON line each on stdout, until Ctrl-C or the daemon stops.
//!
//! The endpoint is found as `wisp-agent status` finds it
//! ([`super::status::endpoint_for`]). The filters are query parameters: the
//! daemon applies them, so what is filtered out never crosses the socket.
//! Exit status: 0 on Ctrl-C / SIGTERM, when the daemon ends the stream (it
//! stops), or when stdout is closed (`| head`); 1 when no daemon answers, the
//! endpoint is off or on a port that cannot be guessed, or the daemon refuses
//! the tap (the message says why).

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::TapArgs;
use crate::config::Loaded;
use crate::parse::labels::escape_controls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the daemon has to answer with the stream's head: it subscribes
/// and answers at once.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// The command: records on stdout, what happens on stderr.
pub async fn run(loaded: &Loaded, args: &TapArgs) -> ExitCode {
    match tap(loaded, args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wisp-agent tap: {message}");
            ExitCode::from(1)
        }
    }
}

async fn tap(loaded: &Loaded, args: &TapArgs) -> Result<(), String> {
    let origin = loaded.origin.to_string();
    let addr = super::status::endpoint_for("tap", &loaded.config.admin.listen, &origin)?;
    let url = format!("http://{addr}/tap");
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &args.source {
        query.push(("source", s.as_str()));
    }
    if let Some(j) = &args.job {
        query.push(("job", j));
    }
    if let Some(l) = &args.level {
        query.push(("level", l));
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot install signal handlers: {e}")),
    };
    // A proxy in the environment must not carry a loopback request away.
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let request = client.get(&url).query(&query).send();
    let answered = tokio::select! {
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
        r = tokio::time::timeout(HEAD_TIMEOUT, request) => r,
    };
    let mut response = match answered {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            return Err(super::status::Unreachable::NoAnswer {
                url,
                origin,
                reason: crate::http_client::describe(&e),
            }
            .to_string())
        }
        Err(_) => {
            return Err(super::status::Unreachable::NoAnswer {
                url,
                origin,
                reason: format!("no answer within {} s", HEAD_TIMEOUT.as_secs()),
            }
            .to_string())
        }
    };
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        let hint = if status == 404 && body.is_empty() {
            " (a wisp-agent older than `tap`, or another program on that port)"
        } else {
            ""
        };
        return Err(format!(
            "the daemon at {url} refused the tap ({status}): {}{hint}",
            escape_controls(body.trim())
        ));
    }
    let scope = response
        .headers()
        .get("x-wisp-tap-scope")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("all");
    eprintln!(
        "wisp-agent tap: tapping {url}{}; Ctrl-C to stop",
        if scope == "own" {
            " (only your own records: files you own, your exec runs and OTLP senders; \
             root sees every record)"
        } else {
            ""
        }
    );
    let mut stdout = tokio::io::stdout();
    loop {
        let chunk = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            chunk = response.chunk() => chunk,
        };
        match chunk {
            Ok(Some(bytes)) => {
                let written = match stdout.write_all(&bytes).await {
                    Ok(()) => stdout.flush().await,
                    Err(e) => Err(e),
                };
                match written {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(format!("cannot write to stdout: {e}")),
                }
            }
            Ok(None) => {
                eprintln!("wisp-agent tap: the daemon ended the tap (it is stopping)");
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "the tap at {url} broke off: {}",
                    crate::http_client::describe(&e)
                ))
            }
        }
    }
}
