//! Developer entry points for nodeplane, run as `cargo xtask <task>`:
//!
//! - `setup`: install the Debian packages the build and tests need (root).
//! - `image`: build the node image into `target/image/` (see `image.rs`).
//! - `run [--headless]`: set up, build the image and boot it under QEMU with its
//!   console here, printing the node's health once nodeplaned is READY (and, with
//!   `--headless`, exiting then).
//! - `test`: set up, then run everything: formatting, lints, every test, the unit
//!   hardening check, the QEMU boot tests, and a `run --headless` smoke run.
//! - `bench ipam`: the IPAM sweeper at node scale (see `bench.rs`).
//! - `bench boot`: the image's boot time under QEMU, with and without nodeplaned
//!   (see `bench_boot.rs`).
//! - `bench datapath`: connection rate through a Service VIP against the direct
//!   pod-IP path (see `bench_datapath.rs`).
//! - `bench policy`: connection rates through a pod selected by 0, 100 and
//!   1,000 NetworkPolicy rules, and the time to program 1,000 policies (see
//!   `bench_policy.rs`).
//! - `probe DIR [options]`: `nodeplanectl probe` from a fresh build (root).

mod bench;
mod bench_boot;
mod bench_datapath;
mod bench_policy;
mod image;
mod packages;
mod run;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <setup | image | run [--headless] | test | probe DIR [OPTIONS] | bench ipam | bench datapath | bench policy | bench boot>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => packages::ensure(),
        ["image"] => image::build().map(drop),
        ["run"] => run::run(false),
        ["run", "--headless"] => run::run(true),
        ["test"] => test::test(),
        ["bench", "datapath"] => bench_datapath::bench(),
        ["bench", "policy"] => bench_policy::bench(),
        ["probe", options @ ..] if !options.is_empty() => probe(options),
        ["bench", "boot"] => bench_boot::bench(),
        ["bench", what] => bench::bench(what),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Builds nodeplane and runs `nodeplanectl probe` with `options`.
fn probe(options: &[&str]) -> Result<(), String> {
    packages::ensure()?;
    step("build", cargo().args(["build", "--bins", "-p", "nodeplane"]))?;
    let status = Command::new(target_dir().join("debug/nodeplanectl"))
        .arg("probe")
        .args(options)
        .status()
        .map_err(|e| format!("nodeplanectl: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("nodeplanectl probe: {status}")) }
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Runs `command` in the workspace root, failing with its description.
fn step(what: &str, command: &mut Command) -> Result<(), String> {
    eprintln!("==> {what}");
    let status = command.current_dir(root()).status().map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{what}: failed ({status})")) }
}

/// Where cargo puts build output (`CARGO_TARGET_DIR` if set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
