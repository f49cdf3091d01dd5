//! `cargo xtask bench ipam` (`cargo bench -p nodeplane --bench ipam`): the IPAM sweeper at node scale — 50,000 reservation
//! files across 10 networks, 5,000 live containers in a private containerd — run
//! inside the real (release) `nodeplaned`. Reports per-sweep wall time against a
//! baseline measured in the same run (reading every file once, the least any
//! sweeper must do), containerd calls per sweep, and nodeplaned's peak RSS.
//! Samples interleave baseline and sweep; medians are reported.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use nodeplane_testkit::bench::{run_bench, write_results};
use nodeplane_testkit::{Containerd, DbusDaemon, Launch, Nodeplaned};

const NETWORKS: usize = 10;
const FILES_PER_NETWORK: usize = 5_000;
const LIVE_CONTAINERS: usize = 5_000;
const ROUNDS: usize = 5;
/// Each real sweep needs the 45,000 leaked files written anew, so fewer rounds.
const REAL_ROUNDS: usize = 3;

fn main() -> std::process::ExitCode {
    run_bench("ipam", bench)
}

fn bench() -> Result<(), nodeplane_testkit::Error> {
    if !nodeplane_testkit::is_root() {
        return Err("the benchmark needs root (network namespace, containerd, D-Bus policy)".into());
    }
    let nodeplaned = Path::new(env!("CARGO_BIN_EXE_nodeplaned"));

    eprintln!("==> containerd with {LIVE_CONTAINERS} containers");
    let ctrd = Containerd::start()?;
    let live: Vec<String> = (0..LIVE_CONTAINERS).map(|n| format!("{n:064x}")).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let started = Instant::now();
    runtime.block_on(ctrd.create_containers("k8s.io", &live));
    eprintln!("    created in {:.1} s", started.elapsed().as_secs_f64());

    eprintln!("==> {} reservation files in {NETWORKS} networks", NETWORKS * FILES_PER_NETWORK);
    let data = tempfile::tempdir()?;
    let leaked = write_reservations(data.path(), &live)?;

    let bus = DbusDaemon::start(&[&Path::new(env!("CARGO_MANIFEST_DIR")).join("../units/org.nodeplane.Node1.conf")])?;
    let config = |interval: &str, dry_run: bool| {
        format!(
            "[datapath]\nenabled = false\n[ipam]\ninterval = \"{interval}\"\ndry_run = {dry_run}\nnetworks_dir = \"{}\"\ncontainerd_socket = \"{}\"\n",
            data.path().display(),
            ctrd.socket().display()
        )
    };
    let start = |config: &str| -> Result<Nodeplaned, nodeplane_testkit::Error> {
        let launch = Launch {
            binary: nodeplaned,
            config,
            preset: &[],
            env: &[],
            capture_stderr: true,
            journal: None,
            netns: None,
            metrics: None,
        };
        let node = Nodeplaned::spawn(&bus, launch)?;
        node.wait_ready(Duration::from_secs(30))?;
        Ok(node)
    };
    let node = start(&config("1s", true))?;
    let ctl = Ctl { bus: &bus, pid: node.pid() };

    // 1. Periodic dry-run sweeps, as the node runs them (every second here):
    //    their memory, with nothing else running beside them.
    eprintln!("==> periodic dry-run sweeps");
    let mut seen = ctl.facts()?.get("sweeps").copied().unwrap_or(0);
    ctl.reset_peak_rss()?;
    let mut periodic = Vec::new();
    for _ in 0..3 {
        let facts = ctl.next_periodic_sweep(&mut seen)?;
        expect(&facts, "freed", leaked)?;
        expect(&facts, "scanned", NETWORKS * FILES_PER_NETWORK)?;
        periodic.push(Duration::from_millis(facts["last_sweep_ms"]));
    }
    let periodic_rss = ctl.peak_rss_kib()?;

    // 2. On-demand dry runs (the same sweep plus a 45,000-row D-Bus reply), strictly
    //    alternating with the baseline, for the timing figures.
    fs::write(node.config_path(), config("1h", true))?;
    ctl.busctl(&["call", "org.nodeplane.Node1", "/org/nodeplane/Node1", "org.nodeplane.Node1", "Reload"])?;
    ctl.reset_peak_rss()?;
    let (mut baseline, mut on_demand, mut calls, mut call_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        eprint!("\r==> round {round}/{ROUNDS}: baseline read, then an on-demand dry run");
        baseline.push(read_every_file(data.path())?);
        let started = Instant::now();
        let reply = ctl.busctl(&[
            "call",
            "org.nodeplane.Node1",
            "/org/nodeplane/Node1/ipam",
            "org.nodeplane.Ipam1",
            "Sweep",
            "b",
            "true",
        ])?;
        call_ms.push(started.elapsed());
        let rows = serde_json::from_slice::<serde_json::Value>(&reply)?["data"][0].as_array().map_or(0, Vec::len);
        if rows != leaked {
            return Err(format!("the reply listed {rows} reservations, expected {leaked}").into());
        }
        let facts = ctl.facts()?;
        on_demand.push(Duration::from_millis(facts["last_sweep_ms"]));
        calls.push(facts["containerd_calls"]);
    }
    eprintln!();
    let on_demand_rss = ctl.peak_rss_kib()?;

    node.stop(Duration::from_secs(15))?;

    // 3. The first real sweep on such a node: a periodic one that frees 45,000, in
    //    a fresh nodeplaned (so the memory the reply phase left with the allocator
    //    does not count here).
    let (mut real, mut real_rss, mut real_calls) = (Vec::new(), 0, 0);
    for round in 1..=REAL_ROUNDS {
        eprintln!("==> periodic real sweep {round}/{REAL_ROUNDS}, freeing {leaked}");
        if round > 1 {
            write_reservations(data.path(), &live)?;
        }
        let node = start(&config("1s", false))?;
        let ctl = Ctl { bus: &bus, pid: node.pid() };
        let facts = ctl.next_periodic_sweep(&mut 0)?;
        expect(&facts, "freed", leaked)?;
        real.push(Duration::from_millis(facts["last_sweep_ms"]));
        real_rss = real_rss.max(ctl.peak_rss_kib()?);
        real_calls = facts["containerd_calls"];
        node.stop(Duration::from_secs(15))?;
    }

    let (baseline, periodic, on_demand, on_demand_call, real) =
        (median(&mut baseline), median(&mut periodic), median(&mut on_demand), median(&mut call_ms), median(&mut real));
    let ratio = |d: Duration| secs(d) / secs(baseline);
    println!(
        "\nIPAM sweep: {} files in {NETWORKS} networks, {LIVE_CONTAINERS} live containers, {leaked} leaked (medians)",
        NETWORKS * FILES_PER_NETWORK
    );
    println!("{:44} {:>9} {:>11} {:>14}", "", "sweep ms", "× baseline", "peak RSS MiB");
    println!("{:44} {:>9.1} {:>11.2} {:>14}", "baseline: read every file once", secs(baseline) * 1e3, 1.0, "-");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (name, took, rss) in [
        ("periodic dry-run sweep", periodic, periodic_rss),
        ("on-demand dry run (+ 45,000-row D-Bus reply)", on_demand, on_demand_rss),
        ("periodic real sweep (frees 45,000)", real, real_rss),
    ] {
        println!("{name:44} {:>9.1} {:>11.2} {:>14.1}", secs(took) * 1e3, ratio(took), mib(rss));
    }
    println!("on-demand call end to end (busctl, reply decoded): {:.0} ms", secs(on_demand_call) * 1e3);
    println!("containerd calls per sweep: {calls:?} (dry runs), {} (real)", real_calls);
    println!("goals: < 1 s per sweep, O(1) containerd calls, < 30 MiB");

    let json = serde_json::json!({
        "files": NETWORKS * FILES_PER_NETWORK, "networks": NETWORKS, "live_containers": LIVE_CONTAINERS,
        "leaked": leaked, "rounds": ROUNDS,
        "baseline_ms": secs(baseline) * 1e3,
        "periodic_dry_run": { "sweep_ms": secs(periodic) * 1e3, "ratio": ratio(periodic), "peak_rss_kib": periodic_rss },
        "on_demand_dry_run": { "sweep_ms": secs(on_demand) * 1e3, "ratio": ratio(on_demand), "peak_rss_kib": on_demand_rss,
                               "call_ms": secs(on_demand_call) * 1e3 },
        "periodic_real": { "sweep_ms": secs(real) * 1e3, "ratio": ratio(real), "peak_rss_kib": real_rss },
        "containerd_calls_dry": calls, "containerd_calls_real": real_calls,
    });
    write_results("ipam", &json)
}

