//! The datapath's connection tracking as userspace sees it: entries read back,
//! and garbage collection of the expired ones (the kernel only refreshes them).

use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use nodeplane_datapath_abi::{self as abi, CtKey, CtValue};
use nodeplane_model::Protocol;

use crate::DatapathError;
use crate::maps::{hash, removed};

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

/// What one garbage-collection pass over the conntrack map did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub entries: u64,
    pub expired: u64,
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

    /// Deletes the entries whose timeout ran out.
    pub fn gc(&mut self, timeouts: CtTimeouts) -> Result<GcStats, DatapathError> {
        let now = monotonic_ns();
        let entries = self.entries()?;
        let mut stats = GcStats { entries: entries.len() as u64, expired: 0 };
        let mut map = self.map()?;
        for (key, value) in entries {
            if now.saturating_sub(value.last_seen_ns) > lifetime(&key, &value, timeouts).as_nanos() as u64 {
                // Seen again (or reopened) since the snapshot: keep it.
                if map.get(&key, 0).is_ok_and(|current| current.last_seen_ns != value.last_seen_ns) {
                    continue;
                }
                // Gone already (the LRU evicted it) is as good as deleted.
                removed(map.remove(&key))?;
                stats.expired += 1;
            }
        }
        Ok(stats)
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
