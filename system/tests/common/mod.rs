//! What the supervisor's integration tests need that only this crate knows:
//! the paths of its binaries and of the project's bus policy, wired into the
//! fixtures of `nodeplane-testkit`.
#![allow(dead_code, unused_imports)] // each test crate uses a different part

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nodeplane_probe::{Binaries, Stage};
use nodeplane_sysctl::{SysctlKey, kernel};
use nodeplane_testkit::HOST_LOCAL;
use nodeplane_testkit::{DbusDaemon, Launch, Nodeplaned, in_netns_of};
pub use nodeplane_testkit::{Entry, Exposition, Journal, eventually, parse_entry, scrape, text};
use serde_json::{Value, json};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn policy_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/org.nodeplane.Node1.conf")
}

/// A private system-like bus carrying the project's policy (and `extra` policies).
pub fn bus_with(extra: &[&Path]) -> DbusDaemon {
    let policy = policy_file();
    let mut files = vec![policy.as_path()];
    files.extend_from_slice(extra);
    DbusDaemon::start(&files).expect("start a private dbus-daemon")
}

pub fn bus() -> DbusDaemon {
    bus_with(&[])
}

pub fn spawn(bus: &DbusDaemon, config: &str, preset: &[(&str, &str)], env: &[(&str, &str)]) -> Nodeplaned {
    spawn_with_journal(bus, config, preset, env, None)
}

pub fn spawn_with_journal(
    bus: &DbusDaemon,
    config: &str,
    preset: &[(&str, &str)],
    env: &[(&str, &str)],
    journal: Option<&Path>,
) -> Nodeplaned {
    // These tests are not about the datapath: no bpffs needed unless asked for.
    let config = if config.contains("[datapath]") {
        config.to_owned()
    } else {
        format!("{config}\n[datapath]\nenabled = false\n")
    };
    Nodeplaned::spawn(
        bus,
        Launch {
            binary: Path::new(env!("CARGO_BIN_EXE_nodeplaned")),
            config: &config,
            preset,
            env,
            capture_stderr: true,
            journal,
            netns: None,
            metrics: None,
        },
    )
    .expect("spawn nodeplaned")
}

/// Spawns nodeplaned and waits until it is READY.
pub fn start(bus: &DbusDaemon, config: &str, preset: &[(&str, &str)]) -> Nodeplaned {
    let node = spawn(bus, config, preset, &[]);
    if let Err(err) = node.wait_ready(READY_TIMEOUT) {
        panic!("{err}\nstderr:\n{}", node.stderr());
    }
    node
}

pub fn read_sysctl(node: &Nodeplaned, key: &str) -> String {
    let key = SysctlKey::parse(key).expect("a sysctl name");
    in_netns_of(node.pid(), move || kernel::read(&key).expect("read sysctl")).unwrap()
}

pub fn write_sysctl(node: &Nodeplaned, key: &str, value: &str) {
    let (key, value) = (SysctlKey::parse(key).expect("a sysctl name"), value.to_owned());
    in_netns_of(node.pid(), move || kernel::write(&key, &value).expect("write sysctl")).unwrap();
}

/// Runs `nodeplanectl` against `bus` as root.
pub fn ctl(bus: &DbusDaemon, args: &[&str]) -> Output {
    ctl_command(None, bus, args)
}

/// Runs `nodeplanectl` against `bus` as user `nobody`.
pub fn ctl_as_nobody(bus: &DbusDaemon, args: &[&str]) -> Output {
    ctl_command(Some(65534), bus, args)
}

fn ctl_command(uid: Option<u32>, bus: &DbusDaemon, args: &[&str]) -> Output {
    let ctl = env!("CARGO_BIN_EXE_nodeplanectl");
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), ctl.into()]);
            c
        }
        None => Command::new(ctl),
    };
    command.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", bus.address()).output().expect("run nodeplanectl")
}

/// Starts nodeplaned inside `node`'s network namespace with its datapath pinned on
/// `bpffs`, applying the manifests in `manifests`; waits for READY.
pub fn start_in(
    node: &nodeplane_testkit::Node,
    bus: &DbusDaemon,
    bpffs: &nodeplane_testkit::Bpffs,
    manifests: &Path,
) -> Nodeplaned {
    start_in_with(node, bus, bpffs, manifests, "")
}

