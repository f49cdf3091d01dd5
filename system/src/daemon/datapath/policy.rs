//! NetworkPolicy in the datapath component: the policies compiled for the
//! registered pods and programmed, and the answers about them (what a pod may
//! do, which pods a drop was between).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use nodeplane_bus::PolicyDrop;
use nodeplane_datapath::Datapath;
use nodeplane_datapath_abi::{POLICY_REASONS, PolicyEvent};
use nodeplane_model::compile::{CompiledPolicy, PeerRules, PodRules, PortRanges};
use nodeplane_model::policy::{Cluster, Labels, PodManifest, PodView};
use nodeplane_model::{ICMP, Protocol, ip_protocol_name};

use super::endpoints::Endpoint;
use super::manifests::ManifestSource;

/// What the policy maps hold, and why they could not be programmed.
#[derive(Default)]
pub(super) struct PolicyState {
    /// `None`: what an earlier instance left (the first apply rewrites it).
    pub compiled: Option<CompiledPolicy>,
    pub error: Option<String>,
}

/// A pod's policy as the maps hold it: per direction, `None` when the pod is
/// open that way, else (peer, ports) rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub ip: Ipv4Addr,
    pub ingress: Option<Vec<(String, String)>>,
    pub egress: Option<Vec<(String, String)>>,
}

/// Why `PodPolicy()` has no answer.
#[derive(Debug, thiserror::Error)]
pub enum PodPolicyError {
    #[error("the datapath is disabled on this node")]
    Disabled,
    #[error("{0:?} is not NAMESPACE/NAME (e.g. default/web-0)")]
    NotAPodName(String),
    #[error("no pod {0} is registered on this node")]
    NotRegistered(String),
}

/// The pods as policies see them: this node's — each registration's IP,
/// with the labels and named ports of its Pod manifest (none without one) —
/// and, as peers, the others with an address of their own.
fn cluster(endpoints: &BTreeMap<String, Endpoint>, manifests: &ManifestSource) -> Cluster {
    let by_name: HashMap<(&str, &str), &PodManifest> =
        manifests.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), p)).collect();
    let pods: Vec<PodView> = endpoints
        .values()
        .flat_map(|endpoint| {
            let manifest = by_name
                .get(&(endpoint.pod_namespace.as_str(), endpoint.pod_name.as_str()))
                .map(|p| (*p).clone())
                .unwrap_or_else(|| PodManifest {
                    namespace: endpoint.pod_namespace.clone(),
                    name: endpoint.pod_name.clone(),
                    labels: Labels::new(),
                    ports: Vec::new(),
                    ip: None,
                });
            endpoint.ips.iter().filter_map(|ip| ip.parse().ok()).map(move |ip| manifest.clone().with_ip(ip))
        })
        .collect();
    let local: HashSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    let remote_pods = manifests
        .pods
        .iter()
        .filter_map(|p| Some((p, p.ip.filter(|ip| !local.contains(ip))?)))
        .map(|(p, ip)| p.clone().with_ip(ip))
        .collect();
    Cluster { namespaces: manifests.namespaces.clone(), pods, remote_pods, policies: manifests.policies.clone() }
}

impl PolicyState {
    /// Compiles the policies for the registered pods and programs the maps
    /// (unless they hold that already).
    pub fn apply(
        &mut self,
        datapath: &mut Datapath,
        endpoints: &BTreeMap<String, Endpoint>,
        manifests: &ManifestSource,
    ) {
        let cluster = cluster(endpoints, manifests);
        let started = Instant::now();
        let compiled = CompiledPolicy::compile(&cluster);
        if self.compiled.as_ref() == Some(&compiled) && self.error.is_none() {
            return;
        }
        match datapath.policy().apply(&compiled) {
            Ok(stats) => {
                tracing::info!(
                    datapath_policies = cluster.policies.len(),
                    datapath_policy_rules = compiled.rule_count(),
                    datapath_policy_written = stats.written,
                    datapath_policy_removed = stats.removed,
                    "applied {} NetworkPolicy object(s) to {} pod(s) in {:?}",
                    cluster.policies.len(),
                    cluster.pods.len(),
                    started.elapsed()
                );
                self.compiled = Some(compiled);
                self.error = None;
            }
            Err(err) => {
                tracing::error!("programming the policy maps: {err}");
                self.error = Some(format!("programming the policy maps: {err}"));
            }
        }
    }

