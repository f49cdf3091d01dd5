//! NetworkPolicy compiled into the maps the datapath consults once per new
//! connection (`bpf/policy.h`):
//!
//! - `np_endpoints`: every pod of this node, with the directions its policies
//!   isolate;
//! - `np_policy`: per isolated pod and direction, peer prefixes → a port set.
//!   The longest prefix holding an address carries every rule that covers it
//!   (an `except` range is a longer prefix with fewer ports), so one lookup
//!   answers;
//! - `np_policy_ports`: port sets as prefixes of (set, protocol, port): a range
//!   is at most 30 prefixes, never one entry per port.
//!
//! Pod-selecting peers are resolved to the IPs of the pods they select; named
//! ports to the numbers of the pods that declare them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};

use crate::loader::removed;
use crate::maps::{
    self, ENDPOINT_F_ISOLATED_EGRESS, ENDPOINT_F_ISOLATED_INGRESS, EndpointValue, POLICY_EGRESS, POLICY_INGRESS,
    POLICY_PEER_BITS, PORT_MATCH_BITS, PolicyPeer, PolicyValue, PortMatch,
};
use crate::policy::{Cidr, Cluster, Peer, PodView, PortMatch as RulePort, Proto};
use crate::{Datapath, DatapathError};

/// Allowed ports: (IP protocol, first port, last port), merged and sorted.
pub type PortRanges = Vec<(u8, u16, u16)>;

/// A direction of traffic, as seen from the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn number(self) -> u8 {
        match self {
            Direction::Ingress => POLICY_INGRESS,
            Direction::Egress => POLICY_EGRESS,
        }
    }
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

