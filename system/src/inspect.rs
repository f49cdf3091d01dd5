//! `nodeplanectl services`, `endpoints` and `conntrack`: the datapath's pinned
//! maps, read directly (like `cilium bpf lb list`), so they work while nodeplaned
//! is down.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nodeplane_datapath::inspect::{self, protocol_name};
use nodeplane_datapath::maps::{CT_REWRITE_DST, CT_REWRITE_SRC};
use serde_json::json;

use crate::config::{self, ConfigError, NodeConfig};

/// Which pinned maps to read: `--bpffs-root`, else node.toml's `datapath.bpffs_root`.
pub struct Source {
    pub config: Option<PathBuf>,
    pub bpffs_root: Option<PathBuf>,
}

impl Source {
    fn load(&self) -> Result<(PathBuf, NodeConfig), String> {
        let path = self.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
        let config = match NodeConfig::load(&path) {
            Ok(config) => config,
            Err(ConfigError::Read { source, .. })
                if self.config.is_none() && source.kind() == std::io::ErrorKind::NotFound =>
            {
                NodeConfig::default()
            }
            Err(err) => return Err(err.to_string()),
        };
        let root = self.bpffs_root.clone().unwrap_or_else(|| config.datapath.bpffs_root.clone());
        Ok((root, config))
    }
}

fn failed(root: &Path, err: impl std::fmt::Display) -> ExitCode {
    eprintln!("nodeplanectl: cannot read the datapath's maps in {}: {err}", root.display());
    ExitCode::FAILURE
}

/// The programmed Service ports, or the exit code of the failure (already reported).
fn read_services(source: &Source) -> Result<Vec<inspect::ServiceView>, ExitCode> {
    let (root, _) = source.load().map_err(|err| failed(Path::new("?"), err))?;
    inspect::services(&root).map_err(|err| failed(&root, err))
}

pub fn services(source: &Source, json_out: bool) -> ExitCode {
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

fn kind(service: &nodeplane_datapath::inspect::ServiceView) -> &'static str {
    if service.node_port { "NodePort" } else { "ClusterIP" }
}

pub fn endpoints(source: &Source, json_out: bool) -> ExitCode {
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

pub fn conntrack(source: &Source, json_out: bool) -> ExitCode {
    let (root, config) = match source.load() {
        Ok(loaded) => loaded,
        Err(err) => return failed(Path::new("?"), err),
    };
    let flows = match inspect::conntrack(&root, config.datapath.timeouts()) {
        Ok(flows) => flows,
        Err(err) => return failed(&root, err),
    };
    let rows: Vec<_> = flows
        .iter()
        .map(|f| {
            let (k, v) = (&f.key, &f.value);
            let mut rewrite = Vec::new();
            if v.rewrite & CT_REWRITE_SRC != 0 {
                rewrite.push(format!("src→{}:{}", Ipv4Addr::from(v.src_addr), u16::from_be_bytes(v.src_port)));
            }
            if v.rewrite & CT_REWRITE_DST != 0 {
                rewrite.push(format!("dst→{}:{}", Ipv4Addr::from(v.dst_addr), u16::from_be_bytes(v.dst_port)));
            }
            json!({
                "protocol": protocol_name(k.proto),
                "source": format!("{}:{}", Ipv4Addr::from(k.saddr), u16::from_be_bytes(k.sport)),
                "destination": format!("{}:{}", Ipv4Addr::from(k.daddr), u16::from_be_bytes(k.dport)),
                "direction": if v.reply != 0 { "reply" } else { "original" },
                "state": if k.proto == 6 { if v.closed() { "closed" } else { "open" } } else { "-" },
                // An untranslated connection, recorded for NetworkPolicy.
                "rewrite": if rewrite.is_empty() { "none".to_owned() } else { rewrite.join(" ") },
                "remaining_s": f.remaining.as_secs(),
            })
        })
        .collect();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return ExitCode::SUCCESS;
    }
    println!(
        "{:5} {:21} {:21} {:8} {:6} {:>9}  REWRITE",
        "PROTO", "SOURCE", "DESTINATION", "DIR", "STATE", "REMAINING"
    );
    for r in &rows {
        println!(
            "{:5} {:21} {:21} {:8} {:6} {:>8}s  {}",
            r["protocol"].as_str().unwrap_or_default(),
            r["source"].as_str().unwrap_or_default(),
            r["destination"].as_str().unwrap_or_default(),
            r["direction"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["remaining_s"],
            r["rewrite"].as_str().unwrap_or_default()
        );
    }
    println!("{} entries", rows.len());
    ExitCode::SUCCESS
}
