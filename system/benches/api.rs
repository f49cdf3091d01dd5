//! `cargo xtask bench api`: how fast the datapath follows a real API server
//! (etcd, kube-apiserver and the controllers, built from source, in a node
//! namespace of the benchmark's own), side by side with kube-proxy of the same
//! Kubernetes release in iptables and nftables modes, each following the same
//! API server from the same node in turn (kube-proxy with its defaults, as
//! users run it). The figures, per proxy:
//!
//! - bulk: from the first of 10,000 Services (each with an EndpointSlice of
//!   4 endpoints) written until a pod's connections through the last one
//!   reach its backend (every earlier one is then programmed too: the
//!   proxies program what their watches brought, in order; nodeplane's status
//!   counts are checked as well);
//! - follow: 200 changes, Service ports and EndpointSlice backends in turn,
//!   each from the write acknowledged until a pod's new connections follow
//!   it (polled connection by connection): p50 and p99;
//! - memory: the proxy's RSS with its stores full (the cluster also holds
//!   10,000 pods, which nodeplane watches for policy peers and kube-proxy does
//!   not).
//!
//! `NODEPLANE_BENCH_SERVICES`, `NODEPLANE_BENCH_PODS` and
//! `NODEPLANE_BENCH_CHANGES` scale it down for a quick look;
//! `NODEPLANE_BENCH_PROXIES` (`nodeplane,iptables,nftables`) picks proxies.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use nodeplane_probe::Cluster;
use nodeplane_testkit::bench::{ms, write_results};
use serde_json::{Value, json};

type Error = String;

/// Where the benchmark's Services live (deleted between proxies).
const NAMESPACE: &str = "bench";
/// Where its pods live, bound to another node.
const PODS_NAMESPACE: &str = "bench-pods";
const PEER_NODE: &str = "bench-peer";
/// The Service the pod connects through: created last, then changed.
const PROBE: &str = "probe";
/// Requests in flight while writing objects.
const WRITERS: usize = 64;
/// The pause between two connections polling for a change.
const POLL: Duration = Duration::from_millis(1);
/// How long one change may take to show before the benchmark gives up.
const GIVE_UP: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    nodeplane_testkit::bench::run_bench("api", bench)
}

fn scale(name: &str, default: usize) -> Result<usize, Error> {
    match std::env::var(name) {
        Ok(value) => value.parse().map_err(|_| format!("{name}={value:?}: not a count")),
        Err(_) => Ok(default),
    }
}

/// The proxies `NODEPLANE_BENCH_PROXIES` names (all by default), nodeplane
/// last: its pinned datapath outlives it, kube-proxy's rules go with `--cleanup`.
fn proxies() -> Result<Vec<Proxy>, Error> {
    let all = [Proxy::KubeProxy("iptables"), Proxy::KubeProxy("nftables"), Proxy::Nodeplane];
    let Ok(named) = std::env::var("NODEPLANE_BENCH_PROXIES") else { return Ok(all.to_vec()) };
    let names: Vec<&str> = named.split(',').map(str::trim).collect();
    if let Some(unknown) = names.iter().find(|n| !["nodeplane", "iptables", "nftables"].contains(n)) {
        return Err(format!("NODEPLANE_BENCH_PROXIES: unknown proxy {unknown:?} (nodeplane, iptables, nftables)"));
    }
    Ok(all
        .into_iter()
        .filter(|p| match p {
            Proxy::KubeProxy(mode) => names.contains(mode),
            Proxy::Nodeplane => names.contains(&"nodeplane"),
        })
        .collect())
}

