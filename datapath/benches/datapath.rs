//! `cargo xtask bench datapath` (`cargo bench -p nodeplane-datapath --bench datapath`): Service access through nodeplane against what
//! users run today, in one run. Four node namespaces, each with a client pod and
//! four backend pods: (a) direct to a backend's pod IP on a bare node, (b) a VIP
//! on nodeplane's eBPF datapath, (c) a VIP through kube-proxy-style iptables DNAT
//! rules (`KUBE-SERVICES` → `KUBE-SVC-*` with statistic → `KUBE-SEP-*`, the probed
//! VIP last), (d) a VIP through kube-proxy-style nftables rules (a verdict map of
//! Services, a numgen map of endpoints). At 1, 1,000 and 10,000 Services of four
//! endpoints each: connect+request+close rate and p50/p99 latency, variants
//! interleaved, rounds repeated, medians, ratios against (a), everything on one
//! core. On one connection, the same way: the rate and p50/p99 of small
//! requests and replies (a second Service to an echo server), and bulk
//! throughput in MiB/s with each MiB's p50/p99 (a third, to a server
//! streaming). Also the time to program 10,000 Services with 40,000 endpoints and one
//! Service update at that scale, for nodeplane (map updates), iptables
//! (`iptables-legacy-restore`; Debian's nft-backed `iptables-restore` takes
//! minutes at this size, see ENVIRONMENT.md) and nftables (`nft -f`). Writes
//! `target/bench/datapath.json`.
//!
//! With `--cross-node` (`cargo xtask bench datapath --cross-node`): the same
//! four paths with the backends on another node. Each variant has two node
//! namespaces joined by a veth link, routing each other's pod subnets: the
//! client pod on one, the four backend pods on the other, one Service. Only
//! the client's node differs between variants (where the Service is
//! translated); the backends' node is bare in all four. Writes
//! `target/bench/datapath-cross-node.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodeplane_datapath::{Datapath, PodAt, Service};
use nodeplane_model::Protocol;
use nodeplane_testkit::bench::{
    SAMPLE, Sample, measure, measure_bulk, measure_requests, median, ms, pin_to_one_core, run_bench, write_results,
};
use nodeplane_testkit::{Bpffs, Node, Pod};

const ROUNDS: usize = 3;
const SIZES: [usize; 3] = [1, 1_000, 10_000];
const ENDPOINTS: usize = 4;
/// A client's measurement of one kind of load against an address and port.
type Measure = fn(Ipv4Addr, u16) -> Result<Sample, nodeplane_testkit::Error>;

/// The backends' ports: connect+request+close, requests on one connection, bulk.
const SERVE: u16 = 8080;
const ECHO: u16 = 8081;
const BULK: u16 = 8082;

/// A node namespace with a client pod and the probed Service's backend pods.
struct Site {
    node: Node,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<nodeplane_testkit::Server>,
}

impl Site {
    fn new(subnet: u8) -> Result<Self, nodeplane_testkit::Error> {
        let mut node = Node::new()?;
        let client = node.add_pod(Ipv4Addr::new(10, 201, subnet, 2))?;
        let mut backends = Vec::new();
        for i in 0..ENDPOINTS as u8 {
            backends.push(node.add_pod(Ipv4Addr::new(10, 201, subnet, 10 + i))?);
        }
        // Short connections: no TIME_WAIT pile-up limiting the rate (see ENVIRONMENT.md).
        for backend in &backends {
            backend.netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        }
        client.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        client.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        let servers = backends
            .iter()
            .flat_map(|b| [b.serve_tcp(SERVE, "ok"), b.serve_tcp_echo(ECHO, "ok"), b.serve_tcp_bulk(BULK)])
            .collect();
        Ok(Site { node, client, backends, _servers: servers })
    }

    fn endpoints(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.ip).collect()
    }
}

/// Service `i`'s VIP in a variant's range, and the endpoints of an unprobed Service.
fn vip(range: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, range, (i >> 8) as u8, i as u8)
}

fn filler(i: usize, e: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (i >> 6) as u8, ((i & 63) * 4 + e) as u8)
}

/// The endpoints of Service `i` of `n` (and of the two more after them, for
/// requests on one connection and bulk): the last ones (probed) have the real backends.
fn endpoints_of(backends: &[Ipv4Addr], i: usize, n: usize) -> Vec<Ipv4Addr> {
    if i >= n - 1 { backends.to_vec() } else { (0..ENDPOINTS).map(|e| filler(i, e)).collect() }
}

