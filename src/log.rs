//! The agent's own log: to stderr (stdout stays clean for `--dry-run` and
//! `--json`), one line per event, and never a raw control character in it.
//!
//! What the agent logs often holds text others chose: a user's `--name`, a path
//! in someone's home, Loki's answer (which has newlines), a sender's
//! `service.name`. tracing's formatter already writes ESC, BEL, BS, FF, DEL and
//! the C1 controls of such values as escapes; [`CleanStderr`] escapes the rest
//! of the C0 controls (`\r`, a newline inside an event, NUL, …), so an event
//! stays one line that moves no cursor. TAB stays, and so does ESC, which is
//! then only the formatter's own colour codes (at a terminal).
//!
//! With `agent.log_format = "json"` (`run` only) each event is one JSON object
//! (`timestamp`, `level`, `message`, the event's fields): JSON escapes every C0
//! control itself, and [`CleanWriter`] writes DEL and the C1 controls, which it
//! does not, as `\u` escapes.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::AgentLogFormat;

/// A `RUST_LOG` that would leave the agent's own log empty: a configuration
/// error (exit 2), not a silent `info` or a silent nothing.
#[derive(Debug, thiserror::Error)]
#[error(
    "RUST_LOG={value:?} {why}: set it to a level (error, warn, info, debug, trace), \
         add one to the filter (`{value},info`), or pass --log-level LEVEL"
)]
pub struct BadLogFilter {
    value: String,
    why: String,
}

/// Checks `RUST_LOG` (when set and not empty) as [`init`] will read it: it
/// must parse, and some directive must let the agent's own events through. A
/// bare word that is not a level (`verbose`) is a target name to tracing, and a
/// filter of other crates' targets only (`hyper=debug`) turns every other
/// target off: either silences the agent, its warnings included.
pub fn check_env_filter(value: &str) -> Result<(), BadLogFilter> {
    let bad = |why: String| BadLogFilter {
        value: crate::parse::labels::escape_controls(value).into_owned(),
        why,
    };
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(value) {
        return Err(bad(format!("is not a filter ({e})")));
    }
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    let shows_agent = |directive: &str| {
        let target = match directive.split_once('=') {
            Some((t, _)) => t.split('[').next().unwrap_or(""),
            None if LEVELS.contains(&directive.to_ascii_lowercase().as_str()) => "",
            None => directive.split('[').next().unwrap_or(""),
        };
        // A level for every target (`off` too: asked for), or one of ours.
        let target = target.trim();
        target.is_empty() || "wisp_agent".starts_with(target) || target.starts_with("wisp_agent")
    };
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.iter().any(|d| shows_agent(d)) {
        return Ok(());
    }
    let words: Vec<&str> = directives
        .iter()
        .filter(|d| !d.contains(['=', '[']))
        .filter(|d| !LEVELS.contains(&d.to_ascii_lowercase().as_str()))
        .copied()
        .collect();
    Err(bad(match words.first() {
        Some(w) => format!(
            "turns the agent's own log off, warnings included (`{}` is read as a target \
             name, not a level)",
            crate::parse::labels::escape_controls(w)
        ),
        None => "turns the agent's own log off, warnings included".to_string(),
    }))
}

/// Sets up the log. `--log-level` wins over `RUST_LOG`; the default is `info`.
pub fn init(level: Option<&str>, format: AgentLogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        AgentLogFormat::Text => builder
            .with_writer(CleanStderr)
            // Colours only for a person at a terminal, not in journald or a file.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        AgentLogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(CleanStderr)
            .with_ansi(false)
            .try_init(),
    };
}

/// Stderr, each event's control characters escaped (see the module doc).
pub struct CleanStderr;

impl<'a> MakeWriter<'a> for CleanStderr {
    type Writer = CleanWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        CleanWriter(io::stderr())
    }
}

/// Writes each buffer (tracing's formatter writes one event in one call) with
/// its control characters escaped, but a newline that ends it.
pub struct CleanWriter<W>(pub W);

impl<W: Write> Write for CleanWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|&b| needs_escape(b)) && !has_c1_or_del(body) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        let mut bytes = body.iter().copied().peekable();
        while let Some(b) = bytes.next() {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if needs_escape(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                0x7f => out.extend_from_slice(b"\\u007f"),
                // U+0080..U+009F, the C1 controls: C2 80..9F in UTF-8.
                0xc2 if bytes.peek().is_some_and(|n| (0x80..=0x9f).contains(n)) => {
                    let c1 = bytes.next().unwrap_or(0x80);
                    out.extend_from_slice(format!("\\u{c1:04x}").as_bytes());
                }
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// DEL or a C1 control (U+0080..U+009F) in UTF-8 text.
fn has_c1_or_del(body: &[u8]) -> bool {
    body.contains(&0x7f)
        || body
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
}

/// A C0 control other than TAB and ESC (see the module doc).
fn needs_escape(b: u8) -> bool {
    b < 0x20 && b != b'\t' && b != 0x1b
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rust_log_that_silences_the_agent_is_refused() {
        for ok in [
            "info",
            "DEBUG",
            "wisp_agent=debug",
            "wisp_agent::sink=trace",
            "hyper=debug,info",
            "warn,wisp_agent::run=debug",
            "[span]=debug",
            "off",
            "wisp_agent=off",
        ] {
            assert!(super::check_env_filter(ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("verbose", "`verbose` is read as a target name"),
            ("hyper=debug", "turns the agent's own log off"),
            ("hyper,tower", "`hyper` is read as a target name"),
            ("wisp_agent=loud", "is not a filter"),
        ] {
            let e = super::check_env_filter(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--log-level"), "{bad}: {e}");
        }
    }

    use super::*;

    use std::sync::{Arc, Mutex};

    /// What a subscriber wrote, through [`CleanWriter`], shared with the test.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn clean(s: &str) -> String {
        let mut w = CleanWriter(Vec::new());
        w.write_all(s.as_bytes()).unwrap();
        String::from_utf8(w.0).unwrap()
    }

    #[test]
    fn an_event_stays_one_line_that_moves_no_cursor() {
        assert_eq!(clean("plain\tline\n"), "plain\tline\n");
        assert_eq!(
            clean("loki said: bad\nentry\rover\0x\n"),
            "loki said: bad\\nentry\\rover\\x00x\n"
        );
        assert_eq!(
            clean("\x1b[32mINFO\x1b[0m ok\n"),
            "\x1b[32mINFO\x1b[0m ok\n"
        );
    }

    #[test]
    fn what_users_choose_never_reaches_the_terminal_raw() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CleanWriter(writer.clone()))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let job = "x\u{1b}]0;T\u{7}\u{1b}[2J";
            tracing::warn!("refused a run named {job}: line one\nline two\r");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(
            !out.trim_end_matches('\n')
                .chars()
                .any(|c| c.is_control() && c != '\t'),
            "{out:?}"
        );
        assert!(out.contains("line one\\nline two\\r"), "{out:?}");
    }

    #[test]
    fn a_json_event_is_one_object_a_line_with_no_control_raw() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_writer(move || CleanWriter(writer.clone()))
            .finish();
        let job = "x\u{1b}]0;T\u{7}\u{9b}2J\u{7f}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("refused a run named {job}: line one\nline two\r");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(
            !out.trim_end_matches('\n').chars().any(|c| c.is_control()),
            "{out:?}"
        );
        let event: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(event["level"], "WARN", "{out}");
        assert_eq!(
            event["message"],
            format!("refused a run named {job}: line one\nline two\r"),
            "the text survives, escaped only on the wire: {out}"
        );
        assert!(event["timestamp"].is_string(), "{out}");
    }
}
