//! The level of a plain-text line: NestJS, pino-pretty, Python `logging`, Rust
//! `tracing`, Go `log/slog` text output, shell tools.
//!
//! Rule: the first level word that starts within the first [`WINDOW`] bytes,
//! outside double quotes, and is either upper-case (`INFO`, `WARN`, `WARNING`,
//! `ERROR`, `DEBUG`, `TRACE`, `FATAL`, `CRITICAL`, NestJS's `LOG` = info and
//! `VERBOSE` = trace, and the other synonyms of [`Level::from_name`]) or, in any
//! case, bracketed (`[warn]`) or followed by a colon (`error:`, Go's `panic:`).
//! A word in prose (`an error occurred`, `Warning signs`) does not count, so text
//! that merely mentions a level is not mislabelled. Lower-case `log:` is prose too
//! (`log: rotated`): `log` counts only as NestJS writes it, `LOG`.
//!
//! Promise: no allocation, no panic, bounded work (the window).

use super::level::Level;

/// Only the opening part of a line is searched: where loggers put the level, and
/// a bound on the work per line.
pub const WINDOW: usize = 100;

/// The level the text names, or `Unknown`.
pub fn level_of_text(line: &str) -> Level {
    let b = line.as_bytes();
    let mut i = 0;
    let mut in_quote = false;
    while i < b.len() && i < WINDOW {
        let c = b[i];
        if in_quote {
            match c {
                b'\\' => i += 2,
                b'"' => {
                    in_quote = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        if c == b'"' {
            in_quote = true;
            i += 1;
            continue;
        }
        if !is_word_byte(c) {
            i += 1;
            continue;
        }
        // A word: a maximal run of ASCII letters, digits and `_`.
        let start = i;
        while i < b.len() && is_word_byte(b[i]) {
            i += 1;
        }
        let word = &b[start..i];
        if let Some(level) = word_level(word, b.get(start.wrapping_sub(1)), b.get(i)) {
            return level;
        }
    }
    Level::Unknown
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The level a word names, given the bytes around it, if it qualifies.
fn word_level(word: &[u8], before: Option<&u8>, after: Option<&u8>) -> Option<Level> {
    // `LOG`/`ERR`/`DBG` are the shortest names, `INFORMATION` the longest.
    if !(3..=11).contains(&word.len()) || !word.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let upper = word.iter().all(u8::is_ascii_uppercase);
    let bracketed = before == Some(&b'[') && after == Some(&b']');
    let colon = after == Some(&b':');
    if !(upper || bracketed || colon) {
        return None;
    }
    if word.eq_ignore_ascii_case(b"log") && !upper {
        return None;
    }
    // All ASCII letters, so valid UTF-8.
    let name = std::str::from_utf8(word).ok()?;
    Level::from_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_words_in_text_follow_the_case_bracket_and_colon_rules() {
        use Level::*;
        let table = [
            // A leading word.
            ("ERROR something broke", Error),
            ("WARN low disk", Warn),
            ("WARNING:root:low disk", Warn),
            ("CRITICAL:app:down", Fatal),
            ("DEBUG x", Debug),
            ("TRACE y", Trace),
            ("FATAL z", Fatal),
            ("INFO started", Info),
            // After a timestamp: Rust tracing, Go log/slog, Python.
            ("2026-11-21T10:00:00Z INFO app: started", Info),
            ("2026-11-21T10:00:00.123456Z  WARN wisp::tail: slow", Warn),
            ("2026/11/21 10:00:00 ERROR db gone", Error),
            ("2026-11-21 10:00:00,123 - app - DEBUG - hello", Debug),
            // pino-pretty.
            ("[22:59:44.776] TRACE (3859): loading config", Trace),
            ("[10:00:00.123] INFO (api/123): msg", Info),
            ("[22:59:44.779] FATAL (3859): shutting down worker", Fatal),
            ("[22:59:44.778] USERLVL (3859): audit event", Unknown),
            // NestJS: the level word mid-line.
            (
                "[Nest] 3846  - 11/22/2026, 10:00:00 PM     LOG [NestFactory] Starting Nest application...",
                Info,
            ),
            (
                "[Nest] 3846  - 11/22/2026, 10:00:05 PM    WARN [RoutesResolver] Deprecated route",
                Warn,
            ),
            ("[Nest] 1  - 11/22/2026, 10:00:05 PM   ERROR [X] boom", Error),
            ("[Nest] 1  - 11/22/2026, 10:00:05 PM   VERBOSE [X] hi", Trace),
            // Bracketed or followed by a colon, any case.
            ("[warn] disk", Warn),
            ("[Error] disk", Error),
            ("[log] not nest", Unknown),
            ("error: cannot open file", Error),
            ("Error: ECONNREFUSED 127.0.0.1:5432", Error),
            ("panic: runtime error: index out of range", Fatal),
            ("warning: unused variable", Warn),
            ("log: rotated", Unknown),
            // Prose does not count.
            ("an error occurred while reading", Unknown),
            ("Warning signs everywhere", Unknown),
            ("plain text without a level", Unknown),
            ("cd /home/dev/refly-api && node app.js", Unknown),
            (
                "dev@refly-vm:/home/dev/refly-api$ node app.js 2>&1 | ./node_modules/.bin/pino-pretty",
                Unknown,
            ),
            // Not a whole word.
            ("ERRORS: 0", Unknown),
            ("INFO2 x", Unknown),
            ("ERROR_CODE=5", Unknown),
            ("xERROR y", Unknown),
            // Inside quotes.
            (r#"said "ERROR here" then INFO"#, Info),
            (r#"msg="ERROR \" still quoted" x"#, Unknown),
            // The first qualifying word wins.
            ("INFO retrying after ERROR", Info),
            ("an error: then WARN", Error),
            // Beyond the window.
            (&format!("{} ERROR late", "x ".repeat(60)), Unknown),
            ("", Unknown),
            ("\u{0}\u{1b}[0m ERROR red", Error),
            ("\u{FFFD}\u{FFFD} WARN odd bytes", Warn),
        ];
        for (line, want) in table {
            assert_eq!(level_of_text(line), want, "{line:?}");
        }
    }
}
