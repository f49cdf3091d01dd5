//! `node.toml`: the node's configuration. Each component owns its section's type;
//! this module composes them, rejects unknown keys and bad values with the key path,
//! line and column, and prints the effective config.
//!
//! Adding a section is local: a field on [`NodeConfig`] and a line in
//! [`NodeConfig::validate`].

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use nodeplane_ipam::IpamConfig;
use nodeplane_sysctl::SysctlConfig;
use serde::{Deserialize, Serialize};

mod datapath;
mod kubernetes;
mod metrics;

pub use datapath::{DatapathConfig, Invalid, Routing};
pub use kubernetes::KubernetesConfig;
pub use metrics::{Listen, MetricsConfig};

/// Where the node's configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/nodeplane/node.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub sysctl: SysctlConfig,
    pub ipam: IpamConfig,
    pub datapath: DatapathConfig,
    pub metrics: MetricsConfig,
    /// How the node joins its cluster; absent, it is a standalone node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}:{}", .location)]
    Invalid { origin: String, location: Location },
}

/// A problem pinned to a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// Dotted key path (`sysctl.nodeport_range`), empty for a syntax error.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl NodeConfig {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |span: Option<Range<usize>>, key: String, message: String| {
            let (line, column) = line_column(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid { origin: origin.to_owned(), location: Location { line, column, key, message } }
        };
        let document =
            toml_edit::Document::parse(text).map_err(|e| invalid(e.span(), String::new(), e.message().to_owned()))?;
        let config: NodeConfig = serde_path_to_error::deserialize(toml_edit::de::Deserializer::from(document.clone()))
            .map_err(|e| {
                let key = key_path(e.path());
                invalid(e.inner().span(), key, e.inner().message().to_owned())
            })?;
        config.validate().map_err(|(key, message)| invalid(span_of(document.as_item(), &key), key, message))?;
        Ok(config)
    }

    /// Cross-field checks, one line per section: `(key path, message)` on failure.
    fn validate(&self) -> Result<(), (String, String)> {
        let at = |section: &str, field: &str| format!("{section}.{field}");
        self.sysctl.validate().map_err(|i| (at("sysctl", i.field), i.message))?;
        self.ipam.validate().map_err(|i| (at("ipam", i.field), i.message))?;
        self.datapath.validate().map_err(|i| (at("datapath", &i.field), i.message))?;
        self.metrics.validate(self.sysctl.nodeport_range).map_err(|i| (at("metrics", &i.field), i.message))?;
        if let Some(kubernetes) = &self.kubernetes {
            kubernetes.validate().map_err(|i| (at("kubernetes", &i.field), i.message))?;
        }
        Ok(())
    }

    /// The effective config as TOML, every default spelled out.
    pub fn to_toml(&self) -> String {
        toml_edit::ser::to_string_pretty(self).expect("the config serializes")
    }
}