#[derive(Clone, Copy, PartialEq)]
enum Proxy {
    KubeProxy(&'static str),
    Nodeplane,
}

impl Proxy {
    fn label(self) -> String {
        match self {
            Proxy::KubeProxy(mode) => format!("kube-proxy {mode}"),
            Proxy::Nodeplane => "nodeplane".into(),
        }
    }
}

/// One proxy's figures.
struct Figures {
    bulk: Duration,
    after_last_write: Duration,
    p50: Duration,
    p99: Duration,
    rss_mib: f64,
    /// The proxy's own part, for the record: kube-proxy's mean rule sync
    /// (its metrics); nodeplaned's watch-event-to-map p50 and p99 (its facts).
    own: Option<(Duration, Option<Duration>)>,
}

fn bench() -> Result<(), Error> {
    if !nodeplane_testkit::is_root() {
        return Err("the benchmark needs root (network namespaces, eBPF, netfilter)".into());
    }
    let services = scale("NODEPLANE_BENCH_SERVICES", 10_000)?;
    let pods = scale("NODEPLANE_BENCH_PODS", 10_000)?;
    let changes = scale("NODEPLANE_BENCH_CHANGES", 200)?;
    let proxies = proxies()?;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("in the workspace").to_owned();
    let cache = nodeplane_image::upstream::default_cache();
    let kube_proxy = nodeplane_image::upstream::KUBE_PROXY.ensure(&repo, &cache).map_err(|e| e.to_string())?;

    let mut node = nodeplane_testkit::Node::new().map_err(|e| e.to_string())?;
    let client = node.add_pod(Ipv4Addr::new(10, 244, 0, 10)).map_err(|e| e.to_string())?;
    let backends = [Ipv4Addr::new(10, 244, 0, 11), Ipv4Addr::new(10, 244, 0, 12)];
    let mut servers = Vec::new();
    let mut backend_pods = Vec::new();
    for (ip, name) in backends.iter().zip(["b", "c"]) {
        let pod = node.add_pod(*ip).map_err(|e| e.to_string())?;
        servers.push(pod.serve_tcp(80, name));
        backend_pods.push(pod);
    }

    eprintln!("==> the control plane in the node's namespace");
    let cluster = common::TestCluster::new();
    let kubernetes = cluster.start(&node.netns.path())?;
    let api = ApiClient::new(&node.netns.path(), &cluster.plane().admin_kubeconfig())?;
    api.nodes()?;
    eprintln!("==> {pods} pods on another node");
    api.pods(pods)?;

    let client = Arc::new(client);
    let mut figures = Vec::new();
    for proxy in proxies {
        eprintln!("==> {}: {services} Services, then {changes} changes", proxy.label());
        let running = Running::start(proxy, &node, &kube_proxy, &kubernetes, &cluster)?;
        let result = measure(&api, &client, &running, services, changes, &backends);
        let stopped = running.stop(&node, &kube_proxy);
        let measured = result?;
        stopped?;
        api.clean()?;
        figures.push((proxy, measured));
    }
    drop(servers);
    report(services, pods, changes, &figures)
}

/// A proxy following the cluster from the node's namespace.
#[allow(clippy::large_enum_variant)] // one at a time, on the stack of one function
enum Running {
    KubeProxy {
        child: Child,
        mode: &'static str,
    },
    Nodeplane {
        nodeplaned: nodeplane_testkit::Nodeplaned,
        bus: nodeplane_testkit::DbusDaemon,
        _bpffs: nodeplane_testkit::Bpffs,
        _manifests: tempfile::TempDir,
    },
}

impl Running {
    fn start(
        proxy: Proxy,
        node: &nodeplane_testkit::Node,
        kube_proxy: &Path,
        kubernetes: &str,
        cluster: &common::TestCluster,
    ) -> Result<Running, Error> {
        match proxy {
            Proxy::KubeProxy(mode) => {
                let log =
                    std::fs::File::create(std::env::temp_dir().join(format!("nodeplane-bench-kube-proxy-{mode}.log")))
                        .map_err(|e| e.to_string())?;
                let child = Command::new("ip")
                    .args(["netns", "exec", node.netns.name()])
                    .arg(kube_proxy.join("kube-proxy"))
                    .arg(format!("--kubeconfig={}", cluster.plane().admin_kubeconfig().display()))
                    .args([
                        &format!("--proxy-mode={mode}"),
                        &format!("--hostname-override={}", common::NODE_NAME),
                        "--cluster-cidr=10.244.0.0/16",
                        "--conntrack-max-per-core=0",
                        "--conntrack-tcp-timeout-established=0",
                        "--conntrack-tcp-timeout-close-wait=0",
                        "--metrics-bind-address=127.0.0.1:10249",
                        "--healthz-bind-address=127.0.0.1:10256",
                    ])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("kube-proxy: {e}"))?;
                let running = Running::KubeProxy { child, mode };
                let healthy = nodeplane_testkit::eventually(Duration::from_secs(60), || {
                    node.run(|| http_get(10256, "/healthz")).is_ok_and(|(status, _)| status == 200)
                });
                if !healthy {
                    return Err(format!(
                        "kube-proxy {mode} did not become healthy (log in {})",
                        std::env::temp_dir().display()
                    ));
                }
                Ok(running)
            }
            Proxy::Nodeplane => {
                let bus = common::bus();
                let bpffs = nodeplane_testkit::Bpffs::mount().map_err(|e| e.to_string())?;
                let manifests = tempfile::tempdir().map_err(|e| e.to_string())?;
                let config = nodeplane_testkit::datapath_config(
                    &bpffs,
                    manifests.path(),
                    "pod_interface_prefix = \"np\"\nsync_interval = \"1s\"",
                ) + kubernetes;
                let nodeplaned = common::start_with_config(node, &bus, &config);
                let synced = nodeplane_testkit::eventually(Duration::from_secs(60), || {
                    common::datapath_status(bus.address())["facts"]["api_synced"] == "true"
                });
                if !synced {
                    return Err(format!("nodeplaned did not list the cluster\n{}", nodeplaned.stderr()));
                }
                Ok(Running::Nodeplane { nodeplaned, bus, _bpffs: bpffs, _manifests: manifests })
            }
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::KubeProxy { child, .. } => child.id(),
            Running::Nodeplane { nodeplaned, .. } => nodeplaned.pid(),
        }
    }

