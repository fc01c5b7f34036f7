//! Links the agent binary as a position-dependent executable (`-no-pie`): the
//! loader then has no relative relocations to apply, so the pointers in its
//! read-only data stay file-backed and shared instead of being copied into
//! anonymous memory at every start (docs/decisions/032-the-release-build-and-the-idle-footprint.md).

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
