//! `nodeplanectl policy NAMESPACE/NAME`: what a pod may receive and send under
//! the NetworkPolicies in force, as the datapath holds it.

use std::process::ExitCode;

use nodeplane_bus::{self as bus};
use serde::Serialize;
use zbus::Connection;

use super::method_failed;

#[derive(Serialize)]
struct PolicyDirection {
    /// False: no policy selects the pod for this direction; everything is allowed.
    isolated: bool,
    /// Peers (the longest prefix holding an address decides) and the ports allowed with them.
    allowed: Vec<PolicyRow>,
}

#[derive(Serialize)]
struct PolicyRow {
    peer: String,
    ports: String,
}

pub(super) async fn pod_policy(connection: &Connection, pod: &str, json: bool) -> ExitCode {
    let result = match bus::DatapathProxy::new(connection).await {
        Ok(datapath) => datapath.pod_policy(pod).await,
        Err(err) => Err(err),
    };
    let (ip, ingress, egress) = match result {
        Ok(answer) => answer,
        Err(zbus::Error::MethodError(_, message, _)) => {
            eprintln!("nodeplanectl: {}", message.unwrap_or_default());
            return ExitCode::FAILURE;
        }
        Err(err) => return method_failed("policy", err),
    };
    let direction = |(isolated, rows): bus::PolicyRows| PolicyDirection {
        isolated,
        allowed: rows.into_iter().map(|(peer, ports)| PolicyRow { peer, ports }).collect(),
    };
    let (ingress, egress) = (direction(ingress), direction(egress));
    if json {
        let value = serde_json::json!({"pod": pod, "ip": ip, "ingress": ingress, "egress": egress});
        println!("{value:#}");
        return ExitCode::SUCCESS;
    }
    println!("{pod} ({ip})");
    for (title, peer_word, rules) in [("receives", "from", &ingress), ("sends", "to", &egress)] {
        if !rules.isolated {
            println!(
                "  {title}: everything (no NetworkPolicy selects it for {})",
                if title == "receives" { "ingress" } else { "egress" }
            );
            continue;
        }
        let allowed: Vec<&PolicyRow> = rules.allowed.iter().filter(|r| r.ports != "none").collect();
        if allowed.is_empty() {
            println!("  {title}: nothing (selected, and no rule allows any peer)");
            continue;
        }
        println!("  {title} only:");
        for row in &rules.allowed {
            if row.ports == "none" {
                println!("    not {peer_word} {} (an except range)", row.peer);
            } else {
                println!("    {peer_word} {}: {}", row.peer, row.ports);
            }
        }
    }
    ExitCode::SUCCESS
}
