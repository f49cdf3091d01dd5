//! Service load balancing as the maps hold it: a Service port's entry at its
//! VIP (or, for a NodePort, the node's IP) and its backend slots, written so
//! that a packet never picks an empty slot; and the [`Reconciler`] that turns
//! desired Service ports into map updates, incrementally: it is given only
//! the Services that changed, writes only ports whose VIP, backends or
//! affinity changed, and removes ports no longer desired — including ones a
//! previous nodeplaned programmed. Service ids
//! are read back from the maps, so they survive a restart. A port with a
//! NodePort is a second map entry, at the node's IP, with the same backends.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::MapData;
use nodeplane_datapath_abi::{self as abi, BackendId, BackendKey, BackendValue, SvcKey, SvcValue};
use nodeplane_model::Protocol;
use nodeplane_model::manifests::ServicePort;

use crate::DatapathError;
use crate::maps::{hash, removed};

/// A Service port as the datapath balances it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Unique per Service port; names its backend slots.
    pub id: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub backends: Vec<(Ipv4Addr, u16)>,
    /// sessionAffinity: ClientIP, with its timeout.
    pub affinity: Option<Duration>,
    /// A NodePort (`vip` is the node's IP): only packets that can start a
    /// connection open a flow, and never one a local socket owns.
    pub node_port: bool,
}

impl Service {
    fn key(&self) -> SvcKey {
        SvcKey { vip: self.vip.octets(), port: self.port.to_be_bytes(), proto: self.protocol.number(), pad: 0 }
    }
}

/// The loaded datapath's Service maps (see [`crate::Datapath::services`]).
pub struct ServiceMaps<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl ServiceMaps<'_> {
    fn services(&mut self) -> Result<aya::maps::HashMap<&mut MapData, SvcKey, SvcValue>, DatapathError> {
        hash(self.ebpf, abi::SERVICES)
    }

    /// The Service ports in the map: (VIP, port, protocol) → the map's value.
    pub fn programmed(&mut self) -> Result<Vec<(SvcKey, SvcValue)>, DatapathError> {
        Ok(self.services()?.iter().collect::<Result<_, _>>()?)
    }

    /// Programs a Service port with its backends (and, for sessionAffinity
    /// ClientIP, how long a client keeps its backend). Backend slots are written
    /// before the count that makes them reachable, and dropped after it shrinks, so
    /// a packet never picks an empty slot. Backends no longer listed stop being
    /// alive: no new flow goes to them, and their UDP flows move.
    pub fn set(&mut self, service: &Service) -> Result<(), DatapathError> {
        let count = u16::try_from(service.backends.len())
            .map_err(|_| DatapathError::TooManyBackends { count: service.backends.len(), max: u16::MAX as usize })?;
        let id = service.id;
        let key = service.key();
        let previous = self.services()?.get(&key, 0).map(|v| v.backend_count).unwrap_or(0);
        let mut slots = hash::<BackendKey, BackendValue>(self.ebpf, abi::BACKENDS)?;
        let old: Vec<BackendValue> = (0..u32::from(previous))
            .filter_map(|slot| slots.get(&BackendKey { service_id: id, slot }, 0).ok())
            .collect();
        let new: Vec<BackendValue> = service
            .backends
            .iter()
            .map(|(addr, port)| BackendValue { addr: addr.octets(), port: port.to_be_bytes(), pad: 0 })
            .collect();
        for (slot, value) in new.iter().enumerate() {
            slots.insert(BackendKey { service_id: id, slot: slot as u32 }, *value, 0)?;
        }
        let alive_id = |b: &BackendValue| BackendId { service_id: id, addr: b.addr, port: b.port, pad: 0 };
        let mut alive = hash::<BackendId, u8>(self.ebpf, abi::BACKEND_ALIVE)?;
        for backend in &new {
            alive.insert(alive_id(backend), 1, 0)?;
        }
        let affinity_timeout_s = service.affinity.map_or(0, |d| d.as_secs().clamp(1, u64::from(u32::MAX)) as u32);
        self.services()?.insert(
            key,
            SvcValue {
                service_id: id,
                backend_count: count,
                flags: if service.node_port { abi::SVC_F_NODE_PORT } else { 0 },
                affinity_timeout_s,
            },
            0,
        )?;
        let mut alive = hash::<BackendId, u8>(self.ebpf, abi::BACKEND_ALIVE)?;
        for gone in old.iter().filter(|b| !new.contains(b)) {
            removed(alive.remove(&alive_id(gone)))?;
        }
        let mut slots = hash::<BackendKey, BackendValue>(self.ebpf, abi::BACKENDS)?;
        for slot in count..previous {
            removed(slots.remove(&BackendKey { service_id: id, slot: u32::from(slot) }))?;
        }
        Ok(())
    }

    /// Removes a Service port: the service entry first (no new flow finds it),
    /// then its backend slots and their alive marks.
    pub fn remove(&mut self, key: &SvcKey) -> Result<(), DatapathError> {
        let Ok(value) = self.services()?.get(key, 0) else { return Ok(()) };
        removed(self.services()?.remove(key))?;
        let id = value.service_id;
        let mut slots = hash::<BackendKey, BackendValue>(self.ebpf, abi::BACKENDS)?;
        let mut gone = Vec::new();
        for slot in 0..u32::from(value.backend_count) {
            let key = BackendKey { service_id: id, slot };
            if let Ok(backend) = slots.get(&key, 0) {
                gone.push(backend);
            }
            removed(slots.remove(&key))?;
        }
        let mut alive = hash::<BackendId, u8>(self.ebpf, abi::BACKEND_ALIVE)?;
        for backend in gone {
            removed(alive.remove(&BackendId { service_id: id, addr: backend.addr, port: backend.port, pad: 0 }))?;
        }
        Ok(())
    }
}