/// `--check-config`: prints the effective config (exit 0) or the error (exit 2).
pub fn check_file(path: &Path) -> std::process::ExitCode {
    match NodeConfig::load(path) {
        Ok(config) => {
            println!("# {}: valid; effective config:", path.display());
            print!("{}", config.to_toml());
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

fn key_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Span of the value at dotted `key`, or of the nearest table that holds it.
fn span_of(root: &toml_edit::Item, key: &str) -> Option<Range<usize>> {
    let mut item = root;
    let mut span = root.span();
    for part in key.split('.') {
        match item.get(part) {
            Some(next) => {
                item = next;
                span = next.span().or(span);
            }
            None => break,
        }
    }
    span
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> Location {
        match NodeConfig::parse(text, "node.toml") {
            Err(ConfigError::Invalid { location, .. }) => location,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_file_is_the_default_config() {
        assert_eq!(NodeConfig::parse("", "node.toml").unwrap(), NodeConfig::default());
        assert_eq!(NodeConfig::parse("[sysctl]\n", "node.toml").unwrap(), NodeConfig::default());
    }

    #[test]
    fn bad_configs_name_the_key_line_and_problem() {
        let cases: &[(&str, &str, usize, &str)] = &[
            // (config, key path, line, part of the message)
            (
                "[sysctl]\nnodeport_range = \"32767-30000\"\n",
                "sysctl.nodeport_range",
                2,
                "start 32767 is after end 30000",
            ),
            ("[sysctl]\nnodeport_range = \"30000\"\n", "sysctl.nodeport_range", 2, "expected START-END"),
            ("[sysctl]\nnodeport_range = 30000\n", "sysctl.nodeport_range", 2, "expected a string"),
            ("\n[sysctl]\nephemeral_range = \"0-100\"\n", "sysctl.ephemeral_range", 3, "port 0"),
            (
                "[sysctl]\nephemeral_range = \"20000-40000\"\n",
                "sysctl.ephemeral_range",
                2,
                "overlaps the NodePort range 30000-32767",
            ),
            (
                "[sysctl]\nnodeport_range = \"20000-25000\"\n\nephemeral_range = \"24000-26000\"\n",
                "sysctl.ephemeral_range",
                4,
                "overlaps the NodePort range 20000-25000",
            ),
            ("[sysctl]\nnodeport_range = \"1-65535\"\n", "sysctl.nodeport_range", 2, "leaves no ports"),
            ("[sysctl]\nreserve_nodeport_range = \"yes\"\n", "sysctl.reserve_nodeport_range", 2, "expected a boolean"),
            ("[sysctl]\ncheck_interval = \"soon\"\n", "sysctl.check_interval", 2, "soon"),
            ("[sysctl]\ncheck_interval = \"0s\"\n", "sysctl.check_interval", 2, "at least 100ms"),
            ("[sysctl]\ncheck_interval = \"1ns\"\n", "sysctl.check_interval", 2, "at least 100ms"),
            ("[sysctl]\nbogus = 1\n", "sysctl.bogus", 2, "unknown field `bogus`"),
            (
                "[sysctl.extra]\n\"net.ipv4.ip_local_port_range\" = \"1 2\"\n",
                "sysctl.extra.net.ipv4.ip_local_port_range",
                2,
                "managed by the port-range guard",
            ),
            ("[sysctl.extra]\nnet.core.x = 1\n\"net..core\" = 1\n", "sysctl.extra.net..core", 3, "not a sysctl name"),
            (
                "[sysctl.extra]\n\"net.core.somaxconn\" = 1.5\n",
                "sysctl.extra.net.core.somaxconn",
                2,
                "an integer, a string",
            ),
            ("[sysctl.extra]\nnet.core.somaxconn = 1\n\"net.core.somaxconn\" = 2\n", "sysctl.extra", 1, "set twice"),
            ("[datapath]\nx = 1\n", "datapath.x", 2, "unknown field `x`"),
            ("[datapath]\nhairpin_address = \"10.0.0.1\"\n", "datapath.hairpin_address", 2, "link-local"),
            ("[datapath]\npod_cidr = \"10.244.1.0\"\n", "datapath.pod_cidr", 2, "not an IPv4 subnet"),
            ("[datapath.maps]\nconntrack = 0\n", "datapath.maps.conntrack", 2, "from 64 to 67108864"),
            ("[datapath.maps]\nconntrak = 1\n", "datapath.maps.conntrak", 2, "unknown field"),
            ("[datapath]\nconntrack_flows_per_pod = 300000\n", "datapath.conntrack_flows_per_pod", 2, "at most 262144"),
            (
                "[datapath]\nconntrack_flows_per_pod = 2000\n[datapath.maps]\nconntrack = 4096\n",
                "datapath.conntrack_flows_per_pod",
                2,
                "at most 1024",
            ),
            (
                "[datapath]\nrouting = \"geneve\"\n",
                "datapath.routing",
                2,
                "unknown variant `geneve`, expected `native` or `vxlan`",
            ),
            ("[metrics]\nlisten = \"everywhere\"\n", "metrics.listen", 2, "expected one of `off`, `loopback`, `all`"),
            ("[metrics]\nport = 30080\n", "metrics.port", 2, "in the NodePort range 30000-32767"),
            ("[metrics]\nport = 10249\n", "metrics.port", 2, "kube-proxy's metrics port"),
            ("[metrics]\nport = 9963\n", "metrics.port", 2, "Cilium's"),
            ("[metrics]\nport = 0\n", "metrics.port", 2, "port 0"),
            ("[metrics]\nport = 70000\n", "metrics.port", 2, "invalid value"),
            ("[nonsense]\nx = 1\n", "nonsense", 1, "unknown field `nonsense`"),
            ("[sysctl]\nnodeport_range = \n", "", 2, "string values must be quoted"),
            (
                "[kubernetes]\napi_server = \"http://10.0.0.1\"\nnode_name = \"n\"\ncluster_ca = \"x\"\n",
                "kubernetes.api_server",
                2,
                "must be an https:// URL",
            ),
            (
                "[kubernetes]\napi_server = \"https://10.0.0.1:6443\"\nnode_name = \"Node_1\"\ncluster_ca = \"x\"\n",
                "kubernetes.node_name",
                3,
                "lowercase DNS name",
            ),
            (
                "[kubernetes]\napi_server = \"https://a:6443\"\nnode_name = \"n1\"\ncluster_ca = \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\"\nbootstrap_token = \"abc.def\"\n",
                "kubernetes.bootstrap_token",
                5,
                "6 and 16 lowercase letters",
            ),
            (
                "[kubernetes]\napi_server = \"https://a:6443\"\nnode_name = \"n1\"\ncluster_ca = \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\"\n",
                "kubernetes.api_server",
                2,
                "needs credentials",
            ),
            ("[kubernetes]\nnode_name = \"n1\"\n", "kubernetes", 1, "missing field `api_server`"),
        ];
        for (text, key, line, message) in cases {
            let location = error(text);
            assert_eq!(&location.key, key, "{text}: {location}");
            assert_eq!(location.line, *line, "{text}: {location}");
            assert!(location.message.contains(message), "{text}: {location}");
        }
    }

    #[test]
    fn errors_print_as_one_line_with_file_line_and_column() {
        let err =
            NodeConfig::parse("[sysctl]\nnodeport_range = \"32767-30000\"\n", "/etc/nodeplane/node.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/nodeplane/node.toml:2:18: sysctl.nodeport_range: start 32767 is after end 30000"
        );
    }

    #[test]
    fn extra_sysctls_accept_quoted_and_dotted_keys() {
        let config = NodeConfig::parse(
            "[sysctl.extra]\n\"net.core.somaxconn\" = 4096\nnet.ipv4.tcp_congestion_control = \"cubic\"\nnet.ipv4.conf.\"eth0.100\".rp_filter = 2\n",
            "node.toml",
        )
        .unwrap();
        let extra: Vec<(String, String)> =
            config.sysctl.extra.0.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(
            extra,
            [
                ("net.core.somaxconn".into(), "4096".into()),
                ("net.ipv4.conf.eth0/100.rp_filter".into(), "2".into()),
                ("net.ipv4.tcp_congestion_control".into(), "cubic".into())
            ]
        );
    }

    #[test]
    fn the_effective_config_round_trips() {
        let text = "[sysctl]\nephemeral_range = \"40000-50000\"\ncheck_interval = \"2m\"\n[sysctl.extra]\n\"net.core.somaxconn\" = 4096\n";
        let config = NodeConfig::parse(text, "node.toml").unwrap();
        let printed = config.to_toml();
        assert!(printed.contains("nodeport_range = \"30000-32767\""), "{printed}");
        assert!(printed.contains("reserve_nodeport_range = true"), "{printed}");
        assert_eq!(NodeConfig::parse(&printed, "printed").unwrap(), config);
    }
}
