//! The datapath's connection tracking as userspace sees it: entries read back,
//! garbage collection of the expired ones (the kernel only refreshes them), in
//! steps that never hold up the caller for long, and each pod's share of the
//! map settled at the end of every pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap, IterableMap, MapData};
use nodeplane_datapath_abi::{self as abi, CtKey, CtValue, EndpointValue};
use nodeplane_model::Protocol;

use crate::DatapathError;
use crate::maps::{hash, next_key, removed};

/// How long conntrack entries live after their last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// A TCP flow no reply has come back for yet (a SYN that went unanswered).
    pub tcp_syn: Duration,
    pub tcp_established: Duration,
    /// After both FINs or a RST.
    pub tcp_closed: Duration,
    pub udp: Duration,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

/// What one garbage-collection pass over the conntrack map found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries looked at (two per flow).
    pub entries: u64,
    pub expired: u64,
    /// Flows each pod of this node holds, by its address, after the pass.
    pub flows_by_pod: BTreeMap<Ipv4Addr, u64>,
}

/// Garbage collection in steps: each [`step`](Self::step) works through the
/// map from where the last one stopped, for at most its time budget, so that a
/// large map never holds up the caller; a pass ends when the map's end is
/// reached. At the end of a pass each pod's share is settled: what it opened
/// (counted by the datapath) less what it still holds is what it closed.
#[derive(Default)]
pub struct Collector {
    /// The last key looked at; `None` at the start of a pass.
    cursor: Option<CtKey>,
    pass: GcStats,
}

impl Collector {
    /// Collects until the pass ends (its stats) or `budget` runs out (`None`).
    pub fn step(
        &mut self,
        conntrack: &mut Conntrack<'_>,
        timeouts: CtTimeouts,
        budget: Duration,
    ) -> Result<Option<GcStats>, DatapathError> {
        let started = std::time::Instant::now();
        let now = monotonic_ns();
        let mut map = conntrack.map()?;
        loop {
            let Some(key) = next_key(map.map(), self.cursor.as_ref())? else { break };
            // The cursor moves onto kept entries only: after a key that is gone
            // the kernel starts over from the map's beginning, while after the
            // cursor the deleted entry's successor comes next.
            let mut keep = true;
            if let Ok(value) = map.get(&key, 0) {
                self.pass.entries += 1;
                if now.saturating_sub(value.last_seen_ns) > lifetime(&key, &value, timeouts).as_nanos() as u64 {
                    // Gone meanwhile is as good as deleted.
                    removed(map.remove(&key))?;
                    self.pass.expired += 1;
                    keep = false;
                } else if value.reply == 0 && value.owner != [0; 4] {
                    *self.pass.flows_by_pod.entry(Ipv4Addr::from(value.owner)).or_default() += 1;
                }
            } else {
                keep = false;
            }
            if keep {
                self.cursor = Some(key);
            }
            if started.elapsed() >= budget {
                return Ok(None);
            }
        }
        let pass = std::mem::take(&mut self.pass);
        self.cursor = None;
        conntrack.settle_shares(&pass.flows_by_pod)?;
        Ok(Some(pass))
    }
}

/// The loaded datapath's conntrack map (see [`crate::Datapath::conntrack`]).
pub struct Conntrack<'a> {
    pub(crate) ebpf: &'a mut Ebpf,
}

impl Conntrack<'_> {
    fn map(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DatapathError> {
        hash(self.ebpf, abi::CONNTRACK)
    }

    /// Every entry.
    pub fn entries(&mut self) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        Ok(self.map()?.iter().collect::<Result<_, _>>()?)
    }

    /// Deletes the entries whose timeout ran out, in one whole pass.
    pub fn gc(&mut self, timeouts: CtTimeouts) -> Result<GcStats, DatapathError> {
        let mut collector = Collector::default();
        loop {
            if let Some(stats) = collector.step(self, timeouts, Duration::MAX)? {
                return Ok(stats);
            }
        }
    }

    /// Sets each pod's closed count to what it opened less what it still holds
    /// (`held`); forgets the counts of pods that hold nothing and are no pods
    /// of this node any more.
    fn settle_shares(&mut self, held: &BTreeMap<Ipv4Addr, u64>) -> Result<(), DatapathError> {
        let opened: Vec<([u8; 4], u64)> =
            hash::<[u8; 4], u64>(self.ebpf, abi::CT_OPENED)?.iter().collect::<Result<_, _>>()?;
        let pods: BTreeSet<[u8; 4]> =
            hash::<[u8; 4], EndpointValue>(self.ebpf, abi::ENDPOINTS)?.keys().collect::<Result<_, _>>()?;
        let mut closed = hash::<[u8; 4], u64>(self.ebpf, abi::CT_CLOSED)?;
        let mut gone = Vec::new();
        for (pod, count) in &opened {
            let holds = held.get(&Ipv4Addr::from(*pod)).copied().unwrap_or(0);
            if holds == 0 && !pods.contains(pod) {
                gone.push(*pod);
                removed(closed.remove(pod))?;
            } else {
                closed.insert(pod, count.saturating_sub(holds), 0)?;
            }
        }
        let mut opened_map = hash::<[u8; 4], u64>(self.ebpf, abi::CT_OPENED)?;
        for pod in gone {
            removed(opened_map.remove(&pod))?;
        }
        Ok(())
    }
}

/// Now on the clock `bpf_ktime_get_ns()` reads: CLOCK_MONOTONIC, in ns.
pub(crate) fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How long an entry lives after its last packet.
pub(crate) fn lifetime(key: &CtKey, value: &CtValue, timeouts: CtTimeouts) -> Duration {
    const TCP: u8 = Protocol::Tcp.number();
    match (key.proto, value.closed(), value.established()) {
        (TCP, true, _) => timeouts.tcp_closed,
        (TCP, false, true) => timeouts.tcp_established,
        (TCP, false, false) => timeouts.tcp_syn,
        _ => timeouts.udp,
    }
}