/// [`start_in`] with more `[datapath]` lines.
pub fn start_in_with(
    node: &nodeplane_testkit::Node,
    bus: &DbusDaemon,
    bpffs: &nodeplane_testkit::Bpffs,
    manifests: &Path,
    datapath: &str,
) -> Nodeplaned {
    let config = nodeplane_testkit::datapath_config(
        bpffs,
        manifests,
        &format!("{datapath}\npod_interface_prefix = \"np\"\nsync_interval = \"200ms\""),
    );
    start_with_config(node, bus, &config)
}

/// Starts nodeplaned in `node` with `config` and the metrics socket a
/// previous run had, as systemd restarts it; waits for READY.
pub fn restart_in(
    node: &nodeplane_testkit::Node,
    bus: &DbusDaemon,
    config: &str,
    metrics: &nodeplane_testkit::PassedSocket,
) -> Nodeplaned {
    launch_in_netns(&node.netns.path(), bus, config, Some(metrics))
}

/// Starts nodeplaned inside `node`'s network namespace with `config` (a whole
/// node.toml); waits for READY.
pub fn start_with_config(node: &nodeplane_testkit::Node, bus: &DbusDaemon, config: &str) -> Nodeplaned {
    start_in_netns(&node.netns.path(), bus, config)
}

/// Starts nodeplaned inside the network namespace at `netns` with `config`
/// (a whole node.toml); waits for READY.
pub fn start_in_netns(netns: &Path, bus: &DbusDaemon, config: &str) -> Nodeplaned {
    launch_in_netns(netns, bus, config, None)
}

fn launch_in_netns(
    netns: &Path,
    bus: &DbusDaemon,
    config: &str,
    metrics: Option<&nodeplane_testkit::PassedSocket>,
) -> Nodeplaned {
    let launch = Launch {
        binary: Path::new(env!("CARGO_BIN_EXE_nodeplaned")),
        config,
        preset: &[],
        env: &[],
        capture_stderr: true,
        journal: None,
        netns: Some(netns),
        metrics,
    };
    let node = Nodeplaned::spawn(bus, launch).unwrap();
    node.wait_ready(READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}\n{}", node.stderr()));
    node
}

pub fn binaries() -> Binaries {
    Binaries {
        nodeplaned: env!("CARGO_BIN_EXE_nodeplaned").into(),
        cni: env!("CARGO_BIN_EXE_nodeplane-cni").into(),
        cni_path: Path::new(HOST_LOCAL).parent().unwrap().display().to_string(),
    }
}

/// The netpol e2e cluster: namespaces x, y, z (label `ns`), pods a, b, c
/// (label `pod`), each serving TCP and UDP on 80 and 81 (named
/// `serve-<port>-<protocol>`).
pub fn stage() -> Stage {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/examples/xyz/pods.yaml");
    std::fs::copy(examples, dir.path().join("pods.yaml")).unwrap();
    Stage::new(dir.path(), &binaries(), &|_| {}).unwrap_or_else(|e| panic!("standing up x, y, z: {e}"))
}

/// A sample of the stage's metrics endpoint, as of now (a sync publishes the
/// counters first); 0 when absent.
pub fn metric(stage: &Stage, name: &str, labels: &[(&str, &str)]) -> f64 {
    let _ = stage.sync();
    let scrape = nodeplane_testkit::scrape(stage.metrics_address(), nodeplane_testkit::Exposition::Text).unwrap();
    scrape.value(name, labels).unwrap_or(0.0)
}

pub fn index(stage: &Stage, pod: &str) -> usize {
    stage.pods.iter().position(|p| p.id() == pod).unwrap_or_else(|| panic!("no pod {pod}"))
}

pub fn ip(stage: &Stage, pod: &str) -> Ipv4Addr {
    stage.pods[index(stage, pod)].ip
}

pub fn netpol(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec,
    })
}

/// Manifests as one YAML stream (JSON documents are YAML).
pub fn documents(objects: &[Value]) -> String {
    objects.iter().map(Value::to_string).collect::<Vec<_>>().join("\n---\n")
}

