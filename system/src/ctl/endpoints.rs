//! `nodeplanectl endpoints`: every backend and the Service ports that use it,
//! from the pinned maps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use super::maps::{Source, read_services};

pub(super) fn endpoints(source: &Source, json_out: bool) -> ExitCode {
    let services = match read_services(source) {
        Ok(services) => services,
        Err(code) => return code,
    };
    let mut by_backend: BTreeMap<(Ipv4Addr, u16), Vec<String>> = BTreeMap::new();
    for s in &services {
        for backend in &s.backends {
            by_backend.entry(*backend).or_default().push(format!("{}:{}/{}", s.vip, s.port, s.protocol));
        }
    }
    if json_out {
        let rows: BTreeMap<String, &Vec<String>> =
            by_backend.iter().map(|((a, p), s)| (format!("{a}:{p}"), s)).collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!("{:22} SERVICES", "ENDPOINT");
    for ((addr, port), services) in &by_backend {
        println!("{:22} {}", format!("{addr}:{port}"), services.join(" "));
    }
    ExitCode::SUCCESS
}
