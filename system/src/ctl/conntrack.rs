//! `nodeplanectl conntrack`: the datapath's connection tracking entries with
//! their state and remaining lifetime, from the pinned maps.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::ExitCode;

use nodeplane_datapath::inspect;
use nodeplane_datapath_abi::{CT_REWRITE_DST, CT_REWRITE_SRC};
use nodeplane_model::{Protocol, ip_protocol_name};
use serde_json::json;

use super::maps::{Source, failed};

pub(super) fn conntrack(source: &Source, json_out: bool) -> ExitCode {
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
                "protocol": ip_protocol_name(k.proto),
                "source": format!("{}:{}", Ipv4Addr::from(k.saddr), u16::from_be_bytes(k.sport)),
                "destination": format!("{}:{}", Ipv4Addr::from(k.daddr), u16::from_be_bytes(k.dport)),
                "direction": if v.reply != 0 { "reply" } else { "original" },
                "state": if k.proto == Protocol::Tcp.number() { if v.closed() { "closed" } else { "open" } } else { "-" },
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
