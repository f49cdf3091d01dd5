//! `nodeplanectl services`: the programmed Service ports and their backends,
//! from the pinned maps.

use std::process::ExitCode;

use nodeplane_datapath::inspect;
use serde_json::json;

use super::maps::{Source, read_services};

pub(super) fn services(source: &Source, json_out: bool) -> ExitCode {
    let services = match read_services(source) {
        Ok(services) => services,
        Err(code) => return code,
    };
    if json_out {
        let rows: Vec<_> = services
            .iter()
            .map(|s| {
                json!({"vip": s.vip.to_string(), "port": s.port, "protocol": s.protocol, "service_id": s.service_id,
                       "type": kind(s),
                       "affinity_timeout_s": s.affinity_timeout_s,
                       "backends": s.backends.iter().map(|(a, p)| format!("{a}:{p}")).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!("{:22} {:5} {:9} {:>8}  BACKENDS", "SERVICE", "PROTO", "TYPE", "AFFINITY");
    for s in &services {
        let affinity = if s.affinity_timeout_s == 0 { "-".to_owned() } else { format!("{}s", s.affinity_timeout_s) };
        let backends: Vec<String> = s.backends.iter().map(|(a, p)| format!("{a}:{p}")).collect();
        println!(
            "{:22} {:5} {:9} {affinity:>8}  {}",
            format!("{}:{}", s.vip, s.port),
            s.protocol,
            kind(s),
            if backends.is_empty() { "(none)".into() } else { backends.join(" ") }
        );
    }
    if let Ok((root, _)) = source.load() {
        match inspect::socket_lb(&root) {
            Ok(lb) if lb.hooks.is_empty() => println!("\nsocket load balancing (the node's processes): off"),
            Ok(lb) => println!(
                "\nsocket load balancing (the node's processes): {} attached; {} UDP reply mapping(s)",
                lb.hooks.join(", "),
                lb.udp_reverse_entries
            ),
            Err(err) => println!("\nsocket load balancing (the node's processes): unknown ({err})"),
        }
    }
    ExitCode::SUCCESS
}

fn kind(service: &inspect::ServiceView) -> &'static str {
    if service.node_port { "NodePort" } else { "ClusterIP" }
}
