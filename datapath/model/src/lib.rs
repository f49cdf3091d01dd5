//! The Kubernetes model nodeplane's datapath is fed from, with no datapath in
//! it: Services with their EndpointSlices (the ports to balance), Namespaces,
//! Pods and NetworkPolicies read from a manifests directory and validated
//! ([`manifests`]); the NetworkPolicy semantics ([`policy`]); and their
//! compilation into per-pod rules ([`compile`]), which `nodeplane-datapath`
//! writes into its maps. Services and EndpointSlices are read into compact
//! forms and related by a [`services::ServiceIndex`], which the API source
//! keeps up to date event by event.

pub mod compile;
pub mod manifests;
mod origin;
pub mod policy;
mod protocol;
pub mod services;

pub use protocol::{ICMP, Protocol, UnknownProtocol, ip_protocol_name};
