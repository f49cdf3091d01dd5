//! `cargo xtask bench ipam`: the IPAM sweeper at node scale — 50,000 reservation
//! files across 10 networks, 5,000 live containers in a private containerd — run
//! inside the real (release) `nodeplaned`. Reports per-sweep wall time against a
//! baseline measured in the same run (reading every file once, the least any
//! sweeper must do), containerd calls per sweep, and nodeplaned's peak RSS.
//! Samples interleave baseline and sweep; medians are reported.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use nodeplane_testkit::{Containerd, DbusDaemon, Launch, Nodeplaned};

const NETWORKS: usize = 10;
const FILES_PER_NETWORK: usize = 5_000;
const LIVE_CONTAINERS: usize = 5_000;
const ROUNDS: usize = 5;

pub fn bench(what: &str) -> Result<(), String> {
    if what != "ipam" {
        return Err(format!("unknown benchmark {what:?}; available: ipam"));
    }
    crate::packages::ensure()?;
    if !nodeplane_testkit::is_root() {
        return Err("the benchmark needs root (network namespace, containerd, D-Bus policy)".into());
    }
    crate::step("build (release)", crate::cargo().args(["build", "--release", "--bins"]))?;
    let bin = crate::target_dir().join("release");

    eprintln!("==> containerd with {LIVE_CONTAINERS} containers");
    let ctrd = Containerd::start().map_err(|e| e.to_string())?;
    let live: Vec<String> = (0..LIVE_CONTAINERS).map(|n| format!("{n:064x}")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    runtime.block_on(ctrd.create_containers("k8s.io", &live));
    eprintln!("    created in {:.1} s", started.elapsed().as_secs_f64());

    eprintln!("==> {} reservation files in {NETWORKS} networks", NETWORKS * FILES_PER_NETWORK);
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let leaked = write_reservations(data.path(), &live).map_err(|e| e.to_string())?;

    let bus = DbusDaemon::start(&[&crate::root().join("units/org.nodeplane.Node1.conf")]).map_err(|e| e.to_string())?;
    let config = format!(
        "[ipam]\ninterval = \"1h\"\nnetworks_dir = \"{}\"\ncontainerd_socket = \"{}\"\n",
        data.path().display(),
        ctrd.socket().display()
    );
    let node = Nodeplaned::spawn(
        &bus,
        Launch {
            binary: &bin.join("nodeplaned"),
            config: &config,
            preset: &[],
            env: &[],
            capture_stderr: true,
            journal: None,
        },
    )
    .map_err(|e| e.to_string())?;
    node.wait_ready(Duration::from_secs(30))?;

    let mut baseline = Vec::new();
    let mut dry = Vec::new();
    let mut dry_calls = Vec::new();
    for round in 1..=ROUNDS {
        eprint!("\r==> round {round}/{ROUNDS}: baseline scan, dry-run sweep");
        baseline.push(read_every_file(data.path()).map_err(|e| e.to_string())?);
        let (took, facts) = sweep(&bus, true)?;
        if facts["freed"] != leaked as u64 || facts["scanned"] != (NETWORKS * FILES_PER_NETWORK) as u64 {
            return Err(format!("dry run saw {facts:?}, expected {leaked} to free"));
        }
        dry.push(took);
        dry_calls.push(facts["containerd_calls"]);
    }
    eprintln!();
    eprintln!("==> one real sweep, freeing {leaked}");
    let (real, facts) = sweep(&bus, false)?;
    if facts["freed"] != leaked as u64 {
        return Err(format!("the real sweep freed {} of {leaked}", facts["freed"]));
    }
    let peak_rss_kib = vm_hwm_kib(node.pid())?;
    node.stop(Duration::from_secs(15))?;

    let (baseline, dry) = (median(&mut baseline), median(&mut dry));
    let rows = [
        ("baseline: read every file once", baseline, 1.0),
        ("dry-run sweep (50,000 files)", dry, secs(dry) / secs(baseline)),
        ("real sweep (frees 45,000)", real, secs(real) / secs(baseline)),
    ];
    println!(
        "\nIPAM sweep, {} files / {NETWORKS} networks / {LIVE_CONTAINERS} live containers",
        NETWORKS * FILES_PER_NETWORK
    );
    println!("{:34} {:>10} {:>12}", "", "median ms", "× baseline");
    for (name, took, ratio) in rows {
        println!("{name:34} {:>10.1} {:>12.2}", secs(took) * 1000.0, ratio);
    }
    println!("containerd calls per sweep: {:?} (dry runs), {} (real)", dry_calls, facts["containerd_calls"]);
    println!("nodeplaned peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);
    println!("goals: < 1 s per sweep, O(1) containerd calls, < 30 MiB");

    let json = serde_json::json!({
        "files": NETWORKS * FILES_PER_NETWORK, "networks": NETWORKS, "live_containers": LIVE_CONTAINERS, "rounds": ROUNDS,
        "baseline_ms": secs(baseline) * 1000.0, "dry_run_sweep_ms": secs(dry) * 1000.0, "real_sweep_ms": secs(real) * 1000.0,
        "dry_run_ratio": secs(dry) / secs(baseline), "real_ratio": secs(real) / secs(baseline),
        "containerd_calls_dry": dry_calls, "containerd_calls_real": facts["containerd_calls"],
        "peak_rss_kib": peak_rss_kib,
    });
    let out = crate::target_dir().join("bench");
    fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let path = out.join("ipam.json");
    fs::write(&path, serde_json::to_string_pretty(&json).expect("JSON")).map_err(|e| e.to_string())?;
    println!("written to {}", path.display());
    Ok(())
}

/// 10 networks × 5,000 files in host-local's format: 500 held by live containers
/// per network, the rest by containers that are gone, an hour old. Returns how
/// many are leaked.
fn write_reservations(dir: &Path, live: &[String]) -> std::io::Result<usize> {
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut leaked = 0;
    for net in 0..NETWORKS {
        let net_dir = dir.join(format!("bench-{net}"));
        fs::create_dir_all(&net_dir)?;
        fs::write(net_dir.join("lock"), "")?;
        fs::write(net_dir.join("last_reserved_ip.0"), "10.0.0.1")?;
        for n in 0..FILES_PER_NETWORK {
            let ip = format!("10.{}.{}.{}", 100 + net, n / 250, n % 250 + 1);
            let owner = if n < LIVE_CONTAINERS / NETWORKS {
                live[net * (LIVE_CONTAINERS / NETWORKS) + n].clone()
            } else {
                leaked += 1;
                format!("{:064x}", 1_000_000 + net * FILES_PER_NETWORK + n)
            };
            let path = net_dir.join(ip);
            fs::write(&path, format!("{owner}\r\neth0"))?;
            fs::File::options().write(true).open(&path)?.set_modified(old)?;
        }
    }
    Ok(leaked)
}

/// The baseline: list every network directory and read every file once.
fn read_every_file(dir: &Path) -> std::io::Result<Duration> {
    let started = Instant::now();
    let mut bytes = 0;
    for net in fs::read_dir(dir)? {
        for file in fs::read_dir(net?.path())? {
            bytes += fs::read(file?.path())?.len();
        }
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed())
}

/// Asks nodeplaned for a sweep; returns the sweep's own duration and its counts.
fn sweep(bus: &DbusDaemon, dry_run: bool) -> Result<(Duration, std::collections::BTreeMap<String, u64>), String> {
    let busctl = |args: &[&str]| {
        let out = Command::new("busctl")
            .args(["--address", bus.address(), "--json=short"])
            .args(args)
            .output()
            .map_err(|e| format!("busctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("busctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(out.stdout)
    };
    busctl(&[
        "call",
        "org.nodeplane.Node1",
        "/org/nodeplane/Node1/ipam",
        "org.nodeplane.Ipam1",
        "Sweep",
        "b",
        &dry_run.to_string(),
    ])?;
    let facts = busctl(&[
        "get-property",
        "org.nodeplane.Node1",
        "/org/nodeplane/Node1/ipam",
        "org.nodeplane.Component1",
        "Facts",
    ])?;
    let facts: serde_json::Value = serde_json::from_slice(&facts).map_err(|e| e.to_string())?;
    let counts = facts["data"]
        .as_object()
        .ok_or("no facts")?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v["data"].as_u64()?)))
        .collect::<std::collections::BTreeMap<_, _>>();
    Ok((Duration::from_millis(counts["last_sweep_ms"]), counts))
}

fn vm_hwm_kib(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .ok_or_else(|| "no VmHWM".into())
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
