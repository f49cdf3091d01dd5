//! The `[datapath]` section of `node.toml`.

use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nodeplane_datapath::{AttachMode, CtTimeouts, MapSettings, capacity};
use serde::{Deserialize, Serialize};

use crate::masquerade::{self, Masquerade};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatapathConfig {
    /// Load the eBPF datapath at start (READY waits for it).
    pub enabled: bool,
    /// Where maps and attachments are pinned; must be on a bpffs.
    pub bpffs_root: PathBuf,
    /// Kubernetes manifests (Services, EndpointSlices) to apply.
    pub manifests_dir: PathBuf,
    /// Host-side pod interfaces start with this; the datapath attaches to each.
    pub pod_interface_prefix: String,
    /// `auto` (TCX where the kernel has it) or `netlink` (clsact filters).
    pub attach: AttachMode,
    /// Where the pods the CNI plugin registered are kept across restarts.
    pub state_dir: PathBuf,
    /// Source address of a pod's flows to itself through a Service.
    pub hairpin_address: Ipv4Addr,
    /// This node's pod subnet (`10.244.1.0/24`): the CNI plugin allocates from it
    /// when its network configuration names no range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// This node's IP: NodePorts are on it, at the interface that holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<Ipv4Addr>,
    /// Balance the node's own processes' sockets to Service VIPs (cgroup programs).
    pub socket_lb: bool,
    /// The cgroup v2 whose processes (and their descendants') get socket LB.
    pub socket_lb_cgroup: PathBuf,
    /// Masquerade pod traffic leaving `non_masquerade_cidrs` (needs `pod_cidr`).
    pub masquerade: bool,
    /// Destinations pods reach with their own address (ip-masq-agent's defaults).
    pub non_masquerade_cidrs: Vec<String>,
    /// Masquerade traffic to link-local 169.254.0.0/16 too (ip-masq-agent's masqLinkLocal).
    pub masquerade_link_local: bool,
    /// How often manifests and interfaces are checked for changes.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// How often expired conntrack entries are deleted.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// A TCP flow no reply has come back for yet.
    #[serde(with = "humantime_serde")]
    pub tcp_syn_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_established_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_closed_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub udp_timeout: Duration,
    /// Flows one pod may hold in conntrack (0: no limit): a pod opening more
    /// fills its own share, never the map other pods' flows live in. Unset:
    /// 16,384, or half the conntrack map's flows where that is fewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack_flows_per_pod: Option<u32>,
    /// Map capacities, overriding those the node's memory gives.
    pub maps: MapSettings,
    /// How pod traffic reaches other nodes (with `[kubernetes]`): `native`
    /// (routes via their InternalIPs, on a shared L2) or `vxlan`.
    pub routing: Routing,
}

/// How pod traffic reaches the other nodes' pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Each other node's pod CIDR via its InternalIP: the nodes share an L2.
    #[default]
    Native,
    /// Encapsulated in VXLAN (UDP 8472) to the other node's InternalIP: any
    /// IP network between the nodes.
    Vxlan,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        let timeouts = CtTimeouts::default();
        DatapathConfig {
            enabled: true,
            bpffs_root: PathBuf::from("/sys/fs/bpf/nodeplane"),
            manifests_dir: PathBuf::from("/etc/nodeplane/manifests"),
            pod_interface_prefix: "np".into(),
            attach: AttachMode::Auto,
            state_dir: PathBuf::from("/run/nodeplane"),
            hairpin_address: Ipv4Addr::new(169, 254, 42, 1),
            pod_cidr: None,
            node_ip: None,
            socket_lb: true,
            socket_lb_cgroup: PathBuf::from("/sys/fs/cgroup"),
            masquerade: true,
            non_masquerade_cidrs: masquerade::DEFAULT_NON_MASQUERADE.iter().map(|c| c.to_string()).collect(),
            masquerade_link_local: false,
            sync_interval: Duration::from_secs(1),
            gc_interval: Duration::from_secs(10),
            tcp_syn_timeout: timeouts.tcp_syn,
            tcp_established_timeout: timeouts.tcp_established,
            tcp_closed_timeout: timeouts.tcp_closed,
            udp_timeout: timeouts.udp,
            conntrack_flows_per_pod: None,
            maps: MapSettings::default(),
            routing: Routing::Native,
        }
    }
}

/// A setting that is well-formed on its own but wrong in context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The key within `[datapath]` (or `[kubernetes]`): `pod_cidr`, `maps.conntrack`.
    pub field: Cow<'static, str>,
    pub message: String,
}

