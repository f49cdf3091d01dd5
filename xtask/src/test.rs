//! `cargo xtask test`: everything, in the order that fails fastest, closing with
//! one `N passed, N failed` line over all test binaries.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

pub fn test() -> Result<(), String> {
    crate::packages::ensure()?;
    crate::step("format check", crate::cargo().args(["fmt", "--all", "--", "--check"]))?;
    crate::step("lints", crate::cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // The boot tests need the node image, the cluster test the control plane's
    // binaries (both built from source once, then cached).
    let image = crate::image::build()?;
    crate::cluster::control_plane()?;
    let tally = crate::timed("tests (cargo test --workspace)", || cargo_test(&image.dir))?;
    let fuzzed = crate::timed("fuzz targets", || crate::fuzz::targets(crate::fuzz::SHORT));
    let smoke = if crate::is_root() {
        // In this process: `cargo test` may have rebuilt (replaced) this very binary.
        Some(crate::timed("smoke run (cargo xtask run --headless)", || crate::run::run(true)))
    } else {
        eprintln!("==> not root: privileged tests (counted as passed by cargo) and the smoke run were SKIPPED");
        None
    };
    let smoke_passed = smoke.as_ref().is_some_and(Result::is_ok);
    let smoke_failed = smoke.as_ref().is_some_and(Result::is_err);
    let passed = tally.passed + u32::from(smoke_passed) + u32::from(fuzzed.is_ok());
    let failed = tally.failed + u32::from(smoke_failed) + u32::from(fuzzed.is_err());
    println!("xtask: {passed} passed, {failed} failed");
    smoke.transpose()?;
    fuzzed?;
    if failed > 0 {
        return Err(format!("{failed} test(s) failed"));
    }
    if !tally.succeeded {
        return Err("cargo test failed without a failed test: see its output (a build error?)".into());
    }
    Ok(())
}

struct Tally {
    passed: u32,
    failed: u32,
    succeeded: bool,
}

/// `cargo test --workspace`, echoing its output and adding up the result lines.
fn cargo_test(image: &std::path::Path) -> Result<Tally, String> {
    let mut child = crate::cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .env("NODEPLANE_IMAGE_DIR", image)
        .env("NODEPLANE_CONTAINERD", containerd())
        .current_dir(crate::root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let mut tally = Tally { passed: 0, failed: 0, succeeded: false };
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            tally.passed += count(counts, "passed");
            tally.failed += count(counts, "failed");
        }
    }
    tally.succeeded = child.wait().map_err(|e| e.to_string())?.success();
    Ok(tally)
}

/// The number before `label` in `ok. 5 passed; 0 failed; 0 ignored; …`.
fn count(counts: &str, label: &str) -> u32 {
    counts
        .split(';')
        .find_map(|part| {
            let mut words = part.split_whitespace().rev();
            (words.next() == Some(label)).then(|| words.next()?.parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// containerd 2 as the image carries it, for the tests' private containerd.
fn containerd() -> std::path::PathBuf {
    nodeplane_image::upstream::CONTAINERD.cached(&crate::image::cache_dir()).join("containerd")
}
