//! The node in a real cluster: a control plane of this machine's
//! (`nodeplane-cluster`: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, built from source), and the node image booted under QEMU
//! with a node.toml whose `[kubernetes]` section joins it. The host drives
//! the cluster with kubectl; the guest script (`guest/cluster.sh`) checks the
//! node from inside, in phases handed over through the 9p share: the node
//! joined, a Deployment's pods, restarts; then a Service and a NetworkPolicy
//! from the API at work (the host reaching the NodePort through a forward).
//! Then the power is cut, with the kubelet's serving certificate left empty as
//! a power loss leaves it, and the node boots again on its state disk: it
//! rejoins, its pods run again and the NodePort answers.
//!
//! One boot for every check (TCG boots are slow; the reboot is the second),
//! each check its own test.
//! Needs the image (`cargo xtask test` builds it) and the control plane's
//! binaries (built from source on first use, then cached).

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nodeplane_cluster::ControlPlane;
use nodeplane_qemu::{Boot, Console, Firmware, GuestResults, Vm, copy_disk};

mod common;
use common::*;

const NODE: &str = "node-1";
/// Ready from scratch under TCG: boot, containerd, the image import, the kubelet.
const READY_TIMEOUT: Duration = Duration::from_secs(900);
const RUNNING_TIMEOUT: Duration = Duration::from_secs(600);
/// The node's NodePort for the echo Service, and the host's port forwarded to it.
const NODE_PORT: u16 = 30080;