/// The backends' port Service `i` of `n` (and of the two after them) sends to.
fn target_of(i: usize, n: usize) -> u16 {
    match i.saturating_sub(n - 1) {
        0 => SERVE,
        1 => ECHO,
        _ => BULK,
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args().any(|a| a == "--cross-node") {
        return run_bench("datapath --cross-node", cross_node);
    }
    run_bench("datapath", bench)
}

fn bench() -> Result<(), nodeplane_testkit::Error> {
    pin_to_one_core()?;
    let bpffs = Bpffs::mount()?;
    let (bare, ebpf, iptables, nft) = (Site::new(1)?, Site::new(2)?, Site::new(3)?, Site::new(4)?);
    let (pin, interfaces) = (
        bpffs.path().to_owned(),
        std::iter::once(&ebpf.client).chain(&ebpf.backends).map(|p| p.host_if.clone()).collect::<Vec<_>>(),
    );
    let mut datapath = ebpf.node.run(move || -> Result<Datapath, nodeplane_testkit::Error> {
        let mut datapath = Datapath::load(&pin)?;
        for interface in &interfaces {
            datapath.attach_pod_interface(interface)?;
        }
        Ok(datapath)
    })?;
    // As nodeplaned binds them: a new flow looks the backend's sockets up in its namespace.
    let mut pods = BTreeMap::new();
    for pod in std::iter::once(&ebpf.client).chain(&ebpf.backends) {
        let (index, netns) = ebpf.node.pod_link(pod)?;
        pods.insert(index, PodAt { addr: pod.ip, netns_id: Some(netns) });
    }
    datapath.pod_interfaces().set(&pods)?;

    let (mut results, mut request_results, mut bulk_results) = (Vec::new(), Vec::new(), Vec::new());
    let mut programming = serde_json::Map::new();
    for &n in &SIZES {
        eprintln!("==> {n} Service(s) of {ENDPOINTS} endpoints each");
        let took = program_nodeplane(&mut datapath, &ebpf.endpoints(), n)?;
        eprintln!("    nodeplane programmed them in {:.1} ms", took.as_secs_f64() * 1e3);
        let iptables_took =
            load(&iptables.node, "iptables-legacy-restore", &[], &iptables_rules(&iptables.endpoints(), n))?;
        eprintln!("    iptables-legacy-restore: {:.1} ms", iptables_took.as_secs_f64() * 1e3);
        let nft_took = load(&nft.node, "nft", &["-f", "-"], &nft_rules(&nft.endpoints(), n))?;
        eprintln!("    nft -f: {:.1} ms", nft_took.as_secs_f64() * 1e3);
        if n == *SIZES.last().expect("sizes") {
            let update = update_nodeplane(&mut datapath, n)?;
            let iptables_update = load(&iptables.node, "iptables-legacy-restore", &["--noflush"], &iptables_update(n))?;
            let nft_update = load(&nft.node, "nft", &["-f", "-"], &nft_update(n))?;
            programming = serde_json::json!({
                "services": n, "endpoints": n * ENDPOINTS,
                "program_ms": { "nodeplane": ms(took), "iptables_legacy_restore": ms(iptables_took), "nft": ms(nft_took) },
                "one_update_ms": { "nodeplane": ms(update), "iptables_legacy_restore_noflush": ms(iptables_update), "nft": ms(nft_update) },
            })
            .as_object()
            .expect("an object")
            .clone();
        }
        // Per kind of load, the address each variant's client dials: the direct
        // path a backend's port, the others their probed Service's VIP.
        let sites = [&bare, &ebpf, &iptables, &nft];
        let direct = bare.backends[0].ip;
        let target = |variant: usize, kind: usize| match variant {
            0 => (direct, [SERVE, ECHO, BULK][kind]),
            v => (vip(95 + v as u8, n - 1 + kind), 80),
        };
        let measures: [Measure; 3] = [measure, measure_requests, measure_bulk];
        let mut samples: [[Vec<Sample>; 4]; 3] = Default::default();
        for round in 1..=ROUNDS {
            eprint!(
                "\r    round {round}/{ROUNDS}: direct, nodeplane, iptables, nftables; new connections, requests, bulk"
            );
            for (kind, measure) in measures.into_iter().enumerate() {
                for (variant, site) in sites.iter().enumerate() {
                    let (addr, port) = target(variant, kind);
                    samples[kind][variant].push(site.client.run(move || measure(addr, port))?);
                }
            }
        }
        eprintln!();
        let [connections, requests, bulk] = samples.map(|kind| kind.map(|s| median(&s)));
        results.push((n, connections));
        request_results.push((n, requests));
        bulk_results.push((n, bulk));
    }

    let rounds = format!("{ROUNDS} interleaved rounds of {SAMPLE:?}, medians");
    let json_sizes = print_table(&format!("connect+request+close from a pod, {rounds}"), &results, "conn/s");
    let json_requests =
        print_table(&format!("requests on one connection from a pod, {rounds}"), &request_results, "requests/s");
    let json_bulk =
        print_table(&format!("bulk on one connection to a pod (latency: per MiB), {rounds}"), &bulk_results, "MiB/s");
    println!(
        "\nprogramming at {} Services / {} endpoints: {}",
        SIZES[2],
        SIZES[2] * ENDPOINTS,
        serde_json::Value::Object(programming.clone())
    );
    let json = serde_json::json!({
        "rounds": ROUNDS, "sample_s": SAMPLE.as_secs_f64(), "sizes": json_sizes,
        "requests": json_requests, "bulk": json_bulk, "programming": programming,
    });
    write_results("datapath", &json)
}

/// Programs `n` Services (replacing the previous size's) with nodeplane's loader.
fn program_nodeplane(
    datapath: &mut Datapath,
    backends: &[Ipv4Addr],
    n: usize,
) -> Result<Duration, nodeplane_testkit::Error> {
    for key in datapath.services().programmed()?.iter().map(|(k, _)| *k) {
        datapath.services().remove(&key)?;
    }
    let services: Vec<Service> = (0..n + 2)
        .map(|i| Service {
            id: i as u32 + 1,
            vip: vip(96, i),
            port: 80,
            protocol: Protocol::Tcp,
            backends: endpoints_of(backends, i, n).into_iter().map(|a| (a, target_of(i, n))).collect(),
            affinity: None,
            node_port: false,
        })
        .collect();
    let started = Instant::now();
    for service in &services {
        datapath.services().set(service)?;
    }
    Ok(started.elapsed())
}

/// One Service's endpoints change (the first, unprobed one).
fn update_nodeplane(datapath: &mut Datapath, n: usize) -> Result<Duration, nodeplane_testkit::Error> {
    let service = Service {
        id: 1,
        vip: vip(96, 0),
        port: 80,
        protocol: Protocol::Tcp,
        backends: (0..ENDPOINTS).map(|e| (filler(n + 3, e), SERVE)).collect(),
        affinity: None,
        node_port: false,
    };
    let started = Instant::now();
    datapath.services().set(&service)?;
    Ok(started.elapsed())
}

/// The KUBE-SVC chain of Service `i` (random choice among its endpoints) and its KUBE-SEP chains.
fn iptables_endpoint_rules(i: usize, endpoints: &[Ipv4Addr], target: u16, chains: &mut String, rules: &mut String) {
    chains.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
    for (e, endpoint) in endpoints.iter().enumerate() {
        chains.push_str(&format!(":KUBE-SEP-{i}-{e} - [0:0]\n"));
        let left = endpoints.len() - e;
        let statistic = if left > 1 {
            format!("-m statistic --mode random --probability {:.11} ", 1.0 / left as f64)
        } else {
            String::new()
        };
        rules.push_str(&format!("-A KUBE-SVC-{i} {statistic}-j KUBE-SEP-{i}-{e}\n"));
        rules.push_str(&format!("-A KUBE-SEP-{i}-{e} -p tcp -m tcp -j DNAT --to-destination {endpoint}:{target}\n"));
    }
}

/// kube-proxy's iptables mode for `n` Services, the probed one last in KUBE-SERVICES.
fn iptables_rules(backends: &[Ipv4Addr], n: usize) -> String {
    let (mut chains, mut rules) = (String::from("*nat\n:KUBE-SERVICES - [0:0]\n"), String::new());
    rules.push_str("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..n + 2 {
        rules.push_str(&format!("-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n", vip(97, i)));
        iptables_endpoint_rules(i, &endpoints_of(backends, i, n), target_of(i, n), &mut chains, &mut rules);
    }
    format!("{chains}{rules}COMMIT\n")
}

/// The first Service's endpoints change: its chains rewritten (a restore
/// flushes the chains it declares), as kube-proxy does.
fn iptables_update(n: usize) -> String {
    let endpoints: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| filler(n + 3, e)).collect();
    let (mut chains, mut rules) = (String::from("*nat\n"), String::new());
    iptables_endpoint_rules(0, &endpoints, SERVE, &mut chains, &mut rules);
    format!("{chains}{rules}COMMIT\n")
}

