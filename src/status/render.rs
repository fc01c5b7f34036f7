//! A [`Status`] as people read it: the one-screen summary `wisp-agent status`
//! prints ([`summary`]) and the one line `run` logs ([`line`]). Both are
//! written here, from the same status, by the same helpers.

use std::fmt::Write;

use super::{BufferStatus, ConfigStatus, ExecStatus, HostStatus, Status};

/// The one-screen summary `wisp-agent status` prints, one topic a line. What the daemon reported (a job
/// name, Loki's error text, a host) is shown with its control characters
/// escaped: nothing printed here moves the cursor or retitles the terminal.
pub fn summary(s: &Status) -> String {
    printable(&summary_text(s), true)
}

fn summary_text(s: &Status) -> String {
    let mut out = String::new();
    let uptime = s
        .agent
        .uptime_seconds
        .map_or(String::new(), |u| format!(", up {}", duration(u)));
    let _ = writeln!(out, "wisp-agent {}{uptime}", s.agent.version);
    if let Some(c) = &s.config {
        let _ = writeln!(out, "config:  {}", config(c));
    }
    let _ = match &s.health.problem {
        None if s.health.ok => writeln!(out, "health:  ok"),
        None => writeln!(out, "health:  unhealthy"),
        Some(p) => writeln!(out, "health:  unhealthy: {p}"),
    };
    let _ = match host(&s.host) {
        Some(h) => writeln!(out, "host:    {h}"),
        None => writeln!(
            out,
            "host:    none answers; run `wisp-agent probe` to see why (data waits in the buffer)"
        ),
    };
    let _ = match &s.files {
        Some(f) => writeln!(
            out,
            "files:   {} tailed now, {} lines read ({})",
            f.open,
            f.lines_read,
            bytes(f.bytes_read)
        ),
        None => writeln!(out, "files:   not tailed (loki.enabled = false)"),
    };
    match &s.loki {
        Some(l) => {
            let _ = writeln!(
                out,
                "loki:    {} lines shipped ({}), {}, last push {}",
                l.records_shipped,
                bytes(l.bytes_shipped),
                buffered(&l.buffer),
                ago(l.last_push_seconds_ago)
            );
            let _ = writeln!(
                out,
                "         {} retries, {} dropped ({} rejected by loki, {} for want of buffer room){}{}",
                l.retries,
                l.records_rejected + l.buffer.records_dropped,
                l.records_rejected,
                l.buffer.records_dropped,
                if l.records_refused > 0 {
                    format!(
                        ", {} refused by loki one by one ({} sent again changed)",
                        l.records_refused, l.records_rewritten
                    )
                } else {
                    String::new()
                },
                if l.records_possibly_duplicated > 0 {
                    format!(", {} possibly sent twice", l.records_possibly_duplicated)
                } else {
                    String::new()
                }
            );
            if let Some(e) = &l.last_error {
                let _ = writeln!(out, "         {}", last_error(e, l.last_error_seconds_ago));
            }
        }
        None => {
            let _ = writeln!(out, "loki:    off (loki.enabled = false)");
        }
    }
    match &s.otlp {
        Some(o) => {
            let _ = writeln!(
                out,
                "otlp:    {} requests received, {} shipped ({}), {}, last export {}",
                o.requests_received,
                o.requests_shipped,
                bytes(o.bytes_shipped),
                buffered(&o.buffer),
                ago(o.last_export_seconds_ago)
            );
            let _ = writeln!(
                out,
                "         {} retries, {} dropped ({} refused by the collector, {} for want of buffer room)",
                o.retries,
                o.requests_rejected + o.buffer.records_dropped,
                o.requests_rejected,
                o.buffer.records_dropped
            );
            if let Some(e) = &o.last_error {
                let _ = writeln!(out, "         {}", last_error(e, o.last_error_seconds_ago));
            }
        }
        None => {
            let _ = writeln!(out, "otlp:    off (otlp.enabled = false)");
        }
    }
    if let Some(e) = exec(&s.exec) {
        let _ = writeln!(out, "exec:    {e}");
    }
    out
}

/// The periodic line, e.g. `status: host 192.168.5.2 (host.lima.internal), 3
/// files, 12034 lines read, loki 12030 shipped 0 B buffered, last push 2 s
/// ago, otlp 55 shipped 0 B buffered, last export 1 s ago, 0 retries, 0 dropped`,
/// control characters escaped.
pub fn line(s: &Status) -> String {
    printable(&line_text(s), false)
}