/// Sends `packet` (IP protocol `protocol`) from `from` to `to` over a raw
/// socket, up to three times, while a raw socket in `watcher`'s namespace looks
/// for a packet `expected` recognizes (an IP header, then the payload); whether
/// one came. The kernel here has no SCTP module: raw sockets still carry it.
pub fn raw_seen(
    stage: &Stage,
    (from, to, watcher): (&str, &str, &str),
    protocol: rustix::net::Protocol,
    packet: &[u8],
    expected: impl Fn(&[u8]) -> bool,
) -> bool {
    use rustix::net::{AddressFamily, SocketType};
    let raw = move || {
        let socket = rustix::net::socket(AddressFamily::INET, SocketType::RAW, Some(protocol)).unwrap();
        let timeout = Some(Duration::from_millis(500));
        rustix::net::sockopt::set_socket_timeout(&socket, rustix::net::sockopt::Timeout::Recv, timeout).unwrap();
        socket
    };
    let receiver = nodeplane_testkit::in_netns_at(stage.pod_netns(index(stage, watcher)), raw).unwrap();
    let sender = nodeplane_testkit::in_netns_at(stage.pod_netns(index(stage, from)), raw).unwrap();
    let to_addr = std::net::SocketAddrV4::new(ip(stage, to), 0);
    for _ in 0..3 {
        rustix::net::sendto(&sender, packet, rustix::net::SendFlags::empty(), &to_addr).unwrap();
        let mut buffer = [0u8; 256];
        while let Ok((n, _, _)) = rustix::net::recvfrom(&receiver, &mut buffer, rustix::net::RecvFlags::empty()) {
            if expected(&buffer[..n]) {
                return true;
            }
        }
    }
    false
}

/// The datapath component in `nodeplanectl status --json` (state, detail,
/// facts) of the nodeplaned on the bus at `address`.
pub fn datapath_status(address: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeplanectl"))
        .args(["status", "--json"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .output()
        .expect("run nodeplanectl");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    status["components"].as_array().expect("components").iter().find(|c| c["name"] == "datapath").unwrap().clone()
}

/// A real control plane (etcd, kube-apiserver, the controllers:
/// `nodeplane-cluster`) run in a stage's node namespace, on its loopback,
/// for a stage to follow ([`nodeplane_probe::Cluster`]). Stopped on drop.
pub struct TestCluster {
    dir: tempfile::TempDir,
    plane: std::sync::OnceLock<nodeplane_cluster::ControlPlane>,
    /// Keys for the stage's `[datapath]` section.
    datapath: String,
}

/// The stage's node in the test cluster.
pub const NODE_NAME: &str = "node-1";
const API_PORT: u16 = 16443;

impl TestCluster {
    pub fn new() -> std::sync::Arc<Self> {
        Self::with_datapath("")
    }

    /// A cluster whose stage's nodeplaned gets these `[datapath]` keys too
    /// (`routing = "vxlan"\n`, say).
    pub fn with_datapath(keys: &str) -> std::sync::Arc<Self> {
        let dir = tempfile::Builder::new().prefix("nodeplane-api-").tempdir().unwrap();
        std::sync::Arc::new(TestCluster { dir, plane: std::sync::OnceLock::new(), datapath: keys.to_owned() })
    }

    pub fn plane(&self) -> &nodeplane_cluster::ControlPlane {
        self.plane.get().expect("started by the stage")
    }

    /// kubectl as the admin, `stdin` piped in; its output, or why it failed.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        self.plane().kubectl_with(args, stdin.unwrap_or_default()).map_err(|e| e.to_string())
    }

    /// Stops the API server (SIGKILL), leaving etcd and its data.
    pub fn kill_api_server(&self) {
        let (_, pid) = self.plane().running().into_iter().find(|(name, _)| *name == "kube-apiserver").unwrap();
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        while self.plane().running().iter().any(|(name, _)| *name == "kube-apiserver") {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts what is not running (the API server after [`kill_api_server`]).
    pub fn restart(&self) {
        self.plane().up().unwrap_or_else(|e| panic!("the control plane: {e}"));
    }
}

impl nodeplane_probe::Cluster for TestCluster {
    fn start(&self, netns: &Path) -> Result<String, String> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cache = nodeplane_image::upstream::default_cache();
        let plane = nodeplane_cluster::ControlPlane::new(&self.dir.path().join("cluster"), API_PORT, repo, &cache)
            .map_err(|e| e.to_string())?
            .in_netns(netns);
        // Held before it starts: a start that fails half-way is stopped on drop too.
        let _ = self.plane.set(plane);
        let plane = self.plane();
        plane.up().map_err(|e| e.to_string())?;
        let credentials = plane.node_credentials(NODE_NAME).map_err(|e| e.to_string())?;
        let kubeconfig = plane.node_kubeconfig(NODE_NAME).map_err(|e| e.to_string())?;
        let section = self.datapath.clone()
            + &credentials.node_toml_at(&format!("https://127.0.0.1:{API_PORT}"))
            + &format!("kubeconfig = \"{}\"\n", kubeconfig.display());
        Ok(section)
    }

    fn apply(&self, documents: &str) -> Result<Vec<(String, u64)>, String> {
        // A new namespace's default ServiceAccount, which admitting its pods
        // needs, comes from the controller manager a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let out = loop {
            match self.kubectl(&["apply", "-f", "-", "-o", "json"], Some(documents)) {
                Err(e)
                    if e.contains("serviceaccount \"default\" not found") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200))
                }
                result => break result?,
            }
        };
        let value: Value = serde_json::from_str(&out).map_err(|e| format!("kubectl apply -o json: {e}: {out}"))?;
        let items = match value["kind"].as_str() {
            Some("List") => value["items"].as_array().cloned().unwrap_or_default(),
            _ => vec![value],
        };
        Ok(items
            .iter()
            .filter_map(|item| {
                let version = item["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
                Some((item["kind"].as_str()?.to_owned(), version))
            })
            .collect())
    }

    fn delete(&self, documents: &str) -> Result<(), String> {
        self.kubectl(&["delete", "--ignore-not-found", "--wait=false", "-f", "-"], Some(documents)).map(drop)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(plane) = self.plane.get() {
            let _ = plane.down();
        }
    }
}

