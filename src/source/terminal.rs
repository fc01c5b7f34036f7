//! What a terminal would show: turns the raw bytes of one physical line (as a tmux
//! pane or a program writing to a tty printed them) into the text to ship.
//!
//! (Stub: issue 7 fills in escape stripping, carriage returns and backspaces; for
//! now it only decodes UTF-8 lossily.)

/// Counts of what `render` changed, for the tailer's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenderStats {
    /// Lines that held invalid UTF-8 (replaced with U+FFFD).
    pub invalid_utf8_lines: u64,
    /// Escape sequences removed.
    pub sequences_stripped: u64,
}

/// The text a terminal would show for `line` (no trailing `\n`; a trailing `\r` is
/// dropped). Never fails: invalid UTF-8 is replaced and counted in `stats`.
pub fn render(line: &[u8], stats: &mut RenderStats) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match std::str::from_utf8(line) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            stats.invalid_utf8_lines += 1;
            String::from_utf8_lossy(line).into_owned()
        }
    }
}
