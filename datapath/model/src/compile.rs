//! NetworkPolicy compiled into the rules the datapath consults once per new
//! connection: per pod of this node and direction, `None` where no policy
//! isolates it, else peer prefixes → the ports allowed with the addresses
//! whose longest prefix it is (an `except` range is a longer prefix with fewer
//! ports, so one lookup answers). Pod-selecting peers are resolved to the IPs
//! of the pods they select; named ports to the numbers of the pods that
//! declare them. `nodeplane-datapath` writes the result into its maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::policy::{Cidr, Cluster, Peer, PodView, PortMatch};
use crate::protocol::{ICMP, Protocol};

/// Allowed ports: (IP protocol, first port, last port), merged and sorted.
pub type PortRanges = Vec<(u8, u16, u16)>;

/// A direction of traffic, as seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// What an isolated pod may do in one direction: peer prefix (address, length)
/// → the ports allowed with the addresses whose longest prefix it is.
pub type PeerRules = BTreeMap<(Ipv4Addr, u8), PortRanges>;

/// A pod of this node and its rules; `None` where no policy isolates it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRules {
    pub ingress: Option<PeerRules>,
    pub egress: Option<PeerRules>,
}

/// The whole node's policy, ready for the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub pods: BTreeMap<Ipv4Addr, PodRules>,
}

impl CompiledPolicy {
    /// Compiles the policies in force for every pod of `cluster` (the pods of
    /// this node, with their IPs).
    pub fn compile(cluster: &Cluster) -> Self {
        let pods = cluster
            .pods
            .iter()
            .map(|pod| {
                let rules = |direction| grants(cluster, pod, direction).map(|g| peer_rules(&g));
                (pod.ip, PodRules { ingress: rules(Direction::Ingress), egress: rules(Direction::Egress) })
            })
            .collect();
        CompiledPolicy { pods }
    }

    /// Number of `np_policy` entries.
    pub fn rule_count(&self) -> usize {
        self.pods.values().flat_map(|p| [&p.ingress, &p.egress]).flatten().map(BTreeMap::len).sum()
    }
}

/// Addresses a rule's peer covers.
enum Addrs {
    All,
    Hosts(BTreeSet<Ipv4Addr>),
    Block(Cidr, Vec<Cidr>),
}

impl Addrs {
    /// Whether every address whose longest prefix (among the compiled ones) is
    /// `prefix` is covered: those are in the block and in none of its excepts.
    fn holds(&self, prefix: &Cidr) -> bool {
        match self {
            Addrs::All => true,
            Addrs::Hosts(hosts) => prefix.prefix_len() == 32 && hosts.contains(&Ipv4Addr::from(prefix.network)),
            Addrs::Block(cidr, except) => cidr.covers(prefix) && !except.iter().any(|e| e.covers(prefix)),
        }
    }

    fn contains(&self, addr: Ipv4Addr) -> bool {
        self.holds(&Cidr::host(addr))
    }
}

/// Peers and the ports allowed with them.
struct Grant {
    addrs: Addrs,
    ports: PortRanges,
}

