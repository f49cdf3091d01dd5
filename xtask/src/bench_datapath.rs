//! `cargo xtask bench datapath`: connect+request+close rate and latency from a
//! pod to a backend pod, directly by pod IP and through a Service VIP on the
//! eBPF datapath, in one run: variants interleaved, five rounds, medians, the
//! VIP path reported as a ratio of the direct one.

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use nodeplane_datapath::{Datapath, Protocol, Service};
use nodeplane_testkit::{Bpffs, Node};

const ROUNDS: usize = 5;
const SAMPLE: Duration = Duration::from_secs(2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct Sample {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn bench() -> Result<(), String> {
    crate::packages::ensure()?;
    if !nodeplane_testkit::is_root() {
        return Err("the benchmark needs root (network namespaces, eBPF)".into());
    }
    let bpffs = Bpffs::mount().map_err(|e| e.to_string())?;
    let mut node = Node::new().map_err(|e| e.to_string())?;
    let client = node.add_pod(Ipv4Addr::new(10, 201, 0, 2)).map_err(|e| e.to_string())?;
    let backend = node.add_pod(Ipv4Addr::new(10, 201, 0, 3)).map_err(|e| e.to_string())?;
    // Short connections: no TIME_WAIT pile-up limiting the rate (see ENVIRONMENT.md).
    backend.netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0").map_err(|e| e.to_string())?;
    client.netns.sysctl("net.ipv4.tcp_tw_reuse", "1").map_err(|e| e.to_string())?;
    client.netns.sysctl("net.ipv4.ip_local_port_range", "1024 65000").map_err(|e| e.to_string())?;
    let _server = backend.serve_tcp(8080, "ok");
    let (pin, interfaces) = (bpffs.path().to_owned(), [client.host_if.clone(), backend.host_if.clone()]);
    let service = Service {
        id: 1,
        vip: VIP,
        port: 80,
        protocol: Protocol::Tcp,
        backends: vec![(backend.ip, 8080)],
        affinity: None,
        node_port: false,
    };
    let _datapath = node.netns.run(move || -> Result<Datapath, String> {
        let mut datapath = Datapath::load(&pin).map_err(|e| e.to_string())?;
        for interface in &interfaces {
            datapath.attach_pod_interface(interface).map_err(|e| e.to_string())?;
        }
        datapath.set_service(&service).map_err(|e| e.to_string())?;
        Ok(datapath)
    })?;

    let (mut direct, mut vip) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprint!("\r==> round {round}/{ROUNDS}: direct, then through the VIP");
        let (ip, port) = (backend.ip, 8080);
        direct.push(client.netns.run(move || measure(ip, port))?);
        vip.push(client.netns.run(move || measure(VIP, 80))?);
    }
    eprintln!();
    let median = |samples: &mut Vec<Sample>, f: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let rows = [("direct (pod IP)", &mut direct), ("Service VIP (nodeplane)", &mut vip)];
    let mut table = Vec::new();
    for (name, samples) in rows {
        table.push((name, median(samples, |s| s.rate), median(samples, |s| s.p50_us), median(samples, |s| s.p99_us)));
    }
    let base = table[0].1;
    println!("\nconnect+request+close, one client, {ROUNDS} interleaved rounds of {SAMPLE:?}, medians");
    println!("{:26} {:>12} {:>8} {:>9} {:>9}", "", "conn/s", "× direct", "p50 µs", "p99 µs");
    for (name, rate, p50, p99) in &table {
        println!("{name:26} {rate:>12.0} {:>8.2} {p50:>9.0} {p99:>9.0}", rate / base);
    }
    let json = serde_json::json!({
        "rounds": ROUNDS, "sample_s": SAMPLE.as_secs_f64(),
        "direct": { "rate": table[0].1, "p50_us": table[0].2, "p99_us": table[0].3 },
        "vip": { "rate": table[1].1, "p50_us": table[1].2, "p99_us": table[1].3, "ratio": table[1].1 / base },
    });
    let out = crate::target_dir().join("bench");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let path = out.join("datapath.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("JSON")).map_err(|e| e.to_string())?;
    println!("written to {}", path.display());
    Ok(())
}

/// Connects, reads the reply and closes, again and again for [`SAMPLE`].
fn measure(addr: Ipv4Addr, port: u16) -> Result<Sample, String> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLE {
        let one = Instant::now();
        let mut stream = TcpStream::connect((addr, port)).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
        latencies.push(one.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e6;
    Ok(Sample { rate: latencies.len() as f64 / elapsed, p50_us: at(0.5), p99_us: at(0.99) })
}
