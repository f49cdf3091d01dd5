//! `[kubernetes]`: how this node joins its cluster (user data, like the rest of
//! node.toml, as Bottlerocket's `settings.kubernetes.*`). Absent, the node is
//! a standalone nodeplane node: no kubelet runs.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize, Serializer};

use super::Invalid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The API server, `https://HOST[:PORT]`.
    pub api_server: String,
    /// This node's name in the cluster (its Node object).
    pub node_name: String,
    /// The cluster CA's certificate (PEM), which the API server's chains to.
    pub cluster_ca: String,
    /// The node's client certificate (PEM), subject `system:node:NAME` in
    /// `system:nodes`; with `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub client_key: Option<String>,
    /// A bootstrap token (`abcdef.0123456789abcdef`): the kubelet asks for its
    /// certificate with it (TLS bootstrapping) instead.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub bootstrap_token: Option<String>,
    /// The cluster DNS Service's address(es), for pods.
    #[serde(default = "default_dns")]
    pub cluster_dns: Vec<Ipv4Addr>,
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
    /// The kubeconfig nodeplaned reads the cluster with (its own Node, and the
    /// Services, EndpointSlices, Pods, Namespaces and NetworkPolicies it
    /// follows); the kubelet's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

fn default_dns() -> Vec<Ipv4Addr> {
    vec![Ipv4Addr::new(10, 96, 0, 10)]
}

fn default_domain() -> String {
    "cluster.local".into()
}

/// Secrets are never printed (`--check-config` shows the effective config).
fn redacted<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_str("(secret: not shown)"),
        None => serializer.serialize_none(),
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid { field: field.into(), message: message.into() })
}

/// Whether `name` is a DNS subdomain as Kubernetes names nodes (RFC 1123).
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn pem(text: &str, kind: &str) -> bool {
    let text = text.trim();
    text.starts_with(&format!("-----BEGIN {kind}")) && text.ends_with("-----") && text.contains("-----END ")
}

impl KubernetesConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let Some(rest) = self.api_server.strip_prefix("https://") else {
            return invalid("api_server", "must be an https:// URL, e.g. \"https://10.0.0.1:6443\"");
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || self.api_host().is_none() {
            return invalid("api_server", "must be https://HOST or https://HOST:PORT, without a path");
        }
        if !dns_subdomain(&self.node_name) {
            return invalid("node_name", "must be a lowercase DNS name (letters, digits, '-', '.'), as Node names are");
        }
        if !pem(&self.cluster_ca, "CERTIFICATE") {
            return invalid("cluster_ca", "must be a PEM certificate (-----BEGIN CERTIFICATE----- …)");
        }
        match (&self.client_certificate, &self.client_key, &self.bootstrap_token) {
            (Some(cert), Some(key), None) => {
                if !pem(cert, "CERTIFICATE") {
                    return invalid("client_certificate", "must be a PEM certificate (-----BEGIN CERTIFICATE----- …)");
                }
                if !pem(key, "") || !key.contains("PRIVATE KEY-----") {
                    return invalid("client_key", "must be a PEM private key (-----BEGIN … PRIVATE KEY----- …)");
                }
            }
            (None, None, Some(token)) => {
                let well_formed = token.split_once('.').is_some_and(|(id, secret)| {
                    let ok = |s: &str, n: usize| {
                        s.len() == n && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    };
                    ok(id, 6) && ok(secret, 16)
                });
                if !well_formed {
                    return invalid(
                        "bootstrap_token",
                        "must be a bootstrap token: 6 and 16 lowercase letters or digits, as abcdef.0123456789abcdef",
                    );
                }
            }
            (Some(_), None, None) => return invalid("client_certificate", "needs client_key"),
            (None, Some(_), None) => return invalid("client_key", "needs client_certificate"),
            (None, None, None) => {
                return invalid(
                    "api_server",
                    "the node needs credentials: client_certificate and client_key, or bootstrap_token",
                );
            }
            (_, _, Some(_)) => {
                return invalid("bootstrap_token", "give either bootstrap_token or client_certificate and client_key");
            }
        }
        if self.cluster_dns.is_empty() {
            return invalid("cluster_dns", "needs at least one address");
        }
        if !dns_subdomain(&self.cluster_domain) {
            return invalid("cluster_domain", "must be a DNS name, e.g. \"cluster.local\"");
        }
        if self.kubeconfig.as_ref().is_some_and(|path| !path.is_absolute()) {
            return invalid("kubeconfig", "must be an absolute path");
        }
        Ok(())
    }

    /// The API server's host (a name or an address) and port (443 when absent).
    pub fn api_host(&self) -> Option<(String, u16)> {
        let authority = self.api_server.strip_prefix("https://")?.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, port.parse().ok()?),
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then(|| (host.to_owned(), port))
    }
}
