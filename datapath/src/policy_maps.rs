//! NetworkPolicy as the maps hold it (`bpf/policy.h`), written from what
//! `nodeplane-model` compiled:
//!
//! - `np_endpoints`: every pod of this node, with the directions its policies
//!   isolate;
//! - `np_policy`: per isolated pod and direction, peer prefixes → a port set;
//! - `np_policy_ports`: port sets as prefixes of (set, protocol, port): a range
//!   is at most 30 prefixes, never one entry per port.
//!
//! Updates are diffs against what this instance last programmed (the maps are
//! read back only at the first apply, or after a failed one).

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use nodeplane_datapath_abi::{
    self as abi, ENDPOINT_F_ISOLATED_EGRESS, ENDPOINT_F_ISOLATED_INGRESS, EndpointValue, POLICY_EGRESS, POLICY_INGRESS,
    POLICY_PEER_BITS, PORT_MATCH_BITS, PolicyPeer, PolicyValue, PortMatch,
};
use nodeplane_model::compile::{CompiledPolicy, Direction, PortRanges};

use crate::DatapathError;
use crate::maps::{hash, map, removed};

fn direction_number(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => POLICY_INGRESS,
        Direction::Egress => POLICY_EGRESS,
    }
}

/// A port range as (port, prefix length) blocks.
pub(crate) fn port_prefixes(low: u16, high: u16) -> Vec<(u16, u8)> {
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

impl ProgrammedPolicy {
    /// What the maps must hold for `compiled`. Port sets are numbered by content:
    /// one `present` holds keeps its id, a new one takes a fresh id.
    fn wanted(compiled: &CompiledPolicy, present: &ProgrammedPolicy) -> ProgrammedPolicy {
        let mut ids: BTreeMap<PortEntries, u32> = present.sets.iter().map(|(id, e)| (e.clone(), *id)).collect();
        let mut next_id = present.sets.keys().max().copied().unwrap_or(0) + 1;
        let mut wanted = ProgrammedPolicy::default();
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
                    let port_set = if entries.is_empty() {
                        0
                    } else {
                        let id = *ids.entry(entries.clone()).or_insert_with(|| {
                            next_id += 1;
                            next_id - 1
                        });
                        wanted.sets.insert(id, entries);
                        id
                    };
                    let data = PolicyPeer {
                        pod: ip.octets(),
                        direction: direction_number(direction),
                        pad: [0; 3],
                        peer: peer.octets(),
                    };
                    wanted.rules.insert((POLICY_PEER_BITS + u32::from(*length), data), port_set);
                }
            }
            wanted.endpoints.insert(ip.octets(), flags);
        }
        wanted
    }
}

fn port_key(set: u32, proto: u8, port: u16, length: u8) -> Key<PortMatch> {
    Key::new(PORT_MATCH_BITS + u32::from(length), PortMatch { port_set: set, proto, pad: 0, port: port.to_be_bytes() })
}

type PeerTrie<'a> = LpmTrie<&'a mut MapData, PolicyPeer, PolicyValue>;
type PortTrie<'a> = LpmTrie<&'a mut MapData, PortMatch, u8>;

/// The loaded datapath's policy maps (see [`crate::Datapath::policy`]).
pub struct PolicyMaps<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
    /// What this instance last wrote (`None`: read the maps back).
    pub(crate) programmed: &'a mut Option<ProgrammedPolicy>,
}

impl PolicyMaps<'_> {
    /// Programs `compiled` into the policy maps, writing only differences, in
    /// an order that never opens a gap: new port sets, then peer rules, then the
    /// pods' isolation flags; what is no longer wanted goes in reverse order.
    pub fn apply(&mut self, compiled: &CompiledPolicy) -> Result<PolicyStats, DatapathError> {
        // What the maps hold: as this instance last left them, else read back (the
        // first apply, an earlier instance's maps, or after a failed apply).
        let present = match self.programmed.take() {
            Some(state) => state,
            None => self.read_policy()?,
        };
        let wanted = ProgrammedPolicy::wanted(compiled, &present);
        let mut stats = PolicyStats::default();
        let mut trie = self.port_trie()?;
        for (id, entries) in wanted.sets.iter().filter(|(id, _)| !present.sets.contains_key(id)) {
            for (proto, port, port_length) in entries {
                trie.insert(&port_key(*id, *proto, *port, *port_length), 1, 0)?;
            }
            stats.port_sets += 1;
        }
        let mut trie = self.peer_trie()?;
        for (&(length, data), &port_set) in &wanted.rules {
            if present.rules.get(&(length, data)) != Some(&port_set) {
                trie.insert(&Key::new(length, data), PolicyValue { port_set }, 0)?;
                stats.written += 1;
            }
        }
        let mut endpoints = self.endpoints_map()?;
        for (&ip, &flags) in &wanted.endpoints {
            if present.endpoints.get(&ip) != Some(&flags) {
                endpoints.insert(ip, EndpointValue { flags }, 0)?;
                stats.written += 1;
            }
        }
        for ip in present.endpoints.keys().filter(|ip| !wanted.endpoints.contains_key(*ip)) {
            removed(endpoints.remove(ip))?;
            stats.removed += 1;
        }
        let mut trie = self.peer_trie()?;
        for (length, data) in present.rules.keys().filter(|k| !wanted.rules.contains_key(*k)) {
            removed(trie.remove(&Key::new(*length, *data)))?;
            stats.removed += 1;
        }
        let mut trie = self.port_trie()?;
        for (id, entries) in present.sets.iter().filter(|(id, _)| !wanted.sets.contains_key(id)) {
            for (proto, port, port_length) in entries {
                removed(trie.remove(&port_key(*id, *proto, *port, *port_length)))?;
            }
        }
        *self.programmed = Some(wanted);
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
        Ok(LpmTrie::try_from(map(self.ebpf, abi::POLICY)?)?)
    }

    fn port_trie(&mut self) -> Result<PortTrie<'_>, DatapathError> {
        Ok(LpmTrie::try_from(map(self.ebpf, abi::POLICY_PORTS)?)?)
    }

    fn endpoints_map(&mut self) -> Result<HashMap<&mut MapData, [u8; 4], EndpointValue>, DatapathError> {
        hash(self.ebpf, abi::ENDPOINTS)
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
}