fn line_text(s: &Status) -> String {
    let mut parts = vec![match host(&s.host) {
        Some(h) => format!("host {h}"),
        None => "no host answers (run `wisp-agent probe`)".to_string(),
    }];
    if let Some(f) = &s.files {
        parts.push(format!("{} files, {} lines read", f.open, f.lines_read));
    }
    let (mut retries, mut dropped) = (0, 0);
    if let Some(l) = &s.loki {
        parts.push(format!(
            "loki {} shipped {} buffered, last push {}",
            l.records_shipped,
            bytes(l.buffer.bytes),
            ago(l.last_push_seconds_ago)
        ));
        retries += l.retries;
        dropped += l.records_rejected + l.buffer.records_dropped;
    }
    if let Some(o) = &s.otlp {
        parts.push(format!(
            "otlp {} shipped {} buffered, last export {}",
            o.requests_shipped,
            bytes(o.buffer.bytes),
            ago(o.last_export_seconds_ago)
        ));
        retries += o.retries;
        dropped += o.requests_rejected + o.buffer.records_dropped;
    }
    if s.exec.runs > 0 {
        parts.push(format!("{} exec runs", s.exec.runs));
    }
    parts.push(format!("{retries} retries, {dropped} dropped"));
    if let Some(p) = &s.health.problem {
        parts.push(format!("unhealthy: {p}"));
    }
    format!("status: {}", parts.join(", "))
}

/// `sha256 0123456789ab, loaded 5 min ago`, and what the last reload came to
/// when it failed or any came.
fn config(c: &ConfigStatus) -> String {
    let mut text = format!(
        "sha256 {}, loaded {}",
        c.sha256.get(..12).unwrap_or(&c.sha256),
        ago(Some(c.loaded_seconds_ago))
    );
    let count = |r: &str| c.reloads.get(r).copied().unwrap_or(0);
    let (ok, unchanged, failed) = (count("ok"), count("unchanged"), count("failed"));
    if ok + unchanged + failed > 0 {
        let _ = write!(
            text,
            "; reloads: {ok} applied, {unchanged} unchanged, {failed} refused"
        );
    }
    if !c.last_reload_ok {
        text.push_str(
            "; the last reload was refused (the log says why): the configuration before it runs",
        );
    }
    text
}

/// `192.168.5.2 (host.lima.internal)`, or `None` while no host answers.
fn host(h: &HostStatus) -> Option<String> {
    let address = h.address.as_deref()?;
    Some(match h.candidate.as_deref() {
        Some(c) if c != address => format!("{address} ({c})"),
        _ => address.to_string(),
    })
}

fn buffered(b: &BufferStatus) -> String {
    if b.max_bytes > 0 {
        format!("{} of {} buffered", bytes(b.bytes), bytes(b.max_bytes))
    } else {
        format!("{} buffered", bytes(b.bytes))
    }
}

/// `4 runs: ralph 3 (exit 0: 2, exit 1: 1; 12 min, $0.42), exec 1 (…)`.
fn exec(e: &ExecStatus) -> Option<String> {
    if e.runs == 0 {
        return None;
    }
    let jobs: Vec<String> = e
        .jobs
        .iter()
        .map(|j| {
            let codes: Vec<String> = j
                .exit_codes
                .iter()
                .map(|(code, n)| format!("exit {code}: {n}"))
                .collect();
            let cost = if j.cost_usd > 0.0 {
                format!(", ${:.2}", j.cost_usd)
            } else {
                String::new()
            };
            format!(
                "{} {} ({}; {}{cost})",
                j.job,
                j.runs,
                codes.join(", "),
                duration(j.run_seconds)
            )
        })
        .collect();
    let noun = if e.runs == 1 { "run" } else { "runs" };
    Some(format!("{} {noun}: {}", e.runs, jobs.join(", ")))
}

/// `12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; `never` for `None`.
pub fn ago(secs: Option<f64>) -> String {
    match secs {
        None => "never".to_string(),
        Some(s) => format!("{} ago", duration(s)),
    }
}

/// A span in its largest sensible unit: `12 s`, `5 min`, `3 h`, `2 d`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `512 B`, `1.5 KiB`, `12.0 MiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `text` with its control characters escaped, newlines too unless `lines`.
fn printable(text: &str, lines: bool) -> String {
    text.split('\n')
        .map(crate::parse::labels::escape_controls)
        .collect::<Vec<_>>()
        .join(if lines { "\n" } else { "\\n" })
}

/// `last error 12 s ago: …` (without the time when it is not known).
fn last_error(e: &str, secs: Option<f64>) -> String {
    match secs {
        Some(_) => format!("last error {}: {}", ago(secs), cut(e)),
        None => format!("last error: {}", cut(e)),
    }
}

/// An error message cut to one screen line's worth (on a character boundary).
fn cut(e: &str) -> String {
    const MAX: usize = 300;
    let one_line = e.replace('\n', " ");
    match one_line.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}
