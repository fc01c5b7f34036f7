//! The mark `wisp-agent exec` puts on each line it passes to a terminal, so that
//! a tailer reading a capture of that terminal (a tmux pane under `pipe-pane`,
//! `script`'s typescript) can tell the run's lines from the rest and leave them
//! to `exec`, which ships them already.
//!
//! A mark is an OSC string, which every terminal reads and shows nothing of:
//! `ESC ] 9477 ; wisp ; run=<32 hex digits> BEL` before the first byte of each
//! line of a run's output (the run's trace id), and
//! `ESC ] 9477 ; wisp ; end BEL` after the run's last byte when that byte was not
//! a newline, so the rest of that terminal line is not the run's. ST (`ESC \`)
//! ends one as well as BEL. The number 9477 is no terminal's: they skip it.
//!
//! [`segments`] cuts a raw line into the parts each mark owns. It only reads:
//! whether a marked part is left out is the tailer's decision (it trusts a mark
//! only for a run the daemon knows, of the file's owner), so a line that merely
//! looks marked is never lost.

use std::ops::Range;

use memchr::memmem;

/// What every mark starts with.
pub const PREFIX: &[u8] = b"\x1b]9477;wisp;";

/// The mark that ends a run's part of a terminal line.
pub const END: &[u8] = b"\x1b]9477;wisp;end\x07";

/// A run's id: its trace id's 16 bytes.
pub type RunId = [u8; 16];

/// The mark before each line of the run `run_id` (32 lowercase hex digits).
pub fn begin(run_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(PREFIX.len() + 4 + run_id.len() + 1);
    m.extend_from_slice(PREFIX);
    m.extend_from_slice(b"run=");
    m.extend_from_slice(run_id.as_bytes());
    m.push(0x07);
    m
}

/// A part of a raw line, and the run whose mark owns it (`None`: no run's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub range: Range<usize>,
    pub run: Option<RunId>,
}

/// The line cut at its marks (the marks themselves left out), or `None` when it
/// carries none: the common case, one vectorised search.
pub fn segments(line: &[u8]) -> Option<Vec<Segment>> {
    // Most lines hold no ESC at all: one memchr, no searcher built.
    memchr::memchr(0x1b, line)?;
    let finder = memmem::Finder::new(PREFIX);
    let mut at = finder.find(line)?;
    let mut out = Vec::new();
    let mut start = 0;
    let mut run = None;
    let mut marked = false;
    loop {
        let body = at + PREFIX.len();
        if let Some((kind, len)) = read_mark(&line[body..]) {
            if start < at {
                out.push(Segment {
                    range: start..at,
                    run,
                });
            }
            run = match kind {
                Mark::Begin(id) => Some(id),
                Mark::End => None,
            };
            marked = true;
            start = body + len;
        }
        match finder.find(&line[body..]) {
            Some(next) => at = body + next,
            None => break,
        }
    }
    if !marked {
        return None;
    }
    if start < line.len() {
        out.push(Segment {
            range: start..line.len(),
            run,
        });
    }
    Some(out)
}

enum Mark {
    Begin(RunId),
    End,
}

/// The mark whose body (after [`PREFIX`]) starts `rest`, and how many bytes it
/// takes with its terminator; `None` when it is not one.
fn read_mark(rest: &[u8]) -> Option<(Mark, usize)> {
    let (kind, body_len) = if let Some(hex) = rest.strip_prefix(b"run=") {
        (Mark::Begin(run_id(hex.get(..32)?)?), 4 + 32)
    } else if rest.starts_with(b"end") {
        (Mark::End, 3)
    } else {
        return None;
    };
    match rest.get(body_len..)? {
        [0x07, ..] => Some((kind, body_len + 1)),
        [0x1b, b'\\', ..] => Some((kind, body_len + 2)),
        _ => None,
    }
}

/// 32 hex digits (either case) as 16 bytes; `None` for anything that names no
/// run (see [`crate::relay::run::run_trace_id`]).
pub fn run_id(hex: &[u8]) -> Option<RunId> {
    crate::relay::run::run_trace_id(std::str::from_utf8(hex).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "0123456789abcdef0123456789abcdef";

    fn id() -> RunId {
        run_id(R.as_bytes()).unwrap()
    }

    fn cut(line: &[u8]) -> Vec<(String, Option<RunId>)> {
        segments(line)
            .unwrap()
            .into_iter()
            .map(|s| (String::from_utf8_lossy(&line[s.range]).into_owned(), s.run))
            .collect()
    }

    #[test]
    fn an_unmarked_line_has_no_segments() {
        assert_eq!(segments(b"plain \x1b[31mred\x1b[0m \x1b]0;title\x07"), None);
        assert_eq!(segments(b""), None);
    }

    #[test]
    fn a_marked_line_is_the_runs() {
        let mut line = begin(R);
        line.extend_from_slice(b"{\"level\":30}\r");
        assert_eq!(cut(&line), vec![("{\"level\":30}\r".into(), Some(id()))]);
    }

    #[test]
    fn text_before_the_mark_and_after_the_end_is_no_runs() {
        let mut line = b"$ prompt ".to_vec();
        line.extend_from_slice(&begin(R));
        line.extend_from_slice(b"partial");
        line.extend_from_slice(END);
        line.extend_from_slice(b"next");
        assert_eq!(
            cut(&line),
            vec![
                ("$ prompt ".into(), None),
                ("partial".into(), Some(id())),
                ("next".into(), None),
            ]
        );
    }

    #[test]
    fn st_ends_a_mark_as_bel_does() {
        let line = format!("\x1b]9477;wisp;run={R}\x1b\\x");
        assert_eq!(cut(line.as_bytes()), vec![("x".into(), Some(id()))]);
    }

    #[test]
    fn what_only_looks_like_a_mark_is_not_one() {
        for bad in [
            "\x1b]9477;wisp;run=0123\x07x".to_string(),
            format!("\x1b]9477;wisp;run={}\x07x", "0".repeat(32)),
            format!("\x1b]9477;wisp;run={R}x"),
            "\x1b]9477;wisp;other\x07x".into(),
            "\x1b]9477;wisp;".into(),
        ] {
            assert_eq!(segments(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn uppercase_hex_names_the_same_run() {
        assert_eq!(run_id(R.to_uppercase().as_bytes()), Some(id()));
    }
}