/// Phase 3: a ClusterIP + NodePort Service of the echo pods, a NetworkPolicy
/// letting only pods labelled `role: client` reach them, and two more pods
/// (from the same image): a client and one the policy denies.
const PHASE3: &str = "apiVersion: v1
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
  # NodePort traffic arrives from the node: let it in.
  - from: [{ipBlock: {cidr: 10.0.2.0/24}}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {role: client}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers: [{name: echo, image: nodeplane.invalid/echo:v1, imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: denied, namespace: default, labels: {role: other}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 2
  containers: [{name: echo, image: nodeplane.invalid/echo:v1, imagePullPolicy: Never}]
";

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
      containers:
      - name: echo
        image: nodeplane.invalid/echo:v1
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
";

/// What the host saw; `Err` says where driving the cluster stopped.
struct HostView {
    ready_after: Duration,
    pod_cidr: String,
    running_after: Duration,
    /// The pods after the restarts: name, restart count.
    after_restarts: Vec<(String, u32)>,
    /// The pods before the restarts.
    before_restarts: Vec<String>,
    /// What the host got through the forwarded NodePort.
    node_port_reply: String,
    /// The boot after the power loss.
    reboot: Result<Reboot, String>,
}

/// The second boot, after the power was cut.
struct Reboot {
    /// QEMU start to the Node Ready with the new boot's ID.
    ready_after: Duration,
    /// QEMU start to both echo pods restarted and ready.
    pods_after: Duration,
    /// What the host got through the forwarded NodePort.
    node_port_reply: String,
    console: String,
}

type Outcome = common::Outcome<HostView>;

/// The echo pods: (name, phase, IP).
fn pods(plane: &ControlPlane) -> Vec<(String, String, String)> {
    let jsonpath = "{range .items[*]}{.metadata.name} {.status.phase} {.status.podIP}{\"\\n\"}{end}";
    kubectl(plane, &["get", "pods", "-l", "app=echo", "-o", &format!("jsonpath={jsonpath}")])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

fn running(plane: &ControlPlane, count: usize, not: &[String]) -> Option<Vec<(String, String)>> {
    let pods: Vec<(String, String)> = pods(plane)
        .into_iter()
        .filter(|(name, phase, _)| phase == "Running" && !not.contains(name))
        .map(|(name, _, ip)| (name, ip))
        .collect();
    (pods.len() == count).then_some(pods)
}

fn phase_file(pods: &[(String, String)], extra: &str) -> String {
    pods.iter().map(|(name, ip)| format!("pod {name} {ip}\n")).collect::<String>() + extra
}

/// `GET /` to the host's `port` on loopback: the body.
fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.trim().to_owned()))
}

/// Drives the cluster while the guest checks: see the module doc.
fn drive(
    plane: &ControlPlane,
    vm: &mut Vm,
    started: Instant,
    share: &Path,
    host_port: u16,
    boot_again: impl FnOnce(&str) -> Result<Reboot, String>,
) -> Result<HostView, String> {
    let results = share.join("results");
    let ready = wait(&format!("node {NODE} Ready"), READY_TIMEOUT, || {
        if let Ok(Some(status)) = vm.try_exit() {
            return Some(Err(format!("QEMU exited ({status})")));
        }
        if vm.console().contains("was NOT applied") {
            return Some(Err("the guest refused its node.toml".into()));
        }
        let jsonpath = "{.status.conditions[?(@.type==\"Ready\")].status}";
        let status = kubectl(plane, &["get", "node", NODE, "-o", &format!("jsonpath={jsonpath}")]).ok()?;
        (status == "True").then_some(Ok(()))
    })?;
    ready?;
    let ready_after = started.elapsed();
    let pod_cidr = kubectl(plane, &["get", "node", NODE, "-o", "jsonpath={.spec.podCIDR}"])?;
    let created = Instant::now();
    apply(plane, DEPLOYMENT)?;
    let first = wait("both replicas Running", RUNNING_TIMEOUT, || running(plane, 2, &[]))?;
    let running_after = created.elapsed();
    std::fs::write(share.join("phase1"), phase_file(&first, &format!("cidr {pod_cidr}\n")))
        .map_err(|e| e.to_string())?;
    wait("the guest's phase 1", RUNNING_TIMEOUT, || results.join("phase1-done").exists().then_some(()))?;

    let (deleted, deleted_ip) = first[0].clone();
    kubectl(plane, &["delete", "pod", &deleted, "--wait=true", "--timeout=5m"])?;
    let second = wait("a replacement Running", RUNNING_TIMEOUT, || running(plane, 2, std::slice::from_ref(&deleted)))?;
    std::fs::write(share.join("phase2"), phase_file(&second, &format!("deleted {deleted_ip}\n")))
        .map_err(|e| e.to_string())?;
    wait("the guest's phase 2", RUNNING_TIMEOUT, || results.join("phase2-done").exists().then_some(()))?;

    apply(plane, PHASE3)?;
    let ready = |name: &str| {
        let phase = kubectl(plane, &["get", "pod", name, "-o", "jsonpath={.status.phase} {.status.podIP}"]).ok()?;
        phase.strip_prefix("Running ").filter(|ip| !ip.is_empty()).map(str::to_owned)
    };
    let client = wait("pod client Running", RUNNING_TIMEOUT, || ready("client"))?;
    let denied = wait("pod denied Running", RUNNING_TIMEOUT, || ready("denied"))?;
    let vip = kubectl(plane, &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])?;
    // The host, from outside the node, through QEMU's forward to the NodePort.
    let node_port_reply = wait("the NodePort answering the host", RUNNING_TIMEOUT, || {
        http_get(host_port).ok().filter(|reply| reply.starts_with("echo-"))
    })?;
    let echo_pods = running(plane, 2, &[]).ok_or("the echo pods are not Running")?;
    std::fs::write(
        share.join("phase3"),
        phase_file(&echo_pods, &format!("client client {client}\ndenied denied {denied}\nvip {vip}\n")),
    )
    .map_err(|e| e.to_string())?;
    wait("the guest's phase 3", RUNNING_TIMEOUT, || results.join("phase3-done").exists().then_some(()))?;
    let jsonpath = "{range .items[*]}{.metadata.name} {.status.containerStatuses[0].restartCount}{\"\\n\"}{end}";
    let after = kubectl(plane, &["get", "pods", "-l", "app=echo", "-o", &format!("jsonpath={jsonpath}")])?;
    let after_restarts = after
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(n, c)| (n.to_owned(), c.trim().parse().unwrap_or(u32::MAX))))
        .collect();
    let boot_id = kubectl(plane, &["get", "node", NODE, "-o", "jsonpath={.status.nodeInfo.bootID}"])?;
    std::fs::write(share.join("finish"), "").map_err(|e| e.to_string())?;
    wait("the guest ready for the power loss", RUNNING_TIMEOUT, || results.join("done").exists().then_some(()))?;
    vm.power_off();
    Ok(HostView {
        ready_after,
        pod_cidr,
        running_after,
        after_restarts,
        before_restarts: second.into_iter().map(|(n, _)| n).collect(),
        node_port_reply,
        reboot: boot_again(&boot_id),
    })
}

