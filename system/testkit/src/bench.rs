//! What the benchmarks (`cargo xtask bench …`, run as `cargo bench` targets)
//! share: pinning to one core, connection-rate samples and their medians, and
//! where results are written.

use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long one sample of a connection or request loop runs.
pub const SAMPLE: Duration = Duration::from_secs(2);

/// A rate with its latency percentiles.
#[derive(Clone, Copy)]
pub struct Sample {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Sample {
    /// The rate and percentiles of operations that took `latencies` within `elapsed`.
    pub fn from_latencies(mut latencies: Vec<Duration>, elapsed: Duration) -> Sample {
        latencies.sort();
        let at =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e6;
        Sample { rate: latencies.len() as f64 / elapsed.as_secs_f64(), p50_us: at(0.5), p99_us: at(0.99) }
    }
}

/// Each figure's median over `samples`, taken separately.
pub fn median(samples: &[Sample]) -> Sample {
    let pick = |f: fn(&Sample) -> f64| {
        let mut values: Vec<f64> = samples.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Sample { rate: pick(|s| s.rate), p50_us: pick(|s| s.p50_us), p99_us: pick(|s| s.p99_us) }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Connects, reads the reply and closes, again and again for [`SAMPLE`].
pub fn measure(addr: Ipv4Addr, port: u16) -> Result<Sample, crate::Error> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLE {
        let one = Instant::now();
        let mut stream = TcpStream::connect((addr, port)).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
        latencies.push(one.elapsed());
    }
    Ok(Sample::from_latencies(latencies, started.elapsed()))
}

/// One connection, a small request and its reply again and again for
/// [`SAMPLE`] (a server of [`Pod::serve_tcp_echo`](crate::Pod::serve_tcp_echo)):
/// requests per second and their latencies.
pub fn measure_requests(addr: Ipv4Addr, port: u16) -> Result<Sample, crate::Error> {
    use std::io::{BufRead, Write};
    let stream = TcpStream::connect((addr, port)).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader = std::io::BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("{addr}:{port}: {e}"))?; // the server's tag
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLE {
        let one = Instant::now();
        line.clear();
        writer.write_all(b"ping\n").map_err(|e| e.to_string())?;
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err(format!("{addr}:{port} closed the connection").into());
        }
        latencies.push(one.elapsed());
    }
    Ok(Sample::from_latencies(latencies, started.elapsed()))
}

/// One connection reading a server's endless stream (a server of
/// [`Pod::serve_tcp_bulk`](crate::Pod::serve_tcp_bulk)) for [`SAMPLE`]: MiB
/// per second, and how long each MiB took.
pub fn measure_bulk(addr: Ipv4Addr, port: u16) -> Result<Sample, crate::Error> {
    let mut stream = TcpStream::connect((addr, port)).map_err(|e| format!("connect {addr}:{port}: {e}"))?;
    let mut mib = vec![0u8; 1 << 20];
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < SAMPLE {
        let one = Instant::now();
        stream.read_exact(&mut mib).map_err(|e| format!("{addr}:{port}: {e}"))?;
        latencies.push(one.elapsed());
    }
    Ok(Sample::from_latencies(latencies, started.elapsed()))
}

/// What every datapath benchmark starts with: root, and this thread (and the
/// threads it starts: client and servers) on one core, as ENVIRONMENT.md's
/// baselines were measured: far steadier than letting the scheduler move them.
pub fn pin_to_one_core() -> Result<(), crate::Error> {
    if !crate::is_root() {
        return Err("the benchmark needs root (network namespaces, eBPF, netfilter)".into());
    }
    let mut one_core = rustix::thread::CpuSet::new();
    one_core.set(0);
    rustix::thread::sched_setaffinity(None, &one_core).map_err(|e| format!("pinning to CPU 0: {e}").into())
}

/// Writes a benchmark's figures to `target/bench/NAME.json` (the target
/// directory this benchmark binary was built in) and says where.
pub fn write_results(name: &str, json: &serde_json::Value) -> Result<(), crate::Error> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the benchmark binary: {e}"))?;
    // target/<profile>/deps/<bench>-<hash>
    let target = exe.ancestors().nth(3).ok_or_else(|| format!("{}: not in a target directory", exe.display()))?;
    let out: PathBuf = target.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(json).expect("JSON"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

/// `main` of a benchmark target: runs it and turns an error into exit status 1.
pub fn run_bench<E: std::fmt::Display>(name: &str, bench: impl FnOnce() -> Result<(), E>) -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench {name}: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
