//! Developer entry points for nodeplane, run as `cargo xtask <task>`:
//!
//! - `setup`: install the Debian packages the build and tests need (root).
//! - `image`: build the node image into `target/image/` (see `image.rs`).
//! - `run [--headless]`: set up, build the image and boot it under QEMU with its
//!   console here, printing the node's health once nodeplaned is READY (and, with
//!   `--headless`, exiting then).
//! - `test`: set up, then run everything: formatting, lints, every test, the unit
//!   hardening check, the QEMU boot tests, a short run of each fuzz target and a
//!   `run --headless` smoke run.
//! - `cluster up|down|status`: the one-machine Kubernetes control plane the
//!   node joins (see `cluster.rs`).
//! - `fuzz [SECONDS]`: set up, then each fuzz target for SECONDS (600 by
//!   default) and the datapath's hostile-packet property at length (see `fuzz.rs`).
//! - `bench ipam|cni|datapath|policy|api|boot`: set up, then the `cargo bench` target
//!   of that name (see [`BENCHES`]).
//! - `probe DIR [options]`: `nodeplanectl probe` from a fresh build (root);
//!   a bare `--api` follows the local control plane (`cluster up` first).
//!
//! xtask itself builds with nothing but the Rust toolchain (no crate in its
//! graph compiles C or runs protoc): it is what installs those tools. All it
//! needs from the heavier crates it gets by running cargo after setup.

mod cluster;
mod fuzz;
mod image;
mod packages;
mod run;
mod test;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <setup | image | run [--headless] | test | cluster up|down|status | fuzz [SECONDS] | probe DIR [OPTIONS] | bench ipam|cni|datapath [--cross-node]|policy|api|boot>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["setup"] => packages::ensure(),
        ["image"] => image::build().map(drop),
        ["run"] => run::run(false),
        ["run", "--headless"] => run::run(true),
        ["test"] => test::test(),
        ["cluster", verb] => cluster::cluster(verb),
        ["fuzz"] => fuzz::fuzz(None),
        ["fuzz", seconds] => fuzz::fuzz(Some(seconds)),
        ["bench", what, options @ ..] => bench(what, options),
        ["probe", options @ ..] if !options.is_empty() => probe(options),
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

/// Benchmark → (package, what it measures). Each is a `harness = false`
/// `cargo bench` target of its package, built with the release profile.
const BENCHES: &[(&str, &str, &str)] = &[
    ("ipam", "nodeplane", "the IPAM sweeper at node scale, in the real nodeplaned"),
    ("cni", "nodeplane", "nodeplane-cni ADD and DEL latency over 200 pods"),
    ("datapath", "nodeplane-datapath", "Service connections: nodeplane's VIP against direct, iptables and nftables"),
    ("policy", "nodeplane-datapath", "connections through a pod selected by 0, 100 and 1,000 NetworkPolicy rules"),
    (
        "api",
        "nodeplane",
        "following a real API server at 10,000 Services: nodeplane against kube-proxy iptables and nftables",
    ),
    ("boot", "nodeplane-qemu", "the image's boot under QEMU with and without nodeplaned"),
];

/// `cargo xtask bench WHAT [OPTIONS]`: packages, the image for `boot`, then
/// the benchmark, given `options` (`datapath --cross-node`).
fn bench(what: &str, options: &[&str]) -> Result<(), String> {
    let Some((name, package, about)) = BENCHES.iter().find(|(name, ..)| *name == what) else {
        let names: Vec<&str> = BENCHES.iter().map(|(name, ..)| *name).collect();
        return Err(format!("unknown benchmark {what:?}; available: {}", names.join(", ")));
    };
    packages::ensure()?;
    if !is_root() {
        return Err("the benchmarks need root (network namespaces, eBPF, containerd, QEMU)".into());
    }
    let mut command = cargo();
    if *name == "boot" {
        command.env("NODEPLANE_IMAGE_DIR", image::build()?.dir);
    }
    if *name == "ipam" {
        // The node's containerd 2, built from source once.
        nodeplane_image::upstream::CONTAINERD.ensure(&root(), &image::cache_dir()).map_err(|e| e.to_string())?;
    }
    let what = [&[*name][..], options].concat().join(" ");
    step(&format!("bench {what}: {about}"), command.args(["bench", "-p", package, "--bench", name, "--"]).args(options))
}

/// Builds nodeplane and runs `nodeplanectl probe` with `options`; a bare
/// `--api` means the local control plane's API server (`cluster up` first).
fn probe(options: &[&str]) -> Result<(), String> {
    packages::ensure()?;
    step("build", cargo().args(["build", "--bins", "-p", "nodeplane"]))?;
    let mut options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    if let Some(at) = options.iter().position(|o| o == "--api")
        && options.get(at + 1).is_none_or(|next| next.starts_with("--"))
    {
        let plane = cluster::control_plane()?;
        timed("start the control plane", || plane.up().map_err(|e| e.to_string()))?;
        options.insert(at + 1, plane.admin_kubeconfig().display().to_string());
    }
    let status = Command::new(target_dir().join("debug/nodeplanectl"))
        .arg("probe")
        .args(&options)
        .status()
        .map_err(|e| format!("nodeplanectl: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("nodeplanectl probe: {status}")) }
}

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

/// Runs `command` in the workspace root, failing with its description; says
/// what it starts and how long it took.
fn step(what: &str, command: &mut Command) -> Result<(), String> {
    timed(what, || {
        let status = command.current_dir(root()).status().map_err(|e| format!("{what}: cannot start: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("{what}: failed ({status})")) }
    })
}

/// Runs one step of a task between a `==> what` line and a `<== what: N s` line.
fn timed<T>(what: &str, body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    eprintln!("==> {what}");
    let started = Instant::now();
    let result = body();
    let outcome = if result.is_ok() { "done" } else { "FAILED" };
    eprintln!("<== {what}: {outcome} in {:.1} s", started.elapsed().as_secs_f64());
    result
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Where cargo puts build output (`CARGO_TARGET_DIR` if set).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}