/// After the power loss: the same state disk booted again (no guest script)
/// until the Node is Ready under a new boot ID, the echo pods restarted and
/// ready, and the NodePort answering the host.
fn reboot(plane: &ControlPlane, boot: Boot<'_>, host_port: u16, boot_id: &str) -> Result<Reboot, String> {
    let started = Instant::now();
    let mut vm = Vm::start(boot).map_err(|e| format!("start QEMU: {e}"))?;
    let rejoined = (|| -> Result<(Duration, Duration, String), String> {
        let ready = wait(&format!("node {NODE} Ready after the reboot"), READY_TIMEOUT, || {
            if let Ok(Some(status)) = vm.try_exit() {
                return Some(Err(format!("QEMU exited ({status})")));
            }
            let jsonpath = "{.status.nodeInfo.bootID} {.status.conditions[?(@.type==\"Ready\")].status}";
            let now = kubectl(plane, &["get", "node", NODE, "-o", &format!("jsonpath={jsonpath}")]).ok()?;
            let (id, ready) = now.split_once(' ')?;
            (id != boot_id && ready == "True").then_some(Ok(started.elapsed()))
        })??;
        let jsonpath = "{range .items[*]}{.status.containerStatuses[0].restartCount} \
                        {.status.containerStatuses[0].ready}{\"\\n\"}{end}";
        let pods_after = wait("both echo pods restarted and ready", RUNNING_TIMEOUT, || {
            let pods =
                kubectl(plane, &["get", "pods", "-l", "app=echo", "-o", &format!("jsonpath={jsonpath}")]).ok()?;
            let restarted = pods.lines().filter(|l| l.split_once(' ').is_some_and(|(n, r)| n != "0" && r == "true"));
            (restarted.count() == 2).then(|| started.elapsed())
        })?;
        let node_port_reply = wait("the NodePort answering the host after the reboot", RUNNING_TIMEOUT, || {
            http_get(host_port).ok().filter(|reply| reply.starts_with("echo-"))
        })?;
        Ok((ready, pods_after, node_port_reply))
    })();
    vm.power_off();
    let console = vm.console();
    match rejoined {
        Ok((ready_after, pods_after, node_port_reply)) => {
            Ok(Reboot { ready_after, pods_after, node_port_reply, console })
        }
        Err(e) => Err(format!("{e}\n--- console (last 60 lines) ---\n{}", nodeplane_qemu::tail(&console, 60))),
    }
}

fn outcome() -> &'static Outcome {
    static OUTCOME: OnceLock<Outcome> = OnceLock::new();
    OUTCOME.get_or_init(|| {
        let image = nodeplane_qemu::built_image().unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new().prefix("nodeplane-cluster-").tempdir().unwrap();
        let plane = ControlPlane::new(
            &dir.path().join("cluster"),
            free_ports(),
            &repo(),
            &nodeplane_image::upstream::default_cache(),
        )
        .unwrap_or_else(|e| panic!("the control plane's binaries: {e}"));
        plane.up().unwrap_or_else(|e| panic!("the control plane: {e}"));
        let credentials = plane.node_credentials(NODE).unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest");
        for file in ["lib.sh", "cluster.sh"] {
            std::fs::copy(guest.join(file), share.join(file)).unwrap();
        }
        std::fs::copy(nodeplane_qemu::np_guest(), share.join("np-guest")).unwrap();
        let config = dir.path().join("node.toml");
        // node_ip: the NodePort is served on QEMU's guest address.
        std::fs::write(
            &config,
            format!("[ipam]\ninterval = \"1h\"\n\n[datapath]\nnode_ip = \"10.0.2.15\"\n\n{}", credentials.node_toml()),
        )
        .unwrap();
        let host_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let state = dir.path().join("state.img");
        copy_disk(&image.state_template(), &state).unwrap();
        // The first boot runs the guest script from the share; the one after the power loss, nothing.
        let boot = |console: &str, first: bool| Boot {
            image: &image,
            firmware: Firmware::Direct { state: state.clone() },
            console: Console::File(dir.path().join(console)),
            config: Some(&config),
            share: first.then_some(share.as_path()),
            kernel_args: if first { nodeplane_qemu::run_from_share("cluster.sh") } else { Vec::new() },
            forward: vec![(host_port, NODE_PORT)],
            netdev: vec![plane.guest_forward()],
            lan: None,
        };
        let started = Instant::now();
        let mut vm = Vm::start(boot("console.log", true)).expect("start QEMU");
        let boot_again = |boot_id: &str| reboot(&plane, boot("reboot-console.log", false), host_port, boot_id);
        let host = drive(&plane, &mut vm, started, &share, host_port, boot_again);
        if host.is_err() {
            // Let the guest end: it waits for files that will not come.
            let _ = std::fs::write(share.join("finish"), "");
            let _ = vm.wait_exit(Duration::from_secs(300));
        }
        let _ = plane.down();
        Outcome { console: vm.console(), results: GuestResults::collect(&share.join("results")), host }
    })
}

