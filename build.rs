//! Lays out a release build's code in the order it runs: the functions the
//! agent runs from its start through shipping and idling
//! (`packaging/code-order.txt`, made by `packaging/code-order.sh`) go first in
//! `.text`, together. The kernel maps a binary's code 64 KiB around each page
//! touched, and with those functions scattered over the whole binary about
//! 6.5 MiB of code was resident at idle; together, about 2.9
//! (docs/decisions/041-code-in-the-order-it-runs.md). It generates no code.
//!
//! Only where the linker is LLD (rustc's default for x86_64 Linux since 1.90)
//! and no other linker is chosen: GNU ld has no `--symbol-ordering-file`. The
//! names in the list are those of a build by one rustc; under another the Rust
//! ones match nothing, and the build says so.

use std::path::Path;

const ORDER: &str = "packaging/code-order.txt";

/// What the build is: from Cargo's environment and `rustc --version`.
pub struct Build<'a> {
    pub profile: &'a str,
    pub target: &'a str,
    /// `CARGO_ENCODED_RUSTFLAGS`.
    pub rustflags: &'a str,
    /// `RUSTC_LINKER` is set: a linker chosen in Cargo's configuration.
    pub linker_chosen: bool,
    /// "rustc 1.95.0 (59807616e 2026-04-14)".
    pub rustc: &'a str,
}

/// The `cargo::` lines for a build: the link arguments that hand the linker
/// `order` (the list's path) and, when the list was made by another rustc, a
/// warning that says so. Nothing where the linker may not be LLD.
pub fn instructions(build: &Build, order: &Path, list: Option<&str>) -> Vec<String> {
    let Some(list) = list else {
        return Vec::new();
    };
    // A linker of the user's choice (RUSTFLAGS' -C linker, -C linker-flavor,
    // -C linker-features or -C link-arg=-fuse-ld=…, or [target].linker) may
    // not take the option.
    if build.profile != "release"
        || build.target != "x86_64-unknown-linux-gnu"
        || build.linker_chosen
        || build.rustflags.contains("linker")
        || build.rustflags.contains("fuse-ld")
    {
        return Vec::new();
    }
    let minor = build
        .rustc
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    if minor.is_none_or(|m| m < 90) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let made_by = list
        .lines()
        .find_map(|l| l.strip_prefix("# rustc: "))
        .unwrap_or("no rustc named");
    if made_by.trim() != build.rustc.trim() {
        out.push(format!(
            "cargo::warning={ORDER} was made with {:?} and this build is by {:?}: \
             the agent's functions are not put in the order they run, and its code \
             resident at idle is about 3.5 MiB more; packaging/code-order.sh makes the list anew",
            made_by.trim(),
            build.rustc.trim()
        ));
    }
    out.push(format!(
        "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    ));
    out.push("cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering".into());
    out
}

fn main() {
    println!("cargo::rerun-if-changed={ORDER}");
    println!("cargo::rerun-if-changed=build.rs");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .unwrap_or_default();
    let (profile, target, rustflags) = (
        var("PROFILE"),
        var("TARGET"),
        var("CARGO_ENCODED_RUSTFLAGS"),
    );
    let build = Build {
        profile: &profile,
        target: &target,
        rustflags: &rustflags,
        linker_chosen: std::env::var_os("RUSTC_LINKER").is_some(),
        rustc: &rustc,
    };
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    let list = std::fs::read_to_string(&order).ok();
    for line in instructions(&build, &order, list.as_deref()) {
        println!("{line}");
    }
}
