//! Loads the load balancer, pins its maps under a bpffs directory (a second load
//! reuses them), attaches it to pods' host-side interfaces, and programs Services.

use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap, MapData};
use aya::programs::tc::{self, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::maps::{self, BackendKey, BackendValue, SvcKey, SvcValue};

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("adding the clsact qdisc to {interface}: {source}")]
    Clsact { interface: String, source: tc::TcError },
    #[error("the object has no {0}")]
    Missing(&'static str),
    #[error("a Service may have at most {max} backends, not {count}")]
    TooManyBackends { count: usize, max: usize },
}

/// The transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

const PROGRAM: &str = "from_pod";

/// The loaded datapath. Dropping it detaches the program from the interfaces it
/// was attached to; the maps stay pinned.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the load balancer; its maps are pinned in (or reused from) `pin_dir`,
    /// which must be on a bpffs.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(pin_dir).load(crate::LB_OBJECT)?;
        program(&mut ebpf)?.load()?;
        Ok(Datapath { ebpf })
    }

    /// Attaches the load balancer to tc ingress of `interface` (a pod's host-side
    /// veth): TCX on kernels that have it, else netlink clsact.
    pub fn attach_pod_interface(&mut self, interface: &str) -> Result<(), DatapathError> {
        // Netlink attachment (kernels before 6.6) needs the qdisc; TCX ignores it.
        match tc::qdisc_add_clsact(interface) {
            Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
            Err(source) => return Err(DatapathError::Clsact { interface: interface.to_owned(), source }),
        }
        program(&mut self.ebpf)?.attach(interface, TcAttachType::Ingress)?;
        Ok(())
    }

    /// Programs a Service port with its backends. Backend slots are written before
    /// the count that makes them reachable, and dropped after it shrinks, so a
    /// packet never picks an empty slot.
    pub fn set_service(
        &mut self,
        service_id: u32,
        vip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        backends: &[(Ipv4Addr, u16)],
    ) -> Result<(), DatapathError> {
        let count = u16::try_from(backends.len())
            .map_err(|_| DatapathError::TooManyBackends { count: backends.len(), max: u16::MAX as usize })?;
        let key = SvcKey { vip: vip.octets(), port: port.to_be_bytes(), proto: protocol.number(), pad: 0 };
        let previous = services(&mut self.ebpf)?.get(&key, 0).map(|v| v.backend_count).unwrap_or(0);
        {
            let mut slots = backend_map(&mut self.ebpf)?;
            for (slot, (addr, port)) in backends.iter().enumerate() {
                let value = BackendValue { addr: addr.octets(), port: port.to_be_bytes(), pad: 0 };
                slots.insert(BackendKey { service_id, slot: slot as u32 }, value, 0)?;
            }
        }
        services(&mut self.ebpf)?.insert(key, SvcValue { service_id, backend_count: count, pad: 0 }, 0)?;
        let mut slots = backend_map(&mut self.ebpf)?;
        for slot in count..previous {
            slots.remove(&BackendKey { service_id, slot: u32::from(slot) })?;
        }
        Ok(())
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    Ok(ebpf.program_mut(PROGRAM).ok_or(DatapathError::Missing("program from_pod"))?.try_into()?)
}

fn services(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, SvcKey, SvcValue>, DatapathError> {
    Ok(HashMap::try_from(ebpf.map_mut(maps::SERVICES).ok_or(DatapathError::Missing("map np_services"))?)?)
}

fn backend_map(ebpf: &mut Ebpf) -> Result<HashMap<&mut MapData, BackendKey, BackendValue>, DatapathError> {
    Ok(HashMap::try_from(ebpf.map_mut(maps::BACKENDS).ok_or(DatapathError::Missing("map np_backends"))?)?)
}
