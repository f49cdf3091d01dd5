//! `cargo xtask` is what installs the system packages, so it must build on a
//! machine that has none of them. This builds xtask in a target directory of
//! its own, in a private mount namespace where clang, llvm-strip, protoc and
//! bpftool are each covered by an empty, non-executable file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Tools that crates elsewhere in the workspace run at build time (or the
/// tests use), and that only the packages xtask installs provide.
const HIDDEN: &[&str] = &["clang-19", "clang", "llvm-strip-19", "llvm-strip", "protoc", "bpftool"];

/// Every file that running `tool` could reach: its PATH entries (symlinks
/// resolved, so the bind mount covers the real binary) and LLVM's own bin dirs.
fn installed(tool: &str) -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(std::fs::read_dir("/usr/lib").into_iter().flatten().flatten().filter_map(|entry| {
        entry.file_name().to_string_lossy().starts_with("llvm-").then(|| entry.path().join("bin"))
    }));
    let mut found: Vec<PathBuf> = dirs.iter().map(|d| d.join(tool)).filter_map(|p| p.canonicalize().ok()).collect();
    found.sort();
    found.dedup();
    found
}

#[test]
fn xtask_builds_without_the_system_packages() {
    if !nodeplane_testkit::privileged("xtask_builds_without_the_system_packages") {
        return;
    }
    let hidden: Vec<PathBuf> = HIDDEN.iter().flat_map(|tool| installed(tool)).collect();
    for tool in ["clang-19", "llvm-strip-19", "protoc", "bpftool"] {
        assert!(
            !installed(tool).is_empty(),
            "{tool} is not installed: nothing to hide (run `cargo xtask setup` first)"
        );
    }
    let scratch = tempfile::tempdir().unwrap();
    let empty = scratch.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let target = scratch.path().join("target");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();

    // One shell in a private mount namespace: cover the tools, prove that they
    // no longer run, then build.
    let mut script = String::from("set -e\n");
    for file in &hidden {
        script += &format!("mount --bind '{}' '{}'\n", empty.display(), file.display());
    }
    for tool in HIDDEN {
        script += &format!("if {tool} --version >/dev/null 2>&1; then echo '{tool} still runs' >&2; exit 97; fi\n");
    }
    script += "exec \"$CARGO\" build --locked --quiet -p xtask --target-dir \"$TARGET\"\n";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("CARGO", env!("CARGO"))
        .env("TARGET", &target)
        .current_dir(workspace)
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(97), "a tool could not be hidden: {stderr}");
    assert!(out.status.success(), "xtask does not build without the system packages:\n{stderr}");

    // The binary it built runs and answers.
    let usage = Command::new(target.join("debug/xtask")).arg("no-such-task").output().unwrap();
    assert!(!usage.status.success());
    assert!(String::from_utf8_lossy(&usage.stderr).contains("usage: cargo xtask"), "{usage:?}");
}
