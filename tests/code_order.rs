//! The order of the agent's code (build.rs, packaging/code-order.txt): which
//! builds hand the list to the linker, and that the list is one the linker and
//! build.rs read as meant. What it saves is measured by `benches/idle.rs`.

#[allow(dead_code)]
#[path = "../build.rs"]
mod build_script;

use build_script::{instructions, Build};
use std::path::Path;

const RUSTC: &str = "rustc 1.95.0 (59807616e 2026-04-14)";
const LIST: &str = "# made by packaging/code-order.sh\n# rustc: rustc 1.95.0 (59807616e 2026-04-14)\njemalloc_constructor\n";

fn release() -> Build<'static> {
    Build {
        profile: "release",
        target: "x86_64-unknown-linux-gnu",
        rustflags: "",
        linker_chosen: false,
        rustc: RUSTC,
    }
}

fn order() -> &'static Path {
    Path::new("/src/packaging/code-order.txt")
}

#[test]
fn a_release_build_by_rust_lld_hands_the_list_to_the_linker() {
    assert_eq!(
        instructions(&release(), order(), Some(LIST)),
        [
            "cargo::rustc-link-arg-bins=-Wl,--symbol-ordering-file=/src/packaging/code-order.txt",
            "cargo::rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering",
        ]
    );
}

#[test]
fn builds_whose_linker_may_not_be_lld_link_as_they_would_without_the_list() {
    let cases = [
        Build {
            profile: "debug",
            ..release()
        },
        Build {
            target: "aarch64-unknown-linux-gnu",
            ..release()
        },
        Build {
            linker_chosen: true,
            ..release()
        },
        Build {
            rustflags: "-Clinker-features=-lld",
            ..release()
        },
        Build {
            rustflags: "-C\u{1f}linker=clang",
            ..release()
        },
        Build {
            rustflags: "-Clink-arg=-fuse-ld=bfd",
            ..release()
        },
        // GNU ld was rustc's default before 1.90.
        Build {
            rustc: "rustc 1.88.0 (6b00bc388 2025-06-23)",
            ..release()
        },
        Build {
            rustc: "",
            ..release()
        },
    ];
    for build in &cases {
        assert!(
            instructions(build, order(), Some(LIST)).is_empty(),
            "{} {} {:?} {} {:?}",
            build.profile,
            build.target,
            build.rustflags,
            build.linker_chosen,
            build.rustc
        );
    }
    assert!(instructions(&release(), order(), None).is_empty());
}

#[test]
fn a_list_made_by_another_rustc_is_still_used_and_the_build_says_so() {
    let build = Build {
        rustc: "rustc 1.96.0 (0123456789 2026-05-28)",
        ..release()
    };
    let lines = instructions(&build, order(), Some(LIST));
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("cargo::warning="), "{}", lines[0]);
    assert!(lines[0].contains("1.95.0") && lines[0].contains("1.96.0"));
    assert!(lines[0].contains("packaging/code-order.sh"));
    assert!(lines[1].contains("--symbol-ordering-file="));
}

/// LLD reads a line of the list as one symbol's name, whole, and skips only
/// lines that begin with `#`.
#[test]
fn the_list_names_each_function_once_under_a_header_naming_its_rustc() {
    let list = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/code-order.txt"
    ))
    .unwrap();
    assert!(
        list.lines()
            .any(|l| l.strip_prefix("# rustc: rustc 1.").is_some()),
        "no '# rustc:' header line"
    );
    let names: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('#'),
            "not a symbol's name: {name:?}"
        );
        assert!(seen.insert(*name), "listed twice: {name}");
    }
    // The agent's own functions, the runtime's and the allocator's, from the
    // start (main) on.
    for part in ["10wisp_agent", "5tokio", "_rjem_", "4main"] {
        assert!(
            names.iter().any(|n| n.contains(part)),
            "nothing of {part} in the list"
        );
    }
    assert!(names.len() > 1000, "only {} functions listed", names.len());
}
