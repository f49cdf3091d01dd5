//! Runs inside the booted test VM (from the 9p share), doing for the boot tests'
//! guest script what a shell cannot: serve and request TCP, loop requests through
//! a Service while nodeplaned is killed, give planted IPAM reservations live
//! owners in containerd, and write Service manifests.
//!
//! ```text
//! np-guest serve PORT TEXT                 answer each connection with TEXT
//! np-guest request IP PORT                 print the reply
//! np-guest get IP PORT                     HTTP GET /: print the body of a 200
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
        ["get", addr, p] => {
            println!("{}", http_get(ip(addr)?, port(p)?)?);
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

/// `GET /` over HTTP/1.0 (2 s timeouts); the body of a `200`, else the answer as an error.
fn http_get(addr: Ipv4Addr, port: u16) -> Result<String, String> {
    use std::io::Read;
    let timeout = std::time::Duration::from_secs(2);
    let fail = |e: std::io::Error| format!("{addr}:{port}: {e}");
    let mut stream = std::net::TcpStream::connect_timeout(&(addr, port).into(), timeout).map_err(fail)?;
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(fail)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(fail)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200 ") => Ok(body.trim_end().to_owned()),
        _ => Err(format!("{addr}:{port} answered {answer:?}")),
    }
}