/// What one reconciliation changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub added: u64,
    pub updated: u64,
    pub removed: u64,
    pub unchanged: u64,
    /// Ports that could not be programmed or removed, and why.
    pub failed: Vec<String>,
}

/// Remembers what it programmed, by Service, to write only differences: a
/// sync is given the Services that changed (or every one), and costs what
/// they hold, not the size of the maps. The maps are read back only when what
/// it remembers may not be what they hold: at its first sync (a previous
/// nodeplaned's ports, their ids) and after a failure; such a sync must be
/// given every Service ([`Reconciler::in_sync`]).
#[derive(Default)]
pub struct Reconciler {
    /// Each map entry it wrote, with the Service (`namespace/name`) that owns it.
    programmed: HashMap<SvcKey, (String, Service)>,
    /// Each Service's entries.
    owned: HashMap<String, Vec<SvcKey>>,
    /// `programmed` is what the map holds, and `next_id` is free.
    in_sync: bool,
    next_id: u32,
}

/// The map entries of a Service port: its VIP, and its NodePort on `node_ip`.
fn entries(port: &ServicePort, node_ip: Option<Ipv4Addr>) -> impl Iterator<Item = Service> + '_ {
    let service = |vip, number, node_port, backends: &Vec<_>| Service {
        id: 0,
        vip,
        port: number,
        protocol: port.protocol,
        backends: backends.clone(),
        affinity: port.affinity,
        node_port,
    };
    let node_port = node_ip.zip(port.node_port).map(|(ip, number)| service(ip, number, true, &port.node_port_backends));
    std::iter::once(service(port.vip, port.port, false, &port.backends)).chain(node_port)
}

