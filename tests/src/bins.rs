//! The real binaries, for process-level tests (kill -9, restarts).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Builds `baton-gateway` (same profile as this test) once and returns its path.
pub fn gateway() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("baton-gateway")).clone()
}

fn build(package: &str) -> PathBuf {
    // tests run from target/<profile>/deps/<test>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile> directory")
        .to_owned();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--bin", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    profile_dir.join(package)
}

/// Builds `baton-agent` (same profile as this test) once and returns its path.
pub fn agent() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("baton-agent")).clone()
}
