//! The `wisp-agent` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    wisp_agent::app::main(wisp_agent::cli::Cli::parse())
}
