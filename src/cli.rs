//! The command line: clap derive structs only. What each command does lives in
//! [`crate::app`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A small telemetry agent for developer VMs: finds the host's telemetry stack,
/// tails log files, ships logs to Loki and OTLP to the host's collector, and loses
/// nothing while the host is away.
#[derive(Debug, Parser)]
#[command(
    name = "wisp-agent",
    version,
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Configuration file [default: $WISP_AGENT_CONFIG, then
    /// /etc/wisp-agent/config.toml, then built-in defaults]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The agent's own log level on stderr (error, warn, info, debug, trace);
    /// RUST_LOG takes a full filter instead
    #[arg(long, global = true, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"], ignore_case = true)]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  wisp-agent config check --config /etc/wisp-agent/config.toml
  wisp-agent run --dry-run --config quickstart.toml
  wisp-agent probe
  wisp-agent exec --name ralph --label iter=3 -- claude -p \"$PROMPT\"
  wisp-agent status
  wisp-agent completions bash > ~/.local/share/bash-completion/completions/wisp-agent";

const RUN_EXAMPLES: &str = "\
Examples:
  wisp-agent run --config /etc/wisp-agent/config.toml
  wisp-agent run --dry-run --config quickstart.toml    # print what would be shipped
  wisp-agent run --log-level debug
Without --config: $WISP_AGENT_CONFIG, then /etc/wisp-agent/config.toml, then the
built-in defaults (which tail no file: write [[files]] entries to tail logs)";

const PROBE_EXAMPLES: &str = "\
Examples:
  wisp-agent probe                  # each candidate, each service, what to fix
  wisp-agent probe --json | jq .chosen
  wisp-agent probe --push           # also ship a test line and span, read the line back
  WISP_HOST=192.168.5.2 wisp-agent probe
Exit status: 0 the required services answer, 1 not, 2 configuration error";

const EXEC_EXAMPLES: &str = "\
Examples:
  wisp-agent exec -- make test
  wisp-agent exec --name ralph --label iter=3 -- claude -p \"$PROMPT\"
  wisp-agent exec --flush           # hand over captures kept while the daemon was away

The command's environment gets:
  TRACEPARENT                   the run's span: 00-<run id>-<span id>-01
  OTEL_RESOURCE_ATTRIBUTES      yours, then wisp.run.id, wisp.run.name,
                                wisp.run.labels and each --label K=V
  OTEL_EXPORTER_OTLP_ENDPOINT   the agent's local receiver, unless already set:
                                receiver.http; receiver.grpc when the protocol
                                is grpc or the HTTP receiver is off
  OTEL_EXPORTER_OTLP_PROTOCOL   http/protobuf, or grpc for the gRPC receiver,
                                unless the protocol or the endpoint is set
Exit status: the command's own; 128+N if it died of signal N; 127 not found; 126
not runnable";

const STATUS_EXAMPLES: &str = "\
Examples:
  wisp-agent status
  wisp-agent status --json | jq .loki
  watch -n 2 wisp-agent status
Exit status: 0 the daemon answers and is healthy, 1 unhealthy or not running, 2
configuration error or no admin address to ask";

const CHECK_EXAMPLES: &str = "\
Examples:
  wisp-agent config check
  wisp-agent config check --config ./config.toml
  LOKI_URL=http://192.168.5.2:3100 wisp-agent config check
Exit status: 0 valid, 2 invalid (the message names the key, its line and the fix)";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  wisp-agent completions bash > ~/.local/share/bash-completion/completions/wisp-agent
  wisp-agent completions zsh > ~/.zfunc/_wisp-agent
  wisp-agent completions fish > ~/.config/fish/completions/wisp-agent.fish
The Debian package installs the bash, zsh and fish ones";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: discover the host, tail files, receive local OTLP, buffer
    /// durably, ship. Stops cleanly on SIGTERM or Ctrl-C
    #[command(after_help = RUN_EXAMPLES)]
    Run(RunArgs),
    /// Check connectivity: each host candidate, how it resolved, each service on it
    #[command(after_help = PROBE_EXAMPLES)]
    Probe(ProbeArgs),
    /// Run CMD as one traced iteration: its output passes through unchanged and is
    /// shipped as logs
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Show what the running daemon is doing: host, files, lines shipped,
    /// buffered bytes, last push, errors (from its admin endpoint)
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Stream the records the running daemon ships, one JSON line each (as
    /// `run --dry-run` prints them, with their source), from its admin
    /// endpoint, until Ctrl-C
    Tap(TapArgs),
    /// Work with the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script on stdout
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout, for packaging
    #[command(hide = true)]
    Manpage,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the daemon's status document (GET /status) as it is served
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TapArgs {
    /// Only records from this source
    #[arg(long, value_name = "SOURCE", value_parser = ["file", "exec", "otlp"])]
    pub source: Option<String>,
    /// Only records whose `job` label is J
    #[arg(long, value_name = "J", value_parser = parse_name)]
    pub job: Option<String>,
    /// Only records whose `level` label is L
    #[arg(long, value_name = "L", value_parser = ["trace", "debug", "info", "warn", "error", "fatal", "unknown"])]
    pub level: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Print each record that would be shipped as one JSON line on stdout instead
    /// of shipping it (file positions are not saved)
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: parse standard input as a [[files]] entry would (the
    /// first entry, or the one --job names), print its records and exit at
    /// its end
    #[arg(long)]
    pub stdin: bool,
    /// With --stdin: the [[files]] entry whose settings parse it (by name);
    /// a name no entry has gets the defaults of an entry, under that job
    #[arg(long, value_name = "NAME", requires = "stdin", value_parser = parse_name)]
    pub job: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Print the result as one JSON document
    #[arg(long)]
    pub json: bool,
    /// Also push a test log line and span, and read the line back from Loki
    #[arg(long)]
    pub push: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The `job` label of the command's output [default: exec]
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    pub name: Option<String>,
    /// An extra label on the command's output (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Hand the captures kept while the daemon was away over to it, and exit
    #[arg(long, conflicts_with_all = ["name", "labels", "command"])]
    pub flush: bool,
    /// The command and its arguments, after `--` (any bytes the OS passes)
    #[arg(
        required_unless_present = "flush",
        last = true,
        value_name = "CMD",
        value_parser = clap::value_parser!(std::ffi::OsString)
    )]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective one, secrets redacted
    #[command(after_help = CHECK_EXAMPLES)]
    Check,
}

/// A label value or job name: no control character (it is printed by
/// terminals, in `status` and Grafana).
fn no_controls(what: &str, v: &str) -> Result<(), String> {
    if v.chars().any(char::is_control) {
        return Err(format!(
            "{what} {:?} holds a control character; labels are printed, use plain text",
            crate::parse::labels::escape_controls(v)
        ));
    }
    Ok(())
}

fn parse_name(s: &str) -> Result<String, String> {
    no_controls("the name", s)?;
    Ok(s.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| {
        format!(
            "expected K=V, found {:?}",
            crate::parse::labels::escape_controls(s)
        )
    })?;
    crate::parse::labels::check_user_label_name(k)?;
    no_controls(&format!("the value of label {k}"), v)?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_labels_and_a_command_after_the_separator() {
        let cli = Cli::parse_from([
            "wisp-agent",
            "exec",
            "--name",
            "ralph",
            "--label",
            "iter=3",
            "--",
            "sh",
            "-c",
            "exit 3",
        ]);
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(e.name.as_deref(), Some("ralph"));
        assert_eq!(e.labels, vec![("iter".into(), "3".into())]);
        assert_eq!(e.command, vec!["sh", "-c", "exit 3"]);
    }

    #[test]
    fn exec_flush_takes_no_command_and_exec_needs_one_otherwise() {
        let cli = Cli::parse_from(["wisp-agent", "exec", "--flush"]);
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert!(e.flush && e.command.is_empty());
        assert!(Cli::try_parse_from(["wisp-agent", "exec"]).is_err());
        assert!(Cli::try_parse_from(["wisp-agent", "exec", "--flush", "--", "true"]).is_err());
        assert!(
            Cli::try_parse_from(["wisp-agent", "exec", "--label", "user=root", "--", "true"])
                .is_err()
        );
        for bad in [
            &["--label", "User=root"][..],
            &["--label", "__name__=x"],
            &["--label", "note=a\u{1b}[2J"],
            &["--name", "x\u{1b}]0;T\u{7}"],
        ] {
            let args = ["wisp-agent", "exec"]
                .iter()
                .chain(bad)
                .chain(&["--", "true"]);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_passes_any_os_argument_through() {
        use std::os::unix::ffi::OsStringExt;
        let raw = std::ffi::OsString::from_vec(vec![0xff, b'x']);
        let cli = Cli::try_parse_from([
            std::ffi::OsString::from("wisp-agent"),
            "exec".into(),
            "--".into(),
            "printf".into(),
            raw.clone(),
        ])
        .unwrap();
        let Command::Exec(e) = cli.command else {
            panic!("not exec");
        };
        assert_eq!(e.command, vec![std::ffi::OsString::from("printf"), raw]);
    }

    #[test]
    fn config_is_accepted_after_the_subcommand() {
        let cli = Cli::parse_from(["wisp-agent", "config", "check", "--config", "/x.toml"]);
        assert_eq!(cli.config, Some(PathBuf::from("/x.toml")));
    }
}