fn expect(facts: &BTreeMap<String, u64>, name: &str, value: usize) -> Result<(), nodeplane_testkit::Error> {
    match facts.get(name) {
        Some(&n) if n == value as u64 => Ok(()),
        other => Err(format!("{name} = {other:?}, expected {value}: {facts:?}").into()),
    }
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

/// nodeplaned on the private bus, through busctl, and its memory through /proc.
struct Ctl<'a> {
    bus: &'a DbusDaemon,
    pid: u32,
}

impl Ctl<'_> {
    fn busctl(&self, args: &[&str]) -> Result<Vec<u8>, nodeplane_testkit::Error> {
        let out = Command::new("busctl")
            .args(["--address", self.bus.address(), "--json=short"])
            .args(args)
            .output()
            .map_err(|e| format!("busctl: {e}"))?;
        if !out.status.success() {
            return Err(format!("busctl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(out.stdout)
    }

    /// The IPAM component's numeric facts.
    fn facts(&self) -> Result<BTreeMap<String, u64>, nodeplane_testkit::Error> {
        let facts = self.busctl(&[
            "get-property",
            "org.nodeplane.Node1",
            "/org/nodeplane/Node1/ipam",
            "org.nodeplane.Component1",
            "Facts",
        ])?;
        let facts: serde_json::Value = serde_json::from_slice(&facts)?;
        Ok(facts["data"]
            .as_object()
            .ok_or("no facts")?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v["data"].as_u64()?)))
            .collect())
    }

    /// Waits for the sweep after number `seen` to finish; returns its facts.
    fn next_periodic_sweep(&self, seen: &mut u64) -> Result<BTreeMap<String, u64>, nodeplane_testkit::Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let facts = self.facts()?;
            // `sweeps` counts started sweeps; the facts are complete once `last_sweep_ms` is set for it.
            if facts.get("sweeps").is_some_and(|&n| n > *seen) && facts.contains_key("last_sweep_ms") {
                *seen = facts["sweeps"];
                return Ok(facts);
            }
            if Instant::now() > deadline {
                return Err(format!("no periodic sweep within 60 s: {facts:?}").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resets VmHWM (`echo 5 > /proc/PID/clear_refs`), so each phase has its own peak.
    fn reset_peak_rss(&self) -> Result<(), nodeplane_testkit::Error> {
        Ok(fs::write(format!("/proc/{}/clear_refs", self.pid), "5").map_err(|e| format!("clear_refs: {e}"))?)
    }

    fn peak_rss_kib(&self) -> Result<u64, nodeplane_testkit::Error> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .ok_or_else(|| "no VmHWM".into())
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
