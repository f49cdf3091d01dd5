//! `nodeplanectl sweep [--dry-run]`: frees leaked CNI host-local reservations
//! now and lists them (root only).

use std::process::ExitCode;

use nodeplane_bus::{self as bus, IpamProxy};
use zbus::Connection;

use super::method_failed;

pub(super) async fn sweep(connection: &Connection, dry_run: bool) -> ExitCode {
    let result = match IpamProxy::new(connection).await {
        Ok(ipam) => ipam.sweep(dry_run).await,
        Err(err) => Err(err),
    };
    let rows = match result {
        Ok(rows) => rows,
        Err(zbus::Error::MethodError(name, message, _)) if name.as_str() == bus::ERROR_SWEEP_FAILED => {
            eprintln!("nodeplanectl: the sweep could not run: {}", message.unwrap_or_default());
            return ExitCode::FAILURE;
        }
        Err(err) => return method_failed("sweep", err),
    };
    if !rows.is_empty() {
        let width = rows.iter().map(|(n, ..)| n.len()).max().unwrap_or(0).max("NETWORK".len());
        let ip_width = rows.iter().map(|(_, ip, _)| ip.len()).max().unwrap_or(0).max("IP".len());
        println!("{:width$}  {:ip_width$}  OWNER", "NETWORK", "IP");
        for (network, ip, owner) in &rows {
            println!("{network:width$}  {ip:ip_width$}  {}", if owner.is_empty() { "(empty file)" } else { owner });
        }
    }
    let ipam = match super::status::fetch(connection).await {
        Ok(status) => status.components.into_iter().find(|c| c.name == "ipam"),
        Err(_) => None,
    };
    let facts = ipam.as_ref().map(|c| c.facts.clone()).unwrap_or_default();
    let count = |name: &str| facts.get(name).map_or("?".to_owned(), ToString::to_string);
    // node.toml's `dry_run = true` turns every sweep into a dry run: say what happened.
    let dry = dry_run || facts.get("last_sweep_dry_run").is_some_and(|f| f.to_string() == "true");
    println!(
        "{} {} reservation(s); scanned {}, live {}, young orphans kept {}, changed under the lock {}, skipped {}, errors {}",
        if dry { "would free" } else { "freed" },
        rows.len(),
        count("scanned"),
        count("live"),
        count("young_orphans_kept"),
        count("changed_since_scan"),
        count("skipped"),
        count("errors")
    );
    if let Some(networks) = facts.get("unswept_networks") {
        println!("not swept (no reservation there belongs to a pod; list them in ipam.networks to sweep): {networks}");
    }
    if let Some(networks) = facts.get("missing_networks") {
        println!("listed but not present in networks_dir: {networks}");
    }
    if facts.get("errors").is_some_and(|e| e.to_string() != "0") {
        eprintln!("nodeplanectl: the sweep hit errors: {}", ipam.map(|c| c.detail).unwrap_or_default());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
