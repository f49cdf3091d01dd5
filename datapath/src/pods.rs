//! The pods' host-side interfaces as the datapath knows them (`np_pod_ifaces`):
//! each interface's pod and the one address it may send from.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::Ebpf;
use nodeplane_datapath_abi::{self as abi, PodIface};

use crate::DatapathError;
use crate::maps::{hash, removed};

/// The loaded datapath's pod interfaces (see [`crate::Datapath::pod_interfaces`]).
pub struct PodInterfaces<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl PodInterfaces<'_> {
    /// Makes the map hold `wanted` (ifindex → the pod's address) and nothing
    /// else, writing only what differs.
    pub fn set(&mut self, wanted: &BTreeMap<u32, Ipv4Addr>) -> Result<(), DatapathError> {
        let mut map = hash::<u32, PodIface>(self.ebpf, abi::POD_IFACES)?;
        let present: BTreeMap<u32, PodIface> = map.iter().collect::<Result<_, _>>()?;
        for (ifindex, addr) in wanted {
            let value = PodIface { addr: addr.octets() };
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
