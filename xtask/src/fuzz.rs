//! `cargo xtask fuzz [SECONDS]`: the fuzz targets of `system/fuzz` under
//! cargo-fuzz (libFuzzer), each for SECONDS (600 by default), then the
//! datapath's hostile-packet property (`datapath/tests/hostile_packets.rs`)
//! over 1,000,000 random frames. `cargo xtask test` runs each target for
//! [`SHORT`] seconds (the property runs there as an ordinary test).
//!
//! Each target's corpus grows in `target/fuzz/corpus/TARGET`, from the seeds in
//! `system/fuzz/seeds/TARGET`; a crashing input is saved in
//! `target/fuzz/artifacts/TARGET/` and named in the failure.

/// The targets, as `system/fuzz/Cargo.toml` names its binaries.
const TARGETS: &[&str] = &["config", "manifests", "cni_request"];
/// Seconds per target in `cargo xtask test`.
pub const SHORT: u32 = 20;
/// The version of cargo-fuzz installed when it is missing.
const CARGO_FUZZ: &str = "0.13.1";

/// `cargo xtask fuzz [SECONDS]`.
pub fn fuzz(seconds: Option<&str>) -> Result<(), String> {
    let seconds = match seconds {
        None => 600,
        Some(text) => text.parse().ok().filter(|s| *s > 0).ok_or_else(|| format!("{text:?}: a number of seconds"))?,
    };
    crate::packages::ensure()?;
    targets(seconds)?;
    if !crate::is_root() {
        return Err("the hostile-packet property needs root (network namespaces, eBPF)".into());
    }
    crate::step(
        "hostile-packet property: 1,000,000 frames",
        crate::cargo()
            .args(["test", "--release", "-p", "nodeplane-datapath", "--test", "hostile_packets"])
            .env("PROPTEST_CASES", "1000000"),
    )
}

/// Runs every target for `seconds`; fails on the first that finds a crash.
pub fn targets(seconds: u32) -> Result<(), String> {
    ensure_cargo_fuzz()?;
    let fuzz = crate::target_dir().join("fuzz");
    for target in TARGETS {
        let (corpus, artifacts) = (fuzz.join("corpus").join(target), fuzz.join("artifacts").join(target));
        for dir in [&corpus, &artifacts] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let mut command = crate::cargo();
        // No sanitizer: cargo-fuzz needs a nightly compiler for one, and safe
        // Rust needs none to find panics.
        command.args(["fuzz", "run", "--fuzz-dir", "system/fuzz", "--sanitizer", "none", target]).arg(&corpus);
        let seeds = crate::root().join("system/fuzz/seeds").join(target);
        if seeds.is_dir() {
            command.arg(seeds);
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()));
        crate::step(&format!("fuzz {target} for {seconds} s"), &mut command)
            .map_err(|e| format!("{e}; the input that crashed it is in {}", artifacts.display()))?;
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<(), String> {
    if crate::cargo().args(["fuzz", "--version"]).output().is_ok_and(|out| out.status.success()) {
        return Ok(());
    }
    crate::step(
        &format!("cargo install cargo-fuzz {CARGO_FUZZ}"),
        crate::cargo().args(["install", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ]),
    )
}
