//! nodeplane's eBPF datapath: Service load balancing with connection tracking
//! and NAT, and NetworkPolicy, in tc programs written in C (`bpf/`), loaded
//! with aya.

mod config;
pub mod inspect;
mod loader;
pub mod manifests;
pub mod maps;
pub mod masquerade;
pub mod policy;
pub mod policy_maps;
mod reconcile;

pub use config::{DatapathConfig, Invalid};
pub use loader::{AttachMode, CtTimeouts, Datapath, DatapathError, GcStats, Protocol, Service};
pub use reconcile::{Reconciler, SyncStats};

/// The compiled load balancer object (`bpf/lb.c`).
pub const LB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));
