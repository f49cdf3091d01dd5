//! Egress masquerade, the ip-masq-agent's job: pod traffic to destinations
//! outside the non-masquerade CIDRs leaves with the node's address. Its source
//! ports are drawn only from a range clear of the NodePorts, so however random the
//! choice (`fully-random`, as ip-masq-agent ≥ 2.10's `--random-fully`) a
//! masqueraded flow never takes a NodePort's number. Netfilter's NAT already does
//! the port allocation, the conntrack and the reverse translation; nodeplane owns
//! one nftables table, `ip nodeplane`, replaced whole and atomically (`nft -f`).

use std::io::Write;
use std::process::{Command, Stdio};

/// ip-masq-agent's default `nonMasqueradeCIDRs`: private, shared and reserved
/// ranges, which stay un-masqueraded (cluster and VPC traffic).
pub const DEFAULT_NON_MASQUERADE: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
];

/// The table nodeplane owns.
const TABLE: &str = "ip nodeplane";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masquerade {
    /// The pods' subnet: the traffic masqueraded comes from it.
    pub pod_cidr: String,
    /// Destinations reached with the pod's own address.
    pub non_masquerade: Vec<String>,
    /// Source ports masqueraded TCP and UDP flows may use.
    pub ports: (u16, u16),
}

impl Masquerade {
    /// The nftables script that replaces the table.
    pub fn ruleset(&self) -> String {
        let Masquerade { pod_cidr, non_masquerade, ports: (low, high) } = self;
        let elements = non_masquerade.join(", ");
        let set = if non_masquerade.is_empty() {
            String::new()
        } else {
            format!(
                "\tset non_masquerade {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\t\telements = {{ {elements} }}\n\t}}\n"
            )
        };
        let daddr = if non_masquerade.is_empty() { String::new() } else { " ip daddr != @non_masquerade".into() };
        format!(
            "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n{set}\tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr {pod_cidr}{daddr} meta l4proto {{ tcp, udp }} masquerade to :{low}-{high} fully-random\n\
             \t\tip saddr {pod_cidr}{daddr} masquerade fully-random\n\t}}\n}}\n"
        )
    }

    /// Installs the rules (replacing any earlier ones).
    pub fn apply(&self) -> Result<(), MasqueradeError> {
        nft(&self.ruleset())
    }
}

/// Why the masquerade rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum MasqueradeError {
    #[error("cannot run nft (package nftables): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the masquerade rules: {0}")]
    Refused(String),
}

/// Removes nodeplane's table, if there is one (a node without nft has none).
pub fn remove() -> Result<(), MasqueradeError> {
    match Command::new("nft").arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => nft(&format!("table {TABLE}\ndelete table {TABLE}\n")),
    }
}

/// The masquerade source ports for a NodePort range: the larger of the ranges
/// above and below it, within 1024-65535.
pub fn ports_clear_of(nodeports: (u16, u16)) -> (u16, u16) {
    let below = (1024, nodeports.0.saturating_sub(1));
    let above = (nodeports.1.saturating_add(1).max(1024), u16::MAX);
    let size = |(low, high): (u16, u16)| if high >= low { u32::from(high - low) + 1 } else { 0 };
    if size(above) >= size(below) { above } else { below }
}

fn nft(script: &str) -> Result<(), MasqueradeError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(MasqueradeError::Spawn)?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(MasqueradeError::Spawn)?;
    let out = child.wait_with_output().map_err(MasqueradeError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MasqueradeError::Refused(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_ports_avoid_the_node_port_range() {
        assert_eq!(ports_clear_of((30000, 32767)), (32768, 65535));
        assert_eq!(ports_clear_of((50000, 60000)), (1024, 49999));
        assert_eq!(ports_clear_of((1024, 2000)), (2001, 65535));
    }

    #[test]
    fn the_ruleset_masquerades_pod_traffic_leaving_the_non_masquerade_ranges() {
        let rules = Masquerade {
            pod_cidr: "10.244.1.0/24".into(),
            non_masquerade: vec!["10.0.0.0/8".into()],
            ports: (32768, 65535),
        }
        .ruleset();
        assert!(rules.starts_with("table ip nodeplane\ndelete table ip nodeplane\n"), "{rules}");
        assert!(rules.contains("elements = { 10.0.0.0/8 }"), "{rules}");
        assert!(
            rules.contains(
                "ip saddr 10.244.1.0/24 ip daddr != @non_masquerade meta l4proto { tcp, udp } masquerade to :32768-65535 fully-random"
            ),
            "{rules}"
        );
    }
}
