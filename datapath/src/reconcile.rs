//! Turns desired Service ports into map updates, incrementally: only ports whose
//! VIP, backends or affinity changed are written, and ports no longer desired —
//! including ones a previous nodeplaned programmed — are removed. Service ids are
//! read back from the maps, so they survive a restart. A port with a NodePort is
//! a second map entry, at the node's IP, with the same backends.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::manifests::ServicePort;
use crate::maps::{SvcKey, SvcValue};
use crate::{Datapath, DatapathError, Service};

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

/// Remembers what it programmed, to write only differences.
#[derive(Default)]
pub struct Reconciler {
    programmed: HashMap<SvcKey, Service>,
}

fn map_key(service: &Service) -> SvcKey {
    SvcKey { vip: service.vip.octets(), port: service.port.to_be_bytes(), proto: service.protocol.number(), pad: 0 }
}

/// The map entries of a Service port: its VIP, and its NodePort on `node_ip`.
fn entries(port: &ServicePort, node_ip: Option<Ipv4Addr>) -> impl Iterator<Item = Service> + '_ {
    let service = |vip, number, node_port| Service {
        id: 0,
        vip,
        port: number,
        protocol: port.protocol,
        backends: port.backends.clone(),
        affinity: port.affinity,
        node_port,
    };
    let node_port = node_ip.zip(port.node_port).map(|(ip, number)| service(ip, number, true));
    std::iter::once(service(port.vip, port.port, false)).chain(node_port)
}

impl Reconciler {
    /// Programs `desired`, with NodePorts at `node_ip` (none without one).
    pub fn sync(
        &mut self,
        datapath: &mut Datapath,
        desired: &[ServicePort],
        node_ip: Option<Ipv4Addr>,
    ) -> Result<SyncStats, DatapathError> {
        let in_maps: HashMap<SvcKey, SvcValue> = datapath.programmed()?.into_iter().collect();
        let mut next_id = in_maps.values().map(|v| v.service_id).max().unwrap_or(0) + 1;
        let mut stats = SyncStats::default();
        let mut wanted = std::collections::HashSet::new();
        let mut programmed = HashMap::new();
        for (port, mut service) in desired.iter().flat_map(|p| entries(p, node_ip).map(move |s| (p, s))) {
            let key = map_key(&service);
            service.id = match in_maps.get(&key) {
                Some(value) => value.service_id,
                None => {
                    next_id += 1;
                    next_id - 1
                }
            };
            wanted.insert(key);
            match self.programmed.get(&key) {
                Some(current) if *current == service && in_maps.contains_key(&key) => stats.unchanged += 1,
                previous => match datapath.set_service(&service) {
                    Ok(()) if previous.is_some() || in_maps.contains_key(&key) => stats.updated += 1,
                    Ok(()) => stats.added += 1,
                    // One bad port must not hold up the others: report it, go on (and
                    // retry it next time: it is not recorded as programmed).
                    Err(err) => {
                        stats.failed.push(format!("{}: {err}", port.name));
                        continue;
                    }
                },
            }
            programmed.insert(key, service);
        }
        for key in in_maps.keys().filter(|k| !wanted.contains(k)) {
            match datapath.remove_service(key) {
                Ok(()) => stats.removed += 1,
                Err(err) => stats.failed.push(format!("removing {:?}: {err}", key)),
            }
        }
        self.programmed = programmed;
        Ok(stats)
    }
}
