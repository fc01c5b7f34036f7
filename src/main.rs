//! The `wisp-agent` binary: parses the command line and hands it to the library.

use clap::Parser;

/// jemalloc rather than glibc's malloc: after a burst of lines glibc keeps the
/// freed heap (26 MiB resident after 500k lines in `benches/ship.rs`), jemalloc's
/// background thread returns it within a second (12 MiB). Its settings are in
/// `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    wisp_agent::app::main(wisp_agent::cli::Cli::parse())
}
