//! Generates the kbs.v1 Rust code with a pure-Rust protobuf compiler, so no
//! `protoc` is needed on the machine, and records the git revision the
//! workspace is built from (`--version` of the binaries).

use std::path::Path;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kbs/v1/kbs.proto");
    let fds = protox::compile(["kbs/v1/kbs.proto"], ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rustc-env=KBS_GIT_REVISION={}", git_revision().unwrap_or_else(|| "unknown".into()));
    Ok(())
}

/// The short hash of HEAD, when built from a git checkout; rebuilt when
/// HEAD or a branch moves.
fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
    };
    let git_dir = git(&["rev-parse", "--absolute-git-dir"])?;
    let common = git(&["rev-parse", "--git-common-dir"]).map(|c| Path::new(&git_dir).join(c))?;
    for watched in [Path::new(&git_dir).join("HEAD"), common.join("refs/heads"), common.join("packed-refs")] {
        if watched.exists() {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}