fn nft_service(i: usize, endpoints: &[Ipv4Addr], target: u16) -> String {
    let map: Vec<String> = endpoints.iter().enumerate().map(|(e, a)| format!("{e} : {a} . {target}")).collect();
    format!(
        "\tchain svc-{i} {{\n\t\tmeta l4proto tcp dnat ip to numgen random mod {} map {{ {} }}\n\t}}\n",
        endpoints.len(),
        map.join(", ")
    )
}

/// kube-proxy's nftables mode, in its spirit: a verdict map from VIP, protocol
/// and port to a chain per Service that picks an endpoint with numgen.
fn nft_rules(backends: &[Ipv4Addr], n: usize) -> String {
    let mut script = String::from("table ip bench\ndelete table ip bench\ntable ip bench {\n");
    let elements: Vec<String> = (0..n + 2).map(|i| format!("{} . tcp . 80 : goto svc-{i}", vip(98, i))).collect();
    script.push_str("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n");
    script.push_str(&format!("\t\telements = {{ {} }}\n\t}}\n", elements.join(", ")));
    for i in 0..n + 2 {
        script.push_str(&nft_service(i, &endpoints_of(backends, i, n), target_of(i, n)));
    }
    script.push_str("\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n");
    script.push_str("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n}\n");
    script
}

