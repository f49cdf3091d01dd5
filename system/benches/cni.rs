//! `cargo xtask bench cni` (`cargo bench -p nodeplane --bench cni`): how long
//! the real `nodeplane-cni` takes to give a pod its network (ADD) and to take
//! it away (DEL), as a container runtime calls it: in a node namespace with a
//! real (release) `nodeplaned` on a private bus, host-local IPAM, 200 pods a
//! round, 3 rounds. Each call is timed from spawn to exit; p50 and p99 over
//! all calls. Writes `target/bench/cni.json`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeplane_testkit::bench::{run_bench, write_results};
use nodeplane_testkit::{Bpffs, DbusDaemon, Launch, NamedNetns, Nodeplaned};

const PODS: usize = 200;
const ROUNDS: usize = 3;

fn main() -> std::process::ExitCode {
    run_bench("cni", bench)
}

fn bench() -> Result<(), nodeplane_testkit::Error> {
    if !nodeplane_testkit::is_root() {
        return Err("the benchmark needs root (network namespaces, eBPF, D-Bus policy)".into());
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bus = DbusDaemon::start(&[&manifest_dir.join("../units/org.nodeplane.Node1.conf")])?;
    let bpffs = Bpffs::mount()?;
    let node = node_netns()?;
    let work = tempfile::tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    let config = nodeplane_testkit::datapath_config(&bpffs, &manifests, "masquerade = false");
    let launch = Launch {
        binary: Path::new(env!("CARGO_BIN_EXE_nodeplaned")),
        config: &config,
        preset: &[],
        env: &[],
        capture_stderr: true,
        journal: None,
        netns: Some(&node.path()),
        metrics: None,
    };
    let nodeplaned = Nodeplaned::spawn(&bus, launch)?;
    nodeplaned.wait_ready(Duration::from_secs(30)).map_err(|e| format!("{e}\n{}", nodeplaned.stderr()))?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "nodeplane-cni",
        "ipam": {"type": "host-local", "dataDir": work.path().join("ipam"), "ranges": [[{"subnet": "10.244.0.0/16"}]]},
    })
    .to_string();
    let (mut add, mut del) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprint!("\r==> round {round}/{ROUNDS}: {PODS} pods added, then deleted");
        let pods: Vec<NamedNetns> = (0..PODS)
            .map(|i| NamedNetns::new(format!("npbench{}r{round}p{i}", std::process::id() % 10_000)))
            .collect::<Result<_, _>>()?;
        for (i, pod) in pods.iter().enumerate() {
            add.push(cni(&node, &bus, &conf, "ADD", &format!("bench{round}x{i}"), &pod.path())?);
        }
        for (i, pod) in pods.iter().enumerate() {
            del.push(cni(&node, &bus, &conf, "DEL", &format!("bench{round}x{i}"), &pod.path())?);
        }
    }
    eprintln!();
    nodeplaned.stop(Duration::from_secs(10))?;
    let (add_p, del_p) = (percentiles(&mut add), percentiles(&mut del));
    println!("\nnodeplane-cni, {ROUNDS} rounds of {PODS} pods, spawn to exit (ms)");
    println!("| command | calls | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, (p50, p99, max), calls) in [("ADD", add_p, add.len()), ("DEL", del_p, del.len())] {
        println!("| {name} | {calls} | {p50:.2} | {p99:.2} | {max:.2} |");
    }
    let json = serde_json::json!({
        "pods": PODS, "rounds": ROUNDS,
        "add_ms": {"p50": add_p.0, "p99": add_p.1, "max": add_p.2},
        "del_ms": {"p50": del_p.0, "p99": del_p.1, "max": del_p.2},
    });
    write_results("cni", &json)?;
    Ok(())
}

fn node_netns() -> Result<NamedNetns, nodeplane_testkit::Error> {
    let node = NamedNetns::new(format!("npbench{}-node", std::process::id() % 10_000))?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    Ok(node)
}

/// Runs `nodeplane-cni COMMAND` for a pod, in the node's namespace; how long it took.
fn cni(
    node: &NamedNetns,
    bus: &DbusDaemon,
    conf: &str,
    command: &str,
    container: &str,
    netns: &Path,
) -> Result<Duration, nodeplane_testkit::Error> {
    let (conf, command, container, netns, address) =
        (conf.to_owned(), command.to_owned(), container.to_owned(), netns.to_owned(), bus.address().to_owned());
    // Spawned from a thread in the node's namespace, the plugin runs there too.
    let out = node.run(move || -> std::io::Result<(Duration, std::process::Output)> {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nodeplane-cni"))
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &container)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}"))
            .env("CNI_PATH", "/usr/lib/cni")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(conf.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((started.elapsed(), out))
    })??;
    let (took, out) = out;
    if !out.status.success() {
        return Err(format!(
            "nodeplane-cni failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(took)
}

/// p50, p99 and the maximum, in ms.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(1.0))
}