/// The netpol e2e cluster ([`stage`]) following `cluster`'s API server.
/// A Node `name` with pod CIDR `cidr` and InternalIP `address` (a status, set as its kubelet would).
pub fn add_node(cluster: &TestCluster, name: &str, cidr: &str, address: &str) {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr}});
    cluster.kubectl(&["apply", "-f", "-"], Some(&node.to_string())).unwrap();
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": address}]}});
    let patch = ["patch", "node", name, "--subresource=status", "--type=merge", "-p", &status.to_string()];
    cluster.kubectl(&patch, None).unwrap();
}

/// Sets Pod `namespace/name`'s `status.podIP` to `ip`, as its kubelet would.
pub fn set_pod_ip(cluster: &TestCluster, namespace: &str, name: &str, ip: Ipv4Addr) {
    let status = json!({"status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
    let patch =
        ["patch", "pod", "-n", namespace, name, "--subresource=status", "--type=merge", "-p", &status.to_string()];
    cluster.kubectl(&patch, None).unwrap();
}

pub fn stage_following(cluster: &std::sync::Arc<TestCluster>) -> Stage {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("probe/examples/xyz/pods.yaml");
    std::fs::copy(examples, dir.path().join("pods.yaml")).unwrap();
    let cluster: std::sync::Arc<dyn nodeplane_probe::Cluster> = cluster.clone();
    Stage::with_cluster(dir.path(), &binaries(), &|_| {}, Some(cluster))
        .unwrap_or_else(|e| panic!("standing up x, y, z following the API server: {e}"))
}

/// A Service `name` at `vip`:`port` → `target` of `backends`, with its EndpointSlice.
pub fn service(
    stage: &Stage,
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    target: u16,
    protocol: &str,
    backends: &[&str],
) -> String {
    let addresses: Vec<Value> = backends
        .iter()
        .map(|b| json!({"addresses": [ip(stage, b).to_string()], "conditions": {"ready": true}}))
        .collect();
    documents(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "x"},
               "spec": {"clusterIP": vip.to_string(), "ports": [{"name": "p", "port": port, "protocol": protocol}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{name}-1"), "namespace": "x", "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "endpoints": addresses,
               "ports": [{"name": "p", "port": target, "protocol": protocol}]}),
    ])
}
