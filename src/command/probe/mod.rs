//! `wisp-agent probe`: every candidate, how it resolved, every service on it, the
//! chosen host, a verdict, and what to fix in plain words; `--push` also sends a
//! test line and span and reads the line back.
//!
//! Promises: without `--push` the probe ends within two step timeouts (resolution,
//! then one concurrent round of checks; see [`crate::discovery::MAX_STEP_TIMEOUT`]), so under
//! 5 s even when every candidate hangs. Secrets (proxy URLs, passwords, tokens,
//! OTLP headers) never appear in the output.
//!
//! One file per job: [`report`] (the types `--json` prints), [`diagnose`] (the
//! verdict and what to fix), [`render`] (the text table), [`push`] (`--push`,
//! through the daemon's own Loki and OTLP clients).
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
//!   `not_ready`, `http_status`, `certificate`, `error`, `otlp_down`, `proxy`,
//!   `push_failed`.
//! - `push`: null without `--push`, else `{token, loki, otlp}`, each step
//!   `{status: ok | failed | skipped, detail, latency_ms}`.
//! - `elapsed_ms`: how long the probe took.

mod diagnose;
mod push;
mod render;
mod report;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use crate::cli::ProbeArgs;
use crate::config::{Config, Loaded};
use crate::discovery::{discover_with, Depth, Inputs};

pub use diagnose::no_proxy_covers;
pub use push::{PROBE_JOB, PUSH_READ_BACK_DEADLINE};
pub use render::render_text;
pub use report::{Diagnosis, ProbeReport, PushReport, PushStatus, PushStep, Verdict};

use diagnose::{diagnose, verdict};
use push::push_test_data;
use report::ms;

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