impl DatapathConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid =
            |field: &'static str, message: &str| Err(Invalid { field: field.into(), message: message.to_owned() });
        if !self.hairpin_address.is_link_local() {
            return invalid("hairpin_address", "must be a link-local address (169.254.0.0/16): pods must not own it");
        }
        if let Err((key, message)) = self.maps.validate() {
            return Err(Invalid { field: format!("maps.{key}").into(), message });
        }
        // What the node's memory gives is known at start (flows_per_pod then
        // takes at most half the map); a map set here is known now.
        let half = self.maps.conntrack.map_or_else(most_flows_per_pod, max_flows_per_pod);
        if self.conntrack_flows_per_pod.is_some_and(|flows| flows > half) {
            return Err(Invalid {
                field: "conntrack_flows_per_pod".into(),
                message: format!("must be at most {half} (half of the conntrack map's flows), or 0 for no limit"),
            });
        }
        for (field, value) in [("sync_interval", self.sync_interval), ("gc_interval", self.gc_interval)] {
            if value < Duration::from_millis(100) {
                return invalid(field, "must be at least 100ms");
            }
        }
        if let Some(cidr) = self.pod_cidr.as_ref().filter(|c| !is_subnet(c, 8..=30)) {
            return Err(Invalid {
                field: "pod_cidr".into(),
                message: format!("{cidr:?} is not an IPv4 subnet (ADDRESS/8..30, e.g. 10.244.1.0/24)"),
            });
        }
        if let Some(bad) = self.non_masquerade_cidrs.iter().find(|c| !is_subnet(c, 0..=32)) {
            return Err(Invalid {
                field: "non_masquerade_cidrs".into(),
                message: format!("{bad:?} is not an IPv4 subnet (ADDRESS/0..32, e.g. 10.0.0.0/8)"),
            });
        }
        let prefix = &self.pod_interface_prefix;
        if prefix.is_empty()
            || prefix.len() > 10
            || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return invalid(
                "pod_interface_prefix",
                "must be 1 to 10 letters, digits, '-', '_' or '.' (interface names have 15 characters)",
            );
        }
        for (field, path) in [
            ("bpffs_root", &self.bpffs_root),
            ("manifests_dir", &self.manifests_dir),
            ("socket_lb_cgroup", &self.socket_lb_cgroup),
        ] {
            if !path.is_absolute() {
                return invalid(field, "must be an absolute path");
            }
        }
        Ok(())
    }

    /// The masquerade rules this config asks for (none without a pod CIDR), with
    /// source ports clear of `nodeports`; the other nodes' pod CIDRs
    /// (`cluster`) are never masqueraded to.
    pub fn masquerade_rules(&self, nodeports: (u16, u16), cluster: &[String]) -> Option<Masquerade> {
        let pod_cidr = self.pod_cidr.clone().filter(|_| self.masquerade)?;
        let mut non_masquerade = self.non_masquerade_cidrs.clone();
        if !self.masquerade_link_local {
            non_masquerade.push("169.254.0.0/16".into());
        }
        // Pods reach each other with their own addresses, whatever the list says.
        non_masquerade.push(pod_cidr.clone());
        non_masquerade.extend(cluster.iter().cloned());
        non_masquerade.sort();
        non_masquerade.dedup();
        let ports = masquerade::ports_clear_of(nodeports);
        Some(Masquerade { pod_cidr, non_masquerade, ports })
    }

    /// The flows one pod may hold in a conntrack map of `capacity` entries,
    /// and whether the setting had to be lowered to half the map's flows.
    pub fn flows_per_pod(&self, capacity: u32) -> (u32, bool) {
        match self.conntrack_flows_per_pod {
            None => (DEFAULT_FLOWS_PER_POD.min(max_flows_per_pod(capacity)), false),
            Some(flows) if flows > max_flows_per_pod(capacity) => (max_flows_per_pod(capacity), true),
            Some(flows) => (flows, false),
        }
    }

    pub fn timeouts(&self) -> CtTimeouts {
        CtTimeouts {
            tcp_syn: self.tcp_syn_timeout,
            tcp_established: self.tcp_established_timeout,
            tcp_closed: self.tcp_closed_timeout,
            udp: self.udp_timeout,
        }
    }
}

/// Flows one pod may hold unless `conntrack_flows_per_pod` says otherwise.
const DEFAULT_FLOWS_PER_POD: u32 = 16_384;

/// Two entries a flow: one pod may take at most half the map.
fn max_flows_per_pod(capacity: u32) -> u32 {
    capacity / 4
}

/// Half the flows of the largest conntrack the node's memory can give.
fn most_flows_per_pod() -> u32 {
    let conntrack = capacity::SIZED.iter().find(|s| s.map == nodeplane_datapath_abi::CONNTRACK);
    max_flows_per_pod(conntrack.expect("conntrack is sized").ceiling)
}

/// `ADDRESS/LEN` with an IPv4 address and a prefix length in `lengths`.
fn is_subnet(cidr: &str, lengths: std::ops::RangeInclusive<u8>) -> bool {
    cidr.split_once('/').is_some_and(|(addr, len)| {
        addr.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| lengths.contains(&l))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_may_hold_at_most_half_the_conntracks_flows() {
        let unset = DatapathConfig::default();
        assert_eq!(unset.flows_per_pod(32_768), (8_192, false));
        assert_eq!(unset.flows_per_pod(262_144), (16_384, false));
        let set = |flows| DatapathConfig { conntrack_flows_per_pod: Some(flows), ..DatapathConfig::default() };
        assert_eq!(set(20_000).flows_per_pod(32_768), (8_192, true), "lowered to half the map's flows");
        assert_eq!(set(20_000).flows_per_pod(262_144), (20_000, false));
        assert_eq!(set(0).flows_per_pod(32_768), (0, false), "no limit");
    }
}