    /// Stops the proxy and takes its rules away (kube-proxy `--cleanup`).
    fn stop(self, node: &nodeplane_testkit::Node, kube_proxy: &Path) -> Result<(), Error> {
        match self {
            Running::KubeProxy { mut child, mode } => {
                let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                let _ = child.wait();
                let status = Command::new("ip")
                    .args(["netns", "exec", node.netns.name()])
                    .arg(kube_proxy.join("kube-proxy"))
                    .args(["--cleanup", &format!("--proxy-mode={mode}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map_err(|e| format!("kube-proxy --cleanup: {e}"))?;
                if status.success() { Ok(()) } else { Err(format!("kube-proxy --cleanup: {status}")) }
            }
            Running::Nodeplane { nodeplaned, .. } => {
                nodeplaned.stop(Duration::from_secs(10)).map(drop).map_err(|e| e.to_string())
            }
        }
    }
}

fn measure(
    api: &ApiClient,
    client: &Arc<nodeplane_testkit::Pod>,
    running: &Running,
    services: usize,
    changes: usize,
    backends: &[Ipv4Addr; 2],
) -> Result<Figures, Error> {
    // Bulk: every Service with its slice, then the probe, whose backend answers "b".
    let started = Instant::now();
    api.services(services)?;
    let vip = api.probe(backends[0])?;
    let last_write = Instant::now();
    let held = follows(client, vip, 80, "b")?;
    eprintln!(
        "    {services} Services written in {:.1} s, held after {:.1} s",
        last_write.duration_since(started).as_secs_f64(),
        held.duration_since(started).as_secs_f64()
    );
    if let Running::Nodeplane { bus, .. } = running {
        let facts = common::datapath_status(bus.address())["facts"].clone();
        let (ports, endpoints) = (facts["services"].as_u64().unwrap_or(0), facts["endpoints"].as_u64().unwrap_or(0));
        if ports < services as u64 + 1 || endpoints < 4 * services as u64 + 1 {
            return Err(format!("nodeplane holds {ports} Service ports and {endpoints} endpoints: {facts}"));
        }
    }

    // Follow: ports and backends in turn, each one change the pod must see.
    let mut delays = Vec::with_capacity(changes);
    // nodeplaned's own part of each: from the watch event to the maps.
    let mut own = Vec::new();
    let (mut port, mut backend) = (80u16, 0usize);
    for n in 0..changes {
        if n % 2 == 0 {
            port = if port == 80 { 81 } else { 80 };
            api.probe_port(port)?;
        } else {
            backend = 1 - backend;
            api.probe_backend(backends[backend])?;
        }
        let acknowledged = Instant::now();
        let seen = follows(client, vip, port, ["b", "c"][backend])?;
        delays.push(seen.saturating_duration_since(acknowledged));
        if let Running::Nodeplane { bus, .. } = running {
            let facts = common::datapath_status(bus.address())["facts"].clone();
            own.extend(facts["api_event_to_datapath_us"].as_u64().map(Duration::from_micros));
        }
    }
    let (p50, p99) = percentiles(&mut delays);
    eprintln!("    change → datapath p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));

    let own = match running {
        Running::KubeProxy { .. } => sync_mean(running)?.map(|mean| (mean, None)),
        Running::Nodeplane { .. } if !own.is_empty() => {
            let (p50, p99) = percentiles(&mut own);
            Some((p50, Some(p99)))
        }
        Running::Nodeplane { .. } => None,
    };
    Ok(Figures {
        bulk: held.duration_since(started),
        after_last_write: held.saturating_duration_since(last_write),
        p50,
        p99,
        rss_mib: rss_mib(running.pid())?,
        own,
    })
}

/// The median and 99th percentile.
fn percentiles(values: &mut [Duration]) -> (Duration, Duration) {
    values.sort();
    let at = |q: f64| values.get(((values.len() as f64 * q) as usize).min(values.len().saturating_sub(1))).copied();
    (at(0.5).unwrap_or_default(), at(0.99).unwrap_or_default())
}

/// When a new connection from `client` to `vip:port` first got `reply`: the
/// start of that connection (the one before it, [`POLL`] earlier, did not).
fn follows(client: &nodeplane_testkit::Pod, vip: Ipv4Addr, port: u16, reply: &'static str) -> Result<Instant, Error> {
    client.run(move || {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let attempt = Instant::now();
            if request(vip, port).is_ok_and(|r| r == reply) {
                return Ok(attempt);
            }
            if attempt > deadline {
                return Err(format!("{vip}:{port} did not reach backend {reply} within {GIVE_UP:?}"));
            }
            // Not back to back: on two cores a spinning client would take a
            // core from the API server and the proxy it measures.
            std::thread::sleep(POLL);
        }
    })
}

/// One connection. A SYN to a port not programmed yet goes unanswered (the
/// node has no route for it, and answers route errors sparingly): after 5 ms
/// the next attempt starts, which bounds what that costs the measurement.
fn request(addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(5))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// A plain HTTP GET on loopback in this namespace: status and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String), Error> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// kube-proxy's mean rule sync time so far, from its metrics.
fn sync_mean(running: &Running) -> Result<Option<Duration>, Error> {
    let Running::KubeProxy { .. } = running else { return Ok(None) };
    let netns = format!("/proc/{}/ns/net", running.pid());
    let (_, body) =
        nodeplane_testkit::in_netns_at(netns, || http_get(10249, "/metrics")).map_err(|e| e.to_string())??;
    let value = |name: &str| {
        let series = format!("{name}{{ip_family=\"IPv4\"}} ");
        body.lines().find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
    };
    let sum = value("kubeproxy_sync_proxy_rules_duration_seconds_sum");
    let count = value("kubeproxy_sync_proxy_rules_duration_seconds_count");
    Ok(match (sum, count) {
        (Some(sum), Some(count)) if count > 0.0 => Some(Duration::from_secs_f64(sum / count)),
        _ => None,
    })
}

fn rss_mib(pid: u32) -> Result<f64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("process {pid}: {e}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("process {pid}: no VmRSS"))?;
    Ok(kib / 1024.0)
}

/// The benchmark's API client: the admin, reaching the API server on the
/// node namespace's loopback (its runtime's threads live in that namespace).
struct ApiClient {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
}

impl ApiClient {
    fn new(netns: &Path, kubeconfig: &Path) -> Result<ApiClient, Error> {
        let netns: PathBuf = netns.to_owned();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                nodeplane_testkit::enter_then(netns.clone(), || ())().expect("entering the node's namespace")
            })
            .build()
            .map_err(|e| e.to_string())?;
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
        let client = runtime.block_on(runtime.spawn(async move {
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            kube::Client::try_from(config).map_err(|e| e.to_string())
        }));
        Ok(ApiClient { client: client.map_err(|e| e.to_string())??, runtime })
    }

    /// Runs `f` (given a client) on the runtime's threads, in the node's namespace.
    fn run<T: Send + 'static, F: Future<Output = Result<T, Error>> + Send + 'static>(
        &self,
        f: impl FnOnce(kube::Client) -> F,
    ) -> Result<T, Error> {
        self.runtime.block_on(self.runtime.spawn(f(self.client.clone()))).map_err(|e| e.to_string())?
    }

    /// This node (kube-proxy reads its own) and the node the pods are on.
    fn nodes(&self) -> Result<(), Error> {
        self.run(|client| async move {
            let nodes = Api::<Node>::all(client);
            for name in [common::NODE_NAME, PEER_NODE] {
                let node = typed(json!({"metadata": {"name": name}}))?;
                match nodes.create(&PostParams::default(), &node).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    result => drop(result.map_err(|e| format!("Node {name}: {e}"))?),
                }
            }
            Ok(())
        })
    }

