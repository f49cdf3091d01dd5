//! `nodeplane-echo`: the one program of the node image's test container image
//! (`nodeplane.invalid/echo:v1`), built static so the image needs nothing
//! else. It answers with its host name (the pod's name), so a test sees which
//! pod it reached:
//! - TCP port 8080: an HTTP request (a first line starting with a method)
//!   gets `200 OK` with the name as the body; anything else gets the name and
//!   what was sent, line by line, until the client closes;
//! - UDP port 8081: each datagram gets the name back.
//!
//! `--port N` moves both (TCP N, UDP N+1). Threads, no async: a test server.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};

fn main() {
    let mut args = std::env::args().skip(1);
    let port = match (args.next().as_deref(), args.next()) {
        (None, _) => 8080,
        (Some("--port"), Some(port)) => port.parse().unwrap_or_else(|_| usage()),
        _ => usage(),
    };
    let name =
        std::fs::read_to_string("/etc/hostname").map(|n| n.trim().to_owned()).unwrap_or_else(|_| "unknown".into());
    let udp = UdpSocket::bind(("0.0.0.0", port + 1)).unwrap_or_else(|e| fail("UDP", port + 1, e));
    let tcp = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| fail("TCP", port, e));
    println!("nodeplane-echo {name}: TCP {port}, UDP {}", port + 1);
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 65536];
        while let Ok((_, from)) = udp.recv_from(&mut buffer) {
            let _ = udp.send_to(format!("{udp_name}\n").as_bytes(), from);
        }
    });
    for stream in tcp.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || serve(stream, &name));
    }
}

fn serve(mut stream: TcpStream, name: &str) {
    let Ok(reader) = stream.try_clone() else { return };
    let mut lines = BufReader::new(reader).lines();
    let Some(Ok(first)) = lines.next() else { return };
    let method = first.split(' ').next().unwrap_or("");
    if matches!(method, "GET" | "HEAD" | "POST" | "PUT") {
        // The request's headers end at an empty line; the answer closes.
        for line in lines.by_ref() {
            if line.map_or(true, |l| l.is_empty()) {
                break;
            }
        }
        let body = format!("{name}\n");
        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        return;
    }
    let _ = writeln!(stream, "{name} {first}");
    for line in lines.map_while(Result::ok) {
        if writeln!(stream, "{name} {line}").is_err() {
            return;
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: nodeplane-echo [--port N]");
    std::process::exit(2)
}

fn fail(what: &str, port: u16, err: std::io::Error) -> ! {
    eprintln!("nodeplane-echo: {what} port {port}: {err}");
    std::process::exit(1)
}
