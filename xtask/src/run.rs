//! `cargo xtask run`: the supervisor on this host, contained. Until the node image
//! exists, this is the main job: `nodeplaned` in a throwaway network namespace
//! (its sysctls are that namespace's, so the host is untouched), on a private bus.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nodeplane_testkit::{DbusDaemon, Launch, Nodeplaned};

/// A node.toml that shows the guard at work: the namespace starts with an
/// ephemeral range overlapping the NodePorts (as many distributions' tuning does).
const DEMO_CONFIG: &str = "[sysctl]\ncheck_interval = \"5s\"\n";
const OVERLAPPING_RANGE: (&str, &str) = ("net.ipv4.ip_local_port_range", "10000 40000");

pub fn run(once: bool) -> Result<(), String> {
    crate::packages::ensure()?;
    if !nodeplane_testkit::is_root() {
        return Err("cargo xtask run needs root (network namespace, sysctls, D-Bus policy as uid 0)".into());
    }
    crate::step("build", crate::cargo().args(["build", "--bins"]))?;
    let bin = crate::target_dir().join("debug");
    let policy = crate::root().join("units/org.nodeplane.Node1.conf");
    let bus = DbusDaemon::start(&[&policy]).map_err(|e| format!("private bus: {e}"))?;
    eprintln!("==> private system bus at {}", bus.address());
    eprintln!(
        "==> starting nodeplaned in a throwaway network namespace (ip_local_port_range preset to {})",
        OVERLAPPING_RANGE.1
    );
    let node = Nodeplaned::spawn(
        &bus,
        Launch {
            binary: &bin.join("nodeplaned"),
            config: DEMO_CONFIG,
            preset: &[OVERLAPPING_RANGE],
            env: &[],
            capture_stderr: false,
            journal: None,
        },
    )
    .map_err(|e| format!("starting nodeplaned: {e}"))?;
    node.wait_ready(Duration::from_secs(30))?;
    eprintln!("==> nodeplaned is READY (pid {})\n", node.pid());
    status(&bin.join("nodeplanectl"), &bus)?;
    if !once {
        wait_for_ctrl_c(&node, &bus, &bin)?;
    }
    stop(node)
}

fn status(nodeplanectl: &Path, bus: &DbusDaemon) -> Result<(), String> {
    let status = Command::new(nodeplanectl)
        .arg("status")
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .status()
        .map_err(|e| format!("nodeplanectl: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("nodeplanectl status: node not healthy ({status})")) }
}

fn wait_for_ctrl_c(node: &Nodeplaned, bus: &DbusDaemon, bin: &Path) -> Result<(), String> {
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()).map_err(|e| e.to_string())?;
    eprintln!("\nnodeplaned runs; try, from another shell:");
    eprintln!("  DBUS_SYSTEM_BUS_ADDRESS={} {} status", bus.address(), bin.join("nodeplanectl").display());
    eprintln!(
        "  nsenter --net=/proc/{}/ns/net sysctl -w net.ipv4.ip_local_port_range='30000 40000'   # drift; restored within 5 s",
        node.pid()
    );
    eprintln!("Press Ctrl-C to stop.");
    while !interrupted.load(Ordering::Relaxed) {
        if node.notify().recv(Duration::from_millis(200)).is_some_and(|m| m.contains("STOPPING=1")) {
            break;
        }
    }
    Ok(())
}

fn stop(node: Nodeplaned) -> Result<(), String> {
    eprintln!("\n==> stopping nodeplaned");
    let status = node.stop(Duration::from_secs(15))?;
    if status.success() { Ok(()) } else { Err(format!("nodeplaned exited with {status}")) }
}