const ALL_PROTOCOLS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];
/// ICMP (echo, by its identifier): a rule without ports allows it, as it allows
/// every protocol; a rule with ports never does.
pub const ICMP: u8 = 1;

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
                            cluster
                                .pods
                                .iter()
                                .filter(|q| cluster.peer_selects(policy, peer, q))
                                .map(|q| q.ip)
                                .collect(),
                        ),
                    })
                    .collect()
            };
            // Named ports are the destination's: the pod itself on ingress,
            // each peer pod on egress.
            let mut ports: PortRanges = Vec::new();
            let mut named = Vec::new();
            if rule.ports.is_empty() {
                ports.extend(ALL_PROTOCOLS.iter().map(|p| (p.number(), 0, u16::MAX)));
                ports.push((ICMP, 0, u16::MAX));
            }
            for port in &rule.ports {
                match port {
                    RulePort::Any(proto) => ports.push((proto.number(), 0, u16::MAX)),
                    RulePort::Range(proto, low, high) => ports.push((proto.number(), *low, *high)),
                    RulePort::Named(proto, name) if direction == Direction::Ingress => {
                        ports.extend(named_port(pod, *proto, name).map(|n| (proto.number(), n, n)))
                    }
                    RulePort::Named(proto, name) => named.push((*proto, name)),
                }
            }
            for addrs in peers {
                for (proto, name) in &named {
                    for peer in cluster.pods.iter().filter(|q| addrs.contains(q.ip)) {
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

fn named_port(pod: &PodView, protocol: Proto, name: &str) -> Option<u16> {
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

/// A port range as (port, prefix length) blocks.
pub fn port_prefixes(low: u16, high: u16) -> Vec<(u16, u8)> {
    let (mut low, high) = (u32::from(low), u32::from(high));
    let mut blocks = Vec::new();
    while low <= high {
        // The largest aligned block at `low` that stays within the range.
        let mut size = if low == 0 { 1 << 16 } else { 1 << low.trailing_zeros().min(16) };
        while low + size - 1 > high {
            size >>= 1;
        }
        blocks.push((low as u16, (16 - size.trailing_zeros()) as u8));
        low += size;
    }
    blocks
}

/// A port set's trie entries: (protocol, port, port prefix length).
type PortEntries = BTreeSet<(u8, u16, u8)>;

fn port_entries(ranges: &PortRanges) -> PortEntries {
    ranges
        .iter()
        .flat_map(|(proto, low, high)| port_prefixes(*low, *high).into_iter().map(move |(p, l)| (*proto, p, l)))
        .collect()
}

/// What programming the policy maps changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyStats {
    pub written: u64,
    pub removed: u64,
    pub port_sets: u64,
}

/// What the policy maps hold, as an instance last programmed them.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgrammedPolicy {
    /// Port set id → its trie entries.
    sets: BTreeMap<u32, PortEntries>,
    /// (prefix length, peer key) → port set id.
    rules: BTreeMap<(u32, PolicyPeer), u32>,
    /// Pod IP → isolation flags.
    endpoints: BTreeMap<[u8; 4], u32>,
}

fn port_key(set: u32, proto: u8, port: u16, length: u8) -> Key<PortMatch> {
    Key::new(PORT_MATCH_BITS + u32::from(length), PortMatch { port_set: set, proto, pad: 0, port: port.to_be_bytes() })
}

type PeerTrie<'a> = LpmTrie<&'a mut MapData, PolicyPeer, PolicyValue>;
type PortTrie<'a> = LpmTrie<&'a mut MapData, PortMatch, u8>;

impl Datapath {
    /// Programs `compiled` into the policy maps, writing only differences, in
    /// an order that never opens a gap: new port sets, then peer rules, then the
    /// pods' isolation flags; what is no longer wanted goes in reverse order.
    pub fn apply_policy(&mut self, compiled: &CompiledPolicy) -> Result<PolicyStats, DatapathError> {
        // What the maps hold: as this instance last left them, else read back (the
        // first apply, an earlier instance's maps, or after a failed apply).
        let present = match self.policy.take() {
            Some(state) => state,
            None => self.read_policy()?,
        };
        let mut stats = PolicyStats::default();
        // Port sets by content, so unchanged ones keep their ids.
        let mut ids: BTreeMap<PortEntries, u32> = present.sets.iter().map(|(id, e)| (e.clone(), *id)).collect();
        let mut next_id = present.sets.keys().max().copied().unwrap_or(0) + 1;
        let mut wanted_rules: BTreeMap<(u32, PolicyPeer), u32> = BTreeMap::new();
        let mut wanted_endpoints: BTreeMap<[u8; 4], u32> = BTreeMap::new();
        for (ip, rules) in &compiled.pods {
            let mut flags = 0;
            for (direction, peers, flag) in [
                (Direction::Ingress, &rules.ingress, ENDPOINT_F_ISOLATED_INGRESS),
                (Direction::Egress, &rules.egress, ENDPOINT_F_ISOLATED_EGRESS),
            ] {
                let Some(peers) = peers else { continue };
                flags |= flag;
                for ((peer, length), ranges) in peers {
                    let entries = port_entries(ranges);
                    let id = if entries.is_empty() {
                        0
                    } else if let Some(id) = ids.get(&entries) {
                        *id
                    } else {
                        let id = next_id;
                        next_id += 1;
                        let mut trie = self.port_trie()?;
                        for (proto, port, port_length) in &entries {
                            trie.insert(&port_key(id, *proto, *port, *port_length), 1, 0)?;
                        }
                        stats.port_sets += 1;
                        ids.insert(entries, id);
                        id
                    };
                    let data = PolicyPeer {
                        pod: ip.octets(),
                        direction: direction.number(),
                        pad: [0; 3],
                        peer: peer.octets(),
                    };
                    wanted_rules.insert((POLICY_PEER_BITS + u32::from(*length), data), id);
                }
            }
            wanted_endpoints.insert(ip.octets(), flags);
        }

        let mut trie = self.peer_trie()?;
        for (&(length, data), &port_set) in &wanted_rules {
            if present.rules.get(&(length, data)) != Some(&port_set) {
                trie.insert(&Key::new(length, data), PolicyValue { port_set }, 0)?;
                stats.written += 1;
            }
        }
        let mut endpoints = self.endpoints_map()?;
        for (&ip, &flags) in &wanted_endpoints {
            if present.endpoints.get(&ip) != Some(&flags) {
                endpoints.insert(ip, EndpointValue { flags }, 0)?;
                stats.written += 1;
            }
        }
        for ip in present.endpoints.keys().filter(|ip| !wanted_endpoints.contains_key(*ip)) {
            removed(endpoints.remove(ip))?;
            stats.removed += 1;
        }
        let mut trie = self.peer_trie()?;
        for (length, data) in present.rules.keys().filter(|k| !wanted_rules.contains_key(*k)) {
            removed(trie.remove(&Key::new(*length, *data)))?;
            stats.removed += 1;
        }
        let used: BTreeSet<u32> = wanted_rules.values().copied().collect();
        let mut trie = self.port_trie()?;
        for (id, entries) in present.sets.iter().filter(|(id, _)| !used.contains(id)) {
            for (proto, port, port_length) in entries {
                removed(trie.remove(&port_key(*id, *proto, *port, *port_length)))?;
            }
        }
        let sets = ids.into_iter().filter(|(_, id)| used.contains(id)).map(|(entries, id)| (id, entries)).collect();
        self.policy = Some(ProgrammedPolicy { sets, rules: wanted_rules, endpoints: wanted_endpoints });
        Ok(stats)
    }

    /// The policy maps' contents, read back.
    fn read_policy(&mut self) -> Result<ProgrammedPolicy, DatapathError> {
        let mut state = ProgrammedPolicy::default();
        for entry in self.port_trie()?.iter() {
            let (key, _) = entry?;
            let data = key.data();
            let length = (key.prefix_len() - PORT_MATCH_BITS) as u8;
            state.sets.entry(data.port_set).or_default().insert((data.proto, u16::from_be_bytes(data.port), length));
        }
        for entry in self.peer_trie()?.iter() {
            let (key, value) = entry?;
            state.rules.insert((key.prefix_len(), key.data()), value.port_set);
        }
        for entry in self.endpoints_map()?.iter() {
            let (ip, value) = entry?;
            state.endpoints.insert(ip, value.flags);
        }
        Ok(state)
    }

    fn peer_trie(&mut self) -> Result<PeerTrie<'_>, DatapathError> {
        Ok(LpmTrie::try_from(self.map(maps::POLICY)?)?)
    }

    fn port_trie(&mut self) -> Result<PortTrie<'_>, DatapathError> {
        Ok(LpmTrie::try_from(self.map(maps::POLICY_PORTS)?)?)
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], EndpointValue>, DatapathError> {
        Ok(HashMap::try_from(self.map(maps::ENDPOINTS)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_few_aligned_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 81), vec![(80, 15)]);
        assert_eq!(port_prefixes(81, 82), vec![(81, 16), (82, 16)]);
        let blocks = port_prefixes(1, u16::MAX);
        assert!(blocks.len() <= 16, "{blocks:?}");
        // Every port of a range is covered exactly once, nothing outside it.
        for (low, high) in [(1000, 2000), (32768, 65535), (1, 1023), (5, 6)] {
            let covered: Vec<u32> = port_prefixes(low, high)
                .into_iter()
                .flat_map(|(p, l)| u32::from(p)..u32::from(p) + (1u32 << (16 - l)))
                .collect();
            assert_eq!(covered, (u32::from(low)..=u32::from(high)).collect::<Vec<_>>());
            assert!(port_prefixes(low, high).len() <= 30);
        }
    }

    #[test]
    fn ranges_of_a_protocol_merge() {
        let merged = merge([(6, 80, 81), (6, 82, 90), (17, 80, 80), (6, 100, 200), (6, 150, 160)].into_iter());
        assert_eq!(merged, vec![(6, 80, 90), (6, 100, 200), (17, 80, 80)]);
    }
}
