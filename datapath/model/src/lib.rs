//! The Kubernetes model nodeplane's datapath is fed from, with no datapath in
//! it: Services with their EndpointSlices (the ports to balance), Namespaces,
//! Pods and NetworkPolicies read from a manifests directory and validated
//! ([`manifests`]); the NetworkPolicy semantics ([`policy`]); and their
//! compilation into per-pod rules ([`compile`]), which `nodeplane-datapath`
//! writes into its maps. The reachability probe uses it as it is; the API
//! watcher will feed the same types.

pub mod compile;
pub mod manifests;
pub mod policy;
mod protocol;

pub use protocol::{ICMP, Protocol, UnknownProtocol, ip_protocol_name};
