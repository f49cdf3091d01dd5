//! Two nodes booted from the image, both joined to a control plane of this
//! machine's, on one L2: a second network card each (`lan0`,
//! 192.168.100.0/24) joined by a QEMU socket netdev on loopback, addressed by
//! the kernel command line (`ifname=`, `ip=`: systemd-network-generator) and
//! used as the node's address (`[datapath] node_ip`, the kubelet's node IP),
//! so nodeplaned routes each node's pod CIDR natively to the other. An echo
//! Deployment is spread over both; a client and a denied pod run on node-1.
//! Node-1's guest script (`guest/two-nodes.sh`) checks pod to pod, the
//! ClusterIP and node-2's NodePort across nodes and the NetworkPolicy; then
//! node-2 is powered off, and once its pod is no longer ready the ClusterIP
//! keeps serving from node-1's.
//!
//! One run for every check (two TCG guests are slow), each check its own test.
//! Node-1's first check is its second card; when that fails the run ends there,
//! with what udev and networkd did with the card.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nodeplane_cluster::ControlPlane;
use nodeplane_qemu::{Boot, Console, Firmware, GuestResults, Lan, Vm, copy_disk};

mod common;
use common::*;

const NODES: [&str; 2] = ["node-1", "node-2"];
const READY_TIMEOUT: Duration = Duration::from_secs(1200);
const RUNNING_TIMEOUT: Duration = Duration::from_secs(600);
/// Node-2 powered off to its pod's endpoint not ready: the controller
/// manager's node-monitor grace period (2 minutes here) and a sync.
const GONE_TIMEOUT: Duration = Duration::from_secs(600);

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 2
      # One per node.
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: echo}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: echo
        image: nodeplane.invalid/echo:v1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
";

/// The Service (ClusterIP and NodePort, `externalTrafficPolicy: Cluster`), a
/// policy letting in only `role: client` and the nodes' addresses (NodePort
/// traffic), and the client and the denied pod, both on node-1.
const SERVICE_AND_POLICY: &str = "apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo-clients-only, namespace: default}
spec:
  podSelector: {matchLabels: {app: echo}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: 8080}]
  - from: [{ipBlock: {cidr: 192.168.100.0/24}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec:
  nodeName: node-1
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers: [{name: echo, image: nodeplane.invalid/echo:v1, imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: denied, namespace: default, labels: {role: other}}
spec:
  nodeName: node-1
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers: [{name: echo, image: nodeplane.invalid/echo:v1, imagePullPolicy: Never}]
";

/// What the host saw.
struct HostView {
    ready_after: Duration,
    /// The echo pods: name, IP, node.
    spread: Vec<(String, String, String)>,
    /// Node-2 powered off to its endpoint not ready.
    gone_after: Duration,
}

type Outcome = common::Outcome<HostView>;

/// The node's `lan0` address and MAC.
fn lan(i: usize) -> (String, String) {
    (format!("192.168.100.{}", i + 1), format!("52:54:00:4e:00:0{}", i + 1))
}

fn ready(plane: &ControlPlane, node: &str) -> bool {
    let jsonpath = "{.status.conditions[?(@.type==\"Ready\")].status}";
    kubectl(plane, &["get", "node", node, "-o", &format!("jsonpath={jsonpath}")]).is_ok_and(|s| s == "True")
}

/// The echo pods Running with an IP: name, IP, node.
fn echo_pods(plane: &ControlPlane) -> Vec<(String, String, String)> {
    let jsonpath = "{range .items[*]}{.metadata.name} {.status.phase} {.status.podIP} {.spec.nodeName}{\"\\n\"}{end}";
    kubectl(plane, &["get", "pods", "-l", "app=echo", "-o", &format!("jsonpath={jsonpath}")])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "Running", ip, node] => Some((name.to_owned(), ip.to_owned(), node.to_owned())),
            _ => None,
        })
        .collect()
}

fn pod_ip(plane: &ControlPlane, name: &str) -> Option<String> {
    let phase = kubectl(plane, &["get", "pod", name, "-o", "jsonpath={.status.phase} {.status.podIP}"]).ok()?;
    phase.strip_prefix("Running ").filter(|ip| !ip.is_empty()).map(str::to_owned)
}

