//! `cargo xtask bench policy` (`cargo bench -p nodeplane-datapath --bench policy`): what NetworkPolicy costs in nodeplane's
//! datapath. A client pod and a server pod on one node namespace; the server
//! is selected by 0 (open), 100 or 1,000 policy rules (one ingress rule each:
//! an address block and a port range, one of them the rule that lets the
//! client in). For each, in interleaved rounds on one core: new connections
//! (connect + request + close, each decided by policy once) and established
//! traffic (request/response on one open connection, conntrack only), rate
//! and p50/p99, as ratios against 0 rules. Also the time to compile and
//! program 1,000 policies into the maps, and one policy changed among them.
//! Writes `target/bench/policy.json`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Instant;

use nodeplane_datapath::Datapath;
use nodeplane_model::compile::CompiledPolicy;
use nodeplane_model::manifests::load_dir;
use nodeplane_model::policy::{Cluster, NamedPort, PodView, Policy};
use nodeplane_testkit::bench::{SAMPLE, Sample, measure, median, ms, pin_to_one_core, run_bench, write_results};
use nodeplane_testkit::{Bpffs, Node};

const ROUNDS: usize = 5;
const RULES: [usize; 3] = [0, 100, 1_000];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 202, 1, 10);

/// `n` NetworkPolicies selecting the server, one ingress rule each; the last
/// lets the client in on 8080-8081 (TCP).
fn policies(n: usize) -> Result<Vec<Policy>, nodeplane_testkit::Error> {
    let dir = tempfile::tempdir()?;
    let mut text = String::new();
    for i in 0..n {
        let from = if i + 1 == n {
            "podSelector: {matchLabels: {app: client}}".to_owned()
        } else {
            format!("ipBlock: {{cidr: 172.16.{}.{}/32}}", i / 256, i % 256)
        };
        let low = 1000 + (i % 50_000);
        text += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: rule-{i}, namespace: bench}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - from: [{{{from}}}]\n    \
             ports: [{{port: {}, endPort: {}, protocol: TCP}}]\n",
            if i + 1 == n { 8080 } else { low },
            if i + 1 == n { 8081 } else { low + 100 },
        );
    }
    std::fs::write(dir.path().join("policies.yaml"), text)?;
    let found = load_dir(dir.path());
    if !found.errors.is_empty() {
        return Err(format!("bench policies: {:?}", found.errors).into());
    }
    Ok(found.policies)
}

fn cluster(policies: Vec<Policy>) -> Cluster {
    let pod = |name: &str, ip| PodView {
        namespace: "bench".into(),
        name: name.into(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        ip,
        ports: Vec::<NamedPort>::new(),
    };
    let pods = vec![pod("client", CLIENT), pod("server", SERVER)];
    Cluster { namespaces: Default::default(), pods, remote_pods: Vec::new(), policies }
}

fn main() -> std::process::ExitCode {
    run_bench("policy", bench)
}

fn bench() -> Result<(), nodeplane_testkit::Error> {
    pin_to_one_core()?;
    let bpffs = Bpffs::mount()?;
    let mut node = Node::new()?;
    let client = node.add_pod(CLIENT)?;
    let server = node.add_pod(SERVER)?;
    server.netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")?;
    client.netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    client.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    let _servers = [server.serve_tcp(8080, "ok"), server.serve_tcp_echo(8081, "echo")];
    let (pin, interfaces) = (bpffs.path().to_owned(), [client.host_if.clone(), server.host_if.clone()]);
    let mut datapath = node.run(move || -> Result<Datapath, nodeplane_testkit::Error> {
        let mut datapath = Datapath::load(&pin)?;
        for interface in &interfaces {
            datapath.attach_pod_interface(interface)?;
        }
        Ok(datapath)
    })?;

    // Compile and program 1,000 policies into empty maps, then change one.
    let thousand = policies(1_000)?;
    let started = Instant::now();
    let compiled = CompiledPolicy::compile(&cluster(thousand.clone()));
    let compile = started.elapsed();
    let stats = datapath.policy().apply(&compiled)?;
    let program = started.elapsed() - compile;
    let mut changed = thousand.clone();
    changed.swap_remove(0);
    let started = Instant::now();
    datapath.policy().apply(&CompiledPolicy::compile(&cluster(changed)))?;
    let one_change = started.elapsed();
    eprintln!(
        "==> 1,000 policies: compiled in {:.1} ms, programmed in {:.1} ms ({} map entries written, {} port sets); one removed: {:.1} ms",
        ms(compile),
        ms(program),
        stats.written,
        stats.port_sets,
        ms(one_change)
    );

    let compiled: Vec<CompiledPolicy> = RULES
        .iter()
        .map(|n| Ok(CompiledPolicy::compile(&cluster(policies(*n)?))))
        .collect::<Result<_, nodeplane_testkit::Error>>()?;
    let mut new: [Vec<Sample>; 3] = Default::default();
    let mut established: [Vec<Sample>; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (i, n) in RULES.iter().enumerate() {
            eprint!("\r    round {round}/{ROUNDS}: {n} rule(s)     ");
            datapath.policy().apply(&compiled[i])?;
            new[i].push(client.run(|| measure(SERVER, 8080))?);
            established[i].push(client.run(|| measure_established(SERVER, 8081))?);
        }
    }
    eprintln!();
    println!(
        "\nthrough a pod selected by N policy rules, {ROUNDS} interleaved rounds of {SAMPLE:?}, medians, one core"
    );
    println!("| rules | traffic | per s | × 0 rules | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (kind, samples) in [("new connections", &new), ("established (request/response)", &established)] {
        let medians: Vec<Sample> = samples.iter().map(|s| median(s)).collect();
        for (n, sample) in RULES.iter().zip(&medians) {
            let ratio = sample.rate / medians[0].rate;
            println!(
                "| {n} | {kind} | {:.0} | {ratio:.2} | {:.0} | {:.0} |",
                sample.rate, sample.p50_us, sample.p99_us
            );
            rows.push(serde_json::json!({"rules": n, "traffic": kind, "rate": sample.rate, "ratio": ratio, "p50_us": sample.p50_us, "p99_us": sample.p99_us}));
        }
    }
    let json = serde_json::json!({
        "rounds": ROUNDS, "sample_s": SAMPLE.as_secs_f64(), "results": rows,
        "thousand_policies": {"compile_ms": ms(compile), "program_ms": ms(program), "entries_written": stats.written, "one_change_ms": ms(one_change)},
    });
    write_results("policy", &json)
}

/// Request/response (a line echoed) on one open connection, for [`SAMPLE`].
fn measure_established(addr: Ipv4Addr, port: u16) -> Result<Sample, nodeplane_testkit::Error> {
    let mut stream = TcpStream::connect((addr, port)).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // the greeting
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLE {
        let one = Instant::now();
        stream.write_all(b"ping\n")?;
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err("the echo server closed the connection".into());
        }
        latencies.push(one.elapsed());
    }
    Ok(Sample::from_latencies(latencies, started.elapsed()))
}