fn nft_update(n: usize) -> String {
    let endpoints: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|e| filler(n + 3, e)).collect();
    format!("flush chain ip bench svc-0\ntable ip bench {{\n{}}}\n", nft_service(0, &endpoints, SERVE))
}

/// Feeds `input` to `tool args` in `node`'s namespace; how long it took.
fn load(node: &Node, tool: &str, args: &[&str], input: &str) -> Result<Duration, nodeplane_testkit::Error> {
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node.netns.name(), tool])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{tool}: {e}"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| format!("{tool}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{tool} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(started.elapsed())
}

/// Prints the table of `results` (per Service count, the four variants'
/// medians) with ratios against the direct path; the same as JSON.
fn print_table(title: &str, results: &[(usize, [Sample; 4])], unit: &str) -> Vec<serde_json::Value> {
    println!("\n{title}");
    println!("| Services | path | {unit} | × direct | p50 µs | p99 µs | p99 × direct |");
    println!("|---|---|---|---|---|---|---|");
    let names = ["direct (pod IP)", "nodeplane VIP", "iptables VIP", "nftables VIP"];
    let mut json_sizes = Vec::new();
    for (n, medians) in results {
        let (base, base_p99) = (medians[0].rate, medians[0].p99_us);
        let mut variants = serde_json::Map::new();
        for (name, sample) in names.iter().zip(medians) {
            println!(
                "| {n} | {name} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |",
                sample.rate,
                sample.rate / base,
                sample.p50_us,
                sample.p99_us,
                sample.p99_us / base_p99
            );
            variants.insert(
                name.to_string(),
                serde_json::json!({"rate": sample.rate, "ratio": sample.rate / base, "p50_us": sample.p50_us,
                                   "p99_us": sample.p99_us, "p99_ratio": sample.p99_us / base_p99}),
            );
        }
        json_sizes.push(serde_json::json!({"services": n, "variants": variants}));
    }
    json_sizes
}

/// A client pod on one node and the Service's backend pods on another, the
/// nodes joined by a veth link (`192.168.V.1` – `.2`) and routing each other's
/// pod subnets (`10.203.V.0/24` the client's, `10.204.V.0/24` the backends').
struct Pair {
    client_node: Node,
    _backend_node: Node,
    client: Pod,
    backends: Vec<Pod>,
    /// The client node's end of the link.
    link: String,
    _servers: Vec<nodeplane_testkit::Server>,
}

