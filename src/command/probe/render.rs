//! The text report a person reads (`probe` without `--json`).

use std::fmt::Write as _;

use super::report::{ProbeReport, PushStatus};

/// The table a person reads.
pub fn render_text(r: &ProbeReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "wisp-agent {} probe", r.version);
    if !r.config.is_empty() {
        let _ = writeln!(s, "configuration: {}", r.config);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<24} {:<13} ADDRESS", "CANDIDATE", "RESOLVED VIA");
    for c in &r.candidates {
        let via = c.resolution.via().replace('_', " ");
        let address = match (&c.resolution, c.address) {
            (crate::discovery::Resolution::Failed { reason }, _) => reason.clone(),
            (
                crate::discovery::Resolution::RouteTable {
                    interface, family, ..
                },
                Some(a),
            ) => format!("{a} ({family} default route via {interface})"),
            (crate::discovery::Resolution::HostsFile { path, .. }, Some(a)) => {
                format!("{a} (from {})", path.display())
            }
            (_, Some(a)) => a.to_string(),
            (_, None) => String::new(),
        };
        let _ = writeln!(s, "{:<24} {:<13} {}", c.name, via, address);
        if c.resolution.is_failed() {
            continue;
        }
        for (_, label, service) in c.services.iter() {
            let required = if service.required { "  (required)" } else { "" };
            let _ = writeln!(
                s,
                "    {:<11} :{:<5} {}{}",
                label, service.port, service.check, required
            );
        }
    }
    let _ = writeln!(s);
    match &r.chosen {
        Some(c) => {
            let _ = writeln!(s, "chosen host: {} ({})", c.name, c.address);
        }
        None => {
            let _ = writeln!(s, "chosen host: none");
        }
    }
    let _ = writeln!(s, "verdict: {}", r.verdict.summary);
    if let Some(p) = &r.push {
        let _ = writeln!(s, "test push (token {}):", p.token);
        for (what, step) in [("loki", &p.loki), ("otlp", &p.otlp)] {
            let status = match step.status {
                PushStatus::Ok => "ok",
                PushStatus::Failed => "FAILED",
                PushStatus::Skipped => "skipped",
            };
            let _ = writeln!(
                s,
                "    {what:<5} {status} ({} ms): {}",
                step.latency_ms, step.detail
            );
        }
    }
    if !r.diagnoses.is_empty() {
        let _ = writeln!(s, "\nwhat to fix:");
        for d in &r.diagnoses {
            let _ = writeln!(s, "  - {}", d.message);
        }
    }
    let _ = writeln!(s, "\n(probe took {} ms)", r.elapsed_ms);
    s
}
