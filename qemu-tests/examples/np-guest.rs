//! Runs inside the booted test VM (from the 9p share), doing for the boot tests'
//! guest script what a shell cannot: serve and request TCP, loop requests through
//! a Service while nodeplaned is killed, give planted IPAM reservations live
//! owners in containerd, and write Service manifests.
//!
//! ```text
//! np-guest serve PORT TEXT                 answer each connection with TEXT
//! np-guest request IP PORT                 print the reply
//! np-guest loop IP PORT STOPFILE           requests until STOPFILE exists; prints counts
//! np-guest containers NAMESPACE ID...      create container records in containerd
//! np-guest manifest NAME VIP [--node-port N] BACKEND...
//!                                          print a Service + EndpointSlice (port 80 → 8080)
//! ```

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("np-guest: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|e| format!("{s}: {e}"));
    let port = |s: &str| s.parse::<u16>().map_err(|e| format!("{s}: {e}"));
    match args {
        ["serve", p, text] => {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port(p)?)).map_err(|e| e.to_string())?;
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let _ = stream.write_all(text.as_bytes());
            }
            Ok(())
        }
        ["request", addr, p] => {
            let reply = nodeplane_testkit::tcp_request(ip(addr)?, port(p)?).map_err(|e| e.to_string())?;
            println!("{reply}");
            Ok(())
        }
        ["loop", addr, p, stop] => {
            let (addr, p) = (ip(addr)?, port(p)?);
            let (mut total, mut errors) = (0u64, Vec::new());
            while !Path::new(stop).exists() {
                total += 1;
                if let Err(e) = nodeplane_testkit::tcp_request(addr, p) {
                    errors.push(e.to_string());
                }
            }
            println!("requests={total} failed={}", errors.len());
            for error in errors.iter().take(5) {
                println!("error: {error}");
            }
            Ok(())
        }
        ["containers", ns, ids @ ..] => {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(nodeplane_testkit::create_containers(
                Path::new("/run/containerd/containerd.sock"),
                ns,
                &ids,
            ));
            Ok(())
        }
        ["manifest", name, vip, "--node-port", node_port, backends @ ..] => {
            let backends = backends.iter().map(|b| ip(b)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", nodeplane_testkit::node_port_manifest(name, ip(vip)?, port(node_port)?, &backends));
            Ok(())
        }
        ["manifest", name, vip, backends @ ..] => {
            let backends = backends.iter().map(|b| ip(b)).collect::<Result<Vec<_>, _>>()?;
            print!("{}", nodeplane_testkit::service_manifest(name, ip(vip)?, &backends));
            Ok(())
        }
        _ => Err("usage: see the module documentation (serve | request | loop | containers | manifest)".into()),
    }
}
