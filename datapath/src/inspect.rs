//! Reading the pinned maps directly, without the supervisor: what
//! `nodeplanectl services`, `endpoints` and `conntrack` show, so they work even
//! while nodeplaned is down; and each map's capacity, fill and memory, which
//! nodeplaned counts off its own thread.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap, LpmTrie, Map, MapData};
use nodeplane_datapath_abi::{self as abi, BackendKey, BackendValue, CtKey, CtValue, SvcKey, SvcValue};
use nodeplane_model::ip_protocol_name;

use crate::capacity::Footprint;
use crate::conntrack::{lifetime, monotonic_ns};
use crate::{CtTimeouts, DatapathError};

/// A programmed Service port and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub vip: Ipv4Addr,
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub service_id: u32,
    pub affinity_timeout_s: u32,
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// A NodePort at the node's IP rather than a ClusterIP.
    pub node_port: bool,
}

/// A conntrack entry and how long it has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowView {
    pub key: CtKey,
    pub value: CtValue,
    pub remaining: Duration,
}

fn pinned<K: aya::Pod, V: aya::Pod>(root: &Path, name: &'static str) -> Result<HashMap<MapData, K, V>, DatapathError> {
    let data = MapData::from_pin(root.join(name))?;
    Ok(HashMap::try_from(Map::from_map_data(data)?)?)
}

/// Every programmed Service port, sorted by VIP, port and protocol.
pub fn services(root: &Path) -> Result<Vec<ServiceView>, DatapathError> {
    let services: HashMap<MapData, SvcKey, SvcValue> = pinned(root, abi::SERVICES)?;
    let backends: HashMap<MapData, BackendKey, BackendValue> = pinned(root, abi::BACKENDS)?;
    let mut views = Vec::new();
    for entry in services.iter() {
        let (key, value) = entry?;
        let backends = (0..u32::from(value.backend_count))
            .filter_map(|slot| backends.get(&BackendKey { service_id: value.service_id, slot }, 0).ok())
            .map(|b| (Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port)))
            .collect();
        views.push(ServiceView {
            vip: Ipv4Addr::from(key.vip),
            port: u16::from_be_bytes(key.port),
            protocol: ip_protocol_name(key.proto),
            service_id: value.service_id,
            affinity_timeout_s: value.affinity_timeout_s,
            backends,
            node_port: value.flags & abi::SVC_F_NODE_PORT != 0,
        });
    }
    views.sort_by_key(|v| (v.vip, v.port, v.protocol));
    Ok(views)
}

/// Every conntrack entry with its remaining lifetime under `timeouts`.
pub fn conntrack(root: &Path, timeouts: CtTimeouts) -> Result<Vec<FlowView>, DatapathError> {
    let map: HashMap<MapData, CtKey, CtValue> = pinned(root, abi::CONNTRACK)?;
    let now = monotonic_ns();
    let mut flows = Vec::new();
    for entry in map.iter() {
        let (key, value) = entry?;
        let lifetime = lifetime(&key, &value, timeouts);
        let age = Duration::from_nanos(now.saturating_sub(value.last_seen_ns));
        flows.push(FlowView { key, value, remaining: lifetime.saturating_sub(age) });
    }
    flows.sort_by_key(|f| (f.key.proto, f.key.saddr, f.key.sport, f.key.daddr, f.key.dport));
    Ok(flows)
}

/// Socket-level load balancing for the node's processes, as pinned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketLbView {
    /// The hooks with a pinned cgroup link (`sock_connect`, …).
    pub hooks: Vec<String>,
    /// Unconnected UDP sockets' backends whose replies are reported from a VIP.
    pub udp_reverse_entries: usize,
}

pub fn socket_lb(root: &Path) -> Result<SocketLbView, DatapathError> {
    let hooks = crate::pins::cgroup_hooks(root)?;
    let reverse: HashMap<MapData, abi::SockRevnatKey, abi::SockRevnatValue> = pinned(root, abi::SOCK_REVNAT)?;
    Ok(SocketLbView { hooks, udp_reverse_entries: reverse.keys().count() })
}