impl Reconciler {
    /// Whether it knows what the maps hold: if not, the next sync must be
    /// given every Service.
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// Programs `services` (each Service's key and all of its ports; none for
    /// a Service gone), with NodePorts at `node_ip`. With `everything`, those
    /// are all the Services there are, and any other entry in the maps is
    /// removed. An entry two Services claim stays the first one's.
    pub fn sync(
        &mut self,
        maps: &mut ServiceMaps<'_>,
        services: &[(String, Vec<ServicePort>)],
        everything: bool,
        node_ip: Option<Ipv4Addr>,
    ) -> Result<SyncStats, DatapathError> {
        // Key → service id of what the map holds, when that is not known.
        let mut in_maps: HashMap<SvcKey, u32> = HashMap::new();
        if !self.in_sync {
            in_maps = maps.programmed()?.into_iter().map(|(key, value)| (key, value.service_id)).collect();
            self.next_id = in_maps.values().max().unwrap_or(&0) + 1;
            for (key, (_, service)) in &self.programmed {
                in_maps.entry(*key).or_insert(service.id);
            }
            (self.programmed, self.owned) = (HashMap::new(), HashMap::new());
        }
        let mut stats = SyncStats::default();
        let wanted: Vec<(&String, Vec<(&ServicePort, Service)>)> = services
            .iter()
            .map(|(owner, ports)| {
                (owner, ports.iter().flat_map(|p| entries(p, node_ip).map(move |s| (p, s))).collect())
            })
            .collect();
        // Entries their Services no longer have go first: another may take them.
        let mut gone: Vec<SvcKey> = Vec::new();
        for (owner, entries) in &wanted {
            let keep: HashSet<SvcKey> = entries.iter().map(|(_, s)| s.key()).collect();
            let old = self.owned.remove(*owner).unwrap_or_default();
            gone.extend(old.into_iter().filter(|k| !keep.contains(k)));
        }
        if everything {
            let listed: HashSet<&String> = services.iter().map(|(owner, _)| owner).collect();
            let others: Vec<String> = self.owned.keys().filter(|o| !listed.contains(o)).cloned().collect();
            for owner in others {
                gone.extend(self.owned.remove(&owner).unwrap_or_default());
            }
            let claimed: HashSet<SvcKey> = wanted.iter().flat_map(|(_, e)| e.iter().map(|(_, s)| s.key())).collect();
            gone.extend(in_maps.keys().filter(|k| !claimed.contains(k)));
        }
        for key in gone {
            self.programmed.remove(&key);
            match maps.remove(&key) {
                Ok(()) => stats.removed += 1,
                Err(err) => stats.failed.push(format!("removing {key:?}: {err}")),
            }
        }
        for (owner, entries) in wanted {
            let mut owned = Vec::new();
            for (port, mut service) in entries {
                let key = service.key();
                let current = self.programmed.get(&key);
                if let Some((other, _)) = current.filter(|(other, _)| other != owner) {
                    stats.failed.push(format!("{}: {}:{} is {other}'s already", port.name, service.vip, service.port));
                    continue;
                }
                service.id = match current.map(|(_, s)| s.id).or_else(|| in_maps.get(&key).copied()) {
                    Some(id) => id,
                    None => {
                        self.next_id += 1;
                        self.next_id - 1
                    }
                };
                match current {
                    Some((_, programmed)) if *programmed == service => stats.unchanged += 1,
                    _ => match maps.set(&service) {
                        Ok(()) if current.is_some() || in_maps.contains_key(&key) => stats.updated += 1,
                        Ok(()) => stats.added += 1,
                        // One bad port must not hold up the others: report it, go on.
                        Err(err) => {
                            stats.failed.push(format!("{}: {err}", port.name));
                            continue;
                        }
                    },
                }
                owned.push(key);
                self.programmed.insert(key, (owner.clone(), service));
            }
            if !owned.is_empty() {
                self.owned.insert(owner.clone(), owned);
            }
        }
        self.in_sync = stats.failed.is_empty();
        Ok(stats)
    }

    /// Service ports and their backends in the map: what it programmed, or
    /// (before its first sync, or after a failure) what the map holds.
    pub fn counts(&self, maps: &mut ServiceMaps<'_>) -> Result<(u64, u64), DatapathError> {
        if self.in_sync {
            let backends = self.programmed.values().map(|(_, s)| s.backends.len() as u64).sum();
            return Ok((self.programmed.len() as u64, backends));
        }
        let programmed = maps.programmed()?;
        Ok((programmed.len() as u64, programmed.iter().map(|(_, v)| u64::from(v.backend_count)).sum()))
    }
}