/// Whether the echo Service's slices list `ip` as not ready, or not at all.
fn not_ready(plane: &ControlPlane, ip: &str) -> bool {
    let jsonpath = "{range .items[*].endpoints[*]}{.addresses[0]} {.conditions.ready}{\"\\n\"}{end}";
    let selector = "kubernetes.io/service-name=echo";
    let Ok(out) = kubectl(plane, &["get", "endpointslices", "-l", selector, "-o", &format!("jsonpath={jsonpath}")])
    else {
        return false;
    };
    !out.lines().any(|l| l == format!("{ip} true"))
}

/// Drives the cluster while node-1's guest checks: see the module doc.
fn drive(plane: &ControlPlane, vms: &mut [Vm; 2], started: Instant, share: &Path) -> Result<HostView, String> {
    let results = share.join("results");
    wait("both nodes Ready", READY_TIMEOUT, || {
        for vm in vms.iter_mut() {
            if let Ok(Some(status)) = vm.try_exit() {
                return Some(Err(format!("QEMU exited ({status})")));
            }
            if vm.console().contains("was NOT applied") {
                return Some(Err("a guest refused its node.toml".into()));
            }
        }
        NODES.iter().all(|node| ready(plane, node)).then_some(Ok(()))
    })??;
    let ready_after = started.elapsed();
    // Node-1's first check, its second card: the nodes register without it,
    // but nothing across them works.
    let (rc, out) = wait("node-1's check of its second card", RUNNING_TIMEOUT, || {
        GuestResults::collect(&results).check("lan").map(|(rc, out)| (rc.to_owned(), out.to_owned()))
    })?;
    if rc != "0" {
        return Err(format!("node-1's second card is not lan0 with {}/24 (rc {rc}):\n{out}", lan(0).0));
    }
    apply(plane, DEPLOYMENT)?;
    apply(plane, SERVICE_AND_POLICY)?;
    let spread = wait("an echo pod Running on each node", RUNNING_TIMEOUT, || {
        let pods = echo_pods(plane);
        let mut nodes: Vec<&str> = pods.iter().map(|(_, _, node)| node.as_str()).collect();
        nodes.sort();
        (nodes == NODES).then_some(pods)
    })?;
    let client = wait("pod client Running", RUNNING_TIMEOUT, || pod_ip(plane, "client"))?;
    let denied = wait("pod denied Running", RUNNING_TIMEOUT, || pod_ip(plane, "denied"))?;
    let vip = kubectl(plane, &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])?;
    let pods: String = spread.iter().map(|(name, ip, node)| format!("pod {name} {ip} {node}\n")).collect();
    std::fs::write(share.join("phase1"), format!("{pods}client {client}\ndenied {denied}\nvip {vip}\n"))
        .map_err(|e| e.to_string())?;
    wait("the guest's phase 1", RUNNING_TIMEOUT, || results.join("phase1-done").exists().then_some(()))?;

    // Node-2 powered off, as a machine that fails: its QEMU ends.
    let off = Instant::now();
    vms[1].power_off();
    let remote =
        spread.iter().find(|(_, _, node)| node == "node-2").map(|(_, ip, _)| ip.clone()).expect("node-2's pod");
    wait("node-2's pod no longer a ready endpoint", GONE_TIMEOUT, || not_ready(plane, &remote).then_some(()))?;
    let gone_after = off.elapsed();
    std::fs::write(share.join("phase2"), "").map_err(|e| e.to_string())?;
    wait("the guest's phase 2", RUNNING_TIMEOUT, || results.join("phase2-done").exists().then_some(()))?;
    std::fs::write(share.join("finish"), "").map_err(|e| e.to_string())?;
    Ok(HostView { ready_after, spread, gone_after })
}