    /// What `pod` (`namespace/name`) may receive and send, as the maps hold it.
    pub fn pod_policy(&self, endpoints: &BTreeMap<String, Endpoint>, pod: &str) -> Result<PodPolicy, PodPolicyError> {
        let (namespace, name) = pod.split_once('/').ok_or_else(|| PodPolicyError::NotAPodName(pod.to_owned()))?;
        let ip = endpoints
            .values()
            .find(|e| e.pod_namespace == namespace && e.pod_name == name)
            .and_then(|e| e.ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()))
            .ok_or_else(|| PodPolicyError::NotRegistered(pod.to_owned()))?;
        let rules = self.compiled.as_ref().and_then(|c| c.pods.get(&ip)).cloned().unwrap_or_default();
        let rows = |peers: Option<&PeerRules>| {
            peers.map(|peers| {
                peers
                    .iter()
                    .map(|((addr, length), ports)| {
                        let peer = match (length, pod_name(endpoints, *addr)) {
                            (32, Some(name)) => format!("{name} ({addr})"),
                            _ => format!("{addr}/{length}"),
                        };
                        (peer, describe_ports(ports))
                    })
                    .collect()
            })
        };
        let PodRules { ingress, egress } = &rules;
        Ok(PodPolicy { ip, ingress: rows(ingress.as_ref()), egress: rows(egress.as_ref()) })
    }
}

pub(super) fn pod_name(endpoints: &BTreeMap<String, Endpoint>, ip: Ipv4Addr) -> Option<String> {
    let ip = ip.to_string();
    endpoints.values().find(|e| e.ips.contains(&ip)).map(|e| format!("{}/{}", e.pod_namespace, e.pod_name))
}

/// A drop from the datapath, told in pod names where the addresses are pods'.
pub(super) fn describe(endpoints: &BTreeMap<String, Endpoint>, event: &PolicyEvent) -> PolicyDrop {
    let end = |addr: [u8; 4], port: [u8; 2]| {
        let (addr, port) = (Ipv4Addr::from(addr), u16::from_be_bytes(port));
        match pod_name(endpoints, addr) {
            Some(name) => format!("{name} ({addr}:{port})"),
            None => format!("{addr}:{port}"),
        }
    };
    let reason = POLICY_REASONS.get(usize::from(event.reason)).copied().unwrap_or("");
    PolicyDrop {
        from: end(event.saddr, event.sport),
        to: end(event.daddr, event.dport),
        port: u16::from_be_bytes(event.dport),
        protocol: ip_protocol_name(event.proto).to_uppercase(),
        reason: reason.to_owned(),
        service: if event.vip == [0; 4] {
            String::new()
        } else {
            format!("{}:{}", Ipv4Addr::from(event.vip), u16::from_be_bytes(event.vip_port))
        },
    }
}

/// Port ranges as a person reads them: `TCP 80, UDP 1000-2000`; `all ports`
/// for every port of every protocol; `none`.
fn describe_ports(ranges: &PortRanges) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    let numbers = Protocol::ALL.iter().map(|p| p.number()).chain([ICMP]);
    let every = numbers.clone().all(|p| ranges.contains(&(p, 0, u16::MAX)));
    if every && ranges.len() == numbers.count() {
        return "all ports".into();
    }
    let names: Vec<String> = ranges
        .iter()
        .map(|(proto, low, high)| {
            let proto = ip_protocol_name(*proto).to_uppercase();
            match (*low, *high) {
                (0, u16::MAX) => format!("{proto} (all ports)"),
                _ if low == high => format!("{proto} {low}"),
                _ => format!("{proto} {low}-{high}"),
            }
        })
        .collect();
    names.join(", ")
}
