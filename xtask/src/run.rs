//! `cargo xtask run`: the main job. Builds the node image (cached) and boots it
//! under QEMU the way a user would try it: its serial console on this terminal,
//! logged in as root (`nodeplane.autologin`, development boots only), the node's
//! health printed as soon as nodeplaned is READY. `--headless` prints that
//! status and exits (0 when the node is healthy).
//!
//! First it brings up the one-machine control plane (`cargo xtask cluster
//! up`), and the node joins it: its `target/run/node.toml`, written on the
//! first run with the node's credentials in `[kubernetes]` (edit it freely; it
//! is kept), goes to the node through fw_cfg. `--headless` then waits for the
//! node to be Ready (its Node object from an earlier boot is deleted first),
//! prints `kubectl get nodes -o wide`, and exits 0 only when the node is Ready
//! and healthy.
//!
//! The state disk (`/var`) is kept in `target/run/state.img` between runs.

use std::time::Duration;

use std::time::Instant;

use nodeplane_qemu::{Boot, Console, Firmware, Vm, copy_disk};

/// The node's name in the local cluster.
const NODE: &str = "nodeplane-1";
/// A TCG-emulated node's way to Ready: boot, containerd, the kubelet.
const READY_TIMEOUT: Duration = Duration::from_secs(900);

const STATUS_START: &str = "== nodeplane status ==";
const STATUS_END: &str = "== end of nodeplane status (exit ";

pub fn run(headless: bool) -> Result<(), String> {
    let image = crate::image::build()?;
    let plane = crate::cluster::control_plane()?;
    // A headless run leaves things as it found them: it stops a control plane it
    // started, however it ends (declared first: dropped after the VM).
    let _stop = Stop((headless && plane.running().is_empty()).then_some(&plane));
    crate::timed("start the control plane (cargo xtask cluster up)", || plane.up().map_err(|e| e.to_string()))?;
    let dir = crate::target_dir().join("run");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let state = dir.join("state.img");
    if !state.exists() {
        copy_disk(&image.state_template(), &state).map_err(|e| e.to_string())?;
    }
    let config = dir.join("node.toml");
    if !config.exists() {
        let credentials = plane.node_credentials(NODE).map_err(|e| e.to_string())?;
        // node_ip: QEMU's guest address, the Node's InternalIP and where NodePorts are served.
        let text = format!("[datapath]\nnode_ip = \"10.0.2.15\"\n\n{}", credentials.node_toml());
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    }
    // A Node kept from an earlier boot may still say Ready: this boot's must.
    let forgot = plane.kubectl().args(["delete", "node", NODE, "--ignore-not-found", "--wait=false"]).output();
    if !forgot.as_ref().is_ok_and(|o| o.status.success()) {
        return Err(format!("kubectl delete node {NODE}: {forgot:?}"));
    }
    eprintln!("==> passing {} to the node (fw_cfg opt/org.nodeplane/node.toml)", config.display());
    eprintln!("    kubectl --kubeconfig {} get nodes", plane.admin_kubeconfig().display());
    let config = Some(config);
    let console = dir.join("console.log");
    // Only this boot's console counts.
    let _ = std::fs::remove_file(&console);
    let boot = Boot {
        image: &image,
        firmware: Firmware::Direct { state },
        console: if headless { Console::File(console.clone()) } else { Console::Terminal },
        config: config.as_deref(),
        share: None,
        kernel_args: vec!["nodeplane.autologin".into()],
        forward: Vec::new(),
        netdev: vec![plane.guest_forward()],
        lan: None,
    };
    eprintln!("==> booting the node under QEMU (TCG; about a minute)");
    if !headless {
        eprintln!("    the serial console follows; `systemctl poweroff` (or Ctrl-A x) ends the VM");
    }
    let mut vm = Vm::start(boot).map_err(|e| e.to_string())?;
    if !headless {
        return vm.wait().map(drop).map_err(|e| e.to_string());
    }
    let took = vm
        .wait_console(STATUS_END, Duration::from_secs(600))
        .map_err(|e| format!("{e}; console in {}", console.display()))?;
    let text = vm.console();
    let start = text.rfind(STATUS_START).unwrap_or(0);
    let end = text[start..].find(STATUS_END).map_or(text.len(), |i| start + i);
    let exit_line = text[end..].lines().next().unwrap_or("");
    // journald's console copy prefixes each line with the time and `sh[PID]: `.
    for line in text[start..end].lines().skip(1) {
        if let Some((_, said)) = line.split_once("]: ").filter(|(prefix, _)| prefix.contains(" sh[")) {
            println!("{said}");
        }
    }
    eprintln!("==> status shown {:.0} s after QEMU started; console in {}", took.as_secs_f64(), console.display());
    if !exit_line.contains("(exit 0)") {
        return Err(format!("the node is not healthy: {exit_line}"));
    }
    // A node that refused its node.toml runs standalone and never joins: no use waiting.
    if let Some(refused) = text.lines().find(|l| l.contains("was NOT applied")) {
        let reasons: Vec<&str> = text.lines().filter(|l| l.contains("nodeplane:   ")).collect();
        return Err(format!("{refused}\n{}", reasons.join("\n")));
    }
    let started = Instant::now();
    let ready = crate::timed(&format!("wait for node {NODE} to be Ready"), || {
        let jsonpath = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
        loop {
            let out = plane.kubectl().args(["get", "node", NODE, "-o", jsonpath]).output();
            if out.is_ok_and(|o| o.status.success() && o.stdout == b"True") {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "node {NODE} is not Ready after {READY_TIMEOUT:?}; console in {}",
                    console.display()
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let _ = plane.kubectl().args(["get", "nodes", "-o", "wide"]).status();
    ready
}

/// Brings the control plane it holds down when dropped.
struct Stop<'a>(Option<&'a nodeplane_cluster::ControlPlane>);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if let Some(plane) = self.0 {
            let _ = plane.down();
        }
    }
}