fn outcome() -> &'static Outcome {
    static OUTCOME: OnceLock<Outcome> = OnceLock::new();
    OUTCOME.get_or_init(|| {
        let image = nodeplane_qemu::built_image().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new().prefix("nodeplane-two-nodes-").tempdir().unwrap();
        let plane = ControlPlane::new(
            &dir.path().join("cluster"),
            free_ports(),
            &repo(),
            &nodeplane_image::upstream::default_cache(),
        )
        .unwrap_or_else(|e| panic!("the control plane's binaries: {e}"));
        plane.up().unwrap_or_else(|e| panic!("the control plane: {e}"));
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
        for file in ["lib.sh", "two-nodes.sh"] {
            std::fs::copy(guest.join(file), share.join(file)).unwrap();
        }
        std::fs::copy(nodeplane_qemu::np_guest(), share.join("np-guest")).unwrap();
        let lan_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let started = Instant::now();
        let vms = NODES.iter().enumerate().map(|(i, node)| {
            let (address, mac) = lan(i);
            let config = dir.path().join(format!("{node}.toml"));
            let credentials = plane.node_credentials(node).unwrap();
            let text = format!(
                "[ipam]\ninterval = \"1h\"\n\n[datapath]\nnode_ip = \"{address}\"\n\n{}",
                credentials.node_toml()
            );
            std::fs::write(&config, text).unwrap();
            let state = dir.path().join(format!("{node}-state.img"));
            copy_disk(&image.state_template(), &state).unwrap();
            let mut kernel_args =
                vec![format!("ifname=lan0:{mac}"), format!("ip={address}:::255.255.255.0::lan0:none")];
            if i == 0 {
                kernel_args.extend(nodeplane_qemu::run_from_share("two-nodes.sh"));
            }
            let socket =
                if i == 0 { format!("listen=127.0.0.1:{lan_port}") } else { format!("connect=127.0.0.1:{lan_port}") };
            let boot = Boot {
                image: &image,
                firmware: Firmware::Direct { state },
                console: Console::File(dir.path().join(format!("{node}-console.log"))),
                config: Some(&config),
                share: (i == 0).then_some(share.as_path()),
                kernel_args,
                forward: Vec::new(),
                netdev: vec![plane.guest_forward()],
                lan: Some(Lan { socket, mac }),
            };
            let vm = Vm::start(boot).expect("start QEMU");
            // The listening end first.
            std::thread::sleep(Duration::from_secs(1));
            vm
        });
        let mut vms: [Vm; 2] = vms.collect::<Vec<_>>().try_into().unwrap_or_else(|_| unreachable!());
        let host = drive(&plane, &mut vms, started, &share);
        if host.is_err() {
            // The guest waits for files that will not come; what it found so
            // far is on the share already.
            vms.iter_mut().for_each(Vm::power_off);
        } else {
            let _ = vms[0].wait_exit(Duration::from_secs(300));
        }
        let _ = plane.down();
        Outcome { console: vms[0].console(), results: GuestResults::collect(&share.join("results")), host }
    })
}

#[test]
fn the_second_card_is_named_and_addressed_from_the_kernel_command_line() {
    eprintln!("{}", outcome().check("lan"));
}

#[test]
fn both_nodes_join_and_a_deployment_spreads_over_them() {
    let host = outcome().host();
    eprintln!("QEMU start to both nodes Ready: {:.0} s", host.ready_after.as_secs_f64());
    eprintln!("echo pods: {:?}", host.spread);
    eprintln!("{}", outcome().check("routes"));
}

#[test]
fn pods_reach_each_other_across_nodes() {
    eprintln!("{}", outcome().check("pods-across"));
}

#[test]
fn a_cluster_ip_balances_over_both_nodes_pods() {
    eprintln!("{}", outcome().check("service-across"));
}

#[test]
fn a_node_port_reaches_the_pods_of_both_nodes() {
    eprintln!("{}", outcome().check("node-port-across"));
}

#[test]
fn a_network_policy_holds_across_nodes() {
    eprintln!("{}", outcome().check("policy-across"));
}

#[test]
fn a_node_powered_off_leaves_the_service_and_the_other_keeps_serving() {
    let host = outcome().host();
    eprintln!("node-2 powered off to its endpoint not ready: {:.0} s", host.gone_after.as_secs_f64());
    eprintln!("{}", outcome().check("survivor-serves"));
}