/// The datapath's policy drops, read from the pinned ring buffer. It has one
/// reader: nodeplaned, which forwards them (`nodeplanectl monitor`). Poll its
/// descriptor for readability, then [`drain`](Self::drain).
pub struct PolicyEvents {
    ring: aya::maps::RingBuf<MapData>,
}

impl PolicyEvents {
    /// The events waiting, oldest first.
    pub fn drain(&mut self) -> Vec<abi::PolicyEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= std::mem::size_of::<abi::PolicyEvent>() {
                // SAFETY: the program writes a whole struct policy_event (checked
                // against this twin's layout by the BTF test); read unaligned.
                events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<abi::PolicyEvent>()) });
            }
        }
        events
    }
}

impl std::os::fd::AsRawFd for PolicyEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// Opens the pinned policy event ring under `root`.
pub fn policy_events(root: &Path) -> Result<PolicyEvents, DatapathError> {
    let data = MapData::from_pin(root.join(abi::POLICY_EVENTS))?;
    let ring = aya::maps::RingBuf::try_from(Map::from_map_data(data)?)?;
    Ok(PolicyEvents { ring })
}

/// A map as pinned: its capacity, what it holds and what that costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: &'static str,
    pub capacity: u32,
    /// `None` where entries are not counted (arrays, the ring buffer).
    pub entries: Option<u64>,
    /// Kernel memory, estimated: what is reserved, and what the entries take.
    pub bytes: u64,
}

/// Each map under `root` with its capacity, entries and memory. Entries are
/// counted by walking the map, a syscall each (not the arrays and the ring
/// buffer), except conntrack's, `conntrack_entries` (its GC counts them).
pub fn map_usage(root: &Path, conntrack_entries: u64) -> Result<Vec<MapUsage>, DatapathError> {
    let mut usage = Vec::new();
    for (name, _) in abi::MAPS {
        let data = MapData::from_pin(root.join(name))?;
        let info = data.info()?;
        let map_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        let footprint =
            Footprint::of(map_type, info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
        let entries = if *name == abi::CONNTRACK { Some(conntrack_entries) } else { count_entries(data, name)? };
        usage.push(MapUsage {
            name,
            capacity: info.max_entries(),
            entries,
            bytes: footprint.bytes(entries.unwrap_or(0)),
        });
    }
    Ok(usage)
}

/// The keys in the map `name`, walked; `None` for the maps that are not walked.
fn count_entries(data: MapData, name: &'static str) -> Result<Option<u64>, DatapathError> {
    fn keys<K: aya::Pod, V: aya::Pod>(data: MapData) -> Result<Option<u64>, DatapathError> {
        let map: HashMap<MapData, K, V> = HashMap::try_from(Map::from_map_data(data)?)?;
        Ok(Some(map.keys().filter(Result::is_ok).count() as u64))
    }
    fn trie_keys<K: aya::Pod, V: aya::Pod>(data: MapData) -> Result<Option<u64>, DatapathError> {
        let map: LpmTrie<MapData, K, V> = LpmTrie::try_from(Map::from_map_data(data)?)?;
        Ok(Some(map.keys().filter(Result::is_ok).count() as u64))
    }
    match name {
        abi::SERVICES => keys::<SvcKey, SvcValue>(data),
        abi::BACKENDS => keys::<BackendKey, BackendValue>(data),
        abi::BACKEND_ALIVE => keys::<abi::BackendId, u8>(data),
        abi::AFFINITY => keys::<abi::AffinityKey, abi::AffinityValue>(data),
        abi::SOCK_REVNAT => keys::<abi::SockRevnatKey, abi::SockRevnatValue>(data),
        abi::ENDPOINTS => keys::<[u8; 4], abi::EndpointValue>(data),
        abi::CT_OPENED | abi::CT_CLOSED => keys::<[u8; 4], u64>(data),
        abi::FRAGMENTS => keys::<abi::FragKey, abi::FragValue>(data),
        abi::POD_IFACES => keys::<u32, abi::PodIface>(data),
        abi::POLICY => trie_keys::<abi::PolicyPeer, abi::PolicyValue>(data),
        abi::POLICY_PORTS => trie_keys::<abi::PortMatch, u8>(data),
        _ => Ok(None),
    }
}