/// The grants of every policy that selects `pod` for `direction`; `None` when
/// none does (the pod is open that way).
fn grants(cluster: &Cluster, pod: &PodView, direction: Direction) -> Option<Vec<Grant>> {
    let mut isolated = false;
    let mut grants = Vec::new();
    for policy in cluster.policies.iter().filter(|p| p.selects(pod)) {
        let rules = match direction {
            Direction::Ingress => policy.ingress.as_deref(),
            Direction::Egress => policy.egress.as_deref(),
        };
        let Some(rules) = rules else { continue };
        isolated = true;
        for rule in rules {
            let peers: Vec<Addrs> = if rule.peers.is_empty() {
                vec![Addrs::All]
            } else {
                rule.peers
                    .iter()
                    .map(|peer| match peer {
                        Peer::Block { cidr, except } => Addrs::Block(*cidr, except.clone()),
                        Peer::Pods { .. } => Addrs::Hosts(
                            cluster.peers().filter(|q| cluster.peer_selects(policy, peer, q)).map(|q| q.ip).collect(),
                        ),
                    })
                    .collect()
            };
            // Named ports are the destination's: the pod itself on ingress,
            // each peer pod on egress.
            let mut ports: PortRanges = Vec::new();
            let mut named = Vec::new();
            if rule.ports.is_empty() {
                ports.extend(Protocol::ALL.iter().map(|p| (p.number(), 0, u16::MAX)));
                ports.push((ICMP, 0, u16::MAX));
            }
            for port in &rule.ports {
                match port {
                    PortMatch::Any(proto) => ports.push((proto.number(), 0, u16::MAX)),
                    PortMatch::Range(proto, low, high) => ports.push((proto.number(), *low, *high)),
                    PortMatch::Named(proto, name) if direction == Direction::Ingress => {
                        ports.extend(named_port(pod, *proto, name).map(|n| (proto.number(), n, n)))
                    }
                    PortMatch::Named(proto, name) => named.push((*proto, name)),
                }
            }
            for addrs in peers {
                for (proto, name) in &named {
                    for peer in cluster.peers().filter(|q| addrs.contains(q.ip)) {
                        if let Some(number) = named_port(peer, *proto, name) {
                            grants.push(Grant {
                                addrs: Addrs::Hosts([peer.ip].into()),
                                ports: vec![(proto.number(), number, number)],
                            });
                        }
                    }
                }
                grants.push(Grant { addrs, ports: ports.clone() });
            }
        }
    }
    isolated.then_some(grants)
}

fn named_port(pod: &PodView, protocol: Protocol, name: &str) -> Option<u16> {
    pod.ports.iter().find(|p| p.name == name && p.protocol == protocol).map(|p| p.port)
}

/// The prefix entries for one pod and direction.
fn peer_rules(grants: &[Grant]) -> PeerRules {
    let mut prefixes: BTreeSet<(u32, u32)> = [(0, 0)].into();
    for grant in grants {
        match &grant.addrs {
            Addrs::All => {}
            Addrs::Hosts(hosts) => prefixes.extend(hosts.iter().map(|h| (u32::from(*h), u32::MAX))),
            Addrs::Block(cidr, except) => {
                prefixes.extend(std::iter::once(cidr).chain(except).map(|c| (c.network, c.mask)));
            }
        }
    }
    let mut rules = PeerRules::new();
    for (network, mask) in prefixes {
        let prefix = Cidr { network, mask };
        let ports = merge(grants.iter().filter(|g| g.addrs.holds(&prefix)).flat_map(|g| g.ports.iter().copied()));
        // Nothing under the default prefix is the same as no entry; a longer
        // empty one (an except) must stay, to hide the shorter one.
        if ports.is_empty() && mask == 0 {
            continue;
        }
        rules.insert((Ipv4Addr::from(network), prefix.prefix_len() as u8), ports);
    }
    rules
}

/// Sorted, overlapping and adjacent ranges of one protocol joined.
fn merge(ranges: impl Iterator<Item = (u8, u16, u16)>) -> PortRanges {
    let mut sorted: Vec<_> = ranges.collect();
    sorted.sort_unstable();
    let mut merged: PortRanges = Vec::new();
    for (proto, low, high) in sorted {
        match merged.last_mut() {
            Some((p, _, last)) if *p == proto && u32::from(low) <= u32::from(*last) + 1 => *last = (*last).max(high),
            _ => merged.push((proto, low, high)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_a_protocol_merge() {
        let merged = merge([(6, 80, 81), (6, 82, 90), (17, 80, 80), (6, 100, 200), (6, 150, 160)].into_iter());
        assert_eq!(merged, vec![(6, 80, 90), (6, 100, 200), (17, 80, 80)]);
    }
}
