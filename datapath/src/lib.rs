//! nodeplane's eBPF datapath as userspace drives it, with aya: loading the
//! programs of `nodeplane-datapath-abi` with their maps pinned on a bpffs and
//! sized for the node ([`capacity`]),
//! attaching them (tc on pod and node interfaces, cgroup hooks for socket load
//! balancing), programming Service ports and NetworkPolicy into the maps,
//! collecting expired conntrack entries, and reading the pinned maps back
//! ([`inspect`]) while no supervisor runs.

pub mod capacity;
mod conntrack;
mod error;
pub mod inspect;
mod loader;
mod maps;
mod pins;
mod pods;
mod policy_maps;
mod services;

pub use capacity::{Capacities, MapSettings};
pub use conntrack::{Collector, Conntrack, CtTimeouts, GcStats};
pub use error::DatapathError;
pub use inspect::MapUsage;
pub use loader::{AttachMode, Datapath};
pub use pods::{PodAt, PodInterfaces};
pub use policy_maps::{PolicyMaps, PolicyStats};
pub use services::{Reconciler, Service, ServiceMaps, SyncStats};
