//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`), validated, and the pods
//! and namespaces it applies to: what [`crate::compile`] compiles for the
//! datapath. The semantics are the API's:
//!
//! - A pod selected by no policy of a type (Ingress, Egress) is open for that
//!   type; once selected, only what some selecting policy allows is allowed (the
//!   union of the policies). A connection needs both the client's egress and the
//!   server's ingress allowed; a pod connecting to itself is no exception.
//! - `policyTypes`, when absent, is Ingress, plus Egress when the policy has
//!   egress rules.
//! - A peer's `podSelector` and `namespaceSelector` together select pods of the
//!   selected namespaces; a `podSelector` alone means the policy's namespace. An
//!   `ipBlock` matches addresses, pods' included, minus its `except` ranges.
//! - A port is a number (with `endPort`, a range, never expanded), a named
//!   container port of the destination pod, or absent (every port); the protocol
//!   defaults to TCP.
//! - Traffic from the node itself to its pods is always allowed (kubelet probes).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::protocol::Protocol;

pub type Labels = BTreeMap<String, String>;

/// A container port with a name, which policies may refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod as its manifest describes it; the CNI registration adds its IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodManifest {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
    /// Its address as the API server reports it (`status.podIP`): how a pod
    /// of another node is known as a peer. None from a manifest file, before
    /// it has one, and for a pod on the host's network.
    pub ip: Option<Ipv4Addr>,
}

impl PodManifest {
    pub fn with_ip(self, ip: Ipv4Addr) -> PodView {
        PodView { namespace: self.namespace, name: self.name, labels: self.labels, ip, ports: self.ports }
    }
}

/// A pod as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Ipv4Addr,
    pub ports: Vec<NamedPort>,
}

/// Why a NetworkPolicy is refused, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { field: field.into(), message: message.into() }
}

/// A label selector: every `matchLabels` pair and every expression must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Labels,
    expressions: Vec<(String, Operator)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    fn parse(selector: &LabelSelector, field: &str) -> Result<Self, PolicyError> {
        let mut expressions = Vec::new();
        for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
            let here = format!("{field}.matchExpressions[{i}]");
            let values = requirement.values.clone().unwrap_or_default();
            let operator = match requirement.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(error(format!("{here}.values"), "must not be empty for In and NotIn"));
                }
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(error(format!("{here}.values"), "must be empty for Exists and DoesNotExist"));
                }
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(error(
                        format!("{here}.operator"),
                        format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                    ));
                }
            };
            expressions.push((requirement.key.clone(), operator));
        }
        Ok(Selector { labels: selector.match_labels.clone().unwrap_or_default(), expressions })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(key, operator)| match operator {
                Operator::In(values) => labels.get(key).is_some_and(|v| values.contains(v)),
                Operator::NotIn(values) => labels.get(key).is_none_or(|v| !values.contains(v)),
                Operator::Exists => labels.contains_key(key),
                Operator::DoesNotExist => !labels.contains_key(key),
            })
    }
}

/// An IPv4 subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub(crate) network: u32,
    pub(crate) mask: u32,
}

impl Cidr {
    fn parse(text: &str, field: &str) -> Result<Self, PolicyError> {
        let bad = || error(field, format!("{text:?} is not an IPv4 CIDR (e.g. 10.0.0.0/8)"));
        let (addr, len) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u32 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Ok(Cidr { network: u32::from(addr) & mask, mask })
    }

    pub(crate) fn host(addr: Ipv4Addr) -> Self {
        Cidr { network: u32::from(addr), mask: u32::MAX }
    }

    pub(crate) fn prefix_len(&self) -> u32 {
        self.mask.count_ones()
    }

    pub(crate) fn covers(&self, other: &Cidr) -> bool {
        other.mask >= self.mask && other.network & self.mask == self.network
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Pods { namespaces: Option<Selector>, pods: Selector },
    Block { cidr: Cidr, except: Vec<Cidr> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PortMatch {
    Any(Protocol),
    Range(Protocol, u16, u16),
    Named(Protocol, String),
}

/// One rule: any of its peers (all, when none are listed) on any of its ports
/// (all, when none are listed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) peers: Vec<Peer>,
    pub(crate) ports: Vec<PortMatch>,
}

/// A validated NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pod_selector: Selector,
    /// The rules of each type the policy affects (`None`: it does not).
    pub(crate) ingress: Option<Vec<Rule>>,
    pub(crate) egress: Option<Vec<Rule>>,
}

impl Policy {
    pub fn from_k8s(policy: &NetworkPolicy) -> Result<Self, PolicyError> {
        let name = policy.metadata.name.clone().ok_or_else(|| error("metadata.name", "missing"))?;
        let namespace = policy.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let spec = policy.spec.as_ref().ok_or_else(|| error("spec", "missing"))?;
        let pod_selector = match &spec.pod_selector {
            Some(selector) => Selector::parse(selector, "spec.podSelector")?,
            None => Selector::default(),
        };
        let has_egress_rules = spec.egress.as_ref().is_some_and(|rules| !rules.is_empty());
        let (mut affects_ingress, mut affects_egress) = (true, has_egress_rules);
        if let Some(types) = &spec.policy_types {
            (affects_ingress, affects_egress) = (false, false);
            for (i, kind) in types.iter().enumerate() {
                match kind.as_str() {
                    "Ingress" => affects_ingress = true,
                    "Egress" => affects_egress = true,
                    other => {
                        return Err(error(
                            format!("spec.policyTypes[{i}]"),
                            format!("{other:?} is not Ingress or Egress"),
                        ));
                    }
                }
            }
        }
        let ingress = spec.ingress.iter().flatten().enumerate().map(|(i, rule)| {
            Rule::parse(rule.from.as_deref(), rule.ports.as_deref(), &format!("spec.ingress[{i}]"), "from")
        });
        let egress = spec.egress.iter().flatten().enumerate().map(|(i, rule)| {
            Rule::parse(rule.to.as_deref(), rule.ports.as_deref(), &format!("spec.egress[{i}]"), "to")
        });
        // Rules of a type the policy does not affect are not parsed (nor refused).
        let ingress = affects_ingress.then(|| ingress.collect::<Result<Vec<_>, _>>()).transpose()?;
        let egress = affects_egress.then(|| egress.collect::<Result<Vec<_>, _>>()).transpose()?;
        Ok(Policy { namespace, name, pod_selector, ingress, egress })
    }

