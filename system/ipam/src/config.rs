//! The `[ipam]` section of `node.toml`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// IPAM sweeper settings. Every field has a default, so an empty section is valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpamConfig {
    /// Run periodic sweeps.
    pub enabled: bool,
    /// Time between sweeps.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How old an orphaned reservation must be before it is freed: containerd's CRI
    /// runs CNI ADD before it records the sandbox, so a young orphan is normal.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// host-local's data directory: one sub-directory per CNI network.
    pub networks_dir: PathBuf,
    /// The networks to sweep; unset: every directory in `networks_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    pub containerd_socket: PathBuf,
    /// The containerd namespace of the pod sandboxes.
    pub namespace: String,
    /// Report what would be freed; free nothing.
    pub dry_run: bool,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            enabled: true,
            interval: Duration::from_secs(120),
            grace_period: Duration::from_secs(600),
            networks_dir: PathBuf::from("/var/lib/cni/networks"),
            networks: None,
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".into(),
            dry_run: false,
        }
    }
}

/// The shortest grace period a node may run with: a pod's reservation exists
/// before containerd records its sandbox, for as long as the sandbox takes to start.
pub const MIN_GRACE_PERIOD: Duration = Duration::from_secs(60);

/// A setting that is well-formed on its own but wrong in context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field's name within `[ipam]`.
    pub field: &'static str,
    pub message: String,
}

impl IpamConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |field, message: String| Err(Invalid { field, message });
        if self.interval.is_zero() {
            return invalid("interval", "must be greater than zero".into());
        }
        for (field, path) in [("networks_dir", &self.networks_dir), ("containerd_socket", &self.containerd_socket)] {
            if !path.is_absolute() {
                return invalid(field, format!("{} is not an absolute path", path.display()));
            }
        }
        if self.grace_period < MIN_GRACE_PERIOD {
            return invalid(
                "grace_period",
                format!(
                    "must be at least {}: containerd runs CNI ADD before it records the sandbox",
                    humantime::format_duration(MIN_GRACE_PERIOD)
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for name in self.networks.iter().flatten() {
            if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                return invalid("networks", format!("{name:?} is not a network name (a directory in networks_dir)"));
            }
            if !seen.insert(name) {
                return invalid("networks", format!("{name:?} is listed twice"));
            }
        }
        if self.namespace.is_empty() {
            return invalid("namespace", "must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_values_that_parse_but_cannot_work() {
        let cases = [
            (IpamConfig { interval: Duration::ZERO, ..Default::default() }, "interval"),
            (IpamConfig { networks_dir: "var/lib/cni".into(), ..Default::default() }, "networks_dir"),
            (IpamConfig { containerd_socket: "containerd.sock".into(), ..Default::default() }, "containerd_socket"),
            (IpamConfig { networks: Some(vec!["../etc".into()]), ..Default::default() }, "networks"),
            (IpamConfig { networks: Some(vec![String::new()]), ..Default::default() }, "networks"),
            (IpamConfig { namespace: String::new(), ..Default::default() }, "namespace"),
            (IpamConfig { grace_period: Duration::from_secs(5), ..Default::default() }, "grace_period"),
            (IpamConfig { networks: Some(vec!["a".into(), "a".into()]), ..Default::default() }, "networks"),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field, field);
        }
        assert_eq!(IpamConfig::default().validate(), Ok(()));
    }
}
