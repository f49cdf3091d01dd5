//! nodeplane's programs on the node: `nodeplaned`, the supervisor
//! ([`daemon`]); `nodeplanectl`, its command-line client ([`ctl`]); and
//! `nodeplane-cni`, the CNI plugin ([`cni`]); with the node's configuration,
//! `node.toml` ([`config`]), that all three read.

pub mod cni;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod health;
mod http;
pub mod kubelet;
pub mod masquerade;
pub mod metrics_socket;
mod netlink;
pub mod slots;
