//! The pods' host-side interfaces as the datapath knows them (`np_pod_ifaces`):
//! each interface's pod, the one address it may send from, and its network
//! namespace.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::Ebpf;
use nodeplane_datapath_abi::{self as abi, PodIface};

use crate::DatapathError;
use crate::maps::{hash, removed};

/// A pod behind its host-side interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodAt {
    /// The one address it may send from.
    pub addr: Ipv4Addr,
    /// Its network namespace's id as the node's sees it (the interface's
    /// `IFLA_LINK_NETNSID`): the datapath looks up the pod's sockets there.
    pub netns_id: Option<u32>,
}

/// The loaded datapath's pod interfaces (see [`crate::Datapath::pod_interfaces`]).
pub struct PodInterfaces<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl PodInterfaces<'_> {
    /// Makes the map hold `wanted` (ifindex → the pod's address and network
    /// namespace id) and nothing else, writing only what differs.
    pub fn set(&mut self, wanted: &BTreeMap<u32, PodAt>) -> Result<(), DatapathError> {
        let mut map = hash::<u32, PodIface>(self.ebpf, abi::POD_IFACES)?;
        let present: BTreeMap<u32, PodIface> = map.iter().collect::<Result<_, _>>()?;
        for (ifindex, pod) in wanted {
            let value = PodIface { addr: pod.addr.octets(), netns_id: pod.netns_id.unwrap_or(abi::NO_NETNS_ID) };
            if present.get(ifindex) != Some(&value) {
                map.insert(ifindex, value, 0)?;
            }
        }
        for ifindex in present.keys().filter(|i| !wanted.contains_key(i)) {
            removed(map.remove(ifindex))?;
        }
        Ok(())
    }

    /// What the map holds: ifindex → address.
    pub fn get(&mut self) -> Result<BTreeMap<u32, Ipv4Addr>, DatapathError> {
        let map = hash::<u32, PodIface>(self.ebpf, abi::POD_IFACES)?;
        map.iter().map(|entry| Ok(entry.map(|(index, pod)| (index, Ipv4Addr::from(pod.addr)))?)).collect()
    }
}