    pub(crate) fn selects(&self, pod: &PodView) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

impl Rule {
    fn parse(
        peers: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        field: &str,
        peers_name: &str,
    ) -> Result<Self, PolicyError> {
        let peers = peers
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, peer)| parse_peer(peer, &format!("{field}.{peers_name}[{i}]")))
            .collect::<Result<_, _>>()?;
        let ports = ports
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, port)| parse_port(port, &format!("{field}.ports[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Rule { peers, ports })
    }
}

fn parse_peer(peer: &NetworkPolicyPeer, field: &str) -> Result<Peer, PolicyError> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (Some(block), None, None) => {
            let cidr = Cidr::parse(&block.cidr, &format!("{field}.ipBlock.cidr"))?;
            let mut except = Vec::new();
            for (i, text) in block.except.iter().flatten().enumerate() {
                let here = format!("{field}.ipBlock.except[{i}]");
                let range = Cidr::parse(text, &here)?;
                if !cidr.covers(&range) {
                    return Err(error(here, format!("{text:?} is not inside {}", block.cidr)));
                }
                except.push(range);
            }
            Ok(Peer::Block { cidr, except })
        }
        (Some(_), _, _) => Err(error(field, "ipBlock cannot be combined with podSelector or namespaceSelector")),
        (None, None, None) => Err(error(field, "must have podSelector, namespaceSelector or ipBlock")),
        (None, namespaces, pods) => Ok(Peer::Pods {
            namespaces: namespaces
                .as_ref()
                .map(|s| Selector::parse(s, &format!("{field}.namespaceSelector")))
                .transpose()?,
            pods: match pods {
                Some(s) => Selector::parse(s, &format!("{field}.podSelector"))?,
                None => Selector::default(),
            },
        }),
    }
}

fn parse_port(port: &NetworkPolicyPort, field: &str) -> Result<PortMatch, PolicyError> {
    let protocol =
        Protocol::parse(port.protocol.as_deref()).map_err(|e| error(format!("{field}.protocol"), e.to_string()))?;
    let number = |n: i32, at: &str| {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| error(format!("{field}.{at}"), format!("{n} is not a port number")))
    };
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::Any(protocol)),
        (None, Some(_)) => Err(error(format!("{field}.endPort"), "needs a numeric port")),
        (Some(IntOrString::String(_)), Some(_)) => {
            Err(error(format!("{field}.endPort"), "needs a numeric port, not a named one"))
        }
        (Some(IntOrString::String(name)), None) => Ok(PortMatch::Named(protocol, name.clone())),
        (Some(IntOrString::Int(n)), end) => {
            let low = number(*n, "port")?;
            let high = match end {
                Some(end) => number(end, "endPort")?,
                None => low,
            };
            if high < low {
                return Err(error(format!("{field}.endPort"), format!("{high} is below port {low}")));
            }
            Ok(PortMatch::Range(protocol, low, high))
        }
    }
}

/// The pods, namespaces and policies in force.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Namespace → its labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// The pods of this node, whose policies are compiled.
    pub pods: Vec<PodView>,
    /// The pods of other nodes: peers only.
    pub remote_pods: Vec<PodView>,
    pub policies: Vec<Policy>,
}

impl Cluster {
    /// Every pod a peer may select: this node's and the others'.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &PodView> {
        self.pods.iter().chain(&self.remote_pods)
    }

    /// Whether a pod-selecting peer of `policy` selects `pod`.
    pub(crate) fn peer_selects(&self, policy: &Policy, peer: &Peer, pod: &PodView) -> bool {
        let Peer::Pods { namespaces, pods } = peer else { return false };
        let namespace_ok = match namespaces {
            None => pod.namespace == policy.namespace,
            Some(selector) => self.namespaces.get(&pod.namespace).is_some_and(|labels| selector.matches(labels)),
        };
        namespace_ok && pods.matches(&pod.labels)
    }
}