    /// `count` pods on the peer node, each with an address.
    fn pods(&self, count: usize) -> Result<(), Error> {
        self.namespace(PODS_NAMESPACE)?;
        self.run(move |client| async move {
            let pods = Api::<Pod>::namespaced(client, PODS_NAMESPACE);
            futures_util::stream::iter(0..count)
                .map(|n| {
                    let pods = pods.clone();
                    async move {
                        let name = format!("pod-{n}");
                        let pod: Pod = typed(json!({
                            "metadata": {"name": name, "labels": {"app": format!("app-{}", n % 100), "tier": "web", "n": n.to_string()}},
                            "spec": {"nodeName": PEER_NODE, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10.2"}]},
                        }))?;
                        pods.create(&PostParams::default(), &pod).await.map_err(|e| format!("Pod {name}: {e}"))?;
                        let ip = format!("10.245.{}.{}", n / 250, n % 250 + 1);
                        let status = json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running"}});
                        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                            .await
                            .map_err(|e| format!("Pod {name} status: {e}"))?;
                        Ok::<(), Error>(())
                    }
                })
                .buffer_unordered(WRITERS)
                .try_collect::<()>()
                .await
        })
    }

    /// Creates namespace `name` and waits for its default ServiceAccount,
    /// which admitting pods needs.
    fn namespace(&self, name: &'static str) -> Result<(), Error> {
        self.run(move |client| async move {
            let namespace = typed(json!({"metadata": {"name": name}}))?;
            match Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
                .create(&PostParams::default(), &namespace)
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                result => drop(result.map_err(|e| format!("Namespace {name}: {e}"))?),
            }
            let accounts = Api::<ServiceAccount>::namespaced(client, name);
            let deadline = Instant::now() + Duration::from_secs(60);
            while accounts.get_opt("default").await.map_err(|e| e.to_string())?.is_none() {
                if Instant::now() > deadline {
                    return Err(format!("no default ServiceAccount in {name}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        })
    }

    /// `count` Services without selectors, each with a slice of 4 endpoints.
    fn services(&self, count: usize) -> Result<(), Error> {
        self.namespace(NAMESPACE)?;
        self.run(move |client| async move {
            let (services, slices) = (
                Api::<Service>::namespaced(client.clone(), NAMESPACE),
                Api::<EndpointSlice>::namespaced(client, NAMESPACE),
            );
            futures_util::stream::iter(0..count)
                .map(|n| {
                    let (services, slices) = (services.clone(), slices.clone());
                    async move {
                        let name = format!("svc-{n}");
                        let endpoints = (0..4).map(|e| format!("10.246.{}.{}", n / 60, (n % 60) * 4 + e + 1)).collect();
                        services
                            .create(&PostParams::default(), &service(&name, 80)?)
                            .await
                            .map_err(|e| format!("Service {name}: {e}"))?;
                        slices
                            .create(&PostParams::default(), &slice(&name, endpoints)?)
                            .await
                            .map_err(|e| format!("EndpointSlice {name}: {e}"))?;
                        Ok::<(), Error>(())
                    }
                })
                .buffer_unordered(WRITERS)
                .try_collect::<()>()
                .await
        })
    }

    /// The probe Service, port 80 → `backend`:80; its ClusterIP.
    fn probe(&self, backend: Ipv4Addr) -> Result<Ipv4Addr, Error> {
        self.run(move |client| async move {
            let created = Api::<Service>::namespaced(client.clone(), NAMESPACE)
                .create(&PostParams::default(), &service(PROBE, 80)?)
                .await
                .map_err(|e| format!("Service {PROBE}: {e}"))?;
            Api::<EndpointSlice>::namespaced(client, NAMESPACE)
                .create(&PostParams::default(), &slice(PROBE, vec![backend.to_string()])?)
                .await
                .map_err(|e| format!("EndpointSlice {PROBE}: {e}"))?;
            let ip = created.spec.and_then(|s| s.cluster_ip).ok_or("the probe Service has no ClusterIP")?;
            ip.parse().map_err(|e| format!("ClusterIP {ip}: {e}"))
        })
    }

    fn probe_port(&self, port: u16) -> Result<(), Error> {
        self.run(move |client| async move {
            let patch = json!({"spec": {"ports": [{"name": "p", "port": port, "targetPort": 80, "protocol": "TCP"}]}});
            Api::<Service>::namespaced(client, NAMESPACE)
                .patch(PROBE, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| format!("Service {PROBE}: {e}"))
        })
    }

    fn probe_backend(&self, backend: Ipv4Addr) -> Result<(), Error> {
        self.run(move |client| async move {
            let patch = json!({"endpoints": [{"addresses": [backend.to_string()], "conditions": {"ready": true}}]});
            Api::<EndpointSlice>::namespaced(client, NAMESPACE)
                .patch(&format!("{PROBE}-1"), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(drop)
                .map_err(|e| format!("EndpointSlice {PROBE}: {e}"))
        })
    }

    /// Deletes the benchmark's Services and slices; waits until they are gone.
    fn clean(&self) -> Result<(), Error> {
        self.run(|client| async move {
            let (services, slices) = (
                Api::<Service>::namespaced(client.clone(), NAMESPACE),
                Api::<EndpointSlice>::namespaced(client, NAMESPACE),
            );
            slices
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = services
                .list_metadata(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            futures_util::stream::iter(names)
                .map(|name| {
                    let services = services.clone();
                    async move {
                        match services.delete(&name, &DeleteParams::default()).await {
                            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                            result => result.map(drop).map_err(|e| format!("Service {name}: {e}")),
                        }
                    }
                })
                .buffer_unordered(WRITERS)
                .try_collect::<()>()
                .await
        })
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| e.to_string())
}

fn service(name: &str, port: u16) -> Result<Service, Error> {
    typed(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"ports": [{"name": "p", "port": port, "targetPort": 80, "protocol": "TCP"}]},
    }))
}

fn slice(service: &str, addresses: Vec<String>) -> Result<EndpointSlice, Error> {
    let endpoints: Vec<Value> =
        addresses.into_iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    typed(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "p", "port": 80, "protocol": "TCP"}],
    }))
}

fn report(services: usize, pods: usize, changes: usize, figures: &[(Proxy, Figures)]) -> Result<(), Error> {
    println!(
        "\n{services} Services (4 endpoints each), {pods} pods, {changes} changes; one run of each proxy, in turn"
    );
    println!(
        "| proxy | all Services held (s) | after the last write (ms) | change p50 (ms) | change p99 (ms) | RSS (MiB) | its own part (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (proxy, f) in figures {
        let own = match f.own {
            Some((mean, None)) => format!("rule sync mean {:.0}", ms(mean)),
            Some((p50, Some(p99))) => format!("event to map p50 {:.1}, p99 {:.1}", ms(p50), ms(p99)),
            None => "-".into(),
        };
        println!(
            "| {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {own} |",
            proxy.label(),
            f.bulk.as_secs_f64(),
            ms(f.after_last_write),
            ms(f.p50),
            ms(f.p99),
            f.rss_mib
        );
        json.push(json!({
            "proxy": proxy.label(), "bulk_s": f.bulk.as_secs_f64(), "after_last_write_ms": ms(f.after_last_write),
            "change_p50_ms": ms(f.p50), "change_p99_ms": ms(f.p99), "rss_mib": f.rss_mib,
            "own_ms": f.own.map(|(a, b)| json!([ms(a), b.map(ms)])),
        }));
    }
    write_results("api", &json!({"services": services, "pods": pods, "changes": changes, "proxies": json}))
        .map_err(|e| e.to_string())
}
