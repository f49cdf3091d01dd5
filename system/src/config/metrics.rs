//! `[metrics]`: where the node's Prometheus endpoint listens. systemd holds
//! the listening socket (`nodeplaned-metrics.socket`, adjusted at boot from
//! this section by `nodeplaned --prepare`) and passes it to nodeplaned, whose
//! own unit opens no IP socket.

use std::ops::RangeInclusive;

use nodeplane_sysctl::PortRange;
use serde::{Deserialize, Serialize};

use super::Invalid;

/// The port unless `port` says otherwise: clear of kube-proxy's (10249,
/// 10256), the kubelet's (10248, 10250, 10255) and Cilium's (9962–9965).
pub const DEFAULT_PORT: u16 = 9970;

/// Ports a node's other agents listen on, which the endpoint must not take.
const TAKEN: &[(RangeInclusive<u16>, &str)] = &[
    (9962..=9965, "Cilium's agent, operator, Envoy and Hubble metrics"),
    (10248..=10248, "the kubelet's healthz"),
    (10249..=10249, "kube-proxy's metrics"),
    (10250..=10250, "the kubelet's API"),
    (10255..=10255, "the kubelet's read-only API"),
    (10256..=10256, "kube-proxy's health check"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Listen,
    pub port: u16,
}

/// Who may scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listen {
    /// No endpoint: the socket unit is masked.
    Off,
    /// 127.0.0.1 only: a scraper on the node.
    Loopback,
    /// Every address of the node (IPv6 and IPv4).
    All,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: Listen::Loopback, port: DEFAULT_PORT }
    }
}

impl MetricsConfig {
    /// The socket unit's `ListenStream=`, or `None` when off.
    pub fn listen_stream(&self) -> Option<String> {
        match self.listen {
            Listen::Off => None,
            Listen::Loopback => Some(format!("127.0.0.1:{}", self.port)),
            // A port alone: systemd listens on [::] (IPv4 too), or on 0.0.0.0
            // where the kernel has no IPv6.
            Listen::All => Some(self.port.to_string()),
        }
    }

    /// The port must be a real one, clear of the NodePorts and of the ports
    /// other node agents use.
    pub fn validate(&self, nodeports: PortRange) -> Result<(), Invalid> {
        let invalid = |message: String| Err(Invalid { field: "port".into(), message });
        if self.port == 0 {
            return invalid("port 0 is not a port to listen on".into());
        }
        if nodeports.contains(self.port) {
            return invalid(format!("{} is in the NodePort range {nodeports}", self.port));
        }
        if let Some((_, whose)) = TAKEN.iter().find(|(ports, _)| ports.contains(&self.port)) {
            return invalid(format!("{} is {whose} port", self.port));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_gives_its_listen_stream() {
        let config = |listen| MetricsConfig { listen, port: 9999 };
        assert_eq!(config(Listen::Off).listen_stream(), None);
        assert_eq!(config(Listen::Loopback).listen_stream().as_deref(), Some("127.0.0.1:9999"));
        assert_eq!(config(Listen::All).listen_stream().as_deref(), Some("9999"));
        assert_eq!(MetricsConfig::default().listen_stream().as_deref(), Some("127.0.0.1:9970"));
    }
}
