//! Fuzzes the terminal renderer (`src/source/terminal.rs`, `terminal/vt.rs`) and
//! the run marks' reader (`terminal/mark.rs`) with arbitrary bytes, as the tailer
//! and `exec` hand them one raw line. Checks the promises of their module docs:
//!
//! - `render`: never panics; the output holds no control character but TAB
//!   (C0, DEL, C1); it has at most twice as many characters as the input has
//!   bytes; a line holding no control character (after lossy UTF-8) comes out
//!   as that text; `invalid_utf8_lines` counts exactly the invalid lines;
//! - linear work: `render` and `segments` together spend at most
//!   [`WORK_PER_BYTE`] of the thread's CPU time per input byte (plus
//!   [`WORK_BASE`]), ten times the most they took on the fuzzing corpus (under
//!   300 ns a byte, on a loaded machine), so a path that loops over the line
//!   for each sequence shows on inputs of some 8 KiB and more (.ci/fuzz-long.sh
//!   gives inputs up to 16 KiB). CPU time, not wall time: a fuzzer under `nice`
//!   on a busy machine waits seconds for a core (libFuzzer's `-timeout`, wall
//!   time, is only the backstop for a hang);
//! - `segments`: `None` for a line without the mark prefix; otherwise the
//!   ranges are non-empty, inside the line, in order and non-overlapping, and
//!   what lies between them (and before the first, after the last) is marks,
//!   each starting with the prefix.
//!
//! The renderer's files are compiled straight in (below), as parse_line does
//! with the parser's. `mark.rs` names a run by `crate::relay::run::run_trace_id`,
//! which lives beside the OTLP types: the stand-in below takes 32 hex digits
//! whose low half is not zero, as the real one does (the otlp_json target
//! fuzzes the real one through the agent).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

#[path = "../../src/source"]
#[allow(dead_code)]
mod source {
    pub mod terminal;
}

/// Stand-in for `wisp_agent::relay::run`.
mod relay {
    pub mod run {
        pub fn run_trace_id(run_id: &str) -> Option<[u8; 16]> {
            let digits = run_id.as_bytes();
            if digits.len() != 32 {
                return None;
            }
            let mut id = [0u8; 16];
            for (byte, pair) in id.iter_mut().zip(digits.chunks_exact(2)) {
                let hex = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
                *byte = (hex(pair[0])? << 4) | hex(pair[1])?;
            }
            id[8..].iter().any(|&b| b != 0).then_some(id)
        }
    }
}

use source::terminal::{mark, render, RenderStats};

/// The CPU time `render` and `segments` may take per input byte, and once.
const WORK_PER_BYTE: Duration = Duration::from_micros(3);
const WORK_BASE: Duration = Duration::from_millis(10);

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A character the rendered text must not hold: C0 but TAB, DEL, C1.
fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

fuzz_target!(|data: &[u8]| {
    let start = thread_cpu_time();
    let mut stats = RenderStats::default();
    let out = render(data, &mut stats);
    let segments = mark::segments(data);
    let spent = thread_cpu_time() - start;
    let budget = WORK_BASE + WORK_PER_BYTE * data.len() as u32;
    assert!(
        spent <= budget,
        "{spent:?} of CPU time for {} bytes (budget {budget:?})",
        data.len()
    );
    if let Some(c) = out.chars().find(|&c| is_control(c)) {
        panic!("control character {c:?} in the output {out:?}");
    }
    let chars = out.chars().count();
    assert!(
        chars <= 2 * data.len(),
        "{chars} characters out of {} bytes",
        data.len()
    );
    let valid = std::str::from_utf8(data).is_ok();
    assert_eq!(stats.invalid_utf8_lines, u64::from(!valid));
    let lossy = String::from_utf8_lossy(data);
    if !lossy.chars().any(is_control) {
        assert_eq!(out, lossy, "a line without control characters changed");
        assert_eq!((stats.sequences_stripped, stats.controls_dropped), (0, 0));
    }

    let has_prefix = memchr::memmem::find(data, mark::PREFIX).is_some();
    match segments {
        None => {}
        Some(_) if !has_prefix => panic!("segments of a line without the mark prefix"),
        Some(segments) => {
            let mut end = 0;
            for s in &segments {
                assert!(s.range.start < s.range.end, "empty segment {s:?}");
                assert!(s.range.end <= data.len(), "segment {s:?} past the line");
                assert!(
                    s.range.start >= end,
                    "segment {s:?} overlaps or is out of order"
                );
                // What the marks took: one or more marks, each opening with the prefix.
                let gap = &data[end..s.range.start];
                assert!(
                    s.range.start == 0 || gap.starts_with(mark::PREFIX),
                    "{gap:?} between segments is no mark"
                );
                end = s.range.end;
            }
            let tail = &data[end..];
            assert!(
                tail.is_empty() || tail.starts_with(mark::PREFIX),
                "{tail:?} after the last segment is no mark"
            );
        }
    }
});
