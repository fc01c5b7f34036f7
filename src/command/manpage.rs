//! `wisp-agent manpage` (hidden): the man page the Debian package ships as
//! `wisp-agent.1`, made from the command line's own definition so it cannot
//! drift from `--help`. clap_mangen writes the name, synopsis, options and
//! commands; the examples of every command (their `--help` epilogues) and the
//! files are added here, unfilled so each example stays on its line.

use std::io::{self, Write};

/// The whole page, roff.
pub fn render(cmd: clap::Command) -> io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("User Commands")
        .source(concat!("wisp-agent ", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    // Each command with its own options here (clap_mangen would point to a
    // page per command, which the package does not ship).
    writeln!(out, ".SH COMMANDS")?;
    for (name, c) in commands(&cmd, "wisp-agent") {
        writeln!(out, ".SS {}", escape(&name))?;
        if let Some(about) = c.get_about() {
            writeln!(out, "{}", escape(&about.to_string()))?;
        }
        for arg in c
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
        {
            let value = arg
                .get_action()
                .takes_values()
                .then(|| arg.get_value_names().and_then(|v| v.first()))
                .flatten()
                .map(|v| format!("\\fI{}\\fR", escape(v)));
            match (arg.get_long(), value) {
                (Some(long), value) => writeln!(
                    out,
                    ".TP\n\\fB\\-\\-{}\\fR{}",
                    escape(long),
                    value.map(|v| format!(" {v}")).unwrap_or_default()
                )?,
                (None, Some(value)) => writeln!(out, ".TP\n{value}")?,
                (None, None) => continue,
            }
            if let Some(help) = arg.get_help() {
                writeln!(out, "{}", escape(&help.to_string()))?;
            }
            let flag = !arg.get_action().takes_values();
            let possible: Vec<String> = arg
                .get_possible_values()
                .into_iter()
                .filter(|_| !flag)
                .filter(|p| !p.is_hide_set())
                .map(|p| p.get_name().to_string())
                .collect();
            if !possible.is_empty() {
                writeln!(out, "({})", escape(&possible.join(", ")))?;
            }
        }
    }

    writeln!(out, ".SH EXAMPLES")?;
    for (name, c) in with_examples(&cmd, "wisp-agent") {
        if name != "wisp-agent" {
            writeln!(out, ".SS {}", escape(&name))?;
        }
        writeln!(out, ".nf")?;
        let text = c
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in text.lines().filter(|l| *l != "Examples:") {
            writeln!(out, "{}", escape(line))?;
        }
        writeln!(out, ".fi")?;
    }
    writeln!(out, ".SH FILES")?;
    for (path, what) in [
        (
            crate::config::DEFAULT_CONFIG_PATH,
            "the configuration read without --config or $WISP_AGENT_CONFIG",
        ),
        (
            "/var/lib/wisp-agent",
            "agent.state_dir: file positions and the buffer",
        ),
    ] {
        writeln!(out, ".TP\n{}\n{}", escape(path), escape(what))?;
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// The visible commands under `cmd` that do something (not `help`, not a
/// group such as `config`), depth first, each with its full name.
fn commands(cmd: &clap::Command, name: &str) -> Vec<(String, clap::Command)> {
    let mut found = Vec::new();
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = format!("{name} {}", sub.get_name());
        if sub.has_subcommands() {
            found.extend(commands(sub, &full));
        } else {
            found.push((full, sub.clone()));
        }
    }
    found
}

/// `cmd` and its visible subcommands, depth first, each with its full name,
/// those with an epilogue only.
fn with_examples(cmd: &clap::Command, name: &str) -> Vec<(String, clap::Command)> {
    let mut found = Vec::new();
    if cmd.get_after_help().is_some() {
        found.push((name.to_string(), cmd.clone()));
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        found.extend(with_examples(sub, &format!("{name} {}", sub.get_name())));
    }
    found
}

/// A line of text as roff prints it: backslashes and dashes escaped, and a
/// line that would start with a control character (`.`, `'`) made text.
fn escape(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(escape("a-b"), "a\\-b");
        assert_eq!(escape(".SH x"), "\\&.SH x");
        assert_eq!(escape("'x"), "\\&'x");
        assert_eq!(escape("a\\b"), "a\\eb");
    }
}