#[test]
fn the_node_registers_and_becomes_ready_with_the_pod_cidr_the_controller_manager_gave_it() {
    let host = outcome().host();
    eprintln!("QEMU start to node Ready: {:.0} s", host.ready_after.as_secs_f64());
    assert!(host.pod_cidr.starts_with("10.244.") && host.pod_cidr.ends_with("/24"), "{}", host.pod_cidr);
    let out = outcome().check("pod-cidr");
    assert!(out.contains(&host.pod_cidr), "{out}");
}

#[test]
fn a_deployment_is_scheduled_and_runs_with_images_from_the_nodes_own_store() {
    let host = outcome().host();
    eprintln!("Deployment created to both pods Running: {:.0} s", host.running_after.as_secs_f64());
}

#[test]
fn the_pods_reach_each_other_by_pod_ip() {
    outcome().check("pods-reach");
}

#[test]
fn nodeplanectl_status_shows_the_kubelet_and_containerd() {
    outcome().check("services");
}

#[test]
fn the_kubelet_stops_the_pods_on_a_poweroff() {
    outcome().check("graceful-shutdown");
}

#[test]
fn deleting_a_pod_frees_its_ip_and_the_sweeper_finds_nothing_leaked() {
    outcome().check("ip-freed");
}

#[test]
fn a_kubelet_restart_and_kill_9_of_nodeplaned_leave_the_pods_running_and_reachable() {
    outcome().check("restarts");
    let host = outcome().host();
    let mut names: Vec<&String> = host.after_restarts.iter().map(|(n, _)| n).collect();
    names.sort();
    let mut before: Vec<&String> = host.before_restarts.iter().collect();
    before.sort();
    assert_eq!(names, before, "the same pods");
    assert!(host.after_restarts.iter().all(|(_, restarts)| *restarts == 0), "{:?}", host.after_restarts);
}

#[test]
fn a_service_from_the_api_balances_pods_and_its_node_port_answers_the_host() {
    let host = outcome().host();
    assert!(host.node_port_reply.starts_with("echo-"), "{}", host.node_port_reply);
    outcome().check("service-from-pod");
}

#[test]
fn a_network_policy_from_the_api_blocks_a_denied_pod_and_nodeplanectl_says_so() {
    outcome().check("policy-denies");
    outcome().check("policy-tools-agree");
}

#[test]
fn after_a_power_loss_that_left_kubelet_state_empty_the_node_rejoins_and_serves_again() {
    let reboot = outcome().host().reboot.as_ref().unwrap_or_else(|e| panic!("the boot after the power loss: {e}"));
    eprintln!(
        "QEMU start to the node Ready again: {:.0} s; to both pods restarted and ready: {:.0} s",
        reboot.ready_after.as_secs_f64(),
        reboot.pods_after.as_secs_f64()
    );
    assert!(reboot.node_port_reply.starts_with("echo-"), "{}", reboot.node_port_reply);
    let console = &reboot.console;
    let tail = nodeplane_qemu::tail(console, 60);
    assert!(console.contains("removed the kubelet's serving certificate and key"), "{tail}");
}
