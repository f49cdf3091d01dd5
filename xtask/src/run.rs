//! `cargo xtask run`: the supervisor on this host, contained. Until the node image
//! exists, this is the main job: `nodeplaned` in a throwaway network namespace
//! (its sysctls are that namespace's, so the host is untouched), on a private bus.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nodeplane_testkit::{Bpffs, Containerd, DbusDaemon, HostLocal, Launch, Nodeplaned};

/// The namespace starts with an ephemeral range overlapping the NodePorts (as
/// many distributions' tuning does), so the sysctl guard has work to show.
const OVERLAPPING_RANGE: (&str, &str) = ("net.ipv4.ip_local_port_range", "10000 40000");

/// A node.toml for the demo: a private containerd and a CNI network with one
/// live pod and one leaked reservation, for the IPAM sweeper.
fn demo_config(ctrd: &Containerd, cni: &Path, bpffs: &Bpffs, manifests: &Path) -> String {
    format!(
        "[sysctl]\ncheck_interval = \"5s\"\n\n[ipam]\ninterval = \"1m\"\nnetworks_dir = \"{}\"\ncontainerd_socket = \"{}\"\n\n\
         [datapath]\nbpffs_root = \"{}/nodeplane\"\nstate_dir = \"{}\"\nmanifests_dir = \"{}\"\n",
        cni.display(),
        ctrd.socket().display(),
        bpffs.path().display(),
        bpffs.state_dir().display(),
        manifests.display()
    )
}

/// A Service with one endpoint, for the datapath to program.
const DEMO_MANIFEST: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: demo}\nspec:\n  clusterIP: 10.96.0.10\n  \
     ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: demo-1\n  \
     labels: {kubernetes.io/service-name: demo}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n- addresses: [\"10.88.0.2\"]\n";

/// One live pod sandbox and one whose container is gone, its reservation an hour old.
fn demo_pods(ctrd: &Containerd, cni: &Path) -> Result<(), String> {
    let pods = HostLocal { name: "demo-pods".into(), data_dir: cni.to_owned(), ranges: vec![vec!["10.88.0.0/24"]] };
    let (live, gone) = (format!("{:0>64}", "1ive"), format!("{:0>64}", "9one"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(ctrd.create_containers("k8s.io", std::slice::from_ref(&live)));
    pods.add(&live, "eth0")?;
    for ip in pods.add(&gone, "eth0")? {
        let file =
            std::fs::File::options().write(true).open(pods.dir().join(ip.to_string())).map_err(|e| e.to_string())?;
        file.set_modified(SystemTime::now() - Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

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
    let ctrd = Containerd::start().map_err(|e| format!("private containerd: {e}"))?;
    let cni = tempfile::tempdir().map_err(|e| e.to_string())?;
    demo_pods(&ctrd, cni.path())?;
    let bpffs = Bpffs::mount().map_err(|e| format!("private bpffs: {e}"))?;
    let manifests = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(manifests.path().join("demo.yaml"), DEMO_MANIFEST).map_err(|e| e.to_string())?;
    eprintln!(
        "==> private containerd at {}; CNI network demo-pods with one leaked reservation",
        ctrd.socket().display()
    );
    eprintln!(
        "==> starting nodeplaned in a throwaway network namespace (ip_local_port_range preset to {})",
        OVERLAPPING_RANGE.1
    );
    let node = Nodeplaned::spawn(
        &bus,
        Launch {
            binary: &bin.join("nodeplaned"),
            config: &demo_config(&ctrd, cni.path(), &bpffs, manifests.path()),
            preset: &[OVERLAPPING_RANGE],
            env: &[],
            capture_stderr: false,
            journal: None,
            netns: None,
        },
    )
    .map_err(|e| format!("starting nodeplaned: {e}"))?;
    node.wait_ready(Duration::from_secs(30))?;
    eprintln!("==> nodeplaned is READY (pid {})\n", node.pid());
    nodeplanectl(&bin, &bus, &["status"])?;
    eprintln!("\n==> nodeplanectl sweep --dry-run");
    nodeplanectl(&bin, &bus, &["sweep", "--dry-run"])?;
    if !once {
        wait_for_ctrl_c(&node, &bus, &bin)?;
    }
    stop(node)
}

fn nodeplanectl(bin: &Path, bus: &DbusDaemon, args: &[&str]) -> Result<(), String> {
    let status = Command::new(bin.join("nodeplanectl"))
        .args(args)
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
        .status()
        .map_err(|e| format!("nodeplanectl: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("nodeplanectl {}: {status}", args.join(" "))) }
}

fn wait_for_ctrl_c(node: &Nodeplaned, bus: &DbusDaemon, bin: &Path) -> Result<(), String> {
    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()).map_err(|e| e.to_string())?;
    eprintln!("\nnodeplaned runs; try, from another shell:");
    let ctl = format!("DBUS_SYSTEM_BUS_ADDRESS={} {}", bus.address(), bin.join("nodeplanectl").display());
    eprintln!("  {ctl} status");
    eprintln!("  {ctl} sweep        # frees the leaked reservation (the periodic sweep does within a minute)");
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