impl Pair {
    fn new(v: u8) -> Result<Self, nodeplane_testkit::Error> {
        let (mut client_node, mut backend_node) = (Node::new()?, Node::new()?);
        let client = client_node.add_pod(Ipv4Addr::new(10, 203, v, 2))?;
        let mut backends = Vec::new();
        for i in 0..ENDPOINTS as u8 {
            backends.push(backend_node.add_pod(Ipv4Addr::new(10, 204, v, 10 + i))?);
        }
        let link = format!("{}l", client_node.prefix());
        let (a, b) = (&client_node.netns, &backend_node.netns);
        a.ip(&["link", "add", &link, "type", "veth", "peer", "name", "l2", "netns", b.name()])?;
        a.ip(&["addr", "add", &format!("192.168.{v}.1/24"), "dev", &link])?;
        a.ip(&["link", "set", &link, "up"])?;
        a.ip(&["route", "add", &format!("10.204.{v}.0/24"), "via", &format!("192.168.{v}.2")])?;
        b.ip(&["addr", "add", &format!("192.168.{v}.2/24"), "dev", "l2"])?;
        b.ip(&["link", "set", "l2", "up"])?;
        b.ip(&["route", "add", &format!("10.203.{v}.0/24"), "via", &format!("192.168.{v}.1")])?;
        for backend in &backends {
            backend.netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
        }
        client.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        client.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        let servers = backends.iter().map(|b| b.serve_tcp(SERVE, "ok")).collect();
        Ok(Pair { client_node, _backend_node: backend_node, client, backends, link, _servers: servers })
    }

    fn endpoints(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.ip).collect()
    }
}

/// `--cross-node`: one Service whose four backends are on another node.
fn cross_node() -> Result<(), nodeplane_testkit::Error> {
    pin_to_one_core()?;
    let bpffs = Bpffs::mount()?;
    let pairs = [Pair::new(11)?, Pair::new(12)?, Pair::new(13)?, Pair::new(14)?];
    let [bare, ebpf, iptables, nft] = &pairs;
    let (pin, pod_if, link) = (bpffs.path().to_owned(), ebpf.client.host_if.clone(), ebpf.link.clone());
    // The client's node: its pod's interface, and the link the replies come in by.
    let mut datapath = ebpf.client_node.run(move || -> Result<Datapath, nodeplane_testkit::Error> {
        let mut datapath = Datapath::load(&pin)?;
        datapath.attach_pod_interface(&pod_if)?;
        datapath.attach_node_interface(&link)?;
        Ok(datapath)
    })?;
    program_nodeplane(&mut datapath, &ebpf.endpoints(), 1)?;
    load(&iptables.client_node, "iptables-legacy-restore", &[], &iptables_rules(&iptables.endpoints(), 1))?;
    load(&nft.client_node, "nft", &["-f", "-"], &nft_rules(&nft.endpoints(), 1))?;
    // Each path answers before it is measured.
    let probed = [(bare.backends[0].ip, SERVE), (vip(96, 0), 80), (vip(97, 0), 80), (vip(98, 0), 80)];
    for (pair, (addr, port)) in pairs.iter().zip(probed) {
        pair.client.tcp_request(addr, port).map_err(|e| format!("{addr}:{port} across nodes: {e}"))?;
    }
    let mut samples: [Vec<Sample>; 4] = Default::default();
    for round in 1..=ROUNDS {
        eprint!("\r    round {round}/{ROUNDS}: direct, nodeplane, iptables, nftables");
        for (i, (pair, (addr, port))) in pairs.iter().zip(probed).enumerate() {
            samples[i].push(pair.client.run(move || measure(addr, port))?);
        }
    }
    eprintln!();
    let results = [(1, samples.map(|s| median(&s)))];
    let title = format!(
        "connect+request+close from a pod to a Service whose backends are on another node, {ROUNDS} interleaved rounds of {SAMPLE:?}, medians"
    );
    let json_sizes = print_table(&title, &results, "conn/s");
    drop(datapath);
    let json = serde_json::json!({ "rounds": ROUNDS, "sample_s": SAMPLE.as_secs_f64(), "sizes": json_sizes });
    write_results("datapath-cross-node", &json)
}
